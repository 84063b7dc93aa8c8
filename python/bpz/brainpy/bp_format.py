"""BrainPy's own msgpack format for BrainPy-named files, under ``install(bp_format="brainpy")``:
the tree converted as braintools does, written by bpz's ``.bp`` writer atomically and durably."""

from __future__ import annotations

import builtins
import contextlib
import errno
import os
from collections.abc import Iterator, Mapping
from enum import Enum
from typing import Any

import numpy as np

from ..errors import InvalidCheckpointPath
from ..pytree import _is_flatted_dict, format_path, is_jax_array, is_quantity

#: How deep a tree bpz converts to BrainPy's format, or relaxes under ``mismatch``, before refusing it.
MAX_BP_DEPTH = 1000


def _brainpy_state_dict(x: Any, path: tuple[Any, ...] = ()) -> Any:
    """``x`` converted as BrainPy 2.9 / braintools' ``msgpack_to_state_dict`` does, for ``write_bp``.

    Variables / States -> their value, Quantities -> ``{mantissa, scale, base, dim, factor}``, typed
    PRNG keys -> ``{'__prng_key_impl__', 'key_data'}``, brainstate ``FlattedDict`` -> nested dict,
    jax arrays -> numpy copies (an async save must not see later updates). Containers and
    plain leaves are left to ``write_bp``, which refuses what the format cannot hold.
    """
    if len(path) > MAX_BP_DEPTH:
        raise ValueError(f"nesting deeper than {MAX_BP_DEPTH} at {format_path(path)}")
    if isinstance(x, (str, bytes, bool, int, float, complex, type(None), np.generic)):
        return x
    if isinstance(x, np.ndarray):
        return np.array(x, copy=True)
    if _is_flatted_dict(x):
        x = x.to_nest()
    if isinstance(x, Mapping):
        return {k: _brainpy_state_dict(v, (*path, k)) for k, v in x.items()}
    if isinstance(x, tuple) and hasattr(x, "_fields"):
        return {f: _brainpy_state_dict(v, (*path, f)) for f, v in zip(x._fields, x)}
    if isinstance(x, (list, tuple)):
        return [_brainpy_state_dict(v, (*path, i)) for i, v in enumerate(x)]
    if is_quantity(x):
        unit = x.unit
        return {"mantissa": _brainpy_state_dict(x.mantissa, (*path, "mantissa")), "scale": unit.scale,
                "base": unit.base, "dim": np.asarray(unit.dim._dims), "factor": unit.factor}
    if is_jax_array(x):
        import jax

        prng = getattr(jax.dtypes, "prng_key", None)
        if prng is not None and jax.dtypes.issubdtype(x.dtype, prng):
            return {"__prng_key_impl__": str(jax.random.key_impl(x)),
                    "key_data": np.asarray(jax.random.key_data(x))}
        return np.array(x)
    if hasattr(x, "value") and not isinstance(x, Enum):
        return _brainpy_state_dict(x.value, path)
    if hasattr(x, "__array__") and hasattr(x, "dtype") and hasattr(x, "shape"):
        return np.array(x)
    raise TypeError(f"can not serialize {type(x).__name__!r} object at {format_path(path)}")


@contextlib.contextmanager
def _cannot_hold(filename: str) -> Iterator[None]:
    try:
        yield
    except (TypeError, ValueError, OverflowError) as e:
        raise type(e)(f"{filename}: install(bp_format='brainpy') writes BrainPy's msgpack format, which cannot "
                      f"hold this: {e}. Save it under another name (e.g. .bpz) to write a bpz archive.") from e


def _save_brainpy_format(filename: str, target: Any, overwrite: bool, async_manager: Any) -> None:
    """``target`` as BrainPy's msgpack file, by bpz's ``.bp`` writer and its atomic, durable write."""
    from .. import _bpz
    from .._legacy._common import require
    from .._legacy.bp_msgpack import MAX_CHUNK_BYTES, _Writer
    from ..write import AsyncManager, absolute_path

    path = absolute_path(filename)
    if async_manager is not None:
        async_manager.wait_previous_save()
    if not overwrite and os.path.lexists(path):
        raise InvalidCheckpointPath(f'Invalid checkpoint at "{filename}".')
    if os.path.isdir(path):
        raise IsADirectoryError(errno.EISDIR, "Cannot save a checkpoint into a directory; give a file name", filename)
    with _cannot_hold(filename):
        tree = _brainpy_state_dict(target)  # a snapshot, taken now in the caller's thread

    def write() -> None:
        parent = os.path.dirname(path)
        try:
            os.makedirs(parent, exist_ok=True)
        except OSError as e:
            raise OSError(f"Cannot create directory {os.path.dirname(filename) or '.'}: {e}") from e
        msgpack = require("msgpack", "msgpack", "writing BrainPy .bp files")
        try:
            with _bpz.TempFile(path, overwrite=overwrite) as tmp:  # removed unless committed
                with _cannot_hold(filename), builtins.open(tmp.name, "wb", buffering=1 << 20) as fh:
                    _Writer(fh, msgpack, MAX_CHUNK_BYTES).value(tree, ())
                tmp.commit(sync=True)
        except FileExistsError:  # overwrite=False, and the file appeared meanwhile: as the bpz writer
            raise InvalidCheckpointPath(f'Invalid checkpoint at "{filename}".') from None

    if async_manager is None:
        write()
    elif isinstance(async_manager, AsyncManager):
        async_manager.save_async(write, filename)
    else:
        async_manager.save_async(write)
