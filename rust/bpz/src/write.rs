//! Streaming writer: superblock first, tensors one by one, index and trailer at
//! the end. Memory stays bounded by a window of chunks in flight.

use std::collections::VecDeque;
use std::hash::BuildHasher;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde_json::Value;

use crate::codec;
use crate::error::{Error, Result};
use crate::filter_choice;
use crate::format::*;
use crate::index::{IndexEmitter, JsonPart};
use crate::json::{self, JsonError, Scanner};
use crate::persist::TempFile;
pub use crate::persist::STALE_TEMP_AGE;

/// When a tensor is compressed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Compression {
    /// Never: every tensor raw (memory-mappable).
    None,
    /// Always chunked with zstd (chunks that don't shrink are still stored plain).
    Zstd,
    /// Chunked only if a sample shrinks to at most `max_share` of its size;
    /// otherwise raw. Tensors under `min_bytes` stay raw.
    Auto { max_share: f64, min_bytes: usize },
}

impl Compression {
    /// Compress where it saves at least a third; keep the rest mappable.
    pub const AUTO: Compression = Compression::Auto {
        max_share: 0.67,
        min_bytes: 4096,
    };

    /// The setting a name stands for: "auto", "zstd" or "none".
    pub fn from_name(name: &str) -> Result<Compression> {
        match name {
            "auto" => Ok(Compression::AUTO),
            "zstd" => Ok(Compression::Zstd),
            "none" => Ok(Compression::None),
            other => Err(Error::InvalidArgument(format!(
                "compression must be \"auto\", \"zstd\" or \"none\" (None in Python), not {other:?}"
            ))),
        }
    }

    /// The name [`from_name`](Self::from_name) takes ("auto" for any `Auto` setting).
    pub fn name(&self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Zstd => "zstd",
            Compression::Auto { .. } => "auto",
        }
    }
}

/// Per-archive settings.
#[derive(Debug, Clone)]
pub struct WriterOptions {
    /// Raw tensors start at multiples of this (power of two, 16..=4096).
    pub alignment: u32,
    /// Target decoded size of a chunk.
    pub chunk_bytes: usize,
    pub compression: Compression,
    /// zstd level (1 = fast; up to 22).
    pub level: i32,
    /// Filter for compressed tensors whose dtype it suits; `None` chooses per tensor.
    pub filter: Option<Filter>,
    /// fsync the file and its directory before the rename.
    pub sync: bool,
    /// Replace an existing destination. When false, finishing fails if the
    /// destination exists by then (checked atomically, not racily).
    pub overwrite: bool,
    pub writer: WriterInfo,
}

impl Default for WriterOptions {
    fn default() -> Self {
        WriterOptions {
            alignment: DEFAULT_ALIGNMENT,
            chunk_bytes: DEFAULT_CHUNK_BYTES,
            compression: Compression::AUTO,
            level: 1,
            filter: None,
            sync: true,
            overwrite: true,
            writer: WriterInfo {
                name: "bpz-rs".into(),
                version: env!("CARGO_PKG_VERSION").into(),
            },
        }
    }
}

/// Overrides for one tensor.
#[derive(Debug, Clone, Default)]
pub struct TensorOptions {
    pub compression: Option<Compression>,
    pub filter: Option<Filter>,
    pub level: Option<i32>,
}

/// What [`Writer::finish`] wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub path: Option<PathBuf>,
    pub tensors: usize,
    pub file_bytes: u64,
    pub data_bytes: u64,
}

/// Where the bytes go: a temporary sibling renamed over the destination on
/// success (removed if the writer is dropped unfinished), or any `Write`.
enum Sink<W: Write> {
    File(TempFile),
    Stream(W),
}

