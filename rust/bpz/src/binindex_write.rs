//! Emitting a version's 1.1 index (spec §16.2) straight from the writer's tensor table.
//!
//! The head comes first and holds every section's crc, so the crcs are computed before
//! anything is written. The `names`, `shapes` and `chunks` sections are laid out in the
//! order the tensors were saved (the records point into them, so any order is valid):
//! they are read from the table in memory order, twice (crcs, then bytes), never copied.
//! Only the `tensors` section must be sorted by name: its 64-byte records are built in
//! saving order, then permuted in place into name order (64 bytes a tensor, the one
//! thing held besides the table).

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
    let (mut records, sums) = Sums::of(label, tensors)?;
    permute(&mut records, order);
    let tensors_crc = records
        .par_chunks(BLOCK)
        .map(|block| {
            let crc = block.iter().fold(0, |crc, r| crc32c::crc32c_append(crc, r));
            (crc, block.len() * TENSOR_RECORD_LEN)
        })
        .collect::<Vec<_>>()
        .into_iter()
        .fold(0, |crc, (part, len)| crc32c::crc32c_combine(crc, part, len));
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
    for r in &records {
        spill.put(r)?;
    }
    drop(records);
    for t in tensors {
        spill.put(t.name.as_bytes())?;
    }
    for t in tensors {
        for d in &t.shape {
            spill.put(&d.to_le_bytes())?;
        }
    }
    for t in tensors {
        for c in &t.chunks {
            spill.put(&chunk_record(c).encode())?;
        }
    }
    spill.put(json.tree)?;
    spill.put(json.metadata)?;
    spill.put(json.writer)?;
    const ZEROS: [u8; 64] = [0; 64];
    spill.put(&ZEROS[..(length - unpadded) as usize])?;
    spill.flush()?;
    Ok(Emitted { length, head_crc })
}

/// Positions of `tensors` sorted by name bytes (the order of the `tensors` section).
fn sorted_order(tensors: &[TensorInfo]) -> Vec<u32> {
    // Names are often saved in order already: one look saves the sort.
    if tensors.windows(2).all(|w| w[0].name < w[1].name) {
        return (0..tensors.len() as u32).collect();
    }
    // Sorted on the 8 bytes that follow the prefix all names share, zero-padded (names
    // hold no NUL, so a shorter name still sorts first), and on the names only where
    // those are equal: a million names sort without chasing a pointer per comparison.
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
        (u64::from_be_bytes(k), i as u32)
    };
    let tail = |i: u32| &tensors[i as usize].name.as_bytes()[shared..];
    let by_key =
        |a: &(u64, u32), b: &(u64, u32)| a.0.cmp(&b.0).then_with(|| tail(a.1).cmp(tail(b.1)));
    let keyed: Vec<(u64, u32)> = if tensors.len() > 4096 {
        let mut k: Vec<(u64, u32)> = (0..tensors.len()).into_par_iter().map(key).collect();
        k.par_sort_unstable_by(by_key);
        k
    } else {
        let mut k: Vec<(u64, u32)> = (0..tensors.len()).map(key).collect();
        k.sort_unstable_by(by_key);
        k
    };
    keyed.into_iter().map(|(_, i)| i).collect()
}

/// Rearranges `records` so that `records[k]` becomes the old `records[order[k]]`, in
/// place: following each cycle of the permutation, `order` marking what was moved.
fn permute(records: &mut [[u8; TENSOR_RECORD_LEN]], mut order: Vec<u32>) {
    const DONE: u32 = u32::MAX;
    for start in 0..records.len() {
        if order[start] == DONE {
            continue;
        }
        let first = records[start];
        let mut at = start;
        loop {
            let from = order[at] as usize;
            order[at] = DONE;
            if from == start {
                records[at] = first;
                break;
            }
            records[at] = records[from];
            at = from;
        }
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

impl Sums {
    /// The sealed tensor records, in saving order, and the sections' sums; blocks of
    /// tensors on the thread pool, their crcs combined.
    fn of(label: &str, tensors: &[TensorInfo]) -> Result<(Vec<[u8; TENSOR_RECORD_LEN]>, Sums)> {
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
        let blocks: Vec<Sums> = tensors
            .par_chunks(BLOCK)
            .zip(records.par_chunks_mut(BLOCK))
            .zip(starts.into_par_iter().zip(sizes))
            .enumerate()
            .map(|(b, ((block, out), (mut cursor, size)))| {
                // The block's part of each section, gathered so that each gets one crc.
                let mut names = Vec::with_capacity(size.name_offset as usize);
                let mut shapes = Vec::with_capacity(size.shape_offset as usize * 8);
                let mut chunks = Vec::with_capacity(size.first_chunk as usize * CHUNK_RECORD_LEN);
                for (k, (t, out)) in block.iter().zip(out).enumerate() {
                    let own = chunks.len();
                    for c in &t.chunks {
                        chunks.extend_from_slice(&chunk_record(c).encode());
                    }
                    let position = (b * BLOCK + k) as u32;
                    *out = cursor.record(t, position, crc32c::crc32c(&chunks[own..]));
                    names.extend_from_slice(t.name.as_bytes());
                    for d in &t.shape {
                        shapes.extend_from_slice(&d.to_le_bytes());
                    }
                }
                let sum = |bytes: &[u8]| (crc32c::crc32c(bytes), bytes.len() as u64);
                Sums {
                    names: sum(&names),
                    shapes: sum(&shapes),
                    chunks: sum(&chunks),
                }
            })
            .collect();
        let join = |(crc, len): &mut (u32, u64), (part, part_len): (u32, u64)| {
            *crc = crc32c::crc32c_combine(*crc, part, part_len as usize);
            *len += part_len;
        };
        let mut s = Sums::default();
        for b in blocks {
            join(&mut s.names, b.names);
            join(&mut s.shapes, b.shapes);
            join(&mut s.chunks, b.chunks);
        }
        Ok((records, s))
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

    /// The sealed record of `t` (saved at `position`), advancing past it.
    fn record(
        &mut self,
        t: &TensorInfo,
        position: u32,
        chunks_crc: u32,
    ) -> [u8; TENSOR_RECORD_LEN] {
        let mut r = TensorRecord {
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
        r.seal(t.name.as_bytes(), &t.shape)
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
    fn permute_follows_cycles() {
        let mut records: Vec<[u8; 64]> = (0..6u8).map(|i| [i; 64]).collect();
        permute(&mut records, vec![3, 0, 4, 1, 2, 5]);
        let firsts: Vec<u8> = records.iter().map(|r| r[0]).collect();
        assert_eq!(firsts, [3, 0, 4, 1, 2, 5]);
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
