"""The models bpz.brainpy works on: BrainPy objects, :class:`StateNode` trees and objects with
the two hooks, seen through one adapter (nodes, their variables as assignable slots), and the
error for values that do not fit them. Shared by the state-dict and the states-file APIs."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping, MutableMapping
from typing import TYPE_CHECKING, Any, TypeVar, cast

import numpy as np

from ..errors import BpzError
from ..pytree import is_jax_array

if TYPE_CHECKING:
    from .state_dicts import StateLoadResult

logger = logging.getLogger("bpz.brainpy")


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
    # (imported when called: those modules build on this one)
    def state_dict(self, **kwargs: Any) -> dict[str, dict[str, Any]]:
        from .state_dicts import state_dict

        return state_dict(self, **kwargs)

    def load_state_dict(self, state_dict: Mapping[str, Any], warn: bool = True, compatible: str = "v2",
                        **kwargs: Any) -> StateLoadResult:
        from .state_dicts import load_state_dict

        return load_state_dict(self, state_dict, warn=warn, compatible=compatible, **kwargs)

    def save_states(self, filename: str | os.PathLike[str], variables: Mapping[str, Any] | None = None,
                    **setting: Any) -> None:
        from .states_files import save_states

        save_states(self, filename, variables, **setting)

    def load_states(self, filename: str | os.PathLike[str], verbose: bool = False, check_missing: bool = False,
                    *, max_ratio: float | None = None, max_bytes: int | None = None) -> None:
        from .states_files import load_states

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
    if cls.__load_state__ is not getattr(base, "__load_state__", None):
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
        unique_slots: dict[str, _Slot] = {}
        for key, slot in slots.items():
            if slot.ident not in seen:
                seen.add(slot.ident)
                unique_slots[key] = slot
        slots = unique_slots
    return slots


# ------------------------------------------------------------------ checking and running a load



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



# --- exception classes BrainPy users catch

_E = TypeVar("_E", bound=BaseException)
_DUAL_CLASSES: dict[tuple[type, ...], type] = {}


def _dual_class(bpz_class: type[_E], *user_classes: type) -> type[_E]:
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
    return cast("type[_E]", cls)  # a subclass of bpz_class by construction
