//! Taking a backup that never strands GitLab: GitLab stopped (for a consistent copy), an AWS
//! Backup job, GitLab started again, each phase in the journal first. A job that AWS refuses,
//! that fails, expires or is aborted, that does not start running within a bound, or a Ctrl-C,
//! ends the same way: the job stopped, GitLab started again on the data it had, the journal
//! closed, and what AWS said. A run that died is resumed by `backup` or rolled back by `up`.
//!
//! With the database on RDS the backup is an RDS snapshot of the database and the file system's
//! job, recorded as one backup (the point is tagged with the snapshot's name); `backup` takes it
//! while GitLab runs unless told to stop it.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::journal::{self, BackupJournal, BackupPhase, BackupTaken, Journal};
use super::phase::{phase, phase_with};
use super::stack::Opened;
use crate::aws::Ctx;
use crate::engine::{Interrupt, Poll, StepScope, WaitError, WaitPolicy, wait_until};
use crate::exit::{CliError, Diagnostic, ExitStatus};
use crate::keys;
use crate::printer::Printer;
use crate::state::{State, StateHandle, now_rfc3339};
use crate::steps::{backup, service};

/// A copy of a small team's file system takes minutes; a first (full) copy of a large one, hours.
const COPY_WAIT: WaitPolicy = WaitPolicy::up_to(Duration::from_secs(6 * 3600));

/// How a backup is taken.
#[derive(Clone)]
pub struct BackupOptions {
    /// Stop GitLab for the copy (PostgreSQL's files consistent), else copy it while it runs.
    pub consistent: bool,
    /// A job not running after this long is stopped and GitLab started again.
    pub start_within: Duration,
    /// For an upgrade: GitLab stays stopped after the copy; the next version starts it.
    pub for_upgrade: bool,
    pub interrupt: Interrupt,
}

/// A backup made.
#[derive(Debug, Clone, serde::Serialize, schemars::JsonSchema)]
pub struct Taken {
    pub recovery_point: String,
    pub bytes: i64,
    /// The GitLab version of the data (tagged on the recovery point).
    pub version: Option<String>,
    pub consistent: bool,
    /// How long GitLab was stopped for it (seconds), when it was.
    pub downtime_seconds: Option<f64>,
    /// With the database on RDS: the snapshot of the database taken with the file system's copy
    /// (GitLab kept running).
    pub database_snapshot: Option<String>,
}

/// What a backup needs from the state.
pub struct Targets {
    pub cluster: Option<String>,
    pub file_system_arn: String,
    pub vault: String,
    pub role_arn: String,
    /// The RDS instance, with the database on RDS.
    pub database: Option<String>,
}

pub fn targets(state: &State) -> Result<Targets, CliError> {
    let record = |key: &str| state.resources.get(key);
    let missing =
        |what: &str| {
            CliError::usage(Diagnostic::new(format!("stack {} has no {what} recorded", state.stack)).with_help(
                "run `gitlab-provision up` first: it creates the backup vault and role as part of the stack",
            ))
        };
    Ok(Targets {
        cluster: record(keys::SERVICE).and_then(|r| r.attr("cluster")).map(str::to_string),
        file_system_arn: record(keys::FILE_SYSTEM)
            .and_then(|r| r.attr("arn"))
            .map(str::to_string)
            .ok_or_else(|| missing("file system"))?,
        vault: record(keys::BACKUP_VAULT).and_then(|r| r.id.clone()).ok_or_else(|| missing("backup vault"))?,
        role_arn: record(keys::BACKUP_ROLE).and_then(|r| r.id.clone()).ok_or_else(|| missing("backup role"))?,
        database: record(keys::DB_INSTANCE).and_then(|r| r.id.clone()),
    })
}

/// The tasks the service asks for now (0 when GitLab sleeps or is stopped).
async fn desired_tasks(ctx: &Ctx, cluster: Option<&str>) -> anyhow::Result<i32> {
    let Some(cluster) = cluster else { return Ok(0) };
    Ok(service::describe_service(ctx, cluster).await?.map_or(0, |s| s.desired_count()))
}

