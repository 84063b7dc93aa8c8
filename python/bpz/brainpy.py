"""BrainPy compatibility: state dicts, hooks, legacy ``save_states`` files, a drop-in switch.

``import bpz.brainpy`` never imports BrainPy; it is imported only when a BrainPy object is
passed (it is then already loaded) or :func:`install` is called.

State dicts (BrainPy 2.6–2.9 semantics)
---------------------------------------
:func:`state_dict` returns ``{node.name: node.__save_state__(**kwargs)}`` for every node of
``obj.nodes()``; the default hook gives ``{"<node>.<attr>": value}`` for the node's own
Variables. :func:`load_state_dict` reads that two-level dict (``compatible='v2'``) or a flat
``vars()``-keyed one (``compatible='v1'``), calls custom ``__load_state__`` hooks, warns
``Unexpected keys in state_dict: [...]`` then ``Missing keys in state_dict: [...]`` (both
``UserWarning``) and returns ``StateLoadResult(missing_keys, unexpected_keys)``.

Legacy files (BrainPy 2.1.12–2.4.5 semantics)
---------------------------------------------
:func:`save_states` / :func:`load_states` write and read ``.h5 .hdf5 .npz .pkl .pickle .mat``
exactly as BrainPy laid them out (flat ``"<node>.<attr>"`` keys, a Variable shared by
several nodes stored once with ``duplicate_keys`` / ``duplicate_targets``), and ``.bpz``:
the same flat keys as tensors, the alias lists in the archive metadata under
:data:`STATES_METADATA_KEY`.

Plain Python, without BrainPy
-----------------------------
Any object with ``__save_state__(**kw) -> dict`` and ``__load_state__(dict, **kw) ->
(missing, unexpected) | None`` takes part; its node name is ``obj.name`` (else its class
name) and its nodes are ``obj.nodes()`` (a ``{name: node}`` mapping, itself first) when it
has that method. The :class:`StateNode` mixin supplies all of it: state = the public numpy
array attributes (or the attributes named in ``__state_attrs__``), children = attributes
holding other nodes (also in lists, tuples and dicts). ``load_states`` also fills a plain
``dict`` of arrays.

Deliberate differences from BrainPy
-----------------------------------
* ``missing_keys`` / ``unexpected_keys`` are sorted (BrainPy: set order, random per run;
  2.3–2.5 even swapped the two lists).
* No doubled prefixes: a hook's key is prefixed with ``"<node>."`` only if it lacks it
  (``Dense1.b``, not ``Dense1.Dense1.b``).
* v2: a top-level entry that matches no node is reported as unexpected (BrainPy ignored it),
  unless it is an empty dict (a stateless node such as an integrator, whose counter-numbered
  name changes with the build order).
* Atomic: shape and dtype of every key are checked before any variable is assigned; a
  failed load changes nothing and raises :class:`StateMismatchError` (a ``ValueError``)
  naming every mismatching key with expected and given shape and dtype (BrainPy raised
  ``MathError`` on the first and kept what it had assigned). The rule is BrainPy's setter
  rule: equal shapes (except along a Variable's ``batch_axis``), equal dtypes after jax's
  canonicalisation (so float64 into float32 still passes with x64 off). A non-dict node
  entry is reported the same way (BrainPy: ``AttributeError``). Custom hooks can only be
  called: everything else is checked first, and if a hook raises, every Variable of the
  model gets its old value back.
* ``load_states`` checks every stored key, alias and value before assigning (BrainPy
  assigned key by key); it reads ``.pickle`` (through a restricted unpickler that never runs
  code), restores ``.mat`` bool and 0-d variables, and reports missing variables both on the
  ``bpz.brainpy`` logger and as a ``UserWarning`` (BrainPy: only logged).
  ``check_missing=True`` makes missing variables an error instead. The alias-mismatch
  ``ValueError`` names both keys (BrainPy printed the model object instead of the second key).
* Unknown ``save_states`` settings raise ``TypeError`` (BrainPy ignored them); the accepted
  suffixes include ``.pickle`` on load and ``.bpz``.
* With :func:`install`, ``brainpy.checkpoints.save_pytree`` and ``braintools.file.msgpack_save``
  write bpz archives (under the exact name given; ``.bp``-named ones too, with a one-time
  notice, unless ``install(bp_format="brainpy")``) and the loads read both those and msgpack
  files; without a target, the saved structure comes back (tuples, int keys, Quantities, typed
  PRNG keys) with writable NumPy arrays. Errors are also BrainPy's classes (braintools'
  ``InvalidCheckpointPath`` / ``AlreadyExistsError``, ``brainpy.errors``' on 2.3–2.6). See the
  README, "For BrainPy users", for the full list.
"""

from __future__ import annotations

import builtins
import collections
import contextlib
import errno
import importlib
import logging
import os
import sys
import threading
import warnings
from enum import Enum
from collections.abc import Iterator, Mapping, MutableMapping
from typing import Any, Callable

import numpy as np

from .errors import BpzError, CheckpointNotFoundError, FormatError, InvalidCheckpointPath, LimitExceededError
from .pytree import is_jax_array

__all__ = [
    "StateLoadResult",
    "StateNode",
    "StateMismatchError",
    "UnknownFormatError",
    "state_dict",
    "load_state_dict",
    "save_states",
    "load_states",
    "read_states",
    "load_pickle",
    "install",
    "uninstall",
    "is_installed",
    "installed",
    "STATES_SUFFIXES",
    "STATES_METADATA_KEY",
]

logger = logging.getLogger("bpz.brainpy")

#: Same name and fields as BrainPy's, so results compare equal to BrainPy's.
StateLoadResult = collections.namedtuple("StateLoadResult", ["missing_keys", "unexpected_keys"])

#: Suffixes of ``save_states`` files (BrainPy's five, ``.pickle`` also on load, and ``.bpz``).
STATES_SUFFIXES = (".h5", ".hdf5", ".npz", ".pkl", ".pickle", ".mat", ".bpz")
#: Metadata key of a ``.bpz`` states file: ``{"duplicate_keys": [...], "duplicate_targets": [...]}``.
STATES_METADATA_KEY = "bpz.brainpy.save_states"

_NOT_FOUND = '"{key}" is stored in {filename}. But we does not find it is defined as variable in {target}.'
_ID_MISMATCH = "{key1} and {key2} is the same data in {filename}. But we found they are different in {target}."


