//! `Writer`: a streaming archive writer. Tensor bytes are read straight from
//! the caller's (NumPy) memory while the GIL is released.

use std::ops::Range;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bpz::{Compression, DType, Filter, TensorOptions, WriterInfo, WriterOptions};
use pyo3::exceptions::{PyOSError, PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple};
use serde_json::Number;

use crate::errors::{to_py, IntoPyResult};

#[pyclass(module = "bpz._bpz")]
pub struct Writer {
    inner: Option<bpz::Writer>,
    path: PathBuf,
}

/// Python's None is no compression; names are checked by the core.
fn parse_compression(c: Option<&str>) -> PyResult<Compression> {
    Compression::from_name(c.unwrap_or("none")).py()
}

fn parse_filter(f: Option<&str>) -> PyResult<Option<Filter>> {
    f.map(|name| {
        Filter::from_name(name).ok_or_else(|| {
            PyValueError::new_err(format!(
                "filter must be one of \"none\", \"shuffle\", \"delta_shuffle\", \"bitpack\", not {name:?}"
            ))
        })
    })
    .transpose()
}

/// Per-tensor overrides; `None` keeps the archive's setting.
fn tensor_options(
    compression: Option<&str>,
    filter: Option<&str>,
    level: Option<i32>,
) -> PyResult<TensorOptions> {
    Ok(TensorOptions {
        compression: compression
            .map(|c| parse_compression(Some(c)))
            .transpose()?,
        filter: parse_filter(filter)?,
        level,
    })
}

// ------------------------------------------------------------ held bytes

use crate::pybuffer::{PyBuffer_Release, PyObject_GetBuffer, RawBuffer, PYBUF_ND};

/// A Python object's bytes, held so that they stay alive (and, for the buffer
/// protocol, can't be resized) until this is dropped. Dropped with the GIL held.
enum Held {
    /// An exported buffer; boxed because the exporter may keep its address.
    Buffer(Box<RawBuffer>),
    /// A reference to an object described by `__array_interface__`.
    Object(#[allow(dead_code)] Py<PyAny>),
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Held::Buffer(view) = self {
            // SAFETY: the view was filled by a successful PyObject_GetBuffer and is
            // released once; `Held` values are only created and dropped with the GIL held.
            unsafe { PyBuffer_Release(&mut **view) };
        }
    }
}

/// A borrowed byte range that may cross into the GIL-free section: its
/// memory is kept alive by a [`Held`] that outlives that section.
#[derive(Clone, Copy)]
struct Bytes {
    ptr: *const u8,
    len: usize,
}

// SAFETY: the bytes are only read, and their owner is held until every reader is done.
unsafe impl Send for Bytes {}
unsafe impl Sync for Bytes {}

impl Bytes {
    /// # Safety
    /// The memory must still be held (see [`Held`]).
    unsafe fn as_slice(&self) -> &[u8] {
        if self.len == 0 {
            &[]
        } else {
            unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
        }
    }
}

fn not_contiguous(name: &str) -> PyErr {
    PyValueError::new_err(format!(
        "tensor {name:?}: the array is not C-contiguous, so its memory does not hold its \
         elements in C order; pass a C-contiguous array (numpy.ascontiguousarray)"
    ))
}

/// What [`hold_bytes`] found: the bytes, and their item size as the object
/// describes them (the shape is appended to the caller's list).
struct Found {
    bytes: Bytes,
    itemsize: u64,
}

