//! IAM roles, least privilege and scoped to this stack's ARNs: the task execution role, the task
//! role, the initializer's role (and its file-system rights, which exist only while it runs), and
//! AWS Backup's role. Role names are account-wide: they carry the region, so the same stack name
//! in two regions never shares (or deletes) a role.

use anyhow::Context as _;
use async_trait::async_trait;
use serde_json::json;

use crate::aws::{AwsError, Ctx, call, if_there};
use crate::engine::{
    Applied, Conflict, Desired, Discovered, Env, Found, Live, Lost, Owner, ResourceOps, StepAction, StepScope, Summary,
    attrs,
};
use crate::keys::{self, Kind};
use crate::state::ResourceRecord;

/// The inline policy every role of the stack carries.
const INLINE_POLICY: &str = "gitlab-provision";
/// The initializer's file-system rights, granted just before it runs and revoked right after.
pub const INIT_EFS_POLICY: &str = "gitlab-provision-efs-init";

/// Roles this tool creates, for discovery.
const ROLE_KEYS: [&str; 4] = [keys::EXECUTION_ROLE, keys::TASK_ROLE, keys::INIT_ROLE, keys::BACKUP_ROLE];

/// `<stack>-<region>-<key>`: at most 32 + 14 + 14 + 2 = 62 of IAM's 64 characters.
pub fn role_name(ctx: &Ctx, key: &str) -> String {
    format!("{}-{}-{key}", ctx.tags.stack, ctx.region())
}

/// The name before names carried the region; stacks that recorded it keep it.
fn legacy_role_name(ctx: &Ctx, key: &str) -> String {
    format!("{}-{key}", ctx.tags.stack)
}

/// The role's name: the recorded one for an existing role, else the regional one.
fn name_for(ctx: &Ctx, env: &Env, key: &str) -> anyhow::Result<String> {
    Ok(match env.record(key)?.and_then(|r| r.attr("name")) {
        Some(name) => name.to_string(),
        None => role_name(ctx, key),
    })
}

/// The ARN a policy names for a record: its `arn` attribute, else its id.
fn arn_of(env: &Env, key: &str) -> anyhow::Result<String> {
    match env.record(key)?.and_then(|r| r.attr("arn")) {
        Some(arn) if !arn.is_empty() => Ok(arn.to_string()),
        _ => env.id(key),
    }
}

/// Who may assume a role: the service, and only on behalf of this account (the confused-deputy
/// guard AWS recommends); ECS tasks also only from this region's ECS.
///
/// AWS Backup is trusted as AWS's own default service role (AWSBackupDefaultServiceRole) trusts
/// it, without conditions: AWS documents no confused-deputy keys for AWS Backup assuming its
/// service role (its guidance covers the SNS topic and KMS key policies only), and a condition on
/// a key the service does not send makes every backup and restore fail. See the README, "Safety".
fn trust(ctx: &Ctx, service: &str) -> String {
    let account = ctx.account_id();
    let statement = match service {
        BACKUP_SERVICE => json!({"Effect": "Allow", "Principal": {"Service": service}, "Action": "sts:AssumeRole"}),
        _ => {
            let mut condition = json!({ "StringEquals": { "aws:SourceAccount": account } });
            if service == "ecs-tasks.amazonaws.com" {
                condition["ArnLike"] =
                    json!({ "aws:SourceArn": format!("arn:{}:ecs:{}:{account}:*", ctx.partition(), ctx.region()) });
            }
            json!({"Effect": "Allow", "Principal": {"Service": service}, "Action": "sts:AssumeRole", "Condition": condition})
        }
    };
    json!({"Version": "2012-10-17", "Statement": [statement]}).to_string()
}

/// AWS Backup's service principal.
pub const BACKUP_SERVICE: &str = "backup.amazonaws.com";

