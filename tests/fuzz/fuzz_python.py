#!/usr/bin/env python3
"""atheris harness for bpz's Python entry points (run it through ``tests/fuzz/run.sh``).

Each input is one mode byte and a payload, written to a temporary file and read with:

* ``0`` — the bytes as an archive: ``bpz.open`` + ``load()`` + ``verify()`` and ``bpz.load_pytree``;
* ``1`` — the same after setting the magic, end marker and every checksum right (so the
  mutations reach index validation, the tree and the chunks);
* ``2`` — the payload as the JSON ``tree`` of an otherwise valid archive (tensors ``x`` and
  ``y``), through ``load_pytree`` (the tree rebuilder of ``bpz.pytree``);
* ``3`` — a BrainPy ``.bp`` (msgpack) file: ``bpz._legacy.read_bp`` and ``bpz.load_pytree``;
* ``4`` — a legacy pickle: ``bpz._legacy.load_pickle``.

Expected exceptions: bpz errors (``bpz.errors.BpzError``), ``OSError``, ``ValueError``,
``TypeError`` (and ``MemoryError`` from the 4 GiB address-space limit set here, for files
that legitimately declare huge tensors). Anything else is a finding and stops the run.

    python tests/fuzz/fuzz_python.py --make-seeds DIR     # seed corpus from the repository
    python tests/fuzz/fuzz_python.py CORPUS_DIR -max_total_time=60
"""

from __future__ import annotations

import atexit
import json
import os
import resource
import struct
import sys
import tempfile

import atheris

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
MAX_DECODED = 64 << 20  # tensors declaring more are not loaded (valid files may declare 2^53 bytes)

with atheris.instrument_imports(include=["bpz"]):
    import bpz
    import bpz.pytree
    import bpz.read
    from bpz._legacy import load_pickle, read_bp

EXPECTED = (bpz.errors.BpzError, OSError, ValueError, TypeError, MemoryError)

# ------------------------------------------------------------------ checksums (spec §1)
_T = []
for _i in range(256):
    _c = _i
    for _ in range(8):
        _c = (_c >> 1) ^ 0x82F63B78 if _c & 1 else _c >> 1
    _T.append(_c)


