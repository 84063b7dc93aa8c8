"""The checkpoint API under the names BrainPy users know.

``import bpz.checkpoints as checkpoints`` gives ``save_pytree``, ``load_pytree``
and ``AsyncManager`` as in ``brainpy.checkpoints`` (2.7–2.9), plus the
numbered-step checkpoints of BrainPy 2.3–2.6 and flax: ``save_checkpoint`` /
``restore_checkpoint`` in a directory of ``{prefix}{step}`` files, or under a bucket
prefix (``s3://bucket/run/``, ``gs://``, ``az://``: one object per step, with the same
guarantees) — or, when the destination is a local ``.bpz`` file, as versions of that one
archive (each version's metadata holds its step; unchanged chunks are stored once).
"""

from __future__ import annotations

import logging
import math
import numbers
import os
import re
import stat
import warnings
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote

from . import _bpz
from ._legacy._common import fsync_path
from .errors import (
    CheckpointNotFoundError,
    InvalidArgumentError,
    InvalidCheckpointError,
    InvalidCheckpointPath,
    NotAnArchiveError,
    UnsupportedFeatureError,
)
from .formats import SNIFF_BYTES, sniff
from .read import _is_url, fill_target, load_pytree, read_remote_bp
from .read import open as open_archive
from .write import AsyncManager, absolute_path, compact_versions, fspath_str, save_pytree, save_tree

__all__ = [
    "save_pytree",
    "load_pytree",
    "AsyncManager",
    "InvalidCheckpointPath",
    "InvalidCheckpointError",
    "save_checkpoint",
    "restore_checkpoint",
    "latest_checkpoint",
    "checkpoint_steps",
]

logger = logging.getLogger(__name__)
_STEP = re.compile(r"-?\d+(\.\d+)?([eE][-+]?\d+)?")
_TEMP_SUFFIX = ".bpz-tmp"  # the Rust writer's temporaries: .NAME.PID-HEX-N.bpz-tmp


def is_checkpoint_file(path: str) -> bool:
    """True for a regular file (not a symlink) that starts like a bpz archive or a BrainPy ``.bp`` file.

    Only such files are listed, restored as "latest" or removed by retention: a
    directory, symlink, FIFO or foreign file that happens to be named like a
    checkpoint is left alone.
    """
    try:
        # O_NONBLOCK: a FIFO swapped in after a listing must not block the open.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return False
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return False
        head = os.read(fd, SNIFF_BYTES)
    except OSError:
        return False
    finally:
        os.close(fd)
    return sniff(head) in ("bpz", "bp")


def _check_prefix(prefix: str, remote: bool = False) -> None:
    if not isinstance(prefix, str):
        raise TypeError(f"prefix must be a str, not {type(prefix).__name__}")
    separators = "/\\" if remote else os.sep + (os.altsep or "")
    if any(c in prefix for c in separators) or "\0" in prefix:
        raise ValueError(f"prefix must be a plain file-name prefix, without a directory part: {prefix!r}")


def _is_http(url: str) -> bool:
    return url[:8].lower().startswith(("http://", "https://"))


# -- where the numbered checkpoints are: a local directory or a bucket prefix. The step logic
# (listing, latest, retention, rollback) is written once, against these two.


class _LocalDir:
    """A directory of checkpoint files."""

    def __init__(self, shown: str, where: str) -> None:
        self.shown = shown  # the caller's spelling: returned paths and messages use it
        self.where = where  # what is opened (absolute for a save, so an async save ignores a later chdir)

    def exists(self) -> bool:
        return os.path.isdir(self.where)

    def names(self) -> list[str]:
        try:
            return [n for n in os.listdir(self.where) if not n.endswith(_TEMP_SUFFIX)]
        except (FileNotFoundError, NotADirectoryError):
            return []

    def path(self, name: str) -> str:
        return os.path.join(self.shown, name)

    def file(self, name: str) -> str:
        return os.path.join(self.where, name)

    def occupied(self, name: str) -> bool:
        return os.path.lexists(self.file(name))

    def is_checkpoint(self, name: str) -> bool:
        return is_checkpoint_file(self.file(name))

    def remove(self, name: str) -> None:
        os.remove(self.file(name))

    def commit(self, name: str) -> None:
        fsync_path(self.file(name))
        fsync_path(self.where, directory=True)

    def removed(self) -> None:
        fsync_path(self.where, directory=True)

    def load(self, name: str, target: Any, parallel: bool) -> Any:
        path = self.path(name)
        if not os.path.exists(path):
            raise CheckpointNotFoundError(f"Matching checkpoint not found: {path}")
        if not os.path.isfile(path):
            raise CheckpointNotFoundError(f"Matching checkpoint not found: {path} is not a file")
        return load_pytree(path, target=target, parallel=parallel)