/// The bytes of `data`: its C-contiguous buffer, or else the memory its
/// `__array_interface__` (version 3, C order) describes. Its shape, as the
/// object describes it, is appended to `shape`.
fn hold_bytes(
    name: &str,
    data: &Bound<'_, PyAny>,
    shape: &mut Vec<u64>,
) -> PyResult<(Found, Held)> {
    let mut view = RawBuffer::empty();
    // SAFETY: `data` is a live object and the GIL is held; on success the view is
    // released by `Held`'s drop, on failure there is nothing to release.
    if unsafe { PyObject_GetBuffer(data.as_ptr(), &mut *view, PYBUF_ND) } == 0 {
        let bytes = Bytes {
            ptr: view.buf as *const u8,
            len: view.len.max(0) as usize,
        };
        let ndim = view.ndim.max(0) as usize;
        if ndim == 0 {
            // a scalar
        } else if view.shape.is_null() {
            shape.push(bytes.len as u64 / (view.itemsize.max(1) as u64));
        } else {
            // SAFETY: PyBUF_ND makes the exporter fill `shape` with `ndim` extents.
            shape.extend(
                unsafe { std::slice::from_raw_parts(view.shape, ndim) }
                    .iter()
                    .map(|&d| d.max(0) as u64),
            );
        }
        let itemsize = view.itemsize.max(0) as u64;
        return Ok((Found { bytes, itemsize }, Held::Buffer(view)));
    }
    let buffer_error = PyErr::fetch(data.py());
    let py = data.py();
    let iface = match data.getattr(pyo3::intern!(py, "__array_interface__")) {
        Ok(i) => i,
        Err(_) => {
            let msg = format!(
                "tensor {name:?}: expected a C-contiguous array or bytes-like object, got {} ({buffer_error})",
                data.get_type().name().map(|n| n.to_string()).unwrap_or_else(|_| "?".into())
            );
            return Err(PyTypeError::new_err(msg));
        }
    };
    let bad = |what: &str| {
        PyTypeError::new_err(format!(
            "tensor {name:?}: invalid __array_interface__: {what}"
        ))
    };
    let iface = iface.cast_into::<PyDict>().map_err(|_| bad("not a dict"))?;
    if let Some(strides) = iface.get_item("strides")? {
        if !strides.is_none() {
            // NumPy reports strides only for arrays that are not C-contiguous.
            return Err(not_contiguous(name));
        }
    }
    let own_shape: Vec<u64> = iface
        .get_item("shape")?
        .ok_or_else(|| bad("no shape"))?
        .extract()
        .map_err(|_| bad("shape"))?;
    let typestr: String = iface
        .get_item("typestr")?
        .ok_or_else(|| bad("no typestr"))?
        .extract()
        .map_err(|_| bad("typestr"))?;
    let itemsize: u64 = typestr
        .get(2..)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("typestr"))?;
    let (address, _readonly): (usize, bool) = iface
        .get_item("data")?
        .ok_or_else(|| bad("no data"))?
        .extract()
        .map_err(|_| bad("data is not (address, readonly)"))?;
    let len = own_shape
        .iter()
        .try_fold(itemsize, |acc, &d| acc.checked_mul(d))
        .and_then(|n| usize::try_from(n).ok())
        .ok_or_else(|| bad("size overflows"))?;
    if address == 0 && len != 0 {
        return Err(bad("null data address"));
    }
    let bytes = Bytes {
        ptr: address as *const u8,
        len,
    };
    shape.extend_from_slice(&own_shape);
    Ok((
        Found { bytes, itemsize },
        Held::Object(data.clone().unbind()),
    ))
}

/// `tensor "name": ...` for an error from adding a tensor of a batch, keeping its type.
fn tensor_error(err: bpz::Error, name: &str) -> PyErr {
    let quoted = format!("{name:?}");
    match err {
        bpz::Error::InvalidArgument(msg) if !msg.contains(&quoted) => to_py(
            bpz::Error::InvalidArgument(format!("tensor {quoted}: {msg}")),
        ),
        // The OS error may sit under a message (a remote store's error, for one).
        bpz::Error::Io { path, source } => {
            match std::iter::successors(Some(&source as &dyn std::error::Error), |e| e.source())
                .find_map(|e| e.downcast_ref::<std::io::Error>()?.raw_os_error())
            {
                // OSError(errno, strerror, filename) keeps FileNotFoundError, ENOSPC, ...
                Some(errno) if errno != 0 => {
                    PyOSError::new_err((errno, format!("{source} (writing tensor {quoted})"), path))
                }
                _ => PyOSError::new_err(format!("{path}: {source} (writing tensor {quoted})")),
            }
        }
        other => to_py(other),
    }
}

