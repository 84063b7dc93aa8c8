//! `Writer`: a streaming archive writer. Tensor bytes are read straight from
//! the caller's (NumPy) memory while the GIL is released.

use std::path::PathBuf;

use bpz::{Compression, DType, Filter, TensorOptions, WriterInfo, WriterOptions};
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::archive::info_dict;
use crate::errors::IntoPyResult;

#[pyclass(module = "bpz._bpz")]
pub struct Writer {
    inner: Option<bpz::Writer>,
    path: PathBuf,
}

fn parse_compression(c: Option<&str>) -> PyResult<Compression> {
    Ok(match c {
        None | Some("none") => Compression::None,
        Some("zstd") => Compression::Zstd,
        Some("auto") => Compression::AUTO,
        Some(other) => {
            return Err(PyValueError::new_err(format!(
                "compression must be \"auto\", \"zstd\" or None, not {other:?}"
            )))
        }
    })
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
fn tensor_options(compression: Option<&str>, filter: Option<&str>, level: Option<i32>) -> PyResult<TensorOptions> {
    Ok(TensorOptions {
        compression: compression.map(|c| parse_compression(Some(c))).transpose()?,
        filter: parse_filter(filter)?,
        level,
    })
}

fn parse_dtype(name: &str) -> PyResult<DType> {
    DType::from_name(name).ok_or_else(|| PyValueError::new_err(format!("unknown bpz dtype {name:?}")))
}

impl Writer {
    fn inner(&mut self) -> PyResult<&mut bpz::Writer> {
        self.inner
            .as_mut()
            .ok_or_else(|| PyRuntimeError::new_err(format!("writer for {} is already finished", self.path.display())))
    }
}

#[pymethods]
impl Writer {
    #[new]
    #[pyo3(signature = (path, *, alignment = 64, chunk_bytes = 2 << 20, compression = Some("auto"), level = 1, filter = None, sync = true, overwrite = true, writer_name = "bpz-python", writer_version = env!("CARGO_PKG_VERSION")))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        path: PathBuf,
        alignment: u32,
        chunk_bytes: usize,
        compression: Option<&str>,
        level: i32,
        filter: Option<&str>,
        sync: bool,
        overwrite: bool,
        writer_name: &str,
        writer_version: &str,
    ) -> PyResult<Self> {
        let opts = WriterOptions {
            alignment,
            chunk_bytes,
            compression: parse_compression(compression)?,
            level,
            filter: parse_filter(filter)?,
            sync,
            overwrite,
            writer: WriterInfo { name: writer_name.into(), version: writer_version.into() },
        };
        let inner = py.detach(|| bpz::Writer::create(&path, opts)).py()?;
        Ok(Writer { inner: Some(inner), path })
    }

    /// Adds a tensor whose little-endian, C-order bytes are at `address`
    /// (`nbytes` long) and stay alive and unchanged during the call: the
    /// caller passes the object that owns them as `owner`.
    #[pyo3(signature = (name, dtype, shape, address, nbytes, owner, *, compression = None, filter = None, level = None))]
    #[allow(clippy::too_many_arguments)]
    fn add_tensor<'py>(
        &mut self,
        py: Python<'py>,
        name: &str,
        dtype: &str,
        shape: Vec<u64>,
        address: usize,
        nbytes: usize,
        owner: Bound<'py, PyAny>,
        compression: Option<&str>,
        filter: Option<&str>,
        level: Option<i32>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let dtype = parse_dtype(dtype)?;
        let topts = tensor_options(compression, filter, level)?;
        if address == 0 && nbytes != 0 {
            return Err(PyValueError::new_err("null address"));
        }
        // The bytes are read as the elements in C order: an array in any other layout
        // (Fortran order, strided) would be saved scrambled, silently.
        if nbytes != 0 {
            if let Ok(flags) = owner.getattr("flags") {
                if let Ok(false) = flags.getattr("c_contiguous").and_then(|v| v.extract::<bool>()) {
                    return Err(PyValueError::new_err(format!(
                        "tensor {name:?}: the array is not C-contiguous, so its memory does not hold its \
                         elements in C order; pass a C-contiguous array (numpy.ascontiguousarray)"
                    )));
                }
            }
        }
        let _keepalive = owner;
        let writer = self.inner()?;
        let info = py
            .detach(|| {
                // SAFETY: the Python caller guarantees `address..address+nbytes` is a live
                // buffer owned by `owner`, which this frame holds a reference to.
                let data: &[u8] =
                    if nbytes == 0 { &[] } else { unsafe { std::slice::from_raw_parts(address as *const u8, nbytes) } };
                writer.add_tensor_with(name, dtype, &shape, data, &topts).cloned()
            })
            .py()?;
        info_dict(py, &info)
    }

    /// Adds a tensor from a bytes-like object (copied; for small data).
    #[pyo3(signature = (name, dtype, shape, data, *, compression = None, filter = None, level = None))]
    #[allow(clippy::too_many_arguments)]
    fn add_bytes<'py>(
        &mut self,
        py: Python<'py>,
        name: &str,
        dtype: &str,
        shape: Vec<u64>,
        data: Vec<u8>,
        compression: Option<&str>,
        filter: Option<&str>,
        level: Option<i32>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let dtype = parse_dtype(dtype)?;
        let topts = tensor_options(compression, filter, level)?;
        let writer = self.inner()?;
        let info = py.detach(|| writer.add_tensor_with(name, dtype, &shape, &data, &topts).cloned()).py()?;
        info_dict(py, &info)
    }

    fn set_tree_json(&mut self, text: &str) -> PyResult<()> {
        let value = serde_json::from_str(text).map_err(|e| PyValueError::new_err(format!("tree is not valid JSON: {e}")))?;
        self.inner()?.set_tree(value);
        Ok(())
    }

    fn set_metadata_json(&mut self, text: &str) -> PyResult<()> {
        let value =
            serde_json::from_str(text).map_err(|e| PyValueError::new_err(format!("metadata is not valid JSON: {e}")))?;
        self.inner()?.set_metadata(value);
        Ok(())
    }

    /// Writes index and trailer, syncs, and renames over the destination.
    fn finish<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let writer = self.inner.take().ok_or_else(|| PyRuntimeError::new_err("writer is already finished"))?;
        let (summary, _) = py.detach(|| writer.finish()).py()?;
        let d = PyDict::new(py);
        d.set_item("path", summary.path)?;
        d.set_item("tensors", summary.tensors)?;
        d.set_item("file_bytes", summary.file_bytes)?;
        d.set_item("data_bytes", summary.data_bytes)?;
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
