//! The registry's side of federation rosters: what this party holds of each federation
//! (the last version it created or imported, that roster's fingerprint, its researcher
//! and its members, in the tables `federations` and `federation_members`), and applying
//! a roster to the peer registry in one transaction, or not at all.
//!
//! The rules for whether a roster may be imported are pure and live in
//! [`crate::pki::roster::plan_import`]; this module only writes what was decided, after
//! checking inside the transaction that the federation did not change in between.

use std::collections::BTreeSet;

use rusqlite::{OptionalExtension, TransactionBehavior, params};

use crate::party::{Fingerprint, PartyId};
use crate::pki::registry::{self, Registry, classify};
use crate::pki::roster::{
    FederationName, FederationState, Member, MemberRecord, Roster, RosterFingerprint,
};

/// Errors while reading or applying a federation.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The registry failed, or refused a registration (an id or certificate held by a
    /// party outside this federation).
    #[error(transparent)]
    Registry(#[from] registry::Error),
    /// Another process changed the federation between the check and the write.
    #[error("federation '{0}' changed while this command ran")]
    Changed(FederationName),
    /// A stored federation row that does not parse.
    #[error("the registry's record of federation '{name}' is invalid: {reason}")]
    BadRow {
        /// The federation.
        name: String,
        /// What is wrong.
        reason: String,
    },
}

type Result<T> = std::result::Result<T, Error>;

/// What applying a roster did to the peer registry.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// Newly registered.
    pub added: Vec<PartyId>,
    /// Registration replaced (address, role or certificate changed).
    pub updated: Vec<PartyId>,
    /// Already registered exactly so.
    pub unchanged: Vec<PartyId>,
    /// Dropped from the federation and deleted from the registry.
    pub removed: Vec<PartyId>,
    /// Dropped from the federation but kept registered (another federation lists
    /// them, or their registration was changed by hand).
    pub kept: Vec<PartyId>,
}

struct Existing {
    fingerprint: String,
    role: String,
    ip: String,
    port: i64,
}

