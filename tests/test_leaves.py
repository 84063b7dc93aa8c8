"""Leaves as BrainPy 2.9 / braintools 0.4 users have them (issue 12): brainunit Quantities,
the dtype rule of loads into a target, typed PRNG keys, brainstate FlattedDicts, the types
loads return, older jax, and file keys the target lacks.

Runs on every supported environment: BrainPy / brainstate / brainunit / braintools parts skip
where those are absent (the 3.11 venv has BrainPy 2.8.2, brainstate 0.5, brainunit 0.5,
braintools 0.3; the 3.12 venv BrainPy 2.9.0, brainstate 0.6, brainunit 0.6, braintools 0.4).
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings

import numpy as np
import pytest

jax = pytest.importorskip("jax")
jnp = jax.numpy

import bpz  # noqa: E402
import bpz.jax  # noqa: E402
import bpz.pytree  # noqa: E402
from bpz._legacy.bp_msgpack import write_bp  # noqa: E402

HAS_KEY_API = all(hasattr(jax.random, n) for n in ("key", "key_impl", "wrap_key_data"))
needs_keys = pytest.mark.skipif(not HAS_KEY_API, reason=f"typed PRNG keys need jax >= 0.4.18, this is {jax.__version__}")


def _units():
    return pytest.importorskip("brainunit")


def _brainstate():
    return pytest.importorskip("brainstate")


def _save(tmp, tree, name="t.bpz"):
    path = os.path.join(tmp, name)
    bpz.save_pytree(path, tree, verbose=False)
    return path


def _load_quiet(path, target):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning expected
        return bpz.load_pytree(path, target=target)


# ------------------------------------------------------------------ 1. Quantities


def test_quantity_leaves_round_trip_with_their_units(tmp):
    u = _units()
    tree = {
        "V": jnp.arange(3.0) * u.mV,
        "tau": 10.0 * u.ms,  # a Python-float mantissa
        "n": 3 * u.ms,  # a Python-int mantissa
        "R": np.arange(4, dtype=np.float64).reshape(2, 2) * u.Mohm,
        "g": np.float32(2.5) * u.nS,
        "plain": np.ones(2),
    }
    out = bpz.load_pytree(_save(tmp, tree))
    for k in ("V", "tau", "n", "R", "g"):
        assert isinstance(out[k], u.Quantity), k
        assert out[k].unit == tree[k].unit and str(out[k].unit) == str(tree[k].unit), k
        np.testing.assert_array_equal(np.asarray(out[k].mantissa), np.asarray(tree[k].mantissa))
    assert str(out["tau"].unit) == "ms" and str(out["R"].unit) == "Mohm"  # display names kept
    assert type(out["tau"].mantissa) is float and type(out["n"].mantissa) is int  # as braintools gives them
    assert out["R"].mantissa.dtype == np.float64 and out["R"].shape == (2, 2)
    assert isinstance(out["plain"], np.ndarray)


def test_quantity_hint_is_a_tensor_node_that_other_readers_can_ignore(tmp):
    u = _units()
    path = _save(tmp, {"V": np.array([1.0, 2.0]) * u.mV})
    with bpz.open(path) as a:
        a._parse()
        node = a._tree["dict"][0][1]
        np.testing.assert_array_equal(a["V"], [1.0, 2.0])  # the mantissa is the tensor
    assert node["tensor"] == "V" and node["py"] == "quantity"
    assert node["unit"]["dim"] == [2, 1, -3, -1, 0, 0, 0] and node["unit"]["scale"] == -3
    assert node["unit"]["dispname"] == "mV"


def test_quantities_in_states_are_restored_in_place(tmp):
    u, bs = _units(), _brainstate()
    model = {"V": bs.HiddenState(jnp.full(3, -65.0) * u.mV), "w": bs.ParamState(jnp.ones(2))}
    path = _save(tmp, model)
    fresh = {"V": bs.HiddenState(jnp.zeros(3) * u.mV), "w": bs.ParamState(jnp.zeros(2))}
    out = _load_quiet(path, fresh)
    assert out["V"] is fresh["V"] and isinstance(fresh["V"].value, u.Quantity)
    assert fresh["V"].value.unit == u.mV
    np.testing.assert_array_equal(np.asarray(fresh["V"].value.mantissa), [-65.0] * 3)
    np.testing.assert_array_equal(np.asarray(fresh["w"].value), [1.0, 1.0])


def test_quantity_target_checks_the_unit(tmp):
    u = _units()
    path = _save(tmp, {"V": jnp.arange(3.0) * u.mV, "x": np.ones(3)})
    out = _load_quiet(path, {"V": jnp.zeros(3) * u.mV, "x": np.zeros(3)})
    assert out["V"].unit is u.mV or out["V"].unit == u.mV
    with pytest.raises(ValueError, match=r"Unit mismatch: expected ms, got mV at target\['V'\]"):
        bpz.load_pytree(path, target={"V": jnp.zeros(3) * u.ms, "x": np.zeros(3)})
    with pytest.raises(ValueError, match=r"Unit mismatch: expected a value without a unit, got a Quantity in mV at target\['V'\]"):
        bpz.load_pytree(path, target={"V": np.zeros(3), "x": np.zeros(3)})
    with pytest.raises(ValueError, match=r"Unit mismatch: expected mV, got an array .* without a unit at target\['x'\]"):
        bpz.load_pytree(path, target={"V": jnp.zeros(3) * u.mV, "x": np.zeros(3) * u.mV})
    with pytest.raises(ValueError, match=r"Array shape mismatch: expected \(4,\), got \(3,\) at target\['V'\]"):
        bpz.load_pytree(path, target={"V": jnp.zeros(4) * u.mV, "x": np.zeros(3)})


def test_quantity_without_brainunit_at_load_gives_the_mantissa_and_a_warning(tmp):
    u = _units()
    path = _save(tmp, {"V": np.array([1.0, 2.0]) * u.mV, "tau": 5.0 * u.ms})
    code = (
        "import sys, warnings; sys.modules['brainunit'] = sys.modules['saiunit'] = None\n"
        "import bpz\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        f"    out = bpz.load_pytree({path!r})\n"
        "print(type(out['V']).__name__, out['V'].tolist(), repr(out['tau']))\n"
        "print(sorted(str(x.message) for x in w if x.category is UserWarning))\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert res.returncode == 0, res.stderr
    first, second = res.stdout.splitlines()
    assert first == "ndarray [1.0, 2.0] 5.0"
    assert "Quantities in mV, but brainunit is not installed" in second and "Quantities in ms" in second


def _braintools_quantity_dict(q):
    """A Quantity as braintools' msgpack_save stores it (BrainPy 2.9 .bp files)."""
    return {"mantissa": np.asarray(q.mantissa), "scale": int(q.unit.scale), "base": float(q.unit.base),
            "dim": np.asarray(q.unit.dim._dims, dtype=np.int64), "factor": float(q.unit.factor)}


