"""Load legacy pickles (state dicts, ``save_states`` ``.pkl``) without running their code.

Why: ``pickle.load`` calls whatever callables a file names, so a shared checkpoint could run
``os.system``. The unpickler here resolves only plain containers and stand-ins for the few
numpy constructors that array pickles use. The stand-ins record their arguments; numpy sees
them only after the load, when :func:`load_pickle` builds each array from exact-length bytes
with a dtype parsed from an allowlist (bool, int, uint, float, complex, str, bytes and the
``ml_dtypes`` types). Object, structured and datetime dtypes are refused, and numpy's own
``__setstate__`` never sees a file's data. Before unpickling, the opcodes are walked once
(:mod:`pickletools`), so that a memo index or declared length no honest pickler writes cannot
make CPython's unpickler allocate gigabytes. Every allowed global is in :data:`ALLOWED_GLOBALS`.

Memory: a pickle can name one large object many times through its memo, so what the load
builds from it is charged to the file's expansion budget (:class:`~._common.ExpansionBudget`,
plain-format ratio) before it is built: every array materialised (each stand-in is a separate
array even when they share their bytes), every copy made by an allowed constructor
(``list(x)``, ``bytes``, ``_codecs.encode`` ...) and every tuple or set rebuilt. A memo
reference to an object already built is the same object, never a copy.
"""

from __future__ import annotations

import collections
import io
import pickle
import pickletools
import warnings
from typing import Any

import numpy as np

from ..errors import FormatError, LimitExceededError, TruncatedError
from ._common import (
    MAX_NESTING_DEPTH,
    ML_DTYPE_NAMES,
    ExpansionBudget,
    Source,
    array_from_bytes,
    checked_shape,
    keypath,
    memory_guard,
    ml_dtype,
    plain_typestr,
    read_all,
)

__all__ = ["load_pickle", "ALLOWED_GLOBALS"]


class _Stub:
    """Base of the stand-ins: records the BUILD state a pickle applies to the object."""

    args: tuple = ()  # class defaults cover stubs made by NEWOBJ, which skips __init__
    state: Any = None

    def __init__(self, *args: Any) -> None:
        self.args, self.state = args, None

    def __setstate__(self, state: Any) -> None:
        self.state = state


class _DType(_Stub):
    """Stands for ``numpy.dtype(spec, align, copy)`` plus its pickled state (byte order)."""


class _Array(_Stub):
    """Stands for an ndarray: ``_reconstruct`` + BUILD, ``_frombuffer(...)`` or ``scalar(...)``."""

    how = ""

    def __init__(self, how: str, *args: Any) -> None:
        super().__init__(*args)
        self.how = how


class _Sealed:
    """What a pickle's GLOBAL gives (other than immutable builtin types): BUILD cannot change it.

    Without this, BUILD on a shared allowed object (a function, a module-level stand-in) would
    update its ``__dict__``, and the change would outlive the load and alter later files.
    """

    __slots__ = ()

    def __setstate__(self, state: Any) -> None:
        raise FormatError(f"BUILD applied to {self!r}, which is not an object a pickle may modify")


