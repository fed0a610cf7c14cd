//! What crosses the stack's subnets, under `hardening = "strict"` in a VPC the tool creates: a
//! network ACL per subnet tier (only the ports and the return range the stack uses) and the
//! VPC's flow log (to the log bucket). An imported VPC's ACLs and flow logs are its owner's.

use async_trait::async_trait;
use aws_sdk_ec2::types::{
    FlowLog, FlowLogsResourceType, LogDestinationType, NetworkAcl, NetworkAclEntry, PortRange, ResourceType,
    RuleAction, TrafficType,
};
use ipnet::Ipv4Net;

use crate::aws::ec2::{Ec2, Ec2Kind, ec2_listing};
use crate::aws::{Ctx, call, fresh, if_there};
use crate::config::StackConfig;
use crate::engine::{Applied, Desired, Env, Existing, StepAction, StepScope, Summary, attrs};
use crate::keys::{self, Kind};
use crate::state::ResourceRecord;

// ---------------------------------------------------------------------------------------------
// Network ACLs

/// One rule of a network ACL: `in 110 deny tcp 22 0.0.0.0/0`, as recorded and compared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub inbound: bool,
    pub number: i32,
    pub allow: bool,
    /// `None`: every protocol and port.
    pub ports: Option<(i32, i32)>,
    pub cidr: String,
}

impl Rule {
    fn new(inbound: bool, number: i32, allow: bool, ports: Option<(i32, i32)>, cidr: &str) -> Rule {
        Rule { inbound, number, allow, ports, cidr: cidr.to_string() }
    }

    pub fn text(&self) -> String {
        let ports = match self.ports {
            None => "all".to_string(),
            Some((from, to)) if from == to => format!("tcp {from}"),
            Some((from, to)) => format!("tcp {from}-{to}"),
        };
        let direction = if self.inbound { "in" } else { "out" };
        let action = if self.allow { "allow" } else { "deny" };
        format!("{direction} {} {action} {ports} {}", self.number, self.cidr)
    }

    fn of(entry: &NetworkAclEntry) -> Option<Rule> {
        let number = entry.rule_number()?;
        // 32767 is the ACL's own final deny-all.
        if number == 32767 {
            return None;
        }
        let ports = match entry.protocol() {
            Some("-1") => None,
            _ => entry.port_range().map(|p| (p.from().unwrap_or(0), p.to().unwrap_or(0))),
        };
        Some(Rule {
            inbound: entry.egress() == Some(false),
            number,
            allow: entry.rule_action() == Some(&RuleAction::Allow),
            ports,
            cidr: entry.cidr_block().unwrap_or_default().to_string(),
        })
    }
}

const ANYWHERE: &str = "0.0.0.0/0";
/// The ports the other end of a TCP connection answers on (AWS recommends 1024-65535: NAT
/// gateways, load balancers and Linux all use ports in it).
const EPHEMERAL: (i32, i32) = (1024, 65535);

/// How many allow rules the served ports may take before the tier admits them from anywhere
/// (a network ACL holds 20 inbound rules; the security groups still narrow them).
const MAX_SERVED_RULES: usize = 12;

