//! One file per subcommand; what several share is here.

pub mod backup;
pub mod down;
pub mod exec;
pub mod init;
pub mod list;
pub mod logs;
pub mod password;
pub mod plan;
pub mod restore;
pub mod status;
pub mod up;
pub mod upgrade;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;

use anyhow::Context as _;

use crate::aws::{self, Ctx, Tags};
use crate::cli::{Cli, Command, GlobalArgs};
use crate::config::{self, ConfigError, Settings, StackConfig, TagSource};
use crate::engine::{Interrupt, RunReport};
use crate::exit::{CliError, CliResult, Diagnostic, ExitStatus};
use crate::keys;
use crate::printer::Printer;
pub use crate::printer::{short_id, shorten_arns};
use crate::state::{ResourceRecord, State};

pub async fn run(cli: Cli, interrupt: Interrupt) -> CliResult {
    let global = cli.global;
    match cli.command {
        Command::Up(args) => up::run(&global, args, interrupt).await,
        Command::Down(args) => down::run(&global, args, interrupt).await,
        Command::Status(args) => status::run(&global, args).await,
        Command::Plan(args) => plan::run(&global, args).await,
        Command::Password => password::run(&global).await,
        Command::Upgrade(args) => upgrade::run(&global, args, interrupt).await,
        Command::Backup(args) => backup::run(&global, args).await,
        Command::Restore(args) => restore::run(&global, args, interrupt).await,
        Command::Logs(args) => logs::run(&global, args, interrupt).await,
        Command::Exec(args) => exec::run(&global, Some(args.command)).await,
        Command::Shell => exec::run(&global, None).await,
        Command::Init(args) => init::run(&global, args),
        Command::List(args) => list::run(&global, args),
        Command::Completions(args) => {
            let mut command = <Cli as clap::CommandFactory>::command();
            let mut script = Vec::new();
            clap_complete::generate(args.shell, &mut command, "gitlab-provision", &mut script);
            crate::printer::write_stdout(&String::from_utf8_lossy(&script));
            Ok(ExitStatus::Success)
        }
    }
}

/// The config file, with the global flags on top.
fn file_settings(global: &GlobalArgs) -> Result<Settings, ConfigError> {
    let file = config::load_file(global.config.as_deref())?;
    Ok(file.overlay(Settings { stack: global.stack.clone(), region: global.region.clone(), ..Default::default() }))
}

/// The configuration of `up` and `plan`.
struct Configured {
    cfg: StackConfig,
    /// The file's image tag, when a flag gave another one.
    contradicted_tag: Option<String>,
    /// The settings as given (file, global flags, the command's flags), before defaults.
    applied: Settings,
}

/// The full configuration for `up` and `plan`: file, global flags, then the command's flags.
fn stack_config(global: &GlobalArgs, flags: Settings) -> Result<Configured, ConfigError> {
    let file = file_settings(global)?;
    let file_tag = file.gitlab_image_tag.clone();
    let flag_tag = flags.gitlab_image_tag.is_some();
    let applied = file.overlay(flags);
    let mut cfg = config::validate(&applied)?;
    if flag_tag {
        cfg.tag_source = TagSource::Flag;
    }
    let contradicted_tag = file_tag.filter(|t| flag_tag && *t != cfg.gitlab_image_tag);
    Ok(Configured { cfg, contradicted_tag, applied })
}

/// The configuration day-two commands (upgrade, restore) converge with: what `up` last applied,
/// under the file's current settings (so a stack made with flags alone needs no file).
fn recorded_config(global: &GlobalArgs, recorded: &State) -> Result<StackConfig, ConfigError> {
    let applied: Settings = recorded.settings.clone().and_then(|v| serde_json::from_value(v).ok()).unwrap_or_default();
    config::validate(&applied.overlay(file_settings(global)?))
}

/// Remembers what `up` applied, for day-two commands (the image tag excepted: the running
/// version is the task definition's).
fn record_settings(state: &crate::state::StateHandle, applied: &Settings) -> Result<(), CliError> {
    let settings = serde_json::to_value(Settings { gitlab_image_tag: None, ..applied.clone() })
        .map_err(|e| CliError::failure(anyhow::Error::from(e)))?;
    state.update(|s| s.settings = Some(settings), false)?;
    Ok(())
}

