"""Memory limits and streaming of the independent reader (issue 11): a valid 132 KB file
can declare a 4 GiB tensor; the reader must refuse to allocate it unless asked, and must
be able to stream it in one chunk's memory."""
import io
import json
import struct
import subprocess
import sys
import textwrap
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
import bpz_reader as bpz  # noqa: E402
from bpz_reader import BpzFormatError, crc32c, decompress_exact, open_archive  # noqa: E402
from test_conformance import GOLDEN, VECTORS, entry, write  # noqa: E402

MiB, GiB = 1 << 20, 1 << 30


def zero_frame(n: int, *, single_segment=True, window_log=None) -> bytes:
    """One zstd frame of n zero bytes in RLE blocks of <= 128 KiB (about 4 bytes each)."""
    if single_segment:
        frame = b"\x28\xb5\x2f\xfd\xe0" + n.to_bytes(8, "little")  # 8-byte content size
    else:  # no content size; a Window_Descriptor of 2^window_log bytes
        frame = b"\x28\xb5\x2f\xfd\x00" + bytes([(window_log - 10) << 3])
    while True:
        size = min(n, 128 << 10)
        n -= size
        header = size << 3 | 1 << 1 | (n == 0)
        frame += header.to_bytes(3, "little") + b"\0"
        if n == 0:
            return frame


def bomb(path, *tensors):
    """A valid archive of all-zero tensors (name, dtype, filter, chunks, chunk_bytes) whose
    chunks are tiny zstd frames, built per spec/FORMAT.md."""
    data, entries = b"", []
    for name, dtype, filter_, nchunks, chunk_bytes in tensors:
        s = bpz.DTYPE_SIZES[dtype]
        m = chunk_bytes // s
        frame = zero_frame(bpz.filtered_size(filter_, m, s))
        chunks = []
        for _ in range(nchunks):
            chunks.append([64 + len(data), len(frame), crc32c(frame), 1])
            data += frame
        entries.append(entry(name=name, dtype=dtype, shape=[m * nchunks], storage="chunked", filter=filter_,
                             chunk_elems=m, chunks=chunks))
    return write(path, entries, data)


BOMB_4GIB = ("zeros", "U8", "none", 16, 256 * MiB)  # issue 11: 132 KB on disk


def peak_traced(fn):
    """Run fn; return (its result or exception, the peak bytes Python allocated meanwhile)."""
    tracemalloc.start()
    try:
        try:
            result = fn()
        except BpzFormatError as exc:
            result = exc
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_bomb_is_a_valid_small_file(tmp_path):
    path = bomb(tmp_path / "b.bpz", BOMB_4GIB)
    assert path.stat().st_size < 140_000
    with open_archive(path) as ar:
        assert ar.tensor("zeros").nbytes == 4 * GiB


def test_read_over_the_default_cap_fails_before_allocating(tmp_path):
    with open_archive(bomb(tmp_path / "b.bpz", BOMB_4GIB)) as ar:
        assert ar.max_read_bytes == bpz.DEFAULT_MAX_READ_BYTES == GiB
        for call in (lambda: ar.read("zeros"), lambda: ar.read_rows("zeros", 0, 2 * GiB),
                     lambda: ar.read_range("zeros", 1, GiB + 2), lambda: ar.to_numpy("zeros")):
            err, peak = peak_traced(call)
            assert isinstance(err, BpzFormatError) and err.kind == "limit_exceeded", err
            assert peak < MiB, peak
        assert "'zeros'" in str(err) and str(ar.path) in str(err) and "max_read_bytes" in str(err)
        # Within the cap a row range reads: one 256 MiB chunk decoded, 1 MiB returned.
        rows, peak = peak_traced(lambda: ar.read_rows("zeros", 3 * 256 * MiB, 3 * 256 * MiB + MiB))
        assert rows == bytes(MiB) and peak < 256 * MiB + 4 * MiB, peak


