//! Streaming writer: superblock first, tensors one by one, index and trailer at
//! the end. Memory stays bounded by a window of chunks in flight.

use std::collections::VecDeque;
use std::hash::BuildHasher;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rayon::prelude::*;
use serde_json::Value;

use crate::append::AppendFile;
use crate::binindex::{self, content_hash, VersionRecord};
use crate::binindex_write::{self, JsonSections, VersionHead};
use crate::codec;
use crate::error::{Error, Result};
use crate::filter_choice;
use crate::format::*;
use crate::index::{self, IndexEmitter, JsonPart};
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

/// Which revision of the format a writer produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FormatVersion {
    /// Format 1.0: a JSON index, one version, no content hashes: exactly the bytes
    /// writers made before 1.1 (spec sections 2–15), for readers that know only 1.0.
    V1_0,
    /// Format 1.1: a binary index, a content hash per chunk, appendable versions
    /// (spec section 16).
    #[default]
    V1_1,
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
    pub format: FormatVersion,
    /// When the version is said to be written (nanoseconds since 1970 UTC, format 1.1);
    /// `None`: now. Set it for reproducible files.
    pub time_ns: Option<u64>,
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
            format: FormatVersion::default(),
            time_ns: None,
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

/// Tensors above this size are not decided ahead by [`Writer::prepare_many`]: their probes
/// already run in parallel and their chunks are encoded on the pool.
const PREPARE_MAX_BYTES: usize = 4 << 20;

/// A tensor's compression decided ahead ([`Writer::prepare_many`]); the default decides
/// nothing (the writer then decides as it adds the tensor).
#[derive(Default)]
pub struct Prepared<'a> {
    choice: Option<Option<filter_choice::Choice<'a>>>,
}

impl std::fmt::Debug for Prepared<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match &self.choice {
            None => "undecided".to_owned(),
            Some(None) => "raw".to_owned(),
            Some(Some(c)) => format!("{:?}", c.filter),
        };
        f.debug_tuple("Prepared").field(&state).finish()
    }
}

/// [`Writer::prepare_many`] for one tensor, given the writer's (appending, level,
/// compression, filter).
fn prepare<'a>(
    (appending, level, compression, filter): (bool, i32, Compression, Option<Filter>),
    dtype: DType,
    data: &'a [u8],
    topts: &TensorOptions,
) -> Prepared<'a> {
    let level = topts.level.unwrap_or(level);
    let filter_ok = topts.filter.map_or(true, |f| f.applies_to(dtype));
    if appending || check_level(level).is_err() || !filter_ok || data.len() > PREPARE_MAX_BYTES {
        return Prepared::default();
    }
    let compression = topts.compression.unwrap_or(compression);
    let forced_filter = topts.filter.or(filter.filter(|f| f.applies_to(dtype)));
    Prepared {
        choice: Some(decide(compression, dtype, data, level, forced_filter)),
    }
}

/// Whether (and how) a tensor is compressed: `None` stores it raw.
fn decide(
    compression: Compression,
    dtype: DType,
    data: &[u8],
    level: i32,
    forced_filter: Option<Filter>,
) -> Option<filter_choice::Choice<'_>> {
    match compression {
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
    }
}

/// What [`Writer::finish`] wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub path: Option<PathBuf>,
    pub tensors: usize,
    pub file_bytes: u64,
    /// Bytes of tensor data this version wrote (padding included).
    pub data_bytes: u64,
    /// The number of the version written (1 for a new file).
    pub version: u64,
    /// Bytes this version added to the file: its data, index and trailer (spec §16.4;
    /// for a new file, everything after the superblock).
    pub bytes_added: u64,
    /// Chunks this version stored.
    pub chunks_written: u64,
    /// Chunks this version references instead of storing them again (they are equal to
    /// chunks of the previous version, spec §16.6).
    pub chunks_shared: u64,
    /// The file's last 32 bytes (its trailer, which holds the index's CRC, which holds
    /// every chunk's): what a caller records to recognise this exact file later without
    /// reading it back (sharded checkpoints stamp their data files with it).
    pub trailer: [u8; crate::format::TRAILER_LEN],
}

