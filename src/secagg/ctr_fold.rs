//! Masking's keystream generated and folded in one loop: AES-128-CTR computed with VAES
//! on 512-bit vectors, each vector of keystream spread into residues and added to (or
//! subtracted from) the words while it is still in registers.
//!
//! The PRG is the one [`crate::secagg::prg`] defines (AES-128 in CTR mode, IV = 0,
//! 64-bit big-endian counter in the block's last 8 bytes; element i takes the w
//! keystream bytes at w·i, little-endian; docs/protocol.md, "Masks"). This module is a
//! second implementation of it, for the CPUs that have VAES and AVX-512 VBMI, and it must
//! give the same bits: the tests compare it with the `aes`/`ctr` crates for every width,
//! both signs, both word sizes, random offsets below 2^40 elements and a counter that
//! carries across bit 32, check the key expansion against FIPS 197, and run the
//! known-answer vectors of `tests/kat3.rs` (from Python's `cryptography`) through it.
//!
//! Why a second implementation: with `ctr` writing keystream into a buffer and the fold
//! reading it back in a second loop, the two never overlap, and the fold costs about
//! half as much again as the AES (docs/performance.md). Here one loop issues both: the
//! AES rounds run on one execution port and the spreading, adds, loads and stores on
//! others, so the fold hides under the AES.
//!
//! Work comes in groups of 64 consecutive elements whose first index is a multiple of
//! 16 (so that the group's keystream starts on an AES block: 64·w bytes, w vectors of
//! four blocks). Callers do the rest (a vector's first and last few elements) with the
//! `ctr` crate.
//!
//! Key material: the expanded key schedule ([`RoundKeys`]) is wiped on drop, and the
//! kernels overwrite their own copies of the round keys (the broadcast vectors) before
//! they return. What neither this module nor the `aes` crate can wipe: copies the
//! compiler leaves in vector registers or spill slots. The threat model says so.
// An exception to the crate's `unsafe_code = "deny"`, like `simd` (see there): loads and
// stores through pointers, and calls into functions compiled for detected CPU features.
#![allow(unsafe_code)]
#![deny(clippy::undocumented_unsafe_blocks)]

use std::fmt;

use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::secagg::keys::{MaskKey, Sign};
use crate::secagg::ring::{Word, WordsMut};

/// Elements per group: [`fold`] adds whole groups only.
pub const GROUP: usize = 64;

/// A group's first element is a multiple of this (its keystream then starts on an AES
/// block for every width).
pub const GROUP_ALIGN: u64 = 16;

/// An expanded AES-128 key schedule (FIPS 197, 11 round keys), wiped on drop. Exists
/// only on a CPU that runs this module's kernels ([`RoundKeys::expand`]).
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct RoundKeys([[u8; 16]; 11]);

impl fmt::Debug for RoundKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RoundKeys(<secret>)")
    }
}

impl RoundKeys {
    /// The key schedule of `key`, or None when this CPU lacks AES-NI, VAES or AVX-512
    /// (F, BW, VBMI): then no kernel here can run.
    pub fn expand(key: &MaskKey) -> Option<RoundKeys> {
        #[cfg(target_arch = "x86_64")]
        if x86::available() {
            // Expanded in place: no named copy of the schedule outside `RoundKeys`.
            let mut keys = RoundKeys([[0; 16]; 11]);
            // SAFETY: x86::expand is compiled for `aes` (and SSE2), which available()
            // has just detected.
            unsafe { x86::expand(&key.0, &mut keys.0) };
            return Some(keys);
        }
        let _ = key;
        None
    }
}

