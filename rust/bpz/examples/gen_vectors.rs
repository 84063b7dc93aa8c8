//! Regenerates `spec/vectors/` (run from the repository root):
//! `cargo run -p bpz --example gen_vectors`.

#[path = "../tests/common/vectors.rs"]
mod vectors;

use std::fs;
use std::path::Path;

fn main() -> std::io::Result<()> {
    let root = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "spec/vectors".into());
    let root = Path::new(&root);
    let invalid_dir = root.join("invalid");
    fs::create_dir_all(&invalid_dir)?;
    let golden = vectors::golden();
    for g in &golden {
        fs::write(root.join(format!("{}.bpz", g.name)), &g.bytes)?;
        let expected = serde_json::to_string_pretty(&vectors::expected(&g.bytes)).unwrap();
        fs::write(root.join(format!("{}.json", g.name)), expected + "\n")?;
    }
    let mut table = serde_json::Map::new();
    for v in vectors::invalid(&golden) {
        fs::write(invalid_dir.join(format!("{}.bpz", v.name)), &v.bytes)?;
        let mut entry = serde_json::json!({"error": v.error, "stage": v.stage, "note": v.note});
        if let Some(version) = v.version {
            entry["version"] = version.into();
        }
        table.insert(format!("{}.bpz", v.name), entry);
    }
    let text = serde_json::to_string_pretty(&serde_json::Value::Object(table)).unwrap();
    fs::write(invalid_dir.join("expected.json"), text + "\n")?;
    println!(
        "wrote {} golden and {} invalid vectors to {}",
        golden.len(),
        vectors::invalid(&golden).len(),
        root.display()
    );
    Ok(())
}