/// Takes a backup, or resumes the one the journal records.
pub async fn take(opened: &Opened, printer: &Arc<Printer>, options: &BackupOptions) -> Result<Taken, CliError> {
    let (ctx, state) = (&opened.ctx, &opened.state);
    let snapshot = state.snapshot();
    let targets = targets(&snapshot)?;
    let mut journal = match Journal::read(&snapshot)? {
        Some(Journal::Backup(journal)) => {
            printer.note(&format!("resuming the backup started {}", journal.started_at));
            journal
        }
        Some(other) => return Err(other_operation(&other)),
        None => {
            let desired_before = desired_tasks(ctx, targets.cluster.as_deref()).await?;
            let started_at = now_rfc3339();
            BackupJournal {
                database_snapshot: targets
                    .database
                    .as_deref()
                    .map(|id| crate::steps::database::backup_snapshot_name(id, &started_at)),
                started_at,
                phase: BackupPhase::StoppingGitLab,
                consistent: options.consistent,
                desired_before,
                stopped_gitlab: false,
                token: journal::attempt_token(&snapshot.lineage, "backup"),
                job: None,
                version: super::versions::running_version(&snapshot.resources).map(|v| v.to_string()),
                for_upgrade: options.for_upgrade,
            }
        }
    };
    let outcome = run(ctx, state, printer, &targets, &mut journal, options).await;
    match outcome {
        Ok(taken) => Ok(taken),
        Err(Stop::Failed(why)) => Err(roll_back(ctx, state, printer, &targets, &journal, why, false).await),
        Err(Stop::Interrupted) => Err(roll_back(
            ctx,
            state,
            printer,
            &targets,
            &journal,
            anyhow::anyhow!("interrupted: the backup was cancelled"),
            true,
        )
        .await),
    }
}

/// Why a backup stopped short.
enum Stop {
    Failed(anyhow::Error),
    Interrupted,
}

impl From<anyhow::Error> for Stop {
    fn from(error: anyhow::Error) -> Self {
        if WaitError::is_interrupted(&error) { Stop::Interrupted } else { Stop::Failed(error) }
    }
}

impl From<CliError> for Stop {
    fn from(error: CliError) -> Self {
        Stop::Failed(error.error)
    }
}

async fn save(state: &StateHandle, journal: &BackupJournal) -> Result<(), Stop> {
    Journal::write(state, Some(&Journal::Backup(journal.clone()))).await?;
    Ok(())
}

