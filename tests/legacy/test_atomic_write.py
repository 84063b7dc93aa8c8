"""The one atomic write of bpz's Python code (``_legacy._common.atomic_write``: legacy
``write_bp`` / ``write_states``, ``bpz convert``'s outputs): the temporary file is flushed to
disk before it is renamed onto the destination, and the directory after; a failure at any
step leaves no temporary file and the previous file as it was; any name that fits NAME_MAX
can be written."""

from __future__ import annotations

import errno
import os

import numpy as np
import pytest

from bpz import formats
from bpz._legacy import _common, read_bp, read_states, write_bp, write_states

WRITERS = {
    "write_bp": lambda p: write_bp(p, {"w": np.arange(4.0), "n": 3}),
    "write_states npz": lambda p: write_states(p + ".npz", {"w": np.arange(4.0)}),
    "write_states pkl": lambda p: write_states(p + ".pkl", {"w": np.arange(4.0)}),
    "convert to safetensors": lambda p: formats.write_safetensors(p + ".safetensors", {"w": np.arange(4.0)}, {}),
    "convert to npz": lambda p: formats.write_npz(p + ".npz", {"w": np.arange(4.0)}),
    "convert to bp": lambda p: formats.write_bp(p + ".bp", {"w": np.arange(4.0)}),
}


def _final(label: str, base: str) -> str:
    suffix = {"npz": ".npz", "pkl": ".pkl", "safetensors": ".safetensors", "bp": ".bp"}.get(label.split()[-1], "")
    return base + (suffix if label != "write_bp" else "")


@pytest.fixture
def events(monkeypatch):
    log = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (log.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"))),
                                                 real_fsync(fd)))
    monkeypatch.setattr(os, "replace", lambda a, b: (log.append(("replace", os.fspath(a), os.fspath(b))),
                                                     real_replace(a, b)))
    return log


@pytest.mark.parametrize("label", list(WRITERS))
def test_the_file_is_flushed_before_the_rename_and_the_directory_after(tmp_path, events, label):
    base = str(tmp_path / "out")
    WRITERS[label](base)
    final = _final(label, base)
    renames = [e for e in events if e[0] == "replace"]
    assert len(renames) == 1 and renames[0][2] == final, events  # one temporary, renamed once
    tmp = renames[0][1]
    at = events.index(renames[0])
    assert ("fsync", tmp) in events[:at], events
    assert ("fsync", str(tmp_path)) in events[at:], events
    assert os.listdir(tmp_path) == [os.path.basename(final)]


@pytest.mark.parametrize("step", ["write", "fsync", "replace"])
def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch, step):
    path = str(tmp_path / "m.bp")
    write_bp(path, {"w": np.zeros(3)})
    before = open(path, "rb").read()

    def fail(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    def write(tmp):
        with open(tmp, "wb") as f:
            f.write(b"partial")
        if step == "write":
            fail()

    if step == "fsync":
        monkeypatch.setattr(os, "fsync", fail)
    if step == "replace":
        monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="No space left"):
        _common.atomic_write(path, write)
    assert open(path, "rb").read() == before and os.listdir(tmp_path) == ["m.bp"]


def test_an_interrupted_write_leaves_no_temporary(tmp_path):
    path = str(tmp_path / "m.npz")

    def write(tmp):
        open(tmp, "wb").close()
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _common.atomic_write(path, write)
    assert os.listdir(tmp_path) == []


def test_a_real_writer_failing_midway_keeps_the_old_states_file(tmp_path):
    path = str(tmp_path / "s.npz")
    write_states(path, {"a": np.arange(3)})
    with pytest.raises(Exception):  # an array numpy cannot save without pickles, after "a" was written
        write_states(path, {"a": np.arange(5), "b": np.array([object()])})
    assert np.array_equal(read_states(path)[0]["a"], np.arange(3)) and os.listdir(tmp_path) == ["s.npz"]


@pytest.mark.parametrize("err", [errno.EINVAL, errno.EIO])
def test_a_directory_that_cannot_be_flushed(tmp_path, monkeypatch, err):
    """Filesystems that do not fsync directories (EINVAL) are fine, the file itself is on disk;
    an I/O error is reported (the new file is in place but may not survive a power cut)."""
    path = str(tmp_path / "m.bp")
    real = _common.fsync_path

    def fsync_path(p, directory=False):
        if directory:
            raise OSError(err, os.strerror(err))
        real(p, directory)

    monkeypatch.setattr(_common, "fsync_path", fsync_path)
    if err == errno.EINVAL:
        write_bp(path, {"w": np.ones(2)})
    else:
        with pytest.raises(OSError) as e:
            write_bp(path, {"w": np.ones(2)})
        assert e.value.errno == errno.EIO
    assert np.array_equal(read_bp(path)["w"], np.ones(2)) and os.listdir(tmp_path) == ["m.bp"]


def test_names_up_to_name_max_can_be_written(tmp_path):
    for name in ("a" * 252 + ".bp", "é" * 126 + ".bp"):  # 255 bytes: the temporary's name is cut to fit
        path = str(tmp_path / name)
        write_bp(path, {"w": np.arange(2)})
        assert np.array_equal(read_bp(path)["w"], np.arange(2))
    assert len(os.listdir(tmp_path)) == 2
