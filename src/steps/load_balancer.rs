//! The Application Load Balancer: the load balancer itself, GitLab's target group and the
//! listeners (HTTP, or HTTPS with a redirect from HTTP).

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context as _;
use async_trait::async_trait;
use aws_sdk_elasticloadbalancingv2::types::{
    Action, ActionTypeEnum, Certificate, LoadBalancerAttribute, LoadBalancerSchemeEnum, LoadBalancerStateEnum,
    LoadBalancerTypeEnum, Matcher, ProtocolEnum, RedirectActionConfig, RedirectActionStatusCodeEnum, Tag,
    TargetGroupAttribute, TargetTypeEnum,
};

use super::network::{KEY_VPC, PUBLIC_SUBNETS, attrs, required_id};
use super::{Ctx, delete_when_free};
use crate::aws::{AwsResultExt, found};
use crate::engine::{
    Created, Desired, Discovered, Live, Poll, ResourceOps, StepAction, StepScope, WaitPolicy, wait_until,
};
use crate::state::ResourceRecord;

pub const LOAD_BALANCER: &str = "elbv2:load-balancer";
pub const TARGET_GROUP: &str = "elbv2:target-group";
pub const LISTENER: &str = "elbv2:listener";

pub const KEY_ALB_SECURITY_GROUP: &str = "alb-security-group";
pub const KEY_LOAD_BALANCER: &str = "load-balancer";
pub const KEY_TARGET_GROUP: &str = "target-group";
pub const KEY_HTTP_LISTENER: &str = "listener-http";
pub const KEY_HTTPS_LISTENER: &str = "listener-https";

/// Large clones and pushes keep a connection busy without a byte for minutes.
pub const IDLE_TIMEOUT_SECONDS: u32 = 600;
/// TLS 1.3 and 1.2, AWS's recommended policy in the TLS 1.3 family.
pub const TLS_POLICY: &str = "ELBSecurityPolicy-TLS13-1-2-2021-06";
/// GitLab answers 200 here once Rails, the database and Redis are up, but only to addresses
/// in `monitoring_whitelist` (else 404): the task definition admits the VPC CIDR.
pub const HEALTH_CHECK_PATH: &str = "/-/readiness";
pub const HEALTH_CHECK_INTERVAL_SECONDS: i32 = 30;
/// 10 failed checks 30 s apart = 5 minutes before a running GitLab counts as unhealthy; a
/// first boot (5-6 minutes) is covered by the service's grace period instead.
pub const UNHEALTHY_THRESHOLD: i32 = 10;

/// Load balancers take two to three minutes to become active.
const ELB_WAIT: WaitPolicy = WaitPolicy::up_to(Duration::from_secs(900));

fn elb_tags(ctx: &Ctx, key: &str) -> Vec<Tag> {
    ctx.tags.map(key, |k, v| Tag::builder().key(k).value(v).build())
}

pub fn load_balancer_name(ctx: &Ctx) -> String {
    ctx.tags.short_name("", 32)
}

pub fn target_group_name(ctx: &Ctx) -> String {
    ctx.tags.short_name("gitlab", 32)
}

// ---------------------------------------------------------------------------------------------
// Load balancer

pub struct CreateLoadBalancer {
    /// The step that made the public subnets routable (an ALB refuses a VPC without one).
    pub internet_gateway: Option<&'static str>,
}

async fn describe_load_balancer(
    ctx: &Ctx,
    arn: &str,
) -> anyhow::Result<Option<aws_sdk_elasticloadbalancingv2::types::LoadBalancer>> {
    let out = found(
        ctx.aws
            .elb
            .describe_load_balancers()
            .load_balancer_arns(arn)
            .send()
            .await
            .or_aws(|| format!("reading load balancer {arn}")),
    )?;
    Ok(out.and_then(|o| o.load_balancers.and_then(|v| v.into_iter().next())))
}

