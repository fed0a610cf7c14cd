//! A plan: what `up` would do to every resource, decided by the same function `up` uses, with
//! what it refuses, what it interrupts and what it costs. `up` computes it first (to show and
//! confirm what disrupts); `plan` prints it.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::versions::running_version;
use crate::aws::Ctx;
use crate::catalog::{self, Kinds};
use crate::config::StackConfig;
use crate::cost::{self, Estimate};
use crate::engine::{self, Action, Catalog as _, Live, Step, decide};
use crate::gitlab_version::UpgradePath;
use crate::keys::{self, Kind};
use crate::state::{self, RecordStatus, ResourceRecord};

#[derive(Debug, Serialize, schemars::JsonSchema)]
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
    /// The GitLab version the state records, and what `up` would deploy.
    pub gitlab_version: super::versions::GitLabVersion,
    #[serde(skip)]
    pub show_all: bool,
}

/// One thing `up` would refuse, and what to do about it.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct Refusal {
    pub problem: String,
    /// What to do instead, when the refusal says it itself (a version's path).
    pub help: Option<String>,
    /// Why: a setting that cannot change, a version, or a recorded resource that is not the stack's.
    pub reason: RefusalReason,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, schemars::JsonSchema)]
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

#[derive(Debug, Default, Serialize, schemars::JsonSchema)]
pub struct Counts {
    pub create: usize,
    pub update: usize,
    pub replace: usize,
    pub delete: usize,
    pub keep: usize,
}

#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct PlannedStep {
    pub step: String,
    pub after: Vec<String>,
    pub description: String,
    pub resources: Vec<PlannedResource>,
}

#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct PlannedResource {
    pub key: String,
    pub kind: String,
    pub action: PlanAction,
    /// The id and what a read found, or what changes.
    pub detail: String,
    pub changes: Vec<String>,
    /// What the change interrupts, when it does.
    pub disruption: Option<String>,
}

/// What `up` does to one resource, as `plan` says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum PlanAction {
    Create,
    Keep,
    Attach,
    Update,
    Replace,
    #[serde(rename = "re-create")]
    Recreate,
    Resume,
    Refuse,
    Delete,
}

impl PlanAction {
    pub fn of(action: &Action) -> PlanAction {
        match action {
            Action::Create => PlanAction::Create,
            Action::Keep => PlanAction::Keep,
            Action::Attach(_) => PlanAction::Attach,
            Action::Update(_) => PlanAction::Update,
            Action::Replace(_) => PlanAction::Replace,
            Action::Resume => PlanAction::Resume,
            Action::Recreate => PlanAction::Recreate,
            Action::Refuse(_) => PlanAction::Refuse,
        }
    }

    /// The word `plan` prints.
    pub fn as_str(self) -> &'static str {
        match self {
            PlanAction::Create => "create",
            PlanAction::Keep => "keep",
            PlanAction::Attach => "attach",
            PlanAction::Update => "update",
            PlanAction::Replace => "replace",
            PlanAction::Recreate => "re-create",
            PlanAction::Resume => "resume",
            PlanAction::Refuse => "refuse",
            PlanAction::Delete => "delete",
        }
    }
}

impl PlanReport {
    pub fn rows(&self) -> impl Iterator<Item = &PlannedResource> {
        self.steps.iter().flat_map(|s| s.resources.iter()).chain(self.removals.iter())
    }

