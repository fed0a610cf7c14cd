//! EFS: GitLab's file system, its mount targets in the private subnets, and the root access
//! point the initializer uses while it runs.

use std::time::Duration;

use anyhow::Context as _;
use async_trait::async_trait;
use aws_sdk_efs::types::{
    AccessPointDescription, BackupPolicy, FileSystemDescription, LifeCycleState, MountTargetDescription,
    PerformanceMode, PosixUser, RootDirectory, Status, ThroughputMode,
};

use crate::aws::{AwsResultExt, Ctx, Holders, call, delete_when_free, if_there, policies};
use crate::engine::counted;
use crate::engine::{
    Applied, Desired, Discovered, Env, Existing, Found, Live, Lost, Owner, Poll, ResourceOps, StepAction, StepScope,
    Summary, WaitPolicy, attrs, wait_until,
};
use crate::keys::{self, Kind};
use crate::state::ResourceRecord;

/// Mount targets take about 80 s (to appear and to go), file systems a few seconds; AWS gives
/// no bound.
const EFS_WAIT: WaitPolicy = WaitPolicy::up_to(Duration::from_secs(900));

fn life_cycle<T>(state: Option<&LifeCycleState>, ready: T) -> Poll<T> {
    match state {
        Some(LifeCycleState::Available) => Poll::Ready(ready),
        Some(LifeCycleState::Error) => Poll::Failed("it is in state error".into()),
        Some(s) => Poll::Pending(s.as_str().to_string()),
        None => Poll::Pending("unknown".into()),
    }
}

fn gone(state: &LifeCycleState) -> bool {
    matches!(state, LifeCycleState::Deleting | LifeCycleState::Deleted)
}

// ---------------------------------------------------------------------------------------------
// File system

pub async fn describe_file_system(ctx: &Ctx, id: &str) -> anyhow::Result<Option<FileSystemDescription>> {
    let out =
        if_there(ctx.aws.efs.describe_file_systems().file_system_id(id).send(), || format!("reading file system {id}"))
            .await?;
    Ok(out.and_then(|o| o.file_systems.and_then(|v| v.into_iter().next())))
}

fn file_system_owner(ctx: &Ctx, fs: &FileSystemDescription) -> Owner {
    ctx.tags.owner(fs.tags().iter().map(|t| (t.key(), t.value())))
}

pub struct FileSystemStep {
    /// Days without a read before a file moves to Infrequent Access (`None`: never).
    pub ia_days: Option<u32>,
}

#[async_trait]
impl StepAction<Ctx> for FileSystemStep {
    fn desired(&self, _ctx: &Ctx, _env: &Env) -> anyhow::Result<Vec<Desired>> {
        let ia = self.ia_days.map_or_else(|| "off".to_string(), |d| format!("after {d} days"));
        let wanted = attrs([
            ("encrypted", "true".into()),
            ("throughput", "elastic".into()),
            ("backups", "enabled".into()),
            ("infrequent_access", ia),
        ]);
        Ok(vec![Desired::new(keys::FILE_SYSTEM, Kind::FileSystem, wanted).assuming(&[("infrequent_access", "off")])])
    }

    async fn apply(&self, ctx: &Ctx, scope: &StepScope) -> anyhow::Result<Summary> {
        let want = scope.wanted_one(ctx, self)?;
        let ia_days = self.ia_days;
        let ensured = scope
            .ensure(ctx, &FileSystemOps, want, |existing, token| async move {
                let existing_known = existing.is_some();
                let applied = converge_file_system(ctx, scope, existing, token).await?;
                // A new file system without the cheaper class needs no call.
                if existing_known || ia_days.is_some() {
                    set_infrequent_access(ctx, &applied.id, ia_days).await?;
                }
                Ok(applied)
            })
            .await?;
        let ia = ia_days.map(|d| format!(", Infrequent Access after {d} days")).unwrap_or_default();
        Ok(ensured.summary(&format!(" (encrypted, elastic throughput, backups on{ia})")))
    }
}

