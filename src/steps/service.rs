//! ECS: the cluster, GitLab's Fargate task definition and the service that runs it; what
//! `status` and `up --wait` read of a running GitLab; stopping and starting it for backups.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use async_trait::async_trait;
use aws_sdk_ecs::types::{
    AssignPublicIp, AwsVpcConfiguration, CapacityProviderStrategyItem, Cluster, ClusterConfiguration, ClusterField,
    ClusterSetting, ClusterSettingName, Compatibility, ContainerDefinition, CpuArchitecture, DeploymentCircuitBreaker,
    DeploymentConfiguration, DesiredStatus, EfsAuthorizationConfig, EfsAuthorizationConfigIam, EfsTransitEncryption,
    EfsVolumeConfiguration, ExecuteCommandConfiguration, ExecuteCommandLogConfiguration, ExecuteCommandLogging,
    KeyValuePair, LaunchType, LinuxParameters, LoadBalancer, LogConfiguration, LogDriver, MountPoint,
    NetworkConfiguration, NetworkMode, OsFamily, PortMapping, PropagateTags, RepositoryCredentials, RuntimePlatform,
    Secret, Service, ServiceField, Task, TaskDefinitionField, TaskDefinitionStatus, TransportProtocol, Volume,
};

use super::load_balancer::{TargetState, target_health};
use crate::aws::{AwsError, AwsResultExt, Ctx, Holders, call, delete_when_free, if_there, propagated};
use crate::config::StackConfig;
use crate::engine::counted;
use crate::engine::{
    Applied, Conflict, Desired, Discovered, Env, Found, Live, Lost, Owner, Poll, ResourceOps, StepAction, StepScope,
    Summary, WaitPolicy, attrs, wait_until,
};
use crate::keys::{self, Kind, names};
use crate::state::ResourceRecord;

pub const SERVICE_NAME: &str = "gitlab";
pub const CONTAINER: &str = "gitlab";
/// GitLab's first boot (reconfigure, PostgreSQL initdb and schema load, all on EFS) takes well
/// over the 5-6 minutes it takes on local disk; no timing for Fargate with EFS is published.
/// ECS ignores the load balancer's verdict for this long after a task starts: 30 minutes, three
/// times the old 10, so a slow first boot is never killed mid-migration. A task that exits is
/// replaced at once whatever this says; `up --wait` reports such stops as they happen.
pub const HEALTH_CHECK_GRACE_SECONDS: i32 = 1800;
/// GitLab gets up to two minutes to stop cleanly (Fargate's maximum).
const STOP_TIMEOUT_SECONDS: i32 = 120;
/// Draining a service: deregistration (30 s), GitLab's stop (120 s), deprovisioning.
const DRAIN_WAIT: WaitPolicy = WaitPolicy::up_to(Duration::from_secs(900));
/// `up --wait`: image pull, first boot on EFS, health checks; generous, but a failed rollout or
/// a task that keeps stopping ends it early.
/// Polled every 3 s at most: a woken GitLab is seen healthy within seconds, for a few calls.
pub const BOOT_WAIT: WaitPolicy = WaitPolicy::up_to(Duration::from_secs(2700)).polling_at_most(Duration::from_secs(3));
/// How many tasks may stop during a wait before it gives up (the circuit breaker's minimum).
const STOPS_BEFORE_GIVING_UP: usize = 3;

/// Where GitLab keeps what on the file system, and where it expects it. `/etc/gitlab` holds
/// gitlab.rb, the secrets and the SSH host keys the image generates on its first boot.
const VOLUMES: [(&str, &str, &str); 3] = [
    ("gitlab-data", "data", "/var/opt/gitlab"),
    ("gitlab-logs", "logs", "/var/log/gitlab"),
    ("gitlab-config", "config", "/etc/gitlab"),
];

pub fn family(stack: &str) -> String {
    format!("{stack}-gitlab")
}

fn ecs_owner(ctx: &Ctx, tags: &[aws_sdk_ecs::types::Tag]) -> Owner {
    ctx.tags.owner_of(tags)
}

// ---------------------------------------------------------------------------------------------
// Cluster

async fn describe_cluster(ctx: &Ctx, name: &str) -> anyhow::Result<Option<Cluster>> {
    let out = call(
        ctx.aws
            .ecs
            .describe_clusters()
            .clusters(name)
            .include(ClusterField::Settings)
            .include(ClusterField::Tags)
            .send(),
        || format!("reading cluster {name}"),
    )
    .await?;
    Ok(out.clusters.unwrap_or_default().into_iter().find(|c| c.status() == Some("ACTIVE")))
}

pub struct ClusterStep {
    /// ECS Exec sessions logged to the stack's exec log group (the cluster's logging override).
    pub exec_logged: bool,
    /// Fargate Spot among the cluster's capacity providers.
    pub spot: bool,
}

/// The providers a cluster offers its services: Fargate, and Fargate Spot when asked for.
const SPOT_PROVIDERS: [&str; 2] = ["FARGATE", "FARGATE_SPOT"];

impl ClusterStep {
    /// ECS Exec's logging: every session to the exec log group, or none when exec is off.
    fn exec_configuration(group: Option<&str>) -> ClusterConfiguration {
        let exec = match group {
            Some(group) => ExecuteCommandConfiguration::builder()
                .logging(ExecuteCommandLogging::Override)
                .log_configuration(
                    ExecuteCommandLogConfiguration::builder()
                        .cloud_watch_log_group_name(group)
                        .cloud_watch_encryption_enabled(false)
                        .build(),
                )
                .build(),
            None => ExecuteCommandConfiguration::builder().logging(ExecuteCommandLogging::None).build(),
        };
        ClusterConfiguration::builder().execute_command_configuration(exec).build()
    }
}

#[async_trait]
impl StepAction<Ctx> for ClusterStep {
    fn desired(&self, ctx: &Ctx, env: &Env) -> anyhow::Result<Vec<Desired>> {
        let exec = if self.exec_logged { env.id(keys::EXEC_LOG_GROUP)? } else { "none".to_string() };
        let wanted = attrs([
            ("name", names::cluster(&ctx.tags.stack)),
            ("container_insights", "enabled".into()),
            ("exec_logging", exec),
            ("capacity_providers", if self.spot { SPOT_PROVIDERS.join(",") } else { "default".into() }),
        ]);
        let desired = Desired::new(keys::CLUSTER, Kind::Cluster, wanted).replaced_on(&["name"]);
        Ok(vec![desired.assuming(&[("capacity_providers", "default")])])
    }

