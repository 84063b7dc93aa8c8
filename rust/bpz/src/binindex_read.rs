//! Reading a format 1.1 archive (spec/FORMAT.md §16): the versions of a file, its latest
//! committed version (recovering from an unfinished append, §16.7), and a lazy binary
//! index. Opening reads the trailer, the index head and the `versions` section only; one
//! tensor is found by binary search over the sorted records, which touches O(log n)
//! small blocks of the index; listing every tensor reads and checks the whole index once.
//!
//! Every index byte is read with positioned reads of the [`Source`] (through a small block
//! cache), never through a memory map: a file cut short under an open archive gives
//! [`Error::Truncated`], never SIGBUS.

use std::borrow::Cow;
use std::ops::Range;
use std::sync::{Arc, Mutex, OnceLock};

use crate::alloc::try_zeroed_vec;
use crate::binindex::*;
use crate::error::{Error, Result};
use crate::format::*;
use crate::index::{
    check_json_section, check_tensor, check_tree_section, check_writer_section, TensorParts,
};
use crate::read::Source;

/// One version of an archive (spec §16.4). A 1.0 file has one: number 1, time 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VersionInfo {
    /// 1, 2, … in the order written (compaction may leave gaps).
    pub number: u64,
    /// When it was written: nanoseconds since 1970-01-01 UTC; 0 if unknown.
    pub time_ns: u64,
    /// Where the bytes this version added begin.
    pub data_start: u64,
    pub index_offset: u64,
    pub index_length: u64,
    /// The crc32c of its index head (1.1) or of its whole JSON index (1.0).
    pub index_crc: u32,
    /// The bytes this version added to the file, `end() - data_start`: its new chunks and
    /// their padding, its index and its trailer (spec §16.4).
    pub bytes_added: u64,
}

impl VersionInfo {
    /// The end of this version's trailer: the file's length when it was the latest.
    pub fn end(&self) -> u64 {
        self.index_offset + self.index_length + TRAILER_LEN as u64
    }

    fn from_record(r: &VersionRecord) -> VersionInfo {
        VersionInfo {
            number: r.version,
            time_ns: r.time_ns,
            data_start: r.data_start,
            index_offset: r.index_offset,
            index_length: r.index_length,
            index_crc: r.index_crc,
            // The chain was checked on open, so the record is consistent.
            bytes_added: r.bytes_added().unwrap_or(0),
        }
    }
}

/// What opening skipped of a file that ends in an unfinished append (spec §16.7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recovery {
    /// Bytes after the last committed version, ignored.
    pub ignored_bytes: u64,
    /// Where the last committed version ends (a valid trailer ends here).
    pub committed_end: u64,
}

/// Which version of an archive to open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum VersionSelector {
    /// The latest committed version.
    #[default]
    Latest,
    /// The version of this number.
    Number(u64),
    /// Counting back from the latest: -1 is the latest, -2 the one before, …
    FromLatest(i64),
}

impl VersionSelector {
    /// The position in `versions` (oldest first) of the version selected, or
    /// [`Error::InvalidArgument`] naming the versions present.
    pub(crate) fn pick(self, path: &str, versions: &[VersionInfo]) -> Result<usize> {
        let found = match self {
            VersionSelector::Latest => versions.len().checked_sub(1),
            VersionSelector::Number(n) => versions.iter().position(|v| v.number == n),
            VersionSelector::FromLatest(k) => usize::try_from(k.unsigned_abs())
                .ok()
                .filter(|_| k < 0)
                .and_then(|back| versions.len().checked_sub(back)),
        };
        found.ok_or_else(|| {
            let present: Vec<String> = versions.iter().map(|v| v.number.to_string()).collect();
            let asked = match self {
                VersionSelector::Latest => "the latest version".to_string(),
                VersionSelector::Number(n) => format!("version {n}"),
                VersionSelector::FromLatest(k) if k >= 0 => format!(
                    "version {k} from the latest (counts from the latest are negative: -1 is the latest)"
                ),
                VersionSelector::FromLatest(k) => format!("version {k} from the latest"),
            };
            Error::InvalidArgument(format!(
                "{path}: no {asked}: the archive holds version{} {}",
                if present.len() == 1 { "" } else { "s" },
                present.join(", ")
            ))
        })
    }
}

/// Bytes read from the end of a file on open (the trailer and, for most archives, the
/// whole index).
pub(crate) const TAIL_READ_BYTES: u64 = 64 << 10;
/// At most this much of what a source holds at the end is read on open (the tail is kept
/// with the index: a larger index is read where it lies, from the source).
pub(crate) const TAIL_HELD_MAX: u64 = 4 << 20;

/// Bytes [`Tail::read`] reads from the end of a `len`-byte source holding `held` of them.
pub(crate) fn tail_read_len(len: u64, held: u64) -> u64 {
    len.min(TAIL_READ_BYTES.max(held.min(TAIL_HELD_MAX)))
}

/// The last bytes of the file, read once on open and reused for what they cover.
pub(crate) struct Tail {
    pub start: u64,
    pub bytes: Vec<u8>,
}

impl Tail {
    pub(crate) fn read(source: &dyn Source, path: &str) -> Result<Tail> {
        let len = source.len();
        let n = tail_read_len(len, source.held_tail());
        let mut bytes = vec![0u8; n as usize];
        source
            .read_exact_at(len - n, &mut bytes)
            .map_err(|e| Error::io(path, e))?;
        Ok(Tail {
            start: len - n,
            bytes,
        })
    }

    /// The bytes `at..at + len` of the file, if the tail holds them.
    pub(crate) fn get(&self, at: u64, len: u64) -> Option<&[u8]> {
        let from = at.checked_sub(self.start)?;
        let to = from.checked_add(len)?;
        if to > self.bytes.len() as u64 {
            return None;
        }
        Some(&self.bytes[from as usize..to as usize])
    }
}

/// Whether `b`, the 32 bytes that end at `end`, are a committed trailer: end marker,
/// checksum, and an index that ends where it starts. (What is not: the tail of an
/// unfinished append.)
fn is_committed_trailer(b: &[u8; TRAILER_LEN], end: u64) -> bool {
    if b[24..32] != END_MAGIC {
        return false;
    }
    if crc32c::crc32c(&b[..20]) != u32::from_le_bytes(b[20..24].try_into().unwrap()) {
        return false;
    }
    let offset = u64::from_le_bytes(b[0..8].try_into().unwrap());
    let len = u64::from_le_bytes(b[8..16].try_into().unwrap());
    offset
        .checked_add(len)
        .and_then(|v| v.checked_add(TRAILER_LEN as u64))
        == Some(end)
}

