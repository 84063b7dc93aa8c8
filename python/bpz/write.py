"""Saving: ``save_pytree`` (BrainPy 2.9 semantics) and ``AsyncManager``."""

from __future__ import annotations

import atexit
import errno
import itertools
import json
import os
import sys
import threading
import traceback
import warnings
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Any

from . import _bpz, pytree
from .errors import InvalidCheckpointPath, LimitExceededError
from .pytree import Leaf, flatten, no_gc
from .read import _is_url

__all__ = ["save_pytree", "compact", "AsyncManager", "DEFAULT_CHUNK_SIZE", "DEFAULT_LEVEL"]

# The defaults are the core's (an option left None takes them); named here for the documentation.
#: Target uncompressed size of a compressed chunk.
DEFAULT_CHUNK_SIZE: int = _bpz.Writer.DEFAULTS["chunk_bytes"]
#: zstd level: 1 compresses at about a GB/s per core; higher levels gain little on model state.
DEFAULT_LEVEL: int = _bpz.Writer.DEFAULTS["level"]
_DEFAULT_COMPRESSION: str = _bpz.Writer.DEFAULTS["compression"]


class _BackgroundSave:
    """One submitted save and the name it writes, until a caller has received its outcome."""

    __slots__ = ("future", "filename", "__weakref__")

    def __init__(self, future: Future[Any], filename: str) -> None:
        self.future = future
        self.filename = filename


# Saves whose outcome (success or exception) no caller has received yet. A module-level
# registry, not a manager attribute: a failure must still surface after its manager is
# garbage collected (reported at once) or left open at exit (reported by _report_at_exit).
_unclaimed: set[_BackgroundSave] = set()
_unclaimed_lock = threading.RLock()  # re-entrant: a garbage collection may run __del__ while it is held
_failure_reported_to_stderr = False


def _claim(job: _BackgroundSave) -> bool:
    """Takes the job out of the registry; True for the one caller that got it."""
    with _unclaimed_lock:
        if job in _unclaimed:
            _unclaimed.discard(job)
            return True
        return False


def _report_orphaned(job: _BackgroundSave) -> None:
    """Prints a failed save that no caller can receive any more, and marks the exit status."""
    if not job.future.done() or job.future.cancelled() or not _claim(job):
        return
    error = job.future.exception()
    if error is not None:
        _report_failure(job.filename, error, "and no wait_previous_save(), close() or later save reported it")


def _report_failure(filename: str, error: BaseException, why: str) -> None:
    """Prints a failed background save to stderr and makes the exit status non-zero (120)."""
    global _failure_reported_to_stderr
    _failure_reported_to_stderr = True
    stream = sys.stderr or sys.stdout
    if stream is None:
        return
    try:
        stream.write(f"bpz: the background save of {filename} FAILED, {why}:\n")
        traceback.print_exception(type(error), error, error.__traceback__, file=stream)
        stream.flush()
    except Exception:  # a closed or broken stream must not hide the exit status as well
        pass


class _FailingFlush:
    """sys.stderr stand-in whose flush fails: Python then exits with status 120.

    Python's documented last step at exit is flushing stdout and stderr; a failure
    there makes the exit status 120 (see ``python -h``, "Py_FinalizeEx"). That is the
    one way to make a finished program's status non-zero while still running every
    other atexit handler and the normal shutdown (``os._exit`` would skip both).
    """

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)

    def write(self, text: str) -> int:
        return self._stream.write(text)

    def flush(self) -> None:
        self._stream.flush()
        raise OSError("bpz: a background save failed (see above); exit status set to 120")


def _report_at_exit() -> None:
    """Waits for every unclaimed save (they are not cut off), reports failures, fails the exit status."""
    with _unclaimed_lock:
        jobs = list(_unclaimed)
    for job in jobs:
        wait([job.future])
        _report_orphaned(job)
    if _failure_reported_to_stderr:
        if sys.stderr is not None:
            sys.stderr = _FailingFlush(sys.stderr)
        elif sys.stdout is not None:
            sys.stdout = _FailingFlush(sys.stdout)
        else:  # nothing to flush: no gentler way to fail the status is left
            os._exit(1)


