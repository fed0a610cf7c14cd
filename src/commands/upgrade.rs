//! `upgrade --to`: along GitLab's upgrade path, one required stop at a time: a backup first,
//! then each hop deployed and waited for, with the background migrations' go between hops.

use std::sync::Arc;

use crate::cli::{GlobalArgs, UpgradeArgs};
use crate::config::TagSource;
use crate::engine::Interrupt;
use crate::exit::{CliError, CliResult, Diagnostic, ExitStatus};
use crate::gitlab_version::{Hop, UpgradePath, Version, VersionError};
use crate::ops::confirm;
use crate::ops::stack::{connect, recorded_config, recorded_stack, refuse_other_operation, stack_name};
use crate::printer::{Printer, Tone};
use crate::state::{LockedState, StateHandle};

/// The versions to deploy, in order, from what runs to `to` through the given stops; every
/// consecutive pair must be a valid single hop.
pub fn hops(path: &UpgradePath, running: Version, to: Version, via: &[Version]) -> Result<Vec<Version>, VersionError> {
    let mut hops: Vec<Version> = via.to_vec();
    hops.push(to);
    let mut from = running;
    for &hop in &hops {
        match path.check(from, hop) {
            Ok(Hop::Upgrade) => from = hop,
            Ok(Hop::Same) => {}
            // The whole journey's stops, so the message names every --via it needs.
            Err(VersionError::AcrossStops { .. }) => {
                return Err(VersionError::AcrossStops { from: running, to, stops: path.stops_between(running, to) });
            }
            Err(e) => return Err(e),
        }
    }
    hops.retain(|v| *v != running);
    Ok(hops)
}

fn parse(flag: &str, tag: &str) -> Result<Version, CliError> {
    Version::parse(tag).ok_or_else(|| {
        CliError::usage(
            Diagnostic::new(format!("{flag} {tag:?} is not a gitlab-ce release tag"))
                .with_help("write it like 19.5.2-ce.0"),
        )
    })
}