    async fn apply(&self, ctx: &Ctx, scope: &StepScope) -> anyhow::Result<Summary> {
        let want = scope.wanted_one(ctx, self)?;
        let name = want.text("name").to_string();
        let group = self.exec_logged.then(|| want.text("exec_logging").to_string());
        let configuration = Self::exec_configuration(group.as_deref());
        let (name_ref, configuration, spot) = (name.as_str(), &configuration, self.spot);
        let ensured = scope
            .ensure(ctx, &ClusterOps, want, |existing, _| async move {
                let ecs = &ctx.aws.ecs;
                let insights =
                    ClusterSetting::builder().name(ClusterSettingName::ContainerInsights).value("enabled").build();
                let arn = match existing {
                    Some(existing) => {
                        let on = describe_cluster(ctx, &existing.id).await?.is_some_and(|c| {
                            c.settings().iter().any(|s| {
                                s.name() == Some(&ClusterSettingName::ContainerInsights) && s.value() == Some("enabled")
                            })
                        });
                        if !on {
                            call(ecs.update_cluster_settings().cluster(&existing.id).settings(insights).send(), || {
                                format!("turning on Container Insights for {name_ref}")
                            })
                            .await?;
                        }
                        call(
                            ecs.update_cluster().cluster(&existing.id).configuration(configuration.clone()).send(),
                            || format!("setting ECS Exec's logging on {name_ref}"),
                        )
                        .await?;
                        existing.id
                    }
                    None => call(
                        ecs.create_cluster()
                            .cluster_name(name_ref)
                            .settings(insights)
                            .configuration(configuration.clone())
                            .set_tags(Some(ctx.tags.list(keys::CLUSTER)))
                            .send(),
                        || format!("creating cluster {name_ref}"),
                    )
                    .await?
                    .cluster
                    .and_then(|c| c.cluster_arn)
                    .context("CreateCluster returned no ARN")?,
                };
                // Fargate Spot is a provider the cluster must offer before a service asks for it;
                // once offered, it stays (a service may still use it while the stack moves off).
                if spot {
                    call(
                        ecs.put_cluster_capacity_providers()
                            .cluster(&arn)
                            .set_capacity_providers(Some(SPOT_PROVIDERS.iter().map(|p| p.to_string()).collect()))
                            .set_default_capacity_provider_strategy(Some(vec![]))
                            .send(),
                        || format!("offering Fargate Spot in {name_ref}"),
                    )
                    .await?;
                }
                Ok(Applied::id(arn))
            })
            .await?;
        let exec = if self.exec_logged { ", ECS Exec sessions logged" } else { "" };
        Ok(Summary::new(format!("{} {name} (Container Insights on{exec})", ensured.verb()), ensured.changed()))
    }
}

pub struct ClusterOps;

#[async_trait]
impl ResourceOps<Ctx> for ClusterOps {
    fn noun(&self) -> &'static str {
        Kind::Cluster.noun()
    }

    async fn read(&self, ctx: &Ctx, record: &ResourceRecord) -> anyhow::Result<Live> {
        Ok(match describe_cluster(ctx, record.id()?).await? {
            None => Live::Missing,
            Some(c) => Live::present(
                format!(
                    "{}, {}",
                    counted(c.active_services_count(), "service"),
                    counted(c.running_tasks_count(), "running task")
                ),
                vec![],
            )
            .owned_by(ecs_owner(ctx, c.tags())),
        })
    }

    async fn find(&self, ctx: &Ctx, _lost: &Lost<'_>) -> anyhow::Result<Option<String>> {
        let cluster = describe_cluster(ctx, &names::cluster(&ctx.tags.stack)).await?;
        Ok(cluster.filter(|c| ecs_owner(ctx, c.tags()) == Owner::Ours).and_then(|c| c.cluster_arn))
    }

    /// A cluster goes once its tasks have stopped: a deleted service's task is still stopping
    /// (GitLab gets two minutes) and "ClusterContainsTasksException" until it has.
    async fn delete(&self, ctx: &Ctx, record: &ResourceRecord, scope: &StepScope) -> anyhow::Result<()> {
        let arn = record.id()?;
        delete_when_free(
            scope,
            &format!("cluster {arn}"),
            &["ClusterContainsTasksException", "ClusterContainsServicesException", "UpdateInProgressException"],
            || async {
                call(ctx.aws.ecs.delete_cluster().cluster(arn).send(), || format!("deleting cluster {arn}")).await
            },
            || async {
                let stopping =
                    tasks(ctx, arn, None).await?.into_iter().filter(|t| t.last_status() != Some("STOPPED")).count();
                Ok(if stopping == 0 {
                    Holders::Unknown
                } else {
                    Holders::Draining(format!("{} to stop", counted(stopping, "task")))
                })
            },
        )
        .await
    }

    async fn discover(&self, ctx: &Ctx) -> anyhow::Result<Found> {
        let name = names::cluster(&ctx.tags.stack);
        let Some(cluster) = describe_cluster(ctx, &name).await? else { return Ok(Found::default()) };
        let Some(arn) = cluster.cluster_arn.clone() else { return Ok(Found::default()) };
        Ok(match ecs_owner(ctx, cluster.tags()) {
            Owner::Foreign(why) => {
                Found { ours: vec![], conflicts: vec![Conflict { kind: Kind::Cluster.to_string(), id: name, why }] }
            }
            _ => vec![Discovered::new(keys::CLUSTER, arn).with("name", name)].into(),
        })
    }
}

/// Every task of the cluster (of the GitLab service when `service` is given), running or stopped.
pub async fn tasks(ctx: &Ctx, cluster: &str, service: Option<&str>) -> anyhow::Result<Vec<Task>> {
    let mut arns = Vec::new();
    for status in [DesiredStatus::Running, DesiredStatus::Stopped] {
        let out = if_there(
            ctx.aws
                .ecs
                .list_tasks()
                .cluster(cluster)
                .set_service_name(service.map(str::to_string))
                .desired_status(status)
                .send(),
            || format!("listing the tasks of {cluster}"),
        )
        .await?;
        arns.extend(out.map(|o| o.task_arns.unwrap_or_default()).unwrap_or_default());
    }
    if arns.is_empty() {
        return Ok(Vec::new());
    }
    let mut found = Vec::new();
    for chunk in arns.chunks(100) {
        let out = call(ctx.aws.ecs.describe_tasks().cluster(cluster).set_tasks(Some(chunk.to_vec())).send(), || {
            format!("reading the tasks of {cluster}")
        })
        .await?;
        found.extend(out.tasks.unwrap_or_default());
    }
    Ok(found)
}

// ---------------------------------------------------------------------------------------------
// Task definition

