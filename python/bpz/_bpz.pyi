"""Type stubs of the native module ``bpz._bpz`` (a thin layer over the Rust crate)."""

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any, ClassVar, Literal, TypedDict, final

from typing_extensions import Buffer as _WritableBuffer
from typing_extensions import Self

__all__ = [
    "Archive", "Buffer", "Writer", "TempFile", "__version__", "FORMAT_VERSION", "DTYPES", "BpzError", "FormatError",
    "NotAnArchiveError", "TruncatedError", "ChecksumError", "UnsupportedVersionError", "UnsupportedFeatureError",
    "LimitExceededError", "CorruptDataError", "NotZeroCopyError", "TensorNotFoundError", "InvalidArgumentError",
    "OutOfMemoryError", "ERROR_KINDS", "ERROR_CLASSES", "RemoteStats", "RemoteDir", "open_remote",
    "compact",
]

__version__: str
FORMAT_VERSION: tuple[int, int]
DTYPES: list[str]
ERROR_KINDS: tuple[str, ...]
ERROR_CLASSES: dict[str, type[Exception]]

# One exception class per error kind of the Rust core (``kind``); ``bpz.errors`` re-exports them.
class BpzError(Exception): ...

class FormatError(BpzError, ValueError):
    kind: ClassVar[str]

class NotAnArchiveError(FormatError): ...
class TruncatedError(FormatError): ...
class ChecksumError(FormatError): ...
class UnsupportedVersionError(FormatError): ...
class UnsupportedFeatureError(UnsupportedVersionError): ...
class LimitExceededError(FormatError): ...
class CorruptDataError(FormatError): ...

class NotZeroCopyError(BpzError, ValueError):
    kind: ClassVar[str]

class TensorNotFoundError(BpzError, KeyError):
    kind: ClassVar[str]

class InvalidArgumentError(BpzError, ValueError):
    kind: ClassVar[str]

class OutOfMemoryError(BpzError, MemoryError):
    kind: ClassVar[str]

class _InfoDict(TypedDict):
    name: str
    dtype: str
    shape: list[int]
    storage: Literal["raw", "chunked"]
    filter: str
    codec: Literal["none", "zstd"]
    chunk_elems: int
    chunks: int
    encoded_chunks: int
    nbytes: int
    stored_bytes: int
    offset: int | None

# The native classes cannot be subclassed.
@final
class Buffer:
    """Bytes owned by Rust, exposed to NumPy through ``__array_interface__``."""

    @property
    def __array_interface__(self) -> dict[str, Any]: ...
    @property
    def nbytes(self) -> int: ...
    @property
    def readonly(self) -> bool: ...
    @property
    def mapped(self) -> bool: ...
    def __len__(self) -> int: ...

class _VersionDict(TypedDict):
    version: int
    time_ns: int
    bytes_added: int
    data_start: int
    index_offset: int
    index_length: int

class _RecoveryDict(TypedDict):
    ignored_bytes: int
    committed_end: int

class _ChunkDict(TypedDict):
    offset: int
    stored_length: int
    crc32c: int
    encoded: bool
    hash: bytes | None

class _DiffDict(TypedDict):
    added: list[str]
    removed: list[str]
    changed: list[str]
    unchanged: list[str]
    compared_by_reading: int

