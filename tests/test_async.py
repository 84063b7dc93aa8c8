"""AsyncManager: saves return once the state is snapshotted; errors surface later."""

import os
import threading

import numpy as np
import pytest

import bpz
import bpz.write


@pytest.fixture
def gated(monkeypatch):
    """Holds every background write until the test opens the gate."""
    gate = threading.Event()
    real = bpz.write.write_archive

    def slow(*args, **kwargs):
        assert gate.wait(30), "gate never opened"
        return real(*args, **kwargs)

    monkeypatch.setattr(bpz.write, "write_archive", slow)
    return gate


def test_async_save_returns_before_the_file_is_written(tmp, gated):
    path = os.path.join(tmp, "a.bpz")
    state = {"V": np.arange(1000.0)}
    with bpz.AsyncManager() as am:
        assert bpz.save_pytree(path, state, async_manager=am, verbose=False) == path
        assert not os.path.exists(path)
        state["V"][:] = -1  # mutation after the call must not reach the file
        gated.set()
        am.wait_previous_save()
        assert os.path.exists(path)
    np.testing.assert_array_equal(bpz.load_pytree(path)["V"], np.arange(1000.0))


def test_failed_background_save_is_reraised(tmp):
    path = os.path.join(tmp, "sub")
    os.makedirs(path)  # a directory where the file should go: the rename fails
    am = bpz.AsyncManager()
    bpz.save_pytree(path, {"a": np.ones(3)}, async_manager=am, verbose=False)
    with pytest.raises(OSError):
        am.wait_previous_save()
    am.wait_previous_save()  # reported once
    am.close()
    assert os.listdir(tmp) == ["sub"] and os.listdir(path) == []


def test_closed_manager_refuses(tmp):
    am = bpz.AsyncManager()
    am.close()
    with pytest.raises(RuntimeError, match="Cannot save with a closed AsyncManager"):
        bpz.save_pytree(os.path.join(tmp, "x.bpz"), {"a": np.ones(1)}, async_manager=am, verbose=False)


def test_consecutive_async_saves_all_land(tmp):
    with bpz.AsyncManager() as am:
        for step in range(5):
            bpz.save_pytree(os.path.join(tmp, f"s{step}.bpz"), {"step": np.array(step)}, async_manager=am, verbose=False)
    for step in range(5):
        assert bpz.load_pytree(os.path.join(tmp, f"s{step}.bpz"))["step"] == step
