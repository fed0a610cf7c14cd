//! Security groups: created with their ingress rules, converged when the rules change.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::Context as _;
use async_trait::async_trait;
use aws_sdk_ec2::types::{IpPermission, IpRange, ResourceType, SecurityGroup, UserIdGroupPair};

use super::network::{KEY_VPC, attrs, discovered, required_id, stack_filter, stack_key};
use super::{Ctx, EC2_IN_USE, delete_when_free};
use crate::aws::{AwsError, AwsResultExt, found};
use crate::engine::{Created, Desired, Discovered, Live, ResourceOps, StepAction, StepScope};
use crate::state::ResourceRecord;

pub const SECURITY_GROUP: &str = "ec2:security-group";

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

    /// The rule with its source resolved to a CIDR or a group id.
    fn resolve(&self, scope: &StepScope) -> anyhow::Result<Resolved> {
        let peer = match &self.source {
            Source::Cidr(cidr) => cidr.clone(),
            Source::Group(key) => required_id(key, scope)?,
        };
        Ok(Resolved { ports: self.ports, peer, description: self.description.clone() })
    }
}

/// A rule as AWS sees it: from a CIDR or from a group id (`sg-...`).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Resolved {
    ports: Option<(i32, i32)>,
    peer: String,
    description: String,
}

impl Resolved {
    /// The form rules are compared in, and recorded as.
    fn canonical(&self) -> String {
        match self.ports {
            None => format!("all:{}", self.peer),
            Some((from, to)) => format!("tcp:{from}-{to}:{}", self.peer),
        }
    }

    fn permission(&self) -> IpPermission {
        let builder = match self.ports {
            None => IpPermission::builder().ip_protocol("-1"),
            Some((from, to)) => IpPermission::builder().ip_protocol("tcp").from_port(from).to_port(to),
        };
        if self.peer.starts_with("sg-") {
            let pair = UserIdGroupPair::builder().group_id(&self.peer).description(&self.description).build();
            builder.user_id_group_pairs(pair).build()
        } else {
            builder.ip_ranges(IpRange::builder().cidr_ip(&self.peer).description(&self.description).build()).build()
        }
    }
}

fn parse_canonical(text: &str) -> Option<Resolved> {
    let mut parts = text.splitn(3, ':');
    let (ports, peer) = match (parts.next(), parts.next(), parts.next()) {
        (Some("all"), Some(peer), None) => (None, peer),
        (Some("tcp"), Some(range), Some(peer)) => {
            let (from, to) = range.split_once('-')?;
            (Some((from.parse().ok()?, to.parse().ok()?)), peer)
        }
        _ => return None,
    };
    Some(Resolved { ports, peer: peer.to_string(), description: String::new() })
}

/// The rules a live group has, in canonical form.
fn live_rules(group: &SecurityGroup) -> BTreeSet<String> {
    group
        .ip_permissions()
        .iter()
        .flat_map(|p| {
            let prefix = match p.ip_protocol() {
                Some("-1") | Some("all") => "all".to_string(),
                Some(proto) => format!("{proto}:{}-{}", p.from_port().unwrap_or(-1), p.to_port().unwrap_or(-1)),
                None => "?".to_string(),
            };
            let cidrs = p.ip_ranges().iter().filter_map(|r| r.cidr_ip());
            let groups = p.user_id_group_pairs().iter().filter_map(|g| g.group_id());
            cidrs.chain(groups).map(move |peer| format!("{prefix}:{peer}")).collect::<Vec<_>>()
        })
        .collect()
}

fn recorded_rules(record: &ResourceRecord) -> BTreeSet<String> {
    record.attr("ingress").unwrap_or_default().split(';').filter(|s| !s.is_empty()).map(str::to_string).collect()
}

pub struct SecurityGroupStep {
    pub key: &'static str,
    pub description: String,
    pub rules: Vec<IngressRule>,
    /// Extra teardown edges: records that must outlive this group (for the initializer's group,
    /// the subnets its lingering Lambda interfaces sit in).
    pub outlives: Vec<&'static str>,
}

#[async_trait]
impl StepAction<Ctx> for SecurityGroupStep {
    /// Rules from CIDRs are known from the configuration alone (rules from groups need their ids).
    fn config_changes(&self, records: &BTreeMap<String, ResourceRecord>) -> Vec<(String, String)> {
        let Some(record) = records.get(self.key) else { return vec![] };
        let is_cidr_rule = |rule: &String| !rule.contains(":sg-");
        let recorded: BTreeSet<String> = recorded_rules(record).into_iter().filter(is_cidr_rule).collect();
        let wanted: BTreeSet<String> = self
            .rules
            .iter()
            .filter_map(|r| match &r.source {
                Source::Cidr(cidr) => {
                    Some(Resolved { ports: r.ports, peer: cidr.clone(), description: String::new() }.canonical())
                }
                Source::Group(_) => None,
            })
            .collect();
        let mut changes: Vec<String> = wanted.difference(&recorded).map(|r| format!("+{r}")).collect();
        changes.extend(recorded.difference(&wanted).map(|r| format!("-{r}")));
        if changes.is_empty() { vec![] } else { vec![(self.key.to_string(), format!("ingress {}", changes.join(" ")))] }
    }

