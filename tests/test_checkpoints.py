"""bpz.checkpoints: BrainPy's names plus numbered-step checkpoints."""

import os
import threading
import warnings

import numpy as np
import pytest

import bpz
import bpz.checkpoints as checkpoints
import bpz.write


def state(step):
    return {"w": np.full(3, float(step)), "step": step}


def test_brainpy_names_are_there():
    assert checkpoints.save_pytree is bpz.save_pytree and checkpoints.load_pytree is bpz.load_pytree
    assert checkpoints.AsyncManager is bpz.AsyncManager


def test_keep_retention_and_latest(tmp):
    for step in (1, 2, 10):
        checkpoints.save_checkpoint(tmp, state(step), step, keep=2)
    assert sorted(os.listdir(tmp)) == ["checkpoint_10", "checkpoint_2"]
    assert checkpoints.restore_checkpoint(tmp)["step"] == 10
    assert checkpoints.restore_checkpoint(tmp, step=2)["step"] == 2


def test_keep_every_n_steps(tmp):
    for step in range(1, 8):
        checkpoints.save_checkpoint(tmp, state(step), step, keep=1, keep_every_n_steps=3)
    assert sorted(os.listdir(tmp)) == ["checkpoint_3", "checkpoint_6", "checkpoint_7"]


def test_outdated_step_and_overwrite(tmp):
    checkpoints.save_checkpoint(tmp, state(5), 5, keep=5)
    checkpoints.save_checkpoint(tmp, state(8), 8, keep=5)
    with pytest.raises(checkpoints.InvalidCheckpointError, match='outdated checkpoint at step: "5"'):
        checkpoints.save_checkpoint(tmp, state(5), 5)
    with pytest.warns(UserWarning, match="Removing checkpoint at"):
        checkpoints.save_checkpoint(tmp, state(6), 6, overwrite=True, keep=5)
    assert sorted(os.listdir(tmp)) == ["checkpoint_5", "checkpoint_6"]


def test_restore_edge_cases(tmp):
    target = {"w": np.zeros(3), "step": 0}
    assert checkpoints.restore_checkpoint(os.path.join(tmp, "missing"), target) is target
    with pytest.warns(UserWarning, match="Found no checkpoint files"):
        assert checkpoints.restore_checkpoint(tmp, target) is target
    checkpoints.save_checkpoint(tmp, state(3), 3)
    with pytest.raises(ValueError, match="Matching checkpoint not found"):
        checkpoints.restore_checkpoint(tmp, step=4)
    restored = checkpoints.restore_checkpoint(tmp, target)
    np.testing.assert_array_equal(restored["w"], [3, 3, 3])


def test_async_checkpoints_retain_after_the_write(tmp):
    with bpz.AsyncManager() as am:
        for step in range(4):
            checkpoints.save_checkpoint(tmp, state(step), step, keep=2, async_manager=am)
    assert sorted(os.listdir(tmp)) == ["checkpoint_2", "checkpoint_3"]


# ------------------------------------------------------------------ rollback (overwrite=True)
def steps_in(d):
    return [int(s) for s, _ in checkpoints.checkpoint_steps(d)]


def four_checkpoints(d):
    for step in (2, 4, 6, 8):
        checkpoints.save_checkpoint(d, state(step), step, keep=10)


@pytest.mark.parametrize("rollback_to", [5, 1])  # 1: below every checkpoint, which all go
def test_rollback_whose_save_fails_removes_nothing(tmp, rollback_to):
    four_checkpoints(tmp)
    with pytest.raises(TypeError, match="object"):
        checkpoints.save_checkpoint(tmp, {"bad": object()}, rollback_to, keep=10, overwrite=True)
    assert steps_in(tmp) == [2, 4, 6, 8]
    assert checkpoints.restore_checkpoint(tmp)["step"] == 8


def test_rollback_whose_write_fails_removes_nothing(tmp, monkeypatch):
    four_checkpoints(tmp)

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(bpz.write, "write_archive", disk_full)
    with pytest.raises(OSError, match="No space"):
        checkpoints.save_checkpoint(tmp, state(1), 1, keep=10, overwrite=True)
    assert steps_in(tmp) == [2, 4, 6, 8]