/// One tensor of a batch, ready for the GIL-free section. Its name and shape are
/// ranges of the batch's shared lists: a batch can hold a million tensors, and two
/// small allocations each would cost more than the tensors themselves.
struct Item {
    name: Range<usize>,
    shape: Range<usize>,
    data: Bytes,
    dtype: DType,
    /// Index in [`Batch::options`], if the item has any.
    options: Option<u32>,
}

/// Every tensor of an `add_tensors` call, read and held before any is written.
#[derive(Default)]
struct Batch {
    items: Vec<Item>,
    names: String,
    shapes: Vec<u64>,
    options: Vec<TensorOptions>,
}

impl Batch {
    fn name(&self, item: &Item) -> &str {
        &self.names[item.name.clone()]
    }
}

/// Appends the extents of a shape given as a sequence to `out`.
fn extract_shape(name: &str, shape: &Bound<'_, PyAny>, out: &mut Vec<u64>) -> PyResult<()> {
    let bad = || {
        PyTypeError::new_err(format!(
            "tensor {name:?}: shape must be a sequence of non-negative ints"
        ))
    };
    if let Ok(t) = shape.cast::<PyTuple>() {
        for d in t.iter_borrowed() {
            out.push(d.extract::<u64>().map_err(|_| bad())?);
        }
        return Ok(());
    }
    if shape.is_instance_of::<PyString>() {
        return Err(bad());
    }
    out.extend(shape.extract::<Vec<u64>>().map_err(|_| bad())?);
    Ok(())
}

fn extract_options(name: &str, opts: &Bound<'_, PyAny>) -> PyResult<Option<TensorOptions>> {
    if opts.is_none() {
        return Ok(None);
    }
    let d = opts.cast::<PyDict>().map_err(|_| {
        PyTypeError::new_err(format!("tensor {name:?}: options must be a dict or None"))
    })?;
    let (mut compression, mut filter, mut level) = (None::<String>, None::<String>, None::<i32>);
    for (k, v) in d.iter() {
        let key: String = k.extract()?;
        let wrap = |e: PyErr| PyTypeError::new_err(format!("tensor {name:?}: option {key:?}: {e}"));
        match key.as_str() {
            "compression" => {
                compression = if v.is_none() {
                    Some("none".into())
                } else {
                    Some(v.extract().map_err(wrap)?)
                }
            }
            "filter" => filter = v.extract().map_err(wrap)?,
            "level" => level = v.extract().map_err(wrap)?,
            _ => {
                return Err(PyTypeError::new_err(format!(
                    "tensor {name:?}: unknown option {key:?} (expected compression, filter, level)"
                )))
            }
        }
    }
    tensor_options(compression.as_deref(), filter.as_deref(), level)
        .map(Some)
        .map_err(|e| {
            let py = opts.py();
            PyErr::from_type(e.get_type(py), format!("tensor {name:?}: {}", e.value(py)))
        })
}

