"""Pytrees to named tensors and a JSON tree (spec/FORMAT.md §8–9), and back.

A pytree is any nesting of dict / OrderedDict / list / tuple / namedtuple with
arrays and Python scalars as leaves. Arrays become tensors named by their key
path (``net/l1/W``); everything else is stored inline in the tree, so the exact
structure — int keys, tuples, namedtuples — survives a round trip.
"""

from __future__ import annotations

import base64
import binascii
import collections
import contextlib
import gc
import importlib
import json
import math
import os
import re
import reprlib
import sys
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, TypeGuard

import numpy as np

from . import dtypes
from .errors import FormatError, LimitExceededError

__all__ = [
    "Leaf", "flatten", "unflatten", "restore_into", "accept_loaded", "canonical_dtype", "is_brainpy_variable",
    "is_quantity", "is_typed_key", "is_jax_array", "format_path", "parse_json", "MAX_TREE_VALUES",
]

MAX_SAFE_INT = 2**53 - 1
#: Containers nested deeper than this can't be stored (the index's JSON nesting limit).
MAX_TREE_DEPTH = 40
#: The index's JSON nesting limit (spec/FORMAT.md §11): a tuple key may nest only as deep as fits.
MAX_JSON_DEPTH = 128
#: Objects whose ``.value`` is another such object are unwrapped at most this many times.
MAX_VALUE_UNWRAP = 32


def _limit_from_env(name: str, default: int) -> int:
    text = os.environ.get(name)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise ValueError(f"the environment variable {name}={text!r} is not a positive integer")
    return value


#: Most JSON values a pytree may have in an archive's index (each dict entry
#: with an array costs 4: the pair, its key, the tensor node and its name).
#: Loading builds Python objects for each (~100–150 bytes apiece), so a small
#: hostile file could otherwise ask for gigabytes; saving refuses trees over it
#: so that every archive bpz writes loads with the default. Raise it by
#: assigning ``bpz.pytree.MAX_TREE_VALUES`` or with the environment variable
#: ``BPZ_MAX_TREE_VALUES``; it also bounds the metadata.
MAX_TREE_VALUES = _limit_from_env("BPZ_MAX_TREE_VALUES", 1 << 23)


@dataclass(slots=True)
class Leaf:
    """One tensor of a flattened pytree: ``array`` holds its little-endian bytes
    in C order (an ndarray, or a NumPy scalar for a 0-d tensor)."""

    name: str
    array: Any
    dtype: str
    node: dict[str, Any] = field(repr=False, default_factory=dict)


_key_repr = reprlib.Repr()
_key_repr.maxlevel = 6  # a 3,000-deep tuple key must not blow the stack in an error message
_key_repr.maxstring = _key_repr.maxother = 200
_key_repr.maxtuple = _key_repr.maxlist = _key_repr.maxdict = 16


def format_path(path: tuple[Any, ...]) -> str:
    """A key path as Python would index it: ``target['net'][0]``."""
    return "target" + "".join(f"[{_key_repr.repr(k)}]" for k in path)


def _type_name(obj: Any) -> str:
    t = type(obj)
    return t.__qualname__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__qualname__}"


def _segment(key: Any) -> str:
    if isinstance(key, str):
        return key
    if isinstance(key, bytes):
        return key.hex()
    if isinstance(key, tuple):
        return ",".join(_segment(k) for k in key)
    return str(key)


def _float_payload(x: float) -> float | str:
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return x


def _float_value(v: Any) -> float:
    if isinstance(v, str):
        if v not in ("nan", "inf", "-inf"):
            raise FormatError(f"invalid float payload {v!r} in the archive's tree")
        return float(v)
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        raise FormatError(f"invalid float payload {v!r} in the archive's tree")
    return float(v)


def _int_payload(x: int) -> int | str:
    return x if -MAX_SAFE_INT <= x <= MAX_SAFE_INT else str(x)


def _jax_module() -> Any:
    return sys.modules.get("jax")


def is_jax_array(obj: Any) -> bool:
    """Whether ``obj`` is a ``jax.Array``, without importing jax (nothing is one if it isn't loaded)."""
    jax = _jax_module()
    return jax is not None and isinstance(obj, jax.Array)


def is_typed_key(obj: Any) -> bool:
    """Whether ``obj`` is a typed JAX PRNG key array (dtype ``key<impl>``, from ``jax.random.key``).

    Key dtypes are jax's extended dtypes, which are not NumPy dtypes; that test works on every
    jax (``jax.dtypes.prng_key`` exists only from 0.4.14)."""
    jax = _jax_module()
    if jax is None or not isinstance(obj, jax.Array) or isinstance(obj.dtype, np.dtype):
        return False
    prng_key = getattr(jax.dtypes, "prng_key", None)
    return prng_key is None or bool(jax.dtypes.issubdtype(obj.dtype, prng_key))


def _jax_random_api(name: str, min_version: str, what: str) -> Any:
    """``jax.random.<name>``, or an ImportError naming the jax version that has it."""
    import jax

    fn = getattr(jax.random, name, None)
    if fn is None:
        raise ImportError(f"{what} needs jax >= {min_version} (jax.random.{name}); this is jax {jax.__version__}")
    return fn


def wrap_key(data: Any, impl: str) -> Any:
    """A typed PRNG key array from its key data (uint32) and implementation name."""
    wrap = _jax_random_api("wrap_key_data", "0.4.17", "loading a typed JAX PRNG key")
    return wrap(data, impl=impl)


def canonical_dtype(dtype: Any) -> np.dtype:
    """The dtype a jax array made from ``dtype`` gets (float64 -> float32, int64 -> int32 with x64 off)."""
    import jax

    return np.dtype(jax.dtypes.canonicalize_dtype(dtype))


def is_brainpy_variable(obj: Any) -> bool:
    """Whether ``obj`` is a BrainPy ``bm.Variable`` (BrainPy is never imported to answer)."""
    bm = sys.modules.get("brainpy.math")
    variable = getattr(bm, "Variable", None) if bm is not None else None
    return isinstance(variable, type) and isinstance(obj, variable)


# brainunit 0.5-0.6 is a shim over saiunit (the same Quantity class); older brainunit had its own.
_UNIT_MODULES = ("saiunit", "brainunit")


