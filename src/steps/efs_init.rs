//! The EFS initializer: a small Lambda function (lambda-efs-init/handler.py, packaged by this
//! binary) that creates /srv/gitlab/{data,logs,config} before GitLab's first task starts.
//! It runs once; the function is deleted as soon as it has done its job.

use std::io::Write as _;
use std::time::Duration;

use anyhow::Context as _;
use async_trait::async_trait;
use aws_sdk_lambda::primitives::Blob;
use aws_sdk_lambda::types::{Architecture, FileSystemConfig, FunctionCode, Runtime, State, VpcConfig};
use serde_json::json;

use super::Ctx;
use super::iam::KEY_INIT_ROLE;
use super::network::{PRIVATE_SUBNETS, attrs, required_id};
use super::storage::{KEY_FILE_SYSTEM, KEY_INIT_ACCESS_POINT, MOUNT_TARGET_KEYS};
use crate::aws::{AwsError, AwsResultExt, found};
use crate::engine::{
    Created, Desired, Discovered, Live, Poll, ResourceOps, RetryPolicy, StepAction, StepScope, WaitPolicy, retry_while,
    wait_until,
};
use crate::state::{RecordStatus, ResourceRecord};

pub const FUNCTION: &str = "lambda:function";
/// A record with no AWS resource behind it: "this file system has been prepared".
pub const MARKER: &str = "local:marker";

pub const KEY_INIT_SECURITY_GROUP: &str = "init-security-group";
pub const KEY_INIT_FUNCTION: &str = "init-function";
pub const KEY_EFS_PREPARED: &str = "efs-prepared";

const HANDLER_SOURCE: &str = include_str!("../../lambda-efs-init/handler.py");
const MOUNT_PATH: &str = "/mnt/efs";
pub const GITLAB_BASE: &str = "srv/gitlab";
pub const GITLAB_DIRECTORIES: [&str; 3] = ["data", "logs", "config"];

/// A function in a VPC takes up to a minute or two to become active (its network interfaces).
const FUNCTION_WAIT: WaitPolicy = WaitPolicy::up_to(Duration::from_secs(600));
/// Lambda releases a deleted function's VPC interfaces on its own schedule, up to ~20 minutes
/// (and they cannot be detached by hand).
const ENI_RELEASE_WAIT: WaitPolicy = WaitPolicy::up_to(Duration::from_secs(2700));

pub fn function_name(stack: &str) -> String {
    format!("{stack}-efs-init")
}

/// The deployment package: handler.py alone, stored uncompressed (it is 2 KB).
pub fn package() -> anyhow::Result<Vec<u8>> {
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Stored)
        .unix_permissions(0o644);
    zip.start_file("handler.py", options)?;
    zip.write_all(HANDLER_SOURCE.as_bytes())?;
    Ok(zip.finish()?.into_inner())
}

pub struct RunEfsInitializer;

async fn function_state(ctx: &Ctx, name: &str) -> anyhow::Result<Option<(State, String)>> {
    let out = found(
        ctx.aws
            .lambda
            .get_function_configuration()
            .function_name(name)
            .send()
            .await
            .or_aws(|| format!("reading function {name}")),
    )?;
    Ok(out.map(|c| (c.state().cloned().unwrap_or(State::Pending), c.state_reason().unwrap_or_default().to_string())))
}

