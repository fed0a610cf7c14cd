//! A resource's life as the engine sees it: ensure (reuse, adopt, converge or create, with the
//! intent on disk before the create call) and teardown (reverse dependency order).

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use tokio::task::JoinSet;

use super::{Event, Observer, RunReport, StepScope, StepTiming};
use crate::state::{RecordStatus, ResourceRecord, StateHandle};

/// What a live read found.
#[derive(Debug, Clone, PartialEq)]
pub enum Live {
    /// It exists; `drift` lists what differs from the record (empty when all is as recorded).
    Present {
        summary: String,
        drift: Vec<String>,
    },
    Missing,
}

/// Read, find and delete for one kind of resource. Create lives with the step that knows
/// the inputs; these three only need the record.
#[async_trait]
pub trait ResourceOps<C>: Send + Sync {
    /// A short noun for messages: "VPC", "NAT gateway".
    fn noun(&self) -> &'static str;
    async fn read(&self, ctx: &C, record: &ResourceRecord) -> anyhow::Result<Live>;
    /// Finds a resource that a run created but could not record (crash between the create call
    /// and the save), by tag, name or the idempotency `token` it was created with. Returns its id.
    async fn find(&self, ctx: &C, key: &str, record: &ResourceRecord, token: &str) -> anyhow::Result<Option<String>>;
    /// Deletes it and waits until dependents can go; "not found" is success.
    async fn delete(&self, ctx: &C, record: &ResourceRecord, scope: &StepScope) -> anyhow::Result<()>;
    /// Everything of this kind that belongs to the stack (by its tags or deterministic names),
    /// whether recorded or not: for a lost or incomplete state file.
    async fn discover(&self, _ctx: &C) -> anyhow::Result<Vec<Discovered>> {
        Ok(vec![])
    }
}

/// A resource found by `discover`.
#[derive(Debug, Clone)]
pub struct Discovered {
    pub key: String,
    pub id: String,
    /// What deleting it needs (as a record's attrs would hold).
    pub attrs: BTreeMap<String, String>,
}

/// Maps a record's kind to its operations.
pub trait Catalog<C>: Send + Sync {
    fn ops(&self, kind: &str) -> Option<&dyn ResourceOps<C>>;
    /// Every kind, for discovery.
    fn kinds(&self) -> &'static [&'static str];
    /// Deletion order for resources found without a record (lower goes first), since their
    /// dependencies were never recorded.
    fn teardown_rank(&self, kind: &str, key: &str) -> u8;
}

/// What a step wants to exist under a key.
pub struct Desired {
    pub key: String,
    pub kind: String,
    pub depends_on: Vec<String>,
    /// Settings that, when they differ from the record, make `ensure` converge the resource.
    pub attrs: BTreeMap<String, String>,
}

/// What a create-or-converge call produced.
pub struct Created {
    pub id: String,
    pub attrs: BTreeMap<String, String>,
}

/// The id the apply function should converge instead of creating: present when the resource
/// exists (adopted after a crash, or drifted from the desired settings).
pub struct Found {
    pub id: String,
}

pub enum Ensured {
    Reused(ResourceRecord),
    Converged(ResourceRecord),
    Created(ResourceRecord),
}

impl Ensured {
    pub fn record(&self) -> &ResourceRecord {
        match self {
            Ensured::Reused(r) | Ensured::Converged(r) | Ensured::Created(r) => r,
        }
    }
    pub fn id(&self) -> &str {
        self.record().id.as_deref().unwrap_or_default()
    }
    pub fn verb(&self) -> &'static str {
        match self {
            Ensured::Reused(_) => "kept",
            Ensured::Converged(_) => "updated",
            Ensured::Created(_) => "created",
        }
    }
}

