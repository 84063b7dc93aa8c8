"""``state_dict`` / ``load_state_dict`` with BrainPy 2.6–2.9 semantics: each load is planned and
checked in full before anything is assigned, and undone if a hook fails."""

from __future__ import annotations

import collections
import functools
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from .nodes import (
    StateNode,
    _call_load,
    _call_save,
    _check_entry,
    _default_hooks,
    _is_brainpy,
    _mismatch_error,
    _nodes,
    _own_slots,
    _Slot,
    _tree_slots,
    logger,
)

#: Same name and fields as BrainPy's, so results compare equal to BrainPy's.
StateLoadResult = collections.namedtuple("StateLoadResult", ["missing_keys", "unexpected_keys"])


def _prefixed(name: str, key: Any) -> str:
    key = str(key)
    return key if key.startswith(name + ".") else f"{name}.{key}"



class _Load:
    """The steps of one load, run in order only after every check passed; undone if one fails."""

    def __init__(self, obj: Any) -> None:
        self.obj = obj
        self.steps: list[tuple[str, Any, Any]] = []
        self.problems: list[str] = []
        self.missing: list[str] = []
        self.unexpected: list[str] = []

    def assign(self, slot: _Slot, value: Any) -> None:
        self.steps.append(("assign", slot, value))

    def hook(self, name: str, node: Any, entry: Any, kwargs: dict[str, Any]) -> None:
        self.steps.append(("hook", (name, node, kwargs), entry))

    def run(self) -> None:
        if self.problems:
            raise _mismatch_error(self.problems, self.obj)
        has_hooks = any(kind == "hook" for kind, _, _ in self.steps)
        brainpy = _is_brainpy(self.obj)
        undo: list[Callable[[], None]] = []
        if brainpy:
            # Hooks may set any Variable: keep every current value (references; jax arrays are immutable).
            for slot in _tree_slots(self.obj, unique=True).values():
                undo.append(functools.partial(slot.restore, slot.snapshot()))
        try:
            for kind, target, value in self.steps:
                if kind == "assign":
                    if has_hooks and not brainpy:
                        undo.append(functools.partial(target.restore, target.snapshot()))
                    target.assign(value)
                    continue
                name, node, kwargs = target
                if not brainpy:
                    before = _copy_tree(_call_save(node, kwargs))
                    undo.append(functools.partial(_call_load, node, before, kwargs))
                result = _call_load(node, value, kwargs)
                if result is not None:
                    missing, unexpected = result
                    self.missing += [_prefixed(name, k) for k in missing]
                    self.unexpected += [_prefixed(name, k) for k in unexpected]
        except BaseException:
            for restore in reversed(undo):
                try:
                    restore()
                except Exception:  # noqa: BLE001 - keep undoing; the original error is raised
                    logger.exception("bpz.brainpy: could not undo part of a failed load")
            raise


def _copy_tree(tree: Any) -> Any:
    if isinstance(tree, Mapping):
        return {k: _copy_tree(v) for k, v in tree.items()}
    if isinstance(tree, np.ndarray):
        return tree.copy()
    return tree


def _plan_v2(obj: Any, sd: Mapping[str, Any], kwargs: dict[str, Any]) -> _Load:
    load = _Load(obj)
    nodes = _nodes(obj)
    for name, node in nodes.items():
        entry = sd.get(name, {})
        if not _default_hooks(node):
            load.hook(name, node, entry, kwargs)
            continue
        slots = _own_slots(node)
        problems = _check_entry(name, entry, slots)
        load.problems += problems
        if problems and not isinstance(entry, Mapping):
            continue
        for key, slot in slots.items():
            if key in entry:
                load.assign(slot, entry[key])
            else:
                load.missing.append(key)
        load.unexpected += [_prefixed(name, k) for k in entry if k not in slots]
    # An empty entry holds no state: stateless helper nodes (integrators) get counter-numbered
    # names that differ between builds, so their leftovers are not worth a warning.
    load.unexpected += [str(k) for k, v in sd.items() if k not in nodes and not (isinstance(v, Mapping) and not v)]
    return load


