"""One measurement in a fresh process: ``python worker.py '<json spec>'``.

Prints one line ``BENCH_RESULT {...}`` (times in seconds, memory in bytes).
The tool's modules are imported and the workload rebuilt before any timer
starts; peak RSS is the high-water mark (VmHWM, reset through
/proc/self/clear_refs when the kernel allows it, else ru_maxrss) minus the
RSS just before the measured call.
"""

from __future__ import annotations

import gc
import importlib
import json
import os
import resource
import sys
import time
import traceback
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

import tools  # noqa: E402
import workloads  # noqa: E402

timer = time.perf_counter

EXTRA_IMPORTS = {
    "bpz": ["bpz", "bpz.pytree", "bpz.write", "bpz.read"],
    "safetensors": ["safetensors", "safetensors.numpy"],
    "msgpack": ["msgpack", "bpz._legacy.bp_msgpack"],
    "flax": ["flax.serialization"],
    "orbax.checkpoint": ["orbax.checkpoint"],
    "torch": ["torch"],
    "h5py": ["h5py"],
    "zstandard": ["zstandard"],
    "blosc2": ["blosc2"],
}


def _status() -> dict[str, int]:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                k, v = line.split(":", 1)
                out[k] = int(v.split()[0]) * 1024
    return out


class Mem:
    """Peak RSS of one measured call, over the RSS just before it."""

    def __init__(self) -> None:
        gc.collect()
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM to the current RSS
            self.method = "VmHWM"
        except OSError:
            self.method = "ru_maxrss"
        self.base = _status().get("VmRSS", 0)

    def peak(self) -> int:
        if self.method == "VmHWM":
            hwm = _status().get("VmHWM", 0)
        else:
            hwm = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        return max(0, hwm - self.base)


def prefault(nbytes: int) -> float:
    """Touches and frees ``nbytes`` of fresh memory; returns the seconds it took.

    This VM's balloon device has free-page reporting on: memory freed for more
    than ~2 s is handed back to the host, and the next first touch of such a page
    costs a host-side fault (~0.6-0.9 GB/s instead of ~8 GB/s). Which pages a
    measurement gets would otherwise be luck, so every timed call starts right
    after this, with host-backed free pages, as on a physical machine. (The
    slow path is shown separately by the limit:memcpy-vmcold row.)"""
    if nbytes <= 0:
        return 0.0
    t0 = timer()
    a = np.empty(nbytes, np.uint8)
    a[::4096] = 1
    del a
    return timer() - t0


def _prefault_bytes(man: dict[str, Any], factor: float) -> int:
    try:
        with open("/proc/meminfo") as f:
            avail = next(int(ln.split()[1]) * 1024 for ln in f if ln.startswith("MemAvailable"))
    except (OSError, StopIteration):
        avail = 4 << 30
    want = int(man["total_bytes"] * factor) + (256 << 20)
    return max(0, min(want, avail - (2 << 30)))


def _preimport(tool: tools.Tool) -> None:
    mods = list(tool.requires)
    if tool.group == "bpz" or tool.name == "msgpack":
        mods.append("bpz")
    for m in list(mods):
        mods += EXTRA_IMPORTS.get(m, [])
    for m in mods:
        try:
            importlib.import_module(m)
        except ImportError:
            pass


def _ctx(man: dict[str, Any]) -> tools.Ctx:
    one = workloads.middle_tensor(man)
    row, lo, hi = workloads.row_tensor(man)
    return tools.Ctx(
        one_name="/".join(one["path"]), one_path=one["path"], one_offset=one["offset"], one_nbytes=one["nbytes"],
        one_dtype=one["dtype"], one_shape=one["shape"],
        row_name="/".join(row["path"]), row_path=row["path"], row_offset=row["offset"], row_dtype=row["dtype"],
        row_shape=row["shape"], lo=lo, hi=hi, manifest=man,
    )


# ----------------------------------------------------------------------------- verification


def _to_np(x: Any) -> np.ndarray:
    if type(x).__module__.startswith("torch"):
        import torch

        t = x.detach().contiguous()
        return t.reshape(-1).view(torch.uint8).numpy() if t.numel() else np.zeros(0, np.uint8)
    return np.ascontiguousarray(np.asarray(x))