/// What an open needs to know of the file.
pub(crate) struct Ctx<'a> {
    pub source: &'a Arc<dyn Source>,
    pub path: &'a str,
    pub alignment: u32,
    /// Bytes 0–63 of the file, when they were read (a remote open may not read them: the
    /// index heads' copies are then compared with each other and on verification).
    pub superblock: Option<[u8; SUPERBLOCK_LEN]>,
    pub tail: &'a Arc<Tail>,
}

impl Ctx<'_> {
    /// Bytes `at..at + len` of the file: from memory or the tail if they hold them, else read.
    fn bytes(&self, at: u64, len: u64, what: &str) -> Result<Cow<'_, [u8]>> {
        if let Some(b) = self.tail.get(at, len) {
            return Ok(Cow::Borrowed(b));
        }
        if let Some(memory) = self.source.as_slice() {
            let end = at
                .checked_add(len)
                .filter(|&e| e <= memory.len() as u64)
                .ok_or_else(|| Error::Truncated {
                    path: self.path.into(),
                    detail: format!("{what} at {at}..+{len} lies past the end of the file"),
                })?;
            return Ok(Cow::Borrowed(&memory[at as usize..end as usize]));
        }
        let mut buf = usize::try_from(len)
            .ok()
            .and_then(try_zeroed_vec)
            .ok_or_else(|| Error::out_of_memory(self.path, len, format!("for {what}")))?;
        self.source
            .read_exact_at(at, &mut buf)
            .map_err(|e| Error::io(self.path, e))?;
        Ok(Cow::Owned(buf))
    }
}

/// The latest committed version of a 1.1 file and, if it was needed, the recovery.
pub(crate) struct Opened {
    pub versions: Vec<VersionInfo>,
    /// Position in `versions` of the one opened.
    pub selected: usize,
    pub recovered: Option<Recovery>,
    pub index: BinIndex,
}

/// Opens version `selector` of a file with required feature bit 0 (spec §16.4, §16.5 steps
/// 1–4, §16.7).
pub(crate) fn open(ctx: &Ctx<'_>, selector: VersionSelector) -> Result<Opened> {
    let len = ctx.source.len();
    let min_len = (SUPERBLOCK_LEN + TRAILER_LEN) as u64;
    if len < min_len {
        return Err(Error::Truncated {
            path: ctx.path.into(),
            detail: format!(
                "{len} bytes, shorter than the {min_len} bytes of superblock and trailer"
            ),
        });
    }
    let last: [u8; TRAILER_LEN] = ctx
        .bytes(len - TRAILER_LEN as u64, TRAILER_LEN as u64, "the trailer")?
        .as_ref()
        .try_into()
        .expect("TRAILER_LEN bytes");
    let (latest, recovered) = if is_committed_trailer(&last, len) {
        let trailer = Trailer::decode(ctx.path, &last, len)?;
        (open_index_at(ctx, &trailer, len)?, None)
    } else {
        let why = match Trailer::decode(ctx.path, &last, len) {
            // The message goes inside one that names the file already.
            Err(e) => {
                let text = e.to_string();
                let prefix = format!("{}: ", ctx.path);
                text.strip_prefix(&prefix)
                    .map_or(text.clone(), str::to_owned)
            }
            Ok(_) => "its end does not hold a trailer".into(),
        };
        match scan_for_committed(ctx, len)? {
            Some((end, index)) => (
                index,
                Some(Recovery {
                    ignored_bytes: len - end,
                    committed_end: end,
                }),
            ),
            None => {
                return Err(Error::Truncated {
                    path: ctx.path.into(),
                    detail: format!(
                        "no committed version found ({why}): the file was cut short or its \
                         first version never completely written"
                    ),
                })
            }
        }
    };
    let mut versions: Vec<VersionInfo> = latest
        .records
        .iter()
        .map(VersionInfo::from_record)
        .collect();
    versions.push(latest.version_info());
    let selected = selector.pick(ctx.path, &versions)?;
    let index = if selected + 1 == versions.len() {
        latest
    } else {
        // Every version's superblock copy equals the latest's (a remote open compares
        // against it, not having read the file's first bytes).
        let ctx = Ctx {
            superblock: Some(latest.head.superblock),
            ..*ctx
        };
        open_listed(&ctx, &versions, selected)?
    };
    Ok(Opened {
        versions,
        selected,
        recovered,
        index,
    })
}

/// The index a committed trailer ending at `end` points to, checked (steps 1–4).
fn open_index_at(ctx: &Ctx<'_>, t: &Trailer, end: u64) -> Result<BinIndex> {
    if end % VERSION_END_ALIGN != 0 {
        return Err(Error::invalid_index(
            ctx.path,
            format!("the trailer ends at {end}, not a multiple of {VERSION_END_ALIGN}"),
        ));
    }
    BinIndex::open(ctx, t.index_offset, t.index_len, t.index_crc32c)
}

/// Bytes scanned backwards at once when looking for the last committed trailer.
const SCAN_BLOCK: u64 = 1 << 20;

/// §16.7: the last offset `p < len`, a multiple of 64, where a committed trailer ends whose
/// index checks, with that index. Reads the file backwards in bounded blocks, so a torn
/// tail of any length costs one sequential read of it, in constant memory.
fn scan_for_committed(ctx: &Ctx<'_>, len: u64) -> Result<Option<(u64, BinIndex)>> {
    // The smallest version: superblock, a 160-byte index head, trailer.
    let lowest = SUPERBLOCK_LEN as u64 + MIN_INDEX_LEN + TRAILER_LEN as u64;
    let align = VERSION_END_ALIGN;
    // Candidates strictly before the end, whose trailer did not check.
    let mut hi = (len - 1) / align * align;
    let mut buf = Vec::new();
    while hi >= lowest {
        // Bytes lo..hi hold the trailers of candidates in (lo + 32 ..= hi].
        let lo = hi
            .saturating_sub(SCAN_BLOCK)
            .max(lowest - TRAILER_LEN as u64);
        let bytes: &[u8] = match ctx.tail.get(lo, hi - lo) {
            Some(b) => b,
            None => match ctx.source.as_slice() {
                Some(memory) => &memory[lo as usize..hi as usize],
                None => {
                    buf.resize((hi - lo) as usize, 0);
                    ctx.source
                        .read_exact_at(lo, &mut buf)
                        .map_err(|e| Error::io(ctx.path, e))?;
                    &buf
                }
            },
        };
        let mut p = hi;
        while p >= lo + TRAILER_LEN as u64 && p >= lowest {
            let at = (p - lo) as usize;
            let b: &[u8; TRAILER_LEN] = bytes[at - TRAILER_LEN..at].try_into().unwrap();
            if b[24..32] == END_MAGIC && is_committed_trailer(b, p) {
                if let Ok(t) = Trailer::decode(ctx.path, b, p) {
                    if let Ok(index) = open_index_at(ctx, &t, p) {
                        return Ok(Some((p, index)));
                    }
                }
            }
            p -= align;
        }
        // The next block ends at the highest candidate this one did not cover.
        hi = p;
    }
    Ok(None)
}

