use std::io::{BufRead, IsTerminal, Write};
use std::sync::Arc;

use super::{UserError, context, stack_name, up::MAX_PARALLEL};
use crate::cli::{DownArgs, GlobalArgs};
use crate::engine;
use crate::printer::Printer;
use crate::state::{self, LockedState, StateHandle};
use crate::steps::Kinds;

pub async fn run(global: &GlobalArgs, args: DownArgs) -> anyhow::Result<()> {
    let (stack, region) = stack_name(global)?;
    let recorded = state::read(&global.state_dir, &stack)?;
    let Some(recorded) = recorded.filter(|s| !s.resources.is_empty()) else {
        println!("stack {stack}: nothing recorded in {}, nothing to delete", global.state_dir.display());
        return Ok(());
    };
    if let Some(region) = region.filter(|r| *r != recorded.region) {
        return Err(UserError(format!(
            "stack {stack} lives in {}, not {region}\n    help: drop --region (down uses the stack's own region)",
            recorded.region
        ))
        .into());
    }
    if !args.yes {
        confirm(&stack, recorded.resources.len())?;
    }
    let ctx = context(&stack, Some(&recorded.region), global.profile.as_deref()).await?;
    let state = StateHandle::new(LockedState::open(&global.state_dir, &stack, &recorded.region, "down")?);
    let printer = Arc::new(Printer::new(global.verbose > 0));
    eprintln!("gitlab-provision down: stack {stack} in {}, {} resources", recorded.region, recorded.resources.len());
    let removed = engine::teardown(ctx, state.clone(), Arc::new(Kinds), printer, None, MAX_PARALLEL).await.map_err(|e| {
        anyhow::Error::new(e).context("down did not finish; what is left is still recorded\n    help: fix the cause and run `gitlab-provision down` again")
    })?;
    if state.is_empty() {
        state.remove_file()?;
    }
    println!("stack {stack} is down: {removed} resources removed");
    Ok(())
}

/// Deleting a stack deletes its data: ask for the stack name, and never assume a yes.
fn confirm(stack: &str, count: usize) -> anyhow::Result<()> {
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        return Err(UserError(format!(
            "refusing to delete stack {stack} without confirmation: there is no terminal to ask on; nothing was deleted\n    help: pass --yes to confirm"
        ))
        .into());
    }
    eprint!(
        "This deletes the {count} resources of stack {stack}, with any data in them. Type the stack name to confirm: "
    );
    std::io::stderr().flush()?;
    let mut answer = String::new();
    stdin.lock().read_line(&mut answer)?;
    if answer.trim() != stack {
        return Err(UserError(format!(
            "confirmation {:?} does not match {stack:?}; nothing was deleted",
            answer.trim()
        ))
        .into());
    }
    Ok(())
}
