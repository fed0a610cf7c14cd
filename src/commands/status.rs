//! `status`: a verdict first (is GitLab healthy, and if not why), then every recorded resource
//! with its live state, and the running GitLab explained.

use std::fmt::Write as _;
use std::sync::Arc;

use serde::Serialize;

use super::{connect, gitlab_url, short_id, ssh_endpoint, stack_name, table};
use crate::catalog::Kinds;
use crate::cli::{GlobalArgs, StatusArgs};
use crate::engine::{self, Conflict, Live, Owner};
use crate::exit::{CliResult, ExitStatus};
use crate::printer::{Printer, Tone};
use crate::state::{self, RecordStatus};
use crate::steps::service::{Health, describe_stop, health};

#[derive(Debug, Serialize)]
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
    pub ssh: Option<String>,
}

/// One word for scripts, one line for people.
#[derive(Debug, Serialize)]
pub struct Verdict {
    /// healthy, starting, unhealthy, stopped, not-deployed, degraded or empty.
    pub state: &'static str,
    pub text: String,
    /// Whether `status --check` exits 0.
    pub ok: bool,
}

#[derive(Debug, Serialize)]
pub struct ResourceStatus {
    pub key: String,
    pub kind: String,
    pub id: Option<String>,
    /// How the state records it; `None` for an orphan (found by `--discover`, not recorded).
    pub recorded: Option<RecordStatus>,
    /// ok, missing, changed, pending (create never confirmed), unknown (the read failed),
    /// foreign (recorded, but not this stack's) or orphan (the stack's, not recorded).
    pub live: &'static str,
    pub detail: String,
}

fn since(started: &str) -> String {
    let Ok(started) = humantime::parse_rfc3339_weak(started) else { return started.to_string() };
    let minutes = std::time::SystemTime::now().duration_since(started).map(|d| d.as_secs() / 60).unwrap_or(0);
    if minutes == 0 { "under a minute".to_string() } else { format!("{minutes} min") }
}

fn verdict(resources: &[ResourceStatus], gitlab: Option<&Health>) -> Verdict {
    let count = |live: &str| resources.iter().filter(|r| r.live == live).count();
    let problems: Vec<String> = [
        ("missing", count("missing")),
        ("changed", count("changed")),
        ("not this stack's", count("foreign")),
        ("unreadable", count("unknown")),
        ("orphan", count("orphan")),
    ]
    .iter()
    .filter(|(_, n)| *n > 0)
    .map(|(what, n)| format!("{n} {what}"))
    .collect();
    let resources_note =
        if problems.is_empty() { String::new() } else { format!("; resources: {}", problems.join(", ")) };
    if resources.is_empty() {
        return Verdict { state: "empty", text: "nothing recorded".into(), ok: true };
    }
    let (state, text, healthy) = match gitlab {
        None => ("not-deployed", "GitLab is not deployed (no service recorded)".to_string(), false),
        Some(h) if h.healthy() => ("healthy", format!("GitLab healthy at {}", h.url.as_deref().unwrap_or("?")), true),
        Some(h) if h.failed() => {
            let stop = h.last_stopped.as_ref().map(|s| format!("; {}", describe_stop(s))).unwrap_or_default();
            (
                "unhealthy",
                format!(
                    "GitLab unhealthy: the deployment failed ({}){stop}",
                    h.rollout_reason.as_deref().unwrap_or("circuit breaker")
                ),
                false,
            )
        }
        Some(h) if h.desired == Some(0) => {
            ("stopped", "GitLab is stopped (the service asks for 0 tasks)".to_string(), false)
        }
        Some(h) if h.desired.is_none() => ("unhealthy", "GitLab's service is missing".to_string(), false),
        Some(h) => {
            let target = h
                .targets
                .first()
                .map(|t| format!(", target {}", t.state))
                .unwrap_or_else(|| ", no target registered yet".into());
            match &h.task {
                Some(task) => (
                    "starting",
                    format!(
                        "GitLab starting since {} (task {}{target})",
                        h.task_started_at.as_deref().map(since).unwrap_or_else(|| "a moment".into()),
                        task.to_lowercase()
                    ),
                    false,
                ),
                None => {
                    let stop = h.last_stopped.as_ref().map(|s| format!(": {}", describe_stop(s))).unwrap_or_default();
                    ("unhealthy", format!("GitLab unhealthy: no task is running{stop}"), false)
                }
            }
        }
    };
    let degraded = !problems.is_empty();
    Verdict {
        state: if degraded && healthy { "degraded" } else { state },
        text: format!("{text}{resources_note}"),
        ok: healthy && !degraded,
    }
}

