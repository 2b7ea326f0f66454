//! Vector code chosen at run time: adding packed residues into machine words, the inner
//! loop of masking (keystream into the values, [`crate::secagg::prg`]) and of
//! aggregation (payloads into the accumulator, [`crate::secagg::sum`]); and
//! [`vectorised`], which compiles a caller's loop for the widest vector instructions
//! the CPU has (quantization, [`crate::secagg::quantize`]).
//!
//! Element i of a stream of w-byte residues is the little-endian integer in bytes
//! `[w·i, w·i + w)` (docs/protocol.md, the keystream cut). One safe entry point,
//! [`add_packed`], and three implementations chosen at run time:
//!
//! - **AVX-512 VBMI** (x86-64 with `avx512f`, `avx512bw`, `avx512vbmi`): one 64-byte load
//!   and one zero-masking `vpermb` spread 8 residues into u64 lanes (16 into u32 lanes),
//!   one add or subtract folds them in.
//! - **AVX2**: two 16-byte loads and one `vpshufb` spread 4 residues into u64 lanes (8
//!   into u32 lanes).
//! - **Scalar**: one whole-word load per residue at byte `w·i`; its bytes above the low w
//!   are the next residues and only reach bits at or above 8·w, which every reader
//!   discards. Each width is its own monomorphised loop, so every load is fixed-size.
//!
//! The vector code takes the whole blocks whose loads lie inside the data; the scalar
//! code takes the rest, so no caller needs spare bytes after its data.
//!
//! The inverse, [`pack`] (masked words into the w-byte residues of a file or a round's
//! chunk), uses one `vpermb` per 8 u64 words (16 u32) with AVX-512 VBMI, else one
//! fixed-size copy per word; each 64-byte store lies inside the packed bytes.
//!
//! [`vectorised`] runs a closure inside a function compiled for AVX-512 (F, BW, DQ, VL
//! and VBMI) or AVX2, whichever this CPU has, so that the compiler vectorises the
//! closure's loop for those instructions (the release build targets the x86-64
//! baseline, SSE2). The closure is safe code and computes the same bits at every level.
//!
//! One of the three modules of the crate allowed `unsafe` code (the crate denies it
//! everywhere else; the others are [`crate::secagg::ctr_fold`] and [`crate::hugepages`]): the intrinsics that read and
//! write memory take raw pointers, and a function compiled for CPU features (the
//! kernels, and the two functions behind [`vectorised`]) may only be called once they
//! are detected. Every `unsafe` block is one of those two things, and says why it holds.
// An exception to the crate's `unsafe_code = "deny"` (see the module docs above).
#![allow(unsafe_code)]
#![deny(clippy::undocumented_unsafe_blocks)]

use crate::secagg::keys::Sign;
use crate::secagg::ring::{Word, Words, WordsMut};

/// acc[i] = acc[i] ± LE(bytes[w·i .. w·i + w]) (wrapping), for i < min(acc.len(),
/// bytes.len() / w), w = `width` clamped to 1..=`W::BYTES`. Afterwards only the low 8·w
/// bits of each touched word are defined (callers reduce mod 2^(8w)); the other words
/// are untouched.
pub fn add_packed<W: Word>(acc: &mut [W], bytes: &[u8], width: usize, sign: Sign) {
    add_packed_with(Level::best(), acc, bytes, width, sign);
}

/// Packs words into residues, the inverse of the spreading [`add_packed`] reads: bytes
/// `[w·i, w·i + w)` of `out` become the low w bytes of `words[i]`, little-endian, for
/// i < min(words.len(), out.len() / w), w = `width` clamped to 1..=`W::BYTES`. The rest
/// of `out` is untouched.
pub fn pack<W: Word>(words: &[W], width: usize, out: &mut [u8]) {
    pack_with(Level::best(), words, width, out);
}

/// [`pack`] with the given implementation (the tests run every one).
pub(crate) fn pack_with<W: Word>(level: Level, words: &[W], width: usize, out: &mut [u8]) {
    let width = width.clamp(1, W::BYTES);
    let n = words.len().min(out.len() / width);
    // The vector code stores whole 64-byte blocks, each past its own w·L bytes; limiting
    // `out` to the packed bytes keeps every such store inside them, where the next block
    // or the scalar tail overwrites it.
    let (words, out) = (&words[..n], &mut out[..n * width]);
    let done = pack_vector(level, words, width, out);
    pack_scalar(&words[done..], width, &mut out[done * width..]);
}

