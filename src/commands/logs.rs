//! `logs`: GitLab's container logs (or, with `--exec`, the ECS Exec sessions' log) from the
//! stack's log group, every task's stream merged, each stream followed from its own position.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_sdk_cloudwatchlogs::types::FilteredLogEvent;
use serde::Serialize;

use crate::cli::{GlobalArgs, LogsArgs};
use crate::engine::Interrupt;
use crate::exit::{CliResult, Diagnostic, ExitStatus};
use crate::keys;
use crate::ops::stack::{Reached, reach};
use crate::printer::{Printer, escaped};
use crate::steps::logs::{STREAM_PREFIX, events_since};

/// One log line of `logs --json`: one JSON object per line, flat, for `jq`.
#[derive(Serialize, schemars::JsonSchema)]
pub struct LogLine {
    pub timestamp: String,
    pub stream: String,
    pub message: String,
}

/// How often `--follow` asks for new lines.
const FOLLOW_EVERY: Duration = Duration::from_secs(2);
/// How late an event may reach CloudWatch after a later one of another stream and still be
/// printed by `--follow` (ingestion is usually seconds).
const LATE_BY: i64 = 120_000;

fn rfc3339(millis: i64) -> String {
    let at = UNIX_EPOCH + Duration::from_millis(millis.max(0) as u64);
    humantime::format_rfc3339_millis(at).to_string()
}

pub async fn run(global: &GlobalArgs, args: LogsArgs, interrupt: Interrupt) -> CliResult {
    let since = humantime::parse_duration(&args.since).map_err(|e| {
        Diagnostic::new(format!("--since {:?}: {e}", args.since)).with_help("write a duration like 10m, 2h or 1d")
    })?;
    let printer = Printer::new(global, false);
    let Reached { stack, recorded, ctx } = reach(global, &printer).await?;
    let (key, prefix) = if args.exec { (keys::EXEC_LOG_GROUP, None) } else { (keys::LOG_GROUP, Some(STREAM_PREFIX)) };
    let Some(group) = recorded.resources.get(key).and_then(|r| r.id.clone()) else {
        return Err(Diagnostic::new(format!("stack {stack} has no {key} recorded"))
            .with_help(if args.exec {
                "run `gitlab-provision up`: it creates the log group ECS Exec sessions are written to (unless exec = false)"
            } else {
                "run `gitlab-provision up` first: it creates GitLab's log group"
            })
            .into());
    };
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let start = now.saturating_sub(since).as_millis() as i64;
    let mut events = events_since(&ctx, &group, prefix, start).await?;
    if let Some(tail) = args.tail {
        events.drain(..events.len().saturating_sub(tail));
    }
    let mut shown = Shown::default();
    for event in &events {
        shown.show(&printer, event, args.json)?;
    }
    while args.follow && !interrupt.raised() {
        tokio::time::sleep(FOLLOW_EVERY).await;
        if interrupt.raised() {
            break;
        }
        // From the stream that is furthest behind, less what may still arrive late.
        let from = shown.position.values().copied().min().unwrap_or(start).saturating_sub(LATE_BY).max(start);
        for event in events_since(&ctx, &group, prefix, from).await? {
            shown.show(&printer, &event, args.json)?;
        }
        shown.printed.retain(|(at, _)| *at >= from);
    }
    Ok(ExitStatus::Success)
}

/// What `logs` has printed: where each stream was read to, and each event once.
#[derive(Default)]
struct Shown {
    position: BTreeMap<String, i64>,
    printed: BTreeSet<(i64, String)>,
}

impl Shown {
    fn show(&mut self, printer: &Printer, event: &FilteredLogEvent, json: bool) -> anyhow::Result<()> {
        let (at, id) = (event.timestamp().unwrap_or_default(), event.event_id().unwrap_or_default().to_string());
        if !self.printed.insert((at, id)) {
            return Ok(());
        }
        let stream = event.log_stream_name().unwrap_or_default().to_string();
        let slot = self.position.entry(stream.clone()).or_insert(at);
        *slot = (*slot).max(at);
        let message = event.message().unwrap_or_default().trim_end();
        if json {
            printer.json_line("log", &LogLine { timestamp: rfc3339(at), stream, message: message.to_string() })
        } else {
            printer.out(&format!("{} {}", rfc3339(at), escaped(message)));
            Ok(())
        }
    }
}
