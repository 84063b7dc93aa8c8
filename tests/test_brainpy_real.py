"""bpz.brainpy against real BrainPy (2.8.x on Python 3.11, 2.9.x on 3.12+).

Two real models: an E/I network of LIF neurons with exponential COBA synapses (run for a few
milliseconds), and a ``Dense`` + ``Lif`` SNN trained one step with Adam. Their state is saved
the way BrainPy's docs do it, ``{'net': net.state_dict(), 'optimizer': opt.state_dict(),
'epoch_i': 3, 'train_acc': 0.875}``, reloaded into freshly built models after
``bm.clear_name_cache`` and compared variable by variable.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

bp = pytest.importorskip("brainpy")
bm = bp.math

import bpz  # noqa: E402
import bpz.brainpy as bb  # noqa: E402
from bpz._legacy import states_files  # noqa: E402
from bpz.read import is_bpz_file  # noqa: E402

FIXTURES = Path(__file__).resolve().parent / "fixtures"
STATES_SUFFIXES = (".h5", ".hdf5", ".npz", ".pkl", ".pickle", ".mat", ".bpz")


def _event_backend() -> None:
    """BrainPy's event-driven synapses default to numba kernels; use jax's when numba is absent."""
    try:
        import numba  # noqa: F401
    except ImportError:
        import brainevent.config

        brainevent.config.set_backend("cpu", "jax_raw")


class EINet(bp.DynamicalSystem):
    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        pars = dict(V_rest=-60.0, V_th=-50.0, V_reset=-60.0, tau=20.0, tau_ref=5.0)
        self.E = bp.neurons.LIF(32, **pars)
        self.I = bp.neurons.LIF(8, **pars)

        def syn(pre, post, E, g, tau, s):
            conn = bp.conn.FixedProb(0.2, seed=seed + s)
            return bp.synapses.Exponential(pre, post, conn, output=bp.synouts.COBA(E=E), g_max=g, tau=tau)

        self.E2E = syn(self.E, self.E, 0.0, 0.6, 5.0, 1)
        self.E2I = syn(self.E, self.I, 0.0, 0.6, 5.0, 2)
        self.I2E = syn(self.I, self.E, -80.0, 6.7, 10.0, 3)
        self.I2I = syn(self.I, self.I, -80.0, 6.7, 10.0, 4)

    def update(self, inp=20.0):
        self.E2E()
        self.E2I()
        self.I2E()
        self.I2I()
        self.E(inp)
        self.I(inp)
        return self.E.spike.value


class SNN(bp.DynamicalSystem):
    """BrainPy's docs SNN: ``Sequential(Dense(6, 5), Lif(5))`` then ``Dense(5, 3)``."""

    def __init__(self) -> None:
        super().__init__()
        self.l1 = bp.Sequential(
            bp.layers.Dense(6, 5),
            bp.dyn.Lif(5, V_rest=0.0, V_reset=0.0, V_th=1.0, tau=2.0, spk_fun=bm.surrogate.Arctan()),
        )
        self.l2 = bp.layers.Dense(5, 3)

    def update(self, x):
        return self.l2(self.l1(x))


def build_snn() -> tuple[SNN, Any]:
    with bm.training_environment():
        net = SNN()
    opt = bp.optim.Adam(lr=0.1)
    opt.register_train_vars(net.train_vars().unique())
    return net, opt


def fresh(builder: Any) -> Any:
    """A new model with the names the first one had (BrainPy's names are process-global counters)."""
    bm.clear_name_cache(ignore_warn=True)
    return builder()


def variables(*objs: Any) -> dict[str, np.ndarray]:
    return {k: np.array(v.value) for obj in objs for k, v in obj.vars().items()}


def assert_same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert sorted(a) == sorted(b)
    for key in a:
        assert a[key].dtype == b[key].dtype, key
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def perturb(obj: Any, seed: int) -> None:
    """Give every variable a value no freshly built model has."""
    rng = np.random.default_rng(seed)
    for var in obj.vars().unique().values():
        shape, dtype = var.value.shape, np.dtype(var.dtype)
        if dtype == bool:
            new = rng.integers(0, 2, shape).astype(bool)
        elif dtype.kind in "iu":
            new = rng.integers(1, 100, shape).astype(dtype)
        else:
            new = (np.asarray(var.value) + rng.standard_normal(shape) + 3).astype(dtype)
        var.value = bm.as_jax(new)


