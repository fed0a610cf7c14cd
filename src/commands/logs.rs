//! `logs`: GitLab's container logs from the stack's log group, every task's stream merged.

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::cli::{GlobalArgs, LogsArgs};
use crate::engine::Interrupt;
use crate::exit::{CliResult, Diagnostic, ExitStatus};
use crate::keys;
use crate::ops::stack::{Reached, reach};
use crate::printer::Printer;
use crate::steps::logs::events;

/// One log line of `logs --json`: one JSON object per line, flat, for `jq`.
#[derive(Serialize)]
struct Line<'a> {
    schema: String,
    timestamp: String,
    stream: &'a str,
    message: &'a str,
}

/// How often `--follow` asks for new lines.
const FOLLOW_EVERY: Duration = Duration::from_secs(2);

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
    let Some(group) = recorded.resources.get(keys::LOG_GROUP).and_then(|r| r.id.clone()) else {
        return Err(Diagnostic::new(format!("stack {stack} has no log group recorded"))
            .with_help("run `gitlab-provision up` first: it creates GitLab's log group")
            .into());
    };
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let mut start = (now.saturating_sub(since)).as_millis() as i64;
    let mut seen: BTreeSet<String> = BTreeSet::new();
    loop {
        let mut token = None;
        loop {
            let (batch, next) = events(&ctx, &group, start, token).await?;
            for event in &batch {
                let id = event.event_id().unwrap_or_default().to_string();
                if !seen.insert(id) {
                    continue;
                }
                let timestamp = rfc3339(event.timestamp().unwrap_or_default());
                let (stream, message) =
                    (event.log_stream_name().unwrap_or_default(), event.message().unwrap_or_default().trim_end());
                if args.json {
                    let line = Line {
                        schema: format!("gitlab-provision.log/{}", crate::printer::SCHEMA_VERSION),
                        timestamp,
                        stream,
                        message,
                    };
                    printer.out(&serde_json::to_string(&line)?);
                } else {
                    printer.out(&format!("{timestamp} {message}"));
                }
                start = start.max(event.timestamp().unwrap_or_default());
            }
            match next {
                Some(next) if !batch.is_empty() => token = Some(next),
                _ => break,
            }
        }
        if !args.follow || interrupt.raised() {
            return Ok(ExitStatus::Success);
        }
        tokio::time::sleep(FOLLOW_EVERY).await;
        if interrupt.raised() {
            return Ok(ExitStatus::Success);
        }
    }
}
