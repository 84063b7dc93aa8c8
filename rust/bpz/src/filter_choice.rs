//! The writer's filter choice ("auto"): which filter suits a tensor, decided by
//! compressing a sample of it, and the probe kept so that the bytes are not
//! compressed twice. Readers never need it: the chosen filter is in the index.

use crate::codec::{compress_into, uint_le, with_filtered, MAX_ENCODED_SHARE};
use crate::format::{DType, Filter};

/// A filter chosen for a tensor by [`choose`], with the probe compression that
/// chose it, so that the share estimate and (for a tensor no larger than its
/// sample) its one chunk reuse it instead of compressing the same bytes again.
/// It borrows the tensor, so the probe cannot be applied to other bytes.
#[derive(Debug)]
pub(crate) struct Choice<'a> {
    pub filter: Filter,
    dtype: DType,
    data: &'a [u8],
    level: i32,
    probe: Probe,
}

#[derive(Debug)]
enum Probe {
    /// The sample has not been compressed under `filter`.
    Pending,
    /// The sample under `filter` as a zstd frame; `None` if that failed.
    Frame(Option<Vec<u8>>),
}

/// The sample under `filter`, compressed at `level` (`None` if either fails).
fn probe(filter: Filter, dtype: DType, s: &[u8], level: i32) -> Option<Vec<u8>> {
    with_filtered(filter, dtype, s, |f| {
        let mut z = Vec::new();
        compress_into(f, level, &mut z).then_some(z)
    })
    .flatten()
}

/// Picks a filter for `data` of `dtype` (see [`choose_filter`]), or takes
/// `forced`, keeping what was compressed to decide.
pub(crate) fn choose(dtype: DType, data: &[u8], level: i32, forced: Option<Filter>) -> Choice<'_> {
    let choice = |filter, probe| Choice {
        filter,
        dtype,
        data,
        level,
        probe,
    };
    let pick = |filter| choice(filter, Probe::Pending);
    if let Some(filter) = forced {
        return pick(filter);
    }
    if dtype == DType::Bool {
        let bits = sample(data, 1).iter().all(|&b| b <= 1);
        return pick(if bits { Filter::BitPack } else { Filter::None });
    }
    let width = dtype.size();
    let s = sample(data, width);
    if dtype.is_integer() && mostly_increasing(s, width) {
        return pick(Filter::DeltaShuffle);
    }
    if width == 1 {
        return pick(Filter::None);
    }
    // The two probes of a large sample run in parallel: the writer's pool
    // would otherwise idle while the calling thread compresses them.
    let (shuffled, plain) = if s.len() >= PARALLEL_PROBE_BYTES {
        rayon::join(
            || probe(Filter::Shuffle, dtype, s, level),
            || probe(Filter::None, dtype, s, level),
        )
    } else {
        (
            probe(Filter::Shuffle, dtype, s, level),
            probe(Filter::None, dtype, s, level),
        )
    };
    let size = |z: &Option<Vec<u8>>| z.as_ref().map_or(usize::MAX, Vec::len);
    if size(&shuffled) <= size(&plain) {
        choice(Filter::Shuffle, Probe::Frame(shuffled))
    } else {
        choice(Filter::None, Probe::Frame(plain))
    }
}

impl<'a> Choice<'a> {
    /// [`estimate_share`] of the chosen filter, from the probe if there was one.
    /// The tensor bytes the choice was made for.
    pub fn data(&self) -> &'a [u8] {
        self.data
    }

    pub fn share(&mut self) -> f64 {
        let s = sample(self.data, self.dtype.size());
        if s.is_empty() {
            return 1.0;
        }
        if let Probe::Pending = self.probe {
            self.probe = Probe::Frame(probe(self.filter, self.dtype, s, self.level));
        }
        match &self.probe {
            Probe::Frame(Some(z)) => z.len() as f64 / s.len() as f64,
            _ => 1.0,
        }
    }

    /// When the probe compressed all of the tensor (it is its own sample): what
    /// [`encode_chunk_into`] makes of it as one chunk — the frame and `true` if
    /// it is stored encoded, `false` if plain (the buffer is spare).
    pub fn take_whole_chunk(&mut self) -> Option<(Vec<u8>, bool)> {
        if sample(self.data, self.dtype.size()).len() != self.data.len() {
            return None;
        }
        match std::mem::replace(&mut self.probe, Probe::Pending) {
            Probe::Frame(Some(mut z)) => {
                let encoded = (z.len() as f64) < self.data.len() as f64 * MAX_ENCODED_SHARE;
                if !encoded {
                    z.clear();
                }
                Some((z, encoded))
            }
            other => {
                self.probe = other;
                None
            }
        }
    }
}

/// Picks a filter for `data` of `dtype`: bit-packing for booleans, delta for
/// integers that mostly increase, shuffle or none for the rest by compressing a
/// small sample both ways.
pub fn choose_filter(dtype: DType, data: &[u8], level: i32) -> Filter {
    choose(dtype, data, level, None).filter
}

/// Estimated stored/decoded ratio of `data` under `filter` (from a sample).
pub fn estimate_share(filter: Filter, dtype: DType, data: &[u8], level: i32) -> f64 {
    choose(dtype, data, level, Some(filter)).share()
}

const SAMPLE_PART: usize = 64 << 10;

/// Samples at least this large are probed both ways at once (a probe then
/// costs far more than handing it to another thread).
const PARALLEL_PROBE_BYTES: usize = 64 << 10;

