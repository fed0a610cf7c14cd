//! Converging a stack onto a configuration: plan, ask before what disrupts, run the steps,
//! remove what the configuration no longer has; and waiting until GitLab is healthy. `up` is
//! this; `upgrade` and `restore` apply their configurations through it too.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;

use crate::aws::Ctx;
use crate::catalog::{self, Kinds};
use crate::cli::GlobalArgs;
use crate::config::StackConfig;
use crate::engine::{self, Event, Interrupt, Lives, Observer, RunError, RunOptions, StepScope, Teardown};
use crate::exit::{CliError, Diagnostic, ExitStatus};
use crate::printer::Printer;
use crate::state::{self, StateHandle};

/// How `converge` may proceed.
pub struct Converge<'a> {
    pub global: &'a GlobalArgs,
    /// Apply disruptive changes without asking.
    pub yes: bool,
    pub force_version: bool,
    pub timings: Option<PathBuf>,
    pub interrupt: Interrupt,
    /// A plan saved by `plan --out`: applied only if it still holds, exactly as decided.
    pub expected: Option<super::plan::SavedPlan>,
}

impl<'a> Converge<'a> {
    /// A converge a day-two command runs after it has asked (or been told `--yes`) itself.
    pub fn confirmed(global: &'a GlobalArgs, interrupt: Interrupt) -> Self {
        Converge { global, yes: true, force_version: false, timings: None, interrupt, expected: None }
    }
}

/// What a converge did.
pub struct Converged {
    pub changed: bool,
}

/// Plans, asks before what disrupts, runs the steps, then removes what the configuration no
/// longer has (after its replacements are in place).
pub async fn converge(
    ctx: &Arc<Ctx>,
    state: &StateHandle,
    mut cfg: StackConfig,
    printer: &Arc<Printer>,
    options: &Converge<'_>,
) -> Result<Converged, CliError> {
    let global = options.global;
    cfg.operator = super::stack::operator(ctx, state, &cfg.admin_principals).await?;
    // A GitLab put to sleep stays asleep through `up`.
    cfg.asleep = super::sleep::recorded_sleep(&state.snapshot()).is_some();
    let snapshot = state.snapshot();
    super::plan::keep_what_runs(&mut cfg, &snapshot.resources);
    if snapshot.resources.is_empty() {
        refuse_lost_state(ctx, &cfg.stack, global).await?;
    }
    let lives =
        engine::observe(ctx.clone(), Arc::new(Kinds), snapshot.resources.clone(), usize::from(global.parallel), true)
            .await;
    let lives: std::collections::BTreeMap<_, _> =
        lives.into_iter().filter_map(|(k, l)| l.ok().map(|l| (k, l))).collect();
    let region = ctx.region().to_string();
    let has_records = !snapshot.resources.is_empty();
    let plan = super::plan::report(
        ctx,
        &cfg,
        has_records.then_some(&snapshot),
        region.clone(),
        &lives,
        options.force_version,
    )?;
    if !plan.refused.is_empty() {
        return Err(refused(&cfg.stack, &plan.refused).into());
    }
    if let Some(saved) = &options.expected {
        let differences = saved.differences(&snapshot, &plan);
        if !differences.is_empty() {
            return Err(Diagnostic::new(format!(
                "the saved plan no longer holds; nothing was changed:\n  - {}",
                differences.join("\n  - ")
            ))
            .with_help("make a new plan (`gitlab-provision plan --out FILE`), review it, and apply that one")
            .into());
        }
    }
    if has_records && !plan.changes_anything() {
        note_running_version(state).await?;
        printer.note(&format!("no changes: {} as configured", crate::engine::counted(plan.summary.keep, "resource")));
        return Ok(Converged { changed: false });
    }
    confirm_disruptions(&plan, printer, options.yes)?;
    state.set_fixed(catalog::fixed_settings(&cfg, &region)).await?;

    let steps = catalog::build(&cfg);
    let owned = catalog::owned_keys(&steps);
    let run_options = RunOptions {
        max_parallel: usize::from(global.parallel),
        interrupt: options.interrupt.clone(),
        lives: Lives::new(lives),
    };
    let observer: Arc<dyn Observer> = printer.clone();
    let result = engine::run(steps, ctx.clone(), state.clone(), observer, run_options).await;
    printer.tally();
    let report = match result {
        Ok(report) => report,
        Err(error) => {
            return Err(run_failed(global, &cfg.stack, state, error, options.timings.as_deref(), !has_records));
        }
    };
    // What a retained record holds (a file system a restore replaced) is kept until `down`.
    let stale: BTreeSet<String> = state
        .snapshot()
        .resources
        .into_iter()
        .filter(|(k, r)| !owned.contains(k) && r.status != state::RecordStatus::Retained)
        .map(|(k, _)| k)
        .collect();
    if !stale.is_empty() {
        printer.note(&format!(
            "removing what the configuration no longer has: {}",
            stale.iter().cloned().collect::<Vec<_>>().join(", ")
        ));
        let plan = Teardown {
            only: Some(stale),
            keep: Default::default(),
            delete_contents: false,
            max_parallel: usize::from(global.parallel),
            interrupt: options.interrupt.clone(),
        };
        engine::teardown(ctx.clone(), state.clone(), Arc::new(Kinds), printer.clone(), plan)
            .await
            .map_err(|e| CliError::failure(e).with_help("run `gitlab-provision up` again to finish removing them"))?;
    }
    if let Some(path) = &options.timings {
        super::write_timings(path, &report)?;
    }
    note_running_version(state).await?;
    Ok(Converged { changed: true })
}

