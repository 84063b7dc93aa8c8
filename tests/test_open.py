"""bpz.open: lazy, memory-mapped, zero-copy access to one tensor or a row range."""

import gc
import json
import os
import pathlib
import shutil

import numpy as np
import pytest

import bpz
from bpz.errors import ChecksumError, NotZeroCopyError, TensorNotFoundError

VECTORS = pathlib.Path(__file__).parents[1] / "spec" / "vectors"


@pytest.fixture
def archive_path(tmp):
    rng = np.random.default_rng(2)
    tree = {
        "W": rng.standard_normal((300, 64)).astype(np.float32),
        "V": np.full((1000, 50), -65.0, np.float32),
        "spike": rng.random((1000, 37)) < 0.05,
        "step": 12,
    }
    path = os.path.join(tmp, "m.bpz")
    bpz.save_pytree(path, tree, verbose=False, chunk_size=4096, metadata={"epoch": 1})
    return path, tree


def test_raw_tensor_is_a_zero_copy_view_of_the_map(archive_path):
    path, tree = archive_path
    with bpz.open(path) as a:
        info = a.info("W")
        assert info.storage == "raw" and info.offset % 64 == 0
        w = a["W"]
    np.testing.assert_array_equal(w, tree["W"])
    assert not w.flags.writeable and not w.flags.owndata
    assert w.ctypes.data % 64 == 0
    base = w
    while getattr(base, "base", None) is not None and not isinstance(base.base, bpz._bpz.Buffer):
        base = base.base
    buffer = base.base
    assert isinstance(buffer, bpz._bpz.Buffer) and buffer.mapped and buffer.readonly
    # The view points into the file's mapping: the file's bytes at the tensor's offset.
    raw = open(path, "rb").read()
    assert raw[info.offset : info.offset + info.nbytes] == w.tobytes()
    # ... and stays valid after the archive is closed and the file replaced.
    os.replace(path + "", path + ".old")
    bpz.save_pytree(path, {"W": np.zeros(1)}, verbose=False)
    np.testing.assert_array_equal(w, tree["W"])


def test_compressed_tensor_decodes_and_slices(archive_path):
    path, tree = archive_path
    with bpz.open(path) as a:
        assert a.info("spike").storage == "chunked" and a.info("spike").chunks > 1
        np.testing.assert_array_equal(a["spike"], tree["spike"])
        s = a.get_slice("spike")
        assert len(s) == 1000 and s.shape == (1000, 37)
        np.testing.assert_array_equal(s[123:456], tree["spike"][123:456])
        np.testing.assert_array_equal(s[-3:], tree["spike"][-3:])
        np.testing.assert_array_equal(s[17], tree["spike"][17])
        np.testing.assert_array_equal(s[10:40:7], tree["spike"][10:40:7])
        np.testing.assert_array_equal(s[5:9, 2:4], tree["spike"][5:9, 2:4])
        np.testing.assert_array_equal(s[40:10:-3], tree["spike"][40:10:-3])
        assert s[500:500].shape == (0, 37)
        with pytest.raises(IndexError):
            s[1000]
        with pytest.raises(NotZeroCopyError):
            a._native().view("spike")


def test_mapping_protocol_metadata_tree_and_load(archive_path):
    path, tree = archive_path
    with bpz.open(path) as a:
        assert len(a) == 3 and "W" in a and "nope" not in a and sorted(a) == ["V", "W", "spike"]
        assert a.metadata == {"epoch": 1}
        assert a.version == (1, 1) == bpz.FORMAT_VERSION and a.writer["name"] == "bpz-python"
        lazy = a.tree()
        assert lazy["step"] == 12 and not lazy["W"].flags.writeable
        full = a.load()
        assert full["W"].flags.writeable
        np.testing.assert_array_equal(full["V"], tree["V"])
        assert a.verify()["tensors"] == 3
        assert a.verify("spike")["tensors"] == 1
        with pytest.raises(TensorNotFoundError) as e:
            a["nope"]
        assert isinstance(e.value, KeyError) and "nope" in str(e.value)
    with pytest.raises(ValueError, match="closed"):
        a["W"]


def test_pread_backend_reads_the_same_without_views(archive_path):
    path, tree = archive_path
    with bpz.open(path, backend="pread") as a:
        w = a["W"]
        assert w.flags.writeable  # a copy: no map to view
        np.testing.assert_array_equal(w, tree["W"])
        np.testing.assert_array_equal(a.get_slice("V")[10:20], tree["V"][10:20])
    with pytest.raises(ValueError, match="backend"):
        bpz.open(path, backend="nfs")


def test_corruption_in_a_raw_tensor_is_caught_by_verify_and_copies(tmp):
    path = os.path.join(tmp, "c.bpz")
    shutil.copy(VECTORS / "invalid" / "raw_data_bitflip.bpz", path)
    with bpz.open(path) as a:
        a["net/l1/W"]  # a zero-copy view is not checked: opening stays O(index)
        with pytest.raises(ChecksumError, match="net/l1/W"):
            a.read("net/l1/W")
        with pytest.raises(ChecksumError, match=r"c\.bpz"):
            a.verify()
    with pytest.raises(ChecksumError):
        bpz.load_pytree(path)


def test_golden_vectors_load_through_python():
    for path in sorted(VECTORS.glob("*.bpz")):
        expected = json.loads(path.with_suffix(".json").read_text())
        with bpz.open(path) as a:
            assert a.keys() == [t["name"] for t in expected["tensors"]]
            for t in expected["tensors"]:
                arr = a.read(t["name"])
                assert list(arr.shape) == t["shape"]
                import hashlib

                assert hashlib.sha256(arr.tobytes()).hexdigest() == t["sha256"], (path.name, t["name"])
            if expected["tree"] is not None:
                a.load()


@pytest.mark.parametrize("compression", [None, "zstd"])
def test_large_loaded_arrays_are_owned_writable_and_outlive_the_file(tmp, compression):
    # Outputs of 4 MiB and more live in their own (huge-page advised) maps, not the heap.
    rng = np.random.default_rng(7)
    tree = {"big": rng.standard_normal((1536, 1024)).astype(np.float32), "small": np.arange(10, dtype=np.int16)}
    path = pathlib.Path(tmp) / "large.bpz"
    bpz.save_pytree(path, tree, compression=compression, verbose=False)
    with bpz.open(path) as a:
        copy = a.read("big")
    loaded = bpz.load_pytree(path)
    path.unlink()
    for arr in (copy, loaded["big"]):
        assert arr.flags.writeable and arr.flags.owndata is False
        np.testing.assert_array_equal(arr, tree["big"])
        arr[0, 0] = 42.0
        assert arr[0, 0] == 42.0
    np.testing.assert_array_equal(loaded["small"], tree["small"])
    del loaded
    gc.collect()
    np.testing.assert_array_equal(copy[1:], tree["big"][1:])
