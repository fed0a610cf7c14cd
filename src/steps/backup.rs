//! AWS Backup: the stack's backup vault, on-demand backups of the file system, the recovery
//! points there are, and restores into a new file system. The vault is never deleted while it
//! holds backups: `down` keeps it and says how to remove them.

use anyhow::Context as _;
use async_trait::async_trait;

use crate::aws::{Absent, AwsResultExt, Ctx, call, if_there};
use crate::engine::counted;
use crate::engine::{
    Applied, Conflict, Desired, Discovered, Env, Found, Live, Lost, Owner, ResourceOps, StepAction, StepScope, Summary,
    attrs,
};
use crate::keys::{self, Kind};
use crate::state::ResourceRecord;

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
        let name = want.text("name").to_string();
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
#[derive(Debug, Clone, serde::Serialize, schemars::JsonSchema)]
pub struct RecoveryPoint {
    pub arn: String,
    /// The short id tables show (the start of the point's id), accepted by `restore`.
    pub id: String,
    /// The GitLab version of its data: from its tag, the tool's notes, or the versions the stack
    /// ran when it was taken; `null` when nothing says.
    pub version: Option<String>,
    /// The file system it is a copy of (the current one, or one a restore replaced).
    pub file_system: String,
    pub vault: String,
    pub created: String,
    pub bytes: i64,
    pub status: String,
    /// Made by this tool's `backup` (else by the daily automatic backup plan).
    pub on_demand: bool,
    /// With the database on RDS: the database's snapshot taken with it (restored with it).
    pub database_snapshot: Option<String>,
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
            let arn = point.recovery_point_arn().unwrap_or_default().to_string();
            points.push(RecoveryPoint {
                id: short_point_id(&arn),
                version: None,
                arn,
                file_system: file_system_arn.to_string(),
                on_demand: vault == vault_name(&ctx.tags.stack),
                database_snapshot: None,
                vault,
                created: rfc3339(point.creation_date()),
                bytes: point.backup_size_bytes().unwrap_or(0),
                status: point.status().map(|s| s.as_str().to_string()).unwrap_or_default(),
            });
        }
    }
    Ok(points)
}

/// "A363616B" for ".../recovery-point:A363616B-...": what tables show, and `restore` accepts.
pub fn short_point_id(arn: &str) -> String {
    let id = arn.rsplit([':', '/']).next().unwrap_or(arn);
    id.split('-').next().unwrap_or(id).to_string()
}

/// The recovery points of every file system the stack records (a restore keeps the one it
/// replaced, and its backups stay restorable), newest first. Each file system is checked to be
/// the stack's first: a record pointing at another stack's file system lists nothing of it.
pub async fn stack_recovery_points(
    ctx: &Ctx,
    records: &std::collections::BTreeMap<String, ResourceRecord>,
) -> anyhow::Result<Vec<RecoveryPoint>> {
    let mut points = Vec::new();
    for (key, record) in records.iter().filter(|(_, r)| r.kind == Kind::FileSystem.as_str()) {
        if let Live::Present { owner: Owner::Foreign(why), .. } =
            crate::engine::ResourceOps::read_owned(&super::storage::FileSystemOps, ctx, record).await?
        {
            return Err(crate::engine::NotOurs {
                key: key.clone(),
                noun: Kind::FileSystem.noun(),
                id: record.id.clone().unwrap_or_default(),
                why,
            }
            .into());
        }
        if let Some(arn) = record.attr("arn") {
            points.extend(recovery_points(ctx, arn).await?);
        }
    }
    points.sort_by(|a, b| b.created.cmp(&a.created));
    Ok(points)
}

/// How long AWS Backup may take to start the job before it expires it on its own: its minimum
/// (StartBackupJob: "must be at least 60 minutes"), so a job whose run died never copies hours
/// later, with GitLab running again.
const START_WINDOW_MINUTES: i64 = 60;

/// Starts an on-demand backup of the file system into the vault, tagging the recovery point with
/// the stack and the GitLab version; returns the job id. `token` makes a retry of this attempt
/// get the same job back.
pub async fn start_backup(
    ctx: &Ctx,
    vault: &str,
    file_system_arn: &str,
    role_arn: &str,
    token: &str,
    version: Option<&str>,
    database_snapshot: Option<&str>,
) -> anyhow::Result<String> {
    let mut tags = ctx.tags.map(keys::FILE_SYSTEM);
    if let Some(version) = version {
        tags.insert(crate::aws::tags::VERSION_TAG.to_string(), version.to_string());
    }
    // The database's snapshot taken with it: one backup, restored together.
    if let Some(snapshot) = database_snapshot {
        tags.insert(crate::aws::tags::SNAPSHOT_TAG.to_string(), snapshot.to_string());
    }
    let out = call(
        ctx.aws
            .backup
            .start_backup_job()
            .backup_vault_name(vault)
            .resource_arn(file_system_arn)
            .iam_role_arn(role_arn)
            .idempotency_token(token)
            .start_window_minutes(START_WINDOW_MINUTES)
            .set_recovery_point_tags(Some(tags))
            .send(),
        || format!("starting a backup of {file_system_arn}"),
    )
    .await?;
    out.backup_job_id.context("StartBackupJob returned no job id")
}

