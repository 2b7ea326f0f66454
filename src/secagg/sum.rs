//! Modular sums of masked vectors: an accumulator that adds words as they stream in,
//! and the decoding of the weighted mean. Memory is one accumulator of d words whatever
//! the number of inputs. File mode ([`crate::files::aggregate`]) and rounds both use it.

use crate::layout::{DType, Layout};
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
    /// in `[-W·L, W·L]` (see [`Decoder::first_out_of_range`]).
    pub fn finish_checked(self, plan: &Plan, layout: &Layout) -> Result<(u64, Vec<u8>)> {
        let (dec, sums) = self.decoder(plan)?;
        if let Some(i) = dec.first_out_of_range(sums) {
            return Err(Error::OutOfRange(i as u64));
        }
        Ok(encode_mean(&dec, sums, layout))
    }

    /// The decoder (from the total weight, the last word) and the summed values.
    fn decoder(&self, plan: &Plan) -> Result<(Decoder, &[W])> {
        let (weight, sums) = self.acc.split_last().ok_or(Error::NoInputs)?;
        Ok((Decoder::new(plan, self.width, weight.to_u64())?, sums))
    }

    /// Decodes the weighted mean. The last word is the total weight.
    pub fn finish(self, plan: &Plan) -> Result<Mean> {
        let (dec, sums) = self.decoder(plan)?;
        Ok(Mean {
            total_weight: dec.total_weight(),
            values: sums.iter().map(|s| dec.value(*s)).collect(),
        })
    }

    /// Decodes the weighted mean straight into `layout`'s encoding (see
    /// [`crate::layout::encode_values`]), without a vector of f64 in between. Returns the
    /// total weight and the bytes.
    pub fn finish_encoded(self, plan: &Plan, layout: &Layout) -> Result<(u64, Vec<u8>)> {
        let (dec, sums) = self.decoder(plan)?;
        Ok(encode_mean(&dec, sums, layout))
    }
}

/// The total weight and the whole mean of `sums`, encoded in `layout`.
fn encode_mean<W: Word>(dec: &Decoder, sums: &[W], layout: &Layout) -> (u64, Vec<u8>) {
    let place = Placement::new(layout);
    let mut out = vec![0u8; place.encoded_len() as usize];
    place.encode(dec, 0, sums, &mut out, 0);
    (dec.total_weight(), out)
}

/// Turns summed words into the weighted mean, for the whole vector or any slice of it:
/// the total weight's check, the range check and the scaling. Sums are read modulo
/// 2^(8·width) as two's-complement integers.
#[derive(Clone, Copy, Debug)]
pub struct Decoder {
    bits: u32,
    total: u64,
    scale: f64,
    limit: u64,
}

/// 2^52 + 2^51 as an f64, and its bit pattern: adding a signed integer v with
/// |v| ≤ 2^51 to the bit pattern gives the f64 2^52 + 2^51 + v exactly, so subtracting
/// the constant again converts v to f64 with integer and float adds alone (which
/// vectorise on every x86-64; a 64-bit integer conversion does not before AVX-512).
const MAGIC_F: f64 = 6_755_399_441_055_744.0;
const MAGIC_BITS: u64 = 0x4338_0000_0000_0000;

impl Decoder {
    /// For a vector whose summed weight word (the last one) is `weight_word`, in a ring
    /// of `width` bytes: checks that the total weight is at least 1 and at most
    /// nodes · max_weight.
    pub fn new(plan: &Plan, width: usize, weight_word: u64) -> Result<Decoder> {
        let bits = 8 * width.clamp(1, 8) as u32;
        let total = low_bits(weight_word, bits);
        let max = plan.nodes as u128 * u128::from(plan.params.max_weight);
        if total == 0 || u128::from(total) > max {
            return Err(Error::BadWeight(total));
        }
        // total <= n·max_weight and the plan holds n·max_weight·L < 2^(bits-1), so the
        // limit fits a u64 (saturating only guards a plan that was never checked).
        let limit = total.saturating_mul(crate::secagg::quantize::levels(plan.params.bits));
        Ok(Decoder {
            bits,
            total,
            scale: plan.step() / total as f64,
            limit,
        })
    }

