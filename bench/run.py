#!/usr/bin/env python3
"""bpz benchmarks: bpz against the alternatives and the physical limits, in one run.

    .venv/bin/python bench/run.py                      # full run (issue 6 sizes, 5 repeats)
    .venv/bin/python bench/run.py --scale 0.01 --repeat 1 --out /tmp/r.md --plot /tmp/r.png   # smoke

Every measurement runs in a fresh process (bench/worker.py); tools are
interleaved within each round; each figure is the median of the rounds with
min and max. See bench/README.md for what each column means.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import tools  # noqa: E402
import workloads  # noqa: E402

WORKER = os.path.join(HERE, "worker.py")

# ----------------------------------------------------------------------------- running


class Runner:
    def __init__(self, args: argparse.Namespace, selected: list[str]) -> None:
        self.args = args
        self.selected = selected
        self.raw: dict[str, Any] = {}  # wl -> tool -> metric -> [samples]
        self.errors: dict[str, dict[str, str]] = {}
        self.broken: set[tuple[str, str]] = set()
        self.loads: list[float] = []
        self.t_start = time.time()
        self.n_runs = 0

    def log(self, msg: str) -> None:
        el = time.time() - self.t_start
        print(f"[{el:7.1f}s load {os.getloadavg()[0]:5.2f}] {msg}", file=sys.stderr, flush=True)

    def path_of(self, wl: str, tool: tools.Tool) -> str:
        ft = tools.REGISTRY[tool.file_tool]
        safe = ft.name.replace(":", "_").replace("/", "_")
        return os.path.join(self.args.workdir, "files", wl, safe + ft.ext)

    def spawn(self, wl: str, tool: tools.Tool, op: str, cache: str | None = None) -> dict[str, Any] | None:
        spec = {"op": op, "tool": tool.name, "workload": wl, "scale": self.args.scale, "workdir": self.args.workdir,
                "path": self.path_of(wl, tool), "cache": cache, "verify": self.args.verify}
        self.loads.append(os.getloadavg()[0])
        t0 = time.time()
        try:
            p = subprocess.run([sys.executable, WORKER, json.dumps(spec)], capture_output=True, text=True,
                               timeout=self.args.timeout)
            out, err, rc = p.stdout, p.stderr, p.returncode
        except subprocess.TimeoutExpired as e:
            out, err, rc = "", f"timed out after {self.args.timeout} s: {e}", -1
        self.n_runs += 1
        res = None
        for line in out.splitlines():
            if line.startswith("BENCH_RESULT "):
                res = json.loads(line[len("BENCH_RESULT "):])
        if res is None:
            res = {"error": f"worker exited {rc} without a result", "traceback": err[-3000:]}
        if "error" in res:
            self.errors.setdefault(wl, {})[f"{tool.name} {op}{'/' + cache if cache else ''}"] = (
                res["error"] + "\n" + res.get("traceback", "")[-1500:])
            self.broken.add((wl, tool.name))
            self.log(f"{wl} {tool.name} {op} {cache or ''}: ERROR {res['error'][:200]}")
            return None
        self.log(f"{wl} {tool.name} {op} {cache or ''}: "
                 + ", ".join(f"{k}={v:.4g}" for k, v in res.items() if isinstance(v, float))
                 + f" ({time.time() - t0:.1f}s wall)")
        return res

    def add(self, wl: str, tool: str, metric: str, value: float) -> None:
        self.raw.setdefault(wl, {}).setdefault(tool, {}).setdefault(metric, []).append(value)

    def run(self) -> None:
        a = self.args
        for wl in a.workloads:
            self.log(f"preparing {wl} at scale {a.scale}")
            man = workloads.ensure(a.workdir, wl, a.scale)
            os.makedirs(os.path.join(a.workdir, "files", wl), exist_ok=True)
            self.raw.setdefault(wl, {})
            slow: set[str] = set()
            for r in range(a.repeat):
                k = r % len(self.selected)
                order = self.selected[k:] + self.selected[:k]
                self.log(f"=== {wl} round {r + 1}/{a.repeat}")
                saved_ok = set()
                # Phase 1: every tool saves (its file is then read in phase 2).
                for name in order:
                    t = tools.REGISTRY[name]
                    if "save" not in t.ops or (wl, name) in self.broken or (name in slow and r >= a.slow_repeat):
                        continue
                    res = self.spawn(wl, t, "save")
                    if res is None:
                        continue
                    saved_ok.add(name)
                    self.add(wl, name, "save_fsync", res["time"] + res["fsync"])
                    self.add(wl, name, "rss_save", res["rss"])
                    self.add(wl, name, "size", res["size"])
                    if "save_nosync" in t.ops:
                        res2 = self.spawn(wl, t, "save_nosync")
                        if res2 is not None:
                            self.add(wl, name, "save", res2["time"])
                            self.add(wl, name, "fsync_after_nosync", res2["fsync"])
                    else:
                        self.add(wl, name, "save", res["time"])
                        self.add(wl, name, "fsync_after_save", res["fsync"])
                    if res["time"] + res["fsync"] > a.slow_threshold:
                        slow.add(name)
                os.sync()
                # Phase 2: reads, in the same order.
                for name in order:
                    t = tools.REGISTRY[name]
                    if (wl, name) in self.broken or (name in slow and r >= a.slow_repeat):
                        continue
                    if t.file_of and "save" in tools.REGISTRY[t.file_of].ops and t.file_of not in saved_ok:
                        continue  # its file was not written this round
                    if "save" in t.ops and name not in saved_ok:
                        continue
                    if "load" in t.ops:
                        for cache in ("warm", "cold"):
                            res = self.spawn(wl, t, "load", cache)
                            if res is None:
                                break
                            self.add(wl, name, f"load_{cache}", res["time"])
                            self.add(wl, name, f"rss_load_{cache}", res["rss"])
                            if t.file_of:
                                fsz = self.raw[wl].get(t.file_of, {}).get("size")
                                if fsz:
                                    self.add(wl, name, "size", fsz[-1])
                            if cache == "warm" and res["time"] > a.slow_threshold:
                                slow.add(name)
                    if "memcpy" in t.ops:
                        res = self.spawn(wl, t, "memcpy")
                        if res is not None:
                            self.add(wl, name, "load_warm", res["time"])
                            self.add(wl, name, "rss_load_warm", res["rss"])
                    if "codec" in t.ops:
                        res = self.spawn(wl, t, "codec")
                        if res is not None:
                            self.add(wl, name, "save", res["compress"])
                            self.add(wl, name, "load_warm", res["decompress"])
                            self.add(wl, name, "size", res["stored"])
                    if any(o in t.ops for o in ("one", "rows")):
                        res = self.spawn(wl, t, "partial")
                        if res is not None:
                            for kk, v in res.items():
                                if isinstance(v, float):
                                    self.add(wl, name, kk, v)
            # Files of this workload are no longer needed.
            if not a.keep_files:
                for name in self.selected:
                    tools.remove(self.path_of(wl, tools.REGISTRY[name]))


# ----------------------------------------------------------------------------- machine


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def _cmd(*argv: str) -> str:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=20).stdout.strip()
    except Exception:
        return ""


def _without_paths(text: Any) -> Any:
    """An error's traceback without this machine's directories (results are committed)."""
    if not isinstance(text, str):
        return text
    for prefix in sorted({os.path.dirname(HERE) + os.sep, sys.prefix + os.sep}, key=len, reverse=True):
        text = text.replace(prefix, "")
    return text


def _build_changed(before: dict[str, Any], after: dict[str, Any]) -> bool:
    """Whether what was measured changed: the commit or the extension itself (an edit under rust/
    that was not built into the measured extension, e.g. an example, changes neither)."""
    return any(before.get(k) != after.get(k) for k in ("commit", "extension_sha256"))


def bpz_build() -> dict[str, Any]:
    """Which bpz is measured: the git commit, whether rust/ has local changes, the extension's hash."""
    import hashlib

    root = os.path.dirname(HERE)
    out: dict[str, Any] = {"commit": _cmd("git", "-C", root, "rev-parse", "--short", "HEAD"),
                           "rust_dirty": bool(_cmd("git", "-C", root, "status", "--porcelain", "--", "rust"))}
    try:
        import importlib.util

        spec = importlib.util.find_spec("bpz._bpz")
        if spec and spec.origin:
            with open(spec.origin, "rb") as f:
                out["extension_sha256"] = hashlib.sha256(f.read()).hexdigest()[:16]
            out["extension_mtime"] = _dt.datetime.fromtimestamp(os.path.getmtime(spec.origin)).isoformat(timespec="seconds")
    except Exception:
        pass
    return out


