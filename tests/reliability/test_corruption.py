"""Corruption: a flipped byte anywhere is never returned as data, and always found by verify.

For archives with raw (single- and multi-chunk) and compressed tensors (every filter), a
nested tree and metadata, single bytes are flipped at positions sampled from every region:
the superblock, each part of the index (each tensor entry, the tree, the metadata, the
writer), the trailer, raw chunks, compressed chunks and the zero padding. For each:

* ``bpz.load_pytree`` raises a ``bpz.errors.FormatError`` naming the file (and, for tensor
  data, the tensor) — or, for a padding byte, which holds no data, returns the exact data;
* ``bpz.open(...).verify()`` and ``bpz verify`` (exit status 1) always report it;
* a zero-copy view (``archive[name]`` of a raw tensor) may show the flipped byte — that is
  what makes it instant, as documented — but ``archive.verify(name)`` reports it.

Then truncation at every length of a small archive and at sampled lengths of a larger one,
and text-mode / 7-bit mangling of a whole file: a clear error, never a crash or a hang.
Environment: ``BPZ_CORRUPTION_SAMPLES`` (per region, default 12), ``BPZ_CORRUPTION_SEED``.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import struct
import subprocess
import tempfile
import sys
from collections import Counter, OrderedDict, namedtuple

import numpy as np
import pytest

import bpz
from bpz import cli
from bpz.errors import FormatError

PER_REGION = int(os.environ.get("BPZ_CORRUPTION_SAMPLES", "12"))
SEED = int(os.environ.get("BPZ_CORRUPTION_SEED", "11"))
Point = namedtuple("Point", "x y")


def make_tree(rng: np.random.Generator) -> dict:
    n = 20_000
    return {
        "net": {
            "W": rng.standard_normal((96, 64)).astype(np.float32),  # raw, several chunks
            "b": rng.standard_normal(64),  # raw, one chunk (< min size for auto)
            "E/I": {"V": np.full(n, -65.0, np.float32),  # compressed: shuffle
                    "spike": rng.random(n) < 0.05},  # compressed: bitpack
        },
        "conn": {"indices": np.sort(rng.integers(0, 10**6, n)).astype(np.int32),  # delta_shuffle
                 "weights": rng.standard_normal(n).astype(np.float16)},
        "history": [np.arange(5000, dtype=np.int64), (1, 2.5, "x"), Point(np.zeros(3), None)],
        "odict": OrderedDict([(3, np.ones(4, np.uint8)), ((1, "a"), b"bytes")]),
        "step": 1234,
    }


_SECTIONS = {1: "index: versions", 2: "index: tensor entries", 3: "index: names", 4: "index: shapes",
             5: "index: chunk records", 6: "index: tree", 7: "index: metadata", 8: "index: writer"}


def layout(data: bytes) -> tuple[dict[str, list[tuple[int, int]]], dict]:
    """Byte ranges of every region of a (format 1.1, one-version) archive: chunks from the API,
    the index's head and sections from its directory (spec 16.2)."""
    n = len(data)
    off, ln = struct.unpack_from("<QQ", data, n - 32)
    regions: dict[str, list[tuple[int, int]]] = {"superblock": [(0, 64)], "trailer": [(n - 32, n)]}
    index: dict = {"tensors": []}
    with tempfile.NamedTemporaryFile(suffix=".bpz") as f:
        f.write(data)
        f.flush()
        with bpz.open(f.name) as a:
            for name in a.keys():
                raw = a.info(name).storage == "raw"
                chunks = [[c.offset, c.stored_length, c.crc32c, int(c.encoded)] for c in a.chunks(name)]
                index["tensors"].append({"name": name, "chunks": chunks})
                for c in chunks:
                    kind = "raw chunk" if raw else ("encoded chunk" if c[3] else "plain chunk")
                    regions.setdefault(kind, []).append((c[0], c[0] + c[1]))
                    regions.setdefault(f"tensor {name}", []).append((c[0], c[0] + c[1]))
    covered = sorted((c[0], c[0] + c[1]) for t in index["tensors"] for c in t["chunks"])
    pos, pad = 64, []
    for a, b in covered + [(off, off)]:
        if a > pos:
            pad.append((pos, a))
        pos = max(pos, b)
    regions["padding"] = pad
    count = struct.unpack_from("<I", data, off + 48)[0]
    head_end = 160 + 32 * count
    regions["index: head"] = [(off, off + head_end)]
    used = [(0, head_end)]
    for k in range(count):
        kind, _, s_off, s_len = struct.unpack_from("<IIQQ", data, off + 160 + 32 * k)
        if s_len:
            regions.setdefault(_SECTIONS.get(kind, f"index: section {kind}"), []).append(
                (off + s_off, off + s_off + s_len))
            used.append((s_off, s_off + s_len))
    pos, idx_pad = 0, []
    for a, b in sorted(used) + [(ln, ln)]:
        if a > pos:
            idx_pad.append((off + pos, off + a))
        pos = max(pos, b)
    if idx_pad:
        regions["index: padding"] = idx_pad
    return regions, index