/// The rules of a tier. Everything inside the VPC first; in the public tier, the ports the load
/// balancers serve from allowed_cidrs; then SSH and remote desktop denied from anywhere, before
/// the return range that would otherwise include 3389 (a scanner reads the first match); then
/// the return range. Out: everything by default (webhooks and mirrors on any port); under
/// `strict`, only HTTPS, HTTP and SSH (and, in the public tier, answers to clients).
pub fn rules(public: bool, vpc: Ipv4Net, cfg: &StackConfig) -> Vec<Rule> {
    let vpc = vpc.to_string();
    let mut rules = vec![Rule::new(true, 100, true, None, &vpc)];
    if public {
        let mut ports = vec![80, 443];
        ports.extend(cfg.ssh_port.map(i32::from));
        let cidrs: Vec<String> = if cfg.allowed_cidrs.len() * ports.len() <= MAX_SERVED_RULES {
            cfg.allowed_cidrs.iter().map(ToString::to_string).collect()
        } else {
            vec![ANYWHERE.to_string()]
        };
        let served = cidrs.iter().flat_map(|cidr| ports.iter().map(move |port| (*port, cidr.clone())));
        for (i, (port, cidr)) in served.enumerate() {
            rules.push(Rule::new(true, 110 + i as i32, true, Some((port, port)), &cidr));
        }
    }
    rules.push(Rule::new(true, 900, false, Some((22, 22)), ANYWHERE));
    rules.push(Rule::new(true, 910, false, Some((3389, 3389)), ANYWHERE));
    // Answers to what the stack opened (through the NAT) or, in the public tier, to clients.
    rules.push(Rule::new(true, 1000, true, Some(EPHEMERAL), ANYWHERE));
    rules.push(Rule::new(false, 100, true, None, &vpc));
    if !cfg.strict() {
        rules.push(Rule::new(false, 110, true, None, ANYWHERE));
        return rules;
    }
    // GitLab's way out through the NAT: HTTPS (images, AWS APIs), HTTP (package mirrors), SSH
    // (repository mirroring).
    rules.push(Rule::new(false, 110, true, Some((443, 443)), ANYWHERE));
    rules.push(Rule::new(false, 120, true, Some((80, 80)), ANYWHERE));
    rules.push(Rule::new(false, 130, true, Some((22, 22)), ANYWHERE));
    if public {
        rules.push(Rule::new(false, 1000, true, Some(EPHEMERAL), ANYWHERE));
    }
    rules
}

pub struct NetworkAcls;

ec2_listing!(NetworkAcls, NetworkAcl, "network ACL", describe_network_acls(network_acl_ids, set_filters) -> network_acls, network_acl_id);

fn associated(acl: &NetworkAcl) -> Vec<String> {
    acl.associations().iter().filter_map(|a| a.subnet_id().map(str::to_string)).collect()
}

#[async_trait]
impl Ec2Kind for NetworkAcls {
    fn live(acl: &NetworkAcl, record: &ResourceRecord) -> (String, Vec<String>) {
        let live: Vec<String> = acl.entries().iter().filter_map(Rule::of).map(|r| r.text()).collect();
        let mut drift = vec![];
        let recorded = record.list("rules");
        if !recorded.is_empty() && recorded.iter().any(|r| !live.contains(r))
            || live.iter().any(|r| !recorded.contains(r))
        {
            drift.push("its rules were changed outside gitlab-provision".to_string());
        }
        let subnets = associated(acl);
        if record.list("subnets").iter().any(|s| !subnets.contains(s)) {
            drift.push("a subnet was moved to another network ACL".to_string());
        }
        (format!("{} rules on {} subnets", live.len(), subnets.len()), drift)
    }

    /// Its subnets go back to the VPC's default ACL first: AWS refuses to delete an ACL that
    /// subnets use.
    async fn delete(ctx: &Ctx, id: &str, _scope: &StepScope) -> anyhow::Result<()> {
        let Some(acl) = Ec2::<NetworkAcls>::get(ctx, id).await? else { return Ok(()) };
        if let Some(vpc) = acl.vpc_id() {
            let default = default_acl(ctx, vpc).await?;
            for subnet in associated(&acl) {
                associate(ctx, &subnet, &default).await?;
            }
        }
        if_there(ctx.aws.ec2.delete_network_acl().network_acl_id(id).send(), || format!("deleting network ACL {id}"))
            .await?;
        Ok(())
    }
}

/// The VPC's default network ACL (AWS creates it with the VPC; it cannot be deleted).
async fn describe_default_acl(ctx: &Ctx, vpc: &str) -> anyhow::Result<aws_sdk_ec2::types::NetworkAcl> {
    use aws_sdk_ec2::types::Filter;
    let out = call(
        ctx.aws
            .ec2
            .describe_network_acls()
            .filters(Filter::builder().name("vpc-id").values(vpc).build())
            .filters(Filter::builder().name("default").values("true").build())
            .send(),
        || format!("reading the default network ACL of {vpc}"),
    )
    .await?;
    out.network_acls().first().cloned().ok_or_else(|| anyhow::anyhow!("{vpc} has no default network ACL"))
}

async fn default_acl(ctx: &Ctx, vpc: &str) -> anyhow::Result<String> {
    let acl = describe_default_acl(ctx, vpc).await?;
    acl.network_acl_id().map(str::to_string).ok_or_else(|| anyhow::anyhow!("{vpc}'s default network ACL has no id"))
}

