//! Outbound internet for the private subnets: a NAT gateway with its Elastic IP, or a
//! t4g.nano NAT instance with its security group.

use std::time::Duration;

use anyhow::Context as _;
use async_trait::async_trait;
use aws_sdk_ec2::types::{
    Address, BlockDeviceMapping, DomainType, EbsBlockDevice, HttpTokensState, Instance, InstanceMetadataOptionsRequest,
    InstanceNetworkInterfaceSpecification, InstanceStateName, InstanceType, NatGateway, NatGatewayState, ResourceType,
    Tag, VolumeType,
};
use base64::Engine as _;
use ipnet::Ipv4Net;

use super::network::bool_value;
use super::security_group::{IngressRule, SecurityGroupStep, Source};
use crate::aws::ec2::{Ec2, Ec2Kind, Ec2Listing, Query, ec2_listing, ec2_query};
use crate::aws::{AwsError, Ctx, Holders, call, delete_when_free, if_there};
use crate::engine::{Applied, Desired, Env, Poll, StepAction, StepScope, Summary, WaitPolicy, attrs, wait_until};
use crate::keys::{self, Kind};
use crate::state::ResourceRecord;

/// NAT gateways usually take 1-3 minutes, to appear and to go; AWS documents no bound.
const NAT_WAIT: WaitPolicy = WaitPolicy::up_to(Duration::from_secs(900));
pub const NAT_INSTANCE_TYPE: &str = "t4g.nano";

// ---------------------------------------------------------------------------------------------
// Elastic IP

pub struct Addresses;

ec2_listing!(Addresses, Address, "Elastic IP", describe_addresses(allocation_ids, set_filters) -> addresses, allocation_id);

#[async_trait]
impl Ec2Kind for Addresses {
    fn live(address: &Address, _record: &ResourceRecord) -> (String, Vec<String>) {
        (address.public_ip().unwrap_or_default().to_string(), vec![])
    }

    async fn delete(ctx: &Ctx, id: &str, scope: &StepScope) -> anyhow::Result<()> {
        let ec2 = &ctx.aws.ec2;
        delete_when_free(
            scope,
            &format!("Elastic IP {id}"),
            &["InvalidIPAddress.InUse", "DependencyViolation"],
            || async {
                call(ec2.release_address().allocation_id(id).send(), || format!("releasing Elastic IP {id}")).await
            },
            // Associated while the NAT gateway using it is still being deleted.
            || async {
                Ok(match Ec2::<Self>::get(ctx, id).await?.and_then(|a| a.association_id().map(str::to_string)) {
                    Some(association) => {
                        Holders::Draining(format!("the NAT gateway using it to be deleted (association {association})"))
                    }
                    None => Holders::Unknown,
                })
            },
        )
        .await
    }
}

pub struct ElasticIpStep;

#[async_trait]
impl StepAction<Ctx> for ElasticIpStep {
    fn desired(&self, _ctx: &Ctx, _env: &Env) -> anyhow::Result<Vec<Desired>> {
        Ok(vec![Desired::new(keys::NAT_EIP, Kind::ElasticIp, Default::default())])
    }

    async fn apply(&self, ctx: &Ctx, scope: &StepScope) -> anyhow::Result<Summary> {
        let want = scope.wanted_one(ctx, self)?;
        let ensured = scope
            .ensure(ctx, &Ec2::<Addresses>::OPS, want, |existing, _| async move {
                if let Some(existing) = existing {
                    return Ok(Applied::id(existing.id));
                }
                let out = call(
                    ctx.aws
                        .ec2
                        .allocate_address()
                        .domain(DomainType::Vpc)
                        .tag_specifications(ctx.tags.ec2(ResourceType::ElasticIp, keys::NAT_EIP))
                        .send(),
                    || format!("allocating an Elastic IP ({})", ctx.region()),
                )
                .await?;
                let id = out.allocation_id().context("AllocateAddress returned no allocation id")?;
                Ok(Applied::id(id).with("public_ip", out.public_ip().unwrap_or_default()))
            })
            .await?;
        Ok(ensured.summary(&format!(" ({})", ensured.attr("public_ip"))))
    }
}