atexit.register(_report_at_exit)
_manager_numbers = itertools.count()


class AsyncManager:
    """Runs saves in a background thread, one at a time.

    ``save_pytree(..., async_manager=m)`` returns once the state is
    snapshotted; compression and writing go on in the background. A failed
    save is never lost: its exception is raised by ``wait_previous_save()``,
    by the next save through the manager, by ``close()`` or by leaving a
    ``with`` block (even one left by another exception). A failure no caller
    received — the manager was garbage collected, or the program ended
    without waiting — is printed to stderr and makes the exit status non-zero
    (120); saves still running at exit are completed first.

    As braintools' ``AsyncManager`` (BrainPy 2.7–2.9): ``save_future`` is the
    last save's ``Future``, and a manager garbage-collected unclosed is closed
    (its save waited for); a failure there becomes a ``RuntimeWarning``
    ("AsyncManager encountered an error during cleanup: ...") and, being a
    save that failed, is reported and fails the exit status as above.
    """

    def __init__(self, max_workers: int = 1) -> None:
        # A name of its own for its threads: __del__ must know whether it runs on one of them.
        self._thread_prefix = f"bpz-save-{next(_manager_numbers)}"
        self._executor = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix=self._thread_prefix)
        self._job: _BackgroundSave | None = None
        self._last_future: Future[Any] | None = None
        self._closed = False
        self._lock = threading.Lock()

    def wait_previous_save(self) -> None:
        """Blocks until the last save has finished; re-raises its exception (once)."""
        with self._lock:
            job = self._job
        if job is None:
            return
        # Wait before taking the job: an interrupted wait (Ctrl-C) leaves it to report later.
        wait([job.future])
        with self._lock:
            if self._job is job:
                self._job = None
        if _claim(job):
            job.future.result()

    def save_async(self, task: Callable[[], Any], filename: str = "a file") -> Future[Any]:
        """Runs ``task`` in the background (after the previous save)."""
        self._check_open()
        self.wait_previous_save()
        with self._lock:
            self._check_open()
            future = self._executor.submit(task)
            job = _BackgroundSave(future, filename)
            with _unclaimed_lock:
                _unclaimed.add(job)
            self._job = job
            self._last_future = future
            return future

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("Cannot save with a closed AsyncManager")

    def close(self) -> None:
        """Waits for a running save, stops the worker and re-raises the save's exception.

        Later saves raise RuntimeError; closing again does nothing.
        """
        if self._closed:
            return
        self._closed = True
        try:
            self.wait_previous_save()
        finally:
            self._executor.shutdown(wait=True)

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    @property
    def save_future(self) -> Future[Any] | None:
        """The ``Future`` of the last save (None before the first), kept after it finished, as braintools'."""
        return self._last_future

    def __enter__(self) -> AsyncManager:
        return self

    def __exit__(self, *exc: object) -> None:
        # Also when the block raised: a lost checkpoint must not hide behind another
        # error. Python chains them (the block's exception becomes __context__).
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_closed", True):
            return
        job = self._job
        if threading.current_thread().name.startswith(self._thread_prefix + "_"):
            # A garbage collection on the save thread itself: it cannot wait for itself.
            self._closed = True
            self._executor.shutdown(wait=False)  # the running save still completes
            if job is not None:  # nobody can ask for this outcome any more: report a failure when it comes
                job.future.add_done_callback(lambda _f: _report_orphaned(job))
            return
        try:
            self.close()  # as braintools': wait for the save, stop the worker
        except Exception as error:  # __del__ must not raise
            try:
                warnings.warn(f"AsyncManager encountered an error during cleanup: {error!r}", RuntimeWarning,
                              stacklevel=2)
            except Exception:  # noqa: BLE001 - warnings turned into errors, or shutting down
                pass
            if job is not None and job.future.done() and not job.future.cancelled() and job.future.exception() is error:
                # A warning can be filtered away; a lost checkpoint must not be.
                _report_failure(job.filename, error, "and its AsyncManager was garbage collected without close()")