class _MLType(_Sealed):
    """Stands for an ``ml_dtypes`` scalar type (bfloat16 ...) used as a dtype spec."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"ml_dtypes.{self.name}"


#: Bytes charged per element for what a copying constructor builds: a pointer slot (list,
#: tuple) or a hash-table entry (set, dict, OrderedDict), CPython's sizes rounded up.
_SLOT_BYTES, _HASHED_BYTES, _OBJECT_BYTES = 8, 96, 200


def _construction_cost(fn: Any, args: tuple) -> int:
    """Bytes ``fn(*args)`` will build, for the allowed constructors that copy their argument."""
    arg = args[0] if args else ()
    size = len(arg) if hasattr(arg, "__len__") else 0
    if fn in (list, tuple):
        return _OBJECT_BYTES + _SLOT_BYTES * size
    if fn in (set, frozenset, dict, collections.OrderedDict):
        return _OBJECT_BYTES + _HASHED_BYTES * size
    return _OBJECT_BYTES + size  # bytes, bytearray, encode: one byte per input item; stand-ins


class _Allowed(_Sealed):
    """An allowed global bound to one load: charges what each call builds before building it."""

    __slots__ = ("fn", "label", "budget")

    def __init__(self, fn: Any, label: str, budget: ExpansionBudget) -> None:
        self.fn, self.label, self.budget = fn, label, budget

    def __call__(self, *args: Any) -> Any:
        self.budget.take(_construction_cost(self.fn, args), f"{self.budget.name}: a call of {self.label}")
        return self.fn(*args)

    def __repr__(self) -> str:
        return self.label


_NDARRAY = object()  # what 'numpy.ndarray' resolves to: passable to _reconstruct, not callable


def _reconstruct(subtype: Any, shape: Any = None, typecode: Any = None) -> _Array:
    if subtype is not _NDARRAY:
        raise FormatError(f"_reconstruct of {subtype!r} refused: only numpy.ndarray is allowed")
    return _Array("reconstruct")


def _bytes(*args: Any) -> bytes:
    """``bytes()`` as protocol 2 pickles use it; ``bytes(n)`` would allocate n bytes, so no ints."""
    if args and not isinstance(args[0], (bytes, bytearray, str)):
        raise FormatError(f"bytes({type(args[0]).__name__}) refused")
    return bytes(*args)


def _bytearray(*args: Any) -> bytearray:
    if args and not isinstance(args[0], (bytes, bytearray, str)):
        raise FormatError(f"bytearray({type(args[0]).__name__}) refused")
    return bytearray(*args)


def _latin1(text: str, encoding: str = "utf-8") -> bytes:
    """``_codecs.encode``, which protocol 2 pickles use for bytes; only latin-1 is allowed."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise FormatError(f"_codecs.encode with encoding {encoding!r} refused")
    return text.encode("latin-1")


_NUMPY_MODULES = ("numpy.core.multiarray", "numpy._core.multiarray",  # numpy 1 / numpy 2 names
                  "numpy.core.numeric", "numpy._core.numeric")
#: Every global a legacy pickle may name, mapped to what it resolves to.
ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    **{("builtins", t.__name__): t for t in (dict, list, tuple, set, frozenset, complex)},
    ("builtins", "bytes"): _bytes,
    ("builtins", "bytearray"): _bytearray,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("_codecs", "encode"): _latin1,
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _DType,
    **{(m, "_reconstruct"): _reconstruct for m in _NUMPY_MODULES[:2]},
    **{(m, "scalar"): (lambda dtype, data=b"": _Array("scalar", dtype, data)) for m in _NUMPY_MODULES[:2]},
    **{(m, "_frombuffer"): (lambda buf, dtype, shape, order: _Array("frombuffer", buf, dtype, shape, order))
       for m in _NUMPY_MODULES[2:]},
    **{("ml_dtypes", n): _MLType(n) for n in ML_DTYPE_NAMES},
}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file: io.BytesIO, name: str, budget: ExpansionBudget) -> None:
        super().__init__(file)
        self.name, self.budget = name, budget

    def find_class(self, module: str, name: str) -> Any:
        if module == "__builtin__":  # protocol 0-2 pickles name Python 2's module
            module = "builtins"
        try:
            target = ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise FormatError(f"{self.name}: pickle refers to {module}.{name}, which is not allowed "
                              f"(only containers and numpy arrays are loaded)") from None
        if isinstance(target, _MLType):
            return _MLType(target.name)
        if target in (_NDARRAY, _DType, complex):  # build nothing large, cannot be modified
            return target
        # Everything else copies its argument or is a function BUILD could modify. A wrapper is
        # not a type, so NEWOBJ (tuple.__new__(tuple, big)) cannot bypass the charge either.
        return _Allowed(target, f"{module}.{name}", self.budget)

    def persistent_load(self, pid: Any) -> Any:
        raise FormatError(f"{self.name}: persistent ids are not allowed in a legacy pickle")


