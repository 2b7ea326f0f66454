//! Shamir t-of-n secret sharing over the P-256 group order, with Feldman commitments.
//!
//! Protocol 2 shares two scalars per node (its pairwise key `s` and its self-mask seed
//! `b`) so that any t holders can rebuild one of them for the researcher after a dropout.
//! This module owns the arithmetic and nothing else:
//!
//! ```text
//! f(X)  = a_0 + a_1·X + … + a_{t-1}·X^{t-1}  over Z_n, n = the P-256 group order,
//!         a_0 = the secret, a_1..a_{t-1} uniform and nonzero
//! share = (x, f(x)) for x = 1..=holders (the protocol's x is 1 + index in the invitees)
//! A_j   = a_j·G, encoded compressed SEC1 (33 bytes); never the identity
//! check = y·G == Σ_j A_j·x^j
//! ```
//!
//! Coefficients and shares are zeroized when dropped, and their `Debug` hides them. The
//! code is small on purpose (Horner evaluation, Lagrange interpolation at 0) so that it
//! can be read against the formulas above and checked against an independent
//! implementation (`tests/kat2.rs`).

use std::fmt;

use p256::elliptic_curve::Generate;
use p256::elliptic_curve::ff::{Field, PrimeField};
use p256::elliptic_curve::rand_core::TryCryptoRng;
use p256::elliptic_curve::sec1::ToSec1Point;
use p256::{NistP256, NonZeroScalar, ProjectivePoint, PublicKey, Scalar};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

/// Bytes of one compressed SEC1 point.
pub const POINT_LEN: usize = 33;
/// Bytes of one scalar (big-endian).
pub const SCALAR_LEN: usize = 32;
/// Most holders (and so most commitments) a dealing may have: protocol 2's invitee cap.
pub const MAX_HOLDERS: usize = 10_000;

/// Why sharing, checking or rebuilding failed.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The threshold is zero, above the number of holders, or the holders exceed the cap.
    #[error("cannot deal {t}-of-{n} shares (need 1 <= t <= n <= {MAX_HOLDERS})")]
    Threshold {
        /// Threshold asked.
        t: usize,
        /// Holders asked.
        n: usize,
    },
    /// A zero secret has an identity commitment, which every decoder refuses.
    #[error("the secret to share is zero")]
    ZeroSecret,
    /// The random source failed.
    #[error("the random number generator failed")]
    Rng,
    /// Interpolation was given no points.
    #[error("no shares to interpolate")]
    NoPoints,
    /// x = 0 is the secret itself, never a share.
    #[error("a share has x-coordinate 0")]
    ZeroX,
    /// Two shares claim the same x-coordinate.
    #[error("two shares have x-coordinate {0}")]
    DuplicateX(u32),
    /// Encoded commitments end early.
    #[error("commitments are truncated")]
    Truncated,
    /// Encoded commitments have bytes after the last point.
    #[error("{0} byte(s) after the commitments")]
    Trailing(usize),
    /// Zero commitments, or more than the cap.
    #[error("{0} commitments (need 1..={MAX_HOLDERS})")]
    Count(usize),
    /// A commitment is not a compressed point on P-256 other than the identity.
    #[error("commitment {0} is not a valid compressed P-256 point")]
    BadPoint(usize),
}

/// One holder's share: `(x, f(x))`. Zeroized on drop; `Debug` shows only `x`.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct Share {
    x: u32,
    y: Scalar,
}

impl Share {
    /// A share from its parts (for instance after decrypting it).
    pub fn new(x: u32, y: Scalar) -> Share {
        Share { x, y }
    }

    /// The holder's x-coordinate.
    pub fn x(&self) -> u32 {
        self.x
    }

    /// The share value f(x). Secret.
    pub fn y(&self) -> &Scalar {
        &self.y
    }
}

impl fmt::Debug for Share {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Share {{ x: {}, y: <secret> }}", self.x)
    }
}

/// Feldman commitments `A_j = a_j·G`, j = 0..t; `A_0` commits to the secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Commitments(Vec<PublicKey>);

