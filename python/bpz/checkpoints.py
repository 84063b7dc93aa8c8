"""The checkpoint API under the names BrainPy users know.

``import bpz.checkpoints as checkpoints`` gives ``save_pytree``, ``load_pytree``
and ``AsyncManager`` as in ``brainpy.checkpoints`` (2.7–2.9), plus the
numbered-step checkpoints of BrainPy 2.3–2.6 and flax: ``save_checkpoint`` /
``restore_checkpoint`` in a directory of ``{prefix}{step}`` files.
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
from .write import AsyncManager, absolute_path, fspath_str, save_pytree, save_tree

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