class StateMismatchError(BpzError, ValueError):
    """Values do not fit the model's variables; nothing was assigned."""


class UnknownFormatError(BpzError, ValueError):
    """``save_states`` / ``load_states`` got a file name without a known suffix."""


# ------------------------------------------------------------------ BrainPy detection


def _brainpy_base() -> type | None:
    """BrainPy's ``BrainPyObject`` if BrainPy is already imported (it is never imported here)."""
    if "brainpy" not in sys.modules:
        return None
    try:
        import brainpy.math as bm
    except Exception:  # noqa: BLE001 - a broken BrainPy install is no BrainPy object
        return None
    return getattr(bm, "BrainPyObject", None) or getattr(sys.modules["brainpy"], "BrainPyObject", None)


def _is_brainpy(obj: Any) -> bool:
    base = _brainpy_base()
    return base is not None and isinstance(obj, base)


def _canonical(dtype: np.dtype) -> np.dtype:
    """The dtype a jax array made from ``dtype`` gets (float64 -> float32 with x64 off)."""
    import jax

    return np.dtype(jax.dtypes.canonicalize_dtype(dtype))


# ------------------------------------------------------------------ values and slots


def _value_of(x: Any) -> Any:
    """Unwraps Variables / States / ``bm.Array`` (anything with ``.value`` but not an array)."""
    if isinstance(x, (np.ndarray, np.generic)) or is_jax_array(x):
        return x
    if hasattr(x, "value") and not isinstance(x, (str, bytes, Mapping)):
        return x.value
    return x


def _shape_dtype(value: Any) -> tuple[tuple[int, ...], np.dtype]:
    value = _value_of(value)
    dtype = getattr(value, "dtype", None)
    try:
        dtype = np.dtype(dtype) if dtype is not None else np.asarray(value).dtype
    except TypeError:
        dtype = np.asarray(value).dtype
    return tuple(int(d) for d in np.shape(value)), dtype


def _describe(shape: tuple[int, ...], dtype: np.dtype) -> str:
    return f"shape {shape} {dtype}"


class _Slot:
    """One assignable state value: a BrainPy Variable, an attribute or a dict item."""

    key: str

    @property
    def ident(self) -> int:
        raise NotImplementedError

    def expected(self) -> tuple[tuple[int, ...], np.dtype]:
        raise NotImplementedError

    @property
    def shape(self) -> tuple[int, ...]:
        return self.expected()[0]

    @property
    def dtype(self) -> np.dtype:
        return self.expected()[1]

    def accepts(self, got: tuple[tuple[int, ...], np.dtype], value: Any) -> bool:
        raise NotImplementedError

    def mismatch(self, value: Any) -> str | None:
        """Why ``value`` cannot be assigned, or None."""
        if isinstance(value, Mapping):
            return f"{self.key}: expected {_describe(*self.expected())}, got a dict"
        try:
            got = _shape_dtype(value)
        except Exception as e:  # noqa: BLE001 - a value numpy can't even describe
            return f"{self.key}: expected {_describe(*self.expected())}, got {type(value).__name__} ({e})"
        if self.accepts(got, value):
            return None
        return f"{self.key}: expected {_describe(*self.expected())}, got {_describe(*got)}"

    def get(self) -> Any:
        raise NotImplementedError

    def assign(self, value: Any) -> None:
        raise NotImplementedError

    def snapshot(self) -> Any:
        raise NotImplementedError

    def restore(self, old: Any) -> None:
        raise NotImplementedError


class _VarSlot(_Slot):
    """A BrainPy Variable; assigned as BrainPy does, ``var.value = jnp.asarray(value)``."""

    def __init__(self, key: str, var: Any) -> None:
        self.key, self.var = key, var

    @property
    def ident(self) -> int:
        return id(self.var)

    def expected(self) -> tuple[tuple[int, ...], np.dtype]:
        return tuple(int(d) for d in np.shape(self.var.value)), np.dtype(self.var.dtype)

    def accepts(self, got: tuple[tuple[int, ...], np.dtype], value: Any) -> bool:
        shape, dtype = self.expected()
        got_shape, got_dtype = got
        axis = getattr(self.var, "batch_axis", None)
        if axis is not None and len(shape) == len(got_shape) and 0 <= axis < len(shape):
            shape, got_shape = shape[:axis] + shape[axis + 1 :], got_shape[:axis] + got_shape[axis + 1 :]
        if shape != got_shape:
            return False
        try:
            return _canonical(got_dtype) == dtype
        except (TypeError, ValueError):  # str, object, ...: nothing jax would take
            return False

    def get(self) -> Any:
        return self.var.value

    def assign(self, value: Any) -> None:
        import jax.numpy as jnp

        self.var.value = jnp.asarray(_value_of(value))

    def snapshot(self) -> Any:
        return self.var.value  # jax arrays are immutable: a reference is a snapshot

    def restore(self, old: Any) -> None:
        self.var.value = old


_PY_SCALARS = (bool, int, float, complex)


def _is_reference(x: Any) -> bool:
    """Whether ``x`` is mutable state that two keys can share (an alias), as a Variable is.

    Numpy arrays and objects with a ``.value`` are; numbers, numpy scalars and jax arrays
    (immutable, and Python interns small ints) are not, so they are never deduplicated.
    """
    if isinstance(x, np.ndarray):
        return True
    if isinstance(x, (np.generic, str, bytes, Mapping) + _PY_SCALARS) or is_jax_array(x):
        return False
    return hasattr(x, "value")