    /// The sum of the weights.
    pub fn total_weight(&self) -> u64 {
        self.total
    }

    /// Whether the two's-complement sums fit the magic-constant conversion exactly.
    fn fast(&self) -> bool {
        self.bits <= 52
    }

    /// A sum as an exact f64 integer, for rings of at most 52 bits (see [`MAGIC_F`]):
    /// sign extension by xor and subtract, then the magic constant.
    #[inline(always)]
    fn exact_fast(&self, x: u64) -> f64 {
        let sign = 1u64 << (self.bits - 1);
        let v = (low_bits(x, self.bits) ^ sign).wrapping_add(MAGIC_BITS.wrapping_sub(sign));
        f64::from_bits(v) - MAGIC_F
    }

    /// The index of the first sum outside `[-W·L, W·L]` (W the total weight, L the
    /// largest quantized level), if any: a weighted sum of clipped inputs cannot lie
    /// there, so such a sum means a poisoned or broken input. One branch-free pass (it
    /// vectorises); the index is looked up only on failure.
    pub fn first_out_of_range<W: Word>(&self, sums: &[W]) -> Option<usize> {
        let found = if self.fast() {
            // Exact: both sides are integers below 2^52.
            let limit = self.limit as f64;
            let out = |s: &W| self.exact_fast(s.to_u64()).abs() > limit;
            sums.iter()
                .fold(false, |bad, s| bad | out(s))
                .then(|| sums.iter().position(out))
        } else {
            let out = |s: &W| signed_low_bits(s.to_u64(), self.bits).unsigned_abs() > self.limit;
            sums.iter()
                .fold(false, |bad, s| bad | out(s))
                .then(|| sums.iter().position(out))
        };
        found.flatten()
    }

    /// Writes the mean's values for `sums`, little-endian in `dtype`, into `out`
    /// (`sums.len() · dtype.bytes()` bytes; extra sums or bytes are left alone).
    pub fn encode_into<W: Word>(&self, sums: &[W], dtype: DType, out: &mut [u8]) {
        let scale = self.scale;
        macro_rules! each {
            ($value:expr) => {
                match dtype {
                    DType::F32 => out
                        .chunks_exact_mut(4)
                        .zip(sums)
                        .for_each(|(d, s)| d.copy_from_slice(&(($value)(s) as f32).to_le_bytes())),
                    DType::F64 => out
                        .chunks_exact_mut(8)
                        .zip(sums)
                        .for_each(|(d, s)| d.copy_from_slice(&($value)(s).to_le_bytes())),
                }
            };
        }
        if self.fast() {
            each!(|s: &W| self.exact_fast(s.to_u64()) * scale)
        } else {
            let bits = self.bits;
            each!(|s: &W| signed_low_bits(s.to_u64(), bits) as f64 * scale)
        }
    }

    /// One value of the mean, as f64.
    pub fn value<W: Word>(&self, sum: W) -> f64 {
        signed_low_bits(sum.to_u64(), self.bits) as f64 * self.scale
    }
}

/// Where each tensor's values lie in a vector and in its encoding (see
/// [`crate::layout::encode_values`]), so that any element range can be encoded on its own.
#[derive(Clone, Debug)]
pub struct Placement {
    /// Per tensor: first element, element count, first byte, type.
    parts: Vec<(u64, u64, u64, DType)>,
    elements: u64,
    bytes: u64,
}

impl Placement {
    /// For a layout that passed [`Layout::check`] (a failing one places nothing).
    pub fn new(layout: &Layout) -> Placement {
        let (mut elements, mut bytes) = (0u64, 0u64);
        let mut parts = Vec::with_capacity(layout.tensors.len());
        if layout.check().is_ok() {
            for t in &layout.tensors {
                let n = t.checked_elements().unwrap_or(0);
                parts.push((elements, n, bytes, t.dtype));
                elements += n;
                bytes += n * t.dtype.bytes() as u64;
            }
        }
        Placement {
            parts,
            elements,
            bytes,
        }
    }