impl StepScope {
    /// Makes `desired` exist, calling `apply(existing, token)` only when needed:
    /// - recorded and live with the desired settings: reused, one read call, nothing changed;
    /// - recorded and live but different, or pending and found after a crash: `apply(Some(id))`
    ///   converges it in place;
    /// - recorded but gone, or never created: the intent is saved as pending first, then
    ///   `apply(None, token)` creates it (the token is deterministic for this stack and key).
    pub async fn ensure<C, F, Fut>(
        &self,
        ctx: &C,
        ops: &dyn ResourceOps<C>,
        desired: Desired,
        apply: F,
    ) -> anyhow::Result<Ensured>
    where
        F: FnOnce(Option<Found>, String) -> Fut,
        Fut: Future<Output = anyhow::Result<Created>>,
    {
        let existing = self.state.get(&desired.key);
        let mut generation = 0;
        let mut found = None;
        if let Some(record) = &existing {
            generation = record.generation;
            match record.status {
                RecordStatus::Imported => return Ok(Ensured::Reused(record.clone())),
                RecordStatus::Created | RecordStatus::Retained => match ops.read(ctx, record).await? {
                    Live::Present { mut drift, .. } => {
                        drift.extend(desired.attrs.iter().filter(|(k, v)| record.attrs.get(*k) != Some(v)).map(
                            |(k, v)| {
                                format!("{k}: {} -> {v}", record.attrs.get(k).map(String::as_str).unwrap_or("unset"))
                            },
                        ));
                        if drift.is_empty() && record.depends_on == desired.depends_on {
                            if record.status == RecordStatus::Retained {
                                // Kept by an earlier `down --keep-data`: part of the stack again.
                                self.progress(format!(
                                    "attaching the kept {} {}",
                                    ops.noun(),
                                    record.id.as_deref().unwrap_or("?")
                                ));
                                let attached = ResourceRecord { status: RecordStatus::Created, ..record.clone() };
                                self.state.put(&desired.key, attached.clone())?;
                                return Ok(Ensured::Reused(attached));
                            }
                            return Ok(Ensured::Reused(record.clone()));
                        }
                        if !drift.is_empty() {
                            self.progress(format!(
                                "updating {} {}: {}",
                                ops.noun(),
                                record.id.as_deref().unwrap_or("?"),
                                drift.join("; ")
                            ));
                        }
                        found = record.id.clone().map(|id| Found { id });
                    }
                    Live::Missing => {
                        self.progress(format!(
                            "{} {} no longer exists (deleted outside gitlab-provision); creating it again",
                            ops.noun(),
                            record.id.as_deref().unwrap_or("?")
                        ));
                        generation += 1;
                    }
                },
                RecordStatus::Pending => {
                    let token = idempotency_token(&self.state.lineage(), &desired.key, generation);
                    if let Some(id) = ops.find(ctx, &desired.key, record, &token).await? {
                        self.progress(format!("found {} {id} created by an interrupted run; adopting it", ops.noun()));
                        found = Some(Found { id });
                    }
                }
            }
        }
        let adopted = found.is_some();
        let record_now = |status, id, attrs| ResourceRecord {
            kind: desired.kind.clone(),
            step: self.step.clone(),
            status,
            id,
            depends_on: desired.depends_on.clone(),
            attrs,
            generation,
            updated_at: String::new(),
        };
        if !adopted {
            self.state.put(&desired.key, record_now(RecordStatus::Pending, None, desired.attrs.clone()))?;
        }
        let lineage = self.state.lineage();
        let token = idempotency_token(&lineage, &desired.key, generation);
        let created = apply(found, token).await?;
        let mut attrs = desired.attrs.clone();
        attrs.extend(created.attrs);
        let record = record_now(RecordStatus::Created, Some(created.id), attrs);
        self.state.put(&desired.key, record.clone())?;
        Ok(if adopted && existing.is_some_and(|r| matches!(r.status, RecordStatus::Created | RecordStatus::Retained)) {
            Ensured::Converged(record)
        } else {
            Ensured::Created(record)
        })
    }
}

/// At most 64 ASCII characters, as EC2's ClientToken allows.
pub fn idempotency_token(lineage: &str, key: &str, generation: u32) -> String {
    let mut token = format!("gp-{lineage}-{key}-{generation}");
    token.truncate(64);
    token
}

