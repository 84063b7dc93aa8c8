"""The `bpz` command on URLs, against the real servers: ls / info / cat / verify / log / diff over
nginx (http://) and versitygw (s3://, credentials from the standard AWS_* variables) print what
they print for the same local file; a missing object, a wrong secret and a damaged object give
the documented exit statuses with the URL named and no credential shown."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from remote_servers import S3_ACCESS_KEY, S3_REGION, S3_SECRET_KEY, Nginx, S3Server

import bpz


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "GOOGLE_", "AZURE_"))}
    return subprocess.run([sys.executable, "-m", "bpz", *args], capture_output=True, text=True,
                          env={**base, **(env or {})}, timeout=120)


def aws_env(s3: S3Server, secret: str = S3_SECRET_KEY) -> dict[str, str]:
    return {"AWS_ENDPOINT_URL": s3.endpoint, "AWS_REGION": S3_REGION, "AWS_ACCESS_KEY_ID": S3_ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": secret, "AWS_ALLOW_HTTP": "true"}


@pytest.fixture(scope="module")
def archives(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two versions of one model as files: v2 changes one tensor and adds one."""
    d = tmp_path_factory.mktemp("cli-remote")
    rng = np.random.default_rng(11)
    v1 = {"w": rng.standard_normal((64, 32), dtype=np.float32), "b": np.arange(32, dtype=np.int32)}
    v2 = {**v1, "b": v1["b"] + 1, "extra": np.ones(3, dtype=np.float64)}
    a, b = d / "v1.bpz", d / "v2.bpz"
    bpz.save_pytree(str(a), v1, verbose=False, metadata={"step": 1})
    bpz.save_pytree(str(b), v2, verbose=False, metadata={"step": 2})
    return a, b


@pytest.fixture(scope="module")
def served(archives: tuple[Path, Path], nginx: Nginx, s3: S3Server) -> dict[str, tuple[str, str, dict[str, str]]]:
    """Each place -> (URL or path of v1, of v2, environment)."""
    a, b = archives
    for f in archives:
        (nginx.root / f"cli-{f.name}").write_bytes(f.read_bytes())
        s3.put(f"cli/{f.name}", f.read_bytes())
    return {
        "file": (str(a), str(b), {}),
        "http": (nginx.url("cli-v1.bpz"), nginx.url("cli-v2.bpz"), {}),
        "s3": (s3.url("cli/v1.bpz"), s3.url("cli/v2.bpz"), aws_env(s3)),
    }


def json_out(*args: str, env: dict[str, str]) -> object:
    done = run(*args, "--json", env=env)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def without_file(value: object) -> object:
    """The --json output with the file's own name (which differs by place) left out."""
    if isinstance(value, dict):
        return {k: without_file(v) for k, v in value.items() if k not in ("file", "a", "b")}
    if isinstance(value, list):
        return [without_file(v) for v in value]
    return value


@pytest.mark.parametrize("place", ["http", "s3"])
def test_reading_commands_print_what_they_print_for_the_file(served: dict, place: str) -> None:
    local_a, local_b, _ = served["file"]
    url_a, url_b, env = served[place]
    for command in (["ls"], ["info"], ["log"]):
        assert without_file(json_out(*command, url_a, env=env)) == without_file(json_out(*command, local_a, env={}))
    assert json_out("cat", url_b, "b", env=env) == json_out("cat", local_b, "b", env={})
    remote_diff = json_out("diff", url_a, url_b, env=env)
    assert without_file(remote_diff) == without_file(json_out("diff", local_a, local_b, env={}))
    done = run("verify", url_b, env=env)
    assert done.returncode == 0, done.stderr


def test_failures_exit_with_the_documented_status(served: dict, nginx: Nginx, s3: S3Server,
                                                  archives: tuple[Path, Path]) -> None:
    missing = run("ls", nginx.url("cli-missing.bpz"))
    assert missing.returncode == 3 and "cli-missing.bpz" in missing.stderr, missing.stderr
    wrong = run("info", s3.url("cli/v1.bpz"), env=aws_env(s3, secret="cli-wrong-secret"))
    assert wrong.returncode == 3, wrong.stderr
    assert "cli-wrong-secret" not in wrong.stderr and S3_SECRET_KEY not in wrong.stderr
    assert "403" in wrong.stderr or "denied" in wrong.stderr
    # A flipped byte in the data of an object: verify finds it (exit 1), naming the URL.
    data = bytearray(archives[0].read_bytes())
    with bpz.open(str(archives[0])) as a:
        offset = a.chunks("w")[0].offset
    data[offset + 5] ^= 0x40
    s3.put("cli/damaged.bpz", bytes(data))
    damaged = run("verify", s3.url("cli/damaged.bpz"), env=aws_env(s3))
    assert damaged.returncode == 1 and "damaged.bpz" in damaged.stderr, (damaged.stdout, damaged.stderr)
