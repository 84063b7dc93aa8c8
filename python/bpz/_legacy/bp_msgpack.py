"""Read and write BrainPy's legacy ``.bp`` checkpoints (the flax msgpack layout).

Why: ``save_pytree`` in BrainPy 2.3-2.9 wrote one bare msgpack document (no magic, version,
index or checksum), and users have years of such files. bpz must read them all, safely, and
write files BrainPy 2.9 still reads (``bpz convert x.bpz y.bp``, benchmarks).

Layout: maps with str keys (tuples, lists and namedtuples were saved as maps keyed "0", "1",
... or by field name, and come back as dicts, as in BrainPy); ext type 1 = ndarray, ext 3 =
numpy scalar, both a msgpack ``[shape, dtype name, C-order bytes]``; ext 2 = Python complex
``[real, imag]`` (2.7+; 2.3-2.6 wrote complex as an ext-3 complex128). Arrays over 2**30 bytes
are maps ``{"__msgpack_chunked_array__": True, "shape": {...}, "chunks": {"0": ext1, ...}}``.

Safety: files over :data:`MAX_FILE_BYTES` are refused; the unpacker's length limits are the
file size, so no declared length can allocate more than the file holds; every array's bytes
must equal shape x itemsize before anything is allocated; dtype names come from an allowlist
(never ``np.dtype`` on arbitrary text); nesting stops at :data:`MAX_NESTING_DEPTH`; every ext
payload, array and map/array slot is charged, as the unpacker makes it, to the file's
expansion budget (:class:`~._common.ExpansionBudget`, plain-format ratio); chunked arrays are
assembled in one preallocated array, never concatenated.

Deliberate differences from BrainPy's ``load_pytree``:

* arrays are writable (BrainPy returns read-only views, except chunk-rebuilt arrays);
* ``str<bits>``/``bytes<bits>`` arrays are read (BrainPy writes them but cannot read them back);
  ``write_bp`` refuses them, so it never writes a file BrainPy cannot load;
* byte order: the file records none. bpz reads little-endian, which every BrainPy on x86/ARM
  wrote, and returns native arrays. BrainPy also saved big-endian arrays' raw bytes under the
  plain name (``>i4`` as "int32"), so those files hold swapped values that no reader can tell
  apart; ``write_bp`` stores such arrays little-endian, so they reload correctly everywhere;
* unknown ext types (msgpack timestamps included) and non-str map keys are refused (BrainPy
  returns ``msgpack.ExtType``/``Timestamp`` objects; its writer never produces either);
* every failure is a :class:`~bpz.errors.FormatError` (or ``TruncatedError`` /
  ``LimitExceededError``) naming the file and key path, instead of ``InvalidCheckpointPath``
  with the reason in the path slot (2.9) or raw msgpack errors (2.3-2.6).
"""

from __future__ import annotations

import io
import os
import re
from typing import Any, BinaryIO

import numpy as np

from ..errors import FormatError, LimitExceededError, TruncatedError
from ._common import (  # MAX_FILE_BYTES and MAX_NESTING_DEPTH are this module's limits too
    MAX_FILE_BYTES,
    MAX_NDIM,
    MAX_NESTING_DEPTH,
    ML_DTYPE_NAMES,
    ExpansionBudget,
    KeyPath,
    Source,
    array_from_bytes,
    atomic_write,
    check_file,
    checked_shape,
    is_plain,
    keypath,
    memory_guard,
    ml_dtype,
    native,
    require,
    source_name,
)

__all__ = ["read_bp", "write_bp", "is_bp_file", "MAX_CHUNK_BYTES", "MAX_FILE_BYTES", "MAX_NESTING_DEPTH"]

#: flax's MAX_CHUNK_SIZE: arrays over this many bytes are split (msgpack lengths are 32-bit).
MAX_CHUNK_BYTES = 2**30
#: What the unpacker's objects cost beyond their payload bytes, charged to the budget: an ext
#: payload object, a list slot, a dict entry (CPython's sizes, rounded up).
EXT_OBJECT_BYTES, LIST_SLOT_BYTES, MAP_ENTRY_BYTES, CONTAINER_BYTES = 96, 8, 48, 64
#: Bytes the unpacker reads at a time; it keeps only unfinished objects buffered.
READ_SIZE = 16 * 2**20
#: Longest dtype name accepted in an ext payload ("datetime64[100ms]" is 17).
MAX_DTYPE_NAME = 32

