//! The GitLab stack as steps for the engine, and the catalog of resource kinds for teardown
//! and status. Each AWS area has its own module with create, read and delete side by side.

pub mod certificate;
pub mod dns;
pub mod efs_init;
pub mod iam;
pub mod load_balancer;
pub mod logs;
pub mod nat;
pub mod network;
pub mod secret;
pub mod security_group;
pub mod service;
pub mod storage;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use crate::aws::{AwsError, Clients, Tags};
use crate::config::{NatKind, NetworkConfig, StackConfig};
use crate::engine::{Catalog, ResourceOps, RetryPolicy, Step, StepAction, retry_while};
use security_group::{IngressRule, SecurityGroupStep, Source};

/// Deleting a VPC, subnet, gateway or group right after what used it fails until AWS notices.
pub(crate) const EC2_IN_USE: &[&str] = &["DependencyViolation", "InvalidIPAddress.InUse"];

/// Deletes through AWS's "still in use" window: retried (with the eventual-consistency policy)
/// while one of the `busy` codes comes back because what used it is still draining; "not found"
/// counts as deleted.
pub(crate) async fn delete_when_free<T, F, Fut>(busy: &[&str], op: F) -> Result<(), AwsError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, AwsError>>,
{
    match retry_while(RetryPolicy::EVENTUAL_CONSISTENCY, |e: &AwsError| e.is_code(busy), op).await {
        Ok(_) => Ok(()),
        Err(e) if e.is_not_found() => Ok(()),
        Err(e) => Err(e),
    }
}

/// What every step and resource operation may use.
pub struct Ctx {
    pub aws: Clients,
    pub tags: Tags,
}

/// Every resource kind this tool records, for teardown and status.
pub struct Kinds;

impl Catalog<Ctx> for Kinds {
    fn ops(&self, kind: &str) -> Option<&dyn ResourceOps<Ctx>> {
        Some(match kind {
            network::VPC => &network::VpcOps,
            network::SUBNET => &network::SubnetOps,
            network::INTERNET_GATEWAY => &network::InternetGatewayOps,
            network::ROUTE_TABLE => &network::RouteTableOps,
            nat::ELASTIC_IP => &nat::ElasticIpOps,
            nat::NAT_GATEWAY => &nat::NatGatewayOps,
            nat::INSTANCE => &nat::InstanceOps,
            security_group::SECURITY_GROUP => &security_group::SecurityGroupOps,
            storage::FILE_SYSTEM => &storage::FileSystemOps,
            storage::MOUNT_TARGET => &storage::MountTargetOps,
            storage::ACCESS_POINT => &storage::AccessPointOps,
            secret::SECRET => &secret::SecretOps,
            logs::LOG_GROUP => &logs::LogGroupOps,
            iam::ROLE => &iam::RoleOps,
            load_balancer::LOAD_BALANCER => &load_balancer::LoadBalancerOps,
            load_balancer::TARGET_GROUP => &load_balancer::TargetGroupOps,
            load_balancer::LISTENER => &load_balancer::ListenerOps,
            certificate::CERTIFICATE => &certificate::CertificateOps,
            dns::RECORD => &dns::RecordOps,
            efs_init::FUNCTION => &efs_init::FunctionOps,
            efs_init::MARKER => &efs_init::MarkerOps,
            service::CLUSTER => &service::ClusterOps,
            service::TASK_DEFINITION => &service::TaskDefinitionOps,
            service::SERVICE => &service::ServiceOps,
            _ => return None,
        })
    }

