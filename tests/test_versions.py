"""Versioned archives (format 1.1) from Python, end to end: appends and what each version
reads back, deduplication, the ``version=`` argument, appending to missing / 1.0 / foreign
files, async appends, unfinished appends and their recovery, diff and chunk tables,
compaction, numbered checkpoints as versions of one archive, and ``bpz log/diff/compact``."""

from __future__ import annotations

import datetime
import hashlib
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import bpz
import bpz.checkpoints as checkpoints
from bpz import cli
from bpz._legacy.bp_msgpack import write_bp
from bpz.errors import (
    CheckpointNotFoundError,
    InvalidArgumentError,
    InvalidCheckpointError,
    InvalidCheckpointPath,
    NotAnArchiveError,
    RecoveredArchiveWarning,
    TruncatedError,
)

ROOT = Path(__file__).resolve().parents[1]
VECTORS = ROOT / "spec" / "vectors"
sys.path.insert(0, str(ROOT / "spec" / "readers" / "python"))
from bpz_reader import blake3  # noqa: E402  (the independent reader's own BLAKE3)


def _append(path, tree, **options):
    bpz.save_pytree(path, tree, verbose=False, append=True, **options)


def _assert_same(got, want, where=""):
    if isinstance(want, dict):
        assert isinstance(got, dict) and sorted(got, key=repr) == sorted(want, key=repr), (where, got, want)
        for k in want:
            _assert_same(got[k], want[k], f"{where}/{k}")
    elif isinstance(want, (list, tuple)):
        assert type(got) is type(want) and len(got) == len(want), (where, got, want)
        for i, (g, w) in enumerate(zip(got, want)):
            _assert_same(g, w, f"{where}/{i}")
    elif isinstance(want, np.ndarray):
        assert isinstance(got, np.ndarray) and got.dtype == want.dtype and got.shape == want.shape, where
        np.testing.assert_array_equal(got, want, err_msg=where)
    else:
        same = got == want or (got != got and want != want)  # NaN is a value too
        assert same and type(got) is type(want), (where, got, want)


