//! Day two that never strands GitLab: backups whose AWS job fails, expires, never starts or is
//! interrupted end with GitLab running and the operation closed; `up` settles what a killed run
//! left; restores bring back the version that wrote the data, every attempt a new job; checks
//! that cannot say OK blindly; logs across empty pages; a task that cannot start explained at
//! once. Each failure is made by the strict model as AWS documents it (tests/harness/strict.py).

mod common;

use std::time::{Duration, Instant};

use common::{Emulator, Tool, id, up};
use serde_json::{Value, json};

/// The desired counts GitLab's service was set to, in order.
fn scaled(emu: &Emulator) -> Vec<Value> {
    emu.bodies("UpdateService").into_iter().map(|b| b["desiredCount"].clone()).filter(|c| !c.is_null()).collect()
}

/// The operation journal the state records, if any.
fn journal(tool: &Tool, stack: &str) -> Value {
    tool.state(stack).map(|s| s["notes"]["journal"].clone()).unwrap_or(Value::Null)
}

/// Waits until the state's journal has a job id (the backup's job was started).
fn wait_for_job(tool: &Tool, stack: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(job) = journal(tool, stack)["job"].as_str() {
            return job.to_string();
        }
        assert!(Instant::now() < deadline, "the backup job never started");
        std::thread::sleep(Duration::from_millis(50));
    }
}