def _flatten_any(obj: Any, prefix: str = "") -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.update(_flatten_any(v, f"{prefix}{k}/"))
    else:
        out[prefix[:-1]] = _to_np(obj)
    return out


def _bytes_of(a: np.ndarray) -> bytes:
    a = np.ascontiguousarray(a)
    return a.reshape(-1).view(np.uint8).tobytes() if a.size else b""


def _expected(man: dict[str, Any], e: dict[str, Any], start: int = 0, stop: int | None = None) -> bytes:
    d = workloads.cache_dir(man["_workdir"], man["workload"], man["scale"])
    with open(os.path.join(d, "data.bin"), "rb") as f:
        f.seek(e["offset"] + start)
        n = (e["nbytes"] if stop is None else stop) - start
        return f.read(n)


def verify_load(man: dict[str, Any], obj: Any) -> None:
    if isinstance(obj, list):
        got = {"/".join(e["path"]): _to_np(a) for e, a in zip(man["leaves"], obj)}
    else:
        got = _flatten_any(obj)
    names = workloads.names(man)
    missing = [n for n in names if n not in got]
    if missing:
        raise AssertionError(f"loaded tree lacks {missing[:3]} (has {list(got)[:3]})")
    for e, n in zip(man["leaves"], names):
        if _bytes_of(got[n]) != _expected(man, e):
            raise AssertionError(f"tensor {n}: loaded bytes differ")


def verify_array(man: dict[str, Any], e: dict[str, Any], arr: Any, lo: int | None = None, hi: int | None = None) -> None:
    if lo is None:
        exp = _expected(man, e)
    else:
        row = e["nbytes"] // e["shape"][0]
        exp = _expected(man, e, lo * row, hi * row)
    if _bytes_of(_to_np(arr)) != exp:
        raise AssertionError(f"tensor {'/'.join(e['path'])}{'' if lo is None else f'[{lo}:{hi}]'}: bytes differ")


# ----------------------------------------------------------------------------- ops


def op_save(spec: dict[str, Any], tool: tools.Tool, man: dict[str, Any], nosync: bool) -> dict[str, Any]:
    leaves = workloads.load_leaves(spec["workdir"], man)
    tree = workloads.to_tree(leaves)
    if tool.name == "torch":
        tree = tools._torch_prepare(tree)
    fn = tool.impl["save_nosync" if nosync else "save"]
    path = spec["path"]
    tools.remove(path)
    os.sync()
    pf = prefault(_prefault_bytes(man, 2.0))
    mem = Mem()
    t0 = timer()
    fn(tree, leaves, path)
    t1 = timer()
    tools.fsync_path(path)
    t2 = timer()
    peak = mem.peak()
    return {"time": t1 - t0, "fsync": t2 - t1, "rss": peak, "rss_method": mem.method, "size": tools.path_size(path),
            "baseline_rss": mem.base, "prefault_s": pf}


def _set_cache(path: str, cache: str) -> None:
    if cache == "cold":
        tools.drop_cache(path)
    else:
        tools.warm_cache(path)


def op_load(spec: dict[str, Any], tool: tools.Tool, man: dict[str, Any]) -> dict[str, Any]:
    ctx = _ctx(man)
    path = spec["path"]
    if not tools.files_under(path):
        raise FileNotFoundError(f"{path}: not saved (did the save of {tool.file_tool} fail?)")
    fn = tool.impl["load"]
    extra: tuple[Any, ...] = ()
    if tool.name == "limit:read-touched":
        extra = (tools._limit_read_touched_prepare(ctx),)
    _set_cache(path, spec["cache"])
    pf = prefault(_prefault_bytes(man, 2.5))
    mem = Mem()
    t0 = timer()
    out = fn(path, ctx, *extra)
    t1 = timer()
    peak = mem.peak()
    res = {"time": t1 - t0, "rss": peak, "rss_method": mem.method, "baseline_rss": mem.base, "prefault_s": pf}
    if spec.get("verify"):
        if tool.name == "limit:read-touched":
            assert _bytes_of(out) == _expected(man, {"offset": 0, "nbytes": man["total_bytes"]})
        else:
            verify_load(man, out)
        res["verified"] = True
    return res


