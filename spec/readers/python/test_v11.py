"""Format 1.1 (spec/FORMAT.md section 16) in the independent reader: BLAKE3 against the
official vectors, then archives built here by v11_writer (versions, dedup, binary index)
and broken one rule at a time."""
import hashlib
import io
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
import bpz_reader as bpz  # noqa: E402
from bpz_reader import BpzFormatError, blake3, open_archive  # noqa: E402
from v11_writer import V11Writer, superblock, trailer  # noqa: E402

# ------------------------------------------------------------------ BLAKE3 (16.3)
# The BLAKE3 team's test vectors (test_vectors/test_vectors.json of the reference repository):
# input i % 251 for i < input_len; the first 32 bytes of the default-mode hash.
BLAKE3_VECTORS = {
    0: "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262",
    1: "2d3adedff11b61f14c886e35afa036736dcd87a74d27b5c1510225d0f592e213",
    1023: "10108970eeda3eb932baac1428c7a2163b0e924c9a9e25b35bba72b28f70bd11",
    1024: "42214739f095a406f3fc83deb889744ac00df831c10daa55189b5d121c855af7",
    1025: "d00278ae47eb27b34faecf67b4fe263f82d5412916c1ffd97c8cb7fb814b8444",
    2048: "e776b6028c7cd22a4d0ba182a8bf62205d2ef576467e838ed6f2529b85fba24a",
    2049: "5f4d72f40d7a5f82b15ca2b2e44b1de3c2ef86c426c95c1af0b687952256303096"[:64],
    3072: "b98cb0ff3623be03326b373de6b9095218513e64f1ee2edd2525c7ad1e5cffd2",
    3073: "7124b49501012f81cc7f11ca069ec9226cecb8a2c850cfe644e327d22d3e1cd3",
    4096: "015094013f57a5277b59d8475c0501042c0b642e531b0a1c8f58d2163229e969",
    4097: "9b4052b38f1c5fc8b1f9ff7ac7b27cd242487b3d890d15c96a1c25b8aa0fb995",
    5120: "9cadc15fed8b5d854562b26a9536d9707cadeda9b143978f319ab34230535833",
    5121: "628bd2cb2004694adaab7bbd778a25df25c47b9d4155a55f8fbd79f2fe154cff",
    6144: "3e2e5b74e048f3add6d21faab3f83aa44d3b2278afb83b80b3c35164ebeca205",
    6145: "f1323a8631446cc50536a9f705ee5cb619424d46887f3c376c695b70e0f0507f",
    7168: "61da957ec2499a95d6b8023e2b0e604ec7f6b50e80a9678b89d2628e99ada77a",
    7169: "a003fc7a51754a9b3c7fae0367ab3d782dccf28855a03d435f8cfe74605e7817",
    8192: "aae792484c8efe4f19e2ca7d371d8c467ffb10748d8a5a1ae579948f718a2a63",
    8193: "bab6c09cb8ce8cf459261398d2e7aef35700bf488116ceb94a36d0f5f1b7bc3b",
    16384: "f875d6646de28985646f34ee13be9a576fd515f76b5b0a26bb324735041ddde4",
    31744: "62b6960e1a44bcc1eb1a611a8d6235b6b4b78f32e7abc4fb4c6cdcce94895c47",
    102400: "bc3e3d41a1146b069abffad3c0d44860cf664390afce4d9661f7902e7943e085",
}


@pytest.mark.parametrize("vector_min", [bpz._B3_VECTOR_MIN, 2, 1 << 30], ids=["default", "numpy", "ints"])
def test_blake3_official_vectors(monkeypatch, vector_min):
    monkeypatch.setattr(bpz, "_B3_VECTOR_MIN", vector_min)  # both the numpy-lane and the int paths
    for n, digest in BLAKE3_VECTORS.items():
        data = bytes(i % 251 for i in range(n))
        assert blake3(data).hex() == digest, n
        assert blake3(memoryview(data), 16).hex() == digest[:32], n


