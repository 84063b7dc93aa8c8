"""BrainPy ``.bp`` (flax msgpack) reader and writer: real files, hostile files, round trips."""

from __future__ import annotations

import collections
import random
import sys

import ml_dtypes
import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from bpz._legacy import bp_msgpack, is_bp_file, read_bp, write_bp
from bpz.errors import FormatError, LimitExceededError, TruncatedError

from conftest import FIXTURES, VERSIONS, bounded, check_tree, file_sha256, sample_files

BP_FILES = sample_files(lambda name, meta: name.endswith(".bp"))
ALL_SAMPLES = sorted(p for v in VERSIONS for p in (FIXTURES / v).iterdir() if p.name != "manifest.json")


def ext(code: int, payload: bytes) -> bytes:
    return msgpack.packb(msgpack.ExtType(code, payload))


def ext_array(shape: list, dtype: str, data: bytes, code: int = 1) -> bytes:
    return ext(code, msgpack.packb([shape, dtype, data], use_bin_type=True))


def bp_map(**items: bytes) -> bytes:
    """A msgpack map whose values are already-encoded msgpack bytes."""
    return bytes((0x80 | len(items),)) + b"".join(msgpack.packb(k) + v for k, v in items.items())


# --- the real files -------------------------------------------------------------------------

@pytest.mark.parametrize("version, name, meta", BP_FILES)
def test_sample_matches_manifest(version, name, meta):
    path = FIXTURES / version / name
    assert file_sha256(path) == meta["file_sha256"]
    check_tree(read_bp(path), meta)


@pytest.mark.parametrize("version, name, meta", BP_FILES)
def test_bytes_source_equals_path_source(version, name, meta):
    path = FIXTURES / version / name
    check_tree(read_bp(path.read_bytes()), meta)
    check_tree(read_bp(str(path)), meta)


@pytest.mark.parametrize("version, name, meta", BP_FILES)
def test_rewrite_is_byte_identical(tmp_path, version, name, meta):
    """write_bp reproduces BrainPy's own bytes (chunked.bp was saved with a 64-byte threshold)."""
    original = (FIXTURES / version / name).read_bytes()
    out = write_bp(tmp_path / "x.bp", read_bp(original), max_chunk_bytes=64 if name == "chunked.bp" else 2**30)
    assert out == str(tmp_path / "x.bp")
    assert (tmp_path / "x.bp").read_bytes() == original


def test_chunked_sample_is_rebuilt_into_one_array():
    raw = msgpack.unpackb((FIXTURES / "brainpy-2.9.0" / "chunked.bp").read_bytes(), raw=False)
    assert raw["big"][bp_msgpack.CHUNK_MARKER] is True and len(raw["big"]["chunks"]) == 3
    big = read_bp(FIXTURES / "brainpy-2.9.0" / "chunked.bp")["big"]
    np.testing.assert_array_equal(big, np.arange(40, dtype=np.float32).reshape(4, 10))


def test_complex_in_both_encodings():
    new = read_bp(FIXTURES / "brainpy-2.9.0" / "leaf_types.bp")["complex"]
    old = read_bp(FIXTURES / "brainpy-2.3.8" / "leaf_types.bp")["complex"]
    assert type(new) is complex and type(old) is np.complex128 and new == old == 1 + 2j


