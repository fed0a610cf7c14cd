//! Elastic Load Balancing: the application load balancer for HTTP(S), the network load balancer
//! for Git over SSH, their target groups and their listeners. Both kinds share one
//! implementation; what differs is data.

use std::time::Duration;

use anyhow::Context as _;
use async_trait::async_trait;
use aws_sdk_elasticloadbalancingv2::types::{
    Action, ActionTypeEnum, Certificate, Listener, ListenerAttribute, LoadBalancer, LoadBalancerAttribute,
    LoadBalancerSchemeEnum, LoadBalancerStateEnum, LoadBalancerTypeEnum, Matcher, ProtocolEnum, RedirectActionConfig,
    RedirectActionStatusCodeEnum, TargetGroup, TargetGroupAttribute, TargetTypeEnum,
};

use crate::aws::{AwsError, Ctx, call, if_there, propagated};
use crate::engine::{
    Applied, Conflict, Desired, Discovered, Env, Found, Live, Lost, Owner, Poll, ResourceOps, StepAction, StepScope,
    Summary, WaitPolicy, attrs, wait_until,
};
use crate::keys::{self, Kind};
use crate::state::ResourceRecord;

/// Large clones and pushes keep a connection busy without a byte for minutes.
pub const IDLE_TIMEOUT_SECONDS: u32 = 600;
/// TLS 1.3 and 1.2, AWS's recommended policy in the TLS 1.3 family.
pub const TLS_POLICY: &str = "ELBSecurityPolicy-TLS13-1-2-2021-06";
/// GitLab answers 200 here once Rails serves, but only to addresses in `monitoring_whitelist`
/// (else 404): the task definition admits the VPC CIDR.
pub const HEALTH_CHECK_PATH: &str = "/-/readiness";
/// Every 10 s, healthy after 2: a woken or first-booted GitLab takes traffic within about 20 s of
/// being ready (at 30 s, the default, it was a minute).
pub const HEALTH_CHECK_INTERVAL_SECONDS: i32 = 10;
/// Less than the interval, as ELB requires; `/-/readiness` answers in milliseconds.
const HEALTH_CHECK_TIMEOUT_SECONDS: i32 = 5;
pub const HEALTHY_THRESHOLD: i32 = 2;
/// 10 failed checks 10 s apart (ELB's maximum count) = 100 s before a running GitLab counts as
/// unhealthy and is replaced; a first boot or a wake is covered by the service's grace period.
pub const UNHEALTHY_THRESHOLD: i32 = 10;

/// Load balancers take two to three minutes to become active.
const ELB_WAIT: WaitPolicy = WaitPolicy::up_to(Duration::from_secs(900));

/// Which kind of load balancer, and what that implies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavour {
    /// HTTP(S) to GitLab's web server.
    Application,
    /// Plain TCP to GitLab's SSH daemon.
    Network,
}

impl Flavour {
    fn lb_type(self) -> LoadBalancerTypeEnum {
        match self {
            Flavour::Application => LoadBalancerTypeEnum::Application,
            Flavour::Network => LoadBalancerTypeEnum::Network,
        }
    }

    /// What each flavour sets beyond the defaults: the ALB's idle timeout and header hygiene;
    /// the NLB's cross-zone balancing (one task in one of two zones must be reachable from both).
    fn attributes(self) -> Vec<(&'static str, String)> {
        let mut attributes = self.own_attributes();
        // `down` lifts it first; a delete from the console or another tool is refused.
        attributes.push((DELETION_PROTECTION, "true".into()));
        attributes
    }

    fn own_attributes(self) -> Vec<(&'static str, String)> {
        match self {
            Flavour::Application => vec![
                ("idle_timeout.timeout_seconds", IDLE_TIMEOUT_SECONDS.to_string()),
                ("routing.http.drop_invalid_header_fields.enabled", "true".into()),
            ],
            Flavour::Network => vec![("load_balancing.cross_zone.enabled", "true".into())],
        }
    }
}

/// Access logs on, to the bucket under the load balancer's prefix; or off.
fn access_log_attributes(bucket: Option<&str>) -> Vec<(&'static str, String)> {
    match bucket {
        Some(bucket) => vec![
            ("access_logs.s3.enabled", "true".into()),
            ("access_logs.s3.bucket", bucket.to_string()),
            ("access_logs.s3.prefix", crate::steps::s3::LOAD_BALANCER_LOG_PREFIX.into()),
        ],
        None => vec![("access_logs.s3.enabled", "false".into())],
    }
}

/// The attribute that makes AWS refuse DeleteLoadBalancer.
const DELETION_PROTECTION: &str = "deletion_protection.enabled";

