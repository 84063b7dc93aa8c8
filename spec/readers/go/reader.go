// Package bpz is an independent reader of the bpz archive format, version 1.x,
// written from spec/FORMAT.md alone.
//
// Open validates the superblock, the trailer and the whole index (section 10 of the
// spec, in its order and with its limits) before returning; Read, ReadRows and Verify
// then check every chunk they touch. All errors are *Error values whose Kind is the
// spec's error kind name.
//
// Memory is bounded by Options (OpenWith), never by what a file declares: a valid
// 132 KB file can hold a 4 GiB tensor of zeros, and a failed allocation kills a Go
// program. Read and ReadRows refuse a result over Options.MaxReadBytes (default
// DefaultMaxReadBytes, 1 GiB) with kind "limit_exceeded" before allocating it. Every
// call decodes one chunk at a time and refuses a chunk over Options.MaxChunkBytes
// (default 256 MiB, the format's own limit) the same way. TensorReader, RowsReader,
// ReadTo and ReadRowsTo stream any tensor in the memory of one chunk, yielding each
// chunk's bytes only once its crc32c and decoding have been checked.
package bpz

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
)

// Chunk is one entry of a tensor's chunk table.
type Chunk struct {
	Offset  uint64 // absolute file offset of the stored bytes
	Length  uint64 // stored length
	CRC32C  uint32 // crc32c of the stored bytes
	Encoded bool   // true: filter + one zstd frame; false: the decoded bytes as they are
}

// TensorInfo describes one tensor of the index. Its slices are shared with the
// Archive and must not be modified.
type TensorInfo struct {
	Name        string
	DType       string
	ItemSize    int      // bytes per element
	Shape       []uint64 // [] for a 0-d tensor
	Storage     string   // "raw" or "chunked"
	Filter      string   // "none", "shuffle", "delta_shuffle" or "bitpack"
	ChunkElems  uint64
	Chunks      []Chunk
	NumElements uint64 // product(shape); 1 for a 0-d tensor
	NBytes      uint64 // decoded size: NumElements × ItemSize
	StoredBytes uint64 // sum of the chunks' stored lengths
}

// EncodedChunks counts the chunks stored as zstd frames.
func (t *TensorInfo) EncodedChunks() int {
	n := 0
	for _, c := range t.Chunks {
		if c.Encoded {
			n++
		}
	}
	return n
}

// Rows is the length of the leading axis (1 for a 0-d tensor).
func (t *TensorInfo) Rows() uint64 {
	if len(t.Shape) == 0 {
		return 1
	}
	return t.Shape[0]
}

// RowElems is product(shape[1:]) (1 for a 0-d tensor). It saturates to MaxUint64 in
// the one case where that product exceeds 64 bits: a tensor whose leading axis is 0.
func (t *TensorInfo) RowElems() uint64 {
	if len(t.Shape) == 0 {
		return 1
	}
	n := uint64(1)
	for _, d := range t.Shape[1:] {
		if d == 0 {
			return 0
		}
	}
	for _, d := range t.Shape[1:] {
		var ok bool
		if n, ok = mulChecked(n, d); !ok {
			return ^uint64(0)
		}
	}
	return n
}

// span is one chunk placed in the file, for the overlap and padding checks.
type span struct {
	off, end uint64
	tensor   int
	chunk    int
}

// Archive is an open bpz archive. Its methods are safe for concurrent use.
type Archive struct {
	r      io.ReaderAt
	closer io.Closer
	name   string
	size   uint64
	opts   Options // with defaults filled in

	major, minor     uint16
	requiredFeatures uint32
	optionalFeatures uint32
	alignment        uint32
	indexOffset      uint64
	indexLength      uint64

	tensors  []TensorInfo
	byName   map[string]int
	tree     json.RawMessage
	metadata json.RawMessage
	writer   *Writer
	spans    []span // every chunk, sorted by offset
}

// Open opens and validates the archive at path, with the default Options.
func Open(path string) (*Archive, error) { return OpenWith(path, Options{}) }