/// Files unread for `days` move to EFS Infrequent Access and come back on their first read;
/// `None` takes the policy away (files stay where they are until read).
async fn set_infrequent_access(ctx: &Ctx, id: &str, days: Option<u32>) -> anyhow::Result<()> {
    use aws_sdk_efs::types::{LifecyclePolicy, TransitionToIaRules, TransitionToPrimaryStorageClassRules};
    let policies = match days {
        None => vec![],
        Some(days) => vec![
            LifecyclePolicy::builder()
                .transition_to_ia(TransitionToIaRules::from(
                    format!("AFTER_{days}_DAY{}", if days == 1 { "" } else { "S" }).as_str(),
                ))
                .build(),
            LifecyclePolicy::builder()
                .transition_to_primary_storage_class(TransitionToPrimaryStorageClassRules::After1Access)
                .build(),
        ],
    };
    call(
        ctx.aws.efs.put_lifecycle_configuration().file_system_id(id).set_lifecycle_policies(Some(policies)).send(),
        || format!("setting when files of {id} move to Infrequent Access"),
    )
    .await?;
    Ok(())
}

async fn converge_file_system(
    ctx: &Ctx,
    scope: &StepScope,
    existing: Option<Existing>,
    token: String,
) -> anyhow::Result<Applied> {
    let efs = &ctx.aws.efs;
    let id = match &existing {
        Some(existing) => existing.id.clone(),
        // The creation token makes a retried create return the same file system.
        None => {
            call(
                efs.create_file_system()
                    .creation_token(&token)
                    .performance_mode(PerformanceMode::GeneralPurpose)
                    .throughput_mode(ThroughputMode::Elastic)
                    .encrypted(true)
                    .backup(true)
                    .set_tags(Some(ctx.tags.list(keys::FILE_SYSTEM)))
                    .send(),
                || format!("creating the EFS file system ({})", ctx.region()),
            )
            .await?
            .file_system_id
        }
    };
    scope.created(keys::FILE_SYSTEM, &id).await?;
    let fs = wait_until(scope, &format!("file system {id} to become available"), EFS_WAIT, || async {
        Ok(match describe_file_system(ctx, &id).await? {
            Some(fs) => life_cycle(Some(&fs.life_cycle_state().clone()), fs),
            None => Poll::Pending("not visible yet".into()),
        })
    })
    .await?;
    if existing.is_some() && fs.throughput_mode() != Some(&ThroughputMode::Elastic) {
        // A restored file system comes with the default (bursting) throughput.
        call(efs.update_file_system().file_system_id(&id).throughput_mode(ThroughputMode::Elastic).send(), || {
            format!("setting elastic throughput on {id}")
        })
        .await?;
    }
    if existing.is_some() {
        // Converging an adopted or changed file system: backups on, if they are not.
        let current = call(efs.describe_backup_policy().file_system_id(&id).send(), || {
            format!("reading the backup policy of {id}")
        })
        .await;
        let enabled = match current {
            Ok(out) => out.backup_policy().is_some_and(|p| p.status() == &Status::Enabled),
            Err(e) if e.is_code(&["PolicyNotFound"]) => false,
            Err(e) => return Err(e.into()),
        };
        if !enabled {
            let policy = BackupPolicy::builder().status(Status::Enabled).build().context("backup policy")?;
            call(efs.put_backup_policy().file_system_id(&id).backup_policy(policy).send(), || {
                format!("turning on backups for {id}")
            })
            .await?;
        }
    }
    Ok(Applied::id(id).with("arn", fs.file_system_arn().unwrap_or_default()))
}

pub struct FileSystemOps;

