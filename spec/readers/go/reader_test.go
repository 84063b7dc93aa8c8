package bpz

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/big"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
	"testing"
)

const vectorsDir = "../../vectors"

// expectedTensor is one tensor of spec/vectors/NAME.json (section 13).
type expectedTensor struct {
	Name          string   `json:"name"`
	DType         string   `json:"dtype"`
	Shape         []uint64 `json:"shape"`
	Storage       string   `json:"storage"`
	Filter        string   `json:"filter"`
	Chunks        int      `json:"chunks"`
	EncodedChunks int      `json:"encoded_chunks"`
	NBytes        uint64   `json:"nbytes"`
	SHA256        string   `json:"sha256"`
}

// expectedVector is the schema of spec/vectors/NAME.json.
type expectedVector struct {
	Version   [2]uint16        `json:"version"`
	Alignment uint32           `json:"alignment"`
	FileBytes uint64           `json:"file_bytes"`
	Tensors   []expectedTensor `json:"tensors"`
	Tree      json.RawMessage  `json:"tree"`
	Metadata  json.RawMessage  `json:"metadata"`
	// 1.1 files (v11_*): every version, oldest first; and whether the file ends in an
	// unfinished append that a reader must report.
	Versions []struct {
		Version    uint64           `json:"version"`
		TimeNS     uint64           `json:"time_ns"`
		Metadata   json.RawMessage  `json:"metadata"`
		BytesAdded uint64           `json:"bytes_added"`
		Tensors    []expectedTensor `json:"tensors"`
	} `json:"versions"`
	Recovered bool `json:"recovered"`
}

func validVectors(t testing.TB) []string {
	t.Helper()
	paths, err := filepath.Glob(filepath.Join(vectorsDir, "*.bpz"))
	if err != nil {
		t.Fatal(err)
	}
	// Section 13 promises at least these.
	for _, want := range []string{"tiny", "future_minor", "nested_tree", "filters", "all_dtypes_raw",
		"all_dtypes_zstd", "empty_and_scalar_raw", "no_tensors", "alignment_4096"} {
		if _, err := os.Stat(filepath.Join(vectorsDir, want+".bpz")); err != nil {
			t.Fatalf("vector %s.bpz missing: %v", want, err)
		}
	}
	return paths
}

func TestVectors(t *testing.T) {
	paths := validVectors(t)
	for _, path := range paths {
		name := strings.TrimSuffix(filepath.Base(path), ".bpz")
		t.Run(name, func(t *testing.T) {
			raw, err := os.ReadFile(strings.TrimSuffix(path, ".bpz") + ".json")
			if err != nil {
				t.Fatal(err)
			}
			var want expectedVector
			if err := json.Unmarshal(raw, &want); err != nil {
				t.Fatal(err)
			}
			a, err := Open(path)
			if err != nil {
				t.Fatalf("Open: %v", err)
			}
			defer a.Close()
			st, _ := os.Stat(path)
			if maj, min := a.Version(); [2]uint16{maj, min} != want.Version {
				t.Errorf("version %d.%d, want %v", maj, min, want.Version)
			}
			if a.Alignment() != want.Alignment {
				t.Errorf("alignment %d, want %d", a.Alignment(), want.Alignment)
			}
			if a.Size() != want.FileBytes || uint64(st.Size()) != want.FileBytes {
				t.Errorf("file bytes %d (stat %d), want %d", a.Size(), st.Size(), want.FileBytes)
			}
			if tree := must(a.Tree()); !jsonEqual(t, tree, want.Tree) {
				t.Errorf("tree %s, want %s", tree, want.Tree)
			}
			if meta := must(a.Metadata()); !jsonEqual(t, meta, want.Metadata) {
				t.Errorf("metadata %s, want %s", meta, want.Metadata)
			}
			checkVectorTensors(t, a, want.Tensors)
			checkVectorVersions(t, path, a, &want)
			if err := a.Verify(); err != nil {
				t.Errorf("Verify: %v", err)
			}
			if _, err := a.Read("no such tensor"); KindOf(err) != KindTensorNotFound {
				t.Errorf("Read(missing): %v, want tensor_not_found", err)
			}
			if _, err := a.ReadRows("no such tensor", 0, 0); KindOf(err) != KindTensorNotFound {
				t.Errorf("ReadRows(missing): %v, want tensor_not_found", err)
			}
		})
	}
}

// checkVectorTensors compares the archive's tensors (in saved order) with a vector's
// description, reading each.
func checkVectorTensors(t *testing.T, a *Archive, want []expectedTensor) {
	t.Helper()
	got, err := a.Tensors()
	if err != nil {
		t.Fatalf("Tensors: %v", err)
	}
	if len(got) != len(want) {
		t.Fatalf("%d tensors, want %d", len(got), len(want))
	}
	for i, wt := range want {
		ti := got[i]
		if ti.Name != wt.Name || ti.DType != wt.DType || ti.Storage != wt.Storage ||
			ti.Filter != wt.Filter || fmt.Sprint(ti.Shape) != fmt.Sprint(wt.Shape) {
			t.Errorf("tensor %d: got %q %s %v %s %s, want %q %s %v %s %s", i,
				ti.Name, ti.DType, ti.Shape, ti.Storage, ti.Filter,
				wt.Name, wt.DType, wt.Shape, wt.Storage, wt.Filter)
		}
		if len(ti.Chunks) != wt.Chunks || ti.EncodedChunks() != wt.EncodedChunks {
			t.Errorf("tensor %q: %d chunks (%d encoded), want %d (%d)", ti.Name,
				len(ti.Chunks), ti.EncodedChunks(), wt.Chunks, wt.EncodedChunks)
		}
		if ti.NBytes != wt.NBytes {
			t.Errorf("tensor %q: nbytes %d, want %d", ti.Name, ti.NBytes, wt.NBytes)
		}
		data, err := a.Read(ti.Name)
		if err != nil {
			t.Errorf("Read(%q): %v", ti.Name, err)
			continue
		}
		if uint64(len(data)) != wt.NBytes {
			t.Errorf("Read(%q): %d bytes, want %d", ti.Name, len(data), wt.NBytes)
		}
		sum := sha256.Sum256(data)
		if hex.EncodeToString(sum[:]) != wt.SHA256 {
			t.Errorf("Read(%q): sha256 %x, want %s", ti.Name, sum, wt.SHA256)
		}
		checkReadRows(t, a, ti, data)
	}
}

