//! Faults, crashes and mistakes: transient errors are absorbed, a killed run resumes without
//! twins, and the root password shows up nowhere but `password`.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{Clients, Emulator, Tool, count_tagged, stack_leftovers};
use serde_json::json;

// A NAT gateway (not the default NAT instance): its address and deleting state are what these
// tests put through faults, kills and discovery.
const UP: &[&str] = &["up", "--allowed-cidr", "203.0.113.0/24", "--egress", "nat-gateway"];

fn with_stack<'a>(args: &[&'a str], stack: &'a str) -> Vec<&'a str> {
    let mut v = args.to_vec();
    v.extend(["--stack", stack]);
    v
}

/// How many of each resource the stack has, across services: a twin shows up as a 2.
async fn inventory(c: &Clients, stack: &str) -> BTreeMap<String, usize> {
    let mut counts = count_tagged(&c.ec2, stack).await;
    for item in stack_leftovers(c, stack).await {
        let kind = item.split(' ').take(2).collect::<Vec<_>>().join(" ");
        if !["vpc", "subnet", "igw", "route", "eip", "nat", "sg", "instance"].iter().any(|k| kind.starts_with(k)) {
            *counts.entry(kind).or_insert(0) += 1;
        }
    }
    counts
}

/// `up` with GitLab's database on RDS (the local-state kill test runs it).
const UP_RDS: &[&str] = &["up", "--allowed-cidr", "203.0.113.0/24", "--egress", "nat-gateway", "--database", "rds"];

/// The inventory of a stack on RDS: its instance, subnet group and security group besides.
fn expected_rds_inventory() -> BTreeMap<String, usize> {
    let mut expected = expected_inventory();
    expected.insert("sg".into(), 5);
    expected.insert("database instance".into(), 1);
    expected.insert("DB subnet".into(), 1);
    expected
}

