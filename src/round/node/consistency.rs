//! Phases 5 and 6: the survivor sets against our own view, and the consistency
//! signatures before any share is revealed.

use std::collections::BTreeSet;

use sha2::{Digest, Sha256};

use crate::round::messages::{
    ConsistencySig, Message2, RevealedShare, ShareKind, SignatureList, Survivors, Unmask,
};
use crate::round::policy::Refusal;
use crate::round::schedule::{
    Advert, ConsistencyMessage, is_subset, sign_consistency, verify_consistency,
};

use super::{Action, Error, Masking, Node, Phase, Revealed, Signed, State, Step};

impl<'k> Node<'k> {
    // Phase 5: U2 and U3 against our own view; sign once.
    pub(super) fn on_survivors(
        &mut self,
        m: Masking,
        sv: Survivors,
        actions: &mut Vec<Action>,
    ) -> Step<State> {
        let phase = Phase::Consistency;
        let me = self.setup.me;
        let ctx = &m.shared.keyed.ctx;
        let t = ctx.threshold();
        if sv.u2 != m.u2 {
            return Err(Self::researcher_fault(
                phase,
                "announced a U2 that differs from the one this node saw",
            ));
        }
        if !is_subset(&sv.u3, &m.u2) {
            return Err(Self::researcher_fault(
                phase,
                "announced a U3 that is not inside U2",
            ));
        }
        if !sv.u3.contains(&me) {
            return Err(Error::Excluded);
        }
        if sv.u3.len() < t {
            return Err(Error::BelowThreshold {
                phase,
                have: sv.u3.len(),
                need: t,
            });
        }
        let p = &self.setup.policy;
        let trusted = sv.u3.iter().filter(|f| p.require_peers.contains(f)).count();
        if trusted < p.require_peers_count {
            return Err(Error::Refused {
                round: ctx.params().round,
                refusal: Refusal {
                    parameter: "trusted peers among the survivors",
                    got: trusted.to_string(),
                    allowed: format!("at least {} (require-peers)", p.require_peers_count),
                },
            });
        }
        let adverts: Vec<&Advert> = m.u2.iter().filter_map(|f| m.shared.u1.get(f)).collect();
        let message = ConsistencyMessage::new(ctx, &adverts, &sv.u3)
            .map_err(|e| Self::researcher_fault(phase, e.to_string()))?;
        let sig = sign_consistency(self.setup.key, &message);
        actions.push(Action::Progress(format!(
            "masked-input: whole inputs from {} nodes; dropped mid-round: {}",
            sv.u3.len(),
            self.names(
                &m.u2
                    .iter()
                    .filter(|f| !sv.u3.contains(f))
                    .copied()
                    .collect::<Vec<_>>()
            )
        )));
        actions.push(Action::JournalSigned {
            federation: ctx.params().federation.clone(),
            round: ctx.params().round,
            hash: Sha256::digest(message.as_bytes()).into(),
        });
        actions.push(Action::Send(Message2::ConsistencySig(ConsistencySig {
            sig,
        })));
        Ok(State::AwaitSignatures(Box::new(Signed {
            masking: m,
            u3: sv.u3,
            message,
        })))
    }

    // Phase 6: t valid signatures from distinct registered members of U3, then reveal
    // one kind of share per peer.
    pub(super) fn on_signatures(
        &mut self,
        s: Signed,
        list: SignatureList,
        actions: &mut Vec<Action>,
    ) -> Step<State> {
        let phase = Phase::Unmask;
        let ctx = &s.masking.shared.keyed.ctx;
        let t = ctx.threshold();
        let mut signers = BTreeSet::new();
        for (fp, sig) in &list.sigs {
            if !s.u3.contains(fp) {
                continue;
            }
            let Some(peer) = self.setup.peers.get(fp) else {
                continue;
            };
            if verify_consistency(&peer.key, &s.message, sig).is_ok() {
                signers.insert(*fp);
            }
        }
        if signers.len() < t {
            return Err(Error::BelowThreshold {
                phase,
                have: signers.len(),
                need: t,
            });
        }
        let p = &self.setup.policy;
        let trusted = signers
            .iter()
            .filter(|f| p.require_peers.contains(f))
            .count();
        if trusted < p.require_peers_count {
            return Err(Error::Refused {
                round: ctx.params().round,
                refusal: Refusal {
                    parameter: "trusted peers among the signers",
                    got: trusted.to_string(),
                    allowed: format!("at least {} (require-peers)", p.require_peers_count),
                },
            });
        }
        let mut reveals = Vec::with_capacity(s.masking.u2.len());
        let mut shares = Vec::with_capacity(s.masking.u2.len());
        for v in &s.masking.u2 {
            let pair = s.masking.held.get(v).ok_or_else(|| Error::Internal {
                phase,
                what: "a share of an U2 member is missing".into(),
            })?;
            let (kind, value) = if s.u3.contains(v) {
                (ShareKind::B, pair.b)
            } else {
                (ShareKind::S, pair.s)
            };
            reveals.push((*v, kind));
            shares.push(RevealedShare {
                peer: *v,
                kind,
                value,
            });
        }
        actions.push(Action::JournalReveal {
            federation: ctx.params().federation.clone(),
            round: ctx.params().round,
            reveals,
        });
        actions.push(Action::Send(Message2::Unmask(Unmask { shares })));
        Ok(State::AwaitResult(Box::new(Revealed {
            signed: s,
            signers: signers.into_iter().collect(),
        })))
    }
}
