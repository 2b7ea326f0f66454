//! Fixed-point encoding of model updates for modular summation.
//!
//! A value x is clipped to [-c, c] and rounded to the nearest multiple of
//! `step = c / L`, with `L = 2^(b-1) - 1`, giving an integer q in [-L, L] (a symmetric
//! code: q and -q decode to x and -x). A node multiplies q by its integer weight w and
//! sends `w*q mod 2^k`; its weight w travels as one more element. The aggregator sums
//! modulo 2^k, reads the sum as a signed integer S and the weight sum W, and returns
//! `S * step / W`, the weighted mean, within `step / 2` of the true weighted mean of the
//! clipped values.
//!
//! `k = 8w` is the smallest multiple of 8 (at most 64) with `n * max_weight * L < 2^(k-1)`
//! and `n * max_weight < 2^k`; otherwise the plan is refused before any work, naming the
//! knob to turn. Each masked element is then a residue of w bytes.

use std::fmt;

use crate::secagg::ring::{Modulus, Word};
use crate::secagg::simd;

/// Quantization knobs.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct QuantParams {
    /// Clip bound c: values are clipped to [-c, c].
    pub clip: f64,
    /// Bits b per quantized value (sign included).
    pub bits: u32,
    /// Largest weight (sample count) any node may use.
    pub max_weight: u64,
}

impl Default for QuantParams {
    /// c = 1.0 (typical scale of a model delta after normalisation), b = 16 (step
    /// 3.05e-5 at c = 1, far below SGD noise), max weight 1,000,000 samples.
    fn default() -> Self {
        QuantParams {
            clip: 1.0,
            bits: 16,
            max_weight: 1_000_000,
        }
    }
}

/// The smallest clip bound accepted.
pub const MIN_CLIP: f64 = 1e-6;
/// The largest clip bound accepted.
pub const MAX_CLIP: f64 = 1e6;
/// The fewest bits per value.
pub const MIN_BITS: u32 = 2;
/// The most bits per value.
pub const MAX_BITS: u32 = 32;

/// Why a plan was refused.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A knob is out of range.
    #[error("{0}")]
    BadParam(String),
    /// The clip bound is outside [`MIN_CLIP`, `MAX_CLIP`] (or not a number): beyond it
    /// the quantization step under- or overflows what a decoded f32 mean can hold.
    #[error(
        "clip {clip:e} is out of range: it must be a finite number from {MIN_CLIP:e} to {MAX_CLIP:e}"
    )]
    ClipOutOfRange {
        /// Given.
        clip: f64,
    },
    /// Bits per value outside [`MIN_BITS`, `MAX_BITS`].
    #[error("bits {bits} is out of range: it must be from {MIN_BITS} to {MAX_BITS}")]
    BitsOutOfRange {
        /// Given.
        bits: u32,
    },
    /// The sum could overflow even 2^64.
    #[error(
        "overflow risk: {nodes} nodes x max weight {max_weight} x {levels} levels (bits {bits}) = {bound:.3e}, which does not fit in a signed 64-bit sum (limit {limit:.3e})"
    )]
    Overflow {
        /// n.
        nodes: usize,
        /// Max weight.
        max_weight: u64,
        /// L.
        levels: u64,
        /// b.
        bits: u32,
        /// n*W*L.
        bound: f64,
        /// 2^63.
        limit: f64,
        /// Largest bits that would fit.
        max_bits: u32,
        /// Largest weight that would fit.
        max_weight_fit: u64,
    },
    /// A NaN or infinite value in the input.
    #[error("the input holds a non-finite value (NaN or infinity) at element {0}")]
    NonFinite(u64),
}

/// A checked quantization plan for n nodes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Plan {
    /// The knobs.
    pub params: QuantParams,
    /// Nodes in the round.
    pub nodes: usize,
    /// The ring.
    pub modulus: Modulus,
}

