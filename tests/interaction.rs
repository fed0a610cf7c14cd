//! What a user sees and what scripts read: output snapshots (exit status, stdout and stderr, with
//! ids and timings filtered out), JSON validated against schemas/, a terminal run through a
//! pseudo-terminal for progress and the confirmation prompt, interrupts.
//!
//! Snapshots live in tests/snapshots/; after a deliberate change of wording, review the new
//! ones with `INSTA_UPDATE=always cargo test --test interaction` and `git diff`.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::validate_json as validate;
use common::{CIDRS, Emulator, Run, Tool, python, up};
use serde_json::json;

/// `plan` of a change that replaces GitLab's task (a bigger size).
fn plan_bigger_task(stack: &str) -> Vec<&str> {
    [&["plan", "--stack", stack][..], &CIDRS, &["--task-cpu", "4096", "--task-memory-mib", "8192"]].concat()
}

/// Ids, addresses, timings and temporary paths vary from run to run; the words do not.
fn filters() -> Vec<(&'static str, &'static str)> {
    vec![
        (r"/tmp/\.tmp[A-Za-z0-9]+", "[dir]"),
        (r"\b(vpc|subnet|sg|igw|rtb|nat|eipalloc|eni|fsmt|fs|fsap|i)-[0-9a-f]{8,17}\b", "$1-[id]"),
        (r"\b[0-9a-f]{32}\b", "[task]"),
        (r"\b[0-9a-f]{16}\b", "[hex]"),
        (r"(secret:gitlab-provision/[a-z0-9-]+/root)-[A-Za-z0-9]{6}", "$1-[rand]"),
        (r"\b\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}\b(/\d+)?", "[ip$1]"),
        (r"\[\s*\d+\.\ds\]", "[t]"),
        (r"\b\d+\.\ds\b", "[d]s"),
        (r"\b\d+s\b", "[d]s"),
        (r"\b(19|20)\d\d-\d\d-\d\dT[0-9:.]+Z\b", "[time]"),
        // How far a failed run got depends on which concurrent steps were in flight.
        (r"\b\d+ steps? did not run", "[n] steps did not run"),
        (r"\(\d+ resources?\)", "([n] resources)"),
    ]
}

fn transcript(run: &Run) -> String {
    format!("exit: {:?}\n--- stdout\n{}--- stderr\n{}", run.code, run.stdout, run.stderr)
}

macro_rules! snapshot {
    ($name:expr, $text:expr) => {
        insta::with_settings!({ filters => filters(), prepend_module_to_snapshot => false }, {
            insta::assert_snapshot!($name, $text);
        })
    };
}