def sample_positions(ranges: list[tuple[int, int]], k: int, rng: random.Random) -> list[int]:
    total = sum(b - a for a, b in ranges)
    if total == 0:
        return []
    picks = set()
    for _ in range(k):
        x = rng.randrange(total)
        for a, b in ranges:
            if x < b - a:
                picks.add(a + x)
                break
            x -= b - a
    # the first and last byte of the region too
    picks.update({ranges[0][0], ranges[-1][1] - 1})
    return sorted(picks)


def flip(data: bytes, pos: int, rng: random.Random) -> bytes:
    out = bytearray(data)
    out[pos] ^= 1 << rng.randrange(8) if rng.random() < 0.5 else rng.randrange(1, 256)
    return bytes(out)


def tensor_at(index: dict, pos: int) -> str | None:
    for t in index["tensors"]:
        if any(c[0] <= pos < c[0] + c[1] for c in t["chunks"]):
            return t["name"]
    return None


def cli_verify(path: str) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = cli.main(["verify", path])
    return status, err.getvalue()


def same(a: object, b: object) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


ARCHIVES = {
    "auto, alignment 64, 4 KiB chunks": dict(compression="auto", chunk_size=4096),
    "zstd everywhere, 2 KiB chunks": dict(compression="zstd", chunk_size=2048),
    "raw only, alignment 4096": dict(compression=None, chunk_size=8192, alignment=4096),
}


