//! The roster file: TOML out, TOML in (checked), and capped reads.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use p256::ecdsa::signature::Verifier;
use p256::ecdsa::{Signature, VerifyingKey};
use serde::Deserialize;

use crate::party::{self, Role};
use crate::pki::certificate::PeerCertificate;

use super::canonical::canonical;

use super::{
    Draft, Error, FederationName, MAX_MEMBERS, MAX_ROSTER_BYTES, Member, Result, Roster,
    RosterFingerprint, SIGNATURE_ALGORITHM, sort_members, validate,
};

impl Roster {
    /// The roster file: TOML, with a comment saying how to check it.
    pub fn to_toml(&self) -> String {
        let d = &self.draft;
        let mut out = format!(
            "# secagg federation roster. Check it with 'secagg federation show FILE':\n\
             # roster fingerprint: {fp}\n\
             # Only the [roster] values are signed; comments and layout are not.\n\n\
             [roster]\nfederation = \"{fed}\"\nversion = {version}\ncreated_at = {created}\n\n\
             [roster.researcher]\n{researcher}\n",
            fp = self.fingerprint,
            fed = d.federation,
            version = d.version,
            created = d.created_at,
            researcher = party_toml(&d.researcher, false),
        );
        for m in &d.members {
            out.push_str("[[roster.members]]\n");
            out.push_str(&party_toml(m, true));
            out.push('\n');
        }
        out.push_str(&format!(
            "[signature]\nalgorithm = \"{SIGNATURE_ALGORITHM}\"\nvalue = \"{}\"\n",
            hex(&self.signature.to_bytes())
        ));
        out
    }

    /// Parses and checks a roster file: size, TOML shape, member count, every
    /// certificate as `certificate register` checks it at `now` (no waivers), no
    /// duplicate id or certificate, and the researcher's signature.
    pub fn from_toml(bytes: &[u8], now: SystemTime) -> Result<Roster> {
        if bytes.len() as u64 > MAX_ROSTER_BYTES {
            return Err(Error::TooLarge {
                path: PathBuf::from("roster"),
                max: MAX_ROSTER_BYTES,
            });
        }
        let text = std::str::from_utf8(bytes)
            .map_err(|_| Error::Malformed("the file is not UTF-8 text".into()))?;
        let raw: RawFile =
            toml::from_str(text).map_err(|e| Error::Malformed(e.message().into()))?;
        if raw.roster.members.len() > MAX_MEMBERS {
            return Err(Error::TooManyMembers(raw.roster.members.len()));
        }
        if raw.signature.algorithm != SIGNATURE_ALGORITHM {
            return Err(Error::UnknownAlgorithm(raw.signature.algorithm));
        }
        let signature = unhex(&raw.signature.value)
            .and_then(|b| Signature::from_slice(&b).ok())
            .ok_or_else(|| Error::Malformed("the signature is not 64 bytes of hex".into()))?;
        let federation: FederationName = raw.roster.federation.parse()?;
        if raw.roster.version == 0 || raw.roster.version > i64::MAX as u64 {
            return Err(Error::Malformed(format!(
                "version {} is out of range (1 to 2^63-1)",
                raw.roster.version
            )));
        }
        let r = raw.roster.researcher;
        let researcher = Member {
            party_id: r.id.parse()?,
            role: Role::Researcher,
            ip: r.ip.parse()?,
            port: party::parse_port(r.port)?,
            certificate: PeerCertificate::from_pem(r.certificate.as_bytes())
                .map_err(Error::ResearcherCertificate)?,
        };
        let members = raw
            .roster
            .members
            .into_iter()
            .map(|m| {
                let certificate =
                    PeerCertificate::from_pem(m.certificate.as_bytes()).map_err(|source| {
                        Error::Member {
                            id: m.id.clone(),
                            source,
                        }
                    })?;
                Ok(Member {
                    party_id: m.id.parse()?,
                    role: m.role.parse()?,
                    ip: m.ip.parse()?,
                    port: party::parse_port(m.port)?,
                    certificate,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let mut draft = Draft {
            federation,
            version: raw.roster.version,
            created_at: raw.roster.created_at,
            researcher,
            members,
        };
        sort_members(&mut draft.members);
        // The signature first: a tampered file says so, not what its tampering broke.
        let bytes = canonical(&draft);
        VerifyingKey::from(draft.researcher.certificate.public_key())
            .verify(&bytes, &signature)
            .map_err(|_| Error::BadSignature)?;
        validate(&draft, now)?;
        Ok(Roster {
            draft,
            signature,
            fingerprint: RosterFingerprint::of_canonical(&bytes),
        })
    }
}

pub(super) fn party_toml(m: &Member, with_role: bool) -> String {
    // Ids, roles, hosts and PEM use alphabets that need no TOML escaping.
    let role = if with_role {
        format!("role = \"{}\"\n", m.role)
    } else {
        String::new()
    };
    format!(
        "id = \"{}\"\n{role}ip = \"{}\"\nport = {}\ncertificate = \"\"\"\n{}\"\"\"\n",
        m.party_id,
        m.ip,
        m.port,
        m.certificate.to_pem()
    )
}

pub(super) fn hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    bytes
        .iter()
        .flat_map(|b| [HEX[usize::from(b >> 4)], HEX[usize::from(b & 0xf)]])
        .map(char::from)
        .collect()
}

pub(super) fn unhex(s: &str) -> Option<Vec<u8>> {
    let s = s.trim().as_bytes();
    if s.len() != 128 {
        return None;
    }
    let nibble = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    s.chunks_exact(2)
        .map(|p| Some(nibble(p[0])? << 4 | nibble(p[1])?))
        .collect()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    roster: RawBody,
    signature: RawSignature,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBody {
    federation: String,
    version: u64,
    created_at: i64,
    researcher: RawResearcher,
    members: Vec<RawMember>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawResearcher {
    id: String,
    ip: String,
    port: u64,
    certificate: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMember {
    id: String,
    role: String,
    ip: String,
    port: u64,
    certificate: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSignature {
    algorithm: String,
    value: String,
}

/// Reads at most `max` bytes of `path`; a longer file is an error before it is read whole.
pub fn read_capped(path: &Path, max: u64) -> Result<Vec<u8>> {
    let io = |source| Error::Io {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let mut bytes = Vec::new();
    file.take(max + 1).read_to_end(&mut bytes).map_err(io)?;
    if bytes.len() as u64 > max {
        return Err(Error::TooLarge {
            path: path.to_owned(),
            max,
        });
    }
    Ok(bytes)
}
