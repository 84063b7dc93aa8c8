package bpz

import (
	"bytes"
	"encoding/binary"
	"sort"
	"testing"

	"github.com/klauspost/compress/zstd"
	"lukechampine.com/blake3"
)

// A minimal 1.1 writer written from section 16 of spec/FORMAT.md, for tests: an
// independent check of the reader until (and besides) the generated v11_* vectors.
// It writes versions one after another into a byte slice, deduplicating chunks
// against the previous version as 16.6 describes.

type w11Tensor struct {
	name, dtype, storage, filter string
	shape                        []uint64
	chunkElems                   uint64
	data                         []byte
	encode                       bool // chunked: store each chunk as filter + one zstd frame
}

type w11Version struct {
	tensors  []w11Tensor // in the order saved
	tree     string      // JSON text; "" is null
	metadata string      // JSON text; "" is null
	writer   string      // JSON text; "" leaves the optional section out
	timeNS   uint64
}

// idx11 is one version's index before it is serialized; tests mutate it.
type idx11 struct {
	version, timeNS, dataStart uint64
	tensorCount, chunkCount    uint64
	sections                   []sec11 // in file order
	superblockCopy             []byte
	padTo                      uint64 // trailer end boundary (64)
	keepSectionCRCs            bool   // do not recompute the directory crcs
	extraDir                   []sec11
}

type sec11 struct {
	kind uint32
	data []byte
	crc  uint32
}

type chunkRec11 struct {
	offset, length uint64
	crc            uint32
	encoded        uint8
	hash           [16]byte
}

type dedupKey struct {
	hash          [16]byte
	decodedLen    int
	encoded       uint8
	filter        string
	itemSize      int
	rawWholeStart bool
}

type writer11 struct {
	alignment uint32
	file      []byte
	records   [][48]byte // versions section of the next version
	prev      map[dedupKey]chunkRec11
	prevRaw   map[string][]chunkRec11 // raw tensors of the previous version, by hash list
	number    uint64
	written   []uint64 // data bytes written per version (not counting shared chunks)
}

var le = binary.LittleEndian

func newWriter11(alignment uint32) *writer11 {
	w := &writer11{alignment: alignment}
	w.file = superblock(1, 1, FeatureBinaryIndex, 0, alignment)
	return w
}

func blake128(b []byte) (h [16]byte) {
	s := blake3.Sum256(b)
	copy(h[:], s[:16])
	return
}

func shuffleBytes(d []byte, s int) []byte {
	m := len(d) / s
	f := make([]byte, len(d))
	for i := 0; i < m; i++ {
		for j := 0; j < s; j++ {
			f[j*m+i] = d[i*s+j]
		}
	}
	return f
}

var zenc, _ = zstd.NewWriter(nil, zstd.WithEncoderCRC(true))