class _Resolver:
    """Replaces stand-ins by real numpy objects, walking the loaded tree once."""

    def __init__(self, name: str, budget: ExpansionBudget) -> None:
        self.name, self.budget = name, budget
        # id -> (object, result): keeps shared and cyclic references intact; holding the object
        # keeps its id from being reused while the walk runs.
        self.done: dict[int, tuple[Any, Any]] = {}

    def where(self, path: tuple) -> str:
        return f"{self.name}: at key path {keypath(path)}"

    def dtype(self, stub: Any, where: str) -> np.dtype:
        if not isinstance(stub, _DType):
            raise FormatError(f"{where}: expected a numpy dtype, got {type(stub).__name__}")
        spec = stub.args[0] if stub.args else None
        dtype = ml_dtype(spec.name, where) if isinstance(spec, _MLType) else plain_typestr(spec, where)
        state = stub.state
        if state is not None:
            if (not isinstance(state, tuple) or len(state) not in (8, 9) or state[0] not in (3, 4)
                    or state[1] not in ("<", ">", "|", "=") or any(s is not None for s in state[2:5])
                    or (len(state) == 9 and state[8] not in (None, {}))):
                raise FormatError(f"{where}: dtype state {state!r} is not a plain dtype's")
            if state[5] not in (-1, dtype.itemsize):
                raise FormatError(f"{where}: dtype state gives itemsize {state[5]}; {dtype} has {dtype.itemsize}")
            if state[1] in "<>" and dtype.itemsize > 1 and dtype.kind != "V":
                dtype = dtype.newbyteorder(state[1])
        return dtype

    def array(self, stub: _Array, where: str) -> Any:
        if stub.how == "reconstruct":
            state = stub.state
            if isinstance(state, tuple) and len(state) == 5:
                state = state[1:]  # (version, shape, dtype, is_fortran, raw)
            if not isinstance(state, tuple) or len(state) != 4:
                raise FormatError(f"{where}: ndarray state {type(state).__name__} is malformed")
            shape, dtype, fortran, raw = state
            order = "F" if fortran else "C"
        elif stub.how == "frombuffer":
            raw, dtype, shape, order = stub.args
            if order not in ("C", "F"):
                raise FormatError(f"{where}: array order {order!r} is invalid")
        elif stub.how == "scalar":
            dtype, raw = stub.args
            shape, order = (), "C"
        else:
            raise FormatError(f"{where}: ndarray created without numpy's constructors")
        dtype = self.dtype(dtype, where)
        if not isinstance(raw, (bytes, bytearray)):
            raise FormatError(f"{where}: array data is {type(raw).__name__}, not bytes")
        arr = array_from_bytes(raw, dtype, checked_shape(shape, where), where, fortran=order == "F",
                               budget=self.budget)
        return arr[()] if stub.how == "scalar" else arr

    def resolve(self, obj: Any, path: tuple = ()) -> Any:
        if len(path) > MAX_NESTING_DEPTH:
            raise LimitExceededError(f"{self.where(path[:8])}...: nesting deeper than {MAX_NESTING_DEPTH}")
        if isinstance(obj, (str, bytes, int, float, complex, type(None))):
            return obj
        if id(obj) in self.done:
            return self.done[id(obj)][1]
        if isinstance(obj, _Array):
            result: Any = self.array(obj, self.where(path))
        elif isinstance(obj, _DType):
            result = self.dtype(obj, self.where(path))
        elif isinstance(obj, dict):
            self.done[id(obj)] = (obj, obj)
            self.resolve_dict(obj, path)
            return obj
        elif isinstance(obj, list):
            self.done[id(obj)] = (obj, obj)
            for i, v in enumerate(obj):  # in place: no second list of a large one
                obj[i] = self.resolve(v, path + (i,))
            return obj
        elif isinstance(obj, (tuple, set, frozenset)):
            self.budget.take(_construction_cost(type(obj), (obj,)), self.where(path))
            result = type(obj)([self.resolve(v, path + (i,)) for i, v in enumerate(obj)])
        elif isinstance(obj, bytearray):
            result = obj
        else:
            raise FormatError(f"{self.where(path)}: {type(obj).__name__} object is not allowed in a legacy pickle")
        self.done[id(obj)] = (obj, result)
        return result

    def resolve_dict(self, obj: dict, path: tuple) -> None:
        """Resolve values in place; rebuild (keeping order) only if a key itself resolves to something new."""
        renamed = False
        for k in obj:  # assigning to existing keys does not change the dict's size
            renamed |= self.resolve(k, path + (k,)) is not k
            obj[k] = self.resolve(obj[k], path + (k,))
        if renamed:
            self.budget.take(_construction_cost(dict, (obj,)), self.where(path))
            items = [(self.resolve(k, path + (k,)), v) for k, v in obj.items()]
            obj.clear()
            obj.update(items)


