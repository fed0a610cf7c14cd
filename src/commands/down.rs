//! `down`: delete what the stack recorded (and, with `--discover`, what carries its tags), only
//! what is its own, never its backups, and never by forgetting what it cannot see.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;

use crate::catalog::Kinds;
use crate::cli::{DownArgs, GlobalArgs};
use crate::engine::{self, Catalog as _, Interrupt, Live, Teardown, counted};
use crate::exit::{CliError, CliResult, Diagnostic, ExitStatus};
use crate::keys::Kind;
use crate::ops::check_writable;
use crate::ops::stack::{bind_account, connect, locate, stack_name};
use crate::printer::{Printer, Tone, minute_utc, short_id};
use crate::state::{LockedState, RecordStatus, ResourceRecord, StateHandle};
use crate::steps::backup;

#[derive(Serialize, schemars::JsonSchema)]
pub struct DownResult {
    stack: String,
    region: String,
    removed: usize,
    /// Recorded resources that were not the stack's: not deleted, no longer recorded.
    left_alone: Vec<LeftAlone>,
    /// Kept on purpose (`--keep-data`, a vault with backups), still recorded.
    kept: Vec<String>,
    /// Backups of the file system that remain in AWS Backup.
    recovery_points: Vec<backup::RecoveryPoint>,
    /// The final snapshot of the RDS database (`database = "rds"`), when `down` took one.
    final_snapshot: Option<String>,
}

#[derive(Serialize, schemars::JsonSchema)]
pub struct LeftAlone {
    key: String,
    why: String,
}

pub async fn run(global: &GlobalArgs, args: DownArgs, interrupt: Interrupt) -> CliResult {
    check_writable(args.timings.as_deref())?;
    let (stack, recorded) = locate(global).await?;
    let region_flag = stack_name(global)?.1;
    let printer = Arc::new(Printer::new(global, args.json));
    let has_records = recorded.as_ref().is_some_and(|s| !s.resources.is_empty());
    if has_records && !args.yes && !printer.can_ask() {
        return Err(no_terminal(&stack));
    }
    let region = recorded.as_ref().filter(|_| has_records).map(|s| s.region.clone()).or(region_flag);
    // Locked before deciding anything: an `up` in progress may be about to record its first resource.
    let locked = LockedState::open(
        crate::ops::stack::store(global).await?,
        &stack,
        region.as_deref().unwrap_or_default(),
        "down",
    )
    .await?;
    if let Some(note) = &locked.taken_over {
        printer.note(note);
    }
    let state = StateHandle::new(locked);
    let records = state.snapshot().resources;
    if records.is_empty() && !args.discover {
        crate::ops::status::look_for_unrecorded(global, &stack, region.as_deref(), &printer, "down --discover").await?;
        return Ok(ExitStatus::Success);
    }
    let ctx = connect(global, &stack, region.as_deref(), recorded.as_ref(), &printer).await?;
    let ctx = Arc::new(crate::aws::Ctx { final_snapshot: !args.no_final_snapshot, ..(*ctx).clone() });
    let region = ctx.region().to_string();
    if !records.is_empty() {
        bind_account(&state, &ctx).await?;
    }
    let (orphans, conflicts) =
        if args.discover { engine::discover(ctx.clone(), Arc::new(Kinds), &records).await? } else { (vec![], vec![]) };
    for conflict in &conflicts {
        printer.note(&format!("left alone: {} {} is not this stack's ({})", conflict.kind, conflict.id, conflict.why));
    }
    if records.is_empty() && orphans.is_empty() {
        printer.out(&format!("stack {stack}: nothing recorded and nothing of it found in {region}, nothing to delete"));
        return Ok(ExitStatus::Success);
    }
    for orphan in &orphans {
        printer.note(&format!("found {} {} ({}), not in the state", orphan.kind, orphan.found.id, orphan.key));
    }

    let keep = what_stays(&ctx, global, &args, &printer, &records, &orphans).await?;
    let deleted = records.len() + orphans.len() - keep.len();
    if !args.yes {
        let database = records.contains_key(crate::keys::DB_INSTANCE).then_some(!args.no_final_snapshot);
        confirm(&stack, &printer, deleted, args.keep_data, database)?;
    }
    // Recorded first, so a crash from here on leaves them in the state for the next `down`.
    engine::adopt_orphans(&state, &Kinds, &orphans).await?;
    printer.heading(&format!("deleting stack {stack}: {}", crate::engine::counted(deleted, "resource")));
    let plan = Teardown {
        only: None,
        keep: keep.clone(),
        delete_contents: args.delete_objects,
        max_parallel: usize::from(global.parallel),
        interrupt,
    };
    let outcome = engine::teardown(ctx.clone(), state.clone(), Arc::new(Kinds), printer.clone(), plan).await;
    printer.tally();
    let outcome = match outcome {
        Ok(outcome) => outcome,
        Err(e) if e.interrupted => {
            let left = state.snapshot().resources.len();
            return Err(CliError::new(
                ExitStatus::Interrupted,
                anyhow::anyhow!("interrupted: the deletions in flight finished; {left} resources are still recorded"),
            )
            .with_help("run `gitlab-provision down` again to finish"));
        }
        Err(e) => return Err(teardown_failed(e, &state, global, &stack)),
    };
    if state.is_empty() {
        state.retire().await?;
    }
    if let Some(path) = &args.timings {
        crate::ops::write_timings(path, &outcome.report)?;
    }
    // Every file system the stack has had (a restore keeps the previous one): their backups stay.
    let recovery_points = if args.keep_data {
        Vec::new()
    } else {
        backup::stack_recovery_points(&ctx, &records).await.unwrap_or_default()
    };
    let final_snapshot = match records.get(crate::keys::DB_INSTANCE).and_then(|r| r.id.as_deref()) {
        Some(id) if ctx.final_snapshot && !keep.contains_key(crate::keys::DB_INSTANCE) => {
            crate::steps::database::final_snapshots(&ctx, id)
                .await
                .unwrap_or_default()
                .first()
                .and_then(|s| s.db_snapshot_identifier().map(str::to_string))
        }
        _ => None,
    };
    let kept: Vec<String> = state
        .snapshot()
        .resources
        .iter()
        .filter_map(|(k, r)| keep.get(k).map(|why| (k, r, why)))
        .map(|(k, r, why)| format!("{k} {}: {why}", r.id.as_deref().unwrap_or("?")))
        .collect();
    let result = DownResult {
        stack: stack.clone(),
        region,
        removed: outcome.report.removed,
        left_alone: outcome
            .left_alone
            .iter()
            .map(|(key, why)| LeftAlone { key: key.clone(), why: why.clone() })
            .collect(),
        kept,
        recovery_points,
        final_snapshot,
    };
    printer.json_if_events("down", &result)?;
    report(&printer, &result, args.keep_data);
    Ok(ExitStatus::Success)
}

