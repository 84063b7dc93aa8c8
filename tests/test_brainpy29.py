"""BrainPy 2.9 (Python 3.12+) with bpz: the two saving/loading tutorials' examples and a brainstate
model with unit-carrying state, each through ``bpz.brainpy.install()`` and compared with plain BrainPy.

* the old tutorial (BrainPy 2.1.12–2.4.5): ``net.save_states(path)`` / ``net.load_states(path)``,
  here ``bpz.brainpy.save_states`` / ``load_states`` (2.9 has no such methods);
* the new tutorial: ``bp.checkpoints.save_pytree`` of ``{'net': net.state_dict(), 'optimizer':
  opt.state_dict(), 'epoch_i': ..., 'train_acc': ...}``, ``net.load_state_dict``, custom
  ``__save_state__`` / ``__load_state__`` hooks (the tutorial's ``bp.DynamicSystem`` is
  ``bp.DynamicalSystem``), ``AsyncManager``;
* ``brainpy.state`` neurons (membrane potential in mV) saved as ``model.states()`` and resumed.
"""

from __future__ import annotations


import numpy as np
import pytest

bp = pytest.importorskip("brainpy")
if tuple(int(p) for p in bp.__version__.split(".")[:2]) < (2, 9):
    pytest.skip(f"BrainPy 2.9 tests; this is BrainPy {bp.__version__}", allow_module_level=True)

import brainpy.checkpoints  # noqa: E402
import brainstate  # noqa: E402
import braintools  # noqa: E402
import brainunit as u  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import bpz  # noqa: E402
import bpz.brainpy as bb  # noqa: E402
from bpz.read import is_bpz_file  # noqa: E402

bm = bp.math


@pytest.fixture(autouse=True)
def fresh_names():
    bm.clear_name_cache(ignore_warn=True)
    yield
    bm.clear_name_cache(ignore_warn=True)


@pytest.fixture
def bpz_installed():
    with bb.installed(bp_format="bpz"):
        yield


def values(obj) -> dict[str, np.ndarray]:
    return {k: np.asarray(v.value) for k, v in obj.vars().unique().items()}


# ------------------------------------------------------------------ the old tutorial


class EINet(bp.DynamicalSystem):
    def __init__(self) -> None:
        super().__init__()
        self.E = bp.dyn.LifRef(32, V_rest=-60., V_th=-50., V_reset=-60., tau=20., tau_ref=5.,
                               V_initializer=bp.init.Normal(-55., 2.))
        self.I = bp.dyn.LifRef(8, V_rest=-60., V_th=-50., V_reset=-60., tau=20., tau_ref=5.,
                               V_initializer=bp.init.Normal(-55., 2.))

    def update(self, inp=20.):
        self.E(inp)
        self.I(inp)


@pytest.mark.parametrize("suffix", [".h5", ".npz", ".pkl", ".mat", ".bpz"])
def test_old_tutorial_save_states_load_states(tmp_path, suffix):
    net = EINet()
    bp.DSRunner(net, progress_bar=False).run(2.0)
    before = values(net)
    path = str(tmp_path / f"net{suffix}")
    bb.save_states(net, path)  # the tutorial's net.save_states(path)
    bm.clear_name_cache(ignore_warn=True)
    net2 = EINet()
    bb.load_states(net2, path)  # net.load_states(path)
    after = values(net2)
    assert sorted(after) == sorted(before)
    for key in before:
        np.testing.assert_array_equal(after[key], before[key], err_msg=key)


# ------------------------------------------------------------------ the new tutorial


class SNN(bp.DynamicalSystem):
    def __init__(self, tau: float) -> None:
        super().__init__()
        self.l1 = bp.dnn.Dense(28 * 28, 10, b_initializer=None)
        self.l2 = bp.dyn.Lif(10, V_rest=0., V_reset=0., V_th=1., tau=tau, spk_fun=bm.surrogate.Arctan())

    def update(self, x):
        return x >> self.l1 >> self.l2


def trained(seed: int = 0):
    with bm.training_environment():
        net = SNN(2.0)
    optimizer = bp.optim.Adam(lr=1e-3, train_vars=net.train_vars().unique())
    x = bm.asarray(np.random.default_rng(seed).random((1, 28 * 28)), dtype=bm.float_)

    def loss():
        bp.reset_state(net, 1)
        return bm.sum(net(x) ** 2) + bm.sum(net.l1.W ** 2)

    grads = bm.grad(loss, grad_vars=net.train_vars().unique())()
    optimizer.update(grads)
    return net, optimizer


