"""The checkpoint API under the names BrainPy users know.

``import bpz.checkpoints as checkpoints`` gives ``save_pytree``, ``load_pytree``
and ``AsyncManager`` as in ``brainpy.checkpoints`` (2.7–2.9), plus the
numbered-step checkpoints of BrainPy 2.3–2.6 and flax: ``save_checkpoint`` /
``restore_checkpoint`` in a directory of ``{prefix}{step}`` files.
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from typing import Any

from .errors import CheckpointNotFoundError, InvalidCheckpointError, InvalidCheckpointPath
from .read import load_pytree
from .write import AsyncManager, save_pytree

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
_NUMBER = re.compile(r"^-?\d+(\.\d+)?$")


def checkpoint_steps(ckpt_dir: str | os.PathLike[str], prefix: str = "checkpoint_") -> list[tuple[float, str]]:
    """``(step, path)`` of every numbered checkpoint in ``ckpt_dir``, oldest first."""
    ckpt_dir = os.fspath(ckpt_dir)
    if not os.path.isdir(ckpt_dir):
        return []
    found = []
    for name in os.listdir(ckpt_dir):
        if name.startswith(prefix) and _NUMBER.match(name[len(prefix):]):
            found.append((float(name[len(prefix):]), os.path.join(ckpt_dir, name)))
    return sorted(found)


def latest_checkpoint(ckpt_dir: str | os.PathLike[str], prefix: str = "checkpoint_") -> str | None:
    """Path of the newest numbered checkpoint, or None."""
    steps = checkpoint_steps(ckpt_dir, prefix)
    return steps[-1][1] if steps else None


def _retain(ckpt_dir: str, prefix: str, keep: int, keep_every_n_steps: int | None) -> None:
    steps = checkpoint_steps(ckpt_dir, prefix)
    for step, path in steps[: max(len(steps) - keep, 0)]:
        if keep_every_n_steps and step % keep_every_n_steps == 0:
            continue
        logger.info("Removing checkpoint at %s", path)
        os.remove(path)


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
    every checkpoint whose step is a multiple of it. Old checkpoints are
    removed only after the new one is completely written.
    """
    ckpt_dir = os.fspath(ckpt_dir)
    if keep < 1:
        raise ValueError(f"keep must be at least 1, not {keep}")
    if async_manager is not None:
        async_manager.wait_previous_save()
    os.makedirs(ckpt_dir, exist_ok=True)
    path = os.path.join(ckpt_dir, f"{prefix}{step}")
    existing = checkpoint_steps(ckpt_dir, prefix)
    if existing and step <= existing[-1][0]:
        if not overwrite:
            raise InvalidCheckpointError(f'Trying to save an outdated checkpoint at step: "{step}" and path: "{path}".')
        for old_step, old_path in existing:
            if old_step > step:
                warnings.warn(f"Removing checkpoint at {old_path}", stacklevel=2)
                os.remove(old_path)
    save_options.setdefault("verbose", False)
    # Retention runs after the write (in the background for async saves):
    # old checkpoints are never deleted before the new one exists.
    save_pytree(
        path,
        target,
        overwrite=True,
        async_manager=async_manager,
        _on_saved=lambda: _retain(ckpt_dir, prefix, keep, keep_every_n_steps),
        **save_options,
    )
    return path


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
    ``FileNotFoundError`` and a ``ValueError``.
    """
    ckpt_dir = os.fspath(ckpt_dir)
    if not os.path.isdir(ckpt_dir):
        logger.info("Found no checkpoint directory at %s", ckpt_dir)
        return target
    if step is not None:
        path = os.path.join(ckpt_dir, f"{prefix}{step}")
        if not os.path.exists(path):
            raise CheckpointNotFoundError(f"Matching checkpoint not found: {path}")
    else:
        path = latest_checkpoint(ckpt_dir, prefix)  # type: ignore[assignment]
        if path is None:
            warnings.warn(f"Found no checkpoint files in {ckpt_dir} with prefix {prefix}", stacklevel=2)
            return target
    return load_pytree(path, target=target, parallel=parallel)