impl StatusReport {
    fn render(&self, wide: bool, paint: &dyn Fn(&str, Tone) -> String) -> String {
        let mut out = String::new();
        let tone = if self.verdict.ok {
            Tone::Good
        } else if self.verdict.state == "starting" {
            Tone::Changed
        } else {
            Tone::Bad
        };
        let _ = writeln!(out, "{}", paint(&self.verdict.text, tone));
        if self.resources.is_empty() {
            let _ = writeln!(out, "stack {}: nothing recorded in {}", self.stack, self.state_file);
            return out;
        }
        let _ = writeln!(out, "stack {} in {} ({})", self.stack, self.region, self.state_file);
        let rows: Vec<Vec<String>> = self
            .resources
            .iter()
            .map(|r| {
                let recorded = serde_json::to_value(r.recorded)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_else(|| "-".into());
                let live_tone = match r.live {
                    "ok" => Tone::Good,
                    "changed" | "pending" | "orphan" => Tone::Changed,
                    _ => Tone::Bad,
                };
                let id = r.id.clone().map(|id| if wide { id } else { short_id(&id) }).unwrap_or_else(|| "-".into());
                vec![r.key.clone(), id, recorded, paint(r.live, live_tone), r.detail.clone()]
            })
            .collect();
        let _ = write!(out, "{}", table(&["RESOURCE", "ID", "RECORDED", "LIVE", "DETAIL"], &rows));
        for c in &self.conflicts {
            let _ = writeln!(
                out,
                "{} {} {} has the stack's name but is not its own: {}",
                paint("conflict:", Tone::Bad),
                c.kind,
                c.id,
                c.why
            );
        }
        if let Some(g) = &self.gitlab {
            let count = |v: Option<i32>| v.map(|n| n.to_string()).unwrap_or_else(|| "?".into());
            let _ = writeln!(out, "\nGitLab");
            let _ = writeln!(out, "  url:            {}", g.url.as_deref().unwrap_or("?"));
            let rollout = match (&g.rollout, &g.rollout_reason) {
                (Some(state), Some(reason)) => format!("{} ({reason})", state.to_lowercase()),
                (Some(state), None) => state.to_lowercase(),
                _ => "?".into(),
            };
            let _ = writeln!(
                out,
                "  service:        desired {} running {} pending {}, rollout {rollout}",
                count(g.desired),
                count(g.running),
                count(g.pending)
            );
            let task = match (&g.task, &g.task_started_at) {
                (Some(task), Some(at)) => format!("{} (started {} ago)", task.to_lowercase(), since(at)),
                (Some(task), None) => task.to_lowercase(),
                _ => "none".into(),
            };
            let _ = writeln!(out, "  task:           {task}");
            if let Some(stop) = &g.last_stopped {
                let _ = writeln!(out, "  last stopped:   {}", describe_stop(stop));
            }
            let targets = |list: &[crate::steps::load_balancer::TargetState]| {
                if list.is_empty() {
                    "no targets registered".to_string()
                } else {
                    list.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
                }
            };
            let _ = writeln!(out, "  target health:  {}", targets(&g.targets));
            if let Some(ssh) = &self.ssh {
                let _ = writeln!(out, "  ssh:            {ssh}, target health: {}", targets(&g.ssh_targets));
            }
            if let Some(event) = &g.last_event {
                let _ = writeln!(out, "  last event:     {event}");
            }
        }
        out
    }
}