#[tokio::test(flavor = "multi_thread")]
async fn every_json_output_has_its_schema_and_one_fixed_shape() {
    let emu = Emulator::start();
    let tool = Tool::new(&emu.endpoint);
    let plan_new = tool.run(&["plan", "--stack", "js", "--allowed-cidr", "203.0.113.0/24", "--json"]).ok();
    validate("plan", &plan_new.stdout, false);
    let run = tool.run(&up("js", &["--json", "--wait"])).ok();
    validate("event", &run.stdout, true);
    let last: serde_json::Value = serde_json::from_str(run.stdout.lines().last().unwrap()).unwrap();
    assert_eq!(last["schema"], "gitlab-provision.up/1");
    validate("status", &tool.run(&["status", "--stack", "js", "--json"]).ok().stdout, false);
    let plan = tool.run(&[&plan_bigger_task("js")[..], &["--json"]].concat()).ok();
    validate("plan", &plan.stdout, false);
    validate("list", &tool.run(&["list", "--json"]).ok().stdout, false);
    tool.run(&["backup", "--stack", "js", "--online"]).ok();
    validate("backups", &tool.run(&["backup", "list", "--stack", "js", "--json"]).ok().stdout, false);
    validate("log", &tool.run(&["logs", "--stack", "js", "--since", "1h", "--json"]).ok().stdout, true);
    let down = tool.run(&["down", "--stack", "js", "--yes", "--json"]).ok();
    validate("event", &down.stdout, true);
    validate("status", &tool.run(&["status", "--stack", "js", "--json"]).ok().stdout, false);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failure_keeps_the_record_and_reads_cause_first() {
    let emu = Emulator::start();
    emu.set_faults(json!([{"action": "CreateLoadBalancer", "status": 400, "code": "TooManyLoadBalancers", "message": "The quota for load balancers has been reached"}]));
    let tool = Tool::new(&emu.endpoint);
    let run = tool.run(&up("fail", &[])).fails_with(1);
    // Finished steps stay on screen; the failed one says why; what did not run is a count.
    assert!(run.stderr.contains("vpc                      done in"), "{}", run.stderr);
    assert!(run.stderr.contains("not run (a step it needs failed)"), "{}", run.stderr);
    let block = &run.stderr[run.stderr.find("error:").expect("an error block")..];
    assert!(block.starts_with("error: step load-balancer failed:"), "{block}");
    assert_eq!(block.matches("help:").count(), 1, "{block}");
    snapshot!("failed_step_error_block", block);
    emu.set_faults(json!([]));
    tool.run(&up("fail", &[])).ok();
    tool.run(&["down", "--stack", "fail", "--yes"]).ok();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_converged_up_says_no_changes_and_plan_puts_changes_first() {
    let emu = Emulator::start();
    let tool = Tool::new(&emu.endpoint);
    tool.run(&up("calm", &[])).ok();
    let again = tool.run(&up("calm", &[])).ok();
    snapshot!("converged_up", transcript(&again));
    // --timings of a run that took no step is still a report, not an empty file.
    tool.run(&up("calm", &["--timings", "t.json"])).ok();
    let timings: serde_json::Value =
        serde_json::from_slice(&std::fs::read(tool.dir.path().join("t.json")).unwrap()).expect("valid JSON");
    assert_eq!(timings["timings"], json!([]));

    let change = plan_bigger_task("calm");
    let plan = tool.run(&change).ok();
    snapshot!("plan_with_a_change", transcript(&plan));
    // -detailed-exitcode as in Terraform: 0 no changes, 2 changes, 1 error.
    tool.run(&[&change[..], &["--detailed-exitcode"]].concat()).fails_with(2);
    tool.run(&["plan", "--stack", "calm", "--allowed-cidr", "203.0.113.0/24", "--detailed-exitcode"]).ok();
    tool.run(&["plan", "--stack", "calm", "--allowed-cidr", "not-a-cidr", "--detailed-exitcode"]).fails_with(1);
    // REFUSED is not a success.
    let refused = tool
        .run(&["plan", "--stack", "calm", "--allowed-cidr", "203.0.113.0/24", "--vpc-cidr", "10.9.0.0/16"])
        .fails_with(2);
    assert!(refused.stdout.contains("REFUSED"), "{}", refused.stdout);
    // Disruption without a terminal needs --yes.
    let asked =
        tool.run(&[&up("calm", &["--task-cpu", "4096", "--task-memory-mib", "8192"])[..]].concat()).fails_with(2);
    snapshot!("disruption_without_a_terminal", transcript(&asked));

    let status = tool.run(&["status", "--stack", "calm"]).ok();
    assert!(status.stdout.lines().next().unwrap().starts_with("GitLab "), "verdict first: {}", status.stdout);
    let widest = status.stdout.lines().map(|l| l.chars().count()).max().unwrap_or(0);
    assert!(widest <= 150, "rows {widest} columns wide:\n{}", status.stdout);
    let wide = tool.run(&["status", "--stack", "calm", "--wide"]).ok();
    assert!(
        wide.stdout.contains("arn:aws:elasticloadbalancing:us-east-1:123456789012:loadbalancer/app/calm/"),
        "{}",
        wide.stdout
    );
    tool.run(&["down", "--stack", "calm", "--yes"]).ok();
}

#[test]
fn discoverability_help_completions_init_and_did_you_mean() {
    let tool = Tool::new("http://127.0.0.1:9");
    snapshot!("help", tool.run(&["--help"]).ok().stdout);
    let up_help = tool.run(&["up", "--help"]).ok().stdout;
    for heading in ["Network:", "HTTPS:", "GitLab:", "Git over SSH:", "Global:", "Examples:"] {
        assert!(up_help.contains(heading), "{heading} missing:\n{up_help}");
    }
    for shell in ["bash", "zsh", "fish"] {
        let script = tool.run(&["completions", shell]).ok().stdout;
        assert!(script.contains("upgrade") && script.contains("restore") && script.contains("allowed-cidr"), "{shell}");
    }
    // A mistyped key in the file and a mistyped flag: named, with the likely fix.
    tool.write("gitlab-provision.toml", "alowed_cidrs = [\"203.0.113.0/24\"]\n");
    let run = tool.run(&["plan"]).fails_with(2);
    assert!(run.stderr.contains("did you mean `allowed_cidrs`"), "{}", run.stderr);
    let run = tool.run(&["plan", "--alowed-cidr", "203.0.113.0/24"]).fails_with(2);
    assert!(run.stderr.contains("--allowed-cidr"), "{}", run.stderr);
    std::fs::remove_file(tool.dir.path().join("gitlab-provision.toml")).unwrap();
    // init without a terminal: from flags; a commented file that the tool then accepts.
    let run = tool.run(&["init", "--allowed-cidr", "198.51.100.0/24"]).ok();
    let written = std::fs::read_to_string(tool.dir.path().join("gitlab-provision.toml")).unwrap();
    assert!(written.contains("allowed_cidrs = [\"198.51.100.0/24\"]") && written.contains("# "), "{written}");
    assert!(
        run.stderr.contains("gitlab-provision plan") || run.stdout.contains("gitlab-provision plan"),
        "next step named"
    );
    tool.run(&["init", "--allowed-cidr", "198.51.100.0/24"]).fails_with(2);
    assert!(written.contains("hardening = \"default\""), "{written}");
    // The egress written is the default one (a first trial found a NAT gateway written instead).
    assert!(written.contains("egress = \"nat-instance\""), "{written}");
    tool.run(&["plan"]).ok();
    // --strict writes the audited profile, which plan prices.
    tool.run(&["init", "--allowed-cidr", "198.51.100.0/24", "--strict", "--force"]).ok();
    let strict = tool.run(&["plan", "--json"]).json();
    assert!(strict["steps"].to_string().contains("web-acl"), "{strict:#}");
    tool.run(&["init", "--allowed-cidr", "198.51.100.0/24", "--force"]).ok();
    tool.run(&["plan"]).ok();
    // Hosted zone ids as the AWS CLI prints them; names with capitals and a trailing dot.
    let plan = tool
        .run(&[
            "plan",
            "--domain-name",
            "Example.COM.",
            "--sub-domain",
            "Git",
            "--hosted-zone-id",
            "/hostedzone/Z0123456789ABC",
            "--json",
        ])
        .ok()
        .json();
    let text = plan.to_string();
    assert!(
        text.contains("git.example.com") && text.contains("Z0123456789ABC") && !text.contains("/hostedzone/"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn colour_quiet_and_verbose_do_what_they_say() {
    let emu = Emulator::start();
    let tool = Tool::new(&emu.endpoint);
    let plain = tool.run(&["status", "--stack", "c"]).ok();
    assert!(!plain.stdout.contains('\u{1b}') && !plain.stderr.contains('\u{1b}'), "colour when piped");
    let always = tool.run(&["--color", "always", "plan", "--stack", "c", "--allowed-cidr", "203.0.113.0/24"]).ok();
    assert!(always.stdout.contains("\u{1b}["), "--color always gave no colour");
    let never = tool.run(&["--color", "never", "plan", "--stack", "c", "--allowed-cidr", "203.0.113.0/24"]).ok();
    assert!(!never.stdout.contains('\u{1b}'), "--color never gave colour");
    let quiet = tool.run(&up("c", &["-q"])).ok();
    assert!(!quiet.stderr.contains("done in"), "-q printed progress: {}", quiet.stderr);
    let verbose = tool.run(&["-v", "status", "--stack", "c"]).ok();
    assert!(
        verbose.stderr.contains("EC2 DescribeVpcs vpc-") && verbose.stderr.contains(" ms) ok"),
        "{}",
        verbose.stderr
    );
    assert!(!verbose.stderr.contains("aws_smithy"), "-v must not carry the SDK's own logs");
    let very = tool.run(&["-vv", "status", "--stack", "c"]).ok();
    assert!(very.stderr.len() > verbose.stderr.len(), "-vv adds nothing");
    tool.run(&["down", "--stack", "c", "--yes"]).ok();
}

#[tokio::test(flavor = "multi_thread")]
async fn ctrl_c_stops_scheduling_and_says_where_things_stand_and_a_second_exits_at_once() {
    let emu = Emulator::start();
    // Slow mount targets (1 hour at AWS's pace: 7 s here) so the run is mid-way when interrupted.
    emu.set_control(json!({"mount_target_creating": 3600}));
    let tool = Tool::new(&emu.endpoint);
    let log = tool.dir.path().join("up.log");
    let mut child = tool
        .command(&up("int", &[]))
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !std::fs::read_to_string(&log).unwrap_or_default().contains("waiting for mount target") {
        assert!(Instant::now() < deadline, "never got to the mount targets' wait");
        std::thread::sleep(Duration::from_millis(50));
    }
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let status = child.wait().unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(status.code(), Some(130), "{text}");
    assert!(text.contains("interrupted"), "{text}");
    assert!(text.contains("recorded: ") && text.contains("resources in state/int.json"), "{text}");
    assert!(!text.contains("mount-targets            done"), "the wait did not stop at Ctrl-C:\n{text}");
    assert!(text.contains("gitlab-provision up") && text.contains("gitlab-provision down"), "{text}");
    // Re-running resumes to a complete stack.
    emu.set_control(json!({}));
    tool.run(&up("int", &[])).ok();
    let status = tool.run(&["status", "--stack", "int", "--json"]).ok().json();
    assert!(status["resources"].as_array().unwrap().iter().all(|r| r["live"] == "ok"), "{status:#}");

    // A second Ctrl-C exits at once, the state still consistent.
    emu.set_control(json!({"mount_target_deleting": 3600}));
    let mut child = tool
        .command(&["down", "--stack", "int", "--yes"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    std::thread::sleep(Duration::from_millis(50));
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let started = Instant::now();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    assert!(started.elapsed() < Duration::from_secs(5), "the second Ctrl-C did not exit at once");
    emu.set_control(json!({}));
    tool.run(&["down", "--stack", "int", "--yes"]).ok();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lock_left_by_a_dead_run_is_a_plain_note() {
    let emu = Emulator::start();
    let tool = Tool::new(&emu.endpoint);
    std::fs::create_dir_all(tool.dir.path().join("state")).unwrap();
    std::fs::write(
        tool.dir.path().join("state/dead.lock"),
        r#"{"pid": 999999, "operation": "up", "since": "2026-11-28T10:00:00Z"}"#,
    )
    .unwrap();
    let run = tool.run(&up("dead", &[])).ok();
    assert!(run.stderr.contains("note:") && run.stderr.contains("999999"), "{}", run.stderr);
    assert!(!run.stderr.contains("WARN") && !run.stderr.contains('\u{1b}'), "{}", run.stderr);
    tool.run(&["down", "--stack", "dead", "--yes"]).ok();
}

/// Runs the tool in a pseudo-terminal (tests/harness/pty_run.py), answering `answer` when it
/// asks; returns the exit status and everything the terminal showed.
fn in_terminal(tool: &Tool, args: &[&str], answer: Option<&str>) -> (i32, String) {
    in_terminal_with(tool, args, answer, &[])
}

fn in_terminal_with(tool: &Tool, args: &[&str], answer: Option<&str>, env: &[(&str, &str)]) -> (i32, String) {
    let mut template = tool.command(args);
    template.envs(env.iter().copied());
    let mut command = Command::new(python());
    command.env_clear();
    for (name, value) in template.get_envs() {
        if let Some(value) = value {
            command.env(name, value);
        }
    }
    command.env("TERM", "xterm-256color").current_dir(tool.dir.path());
    command.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/harness/pty_run.py"));
    if let Some(answer) = answer {
        command.arg("--answer").arg(answer);
    }
    command.arg("--").arg(env!("CARGO_BIN_EXE_gitlab-provision")).args(args);
    let out = command.output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned())
}

#[tokio::test(flavor = "multi_thread")]
async fn on_a_terminal_progress_stays_and_disruption_is_asked_first() {
    let emu = Emulator::start();
    let tool = Tool::new(&emu.endpoint);
    let (code, screen) = in_terminal(&tool, &up("tty", &[]), None);
    assert_eq!(code, 0, "{screen}");
    assert!(screen.contains("\u{1b}["), "no colour or bars on a terminal");
    let kept = strip_ansi(&screen);
    assert!(kept.contains("✓ vpc") && kept.contains("✓ service"), "finished steps did not stay:\n{screen}");
    // A change that replaces GitLab's task: shown with its cost, asked; "n" changes nothing.
    let change = up("tty", &["--task-cpu", "4096", "--task-memory-mib", "8192"]);
    let (code, screen) = in_terminal(&tool, &change, Some("n"));
    let screen = strip_ansi(&screen);
    assert_eq!(code, 2, "{screen}");
    assert!(screen.contains("this change interrupts GitLab") && screen.contains("Apply it now? [y/N]"), "{screen}");
    assert!(screen.contains("cost: +$"), "{screen}");
    assert!(screen.contains("nothing was done"), "{screen}");
    let (code, screen) = in_terminal(&tool, &change, Some("y"));
    assert_eq!(code, 0, "{screen}");
    // NO_COLOR: a terminal, but no colours (progress may still redraw).
    let (code, screen) = in_terminal_with(&tool, &["status", "--stack", "tty"], None, &[("NO_COLOR", "1")]);
    assert_eq!(code, 0, "{screen}");
    assert!(
        !screen.contains("\u{1b}[32") && !screen.contains("\u{1b}[33") && !screen.contains("\u{1b}[31"),
        "NO_COLOR ignored: {screen:?}"
    );
    let (code, _) = in_terminal(&tool, &["down", "--stack", "tty"], Some("tty"));
    assert_eq!(code, 0);
}

/// The text a terminal shows once its escape sequences (colour, cursor moves) are taken out.
fn strip_ansi(screen: &str) -> String {
    let mut plain = String::with_capacity(screen.len());
    let mut chars = screen.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            chars.next();
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            plain.push(c);
        }
    }
    plain
}
