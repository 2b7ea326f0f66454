//! Protocol-2 rounds over mutual TLS on loopback, with real `secagg` processes: honest
//! rounds on .npy and .safetensors, a node killed mid-stream and one stopped after its
//! input arrived (one pass, no re-run), idle connections that try to exhaust the
//! researcher's slots, refused certificates, replays and reused inputs. Every mean is
//! checked against one computed here; the protocol's attacks are in tests/attacks.rs.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Lab, Party, read_all, values};
use secagg::files::tensor::{self};
use secagg::layout::{Container, DType, Layout, TensorSpec};

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

/// The first input written, as the researcher's `--like` file.
fn inputs_shape(fed: &Fed) -> String {
    for e in ["npy", "safetensors"] {
        let p = fed.lab.path(&format!("in0.{e}"));
        if p.exists() {
            return p.to_str().expect("utf8").to_string();
        }
    }
    panic!("write the inputs before serving")
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
    let shape = inputs_shape(fed);
    if !extra.contains(&"--like") && !extra.contains(&"--shape") {
        args.extend(["--like", shape.as_str()]);
    }
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
        "--federation",
        "fed",
        "--input",
        input.to_str().expect("utf8"),
        "--weight",
        &w,
        "--timeout",
        "60",
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
    let server = serve(&fed, &out, &["--json"]);
    let nodes: Vec<Proc> = (0..3)
        .map(|i| join(&fed, i, &inputs[i].0, weights[i], &[]))
        .collect();
    for (i, n) in nodes.into_iter().enumerate() {
        let (code, err) = n.finish();
        assert_eq!(code, Some(0), "node {i}: {err}");
        assert!(
            err.contains("round 1 complete: weighted mean of 3 node(s) (total weight 19)"),
            "{err}"
        );
        assert!(
            err.contains("threshold 3: tolerates 0 dropouts and up to 2 colluding nodes"),
            "{err}"
        );
    }
    let (code, err) = server.finish();
    assert_eq!(code, Some(0), "{err}");
    assert!(
        err.contains("weighted mean of 3 node(s) [node_1, node_2, node_3] (total weight 19)"),
        "{err}"
    );
    assert_eq!(tensor::read_layout(&out).expect("layout"), layout);
    assert_mean(&read_all(&out), &inputs, &weights, &[0, 1, 2]);
    for i in 0..3 {
        let at_node = fed.lab.path(&format!("mean_at_{i}.npy"));
        assert_eq!(
            std::fs::read(&at_node).expect("node mean"),
            std::fs::read(&out).expect("mean"),
            "node {i} got another mean"
        );
    }
    // Both sides journal the round; `round list` shows it.
    let listed: serde_json::Value =
        serde_json::from_str(&fed.nodes[0].ok(&["round", "list", "--json"])).expect("json");
    assert_eq!(listed[0]["round"], 1);
    assert_eq!(listed[0]["role"], "node");
    assert_eq!(listed[0]["outcome"], "completed");
    assert_eq!(listed[0]["signed"], true);
    let listed: serde_json::Value =
        serde_json::from_str(&fed.researcher.ok(&["round", "list", "--json"])).expect("json");
    assert_eq!(listed[0]["role"], "researcher");
    assert_eq!(listed[0]["detail"]["u3"], 3);
}

