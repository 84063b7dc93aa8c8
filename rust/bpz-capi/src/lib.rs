//! # libbpz: the C ABI of bpz
//!
//! A thin layer over the core crate (`rust/bpz`): it converts arguments,
//! maps errors to codes and owns the C strings it hands out; the format
//! logic is all in the core. `include/bpz.h` is the documentation for C
//! users: every function, every code, who owns every pointer.
//!
//! Every exported function is `extern "C"`, runs its body under
//! `catch_unwind` (no panic crosses into C), checks every pointer for NULL
//! and checks every length and index it is given.

#![deny(unsafe_op_in_unsafe_fn)]

use std::ffi::{c_char, c_int, c_void, CString};
use std::sync::OnceLock;

use bpz_core::{Backend, Reader, Storage, TensorInfo, VerifyOptions, VersionSelector};

pub mod codes;
mod guard;

pub use codes::*;
use guard::{answer, c_str, deref, guard, out_buffer, out_ptr, status, Failure, Result};

/// The type a C declaration spells as given (for the header check).
#[doc(hidden)]
pub trait CType {
    const C: &'static str;
}
impl CType for c_int {
    const C: &'static str = "int";
}
impl CType for usize {
    const C: &'static str = "size_t";
}
impl CType for u64 {
    const C: &'static str = "uint64_t";
}
impl CType for *const c_char {
    const C: &'static str = "const char *";
}
impl CType for *const u64 {
    const C: &'static str = "const uint64_t *";
}

