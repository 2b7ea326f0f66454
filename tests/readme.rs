//! The README is tested: every command of "The workflow, step by step" (sections 1–6 and
//! the fenced command of "Pairwise registration") is read from `README.md` at test time
//! and run as written through the real binary, one temporary home per party, so the
//! README cannot drift from the CLI again. The two commands at the top of the README are
//! checked to exist as written.
//!
//! Parsing: every fenced block is attributed to its `##`/`###` heading; in a block, `\`
//! continuations are joined, comment lines and trailing `# ...` comments are dropped (a
//! comment line names who runs the commands below it), words are split on whitespace.
//! Quotes, pipes, `$`, `;`, `&` and `<` are refused: the README's commands must stay simple
//! enough to run exactly.
//!
//! The only substitutions, all made here:
//! - The leading `secagg` becomes the binary under test with `--home <that party's home>`,
//!   run in the party's own working directory (relative file names resolve there).
//! - Who runs a command: the comment above it (`# at the researcher`, `# at each
//!   hospital`: once per hospital home), else the party the prose around it names:
//!   step 2 and 4 and `mask` (step 6) at each hospital; step 3, `aggregate` (step 6), and
//!   the pairwise `register`/`list`/`delete` at the researcher.
//! - Three hospitals, `hospital-a`, `hospital-b`, `hospital-c` (the README's roster and
//!   `--participants`). A word naming `hospital-a` and no other hospital (`hospital-a`,
//!   `hospital-a.txt`, `hospital-a.masked`, ...) names the hospital it is run for and
//!   becomes that hospital's id; lists of all three are kept.
//! - A `--fingerprint` placeholder (`2D:FD:FC:D3:…`, `3F:9A:...`) becomes the real
//!   fingerprint from the previous command's output: the roster fingerprint printed by
//!   `federation show` (step 4); the hospital's certificate fingerprint from its
//!   registration instructions (pairwise registration).
//! - `> FILE` writes the command's stdout to FILE in the party's working directory.
//! - Sending files "by any channel": an input file a command names (not an `--out`) that is
//!   missing in the party's working directory is copied from the one party that has it
//!   (`hospital-a.txt` to the researcher, `roster.toml` to the hospitals, `.masked` files
//!   to the researcher). The pairwise `hospital-a.pem` is saved from the hospital's
//!   instructions under the name they give. `update.npy` (each hospital's update) and
//!   `global_model.npy` (the researcher's model) are written by this test.
//! - The example addresses (203.0.113.10, 198.51.100.7) are kept: they only go into
//!   certificates. Except for the round over TLS (step 5): there step 1's researcher
//!   command runs with `--ip 127.0.0.1 --port <a free port>`, so that `round serve`
//!   listens where every hospital registered it (no `--listen` needed). Step 5's commands
//!   themselves run exactly as written, as concurrent processes.
//!
//! Steps 5 and 6, and pairwise registration, are alternatives to each other (a home never
//! releases the same update twice, and pairwise replaces the roster), so each runs in its
//! own set of homes, after steps 1–4 (steps 1–2 for pairwise). "Measuring" is not run (it
//! takes minutes); its scripts and flags are checked to exist.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{bin, read_all, values};
use secagg::files::tensor;
use secagg::layout::{Container, DType, Layout, TensorSpec};

const README: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/README.md");
const WORKFLOW: &str = "The workflow, step by step";
/// The hospital the README's examples are written for, and the three the test runs.
const EXAMPLE: &str = "hospital-a";
const HOSPITALS: [&str; 3] = ["hospital-a", "hospital-b", "hospital-c"];

// ---------------------------------------------------------------------------------------
// Parsing

/// A fenced block and the headings it is under.
struct Block {
    h2: String,
    h3: String,
    lang: String,
    lines: Vec<String>,
}

/// One command of a block.
#[derive(Clone, Debug)]
struct Cmd {
    /// The README's text of the command (continuations joined, comment dropped).
    text: String,
    /// The comment line above it, if any.
    comment: Option<String>,
    words: Vec<String>,
    /// `> FILE`
    stdout_to: Option<String>,
}