/// Write this log group; read this secret (and the registry's credentials when configured);
/// pull from ECR when the image is there.
pub fn execution_policy(
    ctx: &Ctx,
    env: &Env,
    registry_secret: Option<&str>,
    ecr: bool,
    database: bool,
) -> anyhow::Result<Option<serde_json::Value>> {
    let log_group = format!(
        "arn:{}:logs:{}:{}:log-group:{}:*",
        ctx.partition(),
        ctx.region(),
        ctx.account_id(),
        env.id(keys::LOG_GROUP)?
    );
    let mut secrets = vec![arn_of(env, keys::ROOT_SECRET)?];
    secrets.extend(registry_secret.map(str::to_string));
    if database {
        // RDS's own secret of the database's master password, encrypted with the stack's key.
        secrets.push(env.attr(keys::DB_INSTANCE, "secret_arn")?);
    }
    let mut statements = vec![
        json!({"Effect": "Allow", "Action": ["logs:CreateLogStream", "logs:PutLogEvents"], "Resource": log_group}),
        json!({"Effect": "Allow", "Action": "secretsmanager:GetSecretValue", "Resource": secrets}),
    ];
    // The stack's key decrypts the secret, through Secrets Manager only.
    statements.push(json!({
        "Effect": "Allow", "Action": "kms:Decrypt", "Resource": arn_of(env, keys::KEY)?,
        "Condition": {"StringEquals": {"kms:ViaService": format!("secretsmanager.{}.amazonaws.com", ctx.region())}}
    }));
    if ecr {
        statements.push(json!({"Effect": "Allow", "Action": "ecr:GetAuthorizationToken", "Resource": "*"}));
        statements.push(json!({
            "Effect": "Allow",
            "Action": ["ecr:BatchCheckLayerAvailability", "ecr:GetDownloadUrlForLayer", "ecr:BatchGetImage", "ecr:BatchImportUpstreamImage", "ecr:CreateRepository"],
            "Resource": format!("arn:{}:ecr:{}:{}:repository/*", ctx.partition(), ctx.region(), ctx.account_id())
        }));
    }
    Ok(Some(json!({"Version": "2012-10-17", "Statement": statements})))
}

fn efs_rights(env: &Env) -> anyhow::Result<serde_json::Value> {
    Ok(
        json!({"Effect": "Allow", "Action": ["elasticfilesystem:ClientMount", "elasticfilesystem:ClientWrite", "elasticfilesystem:ClientRootAccess"], "Resource": arn_of(env, keys::FILE_SYSTEM)?}),
    )
}

/// GitLab's task: mount and write this file system as root (GitLab chowns its own trees); with
/// ECS Exec, its channels and writing each session to the stack's exec log group (the ECS
/// developer guide's "IAM permissions required for ECS Exec": DescribeLogGroups cannot be scoped
/// to a group, the rest can); with object storage, GitLab's buckets and nothing else (the
/// permissions GitLab's object storage guide lists, per bucket and per object; PutObjectAcl
/// because GitLab's uploader sends `x-amz-acl: private` on copies, which the bucket, its ACLs
/// disabled, accepts and ignores).
pub fn task_policy(ctx: &Ctx, env: &Env, exec: bool, objects: bool) -> anyhow::Result<Option<serde_json::Value>> {
    let mut statements = vec![efs_rights(env)?];
    if exec {
        let group = format!(
            "arn:{}:logs:{}:{}:log-group:{}:*",
            ctx.partition(),
            ctx.region(),
            ctx.account_id(),
            env.id(keys::EXEC_LOG_GROUP)?
        );
        statements.extend([
            json!({"Effect": "Allow", "Action": ["ssmmessages:CreateControlChannel", "ssmmessages:CreateDataChannel", "ssmmessages:OpenControlChannel", "ssmmessages:OpenDataChannel"], "Resource": "*"}),
            json!({"Effect": "Allow", "Action": "logs:DescribeLogGroups", "Resource": "*"}),
            json!({"Effect": "Allow", "Action": ["logs:CreateLogStream", "logs:DescribeLogStreams", "logs:PutLogEvents"], "Resource": group}),
        ]);
    }
    if objects {
        let buckets =
            keys::OBJECT_BUCKETS.iter().map(|(key, _)| env.attr(key, "arn")).collect::<anyhow::Result<Vec<_>>>()?;
        let objects: Vec<String> = buckets.iter().map(|arn| format!("{arn}/*")).collect();
        statements.extend([
            json!({"Sid": "GitLabsBuckets", "Effect": "Allow", "Action": ["s3:ListBucket", "s3:ListBucketMultipartUploads", "s3:GetBucketLocation"], "Resource": buckets}),
            json!({"Sid": "GitLabsObjects", "Effect": "Allow", "Action": ["s3:PutObject", "s3:PutObjectAcl", "s3:GetObject", "s3:DeleteObject", "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts"], "Resource": objects}),
        ]);
    }
    Ok(Some(json!({"Version": "2012-10-17", "Statement": statements})))
}