/// The load balancers' names: the ALB is the stack's name, the NLB `<stack>-ssh`.
pub fn load_balancer_name(ctx: &Ctx, flavour: Flavour) -> String {
    match flavour {
        Flavour::Application => ctx.tags.short_name("", 32),
        Flavour::Network => ctx.tags.short_name("ssh", 32),
    }
}

pub fn target_group_name(ctx: &Ctx, flavour: Flavour) -> String {
    match flavour {
        Flavour::Application => ctx.tags.short_name("gitlab", 32),
        Flavour::Network => ctx.tags.short_name("gitlab-ssh", 32),
    }
}

async fn owner_of_arn(ctx: &Ctx, arn: &str) -> anyhow::Result<Owner> {
    let out =
        call(ctx.aws.elb.describe_tags().resource_arns(arn).send(), || format!("reading the tags of {arn}")).await?;
    let tags = out.tag_descriptions().first().map(|d| d.tags()).unwrap_or_default();
    Ok(ctx.tags.owner_of(tags))
}

/// What discovery makes of a name the stack would use: its own, someone else's, or free.
async fn classify(ctx: &Ctx, kind: Kind, key: &str, name: &str, arn: Option<String>) -> anyhow::Result<Found> {
    let Some(arn) = arn else { return Ok(Found::default()) };
    Ok(match owner_of_arn(ctx, &arn).await? {
        Owner::Foreign(why) => {
            Found { ours: vec![], conflicts: vec![Conflict { kind: kind.to_string(), id: name.to_string(), why }] }
        }
        _ => vec![Discovered::new(key, arn).with("name", name)].into(),
    })
}

// ---------------------------------------------------------------------------------------------
// Load balancers

pub struct LoadBalancerStep {
    pub key: &'static str,
    pub flavour: Flavour,
    pub security_group: &'static str,
    /// Access logs to the stack's log bucket (`hardening = "strict"`).
    pub access_logs: bool,
}

/// Whether AWS refuses to delete the load balancer (None: it is gone).
async fn deletion_protection(ctx: &Ctx, arn: &str) -> anyhow::Result<Option<bool>> {
    let out = if_there(ctx.aws.elb.describe_load_balancer_attributes().load_balancer_arn(arn).send(), || {
        format!("reading the attributes of {arn}")
    })
    .await?;
    Ok(out.map(|o| o.attributes().iter().any(|a| a.key() == Some(DELETION_PROTECTION) && a.value() == Some("true"))))
}

async fn describe_load_balancer(ctx: &Ctx, arn: &str) -> anyhow::Result<Option<LoadBalancer>> {
    let out = if_there(ctx.aws.elb.describe_load_balancers().load_balancer_arns(arn).send(), || {
        format!("reading load balancer {arn}")
    })
    .await?;
    Ok(out.and_then(|o| o.load_balancers.and_then(|v| v.into_iter().next())))
}