// checkVectorVersions compares a vector's versions (and recovery) with the archive's,
// opening every version by number and by its distance from the latest, and looking
// each tensor up by name before any listing.
func checkVectorVersions(t *testing.T, path string, a *Archive, want *expectedVector) {
	t.Helper()
	n, recovered := a.Recovered()
	if recovered != want.Recovered {
		t.Errorf("Recovered() = %d, %v; the vector says recovered %v", n, recovered, want.Recovered)
	}
	if want.Version[1] >= 1 && len(want.Versions) == 0 && strings.HasPrefix(filepath.Base(path), "v11_") {
		t.Errorf("a v11 vector without versions")
	}
	if len(want.Versions) == 0 {
		return
	}
	got, err := a.Versions()
	if err != nil {
		t.Fatalf("Versions: %v", err)
	}
	if len(got) != len(want.Versions) {
		t.Fatalf("%d versions, want %d", len(got), len(want.Versions))
	}
	if last := want.Versions[len(want.Versions)-1].Version; a.VersionNumber() != last || a.LatestVersionNumber() != last {
		t.Errorf("opened version %d (latest %d), want %d", a.VersionNumber(), a.LatestVersionNumber(), last)
	}
	for i, wv := range want.Versions {
		gv := got[i]
		if gv.Number != wv.Version || gv.TimeNS != wv.TimeNS || gv.BytesAdded != wv.BytesAdded {
			t.Errorf("version %d: number %d, time %d, bytes added %d; want %d, %d, %d", i,
				gv.Number, gv.TimeNS, gv.BytesAdded, wv.Version, wv.TimeNS, wv.BytesAdded)
		}
		if !jsonEqual(t, gv.Metadata, wv.Metadata) {
			t.Errorf("version %d: metadata %s, want %s", wv.Version, gv.Metadata, wv.Metadata)
		}
		for _, sel := range []int64{int64(wv.Version), int64(i - len(want.Versions))} {
			av, err := OpenWith(path, Options{Version: sel})
			if err != nil {
				t.Errorf("open version %d (Options.Version %d): %v", wv.Version, sel, err)
				continue
			}
			if av.VersionNumber() != wv.Version {
				t.Errorf("Options.Version %d opened version %d, want %d", sel, av.VersionNumber(), wv.Version)
			}
			for _, wt := range wv.Tensors { // by binary search, before any listing
				d, err := av.Read(wt.Name)
				if sum := sha256.Sum256(d); err != nil || hex.EncodeToString(sum[:]) != wt.SHA256 {
					t.Errorf("version %d: Read(%q) before listing: %v (sha256 %x, want %s)", wv.Version, wt.Name, err, sum, wt.SHA256)
				}
			}
			if m, err := av.Metadata(); err != nil || !jsonEqual(t, m, wv.Metadata) {
				t.Errorf("version %d: Metadata() = %s, %v", wv.Version, m, err)
			}
			checkVectorTensors(t, av, wv.Tensors)
			av.Close()
		}
	}
}

// checkReadRows compares ReadRows against slices of the whole tensor: every range when
// there are few rows, a sample otherwise; and checks bad ranges are refused.
func checkReadRows(t *testing.T, a *Archive, ti TensorInfo, all []byte) {
	t.Helper()
	rows := ti.Rows()
	rowBytes := uint64(0)
	if rows > 0 {
		rowBytes = uint64(len(all)) / rows
	}
	var ranges [][2]uint64
	if rows <= 70 {
		for s := uint64(0); s <= rows; s++ {
			for e := s; e <= rows; e++ {
				ranges = append(ranges, [2]uint64{s, e})
			}
		}
	} else {
		for _, r := range [][2]uint64{{0, rows}, {0, 1}, {rows - 1, rows}, {rows / 3, 2 * rows / 3}, {1, rows - 1}} {
			ranges = append(ranges, r)
		}
	}
	for _, r := range ranges {
		got, err := a.ReadRows(ti.Name, r[0], r[1])
		if err != nil {
			t.Errorf("ReadRows(%q, %d, %d): %v", ti.Name, r[0], r[1], err)
			continue
		}
		if want := all[r[0]*rowBytes : r[1]*rowBytes]; !bytes.Equal(got, want) {
			t.Errorf("ReadRows(%q, %d, %d) = %x, want %x", ti.Name, r[0], r[1], got, want)
		}
	}
	for _, r := range [][2]uint64{{0, rows + 1}, {rows + 1, rows + 1}, {1, 0}, {^uint64(0), ^uint64(0)}} {
		if _, err := a.ReadRows(ti.Name, r[0], r[1]); KindOf(err) != KindInvalidArgument {
			t.Errorf("ReadRows(%q, %d, %d): %v, want invalid_argument", ti.Name, r[0], r[1], err)
		}
	}
}

// jsonEqual compares two JSON texts as values (numbers compared exactly as rationals).
func jsonEqual(t *testing.T, a, b []byte) bool {
	t.Helper()
	decode := func(x []byte) any {
		if len(bytes.TrimSpace(x)) == 0 {
			x = []byte("null")
		}
		d := json.NewDecoder(bytes.NewReader(x))
		d.UseNumber()
		var v any
		if err := d.Decode(&v); err != nil {
			t.Fatalf("bad JSON %s: %v", x, err)
		}
		return v
	}
	return valuesEqual(decode(a), decode(b))
}

func valuesEqual(a, b any) bool {
	switch a := a.(type) {
	case map[string]any:
		b, ok := b.(map[string]any)
		if !ok || len(a) != len(b) {
			return false
		}
		for k, v := range a {
			if w, ok := b[k]; !ok || !valuesEqual(v, w) {
				return false
			}
		}
		return true
	case []any:
		b, ok := b.([]any)
		if !ok || len(a) != len(b) {
			return false
		}
		for i := range a {
			if !valuesEqual(a[i], b[i]) {
				return false
			}
		}
		return true
	case json.Number:
		b, ok := b.(json.Number)
		if !ok {
			return false
		}
		x, ok1 := new(big.Rat).SetString(a.String())
		y, ok2 := new(big.Rat).SetString(b.String())
		return ok1 && ok2 && x.Cmp(y) == 0
	default:
		return a == b
	}
}

// countingReaderAt records every read.
type countingReaderAt struct {
	r     io.ReaderAt
	mu    sync.Mutex
	reads [][2]int64 // [offset, length]
}

func (c *countingReaderAt) ReadAt(p []byte, off int64) (int, error) {
	c.mu.Lock()
	c.reads = append(c.reads, [2]int64{off, int64(len(p))})
	c.mu.Unlock()
	return c.r.ReadAt(p, off)
}

