//! The whole GitLab stack end to end: every property read back from the emulator's AWS API,
//! or from the captured request where the emulator drops a parameter.

mod common;

use std::collections::BTreeSet;

use common::{Emulator, Tool, stack_leftovers};
use serde_json::{Value, json};

fn id(state: &Value, key: &str) -> String {
    state["resources"][key]["id"].as_str().unwrap_or_else(|| panic!("{key} has no id")).to_string()
}

fn set<T: Ord, I: IntoIterator<Item = T>>(items: I) -> BTreeSet<T> {
    items.into_iter().collect()
}

/// The ingress rules of a security group as (port, source) pairs.
async fn ingress(ec2: &aws_sdk_ec2::Client, group: &str) -> BTreeSet<(i32, String)> {
    let out = ec2.describe_security_groups().group_ids(group).send().await.unwrap();
    let mut rules = BTreeSet::new();
    for p in out.security_groups()[0].ip_permissions() {
        let port = p.from_port().unwrap_or(-1);
        for r in p.ip_ranges() {
            rules.insert((port, r.cidr_ip().unwrap().to_string()));
        }
        for g in p.user_id_group_pairs() {
            rules.insert((port, g.group_id().unwrap().to_string()));
        }
    }
    rules
}

#[tokio::test(flavor = "multi_thread")]
async fn http_stack_has_every_property_aws_would_show() {
    let emu = Emulator::start();
    let c = emu.clients();
    let tool = Tool::new(&emu.endpoint);
    let up = tool
        .run(&["up", "--stack", "web", "--allowed-cidr", "203.0.113.0/24", "--allowed-cidr", "198.51.100.7/32"])
        .ok();
    let state = tool.state("web").unwrap();
    let private = set([id(&state, "subnet-private-a"), id(&state, "subnet-private-b")]);
    let public = set([id(&state, "subnet-public-a"), id(&state, "subnet-public-b")]);

    // Root credentials: generated, in Secrets Manager only.
    let secret = c.secrets.get_secret_value().secret_id(id(&state, "root-secret")).send().await.unwrap();
    let value: Value = serde_json::from_str(secret.secret_string().unwrap()).unwrap();
    assert_eq!(value["email"], "admin@example.com");
    let password = value["password"].as_str().unwrap().to_string();
    assert!(password.len() >= 20, "{} characters", password.len());
    let state_text = std::fs::read_to_string(tool.state_path("web")).unwrap();
    let status_text = tool.run(&["status", "--stack", "web"]).ok();
    for (what, text) in
        [("up stdout", &up.stdout), ("up stderr", &up.stderr), ("state", &state_text), ("status", &status_text.stdout)]
    {
        assert!(!text.contains(&password), "the password leaked into {what}");
    }
    let printed = tool.run(&["password", "--stack", "web"]).ok();
    assert_eq!(printed.stdout, format!("{password}\n"));

    // EFS: encrypted, elastic, backed up, a mount target in each private subnet.
    let fs_id = id(&state, "file-system");
    let fs = c.efs.describe_file_systems().file_system_id(&fs_id).send().await.unwrap().file_systems()[0].clone();
    assert_eq!(fs.encrypted(), Some(true));
    assert_eq!(fs.throughput_mode().map(|m| m.as_str()), Some("elastic"));
    let backup = c.efs.describe_backup_policy().file_system_id(&fs_id).send().await.unwrap();
    assert_eq!(backup.backup_policy().map(|p| p.status().as_str()), Some("ENABLED"));
    let mounts = c.efs.describe_mount_targets().file_system_id(&fs_id).send().await.unwrap();
    assert_eq!(set(mounts.mount_targets().iter().map(|m| m.subnet_id().to_string())), private);
    let efs_group = id(&state, "efs-security-group");
    for m in mounts.mount_targets() {
        let groups =
            c.efs.describe_mount_target_security_groups().mount_target_id(m.mount_target_id()).send().await.unwrap();
        assert_eq!(groups.security_groups(), std::slice::from_ref(&efs_group));
    }
    // NFS only from GitLab's and the initializer's groups.
    assert_eq!(
        ingress(&c.ec2, &efs_group).await,
        set([(2049, id(&state, "service-security-group")), (2049, id(&state, "init-security-group"))])
    );
    assert_eq!(
        ingress(&c.ec2, &id(&state, "service-security-group")).await,
        set([(80, id(&state, "alb-security-group"))])
    );
    assert_eq!(ingress(&c.ec2, &id(&state, "init-security-group")).await, set([]));

    // Load balancer: internet-facing, public subnets, listener ports from allowed_cidrs only.
    let lb_arn = id(&state, "load-balancer");
    let lb =
        c.elb.describe_load_balancers().load_balancer_arns(&lb_arn).send().await.unwrap().load_balancers()[0].clone();
    assert_eq!(lb.scheme().map(|s| s.as_str()), Some("internet-facing"));
    assert_eq!(set(lb.availability_zones().iter().map(|z| z.subnet_id().unwrap().to_string())), public);
    assert_eq!(
        ingress(&c.ec2, &id(&state, "alb-security-group")).await,
        set([(80, "203.0.113.0/24".to_string()), (80, "198.51.100.7/32".to_string())])
    );
    let attributes = c.elb.describe_load_balancer_attributes().load_balancer_arn(&lb_arn).send().await.unwrap();
    let attr = |k: &str| {
        attributes.attributes().iter().find(|a| a.key() == Some(k)).and_then(|a| a.value()).map(str::to_string)
    };
    assert!(attr("idle_timeout.timeout_seconds").unwrap().parse::<u32>().unwrap() >= 300);
    assert_eq!(attr("routing.http.drop_invalid_header_fields.enabled").as_deref(), Some("true"));
    let tg = c
        .elb
        .describe_target_groups()
        .target_group_arns(id(&state, "target-group"))
        .send()
        .await
        .unwrap()
        .target_groups()[0]
        .clone();
    assert_eq!(tg.target_type().map(|t| t.as_str()), Some("ip"));
    assert_eq!((tg.protocol().map(|p| p.as_str()), tg.port()), (Some("HTTP"), Some(80)));
    assert_eq!(tg.health_check_path(), Some("/-/readiness"));
    let unhealthy_after = tg.health_check_interval_seconds().unwrap() * tg.unhealthy_threshold_count().unwrap();
    // Checked every 10 s so a woken GitLab takes traffic within 20 s; a running one that stops
    // answering is replaced after 100 s of failures (ELB's most, 10), not at its first hiccup.
    assert_eq!(tg.health_check_interval_seconds().unwrap() * tg.healthy_threshold_count().unwrap(), 20);
    assert!(unhealthy_after >= 100, "a slow GitLab is declared unhealthy after {unhealthy_after}s");
    assert!(tg.health_check_timeout_seconds().unwrap() < tg.health_check_interval_seconds().unwrap());
    let listeners = c.elb.describe_listeners().load_balancer_arn(&lb_arn).send().await.unwrap();
    assert_eq!(listeners.listeners().len(), 1);
    let http = &listeners.listeners()[0];
    assert_eq!((http.port(), http.protocol().map(|p| p.as_str())), (Some(80), Some("HTTP")));
    assert_eq!(http.default_actions()[0].target_group_arn(), tg.target_group_arn());

    // IAM scoped to this stack's ARNs.
    let policy = |role: &str| {
        let iam = c.iam.clone();
        let role = role.to_string();
        async move {
            let out = iam.get_role_policy().role_name(&role).policy_name("gitlab-provision").send().await.unwrap();
            let doc = out.policy_document().to_string();
            common::url_decode(&doc)
        }
    };
    let execution = policy("web-us-east-1-execution-role").await;
    assert!(
        execution.contains(&id(&state, "root-secret")) && execution.contains("/gitlab-provision/web/gitlab"),
        "{execution}"
    );
    assert!(!execution.contains("\"Resource\":\"*\""), "{execution}");
    let task = policy("web-us-east-1-task-role").await;
    assert!(
        task.contains(fs.file_system_arn().unwrap())
            && task.contains("ClientRootAccess")
            && task.contains("ssmmessages:CreateControlChannel"),
        "{task}"
    );
    let attached = c.iam.list_attached_role_policies().role_name("web-us-east-1-init-role").send().await.unwrap();
    assert!(attached.attached_policies().iter().any(|p| p.policy_name() == Some("AWSLambdaVPCAccessExecutionRole")));

    // Logs kept a year, encrypted with the stack's own key.
    let groups = c.logs.describe_log_groups().log_group_name_prefix("/gitlab-provision/web/").send().await.unwrap();
    assert_eq!(groups.log_groups()[0].retention_in_days(), Some(365));
    let key = state["resources"]["key"]["attrs"]["arn"].as_str().unwrap();
    assert_eq!(groups.log_groups()[0].kms_key_id(), Some(key));

    // ECS: cluster, task definition, service.
    let cluster = c
        .ecs
        .describe_clusters()
        .clusters("web")
        .include(aws_sdk_ecs::types::ClusterField::Settings)
        .send()
        .await
        .unwrap()
        .clusters()[0]
        .clone();
    assert!(
        cluster
            .settings()
            .iter()
            .any(|s| s.name().map(|n| n.as_str()) == Some("containerInsights") && s.value() == Some("enabled"))
    );
    let td = c
        .ecs
        .describe_task_definition()
        .task_definition(id(&state, "task-definition"))
        .send()
        .await
        .unwrap()
        .task_definition
        .unwrap();
    assert_eq!((td.cpu(), td.memory()), (Some("2048"), Some("6144")));
    assert_eq!(td.network_mode().map(|m| m.as_str()), Some("awsvpc"));
    let container = &td.container_definitions()[0];
    assert_eq!(container.image(), Some("gitlab/gitlab-ce:19.4.1-ce.0"));
    let env: Vec<&str> = container.environment().iter().filter_map(|e| e.name()).collect();
    assert_eq!(env, ["GITLAB_OMNIBUS_CONFIG"], "the password must come from the secret, not the environment");
    let omnibus = container.environment()[0].value().unwrap();
    assert!(omnibus.contains(&format!("external_url 'http://{}'", lb.dns_name().unwrap())), "{omnibus}");
    assert!(omnibus.contains("monitoring_whitelist'] = ['127.0.0.0/8', '10.0.0.0/16']"), "{omnibus}");
    let secrets: Vec<(&str, &str)> = container.secrets().iter().map(|s| (s.name(), s.value_from())).collect();
    let secret_arn = id(&state, "root-secret");
    assert!(secrets.contains(&("GITLAB_ROOT_PASSWORD", &format!("{secret_arn}:password::"))), "{secrets:?}");
    assert!(secrets.contains(&("GITLAB_ROOT_EMAIL", &format!("{secret_arn}:email::"))), "{secrets:?}");
    let mounts: BTreeSet<(String, String)> = container
        .mount_points()
        .iter()
        .map(|m| (m.source_volume().unwrap().to_string(), m.container_path().unwrap().to_string()))
        .collect();
    let volumes: BTreeSet<(String, String)> = td
        .volumes()
        .iter()
        .map(|v| {
            let efs = v.efs_volume_configuration().expect("an EFS volume");
            assert_eq!(efs.file_system_id(), fs_id);
            assert_eq!(efs.transit_encryption().map(|t| t.as_str()), Some("ENABLED"));
            let auth = efs.authorization_config().expect("authorization config");
            assert_eq!(auth.iam().map(|i| i.as_str()), Some("ENABLED"));
            assert!(auth.access_point_id().is_none(), "GitLab mounts without an access point");
            (v.name().unwrap().to_string(), efs.root_directory().unwrap().to_string())
        })
        .collect();
    let paths: BTreeSet<(String, String)> = volumes
        .iter()
        .map(|(name, root)| (root.clone(), mounts.iter().find(|(v, _)| v == name).unwrap().1.clone()))
        .collect();
    assert_eq!(
        paths,
        set([
            ("/srv/gitlab/config".to_string(), "/etc/gitlab".to_string()),
            ("/srv/gitlab/data".to_string(), "/var/opt/gitlab".to_string()),
            ("/srv/gitlab/logs".to_string(), "/var/log/gitlab".to_string()),
        ])
    );

    let service =
        c.ecs.describe_services().cluster("web").services("gitlab").send().await.unwrap().services()[0].clone();
    assert_eq!(service.desired_count(), 1);
    assert_eq!(service.launch_type().map(|l| l.as_str()), Some("FARGATE"));
    let vpc_conf = service.network_configuration().unwrap().awsvpc_configuration().unwrap();
    assert_eq!(set(vpc_conf.subnets().iter().cloned()), private);
    assert_eq!(vpc_conf.assign_public_ip().map(|a| a.as_str()), Some("DISABLED"));
    assert_eq!(service.load_balancers()[0].target_group_arn(), tg.target_group_arn());
    // The emulator drops these; the request the tool sent must carry them.
    let created = emu.bodies("CreateService");
    // The account's first service: ECS's service-linked role not assumable yet, refused once
    // (as AWS does) and retried.
    let refused = emu.calls().iter().filter(|c| c.action == "CreateService" && c.refused.is_some()).count();
    assert_eq!((created.len(), refused), (2, 1));
    let created = &created[1..];
    let deployment = &created[0]["deploymentConfiguration"];
    assert_eq!(
        (deployment["minimumHealthyPercent"].as_i64(), deployment["maximumPercent"].as_i64()),
        (Some(0), Some(100))
    );
    assert_eq!(deployment["deploymentCircuitBreaker"], json!({"enable": true, "rollback": true}));
    assert!(created[0]["healthCheckGracePeriodSeconds"].as_i64().unwrap() >= 540);
    assert_eq!(created[0]["enableExecuteCommand"], true);

    // The initializer ran the real handler on the (emulated) file system, then was deleted.
    let file_system = id(&state, "file-system");
    for dir in ["data", "logs", "config"] {
        assert!(emu.efs_dir(&file_system).join("srv/gitlab").join(dir).is_dir(), "{dir} not created");
    }
    assert!(
        c.lambda.get_function().function_name("web-efs-init").send().await.is_err(),
        "the initializer should be deleted"
    );
    let function = &emu.bodies("POST /2015-03-31/functions")[0];
    assert!(function["Runtime"].as_str().unwrap().starts_with("python3.1"), "{}", function["Runtime"]);
    assert_eq!(
        set(function["VpcConfig"]["SubnetIds"].as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_string())),
        private
    );
    // It mounted through a root access point, which (with its role's file-system rights) is
    // gone once it has run: nothing outlives the initializer but the "prepared" marker.
    let created = &emu.bodies("POST /2015-02-01/access-points")[0];
    assert_eq!(created["PosixUser"]["Uid"], 0);
    assert_eq!(created["RootDirectory"]["Path"], "/");
    assert!(function["FileSystemConfigs"][0]["Arn"].as_str().unwrap().contains(":access-point/fsap-"), "{function}");
    assert_eq!(c.efs.describe_access_points().file_system_id(&fs_id).send().await.unwrap().access_points().len(), 0);
    assert!(
        state["resources"].get("init-access-point").is_none() && state["resources"].get("init-role-policy").is_none()
    );
    let init_rights = c
        .iam
        .get_role_policy()
        .role_name("web-us-east-1-init-role")
        .policy_name("gitlab-provision-efs-init")
        .send()
        .await;
    assert!(init_rights.is_err(), "the initializer's file-system rights outlived it");

    // status for an operator.
    let status = tool.run(&["status", "--stack", "web", "--json"]).ok().json();
    assert!(status["resources"].as_array().unwrap().iter().all(|r| r["live"] == "ok"), "{status:#}");
    assert_eq!(status["gitlab"]["url"], format!("http://{}", lb.dns_name().unwrap()));
    assert_eq!(status["gitlab"]["desired"], 1);

    // Converged: nothing changes on a second up.
    emu.clear_calls();
    tool.run(&["up", "--stack", "web", "--allowed-cidr", "203.0.113.0/24", "--allowed-cidr", "198.51.100.7/32"]).ok();
    let mutating: Vec<String> = emu.calls().into_iter().filter(|c| c.mutating).map(|c| c.action).collect();
    assert_eq!(mutating, Vec::<String>::new());

    tool.run(&["down", "--stack", "web", "--yes"]).ok();
    assert_eq!(stack_leftovers(&c, "web").await, Vec::<String>::new());
}