struct Readme {
    blocks: Vec<Block>,
}

impl Readme {
    fn load() -> Readme {
        let text = std::fs::read_to_string(README).expect("README.md");
        let (mut h2, mut h3) = (String::new(), String::new());
        let mut blocks = Vec::new();
        let mut open: Option<Block> = None;
        for line in text.lines() {
            if let Some(b) = open.as_mut() {
                if line.trim_start().starts_with("```") {
                    blocks.push(open.take().expect("open"));
                } else {
                    b.lines.push(line.to_owned());
                }
                continue;
            }
            if let Some(fence) = line.trim_start().strip_prefix("```") {
                open = Some(Block {
                    h2: h2.clone(),
                    h3: h3.clone(),
                    lang: fence.trim().to_owned(),
                    lines: Vec::new(),
                });
            } else if let Some(t) = line.strip_prefix("## ") {
                h2 = t.trim().to_owned();
                h3.clear();
            } else if let Some(t) = line.strip_prefix("### ") {
                h3 = t.trim().to_owned();
            }
        }
        assert!(open.is_none(), "README.md: unterminated code block");
        Readme { blocks }
    }

    /// The workflow's blocks of section `h3` (by prefix, e.g. "3.") with the given language.
    fn section_blocks(&self, h3: &str, lang: &str) -> Vec<&Block> {
        let found: Vec<&Block> = self
            .blocks
            .iter()
            .filter(|b| b.h2 == WORKFLOW && b.h3.starts_with(h3) && b.lang == lang)
            .collect();
        assert!(
            !found.is_empty(),
            "README.md: no ```{lang} block under '### {h3}...' in '## {WORKFLOW}'"
        );
        found
    }

    /// Every command of the section's ```sh blocks, in order.
    fn sh(&self, h3: &str) -> Vec<Cmd> {
        self.section_blocks(h3, "sh")
            .into_iter()
            .flat_map(|b| commands(&b.lines))
            .collect()
    }
}

/// Splits a block into commands: joins `\` continuations, drops comments (a comment line
/// applies to the commands below it, up to the next comment line).
fn commands(lines: &[String]) -> Vec<Cmd> {
    let mut out = Vec::new();
    let mut comment: Option<String> = None;
    let mut pending = String::new();
    for raw in lines {
        let line = raw.trim();
        if pending.is_empty() {
            if line.is_empty() {
                continue;
            }
            if let Some(c) = line.strip_prefix('#') {
                comment = Some(c.trim().to_owned());
                continue;
            }
        }
        let (line, continued) = match line.strip_suffix('\\') {
            Some(l) => (l, true),
            None => (line, false),
        };
        pending.push_str(line);
        pending.push(' ');
        if continued {
            continue;
        }
        out.push(parse_command(&pending, comment.clone()));
        pending.clear();
    }
    assert!(
        pending.is_empty(),
        "README.md: dangling '\\' in {pending:?}"
    );
    out
}

fn parse_command(line: &str, comment: Option<String>) -> Cmd {
    // A trailing comment starts at a '#' after whitespace.
    let text = match line.find(" #") {
        Some(i) => &line[..i],
        None => line,
    };
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(
        !text.contains(['\'', '"', '|', '$', ';', '&', '<', '`', '*']),
        "README.md: command {text:?} uses shell syntax this test does not run; keep README commands simple"
    );
    let mut words: Vec<String> = text.split(' ').map(str::to_owned).collect();
    let mut stdout_to = None;
    if let Some(i) = words.iter().position(|w| w == ">") {
        assert_eq!(
            i + 2,
            words.len(),
            "README.md: {text:?}: '>' must be followed by one file name, last"
        );
        stdout_to = Some(words[i + 1].clone());
        words.truncate(i);
    }
    assert!(
        words.iter().all(|w| !w.contains('>')),
        "README.md: {text:?}: write redirections as '> FILE'"
    );
    Cmd {
        text,
        comment,
        words,
        stdout_to,
    }
}

/// Who runs a command.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Who {
    Researcher,
    EachHospital,
}