/// Where GitLab keeps its objects with `object_storage = true`: the region and each object
/// type's bucket.
pub struct ObjectStore {
    pub region: String,
    pub buckets: Vec<(&'static str, String)>,
}

impl ObjectStore {
    /// GitLab's consolidated form (GitLab's "Object storage" guide, "Full example using the
    /// consolidated form and Amazon S3"): one connection for every type, credentials from the
    /// task role (`use_iam_profile`: no access key exists), a bucket per type; downloads go
    /// straight from S3 to the client by presigned URL (`proxy_download = false`, GitLab's
    /// default), so large artifacts do not pass through the task. Merge request diffs go to
    /// their bucket too (`external_diffs_enabled`; else they stay in the database).
    ///
    /// The task role's credentials reach a process through the variable ECS sets,
    /// `AWS_CONTAINER_CREDENTIALS_RELATIVE_URI` (fog-aws and Workhorse's AWS SDK both read it),
    /// but the image starts GitLab's services under runit with an emptied environment
    /// (`runsvdir-start`: `env - PATH=$PATH`), and Fargate has no instance metadata to fall back
    /// on: the variable is handed to Rails, Sidekiq and Workhorse through their `env`, which
    /// `gitlab-ctl reconfigure` writes from the container's environment at every start.
    fn lines(&self) -> Vec<String> {
        let credentials =
            "{ 'AWS_CONTAINER_CREDENTIALS_RELATIVE_URI' => ENV['AWS_CONTAINER_CREDENTIALS_RELATIVE_URI'] }";
        let mut lines = vec![
            format!("gitlab_rails['env'] = {credentials}"),
            format!("gitlab_workhorse['env'] = {credentials}"),
            "gitlab_rails['external_diffs_enabled'] = true".to_string(),
            "gitlab_rails['object_store']['enabled'] = true".to_string(),
            "gitlab_rails['object_store']['proxy_download'] = false".to_string(),
            format!(
                "gitlab_rails['object_store']['connection'] = {{ 'provider' => 'AWS', 'region' => '{}', 'use_iam_profile' => true }}",
                self.region
            ),
        ];
        lines.extend(self.buckets.iter().map(|(object_type, bucket)| {
            format!("gitlab_rails['object_store']['objects']['{object_type}']['bucket'] = '{bucket}'")
        }));
        lines
    }
}

/// The environment variable the task receives the database's password in, from RDS's secret
/// through ECS `secrets` (never in the task definition's environment).
pub const DATABASE_PASSWORD_VARIABLE: &str = "GITLAB_DATABASE_PASSWORD";

/// GitLab's PostgreSQL on RDS (`database = "rds"`): where it is.
pub struct ExternalDatabase {
    pub host: String,
}

impl ExternalDatabase {
    /// GitLab's "Configure GitLab using an external PostgreSQL service" (Linux package docs):
    /// the bundled PostgreSQL off, `gitlab_rails['db_*']` pointing at the instance. The password
    /// is read from the task's environment when `gitlab-ctl reconfigure` evaluates this at every
    /// start, so it is in no task definition; TLS is required (`sslmode = require`: RDS for
    /// PostgreSQL 15 and later also forces it with `rds.force_ssl`). The server's certificate is
    /// not verified: GitLab's image does not carry RDS's CA bundle, and the instance is reached
    /// inside the VPC, through a security group that admits GitLab's tasks only.
    fn lines(&self) -> Vec<String> {
        use super::database::{DB_NAME, DB_PORT, DB_USER};
        vec![
            "postgresql['enable'] = false".to_string(),
            "gitlab_rails['db_adapter'] = 'postgresql'".to_string(),
            "gitlab_rails['db_encoding'] = 'unicode'".to_string(),
            format!("gitlab_rails['db_host'] = '{}'", self.host),
            format!("gitlab_rails['db_port'] = {DB_PORT}"),
            format!("gitlab_rails['db_database'] = '{DB_NAME}'"),
            format!("gitlab_rails['db_username'] = '{DB_USER}'"),
            format!("gitlab_rails['db_password'] = ENV['{DATABASE_PASSWORD_VARIABLE}']"),
            "gitlab_rails['db_sslmode'] = 'require'".to_string(),
        ]
    }
}

/// GitLab's omnibus settings, passed as GITLAB_OMNIBUS_CONFIG.
pub fn omnibus_config(
    external_url: &str,
    vpc_cidr: &str,
    ssh: Option<(&str, u16)>,
    object_store: Option<&ObjectStore>,
    database: Option<&ExternalDatabase>,
) -> String {
    let mut lines = vec![
        format!("external_url '{external_url}'"),
        // Without the VPC in the whitelist /-/readiness answers 404 to the load balancer.
        format!("gitlab_rails['monitoring_whitelist'] = ['127.0.0.0/8', '{vpc_cidr}']"),
        // Client addresses in GitLab's logs come from the load balancer's X-Forwarded-For.
        format!("gitlab_rails['trusted_proxies'] = ['{vpc_cidr}']"),
        format!("nginx['real_ip_trusted_addresses'] = ['{vpc_cidr}']"),
        "nginx['real_ip_header'] = 'X-Forwarded-For'".to_string(),
        "letsencrypt['enable'] = false".to_string(),
    ];
    if external_url.starts_with("https://") {
        // TLS ends at the load balancer: GitLab serves plain HTTP on 80 behind it.
        lines.push("nginx['listen_port'] = 80".into());
        lines.push("nginx['listen_https'] = false".into());
    }
    if let Some((host, port)) = ssh {
        // What GitLab shows in clone URLs; its own sshd keeps listening on 22 in the task.
        lines.push(format!("gitlab_rails['gitlab_ssh_host'] = '{host}'"));
        lines.push(format!("gitlab_rails['gitlab_shell_ssh_port'] = {port}"));
    }
    if let Some(store) = object_store {
        lines.extend(store.lines());
    }
    if let Some(database) = database {
        lines.extend(database.lines());
    }
    lines.join("\n")
}

pub struct TaskDefinitionStep {
    pub config: Arc<StackConfig>,
}

impl TaskDefinitionStep {
    /// The URL users reach GitLab at: the HTTPS name, or the load balancer's own name.
    fn external_url(&self, env: &Env) -> anyhow::Result<String> {
        Ok(match &self.config.domain {
            Some(d) => format!("https://{}", d.fqdn()),
            None => format!("http://{}", env.attr(keys::LOAD_BALANCER, "dns_name")?),
        })
    }

    /// The SSH name and port GitLab shows in clone URLs.
    fn ssh(&self, env: &Env) -> anyhow::Result<Option<(String, u16)>> {
        let Some(port) = self.config.ssh_port else { return Ok(None) };
        let host = match &self.config.domain {
            Some(d) => super::dns::ssh_name(d),
            None => env.attr(keys::SSH_LOAD_BALANCER, "dns_name")?,
        };
        Ok(Some((host, port)))
    }
}

#[async_trait]
impl StepAction<Ctx> for TaskDefinitionStep {
    fn desired(&self, ctx: &Ctx, env: &Env) -> anyhow::Result<Vec<Desired>> {
        let cfg = &self.config;
        let ssh = self.ssh(env)?;
        let object_store = if cfg.object_storage {
            let buckets = keys::OBJECT_BUCKETS
                .iter()
                .map(|(key, object_type)| Ok((*object_type, env.id(key)?)))
                .collect::<anyhow::Result<Vec<_>>>()?;
            Some(ObjectStore { region: ctx.region().to_string(), buckets })
        } else {
            None
        };
        let database = match cfg.database {
            Some(_) => Some(ExternalDatabase { host: env.attr(keys::DB_INSTANCE, "endpoint")? }),
            None => None,
        };
        let omnibus = omnibus_config(
            &self.external_url(env)?,
            &env.attr(keys::VPC, "cidr")?,
            ssh.as_ref().map(|(h, p)| (h.as_str(), *p)),
            object_store.as_ref(),
            database.as_ref(),
        );
        let mut wanted = attrs([
            ("family", family(&ctx.tags.stack)),
            ("image", cfg.image()),
            ("cpu", cfg.task_cpu.to_string()),
            ("memory", cfg.task_memory_mib.to_string()),
            ("omnibus_config", omnibus),
            ("file_system_id", env.id(keys::FILE_SYSTEM)?),
            ("execution_role", env.id(keys::EXECUTION_ROLE)?),
            ("task_role", env.id(keys::TASK_ROLE)?),
            ("secret", env.id(keys::ROOT_SECRET)?),
            ("architecture", cfg.architecture().0.ecs().to_string()),
        ]);
        if let Some(credentials) = &cfg.gitlab_image_credentials {
            wanted.insert("registry_credentials".into(), credentials.clone().into());
        }
        if database.is_some() {
            wanted.insert("database_secret".into(), env.attr(keys::DB_INSTANCE, "secret_arn")?.into());
        }
        // Task definitions registered before the architecture was a setting are x86_64.
        let desired =
            Desired::new(keys::TASK_DEFINITION, Kind::TaskDefinition, wanted).assuming(&[("architecture", "X86_64")]);
        Ok(vec![if ssh.is_some() { desired.with("ports", [80, 22]) } else { desired }])
    }

