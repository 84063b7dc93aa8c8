"""Legacy ``save_states`` files (.h5/.hdf5/.npz/.pkl/.pickle/.mat): samples, layout, hostile files."""

from __future__ import annotations

import io
import os
import pickle
import random
import sys
import zipfile

import h5py
import numpy as np
import pytest
import scipy.io as sio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from bpz._legacy import expand_aliases, read_states, states_files, write_states
from bpz.errors import CheckpointNotFoundError, FormatError, LimitExceededError

from conftest import FIXTURES, bounded, check_entry, file_sha256, manifest, sample_files, sha256

STATES = sample_files(lambda name, meta: name.startswith(("einet_states", "dup_states")))
DUP = ("duplicate_keys", "duplicate_targets")
V238 = FIXTURES / "brainpy-2.3.8"


def _expected_lists(meta: dict) -> tuple[list[str], list[str]]:
    lists = {}
    for e in meta["entries"]:
        if e["path"][0] in DUP:
            names = e["value"].split("+") if "value" in e else [v.strip() for v in e["values"]]
            lists[e["path"][0]] = names
    return lists.get("duplicate_keys", []), lists.get("duplicate_targets", [])


@pytest.mark.parametrize("version, name, meta", STATES)
def test_sample_matches_manifest(version, name, meta):
    path = FIXTURES / version / name
    assert file_sha256(path) == meta["file_sha256"]
    flat, aliases = read_states(path)
    entries = [e for e in meta["entries"] if e["path"][0] not in DUP]
    assert list(flat) == [e["path"][0] for e in entries]
    twin = {e["path"][0]: e for e in manifest(version)["files"][name.split("_states")[0] + "_states.npz"]["entries"]}
    for entry in entries:
        value = flat[entry["path"][0]]
        if name.endswith(".mat"):  # the manifest shows scipy's raw view; bpz returns BrainPy's view, fixed
            entry = {**entry, "shape": entry["brainpy_view_shape"], "sha256": entry["brainpy_view_sha256"],
                     "dtype": twin[entry["path"][0]]["dtype"]}
        check_entry(value, entry)
    keys, targets = _expected_lists(meta)
    assert list(aliases) == keys and list(aliases.values()) == targets
    model = manifest(version)["models"][name.split("_")[0]]
    assert sorted(expand_aliases(flat, aliases)) == sorted(model["vars_absolute"])


def test_aliases_share_the_stored_array():
    flat, aliases = read_states(V238 / "einet_states.npz")
    everything = expand_aliases(flat, aliases)
    assert everything["COBA2.membrane_var"] is flat["LIF0.V"] and everything["COBA3.target_var"] is flat["LIF1.input"]


def test_mat_fixes_bool_and_uses_like_for_0d():
    flat, _ = read_states(V238 / "dup_states.mat")
    assert flat["DupHolder0.b"].dtype == bool  # BrainPy got uint8 and could not assign it
    assert flat["DupHolder0.s"].shape == (1,)  # BrainPy's view: () and (1,) look alike in .mat
    truth, _ = read_states(V238 / "dup_states.npz")
    fixed, _ = read_states(V238 / "dup_states.mat", like=truth)
    for key, arr in truth.items():
        assert fixed[key].shape == arr.shape and fixed[key].dtype == arr.dtype and sha256(fixed[key]) == sha256(arr)


def test_every_format_gives_the_same_values():
    reference, ref_aliases = read_states(V238 / "einet_states.npz")
    for suffix in (".h5", ".hdf5", ".pkl", ".mat", "_compressed.npz"):
        flat, aliases = read_states(V238 / f"einet_states{suffix}", like=reference)
        assert aliases == ref_aliases
        assert {k: sha256(v) for k, v in flat.items()} == {k: sha256(v) for k, v in reference.items()}


# --- the layout BrainPy writes ----------------------------------------------------------------

def raw_view(path) -> dict:
    """The file as the plain libraries see it: what BrainPy's loaders would read."""
    path = str(path)
    if path.endswith((".h5", ".hdf5")):
        with h5py.File(path, "r") as f:
            return {k: (f[k].dtype.str, f[k].shape, f[k][()].tobytes() if f[k].dtype.kind != "O" else f[k][()])
                    for k in f}
    if path.endswith(".npz"):
        with zipfile.ZipFile(path) as zf:
            kinds = [i.compress_type for i in zf.infolist()]
        with np.load(path, allow_pickle=False) as z:
            return {"zip": kinds, **{k: (z[k].dtype.str, z[k].shape, z[k].tobytes()) for k in z.files}}
    if path.endswith((".pkl", ".pickle")):
        with open(path, "rb") as fh:  # our own fixtures: trusted
            data = pickle.load(fh)
        return {k: (type(v), v.dtype.str, v.shape, v.tobytes()) for k, v in data.items()}
    data = sio.loadmat(path)
    return {"whos": sio.whosmat(path), **{k: (v.dtype.str, v.shape, v.tobytes())
                                          for k, v in data.items() if not k.startswith("__")}}


