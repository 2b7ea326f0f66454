//! `secagg certificate ...`: generate, registration-instructions, register, list, delete.

use std::time::SystemTime;

use std::io::Write;

use serde::Serialize;

use super::args::{
    CertificateCmd, DeleteArgs, GenerateArgs, ListArgs, RegisterArgs, RenewArgs, RoleArg,
};
use super::{Failure, prompt};
use secagg::clock::format_time;
use secagg::clock::unix_secs;
use secagg::party::Fingerprint;
use secagg::party::{Host, PartyId, Role};
use secagg::pki::certificate::{PeerCertificate, RegistrationCheck, check_registration};
use secagg::pki::identity::{self, GenerateParams, Home};
use secagg::pki::registry::{self, NewPeer, OnDuplicate, Peer, Registered, Registry};

/// Certificates expiring within this many days are flagged in listings.
const EXPIRY_WARNING_DAYS: i64 = 30;

pub(super) fn run(home: &Home, cmd: CertificateCmd) -> Result<(), Failure> {
    match cmd {
        CertificateCmd::Generate(a) => generate(home, a),
        CertificateCmd::RegistrationInstructions(a) => instructions(home, a.json, false),
        CertificateCmd::Register(a) => register(home, a),
        CertificateCmd::List(a) => list(home, a),
        CertificateCmd::Delete(a) => delete(home, a),
        CertificateCmd::Renew(a) => renew(home, a),
    }
}

pub(super) fn role(r: RoleArg) -> Role {
    match r {
        RoleArg::Node => Role::Node,
        RoleArg::Researcher => Role::Researcher,
    }
}

fn generate(home: &Home, a: GenerateArgs) -> Result<(), Failure> {
    let role = role(a.role);
    let party_id = match a.party_id {
        Some(id) => id.parse()?,
        None => PartyId::random(role),
    };
    let params = GenerateParams {
        party_id,
        role,
        ip: a.ip.parse()?,
        port: secagg::party::parse_port(a.port)?,
        validity_days: a.validity_days,
    };
    if a.force && home.has_identity() && !a.yes {
        let ok = prompt::confirm(
            &format!(
                "Replace the identity in {}? Peers will have to register the new certificate",
                home.root().display()
            ),
            "pass --yes together with --force to replace the identity without asking",
        )?;
        if !ok {
            return Err(Failure::new("cancelled; nothing was changed".into(), None));
        }
    }
    let generated = identity::generate(home, &params, a.force)?;
    for (from, to) in &generated.backups {
        eprintln!("kept old {} as {}", from.display(), to.display());
    }
    let cert = &generated.identity.certificate;
    eprintln!(
        "generated {} '{}' in {}",
        role,
        params.party_id,
        home.root().display()
    );
    eprintln!("fingerprint: {}", cert.fingerprint());
    eprintln!(
        "next: run 'secagg certificate registration-instructions' and send the output to your peers"
    );
    Ok(())
}

#[derive(Serialize)]
struct InstructionsJson<'a> {
    party_id: &'a str,
    role: &'a str,
    ip: &'a str,
    port: u16,
    fingerprint: String,
    certificate_pem: String,
    pem_file: String,
    register_command: String,
}

/// Prints the registration instructions; after a renewal (`upsert`) the command
/// replaces the peer's current registration.
fn instructions(home: &Home, json: bool, upsert: bool) -> Result<(), Failure> {
    let config = home.load_config()?;
    let cert = home.load_certificate()?;
    let pem_file = format!("{}.pem", config.party_id);
    let command = format!(
        "secagg certificate register --public-key {pem_file} --party-id {} --ip {} --port {} --role {} --fingerprint {}{}",
        config.party_id,
        config.ip,
        config.port,
        config.role,
        cert.fingerprint(),
        if upsert { " --upsert" } else { "" }
    );
    if json {
        let out = InstructionsJson {
            party_id: config.party_id.as_str(),
            role: config.role.as_str(),
            ip: config.ip.as_str(),
            port: config.port,
            fingerprint: cert.fingerprint().to_string(),
            certificate_pem: cert.to_pem(),
            pem_file,
            register_command: command,
        };
        println!("{}", to_json(&out)?);
        return Ok(());
    }
    print!(
        "\
Registration instructions for {role} '{id}'

1. Send this certificate to each peer. They save it as {pem_file}:

{pem}
2. Read this fingerprint to each peer over a channel you trust (phone, video call,
   in person) and have them compare it with the file they received:

{fp_line}

3. Each peer registers this party with:

{command}
",
        role = config.role,
        id = config.party_id,
        pem = cert.to_pem(),
        fp_line = cert.fingerprint().openssl_line(),
    );
    Ok(())
}