/// Notes the GitLab version the stack runs (from now on), so a restore knows which version wrote
/// the data of a backup that does not say.
async fn note_running_version(state: &StateHandle) -> Result<(), CliError> {
    match super::versions::running_version(&state.snapshot().resources) {
        Some(version) => super::journal::note_version(state, &version.to_string()).await,
        None => Ok(()),
    }
}

/// What `up` says when it refuses: every problem, and one help. A refusal may carry its own help
/// (a version's path); the others share one.
fn refused(stack: &str, refusals: &[super::plan::Refusal]) -> Diagnostic {
    use super::plan::RefusalReason;
    let problems: Vec<&str> = refusals.iter().map(|r| r.problem.as_str()).collect();
    let own_help: Vec<&str> = refusals.iter().filter_map(|r| r.help.as_deref()).collect();
    let help = if refusals.iter().any(|r| r.reason == RefusalReason::NotOurs) {
        "the state names resources that belong to something else: check that this state file is this stack's own (a copied or edited file?); nothing was changed".to_string()
    } else if own_help.len() == problems.len() {
        own_help.join("; ")
    } else {
        "keep the recorded value, or use another --stack name (or `gitlab-provision down` first, which deletes the stack)".to_string()
    };
    Diagnostic::new(format!("stack {stack} cannot take this change:\n  - {}", problems.join("\n  - "))).with_help(help)
}

/// Changes that replace or interrupt something are shown, with what they cost, and need a yes.
fn confirm_disruptions(plan: &super::plan::PlanReport, printer: &Printer, yes: bool) -> Result<(), CliError> {
    let disruptions = plan.disruptions();
    if disruptions.is_empty() || yes {
        return Ok(());
    }
    let cost = plan
        .monthly_cost_change
        .filter(|c| c.abs() >= 0.01)
        .map(|c| format!("\n  cost: {}${:.2}/month", if c > 0.0 { "+" } else { "-" }, c.abs()))
        .unwrap_or_default();
    let list = disruptions.iter().map(|d| format!("\n  - {d}")).collect::<String>();
    super::confirm(
        printer,
        &format!("this change interrupts GitLab:{list}{cost}"),
        "Apply it now?",
        false,
        "run `gitlab-provision plan` to see everything it does, then `gitlab-provision up --yes` to apply it",
    )
}

