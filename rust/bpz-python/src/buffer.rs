//! `Buffer`: bytes owned by Rust (a decoded tensor, or a range of a memory
//! map) that NumPy wraps without copying through `__array_interface__`. The
//! array keeps the buffer alive, and the buffer keeps its map alive, so a view
//! stays valid after its archive is closed.

use std::sync::Arc;

use memmap2::{Mmap, MmapMut};
use pyo3::prelude::*;
use pyo3::types::PyDict;

/// What keeps the bytes alive; never read, only held.
#[allow(dead_code)]
pub enum Owner {
    Owned(Vec<u8>),
    Mapped(Arc<Mmap>),
    Anonymous(MmapMut),
}

/// Outputs at least this large get their own huge-page-advised map.
const HUGE_PAGE_MIN: usize = 4 << 20;

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
        Buffer { _owner: Owner::Owned(v), ptr, len, readonly: false }
    }

    /// `len` writable bytes filled by `fill`.
    pub fn filled_by<E>(len: usize, fill: impl FnOnce(&mut [u8]) -> Result<(), E>, no_memory: impl FnOnce() -> E) -> Result<Self, E> {
        let mut buf = Buffer::zeroed(len).ok_or_else(no_memory)?;
        fill(buf.bytes_mut())?;
        Ok(buf)
    }

    /// `len` zeroed, writable bytes (`None` if refused). Large buffers are anonymous maps
    /// advised to use huge pages (as NumPy does for its own large arrays): a load is bound by
    /// page faults on fresh memory, and a 2 MiB page faults once instead of 512 times.
    pub fn zeroed(len: usize) -> Option<Self> {
        if len < HUGE_PAGE_MIN {
            return bpz::read::try_zeroed_vec(len).map(Buffer::owned);
        }
        let map = MmapMut::map_anon(len).ok()?;
        #[cfg(target_os = "linux")]
        {
            // Advice only: where huge pages are off or unavailable this fails harmlessly.
            let _ = map.advise(memmap2::Advice::HugePage);
        }
        let ptr = map.as_ptr() as usize;
        Some(Buffer { _owner: Owner::Anonymous(map), ptr, len, readonly: false })
    }

    /// The bytes of a buffer from [`zeroed`](Self::zeroed) or [`owned`](Self::owned), to fill
    /// before it is handed to Python.
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        match &mut self._owner {
            Owner::Owned(v) => v,
            Owner::Anonymous(map) => map,
            Owner::Mapped(_) => panic!("a view of a file's map is read-only"),
        }
    }

    /// A read-only window `[start, start + len)` of `map`.
    pub fn of_map(map: Arc<Mmap>, start: usize, len: usize) -> Self {
        assert!(start + len <= map.len());
        // SAFETY: in bounds (checked above); the Arc keeps the map alive as long as `self`.
        let ptr = unsafe { map.as_ptr().add(start) } as usize;
        Buffer { _owner: Owner::Mapped(map), ptr, len, readonly: true }
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
        format!("<bpz Buffer of {} bytes{}>", self.len, if self.readonly { ", read-only map" } else { "" })
    }
}
