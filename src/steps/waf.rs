//! AWS WAF (`hardening = "strict"`): a web ACL on GitLab's load balancer with AWS's managed
//! common rule set, its requests logged to `aws-waf-logs-<stack>`. One rule is counted, not
//! enforced: `SizeRestrictions_BODY` blocks every body over 8 KB (WAF inspects at most 8 KB on
//! a load balancer), which is every `git push` over HTTPS, every upload, every CI artifact.

use async_trait::async_trait;
use aws_sdk_wafv2::types::{
    CountAction, DefaultAction, LoggingConfiguration, ManagedRuleGroupStatement, OverrideAction, Rule, RuleAction,
    RuleActionOverride, Scope, Statement, VisibilityConfig,
};

use crate::aws::{AwsError, Ctx, call, if_there, propagated};
use crate::engine::{
    Applied, Desired, Env, Found, Live, Lost, Owner, ResourceOps, StepAction, StepScope, Summary, attrs,
};
use crate::keys::{self, Kind};
use crate::state::ResourceRecord;

const RULE_SET: &str = "AWSManagedRulesCommonRuleSet";
/// The common rule set's rules that only count: GitLab's pushes and uploads are larger.
pub const COUNTED_RULES: &[&str] = &["SizeRestrictions_BODY"];

pub fn web_acl_name(ctx: &Ctx) -> String {
    ctx.tags.short_name("gitlab", 128)
}

pub fn waf_log_group(stack: &str) -> String {
    // WAF logs only to log groups whose name starts so.
    format!("aws-waf-logs-{stack}")
}

fn metrics(name: &str) -> Result<VisibilityConfig, aws_sdk_wafv2::error::BuildError> {
    VisibilityConfig::builder()
        .sampled_requests_enabled(true)
        .cloud_watch_metrics_enabled(true)
        .metric_name(name)
        .build()
}

fn common_rule_set() -> anyhow::Result<Rule> {
    let overrides = COUNTED_RULES
        .iter()
        .map(|name| {
            RuleActionOverride::builder()
                .name(*name)
                .action_to_use(RuleAction::builder().count(CountAction::builder().build()).build())
                .build()
        })
        .collect::<Result<Vec<_>, _>>()?;
    let group = ManagedRuleGroupStatement::builder()
        .vendor_name("AWS")
        .name(RULE_SET)
        .set_rule_action_overrides(Some(overrides))
        .build()?;
    Ok(Rule::builder()
        .name(RULE_SET)
        .priority(0)
        .statement(Statement::builder().managed_rule_group_statement(group).build())
        .override_action(OverrideAction::builder().none(aws_sdk_wafv2::types::NoneAction::builder().build()).build())
        .visibility_config(metrics(RULE_SET)?)
        .build()?)
}

/// The ACL's name and id, which every WAF call takes with the scope: the last two parts of its
/// ARN (`arn:aws:wafv2:<region>:<account>:regional/webacl/<name>/<id>`), the record's id.
fn name_and_id(record: &ResourceRecord) -> anyhow::Result<(&str, &str)> {
    let arn = record.id()?;
    let mut parts = arn.rsplitn(3, '/');
    match (parts.next(), parts.next()) {
        (Some(id), Some(name)) if !id.is_empty() && !name.is_empty() => Ok((name, id)),
        _ => anyhow::bail!("{arn} is not a web ACL's ARN"),
    }
}

async fn web_acl_owner(ctx: &Ctx, arn: &str) -> anyhow::Result<Owner> {
    let out =
        call(ctx.aws.waf.list_tags_for_resource().resource_arn(arn).send(), || format!("reading the tags of {arn}"))
            .await?;
    let tags = out.tag_info_for_resource().map(|t| t.tag_list()).unwrap_or_default();
    Ok(ctx.tags.owner(tags.iter().map(|t| (t.key(), t.value()))))
}

pub struct WebAclStep;

#[async_trait]
impl StepAction<Ctx> for WebAclStep {
    fn desired(&self, ctx: &Ctx, env: &Env) -> anyhow::Result<Vec<Desired>> {
        let wanted = attrs([
            ("name", web_acl_name(ctx)),
            ("rules", format!("{RULE_SET} (counting {})", COUNTED_RULES.join(", "))),
            ("load_balancer", env.id(keys::LOAD_BALANCER)?),
            ("log_group", env.attr(keys::WAF_LOG_GROUP, "arn")?),
        ]);
        Ok(vec![Desired::new(keys::WEB_ACL, Kind::WebAcl, wanted).replaced_on(&["name"])])
    }