/// Writes one archive. Dropping an unfinished file writer deletes its
/// temporary file and leaves any existing destination untouched.
pub struct Writer<W: Write = io::Sink> {
    sink: Option<Sink<W>>,
    label: String,
    pos: u64,
    opts: WriterOptions,
    tensors: Vec<TensorInfo>,
    names: NameTable,
    tree: JsonPart,
    metadata: JsonPart,
    /// Output buffers of encoded chunks, reused from chunk to chunk and tensor
    /// to tensor (a fresh 2 MiB buffer per chunk is an mmap + page faults).
    bufs: Vec<Vec<u8>>,
    /// The last chunks of the previous tensor: already counted in `pos` and in
    /// its chunk table, written before any other byte (see [`Writer::write`]).
    /// Deferred so that they are written while the next tensor compresses.
    pending: VecDeque<Vec<u8>>,
}

impl WriterOptions {
    /// Refuses settings no archive can be written with; the one check of them,
    /// which [`Writer::create`] and [`Writer::new`] apply before anything is written.
    pub fn check(&self) -> Result<()> {
        let a = self.alignment;
        if !a.is_power_of_two() || !(MIN_ALIGNMENT..=MAX_ALIGNMENT).contains(&a) {
            return Err(Error::InvalidArgument(format!(
                "alignment {a} is not a power of two in {MIN_ALIGNMENT}..={MAX_ALIGNMENT}"
            )));
        }
        if self.chunk_bytes == 0 || self.chunk_bytes as u64 > MAX_CHUNK_BYTES {
            return Err(Error::InvalidArgument(format!(
                "chunk_bytes (chunk_size in Python) {} is not in 1..={MAX_CHUNK_BYTES}",
                self.chunk_bytes
            )));
        }
        check_level(self.level)
    }
}

impl Writer<io::Sink> {
    /// Starts an archive that will replace `path` atomically on [`finish`](Self::finish).
    /// What may be replaced, and how (permissions, symlinks), is described in [`crate::persist`].
    pub fn create(path: impl AsRef<Path>, opts: WriterOptions) -> Result<Self> {
        let dest = path.as_ref();
        opts.check()?;
        let file = TempFile::create(dest, opts.sync, opts.overwrite)?;
        Writer::start(Sink::File(file), dest.display().to_string(), opts)
    }
}

impl<W: Write> Writer<W> {
    /// Writes an archive to any byte stream (no seeking needed).
    pub fn new(out: W, opts: WriterOptions) -> Result<Self> {
        Writer::start(Sink::Stream(out), "<stream>".into(), opts)
    }

    fn start(sink: Sink<W>, label: String, opts: WriterOptions) -> Result<Self> {
        opts.check()?;
        let mut w = Writer {
            sink: Some(sink),
            label,
            pos: 0,
            opts,
            tensors: Vec::new(),
            names: NameTable::default(),
            tree: JsonPart::default(),
            metadata: JsonPart::default(),
            bufs: Vec::new(),
            pending: VecDeque::new(),
        };
        let sb = Superblock::new(w.opts.alignment).encode();
        w.write(&sb)?;
        Ok(w)
    }

