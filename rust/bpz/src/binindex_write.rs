//! Emitting a version's 1.1 index (spec §16.2) straight from the writer's tensor table.
//!
//! The head comes first and holds every section's crc, so the crcs are computed before
//! anything is written. The `names`, `shapes` and `chunks` sections are laid out in the
//! order the tensors were saved (the records point into them, so any order is valid):
//! one parallel pass over the table builds them in blocks of tensors, with their crcs
//! and the sealed tensor records, and the blocks are then written as they are (another
//! pass over a million tensors' scattered names, shapes and chunk lists would cost more
//! than the JSON index of format 1.0 did in all). Only the `tensors` section must be
//! sorted by name: its 64-byte records are built in saving order and gathered into name
//! order twice, for its crc and while writing it (independent loads, which run in
//! parallel where following the permutation's cycles in place waits for one cache miss
//! after another).

use rayon::prelude::*;

use crate::binindex::*;
use crate::error::{Error, Result};
use crate::format::{TensorInfo, MAX_INDEX_BYTES, SUPERBLOCK_LEN};

const SPILL_BYTES: usize = 1 << 20;

/// Tensors per block of the parallel passes (whose crcs are combined).
const BLOCK: usize = 8192;

/// What the head of the index says about its version.
pub(crate) struct VersionHead<'a> {
    pub number: u64,
    pub time_ns: u64,
    pub data_start: u64,
    pub superblock: [u8; SUPERBLOCK_LEN],
    /// The earlier versions still in the file, oldest first.
    pub previous: &'a [VersionRecord],
}

/// The JSON sections, as text already checked.
pub(crate) struct JsonSections<'a> {
    pub tree: &'a [u8],
    pub metadata: &'a [u8],
    pub writer: &'a [u8],
}

/// A sealed index: its total length (padding included) and the head crc for the trailer.
pub(crate) struct Emitted {
    pub length: u64,
    pub head_crc: u32,
}

/// Writes the index of `tensors` (in the order they were saved) that starts at file
/// offset `index_offset`, through `out`. Every chunk must carry its content hash.
pub(crate) fn emit(
    label: &str,
    tensors: &[TensorInfo],
    version: &VersionHead<'_>,
    json: &JsonSections<'_>,
    index_offset: u64,
    mut out: impl FnMut(&[u8]) -> Result<()>,
) -> Result<Emitted> {
    let order = sorted_order(tensors);
    let (records, blocks, sums) = Sums::of(label, tensors)?;
    let tensors_crc = match &order {
        None => records
            .par_chunks(BLOCK)
            .map(|block| crc32c::crc32c(record_bytes(block)))
            .collect::<Vec<_>>(),
        Some(order) => order
            .par_chunks(BLOCK)
            .map_init(Vec::new, |buf, positions| {
                gather_into(buf, &records, positions);
                crc32c::crc32c(buf)
            })
            .collect::<Vec<_>>(),
    }
    .into_iter()
    .zip(records.chunks(BLOCK).map(|b| b.len() * TENSOR_RECORD_LEN))
    .fold(0, |crc, (part, len)| crc_concat(crc, part, len));
    let versions: Vec<u8> = version.previous.iter().flat_map(|r| r.encode()).collect();
    let sections = [
        (
            SectionKind::Versions,
            versions.len() as u64,
            crc32c::crc32c(&versions),
        ),
        (
            SectionKind::Tensors,
            (tensors.len() * TENSOR_RECORD_LEN) as u64,
            tensors_crc,
        ),
        (SectionKind::Names, sums.names.1, sums.names.0),
        (SectionKind::Shapes, sums.shapes.1, sums.shapes.0),
        (SectionKind::Chunks, sums.chunks.1, sums.chunks.0),
        (
            SectionKind::Tree,
            json.tree.len() as u64,
            crc32c::crc32c(json.tree),
        ),
        (
            SectionKind::Metadata,
            json.metadata.len() as u64,
            crc32c::crc32c(json.metadata),
        ),
        (
            SectionKind::Writer,
            json.writer.len() as u64,
            crc32c::crc32c(json.writer),
        ),
    ];
    let mut at = IndexHead::len_for(sections.len()) as u64;
    let sections: Vec<SectionEntry> = sections
        .iter()
        .map(|&(kind, length, crc)| {
            let entry = SectionEntry {
                kind,
                offset: at,
                length,
                crc,
            };
            at += length;
            entry
        })
        .collect();
    let unpadded = at;
    let length = unpadded + index_padding(index_offset, unpadded);
    if length > MAX_INDEX_BYTES {
        return Err(Error::InvalidArgument(format!(
            "index of {length} bytes is over the limit of {MAX_INDEX_BYTES}"
        )));
    }
    let head = IndexHead {
        version: version.number,
        time_ns: version.time_ns,
        data_start: version.data_start,
        tensor_count: tensors.len() as u64,
        chunk_count: sums.chunks.1 / CHUNK_RECORD_LEN as u64,
        superblock: version.superblock,
        sections,
    }
    .encode();
    let head_crc = crc32c::crc32c(&head);

    let mut spill = Spill::new(&mut out);
    spill.put(&head)?;
    spill.put(&versions)?;
    let per_piece = SPILL_BYTES / TENSOR_RECORD_LEN;
    match &order {
        None => {
            for piece in records.chunks(per_piece) {
                spill.put(record_bytes(piece))?;
            }
        }
        Some(order) => {
            let mut buf = Vec::with_capacity(per_piece.min(records.len()) * TENSOR_RECORD_LEN);
            for positions in order.chunks(per_piece) {
                gather_into(&mut buf, &records, positions);
                spill.put(&buf)?;
            }
        }
    }
    drop(records);
    for b in &blocks {
        spill.put(&b.names)?;
    }
    for b in &blocks {
        spill.put(&b.shapes)?;
    }
    for b in &blocks {
        spill.put(&b.chunks)?;
    }
    drop(blocks);
    spill.put(json.tree)?;
    spill.put(json.metadata)?;
    spill.put(json.writer)?;
    const ZEROS: [u8; 64] = [0; 64];
    spill.put(&ZEROS[..(length - unpadded) as usize])?;
    spill.flush()?;
    Ok(Emitted { length, head_crc })
}

