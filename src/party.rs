//! Names every module shares: who a party is ([`PartyId`], [`Role`]), where it is
//! reachable ([`Host`], ports), and how certificates are named ([`Fingerprint`]).
//!
//! A leaf module: it imports nothing from the crate, so identity, certificates, the
//! registry, the key schedule and the transport can all use these types without
//! importing each other.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// A value a user typed (or a file held) that is not a valid name, address or fingerprint.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A party id has characters or a length we refuse.
    #[error("invalid party id '{0}': use 1 to 64 characters from A-Z a-z 0-9 . _ -")]
    BadPartyId(String),
    /// A role other than node or researcher.
    #[error("invalid role '{0}': expected 'node' or 'researcher'")]
    BadRole(String),
    /// Neither an IP address nor a valid DNS name.
    #[error("invalid address '{0}': expected an IPv4/IPv6 address or a DNS hostname")]
    BadHost(String),
    /// A port outside 1..=65535.
    #[error("invalid port {0}: expected a number from 1 to 65535")]
    BadPort(u64),
    /// A fingerprint is malformed.
    #[error("invalid fingerprint '{0}': expected 32 hex bytes, e.g. AB:CD:...")]
    BadFingerprint(String),
}

type Result<T> = std::result::Result<T, Error>;

/// A party's identifier: 1..=64 characters from `[A-Za-z0-9._-]`.
///
/// It is the certificate's CN and the registry's primary key, and it appears in
/// shell commands we print, so the alphabet is kept shell- and filename-safe.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PartyId(String);

impl PartyId {
    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A fresh id `<role>_<uuid v4>`.
    pub fn random(role: Role) -> PartyId {
        PartyId(format!("{}_{}", role, uuid::Uuid::new_v4()))
    }
}

impl FromStr for PartyId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let ok = (1..=64).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if ok {
            Ok(PartyId(s.to_owned()))
        } else {
            Err(Error::BadPartyId(s.to_owned()))
        }
    }
}

impl TryFrom<String> for PartyId {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        s.parse()
    }
}

impl From<PartyId> for String {
    fn from(p: PartyId) -> String {
        p.0
    }
}

impl fmt::Display for PartyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a party does in a federation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A data holder (hospital) that trains locally and masks its update.
    Node,
    /// The aggregator that sums masked updates.
    Researcher,
}

impl Role {
    /// The lowercase name used on the command line and in the registry.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Node => "node",
            Role::Researcher => "researcher",
        }
    }
}

impl FromStr for Role {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "node" => Ok(Role::Node),
            "researcher" => Ok(Role::Researcher),
            other => Err(Error::BadRole(other.to_owned())),
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a party is reachable: an IP address or a DNS hostname.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Host(String);

impl Host {
    /// The host as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The IP address, if the host is one.
    pub fn ip(&self) -> Option<IpAddr> {
        self.0.parse().ok()
    }
}

impl FromStr for Host {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        if s.parse::<IpAddr>().is_ok() || is_dns_name(s) {
            Ok(Host(s.to_owned()))
        } else {
            Err(Error::BadHost(s.to_owned()))
        }
    }
}

/// RFC 1123 hostnames; an all-numeric name (`999.1.1.1`) is a mistyped IP, not a host.
fn is_dns_name(s: &str) -> bool {
    let labels: Vec<&str> = s.split('.').collect();
    let label_ok = |l: &&str| {
        (1..=63).contains(&l.len())
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    !s.is_empty()
        && s.len() <= 253
        && labels.iter().all(label_ok)
        && !labels.iter().all(|l| l.bytes().all(|b| b.is_ascii_digit()))
}

impl TryFrom<String> for Host {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        s.parse()
    }
}

