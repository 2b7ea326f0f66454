//! Phase 1: the announcement, checked against our policy, registry and input.

use p256::elliptic_curve::rand_core::TryCryptoRng;

use crate::round::messages::{Advertise, Announce, Message2};
use crate::round::policy::{Refusal, tolerated_colluders};
use crate::round::schedule::{RoundSecrets, sign_advert};

use super::{Action, Error, Keyed, Node, Phase, State, Step, describe_layout};

impl<'k> Node<'k> {
    // Phase 1: the announcement, checked against our policy, registry and input.
    pub(super) fn on_announce<R: TryCryptoRng + ?Sized>(
        &mut self,
        a: Announce,
        rng: &mut R,
        actions: &mut Vec<Action>,
    ) -> Step<State> {
        let s = &self.setup;
        let refused = |refusal| Error::Refused {
            round: a.round,
            refusal,
        };
        let plan = s
            .policy
            .check(&a, s.last_round, s.input.weight, s.model.as_ref())
            .map_err(refused)?;
        if a.researcher != s.researcher {
            return Err(Self::researcher_fault(
                Phase::Join,
                "announced another researcher than the one TLS authenticated",
            ));
        }
        if !a.invitees.contains(&s.me) {
            return Err(refused(Refusal {
                parameter: "invitees",
                got: "a list without this node".into(),
                allowed: "a list that includes this node".into(),
            }));
        }
        if let Some(stranger) = a.invitees.iter().find(|fp| !s.peers.contains_key(fp)) {
            return Err(refused(Refusal {
                parameter: "invitees",
                got: format!("a party not registered here as a node ({stranger})"),
                allowed: "only nodes registered here".into(),
            }));
        }
        if a.layout != s.input.layout {
            return Err(refused(Refusal {
                parameter: "tensor layout",
                got: describe_layout(&a.layout),
                allowed: format!("this node's update, {}", describe_layout(&s.input.layout)),
            }));
        }
        let ctx = a
            .ctx(&s.researcher)
            .map_err(|e| Self::researcher_fault(Phase::Join, e.to_string()))?;
        let secrets = RoundSecrets::generate(&ctx, rng).map_err(|e| Error::Internal {
            phase: Phase::Join,
            what: e.to_string(),
        })?;
        let advert = secrets.advert(s.me);
        let sig = sign_advert(s.key, &ctx, &advert);
        let n = a.invitees.len();
        let t = a.threshold as usize;
        actions.push(Action::Progress(format!(
            "round {}: accepted ({n} nodes invited, threshold {t}: tolerates {} dropouts and up to {} colluding nodes)",
            a.round,
            n - t,
            tolerated_colluders(n, t)
        )));
        actions.push(Action::JournalAdvertise {
            federation: a.federation.clone(),
            round: a.round,
            researcher: s.researcher,
        });
        actions.push(Action::Send(Message2::Advertise(Advertise {
            advert: advert.clone(),
            sig,
        })));
        Ok(State::AwaitAdverts(Box::new(Keyed {
            ctx,
            plan,
            secrets,
            advert,
        })))
    }
}
