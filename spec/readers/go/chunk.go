package bpz

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"sync"

	"github.com/klauspost/compress/zstd"
)

// Read returns the tensor's decoded bytes (little-endian, C order), checking the
// crc32c of every chunk.
func (a *Archive) Read(name string) ([]byte, error) {
	t, err := a.lookup(name)
	if err != nil {
		return nil, err
	}
	return a.readRange(t, 0, t.NBytes)
}

// ReadRows returns the decoded bytes of rows [start, stop) of the leading axis (a 0-d
// tensor is one row), decoding only the chunks that overlap them.
func (a *Archive) ReadRows(name string, start, stop uint64) ([]byte, error) {
	t, err := a.lookup(name)
	if err != nil {
		return nil, err
	}
	lo, hi, err := a.rowBytes(t, start, stop)
	if err != nil {
		return nil, err
	}
	return a.readRange(t, lo, hi)
}

// rowBytes turns rows [start, stop) of t into decoded bytes [lo, hi).
func (a *Archive) rowBytes(t *TensorInfo, start, stop uint64) (lo, hi uint64, err error) {
	if start > stop || stop > t.Rows() {
		return 0, 0, newErr(KindInvalidArgument, a.name, tensorPart(t.Name),
			"rows [%d, %d) are not a range within [0, %d)", start, stop, t.Rows())
	}
	if start == stop {
		return 0, 0, nil
	}
	rowBytes := t.RowElems() * uint64(t.ItemSize) // Rows() > 0 here, so no saturation
	return start * rowBytes, stop * rowBytes, nil
}

// Verify performs a full check (section 10): every chunk is read, its crc32c checked and,
// if encoded, decompressed; every padding byte of the data region must be zero.
// Chunks are visited in file order, one at a time: Verify holds at most one chunk
// (Options.MaxChunkBytes) whatever the size of the tensors.
func (a *Archive) Verify() error {
	var bufs chunkBufs
	pos := uint64(superblockSize)
	for _, sp := range a.spans {
		if sp.off > pos {
			if err := a.checkZero(pos, sp.off); err != nil {
				return err
			}
		}
		if _, err := a.loadChunk(&a.tensors[sp.tensor], sp.chunk, &bufs, false); err != nil {
			return err
		}
		pos = max(pos, sp.end)
	}
	return a.checkZero(pos, a.indexOffset)
}

func (a *Archive) lookup(name string) (*TensorInfo, error) {
	i, ok := a.byName[name]
	if !ok {
		return nil, newErr(KindTensorNotFound, a.name, tensorPart(name), "no tensor of that name")
	}
	return &a.tensors[i], nil
}

func (a *Archive) checkZero(from, to uint64) error {
	var buf []byte
	for from < to {
		n := min(to-from, 64<<10)
		b, err := a.readFull("data region", from, n, buf)
		if err != nil {
			return err
		}
		buf = b
		for i, v := range b {
			if v == 0 {
				continue
			}
			return newErr(KindCorruptData, a.name, "data region",
				"padding byte at offset %d is 0x%02X, not zero", from+uint64(i), v)
		}
		from += n
	}
	return nil
}

// chunkBytes is the number of decoded bytes of a full chunk.
func (t *TensorInfo) chunkBytes() uint64 { return t.ChunkElems * uint64(t.ItemSize) }

// chunkDecoded is the number of decoded bytes of chunk k (the last may be short).
func (t *TensorInfo) chunkDecoded(k int) uint64 {
	cb := t.chunkBytes()
	return min(cb, t.NBytes-uint64(k)*cb)
}

