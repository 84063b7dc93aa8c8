"""Expansion budget of the legacy readers: small hostile files cannot make bpz build far more
than they hold, and running out of memory is a LimitExceededError naming the file.

The bombs (``bombs.py``) are made at test time, a few MB at most. Where the default limits
matter, the read runs in a child process under an address-space limit (RLIMIT_AS), as the
attack harness does.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import textwrap
import time
from collections import OrderedDict
from pathlib import Path

import h5py
import msgpack
import numpy as np
import pytest

import bombs
from bpz._legacy import _common, load_pickle, read_bp, read_states
from bpz._legacy.states_files import read_npz_arrays
from bpz.errors import BpzError, FormatError, LimitExceededError

from conftest import FIXTURES, bounded

MiB = 2**20
HERE = Path(__file__).resolve().parent


def run_limited(code: str, address_space: int = 1024 * MiB, env: dict | None = None, timeout: float = 60) -> dict:
    """Run ``code`` (which sets ``result``) in a child under RLIMIT_AS; its outcome as a dict."""
    child = textwrap.dedent("""
        import json, resource, sys, traceback
        resource.setrlimit(resource.RLIMIT_AS, ({limit}, {limit}))
        sys.path.insert(0, {here!r})
        import numpy as np
        import bombs
        from bpz._legacy import load_pickle, read_bp, read_states
        try:
        {body}
            out = {{"result": "ok"}}
        except BaseException as e:
            out = {{"result": type(e).__name__, "msg": str(e), "bpz": isinstance(e, __import__("bpz.errors").errors.BpzError)}}
        out["maxrss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(out))
    """).format(limit=address_space, here=str(HERE), body=textwrap.indent(textwrap.dedent(code), "    "))
    proc = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=timeout,
                          # the defaults unless the test sets them: nothing inherited from the caller
                          env={**{k: v for k, v in os.environ.items() if not k.startswith("BPZ_LEGACY_")}, **(env or {})})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --- the budget itself ------------------------------------------------------------------------

def test_budget_is_ratio_times_size_with_floor_and_cap(monkeypatch):
    monkeypatch.delenv(_common.ENV_MAX_RATIO, raising=False)
    monkeypatch.delenv(_common.ENV_MAX_BYTES, raising=False)
    small = _common.ExpansionBudget("f", 1000, compressed=True)
    assert small.allowed == min(_common.MIN_BUDGET_BYTES, small.cap)
    big = _common.ExpansionBudget("f", 10 * MiB, compressed=True, max_bytes=2**40)
    assert big.allowed == _common.COMPRESSED_RATIO * 10 * MiB
    assert _common.ExpansionBudget("f", 10 * MiB, compressed=False, max_bytes=2**40).allowed == \
        _common.PLAIN_RATIO * 10 * MiB
    assert _common.ExpansionBudget("f", 10 * MiB, compressed=True, max_bytes=5 * MiB).allowed == 5 * MiB


def test_budget_precedence_keyword_configure_environment(monkeypatch):
    monkeypatch.setenv(_common.ENV_MAX_BYTES, "3M")
    monkeypatch.setenv(_common.ENV_MAX_RATIO, "2")
    assert _common.ExpansionBudget("f", 1, compressed=True).allowed == 3 * MiB
    assert _common.ExpansionBudget("f", 1, compressed=True).ratio == 2
    old = _common.set_legacy_limits(max_bytes=2 * MiB)
    try:
        assert _common.ExpansionBudget("f", 1, compressed=True).allowed == 2 * MiB
        assert _common.ExpansionBudget("f", 1, compressed=True, max_bytes=MiB).allowed == MiB
    finally:
        _common.set_legacy_limits(**old)
    monkeypatch.setenv(_common.ENV_MAX_BYTES, "lots")
    with pytest.raises(BpzError, match="BPZ_LEGACY_MAX_BYTES"):
        _common.ExpansionBudget("f", 1, compressed=True)
    with pytest.raises(ValueError, match="positive"):
        _common.set_legacy_limits(max_ratio=0)


def test_error_names_file_key_bytes_budget_and_how_to_raise(tmp_path):
    path = tmp_path / "s.pkl"
    path.write_bytes(pickle.dumps({"w": np.zeros(2 * MiB, np.uint8)}))
    with pytest.raises(LimitExceededError) as err:
        load_pickle(path, max_bytes=MiB)
    msg = str(err.value)
    for part in (str(path), "['w']", "2.0 MiB", "1.0 MiB", "BPZ_LEGACY_MAX_RATIO", "BPZ_LEGACY_MAX_BYTES", "max_bytes="):
        assert part in msg, (part, msg)


def test_real_brainpy_files_load_within_the_smallest_default_budget(monkeypatch):
    """Every sample needs far less than the 256 MiB floor, and less than 64x its size."""
    monkeypatch.delenv(_common.ENV_MAX_RATIO, raising=False)
    monkeypatch.delenv(_common.ENV_MAX_BYTES, raising=False)
    for path in sorted(FIXTURES.glob("*/*")):
        size = max(path.stat().st_size, 1)
        if path.suffix == ".bp":
            read_bp(path, max_bytes=_common.PLAIN_RATIO * size)
        elif path.suffix == ".pkl" and "state_dict" in path.name:
            load_pickle(path, max_bytes=_common.PLAIN_RATIO * size)
        elif path.suffix in (".npz", ".pkl", ".mat", ".h5", ".hdf5"):
            read_states(path, max_bytes=_common.PLAIN_RATIO * size)


# --- pickles ------------------------------------------------------------------------------------

def test_pickle_memo_references_cannot_multiply_an_array():
    """1 MiB of pickle naming one 1 MiB bytes object 3000 times: 3 GiB of arrays before the fix."""
    out = run_limited("load_pickle(bombs.pickle_memo_arrays(3000))", address_space=1536 * MiB)
    assert out["result"] == "LimitExceededError" and out["bpz"], out
    assert "budget" in out["msg"] and "at key path [" in out["msg"], out
    assert out["maxrss_mib"] < 1024, out  # the 256 MiB budget floor plus the interpreter; 3 GiB before the fix


def test_pickle_memo_bomb_with_a_small_budget_stays_small():
    with bounded(seconds=20, megabytes=40), pytest.raises(LimitExceededError, match="budget"):
        load_pickle(bombs.pickle_memo_arrays(300), max_bytes=16 * MiB)


@pytest.mark.parametrize("fn", [list, tuple, set, frozenset, dict, OrderedDict, bytearray])
def test_pickle_constructor_copies_are_charged(fn):
    """list(x), tuple(x) ... of one memoized large object, thousands of times (GBs before)."""
    if fn is bytearray:
        big = b"\0" * MiB
        data = pickle.dumps([big] + [bombs._Call(bytearray, big) for _ in range(20_000)], protocol=4)
    else:
        data = bombs.pickle_constructor_copies(fn, copies=20_000, items=100_000)
    with bounded(seconds=30, megabytes=80), pytest.raises(LimitExceededError, match="a call of (builtins|collections)"):
        load_pickle(data, max_bytes=32 * MiB)


def test_pickle_codecs_encode_copies_are_charged():
    with bounded(seconds=30, megabytes=64), pytest.raises(LimitExceededError, match="_codecs.encode"):
        load_pickle(bombs.pickle_encode_copies(2000), max_bytes=32 * MiB)


def test_pickle_newobj_cannot_copy_past_the_charge():
    """NEWOBJ tuple.__new__(tuple, big) would copy without calling the charged wrapper."""
    data = (b"\x80\x04\x95\x00\x00\x00\x00\x00\x00\x00\x00" b"\x8c\x08builtins\x8c\x05tuple\x93"
            b"]K\x01a\x85\x81.")
    with pytest.raises(FormatError):
        load_pickle(data)


def test_pickle_build_cannot_modify_allowed_globals_for_later_files():
    """BUILD on the ml_dtypes stand-in used to rename it for every later load in the process."""
    import ml_dtypes
    good = pickle.dumps(np.ones(2, dtype=ml_dtypes.float8_e5m2))
    poison = (b"\x80\x02cml_dtypes\nfloat8_e5m2\n}(X\x04\x00\x00\x00nameX\x0d\x00\x00\x00float8_e4m3fnub.")
    with pytest.raises(FormatError, match="BUILD"):
        load_pickle(poison)
    for module, name in (("numpy._core.multiarray", "_reconstruct"), ("_codecs", "encode"), ("builtins", "bytes")):
        spoil = f"\x80\x02c{module}\n{name}\n}}(X\x01\x00\x00\x00xK\x01ub.".encode()
        with pytest.raises(FormatError):
            load_pickle(spoil)
    assert load_pickle(good).dtype == np.dtype(ml_dtypes.float8_e5m2)


def test_pickle_deep_nesting_is_a_limit_error_even_from_a_deep_stack():
    data = bombs.deep_pickle(100_000)
    with pytest.raises(LimitExceededError, match="nest"):
        load_pickle(data)

    def at_depth(n):
        return at_depth(n - 1) if n else load_pickle(bombs.deep_pickle(250))

    with pytest.raises(LimitExceededError):
        at_depth(sys.getrecursionlimit() - 120)


def test_pickle_huge_key_named_in_many_places_is_cheap():
    """Error context used to repr the full key path for every array: 20000 x 1 MiB of repr."""
    key = "k" * MiB
    data = pickle.dumps([{key: np.zeros(1)} for _ in range(20_000)], protocol=4)
    start = time.perf_counter()
    assert len(load_pickle(data)) == 20_000
    assert time.perf_counter() - start < 10


# --- .bp --------------------------------------------------------------------------------------

def test_bp_containers_are_charged_as_they_are_unpacked():
    """5 MB of empty maps is 350 MB of dicts: refused when the budget runs out, not after."""
    with bounded(seconds=30, megabytes=64), pytest.raises(LimitExceededError, match="msgpack"):
        read_bp(bombs.bp_empty_maps(5_000_000), max_bytes=32 * MiB)


def test_bp_chunked_array_is_assembled_once(tmp_path):
    from bpz._legacy import write_bp
    arr = np.arange(4 * MiB // 8, dtype=np.float64)
    path = write_bp(tmp_path / "c.bp", {"a": arr}, max_chunk_bytes=MiB)
    with bounded(megabytes=4 * 2 + 1.5 * 4):  # the file's payloads + one array (was + pieces + concat)
        assert np.array_equal(read_bp(path)["a"], arr)


def test_bp_chunk_that_is_not_an_array():
    chunked = {"__msgpack_chunked_array__": True, "shape": {"0": 2}, "chunks": {"0": [1, 2]}}
    with pytest.raises(FormatError, match="not an array"):
        read_bp(msgpack.packb({"a": chunked}))


# --- .npz -------------------------------------------------------------------------------------

def test_npz_deflate_bomb_is_refused_before_allocating(tmp_path):
    path = tmp_path / "bomb.npz"
    path.write_bytes(bombs.npz_deflate_bomb(2**30))
    with bounded(megabytes=8), pytest.raises(LimitExceededError, match=r"bomb\.npz: at key 'z'.*budget"):
        read_states(path, max_bytes=256 * MiB)


def test_npz_member_is_streamed_into_its_array(tmp_path):
    path = tmp_path / "z.npz"
    path.write_bytes(bombs.npz_deflate_bomb(64 * MiB))
    with bounded(megabytes=64 * 1.25):  # was 2x: the member's bytes, then the array
        assert read_states(path)[0]["z"].nbytes == 64 * MiB


def test_npz_bomb_past_memory_is_a_limit_error_not_memory_error(tmp_path):
    """1 MB file, 1 GiB member (within the 1100x ratio) in a process that cannot hold 1 GiB."""
    path = tmp_path / "bomb.npz"
    path.write_bytes(bombs.npz_deflate_bomb(2**30))
    out = run_limited(f"read_states({str(path)!r})", address_space=900 * MiB)
    assert out["result"] == "LimitExceededError" and out["bpz"], out
    assert str(path) in out["msg"], out


def test_npz_overlapping_members(tmp_path):
    path = tmp_path / "overlap.npz"
    path.write_bytes(bombs.npz_overlapping(200, 16 * MiB))
    with bounded(megabytes=8), pytest.raises(FormatError, match="overlap"):
        read_states(path)


@pytest.mark.parametrize("method", ["bzip2", "lzma"])
def test_npz_other_compression_methods_are_refused(tmp_path, method):
    import zipfile
    path = tmp_path / "m.npz"
    with zipfile.ZipFile(path, "w", {"bzip2": zipfile.ZIP_BZIP2, "lzma": zipfile.ZIP_LZMA}[method]) as zf:
        zf.writestr("a.npy", bombs.npy_header((1000,)) + b"\0" * 8000)
    with pytest.raises(FormatError, match="compression method"):
        read_states(path)


def test_npz_many_members_are_charged(tmp_path):
    import zipfile
    path = tmp_path / "many.npz"
    empty = bombs.npy_header((0,))
    with zipfile.ZipFile(path, "w") as zf:
        for i in range(20_000):
            zf.writestr(f"m{i}.npy", empty)
    with pytest.raises(LimitExceededError, match="budget"):
        read_states(path, max_bytes=4 * MiB)
    assert len(read_states(path)[0]) == 20_000


def test_npz_reader_used_by_convert_is_guarded_too(tmp_path):
    path = tmp_path / "bomb.npz"
    path.write_bytes(bombs.npz_deflate_bomb(2**30))
    with pytest.raises(LimitExceededError, match="bomb.npz"):
        read_npz_arrays(str(path), path.stat().st_size, {"max_bytes": 64 * MiB})


# --- .h5 ----------------------------------------------------------------------------------------

def test_h5_gzip_bomb_is_refused(tmp_path):
    path = tmp_path / "g.h5"
    with h5py.File(path, "w") as f:
        d = f.create_dataset("z", shape=(8 * MiB,), dtype="f8", chunks=(MiB,), compression="gzip")
        d[:] = 0.0
    assert path.stat().st_size < MiB
    with pytest.raises(LimitExceededError, match=r"g\.h5: at key 'z'.*budget"):
        read_states(path, max_bytes=32 * MiB)
    assert read_states(path)[0]["z"].nbytes == 64 * MiB


def test_h5_child_runs_under_an_address_space_limit():
    code = textwrap.dedent("""
        import resource, numpy as np
        from bpz._legacy.states_files import _limit_address_space
        _limit_address_space(256 * 2**20)
        print(resource.getrlimit(resource.RLIMIT_AS)[0] != resource.RLIM_INFINITY)
        try:
            np.ones(2**30, np.uint8)
            print("allocated")
        except MemoryError:
            print("refused")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == ["True", "refused"], out.stderr


# --- .mat ---------------------------------------------------------------------------------------

def test_mat_compressed_element_is_refused_unread(tmp_path):
    import struct
    import zlib
    bomb = zlib.compress(b"\0" * 256 * MiB, 9)
    header = b"MATLAB 5.0 MAT-file".ljust(116, b" ") + b"\0" * 8 + struct.pack("<H", 0x0100) + b"IM"
    path = tmp_path / "c.mat"
    path.write_bytes(header + struct.pack("<II", 15, len(bomb)) + bomb + b"\0" * (-len(bomb) % 8))
    with bounded(megabytes=4), pytest.raises(FormatError, match="compressed"):
        read_states(path)


def test_mat_widening_is_charged(tmp_path):
    import scipy.io as sio
    path = tmp_path / "w.mat"
    sio.savemat(path, {"a": np.zeros((1, 4 * MiB), np.float64)})
    assert read_states(path)[0]["a"].nbytes == 32 * MiB
    with pytest.raises(LimitExceededError, match=r"w\.mat: at key 'a'"):
        read_states(path, max_bytes=40 * MiB)
