//! A resource's life as the engine sees it: ensure (the decision of [`decide`] carried out, with
//! the intent on disk before every create call), teardown in reverse dependency order, live
//! reads for `status` and `plan`, and discovery of what the state does not record.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use async_trait::async_trait;
use tokio::task::JoinSet;

use super::decide::{Action, Live, Owner, decide};
use super::record::{Conflict, Desired, Discovered, Found};
use super::{Event, Interrupt, KindPolicy, Observer, RunReport, StepScope, StepTiming};
use crate::state::{RecordStatus, ResourceRecord, StateHandle};

/// Read, find, delete and discover for one kind of resource. Create lives with the step that
/// knows the inputs; these only need the record.
#[async_trait]
pub trait ResourceOps<C: Sync>: Send + Sync {
    /// A short noun for messages: "VPC", "NAT gateway".
    fn noun(&self) -> &'static str;

    /// Reads the live resource. Kinds whose read includes tags say whose it is; others leave
    /// the owner unchecked (one call less for a resource that is only kept).
    async fn read(&self, ctx: &C, record: &ResourceRecord) -> anyhow::Result<Live>;

    /// Reads it and checks whose it is, before anything changes or deletes it.
    async fn read_owned(&self, ctx: &C, record: &ResourceRecord) -> anyhow::Result<Live> {
        self.read(ctx, record).await
    }

    /// Finds a resource that a run created but could not record (crash between the create call
    /// and the save), by its tags, name or the idempotency token it was created with.
    async fn find(&self, ctx: &C, lost: &Lost<'_>) -> anyhow::Result<Option<String>>;

    /// Deletes it and waits until what depends on it can go; "not found" is success.
    async fn delete(&self, ctx: &C, record: &ResourceRecord, scope: &StepScope) -> anyhow::Result<()>;

    /// Everything of this kind that carries the stack's tags, whether recorded or not (a lost
    /// or incomplete state file), and what has the stack's names without being its own.
    async fn discover(&self, _ctx: &C) -> anyhow::Result<Found> {
        Ok(Found::default())
    }

    /// What it holds that the tool never deletes (a vault's backups, a bucket's objects), in
    /// words ("3 backups"); `None` when it is empty. Asked for kinds whose policy keeps them
    /// while they hold something.
    async fn holds(&self, _ctx: &C, _record: &ResourceRecord) -> anyhow::Result<Option<String>> {
        Ok(None)
    }
}

/// What an interrupted run may have created without recording it: the intent it saved before
/// the create call (key and record) and the idempotency token it sent.
pub struct Lost<'a> {
    pub key: &'a str,
    pub record: &'a ResourceRecord,
    pub token: &'a str,
}

/// Maps a record's kind to its operations and its policy (one row of one table).
pub trait Catalog<C: Sync>: Send + Sync {
    fn ops(&self, kind: &str) -> Option<&dyn ResourceOps<C>>;
    /// The kind's policy; `key` tells apart records of one kind that go at different times.
    fn policy(&self, kind: &str, key: &str) -> Option<KindPolicy>;
    /// Every kind that can be discovered without a record.
    fn discoverable(&self) -> Vec<&'static str>;

    /// Deletion order for resources found without a record (lower goes first); an unknown kind last.
    fn teardown_rank(&self, kind: &str, key: &str) -> i8 {
        self.policy(kind, key).map_or(i8::MAX, |p| p.rank)
    }
}

/// Live reads taken before a run, handed to `ensure` so the same resource is not read twice.
#[derive(Clone, Default)]
pub struct Lives(Arc<Mutex<BTreeMap<String, Live>>>);

impl Lives {
    pub fn new(lives: BTreeMap<String, Live>) -> Self {
        Lives(Arc::new(Mutex::new(lives)))
    }

    fn take(&self, key: &str) -> Option<Live> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).remove(key)
    }
}

/// The id an apply function converges instead of creating.
pub struct Existing {
    pub id: String,
}

/// What an apply function made or converged: its id and what it learned (outputs such as ARNs
/// and DNS names, kept in the record next to the settings).
pub struct Applied {
    pub id: String,
    pub attrs: super::Attrs,
}

