//! Hints: what a user can do about each library error. The library's errors say what
//! went wrong; only the command line knows about flags and commands, so the advice that
//! names them lives here.

/// The `hint:` line printed under an error.
pub trait Hint {
    /// What the user can do about it, if anything useful can be said.
    fn hint(&self) -> Option<String>;
}

mod identity {
    use super::Hint;
    use secagg::pki::identity::Error;

    impl Hint for Error {
        fn hint(&self) -> Option<String> {
            Some(match self {
                Error::Party(e) => return e.hint(),
                Error::Exists { .. } => "keep the current identity, or pass --force to replace it (the old files are kept as .bak)".into(),
                Error::NoIdentity { .. } => "run 'secagg certificate generate' first (or pass --home to choose another home)".into(),
                Error::Io { .. } => "check that the directory exists and is writable by you".into(),
                Error::BadConfig { .. } => "fix the file by hand (see etc/config.example.toml) or regenerate with 'secagg certificate generate --force'".into(),
                Error::BadKey { .. } | Error::BadOwnCertificate { .. } => "regenerate the identity with 'secagg certificate generate --force' and re-run the exchange with your peers".into(),
                Error::Rng | Error::KeyEncoding => return None,
                Error::Certificate(e) => return e.hint(),
            })
        }
    }
}

mod certificate {
    use super::Hint;
    use secagg::pki::certificate::Error;

    impl Hint for Error {
        fn hint(&self) -> Option<String> {
            Some(match self {
                Error::NotPem | Error::TooManyBlocks(_) | Error::Der(_) => {
                    "pass the certificate PEM exactly as 'secagg certificate registration-instructions' printed it".into()
                }
                Error::WrongLabel(_) => {
                    "this looks like a key, not a certificate; never share private keys. Ask the party for its certificate".into()
                }
                Error::WrongKeyType(_) | Error::WrongCurve(_) | Error::WrongSignatureAlgorithm(_) => {
                    "ask the party to run 'secagg certificate generate' (or openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256)".into()
                }
                Error::BadSignature => {
                    "the file was modified in transit; get a fresh copy and compare fingerprints over a trusted channel".into()
                }
                Error::Expired(_) => {
                    "ask the party to renew with 'secagg certificate renew' and send the new instructions (or pass --allow-expired)".into()
                }
                Error::NotYetValid(_) => {
                    "check this machine's clock and the party's; or wait until the certificate becomes valid".into()
                }
                Error::NoCommonName => "ask the party to run 'secagg certificate generate'".into(),
                Error::CnMismatch { cn, .. } => format!(
                    "register it as --party-id {cn} if that is the party you mean, or pass --allow-cn-mismatch"
                ),
                Error::OwnCertificate => "register the certificates of your peers, not your own".into(),
                Error::NotRegistered(_) => "something edited the registry: delete the entry and register the party's certificate again".into(),
                Error::Build(_) => return None,
            })
        }
    }
}

mod registry {
    use super::Hint;
    use secagg::pki::registry::Error;

    impl Hint for Error {
        fn hint(&self) -> Option<String> {
            Some(match self {
                Error::Corrupt { path, .. } => format!(
                    "secagg will not overwrite it; restore {} from a backup or move it aside to start an empty registry",
                    path.display()
                ),
                Error::TooNew { .. } => "upgrade secagg".into(),
                Error::ReadOnly { .. } => "make the home directory and registry writable, or pass --home with a writable directory".into(),
                Error::Sqlite { .. } => return None,
                Error::DuplicateId(id) => format!(
                    "pass --upsert to replace the registration of '{id}', or delete it first with 'secagg certificate delete --party-id {id}'"
                ),
                Error::DuplicateFingerprint { existing, .. } => format!(
                    "one certificate belongs to one party; delete '{existing}' first if it was registered under the wrong id"
                ),
                Error::UnknownParty(_) => "run 'secagg certificate list' to see registered parties".into(),
                Error::BadRow { .. } => "delete and re-register that party".into(),
                Error::MaskReuse { .. } => "keep the masked file you made for that round, or ask the researcher for a new --round number".into(),
                Error::RoundNotFresh { last, .. } => format!(
                    "ask the researcher for a round number above {last}; 'secagg round list' shows this party's rounds"
                ),
                Error::AlreadySigned { .. } | Error::AlreadyRevealed { .. } => {
                    "this home already took part in that round (was it started twice?); ask the researcher for a new round".into()
                }
                Error::InputReleased { .. } => {
                    "train a new update (or pass a different --input); the same update is never released twice".into()
                }
                Error::LegacyDigestMissing { .. } => {
                    "this is a bug in secagg; please report it with the command you ran".into()
                }
            })
        }
    }
}

