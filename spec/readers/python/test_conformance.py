"""Conformance tests of the independent reader against spec/vectors (FORMAT.md section 13),
plus checks of the rules the vectors do not exercise, on archives built here."""
import hashlib
import json
import struct
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import zstandard

sys.path.insert(0, str(Path(__file__).parent))
import bpz_reader as bpz  # noqa: E402
from bpz_reader import BpzFormatError, crc32c, decompress_exact, open_archive  # noqa: E402

VECTORS = Path(__file__).parents[2] / "vectors"
GOLDEN = sorted(VECTORS.glob("*.bpz"))
INVALID = json.loads((VECTORS / "invalid" / "expected.json").read_text())


def test_vectors_are_there():
    assert len(GOLDEN) >= 13 and len(INVALID) >= 39
    for path in GOLDEN:
        assert path.with_suffix(".json").is_file(), path


# ------------------------------------------------------------------ crc32c
def test_crc32c_check_value():
    assert crc32c(b"123456789") == 0xE3069283  # section 1
    assert crc32c(b"6789", crc32c(b"12345")) == 0xE3069283  # incremental
    assert crc32c(b"") == 0


def test_crc32c_worked_example():  # section 15
    data = (VECTORS / "tiny.bpz").read_bytes()
    assert len(data) == 335
    assert crc32c(data[:60]) == 0x925C49F1 == int.from_bytes(data[60:64], "little")
    assert crc32c(data[64:67]) == 0xF130F21E == 4046516766
    assert crc32c(data[0x43:0x43 + 236]) == 0x1B0805EF
    assert crc32c(data[-32:-12]) == 0x32E6ECB0


# ------------------------------------------------------------------ golden vectors
TENSOR_KEYS = {"name", "dtype", "shape", "storage", "filter", "chunks", "encoded_chunks", "nbytes", "sha256"}


def _check_tensors(ar, expected_tensors):
    """Section 13: tensors in index order (for 1.1: the listing order, by position)."""
    assert [t.name for t in ar.tensors] == [e["name"] for e in expected_tensors]
    for t, e in zip(ar.tensors, expected_tensors):
        assert set(e) == TENSOR_KEYS
        assert (t.dtype, list(t.shape), t.storage, t.filter) == (e["dtype"], e["shape"], e["storage"], e["filter"])
        assert len(t.chunks) == e["chunks"]
        assert sum(c.encoded for c in t.chunks) == e["encoded_chunks"]
        assert t.nbytes == e["nbytes"]
        data = ar.read(t.name)
        assert len(data) == e["nbytes"]
        assert hashlib.sha256(data).hexdigest() == e["sha256"]


@pytest.mark.parametrize("path", GOLDEN, ids=lambda p: p.stem)
def test_golden_vector(path):
    expected = json.loads(path.with_suffix(".json").read_text())
    v11 = path.stem.startswith("v11_")
    keys = {"version", "alignment", "file_bytes", "tensors", "tree", "metadata"}
    assert set(expected) - {"recovered"} == (keys | {"versions"} if v11 else keys)
    with open_archive(path) as ar:
        assert list(ar.version) == expected["version"]
        assert ar.alignment == expected["alignment"]
        assert ar.file_length == path.stat().st_size == expected["file_bytes"]
        _check_tensors(ar, expected["tensors"])
        assert ar.tree == expected["tree"]
        assert ar.metadata == expected["metadata"]
        assert ar.verify() is None
        assert (ar.recovered is not None) == expected.get("recovered", False)
        if not v11:
            return
        assert ar.binary_index
        assert [(v.number, v.time_ns, v.metadata, v.bytes_added) for v in ar.versions] == \
            [(e["version"], e["time_ns"], e["metadata"], e["bytes_added"]) for e in expected["versions"]]
        assert ar.version_number == expected["versions"][-1]["version"]
    for k, e in enumerate(expected["versions"]):  # each version by number, and counted from the latest
        for version in (e["version"], k - len(expected["versions"])):
            with open_archive(path, version=version) as ar:
                assert (ar.version_number, ar.time_ns, ar.metadata) == (e["version"], e["time_ns"], e["metadata"])
                assert set(e) == {"version", "time_ns", "metadata", "bytes_added", "tensors"}
                _check_tensors(ar, e["tensors"])


