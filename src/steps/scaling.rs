//! Application Auto Scaling on GitLab's service: the scalable target (0 to 1 task), the office
//! hours' two scheduled actions (with their time zone), and the idle sleep's step policy. AWS
//! runs all of them; nothing of ours does. `sleep` and `wake` change the target's bounds.

use anyhow::Context as _;
use async_trait::async_trait;
use aws_sdk_applicationautoscaling::types::{
    AdjustmentType, MetricAggregationType, PolicyType, ScalableDimension, ScalableTarget, ScalableTargetAction,
    ServiceNamespace, StepAdjustment, StepScalingPolicyConfiguration, SuspendedState,
};

use crate::aws::{Ctx, call, if_there};
use crate::engine::{Applied, Desired, Env, Live, Lost, Owner, ResourceOps, StepAction, StepScope, Summary, attrs};
use crate::keys::{self, Kind};
use crate::schedule::OfficeHours;
use crate::state::ResourceRecord;

const NAMESPACE: ServiceNamespace = ServiceNamespace::Ecs;
const DIMENSION: ScalableDimension = ScalableDimension::EcsServiceDesiredCount;

/// Application Auto Scaling's name for the service: `service/<cluster>/<service>`.
pub fn resource_id(cluster_arn: &str) -> String {
    let cluster = cluster_arn.rsplit('/').next().unwrap_or(cluster_arn);
    format!("service/{cluster}/{}", super::service::SERVICE_NAME)
}

pub async fn scalable_target(ctx: &Ctx, resource: &str) -> anyhow::Result<Option<ScalableTarget>> {
    let out = call(
        ctx.aws
            .scaling
            .describe_scalable_targets()
            .service_namespace(NAMESPACE)
            .resource_ids(resource)
            .scalable_dimension(DIMENSION)
            .send(),
        || format!("reading the scalable target {resource}"),
    )
    .await?;
    Ok(out.scalable_targets.unwrap_or_default().into_iter().next())
}

