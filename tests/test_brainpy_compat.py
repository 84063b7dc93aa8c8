"""bpz.brainpy without BrainPy: the plain-Python protocol, legacy files, the BrainPy fixtures.

The fixtures under tests/fixtures/brainpy-<version>/ were written by real BrainPy; every
file is checked against its manifest (key paths, shapes, dtypes, sha256) through the bpz
API, and the legacy ``save_states`` files are loaded into plain-Python models that mirror
the BrainPy models' node and variable names (aliases included).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
import types
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import bpz
import bpz.brainpy as bb
from bpz._legacy import states_files

FIXTURES = Path(__file__).resolve().parent / "fixtures"
VERSIONS = ("brainpy-2.9.0", "brainpy-2.3.8")
STATE_FILE_SUFFIXES = (".h5", ".hdf5", ".npz", ".pkl", ".mat")
ALL_SUFFIXES = (".h5", ".hdf5", ".npz", ".pkl", ".pickle", ".mat", ".bpz")


def manifest(version: str) -> dict[str, Any]:
    return json.loads((FIXTURES / version / "manifest.json").read_text())


def files(predicate: Any) -> list[Any]:
    return [
        pytest.param(v, name, meta, id=f"{v}/{name}")
        for v in VERSIONS
        for name, meta in manifest(v)["files"].items()
        if predicate(name, meta)
    ]


def sha256(value: Any) -> str:
    return hashlib.sha256(np.ascontiguousarray(value).tobytes()).hexdigest()


def at(tree: Any, path: list[str]) -> Any:
    for key in path:
        assert isinstance(tree, dict) and key in tree, (path, key)
        tree = tree[key]
    return tree


def leaf_paths(tree: Any, prefix: tuple = ()) -> list[tuple]:
    if isinstance(tree, dict) and tree:
        return [p for k, v in tree.items() for p in leaf_paths(v, (*prefix, k))]
    return [prefix]


def check_value(value: Any, entry: dict[str, Any]) -> None:
    kind, where = entry["type"], entry["path"]
    if kind == "empty_dict":
        assert value == {} and isinstance(value, dict), where
    elif kind == "numpy.ndarray":
        assert isinstance(value, np.ndarray), (where, type(value))
        assert list(value.shape) == entry["shape"], where
        assert entry["dtype"] in (value.dtype.name, value.dtype.str), (where, value.dtype)
        assert sha256(value) == entry["sha256"], where
    elif kind.startswith("numpy."):
        assert isinstance(value, np.generic), (where, type(value))
        assert value.dtype.name == entry["dtype"] and sha256(value) == entry["sha256"], where
    elif kind == "complex":
        assert complex(value) == complex(*entry["value"]), where
    elif kind == "bytes":
        assert bytes(value).hex() == entry["value_hex"], where
    elif kind == "None":
        assert value is None, where
    else:
        assert type(value).__name__ == kind and value == entry["value"], where


def check_tree(tree: Any, meta: dict[str, Any]) -> None:
    for entry in meta["entries"]:
        check_value(at(tree, entry["path"]), entry)
    assert leaf_paths(tree) == [tuple(e["path"]) for e in meta["entries"]]


# ------------------------------------------------------------------ plain-Python models


class LIF(bb.StateNode):
    def __init__(self, n: int, name: str) -> None:
        self.name = name
        self.V = np.full(n, -60.0, np.float32)
        self.input = np.zeros(n, np.float32)
        self.spike = np.zeros(n, bool)
        self.t_last_spike = np.full(n, -1e7, np.float32)


class COBA(bb.StateNode):
    """Like BrainPy's: its two variables are the post-synaptic neuron's (aliases)."""

    def __init__(self, post: LIF, name: str) -> None:
        self.name = name
        self.membrane_var = post.V
        self.target_var = post.input


class Expon(bb.StateNode):
    def __init__(self, post: LIF, name: str, out: COBA) -> None:
        self.name = name
        self.g = np.zeros(post.V.shape, np.float32)
        self.output = out


class EINet(bb.StateNode):
    """The 2.3.8 fixture model's names: EINet0, LIF0/1, Exponential0-3 (g), COBA2-5."""

    def __init__(self) -> None:
        self.name = "EINet0"
        self.E, self.I = LIF(32, "LIF0"), LIF(8, "LIF1")
        pairs = [(self.E, self.E), (self.E, self.I), (self.I, self.E), (self.I, self.I)]
        self.syns = [Expon(post, f"Exponential{i}", COBA(post, f"COBA{i + 2}")) for i, (_, post) in enumerate(pairs)]


