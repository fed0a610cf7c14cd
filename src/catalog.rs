//! The GitLab stack, declared: every step with what it needs, what it creates and what it does,
//! and the one table of resource kinds (operations, discovery, deletion rank). Step order and
//! each record's teardown dependencies are both derived from what the steps need: they are
//! stated once.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use aws_sdk_elasticloadbalancingv2::types::ProtocolEnum;

use crate::aws::Ctx;
use crate::aws::ec2::Ec2;
use crate::config::{Egress, NetworkConfig, StackConfig};
use crate::engine::{Catalog, Discovery, Interrupts, KindPolicy, ResourceOps, Step, StepAction, When};
use crate::keys::{self, Kind};
use crate::steps::load_balancer::{Flavour, ListenerAction, ListenerStep, LoadBalancerStep, TargetGroupStep};
use crate::steps::network::{RouteTableStep, RouteTarget, SubnetPlan, SubnetsStep};
use crate::steps::security_group::{IngressRule, SecurityGroupStep, Source};
use crate::steps::{
    backup, certificate, database, dns, efs_init, iam, kms, logs, nat, network, s3, scaling, secret, service, storage,
    traffic, waf, wake,
};

// ---------------------------------------------------------------------------------------------
// Kinds

/// A kind's row: its operations and its policy.
pub struct KindRow {
    pub ops: &'static dyn ResourceOps<Ctx>,
    pub policy: KindPolicy,
}

impl KindRow {
    /// Part of the stack's data (`down --keep-data` keeps it).
    fn data(mut self) -> Self {
        self.policy.data = true;
        self
    }

    /// Kept by a plain `down` while it holds something.
    fn kept_while_holding(mut self) -> Self {
        self.policy.kept_while_holding = true;
        self
    }

    /// Kept, it keeps the records it needs (see [`KindPolicy::keeps_its_needs`]).
    fn keeps_its_needs(mut self) -> Self {
        self.policy.keeps_its_needs = true;
        self
    }

    /// Deleted by a plain `down` only when empty, or when told to delete what it holds.
    fn refused_while_holding(mut self) -> Self {
        self.policy.refused_while_holding = true;
        self
    }
}

/// What GitLab's task being replaced costs: the old task stops before the new one starts.
const RESTARTS_GITLAB: Interrupts = Interrupts {
    when: &[When::Updated, When::Replaced],
    what: "GitLab's task is replaced (the old one stops before the new one starts): GitLab is down until the new one has booted, typically 5-15 minutes",
};

/// The one table of kinds, a row each: the compiler checks it names every kind, and every
/// field of a row must be given. `key` tells apart records of one kind whose policy differs
/// (the roles and security groups go at different times).
pub fn kind_row(kind: Kind, key: &str) -> KindRow {
    use Discovery::{ByTags, Never};
    let row = |ops: &'static dyn ResourceOps<Ctx>, discovery, rank, interrupts| KindRow {
        ops,
        policy: KindPolicy {
            data: false,
            kept_while_holding: false,
            refused_while_holding: false,
            keeps_its_needs: false,
            interrupts,
            discovery,
            rank,
        },
    };
    let nothing = Interrupts::NOTHING;
    let groups = &Ec2::<crate::steps::security_group::SecurityGroups>::OPS;
    let who_may_connect =
        Interrupts { when: &[When::MembersRemoved], what: "{key} changes who may connect: {changes}" };
    match kind {
        // GitLab's database: never replaced (a new one is empty), kept with its network by
        // --keep-data, deleted with a final snapshot.
        Kind::DbInstance => row(
            &database::DbInstanceOps,
            ByTags,
            3,
            Interrupts {
                when: &[When::Updated, When::Replaced],
                what: "{key} is modified at once or re-created ({changes}): a new class or Multi-AZ setting restarts PostgreSQL, GitLab cannot reach its database for minutes; an instance deleted outside gitlab-provision comes back empty (`gitlab-provision restore` brings back a backup instead)",
            },
        )
        .data()
        .keeps_its_needs(),
        Kind::DbSubnetGroup => row(&database::DbSubnetGroupOps, ByTags, 4, nothing).keeps_its_needs(),
        Kind::Service => row(
            &service::ServiceOps,
            ByTags,
            0,
            Interrupts {
                when: &[When::Replaced, When::SettingChanged("exec")],
                what: "GitLab's task is restarted (its service is replaced, or ECS Exec switched): GitLab is down until the new one has booted, typically 5-15 minutes",
            },
        ),
        // Below the service: what scales it and the function that wakes it go first.
        Kind::Function if key == keys::WAKE_FUNCTION => row(&crate::steps::lambda::FunctionOps, ByTags, -2, nothing),
        Kind::Function => row(&crate::steps::lambda::FunctionOps, ByTags, 0, nothing),
        Kind::Listener => row(
            &crate::steps::load_balancer::ListenerOps,
            Never,
            1,
            // A new certificate or idle timeout interrupts nobody; another port, protocol or target does.
            Interrupts {
                when: &[
                    When::Replaced,
                    When::Removed,
                    When::SettingChanged("port"),
                    When::SettingChanged("protocol"),
                    When::SettingChanged("target"),
                ],
                what: "{key} changes: {changes}",
            },
        ),
        Kind::DnsRecord => row(&dns::RecordOps, Never, 1, nothing),
        Kind::TaskDefinition => row(&service::TaskDefinitionOps, ByTags, 1, RESTARTS_GITLAB),
        // "This file system is prepared" goes with the file system.
        Kind::Marker => row(&efs_init::MarkerOps, Never, 1, nothing).data(),
        Kind::RolePolicy => row(&iam::RolePolicyOps, Never, 1, nothing),
        Kind::AccessPoint => row(&storage::AccessPointOps, Never, 1, nothing),
        Kind::RouteTable => row(&Ec2::<network::RouteTables>::OPS, ByTags, 1, nothing),
        Kind::LoadBalancer => row(
            &crate::steps::load_balancer::LoadBalancerOps,
            ByTags,
            2,
            Interrupts {
                when: &[When::Replaced, When::Removed],
                what: "{key} is replaced or removed: unreachable meanwhile, and its address changes",
            },
        ),
        Kind::Certificate => row(&certificate::CertificateOps, ByTags, 2, nothing),
        Kind::Instance | Kind::NatGateway => row(
            if kind == Kind::Instance { &Ec2::<nat::Instances>::OPS } else { &Ec2::<nat::NatGateways>::OPS },
            ByTags,
            2,
            Interrupts {
                when: &[When::CreatedOnRunningStack, When::Removed],
                what: "the private subnets' outbound route moves to a new NAT: GitLab's open connections to the internet drop",
            },
        ),
        Kind::MountTarget => row(
            &storage::MountTargetOps,
            Never,
            2,
            Interrupts {
                when: &[When::Replaced],
                what: "the file system's mount targets are replaced: GitLab must restart on them",
            },
        ),
        // The roles the task and AWS Backup use go before what they name; the initializer's
        // outlives the initializer's security group (Lambda releases interfaces with its role).
        Kind::Role if key == keys::EXECUTION_ROLE || key == keys::TASK_ROLE || key == keys::BACKUP_ROLE => {
            row(&iam::RoleOps, ByTags, 2, nothing)
        }
        Kind::Role if key == keys::WAKE_ROLE => row(&iam::RoleOps, ByTags, -1, nothing),
        Kind::Role => row(&iam::RoleOps, ByTags, 7, nothing),
        Kind::TargetGroup => row(&crate::steps::load_balancer::TargetGroupOps, ByTags, 3, nothing),
        Kind::FileSystem => row(
            &storage::FileSystemOps,
            ByTags,
            3,
            Interrupts { when: &[When::Replaced], what: "a new, empty file system replaces the recorded one" },
        )
        .data(),
        Kind::Cluster => row(&service::ClusterOps, ByTags, 3, nothing),
        // The root password GitLab first booted with goes with its data.
        Kind::Secret => row(&secret::SecretOps, ByTags, 3, nothing).data(),
        // Backups are never deleted by this tool: a vault that holds some stays.
        Kind::BackupVault => row(&backup::BackupVaultOps, ByTags, 3, nothing).data().kept_while_holding(),
        // A guarded resource keeps its guard as long as it is kept.
        Kind::SecretPolicy => row(&secret::SecretPolicyOps, Never, 1, nothing).data(),
        Kind::FileSystemPolicy => row(&storage::FileSystemPolicyOps, Never, 1, nothing).data(),
        Kind::VaultPolicy => row(&backup::VaultPolicyOps, Never, 1, nothing).data(),
        // The lock stays on a vault kept because it holds backups.
        Kind::VaultLock => row(&backup::VaultLockOps, Never, 1, nothing).data().kept_while_holding(),
        // Off the load balancer before it goes.
        Kind::WebAcl => row(&waf::WebAclOps, Never, 1, nothing),
        Kind::FlowLog => row(&Ec2::<traffic::FlowLogs>::OPS, ByTags, 2, nothing),
        // Its subnets go back to the VPC's default ACL first.
        Kind::NetworkAcl => row(&Ec2::<traffic::NetworkAcls>::OPS, ByTags, 6, nothing),
        // GitLab's uploads, artifacts and packages: deleted only when empty or when asked.
        Kind::Bucket if keys::is_object_bucket(key) => {
            row(&s3::BucketOps, ByTags, 8, nothing).data().refused_while_holding()
        }
        // The logs it holds are audit records: kept with --keep-data.
        Kind::Bucket => row(&s3::BucketOps, ByTags, 8, nothing).data(),
        // Deregistering the target takes its actions and policies with it; the alarm first.
        Kind::Alarm => row(&wake::AlarmOps, Never, -4, nothing),
        Kind::ScheduledAction => row(&scaling::ScheduledActionOps, Never, -3, nothing),
        Kind::ScalingPolicy => row(&scaling::ScalingPolicyOps, Never, -3, nothing),
        Kind::ScalableTarget => row(&scaling::ScalableTargetOps, Never, -2, nothing),
        // After everything it encrypts; kept with the data it encrypts.
        Kind::Key => row(&kms::KeyOps, ByTags, 8, nothing).data(),
        // Groups that admit other groups go before those groups.
        Kind::SecurityGroup if key == keys::EFS_SECURITY_GROUP || key == keys::DB_SECURITY_GROUP => {
            row(groups, ByTags, 4, who_may_connect).keeps_its_needs()
        }
        Kind::SecurityGroup if key == keys::SERVICE_SECURITY_GROUP || key == keys::NAT_SECURITY_GROUP => {
            row(groups, ByTags, 5, who_may_connect).keeps_its_needs()
        }
        Kind::SecurityGroup => row(groups, ByTags, 6, who_may_connect).keeps_its_needs(),
        Kind::LogGroup => row(&logs::LogGroupOps, ByTags, 7, nothing),
        Kind::ElasticIp => row(&Ec2::<nat::Addresses>::OPS, ByTags, 7, nothing),
        Kind::Subnet => row(&Ec2::<network::Subnets>::OPS, ByTags, 7, nothing).keeps_its_needs(),
        Kind::InternetGateway => row(&Ec2::<network::InternetGateways>::OPS, ByTags, 7, nothing),
        Kind::Vpc => row(&Ec2::<network::Vpcs>::OPS, ByTags, 8, nothing),
    }
}

