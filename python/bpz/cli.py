"""The ``bpz`` command: inspect, verify and convert archives.

    bpz ls FILE            tensors: name, dtype, shape, storage, filter, sizes
    bpz info FILE          version, writer, totals, compression ratio, tree, metadata
    bpz cat FILE NAME      print one tensor
    bpz verify FILE...     check every checksum (exit status 1 on corruption);
                           --decode also decodes, within one budget per file
    bpz convert SRC DST    between .bpz, BrainPy .bp, .safetensors and .npz;
                           SRC may be a directory of .bp checkpoints to migrate
    bpz log FILE           the versions of an archive saved with append=True
    bpz diff A[@V] B[@V]   tensors added, removed and changed between two archives or
                           versions, from their content hashes (no tensor data read)
    bpz compact FILE --keep-last N   keep the last N versions, reclaiming the rest
Add --json for machine-readable output. Exit codes and conversion rules: :data:`EPILOG`.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import stat
import sys
import time
import traceback
import unicodedata
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from . import formats
from .errors import (
    BpzError,
    CheckpointNotFoundError,
    FormatError,
    InvalidArgumentError,
    InvalidCheckpointPath,
    LimitExceededError,
    OutOfMemoryError,
    RecoveredArchiveWarning,
    TensorNotFoundError,
)
from .pytree import flatten, unflatten
from .read import _is_url
from .read import open as open_archive

__all__ = ["main", "EXIT_OK", "EXIT_DATA", "EXIT_USAGE", "EXIT_IO", "EXIT_INTERNAL", "EXIT_INTERRUPTED"]

EXIT_OK = 0
EXIT_DATA = 1
EXIT_USAGE = 2
EXIT_IO = 3
EXIT_INTERNAL = 4
EXIT_INTERRUPTED = 130

EPILOG = """\
exit status:
  0    success
  1    bad data: a file is corrupt, truncated, hostile or not in a format bpz reads
       (bpz verify: a checksum failed; with --decode, a chunk did not decode or the
       file would decode to more than --max-decoded-bytes)
  2    usage: a bad command line, or a refusal, with nothing written: DST exists
       (--force replaces it), the conversion would lose data (--lossy accepts the
       loss), the output format cannot hold a dtype, two inputs would get one output
       name, an output would replace an input, an unknown output suffix, no such tensor
  3    I/O: no such file, a directory or special file where a file is expected,
       permission denied, disk full, out of memory
  4    an internal error of bpz (BPZ_DEBUG=1 shows the traceback)
  130  interrupted
Each failure is one line on stderr, "bpz <command>: <file>: <cause>"; with several
files the exit status is the largest code met. A closed output pipe is not an error.

bpz verify checks every stored byte against its checksum and that padding is zero, in one
read of the file, decoding nothing; --decode also decodes every compressed chunk, within
one budget for the whole file (--max-decoded-bytes; default 256 x the file's size, at
least 4 GiB), so a small file declaring terabytes is refused instead of decoded.

conversions (bpz convert) never lose data silently:
  .bpz          holds everything
  .safetensors  arrays of its dtypes (no complex128); the tree's structure, its
                non-array values and the metadata go into __metadata__ ("bpz.tree",
                "bpz.metadata"), so bpz -> safetensors -> bpz is exact
  .npz          a flat name -> array map of NumPy dtypes (no bfloat16/float8): other
                values, the structure and the metadata would be lost
  .bp, .msgpack lists/tuples/namedtuples come back as dicts, non-string keys as
                strings, OrderedDicts as dicts; no metadata
  A conversion that would lose something is refused, naming what and where, unless
  --lossy is given; a dtype the target cannot hold is always refused. Outputs are
  written to a temporary file, flushed to disk and renamed: a failed conversion
  leaves no partial file and the previous DST intact.
  A directory SRC: every BrainPy .bp file in it (by content) becomes DST/<name>.bpz
  (".bp"/".msgpack" replaced, any other suffix kept: ckpt.1000 -> ckpt.1000.bpz).
  All outputs are planned first; if two inputs would get the same output name (names
  compared ignoring case and Unicode normalization), an output would replace an input,
  or outputs exist without --force, nothing is written. DST inside SRC is not walked.
  Symlinked files resolving outside SRC and symlinked directories are skipped with a
  notice; special files (FIFOs, devices) are skipped.
"""


VERIFY_HELP = """\
Checks every stored byte of each archive against its checksum (the superblock, every
chunk, the index, the trailer) and that all padding is zero, without decoding anything:
the time is that of reading the file once, however much data it declares.