def sha256(value: Any) -> str:
    return hashlib.sha256(np.ascontiguousarray(value).tobytes()).hexdigest()


def flat_manifest(version: str, name: str) -> dict[tuple[str, ...], dict[str, Any]]:
    meta = json.loads((FIXTURES / version / "manifest.json").read_text())["files"][name]
    return {tuple(e["path"]): e for e in meta["entries"]}


@pytest.fixture(scope="module")
def einet(tmp_path_factory):
    """A run E/I network: its checkpoint, legacy files in every format, and its values."""
    _event_backend()
    net = fresh(EINet)
    bp.DSRunner(net, progress_bar=False).run(3.0)
    perturb(net, seed=1)
    out = tmp_path_factory.mktemp("einet")
    bpz.save_pytree(out / "ckpt.bpz", {"net": net.state_dict(), "epoch_i": 3}, verbose=False)
    for suffix in STATES_SUFFIXES:
        bb.save_states(net, out / f"einet{suffix}")
    return {"dir": out, "values": variables(net), "state_dict": net.state_dict(), "net": net}


@pytest.fixture(scope="module")
def snn(tmp_path_factory):
    """The docs SNN after one Adam step, saved as the docs' checkpoint dict."""
    import jax.numpy as jnp

    net, opt = fresh(build_snn)
    x = bm.random.rand(1, 6)
    y = jnp.array([1])

    def loss():
        bp.reset_state(net, 1)
        return bp.losses.cross_entropy_loss(net(x), y)

    grads, _ = bm.grad(loss, grad_vars=net.train_vars().unique(), return_value=True)()
    opt.update(grads)
    if hasattr(opt, "step"):  # Adam counts its steps from 2.4 on
        assert int(opt.step.value) == 1
    net.l1[1].V.value = bm.as_jax(np.linspace(0, 1, 5, dtype=np.float32)[None])  # a non-trivial membrane state
    ckpt = {"net": net.state_dict(), "optimizer": opt.state_dict(), "epoch_i": 3, "train_acc": 0.875}
    out = tmp_path_factory.mktemp("snn")
    bpz.save_pytree(out / "snn.bpz", ckpt, verbose=False)
    return {"path": out / "snn.bpz", "values": variables(net, opt), "ckpt": ckpt, "net": net, "opt": opt}


# ------------------------------------------------------------------ state_dict


def test_state_dict_is_brainpys(einet, snn):
    for obj in (einet["net"], snn["net"], snn["opt"]):
        ours, theirs = bb.state_dict(obj), obj.state_dict()
        assert list(ours) == list(theirs)
        for node in ours:
            assert list(ours[node]) == list(theirs[node])
            for key in ours[node]:
                assert ours[node][key] is theirs[node][key] or np.array_equal(ours[node][key], theirs[node][key])


def test_state_dict_keys_of_the_two_models(einet, snn):
    sd = einet["state_dict"]
    assert sd["EINet0"] == {} and list(sd["LIF0"]) == ["LIF0.V", "LIF0.spike", "LIF0.t_last_spike", "LIF0.input"]
    assert sd["COBA2"]["COBA2.membrane_var"] is sd["LIF0"]["LIF0.V"] or np.array_equal(
        sd["COBA2"]["COBA2.membrane_var"], sd["LIF0"]["LIF0.V"])
    ckpt = snn["ckpt"]
    assert set(ckpt["net"]["Dense1"]) == {"Dense1.W", "Dense1.b"} and set(ckpt["net"]["Lif0"]) == {"Lif0.V", "Lif0.spike"}
    assert "Adam0.Dense0.W_m" in ckpt["optimizer"]["Adam0"]


# ------------------------------------------------------------------ load_state_dict, v2


def test_docs_checkpoint_into_fresh_snn(snn):
    net, opt = fresh(build_snn)
    assert not all(np.array_equal(v, snn["values"][k]) for k, v in variables(net, opt).items())
    loaded = bpz.load_pytree(snn["path"])
    assert loaded["epoch_i"] == 3 and loaded["train_acc"] == 0.875
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert bb.load_state_dict(net, loaded["net"]) == ([], [])
        assert bb.load_state_dict(opt, loaded["optimizer"]) == ([], [])
    assert_same(variables(net, opt), snn["values"])


