//! Chunk encoding: a filter (shuffle, delta + shuffle, bit-packing) then zstd.
//! Pure functions over byte slices, so the writer and every reader share them.

use crate::format::{DType, Filter};

/// A chunk stays plain unless zstd brings it below this share of its size.
pub const MAX_ENCODED_SHARE: f64 = 0.95;

/// Byte transposition: byte `j` of element `i` goes to `j * n + i`.
pub fn shuffle(src: &[u8], width: usize, dst: &mut [u8]) {
    debug_assert_eq!(src.len(), dst.len());
    match width {
        2 => shuffle_w::<2>(src, dst),
        4 => shuffle_w::<4>(src, dst),
        8 => shuffle_w::<8>(src, dst),
        16 => shuffle_w::<16>(src, dst),
        _ => dst.copy_from_slice(src),
    }
}

/// Inverse of [`shuffle`].
pub fn unshuffle(src: &[u8], width: usize, dst: &mut [u8]) {
    debug_assert_eq!(src.len(), dst.len());
    match width {
        2 => unshuffle_w::<2>(src, dst),
        4 => unshuffle_w::<4>(src, dst),
        8 => unshuffle_w::<8>(src, dst),
        16 => unshuffle_w::<16>(src, dst),
        _ => dst.copy_from_slice(src),
    }
}

/// Elements per block: a block is transposed in registers / L1, then each of
/// the `W` byte streams is written as one contiguous run.
const BLOCK: usize = 64;

fn shuffle_w<const W: usize>(src: &[u8], dst: &mut [u8]) {
    let n = src.len() / W;
    let streams: [&mut [u8]; W] = split_streams(dst, n);
    let mut blocks = src.chunks_exact(BLOCK * W);
    let mut at = 0;
    for block in &mut blocks {
        let mut tmp = [[0u8; BLOCK]; W];
        for (i, elem) in block.chunks_exact(W).enumerate() {
            for j in 0..W {
                tmp[j][i] = elem[j];
            }
        }
        for j in 0..W {
            streams[j][at..at + BLOCK].copy_from_slice(&tmp[j]);
        }
        at += BLOCK;
    }
    for (i, elem) in blocks.remainder().chunks_exact(W).enumerate() {
        for j in 0..W {
            streams[j][at + i] = elem[j];
        }
    }
}

fn unshuffle_w<const W: usize>(src: &[u8], dst: &mut [u8]) {
    let n = src.len() / W;
    let streams: [&[u8]; W] = std::array::from_fn(|j| &src[j * n..(j + 1) * n]);
    let mut blocks = dst.chunks_exact_mut(BLOCK * W);
    let mut at = 0;
    for block in &mut blocks {
        let mut tmp = [[0u8; BLOCK]; W];
        for j in 0..W {
            tmp[j].copy_from_slice(&streams[j][at..at + BLOCK]);
        }
        for (i, elem) in block.chunks_exact_mut(W).enumerate() {
            for j in 0..W {
                elem[j] = tmp[j][i];
            }
        }
        at += BLOCK;
    }
    for (i, elem) in blocks.into_remainder().chunks_exact_mut(W).enumerate() {
        for j in 0..W {
            elem[j] = streams[j][at + i];
        }
    }
}

fn split_streams<const W: usize>(dst: &mut [u8], n: usize) -> [&mut [u8]; W] {
    let mut rest = &mut dst[..W * n];
    std::array::from_fn(|_| {
        let (head, tail) = std::mem::take(&mut rest).split_at_mut(n);
        rest = tail;
        head
    })
}

macro_rules! delta_impl {
    ($buf:expr, $t:ty, $encode:expr) => {{
        let mut prev: $t = 0;
        for elem in $buf.chunks_exact_mut(std::mem::size_of::<$t>()) {
            let v = <$t>::from_le_bytes(elem.try_into().unwrap());
            let out = if $encode { v.wrapping_sub(prev) } else { v.wrapping_add(prev) };
            prev = if $encode { v } else { out };
            elem.copy_from_slice(&out.to_le_bytes());
        }
    }};
}

