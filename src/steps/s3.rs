//! S3: the stack's buckets. Under `hardening = "strict"`, the log bucket receives the load
//! balancer's access logs and the VPC's flow logs. Every bucket is private (all four public
//! access blocks, ACLs disabled), TLS only, encrypted, versioned, and expires what it holds on a
//! schedule. `down` empties and deletes it; `down --keep-data` keeps it.

use std::collections::BTreeMap;

use async_trait::async_trait;
use aws_sdk_s3::types::{
    BucketLifecycleConfiguration, BucketLocationConstraint, BucketVersioningStatus, CreateBucketConfiguration,
    ExpirationStatus, LifecycleExpiration, LifecycleRule, LifecycleRuleFilter, NoncurrentVersionExpiration,
    ObjectIdentifier, ObjectOwnership, OwnershipControls, OwnershipControlsRule, PublicAccessBlockConfiguration,
    ServerSideEncryption, ServerSideEncryptionByDefault, ServerSideEncryptionConfiguration, ServerSideEncryptionRule,
    Tagging, VersioningConfiguration,
};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::aws::{AwsError, Ctx, call, if_there};
use crate::engine::{
    Applied, Desired, Discovered, Env, Found, Live, Lost, Owner, ResourceOps, RetryPolicy, StepAction, StepScope,
    Summary, attrs, retry_while,
};
use crate::keys::{self, Kind};
use crate::state::ResourceRecord;

/// Where the load balancer writes its access logs in the log bucket (ELB adds
/// `AWSLogs/<account>/elasticloadbalancing/...`). Flow logs go to the bucket's root, under
/// `AWSLogs/<account>/vpcflowlogs/...`.
pub const LOAD_BALANCER_LOG_PREFIX: &str = "load-balancer";

/// How long the log bucket keeps what it receives: a year, like the log groups under `strict`.
pub const LOG_DAYS: i32 = 365;

const ELB_ACCOUNTS: &str = include_str!("../../data/elb-log-accounts.toml");

#[derive(Deserialize)]
struct ElbAccounts {
    accounts: BTreeMap<String, String>,
}

/// Elastic Load Balancing's account in regions older than August 2022 (data/elb-log-accounts.toml).
fn elb_account(region: &str) -> Option<String> {
    let file: ElbAccounts = toml::from_str(ELB_ACCOUNTS).ok()?;
    file.accounts.get(region).cloned()
}

/// A bucket name of the stack's, unique across AWS: `<stack>-<purpose>-<account>-<region>`
/// (the stack shortened with a hash past S3's 63 characters).
pub fn bucket_name(ctx: &Ctx, purpose: &str) -> String {
    ctx.tags.short_name(&format!("{purpose}-{}-{}", ctx.account_id(), ctx.region()), 63)
}

/// Who may write the log bucket: ELB's log delivery (its account in older regions, its service
/// principal in newer ones: both named, as ELB's guide allows) under the load balancer's
/// prefix; the log delivery service for flow logs, for this account only; nobody without TLS.
fn log_bucket_policy(ctx: &Ctx, bucket: &str) -> String {
    let (partition, region, account) = (ctx.partition(), ctx.region(), ctx.account_id());
    let arn = format!("arn:{partition}:s3:::{bucket}");
    let mut elb_principals = vec![json!({"Service": "logdelivery.elasticloadbalancing.amazonaws.com"})];
    if let Some(elb) = elb_account(region) {
        elb_principals.push(json!({"AWS": format!("arn:{partition}:iam::{elb}:root")}));
    }
    let mut statements: Vec<Value> = elb_principals
        .into_iter()
        .enumerate()
        .map(|(i, principal)| {
            json!({"Sid": format!("LoadBalancerAccessLogs{i}"), "Effect": "Allow", "Principal": principal, "Action": "s3:PutObject",
                   "Resource": format!("{arn}/{LOAD_BALANCER_LOG_PREFIX}/AWSLogs/{account}/*")})
        })
        .collect();
    let source = json!({"aws:SourceAccount": account});
    statements.extend([
        json!({"Sid": "FlowLogsWrite", "Effect": "Allow", "Principal": {"Service": "delivery.logs.amazonaws.com"}, "Action": "s3:PutObject",
               "Resource": format!("{arn}/AWSLogs/{account}/*"),
               "Condition": {"StringEquals": {"s3:x-amz-acl": "bucket-owner-full-control", "aws:SourceAccount": account}}}),
        json!({"Sid": "FlowLogsCheck", "Effect": "Allow", "Principal": {"Service": "delivery.logs.amazonaws.com"},
               "Action": ["s3:GetBucketAcl", "s3:ListBucket"], "Resource": arn, "Condition": {"StringEquals": source}}),
        json!({"Sid": "TlsOnly", "Effect": "Deny", "Principal": "*", "Action": "s3:*", "Resource": [arn.clone(), format!("{arn}/*")],
               "Condition": {"Bool": {"aws:SecureTransport": "false"}}}),
    ]);
    json!({"Version": "2012-10-17", "Statement": statements}).to_string()
}

