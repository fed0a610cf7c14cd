//! `object_storage = true`: GitLab's objects in the stack's buckets, read back through the AWS
//! API (each bucket private, TLS only, encrypted, versioned, tidied; the task role reaches those
//! buckets and no other; GitLab's configuration in the consolidated form without a key), what
//! `plan` prices, and what `down` does with buckets that hold objects.

mod common;

use common::policy::{Decision, Request, decide};
use common::{Emulator, Tool, id, last_registered, omnibus, stack_leftovers, up};
use serde_json::Value;

/// The record keys of GitLab's buckets, and the object type each holds.
const BUCKETS: [(&str, &str); 9] = [
    ("objects-artifacts", "artifacts"),
    ("objects-external-diffs", "external_diffs"),
    ("objects-lfs", "lfs"),
    ("objects-uploads", "uploads"),
    ("objects-packages", "packages"),
    ("objects-dependency-proxy", "dependency_proxy"),
    ("objects-terraform-state", "terraform_state"),
    ("objects-ci-secure-files", "ci_secure_files"),
    ("objects-pages", "pages"),
];

async fn bucket_exists(emu: &Emulator, bucket: &str) -> bool {
    emu.clients().s3.head_bucket().bucket(bucket).send().await.is_ok()
}

/// The task role's inline policy, as an identity policy `decide` can read.
async fn task_role_policy(emu: &Emulator, state: &Value) -> String {
    let c = emu.clients();
    let role = id(state, "task-role");
    let name = role.rsplit('/').next().unwrap();
    let names = c.iam.list_role_policies().role_name(name).send().await.unwrap();
    let document = c.iam.get_role_policy().role_name(name).policy_name(&names.policy_names()[0]).send().await.unwrap();
    common::url_decode(document.policy_document())
        .replace("\"Effect\":\"Allow\"", "\"Effect\":\"Allow\",\"Principal\":\"*\"")
}