/// Opens version `k` of `versions` (a file's versions, oldest first, as its latest index
/// lists them): its own head, checked against what the latest index says of it (§16.4).
pub(crate) fn open_listed(ctx: &Ctx<'_>, versions: &[VersionInfo], k: usize) -> Result<BinIndex> {
    let v = &versions[k];
    let index = BinIndex::open(ctx, v.index_offset, v.index_length, v.index_crc)?;
    let h = &index.head;
    let differs = |what: &str, got: u64, want: u64| {
        Error::invalid_index(
            ctx.path,
            format!(
                "the index at {} says {what} {got}, the latest index's record of it {want}",
                v.index_offset
            ),
        )
    };
    if h.version != v.number {
        return Err(differs("version", h.version, v.number));
    }
    if h.time_ns != v.time_ns {
        return Err(differs("time_ns", h.time_ns, v.time_ns));
    }
    if h.data_start != v.data_start {
        return Err(differs("data_start", h.data_start, v.data_start));
    }
    let same_chain = index.records.len() == k
        && index
            .records
            .iter()
            .zip(versions)
            .all(|(r, v)| VersionInfo::from_record(r) == *v);
    if !same_chain {
        return Err(Error::invalid_index(
            ctx.path,
            format!(
                "the versions section of version {} differs from the latest index's records \
                 of the versions before it",
                v.number
            ),
        ));
    }
    Ok(index)
}

/// The sections a reader of this version knows (the required ones, and `writer`).
#[derive(Debug, Clone, Copy)]
struct Sections {
    versions: SectionEntry,
    tensors: SectionEntry,
    names: SectionEntry,
    shapes: SectionEntry,
    chunks: SectionEntry,
    tree: SectionEntry,
    metadata: SectionEntry,
    writer: Option<SectionEntry>,
}

/// Index blocks read at once and cached for lookups.
const BLOCK: u64 = 4096;
/// Blocks kept: a lookup in a million tensors touches about 60 (records, names, shapes).
const CACHE_BLOCKS: usize = 96;
/// Reads longer than this bypass the block cache.
const CACHE_READ_MAX: u64 = 4 * BLOCK;

#[derive(Default)]
struct BlockCache {
    /// (block number, its bytes within the index, last use).
    blocks: Vec<(u64, Box<[u8]>, u64)>,
    clock: u64,
}

/// Tensors found by name, before (or without) a listing. Entries are only ever added:
/// see [`BinIndex::found`].
#[derive(Default)]
struct Found {
    by_position: foldhash::HashMap<u32, Box<TensorInfo>>,
    by_name: foldhash::HashMap<String, u32>,
}

/// Every tensor of the version, checked by the listing rules of §16.5.
struct Listing {
    /// In `position` order.
    tensors: Vec<TensorInfo>,
    by_name: foldhash::HashMap<String, usize>,
}

struct TreeSection {
    text: String,
    refs: Vec<String>,
}

/// A record read during a lookup, checked against its `record_crc`.
struct Probe {
    record: TensorRecord,
    name: Vec<u8>,
    shape: Vec<u64>,
}

/// One version's binary index, read lazily.
pub(crate) struct BinIndex {
    source: Arc<dyn Source>,
    path: String,
    alignment: u32,
    pub head: IndexHead,
    pub index_offset: u64,
    pub index_len: u64,
    pub index_crc: u32,
    /// The `versions` section: every earlier version, oldest first.
    pub records: Vec<VersionRecord>,
    sections: Sections,
    tail: Arc<Tail>,
    cache: Mutex<BlockCache>,
    found: Mutex<Found>,
    listing: OnceLock<Listing>,
    tree: OnceLock<TreeSection>,
    metadata: OnceLock<String>,
    writer: OnceLock<Option<WriterInfo>>,
}

impl BinIndex {
    /// Reads and checks the head at `index_offset..+index_len` (whose crc the trailer or a
    /// version record gives), the directory and the `versions` section (§16.5 steps 1–4).
    fn open(ctx: &Ctx<'_>, index_offset: u64, index_len: u64, index_crc: u32) -> Result<BinIndex> {
        let path = ctx.path;
        if index_len < MIN_INDEX_LEN {
            return Err(Error::invalid_index(
                path,
                format!(
                    "the index at {index_offset} is {index_len} bytes, shorter than the \
                     {MIN_INDEX_LEN}-byte head of a binary index"
                ),
            ));
        }
        if index_len > MAX_INDEX_BYTES {
            return Err(Error::limit(
                path,
                "the index length",
                index_len,
                MAX_INDEX_BYTES,
            ));
        }
        // One read covers the largest head.
        let want = index_len.min(IndexHead::len_for(MAX_SECTIONS) as u64);
        let bytes = ctx.bytes(index_offset, want, "the index head")?;
        let fixed: &[u8; HEAD_FIXED_LEN] = bytes[..HEAD_FIXED_LEN].try_into().unwrap();
        let (magic, count) = IndexHead::peek(fixed);
        let count = count as usize;
        if !(MIN_SECTIONS..=MAX_SECTIONS).contains(&count) {
            return Err(Error::invalid_index(
                path,
                format!(
                    "the index head at {index_offset} announces {count} sections, not \
                     {MIN_SECTIONS} to {MAX_SECTIONS}"
                ),
            ));
        }
        let head_len = IndexHead::len_for(count);
        if head_len as u64 > index_len {
            return Err(Error::invalid_index(
                path,
                format!(
                    "the index head at {index_offset} ({head_len} bytes) is longer than the \
                     index ({index_len} bytes)"
                ),
            ));
        }
        let actual = crc32c::crc32c(&bytes[..head_len]);
        if actual != index_crc {
            return Err(Error::ChecksumMismatch {
                path: path.into(),
                part: format!("the index head at {index_offset}"),
                expected: index_crc,
                actual,
            });
        }
        if magic != INDEX_MAGIC {
            return Err(Error::invalid_index(
                path,
                format!("the index at {index_offset} does not start with BPZINDEX"),
            ));
        }
        let head = IndexHead::decode(&bytes[..head_len]).expect("long enough");
        drop(bytes);
        if head.version == 0 {
            return Err(Error::invalid_index(
                path,
                format!("the index at {index_offset} is of version 0 (versions start at 1)"),
            ));
        }
        if head.data_start < SUPERBLOCK_LEN as u64 || head.data_start > index_offset {
            return Err(Error::invalid_index(
                path,
                format!(
                    "version {} starts its data at {}, outside {SUPERBLOCK_LEN}..={index_offset}",
                    head.version, head.data_start
                ),
            ));
        }
        match &ctx.superblock {
            Some(sb) if *sb != head.superblock => {
                return Err(Error::invalid_index(
                    path,
                    format!(
                        "the superblock copy in the index of version {} differs from the \
                         file's first {SUPERBLOCK_LEN} bytes",
                        head.version
                    ),
                ))
            }
            Some(_) => {}
            None => {
                Superblock::decode(path, &head.superblock, ctx.source.len())?;
            }
        }
        let sections = check_directory(path, &head, index_len)?;
        let mut index = BinIndex {
            source: ctx.source.clone(),
            path: path.into(),
            alignment: ctx.alignment,
            head,
            index_offset,
            index_len,
            index_crc,
            records: Vec::new(),
            sections,
            tail: ctx.tail.clone(),
            cache: Mutex::default(),
            found: Mutex::default(),
            listing: OnceLock::new(),
            tree: OnceLock::new(),
            metadata: OnceLock::new(),
            writer: OnceLock::new(),
        };
        index.records = index.read_versions()?;
        Ok(index)
    }