func TestReadRowsDecodesOnlyOverlappingChunks(t *testing.T) {
	for _, vec := range []string{"multichunk_shuffle", "multichunk_none", "plain_and_encoded_chunks", "filters"} {
		b, err := os.ReadFile(filepath.Join(vectorsDir, vec+".bpz"))
		if err != nil {
			t.Fatal(err)
		}
		cr := &countingReaderAt{r: bytes.NewReader(b)}
		a, err := OpenReaderAt(cr, int64(len(b)), vec)
		if err != nil {
			t.Fatal(err)
		}
		for _, ti := range must(a.Tensors()) {
			all, err := a.Read(ti.Name)
			if err != nil {
				t.Fatal(err)
			}
			rows, rowBytes := ti.Rows(), ti.RowElems()*uint64(ti.ItemSize)
			cb := ti.ChunkElems * uint64(ti.ItemSize)
			for start := uint64(0); start < rows; start++ {
				stop := min(rows, start+2)
				cr.reads = nil
				got, err := a.ReadRows(ti.Name, start, stop)
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(got, all[start*rowBytes:stop*rowBytes]) {
					t.Fatalf("%s %q rows [%d,%d): wrong bytes", vec, ti.Name, start, stop)
				}
				first, last := start*rowBytes/cb, (stop*rowBytes-1)/cb
				var allowed [][2]int64
				for k := first; k <= last; k++ {
					c := ti.Chunks[k]
					allowed = append(allowed, [2]int64{int64(c.Offset), int64(c.Length)})
				}
				if fmt.Sprint(cr.reads) != fmt.Sprint(allowed) {
					t.Fatalf("%s %q rows [%d,%d): reads %v, want exactly chunks %d..%d %v",
						vec, ti.Name, start, stop, cr.reads, first, last, allowed)
				}
			}
		}
	}
}

type invalidCase struct {
	Error   string `json:"error"`
	Stage   string `json:"stage"`
	Note    string `json:"note"`
	Version *int64 `json:"version"` // open this version instead of the latest
}

func loadInvalid(t testing.TB) map[string]invalidCase {
	raw, err := os.ReadFile(filepath.Join(vectorsDir, "invalid", "expected.json"))
	if err != nil {
		t.Fatal(err)
	}
	var cases map[string]invalidCase
	if err := json.Unmarshal(raw, &cases); err != nil {
		t.Fatal(err)
	}
	if len(cases) < 30 {
		t.Fatalf("only %d invalid cases", len(cases))
	}
	return cases
}

// readEverything reads every tensor, then verifies; it returns the first error.
func readEverything(a *Archive) error {
	tensors, err := a.Tensors()
	if err != nil {
		return err
	}
	for _, ti := range tensors {
		if _, err := a.Read(ti.Name); err != nil {
			return err
		}
	}
	return a.Verify()
}

func checkError(t *testing.T, err error, kind, file string) {
	t.Helper()
	var e *Error
	if !errors.As(err, &e) {
		t.Fatalf("error %v (%T) is not a *bpz.Error", err, err)
	}
	if e.Kind != kind {
		t.Errorf("kind %q, want %q (%v)", e.Kind, kind, err)
	}
	if file != "" && !strings.Contains(err.Error(), file) {
		t.Errorf("message %q does not name the file %q", err, file)
	}
}

func TestInvalidVectors(t *testing.T) {
	cases := loadInvalid(t)
	names := make([]string, 0, len(cases))
	for n := range cases {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		c := cases[n]
		t.Run(strings.TrimSuffix(n, ".bpz"), func(t *testing.T) {
			path := filepath.Join(vectorsDir, "invalid", n)
			opts := Options{}
			if c.Version != nil {
				if *c.Version == 0 {
					t.Fatalf("version 0 in expected.json")
				}
				opts.Version = *c.Version
			}
			a, err := OpenWith(path, opts)
			switch c.Stage {
			case "open":
				if err == nil {
					a.Close()
					t.Fatalf("Open succeeded; want %s (%s)", c.Error, c.Note)
				}
				checkError(t, err, c.Error, path)
			case "read":
				if err != nil {
					t.Fatalf("Open: %v; want success, then %s on read (%s)", err, c.Error, c.Note)
				}
				defer a.Close()
				err = readEverything(a)
				if err == nil {
					t.Fatalf("reading and verifying succeeded; want %s (%s)", c.Error, c.Note)
				}
				checkError(t, err, c.Error, path)
				// Verify alone must find it too.
				checkError(t, a.Verify(), c.Error, path)
				var e *Error
				if errors.As(err, &e) && !strings.HasPrefix(e.Part, "tensor ") && e.Kind != KindCorruptData {
					t.Errorf("error part %q does not name the tensor", e.Part)
				}
			case "list":
				if err != nil {
					checkError(t, err, c.Error, path)
					return
				}
				defer a.Close()
				_, err = a.Tensors()
				if err == nil {
					t.Fatalf("listing succeeded; want %s (%s)", c.Error, c.Note)
				}
				checkError(t, err, c.Error, path)
				checkError(t, a.Verify(), c.Error, path)
			default:
				t.Fatalf("unknown stage %q", c.Stage)
			}
		})
	}
}

// Files in invalid/ that expected.json does not list: they must at least be rejected.
func TestUnlistedInvalidFiles(t *testing.T) {
	cases := loadInvalid(t)
	paths, _ := filepath.Glob(filepath.Join(vectorsDir, "invalid", "*.bpz"))
	for _, p := range paths {
		if _, listed := cases[filepath.Base(p)]; listed {
			continue
		}
		a, err := Open(p)
		if err == nil {
			err = readEverything(a)
			a.Close()
		}
		if err == nil {
			t.Errorf("%s (not in expected.json) opens, reads and verifies", p)
			continue
		}
		t.Logf("note: %s is not listed in expected.json; it fails with %v", filepath.Base(p), err)
	}
	for n := range cases {
		if _, err := os.Stat(filepath.Join(vectorsDir, "invalid", n)); err != nil {
			t.Errorf("expected.json lists %s, which is missing", n)
		}
	}
}

func TestCRC32CCheckValue(t *testing.T) {
	if got := crc32c([]byte("123456789")); got != 0xE3069283 {
		t.Fatalf("crc32c(123456789) = %08X", got)
	}
}

