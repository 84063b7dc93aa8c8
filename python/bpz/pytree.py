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
import math
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import numpy as np

from . import dtypes
from .errors import FormatError

__all__ = ["Leaf", "flatten", "unflatten", "restore_into", "format_path"]

MAX_SAFE_INT = 2**53 - 1
#: Containers nested deeper than this can't be stored (the index's JSON nesting limit).
MAX_TREE_DEPTH = 40


@dataclass(slots=True)
class Leaf:
    """One array of a flattened pytree: little-endian, C-contiguous."""

    name: str
    array: np.ndarray
    dtype: str
    node: dict[str, Any] = field(repr=False, default_factory=dict)


def format_path(path: tuple[Any, ...]) -> str:
    """A key path as Python would index it: ``target['net'][0]``."""
    return "target" + "".join(f"[{k!r}]" for k in path)


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


def _is_jax_array(obj: Any) -> bool:
    jax = _jax_module()
    return jax is not None and isinstance(obj, jax.Array)


def _escape_segment(segment: str) -> str:
    """A key as one segment of a tensor name: ``~`` and ``/`` escaped; NUL,
    which names can't hold (C strings), replaced (the tree keeps the exact key)."""
    if "~" in segment or "/" in segment or "\0" in segment:
        return segment.replace("~", "~0").replace("/", "~1").replace("\0", "\ufffd")
    return segment


_NO_KEY: Any = object()
_NO_HINT: dict[str, Any] = {}


