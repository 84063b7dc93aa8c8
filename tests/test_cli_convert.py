"""``bpz convert``: distinct inputs get distinct outputs (or nothing is written), nothing is lost
silently, symlinks out of SRC are not followed, and outputs appear atomically and durably."""

from __future__ import annotations

import collections
import os
import subprocess
import sys

import ml_dtypes
import numpy as np
import pytest

import bpz
from bpz._legacy import read_bp, write_bp
from bpz.cli import EXIT_DATA, EXIT_OK, EXIT_USAGE, main
from syscall_trace import check_synced_around_the_rename, needs_strace, syscalls


def run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def bp_file(path, value=1.0):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_bp(path, {"w": np.full(3, value, np.float32)})
    return path


def files_under(root):
    return sorted(os.path.relpath(os.path.join(r, f), root) for r, _, fs in os.walk(root) for f in fs)


# ------------------------------------------------------------ one output per input


def test_inputs_that_would_share_an_output_are_refused_before_anything_is_written(tmp, capsys):
    src, dst = os.path.join(tmp, "src"), os.path.join(tmp, "dst")
    bp_file(os.path.join(src, "a.bp"), 1.0)
    bp_file(os.path.join(src, "a.msgpack"), 2.0)
    bp_file(os.path.join(src, "b.bp"), 3.0)
    for force in ([], ["--force"]):
        code, _, err = run(capsys, "convert", src, dst, *force)
        assert code == EXIT_USAGE and len(err.splitlines()) == 1, err
        assert "a.bp" in err and "a.msgpack" in err and "nothing written" in err
        assert not os.path.exists(dst)


def test_names_differing_only_in_case_are_refused_too(tmp, capsys):
    src = os.path.join(tmp, "src")
    bp_file(os.path.join(src, "Model.bp"))
    bp_file(os.path.join(src, "model.bp"))
    code, _, err = run(capsys, "convert", src, os.path.join(tmp, "dst"))
    assert code == EXIT_USAGE and "Model.bp" in err and not os.path.exists(os.path.join(tmp, "dst"))


def test_only_a_brainpy_suffix_is_replaced(tmp, capsys):
    src, dst = os.path.join(tmp, "src"), os.path.join(tmp, "dst")
    bp_file(os.path.join(src, "ckpt.1000"), 1.0)
    bp_file(os.path.join(src, "ckpt.2000"), 2.0)
    bp_file(os.path.join(src, "sub", "x.BP"), 3.0)
    assert run(capsys, "convert", src, dst)[0] == EXIT_OK
    assert files_under(dst) == ["ckpt.1000.bpz", "ckpt.2000.bpz", os.path.join("sub", "x.bpz")]
    assert bpz.load_pytree(os.path.join(dst, "ckpt.2000.bpz"))["w"][0] == 2.0


def test_dst_inside_src_is_not_walked(tmp, capsys):
    src = os.path.join(tmp, "src")
    bp_file(os.path.join(src, "a.bp"))
    dst = os.path.join(src, "converted")
    for _ in range(2):
        assert run(capsys, "convert", src, dst, "--to", "bp", "--force")[0] == EXIT_OK
    assert files_under(src) == ["a.bp", os.path.join("converted", "a.bp")]


def test_src_equal_to_dst(tmp, capsys):
    src = os.path.join(tmp, "src")
    bp_file(os.path.join(src, "a.bp"))
    before = open(os.path.join(src, "a.bp"), "rb").read()
    code, _, err = run(capsys, "convert", src, src, "--to", "bp", "--force")  # each output is its input
    assert code == EXIT_USAGE and "replace inputs" in err
    assert open(os.path.join(src, "a.bp"), "rb").read() == before
    assert run(capsys, "convert", src, src)[0] == EXIT_OK  # .bp next to .bpz: fine
    assert files_under(src) == ["a.bp", "a.bpz"]


def test_an_output_that_would_replace_an_input_is_refused(tmp, capsys):
    src = os.path.join(tmp, "src")
    bp_file(os.path.join(src, "a.bp"), 1.0)
    bp_file(os.path.join(src, "a.bpz"), 2.0)  # a BrainPy file under a bpz name: an input too
    code, _, err = run(capsys, "convert", src, src, "--force")
    assert code == EXIT_USAGE and "a.bpz" in err
    assert read_bp(os.path.join(src, "a.bpz"))["w"][0] == 2.0


def test_existing_outputs_are_all_checked_before_writing(tmp, capsys):
    src, dst = os.path.join(tmp, "src"), os.path.join(tmp, "dst")
    bp_file(os.path.join(src, "a.bp"))
    bp_file(os.path.join(src, "b.bp"))
    os.makedirs(dst)
    open(os.path.join(dst, "b.bpz"), "wb").write(b"keep")
    code, _, err = run(capsys, "convert", src, dst)
    assert code == EXIT_USAGE and "--force" in err and files_under(dst) == ["b.bpz"]


