"""Shared fixtures for the legacy-format tests: the BrainPy sample files and their manifests.

The samples were written by real BrainPy 2.9.0 and 2.3.8; ``manifest.json`` lists, per file,
every key path (a list: keys contain dots), the type, shape, dtype and sha256 of each value.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import json
import sys
import time
import tracemalloc
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest


def _allow_pure_python_bpz() -> None:
    """The legacy readers are pure Python: test them even before the native module is built.

    ``bpz/__init__.py`` imports the compiled ``bpz._bpz``; when only that is missing, register a
    bare ``bpz`` package so ``bpz._legacy`` and ``bpz.errors`` import without it.
    """
    try:
        import bpz  # noqa: F401
    except ModuleNotFoundError as exc:
        if exc.name != "bpz._bpz":
            raise
        locations = importlib.util.find_spec("bpz").submodule_search_locations
        for name in [m for m in sys.modules if m == "bpz" or m.startswith("bpz.")]:
            del sys.modules[name]
        package = importlib.util.module_from_spec(importlib.machinery.ModuleSpec("bpz", None, is_package=True))
        package.__path__ = list(locations)
        sys.modules["bpz"] = package


_allow_pure_python_bpz()

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
VERSIONS = ("brainpy-2.9.0", "brainpy-2.3.8")


def manifest(version: str) -> dict[str, Any]:
    return json.loads((FIXTURES / version / "manifest.json").read_text())


def sample_files(predicate: Any) -> list[Any]:
    """pytest params (version, file name, manifest entry) for the files matching ``predicate``."""
    return [pytest.param(v, name, meta, id=f"{v}/{name}")
            for v in VERSIONS for name, meta in manifest(v)["files"].items() if predicate(name, meta)]


def sha256(value: Any) -> str:
    return hashlib.sha256(np.ascontiguousarray(value).tobytes()).hexdigest()


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def at_path(tree: Any, path: list[str]) -> Any:
    for key in path:
        assert isinstance(tree, dict), f"{path}: {key!r} looked up in a {type(tree).__name__}"
        assert key in tree, f"{path}: key {key!r} missing (have {list(tree)[:10]})"
        tree = tree[key]
    return tree


def leaf_paths(tree: Any, prefix: tuple = ()) -> list[tuple]:
    """Paths of the leaves and of the empty dicts, the granularity the manifests use."""
    if isinstance(tree, dict) and tree:
        return [p for k, v in tree.items() for p in leaf_paths(v, prefix + (k,))]
    return [prefix]


def check_entry(value: Any, entry: dict[str, Any]) -> None:
    """Assert that a loaded value matches one manifest entry exactly."""
    kind, where = entry["type"], entry["path"]
    if kind == "empty_dict":
        assert value == {} and type(value) is dict, where
    elif kind == "numpy.ndarray":
        assert type(value) is np.ndarray, (where, type(value))
        assert list(value.shape) == entry["shape"], where
        assert entry["dtype"] in (value.dtype.name, value.dtype.str), (where, value.dtype)
        assert value.dtype.isnative, where
        assert value.flags.writeable, where
        assert sha256(value) == entry["sha256"], where
    elif kind.startswith("numpy."):  # numpy scalar; numpy 1 named np.bool_ "bool_"
        assert isinstance(value, np.generic) and not isinstance(value, np.ndarray), where
        assert f"numpy.{type(value).__name__}".rstrip("_") == kind.rstrip("_"), (where, type(value))
        assert value.dtype.name == entry["dtype"], where
        assert sha256(value) == entry["sha256"], where
    elif kind == "complex":
        assert type(value) is complex and [value.real, value.imag] == entry["value"], where
    elif kind == "bytes":
        assert type(value) is bytes and value.hex() == entry["value_hex"], where
    elif kind == "None":
        assert value is None, where
    else:
        assert type(value).__name__ == kind, (where, type(value))
        assert value == entry["value"], where


def check_tree(tree: Any, meta: dict[str, Any]) -> None:
    """Every manifest entry matches, and the tree has no key the manifest lacks, in file order."""
    for entry in meta["entries"]:
        check_entry(at_path(tree, entry["path"]), entry)
    assert leaf_paths(tree) == [tuple(e["path"]) for e in meta["entries"]]


@contextmanager
def bounded(seconds: float = 60.0, megabytes: float = 16.0) -> Iterator[None]:
    """Assert the block allocates little (numpy allocations are traced too) and does not hang.

    The time bound only catches hangs: it is far above the real cost, because a loaded
    2-core CI machine can be many times slower than a quiet one (speed lives in bench/).
    """
    tracemalloc.start()
    start = time.perf_counter()
    try:
        yield
    finally:  # also checked while the block's expected exception propagates
        elapsed = time.perf_counter() - start
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert elapsed < seconds, f"took {elapsed:.2f}s"
        assert peak < megabytes * 2**20, f"peak allocation {peak / 2**20:.1f} MiB"
