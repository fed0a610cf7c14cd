//! Network interfaces outlive what owned them: a load balancer's and a NAT gateway's by
//! minutes, a Fargate task's until it has stopped, Lambda's by up to 20-40 minutes. While they
//! exist they hold their subnet, their security groups and (with a public address) the internet
//! gateway. A delete that is refused "in use" asks here what holds it.

use std::collections::BTreeMap;

use aws_sdk_ec2::types::{Filter, NetworkInterface, NetworkInterfaceStatus};

use super::{Ctx, Holders, call, if_there};
use crate::engine::counted;

/// What a resource that cannot be deleted is held by.
#[derive(Debug, Clone, Copy)]
pub enum HeldBy<'a> {
    /// Interfaces in a subnet.
    Subnet(&'a str),
    /// Interfaces using a security group.
    Group(&'a str),
    /// Interfaces of a VPC with a public address mapped (they keep the internet gateway attached).
    PublicAddressesIn(&'a str),
    /// Any interface in a VPC.
    Vpc(&'a str),
}

/// What an interface is, from how AWS describes the ones its services create.
fn label(eni: &NetworkInterface) -> &'static str {
    let description = eni.description().unwrap_or_default();
    let kind = eni.interface_type().map(|t| t.as_str()).unwrap_or_default();
    if kind == "lambda" || description.starts_with("AWS Lambda VPC ENI") {
        "Lambda"
    } else if description.starts_with("ELB app/") {
        "load balancer"
    } else if description.starts_with("ELB net/") || kind == "network_load_balancer" {
        "network load balancer"
    } else if description.starts_with("Interface for NAT Gateway") || kind == "nat_gateway" {
        "NAT gateway"
    } else if description.starts_with("RDSNetworkInterface") {
        "RDS instance"
    } else if description.starts_with("EFS mount target") {
        "EFS mount target"
    } else if description.contains(":attachment/") {
        "ECS task"
    } else {
        "other"
    }
}

/// The interfaces holding `held`, classified: what AWS is releasing (wait), what will not go by
/// itself (fail, naming it). Lambda interfaces that Lambda has already let go of (`available`)
/// are deleted here: that is the last step of their release.
pub async fn holders(ctx: &Ctx, held: HeldBy<'_>) -> anyhow::Result<Holders> {
    let (filter, value) = match held {
        HeldBy::Subnet(id) => ("subnet-id", id),
        HeldBy::Group(id) => ("group-id", id),
        HeldBy::PublicAddressesIn(id) | HeldBy::Vpc(id) => ("vpc-id", id),
    };
    let out = call(
        ctx.aws.ec2.describe_network_interfaces().filters(Filter::builder().name(filter).values(value).build()).send(),
        || format!("listing the network interfaces in {value}"),
    )
    .await?;
    let mut draining: BTreeMap<&'static str, Vec<String>> = BTreeMap::new();
    let mut stuck = Vec::new();
    for eni in out.network_interfaces() {
        let Some(id) = eni.network_interface_id() else { continue };
        if matches!(held, HeldBy::PublicAddressesIn(_)) && eni.association().and_then(|a| a.public_ip()).is_none() {
            continue;
        }
        let label = label(eni);
        let released = eni.status() == Some(&NetworkInterfaceStatus::Available);
        if label == "Lambda" && released {
            if_there(ctx.aws.ec2.delete_network_interface().network_interface_id(id).send(), || {
                format!("deleting the released Lambda interface {id}")
            })
            .await?;
            draining.entry(label).or_default().push(format!("{id} (released by Lambda, deleted now)"));
            continue;
        }
        let ours = ctx.tags.key_of(eni.tag_set()).is_some();
        if eni.requester_managed() == Some(true) || label != "other" || ours {
            draining.entry(if ours { "NAT instance" } else { label }).or_default().push(id.to_string());
        } else {
            stuck.push(format!("{id} ({})", eni.description().unwrap_or("no description")));
        }
    }
    Ok(if !stuck.is_empty() {
        Holders::Stuck(format!(
            "{} not this stack's: {}; delete them (or what they belong to) and run again",
            counted(stuck.len(), "network interface"),
            stuck.join(", ")
        ))
    } else if draining.is_empty() {
        Holders::Unknown
    } else {
        let parts: Vec<String> = draining
            .iter()
            .map(|(label, ids)| {
                format!(
                    "{} to be released: {}",
                    counted(ids.len(), &format!("{label} network interface")),
                    ids.join(", ")
                )
            })
            .collect();
        Holders::Draining(parts.join("; "))
    })
}
