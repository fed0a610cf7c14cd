//! RDS: GitLab's PostgreSQL with `database = "rds"`. The instance sits in the private subnets
//! (its own DB subnet group), behind a security group that admits GitLab's tasks only; it is
//! encrypted with the stack's key, never publicly accessible, protected from deletion, backed
//! up automatically, and its master password is RDS's own secret in Secrets Manager, which the
//! task receives through ECS `secrets`. `down` takes a final snapshot unless told not to.

use std::time::Duration;

use anyhow::Context as _;
use async_trait::async_trait;
use aws_sdk_rds::types::{DbInstance, DbSnapshot, DbSubnetGroup};

use crate::aws::{Ctx, call, delete_when_released, if_there};
use crate::config::{DatabaseSettings, StackConfig};
use crate::engine::{
    Applied, Desired, Discovered, Env, Existing, Found, Live, Lost, Owner, Poll, ResourceOps, StepAction, StepScope,
    Summary, WaitPolicy, attrs, wait_until,
};
use crate::keys::{self, Kind};
use crate::state::ResourceRecord;

/// The database GitLab's omnibus expects, and the master user it connects as.
pub const DB_NAME: &str = "gitlabhq_production";
pub const DB_USER: &str = "gitlab";
pub const DB_PORT: i32 = 5432;
/// RDS rotates a managed master password every 7 days by default; GitLab reads it when its task
/// starts, so each rotation would cut it off until a restart. The tool sets a yearly rotation,
/// on 1 January at 04:00 UTC: a `cron()` schedule, since with `AutomaticallyAfterDays` (or
/// `rate()`) "the previously scheduled rotation might still occur" (Secrets Manager's
/// RotationRules). `status` marks the database changed when a rotation happened after GitLab
/// started.
pub const ROTATION_SCHEDULE: &str = "cron(0 4 1 1 ? *)";
/// Creating an instance takes 5-15 minutes, a Multi-AZ one and a final snapshot longer; AWS
/// gives no bound. Deleting one takes minutes more.
const RDS_WAIT: WaitPolicy = WaitPolicy::up_to(Duration::from_secs(90 * 60));
/// The states an instance does not leave by itself.
const FAILED: &[&str] = &[
    "failed",
    "incompatible-parameters",
    "incompatible-restore",
    "storage-full",
    "inaccessible-encryption-credentials",
    "incompatible-network",
];
/// What RDS answers while an instance cannot take a change or a delete yet.
const BUSY: &[&str] = &["InvalidDBInstanceState", "InvalidDBInstanceStateFault"];

// ---------------------------------------------------------------------------------------------
// DB subnet group

async fn describe_subnet_group(ctx: &Ctx, name: &str) -> anyhow::Result<Option<DbSubnetGroup>> {
    let out = if_there(ctx.aws.rds.describe_db_subnet_groups().db_subnet_group_name(name).send(), || {
        format!("reading DB subnet group {name}")
    })
    .await?;
    Ok(out.and_then(|o| o.db_subnet_groups.and_then(|v| v.into_iter().next())))
}

async fn rds_owner(ctx: &Ctx, arn: &str) -> anyhow::Result<Owner> {
    let out =
        call(ctx.aws.rds.list_tags_for_resource().resource_name(arn).send(), || format!("reading the tags of {arn}"))
            .await?;
    Ok(ctx.tags.owner_of(out.tag_list()))
}

/// A subnet group as `status` shows it: its subnets.
fn subnet_group_live(group: &DbSubnetGroup) -> Live {
    let subnets: Vec<&str> = group.subnets().iter().filter_map(|s| s.subnet_identifier()).collect();
    Live::present(subnets.join(", "), vec![])
}

/// The subnet group under the name the stack gives it, when its tags say it is the stack's.
async fn our_subnet_group(ctx: &Ctx) -> anyhow::Result<Option<String>> {
    let name = keys::names::database(&ctx.tags.stack);
    let Some(group) = describe_subnet_group(ctx, &name).await? else { return Ok(None) };
    let owner = rds_owner(ctx, group.db_subnet_group_arn().unwrap_or_default()).await?;
    Ok((owner == Owner::Ours).then_some(name))
}

/// The subnet group that places the instance in the private subnets (two zones, as RDS requires).
pub struct DbSubnetGroupStep;