/// Where the bytes go: a temporary sibling renamed over the destination on
/// success (removed if the writer is dropped unfinished), or any `Write`.
pub(crate) enum Sink<W: Write> {
    File(TempFile),
    Stream(W),
    /// The end of an existing archive, for a new version (see [`crate::append`]).
    Append(AppendFile),
    /// A multipart upload to object storage (see [`crate::remote_write`]).
    #[cfg(feature = "remote")]
    Upload(crate::remote_write::Upload),
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
    /// The file's first 64 bytes (copied into every 1.1 index head).
    superblock: [u8; SUPERBLOCK_LEN],
    plan: VersionPlan,
    /// Chunks of the previous version that equal chunks need not be stored again.
    dedup: Option<Arc<Dedup>>,
    chunks_written: u64,
    chunks_shared: u64,
}

/// Where the version being written goes in its file's history.
#[derive(Debug, Clone)]
pub(crate) struct VersionPlan {
    pub number: u64,
    /// Where its bytes start: 64 in a new file, else the end of the previous version.
    pub data_start: u64,
    /// The earlier versions in the file, oldest first.
    pub previous: Vec<VersionRecord>,
}

impl VersionPlan {
    fn first() -> VersionPlan {
        VersionPlan {
            number: 1,
            data_start: SUPERBLOCK_LEN as u64,
            previous: Vec::new(),
        }
    }
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

    pub(crate) fn start(sink: Sink<W>, label: String, opts: WriterOptions) -> Result<Self> {
        opts.check()?;
        let superblock = match opts.format {
            FormatVersion::V1_0 => Superblock::new(opts.alignment),
            FormatVersion::V1_1 => Superblock {
                version: binindex::FORMAT_VERSION_1_1,
                required_features: binindex::REQUIRED_BINARY_INDEX,
                optional_features: 0,
                alignment: opts.alignment,
            },
        }
        .encode();
        let mut w = Writer::resume(sink, label, opts, 0, superblock, VersionPlan::first(), None);
        w.write(&superblock)?;
        Ok(w)
    }

    /// A writer of a version that starts at `pos` of a file that begins with `superblock`.
    pub(crate) fn resume(
        sink: Sink<W>,
        label: String,
        opts: WriterOptions,
        pos: u64,
        superblock: [u8; SUPERBLOCK_LEN],
        plan: VersionPlan,
        dedup: Option<Arc<Dedup>>,
    ) -> Self {
        Writer {
            sink: Some(sink),
            label,
            pos,
            opts,
            tensors: Vec::new(),
            names: NameTable::default(),
            tree: JsonPart::default(),
            metadata: JsonPart::default(),
            bufs: Vec::new(),
            pending: VecDeque::new(),
            superblock,
            plan,
            dedup,
            chunks_written: 0,
            chunks_shared: 0,
        }
    }

    /// Whether chunks get a content hash (format 1.1).
    fn hashing(&self) -> bool {
        self.opts.format == FormatVersion::V1_1
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
            Sink::File(file) => file.write_all(bytes),
            Sink::Stream(out) => out.write_all(bytes),
            Sink::Append(file) => file.write_all(bytes),
            #[cfg(feature = "remote")]
            Sink::Upload(upload) => upload.write_all(bytes),
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
        self.add_tensor_prepared(name, dtype, shape, data, topts, Prepared::default())
    }

    /// Decides, for each `(dtype, data, options)`, the compression
    /// [`add_tensor_with`](Self::add_tensor_with) would choose, in parallel: the choice
    /// compresses a sample of each tensor twice (all of a small tensor), which done
    /// one tensor at a time leaves the other cores idle while many small tensors are
    /// added. Pass each result to [`add_tensor_prepared`](Self::add_tensor_prepared) in
    /// the same order: the file is byte for byte what `add_tensor_with` writes.
    /// Nothing is decided ahead when appending (an unchanged tensor is not compressed
    /// at all) nor for a tensor large enough to be split across the pool anyway.
    pub fn prepare_many<'a>(
        &self,
        items: &[(DType, &'a [u8], &TensorOptions)],
    ) -> Vec<Prepared<'a>> {
        // What the decision depends on, copied out: the writer itself stays on this thread.
        let defaults = (
            self.dedup.is_some(),
            self.opts.level,
            self.opts.compression,
            self.opts.filter,
        );
        let decide = |&(dtype, data, topts): &(DType, &'a [u8], &TensorOptions)| {
            prepare(defaults, dtype, data, topts)
        };
        if items.len() > 1 && rayon::current_num_threads() > 1 {
            items.par_iter().map(decide).collect()
        } else {
            items.iter().map(decide).collect()
        }
    }

