//! Appending versions (spec §16.6), deduplication against the previous version, and
//! compaction (§16.8).

mod common;
use common::vectors::prng_bytes;

use std::collections::BTreeMap;
use std::path::Path;

use bpz::*;
use proptest::prelude::*;
use serde_json::json;

fn opts() -> WriterOptions {
    WriterOptions {
        sync: false,
        ..WriterOptions::default()
    }
}

/// What a version holds: name → (dtype, shape, bytes).
type Contents = BTreeMap<String, (DType, Vec<u64>, Vec<u8>)>;

fn append(path: &Path, version: &Contents, metadata: u64, wopts: WriterOptions) -> Summary {
    let mut w = Writer::append(path, wopts).unwrap();
    for (name, (dtype, shape, data)) in version {
        w.add_tensor(name, *dtype, shape, data).unwrap();
    }
    w.set_metadata(json!({ "v": metadata }));
    w.finish().unwrap().0
}

fn check_version(path: &Path, number: u64, expected: &Contents) {
    let r = Reader::open_version(path, Backend::Mmap, VersionSelector::Number(number)).unwrap();
    assert_eq!(r.version_number(), number);
    let names: Vec<&String> = r.tensors().unwrap().iter().map(|t| &t.name).collect();
    assert_eq!(names.len(), expected.len(), "version {number}");
    for (name, (dtype, shape, data)) in expected {
        let t = r.tensor(name).unwrap();
        assert_eq!((t.dtype, &t.shape), (*dtype, shape), "{name} in v{number}");
        assert_eq!(&r.read(name).unwrap(), data, "{name} in v{number}");
    }
    assert_eq!(r.metadata().unwrap(), json!({ "v": number }));
}

type Steps = Vec<(Vec<Step>, Vec<(DType, usize, u64)>, Compression, usize)>;

/// Whether step `k` writes with the settings of the version before it.
fn wopts_same(steps: &Steps, k: usize) -> bool {
    let (_, _, c, b) = &steps[k];
    let (pc, pb) = match k {
        0 => (Compression::AUTO, WriterOptions::default().chunk_bytes),
        _ => (steps[k - 1].2, steps[k - 1].3),
    };
    *c == pc && *b == pb
}

#[derive(Debug, Clone)]
enum Step {
    Keep,
    Change(u64),
    Remove,
}

fn tensor_strategy() -> impl Strategy<Value = (DType, usize, u64)> {
    (
        prop::sample::select(vec![DType::F32, DType::U8, DType::I64, DType::Bool]),
        0usize..5000,
        any::<u64>(),
    )
}