/// From the comment above the command (`# at the researcher`, `# at each hospital`).
fn who_from_comment(cmd: &Cmd) -> Option<Who> {
    let c = cmd.comment.as_deref()?;
    if c.starts_with("at the researcher") {
        Some(Who::Researcher)
    } else if c.starts_with("at each hospital") {
        Some(Who::EachHospital)
    } else {
        panic!(
            "README.md: comment {c:?} above {:?} names no party this test knows ('at the researcher', 'at each hospital')",
            cmd.text
        )
    }
}

/// The value following `flag`.
fn flag_value<'a>(words: &'a [String], flag: &str) -> Option<&'a str> {
    let i = words.iter().position(|w| w == flag)?;
    words.get(i + 1).map(String::as_str)
}

/// A placeholder fingerprint as the README writes it: hex pairs ending in an ellipsis.
fn is_placeholder(w: &str) -> bool {
    w.contains('…') || w.ends_with("...")
}

// ---------------------------------------------------------------------------------------
// Parties and running commands

struct Party {
    id: String,
    home: PathBuf,
    /// Working directory: where the party's relative file names live.
    cwd: PathBuf,
}

/// A researcher and the three hospitals, each with a home and a working directory.
struct World {
    _dir: tempfile::TempDir,
    researcher: Party,
    hospitals: Vec<Party>,
}

/// A command ready to run: the README's words after the substitutions.
struct Prepared {
    readme: String,
    args: Vec<String>,
    stdout_to: Option<String>,
}

impl World {
    fn new() -> World {
        let dir = tempfile::tempdir().expect("tempdir");
        let party = |id: &str| {
            let p = Party {
                id: id.to_owned(),
                home: dir.path().join("homes").join(id),
                cwd: dir.path().join("work").join(id),
            };
            std::fs::create_dir_all(&p.cwd).expect("working directory");
            p
        };
        World {
            researcher: party("researcher"),
            hospitals: HOSPITALS.iter().map(|h| party(h)).collect(),
            _dir: dir,
        }
    }

    fn parties(&self) -> impl Iterator<Item = &Party> {
        std::iter::once(&self.researcher).chain(&self.hospitals)
    }

    fn hospital(&self, id: &str) -> &Party {
        self.hospitals
            .iter()
            .find(|h| h.id == id)
            .expect("hospital")
    }

    /// Applies the substitutions: `hospital-a` -> `as_id`, placeholder -> `fingerprint`.
    fn prepare(cmd: &Cmd, as_id: Option<&str>, fingerprint: Option<&str>) -> Prepared {
        assert_eq!(
            cmd.words[0], "secagg",
            "README.md: {:?} does not start with secagg",
            cmd.text
        );
        let map = |w: &str| match as_id {
            Some(id) if w.contains(EXAMPLE) && !HOSPITALS[1..].iter().any(|h| w.contains(h)) => {
                w.replace(EXAMPLE, id)
            }
            _ => w.to_owned(),
        };
        let mut args: Vec<String> = cmd.words[1..].iter().map(|w| map(w)).collect();
        for i in 0..args.len() {
            if is_placeholder(&args[i]) {
                assert!(
                    i > 0 && args[i - 1] == "--fingerprint",
                    "README.md: {:?}: placeholder {:?} is not a --fingerprint value",
                    cmd.text,
                    args[i]
                );
                let fp = fingerprint.unwrap_or_else(|| {
                    panic!(
                        "README.md: {:?}: no fingerprint came before this placeholder",
                        cmd.text
                    )
                });
                args[i] = fp.to_owned();
            }
        }
        Prepared {
            readme: cmd.text.clone(),
            args,
            stdout_to: cmd.stdout_to.as_deref().map(map),
        }
    }

