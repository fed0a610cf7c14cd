use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use anyhow::Context as _;

use super::{UserError, context, stack_config};
use crate::cli::{GlobalArgs, UpArgs};
use crate::engine::{self, Event, Observer, RunError, RunReport, StepScope, Teardown};
use crate::printer::Printer;
use crate::state::{self, LockedState, State, StateHandle};
use crate::steps::{self, Kinds};

pub async fn run(global: &GlobalArgs, args: UpArgs) -> anyhow::Result<()> {
    let cfg = stack_config(global, args.settings)?;
    // An existing stack stays in its region unless the user names one.
    let recorded = state::read(&global.state_dir, &cfg.stack)?;
    let region = cfg.region.clone().or_else(|| recorded.as_ref().map(|s| s.region.clone()));
    let ctx = context(&cfg.stack, region.as_deref(), global.profile.as_deref()).await?;
    let region = ctx.aws.region.clone();

    let locked = LockedState::open(&global.state_dir, &cfg.stack, &region, "up")?;
    // Checked under the lock: another run's resources are not mistaken for lost ones.
    if locked.state().resources.is_empty() {
        refuse_lost_state(&ctx, &cfg.stack, &region).await?;
    }
    let fixed = steps::fixed_settings(&cfg, &region);
    refuse_replacements(locked.state(), &fixed)?;
    let state = StateHandle::new(locked);
    state.set_fixed(fixed)?;

    let steps = steps::build(&cfg);
    let owned = steps::owned_keys(&steps);
    let printer = Arc::new(Printer::new(global.verbose > 0));
    eprintln!("gitlab-provision up: stack {} in {region}, {} steps", cfg.stack, steps.len());

    let result = engine::run(steps, ctx.clone(), state.clone(), printer.clone(), usize::from(global.parallel)).await;
    let report = match result {
        Ok(report) => report,
        Err(error) => {
            if let (Some(path), RunError::Failed { report, .. }) = (&args.timings, &error) {
                write_timings(path, report)?;
            }
            let state_file = state::state_path(&global.state_dir, &cfg.stack);
            return Err(anyhow::Error::new(error).context(format!(
                "up did not finish; everything it created is recorded in {}\n    help: fix the cause and run `gitlab-provision up` again to resume, or `gitlab-provision down` to remove what was created",
                state_file.display()
            )));
        }
    };

    // Resources from an earlier configuration (e.g. a NAT gateway replaced by a NAT instance)
    // go only now, after their replacements are in place.
    let stale: BTreeSet<String> = state.snapshot().resources.into_keys().filter(|k| !owned.contains(k)).collect();
    if !stale.is_empty() {
        eprintln!(
            "removing what the configuration no longer has: {}",
            stale.iter().cloned().collect::<Vec<_>>().join(", ")
        );
        engine::teardown(
            ctx.clone(),
            state.clone(),
            Arc::new(Kinds),
            printer.clone(),
            Teardown { only: Some(stale), keep: Default::default(), max_parallel: usize::from(global.parallel) },
        )
        .await?;
    }
    if let Some(path) = &args.timings {
        write_timings(path, &report)?;
    }
    if args.wait {
        let scope = StepScope::new("gitlab-healthy", state.clone(), printer.clone());
        printer.event(Event::Started { step: scope.step.clone(), description: "wait until GitLab has booted".into() });
        steps::service::wait_healthy(&ctx, &scope).await?;
        printer.event(Event::Finished {
            step: scope.step.clone(),
            elapsed: scope.elapsed(),
            summary: "the load balancer reports GitLab healthy".into(),
        });
    }
    let snapshot = state.snapshot();
    println!(
        "stack {} is up in {region}: {} resources recorded in {}",
        cfg.stack,
        snapshot.resources.len(),
        state::state_path(&global.state_dir, &cfg.stack).display()
    );
    if let Some(url) = super::gitlab_url(&snapshot.resources) {
        println!("GitLab:   {url}");
        println!("user:     root ({})", cfg.gitlab_root_email);
        println!("password: gitlab-provision password --stack {}", cfg.stack);
        if !args.wait {
            println!(
                "GitLab's first boot takes 5-6 minutes; `gitlab-provision status` shows its progress (or use up --wait)"
            );
        }
    }
    Ok(())
}

/// A new stack whose resources already exist means a lost state file: creating them again
/// would make twins (two NAT gateways billing, two file systems, one of them with the data).
async fn refuse_lost_state(ctx: &Arc<crate::steps::Ctx>, stack: &str, region: &str) -> anyhow::Result<()> {
    let orphans = engine::discover_orphans(ctx.clone(), Arc::new(Kinds), &BTreeMap::new()).await?;
    if orphans.is_empty() {
        return Ok(());
    }
    let listed: Vec<String> =
        orphans.iter().take(8).map(|o| format!("  - {} {} ({})", o.kind, o.found.id, o.key)).collect();
    Err(UserError(format!(
        "stack {stack} has no state file, but {} of its resources exist in {region}:\n{}{}\n    help: restore state/{stack}.json (or its .backup) to continue with them, or remove them with `gitlab-provision down --discover --stack {stack}`",
        orphans.len(),
        listed.join("\n"),
        if orphans.len() > 8 { "\n  ..." } else { "" }
    ))
    .into())
}

/// Changing these on an existing stack would mean replacing the network and everything in it.
fn refuse_replacements(state: &State, wanted: &BTreeMap<String, String>) -> anyhow::Result<()> {
    let problems = steps::replacements(state, wanted);
    if problems.is_empty() {
        return Ok(());
    }
    Err(UserError(format!(
        "stack {} cannot take this change in place:\n  - {}\n    help: these can only change by replacing the whole stack; keep the old value, or use another --stack name (or `gitlab-provision down` first, which deletes it)",
        state.stack,
        problems.join("\n  - ")
    ))
    .into())
}

pub fn write_timings(path: &std::path::Path, report: &RunReport) -> anyhow::Result<()> {
    let json = serde_json::to_vec_pretty(report)?;
    std::fs::write(path, json).with_context(|| format!("writing timings to {}", path.display()))
}
