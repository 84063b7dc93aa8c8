//! The conformance vectors of `spec/vectors/`: golden archives with their
//! expected contents, and invalid files with the error each must give.
//! Shared by the `gen_vectors` example (which writes them) and the `vectors`
//! test (which checks the committed files against this code and the reader).

#![allow(dead_code)]

use bpz::format::{Superblock, Trailer, SUPERBLOCK_LEN, TRAILER_LEN};
use bpz::*;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

pub struct Golden {
    pub name: &'static str,
    pub bytes: Vec<u8>,
}

pub struct Invalid {
    pub name: String,
    pub bytes: Vec<u8>,
    /// `Error::kind()` the reader must give.
    pub error: &'static str,
    /// `"open"`: opening fails; `"read"`: opening succeeds, reading (or verifying) fails;
    /// `"list"`: opening may fail, else listing every tensor fails (spec §13).
    pub stage: &'static str,
    pub note: &'static str,
    /// The version to open instead of the latest (`"version"` in expected.json).
    pub version: Option<u64>,
}

/// Deterministic bytes (splitmix64).
pub fn prng_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut s = seed;
    let mut out = Vec::with_capacity(n + 8);
    while out.len() < n {
        s = s.wrapping_add(0x9e3779b97f4a7c15);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d049bb133111eb);
        out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    out.truncate(n);
    out
}

/// Valid, deterministic values for a dtype: booleans 0/1, floats finite and
/// small (so every float format, including FP8, holds them), the rest random.
pub fn sample_values(dtype: DType, n: usize, seed: u64) -> Vec<u8> {
    let raw = prng_bytes(n * dtype.size(), seed);
    match dtype {
        DType::Bool => raw.iter().map(|b| b & 1).collect(),
        DType::F32 => (0..n)
            .flat_map(|i| (i as f32 * 0.25 - 1.0).to_le_bytes())
            .collect(),
        DType::F64 => (0..n)
            .flat_map(|i| (i as f64 * -0.5 + 3.0).to_le_bytes())
            .collect(),
        DType::C64 => (0..n)
            .flat_map(|i| {
                [(i as f32), -(i as f32) / 2.0]
                    .into_iter()
                    .flat_map(f32::to_le_bytes)
            })
            .collect(),
        DType::C128 => (0..n)
            .flat_map(|i| {
                [(i as f64) / 4.0, 1.0]
                    .into_iter()
                    .flat_map(f64::to_le_bytes)
            })
            .collect(),
        // 1.0, 1.5, 2.0 ... in half and bfloat16: top bits of an f32.
        DType::BF16 => (0..n)
            .flat_map(|i| ((1.0f32 + i as f32 / 2.0).to_bits() >> 16).to_le_bytes()[..2].to_vec())
            .collect(),
        DType::F16 => (0..n)
            .flat_map(|i| (0x3c00u16 + (i as u16) * 0x200).to_le_bytes())
            .collect(),
        DType::F8E4M3 | DType::F8E4M3Fnuz | DType::F8E5M2 | DType::F8E5M2Fnuz | DType::F8E8M0 => {
            (0..n).map(|i| 0x30 + (i as u8 % 16)).collect()
        }
        _ => raw,
    }
}

/// A writer of a 1.0 vector (the 1.0 vectors stay byte-identical).
fn vector_writer(opts: WriterOptions) -> Writer<Vec<u8>> {
    vector_writer_as(FormatVersion::V1_0, opts)
}

fn vector_writer_as(format: FormatVersion, opts: WriterOptions) -> Writer<Vec<u8>> {
    let opts = WriterOptions {
        // A fixed writer name keeps the vectors byte-stable across releases.
        writer: WriterInfo {
            name: "bpz-spec-vectors".into(),
            version: "1".into(),
        },
        format,
        time_ns: Some(1_700_000_000_000_000_000),
        ..opts
    };
    Writer::new(Vec::new(), opts).unwrap()
}

fn finish(w: Writer<Vec<u8>>) -> Vec<u8> {
    w.finish().unwrap().1.unwrap()
}

fn raw_opts() -> WriterOptions {
    WriterOptions {
        compression: Compression::None,
        ..Default::default()
    }
}

fn zstd_opts(chunk_bytes: usize, filter: Option<Filter>) -> WriterOptions {
    WriterOptions {
        compression: Compression::Zstd,
        chunk_bytes,
        filter,
        level: 3,
        ..Default::default()
    }
}