@final
class Archive:
    def __new__(
        cls,
        path: str | os.PathLike[str],
        backend: Literal["mmap", "pread"] = "mmap",
        parallel: bool = True,
        version: int | None = None,
    ) -> Self: ...
    def at_version(self, version: int | None = None) -> Archive: ...
    @property
    def versions(self) -> list[_VersionDict]: ...
    @property
    def version_number(self) -> int: ...
    @property
    def recovered(self) -> _RecoveryDict | None: ...
    def version_metadata_json(self, number: int) -> str: ...
    def chunks(self, name: str) -> list[_ChunkDict]: ...
    def diff(self, other: Archive) -> _DiffDict: ...
    @property
    def path(self) -> str: ...
    @property
    def version(self) -> tuple[int, int]: ...
    @property
    def alignment(self) -> int: ...
    @property
    def file_size(self) -> int: ...
    @property
    def trailer_bytes(self) -> bytes:
        """The opened version's 32-byte trailer, as read when opening."""
    @property
    def mapped(self) -> bool: ...
    @property
    def writer(self) -> dict[str, str] | None: ...
    def names(self) -> list[str]: ...
    def __len__(self) -> int: ...
    def __contains__(self, key: str, /) -> bool: ...
    def info(self, name: str) -> _InfoDict: ...
    def infos(self) -> list[_InfoDict]: ...
    def tree_json(self) -> str: ...
    def metadata_json(self) -> str: ...
    def get(self, name: str) -> tuple[Buffer, str, tuple[int, ...]]: ...
    def layouts(self) -> list[tuple[str, str, tuple[int, ...]]]: ...
    def read_all(self) -> list[Buffer]: ...
    def view(self, name: str) -> Buffer: ...
    def read(self, name: str) -> Buffer: ...
    def read_rows(self, name: str, start: int, stop: int) -> Buffer: ...
    def read_rows_into(self, name: str, start: int, stop: int, out: _WritableBuffer) -> None: ...
    def read_rows_many_into(self, requests: Sequence[tuple[str, int, int, _WritableBuffer]]) -> None: ...
    def read_many(self, names: list[str]) -> list[Buffer]: ...
    def verify_tensor(self, name: str, decode: bool = False, max_decoded_bytes: int | None = None) -> None: ...
    def verify_padding(self) -> None: ...
    def verify(self, decode: bool = False, max_decoded_bytes: int | None = None) -> dict[str, int | bool]: ...
    @property
    def default_decode_budget(self) -> int: ...

class _TensorOptions(TypedDict, total=False):
    compression: Literal["auto", "zstd", "none"] | None
    filter: Literal["none", "shuffle", "delta_shuffle", "bitpack"] | None
    level: int | None

# (name, dtype, shape or None for the data's own, data[, options]); data: a
# C-contiguous array or bytes-like object of little-endian bytes.
_TensorItem = (
    tuple[str, str, Sequence[int] | None, object]
    | tuple[str, str, Sequence[int] | None, object, _TensorOptions | None]
)

class _WriterDefaults(TypedDict):
    alignment: int
    chunk_bytes: int
    compression: Literal["auto", "zstd", "none"]
    level: int
    sync: bool
    overwrite: bool

_Compression = Literal["auto", "zstd", "none"] | None

@final
class Writer:
    # The core's defaults, taken by the options left None; compression=None is none.
    DEFAULTS: ClassVar[_WriterDefaults]
    @staticmethod
    def check_options(
        *,
        alignment: int | None = None,
        chunk_bytes: int | None = None,
        compression: _Compression = ...,
        level: int | None = None,
    ) -> None: ...
    def __new__(
        cls,
        path: str | os.PathLike[str],
        *,
        alignment: int | None = None,
        chunk_bytes: int | None = None,
        compression: _Compression = ...,
        level: int | None = None,
        filter: Literal["none", "shuffle", "delta_shuffle", "bitpack"] | None = None,
        sync: bool | None = None,
        overwrite: bool | None = None,
        writer_name: str = "bpz-python",
        writer_version: str = ...,
        append: bool = False,
        storage_options: Mapping[str, str | int | float | bool] | None = None,
    ) -> Self: ...
    def add_tensors(
        self,
        items: Iterable[_TensorItem],
        *,
        progress: Callable[[int, int], object] | None = None,
    ) -> int: ...
    def set_tree(self, tree: object) -> None: ...
    def set_metadata_json(self, text: str) -> None: ...
    def finish(self) -> dict[str, Any]: ...
    def abort(self) -> None: ...
    @property
    def finished(self) -> bool: ...