/// Reads `(name, dtype, shape, data[, options])` into `batch`; a shape of None is the
/// data's own. On an error the batch may keep part of the item's name or shape, but
/// not the item.
fn extract_item(index: usize, item: &Bound<'_, PyAny>, batch: &mut Batch) -> PyResult<Held> {
    let t = item.cast::<PyTuple>().ok().filter(|t| t.len() == 4 || t.len() == 5).ok_or_else(|| {
        PyTypeError::new_err(format!(
            "add_tensors: item {index} must be a tuple (name, dtype, shape, data) or (name, dtype, shape, data, options)"
        ))
    })?;
    let name_obj = t.get_borrowed_item(0)?;
    let name_str = name_obj.cast::<PyString>().map_err(|_| {
        PyTypeError::new_err(format!("add_tensors: item {index}: the name must be a str"))
    })?;
    let name = name_str.to_str()?;
    let dtype_obj = t.get_borrowed_item(1)?;
    let dtype_name = dtype_obj
        .cast::<PyString>()
        .map_err(|_| PyTypeError::new_err(format!("tensor {name:?}: the dtype must be a str")))?;
    let dtype_name = dtype_name.to_str()?;
    let dtype = DType::from_name(dtype_name).ok_or_else(|| {
        PyValueError::new_err(format!("tensor {name:?}: unknown bpz dtype {dtype_name:?}"))
    })?;
    let shape_start = batch.shapes.len();
    let shape_obj = t.get_borrowed_item(2)?;
    let given_shape = !shape_obj.is_none();
    if given_shape {
        extract_shape(name, &shape_obj, &mut batch.shapes)?;
    }
    let options = if t.len() == 5 {
        extract_options(name, &*t.get_borrowed_item(4)?)?
    } else {
        None
    };
    let shape_end = batch.shapes.len();
    let (found, held) = hold_bytes(name, &*t.get_borrowed_item(3)?, &mut batch.shapes)?;
    if given_shape {
        batch.shapes.truncate(shape_end); // the data's own shape is not wanted
    } else if found.itemsize != dtype.size() as u64 {
        return Err(PyValueError::new_err(format!(
            "tensor {name:?}: the data's items are {} bytes, but {} items are {}: pass the shape",
            found.itemsize,
            dtype.name(),
            dtype.size()
        )));
    }
    let options = options.map(|o| {
        batch.options.push(o);
        (batch.options.len() - 1) as u32
    });
    let name_start = batch.names.len();
    batch.names.push_str(name);
    batch.items.push(Item {
        name: name_start..batch.names.len(),
        shape: shape_start..batch.shapes.len(),
        data: found.bytes,
        dtype,
        options,
    });
    Ok(held)
}

/// Appends the compact JSON text of a tree of Python objects to `out`: the bytes
/// serde_json writes for the value that `json.dumps` (without NaN) and serde_json's
/// parsing would make of it (integers beyond 64 bits become floats, like a parsed
/// literal). Written directly, without a `serde_json::Value` per node: a tree can have
/// millions of nodes. Scalars are formatted by serde_json itself, so the bytes agree.
fn write_json(obj: &Bound<'_, PyAny>, depth: usize, out: &mut Vec<u8>) -> PyResult<()> {
    if depth > bpz::format::MAX_JSON_DEPTH {
        return Err(PyValueError::new_err(format!(
            "the tree is nested more than {} levels deep (or contains itself)",
            bpz::format::MAX_JSON_DEPTH
        )));
    }
    if let Ok(d) = obj.cast::<PyDict>() {
        out.push(b'{');
        for (i, (k, v)) in d.iter().enumerate() {
            let key = k.cast::<PyString>().map_err(|_| {
                PyTypeError::new_err(format!(
                    "tree keys must be str, not {}",
                    k.get_type()
                        .name()
                        .map(|n| n.to_string())
                        .unwrap_or_default()
                ))
            })?;
            if i > 0 {
                out.push(b',');
            }
            write_json_string(out, key.to_str()?);
            out.push(b':');
            write_json(&v, depth + 1, out)?;
        }
        out.push(b'}');
        return Ok(());
    }
    if let Ok(s) = obj.cast::<PyString>() {
        write_json_string(out, s.to_str()?);
        return Ok(());
    }
    if let Ok(l) = obj.cast::<PyList>() {
        return write_json_items(l.iter(), depth, out);
    }
    if let Ok(t) = obj.cast::<PyTuple>() {
        return write_json_items(t.iter(), depth, out);
    }
    if obj.is_none() {
        out.extend_from_slice(b"null");
        return Ok(());
    }
    if let Ok(b) = obj.cast::<PyBool>() {
        out.extend_from_slice(if b.is_true() { b"true" } else { b"false" });
        return Ok(());
    }
    let number = |out: &mut Vec<u8>, n: Number| {
        serde_json::to_writer(out, &n).expect("writing to a Vec cannot fail")
    };
    if obj.is_instance_of::<PyInt>() {
        if let Ok(i) = obj.extract::<i64>() {
            number(out, Number::from(i));
            return Ok(());
        }
        if let Ok(u) = obj.extract::<u64>() {
            number(out, Number::from(u));
            return Ok(());
        }
    }
    if obj.is_instance_of::<PyFloat>() || obj.is_instance_of::<PyInt>() {
        let f: f64 = obj.extract()?;
        let n = Number::from_f64(f).ok_or_else(|| {
            PyValueError::new_err(format!(
                "out of range float values are not JSON compliant: {f}"
            ))
        })?;
        number(out, n);
        return Ok(());
    }
    Err(PyTypeError::new_err(format!(
        "tree values must be dict, list, tuple, str, int, float, bool or None, not {}",
        obj.get_type()
            .name()
            .map(|n| n.to_string())
            .unwrap_or_default()
    )))
}

