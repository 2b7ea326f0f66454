//! Primitive encodings: strings, sets, signatures, points, and the HKDF and ECDH steps
//! every key derivation shares.

use hkdf::Hkdf;
use p256::ecdsa::Signature;
use p256::{NonZeroScalar, PublicKey};
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::party::Fingerprint;
use crate::secagg::shamir::point_to_bytes;

use super::{Error, FP_LEN, Result, SIG_LEN};

/// Appends `str(s) = u32be(len) ‖ utf8`.
pub fn put_str(out: &mut Vec<u8>, s: &str) {
    put_bytes(out, s.as_bytes());
}

/// Appends `bytes(b) = u32be(len) ‖ b`.
pub fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_be_bytes());
    out.extend_from_slice(b);
}

/// A fingerprint from its raw 32 bytes. `certificate` has no byte constructor yet, so
/// this goes through its hex parser.
pub fn fp_from_bytes(bytes: &[u8; FP_LEN]) -> Fingerprint {
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    match hex.parse() {
        Ok(fp) => fp,
        // invariant: 64 hex digits always parse as a fingerprint.
        Err(_) => unreachable!("64 hex digits parse as a fingerprint"),
    }
}

/// Whether fingerprints are strictly increasing by raw bytes (sorted, no duplicate).
pub fn is_set(fps: &[Fingerprint]) -> bool {
    fps.windows(2).all(|w| w[0] < w[1])
}

/// Appends `set(F) = u32be(count) ‖ fp…`; refuses an unsorted or duplicated input.
pub fn put_set(out: &mut Vec<u8>, what: &'static str, fps: &[Fingerprint]) -> Result<()> {
    if !is_set(fps) {
        return Err(Error::Unsorted(what));
    }
    out.extend_from_slice(&(fps.len() as u32).to_be_bytes());
    for fp in fps {
        out.extend_from_slice(fp.as_bytes());
    }
    Ok(())
}

/// Whether every element of the set `a` is in the set `b` (both strictly increasing).
pub fn is_subset(a: &[Fingerprint], b: &[Fingerprint]) -> bool {
    a.iter().all(|x| b.binary_search(x).is_ok())
}

/// A signature as 64 bytes `r ‖ s`.
pub fn sig_to_bytes(sig: &Signature) -> [u8; SIG_LEN] {
    sig.to_bytes().into()
}

/// A signature from 64 bytes `r ‖ s` (r and s in 1..n).
pub fn sig_from_bytes(bytes: &[u8]) -> Option<Signature> {
    if bytes.len() != SIG_LEN {
        return None;
    }
    Signature::from_slice(bytes).ok()
}

/// Whether two points share an x-coordinate (equal, or negatives of each other).
pub fn same_x(a: &PublicKey, b: &PublicKey) -> bool {
    point_to_bytes(a)[1..] == point_to_bytes(b)[1..]
}

/// The first two indices whose points share an x-coordinate, if any. A node runs this over
/// every C and S key of U1 together: equal or opposite keys let a party steer another's
/// shared secrets.
pub fn find_same_x(points: &[PublicKey]) -> Option<(usize, usize)> {
    let mut xs: Vec<([u8; 32], usize)> = points
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let mut x = [0u8; 32];
            x.copy_from_slice(&point_to_bytes(p)[1..]);
            (x, i)
        })
        .collect();
    xs.sort_unstable();
    xs.windows(2)
        .find(|w| w[0].0 == w[1].0)
        .map(|w| (w[0].1.min(w[1].1), w[0].1.max(w[1].1)))
}

pub(super) fn hkdf(salt: Option<&[u8]>, ikm: &[u8], info: &[u8], out: &mut [u8]) {
    let hk = Hkdf::<Sha256>::new(salt, ikm);
    // invariant: outputs are 16 or 32 bytes, far below HKDF-SHA256's 255·32 limit.
    if hk.expand(info, out).is_err() {
        unreachable!("HKDF output length is fixed and valid");
    }
}

pub(super) fn ecdh_x(own: &NonZeroScalar, peer: &PublicKey) -> Zeroizing<[u8; 32]> {
    let shared = p256::ecdh::diffie_hellman(own, peer.as_affine());
    let mut x = Zeroizing::new([0u8; 32]);
    x.copy_from_slice(shared.raw_secret_bytes().as_slice());
    x
}
