//! The bytes on disk: superblock, trailer, data types and limits (the index is in
//! `index.rs`).
//! `spec/FORMAT.md` is the normative description; this module implements it.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result, Version};

/// First eight bytes of every archive. The high byte catches 7-bit transfers,
/// `\r\n` catches CRLF→LF conversion, `\x1a` stops `type` on Windows, the final
/// `\n` catches LF→CRLF conversion (the same trick as PNG).
pub const MAGIC: [u8; 8] = *b"\x89BPZ\r\n\x1a\n";
/// Last eight bytes of every complete archive.
pub const END_MAGIC: [u8; 8] = *b"BPZ_END\n";

pub const SUPERBLOCK_LEN: usize = 64;
pub const TRAILER_LEN: usize = 32;

/// The version this crate writes by default (spec §16), and the newest it reads.
pub const FORMAT_VERSION: Version = Version { major: 1, minor: 1 };

/// The newest format version this crate reads.
pub const READER_VERSION: Version = Version { major: 1, minor: 1 };

/// Required-feature bits known to this reader: bit 0, the binary index of 1.1 (spec §16.1).
pub const KNOWN_REQUIRED_FEATURES: u32 = crate::binindex::REQUIRED_BINARY_INDEX;

pub const DEFAULT_ALIGNMENT: u32 = 64;
pub const MIN_ALIGNMENT: u32 = 16;
pub const MAX_ALIGNMENT: u32 = 4096;

/// Default uncompressed size of a chunk.
pub const DEFAULT_CHUNK_BYTES: usize = 2 << 20;

// Limits: a reader rejects anything over them before allocating.
pub const MAX_INDEX_BYTES: u64 = 256 << 20;
pub const MAX_RANK: usize = 64;
pub const MAX_NAME_BYTES: usize = 4096;
pub const MAX_TENSORS: usize = 1 << 20;
/// Decoded bytes of one chunk.
pub const MAX_CHUNK_BYTES: u64 = 256 << 20;
pub const MAX_CHUNKS_PER_TENSOR: usize = 1 << 24;
/// Every offset, length and element count fits exactly in an IEEE double,
/// so JSON readers in any language get exact integers.
pub const MAX_SAFE_INTEGER: u64 = (1 << 53) - 1;
/// Nesting of JSON arrays/objects in the index (serde_json's own limit).
pub const MAX_JSON_DEPTH: usize = 128;

/// Element types, named as safetensors names them. All little-endian.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    Bool,
    U8,
    U16,
    U32,
    U64,
    I8,
    I16,
    I32,
    I64,
    F16,
    BF16,
    F32,
    F64,
    C64,
    C128,
    F8E4M3,
    F8E5M2,
    F8E4M3Fnuz,
    F8E5M2Fnuz,
    F8E8M0,
}

impl DType {
    pub const ALL: [DType; 20] = [
        DType::Bool,
        DType::U8,
        DType::U16,
        DType::U32,
        DType::U64,
        DType::I8,
        DType::I16,
        DType::I32,
        DType::I64,
        DType::F16,
        DType::BF16,
        DType::F32,
        DType::F64,
        DType::C64,
        DType::C128,
        DType::F8E4M3,
        DType::F8E5M2,
        DType::F8E4M3Fnuz,
        DType::F8E5M2Fnuz,
        DType::F8E8M0,
    ];

    pub fn name(self) -> &'static str {
        match self {
            DType::Bool => "BOOL",
            DType::U8 => "U8",
            DType::U16 => "U16",
            DType::U32 => "U32",
            DType::U64 => "U64",
            DType::I8 => "I8",
            DType::I16 => "I16",
            DType::I32 => "I32",
            DType::I64 => "I64",
            DType::F16 => "F16",
            DType::BF16 => "BF16",
            DType::F32 => "F32",
            DType::F64 => "F64",
            DType::C64 => "C64",
            DType::C128 => "C128",
            DType::F8E4M3 => "F8_E4M3",
            DType::F8E5M2 => "F8_E5M2",
            DType::F8E4M3Fnuz => "F8_E4M3FNUZ",
            DType::F8E5M2Fnuz => "F8_E5M2FNUZ",
            DType::F8E8M0 => "F8_E8M0",
        }
    }

    pub fn from_name(name: &str) -> Option<DType> {
        DType::ALL.into_iter().find(|d| d.name() == name)
    }

    /// The code of a 1.1 tensor record (spec §16.2): 1 + the place in [`DType::ALL`].
    pub fn code(self) -> u8 {
        DType::ALL
            .iter()
            .position(|&d| d == self)
            .expect("every dtype is listed") as u8
            + 1
    }

    pub fn from_code(code: u8) -> Option<DType> {
        DType::ALL.get((code as usize).checked_sub(1)?).copied()
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::Bool | DType::U8 | DType::I8 => 1,
            DType::F8E4M3 | DType::F8E5M2 | DType::F8E4M3Fnuz | DType::F8E5M2Fnuz => 1,
            DType::F8E8M0 => 1,
            DType::U16 | DType::I16 | DType::F16 | DType::BF16 => 2,
            DType::U32 | DType::I32 | DType::F32 => 4,
            DType::U64 | DType::I64 | DType::F64 | DType::C64 => 8,
            DType::C128 => 16,
        }
    }

    pub fn is_integer(self) -> bool {
        matches!(
            self,
            DType::U8
                | DType::U16
                | DType::U32
                | DType::U64
                | DType::I8
                | DType::I16
                | DType::I32
                | DType::I64
        )
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// How a chunk's bytes are transformed before zstd.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Filter {
    /// Bytes go to zstd unchanged (best for mostly-constant data).
    None,
    /// Byte transposition by element size: byte `j` of every element together.
    Shuffle,
    /// Wrapping difference of consecutive integers, then shuffle (sorted indices).
    DeltaShuffle,
    /// Eight booleans per byte, least significant bit first.
    BitPack,
}

