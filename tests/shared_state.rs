//! A team runs one GitLab: the state in an S3 bucket, written compare-and-swap, locked with an
//! object created only where none exists, every earlier version kept. Everything is read back
//! through S3's API, as AWS would show it.

mod common;

use std::time::{Duration, Instant};

use aws_sdk_s3::types::{BucketVersioningStatus, PublicAccessBlockConfiguration};
use common::{Emulator, Tool, up, validate_json};
use serde_json::{Value, json};

/// The stored state of a stack, or None.
async fn stored(s3: &aws_sdk_s3::Client, bucket: &str, key: &str) -> Option<Value> {
    let out = s3.get_object().bucket(bucket).key(key).send().await.ok()?;
    let bytes = out.body.collect().await.ok()?.into_bytes();
    Some(serde_json::from_slice(&bytes).expect("the stored state is JSON"))
}

async fn exists(s3: &aws_sdk_s3::Client, bucket: &str, key: &str) -> bool {
    s3.head_object().bucket(bucket).key(key).send().await.is_ok()
}

/// The stack's VPCs, as EC2 shows them by the stack's tag.
async fn vpcs(ec2: &aws_sdk_ec2::Client, stack: &str) -> Vec<String> {
    let filter = aws_sdk_ec2::types::Filter::builder().name("tag:gitlab-provision:stack").values(stack).build();
    let out = ec2.describe_vpcs().filters(filter).send().await.unwrap();
    out.vpcs().iter().filter_map(|v| v.vpc_id().map(str::to_string)).collect()
}

