"""BrainPy compatibility: state dicts, hooks, legacy ``save_states`` files, a drop-in switch.

``import bpz.brainpy`` never imports BrainPy; it is imported only when a BrainPy object is
passed (it is then already loaded) or :func:`install` is called.

Modules: :mod:`.nodes` (the models: BrainPy objects, :class:`StateNode`, hook objects),
:mod:`.state_dicts`, :mod:`.states_files` (legacy ``save_states`` files), and the drop-in switch
:mod:`.dropin` with what it needs (:mod:`.bp_format`, :mod:`.mismatch`).

State dicts (BrainPy 2.6–2.9 semantics)
---------------------------------------
:func:`state_dict` returns ``{node.name: node.__save_state__(**kwargs)}`` for every node of
``obj.nodes()``; the default hook gives ``{"<node>.<attr>": value}`` for the node's own
Variables. :func:`load_state_dict` reads that two-level dict (``compatible='v2'``) or a flat
``vars()``-keyed one (``compatible='v1'``), calls custom ``__load_state__`` hooks, warns
``Unexpected keys in state_dict: [...]`` then ``Missing keys in state_dict: [...]`` (both
``UserWarning``) and returns ``StateLoadResult(missing_keys, unexpected_keys)``.

Legacy files (BrainPy 2.1.12–2.4.5 semantics)
---------------------------------------------
:func:`save_states` / :func:`load_states` write and read ``.h5 .hdf5 .npz .pkl .pickle .mat``
exactly as BrainPy laid them out (flat ``"<node>.<attr>"`` keys, a Variable shared by
several nodes stored once with ``duplicate_keys`` / ``duplicate_targets``), and ``.bpz``:
the same flat keys as tensors, the alias lists in the archive metadata under
:data:`STATES_METADATA_KEY`.

Plain Python, without BrainPy
-----------------------------
Any object with ``__save_state__(**kw) -> dict`` and ``__load_state__(dict, **kw) ->
(missing, unexpected) | None`` takes part; its node name is ``obj.name`` (else its class
name) and its nodes are ``obj.nodes()`` (a ``{name: node}`` mapping, itself first) when it
has that method. The :class:`StateNode` mixin supplies all of it: state = the public numpy
array attributes (or the attributes named in ``__state_attrs__``), children = attributes
holding other nodes (also in lists, tuples and dicts). ``load_states`` also fills a plain
``dict`` of arrays.

Deliberate differences from BrainPy
-----------------------------------
* ``missing_keys`` / ``unexpected_keys`` are sorted (BrainPy: set order, random per run;
  2.3–2.5 even swapped the two lists).
* No doubled prefixes: a hook's key is prefixed with ``"<node>."`` only if it lacks it
  (``Dense1.b``, not ``Dense1.Dense1.b``).
* v2: a top-level entry that matches no node is reported as unexpected (BrainPy ignored it),
  unless it is an empty dict (a stateless node such as an integrator, whose counter-numbered
  name changes with the build order).
* Atomic: shape and dtype of every key are checked before any variable is assigned; a
  failed load changes nothing and raises :class:`StateMismatchError` (a ``ValueError``)
  naming every mismatching key with expected and given shape and dtype (BrainPy raised
  ``MathError`` on the first and kept what it had assigned). The rule is BrainPy's setter
  rule: equal shapes (except along a Variable's ``batch_axis``), equal dtypes after jax's
  canonicalisation (so float64 into float32 still passes with x64 off). A non-dict node
  entry is reported the same way (BrainPy: ``AttributeError``). Custom hooks can only be
  called: everything else is checked first, and if a hook raises, every Variable of the
  model gets its old value back.
* ``load_states`` checks every stored key, alias and value before assigning (BrainPy
  assigned key by key); it reads ``.pickle`` (through a restricted unpickler that never runs
  code), restores ``.mat`` bool and 0-d variables, and reports missing variables both on the
  ``bpz.brainpy`` logger and as a ``UserWarning`` (BrainPy: only logged).
  ``check_missing=True`` makes missing variables an error instead. The alias-mismatch
  ``ValueError`` names both keys (BrainPy printed the model object instead of the second key).
* Unknown ``save_states`` settings raise ``TypeError`` (BrainPy ignored them); the accepted
  suffixes include ``.pickle`` on load and ``.bpz``.
* With :func:`install`, ``brainpy.checkpoints.save_pytree`` and ``braintools.file.msgpack_save``
  write bpz archives (under the exact name given; ``.bp``-named ones too, with a one-time
  notice, unless ``install(bp_format="brainpy")``) and the loads read both those and msgpack
  files; without a target, the saved structure comes back (tuples, int keys, Quantities, typed
  PRNG keys) with writable NumPy arrays. Errors are also BrainPy's classes (braintools'
  ``InvalidCheckpointPath`` / ``AlreadyExistsError``, ``brainpy.errors``' on 2.3–2.6). See the
  README, "For BrainPy users", for the full list.
"""

from __future__ import annotations

from .bp_format import MAX_BP_DEPTH
from .dropin import BRAINPY_SUFFIXES, install, installed, is_installed, uninstall
from .mismatch import MISMATCH_MODES
from .nodes import StateMismatchError, StateNode, UnknownFormatError, logger
from .state_dicts import StateLoadResult, load_state_dict, state_dict
from .states_files import (
    STATES_METADATA_KEY,
    STATES_SUFFIXES,
    load_pickle,
    load_states,
    read_states,
    save_states,
)

__all__ = [
    "StateLoadResult",
    "StateNode",
    "StateMismatchError",
    "UnknownFormatError",
    "state_dict",
    "load_state_dict",
    "save_states",
    "load_states",
    "read_states",
    "load_pickle",
    "install",
    "uninstall",
    "is_installed",
    "installed",
    "STATES_SUFFIXES",
    "STATES_METADATA_KEY",
    "BRAINPY_SUFFIXES",
    "MISMATCH_MODES",
    "MAX_BP_DEPTH",
    "logger",
]
