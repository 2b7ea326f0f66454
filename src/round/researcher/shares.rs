//! Phase 2, share keys: checking share bundles, forwarding them and closing U2.

use std::collections::{BTreeMap, BTreeSet};

use crate::party::Fingerprint;
use crate::round::messages::{Advertise, ForwardedShares, Message2, SealedShare, ShareBundle};

use super::{Action, Fault, Phase, Researcher, Stage, Step, Stream};

impl Researcher {
    pub(super) fn close_shares(
        &mut self,
        bundles: BTreeMap<Fingerprint, ShareBundle>,
        out: &mut Vec<Action>,
    ) -> Step {
        let u2: Vec<Fingerprint> = bundles.keys().copied().collect();
        self.progress(Phase::ShareKeys, "U2", u2.len(), self.u1.len(), out);
        for u in &u2 {
            let shares: Vec<SealedShare> = bundles
                .iter()
                .filter(|(v, _)| *v != u)
                .filter_map(|(v, b)| {
                    b.shares.iter().find(|s| s.peer == *u).map(|s| SealedShare {
                        peer: *v,
                        sealed: s.sealed,
                    })
                })
                .collect();
            out.push(Action::Send {
                to: *u,
                msg: Message2::ForwardedShares(ForwardedShares {
                    u2: u2.clone(),
                    shares,
                }),
            });
        }
        self.members = u2.iter().copied().collect();
        let streams = u2
            .iter()
            .map(|fp| {
                (
                    *fp,
                    Stream {
                        next: 0,
                        ended: false,
                    },
                )
            })
            .collect();
        self.u2 = u2;
        self.stage = Stage::MaskedInput { streams };
        Ok(())
    }
}

/// Phase 2: exactly one sealed share for every other member of U1.
pub(super) fn check_bundle(
    u1: &BTreeMap<Fingerprint, Advertise>,
    from: Fingerprint,
    b: &ShareBundle,
) -> Option<Fault> {
    let mut seen = BTreeSet::new();
    for s in &b.shares {
        if s.peer == from || !u1.contains_key(&s.peer) || !seen.insert(s.peer) {
            return Some(Fault::ExtraShare(s.peer));
        }
    }
    u1.keys()
        .find(|fp| **fp != from && !seen.contains(*fp))
        .map(|fp| Fault::MissingShare(*fp))
}
