//! Streaming writer: superblock first, tensors one by one, index and trailer at
//! the end. Memory stays bounded by a window of chunks in flight.

use std::collections::{HashSet, VecDeque};
use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde_json::Value;

use crate::codec;
use crate::error::{Error, Result};
use crate::format::*;

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
/// success, or any `Write`.
enum Sink<W: Write> {
    File { out: BufWriter<File>, tmp: PathBuf, dest: PathBuf, sync: bool, overwrite: bool },
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
    names: HashSet<String>,
    tree: Value,
    metadata: Value,
    /// Output buffers of encoded chunks, reused from chunk to chunk and tensor
    /// to tensor (a fresh 2 MiB buffer per chunk is an mmap + page faults).
    bufs: Vec<Vec<u8>>,
    /// The last chunks of the previous tensor: already counted in `pos` and in
    /// its chunk table, written before any other byte (see [`Writer::write`]).
    /// Deferred so that they are written while the next tensor compresses.
    pending: VecDeque<Vec<u8>>,
}

impl Writer<io::Sink> {
    /// Starts an archive that will replace `path` atomically on [`finish`](Self::finish).
    pub fn create(path: impl AsRef<Path>, opts: WriterOptions) -> Result<Self> {
        let dest = path.as_ref().to_path_buf();
        let label = dest.display().to_string();
        let dir = match dest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let file_name = dest
            .file_name()
            .ok_or_else(|| Error::InvalidArgument(format!("{label}: not a file path")))?;
        let (file, tmp) = create_temp(&dir, &file_name.to_string_lossy()).map_err(|e| Error::io(&label, e))?;
        let sink = Sink::File {
            out: BufWriter::with_capacity(1 << 20, file),
            tmp,
            dest,
            sync: opts.sync,
            overwrite: opts.overwrite,
        };
        Writer::start(sink, label, opts)
    }
}

