//! The VPC: VPC, subnets, internet gateway, route tables, or an imported VPC.

use anyhow::Context as _;
use async_trait::async_trait;
use aws_sdk_ec2::types::{
    AttributeBooleanValue, Filter, InternetGateway, ResourceType, RouteTable, Subnet, Vpc, VpcAttributeName,
};
use ipnet::Ipv4Net;

use ground::Diagnostic;

use crate::aws::ec2::{Ec2, Ec2Kind, Ec2Listing, Query, ec2_listing};
use crate::aws::interfaces::{HeldBy, holders};
use crate::aws::{Ctx, EC2_IN_USE, call, delete_when_free, fresh, if_there};
use crate::engine::{Applied, Desired, Env, Existing, StepAction, StepScope, Summary, attrs};
use crate::keys::{self, Kind};
use crate::state::{RecordStatus, ResourceRecord};

pub fn bool_value(value: bool) -> AttributeBooleanValue {
    AttributeBooleanValue::builder().value(value).build()
}

// ---------------------------------------------------------------------------------------------
// VPC

pub struct Vpcs;

ec2_listing!(Vpcs, Vpc, "VPC", describe_vpcs(vpc_ids, set_filters) -> vpcs, vpc_id);

#[async_trait]
impl Ec2Kind for Vpcs {
    fn live(vpc: &Vpc, record: &ResourceRecord) -> (String, Vec<String>) {
        let cidr = vpc.cidr_block().unwrap_or_default();
        let drift = match record.attr("cidr") {
            Some(recorded) if recorded != cidr => vec![format!("CIDR is {cidr}, recorded {recorded}")],
            _ => vec![],
        };
        (format!("{cidr}, {}", vpc.state().map(|s| s.as_str()).unwrap_or("?")), drift)
    }

    async fn delete(ctx: &Ctx, id: &str, scope: &StepScope) -> anyhow::Result<()> {
        let ec2 = &ctx.aws.ec2;
        delete_when_free(
            scope,
            &format!("VPC {id}"),
            EC2_IN_USE,
            || async { call(ec2.delete_vpc().vpc_id(id).send(), || format!("deleting VPC {id}")).await },
            || holders(ctx, HeldBy::Vpc(id)),
        )
        .await
    }
}

pub struct VpcStep {
    pub cidr: Ipv4Net,
}

#[async_trait]
impl StepAction<Ctx> for VpcStep {
    fn desired(&self, _ctx: &Ctx, _env: &Env) -> anyhow::Result<Vec<Desired>> {
        let wanted = attrs([("cidr", self.cidr.to_string()), ("default_security_group", "no rules".into())]);
        // Round two left the default group's rules (all from itself in, all out).
        Ok(vec![
            Desired::new(keys::VPC, Kind::Vpc, wanted)
                .replaced_on(&["cidr"])
                .assuming(&[("default_security_group", "as created")]),
        ])
    }

    async fn apply(&self, ctx: &Ctx, scope: &StepScope) -> anyhow::Result<Summary> {
        let want = scope.wanted_one(ctx, self)?;
        let ensured =
            scope.ensure(ctx, &Ec2::<Vpcs>::OPS, want, |existing, _| create_vpc(ctx, self.cidr, existing)).await?;
        Ok(ensured.summary(&format!(" ({})", self.cidr)))
    }
}

async fn create_vpc(ctx: &Ctx, cidr: Ipv4Net, existing: Option<Existing>) -> anyhow::Result<Applied> {
    let ec2 = &ctx.aws.ec2;
    let vpc_id = match existing {
        Some(existing) => existing.id,
        None => call(
            ec2.create_vpc()
                .cidr_block(cidr.to_string())
                .tag_specifications(ctx.tags.ec2(ResourceType::Vpc, keys::VPC))
                .send(),
            || format!("creating VPC {cidr} ({})", ctx.region()),
        )
        .await?
        .vpc()
        .and_then(|v| v.vpc_id())
        .context("CreateVpc returned no VPC id")?
        .to_string(),
    };
    // One attribute per call, as the API demands. Hostnames are needed for EFS mount target
    // DNS names and for ECS to resolve AWS endpoints.
    fresh(|| async {
        call(ec2.modify_vpc_attribute().vpc_id(&vpc_id).enable_dns_support(bool_value(true)).send(), || {
            format!("enabling DNS support on {vpc_id}")
        })
        .await
    })
    .await?;
    call(ec2.modify_vpc_attribute().vpc_id(&vpc_id).enable_dns_hostnames(bool_value(true)).send(), || {
        format!("enabling DNS hostnames on {vpc_id}")
    })
    .await?;
    close_default_group(ctx, &vpc_id).await?;
    Ok(Applied::id(vpc_id))
}

