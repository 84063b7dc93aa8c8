package bpz

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"unicode/utf8"
)

// This file reads a file with required feature bit 0 (section 16): the binary index,
// its versions and the recovery of an unfinished append. Only the head (and the
// versions section) is read on open; tensor records are read when a tensor is looked
// up (a binary search) or when the version is listed.

// binIndex is the validated head of one version's binary index.
type binIndex struct {
	tensorCount, chunkCount uint64
	headLen                 uint64
	dir                     []dirEntry         // the section directory as written
	sections                map[uint32]section // the known kinds present (validateHead)
	records                 []versionRecord    // its versions section: earlier versions, oldest first
	superblockCopy          []byte
}

// section is one entry of the section directory.
type section struct {
	off, length uint64 // off is relative to the index start
	crc         uint32
}

const maxHeadLen = indexHeadMin + dirEntrySize*maxSections

// openBinary opens a file with a binary index: it finds the latest committed version
// (recovering from an unfinished append, 16.7), validates its head (16.5 steps 1–4)
// and then opens the version Options.Version asks for.
func (a *Archive) openBinary() error {
	latest, err := a.findLatest()
	if err != nil {
		return err
	}
	latest.pos = len(latest.bin.records)
	a.versions = append(append([]versionRecord(nil), latest.bin.records...), latest.versionRecord)
	a.views = map[uint64]*view{latest.number: latest}
	a.cur = latest
	return a.pickVersion()
}

// findLatest finds the latest committed version, validated (16.5 steps 1–4). If the
// file's last 32 bytes are a valid trailer that ends the file, that is it, and any
// fault of its index is an error (damage: a writer makes the index durable before
// the trailer). Otherwise the file ends in an unfinished append (16.7): scan back for
// the last offset p, a multiple of 64, where a valid trailer ends whose index ends
// where it starts and whose head checks.
func (a *Archive) findLatest() (*view, error) {
	le := binary.LittleEndian
	tr, err := a.readFull("trailer", a.size-trailerSize, trailerSize, nil)
	if err != nil {
		return nil, err
	}
	var why string // why the file's end is no committed trailer
	if !bytes.Equal(tr[24:32], endMagic[:]) {
		why = "the last 8 bytes are not BPZ_END\\n"
	} else if got, want := crc32c(tr[:20]), le.Uint32(tr[20:24]); got != want {
		why = fmt.Sprintf("trailer_crc is 0x%08X, the crc32c of the last trailer's bytes 0..20 is 0x%08X", want, got)
	} else if end, ok := trailerEnd(le.Uint64(tr[0:8]), le.Uint64(tr[8:16])); !ok || end != a.size {
		why = fmt.Sprintf("index_offset %d + index_length %d + 32 is not the file length %d",
			le.Uint64(tr[0:8]), le.Uint64(tr[8:16]), a.size)
	} else {
		v := &view{}
		v.indexOffset, v.indexLength, v.indexCRC = le.Uint64(tr[0:8]), le.Uint64(tr[8:16]), le.Uint32(tr[16:20])
		if err := a.checkIndexLimit(v.indexLength); err != nil {
			return nil, err
		}
		if v.indexOffset < superblockSize {
			return nil, newErr(KindInvalidIndex, a.name, "trailer", "index_offset %d is below 64", v.indexOffset)
		}
		if a.size%trailerBoundary != 0 {
			return nil, newErr(KindInvalidIndex, a.name, "trailer",
				"the trailer ends at offset %d, not a multiple of 64", a.size)
		}
		if _, err := a.readHead(v, v.indexCRC); err != nil {
			return nil, err
		}
		if err := a.validateHead(v); err != nil {
			return nil, err
		}
		return v, nil
	}
	// An unfinished append: scan back in large blocks.
	const block = 1 << 20
	var buf []byte
	var bufStart uint64
	minEnd := uint64(superblockSize + indexHeadMin + dirEntrySize*minSections + trailerSize)
	p := (a.size - 1) &^ (trailerBoundary - 1) // the last multiple of 64 before the file's end
	for ; p >= minEnd; p -= trailerBoundary {
		if p-trailerSize < bufStart || p > bufStart+uint64(len(buf)) {
			lo := max(p, block) - block
			b, err := a.readFull("trailer", lo, p-lo, buf)
			if err != nil {
				return nil, err
			}
			buf, bufStart = b, lo
		}
		v, err := a.tryTrailer(p, buf[p-trailerSize-bufStart:p-bufStart])
		if err != nil {
			return nil, err
		}
		if v != nil {
			a.ignored = a.size - p
			return v, nil
		}
	}
	return nil, newErr(KindTruncated, a.name, "trailer",
		"%s, and no committed version is found scanning back from the end: the file was cut short or never finished", why)
}

