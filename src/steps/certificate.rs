//! The ACM certificate for `<sub_domain>.<domain_name>`, validated through DNS in the hosted
//! zone; `up` waits until it is issued before a listener uses it.

use std::time::Duration;

use anyhow::Context as _;
use async_trait::async_trait;
use aws_sdk_acm::types::{CertificateDetail, CertificateStatus, ValidationMethod};

use super::dns::{RecordValue, ensure_record};
use crate::aws::{AwsResultExt, Ctx, call, delete_when_released, fresh, if_there};
use crate::config::DomainConfig;
use crate::engine::{
    Applied, Desired, Discovered, Env, Found, Live, Lost, Owner, Poll, ResourceOps, StepAction, StepScope, Summary,
    WaitPolicy, attrs, wait_until,
};
use crate::keys::{self, Kind};
use crate::state::ResourceRecord;

/// DNS validation usually completes in a few minutes once the CNAME resolves; AWS allows 72 h.
const ISSUE_WAIT: WaitPolicy = WaitPolicy::up_to(Duration::from_secs(1800));
/// ACM fills in the validation record some seconds after the request (Terraform allows 5 min).
const RECORD_WAIT: WaitPolicy = WaitPolicy::up_to(Duration::from_secs(300));

/// ACM's idempotency token is at most 32 word characters.
fn acm_token(token: &str) -> String {
    token.chars().filter(char::is_ascii_alphanumeric).rev().take(32).collect::<Vec<_>>().into_iter().rev().collect()
}

async fn describe(ctx: &Ctx, arn: &str) -> anyhow::Result<Option<CertificateDetail>> {
    let out = if_there(ctx.aws.acm.describe_certificate().certificate_arn(arn).send(), || {
        format!("reading certificate {arn}")
    })
    .await?;
    Ok(out.and_then(|o| o.certificate))
}

async fn owner(ctx: &Ctx, arn: &str) -> anyhow::Result<Owner> {
    let tags = call(ctx.aws.acm.list_tags_for_certificate().certificate_arn(arn).send(), || {
        format!("reading the tags of {arn}")
    })
    .await?;
    Ok(ctx.tags.owner_of(tags.tags()))
}

pub struct CertificateStep {
    pub domain: DomainConfig,
}

impl CertificateStep {
    fn fqdn(&self) -> String {
        self.domain.fqdn()
    }
}

#[async_trait]
impl StepAction<Ctx> for CertificateStep {
    fn desired(&self, _ctx: &Ctx, _env: &Env) -> anyhow::Result<Vec<Desired>> {
        Ok(vec![
            Desired::new(keys::CERTIFICATE, Kind::Certificate, attrs([("domain", self.fqdn())]))
                .replaced_on(&["domain"]),
        ])
    }

    async fn apply(&self, ctx: &Ctx, scope: &StepScope) -> anyhow::Result<Summary> {
        let fqdn = self.fqdn();
        let want = scope.wanted_one(ctx, self)?;
        let name = fqdn.as_str();
        let ensured = scope
            .ensure(ctx, &CertificateOps, want, |existing, token| async move {
                let arn = match existing {
                    Some(existing) => existing.id,
                    None => call(
                        ctx.aws
                            .acm
                            .request_certificate()
                            .domain_name(name)
                            .validation_method(ValidationMethod::Dns)
                            .idempotency_token(acm_token(&token))
                            .set_tags(Some(ctx.tags.list(keys::CERTIFICATE)))
                            .send(),
                        || format!("requesting a certificate for {name}"),
                    )
                    .await?
                    .certificate_arn
                    .context("RequestCertificate returned no ARN")?,
                };
                Ok(Applied::id(arn))
            })
            .await?;
        let arn = ensured.id().to_string();

        let (record_name, record_value) =
            wait_until(scope, &format!("ACM to publish the validation record for {fqdn}"), RECORD_WAIT, || async {
                // A certificate requested a moment ago may not be readable yet.
                let detail = fresh(|| async {
                    call(ctx.aws.acm.describe_certificate().certificate_arn(&arn).send(), || {
                        format!("reading certificate {arn}")
                    })
                    .await
                })
                .await?;
                let record = detail
                    .certificate()
                    .and_then(|c| c.domain_validation_options().iter().find_map(|o| o.resource_record()));
                Ok(match record {
                    Some(r) => Poll::Ready((r.name().to_string(), r.value().to_string())),
                    None => Poll::Pending("no validation record yet".into()),
                })
            })
            .await?;
        ensure_record(
            ctx,
            scope,
            keys::CERTIFICATE_VALIDATION_RECORD,
            &self.domain.hosted_zone_id,
            &record_name,
            RecordValue::Cname(record_value),
        )
        .await?;

        wait_until(scope, &format!("certificate for {fqdn} to be issued"), ISSUE_WAIT, || async {
            let detail = describe(ctx, &arn).await?.with_context(|| format!("certificate {arn} vanished"))?;
            Ok(match detail.status() {
                Some(CertificateStatus::Issued) => Poll::Ready(()),
                Some(CertificateStatus::PendingValidation) | None => Poll::Pending("pending validation".into()),
                Some(other) => Poll::Failed(format!(
                    "it is {} ({})",
                    other.as_str(),
                    detail.failure_reason().map(|r| r.as_str()).unwrap_or("no reason given")
                )),
            })
        })
        .await?;
        Ok(Summary::new(format!("{} {fqdn}: issued", ensured.verb()), ensured.changed()))
    }
}

