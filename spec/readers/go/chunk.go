package bpz

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"sort"
	"sync"

	"github.com/klauspost/compress/zstd"
	"lukechampine.com/blake3"
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

// Verify performs a full check. Of a 1.0 file (section 10): every chunk is read, its
// crc32c checked and decoded; every padding byte of the data region must be zero. Of a
// 1.1 file (section 16.5), the same for every version in the file, whichever one the
// Archive reads: each version's whole index, its chunks (crc32c, decoding and BLAKE3
// content hash; a chunk shared by several versions is checked once) and the padding of
// its own data region; the trailers of earlier versions must agree with their records.
// Chunks are visited one at a time: Verify holds at most one chunk
// (Options.MaxChunkBytes) whatever the size of the tensors.
//
// Verify checks the committed versions: bytes of an unfinished append after the
// latest one are not part of the archive (see Recovered).
func (a *Archive) Verify() error {
	checked := map[checkedChunk]bool{}
	for pos := range a.versions {
		v, err := a.viewAt(pos)
		if err != nil {
			return err
		}
		if err := a.verifyView(v, checked); err != nil {
			return err
		}
	}
	return nil
}

// checkedChunk identifies a chunk together with what decoding it depends on, so that
// Verify checks a chunk shared by several tensors or versions once.
type checkedChunk struct {
	c             Chunk
	filter        string
	item          int
	decodedLength uint64
}

// verifyView checks one version: its index, its chunks, its padding.
func (a *Archive) verifyView(v *view, checked map[checkedChunk]bool) error {
	l, err := a.listingOf(v)
	if err != nil {
		return err
	}
	if _, err := a.viewMetadata(v); err != nil {
		return err
	}
	if v.bin != nil {
		if _, err := a.readWriterSection(v); err != nil {
			return err
		}
		if err := a.checkEarlierTrailer(v); err != nil {
			return err
		}
	}
	var bufs chunkBufs
	pos := v.dataStart
	for _, sp := range l.spans {
		t := &l.tensors[sp.tensor]
		key := checkedChunk{t.Chunks[sp.chunk], t.Filter, t.ItemSize, t.chunkDecoded(sp.chunk)}
		if !checked[key] {
			if _, err := a.loadChunk(t, sp.chunk, &bufs, nil, true); err != nil {
				return err
			}
			checked[key] = true
		}
		if sp.off >= v.dataStart {
			if sp.off > pos {
				if err := a.checkZero("data region", pos, sp.off); err != nil {
					return err
				}
			}
			pos = max(pos, sp.end)
		}
	}
	if err := a.checkZero("data region", pos, v.indexOffset); err != nil {
		return err
	}
	if v.bin != nil {
		return a.checkIndexPadding(v)
	}
	return nil
}

// checkIndexPadding checks that the bytes of v's binary index that no directory entry
// covers (between sections, and the padding at its end) are zero (16.2).
func (a *Archive) checkIndexPadding(v *view) error {
	type interval struct{ lo, hi uint64 }
	covered := []interval{{0, v.bin.headLen}}
	for _, e := range v.bin.dir {
		if end, ok := addChecked(e.off, e.length); ok && e.off >= v.bin.headLen && end <= v.indexLength {
			covered = append(covered, interval{e.off, end})
		}
	}
	sort.Slice(covered, func(i, j int) bool { return covered[i].lo < covered[j].lo })
	part := fmt.Sprintf("index of version %d", v.number)
	pos := uint64(0)
	for _, c := range covered {
		if c.lo > pos {
			if err := a.checkZero(part, v.indexOffset+pos, v.indexOffset+c.lo); err != nil {
				return err
			}
		}
		pos = max(pos, c.hi)
	}
	return a.checkZero(part, v.indexOffset+pos, v.indexOffset+v.indexLength)
}

// checkEarlierTrailer checks, for a version that is not the latest, that its trailer
// is intact and points to its index, and that any bytes between it and the next
// version's data are zero: every byte of the file is then covered by a check.
func (a *Archive) checkEarlierTrailer(v *view) error {
	if v.pos == len(a.versions)-1 {
		return nil
	}
	part := fmt.Sprintf("trailer of version %d", v.number)
	at := v.indexOffset + v.indexLength
	tr, err := a.readFull(part, at, trailerSize, nil)
	if err != nil {
		return err
	}
	le := binary.LittleEndian
	if !bytes.Equal(tr[24:32], endMagic[:]) {
		return newErr(KindCorruptData, a.name, part, "the last 8 bytes at offset %d are not BPZ_END\\n", at+24)
	}
	if got, want := crc32c(tr[:20]), le.Uint32(tr[20:24]); got != want {
		return newErr(KindChecksumMismatch, a.name, part,
			"trailer_crc is 0x%08X, the crc32c of trailer bytes 0..20 is 0x%08X", want, got)
	}
	if le.Uint64(tr[0:]) != v.indexOffset || le.Uint64(tr[8:]) != v.indexLength || le.Uint32(tr[16:]) != v.indexCRC {
		return newErr(KindInvalidIndex, a.name, part, "it does not point to the index the versions record gives")
	}
	return a.checkZero("data region", at+trailerSize, a.versions[v.pos+1].dataStart)
}

