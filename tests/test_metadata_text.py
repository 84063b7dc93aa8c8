"""Metadata is converted once: Python's JSON text, checked by the core and stored as it is.

Before, the text was parsed into a serde value and written again, which turned integers
beyond 64 bits into floats and silently kept only the last of two members of one name.
"""

import os

import pytest

import bpz
from bpz import _bpz
from bpz.errors import InvalidArgumentError


def test_metadata_is_stored_as_its_json_text(tmp):
    path = os.path.join(tmp, "m.bpz")
    metadata = {"big": 2**70, "small": -(2**65), "lr": 1e-05, "ü": [1.5, None, True], "": {}}
    bpz.save_pytree(path, {}, verbose=False, metadata=metadata)
    assert _bpz.Archive(path).metadata_json() == '{"big":1180591620717411303424,"small":-36893488147419103232,' \
        '"lr":1e-05,"ü":[1.5,null,true],"":{}}'
    with bpz.open(path) as archive:
        assert archive.metadata == metadata
        assert type(archive.metadata["big"]) is int


def test_metadata_with_two_members_of_one_name_is_refused(tmp):
    # json.dumps writes the key 1 as "1": two members "1", of which a parser keeps one.
    path = os.path.join(tmp, "m.bpz")
    bpz.save_pytree(path, {"a": 1}, verbose=False, metadata={"keep": 1})
    before = open(path, "rb").read()
    with pytest.raises(InvalidArgumentError, match='metadata is not valid JSON: an object has two members named "1"'):
        bpz.save_pytree(path, {"a": 2}, verbose=False, metadata={1: "a", "1": "b"})
    assert open(path, "rb").read() == before
    assert os.listdir(tmp) == ["m.bpz"]


def test_the_binding_checks_metadata_text(tmp):
    w = _bpz.Writer(os.path.join(tmp, "m.bpz"))
    with pytest.raises(InvalidArgumentError, match="metadata is not valid JSON"):
        w.set_metadata_json('{"a": NaN}')
    with pytest.raises(ValueError, match="metadata"):
        w.set_metadata_json("[" * 200 + "]" * 200)
    w.set_metadata_json('{"ok": [1, 2]}')
    w.set_tree(None)
    w.finish()
    assert _bpz.Archive(os.path.join(tmp, "m.bpz")).metadata_json() == '{"ok": [1, 2]}'
