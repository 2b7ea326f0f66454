//! Unit tests of `registry`.
use super::*;

fn peer(id: &str, fp: u8) -> Peer {
    Peer {
        party_id: id.parse().expect("id"),
        role: Role::Node,
        ip: "127.0.0.1".parse().expect("ip"),
        port: 5000,
        fingerprint: Fingerprint::of_der(&[fp]),
        not_after: 2_000_000_000,
        registered_at: 1_700_000_000,
    }
}

#[test]
fn register_list_delete() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("r.sqlite");
    let mut reg = Registry::open(&path).expect("open");
    let a = peer("a", 1);
    let new = NewPeer {
        peer: a.clone(),
        cert_der: &[1],
    };
    assert_eq!(
        reg.register(&new, OnDuplicate::Refuse).ok(),
        Some(Registered::Added)
    );
    assert!(matches!(
        reg.register(&new, OnDuplicate::Refuse),
        Err(Error::DuplicateId(_))
    ));
    let b_same_cert = NewPeer {
        peer: peer("b", 1),
        cert_der: &[1],
    };
    assert!(matches!(
        reg.register(&b_same_cert, OnDuplicate::Replace),
        Err(Error::DuplicateFingerprint { .. })
    ));
    let a2 = NewPeer {
        peer: peer("a", 2),
        cert_der: &[2],
    };
    assert_eq!(
        reg.register(&a2, OnDuplicate::Replace).ok(),
        Some(Registered::Replaced(a))
    );
    assert_eq!(reg.list().expect("list"), vec![peer("a", 2)]);
    let (_, der) = reg
        .get_by_fingerprint(&Fingerprint::of_der(&[2]))
        .expect("query")
        .expect("found");
    assert_eq!(der, vec![2]);
    assert!(
        reg.get(&"zz".parse().expect("id"))
            .expect("query")
            .is_none()
    );
    reg.delete(&"a".parse().expect("id")).expect("delete");
    assert!(matches!(
        reg.delete(&"a".parse().expect("id")),
        Err(Error::UnknownParty(_))
    ));
    assert!(reg.list().expect("list").is_empty());
}

#[test]
fn corrupt_file_is_reported_not_replaced() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("r.sqlite");
    let junk = vec![0x42u8; 8192];
    std::fs::write(&path, &junk).expect("write");
    assert!(matches!(Registry::open(&path), Err(Error::Corrupt { .. })));
    assert_eq!(std::fs::read(&path).expect("read"), junk);
}

#[test]
fn migrations_are_idempotent() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("r.sqlite");
    drop(Registry::open(&path).expect("open"));
    let reg = Registry::open(&path).expect("reopen");
    assert_eq!(reg.user_version().expect("v"), MIGRATIONS.len() as i64);
}
