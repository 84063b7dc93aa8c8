"""Loading straight into JAX, and sharded ``jax.Array`` checkpoints on JAX's distributed runtime.

Single archives: ``bpz.jax.load(filename)`` returns the saved pytree with every array as a
``jax.Array``; ``bpz.jax.load_tensor(filename, name)`` one tensor. Zero-copy hand-over of the
64-byte-aligned memory map would need JAX to accept read-only memory, which it does not, so
every array is one verified host copy, then ``device_put`` (the one transfer an accelerator
needs anyway).

Sharded checkpoints (a directory, see :mod:`bpz.sharded` for its layout):
``bpz.jax.save(path, tree)`` is called by every process of a ``jax.distributed`` job. Each
process writes the shards it owns to its own archive — one writer per distinct shard, and the
rows of a replicated block split among the processes that hold a replica, so the bytes
written per process balance — then the coordinator (process 0) writes the commit record once
every process reported success through the distributed runtime's key-value store. Until then
nothing new is visible: killing any process before the commit leaves the previous checkpoint
current; a process whose write fails makes the save raise :class:`ShardedSaveError` on every
process. ``bpz.jax.load(path, target=..., shardings=...)`` restores onto any mesh and process
count, each process reading only the row ranges its devices need.

``path`` may also be a prefix on object storage (``s3://bucket/run/step_10``, ``gs://``,
``az://``; ``storage_options=`` as for :func:`bpz.open`): each data file is then a multipart
upload that appears only once complete, the commit record is the object whose presence makes
the prefix a checkpoint, and the same guarantees hold. ``http(s)://`` prefixes are read only.

This module imports JAX; ``import bpz`` does not.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
import secrets
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable, Mapping
from enum import Enum
from typing import Any

import jax
import numpy as np

from . import sharded
from .errors import CheckpointNotFoundError, InvalidCheckpointError, InvalidCheckpointPath
from .pytree import is_quantity
from .read import Archive, _is_url
from .read import open as open_archive
from .sharded import COMMIT_NAME, MANIFEST_KEY, MANIFEST_VERSION, ArrayRecord, ShardedCheckpoint, ShardedSaveError
from .write import AsyncManager

__all__ = [
    "load",
    "load_tensor",
    "save",
    "save_checkpoint",
    "restore_checkpoint",
    "latest_checkpoint",
    "checkpoint_steps",
    "ShardedSaveError",
    "DEFAULT_TIMEOUT",
]

#: Seconds a process waits for the others at the commit barrier before the save fails.
DEFAULT_TIMEOUT: float = 600.0
#: Replicated blocks at least this large are split by rows among their holders; smaller ones
#: go whole to the holder that has written least so far.
SPLIT_MIN_BYTES = 1 << 20
_MIN_JAX = (0, 4, 30)


def _to_jax(arr: np.ndarray, device: Any) -> jax.Array:
    if device is None:
        return jax.numpy.asarray(arr)
    return jax.device_put(arr, device)


def load_tensor(source: str | os.PathLike[str] | Archive, name: str, device: Any = None, *,
                storage_options: Mapping[str, Any] | None = None) -> jax.Array:
    """One tensor as a ``jax.Array`` on ``device`` (default: JAX's default device)."""
    if isinstance(source, Archive):
        return _to_jax(source.read(name), device)
    with open_archive(source, storage_options=storage_options) as a:
        return _to_jax(a.read(name), device)


def load(filename: str | os.PathLike[str], device: Any = None, *, target: Any = None, shardings: Any = None,
         stats: dict[str, Any] | None = None, storage_options: Mapping[str, Any] | None = None) -> Any:
    """The saved pytree with ``jax.Array`` leaves (checksums verified).

    ``filename`` is a bpz archive, or a directory holding a sharded checkpoint written by
    :func:`save`. A sharded checkpoint is restored onto the current devices:

    * ``shardings``: a tree matching the saved one with a ``jax.sharding.Sharding`` for each
      array leaf to lay out (``None`` elsewhere); the result has the saved structure;
    * ``target``: a tree of ``jax.ShapeDtypeStruct`` (or arrays) carrying shardings, as Orbax
      takes it; the result has the target's structure, arrays cast to the target's dtypes;
    * neither: each sharded array gets the sharding it was saved with, which needs the same
      devices (same process and device count); otherwise pass one of the above.

    Each process reads only the row ranges of the blocks its own devices hold. Arrays stored
    whole (NumPy arrays, host-local arrays, scalars) come back as on a single archive, or laid
    out by a sharding given for them. ``stats``, a dict, receives ``bytes_read`` (decoded
    bytes of the chunks read on this process) and ``bytes_needed`` (of the blocks this
    process's devices hold).

    ``filename`` may be a URL (``s3://``, ``gs://``, ``az://``, ``http(s)://``) of an archive or
    of the prefix of a sharded checkpoint; ``storage_options`` as for :func:`bpz.open`.
    """
    wants_layout = target is not None or shardings is not None
    if _is_url(os.fspath(filename)):
        return _load_url(os.fspath(filename), device, target, shardings, stats, storage_options)
    if storage_options is not None:
        raise TypeError(f"storage_options apply to URLs (s3://..., gs://..., az://...), not to the path {filename!r}")
    if sharded.is_sharded_checkpoint(filename) or (os.path.isdir(filename) and wants_layout):
        return _load_sharded(filename, target, shardings, stats)
    if os.path.isdir(filename):
        raise CheckpointNotFoundError(
            f"Checkpoint not found: {os.fspath(filename)} is a directory without a committed sharded checkpoint "
            f"(no {COMMIT_NAME})")
    if target is not None or shardings is not None:
        raise ValueError("target= and shardings= restore sharded checkpoints (directories written by bpz.jax.save); "
                         f"{os.fspath(filename)} is a single archive")
    with open_archive(filename) as a:
        return _archive_to_jax(a, device)


def _archive_to_jax(a: Archive, device: Any) -> Any:
    tree = a.load()
    if a.structure is None:
        return {k: _to_jax(v, device) for k, v in tree.items()}
    return jax.tree_util.tree_map(lambda x: _to_jax(x, device) if isinstance(x, np.ndarray) else x, tree)


def _load_url(url: str, device: Any, target: Any, shardings: Any, stats: dict[str, Any] | None,
              options: Mapping[str, Any] | None) -> Any:
    """A URL names an archive or the prefix of a sharded checkpoint. A layout or a final "/"
    asks for the latter; otherwise the archive is tried first (one request when it is one),
    then the commit record under the prefix."""
    if target is not None or shardings is not None or url.endswith("/"):
        return _load_sharded(url, target, shardings, stats, options)
    try:
        a = open_archive(url, storage_options=options)
    except (FileNotFoundError, PermissionError) as e:  # (an http server's 403 for a directory)
        if sharded.is_sharded_checkpoint(url, options):
            return _load_sharded(url, target, shardings, stats, options)
        if isinstance(e, PermissionError):
            raise
        raise CheckpointNotFoundError(f"Checkpoint not found: {url} is neither an archive nor the prefix of a "
                                      f"committed sharded checkpoint (no {COMMIT_NAME} under it)") from None
    with a:
        return _archive_to_jax(a, device)


# -- the distributed runtime ----------------------------------------------------------------------


def _require_sharding_support() -> None:
    have = tuple(int(p) for p in re.findall(r"\d+", jax.__version__)[:3])
    if have < _MIN_JAX:
        need = ".".join(map(str, _MIN_JAX))
        raise ImportError(f"sharded checkpoints need jax >= {need}; this is jax {jax.__version__}")


def _distributed_client() -> Any:
    from jax._src.distributed import global_state  # the runtime's key-value store (Orbax uses it too)

    return global_state.client


_save_numbers = itertools.count()


class _Barrier:
    """The save's rendezvous through the distributed runtime's key-value store.

    Every process calls ``save`` in the same order, so the n-th save of each process is the
    same collective save: its keys are ``bpz/save/<n>/...``. The store works from any
    thread (unlike device collectives), so an async save does its barrier in its background
    thread: write own file -> post status -> (coordinator) gather statuses, commit, post
    outcome -> (others) wait for the outcome.
    """

    def __init__(self, timeout: float) -> None:
        self.index = jax.process_index()
        self.count = jax.process_count()
        self.timeout_ms = max(int(timeout * 1000), 1)
        self.client = _distributed_client() if self.count > 1 else None
        if self.count > 1 and self.client is None:
            raise RuntimeError("jax reports several processes but has no distributed client: "
                               "call jax.distributed.initialize() first")
        self.prefix = f"bpz/save/{next(_save_numbers)}"
        self.local: dict[str, str] = {}

    @property
    def coordinator(self) -> bool:
        return self.index == 0

    def set(self, key: str, value: str) -> None:
        if self.client is None:
            self.local[key] = value
        else:
            self.client.key_value_set(f"{self.prefix}/{key}", value)

    def get(self, key: str, deadline: float, who: str) -> str:
        if self.client is None:
            return self.local[key]
        remaining = max(int((deadline - time.monotonic()) * 1000), 1)
        try:
            return self.client.blocking_key_value_get(f"{self.prefix}/{key}", remaining)
        except Exception as e:  # the runtime's own error type: deadline exceeded, or the job is going down
            raise ShardedSaveError(f"{who} did not report within {self.timeout_ms / 1000:g} s "
                                   f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                                   "nothing was committed") from None

    def token(self) -> str:
        if self.coordinator:
            token = secrets.token_hex(8)
            self.set("token", token)
            return token
        return self.get("token", time.monotonic() + self.timeout_ms / 1000, "process 0")


# -- saving ---------------------------------------------------------------------------------------


def _is_sharded(x: Any) -> bool:
    return isinstance(x, jax.Array) and (not x.is_fully_addressable or len(x.sharding.device_set) > 1)


def _spec_entry(e: Any) -> Any:
    if e is None or isinstance(e, str):
        return e
    if isinstance(e, (tuple, list)):
        return [str(v) for v in e]
    return str(e)  # UNCONSTRAINED and the like: recorded, not restorable by default


def _describe_sharding(s: Any) -> dict[str, Any]:
    if isinstance(s, jax.sharding.NamedSharding):
        mesh = s.mesh
        return {"kind": "named", "mesh_shape": [int(n) for n in mesh.devices.shape],
                "axis_names": [str(a) for a in mesh.axis_names], "spec": [_spec_entry(e) for e in s.spec],
                "device_ids": [int(d.id) for d in mesh.devices.flat]}
    return {"kind": type(s).__name__, "device_ids": sorted(int(d.id) for d in s.device_set)}


def _normal_index(index: tuple[slice, ...], shape: tuple[int, ...]) -> tuple[tuple[int, int], ...]:
    out = []
    for sl, n in zip(index, shape):
        start, stop, step = sl.indices(n)
        if step != 1:
            raise ValueError(f"strided shard index {index} is not supported")
        out.append((start, stop))
    return tuple(out)


class _Plan:
    """Who writes what, computed identically on every process from the global shardings."""

    def __init__(self, me: int, count: int) -> None:
        self.me = me
        self.load = [0] * count  # bytes assigned per process: small blocks go to the least loaded
        self.arrays: dict[str, dict[str, Any]] = {}
        self.mine: dict[str, np.ndarray] = {}  # tensor name -> host data this process writes
        self.numbers = itertools.count()

    def add(self, arr: jax.Array, where: str, copy: bool, placeholder: str) -> str:
        if jax.dtypes.issubdtype(arr.dtype, jax.dtypes.prng_key):
            raise TypeError(f"bpz.jax.save cannot save the sharded typed PRNG key array at {where}: "
                            "save jax.random.key_data(key) instead")
        key = f"a{next(self.numbers)}"
        shape = tuple(int(n) for n in arr.shape)
        dtype = np.dtype(arr.dtype)
        blocks: dict[tuple[tuple[int, int], ...], set[int]] = {}
        for device, device_index in arr.sharding.devices_indices_map(shape).items():
            process = int(device.process_index)  # type: ignore[attr-defined]
            blocks.setdefault(_normal_index(device_index, shape), set()).add(process)
        local: dict[tuple[tuple[int, int], ...], Any] = {}
        for shard in arr.addressable_shards:
            idx = _normal_index(shard.index, shape)
            if idx not in local or shard.replica_id < local[idx].replica_id:
                local[idx] = shard
        pieces: list[dict[str, Any]] = []
        for block in sorted(blocks):
            holders = sorted(blocks[block])
            extents = [hi - lo for lo, hi in block]
            nbytes = math.prod(extents) * dtype.itemsize
            if nbytes == 0:
                continue
            rows = extents[0] if extents else 0
            if len(holders) > 1 and nbytes >= SPLIT_MIN_BYTES and rows >= len(holders):
                bounds = np.linspace(0, rows, len(holders) + 1).round().astype(int)
                parts = [(holders[k], int(bounds[k]), int(bounds[k + 1])) for k in range(len(holders))]
            else:
                owner = min(holders, key=lambda p: (self.load[p], p))
                parts = [(owner, 0, rows)]
            for owner, lo, hi in parts:
                if extents and hi <= lo:
                    continue
                tensor = f"{key}_{len(pieces)}"
                rows_index = [[block[0][0] + lo, block[0][0] + hi]] if extents else []
                part_bytes = (nbytes // rows * (hi - lo)) if extents and rows else nbytes
                self.load[owner] += part_bytes
                index = rows_index + [list(r) for r in block[1:]]
                pieces.append({"process": owner, "tensor": tensor, "index": index})
                if owner == self.me:
                    data = np.asarray(local[block].data)
                    data = data[lo:hi] if extents else data
                    self.mine[tensor] = np.array(data) if copy else data
        self.arrays[placeholder + key] = {"shape": list(shape), "dtype": dtype.name,
                                          "sharding": _describe_sharding(arr.sharding), "pieces": pieces}
        return placeholder + key


def _snapshot_leaf(x: Any) -> Any:
    if isinstance(x, np.ndarray):
        return np.array(x)
    if isinstance(x, jax.Array) and not jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        return np.array(x)  # a later donation must not delete what the background save reads
    return x


def _split_tree(tree: Any, plan: _Plan, placeholder: str, snapshot: bool) -> Any:
    """The commit record's tree: sharded arrays planned and replaced by placeholder strings."""

    def walk(x: Any, where: str) -> Any:
        if isinstance(x, OrderedDict):
            return OrderedDict((k, walk(v, f"{where}[{k!r}]")) for k, v in x.items())
        if isinstance(x, dict):
            return {k: walk(v, f"{where}[{k!r}]") for k, v in x.items()}
        if isinstance(x, list):
            return [walk(v, f"{where}[{i}]") for i, v in enumerate(x)]
        if isinstance(x, tuple):
            items = [walk(v, f"{where}[{i}]") for i, v in enumerate(x)]
            return type(x)(*items) if hasattr(x, "_fields") else tuple(items)
        value = x
        if (not isinstance(x, (np.ndarray, jax.Array, Enum)) and not is_quantity(x) and hasattr(x, "value")
                and isinstance(getattr(x, "value", None), jax.Array)):
            value = x.value  # a BrainPy Variable / brainstate State: saved as its value, as save_pytree does
        if _is_sharded(value):
            return plan.add(value, where or "the root", snapshot, placeholder)
        return _snapshot_leaf(value) if snapshot else value

    return walk(tree, "")


def save(path: str | os.PathLike[str], tree: Any, *, async_manager: AsyncManager | None = None,
         compression: str | None = "auto", chunk_size: int | None = None, sync: bool = True,
         timeout: float = DEFAULT_TIMEOUT, stats: dict[str, Any] | None = None,
         storage_options: Mapping[str, Any] | None = None, _after_commit: Callable[[], Any] | None = None) -> str:
    """Saves ``tree`` as a sharded checkpoint in the directory ``path``; call it on every process.

    Arrays sharded over several devices (or over other processes' devices) are written by the
    processes holding them — each distinct shard once, replicated blocks split by rows among
    their holders — into ``path/process_<i>.<token>.bpz``; every other leaf (scalars, strings,
    NumPy and host-local arrays, as on process 0) goes into the commit record
    ``path/commit.bpz``, which process 0 writes once every process has written its file. A
    save into an existing checkpoint replaces it only at that commit. Saves are collective:
    every process must make the same sequence of ``save`` calls.

    With ``async_manager`` the call returns once the shards are copied to host memory; the
    writes, the barrier and the commit run in the manager's background thread, and failures
    come out of ``async_manager.wait_previous_save()`` (or the next save, or ``close()``).

    A process that fails to write, or does not report within ``timeout`` seconds, makes the
    save raise :class:`ShardedSaveError` on every process; nothing is committed and the data
    files written for it are removed. ``compression``, ``chunk_size`` (bytes a chunk, the
    granularity of a row-range read) and ``sync`` are as in :func:`bpz.save_pytree`. ``stats``,
    a dict, receives this process's ``bytes_written`` (tensor bytes) and ``file``, and once the
    save is done ``write_s`` (its file) and ``commit_s`` (waiting for the others and the commit).

    ``compression="auto"`` stays the default although model state is mostly incompressible
    floats: its sample probe costs ~20 % of the write of a random float32 shard, but zero or
    constant tensors (fresh optimizer moments, masks) are then stored in a fraction of their size
    and written faster. Pass ``compression=None`` for state known to be incompressible.

    ``path`` may be a prefix on object storage (``s3://bucket/run/step_10``, ``gs://``,
    ``az://``) with ``storage_options`` as for :func:`bpz.open`; ``http(s)://`` cannot be written.
    """
    began = time.perf_counter()
    _require_sharding_support()
    store = sharded.store_for(path, storage_options)
    store.check_writable()  # before the rendezvous: every process raises the same error at once
    barrier = _Barrier(timeout)
    try:
        if async_manager is not None:
            if getattr(async_manager, "closed", False):
                raise RuntimeError("Cannot save with a closed AsyncManager")
            async_manager.wait_previous_save()
        plan = _Plan(barrier.index, barrier.count)
        commit_tree = _split_tree(tree, plan, sharded.placeholder_prefix(tree), snapshot=async_manager is not None)
        planned = time.perf_counter()
        token = barrier.token()
    except BaseException as e:
        barrier.set(f"status/{barrier.index}", json.dumps({"ok": False, "error": f"{type(e).__name__}: {e}"}))
        raise
    data_name = sharded.data_file_name(barrier.index, token)
    mine = plan.mine
    plan.mine = {}
    if stats is not None:
        stats.update(bytes_written=sum(a.nbytes for a in mine.values()), file=store.path(data_name),
                     plan_s=planned - began, token_s=time.perf_counter() - planned)
    if not barrier.coordinator:
        commit_tree = None  # only process 0 writes the tree

    def job() -> None:
        _write_and_commit(store, barrier, token, mine, commit_tree, plan, dict(compression=compression,
                          chunk_size=chunk_size, sync=sync), _after_commit, stats)

    if async_manager is None:
        job()
    elif isinstance(async_manager, AsyncManager):
        async_manager.save_async(job, str(store))
    else:
        async_manager.save_async(job)
    return os.fspath(path)


def _write_and_commit(store: sharded.Store, barrier: _Barrier, token: str, mine: dict[str, np.ndarray],
                      commit_tree: Any, plan: _Plan, options: dict[str, Any],
                      after_commit: Callable[[], Any] | None, stats: dict[str, Any] | None = None) -> None:
    data_name = sharded.data_file_name(barrier.index, token)
    started = time.perf_counter()
    try:
        store.makedirs()
        stamp = store.write(data_name, mine, **options)
    except BaseException as e:
        barrier.set(f"status/{barrier.index}", json.dumps({"ok": False, "error": f"{type(e).__name__}: {e}"}))
        store.remove(data_name)
        if barrier.coordinator:
            barrier.set("outcome", json.dumps({"ok": False, "error": f"process 0 failed to write: {e}"}))
        raise
    mine.clear()
    written = time.perf_counter()
    if stats is not None:
        stats["write_s"] = written - started  # this process's file: encode, checksum, write, fsync
    barrier.set(f"status/{barrier.index}", json.dumps({"ok": True, **stamp}))
    deadline = time.monotonic() + barrier.timeout_ms / 1000
    if not barrier.coordinator:
        outcome = json.loads(barrier.get("outcome", deadline, "process 0 (the commit)"))
        if not outcome["ok"]:
            if outcome.get("keep"):
                raise ShardedSaveError(f"the save of {store} failed: {outcome['error']} (whether its commit record "
                                       "is in place could not be checked: its files are kept)")
            store.remove(data_name)
            raise ShardedSaveError(f"the save of {store} was not committed: {outcome['error']}")
        if stats is not None:
            stats["commit_s"] = time.perf_counter() - written
        return
    try:
        files: dict[str, dict[str, Any]] = {}
        failures = []
        for p in range(barrier.count):
            status = json.loads(barrier.get(f"status/{p}", deadline, f"process {p}"))
            if status["ok"]:
                files[sharded.data_file_name(p, token)] = {"size": status["size"], "tail_sha256": status["tail_sha256"],
                                                           "process": p}
            else:
                failures.append(f"process {p}: {status['error']}")
        if failures:
            raise ShardedSaveError(f"the save of {store} failed on {len(failures)} process(es), nothing was "
                                   f"committed: " + "; ".join(failures))
        arrays = {}
        for key, a in plan.arrays.items():
            pieces = [{"file": sharded.data_file_name(p["process"], token), "tensor": p["tensor"], "index": p["index"]}
                      for p in a["pieces"]]
            arrays[key] = {**a, "pieces": pieces}
        manifest = {"version": MANIFEST_VERSION, "processes": barrier.count, "files": files, "arrays": arrays}
        try:
            store.write(COMMIT_NAME, commit_tree, metadata={MANIFEST_KEY: manifest}, sync=options["sync"])
        except Exception:
            if _commit_state(store, token) is not True:
                raise
            # in place although its write reported an error (say a lost response): committed
    except BaseException as e:
        message = str(e) if isinstance(e, ShardedSaveError) else f"process 0 failed to commit: {type(e).__name__}: {e}"
        state = _commit_state(store, token)
        # the others remove their files only if this save's commit record is surely not in place
        barrier.set("outcome", json.dumps({"ok": False, "keep": state is not False, "error": message}))
        if state is False:
            for name in store.list():
                if name.endswith(f".{token}.bpz"):
                    store.remove(name)
        raise
    # Committed. What follows only reclaims space: a failure loses nothing (the next save
    # retries), so it warns instead of turning a committed save into an error. The outcome is
    # posted after it, so that when save returns anywhere the old files are gone (the next
    # save_checkpoint's listing must agree on every process).
    try:
        _remove_unreferenced(store, files)
        if after_commit is not None:
            after_commit()
    except Exception as e:
        warnings.warn(f"{store}: saved and committed, but removing the files of earlier saves failed "
                      f"({type(e).__name__}: {e}); the next save tries again", RuntimeWarning, stacklevel=1)
    finally:
        barrier.set("outcome", json.dumps({"ok": True}))
    if stats is not None:
        stats["commit_s"] = time.perf_counter() - written  # waiting for the others + the commit record


def _commit_state(store: sharded.Store, token: str) -> bool | None:
    """Whether the commit record in place is this save's: True; False when it is absent or
    another save's; None when it cannot be read now (then nothing may be removed)."""
    try:
        with store.open(COMMIT_NAME) as a:
            return any(name.endswith(f".{token}.bpz") for name in a.metadata[MANIFEST_KEY]["files"])
    except FileNotFoundError:
        return False
    except Exception:
        return None


def _remove_unreferenced(store: sharded.Store, files: dict[str, Any]) -> None:
    """Data files of earlier or failed saves, and temporaries of killed writers, once the new commit is in place."""
    for name in store.list():
        if (sharded.is_data_file(name) and name not in files) or sharded.is_temporary(name):
            store.remove(name)


# -- restoring ------------------------------------------------------------------------------------


def _default_sharding(rec: ArrayRecord, where: str) -> Any:
    s = rec.sharding or {}
    if s.get("kind") == "named":
        by_id = {d.id: d for d in jax.devices()}
        ids = s.get("device_ids", [])
        if len(by_id) == len(ids) and all(i in by_id for i in ids) and all(
                e is None or isinstance(e, (str, list)) for e in s["spec"]):
            devices = np.array([by_id[i] for i in ids], dtype=object).reshape(s["mesh_shape"])
            mesh = jax.sharding.Mesh(devices, tuple(s["axis_names"]))
            spec = jax.sharding.PartitionSpec(*[tuple(e) if isinstance(e, list) else e for e in s["spec"]])
            return jax.sharding.NamedSharding(mesh, spec)
    raise ValueError(
        f"{where}: saved with a sharding over devices {s.get('device_ids')} that this job does not have "
        f"({jax.device_count()} devices); pass shardings= or target= to lay it out on this job's devices")


def _place(shape: tuple[int, ...], sharding: Any,
           read: Callable[[list[tuple[tuple[int, int], ...]]], list[np.ndarray]], needed: list[int]) -> jax.Array:
    """A global array from the blocks this process's devices hold, each block read once (all
    in one call) into one host buffer for all the local devices holding it: on CPU, XLA uses
    an aligned host buffer in place, so replicas share it (jax arrays are immutable, and a
    donated one is not written in place), elsewhere each device gets its copy from it."""
    by_region: dict[tuple[tuple[int, int], ...], list[Any]] = {}
    order = []
    for device, index in sharding.addressable_devices_indices_map(shape).items():
        region = _normal_index(index, shape)
        by_region.setdefault(region, []).append(device)
        order.append(device)
    regions = list(by_region)
    hosts = read(regions)
    buffers = {}
    for region, host in zip(regions, hosts):
        devices = by_region[region]
        needed[0] += host.nbytes
        for device, buffer in zip(devices, jax.device_put([host] * len(devices), devices)):
            buffers[device] = buffer
    del hosts
    return jax.make_array_from_single_device_arrays(shape, sharding, [buffers[d] for d in order])


def _leaves_by_path(tree: Any, is_leaf: Callable[[Any], bool]) -> tuple[dict[str, Any], Any]:
    flat, treedef = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_leaf)
    return {jax.tree_util.keystr(p): leaf for p, leaf in flat}, (flat, treedef)


def _load_sharded(path: Any, target: Any, shardings: Any, stats: dict[str, Any] | None,
                  storage_options: Mapping[str, Any] | None = None) -> Any:
    _require_sharding_support()
    needed = [0]
    with ShardedCheckpoint(path, storage_options) as ckpt:
        saved = ckpt.tree(lambda rec: rec)
        is_record = lambda x: isinstance(x, ArrayRecord)  # noqa: E731
        saved_leaves, _ = _leaves_by_path(saved, is_record)

        def build(where: str, value: Any, sharding: Any, dtype: Any = None) -> Any:
            if isinstance(value, ArrayRecord):
                s = sharding if sharding is not None else _default_sharding(value, f"{ckpt.store} {where}")
                cache: dict[Any, np.ndarray] = {}

                def read(regions: list[Any]) -> list[np.ndarray]:
                    blocks = ckpt.read_regions([(value, r) for r in regions], cache)
                    return [b if dtype is None or b.dtype == dtype else b.astype(dtype) for b in blocks]
                return _place(value.shape, s, read, needed)
            if sharding is not None:
                host = np.asarray(value) if dtype is None else np.asarray(value, dtype=dtype)
                return _place(host.shape, sharding,
                              lambda regions: [host[tuple(slice(lo, hi) for lo, hi in r)] for r in regions], needed)
            if isinstance(value, np.ndarray):
                return jax.numpy.asarray(value if dtype is None else value.astype(dtype))
            return value

        if target is not None:
            is_target_leaf = lambda x: isinstance(x, (jax.ShapeDtypeStruct, jax.Array, np.ndarray))  # noqa: E731
            flat, treedef = jax.tree_util.tree_flatten_with_path(target, is_leaf=is_target_leaf)
            out = []
            for p, t in flat:
                where = jax.tree_util.keystr(p)
                if where not in saved_leaves:
                    raise ValueError(f"target{where}: not in the checkpoint {ckpt.store}")
                value = saved_leaves[where]
                shape = getattr(t, "shape", None)
                have = value.shape if isinstance(value, ArrayRecord) else np.shape(value)
                if shape is not None and tuple(shape) != tuple(have):
                    raise ValueError(f"Array shape mismatch: expected {tuple(shape)}, got {tuple(have)} "
                                     f"at target{where}")
                out.append(build(where, value, getattr(t, "sharding", None), getattr(t, "dtype", None)))
            result = jax.tree_util.tree_unflatten(treedef, out)
        else:
            given: dict[str, Any] = {}
            if shardings is not None:
                is_sharding_leaf = lambda x: x is None or isinstance(x, jax.sharding.Sharding)  # noqa: E731
                given, _ = _leaves_by_path(shardings, is_sharding_leaf)
                unknown = sorted(k for k, v in given.items() if v is not None and k not in saved_leaves)
                if unknown:
                    raise ValueError(f"shardings{unknown[0]}: not in the checkpoint {ckpt.store}")
            flat, treedef = jax.tree_util.tree_flatten_with_path(saved, is_leaf=is_record)
            out = [build(jax.tree_util.keystr(p), v, given.get(jax.tree_util.keystr(p))) for p, v in flat]
            result = jax.tree_util.tree_unflatten(treedef, out)
        if stats is not None:
            stats.update(bytes_read=ckpt.bytes_read, bytes_needed=needed[0])
    return result


# -- numbered checkpoints ---------------------------------------------------------------------------

_STEP = re.compile(r"-?\d+")

Options = Mapping[str, Any] | None


def _step_path(ckpt_dir: str, name: str, options: Options) -> str:
    if _is_url(ckpt_dir):
        return str(sharded.store_for(ckpt_dir, options).child(name))
    return os.path.join(ckpt_dir, name)


def checkpoint_steps(ckpt_dir: str | os.PathLike[str], prefix: str = "checkpoint_", *,
                     storage_options: Options = None) -> list[tuple[int, str]]:
    """``(step, path)`` of every committed sharded checkpoint ``{prefix}{step}`` in ``ckpt_dir``, oldest first.
    A directory whose save was never committed is not listed. On object storage that is one
    listing, then one HEAD of the commit record per step found."""
    ckpt_dir = os.fspath(ckpt_dir)
    parent = sharded.store_for(ckpt_dir, storage_options)
    found = []
    for name in parent.list():
        number = name[len(prefix):] if name.startswith(prefix) else ""
        if _STEP.fullmatch(number):
            child = parent.child(name)
            if child.is_checkpoint():
                found.append((int(number), child.shown))
    return sorted(found)


def latest_checkpoint(ckpt_dir: str | os.PathLike[str], prefix: str = "checkpoint_", *,
                      storage_options: Options = None) -> str | None:
    """Path of the newest committed sharded checkpoint in ``ckpt_dir``, or None."""
    steps = checkpoint_steps(ckpt_dir, prefix, storage_options=storage_options)
    return steps[-1][1] if steps else None


def _remove_checkpoint(path: str, options: Options) -> None:
    """Uncommits first (the commit record goes before its data), then removes the files bpz wrote."""
    store = sharded.store_for(path, options)
    store.remove(COMMIT_NAME)
    for name in store.list():
        if sharded.is_data_file(name) or sharded.is_temporary(name):
            store.remove(name)
    store.remove_dir()


def save_checkpoint(ckpt_dir: str | os.PathLike[str], tree: Any, step: int, *, prefix: str = "checkpoint_",
                    keep: int = 1, overwrite: bool = False, async_manager: AsyncManager | None = None,
                    storage_options: Options = None, **save_options: Any) -> str:
    """Saves ``tree`` as the sharded checkpoint ``{ckpt_dir}/{prefix}{step}`` (on every process) and keeps
    the newest ``keep`` committed ones.

    As :func:`bpz.checkpoints.save_checkpoint`: a step at or below the newest raises
    :class:`InvalidCheckpointError` unless ``overwrite=True`` (which then also removes the later
    steps); nothing is removed before the new checkpoint is committed, and a failed save
    removes nothing. Removal is done by process 0 right after its commit (in the background
    for an async save). ``ckpt_dir`` may be a prefix on object storage (``storage_options``
    as for :func:`bpz.open`). Other options go to :func:`save`.
    """
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)):
        raise TypeError(f"step must be an int, not {type(step).__name__}")
    if keep < 1:
        raise ValueError(f"keep must be at least 1, not {keep}")
    if "/" in prefix or os.sep in prefix or "\0" in prefix:
        raise ValueError(f"prefix must be a plain file-name prefix, without a directory part: {prefix!r}")
    if async_manager is not None:
        async_manager.wait_previous_save()  # the listing below must include its result
    ckpt_dir = os.fspath(ckpt_dir)
    path = _step_path(ckpt_dir, f"{prefix}{int(step)}", storage_options)
    existing = checkpoint_steps(ckpt_dir, prefix, storage_options=storage_options)
    if existing and step <= existing[-1][0] and not overwrite:
        raise InvalidCheckpointError(f'Trying to save an outdated checkpoint at step: "{step}" and path: "{path}".')
    # (on a bucket an object named like the step does not stand in the way of its prefix)
    if not _is_url(path) and os.path.lexists(path) and not os.path.isdir(path):
        raise InvalidCheckpointPath(f'Invalid checkpoint at "{path}": a file that is not a sharded checkpoint '
                                    "is there.")

    def retain() -> None:
        steps = checkpoint_steps(ckpt_dir, prefix, storage_options=storage_options)
        later = [p for s, p in steps if s > step]
        older = [(s, p) for s, p in steps if s < step]
        for p in reversed(later):
            _remove_checkpoint(p, storage_options)
        for _, p in older[: max(len(older) - (keep - 1), 0)]:
            _remove_checkpoint(p, storage_options)

    return save(path, tree, async_manager=async_manager, storage_options=storage_options, _after_commit=retain,
                **save_options)


def restore_checkpoint(ckpt_dir: str | os.PathLike[str], step: int | None = None, *, prefix: str = "checkpoint_",
                       target: Any = None, shardings: Any = None, stats: dict[str, Any] | None = None,
                       storage_options: Options = None) -> Any:
    """Restores the committed sharded checkpoint of ``step`` (the newest by default) from ``ckpt_dir``;
    ``target``/``shardings``/``storage_options`` as in :func:`load`. No committed checkpoint raises
    :class:`~bpz.errors.CheckpointNotFoundError`."""
    if step is None:
        path = latest_checkpoint(ckpt_dir, prefix, storage_options=storage_options)
        if path is None:
            raise CheckpointNotFoundError(f"Checkpoint not found: no committed {prefix}<step> in {os.fspath(ckpt_dir)}")
    else:
        path = _step_path(os.fspath(ckpt_dir), f"{prefix}{int(step)}", storage_options)
    return _load_sharded(path, target, shardings, stats, storage_options)