/// A run that failed or was interrupted: cause first, then where things stand and the next command.
fn run_failed(
    global: &GlobalArgs,
    stack: &str,
    state: &StateHandle,
    error: RunError,
    timings: Option<&std::path::Path>,
    was_new: bool,
) -> CliError {
    let state_file = super::stack::state_location(global, stack);
    let recorded = state.snapshot().resources;
    let pending: Vec<&String> =
        recorded.iter().filter(|(_, r)| r.status == state::RecordStatus::Pending).map(|(k, _)| k).collect();
    let report = match &error {
        RunError::Failed { report, .. } | RunError::Interrupted { report, .. } => Some(report),
        RunError::Graph(_) => None,
    };
    if let (Some(path), Some(report)) = (timings, report) {
        let _ = super::write_timings(path, report);
    }
    match error {
        RunError::Failed { failures, not_started, preflight, .. } => {
            let failure = failures.into_iter().next().map(|(step, e)| e.context(format!("step {step} failed")));
            let failure = failure.unwrap_or_else(|| anyhow::anyhow!("up failed"));
            // The failure's own help (which key to change, and to what) comes first.
            let own = crate::exit::help_in(&failure);
            let then = |next: &str| match &own {
                Some(own) => format!("{own}; then {next}"),
                None => format!("fix the cause, then {next}"),
            };
            // A check of the configuration failed before anything else ran: the user's to fix.
            if preflight {
                return CliError::usage(failure)
                    .with_context(if was_new { "nothing was created" } else { "nothing was changed" })
                    .with_help(then("run `gitlab-provision up` again"));
            }
            // The state itself could not be saved (changed by someone else, or the store out of
            // reach): nothing is "recorded" to point at, and what the run made is found again.
            let unsaved = failure.chain().any(|e| {
                matches!(
                    e.downcast_ref::<state::StateError>(),
                    Some(state::StateError::Conflict { .. } | state::StateError::Store { .. })
                )
            });
            if unsaved {
                return CliError::failure(failure).with_help(format!(
                    "settle who changes stack {stack} (`gitlab-provision state pull` shows the stored state), then run `gitlab-provision up` again: it finds what this run created by its tags and records it"
                ));
            }
            let mut cli = CliError::failure(failure);
            if !not_started.is_empty() {
                cli = cli.with_context(format!("{} did not run", crate::engine::counted(not_started.len(), "step")));
            }
            let cli = cli.with_context(format!(
                "everything created so far is recorded in {} ({})",
                state_file,
                crate::engine::counted(recorded.len(), "resource")
            ));
            // A running stack is never pointed at `down` after a failure: its data is there.
            if was_new {
                cli.with_help(then(
                    "run `gitlab-provision up` again to resume, or `gitlab-provision down` to remove what was created",
                ))
            } else {
                cli.with_help(then("run `gitlab-provision up` again to finish converging"))
            }
        }
        RunError::Interrupted { stopped, not_started, .. } => {
            let mut parts = vec!["the steps in flight finished and were recorded".to_string()];
            if !stopped.is_empty() {
                parts.push(format!(
                    "{} stopped waiting (what {} made is recorded and is found again)",
                    crate::engine::counted(stopped.len(), "step"),
                    if stopped.len() == 1 { "it" } else { "they" }
                ));
            }
            if !not_started.is_empty() {
                parts.push(format!("{} did not start", crate::engine::counted(not_started.len(), "step")));
            }
            let mut cli = CliError::new(ExitStatus::Interrupted, anyhow::anyhow!("interrupted: {}", parts.join("; ")))
                .with_context(format!(
                    "recorded: {} in {}",
                    crate::engine::counted(recorded.len(), "resource"),
                    state_file
                ));
            let (not_ready, unanswered): (Vec<&String>, Vec<&String>) =
                pending.iter().partition(|k| recorded.get(k.as_str()).is_some_and(|r| r.id.is_some()));
            let list = |keys: &[&String]| keys.iter().map(|k| k.as_str()).collect::<Vec<_>>().join(", ");
            if !not_ready.is_empty() {
                cli = cli.with_context(format!(
                    "created, not ready yet (recorded with their ids; the next run waits for them): {}",
                    list(&not_ready)
                ));
            }
            if !unanswered.is_empty() {
                cli = cli.with_context(format!(
                    "create sent, answer not recorded (the next run finds and adopts them): {}",
                    list(&unanswered)
                ));
            }
            if was_new {
                cli.with_help(
                    "run `gitlab-provision up` to resume, or `gitlab-provision down` to remove what was created",
                )
            } else {
                cli.with_help("run `gitlab-provision up` to finish converging")
            }
        }
        RunError::Graph(e) => CliError::failure(e),
    }
}

