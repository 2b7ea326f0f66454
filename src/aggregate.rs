//! The aggregator: sums masked updates modulo 2^k as they stream in, and decodes the
//! weighted mean. Memory is one accumulator of d words whatever the number of inputs.
//!
//! [`Accumulator::finish`] is the only way to a mean, and [`aggregate_files`] calls it
//! only after every participant's file was present, agreed on the round, and verified
//! against the sender's registered certificate.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::identity::PartyId;
use crate::mask::Word;
use crate::masked::{self, Header, Reader};
use crate::quantize::{Modulus, Plan};
use crate::registry::Registry;

/// Aggregation errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No inputs.
    #[error("no masked files given")]
    NoInputs,
    /// A participant did not deliver.
    #[error("missing participant(s): {}; the masks do not cancel without them, so no result is computed", .0.join(", "))]
    Missing(Vec<String>),
    /// A sender is not in the round.
    #[error("{}: sender '{sender}' is not a participant of this round", path.display())]
    Stranger {
        /// File.
        path: PathBuf,
        /// Sender.
        sender: PartyId,
    },
    /// Two files from one sender.
    #[error("{}: a second file from '{sender}'", path.display())]
    Duplicate {
        /// File.
        path: PathBuf,
        /// Sender.
        sender: PartyId,
    },
    /// Headers disagree.
    #[error("{}: header disagrees with {} on {field}", path.display(), first.display())]
    Mismatch {
        /// File.
        path: PathBuf,
        /// Reference file.
        first: PathBuf,
        /// Which field.
        field: &'static str,
    },
    /// The weights sum to zero or more than allowed.
    #[error("total weight {0} is invalid (inputs inconsistent or tampered)")]
    BadWeight(u64),
    /// A masked-file error.
    #[error(transparent)]
    Masked(#[from] masked::Error),
    /// A plan error (header parameters out of range).
    #[error(transparent)]
    Quantize(#[from] crate::quantize::Error),
}

impl Error {
    /// What to do.
    pub fn hint(&self) -> Option<String> {
        Some(match self {
            Error::NoInputs => "pass the masked files: secagg aggregate a.masked b.masked ... --out mean.npy".into(),
            Error::Missing(_) => "collect every participant's file, or start attempt+1 with the survivors as participants".into(),
            Error::Stranger { .. } | Error::Duplicate { .. } => "pass exactly one file per participant of the round".into(),
            Error::Mismatch { .. } => "all files must come from the same federation, round, attempt, participants and parameters".into(),
            Error::BadWeight(_) => "re-run the round; a node may have used a weight above --max-weight".into(),
            Error::Masked(e) => return e.hint(),
            Error::Quantize(e) => return e.hint(),
        })
    }
}

type Result<T> = std::result::Result<T, Error>;

/// A running modular sum.
pub struct Accumulator<W: Word> {
    acc: Vec<W>,
}

impl<W: Word> Accumulator<W> {
    /// A zeroed accumulator of `elements` words.
    pub fn new(elements: usize) -> Self {
        Accumulator {
            acc: vec![W::default(); elements],
        }
    }

    /// Adds little-endian words starting at word `offset`. Out-of-range words are ignored
    /// (callers check lengths first).
    #[inline]
    pub fn absorb(&mut self, offset: u64, bytes: &[u8]) {
        let start = (offset as usize).min(self.acc.len());
        for (a, c) in self.acc[start..]
            .iter_mut()
            .zip(bytes.chunks_exact(W::BYTES))
        {
            *a = a.add(W::from_le(c));
        }
    }

    /// The running sum as little-endian words (to send it on).
    pub fn to_le_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.acc.len() * W::BYTES);
        self.acc.iter().for_each(|w| w.put_le(&mut out));
        out
    }

    /// Decodes the weighted mean. The last word is the total weight.
    pub fn finish(self, plan: &Plan) -> Result<Mean> {
        let (weight, sums) = self.acc.split_last().ok_or(Error::NoInputs)?;
        let total = weight.to_u64();
        let max = plan.nodes as u128 * u128::from(plan.params.max_weight);
        if total == 0 || u128::from(total) > max {
            return Err(Error::BadWeight(total));
        }
        let step = plan.step();
        let values = sums
            .iter()
            .map(|s| s.to_i64() as f64 * step / total as f64)
            .collect();
        Ok(Mean {
            total_weight: total,
            values,
        })
    }
}

/// The result: the weighted mean and the total weight (all the aggregator learns).
#[derive(Debug)]
pub struct Mean {
    /// Sum of the weights.
    pub total_weight: u64,
    /// The weighted mean, flattened in layout order.
    pub values: Vec<f64>,
}

/// Either word size.
pub enum AnyAccumulator {
    /// 2^32.
    M32(Accumulator<u32>),
    /// 2^64.
    M64(Accumulator<u64>),
}