    async fn apply(&self, ctx: &Ctx, scope: &StepScope) -> anyhow::Result<Summary> {
        let want = scope.wanted_one(ctx, self)?;
        let name = want.text("name").to_string();
        let (lb, group) = (want.text("load_balancer").to_string(), want.text("log_group").to_string());
        let (name, lb, group) = (name.as_str(), lb.as_str(), group.as_str());
        let ensured = scope
            .ensure(ctx, &WebAclOps, want, |existing, _| async move {
                let waf = &ctx.aws.waf;
                let arn = match existing {
                    Some(existing) => existing.id,
                    None => {
                        let created = call(
                            waf.create_web_acl()
                                .name(name)
                                .scope(Scope::Regional)
                                .default_action(
                                    DefaultAction::builder()
                                        .allow(aws_sdk_wafv2::types::AllowAction::builder().build())
                                        .build(),
                                )
                                .rules(common_rule_set()?)
                                .visibility_config(metrics(name)?)
                                .set_tags(Some(ctx.tags.list(keys::WEB_ACL)))
                                .send(),
                            || format!("creating web ACL {name}"),
                        )
                        .await?;
                        let summary = created.summary.ok_or_else(|| anyhow::anyhow!("CreateWebACL returned no ACL"))?;
                        let arn = summary.arn.unwrap_or_default();
                        scope.created(keys::WEB_ACL, &arn).await?;
                        arn
                    }
                };
                // WAF refuses a load balancer that is still provisioning (and, for a moment
                // after, one it has not heard of yet: WAFUnavailableEntityException).
                super::load_balancer::wait_active(ctx, scope, lb).await?;
                propagated(
                    |e: &AwsError| e.is_code(&["WAFUnavailableEntityException"]),
                    || async {
                        call(waf.associate_web_acl().web_acl_arn(&arn).resource_arn(lb).send(), || {
                            format!("putting web ACL {name} in front of {lb}")
                        })
                        .await
                    },
                )
                .await?;
                let logging =
                    LoggingConfiguration::builder().resource_arn(&arn).log_destination_configs(group).build()?;
                call(waf.put_logging_configuration().logging_configuration(logging).send(), || {
                    format!("logging the requests of web ACL {name}")
                })
                .await?;
                Ok(Applied::id(arn))
            })
            .await?;
        Ok(ensured.summary(&format!(" ({RULE_SET}; {} counted)", COUNTED_RULES.join(", "))))
    }
}

pub struct WebAclOps;

#[async_trait]
impl ResourceOps<Ctx> for WebAclOps {
    fn noun(&self) -> &'static str {
        Kind::WebAcl.noun()
    }

    async fn read(&self, ctx: &Ctx, record: &ResourceRecord) -> anyhow::Result<Live> {
        let (name, id) = name_and_id(record)?;
        let waf = &ctx.aws.waf;
        let out = if_there(waf.get_web_acl().name(name).id(id).scope(Scope::Regional).send(), || {
            format!("reading web ACL {name}")
        })
        .await?;
        if out.and_then(|o| o.web_acl).is_none() {
            return Ok(Live::Missing);
        }
        let mut drift = vec![];
        if let Some(lb) = record.attr("load_balancer") {
            let attached = if_there(waf.get_web_acl_for_resource().resource_arn(lb).send(), || {
                format!("reading the web ACL of {lb}")
            })
            .await?;
            let arn = attached.and_then(|a| a.web_acl).map(|a| a.arn);
            if arn.as_deref() != Some(record.id()?) {
                drift.push("it is no longer in front of the load balancer".to_string());
            }
        }
        Ok(Live::present(format!("{RULE_SET} in front of the load balancer"), drift))
    }

    async fn read_owned(&self, ctx: &Ctx, record: &ResourceRecord) -> anyhow::Result<Live> {
        self.read(ctx, record).await?.checked(web_acl_owner(ctx, record.id()?)).await
    }

    async fn find(&self, ctx: &Ctx, lost: &Lost<'_>) -> anyhow::Result<Option<String>> {
        let Some(name) = lost.record.attr("name") else { return Ok(None) };
        let out = call(ctx.aws.waf.list_web_acls().scope(Scope::Regional).send(), || "listing web ACLs".into()).await?;
        let Some(arn) = out.web_acls().iter().find(|a| a.name() == Some(name)).and_then(|a| a.arn()) else {
            return Ok(None);
        };
        Ok((web_acl_owner(ctx, arn).await? == Owner::Ours).then(|| arn.to_string()))
    }

    /// Off the load balancer, its logging stopped, then deleted (with the lock token WAF's
    /// optimistic locking asks for).
    async fn delete(&self, ctx: &Ctx, record: &ResourceRecord, _scope: &StepScope) -> anyhow::Result<()> {
        let (name, id) = name_and_id(record)?;
        let arn = record.id()?;
        let waf = &ctx.aws.waf;
        if let Some(lb) = record.attr("load_balancer") {
            if_there(waf.disassociate_web_acl().resource_arn(lb).send(), || format!("taking web ACL {name} off {lb}"))
                .await?;
        }
        if_there(waf.delete_logging_configuration().resource_arn(arn).send(), || {
            format!("stopping the logging of web ACL {name}")
        })
        .await?;
        // Disassociation takes a moment to reach WAF: until then the delete is refused.
        propagated(
            |e: &AwsError| e.is_code(&["WAFAssociatedItemException", "WAFOptimisticLockException"]),
            || async {
                let current = if_there(waf.get_web_acl().name(name).id(id).scope(Scope::Regional).send(), || {
                    format!("reading web ACL {name}")
                })
                .await?;
                let Some(token) = current.and_then(|c| c.lock_token) else { return Ok(()) };
                if_there(waf.delete_web_acl().name(name).id(id).scope(Scope::Regional).lock_token(token).send(), || {
                    format!("deleting web ACL {name}")
                })
                .await
                .map(drop)
            },
        )
        .await?;
        Ok(())
    }

    async fn discover(&self, _ctx: &Ctx) -> anyhow::Result<Found> {
        Ok(Found::default())
    }
}
