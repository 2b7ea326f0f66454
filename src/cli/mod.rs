//! The command-line layer: parse, resolve the home, run, print. The only code that
//! prints, prompts or reads the environment.

pub mod args;
mod certificate;
mod federation;
mod hints;
mod prompt;
mod round;
mod secure;

use std::fmt;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser};

use args::{Cli, Command};
use hints::Hint;
use secagg::pki::identity::Home;
use secagg::text::sanitize;

/// A user-facing failure: one line of what went wrong and an optional `hint:` line.
#[derive(Debug)]
pub struct Failure {
    message: String,
    hint: Option<String>,
}

impl Failure {
    /// A failure with a message and a hint.
    pub fn new(message: String, hint: Option<String>) -> Failure {
        Failure { message, hint }
    }

    /// Prefixes the message with context, e.g. the file involved.
    pub fn context(mut self, what: impl fmt::Display) -> Failure {
        self.message = format!("{what}: {}", self.message);
        self
    }
}

macro_rules! failure_from {
    ($($t:ty),*) => {$(
        impl From<$t> for Failure {
            fn from(e: $t) -> Failure {
                Failure { hint: e.hint(), message: e.to_string() }
            }
        }
    )*};
}
failure_from!(
    secagg::party::Error,
    secagg::pki::identity::Error,
    secagg::pki::certificate::Error,
    secagg::pki::registry::Error,
    secagg::pki::roster::Error,
    secagg::pki::federation::Error,
    secagg::files::masked::Error,
    secagg::files::aggregate::Error,
    secagg::files::tensor::Error,
    secagg::secagg::sum::Error,
    secagg::round::Error
);

/// Parses the command line, runs the command, and maps the outcome to an exit code:
/// 0 success, 1 operational failure, 2 usage error.
pub fn run() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match dispatch(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            // Messages quote certificate names, file names and tensor names that came
            // from peers or files: never let their control characters reach the terminal.
            eprintln!("error: {}", sanitize(&f.message));
            if let Some(hint) = f.hint {
                eprintln!("hint: {}", sanitize(&hint));
            }
            ExitCode::FAILURE
        }
    }
}

fn dispatch(cli: Cli) -> Result<(), Failure> {
    // Only `certificate generate` creates a home; every other command needs one.
    let creates_home = matches!(
        cli.command,
        Command::Certificate(args::CertificateCmd::Generate(_))
    );
    let home = || {
        let home = resolve_home(cli.home.clone())?;
        if !creates_home {
            require_home(&home)?;
        }
        Ok::<Home, Failure>(home)
    };
    match cli.command {
        Command::Certificate(cmd) => certificate::run(&home()?, cmd),
        Command::Federation(cmd) => federation::run(home(), cmd),
        Command::Mask(a) => secure::mask(&home()?, a, cli.quiet),
        Command::Aggregate(a) => secure::aggregate(&home()?, a, cli.quiet),
        Command::Round(cmd) => round::run(&home()?, cmd, cli.quiet),
        Command::Bench(a) => secure::bench(a, cli.quiet),
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "secagg", &mut std::io::stdout());
            Ok(())
        }
        Command::Man { out } => man(&out),
    }
}

/// One page per command and subcommand, named as `man` looks them up
/// (`secagg-certificate-register.1`), each written atomically.
fn man(out: &std::path::Path) -> Result<(), Failure> {
    let dir = out.display().to_string();
    let io = |e: std::io::Error| {
        Failure::new(
            format!("cannot write man pages to {dir}: {e}"),
            Some("pass --out with a writable directory".into()),
        )
    };
    std::fs::create_dir_all(out).map_err(io)?;
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    let mut pages = Vec::new();
    collect_pages(&cmd, &mut pages);
    for page in &pages {
        let man = clap_mangen::Man::new(page.clone());
        let mut roff = Vec::new();
        man.render(&mut roff).map_err(io)?;
        secagg::atomic::write(&out.join(man.get_filename()), &roff, false).map_err(io)?;
    }
    eprintln!("wrote {} man pages to {dir}", pages.len());
    Ok(())
}

fn collect_pages(cmd: &clap::Command, pages: &mut Vec<clap::Command>) {
    pages.push(cmd.clone());
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        collect_pages(sub, pages);
    }
}

/// Refuses a home directory that does not exist (a typo in `--home` must not silently
/// start an empty registry somewhere else).
fn require_home(home: &Home) -> Result<(), Failure> {
    let root = home.root();
    match std::fs::metadata(root) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(Failure::new(
            format!("home {} is not a directory", root.display()),
            Some("check --home (or SECAGG_HOME): it must name this party's home directory".into()),
        )),
        Err(_) => Err(Failure::new(
            format!("home directory {} does not exist", root.display()),
            Some("run 'secagg certificate generate' to create this party's home, or check --home (or SECAGG_HOME)".into()),
        )),
    }
}

/// `--home`, then `$SECAGG_HOME` (both via clap), then the platform data directory.
fn resolve_home(flag: Option<PathBuf>) -> Result<Home, Failure> {
    if let Some(dir) = flag {
        return Ok(Home::new(dir));
    }
    directories::ProjectDirs::from("org", "secagg", "secagg")
        .map(|d| Home::new(d.data_dir()))
        .ok_or_else(|| {
            Failure::new(
                "cannot find a home directory for secagg".into(),
                Some("pass --home DIR or set SECAGG_HOME".into()),
            )
        })
}

/// Prints a left-aligned table on stdout: each column as wide as its widest cell, two
/// spaces between columns, no trailing blanks.
fn print_table<const N: usize>(header: [&str; N], rows: &[[String; N]]) {
    let mut widths = header.map(|h| h.chars().count());
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}