#[test]
fn seven_nodes_one_killed_mid_stream_one_stopped_after_its_input_one_pass() {
    // The default threshold for 7 is 5. node_6 dies half-way through its stream (its
    // prefix is subtracted again and its pairwise masks rebuilt from shares); node_7 is
    // stopped (SIGSTOP) once its whole input is sent, so it is a survivor that never
    // signs or unmasks. One pass: the mean of the six whose inputs arrived.
    let fed = federation(7);
    let layout = safetensors(200_000, 100_000);
    let inputs = write_inputs(&fed, &layout);
    let weights = [2u64, 3, 5, 7, 11, 13, 17];
    let out = fed.lab.path("mean.safetensors");
    let server = serve(&fed, &out, &["--timeout", "10", "--json"]);
    let honest: Vec<Proc> = (0..5)
        .map(|i| join(&fed, i, &inputs[i].0, weights[i], &[]))
        .collect();
    // 7 nodes, defaults: 5-byte words; 600,001 words is 3 MB, sent in 1 MiB chunks;
    // the stall comes after the first chunk.
    let killed = join(
        &fed,
        5,
        &inputs[5].0,
        weights[5],
        &["--insecure-test-stall-after-bytes", "1"],
    );
    let stopped = join(&fed, 6, &inputs[6].0, weights[6], &[]);
    killed.wait_for("test stall");
    killed.kill9();
    stopped.wait_for("masked update sent");
    let pid = stopped.child.id().to_string();
    let status = Command::new("kill")
        .args(["-STOP", &pid])
        .status()
        .expect("kill -STOP");
    assert!(status.success());
    for (i, n) in honest.into_iter().enumerate() {
        let (code, err) = n.finish();
        assert_eq!(code, Some(0), "node {i}: {err}");
        assert!(
            err.contains("round 1 complete: weighted mean of 6 node(s)"),
            "node {i}: {err}"
        );
    }
    let (code, err) = server.finish();
    assert_eq!(code, Some(0), "{err}");
    assert!(!err.contains("attempt"), "one pass, no re-run: {err}");
    let summary: serde_json::Value =
        serde_json::from_str(err.lines().last().map_or("{}", |_| "{}")).unwrap_or_default();
    let _ = summary;
    let survivors = [0usize, 1, 2, 3, 4, 6];
    assert_mean(&read_all(&out), &inputs, &weights, &survivors);
    for i in 0..5 {
        let at = fed.lab.path(&format!("mean_at_{i}.safetensors"));
        assert_eq!(
            std::fs::read(at).expect("mean"),
            std::fs::read(&out).expect("mean")
        );
    }
    let _ = Command::new("kill").args(["-KILL", &pid]).status();
    let _ = stopped.finish();
    // The spills are gone.
    let spill = fed.researcher.home.join("spill");
    let left: Vec<_> = std::fs::read_dir(&spill)
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "spills left: {left:?}");
}

#[test]
fn idle_connections_cannot_lock_nodes_out() {
    // 40 TCP connections that never start a handshake, opened before the nodes join:
    // they hold no place a registered node needs, and the round completes.
    let fed = federation(3);
    let layout = npy(5_000);
    let inputs = write_inputs(&fed, &layout);
    let out = fed.lab.path("mean.npy");
    let server = serve(&fed, &out, &[]);
    server.wait_for("listening on");
    let idle: Vec<std::net::TcpStream> = (0..40)
        .map(|_| std::net::TcpStream::connect(("127.0.0.1", fed.port)).expect("idle connect"))
        .collect();
    // node_1 runs with -q: no progress lines at all on success.
    let nodes: Vec<Proc> = (0..3)
        .map(|i| join(&fed, i, &inputs[i].0, 1, if i == 0 { &["-q"] } else { &[] }))
        .collect();
    for (i, n) in nodes.into_iter().enumerate() {
        let (code, err) = n.finish();
        assert_eq!(code, Some(0), "{err}");
        if i == 0 {
            assert_eq!(err, "", "-q prints nothing on success");
        } else {
            assert!(err.contains("round 1 complete"), "{err}");
        }
    }
    let (code, err) = server.finish();
    assert_eq!(code, Some(0), "{err}");
    assert_mean(&read_all(&out), &inputs, &[1, 1, 1], &[0, 1, 2]);
    drop(idle);
}