    /// Step 4: the `versions` section, its crc and the chain rules of §16.4.
    fn read_versions(&self) -> Result<Vec<VersionRecord>> {
        let bytes = self.section_bytes(&self.sections.versions, "versions")?;
        let records: Vec<VersionRecord> = bytes
            .chunks_exact(VERSION_RECORD_LEN)
            .map(|b| VersionRecord::decode(b.try_into().unwrap()))
            .collect();
        let bad = |detail: String| {
            Error::invalid_index(
                &self.path,
                format!("version chain of version {}: {detail}", self.head.version),
            )
        };
        if records.is_empty() && self.head.data_start != SUPERBLOCK_LEN as u64 {
            return Err(bad(format!(
                "the first version must start its data at {SUPERBLOCK_LEN}, not {}",
                self.head.data_start
            )));
        }
        for (i, r) in records.iter().enumerate() {
            let (next_start, next_version) = match records.get(i + 1) {
                Some(n) => (n.data_start, n.version),
                None => (self.head.data_start, self.head.version),
            };
            if r.reserved != 0 {
                return Err(bad(format!(
                    "the record of version {} has reserved bytes that are not zero",
                    r.version
                )));
            }
            if r.version == 0 || r.version >= next_version {
                return Err(bad(format!(
                    "version {} is listed before version {next_version}: numbers must start \
                     at 1 and increase",
                    r.version
                )));
            }
            if i == 0 && r.data_start != SUPERBLOCK_LEN as u64 {
                return Err(bad(format!(
                    "the first version (version {}) starts its data at {}, not {SUPERBLOCK_LEN}",
                    r.version, r.data_start
                )));
            }
            if r.index_length < MIN_INDEX_LEN || r.index_length > MAX_INDEX_BYTES {
                return Err(bad(format!(
                    "version {} has an index of {} bytes",
                    r.version, r.index_length
                )));
            }
            let end = r.end().filter(|_| r.data_start <= r.index_offset);
            let Some(end) = end else {
                return Err(bad(format!(
                    "version {} places its index at {}..+{} with data from {}",
                    r.version, r.index_offset, r.index_length, r.data_start
                )));
            };
            if end % VERSION_END_ALIGN != 0 || end != next_start {
                return Err(bad(format!(
                    "version {} ends at {end}, {} the next version's data start {next_start}: \
                     {}",
                    r.version,
                    if end > next_start {
                        "past"
                    } else if end % VERSION_END_ALIGN != 0 {
                        "not a multiple of 64 before"
                    } else {
                        "before"
                    },
                    if end > next_start {
                        "the chain points forward or overlaps"
                    } else {
                        "versions must follow one another without gaps"
                    }
                )));
            }
        }
        Ok(records)
    }

    pub(crate) fn version_info(&self) -> VersionInfo {
        let end = self.index_offset + self.index_len + TRAILER_LEN as u64;
        VersionInfo {
            number: self.head.version,
            time_ns: self.head.time_ns,
            data_start: self.head.data_start,
            index_offset: self.index_offset,
            index_length: self.index_len,
            index_crc: self.index_crc,
            bytes_added: end - self.head.data_start,
        }
    }

    pub(crate) fn tensor_count(&self) -> usize {
        self.head.tensor_count as usize
    }

    pub(crate) fn trailer(&self) -> Trailer {
        Trailer {
            index_offset: self.index_offset,
            index_len: self.index_len,
            index_crc32c: self.index_crc,
        }
    }

