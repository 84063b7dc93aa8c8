"""Sharded checkpoints: one directory, one bpz archive per writing process, one commit record.

This module needs no JAX: it reads committed checkpoints as NumPy (``bpz.load_pytree(DIR)``,
``bpz pack``) and holds what the multi-process writer in :mod:`bpz.jax` shares with readers.

Layout of a checkpoint directory ``DIR``::

    DIR/commit.bpz                  the commit record, written last: DIR is a checkpoint iff it exists
    DIR/process_<i>.<token>.bpz     what process i wrote in the save identified by <token>

The commit record is an ordinary bpz archive (atomic, checksummed). Its tree is the saved pytree
with every sharded array replaced by a placeholder string, and its metadata is the manifest
(``{"bpz_sharded": {...}}``): per array its global shape, dtype, sharding (mesh shape, axis
names, partition spec, device ids) and the pieces (file, tensor, global index ranges) that
cover it; per data file its size and the SHA-256 of its last 32 bytes (the trailer, which
holds the CRC of the index, which holds the CRC of every chunk): a file replaced or cut
after the commit is refused before it is read. Saving again into ``DIR`` writes files with a
new token; the old ones stay until the new commit record has replaced the old one.

All file access goes through a store (:func:`store_for`): :class:`LocalStore` for local and
shared filesystems, :class:`RemoteStore` for a prefix of a bucket (``s3://``, ``gs://``,
``az://``; ``http(s)://`` read only). On a bucket every data object is a multipart upload that
appears only once complete, and the commit record is the one object whose presence makes the
prefix a checkpoint, so the same order of writes gives the same guarantees.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import re
import secrets
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np

from . import _bpz
from .errors import (
    BpzError,
    CheckpointNotFoundError,
    CorruptDataError,
    FormatError,
    RecoveredArchiveWarning,
    UnsupportedFeatureError,
)
from .read import Archive, _is_url
from .write import save_pytree, save_tree

__all__ = [
    "COMMIT_NAME",
    "ShardedSaveError",
    "LocalStore",
    "RemoteStore",
    "Store",
    "store_for",
    "is_sharded_checkpoint",
    "ShardedCheckpoint",
    "ArrayRecord",
    "Piece",
    "load_numpy",
    "data_file_name",
    "is_data_file",
    "is_temporary",
    "placeholder_prefix",
    "pack",
    "unpack",
]

COMMIT_NAME = "commit.bpz"
MANIFEST_KEY = "bpz_sharded"
MANIFEST_VERSION = 1
_DATA_FILE = re.compile(r"process_(\d+)\.([0-9a-f]+)\.bpz")


class ShardedSaveError(BpzError, RuntimeError):
    """A collective save failed on at least one process; nothing was committed and the
    previous checkpoint (if any) is still the current one. Raised on every process."""


def data_file_name(process: int, token: str) -> str:
    return f"process_{process}.{token}.bpz"


def is_data_file(name: str) -> bool:
    """Whether ``name`` is a data file of a sharded checkpoint (``process_<i>.<token>.bpz``)."""
    return _DATA_FILE.fullmatch(name) is not None


def is_temporary(name: str) -> bool:
    """Whether ``name`` is a temporary file a killed writer of a data file left."""
    return name.startswith(".process_") and name.endswith(".bpz-tmp")


# -- where files go ----------------------------------------------------------------------------


def stamp_of(summary: dict[str, Any] | None) -> dict[str, Any]:
    """The stamp of a file from its writer's summary: its size and the SHA-256 of its trailer."""
    if summary is None:  # only an async save reports nothing, and stores never save async
        raise RuntimeError("internal error: a synchronous save returned no summary")
    return {"size": int(summary["file_bytes"]), "tail_sha256": hashlib.sha256(summary["trailer"]).hexdigest()}