--decode also decodes every compressed chunk, which finds chunks that match their checksum
but do not decode (a file written that way by a faulty or hostile writer, not damaged
later). A small file can declare terabytes of zeros, so the decoded size of the whole
file's compressed chunks may be at most --max-decoded-bytes (default: 256 times the file's
size, and at least 4 GiB); over it, the file is refused (exit status 1) before anything is
decoded.
"""


def _byte_count(text: str) -> int:
    """``--max-decoded-bytes``: a positive number of bytes, optionally with a binary unit (64G, 512MiB)."""
    from ._legacy._common import parse_bytes

    try:
        value = parse_bytes(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of bytes (e.g. 68719476736 or 64G)")
    return value


class _Failure(Exception):
    """A failure to report as one line ``bpz <command>: <file>: <cause>`` with exit ``code``."""

    def __init__(self, file: str, cause: str, code: int) -> None:
        super().__init__(f"{file}: {cause}")
        self.file, self.cause, self.code = file, cause, code


_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
#: Longest cause printed (hostile files carry megabyte-long names).
_MAX_CAUSE = 1000


def _printable(text: str, limit: int = _MAX_CAUSE) -> str:
    """One line, no terminal control characters, bounded length."""
    text = _UNPRINTABLE.sub(lambda m: repr(m.group())[1:-1], text)
    return text if len(text) <= limit else text[:limit] + "..."


def _classify(exc: BaseException) -> tuple[int, str]:
    """Exit code and cause of an exception."""
    if isinstance(exc, _Failure):
        return exc.code, exc.cause
    if isinstance(exc, CheckpointNotFoundError):
        return EXIT_IO, "No such file or directory"
    if isinstance(exc, OSError):
        return EXIT_IO, os.strerror(exc.errno) if exc.errno else str(exc)
    if isinstance(exc, OutOfMemoryError):  # the native reader's refused allocation: its message says which
        return EXIT_IO, f"out of memory: {exc}"
    if isinstance(exc, MemoryError):
        return EXIT_IO, "out of memory"
    if isinstance(exc, (TensorNotFoundError, InvalidCheckpointPath)):
        return EXIT_USAGE, str(exc)
    if isinstance(exc, BpzError):
        return EXIT_DATA, str(exc)
    return EXIT_INTERNAL, f"internal error: {type(exc).__name__}: {exc} (set BPZ_DEBUG=1 for the traceback)"


def _as_failure(file: str, exc: BaseException) -> _Failure:
    if isinstance(exc, _Failure):
        return exc
    code, cause = _classify(exc)
    other = getattr(exc, "filename", None)
    if isinstance(exc, OSError) and other is not None and os.fsdecode(other) != file:
        cause = f"{os.fsdecode(other)}: {cause}"
    # Library messages name the file already: once is enough (the absolute spelling first, since
    # the relative one is its tail).
    for name in (os.path.abspath(file), file):
        tag = f"{name}: "
        if tag in cause[:len(tag) + len("out of memory: ")]:
            cause = cause.replace(tag, "", 1)
            break
    failure = _Failure(file, cause, code)
    failure.__cause__ = exc
    return failure


def _report(command: str, failure: _Failure) -> int:
    """Prints the one line (and, with BPZ_DEBUG set, the traceback); returns the exit code."""
    if os.environ.get("BPZ_DEBUG") and failure.__cause__ is not None:
        traceback.print_exception(failure.__cause__, file=sys.stderr)
    print(f"bpz {command}: {_printable(failure.file, 4096)}: {_printable(failure.cause)}", file=sys.stderr)
    return failure.code


def _notice(command: str, file: str, text: str) -> None:
    print(f"bpz {command}: {_printable(file, 4096)}: {_printable(text)}", file=sys.stderr)


def _check_input(path: str) -> None:
    """A regular file: a directory or a FIFO/device (which could block forever) is refused.
    A URL (https://, s3://...) is checked by the remote reader when opened."""
    if _is_url(path):
        return
    mode = os.stat(path).st_mode
    if stat.S_ISDIR(mode):
        raise _Failure(path, "is a directory", EXIT_IO)
    if not stat.S_ISREG(mode):
        raise _Failure(path, "is not a regular file", EXIT_IO)


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
    _check_input(args.file)
    with open_archive(args.file) as a:
        infos = a.infos()
    if args.json:
        print(json.dumps([_info_json(i) for i in infos], indent=2))
        return EXIT_OK
    rows = [
        [i.name, i.bpz_dtype, "x".join(map(str, i.shape)) or "()", i.storage, i.filter if i.storage != "raw" else "-",
         _human(i.nbytes), _human(i.stored_bytes), f"{i.compression_ratio:.2f}"]
        for i in infos
    ]
    print(_table(rows, ["name", "dtype", "shape", "storage", "filter", "size", "stored", "ratio"], {5, 6, 7}))
    return EXIT_OK


def _info_json(i: Any) -> dict[str, Any]:
    return {
        "name": i.name, "dtype": i.bpz_dtype, "shape": list(i.shape), "storage": i.storage, "filter": i.filter,
        "codec": i.codec, "chunks": i.chunks, "encoded_chunks": i.encoded_chunks, "nbytes": i.nbytes,
        "stored_bytes": i.stored_bytes, "offset": i.offset,
    }


def _tree_problem(tree: Any, names: set[str]) -> str | None:
    """Why ``load`` would fail to rebuild this tree (None if it would not): the same checks, no data read."""
    if tree is None:
        return None

    def check(node: dict[str, Any]) -> None:
        if node["tensor"] not in names:
            raise FormatError(f"the tree refers to tensor {node['tensor']!r}, which the archive does not hold")

    try:
        unflatten(tree, check)
    except FormatError as e:
        return str(e)
    return None


def cmd_info(args: argparse.Namespace) -> int:
    _check_input(args.file)
    with open_archive(args.file) as a:
        infos = a.infos()
        nbytes = sum(i.nbytes for i in infos)
        stored = sum(i.stored_bytes for i in infos)
        raw = sum(1 for i in infos if i.storage == "raw")
        summary = {
            "file": a.filename,
            "format_version": "{}.{}".format(*a.version),
            "writer": a.writer,
            "file_bytes": a.file_size,
            "tensors": len(infos),
            "raw_tensors": raw,
            "compressed_tensors": len(infos) - raw,
            "tensor_bytes": nbytes,
            "stored_bytes": stored,
            "compression_ratio": round(nbytes / stored, 3) if stored else 1.0,
            "metadata": a.metadata,
            "tree": a.structure,
        }
        problem = _tree_problem(a.structure, {i.name for i in infos})
    if problem:
        summary["tree_error"] = problem
    if args.json:
        print(json.dumps(summary, indent=2, ensure_ascii=False))
    else:
        w = summary["writer"]
        print(f"file:        {summary['file']}")
        written_by = f" (written by {w['name']} {w['version']})" if w else ""
        print(f"format:      bpz {summary['format_version']}{written_by}")
        print(f"size:        {_human(summary['file_bytes'])}")
        print(f"tensors:     {len(infos)} ({raw} raw, {len(infos) - raw} compressed)")
        print(f"data:        {_human(nbytes)} stored in {_human(stored)} (ratio {summary['compression_ratio']:.2f})")
        print(f"metadata:    {json.dumps(summary['metadata'], ensure_ascii=False)}")
        print("tree:")
        print(_render_tree(summary["tree"], "  "))
    if problem:  # shown as far as it goes, then reported: loading this archive would fail
        raise _Failure(args.file, problem, EXIT_DATA)
    return EXIT_OK


def _render_tree(node: Any, indent: str) -> str:
    """The tree as indented lines; nodes of unexpected shape (a damaged file) are shown as raw JSON."""
    if node is None:
        return indent + "(none)"
    lines: list[str] = []

    def raw(value: Any) -> str:
        return _printable(json.dumps(value, ensure_ascii=False), 200)

    def walk(n: Any, label: str, pad: str) -> None:
        if not isinstance(n, dict) or not n:
            lines.append(f"{pad}{label}(invalid node) {raw(n)}")
            return
        if "tensor" in n:
            lines.append(f"{pad}{label}<tensor {raw(n['tensor'])}>")
            return
        kind, payload = next(iter(n.items()))
        if len(n) != 1:
            lines.append(f"{pad}{label}(invalid node) {raw(n)}")
        elif kind in ("dict", "ordered_dict") and isinstance(payload, list) and all(
                isinstance(p, list) and len(p) == 2 for p in payload):
            lines.append(f"{pad}{label}{kind}")
            for k, v in payload:
                walk(v, f"{raw(k)}: ", pad + "  ")
        elif kind in ("list", "tuple") and isinstance(payload, list):
            lines.append(f"{pad}{label}{kind}[{len(payload)}]")
            for i, v in enumerate(payload):
                walk(v, f"{i}: ", pad + "  ")
        elif (kind == "namedtuple" and isinstance(payload, dict) and isinstance(payload.get("fields"), list)
              and isinstance(payload.get("values"), list)):
            lines.append(f"{pad}{label}{raw(payload.get('name'))}")
            for f, v in zip(payload["fields"], payload["values"]):
                walk(v, f"{raw(f)}: ", pad + "  ")
        else:
            lines.append(f"{pad}{label}{_printable(str(kind), 200)} {raw(payload)}")

    walk(node, "", indent)
    return "\n".join(lines)


def cmd_cat(args: argparse.Namespace) -> int:
    _check_input(args.file)
    with open_archive(args.file) as a:
        arr = a.read(args.name)
    if args.json:
        print(json.dumps({"name": args.name, "dtype": str(arr.dtype), "shape": list(arr.shape),
                          "data": _jsonable(arr)}))
    else:
        with np.printoptions(threshold=args.threshold):
            print(arr)
    return EXIT_OK


def _jsonable(arr: np.ndarray) -> Any:
    if arr.dtype.kind == "c":
        return [[float(v.real), float(v.imag)] for v in arr.reshape(-1)]
    if arr.dtype.kind not in "biuf":
        arr = arr.astype(np.float32)
    return arr.tolist()


def cmd_verify(args: argparse.Namespace) -> int:
    status = EXIT_OK
    results = []
    for path in args.files:
        t0 = time.perf_counter()
        try:
            _check_input(path)
            with open_archive(path) as a:
                infos = a.infos()
                bar = Progress(f"verifying {os.path.basename(path)}", sum(i.stored_bytes for i in infos))
                if args.decode:
                    # One budget for the whole file: tensor by tensor, each within its own budget,
                    # a small file of many bombs would be decoded in full.
                    try:
                        report = a.verify(decode=True, max_decoded_bytes=args.max_decoded_bytes)
                    except LimitExceededError as e:
                        failure = _as_failure(path, e)
                        failure.cause += " (bpz verify --max-decoded-bytes N raises the budget)"
                        raise failure from None
                    bar(report["stored_bytes"])
                else:
                    done = 0
                    for info in infos:  # tensor by tensor, so the bar moves; nothing decoded
                        a.verify(info.name)
                        done += info.stored_bytes
                        bar(done)
                    a.verify_padding()  # the rest of the file was checked when it was opened
                    report = {"tensors": len(infos), "chunks": sum(i.chunks for i in infos),
                              "stored_bytes": done, "decoded_bytes": sum(i.nbytes for i in infos),
                              "decoded": False}
                bar.close()
            results.append({"file": path, "ok": True, **report, "seconds": round(time.perf_counter() - t0, 4)})
            if not args.json:
                done_what = "checked and decoded" if args.decode else "checked"
                print(f"{path}: OK ({report['tensors']} tensors, {report['chunks']} chunks, "
                      f"{_human(report['stored_bytes'])} {done_what} in {time.perf_counter() - t0:.2f} s)")
        except Exception as e:  # one file's failure is reported and the others still checked
            failure = _as_failure(path, e)
            status = max(status, _report("verify", failure))
            kind = getattr(e, "kind", None) or ("io" if failure.code == EXIT_IO else type(e).__name__)
            results.append({"file": path, "ok": False, "error": failure.cause, "kind": kind, "exit": failure.code})
    if args.json:
        print(json.dumps(results, indent=2))
    return status


# -------------------------------------------------------------------- convert

#: Output format -> the suffix ``convert`` gives the files it names itself.
_OUTPUT_SUFFIX = {"bpz": ".bpz", "bp": ".bp", "safetensors": ".safetensors", "npz": ".npz"}


def _load_any(path: str, fmt: str) -> tuple[Any, Any]:
    """``(tree, metadata)`` of a file in any format ``convert`` reads."""
    if fmt == "bpz":
        with open_archive(path) as a:
            return a.load(), a.metadata
    if fmt == "bp":
        from ._legacy import bp_msgpack

        return bp_msgpack.read_bp(path), None
    if fmt == "safetensors":
        return formats.read_safetensors_tree(path)
    if fmt == "npz":
        return formats.read_npz(path), None
    from .read import load_pytree

    load_pytree(path)  # says what the file is not (or which bpz header byte is damaged)
    raise FormatError(f"{path}: not a .bpz, .bp, .safetensors or .npz file")


def _dst_format(path: str, forced: str | None) -> str:
    if forced:
        return forced
    suffix = os.path.splitext(path)[1]
    fmt = formats.SUFFIX_FORMATS.get(suffix.lower())
    if fmt is None:
        raise _Failure(path, f"unknown output format {suffix or '(no suffix)'}: name it .bpz, .bp, .msgpack, "
                             f".safetensors or .npz, or pass --to", EXIT_USAGE)
    return fmt


def _safetensors_metadata(tree: Any, metadata: Any) -> dict[str, str]:
    """``__metadata__`` carrying what safetensors has no place for; a str -> str metadata map is
    stored as itself (readers such as transformers look for keys like "format")."""
    out: dict[str, str] = {}
    flat = isinstance(tree, dict) and "dict" in tree and all(
        isinstance(k, str) and isinstance(v, dict) and v == {"tensor": k} for k, v in tree["dict"])
    if not flat:
        out[formats.TREE_KEY] = json.dumps(tree, ensure_ascii=False, separators=(",", ":"))
    if isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values()) and not any(
            k.startswith("bpz.") for k in metadata):
        out.update(metadata)
    elif metadata is not None:
        out[formats.METADATA_KEY] = json.dumps(metadata, ensure_ascii=False, separators=(",", ":"))
    return out


