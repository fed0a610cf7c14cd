//! `backup` and `backup list`: on-demand AWS Backup jobs of the file system, consistent by
//! default (GitLab stopped, the copy taken, GitLab started again), resumable when interrupted.

use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

use crate::aws::Ctx;
use crate::cli::{BackupAction, BackupArgs, GlobalArgs};
use crate::engine::{Event, Observer, StepScope};
use crate::exit::{CliError, CliResult, Diagnostic, ExitStatus};
use crate::keys;
use crate::ops::confirm;
use crate::ops::stack::{connect, recorded_stack, refuse_other_operation, stack_name};
use crate::printer::{Printer, human_bytes, minute_utc};
use crate::printer::{short_id, table};
use crate::state::{self, LockedState, Operation, State, StateHandle};
use crate::steps::{backup, service};

/// What a backup needs from the state.
pub struct Targets {
    pub cluster: Option<String>,
    pub file_system_arn: String,
    pub vault: String,
    pub role_arn: String,
}

pub fn targets(state: &State) -> Result<Targets, CliError> {
    let get = |key: &str, attr: Option<&str>| {
        let record = state.resources.get(key)?;
        match attr {
            Some(name) => record.attr(name).map(str::to_string),
            None => record.id.clone(),
        }
    };
    let missing =
        |what: &str| {
            CliError::usage(Diagnostic::new(format!("stack {} has no {what} recorded", state.stack)).with_help(
                "run `gitlab-provision up` first: it creates the backup vault and role as part of the stack",
            ))
        };
    Ok(Targets {
        cluster: get(keys::SERVICE, Some("cluster")),
        file_system_arn: get(keys::FILE_SYSTEM, Some("arn")).ok_or_else(|| missing("file system"))?,
        vault: get(keys::BACKUP_VAULT, None).ok_or_else(|| missing("backup vault"))?,
        role_arn: get(keys::BACKUP_ROLE, None).ok_or_else(|| missing("backup role"))?,
    })
}

/// Runs one phase of a long operation as a visible step, recording the phase first so an
/// interrupted run resumes there.
pub async fn phase<T, F, Fut>(
    state: &StateHandle,
    printer: &Arc<Printer>,
    kind: &str,
    name: &str,
    description: &str,
    work: F,
) -> Result<T, CliError>
where
    F: FnOnce(StepScope) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    state.update(
        |s| {
            let started_at = s.operation.as_ref().map(|o| o.started_at.clone()).unwrap_or_else(state::now_rfc3339);
            let attrs = s.operation.as_ref().map(|o| o.attrs.clone()).unwrap_or_default();
            s.operation = Some(Operation { kind: kind.to_string(), phase: name.to_string(), started_at, attrs });
        },
        true,
    )?;
    let scope = StepScope::new(name, state.clone(), printer.clone());
    printer.event(Event::Started { step: name.to_string(), description: description.to_string() });
    match work(scope.clone()).await {
        Ok(value) => {
            printer.event(Event::Finished {
                step: name.to_string(),
                elapsed: scope.elapsed(),
                summary: description.to_string(),
                changed: true,
            });
            Ok(value)
        }
        Err(e) => {
            printer.event(Event::Failed { step: name.to_string(), elapsed: scope.elapsed(), error: format!("{e:#}") });
            Err(CliError::failure(e)
                .with_help(format!("run `gitlab-provision {kind}` again to resume from where it stopped")))
        }
    }
}

/// Remembers something about the operation in progress (a job id).
pub fn remember(state: &StateHandle, name: &str, value: &str) -> Result<(), CliError> {
    state.update(
        |s| {
            if let Some(op) = s.operation.as_mut() {
                op.attrs.insert(name.to_string(), value.to_string());
            }
        },
        true,
    )?;
    Ok(())
}

#[derive(Serialize)]
struct BackedUp {
    recovery_point: String,
    bytes: i64,
    consistent: bool,
    seconds: f64,
}

