//! `up`: create or converge the stack (`ops::converge`), optionally wait for GitLab, and say
//! where it is.

use std::sync::Arc;

use serde::Serialize;

use crate::aws::Ctx;
use crate::cli::{GlobalArgs, UpArgs};
use crate::config::StackConfig;
use crate::engine::Interrupt;
use crate::exit::{CliError, CliResult, ExitStatus};
use crate::ops::check_writable;
use crate::ops::converge::{Converge, converge, wait_healthy};
use crate::ops::stack::{
    Configured, Opened, clone_url, gitlab_url, open_to_converge, password_command, record_settings, ssh_endpoint,
    stack_config,
};
use crate::printer::{Printer, shown};
use crate::state::{self, StateHandle};

pub async fn run(global: &GlobalArgs, args: UpArgs, interrupt: Interrupt) -> CliResult {
    let Configured { cfg, contradicted_tag: contradicted, applied } = stack_config(global, args.settings)?;
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
    let options = Converge {
        global,
        yes: args.yes,
        force_version: args.force_version,
        timings: args.timings.clone(),
        interrupt,
        during_operation: false,
    };
    let converged = converge(&ctx, &state, cfg.clone(), &printer, &options).await?;
    record_settings(&state, &applied)?;
    if args.wait {
        wait_healthy(&ctx, &state, &printer).await?;
    }
    report_up(global, &ctx, &state, &cfg, &printer, converged.changed, args.wait)?;
    Ok(ExitStatus::Success)
}

#[derive(Serialize)]
struct UpResult {
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
}

fn report_up(
    global: &GlobalArgs,
    ctx: &Ctx,
    state: &StateHandle,
    cfg: &StackConfig,
    printer: &Printer,
    changed: bool,
    waited: bool,
) -> Result<(), CliError> {
    let snapshot = state.snapshot();
    let state_file = state::state_path(&global.state_dir, &cfg.stack).display().to_string();
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
    };
    printer.json_if_events("up", &result)?;
    printer.out(&format!(
        "stack {} is up in {}: {} resources recorded in {state_file}",
        cfg.stack,
        ctx.region(),
        snapshot.resources.len()
    ));
    if let Some(url) = url {
        printer.out(&format!("GitLab:   {url}"));
        printer.out(&format!("user:     root ({})", shown(&cfg.gitlab_root_email)));
        printer.out(&format!("password: {}", result.password_command));
        if let Some(ssh) = ssh {
            printer.out(&format!("clone:    {ssh}"));
        }
        if !waited && changed {
            printer.note("GitLab's first boot on EFS takes 10-20 minutes; `gitlab-provision status` shows its progress (or use up --wait)");
        }
    }
    Ok(())
}