impl Plan {
    /// Checks the knobs and picks the smallest modulus that cannot overflow.
    pub fn new(params: QuantParams, nodes: usize) -> Result<Plan, Error> {
        // NaN fails every comparison, so it is refused here too.
        if !(params.clip.is_finite() && (MIN_CLIP..=MAX_CLIP).contains(&params.clip)) {
            return Err(Error::ClipOutOfRange { clip: params.clip });
        }
        if !(MIN_BITS..=MAX_BITS).contains(&params.bits) {
            return Err(Error::BitsOutOfRange { bits: params.bits });
        }
        // With the ranges above the step lies in [4.6e-16, 1e6]: a normal f32 with
        // 2^24 of margin at both ends (checked, not assumed, in case the ranges change).
        let step = params.clip / levels(params.bits) as f64;
        let margin = f64::from(1u32 << 24);
        if !(step >= f64::from(f32::MIN_POSITIVE) * margin && step * margin <= f64::from(f32::MAX))
        {
            return Err(Error::ClipOutOfRange { clip: params.clip });
        }
        if params.max_weight == 0 {
            return Err(Error::BadParam("the max weight must be at least 1".into()));
        }
        if nodes < 2 {
            return Err(Error::BadParam(format!(
                "a round needs at least 2 nodes, got {nodes}"
            )));
        }
        let levels = levels(params.bits);
        let bound = nodes as u128 * u128::from(params.max_weight) * u128::from(levels);
        let weights = nodes as u128 * u128::from(params.max_weight);
        // The smallest width w (whole bytes) whose ring holds every sum: the signed sum
        // n·W·L below 2^(8w-1) and the weight sum n·W below 2^(8w).
        let width = (1..=8usize).find(|w| {
            let bits = 8 * *w as u32;
            bound < 1u128 << (bits - 1) && weights < 1u128 << bits
        });
        let modulus = if let Some(m) = width.and_then(Modulus::from_bytes) {
            m
        } else {
            let limit = (1u128 << 63) as f64;
            let per = nodes as u128 * u128::from(params.max_weight);
            let max_levels = ((1u128 << 63) - 1) / per.max(1);
            let max_bits = (1..=params.bits)
                .rev()
                .find(|b| u128::from(levels_of(*b)) <= max_levels)
                .unwrap_or(1);
            let max_weight_fit =
                u64::try_from(((1u128 << 63) - 1) / (nodes as u128 * u128::from(levels)))
                    .unwrap_or(u64::MAX);
            return Err(Error::Overflow {
                nodes,
                max_weight: params.max_weight,
                levels,
                bits: params.bits,
                bound: bound as f64,
                limit,
                max_bits,
                max_weight_fit,
            });
        };
        Ok(Plan {
            params,
            nodes,
            modulus,
        })
    }

    /// Bytes per element of an update, in files and on the wire: the width w of the
    /// modulus 2^(8w) (the smallest that holds every sum).
    pub fn wire_bytes(&self) -> usize {
        self.modulus.word_bytes()
    }

    /// The quantization step c / L.
    pub fn step(&self) -> f64 {
        self.params.clip / levels(self.params.bits) as f64
    }

    /// Encodes one value: (q, was it clipped).
    pub fn quantize(&self, x: f64) -> (i64, bool) {
        let c = self.params.clip;
        let clipped = x.abs() > c;
        let l = levels(self.params.bits) as f64;
        (round_half_away(x.clamp(-c, c) / c * l), clipped)
    }

    /// [`Plan::quantize`] over a block, times `weight`, appended to `out` as words of
    /// `W`; one tight loop with the checks folded in, compiled for the CPU's vector
    /// instructions ([`simd::vectorised`]). Returns the number of clipped values, or the
    /// index in `xs` of the first non-finite value (then `out` holds garbage for this
    /// block and must be discarded).
    pub fn quantize_into<W: Word>(
        &self,
        xs: &[f64],
        weight: i64,
        out: &mut Vec<W>,
    ) -> Result<u64, usize> {
        self.quantize_into_with(simd::Level::best(), xs, weight, out)
    }

    /// [`Plan::quantize_into`] compiled for a given level of vector instructions.
    pub(crate) fn quantize_into_with<W: Word>(
        &self,
        level: simd::Level,
        xs: &[f64],
        weight: i64,
        out: &mut Vec<W>,
    ) -> Result<u64, usize> {
        self.quantize_values(level, xs, |x: &f64| *x, weight, out)
    }

    /// [`Plan::quantize_into`] of values given as their little-endian bytes in `dtype`
    /// (as an update file holds them), converted inside the loop: the same words, the
    /// same count and the same index for a non-finite value as decoding them to f64
    /// first. Bytes past the last whole value are ignored.
    pub fn quantize_bytes_into<W: Word>(
        &self,
        dtype: crate::layout::DType,
        bytes: &[u8],
        weight: i64,
        out: &mut Vec<W>,
    ) -> Result<u64, usize> {
        self.quantize_bytes_into_with(simd::Level::best(), dtype, bytes, weight, out)
    }

    /// [`Plan::quantize_bytes_into`] compiled for a given level of vector instructions.
    pub(crate) fn quantize_bytes_into_with<W: Word>(
        &self,
        level: simd::Level,
        dtype: crate::layout::DType,
        bytes: &[u8],
        weight: i64,
        out: &mut Vec<W>,
    ) -> Result<u64, usize> {
        use crate::layout::DType;
        match dtype {
            DType::F32 => {
                let f32s = |b: &[u8; 4]| f64::from(f32::from_le_bytes(*b));
                self.quantize_values(level, bytes.as_chunks::<4>().0, f32s, weight, out)
            }
            DType::F64 => {
                let f64s = |b: &[u8; 8]| f64::from_le_bytes(*b);
                self.quantize_values(level, bytes.as_chunks::<8>().0, f64s, weight, out)
            }
        }
    }