fn create_temp(dir: &Path, base: &str) -> io::Result<(File, PathBuf)> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    loop {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let tmp = dir.join(format!(".{base}.{}-{nanos:x}-{n}.bpz-tmp", std::process::id()));
        match fs::OpenOptions::new().write(true).create_new(true).open(&tmp) {
            Ok(f) => return Ok((f, tmp)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
}

impl<W: Write> Writer<W> {
    /// Writes an archive to any byte stream (no seeking needed).
    pub fn new(out: W, opts: WriterOptions) -> Result<Self> {
        Writer::start(Sink::Stream(out), "<stream>".into(), opts)
    }

    fn start(sink: Sink<W>, label: String, opts: WriterOptions) -> Result<Self> {
        let a = opts.alignment;
        if !a.is_power_of_two() || !(MIN_ALIGNMENT..=MAX_ALIGNMENT).contains(&a) {
            return Err(Error::InvalidArgument(format!(
                "alignment {a} is not a power of two in {MIN_ALIGNMENT}..={MAX_ALIGNMENT}"
            )));
        }
        if opts.chunk_bytes == 0 || opts.chunk_bytes as u64 > MAX_CHUNK_BYTES {
            return Err(Error::InvalidArgument(format!(
                "chunk_bytes {} is not in 1..={MAX_CHUNK_BYTES}",
                opts.chunk_bytes
            )));
        }
        check_level(opts.level)?;
        let mut w = Writer {
            sink: Some(sink),
            label,
            pos: 0,
            opts,
            tensors: Vec::new(),
            names: HashSet::new(),
            tree: Value::Null,
            metadata: Value::Null,
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
            Sink::File { out, .. } => out.write_all(bytes),
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
        self.tree = tree;
    }

    /// Sets the user metadata (any JSON value).
    pub fn set_metadata(&mut self, metadata: Value) {
        self.metadata = metadata;
    }

    /// Names of the tensors added so far.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// Adds a tensor with the archive's default options.
    pub fn add_tensor(&mut self, name: &str, dtype: DType, shape: &[u64], data: &[u8]) -> Result<&TensorInfo> {
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
        self.check_new_tensor(name, dtype, shape, data)?;
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
        let forced_filter = topts.filter.or(self.opts.filter.filter(|f| f.applies_to(dtype)));
        // The choice keeps its probe compression: the share estimate reuses it,
        // and so does the only chunk of a tensor no larger than the sample.
        let choice = match compression {
            Compression::None => None,
            Compression::Zstd => Some(codec::choose(dtype, data, level, forced_filter)),
            Compression::Auto { max_share, min_bytes } => {
                if data.len() < min_bytes.max(1) {
                    None
                } else {
                    let mut c = codec::choose(dtype, data, level, forced_filter);
                    (c.share() <= max_share).then_some(c)
                }
            }
        };
        let info = match choice {
            None => self.write_raw(name, dtype, shape, data, chunk_elems)?,
            Some(mut c) => {
                let whole = c.take_whole_chunk();
                self.write_chunked(name, dtype, shape, data, chunk_elems, c.filter, level, whole)?
            }
        };
        self.names.insert(info.name.clone());
        self.tensors.push(info);
        Ok(self.tensors.last().unwrap())
    }

    fn check_new_tensor(&self, name: &str, dtype: DType, shape: &[u64], data: &[u8]) -> Result<()> {
        if name.len() > MAX_NAME_BYTES {
            return Err(Error::InvalidArgument(format!(
                "tensor name of {} bytes is over the limit of {MAX_NAME_BYTES}",
                name.len()
            )));
        }
        if name.contains('\0') {
            return Err(Error::InvalidArgument(format!("tensor name {name:?} contains a NUL character")));
        }
        if self.names.contains(name) {
            return Err(Error::InvalidArgument(format!("tensor {name:?} was already added")));
        }
        if self.tensors.len() >= MAX_TENSORS {
            return Err(Error::InvalidArgument(format!("more than {MAX_TENSORS} tensors")));
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
        Ok(())
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
        elems.max(min_for_count).min(nelems).clamp(1, MAX_CHUNK_BYTES / dtype.size() as u64)
    }

    fn write_raw(&mut self, name: &str, dtype: DType, shape: &[u64], data: &[u8], chunk_elems: u64) -> Result<TensorInfo> {
        self.pad_to(self.opts.alignment as u64)?;
        let start = self.pos;
        let chunk_bytes = (chunk_elems as usize) * dtype.size();
        let crcs: Vec<u32> = if data.is_empty() {
            Vec::new()
        } else if data.len() <= chunk_bytes {
            // One chunk: no trip through the thread pool (it dominates for small tensors).
            vec![crc32c::crc32c(data)]
        } else {
            data.par_chunks(chunk_bytes).map(crc32c::crc32c).collect()
        };
        self.write(data)?;
        let chunks = crcs
            .iter()
            .enumerate()
            .map(|(i, &crc)| {
                let offset = start + (i * chunk_bytes) as u64;
                let len = chunk_bytes.min(data.len() - i * chunk_bytes) as u64;
                ChunkInfo { offset, stored_len: len, crc32c: crc, encoded: false }
            })
            .collect();
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
    /// the filter choice's probe (see [`codec::Choice::take_whole_chunk`]).
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
        let pieces: Vec<&[u8]> = if data.is_empty() { Vec::new() } else { data.chunks(chunk_bytes).collect() };
        let mut chunks = Vec::with_capacity(pieces.len());
        let encode = move |piece: &[u8], buf: Vec<u8>| Encoded::new(filter, dtype, level, piece, buf);
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
    fn encode_and_write<'d, F>(&mut self, pieces: &[&'d [u8]], encode: F, chunks: &mut Vec<ChunkInfo>) -> Result<()>
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
                let encoded: Vec<Encoded> = group.par_iter().zip(bufs).map(|(p, b)| encode(p, b)).collect();
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
                        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| encode(piece, buf)));
                        let _ = tx.send((k, r));
                    });
                    ready.push_back(None);
                    next += 1;
                }
                // The previous tensor's deferred chunks, while these compress.
                self.flush_pending()?;
                let (k, r) = rx.recv().expect("this thread holds a sender");
                received += 1;
                ready[k - written] = Some(r.unwrap_or_else(|panic| std::panic::resume_unwind(panic)));
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
        chunks.push(ChunkInfo { offset: self.pos, stored_len: buf.len() as u64, crc32c: e.crc, encoded: e.encoded });
        self.pos += buf.len() as u64;
        self.pending.push_back(buf);
    }

    /// Writes one chunk (`piece` itself if it stays plain) and records it.
    fn put_chunk(&mut self, chunks: &mut Vec<ChunkInfo>, piece: &[u8], e: Encoded) -> Result<()> {
        let stored = if e.encoded { &e.buf[..] } else { piece };
        let offset = self.pos;
        self.write(stored)?;
        chunks.push(ChunkInfo { offset, stored_len: stored.len() as u64, crc32c: e.crc, encoded: e.encoded });
        self.recycle(e.buf);
        Ok(())
    }

    fn take_buf(&mut self) -> Vec<u8> {
        self.bufs.pop().unwrap_or_default()
    }

    fn recycle(&mut self, buf: Vec<u8>) {
        // Keep a window's worth of buffers, but not those of unusually large chunks.
        if buf.capacity() <= MAX_KEPT_BUFFER && self.bufs.len() < rayon::current_num_threads() * 2 + 2 {
            self.bufs.push(buf);
        }
    }

    /// Writes the index and trailer; for a file writer, flushes, fsyncs and
    /// renames the temporary file over the destination.
    pub fn finish(mut self) -> Result<(Summary, Option<W>)> {
        let index = RawIndex {
            tensors: self.tensors.iter().map(RawTensor::from).collect(),
            tree: std::mem::take(&mut self.tree),
            metadata: std::mem::take(&mut self.metadata),
            writer: Some(self.opts.writer.clone()),
        };
        let bytes = serde_json::to_vec(&index).map_err(|e| Error::InvalidArgument(format!("index: {e}")))?;
        let depth = json_depth(&bytes);
        if depth > MAX_JSON_DEPTH {
            return Err(Error::InvalidArgument(format!(
                "tree or metadata nested {depth} levels deep in JSON, over the limit of {MAX_JSON_DEPTH}"
            )));
        }
        if bytes.len() as u64 > MAX_INDEX_BYTES {
            return Err(Error::InvalidArgument(format!(
                "index of {} bytes is over the limit of {MAX_INDEX_BYTES}",
                bytes.len()
            )));
        }
        let data_bytes = self.pos - SUPERBLOCK_LEN as u64;
        let trailer = Trailer { index_offset: self.pos, index_len: bytes.len() as u64, index_crc32c: crc32c::crc32c(&bytes) };
        self.write(&bytes)?;
        self.write(&trailer.encode())?;
        let summary = Summary { path: None, tensors: self.tensors.len(), file_bytes: self.pos, data_bytes };
        match self.sink.take().unwrap() {
            Sink::Stream(mut out) => {
                out.flush().map_err(|e| Error::io(&self.label, e))?;
                Ok((summary, Some(out)))
            }
            Sink::File { out, tmp, dest, sync, overwrite } => {
                let label = self.label.clone();
                let result = commit(out, &tmp, &dest, sync, overwrite);
                if result.is_err() {
                    let _ = fs::remove_file(&tmp);
                }
                result.map_err(|e| Error::io(&label, e))?;
                remove_stale_temps(&dest, std::time::SystemTime::now());
                Ok((Summary { path: Some(dest), ..summary }, None))
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

/// A temporary file of a save of the same destination that has not been modified for this
/// long is taken to be left by a killed process, and removed by the next successful save.
/// (If its writer were still alive after all, its rename would fail with an error; the
/// destination is never touched by the removal.)
pub const STALE_TEMP_AGE: std::time::Duration = std::time::Duration::from_secs(15 * 60);

/// Removes `.{name}.{pid}-{hex}-{n}.bpz-tmp` siblings of `dest` — exactly the names
/// [`create_temp`] gives saves of `dest` — last modified at least [`STALE_TEMP_AGE`] before
/// `now`. Best effort: errors are ignored.
fn remove_stale_temps(dest: &Path, now: std::time::SystemTime) {
    let (Some(dir), Some(base)) = (dest.parent(), dest.file_name()) else { return };
    let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
    let prefix = format!(".{}.", base.to_string_lossy());
    let Ok(entries) = fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(stamp) = name.to_str().and_then(|n| n.strip_prefix(&prefix)).and_then(|r| r.strip_suffix(".bpz-tmp"))
        else {
            continue;
        };
        if !is_temp_stamp(stamp) {
            continue;
        }
        let path = entry.path();
        let Ok(meta) = fs::symlink_metadata(&path) else { continue };
        let stale = meta.modified().ok().and_then(|m| now.duration_since(m).ok()).is_some_and(|age| age >= STALE_TEMP_AGE);
        if meta.file_type().is_file() && stale {
            let _ = fs::remove_file(&path);
        }
    }
}

/// `{pid}-{nanos:x}-{n}`, the middle of a temporary file's name.
fn is_temp_stamp(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    let digits = |p: &str, hex: bool| !p.is_empty() && p.bytes().all(|b| if hex { b.is_ascii_hexdigit() } else { b.is_ascii_digit() });
    parts.len() == 3 && digits(parts[0], false) && digits(parts[1], true) && digits(parts[2], false)
}

fn commit(out: BufWriter<File>, tmp: &Path, dest: &Path, sync: bool, overwrite: bool) -> io::Result<()> {
    let file = out.into_inner().map_err(|e| e.into_error())?;
    if sync {
        file.sync_all()?;
    }
    drop(file);
    if overwrite {
        replace(tmp, dest)?;
    } else {
        // A hard link fails if the destination exists: an atomic no-replace rename.
        fs::hard_link(tmp, dest)?;
        fs::remove_file(tmp)?;
    }
    if sync {
        if let Some(dir) = dest.parent() {
            let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
            // Persists the rename itself; not every platform can open a directory.
            if let Ok(d) = File::open(dir) {
                let _ = d.sync_all();
            }
        }
    }
    Ok(())
}

/// Puts `tmp` in place of `dest` in one atomic step.
///
/// On Linux, over an existing regular file, the two names are exchanged and the old file
/// is then unlinked under the temporary name. A plain rename over an existing file makes
/// ext4 (`auto_da_alloc`) allocate and start writing back the whole new file inside the
/// rename: ~0.2 s per 512 MiB, even for a save that asked not to sync.
fn replace(tmp: &Path, dest: &Path) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    if fs::symlink_metadata(dest).is_ok_and(|m| m.file_type().is_file()) {
        match exchange(tmp, dest) {
            Ok(()) => {
                if let Err(e) = fs::remove_file(tmp) {
                    // Something other than the file we saw took `dest`'s place in between
                    // (a directory cannot be unlinked): put both names back and fail.
                    if fs::symlink_metadata(tmp).is_ok_and(|m| m.is_dir()) {
                        exchange(tmp, dest)?;
                        return Err(e);
                    }
                    // The new file is in place; the old one stays under the temporary name,
                    // which a later save of this path removes (see `remove_stale_temps`).
                }
                return Ok(());
            }
            // No such file any more, or a filesystem without exchange: rename as usual.
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::EINVAL | libc::ENOSYS | libc::EPERM)) => {}
            Err(e) => return Err(e),
        }
    }
    fs::rename(tmp, dest)
}

/// `renameat2(RENAME_EXCHANGE)`: swaps two names atomically (Linux 3.15+).
#[cfg(target_os = "linux")]
fn exchange(a: &Path, b: &Path) -> io::Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| CString::new(p.as_os_str().as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput));
    let (a, b) = (c(a)?, c(b)?);
    // SAFETY: both paths are NUL-terminated strings that outlive the call; the syscall
    // only reads them.
    let rc = unsafe {
        libc::syscall(libc::SYS_renameat2, libc::AT_FDCWD, a.as_ptr(), libc::AT_FDCWD, b.as_ptr(), libc::RENAME_EXCHANGE)
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
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

impl<W: Write> Drop for Writer<W> {
    fn drop(&mut self) {
        if let Some(Sink::File { tmp, .. }) = self.sink.take() {
            let _ = fs::remove_file(tmp);
        }
    }
}

impl<W: Write> std::fmt::Debug for Writer<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer").field("path", &self.label).field("tensors", &self.tensors.len()).field("bytes", &self.pos).finish()
    }
}
