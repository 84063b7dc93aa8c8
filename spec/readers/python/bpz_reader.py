"""An independent reader of the bpz archive format, written from spec/FORMAT.md alone.

It is the specification's executable companion: comments cite FORMAT.md's sections, and
the open-time checks run in the order of section 10. Needs only the standard library,
numpy and the ``zstandard`` package (``ml_dtypes`` is used when present).

    >>> ar = open_archive("spec/vectors/tiny.bpz")
    >>> ar.read("x")
    b'\\x01\\x02\\x03'

Memory is bounded by the caller, never by what a file declares (a valid 132 KB file can
hold a 4 GiB tensor of zeros): ``read``, ``read_rows`` and ``read_range`` refuse a result
over ``max_read_bytes`` (default 1 GiB) with ``limit_exceeded`` before allocating it; every
call decodes one chunk at a time and refuses a chunk over ``max_chunk_bytes`` (default the
format's 256 MiB); ``iter_range``/``iter_rows`` and ``read_to``/``read_rows_to`` stream a
tensor of any size in one chunk's memory, yielding a chunk only once it is verified.

``to_numpy`` returns NumPy's own dtypes for BOOL (any non-zero byte reads as true), the
integers, F16/F32/F64 and C64/C128. BF16 and the F8 types use ``ml_dtypes`` when it is
installed, else come back as raw bit patterns (``uint16`` for BF16, ``uint8`` for F8).
"""
from __future__ import annotations

import json
import operator
import os
import re
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import zstandard

__all__ = ["BpzFormatError", "Archive", "TensorEntry", "Chunk", "open_archive", "crc32c",
           "DEFAULT_MAX_READ_BYTES"]

# ---------------------------------------------------------------- constants (sections 2, 3, 11)
MAGIC = b"\x89BPZ\r\n\x1a\n"
END_MAGIC = b"BPZ_END\n"
SUPERBLOCK_SIZE, TRAILER_SIZE = 64, 32
MAX_INDEX_BYTES = 256 << 20
MAX_JSON_DEPTH = 128
MAX_TENSORS = 1 << 20
MAX_NAME_BYTES = 4096
MAX_RANK = 64
MAX_CHUNK_BYTES = 256 << 20
MAX_CHUNKS = 1 << 24
MAX_INT = (1 << 53) - 1
# The reader's own cap on one read's result (not a format limit): Archive(max_read_bytes=...).
DEFAULT_MAX_READ_BYTES = 1 << 30

DTYPE_SIZES = {  # section 6
    "BOOL": 1, "U8": 1, "U16": 2, "U32": 4, "U64": 8, "I8": 1, "I16": 2, "I32": 4, "I64": 8,
    "F16": 2, "BF16": 2, "F32": 4, "F64": 8, "C64": 8, "C128": 16,
    "F8_E4M3": 1, "F8_E5M2": 1, "F8_E4M3FNUZ": 1, "F8_E5M2FNUZ": 1, "F8_E8M0": 1,
}
INTEGER_DTYPES = {"U8", "U16", "U32", "U64", "I8", "I16", "I32", "I64"}
FILTERS = {"none", "shuffle", "delta_shuffle", "bitpack"}  # section 5
STORAGES = {"raw", "chunked"}  # section 4

NUMPY_DTYPES = {
    "U8": "u1", "U16": "<u2", "U32": "<u4", "U64": "<u8", "I8": "i1", "I16": "<i2",
    "I32": "<i4", "I64": "<i8", "F16": "<f2", "F32": "<f4", "F64": "<f8", "C64": "<c8", "C128": "<c16",
}
ML_DTYPES = {  # section 6's parenthesised names; fallback: raw bits of the same size
    "BF16": "bfloat16", "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2",
    "F8_E4M3FNUZ": "float8_e4m3fnuz", "F8_E5M2FNUZ": "float8_e5m2fnuz", "F8_E8M0": "float8_e8m0fnu",
}
try:
    import ml_dtypes
except ImportError:  # pragma: no cover - depends on the environment
    ml_dtypes = None


class BpzFormatError(Exception):
    """Any failure; ``kind`` is one of section 10's error kind names."""

    def __init__(self, kind: str, message: str):
        super().__init__(f"{kind}: {message}")
        self.kind = kind


# ---------------------------------------------------------------- crc32c (section 1, Conventions)
def _crc_table() -> list[int]:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC_TABLE = _crc_table()


def crc32c(data: bytes, crc: int = 0) -> int:
    """CRC-32C (Castagnoli); pass a previous result as ``crc`` to continue it."""
    table, crc = _CRC_TABLE, crc ^ 0xFFFFFFFF
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