/// In place: each little-endian unsigned integer of `width` bytes becomes its
/// wrapping difference from the previous one (the first from zero).
/// Signed integers use the same bits, so one routine serves both.
pub fn delta_encode(buf: &mut [u8], width: usize) {
    match width {
        1 => delta_impl!(buf, u8, true),
        2 => delta_impl!(buf, u16, true),
        4 => delta_impl!(buf, u32, true),
        8 => delta_impl!(buf, u64, true),
        _ => unreachable!("delta is defined for integer widths only"),
    }
}

/// Inverse of [`delta_encode`] (a wrapping prefix sum).
pub fn delta_decode(buf: &mut [u8], width: usize) {
    match width {
        1 => delta_impl!(buf, u8, false),
        2 => delta_impl!(buf, u16, false),
        4 => delta_impl!(buf, u32, false),
        8 => delta_impl!(buf, u64, false),
        _ => unreachable!("delta is defined for integer widths only"),
    }
}

/// Packs 0/1 bytes eight to a byte, least significant bit first. Returns
/// `None` if a byte is neither 0 nor 1 (it would not survive the round trip).
pub fn bitpack(src: &[u8]) -> Option<Vec<u8>> {
    let mut out = vec![0u8; src.len().div_ceil(8)];
    for (o, group) in out.iter_mut().zip(src.chunks(8)) {
        let mut acc = 0u8;
        for (bit, &v) in group.iter().enumerate() {
            if v > 1 {
                return None;
            }
            acc |= v << bit;
        }
        *o = acc;
    }
    Some(out)
}

/// Inverse of [`bitpack`]: `dst.len()` booleans from `src`.
pub fn bitunpack(src: &[u8], dst: &mut [u8]) {
    for (group, &packed) in dst.chunks_mut(8).zip(src) {
        for (bit, v) in group.iter_mut().enumerate() {
            *v = (packed >> bit) & 1;
        }
    }
}

/// Length of a chunk of `decoded_len` bytes after `filter`.
pub fn filtered_len(filter: Filter, decoded_len: usize) -> usize {
    match filter {
        Filter::BitPack => decoded_len.div_ceil(8),
        _ => decoded_len,
    }
}

/// Applies `filter` to one chunk. `None` if the data does not suit the filter.
pub fn apply_filter(filter: Filter, dtype: DType, data: &[u8]) -> Option<Vec<u8>> {
    let width = dtype.size();
    match filter {
        Filter::None => Some(data.to_vec()),
        Filter::Shuffle => {
            let mut out = vec![0u8; data.len()];
            shuffle(data, width, &mut out);
            Some(out)
        }
        Filter::DeltaShuffle => {
            let mut tmp = data.to_vec();
            delta_encode(&mut tmp, width);
            let mut out = vec![0u8; data.len()];
            shuffle(&tmp, width, &mut out);
            Some(out)
        }
        Filter::BitPack => bitpack(data),
    }
}

/// Reverses `filter`: `filtered` (of [`filtered_len`]) into `out`.
pub fn undo_filter(filter: Filter, dtype: DType, filtered: &[u8], out: &mut [u8]) {
    let width = dtype.size();
    match filter {
        Filter::None => out.copy_from_slice(filtered),
        Filter::Shuffle => unshuffle(filtered, width, out),
        Filter::DeltaShuffle => {
            unshuffle(filtered, width, out);
            delta_decode(out, width);
        }
        Filter::BitPack => bitunpack(filtered, out),
    }
}

/// Encodes one chunk: filter, then zstd at `level`. Returns the stored bytes
/// and whether they are encoded; a chunk that does not shrink below
/// [`MAX_ENCODED_SHARE`] (or does not suit the filter) is kept plain.
pub fn encode_chunk(filter: Filter, dtype: DType, level: i32, data: &[u8]) -> (Vec<u8>, bool) {
    let Some(filtered) = apply_filter(filter, dtype, data) else {
        return (data.to_vec(), false);
    };
    match compress(&filtered, level) {
        Ok(z) if (z.len() as f64) < data.len() as f64 * MAX_ENCODED_SHARE => (z, true),
        _ => (data.to_vec(), false),
    }
}