pub fn golden() -> Vec<Golden> {
    let mut out = Vec::new();

    // tiny: the worked example of FORMAT.md.
    let mut w = vector_writer(raw_opts());
    w.add_tensor("x", DType::U8, &[3], &[1, 2, 3]).unwrap();
    w.set_tree(json!({"dict": [["x", {"tensor": "x"}]]}));
    out.push(Golden {
        name: "tiny",
        bytes: finish(w),
    });

    for (name, opts) in [
        ("all_dtypes_raw", raw_opts()),
        ("all_dtypes_zstd", zstd_opts(8, None)),
    ] {
        let mut w = vector_writer(opts);
        for (i, dtype) in DType::ALL.into_iter().enumerate() {
            let data = sample_values(dtype, 12, i as u64);
            w.add_tensor(dtype.name(), dtype, &[4, 3], &data).unwrap();
        }
        out.push(Golden {
            name,
            bytes: finish(w),
        });
    }

    // A compressible float tensor over several chunks, with and without shuffle.
    let membrane: Vec<u8> = (0..64 * 16)
        .flat_map(|i| (-65.0f32 + (i % 7) as f32 * 0.125).to_le_bytes())
        .collect();
    for (name, filter) in [
        ("multichunk_shuffle", Filter::Shuffle),
        ("multichunk_none", Filter::None),
    ] {
        let mut w = vector_writer(zstd_opts(1024, Some(filter)));
        w.add_tensor("V", DType::F32, &[64, 16], &membrane).unwrap();
        out.push(Golden {
            name,
            bytes: finish(w),
        });
    }

    // delta + shuffle on sorted indices, bit-packing on a spike mask.
    let mut w = vector_writer(zstd_opts(256, None));
    let indptr: Vec<u8> = (0..101i64).flat_map(|i| (i * 10).to_le_bytes()).collect();
    let indices: Vec<u8> = (0..1000i32)
        .flat_map(|i| ((i % 10) * 97 + i / 10 % 3).to_le_bytes())
        .collect();
    let spikes: Vec<u8> = prng_bytes(1000, 9).iter().map(|b| (*b < 8) as u8).collect();
    w.add_tensor("conn/indptr", DType::I64, &[101], &indptr)
        .unwrap();
    w.add_tensor("conn/indices", DType::I32, &[1000], &indices)
        .unwrap();
    w.add_tensor("spike", DType::Bool, &[10, 100], &spikes)
        .unwrap();
    out.push(Golden {
        name: "filters",
        bytes: finish(w),
    });

    // Incompressible and compressible chunks of one tensor: plain and encoded mixed.
    let mut mixed = prng_bytes(512, 3);
    mixed.extend(std::iter::repeat(0u8).take(512));
    let mut w = vector_writer(zstd_opts(256, Some(Filter::None)));
    w.add_tensor("mixed", DType::U8, &[4, 256], &mixed).unwrap();
    out.push(Golden {
        name: "plain_and_encoded_chunks",
        bytes: finish(w),
    });

    // 0-d and empty tensors, raw and compressed.
    for (name, opts) in [
        ("empty_and_scalar_raw", raw_opts()),
        ("empty_and_scalar_zstd", zstd_opts(64, None)),
    ] {
        let mut w = vector_writer(opts);
        w.add_tensor("scalar_f64", DType::F64, &[], &2.5f64.to_le_bytes())
            .unwrap();
        w.add_tensor("scalar_bool", DType::Bool, &[], &[1]).unwrap();
        w.add_tensor("empty_0", DType::F32, &[0], &[]).unwrap();
        w.add_tensor("empty_3x0", DType::I16, &[3, 0], &[]).unwrap();
        w.add_tensor("empty_0x5", DType::C64, &[0, 5], &[]).unwrap();
        out.push(Golden {
            name,
            bytes: finish(w),
        });
    }

    // No tensors at all.
    out.push(Golden {
        name: "no_tensors",
        bytes: finish(vector_writer(raw_opts())),
    });

    // A nested pytree with every leaf kind, escaped names and metadata.
    let mut w = vector_writer(WriterOptions {
        compression: Compression::AUTO,
        ..Default::default()
    });
    let weight: Vec<u8> = sample_values(DType::F32, 6, 1);
    let v: Vec<u8> = std::iter::repeat((-65.0f32).to_le_bytes())
        .take(2048)
        .flatten()
        .collect();
    w.add_tensor("net/l1/W", DType::F32, &[2, 3], &weight)
        .unwrap();
    w.add_tensor("net/E~1I/V", DType::F32, &[2048], &v).unwrap();
    w.add_tensor(
        "history/0",
        DType::I64,
        &[2],
        &[1, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0],
    )
    .unwrap();
    w.set_tree(json!({"dict": [
        ["net", {"dict": [
            ["l1", {"dict": [["W", {"tensor": "net/l1/W"}]]}],
            ["E/I", {"dict": [["V", {"tensor": "net/E~1I/V"}]]}]
        ]}],
        ["history", {"list": [{"tensor": "history/0"}, {"none": null}]}],
        ["pair", {"tuple": [{"int": 3}, {"int": "123456789012345678901234567890"}]}],
        ["point", {"namedtuple": {"name": "Point", "fields": ["x", "y"], "values": [{"float": 0.5}, {"float": "nan"}]}}],
        [7, {"bool": true}],
        ["label", {"str": "E/I network"}],
        ["blob", {"bytes": "AAEC/w=="}],
        ["z", {"complex": [1.0, "-inf"]}]
    ]}));
    w.set_metadata(json!({"epoch_i": 3, "train_acc": 0.875, "note": "ü", "tags": ["a", null]}));
    out.push(Golden {
        name: "nested_tree",
        bytes: finish(w),
    });

    // The largest alignment.
    let mut w = vector_writer(WriterOptions {
        alignment: 4096,
        ..raw_opts()
    });
    w.add_tensor("a", DType::U8, &[5], &[1, 2, 3, 4, 5])
        .unwrap();
    w.add_tensor("b", DType::U16, &[2], &[1, 0, 2, 0]).unwrap();
    out.push(Golden {
        name: "alignment_4096",
        bytes: finish(w),
    });

    // Readers must accept a newer minor version, optional feature bits and
    // unknown index fields.
    let base = out.iter().find(|g| g.name == "tiny").unwrap().bytes.clone();
    let mut idx = index_of(&base);
    idx["future_field"] = json!({"anything": [1, 2, 3]});
    idx["tensors"][0]["future_tensor_field"] = json!("ignored");
    let mut bytes = with_index(&base, &idx);
    patch_superblock(&mut bytes, |b| {
        b[10..12].copy_from_slice(&7u16.to_le_bytes());
        b[16..20].copy_from_slice(&0x8000_0001u32.to_le_bytes());
    });
    out.push(Golden {
        name: "future_minor",
        bytes,
    });

    golden_v11(&mut out);
    out
}

fn v11_opts(opts: WriterOptions) -> WriterOptions {
    WriterOptions {
        format: FormatVersion::V1_1,
        writer: WriterInfo {
            name: "bpz-spec-vectors".into(),
            version: "1".into(),
        },
        sync: false,
        ..opts
    }
}

/// Appends a version to `path`: `tensors` as (name, dtype, shape, bytes).
fn append_version(
    path: &std::path::Path,
    compression: Compression,
    time_ns: u64,
    tensors: &[(&str, DType, &[u64], &[u8])],
    metadata: Value,
) {
    let opts = v11_opts(WriterOptions {
        time_ns: Some(time_ns),
        chunk_bytes: 256,
        compression,
        level: 3,
        ..Default::default()
    });
    let mut w = Writer::append(path, opts).unwrap();
    for (name, dtype, shape, data) in tensors {
        w.add_tensor(name, *dtype, shape, data).unwrap();
    }
    w.set_metadata(metadata);
    w.finish().unwrap();
}

/// The 1.1 goldens (spec section 16): the 1.0 ones' contents with a binary index, and
/// files of several versions.
fn golden_v11(out: &mut Vec<Golden>) {
    let mut w = vector_writer_as(FormatVersion::V1_1, zstd_opts(8, None));
    for (i, dtype) in DType::ALL.into_iter().enumerate() {
        let data = sample_values(dtype, 12, i as u64);
        w.add_tensor(dtype.name(), dtype, &[4, 3], &data).unwrap();
    }
    out.push(Golden {
        name: "v11_all_dtypes_zstd",
        bytes: finish(w),
    });

    // The nested tree, its tensors and metadata, in a 1.1 file.
    let nested = out.iter().find(|g| g.name == "nested_tree").unwrap();
    let r = Reader::from_bytes(nested.bytes.clone()).unwrap();
    let mut w = vector_writer_as(
        FormatVersion::V1_1,
        WriterOptions {
            compression: Compression::AUTO,
            ..Default::default()
        },
    );
    for t in r.tensors().unwrap() {
        w.add_tensor(&t.name, t.dtype, &t.shape, &r.read(&t.name).unwrap())
            .unwrap();
    }
    w.set_tree_json_verbatim(r.tree_json().unwrap().into())
        .unwrap();
    w.set_metadata_json_verbatim(r.metadata_json().unwrap().into())
        .unwrap();
    out.push(Golden {
        name: "v11_nested_tree",
        bytes: finish(w),
    });

    let dir = tempfile::tempdir().unwrap();
    // Three versions: `conn` unchanged (shared), `V` changed in one chunk, `spikes`
    // removed in version 3, `w_new` added in version 2; metadata per version.
    let path = dir.path().join("versions.bpz");
    let conn: Vec<u8> = (0..512i32)
        .flat_map(|i| (i * 3 / 7).to_le_bytes())
        .collect();
    let v1: Vec<u8> = (0..256)
        .flat_map(|i| (-65.0f32 + (i % 5) as f32).to_le_bytes())
        .collect();
    let mut v2 = v1.clone();
    v2[700..704].copy_from_slice(&(-50.0f32).to_le_bytes());
    let spikes: Vec<u8> = prng_bytes(300, 4).iter().map(|b| b & 1).collect();
    let w_new = sample_values(DType::F64, 4, 2);
    let t0 = 1_700_000_000_000_000_000u64;
    append_version(
        &path,
        Compression::Zstd,
        t0,
        &[
            ("conn", DType::I32, &[512], &conn),
            ("V", DType::F32, &[256], &v1),
            ("spikes", DType::Bool, &[300], &spikes),
        ],
        json!({"step": 100}),
    );
    append_version(
        &path,
        Compression::Zstd,
        t0 + 1_000_000_000,
        &[
            ("conn", DType::I32, &[512], &conn),
            ("V", DType::F32, &[256], &v2),
            ("spikes", DType::Bool, &[300], &spikes),
            ("w_new", DType::F64, &[2, 2], &w_new),
        ],
        json!({"step": 200}),
    );
    append_version(
        &path,
        Compression::Zstd,
        t0 + 2_000_000_000,
        &[
            ("conn", DType::I32, &[512], &conn),
            ("V", DType::F32, &[256], &v2),
            ("w_new", DType::F64, &[2, 2], &w_new),
        ],
        json!({"step": 300}),
    );
    let versions = std::fs::read(&path).unwrap();

    // A raw tensor shared by the next version as a whole run.
    let path = dir.path().join("raw.bpz");
    let raw = prng_bytes(1000, 6);
    for (k, extra) in [(0u64, 1u8), (1, 2)] {
        append_version(
            &path,
            Compression::None,
            t0 + k,
            &[
                ("raw", DType::U8, &[1000], &raw),
                ("step", DType::U8, &[], &[extra]),
            ],
            json!({"step": k}),
        );
    }
    out.push(Golden {
        name: "v11_raw_shared",
        bytes: std::fs::read(&path).unwrap(),
    });

    // An unfinished append after two committed versions: chunks and part of an index
    // that no trailer commits.
    let two = {
        let r = Reader::from_bytes(versions.clone()).unwrap();
        let v2 = r.versions()[1];
        (v2.index_offset + v2.index_length + TRAILER_LEN as u64) as usize
    };
    let mut torn = versions[..two].to_vec();
    torn.extend_from_slice(&prng_bytes(300, 8));
    torn.extend_from_slice(b"BPZINDEX");
    torn.extend_from_slice(&[0; 77]);
    out.push(Golden {
        name: "v11_torn_append",
        bytes: torn,
    });
    out.push(Golden {
        name: "v11_versions",
        bytes: versions,
    });
}