    async fn apply(&self, ctx: &Ctx, scope: &StepScope) -> anyhow::Result<String> {
        let vpc_id = required_id(KEY_VPC, scope)?;
        let resolved = self.rules.iter().map(|r| r.resolve(scope)).collect::<anyhow::Result<Vec<_>>>()?;
        let wanted: BTreeMap<String, &Resolved> = resolved.iter().map(|r| (r.canonical(), r)).collect();
        let mut depends_on = vec![KEY_VPC.to_string()];
        for rule in &self.rules {
            if let Source::Group(key) = rule.source
                && !depends_on.iter().any(|d| d == key)
            {
                depends_on.push(key.to_string());
            }
        }
        depends_on.extend(self.outlives.iter().map(|k| k.to_string()));
        let desired = Desired {
            key: self.key.into(),
            kind: SECURITY_GROUP.into(),
            depends_on,
            attrs: attrs([("ingress", wanted.keys().cloned().collect::<Vec<_>>().join(";"))]),
        };
        let ec2 = &ctx.aws.ec2;
        let (key, vpc, wanted) = (self.key, vpc_id.as_str(), &wanted);
        let ensured = scope
            .ensure(ctx, &SecurityGroupOps, desired, |existing, _token| async move {
                let group_id = match existing {
                    Some(found) => found.id,
                    None => ec2
                        .create_security_group()
                        // Group names are unique per VPC, which also guards against a twin.
                        .group_name(ctx.tags.name(key))
                        .description(&self.description)
                        .vpc_id(vpc)
                        .tag_specifications(ctx.tags.ec2(ResourceType::SecurityGroup, key))
                        .send()
                        .await
                        .or_aws(|| format!("creating security group {} in {vpc}", ctx.tags.name(key)))?
                        .group_id()
                        .context("CreateSecurityGroup returned no id")?
                        .to_string(),
                };
                let group =
                    describe(ctx, &group_id).await?.with_context(|| format!("security group {group_id} vanished"))?;
                let live = live_rules(&group);
                for (canonical, rule) in wanted.iter().filter(|(c, _)| !live.contains(*c)) {
                    let result = ec2
                        .authorize_security_group_ingress()
                        .group_id(&group_id)
                        .ip_permissions(rule.permission())
                        .send()
                        .await;
                    match result.or_aws(|| format!("adding rule {canonical} to {group_id}")) {
                        Err(e) if e.is_code(&["InvalidPermission.Duplicate"]) => {}
                        other => {
                            other?;
                        }
                    }
                }
                for stale in live.iter().filter(|c| !wanted.contains_key(*c)) {
                    if let Some(rule) = parse_canonical(stale) {
                        let result = ec2
                            .revoke_security_group_ingress()
                            .group_id(&group_id)
                            .ip_permissions(rule.permission())
                            .send()
                            .await;
                        found(result.or_aws(|| format!("removing rule {stale} from {group_id}")))?;
                    }
                }
                Ok(Created { id: group_id, attrs: BTreeMap::new() })
            })
            .await?;
        Ok(format!("{} {} ({} rules)", ensured.verb(), ensured.id(), self.rules.len()))
    }
}

async fn describe(ctx: &Ctx, id: &str) -> Result<Option<SecurityGroup>, AwsError> {
    let out = found(
        ctx.aws
            .ec2
            .describe_security_groups()
            .group_ids(id)
            .send()
            .await
            .or_aws(|| format!("reading security group {id}")),
    )?;
    Ok(out.and_then(|o| o.security_groups.and_then(|v| v.into_iter().next())))
}

pub struct SecurityGroupOps;

#[async_trait]
impl ResourceOps<Ctx> for SecurityGroupOps {
    fn noun(&self) -> &'static str {
        "security group"
    }

    async fn read(&self, ctx: &Ctx, record: &ResourceRecord) -> anyhow::Result<Live> {
        let id = record.id()?;
        let Some(group) = describe(ctx, id).await? else { return Ok(Live::Missing) };
        let live = live_rules(&group);
        let recorded = recorded_rules(record);
        let mut drift: Vec<String> = recorded.difference(&live).map(|r| format!("rule {r} is missing")).collect();
        drift.extend(live.difference(&recorded).map(|r| format!("unexpected rule {r}")));
        Ok(Live::Present {
            summary: format!("{} ({} ingress rules)", group.group_name().unwrap_or_default(), live.len()),
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
            .describe_security_groups()
            .set_filters(Some(ctx.tags.ec2_filters(key)))
            .send()
            .await
            .or_aws(|| format!("looking for the security group tagged {key}"))?;
        Ok(out.security_groups().iter().find_map(|g| g.group_id().map(str::to_string)))
    }

    async fn delete(&self, ctx: &Ctx, record: &ResourceRecord, scope: &StepScope) -> anyhow::Result<()> {
        let id = record.id()?;
        super::efs_init::release_lambda_interfaces(ctx, id, scope).await?;
        delete_when_free(EC2_IN_USE, || async {
            ctx.aws
                .ec2
                .delete_security_group()
                .group_id(id)
                .send()
                .await
                .map(|_| ())
                .or_aws(|| format!("deleting security group {id}"))
        })
        .await?;
        Ok(())
    }

    async fn discover(&self, ctx: &Ctx) -> anyhow::Result<Vec<Discovered>> {
        let out = ctx
            .aws
            .ec2
            .describe_security_groups()
            .filters(stack_filter(ctx))
            .send()
            .await
            .or_aws(|| "discovering security groups".into())?;
        Ok(out
            .security_groups()
            .iter()
            .filter_map(|g| Some(discovered(stack_key(g.tags(), &ctx.tags.stack)?, g.group_id()?)))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_rules_round_trip() {
        for rule in [
            Resolved { ports: None, peer: "10.0.0.0/16".into(), description: String::new() },
            Resolved { ports: Some((443, 443)), peer: "203.0.113.0/24".into(), description: String::new() },
            Resolved { ports: Some((2049, 2049)), peer: "sg-0123".into(), description: String::new() },
        ] {
            assert_eq!(parse_canonical(&rule.canonical()), Some(rule));
        }
    }
}
