package bpz

import (
	"fmt"
	"hash/crc32"
	"math/bits"
)

// Format constants (spec/FORMAT.md sections 2, 3 and 11).
const (
	SupportedMajor = 1 // the only major version this reader knows

	superblockSize = 64
	trailerSize    = 32

	MaxIndexBytes      = 256 << 20 // index size
	MaxJSONDepth       = 128       // JSON nesting depth of the index
	MaxTensors         = 1 << 20   // tensors per archive
	MaxNameBytes       = 4096      // tensor name, UTF-8 bytes
	MaxRank            = 64        // dimensions
	MaxChunkBytes      = 256 << 20 // decoded bytes per chunk
	MaxChunksPerTensor = 1 << 24   // chunks per tensor
	MaxInteger         = 1<<53 - 1 // any integer in the index, any tensor's byte size
	MinAlignment       = 16
	MaxAlignment       = 4096
)

var (
	magic    = [8]byte{0x89, 'B', 'P', 'Z', '\r', '\n', 0x1a, '\n'}
	endMagic = [8]byte{'B', 'P', 'Z', '_', 'E', 'N', 'D', '\n'}

	castagnoli = crc32.MakeTable(crc32.Castagnoli)
)

func crc32c(b []byte) uint32 { return crc32.Checksum(b, castagnoli) }

func crc32Update(c uint32, b []byte) uint32 { return crc32.Update(c, castagnoli, b) }

// dtypeSizes maps the dtype names of section 6 to their element size in bytes.
var dtypeSizes = map[string]int{
	"BOOL": 1,
	"U8":   1, "U16": 2, "U32": 4, "U64": 8,
	"I8": 1, "I16": 2, "I32": 4, "I64": 8,
	"F16": 2, "BF16": 2, "F32": 4, "F64": 8,
	"C64": 8, "C128": 16,
	"F8_E4M3": 1, "F8_E5M2": 1, "F8_E4M3FNUZ": 1, "F8_E5M2FNUZ": 1, "F8_E8M0": 1,
}

// DTypeSize returns the element size of a dtype name and whether the name is known.
func DTypeSize(dtype string) (int, bool) {
	s, ok := dtypeSizes[dtype]
	return s, ok
}

func isIntegerDType(dtype string) bool {
	switch dtype {
	case "U8", "U16", "U32", "U64", "I8", "I16", "I32", "I64":
		return true
	}
	return false
}

// Filter names (section 5).
const (
	FilterNone         = "none"
	FilterShuffle      = "shuffle"
	FilterDeltaShuffle = "delta_shuffle"
	FilterBitpack      = "bitpack"
)

// Storage names (section 4).
const (
	StorageRaw     = "raw"
	StorageChunked = "chunked"
)

func knownFilter(f string) bool {
	switch f {
	case FilterNone, FilterShuffle, FilterDeltaShuffle, FilterBitpack:
		return true
	}
	return false
}

// filterDefinedFor reports whether a (known) filter is defined for a (known) dtype.
func filterDefinedFor(filter, dtype string) bool {
	switch filter {
	case FilterNone, FilterShuffle:
		return true
	case FilterDeltaShuffle:
		return isIntegerDType(dtype)
	case FilterBitpack:
		return dtype == "BOOL"
	}
	return false
}

// filteredSize is the size of a chunk of m elements of s bytes after the filter (section 5).
func filteredSize(filter string, m, s uint64) uint64 {
	if filter == FilterBitpack {
		return (m + 7) / 8
	}
	return m * s
}

// Overflow-checked arithmetic.

func mulChecked(a, b uint64) (uint64, bool) {
	hi, lo := bits.Mul64(a, b)
	return lo, hi == 0
}

func addChecked(a, b uint64) (uint64, bool) {
	s, carry := bits.Add64(a, b, 0)
	return s, carry == 0
}

// Format 1.1 (section 16).
const (
	// FeatureBinaryIndex is required feature bit 0: every trailer points to a binary
	// index (section 16.2), and versions may be appended (16.6).
	FeatureBinaryIndex = 1 << 0
	knownRequired      = FeatureBinaryIndex

	indexFixedSize  = 96
	indexHeadMin    = indexFixedSize + superblockSize // + 32 × section_count
	dirEntrySize    = 32
	minSections     = 7
	maxSections     = 64
	tensorRecSize   = 64
	chunkRecSize    = 40
	versionRecSize  = 48
	trailerBoundary = 64 // every 1.1 trailer ends at a multiple of this
	hashSize        = 16 // BLAKE3-128 content hash (16.3)
	MaxChunkRecords = 1 << 40
)

var indexMagic = [8]byte{'B', 'P', 'Z', 'I', 'N', 'D', 'E', 'X'}

// Section kinds of the binary index (16.2).
const (
	secVersions uint32 = 1
	secTensors  uint32 = 2
	secNames    uint32 = 3
	secShapes   uint32 = 4
	secChunks   uint32 = 5
	secTree     uint32 = 6
	secMetadata uint32 = 7
	secWriter   uint32 = 8
)

var sectionNames = map[uint32]string{
	secVersions: "versions", secTensors: "tensors", secNames: "names", secShapes: "shapes",
	secChunks: "chunks", secTree: "tree", secMetadata: "metadata", secWriter: "writer",
}

// dtypeByCode and filterByCode map the codes of section 16.2 to the names of sections 5–6.
var dtypeByCode = [...]string{1: "BOOL", 2: "U8", 3: "U16", 4: "U32", 5: "U64", 6: "I8", 7: "I16",
	8: "I32", 9: "I64", 10: "F16", 11: "BF16", 12: "F32", 13: "F64", 14: "C64", 15: "C128",
	16: "F8_E4M3", 17: "F8_E5M2", 18: "F8_E4M3FNUZ", 19: "F8_E5M2FNUZ", 20: "F8_E8M0"}

var filterByCode = [...]string{0: FilterNone, 1: FilterShuffle, 2: FilterDeltaShuffle, 3: FilterBitpack}

var storageByCode = [...]string{0: StorageRaw, 1: StorageChunked}

// codeName turns a code into its name, or into a placeholder that no name table
// holds (so that validation reports it as unknown, naming the code).
func codeName(table []string, code uint8) string {
	if int(code) < len(table) && table[code] != "" {
		return table[code]
	}
	return fmt.Sprintf("code %d", code)
}
