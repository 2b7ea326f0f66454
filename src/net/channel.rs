//! Mutual TLS 1.3 pinned to the registry, and framed channels over it.
//!
//! - There is no CA and there are no webpki roots. Each side accepts exactly the
//!   certificates it was given from its own registry, compared by SHA-256 fingerprint,
//!   and maps the certificate to a party id.
//! - The verifiers still check the handshake signatures with the crypto provider, so a
//!   peer must hold the private key of the pinned certificate.
//! - Only TLS 1.3 with ECDSA P-256/SHA-256 handshake signatures is offered.
//! - A [`Channel`] carries [`wire`](crate::wire) frames, with deadlines on every read.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, Connection, ServerConfig, ServerConnection};

use crate::net::error::Error;
use crate::net::frame::{self as wire, Decoder, Message, RoundId};
use crate::secagg::ring::Word;

type Result<T> = std::result::Result<T, Error>;

/// How long [`Channel::close`] keeps reading after our last message.
const LINGER: Duration = Duration::from_secs(1);
/// A framed, authenticated connection to one peer.
pub struct Channel {
    conn: Connection,
    sock: Sock,
    dec: Decoder,
    peer: String,
    out: Vec<u8>,
}

/// The socket under TLS, with reads buffered: rustls asks for at most one record
/// (about 16 KiB) per read, and one system call per record costs more than the
/// decryption on loopback. Writes go straight through (rustls already batches them).
struct Sock {
    stream: TcpStream,
    buf: Box<[u8]>,
    pos: usize,
    end: usize,
}

/// Size of [`Sock`]'s read buffer.
const SOCK_BUF: usize = 256 * 1024;

impl Sock {
    fn new(stream: TcpStream) -> Sock {
        Sock {
            stream,
            buf: vec![0u8; SOCK_BUF].into_boxed_slice(),
            pos: 0,
            end: 0,
        }
    }

    /// Whether the next read is served from the buffer (no system call, no wait).
    fn buffered(&self) -> bool {
        self.pos < self.end
    }
}

impl Read for Sock {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if !self.buffered() {
            if out.len() >= self.buf.len() {
                return self.stream.read(out);
            }
            self.end = self.stream.read(&mut self.buf)?;
            self.pos = 0;
        }
        let n = out.len().min(self.end - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

impl Write for Sock {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.stream.write(bytes)
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        self.stream.write_vectored(bufs)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.stream.flush()
    }
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Channel({})", self.peer)
    }
}

fn unwrap_tls(e: io::Error) -> std::result::Result<rustls::Error, io::Error> {
    match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(tls) => Ok(tls.clone()),
        None => Err(e),
    }
}

impl Channel {
    fn new(conn: Connection, sock: TcpStream, peer: String, round: Option<RoundId>) -> Channel {
        Channel {
            conn,
            sock: Sock::new(sock),
            dec: match round {
                Some(r) => Decoder::new(r),
                None => Decoder::unbound(),
            },
            peer,
            out: Vec::with_capacity(wire::HEADER_LEN + wire::CHUNK_BYTES + 64),
        }
    }

