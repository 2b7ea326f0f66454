//! Transport failures, shared by the TLS set-up and the framed channel.

use std::io;

use crate::net::frame::WireError;

/// Transport failures, each saying whose fault it is.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Our own key or certificate could not be loaded into TLS (our side).
    #[error("cannot use our key or certificate for TLS: {0}")]
    OwnIdentity(String),
    /// The handshake failed (usually the peer's certificate is not pinned here, or ours
    /// is not pinned there).
    #[error("TLS handshake with {peer} failed: {source}")]
    Handshake {
        /// Who we talked to.
        peer: String,
        /// What rustls said.
        source: rustls::Error,
    },
    /// The peer sent a TLS alert or broken TLS records after the handshake.
    #[error("TLS error from {peer}: {source}")]
    Tls {
        /// Who.
        peer: String,
        /// What rustls said.
        source: rustls::Error,
    },
    /// The peer broke the framing rules (the peer's fault).
    #[error("{peer} sent a bad frame: {source}")]
    Wire {
        /// Who.
        peer: String,
        /// What was wrong.
        source: WireError,
    },
    /// The peer closed the connection.
    #[error("{peer} closed the connection")]
    Closed {
        /// Who.
        peer: String,
    },
    /// Socket failure.
    #[error("network error with {peer} while {action}: {source}")]
    Io {
        /// Who.
        peer: String,
        /// What we were doing.
        action: &'static str,
        /// The error.
        source: io::Error,
    },
    /// No answer in time.
    #[error("{peer} did not answer within {secs} s")]
    Timeout {
        /// Who.
        peer: String,
        /// The limit.
        secs: u64,
    },
}

impl Error {
    /// The rustls error behind a handshake or TLS failure, if any.
    pub fn tls(&self) -> Option<&rustls::Error> {
        match self {
            Error::Handshake { source, .. } | Error::Tls { source, .. } => Some(source),
            _ => None,
        }
    }
}
