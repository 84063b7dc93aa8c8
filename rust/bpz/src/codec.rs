//! Chunk encoding: a filter (shuffle, delta + shuffle, bit-packing) then zstd.
//! Pure functions over byte slices, so the writer and every reader share them. Which
//! filter the writer picks for a tensor is `filter_choice.rs`.
//!
//! The per-chunk paths ([`encode_chunk_into`], [`decode_chunk`]) filter into a
//! per-thread scratch buffer and use a per-thread zstd context: a fresh 2 MiB
//! buffer per chunk costs an mmap, page faults, zeroing and an munmap each time.

use std::cell::RefCell;
use std::thread::LocalKey;

use crate::format::{DType, Filter};

pub use crate::filter_choice::{choose_filter, estimate_share};

/// A chunk stays plain unless zstd brings it below this share of its size.
pub const MAX_ENCODED_SHARE: f64 = 0.95;

/// Byte transposition: byte `j` of element `i` goes to `j * n + i`, where
/// `n = src.len() / width`. Trailing bytes of a partial element (never part of
/// a chunk) are copied unchanged.
pub fn shuffle(src: &[u8], width: usize, dst: &mut [u8]) {
    assert_eq!(
        src.len(),
        dst.len(),
        "shuffle: source and destination differ in length"
    );
    match width {
        2 => shuffle_w::<2, false>(src, dst),
        4 => shuffle_w::<4, false>(src, dst),
        8 => shuffle_w::<8, false>(src, dst),
        16 => shuffle_w::<16, false>(src, dst),
        _ => dst.copy_from_slice(src),
    }
}

/// Inverse of [`shuffle`].
pub fn unshuffle(src: &[u8], width: usize, dst: &mut [u8]) {
    assert_eq!(
        src.len(),
        dst.len(),
        "unshuffle: source and destination differ in length"
    );
    match width {
        2 => unshuffle_w::<2, false>(src, dst),
        4 => unshuffle_w::<4, false>(src, dst),
        8 => unshuffle_w::<8, false>(src, dst),
        16 => unshuffle_w::<16, false>(src, dst),
        _ => dst.copy_from_slice(src),
    }
}

/// [`delta_encode`] then [`shuffle`] in one pass from `src` into `dst`.
pub fn delta_shuffle(src: &[u8], width: usize, dst: &mut [u8]) {
    assert_eq!(
        src.len(),
        dst.len(),
        "delta_shuffle: source and destination differ in length"
    );
    match width {
        1 => delta1_encode(src, dst),
        2 => shuffle_w::<2, true>(src, dst),
        4 => shuffle_w::<4, true>(src, dst),
        8 => shuffle_w::<8, true>(src, dst),
        _ => unreachable!("delta is defined for integer widths only"),
    }
}

/// Inverse of [`delta_shuffle`]: [`unshuffle`] then [`delta_decode`] in one pass.
pub fn unshuffle_delta(src: &[u8], width: usize, dst: &mut [u8]) {
    assert_eq!(
        src.len(),
        dst.len(),
        "unshuffle_delta: source and destination differ in length"
    );
    match width {
        1 => {
            dst.copy_from_slice(src);
            delta_decode(dst, 1);
        }
        2 => unshuffle_w::<2, true>(src, dst),
        4 => unshuffle_w::<4, true>(src, dst),
        8 => unshuffle_w::<8, true>(src, dst),
        _ => unreachable!("delta is defined for integer widths only"),
    }
}

/// Whole blocks of 16 elements in SIMD registers where there are some, the
/// rest (and every target without them) by the portable loop.
fn shuffle_w<const W: usize, const DELTA: bool>(src: &[u8], dst: &mut [u8]) {
    let n = src.len() / W;
    let done = simd::shuffle::<W, DELTA>(src, dst);
    shuffle_scalar::<W, DELTA>(src, dst, done);
    dst[W * n..].copy_from_slice(&src[W * n..]);
}

fn unshuffle_w<const W: usize, const DELTA: bool>(src: &[u8], dst: &mut [u8]) {
    let n = src.len() / W;
    let done = simd::unshuffle::<W, DELTA>(src, dst);
    unshuffle_scalar::<W, DELTA>(src, dst, done);
    dst[W * n..].copy_from_slice(&src[W * n..]);
}

