//! A generic step engine: steps with dependencies run concurrently, record what they create
//! in the state, and are torn down in reverse. Nothing here knows about GitLab or AWS.

mod decide;
mod graph;
mod policy;
mod record;
mod resource;
mod wait;

/// "1 step", "7 steps": a count with its noun, for messages people read.
pub fn counted<N: std::fmt::Display + PartialEq + From<u8>>(n: N, noun: &str) -> String {
    if n == N::from(1) { format!("1 {noun}") } else { format!("{n} {noun}s") }
}

pub use decide::{Action, Change, Live, Owner, decide};
pub use graph::{RunError, RunOptions, RunReport, Step, StepAction, StepTiming, Summary, order, run};
pub use policy::{Discovery, Interrupts, KindPolicy, When};
pub use record::{Attrs, Conflict, Desired, Discovered, Env, Found, KNOWN_AFTER, attrs, exactly, members, shown};
pub use resource::{
    Applied, Catalog, Ensured, Existing, HoldsContents, Lives, Lost, NotOurs, Orphan, ResourceOps, Teardown,
    TeardownError, adopt_orphans, discover, observe, teardown,
};
pub use wait::{Poll, RetryPolicy, WaitError, WaitPolicy, retry_while, wait_until};

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::state::{ResourceRecord, StateHandle};

/// What the engine reports while it works; a printer turns these into lines or bars.
#[derive(Debug, Clone)]
pub enum Event {
    Started { step: String, description: String },
    Progress { step: String, message: String },
    Finished { step: String, elapsed: Duration, summary: String, changed: bool },
    Failed { step: String, elapsed: Duration, error: String },
    Skipped { step: String, reason: SkipReason },
}

/// Why a step did not run (or did not finish).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum SkipReason {
    /// A step it needs failed.
    UpstreamFailed,
    /// Ctrl-C: it stopped waiting (what it made is recorded) or never started.
    Interrupted,
    /// For a teardown: something depending on it could not be deleted.
    StillUsed,
}

impl SkipReason {
    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::UpstreamFailed => "a step it needs failed",
            SkipReason::Interrupted => "interrupted",
            SkipReason::StillUsed => "a resource depending on it could not be deleted",
        }
    }
}

pub trait Observer: Send + Sync {
    fn event(&self, event: Event);
}

/// Set by the first Ctrl-C: no new step starts; running ones finish and are recorded.
#[derive(Clone, Default)]
pub struct Interrupt(Arc<AtomicBool>);

impl Interrupt {
    pub fn raise(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    pub fn raised(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// What a running step may use from the engine: the state, the records it declared it reads,
/// and a way to report progress.
#[derive(Clone)]
pub struct StepScope {
    pub step: String,
    pub state: StateHandle,
    observer: Arc<dyn Observer>,
    started: Instant,
    /// Records this step's records depend on (its needs and what it must be deleted before).
    depends_on: Vec<String>,
    /// Records it may read: what it needs and what it creates.
    readable: Vec<String>,
    lives: Lives,
    /// Raised by Ctrl-C: waits stop early (what they wait for is recorded or found again).
    interrupt: Interrupt,
}

impl StepScope {
    pub fn new(step: &str, state: StateHandle, observer: Arc<dyn Observer>) -> Self {
        StepScope {
            step: step.to_string(),
            state,
            observer,
            started: Instant::now(),
            depends_on: Vec::new(),
            readable: Vec::new(),
            lives: Lives::default(),
            interrupt: Interrupt::default(),
        }
    }

    fn for_step<C>(step: &Step<C>, state: StateHandle, observer: Arc<dyn Observer>, lives: Lives) -> Self {
        let mut depends_on = step.needs.clone();
        depends_on.extend(step.holds.iter().cloned());
        let mut readable = step.needs.clone();
        readable.extend(step.creates.iter().map(|(k, _)| k.clone()));
        StepScope { depends_on, readable, lives, ..StepScope::new(&step.name, state, observer) }
    }

    /// Lets an interrupt of the run stop this step's waits.
    pub fn with_interrupt(self, interrupt: Interrupt) -> Self {
        StepScope { interrupt, ..self }
    }

    pub fn interrupted(&self) -> bool {
        self.interrupt.raised()
    }

    pub fn progress(&self, message: impl Into<String>) {
        self.observer.event(Event::Progress { step: self.step.clone(), message: message.into() });
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// What this step wants, computed from the records as they are now.
    pub fn want<T>(&self, compute: impl FnOnce(&Env) -> anyhow::Result<T>) -> anyhow::Result<T> {
        let records = self.state.snapshot().resources;
        compute(&Env { records: &records, step: &self.step, readable: &self.readable, planning: false })
    }

    /// What `action` wants now.
    pub fn wanted<C>(&self, ctx: &C, action: &dyn StepAction<C>) -> anyhow::Result<Vec<Desired>> {
        self.want(|env| action.desired(ctx, env))
    }

    /// What a single-record `action` wants now.
    pub fn wanted_one<C>(&self, ctx: &C, action: &dyn StepAction<C>) -> anyhow::Result<Desired> {
        let [one] = exactly(self.wanted(ctx, action)?)?;
        Ok(one)
    }

    /// The id of a record this step reads.
    pub fn id_of(&self, key: &str) -> anyhow::Result<String> {
        self.want(|env| env.id(key))
    }

    /// Records a resource the step did not create through `ensure` (an imported one), with the
    /// step's dependencies.
    pub async fn record(&self, key: &str, record: ResourceRecord) -> anyhow::Result<()> {
        let depends_on = self.depends_on.iter().filter(|d| *d != key).cloned().collect();
        Ok(self.state.put(key, ResourceRecord { depends_on, step: self.step.clone(), ..record }).await?)
    }
}
