//! Round trips through the public API, zero-copy guarantees, and the promise
//! that a partial read touches only the chunks it needs.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bpz::*;
use proptest::prelude::*;

fn write_to_vec(opts: WriterOptions, tensors: &[(String, DType, Vec<u64>, Vec<u8>)]) -> Vec<u8> {
    let mut w = Writer::new(Vec::new(), opts).unwrap();
    for (name, dtype, shape, data) in tensors {
        w.add_tensor(name, *dtype, shape, data).unwrap();
    }
    w.finish().unwrap().1.unwrap()
}

/// Bytes that are valid for `dtype` (booleans must be 0/1 to be bit-packed,
/// but any byte is a valid u8 pattern).
fn gen_data(dtype: DType, nelems: usize, seed: u64, kind: u8) -> Vec<u8> {
    let n = nelems * dtype.size();
    let mut x = seed | 1;
    (0..n)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            match (dtype, kind % 3) {
                (DType::Bool, _) => (x % 7 == 0) as u8,
                (_, 0) => x as u8,
                (_, 1) => (i / 97) as u8, // runs: compressible
                _ => 0,
            }
        })
        .collect()
}

fn dtype_strategy() -> impl Strategy<Value = DType> {
    prop::sample::select(DType::ALL.to_vec())
}

fn compression_strategy() -> impl Strategy<Value = Compression> {
    prop_oneof![
        Just(Compression::None),
        Just(Compression::Zstd),
        Just(Compression::AUTO)
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn any_tensor_round_trips(
        dtype in dtype_strategy(),
        shape in prop::collection::vec(0u64..7, 0..4),
        chunk_bytes in 1usize..300,
        align_log2 in 4u32..13,
        compression in compression_strategy(),
        forced in prop::option::of(prop::sample::select(vec![Filter::None, Filter::Shuffle, Filter::DeltaShuffle, Filter::BitPack])),
        seed in any::<u64>(),
        kind in any::<u8>(),
    ) {
        let nelems: u64 = shape.iter().product();
        let data = gen_data(dtype, nelems as usize, seed, kind);
        let opts = WriterOptions {
            alignment: 1 << align_log2,
            chunk_bytes,
            compression,
            filter: forced.filter(|f| f.applies_to(dtype)),
            ..Default::default()
        };
        let bytes = write_to_vec(opts, &[
            ("pre".into(), DType::U8, vec![3], vec![1, 2, 3]),
            ("t/x".into(), dtype, shape.clone(), data.clone()),
        ]);
        let r = Reader::from_bytes(bytes).unwrap();
        let t = r.tensor("t/x").unwrap().clone();
        prop_assert_eq!(&t.shape, &shape);
        prop_assert_eq!(t.dtype, dtype);
        prop_assert_eq!(r.read("t/x").unwrap(), data.clone());
        if t.is_raw() {
            let view = r.view("t/x").unwrap();
            prop_assert_eq!(view, &data[..]);
            prop_assert_eq!(t.raw_range().unwrap().start % (1u64 << align_log2), 0);
        }
        let rows = t.rows();
        let row_bytes = (t.row_elems() * dtype.size() as u64) as usize;
        for (a, b) in [(0, rows), (rows / 2, rows), (0, rows / 2), (rows / 3, rows.saturating_sub(1).max(rows / 3))] {
            let got = r.read_rows("t/x", a..b).unwrap();
            prop_assert_eq!(&got[..], &data[a as usize * row_bytes..b as usize * row_bytes]);
        }
        prop_assert_eq!(r.verify().unwrap().tensors, 2);
    }
}

#[test]
fn every_dtype_and_edge_shape() {
    let mut tensors = Vec::new();
    for (i, dtype) in DType::ALL.into_iter().enumerate() {
        for shape in [vec![], vec![0], vec![4, 0, 2], vec![5, 3]] {
            let n: u64 = shape.iter().product();
            let name = format!("{}/{:?}", dtype.name(), shape);
            tensors.push((
                name,
                dtype,
                shape,
                gen_data(dtype, n as usize, i as u64 + 1, 1),
            ));
        }
    }
    for compression in [Compression::None, Compression::Zstd] {
        let bytes = write_to_vec(
            WriterOptions {
                compression,
                chunk_bytes: 16,
                ..Default::default()
            },
            &tensors,
        );
        let r = Reader::from_bytes(bytes).unwrap();
        for (name, dtype, shape, data) in &tensors {
            let t = r.tensor(name).unwrap();
            assert_eq!((&t.dtype, &t.shape), (dtype, shape));
            assert_eq!(&r.read(name).unwrap(), data, "{name}");
        }
    }
}

#[test]
fn mmap_views_are_zero_copy_and_aligned() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.bpz");
    let data: Vec<u8> = (0..4096u32)
        .flat_map(|v| (v as f32).to_le_bytes())
        .collect();
    let mut w = Writer::create(
        &path,
        WriterOptions {
            compression: Compression::None,
            ..Default::default()
        },
    )
    .unwrap();
    w.add_tensor("odd", DType::U8, &[3], &[1, 2, 3]).unwrap();
    w.add_tensor("w", DType::F32, &[64, 64], &data).unwrap();
    let (summary, _) = w.finish().unwrap();
    assert_eq!(summary.path.as_deref(), Some(path.as_path()));
    let r = Reader::open(&path).unwrap();
    let view = r.view("w").unwrap();
    let map = r.mapping().unwrap();
    let map_range = map.as_ptr() as usize..map.as_ptr() as usize + map[..].len();
    assert!(
        map_range.contains(&(view.as_ptr() as usize)),
        "view must point into the map"
    );
    assert_eq!(view.as_ptr() as usize % 64, 0);
    assert_eq!(view, &data[..]);
    r.verify_tensor("w").unwrap();
    // The pread backend can't hand out views, and says why.
    let p = Reader::open_with(&path, Backend::Pread).unwrap();
    let err = p.view("w").unwrap_err();
    assert_eq!(err.kind(), "not_zero_copy");
    assert_eq!(p.read("w").unwrap(), data);
}