/// Every resource kind this tool records, for teardown and status.
pub struct Kinds;

impl Catalog<Ctx> for Kinds {
    fn ops(&self, kind: &str) -> Option<&dyn ResourceOps<Ctx>> {
        Kind::parse(kind).map(|k| kind_row(k, "").ops)
    }

    fn policy(&self, kind: &str, key: &str) -> Option<KindPolicy> {
        Kind::parse(kind).map(|k| kind_row(k, key).policy)
    }

    fn discoverable(&self) -> Vec<&'static str> {
        Kind::ALL
            .iter()
            .filter(|k| kind_row(**k, "").policy.discovery == Discovery::ByTags)
            .map(|k| k.as_str())
            .collect()
    }
}

// ---------------------------------------------------------------------------------------------
// The stack's steps

/// A step being declared.
pub struct Declare<'a> {
    catalog: &'a mut Stack,
    step: Step<Ctx>,
}

impl Declare<'_> {
    /// Records this step reads: it runs after the steps that create them, and its records are
    /// deleted before them.
    pub fn needs(mut self, keys: &[&str]) -> Self {
        self.step.needs.extend(keys.iter().map(|k| k.to_string()));
        self
    }

    /// Records that must outlive this step's though it does not read them.
    pub fn holds(mut self, keys: &[&str]) -> Self {
        self.step.holds.extend(keys.iter().map(|k| k.to_string()));
        self
    }

    pub fn creates(mut self, key: &str, kind: Kind) -> Self {
        self.step.creates.push((key.to_string(), kind.to_string()));
        self
    }

    pub fn creates_all(mut self, keys: &[&str], kind: Kind) -> Self {
        self.step.creates.extend(keys.iter().map(|k| (k.to_string(), kind.to_string())));
        self
    }

    pub fn describe(mut self, text: impl Into<String>) -> Self {
        self.step.description = text.into();
        self
    }

    /// A check of the configuration against the account: everything else waits for it, and
    /// when it fails nothing was created.
    pub fn preflight(mut self) -> Self {
        self.step.preflight = true;
        self
    }

    pub fn runs(mut self, action: impl StepAction<Ctx> + 'static) {
        self.step.action = Arc::new(action);
        self.catalog.steps.push(self.step);
    }
}

struct Nothing;

#[async_trait::async_trait]
impl StepAction<Ctx> for Nothing {
    async fn apply(&self, _: &Ctx, _: &crate::engine::StepScope) -> anyhow::Result<crate::engine::Summary> {
        Ok(crate::engine::Summary::new("nothing to do", false))
    }
}

#[derive(Default)]
pub struct Stack {
    steps: Vec<Step<Ctx>>,
}

impl Stack {
    fn step(&mut self, name: &str) -> Declare<'_> {
        let step = Step {
            name: name.to_string(),
            after: Vec::new(),
            needs: Vec::new(),
            holds: Vec::new(),
            creates: Vec::new(),
            description: String::new(),
            preflight: false,
            action: Arc::new(Nothing),
        };
        Declare { catalog: self, step }
    }

    /// Orders the steps: each runs after the steps creating what it needs, and after every
    /// pre-flight check.
    fn finish(mut self) -> Vec<Step<Ctx>> {
        let creator: BTreeMap<String, String> =
            self.steps.iter().flat_map(|s| s.creates.iter().map(move |(k, _)| (k.clone(), s.name.clone()))).collect();
        let preflight: Vec<String> = self.steps.iter().filter(|s| s.preflight).map(|s| s.name.clone()).collect();
        for step in &mut self.steps {
            let mut after: BTreeSet<String> = step
                .needs
                .iter()
                .map(|need| creator.get(need).cloned().unwrap_or_else(|| format!("<nothing creates {need}>")))
                .collect();
            if !step.preflight {
                after.extend(preflight.iter().cloned());
            }
            after.remove(&step.name);
            step.after = after.into_iter().collect();
        }
        self.steps
    }
}

/// The steps of the stack `cfg` describes.
pub fn build(cfg: &StackConfig) -> Vec<Step<Ctx>> {
    let cfg = Arc::new(cfg.clone());
    let mut s = Stack::default();
    let network = declare_network(&mut s, &cfg);
    declare_data(&mut s, &cfg);
    declare_security_groups(&mut s, &cfg);
    declare_database(&mut s, &cfg);
    declare_roles_and_initializer(&mut s, &cfg);
    let mut listeners = declare_web_entrance(&mut s, &cfg, &network);
    listeners.extend(declare_ssh(&mut s, &cfg, &network));
    declare_gitlab(&mut s, &cfg, &network, listeners);
    s.finish()
}

