"""Sharded checkpoints on object storage without a multi-process job: ``bpz.sharded``'s
``RemoteStore`` against versitygw (unpack into a bucket, load, pack, the CLI with the standard
AWS_* variables, replaced or missing data objects), an http(s) prefix read but never written,
and ``bpz.jax`` saves and numbered checkpoints of one process on a bucket. The multi-process
saves are in tests/multihost/test_multihost_s3.py."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from remote_servers import S3_SECRET_KEY, Nginx, S3Server

import bpz
from bpz import sharded
from bpz.cli import main
from bpz.errors import CheckpointNotFoundError, CorruptDataError, UnsupportedFeatureError


def make_tree() -> dict:
    return {
        "w": np.arange(600 * 7, dtype=np.float32).reshape(600, 7),
        "ids": np.arange(50, dtype=np.int64) - 7,
        "scalar": np.float64(2.5),
        "empty": np.zeros((0, 3), np.float32),
        "step": 9,
        "name": "run-β",
        "misc": (1, None, "bpz:sharded-array:a0"),  # looks like a placeholder: must stay a string
    }


def assert_same(got: dict, want: dict) -> None:
    assert set(got) == set(want)
    for k in ("w", "ids", "empty"):
        np.testing.assert_array_equal(got[k], want[k])
        assert got[k].dtype == want[k].dtype and got[k].shape == want[k].shape
    assert float(got["scalar"]) == 2.5 and got["step"] == 9 and got["name"] == "run-β"
    assert tuple(got["misc"]) == want["misc"]


@pytest.fixture
def archive(tmp_path) -> str:
    path = str(tmp_path / "whole.bpz")
    bpz.save_pytree(path, make_tree(), verbose=False)
    return path


def objects(s3: S3Server, prefix: str) -> list[str]:
    return sorted(o[0] for o in bpz._bpz.RemoteDir(s3.url(prefix), s3.options()).list()[0])


def test_unpack_load_and_pack_through_a_bucket(s3: S3Server, archive: str, tmp_path) -> None:
    url, opts = s3.url("sh/ck"), s3.options()
    assert sharded.unpack(archive, url, 3, storage_options=opts) == url
    names = objects(s3, "sh/ck")
    assert names[0] == "commit.bpz" and len(names) == 4 and all(sharded.is_data_file(n) for n in names[1:])
    assert sharded.is_sharded_checkpoint(url, opts) and sharded.is_sharded_checkpoint(url + "/", opts)
    assert not sharded.is_sharded_checkpoint(s3.url("sh/none"), opts)
    store = sharded.store_for(url, opts)
    assert isinstance(store, sharded.RemoteStore) and store.list() == names
    assert sharded.store_for(s3.url("sh"), opts).list() == ["ck"]  # the sub-prefix, as a subdirectory
    # load_pytree routes a prefix (with or without the slash) to the sharded reader
    assert_same(bpz.load_pytree(url, storage_options=opts), make_tree())
    assert_same(bpz.load_pytree(url + "/", storage_options=opts), make_tree())
    assert_same(sharded.load_numpy(url, opts), make_tree())
    with pytest.raises(FileNotFoundError):
        bpz.load_pytree(s3.url("sh/none"), storage_options=opts)
    with pytest.raises(CheckpointNotFoundError, match="has no commit.bpz"):
        sharded.load_numpy(s3.url("sh/none"), opts)
    # pack: from the bucket to a file, and to another object; unpack never over a checkpoint
    sharded.pack(url, str(tmp_path / "one.bpz"), storage_options=opts)
    assert_same(bpz.load_pytree(str(tmp_path / "one.bpz")), make_tree())
    sharded.pack(url, s3.url("sh/one.bpz"), storage_options=opts)
    assert_same(bpz.load_pytree(s3.url("sh/one.bpz"), storage_options=opts), make_tree())
    with pytest.raises(FileExistsError, match="already holds a sharded checkpoint"):
        sharded.unpack(archive, url, 2, storage_options=opts)
    assert objects(s3, "sh/ck") == names


def test_a_replaced_or_missing_data_object_is_refused(s3: S3Server, archive: str) -> None:
    opts = s3.options()

    def fresh(name: str) -> tuple[str, list[str]]:
        sharded.unpack(archive, s3.url(name), 2, storage_options=opts)
        return s3.url(name), objects(s3, name)[1:]

    url, (first, second) = fresh("rep/a")
    data = (s3.root / s3.bucket / "rep/a" / second).read_bytes()
    s3.put(f"rep/a/{second}", data[:-1] + bytes([data[-1] ^ 1]))  # same size, another trailer
    with pytest.raises(CorruptDataError, match="not the file the commit record"):
        bpz.load_pytree(url, storage_options=opts)
    url, (first, second) = fresh("rep/b")
    s3.put(f"rep/b/{first}", (s3.root / s3.bucket / "rep/b" / first).read_bytes() + b"more")
    with pytest.raises(CorruptDataError, match=r"not the file the commit record .*size \d+, expected \d+"):
        bpz.load_pytree(url, storage_options=opts)
    url, (first, _) = fresh("rep/c")
    bpz._bpz.RemoteDir(url, opts).delete(first)
    with pytest.raises(CorruptDataError, match="missing, but the commit record"):
        sharded.load_numpy(url, opts)


def test_cli_pack_and_unpack_with_urls_take_the_aws_variables(s3: S3Server, archive: str, tmp_path,
                                                              monkeypatch, capsys) -> None:
    monkeypatch.setenv("AWS_ENDPOINT", s3.endpoint)
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3.options()["access_key_id"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", S3_SECRET_KEY)
    url = s3.url("cli/ck")
    assert main(["unpack", archive, url, "--processes", "2"]) == 0
    assert len([n for n in objects(s3, "cli/ck") if sharded.is_data_file(n)]) == 2
    assert main(["unpack", archive, url]) == 2 and "already holds a sharded checkpoint" in capsys.readouterr().err
    packed = str(tmp_path / "packed.bpz")
    assert main(["pack", url, packed]) == 0
    assert_same(bpz.load_pytree(packed), make_tree())
    assert main(["pack", url, s3.url("cli/packed.bpz")]) == 0
    assert main(["pack", url, s3.url("cli/packed.bpz")]) == 2 and "exists" in capsys.readouterr().err
    assert main(["pack", url, s3.url("cli/packed.bpz"), "--force"]) == 0
    assert_same(bpz.load_pytree(s3.url("cli/packed.bpz")), make_tree())
    assert main(["pack", s3.url("cli/none"), packed, "--force"]) == 2
    assert "not a committed sharded checkpoint" in capsys.readouterr().err
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret-value")
    assert main(["pack", url, packed, "--force"]) == 3  # an I/O failure
    err = capsys.readouterr().err
    assert "wrong-secret-value" not in err and S3_SECRET_KEY not in err and err.startswith("bpz pack: ")


def test_errors_are_typed(s3: S3Server, archive: str, tmp_path) -> None:
    with pytest.raises(TypeError, match="storage_options apply to URLs"):
        sharded.store_for(str(tmp_path), {"endpoint": s3.endpoint})
    with pytest.raises(TypeError, match="storage_options apply to URLs"):
        sharded.is_sharded_checkpoint(str(tmp_path), {"endpoint": s3.endpoint})
    with pytest.raises(bpz.errors.InvalidArgumentError, match="not a URL bpz reads"):
        sharded.store_for("ftp://host/dir")
    sharded.unpack(archive, s3.url("auth/ck"), 1, storage_options=s3.options())
    wrong = s3.options(secret_access_key="wrong-secret-value")
    for call in (lambda: bpz.load_pytree(s3.url("auth/ck"), storage_options=wrong),
                 lambda: sharded.is_sharded_checkpoint(s3.url("auth/ck"), wrong),
                 lambda: sharded.unpack(archive, s3.url("auth/other"), 1, storage_options=wrong)):
        with pytest.raises(PermissionError) as err:
            call()
        assert "wrong-secret-value" not in str(err.value) and S3_SECRET_KEY not in str(err.value)
    assert objects(s3, "auth/other") == []


def test_an_http_prefix_is_read_but_never_written(nginx: Nginx, archive: str, tmp_path) -> None:
    local = str(tmp_path / "ck")
    sharded.unpack(archive, local, 2)
    shutil.copytree(local, nginx.root / "sharded-ck")
    url = nginx.url("sharded-ck")
    assert sharded.is_sharded_checkpoint(url)
    assert_same(sharded.load_numpy(url), make_tree())
    assert_same(bpz.load_pytree(url + "/"), make_tree())
    assert_same(bpz.load_pytree(url), make_tree())  # nginx answers 403 for the directory itself
    (nginx.root / "not-a-checkpoint").mkdir()
    with pytest.raises(PermissionError):  # a directory without a commit record: the server's own answer
        bpz.load_pytree(nginx.url("not-a-checkpoint"))
    with pytest.raises(CheckpointNotFoundError, match="has no commit.bpz"):  # a prefix: only a checkpoint fits
        bpz.load_pytree(nginx.url("not-a-checkpoint/"))
    store = sharded.store_for(url)
    for call in (lambda: store.write("x.bpz", {"a": np.zeros(2)}), lambda: store.remove("commit.bpz"),
                 lambda: sharded.unpack(archive, nginx.url("other"), 1)):
        with pytest.raises(UnsupportedFeatureError, match="read only"):
            call()
    assert (nginx.root / "sharded-ck" / "commit.bpz").exists()


# -- bpz.jax on one process: the commit protocol and numbered checkpoints on a bucket ---------------


def test_jax_save_load_and_numbered_checkpoints_on_a_bucket(s3: S3Server, monkeypatch) -> None:
    jax = pytest.importorskip("jax")
    import bpz.jax

    opts = s3.options()
    tree = {"w": jax.numpy.arange(12.0).reshape(3, 4), "host": np.arange(3), "step": 1}
    url = s3.url("jx/ck")
    stats: dict = {}
    assert bpz.jax.save(url, tree, storage_options=opts, stats=stats) == url
    assert stats["file"].startswith(url + "/process_0.")
    out = bpz.jax.load(url, storage_options=opts)
    np.testing.assert_array_equal(np.asarray(out["w"]), np.arange(12.0).reshape(3, 4))
    assert out["step"] == 1 and isinstance(out["w"], jax.Array)
    first = objects(s3, "jx/ck")
    # saving again replaces the data objects only once the new commit record is in place
    bpz.jax.save(url, {**tree, "step": 2}, storage_options=opts)
    assert bpz.jax.load(url, storage_options=opts)["step"] == 2
    second = objects(s3, "jx/ck")
    assert len(second) == 2 and set(first) & set(second) == {"commit.bpz"}
    # a failed commit leaves the previous checkpoint current and removes this save's objects
    real = sharded.RemoteStore.write

    def failing(self, name, tree, **kw):
        if name == sharded.COMMIT_NAME:
            raise OSError(28, "No space left on device (injected)")
        return real(self, name, tree, **kw)

    monkeypatch.setattr(sharded.RemoteStore, "write", failing)
    with pytest.raises(OSError, match="injected"):
        bpz.jax.save(url, {**tree, "step": 3}, storage_options=opts)
    monkeypatch.setattr(sharded.RemoteStore, "write", real)
    assert objects(s3, "jx/ck") == second and bpz.jax.load(url, storage_options=opts)["step"] == 2
    # a single archive at a URL loads too; a missing URL is a clear error
    bpz.save_pytree(s3.url("jx/one.bpz"), {"a": np.arange(4)}, verbose=False, storage_options=opts)
    np.testing.assert_array_equal(np.asarray(bpz.jax.load(s3.url("jx/one.bpz"), storage_options=opts)["a"]),
                                  np.arange(4))
    with pytest.raises(CheckpointNotFoundError, match="neither an archive nor"):
        bpz.jax.load(s3.url("jx/missing"), storage_options=opts)

    # numbered: keep=2 on a bucket, async; old step prefixes go only after the new commit
    steps = s3.url("jx/steps")
    with bpz.AsyncManager() as manager:
        for step in (1, 2, 3):
            bpz.jax.save_checkpoint(steps, {**tree, "step": step}, step, keep=2, async_manager=manager,
                                    storage_options=opts)
    found = bpz.jax.checkpoint_steps(steps, storage_options=opts)
    assert found == [(2, f"{steps}/checkpoint_2"), (3, f"{steps}/checkpoint_3")]
    assert objects(s3, "jx/steps/checkpoint_1") == []
    assert bpz.jax.restore_checkpoint(steps, storage_options=opts)["step"] == 3
    assert bpz.jax.restore_checkpoint(steps, 2, storage_options=opts)["step"] == 2
    with pytest.raises(bpz.errors.InvalidCheckpointError):
        bpz.jax.save_checkpoint(steps, tree, 3, keep=2, storage_options=opts)
    monkeypatch.setattr(sharded.RemoteStore, "write", failing)
    with pytest.raises(OSError, match="injected"):
        bpz.jax.save_checkpoint(steps, tree, 4, keep=2, storage_options=opts)
    monkeypatch.setattr(sharded.RemoteStore, "write", real)
    assert [s for s, _ in bpz.jax.checkpoint_steps(steps, storage_options=opts)] == [2, 3]
    assert objects(s3, "jx/steps/checkpoint_4") == []
    # removing old steps fails after the commit: the save stands, a warning says so, nothing is lost
    real_remove = bpz.jax._remove_checkpoint
    monkeypatch.setattr(bpz.jax, "_remove_checkpoint", lambda path, options: (_ for _ in ()).throw(
        PermissionError(13, "Permission denied (injected)", path)))
    with pytest.warns(RuntimeWarning, match="saved and committed, but removing the files of earlier saves failed"):
        bpz.jax.save_checkpoint(steps, {**tree, "step": 5}, 5, keep=2, storage_options=opts)
    monkeypatch.setattr(bpz.jax, "_remove_checkpoint", real_remove)
    assert [s for s, _ in bpz.jax.checkpoint_steps(steps, storage_options=opts)] == [2, 3, 5]
    assert bpz.jax.restore_checkpoint(steps, storage_options=opts)["step"] == 5
    bpz.jax.save_checkpoint(steps, {**tree, "step": 6}, 6, keep=2, storage_options=opts)  # the next save catches up
    assert [s for s, _ in bpz.jax.checkpoint_steps(steps, storage_options=opts)] == [5, 6]
    # http(s) cannot be written: refused before anything is done
    with pytest.raises(UnsupportedFeatureError, match="read only"):
        bpz.jax.save("https://127.0.0.1:9/ck", tree)

