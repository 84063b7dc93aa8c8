"""Loading: ``load_pytree`` and the lazy, memory-mapped ``open``."""

from __future__ import annotations

import datetime
import os
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import unquote

import numpy as np

from . import _bpz, dtypes
from .errors import CheckpointNotFoundError, FormatError, NotAnArchiveError, RecoveredArchiveWarning
from .formats import MAGIC, SNIFF_BYTES, sniff
from .pytree import no_gc, parse_json, quantity_from_node, restore_into, unflatten, wrap_key

__all__ = [
    "load_pytree", "open", "Archive", "TensorInfo", "TensorSlice", "VersionInfo", "ChunkInfo", "ArchiveDiff",
    "MAGIC", "is_bpz_file",
]


def is_bpz_file(path: str | os.PathLike[str]) -> bool:
    """Whether the file starts with the bpz magic."""
    return sniff(path) == "bpz"


import builtins as _builtins  # noqa: E402  (open is shadowed below)
import re as _re  # noqa: E402

_URL = _re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")


def _is_url(filename: Any) -> bool:
    """Whether ``filename`` names a remote archive (``https://...``, ``s3://...``) rather than a path."""
    return isinstance(filename, str) and "://" in filename and _URL.match(filename) is not None


builtins_open = _builtins.open


@dataclass(frozen=True)
class TensorInfo:
    """What the index says about one tensor."""

    name: str
    dtype: np.dtype
    bpz_dtype: str
    shape: tuple[int, ...]
    storage: str
    filter: str
    codec: str
    chunk_elems: int
    chunks: int
    encoded_chunks: int
    nbytes: int
    stored_bytes: int
    offset: int | None

    @property
    def compression_ratio(self) -> float:
        """Decoded bytes per stored byte (1.0 for an empty tensor)."""
        return self.nbytes / self.stored_bytes if self.stored_bytes else 1.0


@dataclass(frozen=True)
class VersionInfo:
    """One version of an archive. A file saved with ``append=True`` holds several, numbered
    1, 2, ... in the order they were written (``bpz compact`` may drop early ones, keeping
    the numbers of the rest); any other archive holds one, version 1."""

    number: int
    #: When it was written (UTC), or None if the file does not say (format 1.0).
    time: datetime.datetime | None
    #: The metadata saved with this version.
    metadata: Any
    #: Bytes this version added to the file: its new chunks, index and trailer (chunks equal
    #: to ones already in the file are referenced, not written again).
    bytes_added: int
    #: Size of this version's index in bytes.
    index_length: int


@dataclass(frozen=True)
class ChunkInfo:
    """Where one chunk of a tensor is stored, and its checksums."""

    offset: int
    stored_length: int
    crc32c: int
    encoded: bool
    #: BLAKE3-128 of the chunk's decoded bytes (format 1.1; None in a 1.0 file).
    hash: bytes | None


@dataclass(frozen=True)
class ArchiveDiff:
    """Tensors of two archives (or versions) compared by name, dtype, shape and content."""

    added: list[str]
    removed: list[str]
    changed: list[str]
    unchanged: list[str]
    #: How many tensors had to be compared by reading their data (no content hashes to compare:
    #: a format-1.0 file, or the two chunked differently).
    compared_by_reading: int


def _info(d: Mapping[str, Any]) -> TensorInfo:
    return TensorInfo(
        name=d["name"],
        dtype=dtypes.to_numpy(d["dtype"]),
        bpz_dtype=d["dtype"],
        shape=tuple(d["shape"]),
        storage=d["storage"],
        filter=d["filter"],
        codec=d["codec"],
        chunk_elems=d["chunk_elems"],
        chunks=d["chunks"],
        encoded_chunks=d["encoded_chunks"],
        nbytes=d["nbytes"],
        stored_bytes=d["stored_bytes"],
        offset=d["offset"],
    )


_ndarray = np.ndarray
_asarray = np.asarray


