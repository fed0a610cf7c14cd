//! Signing in as users do (environment, profiles, IAM Identity Center, `credential_process`),
//! `--profile` meaning that profile whatever the environment holds (as in the AWS CLI), and the
//! one `sts:GetCallerIdentity` that binds every run to an account.

use std::time::Duration;

use aws_config::profile::ProfileFileCredentialsProvider;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_credential_types::provider::error::CredentialsError;
use aws_runtime::env_config::file::EnvConfigFiles;
use aws_sdk_ec2::error::ProvideErrorMetadata;
use aws_types::os_shim_internal::{Env, Fs};

use super::calls::CallLog;
use super::{Clients, error_chain};

/// Who the credentials are: every command that talks to AWS names it in its first lines.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Identity {
    pub account: String,
    pub arn: String,
    pub partition: String,
}

/// Signing in failed in a way the user fixes (exit 2), or AWS could not be reached (exit 1).
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("no AWS region is configured")]
    NoRegion,
    #[error("AWS profile {name:?} does not exist in your AWS config files{}", known_profiles(.known))]
    UnknownProfile { name: String, known: Vec<String> },
    #[error("no AWS credentials were found{}\n    tried: {tried}", parenthesized(.detail))]
    NoCredentials { tried: String, help: String, detail: String },
    #[error("the IAM Identity Center (SSO) session of profile {profile:?} is not signed in or has expired{}", parenthesized(.detail))]
    SsoLoginNeeded { profile: String, detail: String },
    #[error("the console sign-in session (`aws login`) of profile {profile:?} is not signed in or has expired{}", parenthesized(.detail))]
    LoginNeeded { profile: String, detail: String },
    #[error("AWS refused the credentials{}: {detail}", profile_note(.profile))]
    Refused { profile: Option<String>, detail: String, help: String },
    #[error("cannot reach AWS STS to check who the credentials are: {0}")]
    Unreachable(String),
}

impl ground::Help for ConnectError {
    fn help(&self) -> Option<String> {
        Some(match self {
            ConnectError::NoRegion => "set region in gitlab-provision.toml, pass --region, or set AWS_REGION".into(),
            ConnectError::UnknownProfile { name, .. } => format!(
                "use one of the profiles listed, or create it with `aws configure --profile {name}` (or `aws configure sso --profile {name}`)"
            ),
            ConnectError::NoCredentials { help, .. } | ConnectError::Refused { help, .. } => help.clone(),
            ConnectError::SsoLoginNeeded { profile, .. } => {
                format!("run `aws sso login --profile {profile}`, then try again")
            }
            ConnectError::LoginNeeded { profile, .. } => format!("run `aws login --profile {profile}`, then try again"),
            ConnectError::Unreachable(_) => {
                "check the network (and AWS_ENDPOINT_URL if you set it), then try again".into()
            }
        })
    }
}

impl ConnectError {
    /// Whether the user fixes it (configuration), rather than the network.
    pub fn is_users(&self) -> bool {
        !matches!(self, ConnectError::Unreachable(_))
    }
}

fn known_profiles(known: &[String]) -> String {
    if known.is_empty() {
        " (no profiles are configured)".into()
    } else {
        format!("; the profiles are: {}", known.join(", "))
    }
}

fn parenthesized(detail: &str) -> String {
    if detail.is_empty() { String::new() } else { format!(" ({detail})") }
}

fn profile_note(profile: &Option<String>) -> String {
    profile.as_ref().map(|p| format!(" of profile {p:?}")).unwrap_or_default()
}

/// Whether the profile a run uses (named, else AWS_PROFILE, else default) signs in with
/// `aws login` (a `login_session` in the config file).
async fn uses_login_session(profile: Option<&str>) -> bool {
    let name = profile.map(str::to_string).or_else(|| std::env::var("AWS_PROFILE").ok()).unwrap_or("default".into());
    let set = aws_config::profile::load(&Fs::real(), &Env::real(), &EnvConfigFiles::default(), None).await;
    set.ok().and_then(|s| s.get_profile(&name).map(|p| p.get("login_session").is_some())).unwrap_or(false)
}

/// The profiles the AWS config and credentials files define.
async fn profile_names() -> Vec<String> {
    let set = aws_config::profile::load(&Fs::real(), &Env::real(), &EnvConfigFiles::default(), None).await;
    let mut names: Vec<String> = set.map(|s| s.profiles().map(str::to_string).collect()).unwrap_or_default();
    names.sort();
    names
}