@pytest.mark.parametrize("path", ALL_SAMPLES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_is_bp_file_sniffs_samples(path):
    expected = path.suffix == ".bp"
    assert is_bp_file(path) is expected
    assert is_bp_file(path.read_bytes()[:16]) is expected


@pytest.mark.parametrize("head, expected", [
    (b"", False), (b"\x80", True), (b"\x80\x00", False), (b"\x81\xa1a\x01", True), (b"\x81\x01\x01", False),
    (b"\xde\x00\x01\xa1a", True), (b"\xd6\x01abcd", True), (b"\xd6\x09abcd", False),
    (b"\xc7\x03\x01abc", True), (b"BPZ\x00", False), (b"PK\x03\x04", False), (b"\x89HDF", False),
])
def test_is_bp_file_heads(head, expected):
    assert is_bp_file(head) is expected


def test_is_bp_file_missing_path(tmp_path):
    assert is_bp_file(tmp_path / "missing.bp") is False


# --- hostile inputs --------------------------------------------------------------------------

@pytest.mark.parametrize("version", VERSIONS)
def test_truncated_at_every_length(version):
    data = (FIXTURES / version / "leaf_types.bp").read_bytes()
    with bounded():
        for n in range(len(data)):
            with pytest.raises(TruncatedError, match="bytes in memory"):
                read_bp(data[:n])


def test_truncated_file_names_the_file(tmp_path):
    path = tmp_path / "cut.bp"
    path.write_bytes((FIXTURES / "brainpy-2.9.0" / "snn_checkpoint.bp").read_bytes()[:700])
    with pytest.raises(TruncatedError, match="cut.bp"):
        read_bp(path)


def test_huge_shape_tiny_buffer(tmp_path):
    path = tmp_path / "bomb.bp"
    path.write_bytes(bp_map(net=bp_map(w=ext_array([2**40, 2**20], "float32", b"abcd"))))
    with bounded(), pytest.raises(FormatError) as info:
        read_bp(path)
    assert "bomb.bp" in str(info.value) and "['net', 'w']" in str(info.value)
    assert "needs" in str(info.value)


@pytest.mark.parametrize("shape", [[-1], [1.5], ["3"], [True], [2**64 - 1], [0, 2**62], [1] * 65, 7, None])
def test_bad_shapes(shape):
    with bounded(), pytest.raises(FormatError):
        read_bp(bp_map(a=ext_array(shape, "float32", b"")))


@pytest.mark.parametrize("dtype", ["O", "|O", "object", "O8", "V8", "void", "<f4", "f4,f4", "[('a', '<f4')]",
                                   "os.system", "numpy.dtype", "float32 ", "str0", "str33", "", "float96x"])
def test_bad_dtype_strings(dtype):
    with bounded(), pytest.raises(FormatError, match="dtype"):
        read_bp(bp_map(a=ext_array([1], dtype, b"\x00" * 8)))


def test_dtype_of_wrong_type():
    with pytest.raises(FormatError):
        read_bp(bp_map(a=ext_array([1], 5, b"\x00")))  # type: ignore[arg-type]


@pytest.mark.parametrize("depth, error", [(bp_msgpack.MAX_NESTING_DEPTH + 5, LimitExceededError),
                                          (5000, LimitExceededError)])
def test_deep_nesting(depth, error):
    data = b"\x81\xa1a" * depth + b"\xc0"
    with bounded(), pytest.raises(error, match="deep"):
        read_bp(data)


def test_nesting_just_under_the_limit_loads():
    tree = read_bp(b"\x81\xa1a" * (bp_msgpack.MAX_NESTING_DEPTH - 1) + b"\x01")
    for _ in range(bp_msgpack.MAX_NESTING_DEPTH - 1):
        tree = tree["a"]
    assert tree == 1


@pytest.mark.parametrize("data", [
    b"\xc9\xff\xff\xff\xf0\x01abc",        # ext32 declaring 4 GiB
    b"\xc6\xff\xff\xff\xffabc",            # bin32 declaring 4 GiB
    b"\xdd\xff\xff\xff\xff\x01",           # array32 of 4 G items
    b"\xdf\xff\xff\xff\xff\xa1a\x01",      # map32 of 4 G pairs
    b"\xdb\xff\xff\xff\xffabc",            # str32 of 4 GiB
])
def test_huge_declared_lengths(data):
    with bounded(), pytest.raises((TruncatedError, LimitExceededError)):
        read_bp(data)


@pytest.mark.parametrize("data, match", [
    (bp_map(a=ext(7, b"xyz")), "unknown msgpack ext type 7"),
    (bp_map(a=msgpack.packb(msgpack.Timestamp(1))), "ext type -1"),
    (bp_map(a=ext(1, b"\x01\x02\x03")), "array payload"),
    (bp_map(a=ext(1, msgpack.packb([[1], "float32"]))), "array payload"),
    (bp_map(a=ext(1, msgpack.packb([[1], "float32", 5]))), "binary data"),
    (bp_map(a=ext(1, msgpack.packb([[1], "float32", b"abcd"], use_bin_type=True) + b"!")), "payload"),
    (bp_map(a=ext(1, msgpack.packb([[1], "float32", msgpack.ExtType(1, b"")]))), "array payload"),
    (bp_map(a=ext(2, msgpack.packb([1.0]))), "complex"),
    (bp_map(a=ext(2, msgpack.packb(["1", "2"]))), "complex"),
    (bp_map(a=ext(2, b"\xc1")), "complex"),
    (msgpack.packb({1: 2}), "key"),
    (msgpack.packb({"a": 1}) + b"\x00", "trailing"),
    (b"\xc1", "not a valid"),
    (bp_map(a=b"\xa2\xff\xfe"), "not a valid"),  # invalid UTF-8
    (bp_map(a=msgpack.packb({bp_msgpack.CHUNK_MARKER: True})), "chunked"),
    (bp_map(a=bp_map(**{bp_msgpack.CHUNK_MARKER: b"\xc3", "shape": msgpack.packb({"0": 5}),
                        "chunks": bp_map(**{"0": ext_array([4], "int8", b"abcd")})})), "chunks hold 4"),
    (bp_map(a=bp_map(**{bp_msgpack.CHUNK_MARKER: b"\xc3", "shape": msgpack.packb({"0": 4}),
                        "chunks": bp_map(**{"0": ext_array([2], "int8", b"ab"),
                                            "1": ext_array([2], "uint8", b"cd")})})), "one dtype"),
])
def test_malformed_documents(data, match):
    with bounded(), pytest.raises(FormatError, match=match):
        read_bp(data)


def test_error_names_file_and_key_path(tmp_path):
    path = tmp_path / "named.bp"
    path.write_bytes(bp_map(**{"Dense0": bp_map(**{"Dense0.W": ext_array([3], "|O", b"abc")})}))
    with pytest.raises(FormatError) as info:
        read_bp(path)
    assert str(path) in str(info.value) and "['Dense0', 'Dense0.W']" in str(info.value)


def test_file_size_limit(tmp_path, monkeypatch):
    from bpz._legacy import _common
    path = tmp_path / "big.bp"
    write_bp(path, {"a": np.zeros(100)})
    monkeypatch.setattr(_common, "MAX_FILE_BYTES", 100)
    with pytest.raises(LimitExceededError, match="limit"):
        read_bp(path)


def test_decoded_bytes_budget(monkeypatch):
    data = bp_map(a=ext_array([4], "int8", b"abcd"))
    assert read_bp(data)["a"].tobytes() == b"abcd"
    with pytest.raises(LimitExceededError, match="budget"):
        read_bp(data, max_bytes=100)


def test_missing_and_empty_files(tmp_path):
    from bpz.errors import CheckpointNotFoundError
    with pytest.raises(CheckpointNotFoundError):
        read_bp(tmp_path / "missing.bp")
    (tmp_path / "empty.bp").write_bytes(b"")
    with pytest.raises(TruncatedError, match="empty.bp"):
        read_bp(tmp_path / "empty.bp")


def test_random_garbage_and_bit_flips():
    """Garbage is refused with a typed error (or, for a lucky flip, read); nothing else escapes."""
    rng = random.Random(1234)
    base = (FIXTURES / "brainpy-2.9.0" / "leaf_types.bp").read_bytes()
    cases = [bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300))) for _ in range(300)]
    for _ in range(300):
        flipped = bytearray(base)
        for _ in range(rng.randrange(1, 4)):
            flipped[rng.randrange(len(flipped))] = rng.randrange(256)
        cases.append(bytes(flipped))
    refused = 0
    with bounded(megabytes=64):
        for data in cases:
            try:
                read_bp(data)
            except FormatError:
                refused += 1
    assert refused > 300  # every pure-garbage case at least