// Section 15, the worked example.
func TestWorkedExample(t *testing.T) {
	a, err := Open(filepath.Join(vectorsDir, "tiny.bpz"))
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	if a.IndexOffset() != 67 || a.Size() != 335 {
		t.Fatalf("index offset %d, size %d", a.IndexOffset(), a.Size())
	}
	ti, err := a.Tensor("x")
	if err != nil {
		t.Fatal(err)
	}
	if len(ti.Chunks) != 1 || ti.Chunks[0] != (Chunk{Offset: 64, Length: 3, CRC32C: 4046516766}) || ti.ChunkElems != 3 || ti.StoredBytes != 3 {
		t.Fatalf("chunks %v", ti.Chunks)
	}
	if d, _ := a.Read("x"); !bytes.Equal(d, []byte{1, 2, 3}) {
		t.Fatalf("x = %v", d)
	}
	if w := must(a.Writer()); w == nil || w.Name != "bpz-spec-vectors" || w.Version != "1" {
		t.Fatalf("writer %+v", w)
	}
}

// --- Synthesized archives --------------------------------------------------------

// superblock returns a valid 64-byte superblock.
func superblock(major, minor uint16, required, optional, alignment uint32) []byte {
	sb := make([]byte, 64)
	copy(sb, magic[:])
	le := binary.LittleEndian
	le.PutUint16(sb[8:], major)
	le.PutUint16(sb[10:], minor)
	le.PutUint32(sb[12:], required)
	le.PutUint32(sb[16:], optional)
	le.PutUint32(sb[20:], alignment)
	le.PutUint32(sb[60:], crc32c(sb[:60]))
	return sb
}

// build assembles an archive: superblock, data region (starting at offset 64), index, trailer.
func build(sb, data []byte, index string) []byte {
	if sb == nil {
		sb = superblock(1, 0, 0, 0, 64)
	}
	f := append(append([]byte{}, sb...), data...)
	off := uint64(len(f))
	f = append(f, index...)
	tr := make([]byte, 32)
	le := binary.LittleEndian
	le.PutUint64(tr[0:], off)
	le.PutUint64(tr[8:], uint64(len(index)))
	le.PutUint32(tr[16:], crc32c([]byte(index)))
	le.PutUint32(tr[20:], crc32c(tr[:20]))
	copy(tr[24:], endMagic[:])
	return append(f, tr...)
}

// tinyIndex is the index of tiny.bpz with its tensor entry replaced by entry (a JSON
// object's members) and extra top-level members appended.
func tinyIndex(entry, extra string) string {
	if entry == "" {
		entry = `"name":"x","dtype":"U8","shape":[3],"storage":"raw","filter":"none","chunk_elems":3,"chunks":[[64,3,4046516766,0]]`
	}
	return `{"tensors":[{` + entry + `}],"tree":{"dict":[["x",{"tensor":"x"}]]},"metadata":null` + extra + `}`
}

func TestBuildReproducesTiny(t *testing.T) {
	want, _ := os.ReadFile(filepath.Join(vectorsDir, "tiny.bpz"))
	got := build(nil, []byte{1, 2, 3}, tinyIndex("", `,"writer":{"name":"bpz-spec-vectors","version":"1"}`))
	if !bytes.Equal(got, want) {
		t.Fatalf("the test builder does not reproduce tiny.bpz")
	}
}