/// A source that counts the bytes read from it.
struct Counting {
    data: Vec<u8>,
    read: AtomicU64,
}

impl Source for Counting {
    fn len(&self) -> u64 {
        self.data.len() as u64
    }
    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        self.read.fetch_add(buf.len() as u64, Ordering::Relaxed);
        let o = offset as usize;
        buf.copy_from_slice(&self.data[o..o + buf.len()]);
        Ok(())
    }
}

#[test]
fn partial_reads_touch_only_their_chunks() {
    let rows = 1000u64;
    let data: Vec<u8> = (0..rows * 256)
        .map(|i| ((i / 256) as u32 * 7 + (i % 5) as u32) as u8)
        .collect();
    // Incompressible, so that the file is much larger than what open reads.
    let mut x = 1u64;
    let other: Vec<u8> = (0..300_000)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (x >> 56) as u8
        })
        .collect();
    let opts = WriterOptions {
        compression: Compression::Zstd,
        chunk_bytes: 256 * 10,
        ..Default::default()
    };
    let bytes = write_to_vec(
        opts,
        &[
            ("big".into(), DType::U8, vec![rows, 256], data.clone()),
            ("other".into(), DType::U8, vec![300_000], other),
        ],
    );
    let src = Arc::new(Counting {
        data: bytes,
        read: AtomicU64::new(0),
    });
    let r = Reader::from_source_labeled(src.clone(), "counted".into()).unwrap();
    let opened = src.read.swap(0, Ordering::Relaxed);
    let (index_len, file_len) = (r.trailer().index_len, r.file_len());
    // The superblock, then one read of the file's end (up to 64 KiB) for trailer and index.
    let tail = file_len.min(64 << 10);
    let expected = 64 + tail + if index_len + 32 > tail { index_len } else { 0 };
    assert_eq!(
        opened, expected,
        "open reads superblock, trailer and index only"
    );
    assert!(
        file_len > 2 * tail,
        "the file is large enough for this to mean something"
    );

    let t = r.tensor("big").unwrap().clone();
    assert_eq!(t.chunks.len(), 100);
    // Rows 415..437 overlap chunks 41, 42 and 43.
    let got = r.read_rows("big", 415..437).unwrap();
    assert_eq!(got, data[415 * 256..437 * 256]);
    let expected: u64 = t.chunks[41..44].iter().map(|c| c.stored_len).sum();
    assert_eq!(src.read.swap(0, Ordering::Relaxed), expected);

    // One whole tensor: exactly its stored bytes, nothing of "big".
    let other_t = r.tensor("other").unwrap().clone();
    r.read("other").unwrap();
    assert_eq!(src.read.swap(0, Ordering::Relaxed), other_t.stored_bytes());
}

