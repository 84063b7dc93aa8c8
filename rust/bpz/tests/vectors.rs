//! Conformance: the committed `spec/vectors/` must equal what the writer
//! produces today, read back as their expected-results files say, and every
//! invalid file must give its documented error — never a panic.

mod common;

use std::path::PathBuf;

use bpz::{Reader, VersionSelector};
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
    // The table says what the generator says of each file.
    let table: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("invalid/expected.json")).unwrap()).unwrap();
    for v in &invalid {
        let entry = &table[format!("{}.bpz", v.name)];
        assert_eq!(entry["error"], v.error, "{}: run `make vectors`", v.name);
        assert_eq!(entry["stage"], v.stage, "{}: run `make vectors`", v.name);
        assert_eq!(entry["note"], v.note, "{}: run `make vectors`", v.name);
        assert_eq!(
            entry.get("version").and_then(|v| v.as_u64()),
            v.version,
            "{}",
            v.name
        );
    }
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
    let (mut count, mut versioned) = (0, 0);
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
        let recovered = expected["recovered"].as_bool().unwrap_or(false);
        for backend in [bpz::Backend::Mmap, bpz::Backend::Pread] {
            let r = Reader::open_with(&path, backend).unwrap();
            let report = r.verify().unwrap();
            assert_eq!(report.recovered.is_some(), recovered, "{}", path.display());
            assert_eq!(r.recovered().is_some(), recovered, "{}", path.display());
            let tensors: Vec<_> = r
                .tensors()
                .unwrap()
                .iter()
                .map(|t| vectors::describe(&r, t))
                .collect();
            assert_eq!(tensors, expected["tensors"].as_array().unwrap()[..]);
            let Some(versions) = expected.get("versions") else {
                assert_eq!(r.versions().len(), 1);
                continue;
            };
            // Every version, opened by number, as its entry says.
            let versions = versions.as_array().unwrap();
            assert_eq!(r.versions().len(), versions.len(), "{}", path.display());
            for (v, want) in r.versions().iter().zip(versions) {
                assert_eq!(v.number, want["version"].as_u64().unwrap());
                assert_eq!(v.time_ns, want["time_ns"].as_u64().unwrap());
                assert_eq!(v.bytes_added, want["bytes_added"].as_u64().unwrap());
                let at = Reader::open_version(&path, backend, VersionSelector::Number(v.number))
                    .unwrap();
                assert_eq!(at.version_number(), v.number);
                assert_eq!(at.metadata().unwrap(), want["metadata"]);
                assert_eq!(
                    r.version_metadata_json(v.number).unwrap(),
                    at.metadata_json().unwrap()
                );
                let tensors: Vec<_> = at
                    .tensors()
                    .unwrap()
                    .iter()
                    .map(|t| vectors::describe(&at, t))
                    .collect();
                assert_eq!(tensors, want["tensors"].as_array().unwrap()[..]);
                // The same version through the reader of the latest.
                let same = r.at_version(VersionSelector::Number(v.number)).unwrap();
                assert_eq!(same.tensors().unwrap(), at.tensors().unwrap());
            }
            versioned += 1;
        }
        count += 1;
    }
    assert!(count >= 10, "only {count} golden vectors found");
    assert!(
        versioned > 0 || !dir.join("v11_versions.bpz").exists(),
        "no versioned vector was checked"
    );
}

/// Opens the file (version `version`, else the latest) and, if that succeeds, lists its
/// tensors, then reads and verifies every one: the stage of the first failure.
fn open_and_read(bytes: Vec<u8>, version: Option<u64>) -> Result<(), (bpz::Error, &'static str)> {
    let which = version.map_or(VersionSelector::Latest, VersionSelector::Number);
    let r = Reader::from_source_version(std::sync::Arc::new(bytes), "<memory>".into(), which)
        .map_err(|e| (e, "open"))?;
    for t in r.tensors().map_err(|e| (e, "list"))? {
        r.read(&t.name).map_err(|e| (e, "read"))?;
    }
    r.verify().map_err(|e| (e, "read"))?;
    Ok(())
}

