"""The one atomic write of bpz's Python code (``_legacy._common.atomic_write``: legacy
``write_bp`` / ``write_states``, ``bpz convert``'s outputs): the temporary file is flushed to
disk before it is renamed onto the destination, and the directory after; a failure at any
step leaves no temporary file and the previous file as it was; any name that fits NAME_MAX
can be written. The temporary, the fsyncs and the rename are the core's (``bpz._bpz.TempFile``,
``bpz::persist``), as for archives."""

from __future__ import annotations

import errno
import os

import numpy as np
import pytest

from bpz import formats
from bpz._legacy import _common, read_bp, read_states, write_bp, write_states
from syscall_trace import check_synced_around_the_rename, needs_strace, syscalls

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


@needs_strace
@pytest.mark.parametrize("label", list(WRITERS))
def test_the_file_is_flushed_before_the_rename_and_the_directory_after(tmp_path, label):
    base = str(tmp_path / "out")
    here = os.path.dirname(__file__)
    code = f"import sys; sys.path[:0] = [{here!r}, {os.path.dirname(here)!r}]; " \
           f"from test_atomic_write import WRITERS; WRITERS[{label!r}](sys.argv[1])"
    final = _final(label, base)
    for _ in range(2):  # a new file, then replacing it
        check_synced_around_the_rename(syscalls(code, base), final)
        assert os.listdir(tmp_path) == [os.path.basename(final)]


@pytest.mark.parametrize("step", ["write", "commit"])
def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path, step):
    path = str(tmp_path / "m.bp")
    write_bp(path, {"w": np.zeros(3)})
    before = open(path, "rb").read()

    def write(tmp):
        with open(tmp, "wb") as f:
            f.write(b"partial")
        if step == "write":
            raise OSError(errno.ENOSPC, "No space left on device")
        # The commit refuses a temporary its writer replaced (its permissions would be lost).
        other = str(tmp_path / "other")
        with open(other, "wb") as f:
            f.write(b"partial")
        os.replace(other, tmp)

    with pytest.raises(OSError, match="No space left" if step == "write" else "replaced"):
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


def test_names_up_to_name_max_can_be_written(tmp_path):
    for name in ("a" * 252 + ".bp", "é" * 126 + ".bp"):  # 255 bytes: the temporary's name is cut to fit
        path = str(tmp_path / name)
        write_bp(path, {"w": np.arange(2)})
        assert np.array_equal(read_bp(path)["w"], np.arange(2))
    assert len(os.listdir(tmp_path)) == 2
