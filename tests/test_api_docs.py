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
