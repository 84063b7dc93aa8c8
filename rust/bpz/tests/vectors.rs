//! Conformance: the committed `spec/vectors/` must equal what the writer
//! produces today, read back as their expected-results files say, and every
//! invalid file must give its documented error — never a panic.

mod common;

use std::path::PathBuf;

use bpz::Reader;
use common::vectors;

fn vectors_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../spec/vectors")
}

#[test]
fn writer_output_has_not_drifted_from_the_committed_vectors() {
    let dir = vectors_dir();
    let golden = vectors::golden();
    for g in &golden {
        let committed = std::fs::read(dir.join(format!("{}.bpz", g.name))).unwrap();
        assert!(
            committed == g.bytes,
            "{}.bpz differs from the writer's output: the format changed? \
            Update spec/FORMAT.md and the version rules, then run `make vectors`",
            g.name
        );
    }
    let invalid = vectors::invalid(&golden);
    for v in &invalid {
        let committed = std::fs::read(dir.join("invalid").join(format!("{}.bpz", v.name))).unwrap();
        assert!(
            committed == v.bytes,
            "invalid/{}.bpz is stale: run `make vectors`",
            v.name
        );
    }
    // No leftovers: the folders hold exactly what the generator writes.
    let listed = |d: PathBuf| -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".bpz"))
            .collect();
        names.sort();
        names
    };
    let mut want: Vec<String> = golden.iter().map(|g| format!("{}.bpz", g.name)).collect();
    want.sort();
    assert_eq!(
        listed(dir.clone()),
        want,
        "spec/vectors has files the generator does not write"
    );
    let mut want: Vec<String> = invalid.iter().map(|v| format!("{}.bpz", v.name)).collect();
    want.sort();
    assert_eq!(
        listed(dir.join("invalid")),
        want,
        "spec/vectors/invalid has files the generator does not write"
    );
}

#[test]
fn golden_vectors_read_back_as_expected() {
    let dir = vectors_dir();
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("bpz") {
            continue;
        }
        let expected: serde_json::Value =
            serde_json::from_slice(&std::fs::read(path.with_extension("json")).unwrap()).unwrap();
        // Recompute from the committed file through both backends.
        assert_eq!(
            vectors::expected(&std::fs::read(&path).unwrap()),
            expected,
            "{}",
            path.display()
        );
        for backend in [bpz::Backend::Mmap, bpz::Backend::Pread] {
            let r = Reader::open_with(&path, backend).unwrap();
            r.verify().unwrap();
            assert_eq!(
                r.tensors().unwrap().len(),
                expected["tensors"].as_array().unwrap().len()
            );
        }
        count += 1;
    }
    assert!(count >= 10, "only {count} golden vectors found");
}

/// Opens the file and, if that succeeds, reads and verifies every tensor.
fn open_and_read(bytes: Vec<u8>) -> Result<(), (bpz::Error, &'static str)> {
    let r = Reader::from_bytes(bytes).map_err(|e| (e, "open"))?;
    for t in r.tensors().map_err(|e| (e, "list"))? {
        r.read(&t.name).map_err(|e| (e, "read"))?;
    }
    r.verify().map_err(|e| (e, "read"))?;
    Ok(())
}

#[test]
fn invalid_vectors_give_their_documented_errors() {
    let dir = vectors_dir().join("invalid");
    let table: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&std::fs::read(dir.join("expected.json")).unwrap()).unwrap();
    assert!(table.len() >= 30);
    for (file, want) in &table {
        let bytes = std::fs::read(dir.join(file)).unwrap();
        let (err, stage) = open_and_read(bytes).expect_err(file);
        assert_eq!(err.kind(), want["error"], "{file}: {err}");
        assert_eq!(stage, want["stage"], "{file}: {err}");
        let msg = err.to_string();
        assert!(
            msg.starts_with("<memory>"),
            "{file}: message must name the file: {msg}"
        );
    }
}

#[test]
fn random_damage_never_panics() {
    // A cheap in-process fuzz pass over every golden vector: truncations,
    // bit flips and byte stores. Each must give Ok or a typed error.
    let mut state = 0x1234_5678_9abc_def0u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for g in vectors::golden() {
        for _ in 0..1000 {
            let mut b = g.bytes.clone();
            match next() % 3 {
                0 => b.truncate((next() % b.len() as u64) as usize),
                1 => {
                    let i = (next() % b.len() as u64) as usize;
                    b[i] ^= 1 << (next() % 8);
                }
                _ => {
                    let i = (next() % b.len() as u64) as usize;
                    b[i] = next() as u8;
                }
            }
            let changed = b != g.bytes;
            match open_and_read(b) {
                Ok(()) => assert!(!changed, "{}: damage went unnoticed", g.name),
                Err((e, _)) => assert!(!e.kind().is_empty()),
            }
        }
    }
}
