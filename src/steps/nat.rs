//! Outbound internet for the private subnets: a NAT gateway with its Elastic IP, or a
//! t4g.nano NAT instance with its security group.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context as _;
use async_trait::async_trait;
use aws_sdk_ec2::types::{
    DomainType, HttpTokensState, InstanceMetadataOptionsRequest, InstanceNetworkInterfaceSpecification,
    InstanceStateName, InstanceType, NatGatewayState, ResourceType,
};
use base64::Engine as _;
use ipnet::Ipv4Net;

use super::network::{KEY_INTERNET_GATEWAY, attrs, bool_value, discovered, required_id, stack_filter, stack_key};
use super::security_group::{IngressRule, SecurityGroupStep, Source};
use super::{Ctx, EC2_IN_USE, delete_when_free};
use crate::aws::{AwsResultExt, found};
use crate::engine::{
    Created, Desired, Discovered, Live, Poll, ResourceOps, StepAction, StepScope, WaitPolicy, wait_until,
};
use crate::state::ResourceRecord;

pub const ELASTIC_IP: &str = "ec2:elastic-ip";
pub const NAT_GATEWAY: &str = "ec2:nat-gateway";
pub const INSTANCE: &str = "ec2:instance";

pub const KEY_EIP: &str = "nat-eip";
pub const KEY_NAT_GATEWAY: &str = "nat-gateway";
pub const KEY_NAT_SECURITY_GROUP: &str = "nat-security-group";
pub const KEY_NAT_INSTANCE: &str = "nat-instance";

/// The subnet NAT lives in.
const NAT_SUBNET: &str = "subnet-public-a";

/// NAT gateways usually take 1-3 minutes; AWS documents no bound, so allow ten.
const NAT_WAIT: WaitPolicy = WaitPolicy::up_to(Duration::from_secs(600));

// ---------------------------------------------------------------------------------------------
// Elastic IP

pub struct AllocateNatEip;

#[async_trait]
impl StepAction<Ctx> for AllocateNatEip {
    async fn apply(&self, ctx: &Ctx, scope: &StepScope) -> anyhow::Result<String> {
        let desired =
            Desired { key: KEY_EIP.into(), kind: ELASTIC_IP.into(), depends_on: vec![], attrs: BTreeMap::new() };
        let ec2 = &ctx.aws.ec2;
        let ensured = scope
            .ensure(ctx, &ElasticIpOps, desired, |existing, _token| async move {
                if let Some(found) = existing {
                    return Ok(Created { id: found.id, attrs: BTreeMap::new() });
                }
                let out = ec2
                    .allocate_address()
                    .domain(DomainType::Vpc)
                    .tag_specifications(ctx.tags.ec2(ResourceType::ElasticIp, KEY_EIP))
                    .send()
                    .await
                    .or_aws(|| format!("allocating an Elastic IP ({})", ctx.aws.region))?;
                let id = out.allocation_id().context("AllocateAddress returned no allocation id")?.to_string();
                Ok(Created { id, attrs: attrs([("public_ip", out.public_ip().unwrap_or_default().to_string())]) })
            })
            .await?;
        Ok(format!("{} {} ({})", ensured.verb(), ensured.id(), ensured.record().attr("public_ip").unwrap_or("?")))
    }
}

pub struct ElasticIpOps;