def _quantity_types() -> tuple[type, ...]:
    types: tuple[type, ...] = ()
    for module_name in _UNIT_MODULES:
        module = sys.modules.get(module_name)
        quantity = getattr(module, "Quantity", None) if module is not None else None
        if isinstance(quantity, type) and quantity not in types:
            types += (quantity,)
    return types


def is_quantity(obj: Any) -> bool:
    """Whether ``obj`` is a brainunit (saiunit) ``Quantity``; the unit library is never imported to answer."""
    types = _quantity_types()
    return bool(types) and isinstance(obj, types)


def _is_flatted_dict(obj: Any) -> TypeGuard[Any]:
    """Whether ``obj`` is brainstate's ``FlattedDict`` (tuple-path keys, from ``module.states()``)."""
    brainstate = sys.modules.get("brainstate")
    util = getattr(brainstate, "util", None) if brainstate is not None else None
    flatted = getattr(util, "FlattedDict", None) if util is not None else None
    return isinstance(flatted, type) and isinstance(obj, flatted)


def _json_number(x: Any, what: str) -> int | float:
    if isinstance(x, (bool, np.bool_)):
        raise TypeError(f"{what} is a bool")
    if isinstance(x, (int, np.integer)):
        return int(x)
    x = float(x)
    if not math.isfinite(x):
        raise TypeError(f"{what} is {x}")
    return int(x) if x.is_integer() and abs(x) <= MAX_SAFE_INT else x


def _unit_hint(unit: Any, where: str) -> dict[str, Any]:
    """The JSON form of a brainunit ``Unit``: SI exponents, scale, base, factor and its names."""
    try:
        dims = [_json_number(d, "an SI exponent") for d in np.asarray(unit.dim._dims).tolist()]
        hint: dict[str, Any] = {
            "dim": dims,
            "scale": _json_number(unit.scale, "the scale"),
            "base": float(_json_number(unit.base, "the base")),
            "factor": float(_json_number(unit.factor, "the factor")),
        }
    except (AttributeError, TypeError, ValueError) as e:
        raise TypeError(f"bpz cannot save the Quantity at {where}: its unit {unit!r} is not one bpz can "
                        f"describe ({e})") from None
    for attr in ("name", "dispname"):
        text = getattr(unit, attr, None)
        if isinstance(text, str):
            hint[attr] = text
    return hint


