"""Adapters: how each tool saves, loads, reads one tensor and reads a row range.

Every adapter does what a user of that tool would write, with the tool's
default settings. A ``Tool`` names the file it works on (``file_of``): read
variants such as ``bpz-raw/pread`` re-read the file that ``bpz-raw`` saved.

Ops (a tool implements a subset):
  save(tree, leaves, path)        -> None   (the harness times fsync separately)
  save_nosync(...)                -> None   (bpz only: its public API always fsyncs)
  load(path, ctx)                 -> object (owned arrays unless the tool is a 'views' variant)
  one(path, ctx, view)            -> array  (open + read the middle tensor)
  rows(path, ctx)                 -> array  (open + read a row range of the largest tensor)
  codec(leaves)                   -> dict   (in-memory codec pseudo-tools)
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from workloads import BF16


@dataclass
class Ctx:
    """What a read op needs to know about the workload."""

    one_name: str
    one_path: list[str]
    one_offset: int
    one_nbytes: int
    one_dtype: str
    one_shape: list[int]
    row_name: str
    row_path: list[str]
    row_offset: int
    row_dtype: str
    row_shape: list[int]
    lo: int
    hi: int
    manifest: dict[str, Any] = field(default_factory=dict)


@dataclass
class Tool:
    name: str
    group: str  # bpz | alt | limit | codec
    label: str
    ops: tuple[str, ...]
    requires: tuple[str, ...] = ()
    file_of: str | None = None  # tool whose file this one reads (default: itself)
    ext: str = ""
    note: str = ""
    views: bool = False  # 'load' returns zero-copy views, not owned arrays
    impl: dict[str, Callable[..., Any]] = field(default_factory=dict)

    @property
    def file_tool(self) -> str:
        return self.file_of or self.name

    def available(self) -> str | None:
        """None if usable, else why not."""
        for mod in self.requires:
            if importlib.util.find_spec(mod) is None:
                return f"module {mod!r} is not installed"
        return None


def _get(tree: Any, path: list[str]) -> Any:
    for k in path:
        tree = tree[k]
    return tree


def fsync_path(path: str) -> None:
    """fsyncs a file, or every file and directory under a directory, and the parent directory."""
    paths = []
    if os.path.isdir(path):
        for root, dirs, files in os.walk(path):
            paths += [os.path.join(root, f) for f in files]
            paths += [os.path.join(root, d) for d in dirs]
        paths.append(path)
    else:
        paths.append(path)
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    parent = os.path.dirname(os.path.abspath(path))
    fd = os.open(parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def files_under(path: str) -> list[str]:
    if os.path.isdir(path):
        return [os.path.join(r, f) for r, _, fs in os.walk(path) for f in fs]
    return [path] if os.path.exists(path) else []


def path_size(path: str) -> int:
    return sum(os.path.getsize(p) for p in files_under(path))


def drop_cache(path: str) -> None:
    """Cold cache: fsync, then drop the file's pages (posix_fadvise DONTNEED)."""
    for p in files_under(path):
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def warm_cache(path: str) -> None:
    """Warm cache: read every byte once (into a small reused buffer)."""
    buf = bytearray(8 << 20)
    for p in files_under(path):
        with open(p, "rb", buffering=0) as f:
            while f.readinto(buf):
                pass


