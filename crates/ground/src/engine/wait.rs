//! The one wait loop and the one retry policy.

use std::future::Future;
use std::time::{Duration, Instant};

use super::StepScope;

/// One observation of something being waited for.
pub enum Poll<T> {
    Ready(T),
    /// Not yet; the text is the current state, shown in progress and in a timeout error.
    Pending(String),
    /// It will never get ready (e.g. a NAT gateway that went to `failed`).
    Failed(String),
}

#[derive(Debug, Clone, Copy)]
pub struct WaitPolicy {
    pub first_delay: Duration,
    pub max_delay: Duration,
    pub timeout: Duration,
}

impl WaitPolicy {
    /// Polls every half second at first, then every tenth of the time waited so far (so
    /// readiness is noticed within ~10% of the wait, at a few dozen calls for the longest
    /// waits), at most every 10 s.
    pub const fn up_to(timeout: Duration) -> Self {
        WaitPolicy { first_delay: Duration::from_millis(500), max_delay: Duration::from_secs(10), timeout }
    }

    /// Polls at least this often (what a person waits for, where seconds matter).
    pub const fn polling_at_most(self, every: Duration) -> Self {
        WaitPolicy { max_delay: every, ..self }
    }

    fn delay_after(&self, waited: Duration) -> Duration {
        (waited / 10).clamp(self.first_delay, self.max_delay)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WaitError {
    #[error("timed out after {}s waiting for {what} (last state: {last})", .waited.as_secs())]
    Timeout { what: String, waited: Duration, last: String },
    #[error("{what} failed: {reason}")]
    Failed { what: String, reason: String },
    #[error("while waiting for {what}: {source:#}")]
    Probe { what: String, source: anyhow::Error },
    #[error("stopped waiting for {what}: interrupted")]
    Interrupted { what: String },
}

impl WaitError {
    /// Whether `error` (or what it wraps) is a wait an interrupt stopped.
    pub fn is_interrupted(error: &anyhow::Error) -> bool {
        error.chain().any(|e| matches!(e.downcast_ref::<WaitError>(), Some(WaitError::Interrupted { .. })))
    }
}

/// How often a sleeping wait looks at the interrupt.
const INTERRUPT_CHECK: Duration = Duration::from_millis(200);

/// Polls `probe` until it reports ready (see [`WaitPolicy::up_to`] for the pace), reporting each
/// new state through the step's progress.
pub async fn wait_until<T, F, Fut>(
    scope: &StepScope,
    what: &str,
    policy: WaitPolicy,
    mut probe: F,
) -> Result<T, WaitError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Poll<T>>>,
{
    let started = Instant::now();
    let mut last = String::from("unknown");
    loop {
        if scope.interrupted() {
            return Err(WaitError::Interrupted { what: what.to_string() });
        }
        match probe().await {
            Ok(Poll::Ready(value)) => return Ok(value),
            Ok(Poll::Failed(reason)) => {
                return Err(WaitError::Failed { what: what.to_string(), reason });
            }
            Ok(Poll::Pending(state)) => {
                if state != last {
                    scope.progress(format!("waiting for {what}: {state}"));
                    last = state;
                }
            }
            Err(source) => {
                return Err(WaitError::Probe { what: what.to_string(), source });
            }
        }
        let waited = started.elapsed();
        if waited >= policy.timeout {
            return Err(WaitError::Timeout { what: what.to_string(), waited, last });
        }
        let wake = Instant::now() + policy.delay_after(waited).min(policy.timeout - waited);
        while Instant::now() < wake && !scope.interrupted() {
            tokio::time::sleep(INTERRUPT_CHECK.min(wake - Instant::now())).await;
        }
    }
}

/// For AWS's eventual consistency, which the SDK's own retries do not cover: a new security
/// group not yet visible, an ENI still draining (`DependencyViolation`), a role not yet assumable.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub attempts: u32,
    pub first_delay: Duration,
    pub max_delay: Duration,
}

impl RetryPolicy {
    /// 28-56 s in all (jitter): AWS's usual propagation delays (a new role becoming assumable,
    /// a dependency AWS has not noticed is gone).
    pub const EVENTUAL_CONSISTENCY: RetryPolicy =
        RetryPolicy { attempts: 10, first_delay: Duration::from_millis(500), max_delay: Duration::from_secs(10) };
    /// 4-8 s: for a resource written moments ago that reads as missing (AWS's read-after-create
    /// window), before believing it deleted.
    pub const READ_AFTER_CREATE: RetryPolicy =
        RetryPolicy { attempts: 5, first_delay: Duration::from_millis(500), max_delay: Duration::from_secs(4) };
    /// About two minutes: what a service documents for a resource another one just created or
    /// released (an IAM policy reaching Lambda, a certificate reaching ELB, a secret's name freed).
    pub const PROPAGATION: RetryPolicy =
        RetryPolicy { attempts: 16, first_delay: Duration::from_millis(500), max_delay: Duration::from_secs(10) };
}

/// Retries `op` while `retryable` says so, with exponential backoff and full jitter.
pub async fn retry_while<T, E, F, Fut>(policy: RetryPolicy, retryable: impl Fn(&E) -> bool, mut op: F) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut attempt = 1;
    loop {
        match op().await {
            Err(e) if attempt < policy.attempts && retryable(&e) => {
                let ceiling = policy.first_delay.saturating_mul(1 << (attempt - 1).min(16)).min(policy.max_delay);
                tokio::time::sleep(ceiling.mul_f64(0.5 + fastrand::f64() / 2.0)).await;
                attempt += 1;
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Event, Observer};
    use crate::state::{LockedState, StateHandle};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    struct Quiet;
    impl Observer for Quiet {
        fn event(&self, _: Event) {}
    }

    async fn scope() -> (tempfile::TempDir, StepScope) {
        let dir = tempfile::tempdir().unwrap();
        let state = StateHandle::new(
            LockedState::open(crate::state::LocalStore::at(dir.path()), "t", "us-east-1", "test").await.unwrap(),
        );
        (dir, StepScope::new("t", state, Arc::new(Quiet)))
    }

    #[tokio::test]
    async fn wait_returns_once_ready_and_times_out_with_the_last_state() {
        let (_d, scope) = scope().await;
        let calls = AtomicU32::new(0);
        let policy = WaitPolicy {
            first_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(5),
            timeout: Duration::from_secs(5),
        };
        let v = wait_until(&scope, "thing", policy, || async {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            Ok(if n >= 3 { Poll::Ready(n) } else { Poll::Pending("pending".into()) })
        })
        .await
        .unwrap();
        assert_eq!(v, 3);

        let policy = WaitPolicy { timeout: Duration::from_millis(30), ..policy };
        let err =
            wait_until(&scope, "NAT gateway nat-1", policy, || async { Ok(Poll::<()>::Pending("pending".into())) })
                .await
                .unwrap_err();
        assert!(err.to_string().contains("NAT gateway nat-1") && err.to_string().contains("pending"), "{err}");
    }

    #[test]
    fn polling_keeps_pace_with_the_wait() {
        let policy = WaitPolicy::up_to(Duration::from_secs(600));
        assert_eq!(policy.delay_after(Duration::ZERO), Duration::from_millis(500));
        assert_eq!(policy.delay_after(Duration::from_secs(30)), Duration::from_secs(3));
        assert_eq!(policy.delay_after(Duration::from_secs(300)), Duration::from_secs(10));
    }

    #[tokio::test]
    async fn retry_stops_on_a_non_retryable_error_and_after_the_budget() {
        let policy =
            RetryPolicy { attempts: 4, first_delay: Duration::from_millis(1), max_delay: Duration::from_millis(2) };
        let calls = AtomicU32::new(0);
        let r: Result<(), &str> = retry_while(
            policy,
            |e| *e == "again",
            || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err("again")
            },
        )
        .await;
        assert!(r.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 4);
        calls.store(0, Ordering::SeqCst);
        let _ = retry_while(
            policy,
            |e: &&str| *e == "again",
            || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err::<(), _>("fatal")
            },
        )
        .await;
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }
}