    /// A whole section, its crc checked.
    fn section_bytes(&self, s: &SectionEntry, name: &str) -> Result<Cow<'_, [u8]>> {
        let bytes = self.read_direct(s.offset, s.length, &format!("the {name} section"))?;
        let actual = crc32c::crc32c(&bytes);
        if actual != s.crc {
            return Err(Error::ChecksumMismatch {
                path: self.path.clone(),
                part: format!(
                    "the {name} section of the index of version {}",
                    self.head.version
                ),
                expected: s.crc,
                actual,
            });
        }
        Ok(bytes)
    }

    /// Bytes `rel..rel + len` of the index, read at once (not cached).
    fn read_direct(&self, rel: u64, len: u64, what: &str) -> Result<Cow<'_, [u8]>> {
        let at = self.index_offset + rel;
        if let Some(b) = self.tail.get(at, len) {
            return Ok(Cow::Borrowed(b));
        }
        if let Some(memory) = self.source.as_slice() {
            // The directory was checked to lie within the index, and the index in the file.
            return Ok(Cow::Borrowed(&memory[at as usize..(at + len) as usize]));
        }
        let mut buf = usize::try_from(len)
            .ok()
            .and_then(try_zeroed_vec)
            .ok_or_else(|| Error::out_of_memory(&self.path, len, format!("for {what}")))?;
        self.source
            .read_exact_at(at, &mut buf)
            .map_err(|e| Error::io(&self.path, e))?;
        Ok(Cow::Owned(buf))
    }

    /// Fills `out` with the index bytes from `rel` on, through the block cache.
    fn read_cached(&self, rel: u64, out: &mut [u8]) -> Result<()> {
        let at = self.index_offset + rel;
        let n = out.len() as u64;
        if let Some(b) = self.tail.get(at, n) {
            out.copy_from_slice(b);
            return Ok(());
        }
        if let Some(memory) = self.source.as_slice() {
            out.copy_from_slice(&memory[at as usize..(at + n) as usize]);
            return Ok(());
        }
        if n > CACHE_READ_MAX {
            return self
                .source
                .read_exact_at(at, out)
                .map_err(|e| Error::io(&self.path, e));
        }
        let index_end = self.index_offset + self.index_len;
        let mut pos = at;
        let mut filled = 0usize;
        while pos < at + n {
            let block = pos / BLOCK;
            let block_start = (block * BLOCK).max(self.index_offset);
            let block_end = ((block + 1) * BLOCK).min(index_end);
            let take = (block_end.min(at + n) - pos) as usize;
            let from = (pos - block_start) as usize;
            let dst = &mut out[filled..filled + take];
            if !self.copy_cached(block, from, dst) {
                let mut bytes = vec![0u8; (block_end - block_start) as usize];
                self.source
                    .read_exact_at(block_start, &mut bytes)
                    .map_err(|e| Error::io(&self.path, e))?;
                dst.copy_from_slice(&bytes[from..from + take]);
                self.insert_cached(block, bytes.into_boxed_slice());
            }
            filled += take;
            pos += take as u64;
        }
        Ok(())
    }

    fn copy_cached(&self, block: u64, from: usize, dst: &mut [u8]) -> bool {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        cache.clock += 1;
        let clock = cache.clock;
        match cache.blocks.iter_mut().find(|(b, _, _)| *b == block) {
            Some((_, bytes, used)) => {
                *used = clock;
                dst.copy_from_slice(&bytes[from..from + dst.len()]);
                true
            }
            None => false,
        }
    }

    fn insert_cached(&self, block: u64, bytes: Box<[u8]>) {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        cache.clock += 1;
        let clock = cache.clock;
        if cache.blocks.iter().any(|(b, _, _)| *b == block) {
            return;
        }
        if cache.blocks.len() < CACHE_BLOCKS {
            cache.blocks.push((block, bytes, clock));
        } else if let Some(oldest) = cache.blocks.iter_mut().min_by_key(|(_, _, used)| *used) {
            *oldest = (block, bytes, clock);
        }
    }

    /// Record `i` with its name and shape, its crc checked (what a lookup needs to compare
    /// names safely).
    fn probe(&self, i: u64, fetch: &Fetch<'_>) -> Result<Probe> {
        let mut raw = [0u8; TENSOR_RECORD_LEN];
        fetch.read(
            self,
            &self.sections.tensors,
            i * TENSOR_RECORD_LEN as u64,
            &mut raw,
        )?;
        let record = TensorRecord::decode(&raw);
        let at = |detail: String| {
            Error::invalid_index(
                &self.path,
                format!(
                    "tensor record {i} of version {}: {detail}",
                    self.head.version
                ),
            )
        };
        if record.name_length as usize > MAX_NAME_BYTES {
            return Err(Error::limit(
                &self.path,
                format!("the name length of tensor record {i}"),
                record.name_length as u64,
                MAX_NAME_BYTES as u64,
            ));
        }
        if record.rank as usize > MAX_RANK {
            return Err(Error::limit(
                &self.path,
                format!("the rank of tensor record {i}"),
                record.rank as u64,
                MAX_RANK as u64,
            ));
        }
        let names_len = self.sections.names.length;
        let name_end = record.name_offset.checked_add(record.name_length as u64);
        if name_end.map_or(true, |e| e > names_len) {
            return Err(at(format!(
                "its name at {}..+{} lies outside the names section ({names_len} bytes)",
                record.name_offset, record.name_length
            )));
        }
        let dims = self.sections.shapes.length / 8;
        let shape_end = record.shape_offset.checked_add(record.rank as u64);
        if shape_end.map_or(true, |e| e > dims) {
            return Err(at(format!(
                "its shape at dimension {}..+{} lies outside the shapes section ({dims} dimensions)",
                record.shape_offset, record.rank
            )));
        }
        let mut name = vec![0u8; record.name_length as usize];
        fetch.read(self, &self.sections.names, record.name_offset, &mut name)?;
        let mut shape_bytes = [0u8; MAX_RANK * 8];
        let shape_bytes = &mut shape_bytes[..record.rank as usize * 8];
        fetch.read(
            self,
            &self.sections.shapes,
            record.shape_offset * 8,
            shape_bytes,
        )?;
        let shape: Vec<u64> = shape_bytes
            .chunks_exact(8)
            .map(|d| u64::from_le_bytes(d.try_into().unwrap()))
            .collect();
        let actual = TensorRecord::crc_of(&raw, &name, &shape);
        if actual != record.record_crc {
            return Err(Error::ChecksumMismatch {
                path: self.path.clone(),
                part: format!(
                    "tensor record {i} ({:?}) of the index of version {}",
                    String::from_utf8_lossy(&name),
                    self.head.version
                ),
                expected: record.record_crc,
                actual,
            });
        }
        Ok(Probe {
            record,
            name,
            shape,
        })
    }

    /// The rest of §16.5's per-tensor rules for a probed record: its chunk records, then
    /// the rules every 1.0 tensor obeys (shared with the JSON index).
    fn finish(&self, i: u64, p: Probe, fetch: &Fetch<'_>) -> Result<TensorInfo> {
        let r = &p.record;
        let at = |detail: String| {
            Error::invalid_index(
                &self.path,
                format!(
                    "tensor record {i} of version {}: {detail}",
                    self.head.version
                ),
            )
        };
        let name =
            String::from_utf8(p.name).map_err(|_| at("its name is not valid UTF-8".into()))?;
        if r.reserved != [0; 8] {
            return Err(at(format!(
                "tensor {name:?} has reserved bytes that are not zero"
            )));
        }
        let chunk_end = r.first_chunk.checked_add(r.chunk_count as u64);
        if chunk_end.map_or(true, |e| e > self.head.chunk_count) {
            return Err(at(format!(
                "tensor {name:?} has chunks {}..+{}, outside the {} chunk records",
                r.first_chunk, r.chunk_count, self.head.chunk_count
            )));
        }
        let unsupported = |what: &str, code: u8| Error::UnsupportedFeature {
            path: self.path.clone(),
            detail: format!("tensor {name:?} has {what} code {code}"),
        };
        let dtype = DType::from_code(r.dtype).ok_or_else(|| unsupported("dtype", r.dtype))?;
        let storage =
            Storage::from_code(r.storage).ok_or_else(|| unsupported("storage", r.storage))?;
        let filter = Filter::from_code(r.filter).ok_or_else(|| unsupported("filter", r.filter))?;
        let n = r.chunk_count as usize;
        let table_len = n as u64 * CHUNK_RECORD_LEN as u64;
        let table = fetch.chunk_table(self, r.first_chunk * CHUNK_RECORD_LEN as u64, table_len)?;
        let actual = crc32c::crc32c(&table);
        if actual != r.chunks_crc {
            return Err(Error::ChecksumMismatch {
                path: self.path.clone(),
                part: format!(
                    "the chunk records of tensor {name:?} in the index of version {}",
                    self.head.version
                ),
                expected: r.chunks_crc,
                actual,
            });
        }
        let mut chunks = Vec::with_capacity(n);
        let mut hashes = Vec::with_capacity(n);
        for (k, b) in table.chunks_exact(CHUNK_RECORD_LEN).enumerate() {
            let c = ChunkRecord::decode(b.try_into().unwrap());
            if c.reserved != [0; 3] {
                return Err(at(format!(
                    "chunk {k} of tensor {name:?} has reserved bytes that are not zero"
                )));
            }
            chunks.push([c.offset, c.stored_len, c.crc32c as u64, c.encoded as u64]);
            hashes.push(c.hash);
        }
        // §16.2: a chunk lies inside the data of this version or of an earlier one listed,
        // never inside an index or trailer (those bytes are checked by their own crcs, not
        // as chunk contents).
        let in_some_version = |offset: u64, len: u64| {
            let end = offset.checked_add(len);
            let inside = |start: u64, stop: u64| end.is_some_and(|e| offset >= start && e <= stop);
            inside(self.head.data_start, self.index_offset)
                || self
                    .records
                    .iter()
                    .any(|r| inside(r.data_start, r.index_offset))
        };
        for (k, c) in chunks.iter().enumerate() {
            if !in_some_version(c[0], c[1]) {
                return Err(at(format!(
                    "chunk {k} of tensor {name:?} at {}..+{} lies outside the data of every \
                     version (it points into an index, a trailer or past the version's end)",
                    c[0], c[1]
                )));
            }
        }
        let parts = TensorParts {
            name,
            dtype,
            shape: p.shape,
            storage,
            filter,
            chunk_elems: r.chunk_elems,
        };
        check_tensor(
            &self.path,
            parts,
            &chunks,
            Some(&hashes),
            self.alignment,
            self.index_offset,
        )
    }

    /// A tensor found by name earlier, by its position. Sound because entries of `found`
    /// are boxed, only ever added (never replaced or removed) and live as long as `self`:
    /// the reference stays valid while the map grows.
    fn found_at(&self, position: u32) -> Option<&TensorInfo> {
        let found = self.found.lock().unwrap_or_else(|e| e.into_inner());
        let t: *const TensorInfo = &**found.by_position.get(&position)?;
        // SAFETY: see above: the box is never dropped or moved out while `self` lives.
        Some(unsafe { &*t })
    }

    /// The tensor `name` and its position, or `None` if the version has no such tensor.
    pub(crate) fn lookup(&self, name: &str) -> Result<Option<(usize, &TensorInfo)>> {
        if let Some(l) = self.listing.get() {
            return Ok(l.by_name.get(name).map(|&k| (k, &l.tensors[k])));
        }
        let known = {
            let found = self.found.lock().unwrap_or_else(|e| e.into_inner());
            found.by_name.get(name).copied()
        };
        if let Some(position) = known {
            let t = self.found_at(position).expect("added with its name");
            return Ok(Some((position as usize, t)));
        }
        let fetch = Fetch::Cached;
        let (mut lo, mut hi) = (0u64, self.head.tensor_count);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let probe = self.probe(mid, &fetch)?;
            match probe.name.as_slice().cmp(name.as_bytes()) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => {
                    let position = probe.record.position;
                    if position as u64 >= self.head.tensor_count {
                        return Err(Error::invalid_index(
                            &self.path,
                            format!(
                                "tensor {name:?} has position {position}, but version {} has {} \
                                 tensors",
                                self.head.version, self.head.tensor_count
                            ),
                        ));
                    }
                    let t = self.finish(mid, probe, &fetch)?;
                    let mut found = self.found.lock().unwrap_or_else(|e| e.into_inner());
                    let kept = found
                        .by_position
                        .entry(position)
                        .or_insert_with(|| Box::new(t));
                    if kept.name != name {
                        // Two records with one position: never hand out the other tensor.
                        return Err(Error::invalid_index(
                            &self.path,
                            format!(
                                "tensors {:?} and {name:?} of version {} have the same position \
                                 {position}",
                                kept.name, self.head.version
                            ),
                        ));
                    }
                    found.by_name.insert(name.to_owned(), position);
                    drop(found);
                    let t = self.found_at(position).expect("just added");
                    return Ok(Some((position as usize, t)));
                }
            }
        }
        Ok(None)
    }

    /// The tensor at `position` (in saving order), if it is known without a listing.
    pub(crate) fn known_at(&self, position: usize) -> Option<&TensorInfo> {
        if let Some(l) = self.listing.get() {
            return l.tensors.get(position);
        }
        self.found_at(u32::try_from(position).ok()?)
    }

    /// Every tensor in `position` order, checked by the listing rules of §16.5 (once).
    pub(crate) fn tensors(&self) -> Result<&[TensorInfo]> {
        Ok(&self.listing()?.tensors)
    }

    fn listing(&self) -> Result<&Listing> {
        if let Some(l) = self.listing.get() {
            return Ok(l);
        }
        let l = self.list()?;
        let _ = self.listing.set(l);
        Ok(self.listing.get().expect("set"))
    }

    fn list(&self) -> Result<Listing> {
        let s = &self.sections;
        let whole = Whole {
            tensors: self.section_bytes(&s.tensors, "tensors")?,
            names: self.section_bytes(&s.names, "names")?,
            shapes: self.section_bytes(&s.shapes, "shapes")?,
            chunks: self.section_bytes(&s.chunks, "chunks")?,
        };
        let fetch = Fetch::Whole(&whole);
        let n = self.head.tensor_count as usize;
        let mut by_position: Vec<Option<TensorInfo>> = Vec::new();
        by_position
            .try_reserve_exact(n)
            .map_err(|_| Error::out_of_memory(&self.path, n as u64, "for the tensor list"))?;
        by_position.resize_with(n, || None);
        let mut previous: Option<Vec<u8>> = None;
        for i in 0..n as u64 {
            let probe = self.probe(i, &fetch)?;
            if let Some(prev) = &previous {
                if prev.as_slice() >= probe.name.as_slice() {
                    return Err(Error::invalid_index(
                        &self.path,
                        format!(
                            "the tensor records of version {} are not in strictly increasing \
                             name order: {:?} is followed by {:?}",
                            self.head.version,
                            String::from_utf8_lossy(prev),
                            String::from_utf8_lossy(&probe.name)
                        ),
                    ));
                }
            }
            previous = Some(probe.name.clone());
            let position = probe.record.position as usize;
            let t = self.finish(i, probe, &fetch)?;
            match by_position.get_mut(position) {
                Some(slot @ None) => *slot = Some(t),
                _ => {
                    return Err(Error::invalid_index(
                        &self.path,
                        format!(
                            "the positions of the tensors of version {} are not a permutation \
                             of 0..{n}: tensor {:?} has position {position}",
                            self.head.version, t.name
                        ),
                    ))
                }
            }
        }
        drop(whole);
        let tensors: Vec<TensorInfo> = by_position
            .into_iter()
            .map(|t| t.expect("n distinct positions below n"))
            .collect();
        check_shared_overlaps(&self.path, self.head.version, &tensors)?;
        let by_name: foldhash::HashMap<String, usize> = tensors
            .iter()
            .enumerate()
            .map(|(k, t)| (t.name.clone(), k))
            .collect();
        let tree = self.tree_section()?;
        if let Some(missing) = tree.refs.iter().find(|r| !by_name.contains_key(r.as_str())) {
            return Err(Error::invalid_index(
                &self.path,
                format!(
                    "the tree of version {} refers to a missing tensor {missing:?}",
                    self.head.version
                ),
            ));
        }
        Ok(Listing { tensors, by_name })
    }

    fn tree_section(&self) -> Result<&TreeSection> {
        if let Some(t) = self.tree.get() {
            return Ok(t);
        }
        let bytes = self.section_bytes(&self.sections.tree, "tree")?;
        let (text, refs) = check_tree_section(&self.path, &bytes)?;
        let _ = self.tree.set(TreeSection { text, refs });
        Ok(self.tree.get().expect("set"))
    }

    /// The tree section's text, checked (crc, JSON, `tensor` nodes hold strings). Its
    /// references are checked against the tensors by a listing.
    pub(crate) fn tree_json(&self) -> Result<&str> {
        Ok(&self.tree_section()?.text)
    }

    pub(crate) fn metadata_json(&self) -> Result<&str> {
        if let Some(m) = self.metadata.get() {
            return Ok(m);
        }
        let bytes = self.section_bytes(&self.sections.metadata, "metadata")?;
        let text = check_json_section(&self.path, &bytes, "metadata")?;
        let _ = self.metadata.set(text);
        Ok(self.metadata.get().expect("set"))
    }

    pub(crate) fn writer(&self) -> Result<Option<&WriterInfo>> {
        if let Some(w) = self.writer.get() {
            return Ok(w.as_ref());
        }
        let w = match &self.sections.writer {
            Some(s) => check_writer_section(&self.path, &self.section_bytes(s, "writer")?)?,
            None => None,
        };
        let _ = self.writer.set(w);
        Ok(self.writer.get().expect("set").as_ref())
    }
}

