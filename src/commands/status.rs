//! `status`: a verdict first (is GitLab healthy, and if not why), then every recorded resource
//! with its live state, and the running GitLab explained (read by `ops::status`).

use std::fmt::Write as _;

use crate::cli::{GlobalArgs, StatusArgs};
use crate::exit::{CliResult, ExitStatus};
use crate::ops::stack::{connect, locate};
use crate::ops::status::{self, LiveState, StatusReport, since, verdict};
use crate::printer::{Printer, Tone, short_id, table};
use crate::steps::service::describe_stop;

impl StatusReport {
    fn render(&self, wide: bool, paint: &dyn Fn(&str, Tone) -> String) -> String {
        let mut out = String::new();
        let tone = if self.verdict.ok {
            Tone::Good
        } else if self.verdict.state == status::VerdictState::Starting {
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
                    LiveState::Ok => Tone::Good,
                    LiveState::Changed | LiveState::Pending | LiveState::Orphan => Tone::Changed,
                    _ => Tone::Bad,
                };
                let id = r.id.clone().map(|id| if wide { id } else { short_id(&id) }).unwrap_or_else(|| "-".into());
                vec![r.key.clone(), id, recorded, paint(r.live.as_str(), live_tone), r.detail.clone()]
            })
            .collect();
        let _ = write!(out, "{}", table(&["RESOURCE", "ID", "RECORDED", "LIVE", "DETAIL"], &rows));
        let hardening = match self.hardening {
            crate::config::Hardening::Strict => {
                "strict (the default's, plus WAF, VPC flow logs, load balancer access logs, vault lock)"
            }
            crate::config::Hardening::Default => "default (the stack's KMS key, network ACLs, 365-day logs)",
        };
        let _ = writeln!(out, "hardening: {hardening}");
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
            if g.capacity.as_deref() == Some("FARGATE_SPOT") || g.spot_interruptions > 0 {
                let _ = writeln!(
                    out,
                    "  capacity:       Fargate Spot, {} in the last hour",
                    ground::engine::counted(g.spot_interruptions, "interruption")
                );
            }
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
            if self.verdict.ok {
                if let Some(event) = &g.last_event {
                    let _ = writeln!(out, "  last event:     {event}");
                }
            } else {
                // Why it is not healthy is usually in ECS's own words.
                for event in g.events.iter().take(3) {
                    let _ = writeln!(
                        out,
                        "  event:          {} {}",
                        event.at.as_deref().map(crate::printer::minute_utc).unwrap_or_default(),
                        event.message
                    );
                }
            }
        }
        out
    }
}

pub async fn run(global: &GlobalArgs, args: StatusArgs) -> CliResult {
    let (stack, recorded) = locate(global).await?;
    let printer = Printer::new(global, false);
    let state_file = crate::ops::stack::state_location(global, &stack);
    // `--check` is a health check: only a healthy GitLab says OK.
    let not_ok = if args.check { ExitStatus::Degraded } else { ExitStatus::Success };
    if recorded.is_none() && !args.discover {
        let region = crate::ops::stack::stack_name(global)?.1;
        if args.json {
            let configured = crate::aws::credentials::configured_region(global.profile.as_deref()).await;
            let empty = StatusReport {
                stack: stack.clone(),
                region: region.clone().or(configured).unwrap_or_default(),
                account: None,
                state_file,
                verdict: verdict(&[], None),
                resources: vec![],
                conflicts: vec![],
                gitlab: None,
                ssh: None,
                gitlab_version: Default::default(),
                hardening: Default::default(),
            };
            printer.json("status", &empty)?;
            return Ok(not_ok);
        }
        status::look_for_unrecorded(global, &stack, region.as_deref(), &printer, "status --discover").await?;
        return Ok(not_ok);
    }
    let region = recorded.as_ref().map(|s| s.region.clone()).or(crate::ops::stack::stack_name(global)?.1);
    let ctx = connect(global, &stack, region.as_deref(), recorded.as_ref(), &printer).await?;
    let report = status::read(&ctx, recorded.as_ref(), state_file, args.discover, usize::from(global.parallel)).await?;
    if args.json {
        printer.json("status", &report)?;
    } else {
        printer.out(&report.render(args.wide, &|text, tone| printer.paint_out(text, tone)));
    }
    Ok(if report.verdict.ok { ExitStatus::Success } else { not_ok })
}
