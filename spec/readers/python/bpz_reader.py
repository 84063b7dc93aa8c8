"""An independent reader of the bpz archive format (1.0 and 1.1), written from spec/FORMAT.md alone.

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

Format 1.1 (section 16: binary index, versions appended in place) is read lazily: opening
reads the trailer and the index head (usually one read of the file's tail); looking a tensor
up binary-searches the sorted records, checking the crc of every record it visits; listing
(``tensors``, ``tree``, ``verify``) applies the whole-index rules of 16.5. ``open_archive(path,
version=k)`` opens version ``k`` (negative: counted from the latest); ``versions`` lists them;
``recovered`` reports an unfinished append that was skipped (16.7). BLAKE3, needed to check
the content hashes of 16.3, is written out below (checked against the official vectors).
"""
from __future__ import annotations

import json
import operator
import os
import re
import struct
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

import numpy as np
import zstandard

__all__ = ["BpzFormatError", "Archive", "TensorEntry", "Chunk", "VersionInfo", "Recovery", "open_archive",
           "crc32c", "blake3", "blake3_many", "DEFAULT_MAX_READ_BYTES"]

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

# ---------------------------------------------------------------- format 1.1 (section 16)
FEATURE_BINARY_INDEX = 1  # required feature bit 0
INDEX_MAGIC = b"BPZINDEX"
HEAD_FIXED, DIR_ENTRY, TENSOR_RECORD, CHUNK_RECORD, VERSION_RECORD = 96, 32, 64, 40, 48
MIN_INDEX_LENGTH = HEAD_FIXED + SUPERBLOCK_SIZE  # 160: the head without a directory
SECTIONS = {1: "versions", 2: "tensors", 3: "names", 4: "shapes", 5: "chunks", 6: "tree", 7: "metadata",
            8: "writer"}
REQUIRED_SECTIONS = (1, 2, 3, 4, 5, 6, 7)
DTYPE_CODES = {code: name for code, name in enumerate(
    ["BOOL", "U8", "U16", "U32", "U64", "I8", "I16", "I32", "I64", "F16", "BF16", "F32", "F64", "C64", "C128",
     "F8_E4M3", "F8_E5M2", "F8_E4M3FNUZ", "F8_E5M2FNUZ", "F8_E8M0"], start=1)}
FILTER_CODES = {0: "none", 1: "shuffle", 2: "delta_shuffle", 3: "bitpack"}
STORAGE_CODES = {0: "raw", 1: "chunked"}
_HEAD = struct.Struct("<8sQQQQQI44x")  # magic, version, time_ns, data_start, tensor_count, chunk_count, section_count
_DIR = struct.Struct("<IIQQII")  # kind, reserved, offset, length, crc, reserved
_TENSOR = struct.Struct("<QIIQQQIBBBBI8sI")  # see 16.2's tensor record table
_CHUNK = struct.Struct("<QQIB3s16s")  # offset, stored_length, crc32c, encoded, reserved, hash
_VERSION = struct.Struct("<QQQQQII")  # version, time_ns, data_start, index_offset, index_length, index_crc, reserved

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


# ---------------------------------------------------------------- BLAKE3 (section 16.3)
# The default (unkeyed) hash of the BLAKE3 specification, 32-byte output. Written out so that
# the reader needs no extra package; full 1024-byte chunks are compressed side by side with
# numpy (one array lane per chunk), so verifying large plain chunks runs at tens of MB/s.
_B3_IV = (0x6A09E667, 0xBB67AE85, 0x3C6EF372, 0xA54FF53A, 0x510E527F, 0x9B05688C, 0x1F83D9AB, 0x5BE0CD19)
_B3_CHUNK_START, _B3_CHUNK_END, _B3_PARENT, _B3_ROOT = 1, 2, 4, 8
_B3_LANES = ((0, 4, 8, 12), (1, 5, 9, 13), (2, 6, 10, 14), (3, 7, 11, 15),
             (0, 5, 10, 15), (1, 6, 11, 12), (2, 7, 8, 13), (3, 4, 9, 14))


def _b3_schedule() -> list[tuple[int, ...]]:
    """Message word order of each of the 7 rounds: the permutation applied r times."""
    permutation, order, rounds = (2, 6, 3, 10, 7, 0, 4, 13, 1, 11, 12, 5, 9, 14, 15, 8), list(range(16)), []
    for _ in range(7):
        rounds.append(tuple(order))
        order = [order[p] for p in permutation]
    return rounds


_B3_SCHEDULE = _b3_schedule()
_B3_VECTOR_MIN = 16  # below this many lanes, plain Python ints are faster than numpy arrays


def _b3_compress(cv, m, counter_lo, counter_hi, block_len, flags):
    """The compression function, truncated to the 8-word chaining value. Works on ints or on
    equal-length uint32 arrays (then every lane is an independent compression)."""
    mask = 0xFFFFFFFF
    v = list(cv) + list(_B3_IV[:4]) + [counter_lo, counter_hi, block_len, flags]
    for order in _B3_SCHEDULE:
        for k, (a, b, c, d) in enumerate(_B3_LANES):
            x, y = m[order[2 * k]], m[order[2 * k + 1]]
            va, vb, vc, vd = v[a], v[b], v[c], v[d]
            va = (va + vb + x) & mask
            vd = vd ^ va  # never in place: lanes may share arrays with the caller
            vd = ((vd >> 16) | (vd << 16)) & mask
            vc = (vc + vd) & mask
            vb = vb ^ vc
            vb = ((vb >> 12) | (vb << 20)) & mask
            va = (va + vb + y) & mask
            vd = vd ^ va
            vd = ((vd >> 8) | (vd << 24)) & mask
            vc = (vc + vd) & mask
            vb = vb ^ vc
            vb = ((vb >> 7) | (vb << 25)) & mask
            v[a], v[b], v[c], v[d] = va, vb, vc, vd
    return [v[i] ^ v[i + 8] for i in range(8)]