#[test]
fn unregistered_and_wrong_role_certificates_are_refused_at_the_handshake() {
    let fed = federation(3);
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
    let server = serve(&fed, &out, &[]);
    server.wait_for("listening on");
    let input = inputs[0].0.to_str().expect("utf8");
    for outsider in [&stranger, &impostor] {
        let before = fed.researcher.list_json();
        let err = outsider.fails(
            &[
                "round",
                "join",
                "--federation",
                "fed",
                "--input",
                input,
                "--timeout",
                "20",
            ],
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
    let nodes: Vec<Proc> = (0..3)
        .map(|i| join(&fed, i, &inputs[i].0, 1, &[]))
        .collect();
    for n in nodes {
        let (code, err) = n.finish();
        assert_eq!(code, Some(0), "{err}");
    }
    let (code, err) = server.finish();
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("refused 127.0.0.1:"), "{err}");
    assert_mean(&read_all(&out), &inputs, &[1, 1, 1], &[0, 1, 2]);
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("ls") {
        let e = e.expect("entry");
        let p = e.path();
        if p.is_file() {
            std::fs::copy(&p, to.join(e.file_name())).expect("copy");
        }
    }
}

#[test]
fn replayed_rounds_and_reused_inputs_are_refused_before_any_key() {
    let fed = federation(3);
    let layout = npy(1000);
    let inputs = write_inputs(&fed, &layout);
    // A copy of the researcher's home made before round 1: its journal lets it serve
    // round 1 again, as a replaying researcher would.
    let replayer = fed.lab.path("replayer");
    copy_dir(&fed.researcher.home, &replayer);
    // Node 1 masked another update before input digest version 2: its registry holds a
    // version-1 release, so it digests its input both ways for this round.
    let older = values(99, 1000);
    common::as_schema_4_with_release(
        &fed.nodes[0].home,
        &common::v1_digest_npy(DType::F32, &older),
        "fed",
        1,
    );
    let out = fed.lab.path("mean.npy");
    let server = serve(&fed, &out, &[]);
    let nodes: Vec<Proc> = (0..3)
        .map(|i| join(&fed, i, &inputs[i].0, 1, &[]))
        .collect();
    for n in nodes {
        assert_eq!(n.finish().0, Some(0));
    }
    assert_eq!(server.finish().0, Some(0));
    // Its round journaled the version-2 digest; the version-1 row stays.
    let (version, rows) = common::release_rows(&fed.nodes[0].home);
    assert_eq!(version, 5);
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert!(
        rows.iter().any(|r| r.ends_with("|1|file|fed|1")),
        "{rows:?}"
    );
    assert!(
        rows.iter().any(|r| r.ends_with("|2|round|fed|1")),
        "{rows:?}"
    );
    // The same update again: refused before connecting, nothing used up.
    let before = fed.nodes[0].ok(&["round", "list", "--json"]);
    let err = fed.nodes[0].fails(
        &[
            "round",
            "join",
            "--federation",
            "fed",
            "--input",
            inputs[0].0.to_str().expect("utf8"),
            "--timeout",
            "5",
        ],
        "was already released in an earlier round or masked file",
    );
    assert!(err.contains("hint: "), "{err}");
    assert_eq!(fed.nodes[0].ok(&["round", "list", "--json"]), before);
    // Round 1 again, with fresh updates, from the replaying researcher: every node
    // refuses it from its own journal.
    let fresh: Vec<PathBuf> = (0..3)
        .map(|i| {
            let p = fed.lab.path(&format!("fresh{i}.npy"));
            tensor::write_values(&p, &layout, values(100 + i as u64, 1000).into_iter())
                .expect("write");
            p
        })
        .collect();
    let replay_party = Party { home: replayer };
    let ids = "node_1,node_2,node_3";
    let like = inputs[0].0.to_str().expect("utf8").to_string();
    let out2 = fed.lab.path("mean2.npy");
    let replay = Proc::spawn(
        &replay_party,
        &[
            "round",
            "serve",
            "--federation",
            "fed",
            "--round",
            "1",
            "--nodes",
            ids,
            "--like",
            &like,
            "--timeout",
            "10",
            "--join-timeout",
            "20",
            "--out",
            out2.to_str().expect("utf8"),
        ],
        fed.lab.path("replay.log"),
    );
    replay.wait_for("listening on");
    let nodes: Vec<Proc> = (0..3)
        .map(|i| join(&fed, i, &fresh[i], 1, &["--force"]))
        .collect();
    for n in nodes {
        let (code, err) = n.finish();
        assert_eq!(code, Some(1), "{err}");
        assert!(
            err.contains("error: this node refused round 1: round is 1; this node's policy allows 2..=1000001"),
            "{err}"
        );
    }
    let (code, _) = replay.finish();
    assert_eq!(code, Some(1));
    assert!(!out2.exists());
    // Another federation is refused by its name.
    let other = Proc::spawn(
        &replay_party,
        &[
            "round",
            "serve",
            "--federation",
            "other",
            "--round",
            "7",
            "--nodes",
            ids,
            "--like",
            &like,
            "--timeout",
            "10",
            "--join-timeout",
            "20",
            "--out",
            out2.to_str().expect("utf8"),
        ],
        fed.lab.path("other.log"),
    );
    other.wait_for("listening on");
    let n = join(&fed, 0, &fresh[0], 1, &["--force"]);
    let (code, err) = n.finish();
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains(
            "this node refused round 7: federation is other; this node's policy allows fed"
        ),
        "{err}"
    );
    let _ = other.finish();
}

