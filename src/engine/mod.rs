//! A generic step engine: steps with dependencies run concurrently, record what they create
//! in the state, and are torn down in reverse. Nothing here knows about GitLab or AWS.

mod graph;
mod resource;
mod wait;

#[cfg(test)]
pub use graph::order as run_order;
pub use graph::{RunError, RunReport, Step, StepAction, StepTiming, run};
pub use resource::{
    Catalog, Created, Desired, Discovered, Live, ResourceOps, Teardown, adopt_orphans, discover_orphans, observe,
    teardown,
};
pub use wait::{Poll, RetryPolicy, WaitPolicy, retry_while, wait_until};

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::state::StateHandle;

/// What the engine reports while it works; a printer turns these into lines or bars.
#[derive(Debug, Clone)]
pub enum Event {
    Started { step: String, description: String },
    Progress { step: String, message: String },
    Finished { step: String, elapsed: Duration, summary: String },
    Failed { step: String, elapsed: Duration, error: String },
    Skipped { step: String, reason: String },
}

pub trait Observer: Send + Sync {
    fn event(&self, event: Event);
}

/// What a running step may use from the engine: the state and a way to report progress.
#[derive(Clone)]
pub struct StepScope {
    pub step: String,
    pub state: StateHandle,
    observer: Arc<dyn Observer>,
    started: Instant,
}

impl StepScope {
    pub fn new(step: &str, state: StateHandle, observer: Arc<dyn Observer>) -> Self {
        StepScope { step: step.to_string(), state, observer, started: Instant::now() }
    }

    pub fn progress(&self, message: impl Into<String>) {
        self.observer.event(Event::Progress { step: self.step.clone(), message: message.into() });
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }
}