/// Elements per block of the portable loop: a block is transposed in L1, then
/// each of the `W` byte streams is written as one contiguous run.
const BLOCK: usize = 64;

/// Little-endian unsigned integer of the first `min(W, 8)` bytes.
#[inline(always)]
pub(crate) fn uint_le<const W: usize>(b: &[u8]) -> u64 {
    let mut v = 0u64;
    for (j, &byte) in b[..W.min(8)].iter().enumerate() {
        v |= (byte as u64) << (8 * j);
    }
    v
}

/// The bytes of element `elem` to store: as they are, or (`DELTA`) its
/// wrapping difference from the previous element `prev`.
#[inline(always)]
fn delta_elem<const W: usize, const DELTA: bool>(elem: &[u8], prev: &mut u64) -> [u8; W] {
    let mut b = [0u8; W];
    b.copy_from_slice(elem);
    if DELTA {
        let v = uint_le::<W>(&b);
        let d = v.wrapping_sub(*prev);
        *prev = v;
        for (j, byte) in b.iter_mut().take(8).enumerate() {
            *byte = (d >> (8 * j)) as u8;
        }
    }
    b
}

/// Inverse of [`delta_elem`] on the gathered bytes `b`.
#[inline(always)]
fn undelta_elem<const W: usize, const DELTA: bool>(b: &mut [u8; W], prev: &mut u64) {
    if DELTA {
        let v = uint_le::<W>(&b[..]).wrapping_add(*prev);
        let mask = if W >= 8 {
            u64::MAX
        } else {
            (1u64 << (8 * W)) - 1
        };
        *prev = v & mask;
        for (j, byte) in b.iter_mut().take(8).enumerate() {
            *byte = (v >> (8 * j)) as u8;
        }
    }
}

/// Portable shuffle of elements `from..n`.
fn shuffle_scalar<const W: usize, const DELTA: bool>(src: &[u8], dst: &mut [u8], from: usize) {
    let n = src.len() / W;
    if from >= n {
        return;
    }
    let mut prev = if DELTA && from > 0 {
        uint_le::<W>(&src[(from - 1) * W..])
    } else {
        0
    };
    let streams: [&mut [u8]; W] = split_streams(dst, n);
    let mut blocks = src[from * W..n * W].chunks_exact(BLOCK * W);
    let mut at = from;
    for block in &mut blocks {
        let mut tmp = [[0u8; BLOCK]; W];
        for (i, elem) in block.chunks_exact(W).enumerate() {
            let b = delta_elem::<W, DELTA>(elem, &mut prev);
            for j in 0..W {
                tmp[j][i] = b[j];
            }
        }
        for j in 0..W {
            streams[j][at..at + BLOCK].copy_from_slice(&tmp[j]);
        }
        at += BLOCK;
    }
    for (i, elem) in blocks.remainder().chunks_exact(W).enumerate() {
        let b = delta_elem::<W, DELTA>(elem, &mut prev);
        for j in 0..W {
            streams[j][at + i] = b[j];
        }
    }
}

