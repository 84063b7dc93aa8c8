//! The C ABI called as C calls it: NULL pointers, bad indices, wrong buffer
//! lengths, invalid files — each must give the right code and a useful
//! message, and nothing may panic across the boundary.

use std::ffi::{c_char, c_void, CStr, CString};
use std::path::{Path, PathBuf};
use std::ptr::{null, null_mut};

use bpz::*;
use bpz_core::{Compression, DType, Reader, Writer, WriterOptions};

fn vectors() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../spec/vectors")
}

fn c_path(p: &Path) -> CString {
    CString::new(p.to_str().unwrap()).unwrap()
}

fn cs(s: &str) -> CString {
    CString::new(s).unwrap()
}

fn text(p: *const c_char) -> String {
    assert!(!p.is_null());
    unsafe { CStr::from_ptr(p) }.to_str().unwrap().to_owned()
}

fn message() -> String {
    text(bpz_last_error_message())
}

fn kind(code: i32) -> String {
    text(bpz_error_kind_name(code))
}

/// An open archive, closed on drop.
struct Open(*mut Archive);

impl Drop for Open {
    fn drop(&mut self) {
        unsafe { bpz_close(self.0) }
    }
}

fn try_open(path: &Path, backend: i32) -> Result<Open, i32> {
    let c = c_path(path);
    let mut out: *mut Archive = 0x1 as *mut Archive; // must be overwritten
    match unsafe { bpz_open(c.as_ptr(), backend, &mut out) } {
        BPZ_OK => {
            assert!(!out.is_null());
            Ok(Open(out))
        }
        code => {
            assert!(out.is_null(), "bpz_open leaves *out NULL on failure");
            Err(code)
        }
    }
}

fn try_open_version(path: &Path, backend: i32, version: i64) -> Result<Open, i32> {
    let c = c_path(path);
    let mut out: *mut Archive = 0x1 as *mut Archive; // must be overwritten
    match unsafe { bpz_open_version(c.as_ptr(), backend, version, &mut out) } {
        BPZ_OK => {
            assert!(!out.is_null());
            Ok(Open(out))
        }
        code => {
            assert!(out.is_null(), "bpz_open leaves *out NULL on failure");
            Err(code)
        }
    }
}

fn open(path: &Path, backend: i32) -> Open {
    try_open(path, backend)
        .unwrap_or_else(|code| panic!("{}: {} {}", path.display(), kind(code), message()))
}

fn info(a: &Open, index: usize) -> bpz_tensor_info {
    let mut out = std::mem::MaybeUninit::<bpz_tensor_info>::uninit();
    assert_eq!(
        unsafe { bpz_tensor_info(a.0, index, out.as_mut_ptr()) },
        BPZ_OK,
        "{}",
        message()
    );
    unsafe { out.assume_init() }
}

fn read(a: &Open, index: usize) -> Vec<u8> {
    let n = info(a, index).nbytes as usize;
    let mut buf = vec![0u8; n];
    assert_eq!(
        unsafe { bpz_read(a.0, index, buf.as_mut_ptr().cast(), n) },
        BPZ_OK,
        "{}",
        message()
    );
    buf
}

/// Writes a test archive: a chunked F32 [10, 7] in chunks of 3 rows, a raw
/// U16 [4, 2], a 0-d F64 and an empty I32 [0, 3].
fn sample(dir: &Path) -> PathBuf {
    let path = dir.join("sample.bpz");
    let opts = WriterOptions {
        chunk_bytes: 3 * 7 * 4,
        compression: Compression::None,
        sync: false,
        ..WriterOptions::default()
    };
    let mut w = Writer::create(&path, opts).unwrap();
    let v: Vec<u8> = (0..70u32)
        .flat_map(|i| (i as f32 * 0.5).to_le_bytes())
        .collect();
    w.add_tensor_with(
        "V",
        DType::F32,
        &[10, 7],
        &v,
        &bpz_core::TensorOptions {
            compression: Some(Compression::Zstd),
            ..Default::default()
        },
    )
    .unwrap();
    let u: Vec<u8> = (0..8u16).flat_map(|i| (i * 1000).to_le_bytes()).collect();
    w.add_tensor("net/u", DType::U16, &[4, 2], &u).unwrap();
    w.add_tensor("s", DType::F64, &[], &2.5f64.to_le_bytes())
        .unwrap();
    w.add_tensor("empty", DType::I32, &[0, 3], &[]).unwrap();
    w.set_metadata(serde_json::json!({"step": 3, "note": "a\u{0}b"}));
    w.finish().unwrap();
    path
}