thread_local! {
    /// One decompression context per thread, reused across chunks. Its window
    /// limit admits the largest chunk (256 MiB, windowLog 28).
    static DECOMPRESSOR: std::cell::RefCell<zstd::bulk::Decompressor<'static>> = std::cell::RefCell::new({
        let mut d = zstd::bulk::Decompressor::new().expect("zstd context");
        d.set_parameter(zstd::zstd_safe::DParameter::WindowLogMax(28)).expect("zstd window limit");
        d
    });
    static COMPRESSOR: std::cell::RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> = const { std::cell::RefCell::new(None) };
}

fn compress(data: &[u8], level: i32) -> std::io::Result<Vec<u8>> {
    COMPRESSOR.with(|c| {
        let mut slot = c.borrow_mut();
        if slot.as_ref().map(|(l, _)| *l) != Some(level) {
            *slot = Some((level, zstd::bulk::Compressor::new(level)?));
        }
        slot.as_mut().unwrap().1.compress(data)
    })
}

/// Why a chunk failed to decode.
#[derive(Debug)]
pub struct DecodeError(pub String);

/// Decodes an encoded chunk into `out`, whose length is the chunk's decoded
/// length. zstd writes into a buffer of exactly the expected size, so a frame
/// that claims or produces more is an error, never an allocation.
pub fn decode_chunk(filter: Filter, dtype: DType, stored: &[u8], out: &mut [u8]) -> Result<(), DecodeError> {
    let mut scratch = Vec::new();
    if filter != Filter::None {
        let n = filtered_len(filter, out.len());
        scratch = crate::read::try_zeroed_vec(n)
            .ok_or_else(|| DecodeError(format!("cannot allocate {n} bytes to decode the chunk")))?;
    }
    decode_chunk_into(filter, dtype, stored, out, &mut scratch)
}

/// [`decode_chunk`] with the caller's scratch buffer of [`filtered_len`] bytes (unused, and
/// may be empty, for [`Filter::None`]), so that a caller can allocate it fallibly.
pub fn decode_chunk_into(
    filter: Filter,
    dtype: DType,
    stored: &[u8],
    out: &mut [u8],
    scratch: &mut [u8],
) -> Result<(), DecodeError> {
    let expect = filtered_len(filter, out.len());
    // Exactly one frame: concatenated or skippable frames would let two
    // readers disagree about the bytes.
    match zstd::zstd_safe::find_frame_compressed_size(stored) {
        Ok(n) if n == stored.len() => {}
        Ok(n) => return Err(DecodeError(format!("{} bytes follow the zstd frame", stored.len() - n))),
        Err(code) => return Err(DecodeError(format!("zstd: {}", zstd::zstd_safe::get_error_name(code)))),
    }
    if let Ok(Some(size)) = zstd::zstd_safe::get_frame_content_size(stored) {
        if size != expect as u64 {
            return Err(DecodeError(format!("the zstd frame declares {size} bytes, expected {expect}")));
        }
    }
    let produce = |dst: &mut [u8]| -> Result<(), DecodeError> {
        let n = DECOMPRESSOR
            .with(|d| d.borrow_mut().decompress_to_buffer(stored, dst))
            .map_err(|e| DecodeError(format!("zstd: {e}")))?;
        if n != expect {
            return Err(DecodeError(format!("decoded {n} bytes, expected {expect}")));
        }
        Ok(())
    };
    if filter == Filter::None {
        return produce(out);
    }
    if scratch.len() != expect {
        return Err(DecodeError(format!("scratch buffer of {} bytes, expected {expect}", scratch.len())));
    }
    produce(scratch)?;
    undo_filter(filter, dtype, scratch, out);
    Ok(())
}

