"""Exception hierarchy of bpz.

Every error bpz raises on purpose derives from :class:`BpzError`. Errors about
a file's content also derive from :class:`ValueError` (BrainPy callers catch
``ValueError``); a missing checkpoint is both a :class:`FileNotFoundError` and
a :class:`ValueError`; a buffer that cannot be allocated is a
:class:`MemoryError`. The operating system's own failures (no such file,
permission denied, disk full) are the builtin :class:`OSError` of their errno,
as from :func:`open`, naming the path.

The classes of the archive reader and writer are made by the native module,
one per error kind of the Rust core (``kind``, a class attribute, is that
kind's name, as in spec/FORMAT.md §10); ``bpz._bpz.ERROR_CLASSES`` maps each
kind to the class raised for it. The checkpoint classes below are Python's own.
"""

from __future__ import annotations

from ._bpz import (
    BpzError,
    ChecksumError,
    CorruptDataError,
    FormatError,
    InvalidArgumentError,
    LimitExceededError,
    NotAnArchiveError,
    NotZeroCopyError,
    OutOfMemoryError,
    TensorNotFoundError,
    TruncatedError,
    UnsupportedFeatureError,
    UnsupportedVersionError,
)

__all__ = [
    "BpzError",
    "FormatError",
    "NotAnArchiveError",
    "TruncatedError",
    "ChecksumError",
    "UnsupportedVersionError",
    "UnsupportedFeatureError",
    "LimitExceededError",
    "CorruptDataError",
    "NotZeroCopyError",
    "TensorNotFoundError",
    "InvalidArgumentError",
    "OutOfMemoryError",
    "InvalidCheckpointError",
    "CheckpointNotFoundError",
    "InvalidCheckpointPath",
    "RecoveredArchiveWarning",
]


class CheckpointNotFoundError(BpzError, FileNotFoundError, ValueError):
    """``load_pytree`` was given a path that does not exist."""


class InvalidCheckpointPath(BpzError, ValueError):
    """Saving would overwrite an existing file while ``overwrite=False``."""


class InvalidCheckpointError(BpzError, ValueError):
    """A numbered checkpoint would be older than one already in the directory."""


class RecoveredArchiveWarning(UserWarning):
    """An archive ends in an unfinished append (a save killed while appending a version):
    its last committed version is read, and the bytes after it are ignored. The next append
    removes them."""