/// What the GitLab steps need of the network.
struct Network {
    /// Public subnets need the internet gateway before a load balancer can use them.
    internet_gateway: Option<&'static str>,
    /// The private subnets' outbound route (GitLab pulls its image through it).
    egress: Option<&'static str>,
}

fn declare_network(s: &mut Stack, cfg: &Arc<StackConfig>) -> Network {
    s.step(keys::STEP_QUOTAS)
        .describe("check that the account's quotas have room for what this run creates")
        .preflight()
        .runs(crate::steps::quotas::CheckQuotas { config: cfg.clone() });
    if let Some(domain) = &cfg.domain {
        s.step(keys::STEP_PREFLIGHT)
            .describe(format!("check that hosted zone {} serves {}", domain.hosted_zone_id, domain.domain_name))
            .preflight()
            .runs(dns::CheckHostedZone { domain: domain.clone() });
    }
    match &cfg.network {
        NetworkConfig::Import { vpc_id } => {
            s.step(keys::VPC)
                .creates(keys::VPC, Kind::Vpc)
                .creates_all(&keys::SUBNETS, Kind::Subnet)
                .describe(format!(
                    "check and import {vpc_id}: two public and two private subnets in distinct zones, DNS on"
                ))
                .preflight()
                .runs(network::ImportVpc { vpc_id: vpc_id.clone() });
            Network { internet_gateway: None, egress: None }
        }
        NetworkConfig::Create { vpc_cidr, egress, zones } => {
            let instance_type = (*egress == Egress::NatInstance).then_some(nat::NAT_INSTANCE_TYPE);
            if let Some(zones) = zones {
                s.step(keys::STEP_ZONE_CHECK)
                    .describe(format!(
                        "check that {} and {} are zones of the region{}",
                        zones[0],
                        zones[1],
                        instance_type.map(|t| format!(" offering {t}")).unwrap_or_default()
                    ))
                    .preflight()
                    .runs(network::CheckZones { zones: zones.clone(), instance_type });
            }
            s.step(keys::VPC)
                .creates(keys::VPC, Kind::Vpc)
                .describe(format!("create the VPC {vpc_cidr} with DNS support and hostnames"))
                .runs(network::VpcStep { cidr: *vpc_cidr });
            let plan = SubnetPlan::new(*vpc_cidr);
            s.step(keys::STEP_SUBNETS)
                .needs(&[keys::VPC])
                .creates_all(&keys::SUBNETS, Kind::Subnet)
                .describe(format!("create four subnets in two zones ({})", plan.describe()))
                .runs(SubnetsStep { plan, zones: zones.clone(), instance_type });
            s.step(keys::INTERNET_GATEWAY)
                .needs(&[keys::VPC])
                .creates(keys::INTERNET_GATEWAY, Kind::InternetGateway)
                .describe("create and attach the internet gateway")
                .runs(network::InternetGatewayStep);
            s.step(keys::ROUTE_TABLE_PUBLIC)
                .needs(&[keys::VPC, keys::INTERNET_GATEWAY, keys::SUBNET_PUBLIC_A, keys::SUBNET_PUBLIC_B])
                .creates(keys::ROUTE_TABLE_PUBLIC, Kind::RouteTable)
                .describe("route the public subnets to the internet gateway")
                .runs(RouteTableStep {
                    key: keys::ROUTE_TABLE_PUBLIC,
                    subnets: keys::PUBLIC_SUBNETS,
                    target: RouteTarget::InternetGateway,
                });
            let target = match egress {
                // No NAT: GitLab runs in the public subnets, out through the internet gateway;
                // the private subnets (the file system's mount targets) keep the VPC's main
                // route table, which reaches nothing outside the VPC.
                Egress::PublicIp => {
                    declare_traffic_records(s, cfg, *vpc_cidr);
                    return Network {
                        internet_gateway: Some(keys::INTERNET_GATEWAY),
                        egress: Some(keys::ROUTE_TABLE_PUBLIC),
                    };
                }
                Egress::NatGateway => {
                    s.step(keys::NAT_EIP)
                        .creates(keys::NAT_EIP, Kind::ElasticIp)
                        .describe("allocate the NAT gateway's Elastic IP")
                        .runs(nat::ElasticIpStep);
                    s.step(keys::NAT_GATEWAY)
                        .needs(&[keys::NAT_SUBNET, keys::NAT_EIP, keys::INTERNET_GATEWAY])
                        .creates(keys::NAT_GATEWAY, Kind::NatGateway)
                        .describe("create the NAT gateway in public subnet a and wait until available")
                        .runs(nat::NatGatewayStep);
                    RouteTarget::NatGateway
                }
                Egress::NatInstance => {
                    s.step(keys::NAT_SECURITY_GROUP)
                        .needs(&[keys::VPC])
                        .creates(keys::NAT_SECURITY_GROUP, Kind::SecurityGroup)
                        .describe("create the NAT instance's security group: all traffic from the VPC")
                        .runs(nat::nat_security_group(*vpc_cidr));
                    s.step(keys::NAT_INSTANCE)
                        .needs(&[keys::NAT_SUBNET, keys::NAT_SECURITY_GROUP, keys::INTERNET_GATEWAY])
                        .creates(keys::NAT_INSTANCE, Kind::Instance)
                        .describe(format!(
                            "launch a {} NAT instance (Amazon Linux 2023, IMDSv2) and wait until running",
                            nat::NAT_INSTANCE_TYPE
                        ))
                        .runs(nat::NatInstanceStep);
                    RouteTarget::NatInstance
                }
            };
            s.step(keys::ROUTE_TABLE_PRIVATE)
                .needs(&[keys::VPC, target.key(), keys::SUBNET_PRIVATE_A, keys::SUBNET_PRIVATE_B])
                .creates(keys::ROUTE_TABLE_PRIVATE, Kind::RouteTable)
                .describe(format!("route the private subnets' outbound traffic through the {}", target.key()))
                .runs(RouteTableStep { key: keys::ROUTE_TABLE_PRIVATE, subnets: keys::PRIVATE_SUBNETS, target });
            declare_traffic_records(s, cfg, *vpc_cidr);
            Network { internet_gateway: Some(keys::INTERNET_GATEWAY), egress: Some(keys::ROUTE_TABLE_PRIVATE) }
        }
    }
}

/// In a VPC the tool creates: a network ACL per tier; under `hardening = "strict"`, the flow log.
fn declare_traffic_records(s: &mut Stack, cfg: &Arc<StackConfig>, vpc_cidr: ipnet::Ipv4Net) {
    for (key, public, subnets) in [
        (keys::NETWORK_ACL_PUBLIC, true, keys::PUBLIC_SUBNETS),
        (keys::NETWORK_ACL_PRIVATE, false, keys::PRIVATE_SUBNETS),
    ] {
        let rules = traffic::rules(public, vpc_cidr, cfg).len();
        s.step(key)
            .needs(&[keys::VPC, subnets[0], subnets[1]])
            .creates(key, Kind::NetworkAcl)
            .describe(format!(
                "give the {} subnets a network ACL of {rules} rules (the stack's ports, the return range)",
                if public { "public" } else { "private" }
            ))
            .runs(traffic::NetworkAclStep { key, public, vpc_cidr, config: cfg.clone() });
    }
    if !cfg.strict() {
        return;
    }
    s.step(keys::FLOW_LOG)
        .needs(&[keys::VPC, keys::LOG_BUCKET])
        .creates(keys::FLOW_LOG, Kind::FlowLog)
        .describe("log the VPC's traffic (accepted and rejected) to the log bucket")
        .runs(traffic::FlowLogStep);
}

fn cidr_rules(cfg: &StackConfig, ports: &[i32]) -> Vec<IngressRule> {
    cfg.allowed_cidrs
        .iter()
        .flat_map(|cidr| {
            ports.iter().map(move |p| IngressRule::tcp(*p, Source::Cidr(cidr.to_string()), "allowed_cidrs"))
        })
        .collect()
}