# --- differences from BrainPy that the module doc promises --------------------------------

def test_arrays_are_writable_and_native():
    tree = read_bp(FIXTURES / "brainpy-2.9.0" / "snn_checkpoint.bp")
    w = tree["net"]["Dense0"]["Dense0.W"]
    w[0, 0] = 42.0
    assert w[0, 0] == 42.0 and w.dtype.isnative


def test_text_arrays_brainpy_could_not_read():
    # BrainPy writes np.array(["ab", "xyz"]) with dtype name "str96", then fails to load it.
    arr = np.array(["ab", "xyz"])
    data = bp_map(s=ext_array([2], arr.dtype.name, arr.tobytes()),
                  b=ext_array([2], "bytes16", np.array([b"a", b"bc"]).tobytes()))
    tree = read_bp(data)
    np.testing.assert_array_equal(tree["s"], arr)
    np.testing.assert_array_equal(tree["b"], np.array([b"a", b"bc"]))


def test_big_endian_input_is_written_little_endian(tmp_path):
    big = np.arange(3, dtype=">i4")
    write_bp(tmp_path / "be.bp", {"x": big})
    write_bp(tmp_path / "le.bp", {"x": big.astype("<i4")})
    assert (tmp_path / "be.bp").read_bytes() == (tmp_path / "le.bp").read_bytes()
    np.testing.assert_array_equal(read_bp(tmp_path / "be.bp")["x"], [0, 1, 2])