// OpenBytes opens and validates an archive held in memory, with the default Options.
func OpenBytes(b []byte) (*Archive, error) { return OpenBytesWith(b, Options{}) }

// OpenReaderAt opens and validates an archive of size bytes read through r, with the
// default Options; name is used in error messages.
func OpenReaderAt(r io.ReaderAt, size int64, name string) (*Archive, error) {
	return OpenReaderAtWith(r, size, name, Options{})
}

// OpenReaderAtWith opens and validates an archive of size bytes read through r, with
// caller-set limits; name is used in error messages.
func OpenReaderAtWith(r io.ReaderAt, size int64, name string, opts Options) (*Archive, error) {
	if size < 0 {
		return nil, newErr(KindInvalidArgument, name, "", "negative size %d", size)
	}
	a := &Archive{r: r, name: name, size: uint64(size), opts: opts.withDefaults()}
	if err := a.open(); err != nil {
		return nil, err
	}
	return a, nil
}

// Close closes the underlying file (if Open opened it).
func (a *Archive) Close() error {
	if a.closer == nil {
		return nil
	}
	err := a.closer.Close()
	a.closer = nil
	if err != nil {
		return &Error{Kind: KindIO, File: a.name, Msg: "close", Err: err}
	}
	return nil
}

// Name is the path or name the archive was opened with.
func (a *Archive) Name() string { return a.name }

// Version returns the file's major and minor version.
func (a *Archive) Version() (major, minor uint16) { return a.major, a.minor }

// Alignment returns the superblock's alignment of raw tensors.
func (a *Archive) Alignment() uint32 { return a.alignment }

// Features returns the superblock's required and optional feature bits.
func (a *Archive) Features() (required, optional uint32) {
	return a.requiredFeatures, a.optionalFeatures
}

// Size is the file length in bytes.
func (a *Archive) Size() uint64 { return a.size }

// IndexOffset is the file offset of the index (the end of the data region).
func (a *Archive) IndexOffset() uint64 { return a.indexOffset }

// Tensors lists the tensors in index order.
func (a *Archive) Tensors() []TensorInfo { return append([]TensorInfo(nil), a.tensors...) }

// Tensor returns the tensor of that name.
func (a *Archive) Tensor(name string) (TensorInfo, error) {
	i, ok := a.byName[name]
	if !ok {
		return TensorInfo{}, newErr(KindTensorNotFound, a.name, tensorPart(name), "no tensor of that name")
	}
	return a.tensors[i], nil
}

// Tree returns the index's "tree" member as it is written ("null" when absent).
func (a *Archive) Tree() json.RawMessage { return append(json.RawMessage(nil), a.tree...) }

// Metadata returns the index's "metadata" member as it is written ("null" when absent).
func (a *Archive) Metadata() json.RawMessage {
	return append(json.RawMessage(nil), a.metadata...)
}

// Writer returns the index's "writer" member, or nil.
func (a *Archive) Writer() *Writer {
	if a.writer == nil {
		return nil
	}
	w := *a.writer
	return &w
}

// readFull reads exactly n bytes at off.
func (a *Archive) readFull(part string, off, n uint64, buf []byte) ([]byte, error) {
	if uint64(cap(buf)) >= n {
		buf = buf[:n]
	} else {
		buf = make([]byte, n)
	}
	if n == 0 {
		return buf, nil
	}
	if off > 1<<62 {
		return nil, newErr(KindInvalidArgument, a.name, part, "offset %d out of range", off)
	}
	got, err := a.r.ReadAt(buf, int64(off))
	if uint64(got) == n {
		return buf, nil
	}
	if err == nil || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return nil, newErr(KindTruncated, a.name, part,
			"short read: %d of %d bytes at offset %d (the file shrank?)", got, n, off)
	}
	return nil, &Error{Kind: KindIO, File: a.name, Part: part,
		Msg: fmt.Sprintf("reading %d bytes at offset %d", n, off), Err: err}
}