/// What GitLab keeps and writes: its password, logs, file system and backup vault.
fn declare_data(s: &mut Stack, cfg: &StackConfig) {
    let stack = &cfg.stack;
    let strict = cfg.strict();
    let key: &[&str] = &[keys::KEY];
    s.step(keys::KEY)
        .creates(keys::KEY, Kind::Key)
        .describe("create the stack's KMS key for its log groups and root secret (rotated yearly)")
        .runs(kms::KeyStep);
    s.step(keys::ROOT_SECRET)
        .needs(key)
        .creates(keys::ROOT_SECRET, Kind::Secret)
        .describe("generate GitLab's root password into Secrets Manager, encrypted with the stack's key")
        .runs(secret::RootSecretStep { email: cfg.gitlab_root_email.clone(), encrypted: true });
    let mut groups = vec![
        (keys::LOG_GROUP, logs::gitlab_log_group(stack), "GitLab's log group"),
        (
            keys::INIT_LOG_GROUP,
            logs::function_log_group(&keys::names::init_function(stack)),
            "the initializer's Lambda log group",
        ),
        (
            keys::INSIGHTS_LOG_GROUP,
            logs::insights_log_group(&keys::names::cluster(stack)),
            "Container Insights' log group",
        ),
    ];
    if cfg.exec {
        groups.push((keys::EXEC_LOG_GROUP, logs::exec_log_group(stack), "the ECS Exec sessions' log group"));
    }
    if strict {
        groups.push((keys::WAF_LOG_GROUP, waf::waf_log_group(stack), "the web ACL's log group"));
    }
    let retention_days = logs::RETENTION_DAYS;
    for (log_key, name, what) in groups {
        s.step(log_key)
            .needs(key)
            .creates(log_key, Kind::LogGroup)
            .describe(format!(
                "create {what} {name} with {retention_days}-day retention, encrypted with the stack's key"
            ))
            .runs(logs::LogGroupStep { key: log_key, name, retention_days, encrypted: true });
    }
    if strict {
        s.step(keys::LOG_BUCKET)
            .creates(keys::LOG_BUCKET, Kind::Bucket)
            .describe(format!(
                "create the log bucket for load-balancer access logs and flow logs (private, TLS only, {} days)",
                s3::LOG_DAYS
            ))
            .runs(s3::LogBucketStep);
    }
    if cfg.object_storage {
        for (key, object_type) in keys::OBJECT_BUCKETS {
            s.step(key)
                .creates(key, Kind::Bucket)
                .describe(format!(
                    "create the bucket for GitLab's {object_type} (private, TLS only, encrypted, versioned)"
                ))
                .runs(s3::ObjectBucketStep { key, object_type });
        }
    }
    s.step(keys::FILE_SYSTEM)
        .creates(keys::FILE_SYSTEM, Kind::FileSystem)
        .describe("create the EFS file system (encrypted, elastic throughput, backups on)")
        .runs(storage::FileSystemStep { ia_days: cfg.efs_ia_days });
    s.step(keys::BACKUP_VAULT)
        .creates(keys::BACKUP_VAULT, Kind::BackupVault)
        .describe(format!("create the backup vault {} for `backup`", backup::vault_name(stack)))
        .runs(backup::BackupVaultStep);
    if strict {
        s.step(keys::VAULT_LOCK)
            .needs(&[keys::BACKUP_VAULT])
            .creates(keys::VAULT_LOCK, Kind::VaultLock)
            .describe(format!(
                "lock the backup vault: backups kept at least {} days (governance mode)",
                backup::MIN_RETENTION_DAYS
            ))
            .runs(backup::VaultLockStep);
    }
}

/// Who may reach what.
fn declare_security_groups(s: &mut Stack, cfg: &StackConfig) {
    let https = cfg.domain.is_some();
    let ports: &[i32] = if https { &[80, 443] } else { &[80] };
    s.step(keys::ALB_SECURITY_GROUP)
        .needs(&[keys::VPC])
        .creates(keys::ALB_SECURITY_GROUP, Kind::SecurityGroup)
        .describe(format!("create the load balancer's security group: ports {ports:?} from allowed_cidrs"))
        .runs(SecurityGroupStep {
            key: keys::ALB_SECURITY_GROUP,
            description: "gitlab-provision load balancer".into(),
            rules: cidr_rules(cfg, ports),
        });
    let mut service_rules =
        vec![IngressRule::tcp(80, Source::Group(keys::ALB_SECURITY_GROUP), "from the load balancer")];
    if let Some(port) = cfg.ssh_port {
        s.step(keys::SSH_SECURITY_GROUP)
            .needs(&[keys::VPC])
            .creates(keys::SSH_SECURITY_GROUP, Kind::SecurityGroup)
            .describe(format!("create the SSH load balancer's security group: port {port} from allowed_cidrs"))
            .runs(SecurityGroupStep {
                key: keys::SSH_SECURITY_GROUP,
                description: "gitlab-provision SSH load balancer".into(),
                rules: cidr_rules(cfg, &[i32::from(port)]),
            });
        service_rules.push(IngressRule::tcp(22, Source::Group(keys::SSH_SECURITY_GROUP), "SSH from its load balancer"));
    }
    let mut service_group_needs = vec![keys::VPC];
    service_group_needs.extend(IngressRule::groups(&service_rules));
    s.step(keys::SERVICE_SECURITY_GROUP)
        .needs(&service_group_needs)
        .creates(keys::SERVICE_SECURITY_GROUP, Kind::SecurityGroup)
        .describe(format!(
            "create GitLab's security group: port 80{} from its load balancers only",
            if cfg.ssh_port.is_some() { " and 22" } else { "" }
        ))
        .runs(SecurityGroupStep {
            key: keys::SERVICE_SECURITY_GROUP,
            description: "gitlab-provision GitLab task".into(),
            rules: service_rules,
        });
    s.step(keys::INIT_SECURITY_GROUP)
        .needs(&[keys::VPC])
        // Lambda's interfaces sit in the private subnets, and Lambda releases them on its own
        // schedule, which its role must outlive.
        .holds(&[keys::SUBNET_PRIVATE_A, keys::SUBNET_PRIVATE_B, keys::INIT_ROLE])
        .creates(keys::INIT_SECURITY_GROUP, Kind::SecurityGroup)
        .describe("create the EFS initializer's security group (no ingress)")
        .runs(SecurityGroupStep {
            key: keys::INIT_SECURITY_GROUP,
            description: "gitlab-provision EFS initializer".into(),
            rules: vec![],
        });
    let efs_rules = vec![
        IngressRule::tcp(2049, Source::Group(keys::SERVICE_SECURITY_GROUP), "NFS from GitLab"),
        IngressRule::tcp(2049, Source::Group(keys::INIT_SECURITY_GROUP), "NFS from the initializer"),
    ];
    s.step(keys::EFS_SECURITY_GROUP)
        .needs(&[keys::VPC, keys::SERVICE_SECURITY_GROUP, keys::INIT_SECURITY_GROUP])
        .creates(keys::EFS_SECURITY_GROUP, Kind::SecurityGroup)
        .describe("create the file system's security group: NFS from GitLab and the initializer only")
        .runs(SecurityGroupStep {
            key: keys::EFS_SECURITY_GROUP,
            description: "gitlab-provision EFS".into(),
            rules: efs_rules,
        });
    s.step(keys::STEP_MOUNT_TARGETS)
        .needs(&[keys::FILE_SYSTEM, keys::SUBNET_PRIVATE_A, keys::SUBNET_PRIVATE_B, keys::EFS_SECURITY_GROUP])
        .creates_all(&keys::MOUNT_TARGETS, Kind::MountTarget)
        .describe("create a mount target in each private subnet and wait until available")
        .runs(storage::MountTargetsStep);
}