    /// [`add_tensor_with`](Self::add_tensor_with) with the compression decided ahead by
    /// [`prepare_many`](Self::prepare_many) for the same `dtype`, `data` and `topts`.
    pub fn add_tensor_prepared(
        &mut self,
        name: &str,
        dtype: DType,
        shape: &[u64],
        data: &[u8],
        topts: &TensorOptions,
        prepared: Prepared<'_>,
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
        // Appending: the chunks' hashes first, so that what the previous version
        // already holds is referenced without compressing it again.
        let hashes = match self.dedup.clone() {
            Some(dedup) => {
                let chunk_bytes = chunk_elems as usize * dtype.size();
                let hashes = chunk_hashes(data, chunk_bytes);
                let same = dedup.same_tensor(name, dtype, shape, chunk_elems, &hashes);
                if let Some(old) = same.filter(|old| match (compression, old.storage) {
                    (Compression::None, Storage::Chunked) | (Compression::Zstd, Storage::Raw) => {
                        false
                    }
                    _ => forced_filter.map_or(true, |f| old.is_raw() || f == old.filter),
                }) {
                    let info = old.clone();
                    self.chunks_shared += info.chunks.len() as u64;
                    return Ok(self.push_tensor(vacancy, info));
                }
                Some(hashes)
            }
            None => None,
        };
        // The choice keeps its probe compression: the share estimate reuses it,
        // and so does the only chunk of a tensor no larger than the sample.
        let choice = match prepared.choice {
            Some(choice) if std::ptr::eq(choice.as_ref().map_or(data, |c| c.data()), data) => {
                choice
            }
            _ => decide(compression, dtype, data, level, forced_filter),
        };
        let info = match choice {
            None => self.write_raw(name, dtype, shape, data, chunk_elems, hashes.as_deref())?,
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
                    hashes.as_deref(),
                )?
            }
        };
        Ok(self.push_tensor(vacancy, info))
    }

    fn push_tensor(&mut self, vacancy: Vacancy, info: TensorInfo) -> &TensorInfo {
        self.names
            .insert(vacancy, &info.name, self.tensors.len(), &self.tensors);
        self.tensors.push(info);
        self.tensors.last().unwrap()
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
        hashes: Option<&[[u8; 16]]>,
    ) -> Result<TensorInfo> {
        let chunk_bytes = (chunk_elems as usize) * dtype.size();
        let info = |chunks| TensorInfo {
            name: name.into(),
            dtype,
            shape: shape.to_vec(),
            storage: Storage::Raw,
            filter: Filter::None,
            chunk_elems,
            chunks,
        };
        // A raw tensor is shared only as a whole, so that it stays one mappable run.
        if let (Some(dedup), Some(hashes)) = (&self.dedup, hashes) {
            if let Some(run) = dedup.raw_run(hashes, data.len() as u64, chunk_bytes as u64) {
                self.chunks_shared += run.len() as u64;
                return Ok(info(run.to_vec()));
            }
        }
        self.pad_to(self.opts.alignment as u64)?;
        let start = self.pos;
        let hashing = self.hashing();
        let chunk = |i: usize, (crc, hash): (u32, Option<[u8; 16]>)| {
            let offset = start + (i * chunk_bytes) as u64;
            let len = chunk_bytes.min(data.len() - i * chunk_bytes) as u64;
            ChunkInfo {
                offset,
                stored_len: len,
                crc32c: crc,
                encoded: false,
                hash: hashes.map_or(hash, |h| Some(h[i])),
            }
        };
        let sums = |piece: &[u8]| {
            let hash = (hashing && hashes.is_none()).then(|| content_hash(piece));
            (crc32c::crc32c(piece), hash)
        };
        let chunks: Vec<ChunkInfo> = if data.is_empty() {
            Vec::new()
        } else if data.len() <= chunk_bytes {
            // One chunk: no trip through the thread pool (it dominates for small tensors).
            vec![chunk(0, sums(data))]
        } else {
            let sums: Vec<_> = data.par_chunks(chunk_bytes).map(sums).collect();
            sums.into_iter()
                .enumerate()
                .map(|(i, s)| chunk(i, s))
                .collect()
        };
        self.chunks_written += chunks.len() as u64;
        self.write(data)?;
        Ok(info(chunks))
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
        hashes: Option<&[[u8; 16]]>,
    ) -> Result<TensorInfo> {
        let chunk_bytes = (chunk_elems as usize) * dtype.size();
        let pieces: Vec<&[u8]> = if data.is_empty() {
            Vec::new()
        } else {
            data.chunks(chunk_bytes).collect()
        };
        let mut chunks = Vec::with_capacity(pieces.len());
        let hashing = self.hashing();
        let dedup = self.dedup.clone();
        let dedup = dedup.as_deref();
        // The hash comes first, in the same parallel step: a chunk the previous
        // version holds is referenced, never compressed.
        let hash_and_share = move |k: usize, piece: &[u8]| {
            let hash = match hashes {
                Some(h) => Some(h[k]),
                None => hashing.then(|| content_hash(piece)),
            };
            let shared = dedup
                .zip(hash)
                .and_then(|(d, h)| d.chunk(&h, piece.len() as u64, filter, dtype.size()));
            (hash, shared)
        };
        let encode = move |k: usize, piece: &[u8], buf: Vec<u8>| match hash_and_share(k, piece) {
            (_, Some(shared)) => Encoded::shared(shared, buf),
            (hash, None) => Encoded::new(filter, dtype, level, piece, buf, hash),
        };
        match (pieces.as_slice(), whole) {
            ([piece], Some((buf, encoded))) => {
                let e = match hash_and_share(0, piece) {
                    (_, Some(shared)) => Encoded::shared(shared, buf),
                    (hash, None) => Encoded::from_parts(piece, buf, encoded, hash),
                };
                self.put_chunk(&mut chunks, piece, e)?;
            }
            // No trip through the thread pool for a single chunk.
            ([] | [_], _) => {
                for piece in &pieces {
                    let e = encode(0, piece, self.take_buf());
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
        F: Fn(usize, &'d [u8], Vec<u8>) -> Encoded + Copy + Send + Sync,
    {
        // Enough chunks in flight to keep every worker busy while one waits
        // to be written, and to absorb uneven chunk times.
        let window = rayon::current_num_threads() * 2 + 2;
        if rayon::current_thread_index().is_some() {
            // Called from inside the pool: blocking this worker on a channel
            // could starve the jobs it waits for, so encode a window at a time.
            for (g, group) in pieces.chunks(window).enumerate() {
                let bufs: Vec<Vec<u8>> = group.iter().map(|_| self.take_buf()).collect();
                let encoded: Vec<Encoded> = group
                    .par_iter()
                    .zip(bufs)
                    .enumerate()
                    .map(|(i, (p, b))| encode(g * window + i, p, b))
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
                            encode(k, piece, buf)
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
        if let Some(shared) = e.shared {
            chunks.push(shared);
            self.chunks_shared += 1;
            self.recycle(e.buf);
            return;
        }
        self.chunks_written += 1;
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
            hash: e.hash,
        });
        self.pos += buf.len() as u64;
        self.pending.push_back(buf);
    }

    /// Writes one chunk (`piece` itself if it stays plain) and records it.
    fn put_chunk(&mut self, chunks: &mut Vec<ChunkInfo>, piece: &[u8], e: Encoded) -> Result<()> {
        if let Some(shared) = e.shared {
            chunks.push(shared);
            self.chunks_shared += 1;
            self.recycle(e.buf);
            return Ok(());
        }
        self.chunks_written += 1;
        let stored = if e.encoded { &e.buf[..] } else { piece };
        let offset = self.pos;
        self.write(stored)?;
        chunks.push(ChunkInfo {
            offset,
            stored_len: stored.len() as u64,
            crc32c: e.crc,
            encoded: e.encoded,
            hash: e.hash,
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
        let (summary, ..) = self.seal()?;
        let path = match self.sink.take().unwrap() {
            Sink::Stream(mut out) => {
                out.flush().map_err(|e| Error::io(&self.label, e))?;
                return Ok((summary, Some(out)));
            }
            Sink::File(file) => file.commit()?,
            Sink::Append(file) => file.commit()?,
            #[cfg(feature = "remote")]
            Sink::Upload(upload) => {
                let label = upload.label().to_owned();
                upload.complete()?;
                PathBuf::from(label)
            }
        };
        Ok((
            Summary {
                path: Some(path),
                ..summary
            },
            None,
        ))
    }

    /// Ends the version: writes its index and trailer (the sink is not committed). The
    /// tensors, tree and metadata are taken out of the writer.
    pub(crate) fn seal(&mut self) -> Result<(Summary, VersionRecord, Vec<TensorInfo>)> {
        // Checked before serializing, which recurses as deep as the value.
        for (what, part) in [("tree", &self.tree), ("metadata", &self.metadata)] {
            if let JsonPart::Value(v) = part {
                check_nesting(&self.label, what, json::value_depth(v))?;
            }
        }
        let tree = match std::mem::take(&mut self.tree) {
            JsonPart::Value(v) => serde_json::to_string(&v).expect("a JSON value serializes"),
            JsonPart::Text(t) => t,
        };
        self.check_tree_refs(tree.as_bytes())?;
        let tree = JsonPart::Text(tree);
        let index_offset = self.pos;
        let (tensors, metadata) = (
            std::mem::take(&mut self.tensors),
            std::mem::take(&mut self.metadata),
        );
        self.names = NameTable::default();
        let (index_len, index_crc) = match self.opts.format {
            FormatVersion::V1_0 => self.emit_json_index(&tensors, &tree, &metadata)?,
            FormatVersion::V1_1 => self.emit_binary_index(&tensors, &tree, &metadata)?,
        };
        self.before_trailer()?;
        let trailer = Trailer {
            index_offset,
            index_len,
            index_crc32c: index_crc,
        };
        let trailer_bytes = trailer.encode();
        self.write(&trailer_bytes)?;
        let data_start = self.plan.data_start;
        let record = VersionRecord {
            version: self.plan.number,
            time_ns: self.plan_time(),
            data_start,
            index_offset,
            index_length: index_len,
            index_crc,
            reserved: 0,
        };
        let summary = Summary {
            path: None,
            tensors: tensors.len(),
            file_bytes: self.pos,
            data_bytes: index_offset - data_start,
            version: self.plan.number,
            bytes_added: self.pos - data_start,
            chunks_written: self.chunks_written,
            chunks_shared: self.chunks_shared,
            trailer: trailer_bytes,
        };
        Ok((summary, record, tensors))
    }

    /// Refuses a tree the reader would refuse (spec section 8): its `tensor` nodes must be
    /// strings naming tensors of this version.
    fn check_tree_refs(&self, tree: &[u8]) -> Result<()> {
        let refs = index::tree_refs(&self.label, tree).map_err(|e| match e {
            Error::InvalidIndex { detail, .. } => {
                Error::InvalidArgument(format!("the tree cannot be stored: {detail}"))
            }
            other => other,
        })?;
        match refs
            .iter()
            .find(|name| self.names.vacancy(name, &self.tensors).is_some())
        {
            Some(missing) => Err(Error::InvalidArgument(format!(
                "the tree refers to tensor {missing:?}, which is not among the tensors added"
            ))),
            None => Ok(()),
        }
    }

    /// What [`seal`](Self::seal) needs done between the index and the trailer: an
    /// append makes its chunks and index durable before the trailer commits them (§16.6).
    fn before_trailer(&mut self) -> Result<()> {
        self.flush_pending()?;
        if let Some(Sink::Append(file)) = &mut self.sink {
            file.make_durable()?;
        }
        Ok(())
    }

    /// The version's time, fixed at the first call.
    fn plan_time(&mut self) -> u64 {
        *self.opts.time_ns.get_or_insert_with(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos().min(u64::MAX as u128) as u64)
        })
    }

    /// The 1.0 JSON index; returns its length and crc.
    fn emit_json_index(
        &mut self,
        tensors: &[TensorInfo],
        tree: &JsonPart,
        metadata: &JsonPart,
    ) -> Result<(u64, u32)> {
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
        .emit(tensors, tree, metadata, Some(&writer_info))?;
        if index_len > MAX_INDEX_BYTES {
            return Err(Error::InvalidArgument(format!(
                "index of {index_len} bytes is over the limit of {MAX_INDEX_BYTES}"
            )));
        }
        Ok((index_len, index_crc))
    }

    /// The 1.1 binary index (spec §16.2); returns its length and head crc.
    fn emit_binary_index(
        &mut self,
        tensors: &[TensorInfo],
        tree: &JsonPart,
        metadata: &JsonPart,
    ) -> Result<(u64, u32)> {
        let (tree, metadata) = (json_bytes(tree), json_bytes(metadata));
        let writer = serde_json::to_vec(&self.opts.writer).expect("writer info serializes");
        let previous = std::mem::take(&mut self.plan.previous);
        let head = VersionHead {
            number: self.plan.number,
            time_ns: self.plan_time(),
            data_start: self.plan.data_start,
            superblock: self.superblock,
            previous: &previous,
        };
        let json = JsonSections {
            tree: &tree,
            metadata: &metadata,
            writer: &writer,
        };
        let label = self.label.clone();
        let index_offset = self.pos;
        let emitted = binindex_write::emit(&label, tensors, &head, &json, index_offset, |piece| {
            self.write(piece)
        });
        self.plan.previous = previous;
        let emitted = emitted?;
        Ok((emitted.length, emitted.head_crc))
    }

    /// Puts a file whose last version [`seal`](Self::seal) wrote in place.
    pub(crate) fn commit_sealed(mut self) -> Result<PathBuf> {
        self.flush_pending()?;
        match self.sink.take().expect("writer used after finish") {
            Sink::File(file) => file.commit(),
            Sink::Append(file) => file.commit(),
            #[cfg(feature = "remote")]
            Sink::Upload(upload) => {
                let label = upload.label().to_owned();
                upload.complete().map(|_| PathBuf::from(label))
            }
            Sink::Stream(_) => unreachable!("only files are committed"),
        }
    }

    /// The number of the version being written.
    pub(crate) fn set_version_number(&mut self, number: u64) {
        self.plan.number = number;
    }

    /// Starts the next version in the same file, after [`seal`](Self::seal) wrote
    /// `sealed` (compaction writes several versions into one new file).
    pub(crate) fn next_version(
        &mut self,
        sealed: VersionRecord,
        number: u64,
        time_ns: Option<u64>,
        dedup: Option<Arc<Dedup>>,
    ) {
        self.plan.previous.push(sealed);
        self.plan.number = number;
        self.plan.data_start = self.pos;
        self.opts.time_ns = time_ns;
        self.dedup = dedup;
        self.chunks_written = 0;
        self.chunks_shared = 0;
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
    /// Content hash of the decoded bytes (format 1.1).
    hash: Option<[u8; 16]>,
    /// A chunk of the previous version with the same content: referenced, not written.
    shared: Option<ChunkInfo>,
}

impl Encoded {
    fn new(
        filter: Filter,
        dtype: DType,
        level: i32,
        piece: &[u8],
        mut buf: Vec<u8>,
        hash: Option<[u8; 16]>,
    ) -> Encoded {
        let encoded = codec::encode_chunk_into(filter, dtype, level, piece, &mut buf);
        Encoded::from_parts(piece, buf, encoded, hash)
    }

    fn from_parts(piece: &[u8], buf: Vec<u8>, encoded: bool, hash: Option<[u8; 16]>) -> Encoded {
        let crc = crc32c::crc32c(if encoded { &buf } else { piece });
        Encoded {
            buf,
            encoded,
            crc,
            hash,
            shared: None,
        }
    }

    fn shared(chunk: ChunkInfo, buf: Vec<u8>) -> Encoded {
        Encoded {
            buf,
            encoded: chunk.encoded,
            crc: chunk.crc32c,
            hash: chunk.hash,
            shared: Some(chunk),
        }
    }
}

/// The content hash of each chunk of `chunk_bytes` of `data`, on the thread pool.
fn chunk_hashes(data: &[u8], chunk_bytes: usize) -> Vec<[u8; 16]> {
    if data.len() <= chunk_bytes {
        return if data.is_empty() {
            Vec::new()
        } else {
            vec![content_hash(data)]
        };
    }
    data.par_chunks(chunk_bytes).map(content_hash).collect()
}

/// The previous version's chunks, for an append to reference instead of storing equal
/// ones again (spec §16.6): a chunk is shared when its hash, decoded length, filter and
/// dtype size are equal (the record keeps its `encoded` flag); a raw tensor only as a
/// whole run, so that it stays contiguous and mappable.
#[derive(Debug, Default)]
pub(crate) struct Dedup {
    chunks: foldhash::HashMap<ChunkKey, ChunkInfo>,
    /// Raw tensors by (first chunk's hash, bytes, chunk bytes) → their chunks.
    raw_runs: foldhash::HashMap<([u8; 16], u64, u64), Vec<ChunkInfo>>,
    by_name: foldhash::HashMap<String, TensorInfo>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct ChunkKey {
    hash: [u8; 16],
    decoded_len: u64,
    filter: Filter,
    dtype_size: usize,
}

impl Dedup {
    /// Indexes a version's tensors (those without hashes, from 1.0 files, are skipped).
    pub(crate) fn of(tensors: Vec<TensorInfo>) -> Dedup {
        let mut d = Dedup::default();
        for t in tensors {
            if t.chunks.iter().any(|c| c.hash.is_none()) {
                continue;
            }
            for (i, c) in t.chunks.iter().enumerate() {
                let key = ChunkKey {
                    hash: c.hash.expect("checked above"),
                    decoded_len: t.chunk_decoded_len(i),
                    filter: t.filter,
                    dtype_size: t.dtype.size(),
                };
                d.chunks.entry(key).or_insert(*c);
            }
            if let (true, Some(first)) = (t.is_raw(), t.chunks.first()) {
                let chunk_bytes = t.chunk_elems * t.dtype.size() as u64;
                let key = (first.hash.unwrap(), t.nbytes(), chunk_bytes);
                d.raw_runs.entry(key).or_insert_with(|| t.chunks.clone());
            }
            d.by_name.insert(t.name.clone(), t);
        }
        d
    }

    fn chunk(
        &self,
        hash: &[u8; 16],
        decoded_len: u64,
        filter: Filter,
        dtype_size: usize,
    ) -> Option<ChunkInfo> {
        let key = ChunkKey {
            hash: *hash,
            decoded_len,
            filter,
            dtype_size,
        };
        self.chunks.get(&key).copied()
    }

    /// A raw run of the same bytes, chunked alike, whose chunks have these hashes.
    fn raw_run(&self, hashes: &[[u8; 16]], nbytes: u64, chunk_bytes: u64) -> Option<&[ChunkInfo]> {
        let run = self
            .raw_runs
            .get(&(*hashes.first()?, nbytes, chunk_bytes))?;
        let same = run.len() == hashes.len()
            && run
                .iter()
                .zip(hashes)
                .all(|(c, h)| c.hash.as_ref() == Some(h));
        same.then_some(run.as_slice())
    }

    /// The previous version's tensor of this name, if it holds exactly these chunks.
    fn same_tensor(
        &self,
        name: &str,
        dtype: DType,
        shape: &[u64],
        chunk_elems: u64,
        hashes: &[[u8; 16]],
    ) -> Option<&TensorInfo> {
        let t = self.by_name.get(name)?;
        let same = t.dtype == dtype
            && t.shape == shape
            && t.chunk_elems == chunk_elems
            && t.chunks.len() == hashes.len()
            && t.chunks
                .iter()
                .zip(hashes)
                .all(|(c, h)| c.hash.as_ref() == Some(h));
        same.then_some(t)
    }
}

/// The text of a JSON part.
fn json_bytes(part: &JsonPart) -> std::borrow::Cow<'_, [u8]> {
    match part {
        JsonPart::Value(v) => serde_json::to_vec(v)
            .expect("a JSON value serializes")
            .into(),
        JsonPart::Text(t) => t.as_bytes().into(),
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
