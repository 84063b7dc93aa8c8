//! `Buffer`: bytes owned by Rust (a decoded tensor, or a range of a memory
//! map) that NumPy wraps without copying through `__array_interface__`. The
//! array keeps the buffer alive, and the buffer keeps its map alive, so a view
//! stays valid after its archive is closed.

use pyo3::prelude::*;
use pyo3::types::PyDict;

/// What keeps the bytes alive; never read, only held.
#[allow(dead_code)]
pub enum Owner {
    Owned(Vec<u8>),
    /// A load's output (the core's buffer: heap, or a huge-page map when large).
    Zeroed(bpz::Zeroed),
    /// A range of the archive's map, which the view shares.
    Mapped(bpz::View),
}

#[pyclass(frozen, module = "bpz._bpz")]
pub struct Buffer {
    _owner: Owner,
    ptr: usize,
    len: usize,
    readonly: bool,
}

impl Buffer {
    pub fn owned(v: Vec<u8>) -> Self {
        let (ptr, len) = (v.as_ptr() as usize, v.len());
        Buffer {
            _owner: Owner::Owned(v),
            ptr,
            len,
            readonly: false,
        }
    }

    pub fn zeroed(z: bpz::Zeroed) -> Self {
        let (ptr, len) = (z.as_ptr() as usize, z.len());
        Buffer {
            _owner: Owner::Zeroed(z),
            ptr,
            len,
            readonly: false,
        }
    }

    /// A read-only view of the file's map; the view keeps the map alive as long as `self`.
    pub fn view(v: bpz::View) -> Self {
        let (ptr, len) = (v.as_ptr() as usize, v.len());
        Buffer {
            _owner: Owner::Mapped(v),
            ptr,
            len,
            readonly: true,
        }
    }
}

#[pymethods]
impl Buffer {
    /// NumPy's array interface (version 3): a 1-D array of bytes.
    #[getter]
    fn __array_interface__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        d.set_item("version", 3)?;
        d.set_item("shape", (self.len,))?;
        d.set_item("typestr", "|u1")?;
        // NumPy wants a non-null address even for zero bytes.
        let ptr = if self.len == 0 { 64 } else { self.ptr };
        d.set_item("data", (ptr, self.readonly))?;
        Ok(d)
    }

    #[getter]
    fn nbytes(&self) -> usize {
        self.len
    }

    #[getter]
    fn readonly(&self) -> bool {
        self.readonly
    }

    /// Whether the bytes are a view of a memory-mapped file.
    #[getter]
    fn mapped(&self) -> bool {
        matches!(self._owner, Owner::Mapped(_))
    }

    fn __len__(&self) -> usize {
        self.len
    }

    fn __repr__(&self) -> String {
        format!(
            "<bpz Buffer of {} bytes{}>",
            self.len,
            if self.readonly { ", read-only map" } else { "" }
        )
    }
}
