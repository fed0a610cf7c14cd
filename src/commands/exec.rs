//! `exec` and `shell`: ECS Exec into the running GitLab task, handing the session to AWS's
//! Session Manager plugin exactly as the AWS CLI does.

use crate::cli::GlobalArgs;
use crate::exit::{CliResult, Diagnostic, ExitStatus};
use crate::keys;
use crate::ops::stack::{Reached, reach};
use crate::printer::Printer;
use crate::steps::service::{CONTAINER, running_task};

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
    let Some((task, runtime)) = running_task(&ctx, &cluster).await? else {
        return Err(Diagnostic::new("GitLab has no running task to connect to")
            .with_help("`gitlab-provision status` says why; `gitlab-provision up` starts it")
            .into());
    };
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
    printer.note(&format!("connecting to task {task} ({line})"));
    let status = tokio::process::Command::new(plugin)
        .arg(response.to_string())
        .arg(ctx.region())
        .arg("StartSession")
        .arg(ctx.aws.profile.clone().unwrap_or_default())
        .arg(parameters.to_string())
        .arg(endpoint)
        .status()
        .await?;
    Ok(if status.success() { ExitStatus::Success } else { ExitStatus::Failure })
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