async fn desired(emu: &Emulator, stack: &str) -> i32 {
    let c = emu.clients();
    let out = c.ecs.describe_services().cluster(stack).services("gitlab").send().await.unwrap();
    out.services()[0].desired_count()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backup_that_cannot_finish_starts_gitlab_again_and_closes_the_operation() {
    let emu = Emulator::start();
    let tool = Tool::new(&emu.endpoint);
    tool.run(&up("strand", &["--wait"])).ok();
    let backup = ["backup", "--stack", "strand", "--yes"];

    // A job that AWS ends FAILED: GitLab stopped for it, started again, the operation closed,
    // AWS's words in the error, and no second job started by running the command again.
    emu.set_control(json!({"backup_job_outcome": {"state": "FAILED", "message": "Access denied to the file system"}}));
    emu.clear_calls();
    let run = tool.run(&backup).fails_with(1);
    assert!(run.stderr.contains("FAILED: Access denied to the file system"), "{}", run.stderr);
    assert!(run.stderr.contains("GitLab was started again"), "{}", run.stderr);
    assert_eq!(scaled(&emu), vec![json!(0), json!(1)], "GitLab was not started again");
    assert!(journal(&tool, "strand").is_null(), "the failed backup is still recorded as in progress");
    assert_eq!(desired(&emu, "strand").await, 1);

    // A job AWS has not started running within the bound: stopped, GitLab started again.
    emu.set_control(json!({"backup_job_start": 7200}));
    emu.clear_calls();
    let run = tool.run(&[&backup[..], &["--start-within", "2s"]].concat()).fails_with(1);
    assert!(run.stderr.contains("had not started the job"), "{}", run.stderr);
    assert!(run.stderr.contains("--start-within"), "the help says how to allow it longer: {}", run.stderr);
    assert!(emu.calls().iter().any(|c| c.action.starts_with("POST /backup-jobs/")), "the job was not stopped");
    assert_eq!(scaled(&emu), vec![json!(0), json!(1)]);
    assert!(journal(&tool, "strand").is_null());

    // A job AWS expires (its start window, one hour, passes before it runs): the same.
    emu.set_control(json!({"backup_job_start": 4000}));
    emu.clear_calls();
    let run = tool.run(&[&backup[..], &["--start-within", "2h"]].concat()).fails_with(1);
    assert!(run.stderr.contains("EXPIRED"), "{}", run.stderr);
    assert_eq!(scaled(&emu), vec![json!(0), json!(1)]);

    // Ctrl-C while the job copies: the job stopped, GitLab started again, exit 130.
    emu.set_control(json!({"backup_job": 7500}));
    emu.clear_calls();
    let child = tool.command(&backup).stderr(std::process::Stdio::piped()).spawn().unwrap();
    wait_for_job(&tool, "strand");
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("cancelled") && stderr.contains("GitLab was started again"), "{stderr}");
    assert_eq!(scaled(&emu), vec![json!(0), json!(1)]);
    assert!(journal(&tool, "strand").is_null());

    // A run killed outright leaves GitLab stopped and the journal; `up` is not blocked by it:
    // it stops the job, starts GitLab again and closes the operation.
    emu.clear_calls();
    let mut child = tool.command(&backup).spawn().unwrap();
    let job = wait_for_job(&tool, "strand");
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(desired(&emu, "strand").await, 0, "the killed backup had stopped GitLab");
    let run = tool.run(&up("strand", &[])).ok();
    assert!(run.stderr.contains(&job[..8]) || run.stderr.contains("interrupted backup"), "{}", run.stderr);
    assert_eq!(desired(&emu, "strand").await, 1, "up did not start GitLab again");
    assert!(journal(&tool, "strand").is_null());

    // With AWS back to normal, a backup goes through and records GitLab's version with it.
    emu.set_control(json!({}));
    let run = tool.run(&backup).ok();
    assert!(run.stdout.contains("GitLab 19.4.1-ce.0"), "{}", run.stdout);
    tool.run(&["down", "--stack", "strand", "--yes"]).ok();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restore_brings_back_the_version_that_wrote_the_data_and_every_attempt_is_new() {
    let emu = Emulator::start();
    let tool = Tool::new(&emu.endpoint);
    tool.run(&up("ver", &["--gitlab-image-tag", "19.4.1-ce.0", "--wait"])).ok();
    let first_fs = id(&tool.state("ver").unwrap(), "file-system");
    tool.run(&["backup", "--stack", "ver", "--yes"]).ok();
    let list = tool.run(&["backup", "list", "--stack", "ver", "--json"]).ok().json();
    let point = list["recovery_points"][0].clone();
    assert_eq!(point["version"], "19.4.1-ce.0", "{list:#}");
    let (arn, short) = (point["arn"].as_str().unwrap().to_string(), point["id"].as_str().unwrap().to_string());
    // The version is on the recovery point itself, as a tag (read as the tool reads it).
    let tags = emu.aws_clients().backup.list_tags().resource_arn(&arn).send().await.unwrap();
    assert_eq!(
        tags.tags().and_then(|t| t.get("gitlab-provision:gitlab-version")).map(String::as_str),
        Some("19.4.1-ce.0")
    );

    // Upgrade (a patch: no stop), then restore the backup taken before it, by its short id.
    tool.run(&up("ver", &["--gitlab-image-tag", "19.4.2-ce.0", "--yes", "--wait"])).ok();
    let plan = tool.run(&["restore", "--stack", "ver", &short, "--plan"]).ok();
    assert!(
        plan.stdout.contains("19.4.1-ce.0 (the version that wrote the data; 19.4.2-ce.0 runs now)"),
        "{}",
        plan.stdout
    );
    tool.run(&["restore", "--stack", "ver", &short, "--yes"]).ok();
    let status = tool.run(&["status", "--stack", "ver", "--json"]).ok().json();
    assert_eq!(status["gitlab_version"]["recorded"], "19.4.1-ce.0", "{status:#}");
    assert_eq!(status["verdict"]["state"], "healthy", "{status:#}");
    let second_fs = id(&tool.state("ver").unwrap(), "file-system");

    // The same point again: a new job, a new file system, a new token.
    tool.run(&["restore", "--stack", "ver", &arn, "--yes"]).ok();
    let third_fs = id(&tool.state("ver").unwrap(), "file-system");
    assert!(
        first_fs != second_fs && second_fs != third_fs && first_fs != third_fs,
        "{first_fs} {second_fs} {third_fs}"
    );
    let starts = emu.bodies("PUT /restore-jobs");
    let tokens: Vec<&Value> = starts.iter().map(|b| &b["IdempotencyToken"]).collect();
    assert_eq!(starts.len(), 2, "{starts:?}");
    assert_ne!(tokens[0], tokens[1], "a second restore of one point reused the first's token");
    for body in &starts {
        let metadata = &body["Metadata"];
        // Started from AWS Backup's own metadata: the file system the point copies.
        assert_eq!(metadata["file-system-id"], first_fs.as_str(), "{metadata}");
        assert!(metadata["CreationToken"].as_str().is_some_and(|t| t.len() <= 64), "{metadata}");
    }

    // A point nothing records a version for is refused, saying why and how to name it.
    let foreign_version = tool.run(&["restore", "--stack", "ver", "nope", "--yes"]).fails_with(2);
    assert!(foreign_version.stderr.contains("is not a recovery point of this stack's"), "{}", foreign_version.stderr);
    tool.run(&["down", "--stack", "ver", "--yes"]).ok();
}

#[tokio::test(flavor = "multi_thread")]
async fn checks_that_cannot_look_do_not_say_ok() {
    let emu = Emulator::start();
    let tool = Tool::new(&emu.endpoint);
    // No state, nothing tagged: not OK.
    tool.run(&["status", "--stack", "none", "--check"]).fails_with(3);
    tool.run(&["status", "--stack", "none", "--check", "--json"]).fails_with(3);
    // No credentials: not OK either.
    let blind = [("AWS_ACCESS_KEY_ID", None), ("AWS_SECRET_ACCESS_KEY", None)];
    let run = tool.run_with(&["status", "--stack", "none", "--check"], &blind).fails_with(3);
    assert!(run.stderr.contains("could not look"), "{}", run.stderr);
    // A stack recorded in one region, asked about in another: refused in one line, every command.
    tool.run(&up("here", &[])).ok();
    for command in [
        vec!["status", "--stack", "here", "--region", "eu-west-1"],
        vec!["plan", "--stack", "here", "--region", "eu-west-1", "--allowed-cidr", "203.0.113.0/24"],
        vec!["logs", "--stack", "here", "--region", "eu-west-1"],
        vec!["backup", "list", "--stack", "here", "--region", "eu-west-1"],
        vec!["password", "--stack", "here", "--region", "eu-west-1"],
    ] {
        let run = tool.run(&command).fails_with(2);
        assert!(run.stderr.contains("lives in us-east-1, not eu-west-1"), "{command:?}: {}", run.stderr);
        assert!(!run.stdout.contains("re-create"), "{command:?} listed rows under the refusal: {}", run.stdout);
    }
    // A typo of a region is refused before any call, with the region it meant.
    emu.clear_calls();
    let run = tool.run(&["status", "--stack", "here", "--region", "us-esat-1"]).fails_with(2);
    assert!(run.stderr.contains("did you mean us-east-1"), "{}", run.stderr);
    assert!(emu.calls().is_empty(), "{:?}", emu.calls());
    tool.run(&["down", "--stack", "here", "--yes"]).ok();
}

#[tokio::test(flavor = "multi_thread")]
async fn logs_page_through_empty_pages_escape_what_they_print_and_tail() {
    let emu = Emulator::start();
    let c = emu.clients();
    let tool = Tool::new(&emu.endpoint);
    tool.run(&up("lg", &["--wait"])).ok();
    // A line that would clear the screen and fake colour on a terminal.
    let group = "/gitlab-provision/lg/gitlab";
    let stream = "gitlab/gitlab/hostile";
    c.logs.create_log_stream().log_group_name(group).log_stream_name(stream).send().await.unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    let event = aws_sdk_cloudwatchlogs::types::InputLogEvent::builder()
        .timestamp(now)
        .message("owned \u{1b}[2J\u{1b}[31mred")
        .build()
        .unwrap();
    c.logs.put_log_events().log_group_name(group).log_stream_name(stream).log_events(event).send().await.unwrap();
    // CloudWatch answers empty pages that still carry a token: the lines come after them.
    emu.set_control(json!({"logs_empty_pages": 3}));
    let logs = tool.run(&["logs", "--stack", "lg", "--since", "1h"]).ok();
    assert!(logs.stdout.contains("Thank you for using GitLab Docker Image!"), "{}", logs.stdout);
    assert!(!logs.stdout.contains('\u{1b}'), "an escape sequence reached the terminal: {:?}", logs.stdout);
    assert!(logs.stdout.contains("owned \\u{1b}[2J"), "{}", logs.stdout);
    let json = tool.run(&["logs", "--stack", "lg", "--since", "1h", "--json"]).ok();
    assert!(json.stdout.contains("owned \\u001b[2J"), "JSON keeps the text, escaped as JSON: {}", json.stdout);
    let tail = tool.run(&["logs", "--stack", "lg", "--since", "1h", "--tail", "2"]).ok();
    assert_eq!(tail.stdout.lines().count(), 2, "{}", tail.stdout);
    assert!(tail.stdout.contains("owned"), "the newest line is last: {}", tail.stdout);
    tool.run(&["down", "--stack", "lg", "--yes"]).ok();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_task_that_cannot_start_is_explained_at_once_and_quotas_are_checked_first() {
    let emu = Emulator::start();
    let c = emu.clients();
    let tool = Tool::new(&emu.endpoint);
    // A new account's Fargate quota below what GitLab needs: refused before anything exists.
    emu.set_control(json!({"quotas": {"L-3032A538": 1.0}}));
    let run = tool.run(&up("qt", &[])).fails_with(2);
    assert!(run.stderr.contains("Fargate On-Demand vCPU resource count is 1"), "{}", run.stderr);
    assert!(
        run.stderr.contains("request-service-quota-increase") && run.stderr.contains("L-3032A538"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("nothing was created"), "{}", run.stderr);
    assert!(emu.calls().iter().all(|c| !c.mutating), "{:?}", emu.calls());

    // An image that cannot be pulled: up --wait fails as soon as ECS says so, with its words.
    emu.set_control(json!({"pull_error": "CannotPullContainerError: pull access denied for gitlab/gitlab-ce"}));
    let started = Instant::now();
    let run = tool.run(&up("qt", &["--wait"])).fails_with(1);
    assert!(run.stderr.contains("CannotPullContainerError"), "{}", run.stderr);
    assert!(run.stderr.contains("a task cannot start"), "{}", run.stderr);
    let status = tool.run(&["status", "--stack", "qt", "--json"]).ok().json();
    assert!(status["verdict"]["text"].as_str().unwrap().contains("cannot start"), "{status:#}");
    eprintln!("up --wait gave up {:.1}s after it started", started.elapsed().as_secs_f64());

    // AWS Backup's role is trusted as AWS's own default role is: no condition AWS Backup does not send.
    let role = c.iam.get_role().role_name("qt-us-east-1-backup-role").send().await.unwrap();
    let trust = common::url_decode(role.role().unwrap().assume_role_policy_document().unwrap());
    assert!(trust.contains("backup.amazonaws.com") && !trust.contains("Condition"), "{trust}");
    emu.set_control(json!({}));
    tool.run(&["down", "--stack", "qt", "--yes"]).ok();
}

/// A stand-in for AWS's Session Manager plugin: a shell script given as `body`.
fn plugin(tool: &Tool, body: &str) -> String {
    use std::os::unix::fs::PermissionsExt;
    let bin = tool.dir.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let path = bin.join("session-manager-plugin");
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default())
}

/// Runs the tool in a pseudo-terminal, typing `keys` once `after` has shown; returns its exit
/// status and the screen, ending with whether the terminal echoes afterwards.
fn in_terminal(tool: &Tool, args: &[&str], path: &str, keys: &str, after: &str) -> (i32, String) {
    let template = tool.command(args);
    let mut command = std::process::Command::new(common::python());
    command.env_clear();
    for (name, value) in template.get_envs() {
        if let Some(value) = value {
            command.env(name, value);
        }
    }
    command.env("PATH", path).env("TERM", "xterm-256color").current_dir(tool.dir.path());
    command.arg(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/harness/pty_run.py"));
    command.args(["--keys", keys, "--after", after, "--report-echo", "--"]);
    command.arg(env!("CARGO_BIN_EXE_gitlab-provision")).args(args);
    let out = command.output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned())
}

#[tokio::test(flavor = "multi_thread")]
async fn ctrl_c_in_a_shell_is_the_sessions_and_exec_can_be_switched_off() {
    let emu = Emulator::start();
    let c = emu.clients();
    let tool = Tool::new(&emu.endpoint);
    tool.run(&up("sh", &["--wait"])).ok();
    // Sessions are logged: the cluster sends them to the stack's exec log group.
    let cluster = c
        .ecs
        .describe_clusters()
        .clusters("sh")
        .include(aws_sdk_ecs::types::ClusterField::Configurations)
        .send()
        .await
        .unwrap();
    let exec = cluster.clusters()[0].configuration().and_then(|c| c.execute_command_configuration()).cloned();
    let logged = exec.as_ref().and_then(|e| e.log_configuration()).and_then(|l| l.cloud_watch_log_group_name());
    assert_eq!(logged, Some("/gitlab-provision/sh/exec"), "{exec:?}");
    assert_eq!(exec.as_ref().and_then(|e| e.logging()).map(|l| l.as_str()), Some("OVERRIDE"));

    // Ctrl-C while the plugin runs goes to the session: the plugin handles it, the tool does not
    // stop, and the session's own exit status is the tool's.
    let marker = tool.dir.path().join("got-int");
    let path = plugin(
        &tool,
        &format!(
            "trap 'echo got-int > {}; exit 0' INT\necho plugin-ready\nwhile true; do sleep 0.1; done",
            marker.display()
        ),
    );
    let (code, screen) = in_terminal(&tool, &["shell", "--stack", "sh"], &path, "\\x03", "plugin-ready");
    assert_eq!(code, 0, "{screen}");
    assert!(marker.exists(), "the plugin never received Ctrl-C: {screen}");
    assert!(!screen.contains("stopping:"), "the tool took the session's Ctrl-C: {screen}");

    // A plugin that dies with the terminal in raw mode: the tool gives the terminal back.
    let path = plugin(&tool, "stty raw -echo\necho plugin-ready\nkill -9 $$");
    let (_, screen) = in_terminal(&tool, &["shell", "--stack", "sh"], &path, "", "never");
    assert!(screen.trim_end().ends_with("ECHO on"), "the terminal was left without echo: {screen}");

    // exec = false: ECS Exec off on the service (a restart, asked first), the shell refused.
    tool.run(&up("sh", &["--exec", "false", "--yes", "--wait"])).ok();
    let service = c.ecs.describe_services().cluster("sh").services("gitlab").send().await.unwrap();
    assert!(!service.services()[0].enable_execute_command());
    let run = tool.command(&["shell", "--stack", "sh"]).env("PATH", &path).output().unwrap();
    assert_eq!(run.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&run.stderr).contains("started without ECS Exec"),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    tool.run(&["down", "--stack", "sh", "--yes"]).ok();
}
