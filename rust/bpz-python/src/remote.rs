//! `open_remote`: an `Archive` over an object read with ranged GETs (`bpz::remote`), and
//! the request counts the tests and benchmarks check.

use std::sync::Arc;

use bpz::remote::RemoteSource;
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict};

use crate::archive::Archive;
use crate::errors::IntoPyResult;

/// Requests and body bytes of one remote archive since it was opened.
#[pyclass(frozen, module = "bpz._bpz")]
pub struct RemoteStats {
    source: Arc<RemoteSource>,
}

#[pymethods]
impl RemoteStats {
    /// HTTP requests sent, retries included.
    #[getter]
    fn requests(&self) -> u64 {
        self.source.stats().requests
    }

    /// Body bytes received.
    #[getter]
    fn bytes(&self) -> u64 {
        self.source.stats().bytes
    }

    /// The URL as shown in messages (no credentials).
    #[getter]
    fn url(&self) -> &str {
        self.source.label()
    }

    fn __repr__(&self) -> String {
        let s = self.source.stats();
        format!(
            "<bpz._bpz.RemoteStats {:?}: {} requests, {} bytes>",
            self.source.label(),
            s.requests,
            s.bytes
        )
    }
}

/// Store options as strings: `True` -> "true", numbers as written.
pub(crate) fn options(
    storage_options: Option<&Bound<'_, PyDict>>,
) -> PyResult<Vec<(String, String)>> {
    let Some(dict) = storage_options else {
        return Ok(Vec::new());
    };
    dict.iter()
        .map(|(k, v)| {
            let key: String = k
                .extract()
                .map_err(|_| PyTypeError::new_err("storage_options keys must be strings"))?;
            let value = if v.is_instance_of::<PyBool>() {
                if v.extract::<bool>()? {
                    "true"
                } else {
                    "false"
                }
                .to_owned()
            } else if let Ok(s) = v.extract::<String>() {
                s
            } else if let Ok(n) = v.extract::<i64>() {
                n.to_string()
            } else if let Ok(x) = v.extract::<f64>() {
                x.to_string()
            } else {
                // The value is not shown: it may be a credential.
                return Err(PyTypeError::new_err(format!(
                    "storage option {key:?} must be a string, a number or a bool"
                )));
            };
            Ok((key, value))
        })
        .collect()
}

/// Opens the archive at `url` (http(s)://, s3://, gs://, az://) with one request; returns
/// it with its request counter.
#[pyfunction]
#[pyo3(signature = (url, storage_options = None, parallel = true, version = None))]
pub fn open_remote(
    py: Python<'_>,
    url: &str,
    storage_options: Option<&Bound<'_, PyDict>>,
    parallel: bool,
    version: Option<i64>,
) -> PyResult<(Archive, RemoteStats)> {
    let opts = options(storage_options)?;
    let which = crate::archive::version_selector(version)?;
    let (mut reader, source) = py
        .detach(|| {
            let (latest, source) = bpz::remote::open(url, &opts)?;
            // An older version costs one more request: its index, located by the latest's.
            match which {
                bpz::VersionSelector::Latest => Ok((latest, source)),
                which => Ok((latest.at_version(which)?, source)),
            }
        })
        .py()?;
    reader.set_parallel(parallel);
    Ok((Archive::from_reader(reader), RemoteStats { source }))
}

/// The objects under one URL prefix (`bpz::remote_dir`): listing, lookup, a few bytes of an
/// object, deletion, each with the GIL released.
#[pyclass(frozen, module = "bpz._bpz")]
pub struct RemoteDir {
    dir: bpz::remote_dir::RemoteDir,
}

type ObjectTuple = (String, u64, Option<String>, i64);

fn object_tuple(i: bpz::remote_dir::ObjectInfo) -> ObjectTuple {
    (i.name, i.size, i.etag, i.last_modified)
}

#[pymethods]
impl RemoteDir {
    #[new]
    #[pyo3(signature = (url, storage_options = None))]
    fn new(url: &str, storage_options: Option<&Bound<'_, PyDict>>) -> PyResult<Self> {
        let opts = options(storage_options)?;
        Ok(RemoteDir {
            dir: bpz::remote_dir::RemoteDir::open(url, &opts).py()?,
        })
    }

    /// The prefix's URL as shown in messages (no credentials).
    #[getter]
    fn label(&self) -> &str {
        self.dir.label()
    }

    /// HTTP requests sent by this object's operations (retries included).
    #[getter]
    fn requests(&self) -> u64 {
        self.dir.stats().requests
    }

    /// The URL of the object `name` directly under the prefix.
    fn url(&self, name: &str) -> PyResult<String> {
        self.dir.url(name).py()
    }

    /// `(objects, prefixes)` directly under the prefix: objects as
    /// `(name, size, etag, last_modified)`, sub-prefixes by name.
    fn list(&self, py: Python<'_>) -> PyResult<(Vec<ObjectTuple>, Vec<String>)> {
        let found = py.detach(|| self.dir.list()).py()?;
        Ok((
            found.objects.into_iter().map(object_tuple).collect(),
            found.prefixes,
        ))
    }

    /// `(name, size, etag, last_modified)` of the object `name`, or None.
    fn head(&self, py: Python<'_>, name: &str) -> PyResult<Option<ObjectTuple>> {
        Ok(py.detach(|| self.dir.head(name)).py()?.map(object_tuple))
    }

    /// The first `n` bytes of the object `name` (fewer when it is shorter).
    fn read_head<'py>(
        &self,
        py: Python<'py>,
        name: &str,
        n: u64,
    ) -> PyResult<Bound<'py, pyo3::types::PyBytes>> {
        let (data, _) = py
            .detach(|| self.dir.read(name, bpz::remote_dir::Span::Head(n)))
            .py()?;
        Ok(pyo3::types::PyBytes::new(py, &data))
    }

    /// `(last n bytes, size)` of the object `name`.
    fn read_tail<'py>(
        &self,
        py: Python<'py>,
        name: &str,
        n: u64,
    ) -> PyResult<(Bound<'py, pyo3::types::PyBytes>, u64)> {
        let (data, size) = py
            .detach(|| self.dir.read(name, bpz::remote_dir::Span::Tail(n)))
            .py()?;
        Ok((pyo3::types::PyBytes::new(py, &data), size))
    }

    /// Every byte of the object `name`, refused when it holds more than `max_bytes`.
    fn read_all<'py>(
        &self,
        py: Python<'py>,
        name: &str,
        max_bytes: u64,
    ) -> PyResult<Bound<'py, pyo3::types::PyBytes>> {
        let (data, _) = py
            .detach(|| {
                self.dir
                    .read(name, bpz::remote_dir::Span::Whole { max: max_bytes })
            })
            .py()?;
        Ok(pyo3::types::PyBytes::new(py, &data))
    }

    /// Deletes the object `name` (a missing one is not an error).
    fn delete(&self, py: Python<'_>, name: &str) -> PyResult<()> {
        py.detach(|| self.dir.delete(name)).py()
    }

    fn __repr__(&self) -> String {
        format!("<bpz._bpz.RemoteDir {:?}>", self.dir.label())
    }
}
