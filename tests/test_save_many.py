"""Saving many tensors: the batch entry point of the native writer
(``Writer.add_tensors``), the tree set from Python objects (``Writer.set_tree``)
and the save path built on them. The bytes on disk must be exactly those of the
one-tensor-at-a-time path."""

from __future__ import annotations

import gc
import os
import signal
import threading

import ml_dtypes
import numpy as np
import pytest

import bpz
from bpz import _bpz
from bpz.pytree import flatten
from bpz.write import write_archive

from file_bytes import without_write_time
from stored_json import assert_stored_as_json, write_tree

DTYPES = [np.float32, np.float64, np.float16, ml_dtypes.bfloat16, np.int8, np.int16, np.int32, np.int64, np.uint8,
          bool, np.complex64, ml_dtypes.float8_e4m3fn]


def many_small(n: int = 240, seed: int = 0) -> dict:
    """A W3-like tree: small arrays of mixed dtypes, 0-d to 64x64, some constant
    (compressible: AUTO compresses those of 4 KiB or more), some empty."""
    rng = np.random.default_rng(seed)
    groups: dict = {}
    for i in range(n):
        dt = np.dtype(DTYPES[i % len(DTYPES)])
        shape = tuple(int(x) for x in rng.integers(1, 65, size=int(rng.integers(0, 3))))
        if i % 7 == 3:
            a = np.zeros(shape, dt)
        elif dt == np.bool_:
            a = rng.random(shape) < 0.3
        elif dt.kind in "iu":
            a = rng.integers(-100, 100, size=shape).astype(dt)
        elif dt.kind == "c":
            a = (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(dt)
        else:
            a = rng.standard_normal(shape).astype(np.float32).astype(dt)
        groups.setdefault(f"group_{i // 50}", {})[f"v{i:03d}"] = a
    groups["empty"] = np.zeros((0, 3), np.float32)
    groups["scalar"] = np.float32(1.5)
    groups["odd/key~"] = [np.arange(3), "text", 7]
    return {"state": groups}


def per_tensor(path: str, tree: object, **opts: object) -> None:
    """The reference: one ``add_tensors`` call per leaf, each with its shape given."""
    t, leaves = flatten(tree)
    w = _bpz.Writer(path, sync=False, **opts)  # type: ignore[arg-type]
    for leaf in leaves:
        assert w.add_tensors([(leaf.name, leaf.dtype, list(leaf.array.shape), leaf.array)]) == 1
    w.set_tree(t)
    w.finish()


def read(path: str) -> bytes:
    """The file's bytes but for the time it was written."""
    with open(path, "rb") as f:
        return without_write_time(f.read())


@pytest.mark.parametrize("compression", ["auto", "zstd", None])
def test_batch_save_is_byte_identical_to_the_per_tensor_path(tmp, compression):
    tree = many_small()
    a, b, c = (os.path.join(tmp, name) for name in ("batch.bpz", "single.bpz", "shapes.bpz"))
    bpz.save_pytree(a, tree, verbose=False, compression=compression, sync=False)
    per_tensor(b, tree, compression=compression)
    # Explicit shapes and the arrays' own (None) give the same file too.
    t, leaves = flatten(tree)
    w = _bpz.Writer(c, sync=False, compression=compression)
    assert w.add_tensors([(leaf.name, leaf.dtype, list(leaf.array.shape), leaf.array) for leaf in leaves]) == len(leaves)
    w.set_tree(t)
    w.finish()
    assert read(a) == read(b) == read(c)
    loaded = bpz.load_pytree(a)
    for name, group in tree["state"].items():
        if isinstance(group, dict):
            for key, arr in group.items():
                got = loaded["state"][name][key]
                assert got.dtype == arr.dtype and got.shape == arr.shape and got.tobytes() == arr.tobytes(), key


def test_set_tree_stores_the_json_value_of_the_tree(tmp):
    tree = {
        "dict": [["a", {"tensor": "x"}], [{"int": "123"}, {"float": "nan"}]],
        "ints": [0, -1, 2**53, -(2**63), 2**63, 2**64 - 1, 2**64 + 5, -(2**64) - 3],
        "floats": [0.1, 2.0, -0.0, 1e-310, 1.7976931348623157e308, 5e-324],
        "text": ["", "ü/~", "\u2603", "tab\tquote\"back\\slash", "\x00nul"],
        "tuple": (1, (2, [3]), None, True, False),
        "nested": {"a": {"b": {"c": []}}, "": {}},
    }
    got = assert_stored_as_json(write_tree(os.path.join(tmp, "obj.bpz"), tree), tree)
    assert [type(v) for v in got["ints"]] == [int] * 6 + [float] * 2
    assert str(got["floats"][2]) == "-0.0"


@pytest.mark.parametrize(
    "bad,error,match",
    [
        ({"x": float("nan")}, ValueError, "not JSON compliant"),
        ({"x": float("inf")}, ValueError, "not JSON compliant"),
        ({1: "int key"}, TypeError, "keys must be str"),
        ({"x": {1, 2}}, TypeError, "not set"),
        ({"x": b"bytes"}, TypeError, "not bytes"),
    ],
)
def test_set_tree_refuses_what_json_cannot_hold(tmp, bad, error, match):
    w = _bpz.Writer(os.path.join(tmp, "m.bpz"))
    with pytest.raises(error, match=match):
        w.set_tree(bad)
    w.abort()


def test_set_tree_refuses_a_tree_that_contains_itself(tmp):
    cyclic: list = []
    cyclic.append(cyclic)
    w = _bpz.Writer(os.path.join(tmp, "m.bpz"))
    with pytest.raises(ValueError, match="levels deep"):
        w.set_tree({"a": cyclic})
    w.abort()
    assert os.listdir(tmp) == []


class InterfaceOnly:
    """An object that describes its memory only through ``__array_interface__``."""

    def __init__(self, arr: np.ndarray) -> None:
        self._arr = arr
        self.__array_interface__ = arr.__array_interface__


def test_add_tensors_takes_arrays_buffers_and_array_interfaces(tmp):
    path = os.path.join(tmp, "m.bpz")
    f32 = np.arange(12, dtype=np.float32).reshape(3, 4)
    bf16 = np.arange(6, dtype=ml_dtypes.bfloat16).reshape(2, 3)
    zeros = np.zeros((64, 64), np.float32)
    w = _bpz.Writer(path, compression=None)
    n = w.add_tensors(
        [
            ("bytes", "I32", (2,), np.array([7, -7], "<i4").tobytes()),
            ("bytearray", "U8", [3], bytearray(b"\x01\x02\x03")),
            ("memoryview", "F32", None, memoryview(f32)),
            ("array", "F32", None, f32),
            ("scalar", "F64", None, np.asarray(np.float64(2.5))),
            ("bf16", "BF16", None, bf16),
            ("interface", "F32", None, InterfaceOnly(f32)),
            ("empty", "F32", None, np.zeros((0, 5), np.float32)),
            ("read-only", "I32", None, np.frombuffer(np.array([1, 2, 3], "<i4").tobytes(), "<i4")),
            ("zstd", "F32", None, zeros, {"compression": "zstd", "level": 3}),
            ("no options", "F32", (64, 64), zeros, None),
        ]
    )
    assert n == 11
    w.finish()
    with bpz.open(path) as a:
        assert a["bytes"].tolist() == [7, -7]
        assert a["bytearray"].tolist() == [1, 2, 3]
        for name in ("memoryview", "array", "interface"):
            assert a[name].shape == (3, 4) and np.array_equal(a[name], f32)
        assert a["scalar"].shape == () and a["scalar"] == 2.5
        assert a["bf16"].dtype == bf16.dtype and np.array_equal(a["bf16"], bf16)
        assert a["empty"].shape == (0, 5)
        assert a["read-only"].tolist() == [1, 2, 3]
        infos = {i.name: i for i in a.infos()}
        assert infos["zstd"].storage == "chunked" and infos["no options"].storage == "raw"


# Items that can't be read are refused before anything is written ("read");
# tensors the writer refuses stop the batch there, after the ones before ("write").
@pytest.mark.parametrize(
    "item,error,match,stage",
    [
        (("t", "F64", None, np.asfortranarray(np.ones((3, 4)))), ValueError, 'tensor "t".*C-contiguous', "read"),
        (("t", "F64", None, np.ones((4, 4))[:, ::2]), ValueError, 'tensor "t".*C-contiguous', "read"),
        (("t", "F64", None, [1.0, 2.0]), TypeError, 'tensor "t".*array or bytes-like', "read"),
        (("t", "F32", None, b"\x00" * 8), ValueError, 'tensor "t".*pass the shape', "read"),
        (("t", "F33", None, np.ones(2)), ValueError, 'tensor "t".*unknown bpz dtype', "read"),
        (("t", "F64", (-1,), np.ones(2)), TypeError, 'tensor "t".*shape', "read"),
        (("t", "F64", "ab", np.ones(2)), TypeError, 'tensor "t".*shape', "read"),
        (("t", "F64", None, np.ones(2), {"codec": "zstd"}), TypeError, 'tensor "t".*unknown option', "read"),
        (("t", "F64", None, np.ones(2), {"compression": "gzip"}), ValueError, 'tensor "t".*compression must be', "read"),
        (("t", "F64", None), TypeError, "item 1 must be a tuple", "read"),
        (["t", "F64", None, np.ones(2)], TypeError, "item 1 must be a tuple", "read"),
        ((b"t", "F64", None, np.ones(2)), TypeError, "item 1: the name must be a str", "read"),
        (("t", "F64", (3,), np.ones(2)), ValueError, 'tensor "t".*16 bytes given', "write"),
        (("t", "F64", None, np.ones(2), {"filter": "bitpack"}), ValueError, 'tensor "t".*bitpack', "write"),
        (("t", "F64", None, np.ones(2), {"level": 99}), ValueError, 'tensor "t".*zstd level 99', "write"),
        (("t", "BOOL", None, np.array([0, 2], np.uint8)), ValueError, 'tensor "t".*BOOL byte 1 is 2', "write"),
        (("ok", "F64", None, np.ones(2)), ValueError, '"ok" was already added', "write"),
    ],
)
def test_add_tensors_names_the_tensor_it_refuses(tmp, item, error, match, stage):
    path = os.path.join(tmp, "m.bpz")
    w = _bpz.Writer(path, compression="zstd")
    with pytest.raises(error, match=match):
        w.add_tensors([("ok", "F64", None, np.ones(2)), item, ("after", "F64", None, np.ones(2))])
    w.finish()
    with bpz.open(path) as a:
        assert a.keys() == ([] if stage == "read" else ["ok"])


def test_an_error_in_the_middle_of_a_save_keeps_the_previous_file(tmp):
    path = os.path.join(tmp, "m.bpz")
    bpz.save_pytree(path, many_small(60, seed=1), verbose=False)
    before = read(path)
    tree = many_small(400, seed=2)
    # A bool array whose bytes are not 0/1 (a uint8 view): refused by the writer, mid-batch.
    tree["state"]["group_3"]["bad"] = np.array([0, 1, 5, 1], np.uint8).view(bool)
    with pytest.raises(ValueError, match='"state/group_3/bad".*BOOL byte 2 is 5'):
        bpz.save_pytree(path, tree, verbose=False)
    assert read(path) == before
    assert os.listdir(tmp) == ["m.bpz"], "temporary file left behind"


def test_progress_reports_the_bytes_written_until_all_are(tmp):
    big = np.zeros(24 << 20, np.uint8)  # 3 x 24 MiB: over the 64 MiB reporting step
    tree = {"a": big, "b": big.copy(), "small": many_small(30), "c": big.copy()}
    calls: list[tuple[int, int]] = []
    t, leaves = flatten(tree)
    total = sum(leaf.array.nbytes for leaf in leaves)
    write_archive(os.path.join(tmp, "m.bpz"), t, leaves, compression="zstd", progress=lambda d, n: calls.append((d, n)))
    assert len(calls) >= 2
    assert calls[-1] == (total, total)
    assert all(n == total for _, n in calls)
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)


