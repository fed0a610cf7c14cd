//! S3: the stack's buckets. Under `hardening = "strict"`, the log bucket receives the load
//! balancer's access logs and the VPC's flow logs; with `object_storage = true`, a bucket per
//! object type holds what GitLab keeps in object storage. Every bucket is private (all four
//! public access blocks, ACLs disabled), TLS only, encrypted, versioned; the log bucket expires
//! what it holds on a schedule, GitLab's buckets keep it (old versions for 30 days). `down`
//! empties and deletes the log bucket, and GitLab's buckets only when empty or told to
//! (`--delete-objects`); `down --keep-data` keeps them all.

use std::collections::BTreeMap;

use async_trait::async_trait;
use aws_sdk_s3::types::{
    AbortIncompleteMultipartUpload, BucketLifecycleConfiguration, BucketLocationConstraint, BucketVersioningStatus,
    CreateBucketConfiguration, ExpirationStatus, LifecycleExpiration, LifecycleRule, LifecycleRuleFilter,
    NoncurrentVersionExpiration, ObjectIdentifier, ObjectOwnership, OwnershipControls, OwnershipControlsRule,
    PublicAccessBlockConfiguration, ServerSideEncryption, ServerSideEncryptionByDefault,
    ServerSideEncryptionConfiguration, ServerSideEncryptionRule, Tagging, VersioningConfiguration,
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

/// How long a replaced or deleted object's old version stays: a month to notice a mistake.
pub const NONCURRENT_DAYS: i32 = 30;
/// How long S3 keeps the parts of a multipart upload nobody finished (a push or a CI job that
/// died): they are billed like objects until aborted.
pub const INCOMPLETE_UPLOAD_DAYS: i32 = 7;

/// The settings every bucket of the stack has, applied to a new bucket and again on update:
/// private, TLS only, encrypted, versioned, old versions kept 30 days, unfinished uploads
/// aborted after a week, and its objects expired after `expire_days` when given.
async fn secure_bucket(
    ctx: &Ctx,
    bucket: &str,
    key: &str,
    expire_days: Option<i32>,
    policy: &str,
) -> anyhow::Result<()> {
    let s3 = &ctx.aws.s3;
    private_encrypted_versioned(s3, bucket, policy).await?;
    let mut rule = LifecycleRule::builder()
        .id(if expire_days.is_some() { "expire" } else { "tidy" })
        .status(ExpirationStatus::Enabled)
        .filter(LifecycleRuleFilter::builder().prefix("").build())
        .noncurrent_version_expiration(NoncurrentVersionExpiration::builder().noncurrent_days(NONCURRENT_DAYS).build())
        .abort_incomplete_multipart_upload(
            AbortIncompleteMultipartUpload::builder().days_after_initiation(INCOMPLETE_UPLOAD_DAYS).build(),
        );
    rule = rule.expiration(match expire_days {
        Some(days) => LifecycleExpiration::builder().days(days).build(),
        // Nothing current expires; a delete marker left alone once its old versions have gone is
        // removed (S3 lists every one of them otherwise, for ever).
        None => LifecycleExpiration::builder().expired_object_delete_marker(true).build(),
    });
    let lifecycle = BucketLifecycleConfiguration::builder().rules(rule.build()?).build()?;
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
        let ensured = ensure_bucket(ctx, scope, keys::LOG_BUCKET, want, Some(LOG_DAYS)).await?;
        Ok(ensured.summary(&format!(" (private, TLS only, {LOG_DAYS} days)")))
    }
}

/// Creates the bucket `want` names (unless it exists) and gives it the stack's settings.
async fn ensure_bucket(
    ctx: &Ctx,
    scope: &StepScope,
    key: &'static str,
    want: Desired,
    expire_days: Option<i32>,
) -> anyhow::Result<crate::engine::Ensured> {
    let (name, policy) = (want.text("name").to_string(), want.text("policy").to_string());
    let (name, policy) = (name.as_str(), policy.as_str());
    scope
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
                scope.created(key, name).await?;
            }
            secure_bucket(ctx, name, key, expire_days, policy).await?;
            Ok(Applied::id(name).with("arn", format!("arn:{}:s3:::{name}", ctx.partition())))
        })
        .await
}

/// Nobody without TLS; the rest is IAM's (GitLab's task role names the bucket).
fn tls_only_policy(ctx: &Ctx, bucket: &str) -> String {
    let arn = format!("arn:{}:s3:::{bucket}", ctx.partition());
    json!({"Version": "2012-10-17", "Statement": [
        {"Sid": "TlsOnly", "Effect": "Deny", "Principal": "*", "Action": "s3:*", "Resource": [arn.clone(), format!("{arn}/*")],
         "Condition": {"Bool": {"aws:SecureTransport": "false"}}}
    ]})
    .to_string()
}