class DupHolder(bb.StateNode):
    """The 2.3.8 fixture ``dup`` model: a child's ``alias`` is the parent's ``x``."""

    def __init__(self) -> None:
        self.name = "DupHolder0"
        self.b = np.ones(2, bool)
        self.i = np.zeros(4, np.int32)
        self.m = np.zeros((2, 3), np.float32)
        self.s = np.array(9.0, np.float32)
        self.x = np.zeros(3, np.float32)
        self.child = Alias(self.x)


class Alias(bb.StateNode):
    name = "DynamicalSystem0"

    def __init__(self, x: np.ndarray) -> None:
        self.alias = x


class Dense(bb.StateNode):
    def __init__(self, n_in: int, n_out: int, name: str, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.name = name
        self.W = rng.standard_normal((n_in, n_out)).astype(np.float32)
        self.b = rng.standard_normal(n_out).astype(np.float32)


class Net(bb.StateNode):
    def __init__(self, seed: int = 0) -> None:
        self.name = "Net0"
        self.layers = [Dense(4, 3, "Dense0", seed), Dense(3, 2, "Dense1", seed + 1)]
        self.lif = LIF(2, "Lif0")


class Counter(bb.StateNode):
    """A custom hook pair, as BrainPy users write them: its keys carry no node prefix."""

    def __init__(self, name: str = "Custom0") -> None:
        self.name = name
        self.a = np.zeros(3, np.float32)
        self.step = 0
        self.seen_kwargs: dict[str, Any] = {}

    def __save_state__(self, **kwargs: Any) -> dict[str, Any]:
        self.seen_kwargs = kwargs
        return {"a": self.a.copy(), "step": self.step}

    def __load_state__(self, state_dict: dict[str, Any], **kwargs: Any) -> tuple[list[str], list[str]]:
        self.seen_kwargs = kwargs
        if state_dict.get("explode"):
            raise RuntimeError("hook failed")
        self.a = np.array(state_dict["a"], np.float32)
        self.step = int(state_dict["step"])
        return ["m1", "Custom0.m2"], ["u1"]


class WithCounter(bb.StateNode):
    def __init__(self, seed: int = 0) -> None:
        self.name = "Top0"
        self.first = Dense(2, 2, "Dense0", seed)
        self.counter = Counter()
        self.last = Dense(2, 2, "Dense1", seed + 1)


def values(model: bb.StateNode) -> dict[str, np.ndarray]:
    return {k: np.array(v, copy=True) for k, v in model.vars().items()}


def assert_same(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]), err_msg=k)
        assert np.asarray(a[k]).dtype == np.asarray(b[k]).dtype, k


def randomize(model: bb.StateNode, seed: int = 1) -> None:
    rng = np.random.default_rng(seed)
    for node in model.nodes().values():
        for attr in node._state_attr_names():
            arr = getattr(node, attr)
            if isinstance(arr, np.ndarray):
                arr[...] = rng.integers(0, 2, arr.shape) if arr.dtype == bool else rng.standard_normal(arr.shape) * 5


# ------------------------------------------------------------------ import and API surface


def test_import_does_not_import_brainpy():
    code = "import sys, bpz.brainpy; assert 'brainpy' not in sys.modules, sorted(sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_state_load_result_has_brainpys_fields():
    r = bb.StateLoadResult(["a"], ["b"])
    assert r._fields == ("missing_keys", "unexpected_keys") and r == (["a"], ["b"])


# ------------------------------------------------------------------ fixtures through the bpz API