/// IAM returns policy documents URL-encoded.
async fn hosted_zone(c: &common::Clients, name: &str) -> String {
    let out = c.route53.create_hosted_zone().name(name).caller_reference(format!("test-{name}")).send().await.unwrap();
    out.hosted_zone().unwrap().id().trim_start_matches("/hostedzone/").to_string()
}

async fn records(c: &common::Clients, zone: &str) -> Vec<(String, String)> {
    let out = c.route53.list_resource_record_sets().hosted_zone_id(zone).send().await.unwrap();
    out.resource_record_sets().iter().map(|r| (r.name().to_string(), r.r#type().as_str().to_string())).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn https_stack_validates_a_certificate_and_points_dns_at_the_load_balancer() {
    let emu = Emulator::start();
    let c = emu.clients();
    let zone = hosted_zone(&c, "example.com").await;
    let tool = Tool::new(&emu.endpoint);
    let domain = ["--domain-name", "example.com", "--sub-domain", "git", "--hosted-zone-id", &zone];
    let mut up = vec!["up", "--stack", "sec", "--allowed-cidr", "203.0.113.0/24"];
    up.extend(domain);
    tool.run(&up).ok();
    let state = tool.state("sec").unwrap();

    let cert_arn = id(&state, "certificate");
    let cert = c.acm.describe_certificate().certificate_arn(&cert_arn).send().await.unwrap().certificate.unwrap();
    assert_eq!(cert.domain_name(), Some("git.example.com"));
    assert_eq!(cert.status().map(|s| s.as_str()), Some("ISSUED"));
    let validation = cert.domain_validation_options()[0].resource_record().unwrap();
    let names = records(&c, &zone).await;
    assert!(names.contains(&(validation.name().to_string(), "CNAME".to_string())), "{names:?}");

    let lb_arn = id(&state, "load-balancer");
    let lb =
        c.elb.describe_load_balancers().load_balancer_arns(&lb_arn).send().await.unwrap().load_balancers()[0].clone();
    let alias = c
        .route53
        .list_resource_record_sets()
        .hosted_zone_id(&zone)
        .start_record_name("git.example.com.")
        .start_record_type(aws_sdk_route53::types::RrType::A)
        .send()
        .await
        .unwrap();
    let a = alias
        .resource_record_sets()
        .iter()
        .find(|r| r.name() == "git.example.com." && r.r#type().as_str() == "A")
        .expect("alias record");
    assert!(a.alias_target().unwrap().dns_name().contains(lb.dns_name().unwrap()), "{a:?}");

    let listeners = c.elb.describe_listeners().load_balancer_arn(&lb_arn).send().await.unwrap();
    let by_port = |port: i32| listeners.listeners().iter().find(|l| l.port() == Some(port)).unwrap().clone();
    let https = by_port(443);
    assert_eq!(https.protocol().map(|p| p.as_str()), Some("HTTPS"));
    assert!(https.ssl_policy().unwrap().starts_with("ELBSecurityPolicy-TLS13-"), "{:?}", https.ssl_policy());
    assert_eq!(https.certificates()[0].certificate_arn(), Some(cert_arn.as_str()));
    assert_eq!(https.default_actions()[0].target_group_arn(), Some(id(&state, "target-group").as_str()));
    let http = by_port(80);
    let redirect = http.default_actions()[0].redirect_config().expect("a redirect");
    assert_eq!((redirect.protocol(), redirect.port()), (Some("HTTPS"), Some("443")));
    assert_eq!(redirect.status_code().map(|s| s.as_str()), Some("HTTP_301"));
    assert_eq!(
        ingress(&c.ec2, &id(&state, "alb-security-group")).await,
        set([(80, "203.0.113.0/24".to_string()), (443, "203.0.113.0/24".to_string())])
    );

    let td = c
        .ecs
        .describe_task_definition()
        .task_definition(id(&state, "task-definition"))
        .send()
        .await
        .unwrap()
        .task_definition
        .unwrap();
    let omnibus = td.container_definitions()[0].environment()[0].value().unwrap().to_string();
    for line in ["external_url 'https://git.example.com'", "nginx['listen_port'] = 80", "nginx['listen_https'] = false"]
    {
        assert!(omnibus.contains(line), "{line} missing from {omnibus}");
    }
    let status = tool.run(&["status", "--stack", "sec", "--json"]).ok().json();
    assert_eq!(status["gitlab"]["url"], "https://git.example.com");

    tool.run(&["down", "--stack", "sec", "--yes"]).ok();
    let left: Vec<(String, String)> =
        records(&c, &zone).await.into_iter().filter(|(_, t)| t != "NS" && t != "SOA").collect();
    assert_eq!(left, Vec::<(String, String)>::new(), "down must remove the records it wrote");
    assert_eq!(stack_leftovers(&c, "sec").await, Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hosted_zone_that_does_not_serve_the_domain_is_refused_before_anything_is_created() {
    let emu = Emulator::start();
    let c = emu.clients();
    let other = hosted_zone(&c, "other.org").await;
    let tool = Tool::new(&emu.endpoint);
    for (zone, expected) in [(other.as_str(), "serves other.org"), ("Z0000000000000000000A", "no such hosted zone")] {
        let run = tool
            .run(&[
                "up",
                "--stack",
                "zone",
                "--allowed-cidr",
                "203.0.113.0/24",
                "--domain-name",
                "example.com",
                "--sub-domain",
                "git",
                "--hosted-zone-id",
                zone,
            ])
            .fails_with(2);
        assert!(run.stderr.contains("hosted_zone_id") && run.stderr.contains(expected), "{}", run.stderr);
        assert!(run.stderr.contains("nothing was created"), "{}", run.stderr);
    }
    let mutating: Vec<String> = emu.calls().into_iter().filter(|c| c.mutating).map(|c| c.action).collect();
    assert_eq!(mutating, Vec::<String>::new());
    assert!(tool.state("zone").is_none(), "a refused up writes no state");
}

#[tokio::test(flavor = "multi_thread")]
async fn image_tag_size_and_cidr_changes_converge_in_place() {
    let emu = Emulator::start();
    let c = emu.clients();
    let tool = Tool::new(&emu.endpoint);
    tool.run(&["up", "--stack", "chg", "--allowed-cidr", "203.0.113.0/24"]).ok();
    let before = tool.state("chg").unwrap();

    // plan says what the edit would change, and changes nothing.
    emu.clear_calls();
    let changed = [
        "--stack",
        "chg",
        "--allowed-cidr",
        "192.0.2.0/24",
        "--gitlab-image-tag",
        "19.4.2-ce.0",
        "--task-memory-mib",
        "8192",
    ];
    let mut plan_args = vec!["plan", "--json"];
    plan_args.extend(changed);
    let plan = tool.run(&plan_args).ok().json();
    let action = |key: &str| {
        let r = plan["steps"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|s| s["resources"].as_array().unwrap().clone())
            .find(|r| r["key"] == key)
            .unwrap();
        (r["action"].as_str().unwrap().to_string(), r["detail"].as_str().unwrap().to_string())
    };
    let (td_action, td_detail) = action("task-definition");
    assert_eq!(td_action, "update");
    assert!(td_detail.contains("19.4.2-ce.0") && td_detail.contains("memory 6144 -> 8192"), "{td_detail}");
    assert_eq!(action("service").0, "update");
    let (sg_action, sg_detail) = action("alb-security-group");
    assert_eq!(sg_action, "update");
    assert!(
        sg_detail.contains("+tcp:80-80:192.0.2.0/24") && sg_detail.contains("-tcp:80-80:203.0.113.0/24"),
        "{sg_detail}"
    );
    assert_eq!(action("file-system").0, "keep");
    assert_eq!(action("root-secret").0, "keep");
    assert!(emu.calls().iter().all(|c| !c.mutating), "plan must change nothing");
    // Replacing GitLab's task interrupts it: without a terminal that takes --yes.
    let mut up_args = vec!["up"];
    up_args.extend(changed);
    let refused = tool.run(&up_args).fails_with(2);
    assert!(
        refused.stderr.contains("GitLab's task is replaced") && refused.stderr.contains("--yes"),
        "{}",
        refused.stderr
    );
    assert!(emu.calls().iter().all(|c| !c.mutating), "a refused up changes nothing");
    emu.clear_calls();
    tool.run(&[
        "up",
        "--yes",
        "--stack",
        "chg",
        "--allowed-cidr",
        "192.0.2.0/24",
        "--gitlab-image-tag",
        "19.4.2-ce.0",
        "--task-memory-mib",
        "8192",
    ])
    .ok();
    let after = tool.state("chg").unwrap();

    for key in ["file-system", "root-secret", "load-balancer", "cluster"] {
        assert_eq!(id(&before, key), id(&after, key), "{key} must not be replaced");
    }
    let actions: Vec<String> = emu.calls().into_iter().filter(|c| c.mutating).map(|c| c.action).collect();
    for forbidden in ["CreateFileSystem", "DeleteFileSystem", "CreateSecret", "DeleteSecret", "PutSecretValue"] {
        assert!(!actions.iter().any(|a| a == forbidden), "{forbidden} in {actions:?}");
    }
    let td_arn = id(&after, "task-definition");
    assert_ne!(td_arn, id(&before, "task-definition"));
    let td = c.ecs.describe_task_definition().task_definition(&td_arn).send().await.unwrap().task_definition.unwrap();
    assert_eq!(td.container_definitions()[0].image(), Some("gitlab/gitlab-ce:19.4.2-ce.0"));
    assert_eq!(td.memory(), Some("8192"));
    let service =
        c.ecs.describe_services().cluster("chg").services("gitlab").send().await.unwrap().services()[0].clone();
    assert_eq!(service.task_definition(), Some(td_arn.as_str()));
    let updated = emu.bodies("UpdateService");
    assert_eq!(
        updated[0]["deploymentConfiguration"]["maximumPercent"], 100,
        "a deploy must never run two GitLabs on one file system"
    );
    assert_eq!(ingress(&c.ec2, &id(&after, "alb-security-group")).await, set([(80, "192.0.2.0/24".to_string())]));

    tool.run(&["down", "--stack", "chg", "--yes"]).ok();
    assert_eq!(stack_leftovers(&c, "chg").await, Vec::<String>::new(), "every task definition revision goes too");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_stack_runs_in_an_imported_vpc_and_leaves_it_behind() {
    let emu = Emulator::start();
    let c = emu.clients();
    let (vpc, subnets) = common::existing_vpc(&c.ec2, true).await;
    let tool = Tool::new(&emu.endpoint);
    tool.run(&["up", "--stack", "imp", "--allowed-cidr", "203.0.113.0/24", "--vpc-id", &vpc]).ok();
    let state = tool.state("imp").unwrap();
    let lb = c
        .elb
        .describe_load_balancers()
        .load_balancer_arns(id(&state, "load-balancer"))
        .send()
        .await
        .unwrap()
        .load_balancers()[0]
        .clone();
    assert_eq!(lb.vpc_id(), Some(vpc.as_str()));
    assert_eq!(
        set(lb.availability_zones().iter().map(|z| z.subnet_id().unwrap().to_string())),
        set(subnets[..2].iter().cloned())
    );
    let mounts = c.efs.describe_mount_targets().file_system_id(id(&state, "file-system")).send().await.unwrap();
    assert_eq!(
        set(mounts.mount_targets().iter().map(|m| m.subnet_id().to_string())),
        set(subnets[2..].iter().cloned())
    );
    let td = c
        .ecs
        .describe_task_definition()
        .task_definition(id(&state, "task-definition"))
        .send()
        .await
        .unwrap()
        .task_definition
        .unwrap();
    assert!(
        td.container_definitions()[0].environment()[0].value().unwrap().contains("'172.31.0.0/16'"),
        "the imported VPC's CIDR is whitelisted"
    );

    tool.run(&["down", "--stack", "imp", "--yes"]).ok();
    assert_eq!(stack_leftovers(&c, "imp").await, Vec::<String>::new());
    assert_eq!(c.ec2.describe_vpcs().vpc_ids(&vpc).send().await.unwrap().vpcs().len(), 1);
    assert_eq!(c.ec2.describe_subnets().subnet_ids(&subnets[3]).send().await.unwrap().subnets().len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_initializer_error_fails_the_step_with_the_functions_message_and_up_resumes() {
    let emu = Emulator::start();
    let c = emu.clients();
    // A first run that stops before the initializer (its access point refused once), so the
    // file system exists and can be spoiled: a file where the initializer must create a directory.
    emu.set_faults(json!([{"action": "POST /2015-02-01/access-points", "status": 400, "code": "AccessPointLimitExceeded", "times": 1}]));
    let tool = Tool::new(&emu.endpoint);
    tool.run(&["up", "--stack", "init", "--allowed-cidr", "203.0.113.0/24"]).fails_with(1);
    let efs = emu.efs_dir(&id(&tool.state("init").unwrap(), "file-system"));
    std::fs::create_dir_all(efs.join("srv/gitlab")).unwrap();
    std::fs::write(efs.join("srv/gitlab/data"), "not a directory").unwrap();
    let run = tool.run(&["up", "--stack", "init", "--allowed-cidr", "203.0.113.0/24"]).fails_with(1);
    assert!(run.stderr.contains("the EFS initializer failed") && run.stderr.contains("File exists"), "{}", run.stderr);
    let state = tool.state("init").unwrap();
    assert!(state["resources"].get("service").is_none(), "GitLab must not start on an unprepared file system");
    assert!(state["resources"].get("efs-prepared").is_none_or(|m| m["status"] != "created"), "not marked prepared");

    std::fs::remove_file(efs.join("srv/gitlab/data")).unwrap();
    tool.run(&["up", "--stack", "init", "--allowed-cidr", "203.0.113.0/24"]).ok();
    assert!(efs.join("srv/gitlab/data").is_dir());
    let state = tool.state("init").unwrap();
    // The failed run stopped at data; this one creates all three.
    assert_eq!(
        state["resources"]["efs-prepared"]["attrs"]["created"],
        serde_json::json!(["srv/gitlab/data", "srv/gitlab/logs", "srv/gitlab/config"])
    );
    tool.run(&["down", "--stack", "init", "--yes"]).ok();
    assert_eq!(stack_leftovers(&c, "init").await, Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread")]
async fn down_waits_out_and_removes_lingering_lambda_interfaces() {
    let emu = Emulator::start();
    let c = emu.clients();
    let tool = Tool::new(&emu.endpoint);
    tool.run(&["up", "--stack", "eni", "--allowed-cidr", "203.0.113.0/24"]).ok();
    let state = tool.state("eni").unwrap();
    // What Lambda leaves behind in a VPC for many minutes after the function is gone.
    let eni = c
        .ec2
        .create_network_interface()
        .subnet_id(id(&state, "subnet-private-a"))
        .groups(id(&state, "init-security-group"))
        .description("AWS Lambda VPC ENI-eni-efs-init-0000")
        .send()
        .await
        .unwrap()
        .network_interface()
        .unwrap()
        .network_interface_id()
        .unwrap()
        .to_string();
    let down = tool.run(&["down", "--stack", "eni", "--yes"]).ok();
    assert!(down.stderr.contains("Lambda network interface"), "{}", down.stderr);
    assert!(
        c.ec2.describe_network_interfaces().network_interface_ids(&eni).send().await.is_err(),
        "the interface should be gone"
    );
    assert_eq!(stack_leftovers(&c, "eni").await, Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread")]
async fn under_the_latency_model_every_pending_resource_is_waited_for() {
    // AWS's durations x 1/100: NAT gateway 0.9 s, load balancer 1.5 s, mount targets 0.8 s,
    // function 0.6 s. A tool that forgot to wait would pass against the bare emulator.
    let emu = Emulator::start_with(&["--model-scale", "0.01"]);
    let tool = Tool::new(&emu.endpoint);
    tool.run(&[
        "up",
        "--stack",
        "slow",
        "--allowed-cidr",
        "203.0.113.0/24",
        "--egress",
        "nat-gateway",
        "--timings",
        "t.json",
    ])
    .ok();
    let timings: Value =
        serde_json::from_str(&std::fs::read_to_string(tool.dir.path().join("t.json")).unwrap()).unwrap();
    let step = |name: &str| timings["timings"].as_array().unwrap().iter().find(|t| t["step"] == name).unwrap().clone();
    let took = |name: &str| step(name)["finish"].as_f64().unwrap() - step(name)["start"].as_f64().unwrap();
    for (name, at_least) in [("nat-gateway", 0.9), ("mount-targets", 0.8), ("efs-prepared", 0.6)] {
        assert!(took(name) >= at_least, "{name} took {:.2}s, less than AWS keeps it pending ({at_least}s)", took(name));
    }
    // What needs them starts only once they are ready.
    assert!(step("route-table-private")["start"].as_f64().unwrap() >= step("nat-gateway")["finish"].as_f64().unwrap());
    assert!(step("efs-prepared")["start"].as_f64().unwrap() >= step("mount-targets")["finish"].as_f64().unwrap());
    // GitLab's task does not wait for the load balancer to provision (1.5 s here): its listener
    // and the service are created while it does, and the service as soon as the file system is
    // prepared.
    let lb_created = step("load-balancer")["start"].as_f64().unwrap();
    assert!(step("listener-http")["start"].as_f64().unwrap() < lb_created + 1.5, "{timings:#}");
    assert!(step("service")["start"].as_f64().unwrap() >= step("efs-prepared")["finish"].as_f64().unwrap());
    assert!(took("load-balancer") < 1.5, "the load balancer's step waited for it: {:.2}s", took("load-balancer"));
    let status = tool.run(&["status", "--stack", "slow", "--json"]).ok().json();
    assert!(status["resources"].as_array().unwrap().iter().all(|r| r["live"] == "ok"), "{status:#}");
    tool.run(&["down", "--stack", "slow", "--yes"]).ok();
}

#[tokio::test(flavor = "multi_thread")]
async fn up_wait_follows_the_task_through_its_first_boot_until_the_load_balancer_reports_gitlab_healthy() {
    // The strict model runs the task as Fargate would: provisioning, the image pull, GitLab's
    // first boot on EFS (11 minutes at AWS's pace, past ECS's usual 600 s grace), the target's
    // initial checks; ECS registers the task with the target group once it runs.
    let emu = Emulator::start();
    let c = emu.clients();
    let tool = Tool::new(&emu.endpoint);
    let run = tool.run(&["up", "--stack", "wait", "--allowed-cidr", "203.0.113.0/24", "--wait"]).ok();
    assert!(run.stderr.contains("GitLab: provisioning") || run.stderr.contains("GitLab: pending"), "{}", run.stderr);
    assert!(run.stderr.contains("GitLab: running") && run.stderr.contains("reports GitLab healthy"), "{}", run.stderr);
    // The live line puts what changes first, and fits 80 columns with its prefix.
    for line in run.stderr.lines().filter(|l| l.contains("waiting for GitLab:")) {
        assert!(line.chars().count() <= 80, "{} columns: {line}", line.chars().count());
    }
    // One task, never replaced mid-boot: the grace period covers the first boot.
    let tasks = emu.rules_fired().iter().filter(|rule| *rule == "failed-health-checks").count();
    assert_eq!(tasks, 0, "a task was stopped for failing health checks during its first boot");
    let tg = id(&tool.state("wait").unwrap(), "target-group");
    let aws = emu.aws_clients();
    let health = aws.elb.describe_target_health().target_group_arn(&tg).send().await.unwrap();
    let states: Vec<_> =
        health.target_health_descriptions().iter().filter_map(|t| t.target_health()?.state().cloned()).collect();
    assert_eq!(states, vec![aws_sdk_elasticloadbalancingv2::types::TargetHealthStateEnum::Healthy]);
    let status = tool.run(&["status", "--stack", "wait"]).ok();
    assert!(status.stdout.starts_with("GitLab healthy at http://"), "{}", status.stdout);
    tool.run(&["down", "--stack", "wait", "--yes"]).ok();
    assert_eq!(stack_leftovers(&c, "wait").await, Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread")]
async fn up_wait_gives_up_as_soon_as_tasks_keep_failing_and_says_why() {
    // A first boot longer than the grace period: ECS stops each task when its health checks
    // fail, three times, then the circuit breaker fails the deployment. `up --wait` must say so
    // with the stopped reason, not wait out its 45 minutes.
    let emu = Emulator::start();
    emu.set_control(json!({"gitlab_first_boot": 4000}));
    let tool = Tool::new(&emu.endpoint);
    let started = std::time::Instant::now();
    let run = tool.run(&["up", "--stack", "boot", "--allowed-cidr", "203.0.113.0/24", "--wait"]).fails_with(1);
    assert!(run.stderr.contains("GitLab did not come up"), "{}", run.stderr);
    assert!(run.stderr.contains("Task failed ELB health checks"), "{}", run.stderr);
    assert!(started.elapsed() < std::time::Duration::from_secs(120), "it waited {:?}", started.elapsed());
    let status = tool.run(&["status", "--stack", "boot", "--check"]).fails_with(3);
    assert!(status.stdout.contains("Task failed ELB health checks"), "{}", status.stdout);

    // An image that cannot be pulled (Docker Hub's anonymous limit): the reason reaches the user.
    let emu = Emulator::start();
    emu.set_control(json!({"pull_error": "toomanyrequests: You have reached your unauthenticated pull rate limit."}));
    let tool = Tool::new(&emu.endpoint);
    let run = tool.run(&["up", "--stack", "pull", "--allowed-cidr", "203.0.113.0/24", "--wait"]).fails_with(1);
    assert!(run.stderr.contains("CannotPullContainerError: toomanyrequests"), "{}", run.stderr);
}
