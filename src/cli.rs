//! Command-line types only.

use std::path::PathBuf;

use clap::{ArgAction, Args, Parser, Subcommand, ValueEnum};

use crate::config::Settings;

const EXAMPLES: &str = "\
Examples:
  gitlab-provision init                            write a commented gitlab-provision.toml
  gitlab-provision plan                            what `up` would create or change, and the cost
  gitlab-provision up --wait                       create or converge, then wait for GitLab
  gitlab-provision status                          what exists and whether GitLab is healthy
  gitlab-provision password | pbcopy               the root password, for the first sign-in
  gitlab-provision upgrade --to 19.5.2-ce.0        a guarded upgrade, with a backup first
  gitlab-provision down                            remove the stack (asks for its name)

Credentials come from the AWS SDK's chain (environment, profiles, IAM Identity Center,
credential_process, aws login); --profile NAME uses that profile whatever the environment holds.";

const UP_EXAMPLES: &str = "\
Examples:
  gitlab-provision up --allowed-cidr 203.0.113.0/24
      GitLab over HTTP on the load balancer's own name
  gitlab-provision up --domain-name example.com --sub-domain git --hosted-zone-id Z0123 --wait
      HTTPS at git.example.com, waited for until GitLab answers
  gitlab-provision up --ssh --ssh-port 2222 --yes
      add Git over SSH to a running stack (its task is replaced)
  gitlab-provision up --gitlab-image-tag 19.4.2-ce.0 --yes
      a patch upgrade (across upgrade stops: `gitlab-provision upgrade`)

Every flag is also a key of gitlab-provision.toml (flags win).";

const DOWN_EXAMPLES: &str = "\
Examples:
  gitlab-provision down                      asks you to type the stack name, then deletes it
  gitlab-provision down --keep-data --yes    keep the data (file system, secret, buckets, database) for a later `up`
  gitlab-provision down --no-final-snapshot  on RDS: delete the database without its final snapshot
  gitlab-provision down --discover --yes     also remove what carries the stack's tags (a lost state)";

const STATUS_EXAMPLES: &str = "\
Examples:
  gitlab-provision status                    verdict, resources, GitLab's service
  gitlab-provision status --check            exit 0 only when GitLab is healthy (for cron or monitoring)
  gitlab-provision status --json | jq .verdict.state";

const PLAN_EXAMPLES: &str = "\
Examples:
  gitlab-provision plan                          what `up` would do, changes first, and the cost
  gitlab-provision plan --detailed-exitcode      exit 0: nothing to do, 2: changes, 1: error (CI)
  gitlab-provision plan --out plan.json          save it; `gitlab-provision up plan.json` applies exactly it";

const PASSWORD_EXAMPLES: &str = "\
Examples:
  gitlab-provision password | pbcopy         root's password for the first sign-in";

const UPGRADE_EXAMPLES: &str = "\
Examples:
  gitlab-provision upgrade --to 19.4.2-ce.0 --plan
      the path, the backup and each hop's downtime; changes nothing
  gitlab-provision upgrade --to 19.9.0-ce.0 --via 19.5.3-ce.0 --via 19.8.1-ce.0
      through each required stop, a backup first, healthy between hops";

const SLEEP_EXAMPLES: &str = "\
Examples:
  gitlab-provision sleep                     stop GitLab until its schedule wakes it (or `wake`)
  gitlab-provision sleep --through-schedule  away for a week: the schedule is held until `wake`";

const WAKE_EXAMPLES: &str = "\
Examples:
  gitlab-provision wake --wait               start GitLab and wait until it answers";

const BACKUP_EXAMPLES: &str = "\
Examples:
  gitlab-provision backup --yes              stop GitLab, copy, start it again (consistent)
  gitlab-provision backup --online           no downtime; PostgreSQL's copy is crash-consistent
  gitlab-provision backup                    on RDS: a database snapshot and the file system, no downtime
  gitlab-provision backup --stop --yes       on RDS: GitLab stopped for an exact copy of both
  gitlab-provision backup list               recovery points with their GitLab versions";