    async fn apply(&self, ctx: &Ctx, scope: &StepScope) -> anyhow::Result<Summary> {
        let want = scope.wanted_one(ctx, self)?;
        let settings = want.clone();
        let cfg = &self.config;
        let ensured = scope
            // Registering is how a task definition changes: each change is a new revision.
            .ensure(ctx, &TaskDefinitionOps, want, |_existing, _| register(ctx, cfg, settings))
            .await?;
        let (architecture, _) = cfg.architecture();
        Ok(Summary::new(
            format!(
                "{} {} ({}, {} CPU / {} MiB, {})",
                ensured.verb(),
                ensured.id().rsplit('/').next().unwrap_or_default(),
                cfg.gitlab_image_tag,
                cfg.task_cpu,
                cfg.task_memory_mib,
                architecture.ecs().to_lowercase()
            ),
            ensured.changed(),
        ))
    }
}

async fn register(ctx: &Ctx, cfg: &StackConfig, settings: Desired) -> anyhow::Result<Applied> {
    let secret_arn = settings.text("secret");
    let fs_id = settings.text("file_system_id");
    let (execution_role, task_role) = (settings.text("execution_role"), settings.text("task_role"));
    let log_group = super::logs::gitlab_log_group(&ctx.tags.stack);
    let mut container = ContainerDefinition::builder()
        .name(CONTAINER)
        .image(cfg.image())
        .essential(true)
        .port_mappings(PortMapping::builder().container_port(80).protocol(TransportProtocol::Tcp).build())
        .environment(
            KeyValuePair::builder().name("GITLAB_OMNIBUS_CONFIG").value(settings.text("omnibus_config")).build(),
        )
        // Only read on first boot; injected by ECS from the secret, never as plain environment.
        .secrets(Secret::builder().name("GITLAB_ROOT_PASSWORD").value_from(format!("{secret_arn}:password::")).build()?)
        .secrets(Secret::builder().name("GITLAB_ROOT_EMAIL").value_from(format!("{secret_arn}:email::")).build()?)
        .log_configuration(
            LogConfiguration::builder()
                .log_driver(LogDriver::Awslogs)
                .options("awslogs-group", &log_group)
                .options("awslogs-region", ctx.region())
                .options("awslogs-stream-prefix", super::logs::STREAM_PREFIX)
                .build()?,
        )
        // ECS Exec wants an init process; GitLab's runit is happier with one too.
        .linux_parameters(LinuxParameters::builder().init_process_enabled(true).build())
        .stop_timeout(STOP_TIMEOUT_SECONDS);
    // Every port but the web's, which every task definition has.
    for port in settings.list("ports").iter().filter_map(|p| p.parse::<i32>().ok()).filter(|p| *p != 80) {
        container = container
            .port_mappings(PortMapping::builder().container_port(port).protocol(TransportProtocol::Tcp).build());
    }
    if let Some(database_secret) = settings.attrs.get("database_secret").and_then(|v| v.as_str()) {
        container = container.secrets(
            Secret::builder()
                .name(DATABASE_PASSWORD_VARIABLE)
                .value_from(format!("{database_secret}:password::"))
                .build()?,
        );
    }
    if let Some(credentials) = settings.attrs.get("registry_credentials").and_then(|v| v.as_str()) {
        container = container
            .repository_credentials(RepositoryCredentials::builder().credentials_parameter(credentials).build()?);
    }
    let mut volumes = Vec::new();
    for (name, directory, path) in VOLUMES {
        container = container
            .mount_points(MountPoint::builder().source_volume(name).container_path(path).read_only(false).build());
        let efs = EfsVolumeConfiguration::builder()
            .file_system_id(fs_id)
            .root_directory(format!("/{}/{directory}", super::efs_init::GITLAB_BASE))
            .transit_encryption(EfsTransitEncryption::Enabled)
            .authorization_config(EfsAuthorizationConfig::builder().iam(EfsAuthorizationConfigIam::Enabled).build())
            .build()?;
        volumes.push(Volume::builder().name(name).efs_volume_configuration(efs).build());
    }
    let family = settings.text("family");
    let out = call(
        ctx.aws
            .ecs
            .register_task_definition()
            .family(family)
            .network_mode(NetworkMode::Awsvpc)
            .requires_compatibilities(Compatibility::Fargate)
            .cpu(cfg.task_cpu.to_string())
            .memory(cfg.task_memory_mib.to_string())
            .execution_role_arn(execution_role)
            .task_role_arn(task_role)
            .runtime_platform(
                RuntimePlatform::builder()
                    .operating_system_family(OsFamily::Linux)
                    .cpu_architecture(CpuArchitecture::from(settings.text("architecture")))
                    .build(),
            )
            .container_definitions(container.build())
            .set_volumes(Some(volumes))
            .set_tags(Some(ctx.tags.list(keys::TASK_DEFINITION)))
            .send(),
        || format!("registering task definition {family}"),
    )
    .await?;
    let arn =
        out.task_definition.and_then(|t| t.task_definition_arn).context("RegisterTaskDefinition returned no ARN")?;
    Ok(Applied::id(arn))
}

async fn describe_task_definition(
    ctx: &Ctx,
    arn: &str,
) -> anyhow::Result<Option<(aws_sdk_ecs::types::TaskDefinition, Owner)>> {
    let out = call(
        ctx.aws.ecs.describe_task_definition().task_definition(arn).include(TaskDefinitionField::Tags).send(),
        || format!("reading task definition {arn}"),
    )
    .await;
    Ok(match out {
        // ECS answers a plain ClientException for a revision it does not know.
        Err(e) if e.is_code(&["ClientException"]) || e.is_not_found() => None,
        Err(e) => return Err(e.into()),
        Ok(out) => {
            let owner = ecs_owner(ctx, out.tags());
            out.task_definition
                .filter(|td| td.status() != Some(&TaskDefinitionStatus::DeleteInProgress))
                .map(|td| (td, owner))
        }
    })
}

pub struct TaskDefinitionOps;

#[async_trait]
impl ResourceOps<Ctx> for TaskDefinitionOps {
    fn noun(&self) -> &'static str {
        Kind::TaskDefinition.noun()
    }

    async fn read(&self, ctx: &Ctx, record: &ResourceRecord) -> anyhow::Result<Live> {
        Ok(match describe_task_definition(ctx, record.id()?).await? {
            None => Live::Missing,
            Some((td, owner)) => {
                // A deregistered revision still shows (and its family still needs deleting), but
                // no task can start from it.
                let drift = if td.status() == Some(&TaskDefinitionStatus::Inactive) {
                    vec!["deregistered".to_string()]
                } else {
                    vec![]
                };
                let image = td.container_definitions().first().and_then(|c| c.image()).unwrap_or("?");
                Live::present(format!("revision {} ({image})", td.revision()), drift).owned_by(owner)
            }
        })
    }

    async fn find(&self, ctx: &Ctx, _lost: &Lost<'_>) -> anyhow::Result<Option<String>> {
        let out = call(
            ctx.aws
                .ecs
                .list_task_definitions()
                .family_prefix(family(&ctx.tags.stack))
                .sort(aws_sdk_ecs::types::SortOrder::Desc)
                .send(),
            || "listing task definitions".to_string(),
        )
        .await?;
        let Some(latest) = out.task_definition_arns().first() else { return Ok(None) };
        let active = describe_task_definition(ctx, latest)
            .await?
            .filter(|(td, o)| *o == Owner::Ours && td.status() == Some(&TaskDefinitionStatus::Active));
        Ok(active.map(|_| latest.clone()))
    }

    /// Every revision of the family goes, not only the recorded one.
    async fn delete(&self, ctx: &Ctx, record: &ResourceRecord, _scope: &StepScope) -> anyhow::Result<()> {
        let family = record.attr("family").map(str::to_string).unwrap_or_else(|| family(&ctx.tags.stack));
        let ecs = &ctx.aws.ecs;
        // Active revisions are deregistered first; inactive ones (deregistered by an earlier,
        // interrupted run) are only deleted.
        let mut revisions = Vec::new();
        for status in [TaskDefinitionStatus::Active, TaskDefinitionStatus::Inactive] {
            let mut pages =
                ecs.list_task_definitions().family_prefix(&family).status(status.clone()).into_paginator().send();
            while let Some(page) = pages.next().await {
                let page = page.or_aws(|| format!("listing revisions of {family}"))?;
                for arn in page.task_definition_arns().iter().filter(|a| a.contains(&format!("/{family}:"))) {
                    if status == TaskDefinitionStatus::Active {
                        if_there(ecs.deregister_task_definition().task_definition(arn).send(), || {
                            format!("deregistering {arn}")
                        })
                        .await?;
                    }
                    revisions.push(arn.clone());
                }
            }
        }
        // Deregistered revisions linger as INACTIVE until deleted.
        for chunk in revisions.chunks(10) {
            if_there(ecs.delete_task_definitions().set_task_definitions(Some(chunk.to_vec())).send(), || {
                format!("deleting revisions of {family}")
            })
            .await?;
        }
        Ok(())
    }

