package bpz

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"
)

// Tests of format 1.1 (section 16) on files written by writer11_test.go.

func f32s(vals ...float32) []byte {
	var b []byte
	for _, v := range vals {
		b = binary.LittleEndian.AppendUint32(b, math.Float32bits(v))
	}
	return b
}

func u16s(vals ...uint16) []byte {
	var b []byte
	for _, v := range vals {
		b = binary.LittleEndian.AppendUint16(b, v)
	}
	return b
}

func treeOf(ts []w11Tensor) string {
	var items []string
	for _, t := range ts {
		items = append(items, fmt.Sprintf(`[%q,{"tensor":%q}]`, t.name, t.name))
	}
	return `{"dict":[` + strings.Join(items, ",") + `]}`
}

// seriesVersions are three versions of a small simulation state: w constant, x with
// one chunk changing, b dropped in version 2, n added; version 3 changes only metadata.
func seriesVersions() [][]w11Tensor {
	w := w11Tensor{name: "w", dtype: "F32", storage: StorageRaw, filter: FilterNone, shape: []uint64{4, 3}, chunkElems: 6,
		data: f32s(1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12)}
	x1 := w11Tensor{name: "x", dtype: "U16", storage: StorageChunked, filter: FilterShuffle, shape: []uint64{10}, chunkElems: 4,
		data: u16s(1, 2, 3, 4, 5, 6, 7, 8, 9, 10), encode: true}
	b := w11Tensor{name: "b", dtype: "BOOL", storage: StorageChunked, filter: FilterNone, shape: []uint64{5}, chunkElems: 2,
		data: []byte{1, 0, 1, 1, 0}}
	e := w11Tensor{name: "net/e", dtype: "F64", storage: StorageChunked, filter: FilterNone, shape: []uint64{0, 3}, chunkElems: 3}
	s := w11Tensor{name: "s", dtype: "I32", storage: StorageRaw, filter: FilterNone, shape: []uint64{}, chunkElems: 1,
		data: []byte{7, 0, 0, 0}}
	x2 := x1
	x2.data = u16s(1, 2, 3, 4, 50, 60, 70, 80, 9, 10)
	n := w11Tensor{name: "n", dtype: "U8", storage: StorageChunked, filter: FilterNone, shape: []uint64{3}, chunkElems: 3,
		data: []byte{9, 8, 7}}
	return [][]w11Tensor{{w, x1, b, e, s}, {w, x2, e, s, n}, {w, x2, e, s, n}}
}

func buildSeries(t testing.TB, muts map[int]func(*idx11)) (*writer11, [][]w11Tensor) {
	w := newWriter11(64)
	vs := seriesVersions()
	for i, ts := range vs {
		w.append(w11Version{tensors: ts, tree: treeOf(ts), metadata: fmt.Sprintf(`{"step":%d}`, (i+1)*100),
			timeNS: uint64(1700000000000000000 + i), writer: `{"name":"go-test","version":"1"}`}, muts[i])
	}
	return w, vs
}

func checkTensorsEqual(t *testing.T, a *Archive, want []w11Tensor) {
	t.Helper()
	got, err := a.Tensors()
	if err != nil {
		t.Fatalf("Tensors: %v", err)
	}
	if len(got) != len(want) {
		t.Fatalf("%d tensors, want %d", len(got), len(want))
	}
	for i, wt := range want {
		g := got[i]
		if g.Name != wt.name || g.DType != wt.dtype || g.Storage != wt.storage || g.Filter != wt.filter ||
			fmt.Sprint(g.Shape) != fmt.Sprint(wt.shape) {
			t.Errorf("tensor %d: %q %s %v %s %s, want %q %s %v %s %s", i, g.Name, g.DType, g.Shape, g.Storage, g.Filter,
				wt.name, wt.dtype, wt.shape, wt.storage, wt.filter)
		}
		d, err := a.Read(wt.name)
		if err != nil || !bytes.Equal(d, wt.data) && len(wt.data)+len(d) > 0 {
			t.Errorf("Read(%q) = %v, %v; want %v", wt.name, d, err, wt.data)
		}
		var buf bytes.Buffer
		if _, err := a.ReadTo(wt.name, &buf); err != nil || !bytes.Equal(buf.Bytes(), d) {
			t.Errorf("ReadTo(%q): %v", wt.name, err)
		}
		for _, c := range g.Chunks {
			if !c.HasHash {
				t.Errorf("tensor %q: a 1.1 chunk without a hash", wt.name)
			}
		}
	}
}

