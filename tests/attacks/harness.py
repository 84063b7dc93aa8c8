"""Runs hostile files through bpz in child processes with a memory limit and a timeout.

One child handles many files in turn (so Python and numpy start once); a child that dies
(a signal, an abort) or stalls past the timeout is recorded against the file it was on and
replaced by a fresh one for the remaining files. Used by ``test_attacks.py`` and handy by
hand::

    python tests/attacks/harness.py tests/attacks/corpus/*.bpz
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time

#: Address-space limit of a child (RLIMIT_AS): hostile files must fail cleanly under it.
MEMORY_LIMIT = 2 << 30
#: Seconds one file may take in a child, all stages together.
TIMEOUT = 60.0

CHILD = r"""
import json, os, resource, sys, traceback
limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
import numpy as np
import bpz
from bpz._legacy import read_bp, load_pickle

import time

def outcome(fn):
    t0 = time.perf_counter()
    try:
        fn()
        out = {"result": "ok"}
    except bpz.errors.BpzError as e:
        out = {"result": getattr(e, "kind", None) or type(e).__name__, "cls": type(e).__name__, "msg": str(e)[:2000]}
    except BaseException as e:  # classified by the parent; anything unexpected is a finding
        out = {"result": type(e).__name__, "cls": type(e).__name__, "msg": str(e)[:2000],
               "tb": traceback.format_exc()[-3000:]}
    out["seconds"] = round(time.perf_counter() - t0, 3)
    return out

def run_bpz(path):
    res = {}
    state = {}
    def do_open():
        state["a"] = bpz.open(path)
    res["open"] = outcome(do_open)
    if "a" in state:
        a = state["a"]
        res["load"] = outcome(lambda: a.load())
        # The default check (checksums), then decoding too (within its budget).
        res["verify"] = outcome(lambda: (a.verify(), a.verify(decode=True)))
        a.close()
    return res

def run_bp(path):
    return {"read_bp": outcome(lambda: read_bp(path)), "load_pytree": outcome(lambda: bpz.load_pytree(path))}

def run_pkl(path):
    return {"load_pickle": outcome(lambda: load_pickle(path))}

for line in sys.stdin:
    path = line.rstrip("\n")
    if not path:
        continue
    print("START " + path, flush=True)
    if path.endswith(".bp"):
        res = run_bp(path)
    elif path.endswith(".pkl"):
        res = run_pkl(path)
    else:
        res = run_bpz(path)
    print("RESULT " + json.dumps(res), flush=True)
"""


def run_files(paths: list[str], memory_limit: int = MEMORY_LIMIT, timeout: float = TIMEOUT,
              env: dict | None = None) -> dict[str, dict]:
    """``{path: {stage: {"result": ..., "msg": ...}}}``; a crash gives ``{"crash": ...}``."""
    results: dict[str, dict] = {}
    todo = list(paths)
    while todo:
        proc = subprocess.Popen([sys.executable, "-c", CHILD, str(memory_limit)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        assert proc.stdin and proc.stdout
        proc.stdin.write("".join(p + "\n" for p in todo).encode())
        proc.stdin.close()
        current = None
        deadline = time.monotonic() + timeout + 30  # the first file pays for the imports
        buf = b""
        fd = proc.stdout.fileno()
        dead = None
        while True:
            if b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                text = line.decode()
                if text.startswith("START "):
                    current = text[6:]
                    deadline = time.monotonic() + timeout
                elif text.startswith("RESULT ") and current is not None:
                    results[current] = json.loads(text[7:])
                    todo.remove(current)
                    current = None
                continue
            left = deadline - time.monotonic()
            if left <= 0:
                proc.kill()
                proc.wait()
                dead = {"crash": f"timeout after {timeout:.0f} s"}
                break
            ready, _, _ = select.select([fd], [], [], min(left, 1.0))
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    rc = proc.wait()
                    err = proc.stderr.read().decode(errors="replace")[-3000:] if proc.stderr else ""
                    dead = {"crash": f"exit status {rc}" + (f" (signal {-rc})" if rc < 0 else ""), "stderr": err}
                    break
                buf += chunk
        if current is None:
            # died between files (or finished): nothing to blame
            if todo and dead:
                results[todo[0]] = {"crash_before_start": dead}
                todo.pop(0)
            continue
        results[current] = dead or {"crash": "unknown"}
        todo.remove(current)
    return results


if __name__ == "__main__":
    out = run_files([os.path.abspath(p) for p in sys.argv[1:]])
    for path, res in out.items():
        print(os.path.basename(path), json.dumps({k: (v.get("result") if isinstance(v, dict) else v)
                                                  for k, v in res.items()}))
