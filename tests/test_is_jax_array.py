"""One ``is_jax_array`` (in ``bpz.pytree``): saving, loading and the BrainPy support ask the same
question the same way."""

from __future__ import annotations

import ast
import pathlib

import numpy as np
import pytest

import bpz.brainpy
import bpz.pytree

PACKAGE = pathlib.Path(bpz.pytree.__file__).parent


def test_one_definition_in_the_package():
    defined = [
        f"{path.relative_to(PACKAGE)}:{node.name}"
        for path in PACKAGE.rglob("*.py")
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.FunctionDef) and node.name.lstrip("_") == "is_jax_array"
    ]
    assert defined == ["pytree.py:is_jax_array"]
    assert bpz.brainpy.nodes.is_jax_array is bpz.pytree.is_jax_array


def test_is_jax_array():
    assert not bpz.pytree.is_jax_array(np.ones(2))
    assert not bpz.pytree.is_jax_array([1.0])
    jnp = pytest.importorskip("jax.numpy")
    assert bpz.pytree.is_jax_array(jnp.ones(2))
