//! Rounds over mutual TLS on loopback, with real `secagg` processes: honest rounds on
//! .npy and .safetensors, nodes killed with SIGKILL, slow and hostile peers, refused
//! certificates, replays, and a lying researcher. Every mean is checked against one
//! computed here.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Lab, Party, read_all, values};
use secagg::files::tensor::{self};
use secagg::layout::{Container, DType, Layout, TensorSpec};
use secagg::net::channel::Channel;
use secagg::net::frame::{self as wire, Message, RoundId};
use secagg::net::tls::Pins;
use secagg::pki::identity::Home;

struct Fed {
    lab: Lab,
    port: u16,
    researcher: Party,
    nodes: Vec<Party>,
}

/// A free port below the kernel's ephemeral range (32768+), so that no outgoing
/// connection of a concurrently running test can take it before the researcher binds it.
fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let base = 12000 + (std::process::id() % 500) as u16 * 20;
    loop {
        let port = base + NEXT.fetch_add(1, Ordering::Relaxed) % 10000;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// A researcher and `n` nodes that registered each other.
fn federation(n: usize) -> Fed {
    let lab = Lab::new();
    let port = free_port();
    let researcher = lab.party("researcher_1", "researcher", port);
    let nodes: Vec<Party> = (1..=n)
        .map(|i| lab.party(&format!("node_{i}"), "node", 20000 + i as u16))
        .collect();
    for a in &nodes {
        researcher.register(a);
        a.register(&researcher);
        for b in nodes.iter().filter(|b| b.home != a.home) {
            a.register(b);
        }
    }
    Fed {
        lab,
        port,
        researcher,
        nodes,
    }
}

fn npy(n: u64) -> Layout {
    Layout {
        container: Container::Npy,
        tensors: vec![TensorSpec {
            name: String::new(),
            dtype: DType::F32,
            shape: vec![n],
        }],
    }
}

fn safetensors(a: u64, b: u64) -> Layout {
    Layout {
        container: Container::Safetensors,
        tensors: vec![
            TensorSpec {
                name: "dense.bias".into(),
                dtype: DType::F32,
                shape: vec![a],
            },
            TensorSpec {
                name: "dense.weight".into(),
                dtype: DType::F64,
                shape: vec![b, 4],
            },
        ],
    }
}

fn ext(layout: &Layout) -> &'static str {
    match layout.container {
        Container::Npy => "npy",
        Container::Safetensors => "safetensors",
    }
}

/// Writes one update per node; returns the values as stored.
fn write_inputs(fed: &Fed, layout: &Layout) -> Vec<(PathBuf, Vec<f64>)> {
    (0..fed.nodes.len())
        .map(|i| {
            let p = fed.lab.path(&format!("in{i}.{}", ext(layout)));
            let v = values(i as u64 + 1, layout.elements() as usize);
            tensor::write_values(&p, layout, v.iter().copied()).expect("write");
            let stored = read_all(&p);
            (p, stored)
        })
        .collect()
}