def _sha(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _series(rng: np.random.Generator) -> list[dict]:
    """Five states: constant connectivity (compressible) and weights (raw), a small changing
    state, a tensor that disappears and one that appears, and one state saved twice."""
    conn = (np.arange(1 << 18, dtype=np.int32) * 7919) % 1000
    w = rng.standard_normal(1 << 16).astype(np.float32)
    trees = []
    for v in range(1, 6):
        tree = {"conn": conn, "w": w, "V": np.full(256, float(v), np.float32), "step": v}
        if v <= 2:
            tree["gone"] = np.arange(100, dtype=np.int64)
        if v >= 3:
            tree["new"] = rng.integers(0, 9, 64, dtype=np.uint8)
        trees.append(tree)
    trees[4] = dict(trees[3])  # version 5 saves exactly version 4's state
    return trees


@pytest.fixture
def series(tmp_path):
    trees = _series(np.random.default_rng(5))
    path = str(tmp_path / "run.bpz")
    for v, tree in enumerate(trees, 1):
        _append(path, tree, metadata={"step": v, "note": f"v{v}"})
    return path, trees


def test_every_version_loads_back_exactly(series):
    path, trees = series
    with bpz.open(path) as a:
        assert a.version == (1, 1)
        assert a.version_number == 5
        assert [v.number for v in a.versions] == [1, 2, 3, 4, 5]
        assert [v.metadata for v in a.versions] == [{"step": v, "note": f"v{v}"} for v in range(1, 6)]
        times = [v.time for v in a.versions]
        assert all(isinstance(t, datetime.datetime) and t.tzinfo is not None for t in times)
        assert times == sorted(times) and times[0] < times[-1]
        now = datetime.datetime.now(datetime.timezone.utc)
        assert abs((now - times[-1]).total_seconds()) < 600
        # Every byte of the file belongs to exactly one version.
        assert 64 + sum(v.bytes_added for v in a.versions) == a.file_size == os.path.getsize(path)
        a.verify()
    for v, tree in enumerate(trees, 1):
        _assert_same(bpz.load_pytree(path, version=v), tree, f"version {v}")
        _assert_same(bpz.load_pytree(path, version=v - 6), tree, f"version {v - 6}")
        with bpz.open(path, version=v) as a:
            assert a.version_number == v
            assert a.metadata == {"step": v, "note": f"v{v}"}
            assert sorted(a.keys()) == sorted(k for k in tree if k != "step")
            _assert_same(a.load(), tree)
            a.verify()
    _assert_same(bpz.load_pytree(path), trees[-1])


def test_unchanged_chunks_are_stored_once(series):
    path, trees = series
    with bpz.open(path) as latest:
        versions = latest.versions
        by_version = {v.number: latest.at_version(v.number) for v in versions}
        # conn and w never change: every version references the same chunks.
        for name in ("conn", "w"):
            tables = [by_version[v].chunks(name) for v in by_version]
            assert all(t == tables[0] for t in tables), name
            assert all(c.offset < versions[0].bytes_added + 64 for c in tables[0])
        assert by_version[1].info("w").storage == "raw"
        # An append changing one small tensor (and the scalar step) writes little more than it.
        first = versions[0].bytes_added
        for v in versions[1:]:
            assert v.bytes_added < first / 20, v
            new_data = v.bytes_added - v.index_length - 32
            assert new_data < 256 * 4 + 64 * 4 + 64, v  # V and 'new' (+ alignment), never conn or w
        # Version 5 saved version 4's state: only an index and a trailer.
        v5 = versions[4]
        assert v5.bytes_added - v5.index_length - 32 < 64
        assert by_version[5].chunks("V") == by_version[4].chunks("V")
        assert by_version[2].chunks("V") != by_version[1].chunks("V")
        # The stored file is much smaller than five separate archives.
        assert os.path.getsize(path) < 1.5 * (versions[0].bytes_added + 64)


def test_chunk_hashes_are_blake3_of_the_decoded_bytes(series):
    path, trees = series
    with bpz.open(path) as a:
        for name in ("conn", "w", "V", "new"):
            data = np.ascontiguousarray(trees[-1][name]).tobytes()  # 1-D: a chunk is chunk_elems elements
            info = a.info(name)
            step = info.chunk_elems * info.dtype.itemsize
            chunks = a.chunks(name)
            assert len(chunks) == info.chunks == -(-len(data) // step)
            for i, c in enumerate(chunks):
                assert isinstance(c.hash, bytes) and len(c.hash) == 16
                assert c.hash == blake3(data[i * step:(i + 1) * step], 16), (name, i)
    one_zero = VECTORS / "nested_tree.bpz"
    with bpz.open(one_zero) as a:
        assert all(c.hash is None for n in a.keys() for c in a.chunks(n))


def test_diff_between_versions_and_files(series, tmp_path):
    path, trees = series
    with bpz.open(path, version=1) as v1, bpz.open(path, version=3) as v3, bpz.open(path) as v5:
        d = v1.diff(v3)
        assert (d.added, d.removed, sorted(d.changed), sorted(d.unchanged)) == (["new"], ["gone"], ["V"], ["conn", "w"])
        assert d.compared_by_reading == 0
        same = v5.diff(v5.at_version(4))
        assert same.added == same.removed == same.changed == []
        assert sorted(same.unchanged) == ["V", "conn", "new", "w"]
        # A separately written archive of the same state: equal content, no data read.
        other = str(tmp_path / "separate.bpz")
        bpz.save_pytree(other, trees[-1], verbose=False)
        with bpz.open(other) as o:
            d = o.diff(v5)
            assert d.changed == [] and sorted(d.unchanged) == ["V", "conn", "new", "w"]
        # Against a 1.0 file (no hashes) tensors are compared by reading them.
        old = str(tmp_path / "old.bpz")
        shutil.copy(VECTORS / "nested_tree.bpz", old)
        with bpz.open(old) as o:
            d = o.diff(v5)
            assert sorted(d.added) == ["V", "conn", "new", "w"] and len(d.removed) == 3
            d = o.diff(o)
            assert len(d.unchanged) == 3 and d.compared_by_reading == 3


def test_version_argument_forms(series, tmp_path):
    path, trees = series
    with bpz.open(path, version=-1) as a:
        assert a.version_number == 5
    with bpz.open(path, version=-5) as a:
        assert a.version_number == 1
    with bpz.open(path, version=np.int64(2)) as a:
        assert a.version_number == 2
        assert a.at_version(None).version_number == 5
        assert a.at_version(-2).version_number == 4
    for bad in (0, 6, 100, -6):
        with pytest.raises(InvalidArgumentError) as info:
            bpz.open(path, version=bad)
        if bad:
            assert "1, 2, 3, 4, 5" in str(info.value)
        with pytest.raises(InvalidArgumentError):
            bpz.load_pytree(path, version=bad)
    for bad in ("1", 1.0, True, [1]):
        with pytest.raises(TypeError, match="version must be an int"):
            bpz.open(path, version=bad)
        with pytest.raises(TypeError, match="version must be an int"):
            bpz.load_pytree(path, version=bad)
    with bpz.open(path) as a, pytest.raises(TypeError):
        a.at_version("2")
    # A file saved without append holds version 1 only.
    single = str(tmp_path / "single.bpz")
    bpz.save_pytree(single, trees[0], verbose=False)
    with bpz.open(single) as a:
        assert [v.number for v in a.versions] == [1] and a.version_number == 1
    _assert_same(bpz.load_pytree(single, version=1), trees[0])
    _assert_same(bpz.load_pytree(single, version=-1), trees[0])
    with pytest.raises(InvalidArgumentError, match="holds version 1$"):
        bpz.load_pytree(single, version=2)
    # A compacted archive names the versions it still has.
    bpz.compact(path, keep_last=2)
    with pytest.raises(InvalidArgumentError, match="4, 5"):
        bpz.open(path, version=1)


def test_version_of_a_brainpy_bp_file(tmp_path):
    bp = str(tmp_path / "old.bp")
    tree = {"w": np.arange(6.0).reshape(2, 3)}
    write_bp(bp, tree)
    for v in (None, 1, -1):
        np.testing.assert_array_equal(bpz.load_pytree(bp, version=v)["w"], tree["w"])
    for v in (2, -2, 0):
        with pytest.raises(ValueError, match="one version"):
            bpz.load_pytree(bp, version=v)
    with pytest.raises(TypeError):
        bpz.load_pytree(bp, version="1")


def test_append_creates_a_missing_file_and_its_parents(tmp_path):
    path = tmp_path / "a" / "b" / "new.bpz"
    _append(path, {"x": np.ones(3)}, metadata="first")
    with bpz.open(path) as a:
        assert [(v.number, v.metadata) for v in a.versions] == [(1, "first")]
        assert a.version == (1, 1)


def test_overwrite_false_does_not_forbid_an_append(tmp_path):
    path = str(tmp_path / "keep.bpz")
    bpz.save_pytree(path, {"x": np.ones(3)}, verbose=False, overwrite=False)
    bpz.save_pytree(path, {"x": np.zeros(3)}, verbose=False, overwrite=False, append=True)
    with bpz.open(path) as a:
        assert [v.number for v in a.versions] == [1, 2]
    before = _sha(path)
    with pytest.raises(InvalidCheckpointPath):
        bpz.save_pytree(path, {"x": np.ones(3)}, verbose=False, overwrite=False)
    assert _sha(path) == before


def test_append_upgrades_a_format_1_0_file(tmp_path):
    path = str(tmp_path / "old.bpz")
    shutil.copy(VECTORS / "nested_tree.bpz", path)
    with bpz.open(path) as a:
        assert a.version == (1, 0)
        old_tree, old_meta = a.load(), a.metadata
    _append(path, {"new": np.arange(4)}, metadata={"upgraded": True})
    with bpz.open(path) as a:
        assert a.version == (1, 1)
        assert [(v.number, v.metadata) for v in a.versions] == [(1, old_meta), (2, {"upgraded": True})]
        assert a.versions[0].time is None  # a 1.0 file does not say when it was written
        a.verify()
        _assert_same(a.at_version(1).load(), old_tree)
        _assert_same(a.load(), {"new": np.arange(4)})
    assert not [n for n in os.listdir(tmp_path) if n != "old.bpz"]  # no temporary left


@pytest.mark.parametrize("content", [b"hello, not an archive\n" * 20, b"", b"BPZ"])
def test_append_to_a_file_that_is_not_an_archive_leaves_it(tmp_path, content):
    path = tmp_path / "notes.bpz"
    path.write_bytes(content)
    with pytest.raises(bpz.errors.BpzError) as info:
        _append(path, {"x": np.ones(3)})
    assert isinstance(info.value, (NotAnArchiveError, TruncatedError)), info.value
    assert "notes.bpz" in str(info.value)
    assert path.read_bytes() == content
    assert os.listdir(tmp_path) == ["notes.bpz"]


def test_append_to_a_brainpy_bp_file_leaves_it(tmp_path):
    path = str(tmp_path / "old.bp")
    write_bp(path, {"w": np.ones(3)})
    before = _sha(path)
    with pytest.raises(NotAnArchiveError):
        _append(path, {"x": np.ones(3)})
    assert _sha(path) == before


def test_append_to_a_directory(tmp_path):
    (tmp_path / "d").mkdir()
    for name in (tmp_path / "d", str(tmp_path / "d") + "/", str(tmp_path / "missing") + "/"):
        with pytest.raises(IsADirectoryError):
            _append(name, {"x": np.ones(3)})
    assert os.listdir(tmp_path / "d") == [] and not (tmp_path / "missing").exists()


def test_async_appends_keep_their_order_and_report_failures(tmp_path):
    path = str(tmp_path / "async.bpz")
    trees = [{"x": np.full(1000, v, np.float64), "step": v} for v in range(1, 7)]
    with bpz.AsyncManager() as manager:
        for v, tree in enumerate(trees, 1):
            bpz.save_pytree(path, tree, verbose=False, append=True, async_manager=manager, metadata=v)
            tree["x"][:] = -1  # mutated after the call: the snapshot was taken
    with bpz.open(path) as a:
        assert [(v.number, v.metadata) for v in a.versions] == [(k, k) for k in range(1, 7)]
        for k in range(1, 7):
            assert (a.at_version(k)["x"] == k).all()
    bad = tmp_path / "text.bpz"
    bad.write_bytes(b"not an archive at all" * 4)
    manager = bpz.AsyncManager()
    bpz.save_pytree(str(bad), {"x": np.ones(2)}, verbose=False, append=True, async_manager=manager)
    with pytest.raises(NotAnArchiveError):
        manager.wait_previous_save()
    bpz.save_pytree(path, {"x": np.ones(2)}, verbose=False, append=True, async_manager=manager)
    manager.close()
    assert bad.read_bytes() == b"not an archive at all" * 4
    with bpz.open(path) as a:
        assert a.version_number == 7


def _cut(path, length):
    with open(path, "r+b") as f:
        f.truncate(length)


def test_an_unfinished_append_is_recovered(series):
    path, trees = series
    with bpz.open(path) as a:
        v4_end = 64 + sum(v.bytes_added for v in a.versions[:4])
    size = os.path.getsize(path)
    for cut in (v4_end + 1, v4_end + 64, (v4_end + size) // 2, size - 32, size - 1):
        copy = path + f".{cut}"
        shutil.copy(path, copy)
        _cut(copy, cut)
        with pytest.warns(RecoveredArchiveWarning, match=f"{cut - v4_end:,} bytes after version 4"):
            a = bpz.open(copy)
        with a:
            assert a.recovered == {"ignored_bytes": cut - v4_end, "committed_end": v4_end}
            assert a.version_number == 4 and [v.number for v in a.versions] == [1, 2, 3, 4]
            _assert_same(a.load(), trees[3])
            a.verify()
        with pytest.warns(RecoveredArchiveWarning):
            _assert_same(bpz.load_pytree(copy, version=2), trees[1])
        assert os.path.getsize(copy) == cut  # readers never change the file
        # The next append drops the unfinished bytes and adds version 5.
        _append(copy, {"after": np.arange(3)}, metadata="after")
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            with bpz.open(copy) as a:
                assert a.recovered is None
                assert [v.number for v in a.versions] == [1, 2, 3, 4, 5]
                assert os.path.getsize(copy) == v4_end + a.versions[-1].bytes_added
                a.verify()
                _assert_same(a.load(), {"after": np.arange(3)})
                _assert_same(a.at_version(4).load(), trees[3])
    # Garbage after a committed file is an unfinished append too.
    with open(path, "ab") as f:
        f.write(b"\x00" * 10 + b"garbage" * 30)
    with pytest.warns(RecoveredArchiveWarning):
        with bpz.open(path) as a:
            assert a.version_number == 5 and a.recovered["committed_end"] == size
    # Cut inside the first version: nothing committed is left.
    _cut(path, 200)
    with pytest.raises(TruncatedError):
        bpz.open(path)


def test_compact_keeps_numbers_metadata_and_content(series):
    path, trees = series
    with bpz.open(path) as a:
        before = {v.number: v for v in a.versions}
    size = os.path.getsize(path)
    assert bpz.compact(path, keep_last=2) == [4, 5]
    with bpz.open(path) as a:
        after = a.versions
        assert [v.number for v in after] == [4, 5]
        for v in after:
            assert (v.metadata, v.time) == (before[v.number].metadata, before[v.number].time)
        a.verify()
        for v in (4, 5):
            _assert_same(a.at_version(v).load(), trees[v - 1])
        assert a.at_version(4).chunks("conn") == a.chunks("conn")  # deduplicated again
    assert os.path.getsize(path) < size
    # Appends go on from the kept numbers.
    _append(path, trees[0], metadata="six")
    with bpz.open(path) as a:
        assert [v.number for v in a.versions] == [4, 5, 6]
    assert bpz.compact(path, keep_last=10) == [4, 5, 6]
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(ValueError, match="keep_last"):
            bpz.compact(path, keep_last=bad)
    with pytest.raises(FileNotFoundError):
        bpz.compact(str(Path(path).parent / "missing.bpz"), keep_last=1)


def test_compact_of_a_1_0_file_and_of_one_version(tmp_path):
    path = str(tmp_path / "old.bpz")
    shutil.copy(VECTORS / "nested_tree.bpz", path)
    want = bpz.load_pytree(path)
    assert bpz.compact(path, keep_last=1) == [1]
    with bpz.open(path) as a:
        assert a.version == (1, 1)
        a.verify()
        _assert_same(a.load(), want)


COMPACT_UNDER_LIMIT = """
import resource, signal, sys
import bpz
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[2]), int(sys.argv[2])))
try:
    bpz.compact(sys.argv[1], keep_last=1)
except OSError as e:
    print(type(e).__name__, e.errno)
    sys.exit(3)
"""


def test_a_failed_compaction_leaves_the_file(series):
    path, trees = series
    before = _sha(path)
    # The new file may grow to 4 KiB only: writing it fails with EFBIG (as on a full disk).
    proc = subprocess.run([sys.executable, "-c", COMPACT_UNDER_LIMIT, path, "4096"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert _sha(path) == before
    assert os.listdir(os.path.dirname(path)) == ["run.bpz"]
    with bpz.open(path) as a:
        assert [v.number for v in a.versions] == [1, 2, 3, 4, 5]


# -- numbered checkpoints as versions of one archive


def _state(step):
    return {"w": np.full((4, 4), step, np.float32), "const": np.arange(5000), "step": step}


def test_checkpoints_in_one_archive(tmp_path):
    path = str(tmp_path / "run.bpz")
    for step in range(10, 110, 10):
        assert checkpoints.save_checkpoint(path, _state(step), step, keep=3) == path
        steps = [s for s, _ in checkpoints.archive_steps(path)]
        assert steps[-3:] == list(range(max(10, step - 20), step + 10, 10))
        assert len(steps) < 2 * 3 + 1  # dropped steps are compacted away
    assert os.path.isfile(path) and os.listdir(tmp_path) == ["run.bpz"]
    _assert_same(checkpoints.restore_checkpoint(path), _state(100))
    _assert_same(checkpoints.restore_checkpoint(path, step=80), _state(80))
    with pytest.raises(CheckpointNotFoundError, match="step 10 "):
        checkpoints.restore_checkpoint(path, step=10)
    with bpz.open(path) as a:
        assert all(v.metadata["step"] == v.metadata["step"] for v in a.versions)
        assert a.metadata == {"step": 100}
        # The constant part is stored once.
        assert len({a.at_version(v.number).chunks("const")[0].offset for v in a.versions}) == 1
    # An outdated step is refused and changes nothing.
    before = _sha(path)
    with pytest.raises(InvalidCheckpointError, match="outdated"):
        checkpoints.save_checkpoint(path, _state(50), 50, keep=3)
    with pytest.raises(InvalidCheckpointError):
        checkpoints.save_checkpoint(path, _state(100), 100, keep=3)
    assert _sha(path) == before


def test_checkpoint_archive_keep_every_n_steps_and_user_metadata(tmp_path):
    path = str(tmp_path / "run.bpz")
    for step in range(1, 13):
        checkpoints.save_checkpoint(path, _state(step), step, keep=2, keep_every_n_steps=5, metadata={"lr": step})
    steps = [s for s, _ in checkpoints.archive_steps(path)]
    assert {5, 10, 11, 12} <= set(steps)
    assert len(steps) <= 2 * 2 + 2
    for step in (5, 10, 12):
        _assert_same(checkpoints.restore_checkpoint(path, step=step), _state(step))
    with bpz.open(path) as a:
        assert a.metadata == {"step": 12, "metadata": {"lr": 12}}


def test_checkpoint_archive_rollback_with_overwrite(tmp_path):
    path = str(tmp_path / "run.bpz")
    for step in (1, 2, 3, 4, 5):
        checkpoints.save_checkpoint(path, _state(step), step, keep=10)
    checkpoints.save_checkpoint(path, _state(-3), 3, keep=10, overwrite=True)
    assert [s for s, _ in checkpoints.archive_steps(path)] == [1, 2, 3]
    _assert_same(checkpoints.restore_checkpoint(path), _state(-3))
    _assert_same(checkpoints.restore_checkpoint(path, step=3), _state(-3))
    _assert_same(checkpoints.restore_checkpoint(path, step=2), _state(2))
    for gone in (4, 5):
        with pytest.raises(CheckpointNotFoundError):
            checkpoints.restore_checkpoint(path, step=gone)
    checkpoints.save_checkpoint(path, _state(4), 4, keep=10)
    assert [s for s, _ in checkpoints.archive_steps(path)] == [1, 2, 3, 4]


def test_checkpoint_archive_async_and_target(tmp_path):
    path = str(tmp_path / "run.bpz")
    with checkpoints.AsyncManager() as manager:
        for step in range(1, 6):
            checkpoints.save_checkpoint(path, _state(step), step, keep=2, async_manager=manager)
    assert [s for s, _ in checkpoints.archive_steps(path)][-2:] == [4, 5]
    target = {"w": np.zeros((4, 4), np.float32), "const": np.zeros(5000, np.int64), "step": 0}
    got = checkpoints.restore_checkpoint(path, target=target, step=4)
    _assert_same(got, _state(4))
    # A missing archive restores nothing (as a missing directory does).
    assert checkpoints.restore_checkpoint(str(tmp_path / "none.bpz"), target=target) is target
    # A non-checkpoint file at the name is never appended to.
    other = tmp_path / "notes.bpz"
    other.write_text("my notes")
    with pytest.raises(InvalidCheckpointPath):
        checkpoints.save_checkpoint(str(other), _state(1), 1)
    assert other.read_text() == "my notes"


# -- CLI


def _run(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_log(series, capsys):
    path, _ = series
    code, out, err = _run(capsys, "log", path)
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert lines[0].split()[:2] == ["version", "written"]
    assert [ln.split()[0] for ln in lines[1:6]] == ["1", "2", "3", "4", "5"]
    assert '{"step":3,"note":"v3"}' in lines[3]
    assert lines[-1].startswith("5 version(s)")
    code, out, err = _run(capsys, "log", "--json", path)
    import json

    doc = json.loads(out)
    assert code == 0 and doc["recovered"] is None and doc["file_bytes"] == os.path.getsize(path)
    assert [v["version"] for v in doc["versions"]] == [1, 2, 3, 4, 5]
    assert doc["versions"][1]["metadata"] == {"step": 2, "note": "v2"}
    assert datetime.datetime.fromisoformat(doc["versions"][0]["time"]).tzinfo is not None
    with bpz.open(path) as a:
        assert [v["bytes_added"] for v in doc["versions"]] == [v.bytes_added for v in a.versions]
    # An unfinished append is reported, once, as a one-line notice.
    with open(path, "ab") as f:
        f.write(b"\x01" * 100)
    code, out, err = _run(capsys, "log", "--json", path)
    assert code == 0 and json.loads(out)["recovered"]["ignored_bytes"] == 100
    code, out, err = _run(capsys, "log", path)
    assert code == 0 and err.count("unfinished append") == 1 and err.startswith("bpz log: ")
    assert "Warning" not in err


def test_cli_diff(series, capsys, tmp_path):
    import json

    path, trees = series
    code, out, err = _run(capsys, "diff", f"{path}@1", f"{path}@3")
    assert code == 0, err
    assert out.splitlines()[:3] == ["+ new", "- gone", "~ V"]
    assert out.splitlines()[-1] == "1 added, 1 removed, 1 changed, 2 unchanged"
    code, out, err = _run(capsys, "diff", "--json", f"{path}@-2", path)
    assert code == 0 and json.loads(out) == {"added": [], "removed": [], "changed": [], "unchanged": 4,
                                             "compared_by_reading": 0}
    # A file name containing '@' is a file name when it exists as given.
    at = str(tmp_path / "run@2.bpz")
    shutil.copy(path, at)
    code, out, err = _run(capsys, "diff", "--json", at, f"{at}@1")
    assert code == 0, err
    assert json.loads(out)["added"] == ["gone"]
    code, out, err = _run(capsys, "diff", "--json", f"{at}@5", path)
    assert code == 0 and json.loads(out)["changed"] == []
    # A version that is not there is a usage error naming the file and the versions present.
    code, out, err = _run(capsys, "diff", f"{path}@9", path)
    assert code == 2 and f"bpz diff: {path}: " in err and "1, 2, 3, 4, 5" in err
    code, out, err = _run(capsys, "diff", f"{path}@0", path)
    assert code == 2 and path in err
    code, out, err = _run(capsys, "diff", path)
    assert code == 2
    missing = str(tmp_path / "missing.bpz")
    code, out, err = _run(capsys, "diff", path, f"{missing}@2")
    assert code == 3 and "missing.bpz" in err and "No such file" in err
    damaged = str(tmp_path / "damaged.bpz")
    Path(damaged).write_bytes(Path(path).read_bytes()[:300])
    code, out, err = _run(capsys, "diff", path, damaged)
    assert code == 1 and f"bpz diff: {damaged}: " in err and "truncated" in err


def test_cli_compact(series, capsys, tmp_path):
    import json

    path, trees = series
    size = os.path.getsize(path)
    code, out, err = _run(capsys, "compact", path, "--keep-last", "3", "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["kept"] == [3, 4, 5] and doc["bytes_before"] == size and doc["bytes_after"] == os.path.getsize(path)
    code, out, err = _run(capsys, "compact", path, "--keep-last", "1")
    assert code == 0 and "kept version(s) 5" in out
    _assert_same(bpz.load_pytree(path), trees[4])
    for argv in (["compact", path], ["compact", path, "--keep-last", "0"], ["compact", path, "--keep-last", "x"],
                 ["log"], ["log", path, "extra"]):
        code, out, err = _run(capsys, *argv)
        assert code == 2, argv
    code, out, err = _run(capsys, "compact", str(tmp_path / "missing.bpz"), "--keep-last", "1")
    assert code == 3 and "No such file" in err
    code, out, err = _run(capsys, "log", str(tmp_path))
    assert code == 3 and "directory" in err
    damaged = tmp_path / "damaged.bpz"
    damaged.write_bytes(Path(path).read_bytes()[:300])
    for argv in (["log", str(damaged)], ["compact", str(damaged), "--keep-last", "1"]):
        code, out, err = _run(capsys, *argv)
        assert code == 1, argv
        # The file is named once, as given, and the cause follows.
        assert err.startswith(f"bpz {argv[0]}: {damaged}: truncated"), err
    assert damaged.read_bytes() == Path(path).read_bytes()[:300]
    not_archive = tmp_path / "text.bpz"
    not_archive.write_text("hello " * 20)
    code, out, err = _run(capsys, "log", str(not_archive))
    assert code == 1 and "not a bpz archive" in err


# -- property: random chains of appends


NAMES = ["a", "b", "c/d", "c/e", "z"]
DTYPES = [np.float32, np.int64, np.uint8, np.float64]


@st.composite
def _chains(draw):
    versions = []
    state: dict[str, np.ndarray] = {}
    for _ in range(draw(st.integers(1, 5))):
        state = dict(state)
        for name in NAMES:
            op = draw(st.sampled_from(["keep", "keep", "change", "drop", "add"]))
            if op == "drop":
                state.pop(name, None)
            elif op == "change" or (op == "add" and name not in state):
                dtype = draw(st.sampled_from(DTYPES))
                n = draw(st.integers(0, 3000))
                seed = draw(st.integers(0, 3))  # few seeds: equal content across names and versions
                rng = np.random.default_rng(seed)
                arr = (rng.integers(0, 4, n) if draw(st.booleans()) else rng.standard_normal(n) * 100).astype(dtype)
                state[name] = arr
        versions.append((state, draw(st.sampled_from(["auto", "zstd", None]))))
    return versions


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(chain=_chains())
def test_random_append_chains(tmp_path_factory, chain):
    path = str(tmp_path_factory.mktemp("chain") / "p.bpz")
    for i, (state, compression) in enumerate(chain, 1):
        _append(path, _nest(state), compression=compression, metadata={"i": i})
    with bpz.open(path) as a:
        assert [v.number for v in a.versions] == list(range(1, len(chain) + 1))
        assert 64 + sum(v.bytes_added for v in a.versions) == os.path.getsize(path)
        a.verify()
        for i, (state, _) in enumerate(chain, 1):
            at = a.at_version(i)
            assert at.metadata == {"i": i}
            assert sorted(at.keys()) == sorted(state)
            for name, arr in state.items():
                _assert_same(at[name], arr, f"version {i}: {name}")
            _assert_same(bpz.load_pytree(path, version=i), _nest(state))
            if i > 1:
                prev = chain[i - 2][0]
                d = a.at_version(i - 1).diff(at)
                assert sorted(d.added) == sorted(set(state) - set(prev))
                assert sorted(d.removed) == sorted(set(prev) - set(state))
                changed = sorted(n for n in set(state) & set(prev)
                                 if prev[n].dtype != state[n].dtype or not np.array_equal(prev[n], state[n]))
                assert sorted(d.changed) == changed
                for n in set(state) & set(prev):
                    if prev[n] is state[n] and chain[i - 2][1] == chain[i - 1][1]:
                        # kept as it was, saved the same way: referenced, never written again
                        assert a.at_version(i - 1).chunks(n) == at.chunks(n), n


def _nest(state: dict[str, np.ndarray]) -> dict:
    out: dict = {}
    for name, arr in state.items():
        *parents, leaf = name.split("/")
        node = out
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = arr
    return out


def test_an_append_in_progress_is_not_reported_as_unfinished(series):
    """While another process holds the append lock, the bytes after the last version are an
    append being written: the archive opens at the last version without a warning."""
    path, _ = series
    with bpz.open(path) as a:
        v4_end = 64 + sum(v.bytes_added for v in a.versions[:4])
    copy = path + ".live"
    shutil.copy(path, copy)
    _cut(copy, v4_end + 100)
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDWR); fcntl.flock(fd, fcntl.LOCK_EX); "
         "print('locked', flush=True); sys.stdin.read()", copy],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            with bpz.open(copy) as a:
                assert a.version_number == 4 and a.recovered["ignored_bytes"] == 100
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    with pytest.warns(RecoveredArchiveWarning):  # the lock is gone: now it is an unfinished append
        bpz.open(copy).close()
