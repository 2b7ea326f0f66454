//! Phase 7: the result header.

use crate::round::messages::ResultHeader;

use super::{Action, Node, Phase, Revealed, State, Step, Summary};

impl<'k> Node<'k> {
    // Phase 7: a result that a weighted mean of U3's clipped inputs could have.
    pub(super) fn on_result(
        &mut self,
        r: Revealed,
        h: ResultHeader,
        actions: &mut Vec<Action>,
    ) -> Step<State> {
        let phase = Phase::Result;
        let keyed = &r.signed.masking.shared.keyed;
        let n3 = r.signed.u3.len() as u64;
        if u64::from(h.survivors) != n3 {
            return Err(Self::researcher_fault(
                phase,
                format!("reported {} survivors, U3 has {n3}", h.survivors),
            ));
        }
        let lo = n3.max(self.setup.input.weight);
        let hi = n3.saturating_mul(keyed.ctx.params().max_weight);
        if h.total_weight < lo || h.total_weight > hi {
            return Err(Self::researcher_fault(
                phase,
                format!(
                    "reported a total weight of {}, impossible for {n3} nodes (allowed {lo}..={hi})",
                    h.total_weight
                ),
            ));
        }
        let layout = self.setup.input.layout.clone();
        if h.bytes != layout.encoded_len() {
            return Err(Self::researcher_fault(
                phase,
                format!(
                    "announced a mean of {} bytes, the layout has {}",
                    h.bytes,
                    layout.encoded_len()
                ),
            ));
        }
        actions.push(Action::ReceiveMean {
            header: h.clone(),
            plan: keyed.plan,
            layout,
        });
        actions.push(Action::Finish(Summary {
            round: keyed.ctx.params().round,
            u1: r.signed.masking.shared.u1.keys().copied().collect(),
            u2: r.signed.masking.u2.clone(),
            u3: r.signed.u3.clone(),
            signers: r.signers.clone(),
            total_weight: h.total_weight,
        }));
        Ok(State::Done)
    }
}
