"""Readers and writers for BrainPy's legacy checkpoint files, in pure Python.

Why a subpackage: these formats (``.bp`` msgpack from ``save_pytree``; ``.h5``/``.npz``/
``.pkl``/``.mat`` from ``save_states``; pickled state dicts) predate bpz, carry no magic or
checksum and come from untrusted sources, so they get defensive readers kept apart from the
native archive code. Optional dependencies (msgpack, h5py, scipy, ml_dtypes) are imported only
when a file needs them.
"""

from .bp_msgpack import is_bp_file, read_bp, write_bp
from .safe_pickle import load_pickle
from .states_files import expand_aliases, read_states, write_states

__all__ = ["read_bp", "write_bp", "is_bp_file", "load_pickle", "read_states", "write_states",
           "expand_aliases"]
