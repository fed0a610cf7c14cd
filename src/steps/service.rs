//! ECS: the cluster, GitLab's Fargate task definition and the service that runs it.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context as _;
use async_trait::async_trait;
use aws_sdk_ecs::types::{
    AssignPublicIp, AwsVpcConfiguration, ClusterSetting, ClusterSettingName, Compatibility, ContainerDefinition,
    CpuArchitecture, DeploymentCircuitBreaker, DeploymentConfiguration, EfsAuthorizationConfig,
    EfsAuthorizationConfigIam, EfsTransitEncryption, EfsVolumeConfiguration, KeyValuePair, LaunchType, LinuxParameters,
    LoadBalancer, LogConfiguration, LogDriver, MountPoint, NetworkConfiguration, NetworkMode, OsFamily, PortMapping,
    PropagateTags, RuntimePlatform, Secret, Tag, TaskDefinitionStatus, TransportProtocol, Volume,
};

use super::Ctx;
use super::efs_init::{GITLAB_BASE, KEY_EFS_PREPARED};
use super::iam::{KEY_EXECUTION_ROLE, KEY_TASK_ROLE};
use super::load_balancer::{KEY_LOAD_BALANCER, KEY_TARGET_GROUP};
use super::logs::{KEY_LOG_GROUP, log_group_name};
use super::network::{KEY_VPC, PRIVATE_SUBNETS, attrs, required_id};
use super::secret::KEY_ROOT_SECRET;
use super::storage::{KEY_FILE_SYSTEM, MOUNT_TARGET_KEYS};
use crate::aws::{AwsResultExt, found};
use crate::config::StackConfig;
use crate::engine::{
    Created, Desired, Discovered, Live, Poll, ResourceOps, StepAction, StepScope, WaitPolicy, wait_until,
};
use crate::state::ResourceRecord;

pub const CLUSTER: &str = "ecs:cluster";
pub const TASK_DEFINITION: &str = "ecs:task-definition";
pub const SERVICE: &str = "ecs:service";

pub const KEY_CLUSTER: &str = "cluster";
pub const KEY_TASK_DEFINITION: &str = "task-definition";
pub const KEY_SERVICE: &str = "service";
pub const KEY_SERVICE_SECURITY_GROUP: &str = "service-security-group";

pub const SERVICE_NAME: &str = "gitlab";
const CONTAINER: &str = "gitlab";
/// GitLab's first boot (migrations, reconfigure) takes 5-6 minutes; ECS ignores the load
/// balancer's verdict for this long after a task starts.
pub const HEALTH_CHECK_GRACE_SECONDS: i32 = 600;
/// Draining a service stops its task: GitLab gets up to two minutes to shut down cleanly.
const DRAIN_WAIT: WaitPolicy = WaitPolicy::up_to(Duration::from_secs(900));

/// Where GitLab keeps what on the file system, and where it expects it.
const VOLUMES: [(&str, &str, &str); 3] = [
    ("gitlab-data", "data", "/var/opt/gitlab"),
    ("gitlab-logs", "logs", "/var/log/gitlab"),
    ("gitlab-config", "config", "/etc/gitlab"),
];

fn ecs_tags(ctx: &Ctx, key: &str) -> Vec<Tag> {
    ctx.tags.map(key, |k, v| Tag::builder().key(k).value(v).build())
}

pub fn cluster_name(ctx: &Ctx) -> String {
    ctx.tags.stack.clone()
}

pub fn family(ctx: &Ctx) -> String {
    format!("{}-gitlab", ctx.tags.stack)
}

// ---------------------------------------------------------------------------------------------
// Cluster

pub struct CreateCluster;

async fn describe_cluster(ctx: &Ctx, name: &str) -> anyhow::Result<Option<aws_sdk_ecs::types::Cluster>> {
    let out = ctx
        .aws
        .ecs
        .describe_clusters()
        .clusters(name)
        .include(aws_sdk_ecs::types::ClusterField::Settings)
        .send()
        .await
        .or_aws(|| format!("reading cluster {name}"))?;
    Ok(out.clusters.unwrap_or_default().into_iter().find(|c| c.status() == Some("ACTIVE")))
}

