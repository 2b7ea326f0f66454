use super::*;
use std::time::SystemTime;

use crate::party::{PartyId, Role};
use crate::pki::certificate;
use crate::pki::certificate::{CertParams, self_signed};
use crate::pki::identity::PartyKey;

fn party(id: &str, role: Role, port: u16) -> (PartyKey, Member) {
    let key = PartyKey::generate().expect("rng");
    let cert = self_signed(
        key.signing_key(),
        &CertParams::for_days(
            id.parse().expect("id"),
            "127.0.0.1".parse().expect("host"),
            30,
        ),
    )
    .expect("cert");
    let m = Member {
        party_id: id.parse().expect("id"),
        role,
        ip: "127.0.0.1".parse().expect("host"),
        port,
        certificate: cert,
    };
    (key, m)
}

fn draft(n: usize) -> (PartyKey, Draft) {
    let (key, researcher) = party("researcher", Role::Researcher, 7000);
    let members = (1..=n)
        .map(|i| party(&format!("node_{i}"), Role::Node, 7000 + i as u16).1)
        .collect();
    let d = Draft {
        federation: "study-42".parse().expect("name"),
        version: 1,
        created_at: 1_700_000_000,
        researcher,
        members,
    };
    (key, d)
}

#[test]
fn sign_write_parse_round_trip() {
    let (key, d) = draft(3);
    let roster = create(d, key.signing_key(), SystemTime::now()).expect("create");
    let text = roster.to_toml();
    let again = Roster::from_toml(text.as_bytes(), SystemTime::now()).expect("parse");
    assert_eq!(again.fingerprint(), roster.fingerprint());
    assert_eq!(again.canonical_bytes(), roster.canonical_bytes());
    assert_eq!(again.to_toml(), text);
    assert_eq!(again.members().len(), 3);
    let fps: Vec<_> = again
        .members()
        .iter()
        .map(|m| *m.certificate.fingerprint().as_bytes())
        .collect();
    let mut sorted = fps.clone();
    sorted.sort();
    assert_eq!(fps, sorted, "members in canonical order");
    // The fingerprint is SHA-256 of the canonical bytes and prints like openssl's.
    let s = roster.fingerprint().to_string();
    assert_eq!(s.len(), 95);
    assert_eq!(
        s.parse::<RosterFingerprint>().ok(),
        Some(roster.fingerprint())
    );
    assert_eq!(
        format!("roster fingerprint: {s}")
            .parse::<RosterFingerprint>()
            .ok(),
        Some(roster.fingerprint())
    );
}

#[test]
fn reformatting_keeps_the_fingerprint_and_tampering_breaks_the_signature() {
    let (key, d) = draft(2);
    let roster = create(d, key.signing_key(), SystemTime::now()).expect("create");
    let text = roster.to_toml();
    // Comments, blank lines and member order are not signed.
    let mut blocks: Vec<&str> = text.split("[[roster.members]]\n").collect();
    let sig_at = blocks[2].find("[signature]").expect("sig");
    let (m2, sig) = blocks[2].split_at(sig_at);
    let tail = m2.to_string();
    blocks[2] = &tail;
    let swapped = format!(
        "{}\n\n[[roster.members]]\n{}[[roster.members]]\n{}\n{}",
        blocks[0].replace("# ", "## "),
        blocks[2],
        blocks[1],
        sig
    );
    let again = Roster::from_toml(swapped.as_bytes(), SystemTime::now()).expect("parse");
    assert_eq!(again.fingerprint(), roster.fingerprint());

    let tampered = text.replacen("port = 7001", "port = 7009", 1);
    assert_ne!(tampered, text);
    assert!(matches!(
        Roster::from_toml(tampered.as_bytes(), SystemTime::now()),
        Err(Error::BadSignature)
    ));
    let renamed = text.replacen("version = 1", "version = 2", 1);
    assert!(matches!(
        Roster::from_toml(renamed.as_bytes(), SystemTime::now()),
        Err(Error::BadSignature)
    ));
}