// checkIndexLimit applies the format's limit to a binary index's length. The caller's
// Options.MaxIndexBytes bounds what each call reads of it, not its length.
func (a *Archive) checkIndexLimit(n uint64) error {
	if n > MaxIndexBytes {
		return newErr(KindLimitExceeded, a.name, "trailer",
			"index_length %d is over the limit of %d bytes", n, MaxIndexBytes)
	}
	return nil
}

// tryTrailer returns the committed version that ends at p, tr being the 32 bytes
// before p, or nil if there is none; an error only for what must not be skipped (an
// I/O error, a limit).
func (a *Archive) tryTrailer(p uint64, tr []byte) (*view, error) {
	le := binary.LittleEndian
	if !bytes.Equal(tr[24:32], endMagic[:]) || crc32c(tr[:20]) != le.Uint32(tr[20:24]) {
		return nil, nil
	}
	v := &view{}
	v.indexOffset, v.indexLength, v.indexCRC = le.Uint64(tr[0:8]), le.Uint64(tr[8:16]), le.Uint32(tr[16:20])
	if end, ok := trailerEnd(v.indexOffset, v.indexLength); !ok || end != p || v.indexOffset < superblockSize {
		return nil, nil
	}
	if err := a.checkIndexLimit(v.indexLength); err != nil {
		return nil, err
	}
	_, err := a.readHead(v, v.indexCRC)
	if err == nil {
		err = a.validateHead(v)
	}
	if k := KindOf(err); k == KindInvalidIndex || k == KindChecksumMismatch {
		return nil, nil // not a committed version: keep scanning
	}
	if err != nil {
		return nil, err
	}
	return v, nil
}

// readHead reads and checks the head of the index v locates (16.5 step 1) and fills in
// v's number, time and data start from it.
func (a *Archive) readHead(v *view, wantCRC uint32) (*binIndex, error) {
	le := binary.LittleEndian
	bad := func(format string, args ...any) error {
		return newErr(KindInvalidIndex, a.name, fmt.Sprintf("index at offset %d", v.indexOffset), format, args...)
	}
	if v.indexLength < indexHeadMin {
		return nil, bad("index_length %d is shorter than an index head", v.indexLength)
	}
	head, err := a.readFull("index", v.indexOffset, min(v.indexLength, maxHeadLen), nil)
	if err != nil {
		return nil, err
	}
	if !bytes.Equal(head[:8], indexMagic[:]) {
		return nil, bad("index_magic is % x, not BPZINDEX", head[:8])
	}
	count := le.Uint32(head[48:52])
	if count < minSections || count > maxSections {
		return nil, bad("section_count %d is outside [%d, %d]", count, minSections, maxSections)
	}
	headLen := uint64(indexHeadMin + dirEntrySize*count)
	if headLen > v.indexLength {
		return nil, bad("the head (%d bytes for %d sections) is longer than index_length %d", headLen, count, v.indexLength)
	}
	head = head[:headLen]
	if got := crc32c(head); got != wantCRC {
		return nil, newErr(KindChecksumMismatch, a.name, fmt.Sprintf("index at offset %d", v.indexOffset),
			"index_crc is 0x%08X, the crc32c of the index head is 0x%08X", wantCRC, got)
	}
	v.number, v.timeNS, v.dataStart = le.Uint64(head[8:16]), le.Uint64(head[16:24]), le.Uint64(head[24:32])
	bin := &binIndex{tensorCount: le.Uint64(head[32:40]), chunkCount: le.Uint64(head[40:48]), headLen: headLen}
	bin.sections = make(map[uint32]section)
	v.bin = bin
	// The directory is checked by validateHead.
	dirs := head[indexHeadMin:]
	bin.dir = make([]dirEntry, count)
	for i := range bin.dir {
		e := dirs[i*dirEntrySize : (i+1)*dirEntrySize]
		bin.dir[i] = dirEntry{kind: le.Uint32(e[0:4]),
			section: section{off: le.Uint64(e[8:16]), length: le.Uint64(e[16:24]), crc: le.Uint32(e[24:28])}}
	}
	bin.superblockCopy = head[indexFixedSize:indexHeadMin]
	return bin, nil
}

