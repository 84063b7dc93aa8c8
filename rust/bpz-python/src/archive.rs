//! `Archive`: an open archive (the core `Reader`), shared between threads.

use std::path::PathBuf;
use std::sync::Arc;

use bpz::{Backend, Reader, TensorInfo, VerifyOptions, VersionInfo, VersionSelector};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyTuple};

use crate::buffer::Buffer;
use crate::errors::IntoPyResult;

#[pyclass(frozen, module = "bpz._bpz")]
pub struct Archive {
    reader: Arc<Reader>,
}

pub fn info_dict<'py>(py: Python<'py>, t: &TensorInfo) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("name", &t.name)?;
    d.set_item("dtype", t.dtype.name())?;
    d.set_item("shape", t.shape.clone())?;
    d.set_item("storage", t.storage.name())?;
    d.set_item("filter", t.filter.name())?;
    d.set_item("codec", if t.is_raw() { "none" } else { "zstd" })?;
    d.set_item("chunk_elems", t.chunk_elems)?;
    d.set_item("chunks", t.chunks.len())?;
    d.set_item(
        "encoded_chunks",
        t.chunks.iter().filter(|c| c.encoded).count(),
    )?;
    d.set_item("nbytes", t.nbytes())?;
    d.set_item("stored_bytes", t.stored_bytes())?;
    d.set_item("offset", t.raw_range().map(|r| r.start))?;
    Ok(d)
}

/// A checksummed copy of the tensor at `index`, read without the GIL.
fn read_at(py: Python<'_>, reader: &Reader, index: usize) -> PyResult<Buffer> {
    let mut one = py.detach(|| reader.read_many_zeroed_at(&[index])).py()?;
    Ok(Buffer::zeroed(one.pop().expect("one buffer per index")))
}

/// `None` = the latest version, `k > 0` = version number `k`, `k < 0` = counted back from the
/// latest (-1 = the latest).
pub fn version_selector(version: Option<i64>) -> PyResult<VersionSelector> {
    Ok(match version {
        None => VersionSelector::Latest,
        Some(k) if k > 0 => VersionSelector::Number(k as u64),
        Some(k) if k < 0 => VersionSelector::FromLatest(k),
        Some(_) => {
            return Err(bpz::Error::InvalidArgument(
                "version 0 does not exist: versions are numbered from 1 (negative counts back from the latest)"
                    .into(),
            ))
            .py()
        }
    })
}

fn version_dict<'py>(py: Python<'py>, v: &VersionInfo) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("version", v.number)?;
    d.set_item("time_ns", v.time_ns)?;
    d.set_item("bytes_added", v.bytes_added)?;
    d.set_item("data_start", v.data_start)?;
    d.set_item("index_offset", v.index_offset)?;
    d.set_item("index_length", v.index_length)?;
    Ok(d)
}

impl Archive {
    /// An archive over a reader opened elsewhere (a remote one).
    pub fn from_reader(reader: Reader) -> Self {
        Archive {
            reader: Arc::new(reader),
        }
    }
}

#[pymethods]
impl Archive {
    #[new]
    #[pyo3(signature = (path, backend = "mmap", parallel = true, version = None))]
    fn new(
        py: Python<'_>,
        path: PathBuf,
        backend: &str,
        parallel: bool,
        version: Option<i64>,
    ) -> PyResult<Self> {
        let backend = match backend {
            "mmap" => Backend::Mmap,
            "pread" => Backend::Pread,
            other => {
                return Err(PyValueError::new_err(format!(
                    "backend must be \"mmap\" or \"pread\", not {other:?}"
                )))
            }
        };
        let which = version_selector(version)?;
        let mut reader = py
            .detach(|| Reader::open_version(&path, backend, which))
            .py()?;
        reader.set_parallel(parallel);
        Ok(Archive {
            reader: Arc::new(reader),
        })
    }

