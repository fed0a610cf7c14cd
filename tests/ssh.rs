//! Git over SSH: a network load balancer on the SSH port, GitLab's port 22 behind it, host keys
//! on the file system. Every property read back through the AWS API (or, where moto drops a
//! parameter, from the request the tool sent).

mod common;

use std::collections::BTreeSet;

use common::{Emulator, Tool, existing_vpc, id, last_registered, omnibus, stack_leftovers};
use serde_json::Value;

async fn hosted_zone(c: &common::Clients, name: &str) -> String {
    let out = c.route53.create_hosted_zone().name(name).caller_reference(format!("ssh-{name}")).send().await.unwrap();
    out.hosted_zone().unwrap().id().trim_start_matches("/hostedzone/").to_string()
}

async fn ingress(c: &common::Clients, group: &str) -> BTreeSet<(i32, String)> {
    let out = c.ec2.describe_security_groups().group_ids(group).send().await.unwrap();
    let mut rules = BTreeSet::new();
    for p in out.security_groups()[0].ip_permissions() {
        for r in p.ip_ranges() {
            rules.insert((p.from_port().unwrap_or(-1), r.cidr_ip().unwrap_or_default().to_string()));
        }
        for g in p.user_id_group_pairs() {
            rules.insert((p.from_port().unwrap_or(-1), g.group_id().unwrap_or_default().to_string()));
        }
    }
    rules
}

fn host_key(emu: &Emulator, state: &Value) -> String {
    let config = emu.efs_dir(&id(state, "file-system")).join("srv/gitlab/config/ssh_host_ed25519_key");
    std::fs::read_to_string(&config).unwrap_or_else(|e| panic!("{}: {e}", config.display()))
}