/// The initializer's rights on this file system (held only while it runs).
pub fn init_efs_policy(env: &Env) -> anyhow::Result<String> {
    Ok(json!({"Version": "2012-10-17", "Statement": [efs_rights(env)?]}).to_string())
}

pub fn no_inline_policy(_ctx: &Ctx, _env: &Env) -> anyhow::Result<Option<serde_json::Value>> {
    Ok(None)
}

pub const LAMBDA_VPC_ACCESS: &str = "service-role/AWSLambdaVPCAccessExecutionRole";
/// What AWS Backup needs to back up the stack's file system into its vault and restore it to a
/// new one: the EFS, vault and KMS statements of AWS's managed AWSBackupServiceRolePolicyForBackup
/// and AWSBackupServiceRolePolicyForRestores (whole, they reach every EC2, RDS and file system in
/// the account), scoped to this file system and vault. A restore makes a file system whose id is
/// not known before: restoring, tagging and (for a failed restore) deleting one is allowed on
/// the account's file systems, creating one takes `*` (IAM's resource for CreateFileSystem).
pub fn backup_policy(ctx: &Ctx, env: &Env) -> anyhow::Result<Option<serde_json::Value>> {
    let (partition, region, account) = (ctx.partition(), ctx.region(), ctx.account_id());
    let file_systems = format!("arn:{partition}:elasticfilesystem:{region}:{account}:file-system/*");
    Ok(Some(json!({
        "Version": "2012-10-17",
        "Statement": [
            {"Sid": "BackUpTheStacksFileSystem", "Effect": "Allow", "Action": ["elasticfilesystem:Backup", "elasticfilesystem:DescribeTags"], "Resource": arn_of(env, keys::FILE_SYSTEM)?},
            {"Sid": "RestoreToANewFileSystem", "Effect": "Allow", "Action": ["elasticfilesystem:Restore", "elasticfilesystem:DescribeFileSystems", "elasticfilesystem:DeleteFileSystem", "elasticfilesystem:TagResource"], "Resource": file_systems},
            {"Sid": "CreateTheRestoredFileSystem", "Effect": "Allow", "Action": "elasticfilesystem:CreateFileSystem", "Resource": "*"},
            {"Sid": "TheStacksVault", "Effect": "Allow", "Action": ["backup:DescribeBackupVault", "backup:CopyIntoBackupVault"], "Resource": arn_of(env, keys::BACKUP_VAULT)?},
            {"Sid": "TagItsRecoveryPoints", "Effect": "Allow", "Action": "backup:TagResource", "Resource": format!("arn:{partition}:backup:{region}:{account}:recovery-point:*")},
            {"Sid": "FindTaggedResources", "Effect": "Allow", "Action": "tag:GetResources", "Resource": "*"},
            {"Sid": "DescribeKeys", "Effect": "Allow", "Action": "kms:DescribeKey", "Resource": "*"},
            {"Sid": "GrantsForAwsResources", "Effect": "Allow", "Action": "kms:CreateGrant", "Resource": "*", "Condition": {"Bool": {"kms:GrantIsForAWSResource": "true"}}},
            {"Sid": "KeysThroughEfsOnly", "Effect": "Allow", "Action": ["kms:Decrypt", "kms:Encrypt", "kms:GenerateDataKey", "kms:ReEncryptTo", "kms:ReEncryptFrom", "kms:GenerateDataKeyWithoutPlaintext"], "Resource": "*", "Condition": {"StringLike": {"kms:ViaService": format!("elasticfilesystem.{region}.amazonaws.com")}}},
        ]
    })))
}

