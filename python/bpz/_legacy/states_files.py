"""Read and write the legacy ``save_states`` files (BrainPy 2.1.12-2.4.5).

Why: ``save_states`` wrote a flat ``{"<node>.<attr>": array}`` map in one of four formats,
picked by suffix (as :func:`write_states` does; :func:`read_states` goes by the content). A
Variable shared by several nodes is stored once, under its first name; each later name (the
alias) goes into two parallel lists, ``duplicate_keys`` (aliases) and ``duplicate_targets`` (the
stored names). Layouts, all reproduced by :func:`write_states`:

* ``.h5``/``.hdf5``: one root dataset per name; the two lists as scalar string datasets joined
  with ``+``.
* ``.npz``: one ``<name>.npy`` member per name (``np.savez``, or ``savez_compressed`` with
  ``compressed=True``); the lists as 1-D unicode arrays.
* ``.pkl``/``.pickle``: a pickled dict of arrays; the lists as 1-D unicode arrays.
* ``.mat``: ``scipy.io.savemat`` of every array with a leading axis of length 1; the lists as
  ``(1, n)`` string arrays.

Where bpz differs from BrainPy's ``load_states``, on purpose:

* ``.pickle`` files are read (BrainPy saved but refused to load them), through the restricted
  unpickler of :mod:`.safe_pickle`.
* ``.mat`` bool arrays come back as bool: scipy saves them as uint8 flagged "logical", and bpz
  reads that flag (BrainPy returned uint8 and then refused to assign it).
* ``.mat`` cannot tell a 0-d value from a shape ``(1,)`` one, nor keep float16 (scipy stores it
  as float64): pass ``like={name: reference}`` (anything with ``.shape``/``.dtype``, such as
  the model's Variables) and such values are reshaped / cast back when that loses nothing.
  Without it they come back as BrainPy returned them: shape ``(1,)`` and float64.
* HDF5 names containing ``/`` (which BrainPy's writer turned into groups) are read back whole.
* Files from 2.1.5-2.1.11 stored npz/mat names with ``.`` replaced by ``--``; keys are returned
  as stored.

Safety: ``.npz``, ``.pkl`` and ``.mat`` are parsed in Python with every length checked against
the file (``.mat`` by a small parser of the uncompressed subset savemat writes, because
``scipy.io.loadmat`` crashes on some corrupt files). ``.h5`` goes through h5py and libhdf5,
which is not hardened against malicious files: fuzzing corrupt copies of real files hung or
crashed it in about 0.2% of cases. So bpz reads ``.h5`` in a child process with a time limit
(:data:`H5_TIMEOUT`): a crash or hang of libhdf5 becomes a :class:`FormatError`, never the
caller's crash. It also refuses links, external and virtual storage and bounds declared sizes.

Memory: every read has an expansion budget (:class:`~._common.ExpansionBudget`; the
compressed-format ratio for ``.npz`` and ``.h5``, the plain one for ``.pkl`` and ``.mat``).
Each ``.npz`` member is charged its declared size before it is opened and streamed into its
array (deflate output bounded per read), so a bomb is refused before memory is allocated;
members must be stored or deflated (what numpy writes), not overlap and hold exactly what
their ``.npy`` header declares. The HDF5 child charges each dataset before reading it and runs
under an address-space limit (RLIMIT_AS) of its budget plus headroom, which also bounds what
libhdf5's filters allocate. ``.mat`` data is stored uncompressed (compressed elements are
refused unread). A MemoryError anywhere becomes a LimitExceededError naming the file.
"""

from __future__ import annotations

import os
import pickle
import struct
import zipfile
import zlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np

from ..errors import FormatError, LimitExceededError, TruncatedError
from ._common import (
    MAX_NDIM,
    MAX_NESTING_DEPTH,
    ExpansionBudget,
    array_from_bytes,
    array_from_stream,
    atomic_write,
    check_file,
    is_plain,
    memory_guard,
    native,
    require,
)
from .safe_pickle import load_pickle

__all__ = ["read_states", "write_states", "expand_aliases", "content_format", "SUFFIXES"]