@pytest.mark.parametrize("label", list(ARCHIVES))
def test_single_byte_flips_are_never_returned_silently(tmp_path, label):
    rng = random.Random(f"{SEED}-{label}")
    tree = make_tree(np.random.default_rng(SEED))
    src = str(tmp_path / "good.bpz")
    opts = dict(ARCHIVES[label])
    alignment = opts.pop("alignment", 64)
    if alignment != 64:
        from bpz.pytree import flatten
        from bpz.write import write_archive

        t, leaves = flatten(tree)
        write_archive(src, t, leaves, alignment=alignment, **opts)
    else:
        bpz.save_pytree(src, tree, verbose=False, **opts)
    good = open(src, "rb").read()
    original = bpz.load_pytree(src)
    regions, index = layout(good)
    expected_regions = {"superblock", "trailer", "padding", "index: tensor entries", "index: tree",
                        "index: metadata", "index: writer"}
    assert expected_regions <= set(regions)
    assert ("raw chunk" in regions) == (opts["compression"] != "zstd")
    assert ("encoded chunk" in regions) == (opts["compression"] is not None)
    bad = str(tmp_path / "bad.bpz")
    stats: Counter = Counter()
    for region, ranges in sorted(regions.items()):
        if region.startswith("tensor "):
            continue
        for pos in sample_positions(ranges, PER_REGION, rng):
            data = flip(good, pos, rng)
            with open(bad, "wb") as f:
                f.write(data)
            where = f"{label}: byte {pos} ({region})"
            owner = tensor_at(index, pos)
            # 1. load_pytree: an error naming the file (and tensor), or — padding only — the exact data
            try:
                loaded = bpz.load_pytree(bad)
            except FormatError as e:
                assert "bad.bpz" in str(e), f"{where}: {e}"
                if owner is not None:
                    assert repr(owner).replace("'", '"') in str(e) or owner in str(e), f"{where}: {e}"
                stats["load refused"] += 1
            else:
                # Padding (between chunks, or in the index outside its sections) holds no data, and a
                # load does not read the writer section (read on demand): the data must be exact.
                assert region in ("padding", "index: padding", "index: writer"), \
                    f"{where}: load_pytree returned data from a corrupt file"
                assert same(loaded, original), f"{where}: wrong data"
                stats["load ok (padding)"] += 1
            # 2. verify always finds it
            try:
                with bpz.open(bad) as a:
                    a.verify()
            except FormatError as e:
                assert "bad.bpz" in str(e), f"{where}: {e}"
                if region == "padding":
                    assert e.kind == "corrupt_data" and "padding" in str(e), f"{where}: {e}"
                if region == "index: padding":
                    assert e.kind == "corrupt_data" and "must be zero" in str(e), f"{where}: {e}"
                cause = str(e).removeprefix(f"{bad}: ")
            else:
                raise AssertionError(f"{where}: verify() missed it")
            for backend in ("pread",):
                with pytest.raises(FormatError):
                    with bpz.open(bad, backend=backend) as a:
                        a.verify()
            # 3. the CLI: exit status 1 and one line naming the file and the same cause as verify()
            status, err = cli_verify(bad)
            assert status == 1, f"{where}: bpz verify exit status {status}: {err}"
            assert err == f"bpz verify: {bad}: {cause}\n", f"{where}: {err!r} (verify(): {cause!r})"
            # 4. zero-copy views may not notice; verify(name) does
            if region == "raw chunk":
                with bpz.open(bad) as a:
                    view = a[owner]
                    assert not view.flags.writeable
                    with pytest.raises(bpz.errors.ChecksumError, match=owner.replace("/", ".")):
                        a.verify(owner)
                    stats["zero-copy view then verify(name)"] += 1
            stats[region] += 1
    print(f"corruption [{label}]:", dict(stats))
    assert sum(v for k, v in stats.items() if not k.startswith(("load", "view"))) >= 40