/// Expected contents of a golden archive, as written to `<name>.json`.
pub fn expected(bytes: &[u8]) -> Value {
    let r = Reader::from_bytes(bytes.to_vec()).unwrap();
    let tensors = describe_all(&r);
    let mut e = json!({
        "version": [r.version().major, r.version().minor],
        "alignment": r.superblock().alignment,
        "file_bytes": bytes.len(),
        "tensors": tensors,
        "tree": r.tree().expect("tree"),
        "metadata": r.metadata().expect("metadata"),
    });
    if r.superblock().required_features & bpz::binindex::REQUIRED_BINARY_INDEX != 0 {
        let versions: Vec<Value> = r
            .versions()
            .iter()
            .map(|v| {
                let at = r.at_version(VersionSelector::Number(v.number)).unwrap();
                json!({
                    "version": v.number,
                    "time_ns": v.time_ns,
                    "metadata": at.metadata().unwrap(),
                    "bytes_added": v.bytes_added,
                    "tensors": describe_all(&at),
                })
            })
            .collect();
        e["versions"] = json!(versions);
        if r.recovered().is_some() {
            e["recovered"] = json!(true);
        }
    }
    e
}

fn describe_all(r: &Reader) -> Vec<Value> {
    r.tensors()
        .unwrap()
        .iter()
        .map(|t| describe(r, t))
        .collect()
}

/// A tensor as the expected-results files describe it, its bytes read through `r`.
pub fn describe(r: &Reader, t: &bpz::TensorInfo) -> Value {
    let data = r.read(&t.name).unwrap();
    json!({
        "name": t.name,
        "dtype": t.dtype.name(),
        "shape": t.shape,
        "storage": t.storage.name(),
        "filter": t.filter.name(),
        "chunks": t.chunks.len(),
        "encoded_chunks": t.chunks.iter().filter(|c| c.encoded).count(),
        "nbytes": t.nbytes(),
        "sha256": hex(&Sha256::digest(&data)),
    })
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|c| format!("{c:02x}")).collect()
}

/// The parsed index of an archive (trusting it: for building vectors only).
pub fn index_of(bytes: &[u8]) -> Value {
    let tail: [u8; TRAILER_LEN] = bytes[bytes.len() - TRAILER_LEN..].try_into().unwrap();
    let t = Trailer::decode("vector", &tail, bytes.len() as u64).unwrap();
    serde_json::from_slice(&bytes[t.index_offset as usize..(t.index_offset + t.index_len) as usize])
        .unwrap()
}

fn data_region(bytes: &[u8]) -> &[u8] {
    let tail: [u8; TRAILER_LEN] = bytes[bytes.len() - TRAILER_LEN..].try_into().unwrap();
    let t = Trailer::decode("vector", &tail, bytes.len() as u64).unwrap();
    &bytes[..t.index_offset as usize]
}

/// The same archive with another index (raw index bytes), with valid checksums.
pub fn with_index_bytes(bytes: &[u8], index: &[u8]) -> Vec<u8> {
    let mut out = data_region(bytes).to_vec();
    let trailer = Trailer {
        index_offset: out.len() as u64,
        index_len: index.len() as u64,
        index_crc32c: crc32c::crc32c(index),
    };
    out.extend_from_slice(index);
    out.extend_from_slice(&trailer.encode());
    out
}

pub fn with_index(bytes: &[u8], index: &Value) -> Vec<u8> {
    with_index_bytes(bytes, &serde_json::to_vec(index).unwrap())
}

/// Edits the superblock and recomputes its checksum.
pub fn patch_superblock(bytes: &mut [u8], edit: impl FnOnce(&mut [u8])) {
    edit(&mut bytes[..SUPERBLOCK_LEN]);
    let crc = crc32c::crc32c(&bytes[..60]);
    bytes[60..64].copy_from_slice(&crc.to_le_bytes());
}

fn flip(bytes: &[u8], at: usize) -> Vec<u8> {
    let mut b = bytes.to_vec();
    b[at] ^= 0x10;
    b
}

