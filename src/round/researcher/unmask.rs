//! Phases 4 and 5, consistency and unmask: closing U4, checking revealed shares, and
//! rebuilding the masks to correct.

use std::collections::BTreeMap;

use p256::ecdsa::Signature;
use p256::{NonZeroScalar, ProjectivePoint, Scalar};
use zeroize::{Zeroize, Zeroizing};

use crate::party::Fingerprint;
use crate::round::messages::{
    Advertise, Message2, ResultHeader, RevealedShare, ShareKind, SignatureList, Unmask,
};
use crate::round::schedule::{Advert, Ctx, pairwise_mask, self_mask_key};
use crate::secagg::keys::Sign;
use crate::secagg::prg::PeerMask;
use crate::secagg::shamir;

use super::{Action, Error, Fault, Outcome, Phase, Researcher, Stage, Step, Summary};

/// Interpolation points; the values are zeroized on drop.
struct Points(Vec<(u32, Scalar)>);

impl Drop for Points {
    fn drop(&mut self) {
        self.0.iter_mut().for_each(|(_, y)| y.zeroize());
    }
}

impl Researcher {
    pub(super) fn close_signatures(
        &mut self,
        sigs: BTreeMap<Fingerprint, Signature>,
        out: &mut Vec<Action>,
    ) -> Step {
        self.progress(Phase::Consistency, "U4", sigs.len(), self.u3.len(), out);
        let list = SignatureList {
            sigs: sigs.iter().map(|(fp, s)| (*fp, *s)).collect(),
        };
        for fp in sigs.keys() {
            out.push(Action::Send {
                to: *fp,
                msg: Message2::SignatureList(list.clone()),
            });
        }
        self.u4 = sigs.keys().copied().collect();
        self.members = sigs.keys().copied().collect();
        self.stage = Stage::Unmask {
            reveals: BTreeMap::new(),
        };
        Ok(())
    }

    pub(super) fn close_unmask(
        &mut self,
        reveals: BTreeMap<Fingerprint, Vec<RevealedShare>>,
        out: &mut Vec<Action>,
    ) -> Step {
        self.progress(Phase::Unmask, "U5", reveals.len(), self.u4.len(), out);
        let mut corrections =
            Vec::with_capacity(self.u3.len() * (1 + self.u2.len() - self.u3.len()));
        for v in &self.u3 {
            let b = self.rebuild(&reveals, *v, ShareKind::B)?;
            corrections.push(PeerMask {
                key: self_mask_key(&b, &self.ctx, v),
                sign: Sign::Sub,
            });
        }
        let dropped: Vec<Fingerprint> = self
            .u2
            .iter()
            .filter(|u| self.u3.binary_search(u).is_err())
            .copied()
            .collect();
        for u in &dropped {
            let s = self.rebuild(&reveals, *u, ShareKind::S)?;
            let s = Zeroizing::new(
                Option::<NonZeroScalar>::from(NonZeroScalar::new(*s)).ok_or_else(|| {
                    Error::WrongSecret {
                        party: self.culprit(*u),
                        kind: ShareKind::S,
                    }
                })?,
            );
            let s_u = self.advert(u)?.s_pub;
            for v in &self.u3 {
                let s_v = self.advert(v)?.s_pub;
                // u's own side of the pair: adding it cancels v's term δ(v,u)·PRG(k_vu).
                corrections.push(pairwise_mask(&s, u, &s_u, v, &s_v, &self.ctx));
            }
        }
        self.u5 = reveals.keys().copied().collect();
        self.members = reveals.keys().copied().collect();
        self.stage = Stage::Decode;
        out.push(Action::Unmask { corrections });
        Ok(())
    }

    pub(super) fn advert(&self, fp: &Fingerprint) -> Result<&Advert, Error> {
        self.u1
            .get(fp)
            .map(|a| &a.advert)
            .ok_or_else(|| Error::Internal("a member of U2 has no advert".into()))
    }

