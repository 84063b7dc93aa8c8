"""Property-based round trips over random pytrees, dtypes and options."""

import os
import tempfile

import ml_dtypes
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import bpz
from test_save_load import assert_same

DTYPES = [np.bool_, np.uint8, np.uint16, np.uint32, np.uint64, np.int8, np.int16, np.int32, np.int64,
          np.float16, np.float32, np.float64, np.complex64, np.complex128]
ML = [ml_dtypes.bfloat16, ml_dtypes.float8_e4m3fn, ml_dtypes.float8_e5m2]


@st.composite
def arrays(draw):
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=6))
    if draw(st.booleans()):
        dtype = draw(st.sampled_from(ML))
        raw = draw(hnp.arrays(np.uint8 if np.dtype(dtype).itemsize == 1 else np.uint16, shape))
        return raw.view(dtype)
    arr = draw(hnp.arrays(draw(st.sampled_from(DTYPES)), shape))
    if draw(st.booleans()) and arr.ndim >= 1:
        arr = arr[::-1]
    if draw(st.booleans()) and arr.dtype.itemsize > 1:
        arr = arr.astype(arr.dtype.newbyteorder(">"))
    return arr


keys = st.one_of(st.text(max_size=8), st.integers(-5, 10**20), st.booleans(), st.none(), st.tuples(st.integers(0, 3), st.text(max_size=2)))
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.complex_numbers(), st.text(max_size=10), st.binary(max_size=10))
trees = st.recursive(
    st.one_of(arrays(), scalars),
    lambda children: st.one_of(
        st.dictionaries(keys, children, max_size=4),
        st.lists(children, max_size=4),
        st.lists(children, max_size=3).map(tuple),
    ),
    max_leaves=12,
)


def _normalise(x):
    """What a round trip must give back: little-endian, C-contiguous arrays."""
    if isinstance(x, np.ndarray):
        return np.asarray(x.astype(x.dtype.newbyteorder("<")) if x.dtype.byteorder == ">" else x, order="C")
    if isinstance(x, dict):
        return {k: _normalise(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_normalise(v) for v in x]
    if isinstance(x, tuple):
        return tuple(_normalise(v) for v in x)
    return x


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tree=trees, compression=st.sampled_from(["auto", "zstd", None]), chunk=st.sampled_from([None, 1, 7, 64]))
def test_any_pytree_round_trips(tree, compression, chunk):
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "p.bpz")
        bpz.save_pytree(path, tree, verbose=False, compression=compression, chunk_size=chunk)
        assert_same(_normalise(tree), bpz.load_pytree(path))
        with bpz.open(path) as a:
            a.verify()
            for name in a:
                info = a.info(name)
                if info.shape and info.shape[0] > 1:
                    k = info.shape[0] // 2
                    assert a.get_slice(name)[k:].tobytes() == a.read(name)[k:].tobytes()