class LocalStore:
    """A checkpoint directory on a local or shared filesystem: the one place that touches files."""

    writable = True

    def __init__(self, root: str) -> None:
        self.shown = root
        self.root = os.path.abspath(root)

    def path(self, name: str) -> str:
        return os.path.join(self.root, name)

    def shown_path(self, name: str) -> str:
        return os.path.join(self.shown, name)

    def makedirs(self) -> None:
        os.makedirs(self.root, exist_ok=True)

    def check_writable(self) -> None:
        pass

    def exists(self, name: str) -> bool:
        return os.path.isfile(self.path(name))

    def is_checkpoint(self) -> bool:
        return os.path.isdir(self.root) and self.exists(COMMIT_NAME)

    def list(self) -> list[str]:
        try:
            return sorted(os.listdir(self.root))
        except (FileNotFoundError, NotADirectoryError):
            return []

    def write(self, name: str, tree: Any, *, metadata: Any = None, compression: str | None = "auto",
              chunk_size: int | None = None, sync: bool = True) -> dict[str, Any]:
        """Writes one archive atomically; returns its stamp (size and tail hash)."""
        summary = save_tree(self.path(name), tree, overwrite=True, async_manager=None, compression=compression,
                            chunk_size=chunk_size, metadata=metadata, sync=sync)
        return stamp_of(summary)

    def open(self, name: str) -> Archive:
        return Archive(self.path(name))

    def remove(self, name: str) -> None:
        try:
            os.remove(self.path(name))
        except FileNotFoundError:
            pass

    def remove_dir(self) -> None:
        """Removes the (emptied) directory; a directory with foreign files in it stays."""
        try:
            os.rmdir(self.root)
        except OSError:
            pass

    def sync_dir(self) -> None:
        fd = os.open(self.root, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def child(self, name: str) -> LocalStore:
        return LocalStore(os.path.join(self.shown, name))

    def __str__(self) -> str:
        return self.shown


class RemoteStore:
    """A checkpoint "directory" on object storage: the objects directly under one URL prefix.

    A bucket has no directories, so ``makedirs``, ``sync_dir`` and ``remove_dir`` do nothing:
    a prefix exists while an object is under it, and an object is durable once its upload
    completed. ``http(s)://`` prefixes are read only (no listing, no writes).
    """

    def __init__(self, url: str, storage_options: Mapping[str, Any] | None = None) -> None:
        self.options = dict(storage_options) if storage_options is not None else None
        self._dir = _bpz.RemoteDir(url, self.options)
        self.shown = self._dir.label
        self.writable = not url.lower().startswith(("http://", "https://"))

    def path(self, name: str) -> str:
        return self._dir.url(name)

    def shown_path(self, name: str) -> str:
        return self._dir.url(name)

    def makedirs(self) -> None:
        pass

    def exists(self, name: str) -> bool:
        return self._dir.head(name) is not None

    def is_checkpoint(self) -> bool:
        return self.exists(COMMIT_NAME)

    def list(self) -> list[str]:
        """Object names and sub-prefixes (the "subdirectories") directly under the prefix."""
        objects, prefixes = self._dir.list()
        return sorted({o[0] for o in objects} | set(prefixes))

    def check_writable(self) -> None:
        if not self.writable:
            raise UnsupportedFeatureError(f"{self.shown}: http(s) URLs are read only; save sharded checkpoints "
                                          "to a local or shared directory, or to s3://, gs:// or az://")

    def write(self, name: str, tree: Any, *, metadata: Any = None, compression: str | None = "auto",
              chunk_size: int | None = None, sync: bool = True) -> dict[str, Any]:
        """Uploads one archive (multipart: it appears only once complete); returns its stamp."""
        self.check_writable()
        summary = save_tree(self.path(name), tree, overwrite=True, async_manager=None, compression=compression,
                            chunk_size=chunk_size, metadata=metadata, sync=sync, storage_options=self.options)
        return stamp_of(summary)  # the writer's own size and trailer: nothing read back

    def open(self, name: str) -> Archive:
        return Archive(self.path(name), storage_options=self.options)

    def remove(self, name: str) -> None:
        self.check_writable()
        self._dir.delete(name)

    def remove_dir(self) -> None:
        pass

    def sync_dir(self) -> None:
        pass

    def child(self, name: str) -> RemoteStore:
        return RemoteStore(self._dir.url(name), self.options)

    def __str__(self) -> str:
        return self.shown


Store = LocalStore | RemoteStore


def store_for(path: str | os.PathLike[str], storage_options: Mapping[str, Any] | None = None) -> Store:
    """The store of a checkpoint directory: a :class:`RemoteStore` for a URL (``s3://``,
    ``gs://``, ``az://``; ``http(s)://`` read only), a :class:`LocalStore` otherwise.
    ``storage_options`` (endpoint, region, credentials; see :func:`bpz.open`) apply to URLs."""
    path = os.fspath(path)
    if not isinstance(path, str):
        path = os.fsdecode(path)
    if _is_url(path):
        return RemoteStore(path, storage_options)
    if storage_options is not None:
        raise TypeError(f"storage_options apply to URLs (s3://..., gs://..., az://...), not to the path {path!r}")
    return LocalStore(path)


def is_sharded_checkpoint(path: str | os.PathLike[str], storage_options: Mapping[str, Any] | None = None) -> bool:
    """Whether ``path`` is a directory (or URL prefix: one HEAD request) holding a committed
    sharded checkpoint."""
    if _is_url(os.fspath(path)):
        return store_for(path, storage_options).is_checkpoint()
    if storage_options is not None:
        store_for(path, storage_options)  # raises: options for a local path
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, COMMIT_NAME))