def crc32c(data: bytes) -> int:
    c = 0xFFFFFFFF
    for b in data:
        c = _T[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


MAGIC = b"\x89BPZ\r\n\x1a\n"
END = b"BPZ_END\n"


def trailer(off: int, length: int, crc: int) -> bytes:
    t = struct.pack("<QQI", off, length, crc)
    return t + struct.pack("<I", crc32c(t)) + END


def fix_checksums(data: bytes) -> bytes:
    """The Python twin of rust/bpz/fuzz/fuzz_targets/read_fixed_checksums.rs."""
    if len(data) < 96:
        return data
    b = bytearray(data)
    b[:8] = MAGIC
    b[60:64] = struct.pack("<I", crc32c(bytes(b[:60])))
    t = len(b) - 32
    b[t + 24:] = END
    off, ln = struct.unpack_from("<QQ", b, t)
    if off >= 64 and off + ln == t:
        index = bytes(b[off:off + ln])
        try:
            v = json.loads(index)
            for tensor in v.get("tensors", []):
                for c in tensor.get("chunks", []):
                    o, n = c[0], c[1]
                    if isinstance(o, int) and isinstance(n, int) and 0 <= o and o + n <= len(b):
                        c[2] = crc32c(bytes(b[o:o + n]))
            index = json.dumps(v, separators=(",", ":")).encode()
        except Exception:  # noqa: BLE001 - any index that does not parse stays as it is
            pass
        return bytes(b[:off]) + index + trailer(off, len(index), crc32c(index))
    b[t + 20:t + 24] = struct.pack("<I", crc32c(bytes(b[t:t + 20])))
    return bytes(b)


def archive_with_tree(tree_text: bytes) -> bytes:
    """A valid archive (raw ``x``, chunked ``y``) whose index carries ``tree_text`` as its tree."""
    data = b"\1\2\3\4" + b"\0" * 60 + b"\7\7"
    text = tree_text.decode("utf-8", "replace")
    index = ('{"tensors":[{"name":"x","dtype":"U8","shape":[4],"storage":"raw","filter":"none","chunk_elems":4,'
             f'"chunks":[[64,4,{crc32c(data[:4])},0]]}},{{"name":"y","dtype":"I8","shape":[2],"storage":"chunked",'
             f'"filter":"none","chunk_elems":2,"chunks":[[128,2,{crc32c(data[64:])},0]]}}],"tree":{text}}}').encode()
    head = bytearray(64)
    head[:8] = MAGIC
    struct.pack_into("<HHIII", head, 8, 1, 0, 0, 0, 64)
    head[60:64] = struct.pack("<I", crc32c(bytes(head[:60])))
    off = 64 + len(data)
    return bytes(head) + data + index + trailer(off, len(index), crc32c(index))


# ------------------------------------------------------------------ the target
WORK = tempfile.mkdtemp(prefix="bpz-fuzz-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
atexit.register(lambda: [os.remove(os.path.join(WORK, n)) for n in os.listdir(WORK)] and os.rmdir(WORK))


def read_archive(path: str) -> None:
    try:
        with bpz.open(path) as a:
            a.verify()  # checksums only: bounded by the file's size whatever it declares
            if sum(i.nbytes for i in a.infos()) <= MAX_DECODED:
                a.verify(decode=True, max_decoded_bytes=MAX_DECODED)
                a.load()
                a.tree()
    except EXPECTED:
        pass
    try:
        with bpz.open(path) as a:
            small = sum(i.nbytes for i in a.infos()) <= MAX_DECODED
    except EXPECTED:
        small = True
    if small:
        try:
            bpz.load_pytree(path)
        except EXPECTED:
            pass


def one_input(data: bytes) -> None:
    if not data:
        return
    mode, payload = data[0] % 5, data[1:]
    if mode in (0, 1, 2):
        path = os.path.join(WORK, "in.bpz")
        body = payload if mode == 0 else fix_checksums(payload) if mode == 1 else archive_with_tree(payload)
        with open(path, "wb") as f:
            f.write(body)
        read_archive(path)
    elif mode == 3:
        path = os.path.join(WORK, "in.bp")
        with open(path, "wb") as f:
            f.write(payload)
        for fn in (read_bp, bpz.load_pytree):
            try:
                fn(path)
            except EXPECTED:
                pass
    else:
        try:
            load_pickle(payload)
        except EXPECTED:
            pass


def make_seeds(out: str) -> int:
    os.makedirs(out, exist_ok=True)
    n = 0

    def put(mode: int, blob: bytes, name: str) -> None:
        nonlocal n
        with open(os.path.join(out, f"{mode}-{name}"), "wb") as f:
            f.write(bytes([mode]) + blob)
        n += 1

    import glob

    for p in sorted(glob.glob(os.path.join(ROOT, "spec", "vectors", "**", "*.bpz"), recursive=True)):
        blob = open(p, "rb").read()
        if len(blob) <= 1 << 18:
            put(0, blob, os.path.basename(p))
            put(1, blob, os.path.basename(p))
            try:
                off, ln = struct.unpack_from("<QQ", blob, len(blob) - 32)
                tree = json.loads(blob[off:off + ln]).get("tree")
                put(2, json.dumps(tree).encode(), os.path.basename(p))
            except Exception:  # noqa: BLE001
                pass
    for p in sorted(glob.glob(os.path.join(ROOT, "tests", "attacks", "corpus", "*"))):
        blob = open(p, "rb").read()
        if len(blob) > 1 << 16:
            continue
        mode = {".bp": 3, ".pkl": 4, ".bpz": 1}.get(os.path.splitext(p)[1])
        if mode is not None:
            put(mode, blob, os.path.basename(p))
    for p in sorted(glob.glob(os.path.join(ROOT, "tests", "fixtures", "**", "*.bp"), recursive=True)):
        blob = open(p, "rb").read()
        if len(blob) <= 1 << 16:
            put(3, blob, os.path.basename(p))
    import pickle

    import numpy as np

    put(4, pickle.dumps({"w": np.arange(6, dtype=np.float32).reshape(2, 3), "b": [1, (2, 3)]}, protocol=2), "np2")
    put(4, pickle.dumps({"w": np.ones(3, np.int16)}, protocol=4), "np4")
    put(2, json.dumps({"dict": [["a", {"tensor": "x"}], [1, {"list": [{"int": "99999999999999999999"},
                                                                      {"namedtuple": {"name": "P", "fields": ["q"],
                                                                                      "values": [{"tensor": "y"}]}}]}]]}
                      ).encode(), "tree")
    return n


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--make-seeds":
        print(f"{make_seeds(sys.argv[2])} seed inputs in {sys.argv[2]}")
        return
    # A valid archive may declare tensors of any size: allocations past this fail cleanly.
    resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
