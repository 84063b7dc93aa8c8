"""The files bpz's Python code writes itself (``bpz convert`` to .npz/.safetensors/.bp,
``bpz.brainpy.save_states`` to .h5/.npz/.pkl/.mat, legacy ``write_bp``) follow the same
destination rules as archives, because they are put in place by the same core code
(``bpz._bpz.TempFile``, ``bpz::persist``):

- a regular file is replaced keeping its permission bits (and owner/group);
- a symlink is followed and stays a symlink; the file it leads to is replaced;
- a directory, FIFO or socket is refused before anything is written, with an ``OSError``
  naming it (a FIFO never blocks the save);
- a failed write leaves the previous file as it was and no temporary file.
"""

from __future__ import annotations

import contextlib
import io
import os
import socket
import stat
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import bpz
from bpz._legacy import _common, write_bp
from bpz.brainpy import save_states
from bpz.cli import main

VALUES = {"w": np.arange(4.0)}


def _convert(dest: str) -> None:
    src = os.path.join(os.path.dirname(os.path.realpath(dest)), ".src.bpz")
    bpz.save_pytree(src, VALUES, verbose=False, overwrite=True)
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            code = main(["convert", src, dest, "--force"])
    finally:
        os.remove(src)
    if code != 0:
        raise RuntimeError(f"bpz convert exited {code}: {err.getvalue()}")


#: name -> (file suffix, save(path)); every Python-side writer of a non-bpz file.
WRITERS = {
    "convert npz": (".npz", _convert),
    "convert safetensors": (".safetensors", _convert),
    "convert bp": (".bp", _convert),
    "save_states h5": (".h5", lambda p: save_states({}, p, dict(VALUES))),
    "save_states npz": (".npz", lambda p: save_states({}, p, dict(VALUES))),
    "save_states pkl": (".pkl", lambda p: save_states({}, p, dict(VALUES))),
    "save_states mat": (".mat", lambda p: save_states({}, p, dict(VALUES))),
    "write_bp": (".bp", lambda p: write_bp(p, dict(VALUES))),
}
#: The same, as code for a child process (a save that blocks must fail the test, not hang it).
CHILD = {
    "convert npz": "_convert",
    "convert safetensors": "_convert",
    "convert bp": "_convert",
    "save_states h5": "lambda p: save_states({}, p, dict(VALUES))",
    "save_states npz": "lambda p: save_states({}, p, dict(VALUES))",
    "save_states pkl": "lambda p: save_states({}, p, dict(VALUES))",
    "save_states mat": "lambda p: save_states({}, p, dict(VALUES))",
    "write_bp": "lambda p: write_bp(p, dict(VALUES))",
}
ALL = pytest.mark.parametrize("writer", list(WRITERS))


def dest(tmp_path, writer: str, stem: str = "out") -> str:
    return str(tmp_path / (stem + WRITERS[writer][0]))


def save(writer: str, path: str) -> None:
    WRITERS[writer][1](path)


def debris(directory) -> list[str]:
    """Temporaries left behind (anything hidden or with 'tmp' in its name)."""
    return sorted(n for n in os.listdir(directory) if n.startswith(".") or "tmp" in n)


@ALL
@pytest.mark.parametrize("mode", [0o600, 0o640, 0o604])
def test_a_replaced_file_keeps_its_permission_bits(tmp_path, writer, mode):
    path = dest(tmp_path, writer)
    with open(path, "wb") as f:
        f.write(b"private")
    os.chmod(path, mode)
    save(writer, path)
    assert stat.S_IMODE(os.stat(path).st_mode) == mode
    assert open(path, "rb").read() != b"private" and debris(tmp_path) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file away needs root")
@pytest.mark.parametrize("writer", ["convert npz", "save_states h5", "write_bp"])
def test_a_replaced_file_keeps_its_owner_and_group(tmp_path, writer):
    path = dest(tmp_path, writer)
    open(path, "wb").close()
    os.chown(path, 1234, 5678)
    save(writer, path)
    st = os.stat(path)
    assert (st.st_uid, st.st_gid) == (1234, 5678)


@ALL
def test_a_symlink_is_followed_and_kept(tmp_path, writer):
    real_dir = tmp_path / "real"
    real_dir.mkdir()
    real = dest(real_dir, writer, "target")
    with open(real, "wb") as f:
        f.write(b"old")
    os.chmod(real, 0o640)
    link = dest(tmp_path, writer, "link")
    os.symlink(os.path.relpath(real, tmp_path), link)
    save(writer, link)
    assert os.path.islink(link) and os.path.realpath(link) == os.path.realpath(real)
    assert open(real, "rb").read() != b"old" and stat.S_IMODE(os.stat(real).st_mode) == 0o640
    assert debris(tmp_path) == [] and debris(real_dir) == []