#[async_trait]
impl StepAction<Ctx> for DbSubnetGroupStep {
    fn desired(&self, ctx: &Ctx, env: &Env) -> anyhow::Result<Vec<Desired>> {
        let subnets = keys::PRIVATE_SUBNETS.iter().map(|k| env.id(k)).collect::<anyhow::Result<Vec<_>>>()?;
        let wanted = attrs([("name", keys::names::database(&ctx.tags.stack))]);
        Ok(vec![Desired::new(keys::DB_SUBNET_GROUP, Kind::DbSubnetGroup, wanted).with("subnets", subnets)])
    }

    async fn apply(&self, ctx: &Ctx, scope: &StepScope) -> anyhow::Result<Summary> {
        let want = scope.wanted_one(ctx, self)?;
        let (name, subnets) = (want.text("name").to_string(), want.list("subnets"));
        let ensured = scope
            .ensure(ctx, &DbSubnetGroupOps, want, |existing, _| async move {
                let rds = &ctx.aws.rds;
                if existing.is_some() {
                    call(
                        rds.modify_db_subnet_group()
                            .db_subnet_group_name(&name)
                            .set_subnet_ids(Some(subnets.clone()))
                            .send(),
                        || format!("setting the subnets of DB subnet group {name}"),
                    )
                    .await?;
                } else {
                    call(
                        rds.create_db_subnet_group()
                            .db_subnet_group_name(&name)
                            .db_subnet_group_description(format!(
                                "gitlab-provision {}: GitLab's database",
                                ctx.tags.stack
                            ))
                            .set_subnet_ids(Some(subnets.clone()))
                            .set_tags(Some(ctx.tags.list(keys::DB_SUBNET_GROUP)))
                            .send(),
                        || format!("creating DB subnet group {name}"),
                    )
                    .await?;
                }
                Ok(Applied::id(name.clone()))
            })
            .await?;
        Ok(ensured.summary(" (the private subnets)"))
    }
}

pub struct DbSubnetGroupOps;

#[async_trait]
impl ResourceOps<Ctx> for DbSubnetGroupOps {
    fn noun(&self) -> &'static str {
        Kind::DbSubnetGroup.noun()
    }

    async fn read(&self, ctx: &Ctx, record: &ResourceRecord) -> anyhow::Result<Live> {
        Ok(describe_subnet_group(ctx, record.id()?).await?.as_ref().map_or(Live::Missing, subnet_group_live))
    }

    async fn read_owned(&self, ctx: &Ctx, record: &ResourceRecord) -> anyhow::Result<Live> {
        let Some(group) = describe_subnet_group(ctx, record.id()?).await? else { return Ok(Live::Missing) };
        let owner = rds_owner(ctx, group.db_subnet_group_arn().unwrap_or_default()).await?;
        Ok(subnet_group_live(&group).owned_by(owner))
    }

    async fn find(&self, ctx: &Ctx, _lost: &Lost<'_>) -> anyhow::Result<Option<String>> {
        our_subnet_group(ctx).await
    }

    async fn delete(&self, ctx: &Ctx, record: &ResourceRecord, scope: &StepScope) -> anyhow::Result<()> {
        let name = record.id()?;
        // An instance still using it (one being deleted, too) holds it.
        delete_when_released(scope, &format!("DB subnet group {name}"), &["InvalidDBSubnetGroupStateFault"], || async {
            call(ctx.aws.rds.delete_db_subnet_group().db_subnet_group_name(name).send(), || {
                format!("deleting DB subnet group {name}")
            })
            .await
        })
        .await
    }

    async fn discover(&self, ctx: &Ctx) -> anyhow::Result<Found> {
        Ok(match our_subnet_group(ctx).await? {
            Some(name) => vec![Discovered::new(keys::DB_SUBNET_GROUP, name)].into(),
            None => Found::default(),
        })
    }
}

// ---------------------------------------------------------------------------------------------
// DB instance

pub async fn describe_instance(ctx: &Ctx, id: &str) -> anyhow::Result<Option<DbInstance>> {
    let out = if_there(ctx.aws.rds.describe_db_instances().db_instance_identifier(id).send(), || {
        format!("reading database instance {id}")
    })
    .await?;
    Ok(out.and_then(|o| o.db_instances.and_then(|v| v.into_iter().next())))
}