mod masked {
    use super::Hint;
    use secagg::files::masked::Error;

    impl Hint for Error {
        fn hint(&self) -> Option<String> {
            Some(match self {
                Error::AfterJournal { source, .. } => {
                    let fix = source.hint().map(|h| format!("{h}; then ")).unwrap_or_default();
                    format!(
                        "{fix}train a new update for a new --round: the same update is never released twice"
                    )
                }
                Error::Io { .. } => "check the path and permissions".into(),
                Error::Malformed { .. } => {
                    "pass files written by 'secagg mask'; ask the node to send it again".into()
                }
                Error::BadSignature { sender, .. } => format!(
                    "do not use this file; ask '{sender}' to send it again, and check its registered certificate"
                ),
                Error::OldVersion { .. } => {
                    "ask the node to mask a new update with this secagg version, in a new round".into()
                }
                Error::NoResearcher => {
                    "register the researcher's certificate with 'secagg certificate register --role researcher ...'".into()
                }
                Error::ManyResearchers(..) => "pass --researcher ID to say which one the file is for".into(),
                Error::UnknownResearcher(_) => {
                    "see 'secagg certificate list' for the researchers registered here".into()
                }
                Error::NotANode(_) => "run 'secagg mask' in a node's home (see --home)".into(),
                Error::NotParticipant(_) => "list this party's id in --participants".into(),
                Error::DuplicateParticipant(_) => "list each participant once".into(),
                Error::UnknownParticipant { id, .. } => format!(
                    "register '{id}' as a node first: ask it for 'secagg certificate registration-instructions'"
                ),
                Error::BadWeight { .. } => {
                    "pass --weight as the number of samples trained on, at most --max-weight".into()
                }
                Error::Tensor(e) => return e.hint(),
                Error::Quantize(e) => return e.hint(),
                Error::Registry(e) => return e.hint(),
                Error::Certificate { id, .. } => format!("delete and re-register '{id}'"),
                Error::PeerExpired { id, .. } => format!(
                    "ask '{id}' to renew its certificate ('secagg certificate generate --force') and re-register it here with 'secagg certificate register --upsert'"
                ),
                Error::Sign => return None,
            })
        }
    }
}

mod aggregate {
    use super::Hint;
    use secagg::files::aggregate::Error;

    impl Hint for Error {
        fn hint(&self) -> Option<String> {
            Some(match self {
                Error::NoInputs => "pass the masked files: secagg aggregate a.masked b.masked ... --out mean.npy".into(),
                Error::Missing(_) => "collect every participant's file; without it the round fails, and the next round (a new --round, with new updates) can leave that node out".into(),
                Error::Stranger { .. } | Error::Duplicate { .. } => "pass exactly one file per participant of the round".into(),
                Error::OtherResearcher { .. } => "only that researcher can aggregate it; ask the nodes to mask new updates for you (secagg mask --researcher YOUR-ID) in a new round".into(),
                Error::Mismatch { .. } => "all files must come from the same federation, round, researcher, participants and parameters".into(),
                Error::Changed => "make sure nothing writes to the masked files while aggregate reads them, then run it again".into(),
                Error::Registry(e) => return e.hint(),
                Error::Sum(e) => return e.hint(),
                Error::Masked(e) => return e.hint(),
                Error::Quantize(e) => return e.hint(),
            })
        }
    }
}