type dirEntry struct {
	kind uint32
	section
}

// validateHead performs 16.5 steps 2–4 (and the head's part of step 6) on a version
// whose head readHead has checked.
func (a *Archive) validateHead(v *view) error {
	b := v.bin
	part := fmt.Sprintf("index of version %d", v.number)
	bad := func(format string, args ...any) error {
		return newErr(KindInvalidIndex, a.name, part, format, args...)
	}
	// Step 2.
	if !bytes.Equal(b.superblockCopy, a.superblock) {
		return bad("the superblock copy differs from the file's superblock")
	}
	// Step 3.
	if b.tensorCount > MaxTensors {
		return newErr(KindLimitExceeded, a.name, part, "%d tensors, over the limit of %d", b.tensorCount, MaxTensors)
	}
	var known []dirEntry
	for _, e := range b.dir {
		name, ok := sectionNames[e.kind]
		if !ok {
			continue // a kind of a later minor version
		}
		if _, twice := b.sections[e.kind]; twice {
			return bad("section %s appears twice in the directory", name)
		}
		end, ok := addChecked(e.off, e.length)
		if e.off < b.headLen || !ok || end > v.indexLength {
			return bad("section %s at [%s, %s + %s) is outside [%d, %d)", name,
				fmtUint(e.off), fmtUint(e.off), fmtUint(e.length), b.headLen, v.indexLength)
		}
		b.sections[e.kind] = e.section
		known = append(known, e)
	}
	for kind := secVersions; kind <= secMetadata; kind++ {
		if _, ok := b.sections[kind]; !ok {
			return bad("required section %s is missing", sectionNames[kind])
		}
	}
	sort.Slice(known, func(i, j int) bool { return known[i].off < known[j].off })
	for i := 1; i < len(known); i++ {
		p, c := known[i-1], known[i]
		if p.length > 0 && c.length > 0 && c.off < p.off+p.length {
			return bad("sections %s and %s overlap", sectionNames[p.kind], sectionNames[c.kind])
		}
	}
	sizeIs := func(kind uint32, count, size uint64) error {
		want, ok := mulChecked(count, size)
		if got := b.sections[kind].length; !ok || got != want {
			return bad("section %s is %d bytes, not %d × %d", sectionNames[kind], got, count, size)
		}
		return nil
	}
	if err := sizeIs(secTensors, b.tensorCount, tensorRecSize); err != nil {
		return err
	}
	if err := sizeIs(secChunks, b.chunkCount, chunkRecSize); err != nil {
		return err
	}
	if n := b.sections[secVersions].length; n%versionRecSize != 0 {
		return bad("section versions is %d bytes, not a multiple of %d", n, versionRecSize)
	}
	if n := b.sections[secShapes].length; n%8 != 0 {
		return bad("section shapes is %d bytes, not a multiple of 8", n)
	}
	// The head's own fields (step 6 as 16.5 extends it, and 16.2).
	if v.number == 0 {
		return bad("version number 0 (versions start at 1)")
	}
	if v.dataStart < superblockSize || v.dataStart > v.indexOffset {
		return bad("data_start %d is not in [64, index_offset %d]", v.dataStart, v.indexOffset)
	}
	if end, _ := trailerEnd(v.indexOffset, v.indexLength); end%trailerBoundary != 0 {
		return bad("its trailer ends at offset %d, not a multiple of 64", end)
	}
	// Step 4: the versions section.
	vs := b.sections[secVersions]
	if used := b.headLen + vs.length; used > a.opts.MaxIndexBytes {
		return newErr(KindLimitExceeded, a.name, part,
			"the head and versions section are %d bytes, over this reader's limit of %d (Options.MaxIndexBytes)",
			used, a.opts.MaxIndexBytes)
	}
	raw, err := a.readSection(v, secVersions)
	if err != nil {
		return err
	}
	le := binary.LittleEndian
	b.records = make([]versionRecord, len(raw)/versionRecSize)
	for i := range b.records {
		r := raw[i*versionRecSize:]
		b.records[i] = versionRecord{number: le.Uint64(r[0:]), timeNS: le.Uint64(r[8:]), dataStart: le.Uint64(r[16:]),
			indexOffset: le.Uint64(r[24:]), indexLength: le.Uint64(r[32:]), indexCRC: le.Uint32(r[40:])}
		if !allZero(r[44:48]) {
			return newErr(KindInvalidIndex, a.name, part, "versions record %d: reserved bytes are not zero", i)
		}
	}
	return a.checkChain(v, part)
}