/// Only the stack name (and an explicit region), for commands that work from the state.
fn stack_name(global: &GlobalArgs) -> Result<(String, Option<String>), ConfigError> {
    let settings = file_settings(global)?;
    let stack = settings.stack.unwrap_or_else(|| config::DEFAULT_STACK.to_string());
    config::check_stack_name(&stack).map_err(|problem| {
        ConfigError::Invalid(vec![config::Invalid {
            key: "stack".into(),
            problem,
            help: "use 1-32 characters of a-z, 0-9 and '-', starting with a letter".into(),
        }])
    })?;
    Ok((stack, settings.region))
}

/// The stack's recorded state, for commands that act on a stack `up` made.
fn recorded_stack(global: &GlobalArgs, stack: &str) -> Result<State, CliError> {
    match crate::state::read(&global.state_dir, stack)? {
        Some(state) if !state.resources.is_empty() => Ok(state),
        _ => Err(Diagnostic::new(format!("stack {stack} has nothing recorded in {}", global.state_dir.display()))
            .with_help("run `gitlab-provision up` first (or pass --state-dir)")
            .into()),
    }
}

/// Refuses to start a day-two operation while another one (backup, restore, upgrade) is
/// half done: each must be finished by running it again before another begins.
fn refuse_other_operation(state: &State, kind: &str) -> Result<(), CliError> {
    match state.operation.as_ref().filter(|o| o.kind != kind) {
        Some(op) => Err(Diagnostic::new(format!("a {} is in progress (phase {})", op.kind, op.phase))
            .with_help(format!("run `gitlab-provision {}` again to finish it first", op.kind))
            .into()),
        None => Ok(()),
    }
}

/// Asks before something that interrupts GitLab or cannot be undone. `--yes` skips the
/// question; without a terminal there is no one to ask, so the run stops and says how to
/// proceed (`help`) before anything was done.
fn confirm(printer: &Printer, what: &str, question: &str, yes: bool, help: &str) -> Result<(), CliError> {
    if yes {
        return Ok(());
    }
    if !printer.can_ask() {
        return Err(Diagnostic::new(format!("{what}\nnothing was done")).with_help(help).into());
    }
    printer.warn(what);
    let answer = printer.ask(&format!("{} [y/N]", printer.paint(question, crate::printer::Tone::Bold)))?;
    if matches!(answer.to_ascii_lowercase().as_str(), "y" | "yes") {
        Ok(())
    } else {
        Err(Diagnostic::new("nothing was done").into())
    }
}

/// Signs in, and binds the run to the account the stack lives in: another account's
/// credentials are refused before any other call. Says where the run works and as whom.
async fn connect(
    global: &GlobalArgs,
    stack: &str,
    region: Option<&str>,
    recorded: Option<&State>,
    printer: &Printer,
) -> Result<Arc<Ctx>, CliError> {
    let (clients, identity) = aws::connect(region, global.profile.as_deref()).await?;
    if let Some(state) = recorded
        && let Some(account) = &state.account
        && *account != identity.account
    {
        return Err(Diagnostic::new(format!(
            "stack {stack} lives in AWS account {account}, but these credentials are of account {} ({}); nothing was read or changed, the state is untouched",
            identity.account, identity.arn
        ))
        .with_help(format!(
            "use credentials of account {account} (e.g. --profile NAME), or another --state-dir for a stack in account {}",
            identity.account
        ))
        .into());
    }
    printer.heading(&format!(
        "stack {stack} · {} · account {} as {}",
        clients.region,
        identity.account,
        short_arn(&identity.arn)
    ));
    let tags = Tags { stack: stack.to_string(), region: clients.region.clone() };
    Ok(Arc::new(Ctx { aws: clients, tags, account: Some(identity) }))
}

/// "assumed-role/Admin/alice" rather than the whole ARN.
fn short_arn(arn: &str) -> &str {
    arn.split_once(":assumed-role/").map(|(_, r)| r).or_else(|| arn.rsplit(':').next()).unwrap_or(arn)
}

/// Records the account the stack lives in, the first time a run that may write sees it.
fn bind_account(state: &crate::state::StateHandle, ctx: &Ctx) -> Result<(), CliError> {
    if let Some(identity) = &ctx.account {
        state.update(
            |s| {
                s.account.get_or_insert_with(|| identity.account.clone());
                s.partition.get_or_insert_with(|| identity.partition.clone());
            },
            false,
        )?;
    }
    Ok(())
}

/// Where users reach GitLab, from what the state records.
pub fn gitlab_url(records: &BTreeMap<String, ResourceRecord>) -> Option<String> {
    if let Some(name) = records.get(keys::DNS_ALIAS).and_then(|r| r.attr("name")) {
        return Some(format!("https://{}", name.trim_end_matches('.')));
    }
    records.get(keys::LOAD_BALANCER).and_then(|r| r.attr("dns_name")).map(|dns| format!("http://{dns}"))
}