/// A process whose stderr goes to a file we can watch while it runs.
struct Proc {
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn spawn(party: &Party, args: &[&str], log: PathBuf) -> Proc {
        let file = std::fs::File::create(&log).expect("log");
        let child = party
            .cmd()
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("spawn");
        Proc { child, log }
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until stderr contains `needle`.
    fn wait_for(&self, needle: &str) {
        let t = Instant::now();
        while !self.stderr().contains(needle) {
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "never saw {needle:?}:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for exit (bounded); returns the exit code and stderr.
    fn finish(mut self) -> (Option<i32>, String) {
        let t = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return (status.code(), self.stderr());
            }
            if t.elapsed() > Duration::from_secs(120) {
                let _ = self.child.kill();
                panic!("process did not exit:\n{}", self.stderr());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill9(mut self) {
        self.child.kill().expect("SIGKILL");
        let _ = self.child.wait();
    }
}

fn serve(fed: &Fed, out: &Path, extra: &[&str]) -> Proc {
    let n = fed.nodes.len();
    let ids: Vec<String> = (1..=n).map(|i| format!("node_{i}")).collect();
    let ids = ids.join(",");
    let mut args = vec![
        "round",
        "serve",
        "--federation",
        "fed",
        "--nodes",
        &ids,
        "--out",
        out.to_str().expect("utf8"),
    ];
    args.extend_from_slice(extra);
    for (flag, default) in [
        ("--round", "1"),
        ("--timeout", "30"),
        ("--join-timeout", "30"),
    ] {
        if !extra.contains(&flag) {
            args.extend([flag, default]);
        }
    }
    Proc::spawn(&fed.researcher, &args, fed.lab.path("researcher.log"))
}

fn join(fed: &Fed, i: usize, input: &Path, weight: u64, extra: &[&str]) -> Proc {
    let out = fed.lab.path(&format!("mean_at_{i}.{}", ext_of(input)));
    let w = weight.to_string();
    let mut args = vec![
        "round",
        "join",
        "--input",
        input.to_str().expect("utf8"),
        "--weight",
        &w,
        "--timeout",
        "30",
        "--out",
        out.to_str().expect("utf8"),
    ];
    args.extend_from_slice(extra);
    Proc::spawn(&fed.nodes[i], &args, fed.lab.path(&format!("node_{i}.log")))
}

fn ext_of(p: &Path) -> String {
    p.extension()
        .and_then(|e| e.to_str())
        .unwrap_or("npy")
        .to_string()
}

/// Checks `got` against the weighted mean of the clipped inputs in `who`.
fn assert_mean(got: &[f64], inputs: &[(PathBuf, Vec<f64>)], weights: &[u64], who: &[usize]) {
    let total: u64 = who.iter().map(|&i| weights[i]).sum();
    let step = 1.0 / 32767.0;
    assert_eq!(got.len(), inputs[0].1.len());
    for (k, g) in got.iter().enumerate() {
        let plain: f64 = who
            .iter()
            .map(|&i| inputs[i].1[k].clamp(-1.0, 1.0) * weights[i] as f64)
            .sum::<f64>()
            / total as f64;
        // Half a quantization step, plus f32 rounding of the output.
        assert!(
            (g - plain).abs() <= step / 2.0 + 1e-6,
            "element {k}: secure {g} plain {plain} (participants {who:?})"
        );
    }
}

#[test]
fn three_nodes_npy_round_matches_plain_mean_everywhere() {
    let fed = federation(3);
    let layout = npy(50_000);
    let inputs = write_inputs(&fed, &layout);
    let weights = [3u64, 5, 11];
    let out = fed.lab.path("mean.npy");
    let server = serve(&fed, &out, &[]);
    let nodes: Vec<Proc> = (0..3)
        .map(|i| join(&fed, i, &inputs[i].0, weights[i], &[]))
        .collect();
    for (i, n) in nodes.into_iter().enumerate() {
        let (code, err) = n.finish();
        assert_eq!(code, Some(0), "node {i}: {err}");
        assert!(
            err.contains(
                "round 1 complete at attempt 1: weighted mean of 3 node(s) (total weight 19)"
            ),
            "{err}"
        );
    }
    let (code, err) = server.finish();
    assert_eq!(code, Some(0), "{err}");
    assert!(
        err.contains("attempt 1: 3 participant(s) [node_1, node_2, node_3]"),
        "{err}"
    );
    assert_eq!(tensor::read_layout(&out).expect("layout"), layout);
    let mean = read_all(&out);
    assert_mean(&mean, &inputs, &weights, &[0, 1, 2]);
    for i in 0..3 {
        let at_node = fed.lab.path(&format!("mean_at_{i}.npy"));
        assert_eq!(
            std::fs::read(&at_node).expect("node mean"),
            std::fs::read(&out).expect("mean"),
            "node {i} got another mean"
        );
    }
}

/// Five nodes; node 5 is killed with SIGKILL after it stalled at `stall_after` bytes.
/// Waits for nodes that must all succeed at attempt 2; returns their stderr.
fn finish_at_attempt_2(nodes: Vec<Proc>) -> Vec<String> {
    nodes
        .into_iter()
        .enumerate()
        .map(|(i, n)| {
            let (code, err) = n.finish();
            assert_eq!(code, Some(0), "node {i}: {err}");
            assert!(err.contains("complete at attempt 2"), "node {i}: {err}");
            err
        })
        .collect()
}

fn five_nodes_one_killed(layout: Layout, stall_after: &str, expect_partial: bool) {
    let fed = federation(5);
    let inputs = write_inputs(&fed, &layout);
    let weights = [2u64, 4, 6, 8, 10];
    let out = fed.lab.path(&format!("mean.{}", ext(&layout)));
    let server = serve(&fed, &out, &["--min-nodes", "3", "-v"]);
    let nodes: Vec<Proc> = (0..4)
        .map(|i| join(&fed, i, &inputs[i].0, weights[i], &[]))
        .collect();
    let victim = join(
        &fed,
        4,
        &inputs[4].0,
        weights[4],
        &["--insecure-test-stall-after-bytes", stall_after],
    );
    victim.wait_for("test stall");
    if expect_partial {
        // The researcher has absorbed part of node_5's update before it dies.
        server.wait_for("node_5: 25%");
    }
    // The four others have delivered attempt 1 and wait for the result.
    for i in 1..=4 {
        server.wait_for(&format!("node_{i} delivered its update"));
    }
    victim.kill9();
    for err in finish_at_attempt_2(nodes) {
        assert!(
            err.contains("attempt 2: masking for 4 participant(s)"),
            "{err}"
        );
    }
    let (code, err) = server.finish();
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("dropped node_5: node_5 (127.0.0.1:"), "{err}");
    assert!(
        err.contains("attempt 2: 4 participant(s) [node_1, node_2, node_3, node_4]"),
        "{err}"
    );
    assert_eq!(tensor::read_layout(&out).expect("layout"), layout);
    assert_mean(&read_all(&out), &inputs, &weights, &[0, 1, 2, 3]);
    for i in 0..4 {
        let at = fed.lab.path(&format!("mean_at_{i}.{}", ext(&layout)));
        assert_eq!(
            std::fs::read(at).expect("mean"),
            std::fs::read(&out).expect("mean")
        );
    }
}

#[test]
fn node_killed_after_partial_send_safetensors_survivors_get_their_mean() {
    // 5 nodes with the defaults send 5 bytes a word, so 600_001 words is 3 MB, and the
    // stall comes after the first 1 MiB chunk (35%).
    five_nodes_one_killed(safetensors(200_000, 100_000), "1", true);
}

#[test]
fn node_killed_before_sending_npy_survivors_get_their_mean() {
    five_nodes_one_killed(npy(40_000), "0", false);
}

#[test]
fn two_nodes_dying_together_cost_one_attempt() {
    // With the default --max-attempts 2, two losses handled one by one would need
    // attempt 3 and fail; the researcher waits briefly for further losses instead.
    let fed = federation(5);
    let layout = npy(30_000);
    let inputs = write_inputs(&fed, &layout);
    let weights = [3u64, 1, 4, 1, 5];
    let out = fed.lab.path("mean.npy");
    let server = serve(&fed, &out, &["--min-nodes", "3", "-v"]);
    let honest: Vec<Proc> = (0..3)
        .map(|i| join(&fed, i, &inputs[i].0, weights[i], &[]))
        .collect();
    let victims: Vec<Proc> = (3..5)
        .map(|i| {
            join(
                &fed,
                i,
                &inputs[i].0,
                weights[i],
                &["--insecure-test-stall-after-bytes", "0"],
            )
        })
        .collect();
    for v in &victims {
        v.wait_for("test stall");
    }
    for i in 1..=3 {
        server.wait_for(&format!("node_{i} delivered its update"));
    }
    for v in victims {
        v.kill9();
    }
    finish_at_attempt_2(honest);
    let (code, err) = server.finish();
    assert_eq!(code, Some(0), "{err}");
    assert!(
        err.contains("attempt 2: 3 participant(s) [node_1, node_2, node_3]"),
        "{err}"
    );
    assert!(!err.contains("attempt 3"), "{err}");
    assert_mean(&read_all(&out), &inputs, &weights, &[0, 1, 2]);
}

#[test]
fn two_drops_below_min_nodes_fail_cleanly_everywhere() {
    let fed = federation(5);
    let layout = npy(20_000);
    let inputs = write_inputs(&fed, &layout);
    let out = fed.lab.path("mean.npy");
    let server = serve(&fed, &out, &["--min-nodes", "4", "-v"]);
    let honest: Vec<Proc> = (0..3)
        .map(|i| join(&fed, i, &inputs[i].0, 1, &[]))
        .collect();
    let victims: Vec<Proc> = (3..5)
        .map(|i| {
            join(
                &fed,
                i,
                &inputs[i].0,
                1,
                &["--insecure-test-stall-after-bytes", "0"],
            )
        })
        .collect();
    for v in &victims {
        v.wait_for("test stall");
    }
    for v in victims {
        v.kill9();
    }
    for (i, n) in honest.into_iter().enumerate() {
        let (code, err) = n.finish();
        assert_eq!(code, Some(1), "node {i}: {err}");
        assert!(
            err.contains("error: the researcher ended the round for this node: round failed:")
                && err.contains("fewer than --min-nodes 4; nothing was revealed"),
            "node {i}: {err}"
        );
        assert!(err.contains("hint: "), "{err}");
        assert!(!fed.lab.path(&format!("mean_at_{i}.npy")).exists());
    }
    let (code, err) = server.finish();
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("error: round failed:") && err.contains("fewer than --min-nodes 4"),
        "{err}"
    );
    assert!(!out.exists(), "no mean may be written");
}

#[test]
fn slow_node_times_out_and_survivors_rerun() {
    let fed = federation(4);
    let layout = npy(20_000);
    let inputs = write_inputs(&fed, &layout);
    let weights = [1u64, 2, 3, 4];
    let out = fed.lab.path("mean.npy");
    let server = serve(&fed, &out, &["--timeout", "3", "--min-nodes", "3"]);
    let nodes: Vec<Proc> = (0..3)
        .map(|i| join(&fed, i, &inputs[i].0, weights[i], &[]))
        .collect();
    let slow = join(
        &fed,
        3,
        &inputs[3].0,
        weights[3],
        &[
            "--insecure-test-stall-after-bytes",
            "0",
            "--insecure-test-stall-secs",
            "6",
        ],
    );
    finish_at_attempt_2(nodes);
    let (code, err) = server.finish();
    assert_eq!(code, Some(0), "{err}");
    assert!(
        err.contains("dropped node_4: did not deliver within 3 s"),
        "{err}"
    );
    assert_mean(&read_all(&out), &inputs, &weights, &[0, 1, 2]);
    // The slow node wakes up to find itself dropped.
    let (code, err) = slow.finish();
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.starts_with("test stall") || err.contains("test stall"),
        "{err}"
    );
    assert!(err.contains("error: "), "{err}");
}

/// A registered node that completes the TLS handshake and then misbehaves.
fn rogue(home: &Path, port: u16, bytes: Vec<u8>) -> String {
    let me = Home::new(home).load_identity().expect("identity");
    let reg = secagg::pki::registry::Registry::open_existing(&Home::new(home).registry_path())
        .expect("registry")
        .expect("exists");
    let id: secagg::party::PartyId = "researcher_1".parse().expect("id");
    let (_, der) = reg.get(&id).expect("get").expect("registered");
    let cert = secagg::pki::certificate::PeerCertificate::from_der(&der).expect("cert");
    let mut pins = Pins::default();
    pins.insert(id, &cert);
    let config = secagg::net::tls::client_config(&me, pins).expect("config");
    let t = Instant::now();
    let sock = loop {
        match std::net::TcpStream::connect(("127.0.0.1", port)) {
            Ok(s) => break s,
            Err(_) if t.elapsed() < Duration::from_secs(20) => {
                std::thread::sleep(Duration::from_millis(50))
            }
            Err(e) => panic!("connect: {e}"),
        }
    };
    let mut ch = Channel::connect(
        sock,
        config,
        "127.0.0.1",
        "researcher".into(),
        Duration::from_secs(10),
    )
    .expect("tls");
    match ch.recv_within(Duration::from_secs(10)).expect("hello") {
        Message::Hello(_) => {}
        other => panic!("expected hello, got {other:?}"),
    }
    ch.send_raw(&bytes).expect("send");
    // The researcher answers with an abort naming the fault, then closes.
    match ch.recv(Duration::from_secs(10)) {
        Ok(Some(Message::Abort(a))) => a.reason,
        other => format!("{other:?}"),
    }
}

/// What a lying researcher does to the node it is talking to.
#[derive(Clone, Copy)]
enum Lie {
    /// Announces a word width the parameters do not give.
    WordBytes,
    /// Returns a mean with a value far outside the clip range.
    OutOfRange,
    /// Returns a total weight below the node's own weight.
    Weight,
}

/// A researcher (with the real researcher's certificate) that runs one attempt with
/// every node and then lies to node_i as `lies[i - 1]` says.
fn lying_researcher(fed: &Fed, lies: Vec<Lie>) -> std::thread::JoinHandle<()> {
    let home = Home::new(&fed.researcher.home);
    let me = home.load_identity().expect("identity");
    let reg = secagg::pki::registry::Registry::open_existing(&home.registry_path())
        .expect("registry")
        .expect("exists");
    let ids: Vec<secagg::party::PartyId> = (1..=fed.nodes.len())
        .map(|i| format!("node_{i}").parse().expect("id"))
        .collect();
    let mut pins = Pins::default();
    for id in &ids {
        let (_, der) = reg.get(id).expect("get").expect("registered");
        pins.insert(
            id.clone(),
            &secagg::pki::certificate::PeerCertificate::from_der(&der).expect("cert"),
        );
    }
    let config = secagg::net::tls::server_config(&me, pins.clone()).expect("config");
    let listener = std::net::TcpListener::bind(("127.0.0.1", fed.port)).expect("bind");
    std::thread::spawn(move || {
        let round = RoundId::new("fed", 1);
        let quant = secagg::secagg::quantize::QuantParams::default();
        let plan = secagg::secagg::quantize::Plan::new(quant, ids.len()).expect("plan");
        let links: Vec<_> = (0..lies.len())
            .map(|_| {
                let (sock, _) = listener.accept().expect("accept");
                let (config, ids, me) = (config.clone(), ids.clone(), me.config.party_id.clone());
                let (pins, lies) = (pins.clone(), lies.clone());
                std::thread::spawn(move || {
                    let wait = Duration::from_secs(20);
                    let (mut ch, der) = Channel::accept(sock, config, round, wait).expect("tls");
                    let party = pins.party_of(&der).expect("pinned");
                    let lie = lies[ids.iter().position(|id| id == party).expect("invited")];
                    ch.send(&Message::Hello(wire::Hello {
                        researcher: me,
                        federation: "fed".into(),
                        round: 1,
                    }))
                    .expect("hello");
                    let Message::Join(j) = ch.recv_within(wait).expect("join") else {
                        panic!("expected join")
                    };
                    let width = match lie {
                        Lie::WordBytes => plan.wire_bytes() + 1,
                        _ => plan.wire_bytes(),
                    };
                    ch.send(&Message::Start(wire::Start {
                        attempt: 1,
                        participants: ids.clone(),
                        label: "update".into(),
                        quant,
                        modulus: plan.modulus,
                        word_bytes: width,
                        layout: j.layout.clone(),
                    }))
                    .expect("start");
                    if let Lie::WordBytes = lie {
                        // The node refuses before masking, and says why.
                        let _ = ch.recv(wait);
                        return;
                    }
                    while !matches!(ch.recv_within(wait).expect("update"), Message::Done { .. }) {}
                    let n = j.layout.elements() as usize;
                    let mut values = vec![0.25; n];
                    let total_weight = match lie {
                        Lie::OutOfRange => {
                            values[n / 2] = 5.0;
                            30
                        }
                        _ => 1,
                    };
                    let mean = secagg::layout::encode_values(&j.layout, values.into_iter());
                    ch.send(&Message::Outcome(wire::Outcome {
                        attempt: 1,
                        participants: ids,
                        total_weight,
                        bytes: mean.len() as u64,
                    }))
                    .expect("outcome");
                    let _ = ch.send_bytes(1, &mean);
                    let _ = ch.recv(Duration::from_secs(2));
                })
            })
            .collect();
        for l in links {
            l.join().expect("link");
        }
    })
}

#[test]
fn nodes_refuse_a_lying_researchers_start_or_result_and_write_nothing() {
    let fed = federation(3);
    let layout = npy(5_000);
    let inputs = write_inputs(&fed, &layout);
    let fake = lying_researcher(&fed, vec![Lie::OutOfRange, Lie::Weight, Lie::WordBytes]);
    let nodes: Vec<Proc> = (0..3)
        .map(|i| join(&fed, i, &inputs[i].0, 10, &[]))
        .collect();
    let expected = [
        "broke the round protocol: sent a mean whose value #2500 lies outside the clip range",
        "broke the round protocol: announced an impossible total weight 1",
        "refused round 1 attempt 1: the announced modulus does not fit the announced parameters",
    ];
    for (i, n) in nodes.into_iter().enumerate() {
        let (code, err) = n.finish();
        assert_eq!(code, Some(1), "node {i}: {err}");
        assert!(err.contains(expected[i]), "node {i}: {err}");
        assert!(
            !fed.lab.path(&format!("mean_at_{i}.npy")).exists(),
            "node {i} wrote a mean"
        );
    }
    fake.join().expect("fake researcher");
}

#[test]
fn hostile_peers_are_dropped_and_the_round_completes() {
    let fed = federation(3);
    // Four more registered nodes that will misbehave after the handshake.
    let rogues: Vec<Party> = (1..=4)
        .map(|i| {
            let p = fed.lab.party(&format!("rogue_{i}"), "node", 21000 + i);
            fed.researcher.register(&p);
            p.register(&fed.researcher);
            p
        })
        .collect();
    let layout = npy(10_000);
    let inputs = write_inputs(&fed, &layout);
    let weights = [1u64, 1, 1];
    let out = fed.lab.path("mean.npy");
    let server = Proc::spawn(
        &fed.researcher,
        &[
            "round",
            "serve",
            "--federation",
            "fed",
            "--round",
            "1",
            "--nodes",
            "node_1,node_2,node_3,rogue_1,rogue_2,rogue_3,rogue_4",
            "--min-nodes",
            "3",
            "--join-timeout",
            "30",
            "--out",
            out.to_str().expect("utf8"),
        ],
        fed.lab.path("researcher.log"),
    );
    let round = RoundId::new("fed", 1);
    let garbage = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n-------------".to_vec();
    let mut oversized = vec![wire::VERSION, 2, 0, 0];
    oversized.extend_from_slice(&round_bytes(round));
    oversized.extend_from_slice(&(u32::MAX).to_le_bytes());
    let mut other_round = Vec::new();
    wire::encode(
        RoundId::new("fed", 0),
        &Message::Done { attempt: 1 },
        &mut other_round,
    );
    // A well-formed frame of this round, but a message only the researcher may send.
    let mut unexpected = Vec::new();
    wire::encode(
        round,
        &Message::Hello(wire::Hello {
            researcher: "rogue_4".parse().expect("id"),
            federation: "fed".into(),
            round: 1,
        }),
        &mut unexpected,
    );
    let port = fed.port;
    let handles: Vec<_> = rogues
        .iter()
        .zip([garbage, oversized, other_round, unexpected])
        .map(|(r, bytes)| {
            let home = r.home.clone();
            std::thread::spawn(move || rogue(&home, port, bytes))
        })
        .collect();
    let reasons: Vec<String> = handles
        .into_iter()
        .map(|h| h.join().expect("rogue thread"))
        .collect();
    assert!(
        reasons[0].contains("bad frame: frame has wire version"),
        "{reasons:?}"
    );
    assert!(
        reasons[1].contains("bad frame: frame announces 4294967295 payload bytes"),
        "{reasons:?}"
    );
    assert!(
        reasons[2].contains("bad frame: frame belongs to round"),
        "{reasons:?}"
    );
    let nodes: Vec<Proc> = (0..3)
        .map(|i| join(&fed, i, &inputs[i].0, weights[i], &[]))
        .collect();
    for n in nodes {
        let (code, err) = n.finish();
        assert_eq!(code, Some(0), "{err}");
    }
    let (code, err) = server.finish();
    assert_eq!(code, Some(0), "{err}");
    for i in 1..=3 {
        assert!(
            err.contains(&format!("dropped rogue_{i}: rogue_{i} (127.0.0.1:")),
            "{err}"
        );
    }
    assert!(
        err.contains("attempt 1: 3 participant(s) [node_1, node_2, node_3]"),
        "{err}"
    );
    assert_mean(&read_all(&out), &inputs, &weights, &[0, 1, 2]);
}

fn round_bytes(r: RoundId) -> [u8; 16] {
    // The id is the first 16 bytes of a frame header after version, kind and reserved.
    let mut f = Vec::new();
    wire::encode(r, &Message::Done { attempt: 0 }, &mut f);
    let mut id = [0u8; 16];
    id.copy_from_slice(&f[4..20]);
    id
}

#[test]
fn unregistered_and_wrong_role_certificates_are_refused_at_the_handshake() {
    let fed = federation(2);
    // A node the researcher never registered, and one it registered as a researcher.
    let stranger = fed.lab.party("stranger", "node", 22001);
    stranger.register(&fed.researcher);
    let impostor = fed.lab.party("impostor", "node", 22002);
    impostor.register(&fed.researcher);
    let i = impostor.instructions();
    let pem = fed.lab.path("impostor.pem");
    std::fs::write(&pem, i["certificate_pem"].as_str().expect("pem")).expect("write");
    fed.researcher.ok(&[
        "certificate",
        "register",
        "--public-key",
        pem.to_str().expect("utf8"),
        "--party-id",
        "impostor",
        "--ip",
        "127.0.0.1",
        "--port",
        "22002",
        "--role",
        "researcher",
        "--yes",
    ]);
    let layout = npy(1000);
    let inputs = write_inputs(&fed, &layout);
    let out = fed.lab.path("mean.npy");
    let server = serve(&fed, &out, &["--min-nodes", "2", "-v"]);
    let input = inputs[0].0.to_str().expect("utf8");
    for outsider in [&stranger, &impostor] {
        let before = fed.researcher.list_json();
        let err = outsider.fails(
            &["round", "join", "--input", input, "--timeout", "20"],
            "researcher researcher_1 refused this node's certificate",
        );
        assert!(
            err.contains("hint: ask the researcher to register"),
            "{err}"
        );
        assert_eq!(fed.researcher.list_json(), before);
    }
    // openssl, by hand: a client certificate the researcher does not know gets an alert.
    let s_client = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &format!("127.0.0.1:{}", fed.port),
            "-tls1_3",
            "-ign_eof",
        ])
        .arg("-cert")
        .arg(stranger.home.join("cert.pem"))
        .arg("-key")
        .arg(stranger.home.join("key.pem"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("openssl must be installed (.ci/run installs it)");
    let out_ssl = s_client.wait_with_output().expect("openssl");
    let text = String::from_utf8_lossy(&out_ssl.stdout).to_string()
        + &String::from_utf8_lossy(&out_ssl.stderr);
    assert!(text.contains("alert access denied"), "{text}");
    // The registered nodes still run their round.
    let nodes: Vec<Proc> = (0..2)
        .map(|i| join(&fed, i, &inputs[i].0, 1, &["--min-nodes", "2"]))
        .collect();
    for n in nodes {
        let (code, err) = n.finish();
        assert_eq!(code, Some(0), "{err}");
    }
    let (code, err) = server.finish();
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("refused 127.0.0.1:"), "{err}");
    assert!(err.contains("ApplicationVerificationFailure"), "{err}");
    assert_mean(&read_all(&out), &inputs, &[1, 1], &[0, 1]);
}

