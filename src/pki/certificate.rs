//! Self-signed P-256 certificates: building ours, and checking a peer's before it is
//! trusted.
//!
//! A certificate is the unit of out-of-band trust. Its [`Fingerprint`] (SHA-256 of the
//! DER) is what parties read to each other over a trusted channel, and its key is the
//! ECDH key used for pairwise mask secrets and the ECDSA key used for TLS and for
//! signing masked files. [`PeerCertificate`] can only be built by parsing a certificate
//! that passed every structural check and either verified against its own key
//! ([`PeerCertificate::from_der`], for anything from outside) or was read back from this
//! party's registry under the fingerprint stored with it, having been verified when it
//! was registered ([`PeerCertificate::from_registered_der`]).

use std::fmt;
use std::time::{Duration, SystemTime};

use der::asn1::{Ia5String, OctetString};
use der::{Decode, Encode};
use p256::ecdsa::signature::Verifier;
use p256::ecdsa::{DerSignature, SigningKey, VerifyingKey};
use x509_cert::Certificate;
use x509_cert::builder::profile::BuilderProfile;
use x509_cert::builder::{Builder, CertificateBuilder};
use x509_cert::certificate::TbsCertificate;
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::{
    BasicConstraints, ExtendedKeyUsage, KeyUsage, KeyUsages, SubjectAltName, SubjectKeyIdentifier,
};
use x509_cert::ext::{Extension, ToExtension};
use x509_cert::name::Name;
use x509_cert::serial_number::SerialNumber;
use x509_cert::spki::{ObjectIdentifier, SubjectPublicKeyInfo, SubjectPublicKeyInfoRef};
use x509_cert::time::{Time, Validity};

use crate::clock::unix_secs;
use crate::party::{Fingerprint, Host, PartyId};

const ID_EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const SECP256R1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
const ECDSA_WITH_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.2");
const ID_KP_SERVER_AUTH: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.3.1");
const ID_KP_CLIENT_AUTH: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.3.2");

/// Errors about certificates. Each names the problem so the CLI can say what to do.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The input has no PEM block at all (empty, binary, or plain text).
    #[error("not a PEM file: no '-----BEGIN CERTIFICATE-----' block found")]
    NotPem,
    /// A PEM block that is not a certificate (e.g. a private key).
    #[error("the PEM block is labelled '{0}', not 'CERTIFICATE'")]
    WrongLabel(String),
    /// More than one certificate in a file.
    #[error("the file holds {0} PEM blocks; exactly one certificate is expected")]
    TooManyBlocks(usize),
    /// The DER inside the PEM is not an X.509 certificate.
    #[error("the certificate is not valid X.509 DER: {0}")]
    Der(String),
    /// The key is not an elliptic-curve key.
    #[error("the certificate's key is {0}; secagg needs P-256 ECDSA keys")]
    WrongKeyType(String),
    /// The key is EC, but on another curve.
    #[error("the certificate uses curve {0}; secagg needs P-256 ECDSA keys")]
    WrongCurve(String),
    /// The signature algorithm is not ecdsa-with-SHA256.
    #[error("the certificate is signed with {0}; secagg needs ecdsa-with-SHA256")]
    WrongSignatureAlgorithm(String),
    /// The self-signature does not verify: the file was altered or is not self-signed.
    #[error(
        "the certificate's signature does not verify against its own key (tampered or not self-signed)"
    )]
    BadSignature,
    /// The certificate's validity ended.
    #[error("the certificate expired on {0}")]
    Expired(String),
    /// The certificate's validity has not started.
    #[error("the certificate is not valid before {0}")]
    NotYetValid(String),
    /// The certificate has no common name, or not a readable one.
    #[error("the certificate has no readable subject common name (CN)")]
    NoCommonName,
    /// The CN differs from the party id it is being registered under.
    #[error("certificate CN '{cn}' does not match party id '{party_id}'")]
    CnMismatch {
        /// The certificate's CN.
        cn: String,
        /// The id it was to be registered under.
        party_id: PartyId,
    },
    /// A party tried to register its own certificate as a peer.
    #[error("the certificate is this party's own certificate")]
    OwnCertificate,
    /// Building a certificate failed (internal).
    #[error("could not build the certificate: {0}")]
    Build(String),
    /// A registry row whose certificate is not the one its fingerprint names.
    #[error("the stored certificate does not match its stored fingerprint {0}")]
    NotRegistered(Fingerprint),
}

