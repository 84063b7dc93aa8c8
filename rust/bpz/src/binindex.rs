//! The byte layout of a format 1.1 index (spec/FORMAT.md §16.2): fixed-size records
//! and their encoding, shared by the writer and the reader. No I/O and no validation
//! beyond the layout itself: the reader (`binindex_read.rs`) applies §16.5's rules.

use crate::error::Version;
use crate::format::{ChunkInfo, SUPERBLOCK_LEN, TRAILER_LEN};

/// First eight bytes of a binary index.
pub const INDEX_MAGIC: [u8; 8] = *b"BPZINDEX";
/// The fixed part of the head, before the superblock copy.
pub const HEAD_FIXED_LEN: usize = 96;
/// Where the superblock copy sits in the head.
pub const SUPERBLOCK_COPY_AT: usize = HEAD_FIXED_LEN;
/// Where the section directory starts in the head.
pub const DIRECTORY_AT: usize = SUPERBLOCK_COPY_AT + SUPERBLOCK_LEN;
pub const DIR_ENTRY_LEN: usize = 32;
pub const TENSOR_RECORD_LEN: usize = 64;
pub const CHUNK_RECORD_LEN: usize = 40;
pub const VERSION_RECORD_LEN: usize = 48;
pub const MIN_SECTIONS: usize = 7;
pub const MAX_SECTIONS: usize = 64;
/// The shortest possible index: a head with no directory (trailer step 6 of §16.5).
pub const MIN_INDEX_LEN: u64 = DIRECTORY_AT as u64;
/// Every version's trailer ends at a multiple of this (§16.1).
pub const VERSION_END_ALIGN: u64 = 64;
/// Required feature bit 0: the trailer points to a binary index (§16.1).
pub const REQUIRED_BINARY_INDEX: u32 = 1;
/// The format version of a file with a binary index.
pub const FORMAT_VERSION_1_1: Version = Version { major: 1, minor: 1 };
/// A 1.0 file's format version (what `FormatVersion::V1_0` writes).
pub const FORMAT_VERSION_1_0: Version = Version { major: 1, minor: 0 };

/// The content hash of a chunk's decoded bytes (§16.3): BLAKE3, first 16 bytes.
pub fn content_hash(decoded: &[u8]) -> [u8; 16] {
    let full = blake3::hash(decoded);
    let mut h = [0u8; 16];
    h.copy_from_slice(&full.as_bytes()[..16]);
    h
}

/// What a section holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SectionKind {
    Versions,
    Tensors,
    Names,
    Shapes,
    Chunks,
    Tree,
    Metadata,
    Writer,
    /// A kind this reader does not know (a later minor version's): ignored.
    Unknown(u32),
}

impl SectionKind {
    /// The sections every index has, in the order the reference writer writes them.
    pub const REQUIRED: [SectionKind; 7] = [
        SectionKind::Versions,
        SectionKind::Tensors,
        SectionKind::Names,
        SectionKind::Shapes,
        SectionKind::Chunks,
        SectionKind::Tree,
        SectionKind::Metadata,
    ];

    pub fn code(self) -> u32 {
        match self {
            SectionKind::Versions => 1,
            SectionKind::Tensors => 2,
            SectionKind::Names => 3,
            SectionKind::Shapes => 4,
            SectionKind::Chunks => 5,
            SectionKind::Tree => 6,
            SectionKind::Metadata => 7,
            SectionKind::Writer => 8,
            SectionKind::Unknown(code) => code,
        }
    }

    pub fn from_code(code: u32) -> SectionKind {
        match code {
            1 => SectionKind::Versions,
            2 => SectionKind::Tensors,
            3 => SectionKind::Names,
            4 => SectionKind::Shapes,
            5 => SectionKind::Chunks,
            6 => SectionKind::Tree,
            7 => SectionKind::Metadata,
            8 => SectionKind::Writer,
            other => SectionKind::Unknown(other),
        }
    }