/// A node whose registry released an update under input digest version 1 (at schema 4,
/// before the upgrade) refuses that update for a round before connecting, and uses
/// nothing up.
#[test]
fn an_update_released_before_digest_version_2_is_refused_before_a_round() {
    let fed = federation(2);
    let node = &fed.nodes[1];
    let layout = npy(700);
    let xs = values(31, 700);
    let x = fed.lab.path("x.npy");
    tensor::write_values(&x, &layout, xs.iter().copied()).expect("write");
    common::as_schema_4_with_release(
        &node.home,
        &common::v1_digest_npy(DType::F32, &xs),
        "fed",
        4,
    );
    let before = common::release_rows(&node.home).1;
    let err = node.fails(
        &[
            "round",
            "join",
            "--federation",
            "fed",
            "--input",
            x.to_str().expect("utf8"),
            "--timeout",
            "5",
        ],
        "was already released in an earlier round or masked file",
    );
    assert!(!err.contains("connect"), "{err}");
    assert_eq!(common::release_rows(&node.home), (5, before));
    let rounds: serde_json::Value =
        serde_json::from_str(&node.ok(&["round", "list", "--json"])).expect("json");
    assert_eq!(rounds.as_array().map(Vec::len), Some(0), "{rounds}");
}

#[test]
fn a_node_refuses_a_researcher_it_did_not_pin() {
    let fed = federation(3);
    // Another researcher takes the registered researcher's address.
    let other = fed.lab.party("researcher_2", "researcher", fed.port);
    for n in &fed.nodes {
        other.register(n);
    }
    let layout = npy(100);
    let inputs = write_inputs(&fed, &layout);
    let out = fed.lab.path("mean.npy");
    let like = inputs[0].0.to_str().expect("utf8").to_string();
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
            "node_1,node_2,node_3",
            "--like",
            &like,
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
            "--federation",
            "fed",
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
fn round_usage_errors_are_clear() {
    let fed = federation(3);
    let input = fed.lab.path("in.npy");
    tensor::write_values(&input, &npy(10), [0.0; 10].into_iter()).expect("write");
    let input = input.to_str().expect("utf8");
    let out = fed.lab.path("m.npy");
    let out = out.to_str().expect("utf8");
    let serve_args = |nodes: &'static str, extra: &[&'static str]| -> Vec<String> {
        let mut v: Vec<String> = [
            "round",
            "serve",
            "--federation",
            "f",
            "--round",
            "1",
            "--nodes",
            nodes,
            "--out",
            out,
            "--shape",
            "10",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let run = |p: &Party, args: Vec<String>, needle: &str| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        p.fails(&args, needle);
    };
    // The researcher cannot join, a node cannot serve.
    fed.researcher.fails(
        &["round", "join", "--federation", "f", "--input", input],
        "belongs to a researcher",
    );
    run(
        &fed.nodes[0],
        serve_args("node_1,node_2,node_3", &[]),
        "belongs to a node",
    );
    // A threshold at or below half, or above n.
    run(
        &fed.researcher,
        serve_args("node_1,node_2,node_3", &["--threshold", "1"]),
        "--threshold 1 is not possible with 3 node(s)",
    );
    run(
        &fed.researcher,
        serve_args("node_1,node_2,node_3", &["--threshold", "4"]),
        "--threshold 4 is not possible with 3 node(s)",
    );
    // Unknown node; an existing --out; no shape.
    run(
        &fed.researcher,
        serve_args("node_1,node_2,node_9", &[]),
        "node_9",
    );
    std::fs::write(out, b"x").expect("write");
    run(
        &fed.researcher,
        serve_args("node_1,node_2,node_3", &[]),
        "already exists",
    );
    std::fs::remove_file(out).expect("rm");
    fed.researcher.fails(
        &[
            "round",
            "serve",
            "--federation",
            "f",
            "--round",
            "1",
            "--nodes",
            "node_1,node_2,node_3",
            "--out",
            out,
        ],
        "the round needs the shape of the updates",
    );
    // A node without a federation; a node with no researcher registered.
    fed.nodes[0].fails(
        &["round", "join", "--input", input],
        "this node serves no federation yet",
    );
    let lonely = fed.lab.party("lonely", "node", 23000);
    lonely.register(&fed.nodes[0]);
    lonely.fails(
        &["round", "join", "--federation", "f", "--input", input],
        "no researcher is registered here",
    );
    // Join with --out of another format than --input; a NaN in the input.
    fed.nodes[0].fails(
        &[
            "round",
            "join",
            "--federation",
            "f",
            "--input",
            input,
            "--out",
            "x.safetensors",
        ],
        "is not the format of --input",
    );
    let nan = fed.lab.path("nan.npy");
    tensor::write_values(&nan, &npy(3), [0.0, f64::NAN, 1.0].into_iter()).expect("write");
    fed.nodes[0].fails(
        &[
            "round",
            "join",
            "--federation",
            "f",
            "--input",
            nan.to_str().expect("utf8"),
            "--timeout",
            "3",
        ],
        "non-finite value (NaN or infinity) at element 1",
    );
    // Nothing of a round was used up by any of these.
    let listed = fed.nodes[0].ok(&["round", "list", "--json"]);
    assert_eq!(listed.trim(), "[]");
}

/// A researcher and `n` nodes set up only through one signed roster: each node prints
/// its registration instructions, the researcher runs `federation create`, every node
/// runs `federation import --fingerprint`. No pairwise registration at all.
fn federation_by_roster(n: usize) -> Fed {
    let lab = Lab::new();
    let port = free_port();
    let researcher = lab.party("researcher_1", "researcher", port);
    let nodes: Vec<Party> = (1..=n)
        .map(|i| lab.party(&format!("node_{i}"), "node", 20000 + i as u16))
        .collect();
    let mut files = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        let f = lab.path(&format!("node_{}.txt", i + 1));
        std::fs::write(&f, node.ok(&["certificate", "registration-instructions"])).expect("write");
        files.push(f.to_str().expect("utf8").to_string());
    }
    let roster = lab.path("roster.toml");
    let mut args = vec![
        "federation",
        "create",
        "--name",
        "fed",
        "--out",
        roster.to_str().expect("utf8"),
    ];
    args.extend(files.iter().map(String::as_str));
    researcher.ok(&args);
    let shown = researcher.ok(&["federation", "show", roster.to_str().expect("utf8")]);
    let fp = shown
        .lines()
        .find_map(|l| l.strip_prefix("roster fingerprint: "))
        .expect("roster fingerprint line")
        .to_string();
    for node in &nodes {
        node.ok(&[
            "federation",
            "import",
            roster.to_str().expect("utf8"),
            "--fingerprint",
            &fp,
        ]);
    }
    Fed {
        lab,
        port,
        researcher,
        nodes,
    }
}

