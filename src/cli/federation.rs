//! `secagg federation ...`: create, show and import signed rosters (docs/roster.md).

use std::io::Write;
use std::path::Path;
use std::time::SystemTime;

use super::args::{FederationCmd, FederationCreateArgs, FederationImportArgs, FederationShowArgs};
use super::{Failure, prompt};
use secagg::atomic;
use secagg::clock::{format_time, unix_secs};
use secagg::party::Fingerprint;
use secagg::pki::federation::Applied;
use secagg::pki::identity::{self, Home};
use secagg::pki::registry::Registry;
use secagg::pki::roster::{
    self, Changes, Draft, FederationName, ImportPlan, Member, MemberRecord, Roster,
    RosterFingerprint,
};

/// `show` needs no home (it only marks this party's line when there is one).
pub(super) fn run(home: Result<Home, Failure>, cmd: FederationCmd) -> Result<(), Failure> {
    match cmd {
        FederationCmd::Show(a) => show(home.ok().as_ref(), a),
        FederationCmd::Create(a) => create(&home?, a),
        FederationCmd::Import(a) => import(&home?, a),
    }
}

fn read_roster(path: &Path) -> Result<Roster, Failure> {
    let file = path.display().to_string();
    let bytes = roster::read_capped(path, roster::MAX_ROSTER_BYTES)?;
    Roster::from_toml(&bytes, SystemTime::now()).map_err(|e| Failure::from(e).context(&file))
}

fn create(home: &Home, a: FederationCreateArgs) -> Result<(), Failure> {
    let name: FederationName = a.name.parse()?;
    let me = home.load_identity()?;
    if me.config.role != secagg::party::Role::Researcher {
        return Err(Failure::new(
            format!(
                "'{}' is a {}; only the researcher creates a federation's roster",
                me.config.party_id, me.config.role
            ),
            Some("run 'federation create' in the researcher's home (--home); nodes run 'federation import'".into()),
        ));
    }
    let mut members = Vec::with_capacity(a.instructions.len().min(roster::MAX_MEMBERS));
    if a.instructions.len() > roster::MAX_MEMBERS {
        return Err(roster::Error::TooManyMembers(a.instructions.len()).into());
    }
    for path in &a.instructions {
        let file = path.display().to_string();
        let bytes = roster::read_capped(path, roster::MAX_INSTRUCTIONS_BYTES)?;
        let text = String::from_utf8(bytes).map_err(|_| {
            Failure::from(roster::Error::BadInstructions(
                "the file is not UTF-8 text".into(),
            ))
            .context(&file)
        })?;
        let member =
            roster::parse_instructions(&text).map_err(|e| Failure::from(e).context(&file))?;
        members.push(member);
    }

    identity::create_home_dir(home.root())?;
    let mut reg = Registry::open(&home.registry_path())?;
    let previous = reg.federation(&name)?;
    let own_fp = me.certificate.fingerprint();
    if let Some(prev) = &previous {
        let same_key = secagg::pki::certificate::PeerCertificate::from_der(&prev.researcher_der)
            .map(|c| c.public_key() == me.certificate.public_key())
            .unwrap_or(false);
        if !same_key {
            return Err(roster::Error::DifferentResearcher {
                name: name.clone(),
                have: prev.researcher.party_id.clone(),
                have_fp: prev.researcher.fingerprint,
            }
            .into());
        }
    }
    let now = SystemTime::now();
    let draft = Draft {
        federation: name.clone(),
        version: previous.as_ref().map_or(1, |p| p.version + 1),
        created_at: unix_secs(now),
        researcher: Member {
            party_id: me.config.party_id.clone(),
            role: secagg::party::Role::Researcher,
            ip: me.config.ip.clone(),
            port: me.config.port,
            certificate: me.certificate.clone(),
        },
        members,
    };
    let roster = roster::create(draft, me.key.signing_key(), now)?;

    // Stage the file, register, then move the file into place: a refused registration
    // leaves neither a roster file nor a registry change.
    let out = a.out.display().to_string();
    let io = |e: std::io::Error| {
        Failure::new(
            format!("cannot write {out}: {e}"),
            Some("pass --out with a path in a writable directory".into()),
        )
    };
    let mut staged = atomic::stage(&a.out, false).map_err(io)?;
    staged
        .file()
        .write_all(roster.to_toml().as_bytes())
        .map_err(io)?;
    let expected = previous.as_ref().map(|p| (p.version, p.roster_fingerprint));
    let applied = reg.apply_roster(&roster, &own_fp, expected, unix_secs(now))?;
    staged.commit().map_err(io)?;

    if let Some(prev) = &previous {
        print_changes(&roster::diff(prev, &roster));
    }
    print_applied(&applied);
    eprintln!(
        "wrote {out}: federation '{name}' version {} with {} members, signed by '{}'",
        roster.version(),
        roster.members().len(),
        me.config.party_id
    );
    print_roster(&roster, Some(&own_fp));
    eprintln!(
        "next: send {out} to every member; read the roster fingerprint to them over a trusted channel; each runs\n  secagg federation import {} --fingerprint {}",
        a.out
            .file_name()
            .map_or_else(|| out.clone(), |n| n.to_string_lossy().into_owned()),
        roster.fingerprint()
    );
    Ok(())
}

