//! Service Quotas: before `up` creates anything, the quotas it will consume (Fargate vCPUs,
//! Elastic IPs, load balancers) are read and compared with what the stack needs, so a new account
//! with a low quota hears why at once instead of waiting out a task that can never be placed.
//! The quota codes are data (data/service-quotas.toml), with their source.

use std::collections::BTreeMap;

use async_trait::async_trait;
use serde::Deserialize;

use crate::aws::{Ctx, call};
use crate::config::{Egress, NetworkConfig, StackConfig};
use crate::engine::{StepAction, StepScope, Summary};
use crate::exit::Diagnostic;
use crate::keys;

const QUOTAS_FILE: &str = include_str!("../../data/service-quotas.toml");

#[derive(Debug, Deserialize)]
struct QuotasFile {
    as_of: String,
    quota: Vec<Quota>,
}

/// One quota the stack consumes.
#[derive(Debug, Clone, Deserialize)]
pub struct Quota {
    /// What it counts, as this tool names it.
    pub what: String,
    pub service: String,
    pub code: String,
    pub name: String,
    pub source: String,
}

/// The quotas shipped with this build, by what they count.
pub fn shipped() -> BTreeMap<String, Quota> {
    let file: QuotasFile = toml::from_str(QUOTAS_FILE).expect("data/service-quotas.toml is checked by a test");
    debug_assert!(!file.as_of.is_empty());
    file.quota.into_iter().map(|q| (q.what.clone(), q)).collect()
}

/// The quota's value for the account: the applied one, else AWS's default.
async fn value(ctx: &Ctx, quota: &Quota) -> anyhow::Result<Option<f64>> {
    let applied = ctx.aws.quotas.get_service_quota().service_code(&quota.service).quota_code(&quota.code).send().await;
    match applied {
        Ok(out) => return Ok(out.quota.and_then(|q| q.value)),
        Err(e) if aws_sdk_servicequotas::error::ProvideErrorMetadata::code(&e) == Some("NoSuchResourceException") => {}
        Err(e) => {
            return Err(crate::aws::AwsResultExt::or_aws(Err::<(), _>(e), || {
                format!("reading the quota {}", quota.name)
            })
            .unwrap_err()
            .into());
        }
    }
    let default = call(
        ctx.aws.quotas.get_aws_default_service_quota().service_code(&quota.service).quota_code(&quota.code).send(),
        || format!("reading AWS's default of the quota {}", quota.name),
    )
    .await?;
    Ok(default.quota.and_then(|q| q.value))
}

/// What the stack needs of each quota that this run would create, given what the state holds.
pub fn needs(
    cfg: &StackConfig,
    recorded: &BTreeMap<String, crate::state::ResourceRecord>,
) -> BTreeMap<&'static str, f64> {
    let missing = |key: &str| recorded.get(key).is_none_or(|r| r.status == crate::state::RecordStatus::Pending);
    let mut needs = BTreeMap::new();
    if missing(keys::SERVICE) {
        needs.insert("fargate-vcpu", f64::from(cfg.task_cpu) / 1024.0);
    }
    if matches!(cfg.network, NetworkConfig::Create { egress: Egress::NatGateway, .. }) && missing(keys::NAT_EIP) {
        needs.insert("elastic-ips", 1.0);
    }
    if missing(keys::LOAD_BALANCER) {
        needs.insert("application-load-balancers", 1.0);
    }
    if cfg.ssh_port.is_some() && missing(keys::SSH_LOAD_BALANCER) {
        needs.insert("network-load-balancers", 1.0);
    }
    needs
}

/// How much of a quota the account already uses, where a read can tell (Elastic IPs, load
/// balancers); `None` where it cannot cheaply (Fargate vCPUs in use by other workloads).
async fn in_use(ctx: &Ctx, what: &str) -> anyhow::Result<Option<f64>> {
    Ok(match what {
        "elastic-ips" => {
            let out = call(ctx.aws.ec2.describe_addresses().send(), || "listing Elastic IPs".to_string()).await?;
            Some(out.addresses().len() as f64)
        }
        "application-load-balancers" | "network-load-balancers" => {
            let wanted = if what.starts_with("application") { "application" } else { "network" };
            let mut count = 0;
            let mut pages = ctx.aws.elb.describe_load_balancers().into_paginator().send();
            while let Some(page) = pages.next().await {
                let page = crate::aws::AwsResultExt::or_aws(page, || "listing load balancers".to_string())?;
                count +=
                    page.load_balancers().iter().filter(|lb| lb.r#type().map(|t| t.as_str()) == Some(wanted)).count();
            }
            Some(count as f64)
        }
        _ => None,
    })
}

/// The pre-flight check: every quota this run consumes has room for it.
pub struct CheckQuotas {
    pub config: std::sync::Arc<StackConfig>,
}

#[async_trait]
impl StepAction<Ctx> for CheckQuotas {
    async fn apply(&self, ctx: &Ctx, scope: &StepScope) -> anyhow::Result<Summary> {
        let recorded = scope.state.snapshot().resources;
        let needs = needs(&self.config, &recorded);
        if needs.is_empty() {
            return Ok(Summary::new("nothing new to count against the account's quotas", false));
        }
        check_quotas(ctx, &needs).await
    }
}

/// Compares each need with its quota (and, where known, what the account already uses).
pub async fn check_quotas(ctx: &Ctx, needs: &BTreeMap<&'static str, f64>) -> anyhow::Result<Summary> {
    let quotas = shipped();
    let mut checked = Vec::new();
    let mut short = Vec::new();
    for (what, need) in needs {
        let Some(quota) = quotas.get(*what) else { continue };
        let Some(limit) = value(ctx, quota).await? else { continue };
        let used = in_use(ctx, what).await?;
        let free = limit - used.unwrap_or(0.0);
        if free + 1e-9 < *need {
            short.push((quota.clone(), *need, limit, used));
        } else {
            checked.push(format!("{} {free:.0} free", quota.name));
        }
    }
    if short.is_empty() {
        return Ok(Summary::new(format!("room in the quotas: {}", checked.join(", ")), false));
    }
    let lines: Vec<String> = short
        .iter()
        .map(|(q, need, limit, used)| {
            format!(
                "{} is {limit:.0}{}; the stack needs {need:.0} more (quota {} {}, {})",
                q.name,
                used.map(|u| format!(", of which {u:.0} in use")).unwrap_or_default(),
                q.service,
                q.code,
                q.source
            )
        })
        .collect();
    let first = &short[0].0;
    Err(Diagnostic::new(format!("the account's quotas are too low for this stack:\n  - {}", lines.join("\n  - ")))
        .with_help(format!(
            "request more in the Service Quotas console, or `aws service-quotas request-service-quota-increase --service-code {} --quota-code {} --desired-value N` (new accounts often start low; AWS answers within hours to days)",
            first.service, first.code
        ))
        .into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_quota_data_names_each_need_with_its_source() {
        let quotas = shipped();
        for what in
            ["fargate-vcpu", "fargate-spot-vcpu", "elastic-ips", "application-load-balancers", "network-load-balancers"]
        {
            let q = quotas.get(what).unwrap_or_else(|| panic!("{what} missing"));
            assert!(q.code.starts_with("L-") && q.source.starts_with("https://"), "{q:?}");
        }
    }
}
