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
use crate::secagg::sum::{self, AnyAccumulator};

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
    let mut acc = AnyAccumulator::new(header.modulus, header.elements as usize);
    let senders: Vec<PartyId> = readers.iter().map(|r| r.header().sender.clone()).collect();
    masked::sum_verified(readers.into_iter().zip(keys).collect(), &mut acc, threads)
        .map_err(|(_, e)| e)?;
    for (i, sender) in senders.iter().enumerate() {
        progress(Progress::Summed(i + 1, sender));
    }
    let (total_weight, mean) = acc.finish_checked(&plan, &header.layout)?;
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
