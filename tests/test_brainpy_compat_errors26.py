"""``bpz.brainpy.install()`` under BrainPy 2.3–2.6, whose checkpoint errors are ``brainpy.errors``' classes
and where braintools is absent: a stand-in ``brainpy`` package with 2.6's classes (no BrainPy needed)."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest

import bpz
import bpz.brainpy as bb
import bpz.errors


@pytest.fixture
def brainpy26(monkeypatch):
    errors = types.ModuleType("brainpy.errors")

    class BrainPyError(Exception):
        pass

    class InvalidCheckpointPath(BrainPyError):  # brainpy/errors.py of 2.6.1
        def __init__(self, ckpt_dir):
            super().__init__(f'Invalid checkpoint at "{ckpt_dir}".')

    class AlreadyExistsError(BrainPyError):
        def __init__(self, path):
            super().__init__(f'Trying overwrite an existing file: "{path}".')

    errors.BrainPyError, errors.InvalidCheckpointPath, errors.AlreadyExistsError = (
        BrainPyError, InvalidCheckpointPath, AlreadyExistsError)
    package = types.ModuleType("brainpy")
    package.__path__ = []
    checkpoints = types.ModuleType("brainpy.checkpoints")
    checkpoints.save_pytree = checkpoints.load_pytree = lambda *a, **k: "brainpy"
    checkpoints.AsyncManager = object
    package.checkpoints, package.errors = checkpoints, errors
    for name, module in (("brainpy", package), ("brainpy.checkpoints", checkpoints), ("brainpy.errors", errors),
                         ("braintools", None), ("braintools.file", None), ("braintools.file._msg_checkpoint", None)):
        monkeypatch.setitem(sys.modules, name, module)  # None: "import braintools" fails, as without it
    bb.install(bp_format="bpz")
    yield package
    bb.uninstall()


def test_errors_are_brainpy_errors_classes(brainpy26, tmp_path):
    path = str(tmp_path / "ck.bpz")
    brainpy26.checkpoints.save_pytree(path, {"a": np.ones(2)}, verbose=False)
    with pytest.raises(brainpy26.errors.InvalidCheckpointPath) as info:
        brainpy26.checkpoints.save_pytree(path, {"a": np.ones(2)}, overwrite=False, verbose=False)
    assert isinstance(info.value, bpz.errors.InvalidCheckpointPath)
    assert isinstance(info.value, brainpy26.errors.BrainPyError)
    assert str(info.value) == f'Invalid checkpoint at "{path}".'
    bad = tmp_path / "bad.bp"
    bad.write_bytes(b"\x00garbage")
    with pytest.raises(brainpy26.errors.InvalidCheckpointPath) as info:
        brainpy26.checkpoints.load_pytree(str(bad))
    assert isinstance(info.value, bpz.errors.FormatError)


def test_only_brainpy_checkpoints_is_patched(brainpy26):
    assert brainpy26.checkpoints.AsyncManager is bpz.AsyncManager
    assert bb.is_installed()