/// Whether this CPU runs the kernels.
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    return x86::available();
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// `acc[i] = acc[i] ± LE(keystream[w·(first + i) .. w·(first + i) + w])` (wrapping) for
/// the leading whole groups of [`GROUP`] elements of `acc`, w = `width` clamped to
/// 1..=`W::BYTES`; the same as `prg::apply_masks_at` for those elements. Returns how
/// many elements it added: `acc.len()` rounded down to a whole group, or 0 when `first`
/// is not a multiple of [`GROUP_ALIGN`] or the keystream would pass byte 2^64. Afterwards only the low 8·w bits of each
/// touched word are defined, as with `simd::add_packed`.
pub fn fold<W: Word>(
    acc: &mut [W],
    first: u64,
    keys: &RoundKeys,
    width: usize,
    sign: Sign,
) -> usize {
    if !first.is_multiple_of(GROUP_ALIGN) {
        return 0;
    }
    let width = width.clamp(1, W::BYTES);
    // The first group's first AES block: byte w·first of the keystream, a multiple of
    // 16. The keystream of the last whole group must end at or below byte 2^64 too, so
    // every block is below 2^60 and the 64-bit counter never wraps.
    let groups = (acc.len() / GROUP) as u64;
    let end = groups
        .checked_mul(GROUP as u64)
        .and_then(|n| first.checked_add(n))
        .and_then(|e| e.checked_mul(width as u64));
    let (Some(byte), Some(_)) = (first.checked_mul(width as u64), end) else {
        return 0;
    };
    let block = byte / 16;
    #[cfg(target_arch = "x86_64")]
    if x86::available() {
        #[cfg(test)]
        tests::GROUPS_FOLDED.with(|n| n.set(n.get() + groups));
        return match W::words_mut(acc) {
            // SAFETY: available() has just detected the features fold_u64 needs.
            WordsMut::U64(acc) => unsafe { x86::fold_u64(acc, block, &keys.0, width, sign) },
            // SAFETY: as above, for fold_u32.
            WordsMut::U32(acc) => unsafe { x86::fold_u32(acc, block, &keys.0, width, sign) },
        };
    }
    let _ = (acc, block, keys, sign);
    0
}

/// Asks the CPU to bring `words` into the L1 cache (a hint: no effect on results; an
/// SSE instruction every x86-64 CPU has, nothing elsewhere). Masking calls it for the
/// next block while every peer's keystream goes into the current one, so the next
/// block's first pass does not wait on memory.
pub fn prefetch<W: Word>(words: &[W]) {
    #[cfg(target_arch = "x86_64")]
    x86::prefetch(words);
    #[cfg(not(target_arch = "x86_64"))]
    let _ = words;
}