/// Everything decided before anything is deleted: nothing missing is forgotten unasked, and
/// what `down` keeps (each with why), after refusing what it must not delete or keep unasked.
async fn what_stays(
    ctx: &Arc<crate::aws::Ctx>,
    global: &GlobalArgs,
    args: &DownArgs,
    printer: &Printer,
    records: &BTreeMap<String, ResourceRecord>,
    orphans: &[engine::Orphan],
) -> Result<BTreeMap<String, String>, CliError> {
    let lives =
        engine::observe(ctx.clone(), Arc::new(Kinds), records.clone(), usize::from(global.parallel), false).await;
    refuse_to_forget(records, &lives, printer, args.forget_missing)?;
    let keep = kept(ctx, records, args.keep_data).await?;
    if args.keep_data {
        refuse_to_keep_what_was_found(orphans)?;
    }
    // What discovery found holds data like what is recorded.
    let mut candidates = records.clone();
    candidates.extend(orphans.iter().map(|o| (o.key.clone(), o.record())));
    if !args.delete_objects {
        refuse_to_delete_contents(ctx, &candidates, &keep).await?;
    }
    Ok(keep)
}

/// A teardown that stopped on failures: what is still recorded, and the way on (a bucket that
/// received something while `down` ran is told apart).
fn teardown_failed(error: engine::TeardownError, state: &StateHandle, global: &GlobalArgs, stack: &str) -> CliError {
    let left = state.snapshot().resources.len();
    let held = error.failures.iter().any(|(_, e)| e.downcast_ref::<engine::HoldsContents>().is_some());
    CliError::failure(error)
        .with_context(format!("{left} resources are still recorded in {}", crate::ops::stack::state_location(global, stack)))
        .with_help(if held {
            "something was written into it while `down` ran: `gitlab-provision down --delete-objects` deletes it with what it holds, `down --keep-data` keeps it"
        } else {
            "fix the cause and run `gitlab-provision down` again"
        })
}

