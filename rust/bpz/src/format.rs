//! The bytes on disk: superblock, trailer, index, data types and limits.
//! `spec/FORMAT.md` is the normative description; this module implements it.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result, Version};

/// First eight bytes of every archive. The high byte catches 7-bit transfers,
/// `\r\n` catches CRLF→LF conversion, `\x1a` stops `type` on Windows, the final
/// `\n` catches LF→CRLF conversion (the same trick as PNG).
pub const MAGIC: [u8; 8] = *b"\x89BPZ\r\n\x1a\n";
/// Last eight bytes of every complete archive.
pub const END_MAGIC: [u8; 8] = *b"BPZ_END\n";

pub const SUPERBLOCK_LEN: usize = 64;
pub const TRAILER_LEN: usize = 32;

/// The version this crate writes, and the newest it reads.
pub const FORMAT_VERSION: Version = Version { major: 1, minor: 0 };

/// Required-feature bits known to this reader (none are defined in 1.0).
pub const KNOWN_REQUIRED_FEATURES: u32 = 0;

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
    pub fn new(alignment: u32) -> Self {
        Superblock {
            version: FORMAT_VERSION,
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
        if version.major != FORMAT_VERSION.major {
            return Err(Error::UnsupportedVersion {
                path: path.into(),
                found: version,
                supported: FORMAT_VERSION,
            });
        }
        let required_features = u32_at(b, 12);
        let unknown = required_features & !KNOWN_REQUIRED_FEATURES;
        if unknown != 0 {
            return Err(Error::UnsupportedFeature {
                path: path.into(),
                detail: format!(
                    "required feature flags {unknown:#010x} (file version {version}, \
                     reader version {FORMAT_VERSION})"
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
    } else if b.first().is_some_and(|&c| c == 0x80 || c == 0x81 || (0x82..=0x8f).contains(&c))
        || b.first().is_some_and(|&c| c & 0xf0 == 0x80 || c & 0xf0 == 0x90 || c == 0xde || c == 0xdf)
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
            return Err(Error::limit(path, "the index length", t.index_len, MAX_INDEX_BYTES));
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

/// The index as serialised: a JSON object. Unknown fields are ignored.
#[derive(Serialize, Deserialize)]
pub(crate) struct RawIndex {
    pub tensors: Vec<RawTensor>,
    #[serde(default, deserialize_with = "strict_value")]
    pub tree: Value,
    #[serde(default, deserialize_with = "strict_value")]
    pub metadata: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub writer: Option<WriterInfo>,
}

#[derive(Serialize, Deserialize)]
pub(crate) struct RawTensor {
    pub name: String,
    pub dtype: String,
    pub shape: Vec<u64>,
    pub storage: String,
    pub filter: String,
    pub chunk_elems: u64,
    /// `[offset, stored_len, crc32c, encoded]` per chunk.
    pub chunks: Vec<[u64; 4]>,
}

impl From<&TensorInfo> for RawTensor {
    fn from(t: &TensorInfo) -> Self {
        RawTensor {
            name: t.name.clone(),
            dtype: t.dtype.name().into(),
            shape: t.shape.clone(),
            storage: t.storage.name().into(),
            filter: t.filter.name().into(),
            chunk_elems: t.chunk_elems,
            chunks: t
                .chunks
                .iter()
                .map(|c| [c.offset, c.stored_len, c.crc32c as u64, c.encoded as u64])
                .collect(),
        }
    }
}

/// Like `Value`'s own deserialisation, but an object with two members of the
/// same name is an error rather than "last one wins" (two readers must never
/// see different values in one file).
fn strict_value<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Value, D::Error> {
    d.deserialize_any(StrictVisitor)
}

struct StrictVisitor;

impl<'de> serde::de::Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> std::result::Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> std::result::Result<Value, E> {
        Ok(v.into())
    }
    fn visit_u64<E>(self, v: u64) -> std::result::Result<Value, E> {
        Ok(v.into())
    }
    fn visit_f64<E: serde::de::Error>(self, v: f64) -> std::result::Result<Value, E> {
        serde_json::Number::from_f64(v).map(Value::Number).ok_or_else(|| E::custom("non-finite number"))
    }
    fn visit_str<E>(self, v: &str) -> std::result::Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> std::result::Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> std::result::Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> std::result::Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> std::result::Result<Value, D::Error> {
        strict_value(d)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(Strict(v)) = seq.next_element()? {
            items.push(v);
        }
        Ok(Value::Array(items))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> std::result::Result<Value, A::Error> {
        let mut out = serde_json::Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if out.contains_key(&key) {
                return Err(serde::de::Error::custom(format!("duplicate member {key:?}")));
            }
            let Strict(v) = map.next_value()?;
            out.insert(key, v);
        }
        Ok(Value::Object(out))
    }
}

struct Strict(Value);

impl<'de> Deserialize<'de> for Strict {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        strict_value(d).map(Strict)
    }
}

/// Checks a whole JSON text without building it: valid UTF-8 and escapes, finite numbers
/// and no object with two members of the same name — also inside members a reader ignores,
/// which serde skips unchecked. The caller has bounded the nesting (see [`json_depth`]).
pub fn check_json(text: &[u8]) -> std::result::Result<(), serde_json::Error> {
    let mut de = serde_json::Deserializer::from_slice(text);
    de.disable_recursion_limit();
    Checked::deserialize(&mut de)?;
    de.end()
}

struct Checked;

impl<'de> Deserialize<'de> for Checked {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        d.deserialize_any(CheckVisitor)
    }
}

struct CheckVisitor;

impl<'de> serde::de::Visitor<'de> for CheckVisitor {
    type Value = Checked;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> std::result::Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_i64<E>(self, _: i64) -> std::result::Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_u64<E>(self, _: u64) -> std::result::Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_f64<E: serde::de::Error>(self, v: f64) -> std::result::Result<Checked, E> {
        if v.is_finite() {
            Ok(Checked)
        } else {
            Err(E::custom("non-finite number"))
        }
    }
    fn visit_str<E>(self, _: &str) -> std::result::Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_unit<E>(self) -> std::result::Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<Checked, A::Error> {
        while seq.next_element::<Checked>()?.is_some() {}
        Ok(Checked)
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> std::result::Result<Checked, A::Error> {
        let mut keys = std::collections::HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            map.next_value::<Checked>()?;
            if keys.contains(&key) {
                return Err(serde::de::Error::custom(format!("an object has two members named {key:?}")));
            }
            keys.insert(key);
        }
        Ok(Checked)
    }
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

/// Parses and validates the index of a file whose data region is
/// `SUPERBLOCK_LEN..data_end`. Every rule of the spec's "Validation" section is
/// checked here, so later reads can index without further checks.
pub(crate) fn parse_index(
    path: &str,
    bytes: &[u8],
    alignment: u32,
    data_end: u64,
) -> Result<(Vec<TensorInfo>, Value, Value, Option<WriterInfo>)> {
    let depth = json_depth(bytes);
    if depth > MAX_JSON_DEPTH {
        return Err(Error::limit(path, "the index nesting depth", depth as u64, MAX_JSON_DEPTH as u64));
    }
    // The byte scan above bounds the nesting, so serde_json's own recursion limit (which
    // stops one level short of the spec's 128) is not needed.
    check_json(bytes).map_err(|e| Error::invalid_index(path, format!("not valid JSON: {e}")))?;
    let mut de = serde_json::Deserializer::from_slice(bytes);
    de.disable_recursion_limit();
    let raw = RawIndex::deserialize(&mut de)
        .and_then(|raw| de.end().map(|()| raw))
        .map_err(|e| Error::invalid_index(path, format!("not a valid index JSON object: {e}")))?;
    if raw.tensors.len() > MAX_TENSORS {
        return Err(Error::limit(path, "the tensor count", raw.tensors.len() as u64, MAX_TENSORS as u64));
    }
    let mut names = std::collections::HashSet::with_capacity(raw.tensors.len());
    let mut extents: Vec<(u64, u64, usize)> = Vec::new();
    let mut tensors = Vec::with_capacity(raw.tensors.len());
    for (ti, rt) in raw.tensors.into_iter().enumerate() {
        let t = validate_tensor(path, rt, alignment, data_end)?;
        if !names.insert(t.name.clone()) {
            return Err(Error::invalid_index(path, format!("tensor name {:?} appears twice", t.name)));
        }
        extents.extend(t.chunks.iter().filter(|c| c.stored_len > 0).map(|c| (c.offset, c.offset + c.stored_len, ti)));
        tensors.push(t);
    }
    extents.sort_unstable();
    for w in extents.windows(2) {
        if w[1].0 < w[0].1 {
            let (a, b) = (&tensors[w[0].2].name, &tensors[w[1].2].name);
            return Err(Error::invalid_index(
                path,
                format!("stored bytes of tensors {a:?} and {b:?} overlap at offset {}", w[1].0),
            ));
        }
    }
    if !(raw.tree.is_object() || raw.tree.is_null()) {
        return Err(Error::invalid_index(path, "the tree is neither an object nor null"));
    }
    check_tree_refs(path, &raw.tree, &names)?;
    Ok((tensors, raw.tree, raw.metadata, raw.writer))
}

fn validate_tensor(path: &str, rt: RawTensor, alignment: u32, data_end: u64) -> Result<TensorInfo> {
    let name = rt.name;
    let bad = |detail: String| Error::invalid_index(path, format!("tensor {name:?}: {detail}"));
    if name.len() > MAX_NAME_BYTES {
        return Err(Error::limit(path, format!("the length of tensor name {:?}…", &name[..name.floor_char_boundary_compat(40)]), name.len() as u64, MAX_NAME_BYTES as u64));
    }
    if name.contains('\0') {
        return Err(bad("the name contains a NUL character".into()));
    }
    let dtype = DType::from_name(&rt.dtype).ok_or_else(|| Error::UnsupportedFeature {
        path: path.into(),
        detail: format!("tensor {name:?} has dtype {:?}", rt.dtype),
    })?;
    if rt.shape.len() > MAX_RANK {
        return Err(Error::limit(path, format!("the rank of tensor {name:?}"), rt.shape.len() as u64, MAX_RANK as u64));
    }
    let nelems = rt
        .shape
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d))
        .filter(|&n| n <= MAX_SAFE_INTEGER);
    let nbytes = nelems.and_then(|n| n.checked_mul(dtype.size() as u64)).filter(|&n| n <= MAX_SAFE_INTEGER);
    let (Some(nelems), Some(nbytes)) = (nelems, nbytes) else {
        return Err(Error::limit(path, format!("the byte size of tensor {name:?} (shape {:?})", rt.shape), u64::MAX, MAX_SAFE_INTEGER));
    };
    let storage = match rt.storage.as_str() {
        "raw" => Storage::Raw,
        "chunked" => Storage::Chunked,
        other => {
            return Err(Error::UnsupportedFeature {
                path: path.into(),
                detail: format!("tensor {name:?} has storage {other:?}"),
            })
        }
    };
    let filter = Filter::from_name(&rt.filter).ok_or_else(|| Error::UnsupportedFeature {
        path: path.into(),
        detail: format!("tensor {name:?} has filter {:?}", rt.filter),
    })?;
    if !filter.applies_to(dtype) {
        return Err(bad(format!("filter {} is not defined for dtype {dtype}", filter.name())));
    }
    if storage == Storage::Raw && filter != Filter::None {
        return Err(bad("a raw tensor must have filter \"none\"".into()));
    }
    let chunk_elems = rt.chunk_elems;
    if chunk_elems > MAX_SAFE_INTEGER {
        return Err(Error::limit(path, format!("chunk_elems of tensor {name:?}"), chunk_elems, MAX_SAFE_INTEGER));
    }
    if chunk_elems == 0 {
        return Err(bad("chunk_elems is 0".into()));
    }
    let chunk_bytes = chunk_elems.saturating_mul(dtype.size() as u64);
    let largest_chunk = chunk_elems.min(nelems) * dtype.size() as u64;
    if largest_chunk > MAX_CHUNK_BYTES {
        return Err(Error::limit(path, format!("the chunk size of tensor {name:?} in bytes"), largest_chunk, MAX_CHUNK_BYTES));
    }
    let expected_chunks = if nbytes == 0 { 0 } else { nelems.div_ceil(chunk_elems) };
    if expected_chunks > MAX_CHUNKS_PER_TENSOR as u64 {
        return Err(Error::limit(path, format!("the chunk count of tensor {name:?}"), expected_chunks, MAX_CHUNKS_PER_TENSOR as u64));
    }
    if rt.chunks.len() as u64 != expected_chunks {
        return Err(bad(format!(
            "{} chunks listed, but {nelems} elements in chunks of {chunk_elems} need {expected_chunks}",
            rt.chunks.len()
        )));
    }
    let mut info = TensorInfo {
        name: String::new(),
        dtype,
        shape: rt.shape,
        storage,
        filter,
        chunk_elems,
        chunks: Vec::with_capacity(rt.chunks.len()),
    };
    for (i, c) in rt.chunks.iter().enumerate() {
        let [offset, stored_len, crc, encoded] = *c;
        let decoded = info.chunk_decoded_len(i);
        let end = offset.checked_add(stored_len);
        if offset < SUPERBLOCK_LEN as u64 || end.map_or(true, |e| e > data_end) {
            return Err(bad(format!(
                "chunk {i} at {offset}..+{stored_len} lies outside the data region {SUPERBLOCK_LEN}..{data_end}"
            )));
        }
        if crc > u32::MAX as u64 {
            return Err(bad(format!("chunk {i} has checksum {crc}, wider than 32 bits")));
        }
        let encoded = match encoded {
            0 => false,
            1 => true,
            v => return Err(bad(format!("chunk {i} has encoding {v}, expected 0 or 1"))),
        };
        if stored_len == 0 {
            return Err(bad(format!("chunk {i} has stored length 0")));
        }
        if !encoded && stored_len != decoded {
            return Err(bad(format!("plain chunk {i} stores {stored_len} bytes, but holds {decoded}")));
        }
        if storage == Storage::Raw {
            if encoded {
                return Err(bad(format!("chunk {i} of a raw tensor is encoded")));
            }
            let expected_offset = info.chunks.first().map_or(offset, |c0: &ChunkInfo| c0.offset + i as u64 * chunk_bytes);
            if offset != expected_offset {
                return Err(bad(format!("chunk {i} of a raw tensor is not contiguous with chunk 0")));
            }
            if i == 0 && offset % alignment as u64 != 0 {
                return Err(bad(format!("raw data at offset {offset} is not aligned to {alignment} bytes")));
            }
        }
        info.chunks.push(ChunkInfo { offset, stored_len, crc32c: crc as u32, encoded });
    }
    info.name = name;
    Ok(info)
}

trait FloorCharBoundary {
    fn floor_char_boundary_compat(&self, i: usize) -> usize;
}

impl FloorCharBoundary for String {
    fn floor_char_boundary_compat(&self, mut i: usize) -> usize {
        i = i.min(self.len());
        while !self.is_char_boundary(i) {
            i -= 1;
        }
        i
    }
}

/// Every tree node with a `"tensor"` field must name a tensor of the index.
fn check_tree_refs(path: &str, tree: &Value, names: &std::collections::HashSet<String>) -> Result<()> {
    match tree {
        Value::Object(map) => {
            if let Some(target) = map.get("tensor") {
                return match target.as_str() {
                    Some(n) if names.contains(n) => Ok(()),
                    Some(n) => Err(Error::invalid_index(path, format!("the tree refers to a missing tensor {n:?}"))),
                    None => Err(Error::invalid_index(path, "a tree \"tensor\" node does not hold a string")),
                };
            }
            map.values().try_for_each(|v| check_tree_refs(path, v, names))
        }
        Value::Array(items) => items.iter().try_for_each(|v| check_tree_refs(path, v, names)),
        _ => Ok(()),
    }
}