#[async_trait]
impl StepAction<Ctx> for CreateCluster {
    async fn apply(&self, ctx: &Ctx, scope: &StepScope) -> anyhow::Result<String> {
        let name = cluster_name(ctx);
        let desired = Desired {
            key: KEY_CLUSTER.into(),
            kind: CLUSTER.into(),
            depends_on: vec![],
            attrs: attrs([("container_insights", "enabled".into())]),
        };
        let ecs = &ctx.aws.ecs;
        let name_ref = name.as_str();
        let ensured = scope
            .ensure(ctx, &ClusterOps, desired, |existing, _token| async move {
                let insights =
                    ClusterSetting::builder().name(ClusterSettingName::ContainerInsights).value("enabled").build();
                let arn = match existing {
                    Some(found) => {
                        let on = describe_cluster(ctx, &found.id).await?.is_some_and(|c| {
                            c.settings().iter().any(|s| {
                                s.name() == Some(&ClusterSettingName::ContainerInsights) && s.value() == Some("enabled")
                            })
                        });
                        if !on {
                            ecs.update_cluster_settings()
                                .cluster(&found.id)
                                .settings(insights)
                                .send()
                                .await
                                .or_aws(|| format!("turning on Container Insights for {name_ref}"))?;
                        }
                        found.id
                    }
                    // CreateCluster with an existing name returns that cluster.
                    None => ecs
                        .create_cluster()
                        .cluster_name(name_ref)
                        .settings(insights)
                        .set_tags(Some(ecs_tags(ctx, KEY_CLUSTER)))
                        .send()
                        .await
                        .or_aws(|| format!("creating cluster {name_ref}"))?
                        .cluster
                        .and_then(|c| c.cluster_arn)
                        .context("CreateCluster returned no ARN")?,
                };
                Ok(Created { id: arn, attrs: attrs([("name", name_ref.to_string())]) })
            })
            .await?;
        Ok(format!("{} {name} (Container Insights on)", ensured.verb()))
    }
}

pub struct ClusterOps;

#[async_trait]
impl ResourceOps<Ctx> for ClusterOps {
    fn noun(&self) -> &'static str {
        "cluster"
    }

    async fn read(&self, ctx: &Ctx, record: &ResourceRecord) -> anyhow::Result<Live> {
        let arn = record.id()?;
        Ok(match describe_cluster(ctx, arn).await? {
            None => Live::Missing,
            Some(c) => Live::Present {
                summary: format!("{} services, {} running tasks", c.active_services_count(), c.running_tasks_count()),
                drift: vec![],
            },
        })
    }

    async fn find(
        &self,
        ctx: &Ctx,
        _key: &str,
        _record: &ResourceRecord,
        _token: &str,
    ) -> anyhow::Result<Option<String>> {
        Ok(describe_cluster(ctx, &cluster_name(ctx)).await?.and_then(|c| c.cluster_arn))
    }

    async fn delete(&self, ctx: &Ctx, record: &ResourceRecord, _scope: &StepScope) -> anyhow::Result<()> {
        let arn = record.id()?;
        found(ctx.aws.ecs.delete_cluster().cluster(arn).send().await.or_aws(|| format!("deleting cluster {arn}")))?;
        Ok(())
    }

    async fn discover(&self, ctx: &Ctx) -> anyhow::Result<Vec<Discovered>> {
        let name = cluster_name(ctx);
        Ok(describe_cluster(ctx, &name)
            .await?
            .and_then(|c| c.cluster_arn)
            .map(|arn| Discovered { key: KEY_CLUSTER.into(), id: arn, attrs: attrs([("name", name)]) })
            .into_iter()
            .collect())
    }
}

// ---------------------------------------------------------------------------------------------
// Task definition

pub struct RegisterTaskDefinition {
    pub config: StackConfig,
}

/// GitLab's omnibus settings, passed as GITLAB_OMNIBUS_CONFIG.
pub fn omnibus_config(external_url: &str, vpc_cidr: &str) -> String {
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
    lines.join("\n")
}

/// The URL users reach GitLab at: the HTTPS name, or the load balancer's own name.
pub fn external_url(config: &StackConfig, scope: &StepScope) -> anyhow::Result<String> {
    Ok(match &config.domain {
        Some(d) => format!("https://{}.{}", d.sub_domain, d.domain_name),
        None => {
            let lb = scope.state.get(KEY_LOAD_BALANCER).context("the load balancer is not recorded")?;
            format!("http://{}", lb.attr("dns_name").context("the load balancer has no DNS name")?)
        }
    })
}

