"""Writer options: the defaults and the checks are the core's, stated and applied once.

The binding's options left None take ``WriterOptions::default()`` (shown as
``_bpz.Writer.DEFAULTS``); ``save_pytree`` passes its options through and asks the core to
check them (``Writer.check_options``) before a background save starts.
"""

import os

import numpy as np
import pytest

import bpz
from bpz import _bpz
from bpz.errors import InvalidArgumentError
from file_bytes import without_write_time


def _write(path, **options):
    w = _bpz.Writer(path, **options)
    w.add_tensors([("a", "F32", None, np.arange(100_000, dtype=np.float32) % 7), ("b", "U8", None, b"xyz")])
    w.set_tree({"a": 0, "b": 1})
    w.finish()
    with open(path, "rb") as f:
        return without_write_time(f.read())


def test_the_python_constants_are_the_cores_defaults():
    d = _bpz.Writer.DEFAULTS
    assert set(d) == {"alignment", "chunk_bytes", "compression", "level", "sync", "overwrite"}
    assert bpz.write.DEFAULT_CHUNK_SIZE == d["chunk_bytes"]
    assert bpz.write.DEFAULT_LEVEL == d["level"]


def test_options_left_none_are_the_defaults(tmp):
    stated = _write(os.path.join(tmp, "stated.bpz"), **_bpz.Writer.DEFAULTS)
    left_none = _write(os.path.join(tmp, "none.bpz"), alignment=None, chunk_bytes=None, level=None,
                       sync=None, overwrite=None)
    left_out = _write(os.path.join(tmp, "out.bpz"))
    assert stated == left_none == left_out


def test_compression_none_and_the_name_none_are_the_same(tmp):
    assert _write(os.path.join(tmp, "a.bpz"), compression=None) == _write(os.path.join(tmp, "b.bpz"), compression="none")


@pytest.mark.parametrize("options, error, match", [
    ({"compression": "gzip"}, InvalidArgumentError, 'compression must be .*"gzip"'),
    ({"level": 99}, InvalidArgumentError, "zstd level 99"),
    ({"level": True}, TypeError, "level must be an int, not bool"),
    ({"level": 1.5}, TypeError, "level must be an int, not float"),
    ({"chunk_bytes": 0}, InvalidArgumentError, "chunk_size"),
    ({"chunk_bytes": -1}, InvalidArgumentError, "chunk_size"),
    ({"alignment": 48}, InvalidArgumentError, "alignment 48 is not a power of two"),
])
def test_check_options_refuses_what_the_writer_refuses(tmp, options, error, match):
    path = os.path.join(tmp, "m.bpz")
    with pytest.raises(error, match=match):
        _bpz.Writer.check_options(**options)
    with pytest.raises(error, match=match):
        _bpz.Writer(path, **options)
    assert os.listdir(tmp) == []


def test_a_background_save_refuses_bad_options_in_the_callers_thread(tmp):
    path = os.path.join(tmp, "m.bpz")
    manager = bpz.AsyncManager()
    try:
        with pytest.raises(InvalidArgumentError, match="chunk_size"):
            bpz.save_pytree(path, {"a": np.ones(3)}, verbose=False, async_manager=manager, chunk_size=-5)
        with pytest.raises(InvalidArgumentError, match="compression must be"):
            bpz.save_pytree(path, {"a": np.ones(3)}, verbose=False, async_manager=manager, compression="lz4")
    finally:
        manager.close()
    assert not os.path.exists(path)
