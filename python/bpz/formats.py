"""Other tensor formats ``bpz convert`` reads and writes: safetensors and .npz
(in pure NumPy), and BrainPy ``.bp`` (through ``bpz._legacy``).

What each format can hold, and so what a conversion could lose, is decided here
(:func:`losses`, :func:`unstorable`): the CLI refuses a lossy conversion unless
asked, and never writes a file that silently differs from its source.

* ``.bpz`` holds everything.
* ``.safetensors`` holds arrays of its own dtypes (no complex128); bpz carries the
  rest of the tree and the metadata in the header's ``__metadata__`` (keys
  ``bpz.tree`` and ``bpz.metadata``), so bpz -> safetensors -> bpz is exact.
* ``.npz`` holds flat name -> array maps of NumPy's own dtypes (bfloat16 and
  float8 would come back as raw void bytes): no other values, no structure, no
  metadata.
* ``.bp`` (BrainPy's msgpack) holds str-keyed maps of arrays and scalars: lists,
  tuples and namedtuples come back as dicts keyed "0", "1", ..., other keys as
  strings; no metadata.

Every write goes to a temporary name in the destination's directory, is flushed
to disk (fsync), then renamed onto the destination; the directory is fsynced
too. A failed conversion leaves no partial file and the previous file intact.
"""

from __future__ import annotations

import json
import math
import os
import struct
from typing import Any, TypeGuard

import numpy as np

from . import dtypes
from ._legacy._common import atomic_write
from .errors import FormatError, LimitExceededError, TruncatedError

__all__ = [
    "read_safetensors", "read_safetensors_tree", "write_safetensors", "read_npz", "write_npz", "write_bp",
    "detect_format", "sniff", "MAGIC", "HDF5_MAGIC", "MAT_ENDIAN_MARKS", "SNIFF_BYTES", "losses", "unstorable",
    "SUFFIX_FORMATS",
]

_MAX_SAFETENSORS_HEADER = 100 << 20
#: safetensors' dtypes (the reference reader refuses any other name, C128 included).
SAFETENSORS_DTYPES = frozenset(dtypes.BPZ_DTYPES) - {"C128"}
#: ``__metadata__`` keys where bpz keeps what safetensors has no place for.
TREE_KEY, METADATA_KEY = "bpz.tree", "bpz.metadata"
#: npz members reserved by BrainPy's ``save_states`` layout (read back as alias lists).
_NPZ_RESERVED = frozenset({"duplicate_keys", "duplicate_targets"})
#: File name suffix -> format.
SUFFIX_FORMATS = {".bpz": "bpz", ".bp": "bp", ".msgpack": "bp", ".safetensors": "safetensors", ".npz": "npz"}


# ---------------------------------------------------------------- safetensors


def read_safetensors(path: str) -> dict[str, np.ndarray]:
    """Reads a safetensors file into arrays (copies, so the file can be replaced)."""
    arrays, _ = _read_safetensors(path)
    return arrays


def read_safetensors_tree(path: str) -> tuple[Any, Any]:
    """``(tree, metadata)`` of a safetensors file: the bpz tree if bpz wrote one, else the flat arrays;
    bpz's metadata, else the file's own ``__metadata__`` map (None if it has none)."""
    arrays, meta = _read_safetensors(path)
    rest = {k: v for k, v in meta.items() if k not in (TREE_KEY, METADATA_KEY)}
    metadata = _json_member(path, meta, METADATA_KEY) if METADATA_KEY in meta else (rest or None)
    if TREE_KEY not in meta:
        return arrays, metadata
    from .pytree import leaf_value, unflatten

    tree = _json_member(path, meta, TREE_KEY)
    used: set[str] = set()

    def load(node: dict[str, Any]) -> Any:
        name = node["tensor"]
        used.add(name)
        return leaf_value(arrays[name], node)

    try:
        result = unflatten(tree, load)
    except FormatError as e:
        raise FormatError(f"{path}: __metadata__[{TREE_KEY!r}]: {e}") from None
    if used != set(arrays):
        missing = sorted(set(arrays) - used)[:3]
        raise FormatError(f"{path}: __metadata__[{TREE_KEY!r}] does not place the tensors {missing}; "
                          f"delete that key to read the file as flat tensors")
    return result, metadata