@pytest.mark.parametrize("rollback_to", [5, 1])
def test_rollback_removes_later_steps_after_the_write(tmp, rollback_to):
    four_checkpoints(tmp)
    with pytest.warns(UserWarning, match="Removing checkpoint at"):
        checkpoints.save_checkpoint(tmp, state(rollback_to), rollback_to, keep=10, overwrite=True)
    assert steps_in(tmp) == [s for s in (2, 4) if s < rollback_to] + [rollback_to]
    assert checkpoints.restore_checkpoint(tmp)["step"] == rollback_to


@pytest.fixture
def gated(monkeypatch):
    """Holds background writes until the test opens the gate; fails them if told to."""
    gate = threading.Event()
    fail = []
    real = bpz.write.write_archive

    def held(*args, **kwargs):
        assert gate.wait(30), "gate never opened"
        if fail:
            raise OSError(28, "No space left on device")
        return real(*args, **kwargs)

    monkeypatch.setattr(bpz.write, "write_archive", held)
    return gate, fail


def test_async_rollback_removes_only_after_the_background_write(tmp, gated):
    gate, _ = gated
    gate.set()
    four_checkpoints(tmp)
    gate.clear()
    with bpz.AsyncManager() as am:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            checkpoints.save_checkpoint(tmp, state(3), 3, keep=10, overwrite=True, async_manager=am)
            assert steps_in(tmp) == [2, 4, 6, 8]  # the write is pending: nothing removed yet
            gate.set()
            am.wait_previous_save()
    assert steps_in(tmp) == [2, 3]


def test_async_rollback_whose_write_fails_removes_nothing(tmp, gated):
    gate, fail = gated
    gate.set()
    four_checkpoints(tmp)
    fail.append(True)
    am = bpz.AsyncManager()
    checkpoints.save_checkpoint(tmp, state(1), 1, keep=10, overwrite=True, async_manager=am)
    with pytest.raises(OSError, match="No space"):
        am.close()
    assert steps_in(tmp) == [2, 4, 6, 8]


# ------------------------------------------------------------------ what counts as a checkpoint
def test_retention_skips_another_tools_directory(tmp):
    os.makedirs(os.path.join(tmp, "checkpoint_1", "inside"))
    for step in (2, 3):  # the save succeeds: retention must not fail it
        checkpoints.save_checkpoint(tmp, state(step), step, keep=1)
    assert sorted(os.listdir(tmp)) == ["checkpoint_1", "checkpoint_3"]
    assert os.listdir(os.path.join(tmp, "checkpoint_1")) == ["inside"]


def test_things_named_like_checkpoints_are_not_checkpoints(tmp):
    os.mkdir(os.path.join(tmp, "checkpoint_1"))  # another tool's directory
    with open(os.path.join(tmp, "checkpoint_50"), "w") as f:
        f.write("not a checkpoint")
    other = os.path.join(tmp, "elsewhere.bpz")
    bpz.save_pytree(other, state(70), verbose=False)
    os.symlink(other, os.path.join(tmp, "checkpoint_70"))
    os.mkfifo(os.path.join(tmp, "checkpoint_80"))
    for step in (2, 3, 4):  # retention (keep=1) runs after each save and must not raise
        checkpoints.save_checkpoint(tmp, state(step), step, keep=1)
    assert checkpoints.checkpoint_steps(tmp) == [(4.0, os.path.join(tmp, "checkpoint_4"))]
    assert checkpoints.restore_checkpoint(tmp)["step"] == 4
    assert sorted(os.listdir(tmp)) == ["checkpoint_1", "checkpoint_4", "checkpoint_50", "checkpoint_70",
                                       "checkpoint_80", "elsewhere.bpz"]
    # A save onto a foreign file is refused, and the file kept.
    with pytest.raises(checkpoints.InvalidCheckpointPath, match="checkpoint_50.*not a checkpoint"):
        checkpoints.save_checkpoint(tmp, state(50), 50)
    assert open(os.path.join(tmp, "checkpoint_50")).read() == "not a checkpoint"
    # Rolling back does not remove them either.
    with pytest.warns(UserWarning):
        checkpoints.save_checkpoint(tmp, state(0), 0, overwrite=True)
    assert sorted(os.listdir(tmp)) == ["checkpoint_0", "checkpoint_1", "checkpoint_50", "checkpoint_70",
                                       "checkpoint_80", "elsewhere.bpz"]


