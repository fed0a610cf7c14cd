//! One file per subcommand; what several share is here.

pub mod backup;
pub mod down;
pub mod exec;
pub mod init;
pub mod list;
pub mod logs;
pub mod password;
pub mod plan;
pub mod restore;
pub mod sleep;
pub mod state;
pub mod status;
pub mod up;
pub mod upgrade;

use crate::cli::{Cli, Command};
use crate::engine::Interrupt;
use crate::exit::{CliResult, ExitStatus};

pub async fn run(cli: Cli, interrupt: Interrupt) -> CliResult {
    let global = cli.global;
    let result = match cli.command {
        Command::Up(args) => up::run(&global, args, interrupt).await,
        Command::Down(args) => down::run(&global, args, interrupt).await,
        Command::Status(args) => status::run(&global, args).await,
        Command::Plan(args) => plan::run(&global, args).await,
        Command::Password => password::run(&global).await,
        Command::Upgrade(args) => upgrade::run(&global, args, interrupt).await,
        Command::Sleep(args) => sleep::sleep(&global, args).await,
        Command::Wake(args) => sleep::wake(&global, args).await,
        Command::Backup(args) => backup::run(&global, args, interrupt).await,
        Command::Restore(args) => restore::run(&global, args, interrupt).await,
        Command::Logs(args) => logs::run(&global, args, interrupt).await,
        Command::Exec(args) => exec::run(&global, Some(args.command)).await,
        Command::Shell => exec::run(&global, None).await,
        Command::Init(args) => init::run(&global, args).await,
        Command::List(args) => list::run(&global, args).await,
        Command::State(args) => state::run(&global, args).await,
        Command::Unlock(args) => state::unlock(&global, args).await,
        Command::Completions(args) => {
            let mut command = <Cli as clap::CommandFactory>::command();
            let mut script = Vec::new();
            clap_complete::generate(args.shell, &mut command, "gitlab-provision", &mut script);
            crate::printer::write_stdout(&String::from_utf8_lossy(&script));
            Ok(ExitStatus::Success)
        }
    };
    // A shared state's lock dropped by a command that ended early is removed before the exit.
    crate::state_bucket::finish_releases().await;
    result
}
