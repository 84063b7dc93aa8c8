"""Appends (format 1.1) killed, starved of disk, or racing readers never lose a committed version.

**Killed at exact points** (``test_aborted_appends_at_every_phase``): the core's test-only
fault injector (``BPZ_FAULT_APPEND_AFTER=N:abort``) kills a child process once ``N`` bytes of
an append are written: at offsets spread over the three phases of an append — chunks (data),
index, trailer — and at their edges, for a raw and for a compressed multi-chunk append, some
twice in a row (a second append killed on top of the first's leftovers). After each kill the
archive opens its last committed version, says it recovered exactly the ``N`` bytes written,
every version reads back and verifies, and the next append removes the leftovers.

**Killed at random times** (``test_killed_appends_keep_every_committed_version``): a child
appends versions in a loop (a constant part, a part that changes every version, a tensor that
comes and goes), logging ``BEGIN v`` before and ``SAVED v`` after each append, and is SIGKILLed
``BPZ_APPEND_KILLS`` times (default 50) at random points of an append. After every kill the
latest version is the last one saved or the one being appended, never anything else; every
version reads back exactly; the next append recovers the file.

Appending processes are forked from a server that imported bpz once, so a kill costs no start-up.

**Disk full** mid-append (the injector's ``error`` mode at every phase, and a real
``RLIMIT_FSIZE``): a clear error, the file cut back to its committed length, every version
intact. **Readers** that opened a version keep reading it while another process appends; fresh
opens see the old or the new latest.
"""

from __future__ import annotations

import json
import os
import random
import select
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import warnings

import numpy as np
import pytest

import bpz
from bpz.errors import RecoveredArchiveWarning

KILLS = int(os.environ.get("BPZ_APPEND_KILLS", "50"))
SEED = int(os.environ.get("BPZ_APPEND_SEED", "11"))

TREE_CODE = textwrap.dedent(
    r"""
    import numpy as np
    def step_tree(v, scale=1):
        rng = np.random.default_rng(v)
        n = (1 << 18) // scale
        tree = {
            "constant": {"conn": np.arange(4 * n, dtype=np.int32) % 977,
                         "w": np.linspace(-1, 1, 2 * n, dtype=np.float32)},
            "state": {"V": rng.standard_normal(4 * n).astype(np.float32),
                      "spike": rng.random(n) < 0.02},
            "step": v,
        }
        if v % 3 == 0:
            tree["sometimes"] = np.full(1000, v, np.int64)
        return tree
    """
)
exec(TREE_CODE)

# A fork server: imports once, then for each JSON order on stdin forks a process that appends
# versions first, first+1, ... (forever, or once), with the fault injector set if asked; it
# reports the process's pid, then how it ended. So a kill costs a fork, not a Python start-up.
# (The server itself never runs bpz code: no thread pool exists when it forks.) Core dumps are
# off: an injected abort must not write one.
SERVER = TREE_CODE + textwrap.dedent(
    r"""
    import json, os, resource, sys, time, traceback
    import bpz
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    def run(order):
        if order.get("fault"):
            os.environ["BPZ_FAULT_APPEND_AFTER"] = order["fault"]
        fd = os.open(order["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        v = order["first"]
        while True:
            tree = step_tree(v, order["scale"])
            os.write(fd, f"BEGIN {v} {time.monotonic():.6f}\n".encode())
            bpz.save_pytree(order["path"], tree, verbose=False, append=True, metadata={"step": v},
                            compression=order["compression"], chunk_size=order["chunk_size"])
            os.write(fd, f"SAVED {v} {time.monotonic():.6f}\n".encode())
            if order["once"]:
                return
            v += 1

    print("READY", flush=True)
    for line in sys.stdin:
        order = json.loads(line)
        pid = os.fork()
        if pid == 0:
            try:
                run(order)
                os._exit(0)
            except BaseException:
                traceback.print_exc()
                os._exit(1)
        print(pid, flush=True)
        print(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), flush=True)
    """
)