impl Applied {
    pub fn id(id: impl Into<String>) -> Self {
        Applied { id: id.into(), attrs: BTreeMap::new() }
    }

    pub fn with(mut self, name: &str, value: impl Into<String>) -> Self {
        self.attrs.insert(name.to_string(), serde_json::Value::String(value.into()));
        self
    }

    /// An output of its own type (a list).
    pub fn with_value(mut self, name: &str, value: impl serde::Serialize) -> Self {
        self.attrs.insert(name.to_string(), serde_json::to_value(value).unwrap_or(serde_json::Value::Null));
        self
    }
}

/// What `ensure` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Kept,
    Attached,
    Updated,
    Replaced,
    Created,
    Adopted,
    Recreated,
}

pub struct Ensured {
    pub record: ResourceRecord,
    pub outcome: Outcome,
}

impl Ensured {
    pub fn id(&self) -> &str {
        self.record.id.as_deref().unwrap_or_default()
    }

    pub fn attr(&self, name: &str) -> &str {
        self.record.attr(name).unwrap_or_default()
    }

    pub fn verb(&self) -> &'static str {
        match self.outcome {
            Outcome::Kept => "kept",
            Outcome::Attached => "attached",
            Outcome::Updated => "updated",
            Outcome::Replaced => "replaced",
            Outcome::Created => "created",
            Outcome::Adopted => "adopted",
            Outcome::Recreated => "re-created",
        }
    }

    pub fn changed(&self) -> bool {
        self.outcome != Outcome::Kept
    }

    /// "<verb> <id><detail>", the summary most steps print.
    pub fn summary(&self, detail: &str) -> super::Summary {
        super::Summary::new(format!("{} {}{detail}", self.verb(), self.id()), self.changed())
    }
}

/// A recorded resource that exists but is not this stack's: nothing changes it.
#[derive(Debug, thiserror::Error)]
#[error("{noun} {id} (recorded as {key}) is not this stack's: {why}; it was left alone")]
pub struct NotOurs {
    pub key: String,
    pub noun: &'static str,
    pub id: String,
    pub why: String,
}

impl crate::Help for NotOurs {
    fn help(&self) -> Option<String> {
        Some(format!(
            "if the state file was edited or copied from another stack, restore the right one; if this {} is really the stack's, tag it gitlab-provision:stack = <stack>",
            self.noun
        ))
    }
}

impl StepScope {
    /// Saves the id a create call answered for `key`, before the step waits for the resource to
    /// be ready: a wait that Ctrl-C (or a crash) stops leaves a pending record with its id, and
    /// the next run waits for that resource instead of looking for it.
    pub async fn created(&self, key: &str, id: &str) -> anyhow::Result<()> {
        if let Some(record) = self.state.get(key).filter(|r| r.status == RecordStatus::Pending && r.id.is_none()) {
            self.state.put(key, ResourceRecord { id: Some(id.to_string()), ..record }).await?;
        }
        Ok(())
    }

