"""save_pytree / load_pytree through the public API: structure, leaves, errors."""

import collections
import os
import pathlib
import subprocess
import sys

import ml_dtypes
import numpy as np
import pytest

import bpz
from bpz.errors import CheckpointNotFoundError, InvalidCheckpointPath

Point = collections.namedtuple("Point", ["x", "y"])


def rich_tree():
    rng = np.random.default_rng(0)
    return {
        "net": {
            "l1": {"W": rng.standard_normal((4, 3)).astype(np.float32), "b": np.zeros(3, np.float64)},
            "E/I": [np.arange(5, dtype=np.int16), (np.bool_(True), None)],
        },
        7: "seven",
        (1, "a"): 1.5,
        "point": Point(np.float32(2.5), np.array([1 + 2j], np.complex64)),
        "ordered": collections.OrderedDict([("z", 1), ("a", 2)]),
        "scalars": [True, False, 0, -(2**70), 2**53, 3.25, float("inf"), float("-inf"), 1e-310, complex(1, -2), "ü/~", b"\x00\xff"],
        "empty": {"d": {}, "l": [], "t": (), "a": np.zeros((0, 3), np.float32)},
        "half": np.arange(4, dtype=np.float16),
        "bf16": np.arange(4, dtype=ml_dtypes.bfloat16),
        "f8": np.array([0.5, 1, 2], dtype=ml_dtypes.float8_e4m3fn),
        "f8b": np.array([0.5, 1, 2], dtype=ml_dtypes.float8_e5m2),
        "u64": np.array([2**64 - 1], np.uint64),
        "c128": np.array([[1 + 1j]], np.complex128),
        "0d": np.array(3.0),
    }


