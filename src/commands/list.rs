//! `list`: the stacks of a state directory, with where they live and how much they hold.

use serde::Serialize;

use crate::cli::{GlobalArgs, ListArgs};
use crate::exit::{CliResult, ExitStatus};
use crate::printer::Printer;
use crate::state;

#[derive(Serialize, schemars::JsonSchema)]
pub struct StackSummary {
    stack: String,
    region: String,
    account: Option<String>,
    resources: usize,
    /// An unfinished backup or restore.
    operation: Option<String>,
    /// Why the file could not be read, when it could not.
    error: Option<String>,
}

#[derive(Serialize, schemars::JsonSchema)]
pub struct Listing {
    state_dir: String,
    stacks: Vec<StackSummary>,
}

pub fn run(global: &GlobalArgs, args: ListArgs) -> CliResult {
    let printer = Printer::new(global, false);
    let mut stacks = Vec::new();
    for name in state::stacks_in(&global.state_dir)? {
        stacks.push(match state::read(&global.state_dir, &name) {
            Ok(Some(s)) => StackSummary {
                operation: crate::ops::journal::Journal::read(&s)
                    .ok()
                    .flatten()
                    .map(|j| format!("{} in progress since {}", j.command(), j.started_at())),
                stack: name,
                region: s.region,
                account: s.account,
                resources: s.resources.len(),
                error: None,
            },
            Ok(None) => continue,
            Err(e) => StackSummary {
                stack: name,
                region: String::new(),
                account: None,
                resources: 0,
                operation: None,
                error: Some(e.to_string().lines().next().unwrap_or_default().to_string()),
            },
        });
    }
    let listing = Listing { state_dir: global.state_dir.display().to_string(), stacks };
    if args.json {
        printer.json("list", &listing)?;
        return Ok(ExitStatus::Success);
    }
    if listing.stacks.is_empty() {
        printer.out(&format!("no stacks in {}", listing.state_dir));
        return Ok(ExitStatus::Success);
    }
    let rows: Vec<Vec<String>> = listing
        .stacks
        .iter()
        .map(|s| {
            vec![
                s.stack.clone(),
                s.region.clone(),
                s.account.clone().unwrap_or_else(|| "-".into()),
                s.resources.to_string(),
                s.error.clone().or_else(|| s.operation.clone()).unwrap_or_default(),
            ]
        })
        .collect();
    printer.out(&crate::printer::table(&["STACK", "REGION", "ACCOUNT", "RESOURCES", "NOTE"], &rows));
    Ok(ExitStatus::Success)
}