// describeBadMagic says which known mangling produced these first bytes (section 2).
func describeBadMagic(head []byte) string {
	m := magic[:]
	switch {
	case len(head) >= 8 && head[0] == 0x09 && bytes.Equal(head[1:8], m[1:]):
		return "the high bit of the first byte is cleared: the file went through a 7-bit channel"
	case bytes.HasPrefix(head, []byte("\x89BPZ\n\x1a\n")):
		return `"\r\n" became "\n": the file was transferred in text mode (CRLF→LF)`
	case bytes.HasPrefix(head, []byte("\x89BPZ\r\r\n\x1a")):
		return `"\n" became "\r\n": the file was transferred in text mode (LF→CRLF)`
	case len(head) >= 4 && bytes.Equal(head[1:4], []byte("BPZ")):
		return fmt.Sprintf("corrupted magic % x", head[:min(8, len(head))])
	default:
		return fmt.Sprintf("not a bpz archive (first bytes % x)", head[:min(8, len(head))])
	}
}

// open performs the checks of section 10 "On open", in order.
func (a *Archive) open() error {
	// Step 1: magic.
	head, err := a.readFull("superblock", 0, min(a.size, superblockSize), nil)
	if err != nil {
		return err
	}
	if len(head) < 8 && bytes.HasPrefix(magic[:], head) {
		return newErr(KindTruncated, a.name, "superblock",
			"the file is %d bytes long, a prefix of the magic", len(head))
	}
	if len(head) < 8 || !bytes.Equal(head[:8], magic[:]) {
		return newErr(KindBadMagic, a.name, "superblock", "%s", describeBadMagic(head))
	}
	// Step 2: superblock length and checksum.
	if a.size < superblockSize {
		return newErr(KindTruncated, a.name, "superblock",
			"the file is %d bytes long, shorter than the %d-byte superblock", a.size, superblockSize)
	}
	le := binary.LittleEndian
	if got, want := crc32c(head[:60]), le.Uint32(head[60:64]); got != want {
		return newErr(KindChecksumMismatch, a.name, "superblock",
			"superblock_crc is 0x%08X, the crc32c of bytes 0..60 is 0x%08X", want, got)
	}
	// Step 3: version and features.
	a.major, a.minor = le.Uint16(head[8:10]), le.Uint16(head[10:12])
	a.requiredFeatures, a.optionalFeatures = le.Uint32(head[12:16]), le.Uint32(head[16:20])
	if a.major != SupportedMajor {
		return newErr(KindUnsupportedVersion, a.name, "superblock",
			"the file is version %d.%d; this reader reads version %d.x", a.major, a.minor, SupportedMajor)
	}
	if a.requiredFeatures != 0 {
		return newErr(KindUnsupportedFeature, a.name, "superblock",
			"required feature bits 0x%08X are unknown to this reader", a.requiredFeatures)
	}
	// Step 4: alignment.
	a.alignment = le.Uint32(head[20:24])
	if al := a.alignment; al < MinAlignment || al > MaxAlignment || al&(al-1) != 0 {
		return newErr(KindInvalidIndex, a.name, "superblock",
			"alignment %d is not a power of two in [%d, %d]", al, MinAlignment, MaxAlignment)
	}
	// Step 5: trailer.
	if a.size < superblockSize+trailerSize {
		return newErr(KindTruncated, a.name, "trailer",
			"the file is %d bytes long, too short for a superblock and a trailer", a.size)
	}
	tr, err := a.readFull("trailer", a.size-trailerSize, trailerSize, nil)
	if err != nil {
		return err
	}
	if !bytes.Equal(tr[24:32], endMagic[:]) {
		return newErr(KindTruncated, a.name, "trailer",
			"the last 8 bytes are not BPZ_END\\n: the file was cut short or never finished")
	}
	if got, want := crc32c(tr[:20]), le.Uint32(tr[20:24]); got != want {
		return newErr(KindChecksumMismatch, a.name, "trailer",
			"trailer_crc is 0x%08X, the crc32c of trailer bytes 0..20 is 0x%08X", want, got)
	}
	// Step 6: index location.
	a.indexOffset, a.indexLength = le.Uint64(tr[0:8]), le.Uint64(tr[8:16])
	indexCRC := le.Uint32(tr[16:20])
	if a.indexLength > MaxIndexBytes {
		return newErr(KindLimitExceeded, a.name, "trailer",
			"index_length %d is over the limit of %d bytes", a.indexLength, MaxIndexBytes)
	}
	if a.indexLength > a.opts.MaxIndexBytes {
		return newErr(KindLimitExceeded, a.name, "trailer",
			"index_length %d is over this reader's limit of %d bytes (Options.MaxIndexBytes)",
			a.indexLength, a.opts.MaxIndexBytes)
	}
	if a.indexOffset < superblockSize {
		return newErr(KindInvalidIndex, a.name, "trailer", "index_offset %d is below 64", a.indexOffset)
	}
	end, ok := addChecked(a.indexOffset, a.indexLength)
	if ok {
		end, ok = addChecked(end, trailerSize)
	}
	if !ok || end != a.size {
		return newErr(KindInvalidIndex, a.name, "trailer",
			"index_offset %d + index_length %d + 32 is not the file length %d",
			a.indexOffset, a.indexLength, a.size)
	}
	// Step 7: index checksum.
	index, err := a.readFull("index", a.indexOffset, a.indexLength, nil)
	if err != nil {
		return err
	}
	if got := crc32c(index); got != indexCRC {
		return newErr(KindChecksumMismatch, a.name, "index",
			"index_crc is 0x%08X, the crc32c of the index is 0x%08X", indexCRC, got)
	}
	// Step 8: JSON.
	idx, err := parseIndex(index)
	if err != nil {
		var ie *indexError
		if errors.As(err, &ie) {
			return newErr(ie.kind, a.name, ie.part, "%s", ie.msg)
		}
		return newErr(KindInvalidIndex, a.name, "index", "%v", err)
	}
	a.tree, a.metadata, a.writer = idx.tree, idx.metadata, idx.writer
	// Step 9: tensors.
	if len(idx.tensors) > MaxTensors {
		return newErr(KindLimitExceeded, a.name, "index",
			"%d tensors, over the limit of %d", len(idx.tensors), MaxTensors)
	}
	a.tensors = make([]TensorInfo, len(idx.tensors))
	for i := range idx.tensors {
		if err := a.validateTensor(&idx.tensors[i], &a.tensors[i]); err != nil {
			return err
		}
	}
	// Step 10: uniqueness, overlap, tree references.
	a.byName = make(map[string]int, len(a.tensors))
	for i, t := range a.tensors {
		if j, dup := a.byName[t.Name]; dup {
			return newErr(KindInvalidIndex, a.name, tensorPart(t.Name),
				"two tensors have this name (#%d and #%d)", j, i)
		}
		a.byName[t.Name] = i
	}
	for i, t := range a.tensors {
		for k, c := range t.Chunks {
			a.spans = append(a.spans, span{c.Offset, c.Offset + c.Length, i, k})
		}
	}
	sort.Slice(a.spans, func(i, j int) bool {
		if a.spans[i].off != a.spans[j].off {
			return a.spans[i].off < a.spans[j].off
		}
		return a.spans[i].end < a.spans[j].end
	})
	prev := -1 // the last non-empty span (an empty one overlaps nothing)
	for k, s := range a.spans {
		if s.off == s.end {
			continue
		}
		if prev < 0 {
			prev = k
			continue
		}
		p := a.spans[prev]
		prev = k
		if s.off < p.end {
			pt, st := a.tensors[p.tensor], a.tensors[s.tensor]
			return newErr(KindInvalidIndex, a.name, chunkPart(st.Name, s.chunk),
				"bytes [%d, %d) overlap chunk %d of tensor %s at [%d, %d)",
				s.off, s.end, p.chunk, shortName(pt.Name), p.off, p.end)
		}
	}
	return a.checkTree()
}