def _convert_one(src: str, dst: str, out_fmt: str, args: argparse.Namespace) -> dict[str, Any]:
    """Converts one file; every failure is a :class:`_Failure` naming SRC (reading, refusals) or DST (writing)."""
    t0 = time.perf_counter()
    try:
        fmt = formats.detect_format(src)
        tree, metadata = _load_any(src, fmt)
    except Exception as e:
        raise _as_failure(src, e) from None
    try:
        tree_json, leaves = flatten(tree)
    except (TypeError, ValueError) as e:  # an array or value bpz's model has no place for
        raise _Failure(src, f"cannot convert: {e}; nothing written", EXIT_USAGE) from None
    bad = formats.unstorable(leaves, out_fmt)
    if bad:
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise _Failure(src, f".{out_fmt} cannot hold the dtype of {', '.join(bad[:3])}{more}; nothing written "
                            f"(.bpz holds every dtype)", EXIT_USAGE)
    lost = formats.losses(tree_json, metadata, out_fmt)
    if lost and not args.lossy:
        raise _Failure(src, f"converting to .{out_fmt} would lose {'; '.join(lost)}; nothing written "
                            f"(pass --lossy to accept the loss; .bpz and .safetensors keep everything)", EXIT_USAGE)
    try:
        os.makedirs(os.path.dirname(dst) or ".", exist_ok=True)
        if os.path.lexists(dst) and not args.force:  # (the bpz writer also refuses, atomically)
            raise _Failure(dst, "exists; pass --force to replace it", EXIT_USAGE)
        if out_fmt == "bpz":
            from .write import metadata_to_json, write_archive

            compression = None if args.compression == "none" else args.compression
            bar = Progress(f"writing {os.path.basename(dst)}", sum(leaf.array.nbytes for leaf in leaves))
            metadata_json = metadata_to_json(metadata, src)  # refused unless it loads with the default limits
            write_archive(dst, tree_json, leaves, metadata_json=metadata_json, compression=compression,
                          level=args.level, overwrite=args.force, progress=bar)
            bar.close()
        elif out_fmt == "bp":
            formats.write_bp(dst, tree)
        elif out_fmt == "safetensors":
            formats.write_safetensors(dst, {leaf.name: leaf.array for leaf in leaves},
                                      _safetensors_metadata(tree_json, metadata))
        else:
            formats.write_npz(dst, {leaf.name: leaf.array for leaf in leaves}, compressed=args.compression == "zstd")
    except Exception as e:
        failure = _as_failure(dst, e)
        if failure.code == EXIT_INTERNAL and isinstance(e, (TypeError, ValueError, OverflowError)):
            # the writer refused a value (an int over 64 bits for .bp, a reserved name): nothing written
            failure = _Failure(dst, f"cannot be written as .{out_fmt}: {e}; nothing written", EXIT_USAGE)
        raise failure from None
    if lost:
        _notice("convert", src, f"--lossy: {dst} does not keep {'; '.join(lost)}")
    return {"src": src, "src_format": fmt, "dst": dst, "dst_format": out_fmt, "lost": lost,
            "src_bytes": os.path.getsize(src), "dst_bytes": os.path.getsize(dst),
            "seconds": round(time.perf_counter() - t0, 4)}