#[test]
fn library_functions() {
    assert_eq!(text(bpz_version()), env!("CARGO_PKG_VERSION"));
    assert_eq!(kind(BPZ_OK), "ok");
    assert_eq!(kind(BPZ_ERR_CHECKSUM_MISMATCH), "checksum_mismatch");
    assert_eq!(kind(BPZ_ERR_NULL_ARGUMENT), "null_argument");
    assert_eq!(kind(BPZ_ERR_PANIC), "panic");
    assert_eq!(kind(1), "unknown");
    assert_eq!(kind(i32::MIN), "unknown");
    assert_eq!(bpz_dtype_size(BPZ_DTYPE_BOOL), 1);
    assert_eq!(bpz_dtype_size(BPZ_DTYPE_BF16), 2);
    assert_eq!(bpz_dtype_size(BPZ_DTYPE_C128), 16);
    assert_eq!(bpz_dtype_size(BPZ_DTYPE_F8_E8M0), 1);
    assert_eq!(bpz_dtype_size(-1), 0);
    assert_eq!(bpz_dtype_size(20), 0);
    for d in DType::ALL {
        assert_eq!(bpz_dtype_size(dtype_code_name(d).0), d.size());
    }
}

#[test]
fn null_arguments_are_refused() {
    let path = c_path(&vectors().join("tiny.bpz"));
    let mut out: *mut Archive = null_mut();
    assert_eq!(
        unsafe { bpz_open(null(), BPZ_BACKEND_MMAP, &mut out) },
        BPZ_ERR_NULL_ARGUMENT
    );
    assert!(
        message().contains("bpz_open") && message().contains("`path`"),
        "{}",
        message()
    );
    assert_eq!(
        unsafe { bpz_open(path.as_ptr(), BPZ_BACKEND_MMAP, null_mut()) },
        BPZ_ERR_NULL_ARGUMENT
    );
    assert!(message().contains("`out`"));

    let mut index = 0usize;
    let mut i = std::mem::MaybeUninit::<bpz_tensor_info>::uninit();
    let (mut data, mut len) = (null::<c_void>(), 0usize);
    let mut buf = [0u8; 3];
    unsafe {
        assert_eq!(bpz_tensor_count(null()), 0);
        assert!(message().contains("bpz_tensor_count"));
        assert_eq!(
            bpz_tensor_find(null(), cs("x").as_ptr(), &mut index),
            BPZ_ERR_NULL_ARGUMENT
        );
        assert_eq!(
            bpz_tensor_info(null(), 0, i.as_mut_ptr()),
            BPZ_ERR_NULL_ARGUMENT
        );
        assert_eq!(
            bpz_tensor_data(null(), 0, &mut data, &mut len),
            BPZ_ERR_NULL_ARGUMENT
        );
        assert_eq!(
            bpz_read(null(), 0, buf.as_mut_ptr().cast(), 3),
            BPZ_ERR_NULL_ARGUMENT
        );
        assert_eq!(
            bpz_read_rows(null(), 0, 0, 1, buf.as_mut_ptr().cast(), 1),
            BPZ_ERR_NULL_ARGUMENT
        );
        assert_eq!(bpz_verify(null()), BPZ_ERR_NULL_ARGUMENT);
        assert_eq!(bpz_verify_with(null(), 1, 0), BPZ_ERR_NULL_ARGUMENT);
        assert!(bpz_metadata_json(null()).is_null());
        assert!(bpz_tree_json(null()).is_null());
        assert!(message().contains("bpz_tree_json"));
        bpz_close(null_mut());
    }

    let a = open(&vectors().join("tiny.bpz"), BPZ_BACKEND_MMAP);
    unsafe {
        assert_eq!(
            bpz_tensor_find(a.0, null(), &mut index),
            BPZ_ERR_NULL_ARGUMENT
        );
        assert_eq!(
            bpz_tensor_find(a.0, cs("x").as_ptr(), null_mut()),
            BPZ_ERR_NULL_ARGUMENT
        );
        assert_eq!(bpz_tensor_info(a.0, 0, null_mut()), BPZ_ERR_NULL_ARGUMENT);
        assert_eq!(
            bpz_tensor_data(a.0, 0, null_mut(), &mut len),
            BPZ_ERR_NULL_ARGUMENT
        );
        data = 0x1 as *const c_void;
        assert_eq!(
            bpz_tensor_data(a.0, 0, &mut data, null_mut()),
            BPZ_ERR_NULL_ARGUMENT
        );
        assert!(data.is_null(), "the usable out-pointer is reset");
        assert_eq!(bpz_read(a.0, 0, null_mut(), 3), BPZ_ERR_NULL_ARGUMENT);
        assert!(message().contains("`buf`"));
        assert_eq!(
            bpz_read_rows(a.0, 0, 0, 3, null_mut(), 3),
            BPZ_ERR_NULL_ARGUMENT
        );
    }
}

