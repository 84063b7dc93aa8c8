package bpz

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"testing"
)

// zeroFrame is one zstd frame holding n zero bytes in RLE blocks of at most 128 KiB,
// with its content size in the header (single segment): ~4 bytes per 128 KiB.
func zeroFrame(n int) []byte {
	f := []byte{0x28, 0xB5, 0x2F, 0xFD, 0xE0} // FCS_flag 3 (8 bytes), single segment
	f = binary.LittleEndian.AppendUint64(f, uint64(n))
	for first := true; first || n > 0; first = false {
		size := min(n, zstdMaxBlock)
		n -= size
		last := uint32(0)
		if n == 0 {
			last = 1
		}
		h := uint32(size)<<3 | 1<<1 | last
		f = append(f, byte(h), byte(h>>8), byte(h>>16), 0)
	}
	return f
}

// bombTensor describes one all-zero tensor of a bomb archive.
type bombTensor struct {
	name, dtype, filter string
	chunks, chunkBytes  int
}

// bombArchive builds, per spec/FORMAT.md, a valid archive of all-zero tensors whose
// chunks are tiny zstd frames: 16 chunks of 256 MiB make a 132 KB file of 4 GiB.
func bombArchive(tensors ...bombTensor) []byte {
	var data []byte
	var entries []string
	for _, bt := range tensors {
		s, _ := DTypeSize(bt.dtype)
		m := bt.chunkBytes / s
		frame := zeroFrame(int(filteredSize(bt.filter, uint64(m), uint64(s))))
		var chunks []string
		for k := 0; k < bt.chunks; k++ {
			chunks = append(chunks, fmt.Sprintf("[%d,%d,%d,1]", 64+len(data), len(frame), crc32c(frame)))
			data = append(data, frame...)
		}
		entries = append(entries, fmt.Sprintf(
			`{"name":%q,"dtype":%q,"shape":[%d],"storage":"chunked","filter":%q,"chunk_elems":%d,"chunks":[%s]}`,
			bt.name, bt.dtype, m*bt.chunks, bt.filter, m, strings.Join(chunks, ",")))
	}
	return build(nil, data, `{"tensors":[`+strings.Join(entries, ",")+`]}`)
}

// The archive of issue 11: 132 KB on disk, one tensor of 4 GiB.
var bomb4GiB = bombTensor{"zeros", "U8", "none", 16, 256 << 20}

// allocated runs f and returns the bytes the Go heap allocated meanwhile.
func allocated(f func()) uint64 {
	var st0, st1 memStats
	st0.read()
	f()
	st1.read()
	return st1.total - st0.total
}

func TestBombArchiveIsValid(t *testing.T) {
	b := bombArchive(bomb4GiB)
	if len(b) > 140<<10 {
		t.Fatalf("bomb is %d bytes", len(b))
	}
	a, err := OpenBytes(b)
	if err != nil {
		t.Fatal(err)
	}
	ti, _ := a.Tensor("zeros")
	if ti.NBytes != 4<<30 {
		t.Fatalf("nbytes %d", ti.NBytes)
	}
	t.Logf("a %d-byte file declaring a %d-byte tensor", len(b), ti.NBytes)
}

// Read of a valid file's 4 GiB tensor must fail fast with limit_exceeded under the
// default cap, without allocating in proportion to what the file declares.
func TestReadOverDefaultCapFailsBeforeAllocating(t *testing.T) {
	b := bombArchive(bomb4GiB)
	a, err := OpenBytes(b)
	if err != nil {
		t.Fatal(err)
	}
	var rerr, rrerr error
	n := allocated(func() {
		_, rerr = a.Read("zeros")
		_, rrerr = a.ReadRows("zeros", 0, 2<<30) // 2 GiB of rows
	})
	checkError(t, rerr, KindLimitExceeded, "<bytes>")
	checkError(t, rrerr, KindLimitExceeded, "<bytes>")
	for _, want := range []string{`tensor "zeros"`, "4294967296 bytes", "1073741824", "MaxReadBytes", "TensorReader"} {
		if rerr != nil && !strings.Contains(rerr.Error(), want) {
			t.Errorf("message %q lacks %q", rerr, want)
		}
	}
	if n > 1<<20 {
		t.Errorf("refusing the read allocated %d bytes", n)
	}
	// Within the cap, a row range reads: one 256 MiB chunk decoded, 1 MiB returned.
	var rows []byte
	n = allocated(func() { rows, err = a.ReadRows("zeros", 3<<28, 3<<28+1<<20) })
	if err != nil || len(rows) != 1<<20 || !bytes.Equal(rows, make([]byte, 1<<20)) {
		t.Fatalf("ReadRows: %v (%d bytes)", err, len(rows))
	}
	if n > 256<<20+4<<20 {
		t.Errorf("a 1 MiB row range allocated %d bytes", n)
	}
}

