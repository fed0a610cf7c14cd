//! A status: every recorded resource's live state, what carries the stack's tags without a
//! record, GitLab's service explained, and one verdict.

use std::sync::Arc;

use serde::Serialize;

use super::versions::GitLabVersion;
use crate::aws::Ctx;
use crate::catalog::Kinds;
use crate::cli::GlobalArgs;
use crate::engine::{self, Conflict, Live, Owner};
use crate::ops::stack::{clone_url, connect, gitlab_url, ssh_endpoint};
use crate::printer::Printer;
use crate::state::{RecordStatus, State};
use crate::steps::service::{Health, describe_stop, health};

#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct StatusReport {
    pub stack: String,
    pub region: String,
    pub account: Option<String>,
    pub state_file: String,
    pub verdict: Verdict,
    pub resources: Vec<ResourceStatus>,
    /// What has the stack's names but is not its own (with `--discover`).
    pub conflicts: Vec<Conflict>,
    /// The running GitLab, when the stack has a service.
    pub gitlab: Option<Health>,
    /// The GitLab version the state records, and the one the running task runs.
    pub gitlab_version: GitLabVersion,
    pub ssh: Option<String>,
    /// The security profile the records show: `strict` once its web ACL or log bucket exist.
    pub hardening: crate::config::Hardening,
}

/// The profile a stack's records show.
pub fn recorded_hardening(
    records: &std::collections::BTreeMap<String, crate::state::ResourceRecord>,
) -> crate::config::Hardening {
    use crate::keys;
    if [keys::WEB_ACL, keys::LOG_BUCKET].iter().any(|k| records.contains_key(*k)) {
        crate::config::Hardening::Strict
    } else {
        crate::config::Hardening::Default
    }
}

/// What the state records and what the live task runs (a plan adds what it would deploy).
impl GitLabVersion {
    pub fn of(
        records: &std::collections::BTreeMap<String, crate::state::ResourceRecord>,
        health: Option<&Health>,
    ) -> Self {
        GitLabVersion {
            recorded: super::versions::running_version(records).map(|v| v.to_string()),
            running: health
                .and_then(|h| h.task_image.as_deref())
                .and_then(|image| image.rsplit(':').next())
                .and_then(crate::gitlab_version::Version::parse)
                .map(|v| v.to_string()),
            wanted: None,
        }
    }
}

/// What a live read says of a recorded resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum LiveState {
    /// As recorded.
    Ok,
    /// Deleted outside the tool.
    Missing,
    /// Changed outside the tool.
    Changed,
    /// Its create was never confirmed, or it was not ready when the run stopped.
    Pending,
    /// The read failed.
    Unknown,
    /// Recorded, but not this stack's.
    Foreign,
    /// The stack's (by its tags), not recorded (`--discover`).
    Orphan,
}

impl LiveState {
    pub fn as_str(self) -> &'static str {
        match self {
            LiveState::Ok => "ok",
            LiveState::Missing => "missing",
            LiveState::Changed => "changed",
            LiveState::Pending => "pending",
            LiveState::Unknown => "unknown",
            LiveState::Foreign => "foreign",
            LiveState::Orphan => "orphan",
        }
    }
}

/// The verdict in one word, for scripts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum VerdictState {
    Healthy,
    Starting,
    Unhealthy,
    Stopped,
    /// No task, on purpose: `sleep`, the schedule, the idle sleep.
    Asleep,
    NotDeployed,
    /// Healthy, but resources are missing, changed or not the stack's.
    Degraded,
    /// Nothing recorded.
    Empty,
}

/// One word for scripts, one line for people.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct Verdict {
    /// healthy, starting, unhealthy, stopped, asleep, not-deployed, degraded or empty.
    pub state: VerdictState,
    pub text: String,
    /// Whether `status --check` exits 0.
    pub ok: bool,
}

#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct ResourceStatus {
    pub key: String,
    pub kind: String,
    pub id: Option<String>,
    /// How the state records it; `None` for an orphan (found by `--discover`, not recorded).
    pub recorded: Option<RecordStatus>,
    /// ok, missing, changed, pending (create never confirmed), unknown (the read failed),
    /// foreign (recorded, but not this stack's) or orphan (the stack's, not recorded).
    pub live: LiveState,
    pub detail: String,
}

pub fn since(started: &str) -> String {
    let Ok(started) = humantime::parse_rfc3339_weak(started) else { return started.to_string() };
    let minutes = std::time::SystemTime::now().duration_since(started).map(|d| d.as_secs() / 60).unwrap_or(0);
    if minutes == 0 { "under a minute".to_string() } else { format!("{minutes} min") }
}