EXT_NDARRAY, EXT_COMPLEX, EXT_NPSCALAR = 1, 2, 3
CHUNK_MARKER = "__msgpack_chunked_array__"

_NUMERIC_NAME = re.compile(r"bool|u?int(8|16|32|64)|float(16|32|64|128)|complex(64|128|256)")
_TIME_NAME = re.compile(r"(datetime|timedelta)64(\[\d{0,4}(Y|M|W|D|h|m|s|ms|us|ns|ps|fs|as)\])?")
_TEXT_NAME = re.compile(r"(str|bytes)([1-9]\d{0,9})")


class _Ext:
    """An ext payload kept undecoded until the walk knows its key path."""

    __slots__ = ("code", "data")

    def __init__(self, code: int, data: bytes) -> None:
        self.code, self.data = code, data


def _dtype_from_name(name: Any, where: str) -> np.dtype:
    """Little-endian dtype for a ``numpy.dtype.name``; anything but plain types is refused."""
    if isinstance(name, bytes):
        name = name.decode("ascii", "replace")
    if not isinstance(name, str):
        raise FormatError(f"{where}: dtype name {name!r} is not a string")
    if name in ML_DTYPE_NAMES:
        return ml_dtype(name, where)
    if _NUMERIC_NAME.fullmatch(name) or _TIME_NAME.fullmatch(name):
        try:
            return np.dtype(name).newbyteorder("<")
        except (TypeError, ValueError):
            raise FormatError(f"{where}: dtype {name!r} does not exist on this platform") from None
    text = _TEXT_NAME.fullmatch(name)
    if text:  # dtype.name counts bits: str96 is <U3, bytes16 is S2
        bits, per_char = int(text.group(2)), 32 if text.group(1) == "str" else 8
        if bits % per_char == 0:
            return np.dtype(f"<U{bits // 32}" if per_char == 32 else f"S{bits // 8}")
    raise FormatError(f"{where}: dtype {name!r} is not a plain numeric, bool or text dtype")


def _bin_span(data: bytes, off: int, where: str) -> tuple[int, int]:
    """Start and length of the bin (or legacy raw str) object at ``off``."""
    if off >= len(data):
        raise TruncatedError(f"{where}: array payload ends before its data")
    tag = data[off]
    if 0xA0 <= tag <= 0xBF:
        return off + 1, tag & 0x1F
    widths = {0xC4: 1, 0xC5: 2, 0xC6: 4, 0xD9: 1, 0xDA: 2, 0xDB: 4}
    if tag not in widths:
        raise FormatError(f"{where}: array payload's third item is not binary data")
    w = widths[tag]
    if off + 1 + w > len(data):
        raise TruncatedError(f"{where}: array payload ends inside its data length")
    return off + 1 + w, int.from_bytes(data[off + 1:off + 1 + w], "big")


class _Charged:
    """The unpacker's hooks: each ext payload, list and map is charged to the budget as it is made.

    msgpack builds a container before its hook sees it, so at most one container's slots
    (bounded by the file size) are allocated past the budget before the read stops.
    """

    def __init__(self, budget: ExpansionBudget) -> None:
        self.budget = budget

    def ext(self, code: int, data: bytes) -> _Ext:
        self.budget.take(len(data) + EXT_OBJECT_BYTES, f"{self.budget.name}: an ext payload")
        return _Ext(code, data)

    def list(self, items: list) -> list:
        self.budget.take(CONTAINER_BYTES + LIST_SLOT_BYTES * len(items), f"{self.budget.name}: a msgpack array")
        return items

    def map(self, items: dict) -> dict:
        self.budget.take(CONTAINER_BYTES + MAP_ENTRY_BYTES * len(items), f"{self.budget.name}: a msgpack map")
        return items


