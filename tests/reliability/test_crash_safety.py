"""Crash safety: saves killed with SIGKILL at random points never lose or corrupt a checkpoint.

A *zygote* process imports numpy and bpz once and forks a child per run; each child saves a
sequence of archives (zstd-compressed, ~20 MB each) to one destination, logging
``BEGIN s``, ``FINISHING s`` (every tensor written: index, trailer, fsync and rename follow)
and ``SAVED s`` to a file. The test kills the child with SIGKILL either at a uniformly
random time in its run or at a random delay after ``FINISHING`` (0 to 1.5 times the finish
phase as measured so far: the index write, fsync, rename and directory fsync), then checks that the destination opens, verifies and
holds exactly the content of the last saved step, or of the step being finished. The same
for numbered checkpoints with ``keep`` retention, through ``restore_checkpoint``.

Temporary files (``.NAME.PID-HEX-N.bpz-tmp``) left by killed saves are never read by bpz
(they are hidden siblings, not matched by ``checkpoint_steps``), and a later successful save
of the same destination removes those older than ``STALE_TEMP_AGE`` (15 minutes, in the
Rust writer); the test ages them and checks that they go.

Environment: ``BPZ_CRASH_KILLS`` (default 52) and ``BPZ_CRASH_SEED`` (default 7).
"""

from __future__ import annotations

import errno
import glob
import json
import os
import random
import re
import select
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import bpz
from bpz import checkpoints

KILLS = int(os.environ.get("BPZ_CRASH_KILLS", "52"))
SEED = int(os.environ.get("BPZ_CRASH_SEED", "7"))
N_FLOATS = 4 << 20  # 16 MiB of float32 noise per save, plus ~5 MiB of compressible state
STEPS_PER_RUN = 10
TEMP = re.compile(r"^\..+\.\d+-[0-9a-f]+-\d+\.bpz-tmp$")

# The content of step s, built identically by the test and the children.
TREE_CODE = r"""
import numpy as np
_BASE = {}
def base(n):
    if n not in _BASE:
        _BASE[n] = np.random.default_rng(12345).standard_normal(n).astype(np.float32)
    return _BASE[n]
def step_tree(s, n):
    b = base(n)
    k = (s * 7919) % n
    return {
        "step": s,
        "w": np.roll(b, k),
        "state": {"spike": (np.arange(n // 4) % (s + 3)) == 0,
                  "counter": np.arange(n // 4, dtype=np.int32) * (s + 1)},
        "history": [np.full(3, s, np.int64), (s, "text")],
    }
"""
exec(TREE_CODE)

ZYGOTE = TREE_CODE + r"""
import json, os, sys
import bpz, bpz.write
from bpz import checkpoints

def log(fd, text):
    import time
    os.write(fd, ("%s %.6f\n" % (text, time.monotonic())).encode())

def run(cmd):
    fd = os.open(cmd["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    original = bpz.write.write_archive
    state = {}
    def patched(*args, **kw):
        def progress(done, total):
            if done == total:
                log(fd, "FINISHING %d" % state["step"])
        kw["progress"] = progress
        return original(*args, **kw)
    bpz.write.write_archive = patched
    if cmd["mode"] == "rollback":
        return run_ops(cmd, fd, state)
    for s in cmd["steps"]:
        state["step"] = s
        tree = step_tree(s, cmd["n"])
        log(fd, "BEGIN %d" % s)
        if cmd["mode"] == "checkpoint":
            checkpoints.save_checkpoint(cmd["dest"], tree, s, keep=2, compression="zstd")
        else:
            bpz.save_pytree(cmd["dest"], tree, verbose=False, compression="zstd")
        log(fd, "SAVED %d" % s)

def run_ops(cmd, fd, state):
    # Numbered saves, some rolling back (overwrite=True); events are logged by op index.
    import warnings
    warnings.simplefilter("ignore")  # "Removing checkpoint at ..."
    am = bpz.AsyncManager() if cmd["async"] else None
    for i, (s, overwrite) in enumerate(cmd["ops"]):
        state["step"] = i
        tree = step_tree(s, cmd["n"])
        log(fd, "BEGIN %d" % i)
        checkpoints.save_checkpoint(cmd["dest"], tree, s, keep=cmd["keep"], overwrite=overwrite,
                                    compression="zstd", async_manager=am)
        if am is not None:
            am.wait_previous_save()
        log(fd, "SAVED %d" % i)

for line in sys.stdin:
    cmd = json.loads(line)
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            run(cmd)
        except BaseException as e:
            sys.stderr.write("child failed: %r\n" % (e,))
            code = 3
        os._exit(code)
    print(json.dumps({"pid": pid}), flush=True)
    _, status = os.waitpid(pid, 0)
    print(json.dumps({"status": status}), flush=True)
"""