    async fn discover(&self, ctx: &Ctx) -> anyhow::Result<Found> {
        let family = family(&ctx.tags.stack);
        let out = call(ctx.aws.ecs.list_task_definitions().family_prefix(&family).send(), || {
            format!("listing revisions of {family}")
        })
        .await?;
        let Some(arn) = out.task_definition_arns().iter().find(|a| a.contains(&format!("/{family}:"))) else {
            return Ok(Found::default());
        };
        // One record stands for the whole family: deleting it removes every revision.
        Ok(match describe_task_definition(ctx, arn).await? {
            Some((_, Owner::Foreign(why))) => Found {
                ours: vec![],
                conflicts: vec![Conflict { kind: Kind::TaskDefinition.to_string(), id: family, why }],
            },
            Some(_) => vec![Discovered::new(keys::TASK_DEFINITION, arn.clone()).with("family", family)].into(),
            None => Found::default(),
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Service

pub async fn describe_service(ctx: &Ctx, cluster: &str) -> anyhow::Result<Option<Service>> {
    let out = if_there(
        ctx.aws.ecs.describe_services().cluster(cluster).services(SERVICE_NAME).include(ServiceField::Tags).send(),
        || format!("reading service {SERVICE_NAME}"),
    )
    .await?;
    Ok(out.and_then(|o| o.services).unwrap_or_default().into_iter().find(|s| s.status() == Some("ACTIVE")))
}

/// Never two GitLab tasks on one file system (two PostgreSQL servers on one data directory):
/// a deploy stops the old task before starting the new one, and rolls back if it never gets healthy.
pub fn deployment_configuration() -> DeploymentConfiguration {
    DeploymentConfiguration::builder()
        .minimum_healthy_percent(0)
        .maximum_percent(100)
        .deployment_circuit_breaker(DeploymentCircuitBreaker::builder().enable(true).rollback(true).build())
        .build()
}

pub struct ServiceStep {
    /// Register with the SSH target group too.
    pub ssh: bool,
    /// ECS Exec on its tasks (a task keeps the flag it was started with: a change restarts it).
    pub exec: bool,
    /// In the public subnets with a public address (egress = "public-ip"), else the private ones.
    pub public: bool,
    /// On Fargate Spot.
    pub spot: bool,
    /// Its task count is Application Auto Scaling's (a schedule, the idle sleep) or the user's
    /// (`sleep`): `up` leaves it as it is.
    pub scaled: bool,
}

/// Fargate or Fargate Spot, as a service asks for it.
fn capacity_strategy(spot: bool) -> CapacityProviderStrategyItem {
    let provider = if spot { "FARGATE_SPOT" } else { "FARGATE" };
    CapacityProviderStrategyItem::builder().capacity_provider(provider).weight(1).base(0).build().expect("provider set")
}

#[async_trait]
impl StepAction<Ctx> for ServiceStep {
    fn desired(&self, _ctx: &Ctx, env: &Env) -> anyhow::Result<Vec<Desired>> {
        let tier = if self.public { keys::PUBLIC_SUBNETS } else { keys::PRIVATE_SUBNETS };
        let subnets = tier.iter().map(|k| env.id(k)).collect::<anyhow::Result<Vec<_>>>()?;
        let wanted = attrs([
            ("cluster", env.id(keys::CLUSTER)?),
            ("task_definition", env.id(keys::TASK_DEFINITION)?),
            ("security_group", env.id(keys::SERVICE_SECURITY_GROUP)?),
            ("target_group", env.id(keys::TARGET_GROUP)?),
            ("deployment", "min 0% / max 100%, circuit breaker with rollback".into()),
            ("grace_seconds", HEALTH_CHECK_GRACE_SECONDS.to_string()),
            ("exec", if self.exec { "on" } else { "off" }.into()),
            ("capacity", if self.spot { "FARGATE_SPOT" } else { "FARGATE" }.into()),
            ("public_ip", if self.public { "on" } else { "off" }.into()),
            ("scaled", self.scaled.to_string()),
        ]);
        let desired = Desired::new(keys::SERVICE, Kind::Service, wanted).with("subnets", subnets);
        let desired =
            if self.ssh { desired.with("ssh_target_group", env.id(keys::SSH_TARGET_GROUP)?) } else { desired };
        // Services made before these were settings: exec on, Fargate, private.
        Ok(vec![desired.replaced_on(&["cluster"]).assuming(&[
            ("exec", "on"),
            ("capacity", "FARGATE"),
            ("public_ip", "off"),
            ("scaled", "false"),
        ])])
    }

    async fn apply(&self, ctx: &Ctx, scope: &StepScope) -> anyhow::Result<Summary> {
        let want = scope.wanted_one(ctx, self)?;
        let network = NetworkConfiguration::builder()
            .awsvpc_configuration(
                AwsVpcConfiguration::builder()
                    .set_subnets(Some(want.list("subnets")))
                    .security_groups(want.text("security_group"))
                    .assign_public_ip(if self.public { AssignPublicIp::Enabled } else { AssignPublicIp::Disabled })
                    .build()?,
            )
            .build();
        let web = Some((want.text("target_group"), 80));
        let ssh = want.attrs.get("ssh_target_group").and_then(|v| v.as_str()).map(|tg| (tg, 22));
        let load_balancers: Vec<LoadBalancer> = web
            .into_iter()
            .chain(ssh)
            .map(|(tg, port)| {
                LoadBalancer::builder().target_group_arn(tg).container_name(CONTAINER).container_port(port).build()
            })
            .collect();
        let exec = self.exec;
        let changed = |setting: &str| {
            scope
                .state
                .get(keys::SERVICE)
                .is_some_and(|r| want.recorded(&r, setting).as_ref() != want.attrs.get(setting))
        };
        // A running task keeps the ECS Exec flag and the capacity it started with.
        let (exec_changed, capacity_changed) = (changed("exec"), changed("capacity"));
        let (spot, scaled) = (self.spot, self.scaled);
        let (cluster, td) = (want.text("cluster").to_string(), want.text("task_definition").to_string());
        let (cluster_ref, td_ref, network, load_balancers) = (cluster.as_str(), td.as_str(), &network, &load_balancers);
        // On an account's first use of ECS its service-linked role may not be assumable yet;
        // a listener created a moment ago may not be visible to ECS yet.
        let not_yet = |e: &AwsError| {
            e.says("InvalidParameterException", "Unable to assume the service linked role")
                || e.says("InvalidParameterException", "does not have an associated load balancer")
        };
        let ensured = scope
            .ensure(ctx, &ServiceOps, want, |existing, _| async move {
                let ecs = &ctx.aws.ecs;
                let arn = match existing {
                    Some(existing) => {
                        propagated(not_yet, || async {
                            call(
                                ecs.update_service()
                                    .cluster(cluster_ref)
                                    .service(SERVICE_NAME)
                                    .task_definition(td_ref)
                                    .set_desired_count((!scaled).then_some(1))
                                    .network_configuration(network.clone())
                                    .set_load_balancers(Some(load_balancers.clone()))
                                    .deployment_configuration(deployment_configuration())
                                    .health_check_grace_period_seconds(HEALTH_CHECK_GRACE_SECONDS)
                                    .enable_execute_command(exec)
                                    .set_capacity_provider_strategy(
                                        capacity_changed.then(|| vec![capacity_strategy(spot)]),
                                    )
                                    .force_new_deployment(exec_changed || capacity_changed)
                                    .send(),
                                || format!("updating service {SERVICE_NAME}"),
                            )
                            .await
                        })
                        .await?;
                        existing.id
                    }
                    None => propagated(not_yet, || async {
                        call(
                            ecs.create_service()
                                .cluster(cluster_ref)
                                .service_name(SERVICE_NAME)
                                .task_definition(td_ref)
                                .desired_count(1)
                                .set_launch_type((!spot).then_some(LaunchType::Fargate))
                                .set_capacity_provider_strategy(spot.then(|| vec![capacity_strategy(true)]))
                                .platform_version("LATEST")
                                .network_configuration(network.clone())
                                .set_load_balancers(Some(load_balancers.clone()))
                                .health_check_grace_period_seconds(HEALTH_CHECK_GRACE_SECONDS)
                                .deployment_configuration(deployment_configuration())
                                .enable_execute_command(exec)
                                .propagate_tags(PropagateTags::Service)
                                .enable_ecs_managed_tags(true)
                                .set_tags(Some(ctx.tags.list(keys::SERVICE)))
                                .send(),
                            || format!("creating service {SERVICE_NAME} in {cluster_ref}"),
                        )
                        .await
                    })
                    .await?
                    .service
                    .and_then(|s| s.service_arn)
                    .context("CreateService returned no ARN")?,
                };
                Ok(Applied::id(arn))
            })
            .await?;
        Ok(Summary::new(
            format!("{} {SERVICE_NAME} running {}", ensured.verb(), td.rsplit('/').next().unwrap_or_default()),
            ensured.changed(),
        ))
    }
}

pub struct ServiceOps;

fn cluster_of(record: &ResourceRecord) -> anyhow::Result<&str> {
    record.attr("cluster").context("the service record names no cluster")
}

#[async_trait]
impl ResourceOps<Ctx> for ServiceOps {
    fn noun(&self) -> &'static str {
        Kind::Service.noun()
    }

    async fn read(&self, ctx: &Ctx, record: &ResourceRecord) -> anyhow::Result<Live> {
        Ok(match describe_service(ctx, cluster_of(record)?).await? {
            None => Live::Missing,
            Some(s) => {
                let mut drift = Vec::new();
                if let Some(want) = record.attr("task_definition")
                    && s.task_definition() != Some(want)
                {
                    drift.push(format!("runs {}", s.task_definition().unwrap_or("?")));
                }
                // A GitLab left stopped (an operation that died, a hand-made change) is started
                // again by `up`; one put to sleep on purpose is recorded as such.
                if s.desired_count() == 0
                    && record.attr("asleep") != Some("true")
                    && record.attr("scaled") != Some("true")
                {
                    drift.push("GitLab is stopped (the service asks for 0 tasks)".to_string());
                }
                let summary = format!(
                    "desired {} running {} pending {}",
                    s.desired_count(),
                    s.running_count(),
                    s.pending_count()
                );
                Live::present(summary, drift).owned_by(ecs_owner(ctx, s.tags()))
            }
        })
    }

    async fn find(&self, ctx: &Ctx, lost: &Lost<'_>) -> anyhow::Result<Option<String>> {
        let Some(cluster) = lost.record.attr("cluster") else { return Ok(None) };
        let service = describe_service(ctx, cluster).await?;
        Ok(service.filter(|s| ecs_owner(ctx, s.tags()) == Owner::Ours).and_then(|s| s.service_arn))
    }

    /// Stops the task and waits until it has stopped, so the cluster, target groups, subnets
    /// and security groups it used can go too. A deleted service reads INACTIVE as soon as its
    /// task is stopping; the task's interface holds its subnet and group until it has stopped.
    async fn delete(&self, ctx: &Ctx, record: &ResourceRecord, scope: &StepScope) -> anyhow::Result<()> {
        let cluster = cluster_of(record)?;
        if_there(ctx.aws.ecs.delete_service().cluster(cluster).service(SERVICE_NAME).force(true).send(), || {
            format!("deleting service {SERVICE_NAME}")
        })
        .await?;
        wait_until(scope, "GitLab's task to stop", DRAIN_WAIT, || async {
            let service = describe_service(ctx, cluster).await?;
            let running: Vec<Task> = tasks(ctx, cluster, None)
                .await?
                .into_iter()
                .filter(|t| t.group() == Some("service:gitlab") && t.last_status() != Some("STOPPED"))
                .collect();
            Ok(match (service, running.as_slice()) {
                (None, []) => Poll::Ready(()),
                (Some(s), _) => Poll::Pending(format!(
                    "service {} with {} running",
                    s.status().unwrap_or("?").to_lowercase(),
                    s.running_count()
                )),
                (None, tasks) => Poll::Pending(task_states(tasks)),
            })
        })
        .await?;
        Ok(())
    }

    async fn discover(&self, ctx: &Ctx) -> anyhow::Result<Found> {
        let cluster = names::cluster(&ctx.tags.stack);
        let Some(service) = describe_service(ctx, &cluster).await? else { return Ok(Found::default()) };
        let Some(arn) = service.service_arn.clone() else { return Ok(Found::default()) };
        Ok(match ecs_owner(ctx, service.tags()) {
            Owner::Foreign(why) => {
                Found { ours: vec![], conflicts: vec![Conflict { kind: Kind::Service.to_string(), id: arn, why }] }
            }
            _ => vec![Discovered::new(keys::SERVICE, arn).with("cluster", cluster)].into(),
        })
    }
}

fn short_task(task: &Task) -> &str {
    task.task_arn().and_then(|a| a.rsplit('/').next()).unwrap_or("?")
}

/// "task 1a2b RUNNING, task 3c4d DEPROVISIONING", for a wait's progress line.
fn task_states(tasks: &[Task]) -> String {
    tasks
        .iter()
        .map(|t| format!("task {} {}", short_task(t), t.last_status().unwrap_or("?")))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Asks the service for `desired` tasks, without waiting.
pub async fn set_desired(ctx: &Ctx, cluster: &str, desired: i32) -> anyhow::Result<()> {
    call(ctx.aws.ecs.update_service().cluster(cluster).service(SERVICE_NAME).desired_count(desired).send(), || {
        format!("setting {SERVICE_NAME} to {}", counted(desired, "task"))
    })
    .await?;
    Ok(())
}

/// Asks the service for `desired` tasks and, for 0, waits until every task has stopped (a
/// consistent backup or a file-system swap needs GitLab fully stopped).
pub async fn scale(ctx: &Ctx, scope: &StepScope, cluster: &str, desired: i32) -> anyhow::Result<()> {
    set_desired(ctx, cluster, desired).await?;
    if desired > 0 {
        return Ok(());
    }
    wait_until(scope, "GitLab's task to stop", DRAIN_WAIT, || async {
        let running: Vec<Task> = tasks(ctx, cluster, Some(SERVICE_NAME))
            .await?
            .into_iter()
            .filter(|t| t.last_status() != Some("STOPPED"))
            .collect();
        Ok(if running.is_empty() { Poll::Ready(()) } else { Poll::Pending(task_states(&running)) })
    })
    .await?;
    Ok(())
}

/// The running GitLab task, for `exec` and `shell`: its id and the container's runtime id.
pub async fn running_task(ctx: &Ctx, cluster: &str) -> anyhow::Result<Option<RunningTask>> {
    let running = tasks(ctx, cluster, Some(SERVICE_NAME)).await?;
    Ok(running.iter().filter(|t| t.last_status() == Some("RUNNING")).find_map(|t| {
        let container = t.containers().iter().find(|c| c.name() == Some(CONTAINER))?;
        let agent = container
            .managed_agents()
            .iter()
            .find(|a| a.name().map(|n| n.as_str()) == Some("ExecuteCommandAgent"))
            .and_then(|a| a.last_status())
            .map(str::to_string);
        Some(RunningTask {
            id: short_task(t).to_string(),
            runtime: container.runtime_id()?.to_string(),
            exec_enabled: t.enable_execute_command(),
            exec_agent: agent,
        })
    }))
}

/// GitLab's running task, as ECS Exec needs it.
pub struct RunningTask {
    pub id: String,
    /// The container's runtime id (the Session Manager target names it).
    pub runtime: String,
    /// Whether the task was started with ECS Exec on (a task keeps the flag it started with).
    pub exec_enabled: bool,
    /// The ExecuteCommandAgent's state: RUNNING once it can take a session.
    pub exec_agent: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// GitLab's health, for `status` and `up --wait`

/// What an operator wants to know about the running GitLab.
#[derive(Debug, Default, Clone, serde::Serialize, schemars::JsonSchema)]
pub struct Health {
    pub url: Option<String>,
    pub desired: Option<i32>,
    pub running: Option<i32>,
    pub pending: Option<i32>,
    /// The primary deployment's rollout: IN_PROGRESS, COMPLETED or FAILED, and why.
    pub rollout: Option<String>,
    pub rollout_reason: Option<String>,
    /// The running (or starting) task: its status and when it started (RFC 3339).
    pub task: Option<String>,
    pub task_started_at: Option<String>,
    /// The image the running (or starting) task runs: the GitLab version live.
    pub task_image: Option<String>,
    /// The last task that stopped: why, and the container's exit code.
    pub last_stopped: Option<StoppedTask>,
    pub targets: Vec<TargetState>,
    pub ssh_targets: Vec<TargetState>,
    pub last_event: Option<String>,
    /// The service's recent events, newest first (why a task cannot be placed is said here).
    pub events: Vec<ServiceEvent>,
    /// Where the running task was placed: FARGATE or FARGATE_SPOT.
    pub capacity: Option<String>,
    /// Tasks Fargate Spot reclaimed among those ECS still lists (stopped tasks stay about an hour).
    pub spot_interruptions: u32,
}

#[derive(Debug, Clone, serde::Serialize, schemars::JsonSchema)]
pub struct ServiceEvent {
    pub at: Option<String>,
    pub message: String,
}

/// What keeps a task from starting, from a stopped task's reason or a service event, when it will
/// not go away by waiting: the task cannot be placed (a vCPU quota, no capacity), its image
/// cannot be pulled, or its volumes or secrets cannot be set up (ECS's "stopped task error
/// messages").
pub fn cannot_start(text: &str) -> bool {
    const SIGNS: [&str; 6] = [
        "unable to place a task",
        "CannotPullContainerError",
        "ResourceInitializationError",
        "CannotStartContainerError",
        "reached the limit on the number of",
        "Capacity is unavailable",
    ];
    SIGNS.iter().any(|sign| text.contains(sign))
}

/// Why a task cannot start, with the fix where there is one of ours: Fargate Spot without
/// capacity ("Capacity is unavailable at this time", ECS's service event) goes away on regular
/// Fargate.
pub fn with_fix(why: String) -> String {
    if why.contains("Capacity is unavailable") {
        return format!(
            "{why} (Fargate Spot has no capacity for GitLab now: `gitlab-provision up --capacity on-demand` runs it on regular Fargate, on the same data)"
        );
    }
    why
}

#[derive(Debug, Clone, serde::Serialize, schemars::JsonSchema)]
pub struct StoppedTask {
    pub task: String,
    pub reason: String,
    pub exit_code: Option<i32>,
    pub stopped_at: Option<String>,
}

impl Health {
    pub fn healthy(&self) -> bool {
        self.targets.iter().any(|t| t.state == "healthy")
    }

    pub fn failed(&self) -> bool {
        self.rollout.as_deref() == Some("FAILED")
    }
}

fn rfc3339(time: Option<&aws_smithy_types::DateTime>) -> Option<String> {
    time.and_then(|t| t.fmt(aws_smithy_types::date_time::Format::DateTime).ok())
}

pub async fn health(
    ctx: &Ctx,
    records: &BTreeMap<String, ResourceRecord>,
    url: Option<String>,
) -> anyhow::Result<Health> {
    let mut health = Health { url, ..Default::default() };
    if let Some(cluster) = records.get(keys::SERVICE).and_then(|r| r.attr("cluster"))
        && let Some(service) = describe_service(ctx, cluster).await?
    {
        health.desired = Some(service.desired_count());
        health.running = Some(service.running_count());
        health.pending = Some(service.pending_count());
        let primary =
            service.deployments().iter().find(|d| d.status() == Some("PRIMARY")).or(service.deployments().first());
        health.rollout = primary.and_then(|d| d.rollout_state()).map(|r| r.as_str().to_string());
        health.rollout_reason = primary.and_then(|d| d.rollout_state_reason()).map(str::to_string);
        health.last_event = service.events().first().and_then(|e| e.message()).map(str::to_string);
        health.events = service
            .events()
            .iter()
            .take(5)
            .filter_map(|e| Some(ServiceEvent { at: rfc3339(e.created_at()), message: e.message()?.to_string() }))
            .collect();
        let all = tasks(ctx, cluster, Some(SERVICE_NAME)).await?;
        if let Some(task) = all.iter().find(|t| t.last_status() != Some("STOPPED")) {
            health.task = task.last_status().map(str::to_string);
            health.task_started_at = rfc3339(task.started_at().or(task.created_at()));
            health.capacity = task.capacity_provider_name().map(str::to_string);
            health.task_image = task
                .containers()
                .iter()
                .find(|c| c.name() == Some(CONTAINER))
                .and_then(|c| c.image())
                .map(str::to_string);
        }
        health.last_stopped = stopped(&all).into_iter().next();
        health.spot_interruptions =
            all.iter().filter(|t| t.stop_code().is_some_and(|c| c.as_str() == SPOT_INTERRUPTION)).count() as u32;
    }
    for (key, into) in [(keys::TARGET_GROUP, &mut health.targets), (keys::SSH_TARGET_GROUP, &mut health.ssh_targets)] {
        if let Some(tg) = records.get(key).and_then(|r| r.id.as_deref()) {
            *into = target_health(ctx, tg).await?;
        }
    }
    Ok(health)
}

/// The stopped tasks, newest first, with why they stopped.
fn stopped(tasks: &[Task]) -> Vec<StoppedTask> {
    let mut stopped: Vec<(&Task, StoppedTask)> = tasks
        .iter()
        .filter(|t| t.last_status() == Some("STOPPED"))
        .map(|t| {
            (
                t,
                StoppedTask {
                    task: short_task(t).to_string(),
                    reason: t.stopped_reason().unwrap_or("no reason given").to_string(),
                    exit_code: t.containers().iter().find(|c| c.name() == Some(CONTAINER)).and_then(|c| c.exit_code()),
                    stopped_at: rfc3339(t.stopped_at()),
                },
            )
        })
        .collect();
    stopped.sort_by(|a, b| b.0.stopped_at().map(|t| t.secs()).cmp(&a.0.stopped_at().map(|t| t.secs())));
    stopped.into_iter().map(|(_, s)| s).collect()
}

/// Why `up --wait` (or an upgrade) gave up on GitLab coming up.
#[derive(Debug, thiserror::Error)]
#[error("GitLab did not come up: {why}")]
pub struct NotHealthy {
    pub why: String,
}

impl ground::Help for NotHealthy {
    fn help(&self) -> Option<String> {
        Some("`gitlab-provision status` shows the service's events and `gitlab-provision logs --since 30m` GitLab's own output".into())
    }
}

/// Until the load balancer reports GitLab healthy, showing the deployment's state, the task and
/// the target as they change; gives up early when the rollout fails or tasks keep stopping.
pub async fn wait_healthy(ctx: &Ctx, scope: &StepScope) -> anyhow::Result<()> {
    let records = scope.state.snapshot().resources;
    let cluster = records.get(keys::SERVICE).and_then(|r| r.attr("cluster")).map(str::to_string);
    let started = aws_smithy_types::DateTime::from(std::time::SystemTime::now());
    let outcome = wait_until(scope, "GitLab", BOOT_WAIT, || async {
        let h = health(ctx, &records, None).await?;
        if h.healthy() {
            return Ok(Poll::Ready(()));
        }
        // What will not fix itself ends the wait at once, with AWS's words.
        let new = |at: Option<&str>| {
            at.and_then(|t| aws_smithy_types::DateTime::from_str(t, aws_smithy_types::date_time::Format::DateTime).ok())
                .is_some_and(|t| t.secs() >= started.secs())
        };
        if let Some(event) = h.events.iter().find(|e| new(e.at.as_deref()) && cannot_start(&e.message)) {
            return Ok(Poll::Failed(format!("a task cannot start: {}", with_fix(event.message.clone()))));
        }
        if let Some(stop) = h.last_stopped.as_ref().filter(|s| new(s.stopped_at.as_deref()) && cannot_start(&s.reason))
        {
            return Ok(Poll::Failed(format!("a task cannot start: {}", with_fix(describe_stop(stop)))));
        }
        if h.failed() {
            let stopped = h
                .last_stopped
                .as_ref()
                .map(|s| format!("; last stopped task: {}", describe_stop(s)))
                .unwrap_or_default();
            return Ok(Poll::Failed(format!(
                "the deployment failed ({}){stopped}",
                h.rollout_reason.as_deref().unwrap_or("the circuit breaker rolled it back")
            )));
        }
        if let Some(cluster) = &cluster {
            let all = tasks(ctx, cluster, Some(SERVICE_NAME)).await?;
            let recent: Vec<StoppedTask> = stopped(&all)
                .into_iter()
                .filter(|s| {
                    s.stopped_at
                        .as_deref()
                        .and_then(|t| {
                            aws_smithy_types::DateTime::from_str(t, aws_smithy_types::date_time::Format::DateTime).ok()
                        })
                        .is_some_and(|t| t.secs() >= started.secs())
                })
                .collect();
            if recent.len() >= STOPS_BEFORE_GIVING_UP {
                let reasons: Vec<String> = recent.iter().take(STOPS_BEFORE_GIVING_UP).map(describe_stop).collect();
                return Ok(Poll::Failed(format!(
                    "{} tasks stopped while waiting: {}",
                    recent.len(),
                    reasons.join("; ")
                )));
            }
        }
        let targets = if h.targets.is_empty() {
            "no target".to_string()
        } else {
            format!("target {}", h.targets.iter().map(|t| t.state.as_str()).collect::<Vec<_>>().join(", "))
        };
        // What changes first: the line fits 80 columns with the step's name in front of it.
        Ok(Poll::Pending(format!(
            "{}, {targets}",
            h.task.as_deref().map_or_else(|| "no task yet".to_string(), str::to_lowercase)
        )))
    })
    .await;
    match outcome {
        Ok(()) => Ok(()),
        Err(crate::engine::WaitError::Failed { reason, .. }) => Err(NotHealthy { why: reason }.into()),
        Err(other) => Err(other.into()),
    }
}

pub fn describe_stop(stop: &StoppedTask) -> String {
    let told = match stop.exit_code {
        Some(code) => format!("task {} stopped: {} (exit code {code})", stop.task, stop.reason),
        None => format!("task {} stopped: {}", stop.task, stop.reason),
    };
    if stop.reason.starts_with("Your Spot Task was interrupted") {
        return format!(
            "{told}; Fargate Spot took its capacity back, the service starts another (capacity = \"on-demand\" avoids this)"
        );
    }
    told
}

/// ECS's stop code for a Fargate Spot task AWS reclaimed (DescribeTasks stopCode).
const SPOT_INTERRUPTION: &str = "SpotInterruption";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn https_config_listens_on_80_without_tls_and_whitelists_the_vpc() {
        let https = omnibus_config("https://git.example.com", "10.0.0.0/16", None, None, None);
        assert!(https.contains("external_url 'https://git.example.com'"));
        assert!(https.contains("nginx['listen_port'] = 80") && https.contains("nginx['listen_https'] = false"));
        assert!(https.contains("monitoring_whitelist'] = ['127.0.0.0/8', '10.0.0.0/16']"));
        let http = omnibus_config("http://lb.example", "10.1.0.0/16", None, None, None);
        assert!(!http.contains("listen_https") && !http.contains("ssh"));
        let ssh =
            omnibus_config("https://git.example.com", "10.0.0.0/16", Some(("ssh.git.example.com", 2222)), None, None);
        assert!(ssh.contains("gitlab_rails['gitlab_ssh_host'] = 'ssh.git.example.com'"));
        assert!(ssh.contains("gitlab_rails['gitlab_shell_ssh_port'] = 2222"));
        assert!(!ssh.contains("object_store"));
    }

    #[test]
    fn object_storage_is_the_consolidated_form_with_the_task_roles_credentials() {
        let store = ObjectStore {
            region: "eu-west-1".into(),
            buckets: keys::OBJECT_BUCKETS.iter().map(|(_, t)| (*t, format!("team-{t}"))).collect(),
        };
        let text = omnibus_config("https://git.example.com", "10.0.0.0/16", None, Some(&store), None);
        assert!(text.contains("gitlab_rails['object_store']['enabled'] = true"));
        assert!(text.contains(
            "gitlab_rails['object_store']['connection'] = { 'provider' => 'AWS', 'region' => 'eu-west-1', 'use_iam_profile' => true }"
        ));
        // Every type GitLab's consolidated form takes, each in its own bucket; no key anywhere.
        for object_type in [
            "artifacts",
            "external_diffs",
            "lfs",
            "uploads",
            "packages",
            "dependency_proxy",
            "terraform_state",
            "ci_secure_files",
            "pages",
        ] {
            let line =
                format!("gitlab_rails['object_store']['objects']['{object_type}']['bucket'] = 'team-{object_type}'");
            assert!(text.contains(&line), "{line} missing from\n{text}");
        }
        assert!(!text.contains("aws_access_key_id") && !text.contains("aws_secret_access_key"));
        // The services see the task role's credentials although runit empties their environment.
        for service in ["gitlab_rails", "gitlab_workhorse"] {
            assert!(text.contains(&format!(
                "{service}['env'] = {{ 'AWS_CONTAINER_CREDENTIALS_RELATIVE_URI' => ENV['AWS_CONTAINER_CREDENTIALS_RELATIVE_URI'] }}"
            )));
        }
        assert!(text.contains("gitlab_rails['external_diffs_enabled'] = true"));
    }

    #[test]
    fn an_external_database_is_the_documented_form_with_the_password_from_the_environment() {
        let database = ExternalDatabase { host: "team-gitlab.abc.us-east-1.rds.amazonaws.com".into() };
        let text = omnibus_config("https://git.example.com", "10.0.0.0/16", None, None, Some(&database));
        // GitLab's "Using a non-packaged PostgreSQL database management server".
        for line in [
            "postgresql['enable'] = false",
            "gitlab_rails['db_adapter'] = 'postgresql'",
            "gitlab_rails['db_encoding'] = 'unicode'",
            "gitlab_rails['db_host'] = 'team-gitlab.abc.us-east-1.rds.amazonaws.com'",
            "gitlab_rails['db_port'] = 5432",
            "gitlab_rails['db_database'] = 'gitlabhq_production'",
            "gitlab_rails['db_username'] = 'gitlab'",
            "gitlab_rails['db_password'] = ENV['GITLAB_DATABASE_PASSWORD']",
            "gitlab_rails['db_sslmode'] = 'require'",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing from\n{text}");
        }
        let bundled = omnibus_config("https://git.example.com", "10.0.0.0/16", None, None, None);
        assert!(!bundled.contains("postgresql['enable']") && !bundled.contains("db_host"));
    }
}
