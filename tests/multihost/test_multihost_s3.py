"""Sharded jax.Array checkpoints on object storage: the jobs of test_multihost.py with their
checkpoints under a prefix of a bucket (versitygw on 127.0.0.1), the storage options passed to
every worker. Three launches: the 2x2 save job (save, restores, async, numbered with keep, one
process failing its write), a restore on 1 process x 4 devices, and a 2x2 job with a SIGKILL
before the commit; then reads of the bucket from this process (load_pytree, bpz pack) and a
data object replaced after its commit."""

from __future__ import annotations

import json
import uuid

import numpy as np
import pytest

jax = pytest.importorskip("jax")

from multihost_launch import launch, ok, jax_too_old_for_sharding  # noqa: E402
from remote_servers import S3_SECRET_KEY, S3Server  # noqa: E402

import bpz  # noqa: E402
from bpz import _bpz, sharded  # noqa: E402

pytestmark = pytest.mark.skipif(jax_too_old_for_sharding(jax.__version__),
                                reason=f"sharded checkpoints need jax >= 0.4.30, this is {jax.__version__}")


def worker_env(s3: S3Server, prefix: str, **extra: str) -> dict[str, str]:
    return {"BPZ_TEST_DEST": s3.url(prefix), "BPZ_TEST_STORAGE_OPTIONS": json.dumps(s3.options()), **extra}


def listing(s3: S3Server, prefix: str) -> tuple[list[tuple[str, int]], list[str]]:
    objects, prefixes = _bpz.RemoteDir(s3.url(prefix), s3.options()).list()
    return sorted((o[0], o[1]) for o in objects), prefixes


def names(s3: S3Server, prefix: str) -> list[str]:
    return [n for n, _ in listing(s3, prefix)[0]]


@pytest.fixture(scope="module")
def saved(s3: S3Server, tmp_path_factory):
    """The 2 processes x 2 devices job writing to the bucket; the other tests read its checkpoint."""
    workdir = str(tmp_path_factory.mktemp("multihost_s3"))
    prefix = f"mh-{uuid.uuid4().hex[:8]}"
    results = ok(launch("save_2x2", 2, 2, workdir, timeout=150, env=worker_env(s3, prefix)))
    return workdir, prefix, results


def test_save_restore_async_numbered_and_failure_on_a_bucket(s3: S3Server, saved) -> None:
    _, prefix, r = saved
    assert r["done_0"] and r["done_1"]
    # the commit record and one data object per process; the failed overwrite left nothing
    objects, _ = listing(s3, f"{prefix}/ckpt")
    data = [(n, size) for n, size in objects if sharded.is_data_file(n)]
    assert [n for n, _ in objects] == ["commit.bpz", *(n for n, _ in data)] and len(data) == 2
    assert len({n.split(".")[1] for n, _ in data}) == 1  # one token: the committed save's
    sizes = [size for _, size in data]
    assert abs(sizes[0] - sizes[1]) <= 0.1 * max(sizes), sizes  # replica-parallel on a bucket too
    for p in (0, 1):
        assert r[f"transposed_read_{p}"] <= 1.1 * r[f"transposed_needed_{p}"], r
    assert r["failed_1"].startswith("OSError") and "No space left on device" in r["failed_1"], r["failed_1"]
    assert r["failed_0"].startswith("ShardedSaveError") and "process 1" in r["failed_0"], r["failed_0"]
    # keep=2: step 1's objects are gone (removed after step 3's commit); step 4 failed once
    # process 1's object was uploaded: nothing of it is left
    # process 1 's object was uploaded: nothing of it is left. Step 5 committed although its
    # removal of step 2 was refused: step 2 stays
    _, steps = listing(s3, f"{prefix}/steps")
    assert set(steps) <= {"checkpoint_1", "checkpoint_2", "checkpoint_3", "checkpoint_4", "checkpoint_5"}
    assert names(s3, f"{prefix}/steps/checkpoint_1") == [] and names(s3, f"{prefix}/steps/checkpoint_4") == []
    for step in (2, 3, 5):
        assert names(s3, f"{prefix}/steps/checkpoint_{step}")[0] == "commit.bpz"
    assert len(names(s3, f"{prefix}/ckpt_async")) == 3


