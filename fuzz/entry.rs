//! The fuzz entry points: one function per parser of outside bytes, each reachable
//! from the library's public API. Shared by the cargo-fuzz targets
//! (`fuzz/fuzz_targets/*.rs`) and by `tests/fuzz_corpus.rs`, which replays every
//! committed corpus file through the same functions on every `cargo test`.
//!
//! An entry point must never panic, whatever the bytes; errors are fine.
#![allow(dead_code)]

use std::io::Cursor;
use std::path::Path;
use std::time::{Duration, SystemTime};

use secagg::files::masked::Reader;
use secagg::files::tensor;
use secagg::layout::Container;
use secagg::net::frame::{Decoder, RoundId};
use secagg::pki::certificate::PeerCertificate;
use secagg::pki::identity::{Config, PartyKey};
use secagg::secagg::sum::AnyAccumulator;

/// A fuzz entry point.
pub type Entry = fn(&[u8]);

/// Every target, by name, with its entry point (for the corpus replay test).
pub const TARGETS: &[(&str, Entry)] = &[
    ("frame", frame),
    ("certificate", certificate),
    ("npy", npy),
    ("safetensors", safetensors),
    ("masked", masked),
    ("config", config),
    ("round", round),
    ("roster", roster),
];

/// Every protocol-2 message decoder (`round::messages::decode`): the first byte picks
/// the kind (16..=31), the rest is the payload; whatever decodes is encoded again and
/// must decode to the same message.
pub fn round(data: &[u8]) {
    let Some((kind, payload)) = data.split_first() else {
        return;
    };
    let kind = 16 + kind % 16;
    if let Ok(msg) = secagg::round::messages::decode(kind, payload) {
        let again = msg
            .encode()
            .unwrap_or_else(|e| panic!("re-encode {}: {e}", msg.name()));
        let back = secagg::round::messages::decode(kind, &again)
            .unwrap_or_else(|e| panic!("decode of an encoding: {e}"));
        assert_eq!(back, msg, "round trip of {}", msg.name());
    }
}

/// A roster file as `federation import` and `federation show` read it.
pub fn roster(data: &[u8]) {
    if let Ok(r) = secagg::pki::roster::Roster::from_toml(
        data,
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000),
    ) {
        let _ = r.fingerprint().to_string();
    }
}

/// Seeds for [`round`]: one well-formed payload per message kind a test can build
/// without keys, prefixed with its kind.
pub fn round_seeds() -> Vec<Vec<u8>> {
    use secagg::round::messages::{ResultHeader, Survivors};
    let fp = |b: u8| secagg::party::Fingerprint::of_der(&[b]);
    let mut u = vec![fp(1), fp(2), fp(3)];
    u.sort();
    let mut out = Vec::new();
    let mut push = |kind: u8, payload: Vec<u8>| {
        let mut v = vec![kind - 16];
        v.extend(payload);
        out.push(v);
    };
    let mut p = Vec::new();
    if (Survivors {
        u2: u.clone(),
        u3: u[..2].to_vec(),
    })
    .encode(&mut p)
    .is_ok()
    {
        push(21, p);
    }
    let mut p = Vec::new();
    ResultHeader {
        total_weight: 5,
        survivors: 3,
        bytes: 12,
    }
    .encode(&mut p);
    push(25, p);
    out
}

/// A minimal roster text for the seed corpus (it does not verify; the fuzzer mutates it).
pub const ROSTER_SEED: &str =
    "[roster]\nname = \"demo\"\nversion = 1\n\n[signature]\nvalue = \"00\"\n";

/// `net::frame::Decoder`: bytes from a TLS peer, decoded unbound (the researcher
/// before a round is known) and bound to a round, whole and split in two.
pub fn frame(data: &[u8]) {
    let split = data.first().map_or(0, |b| usize::from(*b)).min(data.len());
    for bound in [false, true] {
        let mut d = if bound {
            Decoder::new(RoundId::new("fed", 1))
        } else {
            Decoder::unbound()
        };
        d.push(&data[..split]);
        let _ = drain(&mut d);
        d.push(&data[split..]);
        let _ = drain(&mut d);
    }
}

fn drain(d: &mut Decoder) -> Result<(), ()> {
    // Each message consumes at least a header, so this ends.
    for _ in 0..4096 {
        match d.next_message() {
            Ok(Some(msg)) => {
                let _ = msg.name();
            }
            Ok(None) => return Ok(()),
            Err(_) => return Err(()),
        }
    }
    Ok(())
}

/// A certificate file as `certificate register` reads it: PEM, then the DER checks,
/// then the validity window, the CN and the fingerprint it prints.
pub fn certificate(data: &[u8]) {
    if let Ok(cert) = PeerCertificate::from_pem(data) {
        let _ = cert.check_validity(SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000));
        let _ = secagg::text::sanitize(cert.common_name());
        let _ = cert.fingerprint().to_string();
        let _ = cert.not_after_unix();
    }
    let _ = PeerCertificate::from_der(data);
}

fn values(container: Container, name: &str, data: &[u8]) {
    let _ = tensor::layout_from_bytes(container, Path::new(name), data);
    let mut n = 0u64;
    let _ = tensor::value_blocks_from_reader(
        container,
        Path::new(name),
        Cursor::new(data),
        data.len() as u64,
        |_| {
            |vs: &[f64]| {
                n += vs.len() as u64;
                Ok::<(), ()>(())
            }
        },
    );
}

/// An update file, `.npy`: header, then every value.
pub fn npy(data: &[u8]) {
    values(Container::Npy, "fuzz.npy", data);
}

/// An update file, `.safetensors`: header, then every value.
pub fn safetensors(data: &[u8]) {
    values(Container::Safetensors, "fuzz.safetensors", data);
}

/// The key that signs the masked seeds, so the fuzzer gets past the header signature
/// into the payload and the final signature. Never a real party's key.
pub fn masked_key() -> PartyKey {
    let mut scalar = [0u8; 32];
    scalar[31] = 7;
    PartyKey::from_scalar_bytes(&scalar).unwrap_or_else(|| unreachable!("7 is a valid scalar"))
}

/// A masked file, as `aggregate` reads it: header and sizes, header signature, payload
/// into an accumulator (only if the header authenticates), final signature.
pub fn masked(data: &[u8]) {
    let Ok(mut r) = Reader::from_reader(
        Path::new("fuzz.masked"),
        Cursor::new(data),
        data.len() as u64,
    ) else {
        return;
    };
    let key = p256::PublicKey::from(masked_key().signing_key().verifying_key());
    if r.authenticate(&key).is_err() {
        return;
    }
    let h = r.header().clone();
    let mut acc = AnyAccumulator::new(h.modulus, h.elements as usize);
    if r.stream(|off, bytes| acc.absorb(off, bytes)).is_ok() {
        let _ = r.verify(&key);
    }
}

/// `config.toml`.
pub fn config(data: &[u8]) {
    let _ = Config::from_toml(Path::new("config.toml"), data);
}
