"""Hostile files: every file of the adversarial corpus is refused (or read) as
``corpus/expected.json`` says, in a child process limited to 2 GiB of address space and a
timeout — never a crash, a signal, a hang or an untyped exception.

The corpus is made by ``generate.py`` (``python tests/attacks/generate.py``); files too large
to keep in git (100k tensors, a 1 GiB sparse gap) are made here. The legacy readers get the
same treatment through their public functions (``read_bp``, ``load_pickle``), and no
malicious pickle may run code.
"""

from __future__ import annotations

import importlib.util
import json
import os
import struct
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest

import bpz

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(HERE, "corpus")
EXPECTED = json.load(open(os.path.join(CORPUS, "expected.json")))
PWNED = "/tmp/bpz-attack-pwned"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bpz_attacks_{name}", os.path.join(HERE, f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


harness = _load("harness")
generate = _load("generate")


@pytest.fixture(scope="module")
def results():
    if os.path.exists(PWNED):
        os.remove(PWNED)
    files = sorted(n for n in os.listdir(CORPUS) if n != "expected.json")
    out = harness.run_files([os.path.join(CORPUS, n) for n in files])
    return {os.path.basename(p): r for p, r in out.items()}


def test_the_corpus_is_exactly_what_expected_json_lists():
    files = set(os.listdir(CORPUS)) - {"expected.json"}
    assert files == set(EXPECTED)
    assert all(os.path.getsize(os.path.join(CORPUS, n)) <= 600_000 for n in files), "corpus files stay small"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_hostile_file(results, name):
    exp = EXPECTED[name]
    got = results[name]
    assert "crash" not in got and "crash_before_start" not in got, f"{name}: {got}"
    stages = [k for k in exp if k not in ("note", "currently", "message_defect")]
    actual = {k: got[k]["result"] for k in stages if k in got}
    wanted = {k: exp[k] for k in stages}
    if actual != wanted and actual == {**wanted, **exp.get("currently", {})}:
        pytest.xfail(f"known defect (reported): {exp['currently']} instead of FormatError — {exp['note']}")
    assert actual == wanted, f"{name} ({exp['note']}): {json.dumps(got, indent=1)}"
    for stage, res in got.items():
        assert res["seconds"] < 30, f"{name}: {stage} took {res['seconds']} s"
        if res["result"] != "ok" and "message_defect" not in exp:
            assert name in res["msg"], f"{name}: the {stage} error does not name the file: {res['msg']}"


def test_no_pickle_ran_code(results):
    assert not os.path.exists(PWNED), "a malicious pickle ran code"