def test_brainpys_own_loader_reads_bpz_output(snn):
    net, opt = fresh(build_snn)
    loaded = bpz.load_pytree(snn["path"])
    assert tuple(net.load_state_dict(loaded["net"])) == ([], [])
    assert tuple(opt.load_state_dict(loaded["optimizer"])) == ([], [])
    assert_same(variables(net, opt), snn["values"])


def test_einet_into_fresh_model(einet):
    _event_backend()
    net = fresh(EINet)
    loaded = bpz.load_pytree(einet["dir"] / "ckpt.bpz")
    assert bb.load_state_dict(net, loaded["net"]) == ([], [])
    assert_same(variables(net), einet["values"])
    # aliases stay aliases: COBA's membrane variable is still the post-synaptic LIF's V
    assert net.E2E.output.membrane_var is net.E.V


def test_v1_flat_state_dicts(einet, snn, tmp_path):
    for builder, objs, values in ((EINet, ("net",), einet["values"]), (build_snn, ("net", "opt"), snn["values"])):
        source = einet if builder is EINet else snn
        flat = {k: v.value for name in objs for k, v in source[name].vars().unique().items()}
        bpz.save_pytree(tmp_path / "flat.bpz", flat, verbose=False)
        made = fresh(builder)
        made = made if isinstance(made, tuple) else (made,)
        loaded = bpz.load_pytree(tmp_path / "flat.bpz")
        for obj in made:
            mine = {k: loaded[k] for k in obj.vars().unique()}
            assert bb.load_state_dict(obj, mine, compatible="v1") == ([], [])
        assert_same(variables(*made), values)


def test_unknown_mode(snn):
    with pytest.raises(ValueError, match="^Unknown compatible version: v3$"):
        bb.load_state_dict(snn["net"], {}, compatible="v3")