def assert_same(a, b, path="target"):
    assert type(a) is type(b) or (isinstance(a, tuple) and hasattr(a, "_fields")), f"{path}: {type(a)} vs {type(b)}"
    if isinstance(a, dict):
        assert list(a.keys()) == list(b.keys()), path
        for k in a:
            assert_same(a[k], b[k], f"{path}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        if hasattr(a, "_fields"):
            assert type(a).__name__ == type(b).__name__ and a._fields == b._fields
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{path}[{i}]")
    elif isinstance(a, (np.ndarray, np.generic)):
        assert a.dtype == b.dtype and a.shape == b.shape, path
        assert a.tobytes() == b.tobytes(), path
    elif isinstance(a, complex):
        assert_same(a.real, b.real, path + ".real")
        assert_same(a.imag, b.imag, path + ".imag")
    elif isinstance(a, float) and a != a:
        assert b != b, path
    else:
        assert a == b, path


def test_rich_tree_round_trips_faithfully(tmp):
    tree = rich_tree()
    path = os.path.join(tmp, "m.bpz")
    assert bpz.save_pytree(path, tree, verbose=False) == path
    loaded = bpz.load_pytree(path)
    assert_same(tree, loaded)
    assert isinstance(loaded["point"].x, np.float32)  # a NumPy scalar stays a scalar
    assert loaded["net"]["l1"]["W"].flags.writeable


@pytest.mark.parametrize("compression", ["auto", "zstd", None])
def test_every_compression_mode_round_trips(tmp, compression):
    tree = rich_tree()
    path = os.path.join(tmp, "m.bpz")
    bpz.save_pytree(path, tree, verbose=False, compression=compression, chunk_size=8)
    assert_same(tree, bpz.load_pytree(path, parallel=False))
    assert_same(tree, bpz.load_pytree(path, parallel=True))


def test_non_contiguous_and_big_endian_inputs_are_stored_correctly(tmp):
    base = np.arange(24, dtype=np.int32).reshape(4, 6)
    tree = {"strided": base[:, ::2], "fortran": np.asfortranarray(base), "big": base.astype(">i4"), "bigf": np.array([1.5, -2], ">f8")}
    path = os.path.join(tmp, "m.bpz")
    bpz.save_pytree(path, tree, verbose=False)
    out = bpz.load_pytree(path)
    np.testing.assert_array_equal(out["strided"], base[:, ::2])
    np.testing.assert_array_equal(out["fortran"], base)
    np.testing.assert_array_equal(out["big"], base)
    assert out["big"].dtype == np.dtype("<i4")
    np.testing.assert_array_equal(out["bigf"], [1.5, -2])


def test_brainpy_call_semantics(tmp, capsys):
    target = {"a": np.ones(2)}
    nested = pathlib.Path(tmp) / "new" / "dir" / "noext"
    ret = bpz.save_pytree(nested, target)
    assert ret == str(nested) and os.path.exists(nested)  # PathLike accepted, no suffix added, dirs created
    assert capsys.readouterr().out == f"Saving checkpoint into {nested}\n"
    bpz.save_pytree(nested, target, verbose=False)
    assert capsys.readouterr().out == ""
    before = nested.read_bytes()
    with pytest.raises(InvalidCheckpointPath, match=f'Invalid checkpoint at "{nested}".'):
        bpz.save_pytree(nested, {"b": np.zeros(1)}, overwrite=False, verbose=False)
    assert nested.read_bytes() == before


def test_missing_file_is_file_not_found_and_value_error(tmp):
    path = os.path.join(tmp, "nope.bpz")
    with pytest.raises(CheckpointNotFoundError) as info:
        bpz.load_pytree(path)
    assert isinstance(info.value, FileNotFoundError) and isinstance(info.value, ValueError)
    assert str(info.value) == f"Checkpoint not found: {path}"


@pytest.mark.parametrize(
    "bad, what",
    [
        ({"s": {1, 2}}, "set"),
        ({"o": object()}, "object"),
        ({"arr": np.array([object()])}, "dtype object"),
        ({"arr": np.array(["a"])}, "dtype <U1"),
        ({"arr": np.zeros(2, dtype=[("a", "i4")])}, "dtype"),
        ({"arr": np.array(["2020-01-01"], dtype="datetime64[D]")}, "datetime64"),
        ({frozenset(): 1}, "dict key"),
    ],
)
def test_unsupported_leaves_raise_type_error_naming_the_path(tmp, bad, what):
    path = os.path.join(tmp, "m.bpz")
    with pytest.raises(TypeError) as info:
        bpz.save_pytree(path, {"outer": [bad]}, verbose=False)
    assert what in str(info.value)
    assert "target['outer'][0]" in str(info.value)
    assert not os.path.exists(path)


def test_cycles_and_excessive_depth_are_refused(tmp):
    cyc = {"a": []}
    cyc["a"].append(cyc)
    with pytest.raises(ValueError, match="cycle"):
        bpz.save_pytree(os.path.join(tmp, "c.bpz"), cyc, verbose=False)
    deep = x = {}
    for _ in range(60):
        x["k"] = {}
        x = x["k"]
    with pytest.raises(ValueError, match="nested more than"):
        bpz.save_pytree(os.path.join(tmp, "d.bpz"), deep, verbose=False)


def test_objects_with_value_are_saved_as_their_value(tmp):
    class Variable:
        def __init__(self, v):
            self.value = v

    path = os.path.join(tmp, "m.bpz")
    bpz.save_pytree(path, {"V": Variable(np.arange(3.0)), "nested": Variable({"x": np.ones(2)})}, verbose=False)
    out = bpz.load_pytree(path)
    np.testing.assert_array_equal(out["V"], [0, 1, 2])
    np.testing.assert_array_equal(out["nested"]["x"], [1, 1])


def test_metadata_is_stored_and_validated(tmp):
    path = os.path.join(tmp, "m.bpz")
    bpz.save_pytree(path, {"a": np.ones(1)}, verbose=False, metadata={"epoch": 3, "acc": 0.875, "tags": ["x"]})
    with bpz.open(path) as a:
        assert a.metadata == {"epoch": 3, "acc": 0.875, "tags": ["x"]}
    with pytest.raises(TypeError, match="JSON"):
        bpz.save_pytree(path, {"a": np.ones(1)}, verbose=False, metadata={"bad": float("nan")})


def test_colliding_names_get_unique_suffixes(tmp):
    path = os.path.join(tmp, "m.bpz")
    tree = {1: np.ones(1), "1": np.zeros(1), "a/b": np.ones(2), "a": {"b": np.zeros(2)}}
    bpz.save_pytree(path, tree, verbose=False)
    with bpz.open(path) as a:
        assert a.keys() == ["1", "1~2", "a~1b", "a/b"]
    assert_same(tree, bpz.load_pytree(path))


def test_bad_arguments_are_clear(tmp):
    path = os.path.join(tmp, "m.bpz")
    with pytest.raises(ValueError, match="compression must be"):
        bpz.save_pytree(path, {}, verbose=False, compression="gzip")
    with pytest.raises(ValueError, match="zstd level 99"):
        bpz.save_pytree(path, {"a": np.ones(1)}, verbose=False, level=99)
    with pytest.raises(ValueError, match="chunk_size"):
        bpz.save_pytree(path, {}, verbose=False, chunk_size=0)
    assert not os.path.exists(path)


def test_a_failing_write_keeps_the_previous_file(tmp):
    """A save that hits the file-size limit (like a full disk) fails cleanly."""
    path = os.path.join(tmp, "m.bpz")
    bpz.save_pytree(path, {"old": np.arange(10)}, verbose=False)
    before = open(path, "rb").read()
    script = f"""
import resource, signal, numpy as np, bpz
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
try:
    bpz.save_pytree({path!r}, {{"new": np.ones(1 << 20)}}, verbose=False, compression=None)
except OSError as e:
    print("OSError", e.errno)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert "OSError 27" in out.stdout, out.stderr  # EFBIG
    assert open(path, "rb").read() == before
    assert os.listdir(tmp) == ["m.bpz"], "temporary file left behind"


def test_auto_compression_keeps_dense_weights_mappable_and_shrinks_state(tmp):
    rng = np.random.default_rng(1)
    n = 1 << 18
    tree = {
        "W": rng.standard_normal(n).astype(np.float32),
        "spike": rng.random(n) < 0.02,
        "t_last_spike": np.full(n, -1e7, np.float32),
        "indices": np.sort(rng.integers(0, 10**6, n)).astype(np.int32),
    }
    path = os.path.join(tmp, "m.bpz")
    bpz.save_pytree(path, tree, verbose=False)
    with bpz.open(path) as a:
        info = {i.name: i for i in a.infos()}
    assert info["W"].storage == "raw"
    assert info["spike"].storage == "chunked" and info["spike"].filter == "bitpack"
    assert info["t_last_spike"].compression_ratio > 100
    assert info["indices"].filter == "delta_shuffle" and info["indices"].compression_ratio > 2
    assert_same(tree, bpz.load_pytree(path))


def test_legacy_brainpy_file_is_detected_and_read(tmp):
    here = pathlib.Path(__file__).parent / "fixtures" / "brainpy-2.9.0" / "snn_checkpoint.bp"
    out = bpz.load_pytree(here)
    assert isinstance(out, dict) and out


def test_garbage_is_rejected_with_a_clear_error(tmp):
    path = os.path.join(tmp, "x.bpz")
    with open(path, "wb") as f:
        f.write(b"hello world, not an archive")
    with pytest.raises(bpz.FormatError, match="neither a bpz archive nor a BrainPy"):
        bpz.load_pytree(path)
