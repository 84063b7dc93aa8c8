"""Saving straight to object storage (versitygw): multipart upload streamed with bounded
memory, the object visible only when complete, the previous object intact after a failed,
aborted or killed save, and clear errors (no credentials) for what cannot be written."""

from __future__ import annotations

import hashlib
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from remote_servers import S3_SECRET_KEY, CuttableProxy, Nginx, S3Server

import bpz
from bpz import _bpz
from bpz.errors import InvalidArgumentError, InvalidCheckpointPath

PART = 8 << 20  # bpz::remote_write::PART_SIZE


def tree_of(seed: int, mib: int = 1) -> dict[str, Any]:
    """Distinct content per seed; `mib` MiB of float32 noise (incompressible) in 1 MiB tensors."""
    rng = np.random.default_rng(seed)
    return {
        "layers": [rng.standard_normal(1 << 18, dtype=np.float32) for _ in range(mib)],
        "step": np.int64(seed),
        "mask": np.zeros((64, 64), dtype=bool),
    }


def assert_same(a: Any, b: Any) -> None:
    assert a.keys() == b.keys()
    for x, y in zip(a["layers"], b["layers"]):
        np.testing.assert_array_equal(x, y)
    assert int(a["step"]) == int(b["step"])
    np.testing.assert_array_equal(a["mask"], b["mask"])


def stored(s3: S3Server, key: str) -> Path:
    return s3.root / s3.bucket / key


def pending_uploads(s3: S3Server, key: str) -> list[Path]:
    """Parts of multipart uploads to `key` not completed nor aborted (versitygw's posix backend
    keeps them in a hidden folder of the bucket named by the SHA-256 of the key): other tests'
    leftovers (a killed upload cannot abort) do not count."""
    uploads = s3.root / s3.bucket / ".sgwtmp" / "multipart" / hashlib.sha256(key.encode()).hexdigest()
    return [p for p in uploads.rglob("*") if p.is_file()]


def test_small_save_is_one_put_and_loads_back(s3: S3Server, tmp_path: Path) -> None:
    tree = tree_of(1)
    mark = len(s3.log_lines())
    assert bpz.save_pytree(s3.url("w/small.bpz"), tree, verbose=False, storage_options=s3.options()) == s3.url("w/small.bpz")
    puts = [line for line in s3.log_lines()[mark:] if "small.bpz" in line]
    assert len(puts) == 1, puts  # ≤ one part: a single PUT, atomic by itself
    loaded = bpz.load_pytree(s3.url("w/small.bpz"), storage_options=s3.options())
    assert_same(loaded, tree)
    # The same archive a local save writes (the write time aside: compare what it holds).
    bpz.save_pytree(str(tmp_path / "small.bpz"), tree, verbose=False)
    with bpz.open(str(tmp_path / "small.bpz")) as local, bpz.open(s3.url("w/small.bpz"), storage_options=s3.options()) as remote:
        assert list(local.keys()) == list(remote.keys())
        for name in local.keys():
            np.testing.assert_array_equal(local[name], remote[name])
        remote.verify()


def test_large_save_is_a_multipart_upload_visible_only_when_complete(s3: S3Server) -> None:
    key = "w/large.bpz"
    old = tree_of(2, mib=2)
    bpz.save_pytree(s3.url(key), old, verbose=False, storage_options=s3.options())
    old_bytes = stored(s3, key).read_bytes()
    new = tree_of(3, mib=44)  # > 5 parts
    w = _bpz.Writer(s3.url(key), compression=None, storage_options=s3.options())
    items = [(f"t{i}", "F32", None, a) for i, a in enumerate(new["layers"])]
    w.add_tensors(items)
    # Parts are uploaded while writing, but the store still shows the old object.
    assert stored(s3, key).read_bytes() == old_bytes
    assert pending_uploads(s3, key), "parts should be uploaded before finish"
    with bpz.open(s3.url(key), storage_options=s3.options()) as a:
        assert a.keys() == bpz.open(s3.url(key), storage_options=s3.options()).keys()
    w.set_tree(None)
    summary = w.finish()
    assert summary["file_bytes"] > 5 * PART
    assert not pending_uploads(s3, key)
    with bpz.open(s3.url(key), storage_options=s3.options()) as a:
        for i, y in enumerate(new["layers"]):
            np.testing.assert_array_equal(a[f"t{i}"], y)
        a.verify()


