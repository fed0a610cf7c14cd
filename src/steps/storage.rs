//! EFS: GitLab's file system, its mount targets in the private subnets, and the root access
//! point used only by the initializer.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context as _;
use async_trait::async_trait;
use aws_sdk_efs::types::{
    BackupPolicy, LifeCycleState, PerformanceMode, PosixUser, RootDirectory, Status, Tag, ThroughputMode,
};

use super::network::{PRIVATE_SUBNETS, attrs, required_id};
use super::{Ctx, delete_when_free};
use crate::aws::{AwsResultExt, found};
use crate::engine::{
    Created, Desired, Discovered, Live, Poll, ResourceOps, StepAction, StepScope, WaitPolicy, wait_until,
};
use crate::state::ResourceRecord;

pub const FILE_SYSTEM: &str = "efs:file-system";
pub const MOUNT_TARGET: &str = "efs:mount-target";
pub const ACCESS_POINT: &str = "efs:access-point";

pub const KEY_FILE_SYSTEM: &str = "file-system";
pub const KEY_EFS_SECURITY_GROUP: &str = "efs-security-group";
pub const MOUNT_TARGET_KEYS: [&str; 2] = ["mount-target-a", "mount-target-b"];
pub const KEY_INIT_ACCESS_POINT: &str = "init-access-point";

/// Mount targets take about 80 s, file systems a few seconds; AWS gives no bound.
const EFS_WAIT: WaitPolicy = WaitPolicy::up_to(Duration::from_secs(600));

fn efs_tags(ctx: &Ctx, key: &str) -> anyhow::Result<Vec<Tag>> {
    ctx.tags
        .map(key, |k, v| Tag::builder().key(k).value(v).build())
        .into_iter()
        .collect::<Result<_, _>>()
        .context("building EFS tags")
}

fn life_cycle<T>(state: Option<&LifeCycleState>, ready: T) -> Poll<T> {
    match state {
        Some(LifeCycleState::Available) => Poll::Ready(ready),
        Some(LifeCycleState::Error) => Poll::Failed("it is in state error".into()),
        Some(s) => Poll::Pending(s.as_str().to_string()),
        None => Poll::Pending("unknown".into()),
    }
}

// ---------------------------------------------------------------------------------------------
// File system

pub struct CreateFileSystem;

async fn describe_file_system(
    ctx: &Ctx,
    id: &str,
) -> anyhow::Result<Option<aws_sdk_efs::types::FileSystemDescription>> {
    let out = found(
        ctx.aws
            .efs
            .describe_file_systems()
            .file_system_id(id)
            .send()
            .await
            .or_aws(|| format!("reading file system {id}")),
    )?;
    Ok(out.and_then(|o| o.file_systems.and_then(|v| v.into_iter().next())))
}

