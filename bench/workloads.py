"""The four benchmark workloads (issue 6), generated from fixed seeds and cached.

Each workload is a nested dict of NumPy arrays. It is generated once per
``(workload, scale)`` into ``<workdir>/data/<name>-s<scale>/`` as one flat
``data.bin`` plus ``manifest.json`` (key path, dtype, shape, offset of every
leaf), so that every measuring process can rebuild the exact same state into
fresh, private memory in a fraction of the generation time.

* ``W1-dense``  ~1 GiB of float32 weights, N(0, 0.02), 32 arrays of 2048x4096 in
  a nested dict (8 blocks x {wq, wk, wv, wo}).
* ``W2-snn``    ~512 MiB of spiking-network state: two populations (E, I) of 1e6
  neurons each with V (float32), spike and refractory (bool, ~2 % true),
  t_last_spike (float32, mostly the constant -1e7 "never"), input (float32
  zeros), conductances g_E / g_I (float32); four projections E->E, E->I, I->E,
  I->I in CSR form (int32 indptr, int32 indices sorted within each row),
  fixed-probability random targets (``brainpy.conn.FixedProb``-style).
* ``W3-small``  20,000 arrays from 0-d to 64x64 of mixed dtypes (float32,
  float64, float16, bfloat16, int8, int16, int32, int64, uint8, bool,
  complex64), 100 groups of 200.
* ``W4-bf16``   ~512 MiB of bfloat16 weights, N(0, 0.02), 32 arrays of 4096x2048.

``--scale`` shrinks the leading dimension / neuron count / array count.
"""

from __future__ import annotations

import json
import os
from typing import Any

import ml_dtypes
import numpy as np

WORKLOADS = ("W1-dense", "W2-snn", "W3-small", "W4-bf16")
SEED = 20240601

DESCRIPTIONS = {
    "W1-dense": "~1 GiB float32 N(0,0.02) weights, 32 arrays of 2048x4096, nested dict",
    "W2-snn": "~512 MiB spiking-network state: 2 populations x 1e6 neurons (V, spike/refractory bool ~2% true, "
    "t_last_spike mostly constant, input zeros, g_E/g_I) + 4 CSR projections (int32 indices sorted within rows)",
    "W3-small": "20,000 arrays from 0-d to 64x64, mixed dtypes (f32 f64 f16 bf16 i8 i16 i32 i64 u8 bool c64)",
    "W4-bf16": "~512 MiB bfloat16 N(0,0.02) weights, 32 arrays of 4096x2048",
}

BF16 = np.dtype(ml_dtypes.bfloat16)


def _dtype_name(dt: np.dtype) -> str:
    return "bfloat16" if dt == BF16 else dt.str if dt.kind != "b" else "bool"


def _parse_dtype(s: str) -> np.dtype:
    if s == "bfloat16":
        return BF16
    if s == "bool":
        return np.dtype(bool)
    return np.dtype(s)


