"""`_bpz.RemoteDir`: the objects under one prefix of a bucket (versitygw), as numbered and
sharded checkpoints use them — listing (objects and sub-prefixes, every page), lookup, a
few bytes of an object, deletion — and clear errors for what a prefix cannot do."""

from __future__ import annotations

import numpy as np
import pytest
from remote_servers import S3_SECRET_KEY, Nginx, S3Server, free_port

import bpz
from bpz import _bpz
from bpz.errors import InvalidArgumentError, UnsupportedFeatureError


def test_list_head_read_delete(s3: S3Server) -> None:
    s3.put("dir-ops/a", b"alpha")
    s3.put("dir-ops/b c", b"0123456789")
    s3.put("dir-ops/sub/x", b"x")
    s3.put("dir-ops-sibling/y", b"y")  # shares the prefix's spelling, not its directory
    d = _bpz.RemoteDir(s3.url("dir-ops/"), s3.options())
    objects, prefixes = d.list()
    assert [(name, size) for name, size, _, _ in objects] == [("a", 5), ("b c", 10)]
    assert prefixes == ["sub"]
    assert all(isinstance(etag, str) and when > 0 for _, _, etag, when in objects)
    assert d.head("a")[:2] == ("a", 5)
    assert d.head("missing") is None
    assert d.read_head("b c", 4) == b"0123"
    assert d.read_head("a", 100) == b"alpha"
    assert d.read_tail("b c", 3) == (b"789", 10)
    assert d.read_tail("a", 100) == (b"alpha", 5)
    assert d.read_all("b c", 10) == b"0123456789"
    with pytest.raises(InvalidArgumentError, match="more than"):
        d.read_all("b c", 9)
    with pytest.raises(FileNotFoundError, match="dir-ops/missing"):
        d.read_head("missing", 4)
    s3.put("dir-ops/empty", b"")
    assert d.read_head("empty", 8) == b""
    assert d.read_tail("empty", 8) == (b"", 0)
    assert d.read_all("empty", 0) == b""
    d.delete("empty")
    d.delete("a")
    d.delete("a")  # already gone: not an error
    assert [o[0] for o in d.list()[0]] == ["b c"]
    # The object URLs round-trip through save and open (a space percent-encoded).
    bpz.save_pytree(d.url("saved 1"), {"w": np.arange(5)}, verbose=False, storage_options=s3.options())
    assert d.url("saved 1") == s3.url("dir-ops/saved%201")
    out = bpz.load_pytree(d.url("saved 1"), storage_options=s3.options())
    np.testing.assert_array_equal(out["w"], np.arange(5))
    assert "saved 1" in [o[0] for o in d.list()[0]]
    assert d.requests > 0


def test_listing_pages_and_bucket_root(s3: S3Server) -> None:
    for i in range(1005):  # more than one page of 1000
        s3.put(f"many/k{i:04d}", b"")
    objects, _ = _bpz.RemoteDir(s3.url("many"), s3.options()).list()
    assert len(objects) == 1005 and objects[0][0] == "k0000" and objects[-1][0] == "k1004"
    root = _bpz.RemoteDir(f"s3://{s3.bucket}", s3.options())
    assert "many" in root.list()[1]
    assert _bpz.RemoteDir(s3.url("nothing-here/"), s3.options()).list() == ([], [])


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "a\\b", "x\ny"])
def test_names_are_one_segment(s3: S3Server, name: str) -> None:
    d = _bpz.RemoteDir(s3.url("names"), s3.options())
    for op in (d.url, d.head, d.delete, lambda n: d.read_head(n, 1)):
        with pytest.raises(InvalidArgumentError, match="plain object name"):
            op(name)


def test_errors_are_typed_and_keep_credentials_out(s3: S3Server, nginx: Nginx) -> None:
    wrong = _bpz.RemoteDir(s3.url("p"), s3.options(secret_access_key="wrong-secret-value"))
    with pytest.raises(PermissionError) as err:
        wrong.list()
    assert "wrong-secret-value" not in str(err.value) and S3_SECRET_KEY not in str(err.value)
    with pytest.raises(UnsupportedFeatureError, match="cannot list"):
        _bpz.RemoteDir(nginx.url("")).list()
    with pytest.raises(InvalidArgumentError, match="credentials or a query"):
        _bpz.RemoteDir("s3://user:pw@bucket/p")
    with pytest.raises(TypeError):
        _bpz.RemoteDir(s3.url("p"), {"endpoint": object()})


def test_nothing_listening_and_no_bucket_are_typed(s3: S3Server) -> None:
    dead = s3.options(endpoint=f"http://127.0.0.1:{free_port()}", max_retries="1")
    for op in (lambda: _bpz.RemoteDir(s3.url("p"), dead).list(),
               lambda: bpz.open(s3.url("p/a.bpz"), storage_options=dead),
               lambda: bpz.save_pytree(s3.url("p/a.bpz"), {"a": np.ones(2)}, verbose=False, storage_options=dead)):
        with pytest.raises(ConnectionRefusedError, match="cannot connect"):
            op()
    with pytest.raises(FileNotFoundError, match="no such bucket"):
        _bpz.RemoteDir("s3://no-such-bucket-here/p", s3.options()).list()