DUPLICATE_KEY = "duplicate_keys"
DUPLICATE_TARGET = "duplicate_targets"
#: Suffix -> format. BrainPy saved all five and loaded all but ``.pickle``.
SUFFIXES = {".h5": "h5", ".hdf5": "h5", ".npz": "npz", ".pkl": "pkl", ".pickle": "pkl", ".mat": "mat"}
#: Charged per ``.npz`` member / HDF5 dataset besides its data: the ZipInfo or h5py objects,
#: the array object and its dict entry (so a file of many empty members is bounded too).
ENTRY_OVERHEAD_BYTES = 1024
#: Bytes of a zip local file header before the name (a lower bound of a member's extent).
_ZIP_LOCAL_HEADER = 30
#: MATLAB array classes save_states produced (double ... uint64) -> numpy type.
_MAT_CLASS = {6: "f8", 7: "f4", 8: "i1", 9: "u1", 10: "i2", 11: "u2", 12: "i4", 13: "u4", 14: "i8", 15: "u8"}
#: MATLAB data element types that hold numbers -> numpy type (byte order from the file).
_MAT_STORAGE = {1: "i1", 2: "u1", 3: "i2", 4: "u2", 5: "i4", 6: "u4", 7: "f4", 9: "f8", 12: "i8", 13: "u8"}

Flat = dict[str, np.ndarray]


def _writer_format(path: str) -> str:
    """The format a new file gets: its suffix decides, as in BrainPy."""
    fmt = SUFFIXES.get(os.path.splitext(path)[1].lower())
    if fmt is None:
        raise ValueError(f"Unknown file format: {path}. Legacy states files end with one of {sorted(SUFFIXES)}")
    return fmt


def content_format(path: str) -> str | None:
    """The format of an existing file: its content decides (``bpz.formats.sniff``), whatever its
    name says; ``"h5"``, ``"npz"``, ``"pkl"``, ``"mat"``, or None. A pickle of protocol 0 or 1 has
    no signature: such a file is taken for one only when it is named ``.pkl``/``.pickle`` (the
    restricted unpickler refuses anything else it might be)."""
    from ..formats import sniff  # not at import time: bpz.formats imports this package

    found = sniff(path)
    if found in _READERS:
        return found
    if found is None and SUFFIXES.get(os.path.splitext(path)[1].lower()) == "pkl":
        return "pkl"
    return None


Limits = dict  # {"max_ratio": ..., "max_bytes": ...} passed through to ExpansionBudget


def _value(arr: Any, where: str) -> np.ndarray:
    """Check one stored variable: a plain bool/numeric array."""
    if isinstance(arr, np.generic):
        arr = np.array(arr)
    if not isinstance(arr, np.ndarray) or not is_plain(arr.dtype):
        kind = arr.dtype if isinstance(arr, np.ndarray) else type(arr).__name__
        raise FormatError(f"{where}: stored value is {kind}, not a bool or numeric array")
    return native(arr)


def _names(value: Any, where: str, budget: ExpansionBudget | None = None) -> list[str]:
    """A duplicate list stored as a 1-D str/bytes array."""
    if not isinstance(value, np.ndarray) or value.ndim != 1 or value.dtype.kind not in "US":
        raise FormatError(f"{where}: expected a 1-D array of names")
    if budget is not None:  # each name becomes a str object (a list slot, a header, its text)
        budget.take(value.size * (64 + value.dtype.itemsize), where)
    try:
        return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in value.tolist()]
    except UnicodeDecodeError:
        raise FormatError(f"{where}: names are not UTF-8") from None


#: Seconds an isolated HDF5 read may take before it is treated as a hang.
H5_TIMEOUT = 300.0


