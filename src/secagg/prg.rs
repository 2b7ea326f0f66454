//! Expanding mask keys into keystreams and folding them into a vector.
//!
//! The node's cost is (n-1)·d PRG words of w bytes (the ring's width) plus (n-1)·d adds. The vector is split into one
//! contiguous range per thread, and each thread walks its range in 16 KiB blocks that
//! stay in L1 while every peer's keystream is folded in. No mask is ever materialised
//! whole.
//!
//! Where the CPU has VAES and AVX-512 VBMI, each peer's keystream for a block is
//! computed and folded in one loop ([`ctr_fold`]), and the next block is prefetched
//! meanwhile. Elsewhere (and for a range's first elements up to a multiple of 16 and its
//! last partial group of 64) each thread keeps one `ctr` state per peer, seeked to its
//! range's offset, writes the block's keystream into a buffer and folds it in
//! ([`simd::add_packed`]). Both give the same bits.

use aes::Aes128;
use ctr::cipher::{KeyIvInit, StreamCipher, StreamCipherSeek};

use zeroize::Zeroizing;

use crate::secagg::ctr_fold::{self, RoundKeys};
use crate::secagg::keys::{MaskKey, Sign};
use crate::secagg::ring::Word;
use crate::secagg::simd;

/// The PRG: AES-128 in CTR mode, 64-bit big-endian counter, IV = 0.
pub type Prg = ctr::Ctr64BE<Aes128>;

/// Output block size per step, in bytes (fits L1 with the keystream buffer).
pub(crate) const BLOCK_BYTES: usize = 16 * 1024;

/// One peer's contribution: its per-use key and our sign for the pair.
#[derive(Debug)]
pub struct PeerMask {
    /// The per-use key.
    pub key: MaskKey,
    /// Add or subtract.
    pub sign: Sign,
}

/// A PRG positioned at byte `offset` of the keystream of `key`.
pub fn prg_at(key: &MaskKey, offset: u64) -> Prg {
    let iv = [0u8; 16];
    let mut prg = Prg::new(&key.0.into(), &iv.into());
    prg.seek(offset);
    prg
}

/// Adds (or subtracts) every peer's mask into `words`, using `threads` threads. Element
/// i takes the `width` keystream bytes at `width·i`, read as a little-endian integer
/// (the keystream "cut" to the ring's width; see docs/protocol.md).
pub fn apply_masks<W: Word>(words: &mut [W], masks: &[PeerMask], width: usize, threads: usize) {
    apply_masks_at(words, 0, masks, width, threads);
}

/// Like [`apply_masks`], for a slice that starts at element `start` of the whole vector
/// (masking a vector block by block as it streams).
pub fn apply_masks_at<W: Word>(
    words: &mut [W],
    start: u64,
    masks: &[PeerMask],
    width: usize,
    threads: usize,
) {
    if words.is_empty() || masks.is_empty() {
        return;
    }
    let width = width.clamp(1, W::BYTES);
    let threads = threads.clamp(1, 256);
    if threads == 1 {
        return apply_range(words, start, masks, width);
    }
    // Each thread's range starts on a block boundary, so that every keystream request
    // but the last is a whole number of AES-CTR's parallel blocks (1 KiB): a request
    // that is not, or that starts inside a block, takes the cipher's one-block-at-a-time
    // path for its remainder, at a third of the speed.
    let per = words
        .len()
        .div_ceil(threads)
        .next_multiple_of(BLOCK_BYTES / W::BYTES);
    std::thread::scope(|s| {
        for (i, chunk) in words.chunks_mut(per).enumerate() {
            let at = start + (i * per) as u64;
            s.spawn(move || apply_range(chunk, at, masks, width));
        }
    });
}

/// Masks one contiguous range that starts at element `start` of the vector: with the
/// fused kernel ([`ctr_fold`]) where this CPU runs it, else by keystream buffer.
fn apply_range<W: Word>(out: &mut [W], start: u64, masks: &[PeerMask], width: usize) {
    match expand_all(masks) {
        Some(keys) => fused_range(out, start, masks, &keys, width),
        None => buffered_range(out, start, masks, width),
    }
}

/// Every peer's key schedule for the fused kernel, or None on a CPU without it. The
/// vector is allocated once at its final size: a growing vector would move (copy) the
/// schedules and free the old buffer without wiping it.
pub(crate) fn expand_all(masks: &[PeerMask]) -> Option<Vec<RoundKeys>> {
    let mut keys = Vec::with_capacity(masks.len());
    for m in masks {
        keys.push(RoundKeys::expand(&m.key)?);
    }
    Some(keys)
}

