"""Invalid files map onto typed Python exceptions with the spec's error kinds."""

import json
import pathlib

import pytest

import bpz
from bpz import errors

INVALID = pathlib.Path(__file__).parents[1] / "spec" / "vectors" / "invalid"
TABLE = json.loads((INVALID / "expected.json").read_text())
CLASSES = {
    "truncated": errors.TruncatedError,
    "bad_magic": errors.NotAnArchiveError,
    "unsupported_version": errors.UnsupportedVersionError,
    "unsupported_feature": errors.UnsupportedVersionError,
    "checksum_mismatch": errors.ChecksumError,
    "invalid_index": errors.FormatError,
    "limit_exceeded": errors.LimitExceededError,
    "corrupt_data": errors.CorruptDataError,
}


@pytest.mark.parametrize("name", sorted(TABLE))
def test_invalid_vector_raises_its_typed_error(name):
    want = TABLE[name]
    path = INVALID / name
    with pytest.raises(CLASSES[want["error"]]) as info:
        with bpz.open(path) as a:
            assert want["stage"] == "read", "opening should have failed"
            a.load()
            a.verify()
    assert info.value.kind == want["error"]
    assert isinstance(info.value, ValueError)
    assert str(path) in str(info.value) or name in str(info.value)


def test_future_major_names_both_versions():
    with pytest.raises(errors.UnsupportedVersionError, match=r"2\.0.*1\.0"):
        bpz.open(INVALID / "future_major.bpz")


def test_missing_file_through_open_is_file_not_found(tmp):
    with pytest.raises(FileNotFoundError):
        bpz.open(tmp + "/nope.bpz")
    with pytest.raises(IsADirectoryError):
        bpz.open(tmp)