/// Positions of `tensors` sorted by name bytes (the order of the `tensors` section), or
/// `None` if they are in that order already.
fn sorted_order(tensors: &[TensorInfo]) -> Option<Vec<u32>> {
    // Names are often saved in order already: one look saves the sort.
    if tensors.windows(2).all(|w| w[0].name < w[1].name) {
        return None;
    }
    // Sorted on the 8 bytes that follow the prefix all names share, zero-padded (names
    // hold no NUL, so a shorter name still sorts first), and on the names only where
    // those are equal: a million names sort as plain integers (key, position), without
    // chasing a pointer per comparison.
    let first = tensors[0].name.as_bytes();
    let shared = tensors.iter().fold(first.len(), |n, t| {
        n.min(
            first
                .iter()
                .zip(t.name.as_bytes())
                .take_while(|(a, b)| a == b)
                .count(),
        )
    });
    let key = |i: usize| {
        let rest = &tensors[i].name.as_bytes()[shared..];
        let mut k = [0u8; 8];
        let n = rest.len().min(8);
        k[..n].copy_from_slice(&rest[..n]);
        (u64::from_be_bytes(k) as u128) << 32 | i as u128
    };
    let mut keyed: Vec<u128> = if tensors.len() > 4096 {
        let mut k: Vec<u128> = (0..tensors.len()).into_par_iter().map(key).collect();
        k.par_sort_unstable();
        k
    } else {
        let mut k: Vec<u128> = (0..tensors.len()).map(key).collect();
        k.sort_unstable();
        k
    };
    // Runs of equal keys (names alike beyond those 8 bytes) in name order.
    let tail = |k: &u128| &tensors[*k as u32 as usize].name.as_bytes()[shared..];
    let mut start = 0;
    while start < keyed.len() {
        let group = keyed[start] >> 32;
        let end = start
            + keyed[start..]
                .iter()
                .take_while(|k| *k >> 32 == group)
                .count();
        if end - start > 1 {
            keyed[start..end].sort_unstable_by(|a, b| tail(a).cmp(tail(b)));
        }
        start = end;
    }
    Some(keyed.into_iter().map(|k| k as u32).collect())
}

/// The records at `positions`, in that order, into `buf` (cleared first).
fn gather_into(buf: &mut Vec<u8>, records: &[[u8; TENSOR_RECORD_LEN]], positions: &[u32]) {
    buf.clear();
    for &i in positions {
        buf.extend_from_slice(&records[i as usize]);
    }
}