func TestV11Series(t *testing.T) {
	w, vs := buildSeries(t, nil)
	a, err := OpenBytes(w.file)
	if err != nil {
		t.Fatal(err)
	}
	if maj, min := a.Version(); maj != 1 || min != 1 {
		t.Errorf("format %d.%d", maj, min)
	}
	if a.VersionNumber() != 3 || a.LatestVersionNumber() != 3 {
		t.Errorf("version %d of %d", a.VersionNumber(), a.LatestVersionNumber())
	}
	if n, ok := a.Recovered(); ok {
		t.Errorf("recovered %d bytes of an intact file", n)
	}
	infos, err := a.Versions()
	if err != nil {
		t.Fatal(err)
	}
	if len(infos) != 3 {
		t.Fatalf("%d versions", len(infos))
	}
	for i, vi := range infos {
		r := w.records[i]
		if vi.Number != uint64(i+1) || vi.TimeNS != uint64(1700000000000000000+i) || string(vi.Metadata) != fmt.Sprintf(`{"step":%d}`, (i+1)*100) {
			t.Errorf("version %d: %+v", i+1, vi)
		}
		if want := le.Uint64(r[24:]) + le.Uint64(r[32:]) + 32 - le.Uint64(r[16:]); vi.BytesAdded != want {
			t.Errorf("version %d: bytes added %d, want %d", i+1, vi.BytesAdded, want)
		}
	}
	// Version 3 shares every chunk of version 2: it adds an index and a trailer only.
	if w.written[2] != 0 || infos[2].BytesAdded != infos[2].IndexLength+32 {
		t.Errorf("version 3 wrote %d data bytes, added %d", w.written[2], infos[2].BytesAdded)
	}
	// Version 2 rewrote only x's changed chunk and n.
	if w.written[1] >= w.written[0] {
		t.Errorf("version 2 wrote %d data bytes, version 1 %d", w.written[1], w.written[0])
	}
	if err := a.Verify(); err != nil {
		t.Fatalf("Verify: %v", err)
	}
	for _, sel := range []struct {
		opt  int64
		want int
	}{{0, 2}, {3, 2}, {-1, 2}, {2, 1}, {-2, 1}, {1, 0}, {-3, 0}} {
		a, err := OpenBytesWith(w.file, Options{Version: sel.opt})
		if err != nil {
			t.Fatalf("Version %d: %v", sel.opt, err)
		}
		if a.VersionNumber() != uint64(sel.want+1) {
			t.Errorf("Version %d opened version %d", sel.opt, a.VersionNumber())
		}
		// One tensor by binary search, before any listing.
		for _, wt := range vs[sel.want] {
			fresh, _ := OpenBytesWith(w.file, Options{Version: sel.opt})
			ti, err := fresh.Tensor(wt.name)
			if err != nil || ti.Name != wt.name {
				t.Fatalf("Tensor(%q) in version %d: %v", wt.name, sel.want+1, err)
			}
			d, err := fresh.Read(wt.name)
			if err != nil || !bytes.Equal(d, wt.data) && len(d)+len(wt.data) > 0 {
				t.Fatalf("Read(%q) in version %d before listing: %v %v", wt.name, sel.want+1, d, err)
			}
			listed, _ := a.Tensor(wt.name)
			if !reflect.DeepEqual(listed, ti) {
				t.Errorf("lookup and listing disagree on %q: %+v vs %+v", wt.name, ti, listed)
			}
		}
		if _, err := a.Tensor("b"); sel.want == 0 && err != nil || sel.want > 0 && KindOf(err) != KindTensorNotFound {
			t.Errorf("Tensor(b) in version %d: %v", sel.want+1, err)
		}
		checkTensorsEqual(t, a, vs[sel.want])
		meta, err := a.Metadata()
		if err != nil || string(meta) != fmt.Sprintf(`{"step":%d}`, (sel.want+1)*100) {
			t.Errorf("metadata of version %d: %s %v", sel.want+1, meta, err)
		}
		tree, err := a.Tree()
		if err != nil || string(tree) != treeOf(vs[sel.want]) {
			t.Errorf("tree of version %d: %s %v", sel.want+1, tree, err)
		}
		if wr, err := a.Writer(); err != nil || wr == nil || wr.Name != "go-test" {
			t.Errorf("writer: %+v %v", wr, err)
		}
		if err := a.Verify(); err != nil {
			t.Errorf("Verify from version %d: %v", sel.want+1, err)
		}
	}
	for _, bad := range []int64{4, 99, -4} {
		_, err := OpenBytesWith(w.file, Options{Version: bad})
		checkError(t, err, KindInvalidArgument, "<bytes>")
		if err != nil && !strings.Contains(err.Error(), "versions 1, 2, 3") {
			t.Errorf("message %q does not name the versions present", err)
		}
	}
	// A 1.0 file holds version 1.
	tiny, _ := os.ReadFile(filepath.Join(vectorsDir, "tiny.bpz"))
	for _, v := range []int64{1, -1, 0} {
		a, err := OpenBytesWith(tiny, Options{Version: v})
		if err != nil || a.VersionNumber() != 1 {
			t.Errorf("1.0 file, Version %d: %v", v, err)
		}
		if vi, err := a.Versions(); err != nil || len(vi) != 1 || vi[0].BytesAdded != uint64(len(tiny))-64 {
			t.Errorf("1.0 file versions: %+v %v", vi, err)
		}
	}
	_, err = OpenBytesWith(tiny, Options{Version: 2})
	checkError(t, err, KindInvalidArgument, "<bytes>")
}

