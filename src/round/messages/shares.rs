//! ShareBundle (N → R) and ForwardedShares (R → N).

use std::fmt;

use crate::party::Fingerprint;
use crate::round::schedule::{FP_LEN, MAX_INVITEES, SEALED_LEN};

use super::Result;
use super::reader::{Reader, check_list_len, check_order, put_set_checked, put_u32_len};

/// One sealed share and the party at the other end.
#[derive(Clone, PartialEq, Eq)]
pub struct SealedShare {
    /// The receiver (in a bundle) or the sender (when forwarded).
    pub peer: Fingerprint,
    /// `ciphertext(128) ‖ tag(16)`.
    pub sealed: [u8; SEALED_LEN],
}

impl fmt::Debug for SealedShare {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "SealedShare {{ peer: {:?}, sealed: <{SEALED_LEN} bytes> }}",
            self.peer
        )
    }
}

fn put_sealed(out: &mut Vec<u8>, message: &'static str, shares: &[SealedShare]) -> Result<()> {
    check_list_len(message, "shares", shares.len())?;
    let fps: Vec<Fingerprint> = shares.iter().map(|s| s.peer).collect();
    check_order(message, "shares", &fps)?;
    put_u32_len(out, shares.len());
    for s in shares {
        out.extend_from_slice(s.peer.as_bytes());
        out.extend_from_slice(&s.sealed);
    }
    Ok(())
}

fn read_sealed(r: &mut Reader<'_>) -> Result<Vec<SealedShare>> {
    let n = r.count("shares", 0, MAX_INVITEES, FP_LEN + SEALED_LEN)?;
    let shares = (0..n)
        .map(|_| {
            Ok(SealedShare {
                peer: r.fp("share peer")?,
                sealed: r.sealed("sealed share")?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let fps: Vec<Fingerprint> = shares.iter().map(|s| s.peer).collect();
    r.ordered("shares", &fps)?;
    Ok(shares)
}

/// N → R: this node's sealed shares, one per other member of U1, keyed by receiver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShareBundle {
    /// Strictly increasing by receiver.
    pub shares: Vec<SealedShare>,
}

pub(super) const SHARE_BUNDLE: &str = "share bundle";

impl ShareBundle {
    /// `u32be(count) ‖ (fp_receiver ‖ sealed(144))…`.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<()> {
        put_sealed(out, SHARE_BUNDLE, &self.shares)
    }

    /// The inverse of [`ShareBundle::encode`].
    pub fn decode(payload: &[u8]) -> Result<ShareBundle> {
        let mut r = Reader::new(SHARE_BUNDLE, payload);
        let shares = read_sealed(&mut r)?;
        r.finish()?;
        Ok(ShareBundle { shares })
    }
}

/// R → N: U2 and the shares sealed to this node, keyed by sender.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ForwardedShares {
    /// U2 as the researcher closed it.
    pub u2: Vec<Fingerprint>,
    /// Strictly increasing by sender.
    pub shares: Vec<SealedShare>,
}

pub(super) const FORWARDED_SHARES: &str = "forwarded shares";

impl ForwardedShares {
    /// `set(U2) ‖ u32be(count) ‖ (fp_sender ‖ sealed(144))…`.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<()> {
        put_set_checked(out, FORWARDED_SHARES, "U2", &self.u2)?;
        put_sealed(out, FORWARDED_SHARES, &self.shares)
    }

    /// The inverse of [`ForwardedShares::encode`].
    pub fn decode(payload: &[u8]) -> Result<ForwardedShares> {
        let mut r = Reader::new(FORWARDED_SHARES, payload);
        let u2 = r.set("U2", 0)?;
        let shares = read_sealed(&mut r)?;
        r.finish()?;
        Ok(ForwardedShares { u2, shares })
    }
}