/// crc32c of `a` then `b` from their crcs and `b`'s length: the crc of `a` carried over
/// `len_b` zero bytes (a product by x^(8 len_b) modulo the polynomial, by squaring),
/// xor that of `b`. Some fifty products of 32 steps; the crc32c crate's combine squares
/// 32x32 bit matrices instead, which is tens of microseconds a call.
fn crc_concat(crc_a: u32, crc_b: u32, len_b: usize) -> u32 {
    /// CRC-32C (Castagnoli), bit-reflected.
    const POLY: u32 = 0x82F6_3B78;
    // a * b modulo POLY, in the reflected order (bit 31 is x^0).
    fn times(a: u32, mut b: u32) -> u32 {
        let mut product = 0;
        let mut m = 1u32 << 31;
        while m != 0 {
            if a & m != 0 {
                product ^= b;
            }
            m >>= 1;
            b = if b & 1 != 0 { (b >> 1) ^ POLY } else { b >> 1 };
        }
        product
    }
    let mut shift = 1u32 << 31; // x^0
    let mut power = 1u32 << 23; // x^8: one byte
    let mut n = len_b as u64;
    while n != 0 {
        if n & 1 != 0 {
            shift = times(power, shift);
        }
        power = times(power, power);
        n >>= 1;
    }
    times(shift, crc_a) ^ crc_b
}

/// The bytes of consecutive records.
fn record_bytes(records: &[[u8; TENSOR_RECORD_LEN]]) -> &[u8] {
    // SAFETY: `[u8; N]` has size N and alignment 1, so a slice of them is
    // `len * N` contiguous, initialised bytes.
    unsafe {
        std::slice::from_raw_parts(
            records.as_ptr().cast::<u8>(),
            std::mem::size_of_val(records),
        )
    }
}

fn chunk_record(c: &crate::format::ChunkInfo) -> ChunkRecord {
    ChunkRecord::from_chunk(c).expect("a 1.1 writer hashes every chunk")
}

/// (crc, length in bytes) of the `names`, `shapes` and `chunks` sections.
#[derive(Default, Clone, Copy)]
struct Sums {
    names: (u32, u64),
    shapes: (u32, u64),
    chunks: (u32, u64),
}

/// One block of tensors' part of the `names`, `shapes` and `chunks` sections.
struct Block {
    names: Vec<u8>,
    shapes: Vec<u8>,
    chunks: Vec<u8>,
}

type Record = [u8; TENSOR_RECORD_LEN];

impl Sums {
    /// The sealed tensor records, in saving order, the blocks of the other sections and
    /// their sums; blocks of tensors on the thread pool, their crcs combined.
    fn of(label: &str, tensors: &[TensorInfo]) -> Result<(Vec<Record>, Vec<Block>, Sums)> {
        // How much of each section each block holds, and where that starts.
        let sizes: Vec<Cursor> = tensors
            .par_chunks(BLOCK)
            .map(|block| {
                let mut c = Cursor::default();
                block.iter().for_each(|t| c.advance(t));
                c
            })
            .collect();
        let mut total = Cursor::default();
        let mut starts = Vec::with_capacity(sizes.len());
        for size in &sizes {
            starts.push(total);
            total.name_offset += size.name_offset;
            total.shape_offset += size.shape_offset;
            total.first_chunk += size.first_chunk;
        }
        if total.first_chunk > 1 << 40 {
            return Err(Error::limit(
                label,
                "the number of chunks",
                total.first_chunk,
                1 << 40,
            ));
        }
        let mut records = vec![[0u8; TENSOR_RECORD_LEN]; tensors.len()];
        let blocks: Vec<(Block, Sums)> = tensors
            .par_chunks(BLOCK)
            .zip(records.par_chunks_mut(BLOCK))
            .zip(starts.into_par_iter().zip(sizes))
            .enumerate()
            .map(|(b, ((block, out), (mut cursor, size)))| {
                // The block's part of each section, gathered so that each gets one crc.
                let mut names = Vec::with_capacity(size.name_offset as usize);
                let mut shapes = Vec::with_capacity(size.shape_offset as usize * 8);
                let mut chunks = Vec::with_capacity(size.first_chunk as usize * CHUNK_RECORD_LEN);
                let mut sealed = Vec::new();
                for (k, (t, out)) in block.iter().zip(out).enumerate() {
                    let own = chunks.len();
                    for c in &t.chunks {
                        chunks.extend_from_slice(&chunk_record(c).encode());
                    }
                    let position = (b * BLOCK + k) as u32;
                    let shape = shapes.len();
                    for d in &t.shape {
                        shapes.extend_from_slice(&d.to_le_bytes());
                    }
                    *out = cursor.record(
                        t,
                        position,
                        crc32c::crc32c(&chunks[own..]),
                        &shapes[shape..],
                        &mut sealed,
                    );
                    names.extend_from_slice(t.name.as_bytes());
                }
                let sum = |bytes: &[u8]| (crc32c::crc32c(bytes), bytes.len() as u64);
                let sums = Sums {
                    names: sum(&names),
                    shapes: sum(&shapes),
                    chunks: sum(&chunks),
                };
                (
                    Block {
                        names,
                        shapes,
                        chunks,
                    },
                    sums,
                )
            })
            .collect();
        let join = |(crc, len): &mut (u32, u64), (part, part_len): (u32, u64)| {
            *crc = crc_concat(*crc, part, part_len as usize);
            *len += part_len;
        };
        let mut s = Sums::default();
        let blocks = blocks
            .into_iter()
            .map(|(block, b)| {
                join(&mut s.names, b.names);
                join(&mut s.shapes, b.shapes);
                join(&mut s.chunks, b.chunks);
                block
            })
            .collect();
        Ok((records, blocks, s))
    }
}

