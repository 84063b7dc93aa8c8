"""Every public name of ``bpz`` and every public method or property of its classes has a docstring,
so ``help(bpz.open)`` and ``help(bpz.Archive)`` explain themselves."""

from __future__ import annotations

import inspect

import bpz


def _undocumented() -> list[str]:
    missing = []
    for name in bpz.__all__:
        obj = getattr(bpz, name)
        if (callable(obj) or inspect.ismodule(obj)) and not inspect.getdoc(obj):
            missing.append(name)
        if not inspect.isclass(obj):
            continue
        for attr, value in vars(obj).items():
            if attr.startswith("_"):
                continue
            if isinstance(value, (staticmethod, classmethod)):
                value = value.__func__
            if (callable(value) or isinstance(value, property)) and not (value.__doc__ or "").strip():
                missing.append(f"{name}.{attr}")
    return missing


def test_every_public_callable_has_a_docstring() -> None:
    assert _undocumented() == []


def test_archive_methods_named_in_the_issue_are_documented() -> None:
    for method in ("get_slice", "info", "infos", "keys", "read", "load", "verify", "tree"):
        assert inspect.getdoc(getattr(bpz.Archive, method)), method
    assert "index" in inspect.getdoc(bpz.open)


def test_cli_and_jax_use_no_private_attribute_of_another_module() -> None:
    """``bpz.cli`` and ``bpz.jax`` go through the public ``Archive`` API (``structure``,
    ``verify_padding``), so the archive's internals can change without breaking them."""
    import ast
    import pathlib

    package = pathlib.Path(bpz.__file__).parent
    reaches = []
    for module in ("cli.py", "jax.py"):
        for node in ast.walk(ast.parse((package / module).read_text())):
            if (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
                    and not (isinstance(node.value, ast.Name) and node.value.id == "self")):
                reaches.append(f"{module}:{node.lineno} .{node.attr}")
    assert reaches == []
