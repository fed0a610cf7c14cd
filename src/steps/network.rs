//! The VPC: VPC, subnets, internet gateway, route tables, or an imported VPC.

use std::collections::BTreeMap;

use anyhow::Context as _;
use async_trait::async_trait;
use aws_sdk_ec2::types::{AttributeBooleanValue, Filter, InternetGateway, ResourceType, RouteTable};
use ipnet::Ipv4Net;

use super::nat;
use super::{Ctx, EC2_IN_USE, delete_when_free};
use crate::aws::{AwsError, AwsResultExt, found};
use crate::config::NatKind;
use crate::engine::{Created, Desired, Discovered, Live, ResourceOps, StepAction, StepScope};
use crate::state::{RecordStatus, ResourceRecord};

pub const VPC: &str = "ec2:vpc";
pub const SUBNET: &str = "ec2:subnet";
pub const INTERNET_GATEWAY: &str = "ec2:internet-gateway";
pub const ROUTE_TABLE: &str = "ec2:route-table";

pub const KEY_VPC: &str = "vpc";
pub const KEY_INTERNET_GATEWAY: &str = "internet-gateway";
pub const KEY_PUBLIC_ROUTES: &str = "route-table-public";
pub const KEY_PRIVATE_ROUTES: &str = "route-table-private";
pub const SUBNET_KEYS: [&str; 4] = ["subnet-public-a", "subnet-public-b", "subnet-private-a", "subnet-private-b"];
pub const PUBLIC_SUBNETS: [&str; 2] = ["subnet-public-a", "subnet-public-b"];
pub const PRIVATE_SUBNETS: [&str; 2] = ["subnet-private-a", "subnet-private-b"];