/// Where the next tensor's name, shape and chunks go in their sections.
#[derive(Default, Clone, Copy)]
struct Cursor {
    name_offset: u64,
    shape_offset: u64,
    first_chunk: u64,
}

impl Cursor {
    fn advance(&mut self, t: &TensorInfo) {
        self.name_offset += t.name.len() as u64;
        self.shape_offset += t.shape.len() as u64;
        self.first_chunk += t.chunks.len() as u64;
    }

    /// The sealed record of `t` (saved at `position`, its shape's bytes `shape`),
    /// advancing past it; `scratch` is any spare buffer.
    fn record(
        &mut self,
        t: &TensorInfo,
        position: u32,
        chunks_crc: u32,
        shape: &[u8],
        scratch: &mut Vec<u8>,
    ) -> Record {
        let r = TensorRecord {
            name_offset: self.name_offset,
            name_length: t.name.len() as u32,
            position,
            shape_offset: self.shape_offset,
            chunk_elems: t.chunk_elems,
            first_chunk: self.first_chunk,
            chunk_count: t.chunks.len() as u32,
            dtype: t.dtype.code(),
            storage: t.storage.code(),
            filter: t.filter.code(),
            rank: t.shape.len() as u8,
            chunks_crc,
            reserved: [0; 8],
            record_crc: 0,
        };
        self.advance(t);
        // The record crc of spec §16.2 (TensorRecord::crc_of) in one pass over the
        // pieces laid end to end: one call instead of one per piece and dimension.
        let mut b = r.encode();
        scratch.clear();
        scratch.extend_from_slice(&b[..60]);
        scratch.extend_from_slice(t.name.as_bytes());
        scratch.extend_from_slice(shape);
        let crc = crc32c::crc32c(scratch);
        debug_assert_eq!(crc, TensorRecord::crc_of(&b, t.name.as_bytes(), &t.shape));
        b[60..].copy_from_slice(&crc.to_le_bytes());
        b
    }
}

/// Gathers small writes into pieces of about [`SPILL_BYTES`].
struct Spill<'o, F: FnMut(&[u8]) -> Result<()>> {
    buf: Vec<u8>,
    out: &'o mut F,
}

impl<'o, F: FnMut(&[u8]) -> Result<()>> Spill<'o, F> {
    fn new(out: &'o mut F) -> Self {
        Spill {
            buf: Vec::with_capacity(SPILL_BYTES),
            out,
        }
    }