mod tensor {
    use super::Hint;
    use secagg::files::tensor::Error;

    impl Hint for Error {
        fn hint(&self) -> Option<String> {
            Some(match self {
                Error::UnknownContainer(_) => {
                    "save the update with numpy.save (.npy) or safetensors (.safetensors)".into()
                }
                Error::Io { .. } => "check the path and permissions".into(),
                Error::Invalid { .. } => {
                    "re-export the update; Fortran-order arrays need numpy.ascontiguousarray first"
                        .into()
                }
                Error::UnsupportedDtype { .. } => {
                    "convert the update to float32 or float64 before masking".into()
                }
            })
        }
    }
}

mod quantize {
    use super::Hint;
    use secagg::secagg::quantize::{self, Error};

    impl Hint for Error {
        fn hint(&self) -> Option<String> {
            match self {
                Error::BadParam(_) => {
                    Some("see 'secagg mask --help' for the allowed ranges".into())
                }
                Error::ClipOutOfRange { .. } => Some(format!(
                    "pass --clip from {:e} to {:e}: about the largest magnitude a coordinate of the update should have",
                    quantize::MIN_CLIP,
                    quantize::MAX_CLIP
                )),
                Error::BitsOutOfRange { .. } => Some(format!(
                    "pass --bits from {} to {} (16 is a good default)",
                    quantize::MIN_BITS,
                    quantize::MAX_BITS
                )),
                Error::Overflow {
                    max_bits,
                    max_weight_fit,
                    ..
                } => Some(format!(
                    "lower --bits to {max_bits} or less, or lower --max-weight to {max_weight_fit} or less (weights are sample counts; they can be scaled down), or use fewer nodes per round"
                )),
                Error::NonFinite(_) => {
                    Some("fix the update: training produced NaN or infinity".into())
                }
            }
        }
    }
}

mod round {
    use super::Hint;
    use secagg::party::Role;
    use secagg::round::Error;
    use secagg::round::node::Error as NodeError;

    impl Hint for Error {
        fn hint(&self) -> Option<String> {
            Some(match self {
                Error::Identity(e) => return e.hint(),
                Error::Registry(e) => return e.hint(),
                Error::Masked(e) => return e.hint(),
                Error::Tensor(e) => return e.hint(),
                Error::Quantize(e) => return e.hint(),
                Error::Sum(e) => return e.hint(),
                Error::Transport(e) => return super::network::transport(e),
                Error::Node(NodeError::Refused { .. }) => {
                    "nothing of this node's was used; ask the researcher for a round within this node's policy, or change the policy ([policy] in config.toml, or the round join flags)".into()
                }
                Error::Node(NodeError::Misbehaviour { .. }) => {
                    "the round stopped before this node revealed anything it should not; tell the federation who misbehaved".into()
                }
                Error::Node(NodeError::BelowThreshold { .. } | NodeError::Stopped { .. }) => {
                    "nothing was revealed; join the next round when enough nodes are available".into()
                }
                Error::Node(NodeError::Excluded) => {
                    "this update counts as released; train a new one for the next round".into()
                }
                Error::Node(NodeError::Internal { .. }) => {
                    "report it with the output of 'secagg --version'".into()
                }
                Error::Researcher(_) => {
                    "nothing was revealed; run a new round (next --round number) when enough nodes are available".into()
                }
                Error::WrongRole(Role::Node, _) => {
                    "run 'round serve' in the researcher's home (--home)".into()
                }
                Error::WrongRole(Role::Researcher, _) => {
                    "run 'round join' in a node's home (--home)".into()
                }
                Error::Setup(_) => "see 'secagg round serve --help' / 'secagg round join --help'".into(),
                Error::Listen { .. } => {
                    "pass --listen with a local address and a free port, e.g. --listen 0.0.0.0:7000".into()
                }
                Error::NoResearcher => {
                    "register the researcher ('secagg federation import' or 'secagg certificate register --role researcher ...')".into()
                }
                Error::ManyResearchers(..) => "say which with --researcher ID".into(),
                Error::UnknownResearcher(_) => "see 'secagg certificate list'".into(),
                Error::Unreachable { reason, .. } => super::network::unreachable(reason),
                Error::CertificateRefused { .. } => {
                    "ask the researcher to register this node's certificate with role node and to name this node in --nodes".into()
                }
                Error::Protocol { .. } => {
                    "check that both sides run the same secagg version; report it if they do".into()
                }
                Error::Aborted(_) => "see the researcher's log; a new round needs a new --round number".into(),
                Error::Output(_) => "pass --force to replace it, or choose another --out".into(),
            })
        }
    }
}

