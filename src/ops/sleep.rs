//! `sleep` and `wake`: GitLab stopped or started between its scheduled changes. A stack with a
//! schedule or an idle sleep has an Application Auto Scaling target on its service: `sleep`
//! holds it at no task (until the next scheduled wake, or with `--through-schedule` until
//! `wake`), `wake` at one (until the next scheduled sleep). Without one, the service's task
//! count is set directly. The state remembers the sleep, so `up` leaves it asleep and `status`
//! says since when and until when.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::phase::phase;
use super::stack::Opened;
use crate::config::StackConfig;
use crate::exit::{CliError, Diagnostic};
use crate::keys;
use crate::printer::Printer;
use crate::state::{State, StateHandle};
use crate::steps::{scaling, service};

const SLEEP_NOTE: &str = "sleep";

/// A sleep the state remembers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Sleep {
    /// When it was put to sleep (RFC 3339).
    pub since: String,
    /// When the schedule wakes it, in the schedule's time zone; `None`: until `wake`.
    pub until: Option<String>,
    /// The scheduled actions are held until `wake`.
    pub through_schedule: bool,
}

pub fn recorded_sleep(state: &State) -> Option<Sleep> {
    state.notes.get(SLEEP_NOTE).and_then(|v| serde_json::from_value(v.clone()).ok())
}

async fn remember(state: &StateHandle, sleep: Option<&Sleep>) -> Result<(), CliError> {
    state
        .update(
            |s| match sleep {
                Some(sleep) => drop(s.notes.insert(SLEEP_NOTE.into(), serde_json::json!(sleep))),
                None => drop(s.notes.remove(SLEEP_NOTE)),
            },
            true,
        )
        .await?;
    Ok(())
}

/// The service's scaled mark on its record: a service whose count is not `up`'s is not drift.
async fn mark_scaled(state: &StateHandle, scaled: bool) -> Result<(), CliError> {
    state
        .update(
            |s| {
                if let Some(record) = s.resources.get_mut(keys::SERVICE) {
                    record.attrs.insert("scaled".into(), serde_json::json!(scaled.to_string()));
                }
            },
            true,
        )
        .await?;
    Ok(())
}

fn cluster_of(state: &State) -> Result<String, CliError> {
    state.resources.get(keys::CLUSTER).and_then(|r| r.id.clone()).ok_or_else(|| {
        Diagnostic::new("the stack records no GitLab service").with_help("run `gitlab-provision up` first").into()
    })
}

/// When the schedule next wakes GitLab (in its time zone), if it has one.
pub fn next_scheduled_wake(cfg: &StackConfig) -> Option<String> {
    let hours = cfg.schedule.as_ref()?;
    let now = jiff::Zoned::now();
    let mut at = now.clone();
    // The next change may be a sleep (during office hours): the wake after it.
    for _ in 0..3 {
        let (wakes, when) = hours.next_change(&at)?;
        if wakes {
            return Some(when.strftime("%a %Y-%m-%d %H:%M %Z").to_string());
        }
        at = when;
    }
    None
}

pub async fn sleep(
    opened: &Opened,
    cfg: &StackConfig,
    printer: &Arc<Printer>,
    through_schedule: bool,
) -> Result<Sleep, CliError> {
    let (ctx, state) = (&opened.ctx, &opened.state);
    let snapshot = state.snapshot();
    let cluster = cluster_of(&snapshot)?;
    let target = snapshot.resources.get(keys::SCALABLE_TARGET).and_then(|r| r.id.clone());
    if through_schedule && (target.is_none() || cfg.schedule.is_none()) {
        return Err(Diagnostic::new("--through-schedule holds a schedule, and this stack has none")
            .with_help("run `gitlab-provision sleep` without it: GitLab sleeps until `gitlab-provision wake`")
            .into());
    }
    let until = if through_schedule { None } else { next_scheduled_wake(cfg) };
    let sleep = Sleep { since: crate::state::now_rfc3339(), until, through_schedule };
    // Remembered first: if the stop is interrupted, `up` still knows GitLab is meant to sleep.
    remember(state, Some(&sleep)).await?;
    mark_scaled(state, true).await?;
    let ctx = ctx.clone();
    phase(printer, state, "sleep", "stop GitLab's task", |scope| async move {
        match target {
            Some(target) => {
                scaling::set_bounds(&ctx, &target, 0, 0, through_schedule).await?;
                service::scale(&ctx, &scope, &cluster, 0).await
            }
            None => service::scale(&ctx, &scope, &cluster, 0).await,
        }
    })
    .await
    .map_err(CliError::failure)?;
    Ok(sleep)
}

pub async fn wake(opened: &Opened, cfg: &StackConfig, printer: &Arc<Printer>) -> Result<(), CliError> {
    let (ctx, state) = (&opened.ctx, &opened.state);
    let snapshot = state.snapshot();
    let cluster = cluster_of(&snapshot)?;
    let target = snapshot.resources.get(keys::SCALABLE_TARGET).and_then(|r| r.id.clone());
    let ctx = ctx.clone();
    phase(printer, state, "wake", "start GitLab's task", |_| async move {
        if let Some(target) = &target {
            // One task until the next scheduled sleep (or, when idle sleep is on, until
            // requests have been seen again: its alarm's return to OK releases the hold).
            scaling::set_bounds(&ctx, target, 1, 1, false).await?;
        }
        service::set_desired(&ctx, &cluster, 1).await
    })
    .await
    .map_err(CliError::failure)?;
    remember(state, None).await?;
    mark_scaled(state, cfg.schedule.is_some() || cfg.idle_sleep_minutes.is_some()).await?;
    Ok(())
}

/// Ends a sleep before an operation that must start GitLab (`upgrade`, `restore`): the scaling
/// bounds let one task run again and the state forgets the sleep, so converging and the
/// operation's own start are not undone by the scalable target. Nothing to do when awake.
pub async fn end_for(opened: &Opened, printer: &Printer, operation: &str) -> Result<(), CliError> {
    let snapshot = opened.state.snapshot();
    if recorded_sleep(&snapshot).is_none() {
        return Ok(());
    }
    printer.note(&format!("GitLab is asleep; {operation} wakes it"));
    if let Some(target) = snapshot.resources.get(keys::SCALABLE_TARGET).and_then(|r| r.id.clone()) {
        scaling::set_bounds(&opened.ctx, &target, 1, 1, false).await.map_err(CliError::failure)?;
    }
    remember(&opened.state, None).await
}
