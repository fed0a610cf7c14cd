//! Security groups: created with their ingress rules, converged when the rules change, and every
//! rule read back (IPv4, IPv6, prefix lists, other groups) so nothing added by hand goes unseen.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::Context as _;
use async_trait::async_trait;
use aws_sdk_ec2::types::{
    Filter, IpPermission, IpRange, Ipv6Range, PrefixListId, ResourceType, SecurityGroup, UserIdGroupPair,
};

use crate::aws::ec2::{Ec2, Ec2Kind, ec2_listing};
use crate::aws::interfaces::{HeldBy, holders};
use crate::aws::{Ctx, EC2_IN_USE, Holders, call, delete_when_free, fresh, if_there};
use crate::engine::counted;
use crate::engine::{Applied, Desired, Env, StepAction, StepScope, Summary};
use crate::keys::{self, Kind};
use crate::state::ResourceRecord;

/// Where an ingress rule admits traffic from.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Source {
    Cidr(String),
    /// Another security group of the stack, by its state key.
    Group(&'static str),
}

/// One ingress rule. `ports: None` means every protocol and port.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct IngressRule {
    pub ports: Option<(i32, i32)>,
    pub source: Source,
    pub description: String,
}

impl IngressRule {
    pub fn tcp(port: i32, source: Source, description: &str) -> Self {
        IngressRule { ports: Some((port, port)), source, description: description.to_string() }
    }

    /// The groups a rule set admits, which the group's step needs.
    pub fn groups(rules: &[IngressRule]) -> Vec<&'static str> {
        let mut groups: Vec<&'static str> =
            rules.iter().filter_map(|r| if let Source::Group(key) = r.source { Some(key) } else { None }).collect();
        groups.dedup();
        groups
    }
}

/// A rule as AWS sees it. `protocol` is "all" or an IP protocol name; `peer` is an IPv4 or
/// IPv6 CIDR, a group id (`sg-`) or a prefix list (`pl-`).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    protocol: String,
    ports: Option<(i32, i32)>,
    peer: String,
    description: String,
}

impl Rule {
    /// The form rules are compared in and recorded as: `all:<peer>` or `tcp:<from>-<to>:<peer>`.
    fn canonical(&self) -> String {
        match self.ports {
            None => format!("{}:{}", self.protocol, self.peer),
            Some((from, to)) => format!("{}:{from}-{to}:{}", self.protocol, self.peer),
        }
    }

    fn parse(text: &str) -> Option<Rule> {
        let (protocol, rest) = text.split_once(':')?;
        let (ports, peer) = if protocol == "all" {
            (None, rest)
        } else {
            let (range, peer) = rest.split_once(':')?;
            let (from, to) = range.split_once('-')?;
            (Some((from.parse().ok()?, to.parse().ok()?)), peer)
        };
        Some(Rule { protocol: protocol.to_string(), ports, peer: peer.to_string(), description: String::new() })
    }

    fn permission(&self) -> IpPermission {
        let builder = match self.ports {
            None if self.protocol == "all" => IpPermission::builder().ip_protocol("-1"),
            None => IpPermission::builder().ip_protocol(&self.protocol),
            Some((from, to)) => IpPermission::builder().ip_protocol(&self.protocol).from_port(from).to_port(to),
        };
        let description = (!self.description.is_empty()).then(|| self.description.clone());
        if self.peer.starts_with("sg-") {
            builder
                .user_id_group_pairs(
                    UserIdGroupPair::builder().group_id(&self.peer).set_description(description).build(),
                )
                .build()
        } else if self.peer.starts_with("pl-") {
            builder
                .prefix_list_ids(
                    PrefixListId::builder().prefix_list_id(&self.peer).set_description(description).build(),
                )
                .build()
        } else if self.peer.contains(':') {
            builder.ipv6_ranges(Ipv6Range::builder().cidr_ipv6(&self.peer).set_description(description).build()).build()
        } else {
            builder.ip_ranges(IpRange::builder().cidr_ip(&self.peer).set_description(description).build()).build()
        }
    }
}