/// The name of the bucket for one of GitLab's object types (`lfs`, `ci_secure_files`).
pub fn object_bucket_name(ctx: &Ctx, object_type: &str) -> String {
    bucket_name(ctx, &object_type.replace('_', "-"))
}

/// One of GitLab's object buckets (`object_storage = true`).
pub struct ObjectBucketStep {
    pub key: &'static str,
    pub object_type: &'static str,
}

#[async_trait]
impl StepAction<Ctx> for ObjectBucketStep {
    fn desired(&self, ctx: &Ctx, _env: &Env) -> anyhow::Result<Vec<Desired>> {
        let name = object_bucket_name(ctx, self.object_type);
        let wanted = attrs([("policy", tls_only_policy(ctx, &name)), ("name", name)]);
        Ok(vec![Desired::new(self.key, Kind::Bucket, wanted).replaced_on(&["name"])])
    }

    async fn apply(&self, ctx: &Ctx, scope: &StepScope) -> anyhow::Result<Summary> {
        let want = scope.wanted_one(ctx, self)?;
        let ensured = ensure_bucket(ctx, scope, self.key, want, None).await?;
        Ok(ensured.summary(&format!(" (GitLab's {}; private, TLS only, versioned)", self.object_type)))
    }
}

pub struct BucketOps;

/// How many pages of a bucket's listing `contents` reads before it says "at least".
const CONTENTS_PAGES: usize = 10;

/// How many objects (every version) a bucket holds, and their bytes; `true` when there are
/// more than it counted (a bucket too large to count in a few seconds).
pub async fn contents(ctx: &Ctx, bucket: &str) -> anyhow::Result<(usize, i64, bool)> {
    let (mut count, mut bytes) = (0, 0);
    let (mut key_marker, mut version_marker) = (None, None);
    for _ in 0..CONTENTS_PAGES {
        let request = ctx
            .aws
            .s3
            .list_object_versions()
            .bucket(bucket)
            .set_key_marker(key_marker)
            .set_version_id_marker(version_marker);
        let page = call(request.send(), || format!("listing the objects of {bucket}")).await?;
        count += page.versions().len();
        bytes += page.versions().iter().filter_map(|v| v.size()).sum::<i64>();
        if page.is_truncated() != Some(true) {
            return Ok((count, bytes, false));
        }
        (key_marker, version_marker) = (page.next_key_marker, page.next_version_id_marker);
    }
    Ok((count, bytes, true))
}

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

    async fn holds(&self, ctx: &Ctx, record: &ResourceRecord) -> anyhow::Result<Option<String>> {
        let bucket = record.id()?;
        if !bucket_exists(ctx, bucket).await? {
            return Ok(None);
        }
        let (count, bytes, more) = contents(ctx, bucket).await?;
        let size = indicatif::HumanBytes(bytes.max(0).unsigned_abs());
        Ok((count > 0).then(|| {
            let at_least = if more { "at least " } else { "" };
            format!("{at_least}{} ({at_least}{size})", crate::engine::counted(count, "object"))
        }))
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

    /// The log bucket and GitLab's object buckets, by the names the stack gives them.
    async fn discover(&self, ctx: &Ctx) -> anyhow::Result<Found> {
        let named = std::iter::once((keys::LOG_BUCKET, bucket_name(ctx, "logs")))
            .chain(keys::OBJECT_BUCKETS.iter().map(|(key, object_type)| (*key, object_bucket_name(ctx, object_type))));
        // Asked at once: a new stack's `up` waits for discovery before it creates anything.
        let looked = futures_util::future::join_all(named.map(|(key, name)| async move {
            let ours = bucket_exists(ctx, &name).await? && bucket_owner(ctx, &name).await? == Owner::Ours;
            anyhow::Ok(ours.then(|| Discovered::new(key, name.clone()).with("name", name)))
        }))
        .await;
        let found: Vec<Discovered> =
            looked.into_iter().collect::<anyhow::Result<Vec<_>>>()?.into_iter().flatten().collect();
        Ok(found.into())
    }
}

fn is_not_empty(e: &anyhow::Error) -> bool {
    e.downcast_ref::<AwsError>().is_some_and(|e| e.is_code(&["BucketNotEmpty"]))
}