def test_brainpy29_bp_quantity_dicts(tmp):
    u = _units()
    path = os.path.join(tmp, "q.bp")
    write_bp(path, {"V": _braintools_quantity_dict(np.array([1.0, 2.0]) * u.mV), "w": np.ones(2)})
    raw = bpz.load_pytree(path)
    assert set(raw["V"]) == {"mantissa", "scale", "base", "dim", "factor"}  # no target: as braintools
    out = _load_quiet(path, {"V": np.zeros(2) * u.mV, "w": np.zeros(2)})
    assert isinstance(out["V"], u.Quantity) and out["V"].unit == u.mV and str(out["V"].unit) == "mV"
    np.testing.assert_array_equal(out["V"].mantissa, [1.0, 2.0])
    with pytest.raises(ValueError, match=r"Unit mismatch: expected ms, got .* at target\['V'\]"):
        bpz.load_pytree(path, target={"V": np.zeros(2) * u.ms, "w": np.zeros(2)})
    bad = os.path.join(tmp, "bad.bp")
    write_bp(bad, {"V": {**_braintools_quantity_dict(np.ones(2) * u.mV), "dim": np.zeros(3, np.int64)}})
    with pytest.raises(ValueError, match=r"invalid unit .* at target\['V'\]: a unit needs 7 SI exponents"):
        bpz.load_pytree(bad, target={"V": np.zeros(2) * u.mV})


def test_braintools_written_quantity_file(tmp):
    u = _units()
    file = pytest.importorskip("braintools.file")
    path = os.path.join(tmp, "bt.msg")
    file.msgpack_save(path, {"V": np.array([1.0, 2.0]) * u.mV}, verbose=False)
    out = _load_quiet(path, {"V": np.zeros(2) * u.mV})
    assert isinstance(out["V"], u.Quantity) and out["V"].unit == u.mV
    np.testing.assert_array_equal(out["V"].mantissa, [1.0, 2.0])


# ------------------------------------------------------------------ 2. the dtype rule


