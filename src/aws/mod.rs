//! AWS plumbing shared by every resource module: SDK configuration, typed errors with their
//! classification, and the one tagging helper.

use std::time::Duration;

use aws_config::{BehaviorVersion, Region, SdkConfig, retry::RetryConfig, timeout::TimeoutConfig};
use aws_sdk_ec2::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_ec2::types::{Filter, ResourceType, Tag, TagSpecification};

/// Tag on every resource the tool creates; `status --discover` and tests find leftovers by it.
pub const STACK_TAG: &str = "gitlab-provision:stack";
/// The state key a resource was created for, so an interrupted create can be found again.
pub const RESOURCE_TAG: &str = "gitlab-provision:resource";

pub struct Clients {
    pub region: String,
    pub ec2: aws_sdk_ec2::Client,
    pub ssm: aws_sdk_ssm::Client,
}

#[derive(Debug, thiserror::Error)]
#[error(
    "no AWS region is configured\n    help: set region in gitlab-provision.toml, pass --region, or set AWS_REGION"
)]
pub struct NoRegion;

/// Builds the SDK configuration from the standard chain (environment, profiles, SSO;
/// `AWS_ENDPOINT_URL` for an endpoint override) with an explicit region/profile on top.
pub async fn load(region: Option<&str>, profile: Option<&str>) -> Result<Clients, NoRegion> {
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        // Throttling and 5xx are retried by the SDK with jittered backoff; a provisioning run
        // is long, so allow more attempts than the default 3.
        .retry_config(
            RetryConfig::standard()
                .with_max_attempts(8)
                .with_max_backoff(Duration::from_secs(20)),
        )
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
        ec2: aws_sdk_ec2::Client::new(&sdk),
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
                _ => DisplayErrorContext(&err).to_string(),
            };
            AwsError {
                action: action(),
                code,
                message,
            }
        })
    }
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

    /// EC2 tags applied atomically with the create call, so nothing exists untagged.
    pub fn ec2(&self, resource_type: ResourceType, key: &str) -> TagSpecification {
        let tags = self
            .pairs(key)
            .into_iter()
            .map(|(k, v)| Tag::builder().key(k).value(v).build());
        TagSpecification::builder()
            .resource_type(resource_type)
            .set_tags(Some(tags.collect()))
            .build()
    }

    /// Filters that find the EC2 resource created for `key` in this stack.
    pub fn ec2_filters(&self, key: &str) -> Vec<Filter> {
        vec![
            Filter::builder()
                .name(format!("tag:{STACK_TAG}"))
                .values(&self.stack)
                .build(),
            Filter::builder()
                .name(format!("tag:{RESOURCE_TAG}"))
                .values(key)
                .build(),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_found_codes_are_recognised() {
        let err = |code: &str| AwsError {
            action: String::new(),
            code: Some(code.into()),
            message: String::new(),
        };
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
    fn every_tag_set_names_the_stack_and_key() {
        let tags = Tags { stack: "s1".into() };
        let pairs = tags.pairs("vpc");
        assert!(pairs.contains(&("Name".into(), "s1-vpc".into())));
        assert!(pairs.contains(&(STACK_TAG.into(), "s1".into())));
        assert!(pairs.contains(&(RESOURCE_TAG.into(), "vpc".into())));
    }
}