    /// The name the spec gives the section (for error messages).
    pub fn name(self) -> String {
        match self {
            SectionKind::Versions => "versions".into(),
            SectionKind::Tensors => "tensors".into(),
            SectionKind::Names => "names".into(),
            SectionKind::Shapes => "shapes".into(),
            SectionKind::Chunks => "chunks".into(),
            SectionKind::Tree => "tree".into(),
            SectionKind::Metadata => "metadata".into(),
            SectionKind::Writer => "writer".into(),
            SectionKind::Unknown(code) => format!("of unknown kind {code}"),
        }
    }

    pub fn is_required(self) -> bool {
        SectionKind::REQUIRED.contains(&self)
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// One entry of the section directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SectionEntry {
    pub kind: SectionKind,
    /// Relative to the index start.
    pub offset: u64,
    pub length: u64,
    /// crc32c of the section's bytes.
    pub crc: u32,
}

impl SectionEntry {
    pub fn encode(&self) -> [u8; DIR_ENTRY_LEN] {
        let mut b = [0u8; DIR_ENTRY_LEN];
        put_u32(&mut b, 0, self.kind.code());
        put_u64(&mut b, 8, self.offset);
        put_u64(&mut b, 16, self.length);
        put_u32(&mut b, 24, self.crc);
        b
    }

    pub fn decode(b: &[u8; DIR_ENTRY_LEN]) -> SectionEntry {
        SectionEntry {
            kind: SectionKind::from_code(u32_at(b, 0)),
            offset: u64_at(b, 8),
            length: u64_at(b, 16),
            crc: u32_at(b, 24),
        }
    }

    /// The section's byte range relative to the index start (`None` if it overflows).
    pub fn range(&self) -> Option<std::ops::Range<u64>> {
        Some(self.offset..self.offset.checked_add(self.length)?)
    }
}

/// The head of an index: fixed fields, the superblock copy and the directory. The
/// trailer's `index_crc` is the crc32c of [`encode`](IndexHead::encode)'s bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexHead {
    pub version: u64,
    pub time_ns: u64,
    pub data_start: u64,
    pub tensor_count: u64,
    pub chunk_count: u64,
    pub superblock: [u8; SUPERBLOCK_LEN],
    pub sections: Vec<SectionEntry>,
}

impl IndexHead {
    /// Bytes of a head with `section_count` directory entries.
    pub fn len_for(section_count: usize) -> usize {
        DIRECTORY_AT + section_count * DIR_ENTRY_LEN
    }

    pub fn head_len(&self) -> usize {
        IndexHead::len_for(self.sections.len())
    }

    /// The magic and the section count from the fixed part (the first
    /// [`HEAD_FIXED_LEN`] bytes), to learn how long the head is before reading it.
    pub fn peek(fixed: &[u8; HEAD_FIXED_LEN]) -> ([u8; 8], u32) {
        (fixed[0..8].try_into().unwrap(), u32_at(fixed, 48))
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; self.head_len()];
        b[0..8].copy_from_slice(&INDEX_MAGIC);
        put_u64(&mut b, 8, self.version);
        put_u64(&mut b, 16, self.time_ns);
        put_u64(&mut b, 24, self.data_start);
        put_u64(&mut b, 32, self.tensor_count);
        put_u64(&mut b, 40, self.chunk_count);
        put_u32(&mut b, 48, self.sections.len() as u32);
        b[SUPERBLOCK_COPY_AT..DIRECTORY_AT].copy_from_slice(&self.superblock);
        for (i, s) in self.sections.iter().enumerate() {
            let at = DIRECTORY_AT + i * DIR_ENTRY_LEN;
            b[at..at + DIR_ENTRY_LEN].copy_from_slice(&s.encode());
        }
        b
    }

    /// Decodes a head whose bytes `head` start at the index start. `None` if `head` is
    /// shorter than the head its section count announces (the magic is not checked:
    /// see [`peek`](IndexHead::peek)).
    pub fn decode(head: &[u8]) -> Option<IndexHead> {
        if head.len() < DIRECTORY_AT {
            return None;
        }
        let count = u32_at(head, 48) as usize;
        if head.len() < IndexHead::len_for(count) {
            return None;
        }
        let sections = (0..count)
            .map(|i| {
                let at = DIRECTORY_AT + i * DIR_ENTRY_LEN;
                SectionEntry::decode(head[at..at + DIR_ENTRY_LEN].try_into().unwrap())
            })
            .collect();
        Some(IndexHead {
            version: u64_at(head, 8),
            time_ns: u64_at(head, 16),
            data_start: u64_at(head, 24),
            tensor_count: u64_at(head, 32),
            chunk_count: u64_at(head, 40),
            superblock: head[SUPERBLOCK_COPY_AT..DIRECTORY_AT].try_into().unwrap(),
            sections,
        })
    }

    /// The entry of a section kind (the first one, if a broken index has several).
    pub fn section(&self, kind: SectionKind) -> Option<&SectionEntry> {
        self.sections.iter().find(|s| s.kind == kind)
    }
}