/// Writes the keystream from AES block `block` (byte 16·`block`) into the leading whole
/// 64-byte pieces of `out`; returns how many bytes it wrote (the rest is untouched).
pub fn keystream(keys: &RoundKeys, block: u64, out: &mut [u8]) -> usize {
    #[cfg(target_arch = "x86_64")]
    if x86::available() {
        let (pieces, _) = out.as_chunks_mut::<64>();
        // SAFETY: x86::keystream is compiled for the features available() has just
        // detected.
        return unsafe { x86::keystream(pieces, block, &keys.0) };
    }
    let _ = (keys, block, out);
    0
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::{
        __m128i, __m512i, _mm_aeskeygenassist_si128, _mm_loadu_si128, _mm_shuffle_epi32,
        _mm_slli_si128, _mm_storeu_si128, _mm_xor_si128, _mm512_add_epi32, _mm512_add_epi64,
        _mm512_aesenc_epi128, _mm512_aesenclast_epi128, _mm512_broadcast_i32x4, _mm512_loadu_si512,
        _mm512_mask_permutexvar_epi8, _mm512_permutexvar_epi8, _mm512_set_epi64,
        _mm512_setzero_si512, _mm512_shuffle_epi8, _mm512_storeu_si512, _mm512_sub_epi32,
        _mm512_sub_epi64, _mm512_xor_si512,
    };

    use super::Sign;

    /// AES-NI, VAES, and AVX-512 F, BW and VBMI.
    pub(super) fn available() -> bool {
        std::arch::is_x86_feature_detected!("aes")
            && std::arch::is_x86_feature_detected!("vaes")
            && std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512vbmi")
    }

    /// One prefetch per cache line of `words`.
    pub(super) fn prefetch<T>(words: &[T]) {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        let bytes = std::mem::size_of_val(words);
        let base = words.as_ptr().cast::<i8>();
        for at in (0..bytes).step_by(64) {
            // SAFETY: `at` < the slice's length in bytes, so the address is inside the
            // slice; a prefetch reads nothing into the program and never faults.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(base.add(at)) };
        }
    }

    /// AES-128 key expansion (FIPS 197, section 5.2) with AESKEYGENASSIST: round key
    /// i is the previous one with its words prefix-XORed, XORed with
    /// SubWord(RotWord(last word)) ⊕ Rcon(i) broadcast to every word.
    #[target_feature(enable = "aes")]
    pub(super) fn expand(key: &[u8; 16], out: &mut [[u8; 16]; 11]) {
        // SAFETY: `key` is 16 initialised bytes; loadu needs no alignment.
        let mut k = unsafe { _mm_loadu_si128(key.as_ptr().cast()) };
        store128(&mut out[0], k);
        macro_rules! round {
            ($i:literal, $rcon:literal) => {
                let t = _mm_shuffle_epi32(_mm_aeskeygenassist_si128(k, $rcon), 0xff);
                let mut s = _mm_slli_si128(k, 4);
                k = _mm_xor_si128(k, s);
                s = _mm_slli_si128(s, 4);
                k = _mm_xor_si128(k, s);
                s = _mm_slli_si128(s, 4);
                k = _mm_xor_si128(k, s);
                k = _mm_xor_si128(k, t);
                store128(&mut out[$i], k);
            };
        }
        round!(1, 0x01);
        round!(2, 0x02);
        round!(3, 0x04);
        round!(4, 0x08);
        round!(5, 0x10);
        round!(6, 0x20);
        round!(7, 0x40);
        round!(8, 0x80);
        round!(9, 0x1b);
        round!(10, 0x36);
    }

    #[target_feature(enable = "sse2")]
    fn store128(dst: &mut [u8; 16], v: __m128i) {
        // SAFETY: `dst` is an exclusive reference to 16 bytes; storeu needs no alignment.
        unsafe { _mm_storeu_si128(dst.as_mut_ptr().cast(), v) }
    }

    /// The round keys, each broadcast to the four 128-bit lanes.
    #[target_feature(enable = "avx512f")]
    fn broadcast(rk: &[[u8; 16]; 11]) -> [__m512i; 11] {
        // SAFETY: each round key is 16 initialised bytes; loadu needs no alignment.
        rk.map(|k| _mm512_broadcast_i32x4(unsafe { _mm_loadu_si128(k.as_ptr().cast()) }))
    }

    /// Overwrites a kernel's copies of round keys (or keystream) before it returns.
    #[target_feature(enable = "avx512f")]
    fn wipe<const N: usize>(v: &mut [__m512i; N]) {
        for x in v.iter_mut() {
            // SAFETY: `x` is an exclusive reference to a valid, aligned __m512i.
            unsafe { std::ptr::write_volatile(x, _mm512_setzero_si512()) };
        }
    }

    /// AES-128-CTR counter blocks: the block's first 8 bytes are 0 (IV = 0), its last 8
    /// the 64-bit counter, big-endian. A vector holds four consecutive blocks; as u64
    /// lanes that is [0, c, 0, c+1, 0, c+2, 0, c+3], each counter still to be byte-swapped.
    struct Counter {
        next: __m512i,
        four: __m512i,
        swap: __m512i,
    }

    impl Counter {
        #[target_feature(enable = "avx512f")]
        fn at(block: u64) -> Counter {
            let c = |k: u64| block.wrapping_add(k) as i64;
            // The byte-swap of each counter: byte 8 + j of each 128-bit lane takes byte
            // 15 - j; the zero half keeps its own bytes.
            let swap = u64::from_le_bytes([0, 1, 2, 3, 4, 5, 6, 7]) as i64;
            let rev = u64::from_le_bytes([15, 14, 13, 12, 11, 10, 9, 8]) as i64;
            Counter {
                next: _mm512_set_epi64(c(3), 0, c(2), 0, c(1), 0, c(0), 0),
                four: _mm512_set_epi64(4, 0, 4, 0, 4, 0, 4, 0),
                swap: _mm512_set_epi64(rev, swap, rev, swap, rev, swap, rev, swap),
            }
        }

        /// The next four counter blocks, as bytes. The 64-bit add would wrap where
        /// `ctr::Ctr64BE` refuses to go on (past block 2^64 - 1); [`super::super::fold`]
        /// only takes elements whose keystream lies below byte 2^64, block 2^60.
        #[inline]
        #[target_feature(enable = "avx512f,avx512bw")]
        fn take(&mut self) -> __m512i {
            let blocks = _mm512_shuffle_epi8(self.next, self.swap);
            self.next = _mm512_add_epi64(self.next, self.four);
            blocks
        }
    }

    /// The next 4·N blocks of keystream: N vectors of four counter blocks, encrypted side
    /// by side (N independent chains of AES rounds).
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,vaes")]
    fn encrypt<const N: usize>(ctr: &mut Counter, keys: &[__m512i; 11]) -> [__m512i; N] {
        let mut s: [__m512i; N] = std::array::from_fn(|_| _mm512_xor_si512(ctr.take(), keys[0]));
        for key in &keys[1..10] {
            for x in s.iter_mut() {
                *x = _mm512_aesenc_epi128(*x, *key);
            }
        }
        for x in s.iter_mut() {
            *x = _mm512_aesenclast_epi128(*x, keys[10]);
        }
        s
    }

    /// Keystream into 64-byte pieces, eight vectors per iteration.
    #[target_feature(enable = "avx512f,avx512bw,vaes")]
    pub(super) fn keystream(out: &mut [[u8; 64]], block: u64, rk: &[[u8; 16]; 11]) -> usize {
        let mut keys = broadcast(rk);
        let mut ctr = Counter::at(block);
        let (eights, rest) = out.as_chunks_mut::<8>();
        for eight in eights {
            let ks = encrypt::<8>(&mut ctr, &keys);
            for (dst, v) in eight.iter_mut().zip(ks) {
                store512(dst, v);
            }
        }
        for dst in rest {
            let [v] = encrypt::<1>(&mut ctr, &keys);
            store512(dst, v);
        }
        wipe(&mut keys);
        out.len() * 64
    }

    #[target_feature(enable = "avx512f")]
    fn store512<T: Plain>(dst: &mut T, v: __m512i) {
        const { assert!(size_of::<T>() == 64) };
        // SAFETY: `dst` is an exclusive reference to 64 bytes (size checked above) for
        // which every bit pattern is valid (Plain); storeu needs no alignment.
        unsafe { _mm512_storeu_si512(std::ptr::from_mut(dst).cast(), v) }
    }

    #[target_feature(enable = "avx512f")]
    fn load512<T: Plain>(src: &T) -> __m512i {
        const { assert!(size_of::<T>() == 64) };
        // SAFETY: `src` refers to 64 initialised bytes (size checked above, Plain);
        // loadu needs no alignment.
        unsafe { _mm512_loadu_si512(std::ptr::from_ref(src).cast()) }
    }

    /// Plain integer arrays: every byte initialised, every bit pattern valid.
    trait Plain {}
    impl Plain for [u8; 64] {}
    impl Plain for [u64; 8] {}
    impl Plain for [u32; 16] {}

    /// How output vector j of a group takes its residues from the group's keystream
    /// vectors: from vector `from` and the next, by `index` (a two-source `vpermb`).
    /// Byte b of each lane takes residue byte b for b < w; the lane's other bytes take
    /// whatever the index says (here byte 0), which only reaches bits at or above 8·w of
    /// the sum, and those are undefined (see [`super::fold`]): no masking needed.
    #[derive(Clone, Copy)]
    struct Spread {
        from: usize,
        index: [u8; 64],
        next: u64,
    }

    /// The spreads of a group of 64 residues of `w` bytes into `O` output vectors of
    /// `lane`-byte lanes (64 / lane residues each), computed at compile time.
    const fn spreads<const O: usize>(w: usize, lane: usize) -> [Spread; O] {
        let per = 64 / lane;
        let mut out = [Spread {
            from: 0,
            index: [0; 64],
            next: 0,
        }; O];
        let mut j = 0;
        while j < O {
            // Output j's residues are the bytes [o, o + per·w) of the keystream: they lie
            // in vector o / 64 and, when they cross its end, the next (per·w ≤ 64).
            let o = j * per * w;
            out[j].from = o / 64;
            let mut b = 0;
            while b < 64 {
                let (k, byte) = (b / lane, b % lane);
                if byte < w {
                    // o % 64 + k·w + byte < 64 + per·w ≤ 128: an index into two vectors.
                    let at = o % 64 + k * w + byte;
                    out[j].index[b] = at as u8;
                    if at >= 64 {
                        out[j].next |= 1 << b;
                    }
                }
                b += 1;
            }
            j += 1;
        }
        out
    }

    /// One kernel per (word, width, sign): N keystream vectors per group of 64
    /// residues, O output vectors of O-byte words (8 of u64, or 4 of u32).
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vbmi,vaes,aes")]
    fn fold_groups<T: Plain, const N: usize, const O: usize>(
        groups: &mut [[T; O]],
        block: u64,
        rk: &[[u8; 16]; 11],
        op: impl Fn(__m512i, __m512i) -> __m512i,
    ) {
        let spreads: [(usize, __m512i, u64); O] = {
            let table = const { spreads::<O>(N, O) };
            table.map(|s| (s.from, load512(&s.index), s.next))
        };
        let mut keys = broadcast(rk);
        let mut ctr = Counter::at(block);
        for group in groups.iter_mut() {
            let ks = encrypt::<N>(&mut ctr, &keys);
            for (dst, &(from, index, next)) in group.iter_mut().zip(&spreads) {
                let mut x = _mm512_permutexvar_epi8(index, ks[from]);
                if next != 0 {
                    x = _mm512_mask_permutexvar_epi8(x, next, index, ks[(from + 1).min(N - 1)]);
                }
                store512(dst, op(load512(dst), x));
            }
        }
        wipe(&mut keys);
    }

    macro_rules! kernels {
        ($name:ident, $t:ty, $o:literal, $add:ident, $sub:ident, [$($w:literal)*]) => {
            /// The kernels for one word size, one per width and sign.
            ///
            /// # Safety
            ///
            /// The CPU must have the features [`available`] detects.
            pub(super) unsafe fn $name(
                acc: &mut [$t],
                block: u64,
                rk: &[[u8; 16]; 11],
                w: usize,
                sign: Sign,
            ) -> usize {
                const L: usize = 64 / $o;
                #[target_feature(enable = "avx512f,avx512bw,avx512vbmi,vaes,aes")]
                fn run<const N: usize, const SUB: bool>(
                    groups: &mut [[[$t; L]; $o]],
                    block: u64,
                    rk: &[[u8; 16]; 11],
                ) {
                    fold_groups::<[$t; L], N, $o>(groups, block, rk, |a, x| {
                        if SUB { $sub(a, x) } else { $add(a, x) }
                    });
                }
                let (words, _) = acc.as_chunks_mut::<L>();
                let (groups, _) = words.as_chunks_mut::<$o>();
                let done = groups.len() * $o * L;
                match (w, sign) {
                    $(
                        // SAFETY: run is compiled for the features available() detects,
                        // which this function's caller guarantees.
                        ($w, Sign::Add) => unsafe { run::<$w, false>(groups, block, rk) },
                        // SAFETY: as above.
                        ($w, Sign::Sub) => unsafe { run::<$w, true>(groups, block, rk) },
                    )*
                    _ => return 0,
                }
                done
            }
        };
    }

    kernels!(fold_u64, u64, 8, _mm512_add_epi64, _mm512_sub_epi64, [1 2 3 4 5 6 7 8]);
    kernels!(fold_u32, u32, 4, _mm512_add_epi32, _mm512_sub_epi32, [1 2 3 4]);
}