func TestOpenChecks(t *testing.T) {
	x3 := []byte{1, 2, 3}
	deep := func(k int) string { return strings.Repeat("[", k) + strings.Repeat("]", k) }
	cases := []struct {
		name  string
		file  []byte
		kind  string // "" = must open
		check func(*testing.T, *Archive)
	}{
		{"duplicate index member", build(nil, x3, tinyIndex("", `,"tensors":[]`)), KindInvalidIndex, nil},
		{"duplicate tensor member", build(nil, x3, tinyIndex(`"name":"x","name":"y","dtype":"U8","shape":[3],"storage":"raw","filter":"none","chunk_elems":3,"chunks":[[64,3,4046516766,0]]`, "")), KindInvalidIndex, nil},
		{"tensors missing", build(nil, x3, `{"tree":null}`), KindInvalidIndex, nil},
		{"index is an array", build(nil, x3, `[]`), KindInvalidIndex, nil},
		{"byte-order mark", build(nil, x3, "\ufeff"+tinyIndex("", "")), KindInvalidIndex, nil},
		{"integer written 3.0", build(nil, x3, tinyIndex(`"name":"x","dtype":"U8","shape":[3],"storage":"raw","filter":"none","chunk_elems":3.0,"chunks":[[64,3,4046516766,0]]`, "")), KindInvalidIndex, nil},
		{"negative dimension", build(nil, x3, tinyIndex(`"name":"x","dtype":"U8","shape":[-3],"storage":"raw","filter":"none","chunk_elems":3,"chunks":[[64,3,4046516766,0]]`, "")), KindInvalidIndex, nil},
		{"missing filter", build(nil, x3, tinyIndex(`"name":"x","dtype":"U8","shape":[3],"storage":"raw","chunk_elems":3,"chunks":[[64,3,4046516766,0]]`, "")), KindInvalidIndex, nil},
		{"chunk of 5 fields", build(nil, x3, tinyIndex(`"name":"x","dtype":"U8","shape":[3],"storage":"raw","filter":"none","chunk_elems":3,"chunks":[[64,3,4046516766,0,0]]`, "")), KindInvalidIndex, nil},
		{"encoded as bool", build(nil, x3, tinyIndex(`"name":"x","dtype":"U8","shape":[3],"storage":"raw","filter":"none","chunk_elems":3,"chunks":[[64,3,4046516766,false]]`, "")), KindInvalidIndex, nil},
		{"tree is a number", build(nil, x3, `{"tensors":[],"tree":3}`), KindInvalidIndex, nil},
		{"writer is a string", build(nil, x3, tinyIndex("", `,"writer":"me"`)), KindInvalidIndex, nil},
		{"crc over 32 bits", build(nil, x3, tinyIndex(`"name":"x","dtype":"U8","shape":[3],"storage":"raw","filter":"none","chunk_elems":3,"chunks":[[64,3,4294967296,0]]`, "")), KindInvalidIndex, nil},
		{"bitpack on F32", build(nil, make([]byte, 4), `{"tensors":[{"name":"f","dtype":"F32","shape":[1],"storage":"chunked","filter":"bitpack","chunk_elems":1,"chunks":[[64,4,0,0]]}]}`), KindInvalidIndex, nil},
		{"delta_shuffle on F64", build(nil, make([]byte, 8), `{"tensors":[{"name":"f","dtype":"F64","shape":[1],"storage":"chunked","filter":"delta_shuffle","chunk_elems":1,"chunks":[[64,8,0,0]]}]}`), KindInvalidIndex, nil},
		{"raw with shuffle", build(nil, x3, tinyIndex(`"name":"x","dtype":"U8","shape":[3],"storage":"raw","filter":"shuffle","chunk_elems":3,"chunks":[[64,3,4046516766,0]]`, "")), KindInvalidIndex, nil},
		{"chunk_elems 0", build(nil, x3, tinyIndex(`"name":"x","dtype":"U8","shape":[3],"storage":"raw","filter":"none","chunk_elems":0,"chunks":[[64,3,4046516766,0]]`, "")), KindInvalidIndex, nil},
		{"NUL in name", build(nil, x3, `{"tensors":[{"name":"x\u0000","dtype":"U8","shape":[3],"storage":"raw","filter":"none","chunk_elems":3,"chunks":[[64,3,4046516766,0]]}]}`), KindInvalidIndex, nil},
		{"plain chunk length", build(nil, []byte{1, 2, 3, 0}, `{"tensors":[{"name":"x","dtype":"U8","shape":[3],"storage":"chunked","filter":"none","chunk_elems":3,"chunks":[[64,4,0,0]]}]}`), KindInvalidIndex, nil},
		{"raw chunk encoded", build(nil, x3, tinyIndex(`"name":"x","dtype":"U8","shape":[3],"storage":"raw","filter":"none","chunk_elems":3,"chunks":[[64,3,4046516766,1]]`, "")), KindInvalidIndex, nil},
		{"raw not contiguous", build(nil, []byte{1, 2, 0, 3}, `{"tensors":[{"name":"x","dtype":"U8","shape":[3],"storage":"raw","filter":"none","chunk_elems":2,"chunks":[[64,2,0,0],[67,1,0,0]]}]}`), KindInvalidIndex, nil},
		{"chunk inside superblock", build(nil, x3, tinyIndex(`"name":"x","dtype":"U8","shape":[3],"storage":"chunked","filter":"none","chunk_elems":3,"chunks":[[60,3,0,0]]`, "")), KindInvalidIndex, nil},
		{"chunk reaching into index", build(nil, x3, tinyIndex(`"name":"x","dtype":"U8","shape":[3],"storage":"chunked","filter":"none","chunk_elems":3,"chunks":[[65,3,0,0]]`, "")), KindInvalidIndex, nil},
		{"tensor node payload not a string", build(nil, x3, `{"tensors":[],"tree":{"tensor":7}}`), KindInvalidIndex, nil},
		{"tensor ref inside namedtuple", build(nil, x3, `{"tensors":[],"tree":{"namedtuple":{"name":"P","fields":["a"],"values":[{"tensor":"a"}]}}}`), KindInvalidIndex, nil},
		{"tensor ref inside ordered_dict", build(nil, x3, `{"tensors":[],"tree":{"ordered_dict":[[1,{"tuple":[{"tensor":"a"}]}]]}}`), KindInvalidIndex, nil},
		{"name of 4097 bytes", build(nil, nil, `{"tensors":[{"name":"`+strings.Repeat("é", 2048)+`n","dtype":"U8","shape":[0],"storage":"raw","filter":"none","chunk_elems":1,"chunks":[]}]}`), KindLimitExceeded, nil},
		{"dimension 2^53 in an empty tensor", build(nil, nil, `{"tensors":[{"name":"e","dtype":"U8","shape":[0,9007199254740992],"storage":"raw","filter":"none","chunk_elems":1,"chunks":[]}]}`), KindLimitExceeded, nil},
		{"dimension over 2^64", build(nil, nil, `{"tensors":[{"name":"e","dtype":"U8","shape":[0,123456789012345678901234567890],"storage":"raw","filter":"none","chunk_elems":1,"chunks":[]}]}`), KindLimitExceeded, nil},
		{"n x s over 2^53-1", build(nil, nil, `{"tensors":[{"name":"e","dtype":"U16","shape":[4503599627370496],"storage":"chunked","filter":"none","chunk_elems":1,"chunks":[]}]}`), KindLimitExceeded, nil},
		{"chunk_elems over 2^53-1", build(nil, x3, tinyIndex(`"name":"x","dtype":"U8","shape":[3],"storage":"raw","filter":"none","chunk_elems":9007199254740992,"chunks":[[64,3,4046516766,0]]`, "")), KindLimitExceeded, nil},
		{"chunk over 256 MiB", build(nil, nil, `{"tensors":[{"name":"e","dtype":"U16","shape":[134217729],"storage":"chunked","filter":"none","chunk_elems":134217729,"chunks":[]}]}`), KindLimitExceeded, nil},
		{"chunk of exactly 256 MiB needs a table", build(nil, nil, `{"tensors":[{"name":"e","dtype":"U16","shape":[134217728],"storage":"chunked","filter":"none","chunk_elems":134217728,"chunks":[]}]}`), KindInvalidIndex, nil},
		{"over 2^24 chunks", build(nil, nil, `{"tensors":[{"name":"e","dtype":"U8","shape":[16777217],"storage":"chunked","filter":"none","chunk_elems":1,"chunks":[]}]}`), KindLimitExceeded, nil},
		{"limit before unknown dtype", build(nil, nil, `{"tensors":[{"name":"e","dtype":"Q9","shape":[9007199254740992],"storage":"raw","filter":"none","chunk_elems":1,"chunks":[]}]}`), KindLimitExceeded, nil},
		{"unknown storage", build(nil, x3, tinyIndex(`"name":"x","dtype":"U8","shape":[3],"storage":"mmap","filter":"none","chunk_elems":3,"chunks":[[64,3,4046516766,0]]`, "")), KindUnsupportedFeature, nil},
		{"JSON depth 128", build(nil, x3, tinyIndex("", `,"m2":`+deep(127))), "", nil},
		{"JSON depth 129", build(nil, x3, tinyIndex("", `,"m2":`+deep(128))), KindLimitExceeded, nil},
		{"brackets inside strings do not nest", build(nil, x3, tinyIndex("", `,"m2":"`+strings.Repeat(`[{\"`, 200)+`"`)), "", nil},
		{"index over 256 MiB wins over a bad offset", func() []byte {
			f := build(nil, x3, tinyIndex("", ""))
			tr := f[len(f)-32:]
			binary.LittleEndian.PutUint64(tr[0:], 1)
			binary.LittleEndian.PutUint64(tr[8:], 256<<20+1)
			binary.LittleEndian.PutUint32(tr[20:], crc32c(tr[:20]))
			return f
		}(), KindLimitExceeded, nil},
		{"index_offset below 64", func() []byte {
			f := build(nil, x3, tinyIndex("", ""))
			tr := f[len(f)-32:]
			binary.LittleEndian.PutUint64(tr[0:], 63)
			binary.LittleEndian.PutUint64(tr[8:], uint64(len(f))-63-32)
			binary.LittleEndian.PutUint32(tr[20:], crc32c(tr[:20]))
			return f
		}(), KindInvalidIndex, nil},
		{"index offset + length overflows", func() []byte {
			f := build(nil, x3, tinyIndex("", ""))
			tr := f[len(f)-32:]
			binary.LittleEndian.PutUint64(tr[0:], ^uint64(0)-10)
			binary.LittleEndian.PutUint64(tr[8:], 100)
			binary.LittleEndian.PutUint32(tr[20:], crc32c(tr[:20]))
			return f
		}(), KindInvalidIndex, nil},
		{"bad magic beats short file", []byte("GIF8"), KindBadMagic, nil},
		{"magic prefix", magic[:7], KindTruncated, nil},
		{"CRLF to LF", append([]byte("\x89BPZ\n\x1a\n"), make([]byte, 100)...), KindBadMagic, nil},
		{"alignment 8", build(superblock(1, 0, 0, 0, 8), x3, tinyIndex("", "")), KindInvalidIndex, nil},
		{"alignment 8192", build(superblock(1, 0, 0, 0, 8192), x3, tinyIndex("", "")), KindInvalidIndex, nil},
		{"major 0", build(superblock(0, 9, 0, 0, 64), x3, tinyIndex("", "")), KindUnsupportedVersion, nil},
		{"version before alignment", build(superblock(3, 0, 0, 0, 7), x3, tinyIndex("", "")), KindUnsupportedVersion, nil},
		{"required bit 31", build(superblock(1, 0, 1<<31, 0, 64), x3, tinyIndex("", "")), KindUnsupportedFeature, nil},
		{"minor 65535, optional bits, unknown members", build(superblock(1, 65535, 0, 0xFFFFFFFF, 64), x3,
			`{"future":{"a":[1,{"b":null}]},"tensors":[{"name":"x","x-hint":1,"dtype":"U8","shape":[3],"storage":"raw","filter":"none","chunk_elems":3,"chunks":[[64,3,4046516766,0]]}],"tree":{"tensor":"x","py":{"numpy_scalar":true}}}`),
			"", func(t *testing.T, a *Archive) {
				if maj, min := a.Version(); maj != 1 || min != 65535 {
					t.Errorf("version %d.%d", maj, min)
				}
				if m := must(a.Metadata()); string(m) != "null" {
					t.Errorf("absent metadata is %s", m)
				}
			}},
		{"empty tensor with huge partial product", build(nil, nil, `{"tensors":[{"name":"e","dtype":"C128","shape":[9007199254740991,9007199254740991,0],"storage":"chunked","filter":"shuffle","chunk_elems":1,"chunks":[]}]}`),
			"", func(t *testing.T, a *Archive) {
				ti, _ := a.Tensor("e")
				if ti.NBytes != 0 || ti.NumElements != 0 {
					t.Errorf("nbytes %d", ti.NBytes)
				}
				if d, err := a.ReadRows("e", 5, 9); err != nil || len(d) != 0 {
					t.Errorf("ReadRows: %v %v", d, err)
				}
			}},
		{"leading-axis-0 tensor", build(nil, nil, `{"tensors":[{"name":"e","dtype":"U8","shape":[0,9007199254740991,9007199254740991],"storage":"raw","filter":"none","chunk_elems":1,"chunks":[]}]}`),
			"", func(t *testing.T, a *Archive) {
				if d, err := a.ReadRows("e", 0, 0); err != nil || len(d) != 0 {
					t.Errorf("ReadRows: %v %v", d, err)
				}
				if _, err := a.ReadRows("e", 0, 1); KindOf(err) != KindInvalidArgument {
					t.Errorf("ReadRows(0,1): %v", err)
				}
			}},
		{"tensor ref inside an unknown node kind", build(nil, nil, `{"tensors":[],"tree":{"frozenset":[{"tensor":"nope"}]}}`), KindInvalidIndex, nil},
		{"tensor ref inside a hint", build(nil, x3, `{"tensors":[{"name":"x","dtype":"U8","shape":[3],"storage":"raw","filter":"none","chunk_elems":3,"chunks":[[64,3,4046516766,0]]}],"tree":{"tensor":"x","py":{"tensor":"y"}}}`), KindInvalidIndex, nil},
		{"tensor ref as a dict key", build(nil, nil, `{"tensors":[],"tree":{"dict":[[{"tensor":"k"},{"none":null}]]}}`), KindInvalidIndex, nil},
		{"malformed tree without tensor members opens", build(nil, nil, `{"tensors":[],"tree":{"list":5,"dict":[1,[2]],"tensors":"x","x":{"tensorX":1}}}`), "", nil},
		{"number 1e400", build(nil, x3, tinyIndex("", `,"m2":1e400`)), KindInvalidIndex, nil},
		{"number -1E+309 in metadata", build(nil, x3, `{"tensors":[],"metadata":[-1E+309]}`), KindInvalidIndex, nil},
		{"integer of 400 digits", build(nil, x3, `{"tensors":[],"metadata":`+strings.Repeat("9", 400)+`}`), KindInvalidIndex, nil},
		{"number 1e-400 underflows, accepted", build(nil, x3, tinyIndex("", `,"m2":[1e-400,1.7976931348623157e308,-0.0]`)), "", nil},
		{"unpaired high surrogate", build(nil, x3, tinyIndex("", `,"m2":"\ud800"`)), KindInvalidIndex, nil},
		{"unpaired low surrogate", build(nil, x3, tinyIndex("", `,"m2":"\udc00x"`)), KindInvalidIndex, nil},
		{"high surrogate then non-low", build(nil, x3, tinyIndex("", `,"m2":"\ud800\u0041"`)), KindInvalidIndex, nil},
		{"surrogate pair accepted", build(nil, x3, tinyIndex("", `,"m2":"\ud83d\ude00 \u00e9"`)), "", nil},
		{"duplicate member in metadata", build(nil, x3, `{"tensors":[],"metadata":{"a":1,"b":{"c":1,"c":2}}}`), KindInvalidIndex, nil},
		{"duplicate member spelled with an escape", build(nil, x3, `{"tensors":[],"metadata":{"a":1,"\u0061":2}}`), KindInvalidIndex, nil},
		{"duplicate member in a large object", build(nil, x3, `{"tensors":[],"metadata":{`+func() string {
			var m []string
			for i := 0; i < 40; i++ {
				m = append(m, fmt.Sprintf(`"k%d":%d`, i, i))
			}
			return strings.Join(m, ",") + `,"k3":0`
		}()+`}}`), KindInvalidIndex, nil},
		{"writer without version", build(nil, x3, tinyIndex("", `,"writer":{"name":"me"}`)), KindInvalidIndex, nil},
		{"writer with extra members", build(nil, x3, tinyIndex("", `,"writer":{"name":"me","version":"2","host":"h"}`)), "", nil},
		{"leading zero", build(nil, x3, `{"tensors":[],"metadata":01}`), KindInvalidIndex, nil},
		{"control character in a string", build(nil, x3, "{\"tensors\":[],\"metadata\":\"a\tb\"}"), KindInvalidIndex, nil},
		{"trailing comma", build(nil, x3, `{"tensors":[],}`), KindInvalidIndex, nil},
		{"two JSON values", build(nil, x3, `{"tensors":[]} {}`), KindInvalidIndex, nil},
		{"whitespace around the index", build(nil, nil, " \n{\"tensors\":[]}\r\n\t"), "", nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			a, err := OpenBytes(c.file)
			if c.kind == "" {
				if err != nil {
					t.Fatalf("Open: %v", err)
				}
				if c.check != nil {
					c.check(t, a)
				}
				if err := readEverything(a); err != nil {
					t.Fatalf("read: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("Open succeeded, want %s", c.kind)
			}
			checkError(t, err, c.kind, "<bytes>")
		})
	}
}

func TestVerifyPadding(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(vectorsDir, "alignment_4096.bpz"))
	if err != nil {
		t.Fatal(err)
	}
	for _, off := range []int{64, 100, 4095, 4101, 8191} {
		f := append([]byte{}, b...)
		f[off] = 0x20
		a, err := OpenBytes(f)
		if err != nil {
			t.Fatalf("Open with padding byte %d set: %v", off, err)
		}
		for _, ti := range must(a.Tensors()) {
			if _, err := a.Read(ti.Name); err != nil {
				t.Fatalf("Read: %v", err)
			}
		}
		err = a.Verify()
		checkError(t, err, KindCorruptData, "<bytes>")
		if err != nil && !strings.Contains(err.Error(), fmt.Sprintf("offset %d ", off)) {
			t.Errorf("message %q does not give offset %d", err, off)
		}
	}
}