    /// The secret of `dealer` of this kind, from the first t good shares; checked against
    /// the advertised public key.
    pub(super) fn rebuild(
        &self,
        reveals: &BTreeMap<Fingerprint, Vec<RevealedShare>>,
        dealer: Fingerprint,
        kind: ShareKind,
    ) -> Result<Zeroizing<Scalar>, Error> {
        let mut points = Points(Vec::with_capacity(self.t));
        for (revealer, shares) in reveals {
            if let Some(s) = shares.iter().find(|s| s.peer == dealer && s.kind == kind) {
                let x = self
                    .ctx
                    .x_of(revealer)
                    .ok_or_else(|| Error::Internal("a revealer is not an invitee".into()))?;
                points.0.push((x, s.value));
            }
        }
        if points.0.len() < self.t {
            return Err(Error::TooFewShares {
                party: self.culprit(dealer),
                kind,
                have: points.0.len(),
                need: self.t,
            });
        }
        points.0.truncate(self.t);
        let secret = Zeroizing::new(
            shamir::interpolate(&points.0).map_err(|e| Error::Internal(e.to_string()))?,
        );
        let advert = self.advert(&dealer)?;
        let public = match kind {
            ShareKind::B => advert.b_pub,
            ShareKind::S => advert.s_pub,
        };
        if ProjectivePoint::GENERATOR * *secret != public.to_projective() {
            return Err(Error::WrongSecret {
                party: self.culprit(dealer),
                kind,
            });
        }
        Ok(secret)
    }

    pub(super) fn on_unmasked(
        &mut self,
        result: Result<Summary, String>,
        out: &mut Vec<Action>,
    ) -> Step {
        if !matches!(self.stage, Stage::Decode) {
            // The driver only reports after an Unmask action; anything else is our bug.
            return Err(Error::Internal(format!(
                "an unmasking result in the {} phase",
                self.phase()
            )));
        }
        let summary = result.map_err(Error::Unmasked)?;
        let n3 = self.u3.len() as u64;
        let min = n3;
        let max = n3.saturating_mul(self.plan.params.max_weight);
        let w = summary.total_weight;
        if w < min || w > max {
            return Err(Error::SumOutOfRange {
                total_weight: w,
                min,
                max,
            });
        }
        let header = ResultHeader {
            total_weight: w,
            survivors: self.u3.len() as u32,
            bytes: self.mean_bytes,
        };
        out.push(Action::SendResult {
            to: self.members.iter().copied().collect(),
            header,
        });
        out.push(Action::Progress(format!(
            "result: total weight {w} over {} node(s), sent to {} node(s)",
            self.u3.len(),
            self.members.len()
        )));
        self.stage = Stage::Done;
        out.push(Action::Finish(Outcome {
            round: self.ctx.params().round,
            u1: self.u1.keys().copied().collect(),
            u2: self.u2.clone(),
            u3: self.u3.clone(),
            u4: self.u4.clone(),
            u5: self.u5.clone(),
            dropouts: std::mem::take(&mut self.dropouts),
            misbehaviours: std::mem::take(&mut self.misbehaviours),
            total_weight: w,
        }));
        Ok(())
    }
}

/// Phase 5, structure: every peer in U2, kind B for U3 and S for U2 \ U3, one per peer.
pub(super) fn check_unmask(u2: &[Fingerprint], u3: &[Fingerprint], u: &Unmask) -> Option<Fault> {
    let mut seen: BTreeMap<Fingerprint, ShareKind> = BTreeMap::new();
    for s in &u.shares {
        if let Some(k) = seen.insert(s.peer, s.kind) {
            return Some(if k == s.kind {
                Fault::Duplicate("share for one peer")
            } else {
                Fault::BothKinds(s.peer)
            });
        }
    }
    for s in &u.shares {
        if u2.binary_search(&s.peer).is_err() {
            return Some(Fault::ShareOfOutsider(s.peer));
        }
        let want = if u3.binary_search(&s.peer).is_ok() {
            ShareKind::B
        } else {
            ShareKind::S
        };
        if s.kind != want {
            return Some(Fault::WrongKind {
                peer: s.peer,
                kind: s.kind,
            });
        }
    }
    None
}

/// Phase 5, values: each share against its dealer's commitments at the revealer's x.
pub(super) fn verify_reveals(
    ctx: &Ctx,
    u1: &BTreeMap<Fingerprint, Advertise>,
    revealer: Fingerprint,
    u: Unmask,
) -> (Vec<RevealedShare>, Vec<Fault>) {
    let x = ctx.x_of(&revealer);
    let mut good = Vec::with_capacity(u.shares.len());
    let mut bad = Vec::new();
    for s in u.shares {
        let ok = match (x, u1.get(&s.peer)) {
            (Some(x), Some(dealer)) => {
                let com = match s.kind {
                    ShareKind::B => &dealer.advert.b_commitments,
                    ShareKind::S => &dealer.advert.s_commitments,
                };
                com.verify(x, &s.value)
            }
            _ => false,
        };
        if ok {
            good.push(s);
        } else {
            bad.push(Fault::BadShare {
                peer: s.peer,
                kind: s.kind,
            });
        }
    }
    (good, bad)
}
