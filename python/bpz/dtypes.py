"""Mapping between NumPy dtypes and bpz dtype names (the safetensors names)."""

from __future__ import annotations

import sys

import numpy as np

__all__ = ["to_bpz", "to_numpy", "storage", "BPZ_DTYPES"]

_NATIVE = {
    "bool": "BOOL",
    "uint8": "U8",
    "uint16": "U16",
    "uint32": "U32",
    "uint64": "U64",
    "int8": "I8",
    "int16": "I16",
    "int32": "I32",
    "int64": "I64",
    "float16": "F16",
    "float32": "F32",
    "float64": "F64",
    "complex64": "C64",
    "complex128": "C128",
}
# ml_dtypes names; ml_dtypes is imported only when one of these is met.
_ML = {
    "bfloat16": "BF16",
    "float8_e4m3fn": "F8_E4M3",
    "float8_e5m2": "F8_E5M2",
    "float8_e4m3fnuz": "F8_E4M3FNUZ",
    "float8_e5m2fnuz": "F8_E5M2FNUZ",
    "float8_e8m0fnu": "F8_E8M0",
}
_TO_NUMPY_NAME = {v: k for k, v in {**_NATIVE, **_ML}.items()}
BPZ_DTYPES = tuple(_TO_NUMPY_NAME)
_cache: dict[str, np.dtype] = {}


_bpz_names: dict[np.dtype, str | None] = {}


def to_bpz(dtype: np.dtype) -> str | None:
    """The bpz name of a NumPy dtype, or None if bpz cannot store it."""
    try:
        return _bpz_names[dtype]
    except (KeyError, TypeError):
        pass
    name = _to_bpz(dtype)
    try:
        _bpz_names[dtype] = name  # dtype.name is a slow property: cache per dtype
    except TypeError:
        pass
    return name


_storage: dict[np.dtype, tuple[str | None, bool]] = {}
#: The bpz names of the dtypes met so far whose bytes are stored as they are
#: (supported and little-endian), filled by :func:`storage`: one look-up per array.
PLAIN: dict[np.dtype, str] = {}


def storage(dtype: np.dtype) -> tuple[str | None, bool]:
    """How arrays of ``dtype`` are stored: the bpz name (None if bpz can't
    store them) and whether their bytes must be swapped to little-endian.
    Cached per dtype (a leaf of a pytree costs one dict look-up)."""
    try:
        return _storage[dtype]
    except (KeyError, TypeError):
        pass
    order = dtype.byteorder
    plan = (to_bpz(dtype), order == ">" or (order == "=" and sys.byteorder == "big"))
    try:
        _storage[dtype] = plan
        if plan[0] is not None and not plan[1]:
            PLAIN[dtype] = plan[0]
    except TypeError:
        pass
    return plan


def _to_bpz(dtype: np.dtype) -> str | None:
    if dtype.fields is not None or dtype.subdtype is not None:
        return None
    if dtype.name in _ML:  # ml_dtypes' types, known by name (NumPy sees "void" kinds)
        return _ML[dtype.name] if dtype.itemsize == (2 if dtype.name == "bfloat16" else 1) else None
    if dtype.kind in "OSUVMm":
        return None
    return _NATIVE.get(dtype.name)


def to_numpy(name: str) -> np.dtype:
    """The (little-endian) NumPy dtype of a bpz dtype name."""
    dt = _cache.get(name)
    if dt is None:
        np_name = _TO_NUMPY_NAME.get(name)
        if np_name is None:
            raise ValueError(f"unknown bpz dtype {name!r}")
        if name in _ML.values():
            try:
                import ml_dtypes
            except ImportError as e:  # pragma: no cover - ml_dtypes is a dependency
                raise ImportError(f"reading {name} tensors needs the ml_dtypes package (pip install ml_dtypes)") from e
            dt = np.dtype(getattr(ml_dtypes, np_name))
        else:
            dt = np.dtype(np_name).newbyteorder("<")
        _cache[name] = dt
    return dt
