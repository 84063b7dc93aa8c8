//! Reading format 1.1 (spec §16): the lazy binary index — lookups that touch O(log n) of
//! it, every record on the search path checked — listing, versions and recovery.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bpz::{
    Compression, DType, FormatVersion, Reader, Source, VersionSelector, Writer, WriterOptions,
};

fn v11() -> WriterOptions {
    WriterOptions {
        format: FormatVersion::V1_1,
        time_ns: Some(1_700_000_000_000_000_000),
        sync: false,
        ..Default::default()
    }
}

type Spec = (String, DType, Vec<u64>, Vec<u8>);

fn write(opts: WriterOptions, tensors: &[Spec]) -> Vec<u8> {
    let mut w = Writer::new(Vec::new(), opts).unwrap();
    for (name, dtype, shape, data) in tensors {
        w.add_tensor(name, *dtype, shape, data).unwrap();
    }
    w.finish().unwrap().1.unwrap()
}

/// `n` small tensors saved in an order that is not their name order.
fn many(n: usize) -> Vec<Spec> {
    (0..n)
        .map(|i| {
            let k = (i * 7919) % n;
            let data: Vec<u8> = (0..16).map(|j| (k * 31 + j) as u8).collect();
            (format!("layer{k}/w"), DType::F32, vec![2, 2], data)
        })
        .collect()
}

/// A source that counts the reads made of it and the bytes they asked for.
struct Counting {
    data: Vec<u8>,
    reads: AtomicU64,
    bytes: AtomicU64,
    offsets: Mutex<Vec<u64>>,
}

impl Counting {
    fn new(data: Vec<u8>) -> Arc<Counting> {
        Arc::new(Counting {
            data,
            reads: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            offsets: Mutex::new(Vec::new()),
        })
    }

    fn take(&self) -> (u64, u64) {
        self.offsets.lock().unwrap().clear();
        (
            self.reads.swap(0, Ordering::Relaxed),
            self.bytes.swap(0, Ordering::Relaxed),
        )
    }
}

impl Source for Counting {
    fn len(&self) -> u64 {
        self.data.len() as u64
    }
    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        self.reads.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(buf.len() as u64, Ordering::Relaxed);
        self.offsets.lock().unwrap().push(offset);
        let o = offset as usize;
        buf.copy_from_slice(&self.data[o..o + buf.len()]);
        Ok(())
    }
}

#[test]
fn a_small_archive_reads_back_whole_and_by_name() {
    let tensors = many(50);
    let bytes = write(v11(), &tensors);
    let r = Reader::from_bytes(bytes).unwrap();
    assert_eq!(r.version().minor, 1);
    assert_eq!(r.version_number(), 1);
    assert_eq!(r.versions().len(), 1);
    assert!(r.recovered().is_none());
    assert_eq!(r.tensor_count(), 50);
    // By name before any listing: binary search.
    for (name, dtype, shape, data) in tensors.iter().rev() {
        let t = r.tensor(name).unwrap();
        assert_eq!((&t.name, t.dtype, &t.shape), (name, *dtype, shape));
        assert_eq!(&r.read(name).unwrap(), data);
        assert!(t.chunks.iter().all(|c| c.hash.is_some()));
    }
    assert_eq!(
        r.tensor("layer50/w").unwrap_err().kind(),
        "tensor_not_found"
    );
    assert_eq!(r.tensor("").unwrap_err().kind(), "tensor_not_found");
    assert_eq!(r.tensor("zzz").unwrap_err().kind(), "tensor_not_found");
    // The listing keeps the saving order; positions agree with lookups.
    let listed: Vec<&str> = r
        .tensors()
        .unwrap()
        .iter()
        .map(|t| t.name.as_str())
        .collect();
    let saved: Vec<&str> = tensors.iter().map(|t| t.0.as_str()).collect();
    assert_eq!(listed, saved);
    for (k, name) in saved.iter().enumerate() {
        assert_eq!(r.position(name).unwrap(), k);
        assert_eq!(r.tensor_at(k).unwrap().name, *name);
    }
    let all = r.read_all().unwrap();
    assert_eq!(all.len(), 50);
    for (got, (_, _, _, want)) in all.iter().zip(&tensors) {
        assert_eq!(got, want);
    }
    let report = r.verify().unwrap();
    assert_eq!((report.tensors, report.versions), (50, 1));
    assert_eq!(r.tree_json().unwrap(), "null");
    assert_eq!(r.metadata_json().unwrap(), "null");
    assert_eq!(r.writer().unwrap().unwrap().name, "bpz-rs");
}