/// Storage codes of a tensor record.
pub const STORAGE_RAW: u8 = 0;
pub const STORAGE_CHUNKED: u8 = 1;

/// One 64-byte tensor record. Codes are kept as stored, so that a reader can name an
/// unknown one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TensorRecord {
    pub name_offset: u64,
    pub name_length: u32,
    pub position: u32,
    /// In dimensions, not bytes.
    pub shape_offset: u64,
    pub chunk_elems: u64,
    pub first_chunk: u64,
    pub chunk_count: u32,
    pub dtype: u8,
    pub storage: u8,
    pub filter: u8,
    pub rank: u8,
    pub chunks_crc: u32,
    /// Bytes 52..60: zero in a valid record.
    pub reserved: [u8; 8],
    pub record_crc: u32,
}

impl TensorRecord {
    pub fn encode(&self) -> [u8; TENSOR_RECORD_LEN] {
        let mut b = [0u8; TENSOR_RECORD_LEN];
        put_u64(&mut b, 0, self.name_offset);
        put_u32(&mut b, 8, self.name_length);
        put_u32(&mut b, 12, self.position);
        put_u64(&mut b, 16, self.shape_offset);
        put_u64(&mut b, 24, self.chunk_elems);
        put_u64(&mut b, 32, self.first_chunk);
        put_u32(&mut b, 40, self.chunk_count);
        b[44] = self.dtype;
        b[45] = self.storage;
        b[46] = self.filter;
        b[47] = self.rank;
        put_u32(&mut b, 48, self.chunks_crc);
        b[52..60].copy_from_slice(&self.reserved);
        put_u32(&mut b, 60, self.record_crc);
        b
    }

    pub fn decode(b: &[u8; TENSOR_RECORD_LEN]) -> TensorRecord {
        TensorRecord {
            name_offset: u64_at(b, 0),
            name_length: u32_at(b, 8),
            position: u32_at(b, 12),
            shape_offset: u64_at(b, 16),
            chunk_elems: u64_at(b, 24),
            first_chunk: u64_at(b, 32),
            chunk_count: u32_at(b, 40),
            dtype: b[44],
            storage: b[45],
            filter: b[46],
            rank: b[47],
            chunks_crc: u32_at(b, 48),
            reserved: b[52..60].try_into().unwrap(),
            record_crc: u32_at(b, 60),
        }
    }

    /// The `record_crc` a record's bytes call for: crc32c of bytes 0..60 of
    /// `encoded`, then the name bytes, then the shape as u64 little-endian.
    pub fn crc_of(encoded: &[u8; TENSOR_RECORD_LEN], name: &[u8], shape: &[u64]) -> u32 {
        let mut crc = crc32c::crc32c(&encoded[..60]);
        crc = crc32c::crc32c_append(crc, name);
        for d in shape {
            crc = crc32c::crc32c_append(crc, &d.to_le_bytes());
        }
        crc
    }

    /// Sets `record_crc` from the other fields, the name and the shape; returns the bytes.
    pub fn seal(&mut self, name: &[u8], shape: &[u64]) -> [u8; TENSOR_RECORD_LEN] {
        let mut b = self.encode();
        self.record_crc = TensorRecord::crc_of(&b, name, shape);
        put_u32(&mut b, 60, self.record_crc);
        b
    }
}