/// Every ingress rule a live group has: its canonical form -> the description AWS holds for it
/// (revoking a rule with its own description matches it whatever the service's matching rules).
fn live_rules(group: &SecurityGroup) -> BTreeMap<String, String> {
    group
        .ip_permissions()
        .iter()
        .flat_map(|p| {
            let protocol = match p.ip_protocol() {
                Some("-1") | Some("all") | None => "all",
                Some(other) => other,
            };
            let ports = (protocol != "all").then(|| (p.from_port().unwrap_or(-1), p.to_port().unwrap_or(-1)));
            let described = |peer: Option<&str>, description: Option<&str>| {
                peer.map(|peer| (peer.to_string(), description.unwrap_or_default().to_string()))
            };
            let peers = p
                .ip_ranges()
                .iter()
                .filter_map(|r| described(r.cidr_ip(), r.description()))
                .chain(p.ipv6_ranges().iter().filter_map(|r| described(r.cidr_ipv6(), r.description())))
                .chain(p.prefix_list_ids().iter().filter_map(|l| described(l.prefix_list_id(), l.description())))
                .chain(p.user_id_group_pairs().iter().filter_map(|g| described(g.group_id(), g.description())));
            peers
                .map(move |(peer, description)| {
                    let rule = Rule { protocol: protocol.to_string(), ports, peer, description: String::new() };
                    (rule.canonical(), description)
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

fn recorded_rules(record: &ResourceRecord) -> BTreeSet<String> {
    record.list("ingress").into_iter().collect()
}

pub struct SecurityGroups;

ec2_listing!(SecurityGroups, SecurityGroup, "security group", describe_security_groups(group_ids, set_filters) -> security_groups, group_id);

#[async_trait]
impl Ec2Kind for SecurityGroups {
    fn live(group: &SecurityGroup, record: &ResourceRecord) -> (String, Vec<String>) {
        let live: BTreeSet<String> = live_rules(group).into_keys().collect();
        let recorded = recorded_rules(record);
        let mut drift: Vec<String> = recorded.difference(&live).map(|r| format!("rule {r} is missing")).collect();
        drift.extend(live.difference(&recorded).map(|r| format!("unexpected rule {r}")));
        (format!("{} ({})", group.group_name().unwrap_or_default(), counted(live.len(), "ingress rule")), drift)
    }

    async fn delete(ctx: &Ctx, id: &str, scope: &StepScope) -> anyhow::Result<()> {
        let ec2 = &ctx.aws.ec2;
        delete_when_free(
            scope,
            &format!("security group {id}"),
            EC2_IN_USE,
            || async {
                call(ec2.delete_security_group().group_id(id).send(), || format!("deleting security group {id}")).await
            },
            || async {
                match referencing_groups(ctx, id).await? {
                    referencing if referencing.is_empty() => holders(ctx, HeldBy::Group(id)).await,
                    referencing => Ok(Holders::Stuck(format!(
                        "the rules of {} that admit it: {}; remove those rules (or those groups) and run again",
                        counted(referencing.len(), "security group"),
                        referencing.join(", ")
                    ))),
                }
            },
        )
        .await
    }
}

/// Groups whose ingress rules name `group` as their source: AWS refuses to delete it until
/// they no longer do.
async fn referencing_groups(ctx: &Ctx, group: &str) -> anyhow::Result<Vec<String>> {
    let out = call(
        ctx.aws
            .ec2
            .describe_security_groups()
            .filters(Filter::builder().name("ip-permission.group-id").values(group).build())
            .send(),
        || format!("listing the security groups that admit {group}"),
    )
    .await?;
    Ok(out
        .security_groups()
        .iter()
        .filter(|g| g.group_id() != Some(group))
        .map(|g| format!("{} ({})", g.group_id().unwrap_or("?"), g.group_name().unwrap_or("?")))
        .collect())
}

pub struct SecurityGroupStep {
    pub key: &'static str,
    pub description: String,
    pub rules: Vec<IngressRule>,
}

impl SecurityGroupStep {
    fn resolved(&self, env: &Env) -> anyhow::Result<Vec<Rule>> {
        self.rules
            .iter()
            .map(|r| {
                let peer = match &r.source {
                    Source::Cidr(cidr) => cidr.clone(),
                    Source::Group(key) => env.id(key)?,
                };
                let protocol = if r.ports.is_some() { "tcp" } else { "all" }.to_string();
                Ok(Rule { protocol, ports: r.ports, peer, description: r.description.clone() })
            })
            .collect()
    }
}

#[async_trait]
impl StepAction<Ctx> for SecurityGroupStep {
    fn desired(&self, _ctx: &Ctx, env: &Env) -> anyhow::Result<Vec<Desired>> {
        let rules: BTreeSet<String> = self.resolved(env)?.iter().map(Rule::canonical).collect();
        let ingress: Vec<String> = rules.into_iter().collect();
        Ok(vec![
            Desired::new(self.key, Kind::SecurityGroup, Default::default())
                .with("ingress", ingress)
                .with_sets(&["ingress"]),
        ])
    }

    async fn apply(&self, ctx: &Ctx, scope: &StepScope) -> anyhow::Result<Summary> {
        let vpc_id = scope.id_of(keys::VPC)?;
        let rules = scope.want(|env| self.resolved(env))?;
        let want = scope.wanted_one(ctx, self)?;
        let wanted: BTreeMap<String, &Rule> = rules.iter().map(|r| (r.canonical(), r)).collect();
        let (key, vpc, wanted) = (self.key, vpc_id.as_str(), &wanted);
        let ensured = scope
            .ensure(ctx, &Ec2::<SecurityGroups>::OPS, want, |existing, _| async move {
                let ec2 = &ctx.aws.ec2;
                let group_id = match existing {
                    Some(existing) => existing.id,
                    // Group names are unique per VPC, which also guards against a twin.
                    None => call(
                        ec2.create_security_group()
                            .group_name(ctx.tags.name(key))
                            .description(&self.description)
                            .vpc_id(vpc)
                            .tag_specifications(ctx.tags.ec2(ResourceType::SecurityGroup, key))
                            .send(),
                        || format!("creating security group {} in {vpc}", ctx.tags.name(key)),
                    )
                    .await?
                    .group_id()
                    .context("CreateSecurityGroup returned no id")?
                    .to_string(),
                };
                let live = live_rules(&Ec2::<SecurityGroups>::get_fresh(ctx, &group_id).await?);
                for (canonical, rule) in wanted.iter().filter(|(c, _)| !live.contains_key(*c)) {
                    let added = fresh(|| async {
                        call(
                            ec2.authorize_security_group_ingress()
                                .group_id(&group_id)
                                .ip_permissions(rule.permission())
                                .send(),
                            || format!("adding rule {canonical} to {group_id}"),
                        )
                        .await
                    })
                    .await;
                    match added {
                        Err(e) if e.is_code(&["InvalidPermission.Duplicate"]) => {}
                        other => {
                            other?;
                        }
                    }
                }
                for (stale, description) in live.iter().filter(|(c, _)| !wanted.contains_key(*c)) {
                    if let Some(rule) = Rule::parse(stale).map(|r| Rule { description: description.clone(), ..r }) {
                        if_there(
                            ec2.revoke_security_group_ingress()
                                .group_id(&group_id)
                                .ip_permissions(rule.permission())
                                .send(),
                            || format!("removing rule {stale} from {group_id}"),
                        )
                        .await?;
                    }
                }
                Ok(Applied::id(group_id))
            })
            .await?;
        Ok(ensured.summary(&format!(" ({})", counted(self.rules.len(), "rule"))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_rules_round_trip_for_every_peer() {
        for text in [
            "all:10.0.0.0/16",
            "tcp:443-443:203.0.113.0/24",
            "tcp:2049-2049:sg-0123",
            "tcp:80-80:2001:db8::/32",
            "tcp:22-22:pl-0abc",
            "all:::/0",
        ] {
            let rule = Rule::parse(text).unwrap_or_else(|| panic!("{text} does not parse"));
            assert_eq!(rule.canonical(), text);
        }
    }

    #[test]
    fn each_peer_becomes_its_own_kind_of_permission() {
        let permission = |peer: &str| Rule::parse(&format!("tcp:80-80:{peer}")).unwrap().permission();
        assert_eq!(permission("2001:db8::/32").ipv6_ranges().len(), 1);
        assert_eq!(permission("pl-0abc").prefix_list_ids().len(), 1);
        assert_eq!(permission("sg-0abc").user_id_group_pairs().len(), 1);
        assert_eq!(permission("10.0.0.0/8").ip_ranges().len(), 1);
    }
}