// --- zstd and filters ---------------------------------------------------------------

// rawFrame is a zstd frame without a content size, holding data in raw blocks of at most
// blk bytes (window 128 KiB).
func rawFrame(data []byte, blk int) []byte {
	f := []byte{0x28, 0xB5, 0x2F, 0xFD, 0x00, 7 << 3} // FHD: no FCS, not single segment; window 2^17
	for first := true; first || len(data) > 0; first = false {
		n := min(blk, len(data))
		last := 0
		if n == len(data) {
			last = 1
		}
		h := uint32(n)<<3 | 0<<1 | uint32(last)
		f = append(f, byte(h), byte(h>>8), byte(h>>16))
		f = append(f, data[:n]...)
		data = data[n:]
	}
	return f
}

// rleFrame is a zstd frame without a content size of n RLE blocks of size bytes each.
func rleFrame(blocks, size int, v byte, checksumFlag bool) []byte {
	fhd := byte(0)
	if checksumFlag {
		fhd |= 4
	}
	f := []byte{0x28, 0xB5, 0x2F, 0xFD, fhd, 7 << 3}
	for i := 0; i < blocks; i++ {
		last := 0
		if i == blocks-1 {
			last = 1
		}
		h := uint32(size)<<3 | 1<<1 | uint32(last)
		f = append(f, byte(h), byte(h>>8), byte(h>>16), v)
	}
	return f
}