@pytest.mark.filterwarnings("ignore:numpy.core")  # pickle.load of numpy 1 files
@pytest.mark.parametrize("name", sorted(p.name for p in V238.iterdir() if "_states" in p.name))
def test_rewrite_reproduces_brainpy_layout(tmp_path, name):
    flat, aliases = read_states(V238 / name)
    out = tmp_path / name.replace("_compressed", "")
    write_states(out, flat, aliases, compressed="compressed" in name)
    assert raw_view(out) == raw_view(V238 / name)


SUFFIXES = [".h5", ".hdf5", ".npz", ".pkl", ".pickle", ".mat"]
VALUES = {
    "A.bool": np.array([True, False, True]), "A.i8": np.arange(-3, 3, dtype=np.int8).reshape(2, 3),
    "A.u16": np.array([65535], np.uint16), "A.i64": np.array(2**40), "A.f16": np.array([0.5, -2], np.float16),
    "A.f32": np.linspace(0, 1, 5, dtype=np.float32), "A.f64": np.array([[np.nan, np.inf]]),
    "A.c64": np.array([1 + 2j], np.complex64), "A.c128": np.array(3 - 1j), "A.empty": np.zeros((0, 3)),
    "A.trailing": np.ones((2, 1, 1), np.int32), "A.be": np.arange(3, dtype=">f8"),
}
ALIASES = {"B.alias_of_f32": "A.f32", "C.alias_of_bool": "A.bool"}


def _assert_same(flat: dict, expected: dict, ordered: bool = True) -> None:
    assert list(flat) == list(expected) if ordered else sorted(flat) == sorted(expected)
    for key, arr in expected.items():
        got = flat[key]
        assert got.dtype == arr.dtype.newbyteorder("=") and got.shape == arr.shape, (key, got.dtype, got.shape)
        assert got.flags.writeable and got.dtype.isnative
        np.testing.assert_array_equal(got, arr)


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_round_trip(tmp_path, suffix):
    path = write_states(tmp_path / f"s{suffix}", VALUES, ALIASES)
    flat, aliases = read_states(path, like=VALUES)
    _assert_same(flat, VALUES, ordered=suffix not in (".h5", ".hdf5"))  # HDF5 lists names sorted
    assert aliases == ALIASES and not list(tmp_path.glob("*.tmp-*"))


def test_mat_without_like_returns_brainpy_view(tmp_path):
    flat, _ = read_states(write_states(tmp_path / "s.mat", VALUES))
    assert flat["A.i64"].shape == (1,) and flat["A.c128"].shape == (1,)  # 0-d is lost in .mat
    assert flat["A.f16"].dtype == np.float64  # scipy stores float16 as double
    assert flat["A.bool"].dtype == bool and flat["A.trailing"].shape == (2, 1, 1)


def test_like_never_loses_data(tmp_path):
    flat, _ = read_states(write_states(tmp_path / "s.mat", {"x": np.array([0.1, 300.0])}),
                          like={"x": np.zeros(2, np.float16), "missing": np.zeros(1)})
    assert flat["x"].dtype == np.float64  # 0.1 and 300.0 do not survive float16: left alone


def test_compressed_npz(tmp_path):
    write_states(tmp_path / "c.npz", {"z": np.zeros(10_000)}, compressed=True)
    with zipfile.ZipFile(tmp_path / "c.npz") as zf:
        assert zf.infolist()[0].compress_type == zipfile.ZIP_DEFLATED
    assert (tmp_path / "c.npz").stat().st_size < 10_000
    np.testing.assert_array_equal(read_states(tmp_path / "c.npz")[0]["z"], np.zeros(10_000))


NAMES = st.from_regex(r"[A-Za-z][A-Za-z0-9_.]{0,10}", fullmatch=True).filter(lambda n: n not in DUP)
DTYPES = st.sampled_from(["bool", "int8", "uint8", "int16", "int32", "int64", "uint64", "float16",
                          "float32", "float64", "complex64", "complex128"])