async fn run(
    ctx: &Arc<Ctx>,
    state: &StateHandle,
    printer: &Arc<Printer>,
    targets: &Targets,
    journal: &mut BackupJournal,
    options: &BackupOptions,
) -> Result<Taken, Stop> {
    let interrupt = Some(&options.interrupt);
    let mut stopped_at = None;
    if journal.phase == BackupPhase::StoppingGitLab {
        save(state, journal).await?;
        // A sleeping GitLab (no task) is consistent as it is: nothing to stop, nothing to start.
        if journal.consistent
            && journal.desired_before > 0
            && let Some(cluster) = targets.cluster.clone()
        {
            // Recorded before the call: from here on GitLab must be started again whatever happens.
            journal.stopped_gitlab = true;
            save(state, journal).await?;
            phase_with(
                printer,
                state,
                "stop-gitlab",
                "stop GitLab so PostgreSQL's files are consistent",
                interrupt,
                |scope| {
                    let ctx = ctx.clone();
                    async move { service::scale(&ctx, &scope, &cluster, 0).await }
                },
            )
            .await?;
            stopped_at = Some(SystemTime::now());
        }
        journal.phase = BackupPhase::StartingJob;
        save(state, journal).await?;
    }
    if journal.phase == BackupPhase::StartingJob {
        let (vault, fs, role, token, version) =
            (&targets.vault, &targets.file_system_arn, &targets.role_arn, &journal.token, journal.version.as_deref());
        let snapshot = journal.database_snapshot.as_deref();
        if let (Some(name), Some(database)) = (snapshot, targets.database.as_deref()) {
            phase(printer, state, "snapshot-database", &format!("ask RDS for snapshot {name} of the database"), |_| {
                crate::steps::database::take_snapshot(ctx, database, name, version)
            })
            .await?;
        }
        let job = phase(printer, state, "start-backup", "ask AWS Backup for an on-demand job", |_| async move {
            backup::start_backup(ctx, vault, fs, role, token, version, snapshot).await
        })
        .await?;
        journal.job = Some(job);
        journal.phase = BackupPhase::Copying;
        save(state, journal).await?;
    }
    let job = journal.job.clone().unwrap_or_default();
    let mut made = None;
    if journal.phase == BackupPhase::Copying {
        let what = format!("back up {} into {}", crate::printer::short_id(&targets.file_system_arn), targets.vault);
        let end = phase_with(printer, state, "backup-job", &what, interrupt, |scope| {
            let (ctx, job) = (ctx.clone(), job.clone());
            let bound = options.start_within;
            async move { wait_for_job(&ctx, &scope, &job, bound).await }
        })
        .await?;
        match end {
            JobEnd::Completed { point, bytes } => made = Some((point, bytes)),
            JobEnd::Ended(job_state) => {
                return Err(Stop::Failed(anyhow::anyhow!("AWS Backup's job {job} ended {}", job_state.outcome())));
            }
            JobEnd::NotStarted { waited, state: job_state } => {
                return Err(Stop::Failed(
                    Diagnostic::new(format!(
                        "AWS Backup had not started the job {job} after {} (it stays {}; AWS allows an on-demand job up to an hour to start)",
                        humantime::format_duration(Duration::from_secs(waited.as_secs() / 60 * 60)),
                        job_state.to_lowercase()
                    ))
                    .with_help(format!(
                        "try again later, or allow it longer with `gitlab-provision backup --start-within {}`",
                        humantime::format_duration(Duration::from_secs(3600))
                    ))
                    .into(),
                ));
            }
        }
        if let Some(name) = journal.database_snapshot.clone() {
            phase_with(
                printer,
                state,
                "database-snapshot",
                &format!("snapshot {name} of the database"),
                interrupt,
                |scope| {
                    let ctx = ctx.clone();
                    async move { crate::steps::database::wait_snapshot(&ctx, &scope, &name).await.map(|_| ()) }
                },
            )
            .await?;
        }
        journal.phase = BackupPhase::StartingGitLab;
        save(state, journal).await?;
    }
    // Resumed at the last phase: the job completed before the run died.
    let (point, bytes) = match made {
        Some(made) => made,
        None => {
            let done = backup::backup_job(ctx, &job).await.map_err(Stop::Failed)?;
            (done.made.unwrap_or_default(), done.bytes)
        }
    };
    journal::note_backup(
        state,
        BackupTaken {
            recovery_point: point.clone(),
            version: journal.version.clone(),
            taken_at: journal.started_at.clone(),
            consistent: journal.consistent,
            database_snapshot: journal.database_snapshot.clone(),
        },
    )
    .await?;
    let downtime = stopped_at.map(|at| at.elapsed().unwrap_or_default());
    if journal.stopped_gitlab && !journal.for_upgrade {
        start_gitlab(ctx, state, printer, targets, journal.desired_before).await.map_err(Stop::Failed)?;
    }
    Journal::write(state, None).await?;
    Ok(Taken {
        recovery_point: point,
        bytes,
        version: journal.version.clone(),
        consistent: journal.consistent,
        downtime_seconds: downtime.map(|d| d.as_secs_f64()),
        database_snapshot: journal.database_snapshot.clone(),
    })
}

/// How a job's wait ended.
enum JobEnd {
    Completed {
        point: String,
        bytes: i64,
    },
    /// FAILED, EXPIRED, ABORTED or PARTIAL, with AWS's message.
    Ended(backup::JobState),
    /// Still CREATED (or PENDING) past the bound.
    NotStarted {
        waited: Duration,
        state: String,
    },
}