/// Where an AWS Backup job (of either kind) stands.
#[derive(Debug, Clone)]
pub struct JobState {
    /// AWS's state: CREATED, PENDING, RUNNING, COMPLETED, FAILED, ABORTED, EXPIRED... (restore
    /// jobs: PENDING, RUNNING, COMPLETED, ABORTED, FAILED).
    pub state: String,
    pub message: Option<String>,
    pub created: Option<std::time::SystemTime>,
    /// What it made: the recovery point (backup) or the resource (restore).
    pub made: Option<String>,
    pub bytes: i64,
}

impl JobState {
    /// Not yet running: AWS has not started it (an on-demand job may wait up to an hour).
    pub fn waiting_to_start(&self) -> bool {
        matches!(self.state.as_str(), "CREATED" | "PENDING")
    }

    pub fn completed(&self) -> bool {
        self.state == "COMPLETED"
    }

    /// Over without what it was for: failed, expired, aborted, or partial.
    pub fn ended_without_result(&self) -> bool {
        matches!(self.state.as_str(), "FAILED" | "ABORTED" | "EXPIRED" | "PARTIAL")
    }

    /// "FAILED: the message AWS gave".
    pub fn outcome(&self) -> String {
        format!("{}: {}", self.state, self.message.as_deref().unwrap_or("AWS Backup gave no message"))
    }
}

fn system_time(time: Option<&aws_smithy_types::DateTime>) -> Option<std::time::SystemTime> {
    time.and_then(|t| std::time::SystemTime::try_from(*t).ok())
}

pub async fn backup_job(ctx: &Ctx, job: &str) -> anyhow::Result<JobState> {
    let out =
        call(ctx.aws.backup.describe_backup_job().backup_job_id(job).send(), || format!("reading backup job {job}"))
            .await?;
    Ok(JobState {
        state: out.state().map_or("CREATED", |s| s.as_str()).to_string(),
        message: out.status_message().map(str::to_string),
        created: system_time(out.creation_date()),
        made: out.recovery_point_arn().map(str::to_string),
        bytes: out.backup_size_in_bytes().unwrap_or(0),
    })
}

