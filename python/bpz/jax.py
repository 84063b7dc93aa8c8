"""Loading straight into JAX.

``bpz.jax.load(filename)`` returns the saved pytree with every array as a
``jax.Array``; ``bpz.jax.load_tensor(filename, name)`` one tensor. Zero-copy hand-over of the
64-byte-aligned memory
map would need JAX to accept read-only memory, which it does not, so every
array is one verified host copy, then ``device_put`` (the one transfer an
accelerator needs anyway). This module imports JAX; ``import bpz`` does not.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np

from .read import Archive
from .read import open as open_archive

__all__ = ["load", "load_tensor"]


def _to_jax(arr: np.ndarray, device: Any) -> jax.Array:
    if device is None:
        return jax.numpy.asarray(arr)
    return jax.device_put(arr, device)


def load_tensor(source: str | os.PathLike[str] | Archive, name: str, device: Any = None) -> jax.Array:
    """One tensor as a ``jax.Array`` on ``device`` (default: JAX's default device)."""
    if isinstance(source, Archive):
        return _to_jax(source.read(name), device)
    with open_archive(source) as a:
        return _to_jax(a.read(name), device)


def load(filename: str | os.PathLike[str], device: Any = None) -> Any:
    """The whole saved pytree with ``jax.Array`` leaves (checksums verified)."""
    with open_archive(filename) as a:
        tree = a.load()
        if a.structure is None:
            return {k: _to_jax(v, device) for k, v in tree.items()}
    return jax.tree_util.tree_map(lambda x: _to_jax(x, device) if isinstance(x, np.ndarray) else x, tree)