type Result<T> = std::result::Result<T, Error>;

/// What goes into our certificate.
#[derive(Clone, Debug)]
pub struct CertParams {
    /// The CN.
    pub party_id: PartyId,
    /// The subjectAltName (IP address or DNS name).
    pub host: Host,
    /// Start of validity.
    pub not_before: SystemTime,
    /// End of validity.
    pub not_after: SystemTime,
}

impl CertParams {
    /// Valid from five minutes ago (so a peer whose clock lags a little can still
    /// register) until `days` days from now.
    pub fn for_days(party_id: PartyId, host: Host, days: u32) -> CertParams {
        let now = SystemTime::now();
        CertParams {
            party_id,
            host,
            not_before: now - Duration::from_secs(300),
            not_after: now + Duration::from_secs(86_400 * u64::from(days.max(1))),
        }
    }
}

/// Our leaf profile: self-issued, CA:FALSE, digitalSignature + keyAgreement,
/// EKU serverAuth + clientAuth, SAN, SKI. The stock `cabf::Root` profile is a CA
/// profile and rejects a CN-only name.
struct SelfSignedLeaf {
    subject: Name,
    san: GeneralName,
}

impl BuilderProfile for SelfSignedLeaf {
    fn get_issuer(&self, subject: &Name) -> Name {
        subject.clone()
    }

    fn get_subject(&self) -> Name {
        self.subject.clone()
    }

    fn build_extensions(
        &self,
        spk: SubjectPublicKeyInfoRef<'_>,
        _issuer_spk: SubjectPublicKeyInfoRef<'_>,
        tbs: &TbsCertificate,
    ) -> x509_cert::builder::Result<Vec<Extension>> {
        let mut ext: Vec<Extension> = Vec::new();
        let basic = BasicConstraints {
            ca: false,
            path_len_constraint: None,
        };
        ext.push(basic.to_extension(tbs.subject(), &ext)?);
        let usage = KeyUsage(KeyUsages::DigitalSignature | KeyUsages::KeyAgreement);
        ext.push(usage.to_extension(tbs.subject(), &ext)?);
        let eku = ExtendedKeyUsage(vec![ID_KP_SERVER_AUTH, ID_KP_CLIENT_AUTH]);
        ext.push(eku.to_extension(tbs.subject(), &ext)?);
        let san = SubjectAltName(vec![self.san.clone()]);
        ext.push(san.to_extension(tbs.subject(), &ext)?);
        let ski = SubjectKeyIdentifier::try_from(spk)?;
        ext.push(ski.to_extension(tbs.subject(), &ext)?);
        Ok(ext)
    }
}

fn build_err(e: impl fmt::Display) -> Error {
    Error::Build(e.to_string())
}

/// A random positive serial of at most 127 bits (and at least 64 bits of entropy).
fn random_serial() -> Result<SerialNumber> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(build_err)?;
    bytes[0] &= 0x7f;
    bytes[0] |= 0x40; // fixed length, never zero, still positive
    SerialNumber::new(&bytes).map_err(build_err)
}