/// A role's inline policy, computed from the records of what it uses (`None`: no inline policy).
pub type PolicyFn = Box<dyn Fn(&Ctx, &Env) -> anyhow::Result<Option<serde_json::Value>> + Send + Sync>;

pub struct RoleStep {
    pub key: &'static str,
    pub service: &'static str,
    pub managed: &'static [&'static str],
    pub policy: PolicyFn,
}

#[async_trait]
impl StepAction<Ctx> for RoleStep {
    fn desired(&self, ctx: &Ctx, env: &Env) -> anyhow::Result<Vec<Desired>> {
        let managed: Vec<String> =
            self.managed.iter().map(|m| format!("arn:{}:iam::aws:policy/{m}", ctx.partition())).collect();
        let policy = (self.policy)(ctx, env)?.map(|p| p.to_string()).unwrap_or_default();
        let wanted =
            attrs([("name", name_for(ctx, env, self.key)?), ("trust", trust(ctx, self.service)), ("policy", policy)]);
        Ok(vec![Desired::new(self.key, Kind::Role, wanted).with("managed", managed).replaced_on(&["name"])])
    }

    async fn apply(&self, ctx: &Ctx, scope: &StepScope) -> anyhow::Result<Summary> {
        let want = scope.wanted_one(ctx, self)?;
        let (name, trust, policy, managed) = (
            want.text("name").to_string(),
            want.text("trust").to_string(),
            want.text("policy").to_string(),
            want.list("managed"),
        );
        let (role, key) = (name.as_str(), self.key);
        let ensured = scope
            .ensure(ctx, &RoleOps, want, |existing, _| async move {
                let iam = &ctx.aws.iam;
                let arn = match existing {
                    Some(existing) => {
                        call(iam.update_assume_role_policy().role_name(role).policy_document(&trust).send(), || {
                            format!("updating who may assume {role}")
                        })
                        .await?;
                        call(iam.tag_role().role_name(role).set_tags(Some(ctx.tags.list(key))).send(), || {
                            format!("tagging {role}")
                        })
                        .await?;
                        existing.id
                    }
                    None => {
                        call(
                            iam.create_role()
                                .role_name(role)
                                .assume_role_policy_document(&trust)
                                .description("gitlab-provision")
                                .set_tags(Some(ctx.tags.list(key)))
                                .send(),
                            || format!("creating role {role}"),
                        )
                        .await?
                        .role
                        .context("CreateRole returned no role")?
                        .arn
                    }
                };
                if policy.is_empty() {
                    if_there(iam.delete_role_policy().role_name(role).policy_name(INLINE_POLICY).send(), || {
                        format!("removing the policy of {role}")
                    })
                    .await?;
                } else {
                    call(
                        iam.put_role_policy()
                            .role_name(role)
                            .policy_name(INLINE_POLICY)
                            .policy_document(&policy)
                            .send(),
                        || format!("writing the policy of {role}"),
                    )
                    .await?;
                }
                // Exactly the managed policies wanted: what an earlier version attached and this
                // one no longer wants (AWS Backup's broad policies, say) is detached.
                let attached = call(iam.list_attached_role_policies().role_name(role).send(), || {
                    format!("listing the policies attached to {role}")
                })
                .await?;
                for old in attached.attached_policies().iter().filter_map(|p| p.policy_arn()) {
                    if !managed.iter().any(|m| m == old) {
                        call(iam.detach_role_policy().role_name(role).policy_arn(old).send(), || {
                            format!("detaching {old} from {role}")
                        })
                        .await?;
                    }
                }
                for policy_arn in &managed {
                    call(iam.attach_role_policy().role_name(role).policy_arn(policy_arn).send(), || {
                        format!("attaching {policy_arn} to {role}")
                    })
                    .await?;
                }
                Ok(Applied::id(arn))
            })
            .await?;
        Ok(ensured.summary(&format!(" ({name})")))
    }
}

