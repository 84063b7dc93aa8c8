//! CPython's buffer protocol, declared once for the writer (reading a tensor's bytes) and the
//! archive (reading rows into a caller's array).

use std::ffi::{c_char, c_int, c_void};

use pyo3::ffi;

/// CPython's `Py_buffer`. PyO3 declares it for the limited API only from Python 3.11, where
/// it joined the stable ABI unchanged; this module is built for abi3 from 3.10, whose
/// interpreter has the same struct (stable since 3.3) and exports the same two functions.
#[repr(C)]
pub(crate) struct RawBuffer {
    pub buf: *mut c_void,
    pub obj: *mut ffi::PyObject,
    pub len: ffi::Py_ssize_t,
    pub itemsize: ffi::Py_ssize_t,
    pub readonly: c_int,
    pub ndim: c_int,
    pub format: *mut c_char,
    pub shape: *mut ffi::Py_ssize_t,
    pub strides: *mut ffi::Py_ssize_t,
    pub suboffsets: *mut ffi::Py_ssize_t,
    pub internal: *mut c_void,
}

impl RawBuffer {
    /// An unfilled view, boxed because the exporter may keep its address.
    pub(crate) fn empty() -> Box<RawBuffer> {
        Box::new(RawBuffer {
            buf: std::ptr::null_mut(),
            obj: std::ptr::null_mut(),
            len: 0,
            itemsize: 0,
            readonly: 0,
            ndim: 0,
            format: std::ptr::null_mut(),
            shape: std::ptr::null_mut(),
            strides: std::ptr::null_mut(),
            suboffsets: std::ptr::null_mut(),
            internal: std::ptr::null_mut(),
        })
    }
}

extern "C" {
    pub(crate) fn PyObject_GetBuffer(
        obj: *mut ffi::PyObject,
        view: *mut RawBuffer,
        flags: c_int,
    ) -> c_int;
    pub(crate) fn PyBuffer_Release(view: *mut RawBuffer);
}

/// `PyBUF_WRITABLE`.
pub(crate) const PYBUF_WRITABLE: c_int = 0x0001;
/// `PyBUF_ND`: C-contiguous with a shape and no format string (NumPy can't describe
/// ml_dtypes' types in one, but needn't).
pub(crate) const PYBUF_ND: c_int = 0x0008;