def machine_info(workdir: str) -> dict[str, Any]:
    from importlib import metadata

    cpu = next((ln.split(":", 1)[1].strip() for ln in _read("/proc/cpuinfo").splitlines()
                if ln.startswith("model name")), platform.processor())
    mem = next((int(ln.split()[1]) * 1024 for ln in _read("/proc/meminfo").splitlines() if ln.startswith("MemTotal")), 0)
    fs = _cmd("findmnt", "-n", "-o", "SOURCE,FSTYPE,OPTIONS", "-T", workdir)
    dev = fs.split()[0] if fs else ""
    rota = _read(f"/sys/block/{os.path.basename(dev)}/queue/rotational").strip() if dev.startswith("/dev/") else ""
    vers = {}
    for pkg in ("bpz", "numpy", "ml_dtypes", "safetensors", "h5py", "msgpack", "flax", "jax", "orbax-checkpoint",
                "tensorstore", "torch", "zstandard", "blosc2", "matplotlib"):
        try:
            vers[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            vers[pkg] = None
    try:
        import h5py

        vers["libhdf5"] = h5py.version.hdf5_version
    except Exception:
        pass
    try:
        import zstandard

        vers["libzstd (python-zstandard)"] = zstandard.ZSTD_VERSION and ".".join(map(str, zstandard.ZSTD_VERSION))
    except Exception:
        pass
    reporting = None
    try:
        for d in os.listdir("/sys/bus/virtio/devices"):
            base = os.path.join("/sys/bus/virtio/devices", d)
            if _read(os.path.join(base, "device")).strip() == "0x0005":  # virtio-balloon
                feats = _read(os.path.join(base, "features")).strip()
                reporting = len(feats) > 5 and feats[5] == "1"  # VIRTIO_BALLOON_F_REPORTING
    except OSError:
        pass
    return {
        "balloon_free_page_reporting": reporting,
        "thp": _read("/sys/kernel/mm/transparent_hugepage/enabled").strip(),
        "cpu": cpu, "cores": os.cpu_count(), "ram_bytes": mem, "kernel": platform.release(),
        "python": platform.python_version(), "filesystem": fs, "rotational": rota,
        "virt": _cmd("systemd-detect-virt") or "?", "versions": vers,
        "env": {k: os.environ[k] for k in ("OPENBLAS_CORETYPE", "OMP_NUM_THREADS", "RAYON_NUM_THREADS",
                                            "MALLOC_ARENA_MAX") if k in os.environ},
    }


# ----------------------------------------------------------------------------- report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scale", type=float, default=1.0, help="1.0 = the issue's sizes; 0.01 for a smoke run")
    p.add_argument("--repeat", type=int, default=5, help="rounds (each figure is the median of them)")
    p.add_argument("--workloads", default=",".join(workloads.WORKLOADS),
                   help="comma-separated: " + ",".join(workloads.WORKLOADS) + " (or W1,W2,...)")
    p.add_argument("--tools", default="all",
                   help="comma-separated tool names or groups (bpz, alts, limits, codecs, all); "
                        "'-name' removes one. Known: " + ",".join(tools.REGISTRY))
    p.add_argument("--out", default=os.path.join(HERE, "RESULTS.md"))
    p.add_argument("--plot", default=os.path.join(HERE, "throughput.png"))
    p.add_argument("--json", default=None, help="write raw results (every sample) here")
    p.add_argument("--from-json", default=None, help="don't measure: rebuild --out/--plot from a --json file")
    p.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "bpz-bench"),
                   help="where workload caches and saved files go (needs ~15 GB at scale 1)")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds per measuring process")
    p.add_argument("--slow-threshold", type=float, default=60.0,
                   help="a tool whose save or warm load takes longer than this is 'slow'")
    p.add_argument("--slow-repeat", type=int, default=None,
                   help="rounds for slow tools (default: --repeat); the report shows n per figure")
    p.add_argument("--verify", action=argparse.BooleanOptionalAction, default=None,
                   help="check every loaded byte against the source (default: on when --scale < 0.05)")
    p.add_argument("--keep-files", action="store_true", help="keep the saved files after each workload")
    p.add_argument("--strict", action="store_true", help="exit 1 if any tool errored (CI smoke run)")
    args = p.parse_args(argv)

    import report

    if args.from_json:
        with open(args.from_json) as f:
            doc = json.load(f)
        report.write_all(doc, args.out, args.plot)
        print(f"wrote {args.out} and {args.plot}")
        return 0

    wls = []
    for w in args.workloads.split(","):
        w = w.strip()
        match = [x for x in workloads.WORKLOADS if x == w or x.split("-")[0] == w]
        if not match:
            p.error(f"unknown workload {w!r}")
        wls.append(match[0])
    args.workloads = wls
    if args.verify is None:
        args.verify = args.scale < 0.05
    if args.slow_repeat is None:
        args.slow_repeat = args.repeat

    want: list[str] = []
    for item in args.tools.split(","):
        item = item.strip()
        if not item:
            continue
        if item.startswith("-"):
            want = [x for x in want if x != item[1:] and x not in tools.GROUPS.get(item[1:], [])]
            continue
        names = list(tools.REGISTRY) if item == "all" else tools.GROUPS.get(item, [item])
        for n in names:
            if n not in tools.REGISTRY:
                p.error(f"unknown tool {n!r}; known: {', '.join(tools.REGISTRY)}")
            if n not in want:
                want.append(n)
    # Read variants need the tool that writes their file.
    for n in list(want):
        ft = tools.REGISTRY[n].file_of
        if ft and ft not in want:
            want.insert(want.index(n), ft)
    skipped = {}
    selected = []
    for n in want:
        why = tools.REGISTRY[n].available()
        if why:
            skipped[n] = why
            print(f"NOTE: skipping {n}: {why}", file=sys.stderr)
        else:
            selected.append(n)
    selected = [n for n in selected if not (tools.REGISTRY[n].file_of and tools.REGISTRY[n].file_of in skipped)]

    os.makedirs(args.workdir, exist_ok=True)
    info = machine_info(args.workdir)
    # From the repository root; never this machine's absolute paths.
    cmdline = " ".join(
        shlex.quote(x) for x in [os.path.relpath(sys.executable) if sys.executable.startswith(os.getcwd()) else sys.executable,
                                 os.path.relpath(os.path.abspath(__file__))] + sys.argv[1:])
    build_before = bpz_build()
    runner = Runner(args, selected)
    load_before = os.getloadavg()
    started = _dt.datetime.now(_dt.timezone.utc)
    runner.run()
    load_after = os.getloadavg()
    build_after = bpz_build()
    doc = {
        "command": cmdline, "argv": sys.argv[1:], "started": started.isoformat(timespec="seconds"),
        "duration_s": time.time() - runner.t_start, "processes": runner.n_runs,
        "scale": args.scale, "repeat": args.repeat, "slow_repeat": args.slow_repeat,
        "slow_threshold": args.slow_threshold, "verify": args.verify,
        "workloads": args.workloads, "tools": selected,
        "bpz_build": build_before, "bpz_build_changed": _build_changed(build_before, build_after), "skipped": skipped, "machine": info,
        "load_before": load_before, "load_after": load_after,
        "load_during": {"mean": statistics.mean(runner.loads) if runner.loads else None,
                        "max": max(runner.loads) if runner.loads else None,
                        "min": min(runner.loads) if runner.loads else None},
        "manifests": {wl: {k: v for k, v in workloads.ensure(args.workdir, wl, args.scale).items() if k != "leaves"}
                      | {"n_tensors": len(workloads.ensure(args.workdir, wl, args.scale)["leaves"]),
                         "one": workloads.middle_tensor(workloads.ensure(args.workdir, wl, args.scale)),
                         "rows": dict(zip(("tensor", "lo", "hi"),
                                          workloads.row_tensor(workloads.ensure(args.workdir, wl, args.scale))))}
                      for wl in args.workloads},
        "raw": runner.raw, "errors": {wl: {k: _without_paths(v) for k, v in errs.items()} for wl, errs in runner.errors.items()},
    }
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=1)
    report.write_all(doc, args.out, args.plot)
    print(f"wrote {args.out} and {args.plot} ({runner.n_runs} processes, {doc['duration_s']:.0f} s)")
    if runner.errors:
        print("ERRORS:", file=sys.stderr)
        for wl, errs in runner.errors.items():
            for k, v in errs.items():
                print(f"  {wl} {k}: {v.splitlines()[0]}", file=sys.stderr)
        if args.strict:
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
