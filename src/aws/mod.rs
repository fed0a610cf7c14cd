//! AWS plumbing shared by every area: SDK configuration and credentials, typed errors and their
//! classification, the context every step gets, tags and ownership, the generic EC2 kind, and
//! the one "delete once what uses it has let go" wait.

mod calls;
pub mod credentials;
pub mod ec2;
pub mod interfaces;
pub mod policies;
pub mod tags;

use std::future::Future;
use std::time::Duration;

use aws_sdk_ec2::error::{ProvideErrorMetadata, SdkError};

pub use credentials::{Identity, connect};
pub use tags::Tags;

use crate::engine::{Poll, RetryPolicy, StepScope, WaitPolicy, retry_while, wait_until};

#[derive(Clone)]
pub struct Clients {
    pub region: String,
    /// The profile the user named, for the Session Manager plugin (`exec`, `shell`).
    pub profile: Option<String>,
    pub acm: aws_sdk_acm::Client,
    pub scaling: aws_sdk_applicationautoscaling::Client,
    pub backup: aws_sdk_backup::Client,
    pub cloudtrail: aws_sdk_cloudtrail::Client,
    pub cloudwatch: aws_sdk_cloudwatch::Client,
    pub ec2: aws_sdk_ec2::Client,
    pub ecs: aws_sdk_ecs::Client,
    pub efs: aws_sdk_efs::Client,
    pub elb: aws_sdk_elasticloadbalancingv2::Client,
    pub iam: aws_sdk_iam::Client,
    pub kms: aws_sdk_kms::Client,
    pub lambda: aws_sdk_lambda::Client,
    pub logs: aws_sdk_cloudwatchlogs::Client,
    pub rds: aws_sdk_rds::Client,
    pub route53: aws_sdk_route53::Client,
    pub s3: aws_sdk_s3::Client,
    pub secrets: aws_sdk_secretsmanager::Client,
    pub quotas: aws_sdk_servicequotas::Client,
    pub ssm: aws_sdk_ssm::Client,
    pub sts: aws_sdk_sts::Client,
    pub waf: aws_sdk_wafv2::Client,
}

/// What every step and resource operation may use: the clients, the stack's tags and names, and
/// the account the run is bound to (unknown only for `plan` of a new stack, which calls nothing).
#[derive(Clone)]
pub struct Ctx {
    pub aws: Clients,
    pub tags: Tags,
    pub account: Option<Identity>,
    /// Whether deleting the database takes a final snapshot first (`down --no-final-snapshot`
    /// turns it off; everything else keeps it).
    pub final_snapshot: bool,
}

impl Ctx {
    pub fn region(&self) -> &str {
        &self.aws.region
    }

    /// `aws`, `aws-cn` or `aws-us-gov`, for ARNs built by hand.
    pub fn partition(&self) -> &str {
        match &self.account {
            Some(identity) => &identity.partition,
            None => partition_of(&self.aws.region),
        }
    }

    /// The account id, or a placeholder where it is not known (offline `plan`).
    pub fn account_id(&self) -> &str {
        self.account.as_ref().map_or(crate::engine::KNOWN_AFTER, |a| a.account.as_str())
    }
}