def test_blake3_many_matches_one_by_one():
    """The lane-parallel batch (verify's path for many small chunks) agrees with blake3 and
    with the official vectors, for every block-boundary length of a single BLAKE3 chunk."""
    rng = np.random.default_rng(3)
    messages = [rng.bytes(n) for n in (0, 1, 63, 64, 65, 127, 128, 1023, 1024, 1025, 3000) for _ in range(20)]
    assert bpz.blake3_many(messages, 16) == [blake3(m, 16) for m in messages]
    official = [bytes(i % 251 for i in range(n)) for n in (0, 1, 1023, 1024) for _ in range(bpz._B3_VECTOR_MIN)]
    assert [d.hex() for d in bpz.blake3_many(official)] == [BLAKE3_VECTORS[len(m)] for m in official]


# ------------------------------------------------------------------ helpers
def arr(n, dtype="<f4", seed=0):
    return np.random.default_rng(seed).standard_normal(n).astype(dtype) if dtype[-2] == "f" else \
        np.arange(n, dtype=dtype)


def save(tmp_path, w: V11Writer, name="a.bpz") -> Path:
    path = tmp_path / name
    path.write_bytes(w.bytes())
    return path


def kind_of(fn):
    try:
        fn()
    except BpzFormatError as exc:
        return exc.kind
    return None


def series(tmp_path, **kw):
    """Three versions: a constant connectivity (raw and chunked), a changing state."""
    w = V11Writer(**kw)
    conn = np.arange(4000, dtype=np.int32) * 3
    weights = arr(3000, "<f4", 1)
    for step in range(3):
        w.append([
            {"name": "conn", "array": conn, "storage": "chunked", "filter": "delta_shuffle", "chunk_elems": 1000},
            {"name": "weights", "array": weights, "storage": "raw", "chunk_elems": 1024},
            {"name": "state/v", "array": arr(500, "<f8", 10 + step), "storage": "chunked", "filter": "shuffle",
             "chunk_elems": 128},
            {"name": "spikes", "array": (arr(300, "<f4", step) > 1), "storage": "chunked", "filter": "bitpack"},
        ] + ([{"name": "extra", "array": np.full((2, 3), step, np.int16)}] if step == 1 else []),
            metadata={"step": step * 10})
    return save(tmp_path, w), w


# ------------------------------------------------------------------ reading versions
def test_versions_round_trip(tmp_path):
    path, w = series(tmp_path)
    sizes = [r["index_offset"] + r["index_length"] + 32 - r["data_start"] for r in w.records]
    with open_archive(path) as ar:
        assert ar.binary_index and ar.version == (1, 1) and ar.recovered is None
        assert (ar.version_number, ar.latest_version, ar.metadata) == (3, 3, {"step": 20})
        assert [(v.number, v.metadata, v.bytes_added, v.time_ns) for v in ar.versions] == \
            [(k + 1, {"step": 10 * k}, sizes[k], 1_700_000_000_000_000_001 + k) for k in range(3)]
        assert [t.name for t in ar.tensors] == ["conn", "weights", "state/v", "spikes"]  # saved order
        assert ar.to_numpy("conn").tolist() == (np.arange(4000) * 3).tolist()
        ar.verify()
    # dedup: versions 2 and 3 store only the changed chunks (state/v, spikes, extra), not conn / weights
    assert sizes[1] < sizes[0] / 3 and sizes[2] < sizes[0] / 3
    for v, extra in ((1, False), (2, True), (-2, True), (-3, False), (3, False), (-1, False)):
        with open_archive(path, version=v) as ar:
            assert ar.version_number == (v if v > 0 else 4 + v)
            step = ar.version_number - 1
            assert ar.metadata == {"step": 10 * step}
            assert np.array_equal(ar.to_numpy("state/v"), arr(500, "<f8", 10 + step))
            assert np.array_equal(ar.to_numpy("spikes"), arr(300, "<f4", step) > 1)
            assert ar.to_numpy("weights").tobytes() == arr(3000, "<f4", 1).tobytes()
            assert ("extra" in [t.name for t in ar.tensors]) == extra
            if extra:
                assert ar.to_numpy("extra").tolist() == [[1] * 3] * 2
            else:
                assert kind_of(lambda: ar.tensor("extra")) == "tensor_not_found"
            assert len(ar.versions) == 3  # the file's history, whichever version is open
            ar.verify()