def tutorial_states(net, optimizer) -> dict:
    return {"net": net.state_dict(), "optimizer": optimizer.state_dict(), "epoch_i": 3, "train_acc": 0.875}


def test_new_tutorial_round_trip_equals_plain_brainpy(tmp_path, bpz_installed):
    net, optimizer = trained()
    states = tutorial_states(net, optimizer)
    bp.checkpoints.save_pytree(str(tmp_path / "snn.bp"), states, verbose=False)
    assert is_bpz_file(tmp_path / "snn.bp")
    with bb.installed():  # reading needs no option
        loaded = bp.checkpoints.load_pytree(str(tmp_path / "snn.bp"))
    bm.clear_name_cache(ignore_warn=True)
    net2, optimizer2 = trained(seed=1)  # other values, same names
    result = net2.load_state_dict(loaded["net"])  # BrainPy's own method
    assert list(result.missing_keys) == [] and list(result.unexpected_keys) == []
    optimizer2.load_state_dict(loaded["optimizer"])
    assert loaded["epoch_i"] == 3 and loaded["train_acc"] == 0.875
    for got, want in ((net2, net), (optimizer2, optimizer)):
        a, b = values(got), values(want)
        assert sorted(a) == sorted(b)
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)

    # the same states through plain BrainPy (bpz not installed) give the same state dicts
    plain_path = str(tmp_path / "plain.bp")
    brainpy.checkpoints.save_pytree(plain_path, states, verbose=False)
    plain = brainpy.checkpoints.load_pytree(plain_path)
    for node, entry in plain["net"].items():
        assert sorted(entry) == sorted(loaded["net"][node])
        for key, value in entry.items():
            np.testing.assert_array_equal(np.asarray(loaded["net"][node][key]), value, err_msg=key)


class YourClass(bp.DynamicalSystem):  # the tutorial writes bp.DynamicSystem
    def __init__(self) -> None:
        super().__init__()
        self.a = 1
        self.b = bm.random.rand(10)
        self.c = bm.Variable(bm.random.rand(3))
        self.d = bm.var_list([bm.Variable(bm.random.rand(3)), bm.Variable(bm.random.rand(3))])

    def __save_state__(self, **kwargs) -> dict:
        state_dict = {"a": self.a, "b": self.b, "c": self.c}
        for i, elem in enumerate(self.d):
            state_dict[f"d{i}"] = elem.value
        return state_dict

    def __load_state__(self, state_dict, **kwargs):
        self.a = state_dict["a"]
        self.b = bm.asarray(state_dict["b"])
        self.c = bm.asarray(state_dict["c"])
        for i in range(len(self.d)):
            self.d[i].value = bm.asarray(state_dict[f"d{i}"])


def test_new_tutorial_custom_hooks(tmp_path, bpz_installed):
    obj = YourClass()
    obj.a = 7
    want = {"b": np.asarray(obj.b), "c": np.asarray(obj.c.value), "d0": np.asarray(obj.d[0].value)}
    bp.checkpoints.save_pytree(str(tmp_path / "yours.bp"), {"obj": obj.state_dict()}, verbose=False)
    bm.clear_name_cache(ignore_warn=True)
    other = YourClass()
    other.load_state_dict(bp.checkpoints.load_pytree(str(tmp_path / "yours.bp"))["obj"])
    assert other.a == 7
    np.testing.assert_array_equal(np.asarray(other.b), want["b"])
    np.testing.assert_array_equal(np.asarray(other.c), want["c"])
    np.testing.assert_array_equal(np.asarray(other.d[0].value), want["d0"])


def test_new_tutorial_async_manager(tmp_path, bpz_installed):
    net, optimizer = trained()
    am = bp.checkpoints.AsyncManager()
    assert isinstance(am, bpz.AsyncManager)
    path = str(tmp_path / "snn_async.bp")
    bp.checkpoints.save_pytree(path, tutorial_states(net, optimizer), async_manager=am, verbose=False)
    assert am.save_future is not None
    am.wait_previous_save()
    am.close()
    loaded = bp.checkpoints.load_pytree(path)
    bm.clear_name_cache(ignore_warn=True)
    net2, _ = trained(seed=2)
    net2.load_state_dict(loaded["net"])
    for key, value in values(net).items():
        np.testing.assert_array_equal(values(net2)[key], value, err_msg=key)