class _Prefix:
    """The objects directly under a URL prefix (``s3://bucket/run/``): one object per step.

    A bucket has no fsync: an object exists only once its upload completed, so that
    completion is the commit, and deleting after it is safe.
    """

    def __init__(self, url: str, storage_options: Mapping[str, Any] | None) -> None:
        self.storage_options = storage_options
        self.dir = _bpz.RemoteDir(url, storage_options)
        self.shown = self.dir.label  # without credentials, nor a trailing '/'
        self.http = _is_http(url)
        self._listed: set[str] | None = None
        self._heads: dict[str, bytes] = {}

    def exists(self) -> bool:
        return True  # a prefix without objects is no different from a missing one

    def names(self) -> list[str]:
        if self.http:
            raise UnsupportedFeatureError(
                f"{self.shown}: the latest checkpoint, the list of steps and retention need the list of objects "
                "under the prefix, and an http(s):// server cannot give one: restore a given step "
                "(restore_checkpoint(..., step=N)), or use the s3://, gs:// or az:// URL of the same bucket")
        objects, _ = self.dir.list()
        self._listed = {name for name, _size, _etag, _modified in objects}
        return sorted(self._listed)

    def path(self, name: str) -> str:
        return self.dir.url(name)

    def occupied(self, name: str) -> bool:
        if self._listed is not None:  # a save lists the prefix just before asking
            return name in self._listed
        return self.dir.head(name) is not None

    def first_bytes(self, name: str) -> bytes:
        """One small ranged GET: the name alone does not make an object a checkpoint."""
        head = self.dir.read_head(name, SNIFF_BYTES)  # an empty object gives b""
        self._heads[name] = head
        return head

    def is_checkpoint(self, name: str) -> bool:
        try:
            return sniff(self.first_bytes(name)) in ("bpz", "bp")
        except FileNotFoundError:
            return False

    def remove(self, name: str) -> None:
        self.dir.delete(name)

    def commit(self, name: str) -> None:
        pass  # the completed upload is durable: there is nothing to fsync

    def removed(self) -> None:
        pass

    def load(self, name: str, target: Any, parallel: bool) -> Any:
        url = self.path(name)
        head = self._heads.get(name)
        if head is None:
            try:
                head = self.first_bytes(name)
            except FileNotFoundError:
                raise CheckpointNotFoundError(f"Matching checkpoint not found: {url}") from None
        fmt = sniff(head)
        if fmt == "bpz":
            return load_pytree(url, target=target, parallel=parallel, storage_options=self.storage_options)
        if fmt == "bp":
            return fill_target(url, read_remote_bp(self.dir, name, url), target, stacklevel=4)
        raise NotAnArchiveError(
            f"{url}: neither a bpz archive nor a BrainPy .bp checkpoint (first bytes {head[:8].hex(' ')})")


_Location = _LocalDir | _Prefix


def _location(ckpt_dir: str, storage_options: Mapping[str, Any] | None, *, resolve: bool = False) -> _Location:
    if _is_url(ckpt_dir):
        return _Prefix(ckpt_dir, storage_options)
    if storage_options is not None:
        raise TypeError(f"storage_options apply to URLs (s3://..., gs://..., az://...), not to the local path "
                        f"{ckpt_dir!r}")
    return _LocalDir(ckpt_dir, absolute_path(ckpt_dir or ".") if resolve else ckpt_dir or ".")


def _candidates(loc: _Location, prefix: str) -> list[tuple[float, str]]:
    """``(step, name)`` of every entry named ``{prefix}{number}``, oldest first, not yet checked to
    be a checkpoint."""
    found = []
    for name in loc.names():
        number = name[len(prefix):] if name.startswith(prefix) else ""
        if _STEP.fullmatch(number):
            found.append((float(number), name))
    return sorted(found)


def _newest(loc: _Location, candidates: list[tuple[float, str]]) -> tuple[float, str] | None:
    """The newest candidate that is a checkpoint: checked newest first, until one is."""
    for step, name in reversed(candidates):
        if loc.is_checkpoint(name):
            return step, name
    return None


