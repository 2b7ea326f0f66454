//! Everything `round join` does before and around the protocol: the local checks that
//! use nothing up (input, weight, output), choosing and reaching the researcher with
//! backoff, and reading its frames.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use super::node::{Input, Peer};
use super::{Error, MAX_ELEMENTS, Result};
use crate::files::{job, tensor};
use crate::net::channel::Channel;
use crate::net::error as transport;
use crate::net::frame::Message;
use crate::party::{Fingerprint, PartyId, Role};
use crate::pki::certificate::PeerCertificate;
use crate::pki::registry::{NoResearcher, Registry};
use crate::round::messages::{self, Message2};
use crate::text::sanitize;

/// The next protocol-2 message, within the round's deadline.
pub(super) fn recv(ch: &mut Channel, deadline: Instant) -> Result<Message2> {
    let left = deadline.saturating_duration_since(Instant::now());
    match ch.recv_within(left)? {
        Message::Protocol { kind, payload } => {
            messages::decode(kind, &payload).map_err(|e| Error::Protocol {
                peer: ch.peer().to_string(),
                what: e.to_string(),
            })
        }
        Message::Abort(a) => Err(Error::Aborted(sanitize(&a.reason).into_owned())),
        other => Err(Error::Protocol {
            peer: ch.peer().to_string(),
            what: format!("sent an unexpected {} frame", other.name()),
        }),
    }
}

/// The whole input, validated before any connection: it parses, every value is
/// finite, its weight is usable, it was never released, and the output can be written.
/// What the local checks look at.
pub(super) struct LocalChecks<'a> {
    /// The update.
    pub(super) input: &'a std::path::Path,
    /// Its weight.
    pub(super) weight: u64,
    /// Whether the policy fixes the weight at 1.
    pub(super) fixed_weight: bool,
    /// Where the mean goes.
    pub(super) out: Option<&'a std::path::Path>,
    /// Whether `out` may be replaced.
    pub(super) force: bool,
}

/// Also the digests of the input's blocks as read ([`job::inspect_input_blocks`]), which
/// the round holds its masking to.
pub(super) fn validate_input(
    reg: &Registry,
    p: &LocalChecks<'_>,
) -> Result<(Input, Vec<[u8; 32]>)> {
    if p.weight == 0 {
        return Err(Error::Setup("the weight must be at least 1".into()));
    }
    if p.fixed_weight && p.weight != 1 {
        return Err(Error::Setup(
            "this node's policy is fixed-weight: its weight must be 1".into(),
        ));
    }
    if let Some(out) = p.out {
        check_out(out, p.force)?;
    }
    // Version-1 releases in the registry: digest both ways (docs/protocol.md, gap 18).
    let (summary, blocks) = job::inspect_input_blocks(p.input, reg.legacy_releases()?)?;
    if summary.values == 0 || summary.values > MAX_ELEMENTS {
        return Err(Error::Setup(format!(
            "the update has {} values (allowed 1..={MAX_ELEMENTS})",
            summary.values
        )));
    }
    if reg.input_released(&summary.digest)? {
        return Err(Error::Setup(format!(
            "{} was already released in an earlier round or masked file; the same update is never released twice",
            p.input.display()
        )));
    }
    Ok((
        Input {
            layout: summary.layout,
            digest: summary.digest,
            weight: p.weight,
        },
        blocks,
    ))
}

/// An output path is usable: its directory exists, and it does not exist yet (unless
/// `force`).
pub fn check_out(out: &std::path::Path, force: bool) -> Result<()> {
    let dir = match out.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    if !dir.is_dir() {
        return Err(Error::Output(format!(
            "cannot write {}: directory {} does not exist",
            out.display(),
            dir.display()
        )));
    }
    if out.exists() && !force {
        return Err(Error::Output(format!("{} already exists", out.display())));
    }
    tensor::container_of(out)?;
    let probe = crate::atomic::stage(out, false)
        .map_err(|e| Error::Output(format!("cannot write in {}: {e}", dir.display())))?;
    drop(probe);
    Ok(())
}

/// Every node registered here whose certificate is valid now, by fingerprint.
pub(super) fn registered_nodes(reg: &Registry) -> Result<BTreeMap<Fingerprint, Peer>> {
    let now = SystemTime::now();
    let mut out = BTreeMap::new();
    for peer in reg.list()? {
        if peer.role != Role::Node {
            continue;
        }
        let Some((_, der)) = reg.get(&peer.party_id)? else {
            continue;
        };
        let Ok(cert) = PeerCertificate::from_der(&der) else {
            continue;
        };
        if cert.check_validity(now).is_err() {
            continue; // an expired peer is not a registered peer for a round
        }
        out.insert(
            cert.fingerprint(),
            Peer {
                id: peer.party_id,
                key: *cert.public_key(),
            },
        );
    }
    Ok(out)
}

