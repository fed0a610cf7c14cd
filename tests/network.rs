//! The network layer end to end: the real binary against the emulator, asserting what AWS
//! holds afterwards.

mod common;

use std::collections::BTreeMap;

use aws_sdk_ec2::types::{Filter, VpcAttributeName};
use common::{Emulator, Tool, count_tagged, stack_leftovers};

/// What changing a VPC looks like: these verbs on these objects.
const NETWORK_ACTIONS: &[&str] =
    &["Create", "Delete", "Modify", "Associate", "Disassociate", "Attach", "Detach", "Replace", "Allocate", "Release"];

/// Security groups are not the VPC's own: the stack adds its groups to an imported VPC.
fn network_object(action: &str) -> bool {
    ["Vpc", "Subnet", "RouteTable", "Route", "InternetGateway", "NatGateway", "Address"]
        .iter()
        .any(|o| action.ends_with(o) || action.contains(&format!("{o}Attribute")))
}
use serde_json::json;

const CIDRS: &[&str] = &["--allowed-cidr", "203.0.113.0/24"];

fn args<'a>(head: &[&'a str], tail: &[&'a str]) -> Vec<&'a str> {
    head.iter().chain(tail).copied().collect()
}

fn by_key(state: &serde_json::Value) -> BTreeMap<String, serde_json::Value> {
    state["resources"].as_object().expect("resources").iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

fn id(state: &serde_json::Value, key: &str) -> String {
    state["resources"][key]["id"].as_str().unwrap_or_else(|| panic!("{key} has no id in {state:#}")).to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn nat_gateway_stack_up_status_converged_up_down() {
    let emu = Emulator::start();
    let ec2 = emu.ec2().await;
    let tool = Tool::new(&emu.endpoint);

    tool.run(&args(&["up", "--stack", "net1", "--vpc-cidr", "10.42.0.0/16", "--egress", "nat-gateway"], CIDRS)).ok();
    let state = tool.state("net1").expect("state written");

    // The VPC honours vpc_cidr (the reference app ignores it) and has DNS on.
    let vpc_id = id(&state, "vpc");
    let vpc = ec2.describe_vpcs().vpc_ids(&vpc_id).send().await.unwrap().vpcs()[0].clone();
    assert_eq!(vpc.cidr_block(), Some("10.42.0.0/16"));
    for attr in [VpcAttributeName::EnableDnsSupport, VpcAttributeName::EnableDnsHostnames] {
        let out = ec2.describe_vpc_attribute().vpc_id(&vpc_id).attribute(attr.clone()).send().await.unwrap();
        let value = out.enable_dns_support().or(out.enable_dns_hostnames()).and_then(|v| v.value());
        assert_eq!(value, Some(true), "{attr:?}");
    }
    let tags: BTreeMap<_, _> =
        vpc.tags().iter().map(|t| (t.key().unwrap_or_default(), t.value().unwrap_or_default())).collect();
    assert_eq!(tags.get("gitlab-provision:stack"), Some(&"net1"));
    assert_eq!(tags.get("Name"), Some(&"net1-vpc"));

    // Four subnets: a public and a private one in each of two zones.
    let subnets =
        ec2.describe_subnets().filters(Filter::builder().name("vpc-id").values(&vpc_id).build()).send().await.unwrap();
    let mut seen: Vec<(String, String, bool)> = subnets
        .subnets()
        .iter()
        .map(|s| {
            (
                s.cidr_block().unwrap().to_string(),
                s.availability_zone().unwrap().to_string(),
                s.map_public_ip_on_launch().unwrap_or(false),
            )
        })
        .collect();
    seen.sort_by_key(|s| s.0.parse::<ipnet::Ipv4Net>().unwrap());
    assert_eq!(seen.len(), 4, "{seen:?}");
    assert_eq!(seen[0].0, "10.42.0.0/18");
    assert!(seen.iter().all(|s| !s.2), "no subnet hands out public IPs on launch: {seen:?}");
    // The VPC's default security group: no rules either way.
    let default = ec2
        .describe_security_groups()
        .filters(Filter::builder().name("vpc-id").values(&vpc_id).build())
        .filters(Filter::builder().name("group-name").values("default").build())
        .send()
        .await
        .unwrap();
    let default = &default.security_groups()[0];
    assert!(
        default.ip_permissions().is_empty() && default.ip_permissions_egress().is_empty(),
        "the default group keeps rules: {default:?}"
    );
    // Nor does the default network ACL, once every subnet has the stack's own.
    let acls = ec2
        .describe_network_acls()
        .filters(Filter::builder().name("vpc-id").values(&vpc_id).build())
        .filters(Filter::builder().name("default").values("true").build())
        .send()
        .await
        .unwrap();
    let default_acl = &acls.network_acls()[0];
    assert!(default_acl.associations().is_empty(), "{default_acl:?}");
    assert!(
        default_acl.entries().iter().all(|e| e.rule_number() == Some(32767)),
        "the default network ACL keeps rules: {:?}",
        default_acl.entries()
    );
    assert_ne!(seen[0].1, seen[1].1, "public subnets in distinct zones");
    assert_ne!(seen[2].1, seen[3].1, "private subnets in distinct zones");

    // Routes: public -> internet gateway, private -> NAT gateway in a public subnet with the EIP.
    let igw_id = id(&state, "internet-gateway");
    let igw = ec2.describe_internet_gateways().internet_gateway_ids(&igw_id).send().await.unwrap();
    assert_eq!(igw.internet_gateways()[0].attachments()[0].vpc_id(), Some(vpc_id.as_str()));
    let nat_id = id(&state, "nat-gateway");
    let nat = ec2.describe_nat_gateways().nat_gateway_ids(&nat_id).send().await.unwrap().nat_gateways()[0].clone();
    assert_eq!(nat.subnet_id(), Some(id(&state, "subnet-public-a").as_str()));
    assert_eq!(nat.state().map(|s| s.as_str()), Some("available"));
    assert_eq!(nat.nat_gateway_addresses()[0].allocation_id(), Some(id(&state, "nat-eip").as_str()));
    for (table, target, subnets) in [
        ("route-table-public", &igw_id, ["subnet-public-a", "subnet-public-b"]),
        ("route-table-private", &nat_id, ["subnet-private-a", "subnet-private-b"]),
    ] {
        let rt = ec2.describe_route_tables().route_table_ids(id(&state, table)).send().await.unwrap().route_tables()[0]
            .clone();
        let default =
            rt.routes().iter().find(|r| r.destination_cidr_block() == Some("0.0.0.0/0")).expect("default route");
        assert_eq!(default.gateway_id().or(default.nat_gateway_id()), Some(target.as_str()), "{table}");
        let mut associated: Vec<&str> = rt.associations().iter().filter_map(|a| a.subnet_id()).collect();
        associated.sort();
        let mut expected: Vec<String> = subnets.iter().map(|k| id(&state, k)).collect();
        expected.sort();
        assert_eq!(associated, expected, "{table}");
    }

    // status: every resource live and as recorded.
    let status = tool.run(&["status", "--stack", "net1", "--json"]).ok().json();
    let resources = status["resources"].as_array().unwrap();
    assert!(resources.len() >= 10, "{status:#}");
    assert!(resources.iter().all(|r| r["live"] == "ok"), "{status:#}");

    // A second up creates nothing and makes no mutating call: one read per resource at most.
    emu.clear_calls();
    let before = by_key(&tool.state("net1").unwrap());
    tool.run(&args(&["up", "--stack", "net1", "--vpc-cidr", "10.42.0.0/16", "--egress", "nat-gateway"], CIDRS)).ok();
    let calls = emu.calls();
    let mutating: Vec<_> = calls.iter().filter(|c| c.mutating).collect();
    assert!(mutating.is_empty(), "converged up mutated: {mutating:?}");
    // One describe per resource; where that describe carries no tags, one more read proves the
    // resource is the stack's (its tags, or for a mount target its file system).
    let tag_reads = calls
        .iter()
        .filter(|c| {
            ["DescribeTags", "ListTagsForResource"].contains(&c.action.as_str()) || c.action.starts_with("GET /tags/")
        })
        .count();
    let owner_reads = before.keys().filter(|k| k.starts_with("mount-target")).count();
    // Who runs it and whether a trail records shells: the account's, once per run; a load
    // balancer's deletion protection and a key's rotation are not in their descriptions.
    let account_reads = calls
        .iter()
        .filter(|c| {
            [
                "GetCallerIdentity",
                "DescribeTrails",
                "GetTrailStatus",
                "DescribeLoadBalancerAttributes",
                "GetKeyRotationStatus",
            ]
            .contains(&c.action.as_str())
        })
        .count();
    assert!(account_reads <= 5, "{calls:?}");
    let owner_reads = owner_reads + account_reads;
    assert!(
        calls.len() <= before.len() + tag_reads + owner_reads,
        "{} reads for {} resources ({tag_reads} tag reads, {owner_reads} owner reads): {calls:?}",
        calls.len(),
        before.len()
    );
    let described: Vec<_> = calls.iter().filter(|c| !c.body.is_empty() && !c.action.contains("Tags")).collect();
    for (i, call) in described.iter().enumerate() {
        assert!(!described[..i].iter().any(|c| c.action == call.action && c.body == call.body), "read twice: {call:?}");
    }
    let after = by_key(&tool.state("net1").unwrap());
    let ids = |m: &BTreeMap<String, serde_json::Value>| {
        m.iter().map(|(k, v)| (k.clone(), v["id"].clone())).collect::<Vec<_>>()
    };
    assert_eq!(ids(&before), ids(&after));

    // down leaves nothing tagged with the stack, and no state.
    tool.run(&["down", "--stack", "net1", "--yes"]).ok();
    assert_eq!(stack_leftovers(&emu.clients(), "net1").await, Vec::<String>::new());
    assert!(tool.state("net1").is_none());
    // down again: nothing recorded, nothing tagged with the stack left, success, nothing changed.
    emu.clear_calls();
    let again = tool.run(&["down", "--stack", "net1", "--yes"]).ok();
    assert!(again.stdout.contains("nothing tagged gitlab-provision:stack=net1"), "{}", again.stdout);
    assert!(emu.calls().iter().all(|c| !c.mutating), "{:?}", emu.calls());
}

#[tokio::test(flavor = "multi_thread")]
async fn nat_instance_stack() {
    let emu = Emulator::start();
    let ec2 = emu.ec2().await;
    let tool = Tool::new(&emu.endpoint);
    tool.write("gitlab-provision.toml", "stack = \"natinst\"\nallowed_cidrs = [\"198.51.100.0/24\"]\nuse_nat_instance = true\nvpc_cidr = \"10.7.0.0/16\"\n");
    tool.run(&["up"]).ok();
    let state = tool.state("natinst").unwrap();
    assert!(state["resources"].get("nat-gateway").is_none() && state["resources"].get("nat-eip").is_none());

    let instance_id = id(&state, "nat-instance");
    let out = ec2.describe_instances().instance_ids(&instance_id).send().await.unwrap();
    let instance = out.reservations()[0].instances()[0].clone();
    assert_eq!(instance.instance_type().map(|t| t.as_str()), Some("t4g.nano"));
    assert_eq!(instance.subnet_id(), Some(id(&state, "subnet-public-a").as_str()));
    assert_eq!(instance.source_dest_check(), Some(false), "a NAT instance must forward others' packets");
    let volumes = ec2
        .describe_volumes()
        .filters(Filter::builder().name("attachment.instance-id").values(&instance_id).build())
        .send()
        .await
        .unwrap();
    assert!(
        !volumes.volumes().is_empty() && volumes.volumes().iter().all(|v| v.encrypted() == Some(true)),
        "the NAT instance's volume is encrypted: {:?}",
        volumes.volumes()
    );
    let ami = emu_ssm_value(&emu, "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-arm64").await;
    assert_eq!(instance.image_id(), Some(ami.as_str()), "Amazon Linux 2023 arm64 from the public SSM parameter");
    let user_data = ec2
        .describe_instance_attribute()
        .instance_id(&instance_id)
        .attribute(aws_sdk_ec2::types::InstanceAttributeName::UserData)
        .send()
        .await
        .unwrap()
        .user_data()
        .and_then(|u| u.value())
        .map(|v| String::from_utf8(base64_decode(v)).unwrap())
        .unwrap_or_default();
    assert!(user_data.contains("ip_forward = 1") && user_data.contains("MASQUERADE"), "{user_data}");

    // The security group admits all traffic (not only 443) from the VPC.
    let group = ec2
        .describe_security_groups()
        .group_ids(id(&state, "nat-security-group"))
        .send()
        .await
        .unwrap()
        .security_groups()[0]
        .clone();
    let rules: Vec<(String, Vec<String>)> = group
        .ip_permissions()
        .iter()
        .map(|p| {
            (
                p.ip_protocol().unwrap_or_default().to_string(),
                p.ip_ranges().iter().map(|r| r.cidr_ip().unwrap_or_default().to_string()).collect(),
            )
        })
        .collect();
    assert_eq!(rules, vec![("-1".to_string(), vec!["10.7.0.0/16".to_string()])]);

    // Private subnets route through the instance's network interface.
    let eni = instance.network_interfaces()[0].network_interface_id().unwrap().to_string();
    let rt = ec2
        .describe_route_tables()
        .route_table_ids(id(&state, "route-table-private"))
        .send()
        .await
        .unwrap()
        .route_tables()[0]
        .clone();
    let default = rt.routes().iter().find(|r| r.destination_cidr_block() == Some("0.0.0.0/0")).expect("default route");
    assert_eq!(default.network_interface_id(), Some(eni.as_str()));

    emu.clear_calls();
    tool.run(&["up"]).ok();
    assert!(emu.calls().iter().all(|c| !c.mutating), "{:?}", emu.calls());

    tool.run(&["down", "--yes"]).ok();
    assert_eq!(stack_leftovers(&emu.clients(), "natinst").await, Vec::<String>::new());
}

async fn emu_ssm_value(emu: &Emulator, name: &str) -> String {
    let config = aws_sdk_ssm::Config::builder()
        .behavior_version(aws_sdk_ssm::config::BehaviorVersion::latest())
        .region(aws_sdk_ssm::config::Region::new(common::REGION))
        .endpoint_url(&emu.moto)
        .credentials_provider(aws_sdk_ssm::config::Credentials::new("test", "test", None, None, "tests"))
        .build();
    let ssm = aws_sdk_ssm::Client::from_conf(config);
    ssm.get_parameter().name(name).send().await.unwrap().parameter().unwrap().value().unwrap().to_string()
}

fn base64_decode(text: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.decode(text.trim()).expect("base64")
}

#[tokio::test(flavor = "multi_thread")]
async fn imported_vpc_is_used_and_never_modified() {
    let emu = Emulator::start();
    let ec2 = emu.ec2().await;
    let (vpc, subnets) = common::existing_vpc(&ec2, true).await;
    let vpcs_before = ec2.describe_vpcs().send().await.unwrap().vpcs().len();
    let tool = Tool::new(&emu.endpoint);

    tool.run(&args(&["up", "--stack", "imp", "--vpc-id", &vpc], CIDRS)).ok();
    let state = tool.state("imp").unwrap();
    assert_eq!(id(&state, "vpc"), vpc);
    assert_eq!(
        [id(&state, "subnet-public-a"), id(&state, "subnet-public-b")],
        [subnets[0].clone(), subnets[1].clone()]
    );
    assert_eq!(
        [id(&state, "subnet-private-a"), id(&state, "subnet-private-b")],
        [subnets[2].clone(), subnets[3].clone()]
    );
    for key in ["vpc", "subnet-public-a", "subnet-public-b", "subnet-private-a", "subnet-private-b"] {
        assert_eq!(state["resources"][key]["status"], "imported", "{key}");
    }
    let touching_the_vpc = |calls: Vec<common::Call>| -> Vec<String> {
        calls
            .into_iter()
            .filter(|c| {
                c.mutating && NETWORK_ACTIONS.iter().any(|a| c.action.starts_with(a)) && network_object(&c.action)
            })
            .map(|c| c.action)
            .collect()
    };
    assert_eq!(touching_the_vpc(emu.calls()), Vec::<String>::new(), "importing must not modify the VPC");
    assert_eq!(ec2.describe_vpcs().send().await.unwrap().vpcs().len(), vpcs_before);

    let status = tool.run(&["status", "--stack", "imp", "--json"]).ok().json();
    assert!(status["resources"].as_array().unwrap().iter().all(|r| r["live"] == "ok"), "{status:#}");

    emu.clear_calls();
    tool.run(&["down", "--stack", "imp", "--yes"]).ok();
    assert_eq!(touching_the_vpc(emu.calls()), Vec::<String>::new(), "down must not touch an imported VPC");
    assert_eq!(ec2.describe_vpcs().vpc_ids(&vpc).send().await.unwrap().vpcs().len(), 1);
    assert_eq!(ec2.describe_subnets().subnet_ids(&subnets[0]).send().await.unwrap().subnets().len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn imported_vpc_without_private_egress_is_refused_before_creating_anything() {
    let emu = Emulator::start();
    let ec2 = emu.ec2().await;
    let (vpc, _) = common::existing_vpc(&ec2, false).await;
    let tool = Tool::new(&emu.endpoint);
    // A pre-flight check that fails is a configuration mistake: exit 2, nothing created.
    let run = tool.run(&args(&["up", "--stack", "imp2", "--vpc-id", &vpc], CIDRS)).fails_with(2);
    assert!(run.stderr.contains("vpc_id") && run.stderr.contains("private"), "{}", run.stderr);
    assert!(run.stderr.contains("nothing was created"), "{}", run.stderr);
    assert!(emu.calls().iter().all(|c| !c.mutating));
    assert!(tool.state("imp2").is_none(), "a refused up writes no state");

    let run = tool.run(&args(&["up", "--stack", "imp3", "--vpc-id", "vpc-0123456789abcdef0"], CIDRS)).fails_with(2);
    assert!(run.stderr.contains("no such VPC"), "{}", run.stderr);
}

#[tokio::test(flavor = "multi_thread")]
async fn failure_mid_way_then_resume_creates_no_twins() {
    let emu = Emulator::start();
    let ec2 = emu.ec2().await;
    let tool = Tool::new(&emu.endpoint);
    emu.set_faults(json!([{"action": "CreateRouteTable", "status": 403, "code": "UnauthorizedOperation", "times": 1}]));
    let run = tool.run(&args(&["up", "--stack", "resume", "--egress", "nat-gateway"], CIDRS)).fails_with(1);
    assert!(run.stderr.contains("UnauthorizedOperation") && run.stderr.contains("step route-table-"), "{}", run.stderr);
    assert!(run.stderr.contains("run `gitlab-provision up` again"), "{}", run.stderr);
    let partial = tool.state("resume").unwrap();
    assert!(partial["resources"]["vpc"]["status"] == "created");

    tool.run(&args(&["up", "--stack", "resume", "--egress", "nat-gateway"], CIDRS)).ok();
    let counts = count_tagged(&ec2, "resume").await;
    let expected: BTreeMap<String, usize> =
        [("vpc", 1), ("subnet", 4), ("igw", 1), ("route table", 2), ("eip", 1), ("nat", 1), ("sg", 4)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
    assert_eq!(counts, expected);
    tool.run(&["down", "--stack", "resume", "--yes"]).ok();
    assert_eq!(stack_leftovers(&emu.clients(), "resume").await, Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread")]
async fn created_but_unrecorded_resources_are_adopted_not_duplicated() {
    let emu = Emulator::start();
    let ec2 = emu.ec2().await;
    let tool = Tool::new(&emu.endpoint);
    // AWS creates them, but the answers are lost: the tool only knows it tried.
    emu.set_faults(json!([
        {"action": "CreateVpc", "status": 403, "code": "UnauthorizedOperation", "times": 1, "when": "after"},
        {"action": "AllocateAddress", "status": 403, "code": "UnauthorizedOperation", "times": 1, "when": "after"},
        // KMS has no idempotency token: the key is found again by its tags.
        {"action": "CreateKey", "status": 400, "code": "AccessDeniedException", "times": 1, "when": "after"}
    ]));
    tool.run(&args(&["up", "--stack", "adopt", "--egress", "nat-gateway"], CIDRS)).fails_with(1);
    let state = tool.state("adopt").unwrap();
    assert_eq!(state["resources"]["vpc"]["status"], "pending");
    // status says the create was never confirmed.
    let status = tool.run(&["status", "--stack", "adopt", "--json"]).ok().json();
    assert!(
        status["resources"].as_array().unwrap().iter().any(|r| r["key"] == "vpc" && r["live"] == "pending"),
        "{status:#}"
    );

    tool.run(&args(&["up", "--stack", "adopt", "--egress", "nat-gateway"], CIDRS)).ok();
    let counts = count_tagged(&ec2, "adopt").await;
    assert_eq!(counts.get("vpc"), Some(&1), "{counts:?}");
    assert_eq!(counts.get("eip"), Some(&1), "{counts:?}");
    let left = stack_leftovers(&emu.clients(), "adopt").await;
    let keys: Vec<&String> = left.iter().filter(|l| l.starts_with("KMS ")).collect();
    assert_eq!(keys.len(), 2, "one key and its alias: {keys:?}");
    tool.run(&["down", "--stack", "adopt", "--yes"]).ok();
    assert_eq!(stack_leftovers(&emu.clients(), "adopt").await, Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread")]
async fn pending_records_are_cleaned_up_by_down() {
    let emu = Emulator::start();
    let ec2 = emu.ec2().await;
    let tool = Tool::new(&emu.endpoint);
    emu.set_faults(
        json!([{"action": "CreateVpc", "status": 403, "code": "UnauthorizedOperation", "times": 1, "when": "after"}]),
    );
    tool.run(&args(&["up", "--stack", "pend"], CIDRS)).fails_with(1);
    assert_eq!(count_tagged(&ec2, "pend").await.get("vpc"), Some(&1));
    tool.run(&["down", "--stack", "pend", "--yes"]).ok();
    assert_eq!(stack_leftovers(&emu.clients(), "pend").await, Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_concurrent_run_on_the_same_stack_is_refused() {
    let emu = Emulator::start();
    let tool = Tool::new(&emu.endpoint);
    emu.set_faults(json!([{"action": "CreateVpc", "delay": 4.0}]));
    let mut first = tool
        .command(&args(&["up", "--stack", "busy"], CIDRS))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let lock = tool.dir.path().join("state/busy.lock");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::fs::read_to_string(&lock).unwrap_or_default().is_empty() {
        assert!(std::time::Instant::now() < deadline, "first up never took the lock");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let second = tool.run(&args(&["up", "--stack", "busy"], CIDRS)).fails_with(2);
    assert!(
        second.stderr.contains("locked by process") && second.stderr.contains(&first.id().to_string()),
        "{}",
        second.stderr
    );
    let down = tool.run(&["down", "--stack", "busy", "--yes"]);
    assert_ne!(down.code, Some(0), "down must not run during up: {down:?}");
    assert!(first.wait().unwrap().success());
    // The lock is free again once the first run is gone.
    tool.run(&args(&["up", "--stack", "busy"], CIDRS)).ok();
    tool.run(&["down", "--stack", "busy", "--yes"]).ok();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_damaged_state_file_is_left_untouched_and_nothing_is_called() {
    let emu = Emulator::start();
    let tool = Tool::new(&emu.endpoint);
    for (content, expect) in [
        ("{\"version\": 1, \"stack\": \"dmg\", \"resou", "not valid JSON"),
        ("{\"version\": 7, \"stack\": \"dmg\"}", "version 7"),
    ] {
        tool.write("state/dmg.json", content);
        for cmd in [
            args(&["up", "--stack", "dmg"], CIDRS),
            vec!["down", "--stack", "dmg", "--yes"],
            vec!["status", "--stack", "dmg"],
            args(&["plan", "--stack", "dmg"], CIDRS),
        ] {
            let run = tool.run(&cmd);
            assert_ne!(run.code, Some(0), "{cmd:?} accepted a damaged state");
            assert!(run.stderr.contains(expect) && run.stderr.contains("left untouched"), "{cmd:?}: {}", run.stderr);
            assert_eq!(std::fs::read_to_string(tool.state_path("dmg")).unwrap(), content);
        }
    }
    assert!(emu.calls().is_empty(), "{:?}", emu.calls());
}

#[tokio::test(flavor = "multi_thread")]
async fn down_without_yes_and_without_a_terminal_deletes_nothing() {
    let emu = Emulator::start();
    let ec2 = emu.ec2().await;
    let tool = Tool::new(&emu.endpoint);
    tool.run(&args(&["up", "--stack", "keep"], CIDRS)).ok();
    emu.clear_calls();
    let run = tool.run(&["down", "--stack", "keep"]).fails_with(2);
    assert!(run.stderr.contains("--yes") && run.stderr.contains("nothing was deleted"), "{}", run.stderr);
    assert!(emu.calls().is_empty());
    assert_eq!(count_tagged(&ec2, "keep").await.get("vpc"), Some(&1));
    tool.run(&["down", "--stack", "keep", "--yes"]).ok();
}

#[tokio::test(flavor = "multi_thread")]
async fn out_of_band_deletion_is_reported_and_repaired() {
    let emu = Emulator::start();
    let ec2 = emu.ec2().await;
    let tool = Tool::new(&emu.endpoint);
    tool.run(&args(&["up", "--stack", "oob"], CIDRS)).ok();
    let state = tool.state("oob").unwrap();
    let rt = id(&state, "route-table-public");
    let table = ec2.describe_route_tables().route_table_ids(&rt).send().await.unwrap().route_tables()[0].clone();
    for a in table.associations() {
        ec2.disassociate_route_table().association_id(a.route_table_association_id().unwrap()).send().await.unwrap();
    }
    ec2.delete_route_table().route_table_id(&rt).send().await.unwrap();

    let status = tool.run(&["status", "--stack", "oob", "--json"]).ok().json();
    let entry =
        status["resources"].as_array().unwrap().iter().find(|r| r["key"] == "route-table-public").unwrap().clone();
    assert_eq!(entry["live"], "missing");
    let plan = tool.run(&args(&["plan", "--stack", "oob", "--json"], CIDRS)).ok().json();
    let planned = plan["steps"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["resources"].as_array().unwrap().clone())
        .find(|r| r["key"] == "route-table-public")
        .unwrap();
    assert_eq!(planned["action"], "re-create");

    tool.run(&args(&["up", "--stack", "oob"], CIDRS)).ok();
    let status = tool.run(&["status", "--stack", "oob", "--json"]).ok().json();
    assert!(status["resources"].as_array().unwrap().iter().all(|r| r["live"] == "ok"), "{status:#}");
    assert_ne!(id(&tool.state("oob").unwrap(), "route-table-public"), rt);
    tool.run(&["down", "--stack", "oob", "--yes"]).ok();
    assert_eq!(stack_leftovers(&emu.clients(), "oob").await, Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread")]
async fn switching_nat_flavour_converges_and_removes_the_old_one() {
    let emu = Emulator::start();
    let ec2 = emu.ec2().await;
    let tool = Tool::new(&emu.endpoint);
    tool.run(&args(&["up", "--stack", "swap", "--egress", "nat-gateway"], CIDRS)).ok();
    let vpc = id(&tool.state("swap").unwrap(), "vpc");
    // Moving the private subnets to another NAT interrupts GitLab's outbound traffic: asked, or --yes.
    let refused = tool.run(&args(&["up", "--stack", "swap", "--use-nat-instance"], CIDRS)).fails_with(2);
    assert!(refused.stderr.contains("outbound route moves") && refused.stderr.contains("--yes"), "{}", refused.stderr);
    tool.run(&args(&["up", "--stack", "swap", "--use-nat-instance", "--yes"], CIDRS)).ok();
    let state = tool.state("swap").unwrap();
    assert_eq!(id(&state, "vpc"), vpc, "the VPC is kept");
    let counts = count_tagged(&ec2, "swap").await;
    assert_eq!((counts.get("nat"), counts.get("eip"), counts.get("instance")), (None, None, Some(&1)), "{counts:?}");
    let rt = ec2
        .describe_route_tables()
        .route_table_ids(id(&state, "route-table-private"))
        .send()
        .await
        .unwrap()
        .route_tables()[0]
        .clone();
    let default = rt.routes().iter().find(|r| r.destination_cidr_block() == Some("0.0.0.0/0")).unwrap();
    assert_eq!(default.network_interface_id(), state["resources"]["nat-instance"]["attrs"]["eni"].as_str());

    // A change that would replace the network is refused with an explanation.
    let run = tool
        .run(&args(&["up", "--stack", "swap", "--use-nat-instance", "--vpc-cidr", "10.9.0.0/16"], CIDRS))
        .fails_with(2);
    assert!(run.stderr.contains("vpc_cidr") && run.stderr.contains("10.0.0.0/16"), "{}", run.stderr);
    tool.run(&["down", "--stack", "swap", "--yes"]).ok();
    assert_eq!(stack_leftovers(&emu.clients(), "swap").await, Vec::<String>::new());
}