mod roster {
    use super::Hint;
    use secagg::pki::roster::Error;

    impl Hint for Error {
        fn hint(&self) -> Option<String> {
            Some(match self {
                Error::BadName(_) => "federation names look like 'study-42'".into(),
                Error::Io { .. } => "check the path and permissions".into(),
                Error::TooLarge { .. } | Error::Malformed(_) | Error::UnknownAlgorithm(_) => {
                    "pass the roster file exactly as 'secagg federation create' wrote it".into()
                }
                Error::TooManyMembers(_) => "split the parties into several federations".into(),
                Error::NoMembers => "pass at least one node's registration instructions".into(),
                Error::Party(e) => return e.hint(),
                Error::Member { id, .. } => format!(
                    "nothing was registered; ask '{id}' for fresh registration instructions ('secagg certificate registration-instructions', or 'certificate renew' if it expired)"
                ),
                Error::ResearcherCertificate(_) => {
                    "ask the researcher for a new roster; its certificate must be valid (it can run 'secagg certificate renew')".into()
                }
                Error::DuplicateId(_) | Error::DuplicateFingerprint { .. } => {
                    "pass each party's instructions once; two parties never share an id or a certificate".into()
                }
                Error::MemberNotNode(_) | Error::ResearcherAsMember(_) => {
                    "pass only the nodes' instructions; the researcher is the roster's signer".into()
                }
                Error::BadSignature => {
                    "do not import it: get the roster again from the researcher and check its fingerprint over a trusted channel".into()
                }
                Error::WrongKey | Error::Sign => return None,
                Error::FingerprintMismatch { .. } => {
                    "do not import it: the file may have been replaced in transit, or you have another version; get it again and re-check the fingerprint with the researcher".into()
                }
                Error::OwnLineNotOurs { .. } | Error::OwnCertificateElsewhere { .. } => {
                    "do not import it: tell the researcher the roster does not list your certificate ('secagg certificate registration-instructions' shows yours)".into()
                }
                Error::NotAMember(_) => {
                    "ask the researcher to add this party (send it your registration instructions)".into()
                }
                Error::OwnRoster => "import it at the nodes, not at the researcher".into(),
                Error::NeedsFingerprint { .. } => {
                    "check the roster fingerprint with the researcher over a trusted channel, then pass --fingerprint FP".into()
                }
                Error::Rollback { .. } => "get the newest roster from the researcher".into(),
                Error::Equivocation { .. } => {
                    "do not import it: the researcher signed two different rosters with one version number; ask the researcher why".into()
                }
                Error::DifferentResearcher { .. } => {
                    "do not import it; a federation keeps its researcher's key. A new researcher key needs a new federation name".into()
                }
                Error::BadInstructions(_) | Error::InstructionsFingerprint { .. } | Error::InstructionsCertificate(_) => {
                    "pass the file exactly as the party's 'secagg certificate registration-instructions' printed it (text or --json)".into()
                }
            })
        }
    }
}