/// Defines a `#[repr(C)]` struct and the list of its fields as C declares
/// them, which `tests/header.rs` compares with the header's struct.
macro_rules! c_struct {
    ($(#[$meta:meta])* pub struct $name:ident { $($(#[$fmeta:meta])* pub $field:ident: $ty:ty,)* }) => {
        $(#[$meta])*
        #[repr(C)]
        #[derive(Debug, Clone, Copy)]
        pub struct $name { $($(#[$fmeta])* pub $field: $ty,)* }
        impl $name {
            /// `(C type, field name)` of every field, in order.
            #[doc(hidden)]
            pub const C_FIELDS: &'static [(&'static str, &'static str)] =
                &[$((<$ty as CType>::C, stringify!($field)),)*];
        }
    };
}

c_struct! {
    /// `struct bpz_tensor_info`: what the index says about one tensor. The
    /// pointers are owned by the archive and valid until `bpz_close`.
    #[allow(non_camel_case_types)]
    pub struct bpz_tensor_info {
        pub name: *const c_char,
        pub dtype: c_int,
        pub dtype_name: *const c_char,
        pub rank: usize,
        pub shape: *const u64,
        pub nbytes: u64,
        pub stored_bytes: u64,
        pub storage: c_int,
        pub filter: *const c_char,
        pub chunks: usize,
    }
}

c_struct! {
    /// `struct bpz_version_info`: one version of an archive (spec/FORMAT.md §16.4).
    #[allow(non_camel_case_types)]
    pub struct bpz_version_info {
        pub number: u64,
        pub time_ns: u64,
        pub bytes_added: u64,
    }
}

/// The opaque `bpz_archive` of C: an open reader plus the C strings handed
/// out for it, which live exactly as long as it does.
pub struct Archive {
    reader: Reader,
    /// Each tensor's name as a C string, by index.
    names: Vec<CString>,
    tree_json: OnceLock<CString>,
    metadata_json: OnceLock<CString>,
    /// Each version's metadata as C string, by index in `reader.versions()`, made on
    /// first request.
    version_metadata_json: Vec<OnceLock<CString>>,
}

/// What `shape` points to for a 0-d tensor: a valid address, never read.
static NO_DIMS: u64 = 0;

fn static_c(s: &'static str) -> *const c_char {
    debug_assert!(s.ends_with('\0'));
    s.as_ptr().cast()
}

impl Archive {
    /// Opens `path` at `which` and checks everything a C caller can ask for of that
    /// version, as a 1.0 index is checked on open (a 1.1 index is otherwise read as it
    /// is used): the listing, the tree and the metadata.
    fn open(
        path: &std::ffi::CStr,
        backend: c_int,
        which: VersionSelector,
        func: &str,
    ) -> Result<Archive> {
        let backend = match backend {
            BPZ_BACKEND_MMAP => Backend::Mmap,
            BPZ_BACKEND_PREAD => Backend::Pread,
            other => {
                return Err(Failure::invalid(format!(
                    "{func}: unknown backend {other} (BPZ_BACKEND_MMAP = 0, BPZ_BACKEND_PREAD = 1)"
                )))
            }
        };
        #[cfg(unix)]
        let path = <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(path.to_bytes());
        #[cfg(not(unix))]
        let path = path
            .to_str()
            .map_err(|_| Failure::invalid(format!("{func}: the path is not UTF-8")))?;
        Archive::from_reader(Reader::open_version(path, backend, which)?)
    }

    /// Checks everything a C caller can ask for of an opened `reader`.
    fn from_reader(reader: Reader) -> Result<Archive> {
        reader.tree_json()?;
        reader.metadata_json()?;
        let names = reader
            .tensors()?
            .iter()
            .map(|t| {
                // The core refuses names with NUL on open (spec §9).
                CString::new(t.name.as_bytes()).map_err(|_| {
                    Failure::new(
                        BPZ_ERR_INVALID_INDEX,
                        format!("{}: a tensor name contains NUL", reader.path()),
                    )
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let version_metadata_json = reader.versions().iter().map(|_| OnceLock::new()).collect();
        Ok(Archive {
            reader,
            names,
            tree_json: OnceLock::new(),
            metadata_json: OnceLock::new(),
            version_metadata_json,
        })
    }

    /// Version `index` (oldest first) of the file.
    fn version(&self, index: usize, func: &str) -> Result<&bpz_core::VersionInfo> {
        let versions = self.reader.versions();
        versions.get(index).ok_or_else(|| {
            Failure::invalid(format!(
                "{func}: version index {index} is out of range: {} holds {} version(s) \
                 (indices 0..{}; version numbers are another thing: see bpz_version_info)",
                self.reader.path(),
                versions.len(),
                versions.len()
            ))
        })
    }

    fn tensor(&self, index: usize, func: &str) -> Result<&TensorInfo> {
        // Listed (and checked) by bpz_open.
        let tensors = self.reader.tensors()?;
        tensors.get(index).ok_or_else(|| {
            Failure::invalid(format!(
                "{func}: tensor index {index} is out of range: {} holds {} tensor(s)",
                self.reader.path(),
                tensors.len()
            ))
        })
    }
}

/// `n` elements from C: NULL is accepted only when `n` is 0.
///
/// # Safety
/// A non-NULL `p` must point to `n` readable, initialised `T` for `'a`.
unsafe fn in_array<'a, T>(p: *const T, n: usize, func: &str, arg: &str) -> Result<&'a [T]> {
    if n == 0 {
        return Ok(&[]);
    }
    if p.is_null() {
        return Err(Failure::null(func, arg));
    }
    if (p as usize) % std::mem::align_of::<T>() != 0
        || n > isize::MAX as usize / std::mem::size_of::<T>().max(1)
    {
        return Err(Failure::invalid(format!(
            "{func}: argument `{arg}` ({p:p}, {n} elements) is misaligned or too long"
        )));
    }
    // SAFETY: non-NULL, aligned, length bounded; the caller guarantees the memory.
    Ok(unsafe { std::slice::from_raw_parts(p, n) })
}

fn json_c_string(value: &impl ToString) -> CString {
    // Serialised JSON escapes every control character, NUL included.
    CString::new(value.to_string()).expect("serialised JSON contains no NUL byte")
}

// ------------------------------------------------------------------ library

/// `const char *bpz_version(void)`
#[no_mangle]
pub extern "C" fn bpz_version() -> *const c_char {
    guard(std::ptr::null(), || {
        Ok(static_c(concat!(env!("CARGO_PKG_VERSION"), "\0")))
    })
}

/// `const char *bpz_last_error_message(void)`
#[no_mangle]
pub extern "C" fn bpz_last_error_message() -> *const c_char {
    guard(static_c("\0"), || Ok(guard::last_error_ptr()))
}

/// `const char *bpz_error_kind_name(int code)`
#[no_mangle]
pub extern "C" fn bpz_error_kind_name(code: c_int) -> *const c_char {
    guard(static_c("unknown\0"), || {
        Ok(static_c(kind_name(code).unwrap_or("unknown\0")))
    })
}

/// `size_t bpz_dtype_size(int dtype)`
#[no_mangle]
pub extern "C" fn bpz_dtype_size(dtype: c_int) -> usize {
    guard(0, || Ok(dtype_from_code(dtype).map_or(0, |d| d.size())))
}

// ------------------------------------------------------------ open / close

/// `int bpz_open(const char *path, int backend, bpz_archive **out)`
///
/// # Safety
/// `path` is NULL or a NUL-terminated string; `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn bpz_open(
    path: *const c_char,
    backend: c_int,
    out: *mut *mut Archive,
) -> c_int {
    const F: &str = "bpz_open";
    status(|| {
        let out = out_ptr(out, F, "out")?;
        // SAFETY: checked non-NULL and aligned; the caller provides the memory.
        unsafe { out.write(std::ptr::null_mut()) };
        // SAFETY: the caller's contract.
        let path = unsafe { c_str(path, F, "path") }?;
        let archive = Box::new(Archive::open(path, backend, VersionSelector::Latest, F)?);
        // SAFETY: as above.
        unsafe { out.write(Box::into_raw(archive)) };
        Ok(())
    })
}

/// The selector of a C version argument: 0 the latest, k > 0 number k, k < 0 from the
/// latest (-1 the latest).
fn version_selector(version: i64) -> VersionSelector {
    match version {
        0 => VersionSelector::Latest,
        k if k > 0 => VersionSelector::Number(k as u64),
        k => VersionSelector::FromLatest(k),
    }
}

/// `int bpz_open_version(const char *path, int backend, int64_t version, bpz_archive **out)`
///
/// # Safety
/// `path` is NULL or a NUL-terminated string; `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn bpz_open_version(
    path: *const c_char,
    backend: c_int,
    version: i64,
    out: *mut *mut Archive,
) -> c_int {
    const F: &str = "bpz_open_version";
    status(|| {
        let out = out_ptr(out, F, "out")?;
        // SAFETY: checked non-NULL and aligned; the caller provides the memory.
        unsafe { out.write(std::ptr::null_mut()) };
        // SAFETY: the caller's contract.
        let path = unsafe { c_str(path, F, "path") }?;
        let archive = Box::new(Archive::open(path, backend, version_selector(version), F)?);
        // SAFETY: as above.
        unsafe { out.write(Box::into_raw(archive)) };
        Ok(())
    })
}

/// Store options from a JSON object of strings, numbers and booleans (NULL: none).
fn url_options(json: *const c_char, func: &str) -> Result<Vec<(String, String)>> {
    if json.is_null() {
        return Ok(Vec::new());
    }
    // SAFETY: the caller's contract (non-NULL checked above).
    let text = unsafe { c_str(json, func, "options_json") }?;
    let invalid = |what: &str| Failure::invalid(format!("{func}: options_json {what}"));
    let text = text.to_str().map_err(|_| invalid("is not UTF-8"))?;
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| invalid(&format!("is not JSON ({e})")))?;
    let serde_json::Value::Object(map) = value else {
        return Err(invalid("must be a JSON object"));
    };
    map.into_iter()
        .map(|(key, v)| match v {
            serde_json::Value::String(s) => Ok((key, s)),
            serde_json::Value::Bool(b) => Ok((key, b.to_string())),
            serde_json::Value::Number(n) => Ok((key, n.to_string())),
            // The value is not echoed: it may be a credential.
            _ => Err(invalid(&format!(
                "value of {key:?} must be a string, a number or a boolean"
            ))),
        })
        .collect()
}

/// `int bpz_open_url(const char *url, const char *options_json, bpz_archive **out)`
///
/// # Safety
/// `url` and `options_json` are NULL or NUL-terminated strings; `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn bpz_open_url(
    url: *const c_char,
    options_json: *const c_char,
    out: *mut *mut Archive,
) -> c_int {
    const F: &str = "bpz_open_url";
    status(|| {
        let out = out_ptr(out, F, "out")?;
        // SAFETY: checked non-NULL and aligned; the caller provides the memory.
        unsafe { out.write(std::ptr::null_mut()) };
        // SAFETY: the caller's contract.
        let url = unsafe { c_str(url, F, "url") }?;
        let url = url
            .to_str()
            .map_err(|_| Failure::invalid(format!("{F}: the URL is not UTF-8")))?;
        let options = url_options(options_json, F)?;
        let (reader, _source) = bpz_core::remote::open(url, &options)?;
        let archive = Box::new(Archive::from_reader(reader)?);
        // SAFETY: as above.
        unsafe { out.write(Box::into_raw(archive)) };
        Ok(())
    })
}

/// `void bpz_close(bpz_archive *archive)`
///
/// # Safety
/// `archive` is NULL or a pointer from `bpz_open` not closed yet, and no
/// other thread is using it.
#[no_mangle]
pub unsafe extern "C" fn bpz_close(archive: *mut Archive) {
    guard((), || {
        if !archive.is_null() {
            // SAFETY: the caller's contract: it came from Box::into_raw in bpz_open.
            drop(unsafe { Box::from_raw(archive) });
        }
        Ok(())
    })
}

// ------------------------------------------------------------------- index

/// `size_t bpz_tensor_count(const bpz_archive *archive)`
///
/// # Safety
/// `archive` is NULL or an open archive.
#[no_mangle]
pub unsafe extern "C" fn bpz_tensor_count(archive: *const Archive) -> usize {
    guard(0, || {
        // SAFETY: the caller's contract.
        let a = unsafe { deref(archive, "bpz_tensor_count", "archive") }?;
        Ok(a.reader.tensor_count())
    })
}

/// `int bpz_tensor_find(const bpz_archive *archive, const char *name, size_t *index)`
///
/// # Safety
/// `archive` is NULL or an open archive; `name` is NULL or a NUL-terminated
/// string; `index` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn bpz_tensor_find(
    archive: *const Archive,
    name: *const c_char,
    index: *mut usize,
) -> c_int {
    const F: &str = "bpz_tensor_find";
    status(|| {
        // SAFETY: the caller's contract.
        let a = unsafe { deref(archive, F, "archive") }?;
        // SAFETY: the caller's contract.
        let name = unsafe { c_str(name, F, "name") }?;
        let index = out_ptr(index, F, "index")?;
        let position = match name.to_str() {
            Ok(name) => a.reader.position(name),
            // Names are UTF-8: other bytes name no tensor.
            Err(_) => Err(bpz_core::Error::TensorNotFound {
                path: a.reader.path().to_owned(),
                name: name.to_string_lossy().into_owned(),
            }),
        }?;
        // SAFETY: checked non-NULL and aligned; the caller provides the memory.
        unsafe { index.write(position) };
        Ok(())
    })
}

/// `int bpz_tensor_info(const bpz_archive *archive, size_t index, struct bpz_tensor_info *out)`
///
/// # Safety
/// `archive` is NULL or an open archive; `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn bpz_tensor_info(
    archive: *const Archive,
    index: usize,
    out: *mut bpz_tensor_info,
) -> c_int {
    const F: &str = "bpz_tensor_info";
    status(|| {
        // SAFETY: the caller's contract.
        let a = unsafe { deref(archive, F, "archive") }?;
        let out = out_ptr(out, F, "out")?;
        let t = a.tensor(index, F)?;
        let (dtype, dtype_name) = dtype_code_name(t.dtype);
        let info = bpz_tensor_info {
            name: a.names[index].as_ptr(),
            dtype,
            dtype_name: static_c(dtype_name),
            rank: t.shape.len(),
            shape: if t.shape.is_empty() {
                &NO_DIMS
            } else {
                t.shape.as_ptr()
            },
            nbytes: t.nbytes(),
            stored_bytes: t.stored_bytes(),
            storage: match t.storage {
                Storage::Raw => BPZ_STORAGE_RAW,
                Storage::Chunked => BPZ_STORAGE_CHUNKED,
            },
            filter: static_c(filter_name(t.filter)),
            chunks: t.chunks.len(),
        };
        // SAFETY: checked non-NULL and aligned; the caller provides the memory.
        unsafe { out.write(info) };
        Ok(())
    })
}

/// `const char *bpz_metadata_json(const bpz_archive *archive)`
///
/// # Safety
/// `archive` is NULL or an open archive.
#[no_mangle]
pub unsafe extern "C" fn bpz_metadata_json(archive: *const Archive) -> *const c_char {
    guard(std::ptr::null(), || {
        // SAFETY: the caller's contract.
        let a = unsafe { deref(archive, "bpz_metadata_json", "archive") }?;
        let text = a.reader.metadata_json()?;
        Ok(a.metadata_json
            .get_or_init(|| json_c_string(&text))
            .as_ptr())
    })
}

/// `const char *bpz_tree_json(const bpz_archive *archive)`
///
/// # Safety
/// `archive` is NULL or an open archive.
#[no_mangle]
pub unsafe extern "C" fn bpz_tree_json(archive: *const Archive) -> *const c_char {
    guard(std::ptr::null(), || {
        // SAFETY: the caller's contract.
        let a = unsafe { deref(archive, "bpz_tree_json", "archive") }?;
        let text = a.reader.tree_json()?;
        Ok(a.tree_json.get_or_init(|| json_c_string(&text)).as_ptr())
    })
}

// ---------------------------------------------------------------- versions

/// `size_t bpz_version_count(const bpz_archive *archive)`
///
/// # Safety
/// `archive` is NULL or an open archive.
#[no_mangle]
pub unsafe extern "C" fn bpz_version_count(archive: *const Archive) -> usize {
    guard(0, || {
        // SAFETY: the caller's contract.
        let a = unsafe { deref(archive, "bpz_version_count", "archive") }?;
        Ok(a.reader.versions().len())
    })
}

/// `int bpz_version_info(const bpz_archive *archive, size_t index, struct bpz_version_info *out)`
///
/// # Safety
/// `archive` is NULL or an open archive; `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn bpz_version_info(
    archive: *const Archive,
    index: usize,
    out: *mut bpz_version_info,
) -> c_int {
    const F: &str = "bpz_version_info";
    status(|| {
        // SAFETY: the caller's contract.
        let a = unsafe { deref(archive, F, "archive") }?;
        let out = out_ptr(out, F, "out")?;
        let v = a.version(index, F)?;
        let info = bpz_version_info {
            number: v.number,
            time_ns: v.time_ns,
            bytes_added: v.bytes_added,
        };
        // SAFETY: checked non-NULL and aligned; the caller provides the memory.
        unsafe { out.write(info) };
        Ok(())
    })
}

/// `int bpz_version_metadata_json(const bpz_archive *archive, size_t index, const char **json)`
///
/// # Safety
/// `archive` is NULL or an open archive; `json` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn bpz_version_metadata_json(
    archive: *const Archive,
    index: usize,
    json: *mut *const c_char,
) -> c_int {
    const F: &str = "bpz_version_metadata_json";
    status(|| {
        let json = out_ptr(json, F, "json")?;
        // SAFETY: checked non-NULL and aligned; the caller provides the memory.
        unsafe { json.write(std::ptr::null()) };
        // SAFETY: the caller's contract.
        let a = unsafe { deref(archive, F, "archive") }?;
        let number = a.version(index, F)?.number;
        let slot = &a.version_metadata_json[index];
        let text = match slot.get() {
            Some(text) => text,
            None => {
                // Another version's index is read (and checked) here, once.
                let text = json_c_string(&a.reader.version_metadata_json(number)?);
                let _ = slot.set(text);
                slot.get().expect("set")
            }
        };
        // SAFETY: as above; the string lives in the archive until bpz_close.
        unsafe { json.write(text.as_ptr()) };
        Ok(())
    })
}

/// `uint64_t bpz_version_number(const bpz_archive *archive)`
///
/// # Safety
/// `archive` is NULL or an open archive.
#[no_mangle]
pub unsafe extern "C" fn bpz_version_number(archive: *const Archive) -> u64 {
    guard(0, || {
        // SAFETY: the caller's contract.
        let a = unsafe { deref(archive, "bpz_version_number", "archive") }?;
        Ok(a.reader.version_number())
    })
}

/// `int bpz_recovered(const bpz_archive *archive, uint64_t *ignored_bytes)`
///
/// # Safety
/// `archive` is NULL or an open archive; `ignored_bytes` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn bpz_recovered(archive: *const Archive, ignored_bytes: *mut u64) -> c_int {
    const F: &str = "bpz_recovered";
    answer(|| {
        let ignored = (!ignored_bytes.is_null())
            .then(|| out_ptr(ignored_bytes, F, "ignored_bytes"))
            .transpose()?;
        // SAFETY: checked non-NULL and aligned; the caller provides the memory.
        if let Some(p) = &ignored {
            unsafe { p.write(0) };
        }
        // SAFETY: the caller's contract.
        let a = unsafe { deref(archive, F, "archive") }?;
        let Some(r) = a.reader.recovered() else {
            return Ok(0);
        };
        // SAFETY: as above.
        if let Some(p) = ignored {
            unsafe { p.write(r.ignored_bytes) };
        }
        Ok(1)
    })
}