pub fn invalid(golden: &[Golden]) -> Vec<Invalid> {
    let get = |n: &str| golden.iter().find(|g| g.name == n).unwrap().bytes.clone();
    let nested = get("nested_tree");
    let filters = get("filters");
    let tiny = get("tiny");
    let mut out = Vec::new();
    let mut add = |name: &str, bytes: Vec<u8>, error, stage, note| {
        out.push(Invalid {
            name: name.into(),
            bytes,
            error,
            stage,
            note,
            version: None,
        })
    };

    for cut in [
        0usize,
        5,
        63,
        64,
        95,
        100,
        nested.len() / 2,
        nested.len() - 33,
        nested.len() - 1,
    ] {
        add(
            &format!("truncated_{cut}"),
            nested[..cut].to_vec(),
            "truncated",
            "open",
            "the file cut to this many bytes",
        );
    }
    let mut gguf = tiny.clone();
    gguf[..4].copy_from_slice(b"GGUF");
    add(
        "bad_magic",
        gguf,
        "bad_magic",
        "open",
        "another format's header",
    );
    let crlf_lost: Vec<u8> = {
        let mut v = Vec::new();
        let mut i = 0;
        while i < tiny.len() {
            if tiny[i] == b'\r' && tiny.get(i + 1) == Some(&b'\n') {
                i += 1;
            }
            v.push(tiny[i]);
            i += 1;
        }
        v
    };
    add(
        "text_mode_crlf",
        crlf_lost,
        "bad_magic",
        "open",
        "every \\r\\n turned into \\n by a text-mode transfer",
    );
    let mut seven_bit = tiny.clone();
    seven_bit[0] &= 0x7f;
    add(
        "seven_bit",
        seven_bit,
        "bad_magic",
        "open",
        "the high bit of the first byte cleared",
    );

    let mut v = tiny.clone();
    patch_superblock(&mut v, |b| b[8..10].copy_from_slice(&2u16.to_le_bytes()));
    add(
        "future_major",
        v,
        "unsupported_version",
        "open",
        "major version 2",
    );
    let mut v = tiny.clone();
    patch_superblock(&mut v, |b| {
        b[12..16].copy_from_slice(&(1u32 << 5).to_le_bytes())
    });
    add(
        "unknown_required_feature",
        v,
        "unsupported_feature",
        "open",
        "required feature bit 5",
    );
    let mut v = tiny.clone();
    patch_superblock(&mut v, |b| b[20..24].copy_from_slice(&48u32.to_le_bytes()));
    add(
        "bad_alignment",
        v,
        "invalid_index",
        "open",
        "alignment 48 is not a power of two",
    );

    add(
        "superblock_bitflip",
        flip(&tiny, 9),
        "checksum_mismatch",
        "open",
        "a bit of the version field flipped",
    );
    let t_len = nested.len();
    let idx_start = t_len - TRAILER_LEN - serde_json::to_vec(&index_of(&nested)).unwrap().len();
    add(
        "index_bitflip",
        flip(&nested, idx_start + 40),
        "checksum_mismatch",
        "open",
        "a bit of the index flipped",
    );
    add(
        "trailer_bitflip",
        flip(&nested, t_len - TRAILER_LEN + 2),
        "checksum_mismatch",
        "open",
        "a bit of the index offset flipped",
    );
    let raw_off = index_of(&nested)["tensors"][0]["chunks"][0][0]
        .as_u64()
        .unwrap() as usize;
    add(
        "raw_data_bitflip",
        flip(&nested, raw_off + 3),
        "checksum_mismatch",
        "read",
        "a bit of raw tensor net/l1/W flipped",
    );
    let fi = index_of(&filters);
    let z_off = fi["tensors"][1]["chunks"][1][0].as_u64().unwrap() as usize;
    add(
        "compressed_data_bitflip",
        flip(&filters, z_off + 5),
        "checksum_mismatch",
        "read",
        "a bit of chunk 1 of conn/indices flipped",
    );

    let edit = |base: &[u8], f: &dyn Fn(&mut Value)| {
        let mut idx = index_of(base);
        f(&mut idx);
        with_index(base, &idx)
    };
    add(
        "overlapping_tensors",
        edit(&filters, &|i| {
            let first = i["tensors"][0]["chunks"][0][0].clone();
            i["tensors"][1]["chunks"][0][0] = first;
        }),
        "invalid_index",
        "open",
        "a chunk of conn/indices starts inside conn/indptr",
    );
    add(
        "offset_past_end",
        edit(&tiny, &|i| {
            i["tensors"][0]["chunks"][0][0] = json!(1u64 << 40)
        }),
        "invalid_index",
        "open",
        "data offset 2^40 in a small file",
    );
    add(
        "length_near_2_64",
        edit(&tiny, &|i| {
            i["tensors"][0]["chunks"][0][1] = json!(u64::MAX - 8)
        }),
        "invalid_index",
        "open",
        "stored length 2^64-9",
    );
    add(
        "huge_shape",
        edit(&tiny, &|i| {
            i["tensors"][0]["shape"] = json!([1u64 << 62, 1u64 << 62])
        }),
        "limit_exceeded",
        "open",
        "2^124 elements",
    );
    add(
        "chunk_elems_huge",
        edit(&tiny, &|i| {
            i["tensors"][0]["chunk_elems"] = json!(1u64 << 60)
        }),
        "limit_exceeded",
        "open",
        "chunk_elems 2^60",
    );
    add(
        "tree_not_object",
        edit(&tiny, &|i| i["tree"] = json!([{"tensor": "x"}])),
        "invalid_index",
        "open",
        "a tree that is an array",
    );
    add(
        "rank_over_limit",
        edit(&tiny, &|i| i["tensors"][0]["shape"] = json!(vec![1; 65])),
        "limit_exceeded",
        "open",
        "rank 65",
    );
    add(
        "name_too_long",
        edit(&tiny, &|i| {
            i["tensors"][0]["name"] = json!("n".repeat(5000))
        }),
        "limit_exceeded",
        "open",
        "a 5000-byte name",
    );
    add(
        "duplicate_names",
        edit(&filters, &|i| {
            i["tensors"][1]["name"] = i["tensors"][0]["name"].clone()
        }),
        "invalid_index",
        "open",
        "two tensors named conn/indptr",
    );
    add(
        "unknown_dtype",
        edit(&tiny, &|i| i["tensors"][0]["dtype"] = json!("F4")),
        "unsupported_feature",
        "open",
        "dtype F4",
    );
    add(
        "unknown_filter",
        edit(&filters, &|i| i["tensors"][0]["filter"] = json!("lz4ish")),
        "unsupported_feature",
        "open",
        "filter lz4ish",
    );
    add(
        "wrong_chunk_count",
        edit(&filters, &|i| {
            i["tensors"][1]["chunks"].as_array_mut().unwrap().pop();
        }),
        "invalid_index",
        "open",
        "one chunk missing from the table",
    );
    add(
        "bad_encoding_flag",
        edit(&tiny, &|i| i["tensors"][0]["chunks"][0][3] = json!(2)),
        "invalid_index",
        "open",
        "chunk encoding 2",
    );
    add(
        "misaligned_raw",
        edit(&nested, &|i| {
            let o = i["tensors"][0]["chunks"][0][0].as_u64().unwrap();
            i["tensors"][0]["chunks"][0][0] = json!(o + 4);
        }),
        "invalid_index",
        "open",
        "raw data 4 bytes past an aligned offset",
    );
    add(
        "missing_tree_ref",
        edit(&tiny, &|i| i["tree"] = json!({"tensor": "nope"})),
        "invalid_index",
        "open",
        "the tree names a tensor that is not in the index",
    );
    let deep = (0..200).fold(json!(0), |v, _| json!([v]));
    add(
        "deep_json",
        edit(&tiny, &|i| i["metadata"] = deep.clone()),
        "limit_exceeded",
        "open",
        "metadata nested 200 deep",
    );

    let mut text = serde_json::to_vec(&index_of(&tiny)).unwrap();
    text.truncate(text.len() - 1);
    add(
        "index_not_json",
        with_index_bytes(&tiny, &text),
        "invalid_index",
        "open",
        "the index JSON is cut short",
    );
    let text = String::from_utf8(serde_json::to_vec(&index_of(&tiny)).unwrap())
        .unwrap()
        .replace("\"tree\":", "\"metadata2\":NaN,\"tree\":");
    add(
        "nan_in_json",
        with_index_bytes(&tiny, text.as_bytes()),
        "invalid_index",
        "open",
        "NaN is not JSON",
    );
    let text = String::from_utf8(serde_json::to_vec(&index_of(&tiny)).unwrap())
        .unwrap()
        .replace("\"metadata\":null", "\"metadata\":{\"a\":1,\"a\":2}");
    add(
        "duplicate_member",
        with_index_bytes(&tiny, text.as_bytes()),
        "invalid_index",
        "open",
        "metadata with two members named a",
    );
    let mut text = serde_json::to_vec(&index_of(&tiny)).unwrap();
    let pos = text.windows(3).position(|w| w == b"\"x\"").unwrap();
    text[pos + 1] = 0xff;
    add(
        "invalid_utf8_name",
        with_index_bytes(&tiny, &text),
        "invalid_index",
        "open",
        "a name with a 0xff byte",
    );
    let mut v = tiny.clone();
    let n = v.len();
    v[n - TRAILER_LEN + 8..n - TRAILER_LEN + 16].copy_from_slice(&(1u64 << 62).to_le_bytes());
    let crc = crc32c::crc32c(&v[n - TRAILER_LEN..n - TRAILER_LEN + 20]);
    v[n - TRAILER_LEN + 20..n - TRAILER_LEN + 24].copy_from_slice(&crc.to_le_bytes());
    add(
        "index_length_huge",
        v,
        "limit_exceeded",
        "open",
        "the trailer declares a 2^62-byte index",
    );

    // A zstd frame that inflates past its chunk's declared size (a bomb),
    // with a valid checksum: caught while decoding, never allocated.
    let mut bomb = vector_writer(zstd_opts(64, Some(Filter::None)));
    bomb.add_tensor("z", DType::U8, &[64], &[0; 64]).unwrap();
    let bomb = finish(bomb);
    let frame = zstd::bulk::compress(&vec![0u8; 1 << 20], 3).unwrap();
    let mut data = bomb[..SUPERBLOCK_LEN].to_vec();
    data.extend_from_slice(&frame);
    let mut idx = index_of(&bomb);
    idx["tensors"][0]["chunks"] = json!([[SUPERBLOCK_LEN, frame.len(), crc32c::crc32c(&frame), 1]]);
    let index = serde_json::to_vec(&idx).unwrap();
    let trailer = Trailer {
        index_offset: data.len() as u64,
        index_len: index.len() as u64,
        index_crc32c: crc32c::crc32c(&index),
    };
    data.extend_from_slice(&index);
    data.extend_from_slice(&trailer.encode());
    add(
        "decompression_bomb",
        data,
        "corrupt_data",
        "read",
        "a 64-byte chunk whose frame inflates to 1 MiB",
    );

    // Two frames that together decode to the right size: a chunk is exactly one frame.
    let mut frames = zstd::bulk::compress(&[0u8; 32], 3).unwrap();
    frames.extend(zstd::bulk::compress(&[0u8; 32], 3).unwrap());
    let mut data = bomb[..SUPERBLOCK_LEN].to_vec();
    data.extend_from_slice(&frames);
    let mut idx = index_of(&bomb);
    idx["tensors"][0]["chunks"] =
        json!([[SUPERBLOCK_LEN, frames.len(), crc32c::crc32c(&frames), 1]]);
    let index = serde_json::to_vec(&idx).unwrap();
    let trailer = Trailer {
        index_offset: data.len() as u64,
        index_len: index.len() as u64,
        index_crc32c: crc32c::crc32c(&index),
    };
    data.extend_from_slice(&index);
    data.extend_from_slice(&trailer.encode());
    add(
        "two_zstd_frames",
        data,
        "corrupt_data",
        "read",
        "a chunk of two concatenated zstd frames",
    );
    add(
        "zero_length_chunk",
        edit(&filters, &|i| i["tensors"][1]["chunks"][0][1] = json!(0)),
        "invalid_index",
        "open",
        "a chunk with stored length 0",
    );
    let _ = Superblock::new(64);
    invalid_v11(golden, &mut out);
    out
}

