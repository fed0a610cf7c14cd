//! `restore`: a recovery point into a new file system, and GitLab switched to it with the version
//! that wrote the data (`ops::restore`).

use std::sync::Arc;

use crate::cli::{GlobalArgs, RestoreArgs};
use crate::engine::Interrupt;
use crate::exit::{CliError, CliResult, Diagnostic, ExitStatus};
use crate::gitlab_version::Version;
use crate::ops::confirm;
use crate::ops::journal::Journal;
use crate::ops::restore::{Request, choose, plan_text, restore};
use crate::ops::stack::{open, recorded_config};
use crate::printer::Printer;

pub async fn run(global: &GlobalArgs, args: RestoreArgs, interrupt: Interrupt) -> CliResult {
    let version = args
        .gitlab_version
        .as_deref()
        .map(|tag| {
            Version::parse(tag).ok_or_else(|| {
                CliError::usage(
                    Diagnostic::new(format!("--gitlab-version {tag:?} is not a gitlab-ce release tag"))
                        .with_help("write it like 19.4.1-ce.0"),
                )
            })
        })
        .transpose()?;
    let printer = Arc::new(Printer::new(global, args.json));
    let opened = open(global, &printer, "restore").await?;
    let recorded = opened.state.snapshot();
    let resuming = match Journal::read(&recorded)? {
        Some(Journal::Restore(_)) => true,
        Some(other) => return Err(crate::ops::backup::other_operation(&other)),
        None => false,
    };
    let chosen = match &args.recovery_point {
        Some(point) => Some(choose(&opened.ctx, &recorded, point, version).await?),
        None => None,
    };
    if args.plan {
        let Some(chosen) = &chosen else {
            return Err(Diagnostic::new("restore --plan needs the recovery point")
                .with_help("`gitlab-provision backup list` shows them")
                .into());
        };
        printer.out(&plan_text(&recorded, chosen));
        return Ok(ExitStatus::Success);
    }
    if let (Some(chosen), false) = (&chosen, resuming) {
        let what = format!(
            "restoring {} stops GitLab and brings back its data as it was then, with GitLab {}; what changed since is on the current file system, which is kept",
            chosen.point.id, chosen.version
        );
        confirm(&printer, &what, "Restore?", args.yes, "pass --yes to restore")?;
    }
    let cfg = recorded_config(global, &recorded)?;
    let restored = restore(&opened, &printer, Request { chosen, cfg, interrupt, global }).await?;
    printer.json_if_events("restore", &restored)?;
    printer.out(&format!(
        "restored {} into {} in {:.0}s; GitLab {} runs on it",
        restored.recovery_point, restored.file_system, restored.seconds, restored.version
    ));
    for kept in &restored.kept {
        printer.note(&format!(
            "the file system GitLab ran on before is kept as {} ({}); once you are sure, remove it with `aws efs delete-file-system --file-system-id {}`, or keep it until `gitlab-provision down`",
            kept.key, kept.file_system, kept.file_system
        ));
    }
    Ok(ExitStatus::Success)
}