    /// Makes `desired` exist as [`decide`] says, calling `apply(existing, token)` only when
    /// something must change: with the id to converge, or `None` to create (after the intent is
    /// saved as pending; the token is deterministic for this stack, key and generation).
    pub async fn ensure<C: Sync, F, Fut>(
        &self,
        ctx: &C,
        ops: &dyn ResourceOps<C>,
        desired: Desired,
        apply: F,
    ) -> anyhow::Result<Ensured>
    where
        F: FnOnce(Option<Existing>, String) -> Fut,
        Fut: Future<Output = anyhow::Result<Applied>>,
    {
        let key = desired.key.clone();
        let record = self.state.get(&key);
        let live = match &record {
            Some(r) if matches!(r.status, RecordStatus::Created | RecordStatus::Retained) => {
                match self.lives.take(&key) {
                    Some(live) => Some(live),
                    None => Some(read_settled(ops, ctx, r, false).await?),
                }
            }
            _ => None,
        };
        let mut generation = record.as_ref().map_or(0, |r| r.generation);
        let depends_on: Vec<String> = self.depends_on.iter().filter(|d| **d != key).cloned().collect();
        let mut action = decide(record.as_ref(), live.as_ref(), &desired);
        let id = || record.as_ref().and_then(|r| r.id.clone()).unwrap_or_else(|| "?".into());

        // Whose it is must be known before anything changes it.
        if let (Some(r), Some(Live::Present { owner: Owner::Unchecked, .. })) = (&record, &live)
            && action.changes_anything()
        {
            action = decide(Some(r), Some(&ops.read_owned(ctx, r).await?), &desired);
        }
        let (existing, outcome) = match action {
            Action::Keep => {
                let record = record.expect("kept resources are recorded");
                if record.depends_on != depends_on {
                    self.state.put(&key, ResourceRecord { depends_on, ..record.clone() }).await?;
                }
                return Ok(Ensured { record, outcome: Outcome::Kept });
            }
            Action::Refuse(why) => {
                return Err(NotOurs { key, noun: ops.noun(), id: id(), why }.into());
            }
            Action::Attach(changes) if changes.is_empty() => {
                // Kept by an earlier `down --keep-data`: part of the stack again.
                self.progress(format!("attaching the kept {} {}", ops.noun(), id()));
                let attached =
                    ResourceRecord { status: RecordStatus::Created, depends_on, ..record.expect("recorded") };
                self.state.put(&key, attached.clone()).await?;
                return Ok(Ensured { record: attached, outcome: Outcome::Attached });
            }
            Action::Attach(changes) => {
                self.progress(format!(
                    "attaching the kept {} {} and updating it: {}",
                    ops.noun(),
                    id(),
                    join(&changes)
                ));
                (Some(Existing { id: id() }), Outcome::Attached)
            }
            Action::Update(changes) => {
                self.progress(format!("updating {} {}: {}", ops.noun(), id(), join(&changes)));
                (Some(Existing { id: id() }), Outcome::Updated)
            }
            Action::Replace(changes) => {
                self.progress(format!("replacing {} {}: {}", ops.noun(), id(), join(&changes)));
                ops.delete(ctx, record.as_ref().expect("recorded"), self).await?;
                generation += 1;
                (None, Outcome::Replaced)
            }
            Action::Recreate => {
                self.progress(format!(
                    "{} {} no longer exists (deleted outside gitlab-provision); creating it again",
                    ops.noun(),
                    id()
                ));
                generation += 1;
                (None, Outcome::Recreated)
            }
            Action::Resume => {
                let token = idempotency_token(&self.state.lineage(), &key, generation);
                let pending = record.as_ref().expect("pending resources are recorded");
                // Created, and its id saved, but not ready when the run stopped: finished now.
                let known = match &pending.id {
                    Some(id) => match read_settled(ops, ctx, pending, true).await? {
                        Live::Present { owner: Owner::Foreign(why), .. } => {
                            return Err(NotOurs { key, noun: ops.noun(), id: id.clone(), why }.into());
                        }
                        Live::Present { .. } => Some(id.clone()),
                        Live::Missing => None,
                    },
                    None => None,
                };
                let found = match known {
                    Some(id) => Some(id),
                    None => ops.find(ctx, &Lost { key: &key, record: pending, token: &token }).await?,
                };
                match found {
                    Some(found) => {
                        self.progress(format!(
                            "found {} {found} created by an interrupted run; adopting it",
                            ops.noun()
                        ));
                        (Some(Existing { id: found }), Outcome::Adopted)
                    }
                    None => (None, Outcome::Created),
                }
            }
            Action::Create => (None, Outcome::Created),
        };
        let record_now = |status, id, attrs| ResourceRecord {
            kind: desired.kind.clone(),
            step: self.step.clone(),
            status,
            id,
            depends_on: depends_on.clone(),
            attrs,
            generation,
            updated_at: String::new(),
        };
        if existing.is_none() {
            // The intent is on disk before the call: a crash from here on leaves a record that
            // the next run resolves by finding the resource or creating it.
            self.state.put(&key, record_now(RecordStatus::Pending, None, desired.attrs.clone())).await?;
        }
        let token = idempotency_token(&self.state.lineage(), &key, generation);
        let done = apply(existing, token).await?;
        let mut attrs = desired.attrs.clone();
        attrs.extend(done.attrs);
        let record = record_now(RecordStatus::Created, Some(done.id), attrs);
        self.state.put(&key, record.clone()).await?;
        Ok(Ensured { record, outcome })
    }
}