#[async_trait]
impl ResourceOps<Ctx> for FileSystemOps {
    fn noun(&self) -> &'static str {
        Kind::FileSystem.noun()
    }

    async fn read(&self, ctx: &Ctx, record: &ResourceRecord) -> anyhow::Result<Live> {
        Ok(match describe_file_system(ctx, record.id()?).await? {
            Some(fs) if !gone(fs.life_cycle_state()) => {
                let drift = if fs.encrypted().unwrap_or(false) { vec![] } else { vec!["not encrypted".to_string()] };
                let bytes = fs.size_in_bytes().map(|s| s.value()).unwrap_or(0);
                Live::present(format!("{}, {bytes} bytes", fs.life_cycle_state().as_str()), drift)
                    .owned_by(file_system_owner(ctx, &fs))
            }
            _ => Live::Missing,
        })
    }

    async fn find(&self, ctx: &Ctx, lost: &Lost<'_>) -> anyhow::Result<Option<String>> {
        let out = call(ctx.aws.efs.describe_file_systems().creation_token(lost.token).send(), || {
            "looking for the file system by its creation lost.token".to_string()
        })
        .await?;
        Ok(out.file_systems().iter().find(|f| !gone(f.life_cycle_state())).map(|f| f.file_system_id().to_string()))
    }

    async fn delete(&self, ctx: &Ctx, record: &ResourceRecord, scope: &StepScope) -> anyhow::Result<()> {
        let id = record.id()?;
        let efs = &ctx.aws.efs;
        // Normally its mount targets and access points went first (they are recorded and depend
        // on it); a file system found without a record, or a retained one, may still have some.
        for mount in mount_targets_of(ctx, id).await? {
            delete_mount_target(ctx, &mount.mount_target_id, scope).await?;
        }
        let points = if_there(efs.describe_access_points().file_system_id(id).send(), || {
            format!("listing access points of {id}")
        })
        .await?;
        for point in points.map(|p| p.access_points.unwrap_or_default()).unwrap_or_default() {
            if let Some(point_id) = point.access_point_id() {
                delete_access_point(ctx, point_id).await?;
            }
        }
        // "FileSystemInUse" until its mount targets are fully gone.
        delete_when_free(
            scope,
            &format!("file system {id}"),
            &["FileSystemInUse"],
            || async {
                call(efs.delete_file_system().file_system_id(id).send(), || format!("deleting file system {id}")).await
            },
            || async {
                let left = mount_targets_of(ctx, id).await?;
                Ok(if left.is_empty() {
                    Holders::Unknown
                } else {
                    let ids: Vec<&str> = left.iter().map(|m| m.mount_target_id()).collect();
                    Holders::Draining(format!(
                        "{} to be deleted: {}",
                        counted(ids.len(), "mount target"),
                        ids.join(", ")
                    ))
                })
            },
        )
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

    async fn discover(&self, ctx: &Ctx) -> anyhow::Result<Found> {
        let mut found = Vec::new();
        let mut pages = ctx.aws.efs.describe_file_systems().into_paginator().send();
        while let Some(page) = pages.next().await {
            for fs in page.or_aws(|| "discovering file systems".into())?.file_systems() {
                if gone(fs.life_cycle_state()) || file_system_owner(ctx, fs) != Owner::Ours {
                    continue;
                }
                if let Some(key) = fs.tags().iter().find(|t| t.key() == crate::aws::tags::RESOURCE_TAG) {
                    found.push(Discovered::new(key.value(), fs.file_system_id()));
                }
            }
        }
        Ok(found.into())
    }
}

// ---------------------------------------------------------------------------------------------
// Mount targets

async fn describe_mount_target(ctx: &Ctx, id: &str) -> anyhow::Result<Option<MountTargetDescription>> {
    let out = if_there(ctx.aws.efs.describe_mount_targets().mount_target_id(id).send(), || {
        format!("reading mount target {id}")
    })
    .await?;
    Ok(out.and_then(|o| o.mount_targets.and_then(|v| v.into_iter().next())))
}

async fn mount_targets_of(ctx: &Ctx, fs: &str) -> anyhow::Result<Vec<MountTargetDescription>> {
    let out = if_there(ctx.aws.efs.describe_mount_targets().file_system_id(fs).send(), || {
        format!("listing mount targets of {fs}")
    })
    .await?;
    Ok(out.and_then(|o| o.mount_targets).unwrap_or_default())
}

/// Deletes a mount target and waits until it is gone: its network interface keeps the subnet
/// and security group busy until then.
async fn delete_mount_target(ctx: &Ctx, id: &str, scope: &StepScope) -> anyhow::Result<()> {
    if_there(ctx.aws.efs.delete_mount_target().mount_target_id(id).send(), || format!("deleting mount target {id}"))
        .await?;
    wait_until(scope, &format!("mount target {id} to be deleted"), EFS_WAIT, || async {
        Ok(match describe_mount_target(ctx, id).await? {
            None => Poll::Ready(()),
            Some(mt) => Poll::Pending(mt.life_cycle_state().as_str().to_string()),
        })
    })
    .await?;
    Ok(())
}

pub struct MountTargetsStep;