/// Strips the rules of the VPC's default security group (all traffic from itself, all out), as
/// CDK's VPC does: nothing of the stack uses it, and anything put in it by mistake is then
/// closed rather than open. AWS does not let the group itself be deleted.
async fn close_default_group(ctx: &Ctx, vpc_id: &str) -> anyhow::Result<()> {
    let ec2 = &ctx.aws.ec2;
    let out = call(
        ec2.describe_security_groups()
            .filters(Filter::builder().name("vpc-id").values(vpc_id).build())
            .filters(Filter::builder().name("group-name").values("default").build())
            .send(),
        || format!("reading the default security group of {vpc_id}"),
    )
    .await?;
    for group in out.security_groups() {
        let Some(id) = group.group_id() else { continue };
        if !group.ip_permissions().is_empty() {
            call(
                ec2.revoke_security_group_ingress()
                    .group_id(id)
                    .set_ip_permissions(Some(group.ip_permissions().to_vec()))
                    .send(),
                || format!("removing the inbound rules of {vpc_id}'s default security group {id}"),
            )
            .await?;
        }
        if !group.ip_permissions_egress().is_empty() {
            call(
                ec2.revoke_security_group_egress()
                    .group_id(id)
                    .set_ip_permissions(Some(group.ip_permissions_egress().to_vec()))
                    .send(),
                || format!("removing the outbound rules of {vpc_id}'s default security group {id}"),
            )
            .await?;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Subnets

pub struct Subnets;

ec2_listing!(Subnets, Subnet, "subnet", describe_subnets(subnet_ids, set_filters) -> subnets, subnet_id);

#[async_trait]
impl Ec2Kind for Subnets {
    fn live(subnet: &Subnet, record: &ResourceRecord) -> (String, Vec<String>) {
        let cidr = subnet.cidr_block().unwrap_or_default();
        let mut drift = Vec::new();
        if record.attr("cidr").is_some_and(|c| c != cidr) {
            drift.push(format!("CIDR is {cidr}"));
        }
        // Nothing the stack launches takes an address by default: the NAT instance asks for its
        // own (a subnet that hands them out is a scanner's high finding).
        if record.status == RecordStatus::Created
            && record.attr("public_ip_on_launch") == Some("false")
            && subnet.map_public_ip_on_launch() == Some(true)
        {
            drift.push("public IPs on launch are on".into());
        }
        (format!("{cidr} in {}", subnet.availability_zone().unwrap_or_default()), drift)
    }

    async fn delete(ctx: &Ctx, id: &str, scope: &StepScope) -> anyhow::Result<()> {
        let ec2 = &ctx.aws.ec2;
        delete_when_free(
            scope,
            &format!("subnet {id}"),
            EC2_IN_USE,
            || async { call(ec2.delete_subnet().subnet_id(id).send(), || format!("deleting subnet {id}")).await },
            || holders(ctx, HeldBy::Subnet(id)),
        )
        .await
    }
}

/// Four equal quarters of the VPC: public a/b, private a/b.
pub struct SubnetPlan {
    /// (key, CIDR, public, zone index)
    pub subnets: Vec<(&'static str, Ipv4Net, bool, usize)>,
}

impl SubnetPlan {
    pub fn new(vpc: Ipv4Net) -> Self {
        let quarters: Vec<Ipv4Net> = vpc.subnets(vpc.prefix_len() + 2).map(|s| s.collect()).unwrap_or_default();
        let subnets =
            keys::SUBNETS.iter().zip(quarters).enumerate().map(|(i, (key, cidr))| (*key, cidr, i < 2, i % 2)).collect();
        SubnetPlan { subnets }
    }

    pub fn describe(&self) -> String {
        self.subnets
            .iter()
            .map(|(k, c, _, _)| format!("{}: {c}", k.trim_start_matches("subnet-")))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Zones the user chose must be zones of the region that can hold the stack (a NAT instance
/// needs its type offered there): checked before anything is created.
pub struct CheckZones {
    pub zones: [String; 2],
    pub instance_type: Option<&'static str>,
}

#[async_trait]
impl StepAction<Ctx> for CheckZones {
    async fn apply(&self, ctx: &Ctx, _scope: &StepScope) -> anyhow::Result<Summary> {
        let ec2 = &ctx.aws.ec2;
        let chosen = format!("availability_zones = [\"{}\", \"{}\"]", self.zones[0], self.zones[1]);
        let out = call(
            ec2.describe_availability_zones()
                .filters(Filter::builder().name("zone-type").values("availability-zone").build())
                .send(),
            || format!("listing availability zones in {}", ctx.region()),
        )
        .await?;
        let available: Vec<&str> = out
            .availability_zones()
            .iter()
            .filter(|z| z.state().map(|s| s.as_str()) == Some("available"))
            .filter_map(|z| z.zone_name())
            .collect();
        if let Some(missing) = self.zones.iter().find(|z| !available.contains(&z.as_str())) {
            return Err(Diagnostic::new(format!("{chosen}: {missing} is not an available zone of {}", ctx.region()))
                .with_help(format!("choose two of {}", available.join(", ")))
                .into());
        }
        if let Some(instance_type) = self.instance_type {
            let offering = zones_offering(ctx, instance_type).await?;
            if let Some(lacking) = self.zones.iter().find(|z| !offering.contains(z)) {
                return Err(Diagnostic::new(format!(
                    "{chosen}: {lacking} does not offer {instance_type}, the NAT instance's type"
                ))
                .with_help(format!("choose zones that do ({}), or use_nat_instance = false", offering.join(", ")))
                .into());
            }
        }
        Ok(Summary::new(format!("{} and {} can hold the stack", self.zones[0], self.zones[1]), false))
    }
}

/// The region's zones that offer an instance type (a NAT instance cannot start elsewhere).
async fn zones_offering(ctx: &Ctx, instance_type: &str) -> anyhow::Result<Vec<String>> {
    let offered = call(
        ctx.aws
            .ec2
            .describe_instance_type_offerings()
            .location_type(aws_sdk_ec2::types::LocationType::AvailabilityZone)
            .filters(Filter::builder().name("instance-type").values(instance_type).build())
            .send(),
        || format!("listing the zones that offer {instance_type}"),
    )
    .await?;
    Ok(offered.instance_type_offerings().iter().filter_map(|o| o.location().map(str::to_string)).collect())
}

pub struct SubnetsStep {
    pub plan: SubnetPlan,
    /// Zones the user chose; otherwise the region's first two that offer what the stack needs.
    pub zones: Option<[String; 2]>,
    /// A NAT instance needs zones that offer t4g.nano.
    pub instance_type: Option<&'static str>,
}

impl SubnetsStep {
    /// Two zones: the user's, the ones the recorded subnets are in, or the region's first two
    /// (by name, stable across runs) that offer the NAT instance's type.
    async fn zones(&self, ctx: &Ctx, scope: &StepScope) -> anyhow::Result<Vec<String>> {
        if let Some(zones) = &self.zones {
            return Ok(zones.to_vec());
        }
        let recorded: Vec<String> = self.plan.subnets[..2]
            .iter()
            .filter_map(|(key, ..)| scope.state.get(key).filter(|r| r.status == RecordStatus::Created))
            .filter_map(|r| r.attr("az").map(str::to_string))
            .collect();
        if recorded.len() == 2 {
            return Ok(recorded);
        }
        let ec2 = &ctx.aws.ec2;
        let out = call(
            ec2.describe_availability_zones()
                .filters(Filter::builder().name("state").values("available").build())
                .filters(Filter::builder().name("zone-type").values("availability-zone").build())
                .send(),
            || format!("listing availability zones in {}", ctx.region()),
        )
        .await?;
        let mut zones: Vec<String> =
            out.availability_zones().iter().filter_map(|z| z.zone_name().map(str::to_string)).collect();
        if let Some(instance_type) = self.instance_type {
            let offering = zones_offering(ctx, instance_type).await?;
            zones.retain(|z| offering.contains(z));
        }
        zones.sort();
        zones.truncate(2);
        if zones.len() != 2 {
            return Err(Diagnostic::new(format!(
                "region {} has fewer than two available zones{}",
                ctx.region(),
                self.instance_type.map(|t| format!(" offering {t}")).unwrap_or_default()
            ))
            .with_help("choose two with availability_zones = [\"...\", \"...\"], or use another region")
            .into());
        }
        Ok(zones)
    }
}

#[async_trait]
impl StepAction<Ctx> for SubnetsStep {
    fn desired(&self, _ctx: &Ctx, _env: &Env) -> anyhow::Result<Vec<Desired>> {
        Ok(self
            .plan
            .subnets
            .iter()
            .map(|(key, cidr, public, _)| {
                let wanted = attrs([
                    ("cidr", cidr.to_string()),
                    ("public", public.to_string()),
                    ("public_ip_on_launch", "false".into()),
                ]);
                // Round two's public subnets handed out public IPs on launch.
                let before: &'static [(&str, &str)] =
                    if *public { &[("public_ip_on_launch", "true")] } else { &[("public_ip_on_launch", "false")] };
                Desired::new(key, Kind::Subnet, wanted).replaced_on(&["cidr"]).assuming(before)
            })
            .collect())
    }

    async fn apply(&self, ctx: &Ctx, scope: &StepScope) -> anyhow::Result<Summary> {
        let vpc_id = scope.id_of(keys::VPC)?;
        let zones = self.zones(ctx, scope).await?;
        let wants = scope.wanted(ctx, self)?;
        let mut ensures = Vec::new();
        for ((_, cidr, _, zone), want) in self.plan.subnets.iter().zip(wants) {
            let (az, vpc, key) = (zones[*zone].clone(), vpc_id.as_str(), want.key.clone());
            ensures.push(async move {
                scope
                    .ensure(ctx, &Ec2::<Subnets>::OPS, want, |existing, _| async move {
                        create_subnet(ctx, vpc, &key, *cidr, &az, existing).await
                    })
                    .await
            });
        }
        let ensured = futures_util::future::try_join_all(ensures).await?;
        let changed = ensured.iter().any(|e| e.changed());
        let parts: Vec<String> = ensured.iter().map(|e| format!("{} {}", e.verb(), e.id())).collect();
        Ok(Summary::new(format!("{} in {}", parts.join(", "), zones.join(" and ")), changed))
    }
}

async fn create_subnet(
    ctx: &Ctx,
    vpc_id: &str,
    key: &str,
    cidr: Ipv4Net,
    az: &str,
    existing: Option<Existing>,
) -> anyhow::Result<Applied> {
    let ec2 = &ctx.aws.ec2;
    let subnet_id = match existing {
        // A subnet created before public IPs on launch were turned off, or turned on since.
        Some(existing) => {
            let id = existing.id;
            // A resumed create names a subnet EC2 may not show yet.
            fresh(|| async {
                call(
                    ec2.modify_subnet_attribute().subnet_id(&id).map_public_ip_on_launch(bool_value(false)).send(),
                    || format!("turning off public IPs on launch in {id}"),
                )
                .await
            })
            .await?;
            id
        }
        None => call(
            ec2.create_subnet()
                .vpc_id(vpc_id)
                .cidr_block(cidr.to_string())
                .availability_zone(az)
                .tag_specifications(ctx.tags.ec2(ResourceType::Subnet, key))
                .send(),
            || format!("creating subnet {cidr} in {vpc_id} ({az})"),
        )
        .await?
        .subnet()
        .and_then(|s| s.subnet_id())
        .context("CreateSubnet returned no id")?
        .to_string(),
    };
    // Visible before the NAT, the routes and the load balancers name it.
    Ec2::<Subnets>::get_fresh(ctx, &subnet_id).await?;
    Ok(Applied::id(subnet_id).with("az", az))
}

// ---------------------------------------------------------------------------------------------
// Internet gateway

pub struct InternetGateways;

fn attached_vpc(igw: &InternetGateway) -> Option<String> {
    igw.attachments().iter().find_map(|a| a.vpc_id().map(str::to_string))
}

ec2_listing!(InternetGateways, InternetGateway, "internet gateway", describe_internet_gateways(internet_gateway_ids, set_filters) -> internet_gateways, internet_gateway_id);

#[async_trait]
impl Ec2Kind for InternetGateways {
    fn live(igw: &InternetGateway, record: &ResourceRecord) -> (String, Vec<String>) {
        let attached: Vec<&str> = igw.attachments().iter().filter_map(|a| a.vpc_id()).collect();
        let drift = match record.attr("vpc_id") {
            Some(vpc) if !attached.contains(&vpc) => vec![format!("not attached to {vpc}")],
            _ => vec![],
        };
        let to = if attached.is_empty() { "nothing".to_string() } else { attached.join(", ") };
        (format!("attached to {to}"), drift)
    }

    async fn delete(ctx: &Ctx, id: &str, scope: &StepScope) -> anyhow::Result<()> {
        let ec2 = &ctx.aws.ec2;
        let Some(igw) = Ec2::<Self>::get(ctx, id).await? else { return Ok(()) };
        if let Some(vpc) = attached_vpc(&igw) {
            // Detaching fails while the VPC still has mapped public addresses: a NAT gateway or
            // load balancer being deleted, a NAT instance shutting down.
            delete_when_free(
                scope,
                &format!("internet gateway {id}"),
                EC2_IN_USE,
                || async {
                    call(ec2.detach_internet_gateway().internet_gateway_id(id).vpc_id(&vpc).send(), || {
                        format!("detaching internet gateway {id} from {vpc}")
                    })
                    .await
                },
                || holders(ctx, HeldBy::PublicAddressesIn(&vpc)),
            )
            .await?;
        }
        if_there(ec2.delete_internet_gateway().internet_gateway_id(id).send(), || {
            format!("deleting internet gateway {id}")
        })
        .await?;
        Ok(())
    }
}

pub struct InternetGatewayStep;

#[async_trait]
impl StepAction<Ctx> for InternetGatewayStep {
    fn desired(&self, _ctx: &Ctx, env: &Env) -> anyhow::Result<Vec<Desired>> {
        Ok(vec![Desired::new(keys::INTERNET_GATEWAY, Kind::InternetGateway, attrs([("vpc_id", env.id(keys::VPC)?)]))])
    }

    async fn apply(&self, ctx: &Ctx, scope: &StepScope) -> anyhow::Result<Summary> {
        let vpc_id = scope.id_of(keys::VPC)?;
        let want = scope.wanted_one(ctx, self)?;
        let vpc = vpc_id.as_str();
        let ensured = scope
            .ensure(ctx, &Ec2::<InternetGateways>::OPS, want, |existing, _| async move {
                let (igw_id, attached) = match existing {
                    Some(existing) => {
                        let igw = Ec2::<InternetGateways>::get_fresh(ctx, &existing.id).await?;
                        (existing.id, attached_vpc(&igw))
                    }
                    None => {
                        let out = call(
                            ctx.aws
                                .ec2
                                .create_internet_gateway()
                                .tag_specifications(ctx.tags.ec2(ResourceType::InternetGateway, keys::INTERNET_GATEWAY))
                                .send(),
                            || format!("creating internet gateway ({})", ctx.region()),
                        )
                        .await?;
                        let id = out.internet_gateway().and_then(|g| g.internet_gateway_id());
                        (id.context("CreateInternetGateway returned no id")?.to_string(), None)
                    }
                };
                match attached {
                    Some(other) if other == vpc => {}
                    Some(other) => anyhow::bail!("internet gateway {igw_id} is attached to {other}, not {vpc}"),
                    None => {
                        fresh(|| async {
                            call(
                                ctx.aws.ec2.attach_internet_gateway().internet_gateway_id(&igw_id).vpc_id(vpc).send(),
                                || format!("attaching internet gateway {igw_id} to {vpc}"),
                            )
                            .await
                        })
                        .await?;
                    }
                }
                Ok(Applied::id(igw_id))
            })
            .await?;
        Ok(ensured.summary(&format!(" on {vpc_id}")))
    }
}

// ---------------------------------------------------------------------------------------------
// Route tables

pub struct RouteTables;

const DEFAULT_ROUTE: &str = "0.0.0.0/0";

fn default_route_target(table: &RouteTable) -> Option<String> {
    table.routes().iter().filter(|r| r.destination_cidr_block() == Some(DEFAULT_ROUTE)).find_map(|r| {
        r.gateway_id().or(r.nat_gateway_id()).or(r.network_interface_id()).or(r.instance_id()).map(str::to_string)
    })
}

ec2_listing!(RouteTables, RouteTable, "route table", describe_route_tables(route_table_ids, set_filters) -> route_tables, route_table_id);

#[async_trait]
impl Ec2Kind for RouteTables {
    fn live(table: &RouteTable, record: &ResourceRecord) -> (String, Vec<String>) {
        let target = default_route_target(table);
        let associated: Vec<&str> = table.associations().iter().filter_map(|a| a.subnet_id()).collect();
        let mut drift = Vec::new();
        if let Some(want) = record.attr("route_target")
            && target.as_deref() != Some(want)
        {
            drift.push(format!("default route goes to {}, not {want}", target.as_deref().unwrap_or("nothing")));
        }
        for subnet in record.list("subnets") {
            if !associated.contains(&subnet.as_str()) {
                drift.push(format!("{subnet} is not associated"));
            }
        }
        (format!("0.0.0.0/0 -> {}, {} subnets", target.as_deref().unwrap_or("nothing"), associated.len()), drift)
    }

    async fn delete(ctx: &Ctx, id: &str, scope: &StepScope) -> anyhow::Result<()> {
        let ec2 = &ctx.aws.ec2;
        let Some(table) = Ec2::<Self>::get(ctx, id).await? else { return Ok(()) };
        for association in table.associations().iter().filter(|a| a.main() != Some(true)) {
            if let Some(association_id) = association.route_table_association_id() {
                if_there(ec2.disassociate_route_table().association_id(association_id).send(), || {
                    format!("disassociating {association_id} from {id}")
                })
                .await?;
            }
        }
        delete_when_free(
            scope,
            &format!("route table {id}"),
            EC2_IN_USE,
            || async {
                call(ec2.delete_route_table().route_table_id(id).send(), || format!("deleting route table {id}")).await
            },
            || async { Ok(crate::aws::Holders::Unknown) },
        )
        .await
    }
}

/// Where a route table's default route points.
#[derive(Debug, Clone, Copy)]
pub enum RouteTarget {
    InternetGateway,
    NatGateway,
    /// The NAT instance's network interface: keeps working if the instance is replaced with
    /// the same interface, and is what the API wants for one-interface instances.
    NatInstance,
}

impl RouteTarget {
    /// The record the default route goes to.
    pub fn key(self) -> &'static str {
        match self {
            RouteTarget::InternetGateway => keys::INTERNET_GATEWAY,
            RouteTarget::NatGateway => keys::NAT_GATEWAY,
            RouteTarget::NatInstance => keys::NAT_INSTANCE,
        }
    }

    fn resolve(self, env: &Env) -> anyhow::Result<String> {
        match self {
            RouteTarget::NatInstance => env.attr(keys::NAT_INSTANCE, "eni"),
            _ => env.id(self.key()),
        }
    }
}

pub struct RouteTableStep {
    pub key: &'static str,
    pub subnets: [&'static str; 2],
    pub target: RouteTarget,
}

#[async_trait]
impl StepAction<Ctx> for RouteTableStep {
    fn desired(&self, _ctx: &Ctx, env: &Env) -> anyhow::Result<Vec<Desired>> {
        let subnets = self.subnets.iter().map(|k| env.id(k)).collect::<anyhow::Result<Vec<_>>>()?;
        let wanted = attrs([("route_target", self.target.resolve(env)?)]);
        Ok(vec![Desired::new(self.key, Kind::RouteTable, wanted).with("subnets", subnets)])
    }

    async fn apply(&self, ctx: &Ctx, scope: &StepScope) -> anyhow::Result<Summary> {
        let vpc_id = scope.id_of(keys::VPC)?;
        let want = scope.wanted_one(ctx, self)?;
        let target = want.text("route_target").to_string();
        let subnets: Vec<String> = want.list("subnets");
        let (key, vpc, target_ref, subnets) = (self.key, vpc_id.as_str(), target.as_str(), &subnets);
        let ensured = scope
            .ensure(ctx, &Ec2::<RouteTables>::OPS, want, |existing, token| async move {
                let ec2 = &ctx.aws.ec2;
                let table_id = match existing {
                    Some(existing) => existing.id,
                    None => call(
                        ec2.create_route_table()
                            .vpc_id(vpc)
                            .client_token(token)
                            .tag_specifications(ctx.tags.ec2(ResourceType::RouteTable, key))
                            .send(),
                        || format!("creating route table in {vpc}"),
                    )
                    .await?
                    .route_table()
                    .and_then(|t| t.route_table_id())
                    .context("CreateRouteTable returned no id")?
                    .to_string(),
                };
                let table = Ec2::<RouteTables>::get_fresh(ctx, &table_id).await?;
                match default_route_target(&table) {
                    Some(current) if current == target_ref => {}
                    Some(_) => {
                        fresh(|| async {
                            let req =
                                ec2.replace_route().route_table_id(&table_id).destination_cidr_block(DEFAULT_ROUTE);
                            call(route_to(req, target_ref).send(), || {
                                format!("pointing {table_id}'s default route at {target_ref}")
                            })
                            .await
                        })
                        .await?;
                    }
                    None => {
                        fresh(|| async {
                            let req =
                                ec2.create_route().route_table_id(&table_id).destination_cidr_block(DEFAULT_ROUTE);
                            call(route_to(req, target_ref).send(), || {
                                format!("adding a default route via {target_ref} to {table_id}")
                            })
                            .await
                        })
                        .await?;
                    }
                }
                let associated: Vec<&str> = table.associations().iter().filter_map(|a| a.subnet_id()).collect();
                for subnet in subnets.iter().filter(|s| !associated.contains(&s.as_str())) {
                    fresh(|| async {
                        call(ec2.associate_route_table().route_table_id(&table_id).subnet_id(subnet).send(), || {
                            format!("associating route table {table_id} with {subnet}")
                        })
                        .await
                    })
                    .await?;
                }
                Ok(Applied::id(table_id))
            })
            .await?;
        Ok(ensured.summary(&format!(" (0.0.0.0/0 -> {target})")))
    }
}

/// `CreateRoute` and `ReplaceRoute` take the target in a field named after its type.
trait RouteTargetSetter: Sized {
    fn gateway(self, id: &str) -> Self;
    fn nat_gateway(self, id: &str) -> Self;
    fn network_interface(self, id: &str) -> Self;
}

macro_rules! route_target_setter {
    ($builder:ty) => {
        impl RouteTargetSetter for $builder {
            fn gateway(self, id: &str) -> Self {
                self.gateway_id(id)
            }
            fn nat_gateway(self, id: &str) -> Self {
                self.nat_gateway_id(id)
            }
            fn network_interface(self, id: &str) -> Self {
                self.network_interface_id(id)
            }
        }
    };
}
route_target_setter!(aws_sdk_ec2::operation::create_route::builders::CreateRouteFluentBuilder);
route_target_setter!(aws_sdk_ec2::operation::replace_route::builders::ReplaceRouteFluentBuilder);

fn route_to<B: RouteTargetSetter>(builder: B, target: &str) -> B {
    if target.starts_with("nat-") {
        builder.nat_gateway(target)
    } else if target.starts_with("eni-") {
        builder.network_interface(target)
    } else {
        builder.gateway(target)
    }
}

// ---------------------------------------------------------------------------------------------
// Imported VPC

pub struct ImportVpc {
    pub vpc_id: String,
}

/// A subnet of an imported VPC, classified by its default route.
struct ImportedSubnet {
    id: String,
    az: String,
    cidr: String,
    public: bool,
}

impl ImportVpc {
    fn refuse(&self, problem: impl std::fmt::Display, help: &str) -> anyhow::Error {
        Diagnostic::new(format!("vpc_id = {}: {problem}", self.vpc_id)).with_help(help).into()
    }

    /// Fargate's EFS mount resolves the file system's DNS name: without DNS support and
    /// hostnames the task stops with "Failed to resolve fs-....efs...".
    async fn check_dns(&self, ctx: &Ctx) -> anyhow::Result<()> {
        for attribute in [VpcAttributeName::EnableDnsSupport, VpcAttributeName::EnableDnsHostnames] {
            let out = call(
                ctx.aws.ec2.describe_vpc_attribute().vpc_id(&self.vpc_id).attribute(attribute.clone()).send(),
                || format!("reading {} of {}", attribute.as_str(), self.vpc_id),
            )
            .await?;
            let on = out.enable_dns_support().or(out.enable_dns_hostnames()).and_then(|v| v.value()).unwrap_or(false);
            if !on {
                return Err(self.refuse(
                    format!("{} is off", attribute.as_str()),
                    &format!(
                        "GitLab's task mounts EFS by DNS name; turn it on with `aws ec2 modify-vpc-attribute --vpc-id {} --{} \"{{\\\"Value\\\":true}}\"`",
                        self.vpc_id,
                        if attribute == VpcAttributeName::EnableDnsSupport { "enable-dns-support" } else { "enable-dns-hostnames" }
                    ),
                ));
            }
        }
        Ok(())
    }
}

#[async_trait]
impl StepAction<Ctx> for ImportVpc {
    async fn apply(&self, ctx: &Ctx, scope: &StepScope) -> anyhow::Result<Summary> {
        let vpc_id = &self.vpc_id;
        let Some(vpc) = Ec2::<Vpcs>::get(ctx, vpc_id).await? else {
            return Err(self.refuse(
                format!("no such VPC in {}", ctx.region()),
                "check the id and the region, or remove vpc_id to create a new VPC",
            ));
        };
        self.check_dns(ctx).await?;
        let by_vpc = || Filter::builder().name("vpc-id").values(vpc_id).build();
        let subnets = Subnets::describe(ctx, Query::Filters(vec![by_vpc()])).await?;
        let tables = RouteTables::describe(ctx, Query::Filters(vec![by_vpc()])).await?;
        let main_table = tables.iter().find(|t| t.associations().iter().any(|a| a.main() == Some(true)));
        // A subnet without an explicit association uses the VPC's main route table.
        let table_of = |subnet: &str| {
            tables.iter().find(|t| t.associations().iter().any(|a| a.subnet_id() == Some(subnet))).or(main_table)
        };
        let mut public = Vec::new();
        let mut private = Vec::new();
        for s in &subnets {
            let (Some(id), Some(az)) = (s.subnet_id(), s.availability_zone()) else { continue };
            let Some(target) = table_of(id).and_then(default_route_target) else { continue };
            let subnet = ImportedSubnet {
                id: id.to_string(),
                az: az.to_string(),
                cidr: s.cidr_block().unwrap_or_default().to_string(),
                public: target.starts_with("igw-"),
            };
            if subnet.public { public.push(subnet) } else { private.push(subnet) }
        }
        let pick = |mut list: Vec<ImportedSubnet>, what: &str| -> anyhow::Result<Vec<ImportedSubnet>> {
            list.sort_by(|a, b| (&a.az, &a.id).cmp(&(&b.az, &b.id)));
            let mut chosen: Vec<ImportedSubnet> = Vec::new();
            for s in list {
                if chosen.len() < 2 && chosen.iter().all(|c| c.az != s.az) {
                    chosen.push(s);
                }
            }
            if chosen.len() == 2 {
                return Ok(chosen);
            }
            Err(self.refuse(
                format!("needs two {what} subnets in distinct availability zones, found {}", chosen.len()),
                if what == "public" {
                    "public subnets are those whose route table sends 0.0.0.0/0 to an internet gateway"
                } else {
                    "private subnets are those whose route table sends 0.0.0.0/0 to a NAT gateway or instance (GitLab needs outbound access); add a NAT, or remove vpc_id to let gitlab-provision create a VPC"
                },
            ))
        };
        let public = pick(public, "public")?;
        let private = pick(private, "private")?;

        let cidr = vpc.cidr_block().unwrap_or_default().to_string();
        let imported = |kind: Kind, id: &str, attrs| ResourceRecord {
            kind: kind.to_string(),
            step: String::new(),
            status: RecordStatus::Imported,
            id: Some(id.to_string()),
            depends_on: vec![],
            attrs,
            generation: 0,
            updated_at: String::new(),
        };
        scope.record(keys::VPC, imported(Kind::Vpc, vpc_id, attrs([("cidr", cidr.clone())]))).await?;
        for (key, subnet) in keys::SUBNETS.iter().zip(public.iter().chain(private.iter())) {
            let a = attrs([
                ("cidr", subnet.cidr.clone()),
                ("az", subnet.az.clone()),
                ("public", subnet.public.to_string()),
            ]);
            scope.record(key, imported(Kind::Subnet, &subnet.id, a)).await?;
        }
        Ok(Summary::new(
            format!(
                "imported {vpc_id} ({cidr}): public {}, private {}",
                public.iter().map(|s| s.id.as_str()).collect::<Vec<_>>().join(", "),
                private.iter().map(|s| s.id.as_str()).collect::<Vec<_>>().join(", ")
            ),
            false,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnet_plan_quarters_the_vpc() {
        let plan = SubnetPlan::new("10.20.0.0/16".parse().unwrap());
        let cidrs: Vec<String> = plan.subnets.iter().map(|(_, c, _, _)| c.to_string()).collect();
        assert_eq!(cidrs, ["10.20.0.0/18", "10.20.64.0/18", "10.20.128.0/18", "10.20.192.0/18"]);
        assert_eq!(
            plan.subnets.iter().map(|s| (s.2, s.3)).collect::<Vec<_>>(),
            [(true, 0), (true, 1), (false, 0), (false, 1)]
        );
        assert_eq!(SubnetPlan::new("10.0.0.0/26".parse().unwrap()).subnets[3].1.to_string(), "10.0.0.48/28");
    }
}
