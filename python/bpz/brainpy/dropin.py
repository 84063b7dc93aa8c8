"""The drop-in switch: :func:`install` makes ``brainpy.checkpoints`` and ``braintools.file`` save
and load through bpz, raising the exception classes BrainPy code catches.

(Not named ``install.py``: the package's ``install`` is this module's function.)"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
import threading
import warnings
from collections.abc import Iterator
from typing import Any

from ..errors import BpzError, CheckpointNotFoundError, FormatError, InvalidCheckpointPath
from .bp_format import _save_brainpy_format
from .mismatch import _check_load_options, _check_max_size, _load
from .nodes import _dual_class

#: File names BrainPy's and braintools' docs give their msgpack checkpoints. While installed they
#: hold bpz archives, which BrainPy without bpz cannot read, unless ``install(bp_format="brainpy")``.
BRAINPY_SUFFIXES = (".bp", ".msgpack", ".msg")
_BP_FORMATS = ("bpz", "brainpy")

_ORIGINALS: dict[tuple[str, str], Any] = {}  # (module name, attribute) -> what install() replaced
_MISSING = object()
_settings: dict[str, Any] = {"bp_format": None, "errors": {}}
_notice_lock = threading.Lock()
_notice_given = False

_BP_NAME_NOTICE = (
    "{name} is written as a bpz archive (bpz.brainpy.install() is in effect), which BrainPy without bpz "
    "cannot read. To keep BrainPy's own format for {suffixes} names: bpz.brainpy.install(bp_format='brainpy'); "
    "to convert this file: bpz convert --to bp {name} <new name>; install(bp_format='bpz') silences this notice."
)


def _bp_named(filename: str) -> bool:
    return os.path.splitext(filename)[1].lower() in BRAINPY_SUFFIXES


def _notice_bp_name(filename: str) -> None:
    """Warns once per process that a BrainPy-named file became a bpz archive."""
    global _notice_given
    with _notice_lock:
        if _notice_given:
            return
        _notice_given = True
    warnings.warn(_BP_NAME_NOTICE.format(name=filename, suffixes="/".join(BRAINPY_SUFFIXES)), UserWarning, stacklevel=4)




def _user_error_classes() -> dict[str, tuple[type, ...]]:
    """The classes BrainPy's checkpoint functions raise: braintools.file's (BrainPy 2.7+, brainstate)
    and brainpy.errors' (2.3–2.6), whichever are installed."""
    found: dict[str, tuple[type, ...]] = {}
    for module in ("braintools.file", "brainpy.errors"):
        try:
            mod = importlib.import_module(module)
        except Exception:  # noqa: BLE001 - not installed, or broken: nothing to be compatible with
            continue
        for name in ("InvalidCheckpointPath", "AlreadyExistsError"):
            cls = getattr(mod, name, None)
            if isinstance(cls, type) and issubclass(cls, Exception) and cls not in found.get(name, ()):
                found[name] = (*found.get(name, ()), cls)
    return found


def _as_user_error(error: BaseException, loading: bool) -> BaseException | None:
    """``error`` re-made as an instance of its bpz class and of BrainPy's classes for that case, or None.

    Saving over an existing file with ``overwrite=False`` -> ``InvalidCheckpointPath``; the file
    appearing between that check and the rename -> ``AlreadyExistsError``; a file that is not a
    valid checkpoint on load -> ``InvalidCheckpointPath`` (braintools' "Corrupt or invalid
    checkpoint data").
    """
    classes = _settings["errors"]
    if isinstance(error, InvalidCheckpointPath):
        # write_archive raises it from the writer's FileExistsError: the race, not the first check
        race = isinstance(error.__context__, FileExistsError)
        users = classes.get("AlreadyExistsError" if race else "InvalidCheckpointPath", ())
    elif loading and isinstance(error, FormatError):
        users = classes.get("InvalidCheckpointPath", ())
    else:
        return None
    users = tuple(c for c in users if not isinstance(error, c))
    if not users:
        return None
    try:
        cls = _dual_class(type(error), *users)
    except TypeError:  # no consistent MRO or layout (an exotic user class): keep bpz's error
        return None
    new = cls(*error.args)
    new.__dict__.update(getattr(error, "__dict__", {}))
    return new.with_traceback(error.__traceback__)


