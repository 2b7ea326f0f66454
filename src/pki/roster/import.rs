//! Importing a roster after an earlier version: what changed, and the rules.

use std::collections::{BTreeMap, BTreeSet};

use crate::party::{Fingerprint, Host, PartyId, Role};
use crate::pki::certificate::PeerCertificate;

use super::{Error, FederationName, Result, Roster, RosterFingerprint};

/// A member as the registry's federation tables remember it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberRecord {
    /// Its id.
    pub party_id: PartyId,
    /// Its role.
    pub role: Role,
    /// Its address.
    pub ip: Host,
    /// Its port.
    pub port: u16,
    /// Its certificate.
    pub fingerprint: Fingerprint,
}

/// What this party holds of a federation: the last roster it created or imported.
#[derive(Clone, Debug)]
pub struct FederationState {
    /// The federation.
    pub name: FederationName,
    /// The version.
    pub version: u64,
    /// Its fingerprint.
    pub roster_fingerprint: RosterFingerprint,
    /// The researcher's line.
    pub researcher: MemberRecord,
    /// The researcher's certificate DER (its key must sign every next version).
    pub researcher_der: Vec<u8>,
    /// The members.
    pub members: Vec<MemberRecord>,
}

/// How a roster differs from the version held before.
#[derive(Clone, Debug, Default)]
pub struct Changes {
    /// New ids.
    pub added: Vec<MemberRecord>,
    /// Ids no longer listed.
    pub removed: Vec<MemberRecord>,
    /// Same id, another certificate: `(old, new)`.
    pub recertified: Vec<(MemberRecord, MemberRecord)>,
    /// Same id and certificate, another address or port: `(old, new)`.
    pub moved: Vec<(MemberRecord, MemberRecord)>,
    /// The researcher's line changed: `(old, new)`.
    pub researcher: Option<(MemberRecord, MemberRecord)>,
}

impl Changes {
    /// Whether any certificate nobody confirmed through the previous fingerprint
    /// appears: a new member, or a member or researcher with a new certificate or id.
    pub fn brings_new_certificates(&self) -> bool {
        !self.added.is_empty()
            || !self.recertified.is_empty()
            || self
                .researcher
                .as_ref()
                .is_some_and(|(o, n)| o.fingerprint != n.fingerprint || o.party_id != n.party_id)
    }

    /// Whether nothing changed at all.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty()
            && self.removed.is_empty()
            && self.recertified.is_empty()
            && self.moved.is_empty()
            && self.researcher.is_none()
    }
}

/// Compares a roster with what was held before.
pub fn diff(previous: &FederationState, roster: &Roster) -> Changes {
    let old: BTreeMap<&PartyId, &MemberRecord> =
        previous.members.iter().map(|m| (&m.party_id, m)).collect();
    let mut changes = Changes::default();
    let mut seen = BTreeSet::new();
    for m in roster.members() {
        let new = m.record();
        seen.insert(m.party_id.clone());
        match old.get(&m.party_id) {
            None => changes.added.push(new),
            Some(o) if o.fingerprint != new.fingerprint => {
                changes.recertified.push(((*o).clone(), new))
            }
            Some(o) if **o != new => changes.moved.push(((*o).clone(), new)),
            Some(_) => {}
        }
    }
    changes.removed = previous
        .members
        .iter()
        .filter(|m| !seen.contains(&m.party_id))
        .cloned()
        .collect();
    let r = roster.researcher().record();
    if r != previous.researcher {
        changes.researcher = Some((previous.researcher.clone(), r));
    }
    changes.added.sort_by(|a, b| a.party_id.cmp(&b.party_id));
    changes
}

/// What importing a roster will do.
#[derive(Clone, Debug)]
pub enum ImportPlan {
    /// The first roster of this federation here.
    First,
    /// A next version.
    Update {
        /// The version held before.
        from: u64,
        /// What changes.
        changes: Box<Changes>,
    },
    /// Exactly this roster is imported already.
    UpToDate,
}

/// The rules of `federation import`, checked before anything is written:
/// - a given fingerprint must match;
/// - this party's own line must be its own certificate (by id and by fingerprint);
/// - the first roster of a federation needs the fingerprint;
/// - a next version must be signed by the same researcher key, have a higher version,
///   and needs the fingerprint again if it brings a certificate nobody confirmed
///   (a new member could be a Sybil); removals and address changes need only the
///   signature.
pub fn plan_import(
    roster: &Roster,
    previous: Option<&FederationState>,
    own_id: &PartyId,
    own: &Fingerprint,
    expected: Option<&RosterFingerprint>,
) -> Result<ImportPlan> {
    if let Some(expected) = expected {
        roster.check_fingerprint(expected)?;
    }
    if roster.researcher().certificate.fingerprint() == *own {
        return Err(Error::OwnRoster);
    }
    check_own_line(roster, own_id, own)?;
    let Some(prev) = previous else {
        if expected.is_none() {
            return Err(Error::NeedsFingerprint {
                reason: format!(
                    "this is the first roster of federation '{}' here",
                    roster.federation()
                ),
            });
        }
        return Ok(ImportPlan::First);
    };
    let same_key = PeerCertificate::from_der(&prev.researcher_der)
        .map(|c| c.public_key() == roster.researcher().certificate.public_key())
        .unwrap_or(false);
    if !same_key {
        return Err(Error::DifferentResearcher {
            name: prev.name.clone(),
            have: prev.researcher.party_id.clone(),
            have_fp: prev.researcher.fingerprint,
        });
    }
    if roster.version() < prev.version {
        return Err(Error::Rollback {
            name: prev.name.clone(),
            have: prev.version,
            got: roster.version(),
        });
    }
    if roster.version() == prev.version {
        if roster.fingerprint() == prev.roster_fingerprint {
            return Ok(ImportPlan::UpToDate);
        }
        return Err(Error::Equivocation {
            name: prev.name.clone(),
            version: prev.version,
            have: prev.roster_fingerprint,
        });
    }
    let changes = diff(prev, roster);
    if changes.brings_new_certificates() && expected.is_none() {
        let mut new: Vec<String> = changes
            .added
            .iter()
            .map(|m| m.party_id.to_string())
            .collect();
        new.extend(
            changes
                .recertified
                .iter()
                .map(|(_, n)| format!("{} (new certificate)", n.party_id)),
        );
        if let Some((_, n)) = &changes.researcher {
            new.push(format!("researcher {}", n.party_id));
        }
        return Err(Error::NeedsFingerprint {
            reason: format!(
                "version {} of federation '{}' brings certificates not confirmed before: {}",
                roster.version(),
                roster.federation(),
                new.join(", ")
            ),
        });
    }
    Ok(ImportPlan::Update {
        from: prev.version,
        changes: Box::new(changes),
    })
}

pub(super) fn check_own_line(roster: &Roster, own_id: &PartyId, own: &Fingerprint) -> Result<()> {
    for m in roster.members() {
        let fp = m.certificate.fingerprint();
        if m.party_id == *own_id && fp != *own {
            return Err(Error::OwnLineNotOurs {
                id: own_id.clone(),
                listed: fp,
                own: *own,
            });
        }
        if fp == *own && m.party_id != *own_id {
            return Err(Error::OwnCertificateElsewhere {
                listed: m.party_id.clone(),
                own: own_id.clone(),
            });
        }
    }
    if roster.members().iter().any(|m| m.party_id == *own_id) {
        Ok(())
    } else {
        Err(Error::NotAMember(own_id.clone()))
    }
}