/// Waits (in real time: the runs are real processes) until `ready` holds.
async fn until<F: std::future::Future<Output = bool>>(what: &str, mut ready: impl FnMut() -> F) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ready().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn init_makes_a_bucket_fit_for_states_and_refuses_one_that_is_not() {
    let emu = Emulator::start();
    let s3 = emu.aws_clients().s3;
    let tool = Tool::new(&emu.endpoint);
    let made = tool.run(&["init", "--shared-state", "acme-states/gitlab"]).ok();
    assert!(made.stdout.contains("created bucket acme-states"), "{}", made.stdout);
    assert!(made.stdout.contains(r#"state = "s3://acme-states/gitlab""#), "{}", made.stdout);
    let versioning = s3.get_bucket_versioning().bucket("acme-states").send().await.unwrap();
    assert_eq!(versioning.status(), Some(&BucketVersioningStatus::Enabled));
    let block = s3.get_public_access_block().bucket("acme-states").send().await.unwrap();
    let block = block.public_access_block_configuration().unwrap();
    assert_eq!(
        [
            block.block_public_acls(),
            block.ignore_public_acls(),
            block.block_public_policy(),
            block.restrict_public_buckets()
        ],
        [Some(true); 4]
    );
    let encryption = s3.get_bucket_encryption().bucket("acme-states").send().await.unwrap();
    assert_eq!(encryption.server_side_encryption_configuration().map(|c| c.rules().len()), Some(1));
    let policy: Value =
        serde_json::from_str(s3.get_bucket_policy().bucket("acme-states").send().await.unwrap().policy().unwrap())
            .unwrap();
    assert_eq!(policy["Statement"][0]["Effect"], "Deny");
    assert_eq!(policy["Statement"][0]["Condition"]["Bool"]["aws:SecureTransport"], "false");
    let tags = s3.get_bucket_tagging().bucket("acme-states").send().await.unwrap();
    assert!(tags.tag_set().iter().any(|t| t.key() == "gitlab-provision:purpose" && t.value() == "shared-state"));
    // Again: checked and adopted, nothing changed.
    let again = tool.run(&["init", "--shared-state", "acme-states"]).ok();
    assert!(again.stdout.contains("checked and adopted"), "{}", again.stdout);

    // A bucket without versioning, and one open to the public: refused, each setting named, untouched.
    s3.create_bucket().bucket("plain-bucket").send().await.unwrap();
    let refused = tool.run(&["init", "--shared-state", "plain-bucket"]).fails_with(2);
    assert!(refused.stderr.contains("versioning is not enabled"), "{}", refused.stderr);
    assert!(refused.stderr.contains("public access is not blocked"), "{}", refused.stderr);
    assert!(refused.stderr.contains("help:"), "{}", refused.stderr);
    let versioning = s3.get_bucket_versioning().bucket("plain-bucket").send().await.unwrap();
    assert_eq!(versioning.status(), None, "a refused bucket is left as it was");
    // A bucket of someone else's with everything but the public access block: refused for that.
    s3.create_bucket().bucket("open-bucket").send().await.unwrap();
    let versioning =
        aws_sdk_s3::types::VersioningConfiguration::builder().status(BucketVersioningStatus::Enabled).build();
    s3.put_bucket_versioning().bucket("open-bucket").versioning_configuration(versioning).send().await.unwrap();
    let tls_only = policy.to_string().replace("acme-states", "open-bucket");
    s3.put_bucket_policy().bucket("open-bucket").policy(tls_only).send().await.unwrap();
    let by_default = aws_sdk_s3::types::ServerSideEncryptionByDefault::builder()
        .sse_algorithm(aws_sdk_s3::types::ServerSideEncryption::Aes256)
        .build()
        .unwrap();
    let rule = aws_sdk_s3::types::ServerSideEncryptionRule::builder()
        .apply_server_side_encryption_by_default(by_default)
        .build();
    let encryption = aws_sdk_s3::types::ServerSideEncryptionConfiguration::builder().rules(rule).build().unwrap();
    s3.put_bucket_encryption()
        .bucket("open-bucket")
        .server_side_encryption_configuration(encryption)
        .send()
        .await
        .unwrap();
    let refused = tool.run(&["init", "--shared-state", "open-bucket"]).fails_with(2);
    assert!(refused.stderr.contains("public access is not blocked"), "{}", refused.stderr);
    assert!(!refused.stderr.contains("versioning"), "only what is missing is named: {}", refused.stderr);
    // Its own bucket, opened by someone since: closed again, and said so.
    let open = PublicAccessBlockConfiguration::builder()
        .block_public_acls(false)
        .ignore_public_acls(false)
        .block_public_policy(false)
        .restrict_public_buckets(false)
        .build();
    s3.put_public_access_block().bucket("acme-states").public_access_block_configuration(open).send().await.unwrap();
    let repaired = tool.run(&["init", "--shared-state", "acme-states"]).ok();
    assert!(repaired.stdout.contains("repaired (public access is not blocked"), "{}", repaired.stdout);
    let block = s3.get_public_access_block().bucket("acme-states").send().await.unwrap();
    assert_eq!(block.public_access_block_configuration().and_then(|c| c.restrict_public_buckets()), Some(true));

    // The bucket in another region than the stack: found by S3's answer, the stack stays in its own.
    tool.run(&["init", "--shared-state", "eu-states", "--region", "eu-west-1"]).ok();
    let location = s3.get_bucket_location().bucket("eu-states").send().await.unwrap();
    assert_eq!(location.location_constraint().map(|l| l.as_str()), Some("eu-west-1"));
    let team = Tool::sharing(&emu.endpoint, "s3://eu-states");
    team.run(&up("far", &[])).ok();
    let state = stored(&s3, "eu-states", "far.json").await.expect("the state is in the bucket");
    assert_eq!(state["region"], "us-east-1");
    assert_eq!(vpcs(&emu.clients().ec2, "far").await.len(), 1);
    assert!(!team.dir.path().join("state").exists(), "nothing is written locally");
    team.run(&["down", "--yes", "--stack", "far"]).ok();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_run_is_refused_with_the_holder_and_a_state_changed_underneath_stops_the_run() {
    let emu = Emulator::start();
    let s3 = emu.aws_clients().s3;
    let ec2 = emu.clients().ec2;
    Tool::new(&emu.endpoint).run(&["init", "--shared-state", "team-states/prod"]).ok();
    let alice = Tool::sharing(&emu.endpoint, "s3://team-states/prod");
    let bob = Tool::sharing(&emu.endpoint, "s3://team-states/prod");
    // Slow calls: alice's run lasts long enough for bob to try.
    emu.set_faults(json!([{"action": "*", "delay": 0.03}]));
    let mut first = alice.command(&up("shared", &[])).stdout(std::process::Stdio::null()).spawn().unwrap();
    until("alice's lock", || exists(&s3, "team-states", "prod/shared.lock")).await;
    let refused = bob.run(&up("shared", &[])).fails_with(2);
    assert!(refused.stderr.contains("is locked by"), "{}", refused.stderr);
    assert!(refused.stderr.contains(&format!("process {}", first.id())), "the holder is named: {}", refused.stderr);
    assert!(refused.stderr.contains("gitlab-provision unlock "), "{}", refused.stderr);
    assert!(first.wait().unwrap().success());
    assert!(!exists(&s3, "team-states", "prod/shared.lock").await, "the lock is removed when the run ends");
    emu.set_faults(json!([]));
    // Bob's run converges what alice made: nothing twice.
    let serial = stored(&s3, "team-states", "prod/shared.json").await.unwrap()["serial"].as_u64().unwrap();
    bob.run(&up("shared", &[])).ok();
    assert_eq!(vpcs(&ec2, "shared").await.len(), 1);
    assert!(!bob.dir.path().join("state").exists());
    assert_eq!(stored(&s3, "team-states", "prod/shared.json").await.unwrap()["serial"].as_u64(), Some(serial));

    // Someone writes the state while alice's run holds it (a lock removed by mistake): alice's
    // next write is refused, the run stops, what it recorded is kept beside it, theirs stays.
    emu.set_faults(json!([{"action": "*", "delay": 0.03}]));
    let second = alice.command(&up("other", &[])).stderr(std::process::Stdio::piped()).spawn().unwrap();
    until("a few records", || async {
        stored(&s3, "team-states", "prod/other.json")
            .await
            .is_some_and(|s| s["resources"].as_object().is_some_and(|r| r.len() >= 3))
    })
    .await;
    let mut theirs = stored(&s3, "team-states", "prod/other.json").await.unwrap();
    theirs["serial"] = json!(1000);
    theirs["notes"]["written-by"] = json!("someone else");
    s3.put_object()
        .bucket("team-states")
        .key("prod/other.json")
        .body(serde_json::to_vec(&theirs).unwrap().into())
        .send()
        .await
        .unwrap();
    let output = second.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("was changed by someone else"), "{stderr}");
    assert!(stderr.contains("the stored state is now serial 1000"), "{stderr}");
    assert!(stderr.contains("other.unsaved.json"), "{stderr}");
    let kept = stored(&s3, "team-states", "prod/other.json").await.unwrap();
    assert_eq!((kept["serial"].as_u64(), kept["notes"]["written-by"].as_str()), (Some(1000), Some("someone else")));
    let rescued: Value =
        serde_json::from_str(&std::fs::read_to_string(alice.dir.path().join("other.unsaved.json")).unwrap()).unwrap();
    let vpc = vpcs(&ec2, "other").await;
    assert_eq!(vpc.len(), 1);
    assert_eq!(rescued["resources"]["vpc"]["id"].as_str(), Some(vpc[0].as_str()), "nothing alice made is lost");
    let rescued_keys = rescued["resources"].as_object().unwrap();
    assert!(theirs["resources"].as_object().unwrap().keys().all(|k| rescued_keys.contains_key(k)), "{rescued_keys:?}");
    assert_ne!(rescued["resources"], theirs["resources"], "the refused write's change is in the rescue file");
    assert!(!exists(&s3, "team-states", "prod/other.lock").await, "the stopped run still releases its lock");
    // Settled: the next run adopts what the stopped one made, by its tags; nothing twice.
    emu.set_faults(json!([]));
    alice.run(&up("other", &[])).ok();
    assert_eq!(vpcs(&ec2, "other").await, vpc);
    let settled = stored(&s3, "team-states", "prod/other.json").await.unwrap();
    assert!(rescued_keys.keys().all(|k| settled["resources"].get(k).is_some()), "{settled}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_runs_lock_shows_who_and_how_old_until_unlock_removes_it() {
    let emu = Emulator::start();
    let s3 = emu.aws_clients().s3;
    Tool::new(&emu.endpoint).run(&["init", "--shared-state", "team-states"]).ok();
    let tool = Tool::sharing(&emu.endpoint, "s3://team-states");
    emu.set_faults(json!([{"action": "*", "delay": 0.02}]));
    let mut run = tool
        .command(&up("killed", &[]))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    until("some records", || async {
        stored(&s3, "team-states", "killed.json")
            .await
            .is_some_and(|s| s["resources"].as_object().is_some_and(|r| r.len() >= 2))
    })
    .await;
    let pid = run.id();
    run.kill().unwrap(); // SIGKILL: the lock stays
    run.wait().unwrap();
    emu.set_faults(json!([]));
    let listed = tool.run(&["list", "--json"]).ok();
    validate_json("list", &listed.stdout, false);
    let listing = listed.json();
    let held = &listing["stacks"].as_array().unwrap().iter().find(|s| s["stack"] == "killed").unwrap()["locked_by"];
    assert_eq!((held["pid"].as_u64(), held["operation"].as_str()), (Some(u64::from(pid)), Some("up")));
    let id = held["id"].as_str().unwrap().to_string();
    let table = tool.run(&["list"]).ok();
    assert!(table.stdout.contains(&format!("lock {id}")) && table.stdout.contains("up taken"), "{}", table.stdout);
    let refused = tool.run(&up("killed", &[])).fails_with(2);
    assert!(refused.stderr.contains(&format!("gitlab-provision unlock {id} --stack killed")), "{}", refused.stderr);
    // Status reads without the lock.
    tool.run(&["status", "--stack", "killed", "--json"]).ok();
    let wrong = tool.run(&["unlock", "0000000000000000", "--stack", "killed", "--yes"]).fails_with(2);
    assert!(wrong.stderr.contains("it was left alone"), "{}", wrong.stderr);
    let unasked = tool.run(&["unlock", &id, "--stack", "killed"]).fails_with(2);
    assert!(unasked.stderr.contains("--yes"), "{}", unasked.stderr);
    assert!(exists(&s3, "team-states", "killed.lock").await);
    tool.run(&["unlock", &id, "--stack", "killed", "--yes"]).ok();
    assert!(!exists(&s3, "team-states", "killed.lock").await);
    // The next run resumes from what the killed one recorded: one VPC, not two.
    tool.run(&up("killed", &[])).ok();
    assert_eq!(vpcs(&emu.clients().ec2, "killed").await.len(), 1);
    tool.run(&["down", "--yes", "--stack", "killed"]).ok();
    assert!(!exists(&s3, "team-states", "killed.json").await, "a complete down retires the state");
    let history = tool.run(&["state", "history", "--stack", "killed", "--json"]).ok().json();
    assert_eq!(history["versions"][0]["deleted"], true, "versioning keeps it: {history}");
}

#[tokio::test(flavor = "multi_thread")]
async fn push_pull_history_restore_and_list_move_a_local_state_into_the_bucket() {
    let emu = Emulator::start();
    let s3 = emu.aws_clients().s3;
    let local = Tool::new(&emu.endpoint);
    local.run(&["init", "--shared-state", "team-states/gl"]).ok();
    local.run(&up("moved", &[])).ok();
    let before = local.state("moved").unwrap();
    let url = ["--state-url", "s3://team-states/gl"];
    let pushed = local.run(&[&["state", "push", "--stack", "moved"][..], &url[..]].concat()).ok();
    assert!(pushed.stdout.contains("pushed stack moved"), "{}", pushed.stdout);
    assert_eq!(stored(&s3, "team-states", "gl/moved.json").await.unwrap(), before);
    assert!(local.state("moved").is_none(), "the local file is moved aside");
    assert!(local.dir.path().join("state/moved.json.pushed").exists());
    // Without the bucket named, that directory is sent to the bucket, never back to the file.
    let lost = local.run(&up("moved", &[])).fails_with(2);
    assert!(lost.stderr.contains("moved.json.pushed says this stack's state was pushed"), "{}", lost.stderr);
    // A second push finds the bucket's: refused, nothing written.
    // (Another version of it: the very same bytes would be a push that already happened.)
    let mut other = before.clone();
    other["serial"] = json!(before["serial"].as_u64().unwrap() + 1);
    std::fs::write(local.state_path("moved"), serde_json::to_vec_pretty(&other).unwrap()).unwrap();
    let again = local.run(&[&["state", "push", "--stack", "moved"][..], &url[..]].concat()).fails_with(2);
    assert!(again.stderr.contains("already holds a state for stack moved"), "{}", again.stderr);
    assert!(local.state("moved").is_some(), "the refused push leaves the local file");

    // From another directory, through the config's `state`: status, list, a change.
    let team = Tool::new(&emu.endpoint);
    team.write("gitlab-provision.toml", "stack = \"moved\"\nstate = \"s3://team-states/gl\"\n");
    team.run(&["status", "--json"]).ok();
    let listing = team.run(&["list", "--json"]).ok().json();
    assert_eq!(listing["state_dir"], "s3://team-states/gl");
    assert_eq!(listing["stacks"][0]["stack"], "moved");
    assert_eq!(listing["stacks"][0]["resources"].as_u64(), before["resources"].as_object().map(|r| r.len() as u64));
    team.run(&["up", "--allowed-cidr", "203.0.113.0/24", "--allowed-cidr", "198.51.100.0/24", "--yes"]).ok();
    let changed = stored(&s3, "team-states", "gl/moved.json").await.unwrap();
    assert!(changed["serial"].as_u64() > before["serial"].as_u64());
    let pulled = team.run(&["state", "pull"]).ok();
    assert_eq!(serde_json::from_str::<Value>(&pulled.stdout).unwrap(), changed);
    team.run(&["state", "pull", "--out", "copy.json"]).ok();
    assert_eq!(
        serde_json::from_str::<Value>(&std::fs::read_to_string(team.dir.path().join("copy.json")).unwrap()).unwrap(),
        changed
    );

    // History lists every save, newest first; restoring the pushed version brings its records back.
    let history = team.run(&["state", "history", "--json"]).ok();
    validate_json("state-history", &history.stdout, false);
    let history = history.json();
    let versions = history["versions"].as_array().unwrap();
    assert!(versions.len() >= 2, "{history}");
    assert_eq!(versions[0]["latest"], true);
    let pushed_version = versions.last().unwrap()["version"].as_str().unwrap().to_string();
    let unasked = team.run(&["state", "restore", &pushed_version]).fails_with(2);
    assert!(unasked.stderr.contains("--yes"), "{}", unasked.stderr);
    team.run(&["state", "restore", &pushed_version, "--yes"]).ok();
    let restored = stored(&s3, "team-states", "gl/moved.json").await.unwrap();
    assert_eq!(restored["resources"], before["resources"]);
    assert!(restored["serial"].as_u64() > changed["serial"].as_u64(), "the serial only grows");
    let missing = team.run(&["state", "restore", "no-such-version", "--yes"]).fails_with(2);
    assert!(missing.stderr.contains("no version"), "{}", missing.stderr);

    // The account binding holds for a shared state: another account's state is refused.
    let mut foreign = restored.clone();
    foreign["account"] = json!("999999999999");
    s3.put_object()
        .bucket("team-states")
        .key("gl/moved.json")
        .body(serde_json::to_vec(&foreign).unwrap().into())
        .send()
        .await
        .unwrap();
    let refused = team.run(&["status"]).fails_with(2);
    assert!(refused.stderr.contains("lives in AWS account 999999999999"), "{}", refused.stderr);
    s3.put_object()
        .bucket("team-states")
        .key("gl/moved.json")
        .body(serde_json::to_vec(&restored).unwrap().into())
        .send()
        .await
        .unwrap();
    // Restoring what is current changes nothing.
    let history = team.run(&["state", "history", "--json"]).ok().json();
    let current = history["versions"][0]["version"].as_str().unwrap().to_string();
    let same = team.run(&["state", "restore", &current, "--yes"]).ok();
    assert!(same.stdout.contains("nothing to do"), "{}", same.stdout);
    team.run(&["down", "--yes"]).ok();

    // After `down`, the first directory's old copy cannot come back: the bucket held later.
    std::fs::remove_file(local.state_path("moved")).unwrap();
    let pushed_again = local.run(&[&["state", "push", "--stack", "moved"][..], &url[..]].concat()).fails_with(2);
    assert!(pushed_again.stderr.contains("was already pushed"), "{}", pushed_again.stderr);
    std::fs::copy(local.dir.path().join("state/moved.json.pushed"), local.state_path("moved")).unwrap();
    let stale = local.run(&[&["state", "push", "--stack", "moved"][..], &url[..]].concat()).fails_with(2);
    assert!(stale.stderr.contains("held a later state of this very stack"), "{}", stale.stderr);
    assert!(stale.stderr.contains("retired by `down`"), "{}", stale.stderr);
    assert!(!exists(&s3, "team-states", "gl/moved.json").await, "nothing was written");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_state_url_is_refused_before_any_call() {
    let emu = Emulator::start();
    let tool = Tool::new(&emu.endpoint);
    emu.clear_calls();
    for (args, names) in [
        (vec!["status", "--state-url", "team-states/gl"], "--state-url"),
        (vec!["list", "--state-url", "s3://Team_States"], "--state-url"),
        (vec!["state", "pull"], "shared state"),
    ] {
        let refused = tool.run(&args).fails_with(2);
        assert!(refused.stderr.contains(names) && refused.stderr.contains("help:"), "{args:?}: {}", refused.stderr);
    }
    tool.write("gitlab-provision.toml", "state = \"s3://team-states/../x\"\n");
    let refused = tool.run(&["status"]).fails_with(2);
    assert!(refused.stderr.contains("state = "), "{}", refused.stderr);
    assert_eq!(emu.calls().len(), 0, "{:?}", emu.calls());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_write_whose_answer_was_lost_is_recognised_as_made() {
    let emu = Emulator::start();
    let s3 = emu.aws_clients().s3;
    Tool::new(&emu.endpoint).run(&["init", "--shared-state", "team-states"]).ok();
    let tool = Tool::sharing(&emu.endpoint, "s3://team-states");
    // S3 makes the write, the answer is lost, the SDK sends it again: the retry fails its own
    // precondition (the lock's If-None-Match, the state's If-Match) as it would on AWS.
    emu.set_faults(json!([{"service": "s3", "action": "*", "status": 500, "code": "InternalError",
                           "when": "after", "probability": 0.3}]));
    tool.run(&up("lossy", &[])).ok();
    let lost = emu.calls().iter().filter(|c| c.service == "s3" && c.action.starts_with("PUT ") && c.fault).count();
    assert!(lost >= 3, "only {lost} answers were lost");
    emu.set_faults(json!([]));
    let state = stored(&s3, "team-states", "lossy.json").await.unwrap();
    assert_eq!(
        vpcs(&emu.clients().ec2, "lossy").await,
        vec![state["resources"]["vpc"]["id"].as_str().unwrap().to_string()]
    );
    assert!(!exists(&s3, "team-states", "lossy.lock").await, "its own lock, made on a retry, is released");
    assert!(!tool.dir.path().join("lossy.unsaved.json").exists(), "no conflict was seen");
    // down's retirement too: the delete made, its answer lost, the retry's If-Match refused.
    emu.set_faults(json!([{"service": "s3", "action": "*", "status": 500, "code": "InternalError",
                           "when": "after", "probability": 0.3}]));
    tool.run(&["down", "--yes", "--stack", "lossy"]).ok();
    emu.set_faults(json!([]));
    assert!(!exists(&s3, "team-states", "lossy.json").await);
}
