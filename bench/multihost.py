"""Sharded jax.Array checkpoints on jax.distributed: bpz.jax against Orbax, same run, same state.

    .venv/bin/python bench/multihost.py --scale 0.25 --repeat 2 --out /tmp/multihost.md

Each measurement is a real jax.distributed job of local CPU processes (JAX_PLATFORMS=cpu):

* save + restore on 2 processes x 2 devices (the mesh it was saved on);
* restore of that checkpoint onto 4 processes x 1 device (rows over a 4-device mesh).

Two states, ``--scale`` x 1 GiB each: ``sharded`` (float32 matrices sharded over the 2x2 mesh,
plus a bf16 one) and ``mix`` (half sharded, half fully replicated on every device). Per
process: wall time between two barriers (the slowest process is reported), bytes written
(``wchar`` of /proc/self/io: every byte handed to write(), so also what a tool writes and
later deletes), bytes read on restore (bpz: the decoded bytes of the chunks its row-range
reads touched; Orbax: ``rchar``; bpz's own files are memory-mapped, which ``rchar`` does not
see), and peak RSS (VmHWM of the phase, reset before it). Files stay in the page cache
between save and restore (warm reads for both tools).

Orbax runs with its default handler (``StandardCheckpointer``, OCDBT + zarr3 through
TensorStore) and waits until finished; bpz with ``bpz.jax.save`` defaults
(``compression="auto"``: random data is stored raw) and, as ``bpz-raw``, ``compression=None``.

``--s3`` saves and restores through an S3 server instead (versitygw on 127.0.0.1, started as
tests/remote starts it, its posix backend under the work directory): bpz only, the server's
work on the same machine counted in the times; "written" is then what the processes handed
to write() (``wchar``), sockets included.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GIB = 1 << 30
HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)


# -- the worker (one process of a job) --------------------------------------------------------------


def _proc_io() -> dict[str, int]:
    out = {}
    with open("/proc/self/io") as f:
        for line in f:
            k, v = line.split(":")
            out[k] = int(v)
    return out


def _reset_peak_rss() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS


def _peak_rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def worker(args: argparse.Namespace) -> None:
    import jax

    jax.distributed.initialize(args.coordinator, num_processes=args.processes, process_id=args.process_id,
                               initialization_timeout=120)
    import jax.numpy as jnp
    import numpy as np
    from jax.experimental import multihost_utils
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    pid = jax.process_index()
    size = int(args.scale * GIB)

    def shapes() -> dict[str, tuple[tuple[int, ...], str, str]]:
        """name -> (shape, dtype, sharding kind) of the state; 4096 columns, rows from the size."""
        cols = 4096
        if args.state == "sharded":
            rows = max(size * 7 // 8 // (4 * cols * 2) // 4 * 4, 4)
            return {"w0": ((rows, cols), "float32", "xy"), "w1": ((rows, cols), "float32", "xy"),
                    "e": ((max(size // 8 // (2 * cols) // 4 * 4, 4), cols), "bfloat16", "rows")}
        rows = max(size // 2 // (4 * cols) // 4 * 4, 4)
        return {"w": ((rows, cols), "float32", "xy"), "rep": ((rows, cols), "float32", "replicated")}

    def sharding(kind: str, mesh: Mesh) -> NamedSharding:
        if len(mesh.axis_names) == 1:  # the restore mesh: rows over every device
            return NamedSharding(mesh, P(None) if kind == "replicated" else P(mesh.axis_names[0]))
        return NamedSharding(mesh, {"xy": P("x", "y"), "rows": P(("x", "y")), "replicated": P()}[kind])

    def barrier(name: str) -> None:
        multihost_utils.sync_global_devices(name)

    path = (f"{args.dest}/{args.tool}-{args.state}" if args.dest
            else os.path.join(args.workdir, f"{args.tool}-{args.state}"))
    options = json.loads(args.storage_options) if args.storage_options else None
    result: dict[str, object] = {"process": pid}
    if args.phase == "save":
        mesh = Mesh(np.array(jax.devices()).reshape(2, 2), ("x", "y"))
        rng = np.random.default_rng(0)
        state = {}
        for name, (shape, dtype, kind) in shapes().items():
            host = rng.standard_normal(shape, dtype=np.float32).astype(jnp.dtype(dtype))
            state[name] = jax.make_array_from_callback(shape, sharding(kind, mesh), lambda idx, h=host: h[idx])
            del host
        jax.block_until_ready(state)
        result["state_bytes"] = sum(x.nbytes for x in state.values())
        targets = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=v.sharding) for k, v in state.items()}
        if args.tool == "orbax":
            import orbax.checkpoint as ocp

            ckptr = ocp.StandardCheckpointer()
        else:
            import bpz.jax  # imported before the clock starts, as Orbax is
        barrier("start")
        io0 = _proc_io()
        _reset_peak_rss()
        t0 = time.perf_counter()
        if args.tool == "orbax":
            ckptr.save(path, state)
            ckptr.wait_until_finished()
        else:
            save_stats: dict = {}
            bpz.jax.save(path, state, compression=None if args.tool == "bpz-raw" else "auto", stats=save_stats,
                         storage_options=options)
            phases = ("plan_s", "token_s", "write_s", "commit_s")
            result["save_phases"] = {k: save_stats[k] for k in phases if k in save_stats}
        result["save_s"] = time.perf_counter() - t0
        result["save_rss"] = _peak_rss()
        io1 = _proc_io()
        result["written"] = io1["wchar"] - io0["wchar"]
        barrier("saved")
        del state
        _reset_peak_rss()
        io0 = _proc_io()
        t0 = time.perf_counter()
        if args.tool == "orbax":
            restored = ckptr.restore(path, targets)
        else:
            stats: dict = {}
            restored = bpz.jax.load(path, target=targets, stats=stats, storage_options=options)
        jax.block_until_ready(restored)
        result["restore_s"] = time.perf_counter() - t0
        result["restore_rss"] = _peak_rss()
        result["restore_rchar"] = _proc_io()["rchar"] - io0["rchar"]
        barrier("restored")
    else:  # restore onto 4 processes x 1 device
        mesh = Mesh(np.array(jax.devices()), ("p",))
        targets = {name: jax.ShapeDtypeStruct(shape, jnp.dtype(dtype), sharding=sharding(kind, mesh))
                   for name, (shape, dtype, kind) in shapes().items()}
        if args.tool == "orbax":
            import orbax.checkpoint as ocp

            ckptr = ocp.StandardCheckpointer()
        else:
            import bpz.jax
        barrier("start")
        _reset_peak_rss()
        io0 = _proc_io()
        t0 = time.perf_counter()
        stats = {}
        if args.tool == "orbax":
            restored = ckptr.restore(path, targets)
        else:
            restored = bpz.jax.load(path, target=targets, stats=stats, storage_options=options)
        jax.block_until_ready(restored)
        result["reshard_s"] = time.perf_counter() - t0
        result["reshard_rss"] = _peak_rss()
        result["reshard_rchar"] = _proc_io()["rchar"] - io0["rchar"]
        result["reshard_needed"] = sum(s.data.nbytes for a in restored.values() for s in a.addressable_shards)
        if stats:
            result["reshard_read"] = stats["bytes_read"]
        barrier("done")
    print("RESULT " + json.dumps(result), flush=True)
    jax.distributed.shutdown()


# -- the driver ------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_job(tool: str, state: str, phase: str, processes: int, devices: int, workdir: str, scale: float,
            timeout: float, remote: list[str] | None = None) -> list[dict]:
    port = _free_port()
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
               PYTHONPATH=os.pathsep.join(filter(None, [os.path.join(REPO, "python"), os.environ.get("PYTHONPATH")])))
    children = []
    for i in range(processes):
        argv = [sys.executable, os.path.abspath(__file__), "--worker", "--tool", tool, "--state", state,
                "--phase", phase, "--coordinator", f"127.0.0.1:{port}", "--processes", str(processes),
                "--process-id", str(i), "--workdir", workdir, "--scale", str(scale), *(remote or [])]
        children.append(subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                         start_new_session=True))
    deadline = time.monotonic() + timeout
    results = []
    try:
        for child in children:
            try:
                out, err = child.communicate(timeout=max(deadline - time.monotonic(), 1))
            except subprocess.TimeoutExpired:
                raise RuntimeError(f"{tool}/{state}/{phase}: over {timeout} s") from None
            lines = [ln for ln in out.splitlines() if ln.startswith("RESULT ")]
            if child.returncode != 0 or not lines:
                raise RuntimeError(f"{tool}/{state}/{phase}: process failed ({child.returncode}):\n{err[-4000:]}")
            results.append(json.loads(lines[-1][len("RESULT "):]))
    finally:
        for child in children:
            if child.poll() is None:
                os.killpg(child.pid, signal.SIGKILL)
                child.wait()
    return results


def _mib(n: float) -> str:
    return f"{n / (1 << 20):,.0f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scale", type=float, default=1.0, help="state size in GiB (default 1.0)")
    ap.add_argument("--repeat", type=int, default=1, help="rounds (the median is reported)")
    ap.add_argument("--tools", default="bpz,bpz-raw,orbax")
    ap.add_argument("--states", default="sharded,mix")
    ap.add_argument("--workdir", default=None, help="where checkpoints go (default: a temporary directory)")
    ap.add_argument("--out", default=None, help="write the Markdown table here too")
    ap.add_argument("--json", default=None, help="write the raw per-process samples here")
    ap.add_argument("--timeout", type=float, default=900)
    ap.add_argument("--s3", action="store_true", help="through an S3 server on 127.0.0.1 (versitygw; bpz only)")
    # worker arguments
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--tool", help=argparse.SUPPRESS)
    ap.add_argument("--state", help=argparse.SUPPRESS)
    ap.add_argument("--phase", help=argparse.SUPPRESS)
    ap.add_argument("--coordinator", help=argparse.SUPPRESS)
    ap.add_argument("--processes", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--process-id", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--dest", help=argparse.SUPPRESS)
    ap.add_argument("--storage-options", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return

    import jax

    import bpz

    versions = f"bpz {bpz.__version__}, jax {jax.__version__}"
    try:
        if args.s3:
            raise ImportError("not measured on S3")
        import orbax.checkpoint as ocp

        versions += f", orbax-checkpoint {ocp.__version__}"
    except ImportError as e:
        args.tools = ",".join(t for t in args.tools.split(",") if t != "orbax")
        print(f"orbax-checkpoint: {e}: measuring bpz only", file=sys.stderr)
    workdir = args.workdir or tempfile.mkdtemp(prefix="bpz-multihost-")
    os.makedirs(workdir, exist_ok=True)
    samples: dict[tuple[str, str], list[dict]] = {}
    try:
        with contextlib.ExitStack() as stack:
            remote: list[str] | None = None
            where = workdir
            if args.s3:
                sys.path.insert(0, os.path.join(REPO, "tests", "remote"))
                from remote_servers import running_s3

                server_dir = os.path.join(workdir, "s3")
                shutil.rmtree(server_dir, ignore_errors=True)
                os.makedirs(server_dir)
                server = stack.enter_context(running_s3(Path(server_dir)))
                remote = ["--dest", server.url("bench"), "--storage-options", json.dumps(server.options())]
                # a checkpoint's objects are files of the server's posix backend: removed as files
                where = str(server.root / server.bucket / "bench")
                versions += ", to versitygw on 127.0.0.1"
            _run_rounds(args, workdir, where, samples, remote)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    _table(args, versions, samples)


def _run_rounds(args: argparse.Namespace, workdir: str, where: str, samples: dict[tuple[str, str], list[dict]],
                remote: list[str] | None) -> None:
    for r in range(args.repeat):
        for state in args.states.split(","):
            for tool in args.tools.split(","):  # interleaved: drift hits every tool alike
                shutil.rmtree(os.path.join(where, f"{tool}-{state}"), ignore_errors=True)
                save = run_job(tool, state, "save", 2, 2, workdir, args.scale, args.timeout, remote)
                reshard = run_job(tool, state, "reshard", 4, 1, workdir, args.scale, args.timeout, remote)
                sample = {"save": save, "reshard": reshard}
                samples.setdefault((tool, state), []).append(sample)
                print(f"round {r + 1} {state:8s} {tool:8s} save {max(p['save_s'] for p in save):6.2f} s  "
                      f"restore {max(p['restore_s'] for p in save):6.2f} s  "
                      f"reshard {max(p['reshard_s'] for p in reshard):6.2f} s", file=sys.stderr, flush=True)
                shutil.rmtree(os.path.join(where, f"{tool}-{state}"), ignore_errors=True)


def _table(args: argparse.Namespace, versions: str, samples: dict[tuple[str, str], list[dict]]) -> None:
    med = statistics.median
    lines = [f"Sharded checkpoints, 2 processes x 2 CPU devices (restore onto 4 x 1), {versions}; "
             f"`--scale {args.scale}` ({args.scale:g} GiB a state), median of {args.repeat} round(s), slowest process.",
             "",
             "| state | tool | save s | restore s (same mesh) | restore s (4x1) | written MiB per process | "
             "peak RSS MiB save / restore | 4x1 read / needed MiB per process |",
             "|---|---|---:|---:|---:|---|---|---|"]
    for (tool, state), runs in samples.items():
        save_s = med(max(p["save_s"] for p in s["save"]) for s in runs)
        restore_s = med(max(p["restore_s"] for p in s["save"]) for s in runs)
        reshard_s = med(max(p["reshard_s"] for p in s["reshard"]) for s in runs)
        last = runs[-1]
        written = " / ".join(_mib(p["written"]) for p in sorted(last["save"], key=lambda p: p["process"]))
        rss = (f"{_mib(max(p['save_rss'] for p in last['save']))} / "
               f"{_mib(max(p['restore_rss'] for p in last['save']))}")
        reshard = sorted(last["reshard"], key=lambda p: p["process"])
        read = " ".join(f"{_mib(p.get('reshard_read', p['reshard_rchar']))}/{_mib(p['reshard_needed'])}"
                        for p in reshard)
        lines.append(f"| {state} | {tool} | {save_s:.2f} | {restore_s:.2f} | {reshard_s:.2f} | {written} | {rss} "
                     f"| {read} |")
    table = "\n".join(lines)
    print(table)
    if args.out:
        with open(args.out, "w") as f:
            f.write(table + "\n")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({f"{t}/{s}": v for (t, s), v in samples.items()}, f, indent=1)


if __name__ == "__main__":
    main()