#[cfg(test)]
pub(crate) mod tests {
    //! The kernels against the `aes`/`ctr` crates (RustCrypto, the implementation the
    //! rest of the crate uses) and FIPS 197. Each test returns early on a CPU without
    //! the kernels, saying so (there the buffered path is the only one and `prg`'s
    //! tests cover it), unless `SECAGG_REQUIRE_VAES=1`, which `.ci/run` sets where the
    //! CPU has the features: then a kernel that does not run is a failure.

    use std::cell::Cell;

    use super::*;
    use crate::secagg::prg::keystream as ctr_keystream;

    thread_local! {
        /// Groups [`fold`] has handed to a kernel on this thread (tests only: lets a
        /// test see that masking took the kernel).
        pub(crate) static GROUPS_FOLDED: Cell<u64> = const { Cell::new(0) };
    }
    use crate::secagg::simd::add_packed;
    use proptest::prelude::*;

    /// True (skip the test) on a CPU without the kernels; a failure instead when
    /// `SECAGG_REQUIRE_VAES=1`.
    pub(crate) fn skip_without_kernel() -> bool {
        if available() {
            return false;
        }
        assert!(
            std::env::var_os("SECAGG_REQUIRE_VAES").is_none_or(|v| v != "1"),
            "SECAGG_REQUIRE_VAES=1 but the VAES kernels do not run on this CPU"
        );
        eprintln!("no VAES/AVX-512 VBMI here: nothing to test");
        true
    }

