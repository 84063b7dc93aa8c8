"""Archives written by the Python API with random trees, read by every reader.

The C program (through libbpz), the Go reader and the pure-Python reader (both
written from spec/FORMAT.md alone) must report the same names, dtypes, shapes
and SHA-256 of every tensor's bytes as the reference reader.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import shutil
import subprocess
import sys

import ml_dtypes
import numpy as np
import pytest

import bpz

ROOT = pathlib.Path(__file__).resolve().parents[2]
TARGET = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
sys.path.insert(0, str(ROOT / "spec" / "readers" / "python"))
import bpz_reader  # noqa: E402

DTYPES = [np.bool_, np.uint8, np.uint16, np.uint32, np.uint64, np.int8, np.int16, np.int32, np.int64,
          np.float16, np.float32, np.float64, np.complex64, np.complex128, ml_dtypes.bfloat16,
          ml_dtypes.float8_e4m3fn, ml_dtypes.float8_e5m2, ml_dtypes.float8_e4m3fnuz, ml_dtypes.float8_e5m2fnuz,
          ml_dtypes.float8_e8m0fnu]
ODD_KEYS = ["plain", "with/slash", "tilde~0", "tab\there", "new\nline", "back\\slash", "ünï", "", "0", "~2"]


def _need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{tool} is needed for the cross-language test")
        pytest.skip(f"{tool} not installed")
    return path


@pytest.fixture(scope="module")
def c_dump(tmp_path_factory) -> str:
    _need("cargo")
    cc = _need(os.environ.get("CC", "cc"))
    subprocess.run(["cargo", "build", "-q", "-p", "bpz-capi", "--release"], cwd=ROOT, check=True)
    lib = TARGET / "release"
    out = tmp_path_factory.mktemp("c") / "bpz_dump"
    src = ROOT / "rust" / "bpz-capi" / "tests" / "c"
    subprocess.run([cc, "-std=c99", "-O2", f"-I{ROOT / 'include'}", "-o", str(out), str(src / "bpz_dump.c"),
                    str(src / "sha256.c"), f"-L{lib}", "-lbpz", f"-Wl,-rpath,{lib}"], check=True)
    return str(out)


@pytest.fixture(scope="module")
def go_dump(tmp_path_factory) -> str:
    go = _need("go")
    out = tmp_path_factory.mktemp("go") / "bpzdump"
    subprocess.run([go, "build", "-o", str(out), "./cmd/bpzdump"], cwd=ROOT / "spec" / "readers" / "go", check=True)
    return str(out)


def _escape(name: str) -> str:
    out = []
    for byte in name.encode():
        c = chr(byte)
        if c == "\\":
            out.append("\\\\")
        elif c in "\t\n\r":
            out.append({"\t": "\\t", "\n": "\\n", "\r": "\\r"}[c])
        elif byte < 0x20 or byte == 0x7F:
            out.append(f"\\x{byte:02x}")
        else:
            out.append(c)
    return "".join(out).encode("latin-1").decode("utf-8")


def _random_tree(rng: np.random.Generator):
    tree: dict = {}
    for i in range(int(rng.integers(1, 9))):
        dtype = DTYPES[int(rng.integers(len(DTYPES)))]
        rank = int(rng.integers(0, 4))
        shape = tuple(int(rng.integers(0, 40)) for _ in range(rank))
        n = int(np.prod(shape, dtype=np.int64))
        itemsize = np.dtype(dtype).itemsize
        if dtype is np.bool_:
            arr = rng.random(shape) < 0.1
        elif rng.random() < 0.4:  # compressible: runs and constants
            arr = np.repeat(rng.integers(0, 3, max(n // 7 + 1, 1), dtype=np.uint8), 7)[:n]
            arr = np.frombuffer(np.resize(arr, n * itemsize).tobytes(), dtype=dtype).reshape(shape)
        else:
            arr = np.frombuffer(rng.bytes(n * itemsize), dtype=dtype).reshape(shape)
        key = ODD_KEYS[int(rng.integers(len(ODD_KEYS)))] + (str(i) if rng.random() < 0.7 else "")
        parent = tree.setdefault("group", {}) if rng.random() < 0.5 else tree
        parent[key] = arr
    tree["list"] = [np.arange(int(rng.integers(1, 50)), dtype=np.int32), 3]
    return tree


@pytest.fixture(scope="module")
def archives(tmp_path_factory) -> list[pathlib.Path]:
    rng = np.random.default_rng(20261123)
    d = tmp_path_factory.mktemp("archives")
    paths = []
    for i in range(24):
        path = d / f"a{i}.bpz"
        compression = ["auto", "zstd", None][i % 3]
        chunk = [None, 64, 1000, 7][i % 4]
        bpz.save_pytree(path, _random_tree(rng), verbose=False, compression=compression, chunk_size=chunk,
                        metadata={"i": i})
        paths.append(path)
    return paths


def _expected(path: pathlib.Path) -> list[str]:
    with bpz.open(path) as a:
        lines = []
        for info in a.infos():
            digest = hashlib.sha256(a.read(info.name).tobytes()).hexdigest()
            shape = ",".join(map(str, info.shape))
            lines.append(f"{_escape(info.name)}\t{info.bpz_dtype}\t[{shape}]\t{digest}")
    return lines


def _run(cmd: list[str]) -> list[str]:
    out = subprocess.run(cmd, capture_output=True, timeout=120)
    assert out.returncode == 0, out.stderr.decode()
    return out.stdout.decode().splitlines()


def test_c_reads_what_python_wrote(archives, c_dump):
    for path in archives:
        assert _run([c_dump, str(path)]) == _expected(path), path.name
        assert _run([c_dump, "--pread", str(path)]) == _expected(path), path.name


def test_go_reads_what_python_wrote(archives, go_dump):
    for path in archives:
        assert _run([go_dump, str(path)]) == _expected(path), path.name


def test_independent_python_reader_reads_what_python_wrote(archives):
    for path in archives:
        with bpz_reader.open_archive(path) as a:
            lines = []
            for t in a.tensors:
                digest = hashlib.sha256(a.read(t.name)).hexdigest()
                lines.append(f"{_escape(t.name)}\t{t.dtype}\t[{','.join(map(str, t.shape))}]\t{digest}")
            a.verify()
            assert a.metadata == {"i": int(path.stem[1:])}
        assert lines == _expected(path), path.name