@final
class TempFile:
    """A file being saved to ``path`` by the core's rules (``bpz::persist``): a temporary
    sibling of the file replaced, given its permissions and owner; symlinks followed; a
    directory, FIFO, socket or device at ``path`` refused (``OSError`` naming it) before
    anything is written. Leaving a ``with`` block without :meth:`commit` aborts."""

    def __new__(cls, path: str | os.PathLike[str], overwrite: bool = True) -> Self: ...
    @property
    def name(self) -> str:
        """The temporary file: open it for writing (truncating); never replace it."""
    @property
    def target(self) -> str:
        """The file the commit replaces or creates (where a symlink at ``path`` leads)."""
    @property
    def closed(self) -> bool: ...
    def fileno(self) -> int:
        """The open temporary file's descriptor, owned by this object (``os.dup`` it to keep it)."""
    def commit(self, sync: bool = True) -> str:
        """Put the file in place (fsyncing it and its directory with ``sync``); returns ``path``.
        On error the temporary is removed and ``path`` is as it was."""
    def abort(self) -> None:
        """Remove the temporary; ``path`` stays as it was. Idempotent."""
    def __enter__(self) -> TempFile: ...
    def __exit__(
        self, /, _ty: type[BaseException] | None, _value: BaseException | None, _tb: TracebackType | None
    ) -> bool: ...

@final
class RemoteStats:
    """Requests of one remote archive since it was opened (retries included)."""

    @property
    def requests(self) -> int: ...
    @property
    def bytes(self) -> int:
        """Body bytes received."""
    @property
    def url(self) -> str:
        """The URL as shown in messages (no credentials, no query)."""

def open_remote(
    url: str,
    storage_options: Mapping[str, str | int | float | bool] | None = None,
    parallel: bool = True,
    version: int | None = None,
) -> tuple[Archive, RemoteStats]:
    """Opens the archive at ``url`` (``http(s)://``, ``s3://``, ``gs://``, ``az://``) with one
    request: a range of its end holding the trailer and index."""

@final
class RemoteDir:
    """The objects directly under one URL prefix (``s3://bucket/run/``): listing, lookup, a
    few bytes of an object, deletion. Names are single path segments."""

    def __new__(cls, url: str, storage_options: Mapping[str, str | int | float | bool] | None = None) -> Self: ...
    @property
    def label(self) -> str:
        """The prefix's URL as shown in messages (no credentials)."""
    @property
    def requests(self) -> int:
        """HTTP requests sent by this object's operations (retries included)."""
    def url(self, name: str) -> str:
        """The URL of the object ``name`` under the prefix."""
    def list(self) -> tuple[list[tuple[str, int, str | None, int]], list[str]]:
        """``(objects, prefixes)``: objects as ``(name, size, etag, last_modified)``."""
    def head(self, name: str) -> tuple[str, int, str | None, int] | None:
        """``(name, size, etag, last_modified)`` of the object, or None."""
    def read_head(self, name: str, n: int) -> bytes:
        """The first ``n`` bytes of the object (fewer when it is shorter)."""
    def read_tail(self, name: str, n: int) -> tuple[bytes, int]:
        """``(last n bytes, size)`` of the object."""
    def read_all(self, name: str, max_bytes: int) -> bytes:
        """Every byte of the object; refused when it holds more than ``max_bytes``."""
    def delete(self, name: str) -> None:
        """Deletes the object (a missing one is not an error)."""

class _CompactSummary(TypedDict):
    versions_kept: list[int]
    file_bytes: int

def compact(
    path: str | os.PathLike[str], *, keep_last: int | None = None, keep: list[int] | None = None, sync: bool = True
) -> _CompactSummary:
    """Rewrites the archive keeping its last ``keep_last`` versions, or those numbered in ``keep``
    and every newer one; the new file replaces the old atomically."""
