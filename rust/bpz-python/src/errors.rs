//! Maps `bpz::Error` onto the Python exception hierarchy of `bpz.errors`.

use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::prelude::*;

/// The class of `bpz.errors` that represents each error kind.
fn class_name(kind: &str) -> &'static str {
    match kind {
        "bad_magic" => "NotAnArchiveError",
        "truncated" => "TruncatedError",
        "checksum_mismatch" => "ChecksumError",
        "unsupported_version" | "unsupported_feature" => "UnsupportedVersionError",
        "limit_exceeded" => "LimitExceededError",
        "corrupt_data" => "CorruptDataError",
        "tensor_not_found" => "TensorNotFoundError",
        "not_zero_copy" => "NotZeroCopyError",
        _ => "FormatError",
    }
}

pub fn to_py(err: bpz::Error) -> PyErr {
    let message = err.to_string();
    match &err {
        bpz::Error::Io { path, source } => {
            // OSError(errno, strerror, filename) picks FileNotFoundError,
            // PermissionError, IsADirectoryError... from the errno.
            // The OS error may sit under a message that says which step failed.
            let chain = std::iter::successors(Some(source as &dyn std::error::Error), |e| e.source());
            let errno = chain.filter_map(|e| e.downcast_ref::<std::io::Error>()?.raw_os_error()).next().unwrap_or(0);
            if errno != 0 {
                return PyOSError::new_err((errno, source.to_string(), path.clone()));
            }
            PyOSError::new_err(message)
        }
        bpz::Error::InvalidArgument(_) => PyValueError::new_err(message),
        _ => raise(class_name(err.kind()), err.kind(), message),
    }
}

fn raise(class: &str, kind: &str, message: String) -> PyErr {
    Python::attach(|py| {
        let made = (|| -> PyResult<PyErr> {
            let cls = py.import("bpz.errors")?.getattr(class)?;
            let exc = cls.call1((message.clone(),))?;
            exc.setattr("kind", kind)?;
            Ok(PyErr::from_value(exc))
        })();
        made.unwrap_or_else(|_| PyValueError::new_err(message))
    })
}

pub trait IntoPyResult<T> {
    fn py(self) -> PyResult<T>;
}

impl<T> IntoPyResult<T> for bpz::Result<T> {
    fn py(self) -> PyResult<T> {
        self.map_err(to_py)
    }
}
