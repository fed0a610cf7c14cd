//! What AWS does right after a create and long after a delete, under the harness's strict
//! model (harness/strict.py): each test drives the real binary through a situation AWS is
//! documented to produce, and checks both that the situation happened (the model's rule fired)
//! and that the tool came through it, reading the outcome back through the AWS API.

mod common;

use common::{Emulator, Tool, stack_leftovers, up};
use serde_json::json;

/// How many calls the strict model refused or answered under `rule`.
fn fired(emu: &Emulator, rule: &str) -> usize {
    emu.rules_fired().iter().filter(|r| r.as_str() == rule).count()
}

/// Where in the capture the first successful call of `action` naming `id` is.
fn first_success(emu: &Emulator, action: &str, id: &str) -> Option<usize> {
    emu.calls().iter().position(|c| c.action == action && c.refused.is_none() && !c.fault && c.body.contains(id))
}

#[tokio::test(flavor = "multi_thread")]
async fn up_rides_out_aws_propagation_windows() {
    // Read-after-create NotFound on new EC2 ids, an IAM role Lambda cannot assume yet and then
    // lacks its VPC permission, ECS's service-linked role on the account's first service: each
    // is refused once, as AWS does, and the tool retries exactly those.
    let emu = Emulator::start();
    let tool = Tool::new(&emu.endpoint);
    tool.run(&up("prop", &[])).ok();
    for rule in [
        "ec2-read-after-create",
        "lambda-role-not-assumable",
        "lambda-role-no-vpc-permission",
        "ecs-service-linked-role",
    ] {
        assert!(fired(&emu, rule) >= 1, "the model never refused under {rule}: the test proves nothing");
    }
    let status = tool.run(&["status", "--stack", "prop", "--json"]).ok().json();
    assert!(status["resources"].as_array().unwrap().iter().all(|r| r["live"] == "ok"), "{status:#}");

    // Down, and up again at once: the secret's name is still reserved by its forced deletion.
    tool.run(&["down", "--stack", "prop", "--yes"]).ok();
    tool.run(&up("prop", &[])).ok();
    assert_eq!(fired(&emu, "secret-name-reserved"), 1);
    tool.run(&["down", "--stack", "prop", "--yes"]).ok();
    assert_eq!(stack_leftovers(&emu.clients(), "prop").await, Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread")]
async fn down_right_after_up_waits_for_what_aws_is_still_releasing() {
    // Right after `up`: the initializer's Lambda interface is still held (20 minutes at AWS's
    // pace), GitLab's task is running. `down` meets every lingering thing AWS documents: the
    // task stopping (its interface in the private subnets), mount targets deleting, the NAT
    // gateway deleting with its address mapped, the load balancer's interfaces with public IPs.
    let emu = Emulator::start();
    // Lambda holds the interface 2 hours here (AWS: 20-40 minutes), so it is still held when
    // `down` starts however long `up` took; the load balancer's are held 20 minutes (AWS: "minutes";
    // Terraform waits up to 35), long enough to be seen on a loaded machine.
    emu.set_control(json!({"lambda_interfaces_linger": 7500, "load_balancer_interfaces_linger": 1200}));
    let c = emu.clients();
    let tool = Tool::new(&emu.endpoint);
    tool.run(&up("lin", &["--egress", "nat-gateway"])).ok();
    let state = tool.state("lin").unwrap();
    let init_group = state["resources"]["init-security-group"]["id"].as_str().unwrap().to_string();
    let init_role = state["resources"]["init-role"]["attrs"]["name"].as_str().unwrap().to_string();
    emu.clear_calls();
    let down = tool.run(&["down", "--stack", "lin", "--yes"]).ok();

    // What happened is what AWS does...
    for rule in ["mount-target-deleting", "nat-gateway-deleting"] {
        assert!(fired(&emu, rule) >= 1, "{rule} never applied");
    }
    let refused: Vec<String> =
        emu.calls().iter().filter_map(|c| c.rule.clone().filter(|_| c.refused.is_some())).collect();
    assert!(
        refused
            .iter()
            .any(|r| ["subnet-in-use", "security-group-in-use", "gateway-mapped-addresses"].contains(&r.as_str())),
        "nothing was refused while in use: {refused:?}"
    );
    // ...and the tool waited for the very things that held it, naming them.
    assert!(down.stderr.contains("load balancer network interface"), "{}", down.stderr);
    assert!(down.stderr.contains("Lambda network interface"), "{}", down.stderr);
    // The cluster went once its task had stopped, never refused for containing it.
    assert_eq!(fired(&emu, "cluster-contains-tasks"), 0);
    // The initializer's role outlived its security group: Lambda needs the role to release
    // the function's interface, which holds the group.
    assert_eq!(fired(&emu, "lambda-interfaces-need-the-role"), 0);
    let group_gone = first_success(&emu, "DeleteSecurityGroup", &init_group).expect("init group deleted");
    let role_gone = first_success(&emu, "DeleteRole", &init_role).expect("init role deleted");
    assert!(role_gone > group_gone, "the role went before the group its function's interface held");
    // Nothing left, including the log groups Lambda and Container Insights made themselves.
    assert!(fired(&emu, "lambda-log-group") + fired(&emu, "container-insights-log-group") == 0, "created during down?");
    assert_eq!(stack_leftovers(&c, "lin").await, Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread")]
async fn user_chosen_zones_that_cannot_hold_a_nat_instance_are_refused_before_anything_is_created() {
    let emu = Emulator::start();
    let tool = Tool::new(&emu.endpoint);
    let run = tool
        .run(&up(
            "zones",
            &["--use-nat-instance", "--availability-zone", "us-east-1a", "--availability-zone", "us-east-1e"],
        ))
        .fails_with(2);
    assert!(run.stderr.contains("us-east-1e does not offer t4g.nano"), "{}", run.stderr);
    // The fix names a key the configuration has.
    assert!(run.stderr.contains("use_nat_instance = false"), "{}", run.stderr);
    assert!(run.stderr.contains("nothing was created"), "{}", run.stderr);
    assert!(emu.calls().iter().all(|c| !c.mutating), "{:?}", emu.calls());
    // The zones the tool picks itself offer it (moto's data lacks t4g in us-east-1e as AWS's does).
    tool.run(&up("zones", &["--use-nat-instance"])).ok();
    assert_eq!(fired(&emu, "instance-type-not-offered"), 0);
    tool.run(&["down", "--stack", "zones", "--yes"]).ok();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_strict_model_refuses_what_aws_refuses() {
    // The harness itself: a delete AWS refuses while something uses the resource is refused
    // here too (a test passing against bare moto would prove little).
    let emu = Emulator::start();
    let c = emu.aws_clients();
    let vpc =
        c.ec2.create_vpc().cidr_block("10.9.0.0/16").send().await.unwrap().vpc().unwrap().vpc_id().unwrap().to_string();
    // The first call naming a new id may be refused NotFound (read-after-create): retried.
    macro_rules! visible {
        ($call:expr) => {{
            let mut attempts = 0;
            loop {
                match $call.send().await {
                    Ok(out) => break out,
                    Err(e) if attempts < 3 && format!("{e:?}").contains("NotFound") => attempts += 1,
                    Err(e) => panic!("{e:?}"),
                }
            }
        }};
    }
    let subnet = visible!(c.ec2.create_subnet().vpc_id(&vpc).cidr_block("10.9.1.0/24"))
        .subnet()
        .unwrap()
        .subnet_id()
        .unwrap()
        .to_string();
    let group = visible!(c.ec2.create_security_group().group_name("g").description("g").vpc_id(&vpc))
        .group_id()
        .unwrap()
        .to_string();
    let eni = visible!(c.ec2.create_network_interface().subnet_id(&subnet).groups(&group));
    let code = |e: &dyn std::fmt::Debug| format!("{e:?}");
    let refused = c.ec2.delete_security_group().group_id(&group).send().await.unwrap_err();
    assert!(code(&refused).contains("DependencyViolation"), "{refused:?}");
    let refused = c.ec2.delete_subnet().subnet_id(&subnet).send().await.unwrap_err();
    assert!(code(&refused).contains("DependencyViolation"), "{refused:?}");
    let refused = c.ec2.delete_vpc().vpc_id(&vpc).send().await.unwrap_err();
    assert!(code(&refused).contains("DependencyViolation"), "{refused:?}");
    let refused =
        c.ec2.create_security_group().group_name("sg-x").description("x").vpc_id(&vpc).send().await.unwrap_err();
    assert!(code(&refused).contains("InvalidParameterValue"), "{refused:?}");
    let eni_id = eni.network_interface().unwrap().network_interface_id().unwrap();
    c.ec2.delete_network_interface().network_interface_id(eni_id).send().await.unwrap();
    c.ec2.delete_security_group().group_id(&group).send().await.unwrap();
    c.ec2.delete_subnet().subnet_id(&subnet).send().await.unwrap();
    c.ec2.delete_vpc().vpc_id(&vpc).send().await.unwrap();
}
