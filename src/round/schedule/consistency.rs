//! The consistency check: the message every node in U3 signs, and its signatures.

use p256::PublicKey;
use p256::ecdsa::Signature;
use p256::ecdsa::signature::Signer;
use sha2::{Digest, Sha256};

use crate::party::Fingerprint;
use crate::pki::identity::PartyKey;

use super::advert::{Advert, verify};
use super::ctx::Ctx;
use super::encoding::{is_set, is_subset, put_bytes, put_set, put_str};
use super::{CONSISTENCY_LABEL, Error, Result};

/// The message every node in U3 signs: `str("secagg/2 consistency") ‖ ctx ‖ H ‖ set(U2) ‖
/// set(U3)`, with H = SHA-256 over `bytes(advert signed message)` of each node in U2 in
/// fingerprint order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsistencyMessage(Vec<u8>);

impl ConsistencyMessage {
    /// Builds the message from the adverts of U2 (strictly increasing by fingerprint; U2 is
    /// their fingerprints) and U3 (strictly increasing, a subset of U2).
    pub fn new(ctx: &Ctx, u2_adverts: &[&Advert], u3: &[Fingerprint]) -> Result<Self> {
        let u2: Vec<Fingerprint> = u2_adverts.iter().map(|a| a.fp).collect();
        if !is_set(&u2) {
            return Err(Error::Unsorted("U2"));
        }
        if !is_set(u3) {
            return Err(Error::Unsorted("U3"));
        }
        if !is_subset(u3, &u2) {
            return Err(Error::NotSubset("U3", "U2"));
        }
        let mut h = Sha256::new();
        for a in u2_adverts {
            let mut m = Vec::new();
            put_bytes(&mut m, &a.signed_message(ctx));
            h.update(&m);
        }
        let mut out = Vec::new();
        put_str(&mut out, CONSISTENCY_LABEL);
        out.extend_from_slice(ctx.encoded());
        out.extend_from_slice(&h.finalize());
        put_set(&mut out, "U2", &u2)?;
        put_set(&mut out, "U3", u3)?;
        Ok(ConsistencyMessage(out))
    }

    /// The bytes that are signed.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

/// Signs the consistency message with the node's certified key (RFC 6979).
pub fn sign_consistency(key: &PartyKey, msg: &ConsistencyMessage) -> Signature {
    key.signing_key().sign(msg.as_bytes())
}

/// Checks a consistency signature under a node's certified key.
pub fn verify_consistency(
    cert_pub: &PublicKey,
    msg: &ConsistencyMessage,
    sig: &Signature,
) -> Result<()> {
    verify(cert_pub, msg.as_bytes(), sig)
}