#[async_trait]
impl StepAction<Ctx> for RegisterTaskDefinition {
    fn config_changes(&self, records: &BTreeMap<String, ResourceRecord>) -> Vec<(String, String)> {
        let Some(record) = records.get(KEY_TASK_DEFINITION) else { return vec![] };
        let cfg = &self.config;
        let wanted = [
            ("image", format!("gitlab/gitlab-ce:{}", cfg.gitlab_image_tag)),
            ("cpu", cfg.task_cpu.to_string()),
            ("memory", cfg.task_memory_mib.to_string()),
        ];
        let changes: Vec<String> = wanted
            .iter()
            .filter(|(k, v)| record.attr(k) != Some(v.as_str()))
            .map(|(k, v)| format!("{k} {} -> {v}", record.attr(k).unwrap_or("unset")))
            .collect();
        if changes.is_empty() {
            return vec![];
        }
        vec![
            (KEY_TASK_DEFINITION.to_string(), format!("new revision: {}", changes.join(", "))),
            (KEY_SERVICE.to_string(), "deploys the new revision (the old task stops first)".to_string()),
        ]
    }

    async fn apply(&self, ctx: &Ctx, scope: &StepScope) -> anyhow::Result<String> {
        let cfg = &self.config;
        let image = format!("gitlab/gitlab-ce:{}", cfg.gitlab_image_tag);
        let url = external_url(cfg, scope)?;
        let vpc_cidr = scope
            .state
            .get(KEY_VPC)
            .and_then(|r| r.attr("cidr").map(str::to_string))
            .context("the VPC has no recorded CIDR")?;
        let fs_id = required_id(KEY_FILE_SYSTEM, scope)?;
        let secret_arn = required_id(KEY_ROOT_SECRET, scope)?;
        let execution_role = required_id(KEY_EXECUTION_ROLE, scope)?;
        let task_role = required_id(KEY_TASK_ROLE, scope)?;
        let omnibus = omnibus_config(&url, &vpc_cidr);
        let family = family(ctx);
        let mut depends_on = vec![
            KEY_EXECUTION_ROLE.to_string(),
            KEY_TASK_ROLE.into(),
            KEY_FILE_SYSTEM.into(),
            KEY_ROOT_SECRET.into(),
            KEY_LOG_GROUP.into(),
        ];
        if cfg.domain.is_none() {
            depends_on.push(KEY_LOAD_BALANCER.into());
        }
        let desired = Desired {
            key: KEY_TASK_DEFINITION.into(),
            kind: TASK_DEFINITION.into(),
            depends_on,
            attrs: attrs([
                ("family", family.clone()),
                ("image", image.clone()),
                ("cpu", cfg.task_cpu.to_string()),
                ("memory", cfg.task_memory_mib.to_string()),
                ("omnibus_config", omnibus.clone()),
                ("file_system_id", fs_id.clone()),
                ("roles", format!("{execution_role} {task_role}")),
                ("secret", secret_arn.clone()),
            ]),
        };
        let log_group = log_group_name(&ctx.tags.stack);
        let region = ctx.aws.region.clone();
        let ecs = &ctx.aws.ecs;
        let ensured = scope
            .ensure(ctx, &TaskDefinitionOps, desired, |_existing, _token| async move {
                // Registering is how a task definition changes: each change is a new revision.
                let mut container = ContainerDefinition::builder()
                    .name(CONTAINER)
                    .image(&image)
                    .essential(true)
                    .port_mappings(PortMapping::builder().container_port(80).protocol(TransportProtocol::Tcp).build())
                    .environment(KeyValuePair::builder().name("GITLAB_OMNIBUS_CONFIG").value(&omnibus).build())
                    // Only read on first boot; injected by ECS from the secret, never as plain environment.
                    .secrets(
                        Secret::builder()
                            .name("GITLAB_ROOT_PASSWORD")
                            .value_from(format!("{secret_arn}:password::"))
                            .build()?,
                    )
                    .secrets(
                        Secret::builder()
                            .name("GITLAB_ROOT_EMAIL")
                            .value_from(format!("{secret_arn}:email::"))
                            .build()?,
                    )
                    .log_configuration(
                        LogConfiguration::builder()
                            .log_driver(LogDriver::Awslogs)
                            .options("awslogs-group", &log_group)
                            .options("awslogs-region", &region)
                            .options("awslogs-stream-prefix", "gitlab")
                            .build()?,
                    )
                    // ECS Exec wants an init process; GitLab's runit is happier with one too.
                    .linux_parameters(LinuxParameters::builder().init_process_enabled(true).build())
                    .stop_timeout(120);
                let mut volumes = Vec::new();
                for (name, directory, path) in VOLUMES {
                    container = container.mount_points(
                        MountPoint::builder().source_volume(name).container_path(path).read_only(false).build(),
                    );
                    volumes.push(
                        Volume::builder()
                            .name(name)
                            .efs_volume_configuration(
                                EfsVolumeConfiguration::builder()
                                    .file_system_id(&fs_id)
                                    .root_directory(format!("/{GITLAB_BASE}/{directory}"))
                                    .transit_encryption(EfsTransitEncryption::Enabled)
                                    .authorization_config(
                                        EfsAuthorizationConfig::builder()
                                            .iam(EfsAuthorizationConfigIam::Enabled)
                                            .build(),
                                    )
                                    .build()?,
                            )
                            .build(),
                    );
                }
                let out = ecs
                    .register_task_definition()
                    .family(&family)
                    .network_mode(NetworkMode::Awsvpc)
                    .requires_compatibilities(Compatibility::Fargate)
                    .cpu(cfg.task_cpu.to_string())
                    .memory(cfg.task_memory_mib.to_string())
                    .execution_role_arn(&execution_role)
                    .task_role_arn(&task_role)
                    .runtime_platform(
                        RuntimePlatform::builder()
                            .operating_system_family(OsFamily::Linux)
                            .cpu_architecture(CpuArchitecture::X8664)
                            .build(),
                    )
                    .container_definitions(container.build())
                    .set_volumes(Some(volumes))
                    .set_tags(Some(ecs_tags(ctx, KEY_TASK_DEFINITION)))
                    .send()
                    .await
                    .or_aws(|| format!("registering task definition {family}"))?;
                let arn = out
                    .task_definition
                    .and_then(|t| t.task_definition_arn)
                    .context("RegisterTaskDefinition returned no ARN")?;
                Ok(Created { id: arn, attrs: BTreeMap::new() })
            })
            .await?;
        Ok(format!(
            "{} {} ({}, {} CPU / {} MiB)",
            ensured.verb(),
            ensured.id().rsplit('/').next().unwrap_or_default(),
            cfg.gitlab_image_tag,
            cfg.task_cpu,
            cfg.task_memory_mib
        ))
    }
}

