//! Whole-tensor loads (`read_all`, `read_many`, `read_many_into`) read neighbouring small
//! chunks with one read: the bytes and every checksum must come out exactly as with one
//! read per tensor, for every layout; a damaged chunk inside a joint read is still named;
//! and the memory check of loads can be turned off with `BPZ_MEMORY_CHECK=0`.

mod common;

use std::ffi::OsStr;
use std::path::Path;
use std::time::Duration;

use bpz::format::{Superblock, Trailer};
use bpz::read::{COALESCE_CHUNK_MAX, COALESCE_READ_MAX};
use bpz::{Backend, Compression, DType, Reader, Writer, WriterOptions};

fn data(n: usize, seed: u64, compressible: bool) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if compressible {
                (i / 97 % 5) as u8
            } else {
                x as u8
            }
        })
        .collect()
}

/// Tensors of many sizes (0-d to past the coalescing bounds), raw or zstd, small chunks.
fn write(
    path: &Path,
    compression: Compression,
    alignment: u32,
    chunk_bytes: usize,
) -> Vec<(String, Vec<u8>)> {
    let opts = WriterOptions {
        compression,
        alignment,
        chunk_bytes,
        sync: false,
        ..WriterOptions::default()
    };
    let mut w = Writer::create(path, opts).unwrap();
    let sizes = [
        1usize,
        4,
        64,
        100,
        4096,
        4096,
        5000,
        65_536,
        70_000,
        300_000,
        0,
        4096,
        2 << 20,
        8,
        4096,
    ];
    let mut all = Vec::new();
    for rep in 0..40 {
        for (k, &n) in sizes.iter().enumerate() {
            if rep > 0 && n > 100_000 {
                continue;
            }
            let name = format!("r{rep}/t{k}");
            let bytes = data(n, (rep * 100 + k) as u64, k % 2 == 0);
            let shape: Vec<u64> = if n == 1 { vec![] } else { vec![n as u64] };
            w.add_tensor(&name, DType::U8, &shape, &bytes).unwrap();
            all.push((name, bytes));
        }
    }
    w.finish().unwrap();
    all
}

#[test]
fn loads_of_many_tensors_match_reads_one_by_one() {
    let dir = tempfile::tempdir().unwrap();
    for (n, (compression, alignment, chunk_bytes)) in [
        (Compression::None, 64, 1 << 20),
        (Compression::None, 4096, 16 << 10),
        (Compression::Zstd, 64, 8 << 10),
        (Compression::Zstd, 64, 1 << 20),
    ]
    .into_iter()
    .enumerate()
    {
        let path = dir.path().join(format!("a{n}.bpz"));
        let truth = write(&path, compression, alignment, chunk_bytes);
        let bytes = std::fs::read(&path).unwrap();
        let readers = [
            Reader::open_with(&path, Backend::Mmap).unwrap(),
            Reader::open_with(&path, Backend::Pread).unwrap(),
            Reader::from_bytes(bytes).unwrap(),
        ];
        for mut r in readers {
            for parallel in [true, false] {
                r.set_parallel(parallel);
                let all = r.read_all().unwrap();
                assert_eq!(all.len(), truth.len());
                for ((name, want), got) in truth.iter().zip(&all) {
                    assert!(got == want, "{name}");
                }
                // A subset, out of order, with a tensor asked for twice (overlapping chunks).
                let names: Vec<&str> = truth
                    .iter()
                    .rev()
                    .step_by(3)
                    .map(|(n, _)| n.as_str())
                    .chain(["r0/t4"])
                    .collect();
                let many = r.read_many(&names).unwrap();
                for (name, got) in names.iter().zip(&many) {
                    assert!(
                        *got == truth.iter().find(|(n, _)| n == name).unwrap().1,
                        "{name}"
                    );
                }
                let mut bufs: Vec<Vec<u8>> = names
                    .iter()
                    .map(|n| vec![0xAA; r.tensor(n).unwrap().nbytes() as usize])
                    .collect();
                r.read_many_into(
                    names
                        .iter()
                        .copied()
                        .zip(bufs.iter_mut().map(|b| &mut b[..]))
                        .collect(),
                )
                .unwrap();
                assert_eq!(bufs, many);
            }
        }
    }
}

#[test]
fn wrong_buffers_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.bpz");
    write(&path, Compression::None, 64, 1 << 20);
    let r = Reader::open(&path).unwrap();
    let mut small = [0u8; 3];
    let e = r
        .read_many_into(vec![("r0/t4", &mut small[..])])
        .unwrap_err();
    assert_eq!(e.kind(), "invalid_argument", "{e}");
    assert_eq!(
        r.read_many_into(vec![("nope", &mut small[..])])
            .unwrap_err()
            .kind(),
        "tensor_not_found"
    );
    assert_eq!(
        r.read_all_into(vec![&mut small[..]]).unwrap_err().kind(),
        "invalid_argument"
    );
}

