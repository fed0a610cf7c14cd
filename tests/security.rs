//! Security defaults, read back through the AWS API and evaluated the way AWS would (see
//! common/policy.rs): who may read the root secret, mount the file system and delete backups;
//! the backup role's reach; the load balancers' deletion protection through `down`.

mod common;

use common::policy::{Decision, Request, decide, wildcard};
use common::{Emulator, Tool, id, stack_leftovers, up};
use serde_json::Value;

const UNRELATED: &str = "arn:aws:iam::123456789012:role/PowerUserCi";
const SECOND_ADMIN: &str = "arn:aws:iam::123456789012:role/platform/GitLabAdmins";

async fn secret_policy(emu: &Emulator, secret: &str) -> String {
    let out = emu.clients().secrets.get_resource_policy().secret_id(secret).send().await.unwrap();
    out.resource_policy().expect("the root secret has a resource policy").to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_secret_the_data_and_the_backups_admit_only_whom_the_stack_names() {
    let emu = Emulator::start();
    let c = emu.clients();
    let tool = Tool::new(&emu.endpoint);
    tool.run(&up("sec", &[])).ok();
    let state = tool.state("sec").unwrap();
    // The operator: whoever ran the first `up` (moto's caller), recorded in the state.
    let operator = state["notes"]["operator"].as_str().expect("the operator is recorded").to_string();
    let me = c.sts.get_caller_identity().send().await.unwrap();
    assert_eq!(Some(operator.as_str()), me.arn());

    // The root secret: its execution role and the operator read it, an unrelated role with
    // account-wide Secrets Manager rights does not (nor may it change the policy).
    let secret = id(&state, "root-secret");
    let secret_arn = state["resources"]["root-secret"]["attrs"]["arn"].as_str().unwrap_or(&secret).to_string();
    let policy = secret_policy(&emu, &secret).await;
    let execution_role = id(&state, "execution-role");
    let read = "secretsmanager:GetSecretValue";
    assert_eq!(decide(&policy, &Request::by(&execution_role, read, &secret_arn)), Decision::Allowed);
    assert_eq!(decide(&policy, &Request::by(&operator, read, &secret_arn)), Decision::Allowed);
    assert_eq!(decide(&policy, &Request::by(UNRELATED, read, &secret_arn)), Decision::ExplicitDeny);
    let change = "secretsmanager:PutResourcePolicy";
    assert_eq!(decide(&policy, &Request::by(UNRELATED, change, &secret_arn)), Decision::ExplicitDeny);
    assert_eq!(decide(&policy, &Request::by(SECOND_ADMIN, read, &secret_arn)), Decision::ExplicitDeny);
    // `password` keeps working for the operator.
    assert!(tool.run(&["password", "--stack", "sec"]).ok().stdout.trim().len() >= 20);

    // The file system: the task and the initializer mount it over TLS; nobody without TLS,
    // no anonymous client, no other role.
    let fs = id(&state, "file-system");
    let fs_arn = state["resources"]["file-system"]["attrs"]["arn"].as_str().unwrap().to_string();
    let out = c.efs.describe_file_system_policy().file_system_id(&fs).send().await.unwrap();
    let fs_policy = out.policy().expect("the file system has a policy").to_string();
    let (task_role, init_role) = (id(&state, "task-role"), id(&state, "init-role"));
    for action in
        ["elasticfilesystem:ClientMount", "elasticfilesystem:ClientWrite", "elasticfilesystem:ClientRootAccess"]
    {
        assert_eq!(decide(&fs_policy, &Request::by(&task_role, action, &fs_arn)), Decision::Allowed, "{action}");
        assert_eq!(decide(&fs_policy, &Request::by(&init_role, action, &fs_arn)), Decision::Allowed, "{action}");
        assert_eq!(
            decide(&fs_policy, &Request::by(&task_role, action, &fs_arn).without_tls()),
            Decision::ExplicitDeny,
            "{action} without TLS"
        );
        assert_ne!(decide(&fs_policy, &Request::anonymous(action, &fs_arn)), Decision::Allowed, "anonymous {action}");
        assert_eq!(decide(&fs_policy, &Request::by(UNRELATED, action, &fs_arn)), Decision::ExplicitDeny, "{action}");
    }
    // AWS Backup reaches the file system through the API, not NFS: its backups are not denied.
    assert_eq!(
        decide(&fs_policy, &Request::by(&id(&state, "backup-role"), "elasticfilesystem:Backup", &fs_arn)),
        Decision::Allowed
    );

    // The vault: only the operator deletes or shortens backups, or lifts the guard.
    let vault = id(&state, "backup-vault");
    let out = emu.aws_clients().backup.get_backup_vault_access_policy().backup_vault_name(&vault).send().await.unwrap();
    let vault_policy = out.policy().unwrap().to_string();
    let point = "arn:aws:backup:us-east-1:123456789012:recovery-point:1";
    for action in
        ["backup:DeleteRecoveryPoint", "backup:UpdateRecoveryPointLifecycle", "backup:DeleteBackupVaultAccessPolicy"]
    {
        assert_eq!(decide(&vault_policy, &Request::by(UNRELATED, action, point)), Decision::ExplicitDeny, "{action}");
        assert_eq!(decide(&vault_policy, &Request::by(&operator, action, point)), Decision::Allowed, "{action}");
    }
    // Starting a backup or a restore is not guarded by the vault (the role's rights are).
    assert_eq!(decide(&vault_policy, &Request::by(UNRELATED, "backup:StartBackupJob", point)), Decision::Allowed);

    // A second admin, added by the configuration: the secret and the vault admit it after `up`.
    tool.run(&["up", "--stack", "sec", "--allowed-cidr", "203.0.113.0/24", "--admin-principal", SECOND_ADMIN, "--yes"])
        .ok();
    let policy = secret_policy(&emu, &secret).await;
    assert_eq!(decide(&policy, &Request::by(SECOND_ADMIN, read, &secret_arn)), Decision::Allowed);
    assert_eq!(decide(&policy, &Request::by(&operator, read, &secret_arn)), Decision::Allowed, "the operator stays");
    assert_eq!(decide(&policy, &Request::by(UNRELATED, read, &secret_arn)), Decision::ExplicitDeny);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_backup_role_reaches_the_stacks_file_system_and_vault_only() {
    let emu = Emulator::start();
    let c = emu.clients();
    let tool = Tool::new(&emu.endpoint);
    tool.run(&up("bk", &[])).ok();
    let state = tool.state("bk").unwrap();
    let role = id(&state, "backup-role");
    let name = role.rsplit('/').next().unwrap();
    let attached = c.iam.list_attached_role_policies().role_name(name).send().await.unwrap();
    assert!(attached.attached_policies().is_empty(), "AWS's full policies: {:?}", attached.attached_policies());
    let names = c.iam.list_role_policies().role_name(name).send().await.unwrap();
    assert_eq!(names.policy_names().len(), 1);
    let document = c.iam.get_role_policy().role_name(name).policy_name(&names.policy_names()[0]).send().await.unwrap();
    let document = common::url_decode(document.policy_document());
    // As an identity policy: what it allows is what its Allow statements name.
    let allows = |action: &str, resource: &str| {
        let request = Request { identity_allows: false, ..Request::by(&role, action, resource) };
        decide(&document.replace("\"Effect\":\"Allow\"", "\"Effect\":\"Allow\",\"Principal\":\"*\""), &request)
            == Decision::Allowed
    };
    let fs_arn = state["resources"]["file-system"]["attrs"]["arn"].as_str().unwrap().to_string();
    let other_fs = fs_arn.rsplit_once('/').map(|(head, _)| format!("{head}/fs-0ther")).unwrap();
    assert!(allows("elasticfilesystem:Backup", &fs_arn));
    assert!(!allows("elasticfilesystem:Backup", &other_fs), "another file system is backed up");
    assert!(!allows("ec2:RunInstances", "*") && !allows("iam:PassRole", "*") && !allows("rds:DeleteDBInstance", "*"));
    assert!(allows("elasticfilesystem:Restore", &other_fs), "a restore makes a new file system");

    // The job runs with these rights: a backup completes.
    tool.run(&["backup", "--stack", "bk", "--yes"]).ok();
    let listed: Value = tool.run(&["backup", "list", "--stack", "bk", "--json"]).ok().json();
    assert_eq!(listed["recovery_points"].as_array().map(Vec::len), Some(1), "{listed:#}");
}

#[tokio::test(flavor = "multi_thread")]
async fn down_lifts_the_deletion_protection_it_set_and_nothing_else_can_delete_the_load_balancer() {
    let emu = Emulator::start();
    let c = emu.clients();
    let tool = Tool::new(&emu.endpoint);
    tool.run(&up("dp", &["--ssh"])).ok();
    let state = tool.state("dp").unwrap();
    for key in ["load-balancer", "ssh-load-balancer"] {
        let arn = id(&state, key);
        let attributes = c.elb.describe_load_balancer_attributes().load_balancer_arn(&arn).send().await.unwrap();
        let protected = attributes
            .attributes()
            .iter()
            .any(|a| a.key() == Some("deletion_protection.enabled") && a.value() == Some("true"));
        assert!(protected, "{key} is not protected");
        // Another tool's delete is refused, as AWS refuses it.
        let refused = emu.aws_clients().elb.delete_load_balancer().load_balancer_arn(&arn).send().await;
        assert!(refused.is_err(), "{key} was deleted despite its protection");
    }
    let status = tool.run(&["status", "--stack", "dp"]).ok();
    assert!(status.stdout.contains("deletion-protected"), "{}", status.stdout);

    // Every stack's subnets have their tier's network ACL: SSH (on 22 here) only from the
    // allowed network; outbound open by default.
    let acl = c.ec2.describe_network_acls().network_acl_ids(id(&state, "network-acl-public")).send().await.unwrap();
    let entries = acl.network_acls()[0].entries();
    let ssh: Vec<_> = entries
        .iter()
        .filter(|e| e.egress() == Some(false) && e.rule_action().map(|a| a.as_str()) == Some("allow"))
        .filter(|e| e.port_range().is_some_and(|p| p.from() == Some(22)))
        .filter_map(|e| e.cidr_block())
        .collect();
    assert_eq!(ssh, ["203.0.113.0/24"]);
    assert!(
        entries
            .iter()
            .any(|e| e.egress() == Some(true) && e.protocol() == Some("-1") && e.cidr_block() == Some("0.0.0.0/0"))
    );

    tool.run(&["down", "--stack", "dp", "--yes"]).ok();
    assert_eq!(stack_leftovers(&c, "dp").await, Vec::<String>::new());
    assert!(emu.rules_fired().iter().any(|r| r == "load-balancer-deletion-protection"));
}

#[tokio::test(flavor = "multi_thread")]
async fn someone_outside_the_stacks_admins_is_refused_before_anything_changes_until_an_admin_names_them() {
    let emu = Emulator::start();
    let c = emu.clients();
    let tool = Tool::new(&emu.endpoint);
    tool.run(&up("op", &[])).ok();
    // A second person in the account, with their own access key.
    let user = c.iam.create_user().user_name("colleague").send().await.unwrap();
    let colleague = user.user().unwrap().arn().to_string();
    let key = c.iam.create_access_key().user_name("colleague").send().await.unwrap();
    let key = key.access_key().unwrap();
    let as_colleague =
        [("AWS_ACCESS_KEY_ID", Some(key.access_key_id())), ("AWS_SECRET_ACCESS_KEY", Some(key.secret_access_key()))];

    emu.clear_calls();
    let refused = tool.run_with(&up("op", &["--yes"]), &as_colleague).fails_with(2);
    assert!(refused.stderr.contains(&colleague) && refused.stderr.contains("admin_principals"), "{}", refused.stderr);
    assert!(emu.calls().iter().all(|call| !call.mutating), "{:?}", emu.calls());

    // The operator names them; from then on they converge the stack like the operator.
    tool.run(&up("op", &["--admin-principal", &colleague, "--yes"])).ok();
    tool.run_with(&up("op", &["--admin-principal", &colleague, "--yes"]), &as_colleague).ok();
    let state = tool.state("op").unwrap();
    let policy = secret_policy(&emu, &id(&state, "root-secret")).await;
    let read = "secretsmanager:GetSecretValue";
    assert_eq!(decide(&policy, &Request::by(&colleague, read, "*")), Decision::Allowed);
}

#[tokio::test(flavor = "multi_thread")]
async fn strict_hardening_logs_encrypts_filters_and_locks_and_down_keep_data_keeps_the_records() {
    let emu = Emulator::start();
    let c = emu.clients();
    let tool = Tool::new(&emu.endpoint);
    let plan = tool
        .run(&["plan", "--stack", "st", "--allowed-cidr", "203.0.113.0/24", "--hardening", "strict", "--json"])
        .json();
    let items: Vec<&str> =
        plan["monthly_cost"]["lines"].as_array().unwrap().iter().filter_map(|l| l["item"].as_str()).collect();
    assert!(items.iter().filter(|i| i.ends_with("(strict)")).count() == 2, "{items:?}");

    tool.run(&up("st", &["--hardening", "strict"])).ok();
    let state = tool.state("st").unwrap();
    let key_arn = state["resources"]["key"]["attrs"]["arn"].as_str().unwrap().to_string();
    let key = id(&state, "key");
    assert!(c.kms.get_key_rotation_status().key_id(&key).send().await.unwrap().key_rotation_enabled());

    // Every log group: the stack's key, a year.
    for group_key in ["log-group", "init-log-group", "insights-log-group", "exec-log-group", "waf-log-group"] {
        let name = id(&state, group_key);
        let groups = emu.aws_clients().logs.describe_log_groups().log_group_name_prefix(&name).send().await.unwrap();
        let group = groups.log_groups().iter().find(|g| g.log_group_name() == Some(name.as_str())).unwrap();
        assert_eq!(group.kms_key_id(), Some(key_arn.as_str()), "{name}");
        assert_eq!(group.retention_in_days(), Some(365), "{name}");
    }
    // The root secret: the stack's key.
    let secret = c.secrets.describe_secret().secret_id(id(&state, "root-secret")).send().await.unwrap();
    assert_eq!(secret.kms_key_id(), Some(key_arn.as_str()));

    // The log bucket: private, and the VPC's flow log and the load balancer's access logs go there.
    let bucket = id(&state, "log-bucket");
    let block = c.s3.get_public_access_block().bucket(&bucket).send().await.unwrap();
    let block = block.public_access_block_configuration().unwrap();
    assert_eq!(block.block_public_policy(), Some(true));
    assert_eq!(block.restrict_public_buckets(), Some(true));
    let vpc = id(&state, "vpc");
    let flows = c.ec2.describe_flow_logs().send().await.unwrap();
    let flow = flows.flow_logs().iter().find(|f| f.resource_id() == Some(vpc.as_str())).expect("a flow log on the VPC");
    assert_eq!(flow.log_destination(), Some(format!("arn:aws:s3:::{bucket}").as_str()));
    let lb = id(&state, "load-balancer");
    let attributes = c.elb.describe_load_balancer_attributes().load_balancer_arn(&lb).send().await.unwrap();
    let attribute = |k: &str| {
        attributes.attributes().iter().find(|a| a.key() == Some(k)).and_then(|a| a.value()).map(str::to_string)
    };
    assert_eq!(attribute("access_logs.s3.enabled").as_deref(), Some("true"));
    assert_eq!(attribute("access_logs.s3.bucket"), Some(bucket.clone()));

    // Network ACLs: each subnet in its tier's; remote desktop denied from anywhere first.
    for (acl_key, subnets) in [
        ("network-acl-public", ["subnet-public-a", "subnet-public-b"]),
        ("network-acl-private", ["subnet-private-a", "subnet-private-b"]),
    ] {
        let acl = c.ec2.describe_network_acls().network_acl_ids(id(&state, acl_key)).send().await.unwrap();
        let acl = &acl.network_acls()[0];
        let associated: Vec<&str> = acl.associations().iter().filter_map(|a| a.subnet_id()).collect();
        for subnet in subnets {
            assert!(associated.contains(&id(&state, subnet).as_str()), "{subnet} not in {acl_key}");
        }
        let mut inbound: Vec<_> =
            acl.entries().iter().filter(|e| e.egress() == Some(false) && e.cidr_block() == Some("0.0.0.0/0")).collect();
        inbound.sort_by_key(|e| e.rule_number());
        let first_for_3389 = inbound
            .iter()
            .find(|e| {
                e.protocol() == Some("-1")
                    || e.port_range().is_some_and(|p| p.from() <= Some(3389) && p.to() >= Some(3389))
            })
            .unwrap();
        assert_eq!(first_for_3389.rule_action().map(|a| a.as_str()), Some("deny"), "{acl_key}");
    }

    // The web ACL is in front of the load balancer, with AWS's common rule set.
    let attached = c.waf.get_web_acl_for_resource().resource_arn(&lb).send().await.unwrap();
    let acl = attached.web_acl().expect("a web ACL on the load balancer");
    assert_eq!(acl.arn(), id(&state, "web-acl"));
    let rule = &acl.rules()[0];
    let group = rule.statement().and_then(|s| s.managed_rule_group_statement()).unwrap();
    assert_eq!(group.name(), "AWSManagedRulesCommonRuleSet");
    assert!(group.rule_action_overrides().iter().any(|o| o.name() == "SizeRestrictions_BODY"));

    // The vault's lock.
    let vault = c.backup.describe_backup_vault().backup_vault_name(id(&state, "backup-vault")).send().await.unwrap();
    assert_eq!((vault.locked(), vault.min_retention_days()), (Some(true), Some(7)));
    let status = tool.run(&["status", "--stack", "st", "--json"]).json();
    assert_eq!(status["hardening"], "strict");

    // --keep-data keeps the key, the bucket and what they guard; everything else goes.
    tool.run(&["down", "--stack", "st", "--keep-data", "--yes"]).ok();
    assert!(c.s3.head_bucket().bucket(&bucket).send().await.is_ok(), "the log bucket went");
    let kept = c.kms.describe_key().key_id(&key).send().await.unwrap();
    assert_eq!(kept.key_metadata().unwrap().key_state().map(|s| s.as_str()), Some("Enabled"));
    assert!(
        c.waf.get_web_acl_for_resource().resource_arn(&lb).send().await.map(|o| o.web_acl.is_none()).unwrap_or(true)
    );
    assert!(
        c.ec2
            .describe_flow_logs()
            .send()
            .await
            .unwrap()
            .flow_logs()
            .iter()
            .all(|f| f.resource_id() != Some(vpc.as_str()))
    );

    // Everything, then: the key waits out AWS's 30 days, the bucket is emptied and gone.
    tool.run(&["down", "--stack", "st", "--yes"]).ok();
    assert!(c.s3.head_bucket().bucket(&bucket).send().await.is_err(), "the log bucket stayed");
    let gone = c.kms.describe_key().key_id(&key).send().await.unwrap();
    assert_eq!(gone.key_metadata().unwrap().key_state().map(|s| s.as_str()), Some("PendingDeletion"));
    assert_eq!(stack_leftovers(&c, "st").await, Vec::<String>::new());
}

// The evaluation itself, on policies whose answers are known.
const DENY_ALL_BUT: &str = r#"{"Statement":[{"Effect":"Deny","Principal":"*","Action":"secretsmanager:*","Resource":"*",
    "Condition":{"StringNotEquals":{"aws:PrincipalArn":["arn:aws:iam::1:role/a"]}}}]}"#;

#[test]
fn a_negated_condition_on_a_missing_key_denies_the_anonymous() {
    let named = Request::by("arn:aws:iam::1:role/a", "secretsmanager:GetSecretValue", "s");
    assert_eq!(decide(DENY_ALL_BUT, &named), Decision::Allowed);
    let other = Request::by("arn:aws:iam::1:role/b", "secretsmanager:GetSecretValue", "s");
    assert_eq!(decide(DENY_ALL_BUT, &other), Decision::ExplicitDeny);
    assert_eq!(decide(DENY_ALL_BUT, &Request::anonymous("secretsmanager:GetSecretValue", "s")), Decision::ExplicitDeny);
    let unnamed_action = Request::by("arn:aws:iam::1:role/b", "kms:Decrypt", "s");
    assert_eq!(decide(DENY_ALL_BUT, &unnamed_action), Decision::Allowed);
}

#[test]
fn wildcards_match_as_iam_does() {
    assert!(wildcard("elasticfilesystem:Client*", "elasticfilesystem:ClientMount", true));
    assert!(wildcard("arn:aws:s3:::b/*", "arn:aws:s3:::b/x/y", false));
    assert!(!wildcard("arn:aws:s3:::b/?", "arn:aws:s3:::b/xy", false));
}