fn join(changes: &[super::Change]) -> String {
    changes.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
}

/// At most 64 ASCII characters, as EC2's ClientToken allows.
pub fn idempotency_token(lineage: &str, key: &str, generation: u32) -> String {
    let mut token = format!("gp-{lineage}-{key}-{generation}");
    token.truncate(64);
    token
}

/// A resource whose kind is refused while it holds something still held something at the moment
/// of its deletion, and the teardown was not told to delete what it holds.
#[derive(Debug, thiserror::Error)]
#[error("{what} holds {held}: not deleted without being told to")]
pub struct HoldsContents {
    pub what: String,
    pub held: String,
}

#[derive(Debug, thiserror::Error)]
#[error("{}", describe(.failures, .blocked))]
pub struct TeardownError {
    pub failures: Vec<(String, anyhow::Error)>,
    pub blocked: Vec<String>,
    pub interrupted: bool,
    pub left_alone: Vec<(String, String)>,
    pub report: RunReport,
}

fn describe(failures: &[(String, anyhow::Error)], blocked: &[String]) -> String {
    let mut text =
        failures.iter().map(|(key, e)| format!("deleting {key} failed: {e:#}")).collect::<Vec<_>>().join("\n");
    if !blocked.is_empty() {
        if !text.is_empty() {
            text.push('\n');
        }
        text.push_str(&format!("not deleted yet (something using them is still there): {}", blocked.join(", ")));
    }
    text
}

/// Which records a teardown touches, and which of those it keeps.
#[derive(Default, Clone)]
pub struct Teardown {
    /// Only these keys (all when `None`).
    pub only: Option<BTreeSet<String>>,
    /// Mark these as retained instead of deleting them, each with why (shown as it is kept).
    pub keep: BTreeMap<String, String>,
    /// Delete what kinds refused while holding something hold (`down --delete-objects`); without
    /// it such a resource that still holds something is not deleted, and says what it holds.
    pub delete_contents: bool,
    pub max_parallel: usize,
    pub interrupt: Interrupt,
}

/// What a teardown did.
#[derive(Debug, Default)]
pub struct TeardownOutcome {
    pub report: RunReport,
    /// Recorded resources that are not the stack's: not deleted, no longer recorded; with why.
    pub left_alone: Vec<(String, String)>,
}

enum Deleted {
    Removed,
    Kept,
    LeftAlone(String),
}