def _plan_v1(obj: Any, sd: Mapping[str, Any], kwargs: dict[str, Any]) -> _Load:
    """BrainPy's v1: the flat keys of ``obj.vars().unique()``; hooks are not called.

    Nodes that expose no variables (duck-typed ones with only the two hooks) take part
    through their hooks, with the keys their own ``__save_state__`` returns.
    """
    load = _Load(obj)
    routed: dict[str, tuple[str, Any]] = {}
    if _is_brainpy(obj):
        slots = _tree_slots(obj, unique=True)
    else:
        slots, seen = {}, set()
        for name, node in _nodes(obj).items():
            if isinstance(node, StateNode) or _is_brainpy(node):
                own = node._own_slots() if isinstance(node, StateNode) else _own_slots(node)
                for key, slot in own.items():
                    if slot.ident not in seen and key not in slots:
                        seen.add(slot.ident)
                        slots[key] = slot
            else:
                for key in _call_save(node, kwargs):
                    routed.setdefault(str(key), (name, node))
    for key, slot in slots.items():
        if key in sd:
            problem = slot.mismatch(sd[key])
            if problem:
                load.problems.append(problem)
            else:
                load.assign(slot, sd[key])
        else:
            load.missing.append(key)
    entries: dict[str, tuple[Any, dict[str, Any]]] = {}
    for key, (name, node) in routed.items():
        entries.setdefault(name, (node, {}))
        if key in sd:
            entries[name][1][key] = sd[key]
    for name, (node, entry) in entries.items():
        load.hook(name, node, entry, kwargs)
    load.unexpected += [str(k) for k in sd if k not in slots and k not in routed]
    return load


# ------------------------------------------------------------------ public state-dict API


def state_dict(obj: Any, **kwargs: Any) -> dict[str, dict[str, Any]]:
    """``{node_name: node.__save_state__(**kwargs)}`` for every node of ``obj``, as BrainPy 2.6–2.9.

    Leaves are what the hooks return: for BrainPy, the Variables' jax arrays. Save it with
    ``bpz.save_pytree(path, {"net": state_dict(net), ...})``.
    """
    return {name: _call_save(node, kwargs) for name, node in _nodes(obj).items()}


def load_state_dict(
    obj: Any,
    state_dict: Mapping[str, Any],
    warn: bool = True,
    compatible: str = "v2",
    **kwargs: Any,
) -> StateLoadResult:
    """Loads a state dict into ``obj``; returns ``StateLoadResult(missing_keys, unexpected_keys)``.

    ``compatible='v2'`` (default): ``state_dict`` is ``{node_name: {"<node>.<attr>": value}}``
    and each node's hook gets its entry (``{}`` if absent). ``compatible='v1'``: a flat
    ``{"<node>.<attr>": value}`` dict keyed like ``obj.vars()``. Every value is checked
    before any is assigned; a mismatch raises :class:`StateMismatchError` naming them all and
    changes nothing. With ``warn``, unexpected and then missing keys are reported as
    ``UserWarning``s. ``kwargs`` go to every ``__load_state__`` hook.
    """
    if compatible not in ("v1", "v2"):
        raise ValueError(f"Unknown compatible version: {compatible}")
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"state_dict must be a dict, not {type(state_dict).__name__}")
    plan = (_plan_v2 if compatible == "v2" else _plan_v1)(obj, state_dict, kwargs)
    plan.run()
    missing, unexpected = sorted(set(plan.missing)), sorted(set(plan.unexpected))
    if warn:
        if unexpected:
            warnings.warn(f"Unexpected keys in state_dict: {unexpected}", UserWarning, stacklevel=2)
        if missing:
            warnings.warn(f"Missing keys in state_dict: {missing}", UserWarning, stacklevel=2)
    return StateLoadResult(missing, unexpected)