class _Reader:
    """Turns an unpacked tree (with :class:`_Ext` leaves) into BrainPy's pytree, checking as it goes."""

    def __init__(self, msgpack: Any, name: str, budget: ExpansionBudget) -> None:
        self.msgpack, self.name, self.budget = msgpack, name, budget

    def where(self, path: KeyPath) -> str:
        return f"{self.name}: at key path {keypath(path)}"

    def restore(self, node: Any, path: KeyPath = ()) -> Any:
        if len(path) > MAX_NESTING_DEPTH:
            raise LimitExceededError(f"{self.where(path[:8])}...: nesting deeper than {MAX_NESTING_DEPTH}")
        if isinstance(node, _Ext):
            return self.ext(node, path)
        if isinstance(node, self.msgpack.Timestamp):  # ext -1, decoded by msgpack itself
            raise FormatError(f"{self.where(path)}: unknown msgpack ext type -1 (timestamp)")
        if isinstance(node, dict):
            if CHUNK_MARKER in node:
                return self.unchunk(node, path)
            for key, value in node.items():  # in place, so ext payloads are freed as we go
                if not isinstance(key, str):
                    raise FormatError(f"{self.where(path)}: map key {key!r} is not a string")
                node[key] = self.restore(value, path + (key,))
            return node
        if isinstance(node, list):
            for i, value in enumerate(node):
                node[i] = self.restore(value, path + (i,))
        return node

    def ext(self, ext: _Ext, path: KeyPath) -> Any:
        if ext.code == EXT_NDARRAY:
            return self.array(ext.data, path)
        if ext.code == EXT_NPSCALAR:
            return self.array(ext.data, path)[()]
        if ext.code == EXT_COMPLEX:
            try:
                parts = self.msgpack.unpackb(ext.data, raw=False, ext_hook=self._no_ext)
            except Exception as exc:  # noqa: BLE001 - any msgpack failure means a bad payload
                raise FormatError(f"{self.where(path)}: bad complex payload: {exc}") from None
            if (not isinstance(parts, list) or len(parts) != 2
                    or not all(type(p) in (int, float) for p in parts)):
                raise FormatError(f"{self.where(path)}: complex payload is not [real, imag]")
            return complex(*parts)
        raise FormatError(f"{self.where(path)}: unknown msgpack ext type {ext.code}")

    @staticmethod
    def _no_ext(code: int, data: bytes) -> Any:
        raise ValueError(f"nested ext type {code}")

    def array(self, data: bytes, path: KeyPath) -> np.ndarray:
        """Decode ``[shape, dtype name, bytes]`` into a fresh writable array."""
        dtype, shape, raw = self.parse_array(data, path)
        return array_from_bytes(raw, dtype, shape, self.where(path), budget=self.budget)

    def parse_array(self, data: bytes, path: KeyPath) -> tuple[np.dtype, Any, memoryview]:
        """dtype, shape and data bytes of an array payload, nothing allocated."""
        where = self.where(path)
        # Parse only the small head with msgpack; the data bytes are sliced, never copied twice.
        u = self.msgpack.Unpacker(io.BytesIO(data), read_size=256, max_buffer_size=4096,
                                  max_array_len=MAX_NDIM, max_str_len=MAX_DTYPE_NAME,
                                  max_bin_len=MAX_DTYPE_NAME, max_map_len=0, max_ext_len=0,
                                  raw=False, ext_hook=self._no_ext)
        try:
            if u.read_array_header() != 3:
                raise FormatError(f"{where}: array payload is not [shape, dtype, data]")
            shape, name = u.unpack(), u.unpack()
            start = u.tell()
        except FormatError:
            raise
        except self.msgpack.OutOfData:
            raise TruncatedError(f"{where}: array payload ends early") from None
        except Exception as exc:  # noqa: BLE001
            raise FormatError(f"{where}: bad array payload: {exc}") from None
        dtype = _dtype_from_name(name, where)
        start, length = _bin_span(data, start, where)
        if start + length != len(data):
            raise FormatError(f"{where}: array payload is {len(data)} bytes but declares "
                              f"{length} data bytes at offset {start}")
        return dtype, shape, memoryview(data)[start:]

    def unchunk(self, node: dict, path: KeyPath) -> np.ndarray:
        """Rebuild an array that flax split into 1-D chunks, straight into one new array."""
        where = self.where(path)
        shape, chunks = node.get("shape"), node.get("chunks")
        if not isinstance(shape, dict) or not isinstance(chunks, dict) or not chunks:
            raise FormatError(f"{where}: chunked array lacks its 'shape' or 'chunks' map")
        pieces: list[tuple[np.dtype, memoryview]] = []
        for key, chunk in chunks.items():
            if not isinstance(chunk, _Ext) or chunk.code != EXT_NDARRAY:
                raise FormatError(f"{where}: chunk {key!r} is not an array")
            dtype, dims, raw = self.parse_array(chunk.data, path + ("chunks", key))
            if not isinstance(dims, list) or len(dims) != 1 or (pieces and dtype != pieces[0][0]):
                raise FormatError(f"{where}: chunks are not 1-D arrays of one dtype")
            if type(dims[0]) is not int or dims[0] * dtype.itemsize != raw.nbytes:
                raise FormatError(f"{where}: chunk {key!r} holds {raw.nbytes} bytes, not {dims[0]!r} "
                                  f"elements of {dtype}")
            pieces.append((dtype, raw))
        dims = checked_shape(list(shape.values()), where)
        dtype = pieces[0][0]
        total = sum(raw.nbytes for _, raw in pieces) // dtype.itemsize
        if int(np.prod(dims, dtype=object)) != total:
            raise FormatError(f"{where}: chunks hold {total} elements but shape {list(dims)} needs "
                              f"{int(np.prod(dims, dtype=object))}")
        self.budget.take(total * dtype.itemsize, where)
        try:
            flat = np.empty(total, dtype)
        except MemoryError:
            raise LimitExceededError(f"{where}: out of memory making {total} elements of {dtype}") from None
        out, pos = flat.view(np.uint8), 0
        for _, raw in pieces:
            out[pos:pos + raw.nbytes] = np.frombuffer(raw, np.uint8)
            pos += raw.nbytes
        chunks.clear()  # the payloads are copied: let them go
        return native(flat.reshape(dims))