/// The sections a listing reads whole.
struct Whole<'a> {
    tensors: Cow<'a, [u8]>,
    names: Cow<'a, [u8]>,
    shapes: Cow<'a, [u8]>,
    chunks: Cow<'a, [u8]>,
}

/// Where record bytes come from: the block cache (a lookup) or whole sections (a listing).
enum Fetch<'a> {
    Cached,
    Whole(&'a Whole<'a>),
}

impl Fetch<'_> {
    /// Bytes `rel..rel + out.len()` of section `s` (the caller checked the bounds).
    fn read(&self, ix: &BinIndex, s: &SectionEntry, rel: u64, out: &mut [u8]) -> Result<()> {
        match self {
            Fetch::Cached => ix.read_cached(s.offset + rel, out),
            Fetch::Whole(w) => {
                let section: &[u8] = match s.kind {
                    SectionKind::Tensors => &w.tensors,
                    SectionKind::Names => &w.names,
                    SectionKind::Shapes => &w.shapes,
                    _ => &w.chunks,
                };
                out.copy_from_slice(&section[rel as usize..rel as usize + out.len()]);
                Ok(())
            }
        }
    }

    /// `len` bytes of the chunks section from `rel` on.
    fn chunk_table<'b>(&'b self, ix: &'b BinIndex, rel: u64, len: u64) -> Result<Cow<'b, [u8]>> {
        match self {
            Fetch::Whole(w) => Ok(Cow::Borrowed(&w.chunks[rel as usize..(rel + len) as usize])),
            Fetch::Cached if len <= CACHE_READ_MAX => {
                let mut buf = vec![0u8; len as usize];
                ix.read_cached(ix.sections.chunks.offset + rel, &mut buf)?;
                Ok(Cow::Owned(buf))
            }
            Fetch::Cached => ix.read_direct(
                ix.sections.chunks.offset + rel,
                len,
                "a tensor's chunk records",
            ),
        }
    }
}

