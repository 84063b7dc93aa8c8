"""The bpz command line: ls, info, cat, verify, convert (incl. migrating .bp)."""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest

import bpz
from bpz.cli import main

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
VECTORS = pathlib.Path(__file__).parents[1] / "spec" / "vectors"


@pytest.fixture
def archive(tmp):
    path = os.path.join(tmp, "m.bpz")
    tree = {"net": {"W": np.arange(12, dtype=np.float32).reshape(3, 4)}, "spike": np.zeros(5000, bool), "epoch": 3}
    bpz.save_pytree(path, tree, verbose=False, metadata={"note": "hi"})
    return path, tree


def run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_ls_and_info(archive, capsys):
    path, _ = archive
    code, out, _ = run(capsys, "ls", path)
    assert code == 0 and "net/W" in out and "F32" in out and "3x4" in out and "bitpack" in out
    code, out, _ = run(capsys, "ls", path, "--json")
    rows = json.loads(out)
    assert {r["name"] for r in rows} == {"net/W", "spike"} and rows[0]["shape"] == [3, 4]
    code, out, _ = run(capsys, "info", path)
    assert code == 0 and "bpz 1.1" in out and "tensors:     2" in out and '"epoch": int 3' in out and '"note": "hi"' in out
    info = json.loads(run(capsys, "info", path, "--json")[1])
    assert info["tensors"] == 2 and info["metadata"] == {"note": "hi"} and info["compression_ratio"] > 1


def test_cat(archive, capsys):
    path, tree = archive
    code, out, _ = run(capsys, "cat", path, "net/W")
    assert code == 0 and "11." in out
    data = json.loads(run(capsys, "cat", path, "net/W", "--json")[1])
    assert data["data"] == tree["net"]["W"].tolist()
    code, _, err = run(capsys, "cat", path, "nope")
    assert code == 2 and "nope" in err


def test_verify_exit_status(archive, capsys):
    path, _ = archive
    assert run(capsys, "verify", path)[0] == 0
    code, _, err = run(capsys, "verify", path, str(VECTORS / "invalid" / "compressed_data_bitflip.bpz"))
    assert code == 1 and "checksum mismatch" in err


def test_verify_checks_checksums_and_decodes_only_with_decode(capsys):
    """decompression_bomb.bpz: every stored byte matches its checksum, but its one zstd frame
    declares 1 MiB for a 64-byte chunk. The rule: plain ``verify`` checks that every stored
    byte is what was written (so it passes: nothing was damaged); ``verify --decode`` also
    decodes, so it finds a file that was written wrong."""
    bomb = str(VECTORS / "invalid" / "decompression_bomb.bpz")
    code, out, err = run(capsys, "verify", bomb)
    assert code == 0 and "OK" in out and "50 B checked in" in out and err == ""
    results = json.loads(run(capsys, "verify", bomb, "--json")[1])
    assert results[0]["ok"] is True and results[0]["decoded"] is False
    code, out, err = run(capsys, "verify", "--decode", bomb)
    assert code == 1 and out == "" and err.count("\n") == 1
    assert err.startswith(f"bpz verify: {bomb}: corrupt data") and "declares 1048576 bytes, expected 64" in err
    results = json.loads(run(capsys, "verify", "--decode", bomb, "--json")[1])
    assert results[0]["ok"] is False and results[0]["kind"] == "corrupt_data"


def test_verify_decode_has_one_budget_per_file(tmp, capsys):
    path = os.path.join(tmp, "z.bpz")
    bpz.save_pytree(path, {f"t{i}": np.zeros(1 << 16, np.uint8) for i in range(4)}, verbose=False,
                    compression="zstd")
    code, out, _ = run(capsys, "verify", "--decode", path)
    assert code == 0 and "checked and decoded" in out
    # Each tensor (64 KiB) is within 128 KiB, the four together are not.
    code, out, err = run(capsys, "verify", "--decode", "--max-decoded-bytes", str(128 << 10), path)
    assert code == 1 and out == "" and err.count("\n") == 1 and "--max-decoded-bytes" in err and str(4 << 16) in err
    assert run(capsys, "verify", "--decode", "--max-decoded-bytes", "256K", path)[0] == 0
    code, _, err = run(capsys, "verify", "--decode", "--max-decoded-bytes", "0", path)
    assert code == 2 and "--max-decoded-bytes" in err
    code, out, _ = run(capsys, "verify", "--max-decoded-bytes", "1", path)  # no --decode: nothing decoded
    assert code == 0 and "checked in" in out and "decoded" not in out


@pytest.mark.parametrize("fmt", ["safetensors", "npz", "bp"])
def test_convert_round_trip_through_other_formats(archive, capsys, tmp, fmt):
    path, tree = archive
    other = os.path.join(tmp, f"m.{fmt}")
    back = os.path.join(tmp, "back.bpz")
    lossy = [] if fmt == "safetensors" else ["--lossy"]  # npz: "epoch" and the metadata; bp: the metadata
    assert run(capsys, "convert", path, other, *lossy)[0] == 0
    assert run(capsys, "convert", other, back)[0] == 0
    loaded = bpz.load_pytree(back)
    w = loaded["net/W"] if fmt == "npz" else loaded["net"]["W"]
    np.testing.assert_array_equal(w, tree["net"]["W"])
    assert ("epoch" not in loaded) if fmt == "npz" else loaded["epoch"] == 3
    code, _, err = run(capsys, "convert", path, other, *lossy)
    assert code == 2 and "--force" in err


def test_convert_migrates_a_directory_of_bp_files(tmp, capsys):
    src = os.path.join(tmp, "old")
    shutil.copytree(FIXTURES / "brainpy-2.9.0", src)
    dst = os.path.join(tmp, "new")
    code, out, _ = run(capsys, "convert", src, dst)
    assert code == 0
    bp_files = sorted(p for p in os.listdir(src) if p.endswith(".bp"))
    assert sorted(os.listdir(dst)) == [p[:-3] + ".bpz" for p in bp_files]
    for name in bp_files:
        old = bpz.load_pytree(os.path.join(src, name))
        new = bpz.load_pytree(os.path.join(dst, name[:-3] + ".bpz"))
        assert _flat(old) == _flat(new), name


def _flat(tree, prefix=()):
    if isinstance(tree, dict):
        out = {}
        for k, v in tree.items():
            out.update(_flat(v, (*prefix, k)))
        return out
    if isinstance(tree, (np.ndarray, np.generic)):
        return {prefix: (tree.dtype.str, tree.shape, np.asarray(tree).tobytes())}
    return {prefix: tree}


def test_console_script_runs(archive):
    path, _ = archive
    out = subprocess.run([sys.executable, "-m", "bpz", "ls", path], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "net/W" in out.stdout