@pytest.mark.parametrize("version,name,meta", files(lambda n, m: n.endswith(".bp")))
def test_bp_fixture_matches_manifest_and_converts(tmp_path, version, name, meta):
    path = FIXTURES / version / name
    tree = bpz.load_pytree(path)
    check_tree(tree, meta)
    bpz.save_pytree(tmp_path / "c.bpz", tree, verbose=False)
    check_tree(bpz.load_pytree(tmp_path / "c.bpz"), meta)


@pytest.mark.parametrize("version,name,meta", files(lambda n, m: n.endswith("_state_dict.pkl")))
def test_pickled_state_dict_fixture_matches_manifest(version, name, meta):
    check_tree(bb.load_pickle(FIXTURES / version / name), meta)


@pytest.mark.parametrize("version,name,meta", files(lambda n, m: "_states" in n))
def test_states_fixture_matches_manifest(tmp_path, version, name, meta):
    models = manifest(version)["models"]
    model = models["einet" if name.startswith("einet") else "dup"]
    loaded = bb.read_states(FIXTURES / version / name)
    assert sorted(loaded) == sorted(model["vars_absolute"])  # every variable, aliases included
    entries = {e["path"][0]: e for e in meta["entries"]}
    dup = entries.pop("duplicate_keys")
    targets = entries.pop("duplicate_targets")
    lists = ([s.strip() for s in e.get("values") or e["value"].split("+")] for e in (dup, targets))
    aliases = dict(zip(*lists))  # .mat pads names to one length; BrainPy strips them
    for key, entry in entries.items():
        value = loaded[key]
        shape = entry.get("brainpy_view_shape", entry["shape"])
        if name.endswith(".mat"):  # scipy's raw view in the manifest; bpz fixes bool (uint8 there)
            twin = {e["path"][0]: e for e in manifest(version)["files"][name.replace(".mat", ".npz")]["entries"]}
            assert value.dtype.name == twin[key]["dtype"], key
            assert sha256(value) == entry["brainpy_view_sha256"], key
            assert list(value.shape) == shape, key
        else:
            assert value.dtype.name == entry["dtype"] and list(value.shape) == shape, key
            assert sha256(value) == entry["sha256"], key
    for alias, target in aliases.items():
        assert loaded[alias] is loaded[target]
    # and once more through a .bpz states file, aliases kept in its metadata
    holder = dict(loaded)
    bb.save_states(holder, tmp_path / "c.bpz")
    again = bb.read_states(tmp_path / "c.bpz")
    assert_same(again, loaded)
    with bpz.open(tmp_path / "c.bpz") as archive:
        meta_aliases = archive.metadata[bb.STATES_METADATA_KEY]
        assert sorted(archive.keys()) == sorted(k for k in loaded if k not in aliases)
    assert dict(zip(meta_aliases["duplicate_keys"], meta_aliases["duplicate_targets"])) == aliases


@pytest.mark.parametrize("suffix", STATE_FILE_SUFFIXES + ("_compressed.npz",))
def test_legacy_einet_files_load_into_a_plain_model(suffix):
    net = EINet()
    bb.load_states(net, FIXTURES / "brainpy-2.3.8" / f"einet_states{suffix}")
    entries = {e["path"][0]: e for e in manifest("brainpy-2.3.8")["files"]["einet_states.npz"]["entries"]}
    for key, value in net.vars().items():
        entry = entries.get(key)
        if entry is None:  # an alias: same array as the LIF variable
            continue
        assert value.dtype.name == entry["dtype"] and list(value.shape) == entry["shape"], key
        assert sha256(value) == entry["sha256"], key
    assert net.syns[0].output.membrane_var is net.E.V


@pytest.mark.parametrize("suffix", STATE_FILE_SUFFIXES)
def test_legacy_dup_files_load_into_a_plain_model(suffix):
    model = DupHolder()
    bb.load_states(model, FIXTURES / "brainpy-2.3.8" / f"dup_states{suffix}")
    entries = {e["path"][0]: e for e in manifest("brainpy-2.3.8")["files"]["dup_states.npz"]["entries"]}
    for key in ("DupHolder0.b", "DupHolder0.i", "DupHolder0.m", "DupHolder0.s", "DupHolder0.x"):
        value = model.vars()[key]
        assert value.dtype.name == entries[key]["dtype"] and list(value.shape) == entries[key]["shape"], key
        assert sha256(value) == entries[key]["sha256"], key
    assert model.child.alias is model.x  # .mat's bool and 0-d values came back right, too
    assert model.s.shape == () and model.b.dtype == bool


