//! The canonical bytes of a roster (docs/roster.md): what is signed and fingerprinted.

use super::{CANONICAL_LABEL, Draft, Member};

/// `str(s) = u32be(len) ‖ bytes`.
pub(super) fn put(out: &mut Vec<u8>, bytes: &[u8]) {
    // Every field is bounded far below 4 GiB (ids 64 bytes, certificates from a file of
    // at most MAX_ROSTER_BYTES), so the length fits.
    out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    out.extend_from_slice(bytes);
}

pub(super) fn put_party(out: &mut Vec<u8>, m: &Member) {
    put(out, m.party_id.as_str().as_bytes());
    put(out, m.role.as_str().as_bytes());
    put(out, m.ip.as_str().as_bytes());
    out.extend_from_slice(&m.port.to_be_bytes());
    put(out, m.certificate.der());
}

/// The canonical bytes, exactly as docs/roster.md specifies them.
pub(super) fn canonical(d: &Draft) -> Vec<u8> {
    let mut out = Vec::with_capacity(1024 * (d.members.len() + 1));
    put(&mut out, CANONICAL_LABEL.as_bytes());
    put(&mut out, d.federation.as_str().as_bytes());
    out.extend_from_slice(&d.version.to_be_bytes());
    out.extend_from_slice(&d.created_at.to_be_bytes());
    put_party(&mut out, &d.researcher);
    // MAX_MEMBERS fits in a u32.
    out.extend_from_slice(&(d.members.len() as u32).to_be_bytes());
    for m in &d.members {
        put_party(&mut out, m);
    }
    out
}