    fn keys(seed: u8) -> Option<(MaskKey, RoundKeys)> {
        let key = MaskKey::from_bytes(std::array::from_fn(|i| seed.wrapping_mul(31) ^ i as u8));
        if skip_without_kernel() {
            return None;
        }
        Some((key.clone(), RoundKeys::expand(&key)?))
    }

    /// `acc` with `fold`, and `acc` with the ctr crate's keystream folded in by
    /// `simd::add_packed` (reduced mod 2^(8w)), for the first `done` elements.
    fn both<W: Word>(
        len: usize,
        first: u64,
        width: usize,
        sign: Sign,
        seed: u8,
    ) -> Option<(Vec<u64>, Vec<u64>, usize)> {
        let (key, rk) = keys(seed)?;
        let start: Vec<W> = (0..len)
            .map(|i| W::from_u64((i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)))
            .collect();
        let mut fused = start.clone();
        let done = fold(&mut fused, first, &rk, width, sign);
        let w = width.clamp(1, W::BYTES);
        let mut ks = vec![0u8; len * w];
        ctr_keystream(&key, first * w as u64, &mut ks);
        let mut want = start.clone();
        add_packed(&mut want[..done], &ks, w, sign);
        // Elements past `done` are untouched.
        assert_eq!(&fused[done..], &start[done..]);
        let low = |v: &[W]| -> Vec<u64> {
            v[..done]
                .iter()
                .map(|x| x.to_u64() & (u64::MAX >> (64 - 8 * w as u32)))
                .collect()
        };
        Some((low(&fused), low(&want), done))
    }