// ---------------------------------------------------------------- format 1.1 (spec §16)

use bpz::binindex::{
    IndexHead, SectionEntry, SectionKind, TensorRecord, VersionRecord, CHUNK_RECORD_LEN,
    DIRECTORY_AT, SUPERBLOCK_COPY_AT, TENSOR_RECORD_LEN, VERSION_RECORD_LEN,
};

/// Where one version's index lies in a file.
#[derive(Debug, Clone, Copy)]
struct At {
    offset: usize,
    len: usize,
}

impl At {
    fn of(v: &VersionInfo) -> At {
        At {
            offset: v.index_offset as usize,
            len: v.index_length as usize,
        }
    }

    /// Every version of a valid file, oldest first.
    fn all(file: &[u8]) -> Vec<At> {
        let r = Reader::from_bytes(file.to_vec()).unwrap();
        r.versions().iter().map(At::of).collect()
    }

    fn latest(file: &[u8]) -> At {
        *At::all(file).last().unwrap()
    }

    /// File offsets of a section of this index.
    fn section(&self, s: &SectionEntry) -> std::ops::Range<usize> {
        self.offset + s.offset as usize..self.offset + (s.offset + s.length) as usize
    }
}

fn head_at(file: &[u8], at: At) -> IndexHead {
    IndexHead::decode(&file[at.offset..at.offset + at.len]).unwrap()
}

/// Which checksums [`reseal`] recomputes (the others are left as they are).
#[derive(Clone, Copy)]
struct Seal {
    chunks_crc: bool,
    record_crc: bool,
    sections: bool,
}

const SEAL_ALL: Seal = Seal {
    chunks_crc: true,
    record_crc: true,
    sections: true,
};

/// Recomputes the checksums of the index at `at` after an edit, in place: tensor
/// records (`chunks_crc`, `record_crc`), section crcs, then the head crc into the trailer
/// that follows the index. Returns the head crc.
fn reseal(file: &mut [u8], at: At, seal: Seal) -> u32 {
    let mut head = head_at(file, at);
    if seal.chunks_crc || seal.record_crc {
        let range = |k| at.section(head.section(k).unwrap());
        let (tensors, names, shapes, chunks) = (
            range(SectionKind::Tensors),
            range(SectionKind::Names),
            range(SectionKind::Shapes),
            range(SectionKind::Chunks),
        );
        for i in 0..tensors.len() / TENSOR_RECORD_LEN {
            let rec = tensors.start + i * TENSOR_RECORD_LEN;
            let mut r =
                TensorRecord::decode(file[rec..rec + TENSOR_RECORD_LEN].try_into().unwrap());
            if seal.chunks_crc {
                let from = chunks.start + r.first_chunk as usize * CHUNK_RECORD_LEN;
                let to = from + r.chunk_count as usize * CHUNK_RECORD_LEN;
                r.chunks_crc = crc32c::crc32c(&file[from..to]);
            }
            if seal.record_crc {
                let from = names.start + r.name_offset as usize;
                let name = file[from..from + r.name_length as usize].to_vec();
                let from = shapes.start + r.shape_offset as usize * 8;
                let shape: Vec<u64> = file[from..from + r.rank as usize * 8]
                    .chunks_exact(8)
                    .map(|d| u64::from_le_bytes(d.try_into().unwrap()))
                    .collect();
                r.seal(&name, &shape);
            }
            file[rec..rec + TENSOR_RECORD_LEN].copy_from_slice(&r.encode());
        }
    }
    if seal.sections {
        for s in head.sections.iter_mut() {
            s.crc = crc32c::crc32c(&file[at.section(s)]);
        }
        // The magic is rewritten as it was (an edit of it survives).
        let magic: [u8; 8] = file[at.offset..at.offset + 8].try_into().unwrap();
        let bytes = head.encode();
        file[at.offset..at.offset + bytes.len()].copy_from_slice(&bytes);
        file[at.offset..at.offset + 8].copy_from_slice(&magic);
    }
    write_trailer(file, at)
}