// checkChain applies the rules of 16.4 to v's versions section.
func (a *Archive) checkChain(v *view, part string) error {
	recs := v.bin.records
	bad := func(i int, format string, args ...any) error {
		return newErr(KindInvalidIndex, a.name, part, "versions record %d (version %d): %s",
			i, recs[i].number, fmt.Sprintf(format, args...))
	}
	if len(recs) == 0 && v.dataStart != superblockSize {
		return newErr(KindInvalidIndex, a.name, part,
			"no earlier version is listed, but data_start is %d, not 64", v.dataStart)
	}
	for i, r := range recs {
		if i == 0 && r.dataStart != superblockSize {
			return bad(i, "the first version's data_start is %d, not 64", r.dataStart)
		}
		if r.number == 0 || r.number >= v.number || (i > 0 && r.number <= recs[i-1].number) {
			return bad(i, "version numbers do not strictly increase up to this version's %d", v.number)
		}
		if r.dataStart > r.indexOffset {
			return bad(i, "data_start %d is after index_offset %d", r.dataStart, r.indexOffset)
		}
		next := v.dataStart
		if i+1 < len(recs) {
			next = recs[i+1].dataStart
		}
		end, ok := trailerEnd(r.indexOffset, r.indexLength)
		if !ok || end%trailerBoundary != 0 || end != next {
			return bad(i, "its trailer would end at %s, not a multiple of 64 equal to the next version's data_start %d",
				fmtUint(end), next)
		}
	}
	return nil
}

// pickVersion makes a.cur the version Options.Version asks for: 0 the latest, k > 0
// version number k, k < 0 the k-th from the latest (-1 is the latest).
func (a *Archive) pickVersion() error {
	want := a.opts.Version
	pos := len(a.versions) - 1
	switch {
	case want > 0:
		pos = sort.Search(len(a.versions), func(i int) bool { return a.versions[i].number >= uint64(want) })
		if pos == len(a.versions) || a.versions[pos].number != uint64(want) {
			return newErr(KindInvalidArgument, a.name, "", "the file has no version %d; it holds %s",
				want, a.versionList())
		}
	case want < 0:
		if -want > int64(len(a.versions)) {
			return newErr(KindInvalidArgument, a.name, "", "version %d counts back past the first version; the file holds %s",
				want, a.versionList())
		}
		pos = len(a.versions) + int(want)
	}
	v, err := a.viewAt(pos)
	if err != nil {
		return err
	}
	a.cur = v
	return nil
}