impl Filter {
    pub fn name(self) -> &'static str {
        match self {
            Filter::None => "none",
            Filter::Shuffle => "shuffle",
            Filter::DeltaShuffle => "delta_shuffle",
            Filter::BitPack => "bitpack",
        }
    }

    pub fn from_name(name: &str) -> Option<Filter> {
        [
            Filter::None,
            Filter::Shuffle,
            Filter::DeltaShuffle,
            Filter::BitPack,
        ]
        .into_iter()
        .find(|f| f.name() == name)
    }

    /// The code of a 1.1 tensor record (spec §16.2).
    pub fn code(self) -> u8 {
        match self {
            Filter::None => 0,
            Filter::Shuffle => 1,
            Filter::DeltaShuffle => 2,
            Filter::BitPack => 3,
        }
    }

    pub fn from_code(code: u8) -> Option<Filter> {
        [
            Filter::None,
            Filter::Shuffle,
            Filter::DeltaShuffle,
            Filter::BitPack,
        ]
        .get(code as usize)
        .copied()
    }

    /// Whether the filter is defined for elements of this type.
    pub fn applies_to(self, dtype: DType) -> bool {
        match self {
            Filter::None | Filter::Shuffle => true,
            Filter::DeltaShuffle => dtype.is_integer(),
            Filter::BitPack => dtype == DType::Bool,
        }
    }
}

/// Where a tensor's bytes live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Storage {
    /// One contiguous, aligned, uncompressed run: can be memory-mapped.
    Raw,
    /// Independent chunks, each zstd-compressed after a filter or kept plain.
    Chunked,
}

impl Storage {
    pub fn name(self) -> &'static str {
        match self {
            Storage::Raw => "raw",
            Storage::Chunked => "chunked",
        }
    }

    /// The code of a 1.1 tensor record (spec §16.2).
    pub fn code(self) -> u8 {
        match self {
            Storage::Raw => 0,
            Storage::Chunked => 1,
        }
    }

    pub fn from_code(code: u8) -> Option<Storage> {
        match code {
            0 => Some(Storage::Raw),
            1 => Some(Storage::Chunked),
            _ => None,
        }
    }
}

/// One stored chunk of a tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkInfo {
    /// Absolute file offset of the stored bytes.
    pub offset: u64,
    /// Stored (possibly compressed) length.
    pub stored_len: u64,
    /// crc32c of the stored bytes.
    pub crc32c: u32,
    /// `true`: filter + zstd; `false`: the decoded bytes themselves.
    pub encoded: bool,
    /// Content hash of the decoded bytes (spec §16.3); `None` where unknown (a 1.0
    /// file's chunks).
    pub hash: Option<[u8; 16]>,
}

/// Everything the index says about one tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<u64>,
    pub storage: Storage,
    pub filter: Filter,
    /// Elements per chunk (the last chunk may hold fewer).
    pub chunk_elems: u64,
    pub chunks: Vec<ChunkInfo>,
}

impl TensorInfo {
    /// Number of elements (1 for a 0-d tensor).
    pub fn num_elements(&self) -> u64 {
        self.shape.iter().product()
    }

    /// Decoded size in bytes.
    pub fn nbytes(&self) -> u64 {
        self.num_elements() * self.dtype.size() as u64
    }

    /// Bytes the tensor occupies in the file.
    pub fn stored_bytes(&self) -> u64 {
        self.chunks.iter().map(|c| c.stored_len).sum()
    }

