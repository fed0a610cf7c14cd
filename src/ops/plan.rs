//! A plan: what `up` would do to every resource, decided by the same function `up` uses, with
//! what it refuses, what it interrupts and what it costs. `up` computes it first (to show and
//! confirm what disrupts); `plan` prints it.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::aws::Ctx;
use crate::catalog::{self, Kinds};
use crate::config::StackConfig;
use crate::cost::{self, Estimate};
use crate::engine::{self, Action, Catalog as _, Live, Step, decide};
use crate::gitlab_version::UpgradePath;
use crate::keys::{self, Kind};
use crate::state::{self, RecordStatus, ResourceRecord};

#[derive(Debug, Serialize)]
pub struct PlanReport {
    pub stack: String,
    pub region: String,
    /// What `up` would refuse (settings that cannot change in place, a version off the upgrade path).
    pub refused: Vec<Refusal>,
    /// Exposure and other things a careful reader should know.
    pub warnings: Vec<String>,
    pub summary: Counts,
    pub steps: Vec<PlannedStep>,
    /// Recorded resources the configuration no longer has; `up` removes them at the end.
    pub removals: Vec<PlannedResource>,
    pub monthly_cost: Estimate,
    /// The estimate's change against what the stack runs now (for an existing stack).
    pub monthly_cost_change: Option<f64>,
    #[serde(skip)]
    pub show_all: bool,
}

/// One thing `up` would refuse, and what to do about it.
#[derive(Debug, Clone, Serialize)]
pub struct Refusal {
    pub problem: String,
    /// What to do instead, when the refusal says it itself (a version's path).
    pub help: Option<String>,
    /// Why: a setting that cannot change, a version, or a recorded resource that is not the stack's.
    pub reason: RefusalReason,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RefusalReason {
    FixedSetting,
    Version,
    NotOurs,
}

impl Refusal {
    fn new(problem: impl Into<String>, reason: RefusalReason) -> Self {
        Refusal { problem: problem.into(), help: None, reason }
    }
}

#[derive(Debug, Default, Serialize)]
pub struct Counts {
    pub create: usize,
    pub update: usize,
    pub replace: usize,
    pub delete: usize,
    pub keep: usize,
}

#[derive(Debug, Serialize)]
pub struct PlannedStep {
    pub step: String,
    pub after: Vec<String>,
    pub description: String,
    pub resources: Vec<PlannedResource>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PlannedResource {
    pub key: String,
    pub kind: String,
    /// create, keep, attach, update, replace, re-create, resume, refuse or delete.
    pub action: &'static str,
    /// The id and what a read found, or what changes.
    pub detail: String,
    pub changes: Vec<String>,
    /// What the change interrupts, when it does.
    pub disruption: Option<String>,
}

impl PlanReport {
    pub fn rows(&self) -> impl Iterator<Item = &PlannedResource> {
        self.steps.iter().flat_map(|s| s.resources.iter()).chain(self.removals.iter())
    }

    pub fn changes_anything(&self) -> bool {
        self.rows().any(|r| r.action != "keep")
    }