// A 1.0 reader's view of 1.1: without bit 0 support it must refuse. This reader knows
// bit 0, so refusing other bits is what is left to test.
func TestV11OtherRequiredBitsRefused(t *testing.T) {
	w, _ := buildSeries(t, nil)
	f := append([]byte(nil), w.file...)
	le.PutUint32(f[12:], FeatureBinaryIndex|2)
	le.PutUint32(f[60:], crc32c(f[:60]))
	_, err := OpenBytes(f)
	checkError(t, err, KindUnsupportedFeature, "<bytes>")
}

func TestV11LookupReadsLittle(t *testing.T) {
	w := newWriter11(64)
	var ts []w11Tensor
	for i := 0; i < 3000; i++ {
		ts = append(ts, w11Tensor{name: fmt.Sprintf("layer%04d/weight", (i*7919)%3000), dtype: "U8", storage: StorageChunked,
			filter: FilterNone, shape: []uint64{2}, chunkElems: 2, data: []byte{byte(i), byte(i >> 8)}})
	}
	w.append(w11Version{tensors: ts, tree: treeOf(ts)}, nil)
	w.append(w11Version{tensors: ts[:2000], tree: treeOf(ts[:2000])}, nil)
	cr := &countingReaderAt{r: bytes.NewReader(w.file)}
	a, err := OpenReaderAt(cr, int64(len(w.file)), "many")
	if err != nil {
		t.Fatal(err)
	}
	openReads, openBytes := len(cr.reads), int64(0)
	for _, r := range cr.reads {
		openBytes += r[1]
	}
	cr.reads = nil
	ti, err := a.Tensor("layer1234/weight")
	if err != nil {
		t.Fatal(err)
	}
	var n int64
	for _, r := range cr.reads {
		n += r[1]
	}
	// log2(2000) < 11 probes of 3 reads (record, name, shape), plus the chunk table.
	if len(cr.reads) > 3*12+1 || n > 4096 {
		t.Errorf("one lookup among 2000 tensors took %d reads, %d bytes", len(cr.reads), n)
	}
	t.Logf("open: %d reads, %d bytes; lookup among 2000: %d reads, %d bytes", openReads, openBytes, len(cr.reads), n)
	if openReads > 4 || openBytes > 64+32+maxHeadLen+48 {
		t.Errorf("open took %d reads, %d bytes (superblock, trailer, head, versions)", openReads, openBytes)
	}
	for i, tt := range ts {
		if tt.name != ti.Name {
			continue
		}
		if i >= 2000 {
			t.Fatalf("found %q, which version 2 does not hold", tt.name)
		}
		if d, err := a.Read(ti.Name); err != nil || !bytes.Equal(d, tt.data) {
			t.Errorf("Read: %v %v (want tensor #%d)", d, err, i)
		}
	}
	if _, err := a.Tensor(ts[2500].name); KindOf(err) != KindTensorNotFound {
		t.Errorf("a tensor of version 1 only: %v", err)
	}
	if _, err := a.Tensor(ts[1999].name); err != nil {
		t.Errorf("the last tensor of version 2: %v", err)
	}
	// The caller's index cap binds listing, not lookup.
	a, err = OpenBytesWith(w.file, Options{MaxIndexBytes: 8 << 10})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.Tensor("layer0042/weight"); err != nil {
		t.Errorf("lookup under an 8 KiB index cap: %v", err)
	}
	_, err = a.Tensors()
	checkError(t, err, KindLimitExceeded, "<bytes>")
}

