//! Safety: the tool touches only what is this stack's own, in its account and region, with the
//! credentials users really have; the state directory cannot be turned against the user.

mod common;

use common::{Emulator, Tool, id, stack_leftovers, up};

const OTHER_ACCOUNT: &str = "111111111111";

/// Credentials acting in another account: moto scopes resources by the account of an
/// `sts:AssumeRole` into it.
async fn other_account(c: &common::Clients) -> (String, String, String) {
    let out = c
        .sts
        .assume_role()
        .role_arn(format!("arn:aws:iam::{OTHER_ACCOUNT}:role/x"))
        .role_session_name("other")
        .send()
        .await
        .unwrap();
    let creds = out.credentials().unwrap();
    (creds.access_key_id().to_string(), creds.secret_access_key().to_string(), creds.session_token().to_string())
}

#[tokio::test(flavor = "multi_thread")]
async fn another_accounts_credentials_are_refused_before_anything_and_the_state_is_untouched() {
    let emu = Emulator::start();
    let c = emu.clients();
    let tool = Tool::new(&emu.endpoint);
    let run = tool.run(&up("acct", &[])).ok();
    assert!(run.stderr.contains("account 123456789012"), "up names the account: {}", run.stderr);
    let before = std::fs::read(tool.state_path("acct")).unwrap();
    assert_eq!(tool.state("acct").unwrap()["account"], "123456789012");

    let (key, secret, token) = other_account(&c).await;
    let env = [
        ("AWS_ACCESS_KEY_ID", Some(key.as_str())),
        ("AWS_SECRET_ACCESS_KEY", Some(secret.as_str())),
        ("AWS_SESSION_TOKEN", Some(token.as_str())),
    ];
    for command in [&["status", "--stack", "acct"][..], &["down", "--stack", "acct", "--yes"], &up("acct", &[])] {
        emu.clear_calls();
        let run = tool.run_with(command, &env).fails_with(2);
        assert!(run.stderr.contains("123456789012") && run.stderr.contains(OTHER_ACCOUNT), "{}", run.stderr);
        let calls: Vec<String> = emu.calls().into_iter().map(|c| c.action).collect();
        assert_eq!(calls, vec!["GetCallerIdentity".to_string()], "{command:?} called more than the identity check");
        assert_eq!(std::fs::read(tool.state_path("acct")).unwrap(), before, "{command:?} touched the state");
    }
    tool.run(&["down", "--stack", "acct", "--yes"]).ok();
    assert_eq!(stack_leftovers(&c, "acct").await, Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread")]
async fn when_most_resources_read_missing_down_stops_instead_of_forgetting_them() {
    // The state of a live stack pointed at an account (here: an emulator) that does not hold it.
    let emu = Emulator::start();
    let tool = Tool::new(&emu.endpoint);
    tool.run(&up("net", &[])).ok();
    let elsewhere = Emulator::start();
    let copy = Tool::new(&elsewhere.endpoint);
    std::fs::create_dir_all(copy.dir.path().join("state")).unwrap();
    std::fs::copy(tool.state_path("net"), copy.state_path("net")).unwrap();
    let before = std::fs::read(copy.state_path("net")).unwrap();
    let run = copy.run(&["down", "--stack", "net", "--yes"]).fails_with(2);
    assert!(run.stderr.contains("--forget-missing"), "{}", run.stderr);
    assert_eq!(std::fs::read(copy.state_path("net")).unwrap(), before, "records were forgotten");
    tool.run(&["down", "--stack", "net", "--yes"]).ok();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_same_stack_name_in_two_regions_coexists_and_neither_sees_the_others_roles() {
    let emu = Emulator::start();
    let c = emu.clients();
    let tool = Tool::new(&emu.endpoint);
    tool.run(&[&up("rg", &[])[..], &["--state-dir", "east"]].concat()).ok();
    tool.run(&[&up("rg", &["--region", "us-west-2"])[..], &["--state-dir", "west"]].concat()).ok();
    let roles: Vec<String> =
        c.iam.list_roles().send().await.unwrap().roles().iter().map(|r| r.role_name().to_string()).collect();
    for region in ["us-east-1", "us-west-2"] {
        assert!(roles.contains(&format!("rg-{region}-task-role")), "{roles:?}");
    }
    // Discovery in us-west-2 finds and deletes only us-west-2's.
    tool.run(&["down", "--stack", "rg", "--region", "us-west-2", "--state-dir", "west", "--discover", "--yes"]).ok();
    let roles: Vec<String> =
        c.iam.list_roles().send().await.unwrap().roles().iter().map(|r| r.role_name().to_string()).collect();
    assert!(roles.contains(&"rg-us-east-1-task-role".to_string()), "{roles:?}");
    assert!(!roles.iter().any(|r| r.contains("us-west-2")), "{roles:?}");
    let status = tool.run(&["status", "--stack", "rg", "--state-dir", "east", "--json"]).ok().json();
    assert!(status["resources"].as_array().unwrap().iter().all(|r| r["live"] == "ok"), "{status:#}");
    tool.run(&["down", "--stack", "rg", "--state-dir", "east", "--yes"]).ok();
}

#[tokio::test(flavor = "multi_thread")]
async fn another_teams_untagged_resources_with_the_stacks_names_are_never_its_own() {
    let emu = Emulator::start();
    let c = emu.clients();
    // Another team's load balancer, cluster and admin role, named as stack fx's would be.
    let (_, subnets) = common::existing_vpc(&c.ec2, false).await;
    c.elb.create_load_balancer().name("fx").set_subnets(Some(subnets[..2].to_vec())).send().await.unwrap();
    c.ecs.create_cluster().cluster_name("fx").send().await.unwrap();
    let trust = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"Service":"ecs-tasks.amazonaws.com"},"Action":"sts:AssumeRole"}]}"#;
    for role in ["fx-us-east-1-task-role", "fx-task-role"] {
        c.iam.create_role().role_name(role).assume_role_policy_document(trust).send().await.unwrap();
        c.iam
            .attach_role_policy()
            .role_name(role)
            .policy_arn("arn:aws:iam::aws:policy/AdministratorAccess")
            .send()
            .await
            .unwrap();
    }
    let tool = Tool::new(&emu.endpoint);

    emu.clear_calls();
    let run = tool.run(&up("fx", &[])).fails_with(2);
    assert!(
        run.stderr.contains("not this stack's") && run.stderr.contains("choose another stack name"),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("down --discover"), "the help must not recommend deleting them: {}", run.stderr);
    assert!(emu.calls().iter().all(|c| !c.mutating || c.action == "GetCallerIdentity"), "{:?}", emu.calls());

    let status = tool.run(&["status", "--stack", "fx", "--discover", "--json"]).json();
    // The cluster, the load balancer and the role the stack would use; not the legacy-named
    // role (a new stack never uses that name).
    assert_eq!(status["conflicts"].as_array().map(Vec::len), Some(3), "{status:#}");
    assert!(status["resources"].as_array().unwrap().iter().all(|r| r["live"] != "orphan"), "{status:#}");

    tool.run(&["down", "--stack", "fx", "--discover", "--yes"]).ok();
    assert_eq!(c.elb.describe_load_balancers().names("fx").send().await.unwrap().load_balancers().len(), 1);
    assert_eq!(c.ecs.describe_clusters().clusters("fx").send().await.unwrap().clusters()[0].status(), Some("ACTIVE"));
    for role in ["fx-us-east-1-task-role", "fx-task-role"] {
        let attached = c.iam.list_attached_role_policies().role_name(role).send().await.unwrap();
        assert_eq!(attached.attached_policies().len(), 1, "{role} lost its policy");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_state_pointing_at_resources_that_are_not_the_stacks_changes_nothing_of_them() {
    // A state copied from stack sa, used as stack sb's: up of sb must not touch sa's groups.
    let emu = Emulator::start();
    let c = emu.clients();
    let tool = Tool::new(&emu.endpoint);
    tool.run(&up("sa", &[])).ok();
    let mut state = tool.state("sa").unwrap();
    state["stack"] = "sb".into();
    std::fs::write(tool.state_path("sb"), state.to_string()).unwrap();
    let sa_group = id(&tool.state("sa").unwrap(), "alb-security-group");
    let before = c.ec2.describe_security_groups().group_ids(&sa_group).send().await.unwrap();
    emu.clear_calls();
    let run = tool.run(&up("sb", &["--allowed-cidr", "198.51.100.0/24"])).fails_with(2);
    assert!(run.stderr.contains("not this stack's"), "{}", run.stderr);
    assert!(emu.calls().iter().all(|c| !c.mutating || c.action == "GetCallerIdentity"), "{:?}", emu.calls());
    let after = c.ec2.describe_security_groups().group_ids(&sa_group).send().await.unwrap();
    assert_eq!(format!("{:?}", before.security_groups()), format!("{:?}", after.security_groups()));
    let down = tool.run(&["down", "--stack", "sb", "--yes"]);
    assert!(down.stderr.contains("left alone") || down.stderr.contains("not this stack's"), "{}", down.stderr);
    assert!(c.ec2.describe_security_groups().group_ids(&sa_group).send().await.is_ok(), "sa's group was deleted");
    tool.run(&["down", "--stack", "sa", "--yes"]).ok();
}

#[tokio::test(flavor = "multi_thread")]
async fn profiles_work_as_in_the_aws_cli() {
    let emu = Emulator::start();
    let c = emu.clients();
    let tool = Tool::new(&emu.endpoint);
    let script = tool.dir.path().join("creds.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\necho '{\"Version\": 1, \"AccessKeyId\": \"test\", \"SecretAccessKey\": \"test\"}'\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    tool.write(
        "aws-config",
        &format!(
            "[profile cp]\ncredential_process = {}\nregion = us-east-1\n\n[profile sso]\nsso_session = corp\nsso_account_id = 123456789012\nsso_role_name = Admin\nregion = us-east-1\n\n[sso-session corp]\nsso_start_url = https://example.awsapps.com/start\nsso_region = us-east-1\n\n[profile web]\nlogin_session = arn:aws:iam::123456789012:user/Admin\nregion = us-east-1\n",
            script.display()
        ),
    );
    let no_env_creds = [("AWS_ACCESS_KEY_ID", None), ("AWS_SECRET_ACCESS_KEY", None)];
    // credential_process, with nothing in the environment.
    let run = tool.run_with(&["status", "--stack", "p", "--profile", "cp"], &no_env_creds).ok();
    assert!(run.stdout.contains("nothing recorded"), "{}", run.stdout);
    // --profile wins over another account's keys in the environment, as in the AWS CLI.
    let (key, secret, token) = other_account(&c).await;
    let other = [
        ("AWS_ACCESS_KEY_ID", Some(key.as_str())),
        ("AWS_SECRET_ACCESS_KEY", Some(secret.as_str())),
        ("AWS_SESSION_TOKEN", Some(token.as_str())),
    ];
    let run = tool.run_with(&[&up("p", &[])[..], &["--profile", "cp"]].concat(), &other).ok();
    assert!(run.stderr.contains("account 123456789012"), "{}", run.stderr);
    // An SSO profile without a cached token: the log-in hint, not a missing feature.
    let run = tool.run_with(&["status", "--stack", "p", "--profile", "sso"], &no_env_creds).fails_with(2);
    assert!(run.stderr.contains("aws sso login --profile sso"), "{}", run.stderr);
    assert!(!run.stderr.contains("feature"), "{}", run.stderr);
    // `aws login` (console credentials): likewise the friendly error, not a missing feature.
    let run = tool.run_with(&["status", "--stack", "p", "--profile", "web"], &no_env_creds).fails_with(2);
    assert!(run.stderr.contains("aws login --profile web") && !run.stderr.contains("feature"), "{}", run.stderr);
    // An unknown profile lists the ones that exist.
    let run = tool.run(&["status", "--stack", "p", "--profile", "nope"]).fails_with(2);
    assert!(run.stderr.contains("cp") && run.stderr.contains("sso"), "{}", run.stderr);
    // No credentials at all: one error, exit 2, what was tried and the fixes; no SDK noise.
    let run = tool.run_with(&["status", "--stack", "p"], &no_env_creds).fails_with(2);
    assert!(run.stderr.contains("aws configure") && run.stderr.contains("AWS_ACCESS_KEY_ID"), "{}", run.stderr);
    assert!(!run.stderr.contains("WARN"), "{}", run.stderr);
    tool.run_with(&["down", "--stack", "p", "--yes", "--profile", "cp"], &no_env_creds).ok();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_state_directory_cannot_be_turned_against_the_user() {
    let emu = Emulator::start();
    let tool = Tool::new(&emu.endpoint);
    let state = tool.dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    // A lock that is a symlink to a file of the user's: refused, the file untouched.
    let precious = tool.dir.path().join("precious.txt");
    std::fs::write(&precious, "keep me").unwrap();
    std::os::unix::fs::symlink(&precious, state.join("sym.lock")).unwrap();
    let run = tool.run(&up("sym", &[])).fails_with(2);
    assert!(run.stderr.contains("symlink") || run.stderr.contains("not a regular file"), "{}", run.stderr);
    assert_eq!(std::fs::read_to_string(&precious).unwrap(), "keep me");
    // A FIFO where the state file goes: refused at once, no hang.
    let fifo = state.join("pipe.json");
    assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let started = std::time::Instant::now();
    let run = tool.run(&["status", "--stack", "pipe"]).fails_with(2);
    assert!(started.elapsed() < std::time::Duration::from_secs(20), "it hung on the FIFO");
    assert!(run.stderr.contains("not a regular file"), "{}", run.stderr);
    // A fresh state directory is private.
    tool.run(&[&up("priv", &[])[..], &["--state-dir", "private"]].concat()).ok();
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&tool.dir.path().join("private")), 0o700);
    assert_eq!(mode(&tool.dir.path().join("private/priv.json")), 0o600);
    tool.run(&["down", "--stack", "priv", "--state-dir", "private", "--yes"]).ok();
}