#[test]
fn bad_backends_indices_and_names() {
    let path = c_path(&vectors().join("tiny.bpz"));
    let mut out: *mut Archive = null_mut();
    assert_eq!(
        unsafe { bpz_open(path.as_ptr(), 2, &mut out) },
        BPZ_ERR_INVALID_ARGUMENT
    );
    assert!(message().contains("backend 2"), "{}", message());
    assert!(out.is_null());

    let a = open(&vectors().join("tiny.bpz"), BPZ_BACKEND_MMAP);
    assert_eq!(unsafe { bpz_tensor_count(a.0) }, 1);
    let mut i = std::mem::MaybeUninit::<bpz_tensor_info>::uninit();
    let (mut data, mut len) = (0x1 as *const c_void, 7usize);
    let mut buf = [0u8; 3];
    for index in [1, usize::MAX] {
        unsafe {
            assert_eq!(
                bpz_tensor_info(a.0, index, i.as_mut_ptr()),
                BPZ_ERR_INVALID_ARGUMENT
            );
            assert!(
                message().contains(&format!("index {index} is out of range")),
                "{}",
                message()
            );
            assert!(
                message().contains("tiny.bpz") && message().contains("1 tensor"),
                "{}",
                message()
            );
            assert_eq!(
                bpz_tensor_data(a.0, index, &mut data, &mut len),
                BPZ_ERR_INVALID_ARGUMENT
            );
            assert!(data.is_null() && len == 0);
            assert_eq!(
                bpz_read(a.0, index, buf.as_mut_ptr().cast(), 3),
                BPZ_ERR_INVALID_ARGUMENT
            );
            assert_eq!(
                bpz_read_rows(a.0, index, 0, 1, buf.as_mut_ptr().cast(), 1),
                BPZ_ERR_INVALID_ARGUMENT
            );
        }
    }
    let mut index = 99usize;
    unsafe {
        assert_eq!(
            bpz_tensor_find(a.0, cs("y").as_ptr(), &mut index),
            BPZ_ERR_TENSOR_NOT_FOUND
        );
        assert!(
            message().contains("\"y\"") && message().contains("tiny.bpz"),
            "{}",
            message()
        );
        assert_eq!(
            bpz_tensor_find(
                a.0,
                CString::new(vec![0xffu8, 0xfe]).unwrap().as_ptr(),
                &mut index
            ),
            BPZ_ERR_TENSOR_NOT_FOUND
        );
        assert_eq!(index, 99, "unchanged on failure");
        assert_eq!(bpz_tensor_find(a.0, cs("x").as_ptr(), &mut index), BPZ_OK);
        assert_eq!(index, 0);
    }
    // A misaligned out-pointer is refused, not written through.
    let mut words = [0u64; 3];
    let odd = (words.as_mut_ptr() as *mut u8).wrapping_add(4) as *mut usize;
    assert_eq!(
        unsafe { bpz_tensor_find(a.0, cs("x").as_ptr(), odd) },
        BPZ_ERR_INVALID_ARGUMENT
    );
    assert_eq!(words, [0; 3]);
}

#[test]
fn buffer_lengths_must_match_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let path = sample(dir.path());
    for backend in [BPZ_BACKEND_MMAP, BPZ_BACKEND_PREAD] {
        let a = open(&path, backend);
        let reader = Reader::open(&path).unwrap();
        let v = info(&a, 0);
        assert_eq!(text(v.name), "V");
        assert_eq!(v.nbytes, 280);
        let mut buf = vec![0u8; 300];
        let p = buf.as_mut_ptr().cast::<c_void>();
        unsafe {
            for wrong in [0, 279, 281, 300] {
                assert_eq!(
                    bpz_read(a.0, 0, p, wrong),
                    BPZ_ERR_INVALID_ARGUMENT,
                    "{wrong}"
                );
                assert!(
                    message().contains(&format!("buffer of {wrong} bytes for 280 bytes")),
                    "{}",
                    message()
                );
            }
            assert_eq!(bpz_read(a.0, 0, p, usize::MAX), BPZ_ERR_INVALID_ARGUMENT);
            assert_eq!(buf, vec![0u8; 300], "nothing written on a refused read");
            assert_eq!(bpz_read(a.0, 0, p, 280), BPZ_OK);
            assert_eq!(buf[..280], reader.read("V").unwrap()[..]);

            // Rows: every range, against the core; then bad ranges and lengths.
            for start in 0..=10u64 {
                for stop in start..=10u64 {
                    let n = ((stop - start) * 28) as usize;
                    let mut rows = vec![0u8; n];
                    assert_eq!(
                        bpz_read_rows(a.0, 0, start, stop, rows.as_mut_ptr().cast(), n),
                        BPZ_OK
                    );
                    assert_eq!(
                        rows,
                        reader.read_rows("V", start..stop).unwrap(),
                        "{start}..{stop}"
                    );
                }
            }
            assert_eq!(bpz_read_rows(a.0, 0, 2, 4, p, 55), BPZ_ERR_INVALID_ARGUMENT);
            assert_eq!(bpz_read_rows(a.0, 0, 4, 2, p, 0), BPZ_ERR_INVALID_ARGUMENT);
            assert!(
                message().contains("rows 4..2 out of range"),
                "{}",
                message()
            );
            assert_eq!(
                bpz_read_rows(a.0, 0, 9, 11, p, 56),
                BPZ_ERR_INVALID_ARGUMENT
            );
            assert_eq!(
                bpz_read_rows(a.0, 0, u64::MAX - 1, u64::MAX, p, 28),
                BPZ_ERR_INVALID_ARGUMENT
            );
            // An empty range needs no buffer at all.
            assert_eq!(bpz_read_rows(a.0, 0, 3, 3, null_mut(), 0), BPZ_OK);

            // The empty tensor reads into NULL, 0; the 0-d one is one row.
            let e = info(&a, 3);
            assert_eq!(
                (e.rank, *e.shape, *e.shape.add(1), e.nbytes, e.chunks),
                (2, 0, 3, 0, 0)
            );
            assert_eq!(bpz_read(a.0, 3, null_mut(), 0), BPZ_OK);
            assert_eq!(bpz_read(a.0, 3, null_mut(), 1), BPZ_ERR_NULL_ARGUMENT);
            let s = info(&a, 2);
            assert_eq!((s.rank, s.nbytes, *s.shape), (0, 8, 0));
            let mut x = [0u8; 8];
            assert_eq!(
                bpz_read_rows(a.0, 2, 0, 1, x.as_mut_ptr().cast(), 8),
                BPZ_OK
            );
            assert_eq!(f64::from_le_bytes(x), 2.5);
            assert_eq!(
                bpz_read_rows(a.0, 2, 0, 2, x.as_mut_ptr().cast(), 16),
                BPZ_ERR_INVALID_ARGUMENT
            );
        }
    }
}

