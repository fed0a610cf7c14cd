//! IAM roles, least privilege and scoped to this stack's ARNs: the task execution role, the
//! task role and the initializer's role.

use std::collections::BTreeMap;

use anyhow::Context as _;
use async_trait::async_trait;
use aws_sdk_iam::types::Tag;
use serde_json::json;

use super::Ctx;
use super::network::attrs;
use crate::aws::{AwsError, AwsResultExt, found};
use crate::engine::{Created, Desired, Discovered, Live, ResourceOps, StepAction, StepScope};
use crate::state::ResourceRecord;

pub const ROLE: &str = "iam:role";

pub const KEY_EXECUTION_ROLE: &str = "execution-role";
pub const KEY_TASK_ROLE: &str = "task-role";
pub const KEY_INIT_ROLE: &str = "init-role";

const INLINE_POLICY: &str = "gitlab-provision";

/// `aws`, `aws-cn` or `aws-us-gov`, for ARNs built by hand.
pub fn partition(region: &str) -> &'static str {
    if region.starts_with("cn-") {
        "aws-cn"
    } else if region.starts_with("us-gov-") {
        "aws-us-gov"
    } else {
        "aws"
    }
}

/// What a role may do, computed from the state once its inputs exist.
pub type PolicyFn = fn(&Ctx, &StepScope) -> anyhow::Result<serde_json::Value>;

pub struct RoleStep {
    pub key: &'static str,
    pub service: &'static str,
    pub managed: &'static [&'static str],
    pub policy: PolicyFn,
    /// Records whose ARNs the policy names.
    pub uses: &'static [&'static str],
}

pub fn role_name(stack: &str, key: &str) -> String {
    format!("{stack}-{key}")
}

fn arn_of(scope: &StepScope, key: &str) -> anyhow::Result<String> {
    let record = scope.state.get(key).with_context(|| format!("{key} is not recorded"))?;
    record.attr("arn").map(str::to_string).or(record.id).with_context(|| format!("{key} has no ARN"))
}

/// Pull nothing from ECR (the image is on Docker Hub); write this log group; read this secret.
pub fn execution_policy(_ctx: &Ctx, scope: &StepScope) -> anyhow::Result<serde_json::Value> {
    Ok(json!({
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Action": ["logs:CreateLogStream", "logs:PutLogEvents"], "Resource": format!("{}:*", arn_of(scope, super::logs::KEY_LOG_GROUP)?.trim_end_matches(":*"))},
            {"Effect": "Allow", "Action": "secretsmanager:GetSecretValue", "Resource": arn_of(scope, super::secret::KEY_ROOT_SECRET)?},
        ]
    }))
}

/// Mount and write this file system as root (GitLab chowns its own trees); ECS Exec's channel.
pub fn task_policy(_ctx: &Ctx, scope: &StepScope) -> anyhow::Result<serde_json::Value> {
    Ok(json!({
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Action": ["elasticfilesystem:ClientMount", "elasticfilesystem:ClientWrite", "elasticfilesystem:ClientRootAccess"], "Resource": arn_of(scope, super::storage::KEY_FILE_SYSTEM)?},
            {"Effect": "Allow", "Action": ["ssmmessages:CreateControlChannel", "ssmmessages:CreateDataChannel", "ssmmessages:OpenControlChannel", "ssmmessages:OpenDataChannel"], "Resource": "*"},
        ]
    }))
}

/// Mount this file system through its access point; network interfaces and logs come from
/// AWSLambdaVPCAccessExecutionRole.
pub fn init_policy(_ctx: &Ctx, scope: &StepScope) -> anyhow::Result<serde_json::Value> {
    Ok(json!({
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Action": ["elasticfilesystem:ClientMount", "elasticfilesystem:ClientWrite", "elasticfilesystem:ClientRootAccess"], "Resource": arn_of(scope, super::storage::KEY_FILE_SYSTEM)?},
        ]
    }))
}

pub const LAMBDA_VPC_ACCESS: &str = "service-role/AWSLambdaVPCAccessExecutionRole";

fn trust(service: &str) -> String {
    json!({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Principal": {"Service": service}, "Action": "sts:AssumeRole"}]
    })
    .to_string()
}

