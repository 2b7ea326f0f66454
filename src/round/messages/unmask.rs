//! Unmask (N → R) and the result header (R → N).

use std::fmt;

use p256::Scalar;
use zeroize::Zeroize;

use crate::party::Fingerprint;
use crate::round::schedule::{FP_LEN, MAX_INVITEES};
use crate::secagg::shamir::{self, SCALAR_LEN};

use super::Result;
use super::reader::{Reader, check_list_len, check_order, put_u32_len};

/// Which share of a peer an unmask entry reveals.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShareKind {
    /// The peer's `b` (it is in U3): wire value 0.
    B,
    /// The peer's `s` (it is in U2 \ U3): wire value 1.
    S,
}

/// One revealed share. The value is zeroized on drop and hidden from `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct RevealedShare {
    /// The dealer of the share.
    pub peer: Fingerprint,
    /// `b` or `s`.
    pub kind: ShareKind,
    /// The share value at the sender's x.
    pub value: Scalar,
}

impl Drop for RevealedShare {
    fn drop(&mut self) {
        self.value.zeroize();
    }
}

impl fmt::Debug for RevealedShare {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "RevealedShare {{ peer: {:?}, kind: {:?}, value: <secret> }}",
            self.peer, self.kind
        )
    }
}

/// N → R: one share per peer of U2(u), never both kinds for one peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unmask {
    /// Strictly increasing by peer (so one entry per peer).
    pub shares: Vec<RevealedShare>,
}

pub(super) const UNMASK: &str = "unmask";

impl Unmask {
    /// `u32be(count) ‖ (fp_peer ‖ u8 kind ‖ scalar(32))…`. Zeroize `out` after sending.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<()> {
        check_list_len(UNMASK, "shares", self.shares.len())?;
        let fps: Vec<Fingerprint> = self.shares.iter().map(|s| s.peer).collect();
        check_order(UNMASK, "shares", &fps)?;
        put_u32_len(out, self.shares.len());
        for s in &self.shares {
            out.extend_from_slice(s.peer.as_bytes());
            out.push(match s.kind {
                ShareKind::B => 0,
                ShareKind::S => 1,
            });
            let mut v = shamir::scalar_to_bytes(&s.value);
            out.extend_from_slice(&v);
            v.zeroize();
        }
        Ok(())
    }

    /// The inverse of [`Unmask::encode`].
    pub fn decode(payload: &[u8]) -> Result<Unmask> {
        let mut r = Reader::new(UNMASK, payload);
        let n = r.count("shares", 0, MAX_INVITEES, FP_LEN + 1 + SCALAR_LEN)?;
        let shares = (0..n)
            .map(|_| {
                let peer = r.fp("share peer")?;
                let kind = match r.u8("share kind")? {
                    0 => ShareKind::B,
                    1 => ShareKind::S,
                    k => return Err(r.invalid("share kind", format!("{k} (expected 0 or 1)"))),
                };
                let value = r.scalar("share value")?;
                Ok(RevealedShare { peer, kind, value })
            })
            .collect::<Result<Vec<_>>>()?;
        let fps: Vec<Fingerprint> = shares.iter().map(|s| s.peer).collect();
        r.ordered("shares", &fps)?;
        r.finish()?;
        Ok(Unmask { shares })
    }
}

/// R → N: the round's outcome; the mean follows as chunks of `bytes` bytes in total.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResultHeader {
    /// Sum of the weights W.
    pub total_weight: u64,
    /// |U3|.
    pub survivors: u32,
    /// Bytes of the mean that follow (values in layout order, each in its tensor's type).
    pub bytes: u64,
}

pub(super) const RESULT: &str = "result";

impl ResultHeader {
    /// `u64be(W) ‖ u32be(|U3|) ‖ u64be(bytes)`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.total_weight.to_be_bytes());
        out.extend_from_slice(&self.survivors.to_be_bytes());
        out.extend_from_slice(&self.bytes.to_be_bytes());
    }

    /// The inverse of [`ResultHeader::encode`].
    pub fn decode(payload: &[u8]) -> Result<ResultHeader> {
        let mut r = Reader::new(RESULT, payload);
        let m = ResultHeader {
            total_weight: r.u64("total weight")?,
            survivors: r.u32("survivors")?,
            bytes: r.u64("bytes")?,
        };
        r.finish()?;
        Ok(m)
    }
}
