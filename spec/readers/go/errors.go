package bpz

import (
	"errors"
	"fmt"
	"unicode/utf8"
)

// Error kinds, named exactly as in section 10 of spec/FORMAT.md.
const (
	KindTruncated          = "truncated"
	KindBadMagic           = "bad_magic"
	KindUnsupportedVersion = "unsupported_version"
	KindUnsupportedFeature = "unsupported_feature"
	KindChecksumMismatch   = "checksum_mismatch"
	KindInvalidIndex       = "invalid_index"
	KindLimitExceeded      = "limit_exceeded"
	KindCorruptData        = "corrupt_data"
	KindTensorNotFound     = "tensor_not_found"
	KindNotZeroCopy        = "not_zero_copy"
	KindInvalidArgument    = "invalid_argument"
	KindIO                 = "io"
)

// Kinds lists every error kind this package can report.
var Kinds = []string{
	KindTruncated, KindBadMagic, KindUnsupportedVersion, KindUnsupportedFeature,
	KindChecksumMismatch, KindInvalidIndex, KindLimitExceeded, KindCorruptData,
	KindTensorNotFound, KindNotZeroCopy, KindInvalidArgument, KindIO,
}

// Error is the error type returned by every function of this package.
type Error struct {
	Kind string // one of the Kind* constants (the spec's error kind name)
	File string // the archive's path (or the name given to OpenReaderAt)
	Part string // the part at fault: "superblock", "trailer", "index", `tensor "x"`, `tensor "x" chunk 3`, "data region", …
	Msg  string // what is wrong
	Err  error  // the underlying error, if any
}

func (e *Error) Error() string {
	s := "bpz: " + e.File
	if e.Part != "" {
		s += ": " + e.Part
	}
	s += ": " + e.Msg
	if e.Err != nil {
		s += ": " + e.Err.Error()
	}
	return s + " [" + e.Kind + "]"
}

func (e *Error) Unwrap() error { return e.Err }

// KindOf returns the kind of a *Error in err's chain, or "" if there is none.
func KindOf(err error) string {
	var e *Error
	if errors.As(err, &e) {
		return e.Kind
	}
	return ""
}

func newErr(kind, file, part, format string, args ...any) *Error {
	return &Error{Kind: kind, File: file, Part: part, Msg: fmt.Sprintf(format, args...)}
}

// shortName quotes a tensor name for a message, eliding the middle of a long one.
func shortName(name string) string {
	const keep = 40
	if len(name) <= 2*keep+16 {
		return fmt.Sprintf("%q", name)
	}
	head, tail := name[:keep], name[len(name)-keep:]
	for !utf8.ValidString(head) { // do not cut a character in two
		head = head[:len(head)-1]
	}
	for !utf8.ValidString(tail) {
		tail = tail[1:]
	}
	return fmt.Sprintf("%q…%q (%d bytes)", head, tail, len(name))
}

func tensorPart(name string) string { return "tensor " + shortName(name) }

func chunkPart(name string, i int) string {
	return fmt.Sprintf("tensor %s chunk %d", shortName(name), i)
}
