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
* With :func:`install`, ``brainpy.checkpoints.save_pytree`` writes bpz archives (under the
  exact name given) and ``load_pytree`` reads both those and ``.bp`` files; arrays come back
  writable, in the saved structure, jax arrays as jax arrays.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import sys
import warnings
from collections.abc import Iterator, Mapping, MutableMapping
from typing import Any, Callable

import numpy as np

from .errors import BpzError, CheckpointNotFoundError, FormatError

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


def _is_jax_array(x: Any) -> bool:
    jax = sys.modules.get("jax")
    return jax is not None and isinstance(x, jax.Array)


def _canonical(dtype: np.dtype) -> np.dtype:
    """The dtype a jax array made from ``dtype`` gets (float64 -> float32 with x64 off)."""
    import jax

    return np.dtype(jax.dtypes.canonicalize_dtype(dtype))


# ------------------------------------------------------------------ values and slots


def _value_of(x: Any) -> Any:
    """Unwraps Variables / States / ``bm.Array`` (anything with ``.value`` but not an array)."""
    if isinstance(x, (np.ndarray, np.generic)) or _is_jax_array(x):
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
    if isinstance(x, (np.generic, str, bytes, Mapping) + _PY_SCALARS) or _is_jax_array(x):
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
        if _is_jax_array(_value_of(self.current())):
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
        elif _is_jax_array(cur):
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
        elif hasattr(obj, "value") and not isinstance(obj, (np.ndarray, np.generic)) and not _is_jax_array(obj):
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


def _mismatch_error(problems: list[str]) -> StateMismatchError:
    lines = "\n  ".join(sorted(problems))
    n = len(problems)
    return StateMismatchError(
        f"{n} value{'s' if n != 1 else ''} in the state dict do{'es' if n == 1 else ''} not fit the "
        f"model, so nothing was loaded:\n  {lines}"
    )


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
            raise _mismatch_error(self.problems)
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
        raise _mismatch_error(problems)
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

_ORIGINALS: dict[str, Any] = {}
_MISSING = object()


def _bp_save_pytree(
    filename: str | os.PathLike[str],
    target: Any,
    overwrite: bool = True,
    async_manager: Any = None,
    verbose: bool = True,
) -> str:
    """``brainpy.checkpoints.save_pytree``, writing a bpz archive (see :func:`bpz.save_pytree`)."""
    from .write import save_pytree

    return save_pytree(filename, target, overwrite=overwrite, async_manager=async_manager, verbose=verbose)


def _bp_load_pytree(filename: str | os.PathLike[str], target: Any = None, parallel: bool = True) -> Any:
    """``brainpy.checkpoints.load_pytree``, reading bpz archives and BrainPy ``.bp`` files (see :func:`bpz.load_pytree`)."""
    from .read import load_pytree

    return load_pytree(filename, target=target, parallel=parallel)


_bp_save_pytree.__name__ = _bp_save_pytree.__qualname__ = "save_pytree"
_bp_load_pytree.__name__ = _bp_load_pytree.__qualname__ = "load_pytree"


def _replacements() -> dict[str, Any]:
    from .write import AsyncManager

    return {"save_pytree": _bp_save_pytree, "load_pytree": _bp_load_pytree, "AsyncManager": AsyncManager}


def install() -> None:
    """Makes ``brainpy.checkpoints.save_pytree`` / ``load_pytree`` / ``AsyncManager`` use bpz.

    Saves then write bpz archives; loads read them and old ``.bp`` files alike. Idempotent;
    :func:`uninstall` (or the :func:`installed` context manager) puts BrainPy's back. Code
    that imported the functions by name before (``from brainpy.checkpoints import
    save_pytree``) keeps BrainPy's.
    """
    import brainpy.checkpoints as checkpoints

    if _ORIGINALS:
        return
    for name, replacement in _replacements().items():
        _ORIGINALS[name] = checkpoints.__dict__.get(name, _MISSING)
        setattr(checkpoints, name, replacement)


def uninstall() -> None:
    """Puts BrainPy's own functions back (a no-op when not installed)."""
    if not _ORIGINALS:
        return
    checkpoints = sys.modules.get("brainpy.checkpoints")
    replacements = _replacements()
    for name, original in list(_ORIGINALS.items()):
        if checkpoints is not None and checkpoints.__dict__.get(name) is replacements[name]:
            if original is _MISSING:
                delattr(checkpoints, name)
            else:
                setattr(checkpoints, name, original)
    _ORIGINALS.clear()


def is_installed() -> bool:
    """Whether :func:`install` is in effect."""
    return bool(_ORIGINALS)


@contextlib.contextmanager
def installed() -> Iterator[None]:
    """``with bpz.brainpy.installed(): ...`` — bpz inside the block, the previous state after."""
    was = is_installed()
    install()
    try:
        yield
    finally:
        if not was:
            uninstall()
