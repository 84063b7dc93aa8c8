"""Helpers shared by the legacy readers: limits, error context, dtype allowlists, lazy imports.

Legacy files come from strangers, so every reader names the file and the key path at
fault and checks sizes against the file's own size before allocating anything.
"""

from __future__ import annotations

import importlib
import os
import re
import uuid
from types import ModuleType
from typing import Any, Callable, Iterable, Union

import numpy as np

from ..errors import CheckpointNotFoundError, FormatError, LimitExceededError

#: Largest legacy file any reader accepts (the readers hold a whole file's arrays in memory).
MAX_FILE_BYTES = 64 * 2**30
#: Deepest nesting of containers accepted (BrainPy state dicts are 2-4 levels deep).
MAX_NESTING_DEPTH = 256
#: numpy's own limit on array dimensions (numpy 2; numpy 1 stops at 32 and we report that too).
MAX_NDIM = 64

Source = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview]
KeyPath = tuple  # tuple of dict keys / list indexes from the root

#: Floating/integer types defined by the ``ml_dtypes`` package (what jax and BrainPy save).
ML_DTYPE_NAMES = frozenset({
    "bfloat16", "float8_e3m4", "float8_e4m3", "float8_e4m3fn", "float8_e4m3fnuz",
    "float8_e4m3b11fnuz", "float8_e5m2", "float8_e5m2fnuz", "float8_e8m0fnu",
    "float6_e2m3fn", "float6_e3m2fn", "float4_e2m1fn", "int2", "int4", "uint2", "uint4",
})
#: dtype kinds a legacy reader may return: bool, integers, floats, complex. ml_dtypes types
#: report kind 'V' and are admitted by name instead.
NUMERIC_KINDS = frozenset("biufc")

# numpy's short type strings as pickles and .npy headers carry them ("<f4", "|b1", "<U22").
_TYPESTR = re.compile(r"[<>|=]?(\?|b1|[iu][1248]|f(2|4|8|12|16)|c(8|16|24|32)|[US][1-9]\d{0,8})")


def require(module: str, pip_name: str, purpose: str) -> ModuleType:
    """Import an optional dependency, or say which pip package provides it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(f"{purpose} needs the '{pip_name}' package: pip install {pip_name}") from exc


def source_name(source: Any) -> str:
    """How error messages name a file or an in-memory buffer."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"<{memoryview(source).nbytes} bytes in memory>"
    return os.fspath(source)


def keypath(path: Iterable[Any]) -> str:
    """Render a key path as a list: keys contain dots, so never join them on '.'."""
    return repr(list(path))


def check_file(path: "str | os.PathLike[str]") -> tuple[str, int]:
    """Return (path, size) of an existing regular file within :data:`MAX_FILE_BYTES`."""
    name = os.fspath(path)
    try:
        size = os.stat(name).st_size
    except FileNotFoundError:
        raise CheckpointNotFoundError(f"Checkpoint not found: {name}") from None
    if size > MAX_FILE_BYTES:
        raise LimitExceededError(f"{name}: file is {size} bytes, over the {MAX_FILE_BYTES}-byte limit")
    return name, size


def read_all(source: Source) -> tuple[bytes | memoryview, str]:
    """Whole content of a path or buffer, with the name errors should use."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        if memoryview(source).nbytes > MAX_FILE_BYTES:
            raise LimitExceededError(f"{source_name(source)}: over the {MAX_FILE_BYTES}-byte limit")
        return (source if isinstance(source, bytes) else memoryview(source).cast("B")), source_name(source)
    name, _ = check_file(source)
    with open(name, "rb") as fh:
        return fh.read(), name


def ml_dtype(name: str, where: str) -> np.dtype:
    """numpy dtype of an ``ml_dtypes`` type such as bfloat16 (imported only when a file uses one)."""
    mod = require("ml_dtypes", "ml_dtypes", f"{where}: reading a {name} array")
    return np.dtype(getattr(mod, name))


def plain_typestr(spec: Any, where: str) -> np.dtype:
    """Parse a numpy type string, admitting only bool/int/float/complex/str/bytes.

    ``np.dtype`` also accepts object, structured and comma-separated specs; none of those may
    reach it from a file.
    """
    if not isinstance(spec, str) or not _TYPESTR.fullmatch(spec):
        raise FormatError(f"{where}: dtype {spec!r} is not a plain numeric, bool or text dtype")
    return np.dtype(spec)


def is_plain(dtype: np.dtype, text: bool = False) -> bool:
    """True for simple bool/numeric dtypes (or ml_dtypes types), plus str/bytes if ``text``."""
    if dtype.hasobject or dtype.fields is not None or dtype.subdtype is not None:
        return False
    if dtype.kind in NUMERIC_KINDS or (text and dtype.kind in "US"):
        return True
    return dtype.kind == "V" and dtype.type.__module__.startswith("ml_dtypes")


def native(arr: np.ndarray) -> np.ndarray:
    """Same values in the machine's byte order (callers expect native arrays)."""
    return arr if arr.dtype.isnative else arr.astype(arr.dtype.newbyteorder("="))


def array_from_bytes(raw: Any, dtype: np.dtype, shape: tuple[int, ...], where: str,
                     fortran: bool = False) -> np.ndarray:
    """A fresh writable native-order array from exactly ``prod(shape) * itemsize`` bytes."""
    shape = checked_shape(shape, where)
    count = int(np.prod(shape, dtype=object)) if shape else 1
    need = count * dtype.itemsize
    have = memoryview(raw).nbytes
    if have != need:
        raise FormatError(f"{where}: buffer holds {have} bytes but shape {list(shape)} of "
                          f"{dtype} needs {need}")
    try:
        flat = np.empty(count, dtype=dtype)
        if need:
            flat.view(np.uint8)[:] = np.frombuffer(raw, dtype=np.uint8)
        return native(flat.reshape(shape, order="F" if fortran else "C"))
    except (ValueError, MemoryError) as exc:
        raise FormatError(f"{where}: cannot make shape {list(shape)} of {dtype}: {exc}") from None


def checked_shape(shape: Any, where: str) -> tuple[int, ...]:
    """A shape as a tuple of non-negative ints within numpy's limits."""
    if not isinstance(shape, (list, tuple)) or len(shape) > MAX_NDIM:
        raise FormatError(f"{where}: shape {shape!r} is not a list of at most {MAX_NDIM} sizes")
    if not all(type(d) is int and 0 <= d < 2**63 for d in shape):
        raise FormatError(f"{where}: shape {list(shape)!r} holds a size that is not a non-negative int64")
    return tuple(shape)


def atomic_write(path: "str | os.PathLike[str]", write: Callable[[str], None]) -> str:
    """Run ``write(tmp)`` on a sibling temporary name, then rename it onto ``path``.

    A failed save never leaves a half-written file under the final name.
    """
    final = os.fspath(path)
    tmp = f"{final}.tmp-{uuid.uuid4().hex}"
    try:
        write(tmp)
        os.replace(tmp, final)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return final
