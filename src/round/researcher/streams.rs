//! Phase 3, masked input: the chunks and end markers of each stream, and closing U3.

use std::collections::BTreeMap;

use crate::party::Fingerprint;
use crate::round::messages::{Message2, Survivors};
use crate::round::schedule::{Advert, ConsistencyMessage};

use super::{Action, Error, Fault, Phase, Researcher, Stage, Step};

impl Researcher {
    pub(super) fn on_chunk(
        &mut self,
        from: Fingerprint,
        offset: u64,
        data: Vec<u8>,
        out: &mut Vec<Action>,
    ) {
        let word = self.plan.wire_bytes();
        let words = self.words;
        let fault = match &mut self.stage {
            Stage::MaskedInput { streams } => match streams.get_mut(&from) {
                None => Some(Fault::Unexpected("chunk")),
                Some(s) if s.ended => Some(Fault::AfterEnd),
                Some(_) if data.is_empty() || !data.len().is_multiple_of(word) => {
                    Some(Fault::PartialWords {
                        bytes: data.len(),
                        word,
                    })
                }
                Some(s) if offset != s.next => Some(Fault::OutOfOrder {
                    expected: s.next,
                    got: offset,
                }),
                Some(s) => {
                    let end = s.next.saturating_add((data.len() / word) as u64);
                    if end > words {
                        Some(Fault::Overflow { end, words })
                    } else {
                        s.next = end;
                        out.push(Action::Absorb { from, offset, data });
                        None
                    }
                }
            },
            Stage::Advertise { .. } | Stage::ShareKeys { .. } => Some(Fault::Unexpected("chunk")),
            _ => Some(Fault::AfterEnd),
        };
        if let Some(f) = fault {
            self.misbehaved(from, f, out);
        }
    }

    pub(super) fn on_end(&mut self, from: Fingerprint, out: &mut Vec<Action>) {
        let words = self.words;
        let fault = match &mut self.stage {
            Stage::MaskedInput { streams } => match streams.get_mut(&from) {
                None => Some(Fault::Unexpected("end marker")),
                Some(s) if s.ended => Some(Fault::AfterEnd),
                Some(s) if s.next != words => Some(Fault::ShortStream { got: s.next, words }),
                Some(s) => {
                    s.ended = true;
                    None
                }
            },
            Stage::Advertise { .. } | Stage::ShareKeys { .. } => {
                Some(Fault::Unexpected("end marker"))
            }
            _ => Some(Fault::AfterEnd),
        };
        if let Some(f) = fault {
            self.misbehaved(from, f, out);
        }
    }

    pub(super) fn close_input(&mut self, u3: Vec<Fingerprint>, out: &mut Vec<Action>) -> Step {
        // Every stream outside U3 was discarded as it left; the U3 spills go now.
        for fp in &u3 {
            out.push(Action::StreamComplete { from: *fp });
        }
        self.progress(Phase::MaskedInput, "U3", u3.len(), self.u2.len(), out);
        let adverts = self
            .u2
            .iter()
            .map(|fp| self.u1.get(fp).map(|a| &a.advert))
            .collect::<Option<Vec<&Advert>>>()
            .ok_or_else(|| Error::Internal("a member of U2 has no advert".into()))?;
        let message = ConsistencyMessage::new(&self.ctx, &adverts, &u3)
            .map_err(|e| Error::Internal(format!("consistency message: {e}")))?;
        for fp in &u3 {
            out.push(Action::Send {
                to: *fp,
                msg: Message2::Survivors(Survivors {
                    u2: self.u2.clone(),
                    u3: u3.clone(),
                }),
            });
        }
        self.members = u3.iter().copied().collect();
        self.u3 = u3;
        self.stage = Stage::Consistency {
            message,
            sigs: BTreeMap::new(),
        };
        Ok(())
    }
}
