"""Small hostile legacy files that ask for far more memory than they hold, made at test time.

Each builder returns bytes (or writes a file) of at most a few MB; what they would expand to
is in the docstring. Shared by ``test_expansion_budget.py``; handy by hand for the attack corpus.
"""

from __future__ import annotations

import io
import pickle
from collections import OrderedDict
import struct
import zlib

import numpy as np

MiB = 2**20


class _ArrayStandIn:
    """Pickles as numpy's ``_reconstruct`` + BUILD with a *shared* bytes object: the pickler
    memoizes ``raw``, so every copy after the first costs a few bytes (a memo reference)."""

    def __init__(self, raw: bytes) -> None:
        self.raw = raw

    def __reduce__(self):
        from numpy._core.multiarray import _reconstruct  # numpy 2; the reader also accepts numpy 1's name
        return (_reconstruct, (np.ndarray, (0,), b"b"), (1, (len(self.raw),), np.dtype("u1"), False, self.raw))


class _Call:
    """Pickles as ``fn(arg)`` with ``arg`` memoized: each repeat is a memo reference plus REDUCE."""

    def __init__(self, fn, arg) -> None:
        self.fn, self.arg = fn, arg

    def __reduce__(self):
        return (self.fn, (self.arg,))


def pickle_memo_arrays(copies: int = 3000, raw_bytes: int = MiB) -> bytes:
    """~raw_bytes of pickle; ``copies`` arrays of raw_bytes each (3000 x 1 MiB = 3 GiB)."""
    raw = b"\x01" * raw_bytes
    return pickle.dumps([_ArrayStandIn(raw) for _ in range(copies)], protocol=4)


def pickle_constructor_copies(fn=list, copies: int = 100_000, items: int = 250_000) -> bytes:
    """~1.3 MB; ``copies`` calls of fn(one memoized list of ``items``): 100k x 2 MB = 200 GB."""
    big = dict.fromkeys(range(items), 0) if fn in (dict, OrderedDict) else [0] * items
    return pickle.dumps([big] + [_Call(fn, big) for _ in range(copies)], protocol=4)


def pickle_encode_copies(copies: int = 20_000, chars: int = MiB) -> bytes:
    """~1 MB; ``_codecs.encode(s, 'latin1')`` of one memoized 1 MiB str, ``copies`` times (20 GiB)."""
    s = "x" * chars
    out = io.BytesIO()
    p = pickle.Pickler(out, protocol=2)
    p.dump([s] + [_EncodeCall(s) for _ in range(copies)])
    return out.getvalue()


class _EncodeCall:
    def __init__(self, s: str) -> None:
        self.s = s

    def __reduce__(self):
        import codecs
        return (codecs.encode, (self.s, "latin1"))


def deep_pickle(depth: int = 100_000) -> bytes:
    """A list nested ``depth`` deep (C pickle builds it without recursion; walking it recurses)."""
    return b"\x80\x02" + b"]" * depth + b"a" * (depth - 1) + b"."


def deflated_npy(total: int, block: int = 16 * MiB) -> tuple[bytes, int, int]:
    """(raw deflate stream, size, CRC-32) of a .npy of ``total`` zero bytes of float64, in about
    total/1000 bytes and fast: full-flushed blocks hold no back-references, so one compressed
    block of zeros can be repeated."""
    assert total % block == 0
    header = npy_header((total // 8,))
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    stream = c.compress(header) + c.flush(zlib.Z_FULL_FLUSH)
    one = c.compress(b"\0" * block) + c.flush(zlib.Z_FULL_FLUSH)
    stream += one * (total // block) + c.flush(zlib.Z_FINISH)
    crc, zeros = zlib.crc32(header), b"\0" * block
    for _ in range(total // block):
        crc = zlib.crc32(zeros, crc)
    return stream, len(header) + total, crc


def npy_header(shape: tuple, descr: str = "<f8") -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": shape})
    return buf.getvalue()


def zip_archive(members: list[tuple[str, bytes, int, int, int]], point_all_at_first: bool = False) -> bytes:
    """A zip of (name, stored bytes, method, uncompressed size, crc) members, written by hand so
    the data can be pre-compressed. ``point_all_at_first``: every central entry names the first
    member's local header (members overlap: the classic non-recursive zip bomb)."""
    out, central, offsets = bytearray(), bytearray(), []
    for name, data, method, size, crc in members[:1] if point_all_at_first else members:
        offsets.append(len(out))
        nb = name.encode()
        out += struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, method, 0, 0, crc, len(data), size, len(nb), 0)
        out += nb + data
    for i, (name, data, method, size, crc) in enumerate(members):
        nb = name.encode() if not point_all_at_first else members[0][0].encode()
        central += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, method, 0, 0, crc, len(data), size,
                               len(nb), 0, 0, 0, 0, 0, offsets[0] if point_all_at_first else offsets[i]) + nb
    eocd = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(members), len(members), len(central), len(out), 0)
    return bytes(out + central + eocd)


def npz_deflate_bomb(total: int = 2**30, key: str = "z") -> bytes:
    """~1 MB .npz whose one member inflates to ``total`` bytes of float64 zeros (+ header)."""
    stream, size, crc = deflated_npy(total)
    return zip_archive([(key + ".npy", stream, 8, size, crc)])


def npz_overlapping(members: int = 200, member_bytes: int = 64 * MiB) -> bytes:
    """One deflated member that the central directory lists ``members`` times (200 x 64 MiB)."""
    stream, size, crc = deflated_npy(member_bytes)
    return zip_archive([("m.npy", stream, 8, size, crc)] * members, point_all_at_first=True)


def bp_empty_maps(count: int = 5_000_000) -> bytes:
    """A .bp of one msgpack array of ``count`` empty maps: 1 byte each in the file, a 64-byte
    dict each in memory (5 MB -> 350 MB)."""
    return b"\x81\xa1a\xdd" + count.to_bytes(4, "big") + b"\x80" * count