/// Asks AWS Backup to stop a job that has not finished; one that already ended is left as it is.
pub async fn stop_backup_job(ctx: &Ctx, job: &str) -> anyhow::Result<()> {
    match call(ctx.aws.backup.stop_backup_job().backup_job_id(job).send(), || format!("stopping backup job {job}"))
        .await
    {
        Ok(_) => Ok(()),
        // Already over (or gone): nothing to stop.
        Err(e) if e.is_code(&["InvalidRequestException"]) || e.is_not_found() => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// A recovery point's tags (the GitLab version of its data, the database snapshot taken with it).
pub async fn point_tags(ctx: &Ctx, point: &str) -> anyhow::Result<std::collections::HashMap<String, String>> {
    let out =
        if_there(ctx.aws.backup.list_tags().resource_arn(point).send(), || format!("reading the tags of {point}"))
            .await?;
    Ok(out.and_then(|o| o.tags).unwrap_or_default())
}

/// What AWS Backup says a restore of the point needs (for EFS: the file system it copies, its
/// encryption and performance mode...): a restore starts from this and overrides only what must
/// change.
pub async fn restore_metadata(
    ctx: &Ctx,
    vault: &str,
    point: &str,
) -> anyhow::Result<std::collections::HashMap<String, String>> {
    let out = call(
        ctx.aws.backup.get_recovery_point_restore_metadata().backup_vault_name(vault).recovery_point_arn(point).send(),
        || format!("reading the restore metadata of {point}"),
    )
    .await?;
    Ok(out.restore_metadata.unwrap_or_default())
}

/// Starts restoring a recovery point into a new file system; returns the job id. `token` is
/// this attempt's: the job's idempotency token and the new file system's creation token.
pub async fn start_restore(
    ctx: &Ctx,
    point: &str,
    role_arn: &str,
    token: &str,
    mut metadata: std::collections::HashMap<String, String>,
) -> anyhow::Result<String> {
    metadata.insert("newFileSystem".into(), "true".into());
    metadata.insert("CreationToken".into(), token.into());
    metadata.insert("Encrypted".into(), "true".into());
    metadata.entry("PerformanceMode".into()).or_insert_with(|| "generalPurpose".into());
    let out = call(
        ctx.aws
            .backup
            .start_restore_job()
            .recovery_point_arn(point)
            .iam_role_arn(role_arn)
            .resource_type("EFS")
            .idempotency_token(token)
            .set_metadata(Some(metadata))
            .send(),
        || format!("starting the restore of {point}"),
    )
    .await?;
    out.restore_job_id.context("StartRestoreJob returned no job id")
}

pub async fn restore_job(ctx: &Ctx, job: &str) -> anyhow::Result<JobState> {
    let out =
        call(ctx.aws.backup.describe_restore_job().restore_job_id(job).send(), || format!("reading restore job {job}"))
            .await?;
    Ok(JobState {
        state: out.status().map_or("PENDING", |s| s.as_str()).to_string(),
        message: out.status_message().map(str::to_string),
        created: system_time(out.creation_date()),
        made: out.created_resource_arn().map(str::to_string),
        bytes: out.backup_size_in_bytes().unwrap_or(0),
    })
}

/// The file system id a restore made, from its ARN.
pub fn restored_file_system(arn: &str) -> anyhow::Result<String> {
    arn.rsplit('/')
        .next()
        .map(str::to_string)
        .filter(|id| id.starts_with("fs-"))
        .with_context(|| format!("the restore made {arn:?}, not a file system"))
}

// ---------------------------------------------------------------------------------------------
// The vault's access policy

/// What deletes or shortens a backup, or lifts this protection. (AWS Backup's access policies
/// take no wildcard in Action: each is named.)
const GUARDED: [&str; 6] = [
    "backup:DeleteRecoveryPoint",
    "backup:UpdateRecoveryPointLifecycle",
    "backup:PutBackupVaultAccessPolicy",
    "backup:DeleteBackupVaultAccessPolicy",
    "backup:PutBackupVaultLockConfiguration",
    "backup:DeleteBackupVaultLockConfiguration",
];

/// Only the stack's admins delete or shorten its backups (AWS Backup's documented
/// "deny deleting recovery points but to these principals" policy).
pub struct VaultPolicyStep {
    pub config: std::sync::Arc<crate::config::StackConfig>,
}

#[async_trait]
impl StepAction<Ctx> for VaultPolicyStep {
    fn desired(&self, _ctx: &Ctx, env: &Env) -> anyhow::Result<Vec<Desired>> {
        let vault = env.id(keys::BACKUP_VAULT)?;
        let allowed = crate::aws::policies::admins(self.config.operator.as_deref(), &self.config.admin_principals, &[]);
        let policy = crate::aws::policies::document(vec![crate::aws::policies::deny_all_but(
            "OnlyTheStacksAdminsDeleteBackups",
            &GUARDED,
            "*",
            &allowed,
            serde_json::json!("*"),
        )]);
        Ok(vec![Desired::new(
            keys::BACKUP_VAULT_POLICY,
            Kind::VaultPolicy,
            attrs([("vault", vault), ("policy", policy)]),
        )])
    }

    async fn apply(&self, ctx: &Ctx, scope: &StepScope) -> anyhow::Result<Summary> {
        let want = scope.wanted_one(ctx, self)?;
        let (vault, policy) = (want.text("vault").to_string(), want.text("policy").to_string());
        let (vault_ref, policy_ref) = (vault.as_str(), policy.as_str());
        let ensured = scope
            .ensure(ctx, &VaultPolicyOps, want, |_, _| async move {
                call(
                    ctx.aws
                        .backup
                        .put_backup_vault_access_policy()
                        .backup_vault_name(vault_ref)
                        .policy(policy_ref)
                        .send(),
                    || format!("setting the access policy of {vault_ref}"),
                )
                .await?;
                Ok(Applied::id(vault_ref))
            })
            .await?;
        Ok(Summary::new(format!("{} (only the stack's admins delete backups)", ensured.verb()), ensured.changed()))
    }
}

pub struct VaultPolicyOps;

#[async_trait]
impl ResourceOps<Ctx> for VaultPolicyOps {
    fn noun(&self) -> &'static str {
        Kind::VaultPolicy.noun()
    }

    async fn read(&self, ctx: &Ctx, record: &ResourceRecord) -> anyhow::Result<Live> {
        let vault = record.id()?;
        let out = if_there(ctx.aws.backup.get_backup_vault_access_policy().backup_vault_name(vault).send(), || {
            format!("reading the access policy of {vault}")
        })
        .await?;
        Ok(match out.and_then(|o| o.policy) {
            None => Live::Missing,
            Some(live) => {
                let same = record.attr("policy").is_some_and(|want| crate::aws::policies::same(want, &live));
                let drift = if same { vec![] } else { vec!["the policy was changed outside gitlab-provision".into()] };
                Live::present("only the stack's admins delete backups", drift).owned_by(Owner::Ours)
            }
        })
    }

    async fn find(&self, _ctx: &Ctx, lost: &Lost<'_>) -> anyhow::Result<Option<String>> {
        Ok(lost.record.attr("vault").map(str::to_string))
    }

    /// Forgotten, not removed: the policy goes with what it guards (AWS deletes it with its
    /// resource), and a resource `down --keep-data` or a restore keeps stays guarded.
    async fn delete(&self, _ctx: &Ctx, _record: &ResourceRecord, _scope: &StepScope) -> anyhow::Result<()> {
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// The vault's lock (`hardening = "strict"`)

/// No recovery point in the vault can be deleted, or its lifecycle shortened, before it is this
/// old: a week, in which a mistake or an intruder is noticed.
pub const MIN_RETENTION_DAYS: i64 = 7;

/// Vault Lock in governance mode (no ChangeableForDays): enforced on everyone, removable by an
/// admin (the vault policy denies removing it to anyone else), so `down` can still finish. The
/// irreversible compliance mode is left to the account's owners.
pub struct VaultLockStep;

#[async_trait]
impl StepAction<Ctx> for VaultLockStep {
    fn desired(&self, _ctx: &Ctx, env: &Env) -> anyhow::Result<Vec<Desired>> {
        let wanted =
            attrs([("vault", env.id(keys::BACKUP_VAULT)?), ("min_retention_days", MIN_RETENTION_DAYS.to_string())]);
        Ok(vec![Desired::new(keys::VAULT_LOCK, Kind::VaultLock, wanted).replaced_on(&["vault"])])
    }

    async fn apply(&self, ctx: &Ctx, scope: &StepScope) -> anyhow::Result<Summary> {
        let want = scope.wanted_one(ctx, self)?;
        let vault = want.text("vault").to_string();
        let vault_ref = vault.as_str();
        let ensured = scope
            .ensure(ctx, &VaultLockOps, want, |_, _| async move {
                call(
                    ctx.aws
                        .backup
                        .put_backup_vault_lock_configuration()
                        .backup_vault_name(vault_ref)
                        .min_retention_days(MIN_RETENTION_DAYS)
                        .send(),
                    || format!("locking vault {vault_ref}"),
                )
                .await?;
                Ok(Applied::id(vault_ref))
            })
            .await?;
        Ok(ensured.summary(&format!(" (backups kept at least {MIN_RETENTION_DAYS} days, governance mode)")))
    }
}

pub struct VaultLockOps;

#[async_trait]
impl ResourceOps<Ctx> for VaultLockOps {
    fn noun(&self) -> &'static str {
        Kind::VaultLock.noun()
    }

    async fn read(&self, ctx: &Ctx, record: &ResourceRecord) -> anyhow::Result<Live> {
        let vault = record.id()?;
        let out = if_there(ctx.aws.backup.describe_backup_vault().backup_vault_name(vault).send(), || {
            format!("reading vault {vault}")
        })
        .await?;
        Ok(match out.filter(|v| v.locked == Some(true)) {
            None => Live::Missing,
            Some(v) => {
                let days = v.min_retention_days.unwrap_or_default();
                let drift = if days < MIN_RETENTION_DAYS {
                    vec![format!("its minimum retention is {days} days")]
                } else {
                    vec![]
                };
                Live::present(format!("backups kept at least {days} days"), drift).owned_by(Owner::Ours)
            }
        })
    }

    async fn find(&self, _ctx: &Ctx, lost: &Lost<'_>) -> anyhow::Result<Option<String>> {
        Ok(lost.record.attr("vault").map(str::to_string))
    }

    /// Lifted when the stack no longer wants it; a vault `down` keeps (it holds backups) keeps
    /// its lock (the row keeps the lock while the vault holds backups).
    async fn delete(&self, ctx: &Ctx, record: &ResourceRecord, _scope: &StepScope) -> anyhow::Result<()> {
        let vault = record.id()?;
        if_there(ctx.aws.backup.delete_backup_vault_lock_configuration().backup_vault_name(vault).send(), || {
            format!("unlocking vault {vault}")
        })
        .await?;
        Ok(())
    }

    async fn holds(&self, ctx: &Ctx, record: &ResourceRecord) -> anyhow::Result<Option<String>> {
        let points = vault_points(ctx, record.id()?).await?.unwrap_or(0);
        Ok((points > 0).then(|| counted(points, "backup")))
    }
}