fn register(home: &Home, a: RegisterArgs) -> Result<(), Failure> {
    let party_id: PartyId = a.party_id.parse()?;
    let ip: Host = a.ip.parse()?;
    let port = secagg::party::parse_port(a.port)?;
    let expected: Option<Fingerprint> = a.fingerprint.as_deref().map(str::parse).transpose()?;
    let cert = read_checked(home, &a, &party_id, expected.as_ref())?;
    identity::create_home_dir(home.root())?;
    let mut reg = Registry::open(&home.registry_path())?;
    // Fail early (before prompting) on what the transaction will refuse anyway.
    if let Some((holder, _)) = reg.get_by_fingerprint(&cert.fingerprint())?
        && holder.party_id != party_id
    {
        return Err(registry::Error::DuplicateFingerprint {
            fingerprint: cert.fingerprint(),
            existing: holder.party_id,
        }
        .into());
    }
    let existing = reg.get(&party_id)?;
    if existing.is_some() && !a.upsert {
        return Err(registry::Error::DuplicateId(party_id).into());
    }
    if expected.is_none() && !a.yes {
        confirm(&party_id, &cert, existing.is_some())?;
    }
    let new = NewPeer {
        peer: Peer {
            party_id: party_id.clone(),
            role: role(a.role),
            ip,
            port,
            fingerprint: cert.fingerprint(),
            not_after: cert.not_after_unix(),
            registered_at: unix_secs(SystemTime::now()),
        },
        cert_der: cert.der(),
    };
    let on_dup = if a.upsert {
        OnDuplicate::Replace
    } else {
        OnDuplicate::Refuse
    };
    match reg.register(&new, on_dup)? {
        Registered::Added => eprintln!("registered {} '{party_id}'", new.peer.role),
        Registered::Replaced(old) => eprintln!(
            "replaced '{party_id}' (was {} {}:{}, {})",
            old.role,
            old.ip,
            old.port,
            old.fingerprint.short()
        ),
    }
    Ok(())
}

/// Reads the certificate file and runs the registration checks, and the fingerprint
/// check when `--fingerprint` was given.
fn read_checked(
    home: &Home,
    a: &RegisterArgs,
    party_id: &PartyId,
    expected: Option<&Fingerprint>,
) -> Result<PeerCertificate, Failure> {
    let file = a.public_key.display().to_string();
    let bytes = std::fs::read(&a.public_key).map_err(|e| {
        Failure::new(
            format!("cannot read certificate file {file}: {e}"),
            Some("pass --public-key with the path where you saved the peer's PEM".into()),
        )
    })?;
    let cert = PeerCertificate::from_pem(&bytes).map_err(|e| Failure::from(e).context(&file))?;
    let check = RegistrationCheck {
        allow_expired: a.allow_expired,
        allow_cn_mismatch: a.allow_cn_mismatch,
    };
    let own = own_fingerprint(home)?;
    check_registration(&cert, party_id, own.as_ref(), SystemTime::now(), check)
        .map_err(|e| Failure::from(e).context(&file))?;
    if let Some(expected) = expected
        && *expected != cert.fingerprint()
    {
        return Err(Failure::new(
            format!(
                "{file}: fingerprint mismatch: the file has {}, you expected {expected}",
                cert.fingerprint()
            ),
            Some("do not register it: the file may have been replaced in transit; get it again and re-check over a trusted channel".into()),
        ));
    }
    Ok(cert)
}

/// Asks the user to confirm the fingerprint (a terminal only; otherwise an error asking
/// for `--fingerprint` or `--yes`).
fn confirm(party_id: &PartyId, cert: &PeerCertificate, replacing: bool) -> Result<(), Failure> {
    let replacing = if replacing {
        " (replacing the current registration)"
    } else {
        ""
    };
    eprintln!(
        "certificate for '{party_id}'\n  {}",
        cert.fingerprint().openssl_line()
    );
    let ok = prompt::confirm(
        &format!(
            "Does this fingerprint match what '{party_id}' told you over a trusted channel? Register it{replacing}"
        ),
        "check the fingerprint with the party, then pass --fingerprint FP (or --yes)",
    )?;
    if !ok {
        return Err(Failure::new(
            "not registered: fingerprint not confirmed".into(),
            None,
        ));
    }
    Ok(())
}

pub(super) fn own_fingerprint(home: &Home) -> Result<Option<Fingerprint>, Failure> {
    if !home.cert_path().exists() {
        return Ok(None);
    }
    Ok(Some(home.load_certificate()?.fingerprint()))
}

