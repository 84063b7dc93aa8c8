"""bpz: fast, safe archives of named tensors for brain-dynamics and ML model state.

>>> import bpz
>>> bpz.save_pytree("m.bpz", {"W": np.ones((2, 3))}, verbose=False)
>>> bpz.load_pytree("m.bpz")["W"].shape
(2, 3)
>>> with bpz.open("m.bpz") as a:   # reads only the index; raw tensors are zero-copy views
...     w = a["W"]
"""

from __future__ import annotations

from . import errors
from ._bpz import FORMAT_VERSION, __version__
from ._legacy._common import set_legacy_limits
from .errors import (
    BpzError,
    CheckpointNotFoundError,
    ChecksumError,
    FormatError,
    InvalidCheckpointPath,
    TensorNotFoundError,
)
from .read import Archive, ArchiveDiff, ChunkInfo, TensorInfo, TensorSlice, VersionInfo, load_pytree, open
from .write import AsyncManager, compact, save_pytree

__all__ = [
    "__version__",
    "FORMAT_VERSION",
    "save_pytree",
    "load_pytree",
    "open",
    "Archive",
    "TensorInfo",
    "TensorSlice",
    "VersionInfo",
    "ChunkInfo",
    "ArchiveDiff",
    "compact",
    "AsyncManager",
    "set_legacy_limits",
    "errors",
    "BpzError",
    "FormatError",
    "ChecksumError",
    "CheckpointNotFoundError",
    "InvalidCheckpointPath",
    "TensorNotFoundError",
]