#[async_trait]
impl StepAction<Ctx> for CreateLoadBalancer {
    async fn apply(&self, ctx: &Ctx, scope: &StepScope) -> anyhow::Result<String> {
        let subnets = PUBLIC_SUBNETS.iter().map(|k| required_id(k, scope)).collect::<anyhow::Result<Vec<_>>>()?;
        let group = required_id(KEY_ALB_SECURITY_GROUP, scope)?;
        let name = load_balancer_name(ctx);
        let mut depends_on: Vec<String> = PUBLIC_SUBNETS.iter().map(|s| s.to_string()).collect();
        depends_on.push(KEY_ALB_SECURITY_GROUP.into());
        depends_on.extend(self.internet_gateway.map(str::to_string));
        let desired = Desired {
            key: KEY_LOAD_BALANCER.into(),
            kind: LOAD_BALANCER.into(),
            depends_on,
            attrs: attrs([
                ("name", name.clone()),
                ("subnets", subnets.join(",")),
                ("security_group", group.clone()),
                ("idle_timeout", IDLE_TIMEOUT_SECONDS.to_string()),
            ]),
        };
        let elb = &ctx.aws.elb;
        let (name_ref, subnets, group) = (name.as_str(), &subnets, group.as_str());
        let ensured = scope
            .ensure(ctx, &LoadBalancerOps, desired, |existing, _token| async move {
                let arn = match existing {
                    Some(found) => {
                        elb.set_subnets()
                            .load_balancer_arn(&found.id)
                            .set_subnets(Some(subnets.clone()))
                            .send()
                            .await
                            .or_aws(|| format!("setting the subnets of {name_ref}"))?;
                        elb.set_security_groups()
                            .load_balancer_arn(&found.id)
                            .security_groups(group)
                            .send()
                            .await
                            .or_aws(|| format!("setting the security group of {name_ref}"))?;
                        found.id
                    }
                    None => elb
                        .create_load_balancer()
                        .name(name_ref)
                        .set_subnets(Some(subnets.clone()))
                        .security_groups(group)
                        .scheme(LoadBalancerSchemeEnum::InternetFacing)
                        .r#type(LoadBalancerTypeEnum::Application)
                        .set_tags(Some(elb_tags(ctx, KEY_LOAD_BALANCER)))
                        .send()
                        .await
                        .or_aws(|| format!("creating load balancer {name_ref} ({})", ctx.aws.region))?
                        .load_balancers()
                        .first()
                        .and_then(|lb| lb.load_balancer_arn())
                        .context("CreateLoadBalancer returned no ARN")?
                        .to_string(),
                };
                elb.modify_load_balancer_attributes()
                    .load_balancer_arn(&arn)
                    .attributes(
                        LoadBalancerAttribute::builder()
                            .key("idle_timeout.timeout_seconds")
                            .value(IDLE_TIMEOUT_SECONDS.to_string())
                            .build(),
                    )
                    .attributes(
                        LoadBalancerAttribute::builder()
                            .key("routing.http.drop_invalid_header_fields.enabled")
                            .value("true")
                            .build(),
                    )
                    .send()
                    .await
                    .or_aws(|| format!("setting the attributes of {name_ref}"))?;
                let lb = wait_until(scope, &format!("load balancer {name_ref} to become active"), ELB_WAIT, || async {
                    Ok(match describe_load_balancer(ctx, &arn).await? {
                        Some(lb) => match lb.state().and_then(|s| s.code()) {
                            Some(LoadBalancerStateEnum::Active) => Poll::Ready(lb),
                            Some(LoadBalancerStateEnum::Failed) => {
                                Poll::Failed(lb.state().and_then(|s| s.reason()).unwrap_or("failed").to_string())
                            }
                            state => Poll::Pending(state.map(|s| s.as_str().to_string()).unwrap_or_default()),
                        },
                        None => Poll::Pending("not visible yet".into()),
                    })
                })
                .await?;
                Ok(Created {
                    id: arn,
                    attrs: attrs([
                        ("dns_name", lb.dns_name().unwrap_or_default().to_string()),
                        ("zone_id", lb.canonical_hosted_zone_id().unwrap_or_default().to_string()),
                    ]),
                })
            })
            .await?;
        Ok(format!("{} {name} ({})", ensured.verb(), ensured.record().attr("dns_name").unwrap_or("?")))
    }
}

