//! The native module `bpz._bpz`: a thin layer over the `bpz` crate — type
//! conversion, GIL release around all I/O and (de)compression, error mapping.
//! The public API is the pure-Python package `bpz`.

use pyo3::prelude::*;

mod archive;
mod buffer;
mod errors;
mod persist;
mod pybuffer;
mod remote;
mod writer;

#[pymodule(gil_used = false)]
fn _bpz(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<archive::Archive>()?;
    m.add_class::<buffer::Buffer>()?;
    m.add_class::<writer::Writer>()?;
    m.add_class::<persist::TempFile>()?;
    m.add_class::<remote::RemoteStats>()?;
    m.add_class::<remote::RemoteDir>()?;
    m.add_function(wrap_pyfunction!(remote::open_remote, m)?)?;
    m.add_function(wrap_pyfunction!(writer::compact, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add(
        "FORMAT_VERSION",
        (bpz::FORMAT_VERSION.major, bpz::FORMAT_VERSION.minor),
    )?;
    m.add(
        "DTYPES",
        bpz::DType::ALL.iter().map(|d| d.name()).collect::<Vec<_>>(),
    )?;
    errors::register(m)?;
    Ok(())
}
