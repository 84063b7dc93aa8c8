"""Invalid files map onto typed Python exceptions with the spec's error kinds."""

import inspect
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

import bpz
from bpz import _bpz, errors

INVALID = pathlib.Path(__file__).parents[1] / "spec" / "vectors" / "invalid"
TABLE = json.loads((INVALID / "expected.json").read_text())
CLASSES = {
    "truncated": errors.TruncatedError,
    "bad_magic": errors.NotAnArchiveError,
    "unsupported_version": errors.UnsupportedVersionError,
    "unsupported_feature": errors.UnsupportedFeatureError,
    "checksum_mismatch": errors.ChecksumError,
    "invalid_index": errors.FormatError,
    "limit_exceeded": errors.LimitExceededError,
    "corrupt_data": errors.CorruptDataError,
}


@pytest.mark.parametrize("name", sorted(TABLE))
def test_invalid_vector_raises_its_typed_error(name):
    want = TABLE[name]
    path = INVALID / name
    # "list": a 1.1 rule checked when every tensor is listed (opening may already fail);
    # "version": the damaged version is an earlier one (spec §13).
    with pytest.raises(CLASSES[want["error"]]) as info:
        with bpz.open(path, version=want.get("version")) as a:
            assert want["stage"] in ("read", "list"), "opening should have failed"
            a.keys()
            assert want["stage"] == "read", "listing should have failed"
            a.load()
            a.verify()
    assert info.value.kind == want["error"]
    assert type(info.value) is _bpz.ERROR_CLASSES[want["error"]]
    assert isinstance(info.value, ValueError)
    assert str(path) in str(info.value) or name in str(info.value)


def test_future_major_names_both_versions():
    # The file's version and the newest this reader supports (1.1 since issue 14).
    with pytest.raises(errors.UnsupportedVersionError, match=r"2\.0.*supports 1\.1"):
        bpz.open(INVALID / "future_major.bpz")


def test_missing_file_through_open_is_file_not_found(tmp):
    with pytest.raises(FileNotFoundError):
        bpz.open(tmp + "/nope.bpz")
    with pytest.raises(IsADirectoryError):
        bpz.open(tmp)


# ------------------------------------------------- one class per error kind of the core


def test_every_core_error_kind_has_its_own_class():
    assert len(set(_bpz.ERROR_KINDS)) == len(_bpz.ERROR_KINDS) and "out_of_memory" in _bpz.ERROR_KINDS
    assert set(_bpz.ERROR_CLASSES) == set(_bpz.ERROR_KINDS)
    for kind, cls in _bpz.ERROR_CLASSES.items():
        if kind == "io":  # the builtin OSError subclass of the errno, as from open()
            assert cls is OSError
            continue
        assert issubclass(cls, errors.BpzError), kind
        assert cls.kind == kind, cls
        assert getattr(errors, cls.__name__) is cls, f"bpz.errors does not re-export {cls.__name__}"
    classes = [c for k, c in _bpz.ERROR_CLASSES.items() if k != "io"]
    assert len(set(classes)) == len(classes), "two kinds share a class"


def test_every_class_of_bpz_errors_derives_from_bpz_error():
    public = [getattr(errors, name) for name in errors.__all__]
    # Every error class derives from BpzError; the one warning class is a UserWarning.
    warning = errors.RecoveredArchiveWarning
    assert all(inspect.isclass(c) and issubclass(c, errors.BpzError) for c in public if c is not warning)
    assert issubclass(errors.RecoveredArchiveWarning, UserWarning)
    assert {n for n, c in vars(errors).items() if inspect.isclass(c) and issubclass(c, BaseException)} == set(
        errors.__all__), "every exception class of bpz.errors is public"


@pytest.mark.parametrize("cls, builtin", [
    (errors.FormatError, ValueError), (errors.ChecksumError, ValueError), (errors.NotZeroCopyError, ValueError),
    (errors.InvalidArgumentError, ValueError), (errors.TensorNotFoundError, KeyError),
    (errors.OutOfMemoryError, MemoryError), (errors.UnsupportedFeatureError, errors.UnsupportedVersionError),
    (errors.CheckpointNotFoundError, FileNotFoundError), (errors.CheckpointNotFoundError, ValueError),
])
def test_classes_are_also_the_builtin_exceptions_callers_catch(cls, builtin):
    assert issubclass(cls, builtin) and issubclass(cls, errors.BpzError)


def test_tensor_not_found_shows_its_message_not_its_repr(tmp):
    bpz.save_pytree(tmp + "/a.bpz", {"w": np.zeros(3)}, verbose=False)
    with bpz.open(tmp + "/a.bpz") as a, pytest.raises(errors.TensorNotFoundError) as info:
        a._native().read("nope")
    assert str(info.value) == f'{tmp}/a.bpz: no tensor named "nope"'


def test_a_bad_argument_to_the_core_is_an_invalid_argument_error(tmp):
    bpz.save_pytree(tmp + "/a.bpz", {"w": np.zeros(3)}, verbose=False)
    name = bpz.open(tmp + "/a.bpz").keys()[0]
    with pytest.raises(errors.InvalidArgumentError) as info:
        _bpz.Archive(tmp + "/a.bpz").read_rows(name, 2, 1)
    assert isinstance(info.value, ValueError) and info.value.kind == "invalid_argument"
    assert "rows 2..1 out of range" in str(info.value)


def test_exceptions_pickle_with_their_class_and_kind():
    import pickle

    for cls in (errors.ChecksumError, errors.OutOfMemoryError, errors.TensorNotFoundError):
        back = pickle.loads(pickle.dumps(cls("f.bpz: boom")))
        assert type(back) is cls and back.kind == cls.kind and str(back) == "f.bpz: boom"


# ------------------------------------------------------------- refused allocations

OUT_OF_MEMORY_CHILD = """
import resource, sys
import bpz
from bpz.cli import main
archive = bpz.open(sys.argv[1])
with open("/proc/self/statm") as f:
    used = int(f.read().split()[0]) * resource.getpagesize()
resource.setrlimit(resource.RLIMIT_AS, (used + (64 << 20), resource.RLIM_INFINITY))
try:
    archive["z"]
except MemoryError as e:
    print(type(e).__name__, e.kind, isinstance(e, bpz.errors.BpzError), e, sep="|")
print("exit", main(["cat", sys.argv[1], "z"]))
"""


def test_a_refused_allocation_is_an_out_of_memory_error_and_cli_exit_3(tmp):
    """A valid archive whose tensor (256 MiB of zeros, a small file) does not fit in the
    child's address space: OutOfMemoryError (a MemoryError), and the CLI exits with 3."""
    path = tmp + "/zeros.bpz"
    bpz.save_pytree(path, {"z": np.zeros(1 << 25)}, verbose=False)
    assert os.path.getsize(path) < (8 << 20)
    env = {**os.environ, "BPZ_MEMORY_CHECK": "0"}  # else the memory check refuses first (limit_exceeded)
    out = subprocess.run([sys.executable, "-c", OUT_OF_MEMORY_CHILD, path], env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    first, last = out.stdout.splitlines()[0], out.stdout.splitlines()[-1]
    assert first == f"OutOfMemoryError|out_of_memory|True|{path}: cannot allocate 268435456 bytes for tensor \"z\"", out
    assert last == "exit 3" and "bpz cat: " in out.stderr and "out of memory: cannot allocate" in out.stderr, out