/// Sets the service's bounds: (0, 0) asleep until the next scheduled change, (1, 1) awake, (0, 1)
/// free to sleep when idle; `suspended` holds the scheduled actions (a `sleep` through them).
pub async fn set_bounds(ctx: &Ctx, resource: &str, min: i32, max: i32, suspended: bool) -> anyhow::Result<()> {
    let suspend = SuspendedState::builder().scheduled_scaling_suspended(suspended).build();
    call(
        ctx.aws
            .scaling
            .register_scalable_target()
            .service_namespace(NAMESPACE)
            .resource_id(resource)
            .scalable_dimension(DIMENSION)
            .min_capacity(min)
            .max_capacity(max)
            .suspended_state(suspend)
            .send(),
        || format!("setting {resource} to between {min} and {max} tasks"),
    )
    .await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The scalable target

pub struct ScalableTargetStep;

#[async_trait]
impl StepAction<Ctx> for ScalableTargetStep {
    fn desired(&self, _ctx: &Ctx, env: &Env) -> anyhow::Result<Vec<Desired>> {
        let resource = resource_id(&env.id(keys::CLUSTER)?);
        Ok(vec![
            Desired::new(keys::SCALABLE_TARGET, Kind::ScalableTarget, attrs([("resource", resource)]))
                .replaced_on(&["resource"]),
        ])
    }

    async fn apply(&self, ctx: &Ctx, scope: &StepScope) -> anyhow::Result<Summary> {
        let want = scope.wanted_one(ctx, self)?;
        let resource = want.text("resource").to_string();
        let resource_ref = resource.as_str();
        let ensured = scope
            .ensure(ctx, &ScalableTargetOps, want, |existing, _| async move {
                // A new target takes the service as it is (0 or 1 task) and lets it go either
                // way; an existing one keeps its bounds (a `sleep`, the schedule's last change).
                if existing.is_none() {
                    set_bounds(ctx, resource_ref, 0, 1, false).await?;
                }
                Ok(Applied::id(resource_ref))
            })
            .await?;
        Ok(ensured.summary(" (0 to 1 task)"))
    }
}

pub struct ScalableTargetOps;

#[async_trait]
impl ResourceOps<Ctx> for ScalableTargetOps {
    fn noun(&self) -> &'static str {
        Kind::ScalableTarget.noun()
    }

    async fn read(&self, ctx: &Ctx, record: &ResourceRecord) -> anyhow::Result<Live> {
        Ok(match scalable_target(ctx, record.id()?).await? {
            None => Live::Missing,
            Some(t) => {
                let suspended = t.suspended_state().and_then(|s| s.scheduled_scaling_suspended()).unwrap_or(false);
                let schedule = if suspended { ", schedule held" } else { "" };
                Live::present(format!("{} to {} tasks{schedule}", t.min_capacity(), t.max_capacity()), vec![])
                    .owned_by(Owner::Ours)
            }
        })
    }

    async fn find(&self, _ctx: &Ctx, lost: &Lost<'_>) -> anyhow::Result<Option<String>> {
        Ok(lost.record.attr("resource").map(str::to_string))
    }

    /// Deregistering removes its scheduled actions and policies with it.
    async fn delete(&self, ctx: &Ctx, record: &ResourceRecord, _scope: &StepScope) -> anyhow::Result<()> {
        let resource = record.id()?;
        if_there(
            ctx.aws
                .scaling
                .deregister_scalable_target()
                .service_namespace(NAMESPACE)
                .resource_id(resource)
                .scalable_dimension(DIMENSION)
                .send(),
            || format!("deregistering {resource}"),
        )
        .await?;
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Office hours

pub struct ScheduledActionStep {
    pub key: &'static str,
    pub hours: OfficeHours,
}

impl ScheduledActionStep {
    fn wakes(&self) -> bool {
        self.key == keys::SCHEDULE_WAKE
    }
}

#[async_trait]
impl StepAction<Ctx> for ScheduledActionStep {
    fn desired(&self, ctx: &Ctx, env: &Env) -> anyhow::Result<Vec<Desired>> {
        let (schedule, capacity) =
            if self.wakes() { (self.hours.wake_cron(), "1") } else { (self.hours.sleep_cron(), "0") };
        let wanted = attrs([
            ("name", ctx.tags.name(self.key)),
            ("resource", env.id(keys::SCALABLE_TARGET)?),
            ("schedule", schedule),
            ("timezone", self.hours.timezone.clone()),
            ("tasks", capacity.to_string()),
        ]);
        Ok(vec![Desired::new(self.key, Kind::ScheduledAction, wanted).replaced_on(&["name", "resource"])])
    }

    async fn apply(&self, ctx: &Ctx, scope: &StepScope) -> anyhow::Result<Summary> {
        let want = scope.wanted_one(ctx, self)?;
        let (name, resource, schedule, timezone) = (
            want.text("name").to_string(),
            want.text("resource").to_string(),
            want.text("schedule").to_string(),
            want.text("timezone").to_string(),
        );
        let tasks: i32 = want.text("tasks").parse().context("a task count")?;
        let (name_ref, resource_ref, schedule_ref, timezone_ref) =
            (name.as_str(), resource.as_str(), schedule.as_str(), timezone.as_str());
        let ensured = scope
            .ensure(ctx, &ScheduledActionOps, want, |_, _| async move {
                // Putting an action of the same name replaces it.
                call(
                    ctx.aws
                        .scaling
                        .put_scheduled_action()
                        .service_namespace(NAMESPACE)
                        .scheduled_action_name(name_ref)
                        .resource_id(resource_ref)
                        .scalable_dimension(DIMENSION)
                        .schedule(schedule_ref)
                        .timezone(timezone_ref)
                        .scalable_target_action(
                            ScalableTargetAction::builder().min_capacity(tasks).max_capacity(tasks).build(),
                        )
                        .send(),
                    || format!("scheduling {name_ref} ({schedule_ref}, {timezone_ref})"),
                )
                .await?;
                Ok(Applied::id(name_ref))
            })
            .await?;
        let what = if self.wakes() { "wakes GitLab" } else { "puts GitLab to sleep" };
        Ok(ensured.summary(&format!(" ({what}: {schedule} {timezone})")))
    }
}

pub struct ScheduledActionOps;

async fn scheduled_action(
    ctx: &Ctx,
    name: &str,
    resource: &str,
) -> anyhow::Result<Option<aws_sdk_applicationautoscaling::types::ScheduledAction>> {
    let out = call(
        ctx.aws
            .scaling
            .describe_scheduled_actions()
            .service_namespace(NAMESPACE)
            .scheduled_action_names(name)
            .resource_id(resource)
            .send(),
        || format!("reading scheduled action {name}"),
    )
    .await?;
    Ok(out.scheduled_actions.unwrap_or_default().into_iter().next())
}

#[async_trait]
impl ResourceOps<Ctx> for ScheduledActionOps {
    fn noun(&self) -> &'static str {
        Kind::ScheduledAction.noun()
    }

    async fn read(&self, ctx: &Ctx, record: &ResourceRecord) -> anyhow::Result<Live> {
        let resource = record.attr("resource").context("the scheduled action's record names no service")?;
        Ok(match scheduled_action(ctx, record.id()?, resource).await? {
            None => Live::Missing,
            Some(a) => {
                let mut drift = vec![];
                if record.attr("schedule").is_some_and(|s| s != a.schedule()) {
                    drift.push(format!("its schedule is {}", a.schedule()));
                }
                if record.attr("timezone").is_some_and(|t| Some(t) != a.timezone()) {
                    drift.push(format!("its time zone is {}", a.timezone().unwrap_or("UTC")));
                }
                Live::present(format!("{} {}", a.schedule(), a.timezone().unwrap_or("UTC")), drift)
                    .owned_by(Owner::Ours)
            }
        })
    }

    async fn find(&self, _ctx: &Ctx, lost: &Lost<'_>) -> anyhow::Result<Option<String>> {
        Ok(lost.record.attr("name").map(str::to_string))
    }

    async fn delete(&self, ctx: &Ctx, record: &ResourceRecord, _scope: &StepScope) -> anyhow::Result<()> {
        let (name, resource) = (record.id()?, record.attr("resource").unwrap_or_default());
        if_there(
            ctx.aws
                .scaling
                .delete_scheduled_action()
                .service_namespace(NAMESPACE)
                .scheduled_action_name(name)
                .resource_id(resource)
                .scalable_dimension(DIMENSION)
                .send(),
            || format!("deleting scheduled action {name}"),
        )
        .await?;
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// The idle sleep's policy: the alarm's action that sets the service to no task

pub struct IdlePolicyStep;

#[async_trait]
impl StepAction<Ctx> for IdlePolicyStep {
    fn desired(&self, ctx: &Ctx, env: &Env) -> anyhow::Result<Vec<Desired>> {
        let wanted = attrs([("name", ctx.tags.name(keys::IDLE_POLICY)), ("resource", env.id(keys::SCALABLE_TARGET)?)]);
        Ok(vec![Desired::new(keys::IDLE_POLICY, Kind::ScalingPolicy, wanted).replaced_on(&["name", "resource"])])
    }

    async fn apply(&self, ctx: &Ctx, scope: &StepScope) -> anyhow::Result<Summary> {
        let want = scope.wanted_one(ctx, self)?;
        let (name, resource) = (want.text("name").to_string(), want.text("resource").to_string());
        let (name_ref, resource_ref) = (name.as_str(), resource.as_str());
        let ensured = scope
            .ensure(ctx, &ScalingPolicyOps, want, |_, _| async move {
                // One step over every value: whatever the alarm saw, no task. (The alarm's
                // metric is filled with zeros, so it always has a value.)
                let to_zero = StepAdjustment::builder().scaling_adjustment(0).build()?;
                let steps = StepScalingPolicyConfiguration::builder()
                    .adjustment_type(AdjustmentType::ExactCapacity)
                    .step_adjustments(to_zero)
                    .metric_aggregation_type(MetricAggregationType::Maximum)
                    .cooldown(300)
                    .build();
                let out = call(
                    ctx.aws
                        .scaling
                        .put_scaling_policy()
                        .policy_name(name_ref)
                        .service_namespace(NAMESPACE)
                        .resource_id(resource_ref)
                        .scalable_dimension(DIMENSION)
                        .policy_type(PolicyType::StepScaling)
                        .step_scaling_policy_configuration(steps)
                        .send(),
                    || format!("creating scaling policy {name_ref}"),
                )
                .await?;
                Ok(Applied::id(name_ref).with("arn", out.policy_arn()))
            })
            .await?;
        Ok(ensured.summary(" (no task, when the idle alarm fires)"))
    }
}

pub struct ScalingPolicyOps;

#[async_trait]
impl ResourceOps<Ctx> for ScalingPolicyOps {
    fn noun(&self) -> &'static str {
        Kind::ScalingPolicy.noun()
    }

    async fn read(&self, ctx: &Ctx, record: &ResourceRecord) -> anyhow::Result<Live> {
        let resource = record.attr("resource").context("the policy's record names no service")?;
        let out = call(
            ctx.aws
                .scaling
                .describe_scaling_policies()
                .service_namespace(NAMESPACE)
                .policy_names(record.id()?)
                .resource_id(resource)
                .send(),
            || format!("reading scaling policy {}", record.id().unwrap_or_default()),
        )
        .await?;
        Ok(match out.scaling_policies().first() {
            None => Live::Missing,
            Some(p) => Live::present(p.policy_type().as_str().to_string(), vec![]).owned_by(Owner::Ours),
        })
    }

    async fn find(&self, _ctx: &Ctx, lost: &Lost<'_>) -> anyhow::Result<Option<String>> {
        Ok(lost.record.attr("name").map(str::to_string))
    }

    async fn delete(&self, ctx: &Ctx, record: &ResourceRecord, _scope: &StepScope) -> anyhow::Result<()> {
        let (name, resource) = (record.id()?, record.attr("resource").unwrap_or_default());
        if_there(
            ctx.aws
                .scaling
                .delete_scaling_policy()
                .policy_name(name)
                .service_namespace(NAMESPACE)
                .resource_id(resource)
                .scalable_dimension(DIMENSION)
                .send(),
            || format!("deleting scaling policy {name}"),
        )
        .await?;
        Ok(())
    }
}
