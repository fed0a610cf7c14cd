use std::fmt;
use std::sync::Arc;

use serde::Serialize;

use super::{context, stack_name, table};
use crate::cli::{GlobalArgs, StatusArgs};
use crate::engine::{self, Live};
use crate::state::{self, RecordStatus};
use crate::steps::Kinds;

#[derive(Debug, Serialize)]
pub struct StatusReport {
    pub stack: String,
    pub region: Option<String>,
    pub state_file: String,
    pub resources: Vec<ResourceStatus>,
}

#[derive(Debug, Serialize)]
pub struct ResourceStatus {
    pub key: String,
    pub kind: String,
    pub id: Option<String>,
    pub recorded: RecordStatus,
    /// ok, missing, changed, pending (create never confirmed) or unknown (the read failed).
    pub live: &'static str,
    pub detail: String,
}

impl fmt::Display for StatusReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.resources.is_empty() {
            return writeln!(
                f,
                "stack {}: nothing recorded in {}",
                self.stack, self.state_file
            );
        }
        writeln!(
            f,
            "stack {} in {} ({})",
            self.stack,
            self.region.as_deref().unwrap_or("?"),
            self.state_file
        )?;
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
        write!(
            f,
            "{}",
            table(
                &["RESOURCE", "KIND", "ID", "RECORDED", "LIVE", "DETAIL"],
                &rows
            )
        )
    }
}

pub async fn run(global: &GlobalArgs, args: StatusArgs) -> anyhow::Result<()> {
    let (stack, _) = stack_name(global)?;
    let state_file = state::state_path(&global.state_dir, &stack)
        .display()
        .to_string();
    let recorded = state::read(&global.state_dir, &stack)?.filter(|s| !s.resources.is_empty());
    let report = match recorded {
        None => StatusReport {
            stack,
            region: None,
            state_file,
            resources: vec![],
        },
        Some(recorded) => {
            let ctx = context(&stack, Some(&recorded.region), global.profile.as_deref()).await?;
            let mut live = engine::observe(ctx, Arc::new(Kinds), recorded.resources.clone()).await;
            let resources = recorded
                .resources
                .into_iter()
                .map(|(key, record)| {
                    let (live, detail) = match live.remove(&key) {
                        _ if record.status == RecordStatus::Pending && record.id.is_none() => (
                            "pending",
                            "create was started but never confirmed".to_string(),
                        ),
                        Some(Ok(Live::Present { summary, drift })) if drift.is_empty() => {
                            ("ok", summary)
                        }
                        Some(Ok(Live::Present { summary, drift })) => {
                            ("changed", format!("{summary}; {}", drift.join("; ")))
                        }
                        Some(Ok(Live::Missing)) => ("missing", "no longer exists".to_string()),
                        Some(Err(e)) => ("unknown", format!("{e:#}")),
                        None => ("unknown", "not read".to_string()),
                    };
                    ResourceStatus {
                        key,
                        kind: record.kind,
                        id: record.id,
                        recorded: record.status,
                        live,
                        detail,
                    }
                })
                .collect();
            StatusReport {
                stack,
                region: Some(recorded.region),
                state_file,
                resources,
            }
        }
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{report}");
    }
    Ok(())
}
