//! Phase 1, advertise keys: checking adverts and closing U1.

use std::collections::BTreeMap;

use crate::party::Fingerprint;
use crate::round::messages::{AdvertList, Advertise, Message2};
use crate::round::schedule::{Ctx, same_x, verify_advert};

use super::{Action, Fault, Invitee, Phase, Researcher, Stage, Step};

impl Researcher {
    pub(super) fn close_adverts(
        &mut self,
        adverts: BTreeMap<Fingerprint, Advertise>,
        out: &mut Vec<Action>,
    ) -> Step {
        self.progress(
            Phase::Advertise,
            "U1",
            adverts.len(),
            self.invitees.len(),
            out,
        );
        let list = AdvertList {
            adverts: adverts.values().cloned().collect(),
        };
        self.members = adverts.keys().copied().collect();
        for fp in adverts.keys() {
            out.push(Action::Send {
                to: *fp,
                msg: Message2::AdvertList(list.clone()),
            });
        }
        self.u1 = adverts;
        self.stage = Stage::ShareKeys {
            bundles: BTreeMap::new(),
        };
        Ok(())
    }
}

/// Phase 1: the sender's own advert, valid under its registered key, with keys no other
/// accepted advert shares an x-coordinate with.
pub(super) fn check_advert(
    invitees: &BTreeMap<Fingerprint, Invitee>,
    ctx: &Ctx,
    accepted: &BTreeMap<Fingerprint, Advertise>,
    from: Fingerprint,
    a: &Advertise,
) -> Option<Fault> {
    if a.advert.fp != from {
        return Some(Fault::AdvertOfOther(a.advert.fp));
    }
    let key = &invitees.get(&from)?.key;
    if let Err(e) = verify_advert(key, ctx, &a.advert, &a.sig) {
        return Some(Fault::BadAdvert(e.to_string()));
    }
    let (c, s) = (&a.advert.c_pub, &a.advert.s_pub);
    if same_x(c, s) {
        return Some(Fault::SameKeyX(from));
    }
    accepted
        .values()
        .find(|o| {
            [&o.advert.c_pub, &o.advert.s_pub]
                .iter()
                .any(|k| same_x(k, c) || same_x(k, s))
        })
        .map(|o| Fault::SameKeyX(o.advert.fp))
}
