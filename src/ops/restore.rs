//! A restore: a recovery point into a new file system (a new AWS Backup job every attempt, with
//! the metadata AWS Backup gives for the point), then GitLab stopped, the stack switched to the
//! new file system with the GitLab version that wrote the data, and GitLab started again,
//! whatever converging changed. The file system it ran on is kept, retained, until the user
//! removes it. Each phase is in the journal first: `restore` resumes a run that died, `up`
//! rolls back one that had not switched yet and finishes one that had.

use std::collections::BTreeSet;
use std::sync::Arc;

use super::backup::targets;
use super::converge::{Converge, converge, wait_healthy};
use super::journal::{self, Journal, RestoreJournal, RestorePhase};
use super::phase::{phase, phase_with};
use super::stack::Opened;
use crate::aws::{Ctx, call};
use crate::config::{StackConfig, TagSource};
use crate::engine::{Interrupt, WaitError, WaitPolicy, attrs, wait_until};
use crate::exit::{CliError, Diagnostic, ExitStatus};
use crate::gitlab_version::Version;
use crate::keys::{self, Kind};
use crate::printer::Printer;
use crate::state::{self, RecordStatus, ResourceRecord, StateHandle};
use crate::steps::{backup, database, service, storage};

/// Where the file system a restore replaced is kept.
const PREVIOUS: &str = "file-system-previous";
/// A file system a restore that was abandoned made (kept, for the user to look at or remove).
const ABANDONED: &str = "file-system-restored";
/// The same for the RDS database, with the database on RDS.
const PREVIOUS_DATABASE: &str = "database-previous";
const ABANDONED_DATABASE: &str = "database-restored";
/// A restore of a small team's data takes minutes; a large one, hours.
const RESTORE_WAIT: WaitPolicy = WaitPolicy::up_to(std::time::Duration::from_secs(6 * 3600));

/// What a restore brings back, decided before anything changes (`restore --plan` prints it).
#[derive(Debug, Clone)]
pub struct Chosen {
    pub point: backup::RecoveryPoint,
    /// The version deployed with the data.
    pub version: Version,
    /// The version running now (what the data's version replaces).
    pub running: Option<Version>,
    /// With the database on RDS: the snapshot of it taken with the point.
    pub database_snapshot: Option<String>,
}

/// Picks the point and the version to deploy with it: the version the data was written by. A
/// point whose version nothing records is refused when GitLab ran anything since it was taken
/// (its data may be older than the running version, which cannot run on it), unless the user
/// names the version.
pub async fn choose(
    ctx: &Ctx,
    state: &state::State,
    wanted: &str,
    version_flag: Option<Version>,
) -> Result<Chosen, CliError> {
    let points = super::backup::points(ctx, state).await?;
    let point = super::backup::find_point(&points, wanted)?.clone();
    if point.status != "COMPLETED" {
        return Err(Diagnostic::new(format!(
            "recovery point {} is {}, not completed: it cannot be restored",
            point.arn,
            point.status.to_lowercase()
        ))
        .into());
    }
    let on_rds = state.resources.contains_key(keys::DB_INSTANCE);
    if on_rds && point.database_snapshot.is_none() {
        return Err(Diagnostic::new(format!(
            "recovery point {} has no database snapshot with it (the daily plan's, or taken before the database was on RDS): its repositories alone would not match the database GitLab runs on",
            point.id
        ))
        .with_help("restore a point `gitlab-provision backup list` shows with a DATABASE snapshot (taken by `gitlab-provision backup`)")
        .into());
    }
    let running = super::versions::running_version(&state.resources);
    let recorded = point.version.as_deref().and_then(Version::parse);
    let version = match (version_flag, recorded, running) {
        (Some(flag), _, _) => flag,
        (None, Some(recorded), _) => recorded,
        (None, None, Some(running)) if journal::versions(state).first().is_some_and(|v| v.since <= point.created) => {
            running
        }
        (None, None, running) => {
            return Err(Diagnostic::new(format!(
                "nothing records which GitLab version wrote the data of {} (taken {}){}: restoring it under another version could leave GitLab unable to start, since GitLab cannot run on data of a later version nor skip its migrations",
                point.id,
                crate::printer::minute_utc(&point.created),
                running.map(|r| format!("; GitLab {r} runs now")).unwrap_or_default()
            ))
            .with_help("name the version that ran when it was taken: `gitlab-provision restore POINT --gitlab-version X.Y.Z-ce.N`")
            .into());
        }
    };
    let database_snapshot = if on_rds { point.database_snapshot.clone() } else { None };
    Ok(Chosen { point, version, running, database_snapshot })
}