    /// The changes that replace or interrupt something, one line each.
    pub fn disruptions(&self) -> Vec<String> {
        let mut seen = BTreeSet::new();
        self.rows().filter_map(|r| r.disruption.clone()).filter(|d| seen.insert(d.clone())).collect()
    }
}

/// What each change interrupts, from the kind's policy; nothing runs yet in a stack without
/// records (and a new NAT interrupts nothing until the private route exists).
fn disruption(kind: &str, key: &str, action: &Action, records: &BTreeMap<String, ResourceRecord>) -> Option<String> {
    let running = !records.is_empty()
        && (!matches!(Kind::parse(kind), Some(Kind::NatGateway | Kind::Instance))
            || records.contains_key(keys::ROUTE_TABLE_PRIVATE));
    Kinds.policy(kind, key)?.disruption(key, action, running)
}

/// Decides, for every resource the steps want, what `up` would do, from the records and what
/// live reads found (`lives`: absent for a key that was not read).
pub fn plan_steps(
    ctx: &Ctx,
    steps: &[Step<Ctx>],
    records: &BTreeMap<String, ResourceRecord>,
    lives: &BTreeMap<String, Live>,
) -> anyhow::Result<Vec<PlannedStep>> {
    // What later steps see: a resource `up` creates anew has no id yet ("known after up").
    let mut as_planned = records.clone();
    let mut planned = Vec::new();
    let order = engine::order(steps)?;
    let mut by_name: BTreeMap<&str, &Step<Ctx>> = steps.iter().map(|s| (s.name.as_str(), s)).collect();
    for name in &order {
        let Some(step) = by_name.remove(name.as_str()) else { continue };
        let wanted = step.desired(ctx, &as_planned)?;
        let mut resources: Vec<PlannedResource> = wanted
            .iter()
            .map(|desired| {
                let record = records.get(&desired.key);
                let live = lives.get(&desired.key);
                let action = decide(record, live, desired);
                // A new task definition revision is a new ARN: what names it changes too.
                let new_id = matches!(action, Action::Create | Action::Replace(_) | Action::Recreate | Action::Resume)
                    || (matches!(action, Action::Update(_)) && desired.kind == Kind::TaskDefinition.as_str());
                if new_id && let Some(r) = as_planned.get_mut(&desired.key) {
                    r.id = None;
                }
                let id = record.and_then(|r| r.id.clone()).unwrap_or_default();
                let detail = match (&action, live) {
                    (Action::Keep, Some(Live::Present { summary, .. })) => format!("{id} {summary}"),
                    (Action::Attach(_), _) => format!("{id} kept by down --keep-data"),
                    (Action::Resume, _) => "an earlier run started it; up adopts it if it exists".into(),
                    (Action::Recreate, _) => format!("{id} was deleted outside gitlab-provision"),
                    (Action::Refuse(why), _) => format!("{id} is not this stack's: {why}"),
                    (action, _) if !action.changes().is_empty() => {
                        format!(
                            "{id}: {}",
                            action.changes().iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
                        )
                    }
                    _ => id.clone(),
                };
                PlannedResource {
                    key: desired.key.clone(),
                    kind: desired.kind.clone(),
                    action: action.verb(),
                    changes: action.changes().iter().map(ToString::to_string).collect(),
                    disruption: disruption(&desired.kind, &desired.key, &action, records),
                    detail,
                }
            })
            .collect();
        // What a step records without wanting it in advance (an imported VPC) is kept as it is.
        for (key, kind) in &step.creates {
            if wanted.iter().any(|d| d.key == *key) {
                continue;
            }
            match records.get(key) {
                Some(record) => resources.push(PlannedResource {
                    key: key.clone(),
                    kind: kind.clone(),
                    action: "keep",
                    detail: record.id.clone().unwrap_or_default(),
                    changes: vec![],
                    disruption: None,
                }),
                None if step.preflight => resources.push(PlannedResource {
                    key: key.clone(),
                    kind: kind.clone(),
                    action: "create",
                    detail: "imported: checked and recorded, never changed".into(),
                    changes: vec![],
                    disruption: None,
                }),
                None => {}
            }
        }
        planned.push(PlannedStep {
            step: step.name.clone(),
            after: step.after.clone(),
            description: step.description.clone(),
            resources,
        });
    }
    Ok(planned)
}

/// Recorded resources no step creates any more.
pub fn removals(steps: &[Step<Ctx>], records: &BTreeMap<String, ResourceRecord>) -> Vec<PlannedResource> {
    let owned = catalog::owned_keys(steps);
    records
        .iter()
        .filter(|(k, r)| !owned.contains(*k) && r.status != RecordStatus::Retained)
        .map(|(k, r)| PlannedResource {
            key: k.clone(),
            kind: r.kind.clone(),
            action: "delete",
            detail: "no longer in the configuration".into(),
            changes: vec![],
            disruption: Kinds.policy(&r.kind, k).and_then(|p| p.removal(k)),
        })
        .collect()
}

/// Refusals that do not depend on AWS: settings that cannot change in place, a version that
/// is a downgrade or skips a required stop.
pub fn refusals(cfg: &StackConfig, state: Option<&state::State>, region: &str, force_version: bool) -> Vec<Refusal> {
    let Some(state) = state else { return vec![] };
    let mut refused: Vec<Refusal> = catalog::replacements(state, &catalog::fixed_settings(cfg, region))
        .into_iter()
        .map(|problem| Refusal::new(problem, RefusalReason::FixedSetting))
        .collect();
    if !force_version
        && let Some(running) = running_version(&state.resources)
        && let Some(wanted) = crate::gitlab_version::Version::parse(&cfg.gitlab_image_tag)
        && let Err(e) = UpgradePath::shipped().check(running, wanted)
    {
        refused.push(Refusal { problem: e.to_string(), help: ground::Help::help(&e), reason: RefusalReason::Version });
    }
    refused
}

/// The GitLab version the stack runs, from its task definition's record.
pub fn running_version(records: &BTreeMap<String, ResourceRecord>) -> Option<crate::gitlab_version::Version> {
    let image = records.get(keys::TASK_DEFINITION).filter(|r| r.status == RecordStatus::Created)?.attr("image")?;
    crate::gitlab_version::Version::parse(image.rsplit(':').next()?)
}

/// Keeps what runs when neither the file nor a flag names a version.
pub fn keep_running_version(cfg: &mut StackConfig, records: &BTreeMap<String, ResourceRecord>) {
    if cfg.tag_source == crate::config::TagSource::Default
        && let Some(running) = running_version(records)
    {
        cfg.gitlab_image_tag = running.to_string();
        cfg.tag_source = crate::config::TagSource::Running;
    }
}

/// The cost of what the records say the stack runs now.
fn recorded_cost(records: &BTreeMap<String, ResourceRecord>) -> Option<Estimate> {
    let td = records.get(keys::TASK_DEFINITION)?;
    let nat = if records.contains_key(keys::NAT_GATEWAY) {
        Some(crate::config::NatKind::Gateway)
    } else if records.contains_key(keys::NAT_INSTANCE) {
        Some(crate::config::NatKind::Instance)
    } else {
        None
    };
    Some(cost::estimate_of(&cost::Inputs {
        cpu: td.attr("cpu")?.parse().ok()?,
        memory_mib: td.attr("memory")?.parse().ok()?,
        nat,
        ssh: records.contains_key(keys::SSH_LOAD_BALANCER),
    }))
}

/// The whole plan for a configuration against a stack's records and what live reads found.
pub fn report(
    ctx: &Ctx,
    cfg: &StackConfig,
    state: Option<&state::State>,
    region: String,
    lives: &BTreeMap<String, Live>,
    force_version: bool,
) -> anyhow::Result<PlanReport> {
    let steps = catalog::build(cfg);
    let empty = BTreeMap::new();
    let records = state.map_or(&empty, |s| &s.resources);
    let planned = plan_steps(ctx, &steps, records, lives)?;
    let removals = removals(&steps, records);
    let mut summary = Counts::default();
    for r in planned.iter().flat_map(|s| s.resources.iter()).chain(removals.iter()) {
        match r.action {
            "create" | "re-create" | "resume" => summary.create += 1,
            "update" | "attach" => summary.update += 1,
            "replace" => summary.replace += 1,
            "delete" => summary.delete += 1,
            _ => summary.keep += 1,
        }
    }
    let monthly_cost = cost::estimate(cfg);
    let monthly_cost_change = recorded_cost(records)
        .map(|before| ((monthly_cost.total_usd_per_month - before.total_usd_per_month) * 100.0).round() / 100.0);
    // A recorded resource that is not this stack's is never changed: the whole run is refused.
    let mut refused = refusals(cfg, state, &region, force_version);
    refused.extend(
        planned
            .iter()
            .flat_map(|s| s.resources.iter())
            .filter(|r| r.action == "refuse")
            .map(|r| Refusal::new(format!("{} {}; it is left alone", r.key, r.detail), RefusalReason::NotOurs)),
    );
    Ok(PlanReport {
        stack: cfg.stack.clone(),
        refused,
        region,
        warnings: cfg.warnings(),
        summary,
        steps: planned,
        removals,
        monthly_cost,
        monthly_cost_change,
        show_all: false,
    })
}