/// Step 3 of §16.5: the section directory.
fn check_directory(path: &str, head: &IndexHead, index_len: u64) -> Result<Sections> {
    let head_len = head.head_len() as u64;
    let bad = |detail: String| {
        Error::invalid_index(
            path,
            format!("the index of version {}: {detail}", head.version),
        )
    };
    let mut ranges: Vec<(u64, u64, SectionKind)> = Vec::with_capacity(head.sections.len());
    for s in &head.sections {
        let r = s
            .range()
            .filter(|r| r.start >= head_len && r.end <= index_len);
        let Some(r) = r else {
            return Err(bad(format!(
                "the {} section at {}..+{} lies outside {head_len}..{index_len}",
                s.kind.name(),
                s.offset,
                s.length
            )));
        };
        if ranges.iter().any(|&(_, _, k)| k == s.kind) {
            return Err(bad(format!(
                "the directory lists the {} section twice",
                s.kind.name()
            )));
        }
        ranges.push((r.start, r.end, s.kind));
    }
    ranges.sort_unstable();
    for w in ranges.windows(2) {
        if w[1].0 < w[0].1 {
            return Err(bad(format!(
                "the {} and {} sections overlap",
                w[0].2.name(),
                w[1].2.name()
            )));
        }
    }
    let get = |kind: SectionKind| -> Result<SectionEntry> {
        head.section(kind)
            .copied()
            .ok_or_else(|| bad(format!("the index has no {} section", kind.name())))
    };
    let sections = Sections {
        versions: get(SectionKind::Versions)?,
        tensors: get(SectionKind::Tensors)?,
        names: get(SectionKind::Names)?,
        shapes: get(SectionKind::Shapes)?,
        chunks: get(SectionKind::Chunks)?,
        tree: get(SectionKind::Tree)?,
        metadata: get(SectionKind::Metadata)?,
        writer: head.section(SectionKind::Writer).copied(),
    };
    if head.tensor_count > MAX_TENSORS as u64 {
        return Err(Error::limit(
            path,
            "the tensor count",
            head.tensor_count,
            MAX_TENSORS as u64,
        ));
    }
    let sized = |s: &SectionEntry, count: u64, each: usize, what: &str| -> Result<()> {
        if count.checked_mul(each as u64) != Some(s.length) {
            return Err(bad(format!(
                "the {} section is {} bytes, not {count} {what} of {each} bytes",
                s.kind.name(),
                s.length
            )));
        }
        Ok(())
    };
    sized(
        &sections.tensors,
        head.tensor_count,
        TENSOR_RECORD_LEN,
        "tensor records",
    )?;
    sized(
        &sections.chunks,
        head.chunk_count,
        CHUNK_RECORD_LEN,
        "chunk records",
    )?;
    for (s, each) in [
        (&sections.versions, VERSION_RECORD_LEN as u64),
        (&sections.shapes, 8),
    ] {
        if s.length % each != 0 {
            return Err(bad(format!(
                "the {} section is {} bytes, not a multiple of {each}",
                s.kind.name(),
                s.length
            )));
        }
    }
    Ok(sections)
}