/// Portable unshuffle of elements `from..n`; with `DELTA` the elements before
/// `from` must already be decoded in `dst`.
fn unshuffle_scalar<const W: usize, const DELTA: bool>(src: &[u8], dst: &mut [u8], from: usize) {
    let n = src.len() / W;
    if from >= n {
        return;
    }
    let mut prev = if DELTA && from > 0 {
        uint_le::<W>(&dst[(from - 1) * W..])
    } else {
        0
    };
    let streams: [&[u8]; W] = std::array::from_fn(|j| &src[j * n..(j + 1) * n]);
    let mut blocks = dst[from * W..n * W].chunks_exact_mut(BLOCK * W);
    let mut at = from;
    for block in &mut blocks {
        let mut tmp = [[0u8; BLOCK]; W];
        for j in 0..W {
            tmp[j].copy_from_slice(&streams[j][at..at + BLOCK]);
        }
        for (i, elem) in block.chunks_exact_mut(W).enumerate() {
            let mut b: [u8; W] = std::array::from_fn(|j| tmp[j][i]);
            undelta_elem::<W, DELTA>(&mut b, &mut prev);
            elem.copy_from_slice(&b);
        }
        at += BLOCK;
    }
    for (i, elem) in blocks.into_remainder().chunks_exact_mut(W).enumerate() {
        let mut b: [u8; W] = std::array::from_fn(|j| streams[j][at + i]);
        undelta_elem::<W, DELTA>(&mut b, &mut prev);
        elem.copy_from_slice(&b);
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

/// Delta of single bytes (`dst[i] = src[i] - src[i - 1]`): independent
/// differences, which the compiler vectorises.
fn delta1_encode(src: &[u8], dst: &mut [u8]) {
    let (Some(&first), Some(d0)) = (src.first(), dst.first_mut()) else {
        return;
    };
    *d0 = first;
    for (d, pair) in dst[1..].iter_mut().zip(src.windows(2)) {
        *d = pair[1].wrapping_sub(pair[0]);
    }
}

/// SSE2 kernels: SSE2 is part of every x86-64 CPU and enabled by every x86-64
/// target, so this needs no runtime detection.
///
/// A block of 16 elements of `W` bytes is `W` registers; byte `c` of register
/// `r` is byte `16 r + c` of the block, i.e. its address has the bits
/// `[r (log2 W bits)][c (4 bits)]`. One [`round`] of `unpacklo/hi_epi8` over
/// the pairs `(r, r + W/2)` rotates that address left by one bit. Shuffling
/// moves byte `j` of element `e` from address `[e][j]` (`e` 4 bits) to
/// `[j][e]`: a rotation by 4, i.e. 4 rounds. Unshuffling rotates by the other
/// `log2 W` bits. Delta is applied on the element-ordered registers (before
/// shuffling, after unshuffling), so the data is touched once.
#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
#[allow(unused_unsafe)] // the arithmetic intrinsics are safe fns on newer compilers
mod simd {
    use std::arch::x86_64::*;

    type V = __m128i;

    // SAFETY (every `unsafe` block below without a pointer): these intrinsics
    // only require SSE2, which the cfg of this module guarantees.

    #[inline(always)]
    fn load(s: &[u8]) -> V {
        let s = &s[..16];
        // SAFETY: `s` is 16 readable bytes; loadu has no alignment requirement.
        unsafe { _mm_loadu_si128(s.as_ptr().cast()) }
    }

    #[inline(always)]
    fn store(d: &mut [u8], v: V) {
        let d = &mut d[..16];
        // SAFETY: `d` is 16 writable bytes; storeu has no alignment requirement.
        unsafe { _mm_storeu_si128(d.as_mut_ptr().cast(), v) }
    }

    /// Rotates the byte addresses of the `W` registers left by one bit.
    #[inline(always)]
    fn round<const W: usize>(v: [V; W]) -> [V; W] {
        let mut out = v;
        for i in 0..W / 2 {
            // SAFETY: SSE2 only.
            unsafe {
                out[2 * i] = _mm_unpacklo_epi8(v[i], v[i + W / 2]);
                out[2 * i + 1] = _mm_unpackhi_epi8(v[i], v[i + W / 2]);
            }
        }
        out
    }

    /// Lane-wise wrapping `a - b` on `W`-byte integers.
    #[inline(always)]
    fn sub<const W: usize>(a: V, b: V) -> V {
        // SAFETY: SSE2 only.
        unsafe {
            match W {
                2 => _mm_sub_epi16(a, b),
                4 => _mm_sub_epi32(a, b),
                _ => _mm_sub_epi64(a, b),
            }
        }
    }

    /// Lane-wise wrapping `a + b` on `W`-byte integers.
    #[inline(always)]
    fn add<const W: usize>(a: V, b: V) -> V {
        // SAFETY: SSE2 only.
        unsafe {
            match W {
                2 => _mm_add_epi16(a, b),
                4 => _mm_add_epi32(a, b),
                _ => _mm_add_epi64(a, b),
            }
        }
    }

    /// Each element's predecessor: `cur` moved up one element, with the last
    /// element of `prev` (the previous register) in lane 0.
    #[inline(always)]
    fn predecessors<const W: usize>(cur: V, prev: V) -> V {
        // SAFETY: SSE2 only.
        unsafe {
            match W {
                2 => _mm_or_si128(_mm_slli_si128::<2>(cur), _mm_srli_si128::<14>(prev)),
                4 => _mm_or_si128(_mm_slli_si128::<4>(cur), _mm_srli_si128::<12>(prev)),
                _ => _mm_or_si128(_mm_slli_si128::<8>(cur), _mm_srli_si128::<8>(prev)),
            }
        }
    }

    /// Inclusive prefix sum of the lanes plus `carry` (the previous running
    /// total in every lane); returns the sums and the new carry.
    #[inline(always)]
    fn prefix_sum<const W: usize>(x: V, carry: V) -> (V, V) {
        // SAFETY: SSE2 only.
        unsafe {
            let x = match W {
                2 => {
                    let x = _mm_add_epi16(x, _mm_slli_si128::<2>(x));
                    let x = _mm_add_epi16(x, _mm_slli_si128::<4>(x));
                    _mm_add_epi16(x, _mm_slli_si128::<8>(x))
                }
                4 => {
                    let x = _mm_add_epi32(x, _mm_slli_si128::<4>(x));
                    _mm_add_epi32(x, _mm_slli_si128::<8>(x))
                }
                _ => _mm_add_epi64(x, _mm_slli_si128::<8>(x)),
            };
            let x = add::<W>(x, carry);
            let last = match W {
                2 => {
                    let t = _mm_shufflehi_epi16::<0xFF>(x);
                    _mm_unpackhi_epi64(t, t)
                }
                4 => _mm_shuffle_epi32::<0xFF>(x),
                _ => _mm_unpackhi_epi64(x, x),
            };
            (x, last)
        }
    }

    /// Shuffles (with `DELTA`: delta-encodes, then shuffles) whole blocks of 16
    /// elements; returns the number of elements done.
    pub(super) fn shuffle<const W: usize, const DELTA: bool>(src: &[u8], dst: &mut [u8]) -> usize {
        let n = src.len() / W;
        // SAFETY: SSE2 only.
        let mut carry = unsafe { _mm_setzero_si128() };
        let mut done = 0;
        for block in src.chunks_exact(16 * W) {
            let raw: [V; W] = std::array::from_fn(|k| load(&block[16 * k..]));
            let mut v = raw;
            if DELTA {
                for k in 0..W {
                    let prev = if k == 0 { carry } else { raw[k - 1] };
                    v[k] = sub::<W>(raw[k], predecessors::<W>(raw[k], prev));
                }
                carry = raw[W - 1];
            }
            for _ in 0..4 {
                v = round(v);
            }
            for (j, x) in v.into_iter().enumerate() {
                store(&mut dst[j * n + done..], x);
            }
            done += 16;
        }
        done
    }

    /// Unshuffles (with `DELTA`: then prefix-sums) whole blocks of 16
    /// elements; returns the number of elements done.
    pub(super) fn unshuffle<const W: usize, const DELTA: bool>(
        src: &[u8],
        dst: &mut [u8],
    ) -> usize {
        let n = src.len() / W;
        // SAFETY: SSE2 only.
        let mut carry = unsafe { _mm_setzero_si128() };
        let mut done = 0;
        for block in dst.chunks_exact_mut(16 * W) {
            let mut v: [V; W] = std::array::from_fn(|j| load(&src[j * n + done..]));
            for _ in 0..W.trailing_zeros() {
                v = round(v);
            }
            for (k, x) in v.into_iter().enumerate() {
                let x = if DELTA {
                    let (sum, last) = prefix_sum::<W>(x, carry);
                    carry = last;
                    sum
                } else {
                    x
                };
                store(&mut block[16 * k..], x);
            }
            done += 16;
        }
        done
    }
}

/// No SIMD kernels on this target: the portable loop does every element.
#[cfg(not(all(target_arch = "x86_64", target_feature = "sse2")))]
mod simd {
    pub(super) fn shuffle<const W: usize, const DELTA: bool>(_: &[u8], _: &mut [u8]) -> usize {
        0
    }
    pub(super) fn unshuffle<const W: usize, const DELTA: bool>(_: &[u8], _: &mut [u8]) -> usize {
        0
    }
}

macro_rules! delta_impl {
    ($buf:expr, $t:ty, $encode:expr) => {{
        let mut prev: $t = 0;
        for elem in $buf.chunks_exact_mut(std::mem::size_of::<$t>()) {
            let v = <$t>::from_le_bytes(elem.try_into().unwrap());
            let out = if $encode {
                v.wrapping_sub(prev)
            } else {
                v.wrapping_add(prev)
            };
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
    bitpack_into(src, &mut out).then_some(out)
}

/// [`bitpack`] into `dst` of `src.len().div_ceil(8)` bytes; `false` if a byte
/// is neither 0 nor 1 (then `dst` holds garbage).
pub fn bitpack_into(src: &[u8], dst: &mut [u8]) -> bool {
    assert_eq!(
        dst.len(),
        src.len().div_ceil(8),
        "bitpack: wrong destination length"
    );
    let mut groups = src.chunks_exact(8);
    let mut seen = 0u64;
    for (o, group) in dst.iter_mut().zip(&mut groups) {
        let x = u64::from_le_bytes(group.try_into().unwrap());
        seen |= x;
        // Byte k (bit 8k) times 2^(56 - 7k) lands on bit 56 + k; the other
        // products fall outside the top byte and never collide (no carries).
        *o = (x.wrapping_mul(0x0102_0408_1020_4080) >> 56) as u8;
    }
    if seen & !0x0101_0101_0101_0101 != 0 {
        return false;
    }
    let rest = groups.remainder();
    if !rest.is_empty() {
        let mut acc = 0u8;
        for (bit, &v) in rest.iter().enumerate() {
            if v > 1 {
                return false;
            }
            acc |= v << bit;
        }
        dst[src.len() / 8] = acc;
    }
    true
}

/// Byte `k` of entry `p` is bit `k` of `p`.
const UNPACK: [u64; 256] = {
    let mut table = [0u64; 256];
    let mut p = 0;
    while p < 256 {
        let mut bit = 0;
        while bit < 8 {
            table[p] |= (((p >> bit) & 1) as u64) << (8 * bit);
            bit += 1;
        }
        p += 1;
    }
    table
};

/// Inverse of [`bitpack`]: `dst.len()` booleans from `src`.
pub fn bitunpack(src: &[u8], dst: &mut [u8]) {
    let whole = dst.len() / 8;
    let mut groups = dst.chunks_exact_mut(8);
    for (group, &packed) in (&mut groups).zip(src) {
        group.copy_from_slice(&UNPACK[packed as usize].to_le_bytes());
    }
    let rest = groups.into_remainder();
    if let Some(&packed) = src.get(whole) {
        for (bit, v) in rest.iter_mut().enumerate() {
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

/// Writes `data` after `filter` into `dst` (of [`filtered_len`] bytes);
/// `false` if the data does not suit the filter.
fn filter_into(filter: Filter, dtype: DType, data: &[u8], dst: &mut [u8]) -> bool {
    let width = dtype.size();
    match filter {
        Filter::None => dst.copy_from_slice(data),
        Filter::Shuffle => shuffle(data, width, dst),
        Filter::DeltaShuffle => delta_shuffle(data, width, dst),
        Filter::BitPack => return bitpack_into(data, dst),
    }
    true
}

/// Applies `filter` to one chunk. `None` if the data does not suit the filter.
pub fn apply_filter(filter: Filter, dtype: DType, data: &[u8]) -> Option<Vec<u8>> {
    let mut out = vec![0u8; filtered_len(filter, data.len())];
    filter_into(filter, dtype, data, &mut out).then_some(out)
}

/// Reverses `filter`: `filtered` (of [`filtered_len`]) into `out`.
pub fn undo_filter(filter: Filter, dtype: DType, filtered: &[u8], out: &mut [u8]) {
    let width = dtype.size();
    match filter {
        Filter::None => out.copy_from_slice(filtered),
        Filter::Shuffle => unshuffle(filtered, width, out),
        Filter::DeltaShuffle => unshuffle_delta(filtered, width, out),
        Filter::BitPack => bitunpack(filtered, out),
    }
}

/// The per-thread scratch buffers (see [`with_scratch`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scratch {
    /// A chunk after its filter: used inside [`encode_chunk_into`],
    /// [`decode_chunk`] and the filter choice.
    Filtered,
    /// Free for callers, e.g. a whole decoded chunk of which a part is wanted.
    Chunk,
    /// A chunk's stored bytes, read from the file before they are checked and decoded.
    Stored,
    /// Several neighbouring chunks read from the file at once (see `read::plan_ranges`).
    Coalesced,
}

/// Per-thread buffers larger than this are released after use, not kept.
const KEEP_SCRATCH: usize = 16 << 20;

thread_local! {
    static FILTERED: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    static CHUNK: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    static STORED: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    static COALESCED: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` on `n` bytes of a buffer that this thread reuses from call to call,
/// so that a chunk costs no allocation, page faults or zeroing. Its contents
/// are unspecified: `f` must not read what it has not written. `None` if the
/// buffer cannot be allocated (sizes may come from files).
pub(crate) fn with_scratch<R>(
    which: Scratch,
    n: usize,
    f: impl FnOnce(&mut [u8]) -> R,
) -> Option<R> {
    let key: &'static LocalKey<RefCell<Vec<u8>>> = match which {
        Scratch::Filtered => &FILTERED,
        Scratch::Chunk => &CHUNK,
        Scratch::Stored => &STORED,
        Scratch::Coalesced => &COALESCED,
    };
    key.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => {
            if buf.len() < n {
                let more = n - buf.len();
                buf.try_reserve_exact(more).ok()?;
                buf.resize(n, 0);
            }
            let r = f(&mut buf[..n]);
            if buf.capacity() > KEEP_SCRATCH {
                *buf = Vec::new();
            }
            Some(r)
        }
        // Already in use further up this thread's stack: a buffer of its own.
        Err(_) => crate::alloc::try_zeroed_vec(n).map(|mut v| f(&mut v)),
    })
}

/// Runs `f` on `data` after `filter` (in [`Scratch::Filtered`]); `None` if the
/// data does not suit the filter or the scratch cannot be allocated.
pub(crate) fn with_filtered<R>(
    filter: Filter,
    dtype: DType,
    data: &[u8],
    f: impl FnOnce(&[u8]) -> R,
) -> Option<R> {
    if filter == Filter::None {
        return Some(f(data));
    }
    with_scratch(Scratch::Filtered, filtered_len(filter, data.len()), |buf| {
        filter_into(filter, dtype, data, buf).then(|| f(buf))
    })
    .flatten()
}

/// Encodes one chunk: filter, then zstd at `level`. Returns the stored bytes
/// and whether they are encoded; a chunk that does not shrink below
/// [`MAX_ENCODED_SHARE`] (or does not suit the filter) is kept plain.
pub fn encode_chunk(filter: Filter, dtype: DType, level: i32, data: &[u8]) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    if encode_chunk_into(filter, dtype, level, data, &mut out) {
        (out, true)
    } else {
        (data.to_vec(), false)
    }
}

/// [`encode_chunk`] into `out` (cleared first, grown as needed, so that a caller
/// can reuse it): `true` if `out` holds the encoded chunk, `false` if the chunk
/// is stored plain — then its bytes are `data` itself and `out` is empty.
pub fn encode_chunk_into(
    filter: Filter,
    dtype: DType,
    level: i32,
    data: &[u8],
    out: &mut Vec<u8>,
) -> bool {
    let ok = with_filtered(filter, dtype, data, |filtered| {
        compress_into(filtered, level, out)
    })
    .unwrap_or(false);
    if ok && (out.len() as f64) < data.len() as f64 * MAX_ENCODED_SHARE {
        true
    } else {
        out.clear();
        false
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

/// zstd at `level` of `src` into `out` (cleared first) with this thread's
/// context; `false` on failure. `out` always gets zstd's worst-case bound of
/// room, so the frame is exactly that of `zstd::bulk::compress` (a smaller
/// buffer can change how zstd encodes literals).
pub(crate) fn compress_into(src: &[u8], level: i32, out: &mut Vec<u8>) -> bool {
    out.clear();
    if out
        .try_reserve(zstd::zstd_safe::compress_bound(src.len()))
        .is_err()
    {
        return false;
    }
    COMPRESSOR.with(|c| {
        let mut slot = c.borrow_mut();
        if slot.as_ref().map(|(l, _)| *l) != Some(level) {
            match zstd::bulk::Compressor::new(level) {
                Ok(z) => *slot = Some((level, z)),
                Err(_) => return false,
            }
        }
        let Some((_, z)) = slot.as_mut() else {
            return false;
        };
        z.compress_to_buffer(src, out).is_ok()
    })
}

/// Why a chunk failed to decode.
#[derive(Debug)]
pub struct DecodeError(pub String);

/// Decodes an encoded chunk into `out`, whose length is the chunk's decoded
/// length. zstd writes into a buffer of exactly the expected size, so a frame
/// that claims or produces more is an error, never an allocation.
pub fn decode_chunk(
    filter: Filter,
    dtype: DType,
    stored: &[u8],
    out: &mut [u8],
) -> Result<(), DecodeError> {
    if filter == Filter::None {
        return decode_chunk_into(filter, dtype, stored, out, &mut []);
    }
    let n = filtered_len(filter, out.len());
    with_scratch(Scratch::Filtered, n, |scratch| {
        decode_chunk_into(filter, dtype, stored, out, scratch)
    })
    .unwrap_or_else(|| {
        Err(DecodeError(format!(
            "cannot allocate {n} bytes to decode the chunk"
        )))
    })
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
        Ok(n) => {
            return Err(DecodeError(format!(
                "{} bytes follow the zstd frame",
                stored.len() - n
            )))
        }
        Err(code) => {
            return Err(DecodeError(format!(
                "zstd: {}",
                zstd::zstd_safe::get_error_name(code)
            )))
        }
    }
    if let Ok(Some(size)) = zstd::zstd_safe::get_frame_content_size(stored) {
        if size != expect as u64 {
            return Err(DecodeError(format!(
                "the zstd frame declares {size} bytes, expected {expect}"
            )));
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
        return Err(DecodeError(format!(
            "scratch buffer of {} bytes, expected {expect}",
            scratch.len()
        )));
    }
    produce(scratch)?;
    undo_filter(filter, dtype, scratch, out);
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Deterministic bytes (splitmix64).
    pub(crate) fn noise(n: usize, seed: u64) -> Vec<u8> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s.wrapping_add(0x9e3779b97f4a7c15);
                let mut z = s;
                z = (z ^ (z >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94d049bb133111eb);
                (z ^ (z >> 31)) as u8
            })
            .collect()
    }

    /// The format's definition, byte by byte.
    fn shuffle_reference(src: &[u8], width: usize) -> Vec<u8> {
        let n = src.len() / width;
        let mut out = src.to_vec();
        for i in 0..n {
            for j in 0..width {
                out[j * n + i] = src[i * width + j];
            }
        }
        out
    }

    /// Lengths around the 16-element SIMD blocks and the 64-element portable
    /// blocks, with and without a partial trailing element.
    fn lengths(width: usize) -> Vec<usize> {
        let mut elems: Vec<usize> = (0..40).collect();
        elems.extend([63, 64, 65, 127, 128, 129, 1000, 4097]);
        elems
            .into_iter()
            .flat_map(|e| [e * width, e * width + width / 2])
            .collect()
    }

    #[test]
    fn shuffle_matches_the_definition_for_every_width_and_length() {
        for width in [1, 2, 3, 4, 8, 16] {
            for len in lengths(width) {
                let src = noise(len, (width * 7919 + len) as u64);
                let mut s = vec![0xAA; len];
                shuffle(&src, width, &mut s);
                let expect = if [2, 4, 8, 16].contains(&width) {
                    shuffle_reference(&src, width)
                } else {
                    src.clone()
                };
                assert_eq!(s, expect, "width {width} len {len}");
                let mut back = vec![0x55; len];
                unshuffle(&s, width, &mut back);
                assert_eq!(back, src, "width {width} len {len}");
            }
        }
    }

    #[test]
    fn portable_path_matches_the_definition() {
        // The SIMD kernels cover whole blocks on x86-64; check the portable
        // loop on its own over the whole range as well (other targets use it alone).
        fn run<const W: usize>() {
            for len in lengths(W) {
                let src = noise(len, len as u64 + 1);
                let n = len / W;
                let mut s = vec![0; len];
                shuffle_scalar::<W, false>(&src, &mut s, 0);
                s[W * n..].copy_from_slice(&src[W * n..]);
                assert_eq!(s, shuffle_reference(&src, W), "width {W} len {len}");
                let mut back = vec![0; len];
                unshuffle_scalar::<W, false>(&s, &mut back, 0);
                back[W * n..].copy_from_slice(&s[W * n..]);
                assert_eq!(back, src, "width {W} len {len}");
                if W <= 8 {
                    let mut d = src.clone();
                    delta_encode(&mut d, W);
                    let mut ds = vec![0; len];
                    shuffle_scalar::<W, true>(&src, &mut ds, 0);
                    ds[W * n..].copy_from_slice(&src[W * n..]);
                    assert_eq!(ds, shuffle_reference(&d, W), "delta width {W} len {len}");
                    let mut back = vec![0; len];
                    unshuffle_scalar::<W, true>(&ds, &mut back, 0);
                    back[W * n..].copy_from_slice(&ds[W * n..]);
                    assert_eq!(back, src, "delta width {W} len {len}");
                }
            }
        }
        run::<2>();
        run::<4>();
        run::<8>();
        run::<16>();
    }

    #[test]
    fn fused_delta_shuffle_is_delta_then_shuffle() {
        for width in [1, 2, 4, 8] {
            for len in lengths(width) {
                let mut src = noise(len, (width * 31 + len) as u64);
                // Mostly increasing values too, as sorted indices are.
                if len % 2 == 0 {
                    for (i, e) in src.chunks_exact_mut(width).enumerate() {
                        let v = (i as u64 * 37) / 3;
                        e.copy_from_slice(&v.to_le_bytes()[..width]);
                    }
                }
                let mut d = src.clone();
                delta_encode(&mut d, width);
                let mut expect = vec![0; len];
                shuffle(&d, width, &mut expect);
                let mut fused = vec![0xAA; len];
                delta_shuffle(&src, width, &mut fused);
                assert_eq!(fused, expect, "width {width} len {len}");
                let mut back = vec![0x55; len];
                unshuffle_delta(&fused, width, &mut back);
                assert_eq!(back, src, "width {width} len {len}");
            }
        }
    }

    #[test]
    fn bitpack_matches_the_definition() {
        for len in 0..70 {
            let src: Vec<u8> = noise(len, len as u64).iter().map(|b| b & 1).collect();
            let packed = bitpack(&src).unwrap();
            let mut expect = vec![0u8; len.div_ceil(8)];
            for (k, &b) in src.iter().enumerate() {
                expect[k / 8] |= b << (k % 8);
            }
            assert_eq!(packed, expect, "len {len}");
            let mut back = vec![9u8; len];
            bitunpack(&packed, &mut back);
            assert_eq!(back, src, "len {len}");
            for bad in 0..len {
                let mut b = src.clone();
                b[bad] = 2 + (bad as u8 % 250);
                assert!(bitpack(&b).is_none(), "len {len} bad {bad}");
            }
        }
    }

    #[test]
    fn encoded_chunks_are_zstd_frames_of_the_filtered_bytes() {
        // The stored bytes are a contract: whatever buffer or context encodes a
        // chunk, the frame is that of a one-shot zstd of the filtered bytes.
        let floats: Vec<u8> = (0..200_000u32)
            .flat_map(|i| ((i % 1000) as f32 * 0.01).to_le_bytes())
            .collect();
        let mut out = vec![7u8; 3];
        let cases = [
            (Filter::Shuffle, DType::F32),
            (Filter::None, DType::F32),
            (Filter::DeltaShuffle, DType::U32),
        ];
        for (filter, dtype) in cases {
            for level in [1, 3] {
                for len in [4, 64, 4096, 100_000, floats.len()] {
                    let data = &floats[..len];
                    let expect =
                        zstd::bulk::compress(&apply_filter(filter, dtype, data).unwrap(), level)
                            .unwrap();
                    let encoded = encode_chunk_into(filter, dtype, level, data, &mut out);
                    if (expect.len() as f64) < len as f64 * MAX_ENCODED_SHARE {
                        assert!(encoded);
                        assert_eq!(out, expect, "{filter:?} level {level} len {len}");
                    } else {
                        assert!(!encoded && out.is_empty());
                    }
                }
            }
        }
    }

    #[test]
    fn scratch_is_reentrant_and_releases_large_buffers() {
        let r = with_scratch(Scratch::Chunk, 10, |a| {
            a.fill(1);
            with_scratch(Scratch::Chunk, 10, |b| {
                b.fill(2);
                b.len()
            })
        });
        assert_eq!(r, Some(Some(10)));
        assert_eq!(
            with_scratch(Scratch::Chunk, KEEP_SCRATCH + 1, |b| b.len()),
            Some(KEEP_SCRATCH + 1)
        );
        CHUNK.with(|c| assert_eq!(c.borrow().capacity(), 0));
    }

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
