//! Phase 2: U1, checked whole; then our shares, sealed once per peer.

use std::collections::BTreeMap;

use p256::PublicKey;

use crate::party::Fingerprint;
use crate::round::messages::{Advertise, Message2, SealedShare, ShareBundle};
use crate::round::schedule::{ShareKey, SharePair, find_same_x, verify_advert};

use super::{Action, Error, Keyed, Node, Phase, Shared, State, Step};

impl<'k> Node<'k> {
    // Phase 2: U1, checked whole; then our shares, sealed once per peer.
    pub(super) fn on_adverts(
        &mut self,
        k: Keyed,
        adverts: Vec<Advertise>,
        actions: &mut Vec<Action>,
    ) -> Step<State> {
        let phase = Phase::Advertise;
        let t = k.ctx.threshold();
        let mut u1 = BTreeMap::new();
        for Advertise { advert, sig } in adverts {
            let fp = advert.fp;
            let Some(peer) = self.setup.peers.get(&fp) else {
                return Err(Self::researcher_fault(
                    phase,
                    format!("forwarded an advert of a party not registered here ({fp})"),
                ));
            };
            if k.ctx.x_of(&fp).is_none() {
                return Err(Self::researcher_fault(
                    phase,
                    format!("forwarded an advert of '{}', who was not invited", peer.id),
                ));
            }
            // Our own entry first: if the researcher altered it, the signature check
            // below would fail too, and blame this node for the researcher's change.
            let valid = verify_advert(&peer.key, &k.ctx, &advert, &sig).is_ok();
            if fp == self.setup.me && (advert != k.advert || !valid) {
                return Err(Self::researcher_fault(
                    phase,
                    "altered this node's own advert",
                ));
            }
            if !valid {
                return Err(Error::Misbehaviour {
                    culprit: self.peer_name(&fp),
                    phase,
                    what: "its advertised keys are not signed by its registered certificate".into(),
                });
            }
            if u1.insert(fp, advert).is_some() {
                return Err(Self::researcher_fault(phase, "forwarded an advert twice"));
            }
        }
        if !u1.contains_key(&self.setup.me) {
            return Err(Self::researcher_fault(
                phase,
                "left this node's advert out of U1",
            ));
        }
        if u1.len() < t {
            return Err(Error::BelowThreshold {
                phase,
                have: u1.len(),
                need: t,
            });
        }
        // No two C or S keys may share an x-coordinate (that covers P and -P): a node
        // mirroring another's mask key under its own certificate would make their masks
        // cancel or coincide.
        let (fps, keys): (Vec<Fingerprint>, Vec<PublicKey>) = u1
            .values()
            .flat_map(|a| [(a.fp, a.c_pub), (a.fp, a.s_pub)])
            .unzip();
        if let Some((i, j)) = find_same_x(&keys) {
            let culprit = if fps[i] == self.setup.me {
                self.peer_name(&fps[j])
            } else {
                self.peer_name(&fps[i])
            };
            return Err(Error::Misbehaviour {
                culprit,
                phase,
                what: format!(
                    "advertised a key with the same x-coordinate as {}'s (one of the two copied the other's key; a third party cannot tell which)",
                    self.label(if fps[i] == self.setup.me {
                        &fps[i]
                    } else {
                        &fps[j]
                    })
                ),
            });
        }
        let me = self.setup.me;
        let mut shares = Vec::with_capacity(u1.len().saturating_sub(1));
        for (fp, advert) in u1.iter().filter(|(fp, _)| **fp != me) {
            let x = k.ctx.x_of(fp).ok_or_else(|| Error::Internal {
                phase,
                what: "an U1 member has no x-coordinate".into(),
            })?;
            let (s_share, b_share) = k.secrets.shares_for(x).ok_or_else(|| Error::Internal {
                phase,
                what: format!("no share dealt for x = {x}"),
            })?;
            let pair = SharePair {
                s: *s_share.y(),
                b: *b_share.y(),
            };
            let key = ShareKey::derive(k.secrets.c(), &advert.c_pub, &k.ctx, &me, fp);
            let sealed = key
                .seal(&k.ctx, &me, fp, &pair)
                .map_err(|e| Error::Internal {
                    phase,
                    what: e.to_string(),
                })?;
            shares.push(SealedShare { peer: *fp, sealed });
        }
        actions.push(Action::Progress(format!(
            "advertise: {} of {} nodes advertised keys ({})",
            u1.len(),
            k.ctx.invitees().len(),
            self.names(&u1.keys().copied().collect::<Vec<_>>())
        )));
        actions.push(Action::Send(Message2::ShareBundle(ShareBundle { shares })));
        Ok(State::AwaitShares(Box::new(Shared { keyed: k, u1 })))
    }
}