def test_shared_chunks_are_one_stored_range(tmp_path):
    path, _ = series(tmp_path)
    offsets = []
    for v in (1, 2, 3):
        with open_archive(path, version=v) as ar:
            offsets.append([c.offset for name in ("conn", "weights") for c in ar.tensor(name).chunks])
            assert ar.tensor("weights").chunks[0].offset % 64 == 0
    assert offsets[0] == offsets[1] == offsets[2]


@pytest.mark.parametrize("bad", [0, 4, -4, 1.0, "1", True])
def test_asking_for_a_missing_version(tmp_path, bad):
    path, _ = series(tmp_path)
    with pytest.raises(BpzFormatError) as err:
        open_archive(path, version=bad)
    assert err.value.kind == "invalid_argument"
    if bad in (4, -4):
        assert "versions 1, 2, 3" in str(err.value)


def test_a_10_file_is_version_1(tmp_path):
    path = Path(__file__).parents[2] / "vectors" / "tiny.bpz"
    for v in (None, 1, -1):
        with open_archive(path, version=v) as ar:
            assert not ar.binary_index and ar.version_number == ar.latest_version == 1
            assert [(v.number, v.time_ns, v.bytes_added) for v in ar.versions] == [(1, 0, 335 - 64)]
    assert kind_of(lambda: open_archive(path, version=2)) == "invalid_argument"


def test_a_10_reader_refuses_11(tmp_path, monkeypatch):
    """Section 12: a reader that knows no bit 0 refuses the file, it does not misread it."""
    path, _ = series(tmp_path)
    monkeypatch.setattr(bpz, "FEATURE_BINARY_INDEX", 0)
    assert kind_of(lambda: open_archive(path)) == "unsupported_feature"


def test_unknown_required_bit(tmp_path):
    w = V11Writer()
    w.buf[:64] = superblock(required=3)
    w.append([{"name": "x", "array": arr(10)}])
    assert kind_of(lambda: open_archive(save(tmp_path, w))) == "unsupported_feature"


def test_all_dtypes_filters_and_empty(tmp_path):
    w = V11Writer(alignment=4096)
    tensors = [{"name": f"{np.dtype(d).name}", "array": arr(100, d), "storage": "chunked", "filter": "shuffle",
                "chunk_elems": 64} for d in ("<u2", "<i4", "<i8", "<f2", "<f4", "<f8", "<c8", "<c16", "u1", "i1")]
    tensors += [{"name": "empty", "array": np.zeros((3, 0), "<f4")},
                {"name": "scalar", "array": np.float64(2.5)},
                {"name": "raw_u64", "array": arr(100, "<u8")},
                {"name": "bits", "array": arr(100, "<f4") > 0, "storage": "chunked", "filter": "bitpack"},
                {"name": "plain", "array": arr(100, "<f4"), "storage": "chunked", "encode": False}]
    w.append(tensors, tree={"list": [{"tensor": t["name"]} for t in tensors]}, metadata=None)
    with open_archive(save(tmp_path, w)) as ar:
        for t in tensors:
            got = ar.to_numpy(t["name"])
            assert got.shape == np.shape(t["array"]) and got.tobytes() == np.asarray(t["array"]).tobytes(), t["name"]
        assert ar.tensor("raw_u64").chunks[0].offset % 4096 == 0
        assert ar.metadata is None and ar.writer == {"name": "v11_writer", "version": "1"}
        assert ar.tree["list"][0] == {"tensor": "uint16"}
        ar.verify()


# ------------------------------------------------------------------ the binary index read in part
def many(tmp_path, n=2000):
    w = V11Writer()
    tensors = [{"name": f"layer{i:05d}/w", "array": np.full(3, i, np.int32)} for i in range(n)]
    w.append(tensors[::-1], metadata={"n": n})  # saved in reverse order: positions differ from sorted order
    return save(tmp_path, w)


