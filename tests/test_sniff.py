"""One format sniffer (``bpz.formats.sniff``): loading, the checkpoint listing and ``bpz convert``
recognise a file by the same rule, so they cannot disagree about what a file is."""

from __future__ import annotations

import os

import numpy as np
import pytest

import bpz
from bpz import formats
from bpz._legacy import write_states
from bpz.checkpoints import is_checkpoint_file
from bpz.errors import NotAnArchiveError
from bpz.read import is_bpz_file

TREE = {"W": np.arange(6, dtype=np.float32).reshape(2, 3)}


@pytest.fixture
def files(tmp_path):
    # Suffixes that lie about the content: the content decides.
    paths = {
        "bpz": tmp_path / "a.npz",
        "bp": tmp_path / "b.safetensors",
        "npz": tmp_path / "c.bp",
        "safetensors": tmp_path / "d.bpz",
    }
    bpz.save_pytree(paths["bpz"], TREE, verbose=False)
    formats.write_bp(str(paths["bp"]), TREE)
    formats.write_npz(str(paths["npz"]), TREE)
    formats.write_safetensors(str(paths["safetensors"]), TREE)
    # BrainPy's other save_states formats, written under their own names, then renamed.
    for fmt, disguise in (("h5", "f.npz"), ("mat", "g.bpz"), ("pkl", "h.h5")):
        written = write_states(tmp_path / f"states.{fmt}", TREE)
        paths[fmt] = tmp_path / disguise
        os.replace(written, paths[fmt])
    (tmp_path / "e.bin").write_bytes(b"not a tensor file at all")
    paths[None] = tmp_path / "e.bin"
    return paths


def test_sniff_names_each_format_by_content(files):
    for fmt, path in files.items():
        assert formats.sniff(path) == fmt
        assert formats.sniff(path.read_bytes()[: formats.SNIFF_BYTES]) == fmt


def test_every_caller_agrees_with_the_sniffer(files):
    for fmt, path in files.items():
        assert formats.detect_format(str(path)) == (fmt or "unknown")
        assert is_bpz_file(path) == (fmt == "bpz")
        assert is_checkpoint_file(str(path)) == (fmt in ("bpz", "bp"))
        if fmt in ("bpz", "bp"):
            np.testing.assert_array_equal(bpz.load_pytree(path)["W"], TREE["W"])
        else:
            with pytest.raises(NotAnArchiveError, match=str(path)):
                bpz.load_pytree(path)


def test_sniff_of_a_missing_file_raises_oserror(tmp_path):
    with pytest.raises(FileNotFoundError):
        formats.sniff(tmp_path / "missing")
