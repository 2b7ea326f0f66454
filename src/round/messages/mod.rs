//! Protocol 2's message payloads: binary, each encoder beside its decoder.
//!
//! Frames, headers and chunks stay in [`crate::net::frame`]; this module turns each protocol-2
//! message into payload bytes and a kind number (16..=31, so they never collide with
//! protocol 1's 1..=7), and back. `docs/protocol.md` gives every layout.
//!
//! Decoding is strict: every count is capped and checked against the bytes that remain
//! before anything is allocated, sets and fingerprint-keyed lists must be strictly
//! increasing (so a duplicate is a decoding error), points must be compressed,
//! on-curve and not the identity, scalars canonical, and no byte may follow the last
//! field. Semantic checks (is this advert's signer invited, is U2 what I saw) belong to the
//! round state machines, which run them on what decodes here.

mod adverts;
mod announce;
mod consistency;
mod reader;
mod shares;
mod unmask;

pub use adverts::{AdvertList, Advertise};
pub use announce::Announce;
pub use consistency::{ConsistencySig, SignatureList, Survivors};
pub use shares::{ForwardedShares, SealedShare, ShareBundle};
pub use unmask::{ResultHeader, RevealedShare, ShareKind, Unmask};

use adverts::{ADVERT_LIST, ADVERTISE};
use announce::ANNOUNCE;
use consistency::{CONSISTENCY_SIG, SIGNATURE_LIST, SURVIVORS};
use shares::{FORWARDED_SHARES, SHARE_BUNDLE};
use unmask::{RESULT, UNMASK};

use crate::party::Fingerprint;
use crate::round::schedule::{self};

/// Kind of [`Announce`].
pub const KIND_ANNOUNCE: u8 = 16;
/// Kind of [`Advertise`].
pub const KIND_ADVERTISE: u8 = 17;
/// Kind of [`AdvertList`].
pub const KIND_ADVERT_LIST: u8 = 18;
/// Kind of [`ShareBundle`].
pub const KIND_SHARE_BUNDLE: u8 = 19;
/// Kind of [`ForwardedShares`].
pub const KIND_FORWARDED_SHARES: u8 = 20;
/// Kind of [`Survivors`].
pub const KIND_SURVIVORS: u8 = 21;
/// Kind of [`ConsistencySig`].
pub const KIND_CONSISTENCY_SIG: u8 = 22;
/// Kind of [`SignatureList`].
pub const KIND_SIGNATURE_LIST: u8 = 23;
/// Kind of [`Unmask`].
pub const KIND_UNMASK: u8 = 24;
/// Kind of [`ResultHeader`].
pub const KIND_RESULT: u8 = 25;

/// Most tensors in an announced layout.
pub const MAX_TENSORS: usize = 100_000;
/// Most dimensions of one tensor.
pub const MAX_DIMS: usize = 32;

