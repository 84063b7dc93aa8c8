"""``bpz.brainpy.install()`` with real BrainPy (2.8 on Python 3.11, 2.9 on 3.12; both use braintools).

What a BrainPy user's code sees while installed: the exception classes it catches, the one-time
notice about ``.bp`` names and ``install(bp_format="brainpy")``, and braintools' ``msgpack_load``
options (``mismatch``, ``max_size``, ``verbose``).
"""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest

bp = pytest.importorskip("brainpy")
braintools_file = pytest.importorskip("braintools.file")

import brainpy.checkpoints  # noqa: E402

import bpz  # noqa: E402
import bpz.brainpy as bb  # noqa: E402
import bpz.errors  # noqa: E402
import bpz.write  # noqa: E402
from bpz.read import is_bpz_file  # noqa: E402


@pytest.fixture
def installed():
    """Installed with bp_format='bpz' (no notice); the original functions back afterwards."""
    was = bb.is_installed()
    with bb.installed(bp_format="bpz"):
        yield
    assert bb.is_installed() == was


@pytest.fixture
def fresh_notice(monkeypatch):
    monkeypatch.setattr(bb.dropin, "_notice_given", False)


# ------------------------------------------------------------------ item 5: exception classes


def test_overwrite_false_raises_braintools_class_and_bpz_class(installed, tmp_path):
    path = str(tmp_path / "ck.bpz")
    bp.checkpoints.save_pytree(path, {"a": np.arange(3)}, verbose=False)
    for save in (bp.checkpoints.save_pytree, braintools_file.msgpack_save):
        with pytest.raises(braintools_file.InvalidCheckpointPath) as info:
            save(path, {"a": np.zeros(3)}, overwrite=False, verbose=False)
        assert isinstance(info.value, bpz.errors.InvalidCheckpointPath)
        assert isinstance(info.value, ValueError)
        assert str(info.value) == f'Invalid checkpoint at "{path}".'
    assert bpz.load_pytree(path)["a"].tolist() == [0, 1, 2]  # untouched


def test_the_same_class_each_time(installed, tmp_path):
    path = str(tmp_path / "ck.bpz")
    bpz.save_pytree(path, 1, verbose=False)
    classes = set()
    for _ in range(3):
        with pytest.raises(braintools_file.InvalidCheckpointPath) as info:
            bp.checkpoints.save_pytree(path, 1, overwrite=False, verbose=False)
        classes.add(type(info.value))
    assert len(classes) == 1


def test_the_race_raises_already_exists_error(installed, tmp_path, monkeypatch):
    """The file appears between the overwrite=False check and the rename: braintools' AlreadyExistsError."""
    path = str(tmp_path / "race.bpz")
    bpz.save_pytree(path, {"old": np.ones(2)}, verbose=False)
    real_lexists = os.path.lexists
    monkeypatch.setattr(bpz.write.os.path, "lexists", lambda p: False if p == path else real_lexists(p))
    with pytest.raises(braintools_file.AlreadyExistsError) as info:
        bp.checkpoints.save_pytree(path, {"new": np.zeros(2)}, overwrite=False, verbose=False)
    assert isinstance(info.value, bpz.errors.InvalidCheckpointPath)
    assert not isinstance(info.value, braintools_file.InvalidCheckpointPath)
    monkeypatch.undo()
    assert list(bpz.load_pytree(path)) == ["old"]


@pytest.mark.parametrize("content", [b"\x93\x01", b"", b"not a checkpoint at all", b"\x89BPZ\r\n\x1a\n" + b"\0" * 40])
def test_a_corrupt_file_raises_braintools_class_and_bpz_class(installed, tmp_path, content):
    path = tmp_path / "bad.bp"
    path.write_bytes(content)
    for load in (bp.checkpoints.load_pytree, braintools_file.msgpack_load):
        with pytest.raises(braintools_file.InvalidCheckpointPath) as info:
            load(str(path))
        assert isinstance(info.value, bpz.errors.FormatError) and isinstance(info.value, ValueError)
        assert "bad.bp" in str(info.value)


def test_classes_are_bpz_only_when_not_installed(tmp_path):
    assert not bb.is_installed()
    path = str(tmp_path / "ck.bpz")
    bpz.save_pytree(path, 1, verbose=False)
    with pytest.raises(bpz.errors.InvalidCheckpointPath) as info:
        bpz.save_pytree(path, 1, overwrite=False, verbose=False)
    assert not isinstance(info.value, braintools_file.InvalidCheckpointPath)


def test_missing_file_is_the_same_value_error(installed, tmp_path):
    for load in (bp.checkpoints.load_pytree, braintools_file.msgpack_load):
        with pytest.raises(ValueError, match="Checkpoint not found: "):
            load(str(tmp_path / "nope.bp"))


# ------------------------------------------------------------------ item 9: .bp names