func (a *Archive) versionList() string {
	nums := make([]string, len(a.versions))
	for i, r := range a.versions {
		nums[i] = fmt.Sprint(r.number)
	}
	if len(nums) == 1 {
		return "version " + nums[0]
	}
	return "versions " + strings.Join(nums, ", ")
}

// viewAt returns the view of a.versions[pos], opening its index if it is an earlier
// version (16.4: its head must check against the latest's record of it, and its own
// versions section must repeat the records before it).
func (a *Archive) viewAt(pos int) (*view, error) {
	r := a.versions[pos]
	a.viewsMu.Lock()
	defer a.viewsMu.Unlock()
	if v, ok := a.views[r.number]; ok {
		return v, nil
	}
	part := fmt.Sprintf("index of version %d", r.number)
	v := &view{versionRecord: r, pos: pos}
	if _, err := a.readHead(v, r.indexCRC); err != nil {
		return nil, err
	}
	if v.versionRecord != r {
		return nil, newErr(KindInvalidIndex, a.name, part,
			"its head (version %d, time %d, data_start %d) differs from the latest index's record of it (version %d, time %d, data_start %d)",
			v.number, v.timeNS, v.dataStart, r.number, r.timeNS, r.dataStart)
	}
	if err := a.validateHead(v); err != nil {
		return nil, err
	}
	if len(v.bin.records) != pos || !equalRecords(v.bin.records, a.versions[:pos]) {
		return nil, newErr(KindInvalidIndex, a.name, part,
			"its versions section differs from the latest index's records of the versions before it")
	}
	a.views[r.number] = v
	return v, nil
}

func equalRecords(x, y []versionRecord) bool {
	for i := range x {
		if x[i] != y[i] {
			return false
		}
	}
	return len(x) == len(y)
}

// readSection reads one known section of v's index whole and checks its crc.
func (a *Archive) readSection(v *view, kind uint32) ([]byte, error) {
	s := v.bin.sections[kind]
	b, err := a.readFull("index section "+sectionNames[kind], v.indexOffset+s.off, s.length, nil)
	if err != nil {
		return nil, err
	}
	if got := crc32c(b); got != s.crc {
		return nil, newErr(KindChecksumMismatch, a.name, fmt.Sprintf("index of version %d", v.number),
			"section %s: the directory gives crc32c 0x%08X, its %d bytes have 0x%08X",
			sectionNames[kind], s.crc, len(b), got)
	}
	return b, nil
}

// checkInDataRegion refuses a chunk of version v that does not lie inside the data
// region [data_start, index_offset) of v or of an earlier version: anywhere else it
// would overlap an earlier index or trailer.
func (a *Archive) checkInDataRegion(v *view, off, end uint64, part string) error {
	regions := a.versions[:v.pos+1]
	i := sort.Search(len(regions), func(i int) bool { return regions[i].dataStart > off }) - 1
	if i >= 0 && end <= regions[i].indexOffset {
		return nil
	}
	return newErr(KindInvalidIndex, a.name, part,
		"stored bytes [%d, %d) are not inside the data region of version %d or of an earlier version",
		off, end, v.number)
}

// indexBytes fetches n bytes at offset off of one section of v's index; off + n is
// inside the section (the caller checked).
type indexBytes func(kind uint32, off, n uint64) ([]byte, error)

// fileIndexBytes reads index bytes from the file as they are needed (a lookup).
func (a *Archive) fileIndexBytes(v *view) indexBytes {
	return func(kind uint32, off, n uint64) ([]byte, error) {
		return a.readFull("index section "+sectionNames[kind], v.indexOffset+v.bin.sections[kind].off+off, n, nil)
	}
}

// tensorRecord is a decoded tensor record whose own checks have passed.
type tensorRecord struct {
	name                 []byte
	shape                []uint64
	position             uint32
	chunkElems           uint64
	firstChunk           uint64
	chunkCount           uint32
	dtype, storage, filt uint8
	chunksCRC            uint32
}