/// Moves a subnet to `acl` (a subnet always has exactly one ACL: its association is replaced).
async fn associate(ctx: &Ctx, subnet: &str, acl: &str) -> anyhow::Result<()> {
    use aws_sdk_ec2::types::Filter;
    let out = fresh(|| async {
        call(
            ctx.aws
                .ec2
                .describe_network_acls()
                .filters(Filter::builder().name("association.subnet-id").values(subnet).build())
                .send(),
            || format!("reading the network ACL of {subnet}"),
        )
        .await
    })
    .await?;
    let association = out
        .network_acls()
        .iter()
        .flat_map(|a| a.associations())
        .find(|a| a.subnet_id() == Some(subnet))
        .and_then(|a| a.network_acl_association_id());
    let Some(association) = association else { return Ok(()) };
    call(ctx.aws.ec2.replace_network_acl_association().association_id(association).network_acl_id(acl).send(), || {
        format!("giving {subnet} network ACL {acl}")
    })
    .await?;
    Ok(())
}

/// Once no subnet uses the VPC's default network ACL (the second tier's step finds it so), its
/// allow-everything rules are deleted, as the default security group's are: nothing of the stack
/// uses it, and a subnet someone adds to the VPC later is then closed rather than open. AWS keeps
/// the ACL itself and its final deny.
async fn close_default_acl(ctx: &Ctx, vpc: &str) -> anyhow::Result<()> {
    let acl = describe_default_acl(ctx, vpc).await?;
    let Some(id) = acl.network_acl_id().filter(|_| acl.associations().is_empty()) else { return Ok(()) };
    // 32767 is AWS's own final rule, which cannot be deleted.
    for entry in acl.entries().iter().filter(|e| e.rule_number() != Some(32767)) {
        let (Some(number), Some(egress)) = (entry.rule_number(), entry.egress()) else { continue };
        // The other tier's step may have removed it a moment ago.
        if_there(
            ctx.aws.ec2.delete_network_acl_entry().network_acl_id(id).rule_number(number).egress(egress).send(),
            || format!("removing rule {number} of {vpc}'s default network ACL {id}"),
        )
        .await?;
    }
    Ok(())
}

pub struct NetworkAclStep {
    pub key: &'static str,
    pub public: bool,
    pub vpc_cidr: Ipv4Net,
    pub config: std::sync::Arc<StackConfig>,
}

impl NetworkAclStep {
    fn subnet_keys(&self) -> [&'static str; 2] {
        if self.public { keys::PUBLIC_SUBNETS } else { keys::PRIVATE_SUBNETS }
    }
}

#[async_trait]
impl StepAction<Ctx> for NetworkAclStep {
    fn desired(&self, _ctx: &Ctx, env: &Env) -> anyhow::Result<Vec<Desired>> {
        let subnets = self.subnet_keys().iter().map(|k| env.id(k)).collect::<anyhow::Result<Vec<_>>>()?;
        let rules: Vec<String> = rules(self.public, self.vpc_cidr, &self.config).iter().map(Rule::text).collect();
        let tier = if self.public { "public" } else { "private" };
        Ok(vec![
            Desired::new(self.key, Kind::NetworkAcl, attrs([("tier", tier.to_string())]))
                .with("rules", rules)
                .with("subnets", subnets)
                .with_sets(&["rules", "subnets"]),
        ])
    }

    async fn apply(&self, ctx: &Ctx, scope: &StepScope) -> anyhow::Result<Summary> {
        let want = scope.wanted_one(ctx, self)?;
        let vpc = scope.id_of(keys::VPC)?;
        let subnets: Vec<String> = want.list("subnets");
        let wanted = rules(self.public, self.vpc_cidr, &self.config);
        let (vpc, subnets, wanted, key) = (vpc.as_str(), &subnets, &wanted, self.key);
        let ensured = scope
            .ensure(ctx, &Ec2::<NetworkAcls>::OPS, want, |existing, _| async move {
                let id = ensure_acl(ctx, vpc, key, existing).await?;
                scope.created(key, &id).await?;
                set_rules(ctx, &id, wanted).await?;
                for subnet in subnets {
                    associate(ctx, subnet, &id).await?;
                }
                close_default_acl(ctx, vpc).await?;
                Ok(Applied::id(id))
            })
            .await?;
        Ok(ensured.summary(&format!(" ({} rules)", wanted.len())))
    }
}