#[test]
fn tensor_info_views_and_json() {
    let dir = tempfile::tempdir().unwrap();
    let path = sample(dir.path());
    let a = open(&path, BPZ_BACKEND_MMAP);
    let v = info(&a, 0);
    assert_eq!(
        (v.dtype, text(v.dtype_name), v.rank),
        (BPZ_DTYPE_F32, "F32".into(), 2)
    );
    assert_eq!(
        unsafe { std::slice::from_raw_parts(v.shape, v.rank) },
        [10, 7]
    );
    assert_eq!(
        (v.storage, text(v.filter), v.chunks),
        (BPZ_STORAGE_CHUNKED, "shuffle".into(), 4)
    );
    assert!(v.stored_bytes > 0);
    let u = info(&a, 1);
    assert_eq!(
        (text(u.name), u.dtype, u.storage, text(u.filter)),
        (
            "net/u".into(),
            BPZ_DTYPE_U16,
            BPZ_STORAGE_RAW,
            "none".into()
        )
    );
    assert_eq!((u.nbytes, u.stored_bytes, u.chunks), (16, 16, 1));

    let (mut data, mut len) = (null::<c_void>(), 0usize);
    unsafe {
        assert_eq!(bpz_tensor_data(a.0, 1, &mut data, &mut len), BPZ_OK);
        assert_eq!(len, 16);
        assert_eq!(data as usize % 64, 0, "raw data is aligned");
        assert_eq!(
            std::slice::from_raw_parts(data.cast::<u8>(), len),
            &read(&a, 1)[..]
        );
        assert_eq!(
            bpz_tensor_data(a.0, 3, &mut data, &mut len),
            BPZ_OK,
            "{}",
            message()
        );
        assert!(!data.is_null() && len == 0, "empty raw tensor: non-NULL, 0");
        assert_eq!(
            bpz_tensor_data(a.0, 0, &mut data, &mut len),
            BPZ_ERR_NOT_ZERO_COPY
        );
        assert!(data.is_null() && len == 0);
        assert!(
            message().contains("\"V\"") && message().contains("compressed"),
            "{}",
            message()
        );
    }
    let p = open(&path, BPZ_BACKEND_PREAD);
    unsafe {
        assert_eq!(
            bpz_tensor_data(p.0, 1, &mut data, &mut len),
            BPZ_ERR_NOT_ZERO_COPY
        );
        assert!(message().contains("memory map"), "{}", message());
    }

    // JSON: owned by the archive, the same pointer each time, NUL escaped.
    let meta = unsafe { bpz_metadata_json(a.0) };
    assert_eq!(meta, unsafe { bpz_metadata_json(a.0) });
    let meta: serde_json::Value = serde_json::from_str(&text(meta)).unwrap();
    assert_eq!(meta, serde_json::json!({"step": 3, "note": "a\u{0}b"}));
    assert_eq!(text(unsafe { bpz_tree_json(a.0) }), "null");
    let nested = open(&vectors().join("nested_tree.bpz"), BPZ_BACKEND_MMAP);
    let tree: serde_json::Value =
        serde_json::from_str(&text(unsafe { bpz_tree_json(nested.0) })).unwrap();
    let expected: serde_json::Value =
        serde_json::from_slice(&std::fs::read(vectors().join("nested_tree.json")).unwrap())
            .unwrap();
    assert_eq!(tree, expected["tree"]);
    assert_eq!(unsafe { bpz_verify(a.0) }, BPZ_OK);
}

