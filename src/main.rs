//! The `secagg` binary: parse, resolve the home, run, print. Everything else lives in the
//! library; this binary is its only front end that prints or prompts.

mod cli;

fn main() -> std::process::ExitCode {
    cli::run()
}
