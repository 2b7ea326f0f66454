//! File-mode aggregation: verifies masked files and sums them into the weighted mean.
//!
//! [`aggregate_files`] decodes a mean only after every participant's file was present,
//! agreed on the round, and verified against the sender's registered certificate.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::files::job;
use crate::files::masked::{self, Header, Reader};
use crate::party::{Fingerprint, PartyId};
use crate::pki::registry::Registry;
use crate::secagg::quantize::Plan;
use crate::secagg::ring::{Machine, Word};
use crate::secagg::sum::{self, Decoder, Placement};

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
    /// A file masked for another researcher: its masks are bound to that researcher.
    #[error("{}: masked for researcher {who}, not for this party ({own})", path.display())]
    OtherResearcher {
        /// File.
        path: PathBuf,
        /// The researcher named in the file: its id here if registered, and fingerprint.
        who: String,
        /// This party's fingerprint.
        own: Fingerprint,
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
    /// A file changed while it was being read.
    #[error(
        "a masked file changed while it was being aggregated (its weight word no longer matches); nothing was written"
    )]
    Changed,
    /// The sum did not decode.
    #[error(transparent)]
    Sum(#[from] sum::Error),
    /// A masked-file error.
    #[error(transparent)]
    Masked(#[from] crate::files::masked::Error),
    /// The registry failed.
    #[error(transparent)]
    Registry(#[from] crate::pki::registry::Error),
    /// A plan error (header parameters out of range).
    #[error(transparent)]
    Quantize(#[from] crate::secagg::quantize::Error),
}

type Result<T> = std::result::Result<T, Error>;

/// Progress events for the CLI.
pub enum Progress<'a> {
    /// All headers checked.
    Checked(usize),
    /// One input summed and verified.
    Summed(usize, &'a PartyId),
}

/// Verifies and sums masked files into the weighted mean, on `threads` threads.
///
/// All headers are checked first (made for `own`, the aggregating researcher's
/// fingerprint; agreement, membership, registration, completeness),
/// so a missing participant fails before any payload is read. Each payload is then summed
/// while it is hashed, on every core and read once, and its signature checked at its
/// end; any failure discards the sum. Every summed value is range-checked against the
/// total weight times the largest level before it is decoded.
///
/// Each header is authenticated (its own signature, against the sender's registered,
/// unexpired certificate at `now`, unix seconds) before anything it declares is
/// allocated: a forged header claiming a huge vector is refused at its signature.
pub fn aggregate_files(
    reg: &Registry,
    own: &Fingerprint,
    paths: &[PathBuf],
    now: i64,
    threads: usize,
    mut progress: impl FnMut(Progress<'_>),
) -> Result<Aggregate> {
    let first_path = paths.first().ok_or(Error::NoInputs)?;
    let mut readers = Vec::with_capacity(paths.len());
    let mut seen = BTreeMap::new();
    let mut keys = Vec::with_capacity(paths.len());
    for path in paths {
        let mut r = Reader::open(path)?;
        let key = *job::registered_node_at(reg, &r.header().sender, now)?.public_key();
        r.authenticate(&key)?;
        let h = r.header();
        if h.context.researcher != *own {
            let who = match reg.get_by_fingerprint(&h.context.researcher)? {
                Some((peer, _)) => format!("'{}' ({})", peer.party_id, h.context.researcher),
                None => format!("{} (not registered here)", h.context.researcher),
            };
            return Err(Error::OtherResearcher {
                path: path.clone(),
                who,
                own: *own,
            });
        }
        if let Some(first) = readers.first().map(Reader::header)
            && let Some(field) = disagreement(first, h)
        {
            return Err(Error::Mismatch {
                path: path.clone(),
                first: first_path.clone(),
                field,
            });
        }
        if !h.context.participants.contains(&h.sender) {
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
        keys.push(key);
        readers.push(r);
    }
    let header = readers[0].header().clone();
    let missing: Vec<String> = header
        .context
        .participants
        .iter()
        .filter(|p| !seen.contains_key(*p))
        .map(|p| p.to_string())
        .collect();
    if !missing.is_empty() {
        return Err(Error::Missing(missing));
    }
    let plan = Plan::new(header.quant, header.context.participants.len())?;
    if plan.modulus != header.modulus {
        return Err(Error::Mismatch {
            path: first_path.clone(),
            first: first_path.clone(),
            field: "modulus (not the one the parameters imply)",
        });
    }
    progress(Progress::Checked(readers.len()));
    // The payload sizes were checked against the files' lengths when they were opened.
    let senders: Vec<PartyId> = readers.iter().map(|r| r.header().sender.clone()).collect();
    let files = readers.into_iter().zip(keys).collect();
    let (total_weight, mean) = match header.modulus.machine() {
        Machine::U32 => decode_files::<u32>(files, &plan, &header, threads)?,
        Machine::U64 => decode_files::<u64>(files, &plan, &header, threads)?,
    };
    for (i, sender) in senders.iter().enumerate() {
        progress(Progress::Summed(i + 1, sender));
    }
    Ok(Aggregate {
        header,
        total_weight,
        mean,
    })
}

/// The result of [`aggregate_files`]: all the researcher learns.
#[derive(Debug)]
pub struct Aggregate {
    /// The inputs' common header (the first file's, sender included).
    pub header: Header,
    /// The sum of the weights.
    pub total_weight: u64,
    /// The weighted mean, encoded in the inputs' layout (ready for
    /// [`crate::files::tensor::write_encoded`]).
    pub mean: Vec<u8>,
}

/// Sums, verifies and decodes the files on `threads` threads, each slice decoded into
/// the mean as soon as it is summed (no vector-sized accumulator). The total weight is
/// read first from the files' last residues; it is only trusted once every file
/// verified and the verified sums carried the same weight. Verification failures come
/// first, then a bad total weight, then the first out-of-range sum.
fn decode_files<W: Word>(
    files: Vec<(Reader, p256::PublicKey)>,
    plan: &Plan,
    header: &Header,
    threads: usize,
) -> Result<(u64, Vec<u8>)> {
    let width = header.modulus.word_bytes();
    let mut weight = 0u64;
    for (r, _) in &files {
        weight = weight.wrapping_add(r.last_residue()?);
    }
    let dec = Decoder::new(plan, width, weight);
    let ok = dec.as_ref().ok().copied();
    let place = Placement::new(&header.layout);
    let values = place.elements();
    let mut mean = vec![0u8; place.encoded_len() as usize];
    let ranges = masked::segment_ranges(header.elements, threads);
    // Per range: the first out-of-range value, and the summed weight if it holds it.
    let mut found: Vec<(Option<u64>, Option<u64>)> = vec![(None, None); ranges.len()];
    let mut work = Vec::with_capacity(ranges.len());
    let mut rest: &mut [u8] = &mut mean;
    for (range, slot) in ranges.into_iter().zip(found.iter_mut()) {
        let out_at = place.byte_of(range.start);
        let size = place.byte_of(range.end) - out_at;
        let (out, tail) = std::mem::take(&mut rest).split_at_mut(size as usize);
        rest = tail;
        let place = &place;
        let end = header.elements;
        let sink = move |first: u64, sums: &[W]| {
            if first + sums.len() as u64 == end {
                slot.1 = sums.last().map(|w| w.to_u64());
            }
            let Some(dec) = ok else { return };
            let vals = &sums[..(values.saturating_sub(first) as usize).min(sums.len())];
            if slot.0.is_none() {
                slot.0 = dec.first_out_of_range(vals).map(|i| first + i as u64);
            }
            place.encode(&dec, first, vals, out, out_at);
        };
        work.push((range, sink));
    }
    masked::sum_verified::<W, _>(files, work).map_err(|(_, e)| e)?;
    let summed = found.iter().find_map(|f| f.1);
    let out_of_range = found.iter().find_map(|f| f.0);
    let total = verdict(dec, weight, summed, header.modulus.bits(), out_of_range)?;
    Ok((total, mean))
}

/// The outcome once every file verified, in this order: the weight read before summing
/// must be the verified one (`summed`, else a file changed while it was read, and any
/// verdict on the early weight would blame the nodes for a local race); then the total
/// weight must be valid; then every value in range. Returns the total weight.
fn verdict(
    dec: std::result::Result<Decoder, sum::Error>,
    pre: u64,
    summed: Option<u64>,
    bits: u32,
    out_of_range: Option<u64>,
) -> Result<u64> {
    let low = |x: u64| x & (u64::MAX >> (64 - bits.clamp(1, 64)));
    if summed.map(low) != Some(low(pre)) {
        return Err(Error::Changed);
    }
    let dec = dec?;
    if let Some(i) = out_of_range {
        return Err(sum::Error::OutOfRange(i).into());
    }
    Ok(dec.total_weight())
}

fn disagreement(a: &Header, b: &Header) -> Option<&'static str> {
    if a.format_version != b.format_version {
        Some("format version")
    } else if a.context.federation != b.context.federation {
        Some("federation")
    } else if a.context.round != b.context.round {
        Some("round")
    } else if a.context.researcher != b.context.researcher {
        Some("researcher")
    } else if a.context.label != b.context.label {
        Some("label")
    } else if a.context.participants != b.context.participants {
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
    use crate::secagg::quantize::QuantParams;

    fn decoder(weight: u64) -> std::result::Result<Decoder, sum::Error> {
        let plan = Plan::new(QuantParams::default(), 3).expect("plan");
        Decoder::new(&plan, plan.wire_bytes(), weight)
    }

    #[test]
    fn a_weight_that_changed_is_reported_before_any_verdict_on_it() {
        // The early read saw 0 (invalid) but the verified files sum to 3: a local race,
        // not a bad weight.
        let got = verdict(decoder(0), 0, Some(3), 40, None);
        assert!(matches!(got, Err(Error::Changed)), "{got:?}");
        let got = verdict(decoder(3), 3, Some(4), 40, Some(7));
        assert!(matches!(got, Err(Error::Changed)), "{got:?}");
        let got = verdict(decoder(3), 3, None, 40, None);
        assert!(matches!(got, Err(Error::Changed)), "{got:?}");
    }

    #[test]
    fn then_the_weight_then_the_range() {
        let got = verdict(decoder(0), 0, Some(0), 40, Some(1));
        assert!(
            matches!(got, Err(Error::Sum(sum::Error::BadWeight(0)))),
            "{got:?}"
        );
        // Bits above the ring's width carry no meaning.
        let got = verdict(decoder(3), 3, Some(3 + (1 << 40)), 40, Some(5));
        assert!(
            matches!(got, Err(Error::Sum(sum::Error::OutOfRange(5)))),
            "{got:?}"
        );
        assert_eq!(verdict(decoder(3), 3, Some(3), 40, None).expect("ok"), 3);
    }
}
