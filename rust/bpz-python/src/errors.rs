//! The Python exception classes of bpz, one per kind of `bpz::Error`, made once when
//! the module is imported, and the mapping of each error onto its class.
//!
//! The classes derive from builtin exceptions as well as from `BpzError` (a format
//! error is a `ValueError`, a refused allocation a `MemoryError`...), which PyO3's
//! `create_exception!` cannot declare (one base only): they are made by calling
//! `type(name, bases, namespace)`. `bpz.errors` re-exports them.

use pyo3::exceptions::{
    PyBaseException, PyException, PyKeyError, PyMemoryError, PyOSError, PyValueError,
};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyTuple, PyType};

/// A builtin exception a class derives from besides its bpz parent.
#[derive(Clone, Copy)]
enum Builtin {
    Exception,
    ValueError,
    KeyError,
    MemoryError,
}

struct Class {
    name: &'static str,
    /// The bpz class it extends (declared before it in [`CLASSES`]).
    parent: Option<&'static str>,
    also: Option<Builtin>,
    /// The `bpz::Error` kind it is raised for (its class attribute `kind`).
    kind: Option<&'static str>,
    doc: &'static str,
}

/// Every class, parents first. `io` errors have none of these: they are the builtin
/// `OSError` subclass of their errno (`FileNotFoundError`...), as from `open()`.
const CLASSES: &[Class] = &[
    Class {
        name: "BpzError",
        parent: None,
        also: Some(Builtin::Exception),
        kind: None,
        doc: "Base class of every error raised by bpz.",
    },
    Class {
        name: "FormatError",
        parent: Some("BpzError"),
        also: Some(Builtin::ValueError),
        // Also the kind of a FormatError raised for a malformed file of another format.
        kind: Some("invalid_index"),
        doc: "The file is not a valid archive of the format it claims (corrupt or malformed).",
    },
    Class {
        name: "NotAnArchiveError",
        parent: Some("FormatError"),
        also: None,
        kind: Some("bad_magic"),
        doc: "The file does not start with the expected magic bytes.",
    },
    Class {
        name: "TruncatedError",
        parent: Some("FormatError"),
        also: None,
        kind: Some("truncated"),
        doc: "The file ends before the structure it declares.",
    },
    Class {
        name: "ChecksumError",
        parent: Some("FormatError"),
        also: None,
        kind: Some("checksum_mismatch"),
        doc: "Stored bytes do not match their checksum: the file is corrupt.",
    },
    Class {
        name: "UnsupportedVersionError",
        parent: Some("FormatError"),
        also: None,
        kind: Some("unsupported_version"),
        doc: "The file needs a newer reader (newer major version or unknown required feature).",
    },
    Class {
        name: "UnsupportedFeatureError",
        parent: Some("UnsupportedVersionError"),
        also: None,
        kind: Some("unsupported_feature"),
        doc: "The file uses a required feature, dtype, storage or filter this reader does not know.",
    },
    Class {
        name: "LimitExceededError",
        parent: Some("FormatError"),
        also: None,
        kind: Some("limit_exceeded"),
        doc: "The file declares a size, depth or count over a safety limit.",
    },
    Class {
        name: "CorruptDataError",
        parent: Some("FormatError"),
        also: None,
        kind: Some("corrupt_data"),
        doc: "A chunk's checksum matched but it does not decode to its declared size.",
    },
    Class {
        name: "NotZeroCopyError",
        parent: Some("BpzError"),
        also: Some(Builtin::ValueError),
        kind: Some("not_zero_copy"),
        doc: "A zero-copy view was asked of a compressed tensor or an unmapped archive.",
    },
    Class {
        name: "TensorNotFoundError",
        parent: Some("BpzError"),
        also: Some(Builtin::KeyError),
        kind: Some("tensor_not_found"),
        doc: "No tensor of that name in the archive.",
    },
    Class {
        name: "InvalidArgumentError",
        parent: Some("BpzError"),
        also: Some(Builtin::ValueError),
        kind: Some("invalid_argument"),
        doc: "A bad argument: a row range out of range, a buffer of the wrong size, a duplicate tensor name...",
    },
    Class {
        name: "OutOfMemoryError",
        parent: Some("BpzError"),
        also: Some(Builtin::MemoryError),
        kind: Some("out_of_memory"),
        doc: "A buffer for a read could not be allocated: the process is short of memory, the file is not at fault.",
    },
];