class _ItemSlot(_Slot):
    """An attribute of a plain object (``getattr``) or an item of a dict (``[]``).

    Numpy arrays are filled in place (aliases stay aliases); read-only arrays, jax arrays and
    Python scalars are replaced by a value of the same kind; objects with a ``.value`` get
    their ``.value`` set.
    """

    def __init__(self, key: str, container: Any, name: Any, item: bool) -> None:
        self.key, self.container, self.name, self.item = key, container, name, item

    def current(self) -> Any:
        return self.container[self.name] if self.item else getattr(self.container, self.name)

    def _put(self, value: Any) -> None:
        if self.item:
            self.container[self.name] = value
        else:
            setattr(self.container, self.name, value)

    @property
    def ident(self) -> int:
        cur = self.current()
        return id(cur) if _is_reference(cur) else id(self)

    def expected(self) -> tuple[tuple[int, ...], np.dtype]:
        return _shape_dtype(self.current())

    def accepts(self, got: tuple[tuple[int, ...], np.dtype], value: Any) -> bool:
        shape, dtype = self.expected()
        if got[0] != shape:
            return False
        if got[1] == dtype:
            return True
        if isinstance(value, _PY_SCALARS):  # a Python number: any cast of the same kind
            return bool(np.can_cast(got[1], dtype, casting="same_kind"))
        if is_jax_array(_value_of(self.current())):
            return _canonical(got[1]) == dtype
        return False

    def get(self) -> Any:
        return _value_of(self.current())

    def assign(self, value: Any) -> None:
        cur = self.current()
        value = _value_of(value)
        if isinstance(cur, np.ndarray):
            if cur.flags.writeable:
                np.copyto(cur, np.asarray(value), casting="unsafe")
            else:
                self._put(np.array(value, dtype=cur.dtype))
        elif isinstance(cur, np.generic):
            self._put(np.asarray(value, dtype=cur.dtype)[()])
        elif isinstance(cur, _PY_SCALARS):
            self._put(type(cur)(np.asarray(value).item()))
        elif is_jax_array(cur):
            import jax.numpy as jnp

            self._put(jnp.asarray(value, dtype=cur.dtype))
        elif hasattr(cur, "value"):
            cur.value = value
        else:
            self._put(np.array(value))

    def snapshot(self) -> Any:
        cur = self.current()
        inner = _value_of(cur)
        return (cur, np.array(inner, copy=True) if isinstance(inner, np.ndarray) else inner)

    def restore(self, old: Any) -> None:
        obj, inner = old
        if isinstance(obj, np.ndarray) and obj.flags.writeable:
            np.copyto(obj, inner)
            self._put(obj)
        elif hasattr(obj, "value") and not isinstance(obj, (np.ndarray, np.generic)) and not is_jax_array(obj):
            obj.value = inner
            self._put(obj)
        else:
            self._put(obj)


# ------------------------------------------------------------------ the plain-Python protocol


def _node_name(node: Any) -> str:
    name = getattr(node, "name", None)
    return name if isinstance(name, str) and name else type(node).__name__


def _has_hooks(x: Any) -> bool:
    return not isinstance(x, type) and hasattr(type(x), "__save_state__") and hasattr(type(x), "__load_state__")


class StateNode:
    """Mixin that lets a plain-Python object use :func:`state_dict`, :func:`load_state_dict`,
    :func:`save_states` and :func:`load_states` like a BrainPy model, without BrainPy.

    * ``name``: the node name used in keys (default: the class name). Names must be unique
      in a model; there are no global counters, so a rebuilt model has the same keys.
    * state: the public attributes holding numpy arrays, in attribute order, or exactly the
      attributes listed in a class attribute ``__state_attrs__`` (numpy or jax arrays, numpy
      or Python scalars, or objects with a ``.value``). Keys are ``"<name>.<attr>"``.
    * children: attributes holding other nodes (a :class:`StateNode` or anything with both
      hooks), directly or in lists, tuples and dicts.
    * override ``__save_state__(**kw) -> dict`` / ``__load_state__(state_dict, **kw) ->
      (missing, unexpected) | None`` to save something else, as in BrainPy.

    >>> class LIF(StateNode):
    ...     def __init__(self, n, name=None):
    ...         self.name, self.V, self.spike = name, np.zeros(n, np.float32), np.zeros(n, bool)
    >>> class Net(StateNode):
    ...     def __init__(self):
    ...         self.name, self.E, self.I = "Net", LIF(4, "E"), LIF(1, "I")
    >>> sorted(state_dict(Net()))
    ['E', 'I', 'Net']
    """

    name: str | None = None
    __state_attrs__: tuple[str, ...] | None = None

    # -- structure
    def _state_attr_names(self) -> list[str]:
        declared = type(self).__state_attrs__
        if declared is not None:
            return list(declared)
        return [k for k, v in vars(self).items() if not k.startswith("_") and isinstance(v, np.ndarray)]

    def _own_slots(self) -> dict[str, _ItemSlot]:
        """Own state, deduplicated by identity (first name wins), as BrainPy's level-0 ``vars().unique()``."""
        name, out, seen = _node_name(self), {}, set()
        for attr in self._state_attr_names():
            slot = _ItemSlot(f"{name}.{attr}", self, attr, item=False)
            if slot.ident not in seen:
                seen.add(slot.ident)
                out[slot.key] = slot
        return out

    def _state_children(self) -> list[Any]:
        kids: list[Any] = []

        def add(x: Any) -> None:
            if isinstance(x, StateNode) or _has_hooks(x):
                kids.append(x)
            elif isinstance(x, (list, tuple)):
                for y in x:
                    add(y)
            elif isinstance(x, Mapping):
                for y in x.values():
                    add(y)

        for key, value in vars(self).items():
            if key not in ("name", "__state_attrs__") and value is not self:
                add(value)
        return kids

    def nodes(self) -> dict[str, Any]:
        """``{name: node}``: this node, its children, then each child's subtree (BrainPy's order)."""
        out: dict[str, Any] = {_node_name(self): self}

        def put(node: Any) -> bool:
            name = _node_name(node)
            if name in out:
                if out[name] is not node:
                    raise ValueError(f"two different nodes are named {name!r}: give them distinct .name attributes")
                return False
            out[name] = node
            return True

        def visit(node: Any) -> None:
            new = []
            if isinstance(node, StateNode):
                children = node._state_children()
            else:
                sub = node.nodes() if callable(getattr(node, "nodes", None)) else {}
                children = [c for c in sub.values() if c is not node] if isinstance(sub, Mapping) else []
            for child in children:
                if put(child):
                    new.append(child)
            for child in new:
                visit(child)

        visit(self)
        return out

    def vars(self) -> dict[str, Any]:
        """Every state value of the model by its flat key, aliases included (BrainPy's ``vars()``)."""
        return {key: slot.get() for key, slot in _tree_slots(self).items()}

    # -- hooks
    def __save_state__(self, **kwargs: Any) -> dict[str, Any]:
        return {key: slot.get() for key, slot in self._own_slots().items()}

    def __load_state__(self, state_dict: Mapping[str, Any], **kwargs: Any) -> tuple[list[str], list[str]]:
        slots = self._own_slots()
        problems = _check_entry(_node_name(self), state_dict, slots)
        if problems:
            raise _mismatch_error(problems)
        for key in slots.keys() & state_dict.keys():
            slots[key].assign(state_dict[key])
        return sorted(slots.keys() - state_dict.keys()), sorted(state_dict.keys() - slots.keys())

    # -- BrainPy-style methods
    def state_dict(self, **kwargs: Any) -> dict[str, dict[str, Any]]:
        return state_dict(self, **kwargs)

    def load_state_dict(self, state_dict: Mapping[str, Any], warn: bool = True, compatible: str = "v2", **kwargs: Any) -> StateLoadResult:
        return load_state_dict(self, state_dict, warn=warn, compatible=compatible, **kwargs)

    def save_states(self, filename: str | os.PathLike[str], variables: Mapping[str, Any] | None = None, **setting: Any) -> None:
        save_states(self, filename, variables, **setting)

    def load_states(self, filename: str | os.PathLike[str], verbose: bool = False, check_missing: bool = False,
                    *, max_ratio: float | None = None, max_bytes: int | None = None) -> None:
        load_states(self, filename, verbose=verbose, check_missing=check_missing, max_ratio=max_ratio,
                    max_bytes=max_bytes)


