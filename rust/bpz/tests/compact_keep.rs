//! Compaction keeping chosen versions (`Keep::Versions`), as numbered checkpoints' retention
//! uses it: the named versions and every newer one survive, each with its number and content.

use bpz::*;
use serde_json::json;

fn append(path: &std::path::Path, v: u64) {
    let opts = WriterOptions {
        sync: false,
        ..WriterOptions::default()
    };
    let mut w = Writer::append(path, opts).unwrap();
    let constant: Vec<u8> = (0..4096u32).flat_map(|i| i.to_le_bytes()).collect();
    w.add_tensor("constant", DType::U32, &[4096], &constant)
        .unwrap();
    w.add_tensor("step", DType::U64, &[], &v.to_le_bytes())
        .unwrap();
    w.set_metadata(json!({ "step": v }));
    w.finish().unwrap();
}

fn numbers(path: &std::path::Path) -> Vec<u64> {
    Reader::open(path)
        .unwrap()
        .versions()
        .iter()
        .map(|v| v.number)
        .collect()
}

#[test]
fn keep_versions_keeps_the_named_ones_and_every_newer_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("run.bpz");
    for v in 1..=6 {
        append(&path, v);
    }
    // Chosen from a look at versions 1-4; 5 and 6 were appended since: both stay.
    let opts = WriterOptions {
        sync: false,
        ..WriterOptions::default()
    };
    compact_to(&path, Keep::Versions(vec![2, 4]), opts.clone()).unwrap();
    assert_eq!(numbers(&path), vec![2, 4, 5, 6]);
    for v in [2u64, 4, 5, 6] {
        let r = Reader::open_version(&path, Backend::Pread, VersionSelector::Number(v)).unwrap();
        assert_eq!(r.read("step").unwrap(), v.to_le_bytes());
        assert_eq!(r.metadata().unwrap(), json!({ "step": v }));
        r.verify().unwrap();
    }
    // The constant tensor is stored once in the compacted file.
    let r = Reader::open(&path).unwrap();
    let offsets: std::collections::BTreeSet<u64> = r
        .versions()
        .iter()
        .map(|v| {
            let rv = r.at_version(VersionSelector::Number(v.number)).unwrap();
            rv.tensor("constant").unwrap().chunks[0].offset
        })
        .collect();
    assert_eq!(offsets.len(), 1);
    // Appending continues the numbering.
    append(&path, 7);
    assert_eq!(numbers(&path), vec![2, 4, 5, 6, 7]);
}

#[test]
fn keep_versions_naming_nothing_present_is_refused_and_leaves_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("run.bpz");
    for v in 1..=2 {
        append(&path, v);
    }
    let before = std::fs::read(&path).unwrap();
    // 9 is not in the file and nothing is newer than it: nothing would be kept.
    let e = compact_to(&path, Keep::Versions(vec![9]), WriterOptions::default()).unwrap_err();
    assert_eq!(e.kind(), "invalid_argument", "{e}");
    assert!(e.to_string().contains("versions 1, 2"), "{e}");
    assert_eq!(std::fs::read(&path).unwrap(), before);
}
