"""Runs one jax.distributed job as N local processes (CPU devices), bounded in time."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "multihost_worker.py")
REPO = os.path.dirname(os.path.dirname(HERE))


def jax_too_old_for_sharding(version: str) -> bool:
    """Whether this jax is too old for sharded checkpoints (they need jax >= 0.4.30)."""
    return tuple(int(p) for p in re.findall(r"\d+", version)[:3]) < (0, 4, 30)


def ok(procs: list[Proc]) -> dict:
    """Every process's results merged, once each exited 0 (else their outputs, to see why)."""
    merged: dict = {}
    for p in procs:
        assert p.returncode == 0, "\n".join(q.describe() for q in procs)
        merged.update(p.results)
    return merged


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Proc:
    index: int
    returncode: int | None
    stdout: str
    stderr: str

    @property
    def results(self) -> dict:
        """What the worker reported: its lines ``RESULT <json>`` merged."""
        out: dict = {}
        for line in self.stdout.splitlines():
            if line.startswith("RESULT "):
                out.update(json.loads(line[len("RESULT "):]))
        return out

    def describe(self) -> str:
        return f"--- process {self.index} (exit {self.returncode})\n{self.stdout[-3000:]}\n{self.stderr[-6000:]}"


def launch(scenario: str, processes: int, devices_per_process: int, workdir: str, *, timeout: float = 90.0,
           env: dict[str, str] | None = None) -> list[Proc]:
    """Starts ``processes`` workers running ``scenario``; every child is killed after ``timeout`` s."""
    port = free_port()
    base = dict(os.environ)
    base.update(
        JAX_PLATFORMS="cpu",
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices_per_process}",
        PYTHONPATH=os.pathsep.join(filter(None, [os.path.join(REPO, "python"), base.get("PYTHONPATH")])),
        PYTHONUNBUFFERED="1",
    )
    base.update(env or {})
    children, files = [], []
    logs = os.path.join(workdir, "logs")
    os.makedirs(logs, exist_ok=True)
    for i in range(processes):
        argv = [sys.executable, WORKER, scenario, workdir, f"127.0.0.1:{port}", str(processes), str(i)]
        out = open(os.path.join(logs, f"{scenario}-{i}.out"), "w+")
        err = open(os.path.join(logs, f"{scenario}-{i}.err"), "w+")
        files.append((out, err))
        children.append(subprocess.Popen(argv, env=base, stdout=out, stderr=err, text=True, start_new_session=True))
    deadline = time.monotonic() + timeout
    timed_out = False
    try:
        while any(c.poll() is None for c in children):
            if time.monotonic() > deadline:
                timed_out = True
                break
            time.sleep(0.05)
    finally:
        _kill_all(children)
    procs = []
    for i, (child, (out, err)) in enumerate(zip(children, files)):
        out.seek(0)
        err.seek(0)
        text_out, text_err = out.read(), err.read()
        out.close()
        err.close()
        if timed_out:
            text_err += f"\n[killed: the job ran over {timeout} s]"
        procs.append(Proc(i, child.returncode, text_out, text_err))
    return procs


def _kill_all(children: list[subprocess.Popen]) -> None:
    for child in children:
        if child.poll() is None:
            try:
                os.killpg(child.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    for child in children:
        try:
            child.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