/// Takes a backup: stops GitLab (unless online), backs up, starts GitLab again. Shared with
/// `upgrade`, which deploys the next version instead of starting the old one (`restart`).
pub async fn take(
    ctx: &Arc<Ctx>,
    state: &StateHandle,
    printer: &Arc<Printer>,
    online: bool,
    restart: bool,
) -> Result<(String, i64), CliError> {
    let snapshot = state.snapshot();
    let targets = targets(&snapshot)?;
    let resumed = snapshot.operation.as_ref().filter(|o| o.kind == "backup");
    let mut job = resumed.and_then(|o| o.attrs.get("job").cloned());
    let consistent = !online && targets.cluster.is_some();
    if consistent && job.is_none() {
        let cluster = targets.cluster.clone().unwrap_or_default();
        phase(
            state,
            printer,
            "backup",
            "stop-gitlab",
            "stop GitLab so PostgreSQL's files are consistent",
            |scope| async move { service::scale(ctx, &scope, &cluster, 0).await },
        )
        .await?;
    }
    if job.is_none() {
        let token = format!("{}-{}", state.lineage(), state::now_rfc3339().replace(':', ""));
        let started = phase(state, printer, "backup", "start-backup", "start the AWS Backup job", |_| {
            let targets = &targets;
            async move {
                backup::start_backup(ctx, &targets.vault, &targets.file_system_arn, &targets.role_arn, &token).await
            }
        })
        .await?;
        remember(state, "job", &started)?;
        job = Some(started);
    }
    let job = job.unwrap_or_default();
    let made = phase(
        state,
        printer,
        "backup",
        "backup-job",
        &format!("back up {} into {}", short_id(&targets.file_system_arn), targets.vault),
        |scope| {
            let job = job.clone();
            async move { backup::wait_backup(ctx, &scope, &job).await }
        },
    )
    .await?;
    if consistent && restart {
        let cluster = targets.cluster.clone().unwrap_or_default();
        phase(state, printer, "backup", "start-gitlab", "start GitLab again", |scope| async move {
            service::scale(ctx, &scope, &cluster, 1).await
        })
        .await?;
        crate::ops::converge::wait_healthy(ctx, state, printer).await?;
    }
    state.update(|s| s.operation = None, true)?;
    Ok(made)
}

pub async fn run(global: &GlobalArgs, args: BackupArgs) -> CliResult {
    let (stack, _) = stack_name(global)?;
    let printer = Arc::new(Printer::new(global, false));
    let recorded = recorded_stack(global, &stack)?;
    let ctx = connect(global, &stack, Some(&recorded.region), Some(&recorded), &printer).await?;
    if let Some(BackupAction::List { json }) = args.action {
        return list(&ctx, &recorded, &printer, json).await;
    }
    refuse_other_operation(&recorded, "backup")?;
    let resuming = recorded.operation.is_some();
    if !args.online && !resuming {
        confirm_downtime(&printer, args.yes)?;
    }
    if args.online {
        printer.warn("an online backup copies PostgreSQL's files while it runs: the copy is only crash-consistent (PostgreSQL recovers it as after a power loss)");
    }
    let locked = LockedState::open(&global.state_dir, &stack, ctx.region(), "backup")?;
    let state = StateHandle::new(locked);
    let started = Instant::now();
    let (point, bytes) = take(&ctx, &state, &printer, args.online, true).await?;
    let result = BackedUp {
        recovery_point: point.clone(),
        bytes,
        consistent: !args.online,
        seconds: started.elapsed().as_secs_f64(),
    };
    printer.out(&format!(
        "backed up: {} ({}, {:.0}s{})",
        result.recovery_point,
        human_bytes(bytes),
        result.seconds,
        if result.consistent { ", GitLab stopped meanwhile" } else { ", online" }
    ));
    printer.note(&format!("restore it with `gitlab-provision restore {point}`"));
    Ok(ExitStatus::Success)
}

fn confirm_downtime(printer: &Printer, yes: bool) -> Result<(), CliError> {
    confirm(
        printer,
        "a consistent backup stops GitLab until the copy is made (minutes for a small team's data)",
        "Stop GitLab and back up?",
        yes,
        "pass --yes to stop GitLab for it, or --online to back up while it runs (crash-consistent)",
    )
}

#[derive(Serialize)]
struct Points<'a> {
    stack: &'a str,
    file_system: &'a str,
    recovery_points: &'a [backup::RecoveryPoint],
}

async fn list(ctx: &Ctx, recorded: &State, printer: &Printer, json: bool) -> CliResult {
    let Some(arn) = recorded.resources.get(keys::FILE_SYSTEM).and_then(|r| r.attr("arn")) else {
        return Err(Diagnostic::new(format!("stack {} has no file system recorded", recorded.stack)).into());
    };
    let points = backup::stack_recovery_points(ctx, &recorded.resources).await?;
    if json {
        printer.json("backups", &Points { stack: &recorded.stack, file_system: arn, recovery_points: &points })?;
        return Ok(ExitStatus::Success);
    }
    if points.is_empty() {
        printer.out(&format!("no backups of {} yet; `gitlab-provision backup` takes one", short_id(arn)));
        return Ok(ExitStatus::Success);
    }
    let rows: Vec<Vec<String>> = points
        .iter()
        .map(|p| {
            vec![
                minute_utc(&p.created),
                human_bytes(p.bytes),
                p.vault.clone(),
                if p.on_demand { "backup".into() } else { "daily".into() },
                p.status.to_lowercase(),
                short_id(&p.file_system),
                p.arn.clone(),
            ]
        })
        .collect();
    printer.out(&table(&["CREATED", "SIZE", "VAULT", "BY", "STATUS", "OF", "RECOVERY POINT"], &rows));
    Ok(ExitStatus::Success)
}