    /// Completes the server side of a handshake; returns the channel and the peer's
    /// certificate DER (already checked against the pins by the verifier).
    pub fn accept(
        sock: TcpStream,
        config: Arc<ServerConfig>,
        round: RoundId,
        timeout: Duration,
    ) -> Result<(Channel, Vec<u8>)> {
        let peer = sock
            .peer_addr()
            .map_or_else(|_| "unknown peer".to_string(), |a| a.to_string());
        let conn = ServerConnection::new(config).map_err(|source| Error::Handshake {
            peer: peer.clone(),
            source,
        })?;
        let mut ch = Channel::new(Connection::Server(conn), sock, peer, Some(round));
        ch.handshake(timeout)?;
        let der = ch
            .conn
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.as_ref().to_vec())
            .ok_or_else(|| Error::Handshake {
                peer: ch.peer.clone(),
                source: rustls::Error::NoCertificatesPresented,
            })?;
        Ok((ch, der))
    }

    /// Completes the client side of a handshake. The round is learned from the first
    /// frame received; see [`Channel::round`].
    pub fn connect(
        sock: TcpStream,
        config: Arc<ClientConfig>,
        server_name: &str,
        peer: String,
        timeout: Duration,
    ) -> Result<Channel> {
        let name = ServerName::try_from(server_name.to_string()).map_err(|_| Error::Handshake {
            peer: peer.clone(),
            source: rustls::Error::General(format!("'{server_name}' is not a valid server name")),
        })?;
        let conn = ClientConnection::new(config, name).map_err(|source| Error::Handshake {
            peer: peer.clone(),
            source,
        })?;
        let mut ch = Channel::new(Connection::Client(conn), sock, peer, None);
        ch.handshake(timeout)?;
        Ok(ch)
    }

    fn handshake(&mut self, timeout: Duration) -> Result<()> {
        self.conn.set_buffer_limit(None);
        let _ = self.sock.stream.set_nodelay(true);
        self.set_timeouts(timeout)?;
        while self.conn.is_handshaking() {
            if let Err(e) = self.conn.complete_io(&mut self.sock) {
                return Err(match unwrap_tls(e) {
                    Ok(source) => Error::Handshake {
                        peer: self.peer.clone(),
                        source,
                    },
                    Err(e) if is_timeout(&e) => Error::Timeout {
                        peer: self.peer.clone(),
                        secs: timeout.as_secs(),
                    },
                    Err(source) => Error::Io {
                        peer: self.peer.clone(),
                        action: "handshaking",
                        source,
                    },
                });
            }
        }
        Ok(())
    }

    fn set_timeouts(&self, t: Duration) -> Result<()> {
        let t = Some(t.max(Duration::from_millis(1)));
        self.sock
            .stream
            .set_read_timeout(t)
            .and_then(|()| self.sock.stream.set_write_timeout(t))
            .map_err(|source| self.io("setting timeouts", source))
    }

    fn io(&self, action: &'static str, source: io::Error) -> Error {
        Error::Io {
            peer: self.peer.clone(),
            action,
            source,
        }
    }

    /// Who is at the other end (address or name), for messages.
    pub fn peer(&self) -> &str {
        &self.peer
    }

    /// Renames the peer for messages once it is identified.
    pub fn set_peer(&mut self, name: String) {
        self.peer = name;
    }

    /// Hands back a received chunk's data buffer for reuse (see [`wire::Spares`]).
    pub fn recycle(&self, buf: Vec<u8>) {
        self.dec.recycle(buf);
    }

    /// Takes chunk buffers from `spares`, shared with other channels, from now on.
    pub fn share_spares(&mut self, spares: wire::Spares) {
        self.dec.share_spares(spares);
    }

    /// The round of the frames received so far (set by the first frame).
    pub fn round(&self) -> Option<RoundId> {
        self.dec.round()
    }

    /// Sends one message.
    pub fn send(&mut self, msg: &Message) -> Result<()> {
        let mut out = std::mem::take(&mut self.out);
        out.clear();
        wire::encode(self.round_id(), msg, &mut out);
        let r = self.write_plain(&out);
        self.out = out;
        r
    }

    fn round_id(&self) -> RoundId {
        // A client sends only after the server's first frame bound the decoder.
        self.dec.round().unwrap_or_else(|| RoundId::new("", 0))
    }

    /// Sends `words`, the part of an update that starts at word `offset`, as chunk
    /// frames, each word reduced to its low `width` bytes (1..=`W::BYTES`,
    /// little-endian). The caller sends `End` after the last part.
    pub fn send_words<W: Word>(&mut self, offset: u64, words: &[W], width: usize) -> Result<()> {
        let width = width.clamp(1, W::BYTES);
        let per = wire::CHUNK_BYTES / width;
        let round = self.round_id();
        let mut out = std::mem::take(&mut self.out);
        for (i, chunk) in words.chunks(per).enumerate() {
            out.clear();
            let len = chunk.len() * width;
            let at = offset + (i * per) as u64;
            wire::encode_chunk_head(round, at, len, &mut out);
            let head = out.len();
            out.resize(head + len, 0);
            crate::secagg::simd::pack(chunk, width, &mut out[head..]);
            if let Err(e) = self.write_plain(&out) {
                self.out = out;
                return Err(e);
            }
        }
        self.out = out;
        Ok(())
    }

    /// Sends bytes as chunk frames whose offsets count bytes, then `End`.
    pub fn send_bytes(&mut self, bytes: &[u8]) -> Result<()> {
        let round = self.round_id();
        let mut out = std::mem::take(&mut self.out);
        for (i, chunk) in bytes.chunks(wire::CHUNK_BYTES).enumerate() {
            out.clear();
            let offset = (i * wire::CHUNK_BYTES) as u64;
            wire::encode_chunk_head(round, offset, chunk.len(), &mut out);
            out.extend_from_slice(chunk);
            if let Err(e) = self.write_plain(&out) {
                self.out = out;
                return Err(e);
            }
        }
        self.out = out;
        self.send(&Message::End)
    }

    /// Sends raw bytes inside TLS, bypassing the encoder (tests of hostile peers).
    pub fn send_raw(&mut self, bytes: &[u8]) -> Result<()> {
        self.write_plain(bytes)
    }

    fn write_plain(&mut self, bytes: &[u8]) -> Result<()> {
        self.conn
            .writer()
            .write_all(bytes)
            .map_err(|e| self.io("sending", e))?;
        self.flush()
    }

    fn flush(&mut self) -> Result<()> {
        while self.conn.wants_write() {
            match self.conn.write_tls(&mut self.sock) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if is_timeout(&e) => {
                    return Err(Error::Timeout {
                        peer: self.peer.clone(),
                        secs: self
                            .sock
                            .stream
                            .write_timeout()
                            .ok()
                            .flatten()
                            .map_or(0, |d| d.as_secs()),
                    });
                }
                Err(e) => return Err(self.io("sending", e)),
            }
        }
        Ok(())
    }

    /// The next message, or `None` if none arrived within `wait`.
    pub fn recv(&mut self, wait: Duration) -> Result<Option<Message>> {
        let deadline = Instant::now() + wait;
        loop {
            match self.dec.next_message() {
                Ok(Some(m)) => return Ok(Some(m)),
                Ok(None) => {}
                Err(source) => {
                    return Err(Error::Wire {
                        peer: self.peer.clone(),
                        source,
                    });
                }
            }
            if !self.fill(deadline)? {
                return Ok(None);
            }
        }
    }

    /// The next message within `wait`, or a timeout error.
    pub fn recv_within(&mut self, wait: Duration) -> Result<Message> {
        self.recv(wait)?.ok_or_else(|| Error::Timeout {
            peer: self.peer.clone(),
            secs: wait.as_secs(),
        })
    }

    /// Reads more plaintext into the decoder; `false` when the deadline passed first.
    fn fill(&mut self, deadline: Instant) -> Result<bool> {
        loop {
            match self.dec.fill_from(&mut self.conn.reader()) {
                Ok(0) => {
                    return Err(Error::Closed {
                        peer: self.peer.clone(),
                    });
                }
                Ok(_) => return Ok(true),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    return Err(Error::Closed {
                        peer: self.peer.clone(),
                    });
                }
                Err(e) => return Err(self.io("receiving", e)),
            }
            if !self.sock.buffered() {
                let now = Instant::now();
                if now >= deadline {
                    return Ok(false);
                }
                self.sock
                    .stream
                    .set_read_timeout(Some((deadline - now).max(Duration::from_millis(1))))
                    .map_err(|e| self.io("setting timeouts", e))?;
            }
            match self.conn.read_tls(&mut self.sock) {
                Ok(0) => {
                    return Err(Error::Closed {
                        peer: self.peer.clone(),
                    });
                }
                Ok(_) => {
                    if let Err(source) = self.conn.process_new_packets() {
                        // Tell the peer why before giving up, as far as we can.
                        let _ = self.flush();
                        return Err(Error::Tls {
                            peer: self.peer.clone(),
                            source,
                        });
                    }
                    self.flush()?;
                }
                Err(e) if is_timeout(&e) || e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {
                    return Err(Error::Closed {
                        peer: self.peer.clone(),
                    });
                }
                Err(e) => return Err(self.io("receiving", e)),
            }
        }
    }

    /// Sends close_notify, shuts our direction down, and drains what the peer still
    /// sends for up to a second. Closing a socket with unread input makes the kernel
    /// send a reset, which can destroy our last message (an abort, say) before the
    /// peer reads it.
    pub fn close(mut self) {
        self.conn.send_close_notify();
        let _ = self.flush();
        let _ = self.sock.stream.shutdown(std::net::Shutdown::Write);
        let deadline = Instant::now() + LINGER;
        let _ = self
            .sock
            .stream
            .set_read_timeout(Some(Duration::from_millis(50)));
        let mut scratch = [0u8; 4096];
        while Instant::now() < deadline {
            match self.sock.read(&mut scratch) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if is_timeout(&e) || e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}