def test_temporaries_never_count(tmp):
    checkpoints.save_checkpoint(tmp, state(1), 1)
    complete = open(os.path.join(tmp, "checkpoint_1"), "rb").read()
    for name in (".checkpoint_9.123-abc-0.bpz-tmp", "checkpoint_9.bpz-tmp", ".9.1-a-0.bpz-tmp"):
        with open(os.path.join(tmp, name), "wb") as f:
            f.write(complete)  # even a complete archive under a temporary's name
    assert steps_in(tmp) == [1]
    assert [int(s) for s, _ in checkpoints.checkpoint_steps(tmp, prefix="")] == []
    checkpoints.save_checkpoint(tmp, state(2), 2)  # retention leaves the temporaries to their writers
    assert len(os.listdir(tmp)) == 4


def test_a_checkpoint_that_cannot_be_removed_only_warns(tmp, monkeypatch):
    checkpoints.save_checkpoint(tmp, state(1), 1)
    real_remove = os.remove

    def refuse(path, *args, **kwargs):
        if os.path.basename(path) == "checkpoint_1":
            raise PermissionError(13, "Permission denied", path)
        return real_remove(path, *args, **kwargs)

    monkeypatch.setattr(os, "remove", refuse)
    with pytest.warns(RuntimeWarning, match="Saved .*checkpoint_2, but could not remove the old checkpoint"):
        assert checkpoints.save_checkpoint(tmp, state(2), 2) == os.path.join(tmp, "checkpoint_2")
    assert steps_in(tmp) == [1, 2]


def test_async_checkpoint_directory_is_resolved_at_the_call(tmp, gated, monkeypatch):
    gate, _ = gated
    first, second = os.path.join(tmp, "first"), os.path.join(tmp, "second")
    os.makedirs(os.path.join(first, "ck"))
    os.mkdir(second)
    monkeypatch.chdir(first)
    gate.set()
    checkpoints.save_checkpoint("ck", state(1), 1)
    gate.clear()
    with bpz.AsyncManager() as am:
        assert checkpoints.save_checkpoint("ck", state(2), 2, async_manager=am) == os.path.join("ck", "checkpoint_2")
        os.chdir(second)
        gate.set()
    assert os.listdir(second) == []
    assert steps_in(os.path.join(first, "ck")) == [2]  # written and retained in the first directory


def test_bad_steps_and_prefixes_are_refused(tmp):
    for step in (float("nan"), float("inf"), 10**400):
        with pytest.raises(ValueError, match="step must be a finite number"):
            checkpoints.save_checkpoint(tmp, state(1), step)
    with pytest.raises(TypeError, match="step must be a number"):
        checkpoints.save_checkpoint(tmp, state(1), True)
    with pytest.raises(ValueError, match="without a directory part"):
        checkpoints.save_checkpoint(tmp, state(1), 1, prefix="sub/ckpt_")
    assert os.listdir(tmp) == []
    checkpoints.save_checkpoint(tmp, state(1), 1e20)  # written "1e+20", listed as that step again
    assert checkpoints.checkpoint_steps(tmp) == [(1e20, os.path.join(tmp, "checkpoint_1e+20"))]


def test_restoring_a_step_that_is_a_directory_is_a_clear_error(tmp):
    os.mkdir(os.path.join(tmp, "checkpoint_3"))
    with pytest.raises(bpz.CheckpointNotFoundError, match="checkpoint_3 is not a file"):
        checkpoints.restore_checkpoint(tmp, step=3)


def test_with_sync_false_the_new_checkpoint_is_on_disk_before_anything_is_removed(tmp, monkeypatch):
    checkpoints.save_checkpoint(tmp, state(1), 1, sync=False)
    events = []
    real_fsync, real_remove = os.fsync, os.remove

    def fsync(fd):
        events.append(("fsync", os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))))
        return real_fsync(fd)

    def remove(path, *args, **kwargs):
        events.append(("remove", os.path.basename(path)))
        return real_remove(path, *args, **kwargs)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "remove", remove)
    checkpoints.save_checkpoint(tmp, state(2), 2, sync=False)
    assert events.index(("fsync", "checkpoint_2")) < events.index(("remove", "checkpoint_1"))
    assert steps_in(tmp) == [2]