/// Deletes the recorded resources in reverse dependency order, concurrently where independent.
/// Keeps going past failures: independent branches are still deleted and every failure is
/// reported at the end. Imported resources are released, not deleted; kept ones are marked
/// retained; ones that turn out not to be the stack's are left alone and forgotten.
pub async fn teardown<C: Send + Sync + 'static>(
    ctx: Arc<C>,
    state: StateHandle,
    catalog: Arc<dyn Catalog<C>>,
    observer: Arc<dyn Observer>,
    plan: Teardown,
) -> Result<TeardownOutcome, TeardownError> {
    let Teardown { only, keep, delete_contents, max_parallel, interrupt } = plan;
    let teardown_start = Instant::now();
    let mut outcome = TeardownOutcome::default();
    let records: BTreeMap<String, ResourceRecord> =
        state.snapshot().resources.into_iter().filter(|(k, _)| only.as_ref().is_none_or(|o| o.contains(k))).collect();
    // A record may go once nothing that depends on it is left.
    let mut dependents: BTreeMap<String, BTreeSet<String>> =
        records.keys().map(|k| (k.clone(), BTreeSet::new())).collect();
    for (key, record) in &records {
        for dep in &record.depends_on {
            if let Some(set) = dependents.get_mut(dep) {
                set.insert(key.clone());
            }
        }
    }
    let mut pending: BTreeMap<String, ResourceRecord> = records;
    let mut in_flight: BTreeSet<String> = BTreeSet::new();
    let mut failed: BTreeSet<String> = BTreeSet::new();
    let mut failures = Vec::new();
    let mut running: JoinSet<(String, Instant, anyhow::Result<Deleted>)> = JoinSet::new();
    let mut stopped = Vec::new();

    loop {
        let ready: Vec<String> = if interrupt.raised() {
            Vec::new()
        } else {
            pending
                .keys()
                .filter(|k| {
                    dependents[*k]
                        .iter()
                        .all(|d| !pending.contains_key(d) && !in_flight.contains(d) && !failed.contains(d))
                })
                .take(max_parallel.max(1).saturating_sub(running.len()))
                .cloned()
                .collect()
        };
        for key in ready {
            let record = pending.remove(&key).expect("ready key is pending");
            in_flight.insert(key.clone());
            let (ctx, catalog, retain) = (ctx.clone(), catalog.clone(), keep.get(&key).cloned());
            let scope = StepScope::new(&key, state.clone(), observer.clone()).with_interrupt(interrupt.clone());
            running.spawn(async move {
                let started = Instant::now();
                let result = delete_one(&*ctx, &*catalog, &scope, &record, retain, delete_contents).await;
                (key, started, result)
            });
        }
        let Some(joined) = running.join_next().await else {
            break;
        };
        let (key, started, result) = match joined {
            Ok(outcome) => outcome,
            Err(panic) => ("<panicked>".to_string(), Instant::now(), Err(anyhow::anyhow!("delete panicked: {panic}"))),
        };
        in_flight.remove(&key);
        let finish = teardown_start.elapsed().as_secs_f64();
        let timing = || StepTiming {
            step: key.clone(),
            start: finish - started.elapsed().as_secs_f64(),
            finish,
            summary: String::new(),
            after: dependents.get(&key).map(|d| d.iter().cloned().collect()).unwrap_or_default(),
        };
        match result {
            Ok(deleted) => {
                outcome.report.timings.push(timing());
                match deleted {
                    Deleted::Removed => outcome.report.removed += 1,
                    Deleted::Kept => {}
                    Deleted::LeftAlone(why) => outcome.left_alone.push((key, why)),
                }
            }
            // Ctrl-C stopped its wait: still recorded, the next `down` goes on with it.
            Err(error) if interrupt.raised() && super::wait::WaitError::is_interrupted(&error) => {
                observer.event(Event::Skipped { step: key.clone(), reason: super::SkipReason::Interrupted });
                stopped.push(key);
            }
            Err(error) => {
                observer.event(Event::Failed {
                    step: key.clone(),
                    elapsed: started.elapsed(),
                    error: format!("{error:#}"),
                });
                failed.insert(key.clone());
                failures.push((key, error));
            }
        }
    }
    let mut blocked: Vec<String> = pending.into_keys().collect();
    blocked.extend(stopped);
    if !interrupt.raised() {
        for key in &blocked {
            observer.event(Event::Skipped { step: key.clone(), reason: super::SkipReason::StillUsed });
        }
    }
    if failures.is_empty() && blocked.is_empty() {
        Ok(outcome)
    } else {
        Err(TeardownError {
            failures,
            blocked,
            interrupted: interrupt.raised(),
            left_alone: outcome.left_alone,
            report: outcome.report,
        })
    }
}