func TestCallerSetCaps(t *testing.T) {
	b := bombArchive(bomb4GiB, bombTensor{"small", "F32", "shuffle", 4, 1 << 20})
	// The whole 4 GiB tensor reads once the caller lifts the cap.
	a, err := OpenBytesWith(b, Options{MaxReadBytes: 64 << 20, MaxChunkBytes: 2 << 20})
	if err != nil {
		t.Fatal(err)
	}
	if o := a.Options(); o.MaxReadBytes != 64<<20 || o.MaxChunkBytes != 2<<20 || o.MaxIndexBytes != MaxIndexBytes {
		t.Fatalf("options %+v", o)
	}
	var errs []error
	n := allocated(func() {
		for _, f := range []func() error{
			func() error { _, err := a.Read("zeros"); return err },
			func() error { _, err := a.ReadRows("zeros", 0, 1); return err }, // 1 byte, but a 256 MiB chunk
			func() error { _, err := a.TensorReader("zeros"); return err },
			func() error { _, err := a.ReadTo("zeros", io.Discard); return err },
			func() error { _, err := a.ReadRowsTo("zeros", 5, 6, io.Discard); return err },
			a.Verify,
		} {
			errs = append(errs, f())
		}
	})
	for i, err := range errs {
		checkError(t, err, KindLimitExceeded, "<bytes>")
		if i > 0 && err != nil && !strings.Contains(err.Error(), `"zeros" chunk 0`) {
			t.Errorf("call %d: %q does not name the chunk", i, err)
		}
		if i > 0 && err != nil && !strings.Contains(err.Error(), "MaxChunkBytes") {
			t.Errorf("call %d: %q does not name the option", i, err)
		}
	}
	if n > 1<<20 {
		t.Errorf("refusing allocated %d bytes", n)
	}
	// A tensor within both caps reads as usual.
	small, err := a.Read("small")
	if err != nil || len(small) != 4<<20 || !bytes.Equal(small, make([]byte, 4<<20)) {
		t.Fatalf("Read(small): %v", err)
	}
	// MaxReadBytes applies to the result, not the tensor.
	a, err = OpenBytesWith(b, Options{MaxReadBytes: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	_, err = a.Read("small")
	checkError(t, err, KindLimitExceeded, "<bytes>")
	if r, err := a.ReadRows("small", 0, 1<<18); err != nil || len(r) != 1<<20 {
		t.Fatalf("ReadRows within the cap: %v", err)
	}
	// NoLimit lifts the read cap; values over the format's limits are lowered to them.
	if o := (Options{MaxReadBytes: NoLimit, MaxChunkBytes: 1 << 40, MaxIndexBytes: 1 << 40}).withDefaults(); o.MaxReadBytes != NoLimit ||
		o.MaxChunkBytes != MaxChunkBytes || o.MaxIndexBytes != MaxIndexBytes {
		t.Fatalf("withDefaults: %+v", o)
	}
}

func TestMaxIndexBytes(t *testing.T) {
	path := filepath.Join(vectorsDir, "tiny.bpz") // a 236-byte index
	a, err := OpenWith(path, Options{MaxIndexBytes: 236})
	if err != nil {
		t.Fatal(err)
	}
	a.Close()
	_, err = OpenWith(path, Options{MaxIndexBytes: 235})
	checkError(t, err, KindLimitExceeded, path)
	if err != nil && !strings.Contains(err.Error(), "MaxIndexBytes") {
		t.Errorf("%q does not name the option", err)
	}
}

// An encoded chunk padded with empty zstd blocks is a frame, but its stored bytes are
// not bounded by its decoded size: the chunk cap bounds them too.
func TestPaddedFrameUnderChunkCap(t *testing.T) {
	payload := bytes.Repeat([]byte{7}, 1000)
	frame := []byte{0x28, 0xB5, 0x2F, 0xFD, 0x00, 7 << 3} // no content size, window 128 KiB
	for i := 0; i < 5000; i++ {
		frame = append(frame, 0, 0, 0) // an empty raw block
	}
	h := uint32(len(payload))<<3 | 1
	frame = append(append(frame, byte(h), byte(h>>8), byte(h>>16)), payload...)
	index := fmt.Sprintf(`{"tensors":[{"name":"p","dtype":"U8","shape":[1000],"storage":"chunked","filter":"none","chunk_elems":1000,"chunks":[[64,%d,%d,1]]}]}`,
		len(frame), crc32c(frame))
	b := build(nil, frame, index)
	a, err := OpenBytes(b)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := a.Read("p"); err != nil || !bytes.Equal(got, payload) {
		t.Fatalf("default caps: %v", err)
	}
	a, err = OpenBytesWith(b, Options{MaxChunkBytes: 1024})
	if err != nil {
		t.Fatal(err)
	}
	_, err = a.Read("p")
	checkError(t, err, KindLimitExceeded, "<bytes>")
	checkError(t, a.Verify(), KindLimitExceeded, "<bytes>")
}

// zeroWriter counts bytes and checks they are all zero, holding none of them.
type zeroWriter struct {
	n       uint64
	nonZero bool
}

var zeroBlock = make([]byte, 64<<10)

func (w *zeroWriter) Write(p []byte) (int, error) {
	for rest := p; len(rest) > 0; {
		k := min(len(rest), len(zeroBlock))
		w.nonZero = w.nonZero || !bytes.Equal(rest[:k], zeroBlock[:k])
		rest = rest[k:]
	}
	w.n += uint64(len(p))
	return len(p), nil
}

// Streaming the 4 GiB tensor of a 132 KB file holds one chunk, not the tensor; so
// does Verify.
func TestStreamingIsBounded(t *testing.T) {
	if testing.Short() {
		t.Skip("decodes 5 GiB")
	}
	b := bombArchive(bomb4GiB)
	a, err := OpenBytes(b)
	if err != nil {
		t.Fatal(err)
	}
	var w zeroWriter
	var written int64
	n := allocated(func() { written, err = a.ReadTo("zeros", &w) })
	if err != nil || written != 4<<30 || w.n != 4<<30 || w.nonZero {
		t.Fatalf("ReadTo: %v, %d bytes written, %d received, non-zero %v", err, written, w.n, w.nonZero)
	}
	const oneChunk = 256<<20 + zstdSlack
	if n > oneChunk+8<<20 {
		t.Errorf("streaming 4 GiB allocated %d bytes (one chunk is %d)", n, oneChunk)
	}
	t.Logf("streamed %d bytes, allocating %d", written, n)
	// Verify holds one chunk too (on 1 GiB: Verify's loop is the same for any length).
	a, err = OpenBytes(bombArchive(bombTensor{"zeros", "U8", "none", 4, 256 << 20}))
	if err != nil {
		t.Fatal(err)
	}
	n = allocated(func() { err = a.Verify() })
	if err != nil {
		t.Fatal(err)
	}
	if n > oneChunk+8<<20 {
		t.Errorf("Verify allocated %d bytes", n)
	}
}

// TensorReader and RowsReader yield what Read and ReadRows return, whatever the size
// of the caller's buffer, through Read and WriteTo alike.
func TestStreamingMatchesRead(t *testing.T) {
	for _, path := range validVectors(t) {
		a, err := Open(path)
		if err != nil {
			t.Fatal(err)
		}
		for _, ti := range must(a.Tensors()) {
			want, err := a.Read(ti.Name)
			if err != nil {
				t.Fatal(err)
			}
			r, err := a.TensorReader(ti.Name)
			if err != nil {
				t.Fatal(err)
			}
			if r.Remaining() != ti.NBytes {
				t.Errorf("%s %q: Remaining %d", path, ti.Name, r.Remaining())
			}
			got, err := io.ReadAll(struct{ io.Reader }{r}) // hides WriteTo
			if err != nil || !bytes.Equal(got, want) || r.Remaining() != 0 {
				t.Fatalf("%s %q: TensorReader: %v", path, ti.Name, err)
			}
			for _, bufSize := range []int{1, 7, 4096} {
				r, _ := a.TensorReader(ti.Name)
				buf := make([]byte, bufSize)
				var got2 []byte
				for {
					n, err := r.Read(buf)
					got2 = append(got2, buf[:n]...)
					if err == io.EOF {
						break
					}
					if err != nil {
						t.Fatal(err)
					}
				}
				if !bytes.Equal(got2, want) {
					t.Fatalf("%s %q: Read(%d-byte buffer) differs", path, ti.Name, bufSize)
				}
			}
			var sink bytes.Buffer
			if n, err := a.ReadTo(ti.Name, &sink); err != nil || n != int64(len(want)) || !bytes.Equal(sink.Bytes(), want) {
				t.Fatalf("%s %q: ReadTo: %v", path, ti.Name, err)
			}
			rows := ti.Rows()
			for _, r := range [][2]uint64{{0, rows}, {0, min(1, rows)}, {rows / 2, rows}, {rows / 3, (2*rows + 2) / 3}} {
				wantRows, err := a.ReadRows(ti.Name, r[0], r[1])
				if err != nil {
					t.Fatal(err)
				}
				sink.Reset()
				if n, err := a.ReadRowsTo(ti.Name, r[0], r[1], &sink); err != nil || n != int64(len(wantRows)) ||
					!bytes.Equal(sink.Bytes(), wantRows) {
					t.Fatalf("%s %q rows %v: ReadRowsTo: %v", path, ti.Name, r, err)
				}
			}
			if _, err := a.RowsReader(ti.Name, 0, rows+1); KindOf(err) != KindInvalidArgument {
				t.Errorf("RowsReader past the end: %v", err)
			}
		}
		if _, err := a.TensorReader("no such tensor"); KindOf(err) != KindTensorNotFound {
			t.Errorf("TensorReader(missing): %v", err)
		}
		a.Close()
	}
}

// A chunk that fails mid-stream: the chunks before it were yielded whole and verified,
// then Read returns the chunk's error, again on every later call.
func TestStreamingStopsAtABadChunk(t *testing.T) {
	data := make([]byte, 3*1000)
	for i := range data {
		data[i] = byte(i * 7)
	}
	var chunks []string
	for k := 0; k < 3; k++ {
		crc := crc32c(data[k*1000 : (k+1)*1000])
		if k == 1 {
			crc ^= 1 // chunk 1's stored bytes do not match
		}
		chunks = append(chunks, fmt.Sprintf("[%d,1000,%d,0]", 64+k*1000, crc))
	}
	index := `{"tensors":[{"name":"d","dtype":"U8","shape":[3000],"storage":"chunked","filter":"none","chunk_elems":1000,"chunks":[` +
		strings.Join(chunks, ",") + `]}]}`
	a, err := OpenBytes(build(nil, data, index))
	if err != nil {
		t.Fatal(err)
	}
	r, err := a.TensorReader("d")
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(struct{ io.Reader }{r})
	checkError(t, err, KindChecksumMismatch, "<bytes>")
	if err != nil && !strings.Contains(err.Error(), `"d" chunk 1`) {
		t.Errorf("%q does not name chunk 1", err)
	}
	if !bytes.Equal(got, data[:1000]) {
		t.Fatalf("yielded %d bytes before the error, want chunk 0's 1000", len(got))
	}
	if n, err2 := r.Read(make([]byte, 10)); n != 0 || !errors.Is(err2, err) {
		t.Fatalf("Read after the error: %d, %v", n, err2)
	}
	var sink bytes.Buffer
	n, err := a.ReadTo("d", &sink)
	checkError(t, err, KindChecksumMismatch, "<bytes>")
	if n != 1000 || !bytes.Equal(sink.Bytes(), data[:1000]) {
		t.Fatalf("ReadTo wrote %d bytes before the error", n)
	}
	// Rows that avoid chunk 1 stream.
	sink.Reset()
	if n, err := a.ReadRowsTo("d", 2000, 3000, &sink); err != nil || n != 1000 || !bytes.Equal(sink.Bytes(), data[2000:]) {
		t.Fatalf("rows of chunk 2: %v", err)
	}
	// A failing destination is an io error wrapping the writer's.
	_, err = a.ReadRowsTo("d", 0, 10, failingWriter{})
	checkError(t, err, KindIO, "<bytes>")
	if !errors.Is(err, errDiskFull) {
		t.Errorf("%v does not wrap the writer's error", err)
	}
}

var errDiskFull = errors.New("disk full")

type failingWriter struct{}

func (failingWriter) Write([]byte) (int, error) { return 0, errDiskFull }

// A frame whose window exceeds anything section 4.3 allows is refused, not decoded.
func TestHugeWindowRefused(t *testing.T) {
	// Window_Descriptor 0xA0: exponent 20 → 2^30 = 1 GiB window, for 64 bytes.
	frame := []byte{0x28, 0xB5, 0x2F, 0xFD, 0x00, (30 - 10) << 3}
	h := uint32(64)<<3 | 1<<1 | 1
	frame = append(frame, byte(h), byte(h>>8), byte(h>>16), 9)
	var scratch []byte
	var err error
	n := allocated(func() { _, err = zstdDecode(frame, 64, &scratch) })
	if err == nil {
		t.Fatal("a 1 GiB window decoded")
	}
	if n > 1<<20 {
		t.Errorf("refusing allocated %d bytes", n)
	}
	// The same frame with a 128 KiB window decodes.
	frame[5] = 7 << 3
	if out, err := zstdDecode(frame, 64, &scratch); err != nil || !bytes.Equal(out, bytes.Repeat([]byte{9}, 64)) {
		t.Fatalf("128 KiB window: %v", err)
	}
}