    /// Another version of the same file, sharing its open file and map.
    #[pyo3(signature = (version = None))]
    fn at_version(&self, py: Python<'_>, version: Option<i64>) -> PyResult<Self> {
        let which = version_selector(version)?;
        let mut reader = py.detach(|| self.reader.at_version(which)).py()?;
        reader.set_parallel(self.reader.is_parallel());
        Ok(Archive {
            reader: Arc::new(reader),
        })
    }

    /// Every version in the file, oldest first.
    #[getter]
    fn versions<'py>(&self, py: Python<'py>) -> PyResult<Vec<Bound<'py, PyDict>>> {
        self.reader
            .versions()
            .iter()
            .map(|v| version_dict(py, v))
            .collect()
    }

    /// The 32-byte trailer of the version this archive reads (for the latest version of a
    /// file without an unfinished append: the file's last 32 bytes), as read when opening.
    #[getter]
    fn trailer_bytes<'py>(&self, py: Python<'py>) -> Bound<'py, pyo3::types::PyBytes> {
        pyo3::types::PyBytes::new(py, &self.reader.trailer().encode())
    }

    /// The number of the version this archive reads.
    #[getter]
    fn version_number(&self) -> u64 {
        self.reader.version_number()
    }

    /// `None`, or what was skipped when the file ends in an unfinished append.
    #[getter]
    fn recovered<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyDict>>> {
        self.reader
            .recovered()
            .map(|r| {
                let d = PyDict::new(py);
                d.set_item("ignored_bytes", r.ignored_bytes)?;
                d.set_item("committed_end", r.committed_end)?;
                Ok(d)
            })
            .transpose()
    }

    fn version_metadata_json(&self, py: Python<'_>, number: u64) -> PyResult<String> {
        py.detach(|| self.reader.version_metadata_json(number)).py()
    }

    /// One tensor's chunk table: where each chunk is, its checksums and content hash.
    fn chunks<'py>(&self, py: Python<'py>, name: &str) -> PyResult<Vec<Bound<'py, PyDict>>> {
        let t = self.reader.tensor(name).py()?;
        t.chunks
            .iter()
            .map(|c| {
                let d = PyDict::new(py);
                d.set_item("offset", c.offset)?;
                d.set_item("stored_length", c.stored_len)?;
                d.set_item("crc32c", c.crc32c)?;
                d.set_item("encoded", c.encoded)?;
                d.set_item("hash", c.hash.map(|h| PyBytes::new(py, &h)))?;
                Ok(d)
            })
            .collect()
    }

    /// Tensors added, removed, changed and unchanged from this archive to `other`, by name,
    /// dtype, shape and the chunks' content hashes (data read only where hashes are missing).
    fn diff<'py>(&self, py: Python<'py>, other: &Archive) -> PyResult<Bound<'py, PyDict>> {
        let d = py.detach(|| bpz::diff(&self.reader, &other.reader)).py()?;
        let out = PyDict::new(py);
        out.set_item("added", d.added)?;
        out.set_item("removed", d.removed)?;
        out.set_item("changed", d.changed)?;
        out.set_item("unchanged", d.unchanged)?;
        out.set_item("compared_by_reading", d.compared_by_reading)?;
        Ok(out)
    }

    #[getter]
    fn path(&self) -> &str {
        self.reader.path()
    }

    #[getter]
    fn version(&self) -> (u16, u16) {
        let v = self.reader.version();
        (v.major, v.minor)
    }

    #[getter]
    fn alignment(&self) -> u32 {
        self.reader.superblock().alignment
    }

    #[getter]
    fn file_size(&self) -> u64 {
        self.reader.file_len()
    }

    #[getter]
    fn mapped(&self) -> bool {
        self.reader.mapping().is_some()
    }

    /// `{"name": ..., "version": ...}` of the writer, or None.
    #[getter]
    fn writer<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyDict>>> {
        self.reader
            .writer()
            .py()?
            .map(|w| {
                let d = PyDict::new(py);
                d.set_item("name", &w.name)?;
                d.set_item("version", &w.version)?;
                Ok(d)
            })
            .transpose()
    }

    fn names(&self) -> PyResult<Vec<String>> {
        Ok(self
            .reader
            .tensors()
            .py()?
            .iter()
            .map(|t| t.name.clone())
            .collect())
    }

    fn __len__(&self) -> usize {
        self.reader.tensor_count()
    }

    /// A damaged index met on the way raises (it is not "absent").
    fn __contains__(&self, name: &str) -> PyResult<bool> {
        match self.reader.tensor(name) {
            Ok(_) => Ok(true),
            Err(bpz::Error::TensorNotFound { .. }) => Ok(false),
            Err(e) => Err(e).py(),
        }
    }

    fn info<'py>(&self, py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyDict>> {
        info_dict(py, self.reader.tensor(name).py()?)
    }

    fn infos<'py>(&self, py: Python<'py>) -> PyResult<Vec<Bound<'py, PyDict>>> {
        self.reader
            .tensors()
            .py()?
            .iter()
            .map(|t| info_dict(py, t))
            .collect()
    }

    /// The tree as JSON text (`null` if none).
    fn tree_json(&self) -> PyResult<String> {
        Ok(self.reader.tree_json().py()?.to_owned())
    }

    /// The metadata as JSON text (`null` if none).
    fn metadata_json(&self) -> PyResult<String> {
        Ok(self.reader.metadata_json().py()?.to_owned())
    }

    /// `(bytes, dtype, shape)` of a tensor: a zero-copy view of a raw tensor in a mapped
    /// archive, else a checksummed copy. One call, so `archive[name]` costs one lookup.
    fn get<'py>(
        &self,
        py: Python<'py>,
        name: &str,
    ) -> PyResult<(Buffer, &'static str, Bound<'py, PyTuple>)> {
        let reader = &self.reader;
        let index = reader.position(name).py()?;
        let t = reader.tensor_at(index).py()?;
        let bytes = if t.is_raw() && reader.mapping().is_some() {
            Buffer::view(reader.view_at(index).py()?)
        } else {
            read_at(py, reader, index)?
        };
        Ok((bytes, t.dtype.name(), PyTuple::new(py, &t.shape)?))
    }

    /// `(name, dtype, shape)` of every tensor, in index order.
    fn layouts<'py>(
        &self,
        py: Python<'py>,
    ) -> PyResult<Vec<(&str, &'static str, Bound<'py, PyTuple>)>> {
        self.reader
            .tensors()
            .py()?
            .iter()
            .map(|t| Ok((t.name.as_str(), t.dtype.name(), PyTuple::new(py, &t.shape)?)))
            .collect()
    }

    /// Checksummed copies of every tensor, in index order, decoded in parallel.
    fn read_all(&self, py: Python<'_>) -> PyResult<Vec<Buffer>> {
        let reader = &self.reader;
        let buffers = py.detach(|| reader.read_all_zeroed()).py()?;
        Ok(buffers.into_iter().map(Buffer::zeroed).collect())
    }

    /// Zero-copy, read-only bytes of a raw tensor (not checksummed; see `verify_tensor`).
    fn view(&self, name: &str) -> PyResult<Buffer> {
        Ok(Buffer::view(self.reader.view(name).py()?))
    }

    /// A checksummed copy of a tensor's decoded bytes.
    fn read(&self, py: Python<'_>, name: &str) -> PyResult<Buffer> {
        read_at(py, &self.reader, self.reader.position(name).py()?)
    }

    /// Decoded bytes of rows `start..stop` of the leading axis.
    fn read_rows(&self, py: Python<'_>, name: &str, start: u64, stop: u64) -> PyResult<Buffer> {
        let reader = &self.reader;
        py.detach(|| reader.read_rows(name, start..stop).map(Buffer::owned))
            .py()
    }

    /// Reads rows `start..stop` of tensor `name` into `out`, a writable C-contiguous buffer
    /// (a NumPy array) of exactly their byte size, checksummed, without the GIL.
    fn read_rows_into(
        &self,
        py: Python<'_>,
        name: &str,
        start: u64,
        stop: u64,
        out: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        self.read_rows_many_into(py, vec![(name.to_owned(), start, stop, out.clone())])
    }

    /// Many `(name, start, stop, out)` row reads in one call: the GIL is released once and the
    /// reads run in parallel (across requests, and across the chunks of each). The buffers
    /// must not overlap; each is checked (writable, contiguous, item size, byte size) first.
    fn read_rows_many_into(
        &self,
        py: Python<'_>,
        requests: Vec<(String, u64, u64, Bound<'_, PyAny>)>,
    ) -> PyResult<()> {
        let reader = &self.reader;
        let mut held = Vec::with_capacity(requests.len());
        let mut targets = Vec::with_capacity(requests.len());
        for (name, start, stop, out) in &requests {
            let t = reader.tensor(name).py()?;
            let view = WritableView::get(name, out)?;
            let size = t.dtype.size() as u64;
            if view.itemsize != 0 && view.itemsize != size {
                return Err(PyValueError::new_err(format!(
                    "tensor {name:?} is {} ({size} bytes an element); the buffer's elements are \
                     {} bytes",
                    t.dtype.name(),
                    view.itemsize
                )));
            }
            targets.push(RowsTarget {
                name: name.as_str(),
                rows: *start..*stop,
                ptr: view.ptr,
                len: view.len,
            });
            held.push(view);
        }
        // Distinct `&mut` slices may not alias: refuse buffers that share bytes.
        let mut spans: Vec<(usize, usize, &str)> = targets
            .iter()
            .filter(|t| t.len > 0)
            .map(|t| (t.ptr as usize, t.len, t.name))
            .collect();
        spans.sort_unstable();
        if let Some(w) = spans.windows(2).find(|w| w[0].0 + w[0].1 > w[1].0) {
            return Err(PyValueError::new_err(format!(
                "the buffers for tensors {:?} and {:?} overlap: each read needs its own memory",
                w[0].2, w[1].2
            )));
        }
        let result = py.detach(|| {
            let reads = targets
                .iter()
                .map(|t| bpz::RowsRead {
                    name: t.name,
                    rows: t.rows.clone(),
                    out: t.out(),
                })
                .collect();
            reader.read_rows_many_into(reads)
        });
        drop(held);
        result.py()
    }

    /// Reads many tensors, in parallel across tensors (and chunks).
    fn read_many(&self, py: Python<'_>, names: Vec<String>) -> PyResult<Vec<Buffer>> {
        let reader = &self.reader;
        let indices = names
            .iter()
            .map(|n| reader.position(n))
            .collect::<bpz::Result<Vec<_>>>()
            .py()?;
        let buffers = py.detach(|| reader.read_many_zeroed_at(&indices)).py()?;
        Ok(buffers.into_iter().map(Buffer::zeroed).collect())
    }

    /// Checks every checksum of one tensor; with `decode`, also decodes its compressed
    /// chunks (refused past `max_decoded_bytes`, default `default_decode_budget`).
    #[pyo3(signature = (name, decode = false, max_decoded_bytes = None))]
    fn verify_tensor(
        &self,
        py: Python<'_>,
        name: &str,
        decode: bool,
        max_decoded_bytes: Option<u64>,
    ) -> PyResult<()> {
        let reader = &self.reader;
        let opts = VerifyOptions {
            decode,
            max_decoded_bytes,
        };
        py.detach(|| reader.verify_tensor_with(name, &opts)).py()
    }

    /// Decoded bytes `verify(decode=True)` accepts by default for this file.
    #[getter]
    fn default_decode_budget(&self) -> u64 {
        self.reader.default_decode_budget()
    }

    /// Checks that the padding between chunks is zero (part of `verify`).
    fn verify_padding(&self, py: Python<'_>) -> PyResult<()> {
        let reader = &self.reader;
        py.detach(|| reader.verify_padding()).py()
    }

    /// Checks every stored byte of the file against its checksum (and, with `decode`,
    /// decodes every compressed chunk within the budget); returns counts of what was checked.
    #[pyo3(signature = (decode = false, max_decoded_bytes = None))]
    fn verify<'py>(
        &self,
        py: Python<'py>,
        decode: bool,
        max_decoded_bytes: Option<u64>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let reader = &self.reader;
        let opts = VerifyOptions {
            decode,
            max_decoded_bytes,
        };
        let report = py.detach(|| reader.verify_with(&opts)).py()?;
        let d = PyDict::new(py);
        d.set_item("tensors", report.tensors)?;
        d.set_item("chunks", report.chunks)?;
        d.set_item("stored_bytes", report.stored_bytes)?;
        d.set_item("decoded_bytes", report.decoded_bytes)?;
        d.set_item("decoded", report.decoded)?;
        Ok(d)
    }

    fn __repr__(&self) -> String {
        format!(
            "<bpz._bpz.Archive {:?}: {} tensors>",
            self.reader.path(),
            self.reader.tensor_count()
        )
    }
}

