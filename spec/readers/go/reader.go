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
	"sync"
	"sync/atomic"
)

// Chunk is one entry of a tensor's chunk table.
type Chunk struct {
	Offset  uint64 // absolute file offset of the stored bytes
	Length  uint64 // stored length
	CRC32C  uint32 // crc32c of the stored bytes
	Encoded bool   // true: filter + one zstd frame; false: the decoded bytes as they are
	// Hash is the first 16 bytes of the BLAKE3 hash of the chunk's decoded bytes
	// (section 16.3). A 1.0 file has no hashes: it is then zero and HasHash is false.
	Hash    [hashSize]byte
	HasHash bool
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

// Archive is an open bpz archive: one version of it (the latest unless
// Options.Version chose another). Its methods are safe for concurrent use.
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
	superblock       []byte // bytes 0–63, for the binary index's copy (16.5 step 2)

	// versions lists every committed version of the file, oldest first, the latest
	// last (one entry for a 1.0 file).
	versions []versionRecord
	cur      *view  // the version this Archive reads
	ignored  uint64 // bytes after the latest committed version (an unfinished append, 16.7)

	viewsMu sync.Mutex
	views   map[uint64]*view // every version opened so far, by number
}

// versionRecord locates one committed version (a record of section 16.4, or the
// latest version's own head and trailer).
type versionRecord struct {
	number, timeNS, dataStart, indexOffset, indexLength uint64
	indexCRC                                            uint32
}

// view is one version as its index describes it. A 1.0 file's single view is
// validated whole on open; a 1.1 view reads its binary index on demand.
type view struct {
	versionRecord
	bin *binIndex // nil for a 1.0 file

	listOnce sync.Once
	list     *listing
	listErr  error
	listed   atomic.Bool // list is set
	pos      int         // this version's place in Archive.versions

	metaOnce   sync.Once
	metadata   json.RawMessage
	writer     *Writer
	metaErr    error
	writerOnce sync.Once
	writerErr  error

	foundMu sync.Mutex
	found   map[string]*TensorInfo // tensors looked up by name before any listing (1.1)
}