# ------------------------------------------------------------------ one adapter for every kind of model


def _nodes(obj: Any) -> dict[str, Any]:
    if _is_brainpy(obj) or isinstance(obj, StateNode):
        return dict(obj.nodes())
    if not _has_hooks(obj):
        raise TypeError(
            f"{type(obj).__module__}.{type(obj).__qualname__} has no __save_state__ / __load_state__: "
            "pass a BrainPy object, a bpz.brainpy.StateNode, or an object with both hooks"
        )
    nodes = obj.nodes() if callable(getattr(obj, "nodes", None)) else None
    return dict(nodes) if isinstance(nodes, Mapping) else {_node_name(obj): obj}


def _default_hooks(node: Any) -> bool:
    """Whether the node uses the library's own hooks (then bpz checks and assigns itself)."""
    cls = type(node)
    if isinstance(node, StateNode):
        return cls.__load_state__ is StateNode.__load_state__
    base = _brainpy_base()
    if base is None or not isinstance(node, base):
        return False
    if cls.__load_state__ is not base.__load_state__:
        return False
    return getattr(cls, "load_state", None) is getattr(base, "load_state", None)


def _own_slots(node: Any) -> dict[str, _Slot]:
    if isinstance(node, StateNode):
        return dict(node._own_slots())
    return {k: _VarSlot(k, v) for k, v in node.vars(include_self=True, level=0).unique().items()}


def _call_save(node: Any, kwargs: dict[str, Any]) -> Any:
    save = getattr(node, "save_state", None) if _is_brainpy(node) else None
    return (save or node.__save_state__)(**kwargs)


def _call_load(node: Any, entry: Any, kwargs: dict[str, Any]) -> Any:
    load = getattr(node, "load_state", None) if _is_brainpy(node) else None
    return (load or node.__load_state__)(entry, **kwargs)


def _tree_slots(obj: Any, unique: bool = False) -> dict[str, _Slot]:
    """Flat ``key -> slot`` of a whole model (BrainPy's absolute ``vars()``), optionally deduplicated."""
    if _is_brainpy(obj):
        variables = obj.vars(method="absolute", level=-1)
        if unique:
            variables = variables.unique()
        return {k: _VarSlot(k, v) for k, v in variables.items()}
    if isinstance(obj, MutableMapping):
        slots: dict[str, _Slot] = {str(k): _ItemSlot(str(k), obj, k, item=True) for k in obj}
    else:
        slots = {}
        for node in _nodes(obj).values():
            if not isinstance(node, StateNode):
                raise TypeError(
                    f"node {_node_name(node)!r} ({type(node).__qualname__}) lists no variables: flat "
                    "variable access needs BrainPy objects or bpz.brainpy.StateNode nodes"
                )
            for attr in node._state_attr_names():
                key = f"{_node_name(node)}.{attr}"
                slots[key] = _ItemSlot(key, node, attr, item=False)
    if unique:
        seen: set[int] = set()
        slots = {k: s for k, s in slots.items() if not (s.ident in seen or seen.add(s.ident))}
    return slots


# ------------------------------------------------------------------ checking and running a load


def _prefixed(name: str, key: Any) -> str:
    key = str(key)
    return key if key.startswith(name + ".") else f"{name}.{key}"


def _check_entry(name: str, entry: Any, slots: Mapping[str, _Slot]) -> list[str]:
    if not isinstance(entry, Mapping):
        return [f"{name}: expected a dict of the node's variables, got {type(entry).__name__}"]
    return [p for key in slots if key in entry for p in [slots[key].mismatch(entry[key])] if p]


def _mismatch_error(problems: list[str], obj: Any = None) -> StateMismatchError:
    """The error for values that don't fit; for a BrainPy model also a ``brainpy.MathError``, the
    class BrainPy's Variable setter raises there (``except MathError`` keeps working)."""
    lines = "\n  ".join(sorted(problems))
    n = len(problems)
    cls = StateMismatchError
    math_error = _brainpy_math_error() if obj is not None and _is_brainpy(obj) else None
    if math_error is not None:
        cls = _dual_class(StateMismatchError, math_error)
    return cls(
        f"{n} value{'s' if n != 1 else ''} in the state dict do{'es' if n == 1 else ''} not fit the "
        f"model, so nothing was loaded:\n  {lines}"
    )


def _brainpy_math_error() -> type | None:
    """BrainPy's ``MathError`` (``brainpy.MathError`` in 2.9, ``brainpy._errors`` in 2.8, ``brainpy.errors`` before)."""
    for module in ("brainpy", "brainpy._errors", "brainpy.errors"):
        cls = getattr(sys.modules.get(module), "MathError", None)
        if isinstance(cls, type) and issubclass(cls, Exception):
            return cls
    return None


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
                undo.append(lambda s=slot, old=slot.snapshot(): s.restore(old))
        try:
            for kind, target, value in self.steps:
                if kind == "assign":
                    if has_hooks and not brainpy:
                        undo.append(lambda s=target, old=target.snapshot(): s.restore(old))
                    target.assign(value)
                    continue
                name, node, kwargs = target
                if not brainpy:
                    before = _copy_tree(_call_save(node, kwargs))
                    undo.append(lambda n=node, b=before, kw=kwargs: _call_load(n, b, kw))
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


# ------------------------------------------------------------------ legacy save_states / load_states