async fn ensure_acl(ctx: &Ctx, vpc: &str, key: &str, existing: Option<Existing>) -> anyhow::Result<String> {
    if let Some(existing) = existing {
        return Ok(existing.id);
    }
    let out = call(
        ctx.aws
            .ec2
            .create_network_acl()
            .vpc_id(vpc)
            .tag_specifications(ctx.tags.ec2(ResourceType::NetworkAcl, key))
            .send(),
        || format!("creating a network ACL in {vpc}"),
    )
    .await?;
    out.network_acl()
        .and_then(|a| a.network_acl_id())
        .map(str::to_string)
        .ok_or_else(|| anyhow::anyhow!("CreateNetworkAcl returned no id"))
}

/// Makes the ACL's rules exactly `wanted`: each created or replaced by number, the rest deleted.
async fn set_rules(ctx: &Ctx, id: &str, wanted: &[Rule]) -> anyhow::Result<()> {
    let acl = Ec2::<NetworkAcls>::get_fresh(ctx, id).await?;
    let live: Vec<Rule> = acl.entries().iter().filter_map(Rule::of).collect();
    let ec2 = &ctx.aws.ec2;
    for rule in wanted {
        if live.contains(rule) {
            continue;
        }
        let exists = live.iter().any(|l| l.inbound == rule.inbound && l.number == rule.number);
        let ports = rule.ports.map(|(from, to)| PortRange::builder().from(from).to(to).build());
        let protocol = if rule.ports.is_some() { "6" } else { "-1" };
        let action = if rule.allow { RuleAction::Allow } else { RuleAction::Deny };
        let text = rule.text();
        if exists {
            call(
                ec2.replace_network_acl_entry()
                    .network_acl_id(id)
                    .rule_number(rule.number)
                    .egress(!rule.inbound)
                    .protocol(protocol)
                    .rule_action(action)
                    .cidr_block(&rule.cidr)
                    .set_port_range(ports)
                    .send(),
                || format!("setting rule {text} of {id}"),
            )
            .await?;
        } else {
            call(
                ec2.create_network_acl_entry()
                    .network_acl_id(id)
                    .rule_number(rule.number)
                    .egress(!rule.inbound)
                    .protocol(protocol)
                    .rule_action(action)
                    .cidr_block(&rule.cidr)
                    .set_port_range(ports)
                    .send(),
                || format!("adding rule {text} to {id}"),
            )
            .await?;
        }
    }
    for stale in live.iter().filter(|l| !wanted.iter().any(|w| w.inbound == l.inbound && w.number == l.number)) {
        call(
            ec2.delete_network_acl_entry().network_acl_id(id).rule_number(stale.number).egress(!stale.inbound).send(),
            || format!("removing rule {} of {id}", stale.text()),
        )
        .await?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The VPC's flow log

pub struct FlowLogs;

ec2_listing!(FlowLogs, FlowLog, "flow log", describe_flow_logs(flow_log_ids, set_filter) -> flow_logs, flow_log_id);

#[async_trait]
impl Ec2Kind for FlowLogs {
    fn live(log: &FlowLog, record: &ResourceRecord) -> (String, Vec<String>) {
        let destination = log.log_destination().unwrap_or_default();
        let mut drift = vec![];
        if record.attr("destination").is_some_and(|d| d != destination) {
            drift.push(format!("it now writes to {destination}"));
        }
        (format!("{} to {destination}", log.flow_log_status().unwrap_or("?")), drift)
    }

    async fn delete(ctx: &Ctx, id: &str, _scope: &StepScope) -> anyhow::Result<()> {
        if_there(ctx.aws.ec2.delete_flow_logs().flow_log_ids(id).send(), || format!("deleting flow log {id}")).await?;
        Ok(())
    }
}

pub struct FlowLogStep;

#[async_trait]
impl StepAction<Ctx> for FlowLogStep {
    fn desired(&self, _ctx: &Ctx, env: &Env) -> anyhow::Result<Vec<Desired>> {
        let wanted = attrs([("vpc", env.id(keys::VPC)?), ("destination", env.attr(keys::LOG_BUCKET, "arn")?)]);
        Ok(vec![Desired::new(keys::FLOW_LOG, Kind::FlowLog, wanted).replaced_on(&["vpc", "destination"])])
    }

    async fn apply(&self, ctx: &Ctx, scope: &StepScope) -> anyhow::Result<Summary> {
        let want = scope.wanted_one(ctx, self)?;
        let (vpc, destination) = (want.text("vpc").to_string(), want.text("destination").to_string());
        let (vpc, destination) = (vpc.as_str(), destination.as_str());
        let ensured = scope
            .ensure(ctx, &Ec2::<FlowLogs>::OPS, want, |existing, token| async move {
                if let Some(existing) = existing {
                    return Ok(Applied::id(existing.id));
                }
                // Every accepted and rejected connection, in S3's columns, at the bucket's root
                // (S3 adds AWSLogs/<account>/vpcflowlogs/...).
                let out = call(
                    ctx.aws
                        .ec2
                        .create_flow_logs()
                        .resource_type(FlowLogsResourceType::Vpc)
                        .resource_ids(vpc)
                        .traffic_type(TrafficType::All)
                        .log_destination_type(LogDestinationType::S3)
                        .log_destination(destination)
                        .client_token(token)
                        .tag_specifications(ctx.tags.ec2(ResourceType::VpcFlowLog, keys::FLOW_LOG))
                        .send(),
                    || format!("logging the traffic of {vpc} to {destination}"),
                )
                .await?;
                if let Some(refused) = out.unsuccessful().first() {
                    let why = refused.error().and_then(|e| e.message()).unwrap_or("no reason given");
                    anyhow::bail!("CreateFlowLogs refused {vpc}: {why}");
                }
                let id = out.flow_log_ids().first().ok_or_else(|| anyhow::anyhow!("CreateFlowLogs returned no id"))?;
                Ok(Applied::id(id.clone()))
            })
            .await?;
        Ok(ensured.summary(&format!(" (all traffic of {vpc} to the log bucket)")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn first_match(rules: &[Rule], port: i32) -> Option<bool> {
        let mut inbound: Vec<&Rule> = rules.iter().filter(|r| r.inbound && r.cidr == ANYWHERE).collect();
        inbound.sort_by_key(|r| r.number);
        inbound.iter().find(|r| r.ports.is_none_or(|(from, to)| from <= port && port <= to)).map(|r| r.allow)
    }

    #[test]
    fn remote_desktop_and_ssh_are_denied_from_anywhere_before_the_return_range() {
        let settings = crate::config::Settings {
            allowed_cidrs: Some(vec!["203.0.113.0/24".into()]),
            ssh: Some(true),
            ..Default::default()
        };
        let cfg = crate::config::validate(&settings).unwrap();
        let vpc: Ipv4Net = "10.0.0.0/16".parse().unwrap();
        for public in [true, false] {
            let rules = rules(public, vpc, &cfg);
            assert_eq!(first_match(&rules, 3389), Some(false), "public {public}");
            assert_eq!(first_match(&rules, 22), Some(false), "public {public}");
            assert_eq!(first_match(&rules, 40000), Some(true), "return traffic, public {public}");
            assert!(rules.iter().filter(|r| r.inbound).all(|r| r.ports.is_some() || r.cidr == "10.0.0.0/16"));
            assert!(
                rules.iter().filter(|r| r.inbound).count() <= 20 && rules.iter().filter(|r| !r.inbound).count() <= 20
            );
        }
        // The served ports, SSH on 22 included, from the allowed networks only.
        let public = rules(true, vpc, &cfg);
        for port in [22, 80, 443] {
            assert!(
                public
                    .iter()
                    .any(|r| r.allow && r.inbound && r.ports == Some((port, port)) && r.cidr == "203.0.113.0/24"),
                "{port}"
            );
        }
        assert_eq!(first_match(&rules(false, vpc, &cfg), 443), None, "nothing outside reaches the private tier");
        // Out: anything by default, the ports GitLab uses under strict.
        assert!(public.iter().any(|r| !r.inbound && r.ports.is_none() && r.cidr == ANYWHERE));
        let strict = crate::config::validate(&crate::config::Settings {
            hardening: Some(crate::config::Hardening::Strict),
            ..settings
        })
        .unwrap();
        assert!(rules(false, vpc, &strict).iter().all(|r| r.inbound || r.ports.is_some() || r.cidr != ANYWHERE));
    }
}