/// Builds our self-signed certificate (ecdsa-with-SHA256).
pub fn self_signed(key: &SigningKey, params: &CertParams) -> Result<PeerCertificate> {
    let subject: Name = format!("CN={}", params.party_id)
        .parse()
        .map_err(build_err)?;
    let san = match params.host.ip() {
        Some(std::net::IpAddr::V4(ip)) => {
            GeneralName::IpAddress(OctetString::new(ip.octets().to_vec()).map_err(build_err)?)
        }
        Some(std::net::IpAddr::V6(ip)) => {
            GeneralName::IpAddress(OctetString::new(ip.octets().to_vec()).map_err(build_err)?)
        }
        None => GeneralName::DnsName(Ia5String::new(params.host.as_str()).map_err(build_err)?),
    };
    let validity = Validity::new(
        Time::try_from(params.not_before).map_err(build_err)?,
        Time::try_from(params.not_after).map_err(build_err)?,
    );
    let spki = SubjectPublicKeyInfo::from_key(key.verifying_key()).map_err(build_err)?;
    let builder = CertificateBuilder::new(
        SelfSignedLeaf { subject, san },
        random_serial()?,
        validity,
        spki,
    )
    .map_err(build_err)?;
    let cert = builder.build::<_, DerSignature>(key).map_err(build_err)?;
    let der = cert.to_der().map_err(build_err)?;
    PeerCertificate::from_der(&der)
}

/// A certificate that parsed, has a P-256 key and a CN, is signed ecdsa-with-SHA256 and
/// verifies against its own key (checked here, or at registration for one read back
/// from the registry). Validity dates are checked separately ([`Self::check_validity`])
/// because `--allow-expired` may skip them.
#[derive(Clone)]
pub struct PeerCertificate {
    der: Vec<u8>,
    fingerprint: Fingerprint,
    common_name: String,
    not_before: SystemTime,
    not_after: SystemTime,
    public_key: p256::PublicKey,
}

impl fmt::Debug for PeerCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerCertificate")
            .field("common_name", &self.common_name)
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

impl PeerCertificate {
    /// Parses a PEM file that must hold exactly one `CERTIFICATE` block.
    pub fn from_pem(bytes: &[u8]) -> Result<PeerCertificate> {
        let blocks = pem::parse_many(bytes).map_err(|_| Error::NotPem)?;
        match blocks.as_slice() {
            [] => Err(Error::NotPem),
            [one] if one.tag() == "CERTIFICATE" => Self::from_der(one.contents()),
            [one] => Err(Error::WrongLabel(one.tag().to_owned())),
            many => Err(Error::TooManyBlocks(many.len())),
        }
    }

    /// Parses and checks DER, its self-signature included: for a certificate that comes
    /// from outside (registration, a roster, a TLS peer).
    pub fn from_der(der: &[u8]) -> Result<PeerCertificate> {
        Self::parse(der, true)
    }

    /// Parses and checks a certificate this party's registry holds, whose SHA-256
    /// fingerprint was stored with it as `fingerprint`: every check of
    /// [`PeerCertificate::from_der`] but the self-signature, which registration verified
    /// (docs/protocol.md, "Certificates"). A self-signature proves possession of the key
    /// once; verified again at every use it would guard nothing, since whoever can write
    /// the registry can sign a certificate of their own. The DER must hash to the stored
    /// fingerprint.
    pub fn from_registered_der(der: &[u8], fingerprint: &Fingerprint) -> Result<PeerCertificate> {
        if Fingerprint::of_der(der) != *fingerprint {
            return Err(Error::NotRegistered(*fingerprint));
        }
        Self::parse(der, false)
    }

