//! The only place that talks to a human interactively.
//!
//! dialoguer opens `/dev/tty` whenever a terminal exists, even with stdin piped, and
//! would then wait forever. So we ask only when stdin itself is a terminal; otherwise
//! the caller must have given the flag equivalent (`--yes`, `--fingerprint`).

use std::io::IsTerminal;

use super::Failure;

/// Asks a yes/no question (default no). Without a terminal on stdin, fails with `hint`.
pub fn confirm(question: &str, hint: &str) -> Result<bool, Failure> {
    if !std::io::stdin().is_terminal() {
        return Err(Failure::new(
            "confirmation needed but stdin is not a terminal".into(),
            Some(hint.to_owned()),
        ));
    }
    dialoguer::Confirm::new()
        .with_prompt(question)
        .default(false)
        .interact()
        .map_err(|e| Failure::new(format!("prompt failed: {e}"), Some(hint.to_owned())))
}
