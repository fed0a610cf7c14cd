//! One phase of a long day-two operation, shown as a step: started, its waits, finished,
//! failed or interrupted, the same way for backups, restores, sleeps and wakes.

use std::sync::Arc;

use crate::engine::{Event, Interrupt, Observer as _, StepScope, WaitError};
use crate::printer::Printer;
use crate::state::StateHandle;

/// One phase of a long operation, shown as a step (started, its waits, finished or failed).
pub async fn phase<T, F, Fut>(
    printer: &Arc<Printer>,
    state: &StateHandle,
    name: &str,
    what: &str,
    work: F,
) -> anyhow::Result<T>
where
    F: FnOnce(StepScope) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    phase_with(printer, state, name, what, None, work).await
}

/// [`phase`], with waits an interrupt stops.
pub async fn phase_with<T, F, Fut>(
    printer: &Arc<Printer>,
    state: &StateHandle,
    name: &str,
    what: &str,
    interrupt: Option<&Interrupt>,
    work: F,
) -> anyhow::Result<T>
where
    F: FnOnce(StepScope) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let mut scope = StepScope::new(name, state.clone(), printer.clone());
    if let Some(interrupt) = interrupt {
        scope = scope.with_interrupt(interrupt.clone());
    }
    printer.event(Event::Started { step: name.to_string(), description: what.to_string() });
    let result = work(scope.clone()).await;
    match &result {
        Ok(_) => printer.event(Event::Finished {
            step: name.to_string(),
            elapsed: scope.elapsed(),
            summary: what.to_string(),
            changed: true,
        }),
        Err(e) if WaitError::is_interrupted(e) => {
            printer.event(Event::Skipped { step: name.to_string(), reason: crate::engine::SkipReason::Interrupted })
        }
        Err(e) => {
            printer.event(Event::Failed { step: name.to_string(), elapsed: scope.elapsed(), error: format!("{e:#}") })
        }
    }
    result
}