pub async fn run(global: &GlobalArgs, args: UpgradeArgs, interrupt: Interrupt) -> CliResult {
    let (stack, _) = stack_name(global)?;
    let to = parse("--to", &args.to)?;
    let via = args.via.iter().map(|v| parse("--via", v)).collect::<Result<Vec<_>, _>>()?;
    let printer = Arc::new(Printer::new(global, false));
    let recorded = recorded_stack(global, &stack)?;
    refuse_other_operation(&recorded, "backup")?;
    let Some(running) = crate::ops::plan::running_version(&recorded.resources) else {
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
    if args.plan {
        printer.out(&upgrade_plan(&hops, args.no_backup));
        return Ok(ExitStatus::Success);
    }
    let mut cfg = recorded_config(global, &recorded)?;
    let ctx = connect(global, &stack, Some(&recorded.region), Some(&recorded), &printer).await?;
    confirm_upgrade(&printer, hops.len(), args.no_backup, args.yes)?;
    let locked = LockedState::open(&global.state_dir, &stack, ctx.region(), "upgrade")?;
    let state = StateHandle::new(locked);
    if !args.no_backup {
        // A consistent backup: GitLab stays stopped, and the first hop starts the new version.
        let (point, _) = super::backup::take(&ctx, &state, &printer, false, false).await?;
        printer.note(&format!("backed up before upgrading: {point} (`gitlab-provision restore` brings it back)"));
    }
    let options = crate::ops::converge::Converge::confirmed(global, interrupt, false);
    for (i, hop) in hops.iter().enumerate() {
        cfg.gitlab_image_tag = hop.to_string();
        cfg.tag_source = TagSource::Flag;
        printer.heading(&format!("hop {} of {}: GitLab {hop}", i + 1, hops.len()));
        crate::ops::converge::converge(&ctx, &state, cfg.clone(), &printer, &options).await.map_err(|e| {
            e.with_help(format!(
                "fix the cause and run `gitlab-provision upgrade --to {to}` again to continue from {}",
                current(&state)
            ))
        })?;
        crate::ops::converge::wait_healthy(&ctx, &state, &printer).await?;
        printer.out(&format!("GitLab {hop} runs and is healthy"));
        let last = i + 1 == hops.len();
        if last {
            break;
        }
        let rest: Vec<String> = hops[i + 1..].iter().map(ToString::to_string).collect();
        let next = format!(
            "gitlab-provision upgrade --to {to}{}",
            hops[i + 1..hops.len() - 1].iter().map(|v| format!(" --via {v}")).collect::<String>()
        );
        if args.one_step {
            printer
                .note(&format!("stopped after one hop (--one-step); next: {} ; then run `{next}`", migrations_hint()));
            return Ok(ExitStatus::Success);
        }
        if args.yes {
            printer.warn(&format!(
                "going on to {} without checking GitLab's background migrations (--yes)",
                rest.join(", ")
            ));
            continue;
        }
        if !printer.can_ask() {
            printer.note(&format!(
                "before {} its background migrations must finish: {}; then run `{next}`",
                rest[0],
                migrations_hint()
            ));
            return Ok(ExitStatus::Success);
        }
        printer.note(&format!("before {} GitLab's background migrations must finish; this tool cannot see them without a GitLab token: {}", rest[0], migrations_hint()));
        let answer = printer.ask(&format!(
            "{} ",
            printer.paint("Type continue once none are pending (anything else stops here):", Tone::Bold)
        ))?;
        if answer != "continue" {
            printer.note(&format!("stopped at {hop}; run `{next}` to go on"));
            return Ok(ExitStatus::Success);
        }
    }
    printer.note(&format!(
        "GitLab {to} runs; if gitlab-provision.toml sets gitlab_image_tag, set it to \"{to}\" (without it, `up` keeps what runs)"
    ));
    Ok(ExitStatus::Success)
}

/// What `upgrade` would do, step by step, for `--plan`.
fn upgrade_plan(hops: &[Version], no_backup: bool) -> String {
    let mut lines = vec!["the upgrade would:".to_string()];
    if !no_backup {
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

fn current(state: &StateHandle) -> String {
    crate::ops::plan::running_version(&state.snapshot().resources)
        .map(|v| v.to_string())
        .unwrap_or_else(|| "where it stopped".into())
}

fn migrations_hint() -> &'static str {
    "check Admin > Monitoring > Background migrations, or `gitlab-provision exec -- gitlab-rake gitlab:background_migrations:status`"
}

fn confirm_upgrade(printer: &Printer, hops: usize, no_backup: bool, yes: bool) -> Result<(), CliError> {
    let what = format!(
        "the upgrade {}restarts GitLab {hops} time(s) (minutes of downtime each)",
        if no_backup { "" } else { "stops GitLab for a backup first, then " }
    );
    confirm(printer, &what, "Go ahead?", yes, "pass --yes to proceed without a terminal")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(tag: &str) -> Version {
        Version::parse(tag).unwrap()
    }

    #[test]
    fn hops_go_through_every_stop_given() {
        let path = UpgradePath::shipped();
        assert_eq!(hops(&path, v("19.4.1-ce.0"), v("19.4.2-ce.0"), &[]).unwrap(), vec![v("19.4.2-ce.0")]);
        assert_eq!(
            hops(&path, v("19.4.1-ce.0"), v("19.9.0-ce.0"), &[v("19.5.3-ce.0"), v("19.8.1-ce.0")]).unwrap(),
            vec![v("19.5.3-ce.0"), v("19.8.1-ce.0"), v("19.9.0-ce.0")]
        );
        assert!(matches!(
            hops(&path, v("19.4.1-ce.0"), v("19.9.0-ce.0"), &[v("19.5.3-ce.0")]),
            Err(VersionError::AcrossStops { .. })
        ));
        assert!(matches!(hops(&path, v("19.4.1-ce.0"), v("19.3.0-ce.0"), &[]), Err(VersionError::Downgrade { .. })));
        assert_eq!(hops(&path, v("19.4.1-ce.0"), v("19.4.1-ce.0"), &[]).unwrap(), Vec::<Version>::new());
    }
}
