//! The writer encodes chunks on the thread pool while it writes earlier ones,
//! reusing buffers and the filter choice's probe: none of that may change a
//! stored byte, lose an error, or hang.

use std::io::{self, Write};

use bpz::*;

/// Deterministic bytes (xorshift).
fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Name, dtype, shape, bytes and forced filter of a tensor.
type Case = (String, DType, Vec<u64>, Vec<u8>, Option<Filter>);

/// Tensors whose chunks are a mix of compressible and incompressible, for
/// every filter; a few hundred chunks in all.
fn tensors() -> Vec<Case> {
    let rows = 300usize;
    let mixed: Vec<u8> = (0..rows)
        .flat_map(|r| {
            if r % 3 == 0 {
                noise(64, r as u64)
            } else {
                vec![(r % 7) as u8; 64]
            }
        })
        .collect();
    let floats: Vec<u8> = (0..rows * 16)
        .flat_map(|i| ((i % 50) as f32 * 0.25 - (i / 977) as f32).to_le_bytes())
        .collect();
    let sorted: Vec<u8> = (0..rows * 16)
        .flat_map(|i| ((i * 7 + i % 3) as u32).to_le_bytes())
        .collect();
    let bools: Vec<u8> = noise(rows * 64, 9).iter().map(|b| (*b < 6) as u8).collect();
    vec![
        (
            "mixed/none".into(),
            DType::U8,
            vec![rows as u64, 64],
            mixed.clone(),
            Some(Filter::None),
        ),
        (
            "mixed/shuffle".into(),
            DType::U32,
            vec![rows as u64, 16],
            mixed,
            Some(Filter::Shuffle),
        ),
        (
            "floats/auto".into(),
            DType::F32,
            vec![rows as u64, 16],
            floats,
            None,
        ),
        (
            "sorted/delta".into(),
            DType::U32,
            vec![rows as u64, 16],
            sorted,
            Some(Filter::DeltaShuffle),
        ),
        (
            "bools/bitpack".into(),
            DType::Bool,
            vec![rows as u64, 64],
            bools,
            Some(Filter::BitPack),
        ),
        ("small/auto".into(), DType::F32, vec![3], vec![0; 12], None),
    ]
}

fn write(compression: Compression, chunk_bytes: usize) -> Vec<u8> {
    let opts = WriterOptions {
        compression,
        chunk_bytes,
        // The same version time in every save, so that the bytes can be compared.
        time_ns: Some(0),
        ..Default::default()
    };
    let mut w = Writer::new(Vec::new(), opts).unwrap();
    for (name, dtype, shape, data, filter) in tensors() {
        let topts = TensorOptions {
            filter,
            ..Default::default()
        };
        w.add_tensor_with(&name, dtype, &shape, &data, &topts)
            .unwrap();
    }
    w.finish().unwrap().1.unwrap()
}

#[test]
fn stored_bytes_do_not_depend_on_the_calling_thread_or_pool() {
    for compression in [Compression::Zstd, Compression::AUTO] {
        for chunk_bytes in [64, 1000, 1 << 20] {
            // From outside the pool (compression overlapped with writing), and
            // from inside pools of one and three threads (windowed fallback).
            let outside = write(compression, chunk_bytes);
            for threads in [1, 3] {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                let inside = pool.install(|| write(compression, chunk_bytes));
                assert!(
                    inside == outside,
                    "{compression:?} chunk_bytes {chunk_bytes}: {threads} threads differ"
                );
            }
            // Every chunk is exactly what the codec makes of it, in order.
            let r = Reader::from_bytes(outside.clone()).unwrap();
            for (name, dtype, _, data, _) in tensors() {
                let t = r.tensor(&name).unwrap();
                assert_eq!(r.read(&name).unwrap(), data, "{name}");
                if t.is_raw() {
                    continue;
                }
                let piece = t.chunk_elems as usize * dtype.size();
                assert_eq!(t.chunks.len(), data.len().div_ceil(piece), "{name}");
                let mut end = 0;
                for (c, part) in t.chunks.iter().zip(data.chunks(piece)) {
                    let (stored, encoded) = codec::encode_chunk(t.filter, dtype, 1, part);
                    let at = c.offset as usize;
                    assert!(c.offset as usize >= end, "{name}: chunks out of order");
                    assert_eq!(c.encoded, encoded, "{name}");
                    assert_eq!(
                        &outside[at..at + c.stored_len as usize],
                        &stored[..],
                        "{name}"
                    );
                    assert_eq!(c.crc32c, crc32c::crc32c(&stored), "{name}");
                    end = at + stored.len();
                }
            }
        }
    }
}

/// Accepts `left` bytes, then fails every write.
struct FailAfter {
    left: usize,
}

impl Write for FailAfter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Err(io::Error::other("disk full"));
        }
        let n = buf.len().min(self.left);
        self.left -= n;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_write_error_is_returned_not_lost_or_hung() {
    // Incompressible, so every chunk is stored plain: 64 + 12,800 bytes before the index.
    let data = noise(64 * 200, 5);
    // Failing early, mid-tensor, and in its last chunks (written during the next call).
    for left in [100, 5_000, 9_000, 12_800] {
        for threads in [None, Some(1), Some(2)] {
            let run = || {
                let opts = WriterOptions {
                    compression: Compression::Zstd,
                    chunk_bytes: 64,
                    ..Default::default()
                };
                let mut w = Writer::new(FailAfter { left }, opts).unwrap();
                w.add_tensor("x", DType::U8, &[200, 64], &data)?;
                w.add_tensor("y", DType::U8, &[4], &[1, 2, 3, 4])?;
                w.finish().map(|_| ())
            };
            let result = match threads {
                None => run(),
                Some(n) => rayon::ThreadPoolBuilder::new()
                    .num_threads(n)
                    .build()
                    .unwrap()
                    .install(run),
            };
            let err = result.expect_err("the sink fails");
            assert!(err.to_string().contains("disk full"), "{err}");
        }
    }
}