#[async_trait]
impl StepAction<Ctx> for RunEfsInitializer {
    async fn apply(&self, ctx: &Ctx, scope: &StepScope) -> anyhow::Result<String> {
        let fs_id = required_id(KEY_FILE_SYSTEM, scope)?;
        if let Some(marker) = scope.state.get(KEY_EFS_PREPARED)
            && marker.attr("file_system_id") == Some(fs_id.as_str())
        {
            return Ok(format!("kept: {fs_id} was prepared before"));
        }
        let name = function_name(&ctx.tags.stack);
        let role_arn = required_id(KEY_INIT_ROLE, scope)?;
        let group = required_id(KEY_INIT_SECURITY_GROUP, scope)?;
        let subnets = PRIVATE_SUBNETS.iter().map(|k| required_id(k, scope)).collect::<anyhow::Result<Vec<_>>>()?;
        let access_point_arn = scope
            .state
            .get(KEY_INIT_ACCESS_POINT)
            .and_then(|r| r.attr("arn").map(str::to_string))
            .context("the initializer's access point is not recorded")?;

        let mut depends_on: Vec<String> =
            vec![KEY_INIT_ROLE.into(), KEY_INIT_SECURITY_GROUP.into(), KEY_INIT_ACCESS_POINT.into()];
        depends_on.extend(MOUNT_TARGET_KEYS.iter().map(|k| k.to_string()));
        let desired = Desired {
            key: KEY_INIT_FUNCTION.into(),
            kind: FUNCTION.into(),
            depends_on,
            attrs: attrs([("name", name.clone())]),
        };
        let lambda = &ctx.aws.lambda;
        let zip = package()?;
        let mount = FileSystemConfig::builder().arn(&access_point_arn).local_mount_path(MOUNT_PATH).build()?;
        let (fname, role, group_ref, subnets_ref, mount) =
            (name.as_str(), role_arn.as_str(), group.as_str(), &subnets, &mount);
        let function = scope
            .ensure(ctx, &FunctionOps, desired, |existing, _token| async move {
                if existing.is_none() {
                    // A role minutes old may not be assumable by Lambda yet: "cannot be assumed".
                    retry_while(
                        RetryPolicy::EVENTUAL_CONSISTENCY,
                        |e: &AwsError| e.is_code(&["InvalidParameterValueException"]) && e.message.contains("assume"),
                        || async {
                            lambda
                                .create_function()
                                .function_name(fname)
                                .runtime(Runtime::Python313)
                                .architectures(Architecture::Arm64)
                                .handler("handler.handler")
                                .role(role)
                                .code(FunctionCode::builder().zip_file(Blob::new(zip.clone())).build())
                                .timeout(60)
                                .memory_size(128)
                                .description("gitlab-provision: prepares GitLab's directories on EFS")
                                .vpc_config(
                                    VpcConfig::builder()
                                        .set_subnet_ids(Some(subnets_ref.clone()))
                                        .security_group_ids(group_ref)
                                        .build(),
                                )
                                .file_system_configs(mount.clone())
                                .set_tags(Some(ctx.tags.pairs(KEY_INIT_FUNCTION).into_iter().collect()))
                                .send()
                                .await
                                .or_aws(|| format!("creating function {fname}"))
                        },
                    )
                    .await?;
                }
                wait_until(scope, &format!("function {fname} to become active"), FUNCTION_WAIT, || async {
                    Ok(match function_state(ctx, fname).await? {
                        Some((State::Active, _)) => Poll::Ready(()),
                        Some((State::Failed, reason)) => Poll::Failed(reason),
                        Some((state, _)) => Poll::Pending(state.as_str().to_lowercase()),
                        None => Poll::Pending("not visible yet".into()),
                    })
                })
                .await?;
                Ok(Created { id: fname.to_string(), attrs: Default::default() })
            })
            .await?;

        let event = json!({ "base": GITLAB_BASE, "directories": GITLAB_DIRECTORIES });
        scope.progress(format!("invoking {name} on {fs_id}"));
        let out = lambda
            .invoke()
            .function_name(&name)
            .payload(Blob::new(event.to_string()))
            .send()
            .await
            .or_aws(|| format!("invoking {name}"))?;
        let payload = out.payload().map(|p| String::from_utf8_lossy(p.as_ref()).to_string()).unwrap_or_default();
        if let Some(kind) = out.function_error() {
            let message = serde_json::from_str::<serde_json::Value>(&payload)
                .ok()
                .and_then(|v| v["errorMessage"].as_str().map(str::to_string))
                .unwrap_or(payload.clone());
            anyhow::bail!("the EFS initializer failed ({kind}): {message}");
        }
        let result: serde_json::Value = serde_json::from_str(&payload)
            .with_context(|| format!("the EFS initializer answered {payload:?}, not its JSON result"))?;
        let list = |field: &str| -> Vec<String> {
            result[field]
                .as_array()
                .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect())
                .unwrap_or_default()
        };
        let (created, existing) = (list("created"), list("existing"));
        let expected: Vec<String> = GITLAB_DIRECTORIES.iter().map(|d| format!("{GITLAB_BASE}/{d}")).collect();
        let missing: Vec<&String> = expected.iter().filter(|d| !created.contains(d) && !existing.contains(d)).collect();
        anyhow::ensure!(missing.is_empty(), "the EFS initializer did not report {missing:?}; it answered {payload}");

        scope.state.put(
            KEY_EFS_PREPARED,
            ResourceRecord {
                kind: MARKER.into(),
                step: scope.step.clone(),
                status: RecordStatus::Created,
                id: Some(fs_id.clone()),
                depends_on: vec![KEY_FILE_SYSTEM.into()],
                attrs: attrs([
                    ("file_system_id", fs_id.clone()),
                    ("created", created.join(",")),
                    ("existing", existing.join(",")),
                ]),
                generation: 0,
                updated_at: String::new(),
            },
        )?;
        // Its job is done: delete it now, so its network interfaces start draining long before `down`.
        FunctionOps.delete(ctx, function.record(), scope).await?;
        scope.state.remove(KEY_INIT_FUNCTION)?;
        Ok(format!(
            "prepared {fs_id}: created [{}], existing [{}]; function deleted",
            created.join(", "),
            existing.join(", ")
        ))
    }
}

pub struct FunctionOps;

