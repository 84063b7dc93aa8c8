"""Save and load the state of a spiking E/I network with bpz, timing each step.

    python examples/demo.py [--neurons 400000] [--out m.bpz]

Builds the state a BrainPy model of leaky integrate-and-fire neurons carries
(membrane potential, spikes, refractory flags, last spike times, inputs,
exponential conductances and sparse CSR connectivity), saves it with
``bpz.save_pytree``, reloads it, memory-maps one variable, reads a row range
of the connectivity, and checks every value.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

import bpz


def population(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    return {
        "V": rng.uniform(-70.0, -50.0, n).astype(np.float32),
        "spike": rng.random(n) < 0.02,
        "refractory": rng.random(n) < 0.01,
        "t_last_spike": np.where(rng.random(n) < 0.05, rng.uniform(0, 100, n), -1e7).astype(np.float32),
        "input": np.zeros(n, np.float32),
    }


def connectivity(rng: np.random.Generator, n_pre: int, n_post: int, per_row: int) -> dict[str, np.ndarray]:
    indices = np.sort(rng.integers(0, n_post, (n_pre, per_row)), axis=1).astype(np.int32).ravel()
    return {"indptr": np.arange(0, n_pre * per_row + 1, per_row, dtype=np.int64), "indices": indices}


def build_state(n: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    n_e, n_i = n * 4 // 5, n // 5
    return {
        "E": population(rng, n_e),
        "I": population(rng, n_i),
        "E2E": {"g": rng.exponential(0.1, n_e).astype(np.float32), "conn": connectivity(rng, n_e, n_e, 40)},
        "E2I": {"g": rng.exponential(0.1, n_i).astype(np.float32), "conn": connectivity(rng, n_e, n_i, 10)},
        "I2E": {"g": rng.exponential(0.1, n_e).astype(np.float32), "conn": connectivity(rng, n_i, n_e, 40)},
        "readout": {"W": rng.standard_normal((n_e // 100, 256)).astype(np.float32)},
        "t": 100.0,
        "step": 1000,
    }


def nbytes(tree) -> int:
    if isinstance(tree, dict):
        return sum(nbytes(v) for v in tree.values())
    return tree.nbytes if isinstance(tree, np.ndarray) else 0


def check_equal(a, b, path="state") -> None:
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            check_equal(a[k], b[k], f"{path}/{k}")
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b), path
    else:
        assert a == b, path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--neurons", type=int, default=400_000)
    p.add_argument("--out", default="m.bpz")
    args = p.parse_args()

    t0 = time.perf_counter()
    state = build_state(args.neurons)
    size = nbytes(state)
    print(f"built an E/I network state: {args.neurons:,} LIF neurons, {size / 1e6:.1f} MB of arrays "
          f"({time.perf_counter() - t0:.2f} s)")

    t0 = time.perf_counter()
    bpz.save_pytree(args.out, state)
    dt = time.perf_counter() - t0
    file_size = os.path.getsize(args.out)
    print(f"saved in {dt * 1e3:.0f} ms ({size / dt / 1e9:.2f} GB/s): {file_size / 1e6:.1f} MB on disk, "
          f"{size / file_size:.2f}x smaller")

    with bpz.open(args.out) as archive:
        print("\n  tensor                     dtype  shape         storage  filter          ratio")
        for info in archive.infos():
            shape = "x".join(map(str, info.shape))
            print(f"  {info.name:<26} {info.bpz_dtype:<6} {shape:<13} {info.storage:<8} "
                  f"{info.filter if info.storage == 'chunked' else '-':<15} {info.compression_ratio:6.1f}")
        print()

    t0 = time.perf_counter()
    loaded = bpz.load_pytree(args.out)
    dt = time.perf_counter() - t0
    print(f"loaded the whole state in {dt * 1e3:.0f} ms ({size / dt / 1e9:.2f} GB/s), checksums verified")
    check_equal(state, loaded)
    print("every array and scalar matches what was saved")

    t0 = time.perf_counter()
    with bpz.open(args.out) as archive:
        v = archive["E/V"]
    dt = time.perf_counter() - t0
    print(f"opened the archive and memory-mapped E/V ({v.nbytes / 1e6:.1f} MB, zero copy) in {dt * 1e6:.0f} µs")
    assert np.array_equal(v, state["E"]["V"]) and not v.flags.owndata

    n_pre = state["E2E"]["conn"]["indptr"].shape[0] - 1
    lo, hi = n_pre // 2, n_pre // 2 + 100
    start, stop = state["E2E"]["conn"]["indptr"][[lo, hi]]
    t0 = time.perf_counter()
    with bpz.open(args.out) as archive:
        targets = archive.get_slice("E2E/conn/indices")[start:stop]
    dt = time.perf_counter() - t0
    assert np.array_equal(targets, state["E2E"]["conn"]["indices"][start:stop])
    print(f"read the synapses of presynaptic neurons {lo}..{hi} ({stop - start} indices, decoding only "
          f"their chunks) in {dt * 1e6:.0f} µs")


if __name__ == "__main__":
    main()