/// Waits for the job, showing its state and how long it has been in it; gives up on one that
/// has not started running within `start_within` of its creation.
async fn wait_for_job(ctx: &Ctx, scope: &StepScope, job: &str, start_within: Duration) -> anyhow::Result<JobEnd> {
    let short = job.get(..8).unwrap_or(job);
    let end = wait_until(scope, &format!("backup job {short}"), COPY_WAIT, || async {
        let now = backup::backup_job(ctx, job).await?;
        let age = now.created.and_then(|c| c.elapsed().ok()).unwrap_or_default();
        let minutes = age.as_secs() / 60;
        Ok(if now.completed() {
            Poll::Ready(JobEnd::Completed { point: now.made.unwrap_or_default(), bytes: now.bytes })
        } else if now.ended_without_result() {
            Poll::Ready(JobEnd::Ended(now))
        } else if now.waiting_to_start() && age >= start_within {
            Poll::Ready(JobEnd::NotStarted { waited: age, state: now.state })
        } else if now.waiting_to_start() {
            Poll::Pending(format!(
                "{} for {minutes} min (AWS starts it within the hour; given up after {} min)",
                now.state.to_lowercase(),
                start_within.as_secs() / 60
            ))
        } else {
            Poll::Pending(format!("{} for {minutes} min", now.state.to_lowercase()))
        })
    })
    .await?;
    Ok(end)
}

async fn start_gitlab(
    ctx: &Arc<Ctx>,
    state: &StateHandle,
    printer: &Arc<Printer>,
    targets: &Targets,
    desired: i32,
) -> anyhow::Result<()> {
    let Some(cluster) = targets.cluster.clone() else { return Ok(()) };
    phase(printer, state, "start-gitlab", "start GitLab again", |scope| {
        let ctx = ctx.clone();
        async move { service::scale(&ctx, &scope, &cluster, desired.max(1)).await }
    })
    .await
}

/// Ends a backup that cannot finish: its job stopped, GitLab started again on the data it had,
/// the journal closed; the error says what happened and what to do. When GitLab cannot be started,
/// the journal stays (so `up` finishes the job) and the error says exactly that.
async fn roll_back(
    ctx: &Arc<Ctx>,
    state: &StateHandle,
    printer: &Arc<Printer>,
    targets: &Targets,
    journal: &BackupJournal,
    why: anyhow::Error,
    interrupted: bool,
) -> CliError {
    if let Some(job) = &journal.job
        && let Err(e) = backup::stop_backup_job(ctx, job).await
    {
        printer.warn(&format!("could not stop backup job {job}: {e:#}; AWS expires it within the hour on its own"));
    }
    let status = if interrupted { ExitStatus::Interrupted } else { ExitStatus::Failure };
    let restarted = if journal.stopped_gitlab {
        match restart_now(ctx, targets, journal.desired_before).await {
            Ok(()) => true,
            Err(e) => {
                return CliError::new(status, why)
                    .with_context(format!("GitLab is still stopped: starting it again failed: {e:#}"))
                    .with_help("run `gitlab-provision up`: it finishes this backup's rollback and starts GitLab");
            }
        }
    } else {
        false
    };
    if let Err(e) = Journal::write(state, None).await {
        return e;
    }
    let mut error = CliError::new(status, why);
    if restarted {
        error = error.with_context("GitLab was started again on the data it had (it boots in a few minutes)");
    }
    if error.help.is_none() && crate::exit::help_in(&error.error).is_none() {
        error = error.with_help(if interrupted {
            "run `gitlab-provision backup` again when you are ready"
        } else {
            "`gitlab-provision status` shows GitLab coming back; try the backup again later (AWS Backup's console shows the job's details)"
        });
    }
    error
}

/// Scales the service back without waiting (a rollback must not wait on a Ctrl-C'd run).
async fn restart_now(ctx: &Ctx, targets: &Targets, desired: i32) -> anyhow::Result<()> {
    let Some(cluster) = &targets.cluster else { return Ok(()) };
    service::set_desired(ctx, cluster, desired.max(1)).await
}