pub fn partition_of(region: &str) -> &'static str {
    if region.starts_with("cn-") {
        "aws-cn"
    } else if region.starts_with("us-gov-") {
        "aws-us-gov"
    } else {
        "aws"
    }
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

    /// EC2 spells it `InvalidVpcID.NotFound`, `NatGatewayNotFound`; others `ResourceNotFoundException`,
    /// `NoSuchHostedZone`; WAF `WAFNonexistentItemException`.
    pub fn is_not_found(&self) -> bool {
        let code = self.code();
        code.contains("NotFound") || code.starts_with("NoSuch") || code == "WAFNonexistentItemException"
    }

    pub fn is_code(&self, codes: &[&str]) -> bool {
        codes.contains(&self.code())
    }

    /// The code, and a part of the message (AWS reuses codes for unrelated conditions).
    pub fn says(&self, code: &str, fragment: &str) -> bool {
        self.code() == code && self.message.contains(fragment)
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

/// Sends a request; its error says what was being done.
pub async fn call<T, E, R>(
    request: impl Future<Output = Result<T, SdkError<E, R>>>,
    action: impl FnOnce() -> String,
) -> Result<T, AwsError>
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug,
{
    request.await.or_aws(action)
}

/// Sends a request about something that may be gone (a read, a delete): "not found" is `None`.
pub async fn if_there<T, E, R>(
    request: impl Future<Output = Result<T, SdkError<E, R>>>,
    action: impl FnOnce() -> String,
) -> Result<Option<T>, AwsError>
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug,
{
    request.await.or_aws(action).absent_ok()
}

/// "dispatch failure: io error: ...: Connection refused": each cause once, without Debug noise.
pub fn error_chain(err: &dyn std::error::Error) -> String {
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

pub trait Absent<T> {
    /// "Not found" as `None`, so reads and deletes can treat a vanished resource as such.
    fn absent_ok(self) -> Result<Option<T>, AwsError>;
}

impl<T> Absent<T> for Result<T, AwsError> {
    fn absent_ok(self) -> Result<Option<T>, AwsError> {
        match self {
            Ok(v) => Ok(Some(v)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// Right after a create, EC2 (and others) may answer "not found" for the new id for a while
/// ("Eventual consistency in the Amazon EC2 API"); calls naming a just-created resource retry
/// that for the propagation window.
pub async fn fresh<T, F, Fut>(op: F) -> Result<T, AwsError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, AwsError>>,
{
    retry_while(RetryPolicy::EVENTUAL_CONSISTENCY, AwsError::is_not_found, op).await
}

/// Retries a call while AWS answers with one of `transient` (a role not yet assumable, a
/// certificate not yet visible to another service...), for the propagation window.
pub async fn propagated<T, F, Fut>(transient: impl Fn(&AwsError) -> bool, op: F) -> Result<T, AwsError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, AwsError>>,
{
    retry_while(RetryPolicy::PROPAGATION, transient, op).await
}

/// Deleting a VPC, subnet, gateway or group right after what used it fails until AWS notices.
pub const EC2_IN_USE: &[&str] = &["DependencyViolation", "InvalidIPAddress.InUse"];

/// What holds a resource that cannot be deleted yet.
pub enum Holders {
    /// Something AWS is releasing on its own schedule (named): wait for it.
    Draining(String),
    /// Something that will not go by itself (named): fail now, saying what it is.
    Stuck(String),
    /// Nothing visible: AWS has not caught up yet.
    Unknown,
}

/// How long a delete may wait for what holds it: Lambda releases a function's interfaces up to
/// 20-40 minutes after it is gone; load balancer interfaces take minutes (Terraform waits up to
/// 35 minutes for them); ACM releases a certificate up to 20 minutes after its listener.
pub const DRAIN_BUDGET: Duration = Duration::from_secs(45 * 60);
/// How long "in use" with nothing visible holding it is taken for AWS catching up.
const UNEXPLAINED_BUDGET: Duration = Duration::from_secs(90);

/// Deletes through AWS's "still in use" window, knowingly: while the call answers one of `busy`,
/// asks `holders` what holds the resource and waits for exactly that (with progress naming it),
/// for as long as AWS needs; fails at once when what holds it will not go by itself. When nothing
/// is visible, AWS has not caught up yet: a short eventual-consistency retry. "Not found" counts
/// as deleted.
pub async fn delete_when_free<T, F, Fut, H, HFut>(
    scope: &StepScope,
    what: &str,
    busy: &[&str],
    mut op: F,
    holders: H,
) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, AwsError>>,
    H: Fn() -> HFut,
    HFut: Future<Output = anyhow::Result<Holders>>,
{
    let unexplained_since = std::sync::Mutex::new(None::<std::time::Instant>);
    let (holders, unexplained_since) = (&holders, &unexplained_since);
    wait_until(scope, &format!("{what} to be free to delete"), WaitPolicy::up_to(DRAIN_BUDGET), move || {
        let attempt = op();
        async move {
            match attempt.await {
                Ok(_) => Ok(Poll::Ready(())),
                Err(e) if e.is_not_found() => Ok(Poll::Ready(())),
                Err(e) if e.is_code(busy) => match holders().await? {
                    Holders::Draining(names) => Ok(Poll::Pending(names)),
                    Holders::Stuck(names) => Ok(Poll::Failed(format!("{e}; it is held by {names}"))),
                    Holders::Unknown => {
                        let since = *unexplained_since
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .get_or_insert_with(std::time::Instant::now);
                        if since.elapsed() < UNEXPLAINED_BUDGET {
                            Ok(Poll::Pending(format!("AWS still reports it in use ({})", e.code())))
                        } else {
                            Err(e.into())
                        }
                    }
                },
                Err(e) => Err(e.into()),
            }
        }
    })
    .await?;
    Ok(())
}

/// [`delete_when_free`] for what only time releases (a certificate still "in use" by a deleted
/// listener): nothing to inspect, so the wait itself is the explanation.
pub async fn delete_when_released<T, F, Fut>(scope: &StepScope, what: &str, busy: &[&str], op: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, AwsError>>,
{
    let why = format!("AWS still counts {what} as in use; it lets go some minutes after its user is deleted");
    delete_when_free(scope, what, busy, op, || {
        let why = why.clone();
        async move { Ok(Holders::Draining(why)) }
    })
    .await
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
    fn partitions_follow_the_region() {
        assert_eq!(partition_of("cn-north-1"), "aws-cn");
        assert_eq!(partition_of("us-gov-west-1"), "aws-us-gov");
        assert_eq!(partition_of("eu-west-1"), "aws");
    }
}