/// Why GitLab has no task when that is meant: `sleep`, its schedule, its idle sleep.
pub fn asleep_because(state: &crate::state::State) -> Option<String> {
    let settings: crate::config::Settings =
        state.settings.clone().and_then(|v| serde_json::from_value(v).ok()).unwrap_or_default();
    let cfg = crate::config::validate(&settings).ok();
    if let Some(sleep) = super::sleep::recorded_sleep(state) {
        let since = crate::printer::minute_utc(&sleep.since);
        return Some(match sleep.until {
            Some(until) => format!("GitLab is asleep since {since}, wakes at {until} (schedule)"),
            None => format!("GitLab is asleep since {since}, until `gitlab-provision wake`"),
        });
    }
    let cfg = cfg?;
    if cfg.schedule.is_some() {
        let wakes = super::sleep::next_scheduled_wake(&cfg).unwrap_or_else(|| "?".into());
        return Some(format!("GitLab is asleep outside its office hours, wakes at {wakes} (schedule)"));
    }
    cfg.idle_sleep_minutes
        .map(|m| format!("GitLab is asleep after {m} minutes without a request; the next request wakes it"))
}

pub fn verdict(resources: &[ResourceStatus], gitlab: Option<&Health>) -> Verdict {
    verdict_asleep(resources, gitlab, None)
}

/// The verdict, where a GitLab with no task may be asleep on purpose.
pub fn verdict_asleep(resources: &[ResourceStatus], gitlab: Option<&Health>, asleep: Option<String>) -> Verdict {
    if let (Some(why), Some(h)) = (&asleep, gitlab)
        && h.desired == Some(0)
        && !resources.is_empty()
    {
        return Verdict { state: VerdictState::Asleep, text: why.clone(), ok: true };
    }
    let count = |live: LiveState| resources.iter().filter(|r| r.live == live).count();
    let problems: Vec<String> = [
        ("missing", count(LiveState::Missing)),
        ("changed", count(LiveState::Changed)),
        ("not this stack's", count(LiveState::Foreign)),
        ("unreadable", count(LiveState::Unknown)),
        ("orphan", count(LiveState::Orphan)),
    ]
    .iter()
    .filter(|(_, n)| *n > 0)
    .map(|(what, n)| format!("{n} {what}"))
    .collect();
    let resources_note =
        if problems.is_empty() { String::new() } else { format!("; resources: {}", problems.join(", ")) };
    if resources.is_empty() {
        return Verdict { state: VerdictState::Empty, text: "nothing recorded".into(), ok: true };
    }
    let (state, text, healthy) = match gitlab {
        None => (VerdictState::NotDeployed, "GitLab is not deployed (no service recorded)".to_string(), false),
        Some(h) if h.healthy() => {
            (VerdictState::Healthy, format!("GitLab healthy at {}", h.url.as_deref().unwrap_or("?")), true)
        }
        Some(h) if why_it_cannot_start(h).is_some() => (
            VerdictState::Unhealthy,
            format!("GitLab cannot start: {}", why_it_cannot_start(h).unwrap_or_default()),
            false,
        ),
        Some(h) if h.failed() => {
            let stop = h.last_stopped.as_ref().map(|s| format!("; {}", describe_stop(s))).unwrap_or_default();
            (
                VerdictState::Unhealthy,
                format!(
                    "GitLab unhealthy: the deployment failed ({}){stop}",
                    h.rollout_reason.as_deref().unwrap_or("circuit breaker")
                ),
                false,
            )
        }
        Some(h) if h.desired == Some(0) => {
            (VerdictState::Stopped, "GitLab is stopped (the service asks for 0 tasks)".to_string(), false)
        }
        Some(h) if h.desired.is_none() => (VerdictState::Unhealthy, "GitLab's service is missing".to_string(), false),
        Some(h) => {
            let target = h
                .targets
                .first()
                .map(|t| format!(", target {}", t.state))
                .unwrap_or_else(|| ", no target registered yet".into());
            match &h.task {
                Some(task) => (
                    VerdictState::Starting,
                    format!(
                        "GitLab starting since {} (task {}{target})",
                        h.task_started_at.as_deref().map(since).unwrap_or_else(|| "a moment".into()),
                        task.to_lowercase()
                    ),
                    false,
                ),
                None => {
                    let stop = h.last_stopped.as_ref().map(|s| format!(": {}", describe_stop(s))).unwrap_or_default();
                    (VerdictState::Unhealthy, format!("GitLab unhealthy: no task is running{stop}"), false)
                }
            }
        }
    };
    let degraded = !problems.is_empty();
    Verdict {
        state: if degraded && healthy { VerdictState::Degraded } else { state },
        text: format!("{text}{resources_note}"),
        ok: healthy && !degraded,
    }
}

