//! The ACM certificate for `<sub_domain>.<domain_name>`, validated through DNS in the hosted
//! zone; `up` waits until it is issued before a listener uses it.

use std::time::Duration;

use anyhow::Context as _;
use async_trait::async_trait;
use aws_sdk_acm::types::{CertificateStatus, Tag, ValidationMethod};

use super::dns::{RecordValue, ensure_record};
use super::network::attrs;
use super::{Ctx, delete_when_free};
use crate::aws::{AwsResultExt, found};
use crate::config::DomainConfig;
use crate::engine::{
    Created, Desired, Discovered, Live, Poll, ResourceOps, StepAction, StepScope, WaitPolicy, wait_until,
};
use crate::state::ResourceRecord;

pub const CERTIFICATE: &str = "acm:certificate";
pub const KEY_CERTIFICATE: &str = "certificate";
pub const KEY_VALIDATION_RECORD: &str = "certificate-validation-record";

/// DNS validation usually completes in a few minutes once the CNAME resolves; AWS allows 72 h.
const ISSUE_WAIT: WaitPolicy = WaitPolicy::up_to(Duration::from_secs(1800));
/// ACM fills in the validation record a few seconds after the request.
const RECORD_WAIT: WaitPolicy = WaitPolicy::up_to(Duration::from_secs(120));

/// ACM's idempotency token is at most 32 word characters.
fn acm_token(token: &str) -> String {
    token.chars().filter(char::is_ascii_alphanumeric).rev().take(32).collect::<Vec<_>>().into_iter().rev().collect()
}

async fn describe(ctx: &Ctx, arn: &str) -> anyhow::Result<Option<aws_sdk_acm::types::CertificateDetail>> {
    let out = found(
        ctx.aws
            .acm
            .describe_certificate()
            .certificate_arn(arn)
            .send()
            .await
            .or_aws(|| format!("reading certificate {arn}")),
    )?;
    Ok(out.and_then(|o| o.certificate))
}

pub struct CreateCertificate {
    pub domain: DomainConfig,
}

#[async_trait]
impl StepAction<Ctx> for CreateCertificate {
    async fn apply(&self, ctx: &Ctx, scope: &StepScope) -> anyhow::Result<String> {
        let fqdn = format!("{}.{}", self.domain.sub_domain, self.domain.domain_name);
        let desired = Desired {
            key: KEY_CERTIFICATE.into(),
            kind: CERTIFICATE.into(),
            depends_on: vec![],
            attrs: attrs([("domain", fqdn.clone())]),
        };
        let acm = &ctx.aws.acm;
        let name = fqdn.as_str();
        let ensured = scope
            .ensure(ctx, &CertificateOps, desired, |existing, token| async move {
                let arn = match existing {
                    Some(found) => found.id,
                    None => acm
                        .request_certificate()
                        .domain_name(name)
                        .validation_method(ValidationMethod::Dns)
                        .idempotency_token(acm_token(&token))
                        .set_tags(Some(
                            ctx.tags
                                .map(KEY_CERTIFICATE, |k, v| Tag::builder().key(k).value(v).build())
                                .into_iter()
                                .collect::<Result<_, _>>()?,
                        ))
                        .send()
                        .await
                        .or_aws(|| format!("requesting a certificate for {name}"))?
                        .certificate_arn
                        .context("RequestCertificate returned no ARN")?,
                };
                Ok(Created { id: arn, attrs: Default::default() })
            })
            .await?;
        let arn = ensured.id().to_string();

        let (record_name, record_value) =
            wait_until(scope, &format!("ACM to publish the validation record for {fqdn}"), RECORD_WAIT, || async {
                let detail = describe(ctx, &arn).await?.with_context(|| format!("certificate {arn} vanished"))?;
                let record = detail.domain_validation_options().iter().find_map(|o| o.resource_record());
                Ok(match record {
                    Some(r) => Poll::Ready((r.name().to_string(), r.value().to_string())),
                    None => Poll::Pending("no validation record yet".into()),
                })
            })
            .await?;
        ensure_record(
            ctx,
            scope,
            KEY_VALIDATION_RECORD,
            &self.domain.hosted_zone_id,
            &record_name,
            RecordValue::Cname(record_value),
            vec![KEY_CERTIFICATE.into()],
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
        Ok(format!("{} {fqdn}: issued", ensured.verb()))
    }
}

pub struct CertificateOps;

#[async_trait]
impl ResourceOps<Ctx> for CertificateOps {
    fn noun(&self) -> &'static str {
        "certificate"
    }

    async fn read(&self, ctx: &Ctx, record: &ResourceRecord) -> anyhow::Result<Live> {
        let arn = record.id()?;
        Ok(match describe(ctx, arn).await? {
            None => Live::Missing,
            Some(detail) => {
                let status = detail.status().map(|s| s.as_str().to_string()).unwrap_or_default();
                let drift = if status == "ISSUED" || status == "PENDING_VALIDATION" {
                    vec![]
                } else {
                    vec![format!("status {status}")]
                };
                Live::Present { summary: format!("{} {status}", detail.domain_name().unwrap_or_default()), drift }
            }
        })
    }

    /// The certificate for the domain that carries this stack's tag.
    async fn find(
        &self,
        ctx: &Ctx,
        _key: &str,
        record: &ResourceRecord,
        _token: &str,
    ) -> anyhow::Result<Option<String>> {
        let Some(domain) = record.attr("domain") else { return Ok(None) };
        let out = ctx.aws.acm.list_certificates().send().await.or_aws(|| "listing certificates".to_string())?;
        for summary in out.certificate_summary_list() {
            let (Some(arn), Some(name)) = (summary.certificate_arn(), summary.domain_name()) else { continue };
            if name != domain {
                continue;
            }
            let tags = ctx
                .aws
                .acm
                .list_tags_for_certificate()
                .certificate_arn(arn)
                .send()
                .await
                .or_aws(|| format!("reading the tags of {arn}"))?;
            if tags
                .tags()
                .iter()
                .any(|t| t.key() == crate::aws::STACK_TAG && t.value() == Some(ctx.tags.stack.as_str()))
            {
                return Ok(Some(arn.to_string()));
            }
        }
        Ok(None)
    }

    async fn delete(&self, ctx: &Ctx, record: &ResourceRecord, _scope: &StepScope) -> anyhow::Result<()> {
        let arn = record.id()?;
        // In use until the HTTPS listener is gone from ACM's view.
        delete_when_free(&["ResourceInUseException"], || async {
            ctx.aws
                .acm
                .delete_certificate()
                .certificate_arn(arn)
                .send()
                .await
                .or_aws(|| format!("deleting certificate {arn}"))
        })
        .await?;
        Ok(())
    }

    async fn discover(&self, ctx: &Ctx) -> anyhow::Result<Vec<Discovered>> {
        let out = ctx.aws.acm.list_certificates().send().await.or_aws(|| "listing certificates".to_string())?;
        let mut mine = Vec::new();
        for summary in out.certificate_summary_list() {
            let Some(arn) = summary.certificate_arn() else { continue };
            let tags = ctx
                .aws
                .acm
                .list_tags_for_certificate()
                .certificate_arn(arn)
                .send()
                .await
                .or_aws(|| format!("reading the tags of {arn}"))?;
            if tags
                .tags()
                .iter()
                .any(|t| t.key() == crate::aws::STACK_TAG && t.value() == Some(ctx.tags.stack.as_str()))
            {
                mine.push(Discovered { key: KEY_CERTIFICATE.into(), id: arn.to_string(), attrs: Default::default() });
            }
        }
        Ok(mine)
    }
}