@ALL
def test_a_dangling_symlink_creates_its_target(tmp_path, writer):
    link = dest(tmp_path, writer, "link")
    target = dest(tmp_path, writer, "made")
    os.symlink(os.path.basename(target), link)
    save(writer, link)
    assert os.path.islink(link) and os.path.isfile(target) and os.path.getsize(target) > 0


@ALL
def test_a_directory_is_refused_with_an_error_naming_it(tmp_path, writer):
    path = dest(tmp_path, writer)
    os.mkdir(path)
    with pytest.raises((OSError, RuntimeError)) as e:  # RuntimeError: bpz convert's exit, with its stderr
        save(writer, path)
    assert path in str(e.value) and "directory" in str(e.value), e.value
    assert os.path.isdir(path) and os.listdir(path) == [] and debris(tmp_path) == []


def _in_child(writer: str, path: str, timeout: float = 60) -> str:
    code = textwrap.dedent(f"""
        import os, sys
        import numpy as np
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        from test_destinations_python_writers import _convert, VALUES
        from bpz.brainpy import save_states
        from bpz._legacy import write_bp
        try:
            ({CHILD[writer]})({path!r})
        except (OSError, RuntimeError) as e:
            print(type(e).__name__, e)
        else:
            print("saved")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout)
    return out.stdout + out.stderr


@ALL
def test_a_fifo_is_refused_without_blocking(tmp_path, writer):
    path = dest(tmp_path, writer)
    os.mkfifo(path)
    result = _in_child(writer, path, timeout=60)  # a writer that opens the FIFO would block here
    assert path in result and "FIFO" in result and "refusing" in result, result
    assert stat.S_ISFIFO(os.lstat(path).st_mode) and debris(tmp_path) == []


@pytest.mark.parametrize("writer", ["convert npz", "save_states pkl", "write_bp"])
def test_a_socket_is_refused(tmp_path, writer):
    path = dest(tmp_path, writer)
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(path)
        with pytest.raises((OSError, RuntimeError)) as e:
            save(writer, path)
    assert path in str(e.value) and "socket" in str(e.value), e.value
    assert stat.S_ISSOCK(os.lstat(path).st_mode) and debris(tmp_path) == []


@pytest.mark.parametrize("writer", ["save_states h5", "save_states npz", "save_states mat", "write_bp"])
def test_a_writer_failing_midway_leaves_the_old_file_and_no_temporary(tmp_path, writer):
    path = dest(tmp_path, writer)
    save(writer, path)
    os.chmod(path, 0o600)
    before = open(path, "rb").read()
    bad = {"a": np.arange(3.0), "b": np.array([object()])}  # refused after "a" was written
    with pytest.raises(Exception):
        if writer == "write_bp":
            write_bp(path, {"a": np.arange(3.0), "b": object()})
        else:
            save_states({}, path, bad)
    assert open(path, "rb").read() == before and stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert debris(tmp_path) == []


def test_a_failed_commit_leaves_no_temporary(tmp_path):
    """The destination turns into a directory while the file is written: refused at commit."""
    path = str(tmp_path / "m.npz")

    def write(tmp):
        with open(tmp, "wb") as f:
            f.write(b"data")
        os.mkdir(path)

    with pytest.raises(IsADirectoryError, match="appeared while saving"):
        _common.atomic_write(path, write)
    assert os.path.isdir(path) and debris(tmp_path) == []


def test_a_writer_that_replaces_the_temporary_is_refused(tmp_path):
    """The permissions are set on the temporary the core opened; a writer that renames another
    file over its name would bring the other file's permissions: refused, nothing left."""
    path = str(tmp_path / "m.pkl")
    with open(path, "wb") as f:
        f.write(b"old")
    os.chmod(path, 0o600)

    def write(tmp):
        other = str(tmp_path / "other")
        with open(other, "wb") as f:
            f.write(b"new")
        os.replace(other, tmp)

    with pytest.raises(OSError, match="replaced"):
        _common.atomic_write(path, write)
    assert open(path, "rb").read() == b"old" and sorted(os.listdir(tmp_path)) == ["m.pkl"]


def test_a_new_file_gets_what_open_gives(tmp_path):
    old = os.umask(0o027)
    try:
        path = str(tmp_path / "s.npz")
        save_states({}, path, dict(VALUES))
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640


@pytest.mark.parametrize("name", [os.fsdecode(b"bad\xff.bp"), b"raw\xfe.bp", "a" * 252 + ".bp"])
def test_any_legal_name_can_be_written(tmp_path, name):
    path = os.path.join(os.fsencode(tmp_path) if isinstance(name, bytes) else str(tmp_path), name)
    assert write_bp(path, dict(VALUES)) == path
    assert os.listdir(os.fsencode(tmp_path)) == [os.fsencode(name)]