#[tokio::test(flavor = "multi_thread")]
async fn ipv6_and_prefix_list_rules_added_by_hand_are_shown_and_removed() {
    let emu = Emulator::start();
    let c = emu.clients();
    let tool = Tool::new(&emu.endpoint);
    tool.run(&up("drift", &[])).ok();
    let group = id(&tool.state("drift").unwrap(), "alb-security-group");
    let list = c
        .ec2
        .create_managed_prefix_list()
        .prefix_list_name("office")
        .address_family("IPv4")
        .max_entries(5)
        .send()
        .await
        .unwrap()
        .prefix_list()
        .unwrap()
        .prefix_list_id()
        .unwrap()
        .to_string();
    let permission = aws_sdk_ec2::types::IpPermission::builder()
        .ip_protocol("tcp")
        .from_port(80)
        .to_port(80)
        .ipv6_ranges(aws_sdk_ec2::types::Ipv6Range::builder().cidr_ipv6("::/0").build())
        .prefix_list_ids(aws_sdk_ec2::types::PrefixListId::builder().prefix_list_id(&list).build())
        .build();
    c.ec2.authorize_security_group_ingress().group_id(&group).ip_permissions(permission).send().await.unwrap();
    let status = tool.run(&["status", "--stack", "drift", "--json"]).json();
    let row =
        status["resources"].as_array().unwrap().iter().find(|r| r["key"] == "alb-security-group").unwrap().clone();
    assert_eq!(row["live"], "changed", "{row:#}");
    let detail = row["detail"].as_str().unwrap();
    assert!(detail.contains("::/0") && detail.contains(&list), "{detail}");
    tool.run(&up("drift", &["--yes"])).ok();
    let live = c.ec2.describe_security_groups().group_ids(&group).send().await.unwrap();
    for p in live.security_groups()[0].ip_permissions() {
        assert!(p.ipv6_ranges().is_empty() && p.prefix_list_ids().is_empty(), "{p:?}");
    }
    tool.run(&["down", "--stack", "drift", "--yes"]).ok();
}

