"""A file truncated in place (cut, not replaced) while an archive is open: ``read``,
``verify``, ``load``, ``get_slice`` and ``load_pytree`` give a typed error (or, for data
before the cut, the right bytes), never SIGBUS — whatever the chunk size (copies under
256 KiB used to come from the memory map), raw or zstd, one chunk or many. Only zero-copy
views (``archive[name]`` of a raw tensor) keep that risk, as documented.

Each case runs in a child process with a timeout: a signal kills the child, which the
parent reports, instead of killing the test run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import bpz

CHILD = r"""
import json, sys
import numpy as np
import bpz
from bpz.errors import BpzError

path, original = sys.argv[1], sys.argv[2]
truth = bpz.load_pytree(original)
archives = {b: bpz.open(path, backend=b) for b in ("mmap", "pread")}
print("ready", flush=True)
sys.stdin.readline()  # the parent cuts the file now

def run(fn, want=None):
    try:
        got = fn()
    except BpzError as e:
        return {"kind": e.kind, "cls": type(e).__name__, "names_file": path in str(e)}
    except BaseException as e:  # anything else is a finding
        return {"kind": "untyped", "cls": type(e).__name__, "msg": str(e)}
    if want is not None and not np.array_equal(got, want):
        return {"kind": "wrong data"}
    return {"kind": "ok"}

out = {}
for backend, a in archives.items():
    for name in a.keys():
        w = truth[name]
        out[f"{backend} read {name}"] = run(lambda: a.read(name), w)
        out[f"{backend} get_slice {name}"] = run(lambda: a.get_slice(name)[len(w) - 2 :], w[len(w) - 2 :])
        out[f"{backend} verify {name}"] = run(lambda: a.verify(name))
        out[f"{backend} verify decode {name}"] = run(lambda: a.verify(name, decode=True))
    out[f"{backend} load"] = run(lambda: a.load())
    out[f"{backend} verify"] = run(lambda: a.verify())
    out[f"{backend} verify decode"] = run(lambda: a.verify(decode=True))
out["load_pytree"] = run(lambda: bpz.load_pytree(path))
print("RESULT " + json.dumps(out), flush=True)
"""

KiB = 1 << 10
MiB = 1 << 20

#: (name, compression, chunk_size, {tensor: bytes}): chunks below and above 256 KiB.
LAYOUTS = [
    ("raw_one_small_chunk", None, None, {"a": 48 * KiB, "b": 16 * KiB}),
    ("raw_many_small_chunks", None, 16 * KiB, {"a": 1 * MiB, "b": 20 * KiB}),
    ("raw_one_large_chunk", None, None, {"a": 1 * MiB}),
    ("zstd_one_chunk", "zstd", None, {"a": 256 * KiB, "b": 4 * KiB}),
    ("zstd_many_chunks", "zstd", 32 * KiB, {"a": 2 * MiB}),
]


def _tree(sizes: dict[str, int], compressible: bool) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(len(sizes))
    out = {}
    for name, n in sizes.items():
        v = (np.arange(n, dtype=np.uint8) // 100 % 7) if compressible else rng.integers(0, 256, n, dtype=np.uint8)
        out[name] = v.reshape(-1, 64)
    return out


def _cuts(path: str) -> list[int]:
    with bpz.open(path) as a:
        infos = a.infos()
        size = a.file_size
    first = min((i.offset for i in infos if i.offset is not None), default=64)
    index_start = 64 + sum(i.stored_bytes for i in infos)  # at least: the data ends before the index
    cuts = {4096, size // 2, first + 4096, size - 40, size - 1, min(index_start + 8, size - 33)}
    return sorted(c for c in cuts if 0 < c < size)


def _cases() -> list:
    return [pytest.param(*layout, id=layout[0]) for layout in LAYOUTS]


@pytest.mark.parametrize("name, compression, chunk, sizes", _cases())
def test_cutting_an_open_archive_gives_errors_not_signals(tmp_path, name, compression, chunk, sizes):
    original = str(tmp_path / f"{name}.bpz")
    bpz.save_pytree(original, _tree(sizes, compression is not None), compression=compression, chunk_size=chunk,
                    verbose=False)
    for cut in _cuts(original):
        path = str(tmp_path / f"{name}.{cut}.bpz")
        with open(original, "rb") as src, open(path, "wb") as dst:
            dst.write(src.read())
        child = subprocess.Popen([sys.executable, "-c", CHILD, path, original], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert child.stdout.readline().strip() == "ready", child.stderr.read()
            os.truncate(path, cut)  # in place: the child's maps now reach past the end
            out, err = child.communicate("go\n", timeout=120)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
        where = f"{name} cut to {cut} bytes"
        assert child.returncode == 0, f"{where}: the child died with status {child.returncode}\n{err[-3000:]}"
        results = json.loads(next(line[7:] for line in out.splitlines() if line.startswith("RESULT ")))
        for op, res in results.items():
            assert res["kind"] not in ("untyped", "wrong data"), f"{where}: {op}: {res}"
            if res["kind"] != "ok" and op != "load_pytree":
                # load_pytree opens the cut file afresh: whatever its end now looks like.
                assert res["kind"] == "truncated", f"{where}: {op}: {res}"
            if res["kind"] != "ok":
                assert res["names_file"], f"{where}: {op}: the error does not name the file"
        for backend in ("mmap", "pread"):
            # The file is shorter than when it was opened: verify says so wherever the cut is.
            assert results[f"{backend} verify"]["kind"] == "truncated", f"{where}: {results}"
            assert results[f"{backend} verify decode"]["kind"] == "truncated", f"{where}: {results}"
        assert results["load_pytree"]["kind"] != "ok", f"{where}: {results}"