#[async_trait]
impl StepAction<Ctx> for RoleStep {
    async fn apply(&self, ctx: &Ctx, scope: &StepScope) -> anyhow::Result<String> {
        let name = role_name(&ctx.tags.stack, self.key);
        let policy = (self.policy)(ctx, scope)?.to_string();
        let partition = partition(&ctx.aws.region);
        let managed: Vec<String> =
            self.managed.iter().map(|m| format!("arn:{partition}:iam::aws:policy/{m}")).collect();
        let desired = Desired {
            key: self.key.into(),
            kind: ROLE.into(),
            depends_on: self.uses.iter().map(|k| k.to_string()).collect(),
            attrs: attrs([
                ("name", name.clone()),
                ("trust", self.service.to_string()),
                ("policy", policy.clone()),
                ("managed", managed.join(",")),
            ]),
        };
        let iam = &ctx.aws.iam;
        let (role, service, policy, managed) = (name.as_str(), self.service, policy.as_str(), &managed);
        let ensured = scope
            .ensure(ctx, &RoleOps, desired, |existing, _token| async move {
                let arn = match existing {
                    Some(found) => {
                        iam.update_assume_role_policy()
                            .role_name(role)
                            .policy_document(trust(service))
                            .send()
                            .await
                            .or_aws(|| format!("updating who may assume {role}"))?;
                        found.id
                    }
                    None => {
                        let tags = ctx.tags.map(self.key, |k, v| Tag::builder().key(k).value(v).build());
                        iam.create_role()
                            .role_name(role)
                            .assume_role_policy_document(trust(service))
                            .description("gitlab-provision")
                            .set_tags(Some(tags.into_iter().collect::<Result<_, _>>().context("IAM tags")?))
                            .send()
                            .await
                            .or_aws(|| format!("creating role {role}"))?
                            .role
                            .context("CreateRole returned no role")?
                            .arn
                    }
                };
                iam.put_role_policy()
                    .role_name(role)
                    .policy_name(INLINE_POLICY)
                    .policy_document(policy)
                    .send()
                    .await
                    .or_aws(|| format!("writing the policy of {role}"))?;
                for policy_arn in managed {
                    iam.attach_role_policy()
                        .role_name(role)
                        .policy_arn(policy_arn)
                        .send()
                        .await
                        .or_aws(|| format!("attaching {policy_arn} to {role}"))?;
                }
                Ok(Created { id: arn, attrs: BTreeMap::new() })
            })
            .await?;
        Ok(format!("{} {name}", ensured.verb()))
    }
}

pub struct RoleOps;

fn name_of(record: &ResourceRecord) -> anyhow::Result<&str> {
    record.attr("name").context("the role record has no name")
}

#[async_trait]
impl ResourceOps<Ctx> for RoleOps {
    fn noun(&self) -> &'static str {
        "role"
    }

    async fn read(&self, ctx: &Ctx, record: &ResourceRecord) -> anyhow::Result<Live> {
        let name = name_of(record)?;
        let out = found(ctx.aws.iam.get_role().role_name(name).send().await.or_aws(|| format!("reading role {name}")))?;
        Ok(match out.and_then(|o| o.role) {
            None => Live::Missing,
            Some(role) => Live::Present { summary: role.role_name, drift: vec![] },
        })
    }

    async fn find(
        &self,
        ctx: &Ctx,
        _key: &str,
        record: &ResourceRecord,
        _token: &str,
    ) -> anyhow::Result<Option<String>> {
        let name = name_of(record)?;
        let out =
            found(ctx.aws.iam.get_role().role_name(name).send().await.or_aws(|| format!("looking for role {name}")))?;
        Ok(out.and_then(|o| o.role).map(|r| r.arn))
    }

    /// A role goes only without policies: detach the managed ones, delete the inline ones.
    async fn delete(&self, ctx: &Ctx, record: &ResourceRecord, _scope: &StepScope) -> anyhow::Result<()> {
        let name = name_of(record)?;
        let iam = &ctx.aws.iam;
        let attached = found(
            iam.list_attached_role_policies()
                .role_name(name)
                .send()
                .await
                .or_aws(|| format!("listing policies of {name}")),
        )?;
        for policy in attached.map(|a| a.attached_policies.unwrap_or_default()).unwrap_or_default() {
            if let Some(arn) = policy.policy_arn() {
                found(
                    iam.detach_role_policy()
                        .role_name(name)
                        .policy_arn(arn)
                        .send()
                        .await
                        .or_aws(|| format!("detaching {arn} from {name}")),
                )?;
            }
        }
        let inline = found(
            iam.list_role_policies()
                .role_name(name)
                .send()
                .await
                .or_aws(|| format!("listing inline policies of {name}")),
        )?;
        for policy in inline.map(|i| i.policy_names).unwrap_or_default() {
            found(
                iam.delete_role_policy()
                    .role_name(name)
                    .policy_name(&policy)
                    .send()
                    .await
                    .or_aws(|| format!("deleting policy {policy} of {name}")),
            )?;
        }
        let deleted: Result<_, AwsError> =
            iam.delete_role().role_name(name).send().await.or_aws(|| format!("deleting role {name}"));
        found(deleted)?;
        Ok(())
    }

    async fn discover(&self, ctx: &Ctx) -> anyhow::Result<Vec<Discovered>> {
        let mut found_roles = Vec::new();
        for key in [KEY_EXECUTION_ROLE, KEY_TASK_ROLE, KEY_INIT_ROLE] {
            let name = role_name(&ctx.tags.stack, key);
            let out = found(
                ctx.aws.iam.get_role().role_name(&name).send().await.or_aws(|| format!("looking for role {name}")),
            )?;
            if let Some(role) = out.and_then(|o| o.role) {
                found_roles.push(Discovered { key: key.into(), id: role.arn, attrs: attrs([("name", name)]) });
            }
        }
        Ok(found_roles)
    }
}