// ---------------------------------------------------------------------------------------------
// NAT gateway

pub struct NatGateways;

fn nat_state(gateway: &NatGateway) -> NatGatewayState {
    gateway.state().cloned().unwrap_or(NatGatewayState::Pending)
}

ec2_listing!(NatGateways, NatGateway, "NAT gateway", describe_nat_gateways(nat_gateway_ids, set_filter) -> nat_gateways, nat_gateway_id);

#[async_trait]
impl Ec2Kind for NatGateways {
    /// A deleted gateway stays visible for about an hour in state "deleted".
    fn gone(gateway: &NatGateway) -> bool {
        matches!(nat_state(gateway), NatGatewayState::Deleted | NatGatewayState::Deleting | NatGatewayState::Failed)
    }

    fn live(gateway: &NatGateway, _record: &ResourceRecord) -> (String, Vec<String>) {
        (nat_state(gateway).as_str().to_string(), vec![])
    }

    async fn delete(ctx: &Ctx, id: &str, scope: &StepScope) -> anyhow::Result<()> {
        if_there(ctx.aws.ec2.delete_nat_gateway().nat_gateway_id(id).send(), || format!("deleting NAT gateway {id}"))
            .await?;
        // Its Elastic IP cannot be released, nor the internet gateway detached, until it is gone.
        wait_until(scope, &format!("NAT gateway {id} to be deleted"), NAT_WAIT, || async {
            let gateway = Self::describe(ctx, Query::Id(id)).await?.into_iter().next();
            Ok(match gateway.as_ref().map(nat_state) {
                None | Some(NatGatewayState::Deleted) => Poll::Ready(()),
                Some(state) => Poll::Pending(state.as_str().to_string()),
            })
        })
        .await?;
        Ok(())
    }
}

pub struct NatGatewayStep;

#[async_trait]
impl StepAction<Ctx> for NatGatewayStep {
    fn desired(&self, _ctx: &Ctx, env: &Env) -> anyhow::Result<Vec<Desired>> {
        let wanted = attrs([("subnet_id", env.id(keys::NAT_SUBNET)?), ("allocation_id", env.id(keys::NAT_EIP)?)]);
        Ok(vec![Desired::new(keys::NAT_GATEWAY, Kind::NatGateway, wanted).replaced_on(&["subnet_id", "allocation_id"])])
    }

    async fn apply(&self, ctx: &Ctx, scope: &StepScope) -> anyhow::Result<Summary> {
        let want = scope.wanted_one(ctx, self)?;
        let (subnet, allocation) = (want.text("subnet_id").to_string(), want.text("allocation_id").to_string());
        let (subnet_ref, allocation_ref) = (subnet.as_str(), allocation.as_str());
        let ensured = scope
            .ensure(ctx, &Ec2::<NatGateways>::OPS, want, |existing, token| async move {
                let id = match existing {
                    Some(existing) => existing.id,
                    // With the same token AWS returns the gateway already created instead of a
                    // second one billing in the dark.
                    None => call(
                        ctx.aws
                            .ec2
                            .create_nat_gateway()
                            .subnet_id(subnet_ref)
                            .allocation_id(allocation_ref)
                            .client_token(token)
                            .tag_specifications(ctx.tags.ec2(ResourceType::Natgateway, keys::NAT_GATEWAY))
                            .send(),
                        || format!("creating NAT gateway in {subnet_ref} ({})", ctx.region()),
                    )
                    .await?
                    .nat_gateway()
                    .and_then(|g| g.nat_gateway_id())
                    .context("CreateNatGateway returned no id")?
                    .to_string(),
                };
                scope.created(keys::NAT_GATEWAY, &id).await?;
                wait_until(scope, &format!("NAT gateway {id} to become available"), NAT_WAIT, || async {
                    let gateway = NatGateways::describe(ctx, Query::Id(&id)).await?.into_iter().next();
                    Ok(match gateway.as_ref().map(|g| (nat_state(g), g.failure_message().unwrap_or_default())) {
                        Some((NatGatewayState::Available, _)) => Poll::Ready(()),
                        Some((NatGatewayState::Pending, _)) => Poll::Pending("pending".into()),
                        Some((state, message)) => Poll::Failed(format!("{} {message}", state.as_str())),
                        None => Poll::Pending("not visible yet".into()),
                    })
                })
                .await?;
                Ok(Applied::id(id))
            })
            .await?;
        Ok(ensured.summary(&format!(" in {subnet}")))
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
        key: keys::NAT_SECURITY_GROUP,
        description: "gitlab-provision NAT instance: all traffic from the VPC".into(),
        rules: vec![IngressRule {
            ports: None,
            source: Source::Cidr(vpc_cidr.to_string()),
            description: "all traffic from the VPC".into(),
        }],
    }
}