    /// Appends `bytes` at `pos` (after any deferred chunks).
    fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.flush_pending()?;
        self.write_out(bytes)?;
        self.pos += bytes.len() as u64;
        Ok(())
    }

    /// Writes the deferred chunks (their bytes are already counted in `pos`).
    fn flush_pending(&mut self) -> Result<()> {
        while let Some(buf) = self.pending.pop_front() {
            self.write_out(&buf)?;
            self.recycle(buf);
        }
        Ok(())
    }

    fn write_out(&mut self, bytes: &[u8]) -> Result<()> {
        let r = match self.sink.as_mut().expect("writer used after finish") {
            Sink::File(file) => file.out.write_all(bytes),
            Sink::Stream(out) => out.write_all(bytes),
        };
        r.map_err(|e| Error::io(&self.label, e))
    }

    fn pad_to(&mut self, alignment: u64) -> Result<()> {
        let pad = (alignment - self.pos % alignment) % alignment;
        const ZEROS: [u8; MAX_ALIGNMENT as usize] = [0; MAX_ALIGNMENT as usize];
        self.write(&ZEROS[..pad as usize])
    }

    /// Sets the pytree skeleton stored in the index (see spec, "Tree").
    pub fn set_tree(&mut self, tree: Value) {
        self.tree = JsonPart::Value(tree);
    }

    /// Sets the user metadata (any JSON value).
    pub fn set_metadata(&mut self, metadata: Value) {
        self.metadata = JsonPart::Value(metadata);
    }

    /// Sets the pytree skeleton from JSON text.
    pub fn set_tree_json(&mut self, text: &str) -> Result<()> {
        self.tree = JsonPart::Value(self.parse_json("tree", text)?);
        Ok(())
    }

    /// Sets the pytree skeleton from JSON text that is stored as given, not parsed and
    /// written again as [`set_tree_json`](Self::set_tree_json) does: for callers that
    /// produce compact JSON themselves, so that a tree of millions of nodes costs one
    /// check of its text. It is checked all the same (strict JSON, no repeated member
    /// name, the nesting limit), so the archive stays readable whatever it is given.
    pub fn set_tree_json_verbatim(&mut self, text: String) -> Result<()> {
        self.tree = JsonPart::Text(self.check_json_text("tree", text)?);
        Ok(())
    }

    /// Sets the user metadata from JSON text stored as given, checked as
    /// [`set_tree_json_verbatim`](Self::set_tree_json_verbatim) checks the tree.
    pub fn set_metadata_json_verbatim(&mut self, text: String) -> Result<()> {
        self.metadata = JsonPart::Text(self.check_json_text("metadata", text)?);
        Ok(())
    }

    /// Strict JSON, no repeated member name, within the nesting limit: what every reader accepts.
    fn check_json_text(&self, what: &str, text: String) -> Result<String> {
        // The scanner stops at the depth the part may have; only then is the depth measured.
        let mut s = Scanner::new(text.as_bytes(), MAX_JSON_DEPTH - 1);
        s.skip_value().and_then(|()| s.end()).map_err(|e| match e {
            JsonError::Invalid { at, detail } => {
                Error::InvalidArgument(format!("{what} is not valid JSON: {detail} (at byte {at})"))
            }
            JsonError::TooDeep => check_nesting(&self.label, what, json_depth(text.as_bytes()))
                .expect_err("the scanner found it deeper than the limit"),
        })?;
        Ok(text)
    }

    /// Sets the user metadata from JSON text.
    pub fn set_metadata_json(&mut self, text: &str) -> Result<()> {
        self.metadata = JsonPart::Value(self.parse_json("metadata", text)?);
        Ok(())
    }

    /// Too deep is told apart from not JSON: the depth is measured on the bytes first
    /// (the parser would stop at its recursion limit and call the text invalid).
    fn parse_json(&self, what: &str, text: &str) -> Result<Value> {
        check_nesting(&self.label, what, json_depth(text.as_bytes()))?;
        serde_json::from_str(text)
            .map_err(|e| Error::InvalidArgument(format!("{what} is not valid JSON: {e}")))
    }

    /// Makes room for `additional` more tensors (a caller that knows how many are coming
    /// saves the table's regrowth).
    pub fn reserve(&mut self, additional: usize) {
        let n = additional.min(MAX_TENSORS.saturating_sub(self.tensors.len()));
        self.tensors.reserve(n);
        self.names.reserve(self.tensors.len() + n, &self.tensors);
    }

    /// Names of the tensors added so far.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// Adds a tensor with the archive's default options.
    pub fn add_tensor(
        &mut self,
        name: &str,
        dtype: DType,
        shape: &[u64],
        data: &[u8],
    ) -> Result<&TensorInfo> {
        self.add_tensor_with(name, dtype, shape, data, &TensorOptions::default())
    }

    /// Adds a tensor: `data` is its little-endian, C-order bytes. Its last
    /// chunks may be written during the next call (as a buffered writer
    /// would), so an I/O error can surface there or in [`finish`](Self::finish).
    pub fn add_tensor_with(
        &mut self,
        name: &str,
        dtype: DType,
        shape: &[u64],
        data: &[u8],
        topts: &TensorOptions,
    ) -> Result<&TensorInfo> {
        let vacancy = self.check_new_tensor(name, dtype, shape, data)?;
        let level = topts.level.unwrap_or(self.opts.level);
        check_level(level)?;
        if let Some(f) = topts.filter {
            if !f.applies_to(dtype) {
                return Err(Error::InvalidArgument(format!(
                    "tensor {name:?}: filter {} is not defined for dtype {dtype}",
                    f.name()
                )));
            }
        }
        let chunk_elems = self.chunk_elems(dtype, shape);
        let compression = topts.compression.unwrap_or(self.opts.compression);
        // The archive-wide filter is a preference, used where it is defined.
        let forced_filter = topts
            .filter
            .or(self.opts.filter.filter(|f| f.applies_to(dtype)));
        // The choice keeps its probe compression: the share estimate reuses it,
        // and so does the only chunk of a tensor no larger than the sample.
        let choice = match compression {
            Compression::None => None,
            Compression::Zstd => Some(filter_choice::choose(dtype, data, level, forced_filter)),
            Compression::Auto {
                max_share,
                min_bytes,
            } => {
                if data.len() < min_bytes.max(1) {
                    None
                } else {
                    let mut c = filter_choice::choose(dtype, data, level, forced_filter);
                    (c.share() <= max_share).then_some(c)
                }
            }
        };
        let info = match choice {
            None => self.write_raw(name, dtype, shape, data, chunk_elems)?,
            Some(mut c) => {
                let whole = c.take_whole_chunk();
                self.write_chunked(
                    name,
                    dtype,
                    shape,
                    data,
                    chunk_elems,
                    c.filter,
                    level,
                    whole,
                )?
            }
        };
        self.names
            .insert(vacancy, &info.name, self.tensors.len(), &self.tensors);
        self.tensors.push(info);
        Ok(self.tensors.last().unwrap())
    }

    /// Where the name goes in the table of names, if the tensor may be added.
    fn check_new_tensor(
        &self,
        name: &str,
        dtype: DType,
        shape: &[u64],
        data: &[u8],
    ) -> Result<Vacancy> {
        if name.len() > MAX_NAME_BYTES {
            return Err(Error::InvalidArgument(format!(
                "tensor name of {} bytes is over the limit of {MAX_NAME_BYTES}",
                name.len()
            )));
        }
        if name.contains('\0') {
            return Err(Error::InvalidArgument(format!(
                "tensor name {name:?} contains a NUL character"
            )));
        }
        let Some(vacancy) = self.names.vacancy(name, &self.tensors) else {
            return Err(Error::InvalidArgument(format!(
                "tensor {name:?} was already added"
            )));
        };
        if self.tensors.len() >= MAX_TENSORS {
            return Err(Error::InvalidArgument(format!(
                "more than {MAX_TENSORS} tensors"
            )));
        }
        if shape.len() > MAX_RANK {
            return Err(Error::InvalidArgument(format!(
                "tensor {name:?} has rank {}, over the limit of {MAX_RANK}",
                shape.len()
            )));
        }
        let expected = shape
            .iter()
            .try_fold(dtype.size() as u64, |acc, &d| acc.checked_mul(d))
            .filter(|&n| n <= MAX_SAFE_INTEGER);
        if dtype == DType::Bool {
            if let Some(pos) = data.iter().position(|&b| b > 1) {
                return Err(Error::InvalidArgument(format!(
                    "tensor {name:?}: BOOL byte {pos} is {}, not 0 or 1",
                    data[pos]
                )));
            }
        }
        if expected != Some(data.len() as u64) {
            return Err(Error::InvalidArgument(format!(
                "tensor {name:?}: {} bytes given, but {dtype} of shape {shape:?} needs {}",
                data.len(),
                expected.map_or("more than 2^53".to_string(), |n| n.to_string())
            )));
        }
        Ok(vacancy)
    }

    /// Whole rows of the leading axis per chunk, near `chunk_bytes`; rows
    /// larger than that are split by elements.
    fn chunk_elems(&self, dtype: DType, shape: &[u64]) -> u64 {
        let target_elems = (self.opts.chunk_bytes / dtype.size()).max(1) as u64;
        let row: u64 = shape.iter().skip(1).product();
        let nelems: u64 = shape.iter().product();
        let elems = if row == 0 {
            1
        } else if row <= target_elems {
            (target_elems / row) * row
        } else {
            target_elems
        };
        let min_for_count = nelems.div_ceil(MAX_CHUNKS_PER_TENSOR as u64);
        elems
            .max(min_for_count)
            .min(nelems)
            .clamp(1, MAX_CHUNK_BYTES / dtype.size() as u64)
    }

    fn write_raw(
        &mut self,
        name: &str,
        dtype: DType,
        shape: &[u64],
        data: &[u8],
        chunk_elems: u64,
    ) -> Result<TensorInfo> {
        self.pad_to(self.opts.alignment as u64)?;
        let start = self.pos;
        let chunk_bytes = (chunk_elems as usize) * dtype.size();
        let chunk = |i: usize, crc: u32| {
            let offset = start + (i * chunk_bytes) as u64;
            let len = chunk_bytes.min(data.len() - i * chunk_bytes) as u64;
            ChunkInfo {
                offset,
                stored_len: len,
                crc32c: crc,
                encoded: false,
                hash: None,
            }
        };
        let chunks: Vec<ChunkInfo> = if data.is_empty() {
            Vec::new()
        } else if data.len() <= chunk_bytes {
            // One chunk: no trip through the thread pool (it dominates for small tensors).
            vec![chunk(0, crc32c::crc32c(data))]
        } else {
            let crcs: Vec<u32> = data.par_chunks(chunk_bytes).map(crc32c::crc32c).collect();
            crcs.into_iter()
                .enumerate()
                .map(|(i, crc)| chunk(i, crc))
                .collect()
        };
        self.write(data)?;
        Ok(TensorInfo {
            name: name.into(),
            dtype,
            shape: shape.to_vec(),
            storage: Storage::Raw,
            filter: Filter::None,
            chunk_elems,
            chunks,
        })
    }

    /// Writes a chunked tensor. `whole` is the only chunk already encoded by
    /// the filter choice's probe (see [`filter_choice::Choice::take_whole_chunk`]).
    #[allow(clippy::too_many_arguments)]
    fn write_chunked(
        &mut self,
        name: &str,
        dtype: DType,
        shape: &[u64],
        data: &[u8],
        chunk_elems: u64,
        filter: Filter,
        level: i32,
        whole: Option<(Vec<u8>, bool)>,
    ) -> Result<TensorInfo> {
        let chunk_bytes = (chunk_elems as usize) * dtype.size();
        let pieces: Vec<&[u8]> = if data.is_empty() {
            Vec::new()
        } else {
            data.chunks(chunk_bytes).collect()
        };
        let mut chunks = Vec::with_capacity(pieces.len());
        let encode =
            move |piece: &[u8], buf: Vec<u8>| Encoded::new(filter, dtype, level, piece, buf);
        match (pieces.as_slice(), whole) {
            ([piece], Some((buf, encoded))) => {
                let e = Encoded::from_parts(piece, buf, encoded);
                self.put_chunk(&mut chunks, piece, e)?;
            }
            // No trip through the thread pool for a single chunk.
            ([] | [_], _) => {
                for piece in &pieces {
                    let e = encode(piece, self.take_buf());
                    self.put_chunk(&mut chunks, piece, e)?;
                }
            }
            _ => self.encode_and_write(&pieces, encode, &mut chunks)?,
        }
        Ok(TensorInfo {
            name: name.into(),
            dtype,
            shape: shape.to_vec(),
            storage: Storage::Chunked,
            filter,
            chunk_elems,
            chunks,
        })
    }

    /// Encodes `pieces` on the thread pool and writes them in order as they
    /// come: chunk k is written while the following ones are compressed, with
    /// at most a window of chunks in flight (bounded memory). The chunks still
    /// unwritten when the last one is encoded are deferred (see `pending`):
    /// the pool would idle while they are written.
    fn encode_and_write<'d, F>(
        &mut self,
        pieces: &[&'d [u8]],
        encode: F,
        chunks: &mut Vec<ChunkInfo>,
    ) -> Result<()>
    where
        F: Fn(&'d [u8], Vec<u8>) -> Encoded + Copy + Send + Sync,
    {
        // Enough chunks in flight to keep every worker busy while one waits
        // to be written, and to absorb uneven chunk times.
        let window = rayon::current_num_threads() * 2 + 2;
        if rayon::current_thread_index().is_some() {
            // Called from inside the pool: blocking this worker on a channel
            // could starve the jobs it waits for, so encode a window at a time.
            for group in pieces.chunks(window) {
                let bufs: Vec<Vec<u8>> = group.iter().map(|_| self.take_buf()).collect();
                let encoded: Vec<Encoded> = group
                    .par_iter()
                    .zip(bufs)
                    .map(|(p, b)| encode(p, b))
                    .collect();
                for (piece, e) in group.iter().zip(encoded) {
                    self.put_chunk(chunks, piece, e)?;
                }
            }
            return Ok(());
        }
        let (tx, rx) = std::sync::mpsc::channel::<(usize, std::thread::Result<Encoded>)>();
        rayon::in_place_scope(|scope| {
            // ready[i]: chunk `written + i`, once encoded.
            let mut ready: VecDeque<Option<Encoded>> = VecDeque::with_capacity(window);
            let (mut next, mut written, mut received) = (0, 0, 0);
            while written < pieces.len() {
                while next < pieces.len() && next < written + window {
                    let (k, piece, buf, tx) = (next, pieces[next], self.take_buf(), tx.clone());
                    scope.spawn(move |_| {
                        // Every job sends, even one that panics, so the loop never waits forever.
                        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            encode(piece, buf)
                        }));
                        let _ = tx.send((k, r));
                    });
                    ready.push_back(None);
                    next += 1;
                }
                // The previous tensor's deferred chunks, while these compress.
                self.flush_pending()?;
                let (k, r) = rx.recv().expect("this thread holds a sender");
                received += 1;
                ready[k - written] =
                    Some(r.unwrap_or_else(|panic| std::panic::resume_unwind(panic)));
                while let Some(Some(_)) = ready.front() {
                    let e = ready.pop_front().flatten().expect("checked above");
                    if received == pieces.len() {
                        self.defer_chunk(chunks, pieces[written], e);
                    } else {
                        self.put_chunk(chunks, pieces[written], e)?;
                    }
                    written += 1;
                }
            }
            Ok(())
        })
    }

    /// Records one chunk at `pos` and queues its bytes for writing (copying
    /// `piece` if the chunk stays plain: the caller's data is only borrowed).
    fn defer_chunk(&mut self, chunks: &mut Vec<ChunkInfo>, piece: &[u8], e: Encoded) {
        let mut buf = e.buf;
        if !e.encoded {
            buf.clear();
            buf.extend_from_slice(piece);
        }
        chunks.push(ChunkInfo {
            offset: self.pos,
            stored_len: buf.len() as u64,
            crc32c: e.crc,
            encoded: e.encoded,
            hash: None,
        });
        self.pos += buf.len() as u64;
        self.pending.push_back(buf);
    }

    /// Writes one chunk (`piece` itself if it stays plain) and records it.
    fn put_chunk(&mut self, chunks: &mut Vec<ChunkInfo>, piece: &[u8], e: Encoded) -> Result<()> {
        let stored = if e.encoded { &e.buf[..] } else { piece };
        let offset = self.pos;
        self.write(stored)?;
        chunks.push(ChunkInfo {
            offset,
            stored_len: stored.len() as u64,
            crc32c: e.crc,
            encoded: e.encoded,
            hash: None,
        });
        self.recycle(e.buf);
        Ok(())
    }

    fn take_buf(&mut self) -> Vec<u8> {
        self.bufs.pop().unwrap_or_default()
    }

    fn recycle(&mut self, buf: Vec<u8>) {
        // Keep a window's worth of buffers, but not those of unusually large chunks.
        if buf.capacity() <= MAX_KEPT_BUFFER
            && self.bufs.len() < rayon::current_num_threads() * 2 + 2
        {
            self.bufs.push(buf);
        }
    }

    /// Writes the index and trailer; for a file writer, flushes, fsyncs and
    /// renames the temporary file over the destination.
    pub fn finish(mut self) -> Result<(Summary, Option<W>)> {
        // Checked before serializing, which recurses as deep as the value.
        for (what, part) in [("tree", &self.tree), ("metadata", &self.metadata)] {
            if let JsonPart::Value(v) = part {
                check_nesting(&self.label, what, json::value_depth(v))?;
            }
        }
        let index_offset = self.pos;
        let (tensors, tree, metadata) = (
            std::mem::take(&mut self.tensors),
            std::mem::take(&mut self.tree),
            std::mem::take(&mut self.metadata),
        );
        let writer_info = self.opts.writer.clone();
        // The index goes out as it is made (in MiB pieces, its checksum computed on the
        // way). Past the size limit nothing more is written, but the rest is still
        // measured, so that the error gives the size; the temporary file is then deleted.
        let (mut index_len, mut index_crc) = (0u64, 0u32);
        IndexEmitter::new(|piece: &[u8]| {
            index_len += piece.len() as u64;
            if index_len <= MAX_INDEX_BYTES {
                index_crc = crc32c::crc32c_append(index_crc, piece);
                self.write(piece)?;
            }
            Ok(())
        })
        .emit(&tensors, &tree, &metadata, Some(&writer_info))?;
        if index_len > MAX_INDEX_BYTES {
            return Err(Error::InvalidArgument(format!(
                "index of {index_len} bytes is over the limit of {MAX_INDEX_BYTES}"
            )));
        }
        let data_bytes = index_offset - SUPERBLOCK_LEN as u64;
        let trailer = Trailer {
            index_offset,
            index_len,
            index_crc32c: index_crc,
        };
        self.write(&trailer.encode())?;
        let summary = Summary {
            path: None,
            tensors: tensors.len(),
            file_bytes: self.pos,
            data_bytes,
        };
        match self.sink.take().unwrap() {
            Sink::Stream(mut out) => {
                out.flush().map_err(|e| Error::io(&self.label, e))?;
                Ok((summary, Some(out)))
            }
            Sink::File(file) => {
                let path = file.commit()?;
                Ok((
                    Summary {
                        path: Some(path),
                        ..summary
                    },
                    None,
                ))
            }
        }
    }
}