def _output_name(rel: str, out_fmt: str) -> str:
    """``a/ckpt.bp`` -> ``a/ckpt.bpz``; a name without a BrainPy suffix keeps all of it (``ckpt.1000`` ->
    ``ckpt.1000.bpz``), so inputs that differ only after their last dot keep distinct outputs."""
    stem, ext = os.path.splitext(rel)
    return (stem if ext.lower() in (".bp", ".msgpack") else rel) + _OUTPUT_SUFFIX[out_fmt]


def _name_key(path: str) -> str:
    """Output names that one filesystem or another (macOS, Windows) would treat as one file."""
    return unicodedata.normalize("NFC", os.path.abspath(path)).casefold()


def _inside(path: str, root: str) -> bool:
    return os.path.commonpath([path, root]) == root


def _find_bp_files(src: str) -> tuple[list[str], int]:
    """The BrainPy .bp files under ``src`` (by content), and the exit status of what could not be read.

    Symlinked files are followed only when they resolve inside ``src``; symlinked directories are not
    walked (``os.walk``'s default); special files are skipped, since opening a FIFO blocks.
    """
    src_real = os.path.realpath(src)
    status = EXIT_OK
    found = []

    def unreadable(e: OSError) -> None:
        nonlocal status
        status = max(status, _report("convert", _as_failure(os.fsdecode(e.filename or src), e)))

    for root, dirs, files in os.walk(src, onerror=unreadable):
        for d in sorted(dirs):
            if os.path.islink(os.path.join(root, d)):
                _notice("convert", os.path.join(root, d), "skipped: a symlinked directory is not walked")
        dirs[:] = sorted(d for d in dirs if not os.path.islink(os.path.join(root, d)))
        for name in sorted(files):
            path = os.path.join(root, name)
            try:
                if os.path.islink(path):
                    target = os.path.realpath(path)
                    if not _inside(target, src_real):
                        _notice("convert", path, f"skipped: a symlink to {target}, outside {src}")
                        continue
                if not stat.S_ISREG(os.stat(path).st_mode):
                    continue
                if formats.detect_format(path) == "bp":
                    found.append(path)
            except OSError as e:
                unreadable(e)
    return found, status