pub struct LoadBalancerOps;

#[async_trait]
impl ResourceOps<Ctx> for LoadBalancerOps {
    fn noun(&self) -> &'static str {
        "load balancer"
    }

    async fn read(&self, ctx: &Ctx, record: &ResourceRecord) -> anyhow::Result<Live> {
        let arn = record.id()?;
        Ok(match describe_load_balancer(ctx, arn).await? {
            None => Live::Missing,
            Some(lb) => Live::Present {
                summary: format!(
                    "{} {}",
                    lb.state().and_then(|s| s.code()).map(|c| c.as_str()).unwrap_or("?"),
                    lb.dns_name().unwrap_or_default()
                ),
                drift: vec![],
            },
        })
    }

    async fn find(
        &self,
        ctx: &Ctx,
        _key: &str,
        record: &ResourceRecord,
        _token: &str,
    ) -> anyhow::Result<Option<String>> {
        let Some(name) = record.attr("name") else { return Ok(None) };
        let out = found(
            ctx.aws.elb.describe_load_balancers().names(name).send().await.or_aws(|| format!("looking for {name}")),
        )?;
        Ok(out
            .and_then(|o| o.load_balancers.unwrap_or_default().into_iter().next())
            .and_then(|lb| lb.load_balancer_arn))
    }

    async fn delete(&self, ctx: &Ctx, record: &ResourceRecord, scope: &StepScope) -> anyhow::Result<()> {
        let arn = record.id()?;
        found(
            ctx.aws
                .elb
                .delete_load_balancer()
                .load_balancer_arn(arn)
                .send()
                .await
                .or_aws(|| format!("deleting load balancer {arn}")),
        )?;
        // Its network interfaces hold the subnets and security group until it is gone.
        wait_until(scope, "the load balancer to be deleted", ELB_WAIT, || async {
            Ok(match describe_load_balancer(ctx, arn).await? {
                None => Poll::Ready(()),
                Some(_) => Poll::Pending("deleting".into()),
            })
        })
        .await?;
        Ok(())
    }

    async fn discover(&self, ctx: &Ctx) -> anyhow::Result<Vec<Discovered>> {
        let name = load_balancer_name(ctx);
        let out = found(
            ctx.aws.elb.describe_load_balancers().names(&name).send().await.or_aws(|| format!("looking for {name}")),
        )?;
        Ok(out
            .and_then(|o| o.load_balancers.unwrap_or_default().into_iter().next())
            .and_then(|lb| lb.load_balancer_arn)
            .map(|arn| Discovered { key: KEY_LOAD_BALANCER.into(), id: arn, attrs: attrs([("name", name)]) })
            .into_iter()
            .collect())
    }
}

// ---------------------------------------------------------------------------------------------
// Target group

pub struct CreateTargetGroup;

async fn describe_target_group(
    ctx: &Ctx,
    arn: &str,
) -> anyhow::Result<Option<aws_sdk_elasticloadbalancingv2::types::TargetGroup>> {
    let out = found(
        ctx.aws
            .elb
            .describe_target_groups()
            .target_group_arns(arn)
            .send()
            .await
            .or_aws(|| format!("reading target group {arn}")),
    )?;
    Ok(out.and_then(|o| o.target_groups.and_then(|v| v.into_iter().next())))
}

