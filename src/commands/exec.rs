//! `exec` and `shell`: ECS Exec into the running GitLab task, handing the session to AWS's
//! Session Manager plugin exactly as the AWS CLI does.

use crate::cli::GlobalArgs;
use crate::exit::{CliResult, Diagnostic, ExitStatus};
use crate::keys;
use crate::ops::stack::{Reached, reach};
use crate::printer::Printer;
use crate::steps::service::{CONTAINER, RunningTask, running_task};

const PLUGIN: &str = "session-manager-plugin";
const PLUGIN_HELP: &str = "install AWS's Session Manager plugin: https://docs.aws.amazon.com/systems-manager/latest/userguide/session-manager-working-with-install-plugin.html";

/// Finds a program on PATH.
fn on_path(program: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")
        .and_then(|path| std::env::split_paths(&path).map(|dir| dir.join(program)).find(|p| p.is_file()))
}

/// One shell word for each argument, so `exec -- gitlab-rails runner 'puts 1'` arrives whole.
fn shell_join(args: &[String]) -> String {
    args.iter()
        .map(|a| {
            if !a.is_empty() && a.chars().all(|c| c.is_ascii_alphanumeric() || "-_./:=@,+".contains(c)) {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// `command`: what to run; `None` opens a shell.
pub async fn run(global: &GlobalArgs, command: Option<Vec<String>>) -> CliResult {
    let printer = Printer::new(global, false);
    let plugin = on_path(PLUGIN).ok_or_else(|| {
        Diagnostic::new(format!("{PLUGIN} is not installed (ECS Exec needs it, as the AWS CLI does)"))
            .with_help(PLUGIN_HELP)
    })?;
    let Reached { stack, recorded, ctx } = reach(global, &printer).await?;
    let Some(cluster) = recorded.resources.get(keys::SERVICE).and_then(|r| r.attr("cluster").map(str::to_string))
    else {
        return Err(Diagnostic::new(format!("stack {stack} has no GitLab service recorded"))
            .with_help("run `gitlab-provision up` first")
            .into());
    };
    let Some(running) = running_task(&ctx, &cluster).await? else {
        return Err(Diagnostic::new("GitLab has no running task to connect to")
            .with_help("`gitlab-provision status` says why; `gitlab-provision up` starts it")
            .into());
    };
    ready_for_exec(&running)?;
    let (task, runtime) = (running.id.clone(), running.runtime.clone());
    let line = match &command {
        Some(args) => shell_join(args),
        None => "/bin/bash".to_string(),
    };
    let session = crate::aws::AwsResultExt::or_aws(
        ctx.aws
            .ecs
            .execute_command()
            .cluster(&cluster)
            .task(&task)
            .container(CONTAINER)
            .interactive(true)
            .command(&line)
            .send()
            .await,
        || format!("starting ECS Exec in task {task}"),
    )?;
    let session = session.session().ok_or_else(|| anyhow::anyhow!("ExecuteCommand returned no session"))?;
    let response = serde_json::json!({
        "SessionId": session.session_id(),
        "StreamUrl": session.stream_url(),
        "TokenValue": session.token_value(),
    });
    let cluster_name = cluster.rsplit('/').next().unwrap_or(&cluster);
    let parameters = serde_json::json!({ "Target": format!("ecs:{cluster_name}_{task}_{runtime}") });
    let endpoint = std::env::var("AWS_ENDPOINT_URL_SSM")
        .or_else(|_| std::env::var("AWS_ENDPOINT_URL"))
        .unwrap_or_else(|_| format!("https://ssm.{}.amazonaws.com", ctx.region()));
    printer.note(&format!("connecting to task {task} ({line}); the session is logged"));
    let mut plugin = std::process::Command::new(plugin);
    plugin
        .arg(response.to_string())
        .arg(ctx.region())
        .arg("StartSession")
        .arg(ctx.aws.profile.clone().unwrap_or_default())
        .arg(parameters.to_string())
        .arg(endpoint);
    let status = session::run(plugin).await?;
    Ok(if status.success() { ExitStatus::Success } else { ExitStatus::Failure })
}

/// Whether the task can take an ECS Exec session: started with it on, its agent running.
fn ready_for_exec(task: &RunningTask) -> Result<(), Diagnostic> {
    if !task.exec_enabled {
        return Err(Diagnostic::new(format!(
            "GitLab's task {} was started without ECS Exec (a task keeps the setting it started with)",
            task.id
        ))
        .with_help("set exec = true (or drop `exec = false`) and run `gitlab-provision up`: it restarts the task with ECS Exec on"));
    }
    match task.exec_agent.as_deref() {
        Some("RUNNING") => Ok(()),
        state => Err(Diagnostic::new(format!(
            "ECS Exec's agent in GitLab's task {} is {}, not running",
            task.id,
            state.map_or("not reported".to_string(), str::to_lowercase)
        ))
        .with_help("it starts a minute after the task; try again shortly. If it stays so, `gitlab-provision up --yes` after `exec = false` then `exec = true` restarts the task")),
    }
}

/// A Session Manager session in the foreground, as the AWS CLI runs one: while the plugin runs,
/// the keys that send signals (Ctrl-C, Ctrl-\\, Ctrl-Z) are the session's, not this tool's, and
/// the terminal is given back as it was however the plugin ends.
pub mod session {
    use std::os::unix::process::CommandExt;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// Raised while a session runs: the tool's own Ctrl-C handling stands aside.
    pub static ACTIVE: AtomicBool = AtomicBool::new(false);

    const PASSED: [libc::c_int; 3] = [libc::SIGINT, libc::SIGQUIT, libc::SIGTSTP];

    pub async fn run(mut plugin: std::process::Command) -> std::io::Result<std::process::ExitStatus> {
        // SAFETY: tcgetattr writes a termios we own; on a descriptor that is no terminal it fails
        // and nothing is restored later.
        let saved = unsafe {
            let mut termios: libc::termios = std::mem::zeroed();
            (libc::tcgetattr(libc::STDIN_FILENO, &mut termios) == 0).then_some(termios)
        };
        // The plugin gets the keys' signals with their usual meaning...
        // SAFETY: only async-signal-safe calls (signal) between fork and exec.
        unsafe {
            plugin.pre_exec(|| {
                for signal in PASSED {
                    libc::signal(signal, libc::SIG_DFL);
                }
                Ok(())
            });
        }
        ACTIVE.store(true, Ordering::SeqCst);
        // ...and this process ignores them meanwhile (Ctrl-C goes to the whole foreground group).
        let previous: Vec<libc::sighandler_t> =
            PASSED[1..].iter().map(|s| unsafe { libc::signal(*s, libc::SIG_IGN) }).collect();
        let status = tokio::task::spawn_blocking(move || plugin.status()).await.map_err(std::io::Error::other)?;
        for (signal, handler) in PASSED[1..].iter().zip(previous) {
            unsafe { libc::signal(*signal, handler) };
        }
        ACTIVE.store(false, Ordering::SeqCst);
        if let Some(termios) = saved {
            // SAFETY: restores the settings read above on the same descriptor.
            unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &termios) };
        }
        status
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_stay_whole() {
        let args: Vec<String> =
            ["gitlab-rails", "runner", "puts User.count", "it's"].iter().map(|s| s.to_string()).collect();
        assert_eq!(shell_join(&args), r#"gitlab-rails runner 'puts User.count' 'it'\''s'"#);
    }
}
