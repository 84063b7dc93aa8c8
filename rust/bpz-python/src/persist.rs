//! `TempFile`: the core's way of putting a file in place (`bpz::persist`), for the files
//! the Python package writes itself (.npz, .safetensors, .bp, .h5, .pkl, .mat), so that
//! they follow the same destination rules as archives.

use std::path::PathBuf;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyType;

use crate::errors::IntoPyResult;

#[pyclass(module = "bpz._bpz")]
pub struct TempFile {
    inner: Option<bpz::persist::TempFile>,
    name: PathBuf,
    target: PathBuf,
    dest: PathBuf,
}

impl TempFile {
    fn open(&self) -> PyResult<&bpz::persist::TempFile> {
        self.inner.as_ref().ok_or_else(|| {
            PyValueError::new_err(format!(
                "{}: the save was already committed or aborted",
                self.dest.display()
            ))
        })
    }
}

#[pymethods]
impl TempFile {
    #[new]
    #[pyo3(signature = (path, overwrite = true))]
    fn new(py: Python<'_>, path: PathBuf, overwrite: bool) -> PyResult<Self> {
        let inner = py
            .detach(|| bpz::persist::TempFile::create(&path, true, overwrite))
            .py()?;
        let (name, target) = (
            inner.temp_path().to_path_buf(),
            inner.target().to_path_buf(),
        );
        Ok(TempFile {
            inner: Some(inner),
            name,
            target,
            dest: path,
        })
    }

    /// The temporary file's name: open it for writing (truncating), never replace it.
    #[getter]
    fn name(&self) -> PathBuf {
        self.name.clone()
    }

    /// The file the commit replaces or creates (the destination, or where a symlink leads).
    #[getter]
    fn target(&self) -> PathBuf {
        self.target.clone()
    }

    /// The open temporary file's descriptor (owned by this object: dup it to keep it).
    fn fileno(&self) -> PyResult<i64> {
        let file = self.open()?.file();
        #[cfg(unix)]
        {
            use std::os::fd::AsRawFd;
            Ok(file.as_raw_fd() as i64)
        }
        #[cfg(windows)]
        {
            use std::os::windows::io::AsRawHandle;
            Ok(file.as_raw_handle() as i64)
        }
    }

    /// Puts the file in place of the destination (fsyncing it and its directory with
    /// `sync`); returns the destination. On error the temporary is removed and the
    /// destination is as it was.
    #[pyo3(signature = (sync = true))]
    fn commit(&mut self, py: Python<'_>, sync: bool) -> PyResult<PathBuf> {
        self.open()?;
        let mut inner = self.inner.take().expect("checked");
        inner.set_sync(sync);
        py.detach(|| inner.commit()).py()
    }

    /// Removes the temporary file; the destination stays as it was. Idempotent.
    fn abort(&mut self, py: Python<'_>) {
        if let Some(inner) = self.inner.take() {
            py.detach(|| inner.abort());
        }
    }

    #[getter]
    fn closed(&self) -> bool {
        self.inner.is_none()
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    /// Leaving the block without `commit()` (an exception, a return) aborts.
    fn __exit__(
        &mut self,
        py: Python<'_>,
        _ty: Option<&Bound<'_, PyType>>,
        _value: Option<&Bound<'_, PyAny>>,
        _tb: Option<&Bound<'_, PyAny>>,
    ) -> bool {
        self.abort(py);
        false
    }

    fn __repr__(&self) -> String {
        let state = if self.inner.is_some() {
            "open"
        } else {
            "closed"
        };
        format!(
            "<bpz._bpz.TempFile {} for {} ({state})>",
            self.name.display(),
            self.dest.display()
        )
    }
}