def _as_array(buf: Any, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
    # One constructor over the bytes: a third of the time of view() then reshape(), which
    # counts when a load builds tens of thousands of small arrays.
    return _ndarray(shape, dtype, _asarray(buf))


def _finish_leaf(arr: np.ndarray, node: dict[str, Any]) -> Any:
    kind = node.get("py")
    if kind is None or kind == "jax":
        # Arrays saved from jax load as NumPy arrays, as BrainPy's do (bpz.jax.load gives jax arrays).
        return arr
    if kind == "numpy_scalar":
        return arr[()]
    if kind == "jax_key":
        return wrap_key(arr, node.get("impl", "threefry2x32"))
    if kind == "quantity":
        return quantity_from_node(arr, node)
    return arr


class TensorSlice:
    """Row ranges of one tensor: ``archive.get_slice(name)[a:b]`` decodes only the chunks it needs."""

    def __init__(self, archive: Archive, name: str) -> None:
        self._archive = archive
        self.info = archive.info(name)

    @property
    def shape(self) -> tuple[int, ...]:
        """The whole tensor's shape."""
        return self.info.shape

    @property
    def dtype(self) -> np.dtype:
        """The tensor's NumPy dtype."""
        return self.info.dtype

    def __len__(self) -> int:
        return self.info.shape[0] if self.info.shape else 1

    def __getitem__(self, key: int | slice | tuple[Any, ...]) -> np.ndarray:
        rest: tuple[Any, ...] = ()
        if isinstance(key, tuple):
            key, rest = (key[0], key[1:]) if key else (slice(None), ())
        n = len(self)
        if isinstance(key, (int, np.integer)):
            i = int(key) + (n if key < 0 else 0)
            if not 0 <= i < n:
                raise IndexError(f"row {key} out of range for {self.info.name!r} with {n} rows")
            out = self._rows(i, i + 1)[0]
            return out[rest] if rest else out
        if not isinstance(key, slice):
            raise TypeError(f"tensor slices take ints and slices, not {type(key).__name__}")
        start, stop, step = key.indices(n)
        picked = range(start, stop, step)
        if len(picked) == 0:
            out = self._rows(0, 0)
        else:
            lo, hi = min(picked[0], picked[-1]), max(picked[0], picked[-1]) + 1
            out = self._rows(lo, hi)[picked[0] - lo :: step] if step > 0 else self._rows(lo, hi)[picked[0] - lo :: step]
        return out[(slice(None),) + tuple(rest)] if rest else out

    def _rows(self, start: int, stop: int) -> np.ndarray:
        if not self.info.shape:
            raise IndexError(f"{self.info.name!r} is 0-d: it has no rows to slice")
        buf = self._archive._native().read_rows(self.info.name, start, stop)
        return _as_array(buf, self.info.dtype, (stop - start, *self.info.shape[1:]))


class Archive:
    """An open archive. Use as a context manager, or call :meth:`close`.

    ``archive[name]`` is a read-only zero-copy view of the file's memory map
    for raw tensors (it stays valid after the archive is closed), and a
    decoded, checksummed array for compressed ones.
    """

    def __init__(
        self,
        filename: str | os.PathLike[str],
        backend: Literal["mmap", "pread"] = "mmap",
        parallel: bool = True,
        storage_options: Mapping[str, Any] | None = None,
        *,
        version: int | None = None,
    ) -> None:
        self.filename = os.fspath(filename)
        if version is not None:
            _check_version_argument(version)
        # Requests made by a remote archive (None for a local file).
        self._remote: Any = None
        if _is_url(self.filename):
            # One request reads the trailer and index; tensors are fetched by ranged GETs.
            self._archive: Any
            self._archive, self._remote = _bpz.open_remote(self.filename, storage_options, parallel, version)
        elif storage_options is not None:
            raise TypeError(f"storage_options apply to URLs (https://..., s3://...), not to the path {self.filename!r}")
        else:
            # Nothing is built per tensor here: opening costs the native index parse only.
            self._archive = _bpz.Archive(self.filename, backend=backend, parallel=parallel, version=version)
        self._init_caches()
        recovered = self._archive.recovered
        if recovered is not None and not (self._remote is None and _append_in_progress(self.filename)):
            warnings.warn(
                f"{self.filename} ends in an unfinished append: {recovered['ignored_bytes']:,} bytes after version "
                f"{self._archive.version_number} are ignored (the next append removes them)",
                RecoveredArchiveWarning,
                stacklevel=3,
            )

    def _init_caches(self) -> None:
        self._info_cache: dict[str, TensorInfo] = {}
        self._versions: list[VersionInfo] | None = None
        self._names: list[str] | None = None
        self._tree: Any = None
        self._metadata: Any = None
        self._parsed = False

    @classmethod
    def _wrap(cls, filename: str, native: Any, remote: Any) -> Archive:
        self = cls.__new__(cls)
        self.filename = filename
        self._archive = native
        self._remote = remote
        self._init_caches()
        return self

    # -- versions
    @property
    def version_number(self) -> int:
        """The number of the version this archive reads (the latest unless ``version=`` said
        otherwise)."""
        return int(self._native().version_number)

    @property
    def versions(self) -> list[VersionInfo]:
        """Every version in the file, oldest first (one for a file never appended to)."""
        if self._versions is None:
            native = self._native()
            out = []
            for v in native.versions:
                number = int(v["version"])
                text = native.version_metadata_json(number)
                out.append(VersionInfo(
                    number=number,
                    time=(datetime.datetime.fromtimestamp(v["time_ns"] / 1e9, tz=datetime.timezone.utc)
                          if v["time_ns"] else None),
                    metadata=parse_json(text, self.filename, f"metadata of version {number}"),
                    bytes_added=int(v["bytes_added"]),
                    index_length=int(v["index_length"]),
                ))
            self._versions = out
        return list(self._versions)

    @property
    def recovered(self) -> dict[str, int] | None:
        """None, or — when the file ends in an unfinished append (a save killed while
        appending) — ``{"ignored_bytes": n, "committed_end": offset}``: the last committed
        version is read and the ``n`` bytes after it are ignored (opening also warns with
        :class:`~bpz.errors.RecoveredArchiveWarning`)."""
        r = self._native().recovered
        return None if r is None else {k: int(v) for k, v in r.items()}

    def at_version(self, version: int | None) -> Archive:
        """The same file at another version (a number, or negative counted back from the latest;
        None = the latest), sharing this archive's open file."""
        _check_version_argument(version)
        return Archive._wrap(self.filename, self._native().at_version(version), self._remote)

    def chunks(self, name: str) -> list[ChunkInfo]:
        """One tensor's chunk table: offsets, stored lengths, checksums and content hashes."""
        return [ChunkInfo(offset=int(c["offset"]), stored_length=int(c["stored_length"]), crc32c=int(c["crc32c"]),
                          encoded=bool(c["encoded"]), hash=c["hash"]) for c in self._native().chunks(name)]

    def diff(self, other: Archive) -> ArchiveDiff:
        """What changed from this archive (or version) to ``other``: tensors added, removed,
        changed (dtype, shape or content) and unchanged. Format-1.1 archives are compared by
        their chunks' content hashes, without reading tensor data."""
        d = self._native().diff(other._native())
        return ArchiveDiff(added=list(d["added"]), removed=list(d["removed"]), changed=list(d["changed"]),
                           unchanged=list(d["unchanged"]), compared_by_reading=int(d["compared_by_reading"]))

    def _native(self) -> Any:
        if self._archive is None:
            raise ValueError(f"archive {self.filename!r} is closed")
        return self._archive

    def _request_stats(self) -> dict[str, int] | None:
        """HTTP requests and body bytes of a remote archive since it was opened (None for a file)."""
        if self._remote is None:
            return None
        return {"requests": self._remote.requests, "bytes": self._remote.bytes}

    def close(self) -> None:
        """Closes the archive; arrays already returned stay valid."""
        self._archive = None

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._archive is None

    def __enter__(self) -> Archive:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        native = getattr(self, "_archive", None)
        state = "closed" if native is None else f"{len(native)} tensors"
        return f"<bpz.Archive {self.filename!r}: {state}>"

    # -- mapping protocol
    def keys(self) -> list[str]:
        """The tensor names, in the archive's index order."""
        if self._names is None:
            self._names = self._native().names()
        return list(self._names)

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def __len__(self) -> int:
        return len(self._native())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self._native()

    def __getitem__(self, name: str) -> np.ndarray:
        buf, dtype, shape = self._native().get(name)
        return _as_array(buf, dtypes.to_numpy(dtype), shape)

    def read(self, name: str) -> np.ndarray:
        """A writable, checksummed copy of a tensor."""
        info = self.info(name)
        return _as_array(self._native().read(name), info.dtype, info.shape)

    def read_rows_into(self, name: str, start: int, stop: int, out: np.ndarray) -> np.ndarray:
        """Reads rows ``start:stop`` of a tensor into ``out`` (a writable, C-contiguous NumPy
        array of the tensor's dtype and exactly those rows' size, any shape), checksummed,
        without an intermediate copy; returns ``out``."""
        info = self.info(name)
        if not isinstance(out, np.ndarray):
            raise TypeError(f"tensor {name!r}: out must be a NumPy array, not {type(out).__name__}")
        if out.dtype != info.dtype:
            raise ValueError(f"tensor {name!r} is {info.dtype}, out is {out.dtype}")
        self._native().read_rows_into(name, start, stop, out)
        return out

    def get_slice(self, name: str) -> TensorSlice:
        """A lazy handle on one tensor's rows: ``a.get_slice("W")[10:20]`` reads and
        decodes only the chunks holding those rows (unknown names raise
        :class:`~bpz.errors.TensorNotFoundError`)."""
        return TensorSlice(self, name)

    def info(self, name: str) -> TensorInfo:
        """What the index says about one tensor (dtype, shape, storage, codec, sizes),
        without reading its data."""
        info = self._info_cache.get(name)
        if info is None:
            info = self._info_cache[name] = _info(self._native().info(name))
        return info

    def infos(self) -> list[TensorInfo]:
        """:meth:`info` for every tensor, in index order."""
        return [_info(d) for d in self._native().infos()]

    # -- whole-file properties
    def _parse(self) -> None:
        if not self._parsed:
            native = self._native()
            self._tree = parse_json(native.tree_json(), self.filename, "tree")
            self._metadata = parse_json(native.metadata_json(), self.filename, "metadata")
            self._parsed = True

    @property
    def metadata(self) -> Any:
        """The user metadata (any JSON value) stored with the archive."""
        self._parse()
        return self._metadata

    @property
    def version(self) -> tuple[int, int]:
        """The file's format version, ``(major, minor)``."""
        major, minor = self._native().version
        return (int(major), int(minor))

    @property
    def writer(self) -> dict[str, str] | None:
        """The writer recorded in the file (``{"name": ..., "version": ...}``), or None."""
        return self._native().writer

    @property
    def file_size(self) -> int:
        """The archive's size in bytes."""
        return int(self._native().file_size)

    @property
    def structure(self) -> Any:
        """The pytree's structure as stored in the index (JSON nodes that name their tensors), or
        None when the archive holds only named tensors (then :meth:`tree` is a flat dict)."""
        self._parse()
        return self._tree

    def tree(self) -> Any:
        """The saved pytree, with lazily-mapped views (zero-copy where raw)."""
        self._parse()
        if self._tree is None:
            return {name: self[name] for name in self.keys()}
        return self._rebuild(lambda node: _finish_leaf(self[node["tensor"]], node))

    def _rebuild(self, load_tensor: Any) -> Any:
        try:
            return unflatten(self._tree, load_tensor)
        except FormatError as e:  # tree errors don't know the file: name it
            raise type(e)(f"{self.filename}: {e}") from None

    def load(self) -> Any:
        """The saved pytree with owned, writable, checksummed arrays (all chunks decoded in parallel)."""
        self._parse()
        native = self._native()
        to_numpy = dtypes.to_numpy
        ndarray, asarray = _ndarray, _asarray
        with no_gc():
            arrays = {
                name: ndarray(shape, to_numpy(dtype), asarray(buf))
                for (name, dtype, shape), buf in zip(native.layouts(), native.read_all())
            }
        if self._tree is None:
            return arrays
        return self._rebuild(lambda node: _finish_leaf(arrays[node["tensor"]], node))

    def verify(
        self, name: str | None = None, *, decode: bool = False, max_decoded_bytes: int | None = None
    ) -> dict[str, int | bool]:
        """Checks every stored byte against its checksum (of one tensor, or of the whole
        file with its structure and padding): one read of the file, nothing decoded.

        ``decode=True`` also decodes every compressed chunk, which finds frames that match
        their checksum but do not decode (a file written that way, not damaged later). A
        small file can declare terabytes of zeros, so decoding more than
        ``max_decoded_bytes`` (default :attr:`default_decode_budget`) is refused with
        :class:`~bpz.errors.LimitExceededError` before anything is decoded. The report's
        ``"decoded"`` says whether chunks were decoded.
        """
        native = self._native()
        if name is not None:
            chunks = self.info(name).chunks
            native.verify_tensor(name, decode, max_decoded_bytes)
            return {"tensors": 1, "chunks": chunks, "decoded": decode}
        return dict(native.verify(decode, max_decoded_bytes))

    def verify_padding(self) -> None:
        """Checks that the alignment padding between the tensors is zero: with ``verify(name)``
        for every tensor this covers the whole file (the header and index are checked when
        opened). A non-zero byte raises :class:`~bpz.errors.CorruptDataError` naming its offset."""
        self._native().verify_padding()

    @property
    def default_decode_budget(self) -> int:
        """Decoded bytes ``verify(decode=True)`` accepts by default: 256 times the file
        size, and at least 4 GiB."""
        return int(self._native().default_decode_budget)


def open(  # noqa: A001
    filename: str | os.PathLike[str],
    backend: Literal["mmap", "pread"] = "mmap",
    parallel: bool = True,
    storage_options: Mapping[str, Any] | None = None,
    *,
    version: int | None = None,
) -> Archive:
    """Opens an archive lazily: only its index is read.

    ``version`` picks a version of an archive saved with ``append=True``: a number (as
    :attr:`Archive.versions` lists them), or negative to count back from the latest (-1 is
    the latest, -2 the one before); None (default) is the latest. Opening any version costs
    the same as opening the latest.

    ``backend="mmap"`` maps the file (raw tensors are zero-copy views);
    ``backend="pread"`` reads only what is asked for (network filesystems).

    ``filename`` may be a URL: ``https://host/path``, ``s3://bucket/key`` (also ``gs://``,
    ``az://``). Opening costs one request (a range of the file's end holding its index), each
    tensor or row range then one more, and a full load runs parallel ranged requests; every
    byte is checksummed. ``storage_options`` (e.g. ``endpoint``, ``region``,
    ``access_key_id``, ``secret_access_key``, ``session_token``, ``anonymous``,
    ``allow_http``, ``timeout``) add to the standard environment variables (``AWS_*``...).
    Arrays of a remote archive are copies (no zero-copy views).
    """
    return Archive(filename, backend=backend, parallel=parallel, storage_options=storage_options, version=version)


def load_pytree(
    filename: str | os.PathLike[str],
    target: Any = None,
    parallel: bool = True,
    storage_options: Mapping[str, Any] | None = None,
    *,
    version: int | None = None,
) -> Any:
    """Loads a pytree saved by :func:`bpz.save_pytree` (or a BrainPy ``.bp`` file).

    ``version`` loads an earlier version of an archive saved with ``append=True`` (see
    :func:`open`); None (default) loads the latest.

    Without ``target`` the structure is rebuilt faithfully (lists stay lists, tuples tuples,
    int keys ints; a brainstate ``FlattedDict`` was saved nested, so its keys come back as
    ``'a'``, not ``('a',)``). Array leaves are writable NumPy arrays whose checksums were
    verified — also those saved from jax (as BrainPy returns NumPy arrays; use
    :func:`bpz.jax.load` for jax arrays). Typed PRNG keys come back as jax key arrays
    (NumPy cannot hold them), NumPy scalars as NumPy scalars, brainunit Quantities as
    Quantities with the saved unit (brainunit is imported then; without it the mantissa is
    returned and a UserWarning names the unit).

    With ``target``, the result takes the target's structure and each leaf is checked, as
    BrainPy 2.9 / braintools do (:func:`bpz.pytree.accept_loaded`):

    * plain arrays (NumPy or jax), NumPy and Python numbers, and the values of brainstate
      ``State``s: the shape must match; the **dtype is not enforced** and the saved dtype is
      kept (nothing is cast; loading float64 data into a float32 array gives float64);
    * BrainPy ``Variable``s: the shape must match and the saved dtype, after jax's
      canonicalisation (float64 -> float32 with x64 off), must equal the Variable's
      (int64 data into a float32 Variable raises ValueError), as the Variable setter demands;
    * typed PRNG keys: a key array of the same shape and implementation is needed;
    * brainunit Quantities: the units must be equal (``ValueError: Unit mismatch: expected
      mV, got ms at target['V']``); a value with a unit never fills a target without one,
      nor the reverse;
    * keys in the file that the target lacks are ignored (as braintools does), with one
      UserWarning listing them; keys of the target missing from the file raise ValueError.

    Only BrainPy Variables and brainstate States (any object with a ``.value``) are filled
    **in place** — and only after every check passed, so a failed load changes nothing.
    Plain arrays in the target are **not** written: the result holds the loaded arrays in
    their place, so use the return value (``params = bpz.load_pytree(f, target=params)``).
    ``parallel`` decodes chunks and tensors on all cores. ``filename`` may be a URL of a bpz
    archive or of a BrainPy ``.bp`` file (read whole, with the limits of one on disk); see
    :func:`open`, which also says what ``storage_options`` holds.
    """
    filename = os.fspath(filename)
    _check_version_argument(version)
    if not _is_url(filename) and not os.path.exists(filename):
        raise CheckpointNotFoundError(f"Checkpoint not found: {filename}")
    fmt: str | None
    head = b""
    if os.path.isdir(filename):
        # A sharded checkpoint written by bpz.jax.save (bpz.sharded): its arrays whole, as NumPy.
        from .sharded import load_numpy

        loaded = load_numpy(filename)
        fmt = "sharded"
    elif _is_url(filename):
        fmt = "bpz"  # the native reader names what else it may be
    else:
        with builtins_open(filename, "rb") as f:
            head = f.read(SNIFF_BYTES)
        fmt = sniff(head)
    if fmt != "bpz" and version not in (None, 1, -1):
        raise ValueError(f"{filename}: a {fmt} checkpoint has one version; version={version} does not exist")
    if fmt == "sharded":
        pass
    elif fmt == "bpz" and _is_url(filename) and filename.endswith("/"):
        # A URL prefix names no archive: a sharded checkpoint written by bpz.jax.save.
        from .sharded import load_numpy

        loaded = load_numpy(filename, storage_options)
    elif fmt == "bpz":
        try:
            with open(filename, parallel=parallel, storage_options=storage_options, version=version) as archive:
                loaded = archive.load()
        except NotAnArchiveError:
            # An object that is not a bpz archive may be a BrainPy .bp checkpoint, read as on disk.
            if not _is_url(filename):
                raise
            directory, name = remote_object(filename, storage_options)
            if sniff(directory.read_head(name, SNIFF_BYTES)) != "bp":
                raise
            if version not in (None, 1, -1):
                raise ValueError(
                    f"{filename}: a bp checkpoint has one version; version={version} does not exist") from None
            loaded = read_remote_bp(directory, name, filename)
        except (FileNotFoundError, PermissionError):
            # No object at the URL (or an http server's 403 for a directory): it may be the
            # prefix of a sharded checkpoint, whose commit record decides.
            from .sharded import is_sharded_checkpoint, load_numpy

            if not _is_url(filename) or not is_sharded_checkpoint(filename, storage_options):
                raise
            loaded = load_numpy(filename, storage_options)
    elif fmt == "bp":
        from ._legacy import bp_msgpack

        loaded = bp_msgpack.read_bp(filename)
    else:
        _refuse(filename, head)
    return fill_target(filename, loaded, target, stacklevel=3)


def remote_object(url: str, storage_options: Mapping[str, Any] | None) -> tuple[Any, str]:
    """The prefix holding the object at ``url`` (a ``_bpz.RemoteDir``) and the object's name in it."""
    parent, _, name = url.rpartition("/")
    return _bpz.RemoteDir(parent, storage_options), unquote(name)


def read_remote_bp(directory: Any, name: str, url: str) -> Any:
    """A BrainPy ``.bp`` object (one msgpack document) read whole, with the limits of a ``.bp``
    file on disk; errors name ``url``."""
    from ._legacy import bp_msgpack
    from ._legacy._common import MAX_FILE_BYTES, source_name

    data = directory.read_all(name, MAX_FILE_BYTES)
    try:
        return bp_msgpack.read_bp(data)
    except FormatError as e:
        raise type(e)(str(e).replace(source_name(data), url)) from None


def fill_target(filename: str, loaded: Any, target: Any, *, stacklevel: int = 2) -> Any:
    """``loaded`` (a tree read from ``filename``) given ``target``'s structure, as :func:`load_pytree`
    returns it: every leaf checked first, then Variables and States filled in place. Also used by
    callers that read the tree themselves (a BrainPy ``.bp`` object in a bucket)."""
    if target is None:
        return loaded
    assignments: list[tuple[Any, Any]] = []
    ignored: list[str] = []
    result = restore_into(target, loaded, assignments, ignored=ignored)
    for obj, value in assignments:
        obj.value = value
    if ignored:
        shown = ", ".join(ignored[:20]) + (f" and {len(ignored) - 20} more" if len(ignored) > 20 else "")
        warnings.warn(
            f"bpz: {filename} holds {len(ignored)} value(s) the target has no place for, not loaded: {shown}",
            UserWarning,
            stacklevel=stacklevel,
        )
    return result


def _append_in_progress(path: str) -> bool:
    """Whether another process holds the append lock of ``path`` now: then the bytes after the
    last version are an append being written, not one that was killed (nothing to warn about)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock to ask
        return False
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)  # closing releases a lock we took
    return False


def _check_version_argument(version: Any) -> None:
    if version is not None and (isinstance(version, bool) or not isinstance(version, (int, np.integer))):
        raise TypeError(f"version must be an int (negative counts back from the latest) or None, not {version!r}")


def _refuse(filename: str, head: bytes) -> None:
    if head[1:4] == b"BPZ":
        # A damaged bpz header (text-mode or 7-bit mangling): let the native reader say which.
        _bpz.Archive(filename)
    head = head[:8]
    raise NotAnArchiveError(
        f"{filename}: neither a bpz archive nor a BrainPy .bp checkpoint (first bytes {head.hex(' ')})"
    )
