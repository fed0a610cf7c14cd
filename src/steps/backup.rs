//! AWS Backup: the stack's backup vault, on-demand backups of the file system, the recovery
//! points there are, and restores into a new file system. The vault is never deleted while it
//! holds backups: `down` keeps it and says how to remove them.

use std::time::Duration;

use anyhow::Context as _;
use async_trait::async_trait;
use aws_sdk_backup::types::{BackupJobState, RestoreJobStatus};

use crate::aws::{Absent, AwsResultExt, Ctx, call, if_there};
use crate::engine::counted;
use crate::engine::{
    Applied, Conflict, Desired, Discovered, Env, Found, Live, Lost, Owner, Poll, ResourceOps, StepAction, StepScope,
    Summary, WaitPolicy, attrs, wait_until,
};
use crate::keys::{self, Kind};
use crate::state::ResourceRecord;

/// A backup of a small team's file system takes minutes; a first (full) one of a large one, hours.
const JOB_WAIT: WaitPolicy = WaitPolicy::up_to(Duration::from_secs(6 * 3600));

pub fn vault_name(stack: &str) -> String {
    format!("gitlab-provision-{stack}")
}

fn vault_arn(ctx: &Ctx, name: &str) -> String {
    format!("arn:{}:backup:{}:{}:backup-vault:{name}", ctx.partition(), ctx.region(), ctx.account_id())
}

async fn vault_owner(ctx: &Ctx, name: &str) -> anyhow::Result<Owner> {
    let out = call(ctx.aws.backup.list_tags().resource_arn(vault_arn(ctx, name)).send(), || {
        format!("reading the tags of vault {name}")
    })
    .await?;
    let tags = out.tags.unwrap_or_default();
    Ok(ctx.tags.owner(tags.iter().map(|(k, v)| (k.as_str(), v.as_str()))))
}

async fn vault_points(ctx: &Ctx, name: &str) -> anyhow::Result<Option<i64>> {
    let out = if_there(ctx.aws.backup.describe_backup_vault().backup_vault_name(name).send(), || {
        format!("reading vault {name}")
    })
    .await?;
    Ok(out.map(|v| v.number_of_recovery_points()))
}

pub struct BackupVaultStep;

#[async_trait]
impl StepAction<Ctx> for BackupVaultStep {
    fn desired(&self, ctx: &Ctx, _env: &Env) -> anyhow::Result<Vec<Desired>> {
        Ok(vec![
            Desired::new(keys::BACKUP_VAULT, Kind::BackupVault, attrs([("name", vault_name(&ctx.tags.stack))]))
                .replaced_on(&["name"]),
        ])
    }

    async fn apply(&self, ctx: &Ctx, scope: &StepScope) -> anyhow::Result<Summary> {
        let want = scope.wanted_one(ctx, self)?;
        let name = want.attrs["name"].clone();
        let name_ref = name.as_str();
        let ensured = scope
            .ensure(ctx, &BackupVaultOps, want, |existing, token| async move {
                if existing.is_none() {
                    call(
                        ctx.aws
                            .backup
                            .create_backup_vault()
                            .backup_vault_name(name_ref)
                            .creator_request_id(token)
                            .set_backup_vault_tags(Some(ctx.tags.map(keys::BACKUP_VAULT)))
                            .send(),
                        || format!("creating backup vault {name_ref}"),
                    )
                    .await?;
                }
                Ok(Applied::id(name_ref).with("arn", vault_arn(ctx, name_ref)))
            })
            .await?;
        Ok(ensured.summary(""))
    }
}

pub struct BackupVaultOps;