// listing is every tensor of a version, validated as section 10 (1.0) or the
// listing rules of 16.5 (1.1) require.
type listing struct {
	tensors []TensorInfo // in the order saved (1.1: by position; 1.0: index order)
	byName  map[string]int
	spans   []span // every chunk, sorted by offset; shared chunks appear once per reference
	tree    json.RawMessage
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

// IndexOffset is the file offset of the opened version's index (the end of its
// data region).
func (a *Archive) IndexOffset() uint64 { return a.cur.indexOffset }

// Tensors lists the tensors in the order they were saved: index order in a 1.0 file,
// the records' positions in a 1.1 file. In a 1.1 file the first call reads and
// validates the whole index of the version (section 16.5, "on listing") and may
// fail; a 1.0 file was validated on open.
func (a *Archive) Tensors() ([]TensorInfo, error) {
	l, err := a.listing()
	if err != nil {
		return nil, err
	}
	return append([]TensorInfo(nil), l.tensors...), nil
}

// Tensor returns the tensor of that name. In a 1.1 file it reads O(log n) records of
// the index (a binary search), checking every record it visits.
func (a *Archive) Tensor(name string) (TensorInfo, error) {
	t, err := a.lookup(name)
	if err != nil {
		return TensorInfo{}, err
	}
	return *t, nil
}

// Tree returns the version's tree as it is written ("null" when absent). In a 1.1
// file this lists the tensors first (a tree node must name one of them).
func (a *Archive) Tree() (json.RawMessage, error) {
	l, err := a.listing()
	if err != nil {
		return nil, err
	}
	return append(json.RawMessage(nil), l.tree...), nil
}

// Metadata returns the version's metadata as it is written ("null" when absent). In
// a 1.1 file it reads only the metadata section.
func (a *Archive) Metadata() (json.RawMessage, error) {
	m, err := a.viewMetadata(a.cur)
	if err != nil {
		return nil, err
	}
	return append(json.RawMessage(nil), m...), nil
}

// Writer returns the software that wrote the version, or nil if the index does not say.
func (a *Archive) Writer() (*Writer, error) {
	v := a.cur
	if v.bin != nil {
		v.writerOnce.Do(func() { v.writer, v.writerErr = a.readWriterSection(v) })
	}
	if v.writerErr != nil || v.writer == nil {
		return nil, v.writerErr
	}
	w := *v.writer
	return &w, nil
}

func (a *Archive) listing() (*listing, error) {
	return a.listingOf(a.cur)
}

func (a *Archive) listingOf(v *view) (*listing, error) {
	v.listOnce.Do(func() {
		v.list, v.listErr = a.listView(v)
		v.listed.Store(v.listErr == nil)
	})
	return v.list, v.listErr
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
	a.superblock = head
	// Step 3: version and features.
	a.major, a.minor = le.Uint16(head[8:10]), le.Uint16(head[10:12])
	a.requiredFeatures, a.optionalFeatures = le.Uint32(head[12:16]), le.Uint32(head[16:20])
	if a.major != SupportedMajor {
		return newErr(KindUnsupportedVersion, a.name, "superblock",
			"the file is version %d.%d; this reader reads version %d.x", a.major, a.minor, SupportedMajor)
	}
	if unknown := a.requiredFeatures &^ knownRequired; unknown != 0 {
		return newErr(KindUnsupportedFeature, a.name, "superblock",
			"required feature bits 0x%08X are unknown to this reader", unknown)
	}
	// Step 4: alignment.
	a.alignment = le.Uint32(head[20:24])
	if al := a.alignment; al < MinAlignment || al > MaxAlignment || al&(al-1) != 0 {
		return newErr(KindInvalidIndex, a.name, "superblock",
			"alignment %d is not a power of two in [%d, %d]", al, MinAlignment, MaxAlignment)
	}
	// Step 5: trailer (section 16.7 for a file with a binary index).
	if a.size < superblockSize+trailerSize {
		return newErr(KindTruncated, a.name, "trailer",
			"the file is %d bytes long, too short for a superblock and a trailer", a.size)
	}
	if a.requiredFeatures&FeatureBinaryIndex != 0 {
		return a.openBinary()
	}
	return a.openJSON()
}

// openJSON performs steps 5–10 of section 10 on a 1.0 file (no binary index).
func (a *Archive) openJSON() error {
	le := binary.LittleEndian
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
	v := &view{}
	v.number, v.dataStart = 1, superblockSize
	v.indexOffset, v.indexLength = le.Uint64(tr[0:8]), le.Uint64(tr[8:16])
	v.indexCRC = le.Uint32(tr[16:20])
	if err := a.checkIndexLength(v.indexLength); err != nil {
		return err
	}
	if v.indexOffset < superblockSize {
		return newErr(KindInvalidIndex, a.name, "trailer", "index_offset %d is below 64", v.indexOffset)
	}
	if end, ok := trailerEnd(v.indexOffset, v.indexLength); !ok || end != a.size {
		return newErr(KindInvalidIndex, a.name, "trailer",
			"index_offset %d + index_length %d + 32 is not the file length %d",
			v.indexOffset, v.indexLength, a.size)
	}
	a.versions = []versionRecord{v.versionRecord}
	a.cur = v
	a.views = map[uint64]*view{1: v}
	// Step 7: index checksum.
	index, err := a.readFull("index", v.indexOffset, v.indexLength, nil)
	if err != nil {
		return err
	}
	if got := crc32c(index); got != v.indexCRC {
		return newErr(KindChecksumMismatch, a.name, "index",
			"index_crc is 0x%08X, the crc32c of the index is 0x%08X", v.indexCRC, got)
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
	v.metadata, v.writer = idx.metadata, idx.writer
	v.metaOnce.Do(func() {})
	v.writerOnce.Do(func() {})
	// Step 9: tensors.
	if len(idx.tensors) > MaxTensors {
		return newErr(KindLimitExceeded, a.name, "index",
			"%d tensors, over the limit of %d", len(idx.tensors), MaxTensors)
	}
	l := &listing{tensors: make([]TensorInfo, len(idx.tensors)), tree: idx.tree}
	for i := range idx.tensors {
		if err := a.validateTensor(v, &idx.tensors[i], nil, &l.tensors[i]); err != nil {
			return err
		}
	}
	// Step 10: uniqueness, overlap, tree references.
	l.byName = make(map[string]int, len(l.tensors))
	for i, t := range l.tensors {
		if j, dup := l.byName[t.Name]; dup {
			return newErr(KindInvalidIndex, a.name, tensorPart(t.Name),
				"two tensors have this name (#%d and #%d)", j, i)
		}
		l.byName[t.Name] = i
	}
	if err := a.checkOverlaps(l, false); err != nil {
		return err
	}
	if err := a.checkTree(l.tree, l.byName); err != nil {
		return err
	}
	v.list = l
	v.listOnce.Do(func() {})
	v.listed.Store(true)
	return a.pickVersion()
}

// checkIndexLength applies the format's limit and the caller's to an index length.
func (a *Archive) checkIndexLength(n uint64) error {
	if n > MaxIndexBytes {
		return newErr(KindLimitExceeded, a.name, "trailer",
			"index_length %d is over the limit of %d bytes", n, MaxIndexBytes)
	}
	if n > a.opts.MaxIndexBytes {
		return newErr(KindLimitExceeded, a.name, "trailer",
			"index_length %d is over this reader's limit of %d bytes (Options.MaxIndexBytes)",
			n, a.opts.MaxIndexBytes)
	}
	return nil
}

// trailerEnd is index_offset + index_length + 32, and false on overflow.
func trailerEnd(indexOffset, indexLength uint64) (uint64, bool) {
	end, ok := addChecked(indexOffset, indexLength)
	if ok {
		end, ok = addChecked(end, trailerSize)
	}
	return end, ok
}

// checkOverlaps sorts every chunk of l by offset into l.spans and refuses two that
// overlap. With shared set (1.1), chunks with the same stored range are one chunk
// referenced twice, not an overlap.
func (a *Archive) checkOverlaps(l *listing, shared bool) error {
	for i, t := range l.tensors {
		for k, c := range t.Chunks {
			l.spans = append(l.spans, span{c.Offset, c.Offset + c.Length, i, k})
		}
	}
	sort.Slice(l.spans, func(i, j int) bool {
		if l.spans[i].off != l.spans[j].off {
			return l.spans[i].off < l.spans[j].off
		}
		return l.spans[i].end < l.spans[j].end
	})
	prev := -1 // the last non-empty span (an empty one overlaps nothing)
	for k, s := range l.spans {
		if s.off == s.end {
			continue
		}
		if prev < 0 {
			prev = k
			continue
		}
		p := l.spans[prev]
		prev = k
		if shared && s.off == p.off && s.end == p.end {
			continue
		}
		if s.off < p.end {
			pt, st := l.tensors[p.tensor], l.tensors[s.tensor]
			return newErr(KindInvalidIndex, a.name, chunkPart(st.Name, s.chunk),
				"bytes [%d, %d) overlap chunk %d of tensor %s at [%d, %d)",
				s.off, s.end, p.chunk, shortName(pt.Name), p.off, p.end)
		}
	}
	return nil
}

// validateTensor performs step 9 of section 10 on one tensor of version v: limits
// first, then unknown names, then consistency. hashes, if not nil, holds the content
// hash of each chunk (1.1).
func (a *Archive) validateTensor(v *view, p *parsedTensor, hashes [][hashSize]byte, t *TensorInfo) error {
	g, err := a.checkTensorHead(p)
	if err != nil {
		return err
	}
	return a.checkTensorChunks(v, p, g, hashes, t)
}

// tensorGeom is what checkTensorHead derives from a tensor's description.
type tensorGeom struct {
	n, nbytes, nchunks uint64
	s                  int
}

// checkTensorHead performs the rules of step 9 that need no chunk table.
func (a *Archive) checkTensorHead(p *parsedTensor) (tensorGeom, error) {
	part := tensorPart(p.name)
	limit := func(format string, args ...any) error {
		return newErr(KindLimitExceeded, a.name, part, format, args...)
	}
	bad := func(format string, args ...any) error {
		return newErr(KindInvalidIndex, a.name, part, format, args...)
	}
	if len(p.name) > MaxNameBytes {
		return tensorGeom{}, limit("the name is %d bytes long, over the limit of %d", len(p.name), MaxNameBytes)
	}
	if len(p.shape) > MaxRank {
		return tensorGeom{}, limit("rank %d is over the limit of %d", len(p.shape), MaxRank)
	}
	n := uint64(1)
	zero := false
	for k, d := range p.shape {
		if d > MaxInteger {
			return tensorGeom{}, limit("dimension %d is %s, over 2^53−1", k, fmtUint(d))
		}
		zero = zero || d == 0
	}
	if zero {
		n = 0
	} else {
		for _, d := range p.shape {
			var ok bool
			if n, ok = mulChecked(n, d); !ok || n > MaxInteger {
				return tensorGeom{}, limit("shape %v has over 2^53−1 elements", p.shape)
			}
		}
	}
	if p.chunkElems > MaxInteger {
		return tensorGeom{}, limit("chunk_elems %s is over 2^53−1", fmtUint(p.chunkElems))
	}
	s, dtypeKnown := dtypeSizes[p.dtype]
	var nbytes uint64
	if dtypeKnown {
		var ok bool
		if nbytes, ok = mulChecked(n, uint64(s)); !ok || nbytes > MaxInteger {
			return tensorGeom{}, limit("%d elements × %d bytes is over 2^53−1 bytes", n, s)
		}
		if cb := min(p.chunkElems, n) * uint64(s); cb > MaxChunkBytes {
			return tensorGeom{}, limit("a chunk holds %d decoded bytes, over the limit of %d", cb, MaxChunkBytes)
		}
	}
	var nchunks uint64
	if nbytes > 0 && p.chunkElems > 0 {
		nchunks = (n-1)/p.chunkElems + 1
		if nchunks > MaxChunksPerTensor {
			return tensorGeom{}, limit("%d elements in chunks of %d need %d chunks, over the limit of %d",
				n, p.chunkElems, nchunks, MaxChunksPerTensor)
		}
	}
	if !dtypeKnown {
		return tensorGeom{}, newErr(KindUnsupportedFeature, a.name, part, "unknown dtype %s", shortName(p.dtype))
	}
	if p.storage != StorageRaw && p.storage != StorageChunked {
		return tensorGeom{}, newErr(KindUnsupportedFeature, a.name, part, "unknown storage %s", shortName(p.storage))
	}
	if !knownFilter(p.filter) {
		return tensorGeom{}, newErr(KindUnsupportedFeature, a.name, part, "unknown filter %s", shortName(p.filter))
	}
	if !filterDefinedFor(p.filter, p.dtype) {
		return tensorGeom{}, bad("filter %q is not defined for dtype %s", p.filter, p.dtype)
	}
	raw := p.storage == StorageRaw
	if raw && p.filter != FilterNone {
		return tensorGeom{}, bad("a raw tensor has filter %q (must be \"none\")", p.filter)
	}
	if p.chunkElems == 0 {
		return tensorGeom{}, bad("chunk_elems is 0")
	}
	if strings.IndexByte(p.name, 0) >= 0 {
		return tensorGeom{}, bad("the name contains a NUL character")
	}
	return tensorGeom{n: n, nbytes: nbytes, nchunks: nchunks, s: s}, nil
}

// checkTensorChunks performs the rules of step 9 on the chunk table and fills in t.
func (a *Archive) checkTensorChunks(v *view, p *parsedTensor, g tensorGeom, hashes [][hashSize]byte, t *TensorInfo) error {
	n, nbytes, nchunks, s := g.n, g.nbytes, g.nchunks, g.s
	raw := p.storage == StorageRaw
	bad := func(format string, args ...any) error {
		return newErr(KindInvalidIndex, a.name, tensorPart(p.name), format, args...)
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
		if off < superblockSize || !ok || end > v.indexOffset {
			return newErr(KindInvalidIndex, a.name, cpart,
				"stored bytes [%s, %s + %s) are outside the data region [64, %d)",
				fmtUint(off), fmtUint(off), fmtUint(length), v.indexOffset)
		}
		if v.bin != nil {
			if err := a.checkInDataRegion(v, off, end, cpart); err != nil {
				return err
			}
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
		if hashes != nil {
			t.Chunks[k].Hash, t.Chunks[k].HasHash = hashes[k], true
		}
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
func (a *Archive) checkTree(tree json.RawMessage, byName map[string]int) error {
	if firstByte(tree) != '{' {
		return nil // null
	}
	type level struct {
		object    bool
		expectKey bool
	}
	var stack []level
	tensorValue := false // the next value is that of a "tensor" member
	dec := json.NewDecoder(bytes.NewReader(tree))
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
				if _, found := byName[v]; isTensor && !found {
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