def test_lookup_touches_log_n_records(tmp_path, monkeypatch):
    path = many(tmp_path)
    visited, loaded, reads = [], [], []
    real_visit, real_load, real_pread = bpz._BinaryIndex._visit, bpz._BinaryIndex._load, bpz.Archive._pread
    monkeypatch.setattr(bpz._BinaryIndex, "_visit", lambda self, i: visited.append(i) or real_visit(self, i))
    monkeypatch.setattr(bpz._BinaryIndex, "_load", lambda self, k: loaded.append(k) or real_load(self, k))
    monkeypatch.setattr(bpz.Archive, "_pread", lambda self, o, n: reads.append(n) or real_pread(self, o, n))
    with open_archive(path) as ar:
        assert loaded == [1]  # open: the head and the versions section only
        assert ar.metadata == {"n": 2000} and loaded == [1, 7]  # metadata without a tensor record
        for name in ("layer00000/w", "layer01234/w", "layer01999/w"):
            visited.clear()
            assert ar.to_numpy(name).tolist() == [int(name[5:10])] * 3
            assert len(visited) <= 12, visited  # ceil(log2(2000)) = 11
        for missing in ("layer0/w", "zzz", "", "layer00000/w\0"):
            visited.clear()
            assert kind_of(lambda: ar.tensor(missing)) == "tensor_not_found"  # noqa: B023
            assert len(visited) <= 12
        assert loaded == [1, 7] and max(reads[2:]) < 4096  # no section read whole by a lookup
        assert [t.name for t in ar.tensors][:2] == ["layer01999/w", "layer01998/w"]  # listing: saved order
        assert set(loaded) == {1, 2, 3, 4, 5, 6, 7}


def test_open_is_one_read_of_the_tail(tmp_path, monkeypatch):
    """Opening reads the superblock, then the file's last 64 KiB once: trailer, head and
    versions section come from that read (what a remote reader needs, 16.2)."""
    path = many(tmp_path, 200)
    size, reads = path.stat().st_size, []

    class CountingFile(io.FileIO):  # counts the reads that reach the file
        def read(self, n=-1):
            reads.append((self.tell(), n))
            return super().read(n)

    monkeypatch.setattr(bpz, "open", lambda p, mode: CountingFile(p, "r"), raising=False)
    with open_archive(path) as ar:
        assert size < 64 << 10 and reads == [(0, 64), (0, size)]
        assert ar.metadata == {"n": 200} and len(reads) == 2  # the metadata section was in the tail too


# ------------------------------------------------------------------ unfinished appends (16.7)
def test_torn_append_recovers_to_the_last_committed_version(tmp_path):
    w = V11Writer()
    w.append([{"name": "x", "array": arr(1000)}], metadata="v1")
    v1 = w.bytes()
    w.append([{"name": "x", "array": arr(1000, seed=5)}, {"name": "y", "array": arr(2000, seed=6)}], metadata="v2")
    full = w.bytes()
    cuts = sorted({len(v1) + 1, len(v1) + 64, len(v1) + 4000, len(full) - 33, len(full) - 32, len(full) - 1}
                  | set(range(len(v1) + 1, len(full), 997)))
    for cut in cuts:
        path = tmp_path / "torn.bpz"
        path.write_bytes(full[:cut])
        with open_archive(path) as ar:
            assert ar.recovered is not None and ar.recovered.committed_end == len(v1), cut
            assert ar.recovered.ignored_bytes == cut - len(v1)
            assert "unfinished append" in ar.recovered.reason
            assert (ar.version_number, ar.metadata, [v.number for v in ar.versions]) == (1, "v1", [1])
            assert ar.to_numpy("x").tobytes() == arr(1000).tobytes()
            ar.verify()
            assert kind_of(lambda: open_archive(path, version=2)) == "invalid_argument"  # noqa: B023
    path.write_bytes(full)
    with open_archive(path) as ar:
        assert ar.recovered is None and ar.version_number == 2
    path.write_bytes(full + bytes(100))  # zeros after the last trailer: also unfinished
    with open_archive(path) as ar:
        assert ar.recovered.ignored_bytes == 100 and ar.version_number == 2
    path.write_bytes(full + b"\xff" * (3 << 20))  # more than one scan window of garbage
    with open_archive(path) as ar:
        assert ar.recovered.ignored_bytes == 3 << 20 and ar.version_number == 2
    path.write_bytes(v1[:-1])  # the first version unfinished: nothing committed
    err = pytest.raises(BpzFormatError, open_archive, path).value
    assert err.kind == "truncated" and "no committed version" in str(err)