/// With `database = "rds"`: GitLab's PostgreSQL on RDS in the private subnets, reached by
/// GitLab's tasks only.
fn declare_database(s: &mut Stack, cfg: &Arc<StackConfig>) {
    let Some(settings) = &cfg.database else { return };
    s.step(keys::DB_SECURITY_GROUP)
        .needs(&[keys::VPC, keys::SERVICE_SECURITY_GROUP])
        .creates(keys::DB_SECURITY_GROUP, Kind::SecurityGroup)
        .describe("create the database's security group: PostgreSQL from GitLab's tasks only")
        .runs(SecurityGroupStep {
            key: keys::DB_SECURITY_GROUP,
            description: "gitlab-provision database".into(),
            rules: vec![IngressRule::tcp(
                database::DB_PORT,
                Source::Group(keys::SERVICE_SECURITY_GROUP),
                "PostgreSQL from GitLab",
            )],
        });
    s.step(keys::DB_SUBNET_GROUP)
        .needs(&keys::PRIVATE_SUBNETS)
        .creates(keys::DB_SUBNET_GROUP, Kind::DbSubnetGroup)
        .describe("create the DB subnet group: the private subnets of both zones")
        .runs(database::DbSubnetGroupStep);
    s.step(keys::DB_INSTANCE)
        .needs(&[keys::DB_SUBNET_GROUP, keys::DB_SECURITY_GROUP, keys::KEY])
        .creates(keys::DB_INSTANCE, Kind::DbInstance)
        .describe(format!(
            "create GitLab's PostgreSQL on RDS ({}, {} GiB{}, encrypted with the stack's key, private, deletion protection, backups {} days, password managed by RDS); takes minutes",
            settings.instance_class,
            settings.storage_gb,
            if settings.multi_az { ", Multi-AZ" } else { "" },
            settings.backup_retention_days
        ))
        .runs(database::DbInstanceStep { config: cfg.clone(), settings: settings.clone() });
}

/// The roles, and the initializer that prepares the file system once.
fn declare_roles_and_initializer(s: &mut Stack, cfg: &Arc<StackConfig>) {
    let registry = cfg.gitlab_image_credentials.clone();
    let ecr = cfg.image_in_ecr();
    let mut execution_needs = vec![keys::ROOT_SECRET, keys::LOG_GROUP, keys::KEY];
    let database = cfg.database.is_some();
    if database {
        execution_needs.push(keys::DB_INSTANCE);
    }
    s.step(keys::EXECUTION_ROLE)
        .needs(&execution_needs)
        .creates(keys::EXECUTION_ROLE, Kind::Role)
        .describe("create the task execution role: write the log group, read the root secret")
        .runs(iam::RoleStep {
            key: keys::EXECUTION_ROLE,
            service: "ecs-tasks.amazonaws.com",
            managed: &[],
            policy: Box::new(move |ctx, env| iam::execution_policy(ctx, env, registry.as_deref(), ecr, database)),
        });
    let mut task_role_needs = vec![keys::FILE_SYSTEM];
    let mut task_rights = vec!["mount the file system"];
    if cfg.exec {
        task_role_needs.push(keys::EXEC_LOG_GROUP);
        task_rights.push("ECS Exec and its session log");
    }
    if cfg.object_storage {
        task_role_needs.extend(keys::OBJECT_BUCKETS.map(|(key, _)| key));
        task_rights.push("read and write GitLab's buckets");
    }
    let (exec, objects) = (cfg.exec, cfg.object_storage);
    s.step(keys::TASK_ROLE)
        .needs(&task_role_needs)
        .creates(keys::TASK_ROLE, Kind::Role)
        .describe(format!("create the task role: {}", task_rights.join(", ")))
        .runs(iam::RoleStep {
            key: keys::TASK_ROLE,
            service: "ecs-tasks.amazonaws.com",
            managed: &[],
            policy: Box::new(move |ctx, env| iam::task_policy(ctx, env, exec, objects)),
        });
    s.step(keys::INIT_ROLE)
        .creates(keys::INIT_ROLE, Kind::Role)
        .describe("create the initializer's role: VPC access (its file-system rights are granted only while it runs)")
        .runs(iam::RoleStep {
            key: keys::INIT_ROLE,
            service: "lambda.amazonaws.com",
            managed: &[iam::LAMBDA_VPC_ACCESS],
            policy: Box::new(iam::no_inline_policy),
        });
    s.step(keys::BACKUP_ROLE)
        .needs(&[keys::FILE_SYSTEM, keys::BACKUP_VAULT])
        .creates(keys::BACKUP_ROLE, Kind::Role)
        .describe("create AWS Backup's role for `backup` and `restore`: the stack's file system and vault only")
        .runs(iam::RoleStep {
            key: keys::BACKUP_ROLE,
            service: "backup.amazonaws.com",
            managed: &[],
            policy: Box::new(iam::backup_policy),
        });
    // Who may read the password, mount the data and delete the backups.
    s.step(keys::ROOT_SECRET_POLICY)
        .needs(&[keys::ROOT_SECRET, keys::EXECUTION_ROLE])
        .creates(keys::ROOT_SECRET_POLICY, Kind::SecretPolicy)
        .describe("let only GitLab's execution role and the stack's admins read the root secret")
        .runs(secret::SecretPolicyStep { config: cfg.clone() });
    s.step(keys::FILE_SYSTEM_POLICY)
        .needs(&[keys::FILE_SYSTEM, keys::TASK_ROLE, keys::INIT_ROLE])
        .creates(keys::FILE_SYSTEM_POLICY, Kind::FileSystemPolicy)
        .describe("require TLS on the file system, and let only GitLab and its initializer mount it")
        .runs(storage::FileSystemPolicyStep);
    s.step(keys::BACKUP_VAULT_POLICY)
        .needs(&[keys::BACKUP_VAULT])
        .creates(keys::BACKUP_VAULT_POLICY, Kind::VaultPolicy)
        .describe("let only the stack's admins delete or shorten its backups")
        .runs(backup::VaultPolicyStep { config: cfg.clone() });
    s.step(keys::EFS_PREPARED)
        .needs(&[
            keys::FILE_SYSTEM,
            keys::MOUNT_TARGET_A,
            keys::MOUNT_TARGET_B,
            keys::INIT_ROLE,
            keys::INIT_SECURITY_GROUP,
            keys::SUBNET_PRIVATE_A,
            keys::SUBNET_PRIVATE_B,
            keys::INIT_LOG_GROUP,
        ])
        .creates(keys::EFS_PREPARED, Kind::Marker)
        .creates(keys::INIT_ACCESS_POINT, Kind::AccessPoint)
        .creates(keys::INIT_ROLE_POLICY, Kind::RolePolicy)
        .creates(keys::INIT_FUNCTION, Kind::Function)
        .describe("run the EFS initializer (creates /srv/gitlab/{data,logs,config}), then remove it and its access point and rights")
        .runs(efs_init::RunEfsInitializer);
}