pub struct TaskDefinitionOps;

#[async_trait]
impl ResourceOps<Ctx> for TaskDefinitionOps {
    fn noun(&self) -> &'static str {
        "task definition"
    }

    async fn read(&self, ctx: &Ctx, record: &ResourceRecord) -> anyhow::Result<Live> {
        let arn = record.id()?;
        let out = ctx
            .aws
            .ecs
            .describe_task_definition()
            .task_definition(arn)
            .send()
            .await
            .or_aws(|| format!("reading task definition {arn}"));
        Ok(match out {
            // ECS answers a plain ClientException for a revision it does not know.
            Err(e) if e.is_code(&["ClientException"]) || e.is_not_found() => Live::Missing,
            Err(e) => return Err(e.into()),
            Ok(out) => match out.task_definition {
                Some(td) if td.status() == Some(&TaskDefinitionStatus::Active) => Live::Present {
                    summary: format!(
                        "revision {} ({})",
                        td.revision(),
                        td.container_definitions().first().and_then(|c| c.image()).unwrap_or("?")
                    ),
                    drift: vec![],
                },
                _ => Live::Missing,
            },
        })
    }

    async fn find(
        &self,
        ctx: &Ctx,
        _key: &str,
        _record: &ResourceRecord,
        _token: &str,
    ) -> anyhow::Result<Option<String>> {
        let out = ctx
            .aws
            .ecs
            .list_task_definitions()
            .family_prefix(family(ctx))
            .sort(aws_sdk_ecs::types::SortOrder::Desc)
            .send()
            .await
            .or_aws(|| "listing task definitions".to_string())?;
        Ok(out.task_definition_arns().first().cloned())
    }

    /// Every revision of the family goes, not only the recorded one.
    async fn delete(&self, ctx: &Ctx, record: &ResourceRecord, _scope: &StepScope) -> anyhow::Result<()> {
        let family = record.attr("family").map(str::to_string).unwrap_or_else(|| family(ctx));
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
                        found(
                            ecs.deregister_task_definition()
                                .task_definition(arn)
                                .send()
                                .await
                                .or_aws(|| format!("deregistering {arn}")),
                        )?;
                    }
                    revisions.push(arn.clone());
                }
            }
        }
        // Deregistered revisions linger as INACTIVE until deleted.
        for chunk in revisions.chunks(10) {
            found(
                ecs.delete_task_definitions()
                    .set_task_definitions(Some(chunk.to_vec()))
                    .send()
                    .await
                    .or_aws(|| format!("deleting revisions of {family}")),
            )?;
        }
        Ok(())
    }

    async fn discover(&self, ctx: &Ctx) -> anyhow::Result<Vec<Discovered>> {
        let family = family(ctx);
        let out = ctx
            .aws
            .ecs
            .list_task_definitions()
            .family_prefix(&family)
            .send()
            .await
            .or_aws(|| format!("listing revisions of {family}"))?;
        // One record stands for the whole family: deleting it removes every revision.
        Ok(out
            .task_definition_arns()
            .iter()
            .find(|a| a.contains(&format!("/{family}:")))
            .map(|arn| Discovered {
                key: KEY_TASK_DEFINITION.into(),
                id: arn.clone(),
                attrs: attrs([("family", family.clone())]),
            })
            .into_iter()
            .collect())
    }
}