func TestZstdDecodeBounded(t *testing.T) {
	data := bytes.Repeat([]byte("0123456789abcdef"), 1000) // 16000 bytes
	var scratch []byte
	// A frame without a content size decodes.
	out, err := zstdDecode(rawFrame(data, 5000), uint64(len(data)), &scratch)
	if err != nil || !bytes.Equal(out, data) {
		t.Fatalf("raw frame: %v", err)
	}
	bad := map[string]struct {
		frame []byte
		want  uint64
	}{
		"fewer bytes":     {rawFrame(data, 5000), uint64(len(data)) + 1},
		"more bytes":      {rawFrame(data, 5000), uint64(len(data)) - 1},
		"two frames":      {append(rawFrame(data[:8000], 5000), rawFrame(data[8000:], 5000)...), uint64(len(data))},
		"trailing bytes":  {append(rawFrame(data, 5000), 0), uint64(len(data))},
		"skippable frame": {append([]byte{0x50, 0x2A, 0x4D, 0x18, 4, 0, 0, 0, 1, 2, 3, 4}, rawFrame(data, 5000)...), uint64(len(data))},
		"cut short":       {rawFrame(data, 5000)[:100], uint64(len(data))},
		"empty":           {nil, 1},
		"declared 1 MiB": {func() []byte {
			f, _ := os.ReadFile(filepath.Join(vectorsDir, "invalid", "decompression_bomb.bpz"))
			return f[64:114]
		}(), 64},
		"missing checksum":     {rleFrame(1, 64, 7, true), 64},
		"reserved block type":  {[]byte{0x28, 0xB5, 0x2F, 0xFD, 0, 7 << 3, 7, 0, 0}, 1},
		"dictionary required":  {[]byte{0x28, 0xB5, 0x2F, 0xFD, 1, 7 << 3, 9, 1, 0, 0, 0}, 1},
		"rle bomb without fcs": {rleFrame(8, 128<<10, 0, false), 64},
	}
	for name, c := range bad {
		if _, err := zstdDecode(c.frame, c.want, &scratch); err == nil {
			t.Errorf("%s: decoded", name)
		}
	}
	// Memory: a 1 MiB RLE bomb without a content size, expected 64 bytes.
	bomb := rleFrame(8, 128<<10, 0, false)
	var st0, st1 = new(memStats), new(memStats)
	st0.read()
	for i := 0; i < 10; i++ {
		var s []byte
		if _, err := zstdDecode(bomb, 64, &s); err == nil {
			t.Fatal("bomb decoded")
		}
	}
	st1.read()
	if per := (st1.total - st0.total) / 10; per > 200<<10 {
		t.Errorf("decoding a bomb for 64 bytes allocated %d bytes per call", per)
	} else {
		t.Logf("bomb (1 MiB, no content size) for a 64-byte chunk: %d bytes allocated per call", per)
	}
	// The same for a 1 MiB chunk and a frame inflating to 4 MiB: one buffer of 1 MiB + 128 KiB.
	bomb = rleFrame(32, 128<<10, 1, false)
	st0.read()
	for i := 0; i < 10; i++ {
		var s []byte
		if _, err := zstdDecode(bomb, 1<<20, &s); err == nil {
			t.Fatal("bomb decoded")
		}
	}
	st1.read()
	if per := (st1.total - st0.total) / 10; per > 1<<20+300<<10 {
		t.Errorf("decoding a 4 MiB bomb for 1 MiB allocated %d bytes per call", per)
	} else {
		t.Logf("bomb (4 MiB, no content size) for a 1 MiB chunk: %d bytes allocated per call", per)
	}
	// And the exact frame decodes into that one buffer, without growing it.
	var s []byte
	good := rleFrame(8, 128<<10, 1, false)
	out, err = zstdDecode(good, 1<<20, &s)
	if err != nil || len(out) != 1<<20 || cap(s) != 1<<20+zstdSlack || &out[0] != &s[:1][0] {
		t.Fatalf("8 × 128 KiB RLE frame: err %v, len %d, cap %d", err, len(out), cap(s))
	}
}