    #[test]
    fn every_width_sign_and_word_matches_the_ctr_crate() {
        for first in [0u64, 16, 64, 2048, 1_000_000 * 16, (1 << 40) + 48] {
            for sign in [Sign::Add, Sign::Sub] {
                for width in 1..=8 {
                    let Some((got, want, done)) =
                        both::<u64>(64 * 5 + 17, first, width, sign, width as u8)
                    else {
                        return;
                    };
                    assert_eq!(done, 64 * 5, "u64, width {width}, first {first}");
                    assert_eq!(got, want, "u64, width {width}, first {first}, {sign:?}");
                    assert!(got.iter().any(|x| *x != 0));
                }
                for width in 1..=4 {
                    let Some((got, want, done)) =
                        both::<u32>(64 * 3 + 63, first, width, sign, 9 + width as u8)
                    else {
                        return;
                    };
                    assert_eq!(done, 64 * 3, "u32, width {width}, first {first}");
                    assert_eq!(got, want, "u32, width {width}, first {first}, {sign:?}");
                    assert!(got.iter().any(|x| *x != 0));
                }
            }
        }
    }

    /// The counter's 64-bit add carries across bit 32 inside a call (a 32-bit add would
    /// not).
    #[test]
    fn the_counter_carries_across_bit_32() {
        // Width 8 from block 2^32 - 8, width 5 from the aligned element nearest below
        // block 2^32 - 20.
        let five = ((1u64 << 32) - 20) * 16 / 5 / GROUP_ALIGN * GROUP_ALIGN;
        for (width, first) in [(8usize, (1u64 << 33) - 16), (5, five)] {
            let Some((got, want, done)) = both::<u64>(64 * 4, first, width, Sign::Add, 4) else {
                return;
            };
            let (lo, hi) = (first * width as u64 / 16, (first + 256) * width as u64 / 16);
            assert!(
                lo < 1 << 32 && hi > 1 << 32,
                "the blocks {lo}..{hi} cross 2^32"
            );
            assert_eq!(done, 256);
            assert_eq!(got, want, "width {width}, first {first}");
        }
    }

