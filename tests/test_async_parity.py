"""``bpz.AsyncManager`` has the API of braintools' (BrainPy 2.7–2.9's) ``AsyncManager``:
``save_future``, and a ``__del__`` that closes (waits) and turns a failure into a
``RuntimeWarning`` — while a failed save still fails the process (issue 11)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import warnings
from unittest import mock

import numpy as np
import pytest

import bpz
import bpz.write


def test_save_future_is_the_last_save(tmp_path):
    am = bpz.AsyncManager()
    assert am.save_future is None
    bpz.save_pytree(str(tmp_path / "a.bpz"), {"x": np.ones(1000)}, async_manager=am, verbose=False)
    first = am.save_future
    assert first is not None
    am.wait_previous_save()
    assert am.save_future is first and first.done()  # still there after the wait, as braintools'
    bpz.save_pytree(str(tmp_path / "b.bpz"), {"x": np.ones(10)}, async_manager=am, verbose=False)
    assert am.save_future is not first
    am.close()
    assert am.save_future.done() and os.path.exists(tmp_path / "b.bpz")


def test_del_closes_and_waits(tmp_path):
    gate = threading.Event()
    real = bpz.write.write_archive

    def slow(*args, **kwargs):
        gate.wait(10)
        return real(*args, **kwargs)

    with mock.patch.object(bpz.write, "write_archive", slow):
        am = bpz.AsyncManager()
        bpz.save_pytree(str(tmp_path / "late.bpz"), {"x": np.arange(3)}, async_manager=am, verbose=False)
        threading.Timer(0.3, gate.set).start()
        am.__del__()  # what garbage collection calls: waits for the save, as braintools' does
        assert am.closed and os.path.exists(tmp_path / "late.bpz")


def test_del_warns_when_close_fails():
    am = bpz.AsyncManager()
    with mock.patch.object(am, "close", side_effect=RuntimeError("boom")):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            am.__del__()
    assert any(issubclass(w.category, RuntimeWarning) and "error during cleanup" in str(w.message)
               and "boom" in str(w.message) for w in caught)
    am._closed = False
    am.close()


# A background save that fails (the file-size limit), its manager dropped without close().
DROPPED = r"""
import gc, resource, signal, sys, warnings
import numpy as np
import bpz
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
am = bpz.AsyncManager()
bpz.save_pytree(sys.argv[1], {"w": np.ones(1 << 20)}, async_manager=am, verbose=False, compression=None)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    del am
    gc.collect()
print("warned:", [str(w.message)[:60] for w in caught if w.category is RuntimeWarning], flush=True)
"""


def test_a_dropped_manager_warns_and_still_fails_the_process(tmp_path):
    path = str(tmp_path / "dropped.bpz")
    out = subprocess.run([sys.executable, "-c", DROPPED, path], capture_output=True, text=True, timeout=120)
    assert "warned: ['AsyncManager encountered an error during cleanup" in out.stdout, (out.stdout, out.stderr)
    assert out.returncode != 0, (out.stdout, out.stderr)
    assert "dropped.bpz FAILED" in out.stderr and "File too large" in out.stderr, out.stderr
    assert not os.path.exists(path)


def test_del_on_the_worker_thread_does_not_deadlock(tmp_path):
    """A garbage collection can run __del__ on the save thread itself, which cannot wait for itself."""
    am = bpz.AsyncManager()
    done = threading.Event()

    def job() -> None:
        am.__del__()
        done.set()

    am.save_async(job, "job")
    assert done.wait(10)
    am.wait_previous_save()
    assert am.closed
