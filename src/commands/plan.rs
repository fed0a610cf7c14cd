//! `plan`: what `up` would do, changing nothing (the plan itself is `ops::plan`).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use crate::catalog::Kinds;
use crate::cli::{GlobalArgs, PlanArgs};
use crate::engine;
use crate::exit::{CliError, CliResult, ExitStatus};
use crate::ops::plan::{PlanReport, keep_running_version, report};
use crate::ops::stack::{connect, stack_config};
use crate::printer::{Printer, Tone, shorten_arns, table};
use crate::state;

impl PlanReport {
    /// The plan as text, changes first; `painter` colours an action.
    pub fn render(&self, paint: &dyn Fn(&str, Tone) -> String) -> String {
        let mut out = String::new();
        use fmt::Write as _;
        let _ = writeln!(out, "plan for stack {} in {}", self.stack, self.region);
        for refusal in &self.refused {
            let _ = writeln!(out, "{} {}", paint("REFUSED:", Tone::Bad), refusal.problem);
            if let Some(help) = &refusal.help {
                let _ = writeln!(out, "  help: {help}");
            }
        }
        let tone = |action: &str| match action {
            "create" | "re-create" | "resume" | "attach" => Tone::Good,
            "update" => Tone::Changed,
            "replace" | "delete" | "refuse" => Tone::Bad,
            _ => Tone::Dim,
        };
        let mut rows = Vec::new();
        let mut kept = 0;
        for step in &self.steps {
            for r in &step.resources {
                if r.action == "keep" && !self.show_all {
                    kept += 1;
                    continue;
                }
                rows.push(vec![
                    paint(r.action, tone(r.action)),
                    r.key.clone(),
                    r.kind.clone(),
                    shorten_arns(&r.detail),
                ]);
            }
        }
        for r in &self.removals {
            rows.push(vec![paint(r.action, tone(r.action)), r.key.clone(), r.kind.clone(), shorten_arns(&r.detail)]);
        }
        if rows.is_empty() {
            let _ = writeln!(out, "no changes: {kept} resources as configured");
        } else {
            let _ = write!(out, "{}", table(&["ACTION", "RESOURCE", "KIND", "DETAIL"], &rows));
            let s = &self.summary;
            let _ = writeln!(
                out,
                "{} to create, {} to update, {} to replace, {} to delete{}",
                s.create,
                s.update,
                s.replace,
                s.delete,
                if kept > 0 { format!("; {kept} unchanged (plan --all lists them)") } else { String::new() }
            );
        }
        for d in self.disruptions() {
            let _ = writeln!(out, "{} {d}", paint("disrupts:", Tone::Changed));
        }
        for w in &self.warnings {
            let _ = writeln!(out, "{} {w}", paint("warning:", Tone::Warn));
        }
        let cost = &self.monthly_cost;
        let _ = writeln!(out, "\nestimated monthly cost ({}):", cost.prices);
        let lines: Vec<Vec<String>> = cost
            .lines
            .iter()
            .map(|l| vec![l.item.clone(), format!("${:.2}", l.usd_per_month), l.assumption.clone()])
            .collect();
        let _ = write!(out, "{}", table(&["ITEM", "USD/MONTH", "ASSUMING"], &lines));
        let _ = writeln!(out, "total about ${:.2}/month; other regions differ", cost.total_usd_per_month);
        if let Some(change) = self.monthly_cost_change.filter(|c| c.abs() >= 0.01) {
            let _ = writeln!(
                out,
                "that is {}${:.2}/month against what the stack runs now",
                if change > 0.0 { "+" } else { "-" },
                change.abs()
            );
        }
        match cost.nat_instance_saving_usd_per_month {
            Some(s) if s > 0.0 => {
                let _ =
                    writeln!(out, "use_nat_instance = true would save about ${s:.2}/month (a single instance as NAT)");
            }
            Some(s) => {
                let _ = writeln!(out, "the NAT instance saves about ${:.2}/month over a NAT gateway", -s);
            }
            None => {}
        }
        out
    }
}

pub async fn run(global: &GlobalArgs, args: PlanArgs) -> CliResult {
    let exit_on_error = |status: ExitStatus| if args.detailed_exitcode { ExitStatus::Failure } else { status };
    let mut cfg =
        stack_config(global, args.settings).map_err(|e| CliError::new(exit_on_error(ExitStatus::Usage), e))?.cfg;
    let printer = Printer::new(global, false);
    let recorded = state::read(&global.state_dir, &cfg.stack)?.filter(|s| !s.resources.is_empty());
    // Only an existing stack needs AWS: a new one is all "create", and plan works offline.
    let (ctx, lives, region) = match &recorded {
        None => {
            let configured = crate::aws::credentials::configured_region(global.profile.as_deref()).await;
            let Some(region) = cfg.region.clone().or(configured) else {
                return Err(CliError::new(
                    exit_on_error(ExitStatus::Usage),
                    crate::aws::credentials::ConnectError::NoRegion,
                ));
            };
            let ctx = Arc::new(crate::aws::credentials::offline_context(&cfg.stack, &region));
            (ctx, BTreeMap::new(), region)
        }
        Some(state) => {
            let region = cfg.region.clone().unwrap_or_else(|| state.region.clone());
            let ctx = connect(global, &cfg.stack, Some(&region), Some(state), &printer).await?;
            let lives = engine::observe(
                ctx.clone(),
                Arc::new(Kinds),
                state.resources.clone(),
                usize::from(global.parallel),
                false,
            )
            .await;
            let lives = lives.into_iter().filter_map(|(k, l)| l.ok().map(|l| (k, l))).collect();
            (ctx, lives, region)
        }
    };
    if let Some(state) = &recorded {
        keep_running_version(&mut cfg, &state.resources);
    }
    let mut report = report(&ctx, &cfg, recorded.as_ref(), region, &lives, false)?;
    report.show_all = args.all;
    if args.json {
        printer.json("plan", &report)?;
    } else {
        printer.out(&report.render(&|text, tone| printer.paint_out(text, tone)));
    }
    Ok(if !report.refused.is_empty() {
        exit_on_error(ExitStatus::Usage)
    } else if args.detailed_exitcode && report.changes_anything() {
        ExitStatus::Usage
    } else {
        ExitStatus::Success
    })
}
