//! Command-line types only.

use std::path::PathBuf;

use clap::{ArgAction, Args, Parser, Subcommand};

use crate::config::Settings;

#[derive(Debug, Parser)]
#[command(
    name = "gitlab-provision",
    version,
    about = "Stand up a private GitLab CE in your own AWS account",
    propagate_version = true
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Args)]
pub struct GlobalArgs {
    /// Config file [default: ./gitlab-provision.toml when it exists]
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Stack name: 1-32 of a-z, 0-9, '-' [default: config key `stack`, else gitlab]
    #[arg(long, global = true, value_name = "NAME")]
    pub stack: Option<String>,
    /// Where state files live
    #[arg(long, global = true, value_name = "DIR", default_value = "state")]
    pub state_dir: PathBuf,
    /// AWS region [default: config key `region`, else the SDK's chain: AWS_REGION, profile]
    #[arg(long, global = true, value_name = "REGION")]
    pub region: Option<String>,
    /// AWS profile from ~/.aws/config
    #[arg(long, global = true, value_name = "PROFILE")]
    pub profile: Option<String>,
    /// How many AWS operations run at once (lower it for accounts with tight API rate limits)
    #[arg(long, global = true, value_name = "N", default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub parallel: u16,
    /// More log output (-v info, -vv debug); RUST_LOG overrides
    #[arg(short, long, global = true, action = ArgAction::Count)]
    pub verbose: u8,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create or converge the stack
    Up(UpArgs),
    /// Delete everything the state records, in reverse dependency order
    Down(DownArgs),
    /// Show every recorded resource and whether it still exists
    Status(StatusArgs),
    /// Show what `up` would create or change, changing nothing
    Plan(PlanArgs),
    /// Print GitLab's root password (and nothing else), for scripts
    Password,
}

#[derive(Debug, Args)]
pub struct UpArgs {
    #[command(flatten)]
    pub settings: Settings,
    /// Write per-step start/finish times as JSON to this file
    #[arg(long, value_name = "FILE")]
    pub timings: Option<PathBuf>,
    /// Also wait until GitLab has booted and the load balancer reports it healthy
    #[arg(long)]
    pub wait: bool,
}

#[derive(Debug, Args)]
pub struct DownArgs {
    /// Do not ask for confirmation (needed when stdin is not a terminal)
    #[arg(long)]
    pub yes: bool,
    /// Keep the file system (with its backups) and the root secret; a later `up` attaches them
    #[arg(long)]
    pub keep_data: bool,
    /// Also find and delete what carries the stack's tags or names but the state does not record
    /// (a lost state file, a crash)
    #[arg(long)]
    pub discover: bool,
    /// Write per-resource start/finish times as JSON to this file
    #[arg(long, value_name = "FILE")]
    pub timings: Option<std::path::PathBuf>,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Print JSON instead of a table
    #[arg(long)]
    pub json: bool,
    /// Also list what carries the stack's tags or names but the state does not record (orphans)
    #[arg(long)]
    pub discover: bool,
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    #[command(flatten)]
    pub settings: Settings,
    /// Print JSON instead of a table
    #[arg(long)]
    pub json: bool,
}