#[test]
fn filters_pay_off_on_the_data_they_target() {
    let n = 1 << 20;
    // CSR column indices: rows of 100 random sorted targets among 20,000.
    let mut x = 7u64;
    let mut col = 0u32;
    let idx: Vec<u8> = (0..n as u32)
        .map(|i| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            col = if i % 100 == 0 { 0 } else { col } + 1 + (x >> 33) as u32 % 390;
            col
        })
        .flat_map(|v| v.to_le_bytes())
        .collect();
    // Spike mask, ~2% true.
    let spikes: Vec<u8> = (0..n)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((x >> 33) % 50 == 0) as u8
        })
        .collect();
    let stored = |dtype, data: &[u8], filter| {
        let opts = WriterOptions {
            compression: Compression::Zstd,
            filter,
            ..Default::default()
        };
        let bytes = write_to_vec(
            opts,
            &[(
                "x".into(),
                dtype,
                vec![data.len() as u64 / dtype.size() as u64],
                data.to_vec(),
            )],
        );
        let r = Reader::from_bytes(bytes).unwrap();
        assert_eq!(r.read("x").unwrap(), data);
        (
            r.tensor("x").unwrap().stored_bytes(),
            r.tensor("x").unwrap().filter,
        )
    };
    let (delta, f) = stored(DType::I32, &idx, None);
    assert_eq!(f, Filter::DeltaShuffle);
    let (shuf, _) = stored(DType::I32, &idx, Some(Filter::Shuffle));
    assert!(
        delta < shuf,
        "delta+shuffle {delta} should beat shuffle {shuf}"
    );
    let (packed, f) = stored(DType::Bool, &spikes, None);
    assert_eq!(f, Filter::BitPack);
    let (plain, _) = stored(DType::Bool, &spikes, Some(Filter::None));
    assert!(packed < plain, "bitpack {packed} should beat none {plain}");
}

#[test]
fn auto_keeps_dense_floats_raw_and_compresses_constant_state() {
    let mut x = 1u64;
    let noise: Vec<u8> = (0..1 << 16)
        .flat_map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((x >> 40) as f32 / 1e6).to_le_bytes()
        })
        .collect();
    let constant: Vec<u8> = std::iter::repeat((-65.0f32).to_le_bytes())
        .take(1 << 16)
        .flatten()
        .collect();
    let bytes = write_to_vec(
        WriterOptions::default(),
        &[
            ("w".into(), DType::F32, vec![1 << 16], noise),
            ("v".into(), DType::F32, vec![1 << 16], constant),
        ],
    );
    let r = Reader::from_bytes(bytes).unwrap();
    assert_eq!(r.tensor("w").unwrap().storage, Storage::Raw);
    assert_eq!(r.tensor("v").unwrap().storage, Storage::Chunked);
}

#[test]
fn writer_rejects_bad_arguments_clearly() {
    let mut w = Writer::new(Vec::new(), WriterOptions::default()).unwrap();
    let e = w.add_tensor("a", DType::F32, &[3], &[0; 8]).unwrap_err();
    assert!(e.to_string().contains("8 bytes given"), "{e}");
    w.add_tensor("a", DType::U8, &[1], &[0]).unwrap();
    let e = w.add_tensor("a", DType::U8, &[1], &[0]).unwrap_err();
    assert!(e.to_string().contains("already added"), "{e}");
    let e = w
        .add_tensor_with(
            "b",
            DType::F32,
            &[1],
            &[0; 4],
            &TensorOptions {
                filter: Some(Filter::BitPack),
                ..Default::default()
            },
        )
        .unwrap_err();
    assert!(e.to_string().contains("bitpack"), "{e}");
    for alignment in [0, 8, 48, 8192] {
        let e = Writer::new(
            Vec::new(),
            WriterOptions {
                alignment,
                ..Default::default()
            },
        )
        .unwrap_err();
        assert_eq!(e.kind(), "invalid_argument");
    }
    let e = Writer::new(
        Vec::new(),
        WriterOptions {
            level: 99,
            ..Default::default()
        },
    )
    .unwrap_err();
    assert!(e.to_string().contains("zstd level 99"), "{e}");
}

