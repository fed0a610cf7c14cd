//! `up`: create or converge the stack (`ops::converge`), optionally wait for GitLab, and say
//! where it is.

use std::sync::Arc;

use serde::Serialize;

use crate::aws::Ctx;
use crate::cli::{GlobalArgs, UpArgs};
use crate::config::StackConfig;
use crate::engine::Interrupt;
use crate::exit::{CliError, CliResult, Diagnostic, ExitStatus};
use crate::ops::check_writable;
use crate::ops::converge::{Converge, converge, wait_healthy};
use crate::ops::plan::SavedPlan;
use crate::ops::stack::{
    Configured, Opened, clone_url, gitlab_url, open_to_converge, password_command, record_settings, ssh_endpoint,
    stack_config,
};
use crate::printer::{Printer, shown};
use crate::state::{self, StateHandle};

pub async fn run(global: &GlobalArgs, args: UpArgs, interrupt: Interrupt) -> CliResult {
    let saved = args.plan_file.as_deref().map(|path| load_plan(path, &args.settings)).transpose()?;
    let Configured { cfg, contradicted_tag: contradicted, applied } = match &saved {
        // A saved plan is applied with the settings it was made with, not today's file.
        Some(plan) => {
            let cfg = crate::config::validate(&plan.settings)?;
            Configured { cfg, contradicted_tag: None, applied: plan.settings.clone() }
        }
        None => stack_config(global, args.settings)?,
    };
    check_writable(args.timings.as_deref())?;
    let printer = Arc::new(Printer::new(global, args.json));
    for warning in cfg.warnings() {
        printer.warn(&warning);
    }
    if let Some(file_tag) = contradicted {
        printer.warn(&format!(
            "gitlab_image_tag {} comes from --gitlab-image-tag, but the config file says {file_tag}: once {} runs, an `up` with the file's value is refused as a downgrade; update the file",
            cfg.gitlab_image_tag, cfg.gitlab_image_tag
        ));
    }
    let Opened { ctx, state, .. } = open_to_converge(global, &cfg, &printer).await?;
    if let Some(warning) = crate::steps::cloudtrail::warning(&ctx, cfg.exec).await {
        printer.warn(&warning);
    }
    let options = Converge {
        global,
        yes: args.yes,
        force_version: args.force_version,
        timings: args.timings.clone(),
        interrupt,
        // The saved plan was the review: what it decides needs no second yes.
        expected: saved.clone(),
    };
    let options = Converge { yes: options.yes || saved.is_some(), ..options };
    let had_gitlab = state.get(crate::keys::SERVICE).is_some_and(|r| r.status == state::RecordStatus::Created);
    // A backup, restore or upgrade whose run died is finished or rolled back first: `up` is never
    // blocked by one.
    crate::ops::settle::settle_dead_operation(&ctx, &state, &printer).await?;
    let converged = converge(&ctx, &state, cfg.clone(), &printer, &options).await?;
    // The first boot (migrations, seeding) is the long one; a restart is minutes.
    let first_boot = !had_gitlab && converged.changed;
    record_settings(&state, &applied).await?;
    if args.wait {
        wait_healthy(&ctx, &state, &printer).await?;
    }
    report_up(global, &ctx, &state, &cfg, &printer, converged.changed, first_boot && !args.wait)?;
    Ok(ExitStatus::Success)
}

/// A plan `plan --out` saved: readable, and not mixed with settings given now.
fn load_plan(path: &std::path::Path, flags: &crate::config::Settings) -> Result<SavedPlan, CliError> {
    if *flags != crate::config::Settings::default() {
        return Err(Diagnostic::new(
            "`up PLAN_FILE` applies the plan's own settings; settings given as flags are not part of it",
        )
        .with_help("drop the flags, or make a new plan with them (`gitlab-provision plan --out FILE ...`)")
        .into());
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| CliError::usage(Diagnostic::new(format!("cannot read the saved plan {}: {e}", path.display()))))?;
    serde_json::from_str::<SavedPlan>(&text).map_err(|e| {
        Diagnostic::new(format!("{} is not a plan saved by `gitlab-provision plan --out` ({e})", path.display()))
            .with_help("make one with `gitlab-provision plan --out FILE`")
            .into()
    })
}

#[derive(Serialize, schemars::JsonSchema)]
pub struct UpResult {
    stack: String,
    region: String,
    account: Option<String>,
    state_file: String,
    resources: usize,
    changed: bool,
    url: Option<String>,
    ssh: Option<String>,
    user: &'static str,
    password_command: String,
    /// The GitLab version the stack now records (deployed by this run or kept).
    gitlab_version: Option<String>,
}

fn report_up(
    global: &GlobalArgs,
    ctx: &Ctx,
    state: &StateHandle,
    cfg: &StackConfig,
    printer: &Printer,
    changed: bool,
    first_boot: bool,
) -> Result<(), CliError> {
    let snapshot = state.snapshot();
    let state_file = crate::ops::stack::state_location(global, &cfg.stack);
    let url = gitlab_url(&snapshot.resources);
    let ssh = ssh_endpoint(&snapshot.resources).map(|(host, port)| clone_url(&host, port));
    let result = UpResult {
        stack: cfg.stack.clone(),
        region: ctx.region().to_string(),
        account: ctx.account.as_ref().map(|a| a.account.clone()),
        state_file: state_file.clone(),
        resources: snapshot.resources.len(),
        changed,
        url: url.clone(),
        ssh: ssh.clone(),
        user: "root",
        password_command: password_command(global, &cfg.stack),
        gitlab_version: crate::ops::versions::running_version(&snapshot.resources).map(|v| v.to_string()),
    };
    printer.json_if_events("up", &result)?;
    printer.out(&format!(
        "stack {} is up in {}: {} recorded in {state_file}",
        cfg.stack,
        ctx.region(),
        crate::engine::counted(snapshot.resources.len(), "resource")
    ));
    if let Some(url) = url {
        printer.out(&format!("GitLab:   {url}"));
        printer.out(&format!("user:     root ({})", shown(&cfg.gitlab_root_email)));
        printer.out(&format!("password: {}", result.password_command));
        if let Some(ssh) = ssh {
            printer.out(&format!("clone:    {ssh}"));
        }
        if first_boot {
            printer.note("GitLab's first boot on EFS takes 10-20 minutes; `gitlab-provision status` shows its progress (or use up --wait)");
        }
    }
    Ok(())
}