/// Every chunk of a joint read is checked on its own: a flipped byte in any small chunk
/// (plain or encoded) is reported against that tensor, whichever backend.
#[test]
fn a_damaged_chunk_inside_a_joint_read_is_named() {
    let dir = tempfile::tempdir().unwrap();
    for compression in [Compression::None, Compression::Zstd] {
        let path = dir.path().join("a.bpz");
        write(&path, compression, 64, 1 << 20);
        let original = std::fs::read(&path).unwrap();
        let r = Reader::open(&path).unwrap();
        let small: Vec<_> = r
            .tensors()
            .unwrap()
            .iter()
            .filter(|t| {
                t.chunks.len() == 1
                    && t.chunks[0].stored_len > 16
                    && t.chunks[0].stored_len < COALESCE_CHUNK_MAX
            })
            .map(|t| (t.name.clone(), t.chunks[0]))
            .collect();
        assert!(small.len() > 50);
        for (name, c) in small.iter().step_by(small.len() / 7) {
            let mut bad = original.clone();
            bad[(c.offset + c.stored_len / 2) as usize] ^= 0x10;
            std::fs::write(&path, &bad).unwrap();
            for backend in [Backend::Mmap, Backend::Pread] {
                let r = Reader::open_with(&path, backend).unwrap();
                let e = r.read_all().unwrap_err();
                assert_eq!(e.kind(), "checksum_mismatch", "{e}");
                assert!(
                    e.to_string().contains(&format!("tensor {name:?} chunk 0")),
                    "{name}: {e}"
                );
            }
        }
    }
}

/// A hand-made file whose one zstd tensor declares 1 TiB: 4,096 chunks of 256 MiB, each
/// stored as 1 byte (not a frame: nothing may get as far as decoding it).
fn huge(path: &Path) {
    let (chunks, chunk): (u64, u64) = (4096, 256 << 20);
    let mut out = Superblock::new(64).encode().to_vec();
    let crc = crc32c::crc32c(&[0u8]);
    let list: Vec<String> = (0..chunks)
        .map(|i| format!("[{},1,{crc},1]", 64 + i))
        .collect();
    let index = format!(
        r#"{{"tensors":[{{"name":"huge","dtype":"U8","shape":[{}],"storage":"chunked","filter":"none","chunk_elems":{chunk},"chunks":[{}]}}]}}"#,
        chunks * chunk,
        list.join(",")
    );
    out.resize(out.len() + chunks as usize, 0);
    let trailer = Trailer {
        index_offset: out.len() as u64,
        index_len: index.len() as u64,
        index_crc32c: crc32c::crc32c(index.as_bytes()),
    };
    out.extend_from_slice(index.as_bytes());
    out.extend_from_slice(&trailer.encode());
    std::fs::write(path, out).unwrap();
}

/// Runs the `#[ignore]`d `child_loads_huge` with 2 GiB of address space and `BPZ_MEMORY_CHECK`
/// set to `setting` (or unset), expecting `kind` from every load.
fn run_child(dir: &Path, setting: Option<&str>, kind: &str) {
    let env = [
        ("BPZ_TEST_DIR", Some(dir.as_os_str())),
        ("BPZ_EXPECT_KIND", Some(OsStr::new(kind))),
        ("BPZ_MEMORY_CHECK", setting.map(OsStr::new)),
    ];
    common::run_ignored_test(
        "child_loads_huge",
        &env,
        Some(2048),
        Duration::from_secs(60),
    )
    .unwrap_or_else(|e| panic!("BPZ_MEMORY_CHECK={setting:?}: {e}"));
}

#[test]
fn bpz_memory_check_0_turns_the_memory_check_off() {
    let dir = tempfile::tempdir().unwrap();
    huge(&dir.path().join("huge.bpz"));
    // Checked: refused before allocating, and the message says how to skip the check.
    run_child(dir.path(), None, "limit_exceeded");
    run_child(dir.path(), Some("1"), "limit_exceeded");
    // Not checked: the allocation itself is refused (2 GiB of address space), still an error.
    run_child(dir.path(), Some("0"), "out_of_memory");
}

#[test]
#[ignore = "run by bpz_memory_check_0_turns_the_memory_check_off"]
fn child_loads_huge() {
    let dir = std::env::var("BPZ_TEST_DIR").unwrap();
    let kind = std::env::var("BPZ_EXPECT_KIND").unwrap();
    let r = Reader::open(Path::new(&dir).join("huge.bpz")).unwrap();
    for e in [
        r.read("huge").unwrap_err(),
        r.read_all().unwrap_err(),
        r.read_many(&["huge"]).unwrap_err(),
    ] {
        assert_eq!(e.kind(), kind, "{e}");
        if kind == "limit_exceeded" {
            assert!(
                e.to_string()
                    .contains("set BPZ_MEMORY_CHECK=0 to skip this check"),
                "{e}"
            );
        }
    }
}

// A coalesced read must be able to hold at least one whole chunk.
const _: () = assert!(COALESCE_READ_MAX >= COALESCE_CHUNK_MAX);