def _plan_directory(src: str, dst: str, out_fmt: str, force: bool) -> tuple[list[tuple[str, str]], int]:
    """Every (input, output) pair, after checking them all: refuses (nothing written) when two inputs
    would share an output, an output would replace an input, or outputs exist without ``force``."""
    inputs, status = _find_bp_files(src)
    dst_real = os.path.realpath(dst)
    if dst_real != os.path.realpath(src) and _inside(dst_real, os.path.realpath(src)):
        # DST inside SRC: the outputs of an earlier run there are not inputs
        inputs = [p for p in inputs if not _inside(os.path.realpath(os.path.dirname(p)), dst_real)]
    jobs = [(p, os.path.join(dst, _output_name(os.path.relpath(p, src), out_fmt))) for p in inputs]
    groups: dict[str, list[tuple[str, str]]] = collections.defaultdict(list)
    for job in jobs:
        groups[_name_key(job[1])].append(job)
    clashes = [g for g in groups.values() if len(g) > 1]
    if clashes:
        text = "; ".join(f"{' and '.join(p for p, _ in g)} would all become {g[0][1]}" for g in clashes[:3])
        raise _Failure(src, f"{text}{' ...' if len(clashes) > 3 else ''}; nothing written (rename them, or "
                            f"convert them one by one)", EXIT_USAGE)
    ids = {(st.st_dev, st.st_ino) for st in map(os.stat, inputs)}
    keys = {_name_key(p) for p in inputs}
    replaced, existing = [], []
    for p, out in jobs:
        if os.path.lexists(out) or _name_key(out) in keys:
            st = os.stat(out) if os.path.exists(out) else None
            if _name_key(out) in keys or (st is not None and (st.st_dev, st.st_ino) in ids):
                replaced.append(f"{out} (from {p})")
            elif not force:
                existing.append(out)
    if replaced:
        raise _Failure(src, f"outputs would replace inputs: {', '.join(replaced[:3])}"
                            f"{' ...' if len(replaced) > 3 else ''}; nothing written (choose another DST)", EXIT_USAGE)
    if existing:
        raise _Failure(dst, f"{len(existing)} outputs exist ({', '.join(existing[:3])}"
                            f"{' ...' if len(existing) > 3 else ''}); nothing written (pass --force to replace them)",
                       EXIT_USAGE)
    return jobs, status