class _Flattener:
    """Walks a pytree once. Each node gets its tensor name (its escaped key
    path) as a string; the key path itself, a tuple, is built only where
    error messages need it (arrays in containers, the most common leaves,
    take the fast path without it)."""

    def __init__(self, copy: bool) -> None:
        self.copy = copy
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

    def key(self, k: Any, path: tuple[Any, ...]) -> Any:
        if isinstance(k, str):
            return str(k)
        if isinstance(k, (bool, np.bool_)):
            return {"bool": bool(k)}
        if isinstance(k, (int, np.integer)):
            k = int(k)
            return k if -MAX_SAFE_INT <= k <= MAX_SAFE_INT else {"int": str(k)}
        if isinstance(k, (float, np.floating)):
            return {"float": _float_payload(float(k))}
        if k is None:
            return {"none": None}
        if isinstance(k, bytes):
            return {"bytes": base64.b64encode(k).decode("ascii")}
        if isinstance(k, tuple):
            return {"tuple": [self.key(x, path) for x in k]}
        raise TypeError(
            f"bpz cannot save the dict key {k!r} of type {type(k).__name__} at {format_path(path)}: "
            "keys must be str, int, float, bool, None, bytes or tuples of these"
        )

    def array(self, arr: np.ndarray, name: str, hint: dict[str, Any], path: tuple[Any, ...], key: Any = _NO_KEY) -> dict[str, Any]:
        """A tensor leaf named ``name`` (unique-ified); ``path`` (+ ``key``) is its key path."""
        dtype, swap = dtypes.storage(arr.dtype)
        if dtype is None:
            if key is not _NO_KEY:
                path = (*path, key)
            raise TypeError(
                f"bpz cannot save the array at {format_path(path)}: dtype {arr.dtype} is not supported "
                f"(supported: bool, (u)int8-64, float16/32/64, bfloat16, float8 variants, complex64/128)"
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
        node = {"tensor": name, **hint} if hint else {"tensor": name}
        self.leaves.append(Leaf(name, arr, dtype, node))
        return node

    def node(self, obj: Any, path: tuple[Any, ...], name: str, depth: int) -> Any:
        if isinstance(obj, np.ndarray):
            return self.array(obj, name, _NO_HINT, path)
        if obj is None:
            return {"none": None}
        if isinstance(obj, bool):
            return {"bool": obj}
        if isinstance(obj, str):
            return {"str": str(obj)}
        if isinstance(obj, (bytes, bytearray, memoryview)) and not isinstance(obj, np.generic):
            return {"bytes": base64.b64encode(bytes(obj)).decode("ascii")}
        if isinstance(obj, np.generic):
            return self.array(np.asarray(obj), name, {"py": "numpy_scalar"}, path)
        if isinstance(obj, int):
            return {"int": _int_payload(int(obj))}
        if isinstance(obj, float):
            return {"float": _float_payload(obj)}
        if isinstance(obj, complex):
            return {"complex": [_float_payload(obj.real), _float_payload(obj.imag)]}
        if _is_jax_array(obj):
            return self.jax_array(obj, path, name)
        if isinstance(obj, (Mapping, list, tuple)):
            return self.container(obj, path, name, depth)
        if isinstance(obj, (set, frozenset)):
            raise TypeError(f"bpz cannot save a {type(obj).__name__} at {format_path(path)}: sets have no order; use a list")
        if hasattr(obj, "value") and not isinstance(obj, Enum):
            # BrainPy Variables / Arrays and brainstate States are saved as their value.
            return self.node(obj.value, path, name, depth)
        if hasattr(obj, "__array__"):
            return self.array(np.asarray(obj), name, _NO_HINT, path)
        raise TypeError(
            f"bpz cannot save an object of type {type(obj).__module__}.{type(obj).__qualname__} at "
            f"{format_path(path)}: leaves must be arrays, scalars, str, bytes or None, "
            "in dicts, lists, tuples or namedtuples"
        )

    def jax_array(self, obj: Any, path: tuple[Any, ...], name: str) -> dict[str, Any]:
        jax = _jax_module()
        if jax.dtypes.issubdtype(obj.dtype, jax.dtypes.prng_key):
            impl = jax.random.key_impl(obj)
            impl_name = getattr(impl, "name", None) or str(impl)
            data = np.asarray(jax.random.key_data(obj))
            return self.array(data, name, {"py": "jax_key", "impl": impl_name}, path)
        # A device-to-host copy; on CPU np.asarray may share memory with the
        # (immutable) jax buffer, so copy when a snapshot is wanted.
        arr = np.asarray(obj)
        return self.array(np.array(arr) if self.copy else arr, name, {"py": "jax"}, path)

    def container(self, obj: Any, path: tuple[Any, ...], name: str, depth: int) -> dict[str, Any]:
        if depth >= MAX_TREE_DEPTH:
            raise ValueError(f"the tree is nested more than {MAX_TREE_DEPTH} containers deep at {format_path(path)}")
        if id(obj) in self.active:
            raise ValueError(f"the tree contains itself (a reference cycle) at {format_path(path)}")
        self.active.add(id(obj))
        prefix = name + "/" if depth else ""  # children's names: prefix + escaped key
        depth += 1
        node, array, ndarray = self.node, self.array, np.ndarray
        plain, copy, names, leaves_append = dtypes.PLAIN, self.copy, self.names, self.leaves.append
        names_add = names.add
        # Arrays, the common leaf, skip node() and need no key path (built only for errors).
        try:
            if isinstance(obj, Mapping):
                items: list[list[Any]] = []
                append = items.append
                for k, v in obj.items():
                    if type(k) is str:
                        key = seg = k
                    else:
                        key, seg = self.key(k, path), _segment(k)
                    if "~" in seg or "/" in seg or "\0" in seg:
                        seg = _escape_segment(seg)
                    if type(v) is ndarray:
                        # The commonest leaf, inlined: a little-endian C-contiguous array
                        # of a supported dtype under a new name (else array() decides).
                        dtype = plain.get(v.dtype)
                        tensor = prefix + seg
                        if dtype is None or copy or tensor in names or not v.flags.c_contiguous:
                            append([key, array(v, tensor, _NO_HINT, path, k)])
                        else:
                            names_add(tensor)
                            tnode = {"tensor": tensor}
                            leaves_append(Leaf(tensor, v, dtype, tnode))
                            append([key, tnode])
                    else:
                        append([key, node(v, (*path, k), prefix + seg, depth)])
                return {"ordered_dict" if isinstance(obj, collections.OrderedDict) else "dict": items}
            if isinstance(obj, tuple) and hasattr(obj, "_fields"):
                fields = [str(f) for f in obj._fields]
                values = [
                    array(v, prefix + _escape_segment(f), _NO_HINT, path, f)
                    if type(v) is ndarray
                    else node(v, (*path, f), prefix + _escape_segment(f), depth)
                    for f, v in zip(fields, obj)
                ]
                return {"namedtuple": {"name": type(obj).__name__, "fields": fields, "values": values}}
            values = [
                array(v, prefix + str(i), _NO_HINT, path, i) if type(v) is ndarray else node(v, (*path, i), prefix + str(i), depth)
                for i, v in enumerate(obj)
            ]
            return {"tuple" if isinstance(obj, tuple) else "list": values}
        finally:
            self.active.discard(id(obj))


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
    """Splits ``target`` into a JSON tree and its array leaves.

    With ``copy=True`` every array is copied (a snapshot the caller may then
    mutate); otherwise arrays are used in place where they are already
    little-endian and C-contiguous.
    """
    f = _Flattener(copy)
    with no_gc():
        tree = f.node(target, (), "", 0)
    return tree, f.leaves


_namedtuple_types: dict[tuple[str, tuple[str, ...]], type] = {}


def _namedtuple_type(name: str, fields: tuple[str, ...]) -> type:
    key = (name, fields)
    if key not in _namedtuple_types:
        type_name = name if name.isidentifier() else "NamedTuple"
        # rename=True: a field that is not an identifier becomes _0, _1, ...
        _namedtuple_types[key] = collections.namedtuple(type_name, fields, rename=True)  # type: ignore[misc]
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

    def build(node: Any) -> Any:
        if not isinstance(node, dict) or not node:
            raise FormatError(f"invalid tree node {node!r} in the archive")
        if "tensor" in node:
            return load_tensor(node)
        if len(node) != 1:
            raise FormatError(f"invalid tree node with members {sorted(node)} in the archive")
        (kind, payload), = node.items()
        if kind in ("dict", "ordered_dict"):
            pairs = ((_decode_key(k), build(v)) for k, v in payload)
            return collections.OrderedDict(pairs) if kind == "ordered_dict" else dict(pairs)
        if kind == "list":
            return [build(v) for v in payload]
        if kind == "tuple":
            return tuple(build(v) for v in payload)
        if kind == "namedtuple":
            cls = _namedtuple_type(payload["name"], tuple(payload["fields"]))
            return cls(*(build(v) for v in payload["values"]))
        value = _decode_scalar(kind, payload)
        if value is _NOT_SCALAR:
            raise FormatError(f"the archive's tree has a node of kind {kind!r}, unknown to this version of bpz")
        return value

    if tree is None:
        return None
    try:
        with no_gc():
            return build(tree)
    except FormatError:
        raise
    except (KeyError, IndexError, TypeError, ValueError, AttributeError, binascii.Error) as e:
        # A malformed tree (from a damaged or hostile file): never a raw Python error.
        raise FormatError(f"the archive's tree is malformed: {type(e).__name__}: {e}") from None


# ----------------------------------------------------------------- restoring


def _as_sequence(loaded: Any, n: int, fields: tuple[str, ...] | None, path: tuple[Any, ...]) -> list[Any]:
    """Loaded sequences, or dicts keyed "0".."n-1" / by field names (legacy .bp files)."""
    if isinstance(loaded, (list, tuple)):
        seq = list(loaded)
    elif isinstance(loaded, Mapping):
        keys = list(fields) if fields and all(f in loaded for f in fields) else [str(i) for i in range(len(loaded))]
        if set(map(str, loaded)) != set(keys):
            raise ValueError(f"expected a sequence of {n} items at {format_path(path)}, got a dict with keys {sorted(map(str, loaded))}")
        seq = [loaded[k] if k in loaded else loaded[int(k)] for k in keys]
    else:
        raise ValueError(f"expected a sequence of {n} items at {format_path(path)}, got {type(loaded).__name__}")
    if len(seq) != n:
        raise ValueError(f"length mismatch: expected {n} items, got {len(seq)} at {format_path(path)}")
    return seq


def _is_array(x: Any) -> bool:
    return isinstance(x, np.ndarray) or _is_jax_array(x)


def restore_into(target: Any, loaded: Any, assignments: list[tuple[Any, Any]], path: tuple[Any, ...] = ()) -> Any:
    """Fits ``loaded`` into the structure of ``target``, checking shapes and dtypes.

    Objects with a ``.value`` (BrainPy Variables, brainstate States) are not
    changed here; ``(object, new_value)`` pairs are appended to ``assignments``
    so the caller assigns them only after every check passed.
    """
    if isinstance(target, Mapping):
        if not isinstance(loaded, Mapping):
            raise ValueError(f"expected a dict at {format_path(path)}, got {type(loaded).__name__}")
        lookup = {str(k): k for k in loaded} if not all(k in loaded for k in target) else {}
        missing = [k for k in target if k not in loaded and str(k) not in lookup]
        if missing:
            raise ValueError(
                "The target dict keys and state dict keys do not match, target dict contains keys "
                f"{sorted(map(str, missing))} which are not present in state dict at {format_path(path)}"
            )
        extra = set(map(str, loaded)) - set(map(str, target))
        if extra:
            raise ValueError(
                "The target dict keys and state dict keys do not match, state dict contains keys "
                f"{sorted(extra)} which are not present in the target dict at {format_path(path)}"
            )
        out = {
            k: restore_into(v, loaded[k] if k in loaded else loaded[lookup[str(k)]], assignments, (*path, k))
            for k, v in target.items()
        }
        return type(target)(out) if isinstance(target, (dict, collections.OrderedDict)) and type(target) in (dict, collections.OrderedDict) else out
    if isinstance(target, tuple) and hasattr(target, "_fields"):
        seq = _as_sequence(loaded, len(target), tuple(target._fields), path)
        return type(target)(*(restore_into(t, l, assignments, (*path, f)) for f, t, l in zip(target._fields, target, seq)))
    if isinstance(target, (list, tuple)):
        seq = _as_sequence(loaded, len(target), None, path)
        items = [restore_into(t, l, assignments, (*path, i)) for i, (t, l) in enumerate(zip(target, seq))]
        return type(target)(items) if type(target) in (list, tuple) else items
    if _is_array(target) or isinstance(target, np.generic):
        return _check_array(target, loaded, path)
    if hasattr(target, "value") and not isinstance(target, Enum) and not isinstance(target, (str, bytes)):
        new = restore_into(target.value, loaded, assignments, path)
        assignments.append((target, new))
        return target
    return loaded


def _check_array(target: Any, loaded: Any, path: tuple[Any, ...]) -> Any:
    if not (_is_array(loaded) or isinstance(loaded, (np.generic, int, float, complex, bool))):
        raise ValueError(f"expected an array at {format_path(path)}, got {type(loaded).__name__}")
    t_shape, l_shape = tuple(np.shape(target)), tuple(np.shape(loaded))
    if t_shape != l_shape:
        raise ValueError(f"Array shape mismatch: expected {t_shape}, got {l_shape} at {format_path(path)}")
    t_dtype, l_dtype = np.dtype(target.dtype), np.dtype(getattr(loaded, "dtype", np.asarray(loaded).dtype))
    if t_dtype.newbyteorder("=") != l_dtype.newbyteorder("="):
        raise ValueError(f"Array dtype mismatch: expected {t_dtype}, got {l_dtype} at {format_path(path)}")
    if _is_jax_array(target) and not _is_jax_array(loaded):
        import jax.numpy as jnp

        return jnp.asarray(loaded)
    return loaded