/// Where developers reach Git over SSH: host and port.
pub fn ssh_endpoint(records: &BTreeMap<String, ResourceRecord>) -> Option<(String, u16)> {
    let listener = records.get(keys::LISTENER_SSH)?;
    let port = listener.attr("port")?.parse().ok()?;
    let host = match records.get(keys::DNS_SSH).and_then(|r| r.attr("name")) {
        Some(name) => name.trim_end_matches('.').to_string(),
        None => records.get(keys::SSH_LOAD_BALANCER)?.attr("dns_name")?.to_string(),
    };
    Some((host, port))
}

/// How a clone URL looks: `git@HOST:group/project.git`, or with the port when it is not 22.
pub fn clone_url(host: &str, port: u16) -> String {
    if port == 22 {
        format!("git@{host}:group/project.git")
    } else {
        format!("ssh://git@{host}:{port}/group/project.git")
    }
}

/// The command to get the password, with the state directory when it is not the default.
fn password_command(global: &GlobalArgs, stack: &str) -> String {
    let mut command = format!("gitlab-provision password --stack {stack}");
    if global.state_dir != std::path::Path::new("state") {
        let _ = write!(command, " --state-dir {}", global.state_dir.display());
    }
    command
}

/// A plain text table: columns padded to their widest cell.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(visible_len(cell));
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let text: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c}{}", " ".repeat(w.saturating_sub(visible_len(c)))))
            .collect();
        let _ = writeln!(out, "{}", text.join("  ").trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
    out
}

/// Characters on screen, not counting colour codes.
fn visible_len(text: &str) -> usize {
    let mut len = 0;
    let mut in_escape = false;
    for c in text.chars() {
        match (in_escape, c) {
            (false, '\x1b') => in_escape = true,
            (true, 'm') => in_escape = false,
            (true, _) => {}
            (false, _) => len += 1,
        }
    }
    len
}

/// Checks before any work that a file can be written there (`--timings`), by writing what a
/// run that takes no step reports: the file is valid JSON whichever way the run ends.
fn check_writable(path: Option<&std::path::Path>) -> Result<(), CliError> {
    let Some(path) = path else { return Ok(()) };
    write_timings(path, &RunReport::default()).map_err(|e| {
        CliError::usage(
            Diagnostic::new(format!(
                "--timings {}: cannot write there ({}); nothing was done",
                path.display(),
                e.root_cause()
            ))
            .with_help("name a file in a directory that exists and is writable"),
        )
    })
}

/// Each step's start, finish and what it waited for, as JSON (`--timings`).
fn write_timings(path: &std::path::Path, report: &RunReport) -> anyhow::Result<()> {
    let json = serde_json::to_vec_pretty(report)?;
    std::fs::write(path, json).with_context(|| format!("writing timings to {}", path.display()))
}

/// Escapes what the user typed before it reaches a terminal.
pub fn shown(text: &str) -> String {
    if text.chars().any(char::is_control) { format!("{text:?}") } else { text.to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arns_shorten_to_their_resource() {
        assert_eq!(
            short_id("arn:aws:elasticloadbalancing:us-east-1:123:loadbalancer/app/web/abc"),
            "loadbalancer/…/web/abc"
        );
        assert_eq!(
            short_id("arn:aws:elasticloadbalancing:us-east-1:123:listener/app/web/abc/def"),
            "listener/…/abc/def"
        );
        assert_eq!(
            short_id("arn:aws:ecs:us-east-1:123:task-definition/calm-gitlab:1"),
            "task-definition/calm-gitlab:1"
        );
        assert_eq!(short_id("vpc-1"), "vpc-1");
        assert_eq!(
            shorten_arns(
                "arn:aws:ecs:r:1:service/calm/gitlab: task_definition arn:aws:ecs:r:1:task-definition/calm-gitlab:1 -> x"
            ),
            "service/calm/gitlab: task_definition task-definition/calm-gitlab:1 -> x"
        );
        assert_eq!(short_arn("arn:aws:sts::123:assumed-role/Admin/alice"), "Admin/alice");
    }

    #[test]
    fn clone_urls_carry_a_port_only_when_it_is_not_22() {
        assert_eq!(clone_url("ssh.git.example.com", 22), "git@ssh.git.example.com:group/project.git");
        assert_eq!(clone_url("nlb.example", 2222), "ssh://git@nlb.example:2222/group/project.git");
    }
}