def _prescan(data: Any, name: str) -> None:
    """Walk the opcodes before unpickling, without building anything.

    CPython's unpickler sizes its memo table by the largest memo index it meets and allocates
    counted bytes/bytearrays before reading them, so a tiny pickle can demand gigabytes.
    Honest picklers number memo entries 0, 1, 2, ... and never declare more bytes than follow.
    """
    try:
        for count, (op, arg, _) in enumerate(pickletools.genops(io.BytesIO(data))):
            if op.name in ("PUT", "BINPUT", "LONG_BINPUT") and not (isinstance(arg, int) and 0 <= arg <= count):
                raise LimitExceededError(f"{name}: pickle memo index {arg} at opcode {count} is out of range")
    except ValueError as exc:
        if isinstance(exc, FormatError):
            raise
        if "exhausted" in str(exc) or "only" in str(exc):
            raise TruncatedError(f"{name}: pickle data ends early ({exc})") from None
        raise FormatError(f"{name}: not a valid pickle: {exc}") from None


def load_pickle(source: Source, *, max_ratio: float | None = None, max_bytes: int | None = None) -> Any:
    """Unpickle a legacy state dict / ``save_states`` file (path or bytes) without running code.

    Arrays come back writable and in native byte order. Any global outside
    :data:`ALLOWED_GLOBALS` raises :class:`~bpz.errors.FormatError` naming it. ``max_ratio`` /
    ``max_bytes`` override the expansion budget (see :mod:`._common`).
    """
    data, name = read_all(source)
    budget = ExpansionBudget(name, memoryview(data).nbytes, compressed=False,
                             max_ratio=max_ratio, max_bytes=max_bytes)
    with memory_guard(name):
        return _load(data, name, budget)


def _load(data: Any, name: str, budget: ExpansionBudget) -> Any:
    try:
        return _unpickle(data, name, budget)
    except FormatError as exc:  # raised inside pickle's machinery without the file's name
        if not str(exc).startswith(name):
            raise type(exc)(f"{name}: {exc}") from None
        raise


def _unpickle(data: Any, name: str, budget: ExpansionBudget) -> Any:
    try:
        with warnings.catch_warnings():  # protocol-0 string escapes in garbage warn; the error says enough
            warnings.simplefilter("ignore", DeprecationWarning)
            _prescan(data, name)
            loaded = _RestrictedUnpickler(io.BytesIO(data), name, budget).load()
    except FormatError:
        raise
    except EOFError:
        raise TruncatedError(f"{name}: pickle data ends early") from None
    except RecursionError:
        raise LimitExceededError(f"{name}: pickle nesting is too deep") from None
    except MemoryError:
        raise LimitExceededError(f"{name}: pickle asks for more memory than available") from None
    except Exception as exc:  # noqa: BLE001 - pickle raises many types for corrupt input
        msg = str(exc)
        if "truncated" in msg or "ran out of input" in msg.lower():
            raise TruncatedError(f"{name}: pickle data ends early ({msg})") from None
        raise FormatError(f"{name}: not a valid legacy pickle: {type(exc).__name__}: {msg}") from None
    try:
        return _Resolver(name, budget).resolve(loaded)
    except FormatError:
        raise
    except (TypeError, ValueError) as exc:  # e.g. an array used as a set member or dict key
        raise FormatError(f"{name}: not a valid legacy pickle: {exc}") from None