pub(crate) fn attrs<const N: usize>(pairs: [(&str, String); N]) -> BTreeMap<String, String> {
    pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

pub(crate) fn bool_value(value: bool) -> AttributeBooleanValue {
    AttributeBooleanValue::builder().value(value).build()
}

pub(crate) fn required_id(state_key: &str, scope: &StepScope) -> anyhow::Result<String> {
    scope
        .state
        .id_of(state_key)
        .with_context(|| format!("{state_key} is not recorded in the state; its step must run first"))
}

/// The state key of an EC2 resource of this stack, from its tags.
pub(crate) fn stack_key(tags: &[aws_sdk_ec2::types::Tag], stack: &str) -> Option<String> {
    let get = |k: &str| tags.iter().find(|t| t.key() == Some(k)).and_then(|t| t.value());
    if get(crate::aws::STACK_TAG) == Some(stack) { get(crate::aws::RESOURCE_TAG).map(str::to_string) } else { None }
}

pub(crate) fn stack_filter(ctx: &Ctx) -> Filter {
    Filter::builder().name(format!("tag:{}", crate::aws::STACK_TAG)).values(&ctx.tags.stack).build()
}

pub(crate) fn discovered(key: String, id: &str) -> Discovered {
    Discovered { key, id: id.to_string(), attrs: BTreeMap::new() }
}

// ---------------------------------------------------------------------------------------------
// VPC

pub struct CreateVpc {
    pub cidr: Ipv4Net,
}

#[async_trait]
impl StepAction<Ctx> for CreateVpc {
    async fn apply(&self, ctx: &Ctx, scope: &StepScope) -> anyhow::Result<String> {
        let ec2 = &ctx.aws.ec2;
        let region = &ctx.aws.region;
        let desired = Desired {
            key: KEY_VPC.into(),
            kind: VPC.into(),
            depends_on: vec![],
            attrs: attrs([("cidr", self.cidr.to_string())]),
        };
        let ensured = scope
            .ensure(ctx, &VpcOps, desired, |existing, _token| async move {
                let vpc_id = match existing {
                    Some(found) => found.id,
                    None => ec2
                        .create_vpc()
                        .cidr_block(self.cidr.to_string())
                        .tag_specifications(ctx.tags.ec2(ResourceType::Vpc, KEY_VPC))
                        .send()
                        .await
                        .or_aws(|| format!("creating VPC {} ({region})", self.cidr))?
                        .vpc()
                        .and_then(|v| v.vpc_id())
                        .context("CreateVpc returned no VPC id")?
                        .to_string(),
                };
                // One attribute per call, as the API demands. Hostnames are needed for EFS mount
                // target DNS names and for ECS to resolve AWS endpoints.
                ec2.modify_vpc_attribute()
                    .vpc_id(&vpc_id)
                    .enable_dns_support(bool_value(true))
                    .send()
                    .await
                    .or_aws(|| format!("enabling DNS support on {vpc_id}"))?;
                ec2.modify_vpc_attribute()
                    .vpc_id(&vpc_id)
                    .enable_dns_hostnames(bool_value(true))
                    .send()
                    .await
                    .or_aws(|| format!("enabling DNS hostnames on {vpc_id}"))?;
                Ok(Created { id: vpc_id, attrs: BTreeMap::new() })
            })
            .await?;
        Ok(format!("{} {} ({})", ensured.verb(), ensured.id(), self.cidr))
    }
}

pub struct VpcOps;

#[async_trait]
impl ResourceOps<Ctx> for VpcOps {
    fn noun(&self) -> &'static str {
        "VPC"
    }

    async fn read(&self, ctx: &Ctx, record: &ResourceRecord) -> anyhow::Result<Live> {
        let id = record.id()?;
        let out = found(ctx.aws.ec2.describe_vpcs().vpc_ids(id).send().await.or_aws(|| format!("reading VPC {id}")))?;
        let Some(vpc) = out.and_then(|o| o.vpcs.and_then(|v| v.into_iter().next())) else {
            return Ok(Live::Missing);
        };
        let cidr = vpc.cidr_block().unwrap_or_default().to_string();
        let mut drift = Vec::new();
        if let Some(recorded) = record.attr("cidr")
            && recorded != cidr
        {
            drift.push(format!("CIDR is {cidr}, recorded {recorded}"));
        }
        Ok(Live::Present { summary: format!("{cidr}, {}", vpc.state().map(|s| s.as_str()).unwrap_or("?")), drift })
    }

    async fn find(
        &self,
        ctx: &Ctx,
        key: &str,
        _record: &ResourceRecord,
        _token: &str,
    ) -> anyhow::Result<Option<String>> {
        let out = ctx
            .aws
            .ec2
            .describe_vpcs()
            .set_filters(Some(ctx.tags.ec2_filters(key)))
            .send()
            .await
            .or_aws(|| format!("looking for the VPC tagged {key}"))?;
        Ok(out.vpcs().iter().find_map(|v| v.vpc_id().map(str::to_string)))
    }

    async fn delete(&self, ctx: &Ctx, record: &ResourceRecord, _scope: &StepScope) -> anyhow::Result<()> {
        let id = record.id()?;
        delete_when_free(EC2_IN_USE, || async {
            ctx.aws.ec2.delete_vpc().vpc_id(id).send().await.map(|_| ()).or_aws(|| format!("deleting VPC {id}"))
        })
        .await?;
        Ok(())
    }

    async fn discover(&self, ctx: &Ctx) -> anyhow::Result<Vec<Discovered>> {
        let out =
            ctx.aws.ec2.describe_vpcs().filters(stack_filter(ctx)).send().await.or_aws(|| "discovering VPCs".into())?;
        Ok(out
            .vpcs()
            .iter()
            .filter_map(|v| Some(discovered(stack_key(v.tags(), &ctx.tags.stack)?, v.vpc_id()?)))
            .collect())
    }
}

// ---------------------------------------------------------------------------------------------
// Subnets