def read_bp(source: Source, *, max_ratio: float | None = None, max_bytes: int | None = None) -> Any:
    """Load a BrainPy ``.bp`` checkpoint (path or bytes) exactly as ``load_pytree`` returns it.

    Maps come back as dicts with str keys, arrays as writable native-order ndarrays, numpy
    scalars as numpy scalars, complex as ``complex``; see the module doc for what differs.
    ``max_ratio`` / ``max_bytes`` override the expansion budget (see :mod:`._common`).
    """
    msgpack = require("msgpack", "msgpack", "reading BrainPy .bp files")
    if isinstance(source, (bytes, bytearray, memoryview)):
        name, size = source_name(source), memoryview(source).nbytes
        fh: BinaryIO = io.BytesIO(source)
    else:
        name, size = check_file(source)
        fh = open(name, "rb")
    budget = ExpansionBudget(name, size, compressed=False, max_ratio=max_ratio, max_bytes=max_bytes)
    hooks = _Charged(budget)
    with fh, memory_guard(name):
        limit = max(size, 1)
        unpacker = msgpack.Unpacker(
            fh, read_size=min(READ_SIZE, limit), max_buffer_size=limit, max_str_len=limit,
            max_bin_len=limit, max_ext_len=limit, max_array_len=limit, max_map_len=limit,
            raw=False, use_list=True, ext_hook=hooks.ext, list_hook=hooks.list, object_hook=hooks.map)
        try:
            tree = unpacker.unpack()
        except FormatError:
            raise
        except msgpack.OutOfData:
            raise TruncatedError(f"{name}: file ends inside the msgpack document ({size} bytes)") from None
        except msgpack.StackError:
            raise LimitExceededError(f"{name}: msgpack nesting is too deep") from None
        except (ValueError, TypeError, UnicodeDecodeError, msgpack.UnpackException) as exc:
            if "exceeds max" in str(exc):  # a length no file of this size can hold
                raise TruncatedError(f"{name}: declares more than its {size} bytes hold ({exc})") from None
            raise FormatError(f"{name}: not a valid BrainPy .bp (msgpack) file: {exc}") from None
        if unpacker.tell() != size:
            raise FormatError(f"{name}: {size - unpacker.tell()} trailing bytes after the msgpack document")
        return _Reader(msgpack, name, budget).restore(tree)