def _check_options(compression: Any, level: Any, chunk_size: Any) -> None:
    """The core's check of the options, here so that a background save fails in the caller's thread."""
    _bpz.Writer.check_options(compression=compression, level=level, chunk_bytes=chunk_size)


#: Deepest nesting of lists/dicts in metadata: the index may nest 128 levels (the core's
#: limit, which every reader applies) and the metadata sits one level inside it.
MAX_METADATA_DEPTH = pytree.MAX_JSON_DEPTH - 1


def metadata_to_json(metadata: Any, shown_name: str | None = None) -> str | None:
    """The JSON text of an archive's metadata, refused unless every reader loads it with its
    default limits: nesting (:data:`MAX_METADATA_DEPTH`) and the number of JSON values
    (``bpz.pytree.MAX_TREE_VALUES``, which bounds the metadata on load too)."""
    if metadata is None:
        return None
    where = f"{shown_name}: " if shown_name else ""
    _check_metadata_depth(metadata, where)
    try:
        # Compact, as the rest of the index: the core stores this text as it is.
        text = json.dumps(metadata, allow_nan=False, ensure_ascii=False, separators=(",", ":"))
    except (TypeError, ValueError) as e:
        raise TypeError(f"{where}metadata must be JSON-serialisable (no NaN/Infinity): {e}") from e
    limit = pytree.MAX_TREE_VALUES
    # A text has fewer values than characters: counted only when it could be over.
    if len(text) > limit and (n := pytree.count_json_values(text)) > limit:
        raise LimitExceededError(
            f"{where}the metadata has {n:,} JSON values, over the limit of {limit:,} that a load accepts "
            "(bpz.pytree.MAX_TREE_VALUES, or the environment variable BPZ_MAX_TREE_VALUES): store large "
            "collections as arrays in the tree, or raise the limit here and where the file is loaded")
    return text


def _check_metadata_depth(metadata: Any, where: str) -> None:
    """Refuses metadata nested deeper than :data:`MAX_METADATA_DEPTH` (or containing itself),
    walking without recursion: json.dumps of deep metadata dies with a RecursionError."""
    limit = MAX_METADATA_DEPTH
    if not isinstance(metadata, (dict, list, tuple)):
        return
    stack: list[tuple[Any, int]] = [(metadata, 1)]
    branch: list[int] = []  # ids of the containers from the top down to the one being visited
    while stack:
        obj, depth = stack.pop()
        del branch[depth - 1:]
        if id(obj) in branch:
            raise TypeError(f"{where}metadata must be JSON-serialisable: it contains itself "
                            f"(a circular reference at nesting depth {depth})")
        if depth > limit:
            raise LimitExceededError(
                f"{where}metadata is nested more than {limit} levels deep, the most an archive allows (an index "
                f"may not be nested deeper than {pytree.MAX_JSON_DEPTH} levels, and the metadata sits one level "
                "inside it)")
        branch.append(id(obj))
        for child in obj.values() if isinstance(obj, dict) else obj:
            if isinstance(child, (dict, list, tuple)):
                stack.append((child, depth + 1))