/// The names of the tensors added, for refusing a repeated one: an open-addressing
/// table of indices into the writer's tensor list, so each name is stored once (a
/// set of `String`s doubled the memory of a million small tensors' names). Each slot
/// keeps 32 bits of the name's hash, so a probe reads a name only when they match.
#[derive(Default)]
struct NameTable {
    /// Per slot: the hash's high half, and the tensor index + 1 (0: free). The
    /// length is 0 or a power of two.
    slots: Vec<(u32, u32)>,
    hasher: foldhash::fast::RandomState,
}

/// Where a name not in a [`NameTable`] goes: its slot and its hash's tag.
#[derive(Clone, Copy)]
struct Vacancy {
    slot: usize,
    tag: u32,
}

impl NameTable {
    /// Where `name` would go, or `None` if it is there.
    fn vacancy(&self, name: &str, tensors: &[TensorInfo]) -> Option<Vacancy> {
        self.probe(name, tensors).ok()
    }

    /// Records `name`, found vacant since the last insertion, as `tensors[index]`
    /// (not in `tensors` yet).
    fn insert(&mut self, vacancy: Vacancy, name: &str, index: usize, tensors: &[TensorInfo]) {
        let entry = u32::try_from(index + 1).expect("MAX_TENSORS fits in 32 bits");
        // At most 7/8 full, so that probes stay short and always end.
        let vacancy = if (index + 1) * 8 <= self.slots.len() * 7 {
            vacancy
        } else {
            self.reserve(index + 1, tensors);
            self.probe(name, tensors).expect("the name was vacant")
        };
        self.slots[vacancy.slot] = (vacancy.tag, entry);
    }