const RESTORE_EXAMPLES: &str = "\
Examples:
  gitlab-provision restore A363616B --plan   what a restore of that point would do
  gitlab-provision restore A363616B --yes    restore it, with the GitLab version that wrote it
  gitlab-provision restore                   resume a restore that was interrupted";

const LOGS_EXAMPLES: &str = "\
Examples:
  gitlab-provision logs --since 30m          GitLab's output of the last half hour
  gitlab-provision logs -f                   keep following, across task replacements
  gitlab-provision logs --tail 50 --json     the last 50 lines as JSON objects
  gitlab-provision logs --exec --since 1d    who ran what in a shell";

const EXEC_EXAMPLES: &str = "\
Examples:
  gitlab-provision exec -- gitlab-rake gitlab:check
  gitlab-provision exec -- gitlab-ctl status
  gitlab-provision exec -- gitlab-rake \"gitlab:password:reset[root]\"";

const SHELL_EXAMPLES: &str = "\
Examples:
  gitlab-provision shell                     then e.g. `gitlab-rails console`; the session is logged";

const INIT_EXAMPLES: &str = "\
Examples:
  gitlab-provision init                                  asks who may reach GitLab, HTTPS, NAT
  gitlab-provision init --allowed-cidr 203.0.113.0/24    without questions (scripts)
  gitlab-provision init --shared-state acme-gitlab-state/prod
                                                         a bucket for the team's state (then state = ... in the config)";

const LIST_EXAMPLES: &str = "\
Examples:
  gitlab-provision list                      the stacks in ./state
  gitlab-provision list --state-dir ~/stacks --json
  gitlab-provision list --state-url s3://acme-gitlab-state/prod   the stacks of a shared bucket, and who holds them";

const STATE_EXAMPLES: &str = "\
Examples:
  gitlab-provision state push --state-url s3://acme-gitlab-state/prod    move ./state/gitlab.json to the bucket
  gitlab-provision state pull > gitlab.json      the shared state, for inspection
  gitlab-provision state history                 every saved version, newest first
  gitlab-provision state restore 3HL4kqtJlcpXroDTDmJ.rmSpXd3dIbrHY   bring an earlier version back";

const UNLOCK_EXAMPLES: &str = "\
Examples:
  gitlab-provision unlock 5f0c2a9d1e3b7c44 --stack prod    after checking that its holder's run is dead";

const COMPLETIONS_EXAMPLES: &str = "\
Examples:
  gitlab-provision completions zsh > ~/.zfunc/_gitlab-provision
  gitlab-provision completions bash > /etc/bash_completion.d/gitlab-provision";

#[derive(Debug, Parser)]
#[command(
    name = "gitlab-provision",
    version,
    about = "Stand up a private GitLab CE in your own AWS account",
    propagate_version = true,
    after_help = EXAMPLES
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ColorChoice {
    Auto,
    Always,
    Never,
}

