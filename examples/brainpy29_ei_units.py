"""An E/I network with units (BrainPy 2.9 ``brainpy.state``), checkpointed with bpz and resumed after a restart.

    python examples/brainpy29_ei_units.py            # needs brainpy>=2.9 (Python 3.12+)

100 LIF neurons (membrane potentials in mV, conductances in mS, noisy input in mA) with
exponential conductance-based E and I synapses are simulated for 600 steps of 0.1 ms. A first
process saves ``{"net": net.states(), "rng": <the random state>, ...}`` every 100 steps with
``bpz.checkpoints.save_checkpoint`` and is killed at step 450; a second process restores the
newest checkpoint into a freshly built network and runs to the end. The result must equal an
uninterrupted run exactly: the membrane potentials come back as mV Quantities and the random
stream resumes where it stopped.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import brainpy  # noqa: E402
import brainstate  # noqa: E402
import braintools  # noqa: E402
import brainunit as u  # noqa: E402
import numpy as np  # noqa: E402

import bpz.checkpoints  # noqa: E402

STEPS, EVERY, CRASH_AT = 600, 100, 450
DT = 0.1 * u.ms


class EINet(brainstate.nn.Module):
    def __init__(self, n_exc: int = 80, n_inh: int = 20) -> None:
        super().__init__()
        self.n_exc, n = n_exc, n_exc + n_inh
        self.N = brainpy.state.LIFRef(
            n, V_rest=-60. * u.mV, V_th=-50. * u.mV, V_reset=-60. * u.mV, tau=20. * u.ms, tau_ref=5. * u.ms,
            V_initializer=braintools.init.Normal(-55. * u.mV, 2. * u.mV))

        def projection(n_pre, w, E, tau):
            return brainpy.state.AlignPostProj(
                comm=brainstate.nn.Linear(n_pre, n, w_init=braintools.init.Uniform(0. * w, 2. * w), b_init=None),
                syn=brainpy.state.Expon.desc(n, tau=tau), out=brainpy.state.COBA.desc(E=E), post=self.N)

        self.E = projection(n_exc, 0.6 * u.mS, 0. * u.mV, 5. * u.ms)
        self.I = projection(n - n_exc, 6.7 * u.mS, -80. * u.mV, 10. * u.ms)

    def update(self, t):
        with brainstate.environ.context(t=t):
            spikes = self.N.get_spike() != 0.
            self.E(spikes[:self.n_exc])
            self.I(spikes[self.n_exc:])
            noise = brainstate.random.normal(0., 2., self.N.varshape) * u.mA
            return self.N(20. * u.mA + noise)


def build() -> tuple[EINet, dict]:
    """A network with the same parameters every time (seeded), and the state a checkpoint holds."""
    brainstate.environ.set(dt=DT)
    brainstate.random.seed(0)
    net = EINet()
    brainstate.nn.init_all_states(net)
    state = {"net": net.states(), "rng": brainstate.random.DEFAULT,
             "spike_counts": np.zeros(STEPS, np.int32), "step": 0}
    return net, state


def run(ckpt_dir: str | None, stop: int) -> dict:
    net, state = build()
    if ckpt_dir is not None and bpz.checkpoints.latest_checkpoint(ckpt_dir):
        # Variables and States (net, rng) are filled in place; plain values are returned.
        restored = bpz.checkpoints.restore_checkpoint(ckpt_dir, target=state)
        state.update(spike_counts=np.array(restored["spike_counts"]), step=restored["step"])
        print(f"resumed at step {state['step']}; V[0] = {net.N.V.value[0]}")
    step = brainstate.transform.jit(lambda i: net.update(i * DT))
    for i in range(state["step"], stop):
        state["spike_counts"][i] = int((step(i) != 0).sum())
        state["step"] = i + 1
        if ckpt_dir is not None and state["step"] % EVERY == 0:
            bpz.checkpoints.save_checkpoint(ckpt_dir, state, state["step"], keep=2)
    return {"spike_counts": state["spike_counts"], "V": net.N.V.value, "step": state["step"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt-dir", help="(internal) run as the checkpointing process in this directory")
    parser.add_argument("--stop", type=int, default=STEPS)
    args = parser.parse_args()
    if args.ckpt_dir:  # one of the two processes
        run(args.ckpt_dir, args.stop)
        return

    reference = run(None, STEPS)
    with tempfile.TemporaryDirectory() as d:
        me = [sys.executable, os.path.abspath(__file__), "--ckpt-dir", d]
        subprocess.run(me + ["--stop", str(CRASH_AT)], check=True, timeout=300)  # "crashes" at step 450
        print("checkpoints after the crash:", sorted(os.listdir(d)))
        subprocess.run(me, check=True, timeout=300)                              # restarts from step 400
        net, state = build()
        final = bpz.checkpoints.restore_checkpoint(d, target=state)  # the last one, step 600
    assert final["step"] == STEPS, final["step"]
    np.testing.assert_array_equal(final["spike_counts"], reference["spike_counts"])
    V = net.N.V.value
    assert isinstance(V, u.Quantity) and V.unit == u.mV, V
    np.testing.assert_array_equal(V.to_decimal(u.mV), reference["V"].to_decimal(u.mV))
    print(f"resumed run == uninterrupted run: {int(reference['spike_counts'].sum())} spikes in {STEPS} steps, "
          f"final V equal to the bit (mean {float(u.math.mean(V).to_decimal(u.mV)):.3f} mV)")


if __name__ == "__main__":
    main()