def test_second_copy_reports_sorted_keys_without_doubled_prefixes(snn):
    bm.clear_name_cache(ignore_warn=True)
    build_snn()  # takes SNN0, Dense0, ...: the next copy gets other names
    net, _ = build_snn()
    sd = snn["ckpt"]["net"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ours = bb.load_state_dict(net, sd)
        theirs = net.load_state_dict(sd)
    own_keys = sorted(net.vars().keys())
    assert ours.missing_keys == own_keys
    assert sorted(theirs.missing_keys) == sorted(f"{k.split('.')[0]}.{k}" for k in own_keys)  # BrainPy doubles them
    with_state = sorted(k for k, v in sd.items() if v)  # SNN0, Sequential0, ExponentialEuler0 are empty
    assert with_state == ["Dense0", "Dense1", "Lif0"]
    assert ours.unexpected_keys == with_state and theirs.unexpected_keys == []  # BrainPy ignores unused entries
    assert [str(w.message) for w in caught[:2]] == [
        f"Unexpected keys in state_dict: {with_state}",
        f"Missing keys in state_dict: {own_keys}",
    ]


def test_failed_load_changes_nothing(snn):
    net, opt = fresh(build_snn)
    before = variables(net, opt)
    sd = {node: dict(entry) for node, entry in bpz.load_pytree(snn["path"])["net"].items()}
    sd["Dense1"]["Dense1.W"] = np.zeros((3, 5), np.float32)
    sd["Dense1"]["Dense1.b"] = np.zeros(3, np.int32)
    with pytest.raises(bb.StateMismatchError) as info:
        bb.load_state_dict(net, sd)
    message = str(info.value)
    assert "Dense1.W: expected shape (5, 3) float32, got shape (3, 5) float32" in message
    assert "Dense1.b: expected shape (3,) float32, got shape (3,) int32" in message
    assert_same(variables(net, opt), before)


def test_float64_narrows_like_brainpy(snn):
    net, _ = fresh(build_snn)
    sd = {node: {k: np.asarray(v, np.float64) for k, v in entry.items()} for node, entry in snn["ckpt"]["net"].items()}
    assert bb.load_state_dict(net, sd) == ([], [])
    assert net.l2.W.dtype == np.float32


class Custom(bp.DynamicalSystem):
    def __init__(self) -> None:
        super().__init__()
        self.a = bm.Variable(bm.zeros(3))
        self.step = 0
        self.kwargs: dict[str, Any] = {}

    def __save_state__(self, **kwargs):
        return {"a": self.a.value, "step": self.step}

    def __load_state__(self, state_dict, **kwargs):
        self.kwargs = kwargs
        if "explode" in state_dict:
            raise RuntimeError("hook failed")
        self.a.value = bm.as_jax(state_dict["a"])
        self.step = int(state_dict["step"])
        return ["m1"], ["u1"]


class WithCustom(bp.DynamicalSystem):
    def __init__(self) -> None:
        super().__init__()
        self.lif = bp.dyn.Lif(4)
        self.custom = Custom()


def test_custom_hooks(tmp_path):
    source = fresh(WithCustom)
    source.custom.a.value = bm.as_jax(np.arange(3, dtype=np.float32))
    source.custom.step = 7
    bpz.save_pytree(tmp_path / "c.bpz", bb.state_dict(source), verbose=False)
    target = fresh(WithCustom)
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        result = bb.load_state_dict(target, bpz.load_pytree(tmp_path / "c.bpz"), tag="x")
    assert result == (["Custom0.m1"], ["Custom0.u1"])
    assert target.custom.kwargs == {"tag": "x"} and target.custom.step == 7
    np.testing.assert_array_equal(target.custom.a.value, np.arange(3))


def test_failing_hook_restores_every_variable(tmp_path):
    source = fresh(WithCustom)
    perturb(source, seed=4)
    sd = bb.state_dict(source)
    sd["Custom0"] = {**sd["Custom0"], "explode": True}
    target = fresh(WithCustom)
    before = variables(target)
    assert list(target.nodes())[:2] == ["WithCustom0", "Lif0"]  # Lif0 is assigned before the hook fails
    with pytest.raises(RuntimeError, match="hook failed"):
        bb.load_state_dict(target, sd)
    assert_same(variables(target), before)


# ------------------------------------------------------------------ files written by real BrainPy 2.9.0


def test_brainpy_290_einet_file_into_a_fresh_model():
    _event_backend()
    bm.clear_name_cache(ignore_warn=True)
    # BrainPy makes COBA0 and COBA1 at import (default arguments), so the first model of a
    # process, like the fixture's, has COBA2..5: reproduce that.
    bp.synouts.COBA(E=0.0), bp.synouts.COBA(E=0.0)
    net = EINet()
    sd = bpz.load_pytree(FIXTURES / "brainpy-2.9.0" / "einet_state_dict.bp")
    assert bb.load_state_dict(net, sd) == ([], [])
    for path, entry in flat_manifest("brainpy-2.9.0", "einet_state_dict.bp").items():
        if entry["type"] == "numpy.ndarray":
            node = dict(net.nodes())[path[0]]
            assert sha256(np.asarray(node.vars(level=0)[path[1]].value)) == entry["sha256"], path


def test_brainpy_290_docs_checkpoint_into_a_fresh_model():
    net, opt = fresh(build_snn)
    ckpt = bpz.load_pytree(FIXTURES / "brainpy-2.9.0" / "snn_checkpoint.bp")
    assert "ExponentialEuler6" in ckpt["net"] and "ExponentialEuler0" in dict(net.nodes())  # other build order
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the stateless integrator's empty entry is not "unexpected"
        assert bb.load_state_dict(net, ckpt["net"]) == ([], [])
        assert bb.load_state_dict(opt, ckpt["optimizer"]) == ([], [])
    now = variables(net, opt)
    for path, entry in flat_manifest("brainpy-2.9.0", "snn_checkpoint.bp").items():
        if entry["type"] == "numpy.ndarray":
            assert sha256(now[path[-1]]) == entry["sha256"], path
    assert ckpt["epoch_i"] == 3 and ckpt["train_acc"] == 0.875


# ------------------------------------------------------------------ install()


def test_install_round_trip(snn, tmp_path):
    original_save, original_load = bp.checkpoints.save_pytree, bp.checkpoints.load_pytree
    path = tmp_path / "ckpt.bp"
    with bb.installed(bp_format="bpz"):  # a bpz archive under a .bp name, chosen: no notice
        assert bp.checkpoints.save_pytree is not original_save
        assert bp.checkpoints.save_pytree(path, snn["ckpt"], verbose=False) == os.fspath(path)
        assert is_bpz_file(path)
        loaded = bp.checkpoints.load_pytree(path)
        old = bp.checkpoints.load_pytree(FIXTURES / "brainpy-2.9.0" / "snn_checkpoint.bp")  # a real .bp file
        assert old["epoch_i"] == 3
        with bp.checkpoints.AsyncManager() as am:
            bp.checkpoints.save_pytree(tmp_path / "async.bpz", snn["ckpt"], async_manager=am, verbose=False)
        import braintools

        with braintools.file.AsyncManager() as theirs:  # a manager made by BrainPy's own class works too
            bp.checkpoints.save_pytree(tmp_path / "async2.bpz", snn["ckpt"], async_manager=theirs, verbose=False)
            theirs.wait_previous_save()
        net, opt = fresh(build_snn)
        target = {"W": net.l2.W}
        bp.checkpoints.save_pytree(tmp_path / "w.bpz", {"W": snn["net"].l2.W}, verbose=False)
        bp.checkpoints.load_pytree(tmp_path / "w.bpz", target=target)  # Variables are filled in place
        np.testing.assert_array_equal(net.l2.W.value, snn["values"]["Dense1.W"])
    assert bp.checkpoints.save_pytree is original_save and bp.checkpoints.load_pytree is original_load
    net, opt = fresh(build_snn)
    assert bb.load_state_dict(net, loaded["net"]) == ([], []) and bb.load_state_dict(opt, loaded["optimizer"]) == ([], [])
    assert_same(variables(net, opt), snn["values"])
    for name in ("async.bpz", "async2.bpz"):
        assert bpz.load_pytree(tmp_path / name)["train_acc"] == 0.875
    # BrainPy's own save still writes msgpack, which bpz reads
    bp.checkpoints.save_pytree(os.fspath(tmp_path / "own.bp"), snn["ckpt"], verbose=False)
    assert not is_bpz_file(tmp_path / "own.bp")
    assert bpz.load_pytree(tmp_path / "own.bp")["epoch_i"] == 3


def test_install_is_idempotent_and_reversible():
    originals = (bp.checkpoints.save_pytree, bp.checkpoints.load_pytree, bp.checkpoints.AsyncManager)
    try:
        bb.install()
        bb.install()
        assert bp.checkpoints.AsyncManager is bpz.AsyncManager and bb.is_installed()
    finally:
        bb.uninstall()
    bb.uninstall()
    assert (bp.checkpoints.save_pytree, bp.checkpoints.load_pytree, bp.checkpoints.AsyncManager) == originals


# ------------------------------------------------------------------ save_states / load_states


@pytest.mark.parametrize("suffix", STATES_SUFFIXES)
def test_save_and_load_states_every_format(einet, suffix):
    _event_backend()
    path = einet["dir"] / f"einet{suffix}"
    net = fresh(EINet)
    bb.load_states(net, path)
    assert_same(variables(net), einet["values"])
    if suffix != ".bpz":
        _, aliases = states_files.read_states(path)
        assert aliases["COBA2.membrane_var"] == "LIF0.V" and aliases["COBA2.target_var"] == "LIF0.input"
        assert aliases["VarDelay0.target"] == "LIF0.spike"


def test_load_states_errors_like_brainpy(einet, caplog):
    _event_backend()
    bm.clear_name_cache(ignore_warn=True)
    EINet()
    other = EINet()  # a second copy in the same process: other names
    with pytest.raises(KeyError, match="is stored in .* But we does not find it is defined as variable in EINet1"):
        bb.load_states(other, einet["dir"] / "einet.h5")
    net = fresh(EINet)
    subset = {k: v for k, v in einet["net"].vars().items() if k.startswith("LIF0.")}
    bb.save_states(einet["net"], einet["dir"] / "part.npz", variables=subset)
    with pytest.warns(UserWarning, match="There are variable states missed in"):
        bb.load_states(net, einet["dir"] / "part.npz")
    assert any(r.name == "bpz.brainpy" and "LIF1.V" in r.getMessage() for r in caplog.records)
    np.testing.assert_array_equal(net.E.V.value, einet["values"]["LIF0.V"])