    pub fn changes_anything(&self) -> bool {
        self.rows().any(|r| r.action != PlanAction::Keep)
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
                    action: PlanAction::of(&action),
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
                    action: PlanAction::Keep,
                    detail: record.id.clone().unwrap_or_default(),
                    changes: vec![],
                    disruption: None,
                }),
                None if step.preflight => resources.push(PlannedResource {
                    key: key.clone(),
                    kind: kind.clone(),
                    action: PlanAction::Create,
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
            action: PlanAction::Delete,
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
    let buckets: Vec<&str> =
        keys::OBJECT_BUCKETS.iter().map(|(key, _)| *key).filter(|key| state.resources.contains_key(*key)).collect();
    if !cfg.object_storage && !buckets.is_empty() {
        refused.push(Refusal {
            problem: format!(
                "object_storage = false, but GitLab keeps its uploads, artifacts and packages in the stack's buckets ({}): it would no longer find them",
                buckets.join(", ")
            ),
            help: Some(
                "keep object_storage = true (or leave it out: a stack that has it keeps it); moving the objects back to the file system is GitLab's own migration (e.g. `gitlab-rake gitlab:artifacts:migrate_to_local`), run through `gitlab-provision exec`, before the buckets can go".into(),
            ),
            reason: RefusalReason::FixedSetting,
        });
    }
    refused.extend(database_refusals(cfg, &state.resources));
    refused
}

/// Where GitLab's PostgreSQL runs cannot change by a setting: its data would stay behind. And
/// a GitLab version that needs a newer PostgreSQL than the RDS instance runs is refused.
fn database_refusals(cfg: &StackConfig, records: &BTreeMap<String, ResourceRecord>) -> Vec<Refusal> {
    let mut refused = vec![];
    let on_rds = records.get(keys::DB_INSTANCE);
    // A task definition without the database's secret ran GitLab on its bundled PostgreSQL.
    let bundled_ran = records.get(keys::TASK_DEFINITION).is_some_and(|td| !td.attrs.contains_key("database_secret"));
    match (&cfg.database, on_rds) {
        (None, Some(_)) => refused.push(Refusal {
            problem: "database = \"bundled\", but GitLab's data is in the stack's RDS database: the bundled PostgreSQL would start empty".into(),
            help: Some("keep database = \"rds\" (or leave it out: a stack on RDS stays on it); moving back is a GitLab backup and restore (README, \"Moving to RDS\"), not a setting".into()),
            reason: RefusalReason::FixedSetting,
        }),
        (Some(_), None) if bundled_ran => refused.push(Refusal {
            problem: "database = \"rds\" on a stack whose GitLab runs on its bundled PostgreSQL (its data on EFS): switching would start GitLab on an empty database".into(),
            help: Some("moving an existing GitLab's database is a dump and restore this tool does not run yet: follow README, \"Moving to RDS\" (gitlab-backup of the database through `gitlab-provision exec`, a new stack with database = \"rds\", gitlab-backup restore); or remove database = \"rds\" to keep the bundled one".into()),
            reason: RefusalReason::FixedSetting,
        }),
        _ => {}
    }
    if let Some(record) = on_rds
        && let Some(running) = record.attr("engine_version")
        && let Some(wanted) = crate::gitlab_version::Version::parse(&cfg.gitlab_image_tag)
        && let Ok(needs) = crate::requirements::postgresql(wanted)
        && !crate::requirements::at_least(running, &needs.minimum)
    {
        refused.push(Refusal {
            problem: format!(
                "GitLab {wanted} needs PostgreSQL {} or later; the stack's RDS database runs {running}",
                needs.minimum
            ),
            help: Some(format!(
                "take a backup (`gitlab-provision backup`), upgrade the database's major version first (`aws rds modify-db-instance --db-instance-identifier {} --engine-version {} --allow-major-version-upgrade --apply-immediately`), then run this again",
                record.id.as_deref().unwrap_or("?"),
                needs.newest
            )),
            reason: RefusalReason::Version,
        });
    }
    refused
}

/// Keeps what runs where the configuration does not say: the version when neither the file nor
/// a flag names one, object storage once the stack has its buckets, and the egress of a stack made before egress was a setting (or by its
/// default of then: a NAT gateway), so a new default never rebuilds a running stack's network.
pub fn keep_what_runs(cfg: &mut StackConfig, records: &BTreeMap<String, ResourceRecord>) {
    if cfg.tag_source == crate::config::TagSource::Default
        && let Some(running) = running_version(records)
    {
        cfg.gitlab_image_tag = running.to_string();
        cfg.tag_source = crate::config::TagSource::Running;
    }
    if !cfg.object_storage_chosen && keys::OBJECT_BUCKETS.iter().any(|(key, _)| records.contains_key(*key)) {
        cfg.object_storage = true;
    }
    // A stack on RDS stays on it, with the settings it has.
    if !cfg.database_chosen
        && let Some(db) = records.get(keys::DB_INSTANCE)
    {
        cfg.database = Some(crate::steps::database::recorded_settings(db));
    }
    if let crate::config::NetworkConfig::Create { egress, .. } = &mut cfg.network
        && !cfg.egress_chosen
        && records.contains_key(keys::VPC)
    {
        use crate::config::Egress;
        *egress = if records.contains_key(keys::NAT_GATEWAY) {
            Egress::NatGateway
        } else if records.contains_key(keys::NAT_INSTANCE) {
            Egress::NatInstance
        } else {
            Egress::PublicIp
        };
    }
}

/// The cost of what the stack runs now: the settings `up` applied, with what runs.
fn recorded_cost(state: Option<&state::State>) -> Option<Estimate> {
    let state = state?;
    let applied: crate::config::Settings = serde_json::from_value(state.settings.clone()?).ok()?;
    let mut cfg = crate::config::validate(&applied).ok()?;
    keep_what_runs(&mut cfg, &state.resources);
    Some(cost::estimate(&cfg))
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
            PlanAction::Create | PlanAction::Recreate | PlanAction::Resume => summary.create += 1,
            PlanAction::Update | PlanAction::Attach => summary.update += 1,
            PlanAction::Replace => summary.replace += 1,
            PlanAction::Delete => summary.delete += 1,
            _ => summary.keep += 1,
        }
    }
    let monthly_cost = cost::estimate(cfg);
    let monthly_cost_change = recorded_cost(state)
        .map(|before| ((monthly_cost.total_usd_per_month - before.total_usd_per_month) * 100.0).round() / 100.0);
    // A recorded resource that is not this stack's is never changed: the whole run is refused.
    let mut refused = refusals(cfg, state, &region, force_version);
    refused.extend(
        planned
            .iter()
            .flat_map(|s| s.resources.iter())
            .filter(|r| r.action == PlanAction::Refuse)
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
        gitlab_version: super::versions::GitLabVersion {
            recorded: running_version(records).map(|v| v.to_string()),
            running: None,
            wanted: Some(cfg.gitlab_image_tag.clone()),
        },
        show_all: false,
    })
}