    fn kinds(&self) -> &'static [&'static str] {
        &[
            network::VPC,
            network::SUBNET,
            network::INTERNET_GATEWAY,
            network::ROUTE_TABLE,
            nat::ELASTIC_IP,
            nat::NAT_GATEWAY,
            nat::INSTANCE,
            security_group::SECURITY_GROUP,
            storage::FILE_SYSTEM,
            storage::MOUNT_TARGET,
            storage::ACCESS_POINT,
            secret::SECRET,
            logs::LOG_GROUP,
            iam::ROLE,
            load_balancer::LOAD_BALANCER,
            load_balancer::TARGET_GROUP,
            load_balancer::LISTENER,
            certificate::CERTIFICATE,
            dns::RECORD,
            efs_init::FUNCTION,
            efs_init::MARKER,
            service::CLUSTER,
            service::TASK_DEFINITION,
            service::SERVICE,
        ]
    }

    /// What uses what, coarsely: the service and function first, the VPC last. Security groups
    /// that admit other groups go before those groups.
    fn teardown_rank(&self, kind: &str, key: &str) -> u8 {
        match kind {
            service::SERVICE | efs_init::FUNCTION => 0,
            load_balancer::LISTENER | dns::RECORD | service::TASK_DEFINITION | efs_init::MARKER => 1,
            load_balancer::LOAD_BALANCER
            | certificate::CERTIFICATE
            | nat::INSTANCE
            | nat::NAT_GATEWAY
            | storage::MOUNT_TARGET
            | storage::ACCESS_POINT => 2,
            load_balancer::TARGET_GROUP
            | storage::FILE_SYSTEM
            | service::CLUSTER
            | iam::ROLE
            | logs::LOG_GROUP
            | secret::SECRET
            | network::ROUTE_TABLE => 3,
            security_group::SECURITY_GROUP if key == storage::KEY_EFS_SECURITY_GROUP => 4,
            security_group::SECURITY_GROUP if key == service::KEY_SERVICE_SECURITY_GROUP => 5,
            security_group::SECURITY_GROUP => 6,
            nat::ELASTIC_IP | network::SUBNET | network::INTERNET_GATEWAY => 7,
            _ => 8,
        }
    }
}

struct Graph {
    steps: Vec<Step<Ctx>>,
}

impl Graph {
    fn add(
        &mut self,
        name: &str,
        deps: &[&str],
        description: String,
        resources: &[(&str, &str)],
        action: impl StepAction<Ctx> + 'static,
    ) {
        self.steps.push(Step {
            name: name.to_string(),
            deps: deps.iter().map(|d| d.to_string()).collect(),
            description,
            resources: resources.iter().map(|(k, kind)| (k.to_string(), kind.to_string())).collect(),
            action: Arc::new(action),
        });
    }
}

/// The steps `up` runs for a configuration, with their dependencies.
pub fn build(cfg: &StackConfig) -> Vec<Step<Ctx>> {
    let mut g = Graph { steps: Vec::new() };
    // The step that records the subnets, the one that makes them public, and the NAT path.
    let (subnets_step, internet_gateway, egress) = add_network(&mut g, cfg);
    add_gitlab(&mut g, cfg, subnets_step, internet_gateway, egress);
    // Checks that can refuse the configuration run before anything is created.
    let mut gates = Vec::new();
    if matches!(cfg.network, NetworkConfig::Import { .. }) {
        gates.push("vpc");
    }
    if let Some(domain) = &cfg.domain {
        g.add(
            "preflight",
            &[],
            format!("check hosted zone {} serves {}", domain.hosted_zone_id, domain.domain_name),
            &[],
            dns::CheckHostedZone { domain: domain.clone() },
        );
        gates.push("preflight");
    }
    for step in g.steps.iter_mut().filter(|s| s.deps.is_empty() && !gates.contains(&s.name.as_str())) {
        step.deps.extend(gates.iter().map(|g| g.to_string()));
    }
    if gates.len() == 2 {
        // The VPC import is itself gated by the hosted zone check.
        if let Some(vpc) = g.steps.iter_mut().find(|s| s.name == "vpc") {
            vpc.deps.push("preflight".into());
        }
    }
    g.steps
}