#[async_trait]
impl ResourceOps<Ctx> for BackupVaultOps {
    fn noun(&self) -> &'static str {
        Kind::BackupVault.noun()
    }

    async fn read(&self, ctx: &Ctx, record: &ResourceRecord) -> anyhow::Result<Live> {
        Ok(match vault_points(ctx, record.id()?).await? {
            None => Live::Missing,
            Some(points) => Live::present(counted(points, "recovery point"), vec![]),
        })
    }

    async fn read_owned(&self, ctx: &Ctx, record: &ResourceRecord) -> anyhow::Result<Live> {
        self.read(ctx, record).await?.checked(vault_owner(ctx, record.id()?)).await
    }

    async fn find(&self, ctx: &Ctx, lost: &Lost<'_>) -> anyhow::Result<Option<String>> {
        let Some(name) = lost.record.attr("name") else { return Ok(None) };
        if vault_points(ctx, name).await?.is_none() {
            return Ok(None);
        }
        Ok((vault_owner(ctx, name).await? == Owner::Ours).then(|| name.to_string()))
    }

    /// Only an empty vault goes: backups are never deleted by this tool.
    async fn delete(&self, ctx: &Ctx, record: &ResourceRecord, _scope: &StepScope) -> anyhow::Result<()> {
        let name = record.id()?;
        if let Some(points) = vault_points(ctx, name).await?
            && points > 0
        {
            anyhow::bail!(
                "backup vault {name} holds {}; backups are never deleted by gitlab-provision",
                counted(points, "recovery point")
            );
        }
        if_there(ctx.aws.backup.delete_backup_vault().backup_vault_name(name).send(), || {
            format!("deleting vault {name}")
        })
        .await?;
        Ok(())
    }

    async fn holds(&self, ctx: &Ctx, record: &ResourceRecord) -> anyhow::Result<Option<String>> {
        let points = vault_points(ctx, record.id()?).await?.unwrap_or(0);
        Ok((points > 0).then(|| counted(points, "backup")))
    }

    async fn discover(&self, ctx: &Ctx) -> anyhow::Result<Found> {
        let name = vault_name(&ctx.tags.stack);
        if vault_points(ctx, &name).await?.is_none() {
            return Ok(Found::default());
        }
        Ok(match vault_owner(ctx, &name).await? {
            Owner::Foreign(why) => {
                Found { ours: vec![], conflicts: vec![Conflict { kind: Kind::BackupVault.to_string(), id: name, why }] }
            }
            _ => vec![Discovered::new(keys::BACKUP_VAULT, name.clone()).with("name", name)].into(),
        })
    }
}

/// A backup of the file system, wherever AWS Backup keeps it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RecoveryPoint {
    pub arn: String,
    /// The file system it is a copy of (the current one, or one a restore replaced).
    pub file_system: String,
    pub vault: String,
    pub created: String,
    pub bytes: i64,
    pub status: String,
    /// Made by this tool's `backup` (else by the daily automatic backup plan).
    pub on_demand: bool,
}

fn rfc3339(time: Option<&aws_smithy_types::DateTime>) -> String {
    time.and_then(|t| t.fmt(aws_smithy_types::date_time::Format::DateTime).ok()).unwrap_or_default()
}

/// Every recovery point of a file system.
async fn recovery_points(ctx: &Ctx, file_system_arn: &str) -> anyhow::Result<Vec<RecoveryPoint>> {
    let mut points = Vec::new();
    let mut pages =
        ctx.aws.backup.list_recovery_points_by_resource().resource_arn(file_system_arn).into_paginator().send();
    while let Some(page) = pages.next().await {
        let page = page.or_aws(|| format!("listing the backups of {file_system_arn}")).absent_ok()?;
        for point in page.map(|p| p.recovery_points.unwrap_or_default()).unwrap_or_default() {
            let vault = point.backup_vault_name().unwrap_or_default().to_string();
            points.push(RecoveryPoint {
                arn: point.recovery_point_arn().unwrap_or_default().to_string(),
                file_system: file_system_arn.to_string(),
                on_demand: vault == vault_name(&ctx.tags.stack),
                vault,
                created: rfc3339(point.creation_date()),
                bytes: point.backup_size_bytes().unwrap_or(0),
                status: point.status().map(|s| s.as_str().to_string()).unwrap_or_default(),
            });
        }
    }
    Ok(points)
}

/// The recovery points of every file system the stack records (a restore keeps the one it
/// replaced, and its backups stay restorable), newest first.
pub async fn stack_recovery_points(
    ctx: &Ctx,
    records: &std::collections::BTreeMap<String, ResourceRecord>,
) -> anyhow::Result<Vec<RecoveryPoint>> {
    let mut points = Vec::new();
    for record in records.values().filter(|r| r.kind == Kind::FileSystem.as_str()) {
        if let Some(arn) = record.attr("arn") {
            points.extend(recovery_points(ctx, arn).await?);
        }
    }
    points.sort_by(|a, b| b.created.cmp(&a.created));
    Ok(points)
}