func TestFilters(t *testing.T) {
	le := binary.LittleEndian
	for _, s := range []uint64{1, 2, 4, 8, 16} {
		for _, m := range []uint64{1, 2, 3, 7, 64, 65} {
			d := make([]byte, m*s)
			for i := range d {
				d[i] = byte(i*37 + int(s))
			}
			// shuffle, as the spec defines it: F[j·m + i] = D[i·s + j]
			f := make([]byte, m*s)
			for i := uint64(0); i < m; i++ {
				for j := uint64(0); j < s; j++ {
					f[j*m+i] = d[i*s+j]
				}
			}
			var buf []byte
			if got := undoFilter(FilterShuffle, append([]byte{}, f...), m, s, &buf); !bytes.Equal(got, d) {
				t.Errorf("shuffle s=%d m=%d", s, m)
			}
			if s > 8 {
				continue
			}
			// delta (mod 2^(8s), x[-1] = 0), then shuffle
			delta := make([]byte, m*s)
			var prev uint64
			for i := uint64(0); i < m; i++ {
				var v [8]byte
				copy(v[:], d[i*s:(i+1)*s])
				x := le.Uint64(v[:])
				le.PutUint64(v[:], x-prev)
				copy(delta[i*s:], v[:s])
				prev = x
			}
			for i := uint64(0); i < m; i++ {
				for j := uint64(0); j < s; j++ {
					f[j*m+i] = delta[i*s+j]
				}
			}
			if got := undoFilter(FilterDeltaShuffle, append([]byte{}, f...), m, s, &buf); !bytes.Equal(got, d) {
				t.Errorf("delta_shuffle s=%d m=%d", s, m)
			}
		}
	}
	// bitpack: bit k (LSB = 0) of F[q] is D[8q + k]; unused high bits ignored.
	d := []byte{1, 0, 1, 1, 0, 0, 0, 1, 1, 1, 0}
	f := []byte{0b10001101, 0b11111011} // high bits of the last byte set: ignored
	var buf []byte
	if got := undoFilter(FilterBitpack, f, uint64(len(d)), 1, &buf); !bytes.Equal(got, d) {
		t.Errorf("bitpack: %v, want %v", got, d)
	}
	if filteredSize(FilterBitpack, 11, 1) != 2 || filteredSize(FilterShuffle, 11, 4) != 44 {
		t.Error("filtered sizes")
	}
}

// An archive whose encoded chunks have no content size, plus a chunk whose frame
// overflows, read end to end.
func TestEncodedChunksWithoutContentSize(t *testing.T) {
	vals := make([]byte, 0, 300*4)
	for i := uint32(0); i < 300; i++ {
		vals = binary.LittleEndian.AppendUint32(vals, i*i)
	}
	// chunk_elems 128: chunks of 128, 128, 44 elements; filter shuffle, s = 4.
	shuffle := func(d []byte) []byte {
		m := uint64(len(d) / 4)
		f := make([]byte, len(d))
		for i := uint64(0); i < m; i++ {
			for j := uint64(0); j < 4; j++ {
				f[j*m+i] = d[i*4+j]
			}
		}
		return f
	}
	var data []byte
	var chunks []string
	for k := 0; k < 3; k++ {
		piece := vals[k*512 : min(len(vals), (k+1)*512)]
		fr := rawFrame(shuffle(piece), 100)
		chunks = append(chunks, fmt.Sprintf("[%d,%d,%d,1]", 64+len(data), len(fr), crc32c(fr)))
		data = append(data, fr...)
	}
	index := `{"tensors":[{"name":"v","dtype":"U32","shape":[300],"storage":"chunked","filter":"shuffle","chunk_elems":128,"chunks":[` +
		strings.Join(chunks, ",") + `]}]}`
	a, err := OpenBytes(build(nil, data, index))
	if err != nil {
		t.Fatal(err)
	}
	got, err := a.Read("v")
	if err != nil || !bytes.Equal(got, vals) {
		t.Fatalf("Read: %v", err)
	}
	if r, err := a.ReadRows("v", 127, 129); err != nil || !bytes.Equal(r, vals[127*4:129*4]) {
		t.Fatalf("ReadRows: %v", err)
	}
	if err := a.Verify(); err != nil {
		t.Fatal(err)
	}
	// Replace the last chunk by a frame producing one byte too many (its crc is right).
	fr := rawFrame(append(shuffle(vals[1024:]), 0), 100)
	data2 := append(append([]byte{}, data[:len(data)-len(rawFrame(shuffle(vals[1024:]), 100))]...), fr...)
	chunks[2] = fmt.Sprintf("[%d,%d,%d,1]", 64+len(data2)-len(fr), len(fr), crc32c(fr))
	index = `{"tensors":[{"name":"v","dtype":"U32","shape":[300],"storage":"chunked","filter":"shuffle","chunk_elems":128,"chunks":[` +
		strings.Join(chunks, ",") + `]}]}`
	a, err = OpenBytes(build(nil, data2, index))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.ReadRows("v", 0, 256); err != nil {
		t.Fatalf("rows in the good chunks: %v", err)
	}
	_, err = a.Read("v")
	checkError(t, err, KindCorruptData, "<bytes>")
	if err != nil && !strings.Contains(err.Error(), `tensor "v" chunk 2`) {
		t.Errorf("message %q does not name the chunk", err)
	}
	checkError(t, a.Verify(), KindCorruptData, "<bytes>")
}

// must returns v, panicking (which fails the test) if err is not nil.
func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

type memStats struct{ total uint64 }

func (m *memStats) read() {
	var s runtime.MemStats
	runtime.ReadMemStats(&s)
	m.total = s.TotalAlloc
}