func TestV11Recovery(t *testing.T) {
	w, vs := buildSeries(t, nil)
	full := w.file
	end := func(i int) int { r := w.records[i]; return int(le.Uint64(r[24:]) + le.Uint64(r[32:]) + 32) }
	cases := []struct {
		name    string
		file    []byte
		version int // expected latest (1-based)
		ignored int
	}{
		{"one byte appended", append(append([]byte{}, full...), 0), 3, 1},
		{"64 zero bytes", append(append([]byte{}, full...), make([]byte, 64)...), 3, 64},
		{"a copy of the last trailer after garbage", append(append(append([]byte{}, full...), make([]byte, 96)...), full[len(full)-32:]...), 3, 128},
		{"version 3 cut in its index", full[:end(1)+(end(2)-end(1))/2], 2, (end(2) - end(1)) / 2},
		{"version 3 cut before its trailer", full[:end(2)-32], 2, end(2) - 32 - end(1)},
		{"version 3's trailer cut", full[:end(2)-1], 2, end(2) - 1 - end(1)},
		{"version 2 and 3 cut", full[:end(0)+100], 1, 100},
		{"version 3 cut inside its trailer's crc", full[:end(2)-12], 2, end(2) - 12 - end(1)},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			a, err := OpenBytes(c.file)
			if err != nil {
				t.Fatal(err)
			}
			if n, ok := a.Recovered(); !ok || n != int64(c.ignored) {
				t.Errorf("Recovered() = %d, %v; want %d, true", n, ok, c.ignored)
			}
			if a.LatestVersionNumber() != uint64(c.version) || a.VersionNumber() != uint64(c.version) {
				t.Errorf("latest %d, want %d", a.LatestVersionNumber(), c.version)
			}
			checkTensorsEqual(t, a, vs[c.version-1])
			if err := a.Verify(); err != nil {
				t.Errorf("Verify: %v", err)
			}
		})
	}
	// No committed version at all: truncated.
	for _, cut := range []int{end(0) - 1, end(0) - 32, 200, 100} {
		_, err := OpenBytes(full[:cut])
		checkError(t, err, KindTruncated, "<bytes>")
	}
	// A valid last trailer whose index does not check is damage, not an unfinished
	// append (16.7): an error, no recovery to version 2.
	f := append([]byte{}, full...)
	r := w.records[2]
	clear(f[le.Uint64(r[24:]) : le.Uint64(r[24:])+le.Uint64(r[32:])])
	_, err := OpenBytes(f)
	checkError(t, err, KindInvalidIndex, "<bytes>")
	f = append([]byte{}, full...)
	f[le.Uint64(r[24:])+20] ^= 1
	_, err = OpenBytes(f)
	checkError(t, err, KindChecksumMismatch, "<bytes>")
	// A valid last trailer that ends the file at an offset not a multiple of 64.
	f = append(append([]byte{}, full[:len(full)-32]...), 0)
	tr := append([]byte{}, full[len(full)-32:]...)
	le.PutUint64(tr[8:], le.Uint64(tr[8:])+1)
	le.PutUint32(tr[20:], crc32c(tr[:20]))
	_, err = OpenBytes(append(f, tr...))
	checkError(t, err, KindInvalidIndex, "<bytes>")
}

// corruptCase mutates the index of version `at` (0-based) of the series and expects an
// error of kind `kind` at `stage`: "open", "lookup" (Tensor(name) on a fresh open),
// "list" (Tensors), "verify", "metadata", or "open-version" (opening version `at`+1).
type corruptCase struct {
	name   string
	at     int
	mut    func(*idx11)
	stage  string
	kind   string
	lookup string // tensor for "lookup"
}

func recordOf(ix *idx11, name string) []byte {
	tensors, names := *ix.section(secTensors), *ix.section(secNames)
	for i := 0; i < len(tensors); i += 64 {
		rec := tensors[i : i+64]
		no, nl := le.Uint64(rec[0:]), uint64(le.Uint32(rec[8:]))
		if string(names[no:no+nl]) == name {
			return rec
		}
	}
	panic("no record " + name)
}

func chunkOf(ix *idx11, name string, k int) []byte {
	rec := recordOf(ix, name)
	first := le.Uint64(rec[32:])
	return (*ix.section(secChunks))[(first+uint64(k))*40:][:40]
}