/// Starts an on-demand backup of the file system into the vault; returns the job id.
pub async fn start_backup(
    ctx: &Ctx,
    vault: &str,
    file_system_arn: &str,
    role_arn: &str,
    token: &str,
) -> anyhow::Result<String> {
    let out = call(
        ctx.aws
            .backup
            .start_backup_job()
            .backup_vault_name(vault)
            .resource_arn(file_system_arn)
            .iam_role_arn(role_arn)
            .idempotency_token(token)
            .set_recovery_point_tags(Some(ctx.tags.map(keys::FILE_SYSTEM)))
            .send(),
        || format!("starting a backup of {file_system_arn}"),
    )
    .await?;
    out.backup_job_id.context("StartBackupJob returned no job id")
}

/// Waits for a backup job, with its progress; returns the recovery point it made.
pub async fn wait_backup(ctx: &Ctx, scope: &StepScope, job: &str) -> anyhow::Result<(String, i64)> {
    let done = wait_until(scope, &format!("backup job {job}"), JOB_WAIT, || async {
        let out = call(ctx.aws.backup.describe_backup_job().backup_job_id(job).send(), || {
            format!("reading backup job {job}")
        })
        .await?;
        let state = out.state().cloned().unwrap_or(BackupJobState::Created);
        Ok(match state {
            BackupJobState::Completed => Poll::Ready((
                out.recovery_point_arn().unwrap_or_default().to_string(),
                out.backup_size_in_bytes().unwrap_or(0),
            )),
            BackupJobState::Failed | BackupJobState::Aborted | BackupJobState::Expired => {
                Poll::Failed(format!("{}: {}", state.as_str(), out.status_message().unwrap_or("no message")))
            }
            _ => Poll::Pending(format!("{} {}%", state.as_str().to_lowercase(), out.percent_done().unwrap_or("0"))),
        })
    })
    .await?;
    Ok(done)
}

/// Starts restoring a recovery point into a new file system; returns the job id.
pub async fn start_restore(
    ctx: &Ctx,
    point: &str,
    source_fs: &str,
    role_arn: &str,
    token: &str,
) -> anyhow::Result<String> {
    let metadata = [
        ("file-system-id", source_fs),
        ("newFileSystem", "true"),
        ("Encrypted", "true"),
        ("PerformanceMode", "generalPurpose"),
        ("CreationToken", token),
    ];
    let out = call(
        ctx.aws
            .backup
            .start_restore_job()
            .recovery_point_arn(point)
            .iam_role_arn(role_arn)
            .resource_type("EFS")
            .idempotency_token(token)
            .set_metadata(Some(metadata.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()))
            .send(),
        || format!("starting the restore of {point}"),
    )
    .await?;
    out.restore_job_id.context("StartRestoreJob returned no job id")
}

/// Waits for a restore job; returns the new file system's id.
pub async fn wait_restore(ctx: &Ctx, scope: &StepScope, job: &str) -> anyhow::Result<String> {
    let arn = wait_until(scope, &format!("restore job {job}"), JOB_WAIT, || async {
        let out = call(ctx.aws.backup.describe_restore_job().restore_job_id(job).send(), || {
            format!("reading restore job {job}")
        })
        .await?;
        let status = out.status().cloned().unwrap_or(RestoreJobStatus::Pending);
        Ok(match status {
            RestoreJobStatus::Completed => Poll::Ready(out.created_resource_arn().unwrap_or_default().to_string()),
            RestoreJobStatus::Failed | RestoreJobStatus::Aborted => {
                Poll::Failed(format!("{}: {}", status.as_str(), out.status_message().unwrap_or("no message")))
            }
            _ => Poll::Pending(format!("{} {}%", status.as_str().to_lowercase(), out.percent_done().unwrap_or("0"))),
        })
    })
    .await?;
    arn.rsplit('/')
        .next()
        .map(str::to_string)
        .filter(|id| id.starts_with("fs-"))
        .with_context(|| format!("the restore made {arn:?}, not a file system"))
}