    /// The quantizing loop over `value(x)` for x in `xs`, with the multiplication where
    /// the clip allows it ([`Plan::exact_scale`]).
    fn quantize_values<W: Word, T>(
        &self,
        level: simd::Level,
        xs: &[T],
        value: impl Fn(&T) -> f64 + Copy,
        weight: i64,
        out: &mut Vec<W>,
    ) -> Result<u64, usize> {
        match self.exact_scale() {
            Some(k) => self.quantize_loop::<W, T, true>(level, xs, value, weight, k, out),
            None => self.quantize_loop::<W, T, false>(level, xs, value, weight, 0.0, out),
        }
    }

    /// L/c when the clip c is a power of two, else `None`. Then x/c·L, the definition,
    /// is x·(L/c) bit for bit, with one multiplication instead of a division (which
    /// costs about as much as the rest of the loop): L/c and x/c are exact (a power of
    /// two, within the range of normal numbers for c in [`MIN_CLIP`, `MAX_CLIP`] and
    /// L < 2^32), so both sides are the exact x·L/c rounded once. The one exception,
    /// x/c below the normal range, rounds x/c first, but its quantized value is 0 either
    /// way. The default clip, 1, is one.
    fn exact_scale(&self) -> Option<f64> {
        let c = self.params.clip;
        let power_of_two = c.is_normal() && c > 0.0 && c.to_bits() & ((1u64 << 52) - 1) == 0;
        power_of_two.then(|| levels(self.params.bits) as f64 / c)
    }

    /// The loop of [`Plan::quantize_into_with`], over values `value(x)` for x in `xs`;
    /// `SCALE`: x·`k` for x/c·L ([`Plan::exact_scale`]).
    fn quantize_loop<W: Word, T, const SCALE: bool>(
        &self,
        level: simd::Level,
        xs: &[T],
        value: impl Fn(&T) -> f64 + Copy,
        weight: i64,
        k: f64,
        out: &mut Vec<W>,
    ) -> Result<u64, usize> {
        let c = self.params.clip;
        let l = levels(self.params.bits) as f64;
        let (clipped, finite) = simd::vectorised_with(
            level,
            // `move`: c, l and weight are copied in. Captured by reference they are
            // loaded again on every iteration (for all the compiler knows, the stores
            // to `out` may change them), and the loop does not vectorise.
            #[inline(always)]
            move || {
                let mut clipped = 0u64;
                let mut finite = true;
                // The loop fills a buffer on the stack, copied to the end of `out`:
                // `Vec::extend` is not inlined here (its loop would run baseline code),
                // and resizing `out` first would write every word twice.
                let mut words = [W::default(); 512];
                out.reserve(xs.len());
                for xs in xs.chunks(words.len()) {
                    let words = &mut words[..xs.len()];
                    // Wrapping arithmetic (no overflow check) is exact here: |q| <= L <
                    // 2^31, the plan bounds |weight·q| < 2^63, and `clipped` counts at
                    // most `xs.len()`.
                    for (o, x) in words.iter_mut().zip(xs) {
                        let x = value(x);
                        finite &= x.is_finite();
                        clipped = clipped.wrapping_add(u64::from(x.abs() > c));
                        let y = if SCALE {
                            x.clamp(-c, c) * k
                        } else {
                            x.clamp(-c, c) / c * l
                        };
                        let q = round_half_away(y);
                        *o = W::from_i64(q.wrapping_mul(weight));
                    }
                    out.extend_from_slice(words);
                }
                (clipped, finite)
            },
        );
        if finite {
            Ok(clipped)
        } else {
            Err(xs.iter().position(|x| !value(x).is_finite()).unwrap_or(0))
        }
    }

    /// Decodes a weighted sum `S` (as a signed integer) with total weight `W`.
    pub fn decode_mean(&self, sum: i64, total_weight: u64) -> f64 {
        sum as f64 * self.step() / total_weight as f64
    }
}

/// `y.round() as i64` (half away from zero) for |y| <= 2^31, in arithmetic every
/// vector unit has: no call into libm (`f64::round` is one on x86-64 without SSE4.1) and
/// no float-to-integer conversion (Rust's saturates, and LLVM turns it into one scalar
/// conversion per lane). A NaN gives some integer, without a panic.
///
/// With S = 1.5·2^52, y + S lies in [2^52, 2^53), where consecutive f64 are 1 apart, so
/// the sum is S + r for r the integer nearest y, ties to even (S is even, and Rust
/// always rounds to nearest, ties to even), and the low bits of the sum minus those of
/// S are r. The difference d = y - r is exact (a multiple of y's unit in the last
/// place, at most 1/2); |d| = 1/2 is a tie, where ties to even took the neighbour
/// nearer zero when d has the sign of y: step away from zero there.
#[inline(always)]
fn round_half_away(y: f64) -> i64 {
    const S: f64 = 6_755_399_441_055_744.0; // 1.5·2^52
    let s = y + S;
    // Two's-complement differences of the bits: wrapping, so that a NaN cannot panic.
    let r = (s.to_bits() as i64).wrapping_sub(S.to_bits() as i64);
    // s - S is r exactly (Sterbenz), and y - r is exact (above).
    let d = y - (s - S);
    r.wrapping_add(i64::from(d == 0.5 && y > 0.0))
        .wrapping_sub(i64::from(d == -0.5 && y < 0.0))
}

