package bpz

import (
	"bytes"
	"fmt"
	"math"
	"os"
)

// DefaultMaxReadBytes is the largest result a Read or ReadRows call returns unless
// Options.MaxReadBytes says otherwise. A valid 132 KB file can hold a tensor of 4 GiB
// of zeros (16 chunks of 256 MiB that zstd stores in 8 KiB each), and Go cannot recover
// from a failed allocation: without a cap, reading such a file kills the process.
// 1 GiB leaves ordinary tensors alone; larger ones are read with a raised limit, by
// rows, or streamed (TensorReader, ReadTo), which needs one chunk of memory.
const DefaultMaxReadBytes = 1 << 30

// NoLimit, as Options.MaxReadBytes, lifts the per-read cap.
const NoLimit = math.MaxUint64

// Options bound the memory the reader spends on a file, whatever the file declares.
// Every bound is checked before the memory is allocated, and a request over one fails
// with a *Error of kind "limit_exceeded" naming the option. The zero value gives the
// defaults.
type Options struct {
	// MaxReadBytes is the largest result one Read or ReadRows call may return (the one
	// buffer it allocates). 0 means DefaultMaxReadBytes (1 GiB); NoLimit lifts it.
	// Streaming reads (TensorReader, RowsReader, ReadTo, ReadRowsTo) are not subject to it.
	MaxReadBytes uint64

	// MaxChunkBytes caps the decoded size of any one chunk the reader decodes, in every
	// call (reads, streaming, Verify). A call's working memory besides its result is at
	// most one chunk: its stored bytes, its filtered bytes + 128 KiB and, for the
	// shuffle, delta_shuffle and bitpack filters, its decoded bytes. An encoded chunk
	// whose stored size is over zstd's compress bound for MaxChunkBytes is refused too.
	// 0 means the format's limit, the constant MaxChunkBytes (256 MiB), which every
	// valid file meets; values above it are lowered to it.
	MaxChunkBytes uint64

	// MaxIndexBytes caps the index Open reads and parses (parsing takes a few times the
	// index size in memory). 0 means the format's limit, the constant MaxIndexBytes
	// (256 MiB); values above it are lowered to it.
	MaxIndexBytes uint64

	// Version chooses the version of a 1.1 archive to open (section 16.4): 0 (the
	// default) the latest, k > 0 version number k, k < 0 the k-th from the latest (-1
	// is the latest, -2 the one before). A version the file does not hold is an error
	// of kind invalid_argument naming the versions it holds. A 1.0 file holds version 1.
	Version int64

	// CheckHashes makes every read check each chunk's BLAKE3 content hash (section
	// 16.3) besides its crc32c. Verify always checks them.
	CheckHashes bool
}

// withDefaults fills in the zero fields and lowers caps above the format's limits.
func (o Options) withDefaults() Options {
	if o.MaxReadBytes == 0 {
		o.MaxReadBytes = DefaultMaxReadBytes
	}
	if o.MaxChunkBytes == 0 || o.MaxChunkBytes > MaxChunkBytes {
		o.MaxChunkBytes = MaxChunkBytes
	}
	if o.MaxIndexBytes == 0 || o.MaxIndexBytes > MaxIndexBytes {
		o.MaxIndexBytes = MaxIndexBytes
	}
	return o
}

// Options returns the limits the archive was opened with, defaults filled in.
func (a *Archive) Options() Options { return a.opts }

// OpenWith opens and validates the archive at path, with caller-set limits.
func OpenWith(path string, opts Options) (*Archive, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, &Error{Kind: KindIO, File: path, Msg: "cannot open", Err: err}
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, &Error{Kind: KindIO, File: path, Msg: "cannot stat", Err: err}
	}
	a, err := OpenReaderAtWith(f, st.Size(), path, opts)
	if err != nil {
		f.Close()
		return nil, err
	}
	a.closer = f
	return a, nil
}

// OpenBytesWith opens and validates an archive held in memory, with caller-set limits.
func OpenBytesWith(b []byte, opts Options) (*Archive, error) {
	return OpenReaderAtWith(bytes.NewReader(b), int64(len(b)), "<bytes>", opts)
}

// zstdCompressBound is zstd's ZSTD_COMPRESSBOUND: the largest frame zstd produces for
// n input bytes. A longer frame can only be padded (empty blocks), so refusing it
// bounds the stored bytes a chunk makes us hold without refusing any real encoder's output.
func zstdCompressBound(n uint64) uint64 {
	b := n + n>>8
	if n < 128<<10 {
		b += (128<<10 - n) >> 11
	}
	return b + 64 // room for the largest frame header and a content checksum
}

// checkChunkBudget refuses chunk k of t if decoding it would take more memory than
// Options.MaxChunkBytes allows.
func (a *Archive) checkChunkBudget(t *TensorInfo, k int) error {
	limit := a.opts.MaxChunkBytes
	c := t.Chunks[k]
	if dec := t.chunkDecoded(k); dec > limit {
		return newErr(KindLimitExceeded, a.name, chunkPart(t.Name, k),
			"the chunk decodes to %d bytes, over this reader's limit of %d per chunk (Options.MaxChunkBytes)",
			dec, limit)
	}
	if bound := zstdCompressBound(limit); c.Encoded && c.Length > bound {
		return newErr(KindLimitExceeded, a.name, chunkPart(t.Name, k),
			"the chunk's zstd frame is %d bytes, more than zstd needs for %d bytes (Options.MaxChunkBytes)",
			c.Length, limit)
	}
	return nil
}

// checkChunkBudgets applies checkChunkBudget to chunks [first, last], so that a read
// fails before it allocates or yields anything.
func (a *Archive) checkChunkBudgets(t *TensorInfo, first, last int) error {
	for k := first; k <= last; k++ {
		if err := a.checkChunkBudget(t, k); err != nil {
			return err
		}
	}
	return nil
}

// checkReadBudget refuses a Read or ReadRows result of n bytes over Options.MaxReadBytes.
func (a *Archive) checkReadBudget(t *TensorInfo, n uint64) error {
	if n <= a.opts.MaxReadBytes {
		return nil
	}
	return &Error{Kind: KindLimitExceeded, File: a.name, Part: tensorPart(t.Name),
		Msg: fmt.Sprintf("reading %d bytes at once is over this reader's limit of %d (Options.MaxReadBytes): "+
			"raise the limit, read fewer rows, or stream the tensor with TensorReader or ReadTo",
			n, a.opts.MaxReadBytes)}
}
