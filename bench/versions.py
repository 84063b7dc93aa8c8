"""Versioned archives (issue 14): a simulation series, a training series, one tensor of many.

* **W5, a simulation series**: the W2 spiking-network state saved ``--saves`` times while a
  simple leaky integrate-and-fire update runs (connectivity constant; V, conductances, spikes,
  refractory flags and last spike times change). Each state is appended to one archive
  (``save_pytree(..., append=True)``) and, for comparison, saved to its own archive. Reported:
  bytes each append wrote against the stored bytes of the chunks whose content changed (+ its
  index), append time against a full save's, the series file against the separate files, and
  loading a version of the series against loading the same state from its own archive.
* **W1 training series**: dense weights that all change each step; appending against saving.
* **W3 one tensor**: ``bpz.open`` + ``archive[name]`` on 20,000 small arrays, warm, in one
  process, against safetensors' ``safe_open`` + ``get_tensor`` on the same arrays.

Every figure is the median of several rounds measured in this one process, the tools
interleaved. ``python bench/versions.py --help`` lists the options; the command line is written
into the report.
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import statistics
import sys
import tempfile
import time
from typing import Any

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import workloads  # noqa: E402

import bpz  # noqa: E402


def _median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def _size(path: str) -> int:
    return os.stat(path).st_size


class LifNetwork:
    """The W2 state advanced by a leaky integrate-and-fire step: what a simulation saves."""

    def __init__(self, state: dict[str, Any], seed: int = 7) -> None:
        self.state = state
        self.rng = np.random.default_rng(seed)
        self.t = 1000.0

    def step(self, ms: float = 10.0) -> None:
        self.t += ms
        for pop in self.state["neurons"].values():
            n = pop["V"].shape[0]
            pop["g_E"] *= np.float32(0.6)
            pop["g_I"] *= np.float32(0.7)
            pop["g_E"] += self.rng.standard_exponential(n, dtype=np.float32) * np.float32(0.1)
            pop["V"] += (np.float32(-60.0) - pop["V"]) * np.float32(0.1) + pop["g_E"] * np.float32(4.0) \
                - pop["g_I"] * np.float32(2.0) + self.rng.standard_normal(n, dtype=np.float32)
            spike = pop["V"] > np.float32(-50.0)
            pop["spike"][:] = spike
            pop["refractory"][:] = spike | (self.rng.random(n, dtype=np.float32) < 0.01)
            pop["t_last_spike"][spike] = np.float32(self.t)
            pop["V"][spike] = np.float32(-65.0)


def _chunk_hashes(archive: Any, name: str) -> list[tuple[bytes | None, int]]:
    return [(c.hash, c.stored_length) for c in archive.chunks(name)]


def _changed_stored_bytes(path: str, version: int) -> tuple[int, int]:
    """Stored bytes of the chunks of ``version`` whose content no chunk of ``version - 1`` has,
    and the version's index length."""
    with bpz.open(path, version=version) as new, bpz.open(path, version=version - 1) as old:
        before = {h for name in old.keys() for h, _ in _chunk_hashes(old, name)}
        changed = sum(n for name in new.keys() for h, n in _chunk_hashes(new, name) if h not in before)
        index = next(v for v in new.versions if v.number == version).index_length
    return changed, index


