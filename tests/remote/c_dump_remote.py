"""libbpz's bpz_open_url from C against the real servers: `bpz_dump URL` over nginx (http://)
and versitygw (s3://, options from BPZ_STORAGE_OPTIONS) prints what `bpz_dump FILE` prints for
the same archive, and a missing object, a wrong secret and a refused combination of options
fail with exit status 1 or 2, the URL named and no credential shown.

    python tests/remote/c_dump_remote.py PATH/TO/bpz_dump

Run by `make test-c` (servers started and stopped here, on 127.0.0.1).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from remote_servers import S3_SECRET_KEY, running_nginx, running_s3  # noqa: E402

import bpz  # noqa: E402

TIMEOUT = 60


def dump(binary: str, target: str, options: dict[str, str] | None = None,
         *flags: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "GOOGLE_", "AZURE_"))}
    if options is not None:
        env["BPZ_STORAGE_OPTIONS"] = json.dumps(options)
    return subprocess.run([binary, *flags, target], capture_output=True, text=True, env=env, timeout=TIMEOUT)


def check(condition: bool, what: str, result: subprocess.CompletedProcess[str] | None = None) -> None:
    if not condition:
        detail = f"\nexit {result.returncode}\nstdout: {result.stdout}\nstderr: {result.stderr}" if result else ""
        raise SystemExit(f"c_dump_remote: {what}{detail}")


def main() -> None:
    binary = os.path.abspath(sys.argv[1])
    rng = np.random.default_rng(7)
    tree = {
        "layer": {"w": rng.standard_normal((300, 257), dtype=np.float32), "b": np.arange(257, dtype=np.int64)},
        "mask": rng.random(1000) > 0.5,
        "scalar": np.float64(3.5),
    }
    with tempfile.TemporaryDirectory(prefix="bpz-c-remote-") as tmp:
        base = Path(tmp)
        local = base / "a.bpz"
        bpz.save_pytree(str(local), tree, verbose=False, chunk_size=64 << 10)
        expected = dump(binary, str(local))
        check(expected.returncode == 0 and expected.stdout.count("\n") == 4, "the local dump", expected)

        (base / "nginx").mkdir()
        (base / "s3").mkdir()
        with running_nginx(base / "nginx") as http, running_s3(base / "s3") as s3:
            (http.root / "a.bpz").write_bytes(local.read_bytes())
            got = dump(binary, http.url("a.bpz"))
            check(got.returncode == 0 and got.stdout == expected.stdout, "http:// dump differs from the file's", got)

            s3.put("c/a.bpz", local.read_bytes())
            got = dump(binary, s3.url("c/a.bpz"), s3.options())
            check(got.returncode == 0 and got.stdout == expected.stdout, "s3:// dump differs from the file's", got)

            missing = dump(binary, http.url("missing.bpz"))
            check(missing.returncode == 1 and "missing.bpz" in missing.stderr and "404" in missing.stderr,
                  "a missing object: exit 1 naming the URL", missing)

            wrong = dump(binary, s3.url("c/a.bpz"), s3.options(secret_access_key="c-wrong-secret"))
            check(wrong.returncode == 1 and "c-wrong-secret" not in wrong.stderr and S3_SECRET_KEY not in wrong.stderr
                  and "403" in wrong.stderr, "a wrong secret: exit 1, no credential in the message", wrong)

            refused = dump(binary, http.url("a.bpz"), None, "--versions")
            check(refused.returncode == 2 and "latest version only" in refused.stderr,
                  "--versions with a URL: a usage error", refused)
    print("c_dump_remote: bpz_dump over http:// and s3:// matches the local file; errors checked")


if __name__ == "__main__":
    main()