#[async_trait]
impl ResourceOps<Ctx> for ElasticIpOps {
    fn noun(&self) -> &'static str {
        "Elastic IP"
    }

    async fn read(&self, ctx: &Ctx, record: &ResourceRecord) -> anyhow::Result<Live> {
        let id = record.id()?;
        let out = found(
            ctx.aws
                .ec2
                .describe_addresses()
                .allocation_ids(id)
                .send()
                .await
                .or_aws(|| format!("reading Elastic IP {id}")),
        )?;
        let Some(address) = out.and_then(|o| o.addresses.and_then(|v| v.into_iter().next())) else {
            return Ok(Live::Missing);
        };
        Ok(Live::Present { summary: address.public_ip().unwrap_or_default().to_string(), drift: vec![] })
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
            .describe_addresses()
            .set_filters(Some(ctx.tags.ec2_filters(key)))
            .send()
            .await
            .or_aws(|| format!("looking for the Elastic IP tagged {key}"))?;
        Ok(out.addresses().iter().find_map(|a| a.allocation_id().map(str::to_string)))
    }

    async fn delete(&self, ctx: &Ctx, record: &ResourceRecord, _scope: &StepScope) -> anyhow::Result<()> {
        let id = record.id()?;
        delete_when_free(EC2_IN_USE, || async {
            ctx.aws
                .ec2
                .release_address()
                .allocation_id(id)
                .send()
                .await
                .map(|_| ())
                .or_aws(|| format!("releasing Elastic IP {id}"))
        })
        .await?;
        Ok(())
    }

    async fn discover(&self, ctx: &Ctx) -> anyhow::Result<Vec<Discovered>> {
        let out = ctx
            .aws
            .ec2
            .describe_addresses()
            .filters(stack_filter(ctx))
            .send()
            .await
            .or_aws(|| "discovering Elastic IPs".into())?;
        Ok(out
            .addresses()
            .iter()
            .filter_map(|a| Some(discovered(stack_key(a.tags(), &ctx.tags.stack)?, a.allocation_id()?)))
            .collect())
    }
}

// ---------------------------------------------------------------------------------------------
// NAT gateway

pub struct CreateNatGateway;

async fn nat_gateway_state(ctx: &Ctx, id: &str) -> anyhow::Result<Option<(NatGatewayState, String)>> {
    let out = found(
        ctx.aws
            .ec2
            .describe_nat_gateways()
            .nat_gateway_ids(id)
            .send()
            .await
            .or_aws(|| format!("reading NAT gateway {id}")),
    )?;
    Ok(out.and_then(|o| o.nat_gateways.and_then(|v| v.into_iter().next())).map(|g| {
        (g.state().cloned().unwrap_or(NatGatewayState::Pending), g.failure_message().unwrap_or_default().to_string())
    }))
}

#[async_trait]
impl StepAction<Ctx> for CreateNatGateway {
    async fn apply(&self, ctx: &Ctx, scope: &StepScope) -> anyhow::Result<String> {
        let subnet_id = required_id(NAT_SUBNET, scope)?;
        let allocation_id = required_id(KEY_EIP, scope)?;
        let desired = Desired {
            key: KEY_NAT_GATEWAY.into(),
            kind: NAT_GATEWAY.into(),
            depends_on: vec![NAT_SUBNET.into(), KEY_EIP.into(), KEY_INTERNET_GATEWAY.into()],
            attrs: attrs([("subnet_id", subnet_id.clone()), ("allocation_id", allocation_id.clone())]),
        };
        let ec2 = &ctx.aws.ec2;
        let (subnet, allocation) = (subnet_id.as_str(), allocation_id.as_str());
        let ensured = scope
            .ensure(ctx, &NatGatewayOps, desired, |existing, token| async move {
                let id = match existing {
                    Some(found) => found.id,
                    None => ec2
                        .create_nat_gateway()
                        .subnet_id(subnet)
                        .allocation_id(allocation)
                        // With the same token AWS returns the gateway already created instead of a
                        // second one billing in the dark.
                        .client_token(token)
                        .tag_specifications(ctx.tags.ec2(ResourceType::Natgateway, KEY_NAT_GATEWAY))
                        .send()
                        .await
                        .or_aws(|| format!("creating NAT gateway in {subnet} ({})", ctx.aws.region))?
                        .nat_gateway()
                        .and_then(|g| g.nat_gateway_id())
                        .context("CreateNatGateway returned no id")?
                        .to_string(),
                };
                wait_until(scope, &format!("NAT gateway {id} to become available"), NAT_WAIT, || async {
                    Ok(match nat_gateway_state(ctx, &id).await? {
                        Some((NatGatewayState::Available, _)) => Poll::Ready(()),
                        Some((NatGatewayState::Pending, _)) => Poll::Pending("pending".into()),
                        Some((state, message)) => Poll::Failed(format!("{} {message}", state.as_str())),
                        None => Poll::Pending("not visible yet".into()),
                    })
                })
                .await?;
                Ok(Created { id, attrs: BTreeMap::new() })
            })
            .await?;
        Ok(format!("{} {} in {subnet_id}", ensured.verb(), ensured.id()))
    }
}

