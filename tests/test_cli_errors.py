"""Every ``bpz`` subcommand against every kind of bad input fails with one line
``bpz <command>: <file>: <cause>`` on stderr and a documented exit code (see ``bpz --help``):
0 ok, 1 bad data, 2 usage/refusal, 3 I/O, 4 internal error, 130 interrupted. Never a traceback.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import bpz
import bpz.cli
from bpz.cli import EXIT_DATA, EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_IO, EXIT_OK, EXIT_USAGE, main

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(HERE, "attacks", "corpus")
EXPECTED = json.load(open(os.path.join(CORPUS, "expected.json")))


def run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def assert_one_line(err: str, command: str, file: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"bpz {command}: {file}: "), lines[0]
    return lines[0]


# ------------------------------------------------------------ the attack corpus

CHILD = r"""
import contextlib, io, json, os, resource, sys, tempfile, traceback
limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
import bpz
from bpz.cli import main

def run(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except BaseException as e:  # main must never raise: recorded as a finding
            code = "raised " + type(e).__name__
            err.write(traceback.format_exc())
    return {"argv": argv, "code": code, "err": err.getvalue()[-3000:]}

for line in sys.stdin:
    path = line.rstrip("\n")
    if not path:
        continue
    print("START " + path, flush=True)
    with tempfile.TemporaryDirectory() as d:
        cmds = {"ls": ["ls", "--json", path], "info": ["info", path], "cat missing": ["cat", path, "no such tensor"],
                "verify": ["verify", path], "verify --decode": ["verify", "--decode", path]}
        try:
            with bpz.open(path) as a:
                names = a.keys()
            if names:
                cmds["cat"] = ["cat", path, names[0]]
        except BaseException:
            pass
        for suffix in ("bpz", "npz", "safetensors", "bp"):
            cmds["convert " + suffix] = ["convert", path, os.path.join(d, "out." + suffix), "--lossy"]
        res = {key: run(c) for key, c in cmds.items()}
    print("RESULT " + json.dumps(res), flush=True)
"""


def _harness():
    spec = importlib.util.spec_from_file_location("bpz_cli_corpus_harness", os.path.join(HERE, "attacks", "harness.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    mod.CHILD = CHILD  # same child-process machinery (memory limit, timeout), running the CLI
    return mod


@pytest.fixture(scope="module")
def corpus_results():
    files = sorted(n for n in os.listdir(CORPUS) if n != "expected.json")
    out = _harness().run_files([os.path.join(CORPUS, n) for n in files], timeout=240.0)
    return {os.path.basename(p): r for p, r in out.items()}


def _checksums_ok(path: str) -> bool:
    """Whether ``Archive.verify()`` (no decoding: small work for these small files) passes."""
    try:
        with bpz.open(path) as a:
            a.verify()
    except bpz.errors.FormatError:
        return False
    return True


def _allowed(name: str, key: str) -> set[int]:
    """Exit codes the CLI may give for this corpus file and command, from expected.json."""
    exp = EXPECTED[name]
    command = key.split()[0]
    if not name.endswith(".bpz"):  # a BrainPy .bp or a pickle: not an archive; convert reads .bp only
        if command == "convert" and name.endswith(".bp"):
            return {EXIT_OK, EXIT_USAGE} if exp["read_bp"] == "ok" else {EXIT_DATA}
        return {EXIT_DATA}
    if exp["open"] != "ok":
        return {EXIT_DATA}
    # a valid archive too big for the child's memory: out of memory (3) or over the reader's budget (1)
    load = {"ok": {EXIT_OK}, "out_of_memory": {EXIT_IO, EXIT_DATA}}.get(exp["load"], {EXIT_DATA})
    if command == "ls":  # a 1.1 index is checked when listed: a bad tensor record fails `ls` too
        return {EXIT_OK, EXIT_DATA} if name.startswith("v11_") and exp["load"] == "invalid_index" else {EXIT_OK}
    if command == "info":  # 1 when the tree is malformed (load would fail) — no data is read
        return {EXIT_OK, EXIT_DATA} if exp["load"] == "invalid_index" else {EXIT_OK}
    if key == "verify --decode":  # what the harness's verify() + verify(decode=True) found
        return {EXIT_OK} if exp["verify"] == "ok" else {EXIT_DATA}
    if command == "verify":  # checksums and padding only: frames that do not decode are not its concern
        return {EXIT_OK} if _checksums_ok(os.path.join(CORPUS, name)) else {EXIT_DATA}
    if key == "cat missing":  # a 1.1 lookup meeting a bad record says so, never a false "no such tensor"
        return {EXIT_USAGE, EXIT_DATA} if name.startswith("v11_") and exp["load"] == "invalid_index" else {EXIT_USAGE}
    if command == "cat":
        return {EXIT_OK, EXIT_DATA, EXIT_IO}  # one tensor: may be whole where the file is not
    # convert: a value the target cannot hold (depth, an int over 64 bits, a dtype) is a refusal
    return load | {EXIT_USAGE} if EXIT_OK in load else load


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_subcommand_on_every_hostile_file(corpus_results, name):
    got = corpus_results[name]
    assert isinstance(got, dict) and "crash" not in got and "crash_before_start" not in got, f"{name}: {got}"
    for key, res in got.items():
        code, err = res["code"], res["err"]
        assert isinstance(code, int), f"{name} {key}: main raised: {err}"
        assert "Traceback" not in err, f"{name} {key}: {err}"
        assert code != EXIT_INTERNAL, f"{name} {key}: internal error: {err}"
        assert code in _allowed(name, key), f"{name} {key}: exit {code}: {err}"
        command = key.split()[0]
        # A file ending in an unfinished append is read at its last version, with one notice first.
        lines = [line for line in err.splitlines()
                 if not (line.startswith(f"bpz {command}: ") and "ends in an unfinished append" in line)]
        if code == EXIT_OK:
            assert all(line.startswith(f"bpz convert: {res['argv'][1]}: --lossy: ") for line in lines), err
            assert command != "convert" or os.path.basename(res["argv"][2]) == "out." + key.split()[1]
        else:
            assert len(lines) == 1, f"{name} {key}: {err}"
            assert lines[0].startswith(f"bpz {command}: "), err
            assert name in lines[0], err


# --------------------------------------------------------------- other inputs


@pytest.fixture
def archive(tmp):
    path = os.path.join(tmp, "m.bpz")
    bpz.save_pytree(path, {"w": np.arange(4.0), "n": 3}, verbose=False)
    return path


@pytest.mark.parametrize("command", ["ls", "info", "cat", "verify", "convert"])
def test_missing_file_directory_and_empty_file(capsys, tmp, command):
    def argv(path):
        return {"cat": ["cat", path, "w"], "convert": ["convert", path, os.path.join(tmp, "o.bpz")]}.get(
            command, [command, path])

    missing = os.path.join(tmp, "missing.bpz")
    code, _, err = run(capsys, *argv(missing))
    assert code == EXIT_IO and "No such file or directory" in assert_one_line(err, command, missing)
    if command != "convert":  # (a directory SRC is a migration)
        sub = os.path.join(tmp, "dir.bpz")
        os.mkdir(sub)
        code, _, err = run(capsys, *argv(sub))
        assert code == EXIT_IO and "is a directory" in assert_one_line(err, command, sub)
    for content in (b"", b"\x89BPZ\r\n\x1a\n" + b"\0" * 10, b"PK\x03\x04" + b"\0" * 40, b"not an archive at all"):
        bad = os.path.join(tmp, "bad.bpz")
        with open(bad, "wb") as f:
            f.write(content)
        code, _, err = run(capsys, *argv(bad))
        assert code == EXIT_DATA, err
        assert_one_line(err, command, bad)


def test_a_fifo_is_refused_without_blocking(tmp, archive):
    fifo = os.path.join(tmp, "fifo.bpz")
    os.mkfifo(fifo)
    for argv in (["ls", fifo], ["verify", fifo], ["convert", fifo, os.path.join(tmp, "o.bpz")]):
        out = subprocess.run([sys.executable, "-m", "bpz", *argv], capture_output=True, text=True, timeout=30)
        assert out.returncode == EXIT_IO and "not a regular file" in assert_one_line(out.stderr, argv[0], fifo)


def test_permission_denied_is_an_io_error(capsys, monkeypatch, archive):
    def denied(path, *a, **k):
        raise PermissionError(13, "Permission denied (os error 13)", path)

    monkeypatch.setattr(bpz.cli, "open_archive", denied)
    code, _, err = run(capsys, "ls", archive)
    assert code == EXIT_IO and assert_one_line(err, "ls", archive).endswith(": Permission denied")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_file_for_real(capsys, archive):
    os.chmod(archive, 0)
    code, _, err = run(capsys, "verify", archive)
    assert code == EXIT_IO and "Permission denied" in assert_one_line(err, "verify", archive)


def test_unexpected_errors_are_one_line_with_a_hint_and_the_traceback_on_request(capsys, monkeypatch, archive):
    def broken(path, *a, **k):
        raise AttributeError("boom")

    monkeypatch.setattr(bpz.cli, "open_archive", broken)
    code, _, err = run(capsys, "info", archive)
    assert code == EXIT_INTERNAL and "BPZ_DEBUG=1" in assert_one_line(err, "info", archive)
    monkeypatch.setenv("BPZ_DEBUG", "1")
    code, _, err = run(capsys, "info", archive)
    assert code == EXIT_INTERNAL and "Traceback" in err and "AttributeError: boom" in err


def test_interrupt_exits_130(capsys, monkeypatch, archive):
    def interrupted(path, *a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(bpz.cli, "open_archive", interrupted)
    code, _, err = run(capsys, "ls", archive)
    assert code == EXIT_INTERRUPTED and err == "bpz ls: interrupted\n"


def test_verify_of_several_files_gives_the_largest_code(capsys, tmp, archive):
    bad = os.path.join(tmp, "bad.bpz")
    with open(bad, "wb") as f:
        f.write(b"junk")
    code, out, err = run(capsys, "verify", archive, bad, os.path.join(tmp, "missing.bpz"))
    assert code == EXIT_IO and "OK" in out and len(err.splitlines()) == 2
    results = json.loads(run(capsys, "verify", "--json", archive, bad)[1])
    assert [r["ok"] for r in results] == [True, False] and results[1]["exit"] == EXIT_DATA


def test_hostile_names_and_causes_stay_on_one_line(capsys, tmp):
    path = os.path.join(tmp, "evil\nname\x1b[31m.bpz")
    with open(path, "wb") as f:
        f.write(b"junk")
    code, _, err = run(capsys, "ls", path)
    assert code == EXIT_DATA and len(err.splitlines()) == 1 and "\x1b" not in err and "evil\\nname" in err


def test_usage_errors_return_2(capsys):
    assert main(["frobnicate"]) == EXIT_USAGE
    assert main(["--help"]) == EXIT_OK
    out = capsys.readouterr().out
    assert "exit status" in out and "130" in out and "--lossy" in out


def test_a_closed_pipe_is_not_an_error(tmp):
    path = os.path.join(tmp, "many.bpz")
    bpz.save_pytree(path, {f"tensor_{i:05d}": np.zeros(1) for i in range(3000)}, verbose=False)
    proc = subprocess.Popen([sys.executable, "-m", "bpz", "ls", "--json", path], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    assert proc.stdout.readline().strip() == b"["
    proc.stdout.close()  # like `| head -1`: the reader goes away with most of the output unread
    try:
        err = proc.stderr.read().decode()
        code = proc.wait(timeout=60)
    finally:
        proc.kill()
    assert code == EXIT_OK and err == "", err