#[async_trait]
impl StepAction<Ctx> for CreateTargetGroup {
    async fn apply(&self, ctx: &Ctx, scope: &StepScope) -> anyhow::Result<String> {
        let vpc_id = required_id(KEY_VPC, scope)?;
        let name = target_group_name(ctx);
        let desired = Desired {
            key: KEY_TARGET_GROUP.into(),
            kind: TARGET_GROUP.into(),
            depends_on: vec![KEY_VPC.into()],
            attrs: attrs([
                ("name", name.clone()),
                (
                    "health_check",
                    format!(
                        "{HEALTH_CHECK_PATH} every {HEALTH_CHECK_INTERVAL_SECONDS}s, {UNHEALTHY_THRESHOLD} failures"
                    ),
                ),
            ]),
        };
        let elb = &ctx.aws.elb;
        let (name_ref, vpc) = (name.as_str(), vpc_id.as_str());
        let ensured = scope
            .ensure(ctx, &TargetGroupOps, desired, |existing, _token| async move {
                let arn = match existing {
                    Some(found) => {
                        elb.modify_target_group()
                            .target_group_arn(&found.id)
                            .health_check_path(HEALTH_CHECK_PATH)
                            .health_check_interval_seconds(HEALTH_CHECK_INTERVAL_SECONDS)
                            .health_check_timeout_seconds(10)
                            .healthy_threshold_count(2)
                            .unhealthy_threshold_count(UNHEALTHY_THRESHOLD)
                            .matcher(Matcher::builder().http_code("200").build())
                            .send()
                            .await
                            .or_aws(|| format!("updating the health check of {name_ref}"))?;
                        found.id
                    }
                    None => elb
                        .create_target_group()
                        .name(name_ref)
                        .protocol(ProtocolEnum::Http)
                        .port(80)
                        .vpc_id(vpc)
                        // Fargate tasks in awsvpc mode register by IP.
                        .target_type(TargetTypeEnum::Ip)
                        .health_check_protocol(ProtocolEnum::Http)
                        .health_check_path(HEALTH_CHECK_PATH)
                        .health_check_interval_seconds(HEALTH_CHECK_INTERVAL_SECONDS)
                        .health_check_timeout_seconds(10)
                        .healthy_threshold_count(2)
                        .unhealthy_threshold_count(UNHEALTHY_THRESHOLD)
                        .matcher(Matcher::builder().http_code("200").build())
                        .set_tags(Some(elb_tags(ctx, KEY_TARGET_GROUP)))
                        .send()
                        .await
                        .or_aws(|| format!("creating target group {name_ref}"))?
                        .target_groups()
                        .first()
                        .and_then(|tg| tg.target_group_arn())
                        .context("CreateTargetGroup returned no ARN")?
                        .to_string(),
                };
                // Only one task ever serves: no need to wait 5 minutes for it to drain.
                elb.modify_target_group_attributes()
                    .target_group_arn(&arn)
                    .attributes(
                        TargetGroupAttribute::builder().key("deregistration_delay.timeout_seconds").value("30").build(),
                    )
                    .send()
                    .await
                    .or_aws(|| format!("setting the attributes of {name_ref}"))?;
                Ok(Created { id: arn, attrs: BTreeMap::new() })
            })
            .await?;
        Ok(format!("{} {name} (health check {HEALTH_CHECK_PATH})", ensured.verb()))
    }
}

pub struct TargetGroupOps;