async fn sdk_config(region: Option<&str>, profile: Option<&str>) -> Result<SdkConfig, ConnectError> {
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        // Throttling and 5xx are retried by the SDK with jittered backoff; a provisioning run
        // is long, so allow more attempts than the default 3.
        .retry_config(RetryConfig::standard().with_max_attempts(8).with_max_backoff(Duration::from_secs(20)))
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(10))
                // The initializer's synchronous invoke may take its full 60 s timeout: a shorter
                // attempt timeout would make the SDK invoke it again.
                .operation_attempt_timeout(Duration::from_secs(90))
                .build(),
        );
    if let Some(name) = profile {
        let known = profile_names().await;
        if !known.iter().any(|k| k == name) {
            return Err(ConnectError::UnknownProfile { name: name.to_string(), known });
        }
        // As in the AWS CLI: the named profile's credentials, not whatever the environment has.
        loader = loader
            .profile_name(name)
            .credentials_provider(ProfileFileCredentialsProvider::builder().profile_name(name).build());
    }
    if let Some(region) = region {
        loader = loader.region(Region::new(region.to_string()));
    }
    Ok(loader.load().await)
}

/// Clients for every service, calls logged at `-v`. Nothing is called yet.
pub async fn clients(region: Option<&str>, profile: Option<&str>) -> Result<Clients, ConnectError> {
    let sdk = sdk_config(region, profile).await?;
    let region = sdk.region().map(|r| r.to_string()).ok_or(ConnectError::NoRegion)?;
    Ok(clients_from(&sdk, region, profile))
}

/// The region a run would use, from the environment and the profile's config file only (no
/// credentials, no network): what `plan` of a new stack shows.
pub async fn configured_region(profile: Option<&str>) -> Option<String> {
    let env = aws_config::environment::region::EnvironmentVariableRegionProvider::new();
    if let Some(region) = aws_config::meta::region::ProvideRegion::region(&env).await {
        return Some(region.to_string());
    }
    let mut file = aws_config::profile::ProfileFileRegionProvider::builder();
    if let Some(profile) = profile {
        file = file.profile_name(profile);
    }
    aws_config::meta::region::ProvideRegion::region(&file.build()).await.map(|r| r.to_string())
}

/// A context that never calls AWS: `plan` of a stack that does not exist yet (it needs the
/// stack's names and tags, not an account), and tests of what steps want.
pub fn offline_context(stack: &str, region: &str) -> super::Ctx {
    let sdk = SdkConfig::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(region.to_string()))
        .build();
    super::Ctx {
        aws: clients_from(&sdk, region.to_string(), None),
        tags: super::Tags { stack: stack.to_string(), region: region.to_string() },
        account: None,
        final_snapshot: true,
    }
}

fn clients_from(sdk: &SdkConfig, region: String, profile: Option<&str>) -> Clients {
    macro_rules! client {
        ($krate:ident) => {
            $krate::Client::from_conf($krate::config::Builder::from(sdk).interceptor(CallLog).build())
        };
    }
    Clients {
        region,
        profile: profile.map(str::to_string),
        acm: client!(aws_sdk_acm),
        scaling: client!(aws_sdk_applicationautoscaling),
        backup: client!(aws_sdk_backup),
        cloudtrail: client!(aws_sdk_cloudtrail),
        cloudwatch: client!(aws_sdk_cloudwatch),
        ec2: client!(aws_sdk_ec2),
        ecs: client!(aws_sdk_ecs),
        efs: client!(aws_sdk_efs),
        elb: client!(aws_sdk_elasticloadbalancingv2),
        iam: client!(aws_sdk_iam),
        kms: client!(aws_sdk_kms),
        lambda: client!(aws_sdk_lambda),
        logs: client!(aws_sdk_cloudwatchlogs),
        rds: client!(aws_sdk_rds),
        route53: client!(aws_sdk_route53),
        s3: client!(aws_sdk_s3),
        secrets: client!(aws_sdk_secretsmanager),
        quotas: client!(aws_sdk_servicequotas),
        ssm: client!(aws_sdk_ssm),
        sts: client!(aws_sdk_sts),
        waf: client!(aws_sdk_wafv2),
    }
}