func TestV11Corruptions(t *testing.T) {
	cases := []corruptCase{
		{"versions record: data_start after index_offset", 2, func(ix *idx11) {
			v := *ix.section(secVersions)
			le.PutUint64(v[48+16:], le.Uint64(v[48+24:])+64)
		}, "open", KindInvalidIndex, ""},
		{"versions record points forward past this version", 2, func(ix *idx11) {
			v := *ix.section(secVersions)
			le.PutUint64(v[48+24:], le.Uint64(v[48+24:])+1<<20)
		}, "open", KindInvalidIndex, ""},
		{"versions loop: numbers not increasing", 2, func(ix *idx11) {
			le.PutUint64((*ix.section(secVersions))[48:], 1)
		}, "open", KindInvalidIndex, ""},
		{"versions record number not below the version's", 2, func(ix *idx11) {
			le.PutUint64((*ix.section(secVersions))[48:], 3)
		}, "open", KindInvalidIndex, ""},
		{"first version's data_start not 64", 2, func(ix *idx11) {
			le.PutUint64((*ix.section(secVersions))[16:], 128)
		}, "open", KindInvalidIndex, ""},
		{"no earlier version but data_start past 64", 0, func(ix *idx11) { ix.dataStart = 128 }, "open", KindInvalidIndex, ""},
		{"data_start past index_offset", 2, func(ix *idx11) { ix.dataStart = 1 << 30 }, "open", KindInvalidIndex, ""},
		{"version number 0", 0, func(ix *idx11) { ix.version = 0 }, "open", KindInvalidIndex, ""},
		{"versions section crc", 2, func(ix *idx11) {
			ix.keepSectionCRCs = true
			for i := range ix.sections {
				ix.sections[i].crc = crc32c(ix.sections[i].data)
			}
			ix.sections[0].crc ^= 1
		}, "open", KindChecksumMismatch, ""},
		{"versions section not a multiple of 48", 2, func(ix *idx11) {
			*ix.section(secVersions) = append(*ix.section(secVersions), 0)
		}, "open", KindInvalidIndex, ""},
		{"superblock copy differs", 2, func(ix *idx11) { ix.superblockCopy[20] = 128 }, "open", KindInvalidIndex, ""},
		{"tree section missing", 2, func(ix *idx11) {
			ix.sections = append(ix.sections[:5:5], ix.sections[6:]...) // still 7 sections: the head checks
		}, "open", KindInvalidIndex, ""},
		{"tensors section of the wrong size", 2, func(ix *idx11) { ix.tensorCount++ }, "open", KindInvalidIndex, ""},
		{"chunk_count disagrees with the section", 2, func(ix *idx11) { ix.chunkCount += 2 }, "open", KindInvalidIndex, ""},
		{"tensor_count over 2^20", 2, func(ix *idx11) { ix.tensorCount = 1<<20 + 1 }, "open", KindLimitExceeded, ""},
		{"a section twice", 2, func(ix *idx11) { ix.sections = append(ix.sections, sec11{kind: secMetadata, data: []byte("null")}) }, "open", KindInvalidIndex, ""},
		{"section past the index", 2, func(ix *idx11) {
			ix.extraDir = []sec11{{kind: secWriter, data: make([]byte, 1<<20)}}
		}, "open", KindInvalidIndex, ""},
		{"unknown section kinds are ignored", 2, func(ix *idx11) {
			ix.sections = append(ix.sections, sec11{kind: 99, data: []byte("future")}, sec11{kind: 99, data: []byte("twice")})
		}, "", "", ""},
		{"record_crc wrong", 2, func(ix *idx11) { recordOf(ix, "w")[60] ^= 1 }, "lookup", KindChecksumMismatch, "w"},
		{"record_crc wrong, seen by listing", 2, func(ix *idx11) { recordOf(ix, "w")[60] ^= 1 }, "list", KindChecksumMismatch, ""},
		{"chunks_crc wrong", 2, func(ix *idx11) { recordOf(ix, "x")[48] ^= 1; fixRecordOnly(ix, "x") }, "lookup", KindChecksumMismatch, "x"},
		{"tensors section crc", 2, func(ix *idx11) {
			ix.keepSectionCRCs = true
			for i := range ix.sections {
				ix.sections[i].crc = crc32c(ix.sections[i].data)
			}
			ix.sections[1].crc ^= 1
		}, "list", KindChecksumMismatch, ""},
		{"names not sorted", 2, func(ix *idx11) {
			tensors := *ix.section(secTensors)
			a, b := append([]byte{}, tensors[0:64]...), append([]byte{}, tensors[64:128]...)
			copy(tensors[0:], b)
			copy(tensors[64:], a)
		}, "list", KindInvalidIndex, ""},
		{"positions not a permutation", 2, func(ix *idx11) {
			le.PutUint32(recordOf(ix, "w")[12:], le.Uint32(recordOf(ix, "x")[12:]))
			fixRecordCRCs(ix)
		}, "list", KindInvalidIndex, ""},
		{"position out of range", 2, func(ix *idx11) { le.PutUint32(recordOf(ix, "w")[12:], 99); fixRecordCRCs(ix) }, "list", KindInvalidIndex, ""},
		{"tree names a missing tensor", 2, func(ix *idx11) { *ix.section(secTree) = []byte(`{"tensor":"nope"}`) }, "list", KindInvalidIndex, ""},
		{"tree not a node", 2, func(ix *idx11) { *ix.section(secTree) = []byte(`[1]`) }, "list", KindInvalidIndex, ""},
		{"metadata not JSON", 2, func(ix *idx11) { *ix.section(secMetadata) = []byte(`{"a":1,"a":2}`) }, "metadata", KindInvalidIndex, ""},
		{"metadata nested too deep", 2, func(ix *idx11) { *ix.section(secMetadata) = bytes.Repeat([]byte("["), 129) }, "metadata", KindLimitExceeded, ""},
		{"chunk past the version's end", 2, func(ix *idx11) {
			c := chunkOf(ix, "n", 0)
			le.PutUint64(c[0:], 1<<20)
			fixRecordCRCs(ix)
		}, "lookup", KindInvalidIndex, "n"},
		{"chunk inside an earlier version's index", 2, func(ix *idx11) {
			c := chunkOf(ix, "n", 0)
			le.PutUint64(c[0:], ix.dataStart-40)
			fixRecordCRCs(ix)
		}, "lookup", KindInvalidIndex, "n"},
		{"chunks overlapping without being the same", 2, func(ix *idx11) {
			c0, c1 := chunkOf(ix, "x", 0), chunkOf(ix, "n", 0)
			le.PutUint64(c1[0:], le.Uint64(c0[0:])+1)
			le.PutUint32(c1[16:], 0)
			fixRecordCRCs(ix)
		}, "list", KindInvalidIndex, ""},
		{"unknown dtype code", 2, func(ix *idx11) { recordOf(ix, "n")[44] = 99; fixRecordCRCs(ix) }, "lookup", KindUnsupportedFeature, "n"},
		{"unknown filter code", 2, func(ix *idx11) { recordOf(ix, "n")[46] = 9; fixRecordCRCs(ix) }, "lookup", KindUnsupportedFeature, "n"},
		{"unknown storage code", 2, func(ix *idx11) { recordOf(ix, "n")[45] = 2; fixRecordCRCs(ix) }, "lookup", KindUnsupportedFeature, "n"},
		{"rank over 64", 2, func(ix *idx11) { recordOf(ix, "n")[47] = 65; fixRecordCRCs(ix) }, "lookup", KindLimitExceeded, "n"},
		{"name past the names section", 2, func(ix *idx11) { le.PutUint64(recordOf(ix, "n")[0:], 1000) }, "list", KindInvalidIndex, ""},
		{"reserved record bytes", 2, func(ix *idx11) { recordOf(ix, "n")[55] = 1; fixRecordCRCs(ix) }, "lookup", KindInvalidIndex, "n"},
		{"reserved chunk record bytes", 2, func(ix *idx11) { chunkOf(ix, "n", 0)[22] = 1; fixRecordCRCs(ix) }, "lookup", KindInvalidIndex, "n"},
		{"encoded flag 2", 2, func(ix *idx11) { chunkOf(ix, "n", 0)[20] = 2; fixRecordCRCs(ix) }, "lookup", KindInvalidIndex, "n"},
		{"chunk count disagrees with the shape", 2, func(ix *idx11) {
			le.PutUint32(recordOf(ix, "x")[40:], 2)
			fixRecordCRCs(ix)
		}, "lookup", KindInvalidIndex, "x"},
		{"first_chunk past the chunk records", 2, func(ix *idx11) {
			le.PutUint64(recordOf(ix, "x")[32:], 1000)
			fixRecordCRCs(ix)
		}, "lookup", KindInvalidIndex, "x"},
		{"content hash of a plain chunk", 2, func(ix *idx11) { chunkOf(ix, "n", 0)[30] ^= 1; fixRecordCRCs(ix) }, "verify", KindChecksumMismatch, ""},
		{"content hash of an encoded chunk", 0, func(ix *idx11) { chunkOf(ix, "x", 2)[39] ^= 1; fixRecordCRCs(ix) }, "verify", KindChecksumMismatch, ""},
		{"content hash of a raw chunk in version 1", 0, func(ix *idx11) { chunkOf(ix, "w", 1)[24] ^= 1; fixRecordCRCs(ix) }, "verify", KindChecksumMismatch, ""},
		{"earlier version's head differs from its record", 2, func(ix *idx11) {
			le.PutUint64((*ix.section(secVersions))[8:], 5)
		}, "open-version", KindInvalidIndex, ""},
		{"earlier version's head crc differs from its record", 2, func(ix *idx11) {
			(*ix.section(secVersions))[40] ^= 1
		}, "open-version", KindChecksumMismatch, ""},
		{"writer section not an object", 2, func(ix *idx11) { *ix.section(secWriter) = []byte(`"me"`) }, "writer", KindInvalidIndex, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			w, _ := buildSeries(t, map[int]func(*idx11){c.at: c.mut})
			opts := Options{}
			if c.stage == "open-version" {
				opts.Version = 1 // the records of version 1 are the ones mutated
			}
			a, err := OpenBytesWith(w.file, opts)
			if c.stage == "open" || c.stage == "open-version" {
				if err == nil {
					t.Fatalf("opened; want %s", c.kind)
				}
				checkError(t, err, c.kind, "<bytes>")
				if c.stage == "open-version" {
					if _, err := OpenBytes(w.file); err != nil {
						t.Errorf("the latest version no longer opens: %v", err)
					}
				}
				return
			}
			if err != nil {
				t.Fatalf("Open: %v", err)
			}
			if n, ok := a.Recovered(); ok {
				t.Fatalf("recovered %d bytes", n)
			}
			switch c.stage {
			case "":
				if err := readEverything(a); err != nil {
					t.Fatalf("read: %v", err)
				}
				return
			case "lookup":
				_, err = a.Tensor(c.lookup)
			case "list":
				_, err = a.Tensors()
			case "metadata":
				_, err = a.Metadata()
				if _, lerr := a.Tensors(); lerr != nil {
					t.Errorf("listing fails with bad metadata: %v", lerr)
				}
			case "writer":
				_, err = a.Writer()
			case "verify":
				if err := func() error {
					tensors, err := a.Tensors()
					if err != nil {
						return err
					}
					for _, ti := range tensors {
						if _, err := a.Read(ti.Name); err != nil {
							return err
						}
					}
					return nil
				}(); err != nil && c.at == 2 {
					t.Fatalf("reading without hash checks: %v", err)
				}
				err = a.Verify()
			}
			checkError(t, err, c.kind, "<bytes>")
			if c.stage != "metadata" && c.stage != "writer" {
				if verr := a.Verify(); KindOf(verr) != c.kind {
					t.Errorf("Verify: %v, want %s", verr, c.kind)
				}
			}
		})
	}
}

