//! The EFS initializer: a Lambda function in the private subnets that prepares GitLab's
//! directories on the file system (and moves a restored file system's data into place). It and
//! what only it needs (its root access point, its file-system rights) exist only while it runs:
//! each is recorded before it is created and removed right after, so a crash leaves nothing
//! unrecorded and a finished run leaves nothing behind but the "prepared" marker.

use anyhow::Context as _;
use async_trait::async_trait;
use aws_sdk_lambda::primitives::Blob;
use aws_sdk_lambda::types::{Architecture, FileSystemConfig, FunctionCode, Runtime, VpcConfig};
use serde_json::json;

use super::{iam, storage};
use crate::aws::{AwsError, Ctx, call, propagated};
use crate::engine::{Applied, Desired, Env, Live, Lost, ResourceOps, StepAction, StepScope, Summary, attrs};
use crate::keys::{self, Kind, names};
use crate::state::ResourceRecord;

const HANDLER_SOURCE: &str = include_str!("../../lambda-efs-init/handler.py");
const MOUNT_PATH: &str = "/mnt/efs";
pub const GITLAB_BASE: &str = "srv/gitlab";
pub const GITLAB_DIRECTORIES: [&str; 3] = ["data", "logs", "config"];

/// The deployment package: handler.py alone.
pub fn package() -> anyhow::Result<Vec<u8>> {
    super::lambda::package(HANDLER_SOURCE)
}

pub struct RunEfsInitializer;

/// What the initializer reported.
struct Prepared {
    created: Vec<String>,
    existing: Vec<String>,
    restored_from: Option<String>,
}

#[async_trait]
impl StepAction<Ctx> for RunEfsInitializer {
    fn desired(&self, _ctx: &Ctx, env: &Env) -> anyhow::Result<Vec<Desired>> {
        let marker = attrs([("file_system_id", env.id(keys::FILE_SYSTEM)?)]);
        Ok(vec![Desired::new(keys::EFS_PREPARED, Kind::Marker, marker).replaced_on(&["file_system_id"])])
    }

    async fn apply(&self, ctx: &Ctx, scope: &StepScope) -> anyhow::Result<Summary> {
        let want = scope.wanted_one(ctx, self)?;
        let fs_id = want.text("file_system_id").to_string();
        let ensured = scope
            .ensure(ctx, &MarkerOps, want, |_existing, _| async {
                let prepared = self.run(ctx, scope, &fs_id).await?;
                let mut applied = Applied::id(fs_id.clone())
                    .with_value("created", &prepared.created)
                    .with_value("existing", &prepared.existing);
                if let Some(from) = prepared.restored_from {
                    applied = applied.with("restored_from", from);
                }
                Ok(applied)
            })
            .await?;
        if !ensured.changed() {
            return Ok(Summary::new(format!("kept: {fs_id} was prepared before"), false));
        }
        let record = &ensured.record;
        Ok(Summary::new(
            format!(
                "prepared {fs_id}: created [{}], existing [{}]{}; initializer removed",
                record.attr("created").unwrap_or_default().replace(',', ", "),
                record.attr("existing").unwrap_or_default().replace(',', ", "),
                record.attr("restored_from").map(|d| format!(", restored data moved from {d}")).unwrap_or_default()
            ),
            true,
        ))
    }
}

impl RunEfsInitializer {
    /// Creates the initializer and what it needs, runs it, removes them again.
    async fn run(&self, ctx: &Ctx, scope: &StepScope, fs_id: &str) -> anyhow::Result<Prepared> {
        let access_point = storage::ensure_init_access_point(ctx, scope, fs_id).await?;
        iam::grant(ctx, scope, scope.want(iam::init_role_policy)?).await?;
        let name = names::init_function(&ctx.tags.stack);
        self.ensure_function(ctx, scope, &name, &access_point).await?;
        let prepared = invoke(ctx, scope, &name, fs_id).await?;
        // Its job is done: delete it now, so its network interfaces start draining long before
        // `down`; then what only it needed.
        for (key, ops) in [
            (keys::INIT_FUNCTION, &super::lambda::FunctionOps as &dyn ResourceOps<Ctx>),
            (keys::INIT_ACCESS_POINT, &storage::AccessPointOps),
            (keys::INIT_ROLE_POLICY, &iam::RolePolicyOps),
        ] {
            if let Some(record) = scope.state.get(key) {
                ops.delete(ctx, &record, scope).await?;
                scope.state.remove(key).await?;
            }
        }
        Ok(prepared)
    }

