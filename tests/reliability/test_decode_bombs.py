"""Decode-time bombs: a valid 8 MiB archive of 1,024 chunks of 256 MiB of zeros (every
checksum right) declares 256 GiB. Opening, listing and ``verify()`` cost time in proportion
to the file (checksums, no decoding); ``verify(decode=True)`` is refused past its budget
with a LimitExceededError before decoding anything; loading is refused before allocating
when the declared size exceeds the memory left — never minutes of work or an OOM kill.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import time

import pytest

import bpz
from bpz.errors import LimitExceededError

zstandard = pytest.importorskip("zstandard")

CHUNK = 256 << 20
CHUNKS = 1024


def _crc32c(data: bytes) -> int:
    # The bpz reader's own crc would do, but the test builds the file independently.
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    c = 0xFFFFFFFF
    for b in data:
        c = table[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


@pytest.fixture(scope="module")
def bomb(tmp_path_factory) -> str:
    """1,024 tensors of one 256 MiB chunk of zeros, each its own copy of the frame."""
    frame = zstandard.ZstdCompressor(level=19).compress(b"\0" * CHUNK)
    crc = _crc32c(frame)
    sb = bytearray(64)
    sb[0:8] = b"\x89BPZ\r\n\x1a\n"
    struct.pack_into("<HHIII", sb, 8, 1, 0, 0, 0, 64)
    sb[60:64] = struct.pack("<I", _crc32c(bytes(sb[:60])))
    data = bytearray(sb)
    tensors = []
    for i in range(CHUNKS):
        tensors.append({"name": f"t{i}", "dtype": "U8", "shape": [CHUNK], "storage": "chunked", "filter": "none",
                        "chunk_elems": CHUNK, "chunks": [[len(data), len(frame), crc, 1]]})
        data += frame
    index = json.dumps({"tensors": tensors}, separators=(",", ":")).encode()
    head = struct.pack("<QQI", len(data), len(index), _crc32c(index))
    data += index + head + struct.pack("<I", _crc32c(head)) + b"BPZ_END\n"
    path = str(tmp_path_factory.mktemp("bomb") / "bomb.bpz")
    with open(path, "wb") as f:
        f.write(data)
    return path


def _timed(limit: float, fn):
    t0 = time.perf_counter()
    out = fn()
    assert time.perf_counter() - t0 < limit, f"took {time.perf_counter() - t0:.1f} s"
    return out


def test_verify_checks_checksums_and_refuses_to_decode_past_the_budget(bomb):
    with _timed(5, lambda: bpz.open(bomb)) as a:
        assert sum(i.nbytes for i in a.infos()) == CHUNKS * CHUNK
        assert a.file_size < 10 << 20
        report = _timed(20, a.verify)  # before: 256 GiB decoded, minutes
        assert report["decoded"] is False and report["chunks"] == CHUNKS
        assert a.default_decode_budget == 4 << 30
        with pytest.raises(LimitExceededError) as e:
            _timed(5, lambda: a.verify(decode=True))
        assert bomb in str(e.value) and "max_decoded_bytes" in str(e.value) and str(CHUNKS * CHUNK) in str(e.value)
        # Within a budget: one tensor, or an explicit budget.
        assert _timed(20, lambda: a.verify("t5", decode=True))["decoded"] is True
        with pytest.raises(LimitExceededError):
            a.verify("t5", decode=True, max_decoded_bytes=CHUNK - 1)


CHILD = r"""
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))
import bpz
from bpz.errors import LimitExceededError
path = sys.argv[1]
for what, fn in [("load", lambda: bpz.open(path).load()), ("load_pytree", lambda: bpz.load_pytree(path)),
                 ("read_many", lambda: bpz.open(path)._native().read_many(["t%d" % i for i in range(64)]))]:
    try:
        fn()
        print(what, "loaded")
    except LimitExceededError as e:
        print(what, "refused", path in str(e))
"""


def test_loading_a_bomb_is_refused_before_allocating(bomb):
    """Under a 4 GiB address-space limit (so the result does not depend on this machine)."""
    out = subprocess.run([sys.executable, "-c", CHILD, bomb], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split("\n")[:3] == ["load refused True", "load_pytree refused True", "read_many refused True"], out


def test_the_cli_lists_and_verifies_a_bomb_quickly(bomb):
    """``bpz verify`` checks checksums by default; one budget covers a whole-file decode
    (tensor-by-tensor decoding, each within a budget, would decode all 256 GiB)."""
    for args in (["ls", bomb], ["info", bomb], ["verify", bomb]):
        t0 = time.perf_counter()
        out = subprocess.run([sys.executable, "-m", "bpz", *args], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert time.perf_counter() - t0 < 30, args
    assert f"{CHUNKS} tensors" in out.stdout and "checked in" in out.stdout, out.stdout
    # --decode: one budget (default 4 GiB here) for the whole file, refused before decoding anything.
    for extra in ([], ["--max-decoded-bytes", str(CHUNKS * CHUNK - 1)]):
        t0 = time.perf_counter()
        out = subprocess.run([sys.executable, "-m", "bpz", "verify", "--decode", *extra, bomb], capture_output=True,
                             text=True, timeout=60)
        assert time.perf_counter() - t0 < 30, extra
        lines = out.stderr.splitlines()
        assert out.returncode == 1 and len(lines) == 1 and lines[0].startswith(f"bpz verify: {bomb}: "), out.stderr
        assert "--max-decoded-bytes" in lines[0] and str(CHUNKS * CHUNK) in lines[0], lines