#[test]
fn a_node_refuses_a_researcher_it_did_not_pin() {
    let fed = federation(1);
    // Another researcher takes the registered researcher's address.
    let other = fed.lab.party("researcher_2", "researcher", fed.port);
    other.register(&fed.nodes[0]);
    let layout = npy(100);
    let inputs = write_inputs(&fed, &layout);
    let out = fed.lab.path("mean.npy");
    let server = Proc::spawn(
        &other,
        &[
            "round",
            "serve",
            "--federation",
            "fed",
            "--round",
            "1",
            "--nodes",
            "node_1",
            "--min-nodes",
            "1",
            "--out",
            out.to_str().expect("utf8"),
        ],
        fed.lab.path("other.log"),
    );
    // --min-nodes 1 is refused before listening.
    let (code, err) = server.finish();
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("error: --min-nodes 1 is not possible with 1 node(s) named"),
        "{err}"
    );
    // Serve for real with two invited so the researcher listens; the node refuses it.
    let second = fed.lab.party("node_x", "node", 22100);
    other.register(&second);
    let server = Proc::spawn(
        &other,
        &[
            "round",
            "serve",
            "--federation",
            "fed",
            "--round",
            "1",
            "--nodes",
            "node_1,node_x",
            "--min-nodes",
            "2",
            "--join-timeout",
            "5",
            "--out",
            out.to_str().expect("utf8"),
        ],
        fed.lab.path("other.log"),
    );
    server.wait_for("listening on");
    let err = fed.nodes[0].fails(
        &[
            "round",
            "join",
            "--input",
            inputs[0].0.to_str().expect("utf8"),
            "--timeout",
            "10",
        ],
        "TLS handshake with researcher researcher_1 failed",
    );
    assert!(err.contains("invalid peer certificate"), "{err}");
    let (code, _) = server.finish();
    assert_eq!(code, Some(1));
    assert!(!fed.lab.path("mean_at_0.npy").exists());
}

