//! Mutual TLS 1.3 pinned to the registry.
//!
//! - There is no CA and there are no webpki roots. Each side accepts exactly the
//!   certificates it was given from its own registry, compared by SHA-256 fingerprint,
//!   and maps the certificate to a party id.
//! - The verifiers still check the handshake signatures with the crypto provider, so a
//!   peer must hold the private key of the pinned certificate.
//! - Only TLS 1.3 with ECDSA P-256/SHA-256 handshake signatures is offered.

use std::collections::HashMap;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, ServerConfig,
    SignatureScheme,
};

use crate::net::error::Error;
use crate::party::{Fingerprint, PartyId};
use crate::pki::certificate::PeerCertificate;
use crate::pki::identity::{self, Identity};

type Result<T> = std::result::Result<T, Error>;

const SCHEMES: [SignatureScheme; 1] = [SignatureScheme::ECDSA_NISTP256_SHA256];

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The certificates one side accepts, by fingerprint, with the party each belongs to.
#[derive(Clone, Debug, Default)]
pub struct Pins {
    by_fp: HashMap<Fingerprint, PartyId>,
}

impl Pins {
    /// Pins a registered certificate to its party id.
    pub fn insert(&mut self, id: PartyId, cert: &PeerCertificate) {
        self.by_fp.insert(cert.fingerprint(), id);
    }

    /// The party a presented certificate belongs to.
    pub fn party_of(&self, der: &[u8]) -> Option<&PartyId> {
        self.by_fp.get(&Fingerprint::of_der(der))
    }
}

fn check_pinned<'a>(pins: &'a Pins, der: &[u8]) -> std::result::Result<&'a PartyId, rustls::Error> {
    let id = pins.party_of(der).ok_or(rustls::Error::InvalidCertificate(
        CertificateError::ApplicationVerificationFailure,
    ))?;
    // Registered certificates were checked at registration; time can have passed since.
    let cert = PeerCertificate::from_der(der)
        .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
    cert.check_validity(std::time::SystemTime::now())
        .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::Expired))?;
    Ok(id)
}

/// Server side: accepts client certificates in `pins` only.
#[derive(Debug)]
struct PinnedClients {
    pins: Arc<Pins>,
    algs: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for PinnedClients {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> std::result::Result<ClientCertVerified, rustls::Error> {
        check_pinned(&self.pins, end_entity).map(|_| ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        SCHEMES.to_vec()
    }
}

/// Client side: accepts the one pinned server certificate.
#[derive(Debug)]
struct PinnedServer {
    pins: Pins,
    algs: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for PinnedServer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        // The name is not checked: the certificate itself is pinned.
        check_pinned(&self.pins, end_entity).map(|_| ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        SCHEMES.to_vec()
    }

    fn root_hint_subjects(&self) -> Option<&[DistinguishedName]> {
        Some(&[])
    }
}

fn own_chain(me: &Identity) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    let key = me
        .key
        .to_pkcs8_der()
        .map_err(|e: identity::Error| Error::OwnIdentity(e.to_string()))?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.to_vec()));
    Ok((
        vec![CertificateDer::from(me.certificate.der().to_vec())],
        key,
    ))
}

/// TLS 1.3 server config that requires a client certificate from `pins`.
pub fn server_config(me: &Identity, pins: Pins) -> Result<Arc<ServerConfig>> {
    let provider = provider();
    let verifier = Arc::new(PinnedClients {
        pins: Arc::new(pins),
        algs: provider.signature_verification_algorithms,
    });
    let (chain, key) = own_chain(me)?;
    let config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| Error::OwnIdentity(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| Error::OwnIdentity(e.to_string()))?;
    Ok(Arc::new(config))
}

/// TLS 1.3 client config that accepts only the server certificate in `pins`.
pub fn client_config(me: &Identity, pins: Pins) -> Result<Arc<ClientConfig>> {
    let provider = provider();
    let verifier = Arc::new(PinnedServer {
        pins,
        algs: provider.signature_verification_algorithms,
    });
    let (chain, key) = own_chain(me)?;
    let config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| Error::OwnIdentity(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(chain, key)
        .map_err(|e| Error::OwnIdentity(e.to_string()))?;
    Ok(Arc::new(config))
}