/// A plan saved by `plan --out FILE`, for `up FILE` to apply exactly as it was reviewed: the
/// settings it was made with, the state it was decided against, and every decision.
#[derive(Debug, Clone, Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct SavedPlan {
    pub stack: String,
    pub region: String,
    pub account: Option<String>,
    /// The state it was decided against (`null` for a stack that did not exist yet): `up FILE`
    /// refuses once another run has changed it.
    pub lineage: Option<String>,
    pub serial: Option<u64>,
    /// The settings it was made with (file and flags); `up FILE` applies these, not today's file.
    pub settings: crate::config::Settings,
    pub decisions: Vec<Decision>,
    pub made_at: String,
}

/// One resource's decision in a saved plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct Decision {
    pub key: String,
    pub kind: String,
    pub action: PlanAction,
    pub changes: Vec<String>,
}

impl PlanReport {
    /// Every decision, to save or to compare with a saved plan's.
    pub fn decisions(&self) -> Vec<Decision> {
        self.rows()
            .map(|r| Decision {
                key: r.key.clone(),
                kind: r.kind.clone(),
                action: r.action,
                changes: r.changes.clone(),
            })
            .collect()
    }
}

impl SavedPlan {
    pub fn of(
        report: &PlanReport,
        state: Option<&state::State>,
        settings: crate::config::Settings,
        account: Option<String>,
    ) -> Self {
        SavedPlan {
            stack: report.stack.clone(),
            region: report.region.clone(),
            account,
            lineage: state.map(|s| s.lineage.clone()),
            serial: state.map(|s| s.serial),
            settings,
            decisions: report.decisions(),
            made_at: state::now_rfc3339(),
        }
    }

    /// What differs between this plan and the stack as it is now, one line each: the state
    /// changed (another run), or a resource would now be decided otherwise (changed behind the
    /// plan's back). Empty when the plan still holds.
    pub fn differences(&self, now: &state::State, fresh: &PlanReport) -> Vec<String> {
        let has_records = !now.resources.is_empty();
        let mut differences = Vec::new();
        match (&self.lineage, self.serial) {
            (Some(lineage), Some(serial)) if *lineage != now.lineage || serial != now.serial => differences.push(format!(
                "the state changed since the plan was made (serial {serial}, now {}): another run changed the stack",
                now.serial
            )),
            (None, _) if has_records => {
                differences.push("the plan was made for a new stack, and the stack now exists".to_string())
            }
            _ => {}
        }
        let planned: BTreeMap<&str, &Decision> = self.decisions.iter().map(|d| (d.key.as_str(), d)).collect();
        let fresh_decisions = fresh.decisions();
        let now_decided: BTreeMap<&str, &Decision> = fresh_decisions.iter().map(|d| (d.key.as_str(), d)).collect();
        for key in planned.keys().chain(now_decided.keys()).collect::<BTreeSet<_>>() {
            match (planned.get(key), now_decided.get(key)) {
                (Some(a), Some(b)) if a == b => {}
                (Some(a), Some(b)) => differences.push(format!(
                    "{key}: planned {}{}, now {}{}",
                    a.action.as_str(),
                    said(&a.changes),
                    b.action.as_str(),
                    said(&b.changes)
                )),
                (Some(a), None) => {
                    differences.push(format!("{key}: planned {}, no longer in the plan", a.action.as_str()))
                }
                (None, Some(b)) => differences.push(format!("{key}: not planned, now {}", b.action.as_str())),
                (None, None) => {}
            }
        }
        differences
    }
}

fn said(changes: &[String]) -> String {
    if changes.is_empty() { String::new() } else { format!(" ({})", changes.join("; ")) }
}