#[async_trait]
impl StepAction<Ctx> for MountTargetsStep {
    fn desired(&self, _ctx: &Ctx, env: &Env) -> anyhow::Result<Vec<Desired>> {
        let fs = env.id(keys::FILE_SYSTEM)?;
        let group = env.id(keys::EFS_SECURITY_GROUP)?;
        keys::MOUNT_TARGETS
            .iter()
            .zip(keys::PRIVATE_SUBNETS)
            .map(|(key, subnet)| {
                let wanted = attrs([
                    ("file_system_id", fs.clone()),
                    ("subnet_id", env.id(subnet)?),
                    ("security_group", group.clone()),
                ]);
                Ok(Desired::new(key, Kind::MountTarget, wanted).replaced_on(&["file_system_id", "subnet_id"]))
            })
            .collect()
    }

    async fn apply(&self, ctx: &Ctx, scope: &StepScope) -> anyhow::Result<Summary> {
        let ensures = scope.wanted(ctx, self)?.into_iter().map(|want| {
            let key = want.key.clone();
            let (fs, subnet, group) = (
                want.text("file_system_id").to_string(),
                want.text("subnet_id").to_string(),
                want.text("security_group").to_string(),
            );
            async move {
                scope
                    .ensure(ctx, &MountTargetOps, want, |existing, _| async move {
                        let efs = &ctx.aws.efs;
                        let id = match existing {
                            Some(existing) => {
                                call(
                                    efs.modify_mount_target_security_groups()
                                        .mount_target_id(&existing.id)
                                        .security_groups(&group)
                                        .send(),
                                    || format!("setting the security group of mount target {}", existing.id),
                                )
                                .await?;
                                existing.id
                            }
                            None => {
                                call(
                                    efs.create_mount_target()
                                        .file_system_id(&fs)
                                        .subnet_id(&subnet)
                                        .security_groups(&group)
                                        .send(),
                                    || format!("creating a mount target for {fs} in {subnet}"),
                                )
                                .await?
                                .mount_target_id
                            }
                        };
                        scope.created(&key, &id).await?;
                        wait_until(scope, &format!("mount target {id} to become available"), EFS_WAIT, || async {
                            Ok(match describe_mount_target(ctx, &id).await? {
                                Some(mt) => life_cycle(Some(mt.life_cycle_state()), ()),
                                None => Poll::Pending("not visible yet".into()),
                            })
                        })
                        .await?;
                        Ok(Applied::id(id))
                    })
                    .await
            }
        });
        let ensured = futures_util::future::try_join_all(ensures).await?;
        let parts: Vec<String> = ensured.iter().map(|e| format!("{} {}", e.verb(), e.id())).collect();
        Ok(Summary::new(parts.join(", "), ensured.iter().any(|e| e.changed())))
    }
}

pub struct MountTargetOps;

fn mount_target_live(described: Option<&MountTargetDescription>) -> Live {
    match described {
        Some(mt) if !gone(mt.life_cycle_state()) => Live::present(
            format!("{} in {} ({})", mt.life_cycle_state().as_str(), mt.subnet_id(), mt.ip_address().unwrap_or("?")),
            vec![],
        ),
        _ => Live::Missing,
    }
}

#[async_trait]
impl ResourceOps<Ctx> for MountTargetOps {
    fn noun(&self) -> &'static str {
        Kind::MountTarget.noun()
    }

    async fn read(&self, ctx: &Ctx, record: &ResourceRecord) -> anyhow::Result<Live> {
        Ok(mount_target_live(describe_mount_target(ctx, record.id()?).await?.as_ref()))
    }

    /// A mount target has no tags: it is the stack's when its file system is.
    async fn read_owned(&self, ctx: &Ctx, record: &ResourceRecord) -> anyhow::Result<Live> {
        let described = describe_mount_target(ctx, record.id()?).await?;
        let live = mount_target_live(described.as_ref());
        let Some(mt) = described.filter(|_| !matches!(live, Live::Missing)) else { return Ok(live) };
        let owner = match describe_file_system(ctx, mt.file_system_id()).await? {
            Some(fs) => match file_system_owner(ctx, &fs) {
                Owner::Foreign(why) => Owner::Foreign(format!("its file system {}: {why}", mt.file_system_id())),
                owner => owner,
            },
            None => Owner::Ours,
        };
        Ok(live.owned_by(owner))
    }

    /// Only one mount target per zone may exist: the one in the recorded subnet is ours.
    async fn find(&self, ctx: &Ctx, lost: &Lost<'_>) -> anyhow::Result<Option<String>> {
        let (Some(fs), Some(subnet)) = (lost.record.attr("file_system_id"), lost.record.attr("subnet_id")) else {
            return Ok(None);
        };
        Ok(mount_targets_of(ctx, fs).await?.into_iter().find(|m| m.subnet_id() == subnet).map(|m| m.mount_target_id))
    }

    async fn delete(&self, ctx: &Ctx, record: &ResourceRecord, scope: &StepScope) -> anyhow::Result<()> {
        delete_mount_target(ctx, record.id()?, scope).await
    }
}