    /// "Send the file by any channel": copies every input file the command names that is
    /// missing here from the one party that has it.
    fn deliver(&self, to: &Party, p: &Prepared) {
        for (i, w) in p.args.iter().enumerate() {
            if w.starts_with('-') || (i > 0 && p.args[i - 1] == "--out") {
                continue;
            }
            if to.cwd.join(w).exists() {
                continue;
            }
            // The parties that have it (the sender, or those it was sent to before).
            let mut copies: Vec<Vec<u8>> = self
                .parties()
                .filter(|q| q.id != to.id)
                .filter_map(|q| std::fs::read(q.cwd.join(w)).ok())
                .collect();
            copies.sort();
            copies.dedup();
            match &copies[..] {
                [] => {}
                [bytes] => std::fs::write(to.cwd.join(w), bytes).expect("send file"),
                _ => panic!(
                    "{}: which {w} is meant? parties hold different ones",
                    p.readme
                ),
            }
        }
    }

    fn command(&self, at: &Party, p: &Prepared) -> Command {
        self.deliver(at, p);
        let mut c = Command::new(bin());
        c.env_remove("SECAGG_HOME")
            .arg("--home")
            .arg(&at.home)
            .args(&p.args)
            .current_dir(&at.cwd)
            .stdin(Stdio::null());
        c
    }