#[derive(Serialize)]
struct PeerJson<'a> {
    party_id: &'a str,
    role: &'a str,
    ip: &'a str,
    port: u16,
    fingerprint: String,
    not_after: String,
    registered_at: String,
    status: &'static str,
}

fn status(not_after: i64, now: i64) -> &'static str {
    if not_after < now {
        "expired"
    } else if not_after - now < EXPIRY_WARNING_DAYS * 86_400 {
        "expiring"
    } else {
        "ok"
    }
}

fn list(home: &Home, a: ListArgs) -> Result<(), Failure> {
    let peers = match Registry::open_read_only(&home.registry_path())? {
        Some(reg) => reg.list()?,
        None => Vec::new(),
    };
    let now = unix_secs(SystemTime::now());
    if a.json {
        let rows: Vec<PeerJson<'_>> = peers
            .iter()
            .map(|p| PeerJson {
                party_id: p.party_id.as_str(),
                role: p.role.as_str(),
                ip: p.ip.as_str(),
                port: p.port,
                fingerprint: p.fingerprint.to_string(),
                not_after: format_time(p.not_after),
                registered_at: format_time(p.registered_at),
                status: status(p.not_after, now),
            })
            .collect();
        let mut out = std::io::BufWriter::new(std::io::stdout().lock());
        serde_json::to_writer_pretty(&mut out, &rows)
            .map_err(std::io::Error::from)
            .and_then(|()| writeln!(out))
            .and_then(|()| out.flush())
            .map_err(|e| Failure::new(format!("cannot write JSON: {e}"), None))?;
        return Ok(());
    }
    if peers.is_empty() {
        eprintln!(
            "no peers registered in {}; register one with 'secagg certificate register'",
            home.root().display()
        );
        return Ok(());
    }
    let header = [
        "PARTY ID",
        "ROLE",
        "IP",
        "PORT",
        "FINGERPRINT",
        "EXPIRES",
        "REGISTERED",
        "STATUS",
    ];
    let rows: Vec<[String; 8]> = peers
        .iter()
        .map(|p| {
            let days = (p.not_after - now).div_euclid(86_400);
            let flag = match status(p.not_after, now) {
                "expired" => "EXPIRED".to_owned(),
                "expiring" => format!("expires in {days}d"),
                _ => "ok".to_owned(),
            };
            [
                p.party_id.to_string(),
                p.role.to_string(),
                p.ip.to_string(),
                p.port.to_string(),
                p.fingerprint.short(),
                format_time(p.not_after)[..10].to_owned(),
                format_time(p.registered_at)[..10].to_owned(),
                flag,
            ]
        })
        .collect();
    super::print_table(header, &rows);
    Ok(())
}

fn renew(home: &Home, a: RenewArgs) -> Result<(), Failure> {
    let renewed = identity::renew(home, a.validity_days)?;
    let cert = &renewed.identity.certificate;
    eprintln!(
        "renewed the certificate of '{}' for {} days (same key); old certificate kept as {}",
        renewed.identity.config.party_id,
        a.validity_days,
        renewed.backup.display()
    );
    eprintln!("new fingerprint: {}", cert.fingerprint());
    eprintln!(
        "peers must register the new certificate again: send them the instructions below \
         (their command uses --upsert to replace the old registration); in a federation, \
         the researcher makes the next roster version with 'secagg federation create'"
    );
    instructions(home, a.json, true)
}

fn delete(home: &Home, a: DeleteArgs) -> Result<(), Failure> {
    let id: PartyId = a.party_id.parse()?;
    let Some(mut reg) = Registry::open_existing(&home.registry_path())? else {
        return Err(registry::Error::UnknownParty(id).into());
    };
    let Some((peer, _)) = reg.get(&id)? else {
        return Err(registry::Error::UnknownParty(id).into());
    };
    if !a.yes {
        let ok = prompt::confirm(
            &format!(
                "Delete {} '{}' ({})?",
                peer.role,
                id,
                peer.fingerprint.short()
            ),
            "pass --yes to delete without asking",
        )?;
        if !ok {
            return Err(Failure::new("cancelled; nothing was deleted".into(), None));
        }
    }
    reg.delete(&id)?;
    eprintln!("deleted '{id}'");
    Ok(())
}

pub(super) fn to_json<T: Serialize>(v: &T) -> Result<String, Failure> {
    serde_json::to_string_pretty(v)
        .map_err(|e| Failure::new(format!("cannot encode JSON: {e}"), None))
}
