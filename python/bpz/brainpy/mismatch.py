"""Loading with braintools' ``mismatch='warn'|'ignore'`` and ``max_size`` (``msgpack_load``)."""

from __future__ import annotations

import collections
import os
import warnings
from collections.abc import Mapping
from enum import Enum
from typing import Any

import numpy as np

from ..errors import LimitExceededError
from ..pytree import format_path, is_jax_array, is_quantity
from .bp_format import MAX_BP_DEPTH

MISMATCH_MODES = ("error", "warn", "ignore")


class _Keep:
    """Marks a target leaf kept as it was (a mismatch under 'warn'/'ignore')."""

    __slots__ = ("original",)

    def __init__(self, original: Any) -> None:
        self.original = original


class _InPlace:
    """Stands for a Variable/State whose value holds a mismatch: restore_into fills this, not the State,
    and ``value = ...`` passes the cleaned-up value on."""

    __slots__ = ("state", "value_template")

    def __init__(self, state: Any, value_template: Any) -> None:
        self.state, self.value_template = state, value_template

    @property
    def value(self) -> Any:
        return self.value_template

    @value.setter
    def value(self, new: Any) -> None:
        self.state.value = _unkeep(new)


def _relax(target: Any, loaded: Any, mode: str, path: tuple[Any, ...], notes: list[str]) -> tuple[Any, Any]:
    """``(target', loaded')`` that restore_into fits without a mismatch, as braintools resolves them:
    a dict key absent from the file or a list item beyond its length keeps the target's value; an
    array of another shape or a Quantity of another unit is taken from the file."""
    if len(path) > MAX_BP_DEPTH:
        return target, loaded
    from ..pytree import _is_flatted_dict, is_brainpy_variable

    where = format_path(path)
    if _is_flatted_dict(target) and not (
        loaded and isinstance(loaded, Mapping) and all(isinstance(k, tuple) for k in loaded)
    ):
        target = target.to_nest()  # saved nested, as restore_into matches it
    if isinstance(target, Mapping) and isinstance(loaded, Mapping):
        by_str = {str(k): k for k in loaded}
        t_out: dict[Any, Any] = {}
        l_out: dict[Any, Any] = {}
        missing = {k for k in target if k not in loaded and str(k) not in by_str}
        if missing:
            notes.append("The target dict keys and state dict keys do not match, target dict contains keys "
                         f"{sorted(map(str, missing))} which are not present in state dict at {where}")
        for k, v in target.items():
            if k in missing:
                t_out[k] = l_out[k] = _Keep(v)
            else:
                lk = k if k in loaded else by_str[str(k)]
                t_out[k], l_out[k] = _relax(v, loaded[lk], mode, (*path, k), notes)
        if mode == "warn":  # file keys the target lacks: left in for restore_into to report
            used = {str(k) for k in target}
            l_out.update({k: v for k, v in loaded.items() if str(k) not in used})
        return t_out, l_out
    if isinstance(target, (list, tuple)) and not hasattr(target, "_fields"):
        seq = _as_list(loaded)
        if seq is None:
            return target, loaded
        if len(seq) != len(target):
            notes.append(f"The size of the list and the state dict do not match, got {len(target)} and "
                         f"{len(seq)} at {where}")
        pairs = [_relax(t, got, mode, (*path, i), notes) for i, (t, got) in enumerate(zip(target, seq))]
        kept = [_Keep(t) for t in target[len(seq):]]
        t_items = [p[0] for p in pairs] + kept
        l_items = [p[1] for p in pairs] + kept
        return (type(target)(t_items) if type(target) in (list, tuple) else t_items), l_items
    if is_quantity(target):
        unit = getattr(loaded, "unit", None)
        if unit is not None and unit != target.unit:
            notes.append(f"Unit mismatch: expected {target.unit}, got {unit} at {where}")
            return None, loaded
        if unit is not None and np.shape(loaded) != np.shape(target):
            notes.append(f"Array shape mismatch: expected {np.shape(target)}, got {np.shape(loaded)} at {where}")
            return None, loaded
        return target, loaded
    if is_brainpy_variable(target):
        return target, loaded  # its setter takes no other shape: refused, before anything is assigned
    if hasattr(target, "value") and not isinstance(target, (Enum, str, bytes, np.ndarray, np.generic)) \
            and not is_jax_array(target):
        inner_t, inner_l = _relax(target.value, loaded, mode, path, notes)
        if inner_t is target.value and inner_l is loaded:
            return target, loaded
        return _InPlace(target, inner_t), inner_l
    if hasattr(target, "shape") and hasattr(loaded, "shape"):
        if tuple(np.shape(target)) != tuple(np.shape(loaded)):
            notes.append(f"Array shape mismatch: expected {tuple(np.shape(target))}, "
                         f"got {tuple(np.shape(loaded))} at {where}")
            return None, loaded  # None as the target: restore_into returns the loaded value
    return target, loaded


