//! CloudWatch log groups, each with a retention period and removed by `down`: GitLab's own, and
//! the two that AWS would otherwise create untagged and leave behind (the initializer's Lambda
//! log group and Container Insights' performance log group), created here first so they are
//! the stack's. Also the reading of GitLab's logs for `logs`.

use async_trait::async_trait;
use aws_sdk_cloudwatchlogs::types::{FilteredLogEvent, LogGroup};

use ground::Diagnostic;

use crate::aws::{Ctx, call, if_there};
use crate::engine::{
    Applied, Conflict, Desired, Discovered, Env, Found, Live, Lost, Owner, ResourceOps, StepAction, StepScope, Summary,
    attrs,
};
use crate::keys::{self, Kind};
use crate::state::ResourceRecord;

/// A year of logs: what audits ask for (and a scanner's threshold), and cheap at GitLab's volume
/// (CloudWatch Logs stores a GB for $0.03 a month).
pub const RETENTION_DAYS: i32 = 365;
/// Where ECS's awslogs driver writes GitLab's container: `gitlab/gitlab/<task id>`.
pub const STREAM_PREFIX: &str = "gitlab";

pub fn gitlab_log_group(stack: &str) -> String {
    format!("/gitlab-provision/{stack}/gitlab")
}

/// ECS Exec sessions of the stack's cluster are logged here (the cluster's logging override).
pub fn exec_log_group(stack: &str) -> String {
    format!("/gitlab-provision/{stack}/exec")
}

/// Lambda writes a function's logs here, creating the group if it does not exist.
pub fn function_log_group(function: &str) -> String {
    format!("/aws/lambda/{function}")
}

/// Container Insights writes a cluster's performance events here.
pub fn insights_log_group(cluster: &str) -> String {
    format!("/aws/ecs/containerinsights/{cluster}/performance")
}

/// The log group a record names.
fn name_of(record: &ResourceRecord) -> anyhow::Result<&str> {
    record.id()
}

fn group_arn(ctx: &Ctx, name: &str) -> String {
    format!("arn:{}:logs:{}:{}:log-group:{name}", ctx.partition(), ctx.region(), ctx.account_id())
}

async fn describe(ctx: &Ctx, name: &str) -> anyhow::Result<Option<LogGroup>> {
    let out = call(ctx.aws.logs.describe_log_groups().log_group_name_prefix(name).send(), || {
        format!("reading log group {name}")
    })
    .await?;
    Ok(out.log_groups.unwrap_or_default().into_iter().find(|g| g.log_group_name() == Some(name)))
}

async fn owner(ctx: &Ctx, name: &str) -> anyhow::Result<Owner> {
    let out = if_there(ctx.aws.logs.list_tags_for_resource().resource_arn(group_arn(ctx, name)).send(), || {
        format!("reading the tags of log group {name}")
    })
    .await?;
    let tags = out.and_then(|o| o.tags).unwrap_or_default();
    Ok(ctx.tags.owner(tags.iter().map(|(k, v)| (k.as_str(), v.as_str()))))
}

pub struct LogGroupStep {
    pub key: &'static str,
    pub name: String,
    pub retention_days: i32,
    /// Encrypted with the stack's KMS key (`hardening = "strict"`), else with CloudWatch's own.
    pub encrypted: bool,
}

/// What a group without the stack's key records as its key.
const SERVICE_KEY: &str = "CloudWatch Logs' own";

#[async_trait]
impl StepAction<Ctx> for LogGroupStep {
    fn desired(&self, _ctx: &Ctx, env: &Env) -> anyhow::Result<Vec<Desired>> {
        let key = if self.encrypted { env.attr(keys::KEY, "arn")? } else { SERVICE_KEY.to_string() };
        let wanted = attrs([("retention_days", self.retention_days.to_string()), ("kms_key", key)]);
        // Round two's groups were encrypted with the service's key.
        Ok(vec![Desired::new(self.key, Kind::LogGroup, wanted).assuming(&[("kms_key", SERVICE_KEY)])])
    }

