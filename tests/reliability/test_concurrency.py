"""Concurrency: shared readers, racing writers, async snapshots, replacement under readers."""

from __future__ import annotations

import gc
import os
import re
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import bpz

TEMP = re.compile(r"^\..+\.\d+-[0-9a-f]+-\d+\.bpz-tmp$")


def version_tree(v: int, n: int = 200_000) -> dict:
    """Every array of version ``v`` is filled with ``v``: a mix of versions is visible."""
    return {
        "v": v,
        "raw": np.full(n, v, np.float64),  # stays raw (incompressible? no: constant) -> see compression below
        "noise": (np.random.default_rng(v).standard_normal(n) * 0 + v).astype(np.float32),
        "layers": [{"W": np.full((64, 64), v, np.int32)} for _ in range(4)],
        "spikes": np.arange(n) % (v % 7 + 2) == 0,
    }


def check_version(tree: dict) -> int:
    v = tree["v"]
    assert np.all(tree["raw"] == v) and np.all(tree["noise"] == v)
    assert all(np.all(layer["W"] == v) for layer in tree["layers"])
    assert np.array_equal(tree["spikes"], np.arange(len(tree["spikes"])) % (v % 7 + 2) == 0)
    return v


def no_temps(directory: str) -> None:
    left = [n for n in os.listdir(directory) if TEMP.match(n)]
    assert not left, f"temporary files left: {left}"


def test_many_threads_read_one_archive_with_equal_results(tmp_path):
    rng = np.random.default_rng(0)
    tree = {
        "W": rng.standard_normal((512, 256)).astype(np.float32),  # raw: zero-copy views
        "idx": np.sort(rng.integers(0, 10**7, 400_000)).astype(np.int64),  # compressed, many chunks
        "mask": rng.random(300_000) < 0.1,
        "h": [np.arange(i * 1000, dtype=np.float64) for i in range(1, 6)],
    }
    path = str(tmp_path / "m.bpz")
    bpz.save_pytree(path, tree, verbose=False, chunk_size=64 << 10)
    reference = bpz.load_pytree(path)
    errors: list[BaseException] = []

    with bpz.open(path) as shared:

        def worker(k: int) -> int:
            r = np.random.default_rng(k)
            done = 0
            for _ in range(30):
                op = r.integers(6)
                if op == 0:
                    got = shared.load()
                    assert np.array_equal(got["W"], reference["W"]) and np.array_equal(got["idx"], reference["idx"])
                    assert all(np.array_equal(a, b) for a, b in zip(got["h"], reference["h"]))
                elif op == 1:
                    assert np.array_equal(shared["W"], reference["W"])
                elif op == 2:
                    a, b = sorted(r.integers(0, 400_000, 2))
                    assert np.array_equal(shared.get_slice("idx")[a:b], reference["idx"][a:b])
                elif op == 3:
                    shared.verify()
                elif op == 4:
                    assert np.array_equal(shared.read("mask"), reference["mask"])
                else:  # a private handle per call, too
                    with bpz.open(path, backend="pread") as own:
                        assert np.array_equal(own["idx"], reference["idx"])
                done += 1
            return done

        with ThreadPoolExecutor(16) as ex:
            futures = [ex.submit(worker, k) for k in range(32)]
            for f in futures:
                try:
                    f.result()
                except BaseException as e:  # noqa: BLE001
                    errors.append(e)
    assert not errors, errors[0]


def test_concurrent_saves_from_threads_end_with_one_complete_archive(tmp_path):
    path = str(tmp_path / "m.bpz")
    trees = {v: version_tree(v) for v in range(1, 9)}
    barrier = threading.Barrier(8)

    def save(v: int) -> None:
        barrier.wait()
        for _ in range(5):
            bpz.save_pytree(path, trees[v], verbose=False)

    with ThreadPoolExecutor(8) as ex:
        list(ex.map(save, trees))
    with bpz.open(path) as a:
        a.verify()
        assert check_version(a.load()) in trees
    assert os.listdir(tmp_path) == ["m.bpz"]


def test_concurrent_saves_from_processes_end_with_one_complete_archive(tmp_path):
    path = str(tmp_path / "m.bpz")
    script = f"""
import sys, numpy as np, bpz
sys.path.insert(0, {os.path.dirname(__file__)!r})
from test_concurrency import version_tree
v = int(sys.argv[1])
for _ in range(6):
    bpz.save_pytree({path!r}, version_tree(v), verbose=False)
"""
    procs = [subprocess.Popen([sys.executable, "-c", script, str(v)]) for v in range(1, 7)]
    assert [p.wait(timeout=300) for p in procs] == [0] * 6
    with bpz.open(path) as a:
        a.verify()
        assert 1 <= check_version(a.load()) <= 6
    assert os.listdir(tmp_path) == ["m.bpz"]


def test_concurrent_creation_without_overwrite_has_exactly_one_winner(tmp_path):
    for round_ in range(5):
        path = str(tmp_path / f"m{round_}.bpz")
        barrier = threading.Barrier(8)
        outcomes: list[object] = []

        def save(v: int) -> None:
            barrier.wait()
            try:
                bpz.save_pytree(path, version_tree(v, 50_000), overwrite=False, verbose=False)
                outcomes.append(v)
            except bpz.InvalidCheckpointPath:
                outcomes.append("refused")

        with ThreadPoolExecutor(8) as ex:
            list(ex.map(save, range(1, 9)))
        winners = [o for o in outcomes if o != "refused"]
        assert len(winners) == 1, outcomes
        assert check_version(bpz.load_pytree(path)) == winners[0]
    no_temps(str(tmp_path))


