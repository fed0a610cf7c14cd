//! `database = "rds"`: GitLab's PostgreSQL on an RDS instance of the stack's, read back through
//! the AWS API (private, encrypted with the stack's key, deletion protection, automated backups,
//! its password RDS's own secret handed to the task through `secrets`; its network reached by
//! GitLab's tasks only), what `plan` prices and refuses, and what `down` leaves: a final
//! snapshot, or with `--keep-data` the instance and the network it sits in, which `up` attaches.

mod common;

use common::{Emulator, Tool, id, last_registered, omnibus, stack_leftovers, up};

#[tokio::test(flavor = "multi_thread")]
async fn gitlab_on_rds_is_private_encrypted_protected_and_down_keeps_a_final_snapshot() {
    let emu = Emulator::start();
    let c = emu.clients();
    let tool = Tool::new(&emu.endpoint);

    let plan = tool.run(&["plan", "--stack", "pg", "--allowed-cidr", "203.0.113.0/24", "--database", "rds", "--json"]);
    let plan = plan.ok().json();
    let lines = plan["monthly_cost"]["lines"].as_array().unwrap();
    let instance = lines.iter().find(|l| l["item"] == "RDS PostgreSQL instance").expect("plan prices the instance");
    assert!(instance["assumption"].as_str().unwrap().contains("db.t4g.medium"), "{instance}");
    assert!(instance["usd_per_month"].as_f64().unwrap() > 40.0, "{instance}");
    assert!(lines.iter().any(|l| l["item"] == "RDS storage"), "{lines:?}");

    let run = tool.run(&up("pg", &["--database", "rds"])).ok();
    let state = tool.state("pg").unwrap();
    assert_eq!(state["resources"]["database"]["kind"], "rds:db-instance");
    let db = c.rds.describe_db_instances().db_instance_identifier("pg-gitlab").send().await.unwrap();
    let db = &db.db_instances()[0];
    assert_eq!(db.engine(), Some("postgres"));
    assert!(db.engine_version().is_some_and(|v| v.starts_with("17")), "GitLab 19 runs PostgreSQL 17: {db:?}");
    assert_eq!(db.db_instance_class(), Some("db.t4g.medium"));
    assert_eq!(db.storage_encrypted(), Some(true));
    assert_eq!(db.publicly_accessible(), Some(false));
    assert_eq!(db.deletion_protection(), Some(true));
    assert_eq!(db.backup_retention_period(), Some(7));
    assert_eq!(db.multi_az(), Some(false));
    let key_arn = state["resources"]["key"]["attrs"]["arn"].as_str().unwrap().to_string();
    assert_eq!(db.kms_key_id(), Some(key_arn.as_str()), "encrypted with the stack's key");
    // In the private subnets, behind a group that admits GitLab's tasks only.
    let group = db.db_subnet_group().unwrap();
    let mut subnets: Vec<&str> = group.subnets().iter().filter_map(|s| s.subnet_identifier()).collect();
    subnets.sort();
    let mut private = vec![id(&state, "subnet-private-a"), id(&state, "subnet-private-b")];
    private.sort();
    assert_eq!(subnets, private);
    let db_group = id(&state, "db-security-group");
    let groups: Vec<&str> = db.vpc_security_groups().iter().filter_map(|g| g.vpc_security_group_id()).collect();
    assert_eq!(groups, [db_group.as_str()]);
    let sg = c.ec2.describe_security_groups().group_ids(&db_group).send().await.unwrap();
    let rules = sg.security_groups()[0].ip_permissions();
    assert_eq!(rules.len(), 1, "{rules:?}");
    assert_eq!((rules[0].from_port(), rules[0].to_port()), (Some(5432), Some(5432)));
    assert!(rules[0].ip_ranges().is_empty(), "no address range reaches the database: {rules:?}");
    let sources: Vec<&str> = rules[0].user_id_group_pairs().iter().filter_map(|p| p.group_id()).collect();
    assert_eq!(sources, [id(&state, "service-security-group").as_str()]);
    // Its password is RDS's secret, rotated yearly (GitLab reads it at start), encrypted with
    // the stack's key, handed to the task through `secrets` only.
    let secret = db.master_user_secret().and_then(|s| s.secret_arn()).expect("RDS manages the password").to_string();
    // (through the harness: moto drops the schedule)
    let described = emu.aws_clients().secrets.describe_secret().secret_id(&secret).send().await.unwrap();
    assert_eq!(described.rotation_rules().and_then(|r| r.schedule_expression()), Some("cron(0 4 1 1 ? *)"));
    let td = last_registered(&emu);
    let container = &td["containerDefinitions"][0];
    let from = container["secrets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "GITLAB_DATABASE_PASSWORD")
        .map(|s| s["valueFrom"].as_str().unwrap().to_string());
    assert_eq!(from, Some(format!("{secret}:password::")));
    let environment = container["environment"].to_string();
    assert!(!environment.contains("GITLAB_DATABASE_PASSWORD\""), "the password is no plain variable");
    let config = omnibus(&td);
    let endpoint = db.endpoint().and_then(|e| e.address()).unwrap();
    for line in [
        "postgresql['enable'] = false".to_string(),
        format!("gitlab_rails['db_host'] = '{endpoint}'"),
        "gitlab_rails['db_password'] = ENV['GITLAB_DATABASE_PASSWORD']".to_string(),
        "gitlab_rails['db_sslmode'] = 'require'".to_string(),
    ] {
        assert!(config.lines().any(|l| l == line), "{line} not in\n{config}");
    }
    // The execution role reads that secret.
    let role = id(&state, "execution-role");
    let name = role.rsplit('/').next().unwrap();
    let names = c.iam.list_role_policies().role_name(name).send().await.unwrap();
    let document = c.iam.get_role_policy().role_name(name).policy_name(&names.policy_names()[0]).send().await.unwrap();
    assert!(common::url_decode(document.policy_document()).contains(&secret));
    // Deletion protection: deleting it any other way is refused.
    let other = c.rds.delete_db_instance().db_instance_identifier("pg-gitlab").skip_final_snapshot(true).send().await;
    assert!(other.is_err(), "deletion protection is on");
    assert!(run.stdout.contains("GitLab:"), "{}", run.stdout);

    // `status` shows the instance, its state and storage.
    let status = tool.run(&["status", "--stack", "pg"]).ok();
    assert!(status.stdout.contains("pg-gitlab") && status.stdout.contains("20 GiB"), "{}", status.stdout);

    // A rotation of the password after GitLab started cuts it off: `status` says so, and how out.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    c.secrets.rotate_secret().secret_id(&secret).rotate_immediately(true).send().await.unwrap();
    let stale = tool.run(&["status", "--stack", "pg", "--json"]).json();
    let line = stale["resources"].as_array().unwrap().iter().find(|r| r["key"] == "database").unwrap().clone();
    assert_eq!(line["live"], "changed", "{line}");
    assert!(line["detail"].as_str().unwrap().contains("gitlab-provision wake --wait"), "{line}");

    // Turning it back to the bundled PostgreSQL is refused: it would start empty.
    let refused = tool.run(&up("pg", &["--database", "bundled", "--yes"])).fails_with(2);
    assert!(refused.stderr.contains("database") && refused.stderr.contains("RDS"), "{}", refused.stderr);
    // Left out, the stack stays on RDS with what it has: nothing to change.
    let again = tool.run(&["plan", "--stack", "pg", "--allowed-cidr", "203.0.113.0/24", "--detailed-exitcode"]);
    assert_eq!(again.code, Some(0), "{}{}", again.stdout, again.stderr);

    // --keep-data keeps the instance with what it cannot outlive (its subnet group, subnets,
    // security groups, the VPC); `up` attaches them all again.
    let kept = tool.run(&["down", "--stack", "pg", "--keep-data", "--yes"]).ok();
    for key in ["database", "db-subnet-group", "subnet-private-a", "db-security-group", "service-security-group", "vpc"]
    {
        assert!(kept.stdout.contains(&format!("kept {key} ")), "{key} kept:\n{}", kept.stdout);
    }
    assert!(!kept.stdout.contains("kept subnet-public-a"), "{}", kept.stdout);
    let still = c.rds.describe_db_instances().db_instance_identifier("pg-gitlab").send().await.unwrap();
    assert_eq!(still.db_instances()[0].db_instance_status(), Some("available"));
    tool.run(&up("pg", &[])).ok();
    let attached = tool.state("pg").unwrap();
    assert_eq!(id(&attached, "database"), "pg-gitlab");
    assert_eq!(id(&attached, "vpc"), id(&state, "vpc"), "the same network");
    assert!(omnibus(&last_registered(&emu)).contains(endpoint));

    // `down` turns deletion protection off, takes a final snapshot, names it, and leaves nothing
    // else of the stack.
    let down = tool.run(&["down", "--stack", "pg", "--yes"]).ok();
    let snapshots = c.rds.describe_db_snapshots().db_instance_identifier("pg-gitlab").send().await.unwrap();
    let names: Vec<&str> = snapshots.db_snapshots().iter().filter_map(|s| s.db_snapshot_identifier()).collect();
    assert_eq!(names.len(), 1, "{names:?}");
    assert!(names[0].starts_with("pg-gitlab-final-"), "{names:?}");
    assert!(down.stderr.contains(names[0]) || down.stdout.contains(names[0]), "{}{}", down.stdout, down.stderr);
    assert_eq!(stack_leftovers(&c, "pg").await, Vec::<String>::new());
    assert!(tool.state("pg").is_none());
    // What AWS made it wait for: the instance creating, then deleting while its interface held
    // its subnet group and network.
    let fired = emu.rules_fired();
    for rule in ["db-instance-creating", "db-instance-deleting"] {
        assert!(fired.iter().any(|f| f == rule), "{rule} never applied: {fired:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_running_bundled_gitlab_is_not_switched_to_an_empty_rds_and_no_final_snapshot_is_asked_for() {
    let emu = Emulator::start();
    let c = emu.clients();
    let tool = Tool::new(&emu.endpoint);
    tool.run(&up("mv", &[])).ok();
    let refused = tool.run(&up("mv", &["--database", "rds", "--yes"])).fails_with(2);
    assert!(
        refused.stderr.contains("bundled PostgreSQL") && refused.stderr.contains("Moving to RDS"),
        "{}",
        refused.stderr
    );
    assert!(c.rds.describe_db_instances().send().await.unwrap().db_instances().is_empty(), "nothing was created");

    // A stack name RDS would refuse in the instance's name is refused before any call.
    let hyphens = tool.run(&up("a--b", &["--database", "rds"])).fails_with(2);
    assert!(hyphens.stderr.contains("stack") && hyphens.stderr.contains("two hyphens"), "{}", hyphens.stderr);
    // A setting of the database without database = "rds" names the key, before any call.
    let wrong = tool.run(&up("mv", &["--db-instance-class", "db.t4g.large"])).fails_with(2);
    assert!(
        wrong.stderr.contains("db_instance_class") && wrong.stderr.contains("database = \"rds\""),
        "{}",
        wrong.stderr
    );
    tool.run(&["down", "--stack", "mv", "--yes"]).ok();

    // A new stack on RDS, then down without the final snapshot: nothing at all is left.
    tool.run(&up("nf", &["--database", "rds", "--db-backup-retention-days", "3"])).ok();
    let db = c.rds.describe_db_instances().db_instance_identifier("nf-gitlab").send().await.unwrap();
    assert_eq!(db.db_instances()[0].backup_retention_period(), Some(3));
    tool.run(&["down", "--stack", "nf", "--no-final-snapshot", "--yes"]).ok();
    let snapshots = c.rds.describe_db_snapshots().db_instance_identifier("nf-gitlab").send().await.unwrap();
    assert!(snapshots.db_snapshots().is_empty());
    assert_eq!(stack_leftovers(&c, "nf").await, Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread")]
async fn on_rds_a_backup_keeps_gitlab_running_unless_told_and_a_restore_brings_back_database_and_files_together() {
    let emu = Emulator::start();
    let c = emu.clients();
    let tool = Tool::new(&emu.endpoint);
    tool.run(&up("rb", &["--database", "rds", "--wait"])).ok();
    let state = tool.state("rb").unwrap();
    let old_fs = id(&state, "file-system");
    let repo = |fs: &str| emu.efs_dir(fs).join("srv/gitlab/data/git-data/repositories/team/app.git");
    std::fs::create_dir_all(repo(&old_fs)).unwrap();
    std::fs::write(repo(&old_fs).join("HEAD"), "v1").unwrap();

    // No question, no stop: the database's snapshot and the file system's job, one backup,
    // recorded as taken while GitLab ran (the repositories' copy is not a point in time).
    emu.clear_calls();
    let run = tool.run(&["backup", "--stack", "rb", "--json"]).ok();
    assert!(emu.bodies("UpdateService").is_empty(), "a backup on RDS stopped GitLab");
    let taken: serde_json::Value = run
        .stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|d| d["schema"] == "gitlab-provision.backup/1")
        .expect("the backup's document");
    let snapshot = taken["database_snapshot"].as_str().expect("a database snapshot").to_string();
    assert!(taken["downtime_seconds"].is_null(), "{taken:#}");
    assert_eq!(taken["consistent"], false, "{taken:#}");
    let point = taken["recovery_point"].as_str().unwrap().to_string();
    let found = c.rds.describe_db_snapshots().db_snapshot_identifier(&snapshot).send().await.unwrap();
    let found = &found.db_snapshots()[0];
    assert_eq!(found.db_instance_identifier(), Some("rb-gitlab"));
    assert_eq!(found.status(), Some("available"), "the backup waited for the snapshot");
    let tags = c.rds.list_tags_for_resource().resource_name(found.db_snapshot_arn().unwrap()).send().await.unwrap();
    assert!(tags.tag_list().iter().any(|t| t.key() == Some("gitlab-provision:gitlab-version")), "{tags:?}");
    // Listed together; a point without a snapshot (the daily plan's) is not restorable here.
    let list = tool.run(&["backup", "list", "--stack", "rb", "--json"]).ok().json();
    let listed = list["recovery_points"].as_array().unwrap().iter().find(|p| p["arn"] == point.as_str()).unwrap();
    assert_eq!(listed["database_snapshot"], snapshot.as_str());
    let table = tool.run(&["backup", "list", "--stack", "rb"]).ok();
    assert!(table.stdout.contains("DATABASE") && table.stdout.contains(&snapshot), "{}", table.stdout);
    // --stop: GitLab stopped for both copies, then started; the snapshot goes with it too.
    emu.clear_calls();
    let stopped = tool.run(&["backup", "--stack", "rb", "--stop", "--yes"]).ok();
    let scaled: Vec<serde_json::Value> =
        emu.bodies("UpdateService").into_iter().map(|b| b["desiredCount"].clone()).collect();
    assert_eq!(scaled, [serde_json::json!(0), serde_json::json!(1)]);
    assert!(
        stopped.stdout.contains("GitLab stopped for") && stopped.stdout.contains("rb-gitlab-backup-"),
        "{}",
        stopped.stdout
    );

    // Work after the backup, then the restore: a new instance from the snapshot, a new file
    // system from the point, GitLab switched to both; what it ran on is kept.
    std::fs::write(repo(&old_fs).join("HEAD"), "v2").unwrap();
    let plan = tool.run(&["restore", "--stack", "rb", &point, "--plan"]).ok();
    assert!(plan.stdout.contains(&snapshot) && plan.stdout.contains("new RDS instance"), "{}", plan.stdout);
    let run = tool.run(&["restore", "--stack", "rb", &point, "--yes"]).ok();
    assert!(run.stdout.contains("runs on it"), "{}", run.stdout);
    let state = tool.state("rb").unwrap();
    let new_db = id(&state, "database");
    assert!(new_db.starts_with("rb-gitlab-r"), "{new_db}");
    assert_eq!(state["resources"]["database-previous-1"]["id"], "rb-gitlab");
    assert_eq!(state["resources"]["database-previous-1"]["status"], "retained");
    let restored = c.rds.describe_db_instances().db_instance_identifier(&new_db).send().await.unwrap();
    let restored = &restored.db_instances()[0];
    assert_eq!(restored.publicly_accessible(), Some(false));
    assert_eq!(restored.deletion_protection(), Some(true));
    assert_eq!(
        restored.db_subnet_group().and_then(|g| g.db_subnet_group_name()),
        Some(id(&state, "db-subnet-group").as_str())
    );
    let groups: Vec<&str> = restored.vpc_security_groups().iter().filter_map(|g| g.vpc_security_group_id()).collect();
    assert_eq!(groups, [id(&state, "db-security-group").as_str()]);
    let endpoint = restored.endpoint().and_then(|e| e.address()).unwrap().to_string();
    let secret = restored.master_user_secret().and_then(|s| s.secret_arn()).unwrap().to_string();
    let new_fs = id(&state, "file-system");
    assert_ne!(new_fs, old_fs);
    assert_eq!(std::fs::read_to_string(repo(&new_fs).join("HEAD")).unwrap(), "v1");
    // GitLab's task reaches the restored instance with the restored instance's password.
    let td = last_registered(&emu);
    assert!(omnibus(&td).contains(&format!("gitlab_rails['db_host'] = '{endpoint}'")), "{}", omnibus(&td));
    assert!(td.to_string().contains(&format!("{secret}:password::")));
    let status = tool.run(&["status", "--stack", "rb", "--json"]).ok().json();
    assert_eq!(status["verdict"]["state"], "healthy", "{status:#}");

    // `down` deletes both instances (a final snapshot of each) and everything else but the
    // vault that holds the backup (this tool never deletes backups).
    tool.run(&["down", "--stack", "rb", "--yes"]).ok();
    assert_eq!(stack_leftovers(&c, "rb").await, ["backup vault gitlab-provision-rb"]);
    let snapshots = c.rds.describe_db_snapshots().send().await.unwrap();
    let mut finals: Vec<&str> = snapshots
        .db_snapshots()
        .iter()
        .filter_map(|s| s.db_snapshot_identifier())
        .filter(|n| n.contains("-final-"))
        .collect();
    finals.sort();
    assert_eq!(finals.len(), 2, "{finals:?}");
    assert!(
        finals[0].starts_with("rb-gitlab-final-") && finals[1].starts_with(&format!("{new_db}-final-")),
        "{finals:?}"
    );
}
