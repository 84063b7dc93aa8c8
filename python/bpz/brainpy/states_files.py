"""Legacy ``save_states`` / ``load_states`` files (BrainPy 2.1.12–2.4.5): ``.h5 .hdf5 .npz .pkl
.pickle .mat`` through :mod:`bpz._legacy.states_files`, and ``.bpz`` archives holding the same
flat keys. Everything read is checked against the model before anything is assigned."""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..errors import CheckpointNotFoundError, FormatError
from .nodes import (
    StateMismatchError,
    UnknownFormatError,
    _is_brainpy,
    _is_reference,
    _mismatch_error,
    _node_name,
    _Slot,
    _tree_slots,
    _value_of,
    logger,
)

#: Suffixes of ``save_states`` files (BrainPy's five, ``.pickle`` also on load, and ``.bpz``).
STATES_SUFFIXES = (".h5", ".hdf5", ".npz", ".pkl", ".pickle", ".mat", ".bpz")
#: Metadata key of a ``.bpz`` states file: ``{"duplicate_keys": [...], "duplicate_targets": [...]}``.
STATES_METADATA_KEY = "bpz.brainpy.save_states"

_NOT_FOUND = '"{key}" is stored in {filename}. But we does not find it is defined as variable in {target}.'
_ID_MISMATCH = "{key1} and {key2} is the same data in {filename}. But we found they are different in {target}."


# ------------------------------------------------------------------ legacy save_states / load_states


def _writer_format(filename: str) -> str:
    """What a new states file becomes: its suffix decides, as in BrainPy."""
    suffix = os.path.splitext(filename)[1].lower()
    if suffix not in STATES_SUFFIXES:
        raise UnknownFormatError(f"Unknown file format: {filename}. We only supports {list(STATES_SUFFIXES)}")
    return "bpz" if suffix == ".bpz" else "legacy"


def _content_format(filename: str) -> str:
    """What an existing states file holds, by its content (``bpz.formats.sniff``), whatever its name."""
    from .._legacy.states_files import content_format
    from ..formats import sniff

    if sniff(filename) == "bpz":
        return "bpz"
    if content_format(filename) is not None:
        return "legacy"
    raise UnknownFormatError(f"Unknown file format: {filename}: its content is none of the save_states "
                             "formats (bpz, HDF5, npz, pickle, MATLAB 5), whatever its name says")


def save_states(obj: Any, filename: str | os.PathLike[str], variables: Mapping[str, Any] | None = None,
                **setting: Any) -> None:
    """Saves the model's variables as BrainPy 2.1.12–2.4.5's ``obj.save_states`` did.

    ``variables`` defaults to ``obj.vars(method='absolute', level=-1)`` (flat
    ``"<node>.<attr>"`` keys). A value that appears under several keys (the same Variable,
    by identity) is stored once, under its first key; the later keys are recorded as
    aliases. The suffix picks the format: ``.h5``/``.hdf5``, ``.npz`` (``compressed=True``
    for ``savez_compressed``), ``.pkl``/``.pickle``, ``.mat``, or ``.bpz`` (``compressed=True``
    compresses every tensor; ``compression``/``level``/``chunk_size`` as in
    :func:`bpz.save_pytree`). The file appears atomically.
    """
    filename = os.fspath(filename)
    fmt = _writer_format(filename)
    if variables is None:
        variables = _tree_slots(obj)  # obj.vars(method='absolute', level=-1)
    if not isinstance(variables, Mapping):
        raise ValueError(f'"variables" must be a dict, while we got {type(variables)}')
    flat: dict[str, np.ndarray] = {}
    aliases: dict[str, str] = {}
    first: dict[int, str] = {}
    for key, value in variables.items():
        ident: int | None
        if isinstance(value, _Slot):
            ident, value = value.ident, value.get()
        else:
            ident = id(value) if _is_reference(value) else None
        stored = key if ident is None else first.setdefault(ident, key)
        if stored == key:
            flat[key] = np.asarray(_value_of(value))
        else:
            aliases[key] = stored
    if fmt == "legacy":
        from .._legacy import states_files

        states_files.write_states(filename, flat, aliases, **setting)
        return
    from ..write import save_pytree

    options = dict(setting)
    if options.pop("compressed", False):
        options.setdefault("compression", "zstd")
    meta = {STATES_METADATA_KEY: {"duplicate_keys": list(aliases), "duplicate_targets": list(aliases.values())}}
    save_pytree(filename, flat, overwrite=True, verbose=False, metadata=meta, **options)