    /// The number of values.
    pub fn elements(&self) -> u64 {
        self.elements
    }

    /// The encoded length in bytes.
    pub fn encoded_len(&self) -> u64 {
        self.bytes
    }

    /// The byte at which value `e` starts (the encoded length for `e` at or past the
    /// end).
    pub fn byte_of(&self, e: u64) -> u64 {
        self.parts
            .iter()
            .find(|(first, n, _, _)| e < first + n)
            .map_or(self.bytes, |(first, _, at, dtype)| {
                at + (e - first) * dtype.bytes() as u64
            })
    }

    /// Encodes `sums`, the values starting at element `first`, into `out`, which holds
    /// the encoding from byte `out_at` on. Sums past the last value (the weight word)
    /// are skipped.
    pub fn encode<W: Word>(
        &self,
        dec: &Decoder,
        first: u64,
        sums: &[W],
        out: &mut [u8],
        out_at: u64,
    ) {
        let end = first.saturating_add(sums.len() as u64);
        for &(start, n, at, dtype) in &self.parts {
            let (lo, hi) = (first.max(start), end.min(start + n));
            if lo >= hi {
                continue;
            }
            let src = &sums[(lo - first) as usize..(hi - first) as usize];
            let from = at + (lo - start) * dtype.bytes() as u64;
            // Callers hand `out` exactly the bytes of the elements they encode; anything
            // else is our bug, and is left unwritten rather than written out of place.
            debug_assert!(from >= out_at, "encoding before the start of `out`");
            let Some(from) = from.checked_sub(out_at) else {
                continue;
            };
            let len = src.len() * dtype.bytes();
            let dst = out.get_mut(from as usize..from as usize + len);
            debug_assert!(dst.is_some(), "encoding past the end of `out`");
            if let Some(dst) = dst {
                dec.encode_into(src, dtype, dst);
            }
        }
    }
}

/// Elements per hashed segment: the unit in which payloads are summed on several cores
/// and digested (each segment gets its own BLAKE3; see the masked-file format).
pub const SEGMENT_ELEMENTS: usize = 1 << 20;

/// Elements hashed and added at a time: small enough that both passes over them hit the
/// core's own cache.
pub const READ_ELEMENTS: usize = 1 << 16;

/// Splits `elements` into at most `threads` contiguous ranges, each starting on a
/// segment boundary, in order: the unit of work of [`sum_hashed_range`].
pub fn segment_ranges(elements: u64, threads: usize) -> Vec<std::ops::Range<u64>> {
    let seg = SEGMENT_ELEMENTS as u64;
    let per = elements
        .div_ceil(seg)
        .div_ceil(threads.clamp(1, 256) as u64)
        .max(1)
        * seg;
    (0..elements.div_ceil(per))
        .map(|t| t * per..((t + 1) * per).min(elements))
        .collect()
}

/// Where [`sum_hashed_range`] gets the payloads' bytes: files (read by position) or
/// buffers in memory.
pub trait Payloads: Sync {
    /// How many payloads.
    fn count(&self) -> usize;
    /// `buf.len()` bytes of payload `i` from its byte `at`: read into `buf`, or borrowed.
    fn bytes<'a>(&'a self, i: usize, at: u64, buf: &'a mut [u8]) -> std::io::Result<&'a [u8]>;
}

impl Payloads for [Vec<u8>] {
    fn count(&self) -> usize {
        self.len()
    }

    fn bytes<'a>(&'a self, i: usize, at: u64, buf: &'a mut [u8]) -> std::io::Result<&'a [u8]> {
        let at = usize::try_from(at).map_err(std::io::Error::other)?;
        self.get(i)
            .and_then(|p| p.get(at..at.checked_add(buf.len())?))
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::UnexpectedEof))
    }
}