#[derive(Debug, thiserror::Error)]
#[error("{}", describe(.failures, .blocked))]
pub struct TeardownError {
    pub failures: Vec<(String, anyhow::Error)>,
    pub blocked: Vec<String>,
}

fn describe(failures: &[(String, anyhow::Error)], blocked: &[String]) -> String {
    let mut text =
        failures.iter().map(|(key, e)| format!("deleting {key} failed: {e:#}")).collect::<Vec<_>>().join("\n");
    if !blocked.is_empty() {
        text.push_str(&format!("\nkept because something depending on them is still there: {}", blocked.join(", ")));
    }
    text
}

/// Which records a teardown touches, and which of those it keeps.
#[derive(Default)]
pub struct Teardown {
    /// Only these keys (all when `None`).
    pub only: Option<BTreeSet<String>>,
    /// Mark these as retained instead of deleting them (`down --keep-data`).
    pub keep: BTreeSet<String>,
    pub max_parallel: usize,
}

/// Deletes the recorded resources in reverse dependency order, concurrently where independent.
/// Keeps going past failures: independent branches are still deleted and every failure is
/// reported at the end. Imported resources are released, not deleted; kept ones are marked
/// retained. Returns the number of records deleted.
pub async fn teardown<C: Send + Sync + 'static>(
    ctx: Arc<C>,
    state: StateHandle,
    catalog: Arc<dyn Catalog<C>>,
    observer: Arc<dyn Observer>,
    plan: Teardown,
) -> Result<RunReport, TeardownError> {
    let Teardown { only, keep, max_parallel } = plan;
    let teardown_start = Instant::now();
    let mut report = RunReport::default();
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
    let mut removed = 0;
    let mut failures = Vec::new();
    let mut running: JoinSet<(String, Instant, anyhow::Result<bool>)> = JoinSet::new();

    loop {
        let ready: Vec<String> = pending
            .keys()
            .filter(|k| {
                dependents[*k].iter().all(|d| !pending.contains_key(d) && !in_flight.contains(d) && !failed.contains(d))
            })
            .take(max_parallel.saturating_sub(running.len()))
            .cloned()
            .collect();
        for key in ready {
            let record = pending.remove(&key).expect("ready key is pending");
            in_flight.insert(key.clone());
            let (ctx, state, catalog, observer) = (ctx.clone(), state.clone(), catalog.clone(), observer.clone());
            let retain = keep.contains(&key);
            running.spawn(async move {
                let started = Instant::now();
                let result = delete_one(&*ctx, &state, &*catalog, observer, &key, &record, retain).await;
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
        if result.is_ok() {
            let finish = teardown_start.elapsed().as_secs_f64();
            report.timings.push(StepTiming {
                step: key.clone(),
                start: finish - started.elapsed().as_secs_f64(),
                finish,
                summary: String::new(),
                after: dependents.get(&key).map(|d| d.iter().cloned().collect()).unwrap_or_default(),
            });
        }
        match result {
            Ok(true) => removed += 1,
            Ok(false) => {}
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
    let blocked: Vec<String> = pending.into_keys().collect();
    for key in &blocked {
        observer.event(Event::Skipped {
            step: key.clone(),
            reason: "a resource depending on it could not be deleted".into(),
        });
    }
    report.removed = removed;
    if failures.is_empty() && blocked.is_empty() { Ok(report) } else { Err(TeardownError { failures, blocked }) }
}

async fn delete_one<C>(
    ctx: &C,
    state: &StateHandle,
    catalog: &dyn Catalog<C>,
    observer: Arc<dyn Observer>,
    key: &str,
    record: &ResourceRecord,
    retain: bool,
) -> anyhow::Result<bool> {
    let ops = catalog
        .ops(&record.kind)
        .ok_or_else(|| anyhow::anyhow!("unknown resource kind {:?} in the state file", record.kind))?;
    let scope = StepScope::new(key, state.clone(), observer.clone());
    let id = record.id.as_deref().unwrap_or("(not recorded)");
    if retain && record.status == RecordStatus::Created {
        observer.event(Event::Started { step: key.to_string(), description: format!("keep {} {id}", ops.noun()) });
        state.put(key, ResourceRecord { status: RecordStatus::Retained, ..record.clone() })?;
        observer.event(Event::Finished {
            step: key.to_string(),
            elapsed: scope.elapsed(),
            summary: "kept (--keep-data): `up` attaches it again".into(),
        });
        return Ok(false);
    }
    let (description, summary) = match record.status {
        RecordStatus::Imported => (format!("release {} {id} (imported: left in place)", ops.noun()), "released"),
        _ => (format!("delete {} {id}", ops.noun()), "deleted"),
    };
    observer.event(Event::Started { step: key.to_string(), description });
    match record.status {
        RecordStatus::Imported => {}
        RecordStatus::Created | RecordStatus::Retained => ops.delete(ctx, record, &scope).await?,
        RecordStatus::Pending => {
            // The create call may have gone through before the crash that left this intent.
            let token = idempotency_token(&state.lineage(), key, record.generation);
            if let Some(found) = ops.find(ctx, key, record, &token).await? {
                let adopted = ResourceRecord { id: Some(found), ..record.clone() };
                ops.delete(ctx, &adopted, &scope).await?;
            }
        }
    }
    state.remove(key)?;
    observer.event(Event::Finished { step: key.to_string(), elapsed: scope.elapsed(), summary: summary.to_string() });
    Ok(true)
}

/// Reads every given record's live state at once (for `status` and `plan`).
pub async fn observe<C: Send + Sync + 'static>(
    ctx: Arc<C>,
    catalog: Arc<dyn Catalog<C>>,
    records: BTreeMap<String, ResourceRecord>,
    max_parallel: usize,
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
                (Some(ops), ..) => ops.read(&*ctx, &record).await,
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

/// Asks every kind what exists of the stack, at once, and returns what the state does not record.
pub async fn discover_orphans<C: Send + Sync + 'static>(
    ctx: Arc<C>,
    catalog: Arc<dyn Catalog<C>>,
    records: &BTreeMap<String, ResourceRecord>,
) -> anyhow::Result<Vec<Orphan>> {
    let mut lookups = JoinSet::new();
    for kind in catalog.kinds() {
        let (ctx, catalog) = (ctx.clone(), catalog.clone());
        lookups.spawn(async move {
            let ops = catalog.ops(kind).ok_or_else(|| anyhow::anyhow!("no operations for {kind}"))?;
            Ok::<_, anyhow::Error>((kind.to_string(), ops.discover(&*ctx).await?))
        });
    }
    let mut orphans = Vec::new();
    while let Some(joined) = lookups.join_next().await {
        let (kind, found) = joined.map_err(|e| anyhow::anyhow!("discovery panicked: {e}"))??;
        for d in found {
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
    Ok(orphans)
}

/// Records the orphans (so a crash during `down --discover` loses track of nothing) with
/// dependencies from their deletion rank: everything of a lower rank goes before them.
pub fn adopt_orphans<C>(state: &StateHandle, catalog: &dyn Catalog<C>, orphans: &[Orphan]) -> anyhow::Result<()> {
    let mut all = state.snapshot().resources;
    for o in orphans {
        all.insert(
            o.key.clone(),
            ResourceRecord {
                kind: o.kind.clone(),
                step: "discovered".into(),
                status: RecordStatus::Created,
                id: Some(o.found.id.clone()),
                depends_on: vec![],
                attrs: o.found.attrs.clone(),
                generation: 0,
                updated_at: String::new(),
            },
        );
    }
    let rank: BTreeMap<String, u8> = all.iter().map(|(k, r)| (k.clone(), catalog.teardown_rank(&r.kind, k))).collect();
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
        state.put(&key, record)?;
    }
    Ok(())
}
