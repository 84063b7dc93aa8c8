"""The checkpoint API under the names BrainPy users know.

``import bpz.checkpoints as checkpoints`` gives ``save_pytree``, ``load_pytree``
and ``AsyncManager`` as in ``brainpy.checkpoints`` (2.7–2.9), plus the
numbered-step checkpoints of BrainPy 2.3–2.6 and flax: ``save_checkpoint`` /
``restore_checkpoint`` in a directory of ``{prefix}{step}`` files — or, when the
destination is a ``.bpz`` file, as versions of that one archive (each version's metadata
holds its step; unchanged chunks are stored once).
"""

from __future__ import annotations

import logging
import math
import numbers
import os
import re
import stat
import warnings
from typing import Any

from ._legacy._common import fsync_path
from .errors import CheckpointNotFoundError, InvalidCheckpointError, InvalidCheckpointPath
from .formats import SNIFF_BYTES, sniff
from .read import load_pytree
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


def _check_prefix(prefix: str) -> None:
    if not isinstance(prefix, str):
        raise TypeError(f"prefix must be a str, not {type(prefix).__name__}")
    if os.sep in prefix or (os.altsep and os.altsep in prefix) or "\0" in prefix:
        raise ValueError(f"prefix must be a plain file-name prefix, without a directory part: {prefix!r}")


def checkpoint_steps(ckpt_dir: str | os.PathLike[str], prefix: str = "checkpoint_") -> list[tuple[float, str]]:
    """``(step, path)`` of every numbered checkpoint in ``ckpt_dir``, oldest first.

    Only regular files named ``{prefix}{number}`` that are bpz archives or BrainPy
    ``.bp`` checkpoints count (see :func:`is_checkpoint_file`).
    """
    ckpt_dir = fspath_str(ckpt_dir)
    _check_prefix(prefix)
    try:
        names = os.listdir(ckpt_dir or ".")
    except (FileNotFoundError, NotADirectoryError):
        return []
    found = []
    for name in names:
        if not name.startswith(prefix) or name.endswith(_TEMP_SUFFIX):
            continue
        number = name[len(prefix):]
        if not _STEP.fullmatch(number):
            continue
        path = os.path.join(ckpt_dir, name)
        if is_checkpoint_file(path):
            found.append((float(number), path))
    return sorted(found)


def latest_checkpoint(ckpt_dir: str | os.PathLike[str], prefix: str = "checkpoint_") -> str | None:
    """Path of the newest numbered checkpoint, or None."""
    steps = checkpoint_steps(ckpt_dir, prefix)
    return steps[-1][1] if steps else None


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


class _Cleanup:
    """What a numbered save deletes once its new file is in place (in the background for async saves)."""

    def __init__(self, ckpt_dir: str, shown_dir: str, prefix: str, path: str, step: float, later: list[str],
                 keep: int, keep_every_n_steps: int | None, sync: bool) -> None:
        self.ckpt_dir, self.shown_dir, self.prefix, self.path, self.step = ckpt_dir, shown_dir, prefix, path, step
        self.later, self.keep, self.keep_every_n_steps, self.sync = later, keep, keep_every_n_steps, sync

    def shown(self, path: str) -> str:
        return os.path.join(self.shown_dir, os.path.basename(path))

    def __call__(self) -> None:
        if not self.sync and (self.later or self._retention_candidates()):
            # Deleting is only safe once the new checkpoint survives a power failure.
            fsync_path(self.path)
            fsync_path(self.ckpt_dir, directory=True)
        self._roll_back()
        for path in self._retention_candidates():
            logger.info("Removing checkpoint at %s", self.shown(path))
            try:
                os.remove(path)
            except FileNotFoundError:
                pass
            except OSError as e:  # the save itself succeeded: say so, do not fail it
                warnings.warn(f"Saved {self.shown(self.path)}, but could not remove the old checkpoint "
                              f"{self.shown(path)}: {e}", RuntimeWarning, stacklevel=2)

    def _roll_back(self) -> None:
        # Oldest first: the newest later step goes last, so latest_checkpoint() is the
        # old latest until the final unlink and the new checkpoint right after it.
        for path in self.later:
            if not is_checkpoint_file(path):
                continue
            warnings.warn(f"Removing checkpoint at {self.shown(path)}", stacklevel=3)
            try:
                os.remove(path)
            except FileNotFoundError:
                continue
            except OSError as e:
                # Left in place, the later step would still be "latest": the rollback did not happen.
                raise type(e)(e.errno, f"Saved {self.shown(self.path)}, but could not remove the later checkpoint "
                              f"{self.shown(path)} to roll back to step {self.step}: {e.strerror}") from e
            if self.sync:  # each removal durable in order, so a power failure also keeps that order
                fsync_path(self.ckpt_dir, directory=True)

    def _retention_candidates(self) -> list[str]:
        steps = checkpoint_steps(self.ckpt_dir, self.prefix)
        return [
            path
            for step, path in steps[: max(len(steps) - self.keep, 0)]
            if path != self.path and not (self.keep_every_n_steps and step % self.keep_every_n_steps == 0)
        ]