def _states_format(filename: str) -> str:
    suffix = os.path.splitext(filename)[1].lower()
    if suffix not in STATES_SUFFIXES:
        raise UnknownFormatError(f"Unknown file format: {filename}. We only supports {list(STATES_SUFFIXES)}")
    return "bpz" if suffix == ".bpz" else "legacy"




def save_states(obj: Any, filename: str | os.PathLike[str], variables: Mapping[str, Any] | None = None, **setting: Any) -> None:
    """Saves the model's variables as BrainPy 2.1.12–2.4.5's ``obj.save_states`` did.

    ``variables`` defaults to ``obj.vars(method='absolute', level=-1)`` (flat
    ``"<node>.<attr>"`` keys). A value that appears under several keys (the same Variable,
    by identity) is stored once, under its first key; the later keys are recorded as
    aliases. The suffix picks the format: ``.h5``/``.hdf5``, ``.npz`` (``compressed=True``
    for ``savez_compressed``), ``.pkl``/``.pickle``, ``.mat``, or ``.bpz`` (``compressed=True``
    compresses every tensor; ``compression``/``level``/``chunk_size`` as in
    :func:`bpz.save_pytree`). The file appears atomically.
    """
    filename = os.fspath(filename)
    fmt = _states_format(filename)
    if variables is None:
        variables = _tree_slots(obj)  # obj.vars(method='absolute', level=-1)
    if not isinstance(variables, Mapping):
        raise ValueError(f'"variables" must be a dict, while we got {type(variables)}')
    flat: dict[str, np.ndarray] = {}
    aliases: dict[str, str] = {}
    first: dict[int, str] = {}
    for key, value in variables.items():
        if isinstance(value, _Slot):
            ident, value = value.ident, value.get()
        else:
            ident = id(value) if _is_reference(value) else None
        stored = key if ident is None else first.setdefault(ident, key)
        if stored == key:
            flat[key] = np.asarray(_value_of(value))
        else:
            aliases[key] = stored
    if fmt == "legacy":
        from ._legacy import states_files

        states_files.write_states(filename, flat, aliases, **setting)
        return
    from .write import save_pytree

    options = dict(setting)
    if options.pop("compressed", False):
        options.setdefault("compression", "zstd")
    meta = {STATES_METADATA_KEY: {"duplicate_keys": list(aliases), "duplicate_targets": list(aliases.values())}}
    save_pytree(filename, flat, overwrite=True, verbose=False, metadata=meta, **options)