#[test]
fn failed_or_abandoned_save_keeps_the_old_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ckpt.bpz");
    let mut w = Writer::create(&path, WriterOptions::default()).unwrap();
    w.add_tensor("old", DType::U8, &[2], &[1, 2]).unwrap();
    w.finish().unwrap();
    let before = std::fs::read(&path).unwrap();
    {
        let mut w = Writer::create(&path, WriterOptions::default()).unwrap();
        w.add_tensor("new", DType::U8, &[2], &[3, 4]).unwrap();
        // dropped without finish
    }
    assert_eq!(std::fs::read(&path).unwrap(), before);
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers.len(), 1, "temporary files left: {leftovers:?}");
}

#[test]
fn tree_and_metadata_round_trip_and_refs_are_checked() {
    let mut w = Writer::new(Vec::new(), WriterOptions::default()).unwrap();
    w.add_tensor("a/b", DType::U8, &[1], &[9]).unwrap();
    let tree = serde_json::json!({"dict": [["a", {"dict": [["b", {"tensor": "a/b"}]]}], [3, {"float": 0.875}]]});
    w.set_tree(tree.clone());
    w.set_metadata(serde_json::json!({"epoch": 3, "note": "ü"}));
    let bytes = w.finish().unwrap().1.unwrap();
    let r = Reader::from_bytes(bytes).unwrap();
    assert_eq!(r.tree().unwrap(), tree);
    assert_eq!(r.metadata().unwrap()["epoch"], 3);
    assert_eq!(
        r.tree_json().unwrap(),
        serde_json::to_string(&tree).unwrap()
    );
    assert_eq!(r.writer().unwrap().unwrap().name, "bpz-rs");

    // A tree the reader would refuse is refused by the writer, in either format.
    for format in [FormatVersion::V1_0, FormatVersion::V1_1] {
        let opts = WriterOptions {
            format,
            ..WriterOptions::default()
        };
        for (tree, says) in [
            (serde_json::json!({"tensor": "nope"}), "\"nope\""),
            (
                serde_json::json!({"a": {"tensor": 3}}),
                "does not hold a string",
            ),
            (serde_json::json!([1]), "neither an object nor null"),
        ] {
            let mut w = Writer::new(Vec::new(), opts.clone()).unwrap();
            w.add_tensor("a/b", DType::U8, &[1], &[9]).unwrap();
            w.set_tree(tree);
            let e = w.finish().unwrap_err();
            assert_eq!(e.kind(), "invalid_argument");
            assert!(e.to_string().contains(says), "{e}");
        }
    }
}

#[test]
fn many_threads_read_one_archive() {
    let data: Vec<u8> = (0..1u32 << 18)
        .flat_map(|v| (v % 1000).to_le_bytes())
        .collect();
    let bytes = write_to_vec(
        WriterOptions {
            compression: Compression::Zstd,
            chunk_bytes: 1 << 14,
            ..Default::default()
        },
        &[("x".into(), DType::U32, vec![1 << 10, 1 << 8], data.clone())],
    );
    let r = Reader::from_bytes(bytes).unwrap();
    std::thread::scope(|s| {
        for k in 0..8u64 {
            let (r, data) = (&r, &data);
            s.spawn(move || {
                for j in 0..20u64 {
                    let a = (k * 97 + j * 13) % 1000;
                    let got = r.read_rows("x", a..a + 24).unwrap();
                    assert_eq!(got, data[(a * 1024) as usize..((a + 24) * 1024) as usize]);
                }
            });
        }
    });
}

#[test]
fn no_overwrite_refuses_an_existing_destination_atomically() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.bpz");
    std::fs::write(&path, b"precious").unwrap();
    let mut w = Writer::create(
        &path,
        WriterOptions {
            overwrite: false,
            ..Default::default()
        },
    )
    .unwrap();
    w.add_tensor("a", DType::U8, &[1], &[1]).unwrap();
    let e = w.finish().unwrap_err();
    assert_eq!(e.kind(), "io");
    assert_eq!(std::fs::read(&path).unwrap(), b"precious");
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        1,
        "temporary file left behind"
    );
}