# -- the manifest --------------------------------------------------------------------------------

Index = tuple[tuple[int, int], ...]


@dataclasses.dataclass(frozen=True)
class Piece:
    """One stored block: ``tensor`` in ``file`` holds the global ``index`` ranges of its array."""

    file: str
    tensor: str
    index: Index

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(hi - lo for lo, hi in self.index)


@dataclasses.dataclass(frozen=True)
class ArrayRecord:
    """What the commit record says about one sharded array."""

    key: str
    shape: tuple[int, ...]
    dtype: np.dtype
    sharding: dict[str, Any] | None
    pieces: tuple[Piece, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def dtype_from_name(name: str) -> np.dtype:
    import ml_dtypes

    special = getattr(ml_dtypes, name, None)
    try:
        return np.dtype(special) if isinstance(special, type) else np.dtype(name)
    except TypeError:
        raise FormatError(f"unknown dtype {name!r} in the commit record") from None


def _bad(where: str, what: str) -> FormatError:
    return FormatError(f"{where}: the commit record is malformed: {what}")


def _int_pairs(value: Any, ndim: int, where: str) -> Index:
    if not isinstance(value, list) or len(value) != ndim:
        raise _bad(where, f"an index must be a list of {ndim} [start, stop] pairs")
    out = []
    for pair in value:
        if (not isinstance(pair, list) or len(pair) != 2
                or not all(isinstance(v, int) and not isinstance(v, bool) for v in pair)):
            raise _bad(where, f"index entry {pair!r} is not a [start, stop] pair of integers")
        out.append((pair[0], pair[1]))
    return tuple(out)


def parse_manifest(meta: Any, where: str) -> tuple[dict[str, ArrayRecord], dict[str, dict[str, Any]]]:
    """The arrays (by placeholder) and files of a commit record, checked for consistency."""
    if not isinstance(meta, dict) or not isinstance(meta.get(MANIFEST_KEY), dict):
        raise _bad(where, f"no {MANIFEST_KEY!r} manifest in its metadata")
    m = meta[MANIFEST_KEY]
    if m.get("version") != MANIFEST_VERSION:
        raise UnsupportedFeatureError(f"{where}: sharded checkpoint manifest version {m.get('version')!r}; "
                                      f"this bpz reads version {MANIFEST_VERSION}")
    files = m.get("files")
    arrays = m.get("arrays")
    if not isinstance(files, dict) or not isinstance(arrays, dict):
        raise _bad(where, "'files' and 'arrays' must be objects")
    for name, stamp in files.items():
        if not _DATA_FILE.fullmatch(name) or not isinstance(stamp, dict) or not isinstance(stamp.get("size"), int) \
                or not isinstance(stamp.get("tail_sha256"), str):
            raise _bad(where, f"file entry {name!r}")
    records: dict[str, ArrayRecord] = {}
    for key, a in arrays.items():
        here = f"{where} array {key!r}"
        if not isinstance(a, dict) or not isinstance(a.get("shape"), list) or not isinstance(a.get("pieces"), list):
            raise _bad(here, "needs 'shape' and 'pieces'")
        shape = a["shape"]
        if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape):
            raise _bad(here, f"shape {shape!r}")
        shape_t = tuple(shape)
        pieces = []
        covered = 0
        for p in a["pieces"]:
            if not isinstance(p, dict) or p.get("file") not in files or not isinstance(p.get("tensor"), str):
                raise _bad(here, f"piece {p!r} names no file of the checkpoint")
            index = _int_pairs(p.get("index"), len(shape_t), here)
            if any(not 0 <= lo <= hi <= n for (lo, hi), n in zip(index, shape_t)):
                raise _bad(here, f"piece index {list(index)} outside the shape {shape_t}")
            pieces.append(Piece(p["file"], p["tensor"], index))
            covered += math.prod(hi - lo for lo, hi in index)
        if covered != math.prod(shape_t):
            raise _bad(here, f"its pieces hold {covered} elements, the shape {shape_t} has {math.prod(shape_t)}")
        sharding = a.get("sharding")
        records[key] = ArrayRecord(key, shape_t, dtype_from_name(str(a.get("dtype"))),
                                   sharding if isinstance(sharding, dict) else None, tuple(pieces))
    return records, files


