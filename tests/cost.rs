//! The cheaper roads, read back through the AWS API: office hours and the idle sleep as
//! Application Auto Scaling actions and a CloudWatch alarm, the wake function behind the load
//! balancer, `sleep`/`wake` and what `status` says of them, a task with a public address instead
//! of a NAT, Fargate Spot and its interruptions; and what each saves in the estimate.

mod common;

use aws_sdk_applicationautoscaling::types::ServiceNamespace;
use common::{Emulator, Tool, id, stack_leftovers};
use serde_json::{Value, json};

const STACK_CHEAP: &str = "stack = \"cheap\"\nallowed_cidrs = [\"203.0.113.0/24\"]\n\
    schedule = \"Mon-Fri 07:30-19:30 Europe/Berlin\"\nidle_sleep = \"30m\"\negress = \"public-ip\"\n\
    efs_infrequent_access_after = \"30d\"\n";

/// A scheduled action as read back: name, schedule, time zone, min and max capacity.
type ScheduledAction = (String, String, Option<String>, Option<i32>, Option<i32>);

async fn bounds(emu: &Emulator, stack: &str) -> (i32, i32) {
    let out = emu.clients().scaling.describe_scalable_targets().service_namespace(ServiceNamespace::Ecs);
    let out = out.resource_ids(format!("service/{stack}/gitlab")).send().await.unwrap();
    let target = out.scalable_targets().first().expect("the service has a scalable target").clone();
    (target.min_capacity(), target.max_capacity())
}

async fn desired(emu: &Emulator, stack: &str) -> i32 {
    let out = emu.clients().ecs.describe_services().cluster(stack).services("gitlab").send().await.unwrap();
    out.services()[0].desired_count()
}

