"""Reading archives over HTTP (nginx) and S3 (versitygw): request budget, equality with a
local load, and every failure the issue lists, each with a clear error naming the URL."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from remote_servers import S3_SECRET_KEY, DelayProxy, FaultServer, Nginx, S3Server

import bpz
from bpz.errors import NotZeroCopyError

OPEN_TAIL_BYTES = 256 << 10


class Remote:
    """One of the two real servers, seen the same way by the tests."""

    def __init__(self, kind: str, server: Nginx | S3Server) -> None:
        self.kind = kind
        self.server = server

    def put(self, name: str, data: bytes) -> None:
        if isinstance(self.server, S3Server):
            self.server.put(name, data)
        else:
            tmp = self.server.root / (name + ".tmp")
            tmp.write_bytes(data)
            os.replace(tmp, self.server.root / name)

    def url(self, name: str) -> str:
        return self.server.url(name)

    def options(self) -> dict[str, str] | None:
        return self.server.options() if isinstance(self.server, S3Server) else None

    def mark(self) -> int:
        return len(self.server.log_lines())

    def logged(self, mark: int, name: str) -> list[str]:
        """The server's access-log lines for `name` since `mark`."""
        return [line for line in self.server.log_lines()[mark:] if name in line]


@pytest.fixture(params=["nginx", "s3"])
def remote(request: pytest.FixtureRequest) -> Remote:
    return Remote(request.param, request.getfixturevalue(request.param))


def save(tmp_path: Path, tree: dict[str, Any], name: str = "a.bpz", **kw: Any) -> bytes:
    path = tmp_path / name
    bpz.save_pytree(str(path), tree, verbose=False, **kw)
    return path.read_bytes()


def small_tree() -> dict[str, Any]:
    rng = np.random.default_rng(0)
    return {"w": rng.standard_normal((64, 32)).astype(np.float32), "b": np.arange(32, dtype=np.int64),
            "nested": {"x": np.full((5,), 3, dtype=np.int16)}}


def big_tree(dense: int = 8) -> dict[str, Any]:
    """About 4 + `dense` MiB in 16 + `dense` tensors, raw and compressed, large and small."""
    rng = np.random.default_rng(1)
    tree: dict[str, Any] = {}
    for i in range(dense):
        tree[f"dense{i}"] = rng.standard_normal((256, 1024)).astype(np.float32)  # 1 MiB, noisy
    for i in range(8):
        tree[f"smooth{i}"] = np.tile(np.arange(4096, dtype=np.float32), 64).reshape(256, 1024)  # compresses
    for i in range(8):
        tree[f"small{i}"] = rng.integers(0, 100, size=(100,), dtype=np.int32)
    return tree


def assert_trees_equal(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], dict):
            assert_trees_equal(a[k], b[k])
        else:
            assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
            assert a[k].tobytes() == b[k].tobytes(), k


def expected_open_requests(size: int, version: tuple[int, int]) -> int:
    # The tail read holds trailer and index; a format-1.0 file larger than it needs its
    # superblock from offset 0 too (format 1.1 keeps a copy of it in the index).
    return 1 if size <= OPEN_TAIL_BYTES or version >= (1, 1) else 2


def test_open_small_archive_is_one_request_and_reads_from_it(remote: Remote, tmp_path: Path) -> None:
    data = save(tmp_path, small_tree())
    remote.put("small.bpz", data)
    mark = remote.mark()
    with bpz.open(remote.url("small.bpz"), storage_options=remote.options()) as a:
        assert a._request_stats()["requests"] == 1
        assert a.file_size == len(data)
        assert sorted(a.keys()) == ["b", "nested/x", "w"] or len(a.keys()) == 3
        loaded = a.load()
        # The whole archive came with the open request.
        assert a._request_stats() == {"requests": 1, "bytes": len(data)}
    assert_trees_equal(loaded, small_tree())
    lines = remote.logged(mark, "small.bpz")
    assert len(lines) == 1, lines
    if remote.kind == "nginx":
        assert re.search(r' 206 "bytes=-\d+" ', lines[0]), lines