pub struct Instances;

fn instance_state(instance: &Instance) -> InstanceStateName {
    instance.state().and_then(|s| s.name().cloned()).unwrap_or(InstanceStateName::Pending)
}

#[async_trait]
impl Ec2Listing for Instances {
    type Item = Instance;
    const NOUN: &'static str = "instance";

    async fn describe(ctx: &Ctx, query: Query<'_>) -> Result<Vec<Instance>, AwsError> {
        let about = query.about();
        let out =
            if_there(ec2_query!(ctx.aws.ec2.describe_instances(), query, instance_ids, set_filters).send(), || {
                format!("describing instance {about}")
            })
            .await?;
        Ok(out
            .map(|o| o.reservations.unwrap_or_default())
            .unwrap_or_default()
            .into_iter()
            .flat_map(|r| r.instances.unwrap_or_default())
            .collect())
    }

    fn id(instance: &Instance) -> Option<&str> {
        instance.instance_id()
    }

    fn tags(instance: &Instance) -> &[Tag] {
        instance.tags()
    }
}

#[async_trait]
impl Ec2Kind for Instances {
    fn gone(instance: &Instance) -> bool {
        matches!(instance_state(instance), InstanceStateName::Terminated | InstanceStateName::ShuttingDown)
    }

    fn live(instance: &Instance, _record: &ResourceRecord) -> (String, Vec<String>) {
        let drift = if instance.source_dest_check() == Some(true) {
            vec!["source/destination check is on".to_string()]
        } else {
            vec![]
        };
        (instance_state(instance).as_str().to_string(), drift)
    }

    async fn delete(ctx: &Ctx, id: &str, scope: &StepScope) -> anyhow::Result<()> {
        if_there(ctx.aws.ec2.terminate_instances().instance_ids(id).send(), || format!("terminating instance {id}"))
            .await?;
        // Its network interface (and public address) holds the security group, the subnet and
        // the internet gateway until it is terminated; "not found" right after terminating may
        // be EC2 catching up, so the wait is on the instance's own state.
        wait_until(scope, &format!("instance {id} to terminate"), NAT_WAIT, || async {
            let instance = Self::describe(ctx, Query::Id(id)).await?.into_iter().next();
            Ok(match instance.as_ref().map(instance_state) {
                None | Some(InstanceStateName::Terminated) => Poll::Ready(()),
                Some(state) => Poll::Pending(state.as_str().to_string()),
            })
        })
        .await?;
        Ok(())
    }
}

pub struct NatInstanceStep;

#[async_trait]
impl StepAction<Ctx> for NatInstanceStep {
    fn desired(&self, _ctx: &Ctx, env: &Env) -> anyhow::Result<Vec<Desired>> {
        let wanted = attrs([
            ("subnet_id", env.id(keys::NAT_SUBNET)?),
            ("security_group", env.id(keys::NAT_SECURITY_GROUP)?),
            ("instance_type", NAT_INSTANCE_TYPE.into()),
        ]);
        Ok(vec![Desired::new(keys::NAT_INSTANCE, Kind::Instance, wanted).replaced_on(&["subnet_id", "instance_type"])])
    }

