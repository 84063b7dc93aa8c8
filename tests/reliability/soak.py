#!/usr/bin/env python3
"""Soak test: save and load random checkpoints in a loop, verifying every round trip.

    python tests/reliability/soak.py --minutes 3 [--seed 1] [--dir DIR] [--max-mib 16]

Each round builds a random pytree (nested dicts, lists, tuples, namedtuples, OrderedDicts;
arrays of every dtype bpz stores, shapes from 0-d and empty to a few MiB, with random,
constant, sorted and sparse contents; Python scalars including NaN, huge ints, str, bytes
and None), saves it with random options (compression auto/zstd/none, chunk size, zstd
level, synchronous or through an AsyncManager, ``save_pytree`` or numbered
``save_checkpoint`` with retention), then checks it: ``load_pytree`` (bit-exact, structure
and types), ``bpz.open(...).verify()``, lazy zero-copy views, row slices, and
``restore_checkpoint``. It prints rounds, bytes and failures; the exit status is 1 if any
round failed. Not run in CI (see RELIABILITY.md for the figures of one run).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import shutil
import sys
import tempfile
import time
import traceback

import numpy as np

import bpz
from bpz import checkpoints

try:
    import ml_dtypes

    EXTRA_DTYPES = [ml_dtypes.bfloat16, ml_dtypes.float8_e4m3fn, ml_dtypes.float8_e5m2]
except ImportError:  # pragma: no cover
    EXTRA_DTYPES = []

DTYPES = [np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64,
          np.float16, np.float32, np.float64, np.complex64, np.complex128, *EXTRA_DTYPES]
Pair = collections.namedtuple("Pair", "pre post")


class Gen:
    def __init__(self, rng: random.Random, max_bytes: int) -> None:
        self.r = rng
        self.np = np.random.default_rng(rng.randrange(2**32))
        self.max_bytes = max_bytes
        self.bytes = 0

    def shape(self, itemsize: int) -> tuple[int, ...]:
        r = self.r
        kind = r.random()
        if kind < 0.1:
            return ()
        if kind < 0.15:
            return tuple(r.choice([0, 3]) for _ in range(r.randint(1, 3)))
        budget = max(1, min(self.max_bytes // 4, self.max_bytes - self.bytes) // itemsize)
        n = int(min(budget, 10 ** r.uniform(0, 6.5)))
        rank = r.randint(1, 4)
        dims = [1] * rank
        for i in range(rank):
            dims[i] = max(1, int(round(n ** (1 / rank) * r.uniform(0.5, 1.5))))
        while int(np.prod(dims)) > budget and max(dims) > 1:
            dims[dims.index(max(dims))] //= 2
        return tuple(dims)

    def array(self) -> np.ndarray:
        dt = np.dtype(self.r.choice(DTYPES))
        shape = self.shape(dt.itemsize)
        n = int(np.prod(shape)) if shape else 1
        pattern = self.r.choice(["random", "constant", "sorted", "sparse", "arange"])
        if dt == np.bool_:
            a = self.np.random(n) < (0.02 if pattern == "sparse" else 0.5)
        elif dt.kind in "iu":
            info = np.iinfo(dt)
            if pattern == "sorted":
                a = np.sort(self.np.integers(0, min(info.max, 10**6), n)).astype(dt)
            elif pattern == "constant":
                a = np.full(n, info.max, dt)
            elif pattern == "arange":
                a = np.arange(n).astype(dt)
            else:
                a = self.np.integers(info.min, info.max, n, dtype=dt, endpoint=True)
        elif dt.kind == "c":
            a = (self.np.standard_normal(n) + 1j * self.np.standard_normal(n)).astype(dt)
        else:
            if pattern == "constant":
                a = np.full(n, -65.0).astype(dt)
            elif pattern == "sparse":
                a = np.where(self.np.random(n) < 0.05, self.np.standard_normal(n), 0.0).astype(dt)
            else:
                a = self.np.standard_normal(n).astype(dt)
                if n and self.r.random() < 0.2:
                    a[0] = np.nan
        a = a.reshape(shape)
        if self.r.random() < 0.1 and a.ndim >= 2:
            a = a.T  # not C-contiguous
        if self.r.random() < 0.05 and a.dtype.itemsize > 1 and a.dtype.kind in "iuf" and a.dtype.name != "bfloat16":
            a = a.astype(a.dtype.newbyteorder(">"))  # big-endian input
        self.bytes += a.nbytes
        return a

    def scalar(self) -> object:
        return self.r.choice([None, True, 7, -(2**70), 2.5, float("nan"), float("-inf"), 1 + 2j, "text ü/~", b"\0\xff",
                              np.float32(1.5), np.int64(-3)])

    def tree(self, depth: int = 0) -> object:
        r = self.r
        if depth > 4 or r.random() < 0.35:
            return self.array() if r.random() < 0.75 else self.scalar()
        n = r.randint(0, 5)
        kind = r.choice(["dict", "dict", "list", "tuple", "namedtuple", "odict"])
        if kind == "dict":
            keys = [r.choice([f"k{i}", i, f"a/b~{i}", (i, "t"), f"{i}.0"]) for i in range(n)]
            return {k: self.tree(depth + 1) for k in keys}
        if kind == "odict":
            return collections.OrderedDict((f"o{i}", self.tree(depth + 1)) for i in range(n))
        if kind == "namedtuple":
            return Pair(self.tree(depth + 1), self.tree(depth + 1))
        items = [self.tree(depth + 1) for _ in range(n)]
        return items if kind == "list" else tuple(items)


def same(a: object, b: object, where: str = "tree") -> None:
    if isinstance(b, np.ndarray):
        assert isinstance(a, np.ndarray), f"{where}: {type(a).__name__}, expected an array"
        assert a.shape == b.shape and a.dtype.newbyteorder("=") == b.dtype.newbyteorder("="), \
            f"{where}: {a.dtype}{a.shape} vs {b.dtype}{b.shape}"
        native = np.ascontiguousarray(b.astype(b.dtype.newbyteorder("="), copy=False))
        assert np.ascontiguousarray(a).view(np.uint8).tobytes() == native.view(np.uint8).tobytes(), f"{where}: values"
    elif isinstance(b, np.generic):
        assert isinstance(a, np.generic) and a.dtype == b.dtype and a.tobytes() == b.tobytes(), f"{where}: {a!r} vs {b!r}"
    elif isinstance(b, dict):
        assert type(a) is type(b) and list(a) == list(b), f"{where}: keys {list(a)[:5]} vs {list(b)[:5]}"
        for k in b:
            same(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(b, tuple) and hasattr(b, "_fields"):
        assert type(a).__name__ == type(b).__name__ and a._fields == b._fields, f"{where}: namedtuple"
        for f in b._fields:
            same(getattr(a, f), getattr(b, f), f"{where}.{f}")
    elif isinstance(b, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), f"{where}: {type(a).__name__}[{len(a)}]"
        for i, (x, y) in enumerate(zip(a, b)):
            same(x, y, f"{where}[{i}]")
    elif isinstance(b, float) and b != b:
        assert isinstance(a, float) and a != a, f"{where}: {a!r} vs nan"
    else:
        assert type(a) is type(b) and a == b, f"{where}: {a!r} vs {b!r}"


def check_archive(path: str, expected: object, rng: random.Random) -> None:
    same(bpz.load_pytree(path, parallel=rng.random() < 0.8), expected)
    with bpz.open(path, backend=rng.choice(["mmap", "pread"])) as a:
        a.verify()
        infos = a.infos()
        for info in rng.sample(infos, min(3, len(infos))):
            whole = a.read(info.name)
            assert a[info.name].tobytes() == whole.tobytes(), info.name
            if info.shape and info.shape[0] > 1:
                lo = rng.randrange(info.shape[0])
                hi = rng.randrange(lo, info.shape[0]) + 1
                part = a.get_slice(info.name)[lo:hi]
                assert part.tobytes() == whole[lo:hi].tobytes(), f"{info.name}[{lo}:{hi}]"


def round_trip(i: int, rng: random.Random, work: str, am: bpz.AsyncManager, max_bytes: int) -> int:
    gen = Gen(rng, max_bytes)
    tree = {"round": i, "state": gen.tree()}
    opts = dict(compression=rng.choice(["auto", "zstd", None]), level=rng.choice([1, 1, 3]),
                chunk_size=rng.choice([None, 4096, 65536, 1 << 20]))
    use_async = rng.random() < 0.3
    if rng.random() < 0.3:
        d = os.path.join(work, "ckpt")
        path = checkpoints.save_checkpoint(d, tree, i, keep=2, async_manager=am if use_async else None, **opts)
        if use_async:
            am.wait_previous_save()
        same(checkpoints.restore_checkpoint(d), tree)
        assert len(checkpoints.checkpoint_steps(d)) <= 2
    else:
        path = os.path.join(work, f"m{i % 3}.bpz")
        bpz.save_pytree(path, tree, verbose=False, async_manager=am if use_async else None, **opts)
        if use_async:
            am.wait_previous_save()
    check_archive(path, tree, rng)
    return os.path.getsize(path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, required=True)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--dir", help="where to write (default: a temporary directory, removed at the end)")
    ap.add_argument("--max-mib", type=float, default=16, help="largest total array size of one tree")
    args = ap.parse_args(argv)
    work = args.dir or tempfile.mkdtemp(prefix="bpz-soak-")
    os.makedirs(work, exist_ok=True)
    rng = random.Random(args.seed)
    end = time.monotonic() + args.minutes * 60
    t0 = time.monotonic()
    rounds = failures = file_bytes = 0
    messages: list[str] = []
    last_report = t0
    try:
        with bpz.AsyncManager() as am:
            while time.monotonic() < end:
                seed = rng.randrange(2**32)
                try:
                    file_bytes += round_trip(rounds, random.Random(seed), work, am, int(args.max_mib * 2**20))
                except Exception as e:  # noqa: BLE001 - every failure is counted and reported
                    failures += 1
                    messages.append(f"round {rounds} (seed {seed}): {type(e).__name__}: {e}\n{traceback.format_exc()}")
                    print(messages[-1], file=sys.stderr)
                rounds += 1
                if time.monotonic() - last_report > 30:
                    last_report = time.monotonic()
                    print(f"  {last_report - t0:6.0f} s: {rounds} rounds, {file_bytes / 2**30:.2f} GiB, "
                          f"{failures} failures", flush=True)
    finally:
        if not args.dir:
            shutil.rmtree(work, ignore_errors=True)
    seconds = time.monotonic() - t0
    summary = {"rounds": rounds, "failures": failures, "file_bytes": file_bytes,
               "GiB_written_and_read": round(file_bytes / 2**30, 2), "seconds": round(seconds, 1),
               "rounds_per_second": round(rounds / seconds, 2), "seed": args.seed,
               "bpz": bpz.__version__, "python": sys.version.split()[0], "numpy": np.__version__}
    print(json.dumps(summary))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