func (a *Archive) lookup(name string) (*TensorInfo, error) {
	v := a.cur
	if v.bin == nil || v.listed.Load() {
		i, ok := v.list.byName[name]
		if !ok {
			return nil, newErr(KindTensorNotFound, a.name, tensorPart(name), "no tensor of that name")
		}
		return &v.list.tensors[i], nil
	}
	return a.lookupBinary(v, name)
}

func (a *Archive) checkZero(part string, from, to uint64) error {
	var buf []byte
	for from < to {
		n := min(to-from, 64<<10)
		b, err := a.readFull(part, from, n, buf)
		if err != nil {
			return err
		}
		buf = b
		for i, v := range b {
			if v == 0 {
				continue
			}
			return newErr(KindCorruptData, a.name, part,
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

// chunkSpan returns which chunks hold decoded bytes [lo, hi) (lo < hi) of t.
func (t *TensorInfo) chunkSpan(lo, hi uint64) (first, last int) {
	cb := t.chunkBytes()
	return int(lo / cb), int((hi - 1) / cb)
}

// pieceOf returns the part [from, to) of chunk k's decoded bytes inside [lo, hi).
func (t *TensorInfo) pieceOf(k int, lo, hi uint64) (from, to uint64) {
	cs := uint64(k) * t.chunkBytes()
	return max(lo, cs) - cs, min(hi, cs+t.chunkDecoded(k)) - cs
}

// readRange returns decoded bytes [lo, hi) of t (section 14, step 4).
func (a *Archive) readRange(t *TensorInfo, lo, hi uint64) ([]byte, error) {
	if lo >= hi {
		return []byte{}, nil
	}
	if err := a.checkReadBudget(t, hi-lo); err != nil {
		return nil, err
	}
	first, last := t.chunkSpan(lo, hi)
	if err := a.checkChunkBudgets(t, first, last); err != nil {
		return nil, err
	}
	// Allocate up front what the chunks can really hold: a plain chunk's bytes are in
	// the file; an encoded chunk can only produce so much per stored byte. A file
	// that declares more than its chunks can decode to fails before the buffer
	// would have to grow, so a small file never makes us allocate a huge buffer.
	var capacity uint64
	for k := first; k <= last; k++ {
		from, to := t.pieceOf(k, lo, hi)
		piece := to - from
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
		from, to := t.pieceOf(k, lo, hi)
		n := len(out)
		var into []byte
		if dec := t.chunkDecoded(k); from == 0 && to == dec && uint64(cap(out)-n) >= dec {
			into = out[n : n+int(dec)] // a whole plain chunk is read straight into the result
		}
		d, err := a.loadChunk(t, k, &bufs, into, a.opts.CheckHashes)
		if err != nil {
			return nil, err
		}
		if into != nil && &d[0] == &into[0] {
			out = out[:n+len(d)]
		} else {
			out = append(out, d[from:to]...)
		}
	}
	return out, nil
}

// chunkBufs are buffers reused from chunk to chunk within one call.
type chunkBufs struct {
	stored   []byte // the stored bytes
	filtered []byte // zstd output
	decoded  []byte // filter output
}

// loadChunk is the one path by which every call gets a chunk's bytes: it checks the
// chunk against Options.MaxChunkBytes, reads it, checks its crc32c, decompresses it
// into a buffer of exactly its filtered size, undoes the filter and, if checkHash is
// set and the file has hashes, checks its BLAKE3 content hash. It returns the decoded
// bytes, valid until the next call with the same bufs. A plain chunk is read into
// into when that has exactly its length.
func (a *Archive) loadChunk(t *TensorInfo, k int, bufs *chunkBufs, into []byte, checkHash bool) ([]byte, error) {
	if err := a.checkChunkBudget(t, k); err != nil {
		return nil, err
	}
	c := t.Chunks[k]
	part := chunkPart(t.Name, k)
	direct := !c.Encoded && uint64(len(into)) == c.Length
	dst := bufs.stored
	if direct {
		dst = into
	}
	stored, err := a.readFull(part, c.Offset, c.Length, dst)
	if err != nil {
		return nil, err
	}
	if !direct {
		bufs.stored = stored
	}
	if got := crc32c(stored); got != c.CRC32C {
		return nil, newErr(KindChecksumMismatch, a.name, part,
			"the index gives crc32c 0x%08X, the %d stored bytes at offset %d have 0x%08X",
			c.CRC32C, len(stored), c.Offset, got)
	}
	d := stored // a plain chunk: validated on open, stored length = decoded length
	if c.Encoded {
		s := uint64(t.ItemSize)
		m := t.chunkDecoded(k) / s
		want := filteredSize(t.Filter, m, s)
		f, err := zstdDecode(stored, want, &bufs.filtered)
		if err != nil {
			return nil, &Error{Kind: KindCorruptData, File: a.name, Part: part,
				Msg: fmt.Sprintf("zstd frame of %d bytes at offset %d does not decode to the %d-byte filtered chunk",
					c.Length, c.Offset, want), Err: err}
		}
		d = undoFilter(t.Filter, f, m, s, &bufs.decoded)
	}
	if checkHash && c.HasHash {
		if sum := blake3.Sum256(d); !bytes.Equal(sum[:hashSize], c.Hash[:]) {
			return nil, newErr(KindChecksumMismatch, a.name, part,
				"the index gives content hash %x, the chunk's %d decoded bytes have BLAKE3 %x",
				c.Hash, len(d), sum[:hashSize])
		}
	}
	return d, nil
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