fn levels_of(bits: u32) -> u64 {
    (1u64 << (bits - 1)) - 1
}

/// L = 2^(b-1) - 1, the largest quantized level for `bits` (clamped to 2..=32).
pub fn levels(bits: u32) -> u64 {
    levels_of(bits.clamp(2, 32))
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "clip {} bits {} max weight {} nodes {} modulus 2^{}",
            self.params.clip,
            self.params.bits,
            self.params.max_weight,
            self.nodes,
            self.modulus.bits()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn clip_and_bits_outside_their_range_are_refused() {
        let p = |clip: f64, bits: u32| {
            Plan::new(
                QuantParams {
                    clip,
                    bits,
                    max_weight: 10,
                },
                3,
            )
        };
        for clip in [
            1e300,
            1e-7,
            0.0,
            -1.0,
            f64::NAN,
            f64::INFINITY,
            1e6 * 1.0001,
        ] {
            assert!(
                matches!(p(clip, 16), Err(Error::ClipOutOfRange { .. })),
                "{clip}"
            );
        }
        for bits in [0, 1, 33, 64] {
            assert!(
                matches!(p(1.0, bits), Err(Error::BitsOutOfRange { .. })),
                "{bits}"
            );
        }
        for (clip, bits) in [(MIN_CLIP, MAX_BITS), (MAX_CLIP, MIN_BITS), (1.0, 16)] {
            let plan = p(clip, bits).expect("in range");
            assert!(
                plan.step() > f64::from(f32::MIN_POSITIVE) && plan.step() < f64::from(f32::MAX)
            );
        }
        let msg = p(1e300, 16).expect_err("refused").to_string();
        assert_eq!(
            msg,
            "clip 1e300 is out of range: it must be a finite number from 1e-6 to 1e6"
        );
        assert!(!msg.contains("--"));
    }

    #[test]
    fn modulus_choice_and_overflow() {
        let small = QuantParams {
            clip: 1.0,
            bits: 8,
            max_weight: 1000,
        };
        // 10 x 1000 x 127 = 1.27e6 < 2^23: three bytes.
        assert_eq!(
            Plan::new(small, 10).expect("ok").modulus,
            Modulus::from_bytes(3).expect("3")
        );
        // 10 x 10^6 x 32767 = 3.3e11 < 2^39: five bytes, 2^40.
        assert_eq!(
            Plan::new(QuantParams::default(), 10).expect("ok").modulus,
            Modulus::from_bytes(5).expect("5")
        );
        let huge = QuantParams {
            clip: 1.0,
            bits: 32,
            max_weight: u64::MAX / 2,
        };
        let err = Plan::new(huge, 10).expect_err("overflow");
        if let Error::Overflow { max_weight_fit, .. } = err {
            let fixed = QuantParams {
                max_weight: max_weight_fit,
                ..huge
            };
            assert!(Plan::new(fixed, 10).is_ok());
        }
        assert!(
            Plan::new(
                QuantParams {
                    clip: -1.0,
                    ..small
                },
                3
            )
            .is_err()
        );
        assert!(Plan::new(QuantParams { bits: 1, ..small }, 3).is_err());
        assert!(Plan::new(small, 1).is_err());
    }

    #[test]
    fn wire_bytes_examples() {
        // Defaults (16 bits, max weight 10^6): 5 x 10^6 x 32767 < 2^39, so 5 bytes
        // (computed in u64 words).
        let five = Plan::new(QuantParams::default(), 5).expect("plan");
        assert_eq!(five.wire_bytes(), 5);
        assert_eq!(five.modulus.machine(), crate::secagg::ring::Machine::U64);
        // 8 bits, weight 1000, 10 nodes: 1.27e6 < 2^23, so 3 bytes of the 4.
        let small = QuantParams {
            clip: 1.0,
            bits: 8,
            max_weight: 1000,
        };
        let p = Plan::new(small, 10).expect("plan");
        assert_eq!(p.wire_bytes(), 3);
        assert_eq!(p.modulus.machine(), crate::secagg::ring::Machine::U32);
        // At the edge of 2^64 nothing can be saved.
        let edge = QuantParams {
            clip: 1.0,
            bits: 32,
            max_weight: 1 << 28,
        };
        assert_eq!(Plan::new(edge, 4).expect("plan").wire_bytes(), 8);
    }

    #[test]
    fn rounding_matches_f64_round_at_the_edges() {
        let half_below = 0.5f64.next_down();
        for y in [
            0.0,
            -0.0,
            0.5,
            -0.5,
            1.5,
            -1.5,
            2.5,
            -2.5,
            half_below,
            -half_below,
            2147483646.5,
            -2147483646.5,
            2147483647.0,
            -2147483647.0,
            1e-300,
            -1e-300,
            0.49999999999999994,
            2147483646.4999998,
            2147483648.0,
            -2147483648.0,
            2147483647.5,
            -2147483647.5,
        ] {
            assert_eq!(round_half_away(y), y.round() as i64, "{y}");
        }
        // Every tie k ± 1/2 whose ties-to-even neighbour is nearer zero and every one
        // whose is not, and their neighbours, across the range.
        for k in (0..=31).flat_map(|e| [(1i64 << e) - 1, 1 << e, (1 << e) + 1]) {
            for t in [k as f64 + 0.5, k as f64 - 0.5] {
                for y in [
                    t,
                    t.next_up(),
                    t.next_down(),
                    -t,
                    (-t).next_up(),
                    (-t).next_down(),
                ] {
                    if y.abs() <= 2147483648.0 {
                        assert_eq!(round_half_away(y), y.round() as i64, "{y}");
                    }
                }
            }
        }
    }

    /// [`Plan::quantize_into`] by its definition, one value at a time with `f64::round`
    /// (not [`round_half_away`]): the words, the number clipped, the first non-finite.
    fn definition<W: Word>(plan: &Plan, xs: &[f64], weight: i64) -> (Vec<W>, u64, Option<usize>) {
        let c = plan.params.clip;
        let l = levels(plan.params.bits) as f64;
        let q = |x: f64| (x.clamp(-c, c) / c * l).round() as i64;
        let words = xs.iter().map(|&x| W::from_i64(q(x).wrapping_mul(weight)));
        (
            words.collect(),
            xs.iter().filter(|x| x.abs() > c).count() as u64,
            xs.iter().position(|x| !x.is_finite()),
        )
    }

    /// Runs [`Plan::quantize_into_with`] at every level this CPU has, appending to words
    /// already there, and compares with [`definition`] bit for bit.
    fn check_levels<W: Word>(plan: &Plan, xs: &[f64], weight: i64) -> Result<(), TestCaseError> {
        let (want, clipped, bad) = definition::<W>(plan, xs, weight);
        let before = [W::from_u64(0x0123_4567_89AB_CDEF), W::from_u64(u64::MAX)];
        for level in simd::available_levels() {
            let mut got = before.to_vec();
            let res = plan.quantize_into_with(level, xs, weight, &mut got);
            prop_assert_eq!(&got[..2], &before[..], "{:?}: the words before", level);
            match bad {
                Some(i) => prop_assert_eq!(res, Err(i), "{:?}", level),
                None => {
                    prop_assert_eq!(res, Ok(clipped), "{:?}", level);
                    prop_assert_eq!(got.len() - 2, want.len(), "{:?}", level);
                    let first = got[2..].iter().zip(&want).position(|(g, w)| g != w);
                    if let Some(i) = first {
                        let (x, g, w) = (xs[i], got[2 + i], want[i]);
                        return Err(TestCaseError::fail(format!(
                            "{level:?} {plan} weight {weight}: x[{i}] = {x:e} gives {g:?}, not {w:?}"
                        )));
                    }
                }
            }
        }
        Ok(())
    }

    /// A plan for 2 nodes whose max weight is the largest the ring allows.
    fn widest_plan(clip: f64, bits: u32) -> Plan {
        let max_weight = ((1u128 << 63) - 1) / (2 * u128::from(levels(bits)));
        let params = QuantParams {
            clip,
            bits,
            max_weight: u64::try_from(max_weight).expect("below 2^63"),
        };
        Plan::new(params, 2).expect("plan")
    }

    /// xs[i] is x or its neighbours near the clip bound, zero, and the rounding boundaries
    /// (k + 1/2)·step, of both signs, and a few values far out.
    fn edge_values(plan: &Plan) -> Vec<f64> {
        let (c, step) = (plan.params.clip, plan.step());
        let l = levels(plan.params.bits);
        let mut xs = vec![0.0, c, 2.0 * c, 1e300, f64::MAX, f64::MIN_POSITIVE, 5e-324];
        for k in [0, 1, 2, l / 3, l / 2, l.saturating_sub(2), l - 1, l] {
            xs.push((k as f64 + 0.5) * step);
            xs.push(k as f64 * step);
        }
        let mut near = Vec::new();
        for x in xs {
            let (mut up, mut down) = (x, x);
            for _ in 0..4 {
                (up, down) = (up.next_up(), down.next_down());
                near.extend([up, down]);
            }
            near.push(x);
        }
        // f64::MAX's neighbour above is infinite: the words would not be compared.
        near.retain(|x| x.is_finite());
        let negated: Vec<f64> = near.iter().map(|x| -x).collect();
        near.extend(negated);
        near
    }

    #[test]
    fn every_level_matches_the_definition_at_the_edges() {
        let mut ties = 0;
        for bits in MIN_BITS..=MAX_BITS {
            // Powers of two (1/2^19 and 2^19 near both ends of the range) take the
            // multiplication; the others the division.
            for clip in [
                MIN_CLIP,
                1.0 / 524288.0,
                0.5,
                0.75,
                1.0,
                3.0,
                4.0,
                1e3,
                524288.0,
                MAX_CLIP,
            ] {
                let plan = widest_plan(clip, bits);
                let xs = edge_values(&plan);
                assert!(xs.iter().all(|x| x.is_finite()));
                let l = levels(bits) as f64;
                ties += xs
                    .iter()
                    .map(|x| (x.clamp(-clip, clip) / clip * l).fract().abs())
                    .filter(|f| *f == 0.5)
                    .count();
                let max = plan.params.max_weight as i64;
                for weight in [1, 2, 3, max - 1, max] {
                    check_levels::<u64>(&plan, &xs, weight).expect("u64 words");
                    check_levels::<u32>(&plan, &xs, weight).expect("u32 words");
                }
                // The first non-finite value is found wherever it is, and whatever it
                // is, a NaN after it or not.
                for bad in [f64::NAN, -f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
                    for at in [0, 1, xs.len() / 2, xs.len() - 1] {
                        for nan_after in [false, true] {
                            let mut xs = xs.clone();
                            if let (true, Some(last)) = (nan_after, xs.last_mut()) {
                                *last = f64::NAN;
                            }
                            xs[at] = bad;
                            check_levels::<u64>(&plan, &xs, 1).expect("non-finite");
                        }
                    }
                }
            }
        }
        assert!(
            ties > 1000,
            "the edge values hit ties x/c·L = k ± 1/2 ({ties})"
        );
    }

    /// Quantizing from bytes at exact ties: with clip = L (bits 2 to 8, the division) or
    /// a power of two with L = 1 (the multiplication), x = ±(k + 1/2)·step is exact in
    /// f32 and f64, and half-away rounding sends it away from zero, where any error in
    /// the conversion from bytes would send one side of it the other way.
    #[test]
    fn quantizing_bytes_at_ties_is_decoding_then_quantizing() {
        use crate::layout::{DType, decode_into};
        let mut cases: Vec<(f64, u32)> = (2..=8).map(|b| (levels(b) as f64, b)).collect();
        cases.extend([(4.0, 2), (0.5, 2)]);
        for (clip, bits) in cases {
            let plan = Plan::new(
                QuantParams {
                    clip,
                    bits,
                    max_weight: 1000,
                },
                3,
            )
            .expect("plan");
            let step = plan.step();
            let xs: Vec<f64> = (0..levels(bits))
                .flat_map(|k| [(k as f64 + 0.5) * step, -(k as f64 + 0.5) * step])
                .collect();
            assert!(
                xs.iter().all(|x| f64::from(*x as f32) == *x),
                "exact in f32"
            );
            for dtype in [DType::F32, DType::F64] {
                let bytes: Vec<u8> = xs
                    .iter()
                    .flat_map(|x| match dtype {
                        DType::F32 => (*x as f32).to_le_bytes().to_vec(),
                        DType::F64 => x.to_le_bytes().to_vec(),
                    })
                    .collect();
                let mut decoded = Vec::new();
                decode_into(dtype, &bytes, &mut decoded);
                for level in simd::available_levels() {
                    let (mut want, mut got) = (Vec::<u64>::new(), Vec::<u64>::new());
                    let a = plan.quantize_into_with(level, &decoded, 1, &mut want);
                    let b = plan.quantize_bytes_into_with(level, dtype, &bytes, 1, &mut got);
                    assert_eq!((a, &got), (b, &want), "{clip} {bits} {dtype:?} {level:?}");
                    // Ties round away from zero: +(k + 1/2) to k + 1, its negative to -(k + 1).
                    let q: Vec<i64> = got.iter().map(|w| *w as i64).collect();
                    let l = levels(bits) as i64;
                    let away: Vec<i64> = (0..l).flat_map(|k| [k + 1, -(k + 1)]).collect();
                    assert_eq!(q, away, "{clip} {bits} {dtype:?} {level:?}");
                }
            }
        }
    }

    /// Throughput of each level (not a check): `cargo test --release --lib
    /// secagg::quantize::tests::throughput -- --ignored --nocapture`. Blocks of 128 Ki
    /// values, as `files::tensor` hands them to masking.
    #[test]
    #[ignore = "a measurement, not a check"]
    fn throughput() {
        let plan = Plan::new(QuantParams::default(), 10).expect("plan");
        let xs: Vec<f64> = (0..1 << 17)
            .map(|i| f64::from(i % 1999) / 1000.0 - 1.0)
            .collect();
        let mut out: Vec<u64> = Vec::with_capacity(xs.len());
        for level in simd::available_levels() {
            // The best of 9 trials: the machine may be shared.
            let secs = (0..9)
                .map(|_| {
                    let t = std::time::Instant::now();
                    for _ in 0..20 {
                        out.clear();
                        let xs = std::hint::black_box(&xs);
                        plan.quantize_into_with(level, xs, 10, &mut out)
                            .expect("finite");
                    }
                    t.elapsed().as_secs_f64()
                })
                .fold(f64::INFINITY, f64::min);
            let ns = secs * 1e9 / (20 * xs.len()) as f64;
            println!("quantize into u64, {level:?}: {ns:.3} ns/value");
        }
        std::hint::black_box(&out);
    }

    proptest! {
        #[test]
        fn quantize_into_matches_quantize(xs in proptest::collection::vec(-3.0f64..3.0, 0..200),
                                          bits in 2u32..=32, weight in 1i64..1000, nan in proptest::option::of(0usize..200)) {
            let plan = Plan::new(QuantParams { clip: 1.0, bits, max_weight: 1000 }, 3).expect("plan");
            let mut xs = xs;
            let nan = nan.filter(|i| *i < xs.len());
            if let Some(i) = nan {
                xs[i] = f64::NAN;
            }
            let mut got: Vec<u64> = Vec::new();
            match plan.quantize_into(&xs, weight, &mut got) {
                Ok(clipped) => {
                    prop_assert!(nan.is_none());
                    let want: Vec<u64> = xs.iter().map(|x| (plan.quantize(*x).0 * weight) as u64).collect();
                    prop_assert_eq!(got, want);
                    prop_assert_eq!(clipped, xs.iter().filter(|x| x.abs() > 1.0).count() as u64);
                }
                Err(at) => prop_assert_eq!(Some(at), nan),
            }
        }

        /// Quantizing from the file's bytes is decoding them to f64 then quantizing, at
        /// every level, for both value types: the same words (appended after those
        /// already there), the same clipped count, the same first non-finite index.
        #[test]
        fn quantizing_bytes_is_decoding_then_quantizing(
            raw in proptest::collection::vec(any::<u64>(), 0..300),
            near in proptest::collection::vec(-3.0f64..3.0, 0..300),
            clip in prop_oneof![Just(1.0f64), Just(0.75), Just(4.0)],
            bits in 2u32..=32,
            weight in 1i64..1000,
        ) {
            use crate::layout::{decode_into, DType};
            let plan = Plan::new(QuantParams { clip, bits, max_weight: 1000 }, 3).expect("plan");
            for dtype in [DType::F32, DType::F64] {
                let mut bytes: Vec<u8> = Vec::new();
                for (r, x) in raw.iter().zip(near.iter().chain(std::iter::repeat(&0.5))) {
                    // Mostly plausible values, some raw bit patterns (NaN, infinities,
                    // subnormals included).
                    let v = if r % 4 == 0 { f64::from_bits(*r) } else { *x };
                    match dtype {
                        DType::F32 if r % 4 == 0 => bytes.extend((*r as u32).to_le_bytes()),
                        DType::F32 => bytes.extend((v as f32).to_le_bytes()),
                        DType::F64 => bytes.extend(v.to_le_bytes()),
                    }
                }
                // And the plan's edges: the clip bound, zero, the rounding ties.
                for x in edge_values(&plan) {
                    match dtype {
                        DType::F32 => bytes.extend((x as f32).to_le_bytes()),
                        DType::F64 => bytes.extend(x.to_le_bytes()),
                    }
                }
                let mut xs = Vec::new();
                decode_into(dtype, &bytes, &mut xs);
                for level in simd::available_levels() {
                    let (mut want, mut got) = (vec![7u64], vec![7u64]);
                    let a = plan.quantize_into_with(level, &xs, weight, &mut want);
                    let b = plan.quantize_bytes_into_with(level, dtype, &bytes, weight, &mut got);
                    prop_assert_eq!(a, b, "{:?} {:?}", dtype, level);
                    if a.is_ok() {
                        prop_assert_eq!(&got, &want, "{:?} {:?}", dtype, level);
                    }
                }
            }
        }

        /// A clip that is a power of two takes the multiplication: every finite f64
        /// (any bit pattern, subnormals included) quantizes as the definition's
        /// division says, at every level.
        #[test]
        fn a_power_of_two_clip_quantizes_as_the_division_does(
            e in -19i32..=19,
            bits in 2u32..=32,
            raw in proptest::collection::vec(any::<u64>(), 1..300),
            near in proptest::collection::vec(-2.0f64..2.0, 1..300),
        ) {
            let clip = 2f64.powi(e);
            let plan = widest_plan(clip, bits);
            prop_assert!(plan.exact_scale().is_some());
            let mut xs: Vec<f64> = raw.into_iter().map(f64::from_bits).filter(|x| x.is_finite()).collect();
            xs.extend(near.iter().map(|x| x * clip));
            check_levels::<u64>(&plan, &xs, 3)?;
            check_levels::<u32>(&plan, &xs, 1)?;
        }

        #[test]
        fn rounding_matches_f64_round(y in -2147483648.0f64..=2147483648.0) {
            prop_assert_eq!(round_half_away(y), y.round() as i64);
        }

        #[test]
        fn rounding_matches_f64_round_at_ties(k in -(1i64 << 31)..(1i64 << 31), ulps in -3i32..=3) {
            let mut y = k as f64 + 0.5;
            for _ in 0..ulps.unsigned_abs() {
                y = if ulps > 0 { y.next_up() } else { y.next_down() };
            }
            prop_assert_eq!(round_half_away(y), y.round() as i64, "{}", y);
        }

        #[test]
        fn every_level_matches_the_definition(
            bits in MIN_BITS..=MAX_BITS,
            clip in prop_oneof![Just(1.0), MIN_CLIP..=MAX_CLIP, 0.01f64..100.0],
            weight in prop_oneof![Just(u64::MAX), any::<u64>()],
            len in prop_oneof![0usize..40, 0usize..3000],
            seed: u64,
            bad in proptest::option::of((any::<prop::sample::Index>(), prop_oneof![
                Just(f64::NAN), Just(f64::INFINITY), Just(f64::NEG_INFINITY)])),
        ) {
            let plan = widest_plan(clip, bits);
            // 1 ..= max weight, the top end often.
            let weight = (weight % plan.params.max_weight + 1) as i64;
            let (c, step) = (clip, plan.step());
            let mut state = seed;
            let mut xs: Vec<f64> = (0..len)
                .map(|_| {
                    // SplitMix64.
                    state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
                    let u = (state ^ (state >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                    let u = (u ^ (u >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
                    let u = u ^ (u >> 31);
                    let unit = (u >> 11) as f64 / (1u64 << 53) as f64; // [0, 1)
                    match u % 4 {
                        // Anywhere in [-1.5c, 1.5c].
                        0 | 1 => (unit * 3.0 - 1.5) * c,
                        // Near a rounding boundary (k + 1/2)·step, a few ulps off.
                        2 => {
                            let k = (unit * levels(bits) as f64).floor();
                            let mut x = (k + 0.5) * step;
                            for _ in 0..(u >> 8) % 4 {
                                x = if u & 16 == 0 { x.next_up() } else { x.next_down() };
                            }
                            if u & 32 == 0 { x } else { -x }
                        }
                        // Any bit pattern that is finite.
                        _ => Some(f64::from_bits(u)).filter(|x| x.is_finite()).unwrap_or(c),
                    }
                })
                .collect();
            if let (Some((at, v)), false) = (bad, xs.is_empty()) {
                xs[at.index(len)] = v;
            }
            check_levels::<u64>(&plan, &xs, weight)?;
            check_levels::<u32>(&plan, &xs, weight)?;
        }

        #[test]
        fn wire_bytes_is_the_smallest_width_that_holds_the_sum(
            bits in 2u32..=32, max_weight in 1u64..1 << 40, nodes in 2usize..10_000) {
            let Ok(plan) = Plan::new(QuantParams { clip: 1.0, bits, max_weight }, nodes) else {
                return Ok(());
            };
            let fits = |w: usize| {
                let weights = nodes as u128 * u128::from(max_weight);
                let bound = weights * u128::from(levels(bits));
                bound < 1u128 << (8 * w - 1) && weights < 1u128 << (8 * w)
            };
            let w = plan.wire_bytes();
            prop_assert!((1..=8).contains(&w));
            prop_assert!(fits(w));
            prop_assert!(w == 1 || !fits(w - 1));
        }

        #[test]
        fn quantize_error_is_at_most_half_a_step(x in -2.0f64..2.0, bits in 2u32..=24, clip in 0.01f64..10.0) {
            let plan = Plan::new(QuantParams { clip, bits, max_weight: 1 }, 2).expect("plan");
            let (q, clipped) = plan.quantize(x);
            let back = plan.decode_mean(q, 1);
            prop_assert_eq!(clipped, x.abs() > clip);
            let target = x.clamp(-clip, clip);
            prop_assert!((back - target).abs() <= plan.step() / 2.0 * (1.0 + 1e-9));
            // Symmetric code.
            prop_assert_eq!(plan.quantize(-x).0, -q);
        }
    }
}