// fixRecordOnly recomputes one record's record_crc (leaving its chunks_crc as it is).
func fixRecordOnly(ix *idx11, name string) {
	rec := recordOf(ix, name)
	names, shapes := *ix.section(secNames), *ix.section(secShapes)
	no, nl := le.Uint64(rec[0:]), uint64(le.Uint32(rec[8:]))
	so, rank := le.Uint64(rec[16:]), uint64(rec[47])
	c := crc32Update(crc32c(rec[:60]), names[no:no+nl])
	le.PutUint32(rec[60:], crc32Update(c, shapes[so*8:(so+rank)*8]))
}

// Hashes are checked on reads only when asked; Verify always checks them.
func TestV11CheckHashesOnRead(t *testing.T) {
	w, _ := buildSeries(t, map[int]func(*idx11){2: func(ix *idx11) { chunkOf(ix, "n", 0)[30] ^= 1; fixRecordCRCs(ix) }})
	a, _ := OpenBytes(w.file)
	if _, err := a.Read("n"); err != nil {
		t.Errorf("Read without hash checks: %v", err)
	}
	a, _ = OpenBytesWith(w.file, Options{CheckHashes: true})
	_, err := a.Read("n")
	checkError(t, err, KindChecksumMismatch, "<bytes>")
	_, err = a.ReadTo("n", &bytes.Buffer{})
	checkError(t, err, KindChecksumMismatch, "<bytes>")
}