/// Four equal quarters of the VPC: public a/b, private a/b.
pub struct SubnetPlan {
    pub subnets: Vec<(&'static str, Ipv4Net, bool, usize)>,
}

impl SubnetPlan {
    pub fn new(vpc: Ipv4Net) -> Self {
        let quarters: Vec<Ipv4Net> = vpc.subnets(vpc.prefix_len() + 2).map(|s| s.collect()).unwrap_or_default();
        let subnets =
            SUBNET_KEYS.iter().zip(quarters).enumerate().map(|(i, (key, cidr))| (*key, cidr, i < 2, i % 2)).collect();
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

pub struct CreateSubnets {
    pub plan: SubnetPlan,
}

/// The first two available zones of the region, in name order (stable across runs).
async fn two_zones(ctx: &Ctx) -> anyhow::Result<Vec<String>> {
    let out = ctx
        .aws
        .ec2
        .describe_availability_zones()
        .filters(Filter::builder().name("state").values("available").build())
        .filters(Filter::builder().name("zone-type").values("availability-zone").build())
        .send()
        .await
        .or_aws(|| format!("listing availability zones in {}", ctx.aws.region))?;
    let mut zones: Vec<String> =
        out.availability_zones().iter().filter_map(|z| z.zone_name().map(str::to_string)).collect();
    zones.sort();
    zones.truncate(2);
    anyhow::ensure!(zones.len() == 2, "region {} has fewer than two available zones", ctx.aws.region);
    Ok(zones)
}

impl CreateSubnets {
    async fn ensure_one(
        &self,
        ctx: &Ctx,
        scope: &StepScope,
        vpc_id: &str,
        zones: &[String],
        entry: &(&'static str, Ipv4Net, bool, usize),
    ) -> anyhow::Result<String> {
        let (key, cidr, public, zone) = *entry;
        let az = zones[zone].clone();
        let desired = Desired {
            key: key.into(),
            kind: SUBNET.into(),
            depends_on: vec![KEY_VPC.into()],
            attrs: attrs([("cidr", cidr.to_string()), ("az", az.clone()), ("public", public.to_string())]),
        };
        let ec2 = &ctx.aws.ec2;
        let ensured = scope
            .ensure(ctx, &SubnetOps, desired, |existing, _token| async move {
                let subnet_id = match existing {
                    Some(found) => found.id,
                    None => ec2
                        .create_subnet()
                        .vpc_id(vpc_id)
                        .cidr_block(cidr.to_string())
                        .availability_zone(&az)
                        .tag_specifications(ctx.tags.ec2(ResourceType::Subnet, key))
                        .send()
                        .await
                        .or_aws(|| format!("creating subnet {cidr} in {vpc_id} ({az})"))?
                        .subnet()
                        .and_then(|s| s.subnet_id())
                        .context("CreateSubnet returned no id")?
                        .to_string(),
                };
                if public {
                    ec2.modify_subnet_attribute()
                        .subnet_id(&subnet_id)
                        .map_public_ip_on_launch(bool_value(true))
                        .send()
                        .await
                        .or_aws(|| format!("enabling public IPs on {subnet_id}"))?;
                }
                Ok(Created { id: subnet_id, attrs: BTreeMap::new() })
            })
            .await?;
        Ok(format!("{} {}", ensured.verb(), ensured.id()))
    }
}

#[async_trait]
impl StepAction<Ctx> for CreateSubnets {
    async fn apply(&self, ctx: &Ctx, scope: &StepScope) -> anyhow::Result<String> {
        let vpc_id = required_id(KEY_VPC, scope)?;
        let needs_zones = self
            .plan
            .subnets
            .iter()
            .any(|(key, ..)| scope.state.get(key).is_none_or(|r| r.status != RecordStatus::Created));
        let zones = if needs_zones {
            two_zones(ctx).await?
        } else {
            // Recorded subnets keep their zones; no need to ask AWS again.
            self.plan.subnets[..2]
                .iter()
                .map(|(key, ..)| {
                    scope.state.get(key).and_then(|r| r.attr("az").map(str::to_string)).unwrap_or_default()
                })
                .collect()
        };
        let [a, b, c, d] = &self.plan.subnets[..] else { anyhow::bail!("a subnet plan has four subnets") };
        let (a, b, c, d) = tokio::try_join!(
            self.ensure_one(ctx, scope, &vpc_id, &zones, a),
            self.ensure_one(ctx, scope, &vpc_id, &zones, b),
            self.ensure_one(ctx, scope, &vpc_id, &zones, c),
            self.ensure_one(ctx, scope, &vpc_id, &zones, d),
        )?;
        Ok(format!("{a}, {b}, {c}, {d} in {}", zones.join(" and ")))
    }
}

pub struct SubnetOps;

#[async_trait]
impl ResourceOps<Ctx> for SubnetOps {
    fn noun(&self) -> &'static str {
        "subnet"
    }

    async fn read(&self, ctx: &Ctx, record: &ResourceRecord) -> anyhow::Result<Live> {
        let id = record.id()?;
        let out = found(
            ctx.aws.ec2.describe_subnets().subnet_ids(id).send().await.or_aws(|| format!("reading subnet {id}")),
        )?;
        let Some(subnet) = out.and_then(|o| o.subnets.and_then(|v| v.into_iter().next())) else {
            return Ok(Live::Missing);
        };
        let cidr = subnet.cidr_block().unwrap_or_default();
        let az = subnet.availability_zone().unwrap_or_default();
        let mut drift = Vec::new();
        if record.attr("cidr").is_some_and(|c| c != cidr) {
            drift.push(format!("CIDR is {cidr}"));
        }
        if record.status == RecordStatus::Created
            && record.attr("public") == Some("true")
            && subnet.map_public_ip_on_launch() != Some(true)
        {
            drift.push("public IPs on launch are off".into());
        }
        Ok(Live::Present { summary: format!("{cidr} in {az}"), drift })
    }

    async fn find(
        &self,
        ctx: &Ctx,
        key: &str,
        _record: &ResourceRecord,
        _token: &str,
    ) -> anyhow::Result<Option<String>> {
        let out = ctx
            .aws
            .ec2
            .describe_subnets()
            .set_filters(Some(ctx.tags.ec2_filters(key)))
            .send()
            .await
            .or_aws(|| format!("looking for the subnet tagged {key}"))?;
        Ok(out.subnets().iter().find_map(|s| s.subnet_id().map(str::to_string)))
    }

    async fn delete(&self, ctx: &Ctx, record: &ResourceRecord, _scope: &StepScope) -> anyhow::Result<()> {
        let id = record.id()?;
        delete_when_free(EC2_IN_USE, || async {
            ctx.aws
                .ec2
                .delete_subnet()
                .subnet_id(id)
                .send()
                .await
                .map(|_| ())
                .or_aws(|| format!("deleting subnet {id}"))
        })
        .await?;
        Ok(())
    }

    async fn discover(&self, ctx: &Ctx) -> anyhow::Result<Vec<Discovered>> {
        let out = ctx
            .aws
            .ec2
            .describe_subnets()
            .filters(stack_filter(ctx))
            .send()
            .await
            .or_aws(|| "discovering subnets".into())?;
        Ok(out
            .subnets()
            .iter()
            .filter_map(|s| Some(discovered(stack_key(s.tags(), &ctx.tags.stack)?, s.subnet_id()?)))
            .collect())
    }
}

// ---------------------------------------------------------------------------------------------
// Internet gateway

pub struct CreateInternetGateway;

#[async_trait]
impl StepAction<Ctx> for CreateInternetGateway {
    async fn apply(&self, ctx: &Ctx, scope: &StepScope) -> anyhow::Result<String> {
        let vpc_id = required_id(KEY_VPC, scope)?;
        let ec2 = &ctx.aws.ec2;
        let desired = Desired {
            key: KEY_INTERNET_GATEWAY.into(),
            kind: INTERNET_GATEWAY.into(),
            depends_on: vec![KEY_VPC.into()],
            attrs: attrs([("vpc_id", vpc_id.clone())]),
        };
        let vpc = vpc_id.as_str();
        let ensured = scope
            .ensure(ctx, &InternetGatewayOps, desired, |existing, _token| async move {
                let (igw_id, attached) = match existing {
                    Some(found) => {
                        let igw = describe_internet_gateway(ctx, &found.id)
                            .await?
                            .with_context(|| format!("internet gateway {} vanished", found.id))?;
                        (found.id, attached_vpc(&igw))
                    }
                    None => {
                        let out = ec2
                            .create_internet_gateway()
                            .tag_specifications(ctx.tags.ec2(ResourceType::InternetGateway, KEY_INTERNET_GATEWAY))
                            .send()
                            .await
                            .or_aws(|| format!("creating internet gateway ({})", ctx.aws.region))?;
                        (
                            out.internet_gateway()
                                .and_then(|g| g.internet_gateway_id())
                                .context("CreateInternetGateway returned no id")?
                                .to_string(),
                            None,
                        )
                    }
                };
                match attached {
                    Some(other) if other == vpc => {}
                    Some(other) => anyhow::bail!("internet gateway {igw_id} is attached to {other}, not {vpc}"),
                    None => {
                        ec2.attach_internet_gateway()
                            .internet_gateway_id(&igw_id)
                            .vpc_id(vpc)
                            .send()
                            .await
                            .or_aws(|| format!("attaching internet gateway {igw_id} to {vpc}"))?;
                    }
                }
                Ok(Created { id: igw_id, attrs: BTreeMap::new() })
            })
            .await?;
        Ok(format!("{} {} on {vpc_id}", ensured.verb(), ensured.id()))
    }
}

async fn describe_internet_gateway(ctx: &Ctx, id: &str) -> Result<Option<InternetGateway>, AwsError> {
    let out = found(
        ctx.aws
            .ec2
            .describe_internet_gateways()
            .internet_gateway_ids(id)
            .send()
            .await
            .or_aws(|| format!("reading internet gateway {id}")),
    )?;
    Ok(out.and_then(|o| o.internet_gateways.and_then(|v| v.into_iter().next())))
}

fn attached_vpc(igw: &InternetGateway) -> Option<String> {
    igw.attachments().iter().find_map(|a| a.vpc_id().map(str::to_string))
}

pub struct InternetGatewayOps;

#[async_trait]
impl ResourceOps<Ctx> for InternetGatewayOps {
    fn noun(&self) -> &'static str {
        "internet gateway"
    }

    async fn read(&self, ctx: &Ctx, record: &ResourceRecord) -> anyhow::Result<Live> {
        let Some(igw) = describe_internet_gateway(ctx, record.id()?).await? else {
            return Ok(Live::Missing);
        };
        let attached: Vec<&str> = igw.attachments().iter().filter_map(|a| a.vpc_id()).collect();
        let mut drift = Vec::new();
        if let Some(vpc) = record.attr("vpc_id")
            && !attached.contains(&vpc)
        {
            drift.push(format!("not attached to {vpc}"));
        }
        Ok(Live::Present {
            summary: format!(
                "attached to {}",
                if attached.is_empty() { "nothing".to_string() } else { attached.join(", ") }
            ),
            drift,
        })
    }

    async fn find(
        &self,
        ctx: &Ctx,
        key: &str,
        _record: &ResourceRecord,
        _token: &str,
    ) -> anyhow::Result<Option<String>> {
        let out = ctx
            .aws
            .ec2
            .describe_internet_gateways()
            .set_filters(Some(ctx.tags.ec2_filters(key)))
            .send()
            .await
            .or_aws(|| format!("looking for the internet gateway tagged {key}"))?;
        Ok(out.internet_gateways().iter().find_map(|g| g.internet_gateway_id().map(str::to_string)))
    }

    async fn delete(&self, ctx: &Ctx, record: &ResourceRecord, _scope: &StepScope) -> anyhow::Result<()> {
        let id = record.id()?;
        let ec2 = &ctx.aws.ec2;
        let Some(igw) = describe_internet_gateway(ctx, id).await? else {
            return Ok(());
        };
        if let Some(vpc) = attached_vpc(&igw) {
            // Detaching fails while the VPC still has mapped public addresses (a NAT gateway
            // being deleted): retried as "in use".
            delete_when_free(EC2_IN_USE, || async {
                ec2.detach_internet_gateway()
                    .internet_gateway_id(id)
                    .vpc_id(&vpc)
                    .send()
                    .await
                    .map(|_| ())
                    .or_aws(|| format!("detaching internet gateway {id} from {vpc}"))
            })
            .await?;
        }
        delete_when_free(EC2_IN_USE, || async {
            ec2.delete_internet_gateway()
                .internet_gateway_id(id)
                .send()
                .await
                .map(|_| ())
                .or_aws(|| format!("deleting internet gateway {id}"))
        })
        .await?;
        Ok(())
    }

    async fn discover(&self, ctx: &Ctx) -> anyhow::Result<Vec<Discovered>> {
        let out = ctx
            .aws
            .ec2
            .describe_internet_gateways()
            .filters(stack_filter(ctx))
            .send()
            .await
            .or_aws(|| "discovering internet gateways".into())?;
        Ok(out
            .internet_gateways()
            .iter()
            .filter_map(|g| Some(discovered(stack_key(g.tags(), &ctx.tags.stack)?, g.internet_gateway_id()?)))
            .collect())
    }
}

// ---------------------------------------------------------------------------------------------
// Route tables

/// Where a route table's default route points.
#[derive(Debug, Clone, Copy)]
enum RouteTarget {
    InternetGateway,
    Nat(NatKind),
}

pub struct RouteTableStep {
    key: &'static str,
    subnets: [&'static str; 2],
    target: RouteTarget,
}

impl RouteTableStep {
    pub fn public() -> Self {
        RouteTableStep { key: KEY_PUBLIC_ROUTES, subnets: PUBLIC_SUBNETS, target: RouteTarget::InternetGateway }
    }