#[async_trait]
impl ResourceOps<Ctx> for TargetGroupOps {
    fn noun(&self) -> &'static str {
        "target group"
    }

    async fn read(&self, ctx: &Ctx, record: &ResourceRecord) -> anyhow::Result<Live> {
        let arn = record.id()?;
        Ok(match describe_target_group(ctx, arn).await? {
            None => Live::Missing,
            Some(tg) => {
                let mut drift = Vec::new();
                if tg.health_check_path() != Some(HEALTH_CHECK_PATH) {
                    drift.push(format!("health check path is {:?}", tg.health_check_path()));
                }
                Live::Present { summary: tg.target_group_name().unwrap_or_default().to_string(), drift }
            }
        })
    }

    async fn find(
        &self,
        ctx: &Ctx,
        _key: &str,
        record: &ResourceRecord,
        _token: &str,
    ) -> anyhow::Result<Option<String>> {
        let Some(name) = record.attr("name") else { return Ok(None) };
        let out = found(
            ctx.aws.elb.describe_target_groups().names(name).send().await.or_aws(|| format!("looking for {name}")),
        )?;
        Ok(out.and_then(|o| o.target_groups.unwrap_or_default().into_iter().next()).and_then(|tg| tg.target_group_arn))
    }

    async fn delete(&self, ctx: &Ctx, record: &ResourceRecord, _scope: &StepScope) -> anyhow::Result<()> {
        let arn = record.id()?;
        // "ResourceInUse" while a listener or a draining service still points at it.
        delete_when_free(&["ResourceInUse"], || async {
            ctx.aws
                .elb
                .delete_target_group()
                .target_group_arn(arn)
                .send()
                .await
                .or_aws(|| format!("deleting target group {arn}"))
        })
        .await?;
        Ok(())
    }

    async fn discover(&self, ctx: &Ctx) -> anyhow::Result<Vec<Discovered>> {
        let name = target_group_name(ctx);
        let out = found(
            ctx.aws.elb.describe_target_groups().names(&name).send().await.or_aws(|| format!("looking for {name}")),
        )?;
        Ok(out
            .and_then(|o| o.target_groups.unwrap_or_default().into_iter().next())
            .and_then(|tg| tg.target_group_arn)
            .map(|arn| Discovered { key: KEY_TARGET_GROUP.into(), id: arn, attrs: attrs([("name", name)]) })
            .into_iter()
            .collect())
    }
}

// ---------------------------------------------------------------------------------------------
// Listeners

pub enum ListenerAction {
    /// Forward to GitLab's target group.
    Forward,
    /// Permanent redirect to HTTPS.
    RedirectToHttps,
}

pub struct ListenerStep {
    pub key: &'static str,
    pub port: i32,
    /// The certificate's state key for HTTPS; `None` for plain HTTP.
    pub certificate: Option<&'static str>,
    pub action: ListenerAction,
}