// -------------------------------------------------------------------- data

/// `int bpz_tensor_data(const bpz_archive *archive, size_t index, const void **data, size_t *len)`
///
/// # Safety
/// `archive` is NULL or an open archive; `data` and `len` are NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn bpz_tensor_data(
    archive: *const Archive,
    index: usize,
    data: *mut *const c_void,
    len: *mut usize,
) -> c_int {
    const F: &str = "bpz_tensor_data";
    status(|| {
        // Whichever out-pointer is usable says "nothing" until there is something.
        let (data, len) = (out_ptr(data, F, "data"), out_ptr(len, F, "len"));
        // SAFETY: checked non-NULL and aligned; the caller provides the memory.
        if let Ok(data) = &data {
            unsafe { data.write(std::ptr::null()) };
        }
        // SAFETY: as above.
        if let Ok(len) = &len {
            unsafe { len.write(0) };
        }
        let (data, len) = (data?, len?);
        // SAFETY: the caller's contract.
        let a = unsafe { deref(archive, F, "archive") }?;
        a.tensor(index, F)?;
        // The view's bytes are in the archive's map, which lives until bpz_close.
        let view = a.reader.view_at(index)?;
        // SAFETY: as above.
        unsafe {
            data.write(view.as_ptr().cast());
            len.write(view.len());
        }
        Ok(())
    })
}

