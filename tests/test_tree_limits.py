"""Trees the format can't hold faithfully, or too big or deep to handle: clear errors, never a
silent loss, a RecursionError or a memory blow-up (issue 11, items 6 and 12)."""

import collections
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import bpz
import bpz.pytree
from bpz.errors import LimitExceededError
from bpz.pytree import count_json_values, flatten


def _save_refused(tmp, tree, error, *, match):
    """Saving ``tree`` raises ``error`` and leaves the previous file untouched."""
    path = os.path.join(tmp, "m.bpz")
    bpz.save_pytree(path, {"good": np.arange(3)}, verbose=False)
    before = open(path, "rb").read()
    with pytest.raises(error, match=match) as info:
        bpz.save_pytree(path, tree, verbose=False)
    assert open(path, "rb").read() == before
    return str(info.value)


# --------------------------------------------------------- ndarray subclasses


class _Wrapper:
    def __init__(self, value):
        self.value = value


class _ArrayLike:
    """Converts to a masked array (as some libraries' objects do)."""

    def __init__(self, arr):
        self.arr = arr

    def __array__(self, dtype=None, copy=None):
        return self.arr


MASKED = np.ma.array([1.0, 2.0, 3.0], mask=[False, True, False])


@pytest.mark.parametrize(
    "tree, where",
    [
        ({"m": MASKED}, "target['m']"),
        ({"l": [np.ones(2), MASKED]}, "target['l'][1]"),
        ({"t": collections.namedtuple("P", "x y")(np.ones(1), MASKED)}, "target['t']['y']"),
        ({"v": _Wrapper(MASKED)}, "target['v']"),
        ({"c": np.ma.masked}, "target['c']"),
        ({"a": _ArrayLike(MASKED)}, "target['a']"),
        (MASKED, "target"),
    ],
)
def test_masked_arrays_are_refused_not_saved_without_their_mask(tmp, tree, where):
    msg = _save_refused(tmp, tree, TypeError, match="masked array")
    assert where in msg
    assert "np.ma.filled" in msg and "getmaskarray" in msg  # tells the user what to do


@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")
def test_a_matrix_is_refused(tmp):
    msg = _save_refused(tmp, {"M": np.matrix([[1.0, 2.0], [3.0, 4.0]])}, TypeError, match="numpy.matrix")
    assert "target['M']" in msg and "np.asarray" in msg


class Quantity(np.ndarray):
    """An ndarray with a unit, like astropy's Quantity."""

    def __new__(cls, value, unit):
        obj = np.asarray(value).view(cls)
        obj.unit = unit
        return obj

    def __array_finalize__(self, obj):
        self.unit = getattr(obj, "unit", None)


class Tagged(np.ndarray):
    __slots__ = ("tag",)


class Plain(np.ndarray):
    """A subclass with behaviour but no state of its own: its data is everything."""

    def total(self):
        return self.sum()


def test_subclasses_with_state_are_refused_naming_type_and_attributes(tmp):
    msg = _save_refused(tmp, {"x": [Quantity([1.0, 2.0], "m/s")]}, TypeError, match="carries attributes")
    assert "target['x'][0]" in msg and "Quantity" in msg and "unit" in msg
    tagged = np.zeros(3).view(Tagged)
    tagged.tag = "important"
    msg = _save_refused(tmp, {"y": tagged}, TypeError, match="carries attributes")
    assert "Tagged" in msg and "tag" in msg


def test_stateless_subclasses_and_memmaps_are_saved_as_their_data(tmp):
    mm_path = os.path.join(tmp, "data.npy")
    mm = np.lib.format.open_memmap(mm_path, mode="w+", dtype=np.float32, shape=(4, 3))
    mm[:] = np.arange(12, dtype=np.float32).reshape(4, 3)
    tree = {"mm": mm, "plain": np.arange(5.0).view(Plain), "empty_slots": np.ones(2).view(Tagged)}
    path = os.path.join(tmp, "m.bpz")
    bpz.save_pytree(path, tree, verbose=False)
    out = bpz.load_pytree(path)
    assert type(out["mm"]) is np.ndarray and out["mm"].dtype == np.float32
    np.testing.assert_array_equal(out["mm"], np.arange(12).reshape(4, 3))
    np.testing.assert_array_equal(out["plain"], np.arange(5.0))
    np.testing.assert_array_equal(out["empty_slots"], [1, 1])
    del mm