    pub fn private(nat: NatKind) -> Self {
        RouteTableStep { key: KEY_PRIVATE_ROUTES, subnets: PRIVATE_SUBNETS, target: RouteTarget::Nat(nat) }
    }

    /// The state key the default route goes to, and the id to route to.
    fn target(&self, scope: &StepScope) -> anyhow::Result<(&'static str, String)> {
        Ok(match self.target {
            RouteTarget::InternetGateway => (KEY_INTERNET_GATEWAY, required_id(KEY_INTERNET_GATEWAY, scope)?),
            RouteTarget::Nat(NatKind::Gateway) => (nat::KEY_NAT_GATEWAY, required_id(nat::KEY_NAT_GATEWAY, scope)?),
            // Routing to the instance's network interface keeps working if the instance is
            // replaced with the same interface, and is what the API wants for one-ENI instances.
            RouteTarget::Nat(NatKind::Instance) => {
                let record = scope.state.get(nat::KEY_NAT_INSTANCE).context("the NAT instance is not recorded")?;
                (
                    nat::KEY_NAT_INSTANCE,
                    record.attr("eni").context("the NAT instance record has no network interface")?.to_string(),
                )
            }
        })
    }
}

const DEFAULT_ROUTE: &str = "0.0.0.0/0";

fn default_route_target(table: &RouteTable) -> Option<String> {
    table.routes().iter().filter(|r| r.destination_cidr_block() == Some(DEFAULT_ROUTE)).find_map(|r| {
        r.gateway_id().or(r.nat_gateway_id()).or(r.network_interface_id()).or(r.instance_id()).map(str::to_string)
    })
}

#[async_trait]
impl StepAction<Ctx> for RouteTableStep {
    async fn apply(&self, ctx: &Ctx, scope: &StepScope) -> anyhow::Result<String> {
        let vpc_id = required_id(KEY_VPC, scope)?;
        let (target_key, target) = self.target(scope)?;
        let subnet_ids = self.subnets.iter().map(|k| required_id(k, scope)).collect::<anyhow::Result<Vec<_>>>()?;
        let mut depends_on = vec![KEY_VPC.to_string(), target_key.to_string()];
        depends_on.extend(self.subnets.iter().map(|s| s.to_string()));
        let desired = Desired {
            key: self.key.into(),
            kind: ROUTE_TABLE.into(),
            depends_on,
            attrs: attrs([("route_target", target.clone()), ("subnets", subnet_ids.join(","))]),
        };
        let ec2 = &ctx.aws.ec2;
        let (key, vpc, target_ref, subnets) = (self.key, vpc_id.as_str(), target.as_str(), &subnet_ids);
        let ensured = scope
            .ensure(ctx, &RouteTableOps, desired, |existing, token| async move {
                let table_id = match existing {
                    Some(found) => found.id,
                    None => ec2
                        .create_route_table()
                        .vpc_id(vpc)
                        .client_token(token)
                        .tag_specifications(ctx.tags.ec2(ResourceType::RouteTable, key))
                        .send()
                        .await
                        .or_aws(|| format!("creating route table in {vpc}"))?
                        .route_table()
                        .and_then(|t| t.route_table_id())
                        .context("CreateRouteTable returned no id")?
                        .to_string(),
                };
                let table = describe_route_table(ctx, &table_id)
                    .await?
                    .with_context(|| format!("route table {table_id} vanished"))?;
                match default_route_target(&table) {
                    Some(current) if current == target_ref => {}
                    Some(_) => {
                        let req = ec2.replace_route().route_table_id(&table_id).destination_cidr_block(DEFAULT_ROUTE);
                        route_to(req, target_ref)
                            .send()
                            .await
                            .or_aws(|| format!("pointing {table_id}'s default route at {target_ref}"))?;
                    }
                    None => {
                        let req = ec2.create_route().route_table_id(&table_id).destination_cidr_block(DEFAULT_ROUTE);
                        route_to(req, target_ref)
                            .send()
                            .await
                            .or_aws(|| format!("adding a default route via {target_ref} to {table_id}"))?;
                    }
                }
                let associated: Vec<&str> = table.associations().iter().filter_map(|a| a.subnet_id()).collect();
                for subnet in subnets.iter().filter(|s| !associated.contains(&s.as_str())) {
                    ec2.associate_route_table()
                        .route_table_id(&table_id)
                        .subnet_id(subnet)
                        .send()
                        .await
                        .or_aws(|| format!("associating route table {table_id} with {subnet}"))?;
                }
                Ok(Created { id: table_id, attrs: BTreeMap::new() })
            })
            .await?;
        Ok(format!("{} {} (0.0.0.0/0 -> {target})", ensured.verb(), ensured.id()))
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

async fn describe_route_table(ctx: &Ctx, id: &str) -> Result<Option<RouteTable>, AwsError> {
    let out = found(
        ctx.aws
            .ec2
            .describe_route_tables()
            .route_table_ids(id)
            .send()
            .await
            .or_aws(|| format!("reading route table {id}")),
    )?;
    Ok(out.and_then(|o| o.route_tables.and_then(|v| v.into_iter().next())))
}

pub struct RouteTableOps;

#[async_trait]
impl ResourceOps<Ctx> for RouteTableOps {
    fn noun(&self) -> &'static str {
        "route table"
    }

    async fn read(&self, ctx: &Ctx, record: &ResourceRecord) -> anyhow::Result<Live> {
        let Some(table) = describe_route_table(ctx, record.id()?).await? else {
            return Ok(Live::Missing);
        };
        let target = default_route_target(&table);
        let associated: Vec<&str> = table.associations().iter().filter_map(|a| a.subnet_id()).collect();
        let mut drift = Vec::new();
        if let Some(want) = record.attr("route_target")
            && target.as_deref() != Some(want)
        {
            drift.push(format!("default route goes to {}, not {want}", target.as_deref().unwrap_or("nothing")));
        }
        for subnet in record.attr("subnets").unwrap_or_default().split(',').filter(|s| !s.is_empty()) {
            if !associated.contains(&subnet) {
                drift.push(format!("{subnet} is not associated"));
            }
        }
        Ok(Live::Present {
            summary: format!("0.0.0.0/0 -> {}, {} subnets", target.as_deref().unwrap_or("nothing"), associated.len()),
            drift,
        })
    }

    async fn find(
        &self,
        ctx: &Ctx,
        key: &str,
        _record: &ResourceRecord,
        _token: &str,
    ) -> anyhow::Result<Option<String>> {
        let out = ctx
            .aws
            .ec2
            .describe_route_tables()
            .set_filters(Some(ctx.tags.ec2_filters(key)))
            .send()
            .await
            .or_aws(|| format!("looking for the route table tagged {key}"))?;
        Ok(out.route_tables().iter().find_map(|t| t.route_table_id().map(str::to_string)))
    }

    async fn delete(&self, ctx: &Ctx, record: &ResourceRecord, _scope: &StepScope) -> anyhow::Result<()> {
        let id = record.id()?;
        let Some(table) = describe_route_table(ctx, id).await? else {
            return Ok(());
        };
        for association in table.associations().iter().filter(|a| a.main() != Some(true)) {
            if let Some(association_id) = association.route_table_association_id() {
                let result = ctx
                    .aws
                    .ec2
                    .disassociate_route_table()
                    .association_id(association_id)
                    .send()
                    .await
                    .or_aws(|| format!("disassociating {association_id} from {id}"));
                found(result)?;
            }
        }
        delete_when_free(EC2_IN_USE, || async {
            ctx.aws
                .ec2
                .delete_route_table()
                .route_table_id(id)
                .send()
                .await
                .map(|_| ())
                .or_aws(|| format!("deleting route table {id}"))
        })
        .await?;
        Ok(())
    }

    async fn discover(&self, ctx: &Ctx) -> anyhow::Result<Vec<Discovered>> {
        let out = ctx
            .aws
            .ec2
            .describe_route_tables()
            .filters(stack_filter(ctx))
            .send()
            .await
            .or_aws(|| "discovering route tables".into())?;
        Ok(out
            .route_tables()
            .iter()
            .filter_map(|t| Some(discovered(stack_key(t.tags(), &ctx.tags.stack)?, t.route_table_id()?)))
            .collect())
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

#[async_trait]
impl StepAction<Ctx> for ImportVpc {
    async fn apply(&self, ctx: &Ctx, scope: &StepScope) -> anyhow::Result<String> {
        let ec2 = &ctx.aws.ec2;
        let vpc_id = &self.vpc_id;
        let region = &ctx.aws.region;
        let vpcs = found(ec2.describe_vpcs().vpc_ids(vpc_id).send().await.or_aws(|| format!("reading VPC {vpc_id}")))?;
        let Some(vpc) = vpcs.and_then(|o| o.vpcs.and_then(|v| v.into_iter().next())) else {
            anyhow::bail!(
                "vpc_id = {vpc_id}: no such VPC in {region}\n    help: check the id and the region, or remove vpc_id to create a new VPC"
            );
        };
        let by_vpc = || Filter::builder().name("vpc-id").values(vpc_id).build();
        let subnets =
            ec2.describe_subnets().filters(by_vpc()).send().await.or_aws(|| format!("listing subnets of {vpc_id}"))?;
        let tables = ec2
            .describe_route_tables()
            .filters(by_vpc())
            .send()
            .await
            .or_aws(|| format!("listing route tables of {vpc_id}"))?;
        let main_table = tables.route_tables().iter().find(|t| t.associations().iter().any(|a| a.main() == Some(true)));
        // A subnet without an explicit association uses the VPC's main route table.
        let table_of = |subnet: &str| {
            tables
                .route_tables()
                .iter()
                .find(|t| t.associations().iter().any(|a| a.subnet_id() == Some(subnet)))
                .or(main_table)
        };
        let mut public = Vec::new();
        let mut private = Vec::new();
        for s in subnets.subnets() {
            let (Some(id), Some(az)) = (s.subnet_id(), s.availability_zone()) else {
                continue;
            };
            let Some(target) = table_of(id).and_then(default_route_target) else {
                continue;
            };
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
            anyhow::ensure!(
                chosen.len() == 2,
                "vpc_id = {vpc_id}: needs two {what} subnets in distinct availability zones, found {}\n    help: {}",
                chosen.len(),
                if what == "public" {
                    "public subnets are those whose route table sends 0.0.0.0/0 to an internet gateway"
                } else {
                    "private subnets are those whose route table sends 0.0.0.0/0 to a NAT gateway or instance (GitLab needs outbound access); add a NAT, or remove vpc_id to let gitlab-provision create a VPC"
                }
            );
            Ok(chosen)
        };
        let public = pick(public, "public")?;
        let private = pick(private, "private")?;

        let cidr = vpc.cidr_block().unwrap_or_default().to_string();
        let imported = |id: &str, depends_on: Vec<String>, attrs| ResourceRecord {
            kind: String::new(),
            step: scope.step.clone(),
            status: RecordStatus::Imported,
            id: Some(id.to_string()),
            depends_on,
            attrs,
            generation: 0,
            updated_at: String::new(),
        };
        scope.state.put(
            KEY_VPC,
            ResourceRecord { kind: VPC.into(), ..imported(vpc_id, vec![], attrs([("cidr", cidr.clone())])) },
        )?;
        for (key, subnet) in SUBNET_KEYS.iter().zip(public.iter().chain(private.iter())) {
            let a = attrs([
                ("cidr", subnet.cidr.clone()),
                ("az", subnet.az.clone()),
                ("public", subnet.public.to_string()),
            ]);
            scope
                .state
                .put(key, ResourceRecord { kind: SUBNET.into(), ..imported(&subnet.id, vec![KEY_VPC.into()], a) })?;
        }
        Ok(format!(
            "imported {vpc_id} ({cidr}): public {}, private {}",
            public.iter().map(|s| s.id.as_str()).collect::<Vec<_>>().join(", "),
            private.iter().map(|s| s.id.as_str()).collect::<Vec<_>>().join(", ")
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