fn add_network(g: &mut Graph, cfg: &StackConfig) -> (&'static str, Option<&'static str>, Option<&'static str>) {
    match &cfg.network {
        NetworkConfig::Import { vpc_id } => {
            let mut resources = vec![(network::KEY_VPC, network::VPC)];
            resources.extend(network::SUBNET_KEYS.iter().map(|k| (*k, network::SUBNET)));
            g.add(
                "vpc",
                &[],
                format!("import VPC {vpc_id}: check two public and two private subnets in distinct AZs"),
                &resources,
                network::ImportVpc { vpc_id: vpc_id.clone() },
            );
            ("vpc", None, None)
        }
        NetworkConfig::Create { vpc_cidr, nat } => {
            g.add(
                "vpc",
                &[],
                format!("create VPC {vpc_cidr} with DNS support and hostnames"),
                &[(network::KEY_VPC, network::VPC)],
                network::CreateVpc { cidr: *vpc_cidr },
            );
            let subnets = network::SubnetPlan::new(*vpc_cidr);
            g.add(
                "subnets",
                &["vpc"],
                format!("create public and private subnets in two AZs ({})", subnets.describe()),
                &network::SUBNET_KEYS.map(|k| (k, network::SUBNET)),
                network::CreateSubnets { plan: subnets },
            );
            g.add(
                "internet-gateway",
                &["vpc"],
                "create and attach an internet gateway".into(),
                &[(network::KEY_INTERNET_GATEWAY, network::INTERNET_GATEWAY)],
                network::CreateInternetGateway,
            );
            g.add(
                "public-routes",
                &["internet-gateway", "subnets"],
                "route the public subnets to the internet gateway".into(),
                &[(network::KEY_PUBLIC_ROUTES, network::ROUTE_TABLE)],
                network::RouteTableStep::public(),
            );
            let nat_step = match nat {
                NatKind::Gateway => {
                    g.add(
                        "nat-eip",
                        &[],
                        "allocate an Elastic IP for the NAT gateway".into(),
                        &[(nat::KEY_EIP, nat::ELASTIC_IP)],
                        nat::AllocateNatEip,
                    );
                    g.add(
                        "nat-gateway",
                        &["subnets", "internet-gateway", "nat-eip"],
                        "create a NAT gateway in the first public subnet and wait until available".into(),
                        &[(nat::KEY_NAT_GATEWAY, nat::NAT_GATEWAY)],
                        nat::CreateNatGateway,
                    );
                    "nat-gateway"
                }
                NatKind::Instance => {
                    g.add(
                        "nat-security-group",
                        &["vpc"],
                        format!("create the NAT instance's security group admitting all traffic from {vpc_cidr}"),
                        &[(nat::KEY_NAT_SECURITY_GROUP, security_group::SECURITY_GROUP)],
                        nat::nat_security_group(*vpc_cidr),
                    );
                    g.add(
                        "nat-instance",
                        &["subnets", "internet-gateway", "nat-security-group"],
                        "launch a t4g.nano NAT instance (Amazon Linux 2023) and wait until running".into(),
                        &[(nat::KEY_NAT_INSTANCE, nat::INSTANCE)],
                        nat::CreateNatInstance,
                    );
                    "nat-instance"
                }
            };
            g.add(
                "private-routes",
                &["subnets", nat_step],
                format!("route the private subnets' outbound traffic through the {nat_step}"),
                &[(network::KEY_PRIVATE_ROUTES, network::ROUTE_TABLE)],
                network::RouteTableStep::private(*nat),
            );
            ("subnets", Some("internet-gateway"), Some("private-routes"))
        }
    }
}