#[derive(Debug, Clone, Args)]
pub struct GlobalArgs {
    /// Config file [default: ./gitlab-provision.toml when it exists]
    #[arg(long, global = true, value_name = "FILE", help_heading = "Global")]
    pub config: Option<PathBuf>,
    /// Stack name: 1-32 of a-z, 0-9, '-' [default: config key `stack`, else gitlab]
    #[arg(long, global = true, value_name = "NAME", help_heading = "Global")]
    pub stack: Option<String>,
    /// Where state files live (when no shared state is named)
    #[arg(long, global = true, value_name = "DIR", default_value = "state", help_heading = "Global")]
    pub state_dir: PathBuf,
    /// The team's shared state: s3://BUCKET/PREFIX [default: config key `state`, else --state-dir]
    #[arg(
        long,
        global = true,
        value_name = "URL",
        env = "GITLAB_PROVISION_STATE",
        hide_env_values = true,
        help_heading = "Global"
    )]
    pub state_url: Option<String>,
    /// AWS region [default: config key `region`, else the SDK's chain: AWS_REGION, profile]
    #[arg(long, global = true, value_name = "REGION", help_heading = "Global")]
    pub region: Option<String>,
    /// AWS profile from your AWS config files (wins over credentials in the environment)
    #[arg(long, global = true, value_name = "PROFILE", help_heading = "Global")]
    pub profile: Option<String>,
    /// How many AWS operations run at once (lower it for accounts with tight API rate limits)
    #[arg(long, global = true, value_name = "N", default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=64), help_heading = "Global")]
    pub parallel: u16,
    /// More output: -v logs each AWS call, -vv adds the SDK's own logs (RUST_LOG overrides)
    #[arg(short, long, global = true, action = ArgAction::Count, help_heading = "Global")]
    pub verbose: u8,
    /// Only results and errors: no progress, no notes
    #[arg(short, long, global = true, conflicts_with = "verbose", help_heading = "Global")]
    pub quiet: bool,
    /// Colour: auto (a terminal, and NO_COLOR unset), always or never
    #[arg(long, global = true, value_enum, default_value_t = ColorChoice::Auto, value_name = "WHEN", help_heading = "Global")]
    pub color: ColorChoice,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create or converge the stack (shows disruptive changes and asks first)
    #[command(after_help = UP_EXAMPLES)]
    Up(UpArgs),
    /// Delete everything the state records, in reverse dependency order
    #[command(after_help = DOWN_EXAMPLES)]
    Down(DownArgs),
    /// Show whether GitLab is healthy and every recorded resource's live state
    #[command(after_help = STATUS_EXAMPLES)]
    Status(StatusArgs),
    /// Show what `up` would create or change, changing nothing
    #[command(after_help = PLAN_EXAMPLES)]
    Plan(PlanArgs),
    /// Print GitLab's root password (and nothing else), for scripts
    #[command(after_help = PASSWORD_EXAMPLES)]
    Password,
    /// Upgrade GitLab along its upgrade path: backup, each required stop, health between
    #[command(after_help = UPGRADE_EXAMPLES)]
    Upgrade(UpgradeArgs),
    /// Stop GitLab until its next scheduled wake, or until `wake` (its data stays as it is)
    #[command(after_help = SLEEP_EXAMPLES)]
    Sleep(SleepArgs),
    /// Start a sleeping GitLab (until its next scheduled sleep)
    #[command(after_help = WAKE_EXAMPLES)]
    Wake(WakeArgs),
    /// Back up the file system with AWS Backup (GitLab stopped for a consistent copy; on RDS, a
    /// database snapshot too, GitLab running), or list backups
    #[command(after_help = BACKUP_EXAMPLES)]
    Backup(BackupArgs),
    /// Restore a backup into a new file system (and a new RDS database) and switch GitLab to it
    #[command(after_help = RESTORE_EXAMPLES)]
    Restore(RestoreArgs),
    /// Show GitLab's container logs
    #[command(after_help = LOGS_EXAMPLES)]
    Logs(LogsArgs),
    /// Run a command in the GitLab container (ECS Exec), e.g. `exec -- gitlab-rake gitlab:check`
    #[command(after_help = EXEC_EXAMPLES)]
    Exec(ExecArgs),
    /// Open a shell in the GitLab container (ECS Exec)
    #[command(after_help = SHELL_EXAMPLES)]
    Shell,
    /// Write a commented gitlab-provision.toml
    #[command(after_help = INIT_EXAMPLES)]
    Init(InitArgs),
    /// List the stacks of the state directory or the shared state bucket
    #[command(after_help = LIST_EXAMPLES)]
    List(ListArgs),
    /// Move a stack's state to the shared bucket, copy it down, list or restore its versions
    #[command(after_help = STATE_EXAMPLES)]
    State(StateArgs),
    /// Remove a shared state's lock left by a run that died
    #[command(after_help = UNLOCK_EXAMPLES)]
    Unlock(UnlockArgs),
    /// Print shell completions
    #[command(after_help = COMPLETIONS_EXAMPLES)]
    Completions(CompletionsArgs),
}