def test_one_notice_for_bp_names_when_the_format_was_not_chosen(tmp_path, fresh_notice):
    with bb.installed():
        with pytest.warns(UserWarning, match=r"bpz archive.*bp_format='brainpy'"):
            bp.checkpoints.save_pytree(str(tmp_path / "a.bp"), {"x": np.ones(2)}, verbose=False)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            bp.checkpoints.save_pytree(str(tmp_path / "b.bp"), {"x": np.ones(2)}, verbose=False)  # once only
            bp.checkpoints.save_pytree(str(tmp_path / "c.bpz"), {"x": np.ones(2)}, verbose=False)
    assert is_bpz_file(tmp_path / "a.bp") and is_bpz_file(tmp_path / "b.bp")


def test_no_notice_for_other_names_or_a_chosen_format(tmp_path, fresh_notice):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with bb.installed():
            bp.checkpoints.save_pytree(str(tmp_path / "a.bpz"), 1, verbose=False)
            bp.checkpoints.save_pytree(str(tmp_path / "noext"), 1, verbose=False)
        with bb.installed(bp_format="bpz"):
            bp.checkpoints.save_pytree(str(tmp_path / "a.bp"), 1, verbose=False)
    assert bb.dropin._notice_given is False


def test_bp_format_brainpy_writes_what_plain_brainpy_reads(tmp_path):
    import jax.numpy as jnp

    bm = bp.math
    var = bm.Variable(jnp.arange(3.0))
    tree = {"net": {"w": jnp.ones((2, 2)), "v": var}, "epoch": 3, "acc": 0.5, "seq": (1, 2),
            "scalar": np.float32(2.5), "name": "run"}
    path = str(tmp_path / "share.bp")
    with bb.installed(bp_format="brainpy"):
        assert bp.checkpoints.save_pytree(path, tree, verbose=False) == path
        var.value = jnp.zeros(3)  # the file holds the values at save time
        with pytest.raises(braintools_file.InvalidCheckpointPath):
            bp.checkpoints.save_pytree(path, tree, overwrite=False, verbose=False)
        back_bpz = bp.checkpoints.load_pytree(path)  # bpz reads it too
        bp.checkpoints.save_pytree(str(tmp_path / "other.bpz"), tree, verbose=False)
    assert not is_bpz_file(path) and is_bpz_file(tmp_path / "other.bpz")
    back = brainpy.checkpoints.load_pytree(path)  # BrainPy's own reader, bpz not installed
    assert back["net"]["w"].tolist() == [[1, 1], [1, 1]] and back["net"]["v"].tolist() == [0, 1, 2]
    assert back["epoch"] == 3 and back["acc"] == 0.5 and back["seq"] == {"0": 1, "1": 2}
    assert back["scalar"] == np.float32(2.5) and back["name"] == "run"
    assert back_bpz["net"]["v"].tolist() == [0, 1, 2]


def test_bp_format_brainpy_never_replaces_a_file_that_appeared_with_overwrite_false(tmp_path, monkeypatch):
    path = str(tmp_path / "race.bp")
    bpz.save_pytree(path, {"old": np.ones(2)}, verbose=False)
    real_lexists = os.path.lexists
    monkeypatch.setattr(os.path, "lexists", lambda p: False if p == path else real_lexists(p))
    with bb.installed(bp_format="brainpy"):
        with pytest.raises(braintools_file.AlreadyExistsError):
            bp.checkpoints.save_pytree(path, {"new": np.zeros(2)}, overwrite=False, verbose=False)
    monkeypatch.undo()
    assert list(bpz.load_pytree(path)) == ["old"] and os.listdir(tmp_path) == ["race.bp"]


def test_bp_format_brainpy_refuses_what_the_format_cannot_hold(tmp_path):
    path = tmp_path / "x.bp"
    with bb.installed(bp_format="brainpy"):
        with pytest.raises(TypeError, match=r"x\.bp.*BrainPy's msgpack format.*set.*target\['s'\]"):
            bp.checkpoints.save_pytree(str(path), {"a": np.ones(2), "s": {1, 2}}, verbose=False)
        with pytest.raises(ValueError, match=r"unicode"):
            bp.checkpoints.save_pytree(str(path), {"t": np.array(["a", "b"])}, verbose=False)
    assert not path.exists()


def test_bp_format_brainpy_with_an_async_manager(tmp_path):
    path = str(tmp_path / "async.bp")
    with bb.installed(bp_format="brainpy"):
        with bp.checkpoints.AsyncManager() as am:
            x = np.arange(4.0)
            bp.checkpoints.save_pytree(path, {"x": x}, async_manager=am, verbose=False)
            x[:] = -1  # snapshotted at the call
    assert brainpy.checkpoints.load_pytree(path)["x"].tolist() == [0, 1, 2, 3]


def test_bad_bp_format():
    with pytest.raises(ValueError, match="bp_format"):
        bb.install(bp_format="msgpack")
    assert not bb.is_installed()


# ------------------------------------------------------------------ braintools.file.msgpack_load options


