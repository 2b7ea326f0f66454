//! `secagg round serve | join | list`: arguments into parameters, events into lines on
//! stderr, outcomes into files and (with `--json`) a summary on stdout. The protocol
//! lives in `secagg::round`.

use std::collections::BTreeSet;
use std::io::{IsTerminal, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use super::Failure;
use super::args::{JoinArgs, RoundCmd, RoundListArgs, ServeArgs};
use super::secure::{parse_ids, quant};
use secagg::clock::format_time;
use secagg::files::job;
use secagg::files::tensor;
use secagg::layout::{Container, DType, Layout, TensorSpec};
use secagg::party::{Fingerprint, PartyId, Role};
use secagg::pki::identity::{Home, PolicyConfig};
use secagg::pki::registry::Registry;
use secagg::round::join::{self, JoinEvent, JoinParams};
use secagg::round::policy::{Policy, default_threshold, tolerated_colluders};
use secagg::round::serve::{self, ServeEvent, ServeParams};
use secagg::secagg::prg;

pub(super) fn run(home: &Home, cmd: RoundCmd, quiet: bool) -> Result<(), Failure> {
    match cmd {
        RoundCmd::Serve(a) => serve(home, a, quiet),
        RoundCmd::Join(a) => join(home, a, quiet),
        RoundCmd::List(a) => list(home, a),
    }
}

fn registry(home: &Home) -> Result<Registry, Failure> {
    Registry::open_existing(&home.registry_path())?.ok_or_else(|| {
        Failure::new(
            format!("no registry in {}", home.root().display()),
            Some("register the other parties first ('secagg federation import' or 'secagg certificate register')".into()),
        )
    })
}

/// Progress on stderr: phase lines unless `-q`; the sending bar only on a terminal.
struct Board {
    tty: bool,
    quiet: bool,
    drawn: bool,
    last: Option<Instant>,
}

impl Board {
    fn new(quiet: bool) -> Board {
        Board {
            tty: std::io::stderr().is_terminal() && !quiet,
            quiet,
            drawn: false,
            last: None,
        }
    }

    fn say(&mut self, line: &str) {
        self.clear();
        if !self.quiet {
            eprintln!("{line}");
        }
    }

    fn clear(&mut self) {
        if self.drawn {
            eprint!("\r\x1b[2K");
            self.drawn = false;
        }
    }

    fn bar(&mut self, what: &str, done: u64, total: u64) {
        if !self.tty {
            return;
        }
        let due = self
            .last
            .is_none_or(|t| t.elapsed() >= Duration::from_millis(100));
        if due || done == total {
            let pct = done * 100 / total.max(1);
            let filled = (pct / 5) as usize;
            eprint!(
                "\r\x1b[2K{what} [{}{}] {pct:>3}%",
                "#".repeat(filled),
                " ".repeat(20 - filled.min(20))
            );
            let _ = std::io::stderr().flush();
            self.drawn = true;
            self.last = Some(Instant::now());
        }
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

/// The tensors of the round: `--like FILE`, or `--shape` for a single-tensor .npy.
fn announced_layout(a: &ServeArgs) -> Result<Layout, Failure> {
    if let Some(like) = &a.like {
        return Ok(tensor::read_layout(like)?);
    }
    let Some(shape) = &a.shape else {
        return Err(Failure::new(
            "the round needs the shape of the updates".into(),
            Some("pass --like FILE (e.g. the global model) or --shape DIMS (e.g. --shape 1000 or --shape 10x100)".into()),
        ));
    };
    let dims = shape
        .split(['x', ','])
        .map(|d| d.trim().parse::<u64>())
        .collect::<Result<Vec<u64>, _>>()
        .ok()
        .filter(|d| !d.is_empty() && d.iter().all(|x| *x > 0))
        .ok_or_else(|| {
            Failure::new(
                format!("invalid --shape '{shape}'"),
                Some("give positive dimensions separated by x, e.g. --shape 10x100".into()),
            )
        })?;
    let dtype = match a.dtype.as_str() {
        "f32" | "float32" => DType::F32,
        "f64" | "float64" => DType::F64,
        other => {
            return Err(Failure::new(
                format!("invalid --dtype '{other}'"),
                Some("use f32 or f64".into()),
            ));
        }
    };
    Ok(Layout {
        container: Container::Npy,
        tensors: vec![TensorSpec {
            name: String::new(),
            shape: dims,
            dtype,
        }],
    })
}

fn model_digest(model: Option<&Path>) -> Result<Option<[u8; 32]>, Failure> {
    model
        .map(|m| {
            job::model_digest(m)
                .map_err(|e| Failure::from(e).context(format!("--model {}", m.display())))
        })
        .transpose()
}

fn serve(home: &Home, a: ServeArgs, quiet: bool) -> Result<(), Failure> {
    let me = home.load_identity()?;
    let mut reg = registry(home)?;
    let nodes = parse_ids(&a.nodes)?;
    let n = nodes.len();
    let t = a.threshold.unwrap_or_else(|| default_threshold(n));
    if t > n || 2 * t <= n {
        return Err(Failure::new(
            format!(
                "--threshold {t} is not possible with {n} node(s): it must be more than half of them and at most all"
            ),
            Some(format!(
                "use a threshold from {} to {n} (the default is {})",
                n / 2 + 1,
                default_threshold(n)
            )),
        ));
    }
    let layout = announced_layout(&a)?;
    if tensor::container_of(&a.out)? != layout.container {
        return Err(Failure::new(
            format!("--out {} is not the format of the updates", a.out.display()),
            Some("use the extension of the updates (.npy or .safetensors)".into()),
        ));
    }
    join::check_out(&a.out, a.force).map_err(|e| {
        Failure::new(
            e.to_string(),
            Some("pass --force to replace it, or choose another --out".into()),
        )
    })?;
    let model = model_digest(a.model.as_deref())?;
    let params = ServeParams {
        federation: a.federation.clone(),
        round: a.round,
        nodes,
        threshold: t,
        join_timeout: Duration::from_secs(a.join_timeout.max(1)),
        timeout: Duration::from_secs(a.timeout.max(1)),
        quant: quant(a.quant),
        layout: layout.clone(),
        model,
        spill_dir: home.root().join("spill"),
        threads: prg::default_threads(),
    };
    let addr = listen_addr(home, &a)?;
    let started = Instant::now();
    let mut board = Board::new(quiet);
    let result = serve::serve(&me, &mut reg, &params, &addr, |ev| {
        match ev {
        ServeEvent::Listening(addr) => board.say(&format!(
            "round {} of federation '{}': listening on {addr} for {n} node(s), threshold {t} (tolerates {} dropouts and up to {} colluding nodes)",
            a.round,
            a.federation,
            n - t,
            tolerated_colluders(n, t)
        )),
        ServeEvent::Refused { addr, reason } => board.say(&format!("refused {addr}: {reason}")),
        ServeEvent::Connected(p) => board.say(&format!("{p} connected")),
        ServeEvent::Phase(line) => board.say(line),
        ServeEvent::Dropped { party, reason } => board.say(&format!("dropped {party}: {reason}")),
    }
    });
    let served = match result {
        Ok(s) => s,
        Err(e) => {
            board.clear();
            return Err(e.into());
        }
    };
    tensor::write_encoded(&a.out, &layout, &served.mean)?;
    let ids = |fps: &[Fingerprint]| -> Vec<String> {
        let mut v: Vec<String> = fps
            .iter()
            .map(|f| {
                served
                    .names
                    .get(f)
                    .map_or_else(|| f.short(), |p| p.to_string())
            })
            .collect();
        v.sort();
        v
    };
    let survivors = ids(&served.outcome.u3);
    board.say(&format!(
        "round {} complete: weighted mean of {} node(s) [{}] (total weight {}) written to {} in {:.2}s",
        a.round,
        survivors.len(),
        survivors.join(", "),
        served.total_weight,
        a.out.display(),
        started.elapsed().as_secs_f64()
    ));
    if a.json {
        let summary = serde_json::json!({
            "federation": a.federation,
            "round": a.round,
            "role": "researcher",
            "invited": a.nodes,
            "advertised": ids(&served.outcome.u1),
            "shared": ids(&served.outcome.u2),
            "survivors": survivors,
            "unmasked": ids(&served.outcome.u5),
            "total_weight": served.total_weight,
            "out": a.out.display().to_string(),
        });
        println!("{summary}");
    }
    Ok(())
}

/// The node's policy: defaults, then `[policy]` in config.toml, then the flags.
fn policy(reg: &Registry, cfg: &PolicyConfig, a: &JoinArgs) -> Result<Policy, Failure> {
    let d = Policy::default();
    let federation = a.federation.clone().or_else(|| cfg.federation.clone());
    if federation.is_none() {
        return Err(Failure::new(
            "this node serves no federation yet".into(),
            Some("pass --federation ID (the name the researcher announces), or set federation in the [policy] table of config.toml".into()),
        ));
    }
    let ids: Vec<String> = if a.require_peers.is_empty() {
        cfg.require_peers.clone().unwrap_or_default()
    } else {
        a.require_peers.clone()
    };
    let mut require = BTreeSet::new();
    for id in &ids {
        let id: PartyId = id.trim().parse()?;
        let Some((peer, der)) = reg.get(&id)? else {
            return Err(Failure::new(
                format!("required peer '{id}' is not registered here"),
                Some("list registered nodes with 'secagg certificate list'".into()),
            ));
        };
        if peer.role != Role::Node {
            return Err(Failure::new(
                format!("required peer '{id}' is registered as a researcher, not a node"),
                None,
            ));
        }
        require.insert(Fingerprint::of_der(&der));
    }
    let count = a
        .require_peers_count
        .or(cfg.require_peers_count)
        .unwrap_or(require.len());
    if count > require.len() {
        return Err(Failure::new(
            format!(
                "--require-peers-count {count} is more than the {} required peer(s) named",
                require.len()
            ),
            None,
        ));
    }
    Ok(Policy {
        federation,
        max_clip: a.max_clip.or(cfg.max_clip).unwrap_or(d.max_clip),
        min_bits: cfg.min_bits.unwrap_or(d.min_bits),
        max_bits: cfg.max_bits.unwrap_or(d.max_bits),
        max_weight: a.max_weight.or(cfg.max_weight).unwrap_or(d.max_weight),
        min_nodes: a.min_nodes.or(cfg.min_nodes).unwrap_or(d.min_nodes),
        min_threshold: a.min_threshold.or(cfg.min_threshold),
        require_peers: require,
        require_peers_count: count,
        fixed_weight: a.fixed_weight || cfg.fixed_weight.unwrap_or(false),
    })
}

fn join(home: &Home, a: JoinArgs, quiet: bool) -> Result<(), Failure> {
    let me = home.load_identity()?;
    let mut reg = registry(home)?;
    let input_kind = tensor::container_of(&a.input)?;
    if let Some(out) = &a.out
        && tensor::container_of(out)? != input_kind
    {
        return Err(Failure::new(
            format!("--out {} is not the format of --input", out.display()),
            Some("use the same extension as the update (.npy or .safetensors)".into()),
        ));
    }
    let researcher = match &a.researcher {
        Some(r) => Some(r.trim().parse::<PartyId>()?),
        None => None,
    };
    let policy = policy(&reg, &me.config.policy, &a)?;
    let model = model_digest(a.model.as_deref())?;
    let params = JoinParams {
        researcher,
        input: a.input.clone(),
        weight: a.weight,
        out: a.out.clone(),
        force: a.force,
        policy,
        model,
        timeout: Duration::from_secs(a.timeout.max(1)),
        threads: prg::default_threads(),
        stall: a
            .insecure_test_stall_after_bytes
            .map(|after| (after, Duration::from_secs(a.insecure_test_stall_secs))),
    };
    let started = Instant::now();
    let mut board = Board::new(quiet);
    let joined = join::join(&me, &mut reg, &params, |ev| {
        match ev {
        JoinEvent::Waiting { addr, left } => {
            board.say(&format!("waiting for researcher at {addr} ({left}s left)"))
        }
        JoinEvent::Announced { federation, round } => board.say(&format!(
            "round {round} of federation '{federation}' announced; checking it against this node's policy"
        )),
        JoinEvent::Phase(line) => board.say(line),
        JoinEvent::Sending { sent, total } => board.bar("sending masked update", sent, total),
        JoinEvent::Clipped { count, clip } => board.say(&format!(
            "note: {count} value(s) were outside [-{clip}, {clip}] and were clipped"
        )),
        JoinEvent::Sent(bytes) => board.say(&format!(
            "masked update sent ({bytes} bytes); waiting for the researcher to close the survivor set"
        )),
        JoinEvent::Stalling(secs) => board.say(&format!("test stall: pausing {secs}s")),
    }
    });
    let joined = match joined {
        Ok(j) => j,
        Err(e) => {
            board.clear();
            return Err(e.into());
        }
    };
    let names = |fps: &[Fingerprint]| -> Vec<String> {
        let mut v: Vec<String> = fps
            .iter()
            .map(|f| joined.names.get(f).cloned().unwrap_or_else(|| f.short()))
            .collect();
        v.sort();
        v
    };
    let s = &joined.summary;
    board.say(&format!(
        "round {} complete: weighted mean of {} node(s) (total weight {}){} in {:.2}s",
        joined.round,
        s.u3.len(),
        s.total_weight,
        joined
            .out
            .as_ref()
            .map(|o| format!(" written to {}", o.display()))
            .unwrap_or_default(),
        started.elapsed().as_secs_f64()
    ));
    if a.json {
        let summary = serde_json::json!({
            "federation": joined.federation,
            "round": joined.round,
            "role": "node",
            "advertised": names(&s.u1),
            "shared": names(&s.u2),
            "survivors": names(&s.u3),
            "signers": names(&s.signers),
            "total_weight": s.total_weight,
            "out": joined.out.as_ref().map(|o| o.display().to_string()),
        });
        println!("{summary}");
    }
    Ok(())
}

fn list(home: &Home, a: RoundListArgs) -> Result<(), Failure> {
    let reg = registry(home)?;
    let rounds = reg.rounds()?;
    if a.json {
        let rows: Vec<serde_json::Value> = rounds
            .iter()
            .map(|r| {
                serde_json::json!({
                    "federation": r.federation,
                    "round": r.round,
                    "role": r.role.as_str(),
                    "started_at": format_time(r.started_at),
                    "signed": r.signed,
                    "outcome": r.outcome,
                    "detail": r.detail.as_deref().and_then(|d| serde_json::from_str::<serde_json::Value>(d).ok()),
                    "result": r.result_path,
                    "finished_at": r.finished_at.map(format_time),
                })
            })
            .collect();
        println!("{}", serde_json::Value::Array(rows));
        return Ok(());
    }
    if rounds.is_empty() {
        eprintln!("no rounds yet");
        return Ok(());
    }
    println!(
        "{:<20} {:>8} {:<10} {:<20} OUTCOME",
        "FEDERATION", "ROUND", "ROLE", "STARTED"
    );
    for r in rounds {
        println!(
            "{:<20} {:>8} {:<10} {:<20} {}",
            r.federation,
            r.round,
            r.role.as_str(),
            format_time(r.started_at),
            r.outcome.as_deref().unwrap_or("unfinished")
        );
    }
    Ok(())
}