    /// Length of the leading axis (1 for a 0-d tensor).
    pub fn rows(&self) -> u64 {
        self.shape.first().copied().unwrap_or(1)
    }

    /// Elements in one row of the leading axis.
    pub fn row_elems(&self) -> u64 {
        self.shape.iter().skip(1).product()
    }

    /// Decoded bytes of chunk `i`.
    pub fn chunk_decoded_len(&self, i: usize) -> u64 {
        let start = i as u64 * self.chunk_elems;
        let end = (start + self.chunk_elems).min(self.num_elements());
        (end - start) * self.dtype.size() as u64
    }

    /// Whether the tensor is one aligned uncompressed run.
    pub fn is_raw(&self) -> bool {
        self.storage == Storage::Raw
    }

    /// For a raw tensor, its absolute byte range in the file.
    pub fn raw_range(&self) -> Option<std::ops::Range<u64>> {
        if !self.is_raw() {
            return None;
        }
        let start = self.chunks.first().map_or(0, |c| c.offset);
        Some(start..start + self.nbytes())
    }
}

// ---------------------------------------------------------------- superblock

/// The fixed 64 bytes at the start of an archive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Superblock {
    pub version: Version,
    pub required_features: u32,
    pub optional_features: u32,
    pub alignment: u32,
}

impl Superblock {
    /// A 1.0 superblock (no required features): what a [`FormatVersion::V1_0`](crate::FormatVersion) writer writes.
    pub fn new(alignment: u32) -> Self {
        Superblock {
            version: Version { major: 1, minor: 0 },
            required_features: 0,
            optional_features: 0,
            alignment,
        }
    }

    pub fn encode(&self) -> [u8; SUPERBLOCK_LEN] {
        let mut b = [0u8; SUPERBLOCK_LEN];
        b[0..8].copy_from_slice(&MAGIC);
        b[8..10].copy_from_slice(&self.version.major.to_le_bytes());
        b[10..12].copy_from_slice(&self.version.minor.to_le_bytes());
        b[12..16].copy_from_slice(&self.required_features.to_le_bytes());
        b[16..20].copy_from_slice(&self.optional_features.to_le_bytes());
        b[20..24].copy_from_slice(&self.alignment.to_le_bytes());
        let crc = crc32c::crc32c(&b[..60]);
        b[60..64].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Checks magic, checksum, version and features. `file_len` lets the error
    /// for a short file say "truncated" rather than "bad magic".
    pub fn decode(path: &str, b: &[u8], file_len: u64) -> Result<Superblock> {
        check_magic(path, b, file_len)?;
        if b.len() < SUPERBLOCK_LEN {
            return Err(Error::Truncated {
                path: path.into(),
                detail: format!(
                    "{} bytes, shorter than the {SUPERBLOCK_LEN}-byte superblock",
                    b.len()
                ),
            });
        }
        let stored = u32_at(b, 60);
        let actual = crc32c::crc32c(&b[..60]);
        if stored != actual {
            return Err(Error::ChecksumMismatch {
                path: path.into(),
                part: "the superblock".into(),
                expected: stored,
                actual,
            });
        }
        let version = Version {
            major: u16::from_le_bytes([b[8], b[9]]),
            minor: u16::from_le_bytes([b[10], b[11]]),
        };
        if version.major != READER_VERSION.major {
            return Err(Error::UnsupportedVersion {
                path: path.into(),
                found: version,
                supported: READER_VERSION,
            });
        }
        let required_features = u32_at(b, 12);
        let unknown = required_features & !KNOWN_REQUIRED_FEATURES;
        if unknown != 0 {
            return Err(Error::UnsupportedFeature {
                path: path.into(),
                detail: format!(
                    "required feature flags {unknown:#010x} (file version {version}, \
                     reader version {READER_VERSION})"
                ),
            });
        }
        let alignment = u32_at(b, 20);
        if !alignment.is_power_of_two() || !(MIN_ALIGNMENT..=MAX_ALIGNMENT).contains(&alignment) {
            return Err(Error::invalid_index(
                path,
                format!(
                    "superblock alignment {alignment} is not a power of two in \
                     {MIN_ALIGNMENT}..={MAX_ALIGNMENT}"
                ),
            ));
        }
        Ok(Superblock {
            version,
            required_features,
            optional_features: u32_at(b, 16),
            alignment,
        })
    }
}

fn check_magic(path: &str, b: &[u8], file_len: u64) -> Result<()> {
    let n = b.len().min(8);
    if b[..n] == MAGIC[..n] && n < 8 {
        return Err(Error::Truncated {
            path: path.into(),
            detail: format!("only {file_len} bytes"),
        });
    }
    if n == 8 && b[..8] == MAGIC {
        return Ok(());
    }
    let detail = if b.starts_with(b"\x89BPZ\n\x1a\n") {
        "its first bytes had \\r\\n turned into \\n: it was copied in text mode".to_string()
    } else if b.starts_with(b"\x89BPZ\r\r\n") || b.starts_with(b"\x89BPZ\r\n\x1a\r\n") {
        "its first bytes had \\n turned into \\r\\n: it was copied in text mode".to_string()
    } else if b.len() >= 4 && b[1..4] == *b"BPZ" {
        "its first byte was altered: it was copied through a 7-bit channel".to_string()
    } else if b
        .first()
        .is_some_and(|&c| c == 0x80 || c == 0x81 || (0x82..=0x8f).contains(&c))
        || b.first()
            .is_some_and(|&c| c & 0xf0 == 0x80 || c & 0xf0 == 0x90 || c == 0xde || c == 0xdf)
    {
        "the first bytes look like msgpack: a BrainPy/flax .bp checkpoint?".to_string()
    } else if b.starts_with(b"PK\x03\x04") {
        "the first bytes are a zip header: a .npz or torch file?".to_string()
    } else if b.starts_with(b"\x89HDF") {
        "the first bytes are an HDF5 header".to_string()
    } else {
        let shown: Vec<String> = b.iter().take(8).map(|c| format!("{c:02x}")).collect();
        format!("first bytes {}", shown.join(" "))
    };
    Err(Error::BadMagic {
        path: path.into(),
        detail,
    })
}

// ------------------------------------------------------------------- trailer

/// The fixed 32 bytes at the end of an archive: where the index is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trailer {
    pub index_offset: u64,
    pub index_len: u64,
    pub index_crc32c: u32,
}