/// A new stack whose resources already exist means a lost state file: creating them again
/// would make twins. Something with the stack's names that is not its own is a conflict.
pub async fn refuse_lost_state(ctx: &Arc<Ctx>, stack: &str, global: &GlobalArgs) -> Result<(), CliError> {
    let (orphans, conflicts) = engine::discover(ctx.clone(), Arc::new(Kinds), &Default::default()).await?;
    if !conflicts.is_empty() {
        let listed: Vec<String> = conflicts.iter().map(|c| format!("  - {} {}: {}", c.kind, c.id, c.why)).collect();
        return Err(Diagnostic::new(format!(
            "stack {stack} would collide with resources that are not this stack's in {}:\n{}",
            ctx.region(),
            listed.join("\n")
        ))
        .with_help("choose another stack name (--stack); nothing was created")
        .into());
    }
    if orphans.is_empty() {
        return Ok(());
    }
    let listed: Vec<String> =
        orphans.iter().take(8).map(|o| format!("  - {} {} ({})", o.kind, o.found.id, o.key)).collect();
    Err(Diagnostic::new(format!(
        "stack {stack} has no state file, but {} of its resources (tagged gitlab-provision:stack={stack}) exist in {}:\n{}{}",
        orphans.len(),
        ctx.region(),
        listed.join("\n"),
        if orphans.len() > 8 { "\n  ..." } else { "" }
    ))
    .with_help(lost_state_help(global, stack))
    .into())
}

/// Where the state of a stack whose resources exist may be. A state `state push` moved to a
/// bucket is never to be brought back locally: two states of one stack would drift apart.
fn lost_state_help(global: &GlobalArgs, stack: &str) -> String {
    let pushed = crate::state::state_path(&global.state_dir, stack).with_extension("json.pushed");
    if pushed.exists() && global.state_url.is_none() {
        return format!(
            "{} says this stack's state was pushed to a shared bucket: name it (`state = \"s3://BUCKET/PREFIX\"` in the config, or --state-url); do not restore the pushed file",
            pushed.display()
        );
    }
    let location = super::stack::state_location(global, stack);
    let backup = if global.state_url.is_some() {
        "an earlier version (`gitlab-provision state history`)"
    } else {
        "its .backup"
    };
    format!(
        "restore {location} (or {backup}) to continue with them, or remove them with `gitlab-provision down --discover --stack {stack}`"
    )
}

/// `up --wait` and the upgrade's hops: until GitLab is healthy, or why it will not be.
pub async fn wait_healthy(ctx: &Ctx, state: &StateHandle, printer: &Arc<Printer>) -> Result<(), CliError> {
    let scope = StepScope::new("gitlab-healthy", state.clone(), printer.clone());
    printer.event(Event::Started { step: scope.step.clone(), description: "wait until GitLab has booted".into() });
    match crate::steps::service::wait_healthy(ctx, &scope).await {
        Ok(()) => {
            printer.event(Event::Finished {
                step: scope.step.clone(),
                elapsed: scope.elapsed(),
                summary: "the load balancer reports GitLab healthy".into(),
                changed: true,
            });
            Ok(())
        }
        Err(e) => {
            printer.event(Event::Failed {
                step: scope.step.clone(),
                elapsed: scope.elapsed(),
                error: format!("{e:#}"),
            });
            Err(CliError::failure(e))
        }
    }
}