/// [`apply_range`] with [`ctr_fold::fold`]: block by block, every peer's keystream
/// folded into the block while it is in L1. The elements before the first multiple of
/// [`ctr_fold::GROUP_ALIGN`] and after the last whole group go by keystream buffer.
fn fused_range<W: Word>(
    out: &mut [W],
    start: u64,
    masks: &[PeerMask],
    keys: &[RoundKeys],
    width: usize,
) {
    let head =
        (start.next_multiple_of(ctr_fold::GROUP_ALIGN) - start).min(out.len() as u64) as usize;
    let (head_words, rest) = out.split_at_mut(head);
    buffered_range(head_words, start, masks, width);
    let first = start + head as u64;
    let body = rest.len() / ctr_fold::GROUP * ctr_fold::GROUP;
    let (body_words, tail) = rest.split_at_mut(body);
    let words_per_block = BLOCK_BYTES / W::BYTES;
    let mut blocks = body_words.chunks_mut(words_per_block).peekable();
    let mut at = first;
    while let Some(block) = blocks.next() {
        // The next block is fetched from memory in parts, one before each peer's pass
        // over this one (the hardware prefetcher stops once this block is in L1).
        let next: &[W] = blocks.peek().map_or(&[], |b| &b[..]);
        let part = next.len().div_ceil(keys.len());
        let mut parts = next.chunks(part.max(1));
        for (k, m) in keys.iter().zip(masks) {
            ctr_fold::prefetch(parts.next().unwrap_or_default());
            let done = ctr_fold::fold(block, at, k, width, m.sign);
            // fold takes whole groups from a multiple of GROUP_ALIGN, which every block
            // here is: done is the whole block. Should it ever not be, the rest is still
            // masked (never left out).
            if done < block.len() {
                let rest = &mut block[done..];
                buffered_range(rest, at + done as u64, std::slice::from_ref(m), width);
            }
        }
        at += block.len() as u64;
    }
    buffered_range(tail, first + body as u64, masks, width);
}

/// [`apply_range`] by keystream buffer: per block, each peer's keystream written into a
/// buffer by `ctr`, then folded in by [`simd::add_packed`].
fn buffered_range<W: Word>(out: &mut [W], start: u64, masks: &[PeerMask], width: usize) {
    if out.is_empty() {
        return;
    }
    let mut prgs: Vec<Prg> = masks
        .iter()
        .map(|m| prg_at(&m.key, start * width as u64))
        .collect();
    let words_per_block = BLOCK_BYTES / W::BYTES;
    // Keystream for one block (or the whole of a shorter range): wiped when dropped.
    let mut buf = Zeroizing::new(vec![0u8; out.len().min(words_per_block) * width]);
    for block in out.chunks_mut(words_per_block) {
        let ks = &mut buf[..block.len() * width];
        for (prg, m) in prgs.iter_mut().zip(masks) {
            prg.write_keystream(ks);
            simd::add_packed(block, ks, width, m.sign);
        }
    }
}

/// Writes raw keystream of `key` into `buf` (for benchmarks and known-answer tests).
pub fn keystream(key: &MaskKey, offset: u64, buf: &mut [u8]) {
    prg_at(key, offset).write_keystream(buf);
}

