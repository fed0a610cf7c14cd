//! Wake on the first request (`idle_sleep`): the function (lambda-wake/handler.py) that answers
//! the load balancer while GitLab sleeps, starts it, and gives the listener back once GitLab is
//! healthy; and the alarm that puts GitLab to sleep after the configured time without a request
//! (CloudWatch's alarm, Application Auto Scaling's policy: nothing of ours decides it). The
//! function runs outside the VPC; its role may start this service and switch these listeners,
//! nothing else.

use anyhow::Context as _;
use async_trait::async_trait;
use aws_sdk_cloudwatch::types::{ComparisonOperator, Dimension, Metric, MetricDataQuery, MetricStat};
use aws_sdk_lambda::primitives::Blob;
use aws_sdk_lambda::types::{Architecture, Environment, FunctionCode, Runtime};
use serde_json::json;

use crate::aws::{AwsError, Ctx, call, if_there, propagated};
use crate::engine::{Applied, Desired, Env, Live, Lost, Owner, ResourceOps, StepAction, StepScope, Summary, attrs};
use crate::keys::{self, Kind, names};
use crate::state::ResourceRecord;

const HANDLER_SOURCE: &str = include_str!("../../lambda-wake/handler.py");
/// What the page promises: a restart of an existing GitLab (see `make bench`).
pub const WAKE_MINUTES: u32 = 6;

pub fn alarm_name(stack: &str) -> String {
    format!("{stack}-idle")
}

fn alarm_arn(ctx: &Ctx) -> String {
    format!(
        "arn:{}:cloudwatch:{}:{}:alarm:{}",
        ctx.partition(),
        ctx.region(),
        ctx.account_id(),
        alarm_name(&ctx.tags.stack)
    )
}

fn service_arn(ctx: &Ctx, cluster: &str) -> String {
    let cluster = cluster.rsplit('/').next().unwrap_or(cluster);
    format!(
        "arn:{}:ecs:{}:{}:service/{cluster}/{}",
        ctx.partition(),
        ctx.region(),
        ctx.account_id(),
        super::service::SERVICE_NAME
    )
}

/// The wake function's rights: start this service (its scalable target's bounds and its task
/// count), switch these listeners, read target health, write its log group.
pub fn wake_policy(ctx: &Ctx, env: &Env, listener: &'static str) -> anyhow::Result<Option<serde_json::Value>> {
    let log_group = format!("{}:*", env.attr(keys::WAKE_LOG_GROUP, "arn")?);
    Ok(Some(json!({
        "Version": "2012-10-17",
        "Statement": [
            {"Sid": "StartThisService", "Effect": "Allow", "Action": ["ecs:UpdateService", "ecs:DescribeServices"], "Resource": service_arn(ctx, &env.id(keys::CLUSTER)?)},
            {"Sid": "SwitchThisListener", "Effect": "Allow", "Action": "elasticloadbalancing:ModifyListener", "Resource": env.id(listener)?},
            // Neither takes a resource: AWS's service authorization reference lists none.
            {"Sid": "ReadHealthAndBounds", "Effect": "Allow", "Action": ["elasticloadbalancing:DescribeTargetHealth", "application-autoscaling:DescribeScalableTargets", "application-autoscaling:RegisterScalableTarget"], "Resource": "*"},
            {"Sid": "ItsLogs", "Effect": "Allow", "Action": ["logs:CreateLogStream", "logs:PutLogEvents"], "Resource": log_group},
        ]
    })))
}

// ---------------------------------------------------------------------------------------------
// The function

pub struct WakeFunctionStep {
    /// The listener that forwards to GitLab (HTTPS's with a domain, else HTTP's).
    pub listener: &'static str,
}

#[async_trait]
impl StepAction<Ctx> for WakeFunctionStep {
    fn desired(&self, ctx: &Ctx, env: &Env) -> anyhow::Result<Vec<Desired>> {
        let wanted = attrs([
            ("name", names::wake_function(&ctx.tags.stack)),
            ("role", env.id(keys::WAKE_ROLE)?),
            ("cluster", env.id(keys::CLUSTER)?),
            ("listener", env.id(self.listener)?),
            ("gitlab_target_group", env.id(keys::TARGET_GROUP)?),
            ("wake_target_group", env.id(keys::WAKE_TARGET_GROUP)?),
            // The scalable target's name, from the cluster's (the function is deleted before
            // the target, so it does not wait for its record).
            ("resource", super::scaling::resource_id(&env.id(keys::CLUSTER)?)),
        ]);
        Ok(vec![Desired::new(keys::WAKE_FUNCTION, Kind::Function, wanted).replaced_on(&[
            "name",
            "role",
            "wake_target_group",
        ])])
    }

