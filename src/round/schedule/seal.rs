//! Share sealing: the AES-256-GCM keys between pairs, and the share pairs they carry.

use std::fmt;

use aes_gcm::aead::{AeadInOut, KeyInit, Nonce, Tag};
use aes_gcm::{Aes256Gcm, Key};
use p256::{NonZeroScalar, PublicKey, Scalar};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::party::Fingerprint;
use crate::secagg::shamir;

use super::advert::Advert;
use super::ctx::Ctx;
use super::encoding::{ecdh_x, hkdf, put_str};
use super::{Error, Result, SEALED_LEN, SHARE_LABEL, SHARE_PLAIN_LEN};

/// `str("secagg/2 share") ‖ ctx ‖ fp_sender ‖ fp_receiver`: the HKDF info and the AAD.
pub fn share_info(ctx: &Ctx, sender: &Fingerprint, receiver: &Fingerprint) -> Vec<u8> {
    let mut out = Vec::with_capacity(ctx.encoded().len() + 96);
    put_str(&mut out, SHARE_LABEL);
    out.extend_from_slice(ctx.encoded());
    out.extend_from_slice(sender.as_bytes());
    out.extend_from_slice(receiver.as_bytes());
    out
}

/// The AES-256-GCM key for shares from `sender` to `receiver` (one direction of a pair).
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct ShareKey([u8; 32]);

impl fmt::Debug for ShareKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ShareKey(<secret>)")
    }
}

/// A decrypted pair of shares for one holder: `(s-share, b-share)`.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct SharePair {
    /// The share of the dealer's `s`.
    pub s: Scalar,
    /// The share of the dealer's `b`.
    pub b: Scalar,
}

impl fmt::Debug for SharePair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SharePair(<secret>)")
    }
}

impl SharePair {
    /// Checks both shares against the dealer's advert, at the holder's x.
    pub fn verify(&self, dealer: &Advert, x: u32) -> Result<()> {
        if !dealer.s_commitments.verify(x, &self.s) {
            return Err(Error::ShareCommitment("s"));
        }
        if !dealer.b_commitments.verify(x, &self.b) {
            return Err(Error::ShareCommitment("b"));
        }
        Ok(())
    }
}

impl ShareKey {
    /// The key from our `c` and the peer's `C`. The sender calls it with its own `c` and
    /// the receiver's `C`; the receiver with its own `c` and the sender's `C`; both pass
    /// (sender, receiver) in that order.
    pub fn derive(
        own_c: &NonZeroScalar,
        peer_c: &PublicKey,
        ctx: &Ctx,
        sender: &Fingerprint,
        receiver: &Fingerprint,
    ) -> ShareKey {
        ShareKey::from_shared(&ecdh_x(own_c, peer_c)[..], ctx, sender, receiver)
    }

    /// The HKDF step alone, from the ECDH x-coordinate (known-answer tests).
    pub fn from_shared(
        x: &[u8],
        ctx: &Ctx,
        sender: &Fingerprint,
        receiver: &Fingerprint,
    ) -> ShareKey {
        let mut out = [0u8; 32];
        hkdf(None, x, &share_info(ctx, sender, receiver), &mut out);
        ShareKey(out)
    }

    /// The key bytes (known-answer tests).
    pub fn expose(&self) -> &[u8; 32] {
        &self.0
    }

    /// Seals `fp_s ‖ fp_r ‖ s-share ‖ b-share` into 144 bytes `ciphertext ‖ tag`.
    pub fn seal(
        &self,
        ctx: &Ctx,
        sender: &Fingerprint,
        receiver: &Fingerprint,
        shares: &SharePair,
    ) -> Result<[u8; SEALED_LEN]> {
        let mut buf = [0u8; SEALED_LEN];
        buf[..32].copy_from_slice(sender.as_bytes());
        buf[32..64].copy_from_slice(receiver.as_bytes());
        buf[64..96].copy_from_slice(&shamir::scalar_to_bytes(&shares.s));
        buf[96..128].copy_from_slice(&shamir::scalar_to_bytes(&shares.b));
        let aad = share_info(ctx, sender, receiver);
        let tag = self.cipher().encrypt_inout_detached(
            &Nonce::<Aes256Gcm>::default(),
            &aad,
            (&mut buf[..SHARE_PLAIN_LEN]).into(),
        );
        match tag {
            Ok(tag) => {
                buf[SHARE_PLAIN_LEN..].copy_from_slice(&tag);
                Ok(buf)
            }
            Err(_) => {
                buf.zeroize();
                Err(Error::Seal)
            }
        }
    }

    /// Opens a sealed share: length, tag, then the two fingerprints inside, then the
    /// scalars' encodings. The caller still checks them against the commitments
    /// ([`SharePair::verify`]).
    pub fn open(
        &self,
        ctx: &Ctx,
        sender: &Fingerprint,
        receiver: &Fingerprint,
        sealed: &[u8],
    ) -> Result<SharePair> {
        if sealed.len() != SEALED_LEN {
            return Err(Error::SealedLength(sealed.len()));
        }
        let mut buf = Zeroizing::new([0u8; SHARE_PLAIN_LEN]);
        buf.copy_from_slice(&sealed[..SHARE_PLAIN_LEN]);
        let tag = Tag::<Aes256Gcm>::try_from(&sealed[SHARE_PLAIN_LEN..])
            .map_err(|_| Error::SealedLength(sealed.len()))?;
        let aad = share_info(ctx, sender, receiver);
        self.cipher()
            .decrypt_inout_detached(
                &Nonce::<Aes256Gcm>::default(),
                &aad,
                (&mut buf[..]).into(),
                &tag,
            )
            .map_err(|_| Error::SealedTag)?;
        if buf[..32] != sender.as_bytes()[..] || buf[32..64] != receiver.as_bytes()[..] {
            return Err(Error::SealedParties);
        }
        let s = shamir::scalar_from_bytes(&buf[64..96]).ok_or(Error::SealedScalar)?;
        let b = shamir::scalar_from_bytes(&buf[96..128]).ok_or(Error::SealedScalar)?;
        Ok(SharePair { s, b })
    }

    pub(super) fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new(&Key::<Aes256Gcm>::from(self.0))
    }
}