#[test]
fn replaying_a_finished_round_is_refused_by_every_node() {
    let fed = federation(3);
    let layout = npy(1000);
    let inputs = write_inputs(&fed, &layout);
    let out = fed.lab.path("mean.npy");
    for pass in 0..2 {
        let server = serve(&fed, &out, &[]);
        let nodes: Vec<Proc> = (0..3)
            .map(|i| join(&fed, i, &inputs[i].0, 1, &[]))
            .collect();
        let results: Vec<(Option<i32>, String)> = nodes.into_iter().map(Proc::finish).collect();
        let (code, err) = server.finish();
        if pass == 0 {
            assert_eq!(code, Some(0), "{err}");
            assert!(results.iter().all(|(c, _)| *c == Some(0)), "{results:?}");
            std::fs::remove_file(&out).expect("rm");
        } else {
            // Same federation and round again: every node refuses to mask twice.
            for (c, e) in &results {
                assert_eq!(*c, Some(1), "{e}");
                assert!(
                    e.contains("this node refused round 1 attempt 1")
                        && e.contains("already masked"),
                    "{e}"
                );
            }
            assert_eq!(code, Some(1), "{err}");
            assert!(err.contains("refused:"), "{err}");
            assert!(!out.exists());
        }
    }
}

#[test]
fn round_usage_errors_are_clear() {
    let fed = federation(1);
    let input = fed.lab.path("in.npy");
    tensor::write_values(&input, &npy(10), [0.0; 10].into_iter()).expect("write");
    let input = input.to_str().expect("utf8");
    let out = fed.lab.path("m.npy");
    let out = out.to_str().expect("utf8");
    // The researcher cannot join, a node cannot serve.
    fed.researcher.fails(
        &["round", "join", "--input", input],
        "belongs to a researcher",
    );
    fed.nodes[0].fails(
        &[
            "round",
            "serve",
            "--federation",
            "f",
            "--round",
            "1",
            "--nodes",
            "node_1",
            "--out",
            out,
        ],
        "belongs to a node",
    );
    // Unknown node in --nodes; bad --out; a node with no researcher registered.
    fed.researcher.fails(
        &[
            "round",
            "serve",
            "--federation",
            "f",
            "--round",
            "1",
            "--nodes",
            "node_1,node_9",
            "--min-nodes",
            "2",
            "--out",
            out,
        ],
        "node_9",
    );
    fed.researcher.fails(
        &[
            "round",
            "serve",
            "--federation",
            "f",
            "--round",
            "1",
            "--nodes",
            "node_1",
            "--out",
            "m.txt",
        ],
        "m.txt",
    );
    let lonely = fed.lab.party("lonely", "node", 23000);
    lonely.fails(&["round", "join", "--input", input], "no registry");
    lonely.register(&fed.nodes[0]);
    lonely.fails(
        &["round", "join", "--input", input],
        "no researcher is registered here",
    );
    // Join with --out of another format than --input.
    fed.nodes[0].fails(
        &["round", "join", "--input", input, "--out", "x.safetensors"],
        "is not the format of --input",
    );
}