func TestV11SharedChunks(t *testing.T) {
	// Two tensors with equal content in one version share their chunks (16.4: equal
	// ranges are one chunk referenced twice), and verify checks it once.
	w := newWriter11(64)
	same := []byte{1, 2, 3, 4, 5, 6}
	ts := []w11Tensor{
		{name: "a", dtype: "U8", storage: StorageChunked, filter: FilterNone, shape: []uint64{6}, chunkElems: 3, data: same},
		{name: "b", dtype: "U8", storage: StorageChunked, filter: FilterNone, shape: []uint64{6}, chunkElems: 3, data: same},
	}
	w.append(w11Version{tensors: ts, tree: treeOf(ts)}, nil)
	a, err := OpenBytes(w.file)
	if err != nil {
		t.Fatal(err)
	}
	ta, _ := a.Tensor("a")
	tb, _ := a.Tensor("b")
	if ta.Chunks[0] != tb.Chunks[0] {
		t.Fatalf("the test writer did not share the chunks")
	}
	checkTensorsEqual(t, a, ts)
	if err := a.Verify(); err != nil {
		t.Fatal(err)
	}
}

func TestV11VerifyPaddingAndTrailers(t *testing.T) {
	w, _ := buildSeries(t, nil)
	end := func(i int) uint64 { r := w.records[i]; return le.Uint64(r[24:]) + le.Uint64(r[32:]) + 32 }
	// A padding byte of version 1's data region: one no chunk covers (s is aligned).
	v1 := w.file
	a1, _ := OpenBytesWith(v1, Options{Version: 1})
	covered := map[uint64]bool{}
	for _, ti := range must(a1.Tensors()) {
		for _, c := range ti.Chunks {
			for o := c.Offset; o < c.Offset+c.Length; o++ {
				covered[o] = true
			}
		}
	}
	wEnd := uint64(64)
	for covered[wEnd] {
		wEnd++
	}
	if wEnd >= a1.IndexOffset() {
		t.Fatalf("version 1 has no padding")
	}
	f := append([]byte{}, v1...)
	f[wEnd] = 7
	a, err := OpenBytes(f)
	if err != nil {
		t.Fatal(err)
	}
	if err := readEverything(a); KindOf(err) != KindCorruptData || !strings.Contains(err.Error(), fmt.Sprintf("offset %d ", wEnd)) {
		t.Errorf("padding byte in version 1: %v", err)
	}
	// An earlier version's trailer.
	f = append([]byte{}, v1...)
	f[end(0)-20] ^= 1
	a, err = OpenBytes(f)
	if err != nil {
		t.Fatalf("the latest version must open: %v", err)
	}
	checkError(t, a.Verify(), KindChecksumMismatch, "<bytes>")
	// Bytes of the index outside the head and sections (its padding) are ignored on
	// reading and must be zero on verification (16.2).
	f = append([]byte{}, v1...)
	f[end(2)-33] = 9
	a, err = OpenBytes(f)
	if err != nil {
		t.Fatalf("index padding: %v", err)
	}
	for _, ti := range must(a.Tensors()) {
		if _, err := a.Read(ti.Name); err != nil {
			t.Fatalf("index padding: %v", err)
		}
	}
	if err := a.Verify(); KindOf(err) != KindCorruptData || !strings.Contains(err.Error(), "index of version 3") {
		t.Errorf("index padding, Verify: %v", err)
	}
}