def test_one_tensor_cold_costs_open_plus_one(remote: Remote, tmp_path: Path) -> None:
    tree = big_tree()
    data = save(tmp_path, tree, compression="auto")
    remote.put("big.bpz", data)
    mark = remote.mark()
    with bpz.open(remote.url("big.bpz"), storage_options=remote.options()) as a:
        opened = a._request_stats()["requests"]
        assert opened == expected_open_requests(len(data), a.version)
        arr = a["dense3"]
        assert arr.tobytes() == tree["dense3"].tobytes()
        stats = a._request_stats()
        assert stats["requests"] == opened + 1
        # Only that tensor's bytes (plus the open's tail) crossed the network.
        assert stats["bytes"] < OPEN_TAIL_BYTES + 64 + tree["dense3"].nbytes + 4096
        with pytest.raises(NotZeroCopyError, match="big.bpz"):
            a._native().view("dense3")
    assert len(remote.logged(mark, "big.bpz")) == opened + 1


def test_row_range_fetches_only_the_chunks_it_needs(remote: Remote, tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    w = np.cumsum(rng.integers(-3, 4, size=(4096, 256)), axis=0).astype(np.int32)  # 4 MiB, compressible
    data = save(tmp_path, {"w": w, "pad": rng.standard_normal(300_000).astype(np.float32)},
                compression="zstd", chunk_size=64 << 10)
    remote.put("rows.bpz", data)
    with bpz.open(remote.url("rows.bpz"), storage_options=remote.options()) as a:
        info = a.info("w")
        assert info.chunks == 64
        before = a._request_stats()
        rows = a.get_slice("w")[1000:1100]  # 100 rows = 100 KiB: chunks 15 and 16 of 64
        after = a._request_stats()
    assert rows.tobytes() == w[1000:1100].tobytes()
    assert after["requests"] - before["requests"] == 1
    # Two chunks of about stored_bytes / 64 each, not the tensor.
    per_chunk = info.stored_bytes / info.chunks
    assert after["bytes"] - before["bytes"] < 4 * per_chunk + (64 << 10)


def test_full_load_equals_the_local_load_with_parallel_coalesced_requests(remote: Remote, tmp_path: Path) -> None:
    tree = big_tree(dense=40)  # 44 MiB: more than one 16 MiB request
    data = save(tmp_path, tree, compression="auto")
    remote.put("full.bpz", data)
    local = bpz.load_pytree(str(tmp_path / "a.bpz"))
    mark = remote.mark()
    with bpz.open(remote.url("full.bpz"), storage_options=remote.options()) as a:
        loaded = a.load()
        stats = a._request_stats()
    assert_trees_equal(loaded, local)
    assert_trees_equal(loaded, tree)
    # 56 tensors in dozens of chunks, fetched in a few large ranges (4..16 MiB each).
    assert 4 <= stats["requests"] <= 2 + len(data) // (4 << 20) + 1, stats
    assert stats["bytes"] <= len(data) + OPEN_TAIL_BYTES
    assert len(remote.logged(mark, "full.bpz")) == stats["requests"]
    # load_pytree takes URLs as well.
    assert_trees_equal(bpz.load_pytree(remote.url("full.bpz"), storage_options=remote.options()), tree)


def test_full_load_runs_its_requests_in_parallel(fault_server: FaultServer, tmp_path: Path) -> None:
    tree = big_tree(dense=40)
    fault_server.files["p.bpz"] = save(tmp_path, tree)
    fault_server.fault.delay = 0.2  # each response waits 200 ms: overlapping requests show
    t = time.monotonic()
    with bpz.open(fault_server.url("p.bpz")) as a:
        loaded = a.load()
        requests = a._request_stats()["requests"]
    elapsed = time.monotonic() - t
    assert_trees_equal(loaded, tree)
    assert requests >= 5
    assert fault_server.max_in_flight >= 4, fault_server.max_in_flight
    # Sequential requests would take requests x 200 ms at least.
    assert elapsed < (requests - 1) * 0.2, (elapsed, requests)


def test_loads_from_several_threads_share_one_archive(nginx: Nginx, tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    tree = big_tree(dense=24)
    (nginx.root / "threads.bpz").write_bytes(save(tmp_path, tree))
    with bpz.open(nginx.url("threads.bpz")) as a:
        with ThreadPoolExecutor(3) as pool:
            results = list(pool.map(lambda _: a.load(), range(3)))
        stats = a._request_stats()
    for loaded in results:
        assert_trees_equal(loaded, tree)
    # Each load fetched its own ranges; none fell back to chunk-by-chunk requests.
    assert stats["requests"] <= 2 + 3 * (len(tree) // 4), stats


def test_jax_load_reads_urls(nginx: Nginx, tmp_path: Path) -> None:
    jax_mod = pytest.importorskip("bpz.jax")
    (nginx.root / "j.bpz").write_bytes(save(tmp_path, small_tree()))
    out = jax_mod.load(nginx.url("j.bpz"))
    assert np.asarray(out["w"]).tobytes() == small_tree()["w"].tobytes()


# -- failures ---------------------------------------------------------------------------------------


def test_missing_object_is_file_not_found_naming_the_url(remote: Remote) -> None:
    url = remote.url("no-such.bpz")
    with pytest.raises(FileNotFoundError) as e:
        bpz.open(url, storage_options=remote.options())
    assert url in str(e.value)
    assert S3_SECRET_KEY not in str(e.value)


def test_bad_s3_credentials_are_permission_errors_without_the_secret(s3: S3Server, tmp_path: Path) -> None:
    s3.put("c.bpz", save(tmp_path, small_tree()))
    wrong = "wrong-secret-" + "x" * 20
    with pytest.raises(PermissionError) as e:
        bpz.open(s3.url("c.bpz"), storage_options=s3.options(secret_access_key=wrong))
    text = f"{e.value} {e.value!r} {e.value.args}"
    assert "s3://bpz-bucket/c.bpz" in text and "403" in text
    assert wrong not in text and S3_SECRET_KEY not in text


def test_credentials_appear_in_no_message_repr_or_stats(s3: S3Server, tmp_path: Path) -> None:
    s3.put("d.bpz", save(tmp_path, big_tree()))
    messages: list[str] = []
    with bpz.open(s3.url("d.bpz"), storage_options=s3.options()) as a:
        messages += [repr(a), repr(a._remote), str(a._request_stats())]
        with pytest.raises(KeyError) as e:
            a["nope"]
        messages.append(str(e.value))
        s3.put("d.bpz", save(tmp_path, small_tree(), name="other.bpz"))
        with pytest.raises(OSError) as e2:
            a["dense0"]
        messages.append(str(e2.value))
    for bad in ({"no_such_option": S3_SECRET_KEY}, {"max_retries": S3_SECRET_KEY}):
        with pytest.raises(Exception) as e3:
            bpz.open(s3.url("d.bpz"), storage_options={**s3.options(), **bad})
        messages.append(str(e3.value))
    with pytest.raises(ValueError) as e4:
        bpz.open(f"https://user:{S3_SECRET_KEY}@127.0.0.1:1/x.bpz")
    messages.append(str(e4.value))
    for m in messages:
        assert S3_SECRET_KEY not in m, m


def test_object_replaced_between_requests_is_a_clear_error(remote: Remote, tmp_path: Path) -> None:
    remote.put("r.bpz", save(tmp_path, big_tree()))
    with bpz.open(remote.url("r.bpz"), storage_options=remote.options()) as a:
        # Same size, other bytes: only the ETag / modification time tells them apart.
        other = big_tree()
        other["dense0"] = other["dense0"] + 1
        time.sleep(1.1)  # nginx's ETag and Last-Modified have a one-second resolution
        remote.put("r.bpz", save(tmp_path, other, name="other.bpz"))
        with pytest.raises(OSError, match="changed since it was opened") as e:
            a["dense0"]
    assert remote.url("r.bpz") in str(e.value)


def test_connection_reset_mid_body_is_retried(fault_server: FaultServer, tmp_path: Path) -> None:
    fault_server.files["f.bpz"] = save(tmp_path, big_tree())
    with bpz.open(fault_server.url("f.bpz")) as a:
        fault_server.fault.mode, fault_server.fault.skip, fault_server.fault.times = "reset", len(fault_server.log), 1
        assert a["dense1"].tobytes() == big_tree()["dense1"].tobytes()
        assert a._request_stats()["requests"] >= 3  # the reset request was retried


def test_connection_reset_every_time_fails_clearly_and_bounded(fault_server: FaultServer, tmp_path: Path) -> None:
    fault_server.files["f.bpz"] = save(tmp_path, big_tree())
    with bpz.open(fault_server.url("f.bpz"), storage_options={"max_retries": 2, "retry_timeout": "5s"}) as a:
        fault_server.fault.mode, fault_server.fault.skip = "reset", len(fault_server.log)
        t = time.monotonic()
        with pytest.raises(OSError) as e:
            a["dense1"]
        assert time.monotonic() - t < 15
    assert fault_server.url("f.bpz") in str(e.value)


def test_short_body_is_detected_and_retried(fault_server: FaultServer, tmp_path: Path) -> None:
    fault_server.files["f.bpz"] = save(tmp_path, big_tree())
    with bpz.open(fault_server.url("f.bpz")) as a:
        fault_server.fault.mode, fault_server.fault.skip, fault_server.fault.times = "short", len(fault_server.log), 1
        assert a["dense2"].tobytes() == big_tree()["dense2"].tobytes()
    with bpz.open(fault_server.url("f.bpz"), storage_options={"max_retries": 1}) as a:
        fault_server.fault.mode, fault_server.fault.skip, fault_server.fault.times = "short", len(fault_server.log), None
        with pytest.raises(OSError) as e:
            a["dense2"]
    assert fault_server.url("f.bpz") in str(e.value)


def test_server_ignoring_range_small_file_is_used_whole(fault_server: FaultServer, tmp_path: Path) -> None:
    data = save(tmp_path, small_tree())
    fault_server.files["s.bpz"] = data
    fault_server.fault.mode = "ignore_range"
    with bpz.open(fault_server.url("s.bpz")) as a:
        assert_trees_equal(a.load(), small_tree())
        assert a._request_stats() == {"requests": 2, "bytes": len(data)}


def test_server_ignoring_range_large_file_is_refused_without_downloading(fault_server: FaultServer) -> None:
    fault_server.files["huge.bpz"] = bytes(65 << 20)
    fault_server.fault.mode = "ignore_range"
    with pytest.raises(OSError, match="ignores range requests") as e:
        bpz.open(fault_server.url("huge.bpz"))
    assert fault_server.url("huge.bpz") in str(e.value)


def test_suffix_ranges_refused_fall_back_to_head_and_range(fault_server: FaultServer, tmp_path: Path) -> None:
    data = save(tmp_path, small_tree())
    fault_server.files["s.bpz"] = data
    fault_server.fault.mode = "refuse_suffix"
    with bpz.open(fault_server.url("s.bpz")) as a:
        assert_trees_equal(a.load(), small_tree())
        assert a._request_stats()["requests"] == 3
    assert [m for m, _, _ in fault_server.log] == ["GET", "HEAD", "GET"]


def test_slow_server_times_out(fault_server: FaultServer, tmp_path: Path) -> None:
    fault_server.files["s.bpz"] = save(tmp_path, small_tree())
    fault_server.fault.mode = "stall"
    t = time.monotonic()
    with pytest.raises(TimeoutError) as e:
        bpz.open(fault_server.url("s.bpz"), storage_options={"timeout": "500ms", "max_retries": 1, "retry_timeout": "3s"})
    assert time.monotonic() - t < 10
    assert "timed out" in str(e.value) and fault_server.url("s.bpz") in str(e.value)


def test_server_errors_are_retried_then_reported(fault_server: FaultServer, tmp_path: Path) -> None:
    fault_server.files["s.bpz"] = save(tmp_path, small_tree())
    fault_server.fault.mode, fault_server.fault.times = "error_503", 2
    with bpz.open(fault_server.url("s.bpz")) as a:
        assert a._request_stats()["requests"] == 3
    fault_server.log.clear()
    fault_server.fault.times = None
    with pytest.raises(OSError, match="503") as e:
        bpz.open(fault_server.url("s.bpz"), storage_options={"max_retries": 2})
    assert len(fault_server.log) == 3
    assert fault_server.url("s.bpz") in str(e.value)


def test_etag_change_on_a_misbehaving_server_is_caught(fault_server: FaultServer, tmp_path: Path) -> None:
    fault_server.files["e.bpz"] = save(tmp_path, big_tree())
    with bpz.open(fault_server.url("e.bpz")) as a:
        fault_server.etags["e.bpz"] = '"v2"'
        with pytest.raises(OSError, match="changed since it was opened"):
            a["dense0"]


def test_bad_urls_and_options_are_clear(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a URL bpz reads|not supported"):
        bpz.open("ftp://host/x.bpz")
    with pytest.raises(ValueError, match="unknown storage option"):
        bpz.open("s3://bucket/x.bpz", storage_options={"endpoint_typo": "x"})
    with pytest.raises(TypeError, match="storage_options apply to URLs"):
        bpz.open(str(tmp_path / "x.bpz"), storage_options={"region": "x"})


# -- latency ----------------------------------------------------------------------------------------


def test_one_tensor_costs_two_round_trips_through_a_slow_link(
    nginx: Nginx, tmp_path: Path, delay_proxy: Callable[[int, float], Any]
) -> None:
    delay = 0.02  # each way: a round trip costs 40 ms
    rtt = 2 * delay
    tree = big_tree()
    data = save(tmp_path, tree)
    (nginx.root / "lat.bpz").write_bytes(data)
    proxy = delay_proxy(nginx.port, delay)
    url = f"http://127.0.0.1:{proxy.port}/lat.bpz"
    # Transfer time of the same bytes without the delay (open's tail + one tensor).
    t = time.perf_counter()
    with bpz.open(nginx.url("lat.bpz")) as a:
        a["dense5"]
    transfer = time.perf_counter() - t
    t = time.perf_counter()
    with bpz.open(url) as a:
        round_trips = a._request_stats()["requests"] + 1  # the tensor's request
        assert a["dense5"].tobytes() == tree["dense5"].tobytes()
        assert a._request_stats()["requests"] == round_trips
    elapsed = time.perf_counter() - t
    # Two round trips for a file whose open needs only its tail (format 1.1, or small files);
    # a format-1.0 file larger than the tail needs its superblock first: three.
    assert round_trips == expected_open_requests(len(data), bpz.open(str(tmp_path / "a.bpz")).version) + 1
    # Connection set-up adds one more delay each way on a fresh connection.
    assert elapsed < (round_trips + 1) * rtt + 2 * transfer + 0.1, (elapsed, round_trips, transfer)


# -- clients shared between opens; the first read ---------------------------------------------------


def many_tensors(n: int) -> dict[str, Any]:
    """`n` small tensors with long names: an index of about 250 bytes per tensor."""
    return {f"model.layers.{i:05d}.self_attn.q_proj.weight": np.full((4,), i, dtype=np.int32) for i in range(n)}


def test_opens_of_one_server_share_a_client_and_its_connection(nginx: Nginx, tmp_path: Path) -> None:
    tree = big_tree()
    (nginx.root / "share1.bpz").write_bytes(save(tmp_path, tree))
    (nginx.root / "share2.bpz").write_bytes(save(tmp_path, small_tree(), name="b.bpz"))
    proxy = DelayProxy(nginx.port, 0.0)  # counts the connections the client makes
    try:
        base = f"http://127.0.0.1:{proxy.port}"
        mark = len(nginx.log_lines())
        with bpz.open(f"{base}/share1.bpz") as a, bpz.open(f"{base}/share2.bpz") as b:
            # Interleaved reads on one client: each archive counts its own requests.
            assert a["dense0"].tobytes() == tree["dense0"].tobytes()
            assert_trees_equal(b.load(), small_tree())
            assert a["dense1"].tobytes() == tree["dense1"].tobytes()
            stats_a, stats_b = a._request_stats(), b._request_stats()
        time.sleep(0.05)  # the client puts its connection back in its pool after the response
        with bpz.open(f"{base}/share1.bpz") as again:
            again["dense2"]
            stats_again = again._request_stats()
        time.sleep(0.05)  # nginx logs a request once answered
        assert stats_a["requests"] == len(nginx.requests_since(mark, "share1.bpz")) - stats_again["requests"] == 3
        assert stats_b["requests"] == len(nginx.requests_since(mark, "share2.bpz")) == 1
        assert stats_again["requests"] == 2
        # Sequential requests all went over the connection the first open made.
        assert proxy.connections == 1, proxy.connections
    finally:
        proxy.close()


def test_other_options_get_another_client(nginx: Nginx, tmp_path: Path) -> None:
    (nginx.root / "opts.bpz").write_bytes(save(tmp_path, small_tree()))
    proxy = DelayProxy(nginx.port, 0.0)
    try:
        url = f"http://127.0.0.1:{proxy.port}/opts.bpz"
        seen = []
        for options in ({"timeout": "29s"}, {"timeout": "29s"}, {"timeout": "28s"}):
            with bpz.open(url, storage_options=options) as a:
                assert_trees_equal(a.load(), small_tree())
            time.sleep(0.05)  # the client puts its connection back in its pool after the response
            seen.append(proxy.connections)
        assert seen == [1, 1, 2], seen
    finally:
        proxy.close()


def test_credentials_are_never_shared_between_clients(
    s3: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s3.put("creds.bpz", save(tmp_path, small_tree()))
    wrong = s3.options(secret_access_key="another-secret-" + "y" * 20)
    for _ in range(2):  # right, wrong, right, wrong: each open signs with its own secret
        with bpz.open(s3.url("creds.bpz"), storage_options=s3.options()) as a:
            assert_trees_equal(a.load(), small_tree())
        with pytest.raises(PermissionError):
            bpz.open(s3.url("creds.bpz"), storage_options=wrong)
    # Credentials from the environment count as well.
    no_keys = {k: v for k, v in s3.options().items() if k not in ("access_key_id", "secret_access_key")}
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3.options()["access_key_id"])
    for secret, ok in ((wrong["secret_access_key"], False), (s3.options()["secret_access_key"], True)):
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
        if ok:
            with bpz.open(s3.url("creds.bpz"), storage_options=no_keys) as a:
                assert_trees_equal(a.load(), small_tree())
        else:
            with pytest.raises(PermissionError):
                bpz.open(s3.url("creds.bpz"), storage_options=no_keys)


@pytest.mark.parametrize(("tensors", "first_read", "open_requests"), [
    (600, None, 1),  # an index of about 150 KiB: within the default first read
    (3000, None, 2),  # about 750 KiB: the first read, then the rest of the index
    (3000, 64, 2),
    (3000, 65536, 2),
])
def test_an_index_larger_than_the_first_read_costs_one_more_request(
    remote: Remote, tmp_path: Path, tensors: int, first_read: int | None, open_requests: int
) -> None:
    tree = many_tensors(tensors)
    data = save(tmp_path, tree)
    index_len = int.from_bytes(data[-24:-16], "little")
    first = first_read or OPEN_TAIL_BYTES
    assert (index_len > max(first, 64 << 10)) == (open_requests == 2), index_len
    remote.put("idx.bpz", data)
    options = dict(remote.options() or {})
    if first_read:
        options["open_tail_bytes"] = str(first_read)
    mark = remote.mark()
    with bpz.open(remote.url("idx.bpz"), storage_options=options) as a:
        assert a._request_stats()["requests"] == open_requests
        assert a._request_stats()["bytes"] <= index_len + 32 + max(first, 64 << 10)
        # Every lookup is then answered from memory (page by page, each would be a request).
        assert len(a.keys()) == tensors
        assert a.info(f"model.layers.{tensors - 1:05d}.self_attn.q_proj.weight").shape == (4,)
        assert a._request_stats()["requests"] == open_requests
        name = f"model.layers.{tensors // 2:05d}.self_attn.q_proj.weight"
        assert a[name].tobytes() == tree[name].tobytes()
        in_first_read = len(data) <= first
        assert a._request_stats()["requests"] == open_requests + (0 if in_first_read else 1)
    time.sleep(0.05)  # a server logs a request once it has answered it
    lines = remote.logged(mark, "idx.bpz")
    assert len(lines) == a._request_stats()["requests"], lines