def test_bpz_verify_command_exits_1_on_corruption(tmp_path):
    src = str(tmp_path / "m.bpz")
    bpz.save_pytree(src, make_tree(np.random.default_rng(1)), verbose=False)
    good = open(src, "rb").read()
    regions, _ = layout(good)
    paths = []
    for i, region in enumerate(["superblock", "index: tree", "trailer", "encoded chunk", "raw chunk", "padding"]):
        a, b = regions[region][0]
        p = str(tmp_path / f"bad{i}.bpz")
        with open(p, "wb") as f:
            f.write(flip(good, (a + b) // 2, random.Random(i)))
        paths.append(p)
    out = subprocess.run([sys.executable, "-m", "bpz", "verify", src], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    causes = {  # what each damage is reported as
        "superblock": "checksum mismatch in the superblock", "index: tree": "checksum mismatch in the tree section of the index",
        # a one-version 1.1 file whose trailer does not check has no committed version (spec 16.7)
        "trailer": "truncated file: no committed version", "encoded chunk": "checksum mismatch in tensor",
        "raw chunk": "checksum mismatch in tensor", "padding": "corrupt data in the padding at offset",
    }
    for p, cause in zip(paths, causes.values()):
        out = subprocess.run([sys.executable, "-m", "bpz", "verify", p], capture_output=True, text=True, timeout=120)
        assert out.returncode == 1 and out.stdout == "", (p, out)
        lines = out.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"bpz verify: {p}: {cause}"), (p, cause, out.stderr)
    out = subprocess.run([sys.executable, "-m", "bpz", "verify", "--json", src, *paths], capture_output=True,
                         text=True, timeout=120)
    report = json.loads(out.stdout)
    assert out.returncode == 1 and [r["ok"] for r in report] == [True] + [False] * len(paths)
    assert len(out.stderr.splitlines()) == len(paths) and "Traceback" not in out.stderr
    # Several files at once: every bad one reported on its own line, in order; the good one silent.
    out = subprocess.run([sys.executable, "-m", "bpz", "verify", *paths, src], capture_output=True, text=True,
                         timeout=120)
    lines = out.stderr.splitlines()
    assert out.returncode == 1 and len(lines) == len(paths), out.stderr
    assert all(line.startswith(f"bpz verify: {p}: {c}") for line, p, c in zip(lines, paths, causes.values())), lines
    assert out.stdout.startswith(f"{src}: OK"), out.stdout


def _cuts(n: int, every: bool, rng: random.Random, index_off: int) -> list[int]:
    if every:
        return list(range(n))
    pts = {0, 1, 7, 8, 63, 64, 65, 95, 96, n // 2, index_off - 1, index_off, index_off + 1, n - 33, n - 32,
           n - 31, n - 9, n - 8, n - 1}
    pts.update(rng.randrange(n) for _ in range(40))
    return sorted(p for p in pts if 0 <= p < n)


@pytest.mark.parametrize("size", ["small", "large"])
def test_truncation_at_any_length_is_a_clear_error(tmp_path, size):
    rng = random.Random(SEED)
    src = str(tmp_path / "m.bpz")
    if size == "small":
        tree = {"a": np.arange(10, dtype=np.int16), "b": {"c": np.zeros(300, np.float32)}, "s": "text"}
    else:
        r = np.random.default_rng(3)
        tree = {"w": r.standard_normal(3_000_000).astype(np.float32), "z": np.zeros(2_000_000, np.int32)}
    bpz.save_pytree(src, tree, verbose=False, compression="auto")
    good = open(src, "rb").read()
    index_off = struct.unpack_from("<Q", good, len(good) - 32)[0]
    cut_path = str(tmp_path / "cut.bpz")
    kinds: Counter = Counter()
    cuts = _cuts(len(good), size == "small", rng, index_off)
    for n in cuts:
        with open(cut_path, "wb") as f:
            f.write(good[:n])
        with pytest.raises(bpz.errors.TruncatedError) as info:
            bpz.open(cut_path)
        assert "cut.bpz" in str(info.value)
        for backend in ("mmap", "pread"):
            with pytest.raises(bpz.errors.TruncatedError):
                bpz.open(cut_path, backend=backend)
        with pytest.raises(FormatError) as info:
            bpz.load_pytree(cut_path)
        assert "cut.bpz" in str(info.value)
        kinds[type(info.value).__name__] += 1
    print(f"truncation [{size}]: {len(cuts)} lengths of {len(good)} bytes: {dict(kinds)}")
    assert len(cuts) >= (len(good) if size == "small" else 50)


def test_text_mode_and_7_bit_mangling_are_named(tmp_path):
    src = str(tmp_path / "m.bpz")
    bpz.save_pytree(src, {"a": np.arange(100)}, verbose=False)
    good = open(src, "rb").read()
    cases = {
        "crlf_to_lf": (good.replace(b"\r\n", b"\n"), "text mode"),
        "lf_to_crlf": (good.replace(b"\n", b"\r\n"), "text mode"),
        "seven_bit": (bytes(b & 0x7F for b in good), "7-bit"),
    }
    for name, (data, words) in cases.items():
        p = str(tmp_path / f"{name}.bpz")
        with open(p, "wb") as f:
            f.write(data)
        with pytest.raises(bpz.errors.NotAnArchiveError, match=words):
            bpz.open(p)
        with pytest.raises(FormatError) as info:
            bpz.load_pytree(p)
        assert p in str(info.value)
        assert words in str(info.value)


def test_load_pytree_names_7_bit_mangling(tmp_path):
    p = str(tmp_path / "m.bpz")
    bpz.save_pytree(p, {"a": np.arange(100)}, verbose=False)
    data = bytes(b & 0x7F for b in open(p, "rb").read())
    with open(p, "wb") as f:
        f.write(data)
    with pytest.raises(FormatError, match="7-bit"):
        bpz.load_pytree(p)