pub async fn run(global: &GlobalArgs, args: StatusArgs) -> CliResult {
    let (stack, region_flag) = stack_name(global)?;
    let printer = Printer::new(global, false);
    let state_file = state::state_path(&global.state_dir, &stack).display().to_string();
    let recorded = state::read(&global.state_dir, &stack)?.filter(|s| !s.resources.is_empty());
    if recorded.is_none() && !args.discover {
        if args.json {
            let configured = crate::aws::credentials::configured_region(global.profile.as_deref()).await;
            let empty = StatusReport {
                stack: stack.clone(),
                region: region_flag.clone().or(configured).unwrap_or_default(),
                account: None,
                state_file,
                verdict: verdict(&[], None),
                resources: vec![],
                conflicts: vec![],
                gitlab: None,
                ssh: None,
            };
            printer.json("status", &empty)?;
            return Ok(ExitStatus::Success);
        }
        return nothing_recorded(global, &stack, region_flag.as_deref(), &printer, "status --discover").await;
    }
    let region = recorded.as_ref().map(|s| s.region.clone()).or(region_flag);
    let ctx = connect(global, &stack, region.as_deref(), recorded.as_ref(), &printer).await?;
    let records = recorded.as_ref().map(|s| s.resources.clone()).unwrap_or_default();
    let discovery = async {
        if args.discover { engine::discover(ctx.clone(), Arc::new(Kinds), &records).await.map(Some) } else { Ok(None) }
    };
    let gitlab = async {
        if records.contains_key(crate::keys::SERVICE) {
            health(&ctx, &records, gitlab_url(&records)).await.map(Some)
        } else {
            Ok(None)
        }
    };
    let (live, found, gitlab) = tokio::join!(
        engine::observe(ctx.clone(), Arc::new(Kinds), records.clone(), usize::from(global.parallel), true),
        discovery,
        gitlab
    );
    let (orphans, conflicts) = found?.unwrap_or_default();
    let mut resources: Vec<ResourceStatus> = records
        .into_iter()
        .map(|(key, record)| {
            let (live, detail) = match live.get(&key) {
                Some(_) if record.status == RecordStatus::Pending => {
                    ("pending", "create was started but never confirmed; `up` adopts or creates it".to_string())
                }
                // An imported resource is the user's by design: read, never changed.
                Some(Ok(Live::Present { owner: Owner::Foreign(why), .. }))
                    if record.status != RecordStatus::Imported =>
                {
                    ("foreign", format!("not this stack's: {why}"))
                }
                Some(Ok(Live::Present { summary, drift, .. })) if drift.is_empty() => ("ok", summary.clone()),
                Some(Ok(Live::Present { drift, .. })) => ("changed", drift.join("; ")),
                Some(Ok(Live::Missing)) => {
                    ("missing", "deleted outside gitlab-provision; `up` creates it again".to_string())
                }
                Some(Err(e)) => ("unknown", format!("{e:#}")),
                None => ("unknown", "not read".to_string()),
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
            live: "orphan",
            detail: "carries the stack's tags but no state records it; `down --discover` removes it".into(),
        });
    }
    let gitlab = gitlab?;
    let report = StatusReport {
        stack,
        region: ctx.region().to_string(),
        account: ctx.account.as_ref().map(|a| a.account.clone()),
        state_file,
        verdict: verdict(&resources, gitlab.as_ref()),
        ssh: recorded.as_ref().and_then(|s| ssh_endpoint(&s.resources)).map(|(h, p)| super::clone_url(&h, p)),
        resources,
        conflicts,
        gitlab,
    };
    if args.json {
        printer.json("status", &report)?;
    } else {
        printer.out(&report.render(args.wide, &|text, tone| printer.paint_out(text, tone)));
    }
    Ok(if args.check && !report.verdict.ok { ExitStatus::Degraded } else { ExitStatus::Success })
}

/// No state file for the stack: look for what carries its tags and say so, rather than "nothing".
pub async fn nothing_recorded(
    global: &GlobalArgs,
    stack: &str,
    region: Option<&str>,
    printer: &Printer,
    next: &str,
) -> CliResult {
    let dir = global.state_dir.display();
    let ctx = match connect(global, stack, region, None, printer).await {
        Ok(ctx) => ctx,
        Err(e) => {
            printer.out(&format!("stack {stack}: nothing recorded in {dir}"));
            printer.note(&format!("could not look in AWS for resources tagged with the stack: {:#}", e.error));
            return Ok(ExitStatus::Success);
        }
    };
    let (orphans, conflicts) = engine::discover(ctx.clone(), Arc::new(Kinds), &Default::default()).await?;
    if orphans.is_empty() {
        let tail = if next.starts_with("down") { "; nothing to delete" } else { "" };
        printer.out(&format!(
            "stack {stack}: nothing recorded in {dir}, and nothing tagged gitlab-provision:stack={stack} in {}{tail}",
            ctx.region()
        ));
    } else {
        printer.out(&format!(
            "stack {stack}: no state file in {dir}, but {} resources tagged gitlab-provision:stack={stack} exist in {}",
            orphans.len(),
            ctx.region()
        ));
        printer.note(&format!(
            "are you in the right directory (or --state-dir)? If the state is lost, `gitlab-provision {next} --stack {stack}` shows or removes them"
        ));
    }
    for c in conflicts {
        printer.note(&format!("{} {} has the stack's name but is not its own: {}", c.kind, c.id, c.why));
    }
    Ok(ExitStatus::Success)
}