/// Finishes what a backup that died left behind, for `up`: its job stopped (or, when it had
/// completed, noted), GitLab started again if the backup stopped it, the journal closed. Says
/// what it did.
pub async fn settle_dead(
    ctx: &Arc<Ctx>,
    state: &StateHandle,
    printer: &Printer,
    journal: &BackupJournal,
) -> Result<(), CliError> {
    let snapshot = state.snapshot();
    let targets = targets(&snapshot)?;
    if let Some(job) = &journal.job {
        let now = backup::backup_job(ctx, job).await?;
        if now.completed() {
            journal::note_backup(
                state,
                BackupTaken {
                    recovery_point: now.made.clone().unwrap_or_default(),
                    version: journal.version.clone(),
                    taken_at: journal.started_at.clone(),
                    consistent: journal.consistent,
                    database_snapshot: journal.database_snapshot.clone(),
                },
            )
            .await?;
            printer.note(&format!(
                "the backup an interrupted run started has completed: {}",
                now.made.as_deref().unwrap_or("?")
            ));
        } else if !now.ended_without_result() {
            backup::stop_backup_job(ctx, job).await?;
            printer.warn(&format!(
                "an interrupted backup's job {job} was stopped; run `gitlab-provision backup` to take one"
            ));
        }
    }
    if journal.stopped_gitlab && !journal.for_upgrade {
        restart_now(ctx, &targets, journal.desired_before).await?;
        printer.note("GitLab, stopped by the interrupted backup, is starting again");
    }
    Journal::write(state, None).await
}

/// Another day-two operation is half done: it must be finished first.
pub fn other_operation(journal: &Journal) -> CliError {
    Diagnostic::new(format!("a {} of this stack is in progress (since {})", journal.command(), journal.started_at()))
        .with_help(format!(
            "run `gitlab-provision {}` again to finish it first (or `gitlab-provision up`, which rolls it back)",
            journal.command()
        ))
        .into()
}

/// The recovery points of the stack's file systems (each checked to be the stack's), newest
/// first, each with the GitLab version of its data: its tag, else the tool's note of the backup,
/// else the version the stack ran when it was taken.
pub async fn points(ctx: &Ctx, state: &State) -> Result<Vec<backup::RecoveryPoint>, CliError> {
    let mut points = backup::stack_recovery_points(ctx, &state.resources).await?;
    let (taken, versions) = (journal::backups_taken(state), journal::versions(state));
    for point in &mut points {
        let mut tags = backup::point_tags(ctx, &point.arn).await?;
        let noted = taken.iter().find(|b| b.recovery_point == point.arn);
        point.version = match tags.remove(crate::aws::tags::VERSION_TAG) {
            Some(version) => Some(version),
            None => noted.and_then(|b| b.version.clone()).or_else(|| journal::version_at(&versions, &point.created)),
        };
        point.database_snapshot =
            tags.remove(crate::aws::tags::SNAPSHOT_TAG).or_else(|| noted.and_then(|b| b.database_snapshot.clone()));
    }
    Ok(points)
}

/// The recovery point `wanted` names among the stack's: its ARN, or its id or the start of it,
/// as tables show it, when only one matches.
pub fn find_point<'a>(
    points: &'a [backup::RecoveryPoint],
    wanted: &str,
) -> Result<&'a backup::RecoveryPoint, CliError> {
    if let Some(point) = points.iter().find(|p| p.arn == wanted) {
        return Ok(point);
    }
    let id = wanted.rsplit([':', '/']).next().unwrap_or(wanted).to_ascii_uppercase();
    let matching: Vec<&backup::RecoveryPoint> = if id.len() >= 4 {
        points
            .iter()
            .filter(|p| p.arn.rsplit([':', '/']).next().is_some_and(|full| full.to_ascii_uppercase().starts_with(&id)))
            .collect()
    } else {
        Vec::new()
    };
    match matching.as_slice() {
        [one] => Ok(one),
        [] => Err(Diagnostic::new(format!("{wanted} is not a recovery point of this stack's file systems"))
            .with_help("`gitlab-provision backup list` shows them (the ID column, or the whole ARN)")
            .into()),
        many => Err(Diagnostic::new(format!(
            "{wanted} matches {} recovery points: {}",
            many.len(),
            many.iter().map(|p| p.arn.as_str()).collect::<Vec<_>>().join(", ")
        ))
        .with_help("give more of the id, or the whole ARN")
        .into()),
    }
}