    /// Room for `count` names in all.
    fn reserve(&mut self, count: usize, tensors: &[TensorInfo]) {
        let wanted = (count * 8 / 7 + 1).next_power_of_two().max(16);
        if wanted <= self.slots.len() {
            return;
        }
        self.slots = vec![(0, 0); wanted];
        for (i, t) in tensors.iter().enumerate() {
            let v = self
                .probe(&t.name, tensors)
                .expect("names in the list are distinct");
            self.slots[v.slot] = (v.tag, (i + 1) as u32);
        }
    }

    /// `Ok(where name would go)`, or `Err(())` if it is there.
    fn probe(&self, name: &str, tensors: &[TensorInfo]) -> std::result::Result<Vacancy, ()> {
        let hash = self.hasher.hash_one(name);
        let tag = (hash >> 32) as u32;
        if self.slots.is_empty() {
            return Ok(Vacancy { slot: 0, tag });
        }
        let mask = self.slots.len() - 1;
        let mut slot = hash as usize & mask;
        loop {
            match self.slots[slot] {
                (_, 0) => return Ok(Vacancy { slot, tag }),
                (t, i) if t == tag && tensors[i as usize - 1].name == name => return Err(()),
                _ => slot = (slot + 1) & mask,
            }
        }
    }
}

/// Output buffers larger than this are freed after their chunk is written.
const MAX_KEPT_BUFFER: usize = 16 << 20;