/// Up to three 64 KiB windows (start, middle, end) joined, whole elements only.
fn sample(data: &[u8], width: usize) -> &[u8] {
    // Contiguous prefix keeps the probe allocation-free; large tensors use the
    // middle window instead, which is more representative than the head.
    let part = (SAMPLE_PART * 3 / width) * width;
    if data.len() <= part {
        return data;
    }
    let mid = (data.len() / 2 / width) * width;
    let start = mid.saturating_sub(part / 2 / width * width);
    &data[start..start + part]
}

/// At least 90 % of consecutive elements (unsigned, little-endian) do not decrease.
fn mostly_increasing(s: &[u8], width: usize) -> bool {
    /// Consecutive pairs that do not decrease; the width is a constant, so
    /// no call to `memcpy` per element.
    fn rising<const W: usize>(s: &[u8]) -> usize {
        let elems = s.chunks_exact(W);
        elems
            .clone()
            .zip(elems.skip(1))
            .filter(|(a, b)| uint_le::<W>(b) >= uint_le::<W>(a))
            .count()
    }
    let count = s.len() / width;
    if count < 16 {
        return false;
    }
    let rising = match width {
        1 => rising::<1>(s),
        2 => rising::<2>(s),
        4 => rising::<4>(s),
        8 => rising::<8>(s),
        _ => return false, // not an integer width
    };
    rising * 10 >= (count - 1) * 9
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::tests::noise;
    use crate::codec::{apply_filter, bitpack, encode_chunk};

    /// The filter choice and share estimate as they were first written
    /// (separate probes, fresh buffers): the reusing versions must agree.
    fn choose_reference(dtype: DType, data: &[u8], level: i32) -> Filter {
        if dtype == DType::Bool {
            return if bitpack(sample(data, 1)).is_some() {
                Filter::BitPack
            } else {
                Filter::None
            };
        }
        let width = dtype.size();
        let s = sample(data, width);
        if dtype.is_integer() && mostly_increasing(s, width) {
            return Filter::DeltaShuffle;
        }
        if width == 1 {
            return Filter::None;
        }
        let size = |f: Filter| {
            apply_filter(f, dtype, s)
                .and_then(|v| zstd::bulk::compress(&v, level).ok())
                .map_or(usize::MAX, |z| z.len())
        };
        if size(Filter::Shuffle) <= size(Filter::None) {
            Filter::Shuffle
        } else {
            Filter::None
        }
    }

    #[test]
    fn choice_reuses_probes_without_changing_the_result() {
        let mut cases: Vec<(DType, Vec<u8>)> = vec![
            (
                DType::F32,
                (0..3000u32)
                    .flat_map(|i| (i as f32 * 0.5).to_le_bytes())
                    .collect(),
            ),
            (DType::F32, noise(4096, 1)),
            (DType::F32, Vec::new()),
            (
                DType::F64,
                (0..100_000u64)
                    .flat_map(|i| ((i % 13) as f64).to_le_bytes())
                    .collect(),
            ),
            (
                DType::I32,
                (0..5000i32)
                    .flat_map(|i| (i * 3 - 7).to_le_bytes())
                    .collect(),
            ),
            (DType::I32, noise(40_000, 2)),
            (DType::U8, noise(10_000, 3)),
            (
                DType::Bool,
                noise(10_000, 4).iter().map(|b| (b < &5) as u8).collect(),
            ),
            (DType::Bool, vec![0, 1, 2]),
            (
                DType::C64,
                (0..2000u32)
                    .flat_map(|i| (i as f32).to_le_bytes())
                    .collect(),
            ),
            (
                DType::BF16,
                (0..1000u16)
                    .flat_map(|i| (0x3c00 + i % 4).to_le_bytes())
                    .collect(),
            ),
        ];
        cases.push((
            DType::F32,
            std::iter::repeat((-65.0f32).to_le_bytes())
                .take(300_000)
                .flatten()
                .collect(),
        ));
        for (dtype, data) in &cases {
            for level in [1, 3] {
                let filter = choose_reference(*dtype, data, level);
                let mut c = choose(*dtype, data, level, None);
                assert_eq!(c.filter, filter, "{dtype:?} of {} bytes", data.len());
                let s = sample(data, dtype.size());
                let share = if s.is_empty() {
                    1.0
                } else {
                    apply_filter(filter, *dtype, s)
                        .and_then(|v| zstd::bulk::compress(&v, level).ok())
                        .map_or(1.0, |z| z.len() as f64 / s.len() as f64)
                };
                assert_eq!(c.share(), share, "{dtype:?} of {} bytes", data.len());
                assert_eq!(estimate_share(filter, *dtype, data, level), share);
                let whole = c.take_whole_chunk();
                if s.len() == data.len() && !data.is_empty() {
                    let (bytes, encoded) = whole.expect("the probe covered the whole tensor");
                    let (expect, expect_encoded) = encode_chunk(filter, *dtype, level, data);
                    assert_eq!(encoded, expect_encoded);
                    if encoded {
                        assert_eq!(bytes, expect);
                    }
                } else if !data.is_empty() {
                    assert!(whole.is_none());
                }
            }
        }
    }

    #[test]
    fn sorted_indices_choose_delta() {
        let data: Vec<u8> = (0..10_000u32)
            .map(|i| i * 3)
            .flat_map(|v| v.to_le_bytes())
            .collect();
        assert_eq!(choose_filter(DType::I32, &data, 1), Filter::DeltaShuffle);
        assert_eq!(choose_filter(DType::Bool, &[0, 1, 0], 1), Filter::BitPack);
    }
}
