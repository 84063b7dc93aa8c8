"""Memory layouts on save: an array is stored exactly, or refused — never saved scrambled.

Found by the soak test: a big-endian array in Fortran order was saved with its elements in
Fortran order (``astype`` keeps the layout, and the writer reads the bytes as C order), so it
loaded back transposed without any error. The binding now refuses a buffer that is not
C-contiguous (a loud ``ValueError`` instead of wrong data); the root cause is in
``python/bpz/pytree.py`` (``astype(..., order="C")``), reported for its owner.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

import bpz
from bpz import _bpz


def layouts():
    base = np.arange(6 * 5 * 4, dtype=np.float64).reshape(6, 5, 4) * 1.5
    yield "c", base
    yield "fortran", np.asfortranarray(base)
    yield "transposed", base.T
    yield "strided", base[::2, :, 1::2]
    yield "negative strides", base[::-1]
    yield "big-endian c", base.astype(">f8")
    yield "big-endian fortran", np.asfortranarray(base.astype(">f8"))
    yield "big-endian transposed", base.astype(">f8").T
    yield "big-endian strided", base.astype(">f8")[:, ::2]
    yield "int big-endian fortran", np.asfortranarray(np.arange(24, dtype=">i4").reshape(4, 6))
    yield "bool fortran", np.asfortranarray(np.arange(24).reshape(4, 6) % 3 == 0)


@pytest.mark.parametrize("compression", ["auto", "zstd", None])
@pytest.mark.parametrize("label,arr", list(layouts()), ids=[x[0] for x in layouts()])
def test_saved_exactly_or_refused_never_scrambled(tmp_path, label, arr, compression):
    path = str(tmp_path / "m.bpz")
    for use_async in (False, True):
        try:
            if use_async:
                with bpz.AsyncManager() as am:
                    bpz.save_pytree(path, {"a": arr}, verbose=False, compression=compression, async_manager=am)
            else:
                bpz.save_pytree(path, {"a": arr}, verbose=False, compression=compression)
        except ValueError as e:
            assert "C-contiguous" in str(e), e
            assert not os.path.exists(path) or bpz.load_pytree(path)  # an older save, if any, is intact
            continue
        got = bpz.load_pytree(path)["a"]
        assert got.shape == arr.shape and got.dtype == arr.dtype.newbyteorder("=")
        assert np.array_equal(got, arr), f"{label}: saved scrambled"


def test_big_endian_fortran_arrays_round_trip(tmp_path):
    arr = np.asfortranarray(np.arange(12, dtype=">f8").reshape(3, 4))
    path = str(tmp_path / "m.bpz")
    bpz.save_pytree(path, {"a": arr}, verbose=False)
    assert np.array_equal(bpz.load_pytree(path)["a"], arr)


def test_the_binding_refuses_a_buffer_that_is_not_c_contiguous(tmp_path):
    w = _bpz.Writer(str(tmp_path / "m.bpz"))
    f = np.asfortranarray(np.arange(12.0).reshape(3, 4))
    with pytest.raises(ValueError, match="C-contiguous"):
        w.add_tensors([("f", "F64", list(f.shape), f)])
    c = np.ascontiguousarray(f)
    w.add_tensors([("c", "F64", list(c.shape), c)])
    w.finish()
    with bpz.open(str(tmp_path / "m.bpz")) as a:
        assert a.keys() == ["c"] and np.array_equal(a["c"], c)