/// The load balancer, its listeners, and with a domain the certificate and DNS name; returns
/// the listeners the service waits for.
fn declare_web_entrance(s: &mut Stack, cfg: &StackConfig, net: &Network) -> Vec<&'static str> {
    let mut lb_needs = vec![keys::SUBNET_PUBLIC_A, keys::SUBNET_PUBLIC_B, keys::ALB_SECURITY_GROUP];
    lb_needs.extend(net.internet_gateway);
    let strict = cfg.strict();
    lb_needs.extend(strict.then_some(keys::LOG_BUCKET));
    s.step(keys::LOAD_BALANCER)
        .needs(&lb_needs)
        .creates(keys::LOAD_BALANCER, Kind::LoadBalancer)
        .describe(format!(
            "create the internet-facing load balancer (idle timeout {}s, deletion protection{}); GitLab starts while it provisions",
            crate::steps::load_balancer::IDLE_TIMEOUT_SECONDS,
            if strict { ", access logs to the log bucket" } else { "" }
        ))
        .runs(LoadBalancerStep {
            key: keys::LOAD_BALANCER,
            flavour: Flavour::Application,
            security_group: keys::ALB_SECURITY_GROUP,
            access_logs: strict,
        });
    if strict {
        s.step(keys::WEB_ACL)
            .needs(&[keys::LOAD_BALANCER, keys::WAF_LOG_GROUP])
            .creates(keys::WEB_ACL, Kind::WebAcl)
            .describe(format!(
                "put a WAF web ACL with AWS's common rule set in front of the load balancer (counting {})",
                waf::COUNTED_RULES.join(", ")
            ))
            .runs(waf::WebAclStep);
    }
    s.step(keys::TARGET_GROUP)
        .needs(&[keys::VPC])
        .creates(keys::TARGET_GROUP, Kind::TargetGroup)
        .describe(format!(
            "create GitLab's target group (IP targets, HTTP:80, health check {})",
            crate::steps::load_balancer::HEALTH_CHECK_PATH
        ))
        .runs(TargetGroupStep { key: keys::TARGET_GROUP, flavour: Flavour::Application, port: 80 });
    let mut listeners = vec![keys::LISTENER_HTTP];
    if let Some(domain) = &cfg.domain {
        s.step(keys::CERTIFICATE)
            .creates(keys::CERTIFICATE, Kind::Certificate)
            .creates(keys::CERTIFICATE_VALIDATION_RECORD, Kind::DnsRecord)
            .describe(format!(
                "request a certificate for {}, validate it through DNS, wait until issued",
                domain.fqdn()
            ))
            .runs(certificate::CertificateStep { domain: domain.clone() });
        s.step(keys::LISTENER_HTTPS)
            .needs(&[keys::LOAD_BALANCER, keys::TARGET_GROUP, keys::CERTIFICATE])
            .creates(keys::LISTENER_HTTPS, Kind::Listener)
            .describe(format!("listen on 443 with {} and forward to GitLab", crate::steps::load_balancer::TLS_POLICY))
            .runs(ListenerStep {
                key: keys::LISTENER_HTTPS,
                load_balancer: keys::LOAD_BALANCER,
                port: 443,
                protocol: ProtocolEnum::Https,
                certificate: Some(keys::CERTIFICATE),
                action: ListenerAction::Forward(keys::TARGET_GROUP),
            });
        s.step(keys::LISTENER_HTTP)
            .needs(&[keys::LOAD_BALANCER])
            .creates(keys::LISTENER_HTTP, Kind::Listener)
            .describe("answer on 80 with a permanent redirect to HTTPS")
            .runs(ListenerStep {
                key: keys::LISTENER_HTTP,
                load_balancer: keys::LOAD_BALANCER,
                port: 80,
                protocol: ProtocolEnum::Http,
                certificate: None,
                action: ListenerAction::RedirectToHttps,
            });
        s.step(keys::DNS_ALIAS)
            .needs(&[keys::LOAD_BALANCER])
            .creates(keys::DNS_ALIAS, Kind::DnsRecord)
            .describe(format!("point {} at the load balancer", domain.fqdn()))
            .runs(dns::AliasRecordStep {
                key: keys::DNS_ALIAS,
                name: dns::gitlab_name(domain),
                zone: domain.hosted_zone_id.clone(),
                load_balancer: keys::LOAD_BALANCER,
            });
        listeners.push(keys::LISTENER_HTTPS);
    } else {
        s.step(keys::LISTENER_HTTP)
            .needs(&[keys::LOAD_BALANCER, keys::TARGET_GROUP])
            .creates(keys::LISTENER_HTTP, Kind::Listener)
            .describe("listen on 80 and forward to GitLab")
            .runs(ListenerStep {
                key: keys::LISTENER_HTTP,
                load_balancer: keys::LOAD_BALANCER,
                port: 80,
                protocol: ProtocolEnum::Http,
                certificate: None,
                action: ListenerAction::Forward(keys::TARGET_GROUP),
            });
    }
    listeners
}

/// Git over SSH, when on: the network load balancer, its listener and DNS name; returns its
/// listener for the service to wait for.
fn declare_ssh(s: &mut Stack, cfg: &StackConfig, net: &Network) -> Option<&'static str> {
    let port = cfg.ssh_port?;
    let mut nlb_needs = vec![keys::SUBNET_PUBLIC_A, keys::SUBNET_PUBLIC_B, keys::SSH_SECURITY_GROUP];
    nlb_needs.extend(net.internet_gateway);
    s.step(keys::SSH_LOAD_BALANCER)
        .needs(&nlb_needs)
        .creates(keys::SSH_LOAD_BALANCER, Kind::LoadBalancer)
        .describe(
            "create the internet-facing network load balancer for SSH (cross-zone); GitLab starts while it provisions",
        )
        .runs(LoadBalancerStep {
            key: keys::SSH_LOAD_BALANCER,
            flavour: Flavour::Network,
            security_group: keys::SSH_SECURITY_GROUP,
            // A network load balancer logs TLS listeners only; SSH is plain TCP.
            access_logs: false,
        });
    s.step(keys::SSH_TARGET_GROUP)
        .needs(&[keys::VPC])
        .creates(keys::SSH_TARGET_GROUP, Kind::TargetGroup)
        .describe("create GitLab's SSH target group (IP targets, TCP:22, TCP health check)")
        .runs(TargetGroupStep { key: keys::SSH_TARGET_GROUP, flavour: Flavour::Network, port: 22 });
    s.step(keys::LISTENER_SSH)
        .needs(&[keys::SSH_LOAD_BALANCER, keys::SSH_TARGET_GROUP])
        .creates(keys::LISTENER_SSH, Kind::Listener)
        .describe(format!("listen on TCP {port} and forward to GitLab's SSH"))
        .runs(ListenerStep {
            key: keys::LISTENER_SSH,
            load_balancer: keys::SSH_LOAD_BALANCER,
            port: i32::from(port),
            protocol: ProtocolEnum::Tcp,
            certificate: None,
            action: ListenerAction::Forward(keys::SSH_TARGET_GROUP),
        });
    if let Some(domain) = &cfg.domain {
        s.step(keys::DNS_SSH)
            .needs(&[keys::SSH_LOAD_BALANCER])
            .creates(keys::DNS_SSH, Kind::DnsRecord)
            .describe(format!("point {} at the SSH load balancer", dns::ssh_name(domain)))
            .runs(dns::AliasRecordStep {
                key: keys::DNS_SSH,
                name: dns::ssh_name(domain),
                zone: domain.hosted_zone_id.clone(),
                load_balancer: keys::SSH_LOAD_BALANCER,
            });
    }
    Some(keys::LISTENER_SSH)
}

