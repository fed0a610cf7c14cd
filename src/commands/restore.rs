//! `restore`: a recovery point into a new file system, and GitLab switched to it (stop, swap,
//! start, wait). The file system it ran on is kept, retained, until the user removes it.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;

use super::backup::{phase, remember, targets};
use crate::aws::call;
use crate::cli::{GlobalArgs, RestoreArgs};
use crate::engine::{Interrupt, attrs};
use crate::exit::{CliError, CliResult, Diagnostic, ExitStatus};
use crate::keys::{self, Kind};
use crate::ops::confirm;
use crate::ops::stack::{connect, recorded_config, recorded_stack, refuse_other_operation, stack_name};
use crate::printer::{Printer, human_bytes, minute_utc};
use crate::state::{self, LockedState, RecordStatus, ResourceRecord, StateHandle};
use crate::steps::{backup, service, storage};

/// Where the file system a restore replaced is kept.
const PREVIOUS: &str = "file-system-previous";

pub async fn run(global: &GlobalArgs, args: RestoreArgs, interrupt: Interrupt) -> CliResult {
    let (stack, _) = stack_name(global)?;
    let printer = Arc::new(Printer::new(global, false));
    let recorded = recorded_stack(global, &stack)?;
    let resumed = recorded.operation.as_ref().filter(|o| o.kind == "restore").cloned();
    refuse_other_operation(&recorded, "restore")?;
    let point = match (&args.recovery_point, &resumed) {
        (Some(point), Some(op)) if op.attrs.get("point") != Some(point) => {
            return Err(Diagnostic::new(format!(
                "a restore of {} is in progress; finish it first",
                op.attrs.get("point").map(String::as_str).unwrap_or("?")
            ))
            .with_help("run `gitlab-provision restore` without an argument to resume it")
            .into());
        }
        (Some(point), _) => point.clone(),
        (None, Some(op)) => op.attrs.get("point").cloned().unwrap_or_default(),
        (None, None) => {
            return Err(Diagnostic::new("restore needs the recovery point to bring back")
                .with_help("`gitlab-provision backup list` shows them; pass one's ARN")
                .into());
        }
    };
    let cfg = recorded_config(global, &recorded)?;
    let ctx = connect(global, &stack, Some(&recorded.region), Some(&recorded), &printer).await?;
    let t = targets(&recorded)?;
    // A resumed restore checked its point when it started.
    if resumed.is_none() || args.plan {
        let found = stack_point(&ctx, &recorded, &point).await?;
        if args.plan {
            printer.out(&restore_plan(&recorded, &found));
            return Ok(ExitStatus::Success);
        }
    }
    if resumed.is_none() {
        confirm_restore(&printer, &point, args.yes)?;
    }
    let locked = LockedState::open(&global.state_dir, &stack, ctx.region(), "restore")?;
    let state = StateHandle::new(locked);
    if resumed.is_none() {
        state.update(
            |s| {
                s.operation = Some(state::Operation {
                    kind: "restore".into(),
                    phase: "start".into(),
                    started_at: state::now_rfc3339(),
                    attrs: attrs([("point", point.clone())]),
                })
            },
            true,
        )?;
    }
    let started = Instant::now();
    let op = || {
        state.snapshot().operation.unwrap_or_else(|| state::Operation {
            kind: "restore".into(),
            phase: String::new(),
            started_at: String::new(),
            attrs: Default::default(),
        })
    };
    let source_fs = recorded.resources.get(keys::FILE_SYSTEM).and_then(|r| r.id.clone()).unwrap_or_default();

    // 1. The new file system, from the recovery point.
    if !op().attrs.contains_key("job") {
        let token = format!("gp-{}-restore-{}", state.lineage(), point.rsplit(['/', ':']).next().unwrap_or("x"));
        let (ctx2, point2, role) = (ctx.clone(), point.clone(), t.role_arn.clone());
        let job = phase(
            &state,
            &printer,
            "restore",
            "start-restore",
            "start the AWS Backup restore job (into a new file system)",
            move |_| async move { backup::start_restore(&ctx2, &point2, &source_fs, &role, &token).await },
        )
        .await?;
        remember(&state, "job", &job)?;
    }
    if !op().attrs.contains_key("new_file_system") {
        let job = op().attrs.get("job").cloned().unwrap_or_default();
        let ctx2 = ctx.clone();
        let fs = phase(
            &state,
            &printer,
            "restore",
            "restore-job",
            "restore the backup into a new file system",
            move |scope| async move {
                let fs = backup::wait_restore(&ctx2, &scope, &job).await?;
                // What the restore made is the stack's from now on.
                call(
                    ctx2.aws
                        .efs
                        .tag_resource()
                        .resource_id(&fs)
                        .set_tags(Some(ctx2.tags.list(keys::FILE_SYSTEM)))
                        .send(),
                    || format!("tagging {fs}"),
                )
                .await?;
                Ok(fs)
            },
        )
        .await?;
        remember(&state, "new_file_system", &fs)?;
    }
    let new_fs = op().attrs.get("new_file_system").cloned().unwrap_or_default();

    // 2. GitLab stopped, then the file system swapped in the state.
    if let Some(cluster) = t.cluster.clone() {
        let ctx2 = ctx.clone();
        phase(&state, &printer, "restore", "stop-gitlab", "stop GitLab", move |scope| async move {
            service::scale(&ctx2, &scope, &cluster, 0).await
        })
        .await?;
    }
    if state.get(keys::FILE_SYSTEM).and_then(|r| r.id) != Some(new_fs.clone()) {
        swap(&ctx, &state, &new_fs).await?;
    }

    // 3. The stack converged onto it (mount targets, the initializer moving the restored data into
    //    place, a new task definition revision), GitLab started and waited for.
    phase(&state, &printer, "restore", "converge", "switch GitLab to the restored file system", |_| async { Ok(()) })
        .await?;
    let options = crate::ops::converge::Converge::confirmed(global, interrupt, true);
    crate::ops::converge::converge(&ctx, &state, cfg, &printer, &options)
        .await
        .map_err(|e| e.with_help("run `gitlab-provision restore` again to resume"))?;
    crate::ops::converge::wait_healthy(&ctx, &state, &printer).await?;
    state.update(|s| s.operation = None, true)?;
    let previous: Vec<String> = state
        .snapshot()
        .resources
        .iter()
        .filter(|(k, _)| k.starts_with(PREVIOUS))
        .map(|(k, r)| format!("{k} ({})", r.id.as_deref().unwrap_or("?")))
        .collect();
    printer
        .out(&format!("restored {point} into {new_fs} in {:.0}s; GitLab runs on it", started.elapsed().as_secs_f64()));
    printer.note(&format!(
        "the file system GitLab ran on before is kept: {}; once you are sure, remove it with `aws efs delete-file-system --file-system-id ID`, or keep it until `gitlab-provision down`",
        previous.join(", ")
    ));
    Ok(ExitStatus::Success)
}