    fn parse(der: &[u8], self_signed: bool) -> Result<PeerCertificate> {
        let cert = Certificate::from_der(der).map_err(|e| Error::Der(e.to_string()))?;
        let tbs = cert.tbs_certificate();
        let spki = tbs.subject_public_key_info();
        if spki.algorithm.oid != ID_EC_PUBLIC_KEY {
            return Err(Error::WrongKeyType(key_algorithm_name(&spki.algorithm.oid)));
        }
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.decode_as::<ObjectIdentifier>().ok());
        if curve != Some(SECP256R1) {
            return Err(Error::WrongCurve(
                curve.map_or_else(|| "(unnamed)".to_owned(), |c| curve_name(&c)),
            ));
        }
        let public_key = p256::PublicKey::from_sec1_bytes(spki.subject_public_key.raw_bytes())
            .map_err(|_| Error::Der("invalid P-256 public key point".into()))?;
        if cert.signature_algorithm().oid != ECDSA_WITH_SHA256 {
            return Err(Error::WrongSignatureAlgorithm(
                cert.signature_algorithm().oid.to_string(),
            ));
        }
        let signature = cert
            .signature()
            .as_bytes()
            .and_then(|b| DerSignature::from_bytes(b).ok())
            .ok_or(Error::BadSignature)?;
        if self_signed {
            let tbs_der = tbs.to_der().map_err(|e| Error::Der(e.to_string()))?;
            VerifyingKey::from(&public_key)
                .verify(&tbs_der, &signature)
                .map_err(|_| Error::BadSignature)?;
        }
        let common_name = tbs
            .subject()
            .common_name()
            .ok()
            .flatten()
            .map(|cn| cn.value().into_owned())
            .ok_or(Error::NoCommonName)?;
        let validity = tbs.validity();
        Ok(PeerCertificate {
            der: der.to_vec(),
            fingerprint: Fingerprint::of_der(der),
            common_name,
            not_before: validity.not_before.to_system_time(),
            not_after: validity.not_after.to_system_time(),
            public_key,
        })
    }

    /// Errors unless `now` is within notBefore..=notAfter.
    pub fn check_validity(&self, now: SystemTime) -> Result<()> {
        if now < self.not_before {
            return Err(Error::NotYetValid(crate::clock::format_time(unix_secs(
                self.not_before,
            ))));
        }
        if now > self.not_after {
            return Err(Error::Expired(crate::clock::format_time(unix_secs(
                self.not_after,
            ))));
        }
        Ok(())
    }

    /// The DER encoding.
    pub fn der(&self) -> &[u8] {
        &self.der
    }

    /// The PEM encoding (64-column lines, LF), as openssl writes it.
    pub fn to_pem(&self) -> String {
        let block = pem::Pem::new("CERTIFICATE", self.der.clone());
        pem::encode_config(
            &block,
            pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
        )
    }

    /// SHA-256 of the DER.
    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }

    /// The subject CN.
    pub fn common_name(&self) -> &str {
        &self.common_name
    }

    /// End of validity, seconds since the epoch.
    pub fn not_after_unix(&self) -> i64 {
        unix_secs(self.not_after)
    }

    /// The P-256 public key.
    pub fn public_key(&self) -> &p256::PublicKey {
        &self.public_key
    }
}

/// What a registration may waive (the command line's `--allow-expired`,
/// `--allow-cn-mismatch`). A roster waives nothing: [`RegistrationCheck::STRICT`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RegistrationCheck {
    /// Accept a certificate outside its validity period.
    pub allow_expired: bool,
    /// Accept a CN that differs from the party id.
    pub allow_cn_mismatch: bool,
}

impl RegistrationCheck {
    /// Every check on.
    pub const STRICT: RegistrationCheck = RegistrationCheck {
        allow_expired: false,
        allow_cn_mismatch: false,
    };
}

/// The checks a parsed certificate must pass before it is registered as `party_id`,
/// beyond what parsing already proved (PEM, one certificate, P-256, self-signature):
/// validity at `now`, CN equal to the party id, and not this party's own certificate
/// (`own`). `certificate register` and every roster member go through this one function.
/// Registry uniqueness (id, fingerprint) is checked by the registry's transaction.
pub fn check_registration(
    cert: &PeerCertificate,
    party_id: &PartyId,
    own: Option<&Fingerprint>,
    now: SystemTime,
    check: RegistrationCheck,
) -> Result<()> {
    if !check.allow_expired {
        cert.check_validity(now)?;
    }
    if cert.common_name() != party_id.as_str() && !check.allow_cn_mismatch {
        return Err(Error::CnMismatch {
            cn: cert.common_name().to_owned(),
            party_id: party_id.clone(),
        });
    }
    if own == Some(&cert.fingerprint()) {
        return Err(Error::OwnCertificate);
    }
    Ok(())
}

