"""AsyncManager: saves return once the state is snapshotted; errors surface later."""

import os
import subprocess
import sys
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


def test_failed_background_save_is_reraised(tmp, gated):
    sub = os.path.join(tmp, "sub")
    am = bpz.AsyncManager()
    bpz.save_pytree(os.path.join(sub, "a.bpz"), {"a": np.ones(3)}, async_manager=am, verbose=False)
    os.rmdir(sub)  # the directory goes before the background write starts: it fails
    gated.set()
    with pytest.raises(FileNotFoundError):
        am.wait_previous_save()
    am.wait_previous_save()  # reported once
    am.close()
    assert os.listdir(tmp) == []


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


def failing_save(tmp, am, gated, name="a.bpz"):
    """Starts a background save that will fail (its directory is removed under it)."""
    sub = os.path.join(tmp, name + ".d")
    bpz.save_pytree(os.path.join(sub, name), {"a": np.ones(3)}, async_manager=am, verbose=False)
    os.rmdir(sub)


def test_close_reraises_a_failed_save(tmp, gated):
    am = bpz.AsyncManager()
    failing_save(tmp, am, gated)
    gated.set()
    with pytest.raises(FileNotFoundError, match="a.bpz"):
        am.close()
    am.close()  # reported once; closing again does nothing
    assert am.closed


def test_leaving_a_with_block_by_an_exception_still_raises_the_failed_save(tmp, gated):
    with pytest.raises(FileNotFoundError) as info:
        with bpz.AsyncManager() as am:
            failing_save(tmp, am, gated)
            gated.set()
            raise KeyError("the block's own error")
    assert isinstance(info.value.__context__, KeyError)  # both are shown


def test_relative_path_is_resolved_when_the_call_is_made(tmp, gated, monkeypatch):
    first, second = os.path.join(tmp, "first"), os.path.join(tmp, "second")
    os.mkdir(first)
    os.mkdir(second)
    monkeypatch.chdir(first)
    with bpz.AsyncManager() as am:
        assert bpz.save_pytree(os.path.join("out", "a.bpz"), {"a": np.arange(3)}, async_manager=am,
                               verbose=False) == os.path.join("out", "a.bpz")  # returned as given
        os.chdir(second)
        gated.set()
    assert os.listdir(second) == []
    assert bpz.load_pytree(os.path.join(first, "out", "a.bpz"))["a"].tolist() == [0, 1, 2]


def test_save_after_close_is_refused_before_anything_is_created(tmp):
    am = bpz.AsyncManager()
    am.close()
    with pytest.raises(RuntimeError, match="Cannot save with a closed AsyncManager"):
        bpz.save_pytree(os.path.join(tmp, "new", "x.bpz"), {"a": np.ones(1)}, async_manager=am, verbose=False)
    assert os.listdir(tmp) == []


def test_flatten_failure_raises_at_the_call_and_leaves_nothing(tmp):
    with bpz.AsyncManager() as am:
        with pytest.raises(TypeError, match=r"target\['bad'\]"):
            bpz.save_pytree(os.path.join(tmp, "new", "x.bpz"), {"ok": np.ones(2), "bad": object()},
                            async_manager=am, verbose=False)
        assert os.listdir(tmp) == []
        am.wait_previous_save()  # nothing pending, nothing failed
        bpz.save_pytree(os.path.join(tmp, "y.bpz"), {"ok": np.ones(2)}, async_manager=am, verbose=False)
    assert os.listdir(tmp) == ["y.bpz"]


def test_two_managers_keep_their_own_failures(tmp, gated):
    good, bad = bpz.AsyncManager(), bpz.AsyncManager()
    bpz.save_pytree(os.path.join(tmp, "good.bpz"), {"a": np.ones(2)}, async_manager=good, verbose=False)
    failing_save(tmp, bad, gated, "bad.bpz")
    gated.set()
    good.close()  # the other manager's failure is not this one's
    with pytest.raises(FileNotFoundError, match="bad.bpz"):
        bad.close()
    assert os.listdir(tmp) == ["good.bpz"]


# A save that really fails in the background (the file-size limit), then an exit without waiting.
FAILING_SCRIPT = r"""
import gc, os, resource, signal, sys, time
import numpy as np
import bpz
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
am = bpz.AsyncManager()
bpz.save_pytree(sys.argv[1], {"w": np.ones(1 << 20)}, async_manager=am, verbose=False, compression=None)
print("save returned", flush=True)
if sys.argv[2] == "collect":
    del am
    gc.collect()
    time.sleep(2)  # the failure is reported while the program still runs
    print("still running", flush=True)
"""


@pytest.mark.parametrize("how", ["exit", "collect"])
def test_an_unreported_background_failure_fails_the_process(tmp, how):
    path = os.path.join(tmp, "lost.bpz")
    out = subprocess.run([sys.executable, "-c", FAILING_SCRIPT, path, how], capture_output=True, text=True,
                         timeout=120)
    assert "save returned" in out.stdout, out.stderr
    assert out.returncode != 0, (out.stdout, out.stderr)
    assert "lost.bpz FAILED" in out.stderr and "File too large" in out.stderr, out.stderr
    if how == "collect":
        assert "still running" in out.stdout
    assert not os.path.exists(path)


def test_a_save_running_at_exit_is_completed(tmp):
    path = os.path.join(tmp, "late.bpz")
    script = r"""
import sys, time
import numpy as np
import bpz, bpz.write
real = bpz.write.write_archive
def slow(*args, **kw):
    time.sleep(1.0)
    return real(*args, **kw)
bpz.write.write_archive = slow
am = bpz.AsyncManager()
bpz.save_pytree(sys.argv[1], {"w": np.arange(1000.0)}, async_manager=am, verbose=False)
"""
    out = subprocess.run([sys.executable, "-c", script, path], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert bpz.load_pytree(path)["w"].tolist() == list(np.arange(1000.0))
