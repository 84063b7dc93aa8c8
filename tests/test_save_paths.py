"""save_pytree's paths: names that are directories are refused up front, and a failed save
leaves no directory it created behind (only those, and only while empty)."""

import errno
import os
import subprocess
import sys

import numpy as np
import pytest

import bpz
import bpz.write


@pytest.mark.parametrize("name", ["newdir/", "newdir/sub/", "newdir/.", "newdir/.."])
def test_a_name_ending_in_a_directory_is_refused_before_anything_is_created(tmp, name):
    with pytest.raises(IsADirectoryError) as info:
        bpz.save_pytree(os.path.join(tmp, name), {"a": np.ones(2)}, verbose=False)
    assert info.value.errno == errno.EISDIR and name in str(info.value)
    assert os.listdir(tmp) == []


@pytest.mark.parametrize("asynchronous", [False, True])
def test_an_existing_directory_is_refused_at_the_call(tmp, asynchronous):
    os.mkdir(os.path.join(tmp, "d"))
    os.symlink("d", os.path.join(tmp, "link"))
    with bpz.AsyncManager() as am:
        for name in ("d", "link"):
            with pytest.raises(IsADirectoryError, match=name):
                bpz.save_pytree(os.path.join(tmp, name), {"a": np.ones(2)}, verbose=False,
                                async_manager=am if asynchronous else None)
    assert sorted(os.listdir(tmp)) == ["d", "link"] and os.listdir(os.path.join(tmp, "d")) == []


def test_empty_name_is_refused(tmp, monkeypatch):
    monkeypatch.chdir(tmp)
    with pytest.raises(bpz.InvalidCheckpointPath, match="empty"):
        bpz.save_pytree("", {"a": 1}, verbose=False)


@pytest.mark.parametrize("asynchronous", [False, True])
def test_a_bad_leaf_leaves_no_directory(tmp, asynchronous):
    with bpz.AsyncManager() as am:
        with pytest.raises(TypeError, match=r"target\['bad'\]"):
            bpz.save_pytree(os.path.join(tmp, "a", "b", "m.bpz"), {"bad": object()}, verbose=False,
                            async_manager=am if asynchronous else None)
    assert os.listdir(tmp) == []


@pytest.mark.parametrize("asynchronous", [False, True])
def test_a_failed_write_removes_only_the_directories_it_created(tmp, monkeypatch, asynchronous):
    os.makedirs(os.path.join(tmp, "old", "empty"))  # existed before: kept even though empty

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(bpz.write, "write_archive", disk_full)
    am = bpz.AsyncManager()
    with pytest.raises(OSError, match="No space"):
        bpz.save_pytree(os.path.join(tmp, "old", "new1", "new2", "m.bpz"), {"a": np.ones(2)}, verbose=False,
                        async_manager=am if asynchronous else None)
        am.close()  # the async failure surfaces here
    assert sorted(os.listdir(os.path.join(tmp, "old"))) == ["empty"]


def test_a_directory_someone_else_filled_is_kept(tmp, monkeypatch):
    def fill_then_fail(path, *args, **kwargs):
        with open(os.path.join(os.path.dirname(path), "other.txt"), "w") as f:
            f.write("someone else's")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(bpz.write, "write_archive", fill_then_fail)
    with pytest.raises(OSError):
        bpz.save_pytree(os.path.join(tmp, "new", "m.bpz"), {"a": np.ones(2)}, verbose=False)
    assert os.listdir(os.path.join(tmp, "new")) == ["other.txt"]


def test_a_really_failing_write_leaves_no_directory(tmp):
    """The same without fault injection: the file-size limit makes the native write fail."""
    script = r"""
import resource, signal, sys
import numpy as np
import bpz
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
try:
    bpz.save_pytree(sys.argv[1], {"w": np.ones(1 << 20)}, verbose=False, compression=None)
except OSError as e:
    print("OSError", e.errno)
"""
    out = subprocess.run([sys.executable, "-c", script, os.path.join(tmp, "x", "y", "m.bpz")], capture_output=True,
                         text=True, timeout=120)
    assert f"OSError {errno.EFBIG}" in out.stdout, out.stdout + out.stderr
    assert os.listdir(tmp) == []


def test_overwrite_false_is_checked_before_flattening_or_creating(tmp):
    path = os.path.join(tmp, "m.bpz")
    bpz.save_pytree(path, {"a": np.ones(2)}, verbose=False)
    with pytest.raises(bpz.InvalidCheckpointPath, match=f'Invalid checkpoint at "{path}".'):
        bpz.save_pytree(path, {"bad": object()}, overwrite=False, verbose=False)