impl From<Host> for String {
    fn from(h: Host) -> String {
        h.0
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Checks a port number typed by a user.
pub fn parse_port(port: u64) -> Result<u16> {
    match u16::try_from(port) {
        Ok(p) if p != 0 => Ok(p),
        _ => Err(Error::BadPort(port)),
    }
}

/// SHA-256 of a certificate's DER: the value parties compare out of band.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    /// The fingerprint of DER bytes.
    pub fn of_der(der: &[u8]) -> Fingerprint {
        Fingerprint(Sha256::digest(der).into())
    }

    /// The raw digest.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Exactly what `openssl x509 -noout -fingerprint -sha256` prints (OpenSSL 3).
    pub fn openssl_line(&self) -> String {
        format!("sha256 Fingerprint={self}")
    }

    /// The first 8 bytes, for tables.
    pub fn short(&self) -> String {
        let full = self.to_string();
        format!("{}…", &full[..23])
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Listing 10,000 peers formats 10,000 fingerprints: avoid 32 `write!` calls each.
        const HEX: &[u8; 16] = b"0123456789ABCDEF";
        let mut out = [b':'; 95];
        for (i, b) in self.0.iter().enumerate() {
            out[3 * i] = HEX[usize::from(b >> 4)];
            out[3 * i + 1] = HEX[usize::from(b & 0xf)];
        }
        // Only ASCII hex digits and colons were written.
        f.write_str(std::str::from_utf8(&out).map_err(|_| fmt::Error)?)
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

impl FromStr for Fingerprint {
    type Err = Error;
    /// Accepts `AB:CD:…`, `abcd…`, and openssl's `sha256 Fingerprint=AB:…` line.
    fn from_str(s: &str) -> Result<Self> {
        let bad = || Error::BadFingerprint(s.to_owned());
        let t = s.trim();
        let t = match t.split_once('=') {
            Some((prefix, rest)) if prefix.trim().eq_ignore_ascii_case("sha256 fingerprint") => {
                rest
            }
            Some(_) => return Err(bad()),
            None => t,
        };
        let nibble = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
        let mut digits = t.bytes().filter(|c| *c != b':');
        let mut out = [0u8; 32];
        for byte in out.iter_mut() {
            let hi = digits.next().and_then(nibble).ok_or_else(bad)?;
            let lo = digits.next().and_then(nibble).ok_or_else(bad)?;
            *byte = hi << 4 | lo;
        }
        if digits.next().is_some() {
            return Err(bad());
        }
        Ok(Fingerprint(out))
    }
}

/// Serde for a [`Fingerprint`] as 64 lowercase hex digits (file headers, JSON).
pub mod fingerprint_hex {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    use super::Fingerprint;

    /// Writes 64 lowercase hex digits.
    pub fn serialize<S: Serializer>(fp: &Fingerprint, s: S) -> Result<S::Ok, S::Error> {
        let hex: String = fp.as_bytes().iter().map(|b| format!("{b:02x}")).collect();
        s.serialize_str(&hex)
    }

    /// Reads exactly 64 hex digits.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Fingerprint, D::Error> {
        let hex = String::deserialize(d)?;
        if hex.len() != 64 || !hex.bytes().all(|c| c.is_ascii_hexdigit()) {
            return Err(D::Error::custom("researcher: expected 64 hex digits"));
        }
        hex.parse().map_err(D::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn party_ids() {
        for ok in ["a", "node_1", "hospital-A.eu", &"x".repeat(64)] {
            assert!(ok.parse::<PartyId>().is_ok(), "{ok}");
        }
        for bad in ["", "a b", "a/b", "é", "a;rm", &"x".repeat(65)] {
            assert!(bad.parse::<PartyId>().is_err(), "{bad}");
        }
        let id = PartyId::random(Role::Node);
        assert!(id.as_str().starts_with("node_"));
        assert!(id.as_str().parse::<PartyId>().is_ok());
    }

    #[test]
    fn hosts() {
        for ok in ["127.0.0.1", "::1", "node-a.example.org", "localhost"] {
            assert!(ok.parse::<Host>().is_ok(), "{ok}");
        }
        for bad in ["", "999.1.1.1", "a..b", "-a.org", "a b", "1.2.3"] {
            assert!(bad.parse::<Host>().is_err(), "{bad}");
        }
    }

    #[test]
    fn ports() {
        assert!(parse_port(0).is_err());
        assert!(parse_port(70000).is_err());
        assert_eq!(parse_port(443).ok(), Some(443));
    }

    #[test]
    fn fingerprint_formats() {
        let fp = Fingerprint::of_der(b"x");
        let s = fp.to_string();
        assert_eq!(s.len(), 95);
        assert_eq!(s.parse::<Fingerprint>().ok(), Some(fp));
        assert_eq!(
            s.replace(':', "")
                .to_lowercase()
                .parse::<Fingerprint>()
                .ok(),
            Some(fp)
        );
        assert_eq!(fp.openssl_line().parse::<Fingerprint>().ok(), Some(fp));
        assert!("AB:CD".parse::<Fingerprint>().is_err());
        assert!(
            format!("md5 Fingerprint={s}")
                .parse::<Fingerprint>()
                .is_err()
        );
        assert_eq!(fp.short().chars().count(), 24);
    }
}
