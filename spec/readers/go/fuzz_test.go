package bpz

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"testing"
)

// FuzzOpen opens, reads and verifies arbitrary bytes. It must never panic, every error
// must be a *Error of a known kind, and what Verify accepts must read.
func FuzzOpen(f *testing.F) {
	for _, pattern := range []string{"*.bpz", "invalid/*.bpz"} {
		paths, _ := filepath.Glob(filepath.Join(vectorsDir, pattern))
		for _, p := range paths {
			b, err := os.ReadFile(p)
			if err != nil {
				f.Fatal(err)
			}
			f.Add(b)
		}
	}
	w, _ := buildSeries(f, nil)
	f.Add(w.file)
	f.Add(append(append([]byte{}, w.file...), 1, 2, 3)) // an unfinished append
	f.Fuzz(exercise)
}

// FuzzIndex11 mutates the binary index of the latest version of a 1.1 series and fixes
// up every checksum (section crcs from the mutated directory, record and chunk table
// crcs, head crc, trailer), so that mutations reach the checks behind them.
func FuzzIndex11(f *testing.F) {
	w, _ := buildSeries(f, nil)
	last := w.records[len(w.records)-1]
	off, n := le.Uint64(last[24:]), le.Uint64(last[32:])
	prefix := w.file[:off]
	f.Add(w.file[off:off+n], false)
	w2 := newWriter11(64)
	var ts []w11Tensor
	for i := 0; i < 40; i++ {
		ts = append(ts, w11Tensor{name: fmt.Sprintf("t%02d", 39-i), dtype: "U8", storage: StorageRaw, filter: FilterNone,
			shape: []uint64{1}, chunkElems: 1, data: []byte{byte(i)}})
	}
	idxOff := w2.append(w11Version{tensors: ts, tree: treeOf(ts)}, nil)
	f.Add(w2.file[idxOff:len(w2.file)-32], true)
	f.Fuzz(func(t *testing.T, index []byte, forty bool) {
		base := prefix // versions 1 and 2 of the series
		if forty {
			base = w2.file[:idxOff] // 40 one-byte tensors
		}
		file := append(append([]byte{}, base...), fixIndexCRCs(index)...)
		tr := make([]byte, 32)
		le.PutUint64(tr[0:], uint64(len(base)))
		le.PutUint64(tr[8:], uint64(len(index)))
		le.PutUint32(tr[16:], headCRC(index))
		le.PutUint32(tr[20:], crc32c(tr[:20]))
		copy(tr[24:], endMagic[:])
		exercise(t, append(file, tr...))
	})
}

// fixIndexCRCs recomputes, in a copy of a binary index, the crc of every section its
// directory locates and the record and chunk table crcs of its tensor records.
func fixIndexCRCs(index []byte) []byte {
	index = append([]byte(nil), index...)
	if len(index) < indexHeadMin {
		return index
	}
	count := int(min(le.Uint32(index[48:]), maxSections))
	secs := map[uint32][]byte{}
	for i := 0; i < count && indexHeadMin+32*(i+1) <= len(index); i++ {
		e := index[indexHeadMin+32*i:]
		o, l := le.Uint64(e[8:]), le.Uint64(e[16:])
		if o <= uint64(len(index)) && l <= uint64(len(index))-o {
			secs[le.Uint32(e[0:])] = index[o : o+l]
		}
	}
	ix := &idx11{}
	for k, d := range secs {
		ix.sections = append(ix.sections, sec11{kind: k, data: d})
	}
	fixRecordCRCs(ix) // in place: the slices alias index
	for i := 0; i < count && indexHeadMin+32*(i+1) <= len(index); i++ {
		e := index[indexHeadMin+32*i:]
		if d, ok := secs[le.Uint32(e[0:])]; ok && le.Uint64(e[16:]) == uint64(len(d)) {
			le.PutUint32(e[24:], crc32c(d))
		}
	}
	return index
}