    async fn apply(&self, ctx: &Ctx, scope: &StepScope) -> anyhow::Result<Summary> {
        let want = scope.wanted_one(ctx, self)?;
        let settings = want.clone();
        let ensured = scope
            .ensure(ctx, &super::lambda::FunctionOps, want, |existing, _| async move {
                let name = settings.text("name");
                let lambda = &ctx.aws.lambda;
                let environment = Environment::builder()
                    .variables("CLUSTER", settings.text("cluster"))
                    .variables("SERVICE", super::service::SERVICE_NAME)
                    .variables("LISTENERS", settings.text("listener"))
                    .variables("GITLAB_TARGET_GROUP", settings.text("gitlab_target_group"))
                    .variables("WAKE_TARGET_GROUP", settings.text("wake_target_group"))
                    .variables("SCALABLE_TARGET", settings.text("resource"))
                    .variables("BOOT_MINUTES", WAKE_MINUTES.to_string())
                    .build();
                if existing.is_some() {
                    call(
                        lambda.update_function_configuration().function_name(name).environment(environment).send(),
                        || format!("updating function {name}"),
                    )
                    .await?;
                } else {
                    create(ctx, name, settings.text("role"), environment).await?;
                }
                super::lambda::wait_active(ctx, scope, name).await?;
                let arn = permit_and_register(ctx, name, settings.text("wake_target_group")).await?;
                Ok(Applied::id(name).with("arn", arn))
            })
            .await?;
        Ok(ensured.summary(" (outside the VPC; answers while GitLab sleeps)"))
    }
}

async fn create(ctx: &Ctx, name: &str, role: &str, environment: Environment) -> anyhow::Result<()> {
    let zip = super::lambda::package(HANDLER_SOURCE)?;
    // A role created moments ago may not be assumable by Lambda yet.
    let not_yet =
        |e: &AwsError| e.is_code(&["InvalidParameterValueException"]) && e.message.contains("cannot be assumed");
    propagated(not_yet, || async {
        call(
            ctx.aws
                .lambda
                .create_function()
                .function_name(name)
                .runtime(Runtime::Python313)
                .architectures(Architecture::Arm64)
                .handler("handler.handler")
                .role(role)
                .code(FunctionCode::builder().zip_file(Blob::new(zip.clone())).build())
                .timeout(15)
                .memory_size(128)
                .description("gitlab-provision: wakes a sleeping GitLab on its first request")
                .environment(environment.clone())
                .set_tags(Some(ctx.tags.map(keys::WAKE_FUNCTION)))
                .send(),
            || format!("creating function {name}"),
        )
        .await
    })
    .await?;
    Ok(())
}

/// Lets the load balancer (from the wake target group) and the idle alarm invoke the function,
/// then registers it as the target group's one target. Returns the function's ARN.
async fn permit_and_register(ctx: &Ctx, name: &str, target_group: &str) -> anyhow::Result<String> {
    let lambda = &ctx.aws.lambda;
    for (sid, principal, source) in [
        ("load-balancer", "elasticloadbalancing.amazonaws.com", target_group.to_string()),
        ("idle-alarm", "lambda.alarms.cloudwatch.amazonaws.com", alarm_arn(ctx)),
    ] {
        let added = call(
            lambda
                .add_permission()
                .function_name(name)
                .statement_id(sid)
                .action("lambda:InvokeFunction")
                .principal(principal)
                .source_arn(&source)
                .send(),
            || format!("letting {principal} invoke {name}"),
        )
        .await;
        match added {
            // Granted by an earlier run.
            Err(e) if e.is_code(&["ResourceConflictException"]) => {}
            other => drop(other?),
        }
    }
    let arn =
        call(lambda.get_function_configuration().function_name(name).send(), || format!("reading function {name}"))
            .await?
            .function_arn
            .context("GetFunctionConfiguration returned no ARN")?;
    let target = aws_sdk_elasticloadbalancingv2::types::TargetDescription::builder().id(&arn).build();
    call(ctx.aws.elb.register_targets().target_group_arn(target_group).targets(target).send(), || {
        format!("registering {name} in {target_group}")
    })
    .await?;
    Ok(arn)
}

// ---------------------------------------------------------------------------------------------
// The idle alarm

pub struct IdleAlarmStep {
    pub minutes: u32,
}

/// The alarm looks at five-minute sums of the load balancer's requests, zeros where there were
/// none (FILL: an idle load balancer reports nothing, and "nothing" must count as idle).
const PERIOD_SECONDS: i32 = 300;