def test_single_file_onto_itself_is_refused(tmp, capsys):
    path = os.path.join(tmp, "m.bpz")
    bpz.save_pytree(path, {"w": np.ones(2)}, verbose=False)
    code, _, err = run(capsys, "convert", path, path, "--force")
    assert code == EXIT_USAGE and "SRC itself" in err


# ----------------------------------------------------------------------- symlinks


def test_symlinks_leading_out_of_src_are_skipped(tmp, capsys):
    src, dst = os.path.join(tmp, "src"), os.path.join(tmp, "dst")
    secret = bp_file(os.path.join(tmp, "elsewhere", "secret.bp"))
    bp_file(os.path.join(src, "a.bp"))
    os.symlink(secret, os.path.join(src, "link.bp"))
    os.symlink(os.path.join(src, "a.bp"), os.path.join(src, "alias.bp"))  # inside SRC: followed
    os.symlink(os.path.join(tmp, "elsewhere"), os.path.join(src, "linkdir"))
    code, _, err = run(capsys, "convert", src, dst)
    assert code == EXIT_OK
    assert files_under(dst) == ["a.bpz", "alias.bpz"]
    assert "link.bp: skipped: a symlink to" in err and "linkdir: skipped: a symlinked directory" in err


def test_special_files_in_src_are_skipped_without_blocking(tmp):
    src = os.path.join(tmp, "src")
    bp_file(os.path.join(src, "a.bp"))
    os.mkfifo(os.path.join(src, "fifo.bp"))
    out = subprocess.run([sys.executable, "-m", "bpz", "convert", src, os.path.join(tmp, "dst")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == EXIT_OK and files_under(os.path.join(tmp, "dst")) == ["a.bpz"]


# ------------------------------------------------------------------------ losses


Point = collections.namedtuple("Point", "x y")


@pytest.fixture
def rich(tmp):
    path = os.path.join(tmp, "rich.bpz")
    tree = {"net": {"W": np.arange(6, dtype=np.float32).reshape(2, 3)}, "epoch": 3, "lr": 0.5, "name": "run",
            "none": None, "pair": (np.ones(2), 7), "p": Point(1, np.zeros(1)), 4: np.ones(1, np.int8),
            "od": collections.OrderedDict(b=1)}
    bpz.save_pytree(path, tree, verbose=False, metadata={"note": "hi"})
    return path, tree


@pytest.mark.parametrize("fmt", ["npz", "bp"])
def test_a_lossy_conversion_is_refused_naming_what_would_be_lost(rich, tmp, capsys, fmt):
    path, _ = rich
    out = os.path.join(tmp, f"out.{fmt}")
    code, _, err = run(capsys, "convert", path, out)
    assert code == EXIT_USAGE and not os.path.exists(out)
    assert "would lose" in err and "metadata" in err and "--lossy" in err and len(err.splitlines()) == 1
    assert ("['epoch']" in err and "structure" in err) if fmt == "npz" else ("tuples" in err and "[4]" in err)
    code, _, err = run(capsys, "convert", path, out, "--lossy")
    assert code == EXIT_OK and "--lossy" in err and os.path.exists(out)


def test_safetensors_carries_the_tree_and_metadata(rich, tmp, capsys):
    path, tree = rich
    st, back = os.path.join(tmp, "m.safetensors"), os.path.join(tmp, "back.bpz")
    assert run(capsys, "convert", path, st)[0] == EXIT_OK
    assert run(capsys, "convert", st, back)[0] == EXIT_OK
    loaded = bpz.load_pytree(back)
    assert loaded["epoch"] == 3 and loaded["name"] == "run" and loaded["none"] is None and loaded["lr"] == 0.5
    assert isinstance(loaded["pair"], tuple) and loaded["pair"][1] == 7 and type(loaded["p"]).__name__ == "Point"
    assert isinstance(loaded["od"], collections.OrderedDict) and 4 in loaded
    np.testing.assert_array_equal(loaded["net"]["W"], tree["net"]["W"])
    with bpz.open(back) as a:
        assert a.metadata == {"note": "hi"}
    from safetensors.numpy import load_file  # the reference reader still reads it

    assert set(load_file(st)) == {"net/W", "pair/0", "p/y", "4"}


def test_unknown_output_suffix_is_refused(tmp, capsys, rich):
    path, _ = rich
    out = os.path.join(tmp, "m.h5")
    code, _, err = run(capsys, "convert", path, out)
    assert code == EXIT_USAGE and ".h5" in err and not os.path.exists(out)
    assert run(capsys, "convert", path, out, "--to", "bpz")[0] == EXIT_OK and bpz.load_pytree(out)["epoch"] == 3


@pytest.mark.parametrize("fmt,dtype", [("npz", ml_dtypes.bfloat16), ("npz", ml_dtypes.float8_e4m3fn),
                                       ("safetensors", np.complex128)])
def test_a_dtype_the_target_cannot_hold_is_refused_even_with_lossy(tmp, capsys, fmt, dtype):
    path, out = os.path.join(tmp, "m.bpz"), os.path.join(tmp, f"m.{fmt}")
    bpz.save_pytree(path, {"x": np.ones(3, dtype)}, verbose=False)
    code, _, err = run(capsys, "convert", path, out, "--lossy")
    assert code == EXIT_USAGE and "'x'" in err and str(np.dtype(dtype)) in err and not os.path.exists(out)


@pytest.mark.parametrize("fmt", ["safetensors", "bp"])
def test_bfloat16_survives_safetensors_and_bp(tmp, capsys, fmt):
    path, out, back = os.path.join(tmp, "m.bpz"), os.path.join(tmp, f"m.{fmt}"), os.path.join(tmp, "back.bpz")
    x = np.arange(4).astype(ml_dtypes.bfloat16)
    bpz.save_pytree(path, {"x": x}, verbose=False)
    assert run(capsys, "convert", path, out)[0] == EXIT_OK and run(capsys, "convert", out, back)[0] == EXIT_OK
    y = bpz.load_pytree(back)["x"]
    assert y.dtype == x.dtype and y.tobytes() == x.tobytes()


def test_tensor_names_that_collide_with_writer_keywords(tmp, capsys):
    path, out, back = (os.path.join(tmp, n) for n in ("m.bpz", "m.npz", "back.bpz"))
    tree = {"file": np.ones(2), "allow_pickle": np.zeros(2), "compress": np.arange(2)}
    bpz.save_pytree(path, tree, verbose=False)
    assert run(capsys, "convert", path, out)[0] == EXIT_OK and run(capsys, "convert", out, back)[0] == EXIT_OK
    loaded = bpz.load_pytree(back)
    assert sorted(loaded) == sorted(tree) and all(np.array_equal(loaded[k], v) for k, v in tree.items())
    bpz.save_pytree(path, {"__metadata__": np.ones(1)}, verbose=False, overwrite=True)
    code, _, err = run(capsys, "convert", path, os.path.join(tmp, "m.safetensors"))
    assert code == EXIT_USAGE and "__metadata__" in err


@pytest.mark.parametrize("header", [b"[]", b'{"x": 1}', b'{"x": {"dtype": "F32", "shape": [4611686018427387904, 4], '
                                    b'"data_offsets": [0, 0]}}', b'{"x": {"dtype": "F32"}}',
                                    b'{"__metadata__": {"bpz.tree": "{\\"dict\\": 5}"}}'])
def test_hostile_safetensors_are_data_errors(tmp, capsys, header):
    path = os.path.join(tmp, "h.safetensors")
    with open(path, "wb") as f:
        f.write(len(header).to_bytes(8, "little") + header)
    code, _, err = run(capsys, "convert", path, os.path.join(tmp, "o.bpz"))
    assert code == EXIT_DATA and len(err.splitlines()) == 1 and "Traceback" not in err, err


# --------------------------------------------------------------- atomic, durable


@needs_strace
@pytest.mark.parametrize("fmt", ["safetensors", "npz", "bp"])
def test_outputs_are_fsynced_before_the_rename(tmp, fmt):
    path, out = os.path.join(tmp, "m.bpz"), os.path.join(tmp, f"m.{fmt}")
    bpz.save_pytree(path, {"w": np.ones(3)}, verbose=False)
    code = "import sys; from bpz.cli import main; sys.exit(main(sys.argv[1:]))"
    check_synced_around_the_rename(syscalls(code, "convert", path, out), out)


@pytest.mark.parametrize("fmt", ["safetensors", "npz", "bp"])
def test_a_failed_conversion_leaves_the_previous_file_and_no_debris(tmp, fmt):
    path, out = os.path.join(tmp, "m.bpz"), os.path.join(tmp, f"m.{fmt}")
    bpz.save_pytree(path, {"w": np.ones(100_000)}, verbose=False)
    with open(out, "wb") as f:
        f.write(b"previous")
    # A real write failure midway: files may not grow past 64 KiB in the child (EFBIG).
    code = ("import resource, signal, sys; from bpz.cli import main; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
            "resource.setrlimit(resource.RLIMIT_FSIZE, (65536, 65536)); sys.exit(main(sys.argv[1:]))")
    r = subprocess.run([sys.executable, "-c", code, "convert", path, out, "--force"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 3 and "File too large" in r.stderr and len(r.stderr.splitlines()) == 1, r.stderr
    assert open(out, "rb").read() == b"previous" and sorted(os.listdir(tmp)) == sorted(["m.bpz", f"m.{fmt}"])


def test_a_value_the_bp_writer_refuses_leaves_no_file(tmp, capsys):
    path, out = os.path.join(tmp, "m.bpz"), os.path.join(tmp, "m.bp")
    bpz.save_pytree(path, {"big": 2**70, "w": np.ones(2)}, verbose=False)
    code, _, err = run(capsys, "convert", path, out)
    assert code == EXIT_USAGE and "64 bits" in err and sorted(os.listdir(tmp)) == ["m.bpz"]