#[test]
fn invalid_files_give_the_code_of_their_kind_at_their_stage() {
    let dir = vectors().join("invalid");
    let expected: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("expected.json")).unwrap()).unwrap();
    let expected = expected.as_object().unwrap();
    assert!(expected.len() > 30);
    for (file, want) in expected {
        let want_kind = want["error"].as_str().unwrap();
        let path = dir.join(file);
        let version = want.get("version").map_or(0, |v| v.as_i64().unwrap());
        for backend in [BPZ_BACKEND_MMAP, BPZ_BACKEND_PREAD] {
            let opened = try_open_version(&path, backend, version);
            let code = match (opened, want["stage"].as_str().unwrap()) {
                // bpz_open lists the tensors: a listing rule fails it.
                (Err(code), "open" | "list") => code,
                (Ok(a), "read") => {
                    let first_read_error = (0..unsafe { bpz_tensor_count(a.0) }).find_map(|i| {
                        let n = info(&a, i).nbytes as usize;
                        let mut buf = vec![0u8; n];
                        match unsafe { bpz_read(a.0, i, buf.as_mut_ptr().cast(), n) } {
                            BPZ_OK => None,
                            code => Some(code),
                        }
                    });
                    let verified = unsafe { bpz_verify_with(a.0, 1, 0) };
                    assert_eq!(first_read_error.unwrap_or(verified), verified, "{file}");
                    verified
                }
                (Ok(_), stage) => panic!("{file}: opened, but should fail at {stage}"),
                (Err(code), stage) => panic!(
                    "{file}: {} at open, expected at {stage}: {}",
                    kind(code),
                    message()
                ),
            };
            assert!(code < 0);
            assert_eq!(kind(code), want_kind, "{file}: {}", message());
            assert!(
                message().contains(file.as_str()),
                "{file}: the message names the file: {}",
                message()
            );
        }
    }
}

#[test]
fn io_errors() {
    let dir = tempfile::tempdir().unwrap();
    let err = try_open(&dir.path().join("missing.bpz"), BPZ_BACKEND_MMAP)
        .err()
        .unwrap();
    assert_eq!(err, BPZ_ERR_IO);
    assert!(message().contains("missing.bpz"), "{}", message());
    assert_eq!(
        try_open(dir.path(), BPZ_BACKEND_PREAD).err(),
        Some(BPZ_ERR_IO)
    );
    let empty = CString::new("").unwrap();
    let mut out = null_mut();
    assert_eq!(
        unsafe { bpz_open(empty.as_ptr(), BPZ_BACKEND_MMAP, &mut out) },
        BPZ_ERR_IO
    );
}

#[test]
fn the_last_error_is_per_thread_and_survives_successes() {
    let a = open(&vectors().join("tiny.bpz"), BPZ_BACKEND_MMAP);
    let mut index = 0usize;
    assert_eq!(
        unsafe { bpz_tensor_find(a.0, cs("nope").as_ptr(), &mut index) },
        BPZ_ERR_TENSOR_NOT_FOUND
    );
    let mine = message();
    let archive = a.0 as usize;
    std::thread::spawn(move || {
        assert_eq!(message(), "", "a new thread has no error yet");
        let mut out = std::mem::MaybeUninit::<bpz_tensor_info>::uninit();
        // The archive is shared between threads.
        assert_eq!(
            unsafe { bpz_tensor_info(archive as *const Archive, 5, out.as_mut_ptr()) },
            BPZ_ERR_INVALID_ARGUMENT
        );
        assert!(message().contains("index 5"));
    })
    .join()
    .unwrap();
    assert_eq!(message(), mine);
    assert_eq!(
        unsafe { bpz_tensor_find(a.0, cs("x").as_ptr(), &mut index) },
        BPZ_OK
    );
    assert_eq!(message(), mine);
}

#[test]
fn golden_vectors_read_as_the_core_reads_them() {
    for entry in std::fs::read_dir(vectors()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("bpz") {
            continue;
        }
        let reader = Reader::open(&path).unwrap();
        for backend in [BPZ_BACKEND_MMAP, BPZ_BACKEND_PREAD] {
            let a = open(&path, backend);
            assert_eq!(
                unsafe { bpz_tensor_count(a.0) },
                reader.tensors().unwrap().len()
            );
            for (i, t) in reader.tensors().unwrap().iter().enumerate() {
                let c = info(&a, i);
                assert_eq!(text(c.name), t.name);
                assert_eq!(text(c.dtype_name), t.dtype.name());
                assert_eq!(
                    unsafe { std::slice::from_raw_parts(c.shape, c.rank) },
                    &t.shape[..]
                );
                assert_eq!(
                    (c.nbytes, c.stored_bytes, c.chunks),
                    (t.nbytes(), t.stored_bytes(), t.chunks.len())
                );
                assert_eq!(
                    read(&a, i),
                    reader.read(&t.name).unwrap(),
                    "{}: {}",
                    path.display(),
                    t.name
                );
                let mut index = usize::MAX;
                let name = CString::new(t.name.as_str()).unwrap();
                assert_eq!(
                    unsafe { bpz_tensor_find(a.0, name.as_ptr(), &mut index) },
                    BPZ_OK
                );
                assert_eq!(index, i);
            }
            assert_eq!(unsafe { bpz_verify(a.0) }, BPZ_OK, "{}", message());
        }
    }
}