struct Made {
    /// Each of [`CLASSES`], by name.
    all: Vec<(&'static str, Py<PyType>)>,
    /// The class raised for each kind, in the order of `bpz::Error::KINDS`.
    by_kind: Vec<Py<PyType>>,
}

static MADE: PyOnceLock<Made> = PyOnceLock::new();

fn make(py: Python<'_>) -> PyResult<Made> {
    let mut all: Vec<(&'static str, Py<PyType>)> = Vec::with_capacity(CLASSES.len());
    for class in CLASSES {
        let mut bases = Vec::new();
        if let Some(parent) = class.parent {
            let (_, made) = all
                .iter()
                .find(|(name, _)| *name == parent)
                .expect("parents come first in CLASSES");
            bases.push(made.bind(py).clone());
        }
        if let Some(builtin) = class.also {
            bases.push(match builtin {
                Builtin::Exception => py.get_type::<PyException>(),
                Builtin::ValueError => py.get_type::<PyValueError>(),
                Builtin::KeyError => py.get_type::<PyKeyError>(),
                Builtin::MemoryError => py.get_type::<PyMemoryError>(),
            });
        }
        let namespace = PyDict::new(py);
        namespace.set_item("__doc__", class.doc)?;
        namespace.set_item("__module__", "bpz.errors")?;
        if let Some(kind) = class.kind {
            namespace.set_item("kind", kind)?;
        }
        if matches!(class.also, Some(Builtin::KeyError)) {
            // KeyError's str() is the repr() of the message: show the message itself.
            namespace.set_item(
                "__str__",
                py.get_type::<PyBaseException>().getattr("__str__")?,
            )?;
        }
        let made =
            py.get_type::<PyType>()
                .call1((class.name, PyTuple::new(py, bases)?, namespace))?;
        all.push((class.name, made.cast_into::<PyType>()?.unbind()));
    }
    let by_kind = bpz::Error::KINDS
        .iter()
        .map(|&kind| {
            if kind == "io" {
                return Ok(py.get_type::<PyOSError>().unbind());
            }
            let class = CLASSES
                .iter()
                .position(|c| c.kind == Some(kind))
                .ok_or_else(|| {
                    pyo3::exceptions::PyRuntimeError::new_err(format!(
                        "bpz error kind {kind:?} has no exception class"
                    ))
                })?;
            Ok(all[class].1.clone_ref(py))
        })
        .collect::<PyResult<_>>()?;
    Ok(Made { all, by_kind })
}

/// Adds the classes, `ERROR_KINDS` (the core's kinds) and `ERROR_CLASSES` (the class
/// raised for each kind) to the module.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    let made = MADE.get_or_try_init(py, || make(py))?;
    for (name, class) in &made.all {
        m.add(*name, class.bind(py))?;
    }
    m.add("ERROR_KINDS", PyTuple::new(py, bpz::Error::KINDS)?)?;
    let by_kind = PyDict::new(py);
    for (kind, class) in bpz::Error::KINDS.iter().zip(&made.by_kind) {
        by_kind.set_item(kind, class.bind(py))?;
    }
    m.add("ERROR_CLASSES", by_kind)?;
    Ok(())
}

pub fn to_py(err: bpz::Error) -> PyErr {
    let message = err.to_string();
    if let bpz::Error::Io { path, source } = &err {
        // OSError(errno, strerror, filename) picks FileNotFoundError,
        // PermissionError, IsADirectoryError... from the errno.
        // The OS error may sit under a message that says which step failed.
        let chain = std::iter::successors(Some(source as &dyn std::error::Error), |e| e.source());
        let errno = chain
            .filter_map(|e| e.downcast_ref::<std::io::Error>()?.raw_os_error())
            .next()
            .unwrap_or(0);
        if errno != 0 {
            return PyOSError::new_err((errno, source.to_string(), path.clone()));
        }
        return PyOSError::new_err(message);
    }
    let kind = err.kind();
    let at = bpz::Error::KINDS
        .iter()
        .position(|k| *k == kind)
        .expect("kind() is one of KINDS");
    Python::attach(|py| {
        let made = MADE
            .get(py)
            .expect("the classes are made when bpz._bpz is imported");
        PyErr::from_type(made.by_kind[at].bind(py).clone(), (message,))
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
