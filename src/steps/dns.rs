//! Route 53: the hosted zone check, and the records this tool writes (the certificate's
//! validation CNAME, the alias for GitLab's name and the one for SSH), removed again by `down`.
//! Records carry no tags: one is the stack's while it still says what the stack wrote.

use anyhow::Context as _;
use async_trait::async_trait;
use aws_sdk_route53::types::{
    AliasTarget, Change, ChangeAction, ChangeBatch, ResourceRecord, ResourceRecordSet, RrType,
};

use ground::Diagnostic;

use crate::aws::{Ctx, call, if_there};
use crate::config::DomainConfig;
use crate::engine::{Applied, Desired, Env, Live, Lost, Owner, ResourceOps, StepAction, StepScope, Summary, attrs};
use crate::keys::Kind;
use crate::state::ResourceRecord as Record;

fn fqdn_dot(name: &str) -> String {
    if name.ends_with('.') { name.to_ascii_lowercase() } else { format!("{}.", name.to_ascii_lowercase()) }
}

/// Checks before anything is created that the hosted zone exists, is public and serves the domain.
pub struct CheckHostedZone {
    pub domain: DomainConfig,
}

#[async_trait]
impl StepAction<Ctx> for CheckHostedZone {
    async fn apply(&self, ctx: &Ctx, _scope: &StepScope) -> anyhow::Result<Summary> {
        let zone_id = &self.domain.hosted_zone_id;
        let zone =
            if_there(ctx.aws.route53.get_hosted_zone().id(zone_id).send(), || format!("reading hosted zone {zone_id}"))
                .await?;
        let Some(zone) = zone.and_then(|z| z.hosted_zone) else {
            return Err(Diagnostic::new(format!("hosted_zone_id = {zone_id}: no such hosted zone in this account"))
                .with_help(format!("use the id from `aws route53 list-hosted-zones` for {}", self.domain.domain_name))
                .into());
        };
        let zone_name = zone.name.trim_end_matches('.').to_ascii_lowercase();
        let domain = &self.domain.domain_name;
        if *domain != zone_name && !domain.ends_with(&format!(".{zone_name}")) {
            return Err(Diagnostic::new(format!(
                "hosted_zone_id = {zone_id} serves {zone_name}, not domain_name = {domain}"
            ))
            .with_help(format!("use the hosted zone of {domain}, or set domain_name to {zone_name}"))
            .into());
        }
        if zone.config.as_ref().is_some_and(|c| c.private_zone) {
            return Err(Diagnostic::new(format!(
                "hosted_zone_id = {zone_id} is a private zone: certificates cannot be validated through it"
            ))
            .with_help(format!("use the public hosted zone of {domain}"))
            .into());
        }
        Ok(Summary::new(format!("{zone_id} serves {zone_name}"), false))
    }
}

/// A record as this tool writes it: a CNAME with one value, or an alias.
pub enum RecordValue {
    Cname(String),
    Alias { dns_name: String, zone_id: String },
}

impl RecordValue {
    fn kind(&self) -> &'static str {
        match self {
            RecordValue::Cname(_) => "CNAME",
            RecordValue::Alias { .. } => "A",
        }
    }

    /// How the record's value is recorded and compared.
    fn shown(&self) -> String {
        match self {
            RecordValue::Cname(v) => fqdn_dot(v),
            RecordValue::Alias { dns_name, .. } => format!("alias {}", fqdn_dot(dns_name)),
        }
    }
}

fn record_set(name: &str, value: &RecordValue) -> anyhow::Result<ResourceRecordSet> {
    let builder = ResourceRecordSet::builder().name(fqdn_dot(name));
    let set = match value {
        RecordValue::Cname(target) => builder
            .r#type(RrType::Cname)
            .ttl(300)
            .resource_records(ResourceRecord::builder().value(target).build().context("record value")?),
        RecordValue::Alias { dns_name, zone_id } => builder.r#type(RrType::A).alias_target(
            AliasTarget::builder()
                .dns_name(dns_name)
                .hosted_zone_id(zone_id)
                .evaluate_target_health(false)
                .build()
                .context("alias")?,
        ),
    };
    set.build().context("record set")
}

/// What a live record set says, in the recorded form.
fn shown_live(set: &ResourceRecordSet) -> String {
    match set.alias_target() {
        Some(alias) => format!("alias {}", fqdn_dot(alias.dns_name())),
        None => set.resource_records().first().map(|r| fqdn_dot(r.value())).unwrap_or_default(),
    }
}

async fn change(ctx: &Ctx, zone: &str, action: ChangeAction, set: ResourceRecordSet) -> anyhow::Result<()> {
    let name = set.name().to_string();
    let batch = ChangeBatch::builder()
        .changes(Change::builder().action(action.clone()).resource_record_set(set).build()?)
        .build()?;
    call(ctx.aws.route53.change_resource_record_sets().hosted_zone_id(zone).change_batch(batch).send(), || {
        format!("{} record {name} in {zone}", action.as_str().to_lowercase())
    })
    .await?;
    Ok(())
}