/// What `restore --plan` says.
pub fn plan_text(state: &state::State, chosen: &Chosen) -> String {
    let point = &chosen.point;
    let current = state.resources.get(keys::FILE_SYSTEM).and_then(|r| r.id.clone()).unwrap_or_default();
    let version = match chosen.running {
        Some(running) if running != chosen.version => {
            format!("GitLab {} (the version that wrote the data; {running} runs now)", chosen.version)
        }
        _ => format!("GitLab {} (the version that wrote the data, as now)", chosen.version),
    };
    [
        format!(
            "the restore of {} (taken {}, {}) would:",
            point.arn,
            crate::printer::minute_utc(&point.created),
            crate::printer::human_bytes(point.bytes)
        ),
        "  - restore it into a new file system (a new AWS Backup restore job; GitLab keeps running meanwhile)".into(),
        match &chosen.database_snapshot {
            Some(snapshot) => format!("  - restore the database's snapshot {snapshot} into a new RDS instance (meanwhile too)"),
            None => "  - (the database is in the file system: it comes back with it)".into(),
        },
        "  - stop GitLab (downtime starts)".into(),
        format!(
            "  - switch the stack to the new file system and deploy {version}: mount targets in it, the initializer moving the restored data into place, a task definition revision mounting it"
        ),
        "  - start GitLab and wait until the load balancer reports it healthy (downtime ends)".into(),
        format!(
            "  keeps: the current file system {current}, as {} (retained, billed until you remove it); the root password",
            free_slot(state, PREVIOUS)
        ),
        "nothing was changed; run it without --plan to restore".into(),
    ]
    .join("\n")
}

fn free_slot(state: &state::State, prefix: &str) -> String {
    let taken: BTreeSet<&String> = state.resources.keys().collect();
    (1..).map(|n| format!("{prefix}-{n}")).find(|k| !taken.contains(k)).unwrap_or_default()
}

/// Records `record` as retained under the next free `<prefix>-N` key (nothing creates it, and a
/// retained record is never removed by `up`; `down` deletes it); returns the key.
async fn keep_retained(state: &StateHandle, prefix: &str, record: ResourceRecord) -> Result<String, CliError> {
    let slot = free_slot(&state.snapshot(), prefix);
    let kept = ResourceRecord { status: RecordStatus::Retained, depends_on: vec![], step: "restore".into(), ..record };
    state.put(&slot, kept).await?;
    Ok(slot)
}

/// What an abandoned restore made: a resource of `kind` known by its id alone.
fn made_by_restore(kind: Kind, id: &str) -> ResourceRecord {
    ResourceRecord {
        kind: kind.to_string(),
        step: "restore".into(),
        status: RecordStatus::Retained,
        id: Some(id.to_string()),
        depends_on: vec![],
        attrs: Default::default(),
        generation: 0,
        updated_at: String::new(),
    }
}

/// A restore to start: the point and version chosen, the configuration to converge with.
pub struct Request<'a> {
    pub chosen: Option<Chosen>,
    pub cfg: StackConfig,
    pub interrupt: Interrupt,
    pub global: &'a crate::cli::GlobalArgs,
}

/// What a restore did.
#[derive(Debug, serde::Serialize, schemars::JsonSchema)]
pub struct Restored {
    pub recovery_point: String,
    pub file_system: String,
    pub version: String,
    /// The file systems GitLab ran on before, kept (retained) until removed.
    pub kept: Vec<KeptFileSystem>,
    /// With the database on RDS: the instance restored from the backup's snapshot.
    pub database: Option<String>,
    /// The RDS instances GitLab ran on before, kept (retained, deletion protection on) until removed.
    pub kept_databases: Vec<String>,
    pub seconds: f64,
}

/// A file system kept by a restore: its record key and id.
#[derive(Debug, serde::Serialize, schemars::JsonSchema)]
pub struct KeptFileSystem {
    pub key: String,
    pub file_system: String,
}