async fn get_role(ctx: &Ctx, name: &str) -> Result<Option<aws_sdk_iam::types::Role>, AwsError> {
    Ok(if_there(ctx.aws.iam.get_role().role_name(name).send(), || format!("reading role {name}"))
        .await?
        .and_then(|o| o.role))
}

fn role_owner(ctx: &Ctx, role: &aws_sdk_iam::types::Role) -> Owner {
    ctx.tags.owner_of(role.tags())
}

pub struct RoleOps;

fn name_of(record: &ResourceRecord) -> anyhow::Result<&str> {
    record.attr("name").context("the role record has no name")
}

#[async_trait]
impl ResourceOps<Ctx> for RoleOps {
    fn noun(&self) -> &'static str {
        Kind::Role.noun()
    }

    async fn read(&self, ctx: &Ctx, record: &ResourceRecord) -> anyhow::Result<Live> {
        Ok(match get_role(ctx, name_of(record)?).await? {
            None => Live::Missing,
            Some(role) => {
                let owner = role_owner(ctx, &role);
                Live::present(role.role_name, vec![]).owned_by(owner)
            }
        })
    }

    /// Only a role carrying this stack's tags is found: a foreign one of the same name makes
    /// the create fail instead of being adopted.
    async fn find(&self, ctx: &Ctx, lost: &Lost<'_>) -> anyhow::Result<Option<String>> {
        Ok(get_role(ctx, name_of(lost.record)?).await?.filter(|r| role_owner(ctx, r) == Owner::Ours).map(|r| r.arn))
    }

    /// A role goes only without policies: detach the managed ones, delete the inline ones.
    async fn delete(&self, ctx: &Ctx, record: &ResourceRecord, _scope: &StepScope) -> anyhow::Result<()> {
        let name = name_of(record)?;
        let iam = &ctx.aws.iam;
        let attached = if_there(iam.list_attached_role_policies().role_name(name).send(), || {
            format!("listing policies of {name}")
        })
        .await?;
        for policy in attached.map(|a| a.attached_policies.unwrap_or_default()).unwrap_or_default() {
            if let Some(arn) = policy.policy_arn() {
                if_there(iam.detach_role_policy().role_name(name).policy_arn(arn).send(), || {
                    format!("detaching {arn} from {name}")
                })
                .await?;
            }
        }
        let inline =
            if_there(iam.list_role_policies().role_name(name).send(), || format!("listing inline policies of {name}"))
                .await?;
        for policy in inline.map(|i| i.policy_names).unwrap_or_default() {
            if_there(iam.delete_role_policy().role_name(name).policy_name(&policy).send(), || {
                format!("deleting policy {policy} of {name}")
            })
            .await?;
        }
        if_there(iam.delete_role().role_name(name).send(), || format!("deleting role {name}")).await?;
        Ok(())
    }

    async fn discover(&self, ctx: &Ctx) -> anyhow::Result<Found> {
        let mut found = Found::default();
        for key in ROLE_KEYS {
            let name = role_name(ctx, key);
            if let Some(role) = get_role(ctx, &name).await? {
                match role_owner(ctx, &role) {
                    Owner::Foreign(why) => {
                        found.conflicts.push(Conflict { kind: Kind::Role.to_string(), id: name, why })
                    }
                    _ => found.ours.push(Discovered::new(key, role.arn).with("name", name)),
                }
            }
            // Roles named before names carried the region cannot be told apart between regions.
            let legacy = legacy_role_name(ctx, key);
            if let Some(role) = get_role(ctx, &legacy).await?
                && ctx.tags.key_of(role.tags()).is_some()
                && !role.tags().iter().any(|t| t.key() == crate::aws::tags::REGION_TAG)
            {
                found.conflicts.push(Conflict {
                    kind: Kind::Role.to_string(),
                    id: legacy,
                    why: "a role of this stack made by an earlier version, in an unknown region: not touched".into(),
                });
            }
        }
        Ok(found)
    }
}

