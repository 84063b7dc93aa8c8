//! Emitting a version's 1.1 index (spec §16.2) straight from the writer's tensor table.
//!
//! The head comes first and holds every section's crc, so the index is made in two
//! passes over the table: one computes the crcs, the other writes the records. Both
//! stream (in pieces of about a MiB): the table is not copied into a second form.

use rayon::prelude::*;

use crate::binindex::*;
use crate::error::{Error, Result};
use crate::format::{TensorInfo, MAX_INDEX_BYTES, SUPERBLOCK_LEN};

const SPILL_BYTES: usize = 1 << 20;

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
    let sums = Sums::of(label, tensors, &order)?;
    let sizes = [
        (
            SectionKind::Versions,
            (version.previous.len() * VERSION_RECORD_LEN) as u64,
        ),
        (
            SectionKind::Tensors,
            (tensors.len() * TENSOR_RECORD_LEN) as u64,
        ),
        (SectionKind::Names, sums.name_bytes),
        (SectionKind::Shapes, sums.dims * 8),
        (SectionKind::Chunks, sums.chunks * CHUNK_RECORD_LEN as u64),
        (SectionKind::Tree, json.tree.len() as u64),
        (SectionKind::Metadata, json.metadata.len() as u64),
        (SectionKind::Writer, json.writer.len() as u64),
    ];
    let versions: Vec<u8> = version.previous.iter().flat_map(|r| r.encode()).collect();
    let crcs = [
        crc32c::crc32c(&versions),
        sums.tensors_crc,
        sums.names_crc,
        sums.shapes_crc,
        sums.chunks_crc,
        crc32c::crc32c(json.tree),
        crc32c::crc32c(json.metadata),
        crc32c::crc32c(json.writer),
    ];
    let mut at = IndexHead::len_for(sizes.len()) as u64;
    let sections: Vec<SectionEntry> = sizes
        .iter()
        .zip(crcs)
        .map(|(&(kind, length), crc)| {
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
        chunk_count: sums.chunks,
        superblock: version.superblock,
        sections,
    }
    .encode();
    let head_crc = crc32c::crc32c(&head);

    let mut spill = Spill::new(&mut out);
    spill.put(&head)?;
    spill.put(&versions)?;
    let mut cursor = Cursor::default();
    for (k, &i) in order.iter().enumerate() {
        let t = &tensors[i as usize];
        let bytes = cursor.record(t, i, sums.chunks_crcs[k]);
        spill.put(&bytes)?;
    }
    for &i in &order {
        spill.put(tensors[i as usize].name.as_bytes())?;
    }
    for &i in &order {
        for d in &tensors[i as usize].shape {
            spill.put(&d.to_le_bytes())?;
        }
    }
    for &i in &order {
        for c in &tensors[i as usize].chunks {
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
    let mut order: Vec<u32> = (0..tensors.len() as u32).collect();
    // Names are often saved in order already: one look saves the sort.
    if tensors.windows(2).all(|w| w[0].name < w[1].name) {
        return order;
    }
    let by_name = |a: &u32, b: &u32| tensors[*a as usize].name.cmp(&tensors[*b as usize].name);
    if tensors.len() > 4096 {
        order.par_sort_unstable_by(by_name);
    } else {
        order.sort_unstable_by(by_name);
    }
    order
}

fn chunk_record(c: &crate::format::ChunkInfo) -> ChunkRecord {
    ChunkRecord::from_chunk(c).expect("a 1.1 writer hashes every chunk")
}

/// The first pass: section sizes and crcs, and each tensor's `chunks_crc`.
struct Sums {
    name_bytes: u64,
    dims: u64,
    chunks: u64,
    tensors_crc: u32,
    names_crc: u32,
    shapes_crc: u32,
    chunks_crc: u32,
    /// Per tensor, in sorted order.
    chunks_crcs: Vec<u32>,
}

impl Sums {
    fn of(label: &str, tensors: &[TensorInfo], order: &[u32]) -> Result<Sums> {
        let mut s = Sums {
            name_bytes: 0,
            dims: 0,
            chunks: 0,
            tensors_crc: 0,
            names_crc: 0,
            shapes_crc: 0,
            chunks_crc: 0,
            chunks_crcs: Vec::with_capacity(order.len()),
        };
        let mut cursor = Cursor::default();
        let mut buf = Vec::new();
        for &i in order {
            let t = &tensors[i as usize];
            buf.clear();
            for c in &t.chunks {
                buf.extend_from_slice(&chunk_record(c).encode());
            }
            let own = crc32c::crc32c(&buf);
            s.chunks_crc = crc32c::crc32c_append(s.chunks_crc, &buf);
            s.chunks_crcs.push(own);
            s.tensors_crc = crc32c::crc32c_append(s.tensors_crc, &cursor.record(t, i, own));
            s.names_crc = crc32c::crc32c_append(s.names_crc, t.name.as_bytes());
            for d in &t.shape {
                s.shapes_crc = crc32c::crc32c_append(s.shapes_crc, &d.to_le_bytes());
            }
        }
        s.name_bytes = cursor.name_offset;
        s.dims = cursor.shape_offset;
        s.chunks = cursor.first_chunk;
        if s.chunks > 1 << 40 {
            return Err(Error::limit(
                label,
                "the number of chunks",
                s.chunks,
                1 << 40,
            ));
        }
        Ok(s)
    }
}

/// Where the next tensor's name, shape and chunks go in their sections.
#[derive(Default)]
struct Cursor {
    name_offset: u64,
    shape_offset: u64,
    first_chunk: u64,
}

impl Cursor {
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
        self.name_offset += t.name.len() as u64;
        self.shape_offset += t.shape.len() as u64;
        self.first_chunk += t.chunks.len() as u64;
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

    fn archive(names: &[&str]) -> Vec<u8> {
        let opts = WriterOptions {
            format: FormatVersion::V1_1,
            compression: Compression::Zstd,
            chunk_bytes: 64,
            time_ns: Some(12345),
            ..WriterOptions::default()
        };
        let mut w = Writer::new(Vec::new(), opts).unwrap();
        for (i, name) in names.iter().enumerate() {
            let data: Vec<u8> = (0..40u32 * (i as u32 + 1))
                .flat_map(|v| (v / 3).to_le_bytes())
                .collect();
            let shape = [data.len() as u64 / 8, 2];
            w.add_tensor(name, DType::U32, &shape, &data).unwrap();
        }
        w.set_metadata(serde_json::json!({"step": 7}));
        w.finish().unwrap().1.unwrap()
    }

    /// The layout of §16.2, decoded by hand: head, directory, sorted records pointing
    /// into the sections, crcs, the padding and the trailer.
    #[test]
    fn index_layout_follows_the_spec() {
        let names = ["zeta", "alpha", "mid/é", "alpha2"];
        let file = archive(&names);
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
        assert_eq!(head.tensor_count, 4);
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
        let mut seen = Vec::new();
        for (k, rec) in section(SectionKind::Tensors).chunks(64).enumerate() {
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
            assert_eq!(DType::from_code(r.dtype), Some(DType::U32));
            for c in own.chunks(40) {
                let c = ChunkRecord::decode(c.try_into().unwrap());
                assert!(c.offset + c.stored_len <= t.index_offset);
                assert_eq!(c.reserved, [0; 3]);
            }
            seen.push((name.to_vec(), k));
        }
        let mut sorted = seen.clone();
        sorted.sort();
        assert_eq!(seen, sorted, "records are sorted by name bytes");
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