fn add_gitlab(
    g: &mut Graph,
    cfg: &StackConfig,
    subnets: &'static str,
    internet_gateway: Option<&'static str>,
    egress: Option<&'static str>,
) {
    use efs_init::KEY_INIT_SECURITY_GROUP;
    use load_balancer::{KEY_ALB_SECURITY_GROUP, KEY_HTTP_LISTENER, KEY_HTTPS_LISTENER};
    use security_group::SECURITY_GROUP as SG;
    use service::KEY_SERVICE_SECURITY_GROUP;
    use storage::KEY_EFS_SECURITY_GROUP;

    let https = cfg.domain.is_some();
    g.add(
        "root-secret",
        &[],
        "generate GitLab's root password into Secrets Manager".into(),
        &[(secret::KEY_ROOT_SECRET, secret::SECRET)],
        secret::CreateRootSecret { email: cfg.gitlab_root_email.clone() },
    );
    g.add(
        "log-group",
        &[],
        format!("create log group with {}-day retention", logs::RETENTION_DAYS),
        &[(logs::KEY_LOG_GROUP, logs::LOG_GROUP)],
        logs::CreateLogGroup,
    );
    g.add(
        "file-system",
        &[],
        "create the EFS file system (encrypted, elastic throughput, backups on)".into(),
        &[(storage::KEY_FILE_SYSTEM, storage::FILE_SYSTEM)],
        storage::CreateFileSystem,
    );

    let ports: &[i32] = if https { &[80, 443] } else { &[80] };
    let alb_rules = cfg
        .allowed_cidrs
        .iter()
        .flat_map(|cidr| {
            ports.iter().map(move |p| IngressRule::tcp(*p, Source::Cidr(cidr.to_string()), "allowed_cidrs"))
        })
        .collect();
    g.add(
        "alb-security-group",
        &["vpc"],
        format!("create the load balancer's security group: ports {ports:?} from allowed_cidrs"),
        &[(KEY_ALB_SECURITY_GROUP, SG)],
        SecurityGroupStep {
            key: KEY_ALB_SECURITY_GROUP,
            description: "gitlab-provision load balancer".into(),
            rules: alb_rules,
            outlives: vec![],
        },
    );
    g.add(
        "service-security-group",
        &["vpc", "alb-security-group"],
        "create GitLab's security group: port 80 from the load balancer only".into(),
        &[(KEY_SERVICE_SECURITY_GROUP, SG)],
        SecurityGroupStep {
            key: KEY_SERVICE_SECURITY_GROUP,
            description: "gitlab-provision GitLab task".into(),
            rules: vec![IngressRule::tcp(80, Source::Group(KEY_ALB_SECURITY_GROUP), "from the load balancer")],
            outlives: vec![],
        },
    );
    g.add(
        "init-security-group",
        &["vpc"],
        "create the EFS initializer's security group (no ingress)".into(),
        &[(KEY_INIT_SECURITY_GROUP, SG)],
        // Its Lambda interfaces sit in the private subnets: it must go before them.
        SecurityGroupStep {
            key: KEY_INIT_SECURITY_GROUP,
            description: "gitlab-provision EFS initializer".into(),
            rules: vec![],
            outlives: network::PRIVATE_SUBNETS.to_vec(),
        },
    );
    g.add(
        "efs-security-group",
        &["vpc", "service-security-group", "init-security-group"],
        "create the file system's security group: NFS from GitLab and the initializer only".into(),
        &[(KEY_EFS_SECURITY_GROUP, SG)],
        SecurityGroupStep {
            key: KEY_EFS_SECURITY_GROUP,
            description: "gitlab-provision EFS".into(),
            rules: vec![
                IngressRule::tcp(2049, Source::Group(KEY_SERVICE_SECURITY_GROUP), "NFS from GitLab"),
                IngressRule::tcp(2049, Source::Group(KEY_INIT_SECURITY_GROUP), "NFS from the initializer"),
            ],
            outlives: vec![],
        },
    );
    g.add(
        "mount-targets",
        &["file-system", subnets, "efs-security-group"],
        "create a mount target in each private subnet and wait until available".into(),
        &storage::MOUNT_TARGET_KEYS.map(|k| (k, storage::MOUNT_TARGET)),
        storage::CreateMountTargets,
    );
    g.add(
        "init-access-point",
        &["file-system"],
        "create the initializer's root access point".into(),
        &[(storage::KEY_INIT_ACCESS_POINT, storage::ACCESS_POINT)],
        storage::CreateInitAccessPoint,
    );

    g.add(
        "execution-role",
        &["root-secret", "log-group"],
        "create the task execution role: write the log group, read the root secret".into(),
        &[(iam::KEY_EXECUTION_ROLE, iam::ROLE)],
        iam::RoleStep {
            key: iam::KEY_EXECUTION_ROLE,
            service: "ecs-tasks.amazonaws.com",
            managed: &[],
            policy: iam::execution_policy,
            uses: &[secret::KEY_ROOT_SECRET, logs::KEY_LOG_GROUP],
        },
    );
    g.add(
        "task-role",
        &["file-system"],
        "create the task role: mount the file system, ECS Exec".into(),
        &[(iam::KEY_TASK_ROLE, iam::ROLE)],
        iam::RoleStep {
            key: iam::KEY_TASK_ROLE,
            service: "ecs-tasks.amazonaws.com",
            managed: &[],
            policy: iam::task_policy,
            uses: &[storage::KEY_FILE_SYSTEM],
        },
    );
    g.add(
        "init-role",
        &["file-system"],
        "create the initializer's role: VPC access, mount the file system".into(),
        &[(iam::KEY_INIT_ROLE, iam::ROLE)],
        iam::RoleStep {
            key: iam::KEY_INIT_ROLE,
            service: "lambda.amazonaws.com",
            managed: &[iam::LAMBDA_VPC_ACCESS],
            policy: iam::init_policy,
            uses: &[storage::KEY_FILE_SYSTEM],
        },
    );
    g.add(
        "efs-init",
        &["mount-targets", "init-access-point", "init-role", "init-security-group"],
        "run the EFS initializer (creates /srv/gitlab/{data,logs,config}), then delete it".into(),
        &[(efs_init::KEY_EFS_PREPARED, efs_init::MARKER)],
        efs_init::RunEfsInitializer,
    );

    let mut lb_deps = vec![subnets, "alb-security-group"];
    lb_deps.extend(internet_gateway);
    g.add(
        "load-balancer",
        &lb_deps,
        format!(
            "create the internet-facing load balancer (idle timeout {}s) and wait until active",
            load_balancer::IDLE_TIMEOUT_SECONDS
        ),
        &[(load_balancer::KEY_LOAD_BALANCER, load_balancer::LOAD_BALANCER)],
        load_balancer::CreateLoadBalancer { internet_gateway },
    );
    g.add(
        "target-group",
        &["vpc"],
        format!(
            "create GitLab's target group (IP targets, HTTP:80, health check {})",
            load_balancer::HEALTH_CHECK_PATH
        ),
        &[(load_balancer::KEY_TARGET_GROUP, load_balancer::TARGET_GROUP)],
        load_balancer::CreateTargetGroup,
    );
    let listeners: Vec<&str> = if let Some(domain) = &cfg.domain {
        g.add(
            "certificate",
            &[],
            format!(
                "request a certificate for {}.{}, validate it through DNS, wait until issued",
                domain.sub_domain, domain.domain_name
            ),
            &[
                (certificate::KEY_CERTIFICATE, certificate::CERTIFICATE),
                (certificate::KEY_VALIDATION_RECORD, dns::RECORD),
            ],
            certificate::CreateCertificate { domain: domain.clone() },
        );
        g.add(
            "https-listener",
            &["load-balancer", "target-group", "certificate"],
            format!("listen on 443 with {} and forward to GitLab", load_balancer::TLS_POLICY),
            &[(KEY_HTTPS_LISTENER, load_balancer::LISTENER)],
            load_balancer::ListenerStep {
                key: KEY_HTTPS_LISTENER,
                port: 443,
                certificate: Some(certificate::KEY_CERTIFICATE),
                action: load_balancer::ListenerAction::Forward,
            },
        );
        g.add(
            "http-listener",
            &["load-balancer"],
            "answer on 80 with a permanent redirect to HTTPS".into(),
            &[(KEY_HTTP_LISTENER, load_balancer::LISTENER)],
            load_balancer::ListenerStep {
                key: KEY_HTTP_LISTENER,
                port: 80,
                certificate: None,
                action: load_balancer::ListenerAction::RedirectToHttps,
            },
        );
        g.add(
            "dns-alias",
            &["load-balancer"],
            format!("point {}.{} at the load balancer", domain.sub_domain, domain.domain_name),
            &[(dns::KEY_ALIAS_RECORD, dns::RECORD)],
            dns::AliasRecordStep { domain: domain.clone() },
        );
        vec!["https-listener", "http-listener"]
    } else {
        g.add(
            "http-listener",
            &["load-balancer", "target-group"],
            "listen on 80 and forward to GitLab".into(),
            &[(KEY_HTTP_LISTENER, load_balancer::LISTENER)],
            load_balancer::ListenerStep {
                key: KEY_HTTP_LISTENER,
                port: 80,
                certificate: None,
                action: load_balancer::ListenerAction::Forward,
            },
        );
        vec!["http-listener"]
    };

    g.add(
        "cluster",
        &[],
        "create the ECS cluster with Container Insights".into(),
        &[(service::KEY_CLUSTER, service::CLUSTER)],
        service::CreateCluster,
    );
    let mut td_deps = vec!["execution-role", "task-role", "file-system", "root-secret", "log-group"];
    if !https {
        td_deps.push("load-balancer");
    }
    g.add(
        "task-definition",
        &td_deps,
        format!(
            "register the task definition: gitlab/gitlab-ce:{}, {} CPU / {} MiB, EFS volumes",
            cfg.gitlab_image_tag, cfg.task_cpu, cfg.task_memory_mib
        ),
        &[(service::KEY_TASK_DEFINITION, service::TASK_DEFINITION)],
        service::RegisterTaskDefinition { config: cfg.clone() },
    );
    let mut service_deps =
        vec!["cluster", "task-definition", "efs-init", "service-security-group", "target-group", "mount-targets"];
    service_deps.extend(listeners);
    service_deps.extend(egress);
    g.add(
        "service",
        &service_deps,
        "create the Fargate service (1 task, min 0% / max 100%, circuit breaker, ECS Exec)".into(),
        &[(service::KEY_SERVICE, service::SERVICE)],
        service::CreateService,
    );
}

