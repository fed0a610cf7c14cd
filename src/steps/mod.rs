//! The GitLab stack as steps for the engine, and the catalog of resource kinds for teardown
//! and status. Each AWS area has its own module with create, read and delete side by side.

pub mod nat;
pub mod network;
pub mod security_group;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use crate::aws::{Clients, Tags};
use crate::config::{NatKind, NetworkConfig, StackConfig};
use crate::engine::{Catalog, ResourceOps, Step, StepAction};

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
            _ => return None,
        })
    }
}

fn step<C>(
    name: &str,
    deps: &[&str],
    description: String,
    resources: &[(&str, &str)],
    action: impl StepAction<C> + 'static,
) -> Step<C> {
    Step {
        name: name.to_string(),
        deps: deps.iter().map(|d| d.to_string()).collect(),
        description,
        resources: resources
            .iter()
            .map(|(k, kind)| (k.to_string(), kind.to_string()))
            .collect(),
        action: Arc::new(action),
    }
}

/// The steps `up` runs for a configuration, with their dependencies.
pub fn build(cfg: &StackConfig) -> Vec<Step<Ctx>> {
    let mut steps = Vec::new();
    match &cfg.network {
        NetworkConfig::Import { vpc_id } => {
            let mut resources = vec![(network::KEY_VPC, network::VPC)];
            resources.extend(network::SUBNET_KEYS.iter().map(|k| (*k, network::SUBNET)));
            steps.push(step(
                "vpc",
                &[],
                format!(
                    "import VPC {vpc_id}: check two public and two private subnets in distinct AZs"
                ),
                &resources,
                network::ImportVpc {
                    vpc_id: vpc_id.clone(),
                },
            ));
        }
        NetworkConfig::Create { vpc_cidr, nat } => {
            steps.push(step(
                "vpc",
                &[],
                format!("create VPC {vpc_cidr} with DNS support and hostnames"),
                &[(network::KEY_VPC, network::VPC)],
                network::CreateVpc { cidr: *vpc_cidr },
            ));
            let subnets = network::SubnetPlan::new(*vpc_cidr);
            steps.push(step(
                "subnets",
                &["vpc"],
                format!(
                    "create public and private subnets in two AZs ({})",
                    subnets.describe()
                ),
                &network::SUBNET_KEYS.map(|k| (k, network::SUBNET)),
                network::CreateSubnets { plan: subnets },
            ));
            steps.push(step(
                "internet-gateway",
                &["vpc"],
                "create and attach an internet gateway".into(),
                &[(network::KEY_INTERNET_GATEWAY, network::INTERNET_GATEWAY)],
                network::CreateInternetGateway,
            ));
            steps.push(step(
                "public-routes",
                &["internet-gateway", "subnets"],
                "route the public subnets to the internet gateway".into(),
                &[(network::KEY_PUBLIC_ROUTES, network::ROUTE_TABLE)],
                network::RouteTableStep::public(),
            ));
            let nat_step = match nat {
                NatKind::Gateway => {
                    steps.push(step(
                        "nat-eip",
                        &[],
                        "allocate an Elastic IP for the NAT gateway".into(),
                        &[(nat::KEY_EIP, nat::ELASTIC_IP)],
                        nat::AllocateNatEip,
                    ));
                    steps.push(step(
                        "nat-gateway",
                        &["subnets", "internet-gateway", "nat-eip"],
                        "create a NAT gateway in the first public subnet and wait until available"
                            .into(),
                        &[(nat::KEY_NAT_GATEWAY, nat::NAT_GATEWAY)],
                        nat::CreateNatGateway,
                    ));
                    "nat-gateway"
                }
                NatKind::Instance => {
                    steps.push(step(
                        "nat-security-group",
                        &["vpc"],
                        format!("create the NAT instance's security group admitting all traffic from {vpc_cidr}"),
                        &[(nat::KEY_NAT_SECURITY_GROUP, security_group::SECURITY_GROUP)],
                        nat::nat_security_group(*vpc_cidr),
                    ));
                    steps.push(step(
                        "nat-instance",
                        &["subnets", "internet-gateway", "nat-security-group"],
                        "launch a t4g.nano NAT instance (Amazon Linux 2023) and wait until running"
                            .into(),
                        &[(nat::KEY_NAT_INSTANCE, nat::INSTANCE)],
                        nat::CreateNatInstance,
                    ));
                    "nat-instance"
                }
            };
            steps.push(step(
                "private-routes",
                &["subnets", nat_step],
                format!("route the private subnets' outbound traffic through the {nat_step}"),
                &[(network::KEY_PRIVATE_ROUTES, network::ROUTE_TABLE)],
                network::RouteTableStep::private(*nat),
            ));
        }
    }
    steps
}

/// Record keys the steps own; a recorded key outside this set is left over from an earlier
/// configuration (e.g. NAT gateway -> NAT instance) and is removed after a successful `up`.
pub fn owned_keys(steps: &[Step<Ctx>]) -> BTreeSet<String> {
    steps
        .iter()
        .flat_map(|s| s.resources.iter().map(|(k, _)| k.clone()))
        .collect()
}

/// Settings that an existing stack cannot change in place (changing them means replacing the
/// network and everything in it).
pub fn fixed_settings(cfg: &StackConfig, region: &str) -> BTreeMap<String, String> {
    let mut fixed = BTreeMap::new();
    fixed.insert("region".to_string(), region.to_string());
    match &cfg.network {
        NetworkConfig::Create { vpc_cidr, .. } => {
            fixed.insert("vpc_cidr".to_string(), vpc_cidr.to_string())
        }
        NetworkConfig::Import { vpc_id } => fixed.insert("vpc_id".to_string(), vpc_id.clone()),
    };
    fixed
}