#[async_trait]
impl StepAction<Ctx> for ListenerStep {
    async fn apply(&self, ctx: &Ctx, scope: &StepScope) -> anyhow::Result<String> {
        let lb_arn = required_id(KEY_LOAD_BALANCER, scope)?;
        let mut depends_on = vec![KEY_LOAD_BALANCER.to_string()];
        let (action, target) = match self.action {
            ListenerAction::Forward => {
                let tg = required_id(KEY_TARGET_GROUP, scope)?;
                depends_on.push(KEY_TARGET_GROUP.into());
                (Action::builder().r#type(ActionTypeEnum::Forward).target_group_arn(&tg).build(), tg)
            }
            ListenerAction::RedirectToHttps => {
                let redirect = RedirectActionConfig::builder()
                    .protocol("HTTPS")
                    .port("443")
                    .status_code(RedirectActionStatusCodeEnum::Http301)
                    .build();
                (
                    Action::builder().r#type(ActionTypeEnum::Redirect).redirect_config(redirect).build(),
                    "https:443".to_string(),
                )
            }
        };
        let certificate = match self.certificate {
            Some(key) => {
                depends_on.push(key.into());
                Some(required_id(key, scope)?)
            }
            None => None,
        };
        let protocol = if certificate.is_some() { ProtocolEnum::Https } else { ProtocolEnum::Http };
        let desired = Desired {
            key: self.key.into(),
            kind: LISTENER.into(),
            depends_on,
            attrs: attrs([
                ("load_balancer_arn", lb_arn.clone()),
                ("port", self.port.to_string()),
                ("target", target.clone()),
                ("certificate", certificate.clone().unwrap_or_default()),
                ("ssl_policy", if certificate.is_some() { TLS_POLICY.to_string() } else { String::new() }),
            ]),
        };
        let elb = &ctx.aws.elb;
        let (port, lb, action_ref, certificate_ref, protocol_ref) =
            (self.port, lb_arn.as_str(), &action, &certificate, &protocol);
        let ensured = scope
            .ensure(ctx, &ListenerOps, desired, |existing, _token| async move {
                let certificates =
                    certificate_ref.as_ref().map(|arn| vec![Certificate::builder().certificate_arn(arn).build()]);
                let ssl_policy = certificate_ref.as_ref().map(|_| TLS_POLICY.to_string());
                let arn = match existing {
                    Some(found) => {
                        elb.modify_listener()
                            .listener_arn(&found.id)
                            .port(port)
                            .protocol(protocol_ref.clone())
                            .set_ssl_policy(ssl_policy)
                            .set_certificates(certificates)
                            .default_actions(action_ref.clone())
                            .send()
                            .await
                            .or_aws(|| format!("updating the listener on port {port}"))?;
                        found.id
                    }
                    None => elb
                        .create_listener()
                        .load_balancer_arn(lb)
                        .port(port)
                        .protocol(protocol_ref.clone())
                        .set_ssl_policy(ssl_policy)
                        .set_certificates(certificates)
                        .default_actions(action_ref.clone())
                        .set_tags(Some(elb_tags(ctx, self.key)))
                        .send()
                        .await
                        .or_aws(|| format!("creating the listener on port {port}"))?
                        .listeners()
                        .first()
                        .and_then(|l| l.listener_arn())
                        .context("CreateListener returned no ARN")?
                        .to_string(),
                };
                Ok(Created { id: arn, attrs: BTreeMap::new() })
            })
            .await?;
        Ok(format!("{} {} :{} -> {target}", ensured.verb(), protocol.as_str(), self.port))
    }
}

pub struct ListenerOps;

#[async_trait]
impl ResourceOps<Ctx> for ListenerOps {
    fn noun(&self) -> &'static str {
        "listener"
    }

    async fn read(&self, ctx: &Ctx, record: &ResourceRecord) -> anyhow::Result<Live> {
        let arn = record.id()?;
        let out = found(
            ctx.aws
                .elb
                .describe_listeners()
                .listener_arns(arn)
                .send()
                .await
                .or_aws(|| format!("reading listener {arn}")),
        )?;
        let Some(listener) = out.and_then(|o| o.listeners.and_then(|v| v.into_iter().next())) else {
            return Ok(Live::Missing);
        };
        Ok(Live::Present {
            summary: format!(
                "{} :{}",
                listener.protocol().map(|p| p.as_str()).unwrap_or("?"),
                listener.port().unwrap_or_default()
            ),
            drift: vec![],
        })
    }

    async fn find(
        &self,
        ctx: &Ctx,
        _key: &str,
        record: &ResourceRecord,
        _token: &str,
    ) -> anyhow::Result<Option<String>> {
        let (Some(lb_arn), Some(port)) = (record.attr("load_balancer_arn"), record.attr("port")) else {
            return Ok(None);
        };
        let out = found(
            ctx.aws
                .elb
                .describe_listeners()
                .load_balancer_arn(lb_arn)
                .send()
                .await
                .or_aws(|| format!("listing listeners of {lb_arn}")),
        )?;
        Ok(out
            .and_then(|o| {
                o.listeners
                    .unwrap_or_default()
                    .into_iter()
                    .find(|l| l.port().map(|p| p.to_string()).as_deref() == Some(port))
            })
            .and_then(|l| l.listener_arn))
    }

    async fn delete(&self, ctx: &Ctx, record: &ResourceRecord, _scope: &StepScope) -> anyhow::Result<()> {
        let arn = record.id()?;
        found(
            ctx.aws.elb.delete_listener().listener_arn(arn).send().await.or_aws(|| format!("deleting listener {arn}")),
        )?;
        Ok(())
    }
}