/// What `down --keep-data` keeps: the repositories and the root credentials they go with (and
/// the note that the file system is prepared).
pub fn is_data(kind: &str) -> bool {
    matches!(kind, storage::FILE_SYSTEM | secret::SECRET | efs_init::MARKER)
}

/// Record keys the steps own; a recorded key outside this set is left over from an earlier
/// configuration (e.g. NAT gateway -> NAT instance) and is removed after a successful `up`.
pub fn owned_keys(steps: &[Step<Ctx>]) -> BTreeSet<String> {
    steps.iter().flat_map(|s| s.resources.iter().map(|(k, _)| k.clone())).collect()
}

/// What the configuration would change among the fixed settings of an existing stack, one line
/// each. After `down --keep-data` only data is left, and the network may then be built differently.
pub fn replacements(state: &crate::state::State, wanted: &BTreeMap<String, String>) -> Vec<String> {
    if state.resources.is_empty() {
        return Vec::new();
    }
    let has_network = state.resources.contains_key(network::KEY_VPC);
    let keys: BTreeSet<&String> =
        state.fixed.keys().chain(wanted.keys()).filter(|k| has_network || k.as_str() == "region").collect();
    keys.into_iter()
        .filter_map(|key| {
            let (before, after) = (state.fixed.get(key), wanted.get(key));
            (before != after).then(|| {
                format!(
                    "{key}: the stack has {}, the configuration says {}",
                    before.map_or("none", String::as_str),
                    after.map_or("none", String::as_str)
                )
            })
        })
        .collect()
}

