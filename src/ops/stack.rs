//! Opening a stack: its name and configuration, its recorded state, the account it lives in,
//! its lock. What every command that works on a stack does first, written once.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;

use crate::aws::{self, Ctx, Tags};
use crate::cli::GlobalArgs;
use crate::config::{self, ConfigError, Settings, StackConfig, TagSource};
use crate::exit::{CliError, Diagnostic};
use crate::keys;
use crate::printer::Printer;
use crate::state::{ResourceRecord, State, StateStore};
use crate::state_bucket::{self, S3Store, SharedStore, StateUrl};

/// The config file, with the global flags on top.
pub fn file_settings(global: &GlobalArgs) -> Result<Settings, ConfigError> {
    let file = config::load_file(global.config.as_deref())?;
    Ok(file.overlay(Settings { stack: global.stack.clone(), region: global.region.clone(), ..Default::default() }))
}

/// The configuration of `up` and `plan`.
pub struct Configured {
    pub cfg: StackConfig,
    /// The file's image tag, when a flag gave another one.
    pub contradicted_tag: Option<String>,
    /// The settings as given (file, global flags, the command's flags), before defaults.
    pub applied: Settings,
}

/// The full configuration for `up` and `plan`: file, global flags, then the command's flags.
pub fn stack_config(global: &GlobalArgs, flags: Settings) -> Result<Configured, ConfigError> {
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
pub fn recorded_config(global: &GlobalArgs, recorded: &State) -> Result<StackConfig, ConfigError> {
    let applied: Settings = recorded.settings.clone().and_then(|v| serde_json::from_value(v).ok()).unwrap_or_default();
    config::validate(&applied.overlay(file_settings(global)?))
}

/// Remembers what `up` applied, for day-two commands (the image tag excepted: the running
/// version is the task definition's).
pub async fn record_settings(state: &crate::state::StateHandle, applied: &Settings) -> Result<(), CliError> {
    let settings = serde_json::to_value(Settings { gitlab_image_tag: None, state: None, ..applied.clone() })
        .map_err(|e| CliError::failure(anyhow::Error::from(e)))?;
    state.update(|s| s.settings = Some(settings), false).await?;
    Ok(())
}

/// Only the stack name (and an explicit region), for commands that work from the state.
pub fn stack_name(global: &GlobalArgs) -> Result<(String, Option<String>), ConfigError> {
    let settings = file_settings(global)?;
    let stack = config::validate_stack_and_region(&settings)?;
    Ok((stack, settings.region))
}

/// Where the stack's state lives, when a team shares it: `--state-url` (or the environment's
/// GITLAB_PROVISION_STATE), else the config's `state`. None: the local `--state-dir`. Checked
/// before any AWS call.
pub fn state_url(global: &GlobalArgs) -> Result<Option<StateUrl>, CliError> {
    if let Some(text) = &global.state_url {
        return Ok(Some(StateUrl::parse(text, "--state-url (or GITLAB_PROVISION_STATE)")?));
    }
    Ok(file_settings(global)?.state.map(|text| StateUrl::parse(&text, "state")).transpose()?)
}

/// Where the stack's state is, for messages: the shared object's URL or the local file's path.
pub fn state_location(global: &GlobalArgs, stack: &str) -> String {
    match state_url(global) {
        Ok(Some(url)) => format!("s3://{}/{}", url.bucket, url.state_key(stack)),
        _ => crate::state::state_path(&global.state_dir, stack).display().to_string(),
    }
}

/// The run's state store, opened once: the shared bucket, or the state directory.
pub async fn store(global: &GlobalArgs) -> Result<Arc<dyn StateStore>, CliError> {
    static STORE: tokio::sync::OnceCell<Arc<dyn StateStore>> = tokio::sync::OnceCell::const_new();
    let opened = STORE
        .get_or_try_init(|| async {
            let Some(url) = state_url(global)? else {
                return Ok::<_, CliError>(crate::state::LocalStore::at(&global.state_dir));
            };
            Ok(Arc::new(shared_store(global, url).await?) as Arc<dyn StateStore>)
        })
        .await?;
    Ok(opened.clone())
}

/// The shared store at `url`, reached with the run's credentials in the bucket's region.
pub async fn shared_store(global: &GlobalArgs, url: StateUrl) -> Result<SharedStore, CliError> {
    let region = global.region.clone().or(file_settings(global)?.region);
    let s3 = state_bucket::client(&url, region.as_deref(), global.profile.as_deref()).await?;
    Ok(SharedStore(Arc::new(S3Store::new(s3, url))))
}

/// The stack's recorded state, for commands that act on a stack `up` made.
pub async fn recorded_stack(global: &GlobalArgs, stack: &str) -> Result<State, CliError> {
    let store = store(global).await?;
    match crate::state::load(store.as_ref(), stack).await? {
        Some(state) if !state.resources.is_empty() => Ok(state),
        _ => Err(Diagnostic::new(format!("stack {stack} has nothing recorded in {}", store.location(stack)))
            .with_help("run `gitlab-provision up` first (or pass --state-dir, or --state-url for a shared state)")
            .into()),
    }
}

/// Signs in, and binds the run to the account the stack lives in: another account's
/// credentials are refused before any other call. Says where the run works and as whom.
pub async fn connect(
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
    Ok(Arc::new(Ctx { aws: clients, tags, account: Some(identity), final_snapshot: true }))
}

/// "assumed-role/Admin/alice" rather than the whole ARN.
pub fn short_arn(arn: &str) -> &str {
    arn.split_once(":assumed-role/").map(|(_, r)| r).or_else(|| arn.rsplit(':').next()).unwrap_or(arn)
}

/// Records the account the stack lives in, the first time a run that may write sees it.
pub async fn bind_account(state: &crate::state::StateHandle, ctx: &Ctx) -> Result<(), CliError> {
    if let Some(identity) = &ctx.account {
        state
            .update(
                |s| {
                    s.account.get_or_insert_with(|| identity.account.clone());
                    s.partition.get_or_insert_with(|| identity.partition.clone());
                },
                false,
            )
            .await?;
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
pub fn password_command(global: &GlobalArgs, stack: &str) -> String {
    let mut command = format!("gitlab-provision password --stack {stack}");
    if let Some(url) = &global.state_url {
        let _ = write!(command, " --state-url {url}");
    } else if global.state_dir != std::path::Path::new("state") {
        let _ = write!(command, " --state-dir {}", global.state_dir.display());
    }
    command
}

/// The stack's name and what its state records, refusing a region (from `--region` or the
/// config file) that contradicts where the state says it lives: every command works on the
/// stack where it is, and says so in one line rather than reading an empty region.
pub async fn locate(global: &GlobalArgs) -> Result<(String, Option<State>), CliError> {
    let (stack, region) = stack_name(global)?;
    let store = store(global).await?;
    let recorded = crate::state::load(store.as_ref(), &stack).await?.filter(|s| !s.resources.is_empty());
    if let (Some(state), Some(region)) = (&recorded, &region)
        && state.region != *region
    {
        return Err(Diagnostic::new(format!("stack {stack} lives in {}, not {region}", state.region))
            .with_help(format!(
                "drop --region (and `region` from the config file) to work on it in {}, or use another --stack for a stack in {region}",
                state.region
            ))
            .into());
    }
    Ok((stack, recorded))
}

/// A stack `up` made, reached in its own account and region: for commands that read it.
pub struct Reached {
    pub stack: String,
    pub recorded: State,
    pub ctx: Arc<Ctx>,
}

/// The stack the flags and config name, and its state: refused when nothing is recorded.
pub async fn located(global: &GlobalArgs) -> Result<(String, State), CliError> {
    let (stack, recorded) = locate(global).await?;
    let recorded = match recorded {
        Some(state) => state,
        None => recorded_stack(global, &stack).await?,
    };
    Ok((stack, recorded))
}

/// Reaches a recorded stack (refused when nothing is recorded).
pub async fn reach(global: &GlobalArgs, printer: &Printer) -> Result<Reached, CliError> {
    let (stack, recorded) = located(global).await?;
    let ctx = connect(global, &stack, Some(&recorded.region), Some(&recorded), printer).await?;
    Ok(Reached { stack, recorded, ctx })
}

/// A recorded stack, reached and locked for a change: for day-two operations.
pub struct Opened {
    pub ctx: Arc<Ctx>,
    pub state: crate::state::StateHandle,
}

/// Reaches the stack, then locks it (a lock left by a run that died is taken over, saying so).
pub async fn open(global: &GlobalArgs, printer: &Printer, operation: &str) -> Result<Opened, CliError> {
    let Reached { stack, ctx, .. } = reach(global, printer).await?;
    let locked = crate::state::LockedState::open(store(global).await?, &stack, ctx.region(), operation).await?;
    if let Some(note) = &locked.taken_over {
        printer.note(note);
    }
    let state = crate::state::StateHandle::new(locked);
    bind_account(&state, &ctx).await?;
    Ok(Opened { ctx, state })
}

/// A stack `up` creates or converges: reached in the region the configuration names (an
/// existing stack stays where it is) and locked. Nothing need be recorded yet.
pub async fn open_to_converge(global: &GlobalArgs, cfg: &StackConfig, printer: &Printer) -> Result<Opened, CliError> {
    let (_, recorded) = locate(global).await?;
    let region = cfg.region.clone().or_else(|| recorded.as_ref().map(|s| s.region.clone()));
    let ctx = connect(global, &cfg.stack, region.as_deref(), recorded.as_ref(), printer).await?;
    let locked = crate::state::LockedState::open(store(global).await?, &cfg.stack, ctx.region(), "up").await?;
    if let Some(note) = &locked.taken_over {
        printer.note(note);
    }
    let state = crate::state::StateHandle::new(locked);
    bind_account(&state, &ctx).await?;
    Ok(Opened { ctx, state })
}

/// The note of who created the stack (the principal its resource policies never lock out).
const OPERATOR_NOTE: &str = "operator";

/// Who created the stack, as the state records it.
pub fn recorded_operator(state: &State) -> Option<String> {
    state.notes.get(OPERATOR_NOTE).and_then(|v| v.as_str()).map(str::to_string)
}

/// The stack's operator: recorded at its first `up` (these credentials' principal), then kept.
/// A run by someone who is neither the operator nor among `admin_principals` is refused: the
/// root secret and the backups are guarded against them, and converging would fail half-way.
pub async fn operator(
    ctx: &Ctx,
    state: &crate::state::StateHandle,
    admins: &[String],
) -> Result<Option<String>, CliError> {
    let me = aws::credentials::principal_arn(ctx).await?;
    let Some(operator) = recorded_operator(&state.snapshot()) else {
        let Some(me) = me else {
            // Guarding the secret and the backups with nobody named would lock everyone out.
            if admins.is_empty() {
                return Err(Diagnostic::new(
                    "these credentials' IAM principal could not be told, and admin_principals names nobody: the root secret and the backups would be guarded against everyone",
                )
                .with_help("name the role or user that administers the stack in admin_principals, and run `gitlab-provision up` again")
                .into());
            }
            return Ok(None);
        };
        // Saved with the stack's first resource (a run that creates nothing writes no state).
        state.update(|s| drop(s.notes.insert(OPERATOR_NOTE.to_string(), serde_json::json!(me))), false).await?;
        return Ok(Some(me));
    };
    if let Some(me) = me.filter(|me| *me != operator && !admins.contains(me)) {
        return Err(Diagnostic::new(format!(
            "{me} is not among the stack's admins (its operator {operator}, and admin_principals): the root secret and the backups are guarded against it"
        ))
        .with_help(format!(
            "ask an admin to add {me} to admin_principals and run `gitlab-provision up`, or use the operator's credentials"
        ))
        .into());
    }
    Ok(Some(operator))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_and_clone_urls_read_short() {
        assert_eq!(short_arn("arn:aws:sts::123:assumed-role/Admin/alice"), "Admin/alice");
        assert_eq!(clone_url("ssh.git.example.com", 22), "git@ssh.git.example.com:group/project.git");
        assert_eq!(clone_url("nlb.example", 2222), "ssh://git@nlb.example:2222/group/project.git");
    }
}