def _b3_chunk_cv(chunk, index: int, root: bool) -> list[int]:
    """Chaining value of one chunk (<= 1024 bytes; the empty input is one empty chunk)."""
    cv, blocks = _B3_IV, max(1, -(-len(chunk) // 64))
    for j in range(blocks):
        block = bytes(chunk[64 * j:64 * j + 64])
        flags = (_B3_CHUNK_START if j == 0 else 0) | (_B3_CHUNK_END if j == blocks - 1 else 0)
        flags |= _B3_ROOT if root and j == blocks - 1 else 0
        words = struct.unpack("<16I", block.ljust(64, b"\0"))
        cv = _b3_compress(cv, words, index & 0xFFFFFFFF, index >> 32, len(block), flags)
    return cv


def _b3_full_chunk_cvs(data, n: int) -> np.ndarray:
    """Chaining values (n x 8) of the first n full chunks of data, none of them the root."""
    if n < _B3_VECTOR_MIN:
        return np.array([_b3_chunk_cv(data[1024 * i:1024 * (i + 1)], i, False) for i in range(n)],
                        np.uint32).reshape(n, 8)
    words = np.frombuffer(data, "<u4", count=256 * n).reshape(n, 16, 16)  # chunk, block, word
    index = np.arange(n, dtype=np.uint64)
    lo, hi = (index & 0xFFFFFFFF).astype(np.uint32), (index >> 32).astype(np.uint32)
    cv = [np.full(n, w, np.uint32) for w in _B3_IV]
    for j in range(16):
        flags = (_B3_CHUNK_START if j == 0 else 0) | (_B3_CHUNK_END if j == 15 else 0)
        cv = _b3_compress(cv, [words[:, j, w] for w in range(16)], lo, hi, 64, flags)
    return np.stack(cv, axis=1)


def _b3_parents(cvs: np.ndarray) -> np.ndarray:
    """One level of the tree: neighbours paired into parents; an odd last one moves up as is,
    which builds the left-full tree of the specification."""
    pairs = len(cvs) // 2
    blocks = cvs[:2 * pairs].reshape(pairs, 16)
    if pairs >= _B3_VECTOR_MIN:
        out = np.stack(_b3_compress([np.full(pairs, w, np.uint32) for w in _B3_IV],
                                    [blocks[:, w] for w in range(16)], 0, 0, 64, _B3_PARENT), axis=1)
    else:
        out = np.array([_b3_compress(_B3_IV, row, 0, 0, 64, _B3_PARENT) for row in blocks.tolist()],
                       np.uint32).reshape(pairs, 8)
    return np.concatenate([out, cvs[2 * pairs:]])


def blake3(data: bytes | bytearray | memoryview, length: int = 32) -> bytes:
    """BLAKE3 hash (default mode) of data: its first ``length`` <= 32 bytes."""
    if not 0 <= length <= 32:
        raise ValueError("this BLAKE3 gives at most 32 bytes")
    data = memoryview(data).cast("B")
    chunks = max(1, -(-len(data) // 1024))
    if chunks == 1:
        out = _b3_chunk_cv(data, 0, True)
    else:
        last = _b3_chunk_cv(data[1024 * (chunks - 1):], chunks - 1, False)
        cvs = np.concatenate([_b3_full_chunk_cvs(data, chunks - 1), np.array([last], np.uint32)])
        while len(cvs) > 2:
            cvs = _b3_parents(cvs)
        out = _b3_compress(_B3_IV, cvs.reshape(16).tolist(), 0, 0, 64, _B3_PARENT | _B3_ROOT)
    return struct.pack("<8I", *(int(w) for w in out))[:length]


def blake3_many(messages: list, length: int = 32) -> list[bytes]:
    """``blake3`` of each message. Messages of one length up to 1024 bytes (one BLAKE3 chunk:
    what most tensor chunks of a verify are) are hashed side by side, one numpy lane each."""
    out: list = [None] * len(messages)
    by_length: dict[int, list[int]] = {}
    for i, m in enumerate(messages):
        by_length.setdefault(len(m), []).append(i)
    for n, rows in by_length.items():
        if n > 1024 or len(rows) < _B3_VECTOR_MIN:
            for i in rows:
                out[i] = blake3(messages[i], length)
            continue
        blocks = max(1, -(-n // 64))
        padded = np.zeros((len(rows), 64 * blocks), np.uint8)
        for r, i in enumerate(rows):
            padded[r, :n] = np.frombuffer(messages[i], np.uint8)
        words = padded.view("<u4").reshape(len(rows), blocks, 16)
        cv = [np.full(len(rows), w, np.uint32) for w in _B3_IV]
        for j in range(blocks):
            flags = (_B3_CHUNK_START if j == 0 else 0) | (_B3_CHUNK_END | _B3_ROOT if j == blocks - 1 else 0)
            cv = _b3_compress(cv, [words[:, j, w] for w in range(16)], 0, 0, min(64, n - 64 * j), flags)
        digests = np.stack(cv, axis=1).astype("<u4").tobytes()
        for r, i in enumerate(rows):
            out[i] = digests[32 * r:32 * r + length]
    return out


# ---------------------------------------------------------------- index model (section 7)
class Chunk(NamedTuple):
    offset: int
    stored_length: int
    crc32c: int
    encoded: int
    hash: bytes | None = None  # 1.1: first 16 bytes of BLAKE3 of the decoded bytes (16.3)


@dataclass(frozen=True)
class TensorEntry:
    name: str
    dtype: str
    shape: tuple[int, ...]
    storage: str
    filter: str
    chunk_elems: int
    chunks: list[Chunk]
    position: int | None = None  # 1.1: place in the order saved (16.2); listing follows it

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


@dataclass(frozen=True)
class VersionInfo:
    """One version of an archive (section 16.4). A 1.0 file has one, number 1, time 0."""
    number: int
    time_ns: int
    metadata: Any
    data_start: int
    index_offset: int
    index_length: int

    @property
    def bytes_added(self) -> int:  # 16.4: from data_start to the end of its trailer
        return self.index_offset + self.index_length + TRAILER_SIZE - self.data_start


@dataclass(frozen=True)
class Recovery:
    """An unfinished append that opening skipped (section 16.7): the file's committed part
    ends at ``committed_end``; the ``ignored_bytes`` after it belong to no version."""
    committed_end: int
    ignored_bytes: int
    reason: str


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
def open_archive(path: str | os.PathLike, version: int | None = None, **limits) -> Archive:
    """Open and validate ``path`` (``version``: which version, default the latest; negative
    counts from the latest); ``limits`` are Archive's keyword arguments."""
    return Archive(path, version=version, **limits)


class _NotCommitted(Exception):
    """A trailer that is not valid (end magic, crc, or not ending where its index says), or
    an index head that does not check: at the file's end the former means an unfinished
    append, recovered from (16.7)."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


class Archive:
    """An open bpz file. Every open-time check (section 10; 16.5 for 1.1) has passed once
    constructed.

    The limits bound the memory any call spends, whatever the file declares; a request
    over one raises ``BpzFormatError`` of kind ``limit_exceeded`` before allocating:

    * ``max_read_bytes``: the largest result of one ``read``/``read_rows``/``read_range``
      (default 1 GiB; ``None`` lifts it). Streaming (``iter_range``, ``read_to``, ...) is
      not subject to it.
    * ``max_chunk_bytes``: the largest chunk (decoded size) any call decodes, ``verify``
      and streaming included; an encoded chunk's stored size is capped at zstd's compress
      bound of it. Default and ceiling: the format's 256 MiB.
    * ``max_index_bytes``: the largest index (of any version) opened (default and ceiling:
      256 MiB). A 1.1 index is read in part, but its declared length is held to this too.

    ``version`` selects the version of a versioned (1.1) archive: ``None`` the latest, ``k``
    version number k, ``-1`` the latest, ``-2`` the one before it, ... A 1.0 file holds
    version 1 only. Attributes: ``version`` is the *format* version ``(major, minor)``;
    ``version_number``, ``time_ns`` describe the opened version; ``versions`` lists all;
    ``recovered`` is a ``Recovery`` when opening skipped an unfinished append, else None.
    """

    def __init__(self, path: str | os.PathLike, *, version: int | None = None,
                 max_read_bytes: int | None = DEFAULT_MAX_READ_BYTES,
                 max_chunk_bytes: int = MAX_CHUNK_BYTES, max_index_bytes: int = MAX_INDEX_BYTES):
        self.path = os.fspath(path)
        for what, value in (("max_read_bytes", max_read_bytes), ("max_chunk_bytes", max_chunk_bytes),
                            ("max_index_bytes", max_index_bytes)):
            if value is not None and not (_as_index(value) is not None and value >= 0):
                raise BpzFormatError("invalid_argument", f"{self.path}: {what} must be an integer >= 0, not {value!r}")
        if version is not None and (_as_index(version) is None or version == 0):
            raise BpzFormatError("invalid_argument", f"{self.path}: version must be a non-zero integer "
                                                     f"(negative counts from the latest) or None, not {version!r}")
        self.max_read_bytes = max_read_bytes
        self.max_chunk_bytes = MAX_CHUNK_BYTES if max_chunk_bytes is None else min(max_chunk_bytes, MAX_CHUNK_BYTES)
        self.max_index_bytes = MAX_INDEX_BYTES if max_index_bytes is None else min(max_index_bytes, MAX_INDEX_BYTES)
        self.recovered: Recovery | None = None
        self._tail = (0, b"")  # bytes read once at the file's end; later reads inside it are served from it
        try:
            self._file = open(self.path, "rb")
        except OSError as exc:
            raise self._fail("io", str(exc)) from None
        try:
            self.file_length = os.fstat(self._file.fileno()).st_size
            self._open(None if version is None else operator.index(version))
        except BaseException:
            self._file.close()
            raise

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> Archive:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _fail(self, kind: str, what: str) -> BpzFormatError:
        return BpzFormatError(kind, f"{self.path}: {what}")

    def _pread(self, offset: int, length: int) -> bytes:
        start, tail = self._tail
        if start <= offset and offset + length <= start + len(tail):
            return tail[offset - start:offset - start + length]
        try:
            self._file.seek(offset)
            data = self._file.read(length)
        except OSError as exc:
            raise self._fail("io", f"reading {length} bytes at offset {offset}: {exc}") from None
        if len(data) != length:
            raise self._fail("io", f"short read of {length} bytes at offset {offset}")
        return data

    # ---- section 10, "On open", steps 1-7
    def _open(self, version: int | None) -> None:
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
        if required & ~FEATURE_BINARY_INDEX:
            raise self._fail("unsupported_feature", f"superblock: unknown required feature bits "
                                                    f"{required & ~FEATURE_BINARY_INDEX:#010x}")
        if alignment & (alignment - 1) or not 16 <= alignment <= 4096:  # step 4
            raise self._fail("invalid_index", f"superblock: alignment {alignment} is not a power of two in [16, 4096]")
        self.version, self.alignment = (major, minor), alignment
        self.required_features, self.optional_features = required, optional
        self.superblock = head
        self.binary_index = bool(required & FEATURE_BINARY_INDEX)
        if self.binary_index:
            self._open_versioned(version)
            return

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
        self.index_offset, self.index_length = index_offset, index_length
        raw_index = self._pread(index_offset, index_length)
        if crc32c(raw_index) != int.from_bytes(trailer[16:20], "little"):  # step 7
            raise self._fail("checksum_mismatch", "index: crc32c mismatch")
        self._parse_index(raw_index)
        # 16.1: a file without bit 0 holds one version, number 1 (time unknown)
        self.version_number, self.time_ns, self.data_start, self._index = 1, 0, SUPERBLOCK_SIZE, None
        if version not in (None, 1, -1):
            raise self._fail("invalid_argument", f"no version {version}: this archive holds version 1 only")

    # ---- steps 8-10 (1.0: the JSON index)
    def _parse_index(self, raw: bytes) -> None:
        index = _parse_json(raw, "index", self._fail)  # step 8
        bad = lambda what: self._fail("invalid_index", f"index: {what}")  # noqa: E731
        if not isinstance(index, dict):
            raise bad("not a JSON object")
        if not isinstance(index.get("tensors"), list):
            raise bad("member 'tensors' missing or not an array")
        self._tree, self._metadata = index.get("tree"), index.get("metadata")
        if self._tree is not None and not isinstance(self._tree, dict):
            raise bad("member 'tree' is neither a node nor null")
        self._writer = index.get("writer")
        if self._writer is not None and not (isinstance(self._writer, dict) and all(
                isinstance(self._writer.get(k, ""), str) for k in ("name", "version"))):
            raise bad("member 'writer' is not {name: string, version: string}")
        entries = [_typed_entry(e, i, bad) for i, e in enumerate(index["tensors"])]

        if len(entries) > MAX_TENSORS:  # step 9
            raise self._fail("limit_exceeded", f"index: {len(entries)} tensors, over {MAX_TENSORS}")
        self._tensors = [self._check_tensor(e, self.index_offset) for e in entries]

        self._by_name: dict[str, TensorEntry] = {}  # step 10
        for t in self._tensors:
            if t.name in self._by_name:
                raise self._fail("invalid_index", f"tensor {_show(t.name)}: name used twice")
            self._by_name[t.name] = t
        spans = sorted((c.offset, c.offset + c.stored_length, t.name, i)
                       for t in self._tensors for i, c in enumerate(t.chunks) if c.stored_length)
        for (_, end, name, i), (start, _, name2, j) in zip(spans, spans[1:]):
            if start < end:
                raise self._fail("invalid_index", f"tensor {_show(name2)} chunk {j}: overlaps tensor {_show(name)} chunk {i}")
        if self._tree is not None:
            for ref in _tree_tensor_refs(self._tree, bad):
                if ref not in self._by_name:
                    raise bad(f"tree: tensor node names {_show(ref)}, which is not in the index")

    # ---- 1.1: the binary index and versions (section 16)
    def _trailer_at(self, end: int) -> tuple[int, int, int]:
        """The trailer ending at ``end`` as (index_offset, index_length, index_crc), or
        _NotCommitted if it is not a valid trailer for an index ending there (16.7)."""
        trailer = self._pread(end - TRAILER_SIZE, TRAILER_SIZE)
        if trailer[24:] != END_MAGIC:
            raise _NotCommitted("truncated", "the file does not end with BPZ_END")
        if crc32c(trailer[:20]) != int.from_bytes(trailer[20:24], "little"):
            raise _NotCommitted("checksum_mismatch", "trailer crc32c mismatch")
        index_offset, index_length, index_crc = struct.unpack("<QQI", trailer[:20])
        if index_offset + index_length + TRAILER_SIZE != end:
            raise _NotCommitted("invalid_index", f"index [{index_offset}, +{index_length}) does not end at the "
                                                 f"trailer at {end - TRAILER_SIZE}")
        return index_offset, index_length, index_crc

    def _committed_at(self, end: int) -> _BinaryIndex:
        """The version whose valid trailer ends at ``end`` (16.5 steps 1-4 checked): any
        failure raises its error (section 10 step 6, 16.5). The caller has checked the trailer."""
        index_offset, index_length, index_crc = self._trailer_at(end)
        where = f"trailer at {end - TRAILER_SIZE}"
        if end % 64:
            raise self._fail("invalid_index", f"{where}: ends at {end}, not a multiple of 64 (16.1)")
        if index_length > MAX_INDEX_BYTES:  # step 6
            raise self._fail("limit_exceeded", f"{where}: index of {index_length} bytes exceeds 256 MiB")
        self._check_index_budget(index_length)
        if index_offset < SUPERBLOCK_SIZE or index_length < MIN_INDEX_LENGTH:
            raise self._fail("invalid_index", f"{where}: index [{index_offset}, +{index_length}) starts before 64 "
                                              f"or is shorter than {MIN_INDEX_LENGTH} bytes")
        try:
            head = _read_head(self, index_offset, index_length, index_crc)
        except _NotCommitted as exc:
            raise self._fail(exc.kind, str(exc)) from None
        return _BinaryIndex(self, index_offset, index_length, head, latest_end=end)

    def _check_index_budget(self, index_length: int) -> None:
        if index_length > self.max_index_bytes:
            raise self._fail("limit_exceeded", f"index of {index_length} bytes is over this reader's "
                                               f"limit of {self.max_index_bytes} (max_index_bytes)")

    def _open_versioned(self, version: int | None) -> None:
        size = self.file_length
        if size < SUPERBLOCK_SIZE + TRAILER_SIZE:
            raise self._fail("truncated", f"trailer: file is {size} bytes, less than 96")
        tail_start = max(0, size - (64 << 10))  # the trailer and, usually, the head and versions: one read
        self._tail = (tail_start, self._pread(tail_start, size - tail_start))
        try:
            self._trailer_at(size)
        except _NotCommitted as exc:  # an unfinished append (16.7); a valid trailer is checked as is
            latest = self._recover(exc)
        else:
            latest = self._committed_at(size)
        self._latest = latest
        self._indexes = {latest.number: latest}
        records = latest.records
        numbers = [r.number for r in records] + [latest.number]
        if version is None:
            number = latest.number
        elif version < 0 and -version <= len(numbers):
            number = numbers[version]
        elif version > 0 and version in numbers:
            number = version
        else:
            raise self._fail("invalid_argument", f"no version {version}: this archive holds versions "
                                                 f"{', '.join(map(str, numbers))}")
        index = self._index_for(number)
        self._index = index
        self.version_number, self.time_ns, self.data_start = index.number, index.time_ns, index.data_start
        self.index_offset, self.index_length = index.index_offset, index.index_length

    def _recover(self, last: _NotCommitted) -> _BinaryIndex:
        """Section 16.7: the last offset p (a multiple of 64) where a committed version ends."""
        size, hi = self.file_length, self.file_length
        smallest_end = SUPERBLOCK_SIZE + MIN_INDEX_LENGTH + TRAILER_SIZE
        while hi > 0:  # backwards through the file in windows of 1 MiB, newest trailer first
            lo = max(0, hi - (1 << 20))
            window, limit = self._pread(lo, hi - lo), hi - lo
            while (at := window.rfind(END_MAGIC, 0, limit)) >= 0:
                limit = at + len(END_MAGIC) - 1
                end = lo + at + len(END_MAGIC)
                if end % 64 or end >= size or end < smallest_end:
                    continue
                try:  # a candidate whose trailer or head (16.5 steps 1-4) does not check is passed over
                    found = self._committed_at(end)
                except _NotCommitted:
                    continue
                except BpzFormatError as exc:
                    if exc.kind == "io" or "(max_index_bytes)" in str(exc):
                        raise  # the machine or this reader's cap, not the file: never a reason to fall back
                    continue
                self.recovered = Recovery(end, size - end, f"the last {size - end} bytes are an unfinished append "
                                                           f"({last}); version {found.number}, ending at {end}, "
                                                           f"is the last committed one")
                return found
            if lo == 0:
                break
            hi = lo + len(END_MAGIC) - 1  # a magic may straddle the window's start
        raise self._fail("truncated", f"no committed version: the file's end is not a committed trailer ({last}), "
                                      f"and no earlier one was found (16.7)")

    def _index_for(self, number: int) -> _BinaryIndex:
        """The index of version ``number`` (16.4), opened and checked against the latest's records."""
        if number in self._indexes:
            return self._indexes[number]
        records = self._latest.records
        k = next(k for k, r in enumerate(records) if r.number == number)
        r = records[k]
        self._check_index_budget(r.index_length)
        if r.index_length > MAX_INDEX_BYTES or r.index_length < MIN_INDEX_LENGTH:
            raise self._fail("invalid_index", f"version {number}: index length {r.index_length} outside "
                                              f"[{MIN_INDEX_LENGTH}, 256 MiB]")
        try:
            head = _read_head(self, r.index_offset, r.index_length, r.index_crc)
        except _NotCommitted as exc:
            raise self._fail(exc.kind, f"version {number}: {exc}") from None
        index = _BinaryIndex(self, r.index_offset, r.index_length, head, latest_end=None)
        if (index.number, index.time_ns, index.data_start) != (r.number, r.time_ns, r.data_start):
            raise self._fail("invalid_index", f"version {number}: its index says version {index.number}, time "
                                              f"{index.time_ns}, data from {index.data_start}; the latest index's "
                                              f"record says {r.number}, {r.time_ns}, {r.data_start}")
        if index.records != records[:k]:
            raise self._fail("invalid_index", f"version {number}: its versions section differs from the latest "
                                              f"index's records of the versions before it")
        self._indexes[number] = index
        return index

    # ---- what the opened version holds
    @property
    def tensors(self) -> list[TensorEntry]:
        """Every tensor, in the order saved. For a 1.1 file this is a listing (16.5): every
        section crc and whole-index rule is checked the first time."""
        return self._tensors if self._index is None else self._index.listing()

    @property
    def tree(self) -> Any:
        """The tree (section 8), or None. In 1.1 its tensor references are checked against the
        listing, so reading it lists the tensors."""
        if self._index is None:
            return self._tree
        self._index.listing()
        return self._index.json_section(6)

    @property
    def metadata(self) -> Any:
        """This version's metadata (in 1.1 read from its own section, no tensor record touched)."""
        return self._metadata if self._index is None else self._index.json_section(7)

    @property
    def writer(self) -> Any:
        return self._writer if self._index is None else self._index.json_section(8)

    @property
    def latest_version(self) -> int:
        return 1 if self._index is None else self._latest.number

    @property
    def versions(self) -> list[VersionInfo]:
        """Every version in the file, oldest first (each older one's index head and metadata
        section are read and checked)."""
        if self._index is None:
            return [VersionInfo(1, 0, self._metadata, SUPERBLOCK_SIZE, self.index_offset, self.index_length)]
        out = []
        for number in [r.number for r in self._latest.records] + [self._latest.number]:
            index = self._index_for(number)
            out.append(VersionInfo(number, index.time_ns, index.json_section(7), index.data_start,
                                   index.index_offset, index.index_length))
        return out

    def _check_tensor(self, e: dict, data_end: int) -> TensorEntry:
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
            if c.offset < SUPERBLOCK_SIZE or c.offset + c.stored_length > data_end:
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
        """A tensor's description, checked (in 1.1: found by binary search, 16.5)."""
        if self._index is not None:
            return self._index.find(name)
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

        For a 1.1 file, every version in the file (16.5 "Verify"): its index listed and its
        JSON sections parsed, every chunk's crc32c and content hash (BLAKE3 of the decoded
        bytes, 16.3; a chunk shared by several tensors or versions is checked once), the
        zero padding of its own data, and each older version's trailer. An unfinished append
        that opening skipped is not verified: ``recovered`` reports it.

        Chunks are decoded one at a time, each within ``max_chunk_bytes``."""
        if self._index is None:
            for t in self._tensors:
                for i in range(len(t.chunks)):
                    self._decode_chunk(t, i, unfilter=False)  # filters cannot fail: no need to undo them
            self._check_padding(self._tensors, SUPERBLOCK_SIZE, self.index_offset)
            return
        checked: set = set()
        for number in [r.number for r in self._latest.records] + [self._latest.number]:
            index = self._index_for(number)
            tensors = index.listing()
            for kind in (6, 7, 8):
                index.json_section(kind)
            end = index.index_offset + index.index_length + TRAILER_SIZE
            if index is not self._latest:
                try:
                    trailer = self._trailer_at(end)
                except _NotCommitted as exc:
                    raise self._fail(exc.kind, f"trailer of version {number}: {exc}") from None
                record = next(r for r in self._latest.records if r.number == number)
                if trailer != (record.index_offset, record.index_length, record.index_crc):
                    raise self._fail("invalid_index", f"trailer of version {number} differs from its versions record")
            pending: list = []  # decoded chunks whose hashes are computed together (blake3_many)
            batch_bytes = 0
            for t in tensors:
                for i, c in enumerate(t.chunks):
                    key = (c, t.filter, t.itemsize, t.chunk_elements(i))
                    if key in checked:
                        continue
                    pending.append((t, i, key, self._decode_chunk(t, i)))
                    batch_bytes += len(pending[-1][3])
                    if len(pending) >= 4096 or batch_bytes >= 4 << 20:  # memory: about 4 MiB and one chunk
                        self._check_hashes(pending, number, checked)
                        batch_bytes = 0
            self._check_hashes(pending, number, checked)
            self._check_padding(tensors, index.data_start, index.index_offset, f"version {number}: ")

    def _check_hashes(self, pending: list, number: int, checked: set) -> None:
        """16.3: each pending (tensor, chunk index, key, decoded bytes) has its hash; empties pending."""
        for (t, i, key, _), digest in zip(pending, blake3_many([p[3] for p in pending], 16)):
            if digest != key[0].hash:
                raise self._fail("checksum_mismatch", f"version {number}, tensor {_show(t.name)} chunk {i}: "
                                                      f"BLAKE3 {digest.hex()} of its decoded bytes, index "
                                                      f"says {key[0].hash.hex()}")
            checked.add(key)
        pending.clear()

    def _check_padding(self, tensors: list[TensorEntry], start: int, stop: int, where: str = "") -> None:
        """Bytes of [start, stop) that no chunk of ``tensors`` covers must be zero (section 4)."""
        spans = sorted((c.offset, c.offset + c.stored_length) for t in tensors for c in t.chunks)
        pos = start
        for lo, hi in spans + [(stop, stop)]:
            lo, hi = max(lo, start), min(hi, stop)
            for gap in range(pos, lo, 1 << 20):
                piece = self._pread(gap, min(lo, gap + (1 << 20)) - gap)
                if piece.strip(b"\0"):
                    at = gap + next(k for k, v in enumerate(piece) if v)
                    raise self._fail("corrupt_data", f"{where}data region: padding byte at offset {at} is not zero")
            pos = max(pos, hi)


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


class _VersionRecord(NamedTuple):  # one record of the versions section (16.4)
    number: int
    time_ns: int
    data_start: int
    index_offset: int
    index_length: int
    index_crc: int


def _read_head(ar: Archive, index_offset: int, index_length: int, index_crc: int) -> bytes:
    """The head of the index at index_offset (16.5 step 1), checked against the trailer's crc.
    A head that does not check is _NotCommitted: the caller decides whether that is an
    unfinished append (at the file's end) or an error."""
    fixed = ar._pread(index_offset, HEAD_FIXED)
    section_count = _HEAD.unpack(fixed)[6]
    if not 7 <= section_count <= 64:
        raise _NotCommitted("invalid_index", f"index at {index_offset}: section_count {section_count} outside 7-64")
    head_length = HEAD_FIXED + SUPERBLOCK_SIZE + DIR_ENTRY * section_count
    if head_length > index_length:
        raise _NotCommitted("invalid_index", f"index at {index_offset}: head of {head_length} bytes is longer than "
                                             f"the index ({index_length})")
    head = fixed + ar._pread(index_offset + HEAD_FIXED, head_length - HEAD_FIXED)
    if crc32c(head) != index_crc:
        raise _NotCommitted("checksum_mismatch", f"index at {index_offset}: head crc32c mismatch")
    if head[:8] != INDEX_MAGIC:  # the crc checks: a committed head that is not an index head
        raise ar._fail("invalid_index", f"index at {index_offset}: index magic {head[:8]!r}, not {INDEX_MAGIC!r}")
    return head


class _BinaryIndex:
    """The binary index of one version (16.2), read in part: the head on construction (16.5
    steps 2-4), tensor records on lookup, whole sections on listing."""

    def __init__(self, ar: Archive, index_offset: int, index_length: int, head: bytes, latest_end: int | None):
        self.ar, self.index_offset, self.index_length = ar, index_offset, index_length
        (_, self.number, self.time_ns, self.data_start, self.tensor_count, self.chunk_count,
         section_count) = _HEAD.unpack(head[:HEAD_FIXED])
        fail = self._fail
        if head[HEAD_FIXED:HEAD_FIXED + SUPERBLOCK_SIZE] != ar.superblock:  # step 2
            raise fail("invalid_index", "the superblock copy differs from the file's superblock")
        if self.number < 1:
            raise fail("invalid_index", "version number 0")
        if self.data_start < SUPERBLOCK_SIZE or self.index_offset < self.data_start:
            raise fail("invalid_index", f"data_start {self.data_start} outside [64, index offset {index_offset}]")
        if self.tensor_count > MAX_TENSORS:  # step 3
            raise fail("limit_exceeded", f"{self.tensor_count} tensors, over {MAX_TENSORS}")
        self.sections: dict[int, tuple[int, int, int]] = {}
        for i in range(section_count):
            kind, _, offset, length, crc, _ = _DIR.unpack_from(head, HEAD_FIXED + SUPERBLOCK_SIZE + DIR_ENTRY * i)
            if kind not in SECTIONS:
                continue  # a kind of a later minor version: ignored
            if kind in self.sections:
                raise fail("invalid_index", f"section {SECTIONS[kind]} listed twice")
            if offset < len(head) or offset + length > index_length:
                raise fail("invalid_index", f"section {SECTIONS[kind]} [{offset}, +{length}) outside "
                                            f"[{len(head)}, {index_length})")
            self.sections[kind] = (offset, length, crc)
        missing = [SECTIONS[k] for k in REQUIRED_SECTIONS if k not in self.sections]
        if missing:
            raise fail("invalid_index", f"required section(s) {', '.join(missing)} missing")
        spans = sorted((o, o + n, SECTIONS[k]) for k, (o, n, _) in self.sections.items() if n)
        for (_, end, a), (start, _, b) in zip(spans, spans[1:]):
            if start < end:
                raise fail("invalid_index", f"sections {a} and {b} overlap")
        for kind, size, what in ((2, self.tensor_count * TENSOR_RECORD, f"{self.tensor_count} x 64"),
                                 (5, self.chunk_count * CHUNK_RECORD, f"{self.chunk_count} x 40")):
            if self.sections[kind][1] != size:
                raise fail("invalid_index", f"section {SECTIONS[kind]} is {self.sections[kind][1]} bytes, not {what}")
        for kind, unit in ((1, VERSION_RECORD), (4, 8)):
            if self.sections[kind][1] % unit:
                raise fail("invalid_index", f"section {SECTIONS[kind]} is {self.sections[kind][1]} bytes, "
                                            f"not a multiple of {unit}")
        self._loaded: dict[int, bytes] = {}
        self._json: dict[int, Any] = {}
        self._found: dict[str, TensorEntry] = {}
        self._listing: list[TensorEntry] | None = None
        raw = self._load(1)  # step 4
        self.records = [_VersionRecord(*_VERSION.unpack_from(raw, o)[:6]) for o in range(0, len(raw), VERSION_RECORD)]
        self._check_chain()

    def _fail(self, kind: str, what: str) -> BpzFormatError:
        return self.ar._fail(kind, f"index of version {self.number} (at {self.index_offset}): {what}")

    def _check_chain(self) -> None:
        """16.4: records oldest first, each ending (trailer included) at a multiple of 64 no
        later than where the next version's data starts."""
        fail, previous = self._fail, 0
        if not self.records and self.data_start != SUPERBLOCK_SIZE:
            raise fail("invalid_index", f"the only version's data starts at {self.data_start}, not 64")
        for k, r in enumerate(self.records):
            next_start = self.records[k + 1].data_start if k + 1 < len(self.records) else self.data_start
            where = f"versions record {k} (version {r.number})"
            if k == 0 and r.data_start != SUPERBLOCK_SIZE:
                raise fail("invalid_index", f"{where}: the first version's data starts at {r.data_start}, not 64")
            if r.number <= previous:
                raise fail("invalid_index", f"{where}: version numbers do not increase ({previous}, then {r.number})")
            end = r.index_offset + r.index_length + TRAILER_SIZE
            if r.data_start > r.index_offset or end % 64 or end > next_start:
                raise fail("invalid_index", f"{where}: data from {r.data_start}, index [{r.index_offset}, "
                                            f"+{r.index_length}), trailer ending at {end}: not before the next "
                                            f"version's data at {next_start}, or not ending at a multiple of 64")
            previous = r.number
        if previous >= self.number:
            raise fail("invalid_index", f"an earlier version is numbered {previous}, not below {self.number}")

    # ---- section bytes
    def _load(self, kind: int) -> bytes:
        """A whole section, its crc checked (cached)."""
        if kind not in self._loaded:
            offset, length, crc = self.sections[kind]
            raw = self.ar._pread(self.index_offset + offset, length)
            if crc32c(raw) != crc:
                raise self._fail("checksum_mismatch", f"section {SECTIONS[kind]}: crc32c mismatch")
            self._loaded[kind] = raw
        return self._loaded[kind]

    def _part(self, kind: int, offset: int, length: int) -> bytes:
        """Bytes [offset, +length) of a section (the caller checked the range): from the
        loaded section if there is one, else read on their own (a lookup)."""
        if kind in self._loaded:
            return self._loaded[kind][offset:offset + length]
        return self.ar._pread(self.index_offset + self.sections[kind][0] + offset, length)

    def json_section(self, kind: int) -> Any:
        """tree (6), metadata (7) or writer (8): crc and JSON checked when first read."""
        if kind not in self._json:
            if kind not in self.sections:  # only the writer is optional
                self._json[kind] = None
                return None
            what = f"index of version {self.number}: section {SECTIONS[kind]}"
            value = _parse_json(self._load(kind), what, self.ar._fail)
            if kind == 6 and value is not None and not isinstance(value, dict):
                raise self._fail("invalid_index", "section tree is neither a node nor null")
            if kind == 8 and not (isinstance(value, dict) and all(isinstance(value.get(k), str)
                                                                 for k in ("name", "version"))):
                raise self._fail("invalid_index", "section writer is not {name: string, version: string}")
            self._json[kind] = value
        return self._json[kind]

    # ---- tensor records (16.2, per-tensor rules of 16.5)
    def _visit(self, i: int):
        """Record i with its name and shape, after the checks that need nothing else: the
        record's crc (so that a corrupt record never steers a binary search), ranges,
        reserved bytes, the name's encoding."""
        rec = self._part(2, TENSOR_RECORD * i, TENSOR_RECORD)
        fields = _TENSOR.unpack(rec)
        name_offset, name_length, position, shape_offset, rank = fields[0], fields[1], fields[2], fields[3], fields[10]
        where = f"tensor record {i}"
        if name_offset + name_length > self.sections[3][1]:
            raise self._fail("invalid_index", f"{where}: name [{name_offset}, +{name_length}) outside section names")
        if name_length > MAX_NAME_BYTES:
            raise self._fail("limit_exceeded", f"{where}: name of {name_length} bytes, over {MAX_NAME_BYTES}")
        if 8 * (shape_offset + rank) > self.sections[4][1]:
            raise self._fail("invalid_index", f"{where}: shape [{shape_offset}, +{rank}) outside section shapes")
        name_bytes = self._part(3, name_offset, name_length)
        shape_bytes = self._part(4, 8 * shape_offset, 8 * rank)
        if crc32c(rec[:60] + name_bytes + shape_bytes) != fields[13]:
            raise self._fail("checksum_mismatch", f"{where}: record crc32c mismatch")
        if fields[12] != bytes(8):
            raise self._fail("invalid_index", f"{where}: reserved bytes not zero")
        try:
            name = name_bytes.decode("utf-8")
        except UnicodeDecodeError:
            raise self._fail("invalid_index", f"{where}: name is not UTF-8") from None
        if "\0" in name:
            raise self._fail("invalid_index", f"{where}: NUL in the name {_show(name)}")
        if position >= self.tensor_count:
            raise self._fail("invalid_index", f"{where}: position {position}, not below {self.tensor_count}")
        return fields, name_bytes, name, struct.unpack(f"<{rank}Q", shape_bytes)

    def _entry(self, i: int, visited=None) -> TensorEntry:
        """Tensor i, with every per-tensor rule of 16.5 (then section 10 step 9) checked."""
        fields, _, name, shape = visited or self._visit(i)
        (_, _, position, _, chunk_elems, first_chunk, chunk_count, dtype, storage, filter_code, _, chunks_crc,
         _, _) = fields
        if name in self._found:
            return self._found[name]
        fail = lambda kind, what: self._fail(kind, f"tensor {_show(name)}: {what}")  # noqa: E731
        if first_chunk + chunk_count > self.chunk_count:
            raise fail("invalid_index", f"chunks [{first_chunk}, +{chunk_count}) outside section chunks "
                                        f"({self.chunk_count} records)")
        raw = self._part(5, CHUNK_RECORD * first_chunk, CHUNK_RECORD * chunk_count)
        if crc32c(raw) != chunks_crc:
            raise fail("checksum_mismatch", "its chunk records' crc32c (chunks_crc) mismatch")
        chunks = []
        for j in range(chunk_count):
            offset, stored_length, crc, encoded, reserved, digest = _CHUNK.unpack_from(raw, CHUNK_RECORD * j)
            if reserved != bytes(3):
                raise fail("invalid_index", f"chunk {j}: reserved bytes not zero")
            chunks.append([offset, stored_length, crc, encoded, digest])
        entry = {"name": name, "shape": list(shape), "chunk_elems": chunk_elems, "chunks": chunks,
                 "dtype": DTYPE_CODES.get(dtype, f"code {dtype}"),
                 "storage": STORAGE_CODES.get(storage, f"code {storage}"),
                 "filter": FILTER_CODES.get(filter_code, f"code {filter_code}")}
        t = replace(self.ar._check_tensor(entry, self.index_offset), position=position)
        self._found[name] = t
        return t

    def find(self, name: str) -> TensorEntry:
        """Binary search of the records sorted by name: O(log n) records read and checked."""
        if name in self._found:
            return self._found[name]
        try:
            target = name.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate names no tensor
            target = None
        lo, hi = 0, self.tensor_count if target is not None else 0
        while lo < hi:
            mid = (lo + hi) // 2
            visited = self._visit(mid)
            if visited[1] == target:
                return self._entry(mid, visited)
            if visited[1] < target:  # bytes compare as unsigned numbers, a prefix first (16.2)
                lo = mid + 1
            else:
                hi = mid
        raise self.ar._fail("tensor_not_found", f"no tensor named {_show(name)} in version {self.number}")

    def listing(self) -> list[TensorEntry]:
        """Every tensor in the order saved, with the whole-index rules of 16.5 checked."""
        if self._listing is not None:
            return self._listing
        for kind in (2, 3, 4, 5):
            self._load(kind)
        entries, previous = [], None
        for i in range(self.tensor_count):
            visited = self._visit(i)
            entries.append(self._entry(i, visited))
            if previous is not None and visited[1] <= previous:
                raise self._fail("invalid_index", f"tensor record {i}: names not in strictly increasing order "
                                                  f"({_show(entries[-2].name)}, then {_show(entries[-1].name)})")
            previous = visited[1]
        if sorted(t.position for t in entries) != list(range(self.tensor_count)):
            raise self._fail("invalid_index", "tensor positions are not a permutation of 0..tensor_count-1")
        raw = self._load(5)
        spans = sorted({(o, o + n) for o, n in (struct.unpack_from("<QQ", raw, CHUNK_RECORD * j)
                                                 for j in range(self.chunk_count)) if n})
        reach = 0
        for start, end in spans:  # equal ranges are one shared chunk (a set keeps one); others must not overlap
            if start < reach:
                raise self._fail("invalid_index", f"chunk records overlap: [{start}, {end}) starts before {reach}")
            reach = max(reach, end)
        tree = self.json_section(6)
        if tree is not None:
            names = {t.name for t in entries}
            bad = lambda what: self._fail("invalid_index", what)  # noqa: E731
            for ref in _tree_tensor_refs(tree, bad):
                if ref not in names:
                    raise bad(f"tree: tensor node names {_show(ref)}, which is not in the index")
        self._listing = sorted(entries, key=lambda t: t.position)
        return self._listing


# ---------------------------------------------------------------- index helpers
_JSON_STRING = re.compile(rb'"(?:[^"\\]+|\\.)*"', re.DOTALL)


def _parse_json(raw: bytes, what: str, fail) -> Any:
    """JSON text under section 7's rules: nesting over 128 is limit_exceeded; not UTF-8, not
    JSON, a BOM, NaN/Infinity, a number out of range, a lone surrogate escape or a member
    twice is invalid_index."""
    depth = _json_depth(raw)
    if depth > MAX_JSON_DEPTH:
        raise fail("limit_exceeded", f"{what}: JSON nested {depth} deep, over {MAX_JSON_DEPTH}")
    try:
        text = raw.decode("utf-8")
        value = json.loads(text, parse_constant=_reject_constant, object_pairs_hook=_unique_keys)
        json.dumps(value, ensure_ascii=False).encode("utf-8")  # a lone surrogate escape decodes, cannot encode
        _reject_infinite(value)
    except (UnicodeError, ValueError) as exc:  # JSONDecodeError is a ValueError
        raise fail("invalid_index", f"{what}: not valid UTF-8 JSON ({exc})") from None
    return value


def _reject_infinite(value: Any) -> None:
    """1e400 parses to inf in Python: section 7 makes a number outside binary64 invalid."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, float) and v in (float("inf"), float("-inf")):
            raise ValueError("a number outside the binary64 range")
        if isinstance(v, dict):
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)


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