fn show(home: Option<&Home>, a: FederationShowArgs) -> Result<(), Failure> {
    let roster = read_roster(&a.file)?;
    let own = home
        .filter(|h| h.cert_path().exists())
        .and_then(|h| h.load_certificate().ok())
        .map(|c| c.fingerprint());
    print_roster(&roster, own.as_ref());
    if let Some(own) = own {
        let line = std::iter::once(roster.researcher())
            .chain(roster.members())
            .find(|m| m.certificate.fingerprint() == own);
        match line {
            Some(m) => eprintln!(
                "this party's certificate is the line of '{}' (marked *)",
                m.party_id
            ),
            None => eprintln!("this party's certificate is not in this roster"),
        }
    }
    Ok(())
}

fn import(home: &Home, a: FederationImportArgs) -> Result<(), Failure> {
    let expected: Option<RosterFingerprint> =
        a.fingerprint.as_deref().map(str::parse).transpose()?;
    let me = home.load_identity()?;
    let roster = read_roster(&a.file)?;
    let own_fp = me.certificate.fingerprint();
    identity::create_home_dir(home.root())?;
    let mut reg = Registry::open(&home.registry_path())?;
    let previous = reg.federation(roster.federation())?;
    let plan = roster::plan_import(
        &roster,
        previous.as_ref(),
        &me.config.party_id,
        &own_fp,
        expected.as_ref(),
    )?;
    let name = roster.federation();
    match &plan {
        ImportPlan::UpToDate => {
            eprintln!(
                "federation '{name}' is already at version {} ({}); nothing to do",
                roster.version(),
                roster.fingerprint()
            );
            return Ok(());
        }
        ImportPlan::First => eprintln!(
            "roster fingerprint matches: federation '{name}' version {}, {} members",
            roster.version(),
            roster.members().len()
        ),
        ImportPlan::Update { from, changes } => {
            eprintln!(
                "federation '{name}': version {from} -> {}, signed by researcher '{}'",
                roster.version(),
                roster.researcher().party_id
            );
            print_changes(changes);
            if expected.is_none() && !a.yes {
                let ok = prompt::confirm(
                    "Apply these changes to your registry?",
                    "read the changes above, then pass --yes to apply them (or --fingerprint FP after checking it with the researcher)",
                )?;
                if !ok {
                    return Err(Failure::new(
                        "not imported: changes not confirmed; nothing was changed".into(),
                        None,
                    ));
                }
            }
        }
    }
    let expected_prev = previous.as_ref().map(|p| (p.version, p.roster_fingerprint));
    let applied = reg.apply_roster(
        &roster,
        &own_fp,
        expected_prev,
        unix_secs(SystemTime::now()),
    )?;
    print_applied(&applied);
    eprintln!(
        "imported federation '{name}' version {} ({})",
        roster.version(),
        roster.fingerprint()
    );
    Ok(())
}

fn print_changes(c: &Changes) {
    if c.is_empty() {
        eprintln!("  no member changes");
    }
    let line = |m: &MemberRecord| {
        format!(
            "{} {} {}:{} {}",
            m.party_id,
            m.role,
            m.ip,
            m.port,
            m.fingerprint.short()
        )
    };
    for m in &c.added {
        eprintln!("  + add {}", line(m));
    }
    for m in &c.removed {
        eprintln!("  - remove {}", line(m));
    }
    for (o, n) in &c.recertified {
        eprintln!(
            "  ~ new certificate for {}: {} -> {}",
            n.party_id,
            o.fingerprint.short(),
            n.fingerprint.short()
        );
    }
    for (o, n) in &c.moved {
        eprintln!(
            "  ~ address of {}: {}:{} -> {}:{}",
            n.party_id, o.ip, o.port, n.ip, n.port
        );
    }
    if let Some((o, n)) = &c.researcher {
        eprintln!("  ~ researcher: {} -> {}", line(o), line(n));
    }
}

fn print_applied(a: &Applied) {
    let list = |ids: &[secagg::party::PartyId]| {
        let mut ids: Vec<&str> = ids.iter().map(|i| i.as_str()).collect();
        ids.sort_unstable();
        ids.join(", ")
    };
    for (what, ids) in [
        ("registered", &a.added),
        ("updated", &a.updated),
        ("unchanged", &a.unchanged),
        ("removed", &a.removed),
        ("dropped from the federation, still registered", &a.kept),
    ] {
        if !ids.is_empty() {
            eprintln!("{what}: {}", list(ids));
        }
    }
}

/// The member table and the roster fingerprint, on stdout; `*` marks this party's line.
fn print_roster(roster: &Roster, own: Option<&Fingerprint>) {
    println!("federation: {}", roster.federation());
    println!("version: {}", roster.version());
    println!("created: {}", format_time(roster.created_at()));
    println!();
    let mut lines: Vec<&Member> = roster.members().iter().collect();
    lines.sort_by(|a, b| a.party_id.cmp(&b.party_id));
    lines.insert(0, roster.researcher());
    let header = ["PARTY ID", "ROLE", "IP", "PORT", "CERTIFICATE FINGERPRINT"];
    let rows: Vec<[String; 5]> = lines
        .iter()
        .map(|m| {
            let mark = if own == Some(&m.certificate.fingerprint()) {
                "*"
            } else {
                ""
            };
            [
                format!("{}{mark}", m.party_id),
                m.role.to_string(),
                m.ip.to_string(),
                m.port.to_string(),
                m.certificate.fingerprint().to_string(),
            ]
        })
        .collect();
    super::print_table(header, &rows);
    println!();
    println!("roster fingerprint: {}", roster.fingerprint());
}