def test_legacy_file_loads_into_a_dict():
    entries = manifest("brainpy-2.3.8")["files"]["dup_states.npz"]["entries"]
    target = {e["path"][0]: np.zeros(e["shape"], e["dtype"]) for e in entries if e["path"][0].startswith("DupHolder0")}
    target["DynamicalSystem0.alias"] = target["DupHolder0.x"]
    bb.load_states(target, FIXTURES / "brainpy-2.3.8" / "dup_states.mat")
    assert_same(target, bb.read_states(FIXTURES / "brainpy-2.3.8" / "dup_states.h5"))


@pytest.mark.parametrize("name", ["einet_state_dict.pkl", "einet_state_dict.bp"])
def test_fixture_state_dict_loads_into_a_plain_model(name):
    path = FIXTURES / "brainpy-2.3.8" / name
    sd = bb.load_pickle(path) if name.endswith(".pkl") else bpz.load_pytree(path)
    net = EINet()
    result = bb.load_state_dict(net, sd, warn=False)
    # the integrators (ExponentialEuler*) are stateless BrainPy nodes the plain model lacks:
    # their empty entries are not reported
    assert any(k.startswith("ExponentialEuler") for k in sd) and result == ([], [])
    for entry in manifest("brainpy-2.3.8")["files"][name]["entries"]:
        if entry["type"] == "numpy.ndarray":
            assert sha256(net.vars()[entry["path"][1]]) == entry["sha256"], entry["path"]


# ------------------------------------------------------------------ state_dict / load_state_dict (plain)


def test_state_dict_is_two_levels_in_node_order_with_aliases_twice():
    net = EINet()
    sd = bb.state_dict(net)
    assert list(sd)[:3] == ["EINet0", "LIF0", "LIF1"]
    assert sd["EINet0"] == {}
    assert list(sd["LIF0"]) == ["LIF0.V", "LIF0.input", "LIF0.spike", "LIF0.t_last_spike"]
    assert sd["COBA2"]["COBA2.membrane_var"] is sd["LIF0"]["LIF0.V"]
    assert net.state_dict().keys() == sd.keys()


def test_round_trip_through_bpz_into_a_fresh_model(tmp_path):
    net = Net(seed=0)
    randomize(net)
    bpz.save_pytree(tmp_path / "c.bpz", {"net": bb.state_dict(net), "epoch_i": 3, "train_acc": 0.875}, verbose=False)
    fresh = Net(seed=5)
    loaded = bpz.load_pytree(tmp_path / "c.bpz")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert bb.load_state_dict(fresh, loaded["net"]) == ([], [])
    assert loaded["epoch_i"] == 3 and loaded["train_acc"] == 0.875
    assert_same(values(fresh), values(net))


def test_v1_flat_dict():
    net, fresh = Net(0), Net(7)
    randomize(net)
    flat = net.vars()
    assert bb.load_state_dict(fresh, flat, compatible="v1") == ([], [])
    assert_same(values(fresh), values(net))


def test_v1_dedups_aliases_like_vars_unique():
    net = EINet()
    flat = {k: v for k, v in net.vars().items() if not k.startswith("COBA")}
    assert bb.load_state_dict(EINet(), flat, compatible="v1", warn=False) == ([], [])


def test_mode_mismatches_report_like_brainpy_but_sorted():
    net = Net()
    nested, flat = bb.state_dict(net), net.vars()
    r1 = bb.load_state_dict(Net(), nested, compatible="v1", warn=False)
    assert r1.unexpected_keys == sorted(nested) and r1.missing_keys == sorted(flat)
    r2 = bb.load_state_dict(Net(), flat, compatible="v2", warn=False)
    assert r2.missing_keys == sorted(flat)  # no doubled prefixes ('Dense0.W', not 'Dense0.Dense0.W')
    assert r2.unexpected_keys == sorted(flat)  # top-level entries that match no node