/// The listing rule on stored ranges: two chunks of the version either are the same
/// stored chunk (same offset and length: shared) or share no byte.
fn check_shared_overlaps(path: &str, version: u64, tensors: &[TensorInfo]) -> Result<()> {
    let mut extents: Vec<(u64, u64, usize)> = tensors
        .iter()
        .enumerate()
        .flat_map(|(ti, t)| {
            t.chunks
                .iter()
                .map(move |c| (c.offset, c.offset + c.stored_len, ti))
        })
        .collect();
    extents.sort_unstable();
    extents.dedup_by(|b, a| a.0 == b.0 && a.1 == b.1);
    for w in extents.windows(2) {
        if w[1].0 < w[0].1 {
            let (a, b) = (&tensors[w[0].2].name, &tensors[w[1].2].name);
            return Err(Error::invalid_index(
                path,
                format!(
                    "in version {version}, stored bytes of tensors {a:?} and {b:?} overlap at \
                     offset {} without being the same chunk",
                    w[1].0
                ),
            ));
        }
    }
    Ok(())
}

impl BinIndex {
    /// Verification: the bytes of the index outside its head and its sections (known or
    /// not) hold nothing, so they must be zero, like the padding between chunks.
    pub(crate) fn check_unused_bytes_zero(&self) -> Result<()> {
        let mut used: Vec<(u64, u64)> = self
            .head
            .sections
            .iter()
            .map(|s| (s.offset, s.offset + s.length))
            .collect();
        used.push((0, self.head.head_len() as u64));
        used.sort_unstable();
        let mut pos = 0;
        for (start, end) in used.into_iter().chain([(self.index_len, self.index_len)]) {
            if start > pos {
                let gap = self.read_direct(pos, start - pos, "unused index bytes")?;
                if let Some(i) = gap.iter().position(|&b| b != 0) {
                    return Err(Error::CorruptData {
                        path: self.path.clone(),
                        part: format!(
                            "the index of version {} at offset {}",
                            self.head.version,
                            self.index_offset + pos + i as u64
                        ),
                        detail: "bytes outside the head and the sections must be zero".into(),
                    });
                }
            }
            pos = pos.max(end);
        }
        Ok(())
    }

    /// The bytes this version added before its index: its chunks and their padding.
    pub(crate) fn data_range(&self) -> Range<u64> {
        self.head.data_start..self.index_offset
    }

    /// Version `k` of `versions` (this file's, as its latest index lists them), opened
    /// from the same source: for a reader of another version, and for verification.
    /// `fresh` reads everything from the source again (not from the tail read on open).
    pub(crate) fn sibling(
        &self,
        versions: &[VersionInfo],
        k: usize,
        fresh: bool,
    ) -> Result<BinIndex> {
        let empty;
        let tail = if fresh {
            empty = Arc::new(Tail {
                start: self.source.len(),
                bytes: Vec::new(),
            });
            &empty
        } else {
            &self.tail
        };
        let ctx = Ctx {
            source: &self.source,
            path: &self.path,
            alignment: self.alignment,
            superblock: Some(self.head.superblock),
            tail,
        };
        open_listed(&ctx, versions, k)
    }
}

/// For a remote open: the superblock copy in the index head at the end of `tail`, if the
/// tail ends in a committed trailer whose index head it holds and the copy is a valid
/// superblock of a 1.1 file (checked again against the head's crc when the index opens).
pub(crate) fn superblock_copy_in_tail(
    path: &str,
    tail: &Tail,
    len: u64,
) -> Option<(Superblock, [u8; SUPERBLOCK_LEN])> {
    let last: &[u8; TRAILER_LEN] = tail
        .get(len - TRAILER_LEN as u64, TRAILER_LEN as u64)?
        .try_into()
        .ok()?;
    if !is_committed_trailer(last, len) {
        return None;
    }
    let index_offset = u64::from_le_bytes(last[0..8].try_into().unwrap());
    let fixed = tail.get(index_offset, DIRECTORY_AT as u64)?;
    if fixed[..8] != INDEX_MAGIC {
        return None;
    }
    let copy: [u8; SUPERBLOCK_LEN] = fixed[SUPERBLOCK_COPY_AT..DIRECTORY_AT].try_into().ok()?;
    let superblock = Superblock::decode(path, &copy, len).ok()?;
    (superblock.required_features & REQUIRED_BINARY_INDEX != 0).then_some((superblock, copy))
}
