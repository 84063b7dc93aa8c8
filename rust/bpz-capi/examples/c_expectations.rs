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
//! tensor NAME_HEX DTYPE SHAPE STORAGE FILTER CHUNKS NBYTES SHA256   (its latest version's, in order)
//! versions COUNT RECOVERED
//! version NUMBER TIME_NS BYTES_ADDED TENSOR_COUNT METADATA_JSON_HEX
//! tensor ...                                                        (that version's, in order)
//! invalid FILE KIND STAGE VERSION
//! ```
//!
//! SHAPE is `[4,3]` (`[]` for 0-d); the JSON is compact, as `bpz_tree_json` /
//! `bpz_metadata_json` return it. Every golden has a `versions` line: COUNT versions,
//! RECOVERED 1 if the file ends in an unfinished append (else 0); a 1.1 golden then lists
//! each version, oldest first, with its tensors; a 1.0 golden has one version (number 1)
//! and no `version` lines (its JSON describes none). STAGE is `open`, `read` or `list`
//! (spec §13); VERSION is the version to open, as `bpz_open_version` takes it (0 for the
//! latest).

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

/// The `tensor` lines of tensors as an expected-results file describes them.
fn tensor_lines(text: &mut String, file: &str, list: &[Value]) {
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
    let (mut golden, mut tensors, mut versioned) = (0, 0, 0);
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
        tensor_lines(&mut text, &file, list);
        golden += 1;
        tensors += list.len();
        let recovered = expected["recovered"].as_bool().unwrap_or(false) as u8;
        let Some(versions) = expected.get("versions") else {
            writeln!(text, "versions 1 {recovered}").unwrap();
            continue;
        };
        let versions = versions
            .as_array()
            .unwrap_or_else(|| panic!("{file}: versions is not an array"));
        writeln!(text, "versions {} {recovered}", versions.len()).unwrap();
        for v in versions {
            let what = format!("{file}: a version");
            let list = v["tensors"]
                .as_array()
                .unwrap_or_else(|| panic!("{what}: no tensors"));
            writeln!(
                text,
                "version {} {} {} {} {}",
                number(&v["version"], &what),
                number(&v["time_ns"], &what),
                number(&v["bytes_added"], &what),
                list.len(),
                hex(&v["metadata"].to_string())
            )
            .unwrap();
            tensor_lines(&mut text, &file, list);
        }
        versioned += 1;
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
        let version = want.get("version").map_or(0, |v| number(v, file));
        assert!(version <= i64::MAX as u64, "{file}: version {version}");
        writeln!(
            text,
            "invalid {file} {} {stage} {version}",
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
        "{out}: {golden} golden archives ({tensors} tensors; {versioned} with versions), {} \
         invalid files",
        listed.len()
    );
}
