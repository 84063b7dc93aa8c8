"""Helpers shared by the legacy readers: limits, error context, dtype allowlists, lazy imports.

Legacy files come from strangers, so every reader names the file and the key path at
fault and checks sizes against the file's own size before allocating anything.

Expansion budget: a small file must not make a reader build far more than the file holds
(a deflate bomb, a pickle memo reference materialised thousands of times, an HDF5 dataset
without stored data). Each read gets an :class:`ExpansionBudget`: the bytes it may
materialise (arrays, copies, container slots) are

    min(max_bytes, max(MIN_BUDGET_BYTES, ratio * file size))

with ``ratio`` :data:`COMPRESSED_RATIO` for formats that store data deflated (.npz, .h5) and
:data:`PLAIN_RATIO` for the others (.bp, .pkl, .mat), and ``max_bytes`` the machine's physical
memory. Every charge is checked *before* its allocation. To read a trusted file that needs
more: the ``max_ratio=`` / ``max_bytes=`` arguments of the readers, :func:`set_legacy_limits`
(``bpz.set_legacy_limits``), or the environment variables ``BPZ_LEGACY_MAX_RATIO`` /
``BPZ_LEGACY_MAX_BYTES`` (in that precedence).
"""

from __future__ import annotations

import contextlib
import importlib
import os
import re
from collections.abc import Callable, Iterable, Iterator
from types import ModuleType
from typing import Any, Union

import numpy as np

from ..errors import BpzError, CheckpointNotFoundError, FormatError, LimitExceededError, TruncatedError

#: Largest legacy file any reader accepts (the readers hold a whole file's arrays in memory).
MAX_FILE_BYTES = 64 * 2**30
#: Deepest nesting of containers accepted (BrainPy state dicts are 2-4 levels deep).
MAX_NESTING_DEPTH = 256
#: numpy's own limit on array dimensions (numpy 2; numpy 1 stops at 32 and we report that too).
MAX_NDIM = 64

#: Materialised bytes per file byte for data stored deflated (.npz members, gzip HDF5 datasets).
#: Deflate cannot expand more than 1032x (258-byte matches in ~2 bits), so every honest file
#: fits, a zero-initialised state included.
COMPRESSED_RATIO = 1100
#: The same for formats that store arrays as they are (.bp, .pkl, .mat): arrays come out the
#: size they went in; the rest is the readers' copies (<= 2x), container slots and .mat's
#: narrow storage types (uint8 data of a float64 array: 8x).
PLAIN_RATIO = 64
#: Every file may materialise this much, whatever its size (tiny files, small overheads).
MIN_BUDGET_BYTES = 256 * 2**20
#: When the physical memory cannot be read.
FALLBACK_MAX_BYTES = 64 * 2**30
#: Bytes decompressed per read when a stream fills an array.
STREAM_PIECE_BYTES = 4 * 2**20
ENV_MAX_RATIO = "BPZ_LEGACY_MAX_RATIO"
ENV_MAX_BYTES = "BPZ_LEGACY_MAX_BYTES"

#: Process-wide overrides set by :func:`set_legacy_limits` (None: the environment, then the default).
_configured: dict[str, Any] = {"max_ratio": None, "max_bytes": None}

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


def _short(key: Any) -> str:
    """A key for a message, bounded in size and cost (keys may be huge or deeply nested)."""
    if isinstance(key, (str, bytes)):
        return repr(key) if len(key) <= 80 else repr(key[:60]) + f"...({len(key)} long)"
    if isinstance(key, bool) or key is None or isinstance(key, float):
        return repr(key)
    if isinstance(key, int):  # repr of a 5000-digit int raises ValueError
        return repr(key) if key.bit_length() <= 64 else f"<int of {key.bit_length()} bits>"
    size = len(key) if hasattr(key, "__len__") else None
    return f"<{type(key).__name__}" + ("" if size is None else f" of {size}") + ">"


def keypath(path: Iterable[Any]) -> str:
    """Render a key path as a list: keys contain dots, so never join them on '.'."""
    keys = [_short(k) for k in path]
    if len(keys) > 16:
        keys = keys[:4] + [f"...{len(keys) - 12} more..."] + keys[-8:]
    return "[" + ", ".join(keys) + "]"


def _physical_memory() -> int:
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return FALLBACK_MAX_BYTES