def test_failure_mid_upload_aborts_and_keeps_the_previous_object(s3: S3Server) -> None:
    key = "w/abort.bpz"
    old = tree_of(4)
    bpz.save_pytree(s3.url(key), old, verbose=False, storage_options=s3.options())
    old_bytes = stored(s3, key).read_bytes()
    new = tree_of(5, mib=40)
    w = _bpz.Writer(s3.url(key), compression=None, storage_options=s3.options())

    class Stop(Exception):
        pass

    def progress(done: int, total: int) -> None:
        if done > 3 * PART:
            raise Stop

    with pytest.raises(Stop):
        w.add_tensors([(f"t{i}", "F32", None, a) for i, a in enumerate(new["layers"])], progress=progress)
    w.abort()
    assert not pending_uploads(s3, key), "an aborted save must delete its parts"
    assert stored(s3, key).read_bytes() == old_bytes
    assert_same(bpz.load_pytree(s3.url(key), storage_options=s3.options()), old)


def test_server_gone_mid_upload_is_a_clear_error_and_the_old_object_stays(s3: S3Server) -> None:
    key = "w/gone.bpz"
    old = tree_of(6)
    bpz.save_pytree(s3.url(key), old, verbose=False, storage_options=s3.options())
    old_bytes = stored(s3, key).read_bytes()
    proxy = CuttableProxy(s3.port)
    opts = s3.options(endpoint=f"http://127.0.0.1:{proxy.port}", max_retries="1", retry_timeout="2s")
    closed = threading.Event()

    def progress(done: int, total: int) -> None:
        if done > 2 * PART and not closed.is_set():
            proxy.cut()  # open connections reset, new ones refused
            closed.set()

    w = _bpz.Writer(s3.url(key), compression=None, storage_options=opts)
    start = time.monotonic()
    with pytest.raises(OSError) as e:
        w.add_tensors([(f"t{i}", "F32", None, a) for i, a in enumerate(tree_of(7, mib=40)["layers"])], progress=progress)
        w.set_tree(None)
        w.finish()
    w.abort()
    assert time.monotonic() - start < 60  # bounded: retries and the abort have time limits
    assert "s3://bpz-bucket/w/gone.bpz" in str(e.value)
    assert S3_SECRET_KEY not in f"{e.value} {e.value!r}"
    assert stored(s3, key).read_bytes() == old_bytes
    assert_same(bpz.load_pytree(s3.url(key), storage_options=s3.options()), old)