/// The PostgreSQL major the tool creates for a GitLab version: the newest its release supports
/// (data/gitlab-requirements.toml).
fn engine_major(cfg: &StackConfig) -> anyhow::Result<String> {
    let version = crate::gitlab_version::Version::parse(&cfg.gitlab_image_tag).with_context(|| {
        format!(
            "gitlab_image_tag {} is not a release tag: the database's PostgreSQL follows GitLab's version",
            cfg.gitlab_image_tag
        )
    })?;
    let postgres = crate::requirements::postgresql(version)?;
    Ok(postgres.newest)
}

/// The settings an instance's record holds (what [`DbInstanceStep`] wrote into it): a stack on
/// RDS keeps them where the configuration does not say, and a restore places its instance so.
pub fn recorded_settings(record: &ResourceRecord) -> DatabaseSettings {
    let recorded = |name: &str| record.attr(name).unwrap_or_default().to_string();
    DatabaseSettings {
        instance_class: recorded("instance_class"),
        storage_gb: recorded("storage_gb").parse().unwrap_or(crate::config::DEFAULT_DB_STORAGE_GB),
        multi_az: recorded("multi_az") == "true",
        backup_retention_days: recorded("backup_retention_days")
            .parse()
            .unwrap_or(crate::config::DEFAULT_DB_BACKUP_RETENTION_DAYS),
    }
}

/// GitLab's PostgreSQL instance.
pub struct DbInstanceStep {
    pub config: std::sync::Arc<StackConfig>,
    pub settings: DatabaseSettings,
}

#[async_trait]
impl StepAction<Ctx> for DbInstanceStep {
    fn desired(&self, ctx: &Ctx, env: &Env) -> anyhow::Result<Vec<Desired>> {
        let s = &self.settings;
        let wanted = attrs([
            ("identifier", keys::names::database(&ctx.tags.stack)),
            ("engine", "postgres".into()),
            ("instance_class", s.instance_class.clone()),
            ("storage_gb", s.storage_gb.to_string()),
            ("multi_az", s.multi_az.to_string()),
            ("backup_retention_days", s.backup_retention_days.to_string()),
            ("subnet_group", env.id(keys::DB_SUBNET_GROUP)?),
            ("security_group", env.id(keys::DB_SECURITY_GROUP)?),
            ("key", env.attr(keys::KEY, "arn")?),
        ]);
        // A database is never replaced: a new instance would be an empty one.
        Ok(vec![Desired::new(keys::DB_INSTANCE, Kind::DbInstance, wanted)])
    }

    async fn apply(&self, ctx: &Ctx, scope: &StepScope) -> anyhow::Result<Summary> {
        let want = scope.wanted_one(ctx, self)?;
        let settings = want.clone();
        let ensured = scope
            .ensure(ctx, &DbInstanceOps, want, |existing, _| async move {
                converge_instance(ctx, scope, &self.config, &settings, existing).await
            })
            .await?;
        let s = &self.settings;
        Ok(ensured.summary(&format!(
            " (PostgreSQL {}, {}, {} GiB gp3{}, encrypted, private, deletion protection, backups {} days)",
            ensured.attr("engine_version"),
            s.instance_class,
            s.storage_gb,
            if s.multi_az { ", Multi-AZ" } else { "" },
            s.backup_retention_days
        )))
    }
}

