"""Numbered checkpoints under a bucket prefix (versitygw): ``bpz.checkpoints`` with
``ckpt_dir="s3://bucket/run/"`` keeps the guarantees it gives on disk — nothing deleted
before the new checkpoint's upload completed, a failed or killed save deletes nothing,
only real checkpoints listed, restored or deleted — and says clearly what an http(s)
prefix or a one-archive URL cannot do."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from remote_servers import S3_SECRET_KEY, CuttableProxy, Nginx, S3Server

import bpz
import bpz.checkpoints as checkpoints
from bpz._legacy import bp_msgpack
from bpz.errors import (
    CheckpointNotFoundError,
    InvalidArgumentError,
    InvalidCheckpointError,
    InvalidCheckpointPath,
    UnsupportedFeatureError,
)


def state(step: int, mib: int = 0) -> dict[str, Any]:
    tree: dict[str, Any] = {"w": np.arange(16, dtype=np.float32) * step, "step": np.int64(step)}
    if mib:  # incompressible, for uploads of several parts
        tree["big"] = np.random.default_rng(step).standard_normal(mib << 18, dtype=np.float32)
    return tree


def stored(s3: S3Server, key: str) -> Path:
    return s3.root / s3.bucket / key


def objects_under(s3: S3Server, run: str) -> list[str]:
    d = stored(s3, run)
    return sorted(p.name for p in d.iterdir() if p.is_file()) if d.is_dir() else []


def steps_of(s3: S3Server, run: str) -> list[float]:
    return [s for s, _ in checkpoints.checkpoint_steps(s3.url(run), storage_options=s3.options())]


def deletes_since(s3: S3Server, mark: int) -> list[str]:
    return [line for line in s3.log_lines()[mark:] if "DeleteObject" in line]


def test_keep_every_n_latest_steps_and_restore(s3: S3Server) -> None:
    run = "ck/keep/"
    opts = s3.options()
    for step in range(1, 8):
        url = checkpoints.save_checkpoint(s3.url(run), state(step), step, keep=2, keep_every_n_steps=3,
                                          storage_options=opts)
        assert url == s3.url(f"{run}checkpoint_{step}")
    assert objects_under(s3, run) == ["checkpoint_3", "checkpoint_6", "checkpoint_7"]
    assert checkpoints.checkpoint_steps(s3.url(run), storage_options=opts) == [
        (3.0, s3.url(f"{run}checkpoint_3")), (6.0, s3.url(f"{run}checkpoint_6")), (7.0, s3.url(f"{run}checkpoint_7"))]
    assert checkpoints.latest_checkpoint(s3.url(run), storage_options=opts) == s3.url(f"{run}checkpoint_7")
    assert int(checkpoints.restore_checkpoint(s3.url(run), storage_options=opts)["step"]) == 7
    got = checkpoints.restore_checkpoint(s3.url(run), target=state(0), step=3, storage_options=opts)
    np.testing.assert_array_equal(got["w"], state(3)["w"])
    with pytest.raises(CheckpointNotFoundError, match="checkpoint_4") as e:
        checkpoints.restore_checkpoint(s3.url(run), step=4, storage_options=opts)
    assert isinstance(e.value, FileNotFoundError) and isinstance(e.value, ValueError)
    # The loaded objects are the ones bpz.load_pytree reads by URL.
    loaded = bpz.load_pytree(s3.url(f"{run}checkpoint_6"), storage_options=opts)
    np.testing.assert_array_equal(loaded["w"], state(6)["w"])


def test_prefix_with_and_without_trailing_slash_is_the_same(s3: S3Server) -> None:
    opts = s3.options()
    checkpoints.save_checkpoint(s3.url("ck/slash"), state(1), 1, storage_options=opts)
    checkpoints.save_checkpoint(s3.url("ck/slash/"), state(2), 2, keep=2, storage_options=opts)
    with pytest.raises(InvalidCheckpointError):
        checkpoints.save_checkpoint(s3.url("ck/slash"), state(2), 2, storage_options=opts)
    for url in (s3.url("ck/slash"), s3.url("ck/slash/")):
        assert [s for s, _ in checkpoints.checkpoint_steps(url, storage_options=opts)] == [1, 2]
        assert checkpoints.latest_checkpoint(url, storage_options=opts) == s3.url("ck/slash/checkpoint_2")
        assert int(checkpoints.restore_checkpoint(url, storage_options=opts)["step"]) == 2
    assert objects_under(s3, "ck") == []  # nothing written beside the prefix ("ck/slashcheckpoint_1")


def test_an_empty_prefix_has_no_checkpoints(s3: S3Server) -> None:
    opts = s3.options()
    assert checkpoints.checkpoint_steps(s3.url("ck/none/"), storage_options=opts) == []
    assert checkpoints.latest_checkpoint(s3.url("ck/none/"), storage_options=opts) is None
    target = {"w": np.zeros(3)}
    with pytest.warns(UserWarning, match="Found no checkpoint files in s3://bpz-bucket/ck/none"):
        assert checkpoints.restore_checkpoint(s3.url("ck/none/"), target=target, storage_options=opts) is target


def test_things_named_like_checkpoints_are_never_restored_nor_deleted(s3: S3Server) -> None:
    run = "ck/foreign/"
    opts = s3.options()
    s3.put(f"{run}checkpoint_0", b"an older file of another tool")
    s3.put(f"{run}checkpoint_9", b"not a checkpoint, named like the newest")
    s3.put(f"{run}checkpoint_20/part", state_bytes := b"a sub-prefix is no step")
    for step in (1, 2, 3):
        checkpoints.save_checkpoint(s3.url(run), state(step), step, keep=1, storage_options=opts)
    assert objects_under(s3, run) == ["checkpoint_0", "checkpoint_3", "checkpoint_9"]
    assert stored(s3, f"{run}checkpoint_9").read_bytes() == b"not a checkpoint, named like the newest"
    assert stored(s3, f"{run}checkpoint_20/part").read_bytes() == state_bytes
    assert steps_of(s3, run) == [3]
    assert checkpoints.latest_checkpoint(s3.url(run), storage_options=opts) == s3.url(f"{run}checkpoint_3")
    assert int(checkpoints.restore_checkpoint(s3.url(run), storage_options=opts)["step"]) == 3
    # An object that is not a checkpoint where the new one would go is not replaced.
    s3.put(f"{run}checkpoint_4", b"someone else's")
    with pytest.raises(InvalidCheckpointPath, match="checkpoint_4.*not a checkpoint"):
        checkpoints.save_checkpoint(s3.url(run), state(4), 4, storage_options=opts)
    assert stored(s3, f"{run}checkpoint_4").read_bytes() == b"someone else's"
    # Asked for by step, it is refused as what it is.
    with pytest.raises(bpz.errors.NotAnArchiveError, match="checkpoint_9: neither a bpz archive"):
        checkpoints.restore_checkpoint(s3.url(run), step=9, storage_options=opts)
    # A rollback below them all still leaves them.
    with pytest.warns(UserWarning, match="Removing checkpoint at s3://bpz-bucket/ck/foreign/checkpoint_3"):
        checkpoints.save_checkpoint(s3.url(run), state(1), 1, overwrite=True, storage_options=opts)
    assert objects_under(s3, run) == ["checkpoint_0", "checkpoint_1", "checkpoint_4", "checkpoint_9"]
    assert steps_of(s3, run) == [1]


def test_brainpy_bp_objects_are_checkpoints(s3: S3Server, tmp_path: Path) -> None:
    run = "ck/bp/"
    opts = s3.options()
    bp_msgpack.write_bp(str(tmp_path / "old.bp"), {"w": np.arange(4.0), "step": 5})
    s3.put(f"{run}checkpoint_5", (tmp_path / "old.bp").read_bytes())
    assert steps_of(s3, run) == [5]
    got = checkpoints.restore_checkpoint(s3.url(run), target={"w": np.zeros(4), "step": 0}, storage_options=opts)
    np.testing.assert_array_equal(got["w"], np.arange(4.0))
    assert got["step"] == 5
    # A damaged one is named by its URL.
    s3.put(f"{run}checkpoint_6", (tmp_path / "old.bp").read_bytes()[:-3])
    with pytest.raises(bpz.errors.TruncatedError, match=r"s3://bpz-bucket/ck/bp/checkpoint_6: file ends"):
        checkpoints.restore_checkpoint(s3.url(run), storage_options=opts)
    s3.put(f"{run}checkpoint_6", b"")  # now not a checkpoint: ignored
    # Retention removes the migrated checkpoint like any other.
    checkpoints.save_checkpoint(s3.url(run), state(7), 7, storage_options=opts)
    assert objects_under(s3, run) == ["checkpoint_6", "checkpoint_7"]


def test_outdated_step_refused_and_overwrite_rolls_back_oldest_first(s3: S3Server) -> None:
    run = "ck/rollback/"
    opts = s3.options()
    for step in (2, 4, 6, 8):
        checkpoints.save_checkpoint(s3.url(run), state(step), step, keep=10, storage_options=opts)
    s3.put(f"{run}checkpoint_7", b"foreign, between the later steps")
    for step in (8, 5):
        with pytest.raises(InvalidCheckpointError, match=f"outdated checkpoint at step: \"{step}\""):
            checkpoints.save_checkpoint(s3.url(run), state(step), step, keep=10, storage_options=opts)
    assert steps_of(s3, run) == [2, 4, 6, 8]
    mark = len(s3.log_lines())
    with pytest.warns(UserWarning, match="Removing checkpoint at"):
        checkpoints.save_checkpoint(s3.url(run), state(3), 3, keep=10, overwrite=True, storage_options=opts)
    assert steps_of(s3, run) == [2, 3]
    assert objects_under(s3, run) == ["checkpoint_2", "checkpoint_3", "checkpoint_7"]
    deleted = [name for line in deletes_since(s3, mark) for name in ("checkpoint_4", "checkpoint_6", "checkpoint_8")
               if f"{run}{name}" in line]
    assert deleted == ["checkpoint_4", "checkpoint_6", "checkpoint_8"]  # the newest last: latest never wrong
    assert int(checkpoints.restore_checkpoint(s3.url(run), storage_options=opts)["step"]) == 3


@pytest.mark.parametrize("use_async", [False, True])
def test_a_save_cut_mid_upload_deletes_nothing(s3: S3Server, use_async: bool) -> None:
    run = f"ck/cut-{use_async}/"
    opts = s3.options()
    for step in (1, 2):
        checkpoints.save_checkpoint(s3.url(run), state(step), step, keep=2, storage_options=opts)
    before = {name: stored(s3, run + name).read_bytes() for name in objects_under(s3, run)}
    cutter = CuttableProxy(s3.port, cut_after_upload_bytes=12 << 20)
    cut_opts = s3.options(endpoint=f"http://127.0.0.1:{cutter.port}", max_retries="1", retry_timeout="2s")
    mark = len(s3.log_lines())
    start = time.monotonic()
    try:
        with pytest.raises(OSError, match="s3://bpz-bucket/ck/cut"):
            if use_async:
                with bpz.AsyncManager() as m:
                    checkpoints.save_checkpoint(s3.url(run), state(3, mib=24), 3, keep=1, async_manager=m,
                                                compression=None, storage_options=cut_opts)
            else:
                checkpoints.save_checkpoint(s3.url(run), state(3, mib=24), 3, keep=1, compression=None,
                                            storage_options=cut_opts)
    finally:
        cutter.cut()
    assert cutter.cut_done.is_set(), "the upload was never cut"
    assert time.monotonic() - start < 60
    assert deletes_since(s3, mark) == []
    assert {name: stored(s3, run + name).read_bytes() for name in objects_under(s3, run)} == before
    assert steps_of(s3, run) == [1, 2]
    assert int(checkpoints.restore_checkpoint(s3.url(run), storage_options=opts)["step"]) == 2


def test_a_tree_that_cannot_be_saved_deletes_nothing(s3: S3Server) -> None:
    run = "ck/badtree/"
    opts = s3.options()
    for step in (1, 2):
        checkpoints.save_checkpoint(s3.url(run), state(step), step, keep=5, storage_options=opts)
    mark = len(s3.log_lines())
    with pytest.raises(TypeError, match="object"):
        checkpoints.save_checkpoint(s3.url(run), {"bad": object()}, 1, keep=1, overwrite=True, storage_options=opts)
    assert deletes_since(s3, mark) == []
    assert steps_of(s3, run) == [1, 2]


def test_a_killed_async_save_leaves_the_old_checkpoints(s3: S3Server) -> None:
    run = "ck/killed/"
    opts = s3.options()
    for step in (1, 2):
        checkpoints.save_checkpoint(s3.url(run), state(step), step, keep=2, storage_options=opts)
    before = {name: stored(s3, run + name).read_bytes() for name in objects_under(s3, run)}
    staging = s3.root / s3.bucket
    script = textwrap.dedent(f"""
        import os, pathlib, signal, time, numpy as np, bpz, bpz.checkpoints as checkpoints
        staging = pathlib.Path({str(staging)!r})
        m = bpz.AsyncManager()
        tree = {{"big": np.random.default_rng(0).standard_normal(40 << 18, dtype=np.float32)}}
        checkpoints.save_checkpoint({s3.url(run)!r}, tree, 3, keep=1, async_manager=m, compression=None,
                                    storage_options={opts!r})
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # killed once a part of the upload is on the server
            if any(p.is_file() for p in staging.rglob("*") if ".sgwtmp" in p.parts):
                os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(0.005)
        raise SystemExit("no part was uploaded")
    """)
    proc = subprocess.run([sys.executable, "-c", script], timeout=120, capture_output=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    assert {name: stored(s3, run + name).read_bytes() for name in objects_under(s3, run)} == before
    assert steps_of(s3, run) == [1, 2]


def test_async_saves_delete_after_their_upload(s3: S3Server) -> None:
    run = "ck/async/"
    opts = s3.options()
    with bpz.AsyncManager() as m:
        for step in range(1, 5):
            checkpoints.save_checkpoint(s3.url(run), state(step, mib=2), step, keep=2, async_manager=m,
                                        storage_options=opts)
        m.wait_previous_save()
        assert steps_of(s3, run) == [3, 4]
    assert objects_under(s3, run) == ["checkpoint_3", "checkpoint_4"]
    got = checkpoints.restore_checkpoint(s3.url(run), storage_options=opts)
    np.testing.assert_array_equal(got["big"], state(4, mib=2)["big"])


def test_wrong_secret_is_a_permission_error_without_the_secret(s3: S3Server) -> None:
    run = "ck/denied/"
    checkpoints.save_checkpoint(s3.url(run), state(1), 1, storage_options=s3.options())
    wrong = "wrong-secret-" + "q" * 20
    bad = s3.options(secret_access_key=wrong)
    calls = [
        lambda: checkpoints.save_checkpoint(s3.url(run), state(2), 2, storage_options=bad),
        lambda: checkpoints.restore_checkpoint(s3.url(run), storage_options=bad),
        lambda: checkpoints.restore_checkpoint(s3.url(run), step=1, storage_options=bad),
        lambda: checkpoints.checkpoint_steps(s3.url(run), storage_options=bad),
        lambda: checkpoints.latest_checkpoint(s3.url(run), storage_options=bad),
    ]
    for call in calls:
        with pytest.raises(PermissionError) as e:
            call()
        text = f"{e.value} {e.value!r} {e.value.args}"
        assert "s3://bpz-bucket/ck/denied" in text
        assert wrong not in text and S3_SECRET_KEY not in text
    assert steps_of(s3, run) == [1]


def test_a_one_archive_url_cannot_hold_appended_steps(s3: S3Server, tmp_path: Path) -> None:
    opts = s3.options()
    with pytest.raises(InvalidArgumentError, match=r"immutable.*prefix ending in '/' \(s3://bpz-bucket/ck/run.bpz/\)"):
        checkpoints.save_checkpoint(s3.url("ck/run.bpz"), state(1), 1, storage_options=opts)
    assert not stored(s3, "ck/run.bpz").exists()
    # With the '/', it is a prefix like any other.
    checkpoints.save_checkpoint(s3.url("ck/run.bpz/"), state(1), 1, storage_options=opts)
    assert objects_under(s3, "ck/run.bpz") == ["checkpoint_1"]
    # A versions archive saved locally and uploaded restores its steps by URL.
    local = str(tmp_path / "versions.bpz")
    for step in (10, 20):
        checkpoints.save_checkpoint(local, state(step), step, keep=5)
    s3.put("ck/versions.bpz", Path(local).read_bytes())
    assert int(checkpoints.restore_checkpoint(s3.url("ck/versions.bpz"), storage_options=opts)["step"]) == 20
    got = checkpoints.restore_checkpoint(s3.url("ck/versions.bpz"), step=10, storage_options=opts)
    assert int(got["step"]) == 10


def test_http_prefix_restores_a_given_step_only(nginx: Nginx, tmp_path: Path) -> None:
    local = tmp_path / "run"
    for step in (3, 4):
        checkpoints.save_checkpoint(str(local), state(step), step, keep=2)
    (nginx.root / "ckrun").mkdir()
    for name in ("checkpoint_3", "checkpoint_4"):
        (nginx.root / "ckrun" / name).write_bytes((local / name).read_bytes())
    for url in (nginx.url("ckrun/"), nginx.url("ckrun")):
        assert int(checkpoints.restore_checkpoint(url, step=3)["step"]) == 3
    with pytest.raises(CheckpointNotFoundError, match="ckrun/checkpoint_5"):
        checkpoints.restore_checkpoint(nginx.url("ckrun/"), step=5)
    mark = len(nginx.log_lines())
    for call in (lambda: checkpoints.restore_checkpoint(nginx.url("ckrun/")),
                 lambda: checkpoints.latest_checkpoint(nginx.url("ckrun/")),
                 lambda: checkpoints.checkpoint_steps(nginx.url("ckrun/"))):
        with pytest.raises(UnsupportedFeatureError, match=r"cannot give one: restore a given step"):
            call()
    with pytest.raises(UnsupportedFeatureError, match=r"cannot be saved under an http\(s\):// prefix.*s3://"):
        checkpoints.save_checkpoint(nginx.url("ckrun/"), state(5), 5)
    assert nginx.log_lines()[mark:] == []  # refused before any request
    assert sorted(p.name for p in (nginx.root / "ckrun").iterdir()) == ["checkpoint_3", "checkpoint_4"]


def test_arguments_are_checked(s3: S3Server, tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="storage_options apply to URLs"):
        checkpoints.save_checkpoint(str(tmp_path), state(1), 1, storage_options={"region": "x"})
    with pytest.raises(TypeError, match="storage_options apply to URLs"):
        checkpoints.restore_checkpoint(str(tmp_path), storage_options={"region": "x"})
    with pytest.raises(TypeError, match="storage_options apply to URLs"):
        checkpoints.save_checkpoint(str(tmp_path / "v.bpz"), state(1), 1, storage_options={"region": "x"})
    assert os.listdir(tmp_path) == []
    for prefix in ("a/b", "a\\b"):
        with pytest.raises(ValueError, match="without a directory part"):
            checkpoints.save_checkpoint(s3.url("ck/args/"), state(1), 1, prefix=prefix, storage_options=s3.options())
    with pytest.raises(InvalidArgumentError, match="credentials or a query"):
        checkpoints.checkpoint_steps("s3://user:pw@bucket/run/")
    assert objects_under(s3, "ck/args") == []
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        url = checkpoints.save_checkpoint(s3.url("ck/args/"), state(1), 1, prefix="ep ", storage_options=s3.options())
    assert url == s3.url("ck/args/ep%201")
    assert checkpoints.checkpoint_steps(s3.url("ck/args/"), prefix="ep ", storage_options=s3.options()) == [(1.0, url)]


def test_objects_are_read_only_when_needed(s3: S3Server) -> None:
    run = "ck/reads/"
    opts = s3.options()
    for step in range(1, 7):
        checkpoints.save_checkpoint(s3.url(run), state(step), step, keep=10, storage_options=opts)

    def gets_since(mark: int) -> list[str]:
        return [line.split(" s3_GetObject ")[1].split()[0] for line in s3.log_lines()[mark:] if " s3_GetObject " in line]

    mark = len(s3.log_lines())
    assert int(checkpoints.restore_checkpoint(s3.url(run), storage_options=opts)["step"]) == 6
    assert set(gets_since(mark)) == {f"{run}checkpoint_6"}  # the newest is checked, then loaded: no other
    mark = len(s3.log_lines())
    assert len(checkpoints.checkpoint_steps(s3.url(run), storage_options=opts)) == 6
    assert sorted(gets_since(mark)) == sorted(f"{run}checkpoint_{s}" for s in range(1, 7))  # one per candidate
    # A save with keep=2 reads the newest (outdated check), the ones it keeps and the one it deletes.
    mark = len(s3.log_lines())
    checkpoints.save_checkpoint(s3.url(run), state(7), 7, keep=2, storage_options=opts)
    assert objects_under(s3, run) == ["checkpoint_6", "checkpoint_7"]
    assert sorted(set(gets_since(mark))) == [f"{run}checkpoint_{s}" for s in range(1, 7)]
    assert len(gets_since(mark)) == 7  # checkpoint_6 twice: before the upload and for retention


def test_load_pytree_reads_bp_objects_by_url(s3: S3Server, nginx: Nginx, tmp_path: Path) -> None:
    """BrainPy .bp files uploaded as they are load by URL, as they load from disk."""
    bp_msgpack.write_bp(str(tmp_path / "m.bp"), {"w": np.arange(6.0).reshape(2, 3), "step": 3})
    data = (tmp_path / "m.bp").read_bytes()
    s3.put("bp-load/model 1.bp", data)
    (nginx.root / "bp-load.bp").write_bytes(data)
    for url, opts in ((s3.url("bp-load/model%201.bp"), s3.options()), (nginx.url("bp-load.bp"), None)):
        got = bpz.load_pytree(url, storage_options=opts)
        np.testing.assert_array_equal(got["w"], np.arange(6.0).reshape(2, 3))
        assert got["step"] == 3
        with pytest.raises(ValueError, match="one version"):
            bpz.load_pytree(url, storage_options=opts, version=2)
    s3.put("bp-load/cut.bp", data[:-3])
    with pytest.raises(bpz.errors.TruncatedError, match=r"s3://bpz-bucket/bp-load/cut.bp: file ends"):
        bpz.load_pytree(s3.url("bp-load/cut.bp"), storage_options=s3.options())
    s3.put("bp-load/text", b"just some text, not a checkpoint")
    with pytest.raises(bpz.errors.NotAnArchiveError):
        bpz.load_pytree(s3.url("bp-load/text"), storage_options=s3.options())