@contextlib.contextmanager
def _user_errors(loading: bool) -> Iterator[None]:
    try:
        yield
    except BpzError as error:
        new = _as_user_error(error, loading)
        if new is None:
            raise
        raise new from error.__cause__



# --- the replacements


def _save(filename: Any, target: Any, overwrite: bool, async_manager: Any, verbose: bool) -> str:
    from ..write import fspath_str, save_pytree

    filename = fspath_str(filename)
    if _bp_named(filename):
        if _settings["bp_format"] == "brainpy":
            if verbose:
                print(f"Saving checkpoint into {filename}")
            with _user_errors(loading=False):
                _save_brainpy_format(filename, target, overwrite, async_manager)
            return filename
        if _settings["bp_format"] is None:
            _notice_bp_name(filename)
    with _user_errors(loading=False):
        return save_pytree(filename, target, overwrite=overwrite, async_manager=async_manager, verbose=verbose)


def _bp_save_pytree(
    filename: str | os.PathLike[str],
    target: Any,
    overwrite: bool = True,
    async_manager: Any = None,
    verbose: bool = True,
) -> str:
    """``brainpy.checkpoints.save_pytree``, writing a bpz archive (see :func:`bpz.save_pytree`)."""
    return _save(filename, target, overwrite, async_manager, verbose)


def _bp_load_pytree(filename: str | os.PathLike[str], target: Any = None, parallel: bool = True) -> Any:
    """``brainpy.checkpoints.load_pytree``, reading bpz archives and BrainPy ``.bp`` files
    (see :func:`bpz.load_pytree`)."""
    with _user_errors(loading=True):
        return _load(filename, target, parallel)


def _bt_msgpack_save(
    filename: str | os.PathLike[str],
    target: Any,
    overwrite: bool = True,
    async_manager: Any = None,
    verbose: bool = False,
) -> str:
    """``braintools.file.msgpack_save``, writing a bpz archive (see :func:`bpz.save_pytree`)."""
    return _save(filename, target, overwrite, async_manager, verbose)


def _bt_msgpack_load(
    filename: str | os.PathLike[str],
    target: Any = None,
    parallel: bool = True,
    mismatch: str = "error",
    max_size: int | None = None,
    verbose: bool = False,
) -> Any:
    """``braintools.file.msgpack_load``, reading bpz archives and msgpack checkpoints (see :func:`bpz.load_pytree`).

    ``mismatch='warn'|'ignore'``: a target dict key absent from the file, or a list item beyond
    its length, keeps the target's value; an array of another shape or a Quantity of another
    unit is taken from the file (with a ``UserWarning`` under 'warn'). ``max_size``: refuse a
    checkpoint larger than this many bytes (decoded) before decoding it.
    """
    from ..write import fspath_str

    _check_load_options(mismatch, max_size)
    filename = fspath_str(filename)
    if not os.path.exists(filename):
        raise CheckpointNotFoundError(f"Checkpoint not found: {filename}")
    if verbose:
        print(f"Loading checkpoint from {filename}")
    _check_max_size(filename, max_size)
    with _user_errors(loading=True):
        return _load(filename, target, parallel, mismatch)


for _f, _name in ((_bp_save_pytree, "save_pytree"), (_bp_load_pytree, "load_pytree"),
                  (_bt_msgpack_save, "msgpack_save"), (_bt_msgpack_load, "msgpack_load")):
    _f.__name__ = _f.__qualname__ = _name
del _f, _name

#: Module -> {attribute: replacement kind}. brainpy.checkpoints (2.3–2.9) forwards to
#: braintools.file at call time in 2.7+; braintools.file is what brainstate users call directly.
_PATCH_POINTS = {
    "brainpy.checkpoints": {"save_pytree": "bp_save", "load_pytree": "bp_load", "AsyncManager": "manager"},
    "braintools.file": {"msgpack_save": "bt_save", "msgpack_load": "bt_load", "AsyncManager": "manager"},
    "braintools.file._msg_checkpoint": {"msgpack_save": "bt_save", "msgpack_load": "bt_load",
                                        "AsyncManager": "manager"},
}


