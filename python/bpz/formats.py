"""Other tensor formats ``bpz convert`` reads and writes: safetensors and .npz
(in pure NumPy), and BrainPy ``.bp`` (through ``bpz._legacy``)."""

from __future__ import annotations

import json
import os
import struct
from typing import Any

import numpy as np

from . import dtypes
from .errors import FormatError, LimitExceededError, TruncatedError

__all__ = ["read_safetensors", "write_safetensors", "read_npz", "write_npz", "detect_format"]

_MAX_SAFETENSORS_HEADER = 100 << 20


def read_safetensors(path: str) -> dict[str, np.ndarray]:
    """Reads a safetensors file into arrays (copies, so the file can be replaced)."""
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
        except ValueError as e:
            raise FormatError(f"{path}: safetensors header is not JSON: {e}") from e
        data = np.fromfile(f, dtype=np.uint8)
    out = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        start, end = entry["data_offsets"]
        dtype = dtypes.to_numpy(entry["dtype"])
        shape = tuple(entry["shape"])
        if not 0 <= start <= end <= len(data) or end - start != int(np.prod(shape, dtype=np.int64)) * dtype.itemsize:
            raise FormatError(f"{path}: tensor {name!r} has invalid data offsets {start}..{end}")
        out[name] = data[start:end].view(dtype).reshape(shape).copy()
    return out


def write_safetensors(path: str, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> None:
    """Writes a safetensors file (atomically: temporary file, then rename)."""
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
        if code is None:
            raise TypeError(f"safetensors cannot store {name!r} of dtype {arr.dtype}")
        header[name] = {"dtype": code, "shape": list(arr.shape), "data_offsets": [offset, offset + arr.nbytes]}
        offset += arr.nbytes
        arrays.append(arr)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(struct.pack("<Q", len(text)))
            f.write(text)
            for arr in arrays:
                f.write(memoryview(arr.reshape(-1).view(np.uint8)))  # type: ignore[arg-type]
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def read_npz(path: str) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def write_npz(path: str, tensors: dict[str, np.ndarray], compressed: bool = False) -> None:
    tmp = f"{path}.tmp-{os.getpid()}.npz"
    try:
        (np.savez_compressed if compressed else np.savez)(tmp, **tensors)  # type: ignore[arg-type]
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def detect_format(path: str) -> str:
    """``"bpz"``, ``"bp"``, ``"safetensors"`` or ``"npz"``, by content first, then by name."""
    from .read import MAGIC

    with open(path, "rb") as f:
        head = f.read(16)
    if head[:8] == MAGIC:
        return "bpz"
    if head[:4] == b"PK\x03\x04":
        return "npz"
    try:
        from ._legacy import bp_msgpack

        if bp_msgpack.is_bp_file(head):
            return "bp"
    except ImportError:  # pragma: no cover
        pass
    if len(head) >= 9 and head[8:9] == b"{":
        return "safetensors"
    ext = os.path.splitext(path)[1].lower()
    return {".bpz": "bpz", ".bp": "bp", ".msgpack": "bp", ".safetensors": "safetensors", ".npz": "npz"}.get(ext, "unknown")