pub struct NatGatewayOps;

#[async_trait]
impl ResourceOps<Ctx> for NatGatewayOps {
    fn noun(&self) -> &'static str {
        "NAT gateway"
    }

    async fn read(&self, ctx: &Ctx, record: &ResourceRecord) -> anyhow::Result<Live> {
        let id = record.id()?;
        Ok(match nat_gateway_state(ctx, id).await? {
            // A deleted gateway stays visible for about an hour in state "deleted".
            None | Some((NatGatewayState::Deleted | NatGatewayState::Deleting | NatGatewayState::Failed, _)) => {
                Live::Missing
            }
            Some((state, _)) => Live::Present { summary: state.as_str().to_string(), drift: vec![] },
        })
    }

    async fn find(
        &self,
        ctx: &Ctx,
        key: &str,
        _record: &ResourceRecord,
        _token: &str,
    ) -> anyhow::Result<Option<String>> {
        let mut filters = ctx.tags.ec2_filters(key);
        filters.push(aws_sdk_ec2::types::Filter::builder().name("state").values("pending").values("available").build());
        let out = ctx
            .aws
            .ec2
            .describe_nat_gateways()
            .set_filter(Some(filters))
            .send()
            .await
            .or_aws(|| format!("looking for the NAT gateway tagged {key}"))?;
        Ok(out.nat_gateways().iter().find_map(|g| g.nat_gateway_id().map(str::to_string)))
    }

    async fn delete(&self, ctx: &Ctx, record: &ResourceRecord, scope: &StepScope) -> anyhow::Result<()> {
        let id = record.id()?;
        found(
            ctx.aws
                .ec2
                .delete_nat_gateway()
                .nat_gateway_id(id)
                .send()
                .await
                .or_aws(|| format!("deleting NAT gateway {id}")),
        )?;
        // Its Elastic IP cannot be released, nor the internet gateway detached, until it is gone.
        wait_until(scope, &format!("NAT gateway {id} to be deleted"), NAT_WAIT, || async {
            Ok(match nat_gateway_state(ctx, id).await? {
                None | Some((NatGatewayState::Deleted, _)) => Poll::Ready(()),
                Some((state, _)) => Poll::Pending(state.as_str().to_string()),
            })
        })
        .await?;
        Ok(())
    }

    async fn discover(&self, ctx: &Ctx) -> anyhow::Result<Vec<Discovered>> {
        let out = ctx
            .aws
            .ec2
            .describe_nat_gateways()
            .filter(stack_filter(ctx))
            .send()
            .await
            .or_aws(|| "discovering NAT gateways".into())?;
        Ok(out
            .nat_gateways()
            .iter()
            .filter(|g| !matches!(g.state(), Some(NatGatewayState::Deleted | NatGatewayState::Deleting)))
            .filter_map(|g| Some(discovered(stack_key(g.tags(), &ctx.tags.stack)?, g.nat_gateway_id()?)))
            .collect())
    }
}

// ---------------------------------------------------------------------------------------------
// NAT instance

/// The Amazon Linux 2023 arm64 image, from AWS's public SSM parameter (always current).
const AL2023_ARM64_PARAMETER: &str = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-arm64";

/// Turns the instance into a router: forwarding on, masquerade out of its primary interface,
/// both persistent across reboots.
const NAT_USER_DATA: &str = r#"#!/bin/bash
set -euxo pipefail
echo 'net.ipv4.ip_forward = 1' > /etc/sysctl.d/90-nat.conf
sysctl --system
dnf install -y iptables-services
iface=$(ip -o route show default | awk '{print $5; exit}')
iptables -t nat -A POSTROUTING -o "$iface" -j MASQUERADE
iptables -F FORWARD
service iptables save
systemctl enable --now iptables
"#;

