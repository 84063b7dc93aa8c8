"""Restricted unpickler: loads every legacy pickle, refuses everything that could run code."""

from __future__ import annotations

import collections
import os
import pickle
import random

import ml_dtypes
import numpy as np
import pytest

from bpz._legacy import load_pickle
from bpz._legacy.safe_pickle import ALLOWED_GLOBALS
from bpz.errors import FormatError, LimitExceededError, TruncatedError

from conftest import FIXTURES, bounded, check_tree, file_sha256, sample_files

STATE_DICT_PICKLES = sample_files(lambda name, meta: name.endswith("state_dict.pkl"))
STATES_PICKLES = sample_files(lambda name, meta: name.endswith("states.pkl"))
try:  # numpy 2 / numpy 1
    from numpy._core.numeric import _frombuffer
except ImportError:
    from numpy.core.numeric import _frombuffer


@pytest.mark.parametrize("version, name, meta", STATE_DICT_PICKLES)
def test_state_dict_samples(version, name, meta):
    path = FIXTURES / version / name
    assert file_sha256(path) == meta["file_sha256"]
    check_tree(load_pickle(path), meta)


@pytest.mark.parametrize("version, name, meta", STATES_PICKLES)
def test_save_states_samples(version, name, meta):
    data = load_pickle(FIXTURES / version / name)
    check_tree(data, meta)  # the duplicate lists are plain unicode arrays here
    assert data["duplicate_keys"].dtype.kind == "U"


def test_bytes_source():
    path = FIXTURES / "brainpy-2.9.0" / "snn_state_dict.pkl"
    assert list(load_pickle(path.read_bytes())) == list(load_pickle(path))


PAYLOAD = {
    "f32": np.arange(6, dtype=np.float32).reshape(2, 3), "bool": np.array([True, False]),
    "i64_0d": np.array(-5), "c64": np.array([1 + 2j], dtype=np.complex64), "be": np.arange(3, dtype=">i4"),
    "fortran": np.asfortranarray(np.arange(6.0).reshape(2, 3)), "u": np.array(["LIF0.V", "x"]),
    "s": np.array([b"ab"]), "empty": np.zeros((0, 2), np.uint8), "bf16": np.array([1, 2], ml_dtypes.bfloat16),
    "scalars": (np.float32(2.5), np.int64(7), np.bool_(True), np.complex128(1j)),
    "od": collections.OrderedDict(b=1, a=[1.5, None]), "set": {1, 2}, "fs": frozenset({"x"}),
    "c": 3 - 4j, "bytes": b"\x00\xff", "ba": bytearray(b"zz"), "nested": {"a": {"b": {"c": [()]}}},
}