def w5_series(workdir: str, scale: float, saves: int, repeat_loads: int) -> dict[str, Any]:
    man = workloads.ensure(workdir, "W2-snn", scale)
    state = workloads.to_tree(workloads.load_leaves(workdir, man))
    net = LifNetwork(state)
    out = os.path.join(workdir, "w5")
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    series = os.path.join(out, "series.bpz")
    full_s: list[float] = []
    append_s: list[float] = []
    ratios: list[float] = []
    separate_bytes = 0
    for k in range(1, saves + 1):
        if k > 1:
            net.step()
        meta = {"step": k, "t_ms": net.t}
        own = os.path.join(out, f"state_{k:03d}.bpz")
        gc.collect()
        t0 = time.perf_counter()
        bpz.save_pytree(own, state, verbose=False, metadata=meta)
        full_s.append(time.perf_counter() - t0)
        separate_bytes += _size(own)
        gc.collect()
        t0 = time.perf_counter()
        bpz.save_pytree(series, state, verbose=False, metadata=meta, append=True)
        if k > 1:
            append_s.append(time.perf_counter() - t0)
            with bpz.open(series) as a:
                added = a.versions[-1].bytes_added
            changed, index = _changed_stored_bytes(series, k)
            ratios.append(added / (changed + index + 32))
    # Loading a middle version of the series against loading that state's own archive.
    k = max(1, saves // 2)
    own = os.path.join(out, f"state_{k:03d}.bpz")
    series_load: list[float] = []
    own_load: list[float] = []
    for _ in range(repeat_loads):
        for fn, sink in ((lambda: bpz.load_pytree(series, version=k), series_load),
                         (lambda: bpz.load_pytree(own), own_load)):
            gc.collect()
            t0 = time.perf_counter()
            fn()
            sink.append(time.perf_counter() - t0)
    with bpz.open(series, version=k) as a, bpz.open(own) as b:
        for name in b.keys():
            if not np.array_equal(a.read(name), b.read(name)):
                raise SystemExit(f"W5: version {k} of the series differs from its own archive at {name!r}")
    return {
        "state_bytes": man["total_bytes"], "saves": saves,
        "full_save_s": _median(full_s), "append_s": _median(append_s),
        "append_over_full": _median(append_s) / _median(full_s),
        "written_over_changed_max": max(ratios), "written_over_changed_median": _median(ratios),
        "series_bytes": _size(series), "separate_bytes": separate_bytes,
        "separate_over_series": separate_bytes / _size(series),
        "load_version_s": _median(series_load), "load_own_s": _median(own_load),
        "load_ratio": _median(series_load) / _median(own_load),
    }


def w1_training(workdir: str, scale: float, steps: int) -> dict[str, Any]:
    man = workloads.ensure(workdir, "W1-dense", scale)
    params = workloads.to_tree(workloads.load_leaves(workdir, man))
    rng = np.random.default_rng(11)
    out = os.path.join(workdir, "w1series")
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    series = os.path.join(out, "series.bpz")
    full_s: list[float] = []
    append_s: list[float] = []
    arrays = _leaves(params)
    for k in range(1, steps + 1):
        for a in arrays:  # one optimiser step: every weight moves a little
            a += rng.standard_normal(a.shape, dtype=np.float32) * np.float32(1e-4)
        own = os.path.join(out, f"step_{k:03d}.bpz")
        gc.collect()
        t0 = time.perf_counter()
        bpz.save_pytree(own, params, verbose=False)
        full_s.append(time.perf_counter() - t0)
        os.unlink(own)
        gc.collect()
        t0 = time.perf_counter()
        bpz.save_pytree(series, params, verbose=False, append=True)
        if k > 1:
            append_s.append(time.perf_counter() - t0)
    return {"state_bytes": man["total_bytes"], "steps": steps, "full_save_s": _median(full_s),
            "append_s": _median(append_s), "append_over_full": _median(append_s) / _median(full_s),
            "series_bytes": _size(series)}


def _leaves(tree: Any) -> list[np.ndarray]:
    if isinstance(tree, dict):
        return [x for v in tree.values() for x in _leaves(v)]
    return [tree]


def w3_one_tensor(workdir: str, scale: float, rounds: int) -> dict[str, Any]:
    man = workloads.ensure(workdir, "W3-small", scale)
    leaves = workloads.load_leaves(workdir, man)
    flat = workloads.flat(leaves)
    out = os.path.join(workdir, "w3one")
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    path = os.path.join(out, "w3.bpz")
    bpz.save_pytree(path, workloads.to_tree(leaves), verbose=False)
    names = list(flat)
    key = names[len(names) // 2]
    with bpz.open(path) as a:
        bpz_name = a.keys()[len(names) // 2]

    def bpz_one() -> None:
        with bpz.open(path) as a:
            a[bpz_name]

    result: dict[str, Any] = {"tensors": len(names), "bpz_name": bpz_name}
    fns: list[tuple[str, Any]] = [("bpz", bpz_one)]
    try:
        import safetensors.numpy as stn
        from safetensors import safe_open

        st_path = os.path.join(out, "w3.safetensors")
        stn.save_file({k: np.ascontiguousarray(v) for k, v in flat.items() if v.dtype != workloads.BF16}, st_path)
        st_key = key if flat[key].dtype != workloads.BF16 else next(k for k in names[len(names) // 2:]
                                                                     if flat[k].dtype != workloads.BF16)

        def st_one() -> None:
            with safe_open(st_path, framework="numpy") as f:
                f.get_tensor(st_key)

        fns.append(("safetensors", st_one))
    except ImportError:
        result["safetensors"] = None
    times: dict[str, list[float]] = {k: [] for k, _ in fns}
    for _ in range(rounds):
        for label, fn in fns:
            fn()  # warm
            n = 200
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            times[label].append((time.perf_counter() - t0) / n)
    for label in times:
        result[f"{label}_us"] = _median(times[label]) * 1e6
    return result


def report(args: argparse.Namespace, w5: dict[str, Any] | None, w1: dict[str, Any] | None,
           w3: dict[str, Any] | None) -> str:
    lines = ["## Versioned archives (issue 14)", "", "```", "python " + " ".join(sys.argv), "```", ""]
    if w5:
        mib = w5["state_bytes"] / 2**20
        lines += [
            f"**W5, simulation series** — the W2 state ({mib:.0f} MiB) saved {w5['saves']} times as a LIF update runs.",
            "",
            "| measure | value | target | met |",
            "|---|---:|---:|:-:|",
            f"| bytes an append wrote / (stored bytes of changed chunks + index), worst | "
            f"{w5['written_over_changed_max']:.3f} (median {w5['written_over_changed_median']:.3f}) | ≤ 1.05 | "
            f"{'yes' if w5['written_over_changed_max'] <= 1.05 else 'no'} |",
            f"| append time / full save time | {w5['append_s']:.3f} s / {w5['full_save_s']:.3f} s = "
            f"{w5['append_over_full']:.2f} | ≤ 0.15 | {'yes' if w5['append_over_full'] <= 0.15 else 'no'} |",
            f"| {w5['saves']} separate archives / the {w5['saves']}-version file | "
            f"{w5['separate_bytes'] / 2**20:.0f} MiB / {w5['series_bytes'] / 2**20:.0f} MiB = "
            f"{w5['separate_over_series']:.1f}× | ≥ 10× | {'yes' if w5['separate_over_series'] >= 10 else 'no'} |",
            f"| load version {w5['saves'] // 2} of the series / load its own archive | {w5['load_version_s']:.3f} s / "
            f"{w5['load_own_s']:.3f} s = {w5['load_ratio']:.2f} | ≈ 1 (noise) | "
            f"{'yes' if w5['load_ratio'] <= 1.1 else 'no'} |",
            "",
        ]
    if w1:
        lines += [
            f"**W1, training series** — {w1['state_bytes'] / 2**20:.0f} MiB of weights, all changing, {w1['steps']} steps: "
            f"append {w1['append_s']:.3f} s against a full save {w1['full_save_s']:.3f} s = "
            f"{w1['append_over_full']:.2f}× (target ≤ 1.05×: {'met' if w1['append_over_full'] <= 1.05 else 'not met'}).",
            "",
        ]
    if w3:
        st = w3.get("safetensors_us")
        lines += [
            f"**W3, one tensor** of {w3['tensors']:,} — open + `archive[name]`, warm, in one process: bpz "
            f"{w3['bpz_us']:.1f} µs" + (f", safetensors `safe_open` + `get_tensor` {st:.1f} µs "
                                        f"({st / w3['bpz_us']:.1f}× bpz's time)" if st else "")
            + f" (target ≤ 50 µs: {'met' if w3['bpz_us'] <= 50 else 'not met'}).",
            "",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scale", type=float, default=1.0, help="workload scale (1.0 = the issue's sizes)")
    p.add_argument("--saves", type=int, default=20, help="versions in the W5 series")
    p.add_argument("--steps", type=int, default=5, help="versions in the W1 training series")
    p.add_argument("--rounds", type=int, default=5, help="rounds for load and one-tensor timings")
    p.add_argument("--only", default="W5,W1,W3", help="comma-separated subset of W5,W1,W3")
    p.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "bpz-bench"))
    p.add_argument("--out", help="write the markdown report here (default: print it)")
    args = p.parse_args(argv)
    only = set(args.only.split(","))
    os.makedirs(args.workdir, exist_ok=True)
    w5 = w5_series(args.workdir, args.scale, args.saves, args.rounds) if "W5" in only else None
    w1 = w1_training(args.workdir, args.scale, args.steps) if "W1" in only else None
    w3 = w3_one_tensor(args.workdir, 1.0 if args.scale >= 0.05 else args.scale, args.rounds) if "W3" in only else None
    text = report(args, w5, w1, w3)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