def test_embedded_trailer_in_torn_data_is_not_a_commit(tmp_path):
    """A tensor holding a whole 1.1 file puts a valid-looking trailer, at a multiple of 64,
    inside the torn append's data: its offsets are the inner file's, so it is skipped."""
    inner = V11Writer()
    inner.append([{"name": "i", "array": arr(10)}])
    payload = np.frombuffer(inner.bytes(), np.uint8)
    w = V11Writer()
    w.append([{"name": "x", "array": arr(10)}])
    v1 = w.bytes()
    w.append([{"name": "file", "array": payload}])
    full = w.bytes()
    start = full.index(inner.bytes())
    path = save(tmp_path, w)
    path.write_bytes(full[:start + len(inner.bytes())])
    with open_archive(path) as ar:
        assert ar.recovered.committed_end == len(v1) and ar.version_number == 1


# ------------------------------------------------------------------ invalid files, one rule each
def one_version(tamper=None, tamper_dir=None, **kw):
    w = V11Writer()
    w.append([{"name": "a", "array": arr(100), "storage": "chunked", "chunk_elems": 40, "filter": "shuffle"},
              {"name": "b", "array": arr(50, "<i4")}], tamper=tamper, tamper_dir=tamper_dir, **kw)
    return w


def two_versions(tamper=None, tamper_dir=None):
    w = V11Writer()
    w.append([{"name": "a", "array": arr(100), "storage": "chunked", "chunk_elems": 40}])
    w.append([{"name": "a", "array": arr(100), "storage": "chunked", "chunk_elems": 40},
              {"name": "b", "array": arr(50, "<i4"), "storage": "chunked", "encode": False}],
             tamper=tamper, tamper_dir=tamper_dir)
    return w


def setter(path, value):
    """A tamper hook: model[path...] = value."""
    def hook(model):
        target = model
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value(target[path[-1]]) if callable(value) else value
    return hook


def swap_names(model):  # break the sort order, keeping every crc right
    r0, r1 = model["records"][0], model["records"][1]
    for k in ("name_offset", "name_length"):
        r0[k], r1[k] = r1[k], r0[k]


def overlap_chunks(model):
    c = model["chunks"]
    c[1]["offset"] = c[0]["offset"] + 1


