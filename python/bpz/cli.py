"""The ``bpz`` command: inspect, verify and convert archives.

    bpz ls FILE            tensors: name, dtype, shape, storage, filter, sizes
    bpz info FILE          version, writer, totals, compression ratio, tree, metadata
    bpz cat FILE NAME      print one tensor
    bpz verify FILE...     check every checksum (exit status 1 on corruption)
    bpz convert SRC DST    between .bpz, BrainPy .bp, .safetensors and .npz;
                           SRC may be a directory of .bp checkpoints to migrate
Add --json for machine-readable output.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any, Sequence

import numpy as np

from . import formats
from .errors import BpzError
from .pytree import flatten
from .read import load_pytree
from .read import open as open_archive

__all__ = ["main"]


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _table(rows: list[list[str]], header: list[str], right: set[int]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = []
    for r in [header, *rows]:
        cells = [str(c).rjust(w) if i in right else str(c).ljust(w) for i, (c, w) in enumerate(zip(r, widths))]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


#: Show a progress bar for work on more bytes than this (when stderr is a terminal).
PROGRESS_MIN_BYTES = 64 << 20


class Progress:
    """A one-line progress bar on stderr, shown only for large jobs on a terminal."""

    def __init__(self, label: str, total: int, enabled: bool | None = None) -> None:
        self.label, self.total = label, total
        self.enabled = (sys.stderr.isatty() and total >= PROGRESS_MIN_BYTES) if enabled is None else enabled
        self.t0 = time.perf_counter()

    def __call__(self, done: int, total: int | None = None) -> None:
        if not self.enabled:
            return
        total = total or self.total
        frac = done / total if total else 1.0
        bar = "#" * int(frac * 30)
        rate = done / max(time.perf_counter() - self.t0, 1e-9)
        sys.stderr.write(f"\r{self.label} [{bar:<30}] {frac:5.1%} {_human(done)}/{_human(total)} {_human(rate)}/s")
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")


def cmd_ls(args: argparse.Namespace) -> int:
    with open_archive(args.file) as a:
        infos = a.infos()
    if args.json:
        print(json.dumps([_info_json(i) for i in infos], indent=2))
        return 0
    rows = [
        [i.name, i.bpz_dtype, "x".join(map(str, i.shape)) or "()", i.storage, i.filter if i.storage != "raw" else "-",
         _human(i.nbytes), _human(i.stored_bytes), f"{i.compression_ratio:.2f}"]
        for i in infos
    ]
    print(_table(rows, ["name", "dtype", "shape", "storage", "filter", "size", "stored", "ratio"], {5, 6, 7}))
    return 0


def _info_json(i: Any) -> dict[str, Any]:
    return {
        "name": i.name, "dtype": i.bpz_dtype, "shape": list(i.shape), "storage": i.storage, "filter": i.filter,
        "codec": i.codec, "chunks": i.chunks, "encoded_chunks": i.encoded_chunks, "nbytes": i.nbytes,
        "stored_bytes": i.stored_bytes, "offset": i.offset,
    }


def cmd_info(args: argparse.Namespace) -> int:
    with open_archive(args.file) as a:
        infos = a.infos()
        nbytes = sum(i.nbytes for i in infos)
        stored = sum(i.stored_bytes for i in infos)
        raw = sum(1 for i in infos if i.storage == "raw")
        a._parse()
        summary = {
            "file": a.filename,
            "format_version": "%d.%d" % a.version,
            "writer": a.writer,
            "file_bytes": a.file_size,
            "tensors": len(infos),
            "raw_tensors": raw,
            "compressed_tensors": len(infos) - raw,
            "tensor_bytes": nbytes,
            "stored_bytes": stored,
            "compression_ratio": round(nbytes / stored, 3) if stored else 1.0,
            "metadata": a.metadata,
            "tree": a._tree,
        }
    if args.json:
        print(json.dumps(summary, indent=2, ensure_ascii=False))
        return 0
    w = summary["writer"]
    print(f"file:        {summary['file']}")
    print(f"format:      bpz {summary['format_version']}" + (f" (written by {w['name']} {w['version']})" if w else ""))
    print(f"size:        {_human(summary['file_bytes'])}")
    print(f"tensors:     {len(infos)} ({raw} raw, {len(infos) - raw} compressed)")
    print(f"data:        {_human(nbytes)} stored in {_human(stored)} (ratio {summary['compression_ratio']:.2f})")
    print(f"metadata:    {json.dumps(summary['metadata'], ensure_ascii=False)}")
    print("tree:")
    print(_render_tree(summary["tree"], "  "))
    return 0


def _render_tree(node: Any, indent: str) -> str:
    if node is None:
        return indent + "(none)"
    lines: list[str] = []

    def walk(n: Any, label: str, pad: str) -> None:
        (kind, payload), *_ = n.items() if "tensor" not in n else [("tensor", n["tensor"])]
        if kind in ("dict", "ordered_dict"):
            lines.append(f"{pad}{label}{kind}")
            for k, v in payload:
                walk(v, f"{json.dumps(k, ensure_ascii=False)}: ", pad + "  ")
        elif kind in ("list", "tuple"):
            lines.append(f"{pad}{label}{kind}[{len(payload)}]")
            for i, v in enumerate(payload):
                walk(v, f"{i}: ", pad + "  ")
        elif kind == "namedtuple":
            lines.append(f"{pad}{label}{payload['name']}")
            for f, v in zip(payload["fields"], payload["values"]):
                walk(v, f"{f}: ", pad + "  ")
        elif kind == "tensor":
            lines.append(f"{pad}{label}<tensor {payload}>")
        else:
            lines.append(f"{pad}{label}{kind} {json.dumps(payload, ensure_ascii=False)}")

    walk(node, "", indent)
    return "\n".join(lines)


def cmd_cat(args: argparse.Namespace) -> int:
    with open_archive(args.file) as a:
        arr = a.read(args.name)
    if args.json:
        print(json.dumps({"name": args.name, "dtype": str(arr.dtype), "shape": list(arr.shape), "data": _jsonable(arr)}))
    else:
        with np.printoptions(threshold=args.threshold):
            print(arr)
    return 0


def _jsonable(arr: np.ndarray) -> Any:
    if arr.dtype.kind == "c":
        return [[float(v.real), float(v.imag)] for v in arr.reshape(-1)]
    if arr.dtype.kind not in "biuf":
        arr = arr.astype(np.float32)
    return arr.tolist()


def cmd_verify(args: argparse.Namespace) -> int:
    status = 0
    results = []
    for path in args.files:
        t0 = time.perf_counter()
        try:
            with open_archive(path) as a:
                infos = a.infos()
                bar = Progress(f"verifying {os.path.basename(path)}", sum(i.stored_bytes for i in infos))
                done = 0
                for info in infos:  # tensor by tensor, so the bar moves
                    a.verify(info.name)
                    done += info.stored_bytes
                    bar(done)
                a._native().verify_padding()
                bar.close()
                report = {"tensors": len(infos), "chunks": sum(i.chunks for i in infos),
                          "stored_bytes": done, "decoded_bytes": sum(i.nbytes for i in infos)}
            results.append({"file": path, "ok": True, **report, "seconds": round(time.perf_counter() - t0, 4)})
            if not args.json:
                print(f"{path}: OK ({report['tensors']} tensors, {report['chunks']} chunks, "
                      f"{_human(report['stored_bytes'])} checked in {time.perf_counter() - t0:.2f} s)")
        except (BpzError, OSError) as e:
            status = 1
            results.append({"file": path, "ok": False, "error": str(e), "kind": getattr(e, "kind", type(e).__name__)})
            if not args.json:
                print(f"{path}: FAILED: {e}", file=sys.stderr)
    if args.json:
        print(json.dumps(results, indent=2))
    return status


def _load_any(path: str, fmt: str) -> Any:
    if fmt in ("bpz", "bp"):
        return load_pytree(path)
    if fmt == "safetensors":
        return formats.read_safetensors(path)
    if fmt == "npz":
        return formats.read_npz(path)
    raise BpzError(f"{path}: unknown format; expected .bpz, .bp, .safetensors or .npz")


def _flat_arrays(tree: Any) -> dict[str, np.ndarray]:
    _, leaves = flatten(tree)
    return {leaf.name: leaf.array for leaf in leaves}


def _dst_format(path: str, forced: str | None) -> str:
    if forced:
        return forced
    ext = os.path.splitext(path)[1].lower()
    return {".bp": "bp", ".msgpack": "bp", ".safetensors": "safetensors", ".npz": "npz"}.get(ext, "bpz")


def _convert_one(src: str, dst: str, args: argparse.Namespace) -> dict[str, Any]:
    fmt = formats.detect_format(src)
    t0 = time.perf_counter()
    tree = _load_any(src, fmt)
    out_fmt = _dst_format(dst, args.to)
    if os.path.exists(dst) and not args.force:
        raise BpzError(f"{dst} exists; pass --force to replace it")
    if out_fmt == "bpz":
        compression = None if args.compression == "none" else args.compression
        from .write import write_archive

        tree_json, leaves = flatten(tree)
        bar = Progress(f"writing {os.path.basename(dst)}", sum(leaf.array.nbytes for leaf in leaves))
        write_archive(dst, tree_json, leaves, compression=compression, level=args.level, progress=bar)
        bar.close()
    elif out_fmt == "bp":
        from ._legacy import bp_msgpack

        bp_msgpack.write_bp(dst, tree)
    elif out_fmt == "safetensors":
        formats.write_safetensors(dst, _flat_arrays(tree))
    elif out_fmt == "npz":
        formats.write_npz(dst, _flat_arrays(tree), compressed=args.compression == "zstd")
    return {"src": src, "src_format": fmt, "dst": dst, "dst_format": out_fmt,
            "src_bytes": os.path.getsize(src), "dst_bytes": os.path.getsize(dst), "seconds": round(time.perf_counter() - t0, 4)}


def cmd_convert(args: argparse.Namespace) -> int:
    if os.path.isdir(args.src):
        jobs = []
        for root, _, files in os.walk(args.src):
            for name in sorted(files):
                path = os.path.join(root, name)
                if formats.detect_format(path) == "bp":
                    rel = os.path.relpath(path, args.src)
                    jobs.append((path, os.path.join(args.dst, os.path.splitext(rel)[0] + ".bpz")))
        if not jobs:
            print(f"no BrainPy .bp checkpoints found under {args.src}", file=sys.stderr)
            return 1
    else:
        jobs = [(args.src, args.dst)]
    results, status = [], 0
    for i, (src, dst) in enumerate(jobs, 1):
        os.makedirs(os.path.dirname(dst) or ".", exist_ok=True)
        try:
            r = _convert_one(src, dst, args)
            results.append(r)
            if not args.json:
                prefix = f"[{i}/{len(jobs)}] " if len(jobs) > 1 else ""
                print(f"{prefix}{src} ({r['src_format']}, {_human(r['src_bytes'])}) -> {dst} "
                      f"({r['dst_format']}, {_human(r['dst_bytes'])}) in {r['seconds']:.2f} s")
        except (BpzError, OSError, TypeError, ValueError) as e:
            status = 1
            results.append({"src": src, "dst": dst, "error": str(e)})
            print(f"{src}: FAILED: {e}", file=sys.stderr)
    if args.json:
        print(json.dumps(results, indent=2))
    return status


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bpz", description="Inspect, verify and convert bpz archives.")
    sub = p.add_subparsers(dest="command", required=True)
    for name, help_ in [("ls", "list tensors"), ("info", "summarise an archive")]:
        s = sub.add_parser(name, help=help_)
        s.add_argument("file")
        s.add_argument("--json", action="store_true", help="machine-readable output")
    s = sub.add_parser("cat", help="print one tensor")
    s.add_argument("file")
    s.add_argument("name")
    s.add_argument("--json", action="store_true")
    s.add_argument("--threshold", type=int, default=1000, help="print arrays up to this many elements in full")
    s = sub.add_parser("verify", help="check every checksum; exit status 1 on corruption")
    s.add_argument("files", nargs="+")
    s.add_argument("--json", action="store_true")
    s = sub.add_parser("convert", help="convert between .bpz, .bp, .safetensors and .npz")
    s.add_argument("src", help="a file, or a directory of BrainPy .bp checkpoints to migrate")
    s.add_argument("dst", help="a file (format from its suffix), or a directory")
    s.add_argument("--to", choices=["bpz", "bp", "safetensors", "npz"], help="output format (default: from DST's suffix)")
    s.add_argument("--compression", choices=["auto", "zstd", "none"], default="auto")
    s.add_argument("--level", type=int, default=1, help="zstd level")
    s.add_argument("--force", action="store_true", help="replace an existing DST")
    s.add_argument("--json", action="store_true")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler = {"ls": cmd_ls, "info": cmd_info, "cat": cmd_cat, "verify": cmd_verify, "convert": cmd_convert}[args.command]
    try:
        return handler(args)
    except (BpzError, OSError, KeyError) as e:
        print(f"bpz {args.command}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