/// The NAT instance's security group admits *all* traffic from the VPC: the reference design
/// admitted only 443, which breaks SMTP, mirroring and ssh out of GitLab.
pub fn nat_security_group(vpc_cidr: Ipv4Net) -> SecurityGroupStep {
    SecurityGroupStep {
        key: KEY_NAT_SECURITY_GROUP,
        description: "gitlab-provision NAT instance: all traffic from the VPC".into(),
        rules: vec![IngressRule {
            ports: None,
            source: Source::Cidr(vpc_cidr.to_string()),
            description: "all traffic from the VPC".into(),
        }],
        outlives: vec![],
    }
}

pub struct CreateNatInstance;

struct InstanceView {
    state: InstanceStateName,
    eni: Option<String>,
    source_dest_check: Option<bool>,
}

async fn describe_instance(ctx: &Ctx, id: &str) -> anyhow::Result<Option<InstanceView>> {
    let out = found(
        ctx.aws.ec2.describe_instances().instance_ids(id).send().await.or_aws(|| format!("reading instance {id}")),
    )?;
    let instance = out
        .and_then(|o| o.reservations.and_then(|r| r.into_iter().flat_map(|r| r.instances.unwrap_or_default()).next()));
    Ok(instance.map(|i| InstanceView {
        state: i.state().and_then(|s| s.name().cloned()).unwrap_or(InstanceStateName::Pending),
        eni: i.network_interfaces().iter().find_map(|n| n.network_interface_id().map(str::to_string)),
        source_dest_check: i.source_dest_check(),
    }))
}

#[async_trait]
impl StepAction<Ctx> for CreateNatInstance {
    async fn apply(&self, ctx: &Ctx, scope: &StepScope) -> anyhow::Result<String> {
        let subnet_id = required_id(NAT_SUBNET, scope)?;
        let group_id = required_id(KEY_NAT_SECURITY_GROUP, scope)?;
        let desired = Desired {
            key: KEY_NAT_INSTANCE.into(),
            kind: INSTANCE.into(),
            depends_on: vec![NAT_SUBNET.into(), KEY_NAT_SECURITY_GROUP.into(), KEY_INTERNET_GATEWAY.into()],
            attrs: attrs([("subnet_id", subnet_id.clone()), ("instance_type", "t4g.nano".into())]),
        };
        let ec2 = &ctx.aws.ec2;
        let (subnet, group) = (subnet_id.as_str(), group_id.as_str());
        let ensured = scope
            .ensure(ctx, &InstanceOps, desired, |existing, token| async move {
                let id = match existing {
                    Some(found) => found.id,
                    None => {
                        let image = ctx
                            .aws
                            .ssm
                            .get_parameter()
                            .name(AL2023_ARM64_PARAMETER)
                            .send()
                            .await
                            .or_aws(|| format!("reading {AL2023_ARM64_PARAMETER} ({})", ctx.aws.region))?
                            .parameter()
                            .and_then(|p| p.value())
                            .context("the Amazon Linux 2023 image parameter has no value")?
                            .to_string();
                        let interface = InstanceNetworkInterfaceSpecification::builder()
                            .device_index(0)
                            .subnet_id(subnet)
                            .groups(group)
                            .associate_public_ip_address(true)
                            .build();
                        ec2.run_instances()
                            .image_id(&image)
                            .instance_type(InstanceType::T4gNano)
                            .min_count(1)
                            .max_count(1)
                            .client_token(token)
                            .network_interfaces(interface)
                            .user_data(base64::engine::general_purpose::STANDARD.encode(NAT_USER_DATA))
                            .metadata_options(
                                InstanceMetadataOptionsRequest::builder()
                                    .http_tokens(HttpTokensState::Required)
                                    .build(),
                            )
                            .tag_specifications(ctx.tags.ec2(ResourceType::Instance, KEY_NAT_INSTANCE))
                            .tag_specifications(ctx.tags.ec2(ResourceType::Volume, KEY_NAT_INSTANCE))
                            .tag_specifications(ctx.tags.ec2(ResourceType::NetworkInterface, KEY_NAT_INSTANCE))
                            .send()
                            .await
                            .or_aws(|| format!("launching the NAT instance ({image}) in {subnet}"))?
                            .instances()
                            .first()
                            .and_then(|i| i.instance_id())
                            .context("RunInstances returned no instance")?
                            .to_string()
                    }
                };
                let view = wait_until(scope, &format!("NAT instance {id} to be running"), NAT_WAIT, || async {
                    Ok(match describe_instance(ctx, &id).await? {
                        Some(view) if view.state == InstanceStateName::Running => Poll::Ready(view),
                        Some(view) if view.state == InstanceStateName::Pending => Poll::Pending("pending".into()),
                        Some(view) => Poll::Failed(format!("it is {}", view.state.as_str())),
                        None => Poll::Pending("not visible yet".into()),
                    })
                })
                .await?;
                if view.source_dest_check != Some(false) {
                    // A router forwards packets that are neither from nor to itself.
                    ec2.modify_instance_attribute()
                        .instance_id(&id)
                        .source_dest_check(bool_value(false))
                        .send()
                        .await
                        .or_aws(|| format!("turning off source/destination check on {id}"))?;
                }
                let eni = view.eni.context("the NAT instance has no network interface")?;
                Ok(Created { id, attrs: attrs([("eni", eni)]) })
            })
            .await?;
        Ok(format!("{} {} in {subnet_id}", ensured.verb(), ensured.id()))
    }
}