fn write_json_items<'py>(
    items: impl Iterator<Item = Bound<'py, PyAny>>,
    depth: usize,
    out: &mut Vec<u8>,
) -> PyResult<()> {
    out.push(b'[');
    for (i, v) in items.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_json(&v, depth + 1, out)?;
    }
    out.push(b']');
    Ok(())
}

/// A JSON string as serde_json writes it.
fn write_json_string(out: &mut Vec<u8>, s: &str) {
    if s.bytes().all(|c| c >= 0x20 && c != b'"' && c != b'\\') {
        out.reserve(s.len() + 2);
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        serde_json::to_writer(&mut *out, s).expect("writing to a Vec cannot fail");
    }
}

/// Progress is reported (and Ctrl-C checked) at least this often while a batch is written...
const REPORT_INTERVAL: Duration = Duration::from_millis(100);
/// ... and after at most this many bytes.
const REPORT_BYTES: usize = 64 << 20;
/// Tensors (and bytes of them) whose compression is decided together, in parallel, before
/// they are written: enough to keep the pool busy, little enough that the probes' output
/// held meanwhile stays small.
const PREPARE_WINDOW: usize = 256;
const PREPARE_WINDOW_BYTES: usize = 64 << 20;

/// The core's defaults with the given options over them (unchecked: the core checks).
fn options(
    alignment: Option<u32>,
    chunk_bytes: Option<i64>,
    compression: Option<&str>,
    level: Option<&Bound<'_, PyAny>>,
    filter: Option<&str>,
    sync: Option<bool>,
    overwrite: Option<bool>,
) -> PyResult<WriterOptions> {
    let d = WriterOptions::default();
    // Taken as signed so that a negative size is an argument error, not an OverflowError.
    let chunk_bytes = match chunk_bytes {
        None => d.chunk_bytes,
        Some(n) => usize::try_from(n).map_err(|_| {
            to_py(bpz::Error::InvalidArgument(format!(
                "chunk_bytes (chunk_size in Python) must be positive, not {n}"
            )))
        })?,
    };
    Ok(WriterOptions {
        alignment: alignment.unwrap_or(d.alignment),
        chunk_bytes,
        compression: parse_compression(compression)?,
        level: level.map(extract_level).transpose()?.unwrap_or(d.level),
        filter: parse_filter(filter)?,
        sync: sync.unwrap_or(d.sync),
        overwrite: overwrite.unwrap_or(d.overwrite),
        ..d
    })
}

/// An int, not a bool (which Python would otherwise take as 0 or 1).
fn extract_level(level: &Bound<'_, PyAny>) -> PyResult<i32> {
    if level.is_instance_of::<PyBool>() || !level.is_instance_of::<PyInt>() {
        return Err(PyTypeError::new_err(format!(
            "level must be an int, not {}",
            level
                .get_type()
                .name()
                .map(|n| n.to_string())
                .unwrap_or_default()
        )));
    }
    level.extract()
}