# ---------------------------------------------------------------- index model (section 7)
class Chunk(NamedTuple):
    offset: int
    stored_length: int
    crc32c: int
    encoded: int


@dataclass(frozen=True)
class TensorEntry:
    name: str
    dtype: str
    shape: tuple[int, ...]
    storage: str
    filter: str
    chunk_elems: int
    chunks: list[Chunk]

    @property
    def itemsize(self) -> int:
        return DTYPE_SIZES[self.dtype]

    @property
    def numel(self) -> int:
        return _product(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * self.itemsize

    @property
    def rows(self) -> int:  # section 4.1: a 0-d tensor is one row
        return self.shape[0] if self.shape else 1

    def chunk_elements(self, i: int) -> int:
        return min(self.chunk_elems, self.numel - i * self.chunk_elems)


def _product(values) -> int:
    n = 1
    for v in values:
        n *= v
    return n


# ---------------------------------------------------------------- filters (section 5)
def _unfilter(filter_name: str, filtered: bytes, m: int, s: int) -> bytes | memoryview:
    """Undo ``filter_name`` on one chunk of ``m`` elements of ``s`` bytes.

    Returns a bytes-like object (no extra copy of the chunk for a ``bytes`` result)."""
    if filter_name == "none":
        return filtered
    if filter_name == "bitpack":  # bit k (LSB first) of F[q] is D[8q + k]
        bits = np.unpackbits(np.frombuffer(filtered, np.uint8), bitorder="little")
        return memoryview(bits[:m])
    # shuffle: D[i*s + j] = F[j*m + i], i.e. transpose an (s, m) byte matrix
    data = np.frombuffer(filtered, np.uint8).reshape(s, m).T.copy()
    if filter_name == "delta_shuffle":  # running sum modulo 2^(8s), restarting per chunk
        words = data.view(f"<u{s}").reshape(m)
        np.cumsum(words, dtype=words.dtype, out=words)
    return memoryview(data.reshape(-1))


def filtered_size(filter_name: str, m: int, s: int) -> int:
    return (m + 7) // 8 if filter_name == "bitpack" else m * s


# ---------------------------------------------------------------- bounded zstd (section 4.3)
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def _zstd_frame_info(frame: bytes) -> tuple[int, int | None]:
    """Length and declared content size of the zstd frame starting at ``frame[0]``.

    Walks the frame and block headers of RFC 8878 section 3.1.1 without decoding anything,
    so that trailing bytes, a second frame or a skippable frame are caught exactly
    (zstandard's stream_reader would silently decode a second frame).
    """
    if len(frame) < 6 or frame[:4] != _ZSTD_MAGIC:
        raise ValueError("not a zstd frame")
    fhd = frame[4]
    if fhd & 0x08:
        raise ValueError("reserved bit set in the frame header")
    fcs_flag, single_segment, has_checksum = fhd >> 6, (fhd >> 5) & 1, (fhd >> 2) & 1
    pos = 5 + (0 if single_segment else 1) + (0, 1, 2, 4)[fhd & 3]
    fcs_len = (single_segment, 2, 4, 8)[fcs_flag]
    content_size = None
    if fcs_len:
        content_size = int.from_bytes(frame[pos:pos + fcs_len], "little") + (256 if fcs_len == 2 else 0)
    pos += fcs_len
    while True:
        if pos + 3 > len(frame):
            raise ValueError("frame cut short")
        header = int.from_bytes(frame[pos:pos + 3], "little")
        block_type, block_size = (header >> 1) & 3, header >> 3
        if block_type == 3:
            raise ValueError("reserved block type")
        pos += 3 + (1 if block_type == 1 else block_size)
        if header & 1:
            break
    pos += 4 * has_checksum
    if pos > len(frame):
        raise ValueError("frame cut short")
    return pos, content_size


def decompress_exact(frame: bytes, size: int) -> bytes:
    """Decompress exactly one zstd frame that must yield exactly ``size`` bytes.

    Never allocates according to the frame header: a frame declaring another content size
    is refused, and a frame declaring none gets ``size`` written into its header, so the
    one-shot decoder allocates exactly ``size`` bytes (and no window) and fails on a frame
    that would produce more or fewer. Raises ValueError on any mismatch.
    """
    frame_length, content_size = _zstd_frame_info(frame)
    if frame_length != len(frame):
        raise ValueError(f"{len(frame) - frame_length} bytes after the zstd frame")
    if content_size is not None and content_size != size:
        raise ValueError(f"frame declares {content_size} bytes, expected {size}")
    if content_size is None:  # then not single-segment: FHD, Window_Descriptor, Dictionary_ID
        header_end = 6 + (0, 1, 2, 4)[frame[4] & 3]
        frame = (frame[:4] + bytes([frame[4] | 0xC0]) + frame[5:header_end]
                 + size.to_bytes(8, "little") + frame[header_end:])
    try:
        out = zstandard.ZstdDecompressor().decompress(frame)
    except zstandard.ZstdError as exc:
        raise ValueError(f"zstd frame does not decode to {size} bytes: {exc}") from None
    if len(out) != size:  # libzstd checks this itself; kept for clarity of the contract
        raise ValueError(f"frame yields {len(out)} bytes, expected {size}")
    return out


def zstd_compress_bound(n: int) -> int:
    """zstd's ZSTD_COMPRESSBOUND(n), plus room for a frame header and checksum: the largest
    frame an encoder produces for n bytes (a longer one can only be padded with empty blocks)."""
    return n + (n >> 8) + ((128 << 10) - n >> 11 if n < 128 << 10 else 0) + 64


# ---------------------------------------------------------------- the archive
def open_archive(path: str | os.PathLike, **limits) -> "Archive":
    """Open and validate ``path``; ``limits`` are Archive's keyword arguments."""
    return Archive(path, **limits)


class Archive:
    """An open bpz file. Every section 10 open-time check has passed once constructed.

    The limits bound the memory any call spends, whatever the file declares; a request
    over one raises ``BpzFormatError`` of kind ``limit_exceeded`` before allocating:

    * ``max_read_bytes``: the largest result of one ``read``/``read_rows``/``read_range``
      (default 1 GiB; ``None`` lifts it). Streaming (``iter_range``, ``read_to``, ...) is
      not subject to it.
    * ``max_chunk_bytes``: the largest chunk (decoded size) any call decodes, ``verify``
      and streaming included; an encoded chunk's stored size is capped at zstd's compress
      bound of it. Default and ceiling: the format's 256 MiB.
    * ``max_index_bytes``: the largest index opened (default and ceiling: 256 MiB).
    """

    def __init__(self, path: str | os.PathLike, *, max_read_bytes: int | None = DEFAULT_MAX_READ_BYTES,
                 max_chunk_bytes: int = MAX_CHUNK_BYTES, max_index_bytes: int = MAX_INDEX_BYTES):
        self.path = os.fspath(path)
        for what, value in (("max_read_bytes", max_read_bytes), ("max_chunk_bytes", max_chunk_bytes),
                            ("max_index_bytes", max_index_bytes)):
            if value is not None and not (_as_index(value) is not None and value >= 0):
                raise BpzFormatError("invalid_argument", f"{self.path}: {what} must be an integer >= 0, not {value!r}")
        self.max_read_bytes = max_read_bytes
        self.max_chunk_bytes = MAX_CHUNK_BYTES if max_chunk_bytes is None else min(max_chunk_bytes, MAX_CHUNK_BYTES)
        self.max_index_bytes = MAX_INDEX_BYTES if max_index_bytes is None else min(max_index_bytes, MAX_INDEX_BYTES)
        try:
            self._file = open(self.path, "rb")
        except OSError as exc:
            raise self._fail("io", str(exc)) from None
        try:
            self.file_length = os.fstat(self._file.fileno()).st_size
            self._open()
        except BaseException:
            self._file.close()
            raise

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "Archive":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _fail(self, kind: str, what: str) -> BpzFormatError:
        return BpzFormatError(kind, f"{self.path}: {what}")

    def _pread(self, offset: int, length: int) -> bytes:
        try:
            self._file.seek(offset)
            data = self._file.read(length)
        except OSError as exc:
            raise self._fail("io", f"reading {length} bytes at offset {offset}: {exc}") from None
        if len(data) != length:
            raise self._fail("io", f"short read of {length} bytes at offset {offset}")
        return data

    # ---- section 10, "On open", steps 1-7
    def _open(self) -> None:
        size = self.file_length
        head = self._pread(0, min(size, SUPERBLOCK_SIZE))
        if size < len(MAGIC) and MAGIC.startswith(head):  # step 1
            raise self._fail("truncated", f"superblock: file is {size} bytes, a prefix of the magic")
        if head[:8] != MAGIC:
            raise self._fail("bad_magic", f"superblock: {_diagnose_magic(head[:10])}")
        if size < SUPERBLOCK_SIZE:  # step 2
            raise self._fail("truncated", f"superblock: file is {size} bytes, less than 64")
        if crc32c(head[:60]) != int.from_bytes(head[60:64], "little"):
            raise self._fail("checksum_mismatch", "superblock: crc32c mismatch")
        major, minor = (int.from_bytes(head[o:o + 2], "little") for o in (8, 10))
        required, optional, alignment = (int.from_bytes(head[o:o + 4], "little") for o in (12, 16, 20))
        if major != 1:  # step 3
            raise self._fail("unsupported_version", f"superblock: file is version {major}.{minor}, this reader reads 1.x")
        if required:
            raise self._fail("unsupported_feature", f"superblock: unknown required feature bits {required:#010x}")
        if alignment & (alignment - 1) or not 16 <= alignment <= 4096:  # step 4
            raise self._fail("invalid_index", f"superblock: alignment {alignment} is not a power of two in [16, 4096]")
        self.version, self.alignment = (major, minor), alignment
        self.required_features, self.optional_features = required, optional

        if size < SUPERBLOCK_SIZE + TRAILER_SIZE:  # step 5
            raise self._fail("truncated", f"trailer: file is {size} bytes, less than 96")
        trailer = self._pread(size - TRAILER_SIZE, TRAILER_SIZE)
        if trailer[24:] != END_MAGIC:
            raise self._fail("truncated", "trailer: the file does not end with BPZ_END (cut short or unfinished)")
        if crc32c(trailer[:20]) != int.from_bytes(trailer[20:24], "little"):
            raise self._fail("checksum_mismatch", "trailer: crc32c mismatch")
        index_offset, index_length = (int.from_bytes(trailer[o:o + 8], "little") for o in (0, 8))
        if index_length > MAX_INDEX_BYTES:  # step 6
            raise self._fail("limit_exceeded", f"trailer: index of {index_length} bytes exceeds 256 MiB")
        if index_length > self.max_index_bytes:
            raise self._fail("limit_exceeded", f"trailer: index of {index_length} bytes is over this reader's "
                                               f"limit of {self.max_index_bytes} (max_index_bytes)")
        if index_offset < SUPERBLOCK_SIZE or index_offset + index_length + TRAILER_SIZE != size:
            raise self._fail("invalid_index", f"trailer: index [{index_offset}, +{index_length}) does not end at the trailer")
        self.index_offset = index_offset
        raw_index = self._pread(index_offset, index_length)
        if crc32c(raw_index) != int.from_bytes(trailer[16:20], "little"):  # step 7
            raise self._fail("checksum_mismatch", "index: crc32c mismatch")
        self._parse_index(raw_index)

    # ---- steps 8-10
    def _parse_index(self, raw: bytes) -> None:
        depth = _json_depth(raw)  # step 8
        if depth > MAX_JSON_DEPTH:
            raise self._fail("limit_exceeded", f"index: JSON nested {depth} deep, over {MAX_JSON_DEPTH}")
        try:
            index = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant, object_pairs_hook=_unique_keys)
        except (UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError is a ValueError
            raise self._fail("invalid_index", f"index: not valid UTF-8 JSON ({exc})") from None
        bad = lambda what: self._fail("invalid_index", f"index: {what}")  # noqa: E731
        if not isinstance(index, dict):
            raise bad("not a JSON object")
        if not isinstance(index.get("tensors"), list):
            raise bad("member 'tensors' missing or not an array")
        self.tree, self.metadata = index.get("tree"), index.get("metadata")
        if self.tree is not None and not isinstance(self.tree, dict):
            raise bad("member 'tree' is neither a node nor null")
        self.writer = index.get("writer")
        if self.writer is not None and not (isinstance(self.writer, dict) and all(
                isinstance(self.writer.get(k, ""), str) for k in ("name", "version"))):
            raise bad("member 'writer' is not {name: string, version: string}")
        entries = [_typed_entry(e, i, bad) for i, e in enumerate(index["tensors"])]

        if len(entries) > MAX_TENSORS:  # step 9
            raise self._fail("limit_exceeded", f"index: {len(entries)} tensors, over {MAX_TENSORS}")
        self.tensors = [self._check_tensor(e) for e in entries]

        self._by_name: dict[str, TensorEntry] = {}  # step 10
        for t in self.tensors:
            if t.name in self._by_name:
                raise self._fail("invalid_index", f"tensor {_show(t.name)}: name used twice")
            self._by_name[t.name] = t
        spans = sorted((c.offset, c.offset + c.stored_length, t.name, i)
                       for t in self.tensors for i, c in enumerate(t.chunks) if c.stored_length)
        for (_, end, name, i), (start, _, name2, j) in zip(spans, spans[1:]):
            if start < end:
                raise self._fail("invalid_index", f"tensor {_show(name2)} chunk {j}: overlaps tensor {_show(name)} chunk {i}")
        if self.tree is not None:
            for ref in _tree_tensor_refs(self.tree, bad):
                if ref not in self._by_name:
                    raise bad(f"tree: tensor node names {_show(ref)}, which is not in the index")

    def _check_tensor(self, e: dict) -> TensorEntry:
        name = e["name"]
        fail = lambda kind, what: self._fail(kind, f"tensor {_show(name)}: {what}")  # noqa: E731
        try:
            name_bytes = len(name.encode("utf-8"))
        except UnicodeEncodeError:
            raise fail("invalid_index", "name is not valid Unicode (lone surrogate)") from None
        shape, dtype, chunk_elems, chunks = e["shape"], e["dtype"], e["chunk_elems"], e["chunks"]
        # limits first (they need no other member to be understood) ...
        if name_bytes > MAX_NAME_BYTES:
            raise fail("limit_exceeded", f"name of {name_bytes} bytes, over {MAX_NAME_BYTES}")
        if len(shape) > MAX_RANK:
            raise fail("limit_exceeded", f"rank {len(shape)}, over {MAX_RANK}")
        n = _product(shape)
        s = DTYPE_SIZES.get(dtype, 1)  # an unknown dtype is reported just below
        if max(shape, default=0) > MAX_INT or n * s > MAX_INT:
            raise fail("limit_exceeded", f"shape {shape} is over 2^53-1 bytes")
        if chunk_elems > MAX_INT:
            raise fail("limit_exceeded", f"chunk_elems {chunk_elems} is over 2^53-1")
        if min(chunk_elems, n) * s > MAX_CHUNK_BYTES:
            raise fail("limit_exceeded", f"chunks of {min(chunk_elems, n) * s} bytes, over 256 MiB")
        expected_chunks = 0 if n == 0 or chunk_elems < 1 else -(-n // chunk_elems)
        if expected_chunks > MAX_CHUNKS:
            raise fail("limit_exceeded", f"{expected_chunks} chunks, over {MAX_CHUNKS}")
        # ... then names this reader does not know ...
        for member, known in (("dtype", DTYPE_SIZES), ("storage", STORAGES), ("filter", FILTERS)):
            if e[member] not in known:
                raise fail("unsupported_feature", f"unknown {member} {e[member]!r}")
        # ... then consistency (everything else is invalid_index)
        t = TensorEntry(name, dtype, tuple(shape), e["storage"], e["filter"], chunk_elems,
                        [Chunk(*c) for c in chunks])
        if (t.filter == "delta_shuffle" and dtype not in INTEGER_DTYPES) or (t.filter == "bitpack" and dtype != "BOOL"):
            raise fail("invalid_index", f"filter {t.filter!r} is not defined for dtype {dtype}")
        if t.storage == "raw" and t.filter != "none":
            raise fail("invalid_index", f"raw tensor with filter {t.filter!r}")
        if chunk_elems < 1:
            raise fail("invalid_index", f"chunk_elems {chunk_elems}")
        if "\0" in name:
            raise fail("invalid_index", "NUL in the name")
        if len(t.chunks) != expected_chunks:
            raise fail("invalid_index", f"{len(t.chunks)} chunks in the table, geometry gives {expected_chunks}")
        for i, c in enumerate(t.chunks):
            if c.offset < SUPERBLOCK_SIZE or c.offset + c.stored_length > self.index_offset:
                raise fail("invalid_index", f"chunk {i}: [{c.offset}, +{c.stored_length}) outside the data region")
            if c.stored_length == 0:
                raise fail("invalid_index", f"chunk {i}: stored length 0")
            if c.crc32c > 0xFFFFFFFF:
                raise fail("invalid_index", f"chunk {i}: crc {c.crc32c} over 32 bits")
            if c.encoded not in (0, 1):
                raise fail("invalid_index", f"chunk {i}: encoded is {c.encoded}, not 0 or 1")
            if not c.encoded and c.stored_length != t.chunk_elements(i) * s:
                raise fail("invalid_index", f"chunk {i}: plain chunk of {c.stored_length} bytes, decodes to {t.chunk_elements(i) * s}")
            if t.storage == "raw":
                if c.encoded:
                    raise fail("invalid_index", f"chunk {i}: raw tensor with an encoded chunk")
                if c.offset != t.chunks[0].offset + i * chunk_elems * s:
                    raise fail("invalid_index", f"chunk {i}: raw tensor not contiguous")
        if t.storage == "raw" and t.chunks and t.chunks[0].offset % self.alignment:
            raise fail("invalid_index", f"raw data at {t.chunks[0].offset}, not a multiple of {self.alignment}")
        return t

    # ---- reading (section 10 "On read", section 14 step 4)
    def tensor(self, name: str) -> TensorEntry:
        try:
            return self._by_name[name]
        except KeyError:
            raise self._fail("tensor_not_found", f"no tensor named {_show(name)}") from None

    def _check_chunk_budget(self, t: TensorEntry, first: int, last: int) -> None:
        """Refuse, before reading any, a chunk in [first, last] that needs more memory than
        ``max_chunk_bytes`` allows."""
        limit, bound = self.max_chunk_bytes, zstd_compress_bound(self.max_chunk_bytes)
        for i in range(first, last + 1):
            c, decoded = t.chunks[i], t.chunk_elements(i) * t.itemsize
            if decoded > limit:
                raise self._fail("limit_exceeded", f"tensor {_show(t.name)} chunk {i}: decodes to {decoded} bytes, "
                                                   f"over this reader's limit of {limit} per chunk (max_chunk_bytes)")
            if c.encoded and c.stored_length > bound:
                raise self._fail("limit_exceeded", f"tensor {_show(t.name)} chunk {i}: a zstd frame of "
                                                   f"{c.stored_length} bytes, more than zstd needs for {limit} "
                                                   f"bytes (max_chunk_bytes)")

    def _decode_chunk(self, t: TensorEntry, i: int, unfilter: bool = True) -> bytes | memoryview:
        self._check_chunk_budget(t, i, i)
        c, m, s = t.chunks[i], t.chunk_elements(i), t.itemsize
        stored = self._pread(c.offset, c.stored_length)
        actual = crc32c(stored)
        if actual != c.crc32c:
            raise self._fail("checksum_mismatch", f"tensor {_show(t.name)} chunk {i}: crc32c {actual:#010x}, index says {c.crc32c:#010x}")
        if not c.encoded:
            return stored
        try:
            filtered = decompress_exact(stored, filtered_size(t.filter, m, s))
        except ValueError as exc:
            raise self._fail("corrupt_data", f"tensor {_show(t.name)} chunk {i}: {exc}") from None
        return _unfilter(t.filter, filtered, m, s) if unfilter else filtered

    def _byte_range(self, name: str, a: int, b: int) -> tuple[TensorEntry, int, int]:
        t = self.tensor(name)
        a, b = _as_index(a), _as_index(b)
        if a is None or b is None or not 0 <= a <= b <= t.nbytes:
            raise self._fail("invalid_argument", f"tensor {_show(name)}: byte range [{a}, {b}) outside [0, {t.nbytes})")
        return t, a, b

    def _row_range(self, name: str, start: int, stop: int) -> tuple[int, int]:
        t = self.tensor(name)
        start, stop = _as_index(start), _as_index(stop)
        if start is None or stop is None or not 0 <= start <= stop <= t.rows:
            raise self._fail("invalid_argument", f"tensor {_show(name)}: rows [{start}, {stop}) outside [0, {t.rows})")
        row_bytes = _product(t.shape[1:]) * t.itemsize
        return start * row_bytes, stop * row_bytes

    def _pieces(self, t: TensorEntry, a: int, b: int):
        """Yield (offset in [a, b), verified bytes) chunk by chunk."""
        per_chunk = t.chunk_elems * t.itemsize
        for i in range(a // per_chunk, (b - 1) // per_chunk + 1):
            start = i * per_chunk
            chunk = memoryview(self._decode_chunk(t, i))
            lo, hi = max(a, start), min(b, start + len(chunk))
            piece = chunk[lo - start:hi - start]
            del chunk  # while the next chunk decodes, only the caller's piece keeps this one
            yield lo - a, piece
            del piece

    def read_range(self, name: str, a: int, b: int) -> bytearray:
        """Decoded bytes [a, b) of a tensor; decodes only the chunks that hold them.

        The result is allocated once, after checking it against ``max_read_bytes`` and
        every chunk it needs against ``max_chunk_bytes``; chunks are decoded one at a time.
        """
        t, a, b = self._byte_range(name, a, b)
        if self.max_read_bytes is not None and b - a > self.max_read_bytes:
            raise self._fail("limit_exceeded", f"tensor {_show(name)}: reading {b - a} bytes at once is over this "
                                               f"reader's limit of {self.max_read_bytes} (max_read_bytes): raise it, "
                                               f"read fewer rows, or stream with iter_range / read_to")
        if a == b:
            return bytearray()
        per_chunk = t.chunk_elems * t.itemsize
        self._check_chunk_budget(t, a // per_chunk, (b - 1) // per_chunk)
        try:
            out = bytearray(b - a)
        except MemoryError:
            raise self._fail("limit_exceeded", f"tensor {_show(name)}: cannot allocate {b - a} bytes") from None
        for at, piece in self._pieces(t, a, b):
            out[at:at + len(piece)] = piece
        return out

    def read(self, name: str) -> bytearray:
        """All decoded bytes of a tensor (little-endian, C order), every chunk checked."""
        return self.read_range(name, 0, self.tensor(name).nbytes)

    def read_rows(self, name: str, start: int, stop: int) -> bytearray:
        """Decoded bytes of rows [start, stop) along the leading axis (section 4.1)."""
        return self.read_range(name, *self._row_range(name, start, stop))

    def iter_range(self, name: str, a: int, b: int):
        """Stream decoded bytes [a, b) as memoryviews, one chunk's worth at a time.

        Memory stays at one chunk whatever the tensor's size. A chunk is yielded only after
        its crc32c is checked and its frame decoded to exactly its size; a chunk that fails
        raises BpzFormatError from the iterator, after the earlier (correct) pieces: the
        output is then incomplete. A view kept alive keeps its chunk's memory: drop it
        before taking the next to stay at one chunk (plus the one being decoded).
        Limits are checked here, before the first chunk is read.
        """
        t, a, b = self._byte_range(name, a, b)
        if a < b:
            per_chunk = t.chunk_elems * t.itemsize
            self._check_chunk_budget(t, a // per_chunk, (b - 1) // per_chunk)
        return (piece for _, piece in self._pieces(t, a, b)) if a < b else iter(())

    def iter_rows(self, name: str, start: int, stop: int):
        """``iter_range`` over rows [start, stop)."""
        return self.iter_range(name, *self._row_range(name, start, stop))

    def read_to(self, name: str, out) -> int:
        """Write the tensor's decoded bytes to the binary file ``out`` chunk by chunk;
        return the byte count. On an error, what was written is incomplete."""
        return _write_all(self.iter_range(name, 0, self.tensor(name).nbytes), out, f"{self.path}: tensor {_show(name)}")

    def read_rows_to(self, name: str, start: int, stop: int, out) -> int:
        """``read_to`` for rows [start, stop)."""
        return _write_all(self.iter_rows(name, start, stop), out, f"{self.path}: tensor {_show(name)}")

    def to_numpy(self, name: str) -> np.ndarray:
        t = self.tensor(name)
        if t.dtype == "BOOL":  # any non-zero byte reads as true
            return (np.frombuffer(self.read(name), np.uint8) != 0).reshape(t.shape)
        if t.dtype in NUMPY_DTYPES:
            dtype = np.dtype(NUMPY_DTYPES[t.dtype])
        elif ml_dtypes is not None:
            dtype = np.dtype(getattr(ml_dtypes, ML_DTYPES[t.dtype]))
        else:
            dtype = np.dtype("<u2" if t.itemsize == 2 else "u1")
        return np.frombuffer(self.read(name), dtype).reshape(t.shape)

    def verify(self) -> None:
        """Full check: decode every chunk, and every padding byte of the data region is zero.

        Chunks are decoded one at a time, each within ``max_chunk_bytes``."""
        for t in self.tensors:
            for i in range(len(t.chunks)):
                self._decode_chunk(t, i, unfilter=False)  # filters cannot fail: no need to undo them
        spans = sorted((c.offset, c.offset + c.stored_length) for t in self.tensors for c in t.chunks)
        pos = SUPERBLOCK_SIZE
        for start, end in spans + [(self.index_offset, self.index_offset)]:
            for gap in range(pos, start, 1 << 20):
                piece = self._pread(gap, min(start, gap + (1 << 20)) - gap)
                if piece.strip(b"\0"):
                    at = gap + next(k for k, v in enumerate(piece) if v)
                    raise self._fail("corrupt_data", f"data region: padding byte at offset {at} is not zero")
            pos = max(pos, end)


def _write_all(pieces, out, where: str) -> int:
    total = 0
    for piece in pieces:
        total += len(piece)
        while piece:  # a raw (unbuffered) file may take part of a piece
            written = out.write(piece)
            if written == 0:
                raise BpzFormatError("io", f"{where}: the destination {out!r} accepted no bytes")
            piece = piece[len(piece) if written is None else written:]
    return total


# ---------------------------------------------------------------- index helpers
_JSON_STRING = re.compile(rb'"(?:[^"\\]+|\\.)*"', re.DOTALL)


def _json_depth(raw: bytes) -> int:
    """Deepest nesting of arrays and objects (the top-level object is depth 1)."""
    codes = np.frombuffer(_JSON_STRING.sub(b'""', raw), np.uint8)
    steps = np.isin(codes, (0x5B, 0x7B)).astype(np.int64) - np.isin(codes, (0x5D, 0x7D))
    return int(np.cumsum(steps).max(initial=0))


def _show(name: str) -> str:
    """A tensor name for a message, shortened if huge."""
    return repr(name) if len(name) <= 80 else repr(name[:60]) + f"... ({len(name)} characters)"


def _reject_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def _unique_keys(pairs):
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError(f"duplicate member in object with members {keys}")
    return dict(pairs)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _as_index(v: Any) -> int | None:
    """An API argument as an int (NumPy integers too), or None if it is not an integer."""
    if isinstance(v, bool):
        return None
    try:
        return operator.index(v)
    except TypeError:
        return None


def _typed_entry(e: Any, i: int, bad) -> dict:
    """Step 8's type checks of one tensor entry (all members required)."""
    where = f"tensor entry {i}"
    if not isinstance(e, dict):
        raise bad(f"{where} is not an object")
    for member in ("name", "dtype", "storage", "filter"):
        if not isinstance(e.get(member), str):
            raise bad(f"{where}: member {member!r} missing or not a string")
    where = f"tensor {_show(e['name'])}"
    shape = e.get("shape")
    if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
        raise bad(f"{where}: 'shape' is not an array of integers >= 0")
    if not _is_int(e.get("chunk_elems")) or e["chunk_elems"] < 0:
        raise bad(f"{where}: 'chunk_elems' is not a non-negative integer")
    chunks = e.get("chunks")
    if not isinstance(chunks, list) or not all(
            isinstance(c, list) and len(c) == 4 and all(_is_int(v) and v >= 0 for v in c) for c in chunks):
        raise bad(f"{where}: 'chunks' is not an array of [offset, stored_length, crc32c, encoded]")
    return e


_CONTAINERS = {"dict", "ordered_dict", "list", "tuple", "namedtuple"}


def _tree_tensor_refs(node: Any, bad):
    """Yield every tensor name a tree node refers to (section 8).

    Nodes of kinds this reader does not know are not descended into: the spec says they
    are reported when the tree is rebuilt, and this reader does not rebuild trees.
    """
    if not isinstance(node, dict):
        raise bad(f"tree: node {node!r} is not an object")
    if "tensor" in node:
        if not isinstance(node["tensor"], str):
            raise bad("tree: a tensor node's payload is not a string")
        yield node["tensor"]
        return
    if len(node) != 1 or next(iter(node)) not in _CONTAINERS:
        return  # a leaf, or a kind unknown to this reader
    kind, payload = next(iter(node.items()))
    if kind == "namedtuple":
        payload = payload.get("values") if isinstance(payload, dict) else None
    if not isinstance(payload, list):
        raise bad(f"tree: payload of a {kind!r} node is not an array")
    for child in payload:
        if kind in ("dict", "ordered_dict"):
            if not (isinstance(child, list) and len(child) == 2):
                raise bad(f"tree: an entry of a {kind!r} node is not a [key, node] pair")
            child = child[1]
        yield from _tree_tensor_refs(child, bad)


def _diagnose_magic(head: bytes) -> str:
    """Say which transfer mangled the magic, if one did (section 2)."""
    if head[:7] == b"\x89BPZ\n\x1a\n":
        return "bad magic: CRLF was turned into LF (a text-mode transfer)"
    if head[:9] == b"\x89BPZ\r\n\x1a\r\n" or head[:9] == b"\x89BPZ\r\r\n\x1a\r":
        return "bad magic: LF was turned into CRLF (a text-mode transfer)"
    if len(head) >= 8 and head[0] == 0x09 and head[1:8] == MAGIC[1:]:
        return "bad magic: the high bit of byte 0 was cleared (a 7-bit channel)"
    return f"bad magic {head[:8].hex(' ')}: not a bpz file"