func TestV11FileOrderOfSections(t *testing.T) {
	// The directory, not the order, locates the sections: reverse them.
	w := newWriter11(128)
	ts := seriesVersions()[0]
	w.append(w11Version{tensors: ts, tree: treeOf(ts)}, func(ix *idx11) {
		sort.Slice(ix.sections, func(i, j int) bool { return ix.sections[i].kind > ix.sections[j].kind })
	})
	a, err := OpenBytes(w.file)
	if err != nil {
		t.Fatal(err)
	}
	checkTensorsEqual(t, a, ts)
	if err := a.Verify(); err != nil {
		t.Fatal(err)
	}
}

// BenchmarkV11OpenOneTensor opens a 20,000-tensor 1.1 archive on disk and reads one
// tensor (bench W3's question, for this reader): cost should not grow with the count.
func BenchmarkV11OpenOneTensor(b *testing.B) {
	for _, count := range []int{10, 20000} {
		w := newWriter11(64)
		var ts []w11Tensor
		for i := 0; i < count; i++ {
			ts = append(ts, w11Tensor{name: fmt.Sprintf("net/layer%05d/w", i), dtype: "F32", storage: StorageRaw,
				filter: FilterNone, shape: []uint64{4}, chunkElems: 4, data: f32s(1, 2, 3, float32(i))})
		}
		w.append(w11Version{tensors: ts, tree: treeOf(ts)}, nil)
		path := filepath.Join(b.TempDir(), "w3.bpz")
		if err := os.WriteFile(path, w.file, 0o644); err != nil {
			b.Fatal(err)
		}
		name := ts[count/3].name
		b.Run(fmt.Sprint(count), func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				a, err := Open(path)
				if err != nil {
					b.Fatal(err)
				}
				if _, err := a.Read(name); err != nil {
					b.Fatal(err)
				}
				a.Close()
			}
		})
	}
}