/// One thread of a sum: elements `range` (starting on a segment boundary) of every
/// payload of `w`-byte residues, summed slice by slice ([`READ_ELEMENTS`]) into a
/// slice-sized sum that stays in the core's cache and handed to `sink` as `(first
/// element, sums)`, in order, each payload's segments hashed (BLAKE3) on the way, so
/// each byte is read once. Returns, per payload, the digests of the range's segments;
/// or the index of the payload that could not be read.
pub fn sum_hashed_range<W: Word, P: Payloads + ?Sized>(
    payloads: &P,
    w: usize,
    range: std::ops::Range<u64>,
    mut sink: impl FnMut(u64, &[W]),
) -> std::result::Result<Vec<Vec<[u8; 32]>>, (usize, std::io::Error)> {
    let len = usize::try_from(range.end.saturating_sub(range.start)).unwrap_or(usize::MAX);
    let mut buf = vec![0u8; READ_ELEMENTS.min(len) * w];
    let mut acc = vec![W::default(); READ_ELEMENTS.min(len)];
    let mut digests = vec![Vec::new(); payloads.count()];
    let mut seg_first = range.start;
    while seg_first < range.end {
        let seg_end = (seg_first + SEGMENT_ELEMENTS as u64).min(range.end);
        let mut hashers = vec![blake3::Hasher::new(); payloads.count()];
        let mut at = seg_first;
        while at < seg_end {
            let n = (seg_end - at).min(READ_ELEMENTS as u64) as usize;
            let sums = &mut acc[..n];
            sums.fill(W::default());
            for (i, h) in hashers.iter_mut().enumerate() {
                let bytes = payloads
                    .bytes(i, at * w as u64, &mut buf[..n * w])
                    .map_err(|e| (i, e))?;
                h.update(bytes);
                absorb_words(sums, w, bytes);
            }
            sink(at, sums);
            at += n as u64;
        }
        for (d, h) in digests.iter_mut().zip(hashers) {
            d.push(*h.finalize().as_bytes());
        }
        seg_first = seg_end;
    }
    Ok(digests)
}

/// Sums `payloads` of `elements` residues of `w` bytes each, held in memory, as
/// `secagg aggregate` sums files: [`sum_hashed_ranges`] over the [`segment_ranges`]
/// for `threads`, every range handing its summed slices to `sink`. Returns, per payload,
/// every segment's digest in order.
pub fn sum_hashed<W: Word>(
    payloads: &[Vec<u8>],
    w: usize,
    elements: u64,
    threads: usize,
    sink: impl Fn(u64, &[W]) + Sync,
) -> std::result::Result<Vec<Vec<[u8; 32]>>, (usize, std::io::Error)> {
    let sink = &sink;
    let work = segment_ranges(elements, threads)
        .into_iter()
        .map(|r| (r, |first: u64, sums: &[W]| sink(first, sums)))
        .collect();
    sum_hashed_ranges(payloads, w, work)
}

/// One thread per `(range, sink)` of `work` (ranges that tile the vector in order, each
/// from a segment boundary, as [`segment_ranges`] makes them), each running
/// [`sum_hashed_range`] into its own sink. Returns, per payload, every segment's digest
/// in order; or the index of the first payload that could not be read.
pub fn sum_hashed_ranges<W: Word, P: Payloads + ?Sized, S: FnMut(u64, &[W]) + Send>(
    payloads: &P,
    w: usize,
    work: Vec<(std::ops::Range<u64>, S)>,
) -> std::result::Result<Vec<Vec<[u8; 32]>>, (usize, std::io::Error)> {
    let parts: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = work
            .into_iter()
            .map(|(r, sink)| s.spawn(move || sum_hashed_range(payloads, w, r, sink)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err((0, std::io::Error::other("a summing thread panicked")))
                })
            })
            .collect()
    });
    let mut digests = vec![Vec::new(); payloads.count()];
    for part in parts {
        for (all, mine) in digests.iter_mut().zip(part?) {
            all.extend(mine);
        }
    }
    Ok(digests)
}

/// Adds `width`-byte little-endian words from `bytes` to `acc`, in order (as many as
/// both hold).
#[inline]
pub fn absorb_words<W: Word>(acc: &mut [W], width: usize, bytes: &[u8]) {
    crate::secagg::simd::add_packed(acc, bytes, width, crate::secagg::keys::Sign::Add);
}