def test_braintools_names_are_patched_and_restored():
    from braintools.file import _msg_checkpoint as M

    originals = (braintools_file.msgpack_save, braintools_file.msgpack_load, M.msgpack_load,
                 bp.checkpoints.load_pytree, bp.checkpoints.AsyncManager)
    with bb.installed(bp_format="bpz"):
        assert braintools_file.msgpack_load is M.msgpack_load is bb.dropin._bt_msgpack_load
        assert braintools_file.AsyncManager is bpz.AsyncManager is bp.checkpoints.AsyncManager
    assert (braintools_file.msgpack_save, braintools_file.msgpack_load, M.msgpack_load,
            bp.checkpoints.load_pytree, bp.checkpoints.AsyncManager) == originals


def test_mismatch_modes(installed, tmp_path):
    path = str(tmp_path / "m.bpz")
    braintools_file.msgpack_save(path, {"w": np.arange(10.0), "a": np.arange(2)})
    assert is_bpz_file(path)  # bpz is behind braintools.file
    target = {"w": np.zeros(3), "a": np.zeros(2), "c": np.full(1, 7.0)}
    with pytest.raises(ValueError, match="not present in state dict"):
        braintools_file.msgpack_load(path, target=target)
    with pytest.warns(UserWarning) as record:
        out = braintools_file.msgpack_load(path, target=target, mismatch="warn")
    messages = " | ".join(str(w.message) for w in record)
    assert "shape mismatch" in messages.lower() and "'c'" in messages
    assert out["w"].tolist() == list(range(10)) and out["a"].tolist() == [0, 1] and out["c"].tolist() == [7.0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = braintools_file.msgpack_load(path, target=target, mismatch="ignore")
    assert out["w"].shape == (10,) and out["c"] is target["c"]
    with pytest.raises(ValueError, match="Invalid mismatch mode"):
        braintools_file.msgpack_load(path, target=target, mismatch="bogus")


def test_mismatch_keeps_states_in_place(installed, tmp_path):
    brainstate = pytest.importorskip("brainstate")
    path = str(tmp_path / "s.bpz")
    braintools_file.msgpack_save(path, {"p": np.arange(4.0), "q": [np.ones(2), np.ones(3)]})
    assert is_bpz_file(path)
    p, q0 = brainstate.ParamState(np.zeros(6)), brainstate.ParamState(np.zeros(2))
    kept = np.full(5, 9.0)
    out = braintools_file.msgpack_load(path, target={"p": p, "q": [q0, np.zeros(3), kept]}, mismatch="ignore")
    assert out["p"] is p and p.value.tolist() == [0, 1, 2, 3]  # shape from the file, as braintools
    assert out["q"][0] is q0 and q0.value.tolist() == [1, 1] and out["q"][2] is kept
    # a BrainPy Variable takes no other shape: refused before anything is assigned
    p.value = np.zeros(6)
    with pytest.raises(ValueError, match=r"Array shape mismatch: expected \(6,\), got \(4,\)"):
        braintools_file.msgpack_load(path, target={"p": bp.math.Variable(np.zeros(6, np.float32)),
                                                   "q": [q0, p]}, mismatch="warn")
    assert p.value.tolist() == [0] * 6


def test_max_size_and_verbose(installed, tmp_path, capsys):
    path = str(tmp_path / "big.bpz")
    braintools_file.msgpack_save(path, {"a": np.arange(1000)})
    with pytest.raises(ValueError, match="too large"):
        braintools_file.msgpack_load(path, max_size=10)
    assert braintools_file.msgpack_load(path, max_size=None, verbose=True)["a"].size == 1000
    assert braintools_file.msgpack_load(path, max_size=1 << 20)["a"].size == 1000
    assert f"Loading checkpoint from {path}" in capsys.readouterr().out
    with pytest.raises(ValueError, match="max_size"):
        braintools_file.msgpack_load(path, max_size=-1)


def _math_error() -> type:
    import importlib

    for module in ("brainpy", "brainpy._errors", "brainpy.errors"):
        try:
            cls = getattr(importlib.import_module(module), "MathError", None)
        except ImportError:
            continue
        if cls is not None:
            return cls
    pytest.fail("BrainPy has no MathError")


def test_a_variable_that_does_not_fit_is_also_brainpys_math_error(tmp_path):
    """BrainPy's Variable setter raises MathError; bpz's (atomic) StateMismatchError is also one."""
    bm = bp.math

    class Net(bp.DynamicalSystem):
        def __init__(self) -> None:
            super().__init__()
            self.w = bm.Variable(bm.zeros(3))

    net = Net()
    sd = bb.state_dict(net)
    node = next(name for name, entry in sd.items() if entry)
    key = next(iter(sd[node]))
    sd[node][key] = np.zeros(4, np.float32)
    with pytest.raises(_math_error()) as info:
        bb.load_state_dict(net, sd)
    assert isinstance(info.value, bb.StateMismatchError) and isinstance(info.value, ValueError)
    assert "shape (3,)" in str(info.value) and "shape (4,)" in str(info.value)
    path = str(tmp_path / "s.npz")
    np.savez(path, **{key: np.zeros(4, np.float32)})
    with pytest.raises(_math_error()):
        bb.load_states(net, path)