fn make(dtype: DType, n: usize, seed: u64) -> (DType, Vec<u64>, Vec<u8>) {
    let mut data = prng_bytes(n * dtype.size(), seed);
    if dtype == DType::Bool {
        data.iter_mut().for_each(|b| *b &= 1);
    } else if seed % 2 == 0 {
        // Compressible: runs of equal bytes.
        for (i, b) in data.iter_mut().enumerate() {
            *b = (i / 97) as u8;
        }
    }
    (dtype, vec![n as u64], data)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]
    /// Random chains of versions (tensors kept, changed, removed, added; settings that
    /// vary): every version reads back exactly, shares what it kept, and verifies.
    #[test]
    fn append_chains_read_back_every_version(
        first in prop::collection::vec(tensor_strategy(), 1..6),
        steps in prop::collection::vec(
            (prop::collection::vec(prop_oneof![3 => Just(Step::Keep), 2 => any::<u64>().prop_map(Step::Change), 1 => Just(Step::Remove)], 8),
             prop::collection::vec(tensor_strategy(), 0..3),
             prop::sample::select(vec![Compression::AUTO, Compression::Zstd, Compression::None]),
             prop::sample::select(vec![64usize, 1000, 1 << 20])),
            1..5),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chain.bpz");
        let mut current: Contents = first
            .iter()
            .enumerate()
            .map(|(i, &(d, n, s))| (format!("t{i}"), make(d, n, s)))
            .collect();
        let mut versions = vec![current.clone()];
        let s = append(&path, &current, 1, opts());
        prop_assert_eq!(s.version, 1);
        let mut fresh = first.len();
        for (k, (what, added, compression, chunk_bytes)) in steps.iter().enumerate() {
            let before = current.clone();
            let names: Vec<String> = current.keys().cloned().collect();
            let mut changed = false;
            for (name, step) in names.iter().zip(what.iter().cycle()) {
                match step {
                    Step::Keep => {}
                    Step::Change(seed) => {
                        let (d, shape, _) = current[name].clone();
                        current.insert(name.clone(), make(d, shape[0] as usize, *seed));
                        changed = true;
                    }
                    Step::Remove => {
                        current.remove(name);
                    }
                }
            }
            for &(d, n, s) in added {
                current.insert(format!("t{fresh}"), make(d, n, s));
                fresh += 1;
                changed = true;
            }
            let wopts = WriterOptions { compression: *compression, chunk_bytes: *chunk_bytes, ..opts() };
            let number = k as u64 + 2;
            let s = append(&path, &current, number, wopts);
            prop_assert_eq!(s.version, number);
            prop_assert_eq!(s.tensors, current.len());
            // Every chunk of the version is either written or shared, and the file says
            // the bytes added the summary says.
            let r = Reader::open(&path).unwrap();
            let chunks: u64 = r.tensors().unwrap().iter().map(|t| t.chunks.len() as u64).sum();
            prop_assert_eq!(s.chunks_written + s.chunks_shared, chunks);
            prop_assert_eq!(r.version_info().bytes_added, s.bytes_added);
            if !changed && wopts_same(&steps, k) {
                prop_assert_eq!(s.chunks_written, 0, "nothing changed, nothing stored");
            }
            let _ = &before;
            versions.push(current.clone());
        }
        let r = Reader::open(&path).unwrap();
        prop_assert_eq!(r.versions().len(), versions.len());
        prop_assert!(r.recovered().is_none());
        r.verify().unwrap();
        for (k, expected) in versions.iter().enumerate() {
            check_version(&path, k as u64 + 1, expected);
        }
    }
}

/// An unchanged version stores no chunk; a changed chunk of a chunked tensor is the
/// only one stored; a raw tensor changed anywhere is stored again whole (it stays one
/// mappable run).
#[test]
fn dedup_stores_only_what_changed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.bpz");
    let wopts = WriterOptions {
        chunk_bytes: 64 << 10,
        ..opts()
    };
    let mut v: Contents = BTreeMap::new();
    let chunked: Vec<u8> = (0..1u32 << 20)
        .flat_map(|i| (i / 1000).to_le_bytes())
        .collect();
    v.insert("c".into(), (DType::U32, vec![1 << 20], chunked.clone()));
    v.insert(
        "r".into(),
        (DType::U8, vec![1 << 19], prng_bytes(1 << 19, 1)),
    );
    let s1 = append(&path, &v, 1, wopts.clone());
    assert_eq!((s1.version, s1.chunks_shared), (1, 0));
    let c_chunks = 64u64;
    let r_chunks = 8u64;
    assert_eq!(s1.chunks_written, c_chunks + r_chunks);

    let s2 = append(&path, &v, 2, wopts.clone());
    assert_eq!(
        (s2.chunks_written, s2.chunks_shared),
        (0, c_chunks + r_chunks)
    );
    assert!(s2.bytes_added < 4096, "{}", s2.bytes_added);
    assert_eq!(s2.data_bytes, 0);

    let mut changed = chunked.clone();
    changed[5 * (64 << 10) + 17] ^= 1;
    v.insert("c".into(), (DType::U32, vec![1 << 20], changed));
    let mut raw = v["r"].2.clone();
    raw[3] ^= 1;
    v.insert("r".into(), (DType::U8, vec![1 << 19], raw));
    let s3 = append(&path, &v, 3, wopts);
    assert_eq!(s3.chunks_written, 1 + r_chunks);
    assert_eq!(s3.chunks_shared, c_chunks - 1);
    assert!(s3.bytes_added < (1 << 19) + (64 << 10) + 8192);

    let r = Reader::open(&path).unwrap();
    let added: Vec<u64> = r.versions().iter().map(|v| v.bytes_added).collect();
    assert_eq!(added, [s1.bytes_added, s2.bytes_added, s3.bytes_added]);
    r.verify().unwrap();
    // The raw tensor of the latest version is a view of one run.
    assert_eq!(&r.view("r").unwrap()[..], &v["r"].2[..]);
    for k in 1..=3 {
        let rk = r.at_version(VersionSelector::Number(k)).unwrap();
        assert_eq!(rk.metadata().unwrap(), json!({ "v": k }));
    }
}