def test_plain_targets_check_shape_not_dtype_and_keep_the_saved_dtype(tmp):
    path = _save(tmp, {"f64": np.arange(3.0), "i64": np.arange(2, dtype=np.int64), "py": 1.5, "j": jnp.arange(4, dtype=jnp.int32)})
    target = {"f64": np.zeros(3, np.float32), "i64": jnp.zeros(2), "py": np.float32(0), "j": jnp.zeros(4)}
    out = _load_quiet(path, target)
    assert out["f64"].dtype == np.float64 and out["i64"].dtype == np.int64 and out["j"].dtype == np.int32
    assert type(out["py"]) is float and out["py"] == 1.5
    # plain arrays are not written: the result holds the loaded arrays
    assert out["f64"] is not target["f64"] and not target["f64"].any()
    assert isinstance(out["i64"], np.ndarray)  # a jax target doesn't make it jax (as braintools)
    with pytest.raises(ValueError, match=r"Array shape mismatch: expected \(2,\), got \(3,\) at target\['f64'\]"):
        bpz.load_pytree(path, target={**target, "f64": np.zeros(2)})
    with pytest.raises(ValueError, match=r"Array shape mismatch: expected \(\), got \(4,\) at target\['j'\]"):
        bpz.load_pytree(path, target={**target, "py": 0.0, "j": 0})
    with pytest.raises(ValueError, match=r"expected an array at target\['f64'\], got a dict"):
        bpz.load_pytree(_save(tmp, {**target, "f64": {"x": 1}}, "d.bpz"), target=target)


def test_state_targets_take_the_saved_dtype_in_place(tmp):
    bs = _brainstate()
    path = _save(tmp, {"s": np.arange(3.0), "i": np.arange(3, dtype=np.int64)})
    s, i = bs.State(jnp.zeros(3, jnp.float32)), bs.State(jnp.zeros(3, jnp.float32))
    out = _load_quiet(path, {"s": s, "i": i})
    assert out["s"] is s and s.value.dtype == np.float64 and i.value.dtype == np.int64
    np.testing.assert_array_equal(s.value, [0.0, 1.0, 2.0])


def test_brainpy_variables_follow_the_variable_setter(tmp):
    bp = pytest.importorskip("brainpy")
    bm = bp.math
    path = _save(tmp, {"f64": np.arange(3.0), "i64": np.arange(3, dtype=np.int64)})
    v = bm.Variable(jnp.zeros(3, jnp.float32))
    out = _load_quiet(path, {"f64": v, "i64": np.zeros(3)})
    assert out["f64"] is v and v.value.dtype == jnp.float32 and isinstance(v.value, jax.Array)
    np.testing.assert_array_equal(v.value, [0.0, 1.0, 2.0])
    w, untouched = bm.Variable(jnp.zeros(3, jnp.float32)), bm.Variable(jnp.zeros(3, jnp.float32))
    with pytest.raises(ValueError, match=r"Array dtype mismatch: expected float32, got int64 .*target\['i64'\]"):
        bpz.load_pytree(path, target={"f64": untouched, "i64": w})
    assert not np.asarray(untouched.value).any()  # nothing assigned


def test_accept_loaded_is_the_shared_rule():
    accept = bpz.pytree.accept_loaded
    loaded = np.arange(3.0)
    assert accept(np.zeros(3, np.int8), loaded, "net.w") is loaded
    with pytest.raises(ValueError, match=r"Array shape mismatch: expected \(2,\), got \(3,\) at net.w"):
        accept(np.zeros(2), loaded, "net.w")
    bp = pytest.importorskip("brainpy")
    var = bp.math.Variable(jnp.zeros(3, jnp.float32))
    assert accept(var, loaded, "net.w").dtype == jnp.float32
    with pytest.raises(ValueError, match="Array dtype mismatch: expected float32, got int64"):
        accept(var, np.arange(3), "net.w")


# ------------------------------------------------------------------ 3. typed PRNG keys


@needs_keys
def test_typed_key_targets(tmp):
    key = jax.random.split(jax.random.key(7), 3)
    path = _save(tmp, {"k": key, "one": jax.random.key(1)})
    out = _load_quiet(path, {"k": jax.random.split(jax.random.key(0), 3), "one": jax.random.key(0)})
    assert out["k"].dtype == key.dtype
    np.testing.assert_array_equal(jax.random.key_data(out["k"]), jax.random.key_data(key))
    with pytest.raises(ValueError, match=r"Array shape mismatch: expected \(2,\), got \(3,\) at target\['k'\]"):
        bpz.load_pytree(path, target={"k": jax.random.split(jax.random.key(0), 2), "one": jax.random.key(0)})
    with pytest.raises(ValueError, match=r"PRNG key mismatch: expected key<rbg>, got key<fry> at target\['one'\]"):
        bpz.load_pytree(path, target={"k": key, "one": jax.random.key(0, impl="rbg")})
    with pytest.raises(ValueError, match=r"expected an array at target\['one'\], got a typed PRNG key"):
        bpz.load_pytree(path, target={"k": key, "one": jax.random.PRNGKey(0)})
    with pytest.raises(ValueError, match=r"expected a typed PRNG key array \(key<fry>\) at target\['one'\], got an array"):
        bpz.load_pytree(_save(tmp, {"k": key, "one": np.zeros(2, np.uint32)}, "raw.bpz"), target={"k": key, "one": jax.random.key(0)})


