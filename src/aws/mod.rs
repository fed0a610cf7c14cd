//! AWS plumbing shared by every resource module: SDK configuration, typed errors with their
//! classification, and the one tagging helper.

use std::time::Duration;

use aws_config::{BehaviorVersion, Region, SdkConfig, retry::RetryConfig, timeout::TimeoutConfig};
use aws_sdk_ec2::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_ec2::types::{Filter, ResourceType, Tag, TagSpecification};

/// Tag on every resource the tool creates; `status --discover` and tests find leftovers by it.
pub const STACK_TAG: &str = "gitlab-provision:stack";
/// The state key a resource was created for, so an interrupted create can be found again.
pub const RESOURCE_TAG: &str = "gitlab-provision:resource";

pub struct Clients {
    pub region: String,
    pub acm: aws_sdk_acm::Client,
    pub ec2: aws_sdk_ec2::Client,
    pub ecs: aws_sdk_ecs::Client,
    pub efs: aws_sdk_efs::Client,
    pub elb: aws_sdk_elasticloadbalancingv2::Client,
    pub iam: aws_sdk_iam::Client,
    pub lambda: aws_sdk_lambda::Client,
    pub logs: aws_sdk_cloudwatchlogs::Client,
    pub route53: aws_sdk_route53::Client,
    pub secrets: aws_sdk_secretsmanager::Client,
    pub ssm: aws_sdk_ssm::Client,
}

#[derive(Debug, thiserror::Error)]
#[error("no AWS region is configured\n    help: set region in gitlab-provision.toml, pass --region, or set AWS_REGION")]
pub struct NoRegion;

/// Builds the SDK configuration from the standard chain (environment, profiles, SSO;
/// `AWS_ENDPOINT_URL` for an endpoint override) with an explicit region/profile on top.
pub async fn load(region: Option<&str>, profile: Option<&str>) -> Result<Clients, NoRegion> {
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        // Throttling and 5xx are retried by the SDK with jittered backoff; a provisioning run
        // is long, so allow more attempts than the default 3.
        .retry_config(RetryConfig::standard().with_max_attempts(8).with_max_backoff(Duration::from_secs(20)))
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(10))
                .operation_attempt_timeout(Duration::from_secs(60))
                .build(),
        );
    if let Some(region) = region {
        loader = loader.region(Region::new(region.to_string()));
    }
    if let Some(profile) = profile {
        loader = loader.profile_name(profile);
    }
    let sdk: SdkConfig = loader.load().await;
    let region = sdk.region().map(|r| r.to_string()).ok_or(NoRegion)?;
    Ok(Clients {
        region,
        acm: aws_sdk_acm::Client::new(&sdk),
        ec2: aws_sdk_ec2::Client::new(&sdk),
        ecs: aws_sdk_ecs::Client::new(&sdk),
        efs: aws_sdk_efs::Client::new(&sdk),
        elb: aws_sdk_elasticloadbalancingv2::Client::new(&sdk),
        iam: aws_sdk_iam::Client::new(&sdk),
        lambda: aws_sdk_lambda::Client::new(&sdk),
        logs: aws_sdk_cloudwatchlogs::Client::new(&sdk),
        route53: aws_sdk_route53::Client::new(&sdk),
        secrets: aws_sdk_secretsmanager::Client::new(&sdk),
        ssm: aws_sdk_ssm::Client::new(&sdk),
    })
}

/// An AWS call that failed, with what the tool was doing and the service's error code.
#[derive(Debug, thiserror::Error)]
#[error("{action}: {message}")]
pub struct AwsError {
    pub action: String,
    pub code: Option<String>,
    pub message: String,
}

impl AwsError {
    pub fn code(&self) -> &str {
        self.code.as_deref().unwrap_or_default()
    }

    /// EC2 spells it `InvalidVpcID.NotFound`, `NatGatewayNotFound`; others `ResourceNotFoundException`, `NoSuchHostedZone`.
    pub fn is_not_found(&self) -> bool {
        let code = self.code();
        code.contains("NotFound") || code.starts_with("NoSuch")
    }

    pub fn is_code(&self, codes: &[&str]) -> bool {
        codes.contains(&self.code())
    }
}

pub trait AwsResultExt<T> {
    /// Attaches what was being done ("creating NAT gateway in subnet-0ab (us-east-1)").
    fn or_aws(self, action: impl FnOnce() -> String) -> Result<T, AwsError>;
}