#[async_trait]
impl StepAction<Ctx> for CreateFileSystem {
    async fn apply(&self, ctx: &Ctx, scope: &StepScope) -> anyhow::Result<String> {
        let desired = Desired {
            key: KEY_FILE_SYSTEM.into(),
            kind: FILE_SYSTEM.into(),
            depends_on: vec![],
            attrs: attrs([
                ("encrypted", "true".into()),
                ("throughput", "elastic".into()),
                ("backups", "enabled".into()),
            ]),
        };
        let efs = &ctx.aws.efs;
        let ensured = scope
            .ensure(ctx, &FileSystemOps, desired, |existing, token| async move {
                let id = match &existing {
                    Some(found) => found.id.clone(),
                    // The creation token makes a retried create return the same file system.
                    None => efs
                        .create_file_system()
                        .creation_token(&token)
                        .performance_mode(PerformanceMode::GeneralPurpose)
                        .throughput_mode(ThroughputMode::Elastic)
                        .encrypted(true)
                        .backup(true)
                        .set_tags(Some(efs_tags(ctx, KEY_FILE_SYSTEM)?))
                        .send()
                        .await
                        .or_aws(|| format!("creating the EFS file system ({})", ctx.aws.region))?
                        .file_system_id
                        .clone(),
                };
                wait_until(scope, &format!("file system {id} to become available"), EFS_WAIT, || async {
                    Ok(match describe_file_system(ctx, &id).await? {
                        Some(fs) => life_cycle(Some(fs.life_cycle_state()), ()),
                        None => Poll::Pending("not visible yet".into()),
                    })
                })
                .await?;
                if existing.is_some() {
                    // Converging an adopted or changed file system: backups on, if they are not.
                    let current = efs
                        .describe_backup_policy()
                        .file_system_id(&id)
                        .send()
                        .await
                        .or_aws(|| format!("reading the backup policy of {id}"));
                    let enabled = match current {
                        Ok(out) => out.backup_policy().is_some_and(|p| p.status() == &Status::Enabled),
                        Err(e) if e.is_code(&["PolicyNotFound"]) => false,
                        Err(e) => return Err(e.into()),
                    };
                    if !enabled {
                        let policy =
                            BackupPolicy::builder().status(Status::Enabled).build().context("backup policy")?;
                        efs.put_backup_policy()
                            .file_system_id(&id)
                            .backup_policy(policy)
                            .send()
                            .await
                            .or_aws(|| format!("turning on backups for {id}"))?;
                    }
                }
                let arn = describe_file_system(ctx, &id).await?.and_then(|fs| fs.file_system_arn).unwrap_or_default();
                Ok(Created { id, attrs: attrs([("arn", arn)]) })
            })
            .await?;
        Ok(format!("{} {} (encrypted, elastic throughput, backups on)", ensured.verb(), ensured.id()))
    }
}

pub struct FileSystemOps;

#[async_trait]
impl ResourceOps<Ctx> for FileSystemOps {
    fn noun(&self) -> &'static str {
        "file system"
    }

    async fn read(&self, ctx: &Ctx, record: &ResourceRecord) -> anyhow::Result<Live> {
        let id = record.id()?;
        Ok(match describe_file_system(ctx, id).await? {
            None => Live::Missing,
            Some(fs) if matches!(fs.life_cycle_state(), LifeCycleState::Deleting | LifeCycleState::Deleted) => {
                Live::Missing
            }
            Some(fs) => {
                let mut drift = Vec::new();
                if !fs.encrypted().unwrap_or(false) {
                    drift.push("not encrypted".to_string());
                }
                Live::Present {
                    summary: format!(
                        "{}, {} bytes",
                        fs.life_cycle_state().as_str(),
                        fs.size_in_bytes().map(|s| s.value()).unwrap_or(0)
                    ),
                    drift,
                }
            }
        })
    }

    async fn find(
        &self,
        ctx: &Ctx,
        _key: &str,
        _record: &ResourceRecord,
        token: &str,
    ) -> anyhow::Result<Option<String>> {
        let out = ctx
            .aws
            .efs
            .describe_file_systems()
            .creation_token(token)
            .send()
            .await
            .or_aws(|| "looking for the file system by its creation token".to_string())?;
        Ok(out
            .file_systems()
            .iter()
            .find(|f| f.life_cycle_state() != &LifeCycleState::Deleted)
            .map(|f| f.file_system_id().to_string()))
    }

    async fn delete(&self, ctx: &Ctx, record: &ResourceRecord, scope: &StepScope) -> anyhow::Result<()> {
        let id = record.id()?;
        // Normally its mount targets and access point went first (they are recorded and depend
        // on it); a file system found without a record may still have some.
        let mounts = found(
            ctx.aws
                .efs
                .describe_mount_targets()
                .file_system_id(id)
                .send()
                .await
                .or_aws(|| format!("listing mount targets of {id}")),
        )?;
        for mt in mounts.map(|m| m.mount_targets.unwrap_or_default()).unwrap_or_default() {
            let mt_record = ResourceRecord { id: Some(mt.mount_target_id), ..record.clone() };
            MountTargetOps.delete(ctx, &mt_record, scope).await?;
        }
        let points = found(
            ctx.aws
                .efs
                .describe_access_points()
                .file_system_id(id)
                .send()
                .await
                .or_aws(|| format!("listing access points of {id}")),
        )?;
        for ap in points.map(|p| p.access_points.unwrap_or_default()).unwrap_or_default() {
            if let Some(ap_id) = ap.access_point_id() {
                found(
                    ctx.aws
                        .efs
                        .delete_access_point()
                        .access_point_id(ap_id)
                        .send()
                        .await
                        .or_aws(|| format!("deleting access point {ap_id}")),
                )?;
            }
        }
        // "FileSystemInUse" until its mount targets are fully gone.
        delete_when_free(&["FileSystemInUse"], || async {
            ctx.aws
                .efs
                .delete_file_system()
                .file_system_id(id)
                .send()
                .await
                .or_aws(|| format!("deleting file system {id}"))
        })
        .await?;
        wait_until(scope, &format!("file system {id} to be deleted"), EFS_WAIT, || async {
            Ok(match describe_file_system(ctx, id).await? {
                None => Poll::Ready(()),
                Some(fs) if fs.life_cycle_state() == &LifeCycleState::Deleted => Poll::Ready(()),
                Some(fs) => Poll::Pending(fs.life_cycle_state().as_str().to_string()),
            })
        })
        .await?;
        Ok(())
    }

    async fn discover(&self, ctx: &Ctx) -> anyhow::Result<Vec<Discovered>> {
        let mut found = Vec::new();
        let mut pages = ctx.aws.efs.describe_file_systems().into_paginator().send();
        while let Some(page) = pages.next().await {
            for fs in page.or_aws(|| "discovering file systems".into())?.file_systems() {
                let tag = |k: &str| fs.tags().iter().find(|t| t.key() == k).map(|t| t.value());
                if tag(crate::aws::STACK_TAG) == Some(ctx.tags.stack.as_str())
                    && fs.life_cycle_state() != &LifeCycleState::Deleted
                    && let Some(key) = tag(crate::aws::RESOURCE_TAG)
                {
                    found.push(Discovered {
                        key: key.to_string(),
                        id: fs.file_system_id().to_string(),
                        attrs: Default::default(),
                    });
                }
            }
        }
        Ok(found)
    }
}