/// One chunk as it will be stored.
struct Encoded {
    /// The zstd frame if `encoded`; otherwise empty (the chunk is stored plain,
    /// straight from the caller's data) and kept only for reuse.
    buf: Vec<u8>,
    encoded: bool,
    /// crc32c of the stored bytes.
    crc: u32,
}

impl Encoded {
    fn new(filter: Filter, dtype: DType, level: i32, piece: &[u8], mut buf: Vec<u8>) -> Encoded {
        let encoded = codec::encode_chunk_into(filter, dtype, level, piece, &mut buf);
        Encoded::from_parts(piece, buf, encoded)
    }

    fn from_parts(piece: &[u8], buf: Vec<u8>, encoded: bool) -> Encoded {
        let crc = crc32c::crc32c(if encoded { &buf } else { piece });
        Encoded { buf, encoded, crc }
    }
}

/// The tree and the metadata sit one level inside the index object, whose nesting the
/// format limits to [`MAX_JSON_DEPTH`].
fn check_nesting(label: &str, what: &str, depth: usize) -> Result<()> {
    let limit = MAX_JSON_DEPTH - 1;
    if depth <= limit {
        return Ok(());
    }
    Err(Error::limit(
        label,
        format!(
            "{what} is nested deeper than an archive allows (an index may not be nested deeper than \
             {MAX_JSON_DEPTH} levels, and the {what} sits one level inside it): its nesting depth"
        ),
        depth as u64,
        limit as u64,
    ))
}

fn check_level(level: i32) -> Result<()> {
    let range = zstd::compression_level_range();
    if !range.contains(&level) {
        return Err(Error::InvalidArgument(format!(
            "zstd level {level} is not in {}..={}",
            range.start(),
            range.end()
        )));
    }
    Ok(())
}

impl<W: Write> std::fmt::Debug for Writer<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer")
            .field("path", &self.label)
            .field("tensors", &self.tensors.len())
            .field("bytes", &self.pos)
            .finish()
    }
}