def test_restore_on_one_process_with_four_devices_from_the_bucket(s3: S3Server, saved) -> None:
    workdir, prefix, _ = saved
    r = ok(launch("restore_1x4", 1, 4, workdir, timeout=90, env=worker_env(s3, prefix)))
    assert r["read"] <= 1.1 * r["needed"], r


def test_load_pytree_and_pack_from_the_bucket(s3: S3Server, saved, tmp_path, monkeypatch) -> None:
    from bpz.cli import main

    _, prefix, _ = saved
    url = s3.url(f"{prefix}/ckpt")
    tree = bpz.load_pytree(url, storage_options=s3.options())
    assert tree["params"]["w"].shape == (512, 256) and tree["step"] == 12 and tree["name"] == "run-α"
    np.testing.assert_array_equal(tree["big"], np.arange(262147, dtype=np.int32) * 3)
    assert tree["misc"] == (1, "a", None, [2.0, "bpz:sharded-array:a0"])
    for key, value in {"AWS_ENDPOINT": s3.endpoint, "AWS_REGION": "us-east-1",
                       "AWS_ACCESS_KEY_ID": s3.options()["access_key_id"],
                       "AWS_SECRET_ACCESS_KEY": S3_SECRET_KEY}.items():
        monkeypatch.setenv(key, value)
    packed = str(tmp_path / "one.bpz")
    assert main(["pack", url, packed]) == 0
    whole = bpz.load_pytree(packed)
    np.testing.assert_array_equal(whole["params"]["b"], tree["params"]["b"])
    assert whole["params"]["b"].dtype == tree["params"]["b"].dtype and whole["misc"] == tree["misc"]


def test_a_data_object_replaced_after_the_commit_is_refused(s3: S3Server, saved) -> None:
    _, prefix, _ = saved
    src = s3.root / s3.bucket / prefix / "ckpt"
    copy = f"{prefix}/replaced"
    for name in names(s3, f"{prefix}/ckpt"):
        s3.put(f"{copy}/{name}", (src / name).read_bytes())
    url = s3.url(copy)
    assert bpz.load_pytree(url, storage_options=s3.options())["step"] == 12  # the copy is whole
    victim = [n for n in names(s3, copy) if sharded.is_data_file(n)][1]
    data = (src / victim).read_bytes()
    s3.put(f"{copy}/{victim}", data[:-32] + bytes(b ^ 0x55 for b in data[-32:]))  # same size, another trailer
    with pytest.raises(bpz.errors.CorruptDataError, match="not the file the commit record"):
        bpz.load_pytree(url, storage_options=s3.options())


def test_sigkill_before_commit_leaves_the_previous_checkpoint_on_the_bucket(s3: S3Server, tmp_path) -> None:
    prefix = f"mh-kill-{uuid.uuid4().hex[:8]}"
    procs = launch("kill", 2, 2, str(tmp_path), timeout=90,
                   env=worker_env(s3, prefix, BPZ_TEST_KILL_TIMEOUT="4"))
    r0 = procs[0].results
    assert procs[1].returncode == -9, procs[1].describe()  # SIGKILL, as injected
    assert r0.get("first_committed_0"), procs[0].describe()
    url = s3.url(f"{prefix}/ckpt_kill")
    with sharded.ShardedCheckpoint(url, s3.options()) as c:
        assert "replaced" not in c.tree(lambda rec: rec)
        committed = set(c.files)
    tokens = {n.split(".")[1] for n in committed}
    assert len(tokens) == 1  # no commit object for the new save: the old one is current
    if "second_0" in r0:  # process 0 timed out waiting, and cleaned up what the failed save uploaded
        assert r0["second_0"].startswith("ShardedSaveError") and "process 1" in r0["second_0"], r0
        assert r0.get("old_intact_0"), procs[0].describe()
        assert set(names(s3, f"{prefix}/ckpt_kill")) == {"commit.bpz", *committed}
    tree = bpz.load_pytree(url, storage_options=s3.options())
    assert "replaced" not in tree and tree["params"]["w"].shape == (512, 256)
