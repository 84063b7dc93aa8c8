//! The C ABI on a file truncated in place while open: `bpz_read`, `bpz_read_rows`,
//! `bpz_verify` and `bpz_verify_with` return BPZ_ERR_TRUNCATED (or, for data before the
//! cut, the bytes), never SIGBUS. Each case runs in a child process (this binary, on one
//! `#[ignore]`d test), so a signal is reported with its case instead of ending the run.

use std::ffi::CString;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bpz::*;
use bpz_core::{Compression, DType, Reader, Writer, WriterOptions};

const CHILD: &str = "child_truncates_then_reads";

fn write(path: &Path, compressed: bool, chunk_bytes: usize, sizes: &[usize]) {
    let opts = WriterOptions {
        chunk_bytes,
        compression: if compressed {
            Compression::Zstd
        } else {
            Compression::None
        },
        sync: false,
        ..WriterOptions::default()
    };
    let mut w = Writer::create(path, opts).unwrap();
    for (i, &n) in sizes.iter().enumerate() {
        let data: Vec<u8> = (0..n)
            .map(|k| {
                if compressed {
                    (k / 300 % 7) as u8
                } else {
                    (k * 131 + i) as u8
                }
            })
            .collect();
        w.add_tensor(&format!("t{i}"), DType::U8, &[(n / 64) as u64, 64], &data)
            .unwrap();
    }
    w.finish().unwrap();
}

#[test]
fn truncating_an_open_archive_gives_error_codes_not_signals() {
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let layouts: [(&str, bool, usize, &[usize]); 4] = [
        ("raw_small_chunks", false, 16 << 10, &[256 << 10, 8 << 10]),
        ("raw_large_chunk", false, 2 << 20, &[1 << 20]),
        ("zstd_one_chunk", true, 2 << 20, &[128 << 10]),
        ("zstd_many_chunks", true, 32 << 10, &[1 << 20]),
    ];
    let mut ran = 0;
    for (name, compressed, chunk_bytes, sizes) in layouts {
        let original = dir.path().join(format!("{name}.bpz"));
        write(&original, compressed, chunk_bytes, sizes);
        let r = Reader::open(&original).unwrap();
        let (len, t) = (r.file_len(), *r.trailer());
        let first = r.tensors().unwrap()[0].chunks[0];
        let mut cuts = vec![
            4096,
            first.offset + first.stored_len,
            len / 2,
            t.index_offset + 1,
            len - 1,
        ];
        cuts.retain(|&c| c < len);
        for cut in cuts {
            let path = dir.path().join(format!("{name}.{cut}.bpz"));
            std::fs::copy(&original, &path).unwrap();
            let mut child = Command::new(&exe)
                .args([
                    "--exact",
                    CHILD,
                    "--ignored",
                    "--nocapture",
                    "--test-threads",
                    "1",
                ])
                .env("BPZ_TRUNCATE_PATH", &path)
                .env("BPZ_TRUNCATE_AT", cut.to_string())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            let deadline = Instant::now() + Duration::from_secs(60);
            while child.try_wait().unwrap().is_none() {
                if Instant::now() > deadline {
                    child.kill().unwrap();
                    panic!("{name} cut at {cut}: the child hung");
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let out = child.wait_with_output().unwrap();
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(
                out.status.success() && text.contains("1 passed"),
                "{name} cut at {cut}: child {:?}\n{text}",
                out.status
            );
            ran += 1;
        }
    }
    assert!(ran >= 18, "only {ran} cases");
}

#[test]
#[ignore = "run by truncating_an_open_archive_gives_error_codes_not_signals"]
fn child_truncates_then_reads() {
    let path = std::env::var("BPZ_TRUNCATE_PATH").unwrap();
    let cut: u64 = std::env::var("BPZ_TRUNCATE_AT").unwrap().parse().unwrap();
    let truth = Reader::open(&path).unwrap();
    let c_path = CString::new(path.clone()).unwrap();
    let archives = [BPZ_BACKEND_MMAP, BPZ_BACKEND_PREAD].map(|backend| {
        let mut a: *mut Archive = std::ptr::null_mut();
        assert_eq!(
            unsafe { bpz_open(c_path.as_ptr(), backend, &mut a) },
            BPZ_OK
        );
        a
    });
    let wants: Vec<Vec<u8>> = truth
        .tensors()
        .unwrap()
        .iter()
        .map(|t| truth.read(&t.name).unwrap())
        .collect();
    // Cut in place: the same inode, so the archives' maps now reach past the end.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(cut)
        .unwrap();
    let message = || {
        unsafe { std::ffi::CStr::from_ptr(bpz_last_error_message()) }
            .to_string_lossy()
            .into_owned()
    };
    for a in archives {
        for (i, t) in truth.tensors().unwrap().iter().enumerate() {
            let intact = t.chunks.iter().all(|c| c.offset + c.stored_len <= cut);
            let want = &wants[i];
            let mut buf = vec![0u8; want.len()];
            let expect = |code: i32, got: &[u8], want: &[u8], op: &str| {
                if code == BPZ_OK {
                    assert_eq!(got, want, "{op} {}", t.name);
                } else {
                    assert!(!intact, "{op} {}: {}", t.name, message());
                    assert_eq!(code, BPZ_ERR_TRUNCATED, "{op} {}: {}", t.name, message());
                    assert!(
                        message().contains(&path),
                        "{op}: the message names the file: {}",
                        message()
                    );
                }
            };
            let code = unsafe { bpz_read(a, i, buf.as_mut_ptr().cast(), buf.len()) };
            expect(code, &buf, want, "bpz_read");
            let rows = t.rows();
            let row = want.len() / rows as usize;
            let mut part = vec![0u8; row];
            let code =
                unsafe { bpz_read_rows(a, i, rows - 1, rows, part.as_mut_ptr().cast(), row) };
            expect(code, &part, &want[want.len() - row..], "bpz_read_rows");
        }
        // The file is shorter than when it was opened: verify says so wherever the cut is.
        assert_eq!(unsafe { bpz_verify(a) }, BPZ_ERR_TRUNCATED, "{}", message());
        assert_eq!(
            unsafe { bpz_verify_with(a, 1, 0) },
            BPZ_ERR_TRUNCATED,
            "{}",
            message()
        );
        unsafe { bpz_close(a) };
    }
}