// append writes one version; mut (if not nil) may change its index before it is
// serialized. It returns the file offset of the version's index.
func (w *writer11) append(v w11Version, mut func(*idx11)) uint64 {
	w.number++
	dataStart := uint64(len(w.file))
	cur := map[dedupKey]chunkRec11{}
	curRaw := map[string][]chunkRec11{}
	type placed struct {
		t      w11Tensor
		pos    int
		chunks []chunkRec11
	}
	var all []placed
	written := uint64(0)
	for pos, t := range v.tensors {
		s, _ := DTypeSize(t.dtype)
		cb := int(t.chunkElems) * s
		var pieces [][]byte
		for off := 0; off < len(t.data); off += cb {
			pieces = append(pieces, t.data[off:min(len(t.data), off+cb)])
		}
		var recs []chunkRec11
		if t.storage == StorageRaw {
			var key []byte
			for _, p := range pieces {
				h := blake128(p)
				key = append(append(key, h[:]...), byte(len(p)), byte(len(p)>>8), byte(len(p)>>16))
			}
			if old, ok := w.prevRaw[string(key)]; ok && len(pieces) > 0 {
				recs = old
			} else if len(pieces) > 0 {
				for uint64(len(w.file))%uint64(w.alignment) != 0 {
					w.file = append(w.file, 0)
				}
				for _, p := range pieces {
					recs = append(recs, chunkRec11{offset: uint64(len(w.file)), length: uint64(len(p)), crc: crc32c(p), hash: blake128(p)})
					w.file = append(w.file, p...)
					written += uint64(len(p))
				}
			}
			curRaw[string(key)] = recs
		} else {
			for _, p := range pieces {
				enc := uint8(0)
				if t.encode {
					enc = 1
				}
				k := dedupKey{hash: blake128(p), decodedLen: len(p), encoded: enc, filter: t.filter, itemSize: s}
				if r, ok := w.prev[k]; ok {
					recs = append(recs, r)
					cur[k] = r
					continue
				}
				if r, ok := cur[k]; ok { // equal chunks within one version are stored once too
					recs = append(recs, r)
					continue
				}
				stored := p
				if t.encode {
					f := p
					if t.filter == FilterShuffle {
						f = shuffleBytes(p, s)
					}
					stored = zenc.EncodeAll(f, nil)
				}
				r := chunkRec11{offset: uint64(len(w.file)), length: uint64(len(stored)), crc: crc32c(stored), encoded: enc, hash: k.hash}
				w.file = append(w.file, stored...)
				written += uint64(len(stored))
				recs = append(recs, r)
				cur[k] = r
			}
		}
		all = append(all, placed{t, pos, recs})
	}
	w.written = append(w.written, written)
	// Records sorted by name (bytes), chunk records in that order.
	sort.Slice(all, func(i, j int) bool { return all[i].t.name < all[j].t.name })
	var tensors, names, shapes, chunks []byte
	for _, p := range all {
		rec := make([]byte, 64)
		le.PutUint64(rec[0:], uint64(len(names)))
		le.PutUint32(rec[8:], uint32(len(p.t.name)))
		le.PutUint32(rec[12:], uint32(p.pos))
		le.PutUint64(rec[16:], uint64(len(shapes)/8))
		le.PutUint64(rec[24:], p.t.chunkElems)
		le.PutUint64(rec[32:], uint64(len(chunks)/40))
		le.PutUint32(rec[40:], uint32(len(p.chunks)))
		rec[44] = codeOf(dtypeByCode[:], p.t.dtype)
		rec[45] = codeOf(storageByCode[:], p.t.storage)
		rec[46] = codeOf(filterByCode[:], p.t.filter)
		rec[47] = uint8(len(p.t.shape))
		var table []byte
		for _, c := range p.chunks {
			cr := make([]byte, 40)
			le.PutUint64(cr[0:], c.offset)
			le.PutUint64(cr[8:], c.length)
			le.PutUint32(cr[16:], c.crc)
			cr[20] = c.encoded
			copy(cr[24:], c.hash[:])
			table = append(table, cr...)
		}
		le.PutUint32(rec[48:], crc32c(table))
		names = append(names, p.t.name...)
		for _, d := range p.t.shape {
			shapes = le.AppendUint64(shapes, d)
		}
		chunks = append(chunks, table...)
		tensors = append(tensors, rec...)
	}
	var versions []byte
	for _, r := range w.records {
		versions = append(versions, r[:]...)
	}
	jsonOr := func(s string) []byte {
		if s == "" {
			return []byte("null")
		}
		return []byte(s)
	}
	ix := &idx11{version: w.number, timeNS: v.timeNS, dataStart: dataStart,
		tensorCount: uint64(len(all)), chunkCount: uint64(len(chunks) / 40),
		superblockCopy: append([]byte(nil), w.file[:64]...), padTo: 64,
		sections: []sec11{{kind: secVersions, data: versions}, {kind: secTensors, data: tensors},
			{kind: secNames, data: names}, {kind: secShapes, data: shapes}, {kind: secChunks, data: chunks},
			{kind: secTree, data: jsonOr(v.tree)}, {kind: secMetadata, data: jsonOr(v.metadata)}}}
	if v.writer != "" {
		ix.sections = append(ix.sections, sec11{kind: secWriter, data: []byte(v.writer)})
	}
	fixRecordCRCs(ix)
	if mut != nil {
		mut(ix)
	}
	indexOffset := uint64(len(w.file))
	index, headCRC := ix.serialize(indexOffset)
	w.file = append(w.file, index...)
	tr := make([]byte, 32)
	le.PutUint64(tr[0:], indexOffset)
	le.PutUint64(tr[8:], uint64(len(index)))
	le.PutUint32(tr[16:], headCRC)
	le.PutUint32(tr[20:], crc32c(tr[:20]))
	copy(tr[24:], endMagic[:])
	w.file = append(w.file, tr...)
	var r [48]byte
	le.PutUint64(r[0:], ix.version)
	le.PutUint64(r[8:], ix.timeNS)
	le.PutUint64(r[16:], ix.dataStart)
	le.PutUint64(r[24:], indexOffset)
	le.PutUint64(r[32:], uint64(len(index)))
	le.PutUint32(r[40:], headCRC)
	w.records = append(w.records, r)
	w.prev, w.prevRaw = cur, curRaw
	return indexOffset
}