/// Appends the low `width` bytes of each word to `out`, little-endian.
/// `width` is clamped to 1..=8; a width beyond the word's own bytes pads each word with
/// zero bytes.
pub fn encode_words<W: Word>(words: &[W], width: usize, out: &mut Vec<u8>) {
    let width = width.clamp(1, 8);
    let start = out.len();
    out.resize(start + words.len() * width, 0);
    if width <= W::BYTES {
        crate::secagg::simd::pack(words, width, &mut out[start..]);
    } else {
        for (w, c) in words.iter().zip(out[start..].chunks_exact_mut(width)) {
            c.copy_from_slice(&w.le8()[..width]);
        }
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

    /// `sum_hashed` hands every slice of the sum once, in order within each range, equal
    /// (in its low 8·w bits) to the plain sum; each payload's digests are BLAKE3 of its
    /// segments; a payload too short is reported by index.
    #[test]
    fn sum_hashed_sums_every_slice_once_and_digests_every_segment() {
        let (w, elements) = (5usize, SEGMENT_ELEMENTS as u64 + 70_001);
        let mut state = 1u64;
        let payloads: Vec<Vec<u8>> = (0..3)
            .map(|_| {
                (0..elements as usize * w)
                    .map(|_| {
                        state = state
                            .wrapping_mul(6364136223846793005)
                            .wrapping_add(1442695040888963407);
                        (state >> 56) as u8
                    })
                    .collect()
            })
            .collect();
        // One thread: one range of two segments, handed in order; two: a range each.
        for threads in [1, 2] {
            let got = std::sync::Mutex::new((vec![None; elements as usize], 0u64));
            let digests = sum_hashed::<u64>(&payloads, w, elements, threads, |first, sums| {
                let (got, next) = &mut *got.lock().expect("lock");
                if threads == 1 {
                    assert_eq!(first, *next, "slices in order");
                    *next = first + sums.len() as u64;
                }
                for (k, s) in sums.iter().enumerate() {
                    let slot = &mut got[first as usize + k];
                    assert!(
                        slot.is_none(),
                        "element {} summed twice",
                        first as usize + k
                    );
                    *slot = Some(*s & ((1 << 40) - 1));
                }
            })
            .expect("sum");
            let got = got.into_inner().expect("lock").0;
            for (i, g) in got.iter().enumerate() {
                let want = payloads.iter().fold(0u64, |a, p| {
                    let mut b = [0u8; 8];
                    b[..w].copy_from_slice(&p[i * w..i * w + w]);
                    a.wrapping_add(u64::from_le_bytes(b))
                }) & ((1 << 40) - 1);
                assert_eq!(*g, Some(want), "element {i}");
            }
            for (p, d) in payloads.iter().zip(&digests) {
                let want: Vec<[u8; 32]> = p
                    .chunks(SEGMENT_ELEMENTS * w)
                    .map(|seg| *blake3::hash(seg).as_bytes())
                    .collect();
                assert_eq!(*d, want, "{threads} thread(s)");
            }
        }
        let mut short = payloads.clone();
        let cut = short[1].len() - 1;
        short[1].truncate(cut);
        let err = sum_hashed::<u64>(&short, w, elements, 2, |_, _| {}).expect_err("short");
        assert_eq!(
            (err.0, err.1.kind()),
            (1, std::io::ErrorKind::UnexpectedEof)
        );
    }

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
        let want = crate::layout::encode_values(&layout, sums.iter().map(|s| *s as f64 * scale));
        let (total, got) = acc.finish_encoded(&plan, &layout).expect("finish");
        assert_eq!(total, 3);
        assert_eq!(got, want);
    }
    use crate::secagg::quantize::QuantParams;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// The magic-constant conversion is exact: the same f64 as the plain
        /// sign-extend-and-convert, at every width it is used for, and the range check
        /// and the encoding agree with the plain path bit for bit.
        #[test]
        fn fast_decoding_is_the_plain_decoding(
            words in prop::collection::vec(any::<u64>(), 1..300),
            width in 1usize..=6,
            bits in 2u32..=32,
            weight in 1u64..1000,
            edges in any::<bool>(),
        ) {
            let plan = Plan::new(QuantParams { clip: 1.0, bits, max_weight: 1000 }, 3).expect("plan");
            // A total weight is read modulo the ring: at one byte, 256, 512 and 768 read
            // as 0, which Decoder::new rightly refuses. Keep it nonzero in the ring.
            let weight = 1 + (weight - 1) % ((1u64 << (8 * width as u32)).min(1000) - 1);
            let dec = Decoder::new(&plan, width, weight).expect("weight");
            prop_assert!(dec.fast());
            let b = 8 * width as u32;
            let mut words = words;
            if edges {
                // The extremes of the ring: -2^(b-1), -1, 0, 1, 2^(b-1) - 1, and the limit ± 1.
                let l = dec.limit;
                words.extend([1u64 << (b - 1), u64::MAX, 0, 1, (1u64 << (b - 1)) - 1, l, l + 1, l.wrapping_neg(), (l + 1).wrapping_neg()]);
            }
            for x in &words {
                prop_assert_eq!(dec.exact_fast(*x).to_bits(), (signed_low_bits(*x, b) as f64).to_bits());
            }
            let plain = Decoder { bits: 60, ..dec };
            let slow_first = words.iter().position(|x| signed_low_bits(*x, b).unsigned_abs() > dec.limit);
            prop_assert_eq!(dec.first_out_of_range(&words), slow_first);
            for dtype in [DType::F32, DType::F64] {
                let mut fast = vec![0u8; words.len() * dtype.bytes()];
                let mut slow = fast.clone();
                dec.encode_into(&words, dtype, &mut fast);
                // The same words sign-extended by hand, through the plain (> 52 bits) path.
                let ext: Vec<u64> = words.iter().map(|x| signed_low_bits(*x, b) as u64).collect();
                plain.encode_into(&ext, dtype, &mut slow);
                prop_assert_eq!(fast, slow);
            }
        }

        /// Encoding any split of the vector, piece by piece into its own slice, gives
        /// the bytes of encoding it whole.
        #[test]
        fn placement_encodes_any_split_like_the_whole(
            shapes in prop::collection::vec((1u64..40, any::<bool>()), 1..5),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..5),
            seed: u64,
        ) {
            use crate::layout::{Container, TensorSpec};
            let layout = Layout {
                container: Container::Safetensors,
                tensors: shapes.iter().enumerate().map(|(i, (n, f))| TensorSpec {
                    name: format!("t{i}"),
                    shape: vec![*n],
                    dtype: if *f { DType::F32 } else { DType::F64 },
                }).collect(),
            };
            let place = Placement::new(&layout);
            let n = place.elements() as usize + 1; // and the weight word
            let plan = Plan::new(QuantParams::default(), 3).expect("plan");
            let dec = Decoder::new(&plan, plan.wire_bytes(), 2).expect("weight");
            let sums: Vec<u64> = (0..n as u64).map(|i| (i ^ seed).wrapping_mul(0x9E37_79B9_7F4A_7C15) % 5000).collect();
            let mut whole = vec![0u8; place.encoded_len() as usize];
            place.encode(&dec, 0, &sums, &mut whole, 0);
            let want = crate::layout::encode_values(&layout, sums[..n - 1].iter().map(|s| dec.value(*s)));
            prop_assert_eq!(&whole, &want);
            let mut points: Vec<usize> = cuts.iter().map(|c| c.index(n + 1)).collect();
            points.extend([0, n]);
            points.sort_unstable();
            let mut pieces = vec![0u8; whole.len()];
            for w in points.windows(2) {
                let (a, b) = (w[0] as u64, w[1] as u64);
                let (from, to) = (place.byte_of(a) as usize, place.byte_of(b) as usize);
                place.encode(&dec, a, &sums[w[0]..w[1]], &mut pieces[from..to], from as u64);
            }
            prop_assert_eq!(pieces, whole);
        }

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
