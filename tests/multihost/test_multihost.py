"""Sharded jax.Array checkpoints across real jax.distributed jobs of local CPU processes.

Four launches (each costs a few seconds of jax start-up): a 2x2 job that saves and checks most
things itself, restores of its checkpoint on 1x4 and 4x1, and a 2x2 job with a SIGKILL.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

jax = pytest.importorskip("jax")

from multihost_launch import launch, ok, jax_too_old_for_sharding  # noqa: E402

import bpz  # noqa: E402
from bpz import sharded  # noqa: E402

pytestmark = pytest.mark.skipif(jax_too_old_for_sharding(jax.__version__),
                                reason=f"sharded checkpoints need jax >= 0.4.30, this is {jax.__version__}")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """The 2 processes x 2 devices job; its checkpoint is restored by the other tests."""
    workdir = str(tmp_path_factory.mktemp("multihost"))
    results = ok(launch("save_2x2", 2, 2, workdir, timeout=150))
    return workdir, results


def data_files(path):
    return sorted(n for n in os.listdir(path) if n.startswith("process_"))


def test_save_restore_async_numbered_and_failure_on_2x2(saved):
    workdir, r = saved
    assert r["done_0"] and r["done_1"]
    ckpt = os.path.join(workdir, "ckpt")
    # one file per process plus the commit record; the failed overwrite left nothing behind
    assert sorted(os.listdir(ckpt)) == ["commit.bpz", *data_files(ckpt)] and len(data_files(ckpt)) == 2
    # replica-parallel: the bytes written per process balance within 10 %
    w0, w1 = r["written_0"], r["written_1"]
    assert abs(w0 - w1) <= 0.1 * max(w0, w1), (w0, w1)
    sizes = [os.path.getsize(os.path.join(ckpt, n)) for n in data_files(ckpt)]
    assert abs(sizes[0] - sizes[1]) <= 0.1 * max(sizes), sizes
    # a transposed mesh reads no more than its shards need (up to chunk granularity)
    for p in (0, 1):
        assert r[f"transposed_read_{p}"] <= 1.1 * r[f"transposed_needed_{p}"], r
    # the failing process raised its own error, the other ShardedSaveError naming it
    assert r["failed_1"].startswith("OSError") and "No space left on device" in r["failed_1"], r["failed_1"]
    assert r["failed_0"].startswith("ShardedSaveError") and "process 1" in r["failed_0"], r["failed_0"]
    steps = os.path.join(workdir, "steps")
    # step 5 committed, its removal of step 2 refused: 2 stays
    assert sorted(os.listdir(steps)) in (["checkpoint_2", "checkpoint_3", "checkpoint_5"],
                                         ["checkpoint_2", "checkpoint_3", "checkpoint_4", "checkpoint_5"])
    if os.path.exists(os.path.join(steps, "checkpoint_4")):  # the failed step: no commit, no data
        assert os.listdir(os.path.join(steps, "checkpoint_4")) == []
    # the numpy view without jax, and pack into one archive
    tree = bpz.load_pytree(ckpt)
    assert tree["params"]["w"].shape == (512, 256) and tree["step"] == 12 and tree["name"] == "run-α"
    np.testing.assert_array_equal(tree["big"], np.arange(262147, dtype=np.int32) * 3)


def test_restore_on_one_process_with_four_devices(saved):
    workdir, _ = saved
    r = ok(launch("restore_1x4", 1, 4, workdir, timeout=90))
    assert r["read"] <= 1.1 * r["needed"], r


def test_restore_on_four_processes_with_one_device(saved):
    workdir, _ = saved
    r = ok(launch("restore_4x1", 4, 1, workdir, timeout=120))
    quarter = 512 * 256 * 4 // 4
    for p in range(4):
        assert r[f"w_needed_{p}"] == quarter and r[f"w_read_{p}"] <= 1.1 * quarter, r


def test_sigkill_before_commit_leaves_the_previous_checkpoint(tmp_path):
    workdir = str(tmp_path)
    procs = launch("kill", 2, 2, workdir, timeout=90)
    r0 = procs[0].results
    assert procs[1].returncode == -9, procs[1].describe()  # SIGKILL, as injected
    assert r0.get("first_committed_0"), procs[0].describe()
    # process 0 either timed out waiting (and checked the old checkpoint) or was taken down by the runtime
    if "second_0" in r0:
        assert r0["second_0"].startswith("ShardedSaveError") and "process 1" in r0["second_0"], r0
        assert r0.get("old_intact_0"), procs[0].describe()
    ckpt = os.path.join(workdir, "ckpt_kill")
    with sharded.ShardedCheckpoint(ckpt) as c:
        assert {"replaced"}.isdisjoint(c.tree(lambda rec: rec))
    tree = bpz.load_pytree(ckpt)
    assert "replaced" not in tree and tree["params"]["w"].shape == (512, 256)


def test_pack_and_unpack_from_the_command_line(saved, tmp_path, capsys):
    from bpz.cli import main

    workdir, _ = saved
    ckpt = os.path.join(workdir, "ckpt")
    packed = str(tmp_path / "one.bpz")
    assert main(["pack", ckpt, packed]) == 0
    whole, tree = bpz.load_pytree(packed), bpz.load_pytree(ckpt)
    np.testing.assert_array_equal(whole["params"]["b"], tree["params"]["b"])
    assert whole["params"]["b"].dtype == tree["params"]["b"].dtype and whole["misc"] == tree["misc"]
    assert main(["pack", ckpt, packed]) == 2 and "exists" in capsys.readouterr().err
    assert main(["pack", str(tmp_path), str(tmp_path / "x.bpz")]) == 2
    assert "not a committed sharded checkpoint" in capsys.readouterr().err
    # the inverse: 3 data files, each array's rows split over them
    split = str(tmp_path / "split")
    assert main(["unpack", packed, split, "--processes", "3"]) == 0
    assert len([n for n in os.listdir(split) if sharded.is_data_file(n)]) == 3
    again = bpz.load_pytree(split)
    np.testing.assert_array_equal(again["big"], tree["big"])
    np.testing.assert_array_equal(again["params"]["w"], tree["params"]["w"])
    assert again["step"] == 12 and again["misc"] == tree["misc"] and again["empty"].shape == (0, 4)
    assert main(["unpack", packed, split, "--processes", "2"]) == 2  # never over a checkpoint


def test_a_replaced_or_damaged_data_file_is_refused(saved, tmp_path):
    import shutil

    workdir, _ = saved
    fresh = lambda: shutil.copytree(os.path.join(workdir, "ckpt"), str(tmp_path / "c"), dirs_exist_ok=True)  # noqa: E731
    copy = fresh()
    first, second = (os.path.join(copy, n) for n in data_files(copy))
    os.remove(first)
    with pytest.raises(bpz.errors.CorruptDataError, match="missing, but the commit record"):
        bpz.load_pytree(copy)
    fresh()
    with open(second, "ab") as f:
        f.write(b"more")  # another file now: its size and trailer differ from the commit record's
    with pytest.raises(bpz.errors.CorruptDataError, match="not the file the commit record"):
        bpz.load_pytree(copy)
    fresh()
    with bpz.open(second) as a:
        last = a.versions[-1]
    inside_index = os.path.getsize(second) - 32 - last.index_length // 2  # the trailer is the last 32 bytes
    with open(second, "r+b") as f:
        f.seek(inside_index)
        byte = f.read(1)
        f.seek(inside_index)
        f.write(bytes([byte[0] ^ 0xFF]))  # the archive's own checksum finds it
    with pytest.raises(bpz.errors.ChecksumError):
        bpz.load_pytree(copy)
    with pytest.raises(bpz.errors.CheckpointNotFoundError, match="no commit.bpz"):
        bpz.load_pytree(str(tmp_path))