enum Failure {
    Tensor(usize, bpz::Error),
    Python(PyErr),
}

impl Writer {
    fn inner(&mut self) -> PyResult<&mut bpz::Writer> {
        self.inner.as_mut().ok_or_else(|| {
            PyRuntimeError::new_err(format!(
                "writer for {} is already finished",
                self.path.display()
            ))
        })
    }
}

#[pymethods]
impl Writer {
    /// The core's defaults for the options `Writer(...)` leaves unset (None).
    #[classattr]
    #[allow(non_snake_case)]
    fn DEFAULTS(py: Python<'_>) -> PyResult<Py<PyDict>> {
        let o = WriterOptions::default();
        let d = PyDict::new(py);
        d.set_item("alignment", o.alignment)?;
        d.set_item("chunk_bytes", o.chunk_bytes)?;
        d.set_item("compression", o.compression.name())?;
        d.set_item("level", o.level)?;
        d.set_item("sync", o.sync)?;
        d.set_item("overwrite", o.overwrite)?;
        Ok(d.unbind())
    }

    /// Refuses what `Writer(...)` would refuse in these options, creating nothing:
    /// for callers that check arguments before starting a write elsewhere.
    #[staticmethod]
    #[pyo3(signature = (*, alignment = None, chunk_bytes = None, compression = Some(WriterOptions::default().compression.name()), level = None))]
    fn check_options(
        alignment: Option<u32>,
        chunk_bytes: Option<i64>,
        compression: Option<&str>,
        level: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        options(alignment, chunk_bytes, compression, level, None, None, None)?
            .check()
            .py()
    }

    /// Options left None take the core's defaults ([`Writer::DEFAULTS`]); `compression=None`
    /// is no compression, left out the core's default.
    /// `append=True` adds a version to the archive at `path` (created if missing) instead
    /// of replacing it (spec §16.6).
    #[new]
    #[pyo3(signature = (path, *, alignment = None, chunk_bytes = None, compression = Some(WriterOptions::default().compression.name()), level = None, filter = None, sync = None, overwrite = None, writer_name = "bpz-python", writer_version = env!("CARGO_PKG_VERSION"), append = false, storage_options = None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        path: PathBuf,
        alignment: Option<u32>,
        chunk_bytes: Option<i64>,
        compression: Option<&str>,
        level: Option<&Bound<'_, PyAny>>,
        filter: Option<&str>,
        sync: Option<bool>,
        overwrite: Option<bool>,
        writer_name: &str,
        writer_version: &str,
        append: bool,
        storage_options: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Self> {
        // An object-store URL: a multipart upload (see bpz::remote_write).
        let url = path
            .to_str()
            .filter(|p| bpz::remote::is_url(p))
            .map(str::to_owned);
        if url.is_none() && storage_options.is_some() {
            return Err(PyTypeError::new_err(
                "storage_options apply to URLs (s3://, gs://, az://), not to local paths",
            ));
        }
        let store_options = crate::remote::options(storage_options)?;
        let mut opts = options(
            alignment,
            chunk_bytes,
            compression,
            level,
            filter,
            sync,
            overwrite,
        )?;
        opts.writer = WriterInfo {
            name: writer_name.into(),
            version: writer_version.into(),
        };
        let inner = py
            .detach(|| {
                if let Some(url) = &url {
                    if append {
                        return Err(bpz::Error::InvalidArgument(format!(
                            "{}: cannot append a version to a remote archive: objects in a \
                             store are immutable (a new version would rewrite the whole \
                             object); save to a new key, or append locally and upload",
                            bpz::remote::redact_url(url)
                        )));
                    }
                    bpz::Writer::create_remote(url, &store_options, opts)
                } else if append {
                    bpz::Writer::append(&path, opts)
                } else {
                    bpz::Writer::create(&path, opts)
                }
            })
            .py()?;
        Ok(Writer {
            inner: Some(inner),
            path,
        })
    }

