mod aws;
mod cli;
mod commands;
mod config;
mod cost;
mod engine;
mod printer;
mod state;
mod steps;

use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let default_level = match cli.global.verbose {
        0 => "warn",
        1 => "gitlab_provision=info,warn",
        _ => "gitlab_provision=debug,info",
    };
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level)))
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(commands::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            if is_user_error(&error) { ExitCode::from(2) } else { ExitCode::FAILURE }
        }
    }
}

/// Usage and configuration mistakes exit 2; failures while working exit 1.
fn is_user_error(error: &anyhow::Error) -> bool {
    error.is::<config::ConfigError>() || error.is::<commands::UserError>() || error.is::<aws::NoRegion>()
}