def test_truncated_views_of_every_corpus_file_are_refused_cleanly(tmp_path):
    """Cut every valid-to-open corpus archive at a few lengths: a clear error, never a crash.
    A format-1.1 file cut after the end of a committed version opens that version (recovered)
    and reads it whole."""
    paths: dict[str, tuple[int, list[int] | None]] = {}
    for name, exp in EXPECTED.items():
        if name.endswith(".bpz") and exp.get("open") == "ok":
            data = open(os.path.join(CORPUS, name), "rb").read()
            committed_ends = None
            if struct.unpack_from("<I", data, 12)[0] & 1:  # required bit 0: a 1.1 file, maybe of versions
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", bpz.errors.RecoveredArchiveWarning)
                    with bpz.open(os.path.join(CORPUS, name)) as a:
                        ends = [v.bytes_added for v in a.versions]
                committed_ends = [64 + sum(ends[:i + 1]) for i in range(len(ends))]
            for cut in sorted({0, 7, 63, 64, 95, len(data) // 2, len(data) - 33, len(data) - 1}):
                if 0 <= cut < len(data):
                    p = tmp_path / f"{name}.{cut}"
                    p.write_bytes(data[:cut])
                    paths[str(p)] = (cut, committed_ends)
    out = harness.run_files(list(paths))
    for p, res in out.items():
        assert "crash" not in res, (p, res)
        cut, committed_ends = paths[p]
        if committed_ends and cut >= committed_ends[0] and res["open"]["result"] == "ok":
            assert (res["load"]["result"], res["verify"]["result"]) == ("ok", "ok"), (p, res)
            continue
        assert res["open"]["result"] in ("truncated", "bad_magic", "checksum_mismatch", "invalid_index"), (p, res)


def test_an_index_of_100k_tensors_opens_in_bounded_time(tmp_path):
    path = str(tmp_path / "many.bpz")
    state = {f"t{i}": np.zeros(0, np.float32) for i in range(100_000)}
    state["x"] = np.arange(5)
    bpz.save_pytree(path, state, verbose=False)
    res = harness.run_files([path])[path]
    assert "crash" not in res, res
    assert {k: v["result"] for k, v in res.items()} == {"open": "ok", "load": "ok", "verify": "ok"}, res
    assert res["open"]["seconds"] < 10 and res["load"]["seconds"] < 20, res


def test_a_gigabyte_sparse_gap_is_verified_in_bounded_memory(tmp_path):
    """A file with a 1 GiB hole between superblock and index (a few KiB on disk)."""
    path = tmp_path / "sparse.bpz"
    gap = 1 << 30
    index = b'{"tensors":[]}'
    with open(path, "wb") as f:
        f.write(generate.superblock())
        f.truncate(64 + gap)
        f.seek(64 + gap)
        f.write(index + generate.trailer(64 + gap, len(index), generate.crc32c(index)))
    res = harness.run_files([str(path)])[str(path)]
    assert {k: v.get("result") for k, v in res.items()} == {"open": "ok", "load": "ok", "verify": "ok"}, res
    tampered = bytearray(open(path, "rb").read(64))
    with open(path, "r+b") as f:  # one non-zero byte deep in the hole
        f.seek(64 + gap - 5)
        f.write(b"\x01")
    res = harness.run_files([str(path)])[str(path)]
    assert res["verify"]["result"] == "corrupt_data" and str(64 + gap - 5) in res["verify"]["msg"], res
    assert tampered[:8] == generate.MAGIC


def test_a_torn_tail_of_gigabytes_is_recovered_in_bounded_time(tmp_path):
    """A committed 1.1 version followed by never-written bytes (sparse; an append killed after
    extending the file): the reader scans back to the last committed trailer in bounded time and
    memory, and the next append cuts the tail."""
    good = generate.v11_cases()["v11_valid_three_versions.bpz"][0]
    path = tmp_path / "torn.bpz"
    with open(path, "wb") as f:
        f.write(good)
        f.truncate(len(good) + (1 << 30))
    res = harness.run_files([str(path)])[str(path)]  # under the 2 GiB address-space limit, mapped
    assert {k: v.get("result") for k, v in res.items()} == {"open": "ok", "load": "ok", "verify": "ok"}, res
    assert res["open"]["seconds"] < 20, res
    with open(path, "r+b") as f:
        f.truncate(len(good) + (4 << 30))
    start = time.monotonic()
    with pytest.warns(bpz.errors.RecoveredArchiveWarning, match="4,294,967,296 bytes after version 3"):
        a = bpz.open(path, backend="pread")
    with a:
        assert a.recovered == {"ignored_bytes": 4 << 30, "committed_end": len(good)}
        assert a.version_number == 3 and a.metadata == {"v": 3}
    assert time.monotonic() - start < 30
    bpz.save_pytree(path, {"x": np.arange(3)}, verbose=False, append=True)
    with bpz.open(path) as a:
        assert a.recovered is None and [v.number for v in a.versions] == [1, 2, 3, 4]
        assert os.path.getsize(path) == len(good) + a.versions[-1].bytes_added


def test_the_cli_refuses_hostile_files_with_status_1(tmp_path):
    names = [n for n, e in EXPECTED.items() if n.endswith(".bpz") and e.get("open") != "ok"][:20]
    out = subprocess.run([sys.executable, "-m", "bpz", "verify", *[os.path.join(CORPUS, n) for n in names]],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 1, out.stdout + out.stderr
    lines = out.stderr.splitlines()
    assert len(lines) == len(names) and out.stdout == "", out.stdout + out.stderr  # one line per file, none OK
    for name, line in zip(names, lines):
        # "bpz verify: <file>: <cause>", the cause being what bpz.open says (without the file name again)
        path = os.path.join(CORPUS, name)
        with pytest.raises(bpz.errors.FormatError) as e:
            bpz.open(path)
        assert e.value.kind == EXPECTED[name]["open"], (name, e.value)
        assert line == f"bpz verify: {path}: {str(e.value).removeprefix(path + ': ')}", (line, str(e.value))
    assert "Traceback" not in out.stderr


def test_generator_reproduces_the_corpus():
    """The committed files are what generate.py makes (zstd frames included)."""
    pytest.importorskip("zstandard")
    out = subprocess.run([sys.executable, os.path.join(HERE, "generate.py"), "--check"], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr


def test_frame_helper_is_deterministic():
    pytest.importorskip("zstandard")
    assert generate.zstd_frame(b"abc" * 100) == generate.zstd_frame(b"abc" * 100)
    assert struct.unpack("<I", generate.zstd_frame(b"x")[:4])[0] == 0xFD2FB528