def test_new_tutorial_file_readable_by_plain_brainpy_with_bp_format_brainpy(tmp_path):
    net, optimizer = trained()
    path = str(tmp_path / "share.bp")
    with bb.installed(bp_format="brainpy"):
        bp.checkpoints.save_pytree(path, tutorial_states(net, optimizer), verbose=False)
    assert not is_bpz_file(path)
    loaded = brainpy.checkpoints.load_pytree(path)  # plain BrainPy 2.9
    bm.clear_name_cache(ignore_warn=True)
    net2, _ = trained(seed=3)
    net2.load_state_dict(loaded["net"])
    for key, value in values(net).items():
        np.testing.assert_array_equal(values(net2)[key], value, err_msg=key)


# ------------------------------------------------------------------ brainstate model with units


class Cortex(brainstate.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.pop = brainpy.state.LIF(20, V_rest=-65. * u.mV, V_th=-50. * u.mV, V_reset=-65. * u.mV,
                                     tau=10. * u.ms, V_initializer=braintools.init.Normal(-60. * u.mV, 3. * u.mV))
        self.readout = brainstate.nn.Linear(20, 3)

    def update(self, t, current):
        with brainstate.environ.context(t=t):
            spikes = self.pop(current)
            return self.readout(spikes)


def simulate(model: Cortex, start: int, stop: int) -> list[np.ndarray]:
    out = []
    for i in range(start, stop):
        noise = brainstate.random.normal(0., 1., (20,)) * u.mA
        out.append(np.asarray(model.update(i * 0.1 * u.ms, 16. * u.mA + noise)))
    return out


def build_cortex() -> Cortex:
    brainstate.environ.set(dt=0.1 * u.ms)
    brainstate.random.seed(42)
    model = Cortex()
    brainstate.nn.init_all_states(model)
    return model


@pytest.mark.parametrize("name", ["cortex.bpz", "cortex.bp"])
def test_brainstate_model_with_units_checkpointed_and_resumed(tmp_path, bpz_installed, name):
    model = build_cortex()
    reference = simulate(model, 0, 40)
    reference_V = model.pop.V.value

    model = build_cortex()
    first = simulate(model, 0, 20)
    path = str(tmp_path / name)
    bp.checkpoints.save_pytree(path, {"model": model.states(), "rng": brainstate.random.DEFAULT, "t": 20},
                               verbose=False)

    restarted = build_cortex()  # a fresh process would build it the same way
    brainstate.random.seed(7)  # and its random stream would be elsewhere
    target = {"model": restarted.states(), "rng": brainstate.random.DEFAULT, "t": 0}
    loaded = bp.checkpoints.load_pytree(path, target=target)
    assert loaded["t"] == 20
    V = restarted.pop.V.value
    assert isinstance(V, u.Quantity) and V.unit == u.mV
    rest = simulate(restarted, 20, 40)
    for i, (a, b) in enumerate(zip(first + rest, reference)):
        np.testing.assert_array_equal(a, b, err_msg=f"step {i}")
    np.testing.assert_array_equal(restarted.pop.V.value.to_decimal(u.mV), reference_V.to_decimal(u.mV))

    raw = bp.checkpoints.load_pytree(path)  # without a target: the Quantity itself, nested by attribute
    assert isinstance(raw["model"]["pop"]["V"], u.Quantity) and raw["model"]["pop"]["V"].unit == u.mV


def test_unit_mismatch_is_refused(tmp_path, bpz_installed):
    path = str(tmp_path / "v.bpz")
    bp.checkpoints.save_pytree(path, {"V": jnp.zeros(3) * u.mV}, verbose=False)
    with pytest.raises(ValueError, match="[Uu]nit"):
        bp.checkpoints.load_pytree(path, target={"V": jnp.zeros(3) * u.ms})
    with pytest.raises(ValueError, match="[Uu]nit"):  # same dimension, another scale: braintools refuses too
        bp.checkpoints.load_pytree(path, target={"V": jnp.zeros(3) * u.volt})
    loaded = bp.checkpoints.load_pytree(path, target={"V": jnp.ones(3) * u.mV})
    assert loaded["V"].unit == u.mV and loaded["V"].to_decimal(u.mV).tolist() == [0, 0, 0]