/// Writes the trailer after the index at `at` with the crc of its head as it stands.
fn write_trailer(file: &mut [u8], at: At) -> u32 {
    let count = u32::from_le_bytes(file[at.offset + 48..at.offset + 52].try_into().unwrap());
    let head_len = IndexHead::len_for(count as usize).min(at.len);
    let crc = crc32c::crc32c(&file[at.offset..at.offset + head_len]);
    let trailer = Trailer {
        index_offset: at.offset as u64,
        index_len: at.len as u64,
        index_crc32c: crc,
    };
    let end = at.offset + at.len;
    file[end..end + TRAILER_LEN].copy_from_slice(&trailer.encode());
    crc
}

/// Reseals every version from `from` on, oldest first, so that the later versions'
/// records of the earlier ones hold their new head crcs.
fn reseal_chain(file: &mut [u8], ats: &[At], from: usize) {
    let mut crcs = std::collections::HashMap::new();
    for at in &ats[from..] {
        let head = head_at(file, *at);
        let versions = at.section(head.section(SectionKind::Versions).unwrap());
        for rec in versions.step_by(VERSION_RECORD_LEN) {
            let mut r =
                VersionRecord::decode(file[rec..rec + VERSION_RECORD_LEN].try_into().unwrap());
            if let Some(&crc) = crcs.get(&r.version) {
                r.index_crc = crc;
                file[rec..rec + VERSION_RECORD_LEN].copy_from_slice(&r.encode());
            }
        }
        crcs.insert(head.version, reseal(file, *at, SEAL_ALL));
    }
}

/// File offset of the tensor record named `name` in the index at `at`, and the record.
fn record_named(file: &[u8], at: At, name: &str) -> (usize, TensorRecord) {
    let head = head_at(file, at);
    let names = at.section(head.section(SectionKind::Names).unwrap());
    let tensors = at.section(head.section(SectionKind::Tensors).unwrap());
    tensors
        .step_by(TENSOR_RECORD_LEN)
        .map(|rec| {
            let r = TensorRecord::decode(file[rec..rec + TENSOR_RECORD_LEN].try_into().unwrap());
            (rec, r)
        })
        .find(|(_, r)| {
            let from = names.start + r.name_offset as usize;
            &file[from..from + r.name_length as usize] == name.as_bytes()
        })
        .unwrap_or_else(|| panic!("no tensor {name:?}"))
}

/// File offset of chunk record `k` of tensor `name` in the index at `at`.
fn chunk_record_at(file: &[u8], at: At, name: &str, k: usize) -> usize {
    let head = head_at(file, at);
    let chunks = at.section(head.section(SectionKind::Chunks).unwrap());
    let (_, r) = record_named(file, at, name);
    chunks.start + (r.first_chunk as usize + k) * CHUNK_RECORD_LEN
}

/// Sets the bytes of `[data_start, index_offset)` of the version at `at` that none of its
/// chunks references to zero (the padding rule), after chunks were moved.
fn zero_unreferenced(file: &mut [u8], at: At) {
    let head = head_at(file, at);
    let chunks = at.section(head.section(SectionKind::Chunks).unwrap());
    let mut used = vec![false; at.offset];
    for rec in chunks.step_by(CHUNK_RECORD_LEN) {
        let offset = u64::from_le_bytes(file[rec..rec + 8].try_into().unwrap()) as usize;
        let len = u64::from_le_bytes(file[rec + 8..rec + 16].try_into().unwrap()) as usize;
        used[offset..offset + len]
            .iter_mut()
            .for_each(|u| *u = true);
    }
    for i in head.data_start as usize..at.offset {
        if !used[i] {
            file[i] = 0;
        }
    }
}

/// An index taken apart into its head and section bodies, to be laid out again (for
/// edits that change its size).
struct Parts {
    head: IndexHead,
    bodies: Vec<Vec<u8>>,
}

impl Parts {
    fn of(file: &[u8], at: At) -> Parts {
        let head = head_at(file, at);
        let bodies = head
            .sections
            .iter()
            .map(|s| file[at.section(s)].to_vec())
            .collect();
        Parts { head, bodies }
    }

    fn body(&mut self, kind: SectionKind) -> &mut Vec<u8> {
        let i = self
            .head
            .sections
            .iter()
            .position(|s| s.kind == kind)
            .unwrap();
        &mut self.bodies[i]
    }

    /// The index bytes: the head, then the sections one after another with their crcs,
    /// then zero padding so that the trailer ends at a multiple of 64. `fix` edits the
    /// directory (and the bytes) after the layout.
    fn encode(
        &self,
        index_offset: usize,
        fix: impl FnOnce(&mut [SectionEntry], &mut Vec<u8>),
    ) -> Vec<u8> {
        let mut head = self.head.clone();
        let mut out = vec![0u8; head.head_len()];
        for (s, body) in head.sections.iter_mut().zip(&self.bodies) {
            s.offset = out.len() as u64;
            s.length = body.len() as u64;
            s.crc = crc32c::crc32c(body);
            out.extend_from_slice(body);
        }
        let pad = bpz::binindex::index_padding(index_offset as u64, out.len() as u64);
        out.resize(out.len() + pad as usize, 0);
        fix(&mut head.sections, &mut out);
        let bytes = head.encode();
        out[..bytes.len()].copy_from_slice(&bytes);
        out
    }
}

/// `file` up to its latest index, then `index` and a trailer for it.
fn with_index11(file: &[u8], index: &[u8]) -> Vec<u8> {
    let at = At::latest(file);
    let mut out = file[..at.offset].to_vec();
    out.extend_from_slice(index);
    out.extend_from_slice(&[0; TRAILER_LEN]);
    write_trailer(
        &mut out,
        At {
            offset: at.offset,
            len: index.len(),
        },
    );
    out
}

/// The single-version 1.1 file the 1.1 invalid vectors break: plain and encoded chunks,
/// a raw tensor, names whose sorted order differs from their saving order.
fn v11_base() -> Vec<u8> {
    let mut w = vector_writer_as(FormatVersion::V1_1, zstd_opts(128, Some(Filter::None)));
    w.add_tensor("noise", DType::U8, &[2, 128], &prng_bytes(256, 11))
        .unwrap();
    let ones: Vec<u8> = std::iter::repeat(1.0f32.to_le_bytes())
        .take(64)
        .flatten()
        .collect();
    w.add_tensor("ones", DType::F32, &[64], &ones).unwrap();
    let raw = TensorOptions {
        compression: Some(Compression::None),
        ..Default::default()
    };
    w.add_tensor_with("raw", DType::U8, &[100], &prng_bytes(100, 12), &raw)
        .unwrap();
    let mask: Vec<u8> = prng_bytes(32, 13).iter().map(|b| b & 1).collect();
    w.add_tensor("mask", DType::Bool, &[32], &mask).unwrap();
    finish(w)
}

