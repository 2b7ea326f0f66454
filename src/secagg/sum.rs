//! Modular sums of masked vectors: an accumulator that adds words as they stream in,
//! and the decoding of the weighted mean. Memory is one accumulator of d words whatever
//! the number of inputs. File mode ([`crate::files::aggregate`]) and rounds both use it.

use crate::layout::{self, Layout};
use crate::secagg::quantize::Plan;
use crate::secagg::ring::Word;
use crate::secagg::ring::{Machine, Modulus};

/// Why a sum cannot be decoded.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The accumulator holds no words at all.
    #[error("no masked files given")]
    NoInputs,
    /// The weights sum to zero or more than allowed.
    #[error("total weight {0} is invalid (inputs inconsistent or tampered)")]
    BadWeight(u64),
    /// A summed value lies outside what a weighted sum of clipped inputs can be.
    #[error(
        "the sum is out of range at value #{0}: some input was out of range (a bug or a poisoned input; which node cannot be told)"
    )]
    OutOfRange(u64),
}

type Result<T> = std::result::Result<T, Error>;

/// A running modular sum.
///
/// Words arrive either whole (`W::BYTES` each, files) or reduced to their low `width`
/// bytes (network rounds, see [`Plan::wire_bytes`]). Either way the sum is kept in `W`
/// and reduced modulo 2^(8·width) once, when decoded: 2^(8·width) divides 2^(8·W::BYTES),
/// so the masks still cancel.
pub struct Accumulator<W: Word> {
    acc: Vec<W>,
    width: usize,
}

impl<W: Word> Accumulator<W> {
    /// A zeroed accumulator of `elements` whole words.
    pub fn new(elements: usize) -> Self {
        Self::with_width(elements, W::BYTES)
    }

    /// A zeroed accumulator of `elements` words that arrive as their low `width` bytes
    /// (clamped to 1..=`W::BYTES`).
    pub fn with_width(elements: usize, width: usize) -> Self {
        // Written, not calloc'ed: a calloc'ed page faults twice here (zero page on the
        // first read, then copy-on-write on the first add).
        let mut acc = Vec::with_capacity(elements);
        acc.resize(elements, W::default());
        Accumulator {
            acc,
            width: width.clamp(1, W::BYTES),
        }
    }

    /// Adds little-endian words of the accumulator's width in bytes, starting at word
    /// `offset`. Out-of-range words are ignored (callers check lengths first).
    #[inline]
    pub fn absorb(&mut self, offset: u64, bytes: &[u8]) {
        let start = (offset as usize).min(self.acc.len());
        absorb_words(&mut self.acc[start..], self.width, bytes);
    }

    /// The running sums (each in the low `width` bytes of its word), for callers that
    /// split the work by coordinate range over threads.
    pub fn words_mut(&mut self) -> &mut [W] {
        &mut self.acc
    }

    /// Bytes per incoming word.
    pub fn width(&self) -> usize {
        self.width
    }

    /// Words held.
    pub fn len(&self) -> usize {
        self.acc.len()
    }

    /// Whether it holds no words.
    pub fn is_empty(&self) -> bool {
        self.acc.is_empty()
    }

    /// Subtracts words that [`Accumulator::absorb`] added (a stream that broke off).
    pub fn retract(&mut self, offset: u64, bytes: &[u8]) {
        let start = (offset as usize).min(self.acc.len());
        for (a, c) in self.acc[start..]
            .iter_mut()
            .zip(bytes.chunks_exact(self.width))
        {
            *a = a.sub(W::from_le_narrow(c));
        }
    }

    /// Adds (or subtracts) PRG masks over the whole accumulator, as a node would have:
    /// word i takes keystream bytes `[i·width, (i+1)·width)`.
    pub fn apply_masks(&mut self, masks: &[crate::secagg::prg::PeerMask], threads: usize) {
        crate::secagg::prg::apply_masks(&mut self.acc, masks, self.width, threads);
    }