@needs_keys
def test_brainpy29_bp_key_dicts(tmp):
    key = jax.random.key(3)
    path = os.path.join(tmp, "k.bp")
    write_bp(path, {"key": {"__prng_key_impl__": "threefry2x32", "key_data": np.asarray(jax.random.key_data(key))}})
    assert bpz.load_pytree(path)["key"]["__prng_key_impl__"] == "threefry2x32"  # no target: as braintools
    out = _load_quiet(path, {"key": jax.random.key(0)})
    np.testing.assert_array_equal(jax.random.key_data(out["key"]), jax.random.key_data(key))
    np.testing.assert_array_equal(jax.random.uniform(out["key"], (3,)), jax.random.uniform(key, (3,)))
    bad = os.path.join(tmp, "bad.bp")
    write_bp(bad, {"key": {"__prng_key_impl__": "no_such_impl", "key_data": np.zeros(2, np.uint32)}})
    with pytest.raises(ValueError, match=r"invalid PRNG key data at target\['key'\]"):
        bpz.load_pytree(bad, target={"key": jax.random.key(0)})


@needs_keys
def test_random_state_resumes_its_stream(tmp):
    bs = _brainstate()
    rng = bs.random.RandomState(11)
    path = _save(tmp, {"rng": rng, "key": jax.random.key(0)})
    after_save = np.asarray(rng.rand(4))
    rng.rand(10)  # move on
    out = _load_quiet(path, {"rng": rng, "key": jax.random.key(5)})
    assert out["rng"] is rng
    np.testing.assert_array_equal(np.asarray(rng.rand(4)), after_save)
    np.testing.assert_array_equal(jax.random.key_data(out["key"]), jax.random.key_data(jax.random.key(0)))


# ------------------------------------------------------------------ 4. FlattedDict


def test_flatted_dicts_are_saved_nested_and_match_nested(tmp):
    bs = _brainstate()
    states = bs.util.FlattedDict({("a",): bs.State(jnp.ones(2)), ("lin", "weight"): bs.ParamState(jnp.arange(3.0))})
    path = _save(tmp, states)
    out = bpz.load_pytree(path)
    assert set(out) == {"a", "lin"} and set(out["lin"]) == {"weight"}
    np.testing.assert_array_equal(out["lin"]["weight"], [0.0, 1.0, 2.0])
    fresh = bs.util.FlattedDict({("a",): bs.State(jnp.zeros(2)), ("lin", "weight"): bs.ParamState(jnp.zeros(3))})
    _load_quiet(path, fresh)
    np.testing.assert_array_equal(fresh[("lin", "weight")].value, [0.0, 1.0, 2.0])
    np.testing.assert_array_equal(fresh[("a",)].value, [1.0, 1.0])


def test_flatted_dict_target_reads_files_saved_with_tuple_keys(tmp):
    bs = _brainstate()
    path = _save(tmp, {("a",): np.ones(2), ("b", "c"): np.arange(3)})  # what bpz wrote before nesting them
    fresh = bs.util.FlattedDict({("a",): bs.State(jnp.zeros(2)), ("b", "c"): bs.State(jnp.zeros(3))})
    _load_quiet(path, fresh)
    np.testing.assert_array_equal(fresh[("b", "c")].value, [0, 1, 2])


def test_module_states_round_trip(tmp):
    bs = _brainstate()
    nn = bs.nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 2)
            self.cnt = bs.ShortTermState(jnp.array(0))

    net = Net()
    net.cnt.value = jnp.array(7)
    path = _save(tmp, net.states())
    assert bpz.load_pytree(path)["cnt"] == 7
    other = Net()
    _load_quiet(path, other.states())
    assert int(other.cnt.value) == 7
    np.testing.assert_array_equal(np.asarray(other.lin.weight.value["weight"]), np.asarray(net.lin.weight.value["weight"]))


# ------------------------------------------------------------------ 6. leaf types


