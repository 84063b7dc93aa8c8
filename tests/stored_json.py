"""What ``Writer.set_tree`` stores: a tree written, and the JSON value it must read back as.
Shared by the hand-picked cases (test_save_many) and the generated ones (test_writer_scale)."""

from __future__ import annotations

import json

import numpy as np

from bpz import _bpz


def write_tree(path: str, tree: object) -> str:
    """Stores ``tree`` with ``Writer.set_tree`` (beside the tensor ``x`` a tree may refer to);
    returns the stored JSON text."""
    w = _bpz.Writer(path, sync=False)
    w.add_tensors([("x", "F32", None, np.float32(1))])
    w.set_tree(tree)
    w.finish()
    return _bpz.Archive(path).tree_json()


def json_value(tree: object, tag_floats: bool = False) -> object:
    """``tree`` as JSON reads it back: tuples as lists, integers beyond 64 bits as floats
    (each float as ``("float", value)`` if ``tag_floats``)."""
    if isinstance(tree, dict):
        return {k: json_value(v, tag_floats) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return [json_value(v, tag_floats) for v in tree]
    if isinstance(tree, int) and not isinstance(tree, bool) and not -(2**63) <= tree < 2**64:
        tree = float(tree)
    if isinstance(tree, float) and tag_floats:
        return ("float", tree)
    return tree


def assert_stored_as_json(text: str, tree: object) -> object:
    """``text`` is ``tree``'s JSON value, every float stored as a float (2.0 is not read back as
    the int 2); returns the parsed value."""
    got = json.loads(text)
    assert got == json_value(tree)
    assert json.loads(text, parse_float=lambda s: ("float", float(s))) == json_value(tree, tag_floats=True)
    return got
