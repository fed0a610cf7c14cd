//! An upgrade along GitLab's path: a consistent backup first (GitLab stays stopped after it, the
//! next version starts it), then each hop deployed and waited for until healthy, the hops in the
//! journal so a run that dies continues where it stopped.

use std::sync::Arc;

use super::backup::{BackupOptions, take};
use super::converge::{Converge, converge, wait_healthy};
use super::journal::{Journal, UpgradeJournal};
use super::stack::Opened;
use crate::cli::GlobalArgs;
use crate::config::{StackConfig, TagSource};
use crate::exit::{CliError, Diagnostic};
use crate::gitlab_version::{Hop, UpgradePath, Version, VersionError};
use crate::printer::Printer;
use crate::state::now_rfc3339;

/// The versions to deploy, in order, from what runs to `to` through the given stops; every
/// consecutive pair must be a valid single hop, and each stop given at least the latest patch
/// this build knows of it (GitLab asks for a stop's latest patch).
pub fn hops(path: &UpgradePath, running: Version, to: Version, via: &[Version]) -> Result<Vec<Version>, VersionError> {
    let mut hops: Vec<Version> = via.to_vec();
    hops.push(to);
    let mut from = running;
    for &hop in &hops {
        if hop != to {
            path.check_stop_patch(hop)?;
        }
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

/// Asked between hops, with the hop deployed and the rest: go on (background migrations done)?
pub type GoOn<'a> = dyn Fn(Version, &[Version]) -> Result<bool, CliError> + Sync + 'a;

/// What a hop changes and asks.
pub struct Hops<'a> {
    pub global: &'a GlobalArgs,
    pub cfg: StackConfig,
    pub hops: Vec<Version>,
    pub backup: Option<BackupOptions>,
    pub interrupt: crate::engine::Interrupt,
    /// Asked between hops: go on (background migrations finished)?
    pub go_on: &'a GoOn<'a>,
}

/// What an upgrade did.
#[derive(Debug, serde::Serialize, schemars::JsonSchema)]
pub struct Upgraded {
    /// The versions deployed, in order, each healthy before the next.
    pub deployed: Vec<String>,
    /// The backup taken first.
    pub backup: Option<super::backup::Taken>,
    /// Where it stopped when it did not reach the last hop (asked to, or told to stop).
    pub stopped_at: Option<String>,
}

/// Runs the hops, the backup first; resumes the journal's when one is recorded.
pub async fn upgrade(opened: &Opened, printer: &Arc<Printer>, plan: Hops<'_>) -> Result<Upgraded, CliError> {
    let (ctx, state) = (&opened.ctx, &opened.state);
    // A run that died: its backup (if it made one) is not taken twice; the hops are recomputed
    // from what runs now.
    let previous = match Journal::current(state)? {
        Some(Journal::Upgrade(journal)) => Some(journal),
        Some(Journal::Backup(b)) if b.for_upgrade => None,
        Some(other) => return Err(super::backup::other_operation(&other)),
        None => None,
    };
    let mut journal = UpgradeJournal {
        started_at: previous.as_ref().map_or_else(now_rfc3339, |p| p.started_at.clone()),
        hops: plan.hops.iter().map(ToString::to_string).collect(),
        done: 0,
        backup: previous.and_then(|p| p.backup),
    };
    let mut taken = None;
    if plan.backup.is_some() && journal.backup.is_none() {
        // The backup keeps its own journal while it runs.
        Journal::write(state, None).await?;
    }
    if let Some(options) = plan.backup.as_ref().filter(|_| journal.backup.is_none()) {
        // A consistent backup: GitLab stays stopped, and the first hop starts the new version.
        let made = take(opened, printer, options).await?;
        printer.note(&format!(
            "backed up GitLab {} before upgrading: {} (`gitlab-provision restore` brings it back, with that version)",
            made.version.as_deref().unwrap_or("?"),
            made.recovery_point
        ));
        journal.backup = Some(made.recovery_point.clone());
        taken = Some(made);
    }
    Journal::write(state, Some(&Journal::Upgrade(journal.clone()))).await?;
    // After the backup (a sleeping GitLab's is consistent without a stop): an upgrade is waited
    // for until healthy, so it wakes GitLab.
    super::sleep::end_for(opened, printer, "the upgrade").await?;
    let options = Converge::confirmed(plan.global, plan.interrupt.clone());
    let all: Vec<Version> = journal.hops.iter().filter_map(|h| Version::parse(h)).collect();
    let mut deployed = Vec::new();
    for (i, hop) in all.iter().enumerate().skip(journal.done) {
        let mut cfg = plan.cfg.clone();
        cfg.gitlab_image_tag = hop.to_string();
        cfg.tag_source = TagSource::Flag;
        printer.heading(&format!("hop {} of {}: GitLab {hop}", i + 1, all.len()));
        let next = format!("gitlab-provision upgrade --to {}", all.last().map(ToString::to_string).unwrap_or_default());
        converge(ctx, state, cfg, printer, &options).await.map_err(|e| {
            e.with_help(format!("fix the cause and run `{next}` again to continue from where it stopped"))
        })?;
        // Started whatever converging changed: the backup left GitLab stopped.
        if let Some(cluster) = super::backup::targets(&state.snapshot())?.cluster {
            crate::steps::service::set_desired(ctx, &cluster, 1).await?;
        }
        wait_healthy(ctx, state, printer).await?;
        printer.out(&format!("GitLab {hop} runs and is healthy"));
        deployed.push(hop.to_string());
        journal.done = i + 1;
        Journal::write(state, Some(&Journal::Upgrade(journal.clone()))).await?;
        if let Some(rest) = all.get(i + 1..).filter(|r| !r.is_empty())
            && !(plan.go_on)(*hop, rest)?
        {
            Journal::write(state, None).await?;
            return Ok(Upgraded { deployed, backup: taken, stopped_at: Some(hop.to_string()) });
        }
    }
    Journal::write(state, None).await?;
    Ok(Upgraded { deployed, backup: taken, stopped_at: None })
}

/// For `up`, an upgrade whose run died: `up` converges onto the version that runs (GitLab
/// started again if the upgrade's backup stopped it); the rest of the path is the user's to resume.
pub fn settle_dead(printer: &Printer, journal: &UpgradeJournal) -> Result<(), Diagnostic> {
    let rest: Vec<&String> = journal.hops.iter().skip(journal.done).collect();
    if let Some(last) = rest.last() {
        printer.warn(&format!(
            "an interrupted upgrade stopped before {}; `up` keeps the version that runs, and `gitlab-provision upgrade --to {last}` goes on",
            rest.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
        ));
    }
    Ok(())
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

    #[test]
    fn a_stop_at_an_early_patch_is_refused_with_the_latest_known_one() {
        let path = UpgradePath::shipped();
        let err = hops(&path, v("18.1.0-ce.0"), v("18.3.0-ce.0"), &[v("18.2.0-ce.0")]).unwrap_err();
        assert!(matches!(err, VersionError::EarlyPatch { .. }), "{err}");
        assert!(err.to_string().contains("18.2.8"), "{err}");
        assert!(hops(&path, v("18.1.0-ce.0"), v("18.3.0-ce.0"), &[v("18.2.8-ce.0")]).is_ok());
    }
}