    /// Runs a prepared command at `at`; fails the test with the command and its stderr
    /// unless it exits 0. Returns stdout (also written to the `> FILE`).
    fn exec(&self, at: &Party, p: &Prepared) -> String {
        let out: Output = self.command(at, p).output().expect("spawn secagg");
        assert!(
            out.status.success(),
            "README command failed at {} ({}):\n  {}\nran as: secagg --home {} {}\nstderr:\n{}",
            at.id,
            out.status,
            p.readme,
            at.home.display(),
            p.args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        if let Some(f) = &p.stdout_to {
            std::fs::write(at.cwd.join(f), &out.stdout).expect("redirect stdout");
        }
        String::from_utf8(out.stdout).expect("utf8 stdout")
    }

    /// Runs every command of a section at the party it names (the comment above it, else
    /// `default`), `edit` first sees each command's arguments; returns the stdouts.
    fn run_section(
        &self,
        cmds: &[Cmd],
        default: impl Fn(&Cmd) -> Who,
        fingerprint: Option<&str>,
        edit: impl Fn(&Party, &mut Vec<String>),
    ) -> Vec<(String, String)> {
        let mut outs = Vec::new();
        for cmd in cmds {
            let who = who_from_comment(cmd).unwrap_or_else(|| default(cmd));
            let parties: Vec<&Party> = match who {
                Who::Researcher => vec![&self.researcher],
                Who::EachHospital => self.hospitals.iter().collect(),
            };
            for at in parties {
                let as_id = (who == Who::EachHospital).then_some(at.id.as_str());
                let mut p = Self::prepare(cmd, as_id, fingerprint);
                edit(at, &mut p.args);
                outs.push((at.id.clone(), self.exec(at, &p)));
            }
        }
        outs
    }
}

/// Sets the value of `flag` (which the command must have).
fn set_flag(args: &mut [String], flag: &str, value: &str) {
    let i = args
        .iter()
        .position(|a| a == flag)
        .unwrap_or_else(|| panic!("expected {flag} in {args:?}"));
    args[i + 1] = value.to_owned();
}

fn no_edit(_: &Party, _: &mut Vec<String>) {}

fn roster_fingerprint(out: &str) -> Option<String> {
    out.lines()
        .find_map(|l| l.strip_prefix("roster fingerprint: "))
        .map(str::to_owned)
}

// ---------------------------------------------------------------------------------------
// The steps

/// Steps 1–2: identities, then each hospital's instructions (text and JSON) in its
/// working directory. `researcher_at` replaces the researcher's `--ip/--port` (step 5).
fn identities(w: &World, r: &Readme, researcher_at: Option<(&str, u16)>) {
    let step1 = r.sh("1.");
    assert!(
        step1.iter().all(|c| who_from_comment(c).is_some()),
        "README.md: every command of step 1 should say where it runs"
    );
    w.run_section(
        &step1,
        |c| panic!("unreachable: {c:?}"),
        None,
        |at, args| {
            if let (Some((ip, port)), true) = (researcher_at, at.id == w.researcher.id) {
                set_flag(args, "--ip", ip);
                set_flag(args, "--port", &port.to_string());
            }
        },
    );
    for p in w.parties() {
        assert!(p.home.join("cert.pem").is_file(), "no identity at {}", p.id);
    }
    // Step 2: "Each hospital prints its registration instructions".
    w.run_section(&r.sh("2."), |_| Who::EachHospital, None, no_edit);
    for h in &w.hospitals {
        for ext in ["txt", "json"] {
            let f = h.cwd.join(format!("{}.{ext}", h.id));
            let text = std::fs::read_to_string(&f).expect("instructions written");
            assert!(
                text.contains("BEGIN CERTIFICATE"),
                "{}: {text}",
                f.display()
            );
        }
    }
}

/// Steps 3–4: the researcher signs the roster, every hospital imports it.
fn roster(w: &World, r: &Readme) {
    // Step 3: "The researcher signs one roster".
    let outs = w.run_section(&r.sh("3."), |_| Who::Researcher, None, no_edit);
    let fps: Vec<String> = outs
        .iter()
        .filter_map(|(_, o)| roster_fingerprint(o))
        .collect();
    assert_eq!(
        fps.len(),
        2,
        "create and show should both print the roster fingerprint: {outs:?}"
    );
    assert_eq!(fps[0], fps[1], "create and show disagree");
    let fp = fps[1].clone(); // the previous command's (show's) output
    // The README's example of show's fingerprint line is the real line's format.
    let example = r
        .section_blocks("3.", "")
        .iter()
        .flat_map(|b| b.lines.iter())
        .find_map(|l| l.strip_prefix("roster fingerprint: "))
        .expect("README.md: step 3 shows the 'roster fingerprint: ' line");
    assert_eq!(fp.len(), 32 * 3 - 1, "{fp}");
    assert!(
        fp.split(':')
            .all(|b| b.len() == 2 && b.chars().all(|c| c.is_ascii_hexdigit())),
        "{fp}"
    );
    assert!(
        example
            .split(':')
            .all(|b| b == "…" || (b.len() == 2 && b.chars().all(|c| c.is_ascii_hexdigit()))),
        "README.md: example fingerprint {example:?} is not hex pairs with an ellipsis"
    );
    // Every hospital registered at the researcher.
    let listed = list_ids(w, &w.researcher);
    assert_eq!(listed, HOSPITALS, "researcher's registry after create");

    // Step 4: "Each hospital imports it", with the fingerprint read out.
    let step4 = r.sh("4.");
    for c in &step4 {
        if let Some(ph) = c.words.iter().find(|w| is_placeholder(w)) {
            let shown = ph.trim_end_matches(['…', '.']).trim_end_matches(':');
            assert!(
                example.starts_with(shown),
                "README.md: step 4's placeholder {ph:?} is not step 3's fingerprint {example:?}"
            );
        }
    }
    w.run_section(&step4, |_| Who::EachHospital, Some(&fp), no_edit);
    for h in &w.hospitals {
        let mut want: Vec<&str> = vec!["researcher"];
        want.extend(HOSPITALS.iter().filter(|x| **x != h.id));
        want.sort();
        assert_eq!(list_ids(w, h), want, "registry at {} after import", h.id);
    }
}

/// Registered party ids (a check of this test, not a README command).
fn list_ids(w: &World, at: &Party) -> Vec<String> {
    let p = Prepared {
        readme: "(check) secagg certificate list --json".into(),
        args: ["certificate", "list", "--json"].map(String::from).to_vec(),
        stdout_to: None,
    };
    let v: serde_json::Value = serde_json::from_str(&w.exec(at, &p)).expect("json");
    let mut ids: Vec<String> = v
        .as_array()
        .expect("array")
        .iter()
        .map(|r| r["party_id"].as_str().expect("id").to_owned())
        .collect();
    ids.sort();
    ids
}

fn layout() -> Layout {
    Layout {
        container: Container::Npy,
        tensors: vec![TensorSpec {
            name: String::new(),
            dtype: DType::F32,
            shape: vec![20, 50],
        }],
    }
}

/// Writes each hospital's `update.npy` (what its training produced); returns the values
/// as stored, in hospital order.
fn write_updates(w: &World) -> Vec<Vec<f64>> {
    let layout = layout();
    w.hospitals
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let p = h.cwd.join("update.npy");
            let v = values(i as u64 + 7, layout.elements() as usize);
            tensor::write_values(&p, &layout, v.into_iter()).expect("write update");
            read_all(&p)
        })
        .collect()
}

