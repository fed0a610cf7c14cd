//! `sleep` and `wake` (`ops::sleep`).

use std::sync::Arc;

use crate::cli::{GlobalArgs, SleepArgs, WakeArgs};
use crate::exit::{CliResult, ExitStatus};
use crate::ops::stack::{located, open, recorded_config};
use crate::printer::Printer;

pub async fn sleep(global: &GlobalArgs, args: SleepArgs) -> CliResult {
    let printer = Arc::new(Printer::new(global, false));
    let (_, recorded) = located(global).await?;
    let cfg = recorded_config(global, &recorded)?;
    let opened = open(global, &printer, "sleep").await?;
    let asleep = crate::ops::sleep::sleep(&opened, &cfg, &printer, args.through_schedule).await?;
    printer.out(&match &asleep.until {
        Some(until) => {
            format!("GitLab sleeps until its schedule wakes it ({until}); `gitlab-provision wake` starts it sooner")
        }
        None => "GitLab sleeps until `gitlab-provision wake`".to_string(),
    });
    Ok(ExitStatus::Success)
}

pub async fn wake(global: &GlobalArgs, args: WakeArgs) -> CliResult {
    let printer = Arc::new(Printer::new(global, false));
    let (_, recorded) = located(global).await?;
    let cfg = recorded_config(global, &recorded)?;
    let opened = open(global, &printer, "wake").await?;
    crate::ops::sleep::wake(&opened, &cfg, &printer).await?;
    let until = cfg.schedule.as_ref().map(|_| " until its next scheduled sleep").unwrap_or_default();
    if args.wait {
        crate::ops::converge::wait_healthy(&opened.ctx, &opened.state, &printer).await?;
        printer.out(&format!("GitLab is awake{until}"));
    } else {
        printer.out(&format!(
            "GitLab is starting{until} (a restart takes about {} minutes; `gitlab-provision status` shows when it is healthy)",
            crate::steps::wake::WAKE_MINUTES
        ));
    }
    Ok(ExitStatus::Success)
}
