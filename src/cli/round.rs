//! `secagg round serve` and `secagg round join`: printing and progress only; the
//! protocol lives in `secagg::round`.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use super::Failure;
use super::args::{JoinArgs, RoundCmd, ServeArgs};
use super::secure::{parse_ids, quant, report_clipped};
use secagg::files::tensor::{self};
use secagg::party::PartyId;
use secagg::pki::identity::Home;
use secagg::pki::registry::Registry;
use secagg::round::node::{self, JoinParams, Stall};
use secagg::round::server::{self, ServeParams};
use secagg::secagg::prg::{self as mask};

pub(super) fn run(home: &Home, cmd: RoundCmd, verbose: u8) -> Result<(), Failure> {
    match cmd {
        RoundCmd::Serve(a) => serve(home, a, verbose),
        RoundCmd::Join(a) => join(home, a, verbose),
    }
}

fn registry(home: &Home) -> Result<Registry, Failure> {
    Registry::open_existing(&home.registry_path())?.ok_or_else(|| {
        Failure::new(
            format!("no registry in {}", home.root().display()),
            Some("register the other parties first with 'secagg certificate register'".into()),
        )
    })
}

/// A one-line progress display: redrawn in place on a terminal, milestones otherwise.
struct Board {
    tty: bool,
    verbose: u8,
    rows: BTreeMap<String, (u64, u64)>,
    last_draw: Option<Instant>,
    drawn: bool,
}

impl Board {
    fn new(verbose: u8) -> Board {
        Board {
            tty: std::io::stderr().is_terminal(),
            verbose,
            rows: BTreeMap::new(),
            last_draw: None,
            drawn: false,
        }
    }

    /// A log line, clearing the progress line first.
    fn say(&mut self, line: &str) {
        self.clear();
        eprintln!("{line}");
    }

    fn clear(&mut self) {
        if self.drawn {
            eprint!("\r\x1b[2K");
            self.drawn = false;
        }
    }

    fn detail(&mut self, line: &str) {
        if self.verbose > 0 {
            self.say(line);
        }
    }

    fn progress(&mut self, who: &str, done: u64, total: u64) {
        let before = self.rows.insert(who.to_string(), (done, total));
        let pct = |d: u64| d * 100 / total.max(1);
        if !self.tty {
            // Quarter milestones in the log with -v.
            let prev = before.map_or(0, |(d, _)| pct(d) / 25);
            if self.verbose > 0 && pct(done) / 25 > prev {
                self.say(&format!("  {who}: {}%", pct(done) / 25 * 25));
            }
            return;
        }
        let due = self
            .last_draw
            .is_none_or(|t| t.elapsed() >= Duration::from_millis(100));
        if due || done == total {
            let line: Vec<String> = self
                .rows
                .iter()
                .map(|(k, (d, t))| format!("{k} {:>3}%", d * 100 / (*t).max(1)))
                .collect();
            eprint!("\r\x1b[2K{}", line.join("  "));
            let _ = std::io::stderr().flush();
            self.drawn = true;
            self.last_draw = Some(Instant::now());
        }
    }

    fn reset(&mut self) {
        self.rows.clear();
    }
}

fn listen_addr(home: &Home, a: &ServeArgs) -> Result<String, Failure> {
    if let Some(l) = &a.listen {
        return Ok(l.clone());
    }
    let c = home.load_config()?;
    Ok(match c.ip.ip() {
        Some(std::net::IpAddr::V6(ip)) => format!("[{ip}]:{}", c.port),
        Some(ip) => format!("{ip}:{}", c.port),
        None => format!("0.0.0.0:{}", c.port),
    })
}