async fn converge_instance(
    ctx: &Ctx,
    scope: &StepScope,
    cfg: &StackConfig,
    want: &Desired,
    existing: Option<Existing>,
) -> anyhow::Result<Applied> {
    let rds = &ctx.aws.rds;
    // A restored database has a name of its own.
    let id = existing.as_ref().map_or_else(|| want.text("identifier").to_string(), |e| e.id.clone());
    let storage: i32 = want.text("storage_gb").parse().context("storage_gb")?;
    let retention: i32 = want.text("backup_retention_days").parse().context("backup_retention_days")?;
    let multi_az = want.text("multi_az") == "true";
    match &existing {
        None => {
            let major = engine_major(cfg)?;
            let created = call(
                rds.create_db_instance()
                    .db_instance_identifier(&id)
                    .engine("postgres")
                    .engine_version(&major)
                    .db_instance_class(want.text("instance_class"))
                    .allocated_storage(storage)
                    .storage_type("gp3")
                    .db_name(DB_NAME)
                    .master_username(DB_USER)
                    .manage_master_user_password(true)
                    .master_user_secret_kms_key_id(want.text("key"))
                    .storage_encrypted(true)
                    .kms_key_id(want.text("key"))
                    .publicly_accessible(false)
                    .deletion_protection(true)
                    .backup_retention_period(retention)
                    .multi_az(multi_az)
                    .auto_minor_version_upgrade(true)
                    .copy_tags_to_snapshot(true)
                    .db_subnet_group_name(want.text("subnet_group"))
                    .vpc_security_group_ids(want.text("security_group"))
                    .port(DB_PORT)
                    .set_tags(Some(ctx.tags.list(keys::DB_INSTANCE)))
                    .send(),
                || format!("creating database instance {id} (PostgreSQL {major})"),
            )
            .await;
            match created {
                Ok(_) => {}
                // A create that went through before a crash: the same instance, ours by its tags.
                Err(e) if e.is_code(&["DBInstanceAlreadyExists", "DBInstanceAlreadyExistsFault"]) => {
                    if ours(ctx).await?.is_none() {
                        return Err(e).context("an instance of that name exists and is not this stack's");
                    }
                }
                Err(e) => return Err(e.into()),
            }
            scope.created(keys::DB_INSTANCE, &id).await?;
        }
        Some(_) => {
            let live = describe_instance(ctx, &id).await?.with_context(|| format!("database instance {id} is gone"))?;
            if live.allocated_storage().unwrap_or(0) > storage {
                anyhow::bail!(
                    "db_storage_gb {storage} is less than the {} GiB the instance has: RDS storage only grows",
                    live.allocated_storage().unwrap_or(0)
                );
            }
            wait_available(ctx, scope, &id).await?;
            call(
                rds.modify_db_instance()
                    .db_instance_identifier(&id)
                    .db_instance_class(want.text("instance_class"))
                    .allocated_storage(storage)
                    .multi_az(multi_az)
                    .backup_retention_period(retention)
                    .deletion_protection(true)
                    .vpc_security_group_ids(want.text("security_group"))
                    .apply_immediately(true)
                    .send(),
                || format!("updating database instance {id}"),
            )
            .await?;
        }
    }
    let instance = wait_available(ctx, scope, &id).await?;
    outputs(ctx, &instance).await
}

/// What GitLab's task needs of an available instance (its endpoint, its secret), its secret's
/// rotation made yearly on the way.
pub async fn outputs(ctx: &Ctx, instance: &DbInstance) -> anyhow::Result<Applied> {
    let id = instance.db_instance_identifier().unwrap_or_default();
    let secret = instance
        .master_user_secret()
        .and_then(|s| s.secret_arn())
        .with_context(|| format!("database instance {id} has no RDS-managed master secret"))?
        .to_string();
    yearly_rotation(ctx, &secret).await?;
    let endpoint = instance.endpoint().and_then(|e| e.address()).unwrap_or_default();
    Ok(Applied::id(id)
        .with("arn", instance.db_instance_arn().unwrap_or_default())
        .with("endpoint", endpoint)
        .with("engine_version", instance.engine_version().unwrap_or_default())
        .with("secret_arn", secret))
}

// ---------------------------------------------------------------------------------------------
// Snapshots for `backup`, instances restored from them for `restore`

/// The name of the snapshot a backup started at `started_at` (RFC 3339) takes: fixed before it
/// is asked for, so a resumed backup finds it.
pub fn backup_snapshot_name(id: &str, started_at: &str) -> String {
    let stamp: String = started_at.chars().filter(char::is_ascii_digit).take(14).collect();
    format!("{id}-backup-{stamp}")
}