/// `bpz_read_many` reads any set of tensors (repeats, empty ones, the whole archive) as
/// `bpz_read` does, and refuses bad indices, lengths and overlapping buffers before writing.
#[test]
fn read_many_reads_what_read_reads() {
    let dir = tempfile::tempdir().unwrap();
    let path = sample(dir.path());
    for backend in [BPZ_BACKEND_MMAP, BPZ_BACKEND_PREAD] {
        let a = open(&path, backend);
        let count = unsafe { bpz_tensor_count(a.0) };
        assert!(count >= 4);
        let one_by_one: Vec<Vec<u8>> = (0..count).map(|i| read(&a, i)).collect();
        let read_many = |indices: &[usize]| -> Result<Vec<Vec<u8>>, i32> {
            let mut bufs: Vec<Vec<u8>> = indices
                .iter()
                .map(|&i| vec![0xAA; info(&a, i).nbytes as usize])
                .collect();
            let ptrs: Vec<*mut c_void> = bufs.iter_mut().map(|b| b.as_mut_ptr().cast()).collect();
            let lens: Vec<usize> = bufs.iter().map(Vec::len).collect();
            match unsafe {
                bpz_read_many(
                    a.0,
                    indices.as_ptr(),
                    indices.len(),
                    ptrs.as_ptr(),
                    lens.as_ptr(),
                )
            } {
                BPZ_OK => Ok(bufs),
                code => Err(code),
            }
        };
        let all: Vec<usize> = (0..count).collect();
        assert_eq!(read_many(&all).unwrap(), one_by_one);
        let some = [count - 1, 0, 0, 2];
        let expect: Vec<Vec<u8>> = some.iter().map(|&i| one_by_one[i].clone()).collect();
        assert_eq!(read_many(&some).unwrap(), expect);
        assert_eq!(read_many(&[]).unwrap(), Vec::<Vec<u8>>::new());
        // n = 0 with NULL arrays.
        assert_eq!(
            unsafe { bpz_read_many(a.0, null(), 0, null(), null()) },
            BPZ_OK
        );

        // A bad index, NULL arrays, a wrong length: refused, naming the function.
        let mut buf = vec![0u8; 64];
        let p: *mut c_void = buf.as_mut_ptr().cast();
        let code =
            unsafe { bpz_read_many(a.0, [count].as_ptr(), 1, [p].as_ptr(), [0usize].as_ptr()) };
        assert_eq!(code, BPZ_ERR_INVALID_ARGUMENT);
        assert!(
            message().contains("bpz_read_many") && message().contains("out of range"),
            "{}",
            message()
        );
        assert_eq!(
            unsafe { bpz_read_many(a.0, null(), 1, [p].as_ptr(), [1usize].as_ptr()) },
            BPZ_ERR_NULL_ARGUMENT
        );
        assert_eq!(
            unsafe {
                bpz_read_many(
                    null(),
                    [0usize].as_ptr(),
                    1,
                    [p].as_ptr(),
                    [1usize].as_ptr(),
                )
            },
            BPZ_ERR_NULL_ARGUMENT
        );
        let n0 = one_by_one[0].len();
        let code =
            unsafe { bpz_read_many(a.0, [0usize].as_ptr(), 1, [p].as_ptr(), [n0 + 1].as_ptr()) };
        assert_eq!(code, BPZ_ERR_INVALID_ARGUMENT, "{}", message());

        // Overlapping buffers: refused before anything is written.
        let mut big = vec![0x55u8; 2 * n0];
        let q: *mut c_void = big.as_mut_ptr().cast();
        let half: *mut c_void = unsafe { big.as_mut_ptr().add(n0 / 2) }.cast();
        let code = unsafe {
            bpz_read_many(
                a.0,
                [0usize, 0].as_ptr(),
                2,
                [q, half].as_ptr(),
                [n0, n0].as_ptr(),
            )
        };
        assert_eq!(code, BPZ_ERR_INVALID_ARGUMENT);
        assert!(message().contains("overlap"), "{}", message());
        assert!(
            big.iter().all(|&b| b == 0x55),
            "nothing is written when refused"
        );
    }
}

