"""Sharded jax.Array checkpoints on jax.distributed, on one machine.

    python examples/multihost.py                      # 2 processes x 2 CPU devices
    python examples/multihost.py --processes 4 --devices 1 --dir /tmp/ckpts

Launches N local processes that form one JAX job (as N hosts would), each with K CPU devices.
Every process calls ``bpz.jax.save_checkpoint``: it writes the shards it owns to its own
archive, and process 0 commits the step once all are written. The job then restores the
newest step onto a different layout (a transposed mesh), and ``bpz.load_pytree`` reads the
same directory as NumPy without JAX's runtime. On a real cluster, run the worker part on
every host with your coordinator's address and a directory on a shared filesystem.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time


def worker(coordinator: str, processes: int, process_id: int, ckpt_dir: str) -> None:
    import jax

    jax.distributed.initialize(coordinator, num_processes=processes, process_id=process_id)
    import jax.numpy as jnp
    import numpy as np
    from jax.experimental import multihost_utils
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    import bpz.jax

    n = jax.device_count()
    rows = 2 if n % 2 == 0 else 1
    mesh = Mesh(np.array(jax.devices()).reshape(rows, n // rows), ("data", "model"))

    @jax.jit
    def init(key):
        k1, k2 = jax.random.split(key)
        return {"w": jax.random.normal(k1, (1024, 512)), "b": jnp.zeros(512, jnp.bfloat16),
                "emb": jax.random.normal(k2, (4096, 64))}

    shardings = {"w": NamedSharding(mesh, P("data", "model")), "b": NamedSharding(mesh, P()),  # b: replicated
                 "emb": NamedSharding(mesh, P(("data", "model")))}
    params = jax.jit(init, out_shardings=shardings)(jax.random.key(0))
    state = {"params": params, "step": 100, "note": "sharded over " + str(dict(mesh.shape))}

    async_manager = bpz.AsyncManager()
    for step in (100, 200):
        state["step"] = step
        t0 = time.perf_counter()
        # returns once the shards are on the host; writing and the commit go on in the background
        bpz.jax.save_checkpoint(ckpt_dir, state, step, keep=1, async_manager=async_manager)
        if process_id == 0:
            print(f"step {step}: save handed over in {time.perf_counter() - t0:.3f} s")
    async_manager.close()  # waits for the last commit; raises if any process failed

    # restore onto the transposed mesh: each process reads only the rows its devices need
    mesh_t = Mesh(mesh.devices.T, ("model", "data"))
    target = {"params": {"w": jax.ShapeDtypeStruct((1024, 512), jnp.float32,
                                                   sharding=NamedSharding(mesh_t, P("model", "data"))),
                         "b": jax.ShapeDtypeStruct((512,), jnp.bfloat16, sharding=NamedSharding(mesh_t, P())),
                         "emb": jax.ShapeDtypeStruct((4096, 64), jnp.float32,
                                                     sharding=NamedSharding(mesh_t, P("data")))},
              "step": 0, "note": ""}
    stats: dict = {}
    restored = bpz.jax.restore_checkpoint(ckpt_dir, target=target, stats=stats)
    def gather(x):  # the whole array on every process, to compare
        return multihost_utils.process_allgather(x, tiled=True)

    same = bool(np.array_equal(gather(restored["params"]["w"]), gather(params["w"])))
    print(f"process {process_id}: restored step {restored['step']} ({restored['note']}), w equal: {same}, "
          f"read {stats['bytes_read'] / 2**20:.2f} MiB for {stats['bytes_needed'] / 2**20:.2f} MiB of shards")
    jax.distributed.shutdown()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--devices", type=int, default=2, help="CPU devices per process")
    ap.add_argument("--dir", default=None, help="checkpoint directory (default: a temporary one)")
    ap.add_argument("--worker", nargs=3, metavar=("COORDINATOR", "PROCESS_ID", "DIR"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        coordinator, pid, ckpt_dir = args.worker
        worker(coordinator, args.processes, int(pid), ckpt_dir)
        return 0

    ckpt_dir = args.dir or tempfile.mkdtemp(prefix="bpz-multihost-")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={args.devices}")
    children = [subprocess.Popen([sys.executable, __file__, "--processes", str(args.processes), "--worker",
                                  f"127.0.0.1:{port}", str(i), ckpt_dir], env=env)
                for i in range(args.processes)]
    try:
        codes = [c.wait(timeout=300) for c in children]
    finally:
        for c in children:
            if c.poll() is None:
                c.kill()
                c.wait()
    if any(codes):
        print(f"a process failed: exit codes {codes}", file=sys.stderr)
        return 1

    import bpz

    print(f"{ckpt_dir}: {sorted(os.listdir(ckpt_dir))}")
    newest = os.path.join(ckpt_dir, "checkpoint_200")
    print(f"{newest}: {sorted(os.listdir(newest))}")
    tree = bpz.load_pytree(newest)  # the same checkpoint as NumPy, no jax.distributed needed
    print("as NumPy:", {k: v.shape for k, v in tree["params"].items()}, "step", tree["step"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
