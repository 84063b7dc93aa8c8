package bpz

import (
	"bytes"
	"encoding/binary"
	"os"
	"path/filepath"
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
	f.Fuzz(exercise)
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