/// The versions as the C ABI gives them.
fn versions_of(a: &Open) -> Vec<bpz_version_info> {
    (0..unsafe { bpz_version_count(a.0) })
        .map(|i| {
            let mut out = std::mem::MaybeUninit::<bpz_version_info>::uninit();
            assert_eq!(
                unsafe { bpz_version_info(a.0, i, out.as_mut_ptr()) },
                BPZ_OK,
                "{}",
                message()
            );
            unsafe { out.assume_init() }
        })
        .collect()
}

fn version_metadata(a: &Open, index: usize) -> String {
    let mut json = 0x1 as *const c_char;
    assert_eq!(
        unsafe { bpz_version_metadata_json(a.0, index, &mut json) },
        BPZ_OK,
        "{}",
        message()
    );
    text(json)
}

fn names(a: &Open) -> Vec<String> {
    (0..unsafe { bpz_tensor_count(a.0) })
        .map(|i| text(info(a, i).name))
        .collect()
}

#[test]
fn versions_of_the_golden_archives() {
    for file in [
        "v11_versions.bpz",
        "v11_raw_shared.bpz",
        "v11_torn_append.bpz",
    ] {
        let path = vectors().join(file);
        let expected: serde_json::Value =
            serde_json::from_slice(&std::fs::read(path.with_extension("json")).unwrap()).unwrap();
        let want = expected["versions"].as_array().unwrap();
        let recovered = expected["recovered"].as_bool().unwrap_or(false);
        for backend in [BPZ_BACKEND_MMAP, BPZ_BACKEND_PREAD] {
            let latest = open(&path, backend);
            let versions = versions_of(&latest);
            assert_eq!(versions.len(), want.len(), "{file}");
            let last = want.last().unwrap()["version"].as_u64().unwrap();
            assert_eq!(unsafe { bpz_version_number(latest.0) }, last);
            let mut ignored = u64::MAX;
            let answer = unsafe { bpz_recovered(latest.0, &mut ignored) };
            assert_eq!(answer, recovered as i32, "{file}");
            let core = Reader::open(&path).unwrap();
            assert_eq!(ignored, core.recovered().map_or(0, |r| r.ignored_bytes));
            assert_eq!(unsafe { bpz_recovered(latest.0, null_mut()) }, answer);
            for (k, (v, w)) in versions.iter().zip(want).enumerate() {
                assert_eq!(v.number, w["version"].as_u64().unwrap(), "{file}");
                assert_eq!(v.time_ns, w["time_ns"].as_u64().unwrap(), "{file}");
                assert_eq!(v.bytes_added, w["bytes_added"].as_u64().unwrap(), "{file}");
                let metadata = version_metadata(&latest, k);
                let parsed: serde_json::Value = serde_json::from_str(&metadata).unwrap();
                assert_eq!(parsed, w["metadata"], "{file} version {}", v.number);
                // The same string on a second call (kept by the archive).
                let mut again = null();
                unsafe { bpz_version_metadata_json(latest.0, k, &mut again) };
                assert_eq!(text(again), metadata);
                // By number, and counting back from the latest.
                let back = k as i64 - versions.len() as i64;
                for selector in [v.number as i64, back] {
                    let at = try_open_version(&path, backend, selector).unwrap_or_else(|c| {
                        panic!("{file} at {selector}: {} {}", kind(c), message())
                    });
                    assert_eq!(unsafe { bpz_version_number(at.0) }, v.number);
                    // The same list of versions, whichever one is open.
                    assert_eq!(versions_of(&at).len(), versions.len());
                    let want_names: Vec<&str> = w["tensors"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|t| t["name"].as_str().unwrap())
                        .collect();
                    assert_eq!(names(&at), want_names, "{file} at {selector}");
                    assert_eq!(text(unsafe { bpz_metadata_json(at.0) }), metadata);
                    // The bytes the core reads of that version.
                    let core_at = core
                        .at_version(bpz_core::VersionSelector::Number(v.number))
                        .unwrap();
                    for (i, name) in want_names.iter().enumerate() {
                        assert_eq!(read(&at, i), core_at.read(name).unwrap(), "{name}");
                    }
                    assert_eq!(unsafe { bpz_verify(at.0) }, BPZ_OK, "{}", message());
                }
            }
            // 0 is the latest.
            let zero = try_open_version(&path, backend, 0).unwrap();
            assert_eq!(unsafe { bpz_version_number(zero.0) }, last);
        }
    }
}

#[test]
fn a_one_version_file_has_version_1() {
    for file in ["tiny.bpz", "v11_nested_tree.bpz"] {
        let a = open(&vectors().join(file), BPZ_BACKEND_MMAP);
        let versions = versions_of(&a);
        assert_eq!(versions.len(), 1);
        assert_eq!(versions[0].number, 1);
        assert_eq!(unsafe { bpz_version_number(a.0) }, 1);
        assert_eq!(
            version_metadata(&a, 0),
            text(unsafe { bpz_metadata_json(a.0) })
        );
        assert_eq!(unsafe { bpz_recovered(a.0, null_mut()) }, 0);
        for v in [1, -1] {
            try_open_version(&vectors().join(file), BPZ_BACKEND_PREAD, v).unwrap();
        }
    }
    // A 1.0 file's one version has no time.
    let a = open(&vectors().join("tiny.bpz"), BPZ_BACKEND_MMAP);
    assert_eq!(versions_of(&a)[0].time_ns, 0);
}