// validateTensor performs step 9 of section 10 on one tensor: limits first, then
// unknown names, then consistency.
func (a *Archive) validateTensor(p *parsedTensor, t *TensorInfo) error {
	part := tensorPart(p.name)
	limit := func(format string, args ...any) error {
		return newErr(KindLimitExceeded, a.name, part, format, args...)
	}
	bad := func(format string, args ...any) error {
		return newErr(KindInvalidIndex, a.name, part, format, args...)
	}
	if len(p.name) > MaxNameBytes {
		return limit("the name is %d bytes long, over the limit of %d", len(p.name), MaxNameBytes)
	}
	if len(p.shape) > MaxRank {
		return limit("rank %d is over the limit of %d", len(p.shape), MaxRank)
	}
	n := uint64(1)
	zero := false
	for k, d := range p.shape {
		if d > MaxInteger {
			return limit("dimension %d is %s, over 2^53−1", k, fmtUint(d))
		}
		zero = zero || d == 0
	}
	if zero {
		n = 0
	} else {
		for _, d := range p.shape {
			var ok bool
			if n, ok = mulChecked(n, d); !ok || n > MaxInteger {
				return limit("shape %v has over 2^53−1 elements", p.shape)
			}
		}
	}
	if p.chunkElems > MaxInteger {
		return limit("chunk_elems %s is over 2^53−1", fmtUint(p.chunkElems))
	}
	s, dtypeKnown := dtypeSizes[p.dtype]
	var nbytes uint64
	if dtypeKnown {
		var ok bool
		if nbytes, ok = mulChecked(n, uint64(s)); !ok || nbytes > MaxInteger {
			return limit("%d elements × %d bytes is over 2^53−1 bytes", n, s)
		}
		if cb := min(p.chunkElems, n) * uint64(s); cb > MaxChunkBytes {
			return limit("a chunk holds %d decoded bytes, over the limit of %d", cb, MaxChunkBytes)
		}
	}
	var nchunks uint64
	if nbytes > 0 && p.chunkElems > 0 {
		nchunks = (n-1)/p.chunkElems + 1
		if nchunks > MaxChunksPerTensor {
			return limit("%d elements in chunks of %d need %d chunks, over the limit of %d",
				n, p.chunkElems, nchunks, MaxChunksPerTensor)
		}
	}
	if !dtypeKnown {
		return newErr(KindUnsupportedFeature, a.name, part, "unknown dtype %s", shortName(p.dtype))
	}
	if p.storage != StorageRaw && p.storage != StorageChunked {
		return newErr(KindUnsupportedFeature, a.name, part, "unknown storage %s", shortName(p.storage))
	}
	if !knownFilter(p.filter) {
		return newErr(KindUnsupportedFeature, a.name, part, "unknown filter %s", shortName(p.filter))
	}
	if !filterDefinedFor(p.filter, p.dtype) {
		return bad("filter %q is not defined for dtype %s", p.filter, p.dtype)
	}
	raw := p.storage == StorageRaw
	if raw && p.filter != FilterNone {
		return bad("a raw tensor has filter %q (must be \"none\")", p.filter)
	}
	if p.chunkElems == 0 {
		return bad("chunk_elems is 0")
	}
	if strings.IndexByte(p.name, 0) >= 0 {
		return bad("the name contains a NUL character")
	}
	if uint64(len(p.chunks)) != nchunks {
		return bad("%d chunks in the table; %d elements in chunks of %d need %d",
			len(p.chunks), n, p.chunkElems, nchunks)
	}
	*t = TensorInfo{
		Name: p.name, DType: p.dtype, ItemSize: s, Shape: p.shape, Storage: p.storage,
		Filter: p.filter, ChunkElems: p.chunkElems, NumElements: n, NBytes: nbytes,
		Chunks: make([]Chunk, len(p.chunks)),
	}
	chunkBytes := p.chunkElems * uint64(s) // ≤ 2^53 × 16: no overflow
	for k, e := range p.chunks {
		off, length, crc, enc := e[0], e[1], e[2], e[3]
		cpart := chunkPart(p.name, k)
		end, ok := addChecked(off, length)
		if off < superblockSize || !ok || end > a.indexOffset {
			return newErr(KindInvalidIndex, a.name, cpart,
				"stored bytes [%s, %s + %s) are outside the data region [64, %d)",
				fmtUint(off), fmtUint(off), fmtUint(length), a.indexOffset)
		}
		if length == 0 {
			// Not in section 10 of FORMAT.md 1.0, but invalid/zero_length_chunk.bpz
			// expects invalid_index (a non-empty chunk can never be stored in 0 bytes).
			return newErr(KindInvalidIndex, a.name, cpart, "stored length 0")
		}
		if crc > 0xFFFFFFFF {
			return newErr(KindInvalidIndex, a.name, cpart, "crc32c %s does not fit 32 bits", fmtUint(crc))
		}
		if enc > 1 {
			return newErr(KindInvalidIndex, a.name, cpart, "encoded is %s, not 0 or 1", fmtUint(enc))
		}
		decoded := min(chunkBytes, nbytes-uint64(k)*chunkBytes)
		if enc == 0 && length != decoded {
			return newErr(KindInvalidIndex, a.name, cpart,
				"a plain chunk of %d stored bytes should hold %d decoded bytes", length, decoded)
		}
		if raw {
			if enc != 0 {
				return newErr(KindInvalidIndex, a.name, cpart, "a chunk of a raw tensor is encoded")
			}
			if want := t.Chunks[0].Offset + uint64(k)*chunkBytes; k > 0 && off != want {
				return newErr(KindInvalidIndex, a.name, cpart,
					"raw tensor not contiguous: chunk at offset %d, expected %d", off, want)
			}
		}
		t.Chunks[k] = Chunk{Offset: off, Length: length, CRC32C: uint32(crc), Encoded: enc == 1}
		t.StoredBytes += length
	}
	if raw && len(t.Chunks) > 0 && t.Chunks[0].Offset%uint64(a.alignment) != 0 {
		return bad("raw data at offset %d is not a multiple of the alignment %d",
			t.Chunks[0].Offset, a.alignment)
	}
	return nil
}