#[test]
fn five_nodes_set_up_only_through_a_roster_run_a_round() {
    let fed = federation_by_roster(5);
    let layout = npy(20_000);
    let inputs = write_inputs(&fed, &layout);
    let weights = [1u64, 2, 3, 4, 5];
    let out = fed.lab.path("mean.npy");
    let server = serve(&fed, &out, &[]);
    let nodes: Vec<Proc> = (0..5)
        .map(|i| join(&fed, i, &inputs[i].0, weights[i], &[]))
        .collect();
    for n in nodes {
        let (code, err) = n.finish();
        assert_eq!(code, Some(0), "{err}");
        assert!(
            err.contains("round 1 complete: weighted mean of 5 node(s)"),
            "{err}"
        );
    }
    let (code, err) = server.finish();
    assert_eq!(code, Some(0), "{err}");
    assert_mean(&read_all(&out), &inputs, &weights, &[0, 1, 2, 3, 4]);
}

#[test]
fn an_input_changed_during_the_round_stops_the_node_before_the_change_is_masked() {
    // node_4's file is rewritten in place while its stream is paused (after two of its
    // four 1 MiB read blocks): it stops at the first changed block, before masking it,
    // and drops out; the three others complete the round (threshold 3 of 4) and the
    // release node_4 journaled before the round stays.
    let fed = federation(4);
    let layout = npy(800_000);
    let inputs = write_inputs(&fed, &layout);
    let weights = [1u64, 2, 3, 4];
    let out = fed.lab.path("mean.npy");
    let server = serve(&fed, &out, &["--timeout", "20"]);
    let honest: Vec<Proc> = (0..3)
        .map(|i| join(&fed, i, &inputs[i].0, weights[i], &[]))
        .collect();
    let changing = join(
        &fed,
        3,
        &inputs[3].0,
        weights[3],
        &[
            "--insecure-test-stall-after-bytes",
            "1",
            "--insecure-test-stall-secs",
            // Long enough for the rewrite below on a loaded machine (the test would fail,
            // not pass, if the node read on before it).
            "5",
        ],
    );
    changing.wait_for("test stall");
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(&inputs[3].0)
            .expect("open in place");
        // Value 700,000 (the third read block): the file's last 3.2 MB are values.
        let len = f.metadata().expect("len").len();
        f.seek(SeekFrom::Start(len - 4 * (800_000 - 700_000)))
            .expect("seek");
        f.write_all(&0.5f32.to_le_bytes()).expect("write");
        f.sync_all().expect("sync");
    }
    let (code, err) = changing.finish();
    assert_ne!(code, Some(0), "{err}");
    assert!(err.contains("changed after it was checked"), "{err}");
    for (i, n) in honest.into_iter().enumerate() {
        let (code, err) = n.finish();
        assert_eq!(code, Some(0), "node {i}: {err}");
        assert!(
            err.contains("round 1 complete: weighted mean of 3 node(s)"),
            "node {i}: {err}"
        );
    }
    let (code, err) = server.finish();
    assert_eq!(code, Some(0), "{err}");
    assert_mean(&read_all(&out), &inputs, &weights, &[0, 1, 2]);
    let (_, releases) = common::release_rows(&fed.nodes[3].home);
    assert_eq!(releases.len(), 1, "{releases:?}");
    assert!(releases[0].contains("|2|round|fed|1"), "{releases:?}");
}