pub struct InstanceOps;

#[async_trait]
impl ResourceOps<Ctx> for InstanceOps {
    fn noun(&self) -> &'static str {
        "instance"
    }

    async fn read(&self, ctx: &Ctx, record: &ResourceRecord) -> anyhow::Result<Live> {
        let id = record.id()?;
        Ok(match describe_instance(ctx, id).await? {
            None => Live::Missing,
            Some(view) if matches!(view.state, InstanceStateName::Terminated | InstanceStateName::ShuttingDown) => {
                Live::Missing
            }
            Some(view) => {
                let drift = if view.source_dest_check == Some(true) {
                    vec!["source/destination check is on".to_string()]
                } else {
                    vec![]
                };
                Live::Present { summary: view.state.as_str().to_string(), drift }
            }
        })
    }

    async fn find(
        &self,
        ctx: &Ctx,
        key: &str,
        _record: &ResourceRecord,
        _token: &str,
    ) -> anyhow::Result<Option<String>> {
        let mut filters = ctx.tags.ec2_filters(key);
        filters.push(
            aws_sdk_ec2::types::Filter::builder()
                .name("instance-state-name")
                .values("pending")
                .values("running")
                .values("stopping")
                .values("stopped")
                .build(),
        );
        let out = ctx
            .aws
            .ec2
            .describe_instances()
            .set_filters(Some(filters))
            .send()
            .await
            .or_aws(|| format!("looking for the instance tagged {key}"))?;
        Ok(out.reservations().iter().flat_map(|r| r.instances()).find_map(|i| i.instance_id().map(str::to_string)))
    }

    async fn delete(&self, ctx: &Ctx, record: &ResourceRecord, scope: &StepScope) -> anyhow::Result<()> {
        let id = record.id()?;
        found(
            ctx.aws
                .ec2
                .terminate_instances()
                .instance_ids(id)
                .send()
                .await
                .or_aws(|| format!("terminating instance {id}")),
        )?;
        // Its network interface holds the security group and subnet until it is terminated.
        wait_until(scope, &format!("instance {id} to terminate"), NAT_WAIT, || async {
            Ok(match describe_instance(ctx, id).await? {
                None => Poll::Ready(()),
                Some(view) if view.state == InstanceStateName::Terminated => Poll::Ready(()),
                Some(view) => Poll::Pending(view.state.as_str().to_string()),
            })
        })
        .await?;
        Ok(())
    }

    async fn discover(&self, ctx: &Ctx) -> anyhow::Result<Vec<Discovered>> {
        let out = ctx
            .aws
            .ec2
            .describe_instances()
            .filters(stack_filter(ctx))
            .send()
            .await
            .or_aws(|| "discovering instances".into())?;
        Ok(out
            .reservations()
            .iter()
            .flat_map(|r| r.instances())
            .filter(|i| {
                !matches!(
                    i.state().and_then(|s| s.name()),
                    Some(InstanceStateName::Terminated | InstanceStateName::ShuttingDown)
                )
            })
            .filter_map(|i| Some(discovered(stack_key(i.tags(), &ctx.tags.stack)?, i.instance_id()?)))
            .collect())
    }
}