def _read_h5(name: str, size: int, limits: Limits | None = None) -> tuple[Flat, dict[str, list[str]]]:
    """Reads an HDF5 states file in a child process (libhdf5 can crash on hostile files)."""
    import json
    import subprocess
    import sys
    import tempfile

    require("h5py", "h5py", f"{name}: reading an HDF5 states file")
    budget = ExpansionBudget(name, size, compressed=True, **(limits or {}))
    with tempfile.TemporaryDirectory(prefix="bpz-h5-") as tmp, memory_guard(name):
        out = os.path.join(tmp, "result.npz")
        code = ("import sys; from bpz._legacy.states_files import _h5_child; "
                "_h5_child(sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4]), int(sys.argv[5]))")
        try:  # the limits travel as arguments: set_legacy_limits() and keywords are not in the environment
            proc = subprocess.run([sys.executable, "-c", code, name, str(size), out, repr(budget.ratio),
                                   str(budget.cap)], capture_output=True, timeout=H5_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise FormatError(f"{name}: reading the HDF5 file did not finish in {H5_TIMEOUT:.0f} s "
                              "(libhdf5 hangs on some corrupt files)") from None
        if proc.returncode != 0 or not os.path.exists(out):
            how = f"signal {-proc.returncode}" if proc.returncode < 0 else f"exit status {proc.returncode}"
            detail = proc.stderr.decode(errors="replace").strip().splitlines()[-1:] or [""]
            raise FormatError(f"{name}: the HDF5 library failed on this file ({how}): it is corrupt "
                              f"or not an HDF5 states file {detail[0]}".rstrip())
        with np.load(out, allow_pickle=False) as z:
            meta = json.loads(bytes(z["meta"]).decode())
            if "error" in meta:
                cls = {"LimitExceededError": LimitExceededError}.get(meta["class"], FormatError)
                raise cls(meta["error"])
            flat = {key: z[f"a{i}"] for i, key in enumerate(meta["names"])}
        return flat, meta["dups"]


#: Address space the HDF5 child may use beyond what it has after importing h5py, on top of
#: twice its budget (its arrays, plus libhdf5's chunk and filter buffers).
H5_HEADROOM_BYTES = 512 * 2**20


def _limit_address_space(extra: int) -> None:
    """RLIMIT_AS = this process's current size + ``extra``: a bound on what libhdf5 allocates
    that bpz's own accounting cannot see (gzip filter buffers, chunk caches). Linux only."""
    import resource

    try:
        with open("/proc/self/statm") as fh:
            current = int(fh.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return
    limit = current + extra
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    if soft == resource.RLIM_INFINITY or limit < soft:
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def _h5_child(name: str, size: int, out: str, ratio: float | None = None, cap: int | None = None) -> None:
    """In the child: read, then hand the arrays back through an .npz (no pickle)."""
    import json

    budget = ExpansionBudget(name, size, compressed=True, max_ratio=ratio, max_bytes=cap)
    try:
        require("h5py", "h5py", f"{name}: reading an HDF5 states file")
        _limit_address_space(2 * budget.allowed + H5_HEADROOM_BYTES)
        with memory_guard(name):
            flat, dups = _read_h5_here(name, budget)
        meta = {"names": list(flat), "dups": dups}
        arrays: dict[str, Any] = {f"a{i}": v for i, v in enumerate(flat.values())}
    except FormatError as exc:
        meta, arrays = {"error": str(exc), "class": type(exc).__name__}, {}
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    np.savez(out, **arrays)


def _read_h5_here(name: str, budget: ExpansionBudget) -> tuple[Flat, dict[str, list[str]]]:
    h5py = require("h5py", "h5py", f"{name}: reading an HDF5 states file")
    flat: Flat = {}
    dups: dict[str, list[str]] = {}

    def visit(group: Any, prefix: str) -> None:
        if prefix.count("/") > MAX_NESTING_DEPTH:
            raise LimitExceededError(f"{name}: HDF5 groups nested deeper than {MAX_NESTING_DEPTH}")
        for key in group:
            full, where = prefix + key, f"{name}: at key {prefix + key!r}"
            if not isinstance(group.get(key, getlink=True), h5py.HardLink):
                raise FormatError(f"{where}: soft and external links are not followed")
            obj = group[key]
            if isinstance(obj, h5py.Group):
                visit(obj, full + "/")
            elif not isinstance(obj, h5py.Dataset) or obj.shape is None or obj.is_virtual or obj.external:
                raise FormatError(f"{where}: only plain datasets are read (no empty, virtual or external ones)")
            elif not prefix and key in (DUPLICATE_KEY, DUPLICATE_TARGET):
                text = obj[()] if obj.shape == () and obj.dtype.kind in "OSU" else None
                if not isinstance(text, (bytes, str)):
                    raise FormatError(f"{where}: expected a scalar string of names joined with '+'")
                dups[key] = (text.decode("utf-8") if isinstance(text, bytes) else text).split("+")
            else:
                if not is_plain(obj.dtype):
                    raise FormatError(f"{where}: dataset dtype {obj.dtype} is not bool or numeric")
                budget.take(ENTRY_OVERHEAD_BYTES + obj.size * obj.dtype.itemsize, where)
                flat[full] = _value(obj[()], where)

    try:
        with h5py.File(name, "r") as f:
            visit(f, "")
    except FormatError:
        raise
    except (OSError, KeyError, RuntimeError, ValueError, TypeError) as exc:
        if "alloc" in str(exc).lower():  # libhdf5 hit the address-space limit
            raise LimitExceededError(f"{name}: out of memory while libhdf5 read the file ({exc})") from None
        raise FormatError(f"{name}: not a readable HDF5 file: {exc}") from None
    return flat, dups


def _check_members(infos: list[zipfile.ZipInfo], name: str, size: int) -> None:
    """Refuse what numpy never writes and zip bombs rely on: other compression methods (bzip2 and
    lzma expand far more than deflate), members past the end, members sharing bytes."""
    for info in infos:
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise FormatError(f"{name}: member {info.filename!r} uses zip compression method "
                              f"{info.compress_type}; .npz members are stored or deflated")
        if info.compress_type == zipfile.ZIP_STORED and info.file_size != info.compress_size:
            raise FormatError(f"{name}: stored member {info.filename!r} declares {info.file_size} bytes "
                              f"but holds {info.compress_size}")
        if info.header_offset + _ZIP_LOCAL_HEADER + info.compress_size > size:
            raise TruncatedError(f"{name}: member {info.filename!r} runs past the end of the file")
    starts = sorted(infos, key=lambda i: i.header_offset)
    for first, second in zip(starts, starts[1:]):
        end = first.header_offset + _ZIP_LOCAL_HEADER + len(first.filename) + first.compress_size
        if end > second.header_offset:
            raise FormatError(f"{name}: members {first.filename!r} and {second.filename!r} overlap "
                              f"(a zip bomb shares compressed data between members)")


def read_npz_arrays(name: str, size: int, limits: Limits | None = None) -> tuple[Flat, dict[str, list[str]]]:
    """The arrays of an ``.npz`` file and its alias lists: bpz's one npz reader (``read_states``,
    ``bpz convert``), within the expansion budget ``limits`` (``max_ratio``/``max_bytes``) sets."""
    budget = ExpansionBudget(name, size, compressed=True, **(limits or {}))
    with memory_guard(name):
        return _read_npz_members(name, size, budget)


def _read_npz_members(name: str, size: int, budget: ExpansionBudget) -> tuple[Flat, dict[str, list[str]]]:
    from numpy.lib import format as npy

    flat: Flat = {}
    dups: dict[str, list[str]] = {}
    try:
        with zipfile.ZipFile(name) as zf:
            infos = zf.infolist()
            _check_members(infos, name, size)
            for info in infos:
                key, where = info.filename[:-4], f"{name}: at key {info.filename[:-4]!r}"
                if not info.filename.endswith(".npy") or key in flat or key in dups:
                    raise FormatError(f"{name}: member {info.filename!r} is not a unique <name>.npy")
                if info.file_size > max(info.compress_size, 1) * budget.ratio:
                    raise LimitExceededError(f"{where}: member expands {info.compress_size} bytes to "
                                             f"{info.file_size}, more than {budget.ratio:g}x (deflate "
                                             f"cannot exceed 1032x)")
                budget.take(ENTRY_OVERHEAD_BYTES, where)  # the header; the data once its size is checked
                with zf.open(info) as fp:
                    version = npy.read_magic(fp)
                    if version not in ((1, 0), (2, 0)):
                        raise FormatError(f"{where}: unsupported .npy version {version}")
                    read_header = npy.read_array_header_1_0 if version == (1, 0) else npy.read_array_header_2_0
                    shape, fortran, dtype = read_header(fp)
                    if not is_plain(dtype, text=key in (DUPLICATE_KEY, DUPLICATE_TARGET)):
                        raise FormatError(f"{where}: dtype {dtype} is not bool or numeric")
                    count = int(np.prod(shape, dtype=object)) if shape else 1
                    if fp.tell() + count * dtype.itemsize != info.file_size:
                        raise FormatError(f"{where}: .npy header declares shape {list(shape)} of {dtype}, "
                                          f"which needs {count * dtype.itemsize} bytes, but the member "
                                          f"holds {info.file_size - fp.tell()} data bytes")
                    arr = array_from_stream(fp.read, dtype, shape, where, fortran=fortran, budget=budget)
                    if fp.read(1):  # also reaches the end, where zipfile checks the CRC
                        raise FormatError(f"{where}: member holds more than its declared size")
                if key in (DUPLICATE_KEY, DUPLICATE_TARGET):
                    dups[key] = _names(arr, where, budget)
                else:
                    flat[key] = arr
    except FormatError:
        raise
    except (zipfile.BadZipFile, zlib.error, ValueError, OSError, NotImplementedError, RuntimeError) as exc:
        raise FormatError(f"{name}: not a readable .npz file: {type(exc).__name__}: {exc}") from None
    except EOFError:
        raise TruncatedError(f"{name}: .npz member ends early") from None
    return flat, dups


def _read_pkl(name: str, size: int, limits: Limits | None = None) -> tuple[Flat, dict[str, list[str]]]:
    data = load_pickle(name, **(limits or {}))
    if not isinstance(data, dict):
        raise FormatError(f"{name}: pickle holds a {type(data).__name__}, not a dict of arrays")
    flat, dups = {}, {}
    for key, value in data.items():
        where = f"{name}: at key {key!r}"
        if not isinstance(key, str):
            raise FormatError(f"{where}: keys must be strings")
        if key in (DUPLICATE_KEY, DUPLICATE_TARGET):
            with memory_guard(name):
                dups[key] = _names(value, where)  # bounded by the arrays the pickle's budget paid for
        else:
            flat[key] = _value(value, where)
    return flat, dups


class _MatFile:
    """A bounds-checked parser for the MATLAB 5 subset ``scipy.io.savemat`` writes.

    Why not ``scipy.io.loadmat``: it crashes the interpreter on some corrupt files (found by
    fuzzing), and legacy files come from strangers. Only uncompressed numeric, logical and
    char arrays are read: all that ``save_states`` ever wrote.
    """

    def __init__(self, data: bytes, name: str, budget: ExpansionBudget) -> None:
        self.budget = budget
        if len(data) < 128:
            raise TruncatedError(f"{name}: shorter than a MATLAB 5 header")
        if data[126:128] not in (b"IM", b"MI"):
            raise FormatError(f"{name}: not a MATLAB 5 .mat file")
        self.data, self.name = memoryview(data), name
        self.order = "<" if data[126:128] == b"IM" else ">"
        version = struct.unpack_from(self.order + "H", data, 124)[0]
        if version != 0x0100:
            raise FormatError(f"{name}: MATLAB file version {version:#06x}; BrainPy wrote only version 5 (0x0100)")

    def elements(self, buf: memoryview, start: int) -> Iterator[tuple[int, memoryview]]:
        """(type, payload) of each data element in ``buf`` from ``start`` on."""
        pos, end = start, len(buf)
        while pos < end:
            if pos + 8 > end:
                raise TruncatedError(f"{self.name}: data element header runs past its end")
            mtype, nbytes = struct.unpack_from(self.order + "II", buf, pos)
            if mtype >> 16:  # small data element: up to 4 bytes packed inside the tag
                nbytes, mtype = mtype >> 16, mtype & 0xFFFF
                if nbytes > 4:
                    raise FormatError(f"{self.name}: small data element of {nbytes} bytes")
                yield mtype, buf[pos + 4:pos + 4 + nbytes]
                pos += 8
                continue
            if pos + 8 + nbytes > end:
                raise TruncatedError(f"{self.name}: data element of {nbytes} bytes runs past the end")
            yield mtype, buf[pos + 8:pos + 8 + nbytes]
            pos += 8 + nbytes + (-nbytes % 8)  # elements are 8-byte aligned

    def variables(self) -> Iterator[tuple[str, Any]]:
        """Yield (name, array) or (name, char array) for each top-level variable."""
        for mtype, body in self.elements(self.data, 128):
            if mtype == 15:  # miCOMPRESSED; savemat, as BrainPy called it, never compresses
                raise FormatError(f"{self.name}: compressed .mat variables were never written by BrainPy")
            if mtype != 14:
                raise FormatError(f"{self.name}: top-level element of type {mtype} is not a matrix")
            yield self.matrix(body)

    def matrix(self, body: memoryview) -> tuple[str, Any]:
        parts = list(self.elements(body, 0))
        if (len(parts) < 4 or parts[0][0] != 6 or len(parts[0][1]) != 8 or parts[1][0] != 5
                or len(parts[1][1]) % 4):
            raise FormatError(f"{self.name}: matrix lacks its flags, dimensions or name")
        flags = struct.unpack_from(self.order + "I", parts[0][1])[0]
        cls, is_complex, is_logical = flags & 0xFF, bool(flags & 0x800), bool(flags & 0x200)
        dims = [int(d) for d in np.frombuffer(parts[1][1], self.order + "i4")]
        name = bytes(parts[2][1]).decode("utf-8", "replace")
        where = f"{self.name}: at key {name!r}"
        if not 2 <= len(dims) <= MAX_NDIM or min(dims) < 0:
            raise FormatError(f"{where}: dimensions {dims} are invalid")
        data = parts[3:]
        if cls == 4 and len(data) == 1:
            return name, self.chars(data[0], dims, where)
        if cls not in _MAT_CLASS or len(data) != 1 + is_complex:
            raise FormatError(f"{where}: MATLAB class {cls} is not what save_states wrote")
        arr = [self.numbers(mtype, payload, dims, cls, where) for mtype, payload in data]
        if is_complex:  # not re + 1j * im, which turns an infinite imaginary part into nan
            ctype = np.result_type(arr[0].dtype, np.complex64)
            self.budget.take(int(np.prod(dims, dtype=object)) * ctype.itemsize, where)
            value = np.empty(dims, ctype)
            value.real, value.imag = arr
            return name, value
        return name, arr[0].astype(bool) if is_logical else arr[0]

    def numbers(self, mtype: int, payload: memoryview, dims: list[int], cls: int, where: str) -> np.ndarray:
        if mtype not in _MAT_STORAGE:
            raise FormatError(f"{where}: numeric data of element type {mtype}")
        count = int(np.prod(dims, dtype=object))
        stored = array_from_bytes(payload, np.dtype(self.order + _MAT_STORAGE[mtype]), (count,), where,
                                  budget=self.budget)
        out = np.dtype(_MAT_CLASS[cls])
        if out != stored.dtype:  # narrow storage (uint8 data of a double array) widens here
            self.budget.take(count * out.itemsize, where)
        return stored.astype(out, copy=False).reshape(dims, order="F")

    def chars(self, part: tuple[int, memoryview], dims: list[int], where: str) -> np.ndarray:
        mtype, payload = part
        codecs = {16: "utf-8", 17: "utf-16", 4: "utf-16", 18: "utf-32", 2: "latin-1"}
        if mtype not in codecs:
            raise FormatError(f"{where}: char data of element type {mtype}")
        codec = codecs[mtype] + ("" if mtype in (16, 2) else "-le" if self.order == "<" else "-be")
        try:
            text = bytes(payload).decode(codec)
        except UnicodeDecodeError:
            raise FormatError(f"{where}: char data is not valid {codec}") from None
        if len(text) != int(np.prod(dims, dtype=object)):
            raise FormatError(f"{where}: {len(text)} characters for dimensions {dims}")
        self.budget.take(8 * len(text), where)  # the str, then 4 bytes a character as U1
        return np.frombuffer(text.encode("utf-32-le"), "<U1").reshape(dims, order="F").copy()


def _read_mat(name: str, size: int, limits: Limits | None = None) -> tuple[Flat, dict[str, list[str]]]:
    budget = ExpansionBudget(name, size, compressed=False, **(limits or {}))
    with memory_guard(name):
        return _read_mat_variables(name, budget)


def _read_mat_variables(name: str, budget: ExpansionBudget) -> tuple[Flat, dict[str, list[str]]]:
    with open(name, "rb") as fh:
        mat = _MatFile(fh.read(), name, budget)
    try:
        variables = list(mat.variables())
    except FormatError:
        raise
    except (ValueError, struct.error) as exc:  # anything the explicit checks did not name
        raise FormatError(f"{name}: not a readable .mat file: {exc}") from None
    flat: Flat = {}
    dups: dict[str, list[str]] = {}
    for key, value in variables:
        where = f"{name}: at key {key!r}"
        if key in flat or key in dups:
            raise FormatError(f"{where}: stored twice")
        if value.ndim < 2 or value.shape[0] != 1:
            raise FormatError(f"{where}: expected the leading axis of length 1 that save_states adds")
        if key in (DUPLICATE_KEY, DUPLICATE_TARGET):
            if value.dtype.kind != "U" or value.ndim != 3:
                raise FormatError(f"{where}: expected a (1, n) array of names")
            budget.take(value[0].size * 64, where)
            dups[key] = ["".join(chars).strip(" \x00") for chars in value[0]]
        elif value.dtype.kind == "U":
            raise FormatError(f"{where}: stored value is text, not a bool or numeric array")
        else:
            budget.take(value.nbytes, where)  # a C-order copy
            flat[key] = _value(np.array(value[0], order="C"), where)
    return flat, dups


_READERS: dict[str, Callable[[str, int, Limits], tuple[Flat, dict[str, list[str]]]]] = {
    "h5": _read_h5, "npz": read_npz_arrays, "pkl": _read_pkl, "mat": _read_mat}


def _like(flat: Flat, like: Mapping[str, Any]) -> None:
    """Undo .mat's losses where a reference says what a value was and nothing is lost."""
    for key, ref in like.items():
        arr = flat.get(key)
        if arr is None:
            continue
        shape = tuple(getattr(ref, "shape", arr.shape))
        if shape != arr.shape and [d for d in shape if d != 1] == [d for d in arr.shape if d != 1]:
            arr = arr.reshape(shape)
        dtype = np.dtype(getattr(ref, "dtype", arr.dtype)).newbyteorder("=")
        if dtype != arr.dtype and is_plain(dtype):
            with np.errstate(all="ignore"):
                cast = arr.astype(dtype)
                back = cast.astype(arr.dtype)
            if np.all((back == arr) | ((back != back) & (arr != arr))):
                arr = cast
        flat[key] = arr


def read_states(path: str | os.PathLike[str], *, like: Mapping[str, Any] | None = None,
                max_ratio: float | None = None, max_bytes: int | None = None) -> tuple[Flat, dict[str, str]]:
    """Read a ``save_states`` file: ``(stored name -> array, alias -> stored name)``.

    Every variable name the model had is a key of the first map or of the aliases (see
    :func:`expand_aliases`). ``like`` (``.mat`` only) gives reference shapes/dtypes that undo
    the format's losses; see the module doc. ``max_ratio`` / ``max_bytes`` override the
    expansion budget (see :mod:`._common`).
    """
    name, size = check_file(path)
    limits = {"max_ratio": max_ratio, "max_bytes": max_bytes}
    fmt = content_format(name)
    if fmt is None:
        raise FormatError(f"Unknown file format: {name}: its content is none of the save_states formats "
                          f"(HDF5, npz, pickle, MATLAB 5), whatever its name says")
    flat, dups = _READERS[fmt](name, size, limits)
    keys, targets = dups.get(DUPLICATE_KEY, []), dups.get(DUPLICATE_TARGET, [])
    if len(keys) != len(targets):
        raise FormatError(f"{name}: {len(keys)} duplicate_keys but {len(targets)} duplicate_targets")
    aliases: dict[str, str] = {}
    for alias, target in zip(keys, targets, strict=True):
        if target not in flat or alias in flat or alias in aliases:
            raise FormatError(f"{name}: alias {alias!r} -> {target!r} does not name a stored "
                              f"variable, or repeats a stored name")
        aliases[alias] = target
    if like and fmt == "mat":
        _like(flat, like)
    return flat, aliases


def expand_aliases(flat: Mapping[str, np.ndarray], aliases: Mapping[str, str]) -> dict[str, np.ndarray]:
    """Every variable name -> its array; an alias maps to the very array of its target."""
    return {**flat, **{alias: flat[target] for alias, target in aliases.items()}}


def write_states(path: str | os.PathLike[str], flat: Mapping[str, Any],
                 aliases: Mapping[str, str] | None = None, **setting: Any) -> str:
    """Write ``flat`` (and ``aliases``: alias -> stored name) in BrainPy's ``save_states`` layout.

    The format follows the suffix. ``compressed=True`` (the only setting BrainPy used) selects
    ``savez_compressed`` for ``.npz``. Returns the path; the file appears atomically.
    """
    compressed = bool(setting.pop("compressed", False))
    if setting:
        raise TypeError(f"unknown save_states settings: {sorted(setting)}")
    name = os.fspath(path)
    fmt = _writer_format(name)
    arrays = {}
    for key, value in flat.items():
        if not isinstance(key, str) or key in (DUPLICATE_KEY, DUPLICATE_TARGET):
            raise ValueError(f"variable name {key!r} is not a str or is reserved for the alias lists")
        arrays[key] = np.asarray(value)
    aliases = dict(aliases or {})
    for alias, target in aliases.items():
        if target not in arrays or alias in arrays:
            raise ValueError(f"alias {alias!r} -> {target!r}: the target must be stored and the alias not")
    keys, targets = list(aliases), list(aliases.values())
    if fmt == "h5" and any("+" in n for n in keys + targets):
        raise ValueError("HDF5 states files join alias names with '+', so names cannot contain it")
    return atomic_write(name, lambda tmp: _WRITERS[fmt](tmp, arrays, keys, targets, compressed))


def _write_h5(tmp: str, arrays: Flat, keys: list[str], targets: list[str], compressed: bool) -> None:
    h5py = require("h5py", "h5py", "writing an HDF5 states file")
    with h5py.File(tmp, "w") as f:
        for key, arr in arrays.items():
            f[key] = arr
        if keys:
            f.create_dataset(DUPLICATE_TARGET, data="+".join(targets))
            f.create_dataset(DUPLICATE_KEY, data="+".join(keys))


def _with_lists(arrays: Flat, keys: list[str], targets: list[str]) -> Flat:
    if not keys:
        return dict(arrays)
    return {**arrays, DUPLICATE_KEY: np.asarray(keys), DUPLICATE_TARGET: np.asarray(targets)}


def write_npz_arrays(tmp: str, arrays: Flat, keys: list[str], targets: list[str], compressed: bool) -> None:
    """What ``np.savez``/``savez_compressed`` write, without their keyword-name collisions: bpz's
    one npz writer (``write_states``, ``bpz convert``); callers make it atomic (``atomic_write``)."""
    from numpy.lib import format as npy

    mode = zipfile.ZIP_DEFLATED if compressed else zipfile.ZIP_STORED
    with zipfile.ZipFile(tmp, "w", compression=mode, allowZip64=True) as zf:
        for key, arr in _with_lists(arrays, keys, targets).items():
            with zf.open(key + ".npy", "w", force_zip64=True) as fp:
                npy.write_array(fp, np.asanyarray(arr), allow_pickle=False)


def _write_pkl(tmp: str, arrays: Flat, keys: list[str], targets: list[str], compressed: bool) -> None:
    with open(tmp, "wb") as fh:
        pickle.dump(_with_lists(arrays, keys, targets), fh, protocol=pickle.HIGHEST_PROTOCOL)


def _write_mat(tmp: str, arrays: Flat, keys: list[str], targets: list[str], compressed: bool) -> None:
    sio = require("scipy.io", "scipy", "writing a .mat states file")
    variables = {k: np.expand_dims(v, 0) for k, v in _with_lists(arrays, keys, targets).items()}
    with open(tmp, "wb") as fh:
        sio.savemat(fh, variables)


_WRITERS = {"h5": _write_h5, "npz": write_npz_arrays, "pkl": _write_pkl, "mat": _write_mat}