func fmtUint(v uint64) string {
	if v == ^uint64(0) {
		return "≥ 2^64−1"
	}
	return fmt.Sprint(v)
}

// checkTree verifies that every object anywhere inside the tree that has a "tensor"
// member holds a string there naming a tensor of the index (section 8). It checks
// nothing else: other malformations are for whoever rebuilds the tree to report.
func (a *Archive) checkTree() error {
	if firstByte(a.tree) != '{' {
		return nil // null
	}
	type level struct {
		object    bool
		expectKey bool
	}
	var stack []level
	tensorValue := false // the next value is that of a "tensor" member
	dec := json.NewDecoder(bytes.NewReader(a.tree))
	dec.UseNumber()
	for {
		at := dec.InputOffset()
		tok, err := dec.Token()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return newErr(KindInvalidIndex, a.name, "tree", "%v", err)
		}
		top := len(stack) - 1
		if top >= 0 && stack[top].object && stack[top].expectKey {
			if tok == json.Delim('}') {
				stack = stack[:top]
			} else {
				key, _ := tok.(string)
				tensorValue = key == "tensor"
				stack[top].expectKey = false
				continue
			}
		} else {
			isTensor := tensorValue
			tensorValue = false
			switch v := tok.(type) {
			case json.Delim:
				if v == '{' || v == '[' {
					if isTensor {
						return newErr(KindInvalidIndex, a.name, "tree",
							"a tensor node's payload at byte %d of the tree is not a string", at)
					}
					stack = append(stack, level{object: v == '{', expectKey: v == '{'})
					continue
				}
				stack = stack[:top] // ']'
			case string:
				if _, found := a.byName[v]; isTensor && !found {
					return newErr(KindInvalidIndex, a.name, "tree",
						"a tensor node names tensor %s, which is not in the index", shortName(v))
				}
			default:
				if isTensor {
					return newErr(KindInvalidIndex, a.name, "tree",
						"a tensor node's payload at byte %d of the tree is not a string", at)
				}
			}
		}
		// A value ended: its object (if any) expects a member name next.
		if top = len(stack) - 1; top >= 0 && stack[top].object {
			stack[top].expectKey = true
		}
	}
}