async fn bucket_exists(ctx: &Ctx, bucket: &str) -> anyhow::Result<bool> {
    let out = if_there(ctx.aws.s3.head_bucket().bucket(bucket).send(), || format!("reading bucket {bucket}")).await?;
    Ok(out.is_some())
}

/// A bucket's tags: none for a bucket without any (S3 answers NoSuchTagSet).
pub async fn bucket_tags(s3: &aws_sdk_s3::Client, bucket: &str) -> Result<Vec<aws_sdk_s3::types::Tag>, AwsError> {
    match call(s3.get_bucket_tagging().bucket(bucket).send(), || format!("reading the tags of {bucket}")).await {
        Ok(out) => Ok(out.tag_set),
        Err(e) if e.is_code(&["NoSuchTagSet"]) => Ok(vec![]),
        Err(e) => Err(e),
    }
}

async fn bucket_owner(ctx: &Ctx, bucket: &str) -> anyhow::Result<Owner> {
    let tags = bucket_tags(&ctx.aws.s3, bucket).await?;
    Ok(ctx.tags.owner(tags.iter().map(|t| (t.key(), t.value()))))
}

/// What every bucket the tool makes has (the stack's, and the shared state's): all four public
/// access blocks, ACLs disabled, SSE-S3 by default, versioning, and `policy` (which denies
/// requests without TLS).
pub async fn private_encrypted_versioned(s3: &aws_sdk_s3::Client, bucket: &str, policy: &str) -> anyhow::Result<()> {
    let block = PublicAccessBlockConfiguration::builder()
        .block_public_acls(true)
        .ignore_public_acls(true)
        .block_public_policy(true)
        .restrict_public_buckets(true)
        .build();
    call(s3.put_public_access_block().bucket(bucket).public_access_block_configuration(block).send(), || {
        format!("blocking public access to {bucket}")
    })
    .await?;
    let owner_enforced =
        OwnershipControlsRule::builder().object_ownership(ObjectOwnership::BucketOwnerEnforced).build()?;
    let controls = OwnershipControls::builder().rules(owner_enforced).build()?;
    call(s3.put_bucket_ownership_controls().bucket(bucket).ownership_controls(controls).send(), || {
        format!("disabling the ACLs of {bucket}")
    })
    .await?;
    // SSE-S3: the only default encryption ELB's access logs accept.
    let by_default = ServerSideEncryptionByDefault::builder().sse_algorithm(ServerSideEncryption::Aes256).build()?;
    let rule = ServerSideEncryptionRule::builder().apply_server_side_encryption_by_default(by_default).build();
    let encryption = ServerSideEncryptionConfiguration::builder().rules(rule).build()?;
    call(s3.put_bucket_encryption().bucket(bucket).server_side_encryption_configuration(encryption).send(), || {
        format!("encrypting {bucket}")
    })
    .await?;
    let versioning = VersioningConfiguration::builder().status(BucketVersioningStatus::Enabled).build();
    call(s3.put_bucket_versioning().bucket(bucket).versioning_configuration(versioning).send(), || {
        format!("versioning {bucket}")
    })
    .await?;
    call(s3.put_bucket_policy().bucket(bucket).policy(policy).send(), || format!("setting the policy of {bucket}"))
        .await?;
    Ok(())
}

