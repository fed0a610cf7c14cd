//! `upgrade --to`: along GitLab's upgrade path, one required stop at a time: a backup first,
//! then each hop deployed and waited for, with the background migrations' go between hops
//! (`ops::upgrade`).

use std::sync::Arc;

use crate::cli::{GlobalArgs, UpgradeArgs};
use crate::engine::Interrupt;
use crate::exit::{CliError, CliResult, Diagnostic, ExitStatus};
use crate::gitlab_version::{UpgradePath, Version};
use crate::ops::backup::BackupOptions;
use crate::ops::confirm;
use crate::ops::stack::{located, open, recorded_config};
use crate::ops::upgrade::{Hops, hops, upgrade};
use crate::ops::versions::running_version;
use crate::printer::{Printer, Tone};

fn parse(flag: &str, tag: &str) -> Result<Version, CliError> {
    Version::parse(tag).ok_or_else(|| {
        CliError::usage(
            Diagnostic::new(format!("{flag} {tag:?} is not a gitlab-ce release tag"))
                .with_help("write it like 19.5.2-ce.0"),
        )
    })
}

pub async fn run(global: &GlobalArgs, args: UpgradeArgs, interrupt: Interrupt) -> CliResult {
    let to = parse("--to", &args.to)?;
    let via = args.via.iter().map(|v| parse("--via", v)).collect::<Result<Vec<_>, _>>()?;
    let start_within = humantime::parse_duration(&args.start_within).map_err(|e| {
        Diagnostic::new(format!("--start-within {:?}: {e}", args.start_within))
            .with_help("write a duration like 15m or 1h")
    })?;
    let printer = Arc::new(Printer::new(global, args.json));
    let (_, recorded) = located(global).await?;
    let Some(running) = running_version(&recorded.resources) else {
        return Err(Diagnostic::new("the stack records no running GitLab version (no task definition)")
            .with_help("run `gitlab-provision up` first")
            .into());
    };
    let path = UpgradePath::shipped();
    let hops = hops(&path, running, to, &via).map_err(CliError::usage)?;
    if hops.is_empty() {
        printer.out(&format!("GitLab {running} already runs; nothing to do"));
        return Ok(ExitStatus::Success);
    }
    let mut shown = vec![running.to_string()];
    shown.extend(hops.iter().map(ToString::to_string));
    printer.heading(&format!(
        "upgrade path: {} (stops from {}, as of {})",
        shown.join(" -> "),
        path.source,
        path.as_of
    ));
    for hop in hops.iter().filter(|h| path.is_stop(**h) && path.latest_patch(**h).is_none()) {
        printer.note(&format!(
            "this build does not know the latest {}.{} patch: check https://hub.docker.com/r/gitlab/gitlab-ce/tags that {hop} is it",
            hop.major, hop.minor
        ));
    }
    if args.plan {
        printer.out(&upgrade_plan(&hops, args.no_backup, recorded.resources.contains_key(crate::keys::DB_INSTANCE)));
        return Ok(ExitStatus::Success);
    }
    let cfg = recorded_config(global, &recorded)?;
    let opened = open(global, &printer, "upgrade").await?;
    confirm_upgrade(&printer, hops.len(), args.no_backup, args.yes)?;
    let go_on = |hop: Version, rest: &[Version]| go_on(&printer, &args, to, hop, rest);
    // On RDS the backup is taken while GitLab runs (the database's snapshot is consistent by
    // itself); the upgrade's own restart is the only downtime.
    let on_rds = recorded.resources.contains_key(crate::keys::DB_INSTANCE);
    let backup = (!args.no_backup).then(|| BackupOptions {
        consistent: !on_rds,
        start_within,
        for_upgrade: true,
        interrupt: interrupt.clone(),
    });
    let upgraded = upgrade(&opened, &printer, Hops { global, cfg, hops, backup, interrupt, go_on: &go_on }).await?;
    printer.json_if_events("upgrade", &upgraded)?;
    if upgraded.stopped_at.is_none() {
        printer.note(&format!(
            "GitLab {to} runs; if gitlab-provision.toml sets gitlab_image_tag, set it to \"{to}\" (without it, `up` keeps what runs)"
        ));
    }
    Ok(ExitStatus::Success)
}

/// Between hops: go on once GitLab's background migrations have finished, as the user says.
fn go_on(printer: &Printer, args: &UpgradeArgs, to: Version, hop: Version, rest: &[Version]) -> Result<bool, CliError> {
    let next = format!(
        "gitlab-provision upgrade --to {to}{}",
        rest[..rest.len() - 1].iter().map(|v| format!(" --via {v}")).collect::<String>()
    );
    let rest_list = rest.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
    if args.one_step {
        printer.note(&format!("stopped after one hop (--one-step); next: {} ; then run `{next}`", migrations_hint()));
        return Ok(false);
    }
    if args.yes {
        printer.warn(&format!("going on to {rest_list} without checking GitLab's background migrations (--yes)"));
        return Ok(true);
    }
    if !printer.can_ask() {
        printer.note(&format!(
            "before {} its background migrations must finish: {}; then run `{next}`",
            rest[0],
            migrations_hint()
        ));
        return Ok(false);
    }
    printer.note(&format!(
        "before {} GitLab's background migrations must finish; this tool cannot see them without a GitLab token: {}",
        rest[0],
        migrations_hint()
    ));
    let answer = printer.ask(&format!(
        "{} ",
        printer.paint("Type continue once none are pending (anything else stops here):", Tone::Bold)
    ))?;
    if answer != "continue" {
        printer.note(&format!("stopped at {hop}; run `{next}` to go on"));
        return Ok(false);
    }
    Ok(true)
}

/// What `upgrade` would do, step by step, for `--plan`.
fn upgrade_plan(hops: &[Version], no_backup: bool, on_rds: bool) -> String {
    let mut lines = vec!["the upgrade would:".to_string()];
    if !no_backup && on_rds {
        lines.push("  - take an online backup while GitLab runs: an RDS snapshot of the database and an AWS Backup job of the file system, one backup".into());
    } else if !no_backup {
        lines.push("  - stop GitLab and take a consistent backup (AWS Backup, into the stack's vault)".into());
    }
    for (i, hop) in hops.iter().enumerate() {
        lines.push(format!(
            "  - hop {} of {}: register a task definition revision with GitLab {hop}; the service stops the running task, then starts the new one (minutes of downtime); wait until the load balancer reports GitLab healthy",
            i + 1,
            hops.len()
        ));
        if i + 1 < hops.len() {
            lines.push(format!(
                "  - wait for your go once GitLab {hop}'s background migrations have finished ({})",
                migrations_hint()
            ));
        }
    }
    lines.push("nothing was changed; run it without --plan to upgrade".into());
    lines.join("\n")
}

fn migrations_hint() -> &'static str {
    "check Admin > Monitoring > Background migrations, or `gitlab-provision exec -- gitlab-rake gitlab:background_migrations:status`"
}

fn confirm_upgrade(printer: &Printer, hops: usize, no_backup: bool, yes: bool) -> Result<(), CliError> {
    let what = format!(
        "the upgrade {}restarts GitLab {} (minutes of downtime each)",
        if no_backup { "" } else { "stops GitLab for a backup first, then " },
        crate::engine::counted(hops, "time")
    );
    confirm(printer, &what, "Go ahead?", yes, "pass --yes to proceed without a terminal")
}