def remove(path: str) -> None:
    if os.path.isdir(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.remove(path)


def _pread_into(fd: int, arr: np.ndarray, offset: int) -> None:
    view = memoryview(arr.reshape(-1).view(np.uint8))
    got = 0
    n = len(view)
    while got < n:
        k = os.preadv(fd, [view[got:]], offset + got)
        if k <= 0:
            raise EOFError("short read")
        got += k


# ----------------------------------------------------------------------------- bpz


def _bpz_save(compression: str | None) -> Callable[..., None]:
    def save(tree: Any, leaves: Any, path: str) -> None:
        import bpz

        bpz.save_pytree(path, tree, verbose=False, compression=compression)

    return save


def _bpz_save_nosync(compression: str | None) -> Callable[..., None]:
    def save(tree: Any, leaves: Any, path: str) -> None:
        import bpz

        try:
            bpz.save_pytree(path, tree, verbose=False, compression=compression, sync=False)
        except TypeError:  # a bpz without save_pytree(sync=...): the same writer, sync=False
            from bpz.pytree import flatten
            from bpz.write import write_archive

            t, lv = flatten(tree)
            write_archive(path, t, lv, compression=compression, sync=False)

    return save


def _bpz_save_filter(filt: str) -> Callable[..., None]:
    def save(tree: Any, leaves: Any, path: str) -> None:
        # compression="zstd" with the filter forced (where the dtype allows it): no per-tensor choice.
        from bpz import _bpz
        from bpz.pytree import flatten

        t, lv = flatten(tree)
        w = _bpz.Writer(path, compression="zstd", filter=filt, sync=True)
        w.add_tensors([(leaf.name, leaf.dtype, None, leaf.array) for leaf in lv])
        w.set_tree(t)
        w.finish()

    return save


def _bpz_load(backend: str = "mmap", parallel: bool = True) -> Callable[..., Any]:
    def load(path: str, ctx: Ctx) -> Any:
        import bpz

        if backend == "mmap":
            return bpz.load_pytree(path, parallel=parallel)
        with bpz.open(path, backend=backend, parallel=parallel) as a:
            return a.load()

    return load


def _bpz_views(path: str, ctx: Ctx) -> Any:
    import bpz

    with bpz.open(path) as a:
        return a.tree()


def _bpz_one(backend: str = "mmap") -> Callable[..., Any]:
    def one(path: str, ctx: Ctx, view: bool) -> Any:
        import bpz

        with bpz.open(path, backend=backend) as a:
            return a[ctx.one_name] if view else a.read(ctx.one_name)

    return one


def _bpz_rows(backend: str = "mmap") -> Callable[..., Any]:
    def rows(path: str, ctx: Ctx) -> Any:
        import bpz

        with bpz.open(path, backend=backend) as a:
            return a.get_slice(ctx.row_name)[ctx.lo : ctx.hi]

    return rows


# ----------------------------------------------------------------------------- safetensors


def _st_save(tree: Any, leaves: Any, path: str) -> None:
    from safetensors.numpy import save_file

    save_file({"/".join(p): a for p, a in leaves}, path)


def _st_load(path: str, ctx: Ctx) -> Any:
    from safetensors.numpy import load_file

    return load_file(path)


def _st_one(path: str, ctx: Ctx, view: bool) -> Any:
    from safetensors import safe_open

    with safe_open(path, framework="np") as f:
        return f.get_tensor(ctx.one_name)


def _st_rows(path: str, ctx: Ctx) -> Any:
    from safetensors import safe_open

    with safe_open(path, framework="np") as f:
        return f.get_slice(ctx.row_name)[ctx.lo : ctx.hi]


# ----------------------------------------------------------------------------- numpy


def _npz_save(compressed: bool) -> Callable[..., None]:
    def save(tree: Any, leaves: Any, path: str) -> None:
        fn = np.savez_compressed if compressed else np.savez
        fn(path, **{"/".join(p): a for p, a in leaves})

    return save


def _npz_load(path: str, ctx: Ctx) -> Any:
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def _npz_one(path: str, ctx: Ctx, view: bool) -> Any:
    with np.load(path) as z:  # npz cannot mmap (numpy #5976): the member is read whole
        return z[ctx.one_name]


def _npz_rows(path: str, ctx: Ctx) -> Any:
    with np.load(path) as z:  # reads (and inflates) the whole member
        return z[ctx.row_name][ctx.lo : ctx.hi]


def _npy_file(path: str, p: list[str]) -> str:
    return os.path.join(path, *p) + ".npy"


def _npy_save(tree: Any, leaves: Any, path: str) -> None:
    for p, a in leaves:
        f = _npy_file(path, list(p))
        os.makedirs(os.path.dirname(f), exist_ok=True)
        np.save(f, a)


def _npy_load(mmap: bool) -> Callable[..., Any]:
    def load(path: str, ctx: Ctx) -> Any:
        return {"/".join(e["path"]): np.load(_npy_file(path, e["path"]), mmap_mode="r" if mmap else None)
                for e in ctx.manifest["leaves"]}

    return load


def _npy_one(path: str, ctx: Ctx, view: bool) -> Any:
    return np.load(_npy_file(path, ctx.one_path), mmap_mode="r" if view else None)


def _npy_rows(path: str, ctx: Ctx) -> Any:
    return np.array(np.load(_npy_file(path, ctx.row_path), mmap_mode="r")[ctx.lo : ctx.hi])


# ----------------------------------------------------------------------------- h5py


def _h5_save(**kw: Any) -> Callable[..., None]:
    def save(tree: Any, leaves: Any, path: str) -> None:
        import h5py

        with h5py.File(path, "w") as f:
            for p, a in leaves:
                if kw and a.ndim > 0:  # HDF5 filters need chunked storage; scalars can't have it
                    f.create_dataset("/".join(p), data=a, **kw)
                else:
                    f.create_dataset("/".join(p), data=a)

    return save


def _h5_load(path: str, ctx: Ctx) -> Any:
    import h5py

    out: dict[str, Any] = {}
    with h5py.File(path, "r") as f:
        def visit(name: str, obj: Any) -> None:
            if isinstance(obj, h5py.Dataset):
                out[name] = obj[()]

        f.visititems(visit)
    return out


def _h5_one(path: str, ctx: Ctx, view: bool) -> Any:
    import h5py

    with h5py.File(path, "r") as f:
        return f[ctx.one_name][()]


def _h5_rows(path: str, ctx: Ctx) -> Any:
    import h5py

    with h5py.File(path, "r") as f:
        return f[ctx.row_name][ctx.lo : ctx.hi]


# ----------------------------------------------------------------------------- flax msgpack (BrainPy .bp)


def _mp_save(tree: Any, leaves: Any, path: str) -> None:
    # brainpy.checkpoints.save_pytree: to_bytes(target) then one write.
    from flax.serialization import msgpack_serialize

    data = msgpack_serialize(tree)
    with open(path, "wb") as f:
        f.write(data)


def _mp_load(path: str, ctx: Ctx) -> Any:
    from flax.serialization import msgpack_restore

    with open(path, "rb") as f:
        data = f.read()
    return msgpack_restore(data)


def _mp_one(path: str, ctx: Ctx, view: bool) -> Any:
    return _get(_mp_load(path, ctx), ctx.one_path)  # no index: the whole file is parsed


def _mp_rows(path: str, ctx: Ctx) -> Any:
    return _get(_mp_load(path, ctx), ctx.row_path)[ctx.lo : ctx.hi]


def _legacy_mp_save(tree: Any, leaves: Any, path: str) -> None:
    from bpz._legacy.bp_msgpack import write_bp

    write_bp(path, tree)


def _legacy_mp_load(path: str, ctx: Ctx) -> Any:
    from bpz._legacy.bp_msgpack import read_bp

    return read_bp(path)


# ----------------------------------------------------------------------------- orbax


def _ocp_save(tree: Any, leaves: Any, path: str) -> None:
    import orbax.checkpoint as ocp

    ck = ocp.StandardCheckpointer()
    ck.save(os.path.abspath(path), tree)
    ck.wait_until_finished()
    ck.close()


def _ocp_load(path: str, ctx: Ctx) -> Any:
    import orbax.checkpoint as ocp

    ck = ocp.StandardCheckpointer()
    out = ck.restore(os.path.abspath(path))
    ck.close()
    return out


def _ocp_partial(path: str, leaf_path: list[str], dtype: str, shape: list[int]) -> Any:
    import orbax.checkpoint as ocp

    from workloads import parse_dtype

    item: Any = np.zeros(shape, parse_dtype(dtype))
    args: Any = ocp.ArrayRestoreArgs(restore_type=np.ndarray)
    for k in reversed(leaf_path):
        item, args = {k: item}, {k: args}
    pc = ocp.PyTreeCheckpointer()
    out = pc.restore(os.path.abspath(path), args=ocp.args.PyTreeRestore(item=item, restore_args=args, partial_restore=True))
    return _get(out, leaf_path)


def _ocp_one(path: str, ctx: Ctx, view: bool) -> Any:
    return _ocp_partial(path, ctx.one_path, ctx.one_dtype, ctx.one_shape)


def _ocp_rows(path: str, ctx: Ctx) -> Any:
    return _ocp_partial(path, ctx.row_path, ctx.row_dtype, ctx.row_shape)[ctx.lo : ctx.hi]  # whole tensor restored


# ----------------------------------------------------------------------------- torch


def _to_torch(a: np.ndarray) -> Any:
    import torch

    if a.dtype == BF16:
        return torch.from_numpy(a.view(np.uint16)).view(torch.bfloat16)
    return torch.from_numpy(a)


def _torch_prepare(tree: Any) -> Any:
    if isinstance(tree, dict):
        return {k: _torch_prepare(v) for k, v in tree.items()}
    return _to_torch(tree)


def _torch_save(tree: Any, leaves: Any, path: str) -> None:
    import torch

    torch.save(tree, path)


def _torch_load(mmap: bool) -> Callable[..., Any]:
    def load(path: str, ctx: Ctx) -> Any:
        import torch

        return torch.load(path, mmap=mmap)

    return load


def _torch_one(path: str, ctx: Ctx, view: bool) -> Any:
    import torch

    t = _get(torch.load(path, mmap=True), ctx.one_path)
    return t if view else t.clone()


def _torch_rows(path: str, ctx: Ctx) -> Any:
    import torch

    return _get(torch.load(path, mmap=True), ctx.row_path)[ctx.lo : ctx.hi].clone()


# ----------------------------------------------------------------------------- physical limits


def _limit_write(tree: Any, leaves: Any, path: str) -> None:
    with open(path, "wb", buffering=0) as f:
        for _, a in leaves:
            mv = memoryview(a.reshape(-1).view(np.uint8))
            n = 0
            while n < len(mv):
                n += f.write(mv[n:])


def _limit_read_fresh(path: str, ctx: Ctx) -> Any:
    """Read the page-cached raw file into freshly allocated arrays (page faults included)."""
    from workloads import parse_dtype

    out = []
    fd = os.open(path, os.O_RDONLY)
    try:
        for e in ctx.manifest["leaves"]:
            a = np.empty(e["shape"], parse_dtype(e["dtype"]))
            if e["nbytes"]:
                _pread_into(fd, a, e["offset"])
            out.append(a)
    finally:
        os.close(fd)
    return out


def _limit_read_touched_prepare(ctx: Ctx) -> Any:
    buf = np.empty(ctx.manifest["total_bytes"], np.uint8)
    buf.fill(1)
    return buf


def _limit_read_touched(path: str, ctx: Ctx, buf: Any) -> Any:
    fd = os.open(path, os.O_RDONLY)
    try:
        _pread_into(fd, buf, 0)
    finally:
        os.close(fd)
    return buf


def _limit_one(path: str, ctx: Ctx, view: bool) -> Any:
    from workloads import parse_dtype

    a = np.empty(ctx.one_shape, parse_dtype(ctx.one_dtype))
    fd = os.open(path, os.O_RDONLY)
    try:
        if a.nbytes:
            _pread_into(fd, a, ctx.one_offset)
    finally:
        os.close(fd)
    return a


def _limit_rows(path: str, ctx: Ctx) -> Any:
    from workloads import parse_dtype

    dt = parse_dtype(ctx.row_dtype)
    row_bytes = int(np.prod(ctx.row_shape[1:], dtype=np.int64)) * dt.itemsize
    a = np.empty([ctx.hi - ctx.lo, *ctx.row_shape[1:]], dt)
    fd = os.open(path, os.O_RDONLY)
    try:
        _pread_into(fd, a, ctx.row_offset + ctx.lo * row_bytes)
    finally:
        os.close(fd)
    return a


def _memcpy_fresh(leaves: Any) -> Any:
    return [a.copy() for _, a in leaves]


def _memcpy_touched_prepare(leaves: Any) -> Any:
    out = [np.empty_like(a) for _, a in leaves]
    for o in out:
        o.reshape(-1).view(np.uint8).fill(1)
    return out


def _memcpy_touched(leaves: Any, out: Any) -> Any:
    for (_, a), o in zip(leaves, out):
        np.copyto(o, a)
    return out


# ----------------------------------------------------------------------------- bare codecs


def _shuffle(a: np.ndarray) -> np.ndarray:
    s = a.dtype.itemsize
    return a.reshape(-1).view(np.uint8).reshape(-1, s).T.copy()


def _unshuffle_into(buf: Any, out: np.ndarray) -> None:
    s = out.dtype.itemsize
    src = np.frombuffer(buf, np.uint8).reshape(s, -1)
    out.reshape(-1).view(np.uint8).reshape(-1, s)[...] = src.T


def codec_zstd_frame(leaves: Any, timer: Callable[[], float]) -> dict[str, Any]:
    """zstd level 1, threads=2, one frame per array after a numpy byte shuffle.

    Decompression of a single frame cannot use two threads (zstd has no
    multi-threaded decoder), so this variant decodes on one core."""
    import zstandard

    cctx = zstandard.ZstdCompressor(level=1, threads=2)
    t0 = timer()
    frames = [cctx.compress(_shuffle(a)) for _, a in leaves]
    t1 = timer()
    dctx = zstandard.ZstdDecompressor()
    outs = []
    for (_, a), fr in zip(leaves, frames):
        o = np.empty_like(a)
        _unshuffle_into(dctx.decompress(fr), o)
        outs.append(o)
    t2 = timer()
    return {"compress": t1 - t0, "decompress": t2 - t1, "stored": sum(len(f) for f in frames), "out": outs}


CODEC_CHUNK = 2 << 20


def codec_zstd_chunks(leaves: Any, timer: Callable[[], float]) -> dict[str, Any]:
    """zstd level 1 + numpy byte shuffle per 2 MiB chunk, on a pool of 2 threads (both cores, both ways)."""
    import zstandard

    local = __import__("threading").local()

    def cctx() -> Any:
        c = getattr(local, "c", None)
        if c is None:
            c = local.c = zstandard.ZstdCompressor(level=1)
        return c

    def dctx() -> Any:
        d = getattr(local, "d", None)
        if d is None:
            d = local.d = zstandard.ZstdDecompressor()
        return d

    jobs = []
    for li, (_, a) in enumerate(leaves):
        flat = a.reshape(-1)
        step = max(1, CODEC_CHUNK // a.dtype.itemsize)
        for s in range(0, flat.size, step):
            jobs.append((li, s, min(flat.size, s + step)))

    def comp(j: tuple[int, int, int]) -> bytes:
        li, s, e = j
        return cctx().compress(_shuffle(leaves[li][1].reshape(-1)[s:e]))

    outs = [np.empty_like(a) for _, a in leaves]

    def decomp(arg: tuple[tuple[int, int, int], bytes]) -> None:
        (li, s, e), fr = arg
        o = outs[li].reshape(-1)[s:e]
        _unshuffle_into(dctx().decompress(fr, max_output_size=o.nbytes), o)

    with ThreadPoolExecutor(2) as pool:
        t0 = timer()
        frames = list(pool.map(comp, jobs))
        t1 = timer()
        outs = [np.empty_like(a) for _, a in leaves]
        list(pool.map(decomp, zip(jobs, frames)))
        t2 = timer()
    return {"compress": t1 - t0, "decompress": t2 - t1, "stored": sum(len(f) for f in frames), "out": outs}


def codec_blosc2(leaves: Any, timer: Callable[[], float]) -> dict[str, Any]:
    """Blosc2: zstd clevel 1 + SHUFFLE, typesize = itemsize, nthreads=2, one chunk per array."""
    import blosc2

    t0 = timer()
    cs = [blosc2.compress2(a, codec=blosc2.Codec.ZSTD, clevel=1, typesize=a.dtype.itemsize, nthreads=2,
                           filters=[blosc2.Filter.SHUFFLE]) for _, a in leaves]
    t1 = timer()
    outs = []
    for (_, a), c in zip(leaves, cs):
        o = np.empty_like(a)
        blosc2.decompress2(c, dst=o.reshape(-1).view(np.uint8), nthreads=2)
        outs.append(o)
    t2 = timer()
    return {"compress": t1 - t0, "decompress": t2 - t1, "stored": sum(len(c) for c in cs), "out": outs}


# ----------------------------------------------------------------------------- the registry

SAVE_READ = ("save", "load", "one", "rows")


def build_registry() -> dict[str, Tool]:
    T: list[Tool] = []
    for comp, nm, label in ((None, "bpz-raw", "bpz raw (compression=None)"),
                            ("auto", "bpz-auto", "bpz default (compression=\"auto\")"),
                            ("zstd", "bpz-zstd", "bpz zstd+shuffle (compression=\"zstd\")")):
        T.append(Tool(nm, "bpz", label, ("save", "save_nosync", "load", "one", "one_view", "rows"), ext=".bpz",
                      note="save+fsync: save_pytree (it fsyncs file and directory); save: save_pytree(sync=False)",
                      impl={"save": _bpz_save(comp), "save_nosync": _bpz_save_nosync(comp), "load": _bpz_load(),
                            "one": _bpz_one(), "rows": _bpz_rows()}))
    T.append(Tool("bpz-zstd/noflt", "bpz", "bpz zstd with the filter forced to plain shuffle (no delta, no bit-packing)",
                  ("save",), ext=".bpz", note="for the ratio without per-tensor filters",
                  impl={"save": _bpz_save_filter("shuffle")}))
    T.append(Tool("bpz-raw/views", "bpz", "bpz raw · open all as zero-copy views (open().tree())", ("load",),
                  file_of="bpz-raw", views=True, impl={"load": _bpz_views}))
    T.append(Tool("bpz-raw/1t", "bpz", "bpz raw · load_pytree(parallel=False)", ("load",), file_of="bpz-raw",
                  impl={"load": _bpz_load(parallel=False)}))
    T.append(Tool("bpz-raw/pread", "bpz", "bpz raw · pread backend", ("load", "one", "rows"), file_of="bpz-raw",
                  impl={"load": _bpz_load("pread"), "one": _bpz_one("pread"), "rows": _bpz_rows("pread")}))
    T.append(Tool("bpz-zstd/1t", "bpz", "bpz zstd · load_pytree(parallel=False)", ("load",), file_of="bpz-zstd",
                  impl={"load": _bpz_load(parallel=False)}))
    T.append(Tool("bpz-zstd/pread", "bpz", "bpz zstd · pread backend", ("load",), file_of="bpz-zstd",
                  impl={"load": _bpz_load("pread")}))

    T.append(Tool("safetensors", "alt", "safetensors (numpy save_file/load_file, safe_open)", SAVE_READ,
                  requires=("safetensors",), ext=".safetensors",
                  impl={"save": _st_save, "load": _st_load, "one": _st_one, "rows": _st_rows}))
    T.append(Tool("npz", "alt", "np.savez / np.load", SAVE_READ, ext=".npz",
                  note="npz cannot mmap (mmap_mode is ignored); one tensor / rows read the whole member",
                  impl={"save": _npz_save(False), "load": _npz_load, "one": _npz_one, "rows": _npz_rows}))
    T.append(Tool("npz-deflate", "alt", "np.savez_compressed / np.load", SAVE_READ, ext=".npz",
                  impl={"save": _npz_save(True), "load": _npz_load, "one": _npz_one, "rows": _npz_rows}))
    T.append(Tool("npy-dir", "alt", "np.save per array (.npy dir) / np.load; one tensor via mmap_mode='r'",
                  ("save", "load", "one", "one_view", "rows"), ext=".npydir",
                  impl={"save": _npy_save, "load": _npy_load(False), "one": _npy_one, "rows": _npy_rows}))
    T.append(Tool("npy-dir/mmap", "alt", "np.load(mmap_mode='r') of every .npy (views)", ("load",),
                  file_of="npy-dir", views=True, impl={"load": _npy_load(True)}))
    T.append(Tool("h5py", "alt", "h5py contiguous", SAVE_READ, requires=("h5py",), ext=".h5",
                  impl={"save": _h5_save(), "load": _h5_load, "one": _h5_one, "rows": _h5_rows}))
    T.append(Tool("h5py-gzip1", "alt", "h5py gzip level 1 + shuffle (auto chunks)", SAVE_READ, requires=("h5py",),
                  ext=".h5", impl={"save": _h5_save(compression="gzip", compression_opts=1, shuffle=True),
                                   "load": _h5_load, "one": _h5_one, "rows": _h5_rows}))
    T.append(Tool("h5py-lzf", "alt", "h5py lzf + shuffle (auto chunks)", SAVE_READ, requires=("h5py",), ext=".h5",
                  impl={"save": _h5_save(compression="lzf", shuffle=True), "load": _h5_load, "one": _h5_one,
                        "rows": _h5_rows}))
    if importlib.util.find_spec("flax") is not None:
        T.append(Tool("msgpack", "alt", "BrainPy .bp / flax msgpack_serialize + msgpack_restore", SAVE_READ,
                      requires=("flax", "msgpack"), ext=".bp",
                      note="no index: one tensor / rows parse the whole file",
                      impl={"save": _mp_save, "load": _mp_load, "one": _mp_one, "rows": _mp_rows}))
    else:  # same bytes as flax.serialization (bpz's migration reader/writer)
        T.append(Tool("msgpack", "alt", "BrainPy .bp via bpz._legacy.bp_msgpack (flax not installed)", SAVE_READ,
                      requires=("msgpack",), ext=".bp",
                      note="flax is not installed: bpz._legacy.bp_msgpack writes the same bytes; no index",
                      impl={"save": _legacy_mp_save, "load": _legacy_mp_load,
                            "one": lambda p, c, v: _get(_legacy_mp_load(p, c), c.one_path),
                            "rows": lambda p, c: _get(_legacy_mp_load(p, c), c.row_path)[c.lo : c.hi]}))
    T.append(Tool("orbax", "alt", "Orbax StandardCheckpointer (OCDBT + zarr3, zstd)", SAVE_READ,
                  requires=("orbax.checkpoint",), ext=".orbax",
                  note="one tensor / rows: PyTreeCheckpointer partial_restore of that tensor (rows: whole tensor, then sliced)",
                  impl={"save": _ocp_save, "load": _ocp_load, "one": _ocp_one, "rows": _ocp_rows}))
    T.append(Tool("torch", "alt", "torch.save / torch.load; one tensor and rows via torch.load(mmap=True)",
                  ("save", "load", "one", "one_view", "rows"), requires=("torch",), ext=".pt",
                  impl={"save": _torch_save, "load": _torch_load(False), "one": _torch_one, "rows": _torch_rows}))
    T.append(Tool("torch/mmap", "alt", "torch.load(mmap=True) (views)", ("load",), requires=("torch",),
                  file_of="torch", views=True, impl={"load": _torch_load(True)}))

    T.append(Tool("limit:file", "limit", "physical: write the bytes to one file / pread into fresh arrays",
                  ("save", "load", "one", "rows"), ext=".raw",
                  impl={"save": _limit_write, "load": _limit_read_fresh, "one": _limit_one, "rows": _limit_rows}))
    T.append(Tool("limit:read-touched", "limit", "physical: sequential read of the file into one touched buffer",
                  ("load",), file_of="limit:file", impl={"load": _limit_read_touched}))
    T.append(Tool("limit:memcpy-fresh", "limit", "physical: memcpy of the same bytes into fresh arrays", ("memcpy",),
                  impl={"memcpy": _memcpy_fresh}))
    T.append(Tool("limit:memcpy-touched", "limit", "physical: memcpy of the same bytes into touched arrays",
                  ("memcpy",), impl={"memcpy": _memcpy_touched}))

    T.append(Tool("limit:memcpy-vmcold", "limit", "physical: memcpy into fresh arrays after 4 s idle (this VM's "
                  "balloon has handed the free pages back to the host: every first touch faults on the host)",
                  ("memcpy",), impl={"memcpy": _memcpy_fresh}))
    T.append(Tool("codec:zstd-mt", "codec", "bare zstd-1 threads=2 + numpy shuffle, frame per array", ("codec",),
                  requires=("zstandard",), impl={"codec": codec_zstd_frame}))
    T.append(Tool("codec:zstd-chunks", "codec", "bare zstd-1 + numpy shuffle, 2 MiB chunks on 2 threads",
                  ("codec",), requires=("zstandard",), impl={"codec": codec_zstd_chunks}))
    T.append(Tool("codec:blosc2", "codec", "Blosc2 zstd clevel 1 + shuffle, nthreads=2", ("codec",),
                  requires=("blosc2",), impl={"codec": codec_blosc2}))
    return {t.name: t for t in T}


REGISTRY = build_registry()

# Names accepted by --tools besides tool names.
GROUPS = {
    "bpz": [n for n, t in REGISTRY.items() if t.group == "bpz"],
    "limits": [n for n, t in REGISTRY.items() if t.group == "limit"],
    "codecs": [n for n, t in REGISTRY.items() if t.group == "codec"],
    "alts": [n for n, t in REGISTRY.items() if t.group == "alt"],
}