fn verdict(tool: &Tool) -> Value {
    tool.run(&["status", "--json"]).json()["verdict"].clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn office_hours_and_the_idle_sleep_are_scheduled_and_sleep_and_wake_hold_them() {
    let emu = Emulator::start();
    let c = emu.clients();
    let tool = Tool::new(&emu.endpoint);
    tool.write("gitlab-provision.toml", STACK_CHEAP);
    let run = tool.run(&["up", "--yes"]).ok();
    assert!(run.stderr.contains("GitLab's task has a public address"), "the trade is said: {}", run.stderr);
    let state = tool.state("cheap").unwrap();

    // Office hours: a wake ten minutes before 07:30 and a sleep at 19:30, Berlin time, weekdays.
    let resource = "service/cheap/gitlab";
    let out = c.scaling.describe_scheduled_actions().service_namespace(ServiceNamespace::Ecs);
    let out = out.resource_id(resource).send().await.unwrap();
    let mut actions: Vec<ScheduledAction> = out
        .scheduled_actions()
        .iter()
        .map(|a| {
            let action = a.scalable_target_action();
            (
                a.scheduled_action_name().to_string(),
                a.schedule().to_string(),
                a.timezone().map(str::to_string),
                action.and_then(|x| x.min_capacity()),
                action.and_then(|x| x.max_capacity()),
            )
        })
        .collect();
    actions.sort();
    assert_eq!(
        actions,
        vec![
            (
                "cheap-schedule-sleep".into(),
                "cron(30 19 ? * MON,TUE,WED,THU,FRI *)".into(),
                Some("Europe/Berlin".into()),
                Some(0),
                Some(0)
            ),
            (
                "cheap-schedule-wake".into(),
                "cron(20 7 ? * MON,TUE,WED,THU,FRI *)".into(),
                Some("Europe/Berlin".into()),
                Some(1),
                Some(1)
            ),
        ]
    );

    // The idle sleep: no request for 30 minutes sets the count to 0 (missing data counts as none).
    let out = c.scaling.describe_scaling_policies().service_namespace(ServiceNamespace::Ecs);
    let out = out.resource_id(resource).send().await.unwrap();
    let policy = out.scaling_policies().first().expect("the idle policy");
    let step = policy.step_scaling_policy_configuration().expect("a step scaling policy");
    assert_eq!(step.adjustment_type().map(|a| a.as_str()), Some("ExactCapacity"));
    assert!(step.step_adjustments().iter().all(|s| s.scaling_adjustment() == 0), "{step:?}");
    // CloudWatch through the harness: moto answers JSON, the SDK speaks CBOR.
    let out = emu.aws_clients().cloudwatch.describe_alarms().alarm_names("cheap-idle").send().await.unwrap();
    let alarm = out.metric_alarms().first().expect("the idle alarm");
    let function_arn = state["resources"]["wake-function"]["attrs"]["arn"].as_str().unwrap_or_default().to_string();
    let actions = alarm.alarm_actions();
    assert!(actions.iter().any(|a| a == policy.policy_arn()), "{actions:?}");
    assert!(actions.iter().any(|a| a.contains(":function:cheap-wake")), "{actions:?}");
    assert!(alarm.ok_actions().iter().any(|a| a.contains(":function:cheap-wake")), "{:?}", alarm.ok_actions());
    let expressions: Vec<&str> = alarm.metrics().iter().filter_map(|m| m.expression()).collect();
    assert!(expressions.iter().any(|e| e.contains("FILL(")), "{expressions:?}");
    let period = alarm.metrics().iter().find_map(|m| m.metric_stat().and_then(|s| s.period())).expect("a period");
    assert_eq!(alarm.evaluation_periods().unwrap_or_default() * period, 30 * 60);
    assert_eq!(alarm.treat_missing_data(), Some("breaching"), "an idle load balancer reports nothing");

    // The wake function answers while GitLab sleeps: the load balancer and the alarm may invoke it.
    let policy = c.lambda.get_policy().function_name("cheap-wake").send().await.unwrap();
    let text = policy.policy().unwrap_or_default();
    assert!(text.contains("elasticloadbalancing.amazonaws.com"), "{text}");
    assert!(text.contains("lambda.alarms.cloudwatch.amazonaws.com"), "{text}");
    assert!(!function_arn.is_empty() || text.contains("cheap-wake"));

    // Egress by public address: no NAT of any kind; the task sits in a public subnet with one.
    for key in ["nat-gateway", "nat-instance", "nat-eip"] {
        assert!(state["resources"].get(key).is_none(), "{key} recorded");
    }
    let out = c.ecs.describe_services().cluster("cheap").services("gitlab").send().await.unwrap();
    let network = out.services()[0].network_configuration().and_then(|n| n.awsvpc_configuration()).unwrap().clone();
    assert_eq!(network.assign_public_ip().map(|a| a.as_str()), Some("ENABLED"));
    let public = [id(&state, "subnet-public-a"), id(&state, "subnet-public-b")];
    assert!(network.subnets().iter().all(|s| public.contains(s)), "{:?}", network.subnets());
    // Infrequent Access after 30 days.
    let fs = id(&state, "file-system");
    let out = c.efs.describe_lifecycle_configuration().file_system_id(&fs).send().await.unwrap();
    let ia: Vec<String> =
        out.lifecycle_policies().iter().filter_map(|p| p.transition_to_ia().map(|t| t.as_str().to_string())).collect();
    assert_eq!(ia, vec!["AFTER_30_DAYS".to_string()]);
    assert_eq!(bounds(&emu, "cheap").await, (0, 1));

    // sleep: no task, the target held at 0 until the schedule's wake; status says so, and OK.
    let run = tool.run(&["sleep", "--stack", "cheap"]).ok();
    assert!(run.stdout.contains("sleeps until its schedule wakes it"), "{}", run.stdout);
    assert_eq!((bounds(&emu, "cheap").await, desired(&emu, "cheap").await), ((0, 0), 0));
    let v = verdict(&tool);
    assert_eq!((v["state"].as_str(), v["ok"].as_bool()), (Some("asleep"), Some(true)), "{v}");
    assert!(v["text"].as_str().unwrap().contains("(schedule)"), "{v}");
    // `up` leaves a sleeping GitLab asleep.
    let run = tool.run(&["up", "--yes"]).ok();
    assert!(run.stderr.contains("no changes"), "{}", run.stderr);
    assert_eq!(desired(&emu, "cheap").await, 0);
    // Away for a week: the schedule is suspended until `wake`.
    tool.run(&["sleep", "--stack", "cheap", "--through-schedule"]).ok();
    let out = c.scaling.describe_scalable_targets().service_namespace(ServiceNamespace::Ecs);
    let out = out.resource_ids(resource).send().await.unwrap();
    let suspended = out.scalable_targets()[0].suspended_state().and_then(|s| s.scheduled_scaling_suspended());
    assert_eq!(suspended, Some(true));
    assert!(verdict(&tool)["text"].as_str().unwrap().contains("until `gitlab-provision wake`"));

    // wake: one task until the next scheduled sleep, the schedule running again.
    tool.run(&["wake", "--stack", "cheap"]).ok();
    assert_eq!((bounds(&emu, "cheap").await, desired(&emu, "cheap").await), ((1, 1), 1));
    let out = c.scaling.describe_scalable_targets().service_namespace(ServiceNamespace::Ecs);
    let out = out.resource_ids(resource).send().await.unwrap();
    let suspended = out.scalable_targets()[0].suspended_state().and_then(|s| s.scheduled_scaling_suspended());
    assert_ne!(suspended, Some(true));
    assert_ne!(verdict(&tool)["state"].as_str(), Some("asleep"));
    let state = tool.state("cheap").unwrap();
    assert!(state["notes"].get("sleep").is_none(), "{}", state["notes"]);

    tool.run(&["down", "--yes", "--stack", "cheap"]).ok();
    assert_eq!(stack_leftovers(&c, "cheap").await, Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sleeping_gitlab_is_woken_by_a_restore_and_by_an_upgrade() {
    let emu = Emulator::start();
    let tool = Tool::new(&emu.endpoint);
    tool.write("gitlab-provision.toml", &STACK_CHEAP.replace("cheap", "nap"));
    tool.run(&["up", "--yes", "--wait"]).ok();
    tool.run(&["sleep", "--stack", "nap", "--through-schedule"]).ok();
    // A sleeping GitLab's backup is consistent without stopping anything; it stays asleep.
    let run = tool.run(&["backup", "--stack", "nap", "--yes"]).ok();
    assert_eq!(desired(&emu, "nap").await, 0, "{}", run.stderr);
    assert_eq!(verdict(&tool)["state"].as_str(), Some("asleep"));
    let points = tool.run(&["backup", "list", "--stack", "nap", "--json"]).ok().json();
    let point = points["recovery_points"][0]["arn"].as_str().expect("a recovery point").to_string();

    let run = tool.run(&["restore", "--stack", "nap", "--yes", &point]).ok();
    assert!(run.stderr.contains("GitLab is asleep; the restore wakes it"), "{}", run.stderr);
    assert_eq!((bounds(&emu, "nap").await, desired(&emu, "nap").await), ((1, 1), 1));
    assert_eq!(verdict(&tool)["state"].as_str(), Some("healthy"));

    tool.run(&["sleep", "--stack", "nap"]).ok();
    let run = tool.run(&["upgrade", "--stack", "nap", "--to", "19.5.2-ce.0", "--yes"]).ok();
    assert!(run.stderr.contains("GitLab is asleep; the upgrade wakes it"), "{}", run.stderr);
    assert_eq!((bounds(&emu, "nap").await, desired(&emu, "nap").await), ((1, 1), 1));
    let state = tool.state("nap").unwrap();
    assert!(state["notes"].get("sleep").is_none());
    tool.run(&["down", "--yes", "--stack", "nap"]).ok();
}

#[tokio::test(flavor = "multi_thread")]
async fn fargate_spot_places_the_task_there_and_status_counts_its_interruptions() {
    let emu = Emulator::start();
    let c = emu.clients();
    let tool = Tool::new(&emu.endpoint);
    tool.write(
        "gitlab-provision.toml",
        "stack = \"spotty\"\nallowed_cidrs = [\"203.0.113.0/24\"]\ncapacity = \"spot\"\n",
    );
    tool.run(&["up", "--yes", "--wait"]).ok();
    let cluster = c.ecs.describe_clusters().clusters("spotty").send().await.unwrap();
    assert!(cluster.clusters()[0].capacity_providers().iter().any(|p| p == "FARGATE_SPOT"));
    // Through the harness: moto drops the strategy (the strict model keeps it, as ECS does).
    let out = emu.aws_clients().ecs.describe_services().cluster("spotty").services("gitlab").send().await.unwrap();
    let strategy: Vec<(String, i32)> = out.services()[0]
        .capacity_provider_strategy()
        .iter()
        .map(|s| (s.capacity_provider().to_string(), s.weight()))
        .collect();
    assert_eq!(strategy, vec![("FARGATE_SPOT".to_string(), 1)]);
    // Spot has no ARM: the task runs x86_64.
    let definition = out.services()[0].task_definition().unwrap().to_string();
    let td = c.ecs.describe_task_definition().task_definition(definition).send().await.unwrap();
    let arch = td.task_definition().and_then(|t| t.runtime_platform()).and_then(|p| p.cpu_architecture());
    assert_eq!(arch.map(|a| a.as_str()), Some("X86_64"));

    // AWS takes the capacity back: the task stops with Spot's reason, the service starts another.
    emu.set_control(json!({"spot_interruptions": 1}));
    let mut text = String::new();
    for _ in 0..100 {
        text = tool.run(&["status", "--stack", "spotty"]).stdout;
        // Counted at once; its reason shown once it has stopped.
        if text.contains("1 interruption") && text.contains("last stopped") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(text.contains("capacity:       Fargate Spot, 1 interruption"), "{text}");
    assert!(text.contains("Your Spot Task was interrupted"), "{text}");
    assert!(text.contains("capacity = \"on-demand\" avoids this"), "{text}");
    assert!(emu.rules_fired().iter().any(|r| r == "spot-interruption"));
    // It comes back by itself.
    tool.run(&["up", "--yes", "--wait"]).ok();
    // No Spot capacity: the wait ends at once with ECS's words and the fix.
    let unavailable =
        "Capacity is unavailable at this time. Please try again later or in a different availability zone";
    emu.set_control(json!({"placement_error": unavailable}));
    tool.run(&["sleep", "--stack", "spotty"]).ok();
    let run = tool.run(&["wake", "--stack", "spotty", "--wait"]);
    assert_ne!(run.code, Some(0), "{}", run.stderr);
    assert!(run.stderr.contains(unavailable) && run.stderr.contains("up --capacity on-demand"), "{}", run.stderr);
    let v = verdict(&tool);
    assert!(v["text"].as_str().unwrap().contains("--capacity on-demand"), "{v}");
    emu.set_control(json!({}));
    tool.run(&["down", "--yes", "--stack", "spotty"]).ok();
    assert_eq!(stack_leftovers(&c, "spotty").await, Vec::<String>::new());
}

#[test]
fn each_cheaper_road_is_priced_and_spot_with_arm_is_refused_before_any_call() {
    let emu = Emulator::start();
    let tool = Tool::new(&emu.endpoint);
    let estimate = |extra: &str| -> f64 {
        tool.write(
            "gitlab-provision.toml",
            &format!("stack = \"priced\"\nallowed_cidrs = [\"203.0.113.0/24\"]\n{extra}"),
        );
        let plan = tool.run(&["plan", "--json"]).ok().json();
        plan["monthly_cost"]["total_usd_per_month"].as_f64().expect("an estimate")
    };
    let base = estimate("");
    let scheduled = estimate("schedule = \"Mon-Fri 07:30-19:30 Europe/Berlin\"\n");
    let as_table = estimate(
        "schedule = { days = \"Mon-Fri\", start = \"07:30\", stop = \"19:30\", timezone = \"Europe/Berlin\" }\n",
    );
    let public = estimate("schedule = \"Mon-Fri 07:30-19:30 Europe/Berlin\"\negress = \"public-ip\"\n");
    let spot = estimate("capacity = \"spot\"\n");
    assert!(base <= 115.0, "the default stack: ${base}");
    assert_eq!(scheduled, as_table);
    assert!(scheduled < base - 25.0, "office hours: ${scheduled} vs ${base}");
    assert!(public < scheduled, "public-ip: ${public} vs ${scheduled}");
    assert!(spot < base, "spot: ${spot} vs ${base}");

    tool.write(
        "gitlab-provision.toml",
        "stack = \"priced\"\nallowed_cidrs = [\"203.0.113.0/24\"]\ncapacity = \"spot\"\ncpu_architecture = \"arm64\"\n",
    );
    emu.clear_calls();
    let run = tool.run(&["up", "--yes"]).fails_with(2);
    assert!(run.stderr.contains("capacity") && run.stderr.contains("cpu_architecture"), "{}", run.stderr);
    assert!(emu.calls().iter().all(|c| !c.mutating), "a refused configuration changed something");
    tool.write(
        "gitlab-provision.toml",
        "stack = \"priced\"\nallowed_cidrs = [\"203.0.113.0/24\"]\nidle_sleep = \"7m\"\n",
    );
    let run = tool.run(&["plan"]).fails_with(2);
    assert!(run.stderr.contains("idle_sleep"), "{}", run.stderr);
}