// headCRC is the crc32c of an index's head (as much of it as there is).
func headCRC(index []byte) uint32 {
	if len(index) < indexFixedSize {
		return crc32c(index)
	}
	n := min(uint64(len(index)), uint64(indexHeadMin)+32*uint64(le.Uint32(index[48:])))
	return crc32c(index[:n])
}

// FuzzIndex builds an archive with valid superblock, trailer and index checksums from a
// data region and an index text, so that mutations reach the index validation and the
// chunk decoding instead of stopping at a checksum.
func FuzzIndex(f *testing.F) {
	paths, _ := filepath.Glob(filepath.Join(vectorsDir, "*.bpz"))
	for _, p := range append(paths, filepath.Join(vectorsDir, "invalid", "decompression_bomb.bpz"),
		filepath.Join(vectorsDir, "invalid", "overlapping_tensors.bpz")) {
		b, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		a, err := OpenBytes(b)
		if err != nil {
			if KindOf(err) != KindInvalidIndex {
				f.Fatal(err)
			}
			// overlapping_tensors: take its parts by hand
			off := binary.LittleEndian.Uint64(b[len(b)-32:])
			f.Add(b[64:off], string(b[off:len(b)-32]), uint32(64))
			continue
		}
		f.Add(b[64:a.IndexOffset()], string(b[a.IndexOffset():len(b)-32]), a.Alignment())
	}
	f.Fuzz(func(t *testing.T, data []byte, index string, alignment uint32) {
		exercise(t, build(superblock(1, 0, 0, 0, alignment), data, index))
	})
}

// FuzzZstdDecode feeds arbitrary frames to the bounded decoder and the filters.
func FuzzZstdDecode(f *testing.F) {
	f.Add(rawFrame([]byte("hello, world"), 5), uint16(12), uint8(1))
	f.Add(rleFrame(3, 1000, 7, false), uint16(3000), uint8(4))
	f.Add(rleFrame(8, 128<<10, 0, false), uint16(64), uint8(2))
	for _, v := range []string{"multichunk_shuffle", "filters", "nested_tree"} {
		b, _ := os.ReadFile(filepath.Join(vectorsDir, v+".bpz"))
		a, err := OpenBytes(b)
		if err != nil {
			f.Fatal(err)
		}
		for _, ti := range must(a.Tensors()) {
			for k, c := range ti.Chunks {
				if c.Encoded {
					s := uint64(ti.ItemSize)
					m := ti.chunkDecoded(k) / s
					f.Add(b[c.Offset:c.Offset+c.Length], uint16(filteredSize(ti.Filter, m, s)), uint8(s))
				}
			}
		}
	}
	f.Fuzz(func(t *testing.T, frame []byte, want uint16, s uint8) {
		var scratch []byte
		out, err := zstdDecode(frame, uint64(want), &scratch)
		if err != nil {
			return
		}
		if len(out) != int(want) {
			t.Fatalf("decoded %d bytes, want %d", len(out), want)
		}
		if uint64(cap(scratch)) > uint64(want)+zstdSlack {
			t.Fatalf("scratch grew to %d for %d bytes", cap(scratch), want)
		}
		var buf []byte
		for _, sz := range []uint64{1, 2, 4, 8, 16} {
			if m := uint64(want) / sz; m*sz == uint64(want) {
				for _, filter := range []string{FilterNone, FilterShuffle, FilterDeltaShuffle} {
					if d := undoFilter(filter, append([]byte{}, out...), m, sz, &buf); len(d) != int(want) {
						t.Fatalf("%s: %d bytes", filter, len(d))
					}
				}
			}
		}
		if d := undoFilter(FilterBitpack, out, uint64(want)*8, 1, &buf); len(d) != int(want)*8 {
			t.Fatalf("bitpack: %d bytes", len(d))
		}
	})
}