impl Trailer {
    pub fn encode(&self) -> [u8; TRAILER_LEN] {
        let mut b = [0u8; TRAILER_LEN];
        b[0..8].copy_from_slice(&self.index_offset.to_le_bytes());
        b[8..16].copy_from_slice(&self.index_len.to_le_bytes());
        b[16..20].copy_from_slice(&self.index_crc32c.to_le_bytes());
        let crc = crc32c::crc32c(&b[..20]);
        b[20..24].copy_from_slice(&crc.to_le_bytes());
        b[24..32].copy_from_slice(&END_MAGIC);
        b
    }

    /// Decodes and checks the trailer, given the last `TRAILER_LEN` bytes of a
    /// file of `file_len` bytes.
    pub fn decode(path: &str, b: &[u8; TRAILER_LEN], file_len: u64) -> Result<Trailer> {
        if b[24..32] != END_MAGIC {
            return Err(Error::Truncated {
                path: path.into(),
                detail: format!(
                    "the end marker is missing from its last bytes ({file_len} bytes in all): \
                     the file was cut short or never completely written"
                ),
            });
        }
        let stored = u32_at(b, 20);
        let actual = crc32c::crc32c(&b[..20]);
        if stored != actual {
            return Err(Error::ChecksumMismatch {
                path: path.into(),
                part: "the trailer".into(),
                expected: stored,
                actual,
            });
        }
        let t = Trailer {
            index_offset: u64_at(b, 0),
            index_len: u64_at(b, 8),
            index_crc32c: u32_at(b, 16),
        };
        if t.index_len > MAX_INDEX_BYTES {
            return Err(Error::limit(
                path,
                "the index length",
                t.index_len,
                MAX_INDEX_BYTES,
            ));
        }
        let expected_end = t
            .index_offset
            .checked_add(t.index_len)
            .and_then(|v| v.checked_add(TRAILER_LEN as u64));
        if t.index_offset < SUPERBLOCK_LEN as u64 || expected_end != Some(file_len) {
            return Err(Error::invalid_index(
                path,
                format!(
                    "the trailer places the index at {}..+{}, which does not end where the \
                     trailer starts (file length {file_len})",
                    t.index_offset, t.index_len
                ),
            ));
        }
        Ok(t)
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

// --------------------------------------------------------------------- index

/// Who wrote an archive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriterInfo {
    pub name: String,
    pub version: String,
}

/// Deepest nesting of arrays/objects in a JSON text, scanning bytes only (so a
/// hostile index is refused before the recursive parser sees it).
pub fn json_depth(text: &[u8]) -> usize {
    let (mut depth, mut max, mut in_str, mut escaped) = (0usize, 0usize, false, false);
    for &c in text {
        if in_str {
            if escaped {
                escaped = false;
            } else if c == b'\\' {
                escaped = true;
            } else if c == b'"' {
                in_str = false;
            }
            continue;
        }
        match c {
            b'"' => in_str = true,
            b'[' | b'{' => {
                depth += 1;
                max = max.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}
