package bpz

import (
	"io"
)

// TensorReader streams a tensor's decoded bytes (or a row range of them) chunk by
// chunk, in bounded memory: it holds one chunk at a time (see Options.MaxChunkBytes),
// whatever the tensor's size. It implements io.Reader and io.WriterTo; one goroutine
// at a time may use it.
//
// A chunk's bytes are yielded only after the whole chunk has been read, its crc32c
// checked and its zstd frame decoded to exactly its declared size, so every byte
// yielded is verified. A chunk that fails makes Read return a *Error (kind
// checksum_mismatch, corrupt_data, truncated or io) instead of io.EOF, and every
// later Read return it again: the output is then incomplete, and a caller writing it
// somewhere should discard it (write to a temporary name, rename on success).
type TensorReader struct {
	a        *Archive
	t        *TensorInfo
	pos, end uint64 // decoded bytes [pos, end) are still to be yielded
	cur      []byte // the verified bytes of the current chunk not yet yielded
	bufs     chunkBufs
	err      error // sticky
}

// TensorReader returns a reader of the whole tensor's decoded bytes (little-endian,
// C order). It checks every chunk against Options.MaxChunkBytes before returning, so
// a stream fails only on damaged data or a failing file.
func (a *Archive) TensorReader(name string) (*TensorReader, error) {
	t, err := a.lookup(name)
	if err != nil {
		return nil, err
	}
	return a.rangeReader(t, 0, t.NBytes)
}

// RowsReader is TensorReader for rows [start, stop) of the leading axis; it decodes
// only the chunks that overlap them.
func (a *Archive) RowsReader(name string, start, stop uint64) (*TensorReader, error) {
	t, err := a.lookup(name)
	if err != nil {
		return nil, err
	}
	lo, hi, err := a.rowBytes(t, start, stop)
	if err != nil {
		return nil, err
	}
	return a.rangeReader(t, lo, hi)
}

// ReadTo writes the tensor's decoded bytes to w, one verified chunk at a time, and
// returns the number of bytes written. On an error, what was written is incomplete.
func (a *Archive) ReadTo(name string, w io.Writer) (int64, error) {
	r, err := a.TensorReader(name)
	if err != nil {
		return 0, err
	}
	return r.WriteTo(w)
}

// ReadRowsTo writes the decoded bytes of rows [start, stop) to w, as ReadTo does.
func (a *Archive) ReadRowsTo(name string, start, stop uint64, w io.Writer) (int64, error) {
	r, err := a.RowsReader(name, start, stop)
	if err != nil {
		return 0, err
	}
	return r.WriteTo(w)
}

func (a *Archive) rangeReader(t *TensorInfo, lo, hi uint64) (*TensorReader, error) {
	if lo < hi {
		first, last := t.chunkSpan(lo, hi)
		if err := a.checkChunkBudgets(t, first, last); err != nil {
			return nil, err
		}
	}
	return &TensorReader{a: a, t: t, pos: lo, end: hi}, nil
}

// Remaining is the number of bytes not yet yielded.
func (r *TensorReader) Remaining() uint64 { return r.end - r.pos + uint64(len(r.cur)) }

// next loads the chunk holding byte pos, verified, into cur.
func (r *TensorReader) next() error {
	if r.err != nil {
		return r.err
	}
	if r.pos >= r.end {
		return io.EOF
	}
	k, _ := r.t.chunkSpan(r.pos, r.end)
	d, err := r.a.loadChunk(r.t, k, &r.bufs, nil, r.a.opts.CheckHashes)
	if err != nil {
		r.err = err
		return err
	}
	from, to := r.t.pieceOf(k, r.pos, r.end)
	r.cur = d[from:to]
	r.pos += to - from
	return nil
}

// Read implements io.Reader.
func (r *TensorReader) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if len(r.cur) == 0 {
		if err := r.next(); err != nil {
			return 0, err
		}
	}
	n := copy(p, r.cur)
	r.cur = r.cur[n:]
	return n, nil
}

// WriteTo implements io.WriterTo: it writes each verified chunk straight from the
// decoding buffer. An error of w is returned as a *Error of kind io wrapping it.
func (r *TensorReader) WriteTo(w io.Writer) (int64, error) {
	var total int64
	for {
		if len(r.cur) == 0 {
			if err := r.next(); err == io.EOF {
				return total, nil
			} else if err != nil {
				return total, err
			}
		}
		n, err := w.Write(r.cur)
		total += int64(n)
		r.cur = r.cur[n:]
		if err == nil && len(r.cur) > 0 {
			err = io.ErrShortWrite
		}
		if err != nil {
			return total, &Error{Kind: KindIO, File: r.a.name, Part: tensorPart(r.t.Name),
				Msg: "writing the decoded bytes", Err: err}
		}
	}
}