    async fn apply(&self, ctx: &Ctx, scope: &StepScope) -> anyhow::Result<Summary> {
        let want = scope.wanted_one(ctx, self)?;
        let (group, key, days) = (self.name.as_str(), self.key, self.retention_days);
        let kms_key = Some(want.text("kms_key").to_string()).filter(|k| k != SERVICE_KEY);
        let recorded_key = scope.state.get(key).and_then(|r| r.attr("kms_key").map(str::to_string));
        let kms_ref = kms_key.as_deref();
        let ensured = scope
            .ensure(ctx, &LogGroupOps, want, |existing, _| async move {
                let logs = &ctx.aws.logs;
                // Whether the group has the key it should: a new one is created with it; one
                // adopted or recorded with another key gets it.
                let mut keyed = recorded_key.as_deref().unwrap_or(SERVICE_KEY) == kms_ref.unwrap_or(SERVICE_KEY);
                if existing.is_none() {
                    let created = call(
                        logs.create_log_group()
                            .log_group_name(group)
                            .set_kms_key_id(kms_ref.map(str::to_string))
                            .set_tags(Some(ctx.tags.map(key)))
                            .send(),
                        || format!("creating log group {group}"),
                    )
                    .await;
                    keyed = match created {
                        Err(e) if e.is_code(&["ResourceAlreadyExistsException"]) => {
                            adopt_side_effect(ctx, key, group).await?;
                            kms_ref.is_none()
                        }
                        other => other.map(|_| true)?,
                    };
                }
                if !keyed {
                    match kms_ref {
                        Some(kms) => {
                            call(logs.associate_kms_key().log_group_name(group).kms_key_id(kms).send(), || {
                                format!("encrypting log group {group} with the stack's key")
                            })
                            .await
                            .map(drop)?
                        }
                        None => call(logs.disassociate_kms_key().log_group_name(group).send(), || {
                            format!("returning log group {group} to CloudWatch Logs' own key")
                        })
                        .await
                        .map(drop)?,
                    }
                }
                call(logs.put_retention_policy().log_group_name(group).retention_in_days(days).send(), || {
                    format!("setting the retention of {group}")
                })
                .await?;
                Ok(Applied::id(group).with("arn", group_arn(ctx, group)))
            })
            .await?;
        let encrypted = if kms_key.is_some() { ", the stack's key" } else { "" };
        Ok(ensured.summary(&format!(" ({days} days{encrypted})")))
    }
}

/// A log group that already exists: the stack's (a crash after the create), or one AWS made
/// for the stack's own function or cluster before this tool created it first (earlier
/// versions let AWS do it). Only those two are tagged and taken over; anything else is refused.
async fn adopt_side_effect(ctx: &Ctx, key: &str, group: &str) -> anyhow::Result<()> {
    match owner(ctx, group).await? {
        Owner::Ours | Owner::Unchecked => Ok(()),
        Owner::Foreign(_)
            if [keys::INIT_LOG_GROUP, keys::INSIGHTS_LOG_GROUP].contains(&key) && untagged(ctx, group).await? =>
        {
            call(
                ctx.aws
                    .logs
                    .tag_resource()
                    .resource_arn(group_arn(ctx, group))
                    .set_tags(Some(ctx.tags.map(key)))
                    .send(),
                || format!("tagging log group {group}"),
            )
            .await?;
            Ok(())
        }
        Owner::Foreign(why) => Err(Diagnostic::new(format!("log group {group} exists and is not this stack's: {why}"))
            .with_help("choose another stack name, or delete that log group if it is no one's")
            .into()),
    }
}

async fn untagged(ctx: &Ctx, group: &str) -> anyhow::Result<bool> {
    let out = call(ctx.aws.logs.list_tags_for_resource().resource_arn(group_arn(ctx, group)).send(), || {
        format!("reading the tags of log group {group}")
    })
    .await?;
    Ok(out.tags().is_none_or(|t| t.is_empty()))
}

pub struct LogGroupOps;