// ---------------------------------------------------------------------------------------------
// The initializer's root access point: root, so it can create /srv/gitlab. GitLab's tasks mount
// the file system without one: the image's users have fixed UIDs and need root ownership.

async fn describe_access_point(ctx: &Ctx, id: &str) -> anyhow::Result<Option<AccessPointDescription>> {
    let out = if_there(ctx.aws.efs.describe_access_points().access_point_id(id).send(), || {
        format!("reading access point {id}")
    })
    .await?;
    Ok(out.and_then(|o| o.access_points.and_then(|v| v.into_iter().next())))
}

async fn delete_access_point(ctx: &Ctx, id: &str) -> anyhow::Result<()> {
    if_there(ctx.aws.efs.delete_access_point().access_point_id(id).send(), || format!("deleting access point {id}"))
        .await?;
    Ok(())
}

/// What the initializer's access point is.
pub fn init_access_point(fs_id: &str) -> Desired {
    Desired::new(keys::INIT_ACCESS_POINT, Kind::AccessPoint, attrs([("file_system_id", fs_id.to_string())]))
        .replaced_on(&["file_system_id"])
}

/// Creates (or converges) the initializer's access point on `fs`; returns its ARN.
pub async fn ensure_init_access_point(ctx: &Ctx, scope: &StepScope, fs: &str) -> anyhow::Result<String> {
    let ensured = scope
        .ensure(ctx, &AccessPointOps, init_access_point(fs), |existing, token| async move {
            let id = match existing {
                Some(existing) => existing.id,
                None => call(
                    ctx.aws
                        .efs
                        .create_access_point()
                        .client_token(&token)
                        .file_system_id(fs)
                        .posix_user(PosixUser::builder().uid(0).gid(0).build().context("posix user")?)
                        .root_directory(RootDirectory::builder().path("/").build())
                        .set_tags(Some(ctx.tags.list(keys::INIT_ACCESS_POINT)))
                        .send(),
                    || format!("creating the initializer's access point on {fs}"),
                )
                .await?
                .access_point_id
                .context("CreateAccessPoint returned no id")?,
            };
            let point = wait_until(scope, &format!("access point {id} to become available"), EFS_WAIT, || async {
                Ok(match describe_access_point(ctx, &id).await? {
                    Some(point) => life_cycle(point.life_cycle_state().cloned().as_ref(), point),
                    None => Poll::Pending("not visible yet".into()),
                })
            })
            .await?;
            Ok(Applied::id(id).with("arn", point.access_point_arn().unwrap_or_default()))
        })
        .await?;
    ensured.record.attr("arn").map(str::to_string).context("the access point has no ARN")
}

pub struct AccessPointOps;

#[async_trait]
impl ResourceOps<Ctx> for AccessPointOps {
    fn noun(&self) -> &'static str {
        Kind::AccessPoint.noun()
    }

    async fn read(&self, ctx: &Ctx, record: &ResourceRecord) -> anyhow::Result<Live> {
        Ok(match describe_access_point(ctx, record.id()?).await? {
            None => Live::Missing,
            Some(point) => {
                let summary = format!(
                    "{} at {}",
                    point.life_cycle_state().map(|s| s.as_str()).unwrap_or("?"),
                    point.root_directory().and_then(|r| r.path()).unwrap_or("/")
                );
                Live::present(summary, vec![])
                    .owned_by(ctx.tags.owner(point.tags().iter().map(|t| (t.key(), t.value()))))
            }
        })
    }

    async fn find(&self, ctx: &Ctx, lost: &Lost<'_>) -> anyhow::Result<Option<String>> {
        let Some(fs) = lost.record.attr("file_system_id") else { return Ok(None) };
        let out = if_there(ctx.aws.efs.describe_access_points().file_system_id(fs).send(), || {
            format!("listing access points of {fs}")
        })
        .await?;
        Ok(out
            .and_then(|o| {
                o.access_points.unwrap_or_default().into_iter().find(|a| a.client_token() == Some(lost.token))
            })
            .and_then(|a| a.access_point_id))
    }

    async fn delete(&self, ctx: &Ctx, record: &ResourceRecord, _scope: &StepScope) -> anyhow::Result<()> {
        delete_access_point(ctx, record.id()?).await
    }
}