/// One 40-byte chunk record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkRecord {
    pub offset: u64,
    pub stored_len: u64,
    pub crc32c: u32,
    /// 0 or 1 in a valid record (kept as stored).
    pub encoded: u8,
    /// Bytes 21..24: zero in a valid record.
    pub reserved: [u8; 3],
    pub hash: [u8; 16],
}

impl ChunkRecord {
    pub fn encode(&self) -> [u8; CHUNK_RECORD_LEN] {
        let mut b = [0u8; CHUNK_RECORD_LEN];
        put_u64(&mut b, 0, self.offset);
        put_u64(&mut b, 8, self.stored_len);
        put_u32(&mut b, 16, self.crc32c);
        b[20] = self.encoded;
        b[21..24].copy_from_slice(&self.reserved);
        b[24..40].copy_from_slice(&self.hash);
        b
    }

    pub fn decode(b: &[u8; CHUNK_RECORD_LEN]) -> ChunkRecord {
        ChunkRecord {
            offset: u64_at(b, 0),
            stored_len: u64_at(b, 8),
            crc32c: u32_at(b, 16),
            encoded: b[20],
            reserved: b[21..24].try_into().unwrap(),
            hash: b[24..40].try_into().unwrap(),
        }
    }

    /// The record of a chunk whose hash is known (`None` for a chunk without one).
    pub fn from_chunk(c: &ChunkInfo) -> Option<ChunkRecord> {
        Some(ChunkRecord {
            offset: c.offset,
            stored_len: c.stored_len,
            crc32c: c.crc32c,
            encoded: c.encoded as u8,
            reserved: [0; 3],
            hash: c.hash?,
        })
    }

    /// The chunk, if `encoded` is 0 or 1 (reserved bytes are not looked at).
    pub fn to_chunk(&self) -> Option<ChunkInfo> {
        let encoded = match self.encoded {
            0 => false,
            1 => true,
            _ => return None,
        };
        Some(ChunkInfo {
            offset: self.offset,
            stored_len: self.stored_len,
            crc32c: self.crc32c,
            encoded,
            hash: Some(self.hash),
        })
    }
}

/// One 48-byte record of the `versions` section: an earlier version still in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VersionRecord {
    pub version: u64,
    pub time_ns: u64,
    pub data_start: u64,
    pub index_offset: u64,
    pub index_length: u64,
    /// That version's head crc, as in its trailer.
    pub index_crc: u32,
    /// Bytes 44..48: zero in a valid record.
    pub reserved: u32,
}

impl VersionRecord {
    pub fn encode(&self) -> [u8; VERSION_RECORD_LEN] {
        let mut b = [0u8; VERSION_RECORD_LEN];
        put_u64(&mut b, 0, self.version);
        put_u64(&mut b, 8, self.time_ns);
        put_u64(&mut b, 16, self.data_start);
        put_u64(&mut b, 24, self.index_offset);
        put_u64(&mut b, 32, self.index_length);
        put_u32(&mut b, 40, self.index_crc);
        put_u32(&mut b, 44, self.reserved);
        b
    }

    pub fn decode(b: &[u8; VERSION_RECORD_LEN]) -> VersionRecord {
        VersionRecord {
            version: u64_at(b, 0),
            time_ns: u64_at(b, 8),
            data_start: u64_at(b, 16),
            index_offset: u64_at(b, 24),
            index_length: u64_at(b, 32),
            index_crc: u32_at(b, 40),
            reserved: u32_at(b, 44),
        }
    }

    /// The end of this version's trailer (`None` on overflow).
    pub fn end(&self) -> Option<u64> {
        self.index_offset
            .checked_add(self.index_length)?
            .checked_add(TRAILER_LEN as u64)
    }

    /// §16.4's bytes added: `end − data_start` (`None` if the record is inconsistent).
    pub fn bytes_added(&self) -> Option<u64> {
        self.end()?.checked_sub(self.data_start)
    }
}

