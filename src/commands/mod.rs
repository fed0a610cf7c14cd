//! One file per subcommand; shared helpers here.

pub mod down;
pub mod password;
pub mod plan;
pub mod status;
pub mod up;

use std::fmt::Write as _;
use std::sync::Arc;

use crate::aws::{self, Tags};
use crate::cli::{Cli, Command, GlobalArgs};
use crate::config::{self, ConfigError, Settings, StackConfig};
use crate::steps::Ctx;

/// A mistake by the user (not AWS's or ours): exit status 2, like usage and config errors.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UserError(pub String);

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let global = cli.global;
    match cli.command {
        Command::Up(args) => up::run(&global, args).await,
        Command::Down(args) => down::run(&global, args).await,
        Command::Status(args) => status::run(&global, args).await,
        Command::Plan(args) => plan::run(&global, args).await,
        Command::Password => password::run(&global).await,
    }
}

/// The config file, with the global flags on top.
fn file_settings(global: &GlobalArgs) -> Result<Settings, ConfigError> {
    let file = config::load_file(global.config.as_deref())?;
    Ok(file.overlay(Settings { stack: global.stack.clone(), region: global.region.clone(), ..Default::default() }))
}

/// The full configuration for `up` and `plan`: file, global flags, then the command's flags.
fn stack_config(global: &GlobalArgs, flags: Settings) -> Result<StackConfig, ConfigError> {
    config::validate(&file_settings(global)?.overlay(flags))
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

async fn context(stack: &str, region: Option<&str>, profile: Option<&str>) -> anyhow::Result<Arc<Ctx>> {
    let clients = aws::load(region, profile).await?;
    Ok(Arc::new(Ctx { aws: clients, tags: Tags { stack: stack.to_string() } }))
}

/// Where users reach GitLab, from what the state records.
pub fn gitlab_url(records: &std::collections::BTreeMap<String, crate::state::ResourceRecord>) -> Option<String> {
    use crate::steps::{dns::KEY_ALIAS_RECORD, load_balancer::KEY_LOAD_BALANCER};
    if let Some(name) = records.get(KEY_ALIAS_RECORD).and_then(|r| r.attr("name")) {
        return Some(format!("https://{}", name.trim_end_matches('.')));
    }
    records.get(KEY_LOAD_BALANCER).and_then(|r| r.attr("dns_name")).map(|dns| format!("http://{dns}"))
}

/// A plain text table: columns padded to their widest cell.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let text: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        let _ = writeln!(out, "{}", text.join("  ").trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
    out
}