def test_async_save_keeps_the_values_at_call_time(tmp_path):
    rng = np.random.default_rng(5)
    with bpz.AsyncManager() as am:
        for k in range(4):
            state = {"W": rng.standard_normal((2048, 1024)).astype(np.float32),  # 8 MiB: the save takes a while
                     "v": np.zeros(1 << 20, np.int64) + k,
                     "nested": {"x": np.arange(1000) * k}, "lst": [np.ones(10) * k]}
            expected = {"W": state["W"].copy(), "v": state["v"].copy(), "x": state["nested"]["x"].copy()}
            path = str(tmp_path / f"a{k}.bpz")
            bpz.save_pytree(path, state, async_manager=am, verbose=False, compression="zstd")
            # The caller goes on training at once: in place, and by rebinding.
            state["W"] *= -1.0
            state["W"][:10] = np.nan
            state["v"] += 100
            state["nested"]["x"][:] = -7
            state["lst"].append(np.zeros(3))
            state["new"] = np.ones(5)
            am.wait_previous_save()
            got = bpz.load_pytree(path)
            assert np.array_equal(got["W"], expected["W"])
            assert np.array_equal(got["v"], expected["v"])
            assert np.array_equal(got["nested"]["x"], expected["x"])
            assert len(got["lst"]) == 1 and "new" not in got


def test_readers_see_either_version_while_another_process_replaces_the_file(tmp_path):
    path = str(tmp_path / "m.bpz")
    bpz.save_pytree(path, version_tree(1), verbose=False)
    seconds = 6
    writer = subprocess.Popen([sys.executable, "-c", f"""
import sys, time, bpz
sys.path.insert(0, {os.path.dirname(__file__)!r})
from test_concurrency import version_tree
trees = [version_tree(v) for v in range(2, 6)]
end = time.monotonic() + {seconds}
i = 0
while time.monotonic() < end:
    bpz.save_pytree({path!r}, trees[i % len(trees)], verbose=False, compression=["auto", "zstd", None][i % 3])
    i += 1
print(i)
"""], stdout=subprocess.PIPE, text=True)
    seen: set[int] = set()
    reads = 0
    try:
        while writer.poll() is None:
            kind = reads % 3
            if kind == 0:
                seen.add(check_version(bpz.load_pytree(path)))
            elif kind == 1:
                with bpz.open(path) as a:  # lazy reads after open: the same inode throughout
                    v = int(a.read("layers/0/W")[0, 0])
                    time.sleep(0.002)
                    assert np.all(a["raw"] == v) and np.all(a.get_slice("noise")[10:20] == v)
                    a.verify()
                    seen.add(v)
            else:
                with bpz.open(path, backend="pread") as a:
                    seen.add(check_version(a.load()))
            reads += 1
    finally:
        saves = int(writer.communicate(timeout=120)[0])
    assert writer.returncode == 0
    print(f"replacement: {saves} saves, {reads} reads, versions seen {sorted(seen)}")
    assert reads >= 20 and saves >= 10 and len(seen) >= 2
    no_temps(str(tmp_path))


def test_a_mapped_view_stays_valid_after_the_file_is_replaced_or_deleted(tmp_path):
    path = str(tmp_path / "m.bpz")
    old = np.random.default_rng(1).standard_normal((1024, 256))
    bpz.save_pytree(path, {"W": old}, verbose=False, compression=None)
    with bpz.open(path) as a:
        view = a["W"]
        assert not view.flags.owndata and not view.flags.writeable
    bpz.save_pytree(path, {"W": np.zeros_like(old)}, verbose=False, compression=None)  # replaced
    gc.collect()
    assert np.array_equal(view, old)
    assert np.all(bpz.load_pytree(path)["W"] == 0)
    with bpz.open(path) as a:
        view2 = a["W"]
    os.remove(path)  # deleted
    gc.collect()
    assert np.array_equal(view, old) and np.all(view2 == 0)
    assert float(view.sum()) == float(old.sum())


def test_parallel_saves_to_different_paths_from_threads(tmp_path):
    def save_and_load(v: int) -> int:
        p = str(tmp_path / f"m{v}.bpz")
        bpz.save_pytree(p, version_tree(v, 100_000), verbose=False)
        return check_version(bpz.load_pytree(p))

    with ThreadPoolExecutor(8) as ex:
        assert list(ex.map(save_and_load, range(1, 17))) == list(range(1, 17))


@pytest.mark.parametrize("backend", ["mmap", "pread"])
def test_closing_an_archive_while_other_threads_use_it(tmp_path, backend):
    """close() drops the handle; arrays already returned stay valid, later calls fail cleanly."""
    path = str(tmp_path / "m.bpz")
    bpz.save_pytree(path, {"W": np.arange(1 << 20, dtype=np.float64)}, verbose=False, compression=None)
    a = bpz.open(path, backend=backend)
    got: list[np.ndarray] = []
    errs: list[BaseException] = []

    def reader() -> None:
        for _ in range(200):
            try:
                got.append(a["W"])
            except ValueError as e:  # "archive ... is closed"
                errs.append(e)
                return

    ts = [threading.Thread(target=reader) for _ in range(4)]
    for t in ts:
        t.start()
    time.sleep(0.01)
    a.close()
    for t in ts:
        t.join()
    assert all(x[12345] == 12345 for x in got)
    assert all("closed" in str(e) for e in errs)