def _read_bpz_states(filename: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    from ..read import open as open_archive

    with open_archive(filename) as archive:
        tree, meta = archive.load(), archive.metadata
    if not isinstance(tree, Mapping) or not all(
        isinstance(k, str) and isinstance(v, (np.ndarray, np.generic)) for k, v in tree.items()
    ):
        raise FormatError(f"{filename}: not a states archive (a flat dict of arrays keyed '<node>.<attr>')")
    flat = {k: np.asarray(v) for k, v in tree.items()}
    info = meta.get(STATES_METADATA_KEY, {}) if isinstance(meta, Mapping) else {}
    keys, targets = info.get("duplicate_keys", []), info.get("duplicate_targets", [])
    if not (isinstance(keys, list) and isinstance(targets, list) and len(keys) == len(targets)
            and all(isinstance(k, str) for k in keys + targets)):
        raise FormatError(f"{filename}: malformed {STATES_METADATA_KEY!r} metadata")
    aliases = dict(zip(keys, targets))
    for alias, target in aliases.items():
        if target not in flat or alias in flat:
            raise FormatError(f"{filename}: alias {alias!r} -> {target!r} does not name a stored variable")
    return flat, aliases


_LEGACY_LIMITS_DOC = """\
    ``max_ratio`` / ``max_bytes`` raise (or lower) the expansion budget of a legacy file for this
    call: reading it may build at most ``min(max_bytes, max(256 MiB, max_ratio x its size))``
    bytes, else :class:`~bpz.errors.LimitExceededError` (a decompression bomb, or a file that
    repeats its data). Default: :func:`bpz.set_legacy_limits`, then the environment variables
    ``BPZ_LEGACY_MAX_RATIO`` / ``BPZ_LEGACY_MAX_BYTES``, then ratio 1100 (``.npz``, ``.h5``) or
    64 (the others) and the machine's memory. A ``.bpz`` file has its own limits."""


def _read_any_states(filename: str, like: Mapping[str, Any] | None, max_ratio: float | None = None,
                     max_bytes: int | None = None) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    if not os.path.exists(filename):
        raise CheckpointNotFoundError(f"Cannot find the file path: {filename}")
    from .._legacy import _common, states_files

    _common.checked_limits(max_ratio, max_bytes)  # a bad value is an error for .bpz files too
    if _content_format(filename) == "bpz":
        return _read_bpz_states(filename)
    return states_files.read_states(filename, like=like, max_ratio=max_ratio, max_bytes=max_bytes)


def read_states(filename: str | os.PathLike[str], *, like: Mapping[str, Any] | None = None,
                max_ratio: float | None = None, max_bytes: int | None = None) -> dict[str, np.ndarray]:
    """Every variable of a ``save_states`` file (any suffix, incl. ``.bpz``) by its flat key.

    Aliases map to the very array of the key they alias. ``like`` (``{key: anything with
    .shape/.dtype}``) undoes ``.mat``'s losses (0-d values, float16).

    {limits}
    """
    from .._legacy import states_files

    flat, aliases = _read_any_states(os.fspath(filename), like, max_ratio, max_bytes)
    return states_files.expand_aliases(flat, aliases)


def load_pickle(filename: str | os.PathLike[str], *, max_ratio: float | None = None,
                max_bytes: int | None = None) -> Any:
    """Loads a pickled state dict (e.g. ``pickle.dump(net.state_dict())``) without running code.

    Only plain containers and numpy arrays of bool/numeric/text dtypes are accepted.

    {limits}
    """
    from .._legacy import safe_pickle

    return safe_pickle.load_pickle(filename, max_ratio=max_ratio, max_bytes=max_bytes)


def load_states(obj: Any, filename: str | os.PathLike[str], verbose: bool = False, check_missing: bool = False,
                *, max_ratio: float | None = None, max_bytes: int | None = None) -> None:
    """Loads a ``save_states`` file into ``obj`` (a BrainPy object, a :class:`StateNode`, a dict).

    As BrainPy 2.1.12–2.4.5: a stored key the model lacks raises ``KeyError``; an alias must
    be the same variable as its target in the model (``ValueError``); ``verbose`` prints
    ``Loading {key} ...``; model variables absent from the file are reported (logger
    ``bpz.brainpy`` at WARNING, and a ``UserWarning``), or raised as
    :class:`StateMismatchError` with ``check_missing=True``. Unlike BrainPy, everything is
    checked before anything is assigned.

    {limits}
    """
    filename = os.fspath(filename)
    if not os.path.exists(filename):
        raise CheckpointNotFoundError(f"Cannot find the file path: {filename}")
    slots = _tree_slots(obj)
    flat, aliases = _read_any_states(filename, like=slots, max_ratio=max_ratio, max_bytes=max_bytes)
    target_name = _node_name(obj) if not isinstance(obj, Mapping) else "the target dict"
    unknown = [key for key in list(flat) + list(aliases) if key not in slots]
    if unknown:
        more = f" ({len(unknown) - 1} more: {unknown[1:]})" if len(unknown) > 1 else ""
        raise KeyError(_NOT_FOUND.format(key=unknown[0], filename=filename, target=target_name) + more)
    for alias, key in aliases.items():
        if slots[alias].ident != slots[key].ident:
            raise ValueError(_ID_MISMATCH.format(key1=alias, key2=key, filename=filename, target=target_name))
    problems = [p for key, value in flat.items() for p in [slots[key].mismatch(value)] if p]
    if problems:
        raise _mismatch_error(problems, obj)
    missing = [key for key in slots if key not in flat and key not in aliases]
    message = f"There are variable states missed in {filename}. The missed variables are: {missing}."
    if missing and check_missing:
        raise StateMismatchError(message)
    undo = [(slots[key], slots[key].snapshot()) for key in flat] if _is_brainpy(obj) else []
    try:
        for key, value in flat.items():
            if verbose:
                print(f"Loading {key} ...")
            slots[key].assign(value)
    except BaseException:  # not expected after the checks; keeps the promise regardless
        for slot, old in reversed(undo):
            slot.restore(old)
        raise
    if missing:
        logger.warning(message)
        warnings.warn(message, UserWarning, stacklevel=2)


for _f in (read_states, load_pickle, load_states):
    if _f.__doc__:  # None under python -OO
        _f.__doc__ = _f.__doc__.replace("{limits}", _LEGACY_LIMITS_DOC.strip())
del _f