#[derive(Debug, Args)]
pub struct UpArgs {
    /// A plan saved by `plan --out`: apply exactly it (refused if the stack changed since)
    #[arg(value_name = "PLAN_FILE")]
    pub plan_file: Option<PathBuf>,
    #[command(flatten)]
    pub settings: Settings,
    /// Apply changes that replace the running task or interrupt traffic without asking
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// Also wait until GitLab has booted and the load balancer reports it healthy
    #[arg(long)]
    pub wait: bool,
    /// Deploy a version that skips required upgrade stops or goes back (GitLab may refuse to start)
    #[arg(long)]
    pub force_version: bool,
    /// Write per-step start/finish times as JSON to this file
    #[arg(long, value_name = "FILE")]
    pub timings: Option<PathBuf>,
    /// One JSON event per line on stdout as steps progress, then the result
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct DownArgs {
    /// Do not ask for confirmation (needed when stdin is not a terminal)
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// Keep the data (the file system with its backups, the root secret, GitLab's buckets, and the
    /// RDS database with the network it sits in); a later `up` attaches them
    #[arg(long)]
    pub keep_data: bool,
    /// Also delete the objects in GitLab's buckets (`object_storage`): without it, `down` refuses
    /// while they hold any
    #[arg(long, conflicts_with = "keep_data")]
    pub delete_objects: bool,
    /// Delete the RDS database (`database = "rds"`) without the final snapshot `down` otherwise
    /// takes of it: its data is then gone, but for a backup of the stack's
    #[arg(long, conflicts_with = "keep_data")]
    pub no_final_snapshot: bool,
    /// Also find and delete what carries the stack's tags but the state does not record
    /// (a lost state file, a crash)
    #[arg(long)]
    pub discover: bool,
    /// Forget recorded resources that no longer exist even when most of them are missing
    #[arg(long)]
    pub forget_missing: bool,
    /// Write per-resource start/finish times as JSON to this file
    #[arg(long, value_name = "FILE")]
    pub timings: Option<PathBuf>,
    /// One JSON event per line on stdout as resources go, then the result
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Print JSON instead of a table
    #[arg(long)]
    pub json: bool,
    /// Also list what carries the stack's tags but the state does not record (orphans)
    #[arg(long)]
    pub discover: bool,
    /// Show full ids and ARNs
    #[arg(long)]
    pub wide: bool,
    /// Exit 3 when anything is missing, changed, unknown or unhealthy
    #[arg(long)]
    pub check: bool,
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    #[command(flatten)]
    pub settings: Settings,
    /// Print JSON instead of a table
    #[arg(long)]
    pub json: bool,
    /// Exit 0 when nothing would change, 2 when something would, 1 on error (or refusal)
    #[arg(long)]
    pub detailed_exitcode: bool,
    /// List unchanged resources too
    #[arg(long)]
    pub all: bool,
    /// Save the plan to FILE for review; `gitlab-provision up FILE` applies exactly it
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct UpgradeArgs {
    /// The release to reach, e.g. 19.5.2-ce.0
    #[arg(long, value_name = "TAG")]
    pub to: String,
    /// A required stop's release, in order; one per stop on the path
    #[arg(long, value_name = "TAG")]
    pub via: Vec<String>,
    /// Deploy only the next hop, then stop
    #[arg(long)]
    pub one_step: bool,
    /// Skip the backup before the first hop
    #[arg(long)]
    pub no_backup: bool,
    /// Do not ask: stop GitLab for the backup and go on between stops without waiting for a go
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// Show what the upgrade would do (path, backup, each hop's downtime) and change nothing
    #[arg(long)]
    pub plan: bool,
    /// Give up on the backup (and start GitLab again) when AWS Backup has not started its job by then
    #[arg(long, value_name = "DURATION", default_value = "15m")]
    pub start_within: String,
    /// One JSON event per line on stdout as it goes, then the result
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct SleepArgs {
    /// Hold the schedule until `wake` (a team away): no scheduled wake in between
    #[arg(long)]
    pub through_schedule: bool,
}

#[derive(Debug, Args)]
pub struct WakeArgs {
    /// Wait until the load balancer reports GitLab healthy
    #[arg(long)]
    pub wait: bool,
}

#[derive(Debug, Args)]
pub struct BackupArgs {
    #[command(subcommand)]
    pub action: Option<BackupAction>,
    /// Back up while GitLab runs (no downtime; PostgreSQL's copy is only crash-consistent). With
    /// the database on RDS, the default
    #[arg(long, conflicts_with = "stop")]
    pub online: bool,
    /// With the database on RDS: stop GitLab for the copy too, so the repositories match the
    /// database exactly (without RDS, what `backup` does by default)
    #[arg(long)]
    pub stop: bool,
    /// Stop GitLab for the backup without asking
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// Give up (and start GitLab again) when AWS Backup has not started the job by then; AWS allows
    /// an on-demand job up to an hour to start
    #[arg(long, value_name = "DURATION", default_value = "15m")]
    pub start_within: String,
    /// One JSON event per line on stdout as it goes, then the result
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum BackupAction {
    /// The file system's recovery points, newest first, with dates and sizes
    List {
        /// Print JSON instead of a table
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// The recovery point: its id as `backup list` shows it, or its ARN (resumes one in progress when omitted)
    pub recovery_point: Option<String>,
    /// Switch GitLab without asking
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// Show what the restore would do and change nothing
    #[arg(long)]
    pub plan: bool,
    /// The GitLab version that wrote the backup's data, for a backup that does not record it
    #[arg(long, value_name = "TAG")]
    pub gitlab_version: Option<String>,
    /// One JSON event per line on stdout as it goes, then the result
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// How far back: 10m, 2h, 1d
    #[arg(long, value_name = "DURATION", default_value = "10m")]
    pub since: String,
    /// Keep printing new lines as GitLab writes them
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// One JSON object per line: timestamp, stream, message
    #[arg(long)]
    pub json: bool,
    /// Only the last N lines (of the --since window)
    #[arg(long, value_name = "N")]
    pub tail: Option<usize>,
    /// The ECS Exec sessions' log (who ran what in a shell), instead of GitLab's
    #[arg(long)]
    pub exec: bool,
}

#[derive(Debug, Args)]
pub struct ExecArgs {
    /// The command and its arguments (after --)
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct InitArgs {
    /// Overwrite an existing file
    #[arg(long)]
    pub force: bool,
    /// The networks allowed to reach GitLab (asked on a terminal when not given)
    #[arg(long = "allowed-cidr", value_name = "CIDR")]
    pub allowed_cidrs: Vec<String>,
    /// Write hardening = "strict" (asked on a terminal when --allowed-cidr is not given)
    #[arg(long)]
    pub strict: bool,
    /// Create (or adopt, after checking it) the S3 bucket a team keeps its states in, instead of
    /// writing a config file: BUCKET or BUCKET/PREFIX
    #[arg(long, value_name = "BUCKET[/PREFIX]", conflicts_with_all = ["force", "allowed_cidrs", "strict"])]
    pub shared_state: Option<String>,
}

#[derive(Debug, Args)]
pub struct StateArgs {
    #[command(subcommand)]
    pub command: StateCommand,
}

#[derive(Debug, Subcommand)]
pub enum StateCommand {
    /// Move the local state (--state-dir) into the shared bucket (refused if the bucket has one)
    Push,
    /// Print the shared state (or write it to --out), for inspection
    Pull {
        /// Write it to this file instead of stdout
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// List the saved versions of the shared state, newest first
    History {
        /// Print JSON instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Make an earlier version the current state (taking the stack's lock)
    Restore {
        /// The version, as `state history` lists it
        #[arg(value_name = "VERSION")]
        version_id: String,
        /// Do not ask for confirmation
        #[arg(long, short = 'y')]
        yes: bool,
    },
}

#[derive(Debug, Args)]
pub struct UnlockArgs {
    /// The lock's id, as the refused run printed it
    pub lock_id: String,
    /// Do not ask for confirmation
    #[arg(long, short = 'y')]
    pub yes: bool,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Print JSON instead of a table
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}