// exercise opens, reads and verifies data, checking the invariants.
func exercise(t *testing.T, data []byte) {
	{
		checkKind := func(what string, err error) {
			if k := KindOf(err); !slices.Contains(Kinds, k) {
				t.Fatalf("%s: error %v (%T) has no known kind", what, err, err)
			}
		}
		// A mutated file can legitimately declare GiBs of zeros: keep each exec small.
		a, err := OpenBytesWith(data, Options{MaxReadBytes: 64 << 20, MaxChunkBytes: 64 << 20})
		if err != nil {
			checkKind("open", err)
			return
		}
		if _, err := a.Metadata(); err != nil {
			checkKind("metadata", err)
		}
		if _, err := a.Writer(); err != nil {
			checkKind("writer", err)
		}
		if vs, err := a.Versions(); err != nil {
			checkKind("versions", err)
		} else if len(vs) == 0 || vs[len(vs)-1].Number != a.LatestVersionNumber() {
			t.Fatalf("Versions() = %v, latest %d", vs, a.LatestVersionNumber())
		}
		for pos := range a.versions {
			// Every version opens on its own, or fails with a known kind.
			av, err := OpenBytesWith(data, Options{MaxReadBytes: 64 << 20, MaxChunkBytes: 64 << 20, Version: int64(pos - len(a.versions))})
			if err != nil {
				checkKind("open version", err)
				continue
			}
			if av.VersionNumber() != a.versions[pos].number {
				t.Fatalf("Version %d opened version %d", pos-len(a.versions), av.VersionNumber())
			}
		}
		tensors, err := a.Tensors()
		if err != nil {
			checkKind("list", err)
			if a.Verify() == nil {
				t.Fatalf("Verify passed but listing failed: %v", err)
			}
			return
		}
		if _, err := a.Tree(); err != nil {
			t.Fatalf("Tree failed after listing succeeded: %v", err)
		}
		// A lookup by binary search, on a fresh Archive, agrees with the listing.
		fresh, err := OpenBytesWith(data, Options{MaxReadBytes: 64 << 20, MaxChunkBytes: 64 << 20})
		if err != nil {
			t.Fatalf("the second open failed: %v", err)
		}
		for _, ti := range tensors {
			one, err := fresh.Tensor(ti.Name)
			if err != nil {
				t.Fatalf("Tensor(%q) by lookup failed after listing succeeded: %v", ti.Name, err)
			}
			if !reflect.DeepEqual(one, ti) {
				t.Fatalf("Tensor(%q): lookup %+v, listing %+v", ti.Name, one, ti)
			}
		}
		allRead := true
		for _, ti := range tensors {
			if one, err := a.Tensor(ti.Name); err != nil || one.Name != ti.Name {
				t.Fatalf("Tensor(%q) after listing: %v", ti.Name, err)
			}
			all, err := a.Read(ti.Name)
			if err != nil {
				checkKind("read", err)
				allRead = false
				continue
			}
			if uint64(len(all)) != ti.NBytes {
				t.Fatalf("Read(%q): %d bytes, want %d", ti.Name, len(all), ti.NBytes)
			}
			var streamed bytes.Buffer
			if _, err := a.ReadTo(ti.Name, &streamed); err != nil || !bytes.Equal(streamed.Bytes(), all) {
				t.Fatalf("ReadTo(%q) differs from Read: %v", ti.Name, err)
			}
			rows := ti.Rows()
			if rows == 0 {
				continue
			}
			rowBytes := ti.NBytes / rows
			for _, r := range [][2]uint64{{rows / 2, rows}, {0, (rows + 1) / 2}, {rows - 1, rows}} {
				part, err := a.ReadRows(ti.Name, r[0], r[1])
				if err != nil {
					t.Fatalf("ReadRows(%q, %d, %d) failed after Read succeeded: %v", ti.Name, r[0], r[1], err)
				}
				if !bytes.Equal(part, all[r[0]*rowBytes:r[1]*rowBytes]) {
					t.Fatalf("ReadRows(%q, %d, %d) differs from Read", ti.Name, r[0], r[1])
				}
			}
		}
		if err := a.Verify(); err != nil {
			checkKind("verify", err)
		} else if !allRead {
			t.Fatalf("Verify passed but a Read failed")
		}
	}
}