/// Asks RDS for a snapshot of the instance, tagged with the stack and the GitLab version of the
/// data; one that exists already (a resumed backup) is that one.
pub async fn take_snapshot(ctx: &Ctx, id: &str, name: &str, version: Option<&str>) -> anyhow::Result<()> {
    let mut tags: Vec<aws_sdk_rds::types::Tag> = ctx.tags.list(keys::DB_INSTANCE);
    if let Some(version) = version {
        tags.push(aws_sdk_rds::types::Tag::builder().key(crate::aws::tags::VERSION_TAG).value(version).build());
    }
    match call(
        ctx.aws
            .rds
            .create_db_snapshot()
            .db_instance_identifier(id)
            .db_snapshot_identifier(name)
            .set_tags(Some(tags))
            .send(),
        || format!("taking snapshot {name} of {id}"),
    )
    .await
    {
        Ok(_) => Ok(()),
        Err(e) if e.is_code(&["DBSnapshotAlreadyExists", "DBSnapshotAlreadyExistsFault"]) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// A snapshot's state, or `None` when there is no such snapshot.
pub async fn snapshot(ctx: &Ctx, name: &str) -> anyhow::Result<Option<DbSnapshot>> {
    let out = if_there(ctx.aws.rds.describe_db_snapshots().db_snapshot_identifier(name).send(), || {
        format!("reading snapshot {name}")
    })
    .await?;
    Ok(out.and_then(|o| o.db_snapshots.and_then(|v| v.into_iter().next())))
}

/// Waits until the snapshot is available (RDS takes minutes; a failed one ends the wait).
pub async fn wait_snapshot(ctx: &Ctx, scope: &StepScope, name: &str) -> anyhow::Result<DbSnapshot> {
    Ok(wait_until(scope, &format!("database snapshot {name}"), RDS_WAIT, || async {
        Ok(match snapshot(ctx, name).await? {
            Some(s) if s.status() == Some("available") => Poll::Ready(s),
            Some(s) if s.status() == Some("failed") => Poll::Failed("RDS reports it failed".into()),
            Some(s) => Poll::Pending(s.status().unwrap_or("creating").to_string()),
            None => Poll::Failed(format!("snapshot {name} is gone")),
        })
    })
    .await?)
}

/// What a restore needs to place an instance as the stack's is placed.
pub struct Placement {
    pub subnet_group: String,
    pub security_group: String,
    pub key: String,
    pub settings: DatabaseSettings,
}

/// Restores `snapshot` into a new instance `id` placed as the stack's (its subnet group,
/// security group and key, private, protected, its own RDS-managed password), waits until it is
/// available, and returns what the stack's record of it holds. A restore asked for already (a
/// resumed run) is waited for.
pub async fn restore_snapshot(
    ctx: &Ctx,
    scope: &StepScope,
    snapshot: &str,
    id: &str,
    placement: &Placement,
) -> anyhow::Result<Applied> {
    let s = &placement.settings;
    ask_restore(ctx, snapshot, id, placement).await?;
    let instance = wait_available(ctx, scope, id).await?;
    // A restore cannot ask for a managed password ("Applies to RDS for Oracle only"): the
    // restored instance has the snapshot's. RDS makes it a new one of its own, in a new secret
    // encrypted with the stack's key; and the retention named here, not the snapshot's.
    let managed = instance.master_user_secret().is_some();
    if !managed || instance.backup_retention_period() != Some(s.backup_retention_days as i32) {
        let mut modify = ctx
            .aws
            .rds
            .modify_db_instance()
            .db_instance_identifier(id)
            .backup_retention_period(s.backup_retention_days as i32)
            .apply_immediately(true);
        if !managed {
            modify = modify.manage_master_user_password(true).master_user_secret_kms_key_id(&placement.key);
        }
        call(modify.send(), || format!("giving {id} a password of RDS's own and its automated backups")).await?;
    }
    let instance = wait_until(scope, &format!("database instance {id}'s new password"), RDS_WAIT, || async {
        Ok(match describe_instance(ctx, id).await? {
            Some(db) => {
                let secret = db.master_user_secret().and_then(|m| m.secret_status()).unwrap_or("not yet");
                if secret == "active" && db.db_instance_status() == Some("available") {
                    Poll::Ready(db)
                } else {
                    Poll::Pending(format!("{}, its secret {secret}", db.db_instance_status().unwrap_or("?")))
                }
            }
            None => Poll::Failed(format!("database instance {id} is gone")),
        })
    })
    .await?;
    outputs(ctx, &instance).await
}

/// Asks RDS to restore `snapshot` into the new instance `id` (asked already: nothing to do).
pub async fn ask_restore(ctx: &Ctx, snapshot: &str, id: &str, placement: &Placement) -> anyhow::Result<()> {
    let s = &placement.settings;
    let asked = call(
        ctx.aws
            .rds
            .restore_db_instance_from_db_snapshot()
            .db_instance_identifier(id)
            .db_snapshot_identifier(snapshot)
            .db_instance_class(&s.instance_class)
            .multi_az(s.multi_az)
            .db_subnet_group_name(&placement.subnet_group)
            .vpc_security_group_ids(&placement.security_group)
            .publicly_accessible(false)
            .deletion_protection(true)
            .copy_tags_to_snapshot(true)
            .set_tags(Some(ctx.tags.list(keys::DB_INSTANCE)))
            .send(),
        || format!("restoring snapshot {snapshot} into database instance {id}"),
    )
    .await;
    match asked {
        Ok(_) => Ok(()),
        Err(e) if e.is_code(&["DBInstanceAlreadyExists", "DBInstanceAlreadyExistsFault"]) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// The stack's instance under the name it gives (a create a crash did not record), if ours.
async fn ours(ctx: &Ctx) -> anyhow::Result<Option<String>> {
    let id = keys::names::database(&ctx.tags.stack);
    Ok(describe_instance(ctx, &id)
        .await?
        .filter(|db| db.db_instance_status() != Some("deleting") && ctx.tags.owner_of(db.tag_list()) == Owner::Ours)
        .map(|_| id))
}

/// Every instance that carries the stack's tags (a restore's has a name of its own), with the
/// record key its tags name.
async fn tagged_instances(ctx: &Ctx) -> anyhow::Result<Vec<(String, String)>> {
    let mut found = vec![];
    let mut pages = ctx.aws.rds.describe_db_instances().into_paginator().send();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| anyhow::anyhow!("listing database instances: {e}"))?;
        for db in page.db_instances() {
            if db.db_instance_status() == Some("deleting") {
                continue;
            }
            if let (Some(key), Some(id)) = (ctx.tags.key_of(db.tag_list()), db.db_instance_identifier()) {
                found.push((key, id.to_string()));
            }
        }
    }
    Ok(found)
}

/// Sets the managed secret's rotation to yearly (see [`ROTATION_SCHEDULE`]).
async fn yearly_rotation(ctx: &Ctx, secret: &str) -> anyhow::Result<()> {
    let described = call(ctx.aws.secrets.describe_secret().secret_id(secret).send(), || {
        format!("reading the rotation of the database's secret {secret}")
    })
    .await?;
    if described.rotation_rules().and_then(|r| r.schedule_expression()) == Some(ROTATION_SCHEDULE) {
        return Ok(());
    }
    let rules =
        aws_sdk_secretsmanager::types::RotationRulesType::builder().schedule_expression(ROTATION_SCHEDULE).build();
    call(
        ctx.aws.secrets.rotate_secret().secret_id(secret).rotation_rules(rules).rotate_immediately(false).send(),
        || format!("setting the database secret's rotation to {ROTATION_SCHEDULE} (yearly)"),
    )
    .await?;
    Ok(())
}

async fn wait_available(ctx: &Ctx, scope: &StepScope, id: &str) -> anyhow::Result<DbInstance> {
    Ok(wait_until(scope, &format!("database instance {id} to become available"), RDS_WAIT, || async {
        Ok(match describe_instance(ctx, id).await? {
            Some(db) => match db.db_instance_status().unwrap_or_default() {
                "available" => Poll::Ready(db),
                status @ ("failed"
                | "incompatible-parameters"
                | "incompatible-restore"
                | "storage-full"
                | "inaccessible-encryption-credentials"
                | "incompatible-network") => Poll::Failed(format!("it is {status}")),
                status => Poll::Pending(status.to_string()),
            },
            None => Poll::Pending("not visible yet".into()),
        })
    })
    .await?)
}

/// The final snapshot `down` takes: `<identifier>-final-<UTC time>` (RDS snapshot names allow
/// letters, digits and hyphens).
fn final_snapshot_name(id: &str) -> String {
    let now = jiff::Timestamp::now().strftime("%Y%m%d-%H%M%S");
    format!("{id}-final-{now}")
}

/// The final snapshots `down` took of the stack's database, newest first: what is left of it.
pub async fn final_snapshots(ctx: &Ctx, id: &str) -> anyhow::Result<Vec<DbSnapshot>> {
    let out =
        call(ctx.aws.rds.describe_db_snapshots().db_instance_identifier(id).snapshot_type("manual").send(), || {
            format!("listing the snapshots of {id}")
        })
        .await?;
    let prefix = format!("{id}-final-");
    let mut found: Vec<DbSnapshot> = out
        .db_snapshots
        .unwrap_or_default()
        .into_iter()
        .filter(|s| s.db_snapshot_identifier().is_some_and(|n| n.starts_with(&prefix)))
        .collect();
    found.sort_by(|a, b| b.db_snapshot_identifier().cmp(&a.db_snapshot_identifier()));
    Ok(found)
}

pub struct DbInstanceOps;

#[async_trait]
impl ResourceOps<Ctx> for DbInstanceOps {
    fn noun(&self) -> &'static str {
        Kind::DbInstance.noun()
    }

    async fn read(&self, ctx: &Ctx, record: &ResourceRecord) -> anyhow::Result<Live> {
        Ok(match describe_instance(ctx, record.id()?).await? {
            Some(db) if db.db_instance_status() != Some("deleting") => {
                let mut drift = vec![];
                if db.publicly_accessible() == Some(true) {
                    drift.push("publicly accessible".to_string());
                }
                if db.storage_encrypted() != Some(true) {
                    drift.push("not encrypted".to_string());
                }
                if db.deletion_protection() != Some(true) {
                    drift.push("deletion protection off".to_string());
                }
                Live::present(
                    format!(
                        "{}, PostgreSQL {}, {}, {} GiB{}",
                        db.db_instance_status().unwrap_or("unknown"),
                        db.engine_version().unwrap_or("?"),
                        db.db_instance_class().unwrap_or("?"),
                        db.allocated_storage().unwrap_or(0),
                        if db.multi_az() == Some(true) { ", Multi-AZ" } else { "" }
                    ),
                    drift,
                )
                .owned_by(ctx.tags.owner_of(db.tag_list()))
            }
            _ => Live::Missing,
        })
    }

    async fn find(&self, ctx: &Ctx, _lost: &Lost<'_>) -> anyhow::Result<Option<String>> {
        ours(ctx).await
    }

    /// Turns deletion protection off (it guards against every other way of deleting it), then
    /// deletes it with a final snapshot unless `down --no-final-snapshot`, and waits until it is
    /// gone: until then it holds its subnets, its security group and its subnet group.
    async fn delete(&self, ctx: &Ctx, record: &ResourceRecord, scope: &StepScope) -> anyhow::Result<()> {
        let id = record.id()?;
        let rds = &ctx.aws.rds;
        if let Some(db) = describe_instance(ctx, id).await?
            && db.db_instance_status() != Some("deleting")
        {
            // RDS deletes an instance in one of these states only without a final snapshot.
            let broken = db.db_instance_status().is_some_and(|s| FAILED.contains(&s));
            if db.deletion_protection() == Some(true) {
                if !broken {
                    wait_available(ctx, scope, id).await?;
                }
                call(
                    rds.modify_db_instance()
                        .db_instance_identifier(id)
                        .deletion_protection(false)
                        .apply_immediately(true)
                        .send(),
                    || format!("turning off deletion protection of {id} to delete it"),
                )
                .await?;
            }
            let snapshot = (ctx.final_snapshot && !broken).then(|| final_snapshot_name(id));
            if broken && ctx.final_snapshot {
                scope.progress(format!(
                    "{id} is {}: RDS deletes it only without a final snapshot",
                    db.db_instance_status().unwrap_or("?")
                ));
            }
            wait_until(scope, &format!("database instance {id} to accept its deletion"), RDS_WAIT, || async {
                let mut request = rds.delete_db_instance().db_instance_identifier(id).delete_automated_backups(true);
                request = match &snapshot {
                    Some(name) => request.final_db_snapshot_identifier(name),
                    None => request.skip_final_snapshot(true),
                };
                match call(request.send(), || format!("deleting database instance {id}")).await {
                    Ok(_) => Ok(Poll::Ready(())),
                    Err(e) if e.is_not_found() => Ok(Poll::Ready(())),
                    Err(e) if e.is_code(BUSY) => Ok(Poll::Pending(e.message.clone())),
                    Err(e) => Err(e.into()),
                }
            })
            .await?;
            if let Some(name) = &snapshot {
                scope.progress(format!("final snapshot {name} of {id} taken"));
            }
        }
        wait_until(scope, &format!("database instance {id} to be deleted"), RDS_WAIT, || async {
            Ok(match describe_instance(ctx, id).await? {
                None => Poll::Ready(()),
                Some(db) => Poll::Pending(db.db_instance_status().unwrap_or("deleting").to_string()),
            })
        })
        .await?;
        Ok(())
    }

    async fn discover(&self, ctx: &Ctx) -> anyhow::Result<Found> {
        let found: Vec<Discovered> =
            tagged_instances(ctx).await?.into_iter().map(|(key, id)| Discovered::new(&key, id)).collect();
        Ok(found.into())
    }
}