class Appenders:
    """The fork server, and the appending process it runs at a time."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE)
        assert self._line() == "READY"
        self.pid: int | None = None

    def _line(self, timeout: float = 120) -> str:
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        assert ready, "the fork server does not answer"
        line = self.proc.stdout.readline().decode().strip()
        assert line, self.proc.stderr.read().decode()
        return line

    def go(self, path: str, log: str, first: int, *, once: bool = False, fault: str | None = None,
           scale: int = 1, compression: str | None = "auto", chunk_size: int | None = None) -> None:
        order = dict(path=path, log=log, first=first, once=once, fault=fault, scale=scale,
                     compression=compression, chunk_size=chunk_size)
        self.proc.stdin.write((json.dumps(order) + "\n").encode())
        self.proc.stdin.flush()
        self.pid = int(self._line())

    def running(self) -> bool:
        ready, _, _ = select.select([self.proc.stdout], [], [], 0)
        return not ready

    def wait(self) -> int:
        """How the appending process ended: its exit status, or minus the signal that killed it."""
        self.pid = None
        return int(self._line())

    def kill(self) -> int:
        os.kill(self.pid, signal.SIGKILL)
        return self.wait()

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)
        self.proc.stdout.close()
        self.proc.stderr.close()


def _expect(archive: bpz.Archive, v: int, scale: int = 1) -> None:
    want = step_tree(v, scale)  # noqa: F821  (defined by exec above)
    got = archive.load()
    assert sorted(got) == sorted(want), (v, sorted(got))
    for group in ("constant", "state"):
        for k, arr in want[group].items():
            np.testing.assert_array_equal(got[group][k], arr, err_msg=f"version {v}: {group}/{k}")
    assert got["step"] == v
    if "sometimes" in want:
        np.testing.assert_array_equal(got["sometimes"], want["sometimes"])


def _read_log(log: str) -> tuple[int | None, int | None, list[float]]:
    """The last version begun, the last saved, and how long each completed append took."""
    begun = saved = None
    started: dict[int, float] = {}
    durations: list[float] = []
    if os.path.exists(log):
        with open(log) as f:
            for line in f:
                parts = line.split()
                if len(parts) != 3:  # a line cut by the kill
                    continue
                word, v, t = parts[0], int(parts[1]), float(parts[2])
                if word == "BEGIN":
                    begun = v
                    started[v] = t
                else:
                    saved = v
                    if v in started:
                        durations.append(t - started[v])
    return begun, saved, durations


def _open_quietly(path: str, version: int | None = None) -> bpz.Archive:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RecoveredArchiveWarning)
        return bpz.open(path, version=version)


def _check_all_versions(path: str, scale: int = 1) -> list[int]:
    with _open_quietly(path) as a:
        numbers = [v.number for v in a.versions]
        a.verify()
    for n in numbers:
        with _open_quietly(path, version=n) as a:
            assert a.metadata == {"step": n}
            _expect(a, n, scale)
    return numbers


def _append(path: str, v: int, scale: int = 1, **options) -> None:
    bpz.save_pytree(path, step_tree(v, scale), verbose=False, append=True, metadata={"step": v},  # noqa: F821
                    **options)


# -- killed at exact points of an append

PHASE_SCALE = 16  # small trees: every point starts from a fresh copy of the same two versions


def _phase_points(data: int, index: int) -> dict[str, list[int]]:
    """Byte counts into an append at which to kill it, by phase (the trailer is 32 bytes)."""
    trailer = data + index
    return {
        "nothing written": [0],
        "data": sorted({1, 8, 63, 64, 65, 4095, 4096, data // 3, data // 2, data - 64, data - 1}),
        "index": sorted({data, data + 1, data + 8, data + 95, data + 96, data + 160, data + index // 2,
                         trailer - 1}),
        "trailer": [trailer, trailer + 1, trailer + 8, trailer + 16, trailer + 20, trailer + 24, trailer + 31],
        "complete": [trailer + 32],
    }


@pytest.mark.parametrize("options", [dict(compression="auto"), dict(compression="zstd", chunk_size=16 << 10)],
                         ids=["raw_and_auto", "zstd_many_chunks"])
def test_aborted_appends_at_every_phase(tmp_path, options):
    base = str(tmp_path / "base.bpz")
    for v in (1, 2):
        _append(base, v, PHASE_SCALE, **options)
    committed_end = os.path.getsize(base)
    # The append the kills interrupt, done once to learn its phases.
    dry = str(tmp_path / "dry.bpz")
    shutil.copy(base, dry)
    _append(dry, 3, PHASE_SCALE, **options)
    with bpz.open(dry) as a:
        added, index = a.versions[-1].bytes_added, a.versions[-1].index_length
    data = added - index - 32
    assert data > 4096 * 2 and index > 160, (data, index)
    points = _phase_points(data, index)
    assert points["complete"] == [added]
    rng = random.Random(SEED)
    work, log = str(tmp_path / "work.bpz"), str(tmp_path / "log.txt")
    kills = 0
    server = Appenders()
    for phase, ns in points.items():
        for n in ns:
            shutil.copy(base, work)
            # Some points are hit twice: a second append killed on the first one's leftovers.
            rounds = 2 if rng.random() < 0.3 else 1
            for _ in range(rounds):
                server.go(work, log, 3, once=True, fault=f"{n}:abort", scale=PHASE_SCALE,
                          compression=options["compression"], chunk_size=options.get("chunk_size"))
                status = server.wait()
                if phase == "complete":
                    assert status == 0
                    break
                assert status == -signal.SIGABRT, (phase, n, status)
                kills += 1
                assert os.path.getsize(work) == committed_end + n, (phase, n)
            if phase == "complete":
                with bpz.open(work) as a:
                    assert a.recovered is None and a.version_number == 3
                continue
            if n:
                with pytest.warns(RecoveredArchiveWarning):
                    a = bpz.open(work)
            else:
                a = bpz.open(work)
            with a:
                assert a.version_number == 2, (phase, n)
                assert a.recovered == (None if n == 0 else {"ignored_bytes": n, "committed_end": committed_end})
            assert _check_all_versions(work, PHASE_SCALE) == [1, 2]
            # The next append removes the leftovers and commits version 3 as the dry run did.
            _append(work, 3, PHASE_SCALE, **options)
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                with bpz.open(work) as a:
                    assert a.recovered is None and [v.number for v in a.versions] == [1, 2, 3]
            assert os.path.getsize(work) == committed_end + added
            assert _check_all_versions(work, PHASE_SCALE) == [1, 2, 3]
    server.close()
    print(f"{kills} appends killed at exact points")
    assert kills >= 30, kills


@pytest.mark.parametrize("phase", ["data", "index", "trailer"])
def test_disk_full_at_every_phase_cuts_the_append_back(tmp_path, monkeypatch, phase):
    path = str(tmp_path / "series.bpz")
    for v in (1, 2):
        _append(path, v, PHASE_SCALE)
    size = os.path.getsize(path)
    dry = str(tmp_path / "dry.bpz")
    shutil.copy(path, dry)
    _append(dry, 3, PHASE_SCALE)
    with bpz.open(dry) as a:
        added, index = a.versions[-1].bytes_added, a.versions[-1].index_length
    for n in _phase_points(added - index - 32, index)[phase]:
        monkeypatch.setenv("BPZ_FAULT_APPEND_AFTER", f"{n}:error")
        with pytest.raises(OSError, match="no space left on device"):
            _append(path, 3, PHASE_SCALE)
        monkeypatch.delenv("BPZ_FAULT_APPEND_AFTER")
        assert os.path.getsize(path) == size, (phase, n)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            with bpz.open(path) as a:
                assert a.version_number == 2 and a.recovered is None
    assert _check_all_versions(path, PHASE_SCALE) == [1, 2]
    _append(path, 3, PHASE_SCALE)
    assert _check_all_versions(path, PHASE_SCALE) == [1, 2, 3]


# -- killed at random times


def test_killed_appends_keep_every_committed_version(tmp_path):
    rng = random.Random(SEED)
    path = str(tmp_path / "series.bpz")
    log = str(tmp_path / "log.txt")
    _append(path, 1)
    committed = 1
    append_s = 0.05  # refined from the log as runs go
    kills = inside = recovered = 0
    server = Appenders()
    while kills < KILLS:
        if os.path.exists(log):
            os.unlink(log)
        server.go(path, log, committed + 1)
        # Kill at a random point of the first or second append, timed from its BEGIN line.
        wanted = committed + 1 + rng.randrange(2)
        deadline = time.monotonic() + 60
        while (_read_log(log)[0] or 0) < wanted:
            assert server.running(), "the appending process ended"
            assert time.monotonic() < deadline, "the appending process made no progress"
            time.sleep(0.001)
        time.sleep(rng.uniform(0, 1.2 * append_s))
        assert server.kill() == -signal.SIGKILL
        kills += 1
        begun, saved, durations = _read_log(log)
        if durations:
            append_s = max(0.01, float(np.median(durations)))
        inside += begun != saved
        with _open_quietly(path) as a:
            latest = a.versions[-1].number
            allowed = {saved if saved is not None else committed, begun}
            assert latest in allowed, (latest, begun, saved)
            if a.recovered is not None:
                recovered += 1
                assert a.recovered["ignored_bytes"] > 0
                assert a.recovered["committed_end"] + a.recovered["ignored_bytes"] == os.path.getsize(path)
            _expect(a, latest)
        if kills % 10 == 0:
            assert _check_all_versions(path)[-1] == latest
        committed = latest
        # The next append recovers the file and adds exactly the next version.
        _append(path, committed + 1)
        committed += 1
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            with bpz.open(path) as a:
                assert a.recovered is None
                assert a.versions[-1].number == committed
    server.close()
    assert _check_all_versions(path) == list(range(1, committed + 1))
    print(f"{kills} kills: {inside} inside an append, {recovered} left an unfinished append")
    assert inside >= kills // 3, f"only {inside} of {kills} kills landed inside an append"
    assert recovered > 0, "no kill left an unfinished append: the test did not test recovery"


FULL_DISK_CHILD = TREE_CODE + textwrap.dedent(
    r"""
    import os, resource, sys
    import bpz
    path, limit = sys.argv[1], int(sys.argv[2])
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    import signal
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    try:
        bpz.save_pytree(path, step_tree(3), verbose=False, append=True, metadata={"step": 3})
    except Exception as e:
        print(type(e).__name__, e)
        sys.exit(3)
    sys.exit(0)
    """
)


def test_disk_full_mid_append_keeps_committed_versions(tmp_path):
    path = str(tmp_path / "series.bpz")
    for v in (1, 2):
        bpz.save_pytree(path, step_tree(v), verbose=False, append=True, metadata={"step": v})  # noqa: F821
    size = os.path.getsize(path)
    # Room for part of version 3's changed state only.
    proc = subprocess.run([sys.executable, "-c", FULL_DISK_CHILD, path, str(size + (1 << 20))],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "File too large" in proc.stdout or "EFBIG" in proc.stdout or "27" in proc.stdout, proc.stdout
    assert os.path.getsize(path) == size, "a failed append must cut the file back to its committed end"
    assert _check_all_versions(path) == [1, 2]


READER_CHILD = TREE_CODE + textwrap.dedent(
    r"""
    import sys, warnings
    import bpz
    path, last = sys.argv[1], int(sys.argv[2])
    # Opened while an append is under way, the file ends in that append's first bytes: the
    # reader reads the last committed version and says so (RecoveredArchiveWarning).
    warnings.simplefilter("ignore", bpz.errors.RecoveredArchiveWarning)
    print("READY", flush=True)
    seen = []
    while not seen or seen[-1] < last:
        with bpz.open(path) as a:
            v = a.version_number
            assert [x.number for x in a.versions] == list(range(1, v + 1)), v
            assert a.metadata == {"step": v}
            got = a.load()
            want = step_tree(v)
            assert got["step"] == v and sorted(got) == sorted(want), v
            for group in ("constant", "state"):
                for k in want[group]:
                    assert (got[group][k] == want[group][k]).all(), (v, k)
            a.verify()
        assert not seen or v >= seen[-1], (seen[-1], v)  # the latest never goes back
        seen.append(v)
    print(len(set(seen)))
    """
)


def test_readers_see_old_or_new_latest_never_a_mix(tmp_path):
    path = str(tmp_path / "series.bpz")
    last = 11
    bpz.save_pytree(path, step_tree(1), verbose=False, append=True, metadata={"step": 1})  # noqa: F821
    with bpz.open(path, version=1) as held:
        view = held["state/V"]  # a zero-copy view of version 1 (raw, mapped)
        reader = subprocess.Popen([sys.executable, "-c", READER_CHILD, path, str(last)], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        assert reader.stdout.readline() == "READY\n", reader.stderr.read()
        for v in range(2, last + 1):
            bpz.save_pytree(path, step_tree(v), verbose=False, append=True, metadata={"step": v})  # noqa: F821
            _expect(held, 1)  # the version opened before keeps reading correctly
            time.sleep(0.05)  # let the reader open versions in between
        out, err = reader.communicate(timeout=300)
        assert reader.returncode == 0, err
        assert int(out) >= 3, "the reader saw too few versions to have raced the appends"
        np.testing.assert_array_equal(view, step_tree(1)["state"]["V"])  # noqa: F821  (a view of version 1)
    assert _check_all_versions(path) == list(range(1, last + 1))
