//! `list`: the stacks of a state directory or a shared bucket, with where they live, how much
//! they hold, and (in a bucket) who holds them now.

use std::sync::Arc;

use serde::Serialize;

use crate::cli::{GlobalArgs, ListArgs};
use crate::exit::{CliResult, ExitStatus};
use crate::printer::Printer;
use crate::state::{self, StateStore};

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
    /// Who holds the stack's lock now (a shared state's; a local lock dies with its process).
    locked_by: Option<crate::state_bucket::LockInfo>,
}

#[derive(Serialize, schemars::JsonSchema)]
pub struct Listing {
    /// The state directory, or the shared state's s3:// URL.
    state_dir: String,
    stacks: Vec<StackSummary>,
}

pub async fn run(global: &GlobalArgs, args: ListArgs) -> CliResult {
    let printer = Printer::new(global, false);
    let (store, shared, place) = match crate::ops::stack::state_url(global)? {
        Some(url) => {
            let shared = Arc::new(crate::ops::stack::shared_store(global, url.clone()).await?);
            (shared.clone() as Arc<dyn StateStore>, Some(shared), url.base())
        }
        None => (state::LocalStore::at(&global.state_dir), None, global.state_dir.display().to_string()),
    };
    let mut stacks = Vec::new();
    for name in store.stacks().await? {
        let locked_by = match &shared {
            Some(shared) => shared.0.read_lock(&name).await?,
            None => None,
        };
        stacks.push(match state::load(store.as_ref(), &name).await {
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
                locked_by,
            },
            Ok(None) if locked_by.is_none() => continue,
            Ok(None) => StackSummary {
                stack: name,
                region: String::new(),
                account: None,
                resources: 0,
                operation: None,
                error: None,
                locked_by,
            },
            Err(e) => StackSummary {
                stack: name,
                region: String::new(),
                account: None,
                resources: 0,
                operation: None,
                error: Some(e.to_string().lines().next().unwrap_or_default().to_string()),
                locked_by,
            },
        });
    }
    let listing = Listing { state_dir: place, stacks };
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
                s.error
                    .clone()
                    .or_else(|| s.locked_by.as_ref().map(|l| format!("locked by {} (lock {})", l.describe(), l.id)))
                    .or_else(|| s.operation.clone())
                    .unwrap_or_default(),
            ]
        })
        .collect();
    printer.out(&crate::printer::table(&["STACK", "REGION", "ACCOUNT", "RESOURCES", "NOTE"], &rows));
    Ok(ExitStatus::Success)
}