ARRAYS = DTYPES.flatmap(lambda dt: hnp.arrays(np.dtype(dt), hnp.array_shapes(min_dims=0, max_dims=3,
                                                                           min_side=0, max_side=3)))


@pytest.mark.parametrize("suffix", [".h5", ".npz", ".pkl", ".mat"])
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(flat=st.dictionaries(NAMES, ARRAYS, min_size=1, max_size=5), data=st.data())
def test_property_round_trip(tmp_path, suffix, flat, data):
    free = [n for n in ["x.alias1", "y.alias2", "z.alias3"] if n not in flat]
    names = data.draw(st.lists(st.sampled_from(free), unique=True))
    aliases = {a: data.draw(st.sampled_from(sorted(flat))) for a in names}
    path = write_states(tmp_path / f"p{suffix}", flat, aliases)
    got, got_aliases = read_states(path, like=flat)
    _assert_same(got, flat, ordered=suffix != ".h5")
    assert got_aliases == aliases


# --- hostile and malformed files ---------------------------------------------------------------

def test_unknown_suffix_and_missing_file(tmp_path):
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(FormatError, match="Unknown file format"):
        read_states(tmp_path / "x.json")
    with pytest.raises(CheckpointNotFoundError):
        read_states(tmp_path / "missing.npz")
    with pytest.raises(ValueError, match="Unknown file format"):
        write_states(tmp_path / "x.txt", VALUES)


@pytest.mark.parametrize("suffix", [".h5", ".npz", ".pkl", ".mat"])
def test_the_content_not_the_name_picks_the_reader(tmp_path, suffix):
    """A states file renamed to another format's suffix still reads as what it holds."""
    flat = {"A.x": np.arange(4.0), "A.n": np.array([1, 2], np.int32)}
    written = write_states(tmp_path / f"a{suffix}", flat, {"B.x": "A.x"})
    for disguise in {".h5", ".npz", ".pkl", ".mat", ".bin"} - {suffix}:
        renamed = tmp_path / f"a{suffix}{disguise}"
        os.replace(written, renamed)
        got, aliases = read_states(renamed, like=flat)
        _assert_same(got, flat, ordered=suffix != ".h5")
        assert aliases == {"B.x": "A.x"}
        written = renamed
    assert states_files.content_format(str(written)) == {".pkl": "pkl"}.get(suffix, suffix[1:])


def test_a_pickle_without_a_signature_is_read_only_under_a_pickle_name(tmp_path):
    """Pickle protocols 0 and 1 start with no magic bytes: the name is the only hint."""
    data = pickle.dumps({"A.x": np.arange(3.0)}, protocol=0)
    (tmp_path / "old.pkl").write_bytes(data)
    (tmp_path / "old.dat").write_bytes(data)
    np.testing.assert_array_equal(read_states(tmp_path / "old.pkl")[0]["A.x"], np.arange(3.0))
    with pytest.raises(FormatError, match="Unknown file format"):
        read_states(tmp_path / "old.dat")


@pytest.mark.parametrize("name", ["einet_states.h5", "einet_states.npz", "einet_states_compressed.npz",
                                  "einet_states.pkl", "einet_states.mat"])