class Zygote:
    def __init__(self) -> None:
        env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
        self.proc = subprocess.Popen([sys.executable, "-c", ZYGOTE], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     env=env, text=True, bufsize=1)

    def start(self, **cmd: object) -> int:
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())["pid"]

    def wait(self, timeout: float = 120.0) -> int:
        assert self.proc.stdout
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        assert ready, "a child did not finish"
        return json.loads(self.proc.stdout.readline())["status"]

    def run_and_kill(self, how: str, when: float, finish_step: int, log: str, **cmd: object) -> tuple[bool, bool]:
        """Starts a run and SIGKILLs it as :func:`kill_plan` said: ``when`` s after its start
        (``how="time"``), or ``when`` s after it logged FINISHING of ``finish_step``; waits for it.
        Returns (killed by the signal, killed in that finish window). A run that ended before
        the signal must have succeeded."""
        pid = self.start(log=log, **cmd)
        t_run = time.monotonic()
        in_window = False
        if how == "finish":
            if wait_for(log, "FINISHING", finish_step, pid):
                time.sleep(when)
                in_window = True
        else:
            time.sleep(max(0.0, when - (time.monotonic() - t_run)))
        try:
            os.kill(pid, signal.SIGKILL)
            killed = True
        except ProcessLookupError:
            killed = False
        status = self.wait()
        killed = killed and os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
        assert killed or status == 0, f"child failed on its own (status {status})"
        return killed, in_window

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        self.proc.wait(timeout=30)


def read_log(path: str, times: bool = False) -> list:
    """``[(event, step)]``, or ``[(event, step, monotonic time)]`` with ``times``."""
    if not os.path.exists(path):
        return []
    with open(path) as f:
        rows = [line.split() for line in f if line.endswith("\n")]
    return [(w, int(s), float(t)) if times else (w, int(s)) for w, s, t in rows]