def _replacements() -> dict[str, Any]:
    from ..write import AsyncManager

    return {"bp_save": _bp_save_pytree, "bp_load": _bp_load_pytree, "bt_save": _bt_msgpack_save,
            "bt_load": _bt_msgpack_load, "manager": AsyncManager}


def install(bp_format: str | None = None) -> None:
    """Makes BrainPy's checkpoint functions use bpz: ``brainpy.checkpoints.save_pytree`` /
    ``load_pytree`` / ``AsyncManager`` and, when braintools is installed (BrainPy 2.7+),
    ``braintools.file.msgpack_save`` / ``msgpack_load`` / ``AsyncManager``.

    Saves then write bpz archives; loads read them and BrainPy's msgpack files alike. While
    installed, errors are also instances of the classes BrainPy code catches (braintools'
    ``InvalidCheckpointPath`` / ``AlreadyExistsError`` on 2.7+, ``brainpy.errors``' on 2.3–2.6).

    ``bp_format`` decides what a file named ``.bp`` / ``.msgpack`` / ``.msg`` (BrainPy's names)
    becomes: ``"bpz"`` a bpz archive (which BrainPy without bpz cannot read); ``"brainpy"``
    BrainPy's own msgpack format, for sharing with BrainPy users (written by bpz's atomic
    writer; it holds what BrainPy's format holds: arrays, numbers, strings, containers,
    Variables/States, Quantities, PRNG keys); ``None`` (default): a bpz archive, with a one-time
    ``UserWarning`` at the first such save. Other names are always bpz archives.

    Idempotent (a second call only changes ``bp_format``); :func:`uninstall` (or the
    :func:`installed` context manager) puts the originals back. Code that imported the
    functions by name before (``from brainpy.checkpoints import save_pytree``) keeps BrainPy's.
    """
    if bp_format is not None and bp_format not in _BP_FORMATS:
        raise ValueError(f"bp_format must be 'bpz', 'brainpy' or None, not {bp_format!r}")
    if not _ORIGINALS:
        modules = {}
        for name in _PATCH_POINTS:
            try:
                modules[name] = importlib.import_module(name)
            except ImportError:
                continue
        if not modules:
            raise ImportError("bpz.brainpy.install() needs BrainPy (brainpy.checkpoints) or braintools "
                              "(braintools.file); neither can be imported")
        replacements = _replacements()
        _settings["errors"] = _user_error_classes()
        for name, module in modules.items():
            for attr, kind in _PATCH_POINTS[name].items():
                _ORIGINALS[(name, attr)] = module.__dict__.get(attr, _MISSING)
                setattr(module, attr, replacements[kind])
    _settings["bp_format"] = bp_format


def uninstall() -> None:
    """Puts BrainPy's own functions back (a no-op when not installed)."""
    if not _ORIGINALS:
        return
    replacements = set(map(id, _replacements().values()))
    for (name, attr), original in list(_ORIGINALS.items()):
        module = sys.modules.get(name)
        if module is not None and id(module.__dict__.get(attr)) in replacements:
            if original is _MISSING:
                delattr(module, attr)
            else:
                setattr(module, attr, original)
    _ORIGINALS.clear()
    _settings["bp_format"] = None
    _settings["errors"] = {}


def is_installed() -> bool:
    """Whether :func:`install` is in effect."""
    return bool(_ORIGINALS)


@contextlib.contextmanager
def installed(bp_format: str | None = None) -> Iterator[None]:
    """``with bpz.brainpy.installed(): ...`` — bpz inside the block, the previous state after."""
    was, previous = is_installed(), _settings["bp_format"]
    install(bp_format)
    try:
        yield
    finally:
        if not was:
            uninstall()
        else:
            _settings["bp_format"] = previous