fn key_algorithm_name(oid: &ObjectIdentifier) -> String {
    match oid.to_string().as_str() {
        "1.2.840.113549.1.1.1" => "RSA".into(),
        "1.2.840.113549.1.1.10" => "RSA-PSS".into(),
        "1.3.101.112" => "Ed25519".into(),
        "1.3.101.113" => "Ed448".into(),
        "1.2.840.10040.4.1" => "DSA".into(),
        other => format!("unknown ({other})"),
    }
}

fn curve_name(oid: &ObjectIdentifier) -> String {
    match oid.to_string().as_str() {
        "1.3.132.0.34" => "P-384".into(),
        "1.3.132.0.35" => "P-521".into(),
        "1.3.132.0.10" => "secp256k1".into(),
        other => format!("unknown ({other})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::identity::PartyKey;

    fn make(id: &str, host: &str) -> (PartyKey, PeerCertificate) {
        let key = PartyKey::generate().expect("rng");
        let cert = self_signed(
            key.signing_key(),
            &CertParams::for_days(
                id.parse().expect("valid id"),
                host.parse().expect("valid host"),
                30,
            ),
        )
        .expect("build");
        (key, cert)
    }

    #[test]
    fn builds_and_reparses() {
        let (key, cert) = make("node_a", "127.0.0.1");
        let again = PeerCertificate::from_pem(cert.to_pem().as_bytes()).expect("parse");
        assert_eq!(again.common_name(), "node_a");
        assert_eq!(again.fingerprint(), cert.fingerprint());
        assert_eq!(
            *again.public_key(),
            p256::PublicKey::from(key.signing_key().verifying_key())
        );
        again.check_validity(SystemTime::now()).expect("valid now");
        assert!(matches!(
            again.check_validity(SystemTime::now() + Duration::from_secs(86_400 * 31)),
            Err(Error::Expired(_))
        ));
        assert!(matches!(
            again.check_validity(SystemTime::now() - Duration::from_secs(3600)),
            Err(Error::NotYetValid(_))
        ));
        let (_, dns) = make("r", "researcher.example.org");
        assert_eq!(dns.common_name(), "r");
    }

    #[test]
    fn tampering_is_detected() {
        let (_, cert) = make("node_a", "127.0.0.1");
        let mut der = cert.der().to_vec();
        let n = der.len();
        der[n - 5] ^= 0x01; // inside the signature
        assert!(matches!(
            PeerCertificate::from_der(&der),
            Err(Error::BadSignature) | Err(Error::Der(_))
        ));
    }

    /// A registered certificate is held to its stored fingerprint, not re-verified: the
    /// same DER under another fingerprint is refused; its key, curve and the rest are
    /// checked as for any certificate.
    #[test]
    fn a_registered_certificate_must_match_its_fingerprint() {
        let (key, cert) = make("node_a", "127.0.0.1");
        let (_, other) = make("node_b", "127.0.0.1");
        let again =
            PeerCertificate::from_registered_der(cert.der(), &cert.fingerprint()).expect("parse");
        assert_eq!(again.fingerprint(), cert.fingerprint());
        assert_eq!(
            *again.public_key(),
            p256::PublicKey::from(key.signing_key().verifying_key())
        );
        assert!(matches!(
            PeerCertificate::from_registered_der(other.der(), &cert.fingerprint()),
            Err(Error::NotRegistered(fp)) if fp == cert.fingerprint()
        ));
        // Not DER at all, under its own fingerprint: still refused.
        let junk = b"not a certificate";
        assert!(matches!(
            PeerCertificate::from_registered_der(junk, &Fingerprint::of_der(junk)),
            Err(Error::Der(_))
        ));
    }

    #[test]
    fn pem_shapes() {
        assert!(matches!(PeerCertificate::from_pem(b""), Err(Error::NotPem)));
        assert!(matches!(
            PeerCertificate::from_pem(&[0xff, 0x00, 0x13]),
            Err(Error::NotPem)
        ));
        let (_, cert) = make("a", "::1");
        let two = format!("{}{}", cert.to_pem(), cert.to_pem());
        assert!(matches!(
            PeerCertificate::from_pem(two.as_bytes()),
            Err(Error::TooManyBlocks(2))
        ));
    }
}