/// The settings every bucket of the stack has, applied to a new bucket and again on update.
async fn secure_bucket(ctx: &Ctx, bucket: &str, key: &str, days: i32, policy: &str) -> anyhow::Result<()> {
    let s3 = &ctx.aws.s3;
    private_encrypted_versioned(s3, bucket, policy).await?;
    let expire = LifecycleRule::builder()
        .id("expire")
        .status(ExpirationStatus::Enabled)
        .filter(LifecycleRuleFilter::builder().prefix("").build())
        .expiration(LifecycleExpiration::builder().days(days).build())
        .noncurrent_version_expiration(NoncurrentVersionExpiration::builder().noncurrent_days(30).build())
        .build()?;
    let lifecycle = BucketLifecycleConfiguration::builder().rules(expire).build()?;
    call(s3.put_bucket_lifecycle_configuration().bucket(bucket).lifecycle_configuration(lifecycle).send(), || {
        format!("setting how long {bucket} keeps objects")
    })
    .await?;
    let tags: Vec<aws_sdk_s3::types::Tag> = ctx.tags.list(key);
    call(
        s3.put_bucket_tagging().bucket(bucket).tagging(Tagging::builder().set_tag_set(Some(tags)).build()?).send(),
        || format!("tagging {bucket}"),
    )
    .await?;
    Ok(())
}

pub struct LogBucketStep;

#[async_trait]
impl StepAction<Ctx> for LogBucketStep {
    fn desired(&self, ctx: &Ctx, _env: &Env) -> anyhow::Result<Vec<Desired>> {
        let name = bucket_name(ctx, "logs");
        let wanted =
            attrs([("policy", log_bucket_policy(ctx, &name)), ("name", name), ("expire_days", LOG_DAYS.to_string())]);
        Ok(vec![Desired::new(keys::LOG_BUCKET, Kind::Bucket, wanted).replaced_on(&["name"])])
    }

    async fn apply(&self, ctx: &Ctx, scope: &StepScope) -> anyhow::Result<Summary> {
        let want = scope.wanted_one(ctx, self)?;
        let (name, policy) = (want.text("name").to_string(), want.text("policy").to_string());
        let (name, policy) = (name.as_str(), policy.as_str());
        let ensured = scope
            .ensure(ctx, &BucketOps, want, |existing, _| async move {
                if existing.is_none() {
                    let mut create = ctx.aws.s3.create_bucket().bucket(name);
                    // us-east-1 takes no location constraint; every other region needs its own.
                    if ctx.region() != "us-east-1" {
                        let location = BucketLocationConstraint::from(ctx.region());
                        create = create.create_bucket_configuration(
                            CreateBucketConfiguration::builder().location_constraint(location).build(),
                        );
                    }
                    match call(create.send(), || format!("creating bucket {name}")).await {
                        // A crash after the create: ours, finished below.
                        Err(e) if e.is_code(&["BucketAlreadyOwnedByYou"]) => {}
                        other => drop(other?),
                    }
                    scope.created(keys::LOG_BUCKET, name).await?;
                }
                secure_bucket(ctx, name, keys::LOG_BUCKET, LOG_DAYS, policy).await?;
                Ok(Applied::id(name).with("arn", format!("arn:{}:s3:::{name}", ctx.partition())))
            })
            .await?;
        Ok(ensured.summary(&format!(" (private, TLS only, {LOG_DAYS} days)")))
    }
}

pub struct BucketOps;