fn expected_inventory() -> BTreeMap<String, usize> {
    [
        ("vpc", 1),
        ("subnet", 4),
        ("igw", 1),
        ("route table", 2),
        ("eip", 1),
        ("nat", 1),
        ("sg", 4),
        ("network ACL", 2),
        ("KMS key", 1),
        ("KMS alias", 1),
        ("file system", 1),
        ("mount target", 2),
        ("load balancer", 1),
        ("target group", 1),
        ("cluster web", 1),
        ("role web-us-east-1-execution-role", 1),
        ("role web-us-east-1-task-role", 1),
        ("role web-us-east-1-init-role", 1),
        ("role web-us-east-1-backup-role", 1),
        // GitLab's, the exec sessions', the initializer's Lambda log group and Container Insights'.
        ("log group", 4),
        ("backup vault", 1),
        ("secret gitlab-provision/web/root", 1),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// Every resource once; task definition revisions may be several (each `up` that had to
/// register one adds a revision, which is how ECS works), the cluster is named after the stack.
fn without_revisions(mut counts: BTreeMap<String, usize>, stack: &str) -> BTreeMap<String, usize> {
    counts.retain(|k, _| !k.starts_with("task definition"));
    counts
        .into_iter()
        .map(|(k, v)| {
            (
                k.replace(&format!("cluster {stack}"), "cluster web")
                    .replace(&format!("role {stack}-"), "role web-")
                    .replace(&format!("/{stack}/"), "/web/"),
                v,
            )
        })
        .collect()
}

async fn storm(rules: serde_json::Value, label: &str) {
    let emu = Emulator::start();
    let c = emu.clients();
    let tool = Tool::new(&emu.endpoint);
    emu.set_faults(rules);
    let started = Instant::now();
    tool.run(&with_stack(UP, "web")).ok();
    tool.run(&["status", "--stack", "web", "--json"]).ok();
    let status = tool.run(&["status", "--stack", "web", "--json"]).ok().json();
    assert!(status["resources"].as_array().unwrap().iter().all(|r| r["live"] == "ok"), "{status:#}");
    assert_eq!(without_revisions(inventory(&c, "web").await, "web"), expected_inventory());
    tool.run(&["down", "--stack", "web", "--yes"]).ok();
    assert_eq!(stack_leftovers(&c, "web").await, Vec::<String>::new());
    let calls = emu.calls();
    let faults = calls.iter().filter(|c| c.fault).count();
    assert!(faults > 10, "the storm injected only {faults} faults");
    eprintln!(
        "{label}: up, status x2, down completed: {} calls, {faults} faults injected, {:.1}s",
        calls.len(),
        started.elapsed().as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_throttling_storm_is_absorbed() {
    storm(
        json!([{"action": "*", "status": 400, "code": "Throttling", "message": "Rate exceeded", "probability": 0.2}]),
        "throttling 20%",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn server_errors_and_dropped_connections_are_absorbed() {
    storm(
        json!([
            {"action": "*", "status": 503, "code": "ServiceUnavailable", "probability": 0.1},
            {"action": "*", "drop": true, "probability": 0.05}
        ]),
        "5xx 10% + dropped 5%",
    )
    .await;
}

/// Runs the tool until the emulator has seen `calls` requests, then SIGKILLs it.
fn kill_after(emu: &Emulator, tool: &Tool, args: &[&str], calls: usize) -> bool {
    emu.clear_calls();
    let mut child =
        tool.command(args).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            return false; // finished before the kill point
        }
        if emu.calls().len() >= calls {
            child.kill().unwrap(); // SIGKILL: no cleanup of any kind
            child.wait().unwrap();
            return true;
        }
        assert!(Instant::now() < deadline, "no progress");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A run killed with the state in S3 leaves its lock: the next run is refused, naming the lock,
/// until `unlock` removes it, as a team member would after checking the holder is dead.
fn unlock_after_a_kill(tool: &Tool, stack: &str) {
    if tool.state_url.is_none() {
        return;
    }
    // A request the killed run had sent still lands (the harness delays each call by 10 ms):
    // its lock may appear just after the kill, as it would on AWS.
    std::thread::sleep(Duration::from_millis(300));
    let listing = tool.run(&["list", "--json"]).ok().json();
    let held = listing["stacks"].as_array().into_iter().flatten().find(|s| s["stack"] == stack);
    let Some(id) = held.and_then(|s| s["locked_by"]["id"].as_str()) else { return };
    let refused = tool.run(&with_stack(UP, stack)).fails_with(2);
    assert!(refused.stderr.contains(&format!("gitlab-provision unlock {id} --stack {stack}")), "{}", refused.stderr);
    tool.run(&["unlock", id, "--stack", stack, "--yes"]).ok();
}

/// Kills `up` and `down` at calls spread over their whole run, then runs them again: nothing
/// is lost or created twice. The local-state run has GitLab's database on RDS (an instance that
/// takes minutes to create and to delete, and holds its network meanwhile).
async fn kill_anywhere(shared: bool) {
    let (up_args, expected) = if shared { (UP, expected_inventory()) } else { (UP_RDS, expected_rds_inventory()) };
    // AWS's durations x 1/2000: this test is about crash safety at any call, not about waits.
    let emu = Emulator::start_with(&["--time-scale", "0.0005"]);
    let c = emu.clients();
    let tool = if shared {
        Tool::new(&emu.endpoint).run(&["init", "--shared-state", "kill-states/team"]).ok();
        Tool::sharing(&emu.endpoint, "s3://kill-states/team")
    } else {
        Tool::new(&emu.endpoint)
    };
    // A little latency per call spreads the kill points over the whole run.
    emu.set_faults(json!([{"action": "*", "delay": 0.01}]));
    emu.clear_calls();
    tool.run(&with_stack(up_args, "web")).ok();
    let calls_per_up = emu.calls().len();
    emu.clear_calls();
    tool.run(&["down", "--stack", "web", "--yes"]).ok();
    let calls_per_down = emu.calls().len();
    // The shared run repeats the local one's proof at fewer points: what it adds is the lock.
    let (up_points, down_points) = if shared { (6, 3) } else { (12, 6) };

    let mut tried = 0;
    let mut clean = 0;
    for point in (3..calls_per_up).step_by((calls_per_up / up_points).max(1)) {
        let stack = format!("k{point}");
        if !kill_after(&emu, &tool, &with_stack(up_args, &stack), point) {
            continue;
        }
        tried += 1;
        unlock_after_a_kill(&tool, &stack);
        tool.run(&with_stack(up_args, &stack)).ok();
        let found = without_revisions(inventory(&c, &stack).await, &stack);
        assert_eq!(found, expected, "twins or gaps after killing up at call {point}");
        tool.run(&["down", "--stack", &stack, "--yes"]).ok();
        assert_eq!(
            stack_leftovers(&c, &stack).await,
            Vec::<String>::new(),
            "leftovers after killing up at call {point}"
        );
        clean += 1;
    }
    for point in (2..calls_per_down).step_by((calls_per_down / down_points).max(1)) {
        let stack = format!("d{point}");
        tool.run(&with_stack(up_args, &stack)).ok();
        if !kill_after(&emu, &tool, &["down", "--stack", &stack, "--yes"], point) {
            continue;
        }
        tried += 1;
        unlock_after_a_kill(&tool, &stack);
        let status = tool.run(&["status", "--stack", &stack, "--json"]).ok().json();
        assert!(status["resources"].as_array().is_some(), "the state stays readable after a kill");
        tool.run(&["down", "--stack", &stack, "--yes"]).ok();
        assert_eq!(
            stack_leftovers(&c, &stack).await,
            Vec::<String>::new(),
            "leftovers after killing down at call {point}"
        );
        clean += 1;
    }
    eprintln!(
        "kill points ({}): {tried} tried ({calls_per_up} calls per up, {calls_per_down} per down), {clean} ended clean",
        if shared { "state in S3" } else { "local state" }
    );
    assert!(tried >= up_points + down_points / 2, "only {tried} kill points were reached");
    assert_eq!(tried, clean);
}

#[tokio::test(flavor = "multi_thread")]
async fn killing_up_or_down_anywhere_loses_nothing_and_duplicates_nothing() {
    kill_anywhere(false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn killing_up_or_down_anywhere_with_the_state_in_s3_loses_nothing() {
    kill_anywhere(true).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_password_appears_only_where_asked_at_any_verbosity() {
    let emu = Emulator::start();
    let tool = Tool::new(&emu.endpoint);
    let mut outputs = Vec::new();
    let up = tool
        .command(&with_stack(&["up", "-vv", "--allowed-cidr", "203.0.113.0/24"], "web"))
        .env("RUST_LOG", "trace")
        .output()
        .unwrap();
    assert!(up.status.success(), "{}", String::from_utf8_lossy(&up.stderr));
    outputs.push((
        "up -vv with RUST_LOG=trace",
        String::from_utf8_lossy(&up.stdout).to_string() + &String::from_utf8_lossy(&up.stderr),
    ));
    for args in [
        vec!["status", "--stack", "web", "-vv"],
        vec!["status", "--stack", "web", "--json"],
        vec!["plan", "--stack", "web", "--allowed-cidr", "203.0.113.0/24", "-v"],
    ] {
        let run = tool.run(&args).ok();
        outputs.push(("status/plan", run.stdout + &run.stderr));
    }
    let password = tool.run(&["password", "--stack", "web"]).ok().stdout.trim().to_string();
    assert!(password.len() >= 20);
    outputs.push(("state file", std::fs::read_to_string(tool.state_path("web")).unwrap()));
    outputs
        .push(("state backup", std::fs::read_to_string(tool.state_path("web").with_extension("json.backup")).unwrap()));
    // The task definition carries a reference to the secret, never its value.
    let state = tool.state("web").unwrap();
    let td = emu
        .clients()
        .ecs
        .describe_task_definition()
        .task_definition(state["resources"]["task-definition"]["id"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    outputs.push(("task definition", format!("{:?}", td.task_definition)));
    let down = tool.command(&["down", "--stack", "web", "--yes", "-vv"]).env("RUST_LOG", "trace").output().unwrap();
    outputs.push(("down -vv", String::from_utf8_lossy(&down.stderr).to_string()));
    for (what, text) in outputs {
        assert!(!text.contains(&password), "the root password appears in {what}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn down_keep_data_keeps_repositories_and_password_for_the_next_up() {
    let emu = Emulator::start();
    let c = emu.clients();
    let tool = Tool::new(&emu.endpoint);
    tool.run(&with_stack(UP, "web")).ok();
    let before = tool.state("web").unwrap();
    let fs = before["resources"]["file-system"]["id"].as_str().unwrap().to_string();
    let secret = before["resources"]["root-secret"]["id"].as_str().unwrap().to_string();
    let password = tool.run(&["password", "--stack", "web"]).ok().stdout;

    let down = tool.run(&["down", "--stack", "web", "--yes", "--keep-data"]).ok();
    assert!(down.stdout.contains(&format!("kept file-system {fs}: --keep-data")), "{}", down.stdout);
    // The network, load balancer and service are gone; the data (and the vault for its
    // backups) is not.
    let left = stack_leftovers(&c, "web").await;
    // The key too: the secret and the logs are encrypted with it.
    assert_eq!(left.len(), 5, "{left:?}");
    assert!(
        left.iter().any(|l| l.starts_with("file system"))
            && left.iter().any(|l| l.starts_with("secret"))
            && left.iter().any(|l| l.starts_with("backup vault"))
            && left.iter().any(|l| l.starts_with("KMS key"))
            && left.iter().any(|l| l.starts_with("KMS alias")),
        "{left:?}"
    );
    let state = tool.state("web").expect("the state keeps the retained records");
    assert_eq!(state["resources"]["file-system"]["status"], "retained");
    let plan = tool
        .run(&with_stack(&["plan", "--json", "--allowed-cidr", "203.0.113.0/24", "--vpc-cidr", "10.9.0.0/16"], "web"))
        .ok()
        .json();
    // plan judges replacements as up does: with only data left, the network may change.
    assert_eq!(plan["refused"], json!([]), "{plan:#}");
    let fs_plan = plan["steps"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["resources"].as_array().unwrap().clone())
        .find(|r| r["key"] == "file-system")
        .unwrap();
    assert_eq!(fs_plan["action"], "attach");

    // The network may even be built differently now: only the data is kept.
    tool.run(&with_stack(&["up", "--allowed-cidr", "203.0.113.0/24", "--vpc-cidr", "10.9.0.0/16"], "web")).ok();
    let after = tool.state("web").unwrap();
    assert_eq!(after["resources"]["file-system"]["id"], fs.as_str(), "same file system: same repositories");
    assert_eq!(after["resources"]["root-secret"]["id"], secret.as_str());
    assert_eq!(after["resources"]["file-system"]["status"], "created");
    assert_eq!(tool.run(&["password", "--stack", "web"]).ok().stdout, password, "same root password");
    let mounts = c.efs.describe_mount_targets().file_system_id(&fs).send().await.unwrap();
    let subnets: BTreeMap<String, ()> = ["subnet-private-a", "subnet-private-b"]
        .iter()
        .map(|k| (after["resources"][*k]["id"].as_str().unwrap().to_string(), ()))
        .collect();
    assert!(
        mounts.mount_targets().iter().all(|m| subnets.contains_key(m.subnet_id())),
        "mount targets in the new subnets"
    );

    tool.run(&["down", "--stack", "web", "--yes"]).ok();
    assert_eq!(stack_leftovers(&c, "web").await, Vec::<String>::new());
    assert!(tool.state("web").is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lost_state_file_is_recoverable_by_discovery() {
    let emu = Emulator::start();
    let c = emu.clients();
    let tool = Tool::new(&emu.endpoint);
    tool.run(&with_stack(UP, "web")).ok();
    let recorded = tool.state("web").unwrap()["resources"].as_object().unwrap().len();
    std::fs::remove_file(tool.state_path("web")).unwrap();
    std::fs::remove_file(tool.state_path("web").with_extension("json.backup")).unwrap();

    let status = tool.run(&["status", "--stack", "web", "--discover", "--json"]).ok().json();
    let orphans = status["resources"].as_array().unwrap();
    assert!(orphans.iter().all(|r| r["live"] == "orphan" && r["recorded"].is_null()), "{status:#}");
    let keys: Vec<&str> = orphans.iter().map(|r| r["key"].as_str().unwrap()).collect();
    for key in [
        "vpc",
        "nat-gateway",
        "file-system",
        "root-secret",
        "load-balancer",
        "service",
        "execution-role",
        "task-definition",
    ] {
        assert!(keys.contains(&key), "{key} not discovered: {keys:?}");
    }
    // Mount targets, listeners, the access point and the marker are found through their owners;
    // the resource policies (secret, file system, vault) are their resources'.
    assert!(orphans.len() + 9 >= recorded, "{} found of {recorded}", orphans.len());

    // up would make twins: it refuses and says what to do.
    emu.clear_calls();
    let refused = tool.run(&with_stack(UP, "web")).fails_with(2);
    assert!(
        refused.stderr.contains("no state file") && refused.stderr.contains("down --discover"),
        "{}",
        refused.stderr
    );
    assert!(emu.calls().iter().all(|c| !c.mutating));

    tool.run(&["down", "--stack", "web", "--discover", "--yes"]).ok();
    assert_eq!(stack_leftovers(&c, "web").await, Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unrecorded_resource_of_the_stack_shows_as_an_orphan_and_down_discover_removes_it() {
    let emu = Emulator::start();
    let c = emu.clients();
    let tool = Tool::new(&emu.endpoint);
    tool.run(&with_stack(UP, "web")).ok();
    let vpc = tool.state("web").unwrap()["resources"]["vpc"]["id"].as_str().unwrap().to_string();
    // A twin security group, as a crash between create and record could leave.
    let tags = aws_sdk_ec2::types::TagSpecification::builder()
        .resource_type(aws_sdk_ec2::types::ResourceType::SecurityGroup)
        .tags(aws_sdk_ec2::types::Tag::builder().key("gitlab-provision:stack").value("web").build())
        .tags(aws_sdk_ec2::types::Tag::builder().key("gitlab-provision:resource").value("alb-security-group").build())
        .build();
    let twin = c
        .ec2
        .create_security_group()
        .group_name("twin")
        .description("twin")
        .vpc_id(&vpc)
        .tag_specifications(tags)
        .send()
        .await
        .unwrap();
    let twin = twin.group_id().unwrap().to_string();

    let status = tool.run(&["status", "--stack", "web", "--discover", "--json"]).ok().json();
    let orphans: Vec<&serde_json::Value> =
        status["resources"].as_array().unwrap().iter().filter(|r| r["live"] == "orphan").collect();
    assert_eq!(orphans.len(), 1, "{status:#}");
    assert_eq!(orphans[0]["id"], twin.as_str());
    assert_eq!(orphans[0]["key"], format!("alb-security-group~{twin}"));

    tool.run(&["down", "--stack", "web", "--discover", "--yes"]).ok();
    assert_eq!(stack_leftovers(&c, "web").await, Vec::<String>::new());
}