def test_caller_set_caps(tmp_path):
    path = bomb(tmp_path / "b.bpz", BOMB_4GIB, ("small", "F32", "shuffle", 4, MiB))
    with open_archive(path, max_read_bytes=64 * MiB, max_chunk_bytes=2 * MiB) as ar:
        calls = [lambda: ar.read("zeros"), lambda: ar.read_rows("zeros", 0, 1),  # 1 byte of a 256 MiB chunk
                 lambda: ar.iter_range("zeros", 0, 1), lambda: ar.iter_rows("zeros", 5, 6),
                 lambda: ar.read_to("zeros", io.BytesIO()), lambda: ar.read_rows_to("zeros", 5, 6, io.BytesIO()),
                 ar.verify]
        for i, call in enumerate(calls):
            err, peak = peak_traced(call)
            assert isinstance(err, BpzFormatError) and err.kind == "limit_exceeded", (i, err)
            assert peak < MiB, (i, peak)
            if i:
                assert "'zeros' chunk 0" in str(err) and "max_chunk_bytes" in str(err), err
        assert ar.read("small") == bytes(4 * MiB)
    with open_archive(path, max_read_bytes=MiB) as ar:  # the cap is on the result, not the tensor
        with pytest.raises(BpzFormatError, match="max_read_bytes") as err:
            ar.read("small")
        assert err.value.kind == "limit_exceeded"
        assert ar.read_rows("small", 0, MiB // 4) == bytes(MiB)
    with open_archive(path, max_read_bytes=None, max_chunk_bytes=1 << 40) as ar:  # None lifts; the format caps
        assert ar.max_read_bytes is None and ar.max_chunk_bytes == bpz.MAX_CHUNK_BYTES
    for bad in ({"max_read_bytes": -1}, {"max_chunk_bytes": 1.5}, {"max_index_bytes": "1"}):
        with pytest.raises(BpzFormatError) as err:
            open_archive(path, **bad)
        assert err.value.kind == "invalid_argument"


def test_max_index_bytes():
    path = VECTORS / "tiny.bpz"  # a 236-byte index
    open_archive(path, max_index_bytes=236).close()
    with pytest.raises(BpzFormatError, match="max_index_bytes") as err:
        open_archive(path, max_index_bytes=235)
    assert err.value.kind == "limit_exceeded" and str(path) in str(err.value)


def test_padded_frame_is_capped_by_max_chunk_bytes(tmp_path):
    """A frame padded with empty blocks is still one frame, but its stored size is no
    longer bounded by what it decodes to: the chunk cap bounds it too."""
    payload = bytes([7]) * 1000
    frame = b"\x28\xb5\x2f\xfd\x00" + bytes([7 << 3]) + b"\0\0\0" * 5000  # empty raw blocks
    frame += (len(payload) << 3 | 1).to_bytes(3, "little") + payload
    t = entry(name="p", shape=[1000], storage="chunked", chunk_elems=1000, chunks=[[64, len(frame), crc32c(frame), 1]])
    path = write(tmp_path / "p.bpz", [t], frame)
    with open_archive(path) as ar:
        assert ar.read("p") == payload
    with open_archive(path, max_chunk_bytes=1024) as ar:
        for call in (lambda: ar.read("p"), ar.verify):
            with pytest.raises(BpzFormatError, match="more than zstd needs") as err:
                call()
            assert err.value.kind == "limit_exceeded"


@pytest.mark.parametrize("path", GOLDEN, ids=lambda p: p.stem)
def test_streaming_matches_read(path):
    with open_archive(path) as ar:
        for t in ar.tensors:
            full = ar.read(t.name)
            assert b"".join(ar.iter_range(t.name, 0, t.nbytes)) == full
            sink = io.BytesIO()
            assert ar.read_to(t.name, sink) == len(full) and sink.getvalue() == full
            for start, stop in ((0, t.rows), (0, min(1, t.rows)), (t.rows // 2, t.rows), (t.rows // 3, (2 * t.rows + 2) // 3)):
                want = ar.read_rows(t.name, start, stop)
                assert b"".join(ar.iter_rows(t.name, start, stop)) == want
                sink = io.BytesIO()
                assert ar.read_rows_to(t.name, start, stop, sink) == len(want) and sink.getvalue() == want
                assert ar.read_rows(t.name, np.int64(start), np.uint32(stop)) == want
            with pytest.raises(BpzFormatError) as err:
                ar.iter_rows(t.name, 0, t.rows + 1)
            assert err.value.kind == "invalid_argument"
        with pytest.raises(BpzFormatError) as err:
            ar.iter_range("no such tensor", 0, 0)
        assert err.value.kind == "tensor_not_found"


def test_streaming_stops_at_a_bad_chunk(tmp_path):
    data = bytes(i * 7 % 256 for i in range(3000))
    chunks = [[64 + k * 1000, 1000, crc32c(data[k * 1000:(k + 1) * 1000]) ^ (k == 1), 0] for k in range(3)]
    t = entry(name="d", shape=[3000], storage="chunked", chunk_elems=1000, chunks=chunks)
    with open_archive(write(tmp_path / "d.bpz", [t], data)) as ar:
        pieces = ar.iter_range("d", 0, 3000)
        assert bytes(next(pieces)) == data[:1000]  # chunk 0: verified, yielded whole
        with pytest.raises(BpzFormatError, match="'d' chunk 1") as err:
            next(pieces)
        assert err.value.kind == "checksum_mismatch"
        sink = io.BytesIO()
        with pytest.raises(BpzFormatError) as err:
            ar.read_to("d", sink)
        assert err.value.kind == "checksum_mismatch" and sink.getvalue() == data[:1000]
        assert b"".join(ar.iter_rows("d", 2000, 3000)) == data[2000:]  # rows avoiding chunk 1


def test_streaming_and_verify_hold_one_chunk(tmp_path):
    """16 chunks of 16 MiB: streaming and verifying them never hold two."""
    with open_archive(bomb(tmp_path / "b.bpz", ("zeros", "U16", "shuffle", 16, 16 * MiB))) as ar:
        def stream():
            total = 0
            for piece in ar.iter_range("zeros", 0, 256 * MiB):
                assert not np.frombuffer(piece, np.uint8).any()
                total += len(piece)
            return total
        total, peak = peak_traced(stream)
        assert total == 256 * MiB
        assert peak < 3 * 16 * MiB + MiB, peak  # filtered, unshuffled and tobytes copies of one chunk
        _, peak = peak_traced(ar.verify)
        assert peak < 16 * MiB + MiB, peak


def test_frame_header_sizes_are_not_trusted():
    # A window of 2^30 bytes, no content size, for 64 bytes: decoded without a window buffer
    # (refusing it would conform too: section 4.3 lets decoders refuse windows that large).
    frame = zero_frame(64, single_segment=False, window_log=30)
    out, peak = peak_traced(lambda: decompress_exact(frame, 64))
    assert out == bytes(64) and peak < MiB
    # A single-segment frame's window is its content size: 256 MiB, the largest chunk, decodes.
    out, peak = peak_traced(lambda: decompress_exact(zero_frame(256 * MiB), 256 * MiB))
    assert len(out) == 256 * MiB and peak < 256 * MiB + MiB
    del out


CHILD = textwrap.dedent("""
    import json, resource, sys
    resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))
    sys.path.insert(0, sys.argv[2])
    import numpy as np
    from bpz_reader import BpzFormatError, open_archive

    def kind(fn):
        try:
            fn()
            return "ok"
        except BpzFormatError as exc:
            return exc.kind

    class ZeroSink:
        n = 0
        def write(self, piece):
            assert not np.frombuffer(piece, np.uint8).any()
            self.n += len(piece)
            return len(piece)

    with open_archive(sys.argv[1]) as ar:
        result = {"read": kind(lambda: ar.read("zeros")),
                  "read_uncapped": None}
        with open_archive(sys.argv[1], max_read_bytes=None) as ar2:
            result["read_uncapped"] = kind(lambda: ar2.read("zeros"))
        sink = ZeroSink()  # 2.25 GiB, more than the whole address space: 9 chunks
        result["read_rows_to"] = ar.read_rows_to("zeros", 0, 9 << 28, sink)
        result["received"] = sink.n
    print(json.dumps(result))
""")


def test_4gib_tensor_under_a_2gib_address_space(tmp_path):
    """The issue's file, in a child limited to 2 GiB of address space: read fails cleanly
    (also with the cap lifted: the allocation failure is an error, not a crash), and more
    bytes than the address space holds stream through read_rows_to."""
    path = bomb(tmp_path / "b.bpz", BOMB_4GIB)
    proc = subprocess.run([sys.executable, "-c", CHILD, str(path), str(Path(__file__).parent)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout) == {"read": "limit_exceeded", "read_uncapped": "limit_exceeded",
                                       "read_rows_to": 9 << 28, "received": 9 << 28}