# -- reading --------------------------------------------------------------------------------------


def _intersect(a: Index, b: Index) -> Index | None:
    out = []
    for (alo, ahi), (blo, bhi) in zip(a, b):
        lo, hi = max(alo, blo), min(ahi, bhi)
        if lo >= hi:
            return None
        out.append((lo, hi))
    return tuple(out)


# XLA's CPU client uses a host buffer this aligned in place (device_put without a copy).
HOST_ALIGNMENT = 64


def aligned_empty(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """An uninitialised C-contiguous array whose data starts at a multiple of HOST_ALIGNMENT."""
    n = math.prod(shape) * dtype.itemsize
    raw = np.empty(n + HOST_ALIGNMENT, np.uint8)
    skip = -raw.ctypes.data % HOST_ALIGNMENT
    return raw[skip:skip + n].view(dtype).reshape(shape)


class ShardedCheckpoint:
    """A committed sharded checkpoint opened for reading: its tree, its manifest, and region reads.

    ``bytes_read`` counts the decoded bytes of the chunks the region reads touched (what the
    row-range reads fetch from the files), for measuring how much a restore reads.
    """

    def __init__(self, path: str | os.PathLike[str], storage_options: Mapping[str, Any] | None = None) -> None:
        self.store = store_for(path, storage_options)
        if isinstance(self.store, LocalStore) and not os.path.isdir(self.store.root):
            raise CheckpointNotFoundError(f"Checkpoint not found: {self.store}")
        where = self.store.shown_path(COMMIT_NAME)
        missing = CheckpointNotFoundError(
            f"Checkpoint not found: {self.store} has no {COMMIT_NAME} (not a sharded checkpoint, "
            "or its save was never committed)")
        if isinstance(self.store, LocalStore) and not self.store.exists(COMMIT_NAME):
            raise missing
        try:
            commit = self.store.open(COMMIT_NAME)  # on a bucket the open is the lookup: no HEAD first
        except FileNotFoundError:
            raise missing from None
        with commit:
            self.arrays, self.files = parse_manifest(commit.metadata, where)
            self._saved_tree = commit.load()
        self._archives: dict[str, Archive] = {}
        self.bytes_read = 0

    def tree(self, array_leaf: Callable[[ArrayRecord], Any]) -> Any:
        """The saved tree with each sharded array replaced by ``array_leaf(record)``."""
        return replace_strings(self._saved_tree, self.arrays, array_leaf)

    def archive(self, name: str) -> Archive:
        a = self._archives.get(name)
        if a is None:
            want = self.files[name]
            shown = self.store.shown_path(name)
            missing = CorruptDataError(f"{shown}: missing, but the commit record of {self.store} lists it")
            try:
                with warnings.catch_warnings():
                    # A file with bytes after its committed end is refused below (its size differs).
                    warnings.simplefilter("ignore", RecoveredArchiveWarning)
                    a = self.store.open(name)
            except FileNotFoundError:
                raise missing from None
            except BpzError as e:
                raise CorruptDataError(f"{shown}: not the file the commit record of {self.store} lists "
                                       f"(damaged after the commit: {e})") from e
            # What the open read is what is checked (no second read, no window for a swap in between).
            got = {"size": a.file_size, "tail_sha256": hashlib.sha256(a._native().trailer_bytes).hexdigest()}
            if got != {"size": want["size"], "tail_sha256": want["tail_sha256"]}:
                a.close()
                raise CorruptDataError(
                    f"{shown}: not the file the commit record of {self.store} lists (size {got['size']}, "
                    f"expected {want['size']}; or its trailer differs): replaced or damaged after the commit")
            self._archives[name] = a
        return a

    def _piece_info(self, piece: Piece, dtype: np.dtype) -> tuple[Archive, Any]:
        a = self.archive(piece.file)
        info = a.info(piece.tensor)
        if info.shape != piece.shape or info.dtype != dtype:
            raise CorruptDataError(
                f"{self.store.shown_path(piece.file)}: tensor {piece.tensor!r} is "
                f"{info.dtype}{list(info.shape)}, "
                f"the commit record says {dtype}{list(piece.shape)}")
        return a, info

    def _count(self, piece: Piece, info: Any, lo: int, hi: int) -> None:
        """Adds the decoded bytes of the chunks rows ``lo:hi`` of ``piece`` touch to ``bytes_read``."""
        if not piece.shape:
            self.bytes_read += info.nbytes
            return
        row_elems = math.prod(piece.shape[1:])
        if hi > lo and row_elems and info.chunk_elems:
            first = lo * row_elems // info.chunk_elems
            last = (hi * row_elems - 1) // info.chunk_elems
            self.bytes_read += min((last - first + 1) * info.chunk_elems, math.prod(piece.shape)) * info.dtype.itemsize

    def read_region(self, record: ArrayRecord, region: Index, cache: dict[Any, np.ndarray] | None = None) -> np.ndarray:
        """The block ``region`` (global [start, stop) per axis) of a sharded array, read from
        the row ranges of the pieces that overlap it. ``cache`` (a dict kept while the regions
        of one array are read) lets regions that need the same rows of a piece share one read."""
        return self.read_regions([(record, region)], cache)[0]

    def read_regions(self, wanted: list[tuple[ArrayRecord, Index]],
                     cache: dict[Any, np.ndarray] | None = None) -> list[np.ndarray]:
        """Several blocks (of one array or of several), each in a new buffer aligned for XLA's
        zero-copy use. Row ranges that fill whole rows of a block are read straight into it, all
        of a file's in one native call (the GIL released once, the reads spread over threads);
        a block cutting a later axis of a piece reads that piece's rows and copies the columns."""
        batch: dict[str, list[tuple[str, int, int, np.ndarray]]] = {}
        copies: list[tuple[np.ndarray, Any, np.ndarray, Any]] = []
        outs = []
        for record, region in wanted:
            shape = tuple(hi - lo for lo, hi in region)
            out = aligned_empty(shape, record.dtype)
            outs.append(out)
            if shape and math.prod(shape) == 0:
                continue
            for piece in record.pieces:
                inter = _intersect(piece.index, region) if shape else ()
                if inter is None:
                    continue
                a, info = self._piece_info(piece, record.dtype)
                if not shape:
                    self._count(piece, info, 0, 1)
                    batch.setdefault(piece.file, []).append((piece.tensor, 0, 1, out))
                    break
                p0 = piece.index[0][0]
                lo, hi = inter[0][0] - p0, inter[0][1] - p0
                dest = tuple(slice(lo_ - rlo, hi_ - rlo) for (lo_, hi_), (rlo, _) in zip(inter, region))
                if inter[1:] == piece.index[1:] == region[1:]:
                    # whole rows on both sides: a contiguous row range of the block
                    self._count(piece, info, lo, hi)
                    batch.setdefault(piece.file, []).append((piece.tensor, lo, hi, out[dest[0]]))
                    continue
                # a later axis cut: the piece's rows go to a buffer (read in the same batch),
                # then their columns to the block
                span = (piece, lo, hi)
                rows = cache.get(span) if cache is not None else None
                if rows is None:
                    rows = aligned_empty((hi - lo, *piece.shape[1:]), record.dtype)
                    self._count(piece, info, lo, hi)
                    batch.setdefault(piece.file, []).append((piece.tensor, lo, hi, rows))
                    if cache is not None and inter[1:] != piece.index[1:]:
                        cache[span] = rows  # only part of its columns used here: another block may need the rest
                within = (slice(None),) + tuple(slice(lo_ - plo, hi_ - plo) for (lo_, hi_), (plo, _) in
                                                zip(inter[1:], piece.index[1:]))
                copies.append((out, dest, rows, within))
        for file, requests in batch.items():
            self.archive(file)._native().read_rows_many_into(requests)
        for block, dest, rows, within in copies:
            block[dest] = rows[within]
        return outs

    def read_array(self, record: ArrayRecord) -> np.ndarray:
        return self.read_region(record, tuple((0, n) for n in record.shape))

    def close(self) -> None:
        for a in self._archives.values():
            a.close()
        self._archives.clear()

    def __enter__(self) -> ShardedCheckpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def replace_strings(tree: Any, table: dict[str, Any], fn: Callable[[Any], Any]) -> Any:
    """``tree`` with every str leaf that is a key of ``table`` replaced by ``fn(table[leaf])``;
    dicts, OrderedDicts, lists, tuples and namedtuples are rebuilt, other leaves kept."""

    def walk(x: Any) -> Any:
        if isinstance(x, str):
            return fn(table[x]) if x in table else x
        if isinstance(x, OrderedDict):
            return OrderedDict((k, walk(v)) for k, v in x.items())
        if isinstance(x, dict):
            return {k: walk(v) for k, v in x.items()}
        if isinstance(x, list):
            return [walk(v) for v in x]
        if isinstance(x, tuple):
            items = [walk(v) for v in x]
            return type(x)(*items) if hasattr(x, "_fields") else tuple(items)
        return x

    return walk(tree)


def iter_strings(tree: Any) -> Iterator[str]:
    stack = [tree]
    while stack:
        x = stack.pop()
        if isinstance(x, str):
            yield x
        elif isinstance(x, dict):
            stack.extend(x.values())
            stack.extend(k for k in x if isinstance(k, str))
        elif isinstance(x, (list, tuple)):
            stack.extend(x)


def load_numpy(path: str | os.PathLike[str], storage_options: Mapping[str, Any] | None = None) -> Any:
    """A committed sharded checkpoint as one pytree of NumPy arrays (each array whole);
    ``path`` may be a URL prefix (``storage_options`` as for :func:`bpz.open`)."""
    with ShardedCheckpoint(path, storage_options) as ckpt:
        return ckpt.tree(ckpt.read_array)


def placeholder_prefix(tree: Any) -> str:
    """A prefix no string of ``tree`` starts with: placeholders never meet a user's string."""
    prefix = "bpz:sharded-array:"
    strings = [x for x in iter_strings(tree) if x.startswith(prefix)]
    while any(x.startswith(prefix) for x in strings):
        prefix = f"bpz:sharded-array:{secrets.token_hex(4)}:"
    return prefix


def _options_for(path: str | os.PathLike[str], storage_options: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """``storage_options`` where ``path`` is a URL; None for a local path (which takes none)."""
    return dict(storage_options) if storage_options is not None and _is_url(os.fspath(path)) else None


def pack(src: str | os.PathLike[str], dst: str | os.PathLike[str], *, overwrite: bool = False,
         compression: str | None = "auto", storage_options: Mapping[str, Any] | None = None) -> str:
    """Joins the committed sharded checkpoint ``src`` into the single archive ``dst`` (each array
    whole, the tree as saved), for a single-machine user. Needs memory for the whole state.
    Either may be a URL; ``storage_options`` apply to whichever is."""
    tree = load_numpy(src, _options_for(src, storage_options))
    return save_pytree(dst, tree, overwrite=overwrite, verbose=False, compression=compression,
                       storage_options=_options_for(dst, storage_options))


def unpack(src: str | os.PathLike[str], dst: str | os.PathLike[str], processes: int, *,
           compression: str | None = "auto", storage_options: Mapping[str, Any] | None = None) -> str:
    """Splits the archive ``src`` into the sharded checkpoint directory ``dst``, as if saved by
    ``processes`` processes: every array of at least one row is cut into ``processes`` row
    blocks, one data file each (restore it with ``bpz.jax.load(dst, shardings=...)``); other
    leaves go into the commit record. ``dst`` must not hold a checkpoint already. Either may be
    a URL; ``storage_options`` apply to whichever is."""
    if isinstance(processes, bool) or not isinstance(processes, int) or processes < 1:
        raise ValueError(f"processes must be a positive int, not {processes!r}")
    store = store_for(dst, _options_for(dst, storage_options))
    store.check_writable()
    if store.is_checkpoint():
        raise FileExistsError(f"{store} already holds a sharded checkpoint; not replacing it")
    with Archive(os.fspath(src), storage_options=_options_for(src, storage_options)) as a:
        tree = a.load()
    prefix = placeholder_prefix(tree)
    parts: list[dict[str, np.ndarray]] = [{} for _ in range(processes)]
    arrays: dict[str, Any] = {}
    token = secrets.token_hex(8)
    counter = iter(range(1 << 62))

    def split(x: Any) -> Any:
        if not isinstance(x, np.ndarray) or x.ndim == 0 or x.size == 0:
            return x
        key = f"a{next(counter)}"
        bounds = np.linspace(0, x.shape[0], processes + 1).round().astype(int)
        pieces: list[dict[str, Any]] = []
        for p in range(processes):
            lo, hi = int(bounds[p]), int(bounds[p + 1])
            if hi > lo:
                tensor = f"{key}_{len(pieces)}"
                parts[p][tensor] = x[lo:hi]
                pieces.append({"file": data_file_name(p, token), "tensor": tensor,
                               "index": [[lo, hi]] + [[0, n] for n in x.shape[1:]]})
        arrays[prefix + key] = {"shape": list(x.shape), "dtype": x.dtype.name, "sharding": None, "pieces": pieces}
        return prefix + key

    commit_tree = replace_leaves(tree, split)
    store.makedirs()
    files = {}
    try:
        for p, part in enumerate(parts):
            files[data_file_name(p, token)] = {**store.write(data_file_name(p, token), part, compression=compression),
                                               "process": p}
        manifest = {"version": MANIFEST_VERSION, "processes": processes, "files": files, "arrays": arrays}
        store.write(COMMIT_NAME, commit_tree, metadata={MANIFEST_KEY: manifest})
    except BaseException:
        for name in files:
            store.remove(name)
        raise
    return str(store)


def replace_leaves(tree: Any, fn: Callable[[Any], Any]) -> Any:
    """``tree`` with every leaf (anything but a dict, list or tuple) replaced by ``fn(leaf)``."""

    def walk(x: Any) -> Any:
        if isinstance(x, OrderedDict):
            return OrderedDict((k, walk(v)) for k, v in x.items())
        if isinstance(x, dict):
            return {k: walk(v) for k, v in x.items()}
        if isinstance(x, list):
            return [walk(v) for v in x]
        if isinstance(x, tuple):
            items = [walk(v) for v in x]
            return type(x)(*items) if hasattr(x, "_fields") else tuple(items)
        return fn(x)

    return walk(tree)
