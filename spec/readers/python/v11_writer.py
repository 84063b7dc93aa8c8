"""A small writer of bpz 1.1 archives (spec/FORMAT.md section 16), for the tests of the
independent reader: versions appended in place, chunks deduplicated by content hash, the
binary index. Written from the spec like the reader, but it shares nothing with it except
crc32c and BLAKE3 (both checked against their published check values in the tests).

Every structure goes through a plain-dict *model* before it is serialised, and the tests'
``tamper`` hooks edit the model to build invalid files: a value a hook sets explicitly
(a crc, a reserved field, an offset) is written as given; everything it leaves alone is
computed, so one test breaks exactly one rule.
"""
from __future__ import annotations

import json
import struct

import numpy as np
import zstandard
from bpz_reader import END_MAGIC, MAGIC, blake3, crc32c

DTYPES = {  # numpy dtype -> (bpz name, 16.2 dtype code)
    "bool": ("BOOL", 1), "uint8": ("U8", 2), "uint16": ("U16", 3), "uint32": ("U32", 4), "uint64": ("U64", 5),
    "int8": ("I8", 6), "int16": ("I16", 7), "int32": ("I32", 8), "int64": ("I64", 9), "float16": ("F16", 10),
    "float32": ("F32", 12), "float64": ("F64", 13), "complex64": ("C64", 14), "complex128": ("C128", 15),
}
FILTER_CODES = {"none": 0, "shuffle": 1, "delta_shuffle": 2, "bitpack": 3}


def superblock(alignment: int = 64, minor: int = 1, required: int = 1) -> bytes:
    sb = MAGIC + struct.pack("<HHIII", 1, minor, required, 0, alignment) + bytes(36)
    return sb + struct.pack("<I", crc32c(sb))


def trailer(index_offset: int, index_length: int, index_crc: int) -> bytes:
    t = struct.pack("<QQI", index_offset, index_length, index_crc)
    return t + struct.pack("<I", crc32c(t)) + END_MAGIC


def encode(filter_name: str, data: bytes, s: int) -> bytes:
    """Section 5's filter, then one zstd frame."""
    d = np.frombuffer(data, np.uint8)
    if filter_name == "bitpack":
        f = np.packbits(d, bitorder="little").tobytes()
    else:
        if filter_name == "delta_shuffle":
            words = d.view(f"<u{s}")
            d = np.diff(words, prepend=np.zeros(1, words.dtype)).astype(words.dtype).view(np.uint8)
        f = d.reshape(-1, s).T.tobytes() if filter_name != "none" else data
    return zstandard.ZstdCompressor().compress(f)