def _as_list(loaded: Any) -> list[Any] | None:
    if isinstance(loaded, (list, tuple)):
        return list(loaded)
    if isinstance(loaded, Mapping) and all(isinstance(k, str) and k.isdigit() for k in loaded):
        # a BrainPy .bp file stores sequences as {"0": ..., "1": ...}
        n = len(loaded)
        if set(loaded) == {str(i) for i in range(n)}:
            return [loaded[str(i)] for i in range(n)]
    return None


def _unkeep(x: Any, depth: int = 0) -> Any:
    """``x`` with every :class:`_Keep` / :class:`_InPlace` replaced by the target's own object."""
    if isinstance(x, _Keep):
        return x.original
    if isinstance(x, _InPlace):
        return x.state
    if depth > MAX_BP_DEPTH:
        return x
    if isinstance(x, dict):
        items = {k: _unkeep(v, depth + 1) for k, v in x.items()}
        if all(items[k] is x[k] for k in x):
            return x
        return type(x)(items) if type(x) in (dict, collections.OrderedDict) else items
    if isinstance(x, (list, tuple)):
        items_l = [_unkeep(v, depth + 1) for v in x]
        if all(a is b for a, b in zip(items_l, x)):
            return x
        if isinstance(x, tuple) and hasattr(x, "_fields"):
            return type(x)(*items_l)
        return type(x)(items_l) if type(x) in (list, tuple) else items_l
    return x


def _load(filename: Any, target: Any, parallel: bool, mismatch: str = "error") -> Any:
    from ..pytree import restore_into
    from ..read import load_pytree

    if target is None or mismatch == "error":
        return load_pytree(filename, target=target, parallel=parallel)
    loaded = load_pytree(filename, parallel=parallel)
    notes: list[str] = []  # the mismatches tolerated
    relaxed_target, relaxed_loaded = _relax(target, loaded, mismatch, (), notes)
    assignments: list[tuple[Any, Any]] = []
    ignored: list[str] = []
    result = restore_into(relaxed_target, relaxed_loaded, assignments, ignored=ignored)
    for obj, value in assignments:
        obj.value = _unkeep(value)
    if ignored:
        notes.append(f"bpz: {filename} holds {len(ignored)} value(s) the target has no place for, not loaded: "
                     f"{', '.join(ignored[:20])}{' ...' if len(ignored) > 20 else ''}")
    if mismatch == "warn":  # 'ignore' is silent about everything, as braintools'
        for note in notes:
            warnings.warn(note, UserWarning, stacklevel=4)
    return _unkeep(result)


def _check_load_options(mismatch: Any, max_size: Any) -> None:
    if mismatch not in MISMATCH_MODES:
        raise ValueError(f"Invalid mismatch mode: {mismatch!r}. Must be one of 'error', 'warn', or 'ignore'.")
    if max_size is not None and (not isinstance(max_size, int) or isinstance(max_size, bool) or max_size < 0):
        raise ValueError(f"max_size must be None or a number of bytes >= 0, not {max_size!r}")


def _check_max_size(filename: str, max_size: int | None) -> None:
    """braintools' ``max_size``: the checkpoint's size (for a bpz archive, the larger of the file and
    its decoded tensors), refused before anything is decoded."""
    if max_size is None or not os.path.isfile(filename):
        return
    from ..formats import sniff
    from ..read import open as open_archive

    size = os.path.getsize(filename)
    if size <= max_size and sniff(filename) == "bpz":
        with open_archive(filename) as archive:
            size = max(size, sum(info.nbytes for info in archive.infos()))
    if size > max_size:
        raise LimitExceededError(f"Checkpoint data too large: {size} bytes exceeds maximum {max_size} bytes "
                                 f"({filename}; max_size={max_size})")