    #[test]
    fn a_first_element_off_the_alignment_or_too_far_is_refused_untouched() {
        let Some((_, rk)) = keys(1) else {
            return;
        };
        // 1, 8, 15 and 17 are off the alignment. The last two are aligned, but w·first
        // overflows the keystream's 64-bit byte offset, or w·(first + 128) does (the
        // last group's keystream would pass byte 2^64).
        let last_group_too_far = (u64::MAX / 5 - 64) / 16 * 16;
        assert!(last_group_too_far.checked_mul(5).is_some());
        for first in [1u64, 8, 15, 17, u64::MAX / 16 * 16, last_group_too_far] {
            let mut acc = vec![7u64; 128];
            assert_eq!(fold(&mut acc, first, &rk, 5, Sign::Add), 0, "first {first}");
            assert!(acc.iter().all(|x| *x == 7), "first {first}: untouched");
        }
        let mut acc = vec![7u64; 63];
        assert_eq!(fold(&mut acc, 0, &rk, 5, Sign::Add), 0, "less than a group");
        assert!(acc.iter().all(|x| *x == 7));
    }

    #[test]
    fn keystream_matches_the_ctr_crate_in_whole_pieces() {
        let Some((key, rk)) = keys(7) else {
            return;
        };
        for (block, len) in [
            (0u64, 64usize),
            (0, 64 * 8 * 3 + 64 * 3 + 40),
            (5, 1000),
            (1 << 33, 4096),
            // The counter carries into bit 32 inside the call.
            ((1 << 32) - 3, 1024),
        ] {
            let mut got = vec![0u8; len];
            let done = keystream(&rk, block, &mut got);
            assert_eq!(done, len / 64 * 64);
            assert!(got[done..].iter().all(|b| *b == 0), "the rest is untouched");
            let mut want = vec![0u8; done];
            ctr_keystream(&key, block * 16, &mut want);
            assert_eq!(got[..done], want[..], "block {block}, {len} bytes");
        }
    }

    /// FIPS 197, Appendix A.1: the expansion of 2b7e1516 28aed2a6 abf71588 09cf4f3c.
    #[test]
    fn key_expansion_matches_fips_197() {
        let key = MaskKey::from_bytes([
            0x2b, 0x7e, 0x15, 0x16, 0x28, 0xae, 0xd2, 0xa6, 0xab, 0xf7, 0x15, 0x88, 0x09, 0xcf,
            0x4f, 0x3c,
        ]);
        if skip_without_kernel() {
            return;
        }
        let Some(rk) = RoundKeys::expand(&key) else {
            panic!("the kernels are available but expand refused");
        };
        let hex = |b: &[u8; 16]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        assert_eq!(hex(&rk.0[0]), "2b7e151628aed2a6abf7158809cf4f3c");
        assert_eq!(hex(&rk.0[1]), "a0fafe1788542cb123a339392a6c7605");
        assert_eq!(hex(&rk.0[5]), "d4d1c6f87c839d87caf2b8bc11f915bc");
        assert_eq!(hex(&rk.0[10]), "d014f9a8c9ee2589e13f0cc8b6630ca6");
    }

    #[test]
    fn round_keys_do_not_show_in_debug() {
        let Some((_, rk)) = keys(3) else {
            return;
        };
        let shown = format!("{rk:?}");
        assert_eq!(shown, "RoundKeys(<secret>)");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn random_offsets_and_lengths_match_the_ctr_crate(
            group in 0u64..1 << 36,
            len in 0usize..700,
            width in 1usize..=8,
            sub in any::<bool>(),
            seed in any::<u8>(),
        ) {
            let sign = if sub { Sign::Sub } else { Sign::Add };
            if let Some((got, want, done)) = both::<u64>(len, group * GROUP_ALIGN, width, sign, seed) {
                prop_assert_eq!(done, len / GROUP * GROUP);
                prop_assert_eq!(got, want);
            }
            if let Some((got, want, done)) = both::<u32>(len, group * GROUP_ALIGN, width.min(4), sign, seed) {
                prop_assert_eq!(done, len / GROUP * GROUP);
                prop_assert_eq!(got, want);
            }
        }
    }
}