def test_missing_ml_dtypes_is_reported(monkeypatch):
    monkeypatch.setitem(sys.modules, "ml_dtypes", None)
    with pytest.raises(ImportError, match="pip install ml_dtypes"):
        read_bp(bp_map(h=ext_array([1], "bfloat16", b"\x80\x3f")))


# --- writer ----------------------------------------------------------------------------------

Pair = collections.namedtuple("Pair", "a b")


def test_write_converts_containers_like_brainpy(tmp_path):
    tree = {"t": (1, 2.0, "x"), "l": [np.ones(1), [2, 3]], "nt": Pair(np.zeros(1), 5), 1: "one",
            "od": collections.OrderedDict(z=1), "c": 1 + 2j, "s": np.float32(2.5), "e": [], "n": None,
            "by": bytearray(b"\x00\x01"), "ns": np.str_("txt")}
    out = read_bp(write_bp(tmp_path / "c.bp", tree))
    assert out["t"] == {"0": 1, "1": 2.0, "2": "x"} and out["l"]["1"] == {"0": 2, "1": 3}
    assert set(out["nt"]) == {"a", "b"} and out["nt"]["b"] == 5 and out["1"] == "one"
    assert out["od"] == {"z": 1} and out["c"] == 1 + 2j and type(out["s"]) is np.float32
    assert out["e"] == {} and out["n"] is None and out["by"] == b"\x00\x01" and out["ns"] == "txt"


@pytest.mark.parametrize("tree, error, match", [
    ({"a": {1, 2}}, TypeError, "set"),
    ({1: 1, "1": 2}, ValueError, "unique string"),
    ({"a": 2**64}, OverflowError, "64 bits"),
    ({"a": np.array(["x"])}, ValueError, "cannot read back"),
    ({"a": np.array([1, "x"], dtype=object)}, ValueError, "Object and structured"),
    ({"a": np.zeros(2, dtype=[("f", "<f4")])}, ValueError, "Object and structured"),
])
def test_write_refuses(tmp_path, tree, error, match):
    with pytest.raises(error, match=match):
        write_bp(tmp_path / "bad.bp", tree)
    assert list(tmp_path.iterdir()) == []  # nothing half-written, no temporary left behind


def test_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "keep.bp"
    write_bp(path, {"a": 1})
    with pytest.raises(TypeError):
        write_bp(path, {"a": np.ones(10), "b": object()})
    assert read_bp(path) == {"a": 1} and [p.name for p in tmp_path.iterdir()] == ["keep.bp"]