/// `int bpz_read(const bpz_archive *archive, size_t index, void *buf, size_t buf_len)`
///
/// # Safety
/// `archive` is NULL or an open archive; `buf` is NULL or `buf_len` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn bpz_read(
    archive: *const Archive,
    index: usize,
    buf: *mut c_void,
    buf_len: usize,
) -> c_int {
    const F: &str = "bpz_read";
    status(|| {
        // SAFETY: the caller's contract.
        let a = unsafe { deref(archive, F, "archive") }?;
        a.tensor(index, F)?;
        // SAFETY: the caller's contract.
        let out = unsafe { out_buffer(buf, buf_len, F) }?;
        // The core checks that the length is the tensor's byte size.
        Ok(a.reader.read_many_into_at(vec![(index, out)])?)
    })
}

/// `int bpz_read_many(const bpz_archive *archive, const size_t *indices, size_t n, void *const *bufs, const size_t *buf_lens)`
///
/// # Safety
/// `archive` is NULL or an open archive; `indices`, `bufs` and `buf_lens` are NULL or
/// `n` readable elements; each `bufs[i]` is NULL or `buf_lens[i]` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn bpz_read_many(
    archive: *const Archive,
    indices: *const usize,
    n: usize,
    bufs: *const *mut c_void,
    buf_lens: *const usize,
) -> c_int {
    const F: &str = "bpz_read_many";
    status(|| {
        // SAFETY: the caller's contract.
        let a = unsafe { deref(archive, F, "archive") }?;
        // SAFETY: the caller's contract (n elements each).
        let (indices, bufs, buf_lens) = unsafe {
            (
                in_array(indices, n, F, "indices")?,
                in_array(bufs, n, F, "bufs")?,
                in_array(buf_lens, n, F, "buf_lens")?,
            )
        };
        let mut requests = Vec::with_capacity(n);
        for i in 0..n {
            a.tensor(indices[i], F)?;
            // SAFETY: the caller's contract; overlaps are refused below, before any write.
            requests.push((indices[i], unsafe { out_buffer(bufs[i], buf_lens[i], F) }?));
        }
        // Two requests writing the same bytes would be two live `&mut` to them.
        let mut spans: Vec<(usize, usize)> = requests
            .iter()
            .filter(|(_, b)| !b.is_empty())
            .map(|(_, b)| (b.as_ptr() as usize, b.len()))
            .collect();
        spans.sort_unstable();
        if let Some(w) = spans.windows(2).find(|w| w[0].0 + w[0].1 > w[1].0) {
            return Err(Failure::invalid(format!(
                "{F}: the buffers at {:#x} ({} bytes) and {:#x} overlap",
                w[0].0, w[0].1, w[1].0
            )));
        }
        // The core checks every length and reads neighbouring small chunks together.
        Ok(a.reader.read_many_into_at(requests)?)
    })
}