def _json_member(path: str, meta: dict[str, str], key: str) -> Any:
    try:
        return json.loads(meta[key])
    except (ValueError, RecursionError) as e:
        raise FormatError(f"{path}: __metadata__[{key!r}] is not JSON: {e}") from None


def _read_safetensors(path: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise TruncatedError(f"{path}: {size} bytes, too short for a safetensors file")
        (n,) = struct.unpack("<Q", head)
        if n > _MAX_SAFETENSORS_HEADER:
            raise LimitExceededError(f"{path}: safetensors header of {n} bytes is over {_MAX_SAFETENSORS_HEADER}")
        if 8 + n > size:
            raise TruncatedError(f"{path}: header of {n} bytes runs past the end of the file")
        try:
            header = json.loads(f.read(n))
        except (ValueError, RecursionError) as e:
            raise FormatError(f"{path}: safetensors header is not JSON: {e}") from None
        data = np.fromfile(f, dtype=np.uint8)
    if not isinstance(header, dict):
        raise FormatError(f"{path}: safetensors header is not a JSON object")
    meta = header.get("__metadata__") or {}
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise FormatError(f"{path}: safetensors __metadata__ is not a map of strings")
    out = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        where = f"{path}: tensor {name!r}"
        if not isinstance(entry, dict) or not isinstance(entry.get("dtype"), str):
            raise FormatError(f"{where}: entry is not {{dtype, shape, data_offsets}}")
        if entry["dtype"] not in SAFETENSORS_DTYPES:
            raise FormatError(f"{where}: unknown dtype {entry['dtype']!r}")
        dtype = dtypes.to_numpy(entry["dtype"])
        shape, offsets = entry.get("shape"), entry.get("data_offsets")
        if not _ints(shape, 64) or not _ints(offsets, 2) or len(offsets) != 2:
            raise FormatError(f"{where}: shape {shape!r} or data_offsets {offsets!r} is not a list of sizes")
        start, end = offsets
        if not 0 <= start <= end <= len(data) or end - start != math.prod(shape) * dtype.itemsize:
            raise FormatError(f"{where}: invalid data offsets {start}..{end} for shape {shape}")
        out[name] = data[start:end].view(dtype).reshape(shape).copy()
    return out, meta


def _ints(value: Any, most: int) -> TypeGuard[list[int]]:
    return (isinstance(value, list) and len(value) <= most
            and all(type(v) is int and 0 <= v < 2**63 for v in value))


def write_safetensors(path: str, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> None:
    """Writes a safetensors file (durably: temporary file, fsync, rename)."""
    if "__metadata__" in tensors:
        raise ValueError("safetensors reserves the name '__metadata__'; a tensor cannot have it")
    header: dict[str, Any] = {}
    if metadata:
        header["__metadata__"] = metadata
    offset = 0
    arrays = []
    for name, arr in tensors.items():
        arr = np.asarray(arr, order="C")  # (ascontiguousarray would make 0-d arrays 1-d)
        if arr.dtype.byteorder == ">":
            arr = arr.astype(arr.dtype.newbyteorder("<"))
        code = dtypes.to_bpz(arr.dtype)
        if code not in SAFETENSORS_DTYPES:
            raise TypeError(f"safetensors cannot store {name!r} of dtype {arr.dtype}")
        header[name] = {"dtype": code, "shape": list(arr.shape), "data_offsets": [offset, offset + arr.nbytes]}
        offset += arr.nbytes
        arrays.append(arr)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(struct.pack("<Q", len(text)))
            f.write(text)
            for arr in arrays:
                f.write(memoryview(arr.reshape(-1).view(np.uint8)))  # type: ignore[arg-type]

    atomic_write(path, write)


# ------------------------------------------------------------------------ npz


def read_npz(path: str) -> dict[str, np.ndarray]:
    """The arrays of an ``.npz`` file, through the hardened legacy reader (every length checked,
    decompression bounded, no pickles); BrainPy ``save_states`` aliases are expanded."""
    from ._legacy._common import check_file
    from ._legacy.states_files import expand_aliases, read_npz_arrays

    name, size = check_file(path)
    flat, lists = read_npz_arrays(name, size)
    keys, targets = lists.get("duplicate_keys", []), lists.get("duplicate_targets", [])
    if len(keys) != len(targets) or any(t not in flat or k in flat for k, t in zip(keys, targets)):
        raise FormatError(f"{name}: its duplicate_keys / duplicate_targets lists do not match its arrays")
    return expand_aliases(flat, dict(zip(keys, targets)))


def write_npz(path: str, tensors: dict[str, np.ndarray], compressed: bool = False) -> None:
    """Writes an ``.npz`` (what ``np.savez`` writes, without its keyword-name collisions), durably."""
    from ._legacy.states_files import write_npz_arrays

    reserved = sorted(_NPZ_RESERVED & set(tensors))
    if reserved:
        raise ValueError(f".npz names {reserved} are reserved for BrainPy's alias lists")
    for name, arr in tensors.items():
        if unstorable_dtype(np.asarray(arr).dtype, "npz"):
            raise TypeError(f".npz cannot hold {name!r} of dtype {np.asarray(arr).dtype}")
    atomic_write(path, lambda tmp: write_npz_arrays(tmp, dict(tensors), [], [], compressed))


# ------------------------------------------------------------------------- bp


def write_bp(path: str, tree: Any) -> None:
    """Writes a BrainPy ``.bp`` file, durably."""
    from ._legacy import bp_msgpack

    bp_msgpack.write_bp(path, tree)  # atomically and durably itself


# ---------------------------------------------------------------- what is lost


def unstorable_dtype(dtype: np.dtype, fmt: str) -> bool:
    """Whether ``fmt`` cannot hold arrays of ``dtype`` with their values and dtype."""
    code = dtypes.to_bpz(dtype)
    if fmt == "safetensors":
        return code not in SAFETENSORS_DTYPES
    if fmt == "npz":  # NumPy saves ml_dtypes' types (bfloat16, float8) as raw void bytes
        return code is None or dtype.kind == "V"
    return False


def unstorable(leaves: list[Any], fmt: str) -> list[str]:
    """``"name (dtype)"`` of each flattened leaf ``fmt`` cannot hold."""
    return [f"{leaf.name!r} ({leaf.array.dtype})" for leaf in leaves if unstorable_dtype(leaf.array.dtype, fmt)]


def _show(path: tuple[Any, ...]) -> str:
    return "".join(f"[{k!r}]" for k in path) or "the root"


def losses(tree: Any, metadata: Any, fmt: str) -> list[str]:
    """What writing a flattened tree (``pytree.flatten``'s JSON tree) and metadata to ``fmt``
    would lose, one phrase per kind of loss with an example key path; empty if nothing."""
    if fmt in ("bpz", "safetensors"):
        return []
    found: dict[str, list[str]] = {}

    def note(what: str, path: tuple[Any, ...]) -> None:
        found.setdefault(what, []).append(_show(path))

    def walk(node: Any, path: tuple[Any, ...]) -> None:
        if not isinstance(node, dict) or len(node) == 0:
            return
        if "tensor" in node:
            hint = node.get("py")
            if hint == "jax_key":
                note("JAX PRNG keys (become their raw key data)", path)
            elif hint == "numpy_scalar" and fmt == "npz":
                note("NumPy scalars (become 0-d arrays)", path)
            return
        (kind, payload), = node.items()
        if kind in ("dict", "ordered_dict"):
            if kind == "ordered_dict":
                note("OrderedDicts (become dicts)", path)
            for key, child in payload:
                if not isinstance(key, str) and fmt == "bp":
                    note("non-string dict keys (become strings)", (*path, key))
                walk(child, (*path, key))
        elif kind in ("list", "tuple"):
            note(f"{kind}s (become dicts keyed '0', '1', ...)", path)
            for i, child in enumerate(payload):
                walk(child, (*path, i))
        elif kind == "namedtuple":
            note("namedtuples (become dicts keyed by field)", path)
            for field, child in zip(payload["fields"], payload["values"]):
                walk(child, (*path, field))
        elif fmt == "npz":
            note("values that are not arrays (numbers, strings, None, ...)", path)

    walk(tree, ())
    if fmt == "npz":
        flat = isinstance(tree, dict) and "dict" in tree and all(
            isinstance(k, str) and isinstance(v, dict) and v.get("tensor") == k for k, v in tree["dict"])
        if not flat:
            found = {k: v for k, v in found.items() if "become dicts" not in k}
            found["the tree's structure (tensors get flat names such as 'net/W')"] = []
    if metadata is not None:
        found["the archive's metadata"] = []
    return [f"{what} at {', '.join(paths[:2])}" + (f" and {len(paths) - 2} more" if len(paths) > 2 else "")
            if paths else what for what, paths in found.items()]


# ------------------------------------------------------------------ detection


#: The first 8 bytes of every bpz archive.
MAGIC = b"\x89BPZ\r\n\x1a\n"
#: How many leading bytes :func:`sniff` needs to tell the formats apart (a MAT-file's header is 128).
SNIFF_BYTES = 128


#: The first 8 bytes of an HDF5 file (no user block: what h5py writes by default).
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
#: A MAT-file (level 5, or 7.3 whose HDF5 data follows a 512-byte user block) has a 116-byte text
#: header, 8 bytes of subsystem offset, a 2-byte version and this endian indicator at byte 126.
MAT_ENDIAN_MARKS = (b"IM", b"MI")


def sniff(source: str | os.PathLike[str] | bytes) -> str | None:
    """The format a file's content says it is, or None: ``"bpz"``, ``"npz"``, ``"bp"``,
    ``"safetensors"``, or one of the other ``save_states`` formats ``"h5"``, ``"mat"``, ``"pkl"``
    (a pickle of protocol 2 or later; protocols 0 and 1 have no signature). ``source`` is a path
    (its first :data:`SNIFF_BYTES` bytes are read; OSError if it cannot be) or the file's first
    bytes. The one place formats are recognised: loading, the checkpoint listing, ``bpz convert``
    and the states files all ask here.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        head = bytes(source[:SNIFF_BYTES])
    else:
        with open(source, "rb") as f:
            head = f.read(SNIFF_BYTES)
    if head[:8] == MAGIC:
        return "bpz"
    if head[:4] == b"PK\x03\x04":
        return "npz"
    if head[:8] == HDF5_MAGIC:
        return "h5"
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:  # PROTO opcode (an empty msgpack map is 1 byte)
        return "pkl"
    if len(head) >= 128 and head[126:128] in MAT_ENDIAN_MARKS and 0x20 <= head[0] < 0x7F:
        return "mat"
    from ._legacy import bp_msgpack  # imported only for non-bpz files (slow import)

    if bp_msgpack.is_bp_file(head):
        return "bp"
    if len(head) >= 9 and head[8:9] == b"{":  # a little-endian u64 header length, then its JSON
        return "safetensors"
    return None


def detect_format(path: str) -> str:
    """What :func:`sniff` says the content is (``"bpz"``, ``"bp"``, ``"safetensors"``, ``"npz"``, ...),
    else the format its name suggests; ``"unknown"`` if neither says."""
    return sniff(path) or SUFFIX_FORMATS.get(os.path.splitext(path)[1].lower(), "unknown")
