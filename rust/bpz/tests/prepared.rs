//! Compression decided ahead in parallel (`Writer::prepare_many` + `add_tensor_prepared`)
//! writes byte for byte what `add_tensor_with` writes, for every kind of choice (raw under
//! "auto", shuffle, delta, bit-packing, forced filters, per-tensor options, tensors above
//! the size decided ahead), and a `Prepared` made for other bytes is not used for these.

mod common;
use common::vectors::prng_bytes;

use bpz::*;

fn opts() -> WriterOptions {
    WriterOptions {
        sync: false,
        time_ns: Some(1_700_000_000_000_000_000),
        ..WriterOptions::default()
    }
}

type Item = (String, DType, Vec<u64>, Vec<u8>, TensorOptions);

fn items() -> Vec<Item> {
    let mut out: Vec<Item> = Vec::new();
    for i in 0..40u64 {
        let n = 500 + 997 * i as usize;
        let (dtype, data): (DType, Vec<u8>) = match i % 5 {
            0 => (DType::F32, prng_bytes(n * 4, i)),
            1 => (
                DType::F64,
                (0..n)
                    .flat_map(|v| ((v % 17) as f64).to_le_bytes())
                    .collect(),
            ),
            2 => (
                DType::I64,
                (0..n as i64).flat_map(|v| (v * 3).to_le_bytes()).collect(),
            ),
            3 => (DType::Bool, (0..n).map(|v| (v % 3 == 0) as u8).collect()),
            _ => (
                DType::I32,
                (0..n)
                    .flat_map(|v| ((v % 50) as i32).to_le_bytes())
                    .collect(),
            ),
        };
        let elems = (data.len() / dtype.size()) as u64;
        let topts = match i % 7 {
            3 => TensorOptions {
                compression: Some(Compression::Zstd),
                ..Default::default()
            },
            5 => TensorOptions {
                compression: Some(Compression::None),
                ..Default::default()
            },
            6 if dtype.size() > 1 => TensorOptions {
                filter: Some(Filter::Shuffle),
                level: Some(7),
                ..Default::default()
            },
            _ => TensorOptions::default(),
        };
        out.push((format!("t{i}"), dtype, vec![elems], data, topts));
    }
    // Above the size decided ahead: decided while added, as before.
    let big: Vec<u8> = (0..(5u32 << 20) / 4)
        .flat_map(|v| (v % 1000).to_le_bytes())
        .collect();
    out.push((
        "big".into(),
        DType::U32,
        vec![(big.len() / 4) as u64],
        big,
        TensorOptions::default(),
    ));
    out
}

fn one_by_one(path: &std::path::Path, items: &[Item]) {
    let mut w = Writer::create(path, opts()).unwrap();
    for (name, dtype, shape, data, topts) in items {
        w.add_tensor_with(name, *dtype, shape, data, topts).unwrap();
    }
    w.finish().unwrap();
}

fn prepared(path: &std::path::Path, items: &[Item]) {
    let mut w = Writer::create(path, opts()).unwrap();
    let window: Vec<(DType, &[u8], &TensorOptions)> = items
        .iter()
        .map(|(_, dtype, _, data, topts)| (*dtype, data.as_slice(), topts))
        .collect();
    let decided = w.prepare_many(&window);
    assert_eq!(decided.len(), items.len());
    for ((name, dtype, shape, data, topts), p) in items.iter().zip(decided) {
        w.add_tensor_prepared(name, *dtype, shape, data, topts, p)
            .unwrap();
    }
    w.finish().unwrap();
}

#[test]
fn prepared_in_parallel_writes_the_same_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let items = items();
    let (a, b) = (dir.path().join("a.bpz"), dir.path().join("b.bpz"));
    one_by_one(&a, &items);
    prepared(&b, &items);
    let (a, b) = (std::fs::read(a).unwrap(), std::fs::read(b).unwrap());
    assert!(a == b, "files differ ({} and {} bytes)", a.len(), b.len());
    // Something was compressed and something stored raw: the comparison covers both.
    let r = Reader::open(dir.path().join("b.bpz")).unwrap();
    let kinds: std::collections::BTreeSet<bool> = r
        .tensors()
        .unwrap()
        .iter()
        .map(|t| t.storage == Storage::Raw)
        .collect();
    assert_eq!(kinds.len(), 2);
}

#[test]
fn a_prepared_choice_for_other_bytes_is_not_used() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.bpz");
    let zeros = vec![0u8; 64 << 10];
    let data = prng_bytes(64 << 10, 9);
    let mut w = Writer::create(&path, opts()).unwrap();
    let topts = TensorOptions::default();
    let wrong = w
        .prepare_many(&[(DType::U8, zeros.as_slice(), &topts)])
        .pop()
        .unwrap();
    w.add_tensor_prepared("x", DType::U8, &[data.len() as u64], &data, &topts, wrong)
        .unwrap();
    w.finish().unwrap();
    let r = Reader::open(&path).unwrap();
    assert_eq!(r.read("x").unwrap(), data);
    // Decided for `data` itself: noise stays raw under "auto".
    assert_eq!(r.tensor("x").unwrap().storage, Storage::Raw);
}
