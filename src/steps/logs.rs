//! The container's CloudWatch log group, with a retention period (and removed by `down`).

use async_trait::async_trait;

use super::Ctx;
use super::network::attrs;
use crate::aws::{AwsResultExt, found};
use crate::engine::{Created, Desired, Discovered, Live, ResourceOps, StepAction, StepScope};
use crate::state::ResourceRecord;

pub const LOG_GROUP: &str = "logs:log-group";
pub const KEY_LOG_GROUP: &str = "log-group";
/// A month of logs is enough to debug an incident and cheap at GitLab's volume.
pub const RETENTION_DAYS: i32 = 30;

pub fn log_group_name(stack: &str) -> String {
    format!("/gitlab-provision/{stack}/gitlab")
}

pub struct CreateLogGroup;

async fn describe(ctx: &Ctx, name: &str) -> anyhow::Result<Option<aws_sdk_cloudwatchlogs::types::LogGroup>> {
    let out = ctx
        .aws
        .logs
        .describe_log_groups()
        .log_group_name_prefix(name)
        .send()
        .await
        .or_aws(|| format!("reading log group {name}"))?;
    Ok(out.log_groups.unwrap_or_default().into_iter().find(|g| g.log_group_name() == Some(name)))
}

#[async_trait]
impl StepAction<Ctx> for CreateLogGroup {
    async fn apply(&self, ctx: &Ctx, scope: &StepScope) -> anyhow::Result<String> {
        let name = log_group_name(&ctx.tags.stack);
        let desired = Desired {
            key: KEY_LOG_GROUP.into(),
            kind: LOG_GROUP.into(),
            depends_on: vec![],
            attrs: attrs([("retention_days", RETENTION_DAYS.to_string())]),
        };
        let logs = &ctx.aws.logs;
        let group = name.as_str();
        let ensured = scope
            .ensure(ctx, &LogGroupOps, desired, |existing, _token| async move {
                if existing.is_none() {
                    let created = logs
                        .create_log_group()
                        .log_group_name(group)
                        .set_tags(Some(ctx.tags.pairs(KEY_LOG_GROUP).into_iter().collect()))
                        .send()
                        .await
                        .or_aws(|| format!("creating log group {group}"));
                    match created {
                        Err(e) if e.is_code(&["ResourceAlreadyExistsException"]) => {}
                        other => {
                            other?;
                        }
                    }
                }
                logs.put_retention_policy()
                    .log_group_name(group)
                    .retention_in_days(RETENTION_DAYS)
                    .send()
                    .await
                    .or_aws(|| format!("setting the retention of {group}"))?;
                let arn = describe(ctx, group).await?.and_then(|g| g.arn).unwrap_or_default();
                Ok(Created { id: group.to_string(), attrs: attrs([("arn", arn)]) })
            })
            .await?;
        Ok(format!("{} {name} ({RETENTION_DAYS} days)", ensured.verb()))
    }
}

pub struct LogGroupOps;

#[async_trait]
impl ResourceOps<Ctx> for LogGroupOps {
    fn noun(&self) -> &'static str {
        "log group"
    }

    async fn read(&self, ctx: &Ctx, record: &ResourceRecord) -> anyhow::Result<Live> {
        let name = record.id()?;
        Ok(match describe(ctx, name).await? {
            None => Live::Missing,
            Some(g) => {
                let retention = g.retention_in_days();
                let drift = match (record.attr("retention_days"), retention) {
                    (Some(want), Some(have)) if want == have.to_string() => vec![],
                    (Some(want), have) => vec![format!("retention is {have:?} days, not {want}")],
                    _ => vec![],
                };
                Live::Present { summary: format!("{} bytes stored", g.stored_bytes().unwrap_or(0)), drift }
            }
        })
    }

    async fn find(
        &self,
        ctx: &Ctx,
        _key: &str,
        _record: &ResourceRecord,
        _token: &str,
    ) -> anyhow::Result<Option<String>> {
        let name = log_group_name(&ctx.tags.stack);
        Ok(describe(ctx, &name).await?.map(|_| name))
    }

    async fn delete(&self, ctx: &Ctx, record: &ResourceRecord, _scope: &StepScope) -> anyhow::Result<()> {
        let name = record.id()?;
        found(
            ctx.aws
                .logs
                .delete_log_group()
                .log_group_name(name)
                .send()
                .await
                .or_aws(|| format!("deleting log group {name}")),
        )?;
        Ok(())
    }

    async fn discover(&self, ctx: &Ctx) -> anyhow::Result<Vec<Discovered>> {
        let name = log_group_name(&ctx.tags.stack);
        Ok(describe(ctx, &name)
            .await?
            .map(|_| Discovered { key: KEY_LOG_GROUP.into(), id: name, attrs: Default::default() })
            .into_iter()
            .collect())
    }
}