def test_jax_leaves_load_as_writable_numpy_and_bpz_jax_load_gives_jax(tmp):
    path = _save(tmp, {"w": jnp.arange(6.0).reshape(2, 3), "bf": jnp.ones(3, jnp.bfloat16)})
    out = bpz.load_pytree(path)
    assert type(out["w"]) is np.ndarray and out["w"].flags.writeable and out["w"].dtype == np.float32
    assert type(out["bf"]) is np.ndarray and out["bf"].dtype.name == "bfloat16"
    j = bpz.jax.load(path)
    assert isinstance(j["w"], jax.Array) and isinstance(j["bf"], jax.Array)


# ------------------------------------------------------------------ 7. older jax


def test_no_prng_key_dtype_api_still_saves_plain_jax_arrays(tmp, monkeypatch):
    """jax 0.4.13 has neither jax.dtypes.prng_key nor key_impl / wrap_key_data."""
    monkeypatch.delattr(jax.dtypes, "prng_key", raising=False)
    monkeypatch.delattr(jax.random, "key_impl", raising=False)
    monkeypatch.delattr(jax.random, "wrap_key_data", raising=False)
    out = bpz.load_pytree(_save(tmp, {"w": jnp.arange(3.0), "k": jax.random.PRNGKey(0)}))
    np.testing.assert_array_equal(out["w"], [0.0, 1.0, 2.0])
    if hasattr(jax.random, "key"):
        with pytest.raises(TypeError, match=r"typed PRNG key at target\['k'\]: saving a typed JAX PRNG key needs jax >= 0.4.18"):
            bpz.save_pytree(os.path.join(tmp, "k.bpz"), {"k": jax.random.key(0)}, verbose=False)


@needs_keys
def test_no_wrap_key_data_is_a_clear_error_on_load(tmp, monkeypatch):
    path = _save(tmp, {"k": jax.random.key(0)})
    monkeypatch.delattr(jax.random, "wrap_key_data")
    with pytest.raises(ImportError, match=r"loading a typed JAX PRNG key needs jax >= 0.4.17"):
        bpz.load_pytree(path)


# ------------------------------------------------------------------ keys the target lacks


def test_file_keys_the_target_lacks_are_ignored_with_one_warning(tmp):
    path = _save(tmp, {"a": np.ones(2), "b": 2, "net": {"w": np.ones(1), "extra": 3}})
    with pytest.warns(UserWarning, match=r"holds 2 value\(s\) the target has no place for, not loaded: "
                                         r"target\['b'\], target\['net'\]\['extra'\]") as record:
        out = bpz.load_pytree(path, target={"a": np.zeros(2), "net": {"w": np.zeros(1)}})
    assert len([w for w in record if issubclass(w.category, UserWarning)]) == 1
    assert set(out) == {"a", "net"} and set(out["net"]) == {"w"}
    with pytest.raises(ValueError, match=r"target dict contains keys \['zz'\]"):
        bpz.load_pytree(path, target={"a": 0, "zz": 1})


@pytest.mark.parametrize(
    "unit, scalar",
    [
        ({"dim": [1, 2], "scale": 0, "base": 10.0, "factor": 1.0}, None),  # not 7 exponents
        ({"dim": "m", "scale": 0, "base": 10.0, "factor": 1.0}, None),
        ({"dim": [0] * 7, "scale": True, "base": 10.0, "factor": 1.0}, None),
        ({"dim": [0] * 7, "base": 10.0, "factor": 1.0}, None),  # no scale
        ([0] * 7, None),  # not an object
        ({"dim": [0] * 7, "scale": 0, "base": 10.0, "factor": 1.0}, "int"),  # an int hint on a nan
        ({"dim": [0] * 7, "scale": 0, "base": 10.0, "factor": 1.0}, "decimal"),
    ],
)
def test_damaged_quantity_hints_are_format_errors(tmp, monkeypatch, unit, scalar):
    u = _units()
    monkeypatch.setattr(bpz.pytree, "_unit_hint", lambda *_: unit)
    path = _save(tmp, {"q": np.float64("nan") * u.mV if scalar else np.ones(2) * u.mV})
    if scalar:
        with bpz.open(path) as a:
            a._parse()
            a._tree["dict"][0][1]["scalar"] = scalar
            with pytest.raises(bpz.errors.FormatError, match=r"the tensor 'q' has an invalid"):
                a._rebuild(lambda node: bpz.read._finish_leaf(np.array(np.nan), node))
        return
    with pytest.raises(bpz.errors.FormatError, match=r"t\.bpz: .*the tensor 'q' has an invalid unit|t\.bpz: .*unit that is not"):
        bpz.load_pytree(path)