mod federation {
    use super::Hint;
    use secagg::pki::federation::Error;
    use secagg::pki::registry::Error as RegistryError;

    impl Hint for Error {
        fn hint(&self) -> Option<String> {
            Some(match self {
                Error::Registry(RegistryError::DuplicateId(id)) => format!(
                    "nothing was registered; '{id}' is registered here with another certificate, outside this federation: if the roster's is right, delete it first with 'secagg certificate delete --party-id {id}'"
                ),
                Error::Registry(RegistryError::DuplicateFingerprint { existing, .. }) => format!(
                    "nothing was registered; this certificate is registered here as '{existing}': delete that registration first if it was made under the wrong id"
                ),
                Error::Registry(e) => return e.hint(),
                Error::Changed(_) => "run the command again".into(),
                Error::BadRow { .. } => return None,
            })
        }
    }
}

/// What to check when the network fails: connection refused, timed out, TLS refused.
/// Public to the CLI so every round command (and protocol 2) gives the same advice.
pub(crate) mod network {
    use secagg::net::error::Error;
    use std::io::ErrorKind;

    /// Nobody listens at the registered address.
    pub(crate) const REFUSED: &str = "nothing is listening there: check that the other side is running ('secagg round serve' on the researcher) and that the ip and port registered here for it are right ('secagg certificate list')";
    /// No answer in time.
    pub(crate) const TIMED_OUT: &str = "no answer in time: check the ip and port registered here for the other side ('secagg certificate list'), that it is running, and that no firewall drops the connection";
    /// The TLS handshake was refused.
    pub(crate) const TLS_REFUSED: &str = "the TLS handshake was refused: both sides must have registered each other ('secagg certificate register' with the other's certificate, with the right role); compare the fingerprints in 'secagg certificate list' on both sides";

    /// The hint for a transport failure.
    pub(crate) fn transport(e: &Error) -> Option<String> {
        match e {
            Error::Io { source, .. } => io_kind(source.kind()).map(str::to_owned),
            Error::Timeout { .. } => Some(TIMED_OUT.into()),
            Error::Handshake { .. } => Some(TLS_REFUSED.into()),
            Error::Tls { source, .. } if is_refusal(source) => Some(TLS_REFUSED.into()),
            Error::Tls { .. }
            | Error::OwnIdentity(_)
            | Error::Wire { .. }
            | Error::Closed { .. } => None,
        }
    }

    /// The hint for an I/O error kind on a connection, if it is a network failure.
    pub(crate) fn io_kind(kind: ErrorKind) -> Option<&'static str> {
        match kind {
            ErrorKind::ConnectionRefused
            | ErrorKind::HostUnreachable
            | ErrorKind::NetworkUnreachable
            | ErrorKind::AddrNotAvailable => Some(REFUSED),
            ErrorKind::TimedOut | ErrorKind::WouldBlock => Some(TIMED_OUT),
            ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted => Some(TLS_REFUSED),
            _ => None,
        }
    }

    /// The hint for a failure to reach a peer, from its (OS-worded) reason.
    pub(crate) fn unreachable(reason: &str) -> String {
        let r = reason.to_ascii_lowercase();
        if r.contains("timed out") || r.contains("did not answer") {
            TIMED_OUT.into()
        } else if r.contains("certificate") || r.contains("handshake") || r.contains("alert") {
            TLS_REFUSED.into()
        } else {
            REFUSED.into()
        }
    }

    fn is_refusal(e: &rustls::Error) -> bool {
        matches!(
            e,
            rustls::Error::AlertReceived(_)
                | rustls::Error::InvalidCertificate(_)
                | rustls::Error::NoCertificatesPresented
        )
    }
}

mod party {
    use super::Hint;
    use secagg::party::Error;

