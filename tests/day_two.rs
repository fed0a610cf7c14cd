//! After day one: versions and upgrades, backup and restore, logs, a shell, end to end against
//! the emulator's strict model (which runs GitLab's task as Fargate would, answers AWS Backup's
//! jobs and ECS Exec, and writes GitLab's boot output to its log group).

mod common;

use common::{Emulator, Tool, id, stack_leftovers, up};
use serde_json::{Value, json};

/// The image of every task definition revision of the stack, oldest first.
async fn images(c: &common::Clients, stack: &str) -> Vec<String> {
    let mut out = Vec::new();
    let arns = c.ecs.list_task_definitions().family_prefix(format!("{stack}-gitlab")).send().await.unwrap();
    for arn in arns.task_definition_arns() {
        let td = c.ecs.describe_task_definition().task_definition(arn).send().await.unwrap();
        let image = td.task_definition().unwrap().container_definitions()[0].image().unwrap().to_string();
        out.push(image.rsplit(':').next().unwrap().to_string());
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn versions_never_go_back_and_never_skip_a_required_stop() {
    let emu = Emulator::start();
    let tool = Tool::new(&emu.endpoint);
    tool.run(&up("ver", &["--gitlab-image-tag", "19.4.1-ce.0"])).ok();

    // A patch upgrade by flag: allowed (after the downtime is confirmed), and called out: the
    // next plain `up` keeps what runs rather than going back.
    let run = tool.run(&up("ver", &["--gitlab-image-tag", "19.4.2-ce.0", "--yes"])).ok();
    assert!(run.stderr.contains("19.4.2-ce.0"), "{}", run.stderr);
    emu.clear_calls();
    tool.run(&up("ver", &[])).ok();
    assert!(emu.calls().iter().all(|c| !c.mutating), "a plain up changed something: {:?}", emu.calls());

    // Back to 19.4.1: refused, by up and by plan, before anything changes.
    for command in ["up", "plan"] {
        let mut args = up("ver", &["--gitlab-image-tag", "19.4.1-ce.0", "--yes"]);
        args[0] = command;
        if command == "plan" {
            args.retain(|a| *a != "--yes");
        }
        let run = tool.run(&args).fails_with(2);
        let said = format!("{}{}", run.stdout, run.stderr);
        assert!(said.contains("cannot be downgraded"), "{command}: {said}");
    }
    // Across 19.5, 19.8 and 19.11 to 20.0: refused with the path and the next command.
    let run = tool.run(&up("ver", &["--gitlab-image-tag", "20.0.0-ce.0", "--yes"])).fails_with(2);
    for stop in ["19.5", "19.8", "19.11"] {
        assert!(run.stderr.contains(stop), "{stop} missing: {}", run.stderr);
    }
    assert!(run.stderr.contains("gitlab-provision upgrade --to 20.0.0-ce.0"), "{}", run.stderr);
    // Unless the user says they know: --force-version.
    tool.run(&up("ver", &["--gitlab-image-tag", "19.5.0-ce.0", "--force-version", "--yes"])).ok();
    assert_eq!(images(&emu.clients(), "ver").await.last().map(String::as_str), Some("19.5.0-ce.0"));
    tool.run(&["down", "--stack", "ver", "--yes"]).ok();
}

#[tokio::test(flavor = "multi_thread")]
async fn upgrade_goes_stop_by_stop_after_a_backup_and_plan_shows_it_first() {
    let emu = Emulator::start();
    let c = emu.clients();
    let tool = Tool::new(&emu.endpoint);
    tool.run(&up("upg", &["--gitlab-image-tag", "19.4.1-ce.0", "--wait"])).ok();
    let to = ["upgrade", "--stack", "upg", "--to", "19.9.0-ce.0"];

    // Without the stops' releases it refuses and names them.
    let run = tool.run(&to).fails_with(2);
    assert!(run.stderr.contains("19.5") && run.stderr.contains("19.8"), "{}", run.stderr);

    let via = [&to[..], &["--via", "19.5.3-ce.0", "--via", "19.8.1-ce.0"]].concat();
    let plan = tool.run(&[&via[..], &["--plan"]].concat()).ok();
    assert!(plan.stdout.contains("hop 1 of 3") && plan.stdout.contains("hop 3 of 3"), "{}", plan.stdout);
    assert!(
        plan.stdout.contains("consistent backup") && plan.stdout.contains("background migrations"),
        "{}",
        plan.stdout
    );
    emu.clear_calls();
    assert_eq!(images(&c, "upg").await, vec!["19.4.1-ce.0"], "--plan changed something");

    // One hop at a time.
    let run = tool.run(&[&via[..], &["--yes", "--one-step"]].concat()).ok();
    assert!(run.stderr.contains("stopped after one hop"), "{}", run.stderr);
    assert_eq!(images(&c, "upg").await, vec!["19.4.1-ce.0", "19.5.3-ce.0"]);
    let backups = tool.run(&["backup", "list", "--stack", "upg", "--json"]).ok().json();
    assert_eq!(backups["recovery_points"].as_array().unwrap().len(), 1, "no backup before the first hop");

    // The rest in one go (--yes: no pause for the migrations, with a warning saying so).
    let run = tool.run(&[&via[..], &["--yes"]].concat()).ok();
    assert!(run.stderr.contains("without checking GitLab's background migrations"), "{}", run.stderr);
    assert_eq!(images(&c, "upg").await, vec!["19.4.1-ce.0", "19.5.3-ce.0", "19.8.1-ce.0", "19.9.0-ce.0"]);
    let status = tool.run(&["status", "--stack", "upg", "--json"]).ok().json();
    assert_eq!(status["verdict"]["state"], "healthy", "{status:#}");
    tool.run(&["down", "--stack", "upg", "--yes"]).ok();
}

#[tokio::test(flavor = "multi_thread")]
async fn backup_and_restore_bring_back_the_data_and_keep_the_old_file_system() {
    let emu = Emulator::start();
    let c = emu.clients();
    let tool = Tool::new(&emu.endpoint);
    tool.run(&up("bk", &["--wait"])).ok();
    let state = tool.state("bk").unwrap();
    let (old_fs, secret) = (id(&state, "file-system"), id(&state, "root-secret"));
    let repo = |fs: &str| emu.efs_dir(fs).join("srv/gitlab/data/git-data/repositories/team/app.git");
    std::fs::create_dir_all(repo(&old_fs)).unwrap();
    std::fs::write(repo(&old_fs).join("HEAD"), "v1").unwrap();

    // A consistent backup: GitLab stopped (the service at 0, its task stopped), then started.
    emu.clear_calls();
    let run = tool.run(&["backup", "--stack", "bk", "--yes"]).ok();
    assert!(run.stdout.contains("GitLab stopped for"), "{}", run.stdout);
    let scaled: Vec<Value> = emu.bodies("UpdateService").into_iter().map(|b| b["desiredCount"].clone()).collect();
    assert_eq!(scaled, vec![json!(0), json!(1)]);
    let list = tool.run(&["backup", "list", "--stack", "bk", "--json"]).ok().json();
    assert_eq!(list["schema"], "gitlab-provision.backups/1");
    let point = list["recovery_points"][0]["arn"].as_str().unwrap().to_string();
    assert!(list["recovery_points"][0]["bytes"].as_i64().unwrap() > 0, "{list:#}");

    // Online: no downtime.
    emu.clear_calls();
    tool.run(&["backup", "--stack", "bk", "--online"]).ok();
    assert!(emu.bodies("UpdateService").is_empty(), "an online backup stopped GitLab");

    // Work after the backup, then the restore of the first one.
    std::fs::write(repo(&old_fs).join("HEAD"), "v2").unwrap();
    let plan = tool.run(&["restore", "--stack", "bk", &point, "--plan"]).ok();
    assert!(
        plan.stdout.contains("file-system-previous-1") && plan.stdout.contains("nothing was changed"),
        "{}",
        plan.stdout
    );
    let run = tool.run(&["restore", "--stack", "bk", &point, "--yes"]).ok();
    assert!(run.stdout.contains("runs on it"), "{}", run.stdout);
    let state = tool.state("bk").unwrap();
    let new_fs = id(&state, "file-system");
    assert_ne!(new_fs, old_fs);
    assert_eq!(std::fs::read_to_string(repo(&new_fs).join("HEAD")).unwrap(), "v1", "the restored data is not in place");
    assert_eq!(state["resources"]["file-system-previous-1"]["id"], old_fs.as_str());
    assert_eq!(state["resources"]["file-system-previous-1"]["status"], "retained");
    assert_eq!(id(&state, "root-secret"), secret, "the root secret must be kept");
    assert!(state["notes"].get("journal").is_none_or(Value::is_null), "{state:#}");
    // GitLab runs on the restored file system: its task definition mounts it.
    let td = c.ecs.describe_task_definition().task_definition(id(&state, "task-definition")).send().await.unwrap();
    let volumes = td.task_definition().unwrap().volumes();
    assert!(volumes.iter().all(|v| v.efs_volume_configuration().unwrap().file_system_id() == new_fs), "{volumes:?}");
    let status = tool.run(&["status", "--stack", "bk", "--json"]).ok().json();
    assert_eq!(status["verdict"]["state"], "healthy", "{status:#}");
    assert!(c.efs.describe_file_systems().file_system_id(&old_fs).send().await.is_ok(), "the old file system is gone");
    // The backups taken before the restore are still listed, and still restorable (plan only).
    let list = tool.run(&["backup", "list", "--stack", "bk", "--json"]).ok().json();
    let before = list["recovery_points"].as_array().unwrap().iter().find(|p| p["arn"] == point.as_str()).cloned();
    assert!(before.is_some_and(|p| p["file_system"].as_str().unwrap().ends_with(&old_fs)), "{list:#}");
    tool.run(&["restore", "--stack", "bk", &point, "--plan"]).ok();
    // A recovery point of another file system is not this stack's to restore.
    let foreign = point.replace(&point[point.len() - 4..], "0000");
    let refused = tool.run(&["restore", "--stack", "bk", &foreign, "--yes"]).fails_with(2);
    assert!(refused.stderr.contains("is not a recovery point of this stack's file systems"), "{}", refused.stderr);

    // down removes the stack (the kept file system too) and says what stays: the recovery points.
    let down = tool.run(&["down", "--stack", "bk", "--yes"]).ok();
    assert!(down.stderr.contains("kept in AWS Backup") && down.stderr.contains("recovery-point:"), "{}", down.stderr);
    assert!(c.efs.describe_file_systems().file_system_id(&old_fs).send().await.is_err());
    let left = stack_leftovers(&c, "bk").await;
    assert_eq!(left, vec!["backup vault gitlab-provision-bk".to_string()], "the vault holds the recovery points");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_interrupted_backup_resumes_where_it_stopped() {
    let emu = Emulator::start();
    // A backup job of 2 hours at AWS's pace (15 s here): long enough to kill the tool mid-way.
    emu.set_control(json!({"backup_job": 7500}));
    let tool = Tool::new(&emu.endpoint);
    tool.run(&up("resume", &["--wait"])).ok();
    let mut child = tool
        .command(&["backup", "--stack", "resume", "--yes"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let job = loop {
        let state = tool.state("resume").unwrap();
        if let Some(job) = state["notes"]["journal"]["job"].as_str() {
            break job.to_string();
        }
        assert!(std::time::Instant::now() < deadline, "the backup job never started");
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    child.kill().unwrap();
    child.wait().unwrap();
    // Another operation is refused while it is half done.
    let run = tool
        .run(&["restore", "--stack", "resume", "arn:aws:backup:us-east-1:123456789012:recovery-point:X", "--yes"])
        .fails_with(2);
    assert!(run.stderr.contains("a backup of this stack is in progress"), "{}", run.stderr);
    // Running it again waits for the same job, then starts GitLab again.
    emu.set_control(json!({}));
    emu.clear_calls();
    let run = tool.run(&["backup", "--stack", "resume", "--yes"]).ok();
    assert!(emu.calls().iter().all(|c| c.action != "PUT /backup-jobs"), "a second job was started");
    assert!(run.stderr.contains(&job[..8]), "{}", run.stderr);
    let status = tool.run(&["status", "--stack", "resume", "--json"]).ok().json();
    assert_eq!(status["gitlab"]["desired"], 1, "{status:#}");
    tool.run(&["down", "--stack", "resume", "--yes"]).ok();
}

#[tokio::test(flavor = "multi_thread")]
async fn logs_and_exec_reach_the_running_gitlab() {
    let emu = Emulator::start();
    let tool = Tool::new(&emu.endpoint);
    tool.run(&up("ops", &["--wait"])).ok();

    // GitLab's own output, streams resolved by the tool.
    let logs = tool.run(&["logs", "--stack", "ops", "--since", "1h"]).ok();
    assert!(logs.stdout.contains("Thank you for using GitLab Docker Image!"), "{}", logs.stdout);
    assert!(logs.stdout.contains("gitlab Reconfigured!"), "{}", logs.stdout);
    let json_lines = tool.run(&["logs", "--stack", "ops", "--since", "1h", "--json"]).ok();
    for line in json_lines.stdout.lines() {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{line}: {e}"));
        assert!(
            v["timestamp"].is_string() && v["stream"].as_str().unwrap().contains("gitlab") && v["message"].is_string()
        );
    }
    tool.run(&["logs", "--stack", "ops", "--since", "soon"]).fails_with(2);

    // ECS Exec: the session goes to the Session Manager plugin exactly as the AWS CLI hands it.
    let bin = tool.dir.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let without = tool
        .command(&["exec", "--stack", "ops", "--", "gitlab-rake", "gitlab:check"])
        .env("PATH", &bin)
        .output()
        .unwrap();
    assert_eq!(without.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&without.stderr).contains("session-manager-plugin is not installed"));
    std::fs::create_dir_all(&bin).unwrap();
    let recorded = tool.dir.path().join("plugin-args.json");
    let plugin = bin.join("session-manager-plugin");
    std::fs::write(
        &plugin,
        format!(
            "#!/bin/sh\npython3 -c 'import json,sys; json.dump(sys.argv[1:], open(\"{}\", \"w\"))' \"$@\"\n",
            recorded.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&plugin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    let run = tool
        .command(&["exec", "--stack", "ops", "--", "gitlab-rails", "runner", "puts User.count"])
        .env("PATH", &path)
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let args: Vec<String> = serde_json::from_str(&std::fs::read_to_string(&recorded).unwrap()).unwrap();
    assert_eq!(args.len(), 6, "{args:?}");
    let session: Value = serde_json::from_str(&args[0]).unwrap();
    assert!(session["SessionId"].is_string() && session["StreamUrl"].is_string() && session["TokenValue"].is_string());
    assert_eq!((args[1].as_str(), args[2].as_str()), ("us-east-1", "StartSession"));
    let target: Value = serde_json::from_str(&args[4]).unwrap();
    assert!(target["Target"].as_str().unwrap().starts_with("ecs:ops_"), "{target}");
    let sent = emu.bodies("ExecuteCommand");
    assert_eq!(sent.last().unwrap()["command"], "gitlab-rails runner 'puts User.count'");
    assert_eq!(sent.last().unwrap()["container"], "gitlab");
    let shell = tool.command(&["shell", "--stack", "ops"]).env("PATH", &path).output().unwrap();
    assert!(shell.status.success(), "{}", String::from_utf8_lossy(&shell.stderr));
    assert_eq!(emu.bodies("ExecuteCommand").last().unwrap()["command"], "/bin/bash");
    tool.run(&["down", "--stack", "ops", "--yes"]).ok();
}