def op_partial(spec: dict[str, Any], tool: tools.Tool, man: dict[str, Any]) -> dict[str, Any]:
    """Cold then warm: one tensor (copy), one tensor (zero-copy view), a row range."""
    ctx = _ctx(man)
    path = spec["path"]
    if not tools.files_under(path):
        raise FileNotFoundError(f"{path}: not saved (did the save of {tool.file_tool} fail?)")
    one_e = workloads.middle_tensor(man)
    row_e, lo, hi = workloads.row_tensor(man)
    kinds = []
    if "one" in tool.ops:
        kinds.append(("one", lambda: tool.impl["one"](path, ctx, False)))
    if "one_view" in tool.ops:
        kinds.append(("one_view", lambda: tool.impl["one"](path, ctx, True)))
    if "rows" in tool.ops:
        kinds.append(("rows", lambda: tool.impl["rows"](path, ctx)))
    res: dict[str, Any] = {}
    for cache in ("cold", "warm"):
        for kind, fn in kinds:
            _set_cache(path, cache)
            prefault(2 * max(one_e["nbytes"], row_e["nbytes"] // max(1, row_e["shape"][0]) * (hi - lo)) + (64 << 20))
            t0 = timer()
            out = fn()
            t1 = timer()
            res[f"{kind}_{cache}"] = t1 - t0
            if spec.get("verify"):
                if kind == "rows":
                    verify_array(man, row_e, out, lo, hi)
                else:
                    verify_array(man, one_e, out)
            del out
    if spec.get("verify"):
        res["verified"] = True
    return res


def op_memcpy(spec: dict[str, Any], tool: tools.Tool, man: dict[str, Any]) -> dict[str, Any]:
    leaves = workloads.load_leaves(spec["workdir"], man)
    fn = tool.impl["memcpy"]
    extra: tuple[Any, ...] = ()
    if tool.name == "limit:memcpy-touched":
        extra = (tools._memcpy_touched_prepare(leaves),)
    if tool.name == "limit:memcpy-vmcold":
        time.sleep(4.0 if man["total_bytes"] > 64 << 20 else 0.0)  # let the balloon report every free page to the host: first touches fault there
        pf = 0.0
    else:
        pf = prefault(_prefault_bytes(man, 1.5))
    mem = Mem()
    t0 = timer()
    out = fn(leaves, *extra)
    t1 = timer()
    peak = mem.peak()
    res = {"time": t1 - t0, "rss": peak, "rss_method": mem.method, "prefault_s": pf}
    if spec.get("verify"):
        verify_load(man, out)
        res["verified"] = True
    return res


def op_codec(spec: dict[str, Any], tool: tools.Tool, man: dict[str, Any]) -> dict[str, Any]:
    leaves = workloads.load_leaves(spec["workdir"], man)
    gc.collect()
    pf = prefault(_prefault_bytes(man, 2.5))
    r = tool.impl["codec"](leaves, timer)
    r["prefault_s"] = pf
    out = r.pop("out")
    if spec.get("verify"):
        verify_load(man, out)
        r["verified"] = True
    return r


def main() -> None:
    spec = json.loads(sys.argv[1])
    tool = tools.REGISTRY[spec["tool"]]
    with open(os.path.join(workloads.cache_dir(spec["workdir"], spec["workload"], spec["scale"]), "manifest.json")) as f:
        man = json.load(f)
    man["_workdir"] = spec["workdir"]
    _preimport(tool)
    op = spec["op"]
    try:
        if op in ("save", "save_nosync"):
            res = op_save(spec, tool, man, nosync=op == "save_nosync")
        elif op == "load":
            res = op_load(spec, tool, man)
        elif op == "partial":
            res = op_partial(spec, tool, man)
        elif op == "memcpy":
            res = op_memcpy(spec, tool, man)
        elif op == "codec":
            res = op_codec(spec, tool, man)
        else:
            raise ValueError(f"unknown op {op}")
    except Exception as e:  # reported, not raised: the parent records the error
        res = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-3000:]}
    sys.stdout.flush()
    print("BENCH_RESULT " + json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