// ---------------------------------------------------------------------------------------------
// Mount targets

pub struct CreateMountTargets;

async fn describe_mount_target(
    ctx: &Ctx,
    id: &str,
) -> anyhow::Result<Option<aws_sdk_efs::types::MountTargetDescription>> {
    let out = found(
        ctx.aws
            .efs
            .describe_mount_targets()
            .mount_target_id(id)
            .send()
            .await
            .or_aws(|| format!("reading mount target {id}")),
    )?;
    Ok(out.and_then(|o| o.mount_targets.and_then(|v| v.into_iter().next())))
}

impl CreateMountTargets {
    async fn ensure_one(
        &self,
        ctx: &Ctx,
        scope: &StepScope,
        key: &'static str,
        subnet_key: &'static str,
    ) -> anyhow::Result<String> {
        let fs_id = required_id(KEY_FILE_SYSTEM, scope)?;
        let subnet_id = required_id(subnet_key, scope)?;
        let group_id = required_id(KEY_EFS_SECURITY_GROUP, scope)?;
        let desired = Desired {
            key: key.into(),
            kind: MOUNT_TARGET.into(),
            depends_on: vec![KEY_FILE_SYSTEM.into(), subnet_key.into(), KEY_EFS_SECURITY_GROUP.into()],
            attrs: attrs([
                ("file_system_id", fs_id.clone()),
                ("subnet_id", subnet_id.clone()),
                ("security_group", group_id.clone()),
            ]),
        };
        let efs = &ctx.aws.efs;
        let (fs, subnet, group) = (fs_id.as_str(), subnet_id.as_str(), group_id.as_str());
        let ensured = scope
            .ensure(ctx, &MountTargetOps, desired, |existing, _token| async move {
                let id = match existing {
                    Some(found) => {
                        efs.modify_mount_target_security_groups()
                            .mount_target_id(&found.id)
                            .security_groups(group)
                            .send()
                            .await
                            .or_aws(|| format!("setting the security group of mount target {}", found.id))?;
                        found.id
                    }
                    None => efs
                        .create_mount_target()
                        .file_system_id(fs)
                        .subnet_id(subnet)
                        .security_groups(group)
                        .send()
                        .await
                        .or_aws(|| format!("creating a mount target for {fs} in {subnet}"))?
                        .mount_target_id
                        .clone(),
                };
                wait_until(scope, &format!("mount target {id} to become available"), EFS_WAIT, || async {
                    Ok(match describe_mount_target(ctx, &id).await? {
                        Some(mt) => life_cycle(Some(mt.life_cycle_state()), ()),
                        None => Poll::Pending("not visible yet".into()),
                    })
                })
                .await?;
                Ok(Created { id, attrs: BTreeMap::new() })
            })
            .await?;
        Ok(format!("{} {}", ensured.verb(), ensured.id()))
    }
}