    /// Adds many tensors in one call: `items` is an iterable of tuples
    /// `(name, dtype, shape, data)` or `(name, dtype, shape, data, options)`,
    /// where `data` is a C-contiguous array or bytes-like object holding the
    /// tensor's little-endian bytes in C order, a `shape` of None is the
    /// data's own (an array's shape, if its items are the dtype's size), and
    /// `options` is None or a dict with any of `compression`, `filter`, `level`.
    ///
    /// Every item is read and its memory held first, then all are written with
    /// the GIL released once; `progress(done_bytes, total_bytes)` is called
    /// every 100 ms or 64 MiB and after the last tensor, and signal handlers
    /// (Ctrl-C) run as often. Returns the number of tensors added. Errors name
    /// the tensor: an item that can't be read adds nothing; a tensor the writer
    /// refuses stops the batch there, the tensors before it added.
    #[pyo3(signature = (items, *, progress = None))]
    fn add_tensors(
        &mut self,
        py: Python<'_>,
        items: &Bound<'_, PyAny>,
        progress: Option<Py<PyAny>>,
    ) -> PyResult<usize> {
        let n = items.len().unwrap_or(0);
        let mut batch = Batch {
            items: Vec::with_capacity(n),
            ..Batch::default()
        };
        let mut held: Vec<Held> = Vec::with_capacity(n);
        for (index, item) in items.try_iter()?.enumerate() {
            held.push(extract_item(index, &item?, &mut batch)?);
        }
        let total: usize = batch.items.iter().map(|i| i.data.len).sum();
        let default_options = TensorOptions::default();
        let writer = self.inner()?;
        writer.reserve(batch.items.len());
        let report = |done: usize| -> Result<(), Failure> {
            Python::attach(|py| {
                py.check_signals()?;
                if let Some(p) = &progress {
                    p.call1(py, (done, total))?;
                }
                Ok(())
            })
            .map_err(Failure::Python)
        };
        let result = py.detach(|| -> Result<(), Failure> {
            let (mut done, mut since) = (0usize, 0usize);
            let mut last = Instant::now();
            let mut start = 0;
            while start < batch.items.len() {
                // A window of tensors has its compression decided in parallel, then is
                // written in order (the same bytes as one at a time).
                let (mut end, mut bytes) = (start, 0usize);
                while end < batch.items.len()
                    && (end == start
                        || (end - start < PREPARE_WINDOW && bytes < PREPARE_WINDOW_BYTES))
                {
                    bytes += batch.items[end].data.len;
                    end += 1;
                }
                let window: Vec<(DType, &[u8], &TensorOptions)> = batch.items[start..end]
                    .iter()
                    .map(|item| {
                        // SAFETY: `held` keeps every item's memory alive until after this section.
                        let data = unsafe { item.data.as_slice() };
                        let opts = item
                            .options
                            .map_or(&default_options, |i| &batch.options[i as usize]);
                        (item.dtype, data, opts)
                    })
                    .collect();
                let prepared = writer.prepare_many(&window);
                for (k, ((dtype, data, opts), prepared)) in
                    window.into_iter().zip(prepared).enumerate()
                {
                    let index = start + k;
                    let item = &batch.items[index];
                    let shape = &batch.shapes[item.shape.clone()];
                    writer
                        .add_tensor_prepared(batch.name(item), dtype, shape, data, opts, prepared)
                        .map_err(|e| Failure::Tensor(index, e))?;
                    done += data.len();
                    since += data.len();
                    if since >= REPORT_BYTES || last.elapsed() >= REPORT_INTERVAL {
                        report(done)?;
                        since = 0;
                        last = Instant::now();
                    }
                }
                start = end;
            }
            if !batch.items.is_empty() {
                report(done)?;
            }
            Ok(())
        });
        drop(held);
        match result {
            Ok(()) => Ok(batch.items.len()),
            Err(Failure::Tensor(index, e)) => Err(tensor_error(e, batch.name(&batch.items[index]))),
            Err(Failure::Python(e)) => Err(e),
        }
    }