impl<T, E, R> AwsResultExt<T> for Result<T, SdkError<E, R>>
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug,
{
    fn or_aws(self, action: impl FnOnce() -> String) -> Result<T, AwsError> {
        self.map_err(|err| {
            let code = err.code().map(str::to_string);
            let message = match (err.code(), err.message()) {
                (Some(code), Some(message)) => format!("{code}: {message}"),
                (Some(code), None) => code.to_string(),
                _ => error_chain(&err),
            };
            AwsError { action: action(), code, message }
        })
    }
}

/// "dispatch failure: io error: ...: Connection refused": each cause once, without Debug noise.
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(err);
    while let Some(e) = next {
        let text = e.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        next = e.source();
    }
    parts.join(": ")
}

/// Maps "not found" to `None`, so reads and deletes can treat a vanished resource as such.
pub fn found<T>(result: Result<T, AwsError>) -> Result<Option<T>, AwsError> {
    match result {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e),
    }
}

/// The tags every resource of a stack carries.
#[derive(Debug, Clone)]
pub struct Tags {
    pub stack: String,
}

impl Tags {
    pub fn name(&self, key: &str) -> String {
        format!("{}-{key}", self.stack)
    }

    pub fn pairs(&self, key: &str) -> Vec<(String, String)> {
        vec![
            ("Name".to_string(), self.name(key)),
            (STACK_TAG.to_string(), self.stack.clone()),
            (RESOURCE_TAG.to_string(), key.to_string()),
        ]
    }

    /// The same tags in another service's own tag type.
    pub fn map<T>(&self, key: &str, make: impl Fn(String, String) -> T) -> Vec<T> {
        self.pairs(key).into_iter().map(|(k, v)| make(k, v)).collect()
    }

    /// A name for AWS resources limited to `max` characters (load balancers and target groups
    /// allow 32): `<stack>-<suffix>`, or a shortened stack plus a stable hash when too long.
    pub fn short_name(&self, suffix: &str, max: usize) -> String {
        let full = if suffix.is_empty() { self.stack.clone() } else { format!("{}-{suffix}", self.stack) };
        if full.len() <= max {
            return full;
        }
        let hash = full.bytes().fold(0xcbf29ce484222325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100000001b3));
        let tail = format!("-{:06x}-{suffix}", hash & 0xff_ffff);
        let keep = max.saturating_sub(tail.len());
        format!("{}{tail}", self.stack[..keep.min(self.stack.len())].trim_end_matches('-'))
    }

    /// EC2 tags applied atomically with the create call, so nothing exists untagged.
    pub fn ec2(&self, resource_type: ResourceType, key: &str) -> TagSpecification {
        let tags = self.pairs(key).into_iter().map(|(k, v)| Tag::builder().key(k).value(v).build());
        TagSpecification::builder().resource_type(resource_type).set_tags(Some(tags.collect())).build()
    }

    /// Filters that find the EC2 resource created for `key` in this stack.
    pub fn ec2_filters(&self, key: &str) -> Vec<Filter> {
        vec![
            Filter::builder().name(format!("tag:{STACK_TAG}")).values(&self.stack).build(),
            Filter::builder().name(format!("tag:{RESOURCE_TAG}")).values(key).build(),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_found_codes_are_recognised() {
        let err = |code: &str| AwsError { action: String::new(), code: Some(code.into()), message: String::new() };
        for code in [
            "InvalidVpcID.NotFound",
            "NatGatewayNotFound",
            "InvalidAllocationID.NotFound",
            "ResourceNotFoundException",
            "NoSuchHostedZone",
        ] {
            assert!(err(code).is_not_found(), "{code}");
        }
        for code in ["DependencyViolation", "Throttling", "UnauthorizedOperation"] {
            assert!(!err(code).is_not_found(), "{code}");
        }
    }

    #[test]
    fn short_names_fit_and_stay_distinct() {
        let short = Tags { stack: "gitlab".into() };
        assert_eq!(short.short_name("gitlab", 32), "gitlab-gitlab");
        let a = Tags { stack: "a".repeat(32) }.short_name("gitlab", 32);
        let b = Tags { stack: format!("{}b", "a".repeat(31)) }.short_name("gitlab", 32);
        assert!(a.len() <= 32 && b.len() <= 32, "{a} {b}");
        assert_ne!(a, b);
        assert!(a.ends_with("-gitlab") && !a.contains("--"));
    }

    #[test]
    fn every_tag_set_names_the_stack_and_key() {
        let tags = Tags { stack: "s1".into() };
        let pairs = tags.pairs("vpc");
        assert!(pairs.contains(&("Name".into(), "s1-vpc".into())));
        assert!(pairs.contains(&(STACK_TAG.into(), "s1".into())));
        assert!(pairs.contains(&(RESOURCE_TAG.into(), "vpc".into())));
    }
}