#[test]
fn exposure_is_said_out_loud_and_carried_in_plan_json() {
    let tool = Tool::new("http://127.0.0.1:9");
    let plan = tool.run(&["plan", "--stack", "open", "--allowed-cidr", "0.0.0.0/0", "--json"]).ok().json();
    let warnings: Vec<String> =
        plan["warnings"].as_array().unwrap().iter().map(|w| w.as_str().unwrap().to_string()).collect();
    assert!(warnings.iter().any(|w| w.contains("0.0.0.0/0") && w.contains("whole internet")), "{warnings:?}");
    assert!(warnings.iter().any(|w| w.contains("plain HTTP") && w.contains("domain_name")), "{warnings:?}");
    let run = tool.run(&["plan", "--stack", "open", "--allowed-cidr", "0.0.0.0/0"]).ok();
    assert!(
        run.stdout.contains("warning: allowed_cidrs 0.0.0.0/0 opens GitLab to the whole internet"),
        "{}",
        run.stdout
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn trust_policies_name_the_account_where_the_service_sends_it_and_the_password_hint_names_the_state_directory() {
    let emu = Emulator::start();
    let c = emu.clients();
    let tool = Tool::new(&emu.endpoint);
    let run = tool.run(&[&up("tr", &[])[..], &["--state-dir", "elsewhere"]].concat()).ok();
    assert!(run.stdout.contains("gitlab-provision password --stack tr --state-dir elsewhere"), "{}", run.stdout);
    for role in
        ["tr-us-east-1-task-role", "tr-us-east-1-execution-role", "tr-us-east-1-backup-role", "tr-us-east-1-init-role"]
    {
        let doc = c
            .iam
            .get_role()
            .role_name(role)
            .send()
            .await
            .unwrap()
            .role()
            .unwrap()
            .assume_role_policy_document()
            .unwrap_or_default()
            .to_string();
        let doc = common::url_decode(&doc);
        if role.ends_with("backup-role") {
            // AWS Backup is trusted as AWS's own default role trusts it: it documents no
            // confused-deputy keys for assuming its service role.
            assert!(doc.contains("backup.amazonaws.com") && !doc.contains("Condition"), "{role}: {doc}");
        } else {
            assert!(doc.contains("aws:SourceAccount") && doc.contains("123456789012"), "{role}: {doc}");
        }
    }
    tool.run(&["down", "--stack", "tr", "--state-dir", "elsewhere", "--yes"]).ok();
}