def test_unknown_mode():
    with pytest.raises(ValueError, match="^Unknown compatible version: v3$"):
        bb.load_state_dict(Net(), {}, compatible="v3")


def test_missing_and_unexpected_warnings_in_order():
    sd = bb.state_dict(Net())
    del sd["Dense1"]["Dense1.b"]
    sd["Dense0"]["Dense0.extra"] = np.zeros(1)
    sd["Dense0"]["bare"] = np.zeros(1)
    sd["Gone7"] = {"Gone7.x": np.zeros(1)}
    sd["Stateless3"] = {}  # an empty entry for no node holds nothing: not reported
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = bb.load_state_dict(Net(), sd)
    assert result == bb.StateLoadResult(["Dense1.b"], ["Dense0.bare", "Dense0.extra", "Gone7"])
    assert [(w.category, str(w.message)) for w in caught] == [
        (UserWarning, "Unexpected keys in state_dict: ['Dense0.bare', 'Dense0.extra', 'Gone7']"),
        (UserWarning, "Missing keys in state_dict: ['Dense1.b']"),
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert bb.load_state_dict(Net(), sd, warn=False) == result


def test_missing_node_entry_means_all_its_keys_missing():
    sd = bb.state_dict(Net())
    del sd["Lif0"]
    r = bb.load_state_dict(Net(), sd, warn=False)
    assert r.missing_keys == ["Lif0.V", "Lif0.input", "Lif0.spike", "Lif0.t_last_spike"] and r.unexpected_keys == []


def test_failed_load_is_atomic_and_names_every_mismatch():
    net = Net(0)
    before = values(net)
    sd = bb.state_dict(Net(3))
    sd["Dense1"]["Dense1.W"] = np.zeros((2, 2), np.float32)
    sd["Lif0"]["Lif0.spike"] = np.zeros(2, np.int8)
    sd["Dense0"]["Dense0.b"] = {"oops": 1}
    with pytest.raises(bb.StateMismatchError) as info:
        bb.load_state_dict(net, sd)
    message = str(info.value)
    assert "3 values" in message and "nothing was loaded" in message
    assert "Dense1.W: expected shape (3, 2) float32, got shape (2, 2) float32" in message
    assert "Lif0.spike: expected shape (2,) bool, got shape (2,) int8" in message
    assert "Dense0.b: expected shape (3,) float32, got a dict" in message
    assert isinstance(info.value, ValueError)
    assert_same(values(net), before)


def test_non_dict_node_entry_is_reported_before_anything_changes():
    net = Net(0)
    before = values(net)
    sd = bb.state_dict(Net(3))
    sd["Dense1"] = 5
    with pytest.raises(bb.StateMismatchError, match="Dense1: expected a dict of the node's variables, got int"):
        bb.load_state_dict(net, sd)
    assert_same(values(net), before)


def test_python_scalars_cast_within_their_kind():
    class Steps(bb.StateNode):
        __state_attrs__ = ("count", "rate")

        def __init__(self):
            self.name, self.count, self.rate = "Steps0", np.array(0, np.int32), 0.5

    node = Steps()
    assert bb.load_state_dict(node, {"Steps0": {"Steps0.count": 7, "Steps0.rate": 2}}) == ([], [])
    assert node.count.dtype == np.int32 and int(node.count) == 7 and node.rate == 2.0 and type(node.rate) is float
    with pytest.raises(bb.StateMismatchError, match="Steps0.count"):
        bb.load_state_dict(node, {"Steps0": {"Steps0.count": 1.5, "Steps0.rate": 1.0}})


def test_custom_hooks_are_called_with_kwargs_and_prefixed_once():
    model, source = WithCounter(0), WithCounter(4)
    source.counter.a[:] = [1, 2, 3]
    source.counter.step = 7
    sd = bb.state_dict(source, tag="x")
    assert source.counter.seen_kwargs == {"tag": "x"}
    assert set(sd["Custom0"]) == {"a", "step"} and sd["Custom0"]["step"] == 7
    result = bb.load_state_dict(model, sd, warn=False, tag="y")
    assert result == (["Custom0.m1", "Custom0.m2"], ["Custom0.u1"])
    assert model.counter.seen_kwargs == {"tag": "y"} and model.counter.step == 7
    assert_same(values(model), values(source))


def test_failing_hook_undoes_everything():
    model = WithCounter(0)
    model.counter.a[:] = 5
    before, step_before = values(model), model.counter.step
    sd = bb.state_dict(WithCounter(9))
    sd["Custom0"]["explode"] = True
    with pytest.raises(RuntimeError, match="hook failed"):
        bb.load_state_dict(model, sd)
    assert_same(values(model), before)  # Dense0 was assigned before the hook ran: undone
    assert model.counter.step == step_before and list(model.counter.a) == [5, 5, 5]


def test_v1_ignores_hooks_like_brainpy():
    model, source = WithCounter(0), WithCounter(4)
    source.counter.a[:] = 2
    source.counter.step = 3
    assert "Custom0.a" in source.vars()
    assert bb.load_state_dict(model, source.vars(), compatible="v1") == ([], [])
    assert list(model.counter.a) == [2, 2, 2] and model.counter.step == 0 and model.counter.seen_kwargs == {}


def test_v1_routes_keys_to_objects_without_variables():
    class Plain:
        name = "Plain0"

        def __init__(self):
            self.w = np.zeros(2)

        def __save_state__(self, **kw):
            return {"Plain0.w": self.w}

        def __load_state__(self, sd, **kw):
            self.w = np.asarray(sd["Plain0.w"])

    class Holder(bb.StateNode):
        def __init__(self):
            self.name, self.p, self.d = "Holder0", Plain(), Dense(1, 1, "Dense0")

    h = Holder()
    flat = {"Plain0.w": np.ones(2), "Dense0.W": np.ones((1, 1), np.float32), "Dense0.b": np.ones(1, np.float32), "x": 1}
    assert bb.load_state_dict(h, flat, compatible="v1", warn=False) == ([], ["x"])
    assert list(h.p.w) == [1, 1] and h.d.W[0, 0] == 1


def test_duck_typed_object_without_the_mixin():
    class Plain:
        name = "Plain0"

        def __init__(self):
            self.w = np.zeros(2)

        def __save_state__(self, **kw):
            return {"Plain0.w": self.w}

        def __load_state__(self, sd, **kw):
            self.w = np.asarray(sd["Plain0.w"])

    p = Plain()
    sd = {"Plain0": {"Plain0.w": np.ones(2)}}
    assert bb.load_state_dict(p, sd) == ([], []) and list(p.w) == [1, 1]
    assert bb.state_dict(p) == {"Plain0": {"Plain0.w": p.w}}
    with pytest.raises(TypeError, match="has no __save_state__"):
        bb.state_dict(object())


def test_duplicate_node_names_are_refused():
    class Twins(bb.StateNode):
        def __init__(self):
            self.name, self.a, self.b = "Twins0", Dense(1, 1, "Same"), Dense(1, 1, "Same")

    with pytest.raises(ValueError, match="two different nodes are named 'Same'"):
        bb.state_dict(Twins())


def test_default_name_is_the_class_name():
    class Solo(bb.StateNode):
        def __init__(self):
            self.v = np.zeros(1)

    assert bb.state_dict(Solo()) == {"Solo": {"Solo.v": np.zeros(1)}}


# ------------------------------------------------------------------ save_states / load_states (plain)


@pytest.mark.parametrize("suffix", ALL_SUFFIXES)
def test_save_and_load_states_round_trip(tmp_path, suffix):
    net = EINet()
    randomize(net)
    path = tmp_path / f"s{suffix}"
    assert bb.save_states(net, path) is None
    flat, aliases = (states_files.read_states(path) if suffix != ".bpz" else bb.states_files._read_bpz_states(str(path)))
    assert aliases == {f"COBA{i + 2}.{v}": f"{post}.{t}"
                       for i, post in enumerate(["LIF0", "LIF1", "LIF0", "LIF1"])
                       for v, t in (("membrane_var", "V"), ("target_var", "input"))}
    fresh = EINet()
    bb.load_states(fresh, path)
    assert_same(values(fresh), values(net))
    assert fresh.syns[1].output.membrane_var is fresh.I.V


def test_mat_bool_and_0d_reload(tmp_path):
    model = DupHolder()
    model.s[...] = 3.5
    model.b[:] = [True, False]
    bb.save_states(model, tmp_path / "d.mat")
    fresh = DupHolder()
    bb.load_states(fresh, tmp_path / "d.mat")
    assert fresh.s.shape == () and float(fresh.s) == 3.5 and fresh.b.dtype == bool and list(fresh.b) == [True, False]


def test_compressed_setting(tmp_path):
    net = EINet()
    bb.save_states(net, tmp_path / "c.npz", compressed=True)
    bb.save_states(net, tmp_path / "c.bpz", compressed=True)
    with bpz.open(tmp_path / "c.bpz") as archive:
        assert {i.codec for i in archive.infos()} == {"zstd"}
    with pytest.raises(TypeError):
        bb.save_states(net, tmp_path / "c.h5", bogus=1)


def test_explicit_variables_and_their_check(tmp_path):
    net = Net()
    bb.save_states(net, tmp_path / "w.npz", variables={"Dense0.W": net.layers[0].W})
    assert list(bb.read_states(tmp_path / "w.npz")) == ["Dense0.W"]
    with pytest.raises(ValueError, match=r"^\"variables\" must be a dict, while we got <class 'list'>$"):
        bb.save_states(net, tmp_path / "w.npz", variables=[1])


def test_unknown_suffix_and_missing_file(tmp_path):
    with pytest.raises(bb.UnknownFormatError, match=r"Unknown file format: .*x\.txt\. We only supports"):
        bb.save_states(Net(), tmp_path / "x.txt")
    with pytest.raises(FileNotFoundError, match="^Cannot find the file path: .*nope.npz$"):
        bb.load_states(Net(), tmp_path / "nope.npz")
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(bb.UnknownFormatError):
        bb.load_states(Net(), tmp_path / "x.txt")


def test_missing_variables_are_logged_and_warned(tmp_path, caplog):
    net = Net()
    bb.save_states(net, tmp_path / "p.npz", variables={"Dense0.W": net.layers[0].W})
    fresh = Net(3)
    with caplog.at_level(logging.WARNING, logger="bpz.brainpy"), pytest.warns(UserWarning) as caught:
        bb.load_states(fresh, tmp_path / "p.npz")
    text = (f"There are variable states missed in {tmp_path / 'p.npz'}. The missed variables are: "
            "['Dense0.b', 'Dense1.W', 'Dense1.b', 'Lif0.V', 'Lif0.input', 'Lif0.spike', 'Lif0.t_last_spike'].")
    assert [str(w.message) for w in caught] == [text]
    assert [(r.name, r.levelno, r.getMessage()) for r in caplog.records] == [("bpz.brainpy", logging.WARNING, text)]
    np.testing.assert_array_equal(fresh.layers[0].W, net.layers[0].W)
    other = Net(4)
    before = values(other)
    with pytest.raises(bb.StateMismatchError, match="missed"):
        bb.load_states(other, tmp_path / "p.npz", check_missing=True)
    assert_same(values(other), before)


def test_unknown_key_and_alias_mismatch(tmp_path):
    net = EINet()
    bb.save_states(net, tmp_path / "e.h5")
    small = Net()
    with pytest.raises(KeyError) as info:
        bb.load_states(small, tmp_path / "e.h5")
    first = next(iter(states_files.read_states(tmp_path / "e.h5")[0]))  # the first stored key, in file order
    assert info.value.args[0].startswith(
        f'"{first}" is stored in {tmp_path / "e.h5"}. But we does not find it is defined as variable in Net0. (')
    broken = EINet()
    broken.syns[0].output.membrane_var = np.zeros(32, np.float32)  # no longer the same array as LIF0.V
    before = values(broken)
    with pytest.raises(ValueError, match=r"^COBA2.membrane_var and LIF0.V is the same data in .*e.h5. But we found they are different in EINet0.$"):
        bb.load_states(broken, tmp_path / "e.h5")
    assert_same(values(broken), before)


def test_load_states_is_atomic_on_shape_mismatch(tmp_path):
    bb.save_states({"a": np.ones(3, np.float32), "b": np.ones(2, np.float32)}, tmp_path / "t.pkl")
    target = {"a": np.zeros(3, np.float32), "b": np.zeros(4, np.float32)}
    with pytest.raises(bb.StateMismatchError, match=r"b: expected shape \(4,\) float32, got shape \(2,\) float32"):
        bb.load_states(target, tmp_path / "t.pkl")
    assert not target["a"].any()


def test_verbose_prints_each_key(tmp_path, capsys):
    bb.save_states({"a": np.ones(1), "b": np.ones(1)}, tmp_path / "v.npz")
    bb.load_states({"a": np.zeros(1), "b": np.zeros(1)}, tmp_path / "v.npz", verbose=True)
    assert capsys.readouterr().out == "Loading a ...\nLoading b ...\n"


def test_pickle_suffix_loads_through_the_restricted_unpickler(tmp_path):
    import pickle

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    with open(tmp_path / "evil.pickle", "wb") as f:
        pickle.dump({"a": Evil()}, f)
    with pytest.raises(bpz.FormatError):
        bb.load_states({"a": np.zeros(1)}, tmp_path / "evil.pickle")


def test_a_non_states_bpz_is_refused(tmp_path):
    bpz.save_pytree(tmp_path / "n.bpz", {"net": {"a": np.zeros(1)}}, verbose=False)
    with pytest.raises(bpz.FormatError, match="not a states archive"):
        bb.read_states(tmp_path / "n.bpz")


# ------------------------------------------------------------------ install() against a stand-in module


@pytest.fixture
def fake_brainpy(monkeypatch):
    def original_save(*a, **k):
        return "brainpy"

    package = types.ModuleType("brainpy")
    package.__path__ = []  # a package, so "import brainpy.checkpoints" resolves from sys.modules
    checkpoints = types.ModuleType("brainpy.checkpoints")
    checkpoints.save_pytree = original_save
    checkpoints.load_pytree = original_save
    checkpoints.AsyncManager = object
    package.checkpoints = checkpoints
    monkeypatch.setitem(sys.modules, "brainpy", package)
    monkeypatch.setitem(sys.modules, "brainpy.checkpoints", checkpoints)
    yield checkpoints
    bb.uninstall()


def test_install_is_idempotent_and_reversible(fake_brainpy, tmp_path, monkeypatch):
    monkeypatch.setattr(bb.dropin, "_notice_given", False)  # the .bp notice is once per process
    original = fake_brainpy.save_pytree
    bb.install()
    bb.install()
    assert bb.is_installed() and fake_brainpy.AsyncManager is bpz.AsyncManager
    with pytest.warns(UserWarning, match="written as a bpz archive"):  # the one-time .bp notice
        fake_brainpy.save_pytree(tmp_path / "i.bp", {"w": np.arange(3)}, verbose=False)
    assert bpz.read.is_bpz_file(tmp_path / "i.bp")
    np.testing.assert_array_equal(fake_brainpy.load_pytree(tmp_path / "i.bp")["w"], np.arange(3))
    old = fake_brainpy.load_pytree(FIXTURES / "brainpy-2.9.0" / "chunked.bp")
    assert old["big"].shape == (4, 10)
    bb.uninstall()
    bb.uninstall()
    assert fake_brainpy.save_pytree is original and fake_brainpy.AsyncManager is object and not bb.is_installed()


def test_installed_context_manager_restores_the_previous_state(fake_brainpy):
    original = fake_brainpy.load_pytree
    with bb.installed():
        assert fake_brainpy.load_pytree is not original
        with bb.installed():
            pass
        assert bb.is_installed()  # the inner block does not undo the outer one
    assert fake_brainpy.load_pytree is original
    bb.install()
    with bb.installed():
        pass
    assert bb.is_installed()