def checkpoint_steps(ckpt_dir: str | os.PathLike[str], prefix: str = "checkpoint_", *,
                     storage_options: Mapping[str, Any] | None = None) -> list[tuple[float, str]]:
    """``(step, path)`` of every numbered checkpoint in ``ckpt_dir``, oldest first.

    Only regular files named ``{prefix}{number}`` that are bpz archives or BrainPy
    ``.bp`` checkpoints count (see :func:`is_checkpoint_file`). ``ckpt_dir`` may be a
    bucket prefix (``s3://bucket/run/``, ``gs://``, ``az://``; with ``storage_options``
    as for :func:`bpz.open`): the paths are then the objects' URLs, and each object named
    like a checkpoint costs one small ranged GET (its first bytes tell whether it is one).
    An ``http(s)://`` prefix cannot be listed (:class:`~bpz.errors.UnsupportedFeatureError`).
    """
    ckpt_dir = fspath_str(ckpt_dir)
    _check_prefix(prefix, _is_url(ckpt_dir))
    loc = _location(ckpt_dir, storage_options)
    return [(step, loc.path(name)) for step, name in _candidates(loc, prefix) if loc.is_checkpoint(name)]


def latest_checkpoint(ckpt_dir: str | os.PathLike[str], prefix: str = "checkpoint_", *,
                      storage_options: Mapping[str, Any] | None = None) -> str | None:
    """Path (or URL, for a bucket prefix) of the newest numbered checkpoint, or None.

    Objects named like a checkpoint are checked newest first, until one is a checkpoint.
    """
    ckpt_dir = fspath_str(ckpt_dir)
    _check_prefix(prefix, _is_url(ckpt_dir))
    loc = _location(ckpt_dir, storage_options)
    newest = _newest(loc, _candidates(loc, prefix))
    return loc.path(newest[1]) if newest else None


def _check_step(step: Any, prefix: str) -> str:
    """The file name of ``step``; refuses steps whose name would not list as that step again."""
    if isinstance(step, bool) or not isinstance(step, numbers.Real):
        raise TypeError(f"step must be a number, not {type(step).__name__}")
    try:
        finite = math.isfinite(float(step))
    except OverflowError:
        finite = False
    number = f"{step}"
    if not finite or not _STEP.fullmatch(number):
        raise ValueError(f"step must be a finite number written in digits, not {number}")
    return f"{prefix}{number}"


def _same_error(e: OSError, message: str) -> OSError:
    return type(e)(e.errno, message) if e.errno is not None else type(e)(message)


class _Cleanup:
    """What a numbered save deletes once its new checkpoint is in place (in the background for async saves)."""

    def __init__(self, loc: _Location, prefix: str, name: str, step: float, later: list[str], keep: int,
                 keep_every_n_steps: int | None, sync: bool) -> None:
        self.loc, self.prefix, self.name, self.step, self.later = loc, prefix, name, step, later
        self.keep, self.keep_every_n_steps, self.sync = keep, keep_every_n_steps, sync
        self.new = loc.path(name)
        self.committed = sync  # a synced save is durable already; otherwise made so before the first delete

    def _before_delete(self) -> None:
        if not self.committed:
            # Deleting is only safe once the new checkpoint survives a power failure.
            self.loc.commit(self.name)
            self.committed = True

    def __call__(self) -> None:
        self._roll_back()
        self._retain()

    def _roll_back(self) -> None:
        # Oldest first: the newest later step goes last, so latest_checkpoint() is the
        # old latest until the final delete and the new checkpoint right after it.
        for name in self.later:
            path = self.loc.path(name)
            try:
                if not self.loc.is_checkpoint(name):
                    continue
            except OSError as e:
                raise _same_error(e, f"Saved {self.new}, but could not check the later checkpoint {path} "
                                     f"to roll back to step {self.step}: {e.strerror or e}") from e
            warnings.warn(f"Removing checkpoint at {path}", stacklevel=3)
            self._before_delete()
            try:
                self.loc.remove(name)
            except FileNotFoundError:
                continue
            except OSError as e:
                # Left in place, the later step would still be "latest": the rollback did not happen.
                raise _same_error(e, f"Saved {self.new}, but could not remove the later checkpoint {path} "
                                     f"to roll back to step {self.step}: {e.strerror or e}") from e
            if self.sync:  # each removal durable in order, so a power failure also keeps that order
                self.loc.removed()

    def _retain(self) -> None:
        # Newest first: the newest `keep` checkpoints (the new one among them) stay; each older
        # one is checked to be a checkpoint right before it is deleted.
        try:
            candidates = _candidates(self.loc, self.prefix)
        except OSError as e:  # the save itself succeeded: say so, do not fail it
            self._warn(f"could not list {self.loc.shown} to remove old checkpoints: {e}")
            return
        kept = 0
        for step, name in reversed(candidates):
            if name == self.name:
                kept += 1
                continue
            if kept >= self.keep and self.keep_every_n_steps and step % self.keep_every_n_steps == 0:
                continue
            path = self.loc.path(name)
            try:
                real = self.loc.is_checkpoint(name)
            except OSError as e:
                self._warn(f"could not check the old checkpoint {path}: {e}")
                continue
            if not real:
                continue
            if kept < self.keep:
                kept += 1
                continue
            logger.info("Removing checkpoint at %s", path)
            self._before_delete()
            try:
                self.loc.remove(name)
            except FileNotFoundError:
                pass
            except OSError as e:
                self._warn(f"could not remove the old checkpoint {path}: {e}")

    def _warn(self, what: str) -> None:
        warnings.warn(f"Saved {self.new}, but {what}", RuntimeWarning, stacklevel=4)