def save_checkpoint(
    ckpt_dir: str | os.PathLike[str],
    target: Any,
    step: int | float,
    prefix: str = "checkpoint_",
    keep: int = 1,
    overwrite: bool = False,
    keep_every_n_steps: int | None = None,
    async_manager: AsyncManager | None = None,
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

    Saving a step at or below the newest existing one raises
    :class:`InvalidCheckpointError` unless ``overwrite=True``, which then also
    removes the checkpoints of later steps. ``keep_every_n_steps`` also keeps
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
    _check_prefix(prefix)
    name = _check_step(step, prefix)
    if keep < 1:
        raise ValueError(f"keep must be at least 1, not {keep}")
    if is_archive_destination(ckpt_dir):
        return _save_version(ckpt_dir, target, step, keep, overwrite, keep_every_n_steps, async_manager,
                             save_options)
    if async_manager is not None:
        if isinstance(async_manager, AsyncManager):
            async_manager._check_open()
        async_manager.wait_previous_save()  # the listing below must include its result
    shown_path = os.path.join(ckpt_dir, name)
    abs_dir = absolute_path(ckpt_dir or ".")
    path = os.path.join(abs_dir, name)
    existing = checkpoint_steps(abs_dir, prefix)
    later: list[str] = []
    if existing and step <= existing[-1][0]:
        if not overwrite:
            raise InvalidCheckpointError(
                f'Trying to save an outdated checkpoint at step: "{step}" and path: "{shown_path}".'
            )
        later = [p for s, p in existing if s > step]
    if os.path.lexists(path) and not is_checkpoint_file(path):
        raise InvalidCheckpointPath(
            f'Invalid checkpoint at "{shown_path}": a file that is not a checkpoint is there; not replacing it.'
        )
    verbose = save_options.pop("verbose", False)
    if verbose:
        print(f"Saving checkpoint into {shown_path}")
    cleanup = _Cleanup(abs_dir, ckpt_dir, prefix, path, float(step), later, keep, keep_every_n_steps,
                       save_options.get("sync", True))
    save_tree(shown_path, target, overwrite=True, async_manager=async_manager, path=path, after_write=cleanup,
              **save_options)
    return shown_path


def restore_checkpoint(
    ckpt_dir: str | os.PathLike[str],
    target: Any = None,
    step: int | float | None = None,
    prefix: str = "checkpoint_",
    parallel: bool = True,
) -> Any:
    """Loads the checkpoint of ``step`` (the newest by default) from ``ckpt_dir``.

    A missing directory, or one without checkpoints (with a warning), returns
    ``target`` unchanged; a missing ``step`` raises an error that is both a
    ``FileNotFoundError`` and a ``ValueError``. Without ``step``, only files
    :func:`checkpoint_steps` lists are considered.
    """
    ckpt_dir = fspath_str(ckpt_dir)
    _check_prefix(prefix)
    if is_archive_destination(ckpt_dir) and os.path.isfile(ckpt_dir):
        return _restore_version(ckpt_dir, target, step, parallel)
    if not os.path.isdir(ckpt_dir or "."):
        logger.info("Found no checkpoint directory at %s", ckpt_dir)
        return target
    if step is not None:
        path = os.path.join(ckpt_dir, f"{prefix}{step}")
        if not os.path.exists(path):
            raise CheckpointNotFoundError(f"Matching checkpoint not found: {path}")
        if not os.path.isfile(path):
            raise CheckpointNotFoundError(f"Matching checkpoint not found: {path} is not a file")
    else:
        path = latest_checkpoint(ckpt_dir, prefix)  # type: ignore[assignment]
        if path is None:
            warnings.warn(f"Found no checkpoint files in {ckpt_dir} with prefix {prefix}", stacklevel=2)
            return target
    return load_pytree(path, target=target, parallel=parallel)


# -- numbered checkpoints as versions of one archive (format 1.1)


def is_archive_destination(ckpt_dir: str) -> bool:
    """Whether ``save_checkpoint``/``restore_checkpoint`` keep their steps as versions of one
    ``.bpz`` archive (the name ends in ``.bpz`` and is not a directory)."""
    return ckpt_dir.endswith(".bpz") and not os.path.isdir(ckpt_dir)


def archive_steps(path: str) -> list[tuple[float, int]]:
    """``(step, version)`` of every checkpoint version in the archive, by step."""
    if not os.path.exists(path):
        return []
    with open_archive(path) as a:
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


def _restore_version(path: str, target: Any, step: int | float | None, parallel: bool) -> Any:
    steps = archive_steps(path)
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
    return load_pytree(path, target=target, parallel=parallel, version=version)