#[tokio::test(flavor = "multi_thread")]
async fn ssh_turned_on_and_off_on_an_existing_https_stack() {
    let emu = Emulator::start();
    let c = emu.clients();
    let zone = hosted_zone(&c, "example.com").await;
    let tool = Tool::new(&emu.endpoint);
    let base = [
        "up",
        "--stack",
        "sh",
        "--allowed-cidr",
        "203.0.113.0/24",
        "--domain-name",
        "example.com",
        "--sub-domain",
        "git",
        "--hosted-zone-id",
        &zone,
        "--wait",
    ];
    tool.run(&base).ok();
    let lbs = |c: &common::Clients| {
        let elb = c.elb.clone();
        async move { elb.describe_load_balancers().send().await.unwrap().load_balancers().to_vec() }
    };
    assert_eq!(lbs(&c).await.len(), 1, "SSH is off by default");

    // On: plan shows it with its cost, up adds it and redeploys GitLab in place.
    let on = [&base[..], &["--ssh", "--ssh-port", "2222"]].concat();
    let mut plan_args = on.clone();
    plan_args[0] = "plan";
    plan_args.retain(|a| *a != "--wait");
    let plan = tool.run(&plan_args).ok();
    assert!(
        plan.stdout.contains("ssh-load-balancer") && plan.stdout.contains("Network load balancer"),
        "{}",
        plan.stdout
    );
    let run = tool.run(&[&on[..], &["--yes"]].concat()).ok();
    assert!(run.stdout.contains("ssh://git@ssh.git.example.com:2222/"), "{}", run.stdout);
    let state = tool.state("sh").unwrap();

    // The network load balancer: internet-facing, in the public subnets, with its own group.
    let nlb = lbs(&c).await.into_iter().find(|l| l.r#type().map(|t| t.as_str()) == Some("network")).expect("an NLB");
    assert_eq!(nlb.scheme().map(|s| s.as_str()), Some("internet-facing"));
    let public: BTreeSet<String> = [id(&state, "subnet-public-a"), id(&state, "subnet-public-b")].into();
    let subnets: BTreeSet<String> =
        nlb.availability_zones().iter().filter_map(|z| z.subnet_id().map(str::to_string)).collect();
    assert_eq!(subnets, public);
    assert_eq!(nlb.security_groups(), [id(&state, "ssh-security-group")]);
    // moto does not keep the NLB's attributes: the request the tool sent must turn it on.
    let sent: Vec<String> =
        emu.calls().into_iter().filter(|c| c.action == "ModifyLoadBalancerAttributes").map(|c| c.body).collect();
    assert!(
        sent.iter().any(|b| b.contains("load_balancing.cross_zone.enabled") && b.contains("Value=true")),
        "cross-zone load balancing not requested: {sent:?}"
    );
    // Listener TCP 2222 -> target group of IP targets on port 22, TCP health check.
    let listeners =
        c.elb.describe_listeners().load_balancer_arn(nlb.load_balancer_arn().unwrap()).send().await.unwrap();
    let listener = &listeners.listeners()[0];
    assert_eq!((listener.port(), listener.protocol().map(|p| p.as_str())), (Some(2222), Some("TCP")));
    let tg_arn = listener.default_actions()[0].target_group_arn().unwrap().to_string();
    assert_eq!(tg_arn, id(&state, "ssh-target-group"));
    let tg = c.elb.describe_target_groups().target_group_arns(&tg_arn).send().await.unwrap().target_groups()[0].clone();
    assert_eq!((tg.port(), tg.protocol().map(|p| p.as_str())), (Some(22), Some("TCP")));
    assert_eq!(tg.target_type().map(|t| t.as_str()), Some("ip"));
    assert_eq!(tg.health_check_protocol().map(|p| p.as_str()), Some("TCP"));
    // Who may reach what: the SSH port from allowed_cidrs; GitLab's 22 only from the NLB's group.
    assert_eq!(ingress(&c, &id(&state, "ssh-security-group")).await, [(2222, "203.0.113.0/24".to_string())].into());
    let service_rules = ingress(&c, &id(&state, "service-security-group")).await;
    assert!(service_rules.contains(&(22, id(&state, "ssh-security-group"))), "{service_rules:?}");
    // The service behind both target groups; the task exposes 22 and GitLab knows its SSH name.
    let update = emu.bodies("UpdateService").pop().expect("the service was updated in place");
    let ports: BTreeSet<i64> =
        update["loadBalancers"].as_array().unwrap().iter().map(|l| l["containerPort"].as_i64().unwrap()).collect();
    assert_eq!(ports, [22, 80].into());
    let td = last_registered(&emu);
    let mapped: BTreeSet<i64> = td["containerDefinitions"][0]["portMappings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["containerPort"].as_i64().unwrap())
        .collect();
    assert_eq!(mapped, [22, 80].into());
    let config = omnibus(&td);
    assert!(config.contains("gitlab_rails['gitlab_shell_ssh_port'] = 2222"), "{config}");
    assert!(config.contains("gitlab_rails['gitlab_ssh_host'] = 'ssh.git.example.com'"), "{config}");
    // The SSH name points at the NLB.
    let records = c.route53.list_resource_record_sets().hosted_zone_id(&zone).send().await.unwrap();
    let ssh_record =
        records.resource_record_sets().iter().find(|r| r.name() == "ssh.git.example.com.").expect("ssh record");
    let target = ssh_record.alias_target().unwrap().dns_name().trim_end_matches('.');
    assert_eq!(target.trim_start_matches("dualstack."), nlb.dns_name().unwrap());
    // status shows the endpoint and the target's health (the task registered once it ran).
    let status = tool.run(&["status", "--stack", "sh"]).ok();
    assert!(status.stdout.contains("ssh:") && status.stdout.contains("ssh.git.example.com:2222"), "{}", status.stdout);

    // Host keys live on the file system: a task replacement (a new size) keeps them.
    let key = host_key(&emu, &state);
    tool.run(&[&on[..], &["--task-memory-mib", "8192", "--yes"]].concat()).ok();
    assert_eq!(host_key(&emu, &tool.state("sh").unwrap()), key, "the host key changed with the task");

    // Off: the NLB and everything of it go; GitLab back behind the ALB only.
    tool.run(&[&base[..], &["--task-memory-mib", "8192", "--yes"]].concat()).ok();
    assert!(lbs(&c).await.iter().all(|l| l.r#type().map(|t| t.as_str()) != Some("network")), "the NLB is still there");
    let state = tool.state("sh").unwrap();
    for key in ["ssh-load-balancer", "ssh-target-group", "listener-ssh", "ssh-security-group", "dns-ssh"] {
        assert!(state["resources"].get(key).is_none(), "{key} still recorded");
    }
    let records = c.route53.list_resource_record_sets().hosted_zone_id(&zone).send().await.unwrap();
    assert!(records.resource_record_sets().iter().all(|r| r.name() != "ssh.git.example.com."), "the SSH record stayed");
    let td = last_registered(&emu);
    assert!(!omnibus(&td).contains("ssh_port"), "{}", omnibus(&td));
    let update = emu.bodies("UpdateService").pop().unwrap();
    assert_eq!(update["loadBalancers"].as_array().unwrap().len(), 1);

    tool.run(&["down", "--stack", "sh", "--yes"]).ok();
    assert_eq!(stack_leftovers(&c, "sh").await, Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread")]
async fn ssh_in_an_imported_vpc_without_a_domain_uses_the_load_balancers_own_name() {
    let emu = Emulator::start();
    let c = emu.clients();
    let (vpc, _) = existing_vpc(&c.ec2, true).await;
    let tool = Tool::new(&emu.endpoint);
    let run = tool.run(&["up", "--stack", "shv", "--allowed-cidr", "198.51.100.0/24", "--vpc-id", &vpc, "--ssh"]).ok();
    let nlb = c
        .elb
        .describe_load_balancers()
        .send()
        .await
        .unwrap()
        .load_balancers()
        .iter()
        .find(|l| l.r#type().map(|t| t.as_str()) == Some("network"))
        .cloned()
        .expect("an NLB");
    // Port 22: the plain git@ form, on the NLB's own name.
    assert!(run.stdout.contains(&format!("git@{}:", nlb.dns_name().unwrap())), "{}", run.stdout);
    let config = omnibus(&last_registered(&emu));
    assert!(config.contains(&format!("gitlab_rails['gitlab_ssh_host'] = '{}'", nlb.dns_name().unwrap())), "{config}");
    assert!(config.contains("gitlab_rails['gitlab_shell_ssh_port'] = 22"), "{config}");
    tool.run(&["down", "--stack", "shv", "--yes"]).ok();
    assert_eq!(stack_leftovers(&c, "shv").await, Vec::<String>::new());
    assert!(c.ec2.describe_vpcs().vpc_ids(&vpc).send().await.is_ok(), "the imported VPC must stay");
}