def write_archive(
    path: str,
    tree: Any,
    leaves: list[Leaf],
    *,
    metadata_json: str | None = None,
    compression: str | None = _DEFAULT_COMPRESSION,
    level: int | None = None,
    chunk_size: int | None = None,
    alignment: int | None = None,
    overwrite: bool | None = None,
    sync: bool | None = None,
    progress: Callable[[int, int], None] | None = None,
    shown_name: str | None = None,
    append: bool = False,
    storage_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Writes flattened leaves; the destination changes only if everything succeeds.

    ``append``: add a version to the archive at ``path`` (creating it if missing) instead
    of replacing it; only bytes after its last committed version are written.

    ``shown_name`` is the name errors give for ``path`` (the caller's spelling).

    ``progress(done_bytes, total_bytes)`` is called every 100 ms or 64 MiB
    of tensor data while the tensors are written, and once all are.
    """
    writer = _bpz.Writer(
        path,
        alignment=alignment,
        chunk_bytes=chunk_size,
        compression=compression,  # type: ignore[arg-type]  # the name is checked by the core
        level=level,
        sync=sync,
        overwrite=overwrite,
        writer_name="bpz-python",
        append=append,
        storage_options=storage_options,
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
        raise InvalidCheckpointPath(f'Invalid checkpoint at "{shown_name or path}".') from None
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
    compression: str | None = _DEFAULT_COMPRESSION,
    level: int = DEFAULT_LEVEL,
    chunk_size: int | None = None,
    metadata: Any = None,
    sync: bool = True,
    append: bool = False,
    storage_options: dict[str, Any] | None = None,
) -> str:
    """Saves a pytree of arrays and scalars to ``filename``; returns the filename.

    The same call as ``brainpy.checkpoints.save_pytree``: prints
    ``Saving checkpoint into {filename}`` when ``verbose``, creates missing
    parent directories, refuses to replace an existing file when
    ``overwrite=False`` (:class:`InvalidCheckpointPath`), and writes atomically
    (a temporary file renamed into place), so a failed save leaves the old
    file intact, and removes the directories it created. The name is used as
    given (no suffix is added); a name that is a directory (an existing one,
    or ending in ``/``) raises :class:`IsADirectoryError` before anything is
    done. The path is resolved when the call is made, so a background save
    (``async_manager``) is not moved by a later ``os.chdir``.

    ``compression``: ``"auto"`` (default) compresses a tensor only where zstd
    saves at least a third of its size — spike masks, connectivity, constant
    state — and keeps the rest raw, aligned and memory-mappable;
    ``"zstd"`` compresses every tensor; ``None`` none. ``level`` is the zstd
    level, ``chunk_size`` the uncompressed bytes per chunk, ``metadata`` any
    JSON value stored alongside. ``sync=False`` skips the fsync of the file
    and its directory: faster, but after a power failure the new file may be
    missing or incomplete (the rename stays atomic for running programs).

    ``append=True`` adds ``target`` as a new **version** of the archive at ``filename``
    (a missing file is created with version 1) instead of replacing it: chunks equal to
    ones the latest version already stores are referenced, not written again, so a
    simulation's constant connectivity is stored once however often its state is saved.
    Versions are numbered 1, 2, ...; ``metadata`` is per version; ``bpz.open(filename,
    version=k)`` / ``load_pytree(..., version=k)`` read any of them, and
    :attr:`Archive.versions` lists them. An append writes only past the end of the last
    version (a save killed while appending loses nothing committed: the next open reads
    the last complete version, the next append removes the unfinished bytes); appends to
    one file are serialised by a lock. Appending to a format-1.0 archive first rewrites it
    as 1.1 (once, atomically). ``bpz compact`` (or :func:`compact`) drops old versions.

    A URL ``s3://bucket/key`` (or ``gs://``, ``az://``) saves straight to object storage by
    a multipart upload streamed with bounded memory; the object appears only once complete
    (a failed or killed save leaves the previous object). Options (endpoint, region,
    credentials) come from the standard environment variables and ``storage_options``, as
    for :func:`bpz.open`. ``append=True`` is refused for URLs (objects are immutable), and
    ``http(s)://`` URLs cannot be written.
    """
    filename = fspath_str(filename)
    if verbose:
        print(f"Saving checkpoint into {filename}")
    save_tree(
        filename, target, overwrite=overwrite, async_manager=async_manager,
        compression=compression, level=level, chunk_size=chunk_size, metadata=metadata, sync=sync,
        append=append, storage_options=storage_options,
    )
    return filename


def fspath_str(name: str | os.PathLike[str]) -> str:
    name = os.fspath(name)
    return name if isinstance(name, str) else os.fsdecode(name)


def absolute_path(name: str) -> str:
    """``name`` against the current directory, now; not normalised (``a/..`` stays, as the OS resolves it)."""
    return name if os.path.isabs(name) else os.path.join(os.getcwd(), name)


def _check_file_name(filename: str, path: str) -> None:
    if not filename:
        raise InvalidCheckpointPath('Invalid checkpoint at "": the file name is empty.')
    if "\0" in filename:
        raise InvalidCheckpointPath(f"Invalid checkpoint at {filename!r}: the name contains a NUL character.")
    seps = (os.sep, os.altsep) if os.altsep else (os.sep,)
    base = os.path.basename(path)
    if filename.endswith(seps) or base in ("", ".", "..") or os.path.isdir(path):
        raise IsADirectoryError(errno.EISDIR, "Cannot save a checkpoint into a directory; give a file name", filename)


def _make_parents(directory: str, shown: str) -> list[str]:
    """Creates the missing directories of ``directory``; returns those this call created, outermost first."""
    missing = []
    d = directory
    while not os.path.isdir(d):
        missing.append(d)
        parent = os.path.dirname(d)
        if parent == d:
            break
        d = parent
    created: list[str] = []
    try:
        for d in reversed(missing):
            try:
                os.mkdir(d)
            except FileExistsError:
                if not os.path.isdir(d):
                    raise
                continue  # made by someone else meanwhile: not ours to remove
            created.append(d)
    except OSError as e:
        _remove_created(created)
        error = OSError(f"Cannot create directory {shown}: {e}")
        error.errno = e.errno
        raise error from e
    return created


def _remove_created(created: list[str]) -> None:
    """Removes directories a failed save created, innermost first, and only while empty."""
    for d in reversed(created):
        try:
            os.rmdir(d)
        except OSError:
            return


def save_tree(
    filename: str,
    target: Any,
    *,
    overwrite: bool,
    async_manager: AsyncManager | None,
    compression: str | None = _DEFAULT_COMPRESSION,
    level: int = DEFAULT_LEVEL,
    chunk_size: int | None = None,
    metadata: Any = None,
    sync: bool = True,
    path: str | None = None,
    after_write: Callable[[], Any] | None = None,
    append: bool = False,
    storage_options: dict[str, Any] | None = None,
) -> dict[str, Any] | None:
    """``save_pytree`` without the message: the part ``save_checkpoint`` shares.

    Everything that can fail on the arguments fails here, in the caller's thread,
    before anything is created. ``path`` is the absolute form of ``filename`` (resolved
    now if not given). ``after_write()`` runs once the new file is in place (in the
    background for an async save), never if writing failed. Returns the writer's summary
    (``file_bytes``, ``trailer``, ...) of a synchronous save, None for an async one.
    """
    _check_options(compression, level, chunk_size)
    metadata_json = metadata_to_json(metadata, filename)
    if async_manager is not None:
        if isinstance(async_manager, AsyncManager):  # BrainPy's own manager works too, checked by itself
            async_manager._check_open()
        async_manager.wait_previous_save()
    if not isinstance(append, bool):
        raise TypeError(f"append must be True or False, not {append!r}")
    if _is_url(filename):
        return _save_to_url(filename, target, async_manager=async_manager, after_write=after_write, options=dict(
            metadata_json=metadata_json, compression=compression, level=level, chunk_size=chunk_size,
            overwrite=overwrite, sync=sync, shown_name=filename, append=append, storage_options=storage_options,
        ))
    if storage_options is not None:
        raise TypeError("storage_options apply to URLs (s3://..., gs://..., az://...), not to local paths")
    if path is None:
        path = absolute_path(filename)
    _check_file_name(filename, path)
    # Appending replaces nothing, so overwrite=False does not forbid it.
    if not overwrite and not append and os.path.lexists(path):
        raise InvalidCheckpointPath(f'Invalid checkpoint at "{filename}".')
    options = dict(
        metadata_json=metadata_json, compression=compression, level=level, chunk_size=chunk_size,
        overwrite=overwrite or append, sync=sync, shown_name=filename, append=append,
    )
    parent, shown_parent = os.path.dirname(path), os.path.dirname(filename) or "."
    if async_manager is None:
        # The cyclic GC stays paused from flattening to the end of the write, and the
        # tens of thousands of nodes a big tree makes are freed before it resumes:
        # otherwise they would be scanned by the collections they trigger.
        with no_gc():
            tree, leaves = flatten(target)
            try:
                created = _make_parents(parent, shown_parent)
                try:
                    summary = write_archive(path, tree, leaves, **options)  # type: ignore[arg-type]
                except BaseException:
                    _remove_created(created)
                    raise
            finally:
                del tree, leaves
        if after_write is not None:
            after_write()
        return summary

    # A background save must not see later mutations: snapshot (copy) now.
    tree, leaves = flatten(target, copy=True)
    created = _make_parents(parent, shown_parent)

    def job() -> None:
        try:
            write_archive(path, tree, leaves, **options)  # type: ignore[arg-type]
        except BaseException:
            _remove_created(created)
            raise
        if after_write is not None:
            after_write()

    try:
        if isinstance(async_manager, AsyncManager):
            async_manager.save_async(job, filename)
        else:
            async_manager.save_async(job)
    except BaseException:
        _remove_created(created)
        raise
    return None


def _save_to_url(url: str, target: Any, *, async_manager: Any, after_write: Callable[[], Any] | None,
                 options: dict[str, Any]) -> dict[str, Any] | None:
    """The remote branch of :func:`save_tree`: no directories, no local checks; the upload
    itself refuses an existing object when ``overwrite`` is false."""
    def write(tree: Any, leaves: list[Leaf]) -> dict[str, Any]:
        try:
            return write_archive(url, tree, leaves, **options)
        except FileExistsError:  # overwrite=False and the object exists (as for a local file)
            raise InvalidCheckpointPath(f'Invalid checkpoint at "{url}".') from None

    if async_manager is None:
        with no_gc():
            tree, leaves = flatten(target)
            try:
                summary = write(tree, leaves)
            finally:
                del tree, leaves
        if after_write is not None:
            after_write()
        return summary
    tree, leaves = flatten(target, copy=True)

    def job() -> None:
        write(tree, leaves)
        if after_write is not None:
            after_write()

    if isinstance(async_manager, AsyncManager):
        async_manager.save_async(job, url)
    else:
        async_manager.save_async(job)
    return None


def compact(filename: str | os.PathLike[str], keep_last: int, *, sync: bool = True) -> list[int]:
    """Rewrites the archive at ``filename`` keeping only its last ``keep_last`` versions
    (with their numbers, times and metadata) and returns the numbers kept. The new file
    replaces the old one atomically, as a save does: a failed compaction leaves the file as
    it was. This is how the space of dropped versions is reclaimed."""
    filename = fspath_str(filename)
    if isinstance(keep_last, bool) or not isinstance(keep_last, int) or keep_last < 1:
        raise ValueError(f"keep_last must be a positive int, not {keep_last!r}")
    summary = _compact(filename, keep_last=keep_last, sync=sync)
    return [int(v) for v in summary["versions_kept"]]


def _compact(filename: str, **options: Any) -> dict[str, Any]:
    path = absolute_path(filename)
    try:
        return dict(_bpz.compact(path, **options))
    except OSError as e:
        # The core reports a missing file without an errno: make it the FileNotFoundError
        # every other call gives.
        if e.errno is None and not os.path.lexists(path):
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), filename) from None
        raise


def compact_versions(filename: str, versions: list[int], *, sync: bool = True) -> list[int]:
    """Like :func:`compact`, keeping the listed versions — and any version appended after the
    newest of them, so that a version another process appended meanwhile is never dropped."""
    summary = _compact(filename, keep=sorted(versions), sync=sync)
    return [int(v) for v in summary["versions_kept"]]
