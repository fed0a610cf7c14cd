use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::Serialize;
use tokio::task::JoinSet;

use super::record::{Desired, Env};
use super::resource::Lives;
use super::{Event, Interrupt, Observer, SkipReason, StepScope};
use crate::state::StateHandle;

/// What a step did, in one line, and whether it changed anything.
#[derive(Debug, Clone)]
pub struct Summary {
    pub text: String,
    pub changed: bool,
}

impl Summary {
    pub fn new(text: impl Into<String>, changed: bool) -> Self {
        Summary { text: text.into(), changed }
    }
}

#[async_trait]
pub trait StepAction<C>: Send + Sync {
    /// What the step wants to exist, from the configuration and the records alone (no call to
    /// the outside world): `plan` decides on it, and `apply` makes it so through the same decision.
    fn desired(&self, _ctx: &C, _env: &Env) -> anyhow::Result<Vec<Desired>> {
        Ok(Vec::new())
    }

    /// Brings what the step owns to the desired state: reuses, adopts or creates, idempotently.
    async fn apply(&self, ctx: &C, scope: &StepScope) -> anyhow::Result<Summary>;
}

pub struct Step<C> {
    pub name: String,
    /// Steps that must finish first.
    pub after: Vec<String>,
    /// Records this step reads; the records it creates depend on them (teardown deletes its
    /// records first).
    pub needs: Vec<String>,
    /// Records that must outlive this step's records though the step does not read them.
    pub holds: Vec<String>,
    /// Record keys (and kinds) this step creates.
    pub creates: Vec<(String, String)>,
    pub description: String,
    /// A check of the configuration against the account: when it fails, nothing was created.
    pub preflight: bool,
    pub action: Arc<dyn StepAction<C>>,
}