#[test]
fn canonical_bytes_are_length_prefixed_fields() {
    let (key, d) = draft(1);
    let roster = create(d, key.signing_key(), SystemTime::now()).expect("create");
    let b = roster.canonical_bytes();
    assert_eq!(&b[..4], &(CANONICAL_LABEL.len() as u32).to_be_bytes());
    assert_eq!(&b[4..4 + CANONICAL_LABEL.len()], CANONICAL_LABEL.as_bytes());
    let at = 4 + CANONICAL_LABEL.len();
    assert_eq!(&b[at..at + 4], &8u32.to_be_bytes());
    assert_eq!(&b[at + 4..at + 12], b"study-42");
    assert_eq!(&b[at + 12..at + 20], &1u64.to_be_bytes());
    assert_eq!(&b[at + 20..at + 28], &1_700_000_000i64.to_be_bytes());
    let m = &roster.members()[0];
    let der = m.certificate.der();
    assert_eq!(&b[b.len() - der.len()..], der);
}

#[test]
fn drafts_are_validated() {
    let (key, mut d) = draft(2);
    d.members[1].party_id = d.members[0].party_id.clone();
    assert!(matches!(
        create(d, key.signing_key(), SystemTime::now()),
        Err(Error::Member {
            source: certificate::Error::CnMismatch { .. },
            ..
        }) | Err(Error::DuplicateId(_))
    ));
    let (key, mut d) = draft(2);
    d.members[1] = d.members[0].clone();
    assert!(matches!(
        create(d, key.signing_key(), SystemTime::now()),
        Err(Error::DuplicateId(_))
    ));
    let (key, mut d) = draft(1);
    d.members.push(d.researcher.clone());
    assert!(matches!(
        create(d, key.signing_key(), SystemTime::now()),
        Err(Error::MemberNotNode(_)) | Err(Error::ResearcherAsMember(_))
    ));
    let (_, d) = draft(1);
    let other = PartyKey::generate().expect("rng");
    assert!(matches!(
        create(d, other.signing_key(), SystemTime::now()),
        Err(Error::WrongKey)
    ));
    let (key, d) = draft(1);
    let later = SystemTime::now() + std::time::Duration::from_secs(86_400 * 60);
    assert!(matches!(
        create(d, key.signing_key(), later),
        Err(Error::ResearcherCertificate(certificate::Error::Expired(_)))
    ));
}