// readRange returns decoded bytes [lo, hi) of t (section 14, step 4).
func (a *Archive) readRange(t *TensorInfo, lo, hi uint64) ([]byte, error) {
	if lo >= hi {
		return []byte{}, nil
	}
	if err := a.checkReadBudget(t, hi-lo); err != nil {
		return nil, err
	}
	cb := t.chunkBytes()
	first, last := int(lo/cb), int((hi-1)/cb)
	if err := a.checkChunkBudgets(t, first, last); err != nil {
		return nil, err
	}
	// Allocate up front what the chunks can really hold: a plain chunk's bytes are in
	// the file; an encoded chunk can only produce so much per stored byte. A file
	// that declares more than its chunks can decode to fails before the buffer
	// would have to grow, so a small file never makes us allocate a huge buffer.
	var capacity uint64
	for k := first; k <= last; k++ {
		cs := uint64(k) * cb
		piece := min(hi, cs+t.chunkDecoded(k)) - max(lo, cs)
		if c := t.Chunks[k]; c.Encoded {
			bound := maxFrameOutput(c.Length)
			if t.Filter == FilterBitpack {
				bound *= 8
			}
			piece = min(piece, bound)
		}
		capacity += piece
	}
	if capacity > math.MaxInt || hi-lo > math.MaxInt {
		return nil, newErr(KindInvalidArgument, a.name, tensorPart(t.Name),
			"%d bytes do not fit in memory on this platform", hi-lo)
	}
	out := make([]byte, 0, capacity)
	var bufs chunkBufs
	for k := first; k <= last; k++ {
		cs := uint64(k) * cb
		dec := t.chunkDecoded(k)
		from, to := max(lo, cs)-cs, min(hi, cs+dec)-cs
		c := t.Chunks[k]
		if !c.Encoded && from == 0 && to == dec && uint64(cap(out)-len(out)) >= dec {
			// A whole plain chunk: read it straight into the result.
			n := len(out)
			buf, err := a.readFull(chunkPart(t.Name, k), c.Offset, c.Length, out[n:n+int(dec)])
			if err != nil {
				return nil, err
			}
			if err := a.checkCRC(t, k, buf); err != nil {
				return nil, err
			}
			out = out[:n+int(dec)]
			continue
		}
		d, err := a.loadChunk(t, k, &bufs, true)
		if err != nil {
			return nil, err
		}
		out = append(out, d[from:to]...)
	}
	return out, nil
}

// chunkBufs are buffers reused from chunk to chunk within one call.
type chunkBufs struct {
	stored   []byte // the stored bytes
	filtered []byte // zstd output
	decoded  []byte // filter output
}

func (a *Archive) checkCRC(t *TensorInfo, k int, stored []byte) error {
	if got, want := crc32c(stored), t.Chunks[k].CRC32C; got != want {
		return newErr(KindChecksumMismatch, a.name, chunkPart(t.Name, k),
			"the index gives crc32c 0x%08X, the %d stored bytes at offset %d have 0x%08X",
			want, len(stored), t.Chunks[k].Offset, got)
	}
	return nil
}

// loadChunk reads chunk k, checks its crc32c and decompresses it; if unfilter is set
// it also undoes the filter and returns the decoded bytes (valid until the next call
// with the same bufs).
func (a *Archive) loadChunk(t *TensorInfo, k int, bufs *chunkBufs, unfilter bool) ([]byte, error) {
	if err := a.checkChunkBudget(t, k); err != nil {
		return nil, err
	}
	c := t.Chunks[k]
	part := chunkPart(t.Name, k)
	stored, err := a.readFull(part, c.Offset, c.Length, bufs.stored)
	if err != nil {
		return nil, err
	}
	bufs.stored = stored
	if err := a.checkCRC(t, k, stored); err != nil {
		return nil, err
	}
	if !c.Encoded {
		return stored, nil // validated on open: stored length = decoded length
	}
	s := uint64(t.ItemSize)
	m := t.chunkDecoded(k) / s
	want := filteredSize(t.Filter, m, s)
	f, err := zstdDecode(stored, want, &bufs.filtered)
	if err != nil {
		return nil, &Error{Kind: KindCorruptData, File: a.name, Part: part,
			Msg: fmt.Sprintf("zstd frame of %d bytes at offset %d does not decode to the %d-byte filtered chunk",
				c.Length, c.Offset, want), Err: err}
	}
	if !unfilter {
		return f, nil
	}
	return undoFilter(t.Filter, f, m, s, &bufs.decoded), nil
}

// zstd (section 4.3).

const (
	zstdMagic    = 0xFD2FB528
	zstdMaxBlock = 128 << 10 // Block_Maximum_Size can never exceed 128 KiB (RFC 8878)
	zstdSlack    = zstdMaxBlock + 64
	// The largest window and output the decoder accepts. Section 4.3 caps a chunk's window
	// at max(128 MiB, filtered size) and a chunk at 256 MiB, so a larger window is no
	// conforming frame: refusing it keeps any decoder path from sizing a buffer by it.
	zstdMaxWindow = MaxChunkBytes
)