/// Checks `got` against the weighted mean of the clipped updates (defaults: clip 1.0,
/// 16 bits): half a quantization step, plus f32 rounding.
fn assert_mean(got: &[f64], updates: &[Vec<f64>], weights: &[u64]) {
    let total: u64 = weights.iter().sum();
    let step = 1.0 / 32767.0;
    assert_eq!(got.len(), updates[0].len());
    for (k, g) in got.iter().enumerate() {
        let plain = updates
            .iter()
            .zip(weights)
            .map(|(u, &wt)| u[k].clamp(-1.0, 1.0) * wt as f64)
            .sum::<f64>()
            / total as f64;
        assert!(
            (g - plain).abs() <= step / 2.0 + 1e-6,
            "element {k}: secure {g}, plain {plain}"
        );
    }
}

/// The `--weight` each hospital passes in `cmd` (the same README word for all).
fn weights(cmd: &Cmd) -> Vec<u64> {
    let wt: u64 = flag_value(&cmd.words, "--weight")
        .unwrap_or_else(|| panic!("README.md: {:?} has no --weight", cmd.text))
        .parse()
        .expect("weight");
    vec![wt; HOSPITALS.len()]
}

/// A free port below the kernel's ephemeral range (see tests/round_cli.rs).
fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let base = 14000 + (std::process::id() % 500) as u16 * 20;
    loop {
        let port = base + NEXT.fetch_add(1, Ordering::Relaxed) % 10000;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// A running README command; killed if the test fails first.
struct Proc {
    at: String,
    readme: String,
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn spawn(w: &World, at: &Party, p: &Prepared) -> Proc {
        let log = at.cwd.join("stderr.log");
        let child = w
            .command(at, p)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("spawn secagg");
        Proc {
            at: at.id.clone(),
            readme: p.readme.clone(),
            child,
            log,
        }
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn wait_for(&mut self, needle: &str) {
        let t = Instant::now();
        while !self.stderr().contains(needle) {
            if let Some(status) = self.child.try_wait().expect("wait") {
                panic!(
                    "README command exited ({status}) at {}:\n  {}\nstderr:\n{}",
                    self.at,
                    self.readme,
                    self.stderr()
                );
            }
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "never saw {needle:?}:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits (bounded) and asserts exit 0; returns stderr.
    fn finish(&mut self) -> String {
        let t = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                assert!(
                    status.success(),
                    "README command failed at {} ({status}):\n  {}\nstderr:\n{}",
                    self.at,
                    self.readme,
                    self.stderr()
                );
                return self.stderr();
            }
            assert!(
                t.elapsed() < Duration::from_secs(180),
                "README command did not exit at {}:\n  {}\nstderr:\n{}",
                self.at,
                self.readme,
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

// ---------------------------------------------------------------------------------------
// Tests

#[test]
fn top_commands_exist_as_written() {
    let r = Readme::load();
    let top: Vec<&Block> = r.blocks.iter().filter(|b| b.h2.is_empty()).collect();
    assert_eq!(
        top.len(),
        1,
        "README.md: one command block before the first '##'"
    );
    let cmds = commands(&top[0].lines);
    let texts: Vec<&str> = cmds.iter().map(|c| c.text.as_str()).collect();
    assert_eq!(texts, ["scripts/local-federation", "cargo test --locked"]);
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let script = root.join(&cmds[0].words[0]);
    let mode = {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(&script)
            .unwrap_or_else(|e| panic!("{}: {e}", script.display()))
            .permissions()
            .mode()
    };
    assert!(mode & 0o111 != 0, "{} is not executable", script.display());
    let ci = std::fs::read_to_string(root.join(".ci/run")).expect(".ci/run");
    assert!(
        ci.lines().any(|l| l.trim() == cmds[1].text),
        ".ci/run does not run {:?}",
        cmds[1].text
    );
}

/// Every workflow section with commands is one this test runs (or checks), so a new one
/// cannot go untested.
#[test]
fn every_workflow_section_is_covered() {
    let r = Readme::load();
    let mut seen: Vec<(String, String)> = Vec::new();
    for b in r.blocks.iter().filter(|b| b.h2 == WORKFLOW) {
        let key = (b.h3.clone(), b.lang.clone());
        if !seen.contains(&key) {
            seen.push(key);
        }
    }
    let known = [
        ("1.", "sh"),
        ("2.", "sh"),
        ("3.", "sh"),
        ("3.", ""),
        ("4.", "sh"),
        ("Pairwise registration", ""),
        ("Pairwise registration", "sh"),
        ("5.", "sh"),
        ("6.", "sh"),
        ("Measuring", "sh"),
    ];
    let got: Vec<(&str, &str)> = seen
        .iter()
        .map(|(h3, lang)| {
            let k = known
                .iter()
                .find(|(p, l)| h3.starts_with(p) && l == lang)
                .unwrap_or_else(|| {
                    panic!("README.md: block ```{lang} under '### {h3}' is not run by tests/readme.rs; extend it")
                });
            (k.0, k.1)
        })
        .collect();
    assert_eq!(got, known, "README.md: workflow sections changed");
    // Measuring is not run (minutes of CPU); what it names must exist.
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for c in r.sh("Measuring") {
        match c.words[0].as_str() {
            s if s.starts_with("scripts/") => {
                use std::os::unix::fs::PermissionsExt;
                let m = std::fs::metadata(root.join(s)).unwrap_or_else(|e| panic!("{s}: {e}"));
                assert!(m.permissions().mode() & 0o111 != 0, "{s} is not executable");
            }
            "cargo" => assert_eq!(c.text, "cargo bench"),
            "secagg" => {
                let help = Command::new(bin())
                    .args(&c.words[1..2])
                    .arg("--help")
                    .output()
                    .expect("spawn");
                let help = String::from_utf8_lossy(&help.stdout);
                for flag in c.words.iter().filter(|w| w.starts_with("--")) {
                    assert!(help.contains(flag.as_str()), "{}: no {flag}", c.text);
                }
            }
            other => panic!("README.md: Measuring: unknown command {other}"),
        }
    }
}

/// Steps 1–4, then step 6 (file mode) for real with three hospitals; the README's example
/// addresses are kept.
#[test]
fn steps_1_to_4_then_6_file_mode_round() {
    let r = Readme::load();
    let w = World::new();
    identities(&w, &r, None);
    roster(&w, &r);

    let updates = write_updates(&w);
    let step6 = r.sh("6.");
    let mask = step6
        .iter()
        .find(|c| c.words.get(1).map(String::as_str) == Some("mask"))
        .expect("README.md: step 6 masks");
    // "Each node masks its update", "The researcher collects ... and aggregates".
    w.run_section(
        &step6,
        |c| match c.words[1].as_str() {
            "mask" => Who::EachHospital,
            "aggregate" => Who::Researcher,
            other => panic!("README.md: step 6: who runs '{other}'?"),
        },
        None,
        no_edit,
    );
    for h in &w.hospitals {
        assert!(h.cwd.join(format!("{}.masked", h.id)).is_file());
    }
    let agg = step6
        .iter()
        .find(|c| c.words[1] == "aggregate")
        .expect("README.md: step 6 aggregates");
    let out = w
        .researcher
        .cwd
        .join(flag_value(&agg.words, "--out").expect("--out"));
    assert_eq!(tensor::read_layout(&out).expect("mean"), layout());
    assert_mean(&read_all(&out), &updates, &weights(mask));
}

/// Steps 1–4 with the researcher at 127.0.0.1 and a free port, then step 5: `round
/// serve` and `round join` as written, as concurrent processes on loopback.
#[test]
fn steps_1_to_4_then_5_round_over_tls() {
    let r = Readme::load();
    let w = World::new();
    let port = free_port();
    identities(&w, &r, Some(("127.0.0.1", port)));
    roster(&w, &r);

    let updates = write_updates(&w);
    let step5 = r.sh("5.");
    let [serve, join] = &step5[..] else {
        panic!("README.md: step 5 should be one serve and one join: {step5:?}")
    };
    assert_eq!(who_from_comment(serve), Some(Who::Researcher));
    assert_eq!(who_from_comment(join), Some(Who::EachHospital));
    // The researcher's global model: the shapes the round announces (--like).
    let like = flag_value(&serve.words, "--like").expect("README.md: serve --like");
    tensor::write_values(
        &w.researcher.cwd.join(like),
        &layout(),
        std::iter::repeat_n(0.0, layout().elements() as usize),
    )
    .expect("global model");

    let mut server = Proc::spawn(&w, &w.researcher, &World::prepare(serve, None, None));
    server.wait_for(&format!("listening on 127.0.0.1:{port}"));
    let mut nodes: Vec<Proc> = w
        .hospitals
        .iter()
        .map(|h| Proc::spawn(&w, h, &World::prepare(join, Some(&h.id), None)))
        .collect();
    for n in &mut nodes {
        let err = n.finish();
        assert!(err.contains("round 1 complete"), "{err}");
    }
    let err = server.finish();
    assert!(err.contains("round 1 complete"), "{err}");

    let out = flag_value(&serve.words, "--out").expect("--out");
    let mean = w.researcher.cwd.join(out);
    assert_mean(&read_all(&mean), &updates, &weights(join));
    let node_out = flag_value(&join.words, "--out").expect("--out");
    for h in &w.hospitals {
        assert_eq!(
            std::fs::read(h.cwd.join(node_out)).expect("mean at node"),
            std::fs::read(&mean).expect("mean"),
            "{} received another mean",
            h.id
        );
    }
}

/// Steps 1–2, then "Pairwise registration" instead of a roster: the researcher saves each
/// hospital's PEM under the name its instructions give and runs the README's `register`
/// command for it (which must be exactly what the instructions print), then `list`,
/// `list --json` and `delete`.
#[test]
fn steps_1_2_then_pairwise_registration() {
    let r = Readme::load();
    let w = World::new();
    identities(&w, &r, None);

    let blocks = r.section_blocks("Pairwise registration", "");
    let register: Vec<Cmd> = blocks.iter().flat_map(|b| commands(&b.lines)).collect();
    let [register] = &register[..] else {
        panic!("README.md: one register command in Pairwise registration: {register:?}")
    };
    for h in HOSPITALS {
        // The previous command's output: this hospital's instructions (step 2, --json).
        let json = w.hospital(h).cwd.join(format!("{h}.json"));
        let i: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(json).expect("instructions"))
                .expect("json");
        let fp = i["fingerprint"].as_str().expect("fingerprint");
        let p = World::prepare(register, Some(h), Some(fp));
        assert_eq!(
            format!("secagg {}", p.args.join(" ")),
            i["register_command"].as_str().expect("command"),
            "README.md: the register command is not what {h}'s instructions print"
        );
        let pem_file = i["pem_file"].as_str().expect("pem_file");
        assert_eq!(flag_value(&p.args, "--public-key"), Some(pem_file));
        std::fs::write(
            w.researcher.cwd.join(pem_file),
            i["certificate_pem"].as_str().expect("pem"),
        )
        .expect("save pem");
        w.exec(&w.researcher, &p);
    }
    assert_eq!(list_ids(&w, &w.researcher), HOSPITALS);

    let outs = w.run_section(
        &r.sh("Pairwise registration"),
        |_| Who::Researcher,
        None,
        no_edit,
    );
    assert_eq!(outs.len(), 3, "{outs:?}");
    for h in HOSPITALS {
        assert!(outs[0].1.contains(h), "list: {}", outs[0].1);
    }
    let listed: serde_json::Value = serde_json::from_str(&outs[1].1).expect("list --json");
    assert_eq!(listed.as_array().expect("array").len(), HOSPITALS.len());
    // `certificate delete --party-id hospital-c --yes` removed hospital-c.
    assert_eq!(list_ids(&w, &w.researcher), ["hospital-a", "hospital-b"]);
}