#[tokio::test(flavor = "multi_thread")]
async fn gitlabs_objects_go_to_private_buckets_only_its_task_reaches_and_down_never_drops_them_unasked() {
    let emu = Emulator::start();
    let c = emu.clients();
    let tool = Tool::new(&emu.endpoint);

    let plan = tool.run(&["plan", "--stack", "obj", "--allowed-cidr", "203.0.113.0/24", "--object-storage", "--json"]);
    let plan = plan.ok().json();
    let lines = plan["monthly_cost"]["lines"].as_array().unwrap();
    let s3 = lines.iter().find(|l| l["item"] == "S3 object storage").expect("plan prices the buckets");
    assert!(s3["usd_per_month"].as_f64().unwrap() > 1.0, "{s3}");

    tool.run(&up("obj", &["--object-storage"])).ok();
    let state = tool.state("obj").unwrap();
    let role = id(&state, "task-role");
    let policy = task_role_policy(&emu, &state).await;
    let config = omnibus(&last_registered(&emu));
    assert!(config.contains("gitlab_rails['object_store']['enabled'] = true"), "{config}");
    assert!(config.contains("'provider' => 'AWS', 'region' => 'us-east-1', 'use_iam_profile' => true"), "{config}");
    assert!(!config.contains("aws_access_key_id") && !config.contains("aws_secret_access_key"));
    for (key, object_type) in BUCKETS {
        let bucket = id(&state, key);
        assert_eq!(state["resources"][key]["kind"], "s3:bucket");
        // GitLab is told the bucket of each type.
        let line = format!("gitlab_rails['object_store']['objects']['{object_type}']['bucket'] = '{bucket}'");
        assert!(config.contains(&line), "{line} not in\n{config}");
        // Private, encrypted, versioned, tagged.
        let block = c.s3.get_public_access_block().bucket(&bucket).send().await.unwrap();
        let block = block.public_access_block_configuration().unwrap();
        assert_eq!(
            [
                block.block_public_acls(),
                block.ignore_public_acls(),
                block.block_public_policy(),
                block.restrict_public_buckets()
            ],
            [Some(true); 4],
            "{bucket}"
        );
        // (through the harness: moto's own answer has the wrong root element)
        let versioning = emu.aws_clients().s3.get_bucket_versioning().bucket(&bucket).send().await.unwrap();
        assert_eq!(versioning.status().map(|s| s.as_str()), Some("Enabled"), "{bucket}");
        let encryption = c.s3.get_bucket_encryption().bucket(&bucket).send().await.unwrap();
        assert!(encryption.server_side_encryption_configuration().is_some(), "{bucket}");
        let tags = c.s3.get_bucket_tagging().bucket(&bucket).send().await.unwrap();
        assert!(tags.tag_set().iter().any(|t| t.key() == "gitlab-provision:stack" && t.value() == "obj"), "{bucket}");
        // Unfinished uploads aborted after a week, old versions gone after a month, delete
        // markers with nothing behind them removed, nothing current ever expired.
        let lifecycle = c.s3.get_bucket_lifecycle_configuration().bucket(&bucket).send().await.unwrap();
        let rule = &lifecycle.rules()[0];
        assert_eq!(rule.abort_incomplete_multipart_upload().and_then(|a| a.days_after_initiation()), Some(7));
        assert_eq!(rule.noncurrent_version_expiration().and_then(|n| n.noncurrent_days()), Some(30));
        let expiration = rule.expiration().expect("delete markers are tidied");
        assert_eq!(expiration.days(), None, "{bucket}: GitLab's objects must not expire");
        assert_eq!(expiration.expired_object_delete_marker(), Some(true), "{bucket}");
        // TLS only.
        let bucket_policy = c.s3.get_bucket_policy().bucket(&bucket).send().await.unwrap();
        let bucket_policy = bucket_policy.policy().unwrap();
        let object = format!("arn:aws:s3:::{bucket}/x");
        assert_eq!(
            decide(bucket_policy, &Request::by(&role, "s3:GetObject", &object).without_tls()),
            Decision::ExplicitDeny
        );
        // The task role reads and writes its objects.
        for action in ["s3:PutObject", "s3:GetObject", "s3:DeleteObject", "s3:AbortMultipartUpload"] {
            let request = Request { identity_allows: false, ..Request::by(&role, action, &object) };
            assert_eq!(decide(&policy, &request), Decision::Allowed, "{action} on {bucket}");
        }
        let bucket_arn = format!("arn:aws:s3:::{bucket}");
        let list = Request { identity_allows: false, ..Request::by(&role, "s3:ListBucket", &bucket_arn) };
        assert_eq!(decide(&policy, &list), Decision::Allowed, "ListBucket on {bucket}");
    }
    // ... and no other bucket.
    let elsewhere =
        Request { identity_allows: false, ..Request::by(&role, "s3:GetObject", "arn:aws:s3:::another-teams-bucket/x") };
    assert_ne!(decide(&policy, &elsewhere), Decision::Allowed);

    // A plain `up` keeps object storage (a stack that has it keeps it): nothing to change.
    let again = tool.run(&["plan", "--stack", "obj", "--allowed-cidr", "203.0.113.0/24", "--detailed-exitcode"]);
    assert_eq!(again.code, Some(0), "{}{}", again.stdout, again.stderr);
    // Turning it off is refused: GitLab would no longer find its objects.
    let off = tool.run(&up("obj", &["--object-storage", "false", "--yes"])).fails_with(2);
    assert!(off.stderr.contains("object_storage") && off.stderr.contains("objects-artifacts"), "{}", off.stderr);

    // Someone's CI artifact: `down` refuses before deleting anything, naming what the bucket holds.
    let artifacts = id(&state, "objects-artifacts");
    let body = aws_sdk_s3::primitives::ByteStream::from(vec![7u8; 2048]);
    c.s3.put_object().bucket(&artifacts).key("job/1/artifacts.zip").body(body).send().await.unwrap();
    let records = state["resources"].as_object().unwrap().len();
    let refused = tool.run(&["down", "--stack", "obj", "--yes"]).fails_with(2);
    assert!(refused.stderr.contains("objects-artifacts") && refused.stderr.contains("1 object"), "{}", refused.stderr);
    assert!(
        refused.stderr.contains("--delete-objects") && refused.stderr.contains("--keep-data"),
        "{}",
        refused.stderr
    );
    assert_eq!(tool.state("obj").unwrap()["resources"].as_object().unwrap().len(), records, "nothing was deleted");
    assert!(
        c.ecs.describe_services().cluster("obj").services("gitlab").send().await.unwrap().services()[0].status()
            == Some("ACTIVE")
    );

    // --keep-data keeps the buckets (with the file system); `up` attaches them again.
    tool.run(&["down", "--stack", "obj", "--keep-data", "--yes"]).ok();
    for (key, _) in BUCKETS {
        assert!(bucket_exists(&emu, &id(&state, key)).await, "{key} was kept");
    }
    tool.run(&up("obj", &[])).ok();
    let attached = tool.state("obj").unwrap();
    for (key, _) in BUCKETS {
        assert_eq!(id(&attached, key), id(&state, key), "{key} attached again");
    }
    assert!(omnibus(&last_registered(&emu)).contains(&artifacts));

    // A lost state: `down --discover` finds the buckets by their names and tags, and refuses too
    // (nothing is written).
    let saved = std::fs::read(tool.state_path("obj")).unwrap();
    std::fs::remove_file(tool.state_path("obj")).unwrap();
    let refused = tool.run(&["down", "--stack", "obj", "--discover", "--yes"]).fails_with(2);
    assert!(refused.stderr.contains("objects-artifacts"), "{}", refused.stderr);
    assert!(bucket_exists(&emu, &artifacts).await);
    // ... and with --keep-data refuses too: it keeps what the state records, and deleting what it
    // found is what it was asked not to do.
    let fs = id(&state, "file-system");
    let refused = tool.run(&["down", "--stack", "obj", "--discover", "--keep-data", "--yes"]).fails_with(2);
    assert!(refused.stderr.contains("file-system") && refused.stderr.contains(&fs), "{}", refused.stderr);
    assert!(bucket_exists(&emu, &artifacts).await);
    assert!(
        c.efs.describe_file_systems().file_system_id(&fs).send().await.is_ok(),
        "the found file system was deleted"
    );
    std::fs::write(tool.state_path("obj"), saved).unwrap();

    // An object that arrives after `down`'s first check (GitLab writes until its service is
    // gone) stops that bucket's deletion at the moment it would be deleted. The buckets are
    // emptied first, so the first check passes; the task definition's deregistration is slowed
    // down to hold the window open after the service is gone.
    let s3 = emu.aws_clients().s3;
    let versions = s3.list_object_versions().bucket(&artifacts).send().await.unwrap();
    for version in versions.versions() {
        let request = s3.delete_object().bucket(&artifacts).key(version.key().unwrap());
        request.set_version_id(version.version_id().map(str::to_string)).send().await.unwrap();
    }
    emu.set_faults(serde_json::json!([{"action": "DeregisterTaskDefinition", "delay": 3.0}]));
    emu.clear_calls();
    let down = tool.command(&["down", "--stack", "obj", "--yes"]).stderr(std::process::Stdio::piped()).spawn().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    // The state drops the service's record once it is deleted.
    while tool.state("obj").is_none_or(|state| state["resources"].get("service").is_some()) {
        assert!(std::time::Instant::now() < deadline, "down never deleted the service");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let late = aws_sdk_s3::primitives::ByteStream::from(vec![1u8; 512]);
    s3.put_object().bucket(&artifacts).key("job/2/artifacts.zip").body(late).send().await.unwrap();
    let out = down.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("objects-artifacts") && stderr.contains("not deleted without being told to"), "{stderr}");
    assert!(stderr.contains("down --delete-objects"), "{stderr}");
    assert!(bucket_exists(&emu, &artifacts).await, "the late object's bucket was deleted");
    assert!(tool.state("obj").unwrap()["resources"].get("objects-artifacts").is_some());
    emu.set_faults(serde_json::json!([]));

    // Told to: every object and every bucket goes, with the rest of the stack.
    tool.run(&["down", "--stack", "obj", "--delete-objects", "--yes"]).ok();
    assert_eq!(stack_leftovers(&c, "obj").await, Vec::<String>::new());
}