/// Reads everything the state records (and, with `discover`, what carries the stack's tags
/// without a record) and GitLab's service, at once, and gives the verdict.
pub async fn read(
    ctx: &Arc<Ctx>,
    recorded: Option<&State>,
    state_file: String,
    discover: bool,
    parallel: usize,
) -> anyhow::Result<StatusReport> {
    let records = recorded.map(|s| s.resources.clone()).unwrap_or_default();
    let discovery = async {
        if discover { engine::discover(ctx.clone(), Arc::new(Kinds), &records).await.map(Some) } else { Ok(None) }
    };
    let gitlab = async {
        if records.contains_key(crate::keys::SERVICE) {
            health(ctx, &records, gitlab_url(&records)).await.map(Some)
        } else {
            Ok(None)
        }
    };
    let (live, found, gitlab) =
        tokio::join!(engine::observe(ctx.clone(), Arc::new(Kinds), records.clone(), parallel, true), discovery, gitlab);
    let (orphans, conflicts) = found?.unwrap_or_default();
    let mut resources: Vec<ResourceStatus> = records
        .into_iter()
        .map(|(key, record)| {
            let (live, detail) = match live.get(&key) {
                Some(_) if record.status == RecordStatus::Pending && record.id.is_some() => {
                    (LiveState::Pending, "created, but not ready when the run stopped; `up` waits for it".to_string())
                }
                Some(_) if record.status == RecordStatus::Pending => (
                    LiveState::Pending,
                    "create was started but never confirmed; `up` adopts or creates it".to_string(),
                ),
                // An imported resource is the user's by design: read, never changed.
                Some(Ok(Live::Present { owner: Owner::Foreign(why), .. }))
                    if record.status != RecordStatus::Imported =>
                {
                    (LiveState::Foreign, format!("not this stack's: {why}"))
                }
                Some(Ok(Live::Present { summary, drift, .. })) if drift.is_empty() => (LiveState::Ok, summary.clone()),
                Some(Ok(Live::Present { drift, .. })) => (LiveState::Changed, drift.join("; ")),
                Some(Ok(Live::Missing)) => {
                    (LiveState::Missing, "deleted outside gitlab-provision; `up` creates it again".to_string())
                }
                Some(Err(e)) => (LiveState::Unknown, format!("{e:#}")),
                None => (LiveState::Unknown, "not read".to_string()),
            };
            ResourceStatus { key, kind: record.kind, id: record.id, recorded: Some(record.status), live, detail }
        })
        .collect();
    for orphan in orphans {
        resources.push(ResourceStatus {
            key: orphan.key,
            kind: orphan.kind,
            id: Some(orphan.found.id),
            recorded: None,
            live: LiveState::Orphan,
            detail: "carries the stack's tags but no state records it; `down --discover` removes it".into(),
        });
    }
    let gitlab = gitlab?;
    if let (Some(state), Some(health)) = (recorded, gitlab.as_ref()) {
        stale_database_password(ctx, state, health, &mut resources).await;
    }
    Ok(StatusReport {
        stack: ctx.tags.stack.clone(),
        region: ctx.region().to_string(),
        account: ctx.account.as_ref().map(|a| a.account.clone()),
        state_file,
        verdict: verdict_asleep(&resources, gitlab.as_ref(), recorded.and_then(asleep_because)),
        ssh: recorded.and_then(|s| ssh_endpoint(&s.resources)).map(|(h, p)| clone_url(&h, p)),
        gitlab_version: GitLabVersion::of(&recorded.map(|s| s.resources.clone()).unwrap_or_default(), gitlab.as_ref()),
        hardening: recorded.map(|s| recorded_hardening(&s.resources)).unwrap_or_default(),
        resources,
        conflicts,
        gitlab,
    })
}

