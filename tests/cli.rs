//! Bad input is refused before any AWS call: exit 2, the key named with a fix, nothing written.

mod common;

use std::io::Read;
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::Tool;

/// An endpoint that counts connections: any request at all is a failure of the test.
fn counting_endpoint() -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            seen.fetch_add(1, Ordering::SeqCst);
            let mut buf = [0u8; 1024];
            let _ = (&stream).read(&mut buf);
        }
    });
    (url, count)
}

const OK_CIDR: &str = "allowed_cidrs = [\"203.0.113.0/24\"]\n";

#[test]
fn bad_configs_and_flags_are_refused_before_any_call() {
    let (endpoint, calls) = counting_endpoint();
    // (config file contents or None, extra flags, text the error must contain)
    let rows: Vec<(Option<&str>, Vec<&str>, &str)> = vec![
        (None, vec!["up"], "allowed_cidrs"),
        (Some("allowed_cidrs = []\n"), vec!["up"], "allowed_cidrs"),
        (Some("allowed_cidrs = \"10.0.0.0/8\"\n"), vec!["up"], "allowed_cidrs"),
        (Some("allowed_cidrs = [\"10.0.0.300/32\"]\n"), vec!["up"], "allowed_cidrs[0]"),
        (Some(OK_CIDR), vec!["up", "--allowed-cidr", "10.0.0.1/8"], "did you mean 10.0.0.0/8"),
        (Some("allowed_cidrs = [\"203.0.113.0/24\"]\nvpc_cdir = \"10.0.0.0/16\"\n"), vec!["up"], "vpc_cdir"),
        (Some("allowed_cidrs = [\"203.0.113.0/24\"\n"), vec!["up"], "not valid"),
        (Some("allowed_cidrs = [\"203.0.113.0/24\"]\ntask_cpu = \"2048\"\n"), vec!["up"], "task_cpu"),
        (Some(OK_CIDR), vec!["up", "--vpc-cidr", "10.0.0.0/8"], "vpc_cidr"),
        (Some(OK_CIDR), vec!["up", "--vpc-cidr", "10.0.0.0/27"], "vpc_cidr"),
        (Some(OK_CIDR), vec!["up", "--vpc-cidr", "ten"], "vpc_cidr"),
        (Some(OK_CIDR), vec!["up", "--stack", "Bad_Name"], "stack"),
        (Some(OK_CIDR), vec!["up", "--stack", "a-very-long-stack-name-that-is-over-32"], "stack"),
        (Some("stack = \"9lives\"\nallowed_cidrs = [\"203.0.113.0/24\"]\n"), vec!["up"], "stack"),
        (Some(OK_CIDR), vec!["up", "--region", "nowhere"], "region"),
        (Some(OK_CIDR), vec!["up", "--vpc-id", "vpc-12"], "vpc_id"),
        (Some(OK_CIDR), vec!["up", "--vpc-id", "vpc-0123456789abcdef0", "--vpc-cidr", "10.0.0.0/16"], "vpc_cidr"),
        (Some(OK_CIDR), vec!["up", "--domain-name", "example.com"], "hosted_zone_id"),
        (
            Some(OK_CIDR),
            vec!["up", "--domain-name", "example", "--sub-domain", "git", "--hosted-zone-id", "Z1"],
            "domain_name",
        ),
        (
            Some(OK_CIDR),
            vec!["up", "--domain-name", "example.com", "--sub-domain", "git", "--hosted-zone-id", "zone"],
            "hosted_zone_id",
        ),
        (Some(OK_CIDR), vec!["up", "--gitlab-root-email", "root"], "gitlab_root_email"),
        (Some(OK_CIDR), vec!["up", "--gitlab-image-tag", "latest"], "gitlab_image_tag"),
        (Some(OK_CIDR), vec!["up", "--task-cpu", "1000"], "task_cpu"),
        (Some(OK_CIDR), vec!["up", "--task-memory-mib", "100000"], "task_memory_mib"),
        (Some(OK_CIDR), vec!["up", "--task-cpu", "512", "--task-memory-mib", "2048"], "task_memory_mib"),
        (Some(OK_CIDR), vec!["up", "--task-cpu", "lots"], "--task-cpu"),
        (Some(OK_CIDR), vec!["up", "--no-such-flag"], "--no-such-flag"),
        (Some(OK_CIDR), vec!["up", "--config", "missing.toml"], "missing.toml"),
        (
            Some(OK_CIDR),
            vec!["up", "--timings", "no-such-dir/t.json"],
            "--timings no-such-dir/t.json: cannot write there",
        ),
        (Some(OK_CIDR), vec!["down", "--yes", "--timings", "no-such-dir/t.json"], "--timings no-such-dir/t.json"),
        (Some(OK_CIDR), vec!["plan", "--vpc-cidr", "10.0.0.0/8"], "vpc_cidr"),
        (Some(OK_CIDR), vec!["down", "--stack", "UPPER"], "stack"),
        (Some(OK_CIDR), vec!["status", "--stack=-x"], "stack"),
    ];
    assert!(rows.len() >= 30);
    for (config, flags, expected) in rows {
        let tool = Tool::new(&endpoint);
        if let Some(text) = config {
            tool.write("gitlab-provision.toml", text);
        }
        let run = tool.run(&flags);
        assert_eq!(run.code, Some(2), "{flags:?} with {config:?} should exit 2\nstderr: {}", run.stderr);
        assert!(
            run.stderr.contains(expected),
            "{flags:?} with {config:?}: error does not name {expected:?}:\n{}",
            run.stderr
        );
        assert!(!run.stderr.contains("panicked"), "{}", run.stderr);
        assert!(!tool.dir.path().join("state").exists(), "{flags:?}: state was written");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 0, "a bad input reached the endpoint");
}