STAGES = {  # name: (build, stage, kind): stage is where it must fail
    # a valid last trailer whose index does not check is damage, not an unfinished append (16.7)
    "head_crc": (lambda: one_version(tamper=setter(("head_crc",), 1)), "open", "checksum_mismatch"),
    "head_crc_of_latest": (lambda: two_versions(tamper=setter(("head_crc",), 1)), "open", "checksum_mismatch"),
    "index_magic": (lambda: one_version(tamper=setter(("head", "magic"), b"BPZINDEY")), "open", "invalid_index"),
    "section_count_5": (lambda: one_version(tamper=setter(("head", "section_count"), 5)), "open", "invalid_index"),
    "superblock_copy": (lambda: one_version(tamper=setter(("superblock",), superblock(alignment=128))),
                        "open", "invalid_index"),
    "version_0": (lambda: one_version(number=0), "open", "invalid_index"),
    # breaks two rules (a tensors section of 2^20 records would be 64 MiB): the limit is reported
    "too_many_tensors": (lambda: one_version(tamper=setter(("head", "tensor_count"), (1 << 20) + 1)),
                         "open", "limit_exceeded"),
    "missing_tree": (lambda: one_version(tamper=lambda m: m["json"].pop(6)), "open", "invalid_index"),
    "kind_twice": (lambda: one_version(tamper_dir=lambda e: e.append(dict(e[-1]))), "open", "invalid_index"),
    "sections_overlap": (lambda: one_version(tamper_dir=lambda e: e[3].update(offset=e[2]["offset"])),
                         "open", "invalid_index"),
    "section_past_index": (lambda: one_version(tamper_dir=lambda e: e[6].update(length=1 << 20)),
                           "open", "invalid_index"),
    "chunks_not_40n": (lambda: one_version(tamper=setter(("head", "chunk_count"), lambda n: n + 1)),
                       "open", "invalid_index"),
    "versions_crc": (lambda: two_versions(tamper=setter(("section_crc",), {1: 7})), "open", "checksum_mismatch"),
    "chain_points_forward": (lambda: two_versions(tamper=lambda m: m["versions"][0].update(index_offset=1 << 20)),
                             "open", "invalid_index"),
    "chain_loops_back": (lambda: two_versions(tamper=setter(("head", "data_start"), 64)), "open", "invalid_index"),
    "first_version_not_at_64": (lambda: two_versions(tamper=lambda m: m["versions"][0].update(data_start=128)),
                                "open", "invalid_index"),
    "numbers_do_not_increase": (lambda: two_versions(tamper=setter(("head", "version"), 1)),
                                "open", "invalid_index"),
    "record_crc": (lambda: one_version(tamper=lambda m: m["records"][0].update(record_crc=5)),
                   "read", "checksum_mismatch"),
    "chunks_crc": (lambda: one_version(tamper=lambda m: m["records"][0].update(chunks_crc=5)),
                   "read", "checksum_mismatch"),
    "record_reserved": (lambda: one_version(tamper=lambda m: m["records"][1].update(reserved=b"\1" + bytes(7))),
                        "read", "invalid_index"),
    "chunk_reserved": (lambda: one_version(tamper=lambda m: m["chunks"][0].update(reserved=b"\0\0\1")),
                       "read", "invalid_index"),
    "unknown_dtype_code": (lambda: one_version(tamper=lambda m: m["records"][1].update(dtype=99)),
                           "read", "unsupported_feature"),
    "unknown_filter_code": (lambda: one_version(tamper=lambda m: m["records"][0].update(filter=9)),
                            "read", "unsupported_feature"),
    "rank_over_64": (lambda: one_version(tamper=lambda m: (m["records"][1].update(rank=65),
                                                           m.update(shapes=m["shapes"] + [1] * 64))),
                     "read", "limit_exceeded"),
    "name_not_utf8": (lambda: one_version(tamper=lambda m: m.update(names=b"\xff" + m["names"][1:])),
                      "read", "invalid_index"),
    "chunk_past_version_end": (lambda: one_version(tamper=lambda m: m["chunks"][0].update(offset=1 << 20)),
                               "read", "invalid_index"),
    # No rule keeps a chunk out of an older version's index or trailer (it is inside [64,
    # index_offset)): such a reference opens, and its crc32c catches it on read.
    "chunk_into_older_index": (lambda: two_versions(tamper=lambda m: m["chunks"][-1].update(
        offset=m["versions"][0]["index_offset"])), "read", "checksum_mismatch"),
    "names_unsorted": (lambda: one_version(tamper=swap_names), "list", "invalid_index"),
    "positions_not_a_permutation": (lambda: one_version(tamper=lambda m: m["records"][0].update(position=1)),
                                    "list", "invalid_index"),
    "chunks_overlap": (lambda: one_version(tamper=overlap_chunks), "list", "invalid_index"),
    "tree_names_no_tensor": (lambda: one_version(tree={"tensor": "zzz"}), "list", "invalid_index"),
    "tensors_section_crc": (lambda: one_version(tamper=setter(("section_crc",), {2: 7})),
                            "list", "checksum_mismatch"),
    "metadata_not_json": (lambda: one_version(tamper=lambda m: m["json"].update({7: b"{"})),
                          "metadata", "invalid_index"),
    "metadata_crc": (lambda: one_version(tamper=setter(("section_crc",), {7: 7})), "metadata", "checksum_mismatch"),
    "metadata_1e400": (lambda: one_version(tamper=lambda m: m["json"].update({7: b"[1e400]"})),
                       "metadata", "invalid_index"),
    "tree_not_a_node": (lambda: one_version(tamper=lambda m: m["json"].update({6: b"[]"})), "list", "invalid_index"),
}


@pytest.mark.parametrize("case", sorted(STAGES))
def test_invalid_11(tmp_path, case):
    build, stage, kind = STAGES[case]
    path = save(tmp_path, build(), f"{case}.bpz")
    with pytest.raises(BpzFormatError) as err:
        ar = open_archive(path)
        assert stage != "open", "opened a file that must fail to open"
        with ar:
            if stage == "metadata":
                _ = ar.metadata
            elif stage == "list":
                _ = ar.tensors
            else:
                for t in ar.tensors:
                    ar.read(t.name)
                ar.verify()
        pytest.fail(f"a {stage} of a file breaking {case} succeeded")
    assert err.value.kind == kind, str(err.value)
    assert str(path) in str(err.value)