// readRecord reads tensor record i of v and performs the per-tensor checks that
// need only the record, its name and its shape: limits on the name length and rank,
// bounds in names and shapes, record_crc, reserved bytes, the name's encoding.
func (a *Archive) readRecord(v *view, get indexBytes, i uint64) (*tensorRecord, error) {
	le := binary.LittleEndian
	part := fmt.Sprintf("tensor record %d of version %d", i, v.number)
	rec, err := get(secTensors, i*tensorRecSize, tensorRecSize)
	if err != nil {
		return nil, err
	}
	r := &tensorRecord{position: le.Uint32(rec[12:]), chunkElems: le.Uint64(rec[24:]),
		firstChunk: le.Uint64(rec[32:]), chunkCount: le.Uint32(rec[40:]), dtype: rec[44], storage: rec[45],
		filt: rec[46], chunksCRC: le.Uint32(rec[48:])}
	nameOff, nameLen, shapeOff, rank := le.Uint64(rec[0:]), uint64(le.Uint32(rec[8:])), le.Uint64(rec[16:]), uint64(rec[47])
	if nameLen > MaxNameBytes {
		return nil, newErr(KindLimitExceeded, a.name, part, "the name is %d bytes long, over the limit of %d", nameLen, MaxNameBytes)
	}
	if rank > MaxRank {
		return nil, newErr(KindLimitExceeded, a.name, part, "rank %d is over the limit of %d", rank, MaxRank)
	}
	bad := func(format string, args ...any) error { return newErr(KindInvalidIndex, a.name, part, format, args...) }
	if end, ok := addChecked(nameOff, nameLen); !ok || end > v.bin.sections[secNames].length {
		return nil, bad("its name [%s, +%d) is outside the names section (%d bytes)", fmtUint(nameOff), nameLen,
			v.bin.sections[secNames].length)
	}
	if end, ok := addChecked(shapeOff, rank); !ok || end > v.bin.sections[secShapes].length/8 {
		return nil, bad("its shape [%s, +%d) is outside the shapes section (%d dimensions)", fmtUint(shapeOff), rank,
			v.bin.sections[secShapes].length/8)
	}
	if r.name, err = get(secNames, nameOff, nameLen); err != nil {
		return nil, err
	}
	shapeBytes, err := get(secShapes, shapeOff*8, rank*8)
	if err != nil {
		return nil, err
	}
	c := crc32Update(crc32c(rec[:60]), r.name)
	if c = crc32Update(c, shapeBytes); c != le.Uint32(rec[60:]) {
		return nil, newErr(KindChecksumMismatch, a.name, part,
			"record_crc is 0x%08X, the crc32c of the record, its name and its shape is 0x%08X", le.Uint32(rec[60:]), c)
	}
	part = fmt.Sprintf("tensor %s (record %d of version %d)", shortName(string(r.name)), i, v.number)
	if !allZero(rec[52:60]) {
		return nil, newErr(KindInvalidIndex, a.name, part, "reserved bytes 52–59 of the record are not zero")
	}
	if !utf8.Valid(r.name) {
		return nil, newErr(KindInvalidIndex, a.name, part, "the name is not UTF-8")
	}
	if bytes.IndexByte(r.name, 0) >= 0 {
		return nil, newErr(KindInvalidIndex, a.name, part, "the name contains a NUL character")
	}
	r.shape = make([]uint64, rank)
	for k := range r.shape {
		r.shape[k] = le.Uint64(shapeBytes[k*8:])
	}
	return r, nil
}

