use std::io::{BufRead, IsTerminal, Write};
use std::sync::Arc;

use super::{UserError, context, stack_name};
use crate::cli::{DownArgs, GlobalArgs};
use crate::engine::{self, Teardown};
use crate::printer::Printer;
use crate::state::{self, LockedState, StateHandle};
use crate::steps::Kinds;

pub async fn run(global: &GlobalArgs, args: DownArgs) -> anyhow::Result<()> {
    let (stack, region_flag) = stack_name(global)?;
    let recorded = state::read(&global.state_dir, &stack)?;
    if let (Some(recorded), Some(region)) = (&recorded, &region_flag)
        && !recorded.resources.is_empty()
        && recorded.region != *region
    {
        return Err(UserError(format!(
            "stack {stack} lives in {}, not {region}\n    help: drop --region (down uses the stack's own region)",
            recorded.region
        ))
        .into());
    }
    let has_records = recorded.as_ref().is_some_and(|s| !s.resources.is_empty());
    let region = recorded.map(|s| s.region).or(region_flag);
    let ctx = if has_records || args.discover {
        Some(context(&stack, region.as_deref(), global.profile.as_deref()).await?)
    } else {
        None
    };
    let region = ctx.as_ref().map(|c| c.aws.region.clone()).or(region).unwrap_or_default();
    // Locked before deciding anything: an `up` in progress may be about to record its first resource.
    let state = StateHandle::new(LockedState::open(&global.state_dir, &stack, &region, "down")?);
    let records = state.snapshot().resources;
    let ctx = match ctx {
        Some(ctx) => ctx,
        // Recorded between the first look and the lock: the stack's own region.
        None if !records.is_empty() => {
            context(&stack, Some(&state.snapshot().region), global.profile.as_deref()).await?
        }
        None => {
            println!("stack {stack}: nothing recorded in {}, nothing to delete", global.state_dir.display());
            return Ok(());
        }
    };
    let orphans =
        if args.discover { engine::discover_orphans(ctx.clone(), Arc::new(Kinds), &records).await? } else { vec![] };
    if records.is_empty() && orphans.is_empty() {
        println!("stack {stack}: nothing recorded and nothing found in {region}, nothing to delete");
        return Ok(());
    }
    for orphan in &orphans {
        eprintln!("found {} {} ({}), not in the state", orphan.kind, orphan.found.id, orphan.key);
    }
    let keep: std::collections::BTreeSet<String> = if args.keep_data {
        records.iter().filter(|(_, r)| crate::steps::is_data(&r.kind)).map(|(k, _)| k.clone()).collect()
    } else {
        Default::default()
    };
    if !args.yes {
        confirm(&stack, records.len() + orphans.len() - keep.len(), !keep.is_empty())?;
    }
    // Recorded first, so a crash from here on leaves them in the state for the next `down`.
    engine::adopt_orphans(&state, &Kinds, &orphans)?;
    let printer = Arc::new(Printer::new(global.verbose > 0));
    eprintln!("gitlab-provision down: stack {stack} in {region}, {} resources", records.len() + orphans.len());
    let plan = Teardown { only: None, keep: keep.clone(), max_parallel: usize::from(global.parallel) };
    let report = engine::teardown(ctx, state.clone(), Arc::new(Kinds), printer, plan).await.map_err(|e| {
        anyhow::Error::new(e).context("down did not finish; what is left is still recorded\n    help: fix the cause and run `gitlab-provision down` again")
    })?;
    if state.is_empty() {
        state.remove_file()?;
    }
    if let Some(path) = &args.timings {
        super::up::write_timings(path, &report)?;
    }
    println!("stack {stack} is down: {} resources removed", report.removed);
    if !keep.is_empty() {
        let kept = state.snapshot().resources;
        for (key, record) in kept.iter().filter(|(k, _)| keep.contains(*k)) {
            println!("kept {key}: {}", record.id.as_deref().unwrap_or("?"));
        }
        println!(
            "`gitlab-provision up` attaches them again (same repositories, same root password); `gitlab-provision down` deletes them"
        );
    }
    Ok(())
}

/// Deleting a stack deletes its data: ask for the stack name, and never assume a yes.
fn confirm(stack: &str, count: usize, keeping_data: bool) -> anyhow::Result<()> {
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        return Err(UserError(format!(
            "refusing to delete stack {stack} without confirmation: there is no terminal to ask on; nothing was deleted\n    help: pass --yes to confirm"
        ))
        .into());
    }
    let data = if keeping_data {
        "keeping the file system and the root secret"
    } else {
        "with the Git repositories and all other data"
    };
    eprint!("This deletes {count} resources of stack {stack}, {data}. Type the stack name to confirm: ");
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