@pytest.mark.parametrize(
    "arr, advice",
    [
        (np.array(["2020-01-01"], dtype="datetime64[D]"), "np.datetime_data"),
        (np.array([1, 2], dtype="timedelta64[s]"), "astype('int64')"),
        (np.array([None, 1], dtype=object), "Python objects"),
        (np.zeros(2, dtype=[("a", "<i4"), ("b", "<f8")]).view(np.recarray), "x.dtype.names"),
        (np.array(["ab"]), "list of str"),
    ],
)
def test_unsupported_dtypes_say_what_to_do(tmp, arr, advice):
    msg = _save_refused(tmp, {"k": arr}, TypeError, match="is not supported")
    assert "target['k']" in msg and advice in msg


# ------------------------------------------------------------------- depth


def _deep_tuple(depth):
    key = "end"
    for i in range(depth):
        key = (f"k{i}", key)
    return key


@pytest.mark.parametrize("nest", [lambda k: {k: 1}, lambda k: {"a": [{"b": {k: np.ones(1)}}]}])
def test_a_deeply_nested_tuple_key_is_a_value_error_naming_the_path(tmp, nest):
    msg = _save_refused(tmp, nest(_deep_tuple(3000)), ValueError, match="tuple nested too deeply")
    assert msg.startswith("bpz cannot save a dict key at target")


def test_tuple_keys_as_deep_as_the_index_allows_round_trip(tmp):
    path = os.path.join(tmp, "m.bpz")
    for depth in range(1, 80):
        tree = {_deep_tuple(depth): np.float32(depth)}
        try:
            bpz.save_pytree(path, tree, verbose=False)
        except ValueError as e:
            assert "tuple nested too deeply" in str(e)  # never the writer's bare depth error
            break
        assert bpz.load_pytree(path) == tree
    else:
        pytest.fail("no tuple key was too deep")
    assert depth > 30


def test_value_chains_and_self_values_are_refused(tmp):
    chain = np.arange(3)
    for _ in range(3000):
        chain = _Wrapper(chain)
    _save_refused(tmp, {"c": chain}, ValueError, match=r"\.value.*more than")

    class Self:
        @property
        def value(self):
            return self

    _save_refused(tmp, {"s": [Self()]}, ValueError, match=r"target\['s'\]\[0\].*\.value")
    path = os.path.join(tmp, "m.bpz")
    with pytest.raises(ValueError, match=r"target\['good'\].*\.value"):
        bpz.load_pytree(path, target={"good": Self()})


# ------------------------------------------------------------------- size


def test_the_value_count_of_flatten_is_that_of_the_stored_tree(tmp):
    Point = collections.namedtuple("Point", "x y")
    tree = {
        "a": np.ones(2), "s": np.float32(1), "n": None, 1: 2.5, (1, ("x", (True, None))): "v,{[",
        2**60: b"b", 1.5: complex(1, 2), "nt": Point([], {}), "e": Point._make([1, 2])._replace(x=()),
        "l": [[], (), {}, collections.OrderedDict(z=1)], "big": -(2**70), "nan": float("nan"),
    }
    f = bpz.pytree._Flattener(False, bpz.pytree.MAX_TREE_VALUES)
    f.node(tree, (), "", 0)
    path = os.path.join(tmp, "m.bpz")
    bpz.save_pytree(path, tree, verbose=False)
    with bpz.open(path) as a:
        stored = a._native().tree_json()
    assert f.values == count_json_values(stored) == _values(json.loads(stored))


def _values(j):
    """JSON values counted the slow, obvious way."""
    if isinstance(j, dict):
        return 1 + sum(_values(v) for v in j.values())
    if isinstance(j, list):
        return 1 + sum(_values(v) for v in j)
    return 1


def test_count_json_values_ignores_brackets_in_strings_and_whitespace():
    text = ' { "a" : [ 1 , "x,[{" , { } , [ ] , { "b" : null } ] , "c\\",[" : "" } '
    assert count_json_values(text) == _values(json.loads(text)) == 9


def _lists_archive(tmp, n):
    path = os.path.join(tmp, f"lists{n}.bpz")
    bpz.save_pytree(path, [[] for _ in range(n)], verbose=False)
    return path