// completeTensor reads record r's chunk records, checks them (bounds, chunks_crc,
// reserved bytes) and applies every rule of section 10 step 9 to the tensor.
func (a *Archive) completeTensor(v *view, get indexBytes, r *tensorRecord, t *TensorInfo) error {
	le := binary.LittleEndian
	part := tensorPart(string(r.name))
	if end, ok := addChecked(r.firstChunk, uint64(r.chunkCount)); !ok || end > v.bin.chunkCount {
		return newErr(KindInvalidIndex, a.name, part, "its chunks [%s, +%d) are outside the %d chunk records",
			fmtUint(r.firstChunk), r.chunkCount, v.bin.chunkCount)
	}
	n := uint64(r.chunkCount) * chunkRecSize
	if n > a.opts.MaxIndexBytes {
		return newErr(KindLimitExceeded, a.name, part,
			"its chunk table is %d bytes, over this reader's limit of %d (Options.MaxIndexBytes)", n, a.opts.MaxIndexBytes)
	}
	recs, err := get(secChunks, r.firstChunk*chunkRecSize, n)
	if err != nil {
		return err
	}
	if got := crc32c(recs); got != r.chunksCRC {
		return newErr(KindChecksumMismatch, a.name, part,
			"chunks_crc is 0x%08X, the crc32c of its %d chunk records is 0x%08X", r.chunksCRC, r.chunkCount, got)
	}
	p := &parsedTensor{name: string(r.name), dtype: codeName(dtypeByCode[:], r.dtype), shape: r.shape,
		storage: codeName(storageByCode[:], r.storage), filter: codeName(filterByCode[:], r.filt),
		chunkElems: r.chunkElems, chunks: make([][4]uint64, r.chunkCount)}
	hashes := make([][hashSize]byte, r.chunkCount)
	for k := range p.chunks {
		c := recs[k*chunkRecSize : (k+1)*chunkRecSize]
		if !allZero(c[21:24]) {
			return newErr(KindInvalidIndex, a.name, chunkPart(p.name, k), "reserved bytes of the chunk record are not zero")
		}
		p.chunks[k] = [4]uint64{le.Uint64(c[0:]), le.Uint64(c[8:]), uint64(le.Uint32(c[16:])), uint64(c[20])}
		copy(hashes[k][:], c[24:40])
	}
	return a.validateTensor(v, p, hashes, t)
}

// lookupBinary finds a tensor of a 1.1 version by binary search over its records,
// sorted by name, checking every record it visits.
func (a *Archive) lookupBinary(v *view, name string) (*TensorInfo, error) {
	v.foundMu.Lock()
	t, ok := v.found[name]
	v.foundMu.Unlock()
	if ok {
		return t, nil
	}
	get := a.fileIndexBytes(v)
	lo, hi := uint64(0), v.bin.tensorCount
	for lo < hi {
		mid := lo + (hi-lo)/2
		r, err := a.readRecord(v, get, mid)
		if err != nil {
			return nil, err
		}
		switch c := bytes.Compare(r.name, []byte(name)); {
		case c < 0:
			lo = mid + 1
		case c > 0:
			hi = mid
		default:
			t = &TensorInfo{}
			if err := a.completeTensor(v, get, r, t); err != nil {
				return nil, err
			}
			v.foundMu.Lock()
			if v.found == nil {
				v.found = map[string]*TensorInfo{}
			}
			v.found[name] = t
			v.foundMu.Unlock()
			return t, nil
		}
	}
	return nil, newErr(KindTensorNotFound, a.name, tensorPart(name), "no tensor of that name in version %d", v.number)
}

