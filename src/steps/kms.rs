//! KMS (`hardening = "strict"`): the stack's customer-managed key, which encrypts its log groups
//! and the root secret. Rotated yearly by KMS. Found again by its alias. `down` schedules its
//! deletion with the longest waiting period (30 days, during which `CancelKeyDeletion` brings
//! it back); `down --keep-data` keeps it with the secret and logs it encrypts.

use anyhow::Context as _;
use async_trait::async_trait;
use aws_sdk_kms::types::KeyState;
use serde_json::json;

use crate::aws::{Ctx, call, if_there};
use crate::engine::{
    Applied, Desired, Discovered, Env, Found, Live, Lost, Owner, ResourceOps, StepAction, StepScope, Summary, attrs,
};
use crate::keys::{self, Kind};
use crate::state::ResourceRecord;

/// AWS's longest waiting period before a scheduled key deletion happens.
const DELETION_WINDOW_DAYS: i32 = 30;

pub fn alias_name(stack: &str) -> String {
    format!("alias/gitlab-provision/{stack}")
}

/// Who may use the key. The account's root statement (AWS's default key policy) lets IAM
/// policies grant it, so the key can never be locked out; CloudWatch Logs may use it for the
/// stack's log groups alone (the encryption context names the group, per CloudWatch Logs'
/// "Encrypt log data using AWS KMS"). Secrets Manager uses it on its callers' behalf: GitLab's
/// execution role is allowed kms:Decrypt through Secrets Manager by its own policy.
fn key_policy(ctx: &Ctx) -> String {
    let (partition, region, account) = (ctx.partition(), ctx.region(), ctx.account_id());
    let stack = &ctx.tags.stack;
    let groups: Vec<String> = [
        format!("/gitlab-provision/{stack}/*"),
        format!("/aws/lambda/{}", crate::keys::names::init_function(stack)),
        format!("/aws/lambda/{}", crate::keys::names::wake_function(stack)),
        format!("/aws/ecs/containerinsights/{stack}/*"),
        format!("aws-waf-logs-{stack}"),
    ]
    .iter()
    .map(|g| format!("arn:{partition}:logs:{region}:{account}:log-group:{g}"))
    .collect();
    json!({
        "Version": "2012-10-17",
        "Statement": [
            {"Sid": "TheAccountManagesItThroughIam", "Effect": "Allow", "Principal": {"AWS": format!("arn:{partition}:iam::{account}:root")}, "Action": "kms:*", "Resource": "*"},
            {"Sid": "CloudWatchLogsForTheStacksGroups", "Effect": "Allow", "Principal": {"Service": format!("logs.{region}.amazonaws.com")},
             "Action": ["kms:Encrypt*", "kms:Decrypt*", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:Describe*"], "Resource": "*",
             "Condition": {"ArnLike": {"kms:EncryptionContext:aws:logs:arn": groups}}},
        ]
    })
    .to_string()
}

async fn alias_target(ctx: &Ctx, alias: &str) -> anyhow::Result<Option<String>> {
    let mut marker = None;
    loop {
        let out =
            call(ctx.aws.kms.list_aliases().set_marker(marker.clone()).send(), || "listing KMS aliases".into()).await?;
        if let Some(found) = out.aliases().iter().find(|a| a.alias_name() == Some(alias)) {
            return Ok(found.target_key_id().map(str::to_string));
        }
        match out.next_marker {
            Some(next) if out.truncated => marker = Some(next),
            _ => return Ok(None),
        }
    }
}

/// Points the alias at the key: created, or moved from a key it named before.
async fn name_key(ctx: &Ctx, alias: &str, id: &str) -> anyhow::Result<()> {
    let kms = &ctx.aws.kms;
    match alias_target(ctx, alias).await? {
        Some(target) if target == id => {}
        Some(_) => {
            call(kms.update_alias().alias_name(alias).target_key_id(id).send(), || format!("naming key {id} {alias}"))
                .await?;
        }
        None => {
            call(kms.create_alias().alias_name(alias).target_key_id(id).send(), || format!("naming key {id} {alias}"))
                .await?;
        }
    }
    Ok(())
}

/// The stack's key by its tags, for a run killed between CreateKey and naming it (KMS has no
/// idempotency token): every key of the account is listed, once, only on that path.
async fn tagged_key(ctx: &Ctx) -> anyhow::Result<Option<String>> {
    let mut marker = None;
    loop {
        let out = call(ctx.aws.kms.list_keys().set_marker(marker.clone()).send(), || "listing KMS keys".into()).await?;
        for key in out.keys() {
            let Some(id) = key.key_id() else { continue };
            let tags = if_there(ctx.aws.kms.list_resource_tags().key_id(id).send(), || {
                format!("reading the tags of key {id}")
            })
            .await?;
            let tags = tags.map(|t| t.tags).unwrap_or_default().unwrap_or_default();
            let tagged = |k: &str, v: &str| tags.iter().any(|t| t.tag_key() == k && t.tag_value() == v);
            if tagged(crate::aws::tags::STACK_TAG, &ctx.tags.stack) && tagged(crate::aws::tags::RESOURCE_TAG, keys::KEY)
            {
                let meta =
                    if_there(ctx.aws.kms.describe_key().key_id(id).send(), || format!("reading key {id}")).await?;
                let state = meta.and_then(|m| m.key_metadata).and_then(|m| m.key_state().cloned());
                if !matches!(state, Some(KeyState::PendingDeletion | KeyState::PendingReplicaDeletion) | None) {
                    return Ok(Some(id.to_string()));
                }
            }
        }
        match out.next_marker {
            Some(next) if out.truncated => marker = Some(next),
            _ => return Ok(None),
        }
    }
}

async fn key_owner(ctx: &Ctx, key: &str) -> anyhow::Result<Owner> {
    let out =
        call(ctx.aws.kms.list_resource_tags().key_id(key).send(), || format!("reading the tags of key {key}")).await?;
    Ok(ctx.tags.owner(out.tags().iter().map(|t| (t.tag_key(), t.tag_value()))))
}

pub struct KeyStep;

#[async_trait]
impl StepAction<Ctx> for KeyStep {
    fn desired(&self, ctx: &Ctx, _env: &Env) -> anyhow::Result<Vec<Desired>> {
        let wanted =
            attrs([("alias", alias_name(&ctx.tags.stack)), ("policy", key_policy(ctx)), ("rotation", "yearly".into())]);
        Ok(vec![Desired::new(keys::KEY, Kind::Key, wanted)])
    }

    async fn apply(&self, ctx: &Ctx, scope: &StepScope) -> anyhow::Result<Summary> {
        let want = scope.wanted_one(ctx, self)?;
        let (alias, policy) = (want.text("alias").to_string(), want.text("policy").to_string());
        let (alias, policy) = (alias.as_str(), policy.as_str());
        let ensured = scope
            .ensure(ctx, &KeyOps, want, |existing, _| async move {
                let kms = &ctx.aws.kms;
                let id = match existing {
                    Some(existing) => {
                        call(
                            kms.put_key_policy().key_id(&existing.id).policy_name("default").policy(policy).send(),
                            || format!("setting the policy of key {}", existing.id),
                        )
                        .await?;
                        existing.id
                    }
                    None => {
                        let created = call(
                            kms.create_key()
                                .description(format!("gitlab-provision stack {}: logs and root secret", ctx.tags.stack))
                                .policy(policy)
                                .set_tags(Some(ctx.tags.list(keys::KEY)))
                                .send(),
                            || "creating the stack's KMS key".into(),
                        )
                        .await?;
                        let id = created
                            .key_metadata()
                            .map(|m| m.key_id().to_string())
                            .context("CreateKey returned no key")?;
                        scope.created(keys::KEY, &id).await?;
                        id
                    }
                };
                // Also for a key a killed run created but did not name yet.
                name_key(ctx, alias, &id).await?;
                call(kms.enable_key_rotation().key_id(&id).send(), || format!("turning on the rotation of key {id}"))
                    .await?;
                let arn = call(kms.describe_key().key_id(&id).send(), || format!("reading key {id}"))
                    .await?
                    .key_metadata()
                    .and_then(|m| m.arn().map(str::to_string))
                    .context("DescribeKey returned no ARN")?;
                Ok(Applied::id(id).with("arn", arn))
            })
            .await?;
        Ok(ensured.summary(&format!(" ({alias}, rotated yearly)")))
    }
}

pub struct KeyOps;

#[async_trait]
impl ResourceOps<Ctx> for KeyOps {
    fn noun(&self) -> &'static str {
        Kind::Key.noun()
    }

    async fn read(&self, ctx: &Ctx, record: &ResourceRecord) -> anyhow::Result<Live> {
        let id = record.id()?;
        let out = if_there(ctx.aws.kms.describe_key().key_id(id).send(), || format!("reading key {id}")).await?;
        let Some(meta) = out.and_then(|o| o.key_metadata) else { return Ok(Live::Missing) };
        // A key whose deletion is scheduled is as good as gone: nothing may use it.
        let state = meta.key_state().cloned().unwrap_or(KeyState::Enabled);
        if matches!(state, KeyState::PendingDeletion | KeyState::PendingReplicaDeletion) {
            return Ok(Live::Missing);
        }
        let rotation = call(ctx.aws.kms.get_key_rotation_status().key_id(id).send(), || {
            format!("reading the rotation of key {id}")
        })
        .await?;
        let mut drift = vec![];
        if state != KeyState::Enabled {
            drift.push(format!("the key is {}", state.as_str()));
        }
        if !rotation.key_rotation_enabled() {
            drift.push("its rotation is off".to_string());
        }
        Ok(Live::present(format!("{}, rotated yearly", state.as_str()), drift))
    }

    async fn read_owned(&self, ctx: &Ctx, record: &ResourceRecord) -> anyhow::Result<Live> {
        self.read(ctx, record).await?.checked(key_owner(ctx, record.id()?)).await
    }

    async fn find(&self, ctx: &Ctx, lost: &Lost<'_>) -> anyhow::Result<Option<String>> {
        let Some(alias) = lost.record.attr("alias") else { return Ok(None) };
        let Some(id) = alias_target(ctx, alias).await? else { return tagged_key(ctx).await };
        Ok((key_owner(ctx, &id).await? == Owner::Ours).then_some(id))
    }

    /// The alias goes at once; the key after AWS's longest waiting period, so a mistaken
    /// `down` can still be undone (`aws kms cancel-key-deletion`).
    async fn delete(&self, ctx: &Ctx, record: &ResourceRecord, _scope: &StepScope) -> anyhow::Result<()> {
        let id = record.id()?;
        if let Some(alias) = record.attr("alias") {
            if_there(ctx.aws.kms.delete_alias().alias_name(alias).send(), || format!("removing alias {alias}")).await?;
        }
        let scheduled =
            ctx.aws.kms.schedule_key_deletion().key_id(id).pending_window_in_days(DELETION_WINDOW_DAYS).send();
        match if_there(scheduled, || format!("scheduling the deletion of key {id}")).await {
            // Already scheduled: nothing more to do.
            Err(e) if e.is_code(&["KMSInvalidStateException"]) => Ok(()),
            other => other.map(drop).map_err(Into::into),
        }
    }

    async fn discover(&self, ctx: &Ctx) -> anyhow::Result<Found> {
        let alias = alias_name(&ctx.tags.stack);
        let Some(id) = alias_target(ctx, &alias).await? else { return Ok(Found::default()) };
        Ok(match key_owner(ctx, &id).await? {
            Owner::Ours => vec![Discovered::new(keys::KEY, id).with("alias", alias)].into(),
            _ => Found::default(),
        })
    }
}