def _equal(a, b) -> None:
    assert type(a) is type(b), (type(a), type(b))
    if isinstance(a, np.ndarray):
        assert a.shape == b.shape and b.dtype == a.dtype.newbyteorder("=") and b.flags.writeable
        np.testing.assert_array_equal(a, b)
    elif isinstance(a, dict):
        assert list(a) == list(b)
        for k in a:
            _equal(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _equal(x, y)
    else:
        assert a == b and (not isinstance(a, np.generic) or a.dtype == b.dtype)


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_every_protocol_round_trips(protocol):
    _equal(PAYLOAD, load_pickle(pickle.dumps(PAYLOAD, protocol=protocol)))


def test_shared_and_cyclic_references_are_kept():
    arr = np.ones(3)
    loop: list = []
    loop.append(loop)
    out = load_pickle(pickle.dumps({"a": arr, "b": arr, "loop": loop}))
    assert out["a"] is out["b"] and out["loop"][0] is out["loop"]


# --- hostile pickles --------------------------------------------------------------------------

class Reduce:
    """Pickles as ``func(*args)``: how an attacker makes pickle.load call something."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def test_os_system_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    data = pickle.dumps({"x": np.ones(2), "evil": Reduce(os.system, f"touch {marker}")})
    with pytest.raises(FormatError, match=r"(posix|os)\.system.*not allowed"):
        load_pickle(data)
    assert not marker.exists()


@pytest.mark.parametrize("func, args", [
    (eval, ("1+1",)), (getattr, (1, "real")), (__import__, ("os",)), (open, ("/etc/passwd",)),
    (np.load, ("x.npy",)), (np.frombuffer, (b"abcd",)), (collections.namedtuple, ("T", "a")),
    (os.remove, ("x",)), (pickle.loads, (b"N.",)),
])
def test_other_callables_are_refused(func, args):
    with pytest.raises(FormatError, match="not allowed"):
        load_pickle(pickle.dumps(Reduce(func, *args)))


def test_ndarray_class_cannot_be_called():
    with pytest.raises(FormatError):  # np.ndarray((10**12,)) would allocate; it is not callable here
        load_pickle(pickle.dumps(Reduce(np.ndarray, (10**12,))))


@pytest.mark.parametrize("obj", [
    Reduce(bytearray, 10**12), Reduce(bytes, 10**12),                    # allocation bombs
    Reduce(_frombuffer, b"abcd", np.dtype("f4"), (10**9, 10**3), "C"),   # shape far over the bytes
    Reduce(_frombuffer, b"abcd", np.dtype("f4"), (1,), "K"),
])
def test_allocation_and_shape_bombs(obj):
    with bounded(), pytest.raises(FormatError):
        load_pickle(pickle.dumps(obj, protocol=4))


@pytest.mark.parametrize("arr", [
    np.array([1, "a"], dtype=object), np.zeros(2, dtype=[("a", "<f4")]), np.zeros(2, dtype="V4"),
    np.array(["2024-01-01"], dtype="datetime64[D]"), np.zeros(2, dtype=np.dtype("f4", metadata={"m": 1})),
])
def test_unsafe_or_unsupported_dtypes(arr):
    with pytest.raises(FormatError, match="dtype"):
        load_pickle(pickle.dumps({"a": arr}))


def test_codecs_only_latin1():
    import _codecs
    with pytest.raises(FormatError, match="rot13"):
        load_pickle(pickle.dumps(Reduce(_codecs.encode, "abc", "rot13")))


def test_persistent_ids_refused():
    class P(pickle.Pickler):
        def persistent_id(self, obj):
            return "ref" if isinstance(obj, str) and obj == "x" else None

    import io
    buf = io.BytesIO()
    P(buf).dump({"a": "x"})
    with pytest.raises(FormatError, match="persistent"):
        load_pickle(buf.getvalue())


def test_deep_nesting():
    depth = 100_000  # EMPTY_LIST x n, then APPEND x (n - 1): lists nested n deep
    with bounded(), pytest.raises(LimitExceededError, match="deep"):
        load_pickle(b"\x80\x02" + b"]" * depth + b"a" * (depth - 1) + b".")


def test_truncated_at_every_length():
    data = (FIXTURES / "brainpy-2.3.8" / "dup_states.pkl").read_bytes()
    with bounded():
        for n in range(len(data)):
            with pytest.raises(FormatError):
                load_pickle(data[:n])
    with pytest.raises(TruncatedError):
        load_pickle(data[:100])


def test_random_garbage():
    rng = random.Random(7)
    base = (FIXTURES / "brainpy-2.9.0" / "snn_state_dict.pkl").read_bytes()
    cases = [bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200))) for _ in range(200)]
    for _ in range(300):
        flipped = bytearray(base)
        flipped[rng.randrange(len(flipped))] = rng.randrange(256)
        cases.append(bytes(flipped))
    refused = 0
    with bounded(megabytes=64):
        for data in cases:
            try:
                load_pickle(data)
            except FormatError:
                refused += 1
    assert refused >= 200


@pytest.mark.parametrize("data", [
    b"\x80\x04N\x94r\x0f\xa3\x94RN.",            # LONG_BINPUT 1385465615: a 11 GB memo table
    b"\x80\x05\x96\xff\xff\xff\xff\x0f\x00\x00\x00ab.",   # BYTEARRAY8 declaring 64 GiB
    b"\x80\x04\x8e\xff\xff\xff\xff\x0f\x00\x00\x00ab.",   # BINBYTES8 declaring 64 GiB
    b"\x80\x04\x8d\xff\xff\xff\xff\x0f\x00\x00\x00ab.",   # BINUNICODE8 declaring 64 GiB
])
def test_declared_size_bombs(data):
    with bounded(), pytest.raises((LimitExceededError, TruncatedError)):
        load_pickle(data)


def test_allowlist_holds_no_dangerous_names():
    names = {f"{m}.{n}" for m, n in ALLOWED_GLOBALS}
    assert not {"builtins.eval", "builtins.exec", "builtins.getattr", "builtins.__import__", "os.system",
                "numpy.load", "numpy.frombuffer", "copyreg._reconstructor"} & names
    assert all(not callable(v) or v.__module__ != "builtins" or v in (dict, list, tuple, set, frozenset, complex)
               for v in ALLOWED_GLOBALS.values())