/// The researcher to join: its id, address and certificate.
pub(super) fn researcher(
    reg: &Registry,
    chosen: Option<&PartyId>,
) -> Result<(PartyId, String, PeerCertificate)> {
    let peer = reg.researcher(chosen)?.map_err(|e| match e {
        NoResearcher::None => Error::NoResearcher,
        NoResearcher::Many(ids) => {
            let ids: Vec<&str> = ids.iter().map(PartyId::as_str).collect();
            Error::ManyResearchers(ids.len(), ids.join(", "))
        }
        NoResearcher::Unknown(id) => Error::UnknownResearcher(id),
    })?;
    let Some((_, der)) = reg.get(&peer.party_id)? else {
        return Err(Error::UnknownResearcher(peer.party_id));
    };
    let cert = PeerCertificate::from_der(&der).map_err(|e| Error::Protocol {
        peer: peer.party_id.to_string(),
        what: format!("registered certificate is unusable: {e}"),
    })?;
    cert.check_validity(SystemTime::now())
        .map_err(|e| Error::Protocol {
            peer: peer.party_id.to_string(),
            what: format!("registered certificate is unusable: {e}"),
        })?;
    let addr = match peer.ip.ip() {
        Some(std::net::IpAddr::V6(ip)) => format!("[{ip}]:{}", peer.port),
        _ => format!("{}:{}", peer.ip.as_str(), peer.port),
    };
    Ok((peer.party_id, addr, cert))
}

/// Connects, authenticates and reads the announcement, retrying with backoff while the
/// researcher is not up or turns connections away (it caps pending handshakes); a TLS
/// refusal is final.
pub(super) fn open(
    rid: &PartyId,
    addr: &str,
    config: std::sync::Arc<rustls::ClientConfig>,
    deadline: Instant,
    waiting: &mut impl FnMut(&str, u64),
) -> Result<(Channel, messages::Announce)> {
    let host = addr
        .rsplit_once(':')
        .map_or(addr, |(h, _)| h)
        .trim_matches(['[', ']'])
        .to_string();
    let mut backoff = Duration::from_millis(250);
    loop {
        let sock = connect(rid, addr, deadline, waiting)?;
        let left = deadline.saturating_duration_since(Instant::now());
        let attempt = Channel::connect(
            sock,
            config.clone(),
            &host,
            format!("researcher {rid}"),
            left,
        )
        .map_err(Error::from)
        .and_then(|mut ch| {
            let first = recv(&mut ch, deadline)?;
            Ok((ch, first))
        });
        let e = match attempt {
            Ok((ch, Message2::Announce(a))) => return Ok((ch, a)),
            Ok((_, other)) => {
                return Err(protocol(
                    rid,
                    format!("opened with a {} message", other.name()),
                ));
            }
            Err(e) => refused_or(e, rid),
        };
        let retry = matches!(
            &e,
            Error::Transport(transport::Error::Closed { .. } | transport::Error::Io { .. })
        );
        let left = deadline.saturating_duration_since(Instant::now());
        if !retry || left <= backoff {
            return Err(e);
        }
        waiting(addr, left.as_secs());
        std::thread::sleep(backoff);
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// Connects, retrying with backoff while the researcher is not listening yet.
pub(super) fn connect(
    id: &PartyId,
    addr: &str,
    deadline: Instant,
    waiting: &mut impl FnMut(&str, u64),
) -> Result<TcpStream> {
    let unreachable = |reason: String| Error::Unreachable {
        id: id.clone(),
        addr: addr.to_string(),
        reason,
    };
    let mut backoff = Duration::from_millis(250);
    let mut last_said: Option<Instant> = None;
    loop {
        let addrs: Vec<SocketAddr> = addr
            .to_socket_addrs()
            .map_err(|e| unreachable(e.to_string()))?
            .collect();
        let mut last = String::from("no address");
        for a in &addrs {
            let left = deadline.saturating_duration_since(Instant::now());
            match TcpStream::connect_timeout(
                a,
                left.clamp(Duration::from_millis(1), Duration::from_secs(10)),
            ) {
                Ok(s) => return Ok(s),
                Err(e) => last = e.to_string(),
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left <= backoff {
            return Err(unreachable(last));
        }
        if last_said.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
            waiting(addr, left.as_secs());
            last_said = Some(Instant::now());
        }
        std::thread::sleep(backoff);
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

pub(super) fn protocol(rid: &PartyId, what: String) -> Error {
    Error::Protocol {
        peer: format!("researcher {rid}"),
        what,
    }
}

/// A TLS alert right after the handshake means the researcher refused our certificate.
pub(super) fn refused_or(e: impl Into<Error>, rid: &PartyId) -> Error {
    let e = e.into();
    if let Error::Transport(t) = &e
        && let Some(rustls::Error::AlertReceived(alert)) = t.tls()
    {
        return Error::CertificateRefused {
            id: rid.clone(),
            alert: format!("{alert:?}"),
        };
    }
    e
}
