//! Turns the expected results of the conformance vectors (`spec/vectors/*.json`,
//! `spec/vectors/invalid/expected.json`) into a line-based file that the C
//! conformance program (`tests/c/conformance.c`) reads without a JSON parser.
//! It reads only the JSON files, never an archive: the C side checks the
//! archives against them through libbpz.
//!
//! `cargo run -p bpz-capi --example c_expectations -- spec/vectors OUT.txt`
//!
//! Format: one record per line, fields separated by one space. Strings that
//! may hold anything (names, JSON) are written as `x` + the hex of their UTF-8
//! bytes, so no field is empty or contains a space.
//!
//! ```text
//! golden FILE TENSOR_COUNT TREE_JSON_HEX METADATA_JSON_HEX
//! tensor NAME_HEX DTYPE SHAPE STORAGE FILTER CHUNKS NBYTES SHA256   (for the golden line above, in order)
//! invalid FILE KIND STAGE
//! ```
//!
//! SHAPE is `[4,3]` (`[]` for 0-d); the JSON is compact, as `bpz_tree_json` /
//! `bpz_metadata_json` return it.
//!
//! The C ABI opens an archive's latest version and lists its tensors on open: a golden
//! 1.1 file is described by its latest version (the members of its JSON other than
//! `versions`), an invalid file of stage `list` fails at `open` in C, and an invalid file
//! checked at another version (`"version": v`) is left out, with a comment line.

use std::fmt::Write as _;
use std::path::Path;

use serde_json::Value;

fn hex(s: &str) -> String {
    let mut out = String::with_capacity(1 + 2 * s.len());
    out.push('x');
    for b in s.bytes() {
        write!(out, "{b:02x}").unwrap();
    }
    out
}

fn token(v: &Value, what: &str) -> String {
    let s = v
        .as_str()
        .unwrap_or_else(|| panic!("{what}: not a string: {v}"));
    assert!(
        !s.is_empty() && !s.contains(char::is_whitespace),
        "{what}: {s:?} is not a token"
    );
    s.to_owned()
}

fn number(v: &Value, what: &str) -> u64 {
    v.as_u64()
        .unwrap_or_else(|| panic!("{what}: not an integer: {v}"))
}

fn load(path: &Path) -> Value {
    let text = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_slice(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// File names in `dir` ending in `.ext`, sorted.
fn files(dir: &Path, ext: &str) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| {
            e.unwrap()
                .file_name()
                .into_string()
                .expect("UTF-8 file name")
        })
        .filter(|n| Path::new(n).extension().and_then(|e| e.to_str()) == Some(ext))
        .collect();
    names.sort();
    names
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, dir, out] = &args[..] else {
        eprintln!("usage: c_expectations VECTORS_DIR OUT");
        std::process::exit(2);
    };
    let dir = Path::new(dir);
    let mut text = String::from(
        "# bpz C conformance expectations, generated from spec/vectors by\n\
         # `cargo run -p bpz-capi --example c_expectations` (see its source for the format)\n",
    );
    let (mut golden, mut tensors) = (0, 0);
    for file in files(dir, "bpz") {
        let expected = load(&dir.join(&file).with_extension("json"));
        let list = expected["tensors"]
            .as_array()
            .unwrap_or_else(|| panic!("{file}: no tensors"));
        writeln!(
            text,
            "golden {file} {} {} {}",
            list.len(),
            hex(&expected["tree"].to_string()),
            hex(&expected["metadata"].to_string())
        )
        .unwrap();
        for t in list {
            let name = t["name"]
                .as_str()
                .unwrap_or_else(|| panic!("{file}: tensor without a name"));
            let what = format!("{file}: tensor {name:?}");
            let shape: Vec<String> = t["shape"]
                .as_array()
                .unwrap_or_else(|| panic!("{what}: no shape"))
                .iter()
                .map(|d| number(d, &what).to_string())
                .collect();
            let sha = token(&t["sha256"], &what);
            assert!(
                sha.len() == 64 && sha.bytes().all(|c| c.is_ascii_hexdigit()),
                "{what}: sha256 {sha}"
            );
            writeln!(
                text,
                "tensor {} {} [{}] {} {} {} {} {sha}",
                hex(name),
                token(&t["dtype"], &what),
                shape.join(","),
                token(&t["storage"], &what),
                token(&t["filter"], &what),
                number(&t["chunks"], &what),
                number(&t["nbytes"], &what),
            )
            .unwrap();
        }
        golden += 1;
        tensors += list.len();
    }
    let invalid_dir = dir.join("invalid");
    let expected = load(&invalid_dir.join("expected.json"));
    let table = expected
        .as_object()
        .expect("invalid/expected.json is an object");
    let on_disk = files(&invalid_dir, "bpz");
    let listed: Vec<String> = {
        let mut v: Vec<String> = table.keys().cloned().collect();
        v.sort();
        v
    };
    assert_eq!(
        on_disk, listed,
        "invalid/*.bpz and invalid/expected.json disagree"
    );
    for file in &listed {
        let want = &table[file];
        let stage = token(&want["stage"], file);
        assert!(
            ["open", "read", "list"].contains(&stage.as_str()),
            "{file}: stage {stage}"
        );
        if let Some(v) = want.get("version") {
            writeln!(
                text,
                "# {file}: skipped, its error is that of version {v} (the C ABI opens the latest)"
            )
            .unwrap();
            continue;
        }
        let stage = if stage == "list" {
            "open".into()
        } else {
            stage
        };
        writeln!(
            text,
            "invalid {file} {} {stage}",
            token(&want["error"], file)
        )
        .unwrap();
    }
    assert!(
        golden > 0 && !listed.is_empty(),
        "no vectors in {}",
        dir.display()
    );
    if let Some(parent) = Path::new(out).parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(out, text).unwrap_or_else(|e| panic!("{out}: {e}"));
    println!(
        "{out}: {golden} golden archives ({tensors} tensors), {} invalid files",
        listed.len()
    );
}