#[async_trait]
impl ResourceOps<Ctx> for LogGroupOps {
    fn noun(&self) -> &'static str {
        Kind::LogGroup.noun()
    }

    async fn read(&self, ctx: &Ctx, record: &ResourceRecord) -> anyhow::Result<Live> {
        Ok(match describe(ctx, name_of(record)?).await? {
            None => Live::Missing,
            Some(g) => {
                let mut drift = match (record.attr("retention_days"), g.retention_in_days()) {
                    (Some(want), Some(have)) if want == have.to_string() => vec![],
                    (Some(want), have) => vec![format!("retention is {have:?} days, not {want}")],
                    _ => vec![],
                };
                if let Some(want) = record.attr("kms_key").filter(|k| *k != SERVICE_KEY)
                    && g.kms_key_id() != Some(want)
                {
                    drift.push("it is no longer encrypted with the stack's key".to_string());
                }
                Live::present(format!("{} bytes stored", g.stored_bytes().unwrap_or(0)), drift)
            }
        })
    }

    async fn read_owned(&self, ctx: &Ctx, record: &ResourceRecord) -> anyhow::Result<Live> {
        self.read(ctx, record).await?.checked(owner(ctx, name_of(record)?)).await
    }

    async fn find(&self, ctx: &Ctx, lost: &Lost<'_>) -> anyhow::Result<Option<String>> {
        let name = name_of(lost.record).ok().map(str::to_string);
        let Some(name) = name else { return Ok(None) };
        Ok(describe(ctx, &name).await?.map(|_| name))
    }

    async fn delete(&self, ctx: &Ctx, record: &ResourceRecord, _scope: &StepScope) -> anyhow::Result<()> {
        let name = name_of(record)?;
        if_there(ctx.aws.logs.delete_log_group().log_group_name(name).send(), || format!("deleting log group {name}"))
            .await?;
        Ok(())
    }

    async fn discover(&self, ctx: &Ctx) -> anyhow::Result<Found> {
        let stack = &ctx.tags.stack;
        let mut found = Found::default();
        for (key, name) in [
            (keys::LOG_GROUP, gitlab_log_group(stack)),
            (keys::INIT_LOG_GROUP, function_log_group(&keys::names::init_function(stack))),
            (keys::INSIGHTS_LOG_GROUP, insights_log_group(&keys::names::cluster(stack))),
            (keys::EXEC_LOG_GROUP, exec_log_group(stack)),
            (keys::WAF_LOG_GROUP, crate::steps::waf::waf_log_group(stack)),
        ] {
            if describe(ctx, &name).await?.is_none() {
                continue;
            }
            match owner(ctx, &name).await? {
                Owner::Foreign(why) => {
                    found.conflicts.push(Conflict { kind: Kind::LogGroup.to_string(), id: name, why })
                }
                _ => found.ours.push(Discovered::new(key, name)),
            }
        }
        Ok(found)
    }
}

/// GitLab's log events since `start` (epoch ms), from every task's stream, oldest first.
/// Every event of the group's streams (those starting with `prefix`, when given) from `start`
/// (milliseconds), oldest first. FilterLogEvents may answer empty pages that still carry a token
/// ("Partially full or empty pages don't necessarily mean that pagination is finished"): it is
/// followed until AWS gives none (or gives the same one twice, which would loop).
pub async fn events_since(
    ctx: &Ctx,
    group: &str,
    prefix: Option<&str>,
    start: i64,
) -> anyhow::Result<Vec<FilteredLogEvent>> {
    let mut events = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let out = call(
            ctx.aws
                .logs
                .filter_log_events()
                .log_group_name(group)
                .set_log_stream_name_prefix(prefix.map(str::to_string))
                .start_time(start)
                .set_next_token(token.clone())
                .send(),
            || format!("reading log group {group}"),
        )
        .await?;
        events.extend(out.events.unwrap_or_default());
        match out.next_token {
            Some(next) if token.as_deref() != Some(next.as_str()) => token = Some(next),
            _ => break,
        }
    }
    events.sort_by_key(|e| e.timestamp().unwrap_or_default());
    Ok(events)
}
