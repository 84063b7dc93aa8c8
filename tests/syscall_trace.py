"""Watching a child's fsyncs and renames with strace: the syscalls a durable save makes are
the core's (Rust), out of reach of monkeypatching."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile

import pytest


def _strace_works() -> bool:
    try:
        return subprocess.run(["strace", "-o", os.devnull, "true"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


needs_strace = pytest.mark.skipif(not _strace_works(), reason="needs strace (and ptrace) to watch the syscalls")


def syscalls(code: str, *args: str) -> list[str]:
    """The fsyncs and renames a Python child makes (the rename and syncs are the core's, in Rust)."""
    with tempfile.NamedTemporaryFile("r", suffix=".strace") as log:
        subprocess.run(["strace", "-f", "-qq", "-y", "-o", log.name, "-e", "trace=fsync,fdatasync,rename,renameat,renameat2",
                        sys.executable, "-c", code, *args], check=True, timeout=120)
        return [line.split(None, 1)[1] for line in log.read().splitlines() if " " in line]


def check_synced_around_the_rename(calls: list[str], final: str) -> None:
    """The temporary is fsynced before it is renamed onto ``final``, and the directory after."""
    renames = [(i, re.findall(r'"([^"]*)"', c)) for i, c in enumerate(calls) if c.startswith("rename")]
    renames = [(i, names[0]) for i, names in renames if names[-1] == final]
    assert len(renames) == 1, calls  # one temporary, renamed once
    at, tmp = renames[0]
    assert any(c.startswith("fsync(") and f"<{tmp}>" in c for c in calls[:at]), calls
    assert any(c.startswith("fsync(") and f"<{os.path.dirname(final)}>" in c for c in calls[at:]), calls