def test_lookup_checks_the_records_it_visits(tmp_path):
    """A bad record on the search path fails the lookup; a bad record elsewhere does not
    (it is found by listing). Records are sorted a, b: a search for 'b' visits record 1."""
    path = save(tmp_path, one_version(tamper=lambda m: m["records"][0].update(record_crc=5)))
    with open_archive(path) as ar:
        assert ar.read("b") and kind_of(lambda: ar.tensor("a")) == "checksum_mismatch"
        assert kind_of(lambda: ar.tensors) == "checksum_mismatch"
    with open_archive(save(tmp_path, one_version(tamper=swap_names))) as ar:
        assert ar.metadata is None  # metadata never needs the records
        assert kind_of(lambda: ar.tensors) == "invalid_index"


def test_shared_and_unknown_sections_are_accepted(tmp_path):
    """Two tensors of version 2 reference one stored chunk of version 1 (equal ranges are
    shared, not overlapping: 16.5); a directory entry of an unknown kind is ignored."""
    w = V11Writer()
    a = {"name": "a", "array": np.arange(8, dtype="u1"), "storage": "chunked", "chunk_elems": 4, "encode": False}
    w.append([a])
    w.append([a, {"name": "b", "array": np.arange(4, dtype="u1"), "storage": "chunked", "encode": False}],
             tamper_dir=lambda e: e.append({"kind": 99, "offset": 1 << 40, "length": 5, "crc": 0}))
    with open_archive(save(tmp_path, w)) as ar:
        assert ar.read("b") == bytes(range(4)) and ar.tensor("b").chunks[0] == ar.tensor("a").chunks[0]
        ar.verify()


def test_version_open_checks(tmp_path):
    """Opening an older version: its head against the record's crc, its own versions section
    against the latest's records (16.4)."""
    w = V11Writer()
    w.append([{"name": "a", "array": arr(10)}])
    w.append([{"name": "a", "array": arr(10, seed=2)}])
    w.append([{"name": "a", "array": arr(10, seed=3)}],
             tamper=lambda m: m["versions"][1].update(index_crc=m["versions"][1]["index_crc"] ^ 1))
    path = save(tmp_path, w)
    with open_archive(path) as ar:
        assert ar.version_number == 3
        assert kind_of(lambda: ar.versions) == "checksum_mismatch"
        assert kind_of(ar.verify) == "checksum_mismatch"
    assert kind_of(lambda: open_archive(path, version=1)) is None
    assert kind_of(lambda: open_archive(path, version=2)) == "checksum_mismatch"

    w = V11Writer()
    w.append([{"name": "a", "array": arr(10)}], time_ns=5)
    w.append([{"name": "a", "array": arr(10, seed=2)}])
    w.append([{"name": "a", "array": arr(10, seed=3)}], tamper=lambda m: m["versions"][0].update(time_ns=6))
    path = save(tmp_path, w)
    assert kind_of(lambda: open_archive(path, version=1)) == "invalid_index"  # its head says time 5
    assert kind_of(lambda: open_archive(path, version=2)) == "invalid_index"  # its versions section differs


def test_verify_checks_hashes_and_padding_per_version(tmp_path):
    w = V11Writer()
    w.append([{"name": "a", "array": arr(100), "storage": "chunked", "chunk_elems": 30, "encode": False}])
    w.append([{"name": "a", "array": arr(100), "storage": "chunked", "chunk_elems": 30, "encode": False},
              {"name": "c", "array": np.arange(5, dtype="u1"), "storage": "chunked", "encode": False},
              {"name": "r", "array": arr(7, "<f8")}])  # raw: aligned after c, so version 2 has padding
    good = w.bytes()
    with open_archive(save(tmp_path, w)) as ar:
        ar.verify()
        r, c = ar.tensor("r").chunks[0], ar.tensor("c").chunks[0]
    pad = c.offset + c.stored_length
    assert pad < r.offset and not any(good[pad:r.offset])
    bad = bytearray(good)
    bad[pad] = 1  # padding of version 2
    path = tmp_path / "pad.bpz"
    path.write_bytes(bad)
    with open_archive(path) as ar:
        assert ar.read("r") and kind_of(ar.verify) == "corrupt_data"

    def wrong_hash(model):
        model["chunks"][1]["hash"] = bytes(16)
    w = V11Writer()
    w.append([{"name": "a", "array": arr(100), "storage": "chunked", "chunk_elems": 30}], tamper=wrong_hash)
    w.append([{"name": "b", "array": arr(3)}])
    path = save(tmp_path, w, "hash.bpz")
    with open_archive(path) as ar:  # version 1's hash is wrong: verify of the file checks every version
        assert ar.read("b")
        err = pytest.raises(BpzFormatError, ar.verify).value
        assert err.kind == "checksum_mismatch" and "version 1" in str(err) and "BLAKE3" in str(err)
    with open_archive(path, version=1) as ar:
        assert ar.read("a")  # reading checks crc32c; the hash is verify's


