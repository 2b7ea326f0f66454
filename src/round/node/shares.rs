//! Phase 3: U2 and the shares forwarded to us; then the masked input.

use std::collections::BTreeMap;

use crate::party::Fingerprint;
use crate::round::messages::SealedShare;
use crate::round::schedule::{ShareKey, SharePair, is_subset, pairwise_mask, self_mask_key};
use crate::secagg::keys::Sign;
use crate::secagg::prg::PeerMask;

use super::{Action, Error, Masking, Node, Phase, Shared, State, Step};

impl<'k> Node<'k> {
    // Phase 3: U2 and the shares forwarded to us; then the masked input.
    pub(super) fn on_shares(
        &mut self,
        s: Shared,
        u2: Vec<Fingerprint>,
        forwarded: Vec<SealedShare>,
        actions: &mut Vec<Action>,
    ) -> Step<State> {
        let phase = Phase::ShareKeys;
        let me = self.setup.me;
        let ctx = &s.keyed.ctx;
        let t = ctx.threshold();
        if !u2.contains(&me) {
            return Err(Self::researcher_fault(phase, "left this node out of U2"));
        }
        let u1: Vec<Fingerprint> = s.u1.keys().copied().collect();
        if !is_subset(&u2, &u1) {
            return Err(Self::researcher_fault(
                phase,
                "announced a U2 that is not inside U1",
            ));
        }
        // U2(u) = {u} ∪ senders; it must equal the announced U2 exactly.
        let senders: Vec<Fingerprint> = forwarded.iter().map(|f| f.peer).collect();
        let mut mine: Vec<Fingerprint> = senders.clone();
        mine.push(me);
        mine.sort();
        if senders.contains(&me) || mine.windows(2).any(|w| w[0] == w[1]) {
            return Err(Self::researcher_fault(
                phase,
                "forwarded a share from this node to itself, or two from one sender",
            ));
        }
        if mine != u2 {
            return Err(Self::researcher_fault(
                phase,
                format!(
                    "announced U2 = {{{}}} but forwarded shares from {{{}}}",
                    self.names(&u2),
                    self.names(&mine)
                ),
            ));
        }
        if u2.len() < t {
            return Err(Error::BelowThreshold {
                phase,
                have: u2.len(),
                need: t,
            });
        }
        let x_me = ctx.x_of(&me).ok_or_else(|| Error::Internal {
            phase,
            what: "this node has no x-coordinate".into(),
        })?;
        let mut held = BTreeMap::new();
        for f in &forwarded {
            let dealer = s.u1.get(&f.peer).ok_or_else(|| {
                Self::researcher_fault(phase, "forwarded a share from outside U1")
            })?;
            let key = ShareKey::derive(s.keyed.secrets.c(), &dealer.c_pub, ctx, &f.peer, &me);
            let opened = key.open(ctx, &f.peer, &me, &f.sealed);
            let pair = match opened {
                Ok(p) => p,
                Err(e) => {
                    // The researcher relays the ciphertext: a broken seal may be its doing
                    // or the dealer's; we cannot tell, so we name the dealer's share and
                    // say it was relayed.
                    return Err(Error::Misbehaviour {
                        culprit: self.peer_name(&f.peer),
                        phase,
                        what: format!(
                            "its share, as relayed by the researcher, does not open: {e}"
                        ),
                    });
                }
            };
            if let Err(e) = pair.verify(dealer, x_me) {
                return Err(Error::Misbehaviour {
                    culprit: self.peer_name(&f.peer),
                    phase,
                    what: format!("dealt a bad share: {e}"),
                });
            }
            held.insert(f.peer, pair);
        }
        let (own_s, own_b) = s
            .keyed
            .secrets
            .shares_for(x_me)
            .ok_or_else(|| Error::Internal {
                phase,
                what: "no own share".into(),
            })?;
        held.insert(
            me,
            SharePair {
                s: *own_s.y(),
                b: *own_b.y(),
            },
        );
        // Masks: our self mask, and one pairwise mask per peer of U2(u).
        let mut masks = Vec::with_capacity(u2.len());
        masks.push(PeerMask {
            key: self_mask_key(s.keyed.secrets.b(), ctx, &me),
            sign: Sign::Add,
        });
        for v in u2.iter().filter(|v| **v != me) {
            let peer = s.u1.get(v).ok_or_else(|| Error::Internal {
                phase,
                what: "an U2 member has no advert".into(),
            })?;
            masks.push(pairwise_mask(
                s.keyed.secrets.s(),
                &me,
                &s.keyed.advert.s_pub,
                v,
                &peer.s_pub,
                ctx,
            ));
        }
        actions.push(Action::Progress(format!(
            "share-keys: shares from {} nodes; dropped before sharing: {}",
            u2.len(),
            self.names(
                &u1.iter()
                    .filter(|f| !u2.contains(f))
                    .copied()
                    .collect::<Vec<_>>()
            )
        )));
        actions.push(Action::JournalRelease {
            digest: self.setup.input.digest,
            federation: ctx.params().federation.clone(),
            round: ctx.params().round,
        });
        actions.push(Action::StreamMasked {
            plan: s.keyed.plan,
            weight: self.setup.input.weight,
            masks,
        });
        Ok(State::Masking(Box::new(Masking {
            shared: s,
            u2,
            held,
        })))
    }
}
