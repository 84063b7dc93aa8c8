"""Issue 11 item 12: saving many small leaves. The native writer now writes the tree as
JSON text straight from the Python objects and keeps a batch's names and shapes in
shared lists; the bytes on disk must stay those of the value path, and every check
must still name the tensor or the tree member it refuses."""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import bpz
from bpz import _bpz

from stored_json import assert_stored_as_json, write_tree


def read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


# A "tensor" member makes an object a tensor node (spec §8), which must name a stored tensor:
# the reader refuses other values, so free-form trees here avoid that key. (The writer does not
# yet refuse such a tree itself: noted for issue 13.)
KEYS = st.text(max_size=6).filter(lambda k: k != "tensor")


scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**100), max_value=2**100)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
trees = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4)
    | st.lists(inner, max_size=3).map(tuple)
    | st.dictionaries(KEYS, inner, max_size=4),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tree=st.dictionaries(KEYS, trees, max_size=4))
def test_set_tree_stores_the_json_value_of_the_tree(tmp, tree):
    assert_stored_as_json(write_tree(os.path.join(tmp, "m.bpz"), tree), tree)


class Key(str):
    """A str subclass whose instances can be distinct dict keys with the same text."""

    def __hash__(self) -> int:
        return id(self)

    def __eq__(self, other: object) -> bool:
        return self is other


def test_a_tree_with_two_members_of_the_same_name_is_refused(tmp):
    # Before, the second member silently replaced the first in the stored tree.
    tree = {Key("a"): 1, Key("a"): 2}
    assert len(tree) == 2
    w = _bpz.Writer(os.path.join(tmp, "m.bpz"))
    with pytest.raises(ValueError, match='two members named "a"'):
        w.set_tree({"dict": tree})
    w.abort()
    assert os.listdir(tmp) == []


def test_a_large_batch_names_the_tensor_it_refuses(tmp):
    items = [(f"k{i}", "F32", None, np.float32(i)) for i in range(20_000)]
    items.append(("k12345", "F32", None, np.float32(0)))  # a repeat, far into the batch
    items.append(("after", "F32", None, np.float32(0)))
    w = _bpz.Writer(os.path.join(tmp, "m.bpz"), sync=False)
    with pytest.raises(ValueError, match='tensor "k12345" was already added'):
        w.add_tensors(items)
    w.set_tree({"ok": True})
    info = w.finish()
    assert info["tensors"] == 20_000  # those before it were added
    with bpz.open(os.path.join(tmp, "m.bpz")) as archive:
        assert len(archive.keys()) == 20_000


def test_shapes_given_and_taken_from_the_data_are_kept_apart(tmp):
    # Given shapes, the data's own and scalars interleaved: each tensor gets its own.
    items = []
    for i in range(300):
        a = np.arange(i % 7 * 3, dtype=np.int16).reshape(i % 7, 3) if i % 3 else np.int16(i)
        if i % 2:
            items.append((f"t{i}", "I16", None, a))
        else:
            items.append((f"t{i}", "U8", [a.nbytes], a.view(np.uint8) if a.ndim else np.frombuffer(a.tobytes(), np.uint8), {"compression": "zstd"}))
    w = _bpz.Writer(os.path.join(tmp, "m.bpz"), sync=False)
    assert w.add_tensors(items) == 300
    w.finish()
    with bpz.open(os.path.join(tmp, "m.bpz")) as archive:
        for item in items:
            name, dtype, shape, data = item[:4]
            got = archive.info(name)
            expected = tuple(shape) if shape is not None else np.shape(data)
            assert got.shape == expected and got.bpz_dtype == dtype, name
            assert archive.read(name).tobytes() == np.asarray(data).tobytes(), name
            if len(item) == 5 and data.nbytes:
                assert got.storage == "chunked", name


def test_a_million_leaf_tree_round_trips(tmp):
    tree = {f"k{i}": np.float32(i) for i in range(200_000)}
    path = os.path.join(tmp, "m.bpz")
    bpz.save_pytree(path, tree, verbose=False, sync=False)
    loaded = bpz.load_pytree(path)
    assert list(loaded) == list(tree)
    assert all(loaded[k] == v and type(loaded[k]) is np.float32 for k, v in tree.items())