/// [`open_and_read`] of a file on disk through `backend`.
fn open_and_read_file(
    path: &std::path::Path,
    backend: bpz::Backend,
    version: Option<u64>,
) -> Result<(), (bpz::Error, &'static str)> {
    let which = version.map_or(VersionSelector::Latest, VersionSelector::Number);
    let r = Reader::open_version(path, backend, which).map_err(|e| (e, "open"))?;
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
        let path = dir.join(file);
        let version = want.get("version").map(|v| v.as_u64().unwrap());
        // From memory, and from the file through both backends (positioned reads of the
        // index, or the map).
        let results = [
            (
                "memory",
                open_and_read(std::fs::read(&path).unwrap(), version),
            ),
            (
                "mmap",
                open_and_read_file(&path, bpz::Backend::Mmap, version),
            ),
            (
                "pread",
                open_and_read_file(&path, bpz::Backend::Pread, version),
            ),
        ];
        for (how, result) in results {
            let (err, stage) = result.expect_err(&format!("{file} ({how})"));
            assert_eq!(err.kind(), want["error"], "{file} ({how}): {err}");
            // A rule checked when listing may be found on open already.
            let stage_ok = stage == want["stage"] || (want["stage"] == "list" && stage == "open");
            assert!(
                stage_ok,
                "{file} ({how}): failed at {stage}, not {}: {err}",
                want["stage"]
            );
            let msg = err.to_string();
            let named = if how == "memory" {
                msg.starts_with("<memory>")
            } else {
                msg.contains(file.as_str())
            };
            assert!(named, "{file} ({how}): message must name the file: {msg}");
        }
    }
}

/// Each 1.1 invalid vector opened at `"version"` fails at exactly its stage where the
/// reader can tell: a file broken at open does not open, a rule of the listing is not
/// found on open (opening stays O(1) in the tensors), and a data rule lists cleanly.
#[test]
fn v11_invalid_vectors_fail_at_their_own_stage() {
    let dir = vectors_dir().join("invalid");
    let table: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&std::fs::read(dir.join("expected.json")).unwrap()).unwrap();
    let mut seen = 0;
    for (file, want) in table.iter().filter(|(f, _)| f.starts_with("v11_")) {
        let version = want.get("version").map(|v| v.as_u64().unwrap());
        let (_, stage) =
            open_and_read(std::fs::read(dir.join(file)).unwrap(), version).expect_err(file);
        assert_eq!(stage, want["stage"], "{file}");
        seen += 1;
    }
    assert!(seen >= 25, "only {seen} 1.1 invalid vectors");
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
        // Bytes of an unfinished append are not part of the archive: damage there is
        // ignored, as the append itself is.
        let whole = Reader::from_bytes(g.bytes.clone()).unwrap();
        let committed = whole
            .recovered()
            .map_or(g.bytes.len(), |r| r.committed_end as usize);
        // A file cut where an earlier version ends is that earlier file, whole.
        let version_ends: Vec<usize> = whole
            .versions()
            .iter()
            .map(|v| (v.index_offset + v.index_length) as usize + 32)
            .collect();
        for _ in 0..1000 {
            let mut b = g.bytes.clone();
            let kind = next() % 3;
            let at = match kind {
                0 => {
                    b.truncate((next() % b.len() as u64) as usize);
                    b.len()
                }
                1 => {
                    let i = (next() % b.len() as u64) as usize;
                    b[i] ^= 1 << (next() % 8);
                    i
                }
                _ => {
                    let i = (next() % b.len() as u64) as usize;
                    b[i] = next() as u8;
                    i
                }
            };
            let changed = b != g.bytes && at < committed;
            // Damage to the last trailer of a file of several versions makes it a torn
            // append: the previous version opens, and the recovery is reported.
            let recovered = Reader::from_bytes(b.clone()).is_ok_and(|r| r.recovered().is_some());
            match open_and_read(b, None) {
                Ok(()) => assert!(
                    !changed || recovered || (kind == 0 && version_ends.contains(&at)),
                    "{}: damage at {at} went unnoticed",
                    g.name
                ),
                Err((e, _)) => assert!(!e.kind().is_empty()),
            }
        }
    }
}