/// Settings that an existing stack cannot change in place (changing them means replacing the
/// network and everything in it).
pub fn fixed_settings(cfg: &StackConfig, region: &str) -> BTreeMap<String, String> {
    let mut fixed = BTreeMap::new();
    fixed.insert("region".to_string(), region.to_string());
    match &cfg.network {
        NetworkConfig::Create { vpc_cidr, .. } => fixed.insert("vpc_cidr".to_string(), vpc_cidr.to_string()),
        NetworkConfig::Import { vpc_id } => fixed.insert("vpc_id".to_string(), vpc_id.clone()),
    };
    fixed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Settings, validate};

    fn graph(extra: impl FnOnce(&mut Settings)) -> Vec<Step<Ctx>> {
        let mut s = Settings { allowed_cidrs: Some(vec!["203.0.113.0/24".into()]), ..Default::default() };
        extra(&mut s);
        build(&validate(&s).unwrap())
    }

    fn deps(steps: &[Step<Ctx>], name: &str) -> Vec<String> {
        steps.iter().find(|s| s.name == name).unwrap_or_else(|| panic!("no step {name}")).deps.clone()
    }

    #[test]
    fn the_service_waits_for_everything_it_needs() {
        for steps in [graph(|_| {}), graph(|s| s.use_nat_instance = Some(true))] {
            crate::engine::run_order(&steps).expect("a valid graph");
            let service = deps(&steps, "service");
            for need in ["efs-init", "http-listener", "private-routes", "task-definition", "service-security-group"] {
                assert!(service.iter().any(|d| d == need), "service does not wait for {need}: {service:?}");
            }
        }
    }

    #[test]
    fn https_adds_certificate_listeners_dns_and_a_preflight_before_everything() {
        let steps = graph(|s| {
            s.domain_name = Some("example.com".into());
            s.sub_domain = Some("git".into());
            s.hosted_zone_id = Some("Z123".into());
        });
        crate::engine::run_order(&steps).expect("a valid graph");
        assert!(deps(&steps, "https-listener").contains(&"certificate".to_string()));
        assert!(deps(&steps, "service").contains(&"https-listener".to_string()));
        for s in steps.iter().filter(|s| s.name != "preflight") {
            assert!(!s.deps.is_empty(), "{} would start before the hosted zone is checked", s.name);
        }
    }

    #[test]
    fn an_imported_vpc_is_checked_before_anything_is_created() {
        let steps = graph(|s| s.vpc_id = Some("vpc-0123456789abcdef0".into()));
        crate::engine::run_order(&steps).expect("a valid graph");
        for s in steps.iter().filter(|s| s.name != "vpc") {
            assert!(!s.deps.is_empty(), "{} would start before the VPC is checked", s.name);
        }
    }
}
