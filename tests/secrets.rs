//! Secret types: wiped on drop, never `Copy`, and redacted in `Debug`.

use secagg::party::Fingerprint;
use secagg::pki::identity::{self, GenerateParams, Home, PartyKey, SecretScalar};
use secagg::secagg::keys::{MaskContext, MaskKey, PairwiseSecret, Sign};
use secagg::secagg::prg::{PeerMask, Prg};

fn wiped_on_drop<T: zeroize::ZeroizeOnDrop>() {}

#[test]
fn secret_types_are_wiped_on_drop() {
    wiped_on_drop::<SecretScalar>();
    wiped_on_drop::<PairwiseSecret>();
    wiped_on_drop::<MaskKey>();
    // The AES key schedule and the CTR keystream state (aes/ctr "zeroize" features).
    wiped_on_drop::<aes::Aes128>();
    wiped_on_drop::<Prg>();
}

/// Hex of `bytes`, to look for in a `Debug` string.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn debug_of_every_secret_type_is_redacted() {
    let key = PartyKey::generate().expect("rng");
    let scalar_hex = hex(&key.signing_key().to_bytes());
    let scalar = key.secret_scalar();
    let peer = PartyKey::generate().expect("rng");
    let pw = PairwiseSecret::derive(
        &key,
        &Fingerprint::of_der(b"a"),
        &p256::PublicKey::from(peer.signing_key().verifying_key()),
        &Fingerprint::of_der(b"b"),
    );
    let ctx = MaskContext {
        federation: "f".into(),
        round: 1,
        researcher: Fingerprint::of_der(b"r"),
        participants: vec!["a".parse().expect("id"), "b".parse().expect("id")],
        label: "update".into(),
    };
    let mask_key = MaskKey::derive(&pw, &ctx);
    let mask_hex = hex(mask_key.expose());
    let peer_mask = PeerMask {
        key: MaskKey::derive(&pw, &ctx),
        sign: Sign::Add,
    };
    let dir = tempfile::tempdir().expect("tmp");
    let home = Home::new(dir.path().join("home"));
    let generated = identity::generate(
        &home,
        &GenerateParams {
            party_id: "node-a".parse().expect("id"),
            role: secagg::party::Role::Node,
            ip: "127.0.0.1".parse().expect("ip"),
            port: 7000,
            validity_days: 30,
        },
        false,
    )
    .expect("generate");
    let id_hex = hex(&generated.identity.key.signing_key().to_bytes());
    // Protocol 2's per-round secrets.
    let pair = secagg::round::schedule::SharePair {
        s: p256::Scalar::from(123_456_789u64),
        b: p256::Scalar::from(987_654_321u64),
    };
    let pair_hex = hex(&secagg::secagg::shamir::scalar_to_bytes(&pair.s));
    let revealed = secagg::round::messages::RevealedShare {
        peer: Fingerprint::of_der(b"p"),
        kind: secagg::round::messages::ShareKind::B,
        value: pair.b,
    };
    let revealed_hex = hex(&secagg::secagg::shamir::scalar_to_bytes(&pair.b));
    for (what, debug, secret) in [
        ("SharePair", format!("{pair:?}"), &pair_hex),
        ("RevealedShare", format!("{revealed:?}"), &revealed_hex),
        ("PartyKey", format!("{key:?}"), &scalar_hex),
        ("SecretScalar", format!("{scalar:?}"), &scalar_hex),
        ("PairwiseSecret", format!("{pw:?}"), &scalar_hex),
        ("MaskKey", format!("{mask_key:?}"), &mask_hex),
        ("PeerMask", format!("{peer_mask:?}"), &mask_hex),
        ("Identity", format!("{:?}", generated.identity), &id_hex),
        ("Generated", format!("{generated:?}"), &id_hex),
    ] {
        assert!(debug.contains("<secret>"), "{what}: {debug}");
        assert!(
            !debug.to_lowercase().contains(secret.as_str()),
            "{what} leaks: {debug}"
        );
    }
}
