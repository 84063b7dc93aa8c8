"""Row reads straight into caller buffers: `Archive.read_rows_into` and the batched native
`read_rows_many_into` the sharded restore uses — the bytes `read_rows` gives, and a clear
error (nothing written) for buffers that are wrong, read-only, too small or overlapping."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import bpz
from bpz.errors import InvalidArgumentError, TensorNotFoundError


@pytest.fixture()
def archive(tmp_path: Path) -> Path:
    path = tmp_path / "rows.bpz"
    bpz.save_pytree(path, {
        "raw": np.arange(100 * 64, dtype=np.uint8).reshape(100, 64),
        "packed": (np.arange(300 * 64, dtype=np.uint32) // 7).reshape(300, 64),
        "bf": np.linspace(-1, 1, 40 * 3, dtype=np.float32).reshape(40, 3),
    }, verbose=False, compression="zstd", chunk_size=4096)
    return path


def test_read_rows_into_gives_the_rows(archive: Path) -> None:
    with bpz.open(archive) as a:
        full = a["packed"]
        out = np.empty((15, 64), dtype=np.uint32)
        assert a.read_rows_into("packed", 5, 20, out) is out
        np.testing.assert_array_equal(out, full[5:20])
        flat = np.empty(15 * 64, dtype=np.uint32)  # any shape of the right size
        a.read_rows_into("packed", 5, 20, flat)
        np.testing.assert_array_equal(flat, full[5:20].ravel())
        with pytest.raises(ValueError, match="uint32"):
            a.read_rows_into("packed", 0, 1, np.empty(64, dtype=np.int32))
        with pytest.raises(TypeError, match="NumPy array"):
            a.read_rows_into("packed", 0, 1, bytearray(256))  # type: ignore[arg-type]
        with pytest.raises(InvalidArgumentError, match="out of range"):
            a.read_rows_into("packed", 299, 301, np.empty(128, dtype=np.uint32))


def test_many_reads_in_one_call(archive: Path) -> None:
    with bpz.open(archive) as a:
        native = a._native()
        wanted = [("raw", 0, 100), ("raw", 3, 17), ("packed", 0, 300), ("packed", 15, 16),
                  ("packed", 250, 300), ("packed", 7, 7), ("bf", 1, 39)]
        outs = [np.full((stop - start, a.info(n).shape[1]), 0xAB, dtype=a.info(n).dtype) for n, start, stop in wanted]
        native.read_rows_many_into([(n, s, e, o) for (n, s, e), o in zip(wanted, outs)])
        for (name, start, stop), out in zip(wanted, outs):
            np.testing.assert_array_equal(out, a[name][start:stop])


def test_bad_buffers_fail_before_any_byte_is_read(archive: Path) -> None:
    with bpz.open(archive) as a:
        native = a._native()
        good = np.zeros((2, 64), dtype=np.uint8)
        shared = np.zeros((4, 64), dtype=np.uint8)
        cases: list[tuple[list, type[Exception], str]] = [
            ([("raw", 0, 2, good), ("raw", 0, 2, shared[:2]), ("raw", 0, 2, shared[1:3])], ValueError, "overlap"),
            ([("raw", 0, 2, good), ("packed", 0, 1, np.zeros(64, dtype=np.uint16))], ValueError, "bytes an element"),
            ([("raw", 0, 2, good), ("raw", 0, 3, np.zeros((2, 64), dtype=np.uint8))], InvalidArgumentError, "buffer of"),
            ([("raw", 0, 2, good), ("nope", 0, 1, np.zeros(64, dtype=np.uint8))], TensorNotFoundError, "nope"),
            ([("raw", 0, 2, good), ("raw", 0, 1, np.zeros((64, 2), dtype=np.uint8).T)], ValueError, "contiguous"),
        ]
        for requests, error, message in cases:
            with pytest.raises(error, match=message):
                native.read_rows_many_into(requests)
            assert not good.any(), f"{message}: a read ran before every request was checked"
        frozen = np.zeros(64, dtype=np.uint8)
        frozen.flags.writeable = False
        with pytest.raises((ValueError, BufferError, TypeError), match="writ|read-only|readonly"):
            native.read_rows_many_into([("raw", 0, 1, frozen)])