/// Deletes every version of every object in the bucket, a thousand per call.
async fn empty(ctx: &Ctx, bucket: &str) -> anyhow::Result<usize> {
    let s3 = &ctx.aws.s3;
    let mut deleted = 0;
    loop {
        let out = call(s3.list_object_versions().bucket(bucket).max_keys(1000).send(), || {
            format!("listing the objects of {bucket}")
        })
        .await?;
        let versions = out.versions().iter().map(|v| (v.key(), v.version_id()));
        let markers = out.delete_markers().iter().map(|m| (m.key(), m.version_id()));
        let objects: Vec<ObjectIdentifier> = versions
            .chain(markers)
            .filter_map(|(key, version)| {
                ObjectIdentifier::builder().key(key?).set_version_id(version.map(str::to_string)).build().ok()
            })
            .collect();
        if objects.is_empty() {
            return Ok(deleted);
        }
        deleted += objects.len();
        let batch = aws_sdk_s3::types::Delete::builder().set_objects(Some(objects)).quiet(true).build()?;
        call(s3.delete_objects().bucket(bucket).delete(batch).send(), || format!("deleting the objects of {bucket}"))
            .await?;
    }
}

#[async_trait]
impl ResourceOps<Ctx> for BucketOps {
    fn noun(&self) -> &'static str {
        Kind::Bucket.noun()
    }

    async fn read(&self, ctx: &Ctx, record: &ResourceRecord) -> anyhow::Result<Live> {
        let bucket = record.id()?;
        if !bucket_exists(ctx, bucket).await? {
            return Ok(Live::Missing);
        }
        let mut drift = vec![];
        let block = if_there(ctx.aws.s3.get_public_access_block().bucket(bucket).send(), || {
            format!("reading the public access block of {bucket}")
        })
        .await?;
        let blocked = block.and_then(|b| b.public_access_block_configuration).is_some_and(|c| {
            [c.block_public_acls, c.ignore_public_acls, c.block_public_policy, c.restrict_public_buckets]
                .iter()
                .all(|b| *b == Some(true))
        });
        if !blocked {
            drift.push("public access is not blocked".to_string());
        }
        Ok(Live::present("private", drift))
    }

    async fn read_owned(&self, ctx: &Ctx, record: &ResourceRecord) -> anyhow::Result<Live> {
        self.read(ctx, record).await?.checked(bucket_owner(ctx, record.id()?)).await
    }

    async fn find(&self, ctx: &Ctx, lost: &Lost<'_>) -> anyhow::Result<Option<String>> {
        let Some(name) = lost.record.attr("name") else { return Ok(None) };
        if !bucket_exists(ctx, name).await? {
            return Ok(None);
        }
        Ok((bucket_owner(ctx, name).await? == Owner::Ours).then(|| name.to_string()))
    }

    /// Emptied, then deleted. Logs delivered after the emptying (ELB writes every five minutes,
    /// for a while after its load balancer is gone) make the delete answer BucketNotEmpty:
    /// emptied again, for the propagation window.
    async fn delete(&self, ctx: &Ctx, record: &ResourceRecord, scope: &StepScope) -> anyhow::Result<()> {
        let bucket = record.id()?;
        if !bucket_exists(ctx, bucket).await? {
            return Ok(());
        }
        retry_while(
            RetryPolicy::PROPAGATION,
            |e: &anyhow::Error| is_not_empty(e),
            || async {
                let deleted = empty(ctx, bucket).await?;
                if deleted > 0 {
                    scope.progress(format!("deleted {deleted} objects of {bucket}"));
                }
                if_there(ctx.aws.s3.delete_bucket().bucket(bucket).send(), || format!("deleting bucket {bucket}"))
                    .await?;
                Ok(())
            },
        )
        .await
    }

    async fn discover(&self, ctx: &Ctx) -> anyhow::Result<Found> {
        let name = bucket_name(ctx, "logs");
        if !bucket_exists(ctx, &name).await? {
            return Ok(Found::default());
        }
        Ok(match bucket_owner(ctx, &name).await? {
            Owner::Ours => vec![Discovered::new(keys::LOG_BUCKET, name.clone()).with("name", name)].into(),
            _ => Found::default(),
        })
    }
}

fn is_not_empty(e: &anyhow::Error) -> bool {
    e.downcast_ref::<AwsError>().is_some_and(|e| e.is_code(&["BucketNotEmpty"]))
}