#[async_trait]
impl StepAction<Ctx> for CreateMountTargets {
    async fn apply(&self, ctx: &Ctx, scope: &StepScope) -> anyhow::Result<String> {
        let (a, b) = tokio::try_join!(
            self.ensure_one(ctx, scope, MOUNT_TARGET_KEYS[0], PRIVATE_SUBNETS[0]),
            self.ensure_one(ctx, scope, MOUNT_TARGET_KEYS[1], PRIVATE_SUBNETS[1]),
        )?;
        Ok(format!("{a}, {b}"))
    }
}

pub struct MountTargetOps;

#[async_trait]
impl ResourceOps<Ctx> for MountTargetOps {
    fn noun(&self) -> &'static str {
        "mount target"
    }

    async fn read(&self, ctx: &Ctx, record: &ResourceRecord) -> anyhow::Result<Live> {
        let id = record.id()?;
        Ok(match describe_mount_target(ctx, id).await? {
            None => Live::Missing,
            Some(mt) if matches!(mt.life_cycle_state(), LifeCycleState::Deleting | LifeCycleState::Deleted) => {
                Live::Missing
            }
            Some(mt) => Live::Present {
                summary: format!(
                    "{} in {} ({})",
                    mt.life_cycle_state().as_str(),
                    mt.subnet_id(),
                    mt.ip_address().unwrap_or("?")
                ),
                drift: vec![],
            },
        })
    }

    /// Only one mount target per zone may exist: the one in the recorded subnet is ours.
    async fn find(
        &self,
        ctx: &Ctx,
        _key: &str,
        record: &ResourceRecord,
        _token: &str,
    ) -> anyhow::Result<Option<String>> {
        let (Some(fs), Some(subnet)) = (record.attr("file_system_id"), record.attr("subnet_id")) else {
            return Ok(None);
        };
        let out = found(
            ctx.aws
                .efs
                .describe_mount_targets()
                .file_system_id(fs)
                .send()
                .await
                .or_aws(|| format!("listing mount targets of {fs}")),
        )?;
        Ok(out
            .and_then(|o| o.mount_targets.unwrap_or_default().into_iter().find(|m| m.subnet_id() == subnet))
            .map(|m| m.mount_target_id))
    }

    async fn delete(&self, ctx: &Ctx, record: &ResourceRecord, scope: &StepScope) -> anyhow::Result<()> {
        let id = record.id()?;
        found(
            ctx.aws
                .efs
                .delete_mount_target()
                .mount_target_id(id)
                .send()
                .await
                .or_aws(|| format!("deleting mount target {id}")),
        )?;
        // Its network interface keeps the subnet and security group busy until it is gone.
        wait_until(scope, &format!("mount target {id} to be deleted"), EFS_WAIT, || async {
            Ok(match describe_mount_target(ctx, id).await? {
                None => Poll::Ready(()),
                Some(mt) => Poll::Pending(mt.life_cycle_state().as_str().to_string()),
            })
        })
        .await?;
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// The initializer's access point: root, so it can create /srv/gitlab. GitLab's tasks mount the
// file system without one: the image's users have fixed UIDs and need root ownership semantics.

pub struct CreateInitAccessPoint;

async fn describe_access_point(
    ctx: &Ctx,
    id: &str,
) -> anyhow::Result<Option<aws_sdk_efs::types::AccessPointDescription>> {
    let out = found(
        ctx.aws
            .efs
            .describe_access_points()
            .access_point_id(id)
            .send()
            .await
            .or_aws(|| format!("reading access point {id}")),
    )?;
    Ok(out.and_then(|o| o.access_points.and_then(|v| v.into_iter().next())))
}

#[async_trait]
impl StepAction<Ctx> for CreateInitAccessPoint {
    async fn apply(&self, ctx: &Ctx, scope: &StepScope) -> anyhow::Result<String> {
        let fs_id = required_id(KEY_FILE_SYSTEM, scope)?;
        let desired = Desired {
            key: KEY_INIT_ACCESS_POINT.into(),
            kind: ACCESS_POINT.into(),
            depends_on: vec![KEY_FILE_SYSTEM.into()],
            attrs: attrs([("file_system_id", fs_id.clone())]),
        };
        let efs = &ctx.aws.efs;
        let fs = fs_id.as_str();
        let ensured = scope
            .ensure(ctx, &AccessPointOps, desired, |existing, token| async move {
                let id = match existing {
                    Some(found) => found.id,
                    None => efs
                        .create_access_point()
                        .client_token(&token)
                        .file_system_id(fs)
                        .posix_user(PosixUser::builder().uid(0).gid(0).build().context("posix user")?)
                        .root_directory(RootDirectory::builder().path("/").build())
                        .set_tags(Some(efs_tags(ctx, KEY_INIT_ACCESS_POINT)?))
                        .send()
                        .await
                        .or_aws(|| format!("creating the initializer's access point on {fs}"))?
                        .access_point_id
                        .context("CreateAccessPoint returned no id")?,
                };
                let ap = wait_until(scope, &format!("access point {id} to become available"), EFS_WAIT, || async {
                    Ok(match describe_access_point(ctx, &id).await? {
                        Some(ap) => life_cycle(ap.life_cycle_state().cloned().as_ref(), ap),
                        None => Poll::Pending("not visible yet".into()),
                    })
                })
                .await?;
                Ok(Created { id, attrs: attrs([("arn", ap.access_point_arn().unwrap_or_default().to_string())]) })
            })
            .await?;
        Ok(format!("{} {}", ensured.verb(), ensured.id()))
    }
}

pub struct AccessPointOps;

#[async_trait]
impl ResourceOps<Ctx> for AccessPointOps {
    fn noun(&self) -> &'static str {
        "access point"
    }

    async fn read(&self, ctx: &Ctx, record: &ResourceRecord) -> anyhow::Result<Live> {
        let id = record.id()?;
        Ok(match describe_access_point(ctx, id).await? {
            None => Live::Missing,
            Some(ap) => Live::Present {
                summary: format!(
                    "{} at {}",
                    ap.life_cycle_state().map(|s| s.as_str()).unwrap_or("?"),
                    ap.root_directory().and_then(|r| r.path()).unwrap_or("/")
                ),
                drift: vec![],
            },
        })
    }

    async fn find(
        &self,
        ctx: &Ctx,
        _key: &str,
        record: &ResourceRecord,
        token: &str,
    ) -> anyhow::Result<Option<String>> {
        let Some(fs) = record.attr("file_system_id") else { return Ok(None) };
        let out = found(
            ctx.aws
                .efs
                .describe_access_points()
                .file_system_id(fs)
                .send()
                .await
                .or_aws(|| format!("listing access points of {fs}")),
        )?;
        Ok(out
            .and_then(|o| o.access_points.unwrap_or_default().into_iter().find(|a| a.client_token() == Some(token)))
            .and_then(|a| a.access_point_id))
    }

    async fn delete(&self, ctx: &Ctx, record: &ResourceRecord, _scope: &StepScope) -> anyhow::Result<()> {
        let id = record.id()?;
        found(
            ctx.aws
                .efs
                .delete_access_point()
                .access_point_id(id)
                .send()
                .await
                .or_aws(|| format!("deleting access point {id}")),
        )?;
        Ok(())
    }
}