/// RDS rotates the database's password on its schedule (yearly, as the tool sets it); GitLab
/// read it when its task started. A rotation since then cuts GitLab off from its database until
/// it restarts: the database's line says so, with the way out.
async fn stale_database_password(ctx: &Ctx, state: &State, health: &Health, resources: &mut [ResourceStatus]) {
    let Some(secret) = state.resources.get(crate::keys::DB_INSTANCE).and_then(|r| r.attr("secret_arn")) else { return };
    let Some(started) = health.task_started_at.as_deref().and_then(|s| humantime::parse_rfc3339_weak(s).ok()) else {
        return;
    };
    let Ok(described) = ctx.aws.secrets.describe_secret().secret_id(secret).send().await else { return };
    let Some(rotated) = described.last_rotated_date().and_then(|d| std::time::SystemTime::try_from(*d).ok()) else {
        return;
    };
    if rotated <= started {
        return;
    }
    if let Some(line) = resources.iter_mut().find(|r| r.key == crate::keys::DB_INSTANCE) {
        line.live = LiveState::Changed;
        line.detail = format!(
            "RDS rotated the database password {} ago, after GitLab's task started: GitLab cannot open new connections until it restarts (`gitlab-provision sleep`, then `gitlab-provision wake --wait`)",
            since(&humantime::format_rfc3339_seconds(rotated).to_string())
        );
    }
}

/// What a look for the stack's tagged resources found when no state records it.
pub enum Unrecorded {
    /// Nothing tagged with the stack in the region.
    Nothing { region: String },
    /// Resources of the stack exist, recorded nowhere here (another directory, a lost state).
    Orphans { region: String, count: usize, conflicts: Vec<Conflict> },
    /// It could not look (no credentials, no network): why.
    CouldNotLook(String),
}

/// No state file for the stack: look for what carries its tags and say what was found, rather
/// than "nothing"; `next` is the command that would show or remove it.
pub async fn look_for_unrecorded(
    global: &GlobalArgs,
    stack: &str,
    region: Option<&str>,
    printer: &Printer,
    next: &str,
) -> anyhow::Result<Unrecorded> {
    let found = match connect(global, stack, region, None, printer).await {
        Err(e) => Unrecorded::CouldNotLook(format!("{:#}", e.error)),
        Ok(ctx) => {
            let (orphans, conflicts) = engine::discover(ctx.clone(), Arc::new(Kinds), &Default::default()).await?;
            let region = ctx.region().to_string();
            if orphans.is_empty() && conflicts.is_empty() {
                Unrecorded::Nothing { region }
            } else {
                Unrecorded::Orphans { region, count: orphans.len(), conflicts }
            }
        }
    };
    say_unrecorded(global, stack, &found, printer, next);
    Ok(found)
}

/// Says what a look for an unrecorded stack found (`status` and `down` without a state file).
fn say_unrecorded(global: &GlobalArgs, stack: &str, found: &Unrecorded, printer: &Printer, next: &str) {
    let dir = super::stack::state_location(global, stack);
    match found {
        Unrecorded::CouldNotLook(why) => {
            printer.out(&format!("stack {stack}: nothing recorded in {dir}"));
            printer.note(&format!("could not look in AWS for resources tagged with the stack: {why}"));
        }
        Unrecorded::Nothing { region } => {
            let tail = if next.starts_with("down") { "; nothing to delete" } else { "" };
            printer.out(&format!(
                "stack {stack}: nothing recorded in {dir}, and nothing tagged gitlab-provision:stack={stack} in {region}{tail}"
            ));
        }
        Unrecorded::Orphans { region, count, conflicts } => {
            if *count > 0 {
                printer.out(&format!(
                    "stack {stack}: no state file in {dir}, but {count} resources tagged gitlab-provision:stack={stack} exist in {region}"
                ));
                printer.note(&format!(
                    "are you in the right directory (or --state-dir)? If the state is lost, `gitlab-provision {next} --stack {stack}` shows or removes them"
                ));
            } else {
                printer.out(&format!("stack {stack}: nothing recorded in {dir}, and nothing of it in {region}"));
            }
            for c in conflicts {
                printer.note(&format!("{} {} has the stack's name but is not its own: {}", c.kind, c.id, c.why));
            }
        }
    }
}

/// What keeps GitLab's task from starting, when ECS says so (a task that cannot be placed, an
/// image that cannot be pulled, volumes or secrets that cannot be set up).
fn why_it_cannot_start(h: &Health) -> Option<String> {
    use crate::steps::service::{cannot_start, with_fix};
    if h.running.unwrap_or(0) > 0 {
        return None;
    }
    if let Some(stop) = h.last_stopped.as_ref().filter(|s| cannot_start(&s.reason)) {
        return Some(with_fix(describe_stop(stop)));
    }
    h.events.first().filter(|e| cannot_start(&e.message)).map(|e| with_fix(e.message.clone()))
}