    fn put(&mut self, bytes: &[u8]) -> Result<()> {
        if self.buf.len() + bytes.len() > SPILL_BYTES {
            self.flush()?;
            if bytes.len() > SPILL_BYTES {
                return (self.out)(bytes);
            }
        }
        self.buf.extend_from_slice(bytes);
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        if !self.buf.is_empty() {
            (self.out)(&self.buf)?;
            self.buf.clear();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{DType, Trailer, TRAILER_LEN};
    use crate::write::{Compression, FormatVersion, Writer, WriterOptions};

    fn u64_at(b: &[u8], at: usize) -> u64 {
        u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
    }

    fn archive(names: &[String]) -> Vec<u8> {
        let opts = WriterOptions {
            format: FormatVersion::V1_1,
            compression: Compression::Zstd,
            chunk_bytes: 64,
            time_ns: Some(12345),
            ..WriterOptions::default()
        };
        let mut w = Writer::new(Vec::new(), opts).unwrap();
        for (i, name) in names.iter().enumerate() {
            let data: Vec<u8> = (0..8u32 * (i as u32 % 11))
                .flat_map(|v| (v / 3).to_le_bytes())
                .collect();
            let shape = [data.len() as u64 / 8, 2];
            let shape = if i % 5 == 4 { &shape[..0] } else { &shape[..] };
            let data = if shape.is_empty() {
                &[1, 2, 3, 4][..]
            } else {
                &data[..]
            };
            w.add_tensor(name, DType::U32, shape, data).unwrap();
        }
        w.set_metadata(serde_json::json!({"step": 7}));
        w.finish().unwrap().1.unwrap()
    }

    /// Decodes the layout of §16.2 by hand and checks it: head, directory, sorted
    /// records pointing into the sections, crcs, the padding and the trailer.
    fn check_layout(file: &[u8], names: &[String]) {
        assert_eq!(file.len() % 64, 0);
        assert_eq!(u16::from_le_bytes([file[10], file[11]]), 1);
        assert_eq!(file[12..16], REQUIRED_BINARY_INDEX.to_le_bytes());
        let tail: [u8; TRAILER_LEN] = file[file.len() - TRAILER_LEN..].try_into().unwrap();
        let t = Trailer::decode("t", &tail, file.len() as u64).unwrap();
        let index = &file[t.index_offset as usize..(t.index_offset + t.index_len) as usize];
        let head = IndexHead::decode(index).unwrap();
        assert_eq!(&index[..8], &INDEX_MAGIC);
        assert_eq!(crc32c::crc32c(&index[..head.head_len()]), t.index_crc32c);
        assert_eq!(head.superblock[..], file[..64]);
        assert_eq!(
            (head.version, head.time_ns, head.data_start),
            (1, 12345, 64)
        );
        assert_eq!(head.tensor_count, names.len() as u64);
        let mut end = head.head_len() as u64;
        for s in &head.sections {
            assert_eq!(s.offset, end, "sections are contiguous");
            end += s.length;
            let bytes = &index[s.offset as usize..(s.offset + s.length) as usize];
            assert_eq!(crc32c::crc32c(bytes), s.crc, "{:?}", s.kind);
        }
        assert!(index[end as usize..].iter().all(|&b| b == 0));
        assert!(index.len() - (end as usize) < 64);
        let section = |k| {
            let s = head.section(k).unwrap();
            &index[s.offset as usize..(s.offset + s.length) as usize]
        };
        assert_eq!(section(SectionKind::Versions).len(), 0);
        assert_eq!(section(SectionKind::Metadata), br#"{"step":7}"#);
        assert_eq!(section(SectionKind::Tree), b"null");
        let (names_s, shapes, chunks) = (
            section(SectionKind::Names),
            section(SectionKind::Shapes),
            section(SectionKind::Chunks),
        );
        assert_eq!(chunks.len() as u64, head.chunk_count * 40);
        let mut seen = Vec::new();
        let mut positions = vec![false; names.len()];
        for rec in section(SectionKind::Tensors).chunks(64) {
            let rec_bytes: [u8; 64] = rec.try_into().unwrap();
            let r = TensorRecord::decode(&rec_bytes);
            let name = &names_s[r.name_offset as usize..][..r.name_length as usize];
            let shape: Vec<u64> = (0..r.rank as usize)
                .map(|d| u64_at(shapes, (r.shape_offset as usize + d) * 8))
                .collect();
            assert_eq!(TensorRecord::crc_of(&rec_bytes, name, &shape), r.record_crc);
            let own = &chunks[r.first_chunk as usize * 40..][..r.chunk_count as usize * 40];
            assert_eq!(crc32c::crc32c(own), r.chunks_crc);
            assert_eq!(names[r.position as usize].as_bytes(), name);
            assert!(!std::mem::replace(
                &mut positions[r.position as usize],
                true
            ));
            assert_eq!(DType::from_code(r.dtype), Some(DType::U32));
            assert_eq!(r.reserved, [0; 8]);
            for c in own.chunks(40) {
                let c = ChunkRecord::decode(c.try_into().unwrap());
                assert!(c.offset + c.stored_len <= t.index_offset);
                assert_eq!(c.reserved, [0; 3]);
            }
            seen.push(name.to_vec());
        }
        assert!(
            seen.windows(2).all(|w| w[0] < w[1]),
            "records are sorted by name bytes"
        );
    }

    #[test]
    fn index_layout_follows_the_spec() {
        let names: Vec<String> = ["zeta", "alpha", "mid/é", "alpha2", "a", "\u{10ffff}", "b"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        check_layout(&archive(&names), &names);
    }

    /// More tensors than a block of the parallel passes, in no order (sharing a prefix,
    /// and some names prefixes of others): the combined crcs and the permutation hold.
    #[test]
    fn index_layout_of_many_blocks() {
        let names: Vec<String> = (0..3 * BLOCK + 17)
            .map(|i| format!("net/{}", (i * 7919) % (3 * BLOCK + 17)))
            .chain(["net/", "net/1x", "net/0"].map(String::from))
            .filter({
                let mut seen = std::collections::HashSet::new();
                move |n| seen.insert(n.clone())
            })
            .collect();
        check_layout(&archive(&names), &names);
        let sorted: Vec<String> = {
            let mut n = names.clone();
            n.sort();
            n
        };
        check_layout(&archive(&sorted), &sorted);
    }

    #[test]
    fn crc_concat_is_the_crc_of_both() {
        let data: Vec<u8> = (0..5000u32).map(|i| (i * 7 + i / 13) as u8).collect();
        for split in [0, 1, 7, 8, 63, 64, 1000, 4999, 5000] {
            let (a, b) = data.split_at(split);
            let got = crc_concat(crc32c::crc32c(a), crc32c::crc32c(b), b.len());
            assert_eq!(got, crc32c::crc32c(&data), "split at {split}");
            assert_eq!(
                got,
                crc32c::crc32c_combine(crc32c::crc32c(a), crc32c::crc32c(b), b.len())
            );
        }
    }

    #[test]
    fn gather_follows_the_order() {
        let records: Vec<[u8; 64]> = (0..6u8).map(|i| [i; 64]).collect();
        let mut buf = vec![9; 5];
        gather_into(&mut buf, &records, &[3, 0, 4, 1, 2, 5]);
        let firsts: Vec<u8> = buf.chunks(64).map(|r| r[0]).collect();
        assert_eq!(firsts, [3, 0, 4, 1, 2, 5]);
    }

    /// Names that agree on more than the 8 bytes the sort keys hold, with and without
    /// a shared prefix, and names that are prefixes of others.
    #[test]
    fn sorted_order_breaks_ties_by_the_whole_name() {
        let names: Vec<String> = [
            "layers/attention_2/w",
            "layers/attention_10/w",
            "layers/attention_1/w",
            "layers/attention_1/b",
            "layers/attention_",
            "layers/attention_1",
            "layers/mlp",
            "l",
            "layers/attention_1/w2",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let tensors: Vec<TensorInfo> = names
            .iter()
            .map(|n| TensorInfo {
                name: n.clone(),
                dtype: DType::U8,
                shape: vec![],
                storage: crate::format::Storage::Raw,
                filter: crate::format::Filter::None,
                chunk_elems: 1,
                chunks: vec![],
            })
            .collect();
        let order = sorted_order(&tensors).unwrap();
        let got: Vec<&str> = order.iter().map(|&i| names[i as usize].as_str()).collect();
        let mut expect: Vec<&str> = names.iter().map(String::as_str).collect();
        expect.sort();
        assert_eq!(got, expect);
        let sorted: Vec<TensorInfo> = order.iter().map(|&i| tensors[i as usize].clone()).collect();
        assert!(sorted_order(&sorted).is_none());
    }

    /// The hash of a plain chunk is that of its stored bytes; of an encoded one, of
    /// the bytes it decodes to.
    #[test]
    fn chunk_hashes_are_of_decoded_bytes() {
        let data: Vec<u8> = (0..4096u32).flat_map(|v| (v % 7).to_le_bytes()).collect();
        for compression in [Compression::None, Compression::Zstd] {
            let opts = WriterOptions {
                format: FormatVersion::V1_1,
                compression,
                chunk_bytes: 1000,
                ..WriterOptions::default()
            };
            let mut w = Writer::new(Vec::new(), opts).unwrap();
            let t = w
                .add_tensor("x", DType::U32, &[4096], &data)
                .unwrap()
                .clone();
            assert_eq!(t.chunks.len(), 17);
            for (i, c) in t.chunks.iter().enumerate() {
                let cb = t.chunk_elems as usize * 4;
                let piece = &data[i * cb..((i + 1) * cb).min(data.len())];
                assert_eq!(c.hash, Some(content_hash(piece)), "chunk {i}");
            }
        }
    }
}
