"""The public ways to adjust the legacy readers' expansion budget: ``bpz.set_legacy_limits``,
the ``max_ratio=`` / ``max_bytes=`` keywords of ``bpz.brainpy.load_states`` / ``read_states``
/ ``load_pickle``, and the environment variables. A small bomb is refused by default and loads
after the limit is raised through each route; lowering ``max_bytes`` refuses an honest file."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest

import bpz
import bpz.brainpy as bb
from bpz.errors import LimitExceededError

COPIES, RAW = 1040, 256 << 10  # 260 MiB of arrays from a 256 KiB pickle: over the 256 MiB floor


class _SharedArray:
    """Pickles as numpy's ``_reconstruct`` + BUILD on one memoized bytes object: each further
    array costs the file a few bytes (a memo reference) and the reader a whole copy."""

    def __init__(self, raw: bytes) -> None:
        self.raw = raw

    def __reduce__(self):
        from numpy._core.multiarray import _reconstruct

        return (_reconstruct, (np.ndarray, (0,), b"b"), (1, (len(self.raw),), np.dtype("u1"), False, self.raw))


@pytest.fixture(scope="module")
def bomb(tmp_path_factory) -> str:
    raw = b"\x01" * RAW
    path = str(tmp_path_factory.mktemp("bomb") / "states.pkl")
    with open(path, "wb") as f:
        pickle.dump({f"n.v{i}": _SharedArray(raw) for i in range(COPIES)}, f, protocol=4)
    assert os.path.getsize(path) < 2 * RAW
    return path


@pytest.fixture(autouse=True)
def default_limits(monkeypatch):
    monkeypatch.delenv("BPZ_LEGACY_MAX_RATIO", raising=False)
    monkeypatch.delenv("BPZ_LEGACY_MAX_BYTES", raising=False)
    old = bpz.set_legacy_limits()
    yield
    bpz.set_legacy_limits(**old)


def target():
    return {f"n.v{i}": np.zeros(RAW, np.uint8) for i in range(COPIES)}


def loaded(model) -> bool:
    return all(v[0] == 1 and v[-1] == 1 for v in model.values())


def test_a_bomb_is_refused_by_default_naming_the_ways_out(bomb):
    model = target()
    with pytest.raises(LimitExceededError) as e:
        bb.load_states(model, bomb)
    message = str(e.value)
    assert bomb in message and "bpz.set_legacy_limits" in message and "max_ratio=" in message
    assert "BPZ_LEGACY_MAX_RATIO" in message and not any(v.any() for v in model.values())  # nothing assigned
    for read in (bb.read_states, bb.load_pickle):
        with pytest.raises(LimitExceededError):
            read(bomb)


def test_load_states_keywords(bomb):
    model = target()
    bb.load_states(model, bomb, max_ratio=2000)
    assert loaded(model)
    assert len(bb.read_states(bomb, max_ratio=2000)) == COPIES
    assert len(bb.load_pickle(bomb, max_ratio=2000)) == COPIES
    with pytest.raises(LimitExceededError):  # a keyword lasts for its call only
        bb.read_states(bomb)


def test_a_state_node_passes_them_on(bomb):
    class Net(bb.StateNode):
        def __init__(self):
            super().__init__()
            self.v = np.zeros(RAW, np.uint8)

    path = bomb.replace("states.pkl", "one.pkl")
    raw = b"\x01" * RAW
    with open(path, "wb") as f:  # one array, then the rest of the bomb under other names
        pickle.dump({"net.v": _SharedArray(raw), **{f"x{i}": _SharedArray(raw) for i in range(COPIES)}}, f)
    net = Net()
    net.name = "net"
    with pytest.raises(LimitExceededError):
        net.load_states(path)
    with pytest.raises(KeyError, match="x0"):  # read in full, then refused for its unknown keys
        net.load_states(path, max_ratio=2000)


def test_set_legacy_limits_for_the_process(bomb):
    assert bpz.set_legacy_limits(max_ratio=2000) == {"max_ratio": None, "max_bytes": None}
    model = target()
    bb.load_states(model, bomb)
    assert loaded(model)
    assert bpz.set_legacy_limits() == {"max_ratio": 2000.0, "max_bytes": None}  # back to the default
    with pytest.raises(LimitExceededError):
        bb.read_states(bomb)
    bpz.set_legacy_limits(max_ratio=2000)
    with pytest.raises(LimitExceededError):  # a keyword overrides the process setting
        bb.read_states(bomb, max_ratio=64)


def test_environment_variable(bomb, monkeypatch):
    monkeypatch.setenv("BPZ_LEGACY_MAX_RATIO", "2000")
    model = target()
    bb.load_states(model, bomb)
    assert loaded(model)
    bpz.set_legacy_limits(max_ratio=64)  # the process setting overrides the environment
    with pytest.raises(LimitExceededError):
        bb.read_states(bomb)


def test_max_bytes_caps_an_honest_file(tmp_path):
    path = str(tmp_path / "s.npz")
    bb.save_states({"a.w": np.ones(1000)}, path)
    model = {"a.w": np.zeros(1000)}
    bb.load_states(model, path)
    for route in ("keyword", "process"):
        with pytest.raises(LimitExceededError, match="s.npz"):
            if route == "keyword":
                bb.load_states(model, path, max_bytes=4096)
            else:
                bpz.set_legacy_limits(max_bytes=4096)
                bb.load_states(model, path)
    # The process setting reaches every legacy reader, bpz.load_pytree of a BrainPy .bp included.
    bp = str(tmp_path / "m.bp")
    from bpz._legacy import write_bp

    write_bp(bp, {"w": np.ones(1000)})
    with pytest.raises(LimitExceededError, match="m.bp"):
        bpz.load_pytree(bp)
    bpz.set_legacy_limits()
    assert bpz.load_pytree(bp)["w"].shape == (1000,)


@pytest.mark.parametrize("bad", [0, -1, float("nan"), True, "1G", None])
def test_bad_values_are_refused(tmp_path, bad):
    if bad is None:  # None is "not set", fine
        bpz.set_legacy_limits(max_ratio=None, max_bytes=None)
        return
    with pytest.raises(ValueError, match="max_ratio"):
        bpz.set_legacy_limits(max_ratio=bad)
    with pytest.raises(ValueError, match="max_bytes"):
        bpz.set_legacy_limits(max_bytes=bad)
    with pytest.raises(ValueError, match="max_bytes"):
        bpz.set_legacy_limits(max_bytes=float("inf"))
    path = str(tmp_path / "s.bpz")  # also when the file is a bpz archive (whose limits are its own)
    bb.save_states({"a.w": np.ones(3)}, path)
    with pytest.raises(ValueError, match="max_ratio"):
        bb.load_states({"a.w": np.zeros(3)}, path, max_ratio=bad)
    assert bpz.set_legacy_limits() == {"max_ratio": None, "max_bytes": None}  # nothing was set


def test_exported():
    assert "set_legacy_limits" in bpz.__all__ and bpz.set_legacy_limits.__doc__
    assert "max_ratio" in bb.load_states.__doc__ and "{limits}" not in bb.load_states.__doc__