    impl Hint for Error {
        fn hint(&self) -> Option<String> {
            Some(match self {
                Error::BadPartyId(_) => "party ids look like 'hospital-a' or 'node_1f3c...'".into(),
                Error::BadRole(_) => "pass --role node or --role researcher".into(),
                Error::BadHost(_) => "pass the address peers use to reach this party, e.g. --ip 10.0.0.5 or --ip node-a.example.org".into(),
                Error::BadPort(_) => "pass --port with a value from 1 to 65535".into(),
                Error::BadFingerprint(_) => {
                    "copy the fingerprint from the party's registration instructions".into()
                }
            })
        }
    }
}

mod sum {
    use super::Hint;
    use secagg::secagg::sum::Error;

    impl Hint for Error {
        fn hint(&self) -> Option<String> {
            match self {
                Error::NoInputs => Some(
                    "pass the masked files: secagg aggregate a.masked b.masked ... --out mean.npy"
                        .into(),
                ),
                Error::BadWeight(_) => Some(
                    "re-run the round; a node may have used a weight above --max-weight".into(),
                ),
                Error::OutOfRange(_) => Some(
                    "no mean was written; ask the nodes to check their updates, then run a new round".into(),
                ),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Hint;
    use secagg::net::error::Error as Transport;
    use std::io;

    fn io_err(kind: io::ErrorKind) -> secagg::round::Error {
        secagg::round::Error::Transport(Transport::Io {
            peer: "researcher".into(),
            action: "connecting",
            source: io::Error::from(kind),
        })
    }

    #[test]
    fn connection_refused_says_check_the_address_and_that_the_other_side_runs() {
        let hint = io_err(io::ErrorKind::ConnectionRefused)
            .hint()
            .expect("hint");
        assert!(
            hint.contains("running") && hint.contains("ip and port registered"),
            "{hint}"
        );
        assert!(hint.contains("secagg certificate list"), "{hint}");
    }

    #[test]
    fn timeouts_say_check_the_address_the_peer_and_the_firewall() {
        for e in [
            io_err(io::ErrorKind::TimedOut),
            secagg::round::Error::Transport(Transport::Timeout {
                peer: "node-a".into(),
                secs: 30,
            }),
        ] {
            let hint = e.hint().expect("hint");
            assert!(hint.starts_with("no answer in time"), "{hint}");
            assert!(
                hint.contains("firewall") && hint.contains("registered"),
                "{hint}"
            );
        }
    }

    #[test]
    fn tls_refusals_say_both_sides_must_register_each_other() {
        for e in [
            secagg::round::Error::Transport(Transport::Handshake {
                peer: "researcher".into(),
                source: rustls::Error::NoCertificatesPresented,
            }),
            secagg::round::Error::Transport(Transport::Tls {
                peer: "researcher".into(),
                source: rustls::Error::AlertReceived(rustls::AlertDescription::BadCertificate),
            }),
            io_err(io::ErrorKind::ConnectionReset),
        ] {
            let hint = e.hint().expect("hint");
            assert!(hint.contains("registered each other"), "{hint}");
        }
    }

    #[test]
    fn unreachable_hints_follow_the_reason() {
        let at = |reason: &str| {
            secagg::round::Error::Unreachable {
                id: "researcher".parse().expect("id"),
                addr: "127.0.0.1:1".into(),
                reason: reason.into(),
            }
            .hint()
            .expect("hint")
        };
        assert!(at("Connection refused (os error 111)").contains("nothing is listening"));
        assert!(at("connection timed out").starts_with("no answer in time"));
    }
    use secagg::secagg::quantize::{Plan, QuantParams};

    #[test]
    fn overflow_hint_names_the_knobs() {
        let huge = QuantParams {
            clip: 1.0,
            bits: 32,
            max_weight: u64::MAX / 2,
        };
        let err = Plan::new(huge, 10).expect_err("overflow");
        let hint = err.hint().expect("hint");
        assert!(
            hint.contains("--bits") && hint.contains("--max-weight"),
            "{hint}"
        );
    }
}