/// Picks a filter for `data` of `dtype`: bit-packing for booleans, delta for
/// integers that mostly increase, shuffle or none for the rest by compressing a
/// small sample both ways.
pub fn choose_filter(dtype: DType, data: &[u8], level: i32) -> Filter {
    if dtype == DType::Bool {
        return if bitpack(sample(data, 1)).is_some() { Filter::BitPack } else { Filter::None };
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
            .and_then(|v| compress(&v, level).ok())
            .map_or(usize::MAX, |z| z.len())
    };
    if size(Filter::Shuffle) <= size(Filter::None) {
        Filter::Shuffle
    } else {
        Filter::None
    }
}

/// Estimated stored/decoded ratio of `data` under `filter` (from a sample).
pub fn estimate_share(filter: Filter, dtype: DType, data: &[u8], level: i32) -> f64 {
    let s = sample(data, dtype.size());
    if s.is_empty() {
        return 1.0;
    }
    match apply_filter(filter, dtype, s).and_then(|v| compress(&v, level).ok()) {
        Some(z) => z.len() as f64 / s.len() as f64,
        None => 1.0,
    }
}

const SAMPLE_PART: usize = 64 << 10;

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

fn mostly_increasing(s: &[u8], width: usize) -> bool {
    let vals: Vec<u64> = s
        .chunks_exact(width)
        .map(|e| {
            let mut b = [0u8; 8];
            b[..width].copy_from_slice(e);
            u64::from_le_bytes(b)
        })
        .collect();
    if vals.len() < 16 {
        return false;
    }
    let rising = vals.windows(2).filter(|w| w[1] >= w[0]).count();
    rising * 10 >= (vals.len() - 1) * 9
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shuffle_round_trip_and_layout() {
        let src: Vec<u8> = (0..12).collect();
        let mut s = vec![0; 12];
        shuffle(&src, 4, &mut s);
        assert_eq!(s, [0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11]);
        let mut back = vec![0; 12];
        unshuffle(&s, 4, &mut back);
        assert_eq!(back, src);
    }

    #[test]
    fn delta_wraps() {
        let vals: [i32; 4] = [5, 3, i32::MIN, i32::MAX];
        let mut buf: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
        let orig = buf.clone();
        delta_encode(&mut buf, 4);
        assert_eq!(i32::from_le_bytes(buf[4..8].try_into().unwrap()), -2);
        delta_decode(&mut buf, 4);
        assert_eq!(buf, orig);
    }

    #[test]
    fn bitpack_lsb_first_and_rejects_non_bool() {
        let src = [1u8, 0, 0, 0, 0, 0, 0, 1, 1];
        let p = bitpack(&src).unwrap();
        assert_eq!(p, [0b1000_0001, 0b1]);
        let mut back = [9u8; 9];
        bitunpack(&p, &mut back);
        assert_eq!(back, src);
        assert!(bitpack(&[2]).is_none());
    }

    #[test]
    fn sorted_indices_choose_delta() {
        let data: Vec<u8> = (0..10_000u32).map(|i| i * 3).flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(choose_filter(DType::I32, &data, 1), Filter::DeltaShuffle);
        assert_eq!(choose_filter(DType::Bool, &[0, 1, 0], 1), Filter::BitPack);
    }

    #[test]
    fn trailing_frames_are_refused() {
        let mut z = zstd::bulk::compress(&[1u8; 8], 1).unwrap();
        z.extend(zstd::bulk::compress(&[1u8; 8], 1).unwrap());
        let mut out = [0u8; 16];
        let e = decode_chunk(Filter::None, DType::U8, &z, &mut out).unwrap_err();
        assert!(e.0.contains("follow the zstd frame"), "{}", e.0);
    }

    #[test]
    fn bomb_is_refused() {
        let zeros = vec![0u8; 1 << 20];
        let z = zstd::bulk::compress(&zeros, 1).unwrap();
        let mut small = vec![0u8; 1024];
        assert!(decode_chunk(Filter::None, DType::U8, &z, &mut small).is_err());
    }
}