fn desired_record(key: &str, zone: &str, name: &str, value: &RecordValue) -> Desired {
    let wanted = attrs([
        ("zone", zone.to_string()),
        ("name", fqdn_dot(name)),
        ("type", value.kind().to_string()),
        ("value", value.shown()),
    ]);
    Desired::new(key, Kind::DnsRecord, wanted).replaced_on(&["zone", "name", "type"])
}

/// Writes `name` in the zone (UPSERT: converges whatever is there) and records it.
pub async fn ensure_record(
    ctx: &Ctx,
    scope: &StepScope,
    key: &str,
    zone: &str,
    name: &str,
    value: RecordValue,
) -> anyhow::Result<crate::engine::Ensured> {
    let set = record_set(name, &value)?;
    let id = format!("{zone}/{}/{}", fqdn_dot(name), value.kind());
    scope
        .ensure(ctx, &RecordOps, desired_record(key, zone, name, &value), |_existing, _| async move {
            change(ctx, zone, ChangeAction::Upsert, set).await?;
            Ok(Applied::id(id))
        })
        .await
}

/// An alias record for a name, pointing at one of the stack's load balancers.
pub struct AliasRecordStep {
    pub key: &'static str,
    pub name: String,
    pub zone: String,
    pub load_balancer: &'static str,
}

impl AliasRecordStep {
    fn value(&self, env: &Env) -> anyhow::Result<RecordValue> {
        Ok(RecordValue::Alias {
            dns_name: format!("dualstack.{}", env.attr(self.load_balancer, "dns_name")?),
            zone_id: env.attr(self.load_balancer, "zone_id")?,
        })
    }
}

#[async_trait]
impl StepAction<Ctx> for AliasRecordStep {
    fn desired(&self, _ctx: &Ctx, env: &Env) -> anyhow::Result<Vec<Desired>> {
        Ok(vec![desired_record(self.key, &self.zone, &self.name, &self.value(env)?)])
    }

    async fn apply(&self, ctx: &Ctx, scope: &StepScope) -> anyhow::Result<Summary> {
        let value = scope.want(|env| self.value(env))?;
        let shown = value.shown();
        let ensured = ensure_record(ctx, scope, self.key, &self.zone, &self.name, value).await?;
        Ok(Summary::new(format!("{} A {} -> {shown}", ensured.verb(), self.name), ensured.changed()))
    }
}

/// The live record set with this name and type, if any.
async fn read_set(ctx: &Ctx, record: &Record) -> anyhow::Result<Option<ResourceRecordSet>> {
    let (Some(zone), Some(name), Some(kind)) = (record.attr("zone"), record.attr("name"), record.attr("type")) else {
        anyhow::bail!("the record has no zone, name or type");
    };
    let out = if_there(
        ctx.aws
            .route53
            .list_resource_record_sets()
            .hosted_zone_id(zone)
            .start_record_name(name)
            .start_record_type(RrType::from(kind))
            .max_items(1)
            .send(),
        || format!("reading record {name} in {zone}"),
    )
    .await?;
    Ok(out
        .map(|o| o.resource_record_sets)
        .unwrap_or_default()
        .into_iter()
        .find(|s| fqdn_dot(s.name()).eq_ignore_ascii_case(name) && s.r#type().as_str() == kind))
}

pub struct RecordOps;

#[async_trait]
impl ResourceOps<Ctx> for RecordOps {
    fn noun(&self) -> &'static str {
        Kind::DnsRecord.noun()
    }

    async fn read(&self, ctx: &Ctx, record: &Record) -> anyhow::Result<Live> {
        Ok(match read_set(ctx, record).await? {
            None => Live::Missing,
            Some(set) => {
                let live = shown_live(&set);
                let owner = match record.attr("value") {
                    Some(wrote)
                        if fqdn_dot(wrote.trim_start_matches("alias "))
                            == fqdn_dot(live.trim_start_matches("alias ")) =>
                    {
                        Owner::Ours
                    }
                    Some(wrote) => Owner::Foreign(format!("it now says {live}, not {wrote} as this stack wrote it")),
                    None => Owner::Ours,
                };
                Live::present(format!("{} {}", set.r#type().as_str(), set.name()), vec![]).owned_by(owner)
            }
        })
    }

    async fn find(&self, ctx: &Ctx, lost: &Lost<'_>) -> anyhow::Result<Option<String>> {
        Ok(read_set(ctx, lost.record)
            .await?
            .map(|s| format!("{}/{}/{}", lost.record.attr("zone").unwrap_or_default(), s.name(), s.r#type().as_str())))
    }

    /// DELETE needs the record exactly as it is, so it is read first.
    async fn delete(&self, ctx: &Ctx, record: &Record, _scope: &StepScope) -> anyhow::Result<()> {
        let Some(set) = read_set(ctx, record).await? else { return Ok(()) };
        let zone = record.attr("zone").context("no zone")?;
        change(ctx, zone, ChangeAction::Delete, set).await
    }
}

/// GitLab's and SSH's names under the domain.
pub fn gitlab_name(domain: &DomainConfig) -> String {
    domain.fqdn()
}

/// `ssh.<sub_domain>.<domain_name>`: beside GitLab's own name, in the same zone.
pub fn ssh_name(domain: &DomainConfig) -> String {
    format!("ssh.{}", domain.fqdn())
}
