//! The researcher's connection threads: one accepts, one per connection does TLS and
//! framing and talks to the coordinator (`serve.rs`) over channels. At most `cap`
//! connections run at once; unauthenticated ones expire with the handshake deadline.

use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender, TryRecvError};
use std::time::Duration;

use rustls::ServerConfig;

use super::POLL;
use crate::net::channel::Channel;
use crate::net::error as transport;
use crate::net::frame::{Abort, Message, RoundId, Spares};
use crate::net::tls::Pins;
use crate::party::{Fingerprint, PartyId};
use crate::round::messages::{self, Message2, ResultHeader};

/// Connection thread → coordinator.
pub(super) enum Inbound {
    Refused {
        addr: String,
        reason: String,
    },
    Connected {
        conn: u64,
        party: PartyId,
        fp: Fingerprint,
        tx: Sender<Outbound>,
    },
    Message {
        conn: u64,
        msg: Message,
    },
    Lost {
        conn: u64,
        reason: String,
    },
}

/// Coordinator → connection thread.
pub(super) enum Outbound {
    Send(Message),
    Result(Arc<(ResultHeader, Vec<u8>)>),
    Close(Option<String>),
}

/// Accepts connections until `stop`, each on its own thread running a copy of
/// `template` with a fresh connection number. At most `cap` connections run at once; a
/// connection past the cap is closed at once (a node retries).
pub(super) fn accept_loop(listener: TcpListener, template: Link, stop: &AtomicBool, cap: usize) {
    if listener.set_nonblocking(true).is_err() {
        return;
    }
    let active = Arc::new(AtomicUsize::new(0));
    let mut next_conn = 0u64;
    let mut threads = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((sock, addr)) => {
                if active.load(Ordering::Relaxed) >= cap || sock.set_nonblocking(false).is_err() {
                    let _ = template.events.send(Inbound::Refused {
                        addr: addr.to_string(),
                        reason: "too many connections".into(),
                    });
                    continue;
                }
                next_conn += 1;
                active.fetch_add(1, Ordering::Relaxed);
                let link = Link {
                    conn: next_conn,
                    ..template.clone()
                };
                let active = active.clone();
                threads.push(std::thread::spawn(move || {
                    link.run(sock);
                    active.fetch_sub(1, Ordering::Relaxed);
                }));
            }
            Err(_) => std::thread::sleep(POLL),
        }
        threads.retain(|t| !t.is_finished());
    }
    drop(template);
    for t in threads {
        let _ = t.join();
    }
}

/// One connection's thread: TLS, framing, and the link to the coordinator.
#[derive(Clone)]
pub(super) struct Link {
    pub(super) conn: u64,
    pub(super) config: Arc<ServerConfig>,
    pub(super) round: RoundId,
    pub(super) timeout: Duration,
    pub(super) pins: Arc<Pins>,
    pub(super) announce: Arc<Vec<u8>>,
    pub(super) events: SyncSender<Inbound>,
    pub(super) spares: Spares,
}

impl Link {
    fn run(self, sock: TcpStream) {
        let addr = sock
            .peer_addr()
            .map_or_else(|_| "unknown".to_string(), |a| a.to_string());
        let (mut ch, der) =
            match Channel::accept(sock, self.config.clone(), self.round, self.timeout) {
                Ok(x) => x,
                Err(e) => {
                    let _ = self.events.send(Inbound::Refused {
                        addr,
                        reason: e.to_string(),
                    });
                    return;
                }
            };
        // The verifier accepted only pinned certificates.
        let Some(party) = self.pins.party_of(&der).cloned() else {
            return;
        };
        let fp = Fingerprint::of_der(&der);
        ch.set_peer(format!("{party} ({addr})"));
        ch.share_spares(self.spares.clone());
        let (tx, rx) = mpsc::channel();
        let conn = self.conn;
        if self
            .events
            .send(Inbound::Connected {
                conn,
                party,
                fp,
                tx,
            })
            .is_err()
        {
            return;
        }
        // The researcher speaks first: a node whose certificate was refused learns it
        // on its first read (TLS 1.3 client auth).
        let first = Message::Protocol {
            kind: messages::KIND_ANNOUNCE,
            payload: self.announce.to_vec(),
        };
        if let Err(e) = ch.send(&first) {
            let _ = self.events.send(Inbound::Lost {
                conn,
                reason: e.to_string(),
            });
            return;
        }
        self.pump(ch, &rx);
    }

    fn pump(&self, mut ch: Channel, rx: &Receiver<Outbound>) {
        let conn = self.conn;
        let lost = |e: transport::Error| {
            let _ = self.events.send(Inbound::Lost {
                conn,
                reason: e.to_string(),
            });
        };
        loop {
            loop {
                match rx.try_recv() {
                    Ok(Outbound::Send(m)) => {
                        if let Err(e) = ch.send(&m) {
                            return lost(e);
                        }
                    }
                    Ok(Outbound::Result(r)) => {
                        let (header, mean) = &*r;
                        let sent = Message2::Result(header.clone())
                            .encode()
                            .map_err(|e| transport::Error::OwnIdentity(e.to_string()))
                            .and_then(|payload| {
                                ch.send(&Message::Protocol {
                                    kind: messages::KIND_RESULT,
                                    payload,
                                })
                            })
                            .and_then(|()| ch.send_bytes(mean));
                        drop(r);
                        match sent {
                            Ok(()) => {
                                ch.close();
                                return;
                            }
                            Err(e) => return lost(e),
                        }
                    }
                    Ok(Outbound::Close(reason)) => {
                        if let Some(reason) = reason {
                            let _ = ch.send(&Message::Abort(Abort { reason }));
                        }
                        ch.close();
                        return;
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        ch.close();
                        return;
                    }
                }
            }
            match ch.recv(POLL) {
                Ok(Some(msg)) => {
                    if self.events.send(Inbound::Message { conn, msg }).is_err() {
                        // The coordinator is gone; its last word may be queued for us.
                        let reason = rx.try_iter().find_map(|o| match o {
                            Outbound::Close(r) => r,
                            _ => None,
                        });
                        if let Some(reason) = reason {
                            let _ = ch.send(&Message::Abort(Abort { reason }));
                        }
                        ch.close();
                        return;
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    if let transport::Error::Wire { source, .. } = &e {
                        let _ = ch.send(&Message::Abort(Abort {
                            reason: format!("bad frame: {source}"),
                        }));
                    }
                    return lost(e);
                }
            }
        }
    }
}
