use std::fmt;
use std::sync::Arc;

use serde::Serialize;

use super::{context, gitlab_url, stack_name, table};
use crate::cli::{GlobalArgs, StatusArgs};
use crate::engine::{self, Live};
use crate::state::{self, RecordStatus};
use crate::steps::Kinds;
use crate::steps::service::{Health, KEY_SERVICE, health};

#[derive(Debug, Serialize)]
pub struct StatusReport {
    pub stack: String,
    pub region: Option<String>,
    pub state_file: String,
    pub resources: Vec<ResourceStatus>,
    /// The running GitLab, when the stack has a service.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gitlab: Option<Health>,
}

#[derive(Debug, Serialize)]
pub struct ResourceStatus {
    pub key: String,
    pub kind: String,
    pub id: Option<String>,
    /// How the state records it; `None` for an orphan (found by `--discover`, not recorded).
    pub recorded: Option<RecordStatus>,
    /// ok, missing, changed, pending (create never confirmed), unknown (the read failed) or
    /// orphan (it exists, carries the stack's tags or names, but the state does not record it).
    pub live: &'static str,
    pub detail: String,
}

impl fmt::Display for StatusReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.resources.is_empty() {
            return writeln!(f, "stack {}: nothing recorded in {}", self.stack, self.state_file);
        }
        writeln!(f, "stack {} in {} ({})", self.stack, self.region.as_deref().unwrap_or("?"), self.state_file)?;
        let rows: Vec<Vec<String>> = self
            .resources
            .iter()
            .map(|r| {
                let recorded = serde_json::to_value(r.recorded)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default();
                vec![
                    r.key.clone(),
                    r.kind.clone(),
                    r.id.clone().unwrap_or_else(|| "-".into()),
                    recorded,
                    r.live.to_string(),
                    r.detail.clone(),
                ]
            })
            .collect();
        write!(f, "{}", table(&["RESOURCE", "KIND", "ID", "RECORDED", "LIVE", "DETAIL"], &rows))?;
        if let Some(g) = &self.gitlab {
            let count = |v: Option<i32>| v.map(|n| n.to_string()).unwrap_or_else(|| "?".into());
            writeln!(f, "\nGitLab")?;
            writeln!(f, "  url:            {}", g.url.as_deref().unwrap_or("?"))?;
            writeln!(
                f,
                "  service:        desired {} running {} pending {}, rollout {}",
                count(g.desired),
                count(g.running),
                count(g.pending),
                g.rollout.as_deref().unwrap_or("?")
            )?;
            writeln!(
                f,
                "  target health:  {}",
                if g.target_health.is_empty() {
                    "no targets registered".to_string()
                } else {
                    g.target_health.join(", ")
                }
            )?;
            writeln!(f, "  task:           {}", g.last_task_status.as_deref().unwrap_or("none"))?;
            if let Some(event) = &g.last_event {
                writeln!(f, "  last event:     {event}")?;
            }
        }
        Ok(())
    }
}

pub async fn run(global: &GlobalArgs, args: StatusArgs) -> anyhow::Result<()> {
    let (stack, region) = stack_name(global)?;
    let state_file = state::state_path(&global.state_dir, &stack).display().to_string();
    let recorded = state::read(&global.state_dir, &stack)?.filter(|s| !s.resources.is_empty());
    if recorded.is_none() && !args.discover {
        let report = StatusReport { stack, region: None, state_file, resources: vec![], gitlab: None };
        if args.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            print!("{report}");
            println!("(`status --discover` looks for resources of the stack that no state file records)");
        }
        return Ok(());
    }
    let region = recorded.as_ref().map(|s| s.region.clone()).or(region);
    let records = recorded.map(|s| s.resources).unwrap_or_default();
    let ctx = context(&stack, region.as_deref(), global.profile.as_deref()).await?;
    let has_service = records.contains_key(KEY_SERVICE);
    let url = gitlab_url(&records);
    let (mut live, gitlab, orphans) = tokio::join!(
        engine::observe(ctx.clone(), Arc::new(Kinds), records.clone(), usize::from(global.parallel)),
        async { if has_service { Some(health(&ctx, &records, url.clone()).await) } else { None } },
        async {
            if args.discover {
                Some(engine::discover_orphans(ctx.clone(), Arc::new(Kinds), &records).await)
            } else {
                None
            }
        }
    );
    let gitlab = match gitlab {
        Some(Ok(h)) => Some(h),
        Some(Err(e)) => Some(Health { url, last_event: Some(format!("could not read: {e:#}")), ..Default::default() }),
        None => None,
    };
    let mut resources: Vec<ResourceStatus> = records
        .into_iter()
        .map(|(key, record)| {
            let (live, detail) = match live.remove(&key) {
                _ if record.status == RecordStatus::Pending && record.id.is_none() => {
                    ("pending", "create was started but never confirmed".to_string())
                }
                Some(Ok(Live::Present { summary, drift })) if drift.is_empty() => ("ok", summary),
                Some(Ok(Live::Present { summary, drift })) => ("changed", format!("{summary}; {}", drift.join("; "))),
                Some(Ok(Live::Missing)) => ("missing", "no longer exists".to_string()),
                Some(Err(e)) => ("unknown", format!("{e:#}")),
                None => ("unknown", "not read".to_string()),
            };
            ResourceStatus { key, kind: record.kind, id: record.id, recorded: Some(record.status), live, detail }
        })
        .collect();
    for orphan in orphans.transpose()?.unwrap_or_default() {
        resources.push(ResourceStatus {
            key: orphan.key,
            kind: orphan.kind,
            id: Some(orphan.found.id),
            recorded: None,
            live: "orphan",
            detail: "carries the stack's tags or names but no state records it; `down --discover` removes it".into(),
        });
    }
    let report = StatusReport { stack, region: Some(ctx.aws.region.clone()), state_file, resources, gitlab };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{report}");
    }
    Ok(())
}