impl AnyAccumulator {
    /// For a modulus.
    pub fn new(modulus: Modulus, elements: usize) -> Self {
        match modulus {
            Modulus::M32 => AnyAccumulator::M32(Accumulator::new(elements)),
            Modulus::M64 => AnyAccumulator::M64(Accumulator::new(elements)),
        }
    }

    /// See [`Accumulator::absorb`].
    pub fn absorb(&mut self, offset: u64, bytes: &[u8]) {
        match self {
            AnyAccumulator::M32(a) => a.absorb(offset, bytes),
            AnyAccumulator::M64(a) => a.absorb(offset, bytes),
        }
    }

    /// See [`Accumulator::to_le_bytes`].
    pub fn to_le_bytes(&self) -> Vec<u8> {
        match self {
            AnyAccumulator::M32(a) => a.to_le_bytes(),
            AnyAccumulator::M64(a) => a.to_le_bytes(),
        }
    }

    /// See [`Accumulator::finish`].
    pub fn finish(self, plan: &Plan) -> Result<Mean> {
        match self {
            AnyAccumulator::M32(a) => a.finish(plan),
            AnyAccumulator::M64(a) => a.finish(plan),
        }
    }
}

/// Progress events for the CLI.
pub enum Progress<'a> {
    /// All headers checked.
    Checked(usize),
    /// One input summed and verified.
    Summed(usize, &'a PartyId),
}

/// Verifies and sums masked files into the weighted mean.
///
/// All headers are checked first (agreement, membership, registration, completeness),
/// so a missing participant fails before any payload is read. Each payload is then summed
/// while it is hashed, and its signature checked at its end; any failure discards the sum.
pub fn aggregate_files(
    reg: &Registry,
    paths: &[PathBuf],
    mut progress: impl FnMut(Progress<'_>),
) -> Result<(Header, Mean)> {
    let first_path = paths.first().ok_or(Error::NoInputs)?;
    let mut readers = Vec::with_capacity(paths.len());
    let mut seen = BTreeMap::new();
    let mut keys = Vec::with_capacity(paths.len());
    for path in paths {
        let r = Reader::open(path)?;
        let h = r.header();
        if let Some(first) = readers.first().map(Reader::header) {
            if let Some(field) = disagreement(first, h) {
                return Err(Error::Mismatch {
                    path: path.clone(),
                    first: first_path.clone(),
                    field,
                });
            }
        }
        if !h.participants.contains(&h.sender) {
            return Err(Error::Stranger {
                path: path.clone(),
                sender: h.sender.clone(),
            });
        }
        if seen.insert(h.sender.clone(), path.clone()).is_some() {
            return Err(Error::Duplicate {
                path: path.clone(),
                sender: h.sender.clone(),
            });
        }
        keys.push(*masked::registered_node(reg, &h.sender)?.public_key());
        readers.push(r);
    }
    let header = readers[0].header().clone();
    let missing: Vec<String> = header
        .participants
        .iter()
        .filter(|p| !seen.contains_key(*p))
        .map(|p| p.to_string())
        .collect();
    if !missing.is_empty() {
        return Err(Error::Missing(missing));
    }
    let plan = Plan::new(header.quant, header.participants.len())?;
    if plan.modulus != header.modulus {
        return Err(Error::Mismatch {
            path: first_path.clone(),
            first: first_path.clone(),
            field: "modulus (not the one the parameters imply)",
        });
    }
    progress(Progress::Checked(readers.len()));
    let mut acc = AnyAccumulator::new(header.modulus, header.elements as usize);
    for (i, (mut r, key)) in readers.into_iter().zip(keys).enumerate() {
        let sender = r.header().sender.clone();
        r.stream(|off, bytes| acc.absorb(off, bytes))?;
        r.verify(&key)?;
        progress(Progress::Summed(i + 1, &sender));
    }
    let mean = acc.finish(&plan)?;
    Ok((header, mean))
}

fn disagreement(a: &Header, b: &Header) -> Option<&'static str> {
    if a.format_version != b.format_version {
        Some("format version")
    } else if a.federation != b.federation {
        Some("federation")
    } else if a.round != b.round {
        Some("round")
    } else if a.attempt != b.attempt {
        Some("attempt")
    } else if a.label != b.label {
        Some("label")
    } else if a.participants != b.participants {
        Some("participants")
    } else if a.quant != b.quant || a.modulus != b.modulus {
        Some("quantization parameters")
    } else if a.layout != b.layout || a.elements != b.elements {
        Some("tensor shapes")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quantize::QuantParams;
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
                let mut push = |v: u64| match plan.modulus {
                    Modulus::M32 => (v as u32).put_le(&mut bytes),
                    Modulus::M64 => v.put_le(&mut bytes),
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
    }
}
