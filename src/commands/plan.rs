//! `plan`: what `up` would do, changing nothing (the plan itself is `ops::plan`).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use crate::catalog::Kinds;
use crate::cli::{GlobalArgs, PlanArgs};
use crate::engine;
use crate::exit::{CliError, CliResult, Diagnostic, ExitStatus};
use crate::ops::converge::refuse_lost_state;
use crate::ops::plan::{PlanAction, PlanReport, SavedPlan, keep_what_runs, report};
use crate::ops::stack::{Configured, connect, locate, stack_config};
use crate::printer::{Printer, Tone, shorten_arns, table};

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
        let tone = |action: PlanAction| match action {
            PlanAction::Create | PlanAction::Recreate | PlanAction::Resume | PlanAction::Attach => Tone::Good,
            PlanAction::Update => Tone::Changed,
            PlanAction::Replace | PlanAction::Delete | PlanAction::Refuse => Tone::Bad,
            PlanAction::Keep => Tone::Dim,
        };
        let mut rows = Vec::new();
        let mut kept = 0;
        for step in &self.steps {
            for r in &step.resources {
                if r.action == PlanAction::Keep && !self.show_all {
                    kept += 1;
                    continue;
                }
                rows.push(vec![
                    paint(r.action.as_str(), tone(r.action)),
                    r.key.clone(),
                    r.kind.clone(),
                    shorten_arns(&r.detail),
                ]);
            }
        }
        for r in &self.removals {
            rows.push(vec![
                paint(r.action.as_str(), tone(r.action)),
                r.key.clone(),
                r.kind.clone(),
                shorten_arns(&r.detail),
            ]);
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
        if let Some(cheaper) = &cost.cheaper {
            let _ = writeln!(
                out,
                "{} would save about ${:.2}/month, with the same data safety",
                cheaper.settings.join(" and "),
                cheaper.saving_usd_per_month
            );
        }
        out
    }
}

/// How long `plan` of a new stack waits for AWS before it plans offline.
const LOOKUP_WITHIN: std::time::Duration = std::time::Duration::from_secs(10);

pub async fn run(global: &GlobalArgs, args: PlanArgs) -> CliResult {
    let exit_on_error = |status: ExitStatus| if args.detailed_exitcode { ExitStatus::Failure } else { status };
    let refused = |e: CliError| CliError { status: exit_on_error(e.status), ..e };
    let Configured { mut cfg, applied, .. } =
        stack_config(global, args.settings).map_err(|e| CliError::new(exit_on_error(ExitStatus::Usage), e))?;
    let printer = Printer::new(global, false);
    // A stack recorded in another region: one line, nothing listed under it.
    let (_, recorded) = locate(global).await.map_err(refused)?;
    let (ctx, lives, region) = match &recorded {
        // A new stack is all "create"; with credentials, what `up` would find is looked for
        // first (a lost state file, names taken by another stack), as `up` does.
        None => {
            let configured = crate::aws::credentials::configured_region(global.profile.as_deref()).await;
            let Some(region) = cfg.region.clone().or(configured) else {
                return Err(CliError::new(
                    exit_on_error(ExitStatus::Usage),
                    crate::aws::credentials::ConnectError::NoRegion,
                ));
            };
            let look = tokio::time::timeout(LOOKUP_WITHIN, connect(global, &cfg.stack, Some(&region), None, &printer));
            let reached = match look.await {
                Ok(reached) => reached,
                Err(_) => {
                    Err(CliError::failure(anyhow::anyhow!("AWS did not answer within {}s", LOOKUP_WITHIN.as_secs())))
                }
            };
            let ctx = match reached {
                Ok(ctx) => {
                    refuse_lost_state(&ctx, &cfg.stack, global).await.map_err(refused)?;
                    ctx
                }
                Err(e) => {
                    printer.note(&format!(
                        "planned offline: could not look in AWS for what `up` would find ({:#})",
                        e.error
                    ));
                    Arc::new(crate::aws::credentials::offline_context(&cfg.stack, &region))
                }
            };
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
        keep_what_runs(&mut cfg, &state.resources);
        cfg.asleep = crate::ops::sleep::recorded_sleep(state).is_some();
    }
    cfg.operator = match recorded.as_ref().and_then(crate::ops::stack::recorded_operator) {
        Some(operator) => Some(operator),
        None => crate::aws::credentials::principal_arn(&ctx).await.unwrap_or(None),
    };
    let mut report = report(&ctx, &cfg, recorded.as_ref(), region, &lives, false)?;
    report.show_all = args.all;
    report.warnings.extend(crate::steps::cloudtrail::warning(&ctx, cfg.exec).await);
    if let Some(path) = &args.out {
        let account =
            ctx.account.as_ref().map(|a| a.account.clone()).or(recorded.as_ref().and_then(|s| s.account.clone()));
        let saved = SavedPlan::of(&report, recorded.as_ref(), applied, account);
        std::fs::write(path, serde_json::to_vec_pretty(&saved)?).map_err(|e| {
            CliError::usage(Diagnostic::new(format!("--out {}: cannot write there ({e})", path.display())))
        })?;
        printer.note(&format!(
            "plan saved to {}; `gitlab-provision up {}` applies exactly it, and refuses if the stack changed meanwhile",
            path.display(),
            path.display()
        ));
    }
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