    async fn apply(&self, ctx: &Ctx, scope: &StepScope) -> anyhow::Result<Summary> {
        let want = scope.wanted_one(ctx, self)?;
        let (subnet, group) = (want.text("subnet_id").to_string(), want.text("security_group").to_string());
        let (subnet_ref, group_ref) = (subnet.as_str(), group.as_str());
        let ensured = scope
            .ensure(ctx, &Ec2::<Instances>::OPS, want, |existing, token| async move {
                let id = match existing {
                    Some(existing) => existing.id,
                    None => launch_nat_instance(ctx, subnet_ref, group_ref, token).await?,
                };
                scope.created(keys::NAT_INSTANCE, &id).await?;
                let instance = wait_until(scope, &format!("NAT instance {id} to be running"), NAT_WAIT, || async {
                    let instance = Instances::describe(ctx, Query::Id(&id)).await?.into_iter().next();
                    Ok(match instance {
                        Some(i) if instance_state(&i) == InstanceStateName::Running => Poll::Ready(i),
                        Some(i) if instance_state(&i) == InstanceStateName::Pending => Poll::Pending("pending".into()),
                        Some(i) => Poll::Failed(format!("it is {}", instance_state(&i).as_str())),
                        None => Poll::Pending("not visible yet".into()),
                    })
                })
                .await?;
                let ec2 = &ctx.aws.ec2;
                if instance.source_dest_check() != Some(false) {
                    // A router forwards packets that are neither from nor to itself.
                    call(
                        ec2.modify_instance_attribute().instance_id(&id).source_dest_check(bool_value(false)).send(),
                        || format!("turning off source/destination check on {id}"),
                    )
                    .await?;
                }
                if !instance.security_groups().iter().any(|g| g.group_id() == Some(group_ref)) {
                    call(ec2.modify_instance_attribute().instance_id(&id).groups(group_ref).send(), || {
                        format!("setting the security group of {id}")
                    })
                    .await?;
                }
                let eni = instance
                    .network_interfaces()
                    .iter()
                    .find_map(|n| n.network_interface_id())
                    .context("the NAT instance has no network interface")?;
                Ok(Applied::id(id).with("eni", eni))
            })
            .await?;
        Ok(ensured.summary(&format!(" in {subnet}")))
    }
}

async fn launch_nat_instance(ctx: &Ctx, subnet: &str, group: &str, token: String) -> anyhow::Result<String> {
    let image = call(ctx.aws.ssm.get_parameter().name(AL2023_ARM64_PARAMETER).send(), || {
        format!("reading {AL2023_ARM64_PARAMETER} ({})", ctx.region())
    })
    .await?
    .parameter()
    .and_then(|p| p.value())
    .context("the Amazon Linux 2023 image parameter has no value")?
    .to_string();
    let interface = InstanceNetworkInterfaceSpecification::builder()
        .device_index(0)
        .subnet_id(subnet)
        .groups(group)
        .associate_public_ip_address(true)
        .delete_on_termination(true)
        .build();
    let id = call(
        ctx.aws
            .ec2
            .run_instances()
            .image_id(&image)
            .instance_type(InstanceType::from(NAT_INSTANCE_TYPE))
            .min_count(1)
            .max_count(1)
            .client_token(token)
            .network_interfaces(interface)
            // Encrypted at rest (with the account's EBS key), as everything of the stack is.
            // Amazon Linux 2023's root device; 8 GB gp3, gone with the instance.
            .block_device_mappings(
                BlockDeviceMapping::builder()
                    .device_name("/dev/xvda")
                    .ebs(
                        EbsBlockDevice::builder()
                            .encrypted(true)
                            .volume_type(VolumeType::Gp3)
                            .volume_size(8)
                            .delete_on_termination(true)
                            .build(),
                    )
                    .build(),
            )
            .user_data(base64::engine::general_purpose::STANDARD.encode(NAT_USER_DATA))
            .metadata_options(InstanceMetadataOptionsRequest::builder().http_tokens(HttpTokensState::Required).build())
            .tag_specifications(ctx.tags.ec2(ResourceType::Instance, keys::NAT_INSTANCE))
            .tag_specifications(ctx.tags.ec2(ResourceType::Volume, keys::NAT_INSTANCE))
            .tag_specifications(ctx.tags.ec2(ResourceType::NetworkInterface, keys::NAT_INSTANCE))
            .send(),
        || format!("launching the NAT instance ({image}) in {subnet}"),
    )
    .await?
    .instances()
    .first()
    .and_then(|i| i.instance_id())
    .context("RunInstances returned no instance")?
    .to_string();
    Ok(id)
}