/// Why a payload did not decode, or a message could not be encoded. In every decoding
/// case the sender is at fault.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A kind outside protocol 2's messages.
    #[error("unknown protocol-2 message kind {0}")]
    Kind(u8),
    /// The payload ends inside a field.
    #[error("{message} message is truncated in {field}")]
    Truncated {
        /// Message name.
        message: &'static str,
        /// Field being read.
        field: &'static str,
    },
    /// Bytes follow the last field.
    #[error("{message} message has {extra} byte(s) after its last field")]
    Trailing {
        /// Message name.
        message: &'static str,
        /// Extra bytes.
        extra: usize,
    },
    /// A count or length above its cap (or below its floor).
    #[error("{message} message: {field} is {count}, allowed {min}..={max}")]
    Count {
        /// Message name.
        message: &'static str,
        /// Field.
        field: &'static str,
        /// Announced.
        count: u64,
        /// Floor.
        min: u64,
        /// Cap.
        max: u64,
    },
    /// A set or fingerprint-keyed list is unsorted or has a duplicate.
    #[error("{message} message: {field} is not strictly increasing by fingerprint")]
    Order {
        /// Message name.
        message: &'static str,
        /// Field.
        field: &'static str,
    },
    /// A field has a value no encoder produces (bad UTF-8, point, scalar, signature, tag).
    #[error("{message} message: invalid {field}: {reason}")]
    Invalid {
        /// Message name.
        message: &'static str,
        /// Field.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The announcement names another researcher than the one TLS pinned.
    #[error("announcement names researcher {announced}, but the connection is with {pinned}")]
    Researcher {
        /// In the message.
        announced: Fingerprint,
        /// From TLS.
        pinned: Fingerprint,
    },
    /// The announcement does not make a valid round context.
    #[error("announcement: {0}")]
    Ctx(#[source] schedule::Error),
}

type Result<T> = std::result::Result<T, Error>;

/// Any protocol-2 payload.
#[derive(Clone, Debug, PartialEq)]
pub enum Message2 {
    /// See [`Announce`].
    Announce(Announce),
    /// See [`Advertise`].
    Advertise(Advertise),
    /// See [`AdvertList`].
    AdvertList(AdvertList),
    /// See [`ShareBundle`].
    ShareBundle(ShareBundle),
    /// See [`ForwardedShares`].
    ForwardedShares(ForwardedShares),
    /// See [`Survivors`].
    Survivors(Survivors),
    /// See [`ConsistencySig`].
    ConsistencySig(ConsistencySig),
    /// See [`SignatureList`].
    SignatureList(SignatureList),
    /// See [`Unmask`].
    Unmask(Unmask),
    /// See [`ResultHeader`].
    Result(ResultHeader),
}

impl Message2 {
    /// The frame kind (16..=25).
    pub fn kind(&self) -> u8 {
        match self {
            Message2::Announce(_) => KIND_ANNOUNCE,
            Message2::Advertise(_) => KIND_ADVERTISE,
            Message2::AdvertList(_) => KIND_ADVERT_LIST,
            Message2::ShareBundle(_) => KIND_SHARE_BUNDLE,
            Message2::ForwardedShares(_) => KIND_FORWARDED_SHARES,
            Message2::Survivors(_) => KIND_SURVIVORS,
            Message2::ConsistencySig(_) => KIND_CONSISTENCY_SIG,
            Message2::SignatureList(_) => KIND_SIGNATURE_LIST,
            Message2::Unmask(_) => KIND_UNMASK,
            Message2::Result(_) => KIND_RESULT,
        }
    }

    /// A short name for logs and errors.
    pub fn name(&self) -> &'static str {
        match self {
            Message2::Announce(_) => ANNOUNCE,
            Message2::Advertise(_) => ADVERTISE,
            Message2::AdvertList(_) => ADVERT_LIST,
            Message2::ShareBundle(_) => SHARE_BUNDLE,
            Message2::ForwardedShares(_) => FORWARDED_SHARES,
            Message2::Survivors(_) => SURVIVORS,
            Message2::ConsistencySig(_) => CONSISTENCY_SIG,
            Message2::SignatureList(_) => SIGNATURE_LIST,
            Message2::Unmask(_) => UNMASK,
            Message2::Result(_) => RESULT,
        }
    }

    /// The payload bytes (the frame header is [`crate::net::frame`]'s).
    pub fn encode(&self) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        match self {
            Message2::Announce(m) => m.encode(&mut out)?,
            Message2::Advertise(m) => m.encode(&mut out),
            Message2::AdvertList(m) => m.encode(&mut out)?,
            Message2::ShareBundle(m) => m.encode(&mut out)?,
            Message2::ForwardedShares(m) => m.encode(&mut out)?,
            Message2::Survivors(m) => m.encode(&mut out)?,
            Message2::ConsistencySig(m) => m.encode(&mut out),
            Message2::SignatureList(m) => m.encode(&mut out)?,
            Message2::Unmask(m) => m.encode(&mut out)?,
            Message2::Result(m) => m.encode(&mut out),
        }
        Ok(out)
    }
}

/// Decodes one protocol-2 payload of frame kind `kind`.
pub fn decode(kind: u8, payload: &[u8]) -> Result<Message2> {
    Ok(match kind {
        KIND_ANNOUNCE => Message2::Announce(Announce::decode(payload)?),
        KIND_ADVERTISE => Message2::Advertise(Advertise::decode(payload)?),
        KIND_ADVERT_LIST => Message2::AdvertList(AdvertList::decode(payload)?),
        KIND_SHARE_BUNDLE => Message2::ShareBundle(ShareBundle::decode(payload)?),
        KIND_FORWARDED_SHARES => Message2::ForwardedShares(ForwardedShares::decode(payload)?),
        KIND_SURVIVORS => Message2::Survivors(Survivors::decode(payload)?),
        KIND_CONSISTENCY_SIG => Message2::ConsistencySig(ConsistencySig::decode(payload)?),
        KIND_SIGNATURE_LIST => Message2::SignatureList(SignatureList::decode(payload)?),
        KIND_UNMASK => Message2::Unmask(Unmask::decode(payload)?),
        KIND_RESULT => Message2::Result(ResultHeader::decode(payload)?),
        k => return Err(Error::Kind(k)),
    })
}

#[cfg(test)]
mod tests;
