//! Fills a home's registry with N synthetic peers (for scripts/bench-registry).
//! Usage: cargo run --release --example populate_registry -- HOME N

use std::time::SystemTime;

use secagg::pki::certificate::{self, CertParams};

use secagg::clock::unix_secs;
use secagg::party::Role;
use secagg::pki::identity::{Home, PartyKey};
use secagg::pki::registry::{NewPeer, OnDuplicate, Peer, Registry};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let (Some(home), Some(n)) = (args.get(1), args.get(2)) else {
        return Err("usage: populate_registry HOME N".into());
    };
    let home = Home::new(home);
    let n: usize = n.parse()?;
    let mut reg = Registry::open(&home.registry_path())?;
    let key = PartyKey::generate()?;
    for i in 0..n {
        let id = format!("node_{i:06}");
        let cert = certificate::self_signed(
            key.signing_key(),
            &CertParams::for_days(id.parse()?, "127.0.0.1".parse()?, 365),
        )?;
        let peer = Peer {
            party_id: id.parse()?,
            role: Role::Node,
            ip: "127.0.0.1".parse()?,
            port: 20000 + (i % 40000) as u16,
            fingerprint: cert.fingerprint(),
            not_after: cert.not_after_unix(),
            registered_at: unix_secs(SystemTime::now()),
        };
        reg.register(
            &NewPeer {
                peer,
                cert_der: cert.der(),
            },
            OnDuplicate::Refuse,
        )?;
    }
    Ok(())
}