def test_an_exception_from_progress_aborts_the_save(tmp):
    path = os.path.join(tmp, "m.bpz")

    def progress(done: int, total: int) -> None:
        raise KeyboardInterrupt

    t, leaves = flatten(many_small(30))
    with pytest.raises(KeyboardInterrupt):
        write_archive(path, t, leaves, progress=progress)
    assert os.listdir(tmp) == []


class Interrupted(Exception):
    pass


@pytest.mark.skipif(not hasattr(signal, "SIGUSR1"), reason="needs SIGUSR1")
def test_a_signal_interrupts_a_long_batch(tmp):
    """The GIL is released for the whole batch, yet a signal handler (Ctrl-C)
    still runs between tensors and stops it."""
    data = np.random.default_rng(0).integers(0, 256, 16 << 20, dtype=np.uint8)  # incompressible
    names = [f"t{i}" for i in range(10)]
    first_report = threading.Event()

    def send() -> None:
        first_report.wait(30)
        os.kill(os.getpid(), signal.SIGUSR1)

    def handler(signum: int, frame: object) -> None:
        raise Interrupted

    previous = signal.signal(signal.SIGUSR1, handler)
    sender = threading.Thread(target=send)
    sender.start()
    path = os.path.join(tmp, "m.bpz")
    w = _bpz.Writer(path, compression="zstd")
    try:
        with pytest.raises(Interrupted):
            w.add_tensors([(n, "U8", None, data) for n in names], progress=lambda d, t: first_report.set())
    finally:
        first_report.set()
        sender.join()
        signal.signal(signal.SIGUSR1, previous)
    w.finish()
    with bpz.open(path) as a:
        assert 1 <= len(a.keys()) < len(names)


@pytest.mark.parametrize("enabled", [True, False])
def test_save_restores_the_garbage_collector_state(tmp, enabled):
    was = gc.isenabled()
    try:
        gc.enable() if enabled else gc.disable()
        bpz.save_pytree(os.path.join(tmp, "m.bpz"), many_small(30), verbose=False)
        assert gc.isenabled() == enabled
        with pytest.raises(TypeError):
            bpz.save_pytree(os.path.join(tmp, "m.bpz"), {"x": object()}, verbose=False)
        assert gc.isenabled() == enabled
    finally:
        gc.enable() if was else gc.disable()
