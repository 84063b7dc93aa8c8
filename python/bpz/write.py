"""Saving: ``save_pytree`` (BrainPy 2.9 semantics) and ``AsyncManager``."""

from __future__ import annotations

import json
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable

from . import _bpz
from .errors import InvalidCheckpointPath
from .pytree import Leaf, flatten, no_gc

__all__ = ["save_pytree", "AsyncManager", "DEFAULT_CHUNK_SIZE", "DEFAULT_LEVEL"]

#: Target uncompressed size of a compressed chunk.
DEFAULT_CHUNK_SIZE = 2 << 20
#: zstd level: 1 compresses at about a GB/s per core; higher levels gain little on model state.
DEFAULT_LEVEL = 1
_COMPRESSION = ("auto", "zstd", None)


class AsyncManager:
    """Runs saves in a background thread, one at a time.

    ``save_pytree(..., async_manager=m)`` returns once the state is
    snapshotted; compression and writing go on in the background. A new save
    first waits for the previous one; ``wait_previous_save()`` waits and
    re-raises a failed save's exception.
    """

    def __init__(self, max_workers: int = 1) -> None:
        self._executor = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="bpz-save")
        self._future: Future[Any] | None = None
        self._closed = False
        self._lock = threading.Lock()

    def wait_previous_save(self) -> None:
        """Blocks until the last save has finished; re-raises its exception."""
        with self._lock:
            future, self._future = self._future, None
        if future is not None:
            future.result()

    def save_async(self, task: Callable[[], Any]) -> Future[Any]:
        """Runs ``task`` in the background (after the previous save)."""
        if self._closed:
            raise RuntimeError("Cannot save with a closed AsyncManager")
        self.wait_previous_save()
        with self._lock:
            self._future = self._executor.submit(task)
            return self._future

    def close(self) -> None:
        """Waits for a running save and stops the worker; later saves raise RuntimeError."""
        if not self._closed:
            self._closed = True
            self._executor.shutdown(wait=True)

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> AsyncManager:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if exc[0] is None:
                self.wait_previous_save()
        finally:
            self.close()

    def __del__(self) -> None:
        if not getattr(self, "_closed", True):
            self._closed = True
            self._executor.shutdown(wait=False)


def _check_options(compression: Any, level: int, chunk_size: int | None) -> None:
    if compression not in _COMPRESSION:
        raise ValueError(f"compression must be 'auto', 'zstd' or None, not {compression!r}")
    if not isinstance(level, int) or isinstance(level, bool):
        raise TypeError(f"level must be an int, not {type(level).__name__}")
    if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size <= 0):
        raise ValueError(f"chunk_size must be a positive number of bytes, not {chunk_size!r}")


def _metadata_json(metadata: Any) -> str | None:
    if metadata is None:
        return None
    try:
        return json.dumps(metadata, allow_nan=False, ensure_ascii=False)
    except (TypeError, ValueError) as e:
        raise TypeError(f"metadata must be JSON-serialisable (no NaN/Infinity): {e}") from e


def write_archive(
    path: str,
    tree: Any,
    leaves: list[Leaf],
    *,
    metadata_json: str | None = None,
    compression: str | None = "auto",
    level: int = DEFAULT_LEVEL,
    chunk_size: int | None = None,
    alignment: int = 64,
    overwrite: bool = True,
    sync: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Writes flattened leaves; the destination changes only if everything succeeds.

    ``progress(done_bytes, total_bytes)`` is called every 100 ms or 64 MiB
    of tensor data while the tensors are written, and once all are.
    """
    writer = _bpz.Writer(
        path,
        alignment=alignment,
        chunk_bytes=chunk_size or DEFAULT_CHUNK_SIZE,
        compression=compression,  # type: ignore[arg-type]  # checked by _check_options
        level=level,
        sync=sync,
        overwrite=overwrite,
        writer_name="bpz-python",
    )
    try:
        # One native call for all tensors: it holds every array's buffer and
        # writes them with the GIL released once (shape None: the array's own).
        writer.add_tensors([(leaf.name, leaf.dtype, None, leaf.array) for leaf in leaves], progress=progress)
        writer.set_tree(tree)  # JSON values already: converted natively, no JSON text
        if metadata_json is not None:
            writer.set_metadata_json(metadata_json)
        return writer.finish()
    except FileExistsError:
        writer.abort()
        raise InvalidCheckpointPath(f'Invalid checkpoint at "{path}".') from None
    except BaseException:
        writer.abort()
        raise


def save_pytree(
    filename: str | os.PathLike[str],
    target: Any,
    overwrite: bool = True,
    async_manager: AsyncManager | None = None,
    verbose: bool = True,
    *,
    compression: str | None = "auto",
    level: int = DEFAULT_LEVEL,
    chunk_size: int | None = None,
    metadata: Any = None,
    sync: bool = True,
    _on_saved: Callable[[], Any] | None = None,
) -> str:
    """Saves a pytree of arrays and scalars to ``filename``; returns the filename.

    The same call as ``brainpy.checkpoints.save_pytree``: prints
    ``Saving checkpoint into {filename}`` when ``verbose``, creates missing
    parent directories, refuses to replace an existing file when
    ``overwrite=False`` (:class:`InvalidCheckpointPath`), and writes atomically
    (a temporary file renamed into place), so a failed save leaves the old
    file intact. The name is used as given (no suffix is added).

    ``compression``: ``"auto"`` (default) compresses a tensor only where zstd
    saves at least a third of its size — spike masks, connectivity, constant
    state — and keeps the rest raw, aligned and memory-mappable;
    ``"zstd"`` compresses every tensor; ``None`` none. ``level`` is the zstd
    level, ``chunk_size`` the uncompressed bytes per chunk, ``metadata`` any
    JSON value stored alongside. ``sync=False`` skips the fsync of the file
    and its directory: faster, but after a power failure the new file may be
    missing or incomplete (the rename stays atomic for running programs).
    """
    filename = os.fspath(filename)
    if not isinstance(filename, str):
        filename = os.fsdecode(filename)
    if verbose:
        print(f"Saving checkpoint into {filename}")
    _check_options(compression, level, chunk_size)
    metadata_json = _metadata_json(metadata)
    if async_manager is not None:
        async_manager.wait_previous_save()
    dirname = os.path.dirname(filename)
    if dirname:
        try:
            os.makedirs(dirname, exist_ok=True)
        except OSError as e:
            raise OSError(f"Cannot create directory {dirname}: {e}") from e
    if not overwrite and os.path.lexists(filename):
        raise InvalidCheckpointPath(f'Invalid checkpoint at "{filename}".')
    options = dict(
        metadata_json=metadata_json, compression=compression, level=level, chunk_size=chunk_size, overwrite=overwrite, sync=sync
    )
    if async_manager is None:
        # The cyclic GC stays paused from flattening to the end of the write, and the
        # tens of thousands of nodes a big tree makes are freed before it resumes:
        # otherwise they would be scanned by the collections they trigger.
        with no_gc():
            tree, leaves = flatten(target)
            try:
                write_archive(filename, tree, leaves, **options)  # type: ignore[arg-type]
            finally:
                del tree, leaves
        if _on_saved is not None:
            _on_saved()
        return filename

    # A background save must not see later mutations: snapshot (copy) now.
    tree, leaves = flatten(target, copy=True)

    def job() -> None:
        write_archive(filename, tree, leaves, **options)  # type: ignore[arg-type]
        if _on_saved is not None:
            _on_saved()

    async_manager.save_async(job)
    return filename