def _check_savable_prefix(loc: _Prefix, url: str) -> None:
    if loc.http:
        raise UnsupportedFeatureError(
            f"{loc.shown}: numbered checkpoints cannot be saved under an http(s):// prefix (bpz reads from "
            "HTTP servers but can neither write to them nor list them): save to the s3://, gs:// or az:// URL "
            "of the bucket, or to a local directory")
    if url.endswith(".bpz"):  # with a trailing '/', a prefix that happens to end so
        raise InvalidArgumentError(
            f"{loc.shown}: numbered checkpoints cannot be kept as versions of one archive in object storage "
            f"(objects are immutable: nothing can be appended to one); give a prefix ending in '/' "
            f"({loc.shown}/) for one object per step, or a local .bpz file")


def save_checkpoint(
    ckpt_dir: str | os.PathLike[str],
    target: Any,
    step: int | float,
    prefix: str = "checkpoint_",
    keep: int = 1,
    overwrite: bool = False,
    keep_every_n_steps: int | None = None,
    async_manager: AsyncManager | None = None,
    *,
    storage_options: Mapping[str, Any] | None = None,
    **save_options: Any,
) -> str:
    """Saves ``target`` as ``{ckpt_dir}/{prefix}{step}`` and keeps the newest ``keep`` files.

    When ``ckpt_dir`` names a ``.bpz`` file (not a directory), the checkpoint is appended
    to that one archive as a new version whose metadata is ``{"step": step}`` (with a
    ``metadata=`` option: ``{"step": step, "metadata": ...}``): chunks equal to the
    previous version's are stored once. ``keep`` / ``keep_every_n_steps`` name the steps
    kept as for files; the space of the others is reclaimed by compacting the archive
    (rewriting the kept versions, atomically) once they number ``keep`` or more, so the
    file holds at most about twice ``keep`` versions. ``overwrite=True`` with an earlier
    step drops the later steps' versions at once. :func:`restore_checkpoint` with the same
    file name loads a step.

    ``ckpt_dir`` may be a bucket prefix, ``s3://bucket/run/`` (or ``gs://``, ``az://``;
    with or without the trailing ``/``): each step is one object ``{prefix}{step}`` under
    it, uploaded as :func:`bpz.save_pytree` does (the object appears only once complete),
    with endpoint, region and credentials from the environment and ``storage_options``
    (as for :func:`bpz.open`). The guarantees below hold there too; the upload's completion
    is the commit (a bucket has no fsync). Listing costs one small GET per object named
    like a checkpoint that is looked at. A URL ending in ``.bpz`` (versions of one archive)
    raises :class:`~bpz.errors.InvalidArgumentError` — objects cannot be appended to — and
    an ``http(s)://`` prefix :class:`~bpz.errors.UnsupportedFeatureError`.

    Saving a step at or below the newest existing one raises
    :class:`InvalidCheckpointError` unless ``overwrite=True``, which then also
    removes the checkpoints of later steps (oldest first, so the latest is never an
    unrelated step meanwhile). ``keep_every_n_steps`` also keeps
    every checkpoint whose step is a multiple of it. Nothing is removed before
    the new checkpoint is completely written (and on disk, even with
    ``sync=False``); a failed save removes nothing. For an async save the
    removals run in the background after the write, and the directory is
    resolved now (a later ``os.chdir`` does not move it). Only bpz and BrainPy
    checkpoint files are ever listed or removed; an existing non-checkpoint at
    the new checkpoint's name raises :class:`InvalidCheckpointPath`. Failing to
    remove an old checkpoint only warns (the save succeeded).
    """
    ckpt_dir = fspath_str(ckpt_dir)
    _check_prefix(prefix, _is_url(ckpt_dir))
    name = _check_step(step, prefix)
    if keep < 1:
        raise ValueError(f"keep must be at least 1, not {keep}")
    if not _is_url(ckpt_dir) and storage_options is None and is_archive_destination(ckpt_dir):
        return _save_version(ckpt_dir, target, step, keep, overwrite, keep_every_n_steps, async_manager,
                             save_options)
    loc = _location(ckpt_dir, storage_options, resolve=True)
    if isinstance(loc, _Prefix):
        _check_savable_prefix(loc, ckpt_dir)
    if async_manager is not None:
        if isinstance(async_manager, AsyncManager):
            async_manager._check_open()
        async_manager.wait_previous_save()  # the listing below must include its result
    shown_path = loc.path(name)
    candidates = _candidates(loc, prefix)
    newest = _newest(loc, candidates)
    later: list[str] = []
    if newest is not None and step <= newest[0]:
        if not overwrite:
            raise InvalidCheckpointError(
                f'Trying to save an outdated checkpoint at step: "{step}" and path: "{shown_path}".'
            )
        later = [n for s, n in candidates if s > step]  # each checked to be a checkpoint before its delete
    if loc.occupied(name) and not loc.is_checkpoint(name):
        raise InvalidCheckpointPath(
            f'Invalid checkpoint at "{shown_path}": a file that is not a checkpoint is there; not replacing it.'
        )
    verbose = save_options.pop("verbose", False)
    if verbose:
        print(f"Saving checkpoint into {shown_path}")
    cleanup = _Cleanup(loc, prefix, name, float(step), later, keep, keep_every_n_steps,
                       save_options.get("sync", True))
    if isinstance(loc, _Prefix):
        save_tree(shown_path, target, overwrite=True, async_manager=async_manager, after_write=cleanup,
                  storage_options=None if storage_options is None else dict(storage_options), **save_options)
    else:
        save_tree(shown_path, target, overwrite=True, async_manager=async_manager, path=loc.file(name),
                  after_write=cleanup, **save_options)
    return shown_path