/// The number of threads to use: all cores.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::party::Fingerprint;
    use crate::pki::identity::PartyKey;
    use crate::secagg::keys::{MaskContext, PairwiseSecret};
    use proptest::prelude::*;

    fn masks_for(n: usize) -> Vec<Vec<PeerMask>> {
        let keys: Vec<PartyKey> = (0..n).map(|_| PartyKey::generate().expect("rng")).collect();
        let fps: Vec<Fingerprint> = (0..n).map(|i| Fingerprint::of_der(&[i as u8])).collect();
        let ctx = MaskContext {
            federation: "f".into(),
            round: 7,
            researcher: Fingerprint::of_der(b"researcher"),
            participants: (0..n)
                .map(|i| format!("n{i}").parse().expect("id"))
                .collect(),
            label: "update".into(),
        };
        (0..n)
            .map(|i| {
                (0..n)
                    .filter(|j| *j != i)
                    .map(|j| {
                        let pk = p256::PublicKey::from(keys[j].signing_key().verifying_key());
                        let pw = PairwiseSecret::derive(&keys[i], &fps[i], &pk, &fps[j]);
                        PeerMask {
                            key: MaskKey::derive(&pw, &ctx),
                            sign: Sign::for_pair(&fps[i], &fps[j]),
                        }
                    })
                    .collect()
            })
            .collect()
    }

    fn cancels<W: Word>(n: usize, len: usize, width: usize, threads: usize) -> bool {
        let reduce = |x: u64| x & (u64::MAX >> (64 - 8 * width as u32));
        let all = masks_for(n);
        let mut sum = vec![W::default(); len];
        let mut any_nonzero = len == 0;
        for (i, m) in all.iter().enumerate() {
            let mut v: Vec<W> = (0..len)
                .map(|k| W::from_u64((i * 1000 + k) as u64))
                .collect();
            apply_masks(&mut v, m, width, threads);
            any_nonzero |= v.iter().enumerate().any(|(k, w)| {
                reduce(w.to_u64()) != reduce(W::from_u64((i * 1000 + k) as u64).to_u64())
            });
            sum.iter_mut().zip(&v).for_each(|(s, x)| *s = s.add(*x));
        }
        let expected = (0..len).map(|k| W::from_u64((0..n).map(|i| (i * 1000 + k) as u64).sum()));
        any_nonzero
            && sum
                .into_iter()
                .map(|w| reduce(w.to_u64()))
                .eq(expected.map(|w| reduce(w.to_u64())))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        #[test]
        fn masks_cancel(n in 2usize..=12, len in 0usize..3000, threads in 1usize..4, w in 1usize..=8) {
            prop_assert!(cancels::<u32>(n, len, w.min(4), threads));
            prop_assert!(cancels::<u64>(n, len, w, threads));
        }
    }

    fn fused_against_buffered<W: Word>(start: u64, len: usize, width: usize, n: usize) -> bool {
        let m = &masks_for(n)[0];
        let width = width.clamp(1, W::BYTES);
        if ctr_fold::tests::skip_without_kernel() {
            return true;
        }
        let Some(keys) = expand_all(m) else {
            return false;
        };
        let x: Vec<W> = (0..len)
            .map(|i| W::from_u64(i as u64 * 0x1234_5678_9abc))
            .collect();
        let (mut a, mut b) = (x.clone(), x);
        fused_range(&mut a, start, m, &keys, width);
        buffered_range(&mut b, start, m, width);
        let low = |v: &[W]| -> Vec<u64> {
            v.iter()
                .map(|w| w.to_u64() & (u64::MAX >> (64 - 8 * width as u32)))
                .collect()
        };
        low(&a) == low(&b)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        /// The fused kernel (head, whole groups block by block, tail) gives the bits
        /// of the buffered path, which folds the `ctr` crate's keystream.
        #[test]
        fn fused_and_buffered_ranges_agree(
            start in prop_oneof![0u64..5000, 0u64..1 << 40],
            len in 0usize..7000,
            width in 1usize..=8,
            n in 2usize..=5,
        ) {
            prop_assert!(fused_against_buffered::<u64>(start, len, width, n));
            prop_assert!(fused_against_buffered::<u32>(start, len, width, n));
        }
    }

    /// Where the CPU has the kernel, masking takes it (a change that always buffers
    /// would pass every equality test), and the key schedules are allocated once at
    /// their final size (a growing vector frees unwiped copies).
    #[test]
    fn masking_takes_the_kernel_and_allocates_key_schedules_once() {
        let m = &masks_for(10)[0];
        if ctr_fold::tests::skip_without_kernel() {
            return;
        }
        let keys = expand_all(m).expect("the kernels run here");
        assert_eq!((keys.len(), keys.capacity()), (9, 9));
        let before = ctr_fold::tests::GROUPS_FOLDED.with(|n| n.get());
        let mut v = vec![0u64; 4096 + 100];
        apply_masks_at(&mut v, 5, m, 5, 1);
        let groups = ctr_fold::tests::GROUPS_FOLDED.with(|n| n.get()) - before;
        // Elements 16.. in whole groups of 64 (the head is 11, the tail 41), 9 peers.
        assert_eq!(groups, 9 * ((4096 + 100 - 11) / 64) as u64);
    }

    #[test]
    fn chunking_matches_one_thread() {
        let m = &masks_for(3)[0];
        for width in [3, 5, 8] {
            let mut a = vec![0u64; 10_001];
            let mut b = a.clone();
            apply_masks(&mut a, m, width, 1);
            apply_masks(&mut b, m, width, 7);
            // Only the residues count: bits above 8·width carry no meaning.
            let low = |v: &[u64]| -> Vec<u64> {
                v.iter()
                    .map(|x| x & (u64::MAX >> (64 - 8 * width as u32)))
                    .collect()
            };
            assert_eq!(low(&a), low(&b));
            assert!(low(&a).iter().any(|x| *x != 0));
        }
    }

    #[test]
    fn element_i_takes_the_keystream_bytes_at_width_times_i() {
        let m = &masks_for(2)[0];
        for width in 1..=8usize {
            let mut v = vec![0u64; 3001];
            apply_masks_at(&mut v[1..], 1, m, width, 2);
            let mut ks = vec![0u8; 3001 * width];
            keystream(&m[0].key, 0, &mut ks);
            let mask = 8 * width as u32;
            for (i, got) in v.iter().enumerate().skip(1) {
                let mut b = [0u8; 8];
                b[..width].copy_from_slice(&ks[i * width..(i + 1) * width]);
                let k = u64::from_le_bytes(b);
                let want = match m[0].sign {
                    Sign::Add => k,
                    Sign::Sub => k.wrapping_neg(),
                };
                let low = |x: u64| x & (u64::MAX >> (64 - mask));
                assert_eq!(low(*got), low(want), "width {width} element {i}");
            }
        }
    }
}