def is_bp_file(source: str | os.PathLike[str] | bytes) -> bool:
    """Cheap sniff: does this file (or these first bytes) start like a BrainPy ``.bp`` file?

    True for a msgpack map whose first key is a string (or an empty map), and for a top-level
    ext 1/2/3 (a bare array, complex or numpy scalar). Other bare leaves (an int, a str) are
    valid ``.bp`` files too, but too ambiguous to claim.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        head = bytes(source[:16])
    else:
        try:
            with open(source, "rb") as fh:
                head = fh.read(16)
        except OSError:
            return False
    if not head:
        return False
    tag = head[0]
    key_at = {0xDE: 3, 0xDF: 5}.get(tag, 1 if 0x81 <= tag <= 0x8F else None)
    if tag == 0x80:
        return len(head) == 1
    if key_at is not None:
        return len(head) > key_at and (0xA0 <= head[key_at] <= 0xBF or head[key_at] in (0xD9, 0xDA, 0xDB))
    type_at = {0xC7: 2, 0xC8: 3, 0xC9: 5}.get(tag, 1 if 0xD4 <= tag <= 0xD8 else None)
    return type_at is not None and len(head) > type_at and head[type_at] in (1, 2, 3)


def _ext_header(length: int, code: int) -> bytes:
    """msgpack ext framing, choosing fixext/ext8/16/32 exactly as msgpack-python does."""
    fixed = {1: 0xD4, 2: 0xD5, 4: 0xD6, 8: 0xD7, 16: 0xD8}
    if length in fixed:
        return bytes((fixed[length], code))
    if length <= 0xFF:
        return bytes((0xC7, length, code))
    if length <= 0xFFFF:
        return b"\xc8" + length.to_bytes(2, "big") + bytes((code,))
    if length <= 0xFFFFFFFF:
        return b"\xc9" + length.to_bytes(4, "big") + bytes((code,))
    raise ValueError(f"ext payload of {length} bytes exceeds msgpack's 32-bit length")


def _map_header(n: int) -> bytes:
    if n < 16:
        return bytes((0x80 | n,))
    return b"\xde" + n.to_bytes(2, "big") if n <= 0xFFFF else b"\xdf" + n.to_bytes(4, "big")


def _plain(x: Any) -> Any:
    """A bool/str/float subclass instance (an enum, say) as its plain base value."""
    return next(base(x) for base in (bool, float, str) if isinstance(x, base))


def _bin_header(length: int) -> bytes:
    if length <= 0xFF:
        return bytes((0xC4, length))
    if length <= 0xFFFF:
        return b"\xc5" + length.to_bytes(2, "big")
    return b"\xc6" + length.to_bytes(4, "big")


class _Writer:
    """Streams a pytree as flax ``msgpack_serialize`` would, array bytes written without copies."""

    def __init__(self, fh: BinaryIO, msgpack: Any, max_chunk_bytes: int) -> None:
        self.fh, self.max_chunk = fh, max_chunk_bytes
        self.pack = msgpack.Packer(use_bin_type=True).pack

    def value(self, x: Any, path: KeyPath) -> None:
        if len(path) > MAX_NESTING_DEPTH:
            raise ValueError(f"nesting deeper than {MAX_NESTING_DEPTH} at key path {keypath(path[:8])}...")
        write = self.fh.write
        if isinstance(x, np.generic):
            if x.dtype.kind in "US":  # np.str_ / np.bytes_: BrainPy cannot read text arrays
                write(self.pack(x.item()))  # as str / bytes
            else:
                self.array(np.asarray(x), path, EXT_NPSCALAR)
        elif isinstance(x, np.ndarray):
            self.array(x, path, EXT_NDARRAY)
        elif x is None or isinstance(x, (bool, str, float)):
            write(self.pack(x if x is None or type(x) in (bool, str, float) else _plain(x)))
        elif isinstance(x, int):
            if not -2**63 <= x < 2**64:
                raise OverflowError(f"integer {x} at key path {keypath(path)} does not fit msgpack's 64 bits")
            write(self.pack(int(x)))
        elif isinstance(x, (bytes, bytearray, memoryview)):
            write(self.pack(bytes(x)))
        elif isinstance(x, complex):
            payload = self.pack([x.real, x.imag])
            write(_ext_header(len(payload), EXT_COMPLEX) + payload)
        elif isinstance(x, dict):
            items = [(str(k), v) for k, v in x.items()]
            keys = [k for k, _ in items]
            if len(set(keys)) != len(keys):
                clashes = {k: [o for o in x if str(o) == k] for k in keys if keys.count(k) > 1}
                raise ValueError(f"Dict keys do not have a unique string representation at key path "
                                 f"{keypath(path)}. Collisions: {clashes}")
            self.map(items, path)
        elif isinstance(x, (tuple, list)):
            names = getattr(x, "_fields", None)  # namedtuple -> field names, else "0", "1", ...
            self.map(list(zip(names or map(str, range(len(x))), x, strict=True)), path)
        elif hasattr(x, "__array__") and hasattr(x, "dtype") and hasattr(x, "shape"):
            self.array(np.asarray(x), path, EXT_NDARRAY)  # jax.Array and friends
        else:
            raise TypeError(f"can not serialize {type(x).__name__!r} object at key path {keypath(path)}")

    def map(self, items: list[tuple[str, Any]], path: KeyPath) -> None:
        self.fh.write(_map_header(len(items)))
        for key, value in items:
            self.fh.write(self.pack(key))
            self.value(value, path + (key,))

    def array(self, arr: np.ndarray, path: KeyPath, code: int) -> None:
        dtype = arr.dtype
        if dtype.kind in "US":
            raise ValueError(f"{dtype} array at key path {keypath(path)}: BrainPy cannot read back "
                             f"unicode/bytes arrays; store them as str leaves instead")
        if not (is_plain(dtype) or dtype.kind in "Mm"):
            raise ValueError(f"Object and structured dtypes not supported for serialization of "
                             f"ndarrays (key path {keypath(path)}: {dtype})")
        if dtype.byteorder == ">" or (dtype.byteorder == "=" and not np.little_endian):
            arr = arr.astype(dtype.newbyteorder("<"))  # BrainPy reads the bytes as little-endian
        arr = arr if arr.flags.c_contiguous else arr.copy(order="C")  # ascontiguousarray makes 0-d 1-d
        if code == EXT_NDARRAY and arr.nbytes > self.max_chunk:
            flat = arr.reshape(-1)
            step = max(1, self.max_chunk // arr.itemsize)
            self.fh.write(b"\x83" + self.pack(CHUNK_MARKER) + self.pack(True) + self.pack("shape"))
            self.map([(str(i), d) for i, d in enumerate(arr.shape)], path + ("shape",))
            self.fh.write(self.pack("chunks"))
            starts = range(0, flat.size, step)
            self.fh.write(_map_header(len(starts)))
            for i, start in enumerate(starts):
                self.fh.write(self.pack(str(i)))
                self.ext_array(flat[start:start + step], code)
            return
        self.ext_array(arr, code)

    def ext_array(self, arr: np.ndarray, code: int) -> None:
        head = b"\x93" + self.pack(list(arr.shape)) + self.pack(arr.dtype.name) + _bin_header(arr.nbytes)
        self.fh.write(_ext_header(len(head) + arr.nbytes, code) + head)
        if arr.nbytes:
            self.fh.write(arr.reshape(-1).view(np.uint8).data)


def write_bp(path: str | os.PathLike[str], pytree: Any, *, max_chunk_bytes: int = MAX_CHUNK_BYTES) -> str:
    """Write ``pytree`` as a ``.bp`` file BrainPy 2.3-2.9 ``load_pytree`` reads; return the path.

    Byte-identical to BrainPy 2.9's ``save_pytree`` for the same tree (maps in insertion order,
    Python complex as ext 2). Written to a temporary name and renamed, so a failure never leaves
    a half-written file. ``max_chunk_bytes`` is flax's chunking threshold (tests lower it).
    """
    msgpack = require("msgpack", "msgpack", "writing BrainPy .bp files")
    if max_chunk_bytes < 1:
        raise ValueError("max_chunk_bytes must be positive")

    def write(tmp: str) -> None:
        with open(tmp, "wb", buffering=2**20) as fh:
            _Writer(fh, msgpack, max_chunk_bytes).value(pytree, ())

    return atomic_write(path, write)