/// Clients, and who the credentials are: one `GetCallerIdentity` before anything else.
pub async fn connect(region: Option<&str>, profile: Option<&str>) -> Result<(Clients, Identity), ConnectError> {
    let clients = clients(region, profile).await?;
    let identity = match clients.sts.get_caller_identity().send().await {
        Ok(out) => {
            let arn = out.arn().unwrap_or_default().to_string();
            let partition = arn.split(':').nth(1).filter(|p| !p.is_empty()).unwrap_or("aws").to_string();
            Identity { account: out.account().unwrap_or_default().to_string(), arn, partition }
        }
        Err(err) => {
            return Err(match classify(&err, &err.code().map(str::to_string), profile) {
                ConnectError::NoCredentials { detail, .. } if uses_login_session(profile).await => {
                    ConnectError::LoginNeeded { profile: profile.unwrap_or("default").to_string(), detail }
                }
                other => other,
            });
        }
    };
    Ok((clients, identity))
}

/// Turns a failed identity check into the one error that says what was tried and the fix.
fn classify(err: &(dyn std::error::Error + 'static), code: &Option<String>, profile: Option<&str>) -> ConnectError {
    let chain = error_chain(err);
    let profile_name = profile.map(str::to_string);
    let credentials = {
        let mut next: Option<&(dyn std::error::Error + 'static)> = Some(err);
        let mut found = None;
        while let Some(e) = next {
            if let Some(c) = e.downcast_ref::<CredentialsError>() {
                found = Some(c);
                break;
            }
            next = e.source();
        }
        found
    };
    let sso = chain.contains("SSO") || chain.contains("sso") || chain.contains("Identity Center");
    match (code.as_deref(), credentials) {
        (Some("ExpiredToken" | "ExpiredTokenException" | "RequestExpired"), _) => ConnectError::Refused {
            profile: profile_name,
            detail: "they have expired".into(),
            help: match profile {
                Some(p) => format!("refresh them: `aws sso login --profile {p}`, or get new keys for the profile"),
                None => "get new temporary credentials (or unset the expired AWS_SESSION_TOKEN)".into(),
            },
        },
        (Some(code @ ("InvalidClientTokenId" | "SignatureDoesNotMatch" | "UnrecognizedClientException")), _) => {
            ConnectError::Refused {
                profile: profile_name,
                detail: format!("{code}: the access key is unknown or the secret does not match"),
                help: "check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or the profile's keys (`aws configure`)".into(),
            }
        }
        (_, Some(_)) if sso => ConnectError::SsoLoginNeeded {
            profile: profile.unwrap_or("default").to_string(),
            detail: last_cause(&chain),
        },
        (_, Some(_)) => ConnectError::NoCredentials {
            tried: match profile {
                Some(p) => format!("profile {p:?} in your AWS config files (AWS_CONFIG_FILE, AWS_SHARED_CREDENTIALS_FILE or ~/.aws)"),
                None => "the environment (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE), the default profile in ~/.aws/config and ~/.aws/credentials (keys, IAM Identity Center, credential_process), web identity, and container or instance credentials".into(),
            },
            help: match profile {
                Some(p) => format!("give the profile credentials: `aws configure --profile {p}` or `aws configure sso --profile {p}`"),
                None => "run `aws configure` (or `aws configure sso`), pass --profile NAME, or export AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY".into(),
            },
            detail: last_cause(&chain),
        },
        _ => ConnectError::Unreachable(chain),
    }
}

fn last_cause(chain: &str) -> String {
    chain.rsplit(": ").next().unwrap_or_default().trim().chars().take(200).collect()
}

/// The IAM ARN that `aws:PrincipalArn` holds for these credentials, as a resource policy names
/// it: an assumed role's role ARN with its path (the session ARN STS gives drops the path, so the
/// role is read), a user's or the root's ARN as it is.
pub async fn principal_arn(ctx: &super::Ctx) -> anyhow::Result<Option<String>> {
    let Some(identity) = &ctx.account else { return Ok(None) };
    let arn = &identity.arn;
    let Some(role) = arn.split_once(":assumed-role/").and_then(|(_, rest)| rest.split('/').next()) else {
        return Ok(Some(arn.clone()));
    };
    let out = super::call(ctx.aws.iam.get_role().role_name(role).send(), || format!("reading role {role}")).await?;
    Ok(out.role.map(|r| r.arn))
}
