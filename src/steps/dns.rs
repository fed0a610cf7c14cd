//! Route 53: the hosted zone check, and the records this tool writes (the certificate's
//! validation CNAME and the alias to the load balancer), removed again by `down`.

use anyhow::Context as _;
use async_trait::async_trait;
use aws_sdk_route53::types::{
    AliasTarget, Change, ChangeAction, ChangeBatch, ResourceRecord, ResourceRecordSet, RrType,
};

use super::Ctx;
use super::load_balancer::KEY_LOAD_BALANCER;
use super::network::attrs;
use crate::aws::{AwsResultExt, found};
use crate::config::DomainConfig;
use crate::engine::{Created, Desired, Live, ResourceOps, StepAction, StepScope};
use crate::state::ResourceRecord as Record;

pub const RECORD: &str = "route53:record";
pub const KEY_ALIAS_RECORD: &str = "dns-alias";

fn fqdn_dot(name: &str) -> String {
    if name.ends_with('.') { name.to_string() } else { format!("{name}.") }
}

/// Checks before anything is created that the hosted zone exists and serves the domain.
pub struct CheckHostedZone {
    pub domain: DomainConfig,
}

#[async_trait]
impl StepAction<Ctx> for CheckHostedZone {
    async fn apply(&self, ctx: &Ctx, _scope: &StepScope) -> anyhow::Result<String> {
        let zone_id = &self.domain.hosted_zone_id;
        let zone = found(
            ctx.aws
                .route53
                .get_hosted_zone()
                .id(zone_id)
                .send()
                .await
                .or_aws(|| format!("reading hosted zone {zone_id}")),
        )?;
        let Some(zone) = zone.and_then(|z| z.hosted_zone) else {
            anyhow::bail!(
                "hosted_zone_id = {zone_id}: no such hosted zone in this account\n    help: use the id from `aws route53 list-hosted-zones` for {}",
                self.domain.domain_name
            );
        };
        let zone_name = zone.name.trim_end_matches('.').to_ascii_lowercase();
        let domain = self.domain.domain_name.to_ascii_lowercase();
        if domain != zone_name && !domain.ends_with(&format!(".{zone_name}")) {
            anyhow::bail!(
                "hosted_zone_id = {zone_id} serves {zone_name}, not domain_name = {domain}\n    help: use the hosted zone of {domain}, or set domain_name to {zone_name}"
            );
        }
        if zone.config.as_ref().is_some_and(|c| c.private_zone) {
            anyhow::bail!(
                "hosted_zone_id = {zone_id} is a private zone: certificates cannot be validated through it\n    help: use the public hosted zone of {domain}"
            );
        }
        Ok(format!("{zone_id} serves {zone_name}"))
    }
}

/// A record as this tool writes it: a CNAME with one value, or an alias.
pub enum RecordValue {
    Cname(String),
    Alias { dns_name: String, zone_id: String },
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

async fn change(ctx: &Ctx, zone: &str, action: ChangeAction, set: ResourceRecordSet) -> anyhow::Result<()> {
    let name = set.name().to_string();
    let batch = ChangeBatch::builder()
        .changes(Change::builder().action(action.clone()).resource_record_set(set).build()?)
        .build()?;
    ctx.aws
        .route53
        .change_resource_record_sets()
        .hosted_zone_id(zone)
        .change_batch(batch)
        .send()
        .await
        .or_aws(|| format!("{} record {name} in {zone}", action.as_str().to_lowercase()))?;
    Ok(())
}

/// Writes `name` in the zone (UPSERT: converges whatever is there) and records it.
pub async fn ensure_record(
    ctx: &Ctx,
    scope: &StepScope,
    key: &str,
    zone: &str,
    name: &str,
    value: RecordValue,
    depends_on: Vec<String>,
) -> anyhow::Result<String> {
    let (kind, shown) = match &value {
        RecordValue::Cname(v) => ("CNAME", v.clone()),
        RecordValue::Alias { dns_name, .. } => ("A", format!("alias {dns_name}")),
    };
    let desired = Desired {
        key: key.into(),
        kind: RECORD.into(),
        depends_on,
        attrs: attrs([
            ("zone", zone.to_string()),
            ("name", fqdn_dot(name)),
            ("type", kind.to_string()),
            ("value", shown.clone()),
        ]),
    };
    let set = record_set(name, &value)?;
    let id = format!("{zone}/{}/{kind}", fqdn_dot(name));
    let ensured = scope
        .ensure(ctx, &RecordOps, desired, |_existing, _token| async move {
            change(ctx, zone, ChangeAction::Upsert, set).await?;
            Ok(Created { id, attrs: Default::default() })
        })
        .await?;
    Ok(format!("{} {kind} {name} -> {shown}", ensured.verb()))
}

pub struct AliasRecordStep {
    pub domain: DomainConfig,
}

#[async_trait]
impl StepAction<Ctx> for AliasRecordStep {
    async fn apply(&self, ctx: &Ctx, scope: &StepScope) -> anyhow::Result<String> {
        let lb = scope.state.get(KEY_LOAD_BALANCER).context("the load balancer is not recorded")?;
        let value = RecordValue::Alias {
            dns_name: format!("dualstack.{}", lb.attr("dns_name").context("load balancer has no DNS name")?),
            zone_id: lb.attr("zone_id").context("load balancer has no zone id")?.to_string(),
        };
        let name = format!("{}.{}", self.domain.sub_domain, self.domain.domain_name);
        ensure_record(
            ctx,
            scope,
            KEY_ALIAS_RECORD,
            &self.domain.hosted_zone_id,
            &name,
            value,
            vec![KEY_LOAD_BALANCER.into()],
        )
        .await
    }
}

/// The live record set with this name and type, if any.
async fn read_set(ctx: &Ctx, record: &Record) -> anyhow::Result<Option<ResourceRecordSet>> {
    let (Some(zone), Some(name), Some(kind)) = (record.attr("zone"), record.attr("name"), record.attr("type")) else {
        anyhow::bail!("the record has no zone, name or type");
    };
    let out = found(
        ctx.aws
            .route53
            .list_resource_record_sets()
            .hosted_zone_id(zone)
            .start_record_name(name)
            .start_record_type(RrType::from(kind))
            .max_items(1)
            .send()
            .await
            .or_aws(|| format!("reading record {name} in {zone}")),
    )?;
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
        "DNS record"
    }

    async fn read(&self, ctx: &Ctx, record: &Record) -> anyhow::Result<Live> {
        Ok(match read_set(ctx, record).await? {
            None => Live::Missing,
            Some(set) => Live::Present { summary: format!("{} {}", set.r#type().as_str(), set.name()), drift: vec![] },
        })
    }

    async fn find(&self, ctx: &Ctx, _key: &str, record: &Record, _token: &str) -> anyhow::Result<Option<String>> {
        Ok(read_set(ctx, record)
            .await?
            .map(|s| format!("{}/{}/{}", record.attr("zone").unwrap_or_default(), s.name(), s.r#type().as_str())))
    }

    /// DELETE needs the record exactly as it is, so it is read first.
    async fn delete(&self, ctx: &Ctx, record: &Record, _scope: &StepScope) -> anyhow::Result<()> {
        let Some(set) = read_set(ctx, record).await? else { return Ok(()) };
        let zone = record.attr("zone").context("no zone")?;
        change(ctx, zone, ChangeAction::Delete, set).await
    }
}