def wait_for(path: str, event: str, step: int, pid: int, timeout: float = 60.0) -> bool:
    """Polls the log until ``event step`` appears; False if the child ended first."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if (event, step) in read_log(path):
            return True
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        time.sleep(0.0005)
    raise AssertionError(f"{event} {step} never came")


def assert_same(got: object, want: object, where: str = "tree") -> None:
    if isinstance(want, dict):
        assert isinstance(got, dict) and list(got) == list(want), where
        for k in want:
            assert_same(got[k], want[k], f"{where}[{k!r}]")
    elif isinstance(want, (list, tuple)):
        assert type(got) is type(want) and len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want)):
            assert_same(g, w, f"{where}[{i}]")
    elif isinstance(want, np.ndarray):
        assert isinstance(got, np.ndarray) and got.dtype == want.dtype and np.array_equal(got, want), where
    else:
        assert got == want, f"{where}: {got!r} != {want!r}"


def check_archive(path: str, allowed: set[int], n: int = N_FLOATS) -> int:
    """Opens, verifies and compares ``path``; returns its step (one of ``allowed``)."""
    with bpz.open(path) as a:
        a.verify()
        tree = a.load()
    step = tree["step"]
    assert step in allowed, f"{path} holds step {step}, expected one of {sorted(allowed)}"
    assert_same(tree, step_tree(step, n))
    return step


def temps(directory: str) -> list[str]:
    return sorted(n for n in os.listdir(directory) if TEMP.match(n))


def allowed_steps(events: list[tuple[str, int]], last_saved: int) -> tuple[set[int], int]:
    """Steps the destination may hold after a kill, and the newest certainly saved one."""
    saved = [s for e, s in events if e == "SAVED"]
    if saved:
        last_saved = max(saved)
    allowed = {last_saved}
    finishing = [s for e, s in events if e == "FINISHING" and s > last_saved]
    allowed.update(finishing)  # the rename may or may not have happened
    return allowed, last_saved


def kill_plan(rng: random.Random, run_seconds: float, finish_seconds: float) -> tuple[str, float, int]:
    """``("time", t, 0)``: kill at t s after the start; ``("finish", delay, k)``: delay s after FINISHING of the k-th save."""
    if rng.random() < 0.45:  # not after the last save: the child must still be running
        return "finish", rng.uniform(0.0, 1.5 * finish_seconds), rng.randrange(STEPS_PER_RUN - 1)
    return "time", rng.uniform(0.0, 0.95 * run_seconds), 0


def durations(events: list, start: str, end: str) -> list[float]:
    """Seconds from ``start`` to ``end`` of each step that logged both."""
    t = {(e, s): when for e, s, when in events}
    return [t[(end, s)] - t[(start, s)] for e, s, _ in events if e == start and (end, s) in t]


def test_sigkill_during_saves_never_loses_the_destination(tmp_path):
    rng = random.Random(SEED)
    zyg = Zygote()
    stats = {"kills": 0, "runs": 0, "finish_window": 0, "rename_not_done": 0, "rename_done": 0, "held_new": 0,
             "held_old": 0, "temps_left": 0, "complete_temps": 0}
    t_start = time.monotonic()
    try:
        pytree_dir = tmp_path / "pytree"
        ckpt_dir = tmp_path / "ckpt"
        pytree_dir.mkdir()
        dest = str(pytree_dir / "model.bpz")
        # Step 0 is saved completely first; a calibration run measures a run's length.
        log0 = str(tmp_path / "calib.log")
        zyg.start(mode="pytree", dest=dest, log=log0, steps=[0, 1], n=N_FLOATS)
        assert zyg.wait() == 0
        # How long a save and its finish phase (index, trailer, fsync, rename, directory
        # fsync) take here, updated from every run (the machine may be busy).
        saves = durations(read_log(log0, times=True), "BEGIN", "SAVED")
        finishes = durations(read_log(log0, times=True), "FINISHING", "SAVED")
        last = {"pytree": check_archive(dest, {1}), "checkpoint": -1}
        next_step = {"pytree": 2, "checkpoint": 0}
        seen_temps: set[str] = set()
        i = 0
        while stats["kills"] < KILLS and i < 2 * KILLS:
            i += 1
            mode = "checkpoint" if i % 3 == 2 else "pytree"
            target = str(ckpt_dir) if mode == "checkpoint" else dest
            log = str(tmp_path / f"run{i}.log")
            steps = list(range(next_step[mode], next_step[mode] + STEPS_PER_RUN))
            run_seconds = float(np.median(saves[-12:])) * STEPS_PER_RUN
            finish_seconds = max(0.002, float(np.median(finishes[-12:])))
            how, when, k = kill_plan(rng, run_seconds, finish_seconds)
            killed, in_window = zyg.run_and_kill(how, when, steps[k], log, mode=mode, dest=target, steps=steps,
                                                 n=N_FLOATS)
            stats["finish_window"] += in_window
            stats["kills"] += killed
            stats["runs"] += 1
            timed = read_log(log, times=True)
            saves += durations(timed, "BEGIN", "SAVED")
            finishes += durations(timed, "FINISHING", "SAVED")
            events = [(e, s) for e, s, _ in timed]
            allowed, last_saved = allowed_steps(events, last[mode])
            if mode == "pytree":
                step = check_archive(dest, allowed)
                left = temps(str(pytree_dir))
                assert set(os.listdir(pytree_dir)) == {"model.bpz", *left}
            else:
                if last_saved < 0 and not any(e == "FINISHING" for e, _ in events):
                    assert checkpoints.latest_checkpoint(target) is None
                    step = -1
                else:
                    restored = checkpoints.restore_checkpoint(target)
                    step = restored["step"]
                    assert step in allowed, (step, allowed)
                    assert_same(restored, step_tree(step, N_FLOATS))
                    path = checkpoints.latest_checkpoint(target)
                    assert path.endswith(f"checkpoint_{step}")
                    check_archive(path, {step})
                    # every numbered checkpoint present is complete (retention may lag a kill)
                    for s, p in checkpoints.checkpoint_steps(target):
                        check_archive(p, {int(s)})
                left = temps(target) if os.path.isdir(target) else []
            stats["held_new" if step != last[mode] else "held_old"] += 1
            in_flight = [s for e, s in events if e == "FINISHING" and s > last_saved]
            if killed and in_flight:  # killed between the last FINISHING and its SAVED
                stats["rename_done" if step == in_flight[-1] else "rename_not_done"] += 1
            stats["temps_left"] += len(set(left) - seen_temps)
            # Readers never look at temporaries; opened on purpose, a half-written one is
            # refused clearly (a killed save ends before its trailer), and one killed between
            # its fsync and its rename is a complete archive of the step being saved.
            for name in left:
                if name in seen_temps:
                    continue
                seen_temps.add(name)
                tmp_file = os.path.join(os.path.dirname(dest) if mode == "pytree" else target, name)
                try:
                    check_archive(tmp_file, set(steps))
                    stats["complete_temps"] += 1
                except bpz.errors.FormatError as e:
                    assert name in str(e)
            last[mode] = step
            next_step[mode] = steps[-1] + 1
        # Aged temporaries are removed by the next successful save of the same destination.
        for d in (str(pytree_dir), str(ckpt_dir)):
            for name in temps(d):
                old = time.time() - 3600
                os.utime(os.path.join(d, name), (old, old))
        log = str(tmp_path / "final.log")
        zyg.start(mode="pytree", dest=dest, log=log, steps=[next_step["pytree"]], n=N_FLOATS)
        assert zyg.wait() == 0
        assert os.listdir(pytree_dir) == ["model.bpz"]
        check_archive(dest, {next_step["pytree"]})
        ckpt_temps = temps(str(ckpt_dir))
        zyg.start(mode="checkpoint", dest=str(ckpt_dir), log=log, steps=[next_step["checkpoint"]], n=N_FLOATS)
        assert zyg.wait() == 0
        # Retention removes numbered files; stale temporaries go only with their own destination's saves.
        remaining = temps(str(ckpt_dir))
        assert all(n in ckpt_temps for n in remaining)
        assert not any(n.startswith(f".checkpoint_{next_step['checkpoint']}.") for n in remaining)
        check_archive(checkpoints.latest_checkpoint(str(ckpt_dir)), {next_step["checkpoint"]})
    finally:
        zyg.close()
    stats["seconds"] = round(time.monotonic() - t_start, 1)
    stats["save_ms"], stats["finish_ms"] = round(float(np.median(saves)) * 1000), round(float(np.median(finishes)) * 1000)
    print("crash-safety:", json.dumps(stats))
    assert stats["kills"] >= KILLS, stats
    assert stats["finish_window"] >= KILLS // 4, stats
    assert stats["held_new"] and stats["held_old"], stats
    assert stats["rename_done"] and stats["rename_not_done"], stats  # kills landed on both sides of the rename


# ------------------------------------------------------------------ rollback
ROLLBACK_KILLS = int(os.environ.get("BPZ_CRASH_ROLLBACK_KILLS", "24"))
ROLLBACK_N = 1 << 20  # 4 MiB of noise per save: many saves, each with a short finish phase
ROLLBACK_KEEP = 3


def after_save(steps: set[int], step: int, keep: int = ROLLBACK_KEEP) -> set[int]:
    """The checkpoints left by ``save_checkpoint(step, overwrite=True, keep=keep)``."""
    left = sorted({s for s in steps if s <= step} | {step})
    return set(left[-keep:])


def plan_ops(rng: random.Random, steps: set[int], count: int) -> list[tuple[int, bool]]:
    """Forward saves mixed with rollbacks: into the middle, or below every checkpoint."""
    ops = []
    model = set(steps)
    for _ in range(count):
        kind = rng.choice(["forward", "middle", "below"])
        if kind == "middle" and len(model) >= 2:
            step = sorted(model)[rng.randrange(len(model) - 1)] + 5  # between two, removing the later ones
        elif kind == "below":
            step = min(model) - 1
        else:
            step = max(model) + 10
        ops.append((step, True))
        model = after_save(model, step)
    return ops


def test_sigkill_during_rollbacks_never_loses_a_checkpoint(tmp_path):
    """Rollback saves (``overwrite=True``, later steps removed) killed at random points, sync
    and async: the directory holds the old set, the new set, or the new set plus checkpoints
    of the old one not yet removed — never fewer than the new set — and ``latest_checkpoint``
    is the old latest or the new one. Every checkpoint present is complete."""
    rng = random.Random(SEED + 1)
    zyg = Zygote()
    d = str(tmp_path / "ckpt")
    stats = {"kills": 0, "runs": 0, "rollback_finish_kills": 0, "held_old": 0, "held_new": 0, "between": 0}
    try:
        calib = str(tmp_path / "calib.log")
        zyg.start(mode="rollback", dest=d, log=calib, ops=[[1000, False], [1010, False]], n=ROLLBACK_N,
                  keep=ROLLBACK_KEEP, **{"async": False})
        assert zyg.wait() == 0
        timed = read_log(calib, times=True)
        saves, finishes = durations(timed, "BEGIN", "SAVED"), durations(timed, "FINISHING", "SAVED")
        i = 0
        while stats["kills"] < ROLLBACK_KILLS and i < 2 * ROLLBACK_KILLS:
            i += 1
            present = {int(s) for s, _ in checkpoints.checkpoint_steps(d)}
            ops = plan_ops(rng, present, STEPS_PER_RUN)
            models = [present]
            for step, _ in ops:
                models.append(after_save(models[-1], step))
            log = str(tmp_path / f"rb{i}.log")
            run_seconds = float(np.median(saves[-12:])) * len(ops)
            finish_seconds = max(0.002, float(np.median(finishes[-12:])))
            how, when, k = kill_plan(rng, run_seconds, finish_seconds)
            rollbacks = [j for j, (s, _) in enumerate(ops[:-1]) if s < max(models[j])]
            if how == "finish" and rollbacks:
                k = rng.choice(rollbacks)
            killed, in_window = zyg.run_and_kill(how, when, k, log, mode="rollback", dest=d, ops=ops, n=ROLLBACK_N,
                                                 keep=ROLLBACK_KEEP, **{"async": bool(i % 2)})
            stats["rollback_finish_kills"] += in_window and k in rollbacks
            stats["kills"] += killed
            stats["runs"] += 1
            timed = read_log(log, times=True)
            saves += durations(timed, "BEGIN", "SAVED")
            finishes += durations(timed, "FINISHING", "SAVED")
            events = [(e, j) for e, j, _ in timed]
            done = len([e for e, _ in events if e == "SAVED"])
            old = models[done]
            new = models[min(done + 1, len(ops))]
            got = {int(s) for s, _ in checkpoints.checkpoint_steps(d)}
            where = f"run {i}: ops {ops}, {done} saved; old {sorted(old)}, new {sorted(new)}, found {sorted(got)}"
            if got == old:
                stats["held_old"] += 1
            else:
                assert ("BEGIN", done) in events, where
                assert new <= got <= old | new, where  # never fewer than the new set
                assert max(got) in (max(old), max(new)), where  # latest: the old one or the new one
                stats["held_new" if got == new else "between"] += 1
            for s, p in checkpoints.checkpoint_steps(d):
                check_archive(p, {int(s)}, ROLLBACK_N)
            assert checkpoints.restore_checkpoint(d)["step"] == max(got)
    finally:
        zyg.close()
    print("crash-safety rollback:", json.dumps(stats))
    assert stats["kills"] >= ROLLBACK_KILLS, stats
    assert stats["rollback_finish_kills"] >= ROLLBACK_KILLS // 5, stats
    assert stats["held_new"] + stats["between"] and stats["held_old"], stats


# ------------------------------------------------------------------ disk full
def _mount_tmpfs(path: str, size: str) -> bool:
    if os.geteuid() != 0:
        return False
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", path], capture_output=True)
    return r.returncode == 0


@pytest.fixture
def small_fs(tmp_path):
    """A 2 MiB tmpfs (root only; skipped where mounting is not allowed)."""
    mnt = str(tmp_path / "mnt")
    os.mkdir(mnt)
    if not _mount_tmpfs(mnt, "2m"):
        pytest.skip("cannot mount a tmpfs here (needs root); the RLIMIT_FSIZE tests cover a full disk")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", mnt], check=False)


def test_disk_full_gives_a_clear_error_and_keeps_the_old_file(small_fs):
    path = os.path.join(small_fs, "m.bpz")
    old = {"w": np.arange(50_000, dtype=np.float32)}
    bpz.save_pytree(path, old, verbose=False, compression=None)
    before = open(path, "rb").read()
    rng = np.random.default_rng(0)
    failures = 0
    # Sizes around the free space fail at every point of a save: data, index, sync.
    for kib in range(1100, 2300, 40):
        new = {"w": rng.standard_normal(kib * 256).astype(np.float32), "meta": "x" * 1000}
        try:
            bpz.save_pytree(path, new, verbose=False, compression="zstd")
        except OSError as e:
            failures += 1
            assert e.errno == errno.ENOSPC, e
            assert "m.bpz" in str(e) and "No space left" in str(e), str(e)
            assert open(path, "rb").read() == before, "the old file changed"
            assert os.listdir(small_fs) == ["m.bpz"], "a temporary file was left behind"
            with bpz.open(path) as a:
                a.verify()
        else:
            before = open(path, "rb").read()
            assert bpz.load_pytree(path)["w"].shape == new["w"].shape
    assert failures >= 10


def test_disk_full_during_checkpoint_keeps_the_old_checkpoints(small_fs):
    d = os.path.join(small_fs, "ckpt")
    for s in (1, 2):
        checkpoints.save_checkpoint(d, {"w": np.full(1000, s)}, s, keep=2)
    with pytest.raises(OSError) as info:
        checkpoints.save_checkpoint(d, {"w": np.random.default_rng(0).standard_normal(1 << 20)}, 3, keep=2,
                                    compression=None)
    assert info.value.errno == errno.ENOSPC
    assert sorted(os.listdir(d)) == ["checkpoint_1", "checkpoint_2"], "retention ran or a temporary was left"
    assert checkpoints.restore_checkpoint(d)["w"][0] == 2


def test_file_size_limit_during_checkpoint_keeps_the_old_checkpoints(tmp_path):
    """The same without root: RLIMIT_FSIZE makes the write fail with EFBIG."""
    d = str(tmp_path / "ckpt")
    checkpoints.save_checkpoint(d, {"w": np.full(1000, 1)}, 1, keep=1)
    script = f"""
import resource, signal, numpy as np
from bpz import checkpoints
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
try:
    checkpoints.save_checkpoint({d!r}, {{"w": np.random.default_rng(0).standard_normal(1 << 20)}}, 2, keep=1,
                                compression=None)
except OSError as e:
    print("OSError", e.errno, e)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert f"OSError {errno.EFBIG}" in out.stdout and "checkpoint_2" in out.stdout, out.stdout + out.stderr
    assert os.listdir(d) == ["checkpoint_1"]
    assert checkpoints.restore_checkpoint(d)["w"][0] == 1


def test_overwrite_false_refuses_and_leaves_no_temporary(tmp_path):
    path = str(tmp_path / "m.bpz")
    bpz.save_pytree(path, {"a": np.arange(3)}, verbose=False)
    with pytest.raises(bpz.InvalidCheckpointPath):
        bpz.save_pytree(path, {"a": np.arange(4)}, overwrite=False, verbose=False)
    assert os.listdir(tmp_path) == ["m.bpz"]
    assert bpz.load_pytree(path)["a"].tolist() == [0, 1, 2]
    assert glob.glob(str(tmp_path / ".*")) == []