#[async_trait]
impl StepAction<Ctx> for IdleAlarmStep {
    fn desired(&self, ctx: &Ctx, env: &Env) -> anyhow::Result<Vec<Desired>> {
        let wanted = attrs([
            ("name", alarm_name(&ctx.tags.stack)),
            ("idle_minutes", self.minutes.to_string()),
            ("missing_data", "breaching".into()),
            ("load_balancer", env.id(keys::LOAD_BALANCER)?),
            ("policy", env.attr(keys::IDLE_POLICY, "arn")?),
            ("function", env.attr(keys::WAKE_FUNCTION, "arn")?),
        ]);
        Ok(vec![Desired::new(keys::IDLE_ALARM, Kind::Alarm, wanted).replaced_on(&["name"])])
    }

    async fn apply(&self, ctx: &Ctx, scope: &StepScope) -> anyhow::Result<Summary> {
        let want = scope.wanted_one(ctx, self)?;
        let settings = want.clone();
        let minutes = self.minutes;
        let ensured = scope
            .ensure(ctx, &AlarmOps, want, |_, _| async move {
                let name = settings.text("name");
                // The metric's dimension: the part of the ARN after `loadbalancer/`.
                let lb = settings.text("load_balancer");
                let dimension = lb.split_once(":loadbalancer/").map(|(_, d)| d).unwrap_or(lb);
                let requests = Metric::builder()
                    .namespace("AWS/ApplicationELB")
                    .metric_name("RequestCount")
                    .dimensions(Dimension::builder().name("LoadBalancer").value(dimension).build())
                    .build();
                let stat = MetricStat::builder().metric(requests).period(PERIOD_SECONDS).stat("Sum").build();
                let periods = (minutes as i32 * 60 / PERIOD_SECONDS).max(1);
                call(
                    ctx.aws
                        .cloudwatch
                        .put_metric_alarm()
                        .alarm_name(name)
                        .alarm_description(format!(
                            "GitLab unused for {minutes} minutes: it sleeps until the next request"
                        ))
                        .metrics(MetricDataQuery::builder().id("requests").metric_stat(stat).return_data(false).build())
                        .metrics(
                            MetricDataQuery::builder()
                                .id("filled")
                                .expression("FILL(requests, 0)")
                                .return_data(true)
                                .build(),
                        )
                        .evaluation_periods(periods)
                        .datapoints_to_alarm(periods)
                        // No datapoint at all (FILL has nothing to fill when the load balancer
                        // reported nothing in the whole window) is idle too.
                        .treat_missing_data("breaching")
                        .threshold(1.0)
                        .comparison_operator(ComparisonOperator::LessThanThreshold)
                        .alarm_actions(settings.text("policy"))
                        .alarm_actions(settings.text("function"))
                        // Back to OK (requests again): the function lets GitLab sleep again later.
                        .ok_actions(settings.text("function"))
                        .set_tags(Some(
                            ctx.tags
                                .pairs(keys::IDLE_ALARM)
                                .into_iter()
                                .map(|(k, v)| aws_sdk_cloudwatch::types::Tag::builder().key(k).value(v).build())
                                .collect(),
                        ))
                        .send(),
                    || format!("creating alarm {name}"),
                )
                .await?;
                Ok(Applied::id(name).with("arn", alarm_arn(ctx)))
            })
            .await?;
        Ok(ensured.summary(&format!(" (no request for {minutes} minutes: GitLab sleeps)")))
    }
}

pub struct AlarmOps;

#[async_trait]
impl ResourceOps<Ctx> for AlarmOps {
    fn noun(&self) -> &'static str {
        Kind::Alarm.noun()
    }

    async fn read(&self, ctx: &Ctx, record: &ResourceRecord) -> anyhow::Result<Live> {
        let name = record.id()?;
        let out =
            call(ctx.aws.cloudwatch.describe_alarms().alarm_names(name).send(), || format!("reading alarm {name}"))
                .await?;
        Ok(match out.metric_alarms().first() {
            None => Live::Missing,
            Some(a) => Live::present(a.state_value().map(|s| s.as_str().to_lowercase()).unwrap_or_default(), vec![])
                .owned_by(Owner::Ours),
        })
    }

    async fn find(&self, _ctx: &Ctx, lost: &Lost<'_>) -> anyhow::Result<Option<String>> {
        Ok(lost.record.attr("name").map(str::to_string))
    }

    async fn delete(&self, ctx: &Ctx, record: &ResourceRecord, _scope: &StepScope) -> anyhow::Result<()> {
        let name = record.id()?;
        if_there(ctx.aws.cloudwatch.delete_alarms().alarm_names(name).send(), || format!("deleting alarm {name}"))
            .await?;
        Ok(())
    }
}