// ---------------------------------------------------------------------------------------------
// The file system's policy

/// What EFS lets NFS clients do.
const CLIENT_ACTIONS: [&str; 3] =
    ["elasticfilesystem:ClientMount", "elasticfilesystem:ClientWrite", "elasticfilesystem:ClientRootAccess"];

/// TLS only, and only GitLab's task and the initializer mount it (anonymous clients included in
/// the denied: they have no principal). Denies alone: what the task and the initializer may do
/// is their roles' own policies', so a role created again is not locked out.
pub struct FileSystemPolicyStep;

#[async_trait]
impl StepAction<Ctx> for FileSystemPolicyStep {
    fn desired(&self, _ctx: &Ctx, env: &Env) -> anyhow::Result<Vec<Desired>> {
        let fs = env.attr(keys::FILE_SYSTEM, "arn")?;
        let mounters = vec![env.id(keys::TASK_ROLE)?, env.id(keys::INIT_ROLE)?];
        let policy = policies::document(vec![
            policies::deny_without_tls("TlsOnly", &fs),
            policies::deny_all_but(
                "OnlyGitLabAndItsInitializer",
                &CLIENT_ACTIONS,
                &fs,
                &mounters,
                serde_json::json!({"AWS": "*"}),
            ),
        ]);
        let wanted = attrs([("file_system_id", env.id(keys::FILE_SYSTEM)?), ("policy", policy)]);
        Ok(vec![
            Desired::new(keys::FILE_SYSTEM_POLICY, Kind::FileSystemPolicy, wanted).replaced_on(&["file_system_id"]),
        ])
    }

    async fn apply(&self, ctx: &Ctx, scope: &StepScope) -> anyhow::Result<Summary> {
        let want = scope.wanted_one(ctx, self)?;
        let (fs, policy) = (want.text("file_system_id").to_string(), want.text("policy").to_string());
        let (fs_ref, policy_ref) = (fs.as_str(), policy.as_str());
        let ensured = scope
            .ensure(ctx, &FileSystemPolicyOps, want, |_, _| async move {
                call(ctx.aws.efs.put_file_system_policy().file_system_id(fs_ref).policy(policy_ref).send(), || {
                    format!("setting the policy of {fs_ref}")
                })
                .await?;
                Ok(Applied::id(fs_ref))
            })
            .await?;
        Ok(Summary::new(
            format!("{} (TLS only; GitLab and its initializer alone mount it)", ensured.verb()),
            ensured.changed(),
        ))
    }
}

pub struct FileSystemPolicyOps;

#[async_trait]
impl ResourceOps<Ctx> for FileSystemPolicyOps {
    fn noun(&self) -> &'static str {
        Kind::FileSystemPolicy.noun()
    }

    async fn read(&self, ctx: &Ctx, record: &ResourceRecord) -> anyhow::Result<Live> {
        let fs = record.id()?;
        let out = if_there(ctx.aws.efs.describe_file_system_policy().file_system_id(fs).send(), || {
            format!("reading the policy of {fs}")
        })
        .await?;
        Ok(match out.and_then(|o| o.policy) {
            None => Live::Missing,
            Some(live) => {
                let same = record.attr("policy").is_some_and(|want| policies::same(want, &live));
                let drift = if same { vec![] } else { vec!["the policy was changed outside gitlab-provision".into()] };
                Live::present("TLS only, GitLab and its initializer", drift).owned_by(Owner::Ours)
            }
        })
    }

    async fn find(&self, _ctx: &Ctx, lost: &Lost<'_>) -> anyhow::Result<Option<String>> {
        Ok(lost.record.attr("file_system_id").map(str::to_string))
    }

    /// Forgotten, not removed: the policy goes with what it guards (AWS deletes it with its
    /// resource), and a resource `down --keep-data` or a restore keeps stays guarded.
    async fn delete(&self, _ctx: &Ctx, _record: &ResourceRecord, _scope: &StepScope) -> anyhow::Result<()> {
        Ok(())
    }
}