fn serve(home: &Home, a: ServeArgs, verbose: u8) -> Result<(), Failure> {
    let me = home.load_identity()?;
    let reg = registry(home)?;
    let container = tensor::container_of(&a.out)?;
    let nodes = parse_ids(&a.nodes)?;
    let params = ServeParams {
        federation: a.federation.clone(),
        round: a.round,
        min_nodes: a.min_nodes.unwrap_or(nodes.len().min(3)),
        nodes,
        max_attempts: a.max_attempts,
        join_timeout: Duration::from_secs(a.join_timeout),
        timeout: Duration::from_secs(a.timeout.max(1)),
        quant: quant(a.quant),
        container: Some(container),
    };
    let addr = listen_addr(home, &a)?;
    let t = Instant::now();
    let mut board = Board::new(verbose);
    let result = server::serve(&me, &reg, &params, &addr, |ev| {
        use server::Event as E;
        match ev {
            E::Listening(addr) => board.say(&format!(
                "round {} of federation '{}': listening on {addr}, waiting for {} node(s) (min {})",
                a.round,
                a.federation,
                params.nodes.len(),
                params.min_nodes
            )),
            E::Refused { addr, reason } => board.say(&format!("refused {addr}: {reason}")),
            E::Connected(p) => board.detail(&format!("{p} connected")),
            E::Joined {
                party,
                joined,
                expected,
            } => board.say(&format!("{party} joined ({joined}/{expected})")),
            E::Attempt {
                attempt,
                participants,
                words,
            } => {
                board.reset();
                let ids: Vec<&str> = participants.iter().map(PartyId::as_str).collect();
                board.say(&format!(
                    "attempt {attempt}: {} participant(s) [{}], {words} words each",
                    ids.len(),
                    ids.join(", ")
                ));
            }
            E::Progress {
                party,
                words,
                total,
            } => board.progress(party.as_str(), words, total),
            E::Delivered(p) => board.detail(&format!("{p} delivered its update")),
            E::Dropped { party, reason } => board.say(&format!("dropped {party}: {reason}")),
            E::ResultSent(p) => board.detail(&format!("sent the result to {p}")),
        }
    });
    let served = match result {
        Ok(s) => s,
        Err(e) => {
            board.clear();
            return Err(e.into());
        }
    };
    tensor::write_encoded(&a.out, &served.layout, &served.mean)?;
    board.say(&format!(
        "round {} complete at attempt {}: weighted mean of {} node(s) (total weight {}) written to {} in {:.2}s",
        a.round,
        served.attempt,
        served.participants.len(),
        served.total_weight,
        a.out.display(),
        t.elapsed().as_secs_f64()
    ));
    Ok(())
}

fn join(home: &Home, a: JoinArgs, verbose: u8) -> Result<(), Failure> {
    let me = home.load_identity()?;
    let mut reg = registry(home)?;
    let input_kind = tensor::container_of(&a.input)?;
    if let Some(out) = &a.out {
        if tensor::container_of(out)? != input_kind {
            return Err(Failure::new(
                format!("--out {} is not the format of --input", out.display()),
                Some("use the same extension as the update (.npy or .safetensors)".into()),
            ));
        }
    }
    let researcher = match &a.researcher {
        Some(r) => Some(r.trim().parse::<PartyId>()?),
        None => None,
    };
    let params = JoinParams {
        researcher,
        input: a.input.clone(),
        weight: a.weight,
        min_nodes: a.min_nodes.max(2),
        max_attempts: a.max_attempts,
        timeout: Duration::from_secs(a.timeout.max(1)),
        threads: mask::default_threads(),
        stall: a.insecure_test_stall_after_bytes.map(|after_bytes| Stall {
            after_bytes,
            secs: a.insecure_test_stall_secs,
        }),
    };
    let t = Instant::now();
    let mut board = Board::new(verbose);
    let joined = node::join(&me, &mut reg, &params, |ev| {
        use node::Event as E;
        match ev {
            E::Connecting { researcher, addr } => {
                board.detail(&format!("connecting to researcher {researcher} at {addr}"))
            }
            E::Connected { federation, round } => board.say(&format!(
                "joined round {round} of federation '{federation}'; waiting for the other nodes"
            )),
            E::Attempt {
                attempt,
                participants,
            } => {
                board.reset();
                board.say(&format!(
                    "attempt {attempt}: masking for {} participant(s)",
                    participants.len()
                ))
            }
            E::Masked {
                values,
                clipped,
                clip,
                secs,
            } => {
                report_clipped(clipped, values, clip);
                board.detail(&format!("masked {values} values in {secs:.2}s"));
            }
            E::Sending { sent, total } => board.progress("sent", sent, total),
            E::Stalling(secs) => board.say(&format!("test stall: pausing {secs}s")),
            E::Receiving { bytes, total } => board.progress("result", bytes, total),
        }
    });
    let joined = match joined {
        Ok(j) => j,
        Err(e) => {
            board.clear();
            return Err(e.into());
        }
    };
    if let Some(out) = &a.out {
        tensor::write_encoded(out, &joined.layout, &joined.mean)?;
    }
    board.say(&format!(
        "round {} complete at attempt {}: weighted mean of {} node(s) (total weight {}){} in {:.2}s",
        joined.round,
        joined.attempt,
        joined.participants.len(),
        joined.total_weight,
        a.out
            .as_ref()
            .map(|o| format!(" written to {}", o.display()))
            .unwrap_or_default(),
        t.elapsed().as_secs_f64()
    ));
    Ok(())
}