#[test]
fn a_lookup_touches_a_logarithmic_number_of_blocks() {
    let tensors = many(20_000);
    let bytes = write(v11(), &tensors);
    let file_len = bytes.len() as u64;
    let src = Counting::new(bytes);
    let r = Reader::from_source_labeled(src.clone(), "counted".into()).unwrap();
    let (reads, read_bytes) = src.take();
    // The superblock, the tail, the head (the index of 20,000 tensors is larger than the
    // tail read) and the versions section: nothing per tensor.
    assert!(reads <= 4, "open made {reads} reads");
    assert!(
        read_bytes <= 64 + (64 << 10) + 2 * 4096,
        "open read {read_bytes} bytes"
    );
    let (name, _, _, data) = &tensors[12_345];
    assert_eq!(r.read(name).unwrap(), *data);
    let (reads, read_bytes) = src.take();
    // 15 probes of records, names and shapes, 4 KiB blocks, the last probes in blocks
    // already read; then the chunk records and the data.
    assert!(reads <= 3 * 15 + 2, "a lookup made {reads} reads");
    assert!(
        read_bytes <= (3 * 15 + 2) * 4096,
        "a lookup read {read_bytes} of {file_len} bytes"
    );
    // Looked up again: no index read at all.
    r.tensor(name).unwrap();
    assert_eq!(src.take().0, 0);
    // Its neighbour in name order: mostly blocks already cached.
    let mut sorted: Vec<&str> = tensors.iter().map(|t| t.0.as_str()).collect();
    sorted.sort_unstable();
    let near = sorted[sorted.binary_search(&name.as_str()).unwrap() + 1];
    r.tensor(near).unwrap();
    let (reads, _) = src.take();
    assert!(reads <= 6, "a neighbouring lookup made {reads} reads");
}

#[test]
fn a_version_not_in_the_file_is_an_invalid_argument_naming_those_present() {
    let bytes = write(v11(), &many(3));
    for which in [
        VersionSelector::Number(2),
        VersionSelector::Number(0),
        VersionSelector::FromLatest(-2),
        VersionSelector::FromLatest(0),
        VersionSelector::FromLatest(1),
    ] {
        let e =
            Reader::from_source_version(Arc::new(bytes.clone()), "f".into(), which).unwrap_err();
        assert_eq!(e.kind(), "invalid_argument", "{which:?}");
        assert!(e.to_string().contains("holds version 1"), "{e}");
    }
    for which in [
        VersionSelector::Latest,
        VersionSelector::Number(1),
        VersionSelector::FromLatest(-1),
    ] {
        let r = Reader::from_source_version(Arc::new(bytes.clone()), "f".into(), which).unwrap();
        assert_eq!(r.version_number(), 1);
    }
}

#[test]
fn compressed_tensors_and_a_tree_read_back() {
    let mut w = Writer::new(
        Vec::new(),
        WriterOptions {
            compression: Compression::Zstd,
            chunk_bytes: 4096,
            ..v11()
        },
    )
    .unwrap();
    let data: Vec<u8> = (0..100_000u32)
        .flat_map(|i| (i / 7).to_le_bytes())
        .collect();
    w.add_tensor("a", DType::U32, &[100_000], &data).unwrap();
    w.add_tensor("b", DType::U8, &[0], &[]).unwrap();
    w.set_tree(serde_json::json!({"dict": [["a", {"tensor": "a"}], ["b", {"tensor": "b"}]]}));
    w.set_metadata(serde_json::json!({"step": 3}));
    let bytes = w.finish().unwrap().1.unwrap();
    let r = Reader::from_bytes(bytes).unwrap();
    assert_eq!(r.read("a").unwrap(), data);
    assert_eq!(r.read_rows("a", 5000..5100).unwrap(), data[20_000..20_400]);
    assert!(r.tensor("a").unwrap().chunks.iter().any(|c| c.encoded));
    assert_eq!(r.metadata().unwrap()["step"], 3);
    assert_eq!(r.tree().unwrap()["dict"][0][0], "a");
    r.tensors().unwrap();
    let report = r
        .verify_with(&bpz::VerifyOptions {
            decode: true,
            max_decoded_bytes: None,
        })
        .unwrap();
    assert!(report.decoded);
}