def restore_checkpoint(
    ckpt_dir: str | os.PathLike[str],
    target: Any = None,
    step: int | float | None = None,
    prefix: str = "checkpoint_",
    parallel: bool = True,
    *,
    storage_options: Mapping[str, Any] | None = None,
) -> Any:
    """Loads the checkpoint of ``step`` (the newest by default) from ``ckpt_dir``.

    A missing directory, or one without checkpoints (with a warning), returns
    ``target`` unchanged; a missing ``step`` raises an error that is both a
    ``FileNotFoundError`` and a ``ValueError``. Without ``step``, only files
    :func:`checkpoint_steps` lists are considered (checked newest first, until one
    is a checkpoint).

    ``ckpt_dir`` may be a bucket prefix (``s3://bucket/run/``, ``gs://``, ``az://``, with
    ``storage_options`` as for :func:`bpz.open`): an empty prefix is a directory without
    checkpoints. An ``http(s)://`` prefix serves a given ``step`` (its object URL), but
    the latest cannot be found there (no listing:
    :class:`~bpz.errors.UnsupportedFeatureError`). A URL of one ``.bpz`` object restores a
    step from its versions, as for a local ``.bpz`` file.
    """
    ckpt_dir = fspath_str(ckpt_dir)
    _check_prefix(prefix, _is_url(ckpt_dir))
    loc = _location(ckpt_dir, storage_options)
    if isinstance(loc, _Prefix):
        if _is_archive_object(ckpt_dir, storage_options):
            return _restore_version(ckpt_dir, target, step, parallel, storage_options)
    elif is_archive_destination(ckpt_dir) and os.path.isfile(ckpt_dir):
        return _restore_version(ckpt_dir, target, step, parallel)
    if not loc.exists():
        logger.info("Found no checkpoint directory at %s", ckpt_dir)
        return target
    if step is not None:
        return loc.load(f"{prefix}{step}", target, parallel)
    newest = _newest(loc, _candidates(loc, prefix))
    if newest is None:
        warnings.warn(f"Found no checkpoint files in {loc.shown} with prefix {prefix}", stacklevel=2)
        return target
    return loc.load(newest[1], target, parallel)


