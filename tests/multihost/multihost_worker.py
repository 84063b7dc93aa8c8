"""One process of a multi-process jax job for tests/multihost (run by multihost_launch.launch).

argv: SCENARIO WORKDIR COORDINATOR NUM_PROCESSES PROCESS_ID. Each scenario checks what it can
inside the job (a failed check raises: non-zero exit, traceback on stderr) and prints
``RESULT <json>`` lines for the test to check from outside.

Checkpoints go under WORKDIR, or under the URL prefix in BPZ_TEST_DEST (a bucket) with the
storage options (JSON) in BPZ_TEST_STORAGE_OPTIONS: the same scenarios run on both.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import sys
import warnings

import jax

scenario, workdir, coordinator, nproc, pid = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
DEST = os.environ.get("BPZ_TEST_DEST") or workdir
OPTS = json.loads(os.environ["BPZ_TEST_STORAGE_OPTIONS"]) if os.environ.get("BPZ_TEST_STORAGE_OPTIONS") else None
jax.distributed.initialize(coordinator, num_processes=nproc, process_id=pid, initialization_timeout=60)

import jax.numpy as jnp  # noqa: E402
import ml_dtypes  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import Mesh, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import bpz  # noqa: E402
import bpz.jax  # noqa: E402
from bpz import sharded  # noqa: E402

CHUNK = 16384  # bytes a chunk: row-range reads fetch whole chunks, so the read-amount checks need small ones
BIG_ROWS = 262147  # int32: just over 1 MiB, so replica-parallel splits it (unevenly: 131074 + 131073 rows)


def expected() -> dict[str, np.ndarray]:
    """The global values of the saved arrays (every launch can rebuild them)."""
    return {
        "w": (np.arange(512 * 256, dtype=np.float32).reshape(512, 256) * 0.5),
        "b": np.arange(32 * 16).reshape(32, 16).astype(ml_dtypes.bfloat16),
        "i": np.arange(48 * 8, dtype=np.int32).reshape(48, 8) - 100,
        "big": np.arange(BIG_ROWS, dtype=np.int32) * 3,
        "rep": np.linspace(0, 1, 15, dtype=np.float32).reshape(5, 3),
        "zero_d": np.float32(4.25),
        "empty": np.zeros((0, 4), np.float32),
        "u": np.arange(12 * 5, dtype=np.float32).reshape(12, 5),
    }


def at(name: str) -> str:
    """Where the checkpoint ``name`` goes: under the bucket prefix or the work directory."""
    return f"{DEST}/{name}" if "://" in DEST else os.path.join(DEST, name)


def report(**values) -> None:
    print("RESULT " + json.dumps(values), flush=True)


def check_array(arr: jax.Array, want: np.ndarray, sharding=None, where: str = "") -> None:
    assert arr.shape == want.shape and arr.dtype == want.dtype, (where, arr.shape, arr.dtype, want.shape, want.dtype)
    if sharding is not None:
        assert arr.sharding.is_equivalent_to(sharding, arr.ndim), (where, arr.sharding, sharding)
    for shard in arr.addressable_shards:
        np.testing.assert_array_equal(np.asarray(shard.data), want[shard.index], err_msg=where)


def mesh_2x2() -> Mesh:
    # jax.devices() lists process 0's devices first: row x=0 of this mesh is process 0's.
    return Mesh(np.array(jax.devices()).reshape(2, 2), ("x", "y"))


def saved_shardings(mesh: Mesh) -> dict:
    return {
        "w": NamedSharding(mesh, P("x", "y")),
        "b": NamedSharding(mesh, P(("x", "y"))),
        "i": NamedSharding(mesh, P(None, "y")),  # replicated across processes, sharded within
        "big": NamedSharding(mesh, P()),  # fully replicated
        "rep": NamedSharding(mesh, P()),
        "zero_d": NamedSharding(mesh, P()),
        "empty": NamedSharding(mesh, P("x")),
        "u": NamedSharding(mesh, P(("x", "y"))),  # 3 rows a device
    }


def build_tree(mesh: Mesh) -> dict:
    want, sh = expected(), saved_shardings(mesh)
    arrays = {k: jax.make_array_from_callback(v.shape, sh[k], lambda idx, v=v: v[idx]) for k, v in want.items()}
    return {
        "params": {"w": arrays["w"], "b": arrays["b"], "i": arrays["i"]},
        "big": arrays["big"],
        "rep": arrays["rep"],
        "zero_d": arrays["zero_d"],
        "empty": arrays["empty"],
        "u": arrays["u"],
        "host": np.arange(5, dtype=np.int64),  # a host NumPy array
        "local": jax.device_put(jnp.full((3,), 7.0), jax.local_devices()[0]),  # a host-local jax array
        "step": 12,
        "name": "run-α",
        "lr": 2.5e-3,
        "misc": (1, "a", None, [2.0, "bpz:sharded-array:a0"]),  # a string that looks like a placeholder
    }


def check_tree(out: dict, shardings: dict | None = None) -> None:
    want = expected()
    paths = {"w": out["params"]["w"], "b": out["params"]["b"], "i": out["params"]["i"], "big": out["big"],
             "rep": out["rep"], "zero_d": out["zero_d"], "empty": out["empty"], "u": out["u"]}
    for k, arr in paths.items():
        check_array(arr, want[k], shardings.get(k) if shardings else None, k)
    np.testing.assert_array_equal(np.asarray(out["host"]), np.arange(5))
    np.testing.assert_array_equal(np.asarray(out["local"]), np.full(3, 7.0))
    assert out["step"] == 12 and out["name"] == "run-α" and out["lr"] == 2.5e-3, out
    assert out["misc"] == (1, "a", None, [2.0, "bpz:sharded-array:a0"]), out["misc"]


def nest(sh: dict) -> dict:
    """Shardings of the flat names laid out like the saved tree (None for the leaves without one)."""
    return {"params": {"w": sh["w"], "b": sh["b"], "i": sh["i"]}, "big": sh["big"], "rep": sh["rep"],
            "zero_d": sh["zero_d"], "empty": sh["empty"], "u": sh["u"], "host": None, "local": None, "step": None,
            "name": None, "lr": None, "misc": None}


def fail_on(process: int, how: str):
    """Makes this process's data-file write fail once: "error" before writing, "error_after"
    once the file is complete, "kill" (SIGKILL) once the file is complete."""
    for cls in (sharded.LocalStore, sharded.RemoteStore):
        real = cls.write

        def write(self, name, tree, cls=cls, real=real, **kw):
            if pid == process and name.startswith("process_"):
                cls.write = real
                if how in ("kill", "error_after"):
                    real(self, name, tree, **kw)  # the file is complete, the commit never comes
                if how == "kill":
                    os.kill(os.getpid(), signal.SIGKILL)
                raise OSError(errno.ENOSPC, "No space left on device (injected)", self.path(name))
            return real(self, name, tree, **kw)

        cls.write = write


def scenario_save_2x2() -> None:
    """2 processes x 2 devices: save, restore (same and transposed mesh), async, numbered, a failed write."""
    mesh = mesh_2x2()
    tree = build_tree(mesh)
    ckpt = at("ckpt")
    stats: dict = {}
    bpz.jax.save(ckpt, tree, stats=stats, chunk_size=CHUNK, storage_options=OPTS)
    report(**{f"written_{pid}": stats["bytes_written"]})

    out = bpz.jax.load(ckpt, storage_options=OPTS)  # the saved shardings (same devices)
    check_tree(out, saved_shardings(mesh))

    # the transposed mesh, and each array on the other axis order
    mesh_t = Mesh(np.array(jax.devices()).reshape(2, 2).T, ("x", "y"))
    sh_t = {"w": NamedSharding(mesh_t, P("y", "x")), "b": NamedSharding(mesh_t, P(("y", "x"))),
            "i": NamedSharding(mesh_t, P("x", None)), "big": NamedSharding(mesh_t, P()),
            "rep": NamedSharding(mesh_t, P(None, None)), "zero_d": NamedSharding(mesh_t, P()),
            "empty": NamedSharding(mesh_t, P(None, "y")), "u": NamedSharding(mesh_t, P(("y", "x")))}
    stats = {}
    out = bpz.jax.load(ckpt, shardings=nest(sh_t), stats=stats, storage_options=OPTS)
    check_tree(out, sh_t)
    report(**{f"transposed_read_{pid}": stats["bytes_read"], f"transposed_needed_{pid}": stats["bytes_needed"]})

    # a target of ShapeDtypeStructs (Orbax's form): the target's structure and dtypes
    target = {"params": {"w": jax.ShapeDtypeStruct((512, 256), jnp.float32, sharding=sh_t["w"])},
              "big": jax.ShapeDtypeStruct((BIG_ROWS,), jnp.float32, sharding=sh_t["big"]), "step": 0}
    out = bpz.jax.load(ckpt, target=target, storage_options=OPTS)
    check_array(out["params"]["w"], expected()["w"], sh_t["w"])
    check_array(out["big"], expected()["big"].astype(np.float32), sh_t["big"])
    assert set(out) == {"params", "big", "step"} and out["step"] == 12

    # async: returns after the host copies; the source arrays may go away at once
    with bpz.AsyncManager() as manager:
        tree_async = build_tree(mesh)
        bpz.jax.save(at("ckpt_async"), tree_async, async_manager=manager, storage_options=OPTS)
        for leaf in jax.tree_util.tree_leaves(tree_async):
            if isinstance(leaf, jax.Array):
                leaf.delete()
        manager.wait_previous_save()
    check_tree(bpz.jax.load(at("ckpt_async"), storage_options=OPTS), saved_shardings(mesh))

    # numbered checkpoints with keep=2; async saves in a row
    steps_dir = at("steps")
    with bpz.AsyncManager() as manager:
        for step in (1, 2, 3):
            bpz.jax.save_checkpoint(steps_dir, build_tree(mesh), step, keep=2, async_manager=manager,
                                    storage_options=OPTS)
    assert [s for s, _ in bpz.jax.checkpoint_steps(steps_dir, storage_options=OPTS)] == [2, 3]
    check_tree(bpz.jax.restore_checkpoint(steps_dir, shardings=nest(saved_shardings(mesh)), storage_options=OPTS),
               saved_shardings(mesh))
    try:
        bpz.jax.save_checkpoint(steps_dir, build_tree(mesh), 3, keep=2, storage_options=OPTS)
        raise AssertionError("an outdated step was saved")
    except bpz.errors.InvalidCheckpointError:
        pass

    # process 1 fails once its file of step 4 is written: every process raises, nothing is
    # committed or removed, and the files written for step 4 are removed
    fail_on(1, "error_after")
    try:
        bpz.jax.save_checkpoint(steps_dir, build_tree(mesh), 4, keep=2, timeout=60, storage_options=OPTS)
        raise AssertionError("the failed save did not raise")
    except (OSError, bpz.jax.ShardedSaveError) as e:
        report(**{f"failed_{pid}": f"{type(e).__name__}: {e}"})
    assert [s for s, _ in bpz.jax.checkpoint_steps(steps_dir, storage_options=OPTS)] == [2, 3]
    # removing old steps fails on process 0 after the commit of step 5 (say no delete permission):
    # the save is committed and whole on every process, process 0 warns, step 2 stays
    real_remove = bpz.jax._remove_checkpoint

    def refuse(path, options):
        raise PermissionError(errno.EACCES, "Permission denied (injected)", path)

    bpz.jax._remove_checkpoint = refuse
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        bpz.jax.save_checkpoint(steps_dir, build_tree(mesh), 5, keep=2, storage_options=OPTS)
    bpz.jax._remove_checkpoint = real_remove
    assert (pid == 0) == any("saved and committed" in str(w.message) for w in caught), [str(w.message) for w in caught]
    assert [s for s, _ in bpz.jax.checkpoint_steps(steps_dir, storage_options=OPTS)] == [2, 3, 5]
    check_tree(bpz.jax.restore_checkpoint(steps_dir, shardings=nest(saved_shardings(mesh)), storage_options=OPTS),
               saved_shardings(mesh))
    # and the same failure (before writing) overwriting a committed checkpoint leaves the old one in place
    fail_on(1, "error")
    try:
        bpz.jax.save(ckpt, {"other": 1}, timeout=60, storage_options=OPTS)
        raise AssertionError("the failed save did not raise")
    except (OSError, bpz.jax.ShardedSaveError):
        pass
    check_tree(bpz.jax.load(ckpt, storage_options=OPTS), saved_shardings(mesh))
    report(**{f"done_{pid}": True})


def scenario_restore_1x4() -> None:
    """1 process x 4 devices: the 2x2 checkpoint onto one process, including a mesh of 3 devices."""
    ckpt = at("ckpt")
    devices = np.array(jax.devices())
    mesh = Mesh(devices.reshape(4), ("d",))
    sh = {"w": NamedSharding(mesh, P("d")), "b": NamedSharding(mesh, P(None, "d")), "i": NamedSharding(mesh, P("d")),
          "big": NamedSharding(mesh, P()), "rep": NamedSharding(mesh, P()), "zero_d": NamedSharding(mesh, P()),
          "empty": NamedSharding(mesh, P(None, "d")), "u": NamedSharding(mesh, P("d"))}
    stats: dict = {}
    out = bpz.jax.load(ckpt, shardings=nest(sh), stats=stats, storage_options=OPTS)
    check_tree(out, sh)
    # "big" is one host block for the 4 local replicas (on CPU they may share its memory):
    # donating one replica to a computation must leave the others intact
    replicas = [s.data for s in out["big"].addressable_shards]
    jax.jit(lambda v: v * 0 - 1, donate_argnums=0)(replicas[0]).block_until_ready()
    for r in replicas[1:]:
        np.testing.assert_array_equal(np.asarray(r), expected()["big"])
    # uneven against the saved pieces: 12 rows saved 3 a device, read 4 a device on 3 devices
    mesh3 = Mesh(devices[:3], ("t",))
    u = bpz.jax.load(ckpt, target={"u": jax.ShapeDtypeStruct((12, 5), jnp.float32,
                                                              sharding=NamedSharding(mesh3, P("t")))},
                     storage_options=OPTS)["u"]
    check_array(u, expected()["u"], NamedSharding(mesh3, P("t")), "u on 3 devices")
    # the numpy view of the same checkpoint
    tree = bpz.load_pytree(ckpt, storage_options=OPTS)
    np.testing.assert_array_equal(tree["params"]["b"], expected()["b"])
    assert tree["params"]["b"].dtype == ml_dtypes.bfloat16 and tree["misc"][3][1] == "bpz:sharded-array:a0"
    # without shardings the saved ones need the saved devices: a clear error here
    try:
        bpz.jax.load(ckpt, storage_options=OPTS)
        raise AssertionError("loaded onto missing devices")
    except ValueError as e:
        assert "pass shardings= or target=" in str(e), e
    report(read=stats["bytes_read"], needed=stats["bytes_needed"])


def scenario_restore_4x1() -> None:
    """4 processes x 1 device: each process reads only its rows."""
    ckpt = at("ckpt")
    mesh = Mesh(np.array(jax.devices()), ("p",))
    sh = {"w": NamedSharding(mesh, P("p")), "b": NamedSharding(mesh, P("p")), "i": NamedSharding(mesh, P(None, "p")),
          "big": NamedSharding(mesh, P()), "rep": NamedSharding(mesh, P()), "zero_d": NamedSharding(mesh, P()),
          "empty": NamedSharding(mesh, P(None, "p")), "u": NamedSharding(mesh, P("p"))}
    stats: dict = {}
    out = bpz.jax.load(ckpt, shardings=nest(sh), stats=stats, storage_options=OPTS)
    check_tree(out, sh)
    # a row-sharded array alone: this process needs a quarter, and reads about that
    stats_w: dict = {}
    w = bpz.jax.load(ckpt, target={"params": {"w": jax.ShapeDtypeStruct((512, 256), jnp.float32, sharding=sh["w"])}},
                     stats=stats_w, storage_options=OPTS)["params"]["w"]
    check_array(w, expected()["w"], sh["w"], "w")
    report(**{f"w_read_{pid}": stats_w["bytes_read"], f"w_needed_{pid}": stats_w["bytes_needed"]})


def scenario_kill() -> None:
    """2 x 2: a committed checkpoint, then a save over it during which process 1 is SIGKILLed."""
    mesh = mesh_2x2()
    ckpt = at("ckpt_kill")
    bpz.jax.save(ckpt, build_tree(mesh), storage_options=OPTS)
    report(**{f"first_committed_{pid}": True})
    fail_on(1, "kill")
    try:
        bpz.jax.save(ckpt, {"replaced": jax.device_put(np.ones((8, 8), np.float32), NamedSharding(mesh, P("x")))},
                     timeout=float(os.environ.get("BPZ_TEST_KILL_TIMEOUT", "8")), storage_options=OPTS)
        report(**{f"second_{pid}": "no error"})
    except bpz.jax.ShardedSaveError as e:
        report(**{f"second_{pid}": f"ShardedSaveError: {e}"})
    check_tree(bpz.jax.load(ckpt, storage_options=OPTS), saved_shardings(mesh))
    report(**{f"old_intact_{pid}": True})
    os._exit(0)  # the runtime's shutdown would wait for the killed process


def main() -> None:
    globals()[f"scenario_{scenario}"]()
    jax.distributed.shutdown()


if __name__ == "__main__":
    main()