/// Until the load balancer is `active` (two to three minutes after its creation): for what AWS
/// refuses before (a WAF association), and for `up` to say the URL answers.
pub async fn wait_active(ctx: &Ctx, scope: &StepScope, arn: &str) -> anyhow::Result<LoadBalancer> {
    wait_until(scope, &format!("load balancer {} to become active", short_arn(arn)), ELB_WAIT, || async {
        Ok(match describe_load_balancer(ctx, arn).await? {
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
    .await
    .map_err(Into::into)
}

/// `app/<name>/<id>` of a load balancer's ARN, for messages.
fn short_arn(arn: &str) -> &str {
    arn.split_once(":loadbalancer/").map_or(arn, |(_, rest)| rest)
}

async fn load_balancer_named(ctx: &Ctx, name: &str) -> anyhow::Result<Option<LoadBalancer>> {
    let out = if_there(ctx.aws.elb.describe_load_balancers().names(name).send(), || {
        format!("looking for load balancer {name}")
    })
    .await?;
    Ok(out.and_then(|o| o.load_balancers.and_then(|v| v.into_iter().next())))
}

#[async_trait]
impl StepAction<Ctx> for LoadBalancerStep {
    fn desired(&self, ctx: &Ctx, env: &Env) -> anyhow::Result<Vec<Desired>> {
        let subnets = keys::PUBLIC_SUBNETS.iter().map(|k| env.id(k)).collect::<anyhow::Result<Vec<_>>>()?;
        let wanted =
            attrs([("name", load_balancer_name(ctx, self.flavour)), ("security_group", env.id(self.security_group)?)]);
        let desired = Desired::new(self.key, Kind::LoadBalancer, wanted)
            .with("subnets", subnets)
            // Round two's load balancers had no protection (nor access logs: below).
            .with("deletion_protection", "on");
        let desired = match self.flavour {
            Flavour::Application => desired.with("idle_timeout", IDLE_TIMEOUT_SECONDS.to_string()),
            Flavour::Network => desired.with("cross_zone", "true"),
        };
        let access_logs = if self.access_logs { env.id(keys::LOG_BUCKET)? } else { "off".to_string() };
        let desired = desired
            .with("access_logs", access_logs)
            .assuming(&[("deletion_protection", "off"), ("access_logs", "off")]);
        Ok(vec![desired.replaced_on(&["name"])])
    }

    async fn apply(&self, ctx: &Ctx, scope: &StepScope) -> anyhow::Result<Summary> {
        let want = scope.wanted_one(ctx, self)?;
        let name = want.text("name").to_string();
        let subnets: Vec<String> = want.list("subnets");
        let group = want.text("security_group").to_string();
        let logs_bucket = Some(want.text("access_logs").to_string()).filter(|b| b != "off");
        let (name_ref, subnets, group, flavour, key, logs_bucket) =
            (name.as_str(), &subnets, group.as_str(), self.flavour, self.key, logs_bucket.as_deref());
        let ensured = scope
            .ensure(ctx, &LoadBalancerOps, want, |existing, _| async move {
                let elb = &ctx.aws.elb;
                let lb = match existing {
                    Some(existing) => {
                        call(
                            elb.set_subnets().load_balancer_arn(&existing.id).set_subnets(Some(subnets.clone())).send(),
                            || format!("setting the subnets of {name_ref}"),
                        )
                        .await?;
                        call(
                            elb.set_security_groups().load_balancer_arn(&existing.id).security_groups(group).send(),
                            || format!("setting the security group of {name_ref}"),
                        )
                        .await?;
                        describe_load_balancer(ctx, &existing.id)
                            .await?
                            .with_context(|| format!("load balancer {} is gone", existing.id))?
                    }
                    None => call(
                        elb.create_load_balancer()
                            .name(name_ref)
                            .set_subnets(Some(subnets.clone()))
                            .security_groups(group)
                            .scheme(LoadBalancerSchemeEnum::InternetFacing)
                            .r#type(flavour.lb_type())
                            .set_tags(Some(ctx.tags.list(key)))
                            .send(),
                        || format!("creating load balancer {name_ref} ({})", ctx.region()),
                    )
                    .await?
                    .load_balancers()
                    .first()
                    .cloned()
                    .context("CreateLoadBalancer returned no load balancer")?,
                };
                let arn = lb.load_balancer_arn().context("CreateLoadBalancer returned no ARN")?.to_string();
                scope.created(key, &arn).await?;
                let settings = flavour
                    .attributes()
                    .into_iter()
                    .chain(access_log_attributes(logs_bucket))
                    .map(|(k, v)| LoadBalancerAttribute::builder().key(k).value(v).build());
                call(
                    elb.modify_load_balancer_attributes()
                        .load_balancer_arn(&arn)
                        .set_attributes(Some(settings.collect()))
                        .send(),
                    || format!("setting the attributes of {name_ref}"),
                )
                .await?;
                // Not waited for here: listeners, the service and GitLab's first boot go ahead
                // while it provisions (AWS accepts listeners and targets then; its name and zone
                // are in CreateLoadBalancer's answer). What needs it active waits: `wait_active`.
                Ok(Applied::id(arn)
                    .with("dns_name", lb.dns_name().unwrap_or_default())
                    .with("zone_id", lb.canonical_hosted_zone_id().unwrap_or_default()))
            })
            .await?;
        Ok(Summary::new(format!("{} {name} ({})", ensured.verb(), ensured.attr("dns_name")), ensured.changed()))
    }
}

pub struct LoadBalancerOps;

#[async_trait]
impl ResourceOps<Ctx> for LoadBalancerOps {
    fn noun(&self) -> &'static str {
        Kind::LoadBalancer.noun()
    }

    async fn read(&self, ctx: &Ctx, record: &ResourceRecord) -> anyhow::Result<Live> {
        let arn = record.id()?;
        let Some(lb) = describe_load_balancer(ctx, arn).await? else { return Ok(Live::Missing) };
        let protected = deletion_protection(ctx, arn).await?;
        let mut drift = vec![];
        if record.attr("deletion_protection") == Some("on") && protected == Some(false) {
            drift.push("deletion protection is off".to_string());
        }
        let shown = match protected {
            Some(true) => ", deletion-protected",
            Some(false) => ", not deletion-protected",
            None => "",
        };
        Ok(Live::present(
            format!(
                "{} {}{shown}",
                lb.state().and_then(|s| s.code()).map(|c| c.as_str()).unwrap_or("?"),
                lb.dns_name().unwrap_or_default()
            ),
            drift,
        ))
    }

    async fn read_owned(&self, ctx: &Ctx, record: &ResourceRecord) -> anyhow::Result<Live> {
        self.read(ctx, record).await?.checked(owner_of_arn(ctx, record.id()?)).await
    }

    async fn find(&self, ctx: &Ctx, lost: &Lost<'_>) -> anyhow::Result<Option<String>> {
        let Some(name) = lost.record.attr("name") else { return Ok(None) };
        let Some(arn) = load_balancer_named(ctx, name).await?.and_then(|lb| lb.load_balancer_arn) else {
            return Ok(None);
        };
        Ok((owner_of_arn(ctx, &arn).await? == Owner::Ours).then_some(arn))
    }

    /// Once it no longer shows, its network interfaces still hold the public subnets, its
    /// security group and (their public addresses) the internet gateway for minutes: those
    /// deletes wait for the interfaces themselves.
    async fn delete(&self, ctx: &Ctx, record: &ResourceRecord, scope: &StepScope) -> anyhow::Result<()> {
        let arn = record.id()?;
        // Its protection lifted first: the one thing that makes this delete deliberate.
        let unprotect = LoadBalancerAttribute::builder().key(DELETION_PROTECTION).value("false").build();
        if_there(
            ctx.aws.elb.modify_load_balancer_attributes().load_balancer_arn(arn).attributes(unprotect).send(),
            || format!("lifting the deletion protection of {arn}"),
        )
        .await?;
        if_there(ctx.aws.elb.delete_load_balancer().load_balancer_arn(arn).send(), || {
            format!("deleting load balancer {arn}")
        })
        .await?;
        wait_until(scope, "the load balancer to be deleted", ELB_WAIT, || async {
            Ok(match describe_load_balancer(ctx, arn).await? {
                None => Poll::Ready(()),
                Some(_) => Poll::Pending("deleting".into()),
            })
        })
        .await?;
        Ok(())
    }

    async fn discover(&self, ctx: &Ctx) -> anyhow::Result<Found> {
        let mut found = Found::default();
        for (key, flavour) in [(keys::LOAD_BALANCER, Flavour::Application), (keys::SSH_LOAD_BALANCER, Flavour::Network)]
        {
            let name = load_balancer_name(ctx, flavour);
            let arn = load_balancer_named(ctx, &name).await?.and_then(|lb| lb.load_balancer_arn);
            let more = classify(ctx, Kind::LoadBalancer, key, &name, arn).await?;
            found.ours.extend(more.ours);
            found.conflicts.extend(more.conflicts);
        }
        Ok(found)
    }
}

// ---------------------------------------------------------------------------------------------
// Target groups

pub struct TargetGroupStep {
    pub key: &'static str,
    pub flavour: Flavour,
    /// GitLab's port the targets receive traffic on.
    pub port: i32,
}

impl TargetGroupStep {
    fn health_check(&self) -> String {
        match self.flavour {
            Flavour::Application => {
                format!("{HEALTH_CHECK_PATH} every {HEALTH_CHECK_INTERVAL_SECONDS}s, {UNHEALTHY_THRESHOLD} failures")
            }
            Flavour::Network => format!("TCP every {HEALTH_CHECK_INTERVAL_SECONDS}s, 3 failures"),
        }
    }
}

async fn describe_target_group(ctx: &Ctx, arn: &str) -> anyhow::Result<Option<TargetGroup>> {
    let out = if_there(ctx.aws.elb.describe_target_groups().target_group_arns(arn).send(), || {
        format!("reading target group {arn}")
    })
    .await?;
    Ok(out.and_then(|o| o.target_groups.and_then(|v| v.into_iter().next())))
}

async fn target_group_named(ctx: &Ctx, name: &str) -> anyhow::Result<Option<TargetGroup>> {
    let out = if_there(ctx.aws.elb.describe_target_groups().names(name).send(), || {
        format!("looking for target group {name}")
    })
    .await?;
    Ok(out.and_then(|o| o.target_groups.and_then(|v| v.into_iter().next())))
}

#[async_trait]
impl StepAction<Ctx> for TargetGroupStep {
    fn desired(&self, ctx: &Ctx, _env: &Env) -> anyhow::Result<Vec<Desired>> {
        let wanted = attrs([
            ("name", target_group_name(ctx, self.flavour)),
            ("port", self.port.to_string()),
            ("health_check", self.health_check()),
        ]);
        Ok(vec![Desired::new(self.key, Kind::TargetGroup, wanted).replaced_on(&["name", "port"])])
    }

    async fn apply(&self, ctx: &Ctx, scope: &StepScope) -> anyhow::Result<Summary> {
        let vpc_id = scope.id_of(keys::VPC)?;
        let want = scope.wanted_one(ctx, self)?;
        let name = want.text("name").to_string();
        let (name_ref, vpc, port, flavour, key) = (name.as_str(), vpc_id.as_str(), self.port, self.flavour, self.key);
        let ensured = scope
            .ensure(ctx, &TargetGroupOps, want, |existing, _| async move {
                let elb = &ctx.aws.elb;
                let arn = match existing {
                    Some(existing) => {
                        let request = elb
                            .modify_target_group()
                            .target_group_arn(&existing.id)
                            .health_check_interval_seconds(HEALTH_CHECK_INTERVAL_SECONDS);
                        let request = match flavour {
                            Flavour::Application => request
                                .health_check_path(HEALTH_CHECK_PATH)
                                .health_check_timeout_seconds(HEALTH_CHECK_TIMEOUT_SECONDS)
                                .healthy_threshold_count(HEALTHY_THRESHOLD)
                                .unhealthy_threshold_count(UNHEALTHY_THRESHOLD)
                                .matcher(Matcher::builder().http_code("200").build()),
                            Flavour::Network => request.healthy_threshold_count(3).unhealthy_threshold_count(3),
                        };
                        call(request.send(), || format!("updating the health check of {name_ref}")).await?;
                        existing.id
                    }
                    None => {
                        let request = elb
                            .create_target_group()
                            .name(name_ref)
                            .port(port)
                            .vpc_id(vpc)
                            // Fargate tasks in awsvpc mode register by IP.
                            .target_type(TargetTypeEnum::Ip)
                            .health_check_interval_seconds(HEALTH_CHECK_INTERVAL_SECONDS)
                            .set_tags(Some(ctx.tags.list(key)));
                        let request = match flavour {
                            Flavour::Application => request
                                .protocol(ProtocolEnum::Http)
                                .health_check_protocol(ProtocolEnum::Http)
                                .health_check_path(HEALTH_CHECK_PATH)
                                .health_check_timeout_seconds(HEALTH_CHECK_TIMEOUT_SECONDS)
                                .healthy_threshold_count(HEALTHY_THRESHOLD)
                                .unhealthy_threshold_count(UNHEALTHY_THRESHOLD)
                                .matcher(Matcher::builder().http_code("200").build()),
                            Flavour::Network => request
                                .protocol(ProtocolEnum::Tcp)
                                .health_check_protocol(ProtocolEnum::Tcp)
                                .healthy_threshold_count(3)
                                .unhealthy_threshold_count(3),
                        };
                        call(request.send(), || format!("creating target group {name_ref}"))
                            .await?
                            .target_groups()
                            .first()
                            .and_then(|tg| tg.target_group_arn())
                            .context("CreateTargetGroup returned no ARN")?
                            .to_string()
                    }
                };
                // Only one task ever serves: no need to wait 5 minutes for it to drain.
                let delay =
                    TargetGroupAttribute::builder().key("deregistration_delay.timeout_seconds").value("30").build();
                call(elb.modify_target_group_attributes().target_group_arn(&arn).attributes(delay).send(), || {
                    format!("setting the attributes of {name_ref}")
                })
                .await?;
                Ok(Applied::id(arn))
            })
            .await?;
        Ok(Summary::new(format!("{} {name} ({})", ensured.verb(), self.health_check()), ensured.changed()))
    }
}

pub struct TargetGroupOps;

#[async_trait]
impl ResourceOps<Ctx> for TargetGroupOps {
    fn noun(&self) -> &'static str {
        Kind::TargetGroup.noun()
    }

    async fn read(&self, ctx: &Ctx, record: &ResourceRecord) -> anyhow::Result<Live> {
        Ok(match describe_target_group(ctx, record.id()?).await? {
            None => Live::Missing,
            Some(tg) => {
                let mut drift = Vec::new();
                if tg.protocol() == Some(&ProtocolEnum::Http) && tg.health_check_path() != Some(HEALTH_CHECK_PATH) {
                    drift.push(format!("health check path is {:?}", tg.health_check_path()));
                }
                Live::present(tg.target_group_name().unwrap_or_default(), drift)
            }
        })
    }

    async fn read_owned(&self, ctx: &Ctx, record: &ResourceRecord) -> anyhow::Result<Live> {
        self.read(ctx, record).await?.checked(owner_of_arn(ctx, record.id()?)).await
    }

    async fn find(&self, ctx: &Ctx, lost: &Lost<'_>) -> anyhow::Result<Option<String>> {
        let Some(name) = lost.record.attr("name") else { return Ok(None) };
        let Some(arn) = target_group_named(ctx, name).await?.and_then(|tg| tg.target_group_arn) else {
            return Ok(None);
        };
        Ok((owner_of_arn(ctx, &arn).await? == Owner::Ours).then_some(arn))
    }

    async fn delete(&self, ctx: &Ctx, record: &ResourceRecord, scope: &StepScope) -> anyhow::Result<()> {
        let arn = record.id()?;
        // "ResourceInUse" while a listener or a draining service still points at it.
        crate::aws::delete_when_released(scope, &format!("target group {arn}"), &["ResourceInUse"], || async {
            call(ctx.aws.elb.delete_target_group().target_group_arn(arn).send(), || {
                format!("deleting target group {arn}")
            })
            .await
        })
        .await
    }

    async fn discover(&self, ctx: &Ctx) -> anyhow::Result<Found> {
        let mut found = Found::default();
        let named = [
            (keys::TARGET_GROUP, target_group_name(ctx, Flavour::Application)),
            (keys::SSH_TARGET_GROUP, target_group_name(ctx, Flavour::Network)),
            (keys::WAKE_TARGET_GROUP, wake_target_group_name(ctx)),
        ];
        for (key, name) in named {
            let arn = target_group_named(ctx, &name).await?.and_then(|tg| tg.target_group_arn);
            let more = classify(ctx, Kind::TargetGroup, key, &name, arn).await?;
            found.ours.extend(more.ours);
            found.conflicts.extend(more.conflicts);
        }
        Ok(found)
    }
}

// ---------------------------------------------------------------------------------------------
// The wake function's target group (`idle_sleep`)

pub fn wake_target_group_name(ctx: &Ctx) -> String {
    ctx.tags.short_name("wake", 32)
}

/// A target group whose one target is the function that wakes a sleeping GitLab: the listener
/// forwards to it while GitLab sleeps. The function registers itself once its permission exists.
pub struct WakeTargetGroupStep;

#[async_trait]
impl StepAction<Ctx> for WakeTargetGroupStep {
    fn desired(&self, ctx: &Ctx, _env: &Env) -> anyhow::Result<Vec<Desired>> {
        let wanted = attrs([("name", wake_target_group_name(ctx)), ("target_type", "lambda".into())]);
        Ok(vec![Desired::new(keys::WAKE_TARGET_GROUP, Kind::TargetGroup, wanted).replaced_on(&["name"])])
    }

    async fn apply(&self, ctx: &Ctx, scope: &StepScope) -> anyhow::Result<Summary> {
        let want = scope.wanted_one(ctx, self)?;
        let name = want.text("name").to_string();
        let name_ref = name.as_str();
        let ensured = scope
            .ensure(ctx, &TargetGroupOps, want, |existing, _| async move {
                if let Some(existing) = existing {
                    return Ok(Applied::id(existing.id));
                }
                // A function target: no protocol, port or VPC; health checks off by default.
                let out = call(
                    ctx.aws
                        .elb
                        .create_target_group()
                        .name(name_ref)
                        .target_type(TargetTypeEnum::Lambda)
                        .set_tags(Some(ctx.tags.list(keys::WAKE_TARGET_GROUP)))
                        .send(),
                    || format!("creating target group {name_ref}"),
                )
                .await?;
                let arn = out
                    .target_groups()
                    .first()
                    .and_then(|tg| tg.target_group_arn())
                    .context("CreateTargetGroup returned no ARN")?;
                Ok(Applied::id(arn))
            })
            .await?;
        Ok(ensured.summary(" (the wake function's)"))
    }
}

// ---------------------------------------------------------------------------------------------
// Listeners

#[derive(Debug, Clone, Copy)]
pub enum ListenerAction {
    /// Forward to a target group (by state key).
    Forward(&'static str),
    /// Permanent redirect to HTTPS.
    RedirectToHttps,
}

/// Git over SSH: a long push or clone may sit idle (the server computing a pack) longer than the
/// NLB's default 350 s; 600 s like the ALB's idle timeout (the listener attribute
/// `tcp.idle_timeout.seconds`, 60-6000, ModifyListenerAttributes).
pub const TCP_IDLE_TIMEOUT_SECONDS: u32 = 600;

pub struct ListenerStep {
    pub key: &'static str,
    pub load_balancer: &'static str,
    pub port: i32,
    pub protocol: ProtocolEnum,
    /// The certificate's state key for HTTPS.
    pub certificate: Option<&'static str>,
    pub action: ListenerAction,
}

#[async_trait]
impl StepAction<Ctx> for ListenerStep {
    fn desired(&self, _ctx: &Ctx, env: &Env) -> anyhow::Result<Vec<Desired>> {
        let target = match self.action {
            ListenerAction::Forward(tg) => env.id(tg)?,
            ListenerAction::RedirectToHttps => "https:443".to_string(),
        };
        let certificate = self.certificate.map(|k| env.id(k)).transpose()?;
        let wanted = attrs([
            ("load_balancer_arn", env.id(self.load_balancer)?),
            ("port", self.port.to_string()),
            ("protocol", self.protocol.as_str().to_string()),
            ("target", target),
            ("ssl_policy", if certificate.is_some() { TLS_POLICY.to_string() } else { String::new() }),
            ("certificate", certificate.unwrap_or_default()),
        ]);
        let desired = Desired::new(self.key, Kind::Listener, wanted).replaced_on(&["load_balancer_arn"]);
        Ok(vec![if self.protocol == ProtocolEnum::Tcp {
            desired.with("idle_timeout", TCP_IDLE_TIMEOUT_SECONDS.to_string())
        } else {
            desired
        }])
    }

    async fn apply(&self, ctx: &Ctx, scope: &StepScope) -> anyhow::Result<Summary> {
        let want = scope.wanted_one(ctx, self)?;
        let action = match self.action {
            ListenerAction::Forward(_) => {
                Action::builder().r#type(ActionTypeEnum::Forward).target_group_arn(want.text("target")).build()
            }
            ListenerAction::RedirectToHttps => {
                let redirect = RedirectActionConfig::builder()
                    .protocol("HTTPS")
                    .port("443")
                    .status_code(RedirectActionStatusCodeEnum::Http301)
                    .build();
                Action::builder().r#type(ActionTypeEnum::Redirect).redirect_config(redirect).build()
            }
        };
        let certificate = Some(want.text("certificate").to_string()).filter(|c| !c.is_empty());
        let (lb, target) = (want.text("load_balancer_arn").to_string(), want.text("target").to_string());
        let (port, key, protocol, action, certificate, lb) =
            (self.port, self.key, &self.protocol, &action, &certificate, lb.as_str());
        let ensured = scope
            .ensure(ctx, &ListenerOps, want, |existing, _| async move {
                let elb = &ctx.aws.elb;
                let certificates =
                    certificate.as_ref().map(|arn| vec![Certificate::builder().certificate_arn(arn).build()]);
                let ssl_policy = certificate.as_ref().map(|_| TLS_POLICY.to_string());
                // A certificate issued moments ago may not be visible to ELB yet.
                let not_visible = |e: &AwsError| e.is_code(&["CertificateNotFound", "CertificateNotFoundException"]);
                let arn = match existing {
                    Some(existing) => {
                        // A GitLab asleep (idle_sleep) is answered by the wake function: a change
                        // to the listener keeps sending requests there.
                        let wake = scope.state.get(keys::WAKE_TARGET_GROUP).and_then(|r| r.id);
                        let live = describe_listener(ctx, &existing.id).await?;
                        let asleep = wake.as_deref().is_some_and(|wake| {
                            live.iter().flat_map(|l| l.default_actions()).any(|a| a.target_group_arn() == Some(wake))
                        });
                        let action = if asleep {
                            &Action::builder()
                                .r#type(ActionTypeEnum::Forward)
                                .set_target_group_arn(wake.clone())
                                .build()
                        } else {
                            action
                        };
                        propagated(not_visible, || async {
                            call(
                                elb.modify_listener()
                                    .listener_arn(&existing.id)
                                    .port(port)
                                    .protocol(protocol.clone())
                                    .set_ssl_policy(ssl_policy.clone())
                                    .set_certificates(certificates.clone())
                                    .default_actions(action.clone())
                                    .send(),
                                || format!("updating the listener on port {port}"),
                            )
                            .await
                        })
                        .await?;
                        existing.id
                    }
                    None => propagated(not_visible, || async {
                        call(
                            elb.create_listener()
                                .load_balancer_arn(lb)
                                .port(port)
                                .protocol(protocol.clone())
                                .set_ssl_policy(ssl_policy.clone())
                                .set_certificates(certificates.clone())
                                .default_actions(action.clone())
                                .set_tags(Some(ctx.tags.list(key)))
                                .send(),
                            || format!("creating the listener on port {port}"),
                        )
                        .await
                    })
                    .await?
                    .listeners()
                    .first()
                    .and_then(|l| l.listener_arn())
                    .context("CreateListener returned no ARN")?
                    .to_string(),
                };
                if *protocol == ProtocolEnum::Tcp {
                    let idle = ListenerAttribute::builder()
                        .key("tcp.idle_timeout.seconds")
                        .value(TCP_IDLE_TIMEOUT_SECONDS.to_string())
                        .build();
                    call(elb.modify_listener_attributes().listener_arn(&arn).attributes(idle).send(), || {
                        format!("setting the TCP idle timeout of the listener on port {port}")
                    })
                    .await?;
                }
                Ok(Applied::id(arn))
            })
            .await?;
        Ok(Summary::new(
            format!("{} {} :{} -> {target}", ensured.verb(), self.protocol.as_str(), self.port),
            ensured.changed(),
        ))
    }
}

async fn describe_listener(
    ctx: &Ctx,
    arn: &str,
) -> anyhow::Result<Option<aws_sdk_elasticloadbalancingv2::types::Listener>> {
    let out =
        if_there(ctx.aws.elb.describe_listeners().listener_arns(arn).send(), || format!("reading listener {arn}"))
            .await?;
    Ok(out.and_then(|o| o.listeners.and_then(|v| v.into_iter().next())))
}

pub struct ListenerOps;

fn listener_live(listener: &Listener) -> Live {
    let protocol = listener.protocol().map(|p| p.as_str()).unwrap_or("?");
    Live::present(format!("{protocol} :{}", listener.port().unwrap_or_default()), vec![])
}

#[async_trait]
impl ResourceOps<Ctx> for ListenerOps {
    fn noun(&self) -> &'static str {
        Kind::Listener.noun()
    }

    async fn read(&self, ctx: &Ctx, record: &ResourceRecord) -> anyhow::Result<Live> {
        Ok(describe_listener(ctx, record.id()?).await?.map_or(Live::Missing, |l| listener_live(&l)))
    }

    /// A listener is the stack's when its load balancer is.
    async fn read_owned(&self, ctx: &Ctx, record: &ResourceRecord) -> anyhow::Result<Live> {
        let Some(listener) = describe_listener(ctx, record.id()?).await? else { return Ok(Live::Missing) };
        let owner = match listener.load_balancer_arn() {
            Some(lb) => owner_of_arn(ctx, lb).await?,
            None => Owner::Foreign("it names no load balancer".into()),
        };
        Ok(listener_live(&listener).owned_by(owner))
    }

    async fn find(&self, ctx: &Ctx, lost: &Lost<'_>) -> anyhow::Result<Option<String>> {
        let (Some(lb_arn), Some(port)) = (lost.record.attr("load_balancer_arn"), lost.record.attr("port")) else {
            return Ok(None);
        };
        let out = if_there(ctx.aws.elb.describe_listeners().load_balancer_arn(lb_arn).send(), || {
            format!("listing listeners of {lb_arn}")
        })
        .await?;
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
        if_there(ctx.aws.elb.delete_listener().listener_arn(arn).send(), || format!("deleting listener {arn}")).await?;
        Ok(())
    }
}

/// The health of every target registered with a target group, as "id state (reason: description)".
pub async fn target_health(ctx: &Ctx, target_group: &str) -> anyhow::Result<Vec<TargetState>> {
    let out = if_there(ctx.aws.elb.describe_target_health().target_group_arn(target_group).send(), || {
        format!("reading target health of {target_group}")
    })
    .await?;
    Ok(out
        .map(|o| o.target_health_descriptions.unwrap_or_default())
        .unwrap_or_default()
        .iter()
        .map(|t| {
            let health = t.target_health();
            TargetState {
                target: t.target().and_then(|t| t.id()).unwrap_or("?").to_string(),
                state: health.and_then(|h| h.state()).map(|s| s.as_str()).unwrap_or("?").to_string(),
                reason: health.and_then(|h| h.reason()).map(|r| r.as_str().to_string()),
                description: health.and_then(|h| h.description()).map(str::to_string),
            }
        })
        .collect())
}

/// One target's health as the load balancer sees it.
#[derive(Debug, Clone, serde::Serialize, schemars::JsonSchema)]
pub struct TargetState {
    pub target: String,
    pub state: String,
    pub reason: Option<String>,
    pub description: Option<String>,
}

impl std::fmt::Display for TargetState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.target, self.state)?;
        match (&self.reason, &self.description) {
            (Some(reason), Some(description)) => write!(f, " ({reason}: {description})"),
            (Some(reason), None) => write!(f, " ({reason})"),
            _ => Ok(()),
        }
    }
}
