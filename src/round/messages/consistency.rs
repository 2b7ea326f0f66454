//! Survivors (R → N), ConsistencySig (N → R) and SignatureList (R → N).

use p256::ecdsa::Signature;

use crate::party::Fingerprint;
use crate::round::schedule::{FP_LEN, MAX_INVITEES, SIG_LEN, sig_to_bytes};

use super::Result;
use super::reader::{Reader, check_list_len, check_order, put_set_checked, put_u32_len};

/// R → N: U2 and U3, for the consistency check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Survivors {
    /// Nodes whose shares were forwarded.
    pub u2: Vec<Fingerprint>,
    /// Nodes whose whole input arrived.
    pub u3: Vec<Fingerprint>,
}

pub(super) const SURVIVORS: &str = "survivors";

impl Survivors {
    /// `set(U2) ‖ set(U3)`.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<()> {
        put_set_checked(out, SURVIVORS, "U2", &self.u2)?;
        put_set_checked(out, SURVIVORS, "U3", &self.u3)
    }

    /// The inverse of [`Survivors::encode`].
    pub fn decode(payload: &[u8]) -> Result<Survivors> {
        let mut r = Reader::new(SURVIVORS, payload);
        let u2 = r.set("U2", 0)?;
        let u3 = r.set("U3", 0)?;
        r.finish()?;
        Ok(Survivors { u2, u3 })
    }
}

/// N → R: this node's signature of the consistency message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsistencySig {
    /// Over [`schedule::ConsistencyMessage`].
    pub sig: Signature,
}

pub(super) const CONSISTENCY_SIG: &str = "consistency signature";

impl ConsistencySig {
    /// `sig(64)`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&sig_to_bytes(&self.sig));
    }

    /// The inverse of [`ConsistencySig::encode`].
    pub fn decode(payload: &[u8]) -> Result<ConsistencySig> {
        let mut r = Reader::new(CONSISTENCY_SIG, payload);
        let sig = r.sig("signature")?;
        r.finish()?;
        Ok(ConsistencySig { sig })
    }
}

/// R → N: the consistency signatures the researcher collected, by signer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignatureList {
    /// Strictly increasing by signer.
    pub sigs: Vec<(Fingerprint, Signature)>,
}

pub(super) const SIGNATURE_LIST: &str = "signature list";

impl SignatureList {
    /// `u32be(count) ‖ (fp ‖ sig(64))…`.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<()> {
        check_list_len(SIGNATURE_LIST, "signatures", self.sigs.len())?;
        let fps: Vec<Fingerprint> = self.sigs.iter().map(|(fp, _)| *fp).collect();
        check_order(SIGNATURE_LIST, "signatures", &fps)?;
        put_u32_len(out, self.sigs.len());
        for (fp, sig) in &self.sigs {
            out.extend_from_slice(fp.as_bytes());
            out.extend_from_slice(&sig_to_bytes(sig));
        }
        Ok(())
    }

    /// The inverse of [`SignatureList::encode`].
    pub fn decode(payload: &[u8]) -> Result<SignatureList> {
        let mut r = Reader::new(SIGNATURE_LIST, payload);
        let n = r.count("signatures", 0, MAX_INVITEES, FP_LEN + SIG_LEN)?;
        let sigs = (0..n)
            .map(|_| Ok((r.fp("signer")?, r.sig("signature")?)))
            .collect::<Result<Vec<_>>>()?;
        let fps: Vec<Fingerprint> = sigs.iter().map(|(fp, _)| *fp).collect();
        r.ordered("signatures", &fps)?;
        r.finish()?;
        Ok(SignatureList { sigs })
    }
}