pub struct CertificateOps;

#[async_trait]
impl ResourceOps<Ctx> for CertificateOps {
    fn noun(&self) -> &'static str {
        Kind::Certificate.noun()
    }

    async fn read(&self, ctx: &Ctx, record: &ResourceRecord) -> anyhow::Result<Live> {
        Ok(match describe(ctx, record.id()?).await? {
            None => Live::Missing,
            Some(detail) => {
                let status = detail.status().map(|s| s.as_str().to_string()).unwrap_or_default();
                let drift = if status == "ISSUED" || status == "PENDING_VALIDATION" {
                    vec![]
                } else {
                    vec![format!("status {status}")]
                };
                Live::present(format!("{} {status}", detail.domain_name().unwrap_or_default()), drift)
            }
        })
    }

    async fn read_owned(&self, ctx: &Ctx, record: &ResourceRecord) -> anyhow::Result<Live> {
        self.read(ctx, record).await?.checked(owner(ctx, record.id()?)).await
    }

    /// The certificate for the domain that carries this stack's tag.
    async fn find(&self, ctx: &Ctx, lost: &Lost<'_>) -> anyhow::Result<Option<String>> {
        let Some(domain) = lost.record.attr("domain") else { return Ok(None) };
        let found = self.discover(ctx).await?;
        Ok(found
            .ours
            .into_iter()
            .find(|d| d.attrs.get("domain").and_then(|v| v.as_str()) == Some(domain))
            .map(|d| d.id))
    }

    /// ACM keeps counting a certificate "in use" for minutes after its listener and load
    /// balancer are gone (Terraform retries for 20 minutes).
    async fn delete(&self, ctx: &Ctx, record: &ResourceRecord, scope: &StepScope) -> anyhow::Result<()> {
        let arn = record.id()?;
        delete_when_released(scope, &format!("certificate {arn}"), &["ResourceInUseException"], || async {
            call(ctx.aws.acm.delete_certificate().certificate_arn(arn).send(), || format!("deleting certificate {arn}"))
                .await
        })
        .await
    }

    async fn discover(&self, ctx: &Ctx) -> anyhow::Result<Found> {
        let mut found = Found::default();
        let mut pages = ctx.aws.acm.list_certificates().into_paginator().send();
        while let Some(page) = pages.next().await {
            for summary in page.or_aws(|| "listing certificates".to_string())?.certificate_summary_list() {
                let Some(arn) = summary.certificate_arn() else { continue };
                let domain = summary.domain_name().unwrap_or_default();
                // Certificates are told apart by ARN, not name: another's is never a conflict.
                if owner(ctx, arn).await? == Owner::Ours {
                    found.ours.push(Discovered::new(keys::CERTIFICATE, arn).with("domain", domain));
                }
            }
        }
        Ok(found)
    }
}