/// GitLab itself: cluster, task definition and service.
fn declare_gitlab(s: &mut Stack, cfg: &Arc<StackConfig>, net: &Network, listeners: Vec<&'static str>) {
    let https = cfg.domain.is_some();
    let mut cluster_needs = vec![keys::INSIGHTS_LOG_GROUP];
    if cfg.exec {
        cluster_needs.push(keys::EXEC_LOG_GROUP);
    }
    s.step(keys::CLUSTER)
        .needs(&cluster_needs)
        .creates(keys::CLUSTER, Kind::Cluster)
        .describe(if cfg.exec {
            "create the ECS cluster with Container Insights, ECS Exec sessions logged to their log group"
        } else {
            "create the ECS cluster with Container Insights"
        })
        .runs(service::ClusterStep { exec_logged: cfg.exec, spot: cfg.capacity == crate::config::Capacity::Spot });
    let mut td_needs =
        vec![keys::VPC, keys::EXECUTION_ROLE, keys::TASK_ROLE, keys::FILE_SYSTEM, keys::ROOT_SECRET, keys::LOG_GROUP];
    if cfg.object_storage {
        td_needs.extend(keys::OBJECT_BUCKETS.map(|(key, _)| key));
    }
    if cfg.database.is_some() {
        td_needs.push(keys::DB_INSTANCE);
    }
    if !https {
        td_needs.push(keys::LOAD_BALANCER);
        if cfg.ssh_port.is_some() {
            td_needs.push(keys::SSH_LOAD_BALANCER);
        }
    }
    s.step(keys::TASK_DEFINITION)
        .needs(&td_needs)
        .creates(keys::TASK_DEFINITION, Kind::TaskDefinition)
        .describe(format!(
            "register the task definition: {}, {} CPU / {} MiB, EFS volumes",
            cfg.image(),
            cfg.task_cpu,
            cfg.task_memory_mib
        ))
        .runs(service::TaskDefinitionStep { config: cfg.clone() });
    let mut service_needs = vec![
        keys::CLUSTER,
        keys::TASK_DEFINITION,
        keys::EFS_PREPARED,
        keys::SERVICE_SECURITY_GROUP,
        keys::TARGET_GROUP,
        keys::MOUNT_TARGET_A,
        keys::MOUNT_TARGET_B,
        keys::SUBNET_PRIVATE_A,
        keys::SUBNET_PRIVATE_B,
        keys::SUBNET_PUBLIC_A,
        keys::SUBNET_PUBLIC_B,
    ];
    service_needs.extend(listeners);
    service_needs.extend(net.egress);
    if cfg.ssh_port.is_some() {
        service_needs.push(keys::SSH_TARGET_GROUP);
    }
    s.step(keys::SERVICE)
        .needs(&service_needs)
        .creates(keys::SERVICE, Kind::Service)
        .describe(format!(
            "create the Fargate service (1 task, min 0% / max 100%, circuit breaker{})",
            if cfg.exec { ", ECS Exec" } else { "" }
        ))
        .runs(service::ServiceStep {
            ssh: cfg.ssh_port.is_some(),
            exec: cfg.exec,
            public: cfg.egress() == Some(Egress::PublicIp),
            spot: cfg.capacity == crate::config::Capacity::Spot,
            scaled: cfg.schedule.is_some() || cfg.idle_sleep_minutes.is_some() || cfg.asleep,
        });
    declare_running_hours(s, cfg);
}

/// When GitLab runs: its service scaled by AWS on a schedule, or to sleep when idle (with the
/// function that wakes it).
fn declare_running_hours(s: &mut Stack, cfg: &StackConfig) {
    if cfg.schedule.is_none() && cfg.idle_sleep_minutes.is_none() {
        return;
    }
    s.step(keys::SCALABLE_TARGET)
        .needs(&[keys::SERVICE, keys::CLUSTER])
        .creates(keys::SCALABLE_TARGET, Kind::ScalableTarget)
        .describe("let Application Auto Scaling set GitLab's service between 0 and 1 task")
        .runs(scaling::ScalableTargetStep);
    if let Some(hours) = &cfg.schedule {
        for (key, what) in
            [(keys::SCHEDULE_WAKE, "wake GitLab before"), (keys::SCHEDULE_SLEEP, "put GitLab to sleep after")]
        {
            s.step(key)
                .needs(&[keys::SCALABLE_TARGET])
                .creates(key, Kind::ScheduledAction)
                .describe(format!("{what} office hours ({hours})"))
                .runs(scaling::ScheduledActionStep { key, hours: hours.clone() });
        }
    }
    let Some(minutes) = cfg.idle_sleep_minutes else { return };
    let listener = if cfg.domain.is_some() { keys::LISTENER_HTTPS } else { keys::LISTENER_HTTP };
    s.step(keys::IDLE_POLICY)
        .needs(&[keys::SCALABLE_TARGET])
        .creates(keys::IDLE_POLICY, Kind::ScalingPolicy)
        .describe("create the scaling policy that leaves GitLab no task when its alarm fires")
        .runs(scaling::IdlePolicyStep);
    s.step(keys::WAKE_TARGET_GROUP)
        .creates(keys::WAKE_TARGET_GROUP, Kind::TargetGroup)
        .describe("create the wake function's target group")
        .runs(crate::steps::load_balancer::WakeTargetGroupStep);
    s.step(keys::WAKE_LOG_GROUP)
        .needs(&[keys::KEY])
        .creates(keys::WAKE_LOG_GROUP, Kind::LogGroup)
        .describe("create the wake function's log group")
        .runs(logs::LogGroupStep {
            key: keys::WAKE_LOG_GROUP,
            name: logs::function_log_group(&keys::names::wake_function(&cfg.stack)),
            retention_days: logs::RETENTION_DAYS,
            encrypted: true,
        });
    s.step(keys::WAKE_ROLE)
        .needs(&[keys::CLUSTER, listener, keys::WAKE_LOG_GROUP])
        .creates(keys::WAKE_ROLE, Kind::Role)
        .describe("create the wake function's role: start this service, switch this listener, nothing else")
        .runs(iam::RoleStep {
            key: keys::WAKE_ROLE,
            service: "lambda.amazonaws.com",
            managed: &[],
            policy: Box::new(move |ctx, env| wake::wake_policy(ctx, env, listener)),
        });
    s.step(keys::WAKE_FUNCTION)
        .needs(&[keys::WAKE_ROLE, keys::CLUSTER, listener, keys::TARGET_GROUP, keys::WAKE_TARGET_GROUP])
        .creates(keys::WAKE_FUNCTION, Kind::Function)
        .describe("create the function that answers while GitLab sleeps and wakes it")
        .runs(wake::WakeFunctionStep { listener });
    s.step(keys::IDLE_ALARM)
        .needs(&[keys::LOAD_BALANCER, keys::IDLE_POLICY, keys::WAKE_FUNCTION])
        .creates(keys::IDLE_ALARM, Kind::Alarm)
        .describe(format!("create the alarm that puts GitLab to sleep after {minutes} minutes without a request"))
        .runs(wake::IdleAlarmStep { minutes });
}

/// Record keys the steps create; a recorded key outside this set is left over from an earlier
/// configuration (e.g. NAT gateway -> NAT instance, SSH turned off) and is removed after `up`.
pub fn owned_keys(steps: &[Step<Ctx>]) -> BTreeSet<String> {
    steps.iter().flat_map(|s| s.creates.iter().map(|(k, _)| k.clone())).collect()
}

/// Settings that an existing stack cannot change in place (changing them means replacing the
/// network and everything in it).
pub fn fixed_settings(cfg: &StackConfig, region: &str) -> BTreeMap<String, String> {
    let mut fixed = BTreeMap::new();
    fixed.insert("region".to_string(), region.to_string());
    match &cfg.network {
        NetworkConfig::Create { vpc_cidr, zones, .. } => {
            fixed.insert("vpc_cidr".to_string(), vpc_cidr.to_string());
            if let Some(zones) = zones {
                fixed.insert("availability_zones".to_string(), zones.join(","));
            }
        }
        NetworkConfig::Import { vpc_id } => {
            fixed.insert("vpc_id".to_string(), vpc_id.clone());
        }
    }
    fixed
}

