"""Metadata bpz saves always loads with the default limits: nested at most 127 levels (the
index's 128, less the level it sits in) and at most bpz.pytree.MAX_TREE_VALUES JSON values.
Over either, the save raises LimitExceededError naming the limit, before anything is written,
and an existing file is kept — never a RecursionError, and never a file that cannot be loaded."""

import os

import numpy as np
import pytest

import bpz
import bpz.pytree
from bpz.cli import main
from bpz.errors import LimitExceededError


def nested(depth, leaf=0, kind=list):
    for i in range(depth):
        leaf = [leaf] if kind is list else {f"k{i}": leaf}
    return leaf


@pytest.fixture
def old_file(tmp_path):
    path = str(tmp_path / "m.bpz")
    bpz.save_pytree(path, {"w": np.arange(3)}, verbose=False, metadata={"old": True})
    return path


@pytest.mark.parametrize("kind", [list, dict])
def test_metadata_at_the_depth_limit_saves_and_loads(tmp_path, kind):
    path = str(tmp_path / "deep.bpz")
    metadata = nested(127, kind=kind)
    bpz.save_pytree(path, {"w": np.ones(2)}, verbose=False, metadata=metadata)
    with bpz.open(path) as a:
        assert a.metadata == metadata


@pytest.mark.parametrize("depth", [128, 1_000, 100_000])
@pytest.mark.parametrize("kind", [list, dict])
def test_metadata_nested_too_deep_is_refused_naming_the_limit(old_file, depth, kind):
    with pytest.raises(LimitExceededError) as e:
        bpz.save_pytree(old_file, {"w": np.zeros(1)}, verbose=False, metadata=nested(depth, kind=kind))
    assert old_file in str(e.value) and "more than 127 levels" in str(e.value)
    with bpz.open(old_file) as a:  # the previous file is intact
        assert a.metadata == {"old": True}
    assert os.listdir(os.path.dirname(old_file)) == ["m.bpz"]


def test_deep_metadata_below_a_wide_top_level(old_file):
    metadata = {"a": list(range(1000)), "b": {"c": nested(200)}}
    with pytest.raises(LimitExceededError, match="127"):
        bpz.save_pytree(old_file, {"w": np.zeros(1)}, verbose=False, metadata=metadata)


def test_metadata_containing_itself_is_a_type_error(old_file):
    loop = []
    loop.append({"x": loop})
    with pytest.raises(TypeError, match="contains itself"):
        bpz.save_pytree(old_file, {"w": np.zeros(1)}, verbose=False, metadata=loop)
    shared = [1, 2]  # one object in two places is not a loop
    bpz.save_pytree(old_file, {"w": np.zeros(1)}, verbose=False, metadata={"a": shared, "b": [shared]})
    assert bpz.open(old_file).metadata == {"a": [1, 2], "b": [[1, 2]]}


def test_metadata_over_the_value_limit_is_refused_on_save(old_file, monkeypatch):
    monkeypatch.setattr(bpz.pytree, "MAX_TREE_VALUES", 1000)
    fits = list(range(999))  # the list and its 999 numbers: 1000 values
    bpz.save_pytree(old_file, {"w": np.zeros(1)}, verbose=False, metadata=fits)
    with bpz.open(old_file) as a:  # loads with the same limit
        assert a.metadata == fits
    with pytest.raises(LimitExceededError) as e:
        bpz.save_pytree(old_file, {"w": np.zeros(1)}, verbose=False, metadata=list(range(1000)))
    assert "1,001 JSON values, over the limit of 1,000" in str(e.value) and "MAX_TREE_VALUES" in str(e.value)
    with bpz.open(old_file) as a:
        assert a.metadata == fits
    # A string is one value, whatever it holds; member names are not values.
    strings = {f"[{i},": "[],{}" for i in range(999)}
    bpz.save_pytree(old_file, {"w": np.zeros(1)}, verbose=False, metadata=strings)
    assert bpz.open(old_file).metadata == strings
    with pytest.raises(LimitExceededError, match="1,001 JSON values"):
        bpz.save_pytree(old_file, {"w": np.zeros(1)}, verbose=False, metadata={**strings, "x": "y"})


def test_convert_refuses_metadata_the_load_would_refuse(tmp_path, capsys, monkeypatch):
    src, dst = str(tmp_path / "m.safetensors"), str(tmp_path / "m.bpz")
    from bpz import formats

    formats.write_safetensors(src, {"w": np.ones(2)}, {formats.METADATA_KEY: "[" * 500 + "]" * 500})
    code = main(["convert", src, dst])
    err = capsys.readouterr().err
    assert code == 1 and len(err.splitlines()) == 1 and "more than 127 levels" in err and not os.path.exists(dst)