var (
	zdecOnce sync.Once
	zdec     *zstd.Decoder
	zdecErr  error
)

func decoder() (*zstd.Decoder, error) {
	zdecOnce.Do(func() {
		zdec, zdecErr = zstd.NewReader(nil,
			zstd.WithDecodeAllCapLimit(true),
			zstd.WithDecoderMaxMemory(zstdMaxWindow+zstdSlack),
			zstd.WithDecoderMaxWindow(zstdMaxWindow))
	})
	return zdec, zdecErr
}

// frameInfo is what scanFrame learns from a frame's headers.
type frameInfo struct {
	headerLen int    // magic + frame header
	hasFCS    bool   // Frame_Content_Size present
	fcs       uint64 // Frame_Content_Size
	maxOut    uint64 // the most the frame's blocks can produce
}

// maxFrameOutput bounds the decompressed size of any single zstd frame of n bytes:
// a frame header takes at least 6 bytes, and every block that produces output takes
// at least 4 and produces at most 128 KiB.
func maxFrameOutput(n uint64) uint64 {
	if n < 6 {
		return 0
	}
	return (n - 6) / 4 * zstdMaxBlock
}

// scanFrame checks that b is exactly one zstd frame (RFC 8878 section 3.1.1): it parses
// the frame header and walks the block headers to the end of the frame.
func scanFrame(b []byte) (frameInfo, error) {
	var fi frameInfo
	if len(b) < 4 {
		return fi, errors.New("shorter than a zstd magic number")
	}
	if mg := binary.LittleEndian.Uint32(b); mg != zstdMagic {
		if mg&0xFFFFFFF0 == 0x184D2A50 {
			return fi, errors.New("a skippable frame, not a zstd frame")
		}
		return fi, fmt.Errorf("bad zstd magic number 0x%08X", mg)
	}
	if len(b) < 5 {
		return fi, errors.New("truncated frame header")
	}
	fhd := b[4]
	fcsFlag, single, dictFlag := fhd>>6, fhd&0x20 != 0, fhd&3
	if fhd&0x08 != 0 {
		return fi, errors.New("reserved bit of the frame header descriptor is set")
	}
	pos := 5
	if !single { // Window_Descriptor: the decoder checks it
		if len(b) < pos+1 {
			return fi, errors.New("truncated frame header")
		}
		pos++
	}
	dictLen := [4]int{0, 1, 2, 4}[dictFlag]
	if len(b) < pos+dictLen {
		return fi, errors.New("truncated frame header")
	}
	for _, c := range b[pos : pos+dictLen] {
		if c != 0 {
			return fi, errors.New("the frame needs a dictionary")
		}
	}
	pos += dictLen
	fcsLen := [4]int{0, 2, 4, 8}[fcsFlag]
	if fcsFlag == 0 && single {
		fcsLen = 1
	}
	if len(b) < pos+fcsLen {
		return fi, errors.New("truncated frame header")
	}
	if fcsLen > 0 {
		fi.hasFCS = true
		var v [8]byte
		copy(v[:], b[pos:pos+fcsLen])
		fi.fcs = binary.LittleEndian.Uint64(v[:])
		if fcsLen == 2 {
			fi.fcs += 256
		}
	}
	pos += fcsLen
	fi.headerLen = pos
	for {
		if len(b)-pos < 3 {
			return fi, errors.New("truncated block header")
		}
		h := uint32(b[pos]) | uint32(b[pos+1])<<8 | uint32(b[pos+2])<<16
		pos += 3
		last, typ, size := h&1 != 0, (h>>1)&3, int(h>>3)
		switch typ {
		case 0: // raw
			if len(b)-pos < size {
				return fi, errors.New("truncated raw block")
			}
			pos += size
			fi.maxOut += uint64(size)
		case 1: // RLE
			if len(b)-pos < 1 {
				return fi, errors.New("truncated RLE block")
			}
			pos++
			fi.maxOut += uint64(size)
		case 2: // compressed
			if len(b)-pos < size {
				return fi, errors.New("truncated compressed block")
			}
			pos += size
			fi.maxOut += zstdMaxBlock
		default:
			return fi, errors.New("reserved block type")
		}
		if last {
			break
		}
	}
	if fhd&0x04 != 0 { // content checksum
		if len(b)-pos < 4 {
			return fi, errors.New("truncated content checksum")
		}
		pos += 4
	}
	if pos != len(b) {
		return fi, fmt.Errorf("%d bytes follow the zstd frame", len(b)-pos)
	}
	return fi, nil
}