#[test]
fn a_missing_file_is_created_as_version_1_and_a_1_0_file_is_upgraded() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("new.bpz");
    let mut v: Contents = BTreeMap::new();
    v.insert("x".into(), (DType::F32, vec![3], prng_bytes(12, 3)));
    let s = append(&path, &v, 1, opts());
    assert_eq!((s.version, s.path.as_deref()), (1, Some(path.as_path())));

    let old = dir.path().join("old.bpz");
    let mut w = Writer::create(
        &old,
        WriterOptions {
            format: FormatVersion::V1_0,
            ..opts()
        },
    )
    .unwrap();
    w.add_tensor("x", DType::F32, &[3], &v["x"].2).unwrap();
    w.add_tensor("z", DType::U8, &[5000], &[7; 5000]).unwrap();
    w.set_tree(json!({"dict": [["x", {"tensor": "x"}]]}));
    w.set_metadata(json!({"v": 1}));
    w.finish().unwrap();
    assert_eq!(Reader::open(&old).unwrap().version().minor, 0);
    let mut v2 = v.clone();
    v2.insert("y".into(), (DType::I64, vec![2], prng_bytes(16, 4)));
    let s = append(&old, &v2, 2, opts());
    assert_eq!(s.version, 2);
    assert_eq!(
        s.chunks_shared, 1,
        "x is shared with the upgraded version 1"
    );
    let r = Reader::open(&old).unwrap();
    assert_eq!(r.version().minor, 1);
    assert_eq!(r.versions().len(), 2);
    let r1 = r.at_version(VersionSelector::Number(1)).unwrap();
    assert_eq!(r1.read("z").unwrap(), vec![7; 5000]);
    assert_eq!(
        r1.tree_json().unwrap(),
        r#"{"dict":[["x",{"tensor":"x"}]]}"#
    );
    check_version(&old, 2, &v2);
    r.verify().unwrap();
}

/// A writer dropped unfinished, and a torn tail left by a killed append: the file is
/// cut back to its last committed version, by the writer or by the next append.
#[test]
fn unfinished_appends_are_cut_back() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("u.bpz");
    let mut v: Contents = BTreeMap::new();
    v.insert("a".into(), (DType::U8, vec![10_000], prng_bytes(10_000, 9)));
    append(&path, &v, 1, opts());
    let committed = std::fs::read(&path).unwrap();

    let mut w = Writer::append(&path, opts()).unwrap();
    w.add_tensor("b", DType::U8, &[300_000], &prng_bytes(300_000, 5))
        .unwrap();
    drop(w);
    assert_eq!(std::fs::read(&path).unwrap(), committed);

    // A killed append: bytes after the committed end, some of them a stale trailer.
    let mut torn = committed.clone();
    torn.extend_from_slice(&prng_bytes(5000, 1));
    torn.extend_from_slice(&committed[committed.len() - 32..]);
    std::fs::write(&path, &torn).unwrap();
    let r = Reader::open(&path).unwrap();
    let rec = r.recovered().expect("the torn tail is reported");
    assert_eq!(rec.committed_end, committed.len() as u64);
    drop(r);
    v.insert("b".into(), (DType::U8, vec![7], prng_bytes(7, 2)));
    let s = append(&path, &v, 2, opts());
    assert_eq!(s.version, 2);
    let r = Reader::open(&path).unwrap();
    assert!(r.recovered().is_none());
    assert_eq!(
        std::fs::read(&path).unwrap()[..committed.len()],
        committed[..]
    );
    check_version(&path, 1, &BTreeMap::from([("a".into(), v["a"].clone())]));
    check_version(&path, 2, &v);
}

