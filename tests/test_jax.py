"""JAX arrays in and out, typed PRNG keys, restoring into a target."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bpz
import bpz.jax


# Typed keys need jax.random.key_impl (jax >= 0.4.18) to save; older jax saves plain arrays only.
HAS_TYPED_KEYS = hasattr(jax.random, "key_impl") and hasattr(jax.random, "wrap_key_data")


@pytest.mark.skipif(not HAS_TYPED_KEYS, reason=f"typed PRNG keys need jax >= 0.4.18, this is {jax.__version__}")
def test_jax_arrays_and_keys_round_trip(tmp):
    path = os.path.join(tmp, "j.bpz")
    key = jax.random.key(42)
    tree = {"w": jnp.arange(6.0).reshape(2, 3), "bf": jnp.ones(3, jnp.bfloat16), "key": key, "raw_key": jax.random.PRNGKey(1)}
    bpz.save_pytree(path, tree, verbose=False)
    out = bpz.load_pytree(path)
    # jax leaves load as NumPy arrays, as BrainPy's do; typed keys stay jax key arrays
    assert type(out["w"]) is np.ndarray and out["w"].dtype == np.float32
    np.testing.assert_array_equal(out["w"], tree["w"])
    assert out["bf"].dtype == jnp.bfloat16
    assert jax.dtypes.issubdtype(out["key"].dtype, jax.dtypes.prng_key)
    np.testing.assert_array_equal(jax.random.key_data(out["key"]), jax.random.key_data(key))
    np.testing.assert_array_equal(jax.random.uniform(out["key"], (3,)), jax.random.uniform(key, (3,)))
    np.testing.assert_array_equal(out["raw_key"], tree["raw_key"])


def test_bpz_jax_load(tmp):
    path = os.path.join(tmp, "n.bpz")
    bpz.save_pytree(path, {"a": np.arange(4), "n": 3}, verbose=False)
    out = bpz.jax.load(path)
    assert isinstance(out["a"], jax.Array) and out["n"] == 3
    t = bpz.jax.load_tensor(path, "a", device=jax.devices("cpu")[0])
    np.testing.assert_array_equal(t, [0, 1, 2, 3])


class State:
    """Stands in for a brainstate State / BrainPy Variable: a mutable .value."""

    def __init__(self, value):
        self.value = value


def test_restore_into_target_checks_everything_before_assigning(tmp):
    path = os.path.join(tmp, "t.bpz")
    bpz.save_pytree(path, {"a": np.ones(3, np.float32), "b": (np.zeros(2, np.float32), 5)}, verbose=False)
    a, b = State(jnp.zeros(3, jnp.float32)), State(jnp.zeros(2, jnp.float32))
    restored = bpz.load_pytree(path, target={"a": a, "b": (b, 0)})
    assert restored["a"] is a and isinstance(a.value, np.ndarray) and a.value.dtype == np.float32  # the loaded array
    np.testing.assert_array_equal(a.value, [1, 1, 1])
    assert restored["b"][1] == 5 and isinstance(restored["b"], tuple)

    good, bad = State(jnp.zeros(3, jnp.float32)), State(jnp.zeros(4, jnp.float32))
    with pytest.raises(ValueError, match=r"Array shape mismatch: expected \(4,\), got \(2,\) at target\['b'\]\[0\]"):
        bpz.load_pytree(path, target={"a": good, "b": (bad, 0)})
    np.testing.assert_array_equal(good.value, [0, 0, 0])  # nothing assigned
    with pytest.raises(ValueError, match=r"Array shape mismatch: expected \(\), got \(3,\) at target\['a'\]"):
        bpz.load_pytree(path, target={"a": 0, "b": (np.zeros(2, np.float32), 0)})
    # the dtype is not enforced (braintools' rule): the saved float32 comes back
    out = bpz.load_pytree(path, target={"a": np.zeros(3, np.int32), "b": (np.zeros(2, np.float32), 0)})
    assert out["a"].dtype == np.float32
    with pytest.raises(ValueError, match=r"target dict contains keys \['zz'\]"):
        bpz.load_pytree(path, target={"a": 0, "b": 0, "zz": 1})
    with pytest.warns(UserWarning, match=r"not loaded: target\['b'\]"):  # ignored, as braintools does
        assert set(bpz.load_pytree(path, target={"a": np.zeros(3, np.float32)})) == {"a"}