// ---------------------------------------------------------------------------------------------
// Service

pub struct CreateService;

async fn describe_service(ctx: &Ctx, cluster: &str) -> anyhow::Result<Option<aws_sdk_ecs::types::Service>> {
    let out = found(
        ctx.aws
            .ecs
            .describe_services()
            .cluster(cluster)
            .services(SERVICE_NAME)
            .send()
            .await
            .or_aws(|| format!("reading service {SERVICE_NAME}")),
    )?;
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

#[async_trait]
impl StepAction<Ctx> for CreateService {
    async fn apply(&self, ctx: &Ctx, scope: &StepScope) -> anyhow::Result<String> {
        let cluster = required_id(KEY_CLUSTER, scope)?;
        let task_definition = required_id(KEY_TASK_DEFINITION, scope)?;
        let target_group = required_id(KEY_TARGET_GROUP, scope)?;
        let group = required_id(KEY_SERVICE_SECURITY_GROUP, scope)?;
        let subnets = PRIVATE_SUBNETS.iter().map(|k| required_id(k, scope)).collect::<anyhow::Result<Vec<_>>>()?;
        let mut depends_on = vec![
            KEY_CLUSTER.to_string(),
            KEY_TASK_DEFINITION.into(),
            KEY_TARGET_GROUP.into(),
            KEY_SERVICE_SECURITY_GROUP.into(),
            KEY_EFS_PREPARED.into(),
        ];
        depends_on.extend(MOUNT_TARGET_KEYS.iter().map(|k| k.to_string()));
        depends_on.extend(PRIVATE_SUBNETS.iter().map(|k| k.to_string()));
        let desired = Desired {
            key: KEY_SERVICE.into(),
            kind: SERVICE.into(),
            depends_on,
            attrs: attrs([
                ("cluster", cluster.clone()),
                ("task_definition", task_definition.clone()),
                ("subnets", subnets.join(",")),
                ("security_group", group.clone()),
                ("target_group", target_group.clone()),
                ("deployment", "min 0% / max 100%, circuit breaker with rollback".into()),
                ("grace_seconds", HEALTH_CHECK_GRACE_SECONDS.to_string()),
            ]),
        };
        let ecs = &ctx.aws.ecs;
        let network = NetworkConfiguration::builder()
            .awsvpc_configuration(
                AwsVpcConfiguration::builder()
                    .set_subnets(Some(subnets.clone()))
                    .security_groups(&group)
                    .assign_public_ip(AssignPublicIp::Disabled)
                    .build()?,
            )
            .build();
        let (cluster_ref, td, tg, network) =
            (cluster.as_str(), task_definition.as_str(), target_group.as_str(), &network);
        let ensured = scope
            .ensure(ctx, &ServiceOps, desired, |existing, _token| async move {
                let arn = match existing {
                    Some(found) => {
                        ecs.update_service()
                            .cluster(cluster_ref)
                            .service(SERVICE_NAME)
                            .task_definition(td)
                            .desired_count(1)
                            .network_configuration(network.clone())
                            .deployment_configuration(deployment_configuration())
                            .health_check_grace_period_seconds(HEALTH_CHECK_GRACE_SECONDS)
                            .enable_execute_command(true)
                            .send()
                            .await
                            .or_aws(|| format!("updating service {SERVICE_NAME}"))?;
                        found.id
                    }
                    None => ecs
                        .create_service()
                        .cluster(cluster_ref)
                        .service_name(SERVICE_NAME)
                        .task_definition(td)
                        .desired_count(1)
                        .launch_type(LaunchType::Fargate)
                        .platform_version("LATEST")
                        .network_configuration(network.clone())
                        .load_balancers(
                            LoadBalancer::builder()
                                .target_group_arn(tg)
                                .container_name(CONTAINER)
                                .container_port(80)
                                .build(),
                        )
                        .health_check_grace_period_seconds(HEALTH_CHECK_GRACE_SECONDS)
                        .deployment_configuration(deployment_configuration())
                        .enable_execute_command(true)
                        .propagate_tags(PropagateTags::Service)
                        .enable_ecs_managed_tags(true)
                        .set_tags(Some(ecs_tags(ctx, KEY_SERVICE)))
                        .send()
                        .await
                        .or_aws(|| format!("creating service {SERVICE_NAME} in {cluster_ref}"))?
                        .service
                        .and_then(|s| s.service_arn)
                        .context("CreateService returned no ARN")?,
                };
                Ok(Created { id: arn, attrs: BTreeMap::new() })
            })
            .await?;
        Ok(format!(
            "{} {SERVICE_NAME} running {}",
            ensured.verb(),
            task_definition.rsplit('/').next().unwrap_or_default()
        ))
    }
}

pub struct ServiceOps;

#[async_trait]
impl ResourceOps<Ctx> for ServiceOps {
    fn noun(&self) -> &'static str {
        "service"
    }

    async fn read(&self, ctx: &Ctx, record: &ResourceRecord) -> anyhow::Result<Live> {
        let cluster = record.attr("cluster").context("no cluster")?;
        Ok(match describe_service(ctx, cluster).await? {
            None => Live::Missing,
            Some(s) => {
                let mut drift = Vec::new();
                if let Some(want) = record.attr("task_definition")
                    && s.task_definition() != Some(want)
                {
                    drift.push(format!("runs {}", s.task_definition().unwrap_or("?")));
                }
                Live::Present {
                    summary: format!(
                        "desired {} running {} pending {}",
                        s.desired_count(),
                        s.running_count(),
                        s.pending_count()
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
        record: &ResourceRecord,
        _token: &str,
    ) -> anyhow::Result<Option<String>> {
        let Some(cluster) = record.attr("cluster") else { return Ok(None) };
        Ok(describe_service(ctx, cluster).await?.and_then(|s| s.service_arn))
    }

    /// Stops the task and waits until the service is gone, so the target group, subnets and
    /// security groups it used can go too.
    async fn delete(&self, ctx: &Ctx, record: &ResourceRecord, scope: &StepScope) -> anyhow::Result<()> {
        let cluster = record.attr("cluster").context("no cluster")?;
        found(
            ctx.aws
                .ecs
                .delete_service()
                .cluster(cluster)
                .service(SERVICE_NAME)
                .force(true)
                .send()
                .await
                .or_aws(|| format!("deleting service {SERVICE_NAME}")),
        )?;
        wait_until(scope, "the GitLab service to drain", DRAIN_WAIT, || async {
            let out = found(
                ctx.aws
                    .ecs
                    .describe_services()
                    .cluster(cluster)
                    .services(SERVICE_NAME)
                    .send()
                    .await
                    .or_aws(|| format!("reading service {SERVICE_NAME}")),
            )?;
            let service = out.and_then(|o| o.services).unwrap_or_default().into_iter().next();
            Ok(match service {
                None => Poll::Ready(()),
                Some(s) if s.status() == Some("INACTIVE") => Poll::Ready(()),
                Some(s) => Poll::Pending(format!(
                    "{} with {} running",
                    s.status().unwrap_or("?").to_lowercase(),
                    s.running_count()
                )),
            })
        })
        .await?;
        Ok(())
    }

    async fn discover(&self, ctx: &Ctx) -> anyhow::Result<Vec<Discovered>> {
        let cluster = cluster_name(ctx);
        Ok(describe_service(ctx, &cluster)
            .await?
            .and_then(|s| s.service_arn)
            .map(|arn| Discovered { key: KEY_SERVICE.into(), id: arn, attrs: attrs([("cluster", cluster)]) })
            .into_iter()
            .collect())
    }
}

/// What an operator wants to know about the running GitLab, for `status`.
#[derive(Debug, Default, serde::Serialize)]
pub struct Health {
    pub url: Option<String>,
    pub desired: Option<i32>,
    pub running: Option<i32>,
    pub pending: Option<i32>,
    pub rollout: Option<String>,
    pub target_health: Vec<String>,
    pub last_task_status: Option<String>,
    pub last_event: Option<String>,
}

pub async fn health(
    ctx: &Ctx,
    records: &BTreeMap<String, ResourceRecord>,
    url: Option<String>,
) -> anyhow::Result<Health> {
    let mut health = Health { url, ..Default::default() };
    if let Some(cluster) = records.get(KEY_SERVICE).and_then(|r| r.attr("cluster"))
        && let Some(service) = describe_service(ctx, cluster).await?
    {
        health.desired = Some(service.desired_count());
        health.running = Some(service.running_count());
        health.pending = Some(service.pending_count());
        health.rollout = service.deployments().first().and_then(|d| d.rollout_state()).map(|r| r.as_str().to_string());
        health.last_event = service.events().first().and_then(|e| e.message()).map(str::to_string);
        let tasks = ctx
            .aws
            .ecs
            .list_tasks()
            .cluster(cluster)
            .service_name(SERVICE_NAME)
            .send()
            .await
            .or_aws(|| "listing tasks".to_string())?;
        if let Some(task) = tasks.task_arns().first() {
            let described = ctx
                .aws
                .ecs
                .describe_tasks()
                .cluster(cluster)
                .tasks(task)
                .send()
                .await
                .or_aws(|| format!("reading task {task}"))?;
            health.last_task_status = described.tasks().first().and_then(|t| t.last_status()).map(str::to_string);
        }
    }
    if let Some(tg) = records.get(KEY_TARGET_GROUP).and_then(|r| r.id.as_deref()) {
        let out = found(
            ctx.aws
                .elb
                .describe_target_health()
                .target_group_arn(tg)
                .send()
                .await
                .or_aws(|| format!("reading target health of {tg}")),
        )?;
        health.target_health = out
            .map(|o| o.target_health_descriptions.unwrap_or_default())
            .unwrap_or_default()
            .iter()
            .map(|t| {
                format!(
                    "{} {}",
                    t.target().and_then(|t| t.id()).unwrap_or("?"),
                    t.target_health().and_then(|h| h.state()).map(|s| s.as_str()).unwrap_or("?")
                )
            })
            .collect();
    }
    Ok(health)
}

/// GitLab's first boot takes 5-6 minutes after the image is pulled; allow a generous margin.
const BOOT_WAIT: WaitPolicy = WaitPolicy::up_to(Duration::from_secs(1800));

/// For `up --wait`: until the load balancer reports GitLab's target healthy, showing the
/// target's state and the service's counts as they change.
pub async fn wait_healthy(ctx: &Ctx, scope: &StepScope) -> anyhow::Result<()> {
    let records = scope.state.snapshot().resources;
    wait_until(scope, "GitLab to boot and pass /-/readiness", BOOT_WAIT, || async {
        let h = health(ctx, &records, None).await?;
        if h.target_health.iter().any(|t| t.ends_with(" healthy")) {
            return Ok(Poll::Ready(()));
        }
        let targets = if h.target_health.is_empty() { "no target yet".to_string() } else { h.target_health.join(", ") };
        Ok(Poll::Pending(format!(
            "{targets}; task {}, running {} pending {}",
            h.last_task_status.as_deref().unwrap_or("not started"),
            h.running.unwrap_or(0),
            h.pending.unwrap_or(0)
        )))
    })
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn https_config_listens_on_80_without_tls_and_whitelists_the_vpc() {
        let https = omnibus_config("https://git.example.com", "10.0.0.0/16");
        assert!(https.contains("external_url 'https://git.example.com'"));
        assert!(https.contains("nginx['listen_port'] = 80") && https.contains("nginx['listen_https'] = false"));
        assert!(https.contains("monitoring_whitelist'] = ['127.0.0.0/8', '10.0.0.0/16']"));
        let http = omnibus_config("http://lb.example", "10.1.0.0/16");
        assert!(!http.contains("listen_https"));
    }
}