    async fn ensure_function(
        &self,
        ctx: &Ctx,
        scope: &StepScope,
        name: &str,
        access_point: &str,
    ) -> anyhow::Result<()> {
        let role = scope.id_of(keys::INIT_ROLE)?;
        let group = scope.id_of(keys::INIT_SECURITY_GROUP)?;
        let subnets = keys::PRIVATE_SUBNETS.iter().map(|k| scope.id_of(k)).collect::<anyhow::Result<Vec<_>>>()?;
        let zip = package()?;
        let mount = FileSystemConfig::builder().arn(access_point).local_mount_path(MOUNT_PATH).build()?;
        let want = Desired::new(keys::INIT_FUNCTION, Kind::Function, attrs([("name", name.to_string())]));
        let (role, group, subnets, zip, mount) = (role.as_str(), group.as_str(), &subnets, &zip, &mount);
        scope
            .ensure(ctx, &super::lambda::FunctionOps, want, |existing, _| async move {
                if existing.is_none() {
                    // Right after its role or the role's policies are created, Lambda's
                    // pre-flight check may not see them yet.
                    let not_yet_visible = |e: &AwsError| {
                        e.is_code(&["InvalidParameterValueException"])
                            && (e.message.contains("cannot be assumed")
                                || e.message.contains("does not have permissions"))
                    };
                    propagated(not_yet_visible, || async {
                        call(
                            ctx.aws
                                .lambda
                                .create_function()
                                .function_name(name)
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
                                        .set_subnet_ids(Some(subnets.clone()))
                                        .security_group_ids(group)
                                        .build(),
                                )
                                .file_system_configs(mount.clone())
                                .set_tags(Some(ctx.tags.map(keys::INIT_FUNCTION)))
                                .send(),
                            || format!("creating function {name}"),
                        )
                        .await
                    })
                    .await?;
                }
                super::lambda::wait_active(ctx, scope, name).await?;
                Ok(Applied::id(name))
            })
            .await?;
        Ok(())
    }
}

/// Runs the initializer on the file system and checks what it reports.
async fn invoke(ctx: &Ctx, scope: &StepScope, name: &str, fs_id: &str) -> anyhow::Result<Prepared> {
    let event = json!({ "base": GITLAB_BASE, "directories": GITLAB_DIRECTORIES });
    scope.progress(format!("invoking {name} on {fs_id}"));
    // The file-system rights granted a moment ago may not have reached EFS yet.
    let mount_not_ready = |e: &AwsError| e.code().starts_with("EFSMount") || e.code() == "EFSIOException";
    let out = propagated(mount_not_ready, || async {
        call(ctx.aws.lambda.invoke().function_name(name).payload(Blob::new(event.to_string())).send(), || {
            format!("invoking {name}")
        })
        .await
    })
    .await?;
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
    Ok(Prepared { created, existing, restored_from: result["restored_from"].as_str().map(str::to_string) })
}

/// The marker has nothing in AWS: it is present, and the stack's, as long as it is recorded.
pub struct MarkerOps;

#[async_trait]
impl ResourceOps<Ctx> for MarkerOps {
    fn noun(&self) -> &'static str {
        Kind::Marker.noun()
    }

    async fn read(&self, _ctx: &Ctx, record: &ResourceRecord) -> anyhow::Result<Live> {
        Ok(Live::present(format!("created [{}]", record.attr("created").unwrap_or_default()), vec![])
            .owned_by(crate::engine::Owner::Ours))
    }

    async fn find(&self, _ctx: &Ctx, _lost: &Lost<'_>) -> anyhow::Result<Option<String>> {
        Ok(None)
    }

    async fn delete(&self, _ctx: &Ctx, _record: &ResourceRecord, _scope: &StepScope) -> anyhow::Result<()> {
        Ok(())
    }
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