def _count_json_values(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + sum(_count_json_values(v) for v in value.values())
    if isinstance(value, list):
        return 1 + sum(_count_json_values(v) for v in value)
    return 1


def _unit_module() -> Any:
    """brainunit (or saiunit), imported when the first Quantity is met; None if neither is installed."""
    for module_name in ("brainunit", "saiunit"):
        module = sys.modules.get(module_name)
        if module is not None:
            return module
    for module_name in ("brainunit", "saiunit"):
        try:
            return importlib.import_module(module_name)
        except ImportError:
            continue
    return None


_units: dict[tuple[Any, ...], Any] = {}


def _make_unit(units: Any, dims: Any, scale: Any, base: Any, factor: Any, name: Any = None,
               dispname: Any = None) -> Any:
    """A ``Unit`` from its parts (cached: a model has few units and many Quantities)."""
    dims = [float(d) if isinstance(d, float) else int(d) for d in np.asarray(dims).tolist()]
    if len(dims) != 7:
        raise ValueError(f"a unit needs 7 SI exponents, got {len(dims)}")
    key = (tuple(dims), scale, base, factor, name, dispname)
    unit = _units.get(key)
    if unit is None:
        names = {"name": name, "dispname": dispname} if isinstance(name, str) and isinstance(dispname, str) else {}
        unit = units.Unit(dim=units.Dimension(dims), scale=scale, base=base, factor=factor, **names)
        if len(_units) < 4096:
            _units[key] = unit
    return unit


def _unit_text(hint: Mapping[str, Any]) -> str:
    name = hint.get("dispname") or hint.get("name")
    if isinstance(name, str):
        return name
    return f"dim={hint.get('dim')}, scale={hint.get('scale')}, base={hint.get('base')}, factor={hint.get('factor')}"


_SCALAR_MANTISSA = {"float": float, "int": int, "complex": complex, "bool": bool}


def quantity_from_node(mantissa: np.ndarray, node: Mapping[str, Any]) -> Any:
    """The value of a ``"py": "quantity"`` tensor node: a ``Quantity`` with the saved unit, or,
    without brainunit installed, the mantissa (and a UserWarning naming the unit)."""
    hint = node["unit"]
    if not isinstance(hint, dict):
        raise FormatError(f"the tensor {node['tensor']!r} has a unit that is not a JSON object")
    scalar = node.get("scalar")
    value: Any = mantissa
    if scalar == "numpy":
        value = mantissa[()]
    elif scalar is not None:
        kind = _SCALAR_MANTISSA.get(scalar)
        try:
            if kind is None or mantissa.shape != ():
                raise ValueError("not a 0-d tensor of a Python number")
            value = kind(mantissa.item())
        except (ValueError, TypeError, OverflowError) as e:
            raise FormatError(f"the tensor {node['tensor']!r} has an invalid scalar hint "
                              f"{_key_repr.repr(scalar)}: {e}") from None
    units = _unit_module()
    if units is None:
        # Named by unit, not tensor, so a model's many Quantities give one warning per unit.
        warnings.warn(
            f"bpz: the file holds Quantities in {_unit_text(hint)}, but brainunit is not installed: "
            "they load as their mantissas, without the unit (pip install brainunit)",
            UserWarning,
            stacklevel=2,
        )
        return value
    try:
        scale, base, factor = hint["scale"], hint["base"], hint["factor"]
        for part in (scale, base, factor):
            _json_number(part, "a unit part")
        unit = _make_unit(units, hint["dim"], scale, base, factor, hint.get("name"), hint.get("dispname"))
    except FormatError:
        raise
    except Exception as e:  # noqa: BLE001 - whatever the unit library says about a damaged unit
        raise FormatError(f"the tensor {node['tensor']!r} has an invalid unit {_key_repr.repr(hint)}: {e}") from None
    return units.Quantity(value, unit=unit)


def leaf_value(arr: np.ndarray, node: Mapping[str, Any]) -> Any:
    """What a loaded tensor stands for in the tree, by its node's ``py`` hint: the array itself
    (also for arrays saved from jax, as BrainPy loads them), a NumPy scalar, a typed PRNG key or a
    Quantity. Every reader of a stored tree (``bpz.open``, safetensors with a bpz tree) uses it."""
    kind = node.get("py")
    if kind == "numpy_scalar":
        return arr[()]
    if kind == "jax_key":
        return wrap_key(arr, node.get("impl", "threefry2x32"))
    if kind == "quantity":
        return quantity_from_node(arr, node)
    return arr

def _escape_segment(segment: str) -> str:
    """A key as one segment of a tensor name: ``~`` and ``/`` escaped; NUL,
    which names can't hold (C strings), replaced (the tree keeps the exact key)."""
    if "~" in segment or "/" in segment or "\0" in segment:
        return segment.replace("~", "~0").replace("/", "~1").replace("\0", "\ufffd")
    return segment


_NO_KEY: Any = object()
_NO_HINT: dict[str, Any] = {}
_SCALAR_HINT = {"py": "numpy_scalar"}


def _numpy_scalar_types() -> dict[type, str]:
    """NumPy's own scalar types whose buffer is already a tensor's bytes (a
    supported dtype, little-endian): they are stored without a 0-d array."""
    if sys.byteorder != "little":
        return {}
    out = {}
    for t in set(np.sctypeDict.values()):
        if isinstance(t, type) and issubclass(t, np.generic):
            name, swap = dtypes.storage(np.dtype(t))
            if name is not None and not swap:
                out[t] = name
    return out


_SCALAR_TYPES = _numpy_scalar_types()

#: ndarray subclasses that are plain data in another place (a file): saved as arrays.
_PLAIN_SUBCLASSES: tuple[type, ...] = (np.memmap,)


def _unsupported_dtype_advice(dtype: np.dtype) -> str:
    if dtype.fields is not None:
        return "a structured array: save each field as its own array ({name: x[name] for name in x.dtype.names})"
    if dtype.kind in "Mm":
        return "store x.astype('int64') and its unit (np.datetime_data(x.dtype)) instead"
    if dtype.kind == "O":
        return "an object array holds Python objects, not numbers: convert it to a numeric dtype or save a list"
    if dtype.kind in "USV":
        return "save strings as a list of str or bytes"
    return "cast it to a supported dtype"


def _state_of(arr: np.ndarray) -> list[str]:
    """The attributes an ndarray subclass instance carries beyond its data."""
    names = list(getattr(arr, "__dict__", None) or ())
    for cls in type(arr).__mro__:
        if cls is np.ndarray:
            break
        slots = cls.__dict__.get("__slots__", ())
        for slot in (slots,) if isinstance(slots, str) else slots:
            if slot not in ("__dict__", "__weakref__") and hasattr(arr, slot):
                names.append(slot)
    return names


def _as_plain_array(arr: np.ndarray, path: tuple[Any, ...]) -> np.ndarray:
    """``arr`` as a base ndarray, refusing subclasses whose meaning the format
    can't hold: a masked array's mask, a matrix's algebra, a unit or any other
    attribute would be silently lost on load."""
    kind = type(arr)
    if kind is np.ndarray:
        return arr
    where = format_path(path)
    ma = sys.modules.get("numpy.ma")
    if ma is not None and isinstance(arr, ma.MaskedArray):
        raise TypeError(
            f"bpz cannot save the masked array at {where}: the format has no mask, so the hidden values would "
            "come back as data. Save its data and mask as two arrays (x.data and np.ma.getmaskarray(x)), "
            "or fill the hidden values first (np.ma.filled(x, fill_value))"
        )
    if isinstance(arr, np.matrix):
        raise TypeError(
            f"bpz cannot save the numpy.matrix at {where}: it would load as an ndarray, on which * is not "
            "a matrix product. Save np.asarray(x)"
        )
    if isinstance(arr, _PLAIN_SUBCLASSES):
        return arr.view(np.ndarray)
    state = _state_of(arr)
    if state:
        raise TypeError(
            f"bpz cannot save the {_type_name(arr)} at {where}: this ndarray subclass carries attributes "
            f"({', '.join(sorted(state)[:8])}) the format cannot store, and it would load as a plain ndarray. "
            "Save np.asarray(x) (and the attributes as separate leaves) if the data alone is what you need"
        )
    return arr.view(np.ndarray)


class _Flattener:
    """Walks a pytree once. Each node gets its tensor name (its escaped key
    path) as a string; the key path itself, a tuple, is built only where
    error messages need it (arrays and scalars in containers, the most common
    leaves, take the fast path without it).

    ``values`` counts the JSON values the tree will have in the index (see
    :data:`MAX_TREE_VALUES`): a node's first two (its object and its payload)
    are counted by its parent, the rest by whoever makes them."""

    def __init__(self, copy: bool, max_values: int) -> None:
        self.copy = copy
        self.max_values = max_values
        self.values = 2  # the root node's
        self.leaves: list[Leaf] = []
        self.names: set[str] = set()
        self.active: set[int] = set()

    def name_for(self, base: str) -> str:
        names = self.names
        name = base
        if name in names:
            n = 2
            name = f"{base}~{n}"  # "~" + digit never results from escaping
            while name in names:
                n += 1
                name = f"{base}~{n}"
        names.add(name)
        return name

    def key(self, k: Any, path: tuple[Any, ...], level: int) -> Any:
        """The JSON form of the dict key ``k``, at JSON nesting ``level`` if it
        is an object; counts its values beyond the one its pair counted."""
        if isinstance(k, str):
            return str(k)
        if isinstance(k, (int, np.integer)) and not isinstance(k, bool):
            k = int(k)
            if -MAX_SAFE_INT <= k <= MAX_SAFE_INT:
                return k
        if level + isinstance(k, tuple) > MAX_JSON_DEPTH:
            # Every nested tuple adds two levels: a deep enough one would blow the
            # stack here and the index's depth limit at the end of the save.
            raise ValueError(
                f"bpz cannot save a dict key at {format_path(path)}: it is a tuple nested too deeply "
                f"(the index's JSON nesting limit is {MAX_JSON_DEPTH} levels, and the containers above the key "
                "use some); use a flatter key"
            )
        self.values += 1
        if isinstance(k, (bool, np.bool_)):
            return {"bool": bool(k)}
        if isinstance(k, int):
            return {"int": str(k)}
        if isinstance(k, (float, np.floating)):
            return {"float": _float_payload(float(k))}
        if k is None:
            return {"none": None}
        if isinstance(k, bytes):
            return {"bytes": base64.b64encode(k).decode("ascii")}
        if isinstance(k, tuple):
            self.values += len(k)
            return {"tuple": [self.key(x, path, level + 2) for x in k]}
        self.values -= 1
        raise TypeError(
            f"bpz cannot save the dict key {_key_repr.repr(k)} of type {_type_name(k)} at {format_path(path)}: "
            "keys must be str, int, float, bool, None, bytes or tuples of these"
        )

    def array(self, arr: np.ndarray, name: str, hint: dict[str, Any], path: tuple[Any, ...],
              key: Any = _NO_KEY) -> dict[str, Any]:
        """A tensor leaf named ``name`` (unique-ified); ``path`` (+ ``key``) is its key path."""
        dtype, swap = dtypes.storage(arr.dtype)
        if dtype is None:
            if key is not _NO_KEY:
                path = (*path, key)
            raise TypeError(
                f"bpz cannot save the array at {format_path(path)}: dtype {arr.dtype} is not supported "
                f"(supported: bool, (u)int8-64, float16/32/64, bfloat16, float8 variants, complex64/128); "
                + _unsupported_dtype_advice(arr.dtype)
            )
        if swap:
            arr = arr.astype(arr.dtype.newbyteorder("<"), order="C")  # (the default keeps Fortran order)
        elif self.copy:
            arr = np.array(arr, order="C", copy=True)
        elif not arr.flags.c_contiguous:
            arr = np.asarray(arr, order="C")
        names = self.names
        if name in names:
            name = self.name_for(name)
        else:
            names.add(name)
        if hint:
            node = {"tensor": name, **hint}
            self.values += len(hint)
        else:
            node = {"tensor": name}
        self.leaves.append(Leaf(name, arr, dtype, node))
        return node

    def child(self, v: Any, name: str, path: tuple[Any, ...], k: Any, depth: int) -> Any:
        """The node of ``v``, the child ``k`` of the container at ``path``. The
        commonest leaves are handled here by exact type, without a key path."""
        kind = type(v)
        if kind is np.ndarray:
            # A little-endian C-contiguous array of a supported dtype under a new
            # name (else array() decides).
            dtype = dtypes.PLAIN.get(v.dtype)
            names = self.names
            if dtype is None or self.copy or name in names or not v.flags.c_contiguous:
                return self.array(v, name, _NO_HINT, path, k)
            names.add(name)
            node = {"tensor": name}
            self.leaves.append(Leaf(name, v, dtype, node))
            return node
        dtype = _SCALAR_TYPES.get(kind)
        if dtype is not None:
            # A NumPy scalar is immutable, and its buffer is the 0-d tensor's bytes.
            names = self.names
            if name in names:
                name = self.name_for(name)
            else:
                names.add(name)
            node = {"tensor": name, "py": "numpy_scalar"}
            self.values += 1
            self.leaves.append(Leaf(name, v, dtype, node))
            return node
        if kind is float:
            return {"float": v if v - v == 0 else _float_payload(v)}  # (v - v is nan for nan and ±inf)
        if kind is str:
            return {"str": v}
        if kind is int:
            return {"int": v if -MAX_SAFE_INT <= v <= MAX_SAFE_INT else str(v)}
        if kind is bool:
            return {"bool": v}
        if v is None:
            return {"none": None}
        if kind is dict or kind is list or kind is tuple:
            return self.container(v, (*path, k), name, depth)
        return self.node(v, (*path, k), name, depth)

    def node(self, obj: Any, path: tuple[Any, ...], name: str, depth: int) -> Any:
        for _ in range(MAX_VALUE_UNWRAP):
            if isinstance(obj, np.ndarray):
                return self.array(_as_plain_array(obj, path), name, _NO_HINT, path)
            if obj is None:
                return {"none": None}
            if isinstance(obj, bool):
                return {"bool": obj}
            if isinstance(obj, str):
                return {"str": str(obj)}
            if isinstance(obj, (bytes, bytearray, memoryview)) and not isinstance(obj, np.generic):
                return {"bytes": base64.b64encode(bytes(obj)).decode("ascii")}
            if isinstance(obj, np.generic):
                return self.array(np.asarray(obj), name, _SCALAR_HINT, path)
            if isinstance(obj, int):
                return {"int": _int_payload(int(obj))}
            if isinstance(obj, float):
                return {"float": _float_payload(obj)}
            if isinstance(obj, complex):
                self.values += 2
                return {"complex": [_float_payload(obj.real), _float_payload(obj.imag)]}
            if is_jax_array(obj):
                return self.jax_array(obj, path, name)
            if isinstance(obj, (Mapping, list, tuple)):
                if _is_flatted_dict(obj):
                    # brainstate's model.states(): saved nested, as braintools does, so keys load as 'a', not ('a',).
                    obj = obj.to_nest()
                return self.container(obj, path, name, depth)
            if is_quantity(obj):
                return self.quantity(obj, path, name)
            if isinstance(obj, (set, frozenset)):
                raise TypeError(f"bpz cannot save a {type(obj).__name__} at {format_path(path)}: sets have no "
                                "order; use a list")
            if hasattr(obj, "value") and not isinstance(obj, Enum):
                # BrainPy Variables / Arrays and brainstate States are saved as their value.
                obj = obj.value
                continue
            if hasattr(obj, "__array__"):
                # asanyarray: a subclass its __array__ returns (a masked array) is judged, not stripped.
                return self.array(_as_plain_array(np.asanyarray(obj), path), name, _NO_HINT, path)
            raise TypeError(
                f"bpz cannot save an object of type {_type_name(obj)} at "
                f"{format_path(path)}: leaves must be arrays, scalars, str, bytes or None, "
                "in dicts, lists, tuples or namedtuples"
            )
        raise ValueError(
            f"bpz cannot save the object at {format_path(path)}: its .value is an object with a .value, "
            f"more than {MAX_VALUE_UNWRAP} times over (or it is its own value)"
        )

    def jax_array(self, obj: Any, path: tuple[Any, ...], name: str) -> dict[str, Any]:
        if not isinstance(obj.dtype, np.dtype) and is_typed_key(obj):
            try:
                key_impl = _jax_random_api("key_impl", "0.4.18", "saving a typed JAX PRNG key")
            except ImportError as e:
                raise TypeError(f"bpz cannot save the typed PRNG key at {format_path(path)}: {e}. "
                                "Save jax.random.key_data(key) (its uint32 data) instead") from None
            impl = key_impl(obj)
            impl_name = getattr(impl, "name", None) or str(impl)
            data = np.asarray(_jax_module().random.key_data(obj))
            return self.array(data, name, {"py": "jax_key", "impl": impl_name}, path)
        # A device-to-host copy; on CPU np.asarray may share memory with the
        # (immutable) jax buffer, so copy when a snapshot is wanted.
        arr = np.asarray(obj)
        return self.array(np.array(arr) if self.copy else arr, name, {"py": "jax"}, path)

    def quantity(self, q: Any, path: tuple[Any, ...], name: str) -> dict[str, Any]:
        """A brainunit Quantity: its mantissa as the tensor, its unit in the node's hint."""
        where = format_path(path)
        unit = _unit_hint(q.unit, where)
        hint: dict[str, Any] = {"py": "quantity", "unit": unit}
        mantissa = q.mantissa
        if isinstance(mantissa, (bool, int, float, complex)):
            hint["scalar"] = next(k for k in ("bool", "int", "float", "complex")
                                  if isinstance(mantissa, _SCALAR_MANTISSA[k]))
            if isinstance(mantissa, int) and not isinstance(mantissa, bool) and not -(2**63) <= mantissa < 2**63:
                raise TypeError(f"bpz cannot save the Quantity at {where}: its int mantissa {mantissa} does not "
                                "fit in int64")
            arr = np.asarray(mantissa)
        elif isinstance(mantissa, np.generic):
            hint["scalar"] = "numpy"
            arr = np.asarray(mantissa)
        elif is_jax_array(mantissa):
            if is_typed_key(mantissa):
                raise TypeError(f"bpz cannot save the Quantity at {where}: its mantissa is a PRNG key")
            arr = np.asarray(mantissa)
            arr = np.array(arr) if self.copy else arr
        elif isinstance(mantissa, np.ndarray):
            arr = _as_plain_array(mantissa, path)
        else:
            raise TypeError(f"bpz cannot save the Quantity at {where}: its mantissa is a {_type_name(mantissa)}, "
                            "not an array or a number")
        self.values += _count_json_values(unit) - 1  # (array() counts the hint's own members)
        return self.array(arr, name, hint, path)

    def container(self, obj: Any, path: tuple[Any, ...], name: str, depth: int) -> dict[str, Any]:
        if depth >= MAX_TREE_DEPTH:
            raise ValueError(f"the tree is nested more than {MAX_TREE_DEPTH} containers deep at {format_path(path)}")
        if not obj:  # nothing inside, so no cycle through it: the fast way
            if isinstance(obj, Mapping):
                return {"ordered_dict" if isinstance(obj, collections.OrderedDict) else "dict": []}
            if isinstance(obj, tuple) and hasattr(obj, "_fields"):
                self.values += 3
                return {"namedtuple": {"name": type(obj).__name__, "fields": [], "values": []}}
            return {"tuple" if isinstance(obj, tuple) else "list": []}
        active = self.active
        if id(obj) in active:
            raise ValueError(f"the tree contains itself (a reference cycle) at {format_path(path)}")
        # Each child adds at least two values (four in a dict): a huge container fails before its walk.
        if self.values + (4 if isinstance(obj, Mapping) else 2) * len(obj) > self.max_values:
            self.too_many_values(path)
        active.add(id(obj))
        prefix = name + "/" if depth else ""  # children's names: prefix + escaped key
        depth += 1
        child = self.child
        try:
            if isinstance(obj, Mapping):
                items: list[list[Any]] = []
                append = items.append
                # The node's JSON level if every container above were a dict (3 levels
                # each); a key sits two levels further in, inside its pair.
                key_level = 5 + 3 * (depth - 1)
                for k, v in obj.items():
                    if type(k) is str:
                        key = seg = k
                    else:
                        key, seg = self.key(k, path, key_level), _segment(k)
                    if "~" in seg or "/" in seg or "\0" in seg:
                        seg = _escape_segment(seg)
                    append([key, child(v, prefix + seg, path, k, depth)])
                self.values += 4 * len(items)
                node: dict[str, Any] = {"ordered_dict" if isinstance(obj, collections.OrderedDict) else "dict": items}
            elif isinstance(obj, tuple) and hasattr(obj, "_fields"):
                fields = [str(f) for f in obj._fields]
                values = [child(v, prefix + _escape_segment(f), path, f, depth) for f, v in zip(fields, obj)]
                self.values += 3 + len(fields) + 2 * len(values)
                node = {"namedtuple": {"name": type(obj).__name__, "fields": fields, "values": values}}
            else:
                values = [child(v, prefix + str(i), path, i, depth) for i, v in enumerate(obj)]
                self.values += 2 * len(values)
                node = {"tuple" if isinstance(obj, tuple) else "list": values}
        finally:
            active.discard(id(obj))
        if self.values > self.max_values:
            self.too_many_values(path)
        return node

    def too_many_values(self, path: tuple[Any, ...]) -> None:
        raise ValueError(
                f"the tree is too large to save at {format_path(path)}: over {self.max_values:,} JSON values in the "
                "archive's index (about 4 per dict entry), the most a load accepts by default. Store large collections "
                "as arrays, or raise the limit (bpz.pytree.MAX_TREE_VALUES or the environment variable "
                "BPZ_MAX_TREE_VALUES) here and where the file is loaded"
            )


@contextlib.contextmanager
def no_gc() -> Any:
    """Pauses the cyclic garbage collector: building thousands of small nodes
    otherwise triggers repeated full collections (they create no cycles)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def flatten(target: Any, *, copy: bool = False) -> tuple[dict[str, Any], list[Leaf]]:
    """Splits ``target`` into a JSON tree and its tensor leaves.

    With ``copy=True`` every array is copied (a snapshot the caller may then
    mutate); otherwise arrays are used in place where they are already
    little-endian and C-contiguous. Raises ValueError for a tree over
    :data:`MAX_TREE_VALUES` or nested too deeply.
    """
    f = _Flattener(copy, MAX_TREE_VALUES)
    with no_gc():
        tree = f.node(target, (), "", 0)
    return tree, f.leaves


_namedtuple_types: dict[tuple[str, tuple[str, ...]], type] = {}


def _namedtuple_type(name: str, fields: tuple[str, ...]) -> type:
    key = (name, fields)
    if key not in _namedtuple_types:
        type_name = name if name.isidentifier() else "NamedTuple"
        # rename=True: a field that is not an identifier becomes _0, _1, ...
        _namedtuple_types[key] = collections.namedtuple(type_name, fields, rename=True)
    return _namedtuple_types[key]


def _decode_key(k: Any) -> Any:
    if isinstance(k, str):
        return k
    if isinstance(k, int) and not isinstance(k, bool):
        return k
    if isinstance(k, dict) and len(k) == 1:
        (kind, payload), = k.items()
        if kind == "tuple":
            return tuple(_decode_key(x) for x in payload)
        value = _decode_scalar(kind, payload)
        if value is not _NOT_SCALAR:
            return value
    raise FormatError(f"invalid dict key {k!r} in the archive's tree")


_NOT_SCALAR = object()


def _decode_scalar(kind: str, payload: Any) -> Any:
    if kind == "none":
        return None
    if kind == "bool":
        return bool(payload)
    if kind == "int":
        if isinstance(payload, bool) or not isinstance(payload, (int, str)):
            raise FormatError(f"invalid int payload {payload!r} in the archive's tree")
        return int(payload)
    if kind == "float":
        return _float_value(payload)
    if kind == "complex":
        return complex(_float_value(payload[0]), _float_value(payload[1]))
    if kind == "str":
        if not isinstance(payload, str):
            raise FormatError("invalid str payload in the archive's tree")
        return payload
    if kind == "bytes":
        return base64.b64decode(payload, validate=True)
    return _NOT_SCALAR


def unflatten(tree: Any, load_tensor: Callable[[dict[str, Any]], Any]) -> Any:
    """Rebuilds the pytree; ``load_tensor`` turns a ``{"tensor": name, ...}`` node into a value."""
    decode_key = _decode_key

    def build(node: Any) -> Any:
        if type(node) is not dict or len(node) != 1:
            if isinstance(node, dict) and "tensor" in node:
                return load_tensor(node)  # with hints
            if not isinstance(node, dict) or not node:
                raise FormatError(f"invalid tree node {_key_repr.repr(node)} in the archive")
            raise FormatError(f"invalid tree node with members {_key_repr.repr(sorted(node))} in the archive")
        (kind, payload), = node.items()
        if kind == "tensor":
            return load_tensor(node)
        if kind == "dict" or kind == "ordered_dict":
            if type(payload) is not list:
                raise FormatError(f"the archive's tree has a {kind} node whose payload is not an array")
            pairs = {k if type(k) is str else decode_key(k): build(v) for k, v in payload}
            return collections.OrderedDict(pairs) if kind == "ordered_dict" else pairs
        if kind == "list" or kind == "tuple":
            if type(payload) is not list:
                raise FormatError(f"the archive's tree has a {kind} node whose payload is not an array")
            return [build(v) for v in payload] if kind == "list" else tuple([build(v) for v in payload])
        if kind == "namedtuple":
            cls = _namedtuple_type(payload["name"], tuple(payload["fields"]))
            return cls(*[build(v) for v in payload["values"]])
        value = _decode_scalar(kind, payload)
        if value is _NOT_SCALAR:
            raise FormatError(f"the archive's tree has a node of kind {_key_repr.repr(kind)}, unknown to this "
                              "version of bpz")
        return value

    if tree is None:
        return None
    try:
        with no_gc():
            return build(tree)
    except FormatError:
        raise
    except MemoryError:
        raise LimitExceededError(
            "the archive's tree needs more memory to rebuild than is available; "
            "its size is bounded by bpz.pytree.MAX_TREE_VALUES, which may be set lower"
        ) from None
    except (KeyError, IndexError, TypeError, ValueError, AttributeError, binascii.Error) as e:
        # A malformed tree (from a damaged or hostile file): never a raw Python error.
        raise FormatError(f"the archive's tree is malformed: {type(e).__name__}: {e}") from None


_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_JSON_SPACE = re.compile(r"[ \t\n\r]+")


def count_json_values(text: str) -> int:
    """The number of values in a valid JSON text (object members' names not counted)."""
    bare = _JSON_SPACE.sub("", _JSON_STRING.sub('""', text))
    # Each value but the first is preceded by a comma or is the first in a non-empty container.
    nonempty = bare.count("{") - bare.count("{}") + bare.count("[") - bare.count("[]")
    return 1 + bare.count(",") + nonempty


def parse_json(text: str, source: str, what: str = "tree") -> Any:
    """Parses the tree or metadata JSON of the archive ``source`` (already
    validated by the core), refusing more than :data:`MAX_TREE_VALUES` values
    before building them: a few megabytes of ``[],`` would otherwise become
    gigabytes of Python lists."""
    limit = MAX_TREE_VALUES
    # A text has fewer values than characters, and counting brackets and commas
    # bounds them from above: the exact count is needed only near the limit.
    if len(text) > limit and text.count(",") + text.count("{") + text.count("[") + 1 > limit:
        n = count_json_values(text)
        if n > limit:
            raise LimitExceededError(
                f"{source}: the {what} has {n:,} JSON values, over the limit of {limit:,} "
                "(raise bpz.pytree.MAX_TREE_VALUES or set the environment variable BPZ_MAX_TREE_VALUES "
                "to load it, if the file is trusted and memory allows: about 150 bytes per value)"
            )
    try:
        with no_gc():
            return json.loads(text)
    except MemoryError:
        raise LimitExceededError(
            f"{source}: the {what} ({len(text):,} bytes of JSON) needs more memory than is available; "
            f"its size is bounded by bpz.pytree.MAX_TREE_VALUES ({limit:,}), which may be set lower"
        ) from None


# ----------------------------------------------------------------- restoring


def _as_sequence(loaded: Any, n: int, fields: tuple[str, ...] | None, path: tuple[Any, ...]) -> list[Any]:
    """Loaded sequences, or dicts keyed "0".."n-1" / by field names (legacy .bp files)."""
    if isinstance(loaded, (list, tuple)):
        seq = list(loaded)
    elif isinstance(loaded, Mapping):
        keys = list(fields) if fields and all(f in loaded for f in fields) else [str(i) for i in range(len(loaded))]
        if set(map(str, loaded)) != set(keys):
            raise ValueError(f"expected a sequence of {n} items at {format_path(path)}, got a dict with keys "
                             f"{sorted(map(str, loaded))}")
        seq = [loaded[k] if k in loaded else loaded[int(k)] for k in keys]
    else:
        raise ValueError(f"expected a sequence of {n} items at {format_path(path)}, got {type(loaded).__name__}")
    if len(seq) != n:
        raise ValueError(f"length mismatch: expected {n} items, got {len(seq)} at {format_path(path)}")
    return seq


def _is_array(x: Any) -> bool:
    return isinstance(x, np.ndarray) or is_jax_array(x)


_PY_NUMBERS = (bool, int, float, complex)


def restore_into(
    target: Any,
    loaded: Any,
    assignments: list[tuple[Any, Any]],
    path: tuple[Any, ...] = (),
    _unwrapped: int = 0,
    ignored: list[str] | None = None,
) -> Any:
    """Fits ``loaded`` into the structure of ``target``; each leaf by :func:`accept_loaded`.

    Objects with a ``.value`` (BrainPy Variables, brainstate States) are not
    changed here; ``(object, new_value)`` pairs are appended to ``assignments``
    so the caller assigns them only after every check passed. Keys of a loaded
    dict that the target lacks are skipped (as braintools does) and their paths
    appended to ``ignored`` when given.
    """
    if isinstance(target, Mapping):
        if not isinstance(loaded, Mapping):
            raise ValueError(f"expected a dict at {format_path(path)}, got {type(loaded).__name__}")
        if _is_flatted_dict(target) and not (loaded and all(isinstance(k, tuple) for k in loaded)):
            # Saved nested (by bpz or braintools); a file from before bpz nested them keeps tuple keys.
            target = target.to_nest()
        lookup = {str(k): k for k in loaded} if not all(k in loaded for k in target) else {}
        missing = [k for k in target if k not in loaded and str(k) not in lookup]
        if missing:
            raise ValueError(
                "The target dict keys and state dict keys do not match, target dict contains keys "
                f"{sorted(map(str, missing))} which are not present in state dict at {format_path(path)}"
            )
        if ignored is not None and len(loaded) > len(target):
            wanted = set(map(str, target))
            ignored.extend(format_path((*path, k)) for k in loaded if str(k) not in wanted)
        out = {
            k: restore_into(
                v, loaded[k] if k in loaded else loaded[lookup[str(k)]], assignments, (*path, k), 0, ignored
            )
            for k, v in target.items()
        }
        return type(target)(out) if type(target) in (dict, collections.OrderedDict) else out
    if isinstance(target, tuple) and hasattr(target, "_fields"):
        seq = _as_sequence(loaded, len(target), tuple(target._fields), path)
        return type(target)(
            *(restore_into(t, got, assignments, (*path, f), 0, ignored)
              for f, t, got in zip(target._fields, target, seq))
        )
    if isinstance(target, (list, tuple)):
        seq = _as_sequence(loaded, len(target), None, path)
        items = [restore_into(t, got, assignments, (*path, i), 0, ignored)
                 for i, (t, got) in enumerate(zip(target, seq))]
        return type(target)(items) if type(target) in (list, tuple) else items
    if _is_array(target) or isinstance(target, (np.generic, *_PY_NUMBERS)) or is_quantity(target):
        return accept_loaded(target, loaded, path)
    if is_brainpy_variable(target):
        assignments.append((target, accept_loaded(target, loaded, path)))
        return target
    if hasattr(target, "value") and not isinstance(target, Enum) and not isinstance(target, (str, bytes)):
        if _unwrapped >= MAX_VALUE_UNWRAP:
            raise ValueError(
                f"the target at {format_path(path)} is an object whose .value is an object with a .value, "
                f"more than {MAX_VALUE_UNWRAP} times over (or it is its own value)"
            )
        new = restore_into(target.value, loaded, assignments, path, _unwrapped + 1, ignored)
        assignments.append((target, new))
        return target
    return loaded


def _describe(value: Any) -> str:
    if is_quantity(value):
        return f"a Quantity in {value.unit}"
    if is_typed_key(value):
        return f"a typed PRNG key array ({value.dtype}, shape {tuple(value.shape)})"
    if _is_array(value) or isinstance(value, np.generic):
        return f"an array ({np.dtype(value.dtype)}, shape {tuple(np.shape(value))})"
    return f"a {_type_name(value)}"


def _is_number_like(x: Any) -> bool:
    return _is_array(x) or isinstance(x, (np.generic, *_PY_NUMBERS))


def accept_loaded(target: Any, loaded: Any, path: tuple[Any, ...] | str) -> Any:
    """The value that replaces the target leaf ``target`` when ``loaded`` is loaded into it, or
    ValueError naming ``path`` (a key path, or a label such as a state-dict key).

    The rule of BrainPy 2.9 / braintools 0.4, shared by ``bpz.load_pytree(target=...)`` and
    ``bpz.brainpy.load_state_dict``:

    * a plain array (NumPy or jax), a NumPy or Python number, or the value of a brainstate
      ``State``: the shape must match; the dtype is not enforced and the loaded value is
      returned as it is (its saved dtype; NumPy for arrays) — nothing is cast;
    * a BrainPy ``Variable``: the shape must match (except along its ``batch_axis``) and the
      loaded dtype, after jax's canonicalisation (float64 -> float32 when x64 is off), must
      equal the Variable's, as its setter demands; returns the jax array to assign;
    * a typed PRNG key (``jax.random.key``): needs a key array of the same shape and
      implementation (or a BrainPy-2.9 ``{'__prng_key_impl__', 'key_data'}`` dict);
    * a brainunit ``Quantity``: needs a Quantity (or a BrainPy-2.9 ``.bp`` unit dict) of an
      equal unit (``Unit mismatch: expected mV, got ms at ...``); the mantissa follows the
      array rule and the result carries the target's unit object. A value with a unit never
      fills a target without one, nor the reverse.
    """
    if type(target) is np.ndarray and type(loaded) is np.ndarray:  # the common case, first
        if target.shape != loaded.shape:
            where = path if isinstance(path, str) else format_path(path)
            raise ValueError(f"Array shape mismatch: expected {target.shape}, got {loaded.shape} at {where}")
        return loaded
    where = path if isinstance(path, str) else format_path(path)
    if is_brainpy_variable(target):
        return _accept_variable(target, loaded, where)
    if is_quantity(target):
        return _accept_quantity(target, loaded, where)
    if is_typed_key(target):
        return _accept_key(target, loaded, where)
    if is_quantity(loaded):
        raise ValueError(f"Unit mismatch: expected a value without a unit, got {_describe(loaded)} at {where}")
    if _is_array(target) or isinstance(target, (np.generic, *_PY_NUMBERS)):
        if not _is_number_like(loaded) or is_typed_key(loaded):
            what = "a number" if isinstance(target, _PY_NUMBERS) else "an array"
            raise ValueError(f"expected {what} at {where}, got {_describe(loaded)}")
        t_shape, l_shape = tuple(np.shape(target)), tuple(np.shape(loaded))
        if t_shape != l_shape:
            raise ValueError(f"Array shape mismatch: expected {t_shape}, got {l_shape} at {where}")
        return loaded
    if hasattr(target, "value") and not isinstance(target, (Enum, str, bytes)):
        return accept_loaded(target.value, loaded, where)
    return loaded


def _accept_variable(var: Any, loaded: Any, where: str) -> Any:
    current = var.value
    if is_typed_key(current):
        return _accept_key(current, loaded, where)
    if not _is_number_like(loaded) or is_typed_key(loaded) or is_quantity(loaded):
        raise ValueError(f"expected an array at {where}, got {_describe(loaded)}")
    shape, got_shape = tuple(np.shape(current)), tuple(np.shape(loaded))
    axis = getattr(var, "batch_axis", None)
    if isinstance(axis, int) and len(shape) == len(got_shape) and 0 <= axis < len(shape):
        shape, got_shape = shape[:axis] + shape[axis + 1 :], got_shape[:axis] + got_shape[axis + 1 :]
    if shape != got_shape:
        raise ValueError(f"Array shape mismatch: expected {tuple(np.shape(current))}, "
                         f"got {tuple(np.shape(loaded))} at {where}")
    expected = np.dtype(var.dtype)
    got = np.dtype(loaded.dtype if hasattr(loaded, "dtype") else np.asarray(loaded).dtype)
    canonical = canonical_dtype(got)
    if canonical != expected:
        via = f" ({canonical} in jax)" if canonical != got else ""
        raise ValueError(
            f"Array dtype mismatch: expected {expected}, got {got}{via} at {where}: a BrainPy Variable keeps its dtype"
        )
    import jax.numpy as jnp

    return jnp.asarray(loaded)


_KEY_MARKER = "__prng_key_impl__"


def _accept_key(target: Any, loaded: Any, where: str) -> Any:
    if isinstance(loaded, Mapping) and _KEY_MARKER in loaded and "key_data" in loaded:
        # A typed key as braintools (BrainPy 2.9 .bp files) saves it.
        try:
            loaded = wrap_key(np.asarray(loaded["key_data"]), str(loaded[_KEY_MARKER]))
        except ImportError:
            raise
        except Exception as e:  # noqa: BLE001 - jax's word on a bad impl name or key data
            raise ValueError(f"invalid PRNG key data at {where}: {e}") from None
    if not is_typed_key(loaded):
        raise ValueError(f"expected a typed PRNG key array ({target.dtype}) at {where}, got {_describe(loaded)}")
    if loaded.dtype != target.dtype:
        raise ValueError(f"PRNG key mismatch: expected {target.dtype}, got {loaded.dtype} at {where}")
    t_shape, l_shape = tuple(target.shape), tuple(loaded.shape)
    if t_shape != l_shape:
        raise ValueError(f"Array shape mismatch: expected {t_shape}, got {l_shape} at {where}")
    return loaded


_LEGACY_QUANTITY_KEYS = frozenset({"mantissa", "scale", "base", "dim", "factor"})


def _accept_quantity(target: Any, loaded: Any, where: str) -> Any:
    if is_quantity(loaded):
        unit, mantissa = loaded.unit, loaded.mantissa
    elif isinstance(loaded, Mapping) and set(map(str, loaded)) == _LEGACY_QUANTITY_KEYS:
        # A Quantity as braintools (BrainPy 2.9 .bp files) saves it.
        try:
            unit = _make_unit(sys.modules[type(target).__module__], loaded["dim"], loaded["scale"], loaded["base"],
                              loaded["factor"])
        except Exception as e:  # noqa: BLE001 - the unit library's word on a damaged unit
            raise ValueError(f"invalid unit {_key_repr.repr(dict(loaded))} at {where}: {e}") from None
        mantissa = loaded["mantissa"]
    else:
        raise ValueError(f"Unit mismatch: expected {target.unit}, got {_describe(loaded)} without a unit at {where}")
    if unit != target.unit:
        raise ValueError(f"Unit mismatch: expected {target.unit}, got {unit} at {where}")
    mantissa = accept_loaded(target.mantissa, mantissa, where)
    return type(target)(mantissa, unit=target.unit)
