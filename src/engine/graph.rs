use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::Serialize;
use tokio::task::JoinSet;

use super::{Event, Observer, StepScope};
use crate::state::{ResourceRecord, StateHandle};

#[async_trait]
pub trait StepAction<C>: Send + Sync {
    /// Brings what the step owns to the desired state: reuses, adopts or creates, idempotently.
    /// Returns a one-line summary of what it did.
    async fn apply(&self, ctx: &C, scope: &StepScope) -> anyhow::Result<String>;

    /// For `plan`: what applying would change in resources that exist, judged from the
    /// configuration and the records alone, as (record key, what changes).
    fn config_changes(&self, _records: &BTreeMap<String, ResourceRecord>) -> Vec<(String, String)> {
        Vec::new()
    }
}

pub struct Step<C> {
    pub name: String,
    pub deps: Vec<String>,
    pub description: String,
    /// Record keys (and kinds) this step owns, so `plan` can say what it would create.
    pub resources: Vec<(String, String)>,
    pub action: Arc<dyn StepAction<C>>,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum GraphError {
    #[error("step {step} depends on unknown step {missing}")]
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
        for d in &s.deps {
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
    #[error("{}", describe_failures(.failures, .not_started))]
    Failed { failures: Vec<(String, anyhow::Error)>, not_started: Vec<String>, report: RunReport },
}

fn describe_failures(failures: &[(String, anyhow::Error)], not_started: &[String]) -> String {
    let mut text = failures.iter().map(|(step, e)| format!("step {step} failed: {e:#}")).collect::<Vec<_>>().join("\n");
    if !not_started.is_empty() {
        text.push_str(&format!("\nnot started (upstream failed): {}", not_started.join(", ")));
    }
    text
}

/// Runs every step once its dependencies are done, up to `max_parallel` at a time.
/// Fails fast: after the first failure no step starts, running ones finish, and the
/// error names every failed step; steps never started are reported as such.
pub async fn run<C: Send + Sync + 'static>(
    steps: Vec<Step<C>>,
    ctx: Arc<C>,
    state: StateHandle,
    observer: Arc<dyn Observer>,
    max_parallel: usize,
) -> Result<RunReport, RunError> {
    order(&steps)?;
    let run_start = Instant::now();
    let mut waiting: BTreeMap<String, Step<C>> = steps.into_iter().map(|s| (s.name.clone(), s)).collect();
    let deps_of: BTreeMap<String, Vec<String>> = waiting.iter().map(|(k, s)| (k.clone(), s.deps.clone())).collect();
    let mut done: BTreeSet<String> = BTreeSet::new();
    let mut running: JoinSet<(String, f64, anyhow::Result<String>)> = JoinSet::new();
    let mut failures = Vec::new();
    let mut report = RunReport::default();

    loop {
        if failures.is_empty() {
            let ready: Vec<String> = waiting
                .values()
                .filter(|s| s.deps.iter().all(|d| done.contains(d)))
                .map(|s| s.name.clone())
                .take(max_parallel.saturating_sub(running.len()))
                .collect();
            for name in ready {
                let step = waiting.remove(&name).expect("ready step is waiting");
                observer.event(Event::Started { step: name.clone(), description: step.description.clone() });
                let scope = StepScope::new(&name, state.clone(), observer.clone());
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
                observer.event(Event::Finished { step: name.clone(), elapsed, summary: summary.clone() });
                let after = deps_of.get(&name).cloned().unwrap_or_default();
                report.timings.push(StepTiming { step: name.clone(), start, finish, summary, after });
                done.insert(name);
            }
            Err(error) => {
                observer.event(Event::Failed { step: name.clone(), elapsed, error: format!("{error:#}") });
                failures.push((name, error));
            }
        }
    }

    if failures.is_empty() {
        return Ok(report);
    }
    let not_started: Vec<String> = waiting.into_keys().collect();
    for step in &not_started {
        observer.event(Event::Skipped { step: step.clone(), reason: "upstream failed".into() });
    }
    Err(RunError::Failed { failures, not_started, report })
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

    struct Sleep(u64, bool);
    #[async_trait]
    impl StepAction<()> for Sleep {
        async fn apply(&self, _: &(), _: &StepScope) -> anyhow::Result<String> {
            tokio::time::sleep(Duration::from_millis(self.0)).await;
            if self.1 { anyhow::bail!("boom") } else { Ok("ok".into()) }
        }
    }

    fn step(name: &str, deps: &[&str], ms: u64, fail: bool) -> Step<()> {
        Step {
            name: name.into(),
            deps: deps.iter().map(|d| d.to_string()).collect(),
            description: String::new(),
            resources: vec![],
            action: Arc::new(Sleep(ms, fail)),
        }
    }

    fn harness() -> (tempfile::TempDir, StateHandle, Arc<Recorder>) {
        let dir = tempfile::tempdir().unwrap();
        let state = StateHandle::new(LockedState::open(dir.path(), "t", "us-east-1", "test").unwrap());
        (dir, state, Arc::new(Recorder(Mutex::new(vec![]))))
    }

    #[tokio::test]
    async fn independent_steps_overlap_and_deps_are_respected() {
        let (_d, state, rec) = harness();
        let steps = vec![step("a", &[], 200, false), step("b", &[], 200, false), step("c", &["a", "b"], 10, false)];
        let report = run(steps, Arc::new(()), state, rec.clone(), 8).await.unwrap();
        let t: BTreeMap<_, _> = report.timings.iter().map(|t| (t.step.clone(), t.clone())).collect();
        assert!(t["b"].start < t["a"].finish && t["a"].start < t["b"].finish, "a and b overlap: {t:?}");
        assert!(t["c"].start >= t["a"].finish && t["c"].start >= t["b"].finish);
    }

    #[tokio::test]
    async fn failure_stops_scheduling_but_lets_running_steps_finish() {
        let (_d, state, rec) = harness();
        let steps = vec![
            step("fails", &[], 10, true),
            step("slow", &[], 150, false),
            step("after", &["fails"], 1, false),
            step("after-slow", &["slow"], 1, false),
        ];
        let err = run(steps, Arc::new(()), state, rec.clone(), 8).await.unwrap_err();
        let RunError::Failed { failures, not_started, .. } = err else { panic!("expected Failed") };
        assert_eq!(failures.len(), 1);
        assert_eq!(failures[0].0, "fails");
        assert_eq!(not_started, vec!["after".to_string(), "after-slow".to_string()]);
        let log = rec.0.lock().unwrap().clone();
        assert!(log.contains(&"done slow".to_string()), "{log:?}");
        assert!(!log.contains(&"start after-slow".to_string()), "{log:?}");
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