impl Registry {
    /// What this party holds of federation `name`, if anything.
    pub fn federation(&self, name: &FederationName) -> Result<Option<FederationState>> {
        let path = self.path.clone();
        let sql = |e| Error::Registry(classify(&path, e));
        let row = self
            .conn
            .query_row(
                "SELECT version, roster_fingerprint, researcher_id, researcher_ip, researcher_port, researcher_der
                 FROM federations WHERE name = ?1",
                [name.as_str()],
                |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, String>(3)?,
                        r.get::<_, i64>(4)?,
                        r.get::<_, Vec<u8>>(5)?,
                    ))
                },
            )
            .optional()
            .map_err(sql)?;
        let Some((version, fp, rid, rip, rport, der)) = row else {
            return Ok(None);
        };
        let bad = |reason: String| Error::BadRow {
            name: name.to_string(),
            reason,
        };
        let mut stmt = self
            .conn
            .prepare(
                "SELECT party_id, role, ip, port, fingerprint FROM federation_members
                 WHERE federation = ?1 ORDER BY party_id",
            )
            .map_err(sql)?;
        let members = stmt
            .query_map([name.as_str()], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, String>(4)?,
                ))
            })
            .map_err(sql)?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(sql)?
            .into_iter()
            .map(|(id, role, ip, port, fp)| record(&id, &role, &ip, port, &fp).map_err(&bad))
            .collect::<Result<Vec<_>>>()?;
        let researcher_fp = crate::pki::certificate::PeerCertificate::from_der(&der)
            .map(|c| c.fingerprint())
            .map_err(|e| bad(e.to_string()))?;
        Ok(Some(FederationState {
            name: name.clone(),
            version: u64::try_from(version).map_err(|_| bad("negative version".into()))?,
            roster_fingerprint: fp.parse().map_err(|e| bad(format!("{e}")))?,
            researcher: record(&rid, "researcher", &rip, rport, &researcher_fp.to_string())
                .map_err(&bad)?,
            researcher_der: der,
            members,
        }))
    }

    /// Registers every party of `roster` except this one (`own`), the researcher with
    /// role researcher; deletes the members of the previous version that the roster
    /// drops (unless another federation lists them); and records the roster as this
    /// federation's current version. One `BEGIN IMMEDIATE` transaction: all or nothing.
    ///
    /// `expected` is the (version, fingerprint) the caller planned against (`None`: no
    /// previous version); if the federation changed since, nothing is written.
    pub fn apply_roster(
        &mut self,
        roster: &Roster,
        own: &Fingerprint,
        expected: Option<(u64, RosterFingerprint)>,
        now: i64,
    ) -> Result<Applied> {
        let path = self.path.clone();
        let sql = |e| Error::Registry(classify(&path, e));
        let name = roster.federation().clone();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sql)?;

        let current: Option<(i64, String)> = tx
            .query_row(
                "SELECT version, roster_fingerprint FROM federations WHERE name = ?1",
                [name.as_str()],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(sql)?;
        let matches = match (&current, &expected) {
            (None, None) => true,
            (Some((v, fp)), Some((ev, efp))) => {
                u64::try_from(*v).ok() == Some(*ev) && *fp == efp.to_string()
            }
            _ => false,
        };
        if !matches {
            return Err(Error::Changed(name));
        }

        // (id, fingerprint) pairs this federation vouched for before.
        let mut previous: BTreeSet<(String, String)> = BTreeSet::new();
        if current.is_some() {
            let mut stmt = tx
                .prepare(
                    "SELECT party_id, fingerprint FROM federation_members WHERE federation = ?1",
                )
                .map_err(sql)?;
            let rows = stmt
                .query_map([name.as_str()], |r| Ok((r.get(0)?, r.get(1)?)))
                .map_err(sql)?
                .collect::<rusqlite::Result<Vec<(String, String)>>>()
                .map_err(sql)?;
            previous.extend(rows);
            let (rid, rder): (String, Vec<u8>) = tx
                .query_row(
                    "SELECT researcher_id, researcher_der FROM federations WHERE name = ?1",
                    [name.as_str()],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .map_err(sql)?;
            previous.insert((rid, Fingerprint::of_der(&rder).to_string()));
        }

        let entries: Vec<&Member> = std::iter::once(roster.researcher())
            .chain(roster.members())
            .filter(|m| m.certificate.fingerprint() != *own)
            .collect();
        let new_ids: BTreeSet<&str> = roster
            .members()
            .iter()
            .chain(std::iter::once(roster.researcher()))
            .map(|m| m.party_id.as_str())
            .collect();
        let own_s = own.to_string();

        let mut applied = Applied::default();
        // Dropped parties first, so a renamed member's certificate is free again.
        for (id, fp) in &previous {
            if new_ids.contains(id.as_str()) || *fp == own_s {
                continue;
            }
            let pid = parse_id(id, &name)?;
            let elsewhere: bool = tx
                .query_row(
                    "SELECT EXISTS (SELECT 1 FROM federation_members m WHERE m.federation <> ?1 AND m.party_id = ?2 AND m.fingerprint = ?3)
                         OR EXISTS (SELECT 1 FROM federations f WHERE f.name <> ?1 AND f.researcher_id = ?2)",
                    params![name.as_str(), id, fp],
                    |r| r.get(0),
                )
                .map_err(sql)?;
            let deleted = if elsewhere {
                0
            } else {
                tx.execute(
                    "DELETE FROM peers WHERE party_id = ?1 AND fingerprint = ?2",
                    params![id, fp],
                )
                .map_err(sql)?
            };
            if deleted > 0 {
                applied.removed.push(pid);
            } else {
                applied.kept.push(pid);
            }
        }

        for m in entries {
            let id = m.party_id.as_str();
            let fp = m.certificate.fingerprint().to_string();
            let existing: Option<Existing> = tx
                .query_row(
                    "SELECT fingerprint, role, ip, port FROM peers WHERE party_id = ?1",
                    [id],
                    |r| {
                        Ok(Existing {
                            fingerprint: r.get(0)?,
                            role: r.get(1)?,
                            ip: r.get(2)?,
                            port: r.get(3)?,
                        })
                    },
                )
                .optional()
                .map_err(sql)?;
            if let Some(e) = &existing {
                let ours = e.fingerprint == fp
                    || previous.contains(&(id.to_owned(), e.fingerprint.clone()));
                if !ours {
                    return Err(registry::Error::DuplicateId(m.party_id.clone()).into());
                }
            }
            let holder: Option<String> = tx
                .query_row(
                    "SELECT party_id FROM peers WHERE fingerprint = ?1",
                    [&fp],
                    |r| r.get(0),
                )
                .optional()
                .map_err(sql)?;
            if let Some(holder) = holder.filter(|h| h != id) {
                return Err(registry::Error::DuplicateFingerprint {
                    fingerprint: m.certificate.fingerprint(),
                    existing: parse_id(&holder, &name)?,
                }
                .into());
            }
            match &existing {
                Some(e)
                    if e.fingerprint == fp
                        && e.role == m.role.as_str()
                        && e.ip == m.ip.as_str()
                        && e.port == i64::from(m.port) =>
                {
                    applied.unchanged.push(m.party_id.clone());
                    continue;
                }
                Some(_) => applied.updated.push(m.party_id.clone()),
                None => applied.added.push(m.party_id.clone()),
            }
            tx.execute("DELETE FROM peers WHERE party_id = ?1", [id])
                .map_err(sql)?;
            tx.execute(
                "INSERT INTO peers (party_id, role, ip, port, fingerprint, cert_der, not_after, registered_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    id,
                    m.role.as_str(),
                    m.ip.as_str(),
                    m.port,
                    fp,
                    m.certificate.der(),
                    m.certificate.not_after_unix(),
                    now
                ],
            )
            .map_err(sql)?;
        }

        let r = roster.researcher();
        // Versions above i64::MAX are refused when a roster is parsed.
        let version = i64::try_from(roster.version()).unwrap_or(i64::MAX);
        tx.execute(
            "INSERT INTO federations (name, version, roster_fingerprint, researcher_id, researcher_ip, researcher_port, researcher_der, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
             ON CONFLICT (name) DO UPDATE SET version = ?2, roster_fingerprint = ?3, researcher_id = ?4,
                 researcher_ip = ?5, researcher_port = ?6, researcher_der = ?7, updated_at = ?8",
            params![
                name.as_str(),
                version,
                roster.fingerprint().to_string(),
                r.party_id.as_str(),
                r.ip.as_str(),
                r.port,
                r.certificate.der(),
                now
            ],
        )
        .map_err(sql)?;
        tx.execute(
            "DELETE FROM federation_members WHERE federation = ?1",
            [name.as_str()],
        )
        .map_err(sql)?;
        for m in roster.members() {
            tx.execute(
                "INSERT INTO federation_members (federation, party_id, role, ip, port, fingerprint)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    name.as_str(),
                    m.party_id.as_str(),
                    m.role.as_str(),
                    m.ip.as_str(),
                    m.port,
                    m.certificate.fingerprint().to_string()
                ],
            )
            .map_err(sql)?;
        }
        tx.commit().map_err(sql)?;
        Ok(applied)
    }
}

fn parse_id(id: &str, name: &FederationName) -> Result<PartyId> {
    id.parse().map_err(|e: crate::party::Error| Error::BadRow {
        name: name.to_string(),
        reason: e.to_string(),
    })
}

fn record(
    id: &str,
    role: &str,
    ip: &str,
    port: i64,
    fp: &str,
) -> std::result::Result<MemberRecord, String> {
    let port = u64::try_from(port).map_err(|_| format!("invalid port {port}"))?;
    Ok(MemberRecord {
        party_id: id.parse().map_err(|e: crate::party::Error| e.to_string())?,
        role: role
            .parse()
            .map_err(|e: crate::party::Error| e.to_string())?,
        ip: ip.parse().map_err(|e: crate::party::Error| e.to_string())?,
        port: crate::party::parse_port(port).map_err(|e| e.to_string())?,
        fingerprint: fp.parse().map_err(|e: crate::party::Error| e.to_string())?,
    })
}