fn invalid_v11(golden: &[Golden], out: &mut Vec<Invalid>) {
    let versions = golden
        .iter()
        .find(|g| g.name == "v11_versions")
        .unwrap()
        .bytes
        .clone();
    let base = v11_base();
    let at = At::latest(&base);
    let mut add = |name: &str, bytes: Vec<u8>, error, stage, note, version| {
        out.push(Invalid {
            name: format!("v11_{name}"),
            bytes,
            error,
            stage,
            note,
            version,
        })
    };
    let edited = |file: &[u8], at: At, seal: Seal, edit: &dyn Fn(&mut Vec<u8>)| {
        let mut b = file.to_vec();
        edit(&mut b);
        reseal(&mut b, at, seal);
        b
    };
    let head = head_at(&base, at);
    let section = |kind| at.section(head.section(kind).unwrap());
    let record = |i: usize| section(SectionKind::Tensors).start + i * TENSOR_RECORD_LEN;

    // The head and the directory (§16.5 steps 1–3): on open.
    let mut b = base.clone();
    let end = b.len();
    b[end - TRAILER_LEN + 16] ^= 0x01;
    let t = Trailer::decode(
        "vector",
        b[end - TRAILER_LEN..].try_into().unwrap(),
        end as u64,
    );
    assert!(t.is_err(), "the trailer crc must now be wrong");
    let crc = u32::from_le_bytes(
        b[end - TRAILER_LEN + 16..end - TRAILER_LEN + 20]
            .try_into()
            .unwrap(),
    );
    let trailer = Trailer {
        index_offset: at.offset as u64,
        index_len: at.len as u64,
        index_crc32c: crc,
    };
    b[end - TRAILER_LEN..].copy_from_slice(&trailer.encode());
    add(
        "head_crc",
        b,
        "checksum_mismatch",
        "open",
        "the trailer's index_crc is not the crc32c of the index head (the trailer itself checks)",
        None,
    );
    let mut b = versions.clone();
    let latest = At::latest(&b);
    b[latest.offset + 16] ^= 0x01;
    add(
        "latest_head_damaged",
        b,
        "checksum_mismatch",
        "open",
        "a bit of the latest version's index head (time_ns) flipped under a valid trailer: \
         damage, not an unfinished append, so no recovery to version 2 (16.7)",
        None,
    );
    add(
        "index_magic",
        edited(&base, at, SEAL_ALL, &|b| b[at.offset + 7] = b'Y'),
        "invalid_index",
        "open",
        "the index starts with BPZINDEY",
        None,
    );
    add(
        "superblock_copy",
        edited(&base, at, SEAL_ALL, &|b| {
            let copy = at.offset + SUPERBLOCK_COPY_AT;
            patch_superblock(&mut b[copy..copy + SUPERBLOCK_LEN], |s| s[30] = 1)
        }),
        "invalid_index",
        "open",
        "the superblock copy in the index head differs from bytes 0-63 (a reserved byte, \
         itself a valid superblock)",
        None,
    );
    let parts = Parts::of(&base, at);
    let metadata_at = parts
        .head
        .sections
        .iter()
        .position(|s| s.kind == SectionKind::Metadata)
        .unwrap();
    let tree_at = parts
        .head
        .sections
        .iter()
        .position(|s| s.kind == SectionKind::Tree)
        .unwrap();
    assert_eq!(
        parts.bodies[tree_at], parts.bodies[metadata_at],
        "tree and metadata both null"
    );
    let index = parts.encode(at.offset, |s, bytes| {
        let m = &mut s[metadata_at];
        let old = m.offset as usize..(m.offset + m.length) as usize;
        bytes[old].iter_mut().for_each(|b| *b = 0);
        m.offset = bytes.len() as u64;
    });
    add(
        "section_outside",
        with_index11(&base, &index),
        "invalid_index",
        "open",
        "the metadata section starts at the index's end",
        None,
    );
    let index = parts.encode(at.offset, |s, bytes| {
        let m = s[metadata_at];
        bytes[m.offset as usize..(m.offset + m.length) as usize]
            .iter_mut()
            .for_each(|b| *b = 0);
        let t = s[tree_at];
        s[metadata_at] = SectionEntry {
            kind: SectionKind::Metadata,
            ..t
        };
    });
    add(
        "sections_overlap",
        with_index11(&base, &index),
        "invalid_index",
        "open",
        "the metadata and tree sections are the same bytes (both null)",
        None,
    );
    let mut p = Parts::of(&base, at);
    p.head.sections.remove(metadata_at);
    p.bodies.remove(metadata_at);
    add(
        "section_missing",
        with_index11(&base, &p.encode(at.offset, |_, _| {})),
        "invalid_index",
        "open",
        "no metadata section (a required kind)",
        None,
    );
    let mut p = Parts::of(&base, at);
    p.head.sections.push(p.head.sections[metadata_at]);
    p.bodies.push(p.bodies[metadata_at].clone());
    add(
        "section_twice",
        with_index11(&base, &p.encode(at.offset, |_, _| {})),
        "invalid_index",
        "open",
        "two metadata sections (same contents, no overlap)",
        None,
    );
    let mut p = Parts::of(&base, at);
    while p.head.sections.len() < 65 {
        let kind = SectionKind::Unknown(1000 + p.head.sections.len() as u32);
        p.head.sections.push(SectionEntry {
            kind,
            offset: 0,
            length: 0,
            crc: 0,
        });
        p.bodies.push(Vec::new());
    }
    add(
        "section_count",
        with_index11(&base, &p.encode(at.offset, |_, _| {})),
        "invalid_index",
        "open",
        "65 directory entries (57 of unknown kinds, empty), over the limit of 64",
        None,
    );
    add(
        "tensors_length",
        edited(&base, at, SEAL_ALL, &|b| {
            let count = head.tensor_count + 1;
            b[at.offset + 32..at.offset + 40].copy_from_slice(&count.to_le_bytes())
        }),
        "invalid_index",
        "open",
        "tensor_count one more than the tensors section's records",
        None,
    );
    let mut b = versions.clone();
    let latest = At::latest(&b);
    let h = head_at(&b, latest);
    let s = h.section(SectionKind::Versions).unwrap();
    b[latest.section(s).start + 9] ^= 0x01;
    reseal(
        &mut b,
        latest,
        Seal {
            sections: false,
            ..SEAL_ALL
        },
    );
    add(
        "versions_crc",
        b,
        "checksum_mismatch",
        "open",
        "a bit of the versions section (version 1's time_ns) flipped, its crc not updated",
        None,
    );

    // Per-tensor and listing rules (§16.5): a lookup or a listing finds them.
    add(
        "record_crc",
        edited(
            &base,
            at,
            Seal {
                record_crc: false,
                ..SEAL_ALL
            },
            &|b| b[record(1) + 60] ^= 0x01,
        ),
        "checksum_mismatch",
        "list",
        "a bit of tensor record 1's record_crc flipped",
        None,
    );
    add(
        "chunks_crc",
        edited(
            &base,
            at,
            Seal {
                chunks_crc: false,
                ..SEAL_ALL
            },
            &|b| b[record(2) + 48] ^= 0x01,
        ),
        "checksum_mismatch",
        "list",
        "a bit of tensor record 2's chunks_crc flipped (its record_crc updated)",
        None,
    );
    let names = head.section(SectionKind::Names).unwrap();
    add(
        "section_crc",
        edited(
            &base,
            at,
            Seal {
                sections: false,
                ..SEAL_ALL
            },
            &|b| {
                let e = at.offset
                    + DIRECTORY_AT
                    + head.sections.iter().position(|s| s == names).unwrap() * 32;
                b[e + 24] ^= 0x01
            },
        ),
        "checksum_mismatch",
        "list",
        "a bit of the names section's crc in the directory flipped",
        None,
    );
    add(
        "names_unsorted",
        edited(&base, at, SEAL_ALL, &|b| {
            let (r0, r1) = (record(0), record(1));
            let first = b[r0..r0 + TENSOR_RECORD_LEN].to_vec();
            b.copy_within(r1..r1 + TENSOR_RECORD_LEN, r0);
            b[r1..r1 + TENSOR_RECORD_LEN].copy_from_slice(&first);
        }),
        "invalid_index",
        "list",
        "tensor records 0 and 1 swapped: names not in increasing order",
        None,
    );
    add(
        "duplicate_names",
        edited(&base, at, SEAL_ALL, &|b| {
            let (r0, r1) = (record(0), record(1));
            b.copy_within(r0..r0 + 12, r1)
        }),
        "invalid_index",
        "list",
        "tensor record 1 has record 0's name",
        None,
    );
    add(
        "position_not_permutation",
        edited(&base, at, SEAL_ALL, &|b| {
            let (r0, r1) = (record(0), record(1));
            b.copy_within(r0 + 12..r0 + 16, r1 + 12)
        }),
        "invalid_index",
        "list",
        "tensor records 0 and 1 have the same position",
        None,
    );
    let mut p = Parts::of(&base, at);
    *p.body(SectionKind::Tree) = br#"{"tensor": "nope"}"#.to_vec();
    add(
        "missing_tree_ref",
        with_index11(&base, &p.encode(at.offset, |_, _| {})),
        "invalid_index",
        "list",
        "the tree names a tensor that the version does not hold",
        None,
    );
    let mut b = base.clone();
    let (p0, p1) = (
        chunk_record_at(&b, at, "noise", 0),
        chunk_record_at(&b, at, "noise", 1),
    );
    let c0 = bpz::binindex::ChunkRecord::decode(b[p0..p0 + CHUNK_RECORD_LEN].try_into().unwrap());
    let mut c1 =
        bpz::binindex::ChunkRecord::decode(b[p1..p1 + CHUNK_RECORD_LEN].try_into().unwrap());
    assert!(
        c0.encoded == 0 && c1.encoded == 0,
        "noise's chunks are plain"
    );
    // Chunk 1 moved to start inside chunk 0, its crc and hash those of its new bytes.
    c1.offset = c0.offset + 64;
    let stored = &b[c1.offset as usize..(c1.offset + c1.stored_len) as usize];
    c1.crc32c = crc32c::crc32c(stored);
    c1.hash = bpz::binindex::content_hash(stored);
    b[p1..p1 + CHUNK_RECORD_LEN].copy_from_slice(&c1.encode());
    zero_unreferenced(&mut b, at);
    reseal(&mut b, at, SEAL_ALL);
    add(
        "overlapping_chunks",
        b,
        "invalid_index",
        "list",
        "chunk 1 of noise starts in the middle of chunk 0 (overlapping, not the same range)",
        None,
    );
    add(
        "reserved_nonzero",
        edited(&base, at, SEAL_ALL, &|b| b[record(0) + 55] = 1),
        "invalid_index",
        "list",
        "a reserved byte of tensor record 0 is 1",
        None,
    );
    add(
        "unknown_dtype",
        edited(&base, at, SEAL_ALL, &|b| b[record(0) + 44] = 200),
        "unsupported_feature",
        "list",
        "dtype code 200",
        None,
    );
    add(
        "unknown_filter",
        edited(&base, at, SEAL_ALL, &|b| b[record(1) + 46] = 9),
        "unsupported_feature",
        "list",
        "filter code 9",
        None,
    );

    // Data (§16.3): found on reading or verifying.
    let p0 = chunk_record_at(&base, at, "noise", 0);
    add(
        "hash_mismatch",
        edited(&base, at, SEAL_ALL, &|b| b[p0 + 24] ^= 0x01),
        "checksum_mismatch",
        "read",
        "a bit of the content hash of noise's first (plain) chunk flipped",
        None,
    );

    // The superblock (§16.1).
    let mut b = base.clone();
    let feature = |s: &mut [u8]| s[12..16].copy_from_slice(&(1u32 | 1 << 3).to_le_bytes());
    patch_superblock(&mut b, feature);
    let copy = at.offset + SUPERBLOCK_COPY_AT;
    patch_superblock(&mut b[copy..copy + SUPERBLOCK_LEN], feature);
    reseal(&mut b, at, SEAL_ALL);
    add(
        "unknown_required_feature",
        b,
        "unsupported_feature",
        "open",
        "required feature bits 0 and 3 (bit 3 unknown), in the superblock and its copy",
        None,
    );

    // Versions (§16.4): the chain, and a version's own end.
    let ats = At::all(&versions);
    let (v1, v2, v3) = (ats[0], ats[1], ats[2]);
    let records = at_versions_section(&versions, v3);
    let chain = |f: &dyn Fn(&mut [VersionRecord])| {
        let mut b = versions.clone();
        let mut r = records.clone();
        f(&mut r);
        let range = v3.section(head_at(&b, v3).section(SectionKind::Versions).unwrap());
        let bytes: Vec<u8> = r.iter().flat_map(|r| r.encode()).collect();
        b[range].copy_from_slice(&bytes);
        reseal(&mut b, v3, SEAL_ALL);
        b
    };
    add(
        "chain_forward",
        chain(&|r| {
            r[0].index_offset = r[1].index_offset;
            r[0].index_length = r[1].index_length;
            r[0].index_crc = r[1].index_crc;
        }),
        "invalid_index",
        "open",
        "version 1's record points to version 2's index, after version 2's data start",
        None,
    );
    add(
        "chain_loop",
        chain(&|r| r[1] = VersionRecord { version: 2, ..r[0] }),
        "invalid_index",
        "open",
        "version 2's record is version 1's bytes again (the chain loops back)",
        None,
    );
    add(
        "chain_overlap",
        chain(&|r| r[1].data_start = r[0].index_offset),
        "invalid_index",
        "open",
        "version 2's data starts inside version 1's index",
        None,
    );
    // Version 1's V references the chunk that version 2 wrote in its place.
    let r = Reader::from_bytes(versions.clone()).unwrap();
    let old = r.at_version(VersionSelector::Number(1)).unwrap();
    let new = r.at_version(VersionSelector::Number(2)).unwrap();
    let (a, z) = (old.tensor("V").unwrap(), new.tensor("V").unwrap());
    let k = (0..a.chunks.len())
        .find(|&k| a.chunks[k].offset != z.chunks[k].offset)
        .unwrap();
    assert!(z.chunks[k].offset >= v1.offset as u64 + v1.len as u64);
    let mut b = versions.clone();
    let from = chunk_record_at(&b, v2, "V", k);
    let to = chunk_record_at(&b, v1, "V", k);
    b.copy_within(from..from + CHUNK_RECORD_LEN, to);
    reseal_chain(&mut b, &ats, 0);
    let _ = v3;
    add(
        "chunk_past_version_end",
        b,
        "invalid_index",
        "list",
        "version 1's V references a chunk that version 2 wrote, past version 1's index",
        Some(1),
    );

    // Torn files: a single version cut short has no committed version.
    for (what, cut) in [
        ("index", at.offset + at.len / 2),
        ("data", at.offset / 2),
        ("trailer", base.len() - 1),
    ] {
        add(
            &format!("truncated_{what}"),
            base[..cut].to_vec(),
            "truncated",
            "open",
            "a one-version 1.1 file cut short: no committed version to open",
            None,
        );
    }
}

fn at_versions_section(file: &[u8], at: At) -> Vec<VersionRecord> {
    let range = at.section(head_at(file, at).section(SectionKind::Versions).unwrap());
    file[range]
        .chunks_exact(VERSION_RECORD_LEN)
        .map(|b| VersionRecord::decode(b.try_into().unwrap()))
        .collect()
}