def _is_archive_object(url: str, storage_options: Mapping[str, Any] | None) -> bool:
    """Whether ``url`` names one ``.bpz`` object (versions of one archive), not a prefix."""
    if not url.endswith(".bpz"):
        return False
    parent, _, base = url.rpartition("/")
    if parent.endswith(":/"):  # s3://name.bpz: a bucket
        return False
    return _bpz.RemoteDir(parent + "/", storage_options).head(unquote(base)) is not None


# -- numbered checkpoints as versions of one archive (format 1.1)


def is_archive_destination(ckpt_dir: str) -> bool:
    """Whether ``save_checkpoint``/``restore_checkpoint`` keep their steps as versions of one
    ``.bpz`` archive (the name ends in ``.bpz`` and is not a directory)."""
    return ckpt_dir.endswith(".bpz") and not os.path.isdir(ckpt_dir)


def archive_steps(path: str, storage_options: Mapping[str, Any] | None = None) -> list[tuple[float, int]]:
    """``(step, version)`` of every checkpoint version in the archive (a path or a URL), by step."""
    if not _is_url(path) and not os.path.exists(path):
        return []
    with open_archive(path, storage_options=storage_options) as a:
        versions = a.versions
    steps = [(v.metadata["step"], v.number) for v in versions
             if isinstance(v.metadata, dict) and isinstance(v.metadata.get("step"), (int, float))
             and not isinstance(v.metadata.get("step"), bool)]
    return sorted(steps)


def _versions_to_keep(steps: list[tuple[float, int]], keep: int, keep_every_n_steps: int | None) -> list[int]:
    newest = {v for _, v in steps[-keep:]}
    every = {v for s, v in steps if keep_every_n_steps and s % keep_every_n_steps == 0}
    return sorted(newest | every)


def _save_version(path_shown: str, target: Any, step: int | float, keep: int, overwrite: bool,
                  keep_every_n_steps: int | None, async_manager: AsyncManager | None,
                  save_options: dict[str, Any]) -> str:
    if async_manager is not None:
        if isinstance(async_manager, AsyncManager):
            async_manager._check_open()
        async_manager.wait_previous_save()  # the steps below must include its version
    path = absolute_path(path_shown)
    if os.path.lexists(path) and not is_checkpoint_file(path):
        raise InvalidCheckpointPath(
            f'Invalid checkpoint at "{path_shown}": a file that is not a checkpoint is there; not appending to it.'
        )
    steps = archive_steps(path)
    if steps and step <= steps[-1][0] and not overwrite:
        raise InvalidCheckpointError(
            f'Trying to save an outdated checkpoint at step: "{step}" and path: "{path_shown}".'
        )
    user_metadata = save_options.pop("metadata", None)
    metadata = {"step": step} if user_metadata is None else {"step": step, "metadata": user_metadata}
    if save_options.pop("verbose", False):
        print(f"Saving checkpoint into {path_shown} (step {step})")
    sync = save_options.get("sync", True)

    def retention() -> None:
        # Runs once the new version is committed; compaction replaces the file atomically,
        # so a failure here leaves every version in place (and the save succeeded).
        now = archive_steps(path)
        newest_version = max(v for _, v in now)
        live = [(s, v) for s, v in now if s < step or v == newest_version]  # a rollback drops later steps
        kept = _versions_to_keep(live, keep, keep_every_n_steps)
        dropped = len(now) - len(kept)
        if dropped and (len(live) < len(now) or dropped >= keep):
            try:
                compact_versions(path, kept, sync=sync)
            except OSError as e:
                warnings.warn(f"Saved step {step} into {path_shown}, but could not compact it: {e}",
                              RuntimeWarning, stacklevel=2)

    save_tree(path_shown, target, overwrite=True, async_manager=async_manager, path=path, after_write=retention,
              metadata=metadata, append=True, **save_options)
    return path_shown


def _restore_version(path: str, target: Any, step: int | float | None, parallel: bool,
                     storage_options: Mapping[str, Any] | None = None) -> Any:
    steps = archive_steps(path, storage_options)
    if step is None:
        if not steps:
            warnings.warn(f"Found no checkpoint versions in {path}", stacklevel=3)
            return target
        version = max(v for _, v in steps if _ == steps[-1][0])
    else:
        matches = [v for s, v in steps if s == step]
        if not matches:
            raise CheckpointNotFoundError(f"Matching checkpoint not found: step {step} in {path} "
                                          f"(steps {', '.join(str(s) for s, _ in steps) or 'none'})")
        version = max(matches)
    return load_pytree(path, target=target, parallel=parallel, version=version, storage_options=storage_options)