impl Commitments {
    /// Commitments from already-decoded points (1..=[`MAX_HOLDERS`] of them).
    pub fn from_points(points: Vec<PublicKey>) -> Result<Commitments, Error> {
        if points.is_empty() || points.len() > MAX_HOLDERS {
            return Err(Error::Count(points.len()));
        }
        Ok(Commitments(points))
    }

    /// The points, `A_0` first.
    pub fn points(&self) -> &[PublicKey] {
        &self.0
    }

    /// The threshold t these commitments were dealt for.
    pub fn threshold(&self) -> usize {
        self.0.len()
    }

    /// `A_0 = secret·G`.
    pub fn constant(&self) -> &PublicKey {
        // invariant: construction refuses an empty vector.
        &self.0[0]
    }

    /// Whether `y` is f(x) for the committed polynomial: `y·G == Σ A_j·x^j`.
    pub fn verify(&self, x: u32, y: &Scalar) -> bool {
        if x == 0 {
            return false;
        }
        let xs = Scalar::from(x);
        let mut acc = ProjectivePoint::IDENTITY;
        for a in self.0.iter().rev() {
            acc = acc * xs + a.to_projective();
        }
        ProjectivePoint::GENERATOR * y == acc
    }

    /// `u32be(t) ‖ A_0 ‖ … ‖ A_{t-1}`, each point compressed SEC1.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&(self.0.len() as u32).to_be_bytes());
        for p in &self.0 {
            out.extend_from_slice(&point_to_bytes(p));
        }
    }

    /// The encoding as a new vector.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(4 + POINT_LEN * self.0.len());
        self.encode(&mut out);
        out
    }

    /// Decodes commitments from the front of `bytes`; returns them and the rest. The count
    /// is checked against the cap and the bytes present before anything is allocated.
    pub fn decode_prefix(bytes: &[u8]) -> Result<(Commitments, &[u8]), Error> {
        let (count, rest) = bytes.split_first_chunk::<4>().ok_or(Error::Truncated)?;
        let count = u32::from_be_bytes(*count) as usize;
        if count == 0 || count > MAX_HOLDERS {
            return Err(Error::Count(count));
        }
        if rest.len() < count * POINT_LEN {
            return Err(Error::Truncated);
        }
        let (body, rest) = rest.split_at(count * POINT_LEN);
        let points = body
            .chunks_exact(POINT_LEN)
            .enumerate()
            .map(|(i, c)| point_from_bytes(c).ok_or(Error::BadPoint(i)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok((Commitments(points), rest))
    }

    /// Decodes exactly one encoding.
    pub fn decode(bytes: &[u8]) -> Result<Commitments, Error> {
        match Commitments::decode_prefix(bytes)? {
            (c, []) => Ok(c),
            (_, rest) => Err(Error::Trailing(rest.len())),
        }
    }
}

/// Compressed SEC1 encoding of a point (33 bytes, `0x02`/`0x03` ‖ x).
pub fn point_to_bytes(p: &PublicKey) -> [u8; POINT_LEN] {
    let enc = ToSec1Point::<NistP256>::to_sec1_point(p, true);
    let mut out = [0u8; POINT_LEN];
    // invariant: a compressed P-256 point of a non-identity key is always 33 bytes.
    out.copy_from_slice(enc.as_bytes());
    out
}

/// Decodes a point: exactly 33 bytes, compressed, on the curve, not the identity.
pub fn point_from_bytes(bytes: &[u8]) -> Option<PublicKey> {
    if bytes.len() != POINT_LEN || !matches!(bytes[0], 0x02 | 0x03) {
        return None;
    }
    PublicKey::from_sec1_bytes(bytes).ok()
}

/// Decodes a scalar: 32 bytes big-endian, strictly below the group order.
pub fn scalar_from_bytes(bytes: &[u8]) -> Option<Scalar> {
    let arr: [u8; SCALAR_LEN] = bytes.try_into().ok()?;
    Scalar::from_repr(arr.into()).into_option()
}

/// A scalar as 32 big-endian bytes (zeroize the result if the scalar is secret).
pub fn scalar_to_bytes(s: &Scalar) -> [u8; SCALAR_LEN] {
    s.to_bytes().into()
}

/// Splits `secret` into shares for x = 1..=n, any `t` of which rebuild it, and commits
/// to the polynomial. Coefficients a_1..a_{t-1} are drawn uniform and nonzero from `rng`
/// (so no commitment is the identity) and zeroized before returning.
pub fn deal<R: TryCryptoRng + ?Sized>(
    secret: &Scalar,
    t: usize,
    n: usize,
    rng: &mut R,
) -> Result<(Vec<Share>, Commitments), Error> {
    if t == 0 || t > n || n > MAX_HOLDERS {
        return Err(Error::Threshold { t, n });
    }
    if bool::from(secret.is_zero()) {
        return Err(Error::ZeroSecret);
    }
    let mut coeffs: Zeroizing<Vec<Scalar>> = Zeroizing::new(Vec::with_capacity(t));
    coeffs.push(*secret);
    for _ in 1..t {
        let a = NonZeroScalar::try_generate_from_rng(rng).map_err(|_| Error::Rng)?;
        coeffs.push(*a.as_ref());
    }
    let commitments = coeffs
        .iter()
        .map(|a| {
            // invariant: every coefficient is nonzero, so a·G is not the identity.
            PublicKey::from_affine((ProjectivePoint::GENERATOR * a).to_affine())
                .map_err(|_| Error::ZeroSecret)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let shares = (1..=n as u32)
        .map(|x| Share {
            x,
            y: evaluate(&coeffs, x),
        })
        .collect();
    Ok((shares, Commitments(commitments)))
}

/// f(x) by Horner's rule.
fn evaluate(coeffs: &[Scalar], x: u32) -> Scalar {
    let xs = Scalar::from(x);
    coeffs
        .iter()
        .rev()
        .fold(Scalar::ZERO, |acc, a| acc * xs + a)
}

/// f(0) from exactly the points given (Lagrange at 0). The x-coordinates must be nonzero
/// and distinct; with fewer than t points the result is some unrelated scalar, so callers
/// check it (against `A_0`, or `s·G = S`).
pub fn interpolate(points: &[(u32, Scalar)]) -> Result<Scalar, Error> {
    if points.is_empty() {
        return Err(Error::NoPoints);
    }
    let mut xs: Vec<u32> = points.iter().map(|(x, _)| *x).collect();
    xs.sort_unstable();
    if xs[0] == 0 {
        return Err(Error::ZeroX);
    }
    if let Some(w) = xs.windows(2).find(|w| w[0] == w[1]) {
        return Err(Error::DuplicateX(w[0]));
    }
    let mut secret = Scalar::ZERO;
    for (i, (xi, yi)) in points.iter().enumerate() {
        let xi = Scalar::from(*xi);
        let mut num = Scalar::ONE;
        let mut den = Scalar::ONE;
        for (j, (xj, _)) in points.iter().enumerate() {
            if i != j {
                let xj = Scalar::from(*xj);
                num *= xj;
                den *= xj - xi;
            }
        }
        // invariant: the x are distinct and below the order, so den is nonzero.
        let inv = Option::<Scalar>::from(den.invert()).unwrap_or(Scalar::ZERO);
        secret += *yi * num * inv;
    }
    Ok(secret)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secagg::test_rng::TestRng;
    use proptest::prelude::*;

    fn secret(seed: u64) -> Scalar {
        *NonZeroScalar::generate_from_rng(&mut TestRng::new(seed ^ 0xdead)).as_ref()
    }

    fn points(shares: &[Share], pick: &[usize]) -> Vec<(u32, Scalar)> {
        pick.iter().map(|&i| (shares[i].x, shares[i].y)).collect()
    }

    /// Picks `k` distinct indices below `n` from `seed`.
    fn subset(n: usize, k: usize, seed: u64) -> Vec<usize> {
        let mut idx: Vec<usize> = (0..n).collect();
        let mut s = seed;
        for i in (1..n).rev() {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            idx.swap(i, (s >> 33) as usize % (i + 1));
        }
        idx.truncate(k);
        idx
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]

        #[test]
        fn any_t_of_n_rebuild(n in 1usize..12, tf in 0.0f64..1.0, seed: u64) {
            let t = 1 + ((n - 1) as f64 * tf) as usize;
            let s = secret(seed);
            let (shares, com) = deal(&s, t, n, &mut TestRng::new(seed)).expect("deal");
            prop_assert_eq!(shares.len(), n);
            prop_assert_eq!(com.threshold(), t);
            prop_assert_eq!(com.constant().to_projective(), ProjectivePoint::GENERATOR * s);
            for k in t..=n {
                let pick = subset(n, k, seed.wrapping_add(k as u64));
                prop_assert_eq!(interpolate(&points(&shares, &pick)).expect("interp"), s);
            }
            for sh in &shares {
                prop_assert!(com.verify(sh.x(), sh.y()));
                prop_assert!(!com.verify(sh.x(), &(*sh.y() + Scalar::ONE)));
                prop_assert!(!com.verify(sh.x() % n as u32 + 1, sh.y()) || n == 1 || t == 1);
            }
            prop_assert!(!com.verify(0, &s));
            prop_assert_eq!(Commitments::decode(&com.to_bytes()).expect("decode"), com);
        }

        /// t-1 shares say nothing: they are consistent with any secret (a forged t-th
        /// point makes interpolation land elsewhere), and the forged point fails the
        /// commitments, which is what stops a cheating holder.
        #[test]
        fn below_threshold_is_consistent_with_any_secret(n in 2usize..10, seed: u64, forged: u64) {
            let t = n / 2 + 1;
            let s = secret(seed);
            let (shares, com) = deal(&s, t, n, &mut TestRng::new(seed)).expect("deal");
            let pick = subset(n, t, seed);
            let mut pts = points(&shares, &pick);
            let last = pts.len() - 1;
            let fake = Scalar::from(forged) + Scalar::ONE + pts[last].1;
            pts[last].1 = fake;
            let wrong = interpolate(&pts).expect("interp");
            prop_assert_ne!(wrong, s);
            prop_assert!(!com.verify(pts[last].0, &fake));
            // Any target secret is reachable from the t-1 honest points: solve for the
            // t-th value that makes it so, by linearity of interpolation.
            let target = secret(forged);
            let mut zero_last = pts.clone();
            zero_last[last].1 = Scalar::ZERO;
            let base = interpolate(&zero_last).expect("interp");
            let mut unit = vec![(0u32, Scalar::ZERO); pts.len()];
            for (u, p) in unit.iter_mut().zip(&pts) { u.0 = p.0; }
            unit[last].1 = Scalar::ONE;
            let coeff = interpolate(&unit).expect("interp");
            let inv = Option::<Scalar>::from(coeff.invert()).expect("nonzero lagrange coefficient");
            zero_last[last].1 = (target - base) * inv;
            prop_assert_eq!(interpolate(&zero_last).expect("interp"), target);
        }

        /// Independent check: interpolate a polynomial evaluated naively (powers, no Horner).
        #[test]
        fn interpolation_matches_naive_evaluation(coeffs in proptest::collection::vec(any::<u64>(), 1..8), xs_seed: u64) {
            let cs: Vec<Scalar> = coeffs.iter().map(|c| Scalar::from(*c)).collect();
            let t = cs.len();
            let xs: Vec<u32> = subset(40, t, xs_seed).into_iter().map(|i| i as u32 + 1).collect();
            let pts: Vec<(u32, Scalar)> = xs.iter().map(|&x| {
                let mut y = Scalar::ZERO;
                for (j, c) in cs.iter().enumerate() {
                    let mut p = Scalar::ONE;
                    for _ in 0..j { p *= Scalar::from(x); }
                    y += *c * p;
                }
                (x, y)
            }).collect();
            prop_assert_eq!(interpolate(&pts).expect("interp"), cs[0]);
            prop_assert_eq!(evaluate(&cs, xs[0]), pts[0].1);
        }
    }

    #[test]
    fn refusals() {
        let s = secret(1);
        let rng = &mut TestRng::new(1);
        assert_eq!(
            deal(&s, 0, 3, rng).err(),
            Some(Error::Threshold { t: 0, n: 3 })
        );
        assert_eq!(
            deal(&s, 4, 3, rng).err(),
            Some(Error::Threshold { t: 4, n: 3 })
        );
        assert_eq!(
            deal(&s, 2, MAX_HOLDERS + 1, rng).err(),
            Some(Error::Threshold {
                t: 2,
                n: MAX_HOLDERS + 1
            })
        );
        assert_eq!(
            deal(&Scalar::ZERO, 2, 3, rng).err(),
            Some(Error::ZeroSecret)
        );
        assert_eq!(interpolate(&[]), Err(Error::NoPoints));
        assert_eq!(interpolate(&[(0, s)]), Err(Error::ZeroX));
        assert_eq!(interpolate(&[(2, s), (2, s)]), Err(Error::DuplicateX(2)));
    }

    #[test]
    fn commitment_decoding_is_strict() {
        let (_, com) = deal(&secret(2), 3, 5, &mut TestRng::new(2)).expect("deal");
        let bytes = com.to_bytes();
        assert_eq!(bytes.len(), 4 + 3 * POINT_LEN);
        assert_eq!(
            Commitments::decode(&bytes[..bytes.len() - 1]),
            Err(Error::Truncated)
        );
        assert_eq!(Commitments::decode(&bytes[..3]), Err(Error::Truncated));
        let mut long = bytes.clone();
        long.push(0);
        assert_eq!(Commitments::decode(&long), Err(Error::Trailing(1)));
        assert_eq!(Commitments::decode(&[0, 0, 0, 0]), Err(Error::Count(0)));
        // A huge count is refused before allocating.
        assert_eq!(
            Commitments::decode(&[0xff, 0xff, 0xff, 0xff]),
            Err(Error::Count(u32::MAX as usize))
        );
        assert_eq!(
            Commitments::decode(&[0, 0, 0x27, 0x10]),
            Err(Error::Truncated)
        );
        // Identity (a single zero byte is SEC1's identity; padded it is no valid point),
        // uncompressed tags, and an x with no point on the curve are all refused.
        for bad_tag in [0x00u8, 0x04, 0x05] {
            let mut b = bytes.clone();
            b[4 + POINT_LEN] = bad_tag;
            assert_eq!(Commitments::decode(&b), Err(Error::BadPoint(1)));
        }
        let mut off = bytes.clone();
        // x = p (the field prime) is not a field element.
        let p = hex32("ffffffff00000001000000000000000000000000ffffffffffffffffffffffff");
        off[5..5 + 32].copy_from_slice(&p);
        assert_eq!(Commitments::decode(&off), Err(Error::BadPoint(0)));
        // Some x has no y: find one deterministically.
        let mut x = [0u8; 32];
        let not_on_curve = (0u8..=255)
            .find(|i| {
                x[31] = *i;
                let mut enc = vec![0x02];
                enc.extend_from_slice(&x);
                point_from_bytes(&enc).is_none()
            })
            .expect("some x in 0..256 is not on the curve");
        x[31] = not_on_curve;
        let mut b = bytes.clone();
        b[5 + 2 * POINT_LEN..5 + 2 * POINT_LEN + 32].copy_from_slice(&x);
        assert_eq!(Commitments::decode(&b), Err(Error::BadPoint(2)));
    }

    #[test]
    fn scalars_are_canonical() {
        let n = hex32("ffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551");
        assert!(scalar_from_bytes(&n).is_none());
        let mut n_minus_1 = n;
        n_minus_1[31] -= 1;
        assert_eq!(scalar_from_bytes(&n_minus_1), Some(-Scalar::ONE));
        assert!(scalar_from_bytes(&[0u8; 31]).is_none());
    }

    #[test]
    fn debug_hides_secrets() {
        let (shares, _) = deal(&secret(3), 2, 2, &mut TestRng::new(3)).expect("deal");
        assert_eq!(format!("{:?}", shares[1]), "Share { x: 2, y: <secret> }");
    }

    fn hex32(s: &str) -> [u8; 32] {
        let mut out = [0u8; 32];
        for (i, o) in out.iter_mut().enumerate() {
            *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).expect("hex");
        }
        out
    }
}