/// Zero bytes to put after an index of `unpadded` bytes starting at `index_offset` so
/// that its trailer ends at a multiple of [`VERSION_END_ALIGN`].
pub fn index_padding(index_offset: u64, unpadded: u64) -> u64 {
    let end = index_offset + unpadded + TRAILER_LEN as u64;
    (VERSION_END_ALIGN - end % VERSION_END_ALIGN) % VERSION_END_ALIGN
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{DType, Filter, Storage};
    use proptest::prelude::*;

    fn hex(b: &[u8]) -> String {
        b.iter().map(|c| format!("{c:02x}")).collect()
    }

    /// The BLAKE3 specification's test vectors (input byte i = i mod 251), first 16 bytes.
    #[test]
    fn content_hash_is_truncated_blake3() {
        assert_eq!(hex(&content_hash(b"")), "af1349b9f5f9a1a6a0404dea36dcc949");
        let input: Vec<u8> = (0..1024u32).map(|i| (i % 251) as u8).collect();
        assert_eq!(
            hex(&content_hash(&input[..1])),
            "2d3adedff11b61f14c886e35afa03673"
        );
        assert_eq!(
            hex(&content_hash(&input)),
            "42214739f095a406f3fc83deb889744a"
        );
    }

    #[test]
    fn section_kinds_round_trip() {
        for code in 0..20u32 {
            assert_eq!(SectionKind::from_code(code).code(), code);
        }
        assert_eq!(SectionKind::REQUIRED.len(), MIN_SECTIONS);
        assert!(!SectionKind::Writer.is_required());
        assert_eq!(SectionKind::Unknown(99).name(), "of unknown kind 99");
    }

    #[test]
    fn codes_round_trip_and_match_the_spec() {
        for (i, d) in DType::ALL.iter().enumerate() {
            assert_eq!(d.code(), i as u8 + 1);
            assert_eq!(DType::from_code(d.code()), Some(*d));
        }
        assert_eq!(DType::from_code(0), None);
        assert_eq!(DType::from_code(21), None);
        for (code, f) in [
            (0, Filter::None),
            (1, Filter::Shuffle),
            (2, Filter::DeltaShuffle),
            (3, Filter::BitPack),
        ] {
            assert_eq!(f.code(), code);
            assert_eq!(Filter::from_code(code), Some(f));
        }
        assert_eq!(Filter::from_code(4), None);
        assert_eq!(Storage::Raw.code(), STORAGE_RAW);
        assert_eq!(Storage::from_code(STORAGE_CHUNKED), Some(Storage::Chunked));
        assert_eq!(Storage::from_code(2), None);
    }

    #[test]
    fn head_layout() {
        let head = IndexHead {
            version: 3,
            time_ns: 1_700_000_000_000_000_000,
            data_start: 4096,
            tensor_count: 2,
            chunk_count: 5,
            superblock: [7; SUPERBLOCK_LEN],
            sections: vec![
                SectionEntry {
                    kind: SectionKind::Tensors,
                    offset: 352,
                    length: 128,
                    crc: 0xdead_beef,
                },
                SectionEntry {
                    kind: SectionKind::Unknown(1000),
                    offset: 480,
                    length: 0,
                    crc: 0,
                },
            ],
        };
        let b = head.encode();
        assert_eq!(b.len(), 224);
        assert_eq!(&b[..8], b"BPZINDEX");
        assert_eq!(b[48..52], 2u32.to_le_bytes());
        assert!(b[52..96].iter().all(|&c| c == 0));
        assert_eq!(b[96..160], [7; 64]);
        assert_eq!(b[160..164], 2u32.to_le_bytes());
        assert_eq!(b[168..176], 352u64.to_le_bytes());
        let fixed: [u8; HEAD_FIXED_LEN] = b[..HEAD_FIXED_LEN].try_into().unwrap();
        assert_eq!(IndexHead::peek(&fixed), (INDEX_MAGIC, 2));
        assert_eq!(IndexHead::decode(&b), Some(head.clone()));
        assert_eq!(IndexHead::decode(&b[..223]), None);
        assert_eq!(IndexHead::decode(&b[..100]), None);
        assert_eq!(head.section(SectionKind::Tensors).unwrap().length, 128);
        assert!(head.section(SectionKind::Chunks).is_none());
    }

    #[test]
    fn padding_ends_the_trailer_at_a_multiple_of_64() {
        for offset in [64u64, 65, 100, 4096] {
            for len in [160u64, 161, 200, 1000] {
                let p = index_padding(offset, len);
                assert!(p < 64);
                assert_eq!((offset + len + p + TRAILER_LEN as u64) % 64, 0);
            }
        }
    }

    proptest! {
        #[test]
        fn tensor_records_round_trip(
            fields in (any::<u64>(), any::<u32>(), any::<u32>(), any::<u64>(), any::<u64>(), any::<u64>(), any::<u32>()),
            codes in any::<[u8; 4]>(),
            chunks_crc in any::<u32>(),
            reserved in any::<[u8; 8]>(),
            name in proptest::collection::vec(any::<u8>(), 0..20),
            shape in proptest::collection::vec(any::<u64>(), 0..5),
        ) {
            let mut r = TensorRecord {
                name_offset: fields.0, name_length: fields.1, position: fields.2,
                shape_offset: fields.3, chunk_elems: fields.4, first_chunk: fields.5,
                chunk_count: fields.6, dtype: codes[0], storage: codes[1], filter: codes[2],
                rank: codes[3], chunks_crc, reserved, record_crc: 0,
            };
            let b = r.seal(&name, &shape);
            prop_assert_eq!(TensorRecord::decode(&b), r);
            prop_assert_eq!(r.encode(), b);
            prop_assert_eq!(TensorRecord::crc_of(&b, &name, &shape), r.record_crc);
            let mut flipped = b;
            flipped[5] ^= 1;
            prop_assert_ne!(TensorRecord::crc_of(&flipped, &name, &shape), r.record_crc);
        }

        #[test]
        fn chunk_and_version_records_round_trip(
            a in any::<u64>(), b in any::<u64>(), c in any::<u32>(), e in 0u8..=255,
            res in any::<[u8; 3]>(), hash in any::<[u8; 16]>(),
            v in any::<[u64; 5]>(), crc in any::<u32>(), vres in any::<u32>(),
        ) {
            let r = ChunkRecord { offset: a, stored_len: b, crc32c: c, encoded: e, reserved: res, hash };
            prop_assert_eq!(ChunkRecord::decode(&r.encode()), r);
            match r.to_chunk() {
                Some(chunk) => {
                    prop_assert!(e <= 1);
                    let back = ChunkRecord::from_chunk(&chunk).unwrap();
                    prop_assert_eq!(back, ChunkRecord { reserved: [0; 3], ..r });
                }
                None => prop_assert!(e > 1),
            }
            let vr = VersionRecord { version: v[0], time_ns: v[1], data_start: v[2],
                index_offset: v[3], index_length: v[4], index_crc: crc, reserved: vres };
            prop_assert_eq!(VersionRecord::decode(&vr.encode()), vr);
        }
    }

    #[test]
    fn a_chunk_without_a_hash_has_no_record() {
        let c = ChunkInfo {
            offset: 64,
            stored_len: 3,
            crc32c: 1,
            encoded: false,
            hash: None,
        };
        assert_eq!(ChunkRecord::from_chunk(&c), None);
    }

    #[test]
    fn bytes_added() {
        let r = VersionRecord {
            version: 1,
            time_ns: 0,
            data_start: 64,
            index_offset: 1000,
            index_length: 200,
            index_crc: 0,
            reserved: 0,
        };
        assert_eq!(r.end(), Some(1232));
        assert_eq!(r.bytes_added(), Some(1168));
        let broken = VersionRecord {
            index_offset: u64::MAX,
            ..r
        };
        assert_eq!(broken.bytes_added(), None);
    }
}