/// What the configuration would change among the fixed settings of an existing stack, one line
/// each. After `down --keep-data` only data is left, and the network may then be built differently.
pub fn replacements(state: &crate::state::State, wanted: &BTreeMap<String, String>) -> Vec<String> {
    if state.resources.is_empty() {
        return Vec::new();
    }
    let has_network = state.resources.contains_key(keys::VPC);
    let keys: BTreeSet<&String> =
        state.fixed.keys().chain(wanted.keys()).filter(|k| has_network || k.as_str() == "region").collect();
    keys.into_iter()
        .filter_map(|key| {
            let (before, after) = (state.fixed.get(key), wanted.get(key));
            // A stack made before availability_zones existed chose its zones itself.
            if key == "availability_zones" && before.is_none() {
                return None;
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Settings, validate};

    fn graph(extra: impl FnOnce(&mut Settings)) -> Vec<Step<Ctx>> {
        let mut s = Settings { allowed_cidrs: Some(vec!["203.0.113.0/24".into()]), ..Default::default() };
        extra(&mut s);
        build(&validate(&s).unwrap())
    }

    fn https(s: &mut Settings) {
        s.domain_name = Some("example.com".into());
        s.sub_domain = Some("git".into());
        s.hosted_zone_id = Some("Z123".into());
    }

    /// Every shape the stack can take.
    fn variants() -> Vec<(&'static str, Vec<Step<Ctx>>)> {
        vec![
            ("default", graph(|_| {})),
            ("nat instance", graph(|s| s.use_nat_instance = Some(true))),
            ("nat gateway", graph(|s| s.egress = Some(crate::config::Egress::NatGateway))),
            (
                "office hours, idle sleep, spot, public ip",
                graph(|s| {
                    s.egress = Some(crate::config::Egress::PublicIp);
                    s.capacity = Some(crate::config::Capacity::Spot);
                    s.schedule = crate::schedule::parse_flag("Mon-Fri 07:30-19:30 Europe/Berlin").ok();
                    s.idle_sleep = Some("2h".into());
                    s.efs_infrequent_access_after = Some("30d".into());
                }),
            ),
            ("imported vpc", graph(|s| s.vpc_id = Some("vpc-0123456789abcdef0".into()))),
            (
                "object storage, rds, no exec",
                graph(|s| {
                    s.object_storage = Some(true);
                    s.database = Some(crate::config::Database::Rds);
                    s.exec = Some(false)
                }),
            ),
            ("https", graph(https)),
            (
                "https + ssh",
                graph(|s| {
                    https(s);
                    s.ssh = Some(true)
                }),
            ),
            (
                "ssh, imported",
                graph(|s| {
                    s.ssh = Some(true);
                    s.vpc_id = Some("vpc-0123456789abcdef0".into())
                }),
            ),
            (
                "strict, https + ssh",
                graph(|s| {
                    https(s);
                    s.ssh = Some(true);
                    s.hardening = Some(crate::config::Hardening::Strict)
                }),
            ),
            (
                "strict, imported",
                graph(|s| {
                    s.vpc_id = Some("vpc-0123456789abcdef0".into());
                    s.hardening = Some(crate::config::Hardening::Strict)
                }),
            ),
        ]
    }

    fn deps(steps: &[Step<Ctx>], name: &str) -> Vec<String> {
        steps.iter().find(|s| s.name == name).unwrap_or_else(|| panic!("no step {name}")).after.clone()
    }

    #[test]
    fn every_variant_is_a_valid_graph_whose_needs_are_all_created() {
        for (name, steps) in variants() {
            crate::engine::order(&steps).unwrap_or_else(|e| panic!("{name}: {e}"));
            let created = owned_keys(&steps);
            for step in &steps {
                for need in step.needs.iter().chain(&step.holds) {
                    assert!(created.contains(need), "{name}: step {} needs {need}, which no step creates", step.name);
                }
            }
        }
    }

    #[test]
    fn step_names_are_the_keys_they_create() {
        for (name, steps) in variants() {
            for step in &steps {
                let ok = step.creates.iter().any(|(k, _)| *k == step.name)
                    || [
                        keys::STEP_SUBNETS,
                        keys::STEP_MOUNT_TARGETS,
                        keys::STEP_PREFLIGHT,
                        keys::STEP_ZONE_CHECK,
                        keys::STEP_QUOTAS,
                    ]
                    .contains(&step.name.as_str());
                assert!(ok, "{name}: step {} creates {:?}", step.name, step.creates);
            }
        }
    }

    #[test]
    fn discovery_ranks_agree_with_the_recorded_dependencies() {
        let mut wrong = BTreeSet::new();
        for (name, steps) in variants() {
            let kind_of: BTreeMap<&str, &str> =
                steps.iter().flat_map(|s| s.creates.iter().map(|(k, kind)| (k.as_str(), kind.as_str()))).collect();
            for step in &steps {
                for (key, kind) in &step.creates {
                    for need in step.needs.iter().chain(&step.holds).filter(|n| *n != key) {
                        let (mine, theirs) =
                            (Kinds.teardown_rank(kind, key), Kinds.teardown_rank(kind_of[need.as_str()], need));
                        if mine >= theirs {
                            wrong.insert(format!("{name}: {key} ({mine}) must be deleted before {need} ({theirs})"));
                        }
                    }
                }
            }
        }
        assert!(wrong.is_empty(), "{}", wrong.into_iter().collect::<Vec<_>>().join("\n"));
    }

    /// Adding a kind is: its `Kind` entry, its step file, its row in `kind_row`, its step in a
    /// section of `build`, and its client. The compiler asks for the row (and for the tests'
    /// leftovers check); this test for the rest.
    #[test]
    fn every_kind_has_its_row_and_a_step_that_creates_it() {
        let created: BTreeSet<String> = variants()
            .iter()
            .flat_map(|(_, steps)| steps.iter().flat_map(|s| s.creates.iter().map(|(_, kind)| kind.clone())))
            .collect();
        for kind in Kind::ALL {
            let row = kind_row(*kind, "");
            assert_eq!(row.ops.noun(), kind.noun(), "{kind}: the row's operations are another kind's");
            assert!(created.contains(kind.as_str()), "no step of any stack shape creates {kind}");
            assert!(Kinds.policy(kind.as_str(), "").is_some() && Kinds.teardown_rank(kind.as_str(), "") < 9, "{kind}");
            if row.policy.kept_while_holding {
                assert!(row.policy.data, "{kind}: what is kept while it holds something is data");
            }
        }
        assert!(Kinds.ops("ec2:nothing").is_none());
    }

    #[test]
    fn each_step_reads_only_what_it_declares() {
        // With every record present, each step computes what it wants; reading an undeclared
        // record is an error in its declaration.
        let ctx = crate::aws::credentials::offline_context("s1", "us-east-1");
        for (name, steps) in variants() {
            let records: BTreeMap<String, crate::state::ResourceRecord> = owned_keys(&steps)
                .into_iter()
                .map(|k| {
                    let record = crate::state::ResourceRecord {
                        kind: String::new(),
                        step: String::new(),
                        status: crate::state::RecordStatus::Created,
                        id: Some(format!("id-of-{k}")),
                        depends_on: vec![],
                        attrs: [
                            ("name", "n"),
                            ("dns_name", "d"),
                            ("zone_id", "z"),
                            ("cidr", "10.0.0.0/16"),
                            ("eni", "eni-1"),
                            ("arn", "arn"),
                        ]
                        .into_iter()
                        .map(|(a, b)| (a.to_string(), serde_json::Value::from(b)))
                        .collect(),
                        generation: 0,
                        updated_at: String::new(),
                    };
                    (k, record)
                })
                .collect();
            for step in &steps {
                step.desired(&ctx, &records).unwrap_or_else(|e| panic!("{name}: {e:#}"));
            }
        }
    }

    #[test]
    fn the_service_waits_for_everything_it_needs() {
        for (_, steps) in variants().into_iter().take(2) {
            let service = deps(&steps, keys::SERVICE);
            for need in [
                keys::EFS_PREPARED,
                keys::LISTENER_HTTP,
                keys::ROUTE_TABLE_PRIVATE,
                keys::TASK_DEFINITION,
                keys::SERVICE_SECURITY_GROUP,
            ] {
                assert!(service.iter().any(|d| d == need), "service does not wait for {need}: {service:?}");
            }
        }
    }

    #[test]
    fn https_adds_certificate_listeners_dns_and_a_preflight_before_everything() {
        let steps = graph(https);
        assert!(deps(&steps, keys::LISTENER_HTTPS).contains(&keys::CERTIFICATE.to_string()));
        assert!(deps(&steps, keys::SERVICE).contains(&keys::LISTENER_HTTPS.to_string()));
        for s in steps.iter().filter(|s| !s.preflight) {
            assert!(
                s.after.contains(&keys::STEP_PREFLIGHT.to_string()),
                "{} would start before the hosted zone is checked",
                s.name
            );
        }
    }

    #[test]
    fn an_imported_vpc_is_checked_before_anything_is_created() {
        let steps = graph(|s| s.vpc_id = Some("vpc-0123456789abcdef0".into()));
        for s in steps.iter().filter(|s| !s.preflight) {
            assert!(s.after.contains(&keys::VPC.to_string()), "{} would start before the VPC is checked", s.name);
        }
    }
}