class V11Writer:
    """Builds a 1.1 file in memory: ``append`` adds a committed version, ``bytes()`` is the file."""

    def __init__(self, alignment: int = 64):
        self.alignment = alignment
        self.buf = bytearray(superblock(alignment))
        self.records: list[dict] = []  # versions records of the committed versions
        self.number = 0
        self._chunks: dict = {}  # dedup key -> (offset, stored_length, crc) of the last version
        self._raw: dict = {}  # raw tensor key -> its chunk records

    def bytes(self) -> bytes:
        return bytes(self.buf)

    def _align(self) -> None:
        self.buf += bytes(-len(self.buf) % self.alignment)

    def _store(self, t: dict, chunks_by_key: dict, raw_by_key: dict) -> list[dict]:
        arr = np.ascontiguousarray(t["array"])
        data, s, n = arr.tobytes(), arr.dtype.itemsize, arr.size
        storage, filter_name = t.get("storage", "raw"), t.get("filter", "none")
        chunk_elems = t.get("chunk_elems") or max(n, 1)
        pieces = [data[i * chunk_elems * s:(i + 1) * chunk_elems * s] for i in range(-(-n // chunk_elems))] if n else []
        hashes = [blake3(p, 16) for p in pieces]
        if storage == "raw":  # shared only as a whole (16.6), so it stays one mappable run
            key = (tuple(hashes), len(data))
            if key in self._raw and not t.get("no_dedup"):
                chunks = self._raw[key]
            else:
                if pieces:
                    self._align()
                chunks = []
                for p, h in zip(pieces, hashes):
                    chunks.append({"offset": len(self.buf), "stored_length": len(p), "crc": crc32c(p),
                                   "encoded": 0, "hash": h})
                    self.buf += p
            raw_by_key[key] = chunks
            return [dict(c) for c in chunks]
        chunks = []
        for p, h in zip(pieces, hashes):
            stored, encoded = p, 0
            if t.get("encode", True):
                frame = encode(filter_name, p, s)
                if len(frame) < len(p):
                    stored, encoded = frame, 1
            key = (h, len(p), encoded, filter_name, s)
            if key in self._chunks and not t.get("no_dedup"):
                offset, length, crc = self._chunks[key]
            else:
                offset, length, crc = len(self.buf), len(stored), crc32c(stored)
                self.buf += stored
            chunks_by_key[key] = (offset, length, crc)
            chunks.append({"offset": offset, "stored_length": length, "crc": crc, "encoded": encoded, "hash": h})
        return chunks

    def append(self, tensors: list[dict], *, tree=None, metadata=None, time_ns: int | None = None,
               writer: dict | None = None, number: int | None = None, tamper=None, tamper_dir=None) -> dict:
        """Append one version. ``tensors``: dicts with name, array, and optionally storage
        ("raw"/"chunked"), filter, chunk_elems, encode (default True), no_dedup."""
        data_start = len(self.buf)
        chunks_by_key, raw_by_key = {}, {}
        stored = [(t, self._store(t, chunks_by_key, raw_by_key)) for t in tensors]
        self.number = number if number is not None else self.number + 1
        model = self._model(stored, data_start, tree, metadata, time_ns, writer)
        if tamper:
            tamper(model)
        index_offset = len(self.buf)
        index, head_crc = self._serialise(model, index_offset, tamper_dir)
        self.buf += index
        self.buf += trailer(index_offset, len(index), model.get("head_crc", head_crc))
        self.records.append({"version": model["head"]["version"], "time_ns": model["head"]["time_ns"],
                             "data_start": model["head"]["data_start"], "index_offset": index_offset,
                             "index_length": len(index), "index_crc": head_crc})
        self._chunks, self._raw = chunks_by_key, raw_by_key
        return self.records[-1]

    def _model(self, stored, data_start, tree, metadata, time_ns, writer) -> dict:
        order = sorted(range(len(stored)), key=lambda i: stored[i][0]["name"].encode())
        names, shapes, chunks, records = b"", [], [], []
        for i in order:
            t, tchunks = stored[i]
            arr = np.asarray(t["array"])
            dtype_name, dtype_code = DTYPES[arr.dtype.name]
            name = t["name"].encode()
            records.append({"name_offset": len(names), "name_length": len(name), "position": i,
                            "shape_offset": len(shapes), "chunk_elems": t.get("chunk_elems") or max(arr.size, 1),
                            "first_chunk": len(chunks), "chunk_count": len(tchunks), "dtype": dtype_code,
                            "storage": 0 if t.get("storage", "raw") == "raw" else 1,
                            "filter": FILTER_CODES[t.get("filter", "none")], "rank": arr.ndim, "reserved": bytes(8)})
            names += name
            shapes += list(arr.shape)
            chunks += [dict(c, reserved=bytes(3)) for c in tchunks]
        if tree is None:
            tree = {"dict": [[t["name"], {"tensor": t["name"]}] for t, _ in stored]}
        as_json = lambda v: json.dumps(v, separators=(",", ":")).encode()  # noqa: E731
        return {
            "head": {"magic": b"BPZINDEX", "version": self.number,
                     "time_ns": 1_700_000_000_000_000_000 + self.number if time_ns is None else time_ns,
                     "data_start": data_start, "tensor_count": len(records), "chunk_count": len(chunks)},
            "superblock": bytes(self.buf[:64]), "records": records, "names": names, "shapes": shapes,
            "chunks": chunks, "versions": [dict(r) for r in self.records],
            "json": {6: as_json(tree), 7: as_json(metadata),
                     8: as_json(writer or {"name": "v11_writer", "version": "1"})},
            "extra_sections": {}, "section_crc": {},
        }

    @staticmethod
    def _serialise(model: dict, index_offset: int, tamper_dir) -> tuple[bytes, int]:
        names, shapes_raw = model["names"], struct.pack(f"<{len(model['shapes'])}Q", *model["shapes"])
        chunk_raw = b"".join(struct.pack("<QQIB3s16s", c["offset"], c["stored_length"], c["crc"], c["encoded"],
                                         c["reserved"], c["hash"]) for c in model["chunks"])
        records = b""
        for r in model["records"]:
            rec = struct.pack("<QIIQQQIBBBBI8s", r["name_offset"], r["name_length"], r["position"], r["shape_offset"],
                              r["chunk_elems"], r["first_chunk"], r["chunk_count"], r["dtype"], r["storage"],
                              r["filter"], r["rank"],
                              r.get("chunks_crc", crc32c(chunk_raw[40 * r["first_chunk"]:
                                                                   40 * (r["first_chunk"] + r["chunk_count"])])),
                              r["reserved"])
            name = names[r["name_offset"]:r["name_offset"] + r["name_length"]]
            shape = shapes_raw[8 * r["shape_offset"]:8 * (r["shape_offset"] + r["rank"])]
            records += rec + struct.pack("<I", r.get("record_crc", crc32c(rec + name + shape)))
        versions = b"".join(struct.pack("<QQQQQII", v["version"], v["time_ns"], v["data_start"], v["index_offset"],
                                        v["index_length"], v["index_crc"], 0) for v in model["versions"])
        sections = {1: versions, 2: records, 3: names, 4: shapes_raw, 5: chunk_raw, **model["json"],
                    **model["extra_sections"]}
        sections = {k: v for k, v in sections.items() if v is not None}
        entries, body = [], b""
        for kind, raw in sections.items():  # offsets relative to the end of the head until it is known
            entries.append({"kind": kind, "offset": len(body), "length": len(raw),
                            "crc": model["section_crc"].get(kind, crc32c(raw))})
            body += raw
        if tamper_dir:
            tamper_dir(entries)
        head_length = 96 + 64 + 32 * len(entries)
        for e in entries:
            e["offset"] += head_length
        h = model["head"]
        head = struct.pack("<8sQQQQQI44x", h["magic"], h["version"], h["time_ns"], h["data_start"], h["tensor_count"],
                           h["chunk_count"], h.get("section_count", len(entries))) + model["superblock"]
        head += b"".join(struct.pack("<IIQQII", e["kind"], 0, e["offset"], e["length"], e["crc"], 0) for e in entries)
        index = head + body
        index += bytes(-(index_offset + len(index) + 32) % 64)  # the trailer ends at a multiple of 64 (16.1)
        return index, crc32c(head)