impl<C> Step<C> {
    /// What the step wants given `records` (for `plan`: ids not created yet are placeholders).
    pub fn desired(
        &self,
        ctx: &C,
        records: &BTreeMap<String, crate::state::ResourceRecord>,
    ) -> anyhow::Result<Vec<Desired>> {
        let mut readable = self.needs.clone();
        readable.extend(self.creates.iter().map(|(k, _)| k.clone()));
        self.action.desired(ctx, &Env { records, step: &self.name, readable: &readable, planning: true })
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum GraphError {
    #[error("step {step} runs after unknown step {missing}")]
    UnknownDependency { step: String, missing: String },
    #[error("steps {0:?} depend on each other in a cycle")]
    Cycle(Vec<String>),
    #[error("step {0} is defined twice")]
    Duplicate(String),
}

/// Checks the graph and returns the step names in an order where each comes after its deps.
pub fn order<C>(steps: &[Step<C>]) -> Result<Vec<String>, GraphError> {
    let mut names = BTreeSet::new();
    for s in steps {
        if !names.insert(s.name.clone()) {
            return Err(GraphError::Duplicate(s.name.clone()));
        }
    }
    let mut indegree: BTreeMap<&str, usize> = BTreeMap::new();
    let mut dependents: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for s in steps {
        indegree.entry(&s.name).or_insert(0);
        for d in &s.after {
            if !names.contains(d) {
                return Err(GraphError::UnknownDependency { step: s.name.clone(), missing: d.clone() });
            }
            *indegree.entry(&s.name).or_insert(0) += 1;
            dependents.entry(d).or_default().push(&s.name);
        }
    }
    let mut ready: VecDeque<&str> = indegree.iter().filter(|(_, n)| **n == 0).map(|(k, _)| *k).collect();
    let mut out = Vec::new();
    while let Some(name) = ready.pop_front() {
        out.push(name.to_string());
        for dep in dependents.get(name).into_iter().flatten() {
            let n = indegree.get_mut(dep).expect("known step");
            *n -= 1;
            if *n == 0 {
                ready.push_back(dep);
            }
        }
    }
    if out.len() != steps.len() {
        let stuck = steps.iter().filter(|s| !out.contains(&s.name)).map(|s| s.name.clone()).collect();
        return Err(GraphError::Cycle(stuck));
    }
    Ok(out)
}

/// How many steps the longest chain from each step holds (itself included).
fn heights<C>(steps: &[Step<C>]) -> BTreeMap<String, usize> {
    let mut dependents: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for s in steps {
        for d in &s.after {
            dependents.entry(d.as_str()).or_default().push(&s.name);
        }
    }
    fn height<'a>(
        name: &'a str,
        dependents: &BTreeMap<&'a str, Vec<&'a str>>,
        memo: &mut BTreeMap<String, usize>,
    ) -> usize {
        if let Some(h) = memo.get(name) {
            return *h;
        }
        let below = dependents
            .get(name)
            .map(|ds| ds.iter().map(|d| height(d, dependents, memo)).max().unwrap_or(0))
            .unwrap_or(0);
        memo.insert(name.to_string(), below + 1);
        below + 1
    }
    let mut memo = BTreeMap::new();
    for s in steps {
        height(&s.name, &dependents, &mut memo);
    }
    memo
}

#[derive(Debug, Clone, Serialize)]
pub struct StepTiming {
    pub step: String,
    /// Seconds since the run started.
    pub start: f64,
    pub finish: f64,
    pub summary: String,
    /// What had to finish before it could start (the critical path runs through these).
    pub after: Vec<String>,
}

#[derive(Debug, Default, Serialize)]
pub struct RunReport {
    pub timings: Vec<StepTiming>,
    /// For a teardown: how many records were deleted.
    #[serde(skip_serializing_if = "is_zero")]
    pub removed: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Graph(#[from] GraphError),
    #[error("{}", describe_failures(.failures))]
    Failed {
        failures: Vec<(String, anyhow::Error)>,
        not_started: Vec<String>,
        /// Every failed step was a pre-flight check: nothing was created.
        preflight: bool,
        report: RunReport,
    },
    #[error("interrupted: {} not started", crate::engine::counted(.not_started.len(), "step"))]
    Interrupted {
        /// Steps whose wait Ctrl-C stopped (what they made is recorded).
        stopped: Vec<String>,
        /// Steps that never started.
        not_started: Vec<String>,
        report: RunReport,
    },
}

fn describe_failures(failures: &[(String, anyhow::Error)]) -> String {
    failures.iter().map(|(step, e)| format!("step {step} failed: {e:#}")).collect::<Vec<_>>().join("\n")
}

/// How to run the graph.
#[derive(Clone, Default)]
pub struct RunOptions {
    pub max_parallel: usize,
    pub interrupt: Interrupt,
    /// Live reads made just before the run (by the plan `up` showed), used instead of reading again.
    pub lives: Lives,
}

/// Runs every step once its dependencies are done, up to `max_parallel` at a time.
/// Fails fast: after the first failure (or an interrupt) no step starts, running ones finish
/// and are recorded, and the error names every failed step and what never started.
pub async fn run<C: Send + Sync + 'static>(
    steps: Vec<Step<C>>,
    ctx: Arc<C>,
    state: StateHandle,
    observer: Arc<dyn Observer>,
    options: RunOptions,
) -> Result<RunReport, RunError> {
    order(&steps)?;
    let height = heights(&steps);
    let run_start = Instant::now();
    let preflight: BTreeSet<String> = steps.iter().filter(|s| s.preflight).map(|s| s.name.clone()).collect();
    let mut waiting: BTreeMap<String, Step<C>> = steps.into_iter().map(|s| (s.name.clone(), s)).collect();
    let after_of: BTreeMap<String, Vec<String>> = waiting.iter().map(|(k, s)| (k.clone(), s.after.clone())).collect();
    let mut done: BTreeSet<String> = BTreeSet::new();
    let mut running: JoinSet<(String, f64, anyhow::Result<super::Summary>)> = JoinSet::new();
    let mut failures = Vec::new();
    let mut stopped = Vec::new();
    let mut report = RunReport::default();

    loop {
        if failures.is_empty() && !options.interrupt.raised() {
            // The longest chain first: what many steps wait for starts before what few do.
            let mut ready: Vec<&Step<C>> =
                waiting.values().filter(|s| s.after.iter().all(|d| done.contains(d))).collect();
            ready.sort_by_key(|s| std::cmp::Reverse(height[&s.name]));
            let ready: Vec<String> = ready
                .into_iter()
                .map(|s| s.name.clone())
                .take(options.max_parallel.max(1).saturating_sub(running.len()))
                .collect();
            for name in ready {
                let step = waiting.remove(&name).expect("ready step is waiting");
                observer.event(Event::Started { step: name.clone(), description: step.description.clone() });
                let scope = StepScope::for_step(&step, state.clone(), observer.clone(), options.lives.clone())
                    .with_interrupt(options.interrupt.clone());
                let ctx = ctx.clone();
                let start = run_start.elapsed().as_secs_f64();
                running.spawn(async move {
                    let result = step.action.apply(&ctx, &scope).await;
                    (name, start, result)
                });
            }
        }
        let Some(joined) = running.join_next().await else {
            break;
        };
        let (name, start, result) = match joined {
            Ok(outcome) => outcome,
            Err(panic) => ("<panicked step>".to_string(), 0.0, Err(anyhow::anyhow!("step panicked: {panic}"))),
        };
        let finish = run_start.elapsed().as_secs_f64();
        let elapsed = Duration::from_secs_f64((finish - start).max(0.0));
        match result {
            Ok(summary) => {
                observer.event(Event::Finished {
                    step: name.clone(),
                    elapsed,
                    summary: summary.text.clone(),
                    changed: summary.changed,
                });
                let after = after_of.get(&name).cloned().unwrap_or_default();
                report.timings.push(StepTiming { step: name.clone(), start, finish, summary: summary.text, after });
                done.insert(name);
            }
            // Ctrl-C stopped its wait: what it made is recorded (or found again by the next
            // run), so it is not a failure, only unfinished.
            Err(error) if options.interrupt.raised() && super::wait::WaitError::is_interrupted(&error) => {
                observer.event(Event::Skipped { step: name.clone(), reason: SkipReason::Interrupted });
                stopped.push(name);
            }
            Err(error) => {
                observer.event(Event::Failed { step: name.clone(), elapsed, error: format!("{error:#}") });
                failures.push((name, error));
            }
        }
    }

    let not_started: Vec<String> = waiting.into_keys().collect();
    if failures.is_empty() && not_started.is_empty() && stopped.is_empty() {
        return Ok(report);
    }
    if failures.is_empty() {
        for step in &not_started {
            observer.event(Event::Skipped { step: step.clone(), reason: SkipReason::Interrupted });
        }
        return Err(RunError::Interrupted { stopped, not_started, report });
    }
    let mut not_started = not_started;
    not_started.extend(stopped);
    for step in &not_started {
        observer.event(Event::Skipped { step: step.clone(), reason: SkipReason::UpstreamFailed });
    }
    let preflight = failures.iter().all(|(step, _)| preflight.contains(step))
        && report.timings.iter().all(|t| preflight.contains(&t.step));
    Err(RunError::Failed { failures, not_started, preflight, report })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::LockedState;
    use std::sync::Mutex;

    struct Recorder(Mutex<Vec<String>>);
    impl Observer for Recorder {
        fn event(&self, event: Event) {
            let line = match event {
                Event::Started { step, .. } => format!("start {step}"),
                Event::Finished { step, .. } => format!("done {step}"),
                Event::Failed { step, .. } => format!("fail {step}"),
                Event::Skipped { step, .. } => format!("skip {step}"),
                Event::Progress { .. } => return,
            };
            self.0.lock().unwrap().push(line);
        }
    }

    struct Sleep(u64, bool, Option<Interrupt>);
    #[async_trait]
    impl StepAction<()> for Sleep {
        async fn apply(&self, _: &(), _: &StepScope) -> anyhow::Result<Summary> {
            if let Some(interrupt) = &self.2 {
                interrupt.raise();
            }
            tokio::time::sleep(Duration::from_millis(self.0)).await;
            if self.1 { anyhow::bail!("boom") } else { Ok(Summary::new("ok", true)) }
        }
    }

    fn step(name: &str, after: &[&str], ms: u64, fail: bool) -> Step<()> {
        step_with(name, after, Sleep(ms, fail, None))
    }

    fn step_with(name: &str, after: &[&str], action: Sleep) -> Step<()> {
        Step {
            name: name.into(),
            after: after.iter().map(|d| d.to_string()).collect(),
            needs: vec![],
            holds: vec![],
            creates: vec![],
            description: String::new(),
            preflight: false,
            action: Arc::new(action),
        }
    }

    async fn harness() -> (tempfile::TempDir, StateHandle, Arc<Recorder>) {
        let dir = tempfile::tempdir().unwrap();
        let state = StateHandle::new(
            LockedState::open(crate::state::LocalStore::at(dir.path()), "t", "us-east-1", "test").await.unwrap(),
        );
        (dir, state, Arc::new(Recorder(Mutex::new(vec![]))))
    }

    fn options() -> RunOptions {
        RunOptions { max_parallel: 8, ..Default::default() }
    }

    #[tokio::test]
    async fn independent_steps_overlap_and_deps_are_respected() {
        let (_d, state, rec) = harness().await;
        let steps = vec![step("a", &[], 200, false), step("b", &[], 200, false), step("c", &["a", "b"], 10, false)];
        let report = run(steps, Arc::new(()), state, rec.clone(), options()).await.unwrap();
        let t: BTreeMap<_, _> = report.timings.iter().map(|t| (t.step.clone(), t.clone())).collect();
        assert!(t["b"].start < t["a"].finish && t["a"].start < t["b"].finish, "a and b overlap: {t:?}");
        assert!(t["c"].start >= t["a"].finish && t["c"].start >= t["b"].finish);
    }

    #[tokio::test]
    async fn failure_stops_scheduling_but_lets_running_steps_finish() {
        let (_d, state, rec) = harness().await;
        let steps = vec![
            step("fails", &[], 10, true),
            step("slow", &[], 150, false),
            step("after", &["fails"], 1, false),
            step("after-slow", &["slow"], 1, false),
        ];
        let err = run(steps, Arc::new(()), state, rec.clone(), options()).await.unwrap_err();
        let RunError::Failed { failures, not_started, .. } = err else { panic!("expected Failed") };
        assert_eq!(failures.len(), 1);
        assert_eq!(failures[0].0, "fails");
        assert_eq!(not_started, vec!["after".to_string(), "after-slow".to_string()]);
        let log = rec.0.lock().unwrap().clone();
        assert!(log.contains(&"done slow".to_string()), "{log:?}");
        assert!(!log.contains(&"start after-slow".to_string()), "{log:?}");
    }

    #[tokio::test]
    async fn an_interrupt_lets_running_steps_finish_and_starts_nothing_new() {
        let (_d, state, rec) = harness().await;
        let interrupt = Interrupt::default();
        let steps = vec![
            step_with("first", &[], Sleep(50, false, Some(interrupt.clone()))),
            step("second", &["first"], 1, false),
        ];
        let err =
            run(steps, Arc::new(()), state, rec.clone(), RunOptions { interrupt, ..options() }).await.unwrap_err();
        let RunError::Interrupted { not_started, report, .. } = err else { panic!("expected Interrupted") };
        assert_eq!(not_started, vec!["second".to_string()]);
        assert_eq!(report.timings.len(), 1, "the running step finished and was recorded");
    }

    #[test]
    fn bad_graphs_are_refused() {
        assert!(matches!(order(&[step("a", &["x"], 0, false)]), Err(GraphError::UnknownDependency { .. })));
        assert!(matches!(
            order(&[step("a", &["b"], 0, false), step("b", &["a"], 0, false)]),
            Err(GraphError::Cycle(_))
        ));
        assert!(matches!(order(&[step("a", &[], 0, false), step("a", &[], 0, false)]), Err(GraphError::Duplicate(_))));
    }
}