func codeOf(table []string, name string) uint8 {
	for i, n := range table {
		if n == name && n != "" {
			return uint8(i)
		}
	}
	panic("no code for " + name)
}

// fixRecordCRCs recomputes every tensor record's record_crc and chunks_crc from the
// sections (after a test changed them).
func fixRecordCRCs(ix *idx11) {
	get := func(kind uint32) []byte {
		for _, s := range ix.sections {
			if s.kind == kind {
				return s.data
			}
		}
		return nil
	}
	tensors, names, shapes, chunks := get(secTensors), get(secNames), get(secShapes), get(secChunks)
	for i := 0; i+64 <= len(tensors); i += 64 {
		rec := tensors[i : i+64]
		first, count := le.Uint64(rec[32:]), uint64(le.Uint32(rec[40:]))
		if (first+count)*40 <= uint64(len(chunks)) {
			le.PutUint32(rec[48:], crc32c(chunks[first*40:(first+count)*40]))
		}
		no, nl := le.Uint64(rec[0:]), uint64(le.Uint32(rec[8:]))
		so, rank := le.Uint64(rec[16:]), uint64(rec[47])
		if no+nl <= uint64(len(names)) && (so+rank)*8 <= uint64(len(shapes)) {
			c := crc32Update(crc32c(rec[:60]), names[no:no+nl])
			le.PutUint32(rec[60:], crc32Update(c, shapes[so*8:(so+rank)*8]))
		}
	}
}

// serialize lays out head + sections + zero padding so that the trailer ends at a
// multiple of padTo, for an index starting at indexOffset; it returns the index and
// the head's crc.
func (ix *idx11) serialize(indexOffset uint64) ([]byte, uint32) {
	dir := append(append([]sec11(nil), ix.sections...), ix.extraDir...)
	headLen := 160 + 32*len(dir)
	head := make([]byte, headLen)
	copy(head, indexMagic[:])
	le.PutUint64(head[8:], ix.version)
	le.PutUint64(head[16:], ix.timeNS)
	le.PutUint64(head[24:], ix.dataStart)
	le.PutUint64(head[32:], ix.tensorCount)
	le.PutUint64(head[40:], ix.chunkCount)
	le.PutUint32(head[48:], uint32(len(dir)))
	copy(head[96:160], ix.superblockCopy)
	body := []byte{}
	for i, s := range dir {
		e := head[160+32*i:]
		le.PutUint32(e[0:], s.kind)
		off := uint64(headLen + len(body))
		crc := crc32c(s.data)
		if ix.keepSectionCRCs || i >= len(ix.sections) {
			crc = s.crc
		}
		if i >= len(ix.sections) { // extra entries point into the padding
			off = uint64(headLen)
		} else {
			body = append(body, s.data...)
		}
		le.PutUint64(e[8:], off)
		le.PutUint64(e[16:], uint64(len(s.data)))
		le.PutUint32(e[24:], crc)
	}
	index := append(head, body...)
	for (indexOffset+uint64(len(index))+32)%ix.padTo != 0 {
		index = append(index, 0)
	}
	return index, crc32c(head)
}

// section returns a pointer to the data of a section kind of ix.
func (ix *idx11) section(kind uint32) *[]byte {
	for i := range ix.sections {
		if ix.sections[i].kind == kind {
			return &ix.sections[i].data
		}
	}
	return nil
}

func TestWriter11BlakeVector(t *testing.T) {
	// BLAKE3 of the empty input (the BLAKE3 specification's test vectors).
	h := blake3.Sum256(nil)
	if got := bytes.ToLower([]byte(hexString(h[:]))); string(got) != "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262" {
		t.Fatalf("blake3(\"\") = %s", got)
	}
}

func hexString(b []byte) string {
	const digits = "0123456789abcdef"
	out := make([]byte, 0, 2*len(b))
	for _, c := range b {
		out = append(out, digits[c>>4], digits[c&15])
	}
	return string(out)
}
