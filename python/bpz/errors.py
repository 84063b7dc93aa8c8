"""Exception hierarchy of bpz.

Every error bpz raises on purpose derives from :class:`BpzError`. Errors about
a file's content also derive from :class:`ValueError` (BrainPy callers catch
``ValueError``); a missing checkpoint is both a :class:`FileNotFoundError` and
a :class:`ValueError`.
"""

from __future__ import annotations

__all__ = [
    "BpzError",
    "FormatError",
    "NotAnArchiveError",
    "TruncatedError",
    "ChecksumError",
    "UnsupportedVersionError",
    "LimitExceededError",
    "CorruptDataError",
    "NotZeroCopyError",
    "TensorNotFoundError",
    "InvalidCheckpointError",
    "CheckpointNotFoundError",
    "InvalidCheckpointPath",
]


class BpzError(Exception):
    """Base class of every error raised by bpz."""


class FormatError(BpzError, ValueError):
    """The file is not a valid archive of the format it claims (corrupt or malformed)."""

    #: Stable machine-readable kind, shared with the Rust core and spec/FORMAT.md.
    kind: str = "invalid_index"


class NotAnArchiveError(FormatError):
    """The file does not start with the expected magic bytes."""

    kind = "bad_magic"


class TruncatedError(FormatError):
    """The file ends before the structure it declares."""

    kind = "truncated"


class ChecksumError(FormatError):
    """Stored bytes do not match their checksum: the file is corrupt."""

    kind = "checksum_mismatch"


class UnsupportedVersionError(FormatError):
    """The file needs a newer reader (newer major version or unknown required feature)."""

    kind = "unsupported_version"


class LimitExceededError(FormatError):
    """The file declares a size, depth or count over a safety limit."""

    kind = "limit_exceeded"


class CorruptDataError(FormatError):
    """A chunk's checksum matched but it does not decode to its declared size."""

    kind = "corrupt_data"


class NotZeroCopyError(BpzError, ValueError):
    """A zero-copy view was asked of a compressed tensor or an unmapped archive."""

    kind = "not_zero_copy"


class TensorNotFoundError(BpzError, KeyError):
    """No tensor of that name in the archive."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class CheckpointNotFoundError(BpzError, FileNotFoundError, ValueError):
    """``load_pytree`` was given a path that does not exist."""


class InvalidCheckpointPath(BpzError, ValueError):
    """Saving would overwrite an existing file while ``overwrite=False``."""


class InvalidCheckpointError(BpzError, ValueError):
    """A numbered checkpoint would be older than one already in the directory."""