def test_killed_save_leaves_the_previous_object(s3: S3Server, tmp_path: Path) -> None:
    """A process killed (SIGKILL) in the middle of a multipart upload never completes it."""
    key = "w/killed.bpz"
    old = tree_of(8)
    bpz.save_pytree(s3.url(key), old, verbose=False, storage_options=s3.options())
    old_bytes = stored(s3, key).read_bytes()
    script = textwrap.dedent(f"""
        import os, signal, sys, numpy as np
        from bpz import _bpz
        w = _bpz.Writer({s3.url(key)!r}, compression=None, storage_options={s3.options()!r})
        rng = np.random.default_rng(9)
        def progress(done, total):
            if done > 3 * {PART}:
                os.kill(os.getpid(), signal.SIGKILL)
        w.add_tensors([(f"t{{i}}", "F32", None, rng.standard_normal(1 << 18, dtype=np.float32)) for i in range(48)], progress=progress)
        w.set_tree(None)
        w.finish()
    """)
    proc = subprocess.run([sys.executable, "-c", script], timeout=120, capture_output=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    assert stored(s3, key).read_bytes() == old_bytes
    assert_same(bpz.load_pytree(s3.url(key), storage_options=s3.options()), old)


def test_large_save_memory_is_bounded(s3: S3Server) -> None:
    """Saving 256 MiB adds far less than 256 MiB to the peak RSS (parts in flight only)."""
    script = textwrap.dedent(f"""
        import resource, numpy as np, bpz
        tree = {{"w": [np.full(1 << 22, i, dtype=np.float32) for i in range(16)]}}  # 16 x 16 MiB
        for a in tree["w"]:
            a[::1024] = np.arange(a.size // 1024, dtype=np.float32)  # touched, not all equal
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        bpz.save_pytree({s3.url("w/big.bpz")!r}, tree, verbose=False, compression=None, storage_options={s3.options()!r})
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print((after - before) // 1024)
    """)
    proc = subprocess.run([sys.executable, "-c", script], timeout=300, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    grown_mib = int(proc.stdout.split()[-1])
    assert grown_mib < 128, f"peak RSS grew by {grown_mib} MiB saving 256 MiB"
    assert stored(s3, "w/big.bpz").stat().st_size > 256 << 20
    with bpz.open(s3.url("w/big.bpz"), storage_options=s3.options()) as a:
        assert float(a["w/15"][1]) == 15.0


def test_async_save_to_a_bucket(s3: S3Server) -> None:
    trees = [tree_of(10 + i, mib=3) for i in range(3)]
    with bpz.AsyncManager() as m:
        for i, t in enumerate(trees):
            bpz.save_pytree(s3.url(f"w/async_{i}.bpz"), t, verbose=False, async_manager=m, storage_options=s3.options())
    for i, t in enumerate(trees):
        assert_same(bpz.load_pytree(s3.url(f"w/async_{i}.bpz"), storage_options=s3.options()), t)


def test_async_save_failure_is_reported_and_keeps_the_old_object(s3: S3Server) -> None:
    key = "w/async_bad.bpz"
    old = tree_of(20)
    bpz.save_pytree(s3.url(key), old, verbose=False, storage_options=s3.options())
    wrong = "wrong-secret-" + "y" * 20
    m = bpz.AsyncManager()
    bpz.save_pytree(s3.url(key), tree_of(21, mib=12), verbose=False, async_manager=m,
                    storage_options=s3.options(secret_access_key=wrong))
    with pytest.raises(PermissionError) as e:
        m.close()
    assert wrong not in f"{e.value} {e.value!r}" and "s3://bpz-bucket/w/async_bad.bpz" in str(e.value)
    assert_same(bpz.load_pytree(s3.url(key), storage_options=s3.options()), old)


@pytest.mark.parametrize("size_mib", [1, 20])
def test_wrong_credentials_are_permission_errors_without_the_secret(s3: S3Server, size_mib: int) -> None:
    wrong = "wrong-secret-" + "z" * 20
    with pytest.raises(PermissionError) as e:
        bpz.save_pytree(s3.url(f"w/denied_{size_mib}.bpz"), tree_of(30, mib=size_mib), verbose=False,
                        storage_options=s3.options(secret_access_key=wrong))
    text = f"{e.value} {e.value!r} {e.value.args}"
    assert "s3://bpz-bucket/w/denied" in text and "403" in text
    assert wrong not in text and S3_SECRET_KEY not in text
    assert not stored(s3, f"w/denied_{size_mib}.bpz").exists()


def test_overwrite_false_refuses_an_existing_object(s3: S3Server) -> None:
    key = "w/keep.bpz"
    old = tree_of(40)
    bpz.save_pytree(s3.url(key), old, verbose=False, storage_options=s3.options())
    with pytest.raises(InvalidCheckpointPath):
        bpz.save_pytree(s3.url(key), tree_of(41), overwrite=False, verbose=False, storage_options=s3.options())
    assert_same(bpz.load_pytree(s3.url(key), storage_options=s3.options()), old)
    bpz.save_pytree(s3.url("w/fresh.bpz"), old, overwrite=False, verbose=False, storage_options=s3.options())
    assert_same(bpz.load_pytree(s3.url("w/fresh.bpz"), storage_options=s3.options()), old)


def test_append_to_a_url_is_refused_clearly(s3: S3Server) -> None:
    with pytest.raises(InvalidArgumentError, match="immutable"):
        bpz.save_pytree(s3.url("w/app.bpz"), tree_of(50), append=True, verbose=False, storage_options=s3.options())
    assert not stored(s3, "w/app.bpz").exists()


def test_http_urls_cannot_be_written(nginx: Nginx) -> None:
    mark = len(nginx.log_lines())
    with pytest.raises(InvalidArgumentError, match=r"http\(s\):// URL.*s3://"):
        bpz.save_pytree(nginx.url("put.bpz"), tree_of(60), verbose=False)
    assert nginx.log_lines()[mark:] == []  # refused before any request
    assert not (nginx.root / "put.bpz").exists()


def test_storage_options_on_a_local_path_is_a_type_error(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="storage_options"):
        bpz.save_pytree(str(tmp_path / "x.bpz"), tree_of(70), verbose=False, storage_options={"region": "x"})
    assert not (tmp_path / "x.bpz").exists()