/// `int bpz_read_rows(const bpz_archive *archive, size_t index, uint64_t start, uint64_t stop, void *buf, size_t buf_len)`
///
/// # Safety
/// `archive` is NULL or an open archive; `buf` is NULL or `buf_len` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn bpz_read_rows(
    archive: *const Archive,
    index: usize,
    start: u64,
    stop: u64,
    buf: *mut c_void,
    buf_len: usize,
) -> c_int {
    const F: &str = "bpz_read_rows";
    status(|| {
        // SAFETY: the caller's contract.
        let a = unsafe { deref(archive, F, "archive") }?;
        let t = a.tensor(index, F)?;
        // SAFETY: the caller's contract.
        let out = unsafe { out_buffer(buf, buf_len, F) }?;
        // The core checks the row range and that the length is its byte size.
        Ok(a.reader.read_rows_into(&t.name, start..stop, out)?)
    })
}

/// `int bpz_verify(const bpz_archive *archive)`
///
/// # Safety
/// `archive` is NULL or an open archive.
#[no_mangle]
pub unsafe extern "C" fn bpz_verify(archive: *const Archive) -> c_int {
    status(|| {
        // SAFETY: the caller's contract.
        let a = unsafe { deref(archive, "bpz_verify", "archive") }?;
        a.reader.verify()?;
        Ok(())
    })
}

/// `int bpz_verify_with(const bpz_archive *archive, int decode, uint64_t max_decoded_bytes)`
///
/// # Safety
/// `archive` is NULL or an open archive.
#[no_mangle]
pub unsafe extern "C" fn bpz_verify_with(
    archive: *const Archive,
    decode: c_int,
    max_decoded_bytes: u64,
) -> c_int {
    status(|| {
        // SAFETY: the caller's contract.
        let a = unsafe { deref(archive, "bpz_verify_with", "archive") }?;
        let opts = VerifyOptions {
            decode: decode != 0,
            // 0: the default budget (no one asks to decode at most zero bytes).
            max_decoded_bytes: (max_decoded_bytes != 0).then_some(max_decoded_bytes),
        };
        a.reader.verify_with(&opts)?;
        Ok(())
    })
}
