//! Registration instructions, as `certificate registration-instructions` prints them.

use serde::Deserialize;

use crate::party::{self, Fingerprint};
use crate::pki::certificate::{self, PeerCertificate};

use super::{Error, Member, Result};

#[derive(Deserialize)]
struct InstructionsJson {
    party_id: String,
    role: String,
    ip: String,
    port: u64,
    fingerprint: String,
    certificate_pem: String,
}

/// Reads what `certificate registration-instructions` printed (text or `--json`): the
/// certificate, and the id, role, address and port of its command. The fingerprint in
/// the command must be the certificate's. Registration checks come later ([`create`]).
pub fn parse_instructions(text: &str) -> Result<Member> {
    let (id, role, ip, port, stated, pem) = if text.trim_start().starts_with('{') {
        let j: InstructionsJson =
            serde_json::from_str(text).map_err(|e| Error::BadInstructions(e.to_string()))?;
        (
            j.party_id,
            j.role,
            j.ip,
            j.port,
            j.fingerprint,
            j.certificate_pem,
        )
    } else {
        instructions_text(text)?
    };
    let certificate =
        PeerCertificate::from_pem(pem.as_bytes()).map_err(Error::InstructionsCertificate)?;
    let stated: Fingerprint = stated.parse()?;
    if stated != certificate.fingerprint() {
        return Err(Error::InstructionsFingerprint {
            stated,
            actual: certificate.fingerprint(),
        });
    }
    Ok(Member {
        party_id: id.parse()?,
        role: role.parse()?,
        ip: ip.parse()?,
        port: party::parse_port(port)?,
        certificate,
    })
}

type InstructionFields = (String, String, String, u64, String, String);

pub(super) fn instructions_text(text: &str) -> Result<InstructionFields> {
    const BEGIN: &str = "-----BEGIN ";
    const END: &str = "-----END CERTIFICATE-----";
    let pem = match text.matches(BEGIN).count() {
        0 => return Err(Error::InstructionsCertificate(certificate::Error::NotPem)),
        1 => {
            let start = text.find(BEGIN).unwrap_or(0);
            let end = text[start..]
                .find(END)
                .map(|e| start + e + END.len())
                .ok_or(Error::InstructionsCertificate(certificate::Error::NotPem))?;
            format!("{}\n", &text[start..end])
        }
        n => {
            return Err(Error::InstructionsCertificate(
                certificate::Error::TooManyBlocks(n),
            ));
        }
    };
    let command = text
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("secagg ") && l.contains(" certificate register "))
        .ok_or_else(|| {
            Error::BadInstructions("no 'secagg certificate register ...' command line".into())
        })?;
    let words: Vec<&str> = command.split_whitespace().collect();
    let flag = |name: &str| {
        words
            .iter()
            .position(|w| *w == name)
            .and_then(|i| words.get(i + 1))
            .map(|v| (*v).to_owned())
    };
    let need = |name: &str| {
        flag(name).ok_or_else(|| Error::BadInstructions(format!("the command has no {name}")))
    };
    let port = need("--port")?;
    let port = port.parse::<u64>().map_err(|_| {
        Error::BadInstructions(format!("the command's --port '{port}' is not a number"))
    })?;
    Ok((
        need("--party-id")?,
        flag("--role").unwrap_or_else(|| "node".into()),
        need("--ip")?,
        port,
        need("--fingerprint")?,
        pem,
    ))
}