// listView reads a 1.1 version's whole index and applies the listing rules of 16.5.
func (a *Archive) listView(v *view) (*listing, error) {
	b := v.bin
	part := fmt.Sprintf("index of version %d", v.number)
	var total uint64
	for _, k := range []uint32{secTensors, secNames, secShapes, secChunks, secTree} {
		total += b.sections[k].length
	}
	if total > a.opts.MaxIndexBytes {
		return nil, newErr(KindLimitExceeded, a.name, part,
			"listing reads %d bytes of index, over this reader's limit of %d (Options.MaxIndexBytes)",
			total, a.opts.MaxIndexBytes)
	}
	secs := map[uint32][]byte{}
	for _, k := range []uint32{secTensors, secNames, secShapes, secChunks} {
		s, err := a.readSection(v, k)
		if err != nil {
			return nil, err
		}
		secs[k] = s
	}
	get := func(kind uint32, off, n uint64) ([]byte, error) { return secs[kind][off : off+n], nil }
	l := &listing{tensors: make([]TensorInfo, b.tensorCount), byName: make(map[string]int, b.tensorCount)}
	placed := make([]bool, b.tensorCount)
	var prev []byte
	for i := uint64(0); i < b.tensorCount; i++ {
		r, err := a.readRecord(v, get, i)
		if err != nil {
			return nil, err
		}
		if i > 0 && bytes.Equal(prev, r.name) {
			return nil, newErr(KindInvalidIndex, a.name, tensorPart(string(r.name)),
				"two tensor records (%d and %d) have this name", i-1, i)
		}
		if i > 0 && bytes.Compare(prev, r.name) > 0 {
			return nil, newErr(KindInvalidIndex, a.name, tensorPart(string(r.name)),
				"tensor records are not sorted by name: record %d follows %s", i, shortName(string(prev)))
		}
		prev = r.name
		if uint64(r.position) >= b.tensorCount || placed[r.position] {
			return nil, newErr(KindInvalidIndex, a.name, tensorPart(string(r.name)),
				"position %d is out of range or taken: positions are not a permutation of 0 … %d",
				r.position, b.tensorCount-1)
		}
		placed[r.position] = true
		if err := a.completeTensor(v, get, r, &l.tensors[r.position]); err != nil {
			return nil, err
		}
		l.byName[string(r.name)] = int(r.position)
	}
	if err := a.checkOverlaps(l, true); err != nil {
		return nil, err
	}
	tree, err := a.readJSONSection(v, secTree)
	if err != nil {
		return nil, err
	}
	if c := firstByte(tree); c != '{' && c != 'n' {
		return nil, newErr(KindInvalidIndex, a.name, part, "the tree is neither a tree node (object) nor null")
	}
	if err := a.checkTree(tree, l.byName); err != nil {
		return nil, err
	}
	l.tree = tree
	return l, nil
}

// readJSONSection reads a JSON section (tree, metadata, writer), checks its crc and
// validates it under section 7's JSON rules.
func (a *Archive) readJSONSection(v *view, kind uint32) (json.RawMessage, error) {
	part := fmt.Sprintf("index of version %d", v.number)
	if n := v.bin.sections[kind].length; n > a.opts.MaxIndexBytes {
		return nil, newErr(KindLimitExceeded, a.name, part, "section %s is %d bytes, over this reader's limit of %d (Options.MaxIndexBytes)",
			sectionNames[kind], n, a.opts.MaxIndexBytes)
	}
	b, err := a.readSection(v, kind)
	if err != nil {
		return nil, err
	}
	if err := validateJSONText(b); err != nil {
		var ie *indexError
		errors.As(err, &ie)
		return nil, newErr(ie.kind, a.name, part, "section %s: %s", sectionNames[kind], ie.msg)
	}
	return json.RawMessage(bytes.TrimSpace(b)), nil
}

// viewMetadata returns a version's metadata, reading its section on first use (1.1).
func (a *Archive) viewMetadata(v *view) (json.RawMessage, error) {
	if v.bin != nil {
		v.metaOnce.Do(func() { v.metadata, v.metaErr = a.readJSONSection(v, secMetadata) })
	}
	return v.metadata, v.metaErr
}

// readWriterSection reads the optional writer section of a 1.1 version.
func (a *Archive) readWriterSection(v *view) (*Writer, error) {
	if _, ok := v.bin.sections[secWriter]; !ok {
		return nil, nil
	}
	b, err := a.readJSONSection(v, secWriter)
	if err != nil {
		return nil, err
	}
	w, err := parseWriter(b)
	if err != nil {
		var ie *indexError
		errors.As(err, &ie)
		return nil, newErr(ie.kind, a.name, fmt.Sprintf("index of version %d", v.number), "section writer: %s", ie.msg)
	}
	return w, nil
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}
