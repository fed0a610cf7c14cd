mod aws;
mod catalog;
mod cli;
mod commands;
mod config;
mod cost;
mod exit;
mod gitlab_version;
mod ops;
mod printer;
mod requirements;
mod schedule;
#[cfg(test)]
mod schemas;
mod state_bucket;
mod steps;

// The ground floor, a crate of its own (no AWS SDK): reached as crate::engine, crate::keys and
// crate::state like the rooms above it.
use ground::{engine, keys, state};

use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use crate::cli::GlobalArgs;
use crate::engine::Interrupt;
use crate::printer::Printer;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let global = cli.global.clone();
    init_logging(&global);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let interrupt = Interrupt::default();
    let result = runtime.block_on(async {
        tokio::spawn(watch_signals(interrupt.clone()));
        commands::run(cli, interrupt).await
    });
    let status = match result {
        Ok(status) => status,
        Err(failure) => {
            Printer::new(&global, false).error(&failure);
            failure.status
        }
    };
    ExitCode::from(status.code())
}

/// The first Ctrl-C (or SIGTERM) stops scheduling new work: what is in flight finishes and is
/// recorded, then the command says where things stand. A second one exits at once; the state
/// is consistent at every instant, so nothing is lost either way.
async fn watch_signals(interrupt: Interrupt) {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    let mut count = 0;
    loop {
        let terminated = async {
            match term.as_mut() {
                Some(term) => {
                    term.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = terminated => {}
        }
        // During an exec session Ctrl-C is the session's (the plugin passes it on).
        if commands::exec::session::ACTIVE.load(std::sync::atomic::Ordering::SeqCst) {
            continue;
        }
        if count > 0 {
            eprintln!("\nstopped at once; the state file is consistent: run the command again to resume");
            std::process::exit(130);
        }
        count += 1;
        interrupt.raise();
        eprintln!(
            "\nstopping: no new step starts; the ones in flight finish and are recorded (Ctrl-C again to exit now)"
        );
    }
}

/// Logs go to stderr, without colour codes unless stderr is a terminal that wants them. By
/// default only the tool's own warnings show; `-v` adds one line per AWS call, `-vv` the SDK's
/// own logs.
fn init_logging(global: &GlobalArgs) {
    let default = match global.verbose {
        0 => "gitlab_provision=warn",
        1 => "gitlab_provision=info",
        _ => "info,gitlab_provision=debug,aws_config=debug,aws_smithy_runtime=debug,aws_runtime=debug",
    };
    let ansi = printer::Looks::decide(global, false).color_err;
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default)))
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .with_target(global.verbose > 1)
        .without_time()
        .init();
}