#[test]
fn compact_keeps_exactly_the_last_versions() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.bpz");
    let mut versions = Vec::new();
    let mut v: Contents = BTreeMap::new();
    v.insert(
        "const".into(),
        (DType::U8, vec![100_000], prng_bytes(100_000, 1)),
    );
    for k in 1..=5u64 {
        v.insert(
            "state".into(),
            (DType::U8, vec![20_000], prng_bytes(20_000, k)),
        );
        if k == 3 {
            v.insert("extra".into(), (DType::F32, vec![2], prng_bytes(8, 8)));
        }
        append(&path, &v, k, opts());
        versions.push(v.clone());
    }
    let before = Reader::open(&path).unwrap();
    let times: Vec<u64> = before.versions().iter().map(|v| v.time_ns).collect();
    let size_before = before.file_len();
    drop(before);

    let e = compact(&path, 0, opts()).unwrap_err();
    assert_eq!(e.kind(), "invalid_argument");
    let s = compact(&path, 2, opts()).unwrap();
    assert_eq!(s.version, 5);
    let r = Reader::open(&path).unwrap();
    let numbers: Vec<u64> = r.versions().iter().map(|v| v.number).collect();
    assert_eq!(numbers, [4, 5]);
    let kept_times: Vec<u64> = r.versions().iter().map(|v| v.time_ns).collect();
    assert_eq!(kept_times, times[3..]);
    // Three versions' changing state dropped (60 kB), the constant kept once.
    assert!(
        r.file_len() < size_before - 55_000 && r.file_len() > 140_000,
        "{} of {size_before}",
        r.file_len()
    );
    assert_eq!(s.file_bytes, r.file_len());
    // The constant tensor is stored once in the compacted file.
    assert_eq!(
        r.tensor("const").unwrap().chunks,
        r.at_version(VersionSelector::Number(4))
            .unwrap()
            .tensor("const")
            .unwrap()
            .chunks
    );
    r.verify().unwrap();
    for k in [4u64, 5] {
        check_version(&path, k, &versions[k as usize - 1]);
    }
    let e = Reader::open_version(&path, Backend::Mmap, VersionSelector::Number(2)).unwrap_err();
    assert_eq!(e.kind(), "invalid_argument");
    // Keeping more than there are keeps them all; appending goes on from the latest.
    compact(&path, 10, opts()).unwrap();
    let s = append(&path, &versions[4], 6, opts());
    assert_eq!(s.version, 6);
    assert_eq!(s.chunks_written, 0);
}

/// The summary's trailer is the file's last 32 bytes after a new file, an append and a
/// compaction: callers stamp files with it instead of reading them back.
#[test]
fn the_summary_holds_the_files_trailer() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.bpz");
    let tail = |p: &Path| {
        let bytes = std::fs::read(p).unwrap();
        bytes[bytes.len() - 32..].to_vec()
    };
    let mut v: Contents = BTreeMap::new();
    v.insert("a".into(), (DType::U8, vec![100], prng_bytes(100, 1)));
    let first = append(&path, &v, 1, opts());
    assert_eq!(first.trailer.to_vec(), tail(&path));
    v.insert("b".into(), (DType::U8, vec![50], prng_bytes(50, 2)));
    let second = append(&path, &v, 2, opts());
    assert_eq!(second.trailer.to_vec(), tail(&path));
    assert_ne!(first.trailer, second.trailer);
    let compacted = compact(&path, 1, opts()).unwrap();
    assert_eq!(compacted.trailer.to_vec(), tail(&path));
    let reader = Reader::open(&path).unwrap();
    assert_eq!(reader.trailer().encode(), compacted.trailer);
}