    /// Like [`Accumulator::finish_encoded`], after checking that every summed value lies
    /// in `[-W·L, W·L]` (W the total weight, L the largest quantized level): a weighted
    /// sum of clipped inputs cannot lie outside it, so anything else is a poisoned or
    /// broken input.
    pub fn finish_checked(self, plan: &Plan, layout: &Layout) -> Result<(u64, Vec<u8>)> {
        let bits = 8 * self.width as u32;
        let (total, _, sums) = self.decoder(plan)?;
        // total <= n·max_weight and the plan holds n·max_weight·L < 2^(bits-1), so the
        // limit fits a u64 (saturating only guards a plan that was never checked).
        let limit = total.saturating_mul(crate::secagg::quantize::levels(plan.params.bits));
        let out_of_range = |s: &W| signed_low_bits(s.to_u64(), bits).unsigned_abs() > limit;
        // A branch-free scan (it vectorises); the index is looked up only on failure.
        if sums.iter().fold(false, |bad, s| bad | out_of_range(s)) {
            let i = sums.iter().position(out_of_range).unwrap_or(0);
            return Err(Error::OutOfRange(i as u64));
        }
        self.finish_encoded(plan, layout)
    }

    /// The total weight (the last word) and each element's scale to the mean.
    fn decoder(&self, plan: &Plan) -> Result<(u64, f64, &[W])> {
        let bits = 8 * self.width as u32;
        let (weight, sums) = self.acc.split_last().ok_or(Error::NoInputs)?;
        let total = low_bits(weight.to_u64(), bits);
        let max = plan.nodes as u128 * u128::from(plan.params.max_weight);
        if total == 0 || u128::from(total) > max {
            return Err(Error::BadWeight(total));
        }
        Ok((total, plan.step() / total as f64, sums))
    }

    /// Decodes the weighted mean. The last word is the total weight.
    pub fn finish(self, plan: &Plan) -> Result<Mean> {
        let bits = 8 * self.width as u32;
        let (total, scale, sums) = self.decoder(plan)?;
        let values = sums
            .iter()
            .map(|s| signed_low_bits(s.to_u64(), bits) as f64 * scale)
            .collect();
        Ok(Mean {
            total_weight: total,
            values,
        })
    }

    /// Decodes the weighted mean straight into `layout`'s encoding (see
    /// [`layout::encode_values`]), without a vector of f64 in between. Returns the
    /// total weight and the bytes.
    pub fn finish_encoded(self, plan: &Plan, layout: &Layout) -> Result<(u64, Vec<u8>)> {
        let bits = 8 * self.width as u32;
        let (total, scale, sums) = self.decoder(plan)?;
        // One tight loop per tensor (it vectorises); the same bytes as
        // `layout::encode_values` (tested below).
        let mut out = vec![0u8; layout.checked_encoded_len().unwrap_or(0) as usize];
        let (mut at, mut from) = (0usize, 0usize);
        for spec in &layout.tensors {
            let n = spec.checked_elements().unwrap_or(0) as usize;
            let size = spec.checked_bytes().unwrap_or(0) as usize;
            let (Some(dst), Some(src)) = (
                out.get_mut(at..at.saturating_add(size)),
                sums.get(from..from.saturating_add(n)),
            ) else {
                break;
            };
            let value = |s: &W| signed_low_bits(s.to_u64(), bits) as f64 * scale;
            match spec.dtype {
                layout::DType::F32 => dst
                    .chunks_exact_mut(4)
                    .zip(src)
                    .for_each(|(d, s)| d.copy_from_slice(&(value(s) as f32).to_le_bytes())),
                layout::DType::F64 => dst
                    .chunks_exact_mut(8)
                    .zip(src)
                    .for_each(|(d, s)| d.copy_from_slice(&value(s).to_le_bytes())),
            }
            at += size;
            from += n;
        }
        Ok((total, out))
    }
}

/// Elements per hashed segment: the unit in which payloads are summed on several cores
/// and digested (each segment gets its own BLAKE3; see the masked-file format).
pub const SEGMENT_ELEMENTS: usize = 1 << 20;

/// Elements hashed and added at a time: small enough that both passes over them hit the
/// core's own cache.
pub const READ_ELEMENTS: usize = 1 << 16;

