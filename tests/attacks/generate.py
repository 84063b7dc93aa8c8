#!/usr/bin/env python3
"""Generates the adversarial corpus in ``tests/attacks/corpus/``.

    python tests/attacks/generate.py            # rewrite the corpus and expected.json
    python tests/attacks/generate.py --check    # exit 1 if the files on disk differ

Every file is built byte by byte from spec/FORMAT.md (not with the bpz writer), so it can
break any rule; checksums are recomputed after each mutation unless the point is a bad
checksum, so the hostile part reaches the stage it attacks. ``expected.json`` maps each
file name to what must happen, per stage:

* ``.bpz`` files: ``open`` (``bpz.open``), ``load`` (``Archive.load()``) and ``verify``
  (``Archive.verify()``): ``"ok"``, or the error kind (``bpz.errors`` ``.kind``:
  ``out_of_memory`` for a refused allocation), or, for errors that are not bpz errors, the
  Python class name. A stage after a failed ``open`` is not run.
* ``.bp`` files: ``read_bp`` and ``load_pytree``; ``.pkl`` files: ``load_pickle``.

``test_attacks.py`` runs every file in a subprocess with a 2 GiB address-space limit and a
timeout, and checks these expectations. Larger hostile files (100k tensors, a 2^50-byte
tensor) are made at test time, not stored. Needs ``zstandard`` and ``msgpack`` (test extras).
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import struct
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(HERE, "corpus")

MAGIC = b"\x89BPZ\r\n\x1a\n"
END_MAGIC = b"BPZ_END\n"
MiB = 1 << 20


# ------------------------------------------------------------------ crc32c (spec §1)
def _table() -> list[int]:
    out = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        out.append(c)
    return out


_T = _table()


def crc32c(data: bytes) -> int:
    c = 0xFFFFFFFF
    for b in data:
        c = _T[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


assert crc32c(b"123456789") == 0xE3069283


# ------------------------------------------------------------------ building blocks
def superblock(alignment: int = 64, major: int = 1, minor: int = 0, required: int = 0, optional: int = 0,
               magic: bytes = MAGIC) -> bytes:
    b = bytearray(64)
    b[0:8] = magic
    struct.pack_into("<HHIII", b, 8, major, minor, required, optional, alignment)
    b[60:64] = struct.pack("<I", crc32c(bytes(b[:60])))
    return bytes(b)


def trailer(index_offset: int, index_len: int, index_crc: int) -> bytes:
    b = struct.pack("<QQI", index_offset % 2**64, index_len % 2**64, index_crc)
    return b + struct.pack("<I", crc32c(b)) + END_MAGIC


def zstd_frame(data: bytes, level: int = 19, content_size: bool = True, checksum: bool = False) -> bytes:
    import zstandard

    c = zstandard.ZstdCompressor(level=level, write_content_size=content_size, write_checksum=checksum)
    if content_size:
        return c.compress(data)
    # compress() always records the size; a streaming writer of unknown length does not.
    return _stream(c, data)


def _stream(c, data: bytes) -> bytes:
    import io

    out = io.BytesIO()
    with c.stream_writer(out, closefd=False) as w:
        w.write(data)
    return out.getvalue()


class Builder:
    """Lays out a data region from offset 64 and an index, then assembles a file."""

    def __init__(self, alignment: int = 64) -> None:
        self.alignment = alignment
        self.data = bytearray()
        self.tensors: list[dict] = []

    @property
    def pos(self) -> int:
        return 64 + len(self.data)

    def put(self, payload: bytes, align: int | None = None) -> int:
        if align:
            self.data += b"\0" * ((-self.pos) % align)
        at = self.pos
        self.data += payload
        return at

    def raw(self, name: str, dtype: str, shape: list[int], payload: bytes, chunk_elems: int | None = None,
            size: int = 1) -> dict:
        n = 1
        for d in shape:
            n *= d
        chunk_elems = chunk_elems or max(n, 1)
        at = self.put(payload, self.alignment) if payload else self.pos
        step = chunk_elems * size
        chunks = [[at + i, min(step, len(payload) - i), crc32c(payload[i:i + step]), 0]
                  for i in range(0, len(payload), step)]
        t = dict(name=name, dtype=dtype, shape=shape, storage="raw", filter="none", chunk_elems=chunk_elems,
                 chunks=chunks)
        self.tensors.append(t)
        return t

    def chunked(self, name: str, dtype: str, shape: list[int], chunk_elems: int, stored: list[tuple[bytes, int]],
                filter: str = "none") -> dict:
        chunks = []
        for payload, encoded in stored:
            at = self.put(payload)
            chunks.append([at, len(payload), crc32c(payload), encoded])
        t = dict(name=name, dtype=dtype, shape=shape, storage="chunked", filter=filter, chunk_elems=chunk_elems,
                 chunks=chunks)
        self.tensors.append(t)
        return t

    def index(self, tree: object = "auto", metadata: object = None, **extra: object) -> dict:
        if tree == "auto":
            tree = {"dict": [[t["name"], {"tensor": t["name"]}] for t in self.tensors]}
        return {"tensors": self.tensors, "tree": tree, "metadata": metadata,
                "writer": {"name": "bpz-attacks", "version": "1"}, **extra}

    def file(self, index: dict | bytes | str | None = None, *, sb: bytes | None = None,
             index_crc: int | None = None, index_offset: int | None = None, index_len: int | None = None) -> bytes:
        if index is None:
            index = self.index()
        if isinstance(index, dict):
            index = json.dumps(index, separators=(",", ":"), ensure_ascii=False, allow_nan=True)
        if isinstance(index, str):
            index = index.encode("utf-8")
        head = sb if sb is not None else superblock(self.alignment)
        off = 64 + len(self.data)
        tail = trailer(off if index_offset is None else index_offset,
                       len(index) if index_len is None else index_len,
                       crc32c(index) if index_crc is None else index_crc)
        return head + bytes(self.data) + index + tail


def fixed(index_text: str) -> bytes:
    """An archive whose index is exactly ``index_text`` (no data)."""
    return Builder().file(index_text)


def base_archive() -> Builder:
    """A small valid archive: one raw F32 tensor, one zstd-compressed I32 tensor, a nested tree."""
    b = Builder()
    b.raw("net/W", "F32", [4, 4], struct.pack("<16f", *[i / 7 for i in range(16)]), chunk_elems=8, size=4)
    vals = struct.pack("<64i", *[3 * i for i in range(64)])
    b.chunked("net/idx", "I32", [64], 32, [(zstd_frame(vals[:128]), 1), (zstd_frame(vals[128:]), 1)])
    return b


# ------------------------------------------------------------------ the corpus
OK = "ok"


def E(open_: str = OK, load: str | None = None, verify: str | None = None, note: str = "") -> dict:
    """Expectations of a .bpz file; load/verify default to ok after a good open."""
    if open_ != OK:
        return {"open": open_, "note": note}
    return {"open": OK, "load": load or OK, "verify": verify or OK, "note": note}




def bpz_cases() -> dict[str, tuple[bytes, dict]]:
    cases: dict[str, tuple[bytes, dict]] = {}

    def add(name: str, data: bytes, expect: dict) -> None:
        assert name not in cases, name
        cases[name] = (data, expect)

    b = base_archive()
    add("baseline_valid.bpz", b.file(), E(note="the valid archive most cases mutate; must load"))

    # -- sizes near 2^64 and past the end
    def mutated(fn, tree="auto") -> bytes:
        bb = base_archive()
        idx = bb.index(tree=tree)
        fn(idx)
        return bb.file(idx)

    def set_chunk(t: int, c: int, field: int, value: int):
        return lambda idx: idx["tensors"][t]["chunks"][c].__setitem__(field, value)

    add("stored_len_2_64_minus_1.bpz", mutated(set_chunk(1, 0, 1, 2**64 - 1)),
        E("invalid_index", note="offset + length overflows u64: must be caught without wrapping"))
    add("offset_2_64_minus_1.bpz", mutated(set_chunk(1, 0, 0, 2**64 - 1)),
        E("invalid_index", note="offset near 2^64"))
    add("offset_2_64.bpz", mutated(set_chunk(1, 0, 0, 2**64)),
        E("invalid_index", note="an integer that does not fit 64 bits"))
    add("offset_2_53.bpz", mutated(set_chunk(1, 0, 0, 2**53)),
        E("invalid_index", note="offset over 2^53-1, far past the end"))
    add("offset_negative.bpz", mutated(set_chunk(1, 0, 0, -64)), E("invalid_index", note="negative offset"))
    add("offset_float.bpz", mutated(lambda idx: idx["tensors"][1]["chunks"][0].__setitem__(0, 64.0)),
        E("invalid_index", note="offset written as 64.0"))
    add("offset_into_index.bpz", mutated(set_chunk(1, 1, 0, base_archive().pos)),
        E("invalid_index", note="a chunk placed over the index"))
    add("offset_into_superblock.bpz", mutated(set_chunk(1, 0, 0, 0)),
        E("invalid_index", note="a chunk placed over the superblock"))
    add("length_past_end.bpz", mutated(set_chunk(1, 1, 1, 10**6)), E("invalid_index", note="length past the end"))
    add("shape_2_64.bpz", mutated(lambda idx: idx["tensors"][0].__setitem__("shape", [2**32, 2**32])),
        E("limit_exceeded", note="element count overflows u64"))
    add("shape_dim_2_64.bpz", mutated(lambda idx: idx["tensors"][0].__setitem__("shape", [2**64])),
        E("limit_exceeded", note="a shape dimension that does not fit 64 bits (over the 2^53-1 limit)"))
    add("shape_2_53_bytes.bpz", mutated(lambda idx: idx["tensors"][0].__setitem__("shape", [2**51])),
        E("limit_exceeded", note="2^51 F32 elements: 2^53 bytes, over the byte-size limit"))
    add("shape_negative.bpz", mutated(lambda idx: idx["tensors"][0].__setitem__("shape", [-4, -4])),
        E("invalid_index", note="negative dimensions whose product is right"))
    add("shape_float.bpz", mutated(lambda idx: idx["tensors"][0].__setitem__("shape", [4.0, 4])),
        E("invalid_index", note="a dimension written as 4.0"))
    add("chunk_elems_2_64.bpz", mutated(lambda idx: idx["tensors"][1].__setitem__("chunk_elems", 2**64 - 1)),
        E("limit_exceeded", note="chunk_elems near 2^64"))
    add("crc_over_32_bits.bpz", mutated(set_chunk(0, 0, 2, 2**40)), E("invalid_index", note="crc wider than 32 bits"))
    add("encoded_flag_2.bpz", mutated(set_chunk(1, 0, 3, 2)), E("invalid_index", note="encoded flag 2"))
    add("chunk_entry_3_items.bpz", mutated(lambda idx: idx["tensors"][1]["chunks"][0].pop()),
        E("invalid_index", note="a chunk entry of 3 integers"))
    add("chunk_entry_5_items.bpz", mutated(lambda idx: idx["tensors"][1]["chunks"][0].append(0)),
        E("invalid_index", note="a chunk entry of 5 integers"))

    # -- declared sizes that the data cannot back
    bb = Builder()
    bb.chunked("x", "U8", [2**50], 2**28, [(zstd_frame(b"\0" * 16), 1)])
    add("tensor_2_50_one_chunk.bpz", bb.file(),
        E("invalid_index", note="2^50 bytes declared with 1 chunk: 2^22 are needed; refused on open"))
    bb = Builder()
    bb.chunked("x", "U8", [2**50], 2**50, [(zstd_frame(b"\0" * 16), 1)])
    add("tensor_2_50_chunk_2_50.bpz", bb.file(), E("limit_exceeded", note="one chunk of 2^50 decoded bytes"))
    bb = Builder()
    frame = zstd_frame(b"\0" * 16)
    bb.chunked("x", "U8", [2**40], 2**28, [(frame, 1) for _ in range(2**12)])
    add("tensor_1_tib_tiny_file.bpz", bb.file(),
        E(load="limit_exceeded", verify="limit_exceeded",
          note="1 TiB declared in 4096 chunks of a 16-byte frame: the load is refused (more than the 2 GiB "
               "limit leaves) before allocating; verify(decode=True) refuses to decode 1 TiB (over its budget)"))

    # -- overlaps and aliasing
    def overlap_same(idx):
        c = idx["tensors"][1]["chunks"]
        c[1] = [c[0][0] + 1, c[1][1], c[1][2], 1]

    add("overlap_within_tensor.bpz", mutated(overlap_same), E("invalid_index", note="two chunks of one tensor overlap"))

    def alias(idx):
        t = json.loads(json.dumps(idx["tensors"][1]))
        t["name"] = "alias"
        idx["tensors"].append(t)

    add("two_tensors_same_bytes.bpz", mutated(alias),
        E("invalid_index", note="a second tensor reusing the first one's chunks"))

    def raw_into_chunked(idx):
        t = idx["tensors"][1]["chunks"][0]
        idx["tensors"].append(dict(name="r", dtype="U8", shape=[4], storage="raw", filter="none", chunk_elems=4,
                                   chunks=[[t[0], 4, 0, 0]]))

    add("raw_overlapping_chunked.bpz", mutated(raw_into_chunked),
        E("invalid_index", note="a raw tensor over a compressed chunk (also misaligned: either error is fine)"))

    # -- limits: rank, names, tensor count, index size, JSON depth
    add("rank_65.bpz", mutated(lambda idx: idx["tensors"][0].__setitem__("shape", [1] * 49 + [4, 4] + [1] * 14)),
        E("limit_exceeded", note="rank 65"))
    add("rank_10000.bpz", mutated(lambda idx: idx["tensors"][0].__setitem__("shape", [1] * 10000)),
        E("limit_exceeded", note="rank 10000"))

    def rename(new: str):
        def fn(idx):
            idx["tensors"][0]["name"] = new
            idx["tree"] = {"dict": [[new, {"tensor": new}], ["idx", {"tensor": "net/idx"}]]}
        return fn

    add("name_4097_bytes.bpz", mutated(rename("n" * 4097), tree=None), E("limit_exceeded", note="name of 4097 bytes"))
    add("name_4096_bytes.bpz", mutated(rename("é" * 2048), tree=None), E(note="name of exactly 4096 UTF-8 bytes: valid"))
    add("name_64k_multibyte.bpz", mutated(rename("\U0001F600" * 16384), tree=None),
        E("limit_exceeded", note="16384 four-byte characters (64 KiB)"))
    add("name_with_nul.bpz", mutated(rename("a\u0000b"), tree=None), E("invalid_index", note="NUL in a name"))
    add("name_not_string.bpz", mutated(lambda idx: idx["tensors"][0].__setitem__("name", 5)),
        E("invalid_index", note="a name that is a number"))
    add("name_empty.bpz", mutated(rename(""), tree=None), E(note="the empty name is valid (a root leaf)"))
    add("duplicate_names.bpz", mutated(lambda idx: idx["tensors"][1].__setitem__("name", "net/W")),
        E("invalid_index", note="two tensors named alike"))
    add("names_differ_by_normalization.bpz",
        mutated(lambda idx: (idx["tensors"][0].__setitem__("name", "caf\u00e9"),
                             idx["tensors"][1].__setitem__("name", "cafe\u0301")), tree=None),
        E(note="NFC and NFD spellings are different names (bytes compare): valid"))

    # index length/offset in the trailer
    bb = base_archive()
    good = bb.file()
    tail_at = len(good) - 32
    off, ln = struct.unpack_from("<QQ", good, tail_at)
    icrc = struct.unpack_from("<I", good, tail_at + 16)[0]

    def retrail(off_: int, len_: int, crc: int | None = None) -> bytes:
        return good[:tail_at] + trailer(off_, len_, icrc if crc is None else crc)

    add("index_len_256mib_plus_1.bpz", retrail(off, 256 * MiB + 1), E("limit_exceeded", note="index length over 256 MiB"))
    add("index_len_2_64_minus_1.bpz", retrail(off, 2**64 - 1), E("limit_exceeded", note="index length near 2^64"))
    add("index_offset_2_64_minus_1.bpz", retrail(2**64 - 1, ln), E("invalid_index", note="index offset near 2^64"))
    add("index_offset_wraps.bpz", retrail(2**64 - 16, ln + 16 + len(good) - 32 - off),
        E("invalid_index", note="offset + length + 32 wraps to the file length modulo 2^64"))
    add("index_offset_in_superblock.bpz", retrail(0, len(good) - 32),
        E("invalid_index", note="the index starting at offset 0 (over the superblock)"))
    add("index_len_0.bpz", retrail(len(good) - 32, 0, crc32c(b"")), E("invalid_index", note="an empty index"))

    # JSON depth: the index object is depth 1
    def nested_array(depth: int) -> str:
        return "[" * depth + "]" * depth

    add("metadata_depth_126.bpz", fixed('{"tensors":[],"metadata":' + nested_array(126) + "}"),
        E(note="index depth 127: within the limit"))
    add("metadata_depth_127.bpz", fixed('{"tensors":[],"metadata":' + nested_array(127) + "}"),
        E(note="index depth 128: at the limit"))
    add("metadata_depth_128.bpz", fixed('{"tensors":[],"metadata":' + nested_array(128) + "}"),
        E("limit_exceeded", note="index depth 129"))
    add("metadata_depth_100000.bpz", fixed('{"tensors":[],"metadata":' + nested_array(100000) + "}"),
        E("limit_exceeded", note="100000 nested arrays: refused before the recursive parser"))
    add("metadata_depth_in_string.bpz", fixed('{"tensors":[],"metadata":"' + "[" * 100000 + '"}'),
        E(note="brackets inside a string do not nest"))
    add("unclosed_brackets.bpz", fixed('{"tensors":[],"metadata":' + "[" * 100),
        E("invalid_index", note="unbalanced JSON (depth within the limit)"))

    def tree_levels(levels: int, kind: str = "dict") -> dict:
        node: dict = {"tensor": "x"}
        for i in range(levels):
            node = {"dict": [[f"k{i}", node]]} if kind == "dict" else {"list": [node]}
        return node

    bb = Builder()
    bb.raw("x", "U8", [1], b"\x07")
    add("tree_120_levels.bpz", bb.file(bb.index(tree=tree_levels(120))),
        E("limit_exceeded", note="a tree of 120 nested dicts (360 JSON levels)"))
    add("tree_41_dict_levels.bpz", bb.file(bb.index(tree=tree_levels(41))),
        E(note="41 nested dicts = JSON depth 125: valid, rebuilt without recursion trouble"))
    add("tree_62_list_levels.bpz", bb.file(bb.index(tree=tree_levels(62, "list"))),
        E(note="62 nested lists = JSON depth 126: valid"))

    # a tree that mentions one tensor many times: the tensor is decoded once
    many = {"list": [{"tensor": "x"}] * 20000}
    add("tree_same_tensor_20000_times.bpz", bb.file(bb.index(tree=many)),
        E(note="20000 references to one tensor: loads (the same array) in bounded time"))
    add("tree_cyclic_looking.bpz",
        bb.file(bb.index(tree={"dict": [["a", {"tensor": "x", "dict": [["a", {"tensor": "x"}]]}]]})),
        E(note="a tensor node with a child that names the same tensor: the tensor member wins"))
    add("tree_tensor_not_string.bpz", bb.file(bb.index(tree={"list": [{"tensor": 1}]})),
        E("invalid_index", note="a tensor node that holds a number"))
    add("tree_missing_tensor.bpz", bb.file(bb.index(tree={"list": [{"tensor": "nope"}]})),
        E("invalid_index", note="a tensor node naming no tensor"))
    add("tree_missing_tensor_deep_in_metadata_like_place.bpz",
        bb.file(bb.index(tree={"dict": [["k", {"str": "v"}]], "junk": {"tensor": "nope"}})),
        E("invalid_index", note="any object with a tensor member, anywhere in the tree, must name a tensor"))
    add("tree_is_list.bpz", bb.file(bb.index(tree=[{"tensor": "x"}])), E("invalid_index", note="tree not an object"))
    # Malformed trees: the tensors stay readable (open and verify pass); rebuilding the tree fails cleanly.
    for name, tree in {
        "tree_unknown_kind": {"set": [1, 2]},
        "tree_two_kinds": {"list": [], "tuple": []},
        "tree_empty_node": {},
        "tree_dict_not_pairs": {"dict": [["a"]]},
        "tree_dict_payload_number": {"dict": 5},
        "tree_dict_key_list": {"dict": [[[1, 2], {"none": None}]]},
        "tree_namedtuple_no_name": {"namedtuple": {"fields": ["a"], "values": [{"none": None}]}},
        "tree_namedtuple_payload_list": {"namedtuple": [1, 2]},
        "tree_int_not_digits": {"int": "12abc"},
        "tree_int_5000_digits": {"int": "9" * 5000},
        "tree_int_list": {"int": [1]},
        "tree_float_word": {"float": "nanx"},
        "tree_bytes_bad_base64": {"bytes": "%%%"},
        "tree_complex_short": {"complex": [1.0]},
        "tree_str_number": {"str": 5},
        "tree_list_payload_object": {"list": {"a": 1}},
        "tree_namedtuple_name_number": {"namedtuple": {"name": 5, "fields": ["a"], "values": [{"none": None}]}},
        "tree_namedtuple_too_few_values": {"namedtuple": {"name": "P", "fields": ["a", "b"], "values": []}},
    }.items():
        expect = E(load="invalid_index", note="a malformed tree node: open/verify pass; load raises FormatError")
        add(f"{name}.bpz", bb.file(bb.index(tree={"list": [{"tensor": "x"}, tree]})), expect)
    add("tree_namedtuple_bad_type_name.bpz",
        bb.file(bb.index(tree={"namedtuple": {"name": "1 bad", "fields": ["a"], "values": [{"tensor": "x"}]}})),
        E(note="a type name that is not an identifier: loads as a generic namedtuple"))
    add("tree_namedtuple_fields_numbers.bpz",
        bb.file(bb.index(tree={"namedtuple": {"name": "P", "fields": [1, 2], "values": [{"none": None}] * 2}})),
        E(note="field names that are numbers: loads (namedtuple renames them)"))

    # -- JSON that is not JSON, or is ambiguous
    good_idx = base_archive().index()
    text = json.dumps(good_idx, separators=(",", ":"))
    for name, (needle, repl, kind, note) in {
        "nan_in_metadata": ('"metadata":null', '"metadata":NaN', "invalid_index", "NaN"),
        "infinity_in_metadata": ('"metadata":null', '"metadata":[Infinity,-Infinity]', "invalid_index", "Infinity"),
        "number_1e400_in_metadata": ('"metadata":null', '"metadata":1e400', "invalid_index", "overflows binary64"),
        "number_1e400_in_unknown_member": ('"metadata":null', '"metadata":null,"future":1e400', "invalid_index",
                                           "overflows binary64 in a member the reader ignores"),
        "number_underflow_in_metadata": ('"metadata":null', '"metadata":1e-400', OK, "underflows to 0: valid"),
        "nan_in_shape": ('"shape":[4,4]', '"shape":[NaN,4]', "invalid_index", "NaN as a dimension"),
        "shape_exponent": ('"shape":[4,4]', '"shape":[4e0,4]', "invalid_index", "4e0 is not an integer"),
        "shape_minus_zero": ('"shape":[4,4]', '"shape":[-0,4]', "invalid_index", "-0 is not an integer"),
        "duplicate_member_in_metadata": ('"metadata":null', '"metadata":{"a":1,"a":2}', "invalid_index",
                                         "duplicate member in metadata"),
        "duplicate_member_in_tensor": ('"name":"net/W"', '"name":"net/W","name":"net/X"', "invalid_index",
                                       "duplicate member in a tensor entry"),
        "duplicate_member_in_unknown": ('"metadata":null', '"metadata":null,"future":{"a":1,"a":2}', "invalid_index",
                                        "duplicate member inside a member the reader ignores"),
        "duplicate_member_unknown_in_tensor": ('"name":"net/W"', '"name":"net/W","x":1,"x":2', "invalid_index",
                                               "duplicate unknown member in a tensor entry"),
        "duplicate_tree": ('"metadata":null', '"metadata":null,"tree":null', "invalid_index", "tree given twice"),
        "lone_surrogate_in_metadata": ('"metadata":null', '"metadata":"\\ud800"', "invalid_index",
                                       "an unpaired surrogate escape"),
        "lone_surrogate_in_unknown": ('"metadata":null', '"metadata":null,"future":"\\udc00x"', "invalid_index",
                                      "an unpaired surrogate escape in a member the reader ignores"),
        "lone_surrogate_in_name": ('"name":"net/W"', '"name":"net/W\\ud800"', "invalid_index",
                                   "an unpaired surrogate escape in a tensor name"),
        "bom": ("{", "\ufeff{", "invalid_index", "a byte-order mark"),
        "trailing_garbage": ('"version":"1"}}', '"version":"1"}} x', "invalid_index", "bytes after the object"),
        "control_char_in_string": ('"bpz-attacks"', '"bpz\u0001attacks"', "invalid_index", "a raw control character"),
    }.items():
        assert needle in text, name
        mut = text.replace(needle, repl, 1)
        expect = E(kind, note=note) if kind != OK else E(note=note)
        add(f"{name}.bpz", base_archive().file(mut), expect)

    for name, raw, note in [
        ("invalid_utf8_in_name", b'"name":"net/W\xff"', "a 0xff byte in a name"),
        ("overlong_utf8_in_name", b'"name":"net/W\xc0\xaf"', "an overlong encoding of '/'"),
        ("utf8_surrogate_in_name", b'"name":"net/W\xed\xa0\x80"', "a surrogate encoded as UTF-8 (CESU)"),
        ("invalid_utf8_in_metadata", b'"metadata":"\xfe"', "invalid UTF-8 in metadata"),
        ("invalid_utf8_in_unknown", b'"future":"\x80"', "invalid UTF-8 in an ignored member"),
        ("invalid_utf8_in_key", b'"fut\xffure":1', "invalid UTF-8 in a member name"),
    ]:
        blob = text.encode()
        if raw.startswith(b'"name"'):
            blob = blob.replace(b'"name":"net/W"', raw, 1)
        elif raw.startswith(b'"metadata"'):
            blob = blob.replace(b'"metadata":null', raw, 1)
        else:
            blob = blob.replace(b'"metadata":null', b'"metadata":null,' + raw, 1)
        add(f"{name}.bpz", base_archive().file(blob), E("invalid_index", note=note))

    for name, idx, kind, note in [
        ("index_null", "null", "invalid_index", "index is null"),
        ("index_array", "[]", "invalid_index", "index is an array"),
        ("index_no_tensors", "{}", "invalid_index", "no tensors member"),
        ("index_tensors_object", '{"tensors":{}}', "invalid_index", "tensors is an object"),
        ("index_tensor_null", '{"tensors":[null]}', "invalid_index", "a null tensor entry"),
        ("index_writer_wrong", '{"tensors":[],"writer":{"name":1}}', "invalid_index", "writer without version"),
        ("index_huge_number", '{"tensors":[],"metadata":' + "9" * 100000 + "}", OK,
         "a 100000-digit integer in metadata: a valid JSON number (an f64 that is finite? no: it overflows)"),
    ]:
        add(f"{name}.bpz", fixed(idx), E(kind, note=note) if kind != OK else E(note=note))
    # The 100000-digit number overflows binary64: the spec makes it invalid.
    cases["index_huge_number.bpz"] = (cases["index_huge_number.bpz"][0],
                                      E("invalid_index", note="a 100000-digit number: outside the binary64 range"))

    # -- superblock and trailer fields
    add("major_65535.bpz", base_archive().file(sb=superblock(major=65535)), E("unsupported_version", note="major 65535"))
    add("minor_65535.bpz", base_archive().file(sb=superblock(minor=65535)), E(note="any minor is accepted"))
    add("required_bit_31.bpz", base_archive().file(sb=superblock(required=1 << 31)),
        E("unsupported_feature", note="unknown required feature bit"))
    add("alignment_0.bpz", base_archive().file(sb=superblock(alignment=0)), E("invalid_index", note="alignment 0"))
    add("alignment_2_31.bpz", base_archive().file(sb=superblock(alignment=1 << 31)),
        E("invalid_index", note="alignment 2^31"))
    add("alignment_48.bpz", base_archive().file(sb=superblock(alignment=48)), E("invalid_index", note="not a power of 2"))
    add("magic_only.bpz", MAGIC, E("truncated", note="just the magic"))
    add("empty.bpz", b"", E("truncated", note="an empty file"))
    add("zip_header.bpz", b"PK\x03\x04" + b"\0" * 200, E("bad_magic", note="a zip file"))

    # -- data-stage attacks: decompression bombs and lying frames (checksums right)
    big = 256 * MiB
    bomb = zstd_frame(b"\0" * big)
    bb = Builder()
    bb.chunked("x", "U8", [4096], 4096, [(bomb, 1)])
    add("bomb_one_chunk.bpz", bb.file(),
        E(load="corrupt_data", verify="corrupt_data", note="4 KiB declared, the frame inflates to 256 MiB"))
    bomb_nosize = zstd_frame(b"\0" * (64 * MiB), content_size=False)
    bb = Builder()
    bb.chunked("x", "U8", [4096], 4096, [(bomb_nosize, 1)])
    add("bomb_no_content_size.bpz", bb.file(),
        E(load="corrupt_data", verify="corrupt_data", note="a frame without a content size inflating past the buffer"))
    bb = Builder()
    bb.chunked("x", "U8", [16 * big], big, [(bomb, 1) for _ in range(16)])
    add("bomb_16_chunks_of_256mib.bpz", bb.file(),
        E(load="limit_exceeded", verify=OK,
          note="a valid file: 4 GiB in 16 max-size chunks of ~8 KiB each. Loading it under a 2 GiB limit "
               "is refused before allocating; verify(decode=True) decodes one chunk at a time in bounded memory "
               "(4 GiB: within the default budget)"))
    shuf = zstd_frame(b"\0" * (64 * MiB))
    bb = Builder()
    for i in range(40):
        bb.chunked(f"t{i}", "F32", [16 * MiB], 16 * MiB, [(shuf, 1)], filter="shuffle")
    add("bomb_40_tensors_shuffle.bpz", bb.file(),
        E(load="limit_exceeded", verify=OK,
          note="valid: 40 tensors of 64 MiB (2.5 GiB) with the shuffle filter (a scratch buffer per chunk); "
               "loading under a 2 GiB limit is refused before allocating, never an abort"))
    bb = Builder()
    bb.chunked("x", "U8", [4096], 4096, [(zstd_frame(b"\0" * 4095), 1)])
    add("frame_one_byte_short.bpz", bb.file(), E(load="corrupt_data", verify="corrupt_data", note="frame 1 byte short"))
    bb = Builder()
    frame = zstd_frame(b"\1" * 4096)
    bb.chunked("x", "U8", [4096], 4096, [(frame + frame, 1)])
    add("two_frames.bpz", bb.file(), E(load="corrupt_data", verify="corrupt_data", note="two frames in one chunk"))
    bb = Builder()
    skippable = struct.pack("<II", 0x184D2A50, 4) + b"abcd"
    bb.chunked("x", "U8", [4096], 4096, [(skippable + frame, 1)])
    add("skippable_frame_first.bpz", bb.file(),
        E(load="corrupt_data", verify="corrupt_data", note="a skippable frame before the real one"))
    bb = Builder()
    bb.chunked("x", "U8", [4096], 4096, [(b"\x28\xb5\x2f\xfd" + b"\xff" * 60, 1)])
    add("frame_garbage.bpz", bb.file(), E(load="corrupt_data", verify="corrupt_data", note="a zstd magic then garbage"))
    bb = Builder()
    wl = bytearray(zstd_frame(b"\2" * 4096, content_size=False))
    bb.chunked("x", "U8", [4096], 4096, [(bytes(wl), 1)])
    add("frame_no_size_ok.bpz", bb.file(), E(note="a frame without a content size that decodes exactly: valid"))
    bb = Builder()
    # A frame header asking for a 2 GiB window (Window_Descriptor exponent 21 -> 2^31).
    hdr = b"\x28\xb5\x2f\xfd" + bytes([0x00, (21 << 3)]) + b"\x01\x00\x00"  # FHD: no size, no checksum; last raw block of 0
    bb.chunked("x", "U8", [4096], 4096, [(hdr, 1)])
    add("frame_window_2gib.bpz", bb.file(), E(load="corrupt_data", verify="corrupt_data", note="a 2 GiB window"))
    bb = Builder()
    bb.chunked("x", "BOOL", [16], 16, [(zstd_frame(b"\xff\xff"), 1)], filter="bitpack")
    add("bitpack_unused_bits.bpz", bb.file(), E(note="bit-packed booleans: valid, decode to 0/1"))
    bb = Builder()
    bb.chunked("x", "F32", [3], 3, [(zstd_frame(b"\0" * 12), 1)], filter="bitpack")
    add("bitpack_on_f32.bpz", bb.file(), E("invalid_index", note="bitpack on F32"))
    bb = Builder()
    bb.chunked("x", "U8", [4], 4, [(b"\1\2\3\4", 0)])
    payload = bytearray(bb.file())
    payload[64] ^= 1
    add("plain_chunk_bad_crc.bpz", bytes(payload),
        E(load="checksum_mismatch", verify="checksum_mismatch", note="a plain chunk's crc"))
    bb = Builder()
    bb.raw("x", "U8", [4], b"\1\2\3\4")
    bb.data += b"\0" * 60 + b"\x01" + b"\0" * 3
    add("nonzero_padding.bpz", bb.file(), E(verify="corrupt_data", note="a non-zero byte between chunks"))
    bb = Builder()
    bb.raw("x", "U8", [4], b"\1\2\3\4")
    bb.data += b"\0" * (256 << 10)
    add("zero_padding_256kib.bpz", bb.file(), E(note="256 KiB of zero padding: valid (a 3 GiB sparse one is made at "
                                                      "test time: verified in bounded memory)"))

    # an index at the limit of tensors would not be small (100k are made at test time)
    bb = Builder()
    for i in range(5000):
        bb.tensors.append(dict(name=f"t{i}", dtype="F32", shape=[0], storage="raw", filter="none", chunk_elems=1,
                               chunks=[]))
    add("tensors_5000_empty.bpz", bb.file(bb.index(tree=None)), E(note="5000 empty tensors: open in bounded time"))
    bb = Builder()
    for i in range(3):
        bb.tensors.append(dict(name=f"t{i}", dtype="F32", shape=[0, 2**53 - 1], storage="chunked", filter="shuffle",
                               chunk_elems=2**53 - 1, chunks=[]))
    add("empty_tensor_huge_dims.bpz", bb.file(bb.index(tree=None)), E(note="shape [0, 2^53-1]: 0 bytes, valid"))
    return cases


# ------------------------------------------------------------------ format 1.1 (spec §16)
_B3_IV = [0x6A09E667, 0xBB67AE85, 0x3C6EF372, 0xA54FF53A, 0x510E527F, 0x9B05688C, 0x1F83D9AB, 0x5BE0CD19]
_B3_PERM = [2, 6, 3, 10, 7, 0, 4, 13, 1, 11, 12, 5, 9, 14, 15, 8]


def _b3_compress(cv: list[int], block: bytes, block_len: int, flags: int) -> list[int]:
    m = list(struct.unpack("<16I", block))
    v = cv[:] + _B3_IV[:4] + [0, 0, block_len, flags]
    M = 0xFFFFFFFF

    def g(a: int, b: int, c: int, d: int, x: int, y: int) -> None:
        v[a] = (v[a] + v[b] + x) & M
        v[d] = ((v[d] ^ v[a]) >> 16 | (v[d] ^ v[a]) << 16) & M
        v[c] = (v[c] + v[d]) & M
        v[b] = ((v[b] ^ v[c]) >> 12 | (v[b] ^ v[c]) << 20) & M
        v[a] = (v[a] + v[b] + y) & M
        v[d] = ((v[d] ^ v[a]) >> 8 | (v[d] ^ v[a]) << 24) & M
        v[c] = (v[c] + v[d]) & M
        v[b] = ((v[b] ^ v[c]) >> 7 | (v[b] ^ v[c]) << 25) & M

    for r in range(7):
        g(0, 4, 8, 12, m[0], m[1]); g(1, 5, 9, 13, m[2], m[3]); g(2, 6, 10, 14, m[4], m[5])  # noqa: E702
        g(3, 7, 11, 15, m[6], m[7]); g(0, 5, 10, 15, m[8], m[9]); g(1, 6, 11, 12, m[10], m[11])  # noqa: E702
        g(2, 7, 8, 13, m[12], m[13]); g(3, 4, 9, 14, m[14], m[15])  # noqa: E702
        if r < 6:
            m = [m[i] for i in _B3_PERM]
    return [v[i] ^ v[i + 8] for i in range(8)]


def blake3_128(data: bytes) -> bytes:
    """BLAKE3 (default mode) truncated to 16 bytes, for inputs of one BLAKE3 chunk (≤ 1024 bytes):
    every chunk of this corpus is that small."""
    assert len(data) <= 1024
    blocks = [data[i:i + 64] for i in range(0, len(data), 64)] or [b""]
    cv = _B3_IV[:]
    for i, block in enumerate(blocks):
        flags = (1 if i == 0 else 0) | (2 | 8 if i == len(blocks) - 1 else 0)  # CHUNK_START, CHUNK_END|ROOT
        cv = _b3_compress(cv, block.ljust(64, b"\0"), len(block), flags)
    return struct.pack("<8I", *cv)[:16]


assert blake3_128(b"").hex() == "af1349b9f5f9a1a6a0404dea36dcc949"  # the BLAKE3 spec's empty-input digest

V11_DTYPES = {"F32": (12, 4), "I64": (9, 8), "U8": (2, 1)}
SECTION_KINDS = {"versions": 1, "tensors": 2, "names": 3, "shapes": 4, "chunks": 5, "tree": 6, "metadata": 7}


class V11:
    """A 1.1 file built version by version from §16: raw tensors of one chunk each, a chunk
    equal to one the previous version stored referenced instead of written. Each version's
    index is a dict of fields a case may change before ``finish`` serialises it (crcs are
    computed unless a case set them)."""

    def __init__(self) -> None:
        self.sb = superblock(minor=1, required=1)
        self.data = bytearray(self.sb)
        self.records: list[dict] = []  # version records of the committed versions
        self.stored: dict[bytes, tuple[int, int]] = {}  # hash -> (offset, length), latest version's

    def add_version(self, tensors: list[tuple[str, str, bytes]], metadata: object = None,
                    tamper=None) -> None:
        data_start = len(self.data)
        chunks, trecs, names, shapes = [], [], bytearray(), []
        stored: dict[bytes, tuple[int, int]] = {}
        for position, (name, dtype, payload) in enumerate(tensors):
            h = blake3_128(payload)
            if h in self.stored:
                off = self.stored[h][0]
            else:
                self.data += bytes(-len(self.data) % 64)
                off = len(self.data)
                self.data += payload
            stored[h] = (off, len(payload))
            code, size = V11_DTYPES[dtype]
            trecs.append(dict(name=name.encode(), position=position, shape=[len(payload) // size],
                              chunk_elems=len(payload) // size, first_chunk=len(chunks), chunk_count=1,
                              dtype=code, storage=0, filter=0))
            chunks.append(dict(offset=off, stored_length=len(payload), crc32c=crc32c(payload), encoded=0, hash=h))
        self.stored = stored
        trecs.sort(key=lambda t: t["name"])
        self.data += bytes(-len(self.data) % 64)
        index_offset = len(self.data)
        model = dict(version=(self.records[-1]["version"] + 1) if self.records else 1, time_ns=1_700_000_000 * 10**9
                     + len(self.records), data_start=data_start, tensors=trecs, chunks=chunks,
                     versions=[dict(r) for r in self.records], tree=None, metadata=metadata, extra_sections=[],
                     section_count=None, tensor_count=None, chunk_count=None, crc={})
        if tamper:
            tamper(model)
        index, head_len = self._serialise(model, index_offset)
        head_crc = model["crc"].get("head", crc32c(index[:min(head_len, len(index))]))
        pad = -(index_offset + len(index) + 32) % 64
        index += bytes(pad)
        self.data += index + trailer(index_offset, len(index), head_crc)
        self.records.append(dict(version=model["version"], time_ns=model["time_ns"], data_start=data_start,
                                 index_offset=index_offset, index_length=len(index), index_crc=head_crc))

    def _serialise(self, model: dict, index_offset: int) -> tuple[bytes, int]:
        names, shapes, trec_bytes = bytearray(), bytearray(), bytearray()
        chunk_bytes = b"".join(struct.pack("<QQIB3x", c["offset"], c["stored_length"], c["crc32c"], c["encoded"])
                               + c["hash"] for c in model["chunks"])
        for t in model["tensors"]:
            name_offset = t.get("name_offset", len(names))
            names += t["name"]
            shape_offset = t.get("shape_offset", len(shapes) // 8)
            shape = b"".join(struct.pack("<Q", d) for d in t["shape"])
            shapes += shape
            first = t["first_chunk"]
            mine = chunk_bytes[first * 40:(first + t["chunk_count"]) * 40]
            rec = struct.pack("<QIIQQQIBBBBI8x", name_offset, len(t["name"]), t["position"], shape_offset,
                              t["chunk_elems"], first, t["chunk_count"], t["dtype"], t["storage"], t["filter"],
                              len(t["shape"]), t.get("chunks_crc", crc32c(mine)))
            trec_bytes += rec + struct.pack("<I", t.get("record_crc", crc32c(rec + t["name"] + shape)))
        vers = b"".join(struct.pack("<QQQQQI4x", r["version"], r["time_ns"], r["data_start"], r["index_offset"],
                                    r["index_length"], r["index_crc"]) for r in model["versions"])
        sections = [("versions", vers), ("tensors", bytes(trec_bytes)), ("names", bytes(names)),
                    ("shapes", bytes(shapes)), ("chunks", chunk_bytes),
                    ("tree", json.dumps(model["tree"]).encode()), ("metadata", json.dumps(model["metadata"]).encode())]
        sections += model["extra_sections"]
        count = len(sections)
        body, directory = bytearray(), bytearray()
        head_len = 160 + 32 * count
        for name, content in sections:
            kind = SECTION_KINDS.get(name, name) if isinstance(name, str) else name
            where = model.get("section_at", {}).get(name, (head_len + len(body), len(content)))
            directory += struct.pack("<IIQQII", kind, 0, where[0], where[1],
                                     model["crc"].get(name, crc32c(content)), 0)
            body += content
        fixed = INDEX_MAGIC + struct.pack("<QQQQQI44x", model["version"], model["time_ns"], model["data_start"],
                                          model["tensor_count"] if model["tensor_count"] is not None
                                          else len(model["tensors"]),
                                          model["chunk_count"] if model["chunk_count"] is not None
                                          else len(model["chunks"]),
                                          model["section_count"] if model["section_count"] is not None else count)
        return fixed + self.sb + bytes(directory) + bytes(body), head_len

    def finish(self) -> bytes:
        return bytes(self.data)


INDEX_MAGIC = b"BPZINDEX"


def v11_cases() -> dict[str, tuple[bytes, dict]]:
    cases: dict[str, tuple[bytes, dict]] = {}

    def add(name: str, data: bytes, expect: dict) -> None:
        assert name not in cases, name
        cases[name] = (data, expect)

    W = struct.pack("<8f", *range(8))
    conn = struct.pack("<16q", *range(16))

    def chain(last_tamper=None, versions: int = 3) -> bytes:
        f = V11()
        for v in range(1, versions + 1):
            tensors = [("conn", "I64", conn), ("V", "F32", struct.pack("<8f", *[v] * 8))]
            if v % 2:
                tensors.append(("odd", "U8", bytes([v]) * 5))
            f.add_version(tensors, metadata={"v": v}, tamper=last_tamper if v == versions else None)
        return f.finish()

    add("v11_valid_three_versions.bpz", chain(), E(note="a valid 1.1 file of three versions (conn shared): reads"))

    def rec(i, **fields):
        def t(m):
            m["versions"][i].update(fields)
        return t

    add("v11_chain_points_forward.bpz", chain(rec(1, index_offset=10**6)),
        E("invalid_index", note="version 2's record points past the latest version's data start"))
    add("v11_chain_loops_to_latest.bpz", chain(rec(0, data_start=64 * 40)),
        E("invalid_index", note="version 1's record starts after its own index (a loop/overlap)"))
    add("v11_chain_not_from_64.bpz", chain(rec(0, data_start=128)),
        E("invalid_index", note="the first version's record does not start at 64"))

    def same_number(m):
        m["versions"][1]["version"] = m["version"]
    add("v11_chain_number_repeats.bpz", chain(same_number),
        E("invalid_index", note="an earlier version has the latest's number (numbers must increase)"))

    def huge_sections(m):
        m["section_count"] = 0xFFFFFFFF
    add("v11_section_count_2_32.bpz", chain(huge_sections),
        E("invalid_index", note="section_count 2^32-1: refused before any allocation"))

    def tensor_count(m):
        m["tensor_count"] = 2**40
    add("v11_tensor_count_2_40.bpz", chain(tensor_count),
        E("limit_exceeded", note="tensor_count 2^40 (the tensors section holds 3 records): over the 2^20 limit"))

    def chunk_count(m):
        m["chunk_count"] = 2**63
    add("v11_chunk_count_2_63.bpz", chain(chunk_count),
        E("invalid_index", note="chunk_count 2^63 (count x 40 overflows 64 bits)"))

    def section_huge(m):
        m["section_at"] = {"names": (2**63, 2**63)}
    add("v11_section_at_2_63.bpz", chain(section_huge),
        E("invalid_index", note="the names section at offset 2^63, length 2^63 (sum overflows)"))

    def name_outside(m):
        m["tensors"][0]["name_offset"] = 2**62
    add("v11_name_outside_names.bpz", chain(name_outside),
        E(load="invalid_index", verify="invalid_index", note="a tensor record's name at 2^62 in a tiny names section"))

    def shape_outside(m):
        m["tensors"][1]["shape_offset"] = 2**61
    add("v11_shape_outside_shapes.bpz", chain(shape_outside),
        E(load="invalid_index", verify="invalid_index", note="a tensor record's shape far outside the shapes section"))

    def first_chunk_outside(m):
        m["tensors"][0]["first_chunk"] = 2**40
    add("v11_first_chunk_outside.bpz", chain(first_chunk_outside),
        E(load="invalid_index", verify="invalid_index", note="first_chunk 2^40 of a table of 3 chunk records"))

    def chunk_past_end(m):
        m["chunks"][0]["offset"] = 2**62
    add("v11_chunk_offset_2_62.bpz", chain(chunk_past_end),
        E(load="invalid_index", verify="invalid_index", note="a chunk record at offset 2^62, past the data region"))

    def chunk_length_huge(m):
        m["chunks"][1]["stored_length"] = 2**62
    add("v11_chunk_length_2_62.bpz", chain(chunk_length_huge),
        E(load="invalid_index", verify="invalid_index", note="a chunk record 2^62 bytes long (a raw tensor of 32 B)"))

    def chunk_into_index(m):
        prev = m["versions"][-1]
        m["chunks"][0]["offset"] = prev["index_offset"]  # an earlier version's index, not a chunk
    add("v11_chunk_in_older_index.bpz", chain(chunk_into_index),
        E(load="invalid_index", verify="invalid_index",
          note="a chunk record pointing into an older version's index: outside every version's data (spec 16.2)"))

    def unknown_section(m):
        m["extra_sections"] = [(999, b"\xff" * 100)]
    add("v11_unknown_section_kind.bpz", chain(unknown_section),
        E(note="a section of an unknown kind: ignored (a later minor version may add some)"))

    f = V11()
    f.add_version([("a", "U8", b"x" * 8)], metadata=None)
    add("v11_one_version.bpz", f.finish(), E(note="a valid 1.1 file of one version"))

    # An unfinished append after a committed version: the reader recovers the last one.
    good = chain()
    add("v11_torn_tail_garbage.bpz", good + b"\xa5" * 3000,
        E(note="3000 bytes of garbage after the last committed version: recovered, reads version 3"))
    fake = trailer(len(good), 2**40, 0)
    add("v11_tail_declares_a_terabyte_index.bpz", good + bytes(64 - 32) + fake,
        E(note="a last trailer declaring a 2^40-byte index: not a committed trailer, the previous one is read"))
    add("v11_tail_of_trailers.bpz", good + b"".join(trailer(64, (len(good) + 64 * i) - 64 - 32 - 32, 0)
                                                    .rjust(64, b"\0") for i in range(1, 200)),
        E(note="199 trailers with bad index crcs after the last version: scanned past, version 3 read"))
    return cases


# ------------------------------------------------------------------ legacy .bp (msgpack)
def bp_cases() -> dict[str, tuple[bytes, dict]]:
    import msgpack

    cases: dict[str, tuple[bytes, dict]] = {}

    def ext_array(shape, dtype, data) -> msgpack.ExtType:
        return msgpack.ExtType(1, msgpack.packb([shape, dtype, data], use_bin_type=True))

    def add(name, data, kind, note, load_kind=None):
        cases[name] = (data, {"read_bp": kind, "load_pytree": load_kind or kind, "note": note})

    pk = lambda o: msgpack.packb(o, use_bin_type=True)  # noqa: E731
    add("bp_valid.bp", pk({"W": ext_array([2], "float32", b"\0" * 8), "n": 3}), OK, "a valid .bp file")
    add("bp_deep_nesting.bp", b"\x81\xa1a" * 20000 + b"\xc0", "limit_exceeded", "20000 nested maps")
    add("bp_deep_arrays.bp", b"\x81\xa1a" + b"\x91" * 20000 + b"\xc0", "limit_exceeded", "20000 nested arrays")
    add("bp_array_len_2_32.bp", b"\x81\xa1a\xdd\xff\xff\xff\xff", "truncated", "an array declaring 2^32-1 items")
    add("bp_map_len_2_32.bp", b"\x81\xa1a\xdf\xff\xff\xff\xff", "truncated", "a map declaring 2^32-1 pairs")
    add("bp_bin_len_2_32.bp", b"\x81\xa1a\xc6\xff\xff\xff\xff", "truncated", "a bin of 2^32-1 bytes")
    add("bp_ext_len_2_32.bp", b"\x81\xa1a\xc9\xff\xff\xff\xff\x01", "truncated", "an ext of 2^32-1 bytes")
    add("bp_shape_huge.bp", pk({"a": ext_array([2**40, 2**40], "float64", b"\0" * 8)}), "invalid_index",
        "shape of 2^80 elements with 8 bytes of data")
    add("bp_shape_negative.bp", pk({"a": ext_array([-1], "float64", b"\0" * 8)}), "invalid_index", "negative dim")
    add("bp_shape_rank_100.bp", pk({"a": ext_array([1] * 100, "uint8", b"\0")}), "invalid_index", "rank 100")
    add("bp_dtype_object.bp", pk({"a": ext_array([1], "object", b"\0" * 8)}), "invalid_index", "dtype object")
    add("bp_dtype_structured.bp", pk({"a": ext_array([1], "float64,int32", b"\0" * 12)}), "invalid_index",
        "a structured dtype spec")
    add("bp_dtype_void.bp", pk({"a": ext_array([1], "V8", b"\0" * 8)}), "invalid_index", "a void dtype")
    add("bp_dtype_huge_str.bp", pk({"a": ext_array([1], "str" + "9" * 30, b"\0" * 8)}), "invalid_index",
        "a str dtype of absurd width")
    add("bp_ext_unknown.bp", pk({"a": msgpack.ExtType(99, b"xx")}), "invalid_index", "unknown ext type 99")
    add("bp_timestamp.bp", b"\x81\xa1a\xd6\xff\x00\x00\x00\x01", "invalid_index", "a msgpack timestamp")
    add("bp_non_str_key.bp", pk({1: 2}), "invalid_index", "an int map key", load_kind="bad_magic")
    add("bp_chunked_lies.bp", pk({"a": {"__msgpack_chunked_array__": True, "shape": {"0": 10**12},
                                        "chunks": {"0": ext_array([4], "uint8", b"\0" * 4)}}}), "invalid_index",
        "a chunked array whose shape does not match its chunks")
    add("bp_complex_nested_ext.bp", pk({"a": msgpack.ExtType(2, pk([msgpack.ExtType(1, b"x"), 1.0]))}),
        "invalid_index", "an ext inside a complex payload")
    add("bp_truncated.bp", pk({"W": ext_array([1000], "float64", b"\0" * 8000)})[:-100], "truncated", "cut short")
    # many arrays that each fit, adding up past 2x the file size: impossible without lying lengths;
    # the budget guards a reader bug, not a file; a shared-looking structure is just copies here.
    return cases


# ------------------------------------------------------------------ malicious pickles
def pkl_cases() -> dict[str, tuple[bytes, dict]]:
    cases: dict[str, tuple[bytes, dict]] = {}
    marker = "/tmp/bpz-attack-pwned"

    def add(name, data, kind, note):
        cases[name] = (data, {"load_pickle": kind, "note": note})

    def reduce_call(module: str, fn: str, arg: str) -> bytes:
        # protocol 2: GLOBAL module fn, then a 1-tuple argument, REDUCE
        return (b"\x80\x02c" + module.encode() + b"\n" + fn.encode() + b"\n" + b"X" +
                struct.pack("<I", len(arg)) + arg.encode() + b"\x85R.")

    add("pkl_os_system.pkl", reduce_call("os", "system", f"touch {marker}"), "invalid_index", "os.system")
    add("pkl_posix_system.pkl", reduce_call("posix", "system", f"touch {marker}"), "invalid_index", "posix.system")
    add("pkl_builtins_eval.pkl", reduce_call("builtins", "eval", f"open('{marker}','w')"), "invalid_index", "eval")
    add("pkl_builtins_exec.pkl", reduce_call("__builtin__", "exec", f"open('{marker}','w')"), "invalid_index",
        "exec via the Python 2 module name")
    add("pkl_import.pkl", reduce_call("builtins", "__import__", "os"), "invalid_index", "__import__")
    add("pkl_getattr.pkl", reduce_call("builtins", "getattr", "x"), "invalid_index", "getattr")
    add("pkl_subprocess.pkl", reduce_call("subprocess", "getoutput", f"touch {marker}"), "invalid_index",
        "subprocess.getoutput")
    add("pkl_numpy_load.pkl", reduce_call("numpy", "load", marker), "invalid_index", "numpy.load")
    add("pkl_runstring.pkl", reduce_call("numpy.testing._private.utils", "runstring", "1"), "invalid_index",
        "numpy's runstring")
    add("pkl_copyreg.pkl", reduce_call("copyreg", "_reconstructor", "x"), "invalid_index", "copyreg._reconstructor")
    # INST / OBJ opcodes name a class too
    add("pkl_inst.pkl", b"(S'touch " + marker.encode() + b"'\nios\nsystem\n.", "invalid_index", "INST os.system")
    add("pkl_persistent_id.pkl", b"\x80\x02X\x01\x00\x00\x00aQ.", "invalid_index", "a persistent id")
    # resource exhaustion
    add("pkl_memo_2_31.pkl", b"\x80\x02]r\xff\xff\xff\x7f.", "limit_exceeded", "memo index 2^31-1")
    add("pkl_binbytes8_huge.pkl", b"\x80\x04\x8e" + struct.pack("<Q", 2**62) + b"x.", "truncated",
        "BINBYTES8 declaring 2^62 bytes")
    add("pkl_bytearray8_huge.pkl", b"\x80\x05\x96" + struct.pack("<Q", 2**40) + b"x.", "truncated",
        "BYTEARRAY8 declaring 2^40 bytes")
    add("pkl_deep_lists.pkl", b"\x80\x02" + b"]" * 10 + b"(" * 200000 + b".", "invalid_index",
        "200000 MARKs without closing")
    add("pkl_deep_nesting.pkl", b"\x80\x02" + b"(" * 100000 + b"l" * 100000 + b".", "limit_exceeded",
        "lists nested 100000 deep")
    add("pkl_bytes_of_int.pkl", b"\x80\x02c__builtin__\nbytes\nJ\x00\x00\x00\x40\x85R.", "invalid_index",
        "bytes(2^30): an allocation by count")
    # Reported: the stand-ins of safe_pickle.py raise FormatError without the file's name.
    cases["pkl_bytes_of_int.pkl"][1]["message_defect"] = "the error does not name the file"
    # numpy arrays lying about their size
    import numpy as np

    one = pickle.dumps(np.zeros(1), protocol=2)
    assert one.count(b"K\x01\x85") == 1
    add("pkl_array_shape_2_40.pkl", one.replace(b"K\x01\x85", b"\x8a\x06\x00\x00\x00\x00\x00\x01\x85"),
        "invalid_index", "an ndarray of shape (2^40,) with 8 bytes")
    add("pkl_dtype_object.pkl",
        pickle.dumps(__import__("numpy").array([1, "a"], dtype=object), protocol=2), "invalid_index",
        "an object array (its items are pickled objects)")
    shared: list = [0] * 10
    for _ in range(30):
        shared = [shared] * 10
    billion = pickle.dumps(shared, protocol=2)[:-1]
    add("pkl_billion_laughs.pkl", billion + b".", OK,
        "lists sharing lists 10-fold, 30 deep (10^30 paths): resolved once per object")
    return cases


def all_cases() -> dict[str, tuple[bytes, dict]]:
    out = {}
    for part in (bpz_cases(), v11_cases(), bp_cases(), pkl_cases()):
        out.update(part)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="compare with the files on disk instead of writing")
    ap.add_argument("--out", default=CORPUS)
    args = ap.parse_args()
    cases = all_cases()
    expected = {name: expect for name, (_, expect) in sorted(cases.items())}
    text = json.dumps(expected, indent=1, ensure_ascii=False) + "\n"
    if args.check:
        bad = [n for n, (data, _) in cases.items()
               if not os.path.exists(os.path.join(args.out, n)) or open(os.path.join(args.out, n), "rb").read() != data]
        on_disk = set(os.listdir(args.out)) - {"expected.json"}
        bad += sorted(on_disk - set(cases))
        if open(os.path.join(args.out, "expected.json")).read() != text:
            bad.append("expected.json")
        print("\n".join(bad) or "corpus up to date")
        return 1 if bad else 0
    os.makedirs(args.out, exist_ok=True)
    for old in os.listdir(args.out):
        os.remove(os.path.join(args.out, old))
    total = 0
    for name, (data, _) in sorted(cases.items()):
        with open(os.path.join(args.out, name), "wb") as f:
            f.write(data)
        total += len(data)
    with open(os.path.join(args.out, "expected.json"), "w") as f:
        f.write(text)
    print(f"{len(cases)} files, {total} bytes in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
