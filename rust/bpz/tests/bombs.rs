//! Decode-time bombs: a valid 8 MiB archive of 1,024 chunks of 256 MiB of zeros (every
//! checksum right, every frame honest) declares 256 GiB. Opening and listing it cost
//! nothing; `verify()` checks its 8 MiB of checksums without decoding; `verify_with`
//! decoding is refused before any work past the budget; loads are refused when the
//! declared size exceeds the memory left — typed errors, never minutes of decoding, an
//! abort or an OOM kill.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use bpz::format::{Superblock, Trailer};
use bpz::{Backend, Reader, VerifyOptions};

const CHUNK: u64 = 256 << 20;
const CHUNKS: u64 = 1024;

/// One tensor of `CHUNKS` chunks (or `CHUNKS` tensors of one chunk), each its own copy of
/// the zstd frame of `CHUNK` zero bytes.
fn bomb(one_tensor: bool) -> Vec<u8> {
    let frame = zstd::bulk::compress(&vec![0u8; CHUNK as usize], 19).unwrap();
    let crc = crc32c::crc32c(&frame);
    let mut out = Superblock::new(64).encode().to_vec();
    let mut chunks = Vec::new();
    for _ in 0..CHUNKS {
        chunks.push(format!("[{},{},{crc},1]", out.len(), frame.len()));
        out.extend_from_slice(&frame);
    }
    let entry = |name: &str, n: u64, chunks: &[String]| {
        format!(
            r#"{{"name":"{name}","dtype":"U8","shape":[{}],"storage":"chunked","filter":"none","chunk_elems":{CHUNK},"chunks":[{}]}}"#,
            n * CHUNK,
            chunks.join(",")
        )
    };
    let tensors: Vec<String> = if one_tensor {
        vec![entry("zeros", CHUNKS, &chunks)]
    } else {
        chunks
            .iter()
            .enumerate()
            .map(|(i, c)| entry(&format!("t{i}"), 1, std::slice::from_ref(c)))
            .collect()
    };
    let index = format!(r#"{{"tensors":[{}]}}"#, tensors.join(","));
    let trailer = Trailer {
        index_offset: out.len() as u64,
        index_len: index.len() as u64,
        index_crc32c: crc32c::crc32c(index.as_bytes()),
    };
    out.extend_from_slice(index.as_bytes());
    out.extend_from_slice(&trailer.encode());
    out
}

fn within<T>(limit: Duration, what: &str, f: impl FnOnce() -> T) -> T {
    let t0 = Instant::now();
    let out = f();
    assert!(t0.elapsed() < limit, "{what} took {:?}", t0.elapsed());
    out
}

#[test]
fn a_decode_bomb_is_verified_by_checksum_and_refused_for_decoding() {
    let dir = tempfile::tempdir().unwrap();
    for one_tensor in [true, false] {
        let path = dir.path().join(format!("bomb_{one_tensor}.bpz"));
        std::fs::write(&path, bomb(one_tensor)).unwrap();
        let label = path.display().to_string();
        for backend in [Backend::Mmap, Backend::Pread] {
            let r = within(Duration::from_secs(5), "open", || {
                Reader::open_with(&path, backend).unwrap()
            });
            let declared: u64 = r.tensors().unwrap().iter().map(|t| t.nbytes()).sum();
            assert_eq!(declared, CHUNKS * CHUNK);
            assert!(r.file_len() < 10 << 20, "{} bytes", r.file_len());
            // Before: verify decoded all 256 GiB (minutes).
            let report = within(Duration::from_secs(20), "verify", || r.verify().unwrap());
            assert!(!report.decoded);
            assert_eq!(report.decoded_bytes, declared);
            let e = within(Duration::from_secs(5), "verify(decode)", || {
                r.verify_with(&VerifyOptions {
                    decode: true,
                    max_decoded_bytes: None,
                })
                .unwrap_err()
            });
            assert_eq!(e.kind(), "limit_exceeded", "{e}");
            let text = e.to_string();
            assert!(
                text.contains(&label) && text.contains("max_decoded_bytes"),
                "{text}"
            );
            assert!(
                text.contains(&declared.to_string())
                    && text.contains(&r.default_decode_budget().to_string()),
                "{text}"
            );
            assert_eq!(
                r.default_decode_budget(),
                4 << 30,
                "the floor, for an 8 MiB file"
            );
            // One tensor alone is within the budget when it is small enough, and decodes.
            if !one_tensor {
                let opts = VerifyOptions {
                    decode: true,
                    max_decoded_bytes: None,
                };
                within(Duration::from_secs(20), "verify one tensor", || {
                    r.verify_tensor_with("t7", &opts).unwrap()
                });
            }
            // A budget asked for explicitly.
            let small = VerifyOptions {
                decode: true,
                max_decoded_bytes: Some(CHUNK - 1),
            };
            let name = &r.tensors().unwrap()[0].name;
            assert_eq!(
                r.verify_tensor_with(name, &small).unwrap_err().kind(),
                "limit_exceeded"
            );
        }
    }
}

/// Loads of the bomb in a child limited to 4 GiB of address space (so the result does not
/// depend on this machine's memory): refused with LimitExceeded before allocating.
#[test]
fn loading_a_decode_bomb_is_refused_before_allocating() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("bomb.bpz"), bomb(true)).unwrap();
    let env = [("BPZ_BOMB_DIR", Some(dir.path().as_os_str()))];
    common::run_ignored_test(
        "child_loads_the_bomb",
        &env,
        Some(4096),
        Duration::from_secs(300),
    )
    .unwrap_or_else(|e| panic!("{e}"));
}

#[test]
#[ignore = "run by loading_a_decode_bomb_is_refused_before_allocating"]
fn child_loads_the_bomb() {
    let path = Path::new(&std::env::var("BPZ_BOMB_DIR").unwrap()).join("bomb.bpz");
    let r = Reader::open(&path).unwrap();
    let e = within(Duration::from_secs(5), "read", || {
        r.read("zeros").unwrap_err()
    });
    assert_eq!(e.kind(), "limit_exceeded", "{e}");
    assert!(e.to_string().contains(&path.display().to_string()), "{e}");
    // 1 GiB of rows is within the limit here; 8 GiB is not.
    assert_eq!(r.read_rows("zeros", 0..(1 << 30)).unwrap().len(), 1 << 30);
    assert_eq!(
        r.read_rows("zeros", 0..(8 << 30)).unwrap_err().kind(),
        "limit_exceeded"
    );
}
