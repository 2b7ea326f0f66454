//! Advertise (N → R) and AdvertList (R → N).

use p256::ecdsa::Signature;

use crate::party::Fingerprint;
use crate::round::schedule::{Advert, FP_LEN, MAX_INVITEES, SIG_LEN, sig_to_bytes};
use crate::secagg::shamir::POINT_LEN;

use super::Result;
use super::reader::{Reader, check_list_len, check_order, put_u32_len};

/// N → R: this node's advert and its signature.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Advertise {
    /// Keys and commitments.
    pub advert: Advert,
    /// σ_u over [`Advert::signed_message`].
    pub sig: Signature,
}

pub(super) const ADVERTISE: &str = "advertise";
/// Smallest advert plus signature: fp, three points, two commitment vectors of one point.
const MIN_SIGNED_ADVERT: usize = FP_LEN + 3 * POINT_LEN + 2 * (4 + POINT_LEN) + SIG_LEN;

impl Advertise {
    /// `advert ‖ sig(64)`, advert = `fp ‖ C ‖ S ‖ B ‖ com(s) ‖ com(b)`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        self.advert.encode(out);
        out.extend_from_slice(&sig_to_bytes(&self.sig));
    }

    fn read(r: &mut Reader<'_>) -> Result<Advertise> {
        let advert = r.advert()?;
        let sig = r.sig("signature")?;
        Ok(Advertise { advert, sig })
    }

    /// The inverse of [`Advertise::encode`].
    pub fn decode(payload: &[u8]) -> Result<Advertise> {
        let mut r = Reader::new(ADVERTISE, payload);
        let m = Advertise::read(&mut r)?;
        r.finish()?;
        Ok(m)
    }
}

/// R → N: U1, every valid advert the researcher received, by fingerprint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdvertList {
    /// Strictly increasing by `advert.fp`.
    pub adverts: Vec<Advertise>,
}

pub(super) const ADVERT_LIST: &str = "advert list";

impl AdvertList {
    /// `u32be(count) ‖ (advert ‖ sig)…`; refuses an unsorted or duplicated list.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<()> {
        check_list_len(ADVERT_LIST, "adverts", self.adverts.len())?;
        let fps: Vec<Fingerprint> = self.adverts.iter().map(|a| a.advert.fp).collect();
        check_order(ADVERT_LIST, "adverts", &fps)?;
        put_u32_len(out, self.adverts.len());
        self.adverts.iter().for_each(|a| a.encode(out));
        Ok(())
    }

    /// The inverse of [`AdvertList::encode`].
    pub fn decode(payload: &[u8]) -> Result<AdvertList> {
        let mut r = Reader::new(ADVERT_LIST, payload);
        let n = r.count("adverts", 0, MAX_INVITEES, MIN_SIGNED_ADVERT)?;
        let adverts = (0..n)
            .map(|_| Advertise::read(&mut r))
            .collect::<Result<Vec<_>>>()?;
        let fps: Vec<Fingerprint> = adverts.iter().map(|a| a.advert.fp).collect();
        r.ordered("adverts", &fps)?;
        r.finish()?;
        Ok(AdvertList { adverts })
    }
}