def test_old_trailer_is_verified(tmp_path):
    path, w = series(tmp_path)
    data = bytearray(path.read_bytes())
    r = w.records[0]
    data[r["index_offset"] + r["index_length"] + 5] ^= 1  # inside version 1's trailer
    path.write_bytes(data)
    with open_archive(path) as ar:
        ar.read("conn")
        assert kind_of(ar.verify) == "checksum_mismatch"
    with open_archive(path, version=1) as ar:  # opening v1 reads its index, not its trailer
        assert ar.metadata == {"step": 0}


# ------------------------------------------------------------------ caps and streaming in 1.1
def test_caps_and_streaming(tmp_path):
    w = V11Writer()
    big = np.zeros(1 << 22, np.uint8)  # 4 MiB of zeros in 4 chunks of 1 MiB: ~100 bytes each on disk
    w.append([{"name": "z", "array": big, "storage": "chunked", "chunk_elems": 1 << 20}])
    w.append([{"name": "z", "array": big, "storage": "chunked", "chunk_elems": 1 << 20},
              {"name": "small", "array": arr(10)}])
    path = save(tmp_path, w)
    assert path.stat().st_size < 4096
    with open_archive(path, max_read_bytes=1 << 20, max_chunk_bytes=1 << 20) as ar:
        assert kind_of(lambda: ar.read("z")) == "limit_exceeded"
        assert ar.read_rows("z", 0, 1 << 20) == bytes(1 << 20)
        sink = io.BytesIO()
        assert ar.read_to("z", sink) == 1 << 22 and not any(sink.getvalue())
        assert hashlib.sha256(b"".join(ar.iter_rows("z", 5, 3 << 20))).digest() == \
            hashlib.sha256(bytes((3 << 20) - 5)).digest()
        ar.verify()
    with open_archive(path, max_chunk_bytes=1000) as ar:
        assert kind_of(ar.verify) == "limit_exceeded"
    index_length = w.records[-1]["index_length"]
    open_archive(path, max_index_bytes=index_length).close()
    assert kind_of(lambda: open_archive(path, max_index_bytes=index_length - 1)) == "limit_exceeded"


def test_trailer_must_end_at_a_multiple_of_64(tmp_path):
    """A valid trailer ending where its index says, but not at a multiple of 64: section 10
    step 6 (invalid_index), not an unfinished append."""
    w = one_version()
    data = w.bytes()
    r = w.records[0]
    moved = data[:r["index_offset"]] + b"\0" + data[r["index_offset"]:-32] + \
        trailer(r["index_offset"] + 1, r["index_length"], r["index_crc"])
    path = tmp_path / "m.bpz"
    path.write_bytes(moved)
    assert kind_of(lambda: open_archive(path)) == "invalid_index"


def test_recovery_passes_over_a_version_whose_head_does_not_check(tmp_path):
    """16.7: the scan wants a valid trailer AND a head passing 16.5 steps 1-4; version 2's
    versions chain points forward, so a torn version 3 recovers to version 1."""
    w = V11Writer()
    w.append([{"name": "a", "array": arr(10)}])
    v1 = len(w.buf)
    w.append([{"name": "a", "array": arr(10, seed=2)}],
             tamper=lambda m: m["versions"][0].update(index_offset=1 << 20))
    v2 = w.bytes()
    path = tmp_path / "v2.bpz"
    path.write_bytes(v2)
    assert kind_of(lambda: open_archive(path)) == "invalid_index"  # as the latest: an error
    path.write_bytes(v2 + b"\1" * 100)  # a torn version 3 after it: passed over
    with open_archive(path) as ar:
        assert ar.version_number == 1 and ar.recovered.committed_end == v1