// ------------------------------------------------------------ reads into caller's buffers

use crate::pybuffer::{PyBuffer_Release, PyObject_GetBuffer, RawBuffer, PYBUF_ND, PYBUF_WRITABLE};

/// Writable and C-contiguous, no format string (NumPy has none for ml_dtypes' types; the item
/// size is checked instead).
const PYBUF_WRITABLE_ND: std::ffi::c_int = PYBUF_WRITABLE | PYBUF_ND;

/// A writable buffer exported by a Python object, held (so it can be neither freed nor
/// resized) until dropped, which happens with the GIL held.
struct WritableView {
    view: Box<RawBuffer>,
    ptr: *mut u8,
    len: usize,
    itemsize: u64,
}

impl WritableView {
    fn get(name: &str, obj: &Bound<'_, PyAny>) -> PyResult<Self> {
        let mut view = RawBuffer::empty();
        // SAFETY: `obj` is alive and the GIL is held; a filled view is released in `drop`.
        if unsafe { PyObject_GetBuffer(obj.as_ptr(), &mut *view, PYBUF_WRITABLE_ND) } != 0 {
            let cause = PyErr::fetch(obj.py());
            let msg = format!(
                "tensor {name:?}: the destination must be a writable, C-contiguous buffer \
                 (a NumPy array): {cause}"
            );
            return Err(if cause.is_instance_of::<PyTypeError>(obj.py()) {
                PyTypeError::new_err(msg)
            } else {
                PyValueError::new_err(msg)
            });
        }
        let (ptr, len, itemsize) = (
            view.buf as *mut u8,
            view.len.max(0) as usize,
            view.itemsize.max(0) as u64,
        );
        Ok(WritableView {
            view,
            ptr,
            len,
            itemsize,
        })
    }
}

impl Drop for WritableView {
    fn drop(&mut self) {
        // SAFETY: filled by a successful PyObject_GetBuffer, released once, with the GIL held.
        unsafe { PyBuffer_Release(&mut *self.view) };
    }
}

/// One row read: its destination is memory of a [`WritableView`] that outlives the read.
struct RowsTarget<'a> {
    name: &'a str,
    rows: std::ops::Range<u64>,
    ptr: *mut u8,
    len: usize,
}

// SAFETY: each target's memory is held by its view and, checked, overlaps no other target's;
// each target is written by one thread only.
unsafe impl Send for RowsTarget<'_> {}
unsafe impl Sync for RowsTarget<'_> {}

impl RowsTarget<'_> {
    #[allow(clippy::mut_from_ref)]
    fn out(&self) -> &mut [u8] {
        if self.len == 0 {
            &mut []
        } else {
            // SAFETY: the view holds the memory, checked to overlap no other target's, and
            // each target's slice is made once, for one read.
            unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
        }
    }
}