/// The recovery point, if it is a backup of one of the stack's file systems: a restore never
/// brings in someone else's data.
async fn stack_point(
    ctx: &crate::aws::Ctx,
    recorded: &state::State,
    point: &str,
) -> Result<backup::RecoveryPoint, CliError> {
    let points = backup::stack_recovery_points(ctx, &recorded.resources).await?;
    points.into_iter().find(|p| p.arn == point).ok_or_else(|| {
        Diagnostic::new(format!("{point} is not a recovery point of this stack's file systems"))
            .with_help("`gitlab-provision backup list` shows them")
            .into()
    })
}

/// What `restore` would do, for `--plan`: the recovery point, each phase and its downtime, and
/// what is kept.
fn restore_plan(recorded: &state::State, found: &backup::RecoveryPoint) -> String {
    let point = &found.arn;
    let current = recorded.resources.get(keys::FILE_SYSTEM).and_then(|r| r.id.clone()).unwrap_or_default();
    let taken: BTreeSet<&String> = recorded.resources.keys().collect();
    let slot = (1..).map(|n| format!("{PREVIOUS}-{n}")).find(|k| !taken.contains(k)).unwrap_or_default();
    [
        format!("the restore of {point} (taken {}, {}) would:", minute_utc(&found.created), human_bytes(found.bytes)),
        "  - restore it into a new file system (an AWS Backup restore job; GitLab keeps running meanwhile)".into(),
        "  - stop GitLab (downtime starts)".into(),
        "  - switch the stack to the new file system: mount targets in it, the initializer moving the restored data into place, a task definition revision mounting it".into(),
        "  - start GitLab and wait until the load balancer reports it healthy (downtime ends)".into(),
        format!("  keeps: the current file system {current}, as {slot} (retained, billed until you remove it); the root password"),
        "nothing was changed; run it without --plan to restore".into(),
    ]
    .join("\n")
}

/// The restored file system becomes the stack's; the one it replaces is kept as retained under
/// a key of its own (nothing creates it any more, and a retained record is never removed by `up`).
async fn swap(ctx: &crate::aws::Ctx, state: &StateHandle, new_fs: &str) -> Result<(), CliError> {
    let current =
        state.get(keys::FILE_SYSTEM).ok_or_else(|| CliError::failure(anyhow::anyhow!("no file system is recorded")))?;
    let taken: BTreeSet<String> = state.snapshot().resources.into_keys().collect();
    let slot = (1..).map(|n| format!("{PREVIOUS}-{n}")).find(|k| !taken.contains(k)).unwrap_or_default();
    state.put(
        &slot,
        ResourceRecord {
            status: RecordStatus::Retained,
            depends_on: vec![],
            step: "restore".into(),
            ..current.clone()
        },
    )?;
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
    state.put(keys::FILE_SYSTEM, restored)?;
    Ok(())
}

fn confirm_restore(printer: &Printer, point: &str, yes: bool) -> Result<(), CliError> {
    let what = format!(
        "restoring {point} stops GitLab and brings back its data as it was then; what changed since is on the current file system, which is kept"
    );
    confirm(printer, &what, "Restore?", yes, "pass --yes to restore")
}