#[cfg(target_arch = "x86_64")]
fn pack_vector<W: Word>(level: Level, words: &[W], width: usize, out: &mut [u8]) -> usize {
    match W::words(words) {
        Words::U32(words) => x86::pack_u32s(level, words, width, out),
        Words::U64(words) => x86::pack_u64s(level, words, width, out),
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn pack_vector<W: Word>(_: Level, _: &[W], _: usize, _: &mut [u8]) -> usize {
    0
}

/// The scalar packing, one fixed-size copy per word.
fn pack_scalar<W: Word>(words: &[W], width: usize, out: &mut [u8]) {
    match width {
        1 => pack_narrow::<W, 1>(words, out),
        2 => pack_narrow::<W, 2>(words, out),
        3 => pack_narrow::<W, 3>(words, out),
        4 => pack_narrow::<W, 4>(words, out),
        5 => pack_narrow::<W, 5>(words, out),
        6 => pack_narrow::<W, 6>(words, out),
        7 => pack_narrow::<W, 7>(words, out),
        _ => pack_narrow::<W, 8>(words, out),
    }
}

#[inline(always)]
fn pack_narrow<W: Word, const N: usize>(words: &[W], out: &mut [u8]) {
    for (w, c) in words.iter().zip(out.chunks_exact_mut(N)) {
        c.copy_from_slice(&w.le8()[..N]);
    }
}

/// Runs `f` compiled for the widest vector instructions this CPU has (AVX-512 or AVX2,
/// detected at run time; the x86-64 baseline otherwise), so that the loops the compiler
/// vectorises inside it use 512- or 256-bit vectors instead of SSE2's 128.
///
/// Only code inlined into the function compiled for the features gets them: `f` must be
/// a closure marked `#[inline(always)]`, and its loop must call nothing that stays out
/// of line (`Vec::extend` does; indexing, slice iterators and small generic functions
/// do not). Three things kept loops narrow when quantization moved here: such a call,
/// loop constants captured by reference (reloaded every iteration; capture them with
/// `move`), and Rust's saturating float-to-integer `as`, which LLVM turns into one
/// scalar conversion per lane. Nothing fails if a loop stays narrow, it is only slower:
/// check the machine code after a change (docs/performance.md says how).
///
/// What `f` computes does not depend on the instructions: Rust's integer and
/// floating-point arithmetic is defined operation by operation (IEEE 754, round to
/// nearest), and the compiler neither reassociates floating-point operations nor fuses
/// a multiply and an add, so vector lanes give the bits the scalar loop gives (NaN
/// payloads aside, which Rust leaves unspecified everywhere).
#[inline(always)]
pub fn vectorised<R>(f: impl FnOnce() -> R) -> R {
    vectorised_with(Level::best(), f)
}

/// [`vectorised`] at a given level (a level the CPU lacks runs the baseline code).
#[inline(always)]
pub(crate) fn vectorised_with<R>(level: Level, f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    match level {
        Level::Avx512 if x86::has_avx512() => {
            // SAFETY: x86::avx512 is compiled for the features has_avx512() has just
            // detected on this CPU.
            return unsafe { x86::avx512(f) };
        }
        Level::Avx2 if x86::has_avx2() => {
            // SAFETY: x86::avx2 is compiled for avx2, which has_avx2() has just detected
            // on this CPU.
            return unsafe { x86::avx2(f) };
        }
        _ => {}
    }
    // Elsewhere every level runs the baseline code.
    #[cfg(not(target_arch = "x86_64"))]
    let _ = level;
    f()
}

/// A set of vector instructions: which kernels [`add_packed`] runs, and what
/// [`vectorised`] compiles its closure for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(crate) enum Level {
    /// The x86-64 baseline (SSE2) or another architecture: whole-word loads, one
    /// residue at a time.
    Scalar,
    /// AVX2: `vpshufb` on 256-bit vectors.
    Avx2,
    /// AVX-512 F, BW, DQ, VL and VBMI: `vpermb` on 512-bit vectors.
    Avx512,
}

impl Level {
    /// The fastest level this CPU runs.
    pub(crate) fn best() -> Level {
        #[cfg(target_arch = "x86_64")]
        {
            if x86::has_avx512() {
                return Level::Avx512;
            }
            if x86::has_avx2() {
                return Level::Avx2;
            }
        }
        Level::Scalar
    }
}

/// The levels this CPU runs, slowest first (for tests, which run them all).
#[cfg(test)]
pub(crate) fn available_levels() -> Vec<Level> {
    let mut levels = vec![Level::Scalar];
    #[cfg(target_arch = "x86_64")]
    {
        if x86::has_avx2() {
            levels.push(Level::Avx2);
        }
        if x86::has_avx512() {
            levels.push(Level::Avx512);
        }
    }
    levels
}

/// [`add_packed`] at a given level (a level the CPU lacks runs as scalar code).
pub(crate) fn add_packed_with<W: Word>(
    level: Level,
    acc: &mut [W],
    bytes: &[u8],
    width: usize,
    sign: Sign,
) {
    let width = width.clamp(1, W::BYTES);
    let n = acc.len().min(bytes.len() / width);
    let (acc, bytes) = (&mut acc[..n], &bytes[..n * width]);
    // Scalar code up to the first word on a 64-byte boundary (so that the vector code's
    // loads and stores of words do not straddle cache lines), the vector code's whole
    // blocks from there (done ≤ n), scalar code for the rest.
    let head = match level {
        Level::Scalar => 0,
        _ => acc.as_ptr().align_offset(64).min(n),
    };
    scalar(&mut acc[..head], &bytes[..head * width], width, sign);
    let done = head + vector(level, &mut acc[head..], &bytes[head * width..], width, sign);
    scalar(&mut acc[done..], &bytes[done * width..], width, sign);
}

/// Runs the vector code of `level` on the leading whole blocks; returns how many
/// elements it added.
#[cfg(target_arch = "x86_64")]
fn vector<W: Word>(level: Level, acc: &mut [W], bytes: &[u8], width: usize, sign: Sign) -> usize {
    match W::words_mut(acc) {
        WordsMut::U32(acc) => x86::u32s(level, acc, bytes, width, sign),
        WordsMut::U64(acc) => x86::u64s(level, acc, bytes, width, sign),
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn vector<W: Word>(_: Level, _: &mut [W], _: &[u8], _: usize, _: Sign) -> usize {
    0
}

/// The scalar implementation (all of it for [`Level::Scalar`], the tail for the others).
fn scalar<W: Word>(acc: &mut [W], bytes: &[u8], width: usize, sign: Sign) {
    match sign {
        Sign::Add => scalar_op(acc, bytes, width, W::add),
        Sign::Sub => scalar_op(acc, bytes, width, W::sub),
    }
}

#[inline(always)]
fn scalar_op<W: Word>(acc: &mut [W], bytes: &[u8], width: usize, op: impl Fn(W, W) -> W) {
    match width {
        1 => fold::<W, 1>(acc, bytes, op),
        2 => fold::<W, 2>(acc, bytes, op),
        3 => fold::<W, 3>(acc, bytes, op),
        4 => fold::<W, 4>(acc, bytes, op),
        5 => fold::<W, 5>(acc, bytes, op),
        6 => fold::<W, 6>(acc, bytes, op),
        7 => fold::<W, 7>(acc, bytes, op),
        _ => fold::<W, 8>(acc, bytes, op),
    }
}

/// `acc[i] = op(acc[i], residue i)` for residues of `N` bytes (`N` ≤ `W::BYTES`). With
/// `N` known at compile time each residue is one fixed-size load.
#[inline(always)]
fn fold<W: Word, const N: usize>(acc: &mut [W], bytes: &[u8], op: impl Fn(W, W) -> W) {
    let n = acc.len().min(bytes.len() / N);
    let (acc, bytes) = (&mut acc[..n], &bytes[..n * N]);
    if N >= W::BYTES {
        for (a, c) in acc.iter_mut().zip(bytes.chunks_exact(N)) {
            *a = op(*a, W::from_le(&c[..W::BYTES]));
        }
    } else {
        // Whole-word loads at byte i·N while a whole word fits in `bytes`; the last few
        // residues, whose whole-word load would run past it, are read narrow.
        let wide = match bytes.len().checked_sub(W::BYTES) {
            Some(rest) => (rest / N + 1).min(n),
            None => 0,
        };
        let (head, tail) = acc.split_at_mut(wide);
        for (a, c) in head.iter_mut().zip(bytes.windows(W::BYTES).step_by(N)) {
            *a = op(*a, W::from_le(c));
        }
        for (a, c) in tail.iter_mut().zip(bytes[wide * N..].chunks_exact(N)) {
            *a = op(*a, W::from_le_narrow(c));
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    //! The vector kernels. Each returns how many leading elements it added: whole blocks
    //! only, and only those whose loads lie inside `bytes` (the caller does the rest).

    use std::arch::x86_64::{
        __m128i, __m256i, __m512i, _mm_loadu_si128, _mm256_add_epi32, _mm256_add_epi64,
        _mm256_broadcastsi128_si256, _mm256_castsi128_si256, _mm256_inserti128_si256,
        _mm256_loadu_si256, _mm256_shuffle_epi8, _mm256_storeu_si256, _mm256_sub_epi32,
        _mm256_sub_epi64, _mm512_add_epi32, _mm512_add_epi64, _mm512_loadu_si512,
        _mm512_maskz_permutexvar_epi8, _mm512_permutexvar_epi8, _mm512_storeu_si512,
        _mm512_sub_epi32, _mm512_sub_epi64,
    };

    use super::{Level, Sign};

    /// Whether the AVX-512 kernels can run, and [`avx512`]: F, BW, DQ, VL and VBMI
    /// (every CPU with VBMI has the other four).
    pub(super) fn has_avx512() -> bool {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512dq")
            && std::arch::is_x86_feature_detected!("avx512vl")
            && std::arch::is_x86_feature_detected!("avx512vbmi")
    }

    /// Whether the AVX2 kernels can run.
    pub(super) fn has_avx2() -> bool {
        std::arch::is_x86_feature_detected!("avx2")
    }

    /// Runs `f` compiled for AVX-512 (see [`super::vectorised`]).
    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx512vbmi")]
    pub(super) fn avx512<R>(f: impl FnOnce() -> R) -> R {
        f()
    }

    /// Runs `f` compiled for AVX2 (see [`super::vectorised`]).
    #[target_feature(enable = "avx2")]
    pub(super) fn avx2<R>(f: impl FnOnce() -> R) -> R {
        f()
    }

    /// The vector code for u64 words.
    pub(super) fn u64s(level: Level, acc: &mut [u64], bytes: &[u8], w: usize, sign: Sign) -> usize {
        let w = w.clamp(1, 8);
        match level {
            Level::Avx512 if has_avx512() => {
                // SAFETY: avx512_u64 is compiled for avx512f, avx512bw and avx512vbmi,
                // and has_avx512() has just detected them (and more) on this CPU.
                unsafe { avx512_u64(acc, bytes, w, sign) }
            }
            // At w = 8 the scalar loop (whole words, which the compiler vectorises) is
            // as fast.
            Level::Avx2 if w < 8 && has_avx2() => {
                // SAFETY: avx2_u64 is compiled for avx2, which has_avx2() has just
                // detected on this CPU.
                unsafe { avx2_u64(acc, bytes, w, sign) }
            }
            _ => 0,
        }
    }

    /// The vector code for u32 words.
    pub(super) fn u32s(level: Level, acc: &mut [u32], bytes: &[u8], w: usize, sign: Sign) -> usize {
        let w = w.clamp(1, 4);
        match level {
            Level::Avx512 if has_avx512() => {
                // SAFETY: avx512_u32 is compiled for avx512f, avx512bw and avx512vbmi,
                // and has_avx512() has just detected them (and more) on this CPU.
                unsafe { avx512_u32(acc, bytes, w, sign) }
            }
            // At w = 4 the scalar loop (whole words, which the compiler vectorises) is
            // as fast.
            Level::Avx2 if w < 4 && has_avx2() => {
                // SAFETY: avx2_u32 is compiled for avx2, which has_avx2() has just
                // detected on this CPU.
                unsafe { avx2_u32(acc, bytes, w, sign) }
            }
            _ => 0,
        }
    }

    /// The packing vector code for u64 words: AVX-512 only (the scalar copies are as
    /// fast as AVX2 shuffles here).
    pub(super) fn pack_u64s(level: Level, words: &[u64], w: usize, out: &mut [u8]) -> usize {
        match level {
            Level::Avx512 if has_avx512() => {
                // SAFETY: avx512_pack_u64 is compiled for avx512f, avx512bw and
                // avx512vbmi, and has_avx512() has just detected all three on this CPU.
                unsafe { avx512_pack_u64(words, w.clamp(1, 8), out) }
            }
            _ => 0,
        }
    }

    /// The packing vector code for u32 words: AVX-512 only.
    pub(super) fn pack_u32s(level: Level, words: &[u32], w: usize, out: &mut [u8]) -> usize {
        match level {
            Level::Avx512 if has_avx512() => {
                // SAFETY: avx512_pack_u32 is compiled for avx512f, avx512bw and
                // avx512vbmi, and has_avx512() has just detected all three on this CPU.
                unsafe { avx512_pack_u32(words, w.clamp(1, 4), out) }
            }
            _ => 0,
        }
    }

    /// The byte permutation that gathers the low `w` bytes of each `lane`-byte lane into
    /// consecutive residues: byte j < (64 / lane)·w takes byte (j / w)·lane + j mod w.
    /// The bytes after those take byte 0 (they are overwritten, see [`pack_blocks`]).
    fn gather(w: usize, lane: usize) -> [u8; 64] {
        let mut index = [0u8; 64];
        for (j, slot) in index.iter_mut().enumerate().take(64 / lane * w) {
            // (j / w)·lane + j mod w < 64, as j < (64 / lane)·w and w ≤ lane.
            *slot = ((j / w) * lane + j % w) as u8;
        }
        index
    }

    /// 8 words into 8·w bytes per `vpermb`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
    fn avx512_pack_u64(words: &[u64], w: usize, out: &mut [u8]) -> usize {
        let index = load512(&gather(w, 8));
        let (blocks, _) = words.as_chunks::<8>();
        pack_blocks(blocks, 8 * w, out, |b| {
            _mm512_permutexvar_epi8(index, load512(b))
        })
    }

    /// 16 words into 16·w bytes per `vpermb`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
    fn avx512_pack_u32(words: &[u32], w: usize, out: &mut [u8]) -> usize {
        let index = load512(&gather(w, 4));
        let (blocks, _) = words.as_chunks::<16>();
        pack_blocks(blocks, 16 * w, out, |b| {
            _mm512_permutexvar_epi8(index, load512(b))
        })
    }

    /// Stores `packed(block k)` as the 64 bytes of `out` from k·step, for the leading
    /// blocks whose 64 bytes lie inside `out`; returns how many words they hold. Each
    /// store's bytes past its own `step` are overwritten by the next block's store (or,
    /// after the last, by the caller's scalar tail: `out` holds exactly the packed bytes).
    #[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
    fn pack_blocks<T, const L: usize>(
        blocks: &[[T; L]],
        step: usize,
        out: &mut [u8],
        packed: impl Fn(&[T; L]) -> __m512i,
    ) -> usize {
        let mut done = 0;
        for (k, block) in blocks.iter().enumerate() {
            let Some(dst) = out
                .get_mut(k * step..)
                .and_then(|o| o.first_chunk_mut::<64>())
            else {
                break;
            };
            store512(dst, packed(block));
            done += L;
        }
        done
    }

    /// Plain integer arrays of exactly `BYTES` bytes (every byte initialised, any bit
    /// pattern valid): what the loads and stores below may read and write. Private, and
    /// implemented for these arrays only; the sizes are also checked at compile time.
    trait Block<const BYTES: usize> {}
    impl Block<64> for [u8; 64] {}
    impl Block<64> for [u32; 16] {}
    impl Block<64> for [u64; 8] {}
    impl Block<32> for [u32; 8] {}
    impl Block<32> for [u64; 4] {}

    /// Loads a 64-byte block.
    #[target_feature(enable = "avx512f")]
    fn load512<T: Block<64>>(src: &T) -> __m512i {
        const { assert!(size_of::<T>() == 64) };
        // SAFETY: `src` is a reference to a T, 64 initialised bytes (Block<64>, size
        // checked above), so the 64 bytes read are valid; loadu needs no alignment.
        unsafe { _mm512_loadu_si512(std::ptr::from_ref(src).cast()) }
    }

    /// Stores a 64-byte block.
    #[target_feature(enable = "avx512f")]
    fn store512<T: Block<64>>(dst: &mut T, v: __m512i) {
        const { assert!(size_of::<T>() == 64) };
        // SAFETY: `dst` is an exclusive reference to a T of 64 bytes (Block<64>, size
        // checked above) for which every bit pattern is valid; storeu needs no alignment.
        unsafe { _mm512_storeu_si512(std::ptr::from_mut(dst).cast(), v) }
    }

    /// Loads a 32-byte block.
    #[target_feature(enable = "avx")]
    fn load256<T: Block<32>>(src: &T) -> __m256i {
        const { assert!(size_of::<T>() == 32) };
        // SAFETY: `src` is a reference to a T, 32 initialised bytes (Block<32>, size
        // checked above), so the 32 bytes read are valid; loadu needs no alignment.
        unsafe { _mm256_loadu_si256(std::ptr::from_ref(src).cast()) }
    }

    /// Stores a 32-byte block.
    #[target_feature(enable = "avx")]
    fn store256<T: Block<32>>(dst: &mut T, v: __m256i) {
        const { assert!(size_of::<T>() == 32) };
        // SAFETY: `dst` is an exclusive reference to a T of 32 bytes (Block<32>, size
        // checked above) for which every bit pattern is valid; storeu needs no alignment.
        unsafe { _mm256_storeu_si256(std::ptr::from_mut(dst).cast(), v) }
    }

    /// Loads a 16-byte block.
    #[target_feature(enable = "sse2")]
    fn load128(src: &[u8; 16]) -> __m128i {
        // SAFETY: `src` is a reference to 16 initialised bytes; loadu needs no alignment.
        unsafe { _mm_loadu_si128(std::ptr::from_ref(src).cast()) }
    }

    /// The byte permutation that spreads consecutive residues of `w` bytes into lanes of
    /// `lane` bytes: byte j of lane k takes byte k·w + j of the source when j < w, else
    /// `fill`. Also the mask of the bytes that take a source byte.
    fn spread<const V: usize>(w: usize, lane: usize, fill: u8) -> ([u8; V], u64) {
        let mut index = [fill; V];
        let mut keep = 0u64;
        for (b, slot) in index.iter_mut().enumerate() {
            let (k, j) = (b / lane, b % lane);
            if j < w {
                // k·w + j < (V / lane)·w ≤ V ≤ 64, as w ≤ lane (the callers clamp w).
                *slot = (k * w + j) as u8;
                keep |= 1 << b;
            }
        }
        (index, keep)
    }

    /// Runs `block` over consecutive blocks of `L` words of `acc`, block j with the
    /// `span` bytes of `bytes` from `j·step`, four blocks per iteration while their bytes
    /// fit, then one at a time; stops at the first block whose bytes do not fit (or for
    /// which `block` returns false). Returns how many words it covered.
    #[inline(always)]
    fn each_block<T, const L: usize>(
        acc: &mut [T],
        bytes: &[u8],
        step: usize,
        span: usize,
        mut block: impl FnMut(&mut [T; L], &[u8]) -> bool,
    ) -> usize {
        let (blocks, _) = acc.as_chunks_mut::<L>();
        let mut done = 0;
        let groups = blocks.chunks_exact_mut(4);
        for (group, src) in groups.zip(bytes.windows(3 * step + span).step_by(4 * step)) {
            for (k, dst) in group.iter_mut().enumerate() {
                match src.get(k * step..k * step + span) {
                    Some(src) if block(dst, src) => done += 1,
                    _ => return done * L,
                }
            }
        }
        let rest = bytes.get(done * step..).unwrap_or_default();
        for (dst, src) in blocks[done..]
            .iter_mut()
            .zip(rest.windows(span).step_by(step))
        {
            if !block(dst, src) {
                break;
            }
            done += 1;
        }
        done * L
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
    fn avx512_u64(acc: &mut [u64], bytes: &[u8], w: usize, sign: Sign) -> usize {
        match sign {
            Sign::Add => avx512_u64_op::<false>(acc, bytes, w),
            Sign::Sub => avx512_u64_op::<true>(acc, bytes, w),
        }
    }

    /// 8 residues of w ≤ 8 bytes from each 64-byte load.
    #[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
    fn avx512_u64_op<const SUB: bool>(acc: &mut [u64], bytes: &[u8], w: usize) -> usize {
        let (index, keep) = spread::<64>(w, 8, 0);
        let index = load512(&index);
        each_block(acc, bytes, 8 * w, 64, |dst: &mut [u64; 8], src| {
            let Some(src) = src.first_chunk::<64>() else {
                return false;
            };
            let x = _mm512_maskz_permutexvar_epi8(keep, index, load512(src));
            let a = load512(dst);
            let r = if SUB {
                _mm512_sub_epi64(a, x)
            } else {
                _mm512_add_epi64(a, x)
            };
            store512(dst, r);
            true
        })
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
    fn avx512_u32(acc: &mut [u32], bytes: &[u8], w: usize, sign: Sign) -> usize {
        match sign {
            Sign::Add => avx512_u32_op::<false>(acc, bytes, w),
            Sign::Sub => avx512_u32_op::<true>(acc, bytes, w),
        }
    }

    /// 16 residues of w ≤ 4 bytes from each 64-byte load.
    #[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
    fn avx512_u32_op<const SUB: bool>(acc: &mut [u32], bytes: &[u8], w: usize) -> usize {
        let (index, keep) = spread::<64>(w, 4, 0);
        let index = load512(&index);
        each_block(acc, bytes, 16 * w, 64, |dst: &mut [u32; 16], src| {
            let Some(src) = src.first_chunk::<64>() else {
                return false;
            };
            let x = _mm512_maskz_permutexvar_epi8(keep, index, load512(src));
            let a = load512(dst);
            let r = if SUB {
                _mm512_sub_epi32(a, x)
            } else {
                _mm512_add_epi32(a, x)
            };
            store512(dst, r);
            true
        })
    }

    #[target_feature(enable = "avx2")]
    fn avx2_u64(acc: &mut [u64], bytes: &[u8], w: usize, sign: Sign) -> usize {
        match sign {
            Sign::Add => avx2_u64_op::<false>(acc, bytes, w),
            Sign::Sub => avx2_u64_op::<true>(acc, bytes, w),
        }
    }

    /// 4 residues of w ≤ 8 bytes from two 16-byte loads, 2 residues each, one load per
    /// 128-bit half (`vpshufb` only moves bytes within a half).
    #[target_feature(enable = "avx2")]
    fn avx2_u64_op<const SUB: bool>(acc: &mut [u64], bytes: &[u8], w: usize) -> usize {
        let (index, _) = spread::<16>(w, 8, 0x80);
        let index = _mm256_broadcastsi128_si256(load128(&index));
        each_block(acc, bytes, 4 * w, 2 * w + 16, |dst: &mut [u64; 4], src| {
            let (Some(lo), Some(hi)) = (src.first_chunk::<16>(), src.last_chunk::<16>()) else {
                return false;
            };
            let v = _mm256_inserti128_si256::<1>(_mm256_castsi128_si256(load128(lo)), load128(hi));
            let x = _mm256_shuffle_epi8(v, index);
            let a = load256(dst);
            let r = if SUB {
                _mm256_sub_epi64(a, x)
            } else {
                _mm256_add_epi64(a, x)
            };
            store256(dst, r);
            true
        })
    }

    #[target_feature(enable = "avx2")]
    fn avx2_u32(acc: &mut [u32], bytes: &[u8], w: usize, sign: Sign) -> usize {
        match sign {
            Sign::Add => avx2_u32_op::<false>(acc, bytes, w),
            Sign::Sub => avx2_u32_op::<true>(acc, bytes, w),
        }
    }

    /// 8 residues of w ≤ 4 bytes from two 16-byte loads, 4 residues each.
    #[target_feature(enable = "avx2")]
    fn avx2_u32_op<const SUB: bool>(acc: &mut [u32], bytes: &[u8], w: usize) -> usize {
        let (index, _) = spread::<16>(w, 4, 0x80);
        let index = _mm256_broadcastsi128_si256(load128(&index));
        each_block(acc, bytes, 8 * w, 4 * w + 16, |dst: &mut [u32; 8], src| {
            let (Some(lo), Some(hi)) = (src.first_chunk::<16>(), src.last_chunk::<16>()) else {
                return false;
            };
            let v = _mm256_inserti128_si256::<1>(_mm256_castsi128_si256(load128(lo)), load128(hi));
            let x = _mm256_shuffle_epi8(v, index);
            let a = load256(dst);
            let r = if SUB {
                _mm256_sub_epi32(a, x)
            } else {
                _mm256_add_epi32(a, x)
            };
            store256(dst, r);
            true
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The definition, one residue at a time.
    fn reference<W: Word>(acc: &mut [W], bytes: &[u8], width: usize, sign: Sign) {
        for (a, c) in acc.iter_mut().zip(bytes.chunks_exact(width)) {
            let x = W::from_le_narrow(c);
            *a = match sign {
                Sign::Add => a.add(x),
                Sign::Sub => a.sub(x),
            };
        }
    }

    /// SplitMix64: reproducible filler.
    fn filler(mut seed: u64) -> impl FnMut() -> u64 {
        move || {
            seed = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let z = (seed ^ (seed >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            let z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }
    }

    /// Runs every available level on the same input and compares with [`reference`]:
    /// the low 8·w bits of the touched words, and the untouched words exactly. The
    /// accumulator starts `skip` words into its allocation (the vector code's start
    /// depends on its alignment).
    fn check<W: Word>(
        width: usize,
        acc_len: usize,
        byte_len: usize,
        skip: usize,
        seed: u64,
        sign: Sign,
    ) -> std::result::Result<(), TestCaseError> {
        let width = width.clamp(1, W::BYTES);
        let mut next = filler(seed);
        let acc: Vec<W> = (0..skip + acc_len).map(|_| W::from_u64(next())).collect();
        let bytes: Vec<u8> = (0..byte_len).map(|_| next() as u8).collect();
        let mut want = acc.clone();
        reference(&mut want[skip..], &bytes, width, sign);
        let touched = skip..skip + acc_len.min(byte_len / width);
        let low = |x: W| x.to_u64() & (u64::MAX >> (64 - 8 * width as u32));
        for level in available_levels() {
            let mut got = acc.clone();
            add_packed_with(level, &mut got[skip..], &bytes, width, sign);
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                if touched.contains(&i) {
                    prop_assert_eq!(low(*g), low(*w), "{:?} width {} word {}", level, width, i);
                } else {
                    prop_assert_eq!(g, w, "{:?} width {} untouched word {}", level, width, i);
                }
            }
        }
        Ok(())
    }

    fn sign(sub: bool) -> Sign {
        if sub { Sign::Sub } else { Sign::Add }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        #[test]
        fn every_level_matches_the_reference(
            width in 1usize..=8,
            acc_len in prop_oneof![0usize..70, 0usize..2000],
            byte_len in prop_oneof![0usize..600, 0usize..16_100],
            skip in 0usize..16,
            seed: u64,
            sub: bool,
        ) {
            check::<u32>(width, acc_len, byte_len, skip, seed, sign(sub))?;
            check::<u64>(width, acc_len, byte_len, skip, seed, sign(sub))?;
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        #[test]
        fn every_level_packs_like_the_definition(
            width in 1usize..=8,
            len in prop_oneof![0usize..70, 0usize..2000],
            room in prop_oneof![Just(usize::MAX), 0usize..16_100],
            skip in 0usize..16,
            seed: u64,
        ) {
            let mut next = filler(seed);
            let words: Vec<u64> = (0..skip + len).map(|_| next()).collect();
            let narrow: Vec<u32> = words.iter().map(|w| *w as u32).collect();
            for w in [width, width.min(4)] {
                let room = room.min(len * w + 70);
                let before: Vec<u8> = (0..room).map(|_| next() as u8).collect();
                let n = len.min(room / w);
                let mut want = before.clone();
                for (i, c) in want[..n * w].chunks_exact_mut(w).enumerate() {
                    c.copy_from_slice(&words[skip + i].to_le_bytes()[..w]);
                }
                for level in available_levels() {
                    let mut got = before.clone();
                    if w <= 4 {
                        pack_with(level, &narrow[skip..], w, &mut got);
                        prop_assert_eq!(&got, &want, "{:?} u32 width {}", level, w);
                    }
                    let mut got = before.clone();
                    pack_with(level, &words[skip..], w, &mut got);
                    prop_assert_eq!(&got, &want, "{:?} u64 width {}", level, w);
                }
            }
        }
    }

    #[test]
    fn packing_then_adding_gives_the_words_back() {
        let words: Vec<u64> = (0..1000u64)
            .map(|i| i.wrapping_mul(0x9E37_79B9_7F4A_7C15))
            .collect();
        for level in available_levels() {
            for width in 1..=8usize {
                let mut bytes = vec![0u8; words.len() * width];
                pack_with(level, &words, width, &mut bytes);
                let mut back = vec![0u64; words.len()];
                add_packed_with(level, &mut back, &bytes, width, Sign::Add);
                let mask = u64::MAX >> (64 - 8 * width as u32);
                for (i, (b, w)) in back.iter().zip(&words).enumerate() {
                    assert_eq!(b & mask, w & mask, "{level:?} width {width} word {i}");
                }
            }
        }
    }

    #[test]
    fn vectorised_runs_the_closure_once_at_every_level() {
        for level in available_levels() {
            let mut runs = 0;
            let xs: Vec<u64> = (0..1000).collect();
            let sum = vectorised_with(level, || {
                runs += 1;
                xs.iter().map(|x| x * x).sum::<u64>()
            });
            assert_eq!((runs, sum), (1, 332_833_500), "{level:?}");
        }
        assert_eq!(vectorised(|| 7), 7);
    }

    #[test]
    fn words_past_the_data_are_untouched() {
        for level in available_levels() {
            for width in 1..=8usize {
                for (acc_len, elems) in [(1000, 997), (997, 1000), (64, 63), (5, 5)] {
                    for sub in [false, true] {
                        let mut acc = vec![u64::MAX; acc_len];
                        let bytes = vec![0xA5u8; elems * width + width - 1];
                        add_packed_with(level, &mut acc, &bytes, width, sign(sub));
                        let n = acc_len.min(elems);
                        assert!(
                            acc[n..].iter().all(|x| *x == u64::MAX),
                            "{level:?} width {width}"
                        );
                        let mut acc32 = vec![u32::MAX; acc_len];
                        add_packed_with(level, &mut acc32, &bytes, width, sign(sub));
                        let n = acc_len.min(bytes.len() / width.min(4));
                        assert!(
                            acc32[n..].iter().all(|x| *x == u32::MAX),
                            "{level:?} width {width}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn exact_values_on_known_bytes() {
        // Residues 0x..0201, 0x..0403, …: element i of width w is bytes [w·i, w·i + w).
        let bytes: Vec<u8> = (1..=200u8).collect();
        for level in available_levels() {
            for width in 1..=8usize {
                let mut acc = vec![0u64; 24];
                add_packed_with(level, &mut acc, &bytes, width, Sign::Add);
                for (i, a) in acc.iter().enumerate() {
                    let mut b = [0u8; 8];
                    b[..width].copy_from_slice(&bytes[width * i..width * i + width]);
                    let mask = u64::MAX >> (64 - 8 * width as u32);
                    assert_eq!(a & mask, u64::from_le_bytes(b), "{level:?} {width} {i}");
                }
            }
        }
    }

    /// Throughput of each level (not a check): `cargo test --release --lib
    /// secagg::simd::tests::throughput -- --ignored --nocapture`. The accumulator stays
    /// in L1/L2, as in masking's blocks.
    #[test]
    #[ignore = "a measurement, not a check"]
    fn throughput() {
        fn run<W: Word>(width: usize) {
            let len = 2048;
            let mut acc = vec![W::default(); len];
            let mut next = filler(1);
            let bytes: Vec<u8> = (0..len * width).map(|_| next() as u8).collect();
            for level in available_levels() {
                let rounds = 4_000;
                // The best of 9 trials: the machine may be shared.
                let secs = (0..9)
                    .map(|_| {
                        let t = std::time::Instant::now();
                        for _ in 0..rounds {
                            let bytes = std::hint::black_box(&bytes);
                            add_packed_with(level, &mut acc, bytes, width, Sign::Add);
                        }
                        t.elapsed().as_secs_f64()
                    })
                    .fold(f64::INFINITY, f64::min);
                let ns = secs * 1e9 / (rounds * len) as f64;
                println!(
                    "{} bytes, width {width}, {level:?}: {ns:.3} ns/element",
                    W::BYTES
                );
            }
            std::hint::black_box(&acc);
        }
        for width in 1..=4 {
            run::<u32>(width);
        }
        for width in 5..=8 {
            run::<u64>(width);
        }
    }
}