def test_a_tree_over_the_value_limit_is_refused_on_load_naming_the_file(tmp, monkeypatch):
    path = _lists_archive(tmp, 50_000)  # 100,002 values
    monkeypatch.setattr(bpz.pytree, "MAX_TREE_VALUES", 100_001)
    with pytest.raises(LimitExceededError, match="100,002 JSON values, over the limit of 100,001") as info:
        bpz.load_pytree(path)
    assert path in str(info.value) and "MAX_TREE_VALUES" in str(info.value)
    with pytest.raises(LimitExceededError):
        bpz.open(path).tree()
    monkeypatch.setattr(bpz.pytree, "MAX_TREE_VALUES", 100_002)
    assert bpz.load_pytree(path) == [[]] * 50_000


def test_brackets_and_commas_inside_strings_do_not_count(tmp, monkeypatch):
    tree = {"s": ",[{" * 100_000, "k" * 3: [",", "{"]}
    path = os.path.join(tmp, "m.bpz")
    bpz.save_pytree(path, tree, verbose=False)
    with bpz.open(path) as a:
        stored = a._native().tree_json()
    assert stored.count(",") + stored.count("[") + stored.count("{") > 300_000
    monkeypatch.setattr(bpz.pytree, "MAX_TREE_VALUES", _values(json.loads(stored)))  # exactly at the limit
    assert bpz.load_pytree(path) == tree


def test_metadata_over_the_value_limit_is_refused_on_load(tmp, monkeypatch):
    path = os.path.join(tmp, "m.bpz")
    bpz.save_pytree(path, {"x": np.ones(1)}, verbose=False, metadata=[[] for _ in range(1000)])
    monkeypatch.setattr(bpz.pytree, "MAX_TREE_VALUES", 500)
    with pytest.raises(LimitExceededError, match="the metadata has 1,001 JSON values"):
        bpz.load_pytree(path)


def test_a_tree_over_the_value_limit_is_refused_on_save_before_it_is_walked(tmp, monkeypatch):
    monkeypatch.setattr(bpz.pytree, "MAX_TREE_VALUES", 1000)
    _save_refused(tmp, {"a": [[] for _ in range(499)], "b": [0] * 10}, ValueError, match="too large to save at target")
    with pytest.raises(ValueError, match=r"too large to save at target\['big'\]"):
        flatten({"big": [_Wrapper(None)] * 10**7})  # refused from its length: no 10^7 nodes made
    flatten({"a": [[] for _ in range(497)]})  # 2 + 4 + 2*497 = 1000: at the limit


def test_the_limit_can_be_set_by_the_environment(tmp):
    code = "import bpz.pytree as p; print(p.MAX_TREE_VALUES)"
    env = {**os.environ, "BPZ_MAX_TREE_VALUES": "12345"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "12345"
    env["BPZ_MAX_TREE_VALUES"] = "lots"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "BPZ_MAX_TREE_VALUES='lots' is not a positive integer" in out.stderr


def test_running_out_of_memory_while_loading_a_tree_is_a_limit_error_naming_the_file(tmp):
    path = _lists_archive(tmp, 1_500_000)  # about 500 MB of Python objects to rebuild
    script = textwrap.dedent(
        f"""
        import resource, sys
        import bpz, bpz.pytree
        from bpz.errors import LimitExceededError
        bpz.pytree.MAX_TREE_VALUES = 10**8
        archive = bpz.open({path!r})
        archive._native().tree_json()  # the native side's share, before the limit
        with open("/proc/self/statm") as f:
            used = int(f.read().split()[0]) * resource.getpagesize()
        resource.setrlimit(resource.RLIMIT_AS, (used + (150 << 20), resource.RLIM_INFINITY))
        try:
            bpz.load_pytree({path!r})
        except LimitExceededError as e:
            print("LimitExceededError:", e)
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith(f"LimitExceededError: {path}: the tree"), out.stdout


def test_a_moderately_large_tree_of_numpy_scalars_round_trips(tmp):
    tree = {f"w{i}": np.float32(i) for i in range(100_000)}
    tree["h"] = [float(i) for i in range(100_000)]
    path = os.path.join(tmp, "m.bpz")
    bpz.save_pytree(path, tree, verbose=False)
    out = bpz.load_pytree(path)
    assert out == tree and type(out["w7"]) is np.float32