/// Adds a payload of `width`-byte residues held in memory into `acc` (as many words as
/// both hold), on `threads` threads each taking whole segments, and returns each
/// segment's BLAKE3 digest in order.
pub fn absorb_hashed<W: Word>(
    acc: &mut [W],
    width: usize,
    payload: &[u8],
    threads: usize,
) -> Vec<[u8; 32]> {
    let n = acc.len().min(payload.len() / width.max(1));
    let nseg = n.div_ceil(SEGMENT_ELEMENTS);
    let per = nseg.div_ceil(threads.clamp(1, 256)).max(1) * SEGMENT_ELEMENTS;
    let parts: Vec<Vec<[u8; 32]>> = std::thread::scope(|s| {
        let handles: Vec<_> = acc[..n]
            .chunks_mut(per)
            .zip(payload.chunks(per * width))
            .map(|(a, p)| {
                s.spawn(move || {
                    a.chunks_mut(SEGMENT_ELEMENTS)
                        .zip(p.chunks(SEGMENT_ELEMENTS * width))
                        .map(|(a, p)| {
                            let mut h = blake3::Hasher::new();
                            for (a, p) in a
                                .chunks_mut(READ_ELEMENTS)
                                .zip(p.chunks(READ_ELEMENTS * width))
                            {
                                h.update(p);
                                absorb_words(a, width, p);
                            }
                            *h.finalize().as_bytes()
                        })
                        .collect()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_default())
            .collect()
    });
    parts.into_iter().flatten().collect()
}

/// Adds `width`-byte little-endian words from `bytes` to `acc`, in order (as many as
/// both hold).
#[inline]
pub fn absorb_words<W: Word>(acc: &mut [W], width: usize, bytes: &[u8]) {
    crate::secagg::simd::add_packed(acc, bytes, width, crate::secagg::keys::Sign::Add);
}

/// Appends the low `width` bytes of each word to `out`, little-endian.
pub fn encode_words<W: Word>(words: &[W], width: usize, out: &mut Vec<u8>) {
    match width {
        1 => encode_narrow::<W, 1>(words, out),
        2 => encode_narrow::<W, 2>(words, out),
        3 => encode_narrow::<W, 3>(words, out),
        4 => encode_narrow::<W, 4>(words, out),
        5 => encode_narrow::<W, 5>(words, out),
        6 => encode_narrow::<W, 6>(words, out),
        7 => encode_narrow::<W, 7>(words, out),
        _ => encode_narrow::<W, 8>(words, out),
    }
}

#[inline]
fn encode_narrow<W: Word, const N: usize>(words: &[W], out: &mut Vec<u8>) {
    let start = out.len();
    out.resize(start + words.len() * N, 0);
    for (w, c) in words.iter().zip(out[start..].chunks_exact_mut(N)) {
        c.copy_from_slice(&w.le8()[..N]);
    }
}

/// `x mod 2^bits`, for `bits` in 1..=64.
fn low_bits(x: u64, bits: u32) -> u64 {
    x & (u64::MAX >> (64 - bits))
}

/// `x mod 2^bits` read as a two's-complement integer of `bits` bits, for `bits` in
/// 1..=64.
fn signed_low_bits(x: u64, bits: u32) -> i64 {
    ((x << (64 - bits)) as i64) >> (64 - bits)
}

/// The result: the weighted mean and the total weight (all the aggregator learns).
#[derive(Debug)]
pub struct Mean {
    /// Sum of the weights.
    pub total_weight: u64,
    /// The weighted mean, flattened in layout order.
    pub values: Vec<f64>,
}

/// Either machine word (see [`Modulus::machine`]).
pub enum AnyAccumulator {
    /// u32 words, for rings of 1 to 4 bytes.
    M32(Accumulator<u32>),
    /// u64 words, for rings of 5 to 8 bytes.
    M64(Accumulator<u64>),
}

impl AnyAccumulator {
    /// For a modulus.
    pub fn new(modulus: Modulus, elements: usize) -> Self {
        Self::with_width(modulus, elements, modulus.word_bytes())
    }

    /// An accumulator for words that arrive as their low `width` bytes.
    pub fn with_width(modulus: Modulus, elements: usize, width: usize) -> Self {
        match modulus.machine() {
            Machine::U32 => AnyAccumulator::M32(Accumulator::with_width(elements, width)),
            Machine::U64 => AnyAccumulator::M64(Accumulator::with_width(elements, width)),
        }
    }

    /// See [`Accumulator::width`].
    pub fn width(&self) -> usize {
        match self {
            AnyAccumulator::M32(a) => a.width(),
            AnyAccumulator::M64(a) => a.width(),
        }
    }

    /// See [`Accumulator::len`].
    pub fn len(&self) -> usize {
        match self {
            AnyAccumulator::M32(a) => a.len(),
            AnyAccumulator::M64(a) => a.len(),
        }
    }

    /// See [`Accumulator::is_empty`].
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// See [`Accumulator::absorb`].
    pub fn absorb(&mut self, offset: u64, bytes: &[u8]) {
        match self {
            AnyAccumulator::M32(a) => a.absorb(offset, bytes),
            AnyAccumulator::M64(a) => a.absorb(offset, bytes),
        }
    }

    /// See [`Accumulator::finish`].
    pub fn finish(self, plan: &Plan) -> Result<Mean> {
        match self {
            AnyAccumulator::M32(a) => a.finish(plan),
            AnyAccumulator::M64(a) => a.finish(plan),
        }
    }

    /// See [`Accumulator::retract`].
    pub fn retract(&mut self, offset: u64, bytes: &[u8]) {
        match self {
            AnyAccumulator::M32(a) => a.retract(offset, bytes),
            AnyAccumulator::M64(a) => a.retract(offset, bytes),
        }
    }

    /// See [`Accumulator::apply_masks`].
    pub fn apply_masks(&mut self, masks: &[crate::secagg::prg::PeerMask], threads: usize) {
        match self {
            AnyAccumulator::M32(a) => a.apply_masks(masks, threads),
            AnyAccumulator::M64(a) => a.apply_masks(masks, threads),
        }
    }

    /// See [`Accumulator::finish_checked`].
    pub fn finish_checked(self, plan: &Plan, layout: &Layout) -> Result<(u64, Vec<u8>)> {
        match self {
            AnyAccumulator::M32(a) => a.finish_checked(plan, layout),
            AnyAccumulator::M64(a) => a.finish_checked(plan, layout),
        }
    }

    /// See [`Accumulator::finish_encoded`].
    pub fn finish_encoded(self, plan: &Plan, layout: &Layout) -> Result<(u64, Vec<u8>)> {
        match self {
            AnyAccumulator::M32(a) => a.finish_encoded(plan, layout),
            AnyAccumulator::M64(a) => a.finish_encoded(plan, layout),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finish_encoded_writes_what_encode_values_writes() {
        use crate::layout::{Container, DType, TensorSpec};
        let plan = Plan::new(QuantParams::default(), 3).expect("plan");
        let layout = Layout {
            container: Container::Safetensors,
            tensors: vec![
                TensorSpec {
                    name: "a".into(),
                    shape: vec![3, 2],
                    dtype: DType::F32,
                },
                TensorSpec {
                    name: "b".into(),
                    shape: vec![5],
                    dtype: DType::F64,
                },
            ],
        };
        let mut acc = Accumulator::<u64>::with_width(12, plan.wire_bytes());
        let sums: [i64; 11] = [0, 1, -1, 32767, -32767, 12345, -2, 7, 300, -300, 5];
        let mut bytes = Vec::new();
        for v in sums.iter().map(|v| *v as u64).chain([3u64]) {
            bytes.extend_from_slice(&v.to_le_bytes()[..plan.wire_bytes()]);
        }
        acc.absorb(0, &bytes);
        let scale = plan.step() / 3.0;
        let want = layout::encode_values(&layout, sums.iter().map(|s| *s as f64 * scale));
        let (total, got) = acc.finish_encoded(&plan, &layout).expect("finish");
        assert_eq!(total, 3);
        assert_eq!(got, want);
    }
    use crate::secagg::quantize::QuantParams;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Quantize, weight, sum mod 2^k, decode: within half a step of the plain weighted mean.
        #[test]
        fn weighted_mean_within_bound(
            rows in prop::collection::vec((prop::collection::vec(-1.5f64..1.5, 16), 1u64..1000), 2..8),
            bits in 4u32..=24,
        ) {
            let plan = Plan::new(QuantParams { clip: 1.0, bits, max_weight: 1000 }, rows.len()).expect("plan");
            let mut acc = AnyAccumulator::new(plan.modulus, 17);
            for (vals, w) in &rows {
                let mut bytes = Vec::new();
                let mut push = |v: u64| {
                    let mut b = vec![0u8; plan.wire_bytes()];
                    v.write_le_narrow(&mut b);
                    bytes.extend_from_slice(&b);
                };
                for x in vals {
                    push((plan.quantize(*x).0 * *w as i64) as u64);
                }
                push(*w);
                acc.absorb(0, &bytes);
            }
            let mean = acc.finish(&plan).expect("finish");
            let total: u64 = rows.iter().map(|r| r.1).sum();
            prop_assert_eq!(mean.total_weight, total);
            for k in 0..16 {
                let plain = rows.iter().map(|(v, w)| v[k].clamp(-1.0, 1.0) * *w as f64).sum::<f64>() / total as f64;
                prop_assert!((mean.values[k] - plain).abs() <= plan.step() / 2.0 * (1.0 + 1e-9));
            }
        }

        /// Masked words reduced to the plan's width sum to the same mean as whole machine
        /// words: 2^(8·width) divides the word's modulus, so the pairwise masks still cancel.
        #[test]
        fn narrow_wire_words_give_the_same_mean(
            rows in prop::collection::vec((prop::collection::vec(-1.5f64..1.5, 8), 1u64..1_000_000), 2..7),
            bits in 2u32..=32,
            max_weight in 1_000_000u64..1 << 30,
            seed: u64,
        ) {
            let Ok(plan) = Plan::new(QuantParams { clip: 1.0, bits, max_weight }, rows.len()) else {
                return Ok(());
            };
            let n = rows.len();
            // Row i adds r(i,j) for j > i and subtracts r(j,i) for j < i.
            let mask = |i: usize, j: usize, k: usize| {
                let (a, b) = if i < j { (i, j) } else { (j, i) };
                let r = seed ^ ((a as u64) << 40 | (b as u64) << 20 | k as u64);
                let r = r.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(29).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                if i < j { r } else { r.wrapping_neg() }
            };
            let width = plan.wire_bytes();
            let machine = match plan.modulus.machine() { Machine::U32 => 4, Machine::U64 => 8 };
            let mut whole = AnyAccumulator::with_width(plan.modulus, 9, machine);
            let mut narrow = AnyAccumulator::with_width(plan.modulus, 9, width);
            for (i, (vals, w)) in rows.iter().enumerate() {
                let mut words: Vec<u64> = vals.iter().map(|x| (plan.quantize(*x).0 * *w as i64) as u64).collect();
                words.push(*w);
                for (k, word) in words.iter_mut().enumerate() {
                    for j in (0..n).filter(|j| *j != i) {
                        *word = word.wrapping_add(mask(i, j, k));
                    }
                }
                let (mut full, mut low) = (Vec::new(), Vec::new());
                for word in &words {
                    match plan.modulus.machine() {
                        Machine::U32 => (*word as u32).put_le(&mut full),
                        Machine::U64 => word.put_le(&mut full),
                    }
                    let mut b = vec![0u8; width];
                    word.write_le_narrow(&mut b);
                    low.extend_from_slice(&b);
                }
                whole.absorb(0, &full);
                narrow.absorb(0, &low);
            }
            let (a, b) = (whole.finish(&plan).expect("whole"), narrow.finish(&plan).expect("narrow"));
            prop_assert_eq!(a.total_weight, b.total_weight);
            prop_assert_eq!(a.values, b.values);
        }
    }
}