#[test]
fn import_rules() {
    let (key, d) = draft(3);
    let me = d.members[0].clone();
    let v1 = create(d.clone(), key.signing_key(), SystemTime::now()).expect("v1");
    let own = me.certificate.fingerprint();
    assert!(matches!(
        plan_import(&v1, None, &me.party_id, &own, None),
        Err(Error::NeedsFingerprint { .. })
    ));
    assert!(matches!(
        plan_import(&v1, None, &me.party_id, &own, Some(&v1.fingerprint())),
        Ok(ImportPlan::First)
    ));
    let state = FederationState {
        name: v1.federation().clone(),
        version: 1,
        roster_fingerprint: v1.fingerprint(),
        researcher: v1.researcher().record(),
        researcher_der: v1.researcher().certificate.der().to_vec(),
        members: v1.members().iter().map(Member::record).collect(),
    };
    // v2 drops node_3 and moves node_2: the signature suffices.
    let mut d2 = d.clone();
    d2.version = 2;
    d2.members.retain(|m| m.party_id.as_str() != "node_3");
    d2.members[1].port = 9999;
    let v2 = create(d2.clone(), key.signing_key(), SystemTime::now()).expect("v2");
    match plan_import(&v2, Some(&state), &me.party_id, &own, None) {
        Ok(ImportPlan::Update { from: 1, changes }) => {
            assert_eq!(changes.removed.len(), 1);
            assert_eq!(changes.moved.len(), 1);
            assert!(!changes.brings_new_certificates());
        }
        other => panic!("{other:?}"),
    }
    // v3 adds a member: fingerprint needed.
    let mut d3 = d2.clone();
    d3.version = 3;
    d3.members.push(party("node_9", Role::Node, 7009).1);
    let v3 = create(d3, key.signing_key(), SystemTime::now()).expect("v3");
    assert!(matches!(
        plan_import(&v3, Some(&state), &me.party_id, &own, None),
        Err(Error::NeedsFingerprint { .. })
    ));
    // Same version, other content: equivocation; lower: rollback; same: up to date.
    let mut d1b = d.clone();
    d1b.created_at += 1;
    let v1b = create(d1b, key.signing_key(), SystemTime::now()).expect("v1b");
    assert!(matches!(
        plan_import(&v1b, Some(&state), &me.party_id, &own, None),
        Err(Error::Equivocation { .. })
    ));
    assert!(matches!(
        plan_import(&v1, Some(&state), &me.party_id, &own, None),
        Ok(ImportPlan::UpToDate)
    ));
    // Another researcher key.
    let (key2, mut r2) = party("researcher", Role::Researcher, 7000);
    r2.role = Role::Researcher;
    let mut d4 = d.clone();
    d4.version = 4;
    d4.researcher = r2;
    let v4 = create(d4, key2.signing_key(), SystemTime::now()).expect("v4");
    assert!(matches!(
        plan_import(
            &v4,
            Some(&state),
            &me.party_id,
            &own,
            Some(&v4.fingerprint())
        ),
        Err(Error::DifferentResearcher { .. })
    ));
    // Our line with another certificate; not listed at all; our own roster.
    let other = party("node_1", Role::Node, 1).1.certificate.fingerprint();
    assert!(matches!(
        plan_import(&v1, None, &me.party_id, &other, Some(&v1.fingerprint())),
        Err(Error::OwnLineNotOurs { .. })
    ));
    let stranger: PartyId = "node_7".parse().expect("id");
    assert!(matches!(
        plan_import(&v1, None, &stranger, &other, Some(&v1.fingerprint())),
        Err(Error::NotAMember(_))
    ));
    let rfp = v1.researcher().certificate.fingerprint();
    assert!(matches!(
        plan_import(&v1, None, &v1.researcher().party_id, &rfp, None),
        Err(Error::OwnRoster)
    ));
    let wrong = v2.fingerprint();
    assert!(matches!(
        plan_import(&v1, None, &me.party_id, &own, Some(&wrong)),
        Err(Error::FingerprintMismatch { .. })
    ));
}

#[test]
fn instructions_parse_text_and_refuse_mismatches() {
    let (_, m) = party("node_1", Role::Node, 7001);
    let fp = m.certificate.fingerprint();
    let text = format!(
        "Registration instructions for node 'node_1'\n\n{}\n\
         secagg certificate register --public-key node_1.pem --party-id node_1 --ip 10.0.0.1 --port 7001 --role node --fingerprint {fp}\n",
        m.certificate.to_pem()
    );
    let got = parse_instructions(&text).expect("parse");
    assert_eq!(got.party_id.as_str(), "node_1");
    assert_eq!(got.ip.as_str(), "10.0.0.1");
    assert_eq!(got.port, 7001);
    assert_eq!(got.certificate.fingerprint(), fp);
    let other = party("node_2", Role::Node, 7002)
        .1
        .certificate
        .fingerprint();
    let lying = text.replace(&fp.to_string(), &other.to_string());
    assert!(matches!(
        parse_instructions(&lying),
        Err(Error::InstructionsFingerprint { .. })
    ));
    assert!(matches!(
        parse_instructions("hello"),
        Err(Error::InstructionsCertificate(certificate::Error::NotPem))
    ));
    let no_cmd = m.certificate.to_pem();
    assert!(matches!(
        parse_instructions(&no_cmd),
        Err(Error::BadInstructions(_))
    ));
}

#[test]
fn oversized_and_malformed_rosters_are_refused() {
    assert!(matches!(
        Roster::from_toml(b"[roster]\nfederation = 1", SystemTime::now()),
        Err(Error::Malformed(_))
    ));
    assert!(matches!(
        Roster::from_toml(&[0xff, 0xfe], SystemTime::now()),
        Err(Error::Malformed(_))
    ));
    let (key, d) = draft(1);
    let roster = create(d, key.signing_key(), SystemTime::now()).expect("create");
    let extra = roster
        .to_toml()
        .replace("[signature]\n", "[signature]\nnote = \"x\"\n");
    assert!(matches!(
        Roster::from_toml(extra.as_bytes(), SystemTime::now()),
        Err(Error::Malformed(_))
    ));
}
