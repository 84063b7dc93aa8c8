"""bpz.checkpoints: BrainPy's names plus numbered-step checkpoints."""

import os

import numpy as np
import pytest

import bpz
import bpz.checkpoints as checkpoints


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