def test_truncated_files(tmp_path, name):
    data = (V238 / name).read_bytes()
    path = tmp_path / name
    with bounded():
        for n in sorted({0, 1, 7, 100, 129, len(data) // 3, len(data) // 2, len(data) - 40, len(data) - 1}):
            path.write_bytes(data[:n])
            with pytest.raises(FormatError):
                read_states(path)


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_random_garbage(tmp_path, suffix):
    rng = random.Random(suffix)
    path = tmp_path / f"g{suffix}"
    with bounded():
        for _ in range(30):
            path.write_bytes(bytes(rng.randrange(256) for _ in range(rng.randrange(0, 600))))
            with pytest.raises(FormatError):
                read_states(path)


def _npz(path, members: dict[str, bytes], compression=zipfile.ZIP_STORED):
    with zipfile.ZipFile(path, "w", compression) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def _npy(header: dict, data: bytes) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, header)
    return buf.getvalue() + data


def test_npz_object_member_is_not_unpickled(tmp_path):
    np.savez(tmp_path / "o.npz", a=np.array([1, "x"], dtype=object))
    with pytest.raises(FormatError, match="dtype object"):
        read_states(tmp_path / "o.npz")


def test_npz_header_declaring_huge_shape(tmp_path):
    path = _npz(tmp_path / "h.npz", {"a.npy": _npy({"descr": "<f8", "fortran_order": False,
                                                    "shape": (10**9, 10**3)}, b"\0" * 8)})
    with bounded(), pytest.raises(FormatError, match="needs"):
        read_states(path)


@pytest.mark.parametrize("members, match", [
    ({"a.txt": b"x"}, "npy"),
    ({"a.npy": b"\x93NUMPY\x09\x00"}, "version"),
    ({"a.npy": _npy({"descr": "|O", "fortran_order": False, "shape": (1,)}, b"\0" * 8)}, "dtype"),
    ({"a.npy": _npy({"descr": [("f", "<f4")], "fortran_order": False, "shape": (1,)}, b"\0" * 4)}, "dtype"),
    ({"a.npy": _npy({"descr": "<U3", "fortran_order": False, "shape": (1,)}, b"\0" * 12)}, "dtype"),
    ({"a.npy": _npy({"descr": "<f4", "fortran_order": False, "shape": (1,)}, b"\0" * 4),
      "duplicate_keys.npy": _npy({"descr": "<U1", "fortran_order": False, "shape": (2,)}, "ab".encode("utf-32-le")),
      "duplicate_targets.npy": _npy({"descr": "<U1", "fortran_order": False, "shape": (1,)}, "a".encode("utf-32-le"))},
     "2 duplicate_keys but 1"),
    ({"a.npy": _npy({"descr": "<f4", "fortran_order": False, "shape": (1,)}, b"\0" * 4),
      "duplicate_keys.npy": _npy({"descr": "<U1", "fortran_order": False, "shape": (1,)}, "b".encode("utf-32-le")),
      "duplicate_targets.npy": _npy({"descr": "<U1", "fortran_order": False, "shape": (1,)}, "c".encode("utf-32-le"))},
     "does not name a stored"),
])
def test_npz_malformed(tmp_path, members, match):
    with bounded(), pytest.raises(FormatError, match=match):
        read_states(_npz(tmp_path / "m.npz", members))


def test_npz_decompression_limit(tmp_path, monkeypatch):
    path = _npz(tmp_path / "z.npz", {"z.npy": _npy({"descr": "<f8", "fortran_order": False, "shape": (100_000,)},
                                                   b"\0" * 800_000)}, zipfile.ZIP_DEFLATED)
    assert read_states(path)[0]["z"].shape == (100_000,)
    with pytest.raises(LimitExceededError, match="expands"):
        read_states(path, max_ratio=10)


def test_h5_links_and_odd_datasets(tmp_path):
    target = tmp_path / "other.h5"
    with h5py.File(target, "w") as f:
        f["secret"] = np.ones(3)
    cases = {
        "ext": lambda f: f.__setitem__("v", h5py.ExternalLink(str(target), "secret")),
        "soft": lambda f: (f.__setitem__("a", np.ones(1)), f.__setitem__("b", h5py.SoftLink("/a"))),
        "vlen": lambda f: f.create_dataset("v", data="text"),
        "null": lambda f: f.create_dataset("v", data=h5py.Empty("f4")),
        "compound": lambda f: f.create_dataset("v", data=np.zeros(2, dtype=[("x", "<f4"), ("y", "<i4")])),
        "dups_not_text": lambda f: (f.__setitem__("a", np.ones(1)), f.__setitem__("duplicate_keys", np.ones(1))),
    }
    for label, make in cases.items():
        path = tmp_path / f"{label}.h5"
        with h5py.File(path, "w") as f:
            make(f)
        with pytest.raises(FormatError):
            read_states(path)


def test_h5_unallocated_huge_dataset(tmp_path):
    with h5py.File(tmp_path / "u.h5", "w") as f:
        f.create_dataset("huge", shape=(10**6, 10**6), dtype="f8")  # no data written: nothing stored
    with bounded(), pytest.raises(LimitExceededError):
        read_states(tmp_path / "u.h5")


def test_h5_groups_from_slashed_names_read_back_whole(tmp_path):
    write_states(tmp_path / "g.h5", {"net/LIF0.V": np.ones(2), "top": np.zeros(1)})
    assert sorted(read_states(tmp_path / "g.h5")[0]) == ["net/LIF0.V", "top"]


def test_mat_malformed(tmp_path):
    header = bytearray(b" " * 116 + b"\0" * 8 + b"\x00\x02IM")  # version 0x0200: a v7.3 (HDF5) file
    (tmp_path / "v73.mat").write_bytes(bytes(header))
    with pytest.raises(FormatError, match="version"):
        read_states(tmp_path / "v73.mat")
    sio.savemat(tmp_path / "cell.mat", {"a": np.array([1, "x"], dtype=object)})
    with pytest.raises(FormatError, match="class"):
        read_states(tmp_path / "cell.mat")
    sio.savemat(tmp_path / "zip.mat", {"a": np.zeros((1, 10**5))}, do_compression=True)
    with pytest.raises(FormatError, match="compressed"):
        read_states(tmp_path / "zip.mat")
    sio.savemat(tmp_path / "axis.mat", {"a": np.ones((2, 3))})
    with pytest.raises(FormatError, match="leading axis"):
        read_states(tmp_path / "axis.mat")


def test_pkl_malformed(tmp_path):
    cases = {"list.pkl": [np.ones(1)], "value.pkl": {"a": "text"}, "key.pkl": {1: np.ones(1)},
             "dups.pkl": {"a": np.ones(1), "duplicate_keys": np.ones(1), "duplicate_targets": np.ones(1)}}
    for name, obj in cases.items():
        (tmp_path / name).write_bytes(pickle.dumps(obj))
        with pytest.raises(FormatError):
            read_states(tmp_path / name)


def test_pkl_with_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return os.system, (f"touch {tmp_path / 'pwned'}",)

    (tmp_path / "evil.pickle").write_bytes(pickle.dumps({"a": np.ones(1), "b": Evil()}))
    with pytest.raises(FormatError, match="not allowed"):
        read_states(tmp_path / "evil.pickle")
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("flat, aliases, suffix, error, match", [
    ({"a": np.ones(1)}, {"b": "missing"}, ".npz", ValueError, "target must be stored"),
    ({"a": np.ones(1), "b": np.ones(1)}, {"b": "a"}, ".npz", ValueError, "target must be stored"),
    ({"a+x": np.ones(1)}, {"b": "a+x"}, ".h5", ValueError, r"\+"),
    ({"duplicate_keys": np.ones(1)}, None, ".npz", ValueError, "reserved"),
])
def test_write_refuses(tmp_path, flat, aliases, suffix, error, match):
    with pytest.raises(error, match=match):
        write_states(tmp_path / f"w{suffix}", flat, aliases)
    assert list(tmp_path.iterdir()) == []


def test_write_unknown_setting(tmp_path):
    with pytest.raises(TypeError, match="compresed"):
        write_states(tmp_path / "w.npz", {"a": np.ones(1)}, compresed=True)


def test_failed_write_leaves_nothing(tmp_path):
    with pytest.raises(TypeError):  # h5py cannot store object arrays
        write_states(tmp_path / "w.h5", {"a": np.ones(2), "b": np.array([object()])})
    assert list(tmp_path.iterdir()) == []


def test_missing_optional_dependencies(tmp_path, monkeypatch):
    h5, mat = (write_states(tmp_path / f"d{suffix}", {"a": np.ones(1)}) for suffix in (".h5", ".mat"))
    monkeypatch.setitem(sys.modules, "h5py", None)
    monkeypatch.setitem(sys.modules, "scipy.io", None)
    for call in (lambda: read_states(h5), lambda: write_states(tmp_path / "e.h5", {"a": np.ones(1)})):
        with pytest.raises(ImportError, match="pip install h5py"):
            call()
    with pytest.raises(ImportError, match="pip install scipy"):
        write_states(tmp_path / "e.mat", {"a": np.ones(1)})
    np.testing.assert_array_equal(read_states(mat)[0]["a"], [1.0])  # reading .mat needs no scipy


def test_h5_is_read_in_a_child_so_a_hang_or_crash_is_a_format_error(monkeypatch, tmp_path):
    """libhdf5 can hang or crash on hostile files: bpz isolates it in a child process."""
    from bpz._legacy import states_files
    from bpz.errors import FormatError

    src = FIXTURES / "brainpy-2.3.8" / "einet_states.h5"
    monkeypatch.setattr(states_files, "H5_TIMEOUT", 0.001)
    with pytest.raises(FormatError, match="did not finish"):
        states_files.read_states(src)
    monkeypatch.setattr(states_files, "H5_TIMEOUT", 300.0)
    bad = tmp_path / "bad.h5"
    bad.write_bytes(src.read_bytes()[:2000])
    with pytest.raises(FormatError):
        states_files.read_states(bad)
