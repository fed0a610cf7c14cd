use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;

use serde::Serialize;

use super::{context, stack_config, table};
use crate::cli::{GlobalArgs, PlanArgs};
use crate::cost::Estimate;
use crate::engine::{self, Live};
use crate::state::{self, RecordStatus};
use crate::steps::{self, Kinds};

#[derive(Debug, Serialize)]
pub struct PlanReport {
    pub stack: String,
    pub region: Option<String>,
    /// Settings that differ from the stack's and cannot change in place; `up` would refuse.
    pub refused: Vec<String>,
    pub steps: Vec<PlannedStep>,
    /// Recorded resources the configuration no longer has; `up` removes them at the end.
    pub removals: Vec<PlannedResource>,
    pub monthly_cost: Estimate,
}

#[derive(Debug, Serialize)]
pub struct PlannedStep {
    pub step: String,
    pub after: Vec<String>,
    pub description: String,
    pub resources: Vec<PlannedResource>,
}

#[derive(Debug, Serialize)]
pub struct PlannedResource {
    pub key: String,
    pub kind: String,
    /// create, keep, attach, update, re-create, resume or delete.
    pub action: &'static str,
    pub detail: String,
}

impl fmt::Display for PlanReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "plan for stack {}{}",
            self.stack,
            self.region.as_ref().map(|r| format!(" in {r}")).unwrap_or_default()
        )?;
        for problem in &self.refused {
            writeln!(f, "REFUSED: {problem}")?;
        }
        let mut rows = Vec::new();
        for step in &self.steps {
            for r in &step.resources {
                rows.push(vec![
                    step.step.clone(),
                    r.action.to_string(),
                    r.key.clone(),
                    r.kind.clone(),
                    r.detail.clone(),
                ]);
            }
        }
        for r in &self.removals {
            rows.push(vec!["(cleanup)".into(), r.action.to_string(), r.key.clone(), r.kind.clone(), r.detail.clone()]);
        }
        write!(f, "{}", table(&["STEP", "ACTION", "RESOURCE", "KIND", "DETAIL"], &rows))?;
        let changes = rows.iter().filter(|r| r[1] != "keep").count();
        writeln!(f, "{changes} change(s); steps run in dependency order, independent ones at the same time")?;
        let cost = &self.monthly_cost;
        writeln!(f, "\nestimated monthly cost ({}):", cost.prices)?;
        let rows: Vec<Vec<String>> = cost
            .lines
            .iter()
            .map(|l| vec![l.item.clone(), format!("${:.2}", l.usd_per_month), l.assumption.clone()])
            .collect();
        write!(f, "{}", table(&["ITEM", "USD/MONTH", "ASSUMING"], &rows))?;
        writeln!(f, "total about ${:.2}/month; other regions differ", cost.total_usd_per_month)?;
        match cost.nat_instance_saving_usd_per_month {
            Some(s) if s > 0.0 => {
                writeln!(f, "use_nat_instance = true would save about ${s:.2}/month (a single instance as NAT)")
            }
            Some(s) => writeln!(f, "the NAT instance saves about ${:.2}/month over a NAT gateway", -s),
            None => Ok(()),
        }
    }
}

pub async fn run(global: &GlobalArgs, args: PlanArgs) -> anyhow::Result<()> {
    let cfg = stack_config(global, args.settings)?;
    let recorded = state::read(&global.state_dir, &cfg.stack)?.filter(|s| !s.resources.is_empty());
    let steps = steps::build(&cfg);
    let owned = steps::owned_keys(&steps);

    // Only an existing stack needs AWS: a new one is all "create", and plan works offline.
    let (region, live, records, refused) = match &recorded {
        None => (cfg.region.clone(), BTreeMap::new(), BTreeMap::new(), vec![]),
        Some(state) => {
            let region = cfg.region.clone().unwrap_or_else(|| state.region.clone());
            let fixed = steps::fixed_settings(&cfg, &region);
            let refused = steps::replacements(state, &fixed);
            let ctx = context(&cfg.stack, Some(&region), global.profile.as_deref()).await?;
            let live =
                engine::observe(ctx, Arc::new(Kinds), state.resources.clone(), usize::from(global.parallel)).await;
            (Some(region), live, state.resources.clone(), refused)
        }
    };

    // What the configuration changes in resources that exist and are otherwise as recorded.
    let config_changes: BTreeMap<String, Vec<String>> =
        steps.iter().flat_map(|s| s.action.config_changes(&records)).fold(BTreeMap::new(), |mut acc, (key, change)| {
            acc.entry(key).or_insert_with(Vec::new).push(change);
            acc
        });
    let planned = |key: &str, kind: &str| {
        let (action, detail) = match (records.get(key), live.get(key)) {
            (Some(r), Some(Ok(Live::Present { .. })))
                if config_changes.contains_key(key) && r.status == RecordStatus::Created =>
            {
                ("update", format!("{}: {}", r.id.as_deref().unwrap_or(""), config_changes[key].join("; ")))
            }
            (None, _) => ("create", String::new()),
            (Some(r), Some(Ok(Live::Present { .. }))) if r.status == RecordStatus::Retained => {
                ("attach", format!("{} kept by down --keep-data", r.id.as_deref().unwrap_or("")))
            }
            (Some(r), _) if r.status == RecordStatus::Pending => {
                ("resume", "an earlier run started it; up adopts it if it exists".to_string())
            }
            (Some(r), Some(Ok(Live::Present { summary, drift }))) if drift.is_empty() => {
                ("keep", format!("{} {summary}", r.id.as_deref().unwrap_or("")))
            }
            (Some(r), Some(Ok(Live::Present { drift, .. }))) => {
                ("update", format!("{}: {}", r.id.as_deref().unwrap_or(""), drift.join("; ")))
            }
            (Some(r), Some(Ok(Live::Missing))) => {
                ("re-create", format!("{} was deleted outside gitlab-provision", r.id.as_deref().unwrap_or("")))
            }
            (Some(_), Some(Err(e))) => ("keep", format!("could not read it: {e:#}")),
            (Some(_), None) => ("keep", String::new()),
        };
        PlannedResource { key: key.to_string(), kind: kind.to_string(), action, detail }
    };
    let planned_steps = steps
        .iter()
        .map(|s| PlannedStep {
            step: s.name.clone(),
            after: s.deps.clone(),
            description: s.description.clone(),
            resources: s.resources.iter().map(|(k, kind)| planned(k, kind)).collect(),
        })
        .collect();
    let stale: BTreeSet<&String> = records.keys().filter(|k| !owned.contains(*k)).collect();
    let removals = stale
        .into_iter()
        .map(|k| PlannedResource {
            key: k.clone(),
            kind: records[k].kind.clone(),
            action: "delete",
            detail: "no longer in the configuration".into(),
        })
        .collect();
    let report = PlanReport {
        stack: cfg.stack.clone(),
        region,
        refused,
        steps: planned_steps,
        removals,
        monthly_cost: crate::cost::estimate(&cfg),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{report}");
    }
    Ok(())
}