/// What `down` keeps, each with why: the data with `--keep-data`, and whatever holds something
/// the tool never deletes (a vault's backups), as each kind's policy says.
async fn kept(
    ctx: &crate::aws::Ctx,
    records: &BTreeMap<String, ResourceRecord>,
    keep_data: bool,
) -> Result<BTreeMap<String, String>, CliError> {
    let mut keep = BTreeMap::new();
    for (key, record) in records {
        let Some(policy) = Kinds.policy(&record.kind, key) else { continue };
        if keep_data && policy.data {
            keep.insert(key.clone(), "--keep-data (`up` attaches it again)".to_string());
        } else if policy.kept_while_holding
            && let Some(ops) = Kinds.ops(&record.kind)
            && let Some(held) = ops.holds(ctx, record).await?
        {
            keep.insert(key.clone(), format!("it holds {held}"));
        }
    }
    keep_what_the_kept_need(records, &mut keep);
    Ok(keep)
}

/// What a kept record cannot outlive stays with it, as its kind's row says (an RDS instance its
/// subnets and security group, a group the group that it admits), each with why.
fn keep_what_the_kept_need(records: &BTreeMap<String, ResourceRecord>, keep: &mut BTreeMap<String, String>) {
    let mut to_visit: Vec<String> = keep.keys().cloned().collect();
    while let Some(key) = to_visit.pop() {
        let Some(record) = records.get(&key) else { continue };
        if !Kinds.policy(&record.kind, &key).is_some_and(|p| p.keeps_its_needs) {
            continue;
        }
        for need in &record.depends_on {
            if records.contains_key(need) && !keep.contains_key(need) {
                keep.insert(need.clone(), format!("{key} needs it, and {key} is kept (`down` deletes it with {key})"));
                to_visit.push(need.clone());
            }
        }
    }
}

/// `--keep-data` keeps what the state records. Data that only discovery found (a lost state) is
/// refused instead of kept or deleted: keeping a found file system would leave the mount targets
/// discovery does not find, holding the network `down` must delete, and deleting it is what
/// `--keep-data` was asked not to do.
fn refuse_to_keep_what_was_found(orphans: &[engine::Orphan]) -> Result<(), CliError> {
    let found: Vec<String> = orphans
        .iter()
        .filter(|o| Kinds.policy(&o.kind, &o.key).is_some_and(|p| p.data))
        .map(|o| format!("  {} {}", o.key, o.found.id))
        .collect();
    if found.is_empty() {
        return Ok(());
    }
    Err(Diagnostic::new(format!(
        "--keep-data keeps what the state records, and these were found without a record; nothing was deleted:\n{}",
        found.join("\n")
    ))
    .with_help("bring the state back first (`state/<stack>.json.backup`, or `gitlab-provision state history` with a shared state), then `down --keep-data`; or `down --discover` without --keep-data deletes them too")
    .into())
}

/// Refuses, before anything is deleted, to delete what holds data only its users made (GitLab's
/// buckets: uploads, artifacts, packages; no backup of the tool's has them) unless `down` was
/// told to (`--delete-objects`), naming each with what it holds.
async fn refuse_to_delete_contents(
    ctx: &crate::aws::Ctx,
    candidates: &BTreeMap<String, ResourceRecord>,
    keep: &BTreeMap<String, String>,
) -> Result<(), CliError> {
    let mut holding = vec![];
    // A record a crash left without an id has nothing of its own to hold yet.
    let deleted = candidates.iter().filter(|(key, record)| !keep.contains_key(*key) && record.id.is_some());
    for (key, record) in deleted {
        let Some(policy) = Kinds.policy(&record.kind, key) else { continue };
        if policy.refused_while_holding
            && let Some(ops) = Kinds.ops(&record.kind)
            && let Some(held) = ops.holds(ctx, record).await?
        {
            holding.push(format!("  {key} {}: {held}", record.id.as_deref().unwrap_or("?")));
        }
    }
    if holding.is_empty() {
        return Ok(());
    }
    Err(Diagnostic::new(format!(
        "GitLab's buckets hold its users' objects (uploads, artifacts, packages), which no backup of this tool has; nothing was deleted:\n{}",
        holding.join("\n")
    ))
    .with_help("keep them (and the rest of the data) with `gitlab-provision down --keep-data`, which `up` attaches again; or delete them with the stack: `gitlab-provision down --delete-objects`")
    .into())
}