def _normal(rng: np.random.Generator, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    a = rng.standard_normal(shape, dtype=np.float32)
    a *= np.float32(0.02)
    return a if dtype == np.float32 else a.astype(dtype)


def gen_w1(scale: float) -> list[tuple[tuple[str, ...], np.ndarray]]:
    rng = np.random.default_rng(SEED + 1)
    rows = max(1, round(2048 * scale))
    out = []
    for b in range(8):
        for w in ("wq", "wk", "wv", "wo"):
            out.append((("params", f"block_{b:02d}", "attn", w), _normal(rng, (rows, 4096), np.dtype(np.float32))))
    return out


def gen_w4(scale: float) -> list[tuple[tuple[str, ...], np.ndarray]]:
    rng = np.random.default_rng(SEED + 4)
    rows = max(1, round(4096 * scale))
    out = []
    for b in range(8):
        for w in ("w_in", "w_gate", "w_out", "w_proj"):
            out.append((("params", f"layer_{b:02d}", "mlp", w), _normal(rng, (rows, 2048), BF16)))
    return out


def _csr(rng: np.random.Generator, n_pre: int, n_post: int, mean_k: float) -> tuple[np.ndarray, np.ndarray]:
    """Fixed-probability connectivity: k ~ Binomial(n_post, p) targets per row, uniform, sorted within the row."""
    p = min(1.0, mean_k / n_post)
    k = rng.binomial(n_post, p, size=n_pre).astype(np.int64)
    indptr = np.zeros(n_pre + 1, dtype=np.int64)
    np.cumsum(k, out=indptr[1:])
    total = int(indptr[-1])
    # Sorted uniform samples per row via normalised cumulative exponential gaps.
    gaps = rng.standard_exponential(total + n_pre, dtype=np.float64)
    # Row r uses gaps[indptr[r] + r : indptr[r+1] + r + 1] (k_r + 1 gaps, the last closes the row).
    row_of = np.repeat(np.arange(n_pre), k + 1)
    cs = np.cumsum(gaps)
    starts = indptr[:-1] + np.arange(n_pre)
    ends = indptr[1:] + np.arange(n_pre)  # index of the closing gap
    base = np.where(starts > 0, cs[np.maximum(starts - 1, 0)], 0.0)
    span = cs[ends] - base
    pos = (cs - base[row_of]) / span[row_of]
    keep = np.ones(total + n_pre, dtype=bool)
    keep[ends] = False
    idx = np.minimum((pos[keep] * n_post).astype(np.int64), n_post - 1).astype(np.int32)
    del gaps, row_of, cs, pos, keep
    return indptr.astype(np.int32), idx


def gen_w2(scale: float) -> list[tuple[tuple[str, ...], np.ndarray]]:
    rng = np.random.default_rng(SEED + 2)
    n = max(100, round(1_000_000 * scale))
    out: list[tuple[tuple[str, ...], np.ndarray]] = []
    for pop in ("E", "I"):
        V = (rng.standard_normal(n, dtype=np.float32) * np.float32(4.0) - np.float32(60.0)).astype(np.float32)
        spike = rng.random(n, dtype=np.float32) < 0.02
        refractory = spike | (rng.random(n, dtype=np.float32) < 0.01)
        t_last = np.full(n, -1e7, dtype=np.float32)
        recent = rng.random(n, dtype=np.float32) < 0.03
        t_last[recent] = np.round(rng.uniform(900.0, 1000.0, int(recent.sum())), 1).astype(np.float32)
        t_last[spike] = np.float32(1000.0)
        inp = np.zeros(n, dtype=np.float32)
        g_E = rng.standard_exponential(n, dtype=np.float32) * np.float32(0.3)
        g_I = rng.standard_exponential(n, dtype=np.float32) * np.float32(0.6)
        for key, arr in (
            ("V", V), ("spike", spike), ("refractory", refractory), ("t_last_spike", t_last),
            ("input", inp), ("g_E", g_E), ("g_I", g_I),
        ):
            out.append((("neurons", pop, key), arr))
    # ~512 MiB in all: the rest is connectivity. 2 x 22 MB state + 4 indptr; 29.6 targets per row on average.
    state = sum(a.nbytes for _, a in out)
    budget = 512 * 2**20 * max(scale, 1e-9) - state - 4 * 4 * (n + 1)
    mean_k = max(1.0, budget / 4 / 4 / n)
    for proj in ("E2E", "E2I", "I2E", "I2I"):
        indptr, indices = _csr(rng, n, n, mean_k)
        out.append((("synapses", proj, "conn", "indptr"), indptr))
        out.append((("synapses", proj, "conn", "indices"), indices))
    return out


_W3_DTYPES = [np.dtype(np.float32), np.dtype(np.float64), np.dtype(np.float16), BF16, np.dtype(np.int8),
              np.dtype(np.int16), np.dtype(np.int32), np.dtype(np.int64), np.dtype(np.uint8), np.dtype(bool),
              np.dtype(np.complex64)]


def gen_w3(scale: float) -> list[tuple[tuple[str, ...], np.ndarray]]:
    rng = np.random.default_rng(SEED + 3)
    count = max(22, round(20_000 * scale))
    out = []
    for i in range(count):
        dt = _W3_DTYPES[i % len(_W3_DTYPES)]
        rank = int(rng.integers(0, 3))
        shape = tuple(int(x) for x in rng.integers(1, 65, size=rank))
        if dt.kind == "b":
            a = rng.random(shape) < 0.3
        elif dt.kind in "iu":
            info = np.iinfo(dt)
            a = rng.integers(max(info.min, -1000), min(info.max, 1000), size=shape, endpoint=True).astype(dt)
        elif dt.kind == "c":
            a = (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(dt)
        else:
            a = rng.standard_normal(shape).astype(np.float32).astype(dt)
        out.append((("state", f"group_{i // 200:03d}", f"v{i % 200:03d}"), np.asarray(a, dtype=dt)))
    return out


GENERATORS = {"W1-dense": gen_w1, "W2-snn": gen_w2, "W3-small": gen_w3, "W4-bf16": gen_w4}


def cache_dir(workdir: str, name: str, scale: float) -> str:
    return os.path.join(workdir, "data", f"{name}-s{scale:g}")


def ensure(workdir: str, name: str, scale: float) -> dict[str, Any]:
    """Generates the workload into the cache if needed; returns its manifest."""
    d = cache_dir(workdir, name, scale)
    man_path = os.path.join(d, "manifest.json")
    if os.path.exists(man_path):
        with open(man_path) as f:
            return json.load(f)
    os.makedirs(d, exist_ok=True)
    leaves = GENERATORS[name](scale)
    entries = []
    off = 0
    tmp = os.path.join(d, "data.bin.tmp")
    with open(tmp, "wb") as f:
        for path, arr in leaves:
            arr = np.ascontiguousarray(arr)
            f.write(arr.view(np.uint8).reshape(-1).data if arr.nbytes else b"")
            entries.append({"path": list(path), "dtype": _dtype_name(arr.dtype), "shape": list(arr.shape),
                            "offset": off, "nbytes": int(arr.nbytes)})
            off += arr.nbytes
    os.replace(tmp, os.path.join(d, "data.bin"))
    man = {"workload": name, "scale": scale, "seed": SEED, "total_bytes": off, "leaves": entries,
           "description": DESCRIPTIONS[name]}
    with open(man_path + ".tmp", "w") as f:
        json.dump(man, f)
    os.replace(man_path + ".tmp", man_path)
    return man


def names(man: dict[str, Any]) -> list[str]:
    return ["/".join(e["path"]) for e in man["leaves"]]


def middle_tensor(man: dict[str, Any]) -> dict[str, Any]:
    """The tensor in the middle of the flattened order (the 'one tensor' read)."""
    return man["leaves"][len(man["leaves"]) // 2]


def row_tensor(man: dict[str, Any]) -> tuple[dict[str, Any], int, int]:
    """The largest tensor (ties: nearest the middle) and a row range: 1 % of its rows from the middle."""
    leaves = man["leaves"]
    mid = len(leaves) // 2
    best = max(range(len(leaves)), key=lambda i: (leaves[i]["nbytes"] if leaves[i]["shape"] else -1, -abs(i - mid)))
    e = leaves[best]
    n = e["shape"][0]
    lo = n // 2
    hi = min(n, lo + max(1, n // 100))
    return e, lo, hi


def load_leaves(workdir: str, man: dict[str, Any]) -> list[tuple[tuple[str, ...], np.ndarray]]:
    """Reads the cached workload into fresh, private, touched arrays."""
    d = cache_dir(workdir, man["workload"], man["scale"])
    out = []
    with open(os.path.join(d, "data.bin"), "rb", buffering=0) as f:
        for e in man["leaves"]:
            arr = np.empty(e["shape"], dtype=_parse_dtype(e["dtype"]))
            if e["nbytes"]:
                view = memoryview(arr.reshape(-1).view(np.uint8))
                got = 0
                while got < e["nbytes"]:
                    got += f.readinto(view[got:])
            out.append((tuple(e["path"]), arr))
    return out


def to_tree(leaves: list[tuple[tuple[str, ...], np.ndarray]]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for path, arr in leaves:
        node = tree
        for k in path[:-1]:
            node = node.setdefault(k, {})
        node[path[-1]] = arr
    return tree


def flat(leaves: list[tuple[tuple[str, ...], np.ndarray]]) -> dict[str, np.ndarray]:
    return {"/".join(p): a for p, a in leaves}


def parse_dtype(s: str) -> np.dtype:
    return _parse_dtype(s)