@pytest.mark.parametrize("length", [0, 1, 2, 3, 4, 5, 8, 15, 16, 17, 255, 256, 65535, 65536])
def test_ext_framing_matches_msgpack(length):
    payload = bytes(length)
    assert bp_msgpack._ext_header(length, 1) + payload == ext(1, payload)


def test_write_exotic_arrays_round_trip(tmp_path):
    tree = {
        "fortran": np.asfortranarray(np.arange(6, dtype=np.int32).reshape(2, 3)),
        "strided": np.arange(20, dtype=np.float64)[::3],
        "bf16": np.array([1.5, -2.0], dtype=ml_dtypes.bfloat16),
        "f8": np.array([0.5], dtype=ml_dtypes.float8_e4m3fn),
        "dt": np.array(["2024-01-02", "1970-01-01"], dtype="datetime64[D]"),
        "td": np.array([5], dtype="timedelta64[ms]"),
        "zero_d": np.array(7, dtype=np.uint16), "empty": np.zeros((0, 3), np.int8),
        "c128": np.array([1 + 1j, -2j]), "ld": np.array([1.25], dtype=np.longdouble),
    }
    out = read_bp(write_bp(tmp_path / "e.bp", tree))
    for key, arr in tree.items():
        assert out[key].dtype == arr.dtype and out[key].shape == arr.shape, key
        np.testing.assert_array_equal(out[key], arr)


def test_chunking_threshold(tmp_path):
    arr = np.arange(1000, dtype=np.float32).reshape(10, 100)
    write_bp(tmp_path / "c.bp", {"w": arr, "small": np.ones(3)}, max_chunk_bytes=1000)
    raw = msgpack.unpackb((tmp_path / "c.bp").read_bytes(), raw=False, ext_hook=lambda c, d: (c, len(d)))
    assert raw["w"]["shape"] == {"0": 10, "1": 100} and len(raw["w"]["chunks"]) == 4  # 250 floats each
    assert [n for _, n in raw["w"]["chunks"].values()] == [1015] * 4
    assert raw["small"][0] == 1  # not chunked
    np.testing.assert_array_equal(read_bp(tmp_path / "c.bp")["w"], arr)


# --- property test -----------------------------------------------------------------------------

DTYPES = st.sampled_from(["bool", "int8", "uint16", "int32", "int64", "uint64", "float16", "float32",
                          "float64", "complex64", "complex128", ">i4", ">f8"])
ARRAYS = DTYPES.flatmap(lambda dt: hnp.arrays(np.dtype(dt), hnp.array_shapes(min_dims=0, max_dims=3,
                                                                           min_side=0, max_side=4)))
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-2**63, 2**64 - 1), st.floats(allow_nan=False),
                    st.text(max_size=8), st.binary(max_size=8), st.complex_numbers(allow_nan=False))
KEYS = st.text(max_size=6)  # the default alphabet has no surrogates, so keys are valid UTF-8
TREES = st.recursive(st.one_of(SCALARS, ARRAYS, ARRAYS.map(lambda a: a[()] if a.ndim == 0 else a)),
                     lambda kids: st.dictionaries(KEYS, kids, max_size=4), max_leaves=12)


def same(a, b) -> bool:
    if isinstance(a, dict):
        return isinstance(b, dict) and list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (np.ndarray, np.generic)):
        return (type(b) is type(a) and b.dtype == a.dtype.newbyteorder("=") and np.shape(a) == np.shape(b)
                and np.array_equal(a, b, equal_nan=a.dtype.kind in "fc"))
    return type(a) is type(b) and a == b


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tree=TREES, chunk=st.sampled_from([1, 7, 64, 2**30]))
def test_property_round_trip(tmp_path, tree, chunk):
    path = write_bp(tmp_path / "p.bp", tree, max_chunk_bytes=chunk)
    assert same(tree, read_bp(path))
    assert is_bp_file(path) is isinstance(tree, (dict, np.ndarray, np.generic, complex))