#[async_trait]
impl ResourceOps<Ctx> for FunctionOps {
    fn noun(&self) -> &'static str {
        "function"
    }

    async fn read(&self, ctx: &Ctx, record: &ResourceRecord) -> anyhow::Result<Live> {
        let name = record.id()?;
        Ok(match function_state(ctx, name).await? {
            None => Live::Missing,
            Some((state, _)) => Live::Present { summary: state.as_str().to_lowercase(), drift: vec![] },
        })
    }

    async fn find(
        &self,
        ctx: &Ctx,
        _key: &str,
        record: &ResourceRecord,
        _token: &str,
    ) -> anyhow::Result<Option<String>> {
        let Some(name) = record.attr("name") else { return Ok(None) };
        Ok(function_state(ctx, name).await?.map(|_| name.to_string()))
    }

    async fn delete(&self, ctx: &Ctx, record: &ResourceRecord, _scope: &StepScope) -> anyhow::Result<()> {
        let name = record.id()?;
        found(
            ctx.aws
                .lambda
                .delete_function()
                .function_name(name)
                .send()
                .await
                .or_aws(|| format!("deleting function {name}")),
        )?;
        Ok(())
    }

    async fn discover(&self, ctx: &Ctx) -> anyhow::Result<Vec<Discovered>> {
        let name = function_name(&ctx.tags.stack);
        Ok(function_state(ctx, &name)
            .await?
            .map(|_| Discovered { key: KEY_INIT_FUNCTION.into(), id: name, attrs: Default::default() })
            .into_iter()
            .collect())
    }
}

/// The marker has nothing in AWS: it is "present" as long as it is recorded.
pub struct MarkerOps;

#[async_trait]
impl ResourceOps<Ctx> for MarkerOps {
    fn noun(&self) -> &'static str {
        "marker"
    }

    async fn read(&self, _ctx: &Ctx, record: &ResourceRecord) -> anyhow::Result<Live> {
        Ok(Live::Present {
            summary: format!("created [{}]", record.attr("created").unwrap_or_default()),
            drift: vec![],
        })
    }

    async fn find(
        &self,
        _ctx: &Ctx,
        _key: &str,
        _record: &ResourceRecord,
        _token: &str,
    ) -> anyhow::Result<Option<String>> {
        Ok(None)
    }

    async fn delete(&self, _ctx: &Ctx, _record: &ResourceRecord, _scope: &StepScope) -> anyhow::Result<()> {
        Ok(())
    }
}

/// Before a security group can go, the Lambda interfaces still using it must: they are released
/// by Lambda some minutes after the function is deleted, then deleted here. Other interfaces are
/// left alone (the group's deletion then reports them).
pub async fn release_lambda_interfaces(ctx: &Ctx, group_id: &str, scope: &StepScope) -> anyhow::Result<()> {
    use aws_sdk_ec2::types::{Filter, NetworkInterfaceStatus};
    let list = || async {
        let out = ctx
            .aws
            .ec2
            .describe_network_interfaces()
            .filters(Filter::builder().name("group-id").values(group_id).build())
            .send()
            .await
            .or_aws(|| format!("listing network interfaces using {group_id}"))?;
        Ok::<_, AwsError>(
            out.network_interfaces
                .unwrap_or_default()
                .into_iter()
                .filter(|n| {
                    n.interface_type().map(|t| t.as_str()) == Some("lambda")
                        || n.description().is_some_and(|d| d.starts_with("AWS Lambda VPC ENI"))
                })
                .collect::<Vec<_>>(),
        )
    };
    let interfaces = list().await?;
    if interfaces.is_empty() {
        return Ok(());
    }
    scope.progress(format!(
        "{} Lambda network interface(s) still use {group_id}; Lambda releases them some minutes after the function is deleted",
        interfaces.len()
    ));
    wait_until(scope, &format!("Lambda to release its network interfaces in {group_id}"), ENI_RELEASE_WAIT, || async {
        let interfaces = list().await?;
        let mut in_use = 0;
        for eni in &interfaces {
            let Some(id) = eni.network_interface_id() else { continue };
            if eni.status() == Some(&NetworkInterfaceStatus::Available) {
                found(
                    ctx.aws
                        .ec2
                        .delete_network_interface()
                        .network_interface_id(id)
                        .send()
                        .await
                        .or_aws(|| format!("deleting network interface {id}")),
                )?;
            } else {
                in_use += 1;
            }
        }
        Ok(if in_use == 0 { Poll::Ready(()) } else { Poll::Pending(format!("{in_use} still in use")) })
    })
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_package_holds_the_handler() {
        let bytes = package().unwrap();
        let mut archive = zip::ZipArchive::new(std::io::Cursor::new(bytes)).unwrap();
        let mut file = archive.by_name("handler.py").unwrap();
        let mut text = String::new();
        std::io::Read::read_to_string(&mut file, &mut text).unwrap();
        assert!(text.contains("def handler(event, _context)"));
    }
}
