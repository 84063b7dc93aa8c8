//! An append that fails part-way (disk full, injected through `BPZ_FAULT_APPEND_AFTER`,
//! which the process reads: so this binary holds one test) leaves the committed
//! versions exactly as they were.

mod common;
use common::vectors::prng_bytes;

use bpz::*;
use serde_json::json;

fn version(path: &std::path::Path, k: u64) -> Result<Summary> {
    let opts = WriterOptions {
        sync: false,
        chunk_bytes: 16 << 10,
        time_ns: Some(k),
        ..WriterOptions::default()
    };
    let mut w = Writer::append(path, opts)?;
    w.add_tensor("const", DType::U8, &[200_000], &prng_bytes(200_000, 1))?;
    let state: Vec<u8> = (0..50_000u32)
        .flat_map(|i| (i / 50 + k as u32).to_le_bytes())
        .collect();
    w.add_tensor("state", DType::U32, &[50_000], &state)?;
    w.add_tensor("spikes", DType::U8, &[30_000], &prng_bytes(30_000, k))?;
    w.set_metadata(json!({ "step": k }));
    Ok(w.finish()?.0)
}

#[test]
fn a_failed_append_leaves_the_committed_versions_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f.bpz");
    version(&path, 1).unwrap();
    version(&path, 2).unwrap();
    let committed = std::fs::read(&path).unwrap();
    // How many bytes a full append writes, to fail at points across all of it: in the
    // chunks, in the index, at the trailer.
    let probe = dir.path().join("probe.bpz");
    std::fs::write(&probe, &committed).unwrap();
    let full = version(&probe, 3).unwrap().bytes_added;
    assert!(full > 30_000, "{full}");
    let points: Vec<u64> = (0..24)
        .map(|i| full * i / 24)
        .chain([full - 32, full - 31, full - 1])
        .collect();
    for n in points {
        std::env::set_var("BPZ_FAULT_APPEND_AFTER", format!("{n}:error"));
        let e = version(&path, 3).unwrap_err();
        std::env::remove_var("BPZ_FAULT_APPEND_AFTER");
        assert_eq!(e.kind(), "io", "after {n} bytes: {e}");
        assert!(e.to_string().contains("no space left"), "{e}");
        assert_eq!(
            std::fs::read(&path).unwrap(),
            committed,
            "after {n} bytes the file was not cut back"
        );
        let r = Reader::open(&path).unwrap();
        assert!(r.recovered().is_none());
        assert_eq!(r.versions().len(), 2);
        r.verify().unwrap();
    }
    let s = version(&path, 3).unwrap();
    assert_eq!((s.version, s.bytes_added), (3, full));
    assert_eq!(
        std::fs::read(&path).unwrap(),
        std::fs::read(&probe).unwrap()[..]
    );
}