def parse_bytes(text: str) -> int:
    """'17179869184', '16G', '512MiB' -> bytes (binary units)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*", text, re.IGNORECASE)
    if not m:
        raise ValueError(text)
    return int(float(m.group(1)) * 1024 ** " kmgt".index(m.group(2).lower() or " "))


def _from_env(var: str, parse: Callable[[str], Any]) -> Any:
    text = os.environ.get(var)
    if text is None or not text.strip():
        return None
    try:
        value = parse(text)
    except ValueError:
        value = -1
    if not value > 0:
        raise BpzError(f"environment variable {var}={text!r} is not a positive number"
                       + (" of bytes (e.g. 17179869184 or 16G)" if var == ENV_MAX_BYTES else ""))
    return value


def set_legacy_limits(max_ratio: float | None = None, max_bytes: int | None = None) -> dict[str, Any]:
    """Sets how much reading one legacy file (BrainPy ``.bp``, ``.npz``, ``.pkl``, ``.h5``,
    ``.mat``) may build in memory, for every later read in this process.

    A read may materialise ``min(max_bytes, max(256 MiB, max_ratio x the file's size))`` bytes;
    past that it raises :class:`~bpz.errors.LimitExceededError` before allocating (a
    decompression bomb, or a file repeating its data). ``max_ratio``: a number > 0 (default
    1100 for ``.npz``/``.h5``, whose data may be deflated, 64 for the others); ``max_bytes``: a
    number of bytes > 0 (default: the machine's physical memory). ``None`` puts a setting back
    to the environment variable (``BPZ_LEGACY_MAX_RATIO`` / ``BPZ_LEGACY_MAX_BYTES``) or the
    default. The ``max_ratio=`` / ``max_bytes=`` arguments of a reader override this for one call.

    Returns the previous settings, so ``old = bpz.set_legacy_limits(max_ratio=5000)`` ...
    ``bpz.set_legacy_limits(**old)`` restores them.
    """
    max_ratio, max_bytes = checked_limits(max_ratio, max_bytes)
    old = dict(_configured)
    _configured.update(max_ratio=max_ratio, max_bytes=max_bytes)
    return old


def checked_limits(max_ratio: Any, max_bytes: Any) -> tuple[float | None, int | None]:
    """``(max_ratio, max_bytes)`` as a positive ratio and a positive whole number of bytes (or None)."""
    if max_ratio is not None:
        if isinstance(max_ratio, bool) or not isinstance(max_ratio, (int, float, np.integer, np.floating)) \
                or not max_ratio > 0:
            raise ValueError(f"max_ratio must be a positive number, got {max_ratio!r}")
        max_ratio = float(max_ratio)
    if max_bytes is not None:
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, (int, float, np.integer, np.floating)) \
                or not 0 < max_bytes < float("inf"):
            raise ValueError(f"max_bytes must be a positive number of bytes, got {max_bytes!r}")
        max_bytes = int(max_bytes)
    return max_ratio, max_bytes


def expansion_limits(compressed: bool, max_ratio: float | None = None,
                     max_bytes: int | None = None) -> tuple[float, int]:
    """(ratio, absolute cap): argument, else :func:`set_legacy_limits`, else environment, else default."""
    max_ratio, max_bytes = checked_limits(max_ratio, max_bytes)
    ratio = next((r for r in (max_ratio, _configured["max_ratio"], _from_env(ENV_MAX_RATIO, float))
                  if r is not None), COMPRESSED_RATIO if compressed else PLAIN_RATIO)
    cap = next((b for b in (max_bytes, _configured["max_bytes"], _from_env(ENV_MAX_BYTES, parse_bytes))
                if b is not None), None)
    return ratio, int(cap) if cap is not None else _physical_memory()


class ExpansionBudget:
    """Bytes one read may still materialise; :meth:`take` is called before each allocation."""

    def __init__(self, name: str, input_bytes: int, *, compressed: bool,
                 max_ratio: float | None = None, max_bytes: int | None = None) -> None:
        self.name, self.input_bytes = name, input_bytes
        self.ratio, self.cap = expansion_limits(compressed, max_ratio, max_bytes)
        self.allowed = int(min(self.cap, max(MIN_BUDGET_BYTES, self.ratio * input_bytes)))
        self.used = 0

    def take(self, nbytes: int, where: str) -> None:
        """Charge ``nbytes``, or raise :class:`LimitExceededError` naming ``where`` and the way out."""
        if nbytes > self.allowed - self.used:
            raise LimitExceededError(
                f"{where}: reading it needs {_human(nbytes)} more in memory ({_human(self.used)} used so "
                f"far), over the expansion budget of {_human(self.allowed)} for this "
                f"{_human(self.input_bytes)} legacy file (the larger of {self.ratio:g} x its size and "
                f"{_human(MIN_BUDGET_BYTES)}, at most {_human(self.cap)}): a decompression bomb or a "
                f"file that repeats its data. If you trust the file, raise the limit with the "
                f"environment variable {ENV_MAX_RATIO} (a ratio) or {ENV_MAX_BYTES} (bytes), call "
                f"bpz.set_legacy_limits(max_ratio=..., max_bytes=...), or pass max_ratio=/max_bytes=")
        self.used += nbytes


def _human(n: float) -> str:
    """'1.5 GiB (1610612736 bytes)': readable, and exact for the user who sets a limit from it."""
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit} ({int(n)} bytes)"
    return f"{int(n)} bytes"


def array_from_stream(read: Callable[[int], bytes], dtype: np.dtype, shape: tuple[int, ...], where: str,
                      fortran: bool = False, budget: ExpansionBudget | None = None) -> np.ndarray:
    """Like :func:`array_from_bytes`, filled piece by piece from ``read(n)`` (a decompressing
    stream), so the data is held once and the array is charged before it exists."""
    shape = checked_shape(shape, where)
    count = int(np.prod(shape, dtype=object)) if shape else 1
    need = count * dtype.itemsize
    if budget is not None:
        budget.take(need * (1 if dtype.isnative else 2), where)
    try:
        flat = np.empty(count, dtype=dtype)
    except (ValueError, MemoryError):
        raise LimitExceededError(f"{where}: out of memory making shape {list(shape)} of {dtype} "
                                 f"({need} bytes)") from None
    out, pos = flat.view(np.uint8), 0
    while pos < need:
        piece = read(min(STREAM_PIECE_BYTES, need - pos))
        if not piece:
            raise TruncatedError(f"{where}: data ends after {pos} of the {need} bytes shape "
                                 f"{list(shape)} of {dtype} needs")
        out[pos:pos + len(piece)] = np.frombuffer(piece, np.uint8)
        pos += len(piece)
    return native(flat.reshape(shape, order="F" if fortran else "C"))


@contextlib.contextmanager
def memory_guard(name: str) -> Iterator[None]:
    """Turn a MemoryError or RecursionError inside a reader into a LimitExceededError naming the file."""
    try:
        yield
    except MemoryError as exc:
        raise LimitExceededError(f"{name}: out of memory while reading this legacy file "
                                 f"({exc or 'allocation failed'}); it needs more memory than "
                                 f"this process can get") from None
    except RecursionError:
        raise LimitExceededError(f"{name}: structure nested too deeply to read") from None


def check_file(path: str | os.PathLike[str]) -> tuple[str, int]:
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
    if name not in ML_DTYPE_NAMES:
        raise FormatError(f"{where}: {name!r} is not an ml_dtypes type")
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
                     fortran: bool = False, budget: ExpansionBudget | None = None) -> np.ndarray:
    """A fresh writable native-order array from exactly ``prod(shape) * itemsize`` bytes."""
    shape = checked_shape(shape, where)
    count = int(np.prod(shape, dtype=object)) if shape else 1
    need = count * dtype.itemsize
    have = memoryview(raw).nbytes
    if have != need:
        raise FormatError(f"{where}: buffer holds {have} bytes but shape {list(shape)} of "
                          f"{dtype} needs {need}")
    if budget is not None:
        budget.take(need * (1 if dtype.isnative else 2), where)  # a swapped array is built twice
    try:
        flat = np.empty(count, dtype=dtype)
        if need:
            flat.view(np.uint8)[:] = np.frombuffer(raw, dtype=np.uint8)
        return native(flat.reshape(shape, order="F" if fortran else "C"))
    except ValueError as exc:
        raise FormatError(f"{where}: cannot make shape {list(shape)} of {dtype}: {exc}") from None
    except MemoryError:
        raise LimitExceededError(f"{where}: out of memory making shape {list(shape)} of {dtype} "
                                 f"({need} bytes)") from None


def checked_shape(shape: Any, where: str) -> tuple[int, ...]:
    """A shape as a tuple of non-negative ints within numpy's limits."""
    if not isinstance(shape, (list, tuple)) or len(shape) > MAX_NDIM:
        raise FormatError(f"{where}: shape {shape!r} is not a list of at most {MAX_NDIM} sizes")
    if not all(type(d) is int and 0 <= d < 2**63 for d in shape):
        raise FormatError(f"{where}: shape {list(shape)!r} holds a size that is not a non-negative int64")
    return tuple(shape)


def fsync_path(path: str | os.PathLike[str], directory: bool = False) -> None:
    """Flush a file's (or a directory's entries') data to disk."""
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike[str], write: Callable[[str], None]) -> str:
    """Run ``write(tmp)``, which must write the whole file by opening ``tmp`` for writing
    (truncating it; never replacing it), then put it in place of ``path``: the one way bpz's
    Python code writes a file, by the core's code that also saves archives
    (:class:`bpz._bpz.TempFile`), so both follow the same rules.

    What is at ``path`` decides: a regular file is replaced keeping its permission bits and
    (where the process may) its owner and group; a symlink is followed and stays; a
    directory, FIFO, socket or device is refused with an ``OSError`` naming it, before
    ``write`` runs. The temporary is flushed to disk before the rename and the directory
    after, so once this returns the new file survives a power cut. If anything fails (or is
    interrupted) the temporary is removed and whatever was at ``path`` is untouched.
    """
    from .. import _bpz

    final = os.fspath(path)
    with _bpz.TempFile(os.fsdecode(final)) as tmp:  # leaving the block without commit() removes the temporary
        write(os.fsencode(tmp.name) if isinstance(final, bytes) else tmp.name)
        tmp.commit(sync=True)
    return final