/// Deletes (or keeps, or releases) one record; `scope` is the record's own step.
async fn delete_one<C: Sync>(
    ctx: &C,
    catalog: &dyn Catalog<C>,
    scope: &StepScope,
    record: &ResourceRecord,
    retain: Option<String>,
    delete_contents: bool,
) -> anyhow::Result<Deleted> {
    let ops = catalog
        .ops(&record.kind)
        .ok_or_else(|| anyhow::anyhow!("unknown resource kind {:?} in the state file", record.kind))?;
    let (key, state, observer) = (scope.step.as_str(), &scope.state, &scope.observer);
    let id = record.id.as_deref().unwrap_or("(not recorded)");
    let finished = |summary: &str| {
        observer.event(Event::Finished {
            step: key.to_string(),
            elapsed: scope.elapsed(),
            summary: summary.to_string(),
            changed: true,
        })
    };
    if let Some(why) =
        retain.filter(|_| record.status != RecordStatus::Pending && record.status != RecordStatus::Imported)
    {
        observer.event(Event::Started { step: key.to_string(), description: format!("keep {} {id}", ops.noun()) });
        state.put(key, ResourceRecord { status: RecordStatus::Retained, ..record.clone() }).await?;
        finished(&format!("kept: {why}"));
        return Ok(Deleted::Kept);
    }
    let description = match record.status {
        RecordStatus::Imported => format!("release {} {id} (imported: left in place)", ops.noun()),
        _ => format!("delete {} {id}", ops.noun()),
    };
    observer.event(Event::Started { step: key.to_string(), description });
    let mut summary = "deleted".to_string();
    match record.status {
        RecordStatus::Imported => summary = "released".into(),
        RecordStatus::Created | RecordStatus::Retained => match ops.read_owned(ctx, record).await? {
            Live::Missing => summary = "already gone".into(),
            Live::Present { owner: Owner::Foreign(why), .. } => {
                state.remove(key).await?;
                finished(&format!("LEFT ALONE: not this stack's ({why}); no longer recorded"));
                return Ok(Deleted::LeftAlone(why));
            }
            Live::Present { .. } => {
                // Checked again at the moment of deletion, after what writes into it is gone.
                if !delete_contents
                    && catalog.policy(&record.kind, key).is_some_and(|p| p.refused_while_holding)
                    && let Some(held) = ops.holds(ctx, record).await?
                {
                    return Err(HoldsContents { what: format!("{} {id}", ops.noun()), held }.into());
                }
                ops.delete(ctx, record, scope).await?
            }
        },
        RecordStatus::Pending => {
            // The create call may have gone through before the crash that left this intent;
            // what is found by the stack's tags or token is its own.
            let token = idempotency_token(&state.lineage(), key, record.generation);
            match ops.find(ctx, &Lost { key, record, token: &token }).await? {
                Some(found) => {
                    let adopted = ResourceRecord { id: Some(found), ..record.clone() };
                    ops.delete(ctx, &adopted, scope).await?;
                }
                None => summary = "never created".into(),
            }
        }
    }
    state.remove(key).await?;
    finished(&summary);
    Ok(Deleted::Removed)
}

/// How long after a record was written a "not found" may be AWS not showing it yet.
const READ_AFTER_WRITE_WINDOW: std::time::Duration = std::time::Duration::from_secs(120);

/// Reads a record's live state. A resource recorded moments ago that reads as missing may be
/// AWS's read-after-create window ("Eventual consistency in the Amazon EC2 API"), not a
/// deletion: it is read again for a few seconds before it is believed gone.
async fn read_settled<C: Sync>(
    ops: &dyn ResourceOps<C>,
    ctx: &C,
    record: &ResourceRecord,
    owned: bool,
) -> anyhow::Result<Live> {
    let read = || async { if owned { ops.read_owned(ctx, record).await } else { ops.read(ctx, record).await } };
    if !record.written_within(READ_AFTER_WRITE_WINDOW) {
        return read().await;
    }
    struct StillMissing;
    let found = super::wait::retry_while(
        super::wait::RetryPolicy::READ_AFTER_CREATE,
        |_: &StillMissing| true,
        || async {
            match read().await {
                Ok(Live::Missing) => Err(StillMissing),
                other => Ok(other),
            }
        },
    )
    .await;
    found.unwrap_or(Ok(Live::Missing))
}

/// Reads every given record's live state at once (for `status`, `plan` and `up`'s own plan);
/// `owned` also checks whose each one is.
pub async fn observe<C: Send + Sync + 'static>(
    ctx: Arc<C>,
    catalog: Arc<dyn Catalog<C>>,
    records: BTreeMap<String, ResourceRecord>,
    max_parallel: usize,
    owned: bool,
) -> BTreeMap<String, anyhow::Result<Live>> {
    let mut reads = JoinSet::new();
    let mut out = BTreeMap::new();
    for (key, record) in records {
        while reads.len() >= max_parallel.max(1) {
            if let Some(Ok((key, live))) = reads.join_next().await {
                out.insert(key, live);
            }
        }
        let (ctx, catalog) = (ctx.clone(), catalog.clone());
        reads.spawn(async move {
            let live = match (catalog.ops(&record.kind), record.status, &record.id) {
                (None, ..) => Err(anyhow::anyhow!("unknown resource kind {:?}", record.kind)),
                (Some(_), RecordStatus::Pending, None) => Ok(Live::Missing),
                (Some(ops), ..) => read_settled(ops, &*ctx, &record, owned).await,
            };
            (key, live)
        });
    }
    while let Some(joined) = reads.join_next().await {
        if let Ok((key, live)) = joined {
            out.insert(key, live);
        }
    }
    out
}