// zstdDecode decompresses one zstd frame that must produce exactly want bytes. It never
// allocates more than want + 128 KiB + 64 bytes, whatever the frame declares: a frame
// without a content size gets one (want) inserted in its header, so the decoder stops
// within one block of want; a frame declaring another size is refused before decoding.
func zstdDecode(frame []byte, want uint64, scratch *[]byte) ([]byte, error) {
	fi, err := scanFrame(frame)
	if err != nil {
		return nil, err
	}
	if fi.hasFCS && fi.fcs != want {
		return nil, fmt.Errorf("the frame declares a content size of %d bytes", fi.fcs)
	}
	if fi.maxOut < want {
		return nil, fmt.Errorf("the frame's blocks cannot produce more than %d bytes", fi.maxOut)
	}
	src := frame
	if !fi.hasFCS {
		// Set Frame_Content_Size_flag = 3 (8-byte field) and append the field to the header.
		src = make([]byte, 0, len(frame)+8)
		src = append(src, frame[:4]...)
		src = append(src, frame[4]|0xC0)
		src = append(src, frame[5:fi.headerLen]...)
		src = binary.LittleEndian.AppendUint64(src, want)
		src = append(src, frame[fi.headerLen:]...)
	}
	d, err := decoder()
	if err != nil {
		return nil, err
	}
	need := want + zstdSlack
	if uint64(cap(*scratch)) < need {
		*scratch = make([]byte, 0, need)
	}
	dst := (*scratch)[:0]
	out, err := d.DecodeAll(src, dst)
	if err != nil {
		return nil, err
	}
	if uint64(len(out)) != want {
		return nil, fmt.Errorf("the frame decodes to %d bytes", len(out))
	}
	return out, nil
}

// Filters (section 5).

func grow(buf *[]byte, n uint64) []byte {
	if uint64(cap(*buf)) < n {
		*buf = make([]byte, n)
	}
	return (*buf)[:n]
}

// undoFilter turns a chunk's filtered bytes f (m elements of s bytes) into its decoded bytes.
func undoFilter(filter string, f []byte, m, s uint64, buf *[]byte) []byte {
	switch filter {
	case FilterShuffle, FilterDeltaShuffle:
		d := f
		if s > 1 {
			d = grow(buf, m*s)
			for j := uint64(0); j < s; j++ {
				plane := f[j*m : (j+1)*m]
				for i, v := range plane {
					d[uint64(i)*s+j] = v
				}
			}
		}
		if filter == FilterDeltaShuffle {
			undoDelta(d, s)
		}
		return d
	case FilterBitpack:
		d := grow(buf, m)
		for i := range d {
			d[i] = (f[i>>3] >> (i & 7)) & 1
		}
		return d
	default: // none
		return f
	}
}

// undoDelta replaces each s-byte little-endian element by the running sum modulo 2^(8s).
func undoDelta(d []byte, s uint64) {
	le := binary.LittleEndian
	switch s {
	case 1:
		var acc uint8
		for i := range d {
			acc += d[i]
			d[i] = acc
		}
	case 2:
		var acc uint16
		for i := 0; i+2 <= len(d); i += 2 {
			acc += le.Uint16(d[i:])
			le.PutUint16(d[i:], acc)
		}
	case 4:
		var acc uint32
		for i := 0; i+4 <= len(d); i += 4 {
			acc += le.Uint32(d[i:])
			le.PutUint32(d[i:], acc)
		}
	case 8:
		var acc uint64
		for i := 0; i+8 <= len(d); i += 8 {
			acc += le.Uint64(d[i:])
			le.PutUint64(d[i:], acc)
		}
	}
}
