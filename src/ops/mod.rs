//! The operations commands share: opening a stack, converging it, a plan, a status, taking a
//! backup, a restore, an upgrade's hop. Handlers in `commands/` parse, call one of these and
//! print; no handler calls another.

pub mod backup;
pub mod converge;
pub mod journal;
pub mod phase;
pub mod plan;
pub mod restore;
pub mod settle;
pub mod sleep;
pub mod stack;
pub mod status;
pub mod upgrade;
pub mod versions;

use anyhow::Context as _;

use crate::engine::RunReport;
use crate::exit::{CliError, Diagnostic};
use crate::printer::Printer;

/// Asks before something that interrupts GitLab or cannot be undone. `--yes` skips the
/// question; without a terminal there is no one to ask, so the run stops and says how to
/// proceed (`help`) before anything was done.
pub fn confirm(printer: &Printer, what: &str, question: &str, yes: bool, help: &str) -> Result<(), CliError> {
    if yes {
        return Ok(());
    }
    if !printer.can_ask() {
        return Err(Diagnostic::new(format!("{what}\nnothing was done")).with_help(help).into());
    }
    printer.warn(what);
    let answer = printer.ask(&format!("{} [y/N]", printer.paint(question, crate::printer::Tone::Bold)))?;
    if matches!(answer.to_ascii_lowercase().as_str(), "y" | "yes") {
        Ok(())
    } else {
        Err(Diagnostic::new("nothing was done").into())
    }
}

/// Checks before any work that a file can be written there (`--timings`), by writing what a
/// run that takes no step reports: the file is valid JSON whichever way the run ends.
pub fn check_writable(path: Option<&std::path::Path>) -> Result<(), CliError> {
    let Some(path) = path else { return Ok(()) };
    write_timings(path, &RunReport::default()).map_err(|e| {
        CliError::usage(
            Diagnostic::new(format!(
                "--timings {}: cannot write there ({}); nothing was done",
                path.display(),
                e.root_cause()
            ))
            .with_help("name a file in a directory that exists and is writable"),
        )
    })
}

/// Each step's start, finish and what it waited for, as JSON (`--timings`).
pub fn write_timings(path: &std::path::Path, report: &RunReport) -> anyhow::Result<()> {
    let json = serde_json::to_vec_pretty(report)?;
    std::fs::write(path, json).with_context(|| format!("writing timings to {}", path.display()))
}
