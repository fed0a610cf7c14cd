//! `backup` and `backup list`: an on-demand AWS Backup job of the file system, consistent by
//! default (`ops::backup`), and the stack's recovery points with the GitLab version of each.

use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

use crate::cli::{BackupAction, BackupArgs, GlobalArgs};
use crate::engine::Interrupt;
use crate::exit::{CliResult, Diagnostic, ExitStatus};
use crate::ops::backup::{BackupOptions, points, take};
use crate::ops::confirm;
use crate::ops::journal::Journal;
use crate::ops::stack::{Reached, open, reach};
use crate::printer::{Printer, human_bytes, minute_utc, table};
use crate::steps::backup::RecoveryPoint;

pub async fn run(global: &GlobalArgs, args: BackupArgs, interrupt: Interrupt) -> CliResult {
    if let Some(BackupAction::List { json }) = args.action {
        return list(global, json).await;
    }
    let start_within = humantime::parse_duration(&args.start_within).map_err(|e| {
        Diagnostic::new(format!("--start-within {:?}: {e}", args.start_within))
            .with_help("write a duration like 15m or 1h")
    })?;
    let printer = Arc::new(Printer::new(global, args.json));
    let opened = open(global, &printer, "backup").await?;
    let resuming = Journal::current(&opened.state)?.is_some();
    // With the database on RDS, GitLab keeps running unless asked to stop: the database's
    // snapshot is consistent by itself.
    let on_rds = opened.state.get(crate::keys::DB_INSTANCE).is_some();
    let consistent = if on_rds { args.stop } else { !args.online };
    if consistent && !resuming {
        confirm(
            &printer,
            "a consistent backup stops GitLab until the copy is made (minutes for a small team's data)",
            "Stop GitLab and back up?",
            args.yes,
            "pass --yes to stop GitLab for it, or --online to back up while it runs (crash-consistent)",
        )?;
    }
    if !consistent && on_rds {
        printer.note("GitLab keeps running: the database's snapshot is consistent; its repositories are copied while they may be written (AWS: an EFS backup of changing files may be skewed), so a push during the copy may be partly in it. `backup --stop` stops GitLab for an exact copy");
    } else if !consistent {
        printer.warn("an online backup copies PostgreSQL's files while it runs: the copy is only crash-consistent (PostgreSQL recovers it as after a power loss)");
    }
    let started = Instant::now();
    let options = BackupOptions { consistent, start_within, for_upgrade: false, interrupt };
    let taken = take(&opened, &printer, &options).await?;
    printer.json_if_events("backup", &taken)?;
    printer.out(&format!(
        "backed up: {} ({}, {:.0}s{}{})",
        taken.recovery_point,
        human_bytes(taken.bytes),
        started.elapsed().as_secs_f64(),
        match (&taken.database_snapshot, taken.downtime_seconds) {
            (Some(snapshot), Some(down)) =>
                format!(", GitLab stopped for {down:.0}s; the database's snapshot {snapshot} goes with it"),
            (Some(snapshot), None) => format!(", GitLab kept running; the database's snapshot {snapshot} goes with it"),
            (None, Some(down)) => format!(", GitLab stopped for {down:.0}s"),
            (None, None) if taken.consistent => ", GitLab was not running".to_string(),
            (None, None) => ", online".to_string(),
        },
        taken.version.as_deref().map(|v| format!(", GitLab {v}")).unwrap_or_default()
    ));
    printer.note(&format!(
        "restore it with `gitlab-provision restore {}`",
        crate::steps::backup::short_point_id(&taken.recovery_point)
    ));
    Ok(ExitStatus::Success)
}

/// `backup list --json`.
#[derive(Serialize, schemars::JsonSchema)]
pub struct Points {
    pub stack: String,
    pub file_system: String,
    pub recovery_points: Vec<RecoveryPoint>,
}

async fn list(global: &GlobalArgs, json: bool) -> CliResult {
    let printer = Printer::new(global, false);
    let Reached { stack, recorded, ctx } = reach(global, &printer).await?;
    let Some(arn) = recorded.resources.get(crate::keys::FILE_SYSTEM).and_then(|r| r.attr("arn")).map(str::to_string)
    else {
        return Err(Diagnostic::new(format!("stack {stack} has no file system recorded")).into());
    };
    let points = points(&ctx, &recorded).await?;
    if json {
        printer.json("backups", &Points { stack, file_system: arn, recovery_points: points })?;
        return Ok(ExitStatus::Success);
    }
    if points.is_empty() {
        printer
            .out(&format!("no backups of {} yet; `gitlab-provision backup` takes one", crate::printer::short_id(&arn)));
        return Ok(ExitStatus::Success);
    }
    let rows: Vec<Vec<String>> = points
        .iter()
        .map(|p| {
            vec![
                p.id.clone(),
                minute_utc(&p.created),
                p.version.clone().unwrap_or_else(|| "?".into()),
                human_bytes(p.bytes),
                if p.on_demand { "backup".into() } else { "daily".into() },
                p.status.to_lowercase(),
                crate::printer::short_id(&p.file_system),
                p.vault.clone(),
            ]
        })
        .collect();
    // With the database on RDS, the snapshot that goes with each point.
    let mut headers = vec!["ID", "CREATED", "GITLAB", "SIZE", "BY", "STATUS", "OF", "VAULT"];
    let mut rows = rows;
    if points.iter().any(|p| p.database_snapshot.is_some()) {
        headers.push("DATABASE");
        for (row, point) in rows.iter_mut().zip(&points) {
            row.push(point.database_snapshot.clone().unwrap_or_else(|| "-".into()));
        }
    }
    printer.out(&table(&headers, &rows));
    printer.note("`gitlab-provision restore ID` brings one back, with the GitLab version that wrote it");
    Ok(ExitStatus::Success)
}