def _read_bpz_states(filename: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    from .read import open as open_archive

    with open_archive(filename) as archive:
        tree, meta = archive.load(), archive.metadata
    if not isinstance(tree, Mapping) or not all(
        isinstance(k, str) and isinstance(v, (np.ndarray, np.generic)) for k, v in tree.items()
    ):
        raise FormatError(f"{filename}: not a states archive (a flat dict of arrays keyed '<node>.<attr>')")
    flat = {k: np.asarray(v) for k, v in tree.items()}
    info = meta.get(STATES_METADATA_KEY, {}) if isinstance(meta, Mapping) else {}
    keys, targets = info.get("duplicate_keys", []), info.get("duplicate_targets", [])
    if not (isinstance(keys, list) and isinstance(targets, list) and len(keys) == len(targets)
            and all(isinstance(k, str) for k in keys + targets)):
        raise FormatError(f"{filename}: malformed {STATES_METADATA_KEY!r} metadata")
    aliases = dict(zip(keys, targets))
    for alias, target in aliases.items():
        if target not in flat or alias in flat:
            raise FormatError(f"{filename}: alias {alias!r} -> {target!r} does not name a stored variable")
    return flat, aliases


_LEGACY_LIMITS_DOC = """\
    ``max_ratio`` / ``max_bytes`` raise (or lower) the expansion budget of a legacy file for this
    call: reading it may build at most ``min(max_bytes, max(256 MiB, max_ratio x its size))``
    bytes, else :class:`~bpz.errors.LimitExceededError` (a decompression bomb, or a file that
    repeats its data). Default: :func:`bpz.set_legacy_limits`, then the environment variables
    ``BPZ_LEGACY_MAX_RATIO`` / ``BPZ_LEGACY_MAX_BYTES``, then ratio 1100 (``.npz``, ``.h5``) or
    64 (the others) and the machine's memory. A ``.bpz`` file has its own limits."""


def _read_any_states(filename: str, like: Mapping[str, Any] | None, max_ratio: float | None = None,
                     max_bytes: int | None = None) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    if not os.path.exists(filename):
        raise CheckpointNotFoundError(f"Cannot find the file path: {filename}")
    from ._legacy import _common, states_files

    _common.checked_limits(max_ratio, max_bytes)  # a bad value is an error for .bpz files too
    if _states_format(filename) == "bpz":
        return _read_bpz_states(filename)
    return states_files.read_states(filename, like=like, max_ratio=max_ratio, max_bytes=max_bytes)


def read_states(filename: str | os.PathLike[str], *, like: Mapping[str, Any] | None = None,
                max_ratio: float | None = None, max_bytes: int | None = None) -> dict[str, np.ndarray]:
    """Every variable of a ``save_states`` file (any suffix, incl. ``.bpz``) by its flat key.

    Aliases map to the very array of the key they alias. ``like`` (``{key: anything with
    .shape/.dtype}``) undoes ``.mat``'s losses (0-d values, float16).

    {limits}
    """
    from ._legacy import states_files

    flat, aliases = _read_any_states(os.fspath(filename), like, max_ratio, max_bytes)
    return states_files.expand_aliases(flat, aliases)


def load_pickle(filename: str | os.PathLike[str], *, max_ratio: float | None = None,
                max_bytes: int | None = None) -> Any:
    """Loads a pickled state dict (e.g. ``pickle.dump(net.state_dict())``) without running code.

    Only plain containers and numpy arrays of bool/numeric/text dtypes are accepted.

    {limits}
    """
    from ._legacy import safe_pickle

    return safe_pickle.load_pickle(filename, max_ratio=max_ratio, max_bytes=max_bytes)


def load_states(obj: Any, filename: str | os.PathLike[str], verbose: bool = False, check_missing: bool = False,
                *, max_ratio: float | None = None, max_bytes: int | None = None) -> None:
    """Loads a ``save_states`` file into ``obj`` (a BrainPy object, a :class:`StateNode`, a dict).

    As BrainPy 2.1.12–2.4.5: a stored key the model lacks raises ``KeyError``; an alias must
    be the same variable as its target in the model (``ValueError``); ``verbose`` prints
    ``Loading {key} ...``; model variables absent from the file are reported (logger
    ``bpz.brainpy`` at WARNING, and a ``UserWarning``), or raised as
    :class:`StateMismatchError` with ``check_missing=True``. Unlike BrainPy, everything is
    checked before anything is assigned.

    {limits}
    """
    filename = os.fspath(filename)
    if not os.path.exists(filename):
        raise CheckpointNotFoundError(f"Cannot find the file path: {filename}")
    _states_format(filename)
    slots = _tree_slots(obj)
    flat, aliases = _read_any_states(filename, like=slots, max_ratio=max_ratio, max_bytes=max_bytes)
    target_name = _node_name(obj) if not isinstance(obj, Mapping) else "the target dict"
    unknown = [key for key in list(flat) + list(aliases) if key not in slots]
    if unknown:
        more = f" ({len(unknown) - 1} more: {unknown[1:]})" if len(unknown) > 1 else ""
        raise KeyError(_NOT_FOUND.format(key=unknown[0], filename=filename, target=target_name) + more)
    for alias, key in aliases.items():
        if slots[alias].ident != slots[key].ident:
            raise ValueError(_ID_MISMATCH.format(key1=alias, key2=key, filename=filename, target=target_name))
    problems = [p for key, value in flat.items() for p in [slots[key].mismatch(value)] if p]
    if problems:
        raise _mismatch_error(problems, obj)
    missing = [key for key in slots if key not in flat and key not in aliases]
    message = f"There are variable states missed in {filename}. The missed variables are: {missing}."
    if missing and check_missing:
        raise StateMismatchError(message)
    undo = [(slots[key], slots[key].snapshot()) for key in flat] if _is_brainpy(obj) else []
    try:
        for key, value in flat.items():
            if verbose:
                print(f"Loading {key} ...")
            slots[key].assign(value)
    except BaseException:  # not expected after the checks; keeps the promise regardless
        for slot, old in reversed(undo):
            slot.restore(old)
        raise
    if missing:
        logger.warning(message)
        warnings.warn(message, UserWarning, stacklevel=2)


for _f in (read_states, load_pickle, load_states):
    if _f.__doc__:  # None under python -OO
        _f.__doc__ = _f.__doc__.replace("{limits}", _LEGACY_LIMITS_DOC.strip())
del _f

# ------------------------------------------------------------------ the drop-in switch

#: File names BrainPy's and braintools' docs give their msgpack checkpoints. While installed they
#: hold bpz archives, which BrainPy without bpz cannot read, unless ``install(bp_format="brainpy")``.
BRAINPY_SUFFIXES = (".bp", ".msgpack", ".msg")
_BP_FORMATS = ("bpz", "brainpy")

_ORIGINALS: dict[tuple[str, str], Any] = {}  # (module name, attribute) -> what install() replaced
_MISSING = object()
_settings: dict[str, Any] = {"bp_format": None, "errors": {}}
_notice_lock = threading.Lock()
_notice_given = False

_BP_NAME_NOTICE = (
    "{name} is written as a bpz archive (bpz.brainpy.install() is in effect), which BrainPy without bpz "
    "cannot read. To keep BrainPy's own format for {suffixes} names: bpz.brainpy.install(bp_format='brainpy'); "
    "to convert this file: bpz convert --to bp {name} <new name>; install(bp_format='bpz') silences this notice."
)


def _bp_named(filename: str) -> bool:
    return os.path.splitext(filename)[1].lower() in BRAINPY_SUFFIXES


def _notice_bp_name(filename: str) -> None:
    """Warns once per process that a BrainPy-named file became a bpz archive."""
    global _notice_given
    with _notice_lock:
        if _notice_given:
            return
        _notice_given = True
    warnings.warn(_BP_NAME_NOTICE.format(name=filename, suffixes="/".join(BRAINPY_SUFFIXES)), UserWarning, stacklevel=4)


# --- exception classes BrainPy users catch

_DUAL_CLASSES: dict[tuple[type, ...], type] = {}


def _dual_class(bpz_class: type, *user_classes: type) -> type:
    """A subclass of all of them (built once, cached): ``except`` clauses written for any catch it."""
    key = (bpz_class, *user_classes)
    cls = _DUAL_CLASSES.get(key)
    if cls is None:
        def __reduce__(self: BaseException) -> tuple[Any, ...]:  # pickles as bpz's own class
            return (bpz_class, self.args)

        also = ", ".join(f"{c.__module__}.{c.__qualname__}" for c in user_classes)
        cls = type(bpz_class.__name__, (bpz_class, *user_classes), {
            "__module__": bpz_class.__module__,
            "__doc__": f"{bpz_class.__doc__ or bpz_class.__name__} (also {also}, as BrainPy raises there)",
            "__reduce__": __reduce__,
        })
        _DUAL_CLASSES[key] = cls
    return cls


def _user_error_classes() -> dict[str, tuple[type, ...]]:
    """The classes BrainPy's checkpoint functions raise: braintools.file's (BrainPy 2.7+, brainstate)
    and brainpy.errors' (2.3–2.6), whichever are installed."""
    found: dict[str, tuple[type, ...]] = {}
    for module in ("braintools.file", "brainpy.errors"):
        try:
            mod = importlib.import_module(module)
        except Exception:  # noqa: BLE001 - not installed, or broken: nothing to be compatible with
            continue
        for name in ("InvalidCheckpointPath", "AlreadyExistsError"):
            cls = getattr(mod, name, None)
            if isinstance(cls, type) and issubclass(cls, Exception) and cls not in found.get(name, ()):
                found[name] = (*found.get(name, ()), cls)
    return found


def _as_user_error(error: BaseException, loading: bool) -> BaseException | None:
    """``error`` re-made as an instance of its bpz class and of BrainPy's classes for that case, or None.

    Saving over an existing file with ``overwrite=False`` -> ``InvalidCheckpointPath``; the file
    appearing between that check and the rename -> ``AlreadyExistsError``; a file that is not a
    valid checkpoint on load -> ``InvalidCheckpointPath`` (braintools' "Corrupt or invalid
    checkpoint data").
    """
    classes = _settings["errors"]
    if isinstance(error, InvalidCheckpointPath):
        # write_archive raises it from the writer's FileExistsError: the race, not the first check
        race = isinstance(error.__context__, FileExistsError)
        users = classes.get("AlreadyExistsError" if race else "InvalidCheckpointPath", ())
    elif loading and isinstance(error, FormatError):
        users = classes.get("InvalidCheckpointPath", ())
    else:
        return None
    users = tuple(c for c in users if not isinstance(error, c))
    if not users:
        return None
    try:
        cls = _dual_class(type(error), *users)
    except TypeError:  # no consistent MRO or layout (an exotic user class): keep bpz's error
        return None
    new = cls(*error.args)
    new.__dict__.update(getattr(error, "__dict__", {}))
    return new.with_traceback(error.__traceback__)


@contextlib.contextmanager
def _user_errors(loading: bool) -> Iterator[None]:
    try:
        yield
    except BpzError as error:
        new = _as_user_error(error, loading)
        if new is None:
            raise
        raise new from error.__cause__


# --- BrainPy's own format for BrainPy-named files (install(bp_format="brainpy"))


def _brainpy_state_dict(x: Any, path: tuple[Any, ...] = ()) -> Any:
    """``x`` converted as BrainPy 2.9 / braintools' ``msgpack_to_state_dict`` does, for ``write_bp``.

    Variables / States -> their value, Quantities -> ``{mantissa, scale, base, dim, factor}``, typed
    PRNG keys -> ``{'__prng_key_impl__', 'key_data'}``, brainstate ``FlattedDict`` -> nested dict,
    jax arrays -> numpy copies (an async save must not see later updates). Containers and
    plain leaves are left to ``write_bp``, which refuses what the format cannot hold.
    """
    if len(path) > MAX_BP_DEPTH:
        raise ValueError(f"nesting deeper than {MAX_BP_DEPTH} at {_fmt_path(path)}")
    if isinstance(x, (str, bytes, bool, int, float, complex, type(None), np.generic)):
        return x
    if isinstance(x, np.ndarray):
        return np.array(x, copy=True)
    flatted = getattr(sys.modules.get("brainstate.util"), "FlattedDict", None)
    if flatted is not None and isinstance(x, flatted):
        x = x.to_nest()
    if isinstance(x, Mapping):
        return {k: _brainpy_state_dict(v, (*path, k)) for k, v in x.items()}
    if isinstance(x, tuple) and hasattr(x, "_fields"):
        return {f: _brainpy_state_dict(v, (*path, f)) for f, v in zip(x._fields, x)}
    if isinstance(x, (list, tuple)):
        return [_brainpy_state_dict(v, (*path, i)) for i, v in enumerate(x)]
    if _is_quantity(x):
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
    raise TypeError(f"can not serialize {type(x).__name__!r} object at {_fmt_path(path)}")


MAX_BP_DEPTH = 1000


def _fmt_path(path: tuple[Any, ...]) -> str:
    return "target" + "".join(f"[{p!r}]" for p in path)


def _is_quantity(x: Any) -> bool:
    for name in ("saiunit", "brainunit"):
        mod = sys.modules.get(name)
        cls = getattr(mod, "Quantity", None) if mod is not None else None
        if isinstance(cls, type) and isinstance(x, cls):
            return True
    return False


@contextlib.contextmanager
def _cannot_hold(filename: str) -> Iterator[None]:
    try:
        yield
    except (TypeError, ValueError, OverflowError) as e:
        raise type(e)(f"{filename}: install(bp_format='brainpy') writes BrainPy's msgpack format, which cannot "
                      f"hold this: {e}. Save it under another name (e.g. .bpz) to write a bpz archive.") from e


def _save_brainpy_format(filename: str, target: Any, overwrite: bool, async_manager: Any) -> None:
    """``target`` as BrainPy's msgpack file, by bpz's ``.bp`` writer and its atomic, durable write."""
    from . import _bpz
    from ._legacy._common import require
    from ._legacy.bp_msgpack import MAX_CHUNK_BYTES, _Writer
    from .write import AsyncManager, absolute_path

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


# --- mismatch='warn' | 'ignore' (braintools.file.msgpack_load)

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
    from .pytree import _is_flatted_dict, is_brainpy_variable

    where = _fmt_path(path)
    if _is_flatted_dict(target) and not (loaded and isinstance(loaded, Mapping) and all(isinstance(k, tuple) for k in loaded)):
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
        pairs = [_relax(t, l, mode, (*path, i), notes) for i, (t, l) in enumerate(zip(target, seq))]
        kept = [_Keep(t) for t in target[len(seq):]]
        t_items = [p[0] for p in pairs] + kept
        l_items = [p[1] for p in pairs] + kept
        return (type(target)(t_items) if type(target) in (list, tuple) else t_items), l_items
    if _is_quantity(target):
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
    from .pytree import restore_into
    from .read import load_pytree

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
    from .formats import sniff
    from .read import open as open_archive

    size = os.path.getsize(filename)
    if size <= max_size and sniff(filename) == "bpz":
        with open_archive(filename) as archive:
            size = max(size, sum(info.nbytes for info in archive.infos()))
    if size > max_size:
        raise LimitExceededError(f"Checkpoint data too large: {size} bytes exceeds maximum {max_size} bytes "
                                 f"({filename}; max_size={max_size})")


# --- the replacements


def _save(filename: Any, target: Any, overwrite: bool, async_manager: Any, verbose: bool) -> str:
    from .write import fspath_str, save_pytree

    filename = fspath_str(filename)
    if _bp_named(filename):
        if _settings["bp_format"] == "brainpy":
            if verbose:
                print(f"Saving checkpoint into {filename}")
            with _user_errors(loading=False):
                _save_brainpy_format(filename, target, overwrite, async_manager)
            return filename
        if _settings["bp_format"] is None:
            _notice_bp_name(filename)
    with _user_errors(loading=False):
        return save_pytree(filename, target, overwrite=overwrite, async_manager=async_manager, verbose=verbose)


def _bp_save_pytree(
    filename: str | os.PathLike[str],
    target: Any,
    overwrite: bool = True,
    async_manager: Any = None,
    verbose: bool = True,
) -> str:
    """``brainpy.checkpoints.save_pytree``, writing a bpz archive (see :func:`bpz.save_pytree`)."""
    return _save(filename, target, overwrite, async_manager, verbose)


def _bp_load_pytree(filename: str | os.PathLike[str], target: Any = None, parallel: bool = True) -> Any:
    """``brainpy.checkpoints.load_pytree``, reading bpz archives and BrainPy ``.bp`` files (see :func:`bpz.load_pytree`)."""
    with _user_errors(loading=True):
        return _load(filename, target, parallel)


def _bt_msgpack_save(
    filename: str | os.PathLike[str],
    target: Any,
    overwrite: bool = True,
    async_manager: Any = None,
    verbose: bool = False,
) -> str:
    """``braintools.file.msgpack_save``, writing a bpz archive (see :func:`bpz.save_pytree`)."""
    return _save(filename, target, overwrite, async_manager, verbose)


def _bt_msgpack_load(
    filename: str | os.PathLike[str],
    target: Any = None,
    parallel: bool = True,
    mismatch: str = "error",
    max_size: int | None = None,
    verbose: bool = False,
) -> Any:
    """``braintools.file.msgpack_load``, reading bpz archives and msgpack checkpoints (see :func:`bpz.load_pytree`).

    ``mismatch='warn'|'ignore'``: a target dict key absent from the file, or a list item beyond
    its length, keeps the target's value; an array of another shape or a Quantity of another
    unit is taken from the file (with a ``UserWarning`` under 'warn'). ``max_size``: refuse a
    checkpoint larger than this many bytes (decoded) before decoding it.
    """
    from .write import fspath_str

    _check_load_options(mismatch, max_size)
    filename = fspath_str(filename)
    if not os.path.exists(filename):
        raise CheckpointNotFoundError(f"Checkpoint not found: {filename}")
    if verbose:
        print(f"Loading checkpoint from {filename}")
    _check_max_size(filename, max_size)
    with _user_errors(loading=True):
        return _load(filename, target, parallel, mismatch)


for _f, _name in ((_bp_save_pytree, "save_pytree"), (_bp_load_pytree, "load_pytree"),
                  (_bt_msgpack_save, "msgpack_save"), (_bt_msgpack_load, "msgpack_load")):
    _f.__name__ = _f.__qualname__ = _name
del _f, _name

#: Module -> {attribute: replacement kind}. brainpy.checkpoints (2.3–2.9) forwards to
#: braintools.file at call time in 2.7+; braintools.file is what brainstate users call directly.
_PATCH_POINTS = {
    "brainpy.checkpoints": {"save_pytree": "bp_save", "load_pytree": "bp_load", "AsyncManager": "manager"},
    "braintools.file": {"msgpack_save": "bt_save", "msgpack_load": "bt_load", "AsyncManager": "manager"},
    "braintools.file._msg_checkpoint": {"msgpack_save": "bt_save", "msgpack_load": "bt_load", "AsyncManager": "manager"},
}


def _replacements() -> dict[str, Any]:
    from .write import AsyncManager

    return {"bp_save": _bp_save_pytree, "bp_load": _bp_load_pytree, "bt_save": _bt_msgpack_save,
            "bt_load": _bt_msgpack_load, "manager": AsyncManager}


def install(bp_format: str | None = None) -> None:
    """Makes BrainPy's checkpoint functions use bpz: ``brainpy.checkpoints.save_pytree`` /
    ``load_pytree`` / ``AsyncManager`` and, when braintools is installed (BrainPy 2.7+),
    ``braintools.file.msgpack_save`` / ``msgpack_load`` / ``AsyncManager``.

    Saves then write bpz archives; loads read them and BrainPy's msgpack files alike. While
    installed, errors are also instances of the classes BrainPy code catches (braintools'
    ``InvalidCheckpointPath`` / ``AlreadyExistsError`` on 2.7+, ``brainpy.errors``' on 2.3–2.6).

    ``bp_format`` decides what a file named ``.bp`` / ``.msgpack`` / ``.msg`` (BrainPy's names)
    becomes: ``"bpz"`` a bpz archive (which BrainPy without bpz cannot read); ``"brainpy"``
    BrainPy's own msgpack format, for sharing with BrainPy users (written by bpz's atomic
    writer; it holds what BrainPy's format holds: arrays, numbers, strings, containers,
    Variables/States, Quantities, PRNG keys); ``None`` (default): a bpz archive, with a one-time
    ``UserWarning`` at the first such save. Other names are always bpz archives.

    Idempotent (a second call only changes ``bp_format``); :func:`uninstall` (or the
    :func:`installed` context manager) puts the originals back. Code that imported the
    functions by name before (``from brainpy.checkpoints import save_pytree``) keeps BrainPy's.
    """
    if bp_format is not None and bp_format not in _BP_FORMATS:
        raise ValueError(f"bp_format must be 'bpz', 'brainpy' or None, not {bp_format!r}")
    if not _ORIGINALS:
        modules = {}
        for name in _PATCH_POINTS:
            try:
                modules[name] = importlib.import_module(name)
            except ImportError:
                continue
        if not modules:
            raise ImportError("bpz.brainpy.install() needs BrainPy (brainpy.checkpoints) or braintools "
                              "(braintools.file); neither can be imported")
        replacements = _replacements()
        _settings["errors"] = _user_error_classes()
        for name, module in modules.items():
            for attr, kind in _PATCH_POINTS[name].items():
                _ORIGINALS[(name, attr)] = module.__dict__.get(attr, _MISSING)
                setattr(module, attr, replacements[kind])
    _settings["bp_format"] = bp_format


def uninstall() -> None:
    """Puts BrainPy's own functions back (a no-op when not installed)."""
    if not _ORIGINALS:
        return
    replacements = set(map(id, _replacements().values()))
    for (name, attr), original in list(_ORIGINALS.items()):
        module = sys.modules.get(name)
        if module is not None and id(module.__dict__.get(attr)) in replacements:
            if original is _MISSING:
                delattr(module, attr)
            else:
                setattr(module, attr, original)
    _ORIGINALS.clear()
    _settings["bp_format"] = None
    _settings["errors"] = {}


def is_installed() -> bool:
    """Whether :func:`install` is in effect."""
    return bool(_ORIGINALS)


@contextlib.contextmanager
def installed(bp_format: str | None = None) -> Iterator[None]:
    """``with bpz.brainpy.installed(): ...`` — bpz inside the block, the previous state after."""
    was, previous = is_installed(), _settings["bp_format"]
    install(bp_format)
    try:
        yield
    finally:
        if not was:
            uninstall()
        else:
            _settings["bp_format"] = previous
