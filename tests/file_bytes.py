"""Comparing archive files byte for byte although a format-1.1 file records when it was written."""

from __future__ import annotations

import struct

INDEX_MAGIC = b"BPZINDEX"
TIME_AT = 16  # time_ns in the index head (spec §16.2)


def without_write_time(data: bytes) -> bytes:
    """``data`` with the latest version's ``time_ns`` and the checksums covering it (the head
    crc in the trailer, the trailer's own crc) zeroed, so that two saves of the same content
    compare equal. A 1.0 file (JSON index, no time) is returned unchanged."""
    index_offset, index_length = struct.unpack_from("<QQ", data, len(data) - 32)
    if data[index_offset:index_offset + 8] != INDEX_MAGIC:
        return data
    out = bytearray(data)
    out[index_offset + TIME_AT:index_offset + TIME_AT + 8] = bytes(8)
    out[len(data) - 16:len(data) - 8] = bytes(8)  # index_crc, trailer_crc
    return bytes(out)