fn report(printer: &Printer, result: &DownResult, keep_data: bool) {
    printer.out(&format!("stack {} is down: {} removed", result.stack, counted(result.removed, "resource")));
    for left in &result.left_alone {
        printer.warn(&format!(
            "{} was left alone: it is not this stack's ({}); it is no longer recorded. If it is in fact this stack's, delete it yourself",
            left.key, left.why
        ));
    }
    for kept in &result.kept {
        printer.out(&format!("kept {kept}"));
    }
    if keep_data && !result.kept.is_empty() {
        printer.out(
            "`gitlab-provision up` attaches them again (same repositories, same root password); `gitlab-provision down` deletes them",
        );
    }
    if let Some(snapshot) = &result.final_snapshot {
        printer.note(&format!(
            "the database's final snapshot {snapshot} stays in RDS (billed per GB-month until you delete it): restore it with `aws rds restore-db-instance-from-db-snapshot --db-snapshot-identifier {snapshot} ...`, delete it with `aws rds delete-db-snapshot --db-snapshot-identifier {snapshot}`"
        ));
    }
    if !result.recovery_points.is_empty() {
        let mut lines = vec![format!(
            "{} of the file system kept in AWS Backup (this tool never deletes backups; they are billed until they expire or you delete them):",
            counted(result.recovery_points.len(), "backup")
        )];
        lines.extend(
            result
                .recovery_points
                .iter()
                .map(|point| format!("  {}  {}  {}", minute_utc(&point.created), point.vault, short_id(&point.arn))),
        );
        lines.push(
            "delete one with `aws backup delete-recovery-point --backup-vault-name VAULT --recovery-point-arn ARN`; once the stack's vault is empty, `gitlab-provision down` removes it".into(),
        );
        printer.note(&lines.join("\n"));
    }
}

/// When most recorded resources read as missing at once, something other than deletions is
/// more likely (other credentials, another region, an outage): stop and ask before forgetting.
fn refuse_to_forget(
    records: &BTreeMap<String, ResourceRecord>,
    lives: &BTreeMap<String, anyhow::Result<Live>>,
    printer: &Printer,
    forget_missing: bool,
) -> Result<(), CliError> {
    let counted: Vec<&String> = records
        .iter()
        .filter(|(_, r)| {
            matches!(r.status, RecordStatus::Created | RecordStatus::Retained) && r.kind != Kind::Marker.as_str()
        })
        .map(|(k, _)| k)
        .collect();
    let missing: Vec<&String> =
        counted.iter().copied().filter(|k| matches!(lives.get(*k), Some(Ok(Live::Missing)))).collect();
    if counted.len() < 3 || missing.len() * 2 <= counted.len() || forget_missing {
        return Ok(());
    }
    let what = format!(
        "{} of the {} resources the state records read as missing ({}); with other credentials, another region or an outage this is what a live stack looks like",
        missing.len(),
        counted.len(),
        missing.iter().take(6).map(|k| k.as_str()).collect::<Vec<_>>().join(", ")
    );
    if printer.can_ask() {
        printer.warn(&what);
        let answer = printer.ask(&format!(
            "{} ",
            printer.paint("Type forget to delete the rest and forget the missing ones:", Tone::Bold)
        ))?;
        if answer == "forget" {
            return Ok(());
        }
        return Err(Diagnostic::new("nothing was deleted; the state is unchanged").into());
    }
    Err(Diagnostic::new(format!("{what}; nothing was deleted and the state is unchanged"))
        .with_help("check `gitlab-provision status` with the stack's own credentials and region; if they really are gone, run `gitlab-provision down --forget-missing`")
        .into())
}

/// Deleting a stack deletes its data: ask for the stack name, and never assume a yes.
fn no_terminal(stack: &str) -> CliError {
    Diagnostic::new(format!(
        "refusing to delete stack {stack} without confirmation: there is no terminal to ask on; nothing was deleted"
    ))
    .with_help("pass --yes to confirm")
    .into()
}

fn confirm(
    stack: &str,
    printer: &Printer,
    count: usize,
    keeping_data: bool,
    database: Option<bool>,
) -> Result<(), CliError> {
    if !printer.can_ask() {
        return Err(no_terminal(stack));
    }
    let data = match (keeping_data, database) {
        (true, _) => "keeping its data (the file system, the root secret, the buckets, the database)",
        (false, Some(true)) => "with the Git repositories and all other data; the RDS database after a final snapshot",
        (false, Some(false)) => {
            "with the Git repositories and all other data, the RDS database without a final snapshot"
        }
        (false, None) => "with the Git repositories and all other data",
    };
    let answer = printer
        .ask(&format!("This deletes {count} resources of stack {stack}, {data}. Type the stack name to confirm:"))?;
    if answer != stack {
        return Err(Diagnostic::new(format!(
            "confirmation {:?} does not match {stack:?}; nothing was deleted",
            answer
        ))
        .into());
    }
    Ok(())
}