// ---------------------------------------------------------------------------------------------
// The initializer's file-system rights: an inline policy on its role while it runs.

pub fn init_role_policy(env: &Env) -> anyhow::Result<Desired> {
    let role = env.attr(keys::INIT_ROLE, "name")?;
    Ok(Desired::new(
        keys::INIT_ROLE_POLICY,
        Kind::RolePolicy,
        attrs([("role", role), ("policy", init_efs_policy(env)?)]),
    ))
}

/// Grants the initializer's file-system rights (recorded, so they are revoked after a crash).
pub async fn grant(ctx: &Ctx, scope: &StepScope, want: Desired) -> anyhow::Result<()> {
    let (role, policy) = (want.text("role").to_string(), want.text("policy").to_string());
    scope
        .ensure(ctx, &RolePolicyOps, want, |_existing, _| async move {
            call(
                ctx.aws
                    .iam
                    .put_role_policy()
                    .role_name(&role)
                    .policy_name(INIT_EFS_POLICY)
                    .policy_document(&policy)
                    .send(),
                || format!("granting {role} its file-system rights"),
            )
            .await?;
            Ok(Applied::id(format!("{role}/{INIT_EFS_POLICY}")))
        })
        .await?;
    Ok(())
}

pub struct RolePolicyOps;

fn role_and_policy(record: &ResourceRecord) -> anyhow::Result<(&str, &str)> {
    record.id()?.split_once('/').context("a role policy record's id is role/policy")
}

#[async_trait]
impl ResourceOps<Ctx> for RolePolicyOps {
    fn noun(&self) -> &'static str {
        Kind::RolePolicy.noun()
    }

    async fn read(&self, ctx: &Ctx, record: &ResourceRecord) -> anyhow::Result<Live> {
        let (role, policy) = role_and_policy(record)?;
        let out = if_there(ctx.aws.iam.get_role_policy().role_name(role).policy_name(policy).send(), || {
            format!("reading policy {policy} of {role}")
        })
        .await?;
        Ok(match out {
            None => Live::Missing,
            Some(_) => Live::present(format!("{policy} on {role}"), vec![]),
        })
    }

    /// An inline policy has no tags: it is the stack's when its role is.
    async fn read_owned(&self, ctx: &Ctx, record: &ResourceRecord) -> anyhow::Result<Live> {
        let live = self.read(ctx, record).await?;
        let (role, _) = role_and_policy(record)?;
        Ok(match get_role(ctx, role).await? {
            Some(r) => live.owned_by(role_owner(ctx, &r)),
            None => Live::Missing,
        })
    }

    async fn find(&self, ctx: &Ctx, lost: &Lost<'_>) -> anyhow::Result<Option<String>> {
        let Some(role) = lost.record.attr("role") else { return Ok(None) };
        let out = if_there(ctx.aws.iam.get_role_policy().role_name(role).policy_name(INIT_EFS_POLICY).send(), || {
            format!("reading the policies of {role}")
        })
        .await?;
        Ok(out.map(|_| format!("{role}/{INIT_EFS_POLICY}")))
    }

    async fn delete(&self, ctx: &Ctx, record: &ResourceRecord, _scope: &StepScope) -> anyhow::Result<()> {
        let (role, policy) = role_and_policy(record)?;
        if_there(ctx.aws.iam.delete_role_policy().role_name(role).policy_name(policy).send(), || {
            format!("revoking policy {policy} of {role}")
        })
        .await?;
        Ok(())
    }
}