/// A resource of the stack that the state does not know (or knows under another id).
#[derive(Debug, Clone)]
pub struct Orphan {
    pub key: String,
    pub kind: String,
    pub found: Discovered,
}

impl Orphan {
    /// The record it becomes once adopted.
    pub fn record(&self) -> ResourceRecord {
        ResourceRecord {
            kind: self.kind.clone(),
            step: "discovered".into(),
            status: RecordStatus::Created,
            id: Some(self.found.id.clone()),
            depends_on: vec![],
            attrs: self.found.attrs.clone(),
            generation: 0,
            updated_at: String::new(),
        }
    }
}

/// Asks every kind what exists of the stack, at once: what carries its tags and is not
/// recorded (orphans), and what has its names but is not its own (conflicts).
pub async fn discover<C: Send + Sync + 'static>(
    ctx: Arc<C>,
    catalog: Arc<dyn Catalog<C>>,
    records: &BTreeMap<String, ResourceRecord>,
) -> anyhow::Result<(Vec<Orphan>, Vec<Conflict>)> {
    let mut lookups = JoinSet::new();
    for kind in catalog.discoverable() {
        let (ctx, catalog) = (ctx.clone(), catalog.clone());
        lookups.spawn(async move {
            let ops = catalog.ops(kind).ok_or_else(|| anyhow::anyhow!("no operations for {kind}"))?;
            Ok::<_, anyhow::Error>((kind.to_string(), ops.discover(&*ctx).await?))
        });
    }
    let mut orphans = Vec::new();
    let mut conflicts = Vec::new();
    while let Some(joined) = lookups.join_next().await {
        let (kind, found) = joined.map_err(|e| anyhow::anyhow!("discovery panicked: {e}"))??;
        conflicts.extend(found.conflicts);
        for d in found.ours {
            let recorded = records.values().any(|r| r.kind == kind && r.id.as_deref() == Some(d.id.as_str()));
            if recorded {
                continue;
            }
            // A twin of a recorded resource keeps its id in the key, so both can be tracked.
            let key = if records.contains_key(&d.key) { format!("{}~{}", d.key, d.id) } else { d.key.clone() };
            orphans.push(Orphan { key, kind: kind.clone(), found: d });
        }
    }
    orphans.sort_by(|a, b| a.key.cmp(&b.key));
    conflicts.sort_by(|a, b| (&a.kind, &a.id).cmp(&(&b.kind, &b.id)));
    Ok((orphans, conflicts))
}

/// Records the orphans (so a crash during `down --discover` loses track of nothing) with
/// dependencies from their deletion rank: everything of a lower rank goes before them.
pub async fn adopt_orphans<C: Sync>(
    state: &StateHandle,
    catalog: &dyn Catalog<C>,
    orphans: &[Orphan],
) -> anyhow::Result<()> {
    let mut all = state.snapshot().resources;
    for o in orphans {
        all.insert(o.key.clone(), o.record());
    }
    let rank: BTreeMap<String, i8> = all.iter().map(|(k, r)| (k.clone(), catalog.teardown_rank(&r.kind, k))).collect();
    let orphan_keys: BTreeSet<&String> = orphans.iter().map(|o| &o.key).collect();
    for (key, mut record) in all.clone() {
        let is_orphan = orphan_keys.contains(&key);
        // An orphan waits for everything ranked below it; a recorded resource for the orphans
        // ranked below it (its recorded dependencies are already in depends_on).
        let extra: Vec<String> = all
            .keys()
            .filter(|other| *other != &key && rank[*other] > rank[&key] && (is_orphan || orphan_keys.contains(other)))
            .cloned()
            .collect();
        if extra.is_empty() && !is_orphan {
            continue;
        }
        for e in extra {
            if !record.depends_on.contains(&e) {
                record.depends_on.push(e);
            }
        }
        state.put(&key, record).await?;
    }
    Ok(())
}