/// Runs a restore, or resumes the one the journal records.
pub async fn restore(opened: &Opened, printer: &Arc<Printer>, request: Request<'_>) -> Result<Restored, CliError> {
    let (ctx, state) = (&opened.ctx, &opened.state);
    let started = std::time::Instant::now();
    let mut journal = match (Journal::current(state)?, &request.chosen) {
        (Some(Journal::Restore(journal)), Some(chosen)) if journal.point != chosen.point.arn => {
            return Err(Diagnostic::new(format!(
                "a restore of {} is in progress; finish it first",
                journal.point
            ))
            .with_help("run `gitlab-provision restore` without an argument to resume it, or `gitlab-provision up` to abandon it")
            .into());
        }
        (Some(Journal::Restore(journal)), _) => {
            printer.note(&format!("resuming the restore of {} started {}", journal.point, journal.started_at));
            journal
        }
        (Some(other), _) => return Err(super::backup::other_operation(&other)),
        (None, Some(chosen)) => {
            let snapshot = state.snapshot();
            let cluster = targets(&snapshot)?.cluster;
            let desired = match &cluster {
                Some(cluster) => service::describe_service(ctx, cluster).await?.map_or(1, |s| s.desired_count()),
                None => 1,
            };
            RestoreJournal {
                started_at: state::now_rfc3339(),
                phase: RestorePhase::Restoring,
                point: chosen.point.arn.clone(),
                token: journal::attempt_token(&snapshot.lineage, "restore"),
                job: None,
                new_file_system: None,
                version: Some(chosen.version.to_string()),
                // A restore wakes a sleeping GitLab: it is there to be used.
                desired_before: desired.max(1),
                database_snapshot: chosen.database_snapshot.clone(),
                new_database: chosen.database_snapshot.as_ref().map(|_| restored_database_name(&snapshot)),
            }
        }
        (None, None) => {
            return Err(Diagnostic::new("restore needs the recovery point to bring back")
                .with_help("`gitlab-provision backup list` shows them; pass one's id or ARN")
                .into());
        }
    };
    let save = async |journal: &RestoreJournal| Journal::write(state, Some(&Journal::Restore(journal.clone()))).await;
    save(&journal).await?;
    let interrupt = Some(&request.interrupt);

    if journal.phase == RestorePhase::Restoring {
        let new_fs = match restore_both(ctx, state, printer, &mut journal, interrupt).await {
            Ok(fs) => fs,
            Err(e) if WaitError::is_interrupted(&e) => {
                return Err(CliError::new(ExitStatus::Interrupted, e)
                    .with_context("GitLab keeps running on its current data; the restore job goes on in AWS Backup")
                    .with_help(
                        "run `gitlab-provision restore` to go on with it, or `gitlab-provision up` to abandon it",
                    ));
            }
            Err(e) => {
                Journal::write(state, None).await?;
                return Err(CliError::failure(e)
                    .with_context("GitLab keeps running on its current data; nothing was switched")
                    .with_help("`gitlab-provision backup list` shows the points; try again, or another point"));
            }
        };
        journal.new_file_system = Some(new_fs);
        journal.phase = RestorePhase::Switching;
        save(&journal).await?;
    }
    let new_fs = journal.new_file_system.clone().unwrap_or_default();
    if journal.phase == RestorePhase::Switching {
        switch(ctx, state, printer, &journal, request.cfg.clone(), &request.interrupt, request.global).await?;
        journal.phase = RestorePhase::StartingGitLab;
        save(&journal).await?;
    }
    // Started again whatever converging changed (a configuration that did not change leaves the
    // service at the 0 tasks it was stopped to).
    super::sleep::end_for(opened, printer, "the restore").await?;
    if let Some(cluster) = targets(&state.snapshot())?.cluster {
        let desired = journal.desired_before;
        phase(printer, state, "start-gitlab", "start GitLab on the restored data", |scope| {
            let ctx = ctx.clone();
            async move { service::scale(&ctx, &scope, &cluster, desired).await }
        })
        .await?;
    }
    Journal::write(state, None).await?;
    wait_healthy(ctx, state, printer).await?;
    let now = state.snapshot();
    let kept = now
        .resources
        .iter()
        .filter(|(k, _)| k.starts_with(PREVIOUS))
        .map(|(k, r)| KeptFileSystem { key: k.clone(), file_system: r.id.clone().unwrap_or_default() })
        .collect();
    let kept_databases = now
        .resources
        .iter()
        .filter(|(k, _)| k.starts_with(PREVIOUS_DATABASE))
        .filter_map(|(_, r)| r.id.clone())
        .collect();
    Ok(Restored {
        recovery_point: journal.point.clone(),
        file_system: new_fs,
        version: journal.version.clone().unwrap_or_default(),
        kept,
        database: journal.new_database.clone(),
        kept_databases,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// The name of the instance a restore makes: the stack's database's, marked with the time.
fn restored_database_name(state: &state::State) -> String {
    let stamp: String = state::now_rfc3339().chars().filter(char::is_ascii_digit).take(14).collect();
    format!("{}-r{stamp}", keys::names::database(&state.stack))
}

/// With the database on RDS, restores its snapshot alongside the file system: RDS is asked
/// first, so both restores run at once, then the file system's job and the instance are waited
/// for. Without, the file system alone.
async fn restore_both(
    ctx: &Arc<Ctx>,
    state: &StateHandle,
    printer: &Arc<Printer>,
    journal: &mut RestoreJournal,
    interrupt: Option<&Interrupt>,
) -> anyhow::Result<String> {
    let database = match (&journal.database_snapshot, &journal.new_database) {
        (Some(snapshot), Some(name)) => Some((snapshot.clone(), name.clone(), placement(&state.snapshot())?)),
        _ => None,
    };
    if let Some((snapshot, name, placement)) = &database
        && database::describe_instance(ctx, name).await?.is_none()
    {
        phase(printer, state, "start-database-restore", &format!("ask RDS to restore {snapshot} into {name}"), |_| {
            let ctx = ctx.clone();
            async move { database::ask_restore(&ctx, snapshot, name, placement).await }
        })
        .await?;
    }
    let fs = restore_job(ctx, state, printer, journal, interrupt).await?;
    if let Some((snapshot, name, placement)) = &database {
        phase_with(
            printer,
            state,
            "restore-database",
            &format!("restore {snapshot} into {name}"),
            interrupt,
            |scope| {
                let ctx = ctx.clone();
                async move { database::restore_snapshot(&ctx, &scope, snapshot, name, placement).await.map(|_| ()) }
            },
        )
        .await?;
    }
    Ok(fs)
}

/// Where the stack's database sits, for the instance a restore makes.
fn placement(state: &state::State) -> anyhow::Result<database::Placement> {
    let record = |key: &str| state.resources.get(key).ok_or_else(|| anyhow::anyhow!("no {key} is recorded"));
    Ok(database::Placement {
        subnet_group: record(keys::DB_SUBNET_GROUP)?.id()?.to_string(),
        security_group: record(keys::DB_SECURITY_GROUP)?.id()?.to_string(),
        key: record(keys::KEY)?.attr("arn").unwrap_or_default().to_string(),
        settings: database::recorded_settings(record(keys::DB_INSTANCE)?),
    })
}

/// The restore job: started from the point's own restore metadata (overriding only what must
/// change), waited for; the file system it made is tagged as the stack's.
async fn restore_job(
    ctx: &Arc<Ctx>,
    state: &StateHandle,
    printer: &Arc<Printer>,
    journal: &mut RestoreJournal,
    interrupt: Option<&Interrupt>,
) -> anyhow::Result<String> {
    let snapshot = state.snapshot();
    let t = targets(&snapshot).map_err(|e| e.error)?;
    if journal.job.is_none() {
        let vault = super::backup::points(ctx, &snapshot)
            .await
            .map_err(|e| e.error)?
            .into_iter()
            .find(|p| p.arn == journal.point)
            .map(|p| p.vault)
            .ok_or_else(|| anyhow::anyhow!("recovery point {} is no longer there", journal.point))?;
        let (point, role, token) = (journal.point.clone(), t.role_arn.clone(), journal.token.clone());
        let job =
            phase(printer, state, "start-restore", "start an AWS Backup restore job into a new file system", |_| {
                let ctx = ctx.clone();
                async move {
                    let metadata = backup::restore_metadata(&ctx, &vault, &point).await?;
                    backup::start_restore(&ctx, &point, &role, &token, metadata).await
                }
            })
            .await?;
        journal.job = Some(job);
        Journal::write(state, Some(&Journal::Restore(journal.clone()))).await.map_err(|e| e.error)?;
    }
    let job = journal.job.clone().unwrap_or_default();
    phase_with(printer, state, "restore-job", "restore the backup into a new file system", interrupt, |scope| {
        let ctx = ctx.clone();
        async move {
            let short = job.get(..8).unwrap_or(&job).to_string();
            let arn = wait_until(&scope, &format!("restore job {short}"), RESTORE_WAIT, || async {
                let now = backup::restore_job(&ctx, &job).await?;
                let minutes = now.created.and_then(|c| c.elapsed().ok()).map_or(0, |d| d.as_secs() / 60);
                Ok(if now.completed() {
                    crate::engine::Poll::Ready(now.made.unwrap_or_default())
                } else if now.ended_without_result() {
                    crate::engine::Poll::Failed(format!("AWS Backup's restore job {job} ended {}", now.outcome()))
                } else {
                    crate::engine::Poll::Pending(format!("{} for {minutes} min", now.state.to_lowercase()))
                })
            })
            .await?;
            let fs = backup::restored_file_system(&arn)?;
            // What the restore made is the stack's from now on.
            call(
                ctx.aws.efs.tag_resource().resource_id(&fs).set_tags(Some(ctx.tags.list(keys::FILE_SYSTEM))).send(),
                || format!("tagging {fs}"),
            )
            .await?;
            Ok(fs)
        }
    })
    .await
}

/// GitLab stopped, the stack's file system swapped for the restored one (the current one kept,
/// retained), and the stack converged onto it with the data's GitLab version.
async fn switch(
    ctx: &Arc<Ctx>,
    state: &StateHandle,
    printer: &Arc<Printer>,
    journal: &RestoreJournal,
    mut cfg: StackConfig,
    interrupt: &Interrupt,
    global: &crate::cli::GlobalArgs,
) -> Result<(), CliError> {
    let new_fs = journal.new_file_system.clone().unwrap_or_default();
    let swapped = state.get(keys::FILE_SYSTEM).and_then(|r| r.id) == Some(new_fs.clone());
    if !swapped {
        // (the database is swapped with the file system, in the same step)
        if let Some(cluster) = targets(&state.snapshot())?.cluster {
            let stopped =
                phase_with(printer, state, "stop-gitlab", "stop GitLab (downtime starts)", Some(interrupt), |scope| {
                    let (ctx, cluster) = (ctx.clone(), cluster.clone());
                    async move { service::scale(&ctx, &scope, &cluster, 0).await }
                })
                .await;
            if let Err(e) = stopped {
                // Not switched yet: GitLab goes back to the data it had.
                let _ = service::set_desired(ctx, &cluster, journal.desired_before).await;
                let status = if WaitError::is_interrupted(&e) { ExitStatus::Interrupted } else { ExitStatus::Failure };
                return Err(CliError::new(status, e)
                    .with_context("GitLab was started again on its current data; the restored file system is ready")
                    .with_help("run `gitlab-provision restore` to switch to it"));
            }
        }
        if let Some(new_database) = &journal.new_database {
            swap_database(ctx, state, new_database).await?;
        }
        swap(ctx, state, &new_fs).await?;
    }
    if let Some(version) = journal.version.as_deref().and_then(Version::parse) {
        cfg.gitlab_image_tag = version.to_string();
        cfg.tag_source = TagSource::Flag;
    }
    phase(printer, state, "switch", "switch GitLab to the restored file system", |_| async { Ok(()) }).await?;
    let mut options = Converge::confirmed(global, interrupt.clone());
    // The data's own version: going back to it is the point of the restore.
    options.force_version = true;
    converge(ctx, state, cfg, printer, &options).await.map_err(|e| {
        let e = e.with_context("GitLab is stopped: the switch to the restored file system is half done");
        e.with_help(
            "run `gitlab-provision restore` to finish it (or `gitlab-provision up`, which finishes converging onto it)",
        )
    })?;
    Ok(())
}

/// The restored file system becomes the stack's; the one it replaces is kept as retained under
/// a key of its own (nothing creates it any more, and a retained record is never removed by `up`).
async fn swap(ctx: &Ctx, state: &StateHandle, new_fs: &str) -> Result<(), CliError> {
    let current =
        state.get(keys::FILE_SYSTEM).ok_or_else(|| CliError::failure(anyhow::anyhow!("no file system is recorded")))?;
    keep_retained(state, PREVIOUS, current.clone()).await?;
    let fs = storage::describe_file_system(ctx, new_fs).await?;
    let arn = fs.as_ref().and_then(|f| f.file_system_arn()).unwrap_or_default().to_string();
    let restored = ResourceRecord {
        kind: Kind::FileSystem.to_string(),
        step: keys::FILE_SYSTEM.into(),
        status: RecordStatus::Created,
        id: Some(new_fs.to_string()),
        depends_on: vec![],
        // Converged by the next step (backups on, elastic throughput).
        attrs: attrs([
            ("encrypted", "true".into()),
            ("throughput", "restored".into()),
            ("backups", "restored".into()),
            ("arn", arn),
        ]),
        generation: current.generation + 1,
        updated_at: String::new(),
    };
    state.put(keys::FILE_SYSTEM, restored).await?;
    Ok(())
}

/// The restored instance becomes the stack's database; the one it replaces is kept, retained
/// (deletion protection on), under a key of its own. Done before the file system's swap, which
/// is what marks the switch as made: a run that dies between the two does this again.
async fn swap_database(ctx: &Ctx, state: &StateHandle, new_database: &str) -> Result<(), CliError> {
    let current =
        state.get(keys::DB_INSTANCE).ok_or_else(|| CliError::failure(anyhow::anyhow!("no database is recorded")))?;
    if current.id.as_deref() == Some(new_database) {
        return Ok(());
    }
    let instance = database::describe_instance(ctx, new_database)
        .await?
        .ok_or_else(|| CliError::failure(anyhow::anyhow!("the restored database {new_database} is gone")))?;
    let outputs = database::outputs(ctx, &instance).await?;
    keep_retained(state, PREVIOUS_DATABASE, current.clone()).await?;
    let mut attrs = current.attrs.clone();
    attrs.extend(outputs.attrs);
    let restored = ResourceRecord {
        id: Some(new_database.to_string()),
        status: RecordStatus::Created,
        attrs,
        generation: current.generation + 1,
        ..current
    };
    state.put(keys::DB_INSTANCE, restored).await?;
    Ok(())
}

/// For `up`, a restore whose run died: before the switch it is abandoned (GitLab keeps its data;
/// a file system the job already made is kept, retained, for the user to remove); after it, `up`
/// finishes converging onto the restored data, and GitLab is started again.
pub async fn settle_dead(
    ctx: &Ctx,
    state: &StateHandle,
    printer: &Printer,
    journal: &RestoreJournal,
) -> Result<(), CliError> {
    let swapped =
        journal.new_file_system.is_some() && state.get(keys::FILE_SYSTEM).and_then(|r| r.id) == journal.new_file_system;
    if !swapped {
        let made = match (&journal.new_file_system, &journal.job) {
            (Some(fs), _) => Some(fs.clone()),
            (None, Some(job)) => {
                let now = backup::restore_job(ctx, job).await?;
                now.made.as_deref().filter(|_| now.completed()).map(backup::restored_file_system).transpose()?
            }
            (None, None) => None,
        };
        if let Some(fs) = made {
            let slot = keep_retained(state, ABANDONED, made_by_restore(Kind::FileSystem, &fs)).await?;
            printer.warn(&format!(
                "an interrupted restore of {} was abandoned; the file system it made, {fs}, is kept as {slot} (a plain `down` removes it)",
                journal.point
            ));
        } else {
            printer.warn(&format!("an interrupted restore of {} was abandoned", journal.point));
        }
        if let Some(name) = &journal.new_database
            && state.get(keys::DB_INSTANCE).and_then(|r| r.id).as_deref() != Some(name)
            && database::describe_instance(ctx, name).await?.is_some()
        {
            let slot = keep_retained(state, ABANDONED_DATABASE, made_by_restore(Kind::DbInstance, name)).await?;
            printer.warn(&format!(
                "the database the abandoned restore made, {name}, is kept as {slot} (a plain `down` removes it, with a final snapshot)"
            ));
        }
        if let Some(cluster) = targets(&state.snapshot())?.cluster {
            service::set_desired(ctx, &cluster, journal.desired_before).await?;
        }
    } else {
        printer.note(&format!(
            "finishing the switch to the restored file system {}",
            journal.new_file_system.as_deref().unwrap_or("?")
        ));
    }
    Journal::write(state, None).await
}