    /// Sets the tree from Python objects: dicts with str keys, lists, tuples,
    /// str, int, float, bool and None — the value of `json.dumps(tree)` (integers
    /// beyond 64 bits as floats), written as compact JSON with no text in between.
    fn set_tree(&mut self, py: Python<'_>, tree: &Bound<'_, PyAny>) -> PyResult<()> {
        let mut text = Vec::new();
        write_json(tree, 0, &mut text)?;
        let text = String::from_utf8(text).expect("built from str and ASCII");
        let writer = self.inner()?;
        py.detach(|| writer.set_tree_json_verbatim(text)).py()
    }

    /// Sets the metadata from JSON text, stored as given once the core has checked it
    /// (strict JSON, no repeated member name, the nesting limit): not parsed and written again.
    fn set_metadata_json(&mut self, py: Python<'_>, text: String) -> PyResult<()> {
        let writer = self.inner()?;
        py.detach(|| writer.set_metadata_json_verbatim(text)).py()
    }

    /// Writes index and trailer, syncs, and renames over the destination.
    fn finish<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let writer = self
            .inner
            .take()
            .ok_or_else(|| PyRuntimeError::new_err("writer is already finished"))?;
        let (summary, _) = py.detach(|| writer.finish()).py()?;
        let d = PyDict::new(py);
        d.set_item("path", summary.path)?;
        d.set_item("tensors", summary.tensors)?;
        d.set_item("file_bytes", summary.file_bytes)?;
        d.set_item("data_bytes", summary.data_bytes)?;
        d.set_item("version", summary.version)?;
        d.set_item("bytes_added", summary.bytes_added)?;
        d.set_item("chunks_written", summary.chunks_written)?;
        d.set_item("chunks_shared", summary.chunks_shared)?;
        d.set_item("trailer", pyo3::types::PyBytes::new(py, &summary.trailer))?;
        Ok(d)
    }

    /// Discards the archive: the temporary file is removed, the destination untouched.
    fn abort(&mut self) {
        self.inner = None;
    }

    #[getter]
    fn finished(&self) -> bool {
        self.inner.is_none()
    }
}

/// Rewrites the archive at `path` keeping its last `keep_last` versions, or the versions
/// numbered in `keep` and every newer one (spec §16.8); the new file replaces the old
/// atomically. Returns `{"versions_kept": [...], "file_bytes": n}`.
#[pyfunction]
#[pyo3(signature = (path, *, keep_last = None, keep = None, sync = true))]
pub fn compact<'py>(
    py: Python<'py>,
    path: PathBuf,
    keep_last: Option<usize>,
    keep: Option<Vec<u64>>,
    sync: bool,
) -> PyResult<Bound<'py, PyDict>> {
    let rule = match (keep_last, keep) {
        (Some(0), None) => {
            return Err(bpz::Error::InvalidArgument(
                "keep_last must be at least 1 (compaction keeps the latest version)".into(),
            ))
            .py()
        }
        (Some(n), None) => bpz::Keep::Last(n),
        (None, Some(list)) => bpz::Keep::Versions(list),
        _ => {
            return Err(bpz::Error::InvalidArgument(
                "give exactly one of keep_last and keep".into(),
            ))
            .py()
        }
    };
    let opts = WriterOptions {
        sync,
        ..WriterOptions::default()
    };
    let summary = py.detach(|| bpz::compact_to(&path, rule, opts)).py()?;
    let kept = py
        .detach(|| bpz::Reader::open_with(&path, bpz::Backend::Pread))
        .py()?
        .versions()
        .iter()
        .map(|v| v.number)
        .collect::<Vec<_>>();
    let d = PyDict::new(py);
    d.set_item("versions_kept", kept)?;
    d.set_item("file_bytes", summary.file_bytes)?;
    Ok(d)
}