#[test]
fn versions_that_do_not_exist_and_bad_arguments() {
    let path = vectors().join("v11_versions.bpz");
    for version in [4, 7, -4, i64::MIN, i64::MAX] {
        assert_eq!(
            try_open_version(&path, BPZ_BACKEND_MMAP, version).err(),
            Some(BPZ_ERR_INVALID_ARGUMENT),
            "{version}"
        );
        assert!(
            message().contains("v11_versions.bpz") && message().contains("1, 2, 3"),
            "{version}: the message lists the versions: {}",
            message()
        );
    }
    assert_eq!(
        try_open_version(&path, 7, 1).err(),
        Some(BPZ_ERR_INVALID_ARGUMENT)
    );
    let c = c_path(&path);
    let mut out: *mut Archive = null_mut();
    unsafe {
        assert_eq!(
            bpz_open_version(null(), BPZ_BACKEND_MMAP, 1, &mut out),
            BPZ_ERR_NULL_ARGUMENT
        );
        assert_eq!(
            bpz_open_version(c.as_ptr(), BPZ_BACKEND_MMAP, 1, null_mut()),
            BPZ_ERR_NULL_ARGUMENT
        );
        assert_eq!(bpz_version_count(null()), 0);
        assert_eq!(bpz_version_number(null()), 0);
        assert_eq!(bpz_recovered(null(), null_mut()), BPZ_ERR_NULL_ARGUMENT);
        let mut ignored = 5u64;
        assert_eq!(bpz_recovered(null(), &mut ignored), BPZ_ERR_NULL_ARGUMENT);
        assert_eq!(ignored, 0);
        assert!(message().contains("bpz_recovered"), "{}", message());
        let mut v = std::mem::MaybeUninit::<bpz_version_info>::uninit();
        assert_eq!(
            bpz_version_info(null(), 0, v.as_mut_ptr()),
            BPZ_ERR_NULL_ARGUMENT
        );
        let mut json = 0x1 as *const c_char;
        assert_eq!(
            bpz_version_metadata_json(null(), 0, &mut json),
            BPZ_ERR_NULL_ARGUMENT
        );
        assert!(json.is_null(), "*json is NULL on failure");
    }
    let a = open(&path, BPZ_BACKEND_MMAP);
    unsafe {
        let mut v = std::mem::MaybeUninit::<bpz_version_info>::uninit();
        assert_eq!(bpz_version_info(a.0, 0, null_mut()), BPZ_ERR_NULL_ARGUMENT);
        assert_eq!(
            bpz_version_info(a.0, 3, v.as_mut_ptr()),
            BPZ_ERR_INVALID_ARGUMENT
        );
        assert!(message().contains("3 version(s)"), "{}", message());
        let mut json = 0x1 as *const c_char;
        assert_eq!(
            bpz_version_metadata_json(a.0, 3, &mut json),
            BPZ_ERR_INVALID_ARGUMENT
        );
        assert!(json.is_null());
        assert_eq!(
            bpz_version_metadata_json(a.0, 0, null_mut()),
            BPZ_ERR_NULL_ARGUMENT
        );
    }
}

/// A damaged older version: the latest opens; that version's metadata and opening it
/// give the damage's kind.
#[test]
fn damage_to_an_older_version_is_reported_when_it_is_asked_for() {
    let bytes = std::fs::read(vectors().join("v11_versions.bpz")).unwrap();
    let core = Reader::from_bytes(bytes.clone()).unwrap();
    let v1 = core.versions()[0];
    let mut damaged = bytes;
    // A bit of version 1's index head: its crc (in the latest's record) no longer matches.
    damaged[v1.index_offset as usize + 20] ^= 1;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("damaged.bpz");
    std::fs::write(&path, &damaged).unwrap();
    let a = open(&path, BPZ_BACKEND_PREAD);
    assert_eq!(versions_of(&a).len(), 3);
    let mut json = 0x1 as *const c_char;
    assert_eq!(
        unsafe { bpz_version_metadata_json(a.0, 0, &mut json) },
        BPZ_ERR_CHECKSUM_MISMATCH
    );
    assert!(json.is_null());
    assert!(message().contains("damaged.bpz"), "{}", message());
    assert_eq!(version_metadata(&a, 2), r#"{"step":300}"#);
    assert_eq!(
        try_open_version(&path, BPZ_BACKEND_MMAP, 1).err(),
        Some(BPZ_ERR_CHECKSUM_MISMATCH)
    );
    assert_eq!(unsafe { bpz_verify(a.0) }, BPZ_ERR_CHECKSUM_MISMATCH);
}