def _row_points(t):
    """Row indices worth cutting at: the ends, and both sides of every chunk boundary."""
    rows, row_elems = t.rows, max(1, bpz._product(t.shape[1:]))
    points = {0, 1, 2, rows - 2, rows - 1, rows}
    for k in range(1, len(t.chunks)):
        r = k * t.chunk_elems // row_elems
        points |= {r - 1, r, r + 1, r + 2}
    return sorted(p for p in points if 0 <= p <= rows)


@pytest.mark.parametrize("path", GOLDEN, ids=lambda p: p.stem)
def test_read_rows_decodes_only_overlapping_chunks(path, monkeypatch):
    with open_archive(path) as ar:
        decoded = []
        real = ar._decode_chunk
        monkeypatch.setattr(ar, "_decode_chunk", lambda t, i: decoded.append(i) or real(t, i))
        for t in ar.tensors:
            full = ar.read(t.name)
            row_bytes = bpz._product(t.shape[1:]) * t.itemsize
            per_chunk = t.chunk_elems * t.itemsize
            points = _row_points(t)
            for start in points:
                for stop in (p for p in points if p >= start):
                    decoded.clear()
                    got = ar.read_rows(t.name, start, stop)
                    a, b = start * row_bytes, stop * row_bytes
                    assert got == full[a:b], (t.name, start, stop)
                    want = list(range(a // per_chunk, (b - 1) // per_chunk + 1)) if a < b else []
                    assert decoded == want, (t.name, start, stop)


@pytest.mark.parametrize("path", GOLDEN, ids=lambda p: p.stem)
def test_to_numpy(path):
    with open_archive(path) as ar:
        for t in ar.tensors:
            arr = ar.to_numpy(t.name)
            raw = ar.read(t.name)
            assert arr.shape == t.shape and arr.dtype.itemsize == t.itemsize
            if t.dtype == "BOOL":
                assert np.array_equal(arr.ravel(), np.frombuffer(raw, np.uint8) != 0)
            else:
                assert arr.tobytes() == raw


def test_to_numpy_values_and_dtypes(monkeypatch):
    with open_archive(VECTORS / "tiny.bpz") as ar:
        assert ar.to_numpy("x").tolist() == [1, 2, 3]
    with open_archive(VECTORS / "all_dtypes_raw.bpz") as raw, open_archive(VECTORS / "all_dtypes_zstd.bpz") as z:
        assert [t.name for t in raw.tensors] == [t.name for t in z.tensors] == list(bpz.DTYPE_SIZES)
        for t in raw.tensors:
            assert raw.read(t.name) == z.read(t.name)
        assert raw.to_numpy("F32").dtype == np.float32 and raw.to_numpy("C128").dtype == np.complex128
        assert raw.to_numpy("I16").dtype == np.dtype("<i2") and raw.to_numpy("BOOL").dtype == np.bool_
        if bpz.ml_dtypes is not None:
            assert raw.to_numpy("BF16").dtype.name == "bfloat16"
            assert raw.to_numpy("F8_E8M0").dtype.name == "float8_e8m0fnu"
        monkeypatch.setattr(bpz, "ml_dtypes", None)  # the documented fallback: raw bits
        assert raw.to_numpy("BF16").dtype == np.dtype("<u2")
        assert raw.to_numpy("F8_E4M3").dtype == np.uint8


def test_zero_dim_and_empty():
    with open_archive(VECTORS / "empty_and_scalar_zstd.bpz") as ar:
        assert ar.tensor("scalar_f64").rows == 1
        assert ar.read_rows("scalar_f64", 0, 1) == ar.read("scalar_f64")
        assert ar.to_numpy("scalar_f64").shape == ()
        assert ar.to_numpy("empty_3x0").shape == (3, 0)
        assert ar.read_rows("empty_3x0", 1, 3) == b""


# ------------------------------------------------------------------ invalid vectors
def _read_everything(ar):
    for t in ar.tensors:
        ar.read(t.name)
    ar.verify()


@pytest.mark.parametrize("name", sorted(INVALID), ids=str)
def test_invalid_vector(name):
    """Section 13: ``open`` fails opening; ``list`` may fail opening, else listing every
    tensor fails; ``read`` opens, and reading every tensor then verifying fails. An entry
    with ``version`` opens that version instead of the latest."""
    path = VECTORS / "invalid" / name
    entry = INVALID[name]
    kind, stage = entry["error"], entry["stage"]
    assert stage in ("open", "read", "list") and set(entry) <= {"error", "stage", "note", "version"}
    with pytest.raises(BpzFormatError) as err:
        ar = open_archive(path, version=entry.get("version"))
        assert stage != "open", "opened a file that must fail to open"
        with ar:
            if stage == "list":
                _ = ar.tensors
                pytest.fail("listed a file whose listing must fail")
            _read_everything(ar)
        pytest.fail("read and verified a file that must fail")
    assert err.value.kind == kind, str(err.value)
    assert str(path) in str(err.value)


def test_invalid_vectors_are_all_listed():
    on_disk = {p.name for p in (VECTORS / "invalid").glob("*.bpz")}
    assert on_disk == set(INVALID)


def test_bad_magic_says_what_mangled_the_file():
    with pytest.raises(BpzFormatError, match="CRLF was turned into LF"):
        open_archive(VECTORS / "invalid" / "text_mode_crlf.bpz")
    with pytest.raises(BpzFormatError, match="7-bit"):
        open_archive(VECTORS / "invalid" / "seven_bit.bpz")


# ------------------------------------------------------------------ archives built here
def write(path, tensors=(), data=b"", *, tree=None, raw_index=None, alignment=64, major=1, minor=0):
    """A minimal bpz writer: superblock, ``data`` at offset 64, index, trailer."""
    index = raw_index if raw_index is not None else json.dumps(
        {"tensors": list(tensors), "tree": tree, "metadata": None}, separators=(",", ":")).encode()
    sb = bpz.MAGIC + struct.pack("<HHIII", major, minor, 0, 0, alignment) + bytes(36)
    sb += struct.pack("<I", crc32c(sb))
    trailer = struct.pack("<QQI", 64 + len(data), len(index), crc32c(index))
    trailer += struct.pack("<I", crc32c(trailer)) + bpz.END_MAGIC
    path.write_bytes(sb + data + index + trailer)
    return path


def entry(**kw):
    e = {"name": "x", "dtype": "U8", "shape": [3], "storage": "raw", "filter": "none",
         "chunk_elems": 3, "chunks": [[64, 3, crc32c(b"\1\2\3"), 0]]}
    e.update(kw)
    return e


def open_kind(path):
    try:
        open_archive(path).close()
    except BpzFormatError as exc:
        assert str(path) in str(exc)
        return exc.kind
    return None


def test_writer_helper_round_trips(tmp_path):
    with open_archive(write(tmp_path / "a.bpz", [entry()], b"\1\2\3", tree={"tensor": "x"})) as ar:
        assert ar.read("x") == b"\1\2\3" and ar.tree == {"tensor": "x"}
        ar.verify()


def _nested(depth):
    meta = "0"
    for _ in range(depth - 1):  # the top-level object is depth 1
        meta = f"[{meta}]"
    return b'{"tensors":[],"metadata":' + meta.encode() + b"}"


BIG = 1 << 53
OPEN_CASES = {
    # name: (tensors or raw index bytes, data, expected kind or None for success)
    "depth_128_ok": (_nested(128), b"", None),
    "depth_129": (_nested(129), b"", "limit_exceeded"),
    "brackets_in_strings_do_not_nest": (b'{"tensors":[],"metadata":"' + b"[" * 300 + b'"}', b"", None),
    "bom": (b"\xef\xbb\xbf" + _nested(1), b"", "invalid_index"),
    "duplicate_member": (b'{"tensors":[],"tensors":[]}', b"", "invalid_index"),
    "infinity": (b'{"tensors":[],"metadata":Infinity}', b"", "invalid_index"),
    "not_an_object": (b"[]", b"", "invalid_index"),
    "no_tensors_member": (b'{"tree":null}', b"", "invalid_index"),
    "tree_not_a_node": (b'{"tensors":[],"tree":3}', b"", "invalid_index"),
    "bool_is_not_an_integer": ([entry(shape=[True, 3])], b"\1\2\3", "invalid_index"),
    "float_is_not_an_integer": ([entry(chunk_elems=3.0)], b"\1\2\3", "invalid_index"),
    "negative_dim": ([entry(shape=[-3])], b"\1\2\3", "invalid_index"),
    "missing_member": ([{k: v for k, v in entry().items() if k != "filter"}], b"\1\2\3", "invalid_index"),
    "lone_surrogate_name": ([entry(name="\ud800")], b"\1\2\3", "invalid_index"),
    "unknown_members_ignored": ([dict(entry(), hint=[1])], b"\1\2\3", None),
    "name_4096_bytes_ok": ([entry(name="\u00e9" * 2048)], b"\1\2\3", None),
    "name_4097_bytes": ([entry(name="\u00e9" * 2048 + "n")], b"\1\2\3", "limit_exceeded"),
    "bytes_over_2_53": ([entry(dtype="I64", shape=[1 << 27, 1 << 27])], b"\1\2\3", "limit_exceeded"),
    "chunk_over_256_MiB": ([entry(shape=[(256 << 20) + 1], chunk_elems=(256 << 20) + 1)], b"", "limit_exceeded"),
    "over_2_24_chunks": ([entry(shape=[(1 << 24) + 1], chunk_elems=1)], b"", "limit_exceeded"),
    "limit_before_unknown_dtype": ([entry(dtype="F4", shape=[1] * 65)], b"\1\2\3", "limit_exceeded"),
    "unknown_storage": ([entry(storage="mmap")], b"\1\2\3", "unsupported_feature"),
    "unknown_before_invalid": ([entry(dtype="F4", chunk_elems=0)], b"\1\2\3", "unsupported_feature"),
    "chunk_elems_0": ([entry(chunk_elems=0)], b"\1\2\3", "invalid_index"),
    "nul_in_name": ([entry(name="a\0b")], b"\1\2\3", "invalid_index"),
    "raw_with_shuffle": ([entry(filter="shuffle")], b"\1\2\3", "invalid_index"),
    "delta_shuffle_on_float": ([entry(dtype="F16", shape=[1], chunk_elems=1, storage="chunked",
                                      filter="delta_shuffle", chunks=[[64, 3, 0, 1]])], b"\1\2\3", "invalid_index"),
    "bitpack_on_u8": ([entry(storage="chunked", filter="bitpack")], b"\1\2\3", "invalid_index"),
    "crc_over_32_bits": ([entry(chunks=[[64, 3, 1 << 32, 0]])], b"\1\2\3", "invalid_index"),
    "plain_length_differs": ([entry(storage="chunked", chunks=[[64, 2, 0, 0]])], b"\1\2\3", "invalid_index"),
    "chunk_before_data_region": ([entry(chunks=[[0, 3, 0, 0]])], b"\1\2\3", "invalid_index"),
    "chunk_into_index": ([entry(chunks=[[64, 4, 0, 1]], storage="chunked")], b"\1\2\3", "invalid_index"),
    "raw_encoded": ([entry(chunks=[[64, 3, 0, 1]])], b"\1\2\3", "invalid_index"),
    "raw_not_contiguous": ([entry(chunk_elems=2, chunks=[[64, 2, 0, 0], [67, 1, 0, 0]])], b"\1\2\3\0", "invalid_index"),
    "chunked_need_not_align": ([entry(storage="chunked", chunks=[[65, 3, 0, 0]])], b"\0\1\2\3", None),
    "same_name_twice": ([entry(), entry(chunks=[[128, 3, 0, 0]])], b"\1\2\3" + bytes(64), "invalid_index"),
    "overlap_within_a_tensor": ([entry(storage="chunked", chunk_elems=2, chunks=[[64, 2, 0, 0], [65, 1, 0, 0]])],
                                b"\1\2\3", "invalid_index"),
}


@pytest.mark.parametrize("case", sorted(OPEN_CASES))
def test_open_rules(tmp_path, case):
    tensors, data, kind = OPEN_CASES[case]
    if isinstance(tensors, bytes):
        path = write(tmp_path / f"{case}.bpz", data=data, raw_index=tensors)
    else:
        path = write(tmp_path / f"{case}.bpz", tensors, data)
    assert open_kind(path) == kind


@pytest.mark.parametrize("tree, kind", [
    ({"list": [{"none": None}, {"dict": [[7, {"tensor": "nope"}]]}]}, "invalid_index"),
    ({"namedtuple": {"name": "P", "fields": ["a"], "values": [{"tensor": "nope"}]}}, "invalid_index"),
    ({"ordered_dict": [[{"tuple": [1, 2]}, {"tensor": "x", "py": "np.float32"}]]}, None),
    ({"future_kind": {"tensor": "nope"}}, None),  # unknown kinds: reported when rebuilt, not here
    ({"tensor": 5}, "invalid_index"),
    ({"list": 5}, "invalid_index"),
])
def test_tree_references(tmp_path, tree, kind):
    assert open_kind(write(tmp_path / "t.bpz", [entry()], b"\1\2\3", tree=tree)) == kind


def test_header_rules(tmp_path):
    good = write(tmp_path / "good.bpz", [entry()], b"\1\2\3").read_bytes()
    cases = {
        "short_not_magic.bpz": (b"GIF8", "bad_magic"),
        "short_magic_prefix.bpz": (bpz.MAGIC[:7], "truncated"),
        "index_offset_low.bpz": (None, "invalid_index"),
    }
    for name, (content, kind) in cases.items():
        if content is None:  # trailer pointing into the superblock, crc recomputed
            t = struct.pack("<QQI", 10, len(good) - 42, 0)
            content = good[:-32] + t + struct.pack("<I", crc32c(t)) + bpz.END_MAGIC
        (tmp_path / name).write_bytes(content)
        assert open_kind(tmp_path / name) == kind, name
    for alignment, kind in ((16, None), (4096, "invalid_index"), (8, "invalid_index"), (8192, "invalid_index")):
        # 4096 is a valid alignment, but the raw data at 64 is then misaligned
        assert open_kind(write(tmp_path / "a.bpz", [entry()], b"\1\2\3", alignment=alignment)) == kind
    assert open_kind(write(tmp_path / "v.bpz", [entry()], b"\1\2\3", minor=65535)) is None
    assert open_kind(write(tmp_path / "v.bpz", [entry()], b"\1\2\3", major=0)) == "unsupported_version"


# ------------------------------------------------------------------ reading
def test_nonzero_padding_fails_verify_only(tmp_path):
    data = bytearray((VECTORS / "alignment_4096.bpz").read_bytes())
    assert data[5000] == 0  # between tensor a (4096..4101) and tensor b (8192..)
    data[5000] = 1
    path = tmp_path / "padding.bpz"
    path.write_bytes(data)
    with open_archive(path) as ar:
        assert ar.read("a") and ar.read("b")
        with pytest.raises(BpzFormatError, match="offset 5000") as err:
            ar.verify()
        assert err.value.kind == "corrupt_data"


def test_api_errors():
    with open_archive(VECTORS / "multichunk_shuffle.bpz") as ar:
        for call, kind in ((lambda: ar.read("nope"), "tensor_not_found"),
                           (lambda: ar.read_rows("V", 0, 65), "invalid_argument"),
                           (lambda: ar.read_rows("V", 3, 2), "invalid_argument")):
            with pytest.raises(BpzFormatError) as err:
                call()
            assert err.value.kind == kind
    with pytest.raises(BpzFormatError) as err:
        open_archive(VECTORS / "no_such_file.bpz")
    assert err.value.kind == "io"


def _chunked(tmp_path, frame, n=64):
    t = entry(name="z", shape=[n], storage="chunked", chunk_elems=n, chunks=[[64, len(frame), crc32c(frame), 1]])
    return write(tmp_path / "z.bpz", [t], frame)


Z, Z_NO_SIZE = zstandard.ZstdCompressor(), zstandard.ZstdCompressor(write_content_size=False)
FRAMES = {  # name: (frame, decodes to 64 bytes 0..63)
    "with_content_size": (Z.compress(bytes(range(64))), True),
    "without_content_size": (zstandard.ZstdCompressor(write_content_size=False, write_checksum=True)
                             .compress(bytes(range(64))), True),
    "bomb_size_not_declared": (Z_NO_SIZE.compress(bytes(1 << 20)), False),
    "one_byte_too_many": (Z.compress(bytes(65)), False),
    "one_byte_too_few": (Z_NO_SIZE.compress(bytes(63)), False),
    "trailing_byte": (Z.compress(bytes(64)) + b"\0", False),
    "two_frames": (Z.compress(bytes(32)) * 2, False),
    "two_frames_sizes_not_declared": (Z_NO_SIZE.compress(bytes(32)) * 2, False),  # stream_reader alone joins them
    "skippable_frame": (b"\x50\x2a\x4d\x18" + struct.pack("<I", 4) + bytes(4), False),
    "cut_short": (Z.compress(bytes(64))[:-1], False),
    "garbage": (b"garbage", False),
}


@pytest.mark.parametrize("case", FRAMES)
def test_zstd_frames_are_bounded_and_exact(tmp_path, case):
    frame, ok = FRAMES[case]
    with open_archive(_chunked(tmp_path, frame)) as ar:  # opening never decodes
        if ok:
            assert ar.read("z") == bytes(range(64))
            ar.verify()
        else:
            with pytest.raises(BpzFormatError) as err:
                ar.read("z")
            assert err.value.kind == "corrupt_data" and "chunk 0" in str(err.value)


def test_decompression_is_bounded_in_memory():
    bomb = zstandard.ZstdCompressor(write_content_size=False).compress(bytes(64 << 20))
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match="does not decode to 64 bytes"):
            decompress_exact(bomb, 64)
        assert tracemalloc.get_traced_memory()[1] < 1 << 20
    finally:
        tracemalloc.stop()


# ------------------------------------------------------------------ filters (section 5)
def test_shuffle():
    d = np.array([0x0102, 0x0304, 0x0506], "<u2").tobytes()  # 02 01 04 03 06 05
    assert bpz._unfilter("shuffle", bytes([2, 4, 6, 1, 3, 5]), 3, 2) == d
    assert bpz._unfilter("shuffle", b"abc", 3, 1) == b"abc"


def test_delta_shuffle_wraps():
    x = np.array([1, 0, 0xFFFF, 5], "<u2")
    deltas = np.array([1, 0xFFFF, 0xFFFF, 6], "<u2").tobytes()
    shuffled = bytes(deltas[j::2][i] for j in range(2) for i in range(4))
    assert bpz._unfilter("delta_shuffle", shuffled, 4, 2) == x.tobytes()


def test_bitpack_ignores_high_bits():
    assert bpz._unfilter("bitpack", bytes([0b00000101, 0b11111110]), 10, 1) == bytes([1, 0, 1, 0, 0, 0, 0, 0, 0, 1])
    assert bpz.filtered_size("bitpack", 10, 1) == 2 and bpz.filtered_size("shuffle", 10, 4) == 40