#[test]
fn plan_for_a_new_stack_works_without_credentials_and_lists_every_step() {
    let (endpoint, calls) = counting_endpoint();
    let tool = Tool::new(&endpoint);
    tool.write("gitlab-provision.toml", OK_CIDR);
    // Without credentials it plans offline (with them it first looks for what `up` would find).
    let offline = [("AWS_ACCESS_KEY_ID", None), ("AWS_SECRET_ACCESS_KEY", None)];
    let run = tool.run_with(&["plan", "--json"], &offline).ok();
    assert!(run.stderr.contains("planned offline"), "{}", run.stderr);
    let plan = run.json();
    let steps: Vec<&str> = plan["steps"].as_array().unwrap().iter().map(|s| s["step"].as_str().unwrap()).collect();
    for step in [
        "vpc",
        "subnets",
        "internet-gateway",
        "route-table-public",
        "nat-security-group",
        "nat-instance",
        "route-table-private",
        "key",
        "network-acl-private",
    ] {
        assert!(steps.contains(&step), "{step} missing from {steps:?}");
    }
    assert!(
        plan["steps"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|s| s["resources"].as_array().unwrap())
            .all(|r| r["action"] == "create")
    );
    let total = plan["monthly_cost"]["total_usd_per_month"].as_f64().unwrap();
    assert!(total > 100.0 && total < 250.0, "{total}");
    let text = tool.run_with(&["plan"], &offline).ok();
    assert!(text.stdout.contains("nat-instance") && text.stdout.contains("create"), "{}", text.stdout);
    assert!(
        text.stdout.contains("estimated monthly cost")
            && text.stdout.contains("egress = \"public-ip\"")
            && text.stdout.contains("would save"),
        "{}",
        text.stdout
    );
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    assert!(!tool.dir.path().join("state").exists());
}

#[test]
fn status_json_of_an_unknown_stack_succeeds_without_calls() {
    let (endpoint, calls) = counting_endpoint();
    let tool = Tool::new(&endpoint);
    let status = tool.run(&["status", "--stack", "nothing", "--json"]).ok().json();
    assert_eq!(status["resources"].as_array().unwrap().len(), 0);
    assert_eq!(status["verdict"]["state"], "empty");
    assert_eq!(calls.load(Ordering::SeqCst), 0);
}