def cmd_convert(args: argparse.Namespace) -> int:
    if os.path.isdir(args.src):
        if os.path.lexists(args.dst) and not os.path.isdir(args.dst):
            raise _Failure(args.dst, "is not a directory (SRC is one)", EXIT_USAGE)
        out_fmt = args.to or "bpz"
        jobs, status = _plan_directory(args.src, args.dst, out_fmt, args.force)
        if not jobs and status == EXIT_OK:
            raise _Failure(args.src, "no BrainPy .bp checkpoints found", EXIT_USAGE)
    else:
        _check_input(args.src)
        if os.path.isdir(args.dst):
            raise _Failure(args.dst, "is a directory; give the output file's name", EXIT_USAGE)
        out_fmt = _dst_format(args.dst, args.to)
        if os.path.exists(args.dst) and os.path.samefile(args.src, args.dst):
            raise _Failure(args.dst, "is SRC itself; write to another name", EXIT_USAGE)
        jobs, status = [(args.src, args.dst)], EXIT_OK
    results = []
    for i, (src, dst) in enumerate(jobs, 1):
        try:
            r = _convert_one(src, dst, out_fmt, args)
        except _Failure as failure:
            status = max(status, _report("convert", failure))
            results.append({"src": src, "dst": dst, "error": failure.cause, "exit": failure.code})
            continue
        results.append(r)
        if not args.json:
            prefix = f"[{i}/{len(jobs)}] " if len(jobs) > 1 else ""
            print(f"{prefix}{src} ({r['src_format']}, {_human(r['src_bytes'])}) -> {dst} "
                  f"({r['dst_format']}, {_human(r['dst_bytes'])}) in {r['seconds']:.2f} s")
    if args.json:
        print(json.dumps(results, indent=2))
    return status


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bpz", description="Inspect, verify and convert bpz archives.",
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
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
    s = sub.add_parser("verify", help="check every checksum; exit status 1 on corruption",
                       description=VERIFY_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("files", nargs="+")
    s.add_argument("--decode", action="store_true",
                   help="also decode every compressed chunk, within --max-decoded-bytes for the whole file")
    s.add_argument("--max-decoded-bytes", type=_byte_count, default=None, metavar="N",
                   help="decode budget of --decode for each file, e.g. 64G (default: 256 x the file's size, "
                        "at least 4 GiB)")
    s.add_argument("--json", action="store_true")
    s = sub.add_parser("convert", help="convert between .bpz, .bp, .safetensors and .npz",
                       epilog=EPILOG[EPILOG.index("conversions"):],
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("src", help="a file, or a directory of BrainPy .bp checkpoints to migrate")
    s.add_argument("dst", help="a file (format from its suffix), or a directory")
    s.add_argument("--to", choices=["bpz", "bp", "safetensors", "npz"],
                   help="output format (default: from DST's suffix)")
    s.add_argument("--compression", choices=["auto", "zstd", "none"], default="auto")
    s.add_argument("--level", type=int, default=1, help="zstd level")
    s.add_argument("--force", action="store_true", help="replace an existing DST")
    s.add_argument("--lossy", action="store_true",
                   help="convert even if the target format cannot hold everything (what is dropped is printed)")
    s.add_argument("--json", action="store_true")
    s = sub.add_parser("log", help="list the versions of an archive (number, time, size added, metadata)")
    s.add_argument("file")
    s.add_argument("--json", action="store_true")
    s = sub.add_parser("diff", help="tensors added, removed and changed between two archives or versions",
                       description="A and B are archives, each optionally with @VERSION (a number, or negative "
                                   "from the latest): `bpz diff run.bpz@3 run.bpz` compares version 3 with the "
                                   "latest. Format-1.1 archives are compared by their chunks' content hashes "
                                   "without reading tensor data.")
    s.add_argument("a", metavar="A[@V]")
    s.add_argument("b", metavar="B[@V]")
    s.add_argument("--json", action="store_true")
    s = sub.add_parser("compact", help="rewrite an archive keeping only its last N versions",
                       description="Writes the kept versions (with their numbers, times and metadata) to a new "
                                   "file that atomically replaces FILE: a failed or interrupted compaction leaves "
                                   "FILE as it was.")
    s.add_argument("file")
    s.add_argument("--keep-last", type=int, required=True, metavar="N")
    s.add_argument("--json", action="store_true")
    _add_sharded_commands(sub)
    return p


# -- versions (format 1.1)


def _at_version(spec: str) -> tuple[str, int | None]:
    """``FILE@V`` -> (FILE, V); a name that exists as given, or without an integer after its
    last ``@``, is a plain file name."""
    base, at, version = spec.rpartition("@")
    if not at or (not _is_url(spec) and os.path.lexists(spec)):
        return spec, None
    try:
        return base, int(version)
    except ValueError:
        return spec, None


def _metadata_text(metadata: Any, limit: int = 60) -> str:
    text = "" if metadata is None else json.dumps(metadata, ensure_ascii=False, separators=(",", ":"))
    return text if len(text) <= limit else text[: limit - 3] + "..."


def cmd_log(args: argparse.Namespace) -> int:
    _check_input(args.file)
    with open_archive(args.file) as a:
        versions = a.versions
        recovered = a.recovered
        size = a.file_size
    if args.json:
        print(json.dumps({
            "file": args.file, "file_bytes": size, "recovered": recovered,
            "versions": [{"version": v.number, "time": v.time.isoformat() if v.time else None,
                          "bytes_added": v.bytes_added, "metadata": v.metadata} for v in versions],
        }, indent=2))
        return EXIT_OK
    rows = [[str(v.number), v.time.strftime("%Y-%m-%d %H:%M:%S") if v.time else "-", _human(v.bytes_added),
             _metadata_text(v.metadata)] for v in versions]
    print(_table(rows, ["version", "written (UTC)", "added", "metadata"], {0, 2}))
    print(f"{len(versions)} version(s), {_human(size)}")
    return EXIT_OK  # an unfinished append at the end was reported by the open (main's warning handler)


def _open_at(path: str, version: int | None) -> Any:
    """Opens ``path`` at ``version``; a failure names that file (diff has two), and a version
    the file does not hold is a usage error."""
    try:
        return open_archive(path, version=version)
    except InvalidArgumentError as e:
        raise _Failure(path, _as_failure(path, e).cause, EXIT_USAGE) from e
    except Exception as e:
        raise _as_failure(path, e) from e


def cmd_diff(args: argparse.Namespace) -> int:
    (path_a, va), (path_b, vb) = _at_version(args.a), _at_version(args.b)
    for path in (path_a, path_b):
        _check_input(path)
    with _open_at(path_a, va) as a, _open_at(path_b, vb) as b:
        d = a.diff(b)
    if args.json:
        print(json.dumps({"added": d.added, "removed": d.removed, "changed": d.changed,
                          "unchanged": len(d.unchanged), "compared_by_reading": d.compared_by_reading}, indent=2))
        return EXIT_OK
    for mark, names in (("+", d.added), ("-", d.removed), ("~", d.changed)):
        for name in names:
            print(f"{mark} {_printable(name, 4096)}")
    print(f"{len(d.added)} added, {len(d.removed)} removed, {len(d.changed)} changed, {len(d.unchanged)} unchanged"
          + (f" ({d.compared_by_reading} compared by reading their data)" if d.compared_by_reading else ""))
    return EXIT_OK


def cmd_compact(args: argparse.Namespace) -> int:
    from .write import compact

    _check_input(args.file)
    if args.keep_last < 1:
        raise _Failure(args.file, f"--keep-last must be at least 1, not {args.keep_last}", EXIT_USAGE)
    before = os.path.getsize(args.file)
    start = time.perf_counter()
    kept = compact(args.file, keep_last=args.keep_last)
    after = os.path.getsize(args.file)
    if args.json:
        print(json.dumps({"file": args.file, "kept": kept, "bytes_before": before, "bytes_after": after}))
    else:
        print(f"{args.file}: kept version(s) {', '.join(map(str, kept))}; {_human(before)} -> {_human(after)} "
              f"in {time.perf_counter() - start:.2f} s")
    return EXIT_OK


# -- issue 16: sharded checkpoints (directories written by bpz.jax.save; bpz.sharded) ----------------


def _add_sharded_commands(sub: Any) -> None:
    s = sub.add_parser("pack", help="join a sharded checkpoint directory into one archive")
    s.add_argument("src", help="a directory (or s3://, gs://, az:// prefix) holding a committed sharded checkpoint "
                   "(bpz.jax.save)")
    s.add_argument("dst", help="the archive to write (a path or URL)")
    s.add_argument("--compression", choices=["auto", "zstd", "none"], default="auto")
    s.add_argument("--force", action="store_true", help="replace an existing DST")
    s = sub.add_parser("unpack", help="split an archive into a sharded checkpoint directory")
    s.add_argument("src", help="a bpz archive")
    s.add_argument("dst", help="the directory or s3://, gs://, az:// prefix to write (must not hold a checkpoint)")
    s.add_argument("--processes", type=int, default=1, help="data files to split each array's rows over")
    s.add_argument("--compression", choices=["auto", "zstd", "none"], default="auto")


def cmd_pack(args: argparse.Namespace) -> int:
    from . import sharded

    if not sharded.is_sharded_checkpoint(args.src):
        raise _Failure(args.src, f"not a committed sharded checkpoint (a directory with {sharded.COMMIT_NAME})",
                       EXIT_USAGE)
    exists = _Failure(args.dst, "exists; nothing written (pass --force to replace it)", EXIT_USAGE)
    if not _is_url(args.dst) and os.path.lexists(args.dst) and not args.force:
        raise exists
    start = time.perf_counter()
    try:
        # A URL's options (endpoint, credentials) come from the standard environment variables;
        # the upload itself refuses an existing object without --force.
        sharded.pack(args.src, args.dst, overwrite=args.force or not _is_url(args.dst),
                     compression=None if args.compression == "none" else args.compression)
    except InvalidCheckpointPath:
        raise exists from None
    size = "" if _is_url(args.dst) else f" ({_human(os.path.getsize(args.dst))})"
    print(f"{args.src} -> {args.dst}{size} in {time.perf_counter() - start:.2f} s")
    return EXIT_OK


def cmd_unpack(args: argparse.Namespace) -> int:
    from . import sharded

    _check_input(args.src)
    if args.processes < 1:
        raise _Failure(args.src, f"--processes must be at least 1, not {args.processes}", EXIT_USAGE)
    if sharded.is_sharded_checkpoint(args.dst):
        raise _Failure(args.dst, "already holds a sharded checkpoint; nothing written", EXIT_USAGE)
    start = time.perf_counter()
    sharded.unpack(args.src, args.dst, args.processes,
                   compression=None if args.compression == "none" else args.compression)
    print(f"{args.src} -> {args.dst} ({args.processes} data files) in {time.perf_counter() - start:.2f} s")
    return EXIT_OK


_HANDLERS = {"ls": cmd_ls, "info": cmd_info, "cat": cmd_cat, "verify": cmd_verify, "convert": cmd_convert,
             "pack": cmd_pack, "unpack": cmd_unpack, "log": cmd_log, "diff": cmd_diff, "compact": cmd_compact}


def _stdout_closed() -> None:
    """The reader of our output went away (``bpz ls | head``): point stdout at /dev/null so the
    interpreter's final flush does not fail again with "Broken pipe"."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # stdout is not a real file (captured in tests)
        pass


def main(argv: Sequence[str] | None = None) -> int:
    """Runs one ``bpz`` command and returns its exit status (see :data:`EPILOG`); never raises."""
    command, args = "?", None
    try:
        try:
            args = build_parser().parse_args(argv)
        except SystemExit as e:  # --help, or a usage error argparse has printed
            return e.code if isinstance(e.code, int) else (EXIT_OK if e.code is None else EXIT_USAGE)
        command = args.command
        with warnings.catch_warnings():
            # A file ending in an unfinished append still reads (its last committed version):
            # say so as one line of the command's own, not as a Python warning with a source line.
            show = warnings.showwarning

            def notice(message: Any, category: Any, *rest: Any, **kw: Any) -> None:
                if issubclass(category, RecoveredArchiveWarning):
                    print(f"bpz {command}: {_printable(str(message))}", file=sys.stderr)
                else:
                    show(message, category, *rest, **kw)

            warnings.showwarning = notice
            status = _HANDLERS[command](args)
        sys.stdout.flush()  # here, not at exit, so a closed pipe is caught below
        return status
    except BrokenPipeError:
        _stdout_closed()
        return EXIT_OK
    except KeyboardInterrupt:
        print(f"bpz {command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:
        file = getattr(e, "file", None) or getattr(args, "file", None) or getattr(args, "src", None) or "?"
        return _report(command, _as_failure(file, e))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
