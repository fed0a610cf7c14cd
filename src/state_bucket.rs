//! The shared state: each stack's state an object in an S3 bucket a team shares, with nothing
//! but S3. Its whole life is here: the URL that names it, the bucket `init --shared-state`
//! creates or adopts, the store the engine saves through, the lock, and the history that
//! versioning keeps.
//!
//! - Writes are compare-and-swap on the object's ETag (`If-Match`; `If-None-Match: *` for the
//!   first): S3 refuses a write whose precondition fails with 412 PreconditionFailed, or 409
//!   ConditionalRequestConflict when another conditional write to the key is in flight (S3 User
//!   Guide, "Add preconditions to S3 operations with conditional requests").
//! - The lock is `<prefix>/<stack>.lock`, created with `If-None-Match: *` (the way Terraform's S3
//!   backend locks since 1.10, `use_lockfile`): who, where, which command, since when. The run
//!   deletes it when it ends; a run that was killed leaves it, and `unlock LOCK_ID` removes it.
//! - Versioning keeps every earlier state: `state history`, `state restore VERSION`.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use aws_sdk_s3::Client;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{BucketLocationConstraint, BucketVersioningStatus, CreateBucketConfiguration, Tagging};
use serde::{Deserialize, Serialize};

use crate::aws::{AwsError, call, if_there};
use crate::exit::Diagnostic;
use crate::state::{HeldLock, StateError, StateStore, now_rfc3339};

/// `s3://BUCKET/PREFIX`, with `?region=REGION` when the bucket's region should not be looked up.
#[derive(Debug, Clone, PartialEq)]
pub struct StateUrl {
    pub bucket: String,
    pub prefix: String,
    pub region: Option<String>,
}

/// The bucket names S3 accepts for a general purpose bucket (S3 User Guide, "Bucket naming
/// rules"): 3-63 of a-z, 0-9, '.', '-', beginning and ending with a letter or digit.
fn valid_bucket(name: &str) -> bool {
    let edge = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    (3..=63).contains(&name.len())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-')
        && edge(name.chars().next())
        && edge(name.chars().last())
        && !name.contains("..")
}

impl StateUrl {
    /// Parses what `state`, `--state-url` or `GITLAB_PROVISION_STATE` says; `source` names which.
    pub fn parse(text: &str, source: &str) -> Result<StateUrl, Diagnostic> {
        let wrong = |why: &str| {
            Diagnostic::new(format!("{source} = {text:?} is not a state location: {why}"))
                .with_help("write s3://BUCKET or s3://BUCKET/PREFIX (create the bucket with `gitlab-provision init --shared-state BUCKET`), or leave it out to keep the state in --state-dir")
        };
        let rest = text.strip_prefix("s3://").ok_or_else(|| wrong("it does not begin with s3://"))?;
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (bucket, prefix) = path.split_once('/').unwrap_or((path, ""));
        if !valid_bucket(bucket) {
            return Err(wrong(&format!("{bucket:?} is not an S3 bucket name (3-63 of a-z, 0-9, '.', '-')")));
        }
        let prefix = prefix.trim_matches('/').to_string();
        if prefix.split('/').any(|part| part == "." || part == "..")
            || !prefix.chars().all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
        {
            return Err(wrong("the prefix may hold a-z, A-Z, 0-9, '-', '_', '.' and '/' only"));
        }
        let mut region = None;
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some(("region", value)) if !value.is_empty() => region = Some(value.to_string()),
                _ => return Err(wrong(&format!("{pair:?} is not understood (only ?region=REGION is)"))),
            }
        }
        Ok(StateUrl { bucket: bucket.to_string(), prefix, region })
    }

    fn key(&self, stack: &str, suffix: &str) -> String {
        if self.prefix.is_empty() { format!("{stack}.{suffix}") } else { format!("{}/{stack}.{suffix}", self.prefix) }
    }

    /// The state object's key.
    pub fn state_key(&self, stack: &str) -> String {
        self.key(stack, "json")
    }

    fn lock_key(&self, stack: &str) -> String {
        self.key(stack, "lock")
    }

    /// `s3://bucket/prefix` as written in the config.
    pub fn base(&self) -> String {
        if self.prefix.is_empty() {
            format!("s3://{}", self.bucket)
        } else {
            format!("s3://{}/{}", self.bucket, self.prefix)
        }
    }
}

impl std::fmt::Display for StateUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.base())
    }
}

/// A stack's state in the bucket.
pub struct S3Store {
    s3: Client,
    pub url: StateUrl,
}

/// What S3 answers when a conditional write lost: the precondition failed (412), another
/// conditional write to the same key was in flight (409), or `If-Match` named an object that is
/// gone, e.g. retired by another run's `down` (404 NoSuchKey).
fn lost_the_race(e: &AwsError) -> bool {
    e.is_code(&["PreconditionFailed", "ConditionalRequestConflict", "NoSuchKey"])
        || e.message.contains("At least one of the pre-conditions you specified did not hold")
}

fn store_error(location: &str, e: AwsError) -> StateError {
    let bucket = location.strip_prefix("s3://").and_then(|rest| rest.split('/').next()).unwrap_or(location);
    let help = match e.code() {
        // S3 answers 403 for a missing key too when the caller may not list the bucket.
        "AccessDenied" | "AccessDeniedException" | "Forbidden" => Some(format!(
            "the credentials need s3:GetObject, s3:GetObjectVersion, s3:PutObject, s3:DeleteObject, s3:ListBucket and s3:ListBucketVersions on bucket {bucket} (without s3:ListBucket, a state that does not exist yet also reads as 403)"
        )),
        // HeadBucket's 404 carries no body: the SDK reads it as NotFound.
        "NoSuchBucket" | "NotFound" => Some(format!(
            "bucket {bucket} does not exist: create it with `gitlab-provision init --shared-state {bucket}`, or correct `state` (or --state-url)"
        )),
        "MethodNotAllowed" => Some(
            "that version is a delete marker (a `down`): `gitlab-provision state history` lists the saved ones".into(),
        ),
        _ => None,
    };
    StateError::Store { action: e.action.clone(), location: location.to_string(), detail: e.message.clone(), help }
}

impl S3Store {
    pub fn new(s3: Client, url: StateUrl) -> S3Store {
        S3Store { s3, url }
    }

    fn at(&self, key: &str) -> String {
        format!("s3://{}/{key}", self.url.bucket)
    }

    /// An object's bytes and ETag, or None.
    async fn get(&self, key: &str, version: Option<&str>) -> Result<Option<(Vec<u8>, Option<String>)>, StateError> {
        let request =
            self.s3.get_object().bucket(&self.url.bucket).key(key).set_version_id(version.map(str::to_string));
        let Some(out) = if_there(request.send(), || format!("reading {}", self.at(key)))
            .await
            .map_err(|e| store_error(&self.at(key), e))?
        else {
            return Ok(None);
        };
        let etag = out.e_tag().map(str::to_string);
        let bytes = out.body.collect().await.map_err(|e| StateError::Store {
            action: format!("reading {}", self.at(key)),
            location: self.at(key),
            detail: e.to_string(),
            help: None,
        })?;
        Ok(Some((bytes.into_bytes().to_vec(), etag)))
    }

    /// Writes an object when the stored one is still `expected` (None: when there is none).
    /// A refusal is checked against what is stored: the SDK retries a request whose answer was
    /// lost, and the retry of a write S3 already made fails its own precondition; when the
    /// stored bytes are these, the write happened.
    async fn put_if(&self, key: &str, bytes: Vec<u8>, expected: Option<&str>) -> Result<Option<String>, AwsError> {
        let mut request = self
            .s3
            .put_object()
            .bucket(&self.url.bucket)
            .key(key)
            .body(ByteStream::from(bytes.clone()))
            .content_type("application/json");
        request = match expected {
            Some(etag) => request.if_match(etag),
            None => request.if_none_match("*"),
        };
        match call(request.send(), || format!("writing {}", self.at(key))).await {
            Ok(out) => Ok(out.e_tag().map(str::to_string)),
            Err(e) if lost_the_race(&e) => match self.get(key, None).await {
                Ok(Some((stored, etag))) if stored == bytes => Ok(etag),
                _ => Err(e),
            },
            Err(e) => Err(e),
        }
    }

    /// The lock of a stack, as it is now (None: unlocked).
    pub async fn read_lock(&self, stack: &str) -> Result<Option<LockInfo>, StateError> {
        let key = self.url.lock_key(stack);
        let Some((bytes, _)) = self.get(&key, None).await? else { return Ok(None) };
        Ok(Some(serde_json::from_slice(&bytes).unwrap_or_else(|_| LockInfo::unreadable())))
    }

    /// Removes a stack's lock, when it is still the one named `id`: deleted with `If-Match` on
    /// the ETag read, so a lock taken by someone else in between is never removed.
    pub async fn remove_lock(&self, stack: &str, id: &str) -> Result<bool, StateError> {
        let key = self.url.lock_key(stack);
        let Some((bytes, etag)) = self.get(&key, None).await? else { return Ok(false) };
        if serde_json::from_slice::<LockInfo>(&bytes).map(|info| info.id).ok().as_deref() != Some(id) {
            return Ok(false);
        }
        let request = self.s3.delete_object().bucket(&self.url.bucket).key(&key).set_if_match(etag);
        match call(request.send(), || format!("removing {}", self.at(&key))).await {
            Ok(_) => Ok(true),
            Err(e) if lost_the_race(&e) => Ok(false),
            Err(e) => Err(store_error(&self.at(&key), e)),
        }
    }

    /// Every stored version of a stack's state, newest first (delete markers are `down`s).
    pub async fn history(&self, stack: &str) -> Result<Vec<StateVersion>, StateError> {
        let key = self.url.state_key(stack);
        let mut versions = Vec::new();
        let (mut key_marker, mut version_marker) = (None::<String>, None::<String>);
        loop {
            let request = self
                .s3
                .list_object_versions()
                .bucket(&self.url.bucket)
                .prefix(&key)
                .set_key_marker(key_marker.clone())
                .set_version_id_marker(version_marker.clone());
            let out = call(request.send(), || format!("listing the versions of {}", self.at(&key)))
                .await
                .map_err(|e| store_error(&self.at(&key), e))?;
            for v in out.versions().iter().filter(|v| v.key() == Some(key.as_str())) {
                versions.push(StateVersion {
                    version: v.version_id().unwrap_or("null").to_string(),
                    saved_at: v.last_modified().map(|t| t.to_string()).unwrap_or_default(),
                    bytes: v.size().unwrap_or_default(),
                    latest: v.is_latest().unwrap_or(false),
                    deleted: false,
                });
            }
            for m in out.delete_markers().iter().filter(|m| m.key() == Some(key.as_str())) {
                versions.push(StateVersion {
                    version: m.version_id().unwrap_or("null").to_string(),
                    saved_at: m.last_modified().map(|t| t.to_string()).unwrap_or_default(),
                    bytes: 0,
                    latest: m.is_latest().unwrap_or(false),
                    deleted: true,
                });
            }
            if out.is_truncated() != Some(true) {
                break;
            }
            key_marker = out.next_key_marker().map(str::to_string);
            version_marker = out.next_version_id_marker().map(str::to_string);
        }
        versions.sort_by(|a, b| b.saved_at.cmp(&a.saved_at).then(b.latest.cmp(&a.latest)));
        Ok(versions)
    }

    /// One stored version's bytes.
    pub async fn version(&self, stack: &str, version: &str) -> Result<Option<Vec<u8>>, StateError> {
        Ok(self.get(&self.url.state_key(stack), Some(version)).await?.map(|(bytes, _)| bytes))
    }

    /// The state object as it is now, and its ETag.
    pub async fn current(&self, stack: &str) -> Result<Option<(Vec<u8>, Option<String>)>, StateError> {
        self.get(&self.url.state_key(stack), None).await
    }
}

/// `state history --json`: a stack's saved states, newest first.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct History {
    pub stack: String,
    /// The state object's s3:// URL.
    pub location: String,
    pub versions: Vec<StateVersion>,
}

/// One version of a stack's state, as `state history` lists it.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct StateVersion {
    pub version: String,
    pub saved_at: String,
    pub bytes: i64,
    pub latest: bool,
    /// A delete marker: the state retired by a complete `down`.
    pub deleted: bool,
}

/// Who holds a stack, as the lock object says.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct LockInfo {
    pub id: String,
    pub who: String,
    pub host: String,
    pub pid: u32,
    pub operation: String,
    pub since: String,
    /// The CI job that runs it, when one does.
    #[serde(default)]
    pub job: Option<String>,
}

impl LockInfo {
    fn mine(operation: &str) -> LockInfo {
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let job = env("CI_JOB_URL").or_else(|| {
            Some(format!(
                "{}/{}/actions/runs/{}",
                env("GITHUB_SERVER_URL")?,
                env("GITHUB_REPOSITORY")?,
                env("GITHUB_RUN_ID")?
            ))
        });
        LockInfo {
            id: format!("{:016x}", fastrand::u64(..)),
            // SAFETY: getuid cannot fail and touches no memory.
            who: env("USER").or_else(|| env("LOGNAME")).unwrap_or_else(|| format!("uid {}", unsafe { libc::getuid() })),
            host: hostname(),
            pid: std::process::id(),
            operation: operation.to_string(),
            since: now_rfc3339(),
            job,
        }
    }

    fn unreadable() -> LockInfo {
        LockInfo {
            id: String::new(),
            who: "unknown".into(),
            host: "unknown".into(),
            pid: 0,
            operation: "unknown".into(),
            since: String::new(),
            job: None,
        }
    }

    /// How long ago the lock was taken, in words ("12m").
    pub fn age(&self) -> String {
        humantime::parse_rfc3339_weak(&self.since)
            .ok()
            .and_then(|at| std::time::SystemTime::now().duration_since(at).ok())
            .map(|age| humantime::format_duration(std::time::Duration::from_secs(age.as_secs())).to_string())
            .unwrap_or_else(|| "an unknown time".into())
    }

    /// "alice on laptop (process 4242), up taken 12m ago (2026-...)": when it was taken, not
    /// whether that run still lives (another machine's process cannot be seen from here).
    pub fn describe(&self) -> String {
        let job = self.job.as_ref().map(|j| format!(", job {j}")).unwrap_or_default();
        format!(
            "{} on {} (process {}{job}), {} taken {} ago ({})",
            self.who,
            self.host,
            self.pid,
            self.operation,
            self.age(),
            self.since
        )
    }
}

fn hostname() -> String {
    let mut buffer = [0u8; 256];
    // SAFETY: the buffer is writable for its length, and gethostname writes at most that.
    let status = unsafe { libc::gethostname(buffer.as_mut_ptr().cast(), buffer.len()) };
    let end = buffer.iter().position(|b| *b == 0).unwrap_or(buffer.len());
    if status == 0 { String::from_utf8_lossy(&buffer[..end]).into_owned() } else { "unknown".into() }
}

/// Lock releases still under way when a command ends (a lock dropped without `release`: an
/// early return): `finish_releases` waits for them before the process exits.
static PENDING_RELEASES: Mutex<Vec<tokio::task::JoinHandle<()>>> = Mutex::new(Vec::new());

/// Waits for locks dropped during the command to be removed from the bucket.
pub async fn finish_releases() {
    let pending = std::mem::take(&mut *PENDING_RELEASES.lock().unwrap_or_else(|p| p.into_inner()));
    for task in pending {
        let _ = task.await;
    }
}

struct S3Lock {
    store: Arc<S3Store>,
    stack: String,
    id: String,
    released: bool,
}

async fn release_lock(store: Arc<S3Store>, stack: String, id: String) {
    if let Err(e) = store.remove_lock(&stack, &id).await {
        tracing::warn!(
            "the lock of stack {stack} could not be removed ({e}); `gitlab-provision unlock {id} --stack {stack}` removes it"
        );
    }
}

#[async_trait]
impl HeldLock for S3Lock {
    async fn release(mut self: Box<Self>) {
        self.released = true;
        release_lock(self.store.clone(), self.stack.clone(), self.id.clone()).await;
    }
}

impl Drop for S3Lock {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let task = runtime.spawn(release_lock(self.store.clone(), self.stack.clone(), self.id.clone()));
            PENDING_RELEASES.lock().unwrap_or_else(|p| p.into_inner()).push(task);
        }
    }
}

/// The store as the engine sees it: an `Arc` so a lock can release itself.
pub struct SharedStore(pub Arc<S3Store>);

#[async_trait]
impl StateStore for SharedStore {
    fn location(&self, stack: &str) -> String {
        self.0.at(&self.0.url.state_key(stack))
    }

    async fn load(&self, stack: &str) -> Result<Option<(Vec<u8>, Option<String>)>, StateError> {
        self.0.current(stack).await
    }

    async fn save(&self, stack: &str, bytes: Vec<u8>, expected: Option<String>) -> Result<Option<String>, StateError> {
        let key = self.0.url.state_key(stack);
        match self.0.put_if(&key, bytes, expected.as_deref()).await {
            Ok(etag) => Ok(etag),
            Err(e) if lost_the_race(&e) => {
                let detail = match self.0.current(stack).await {
                    Ok(Some((bytes, _))) => {
                        match serde_json::from_slice::<serde_json::Value>(&bytes)
                            .ok()
                            .and_then(|v| v["serial"].as_u64())
                        {
                            Some(serial) => format!("the stored state is now serial {serial}, written by another run"),
                            None => "the stored object is no longer a state this tool wrote".into(),
                        }
                    }
                    Ok(None) if expected.is_some() => "the stored state was retired (a `down`) by another run".into(),
                    Ok(None) => "another run wrote a state first".into(),
                    Err(e) => format!("and the stored state could not be read: {e}"),
                };
                Err(StateError::Conflict {
                    stack: stack.to_string(),
                    location: self.0.at(&key),
                    detail,
                    rescued: String::new(),
                })
            }
            Err(e) => Err(store_error(&self.0.at(&key), e)),
        }
    }

    /// Deletes the object, compare-and-swap too (DeleteObject with `If-Match`): a state someone
    /// wrote since is not retired. Versioning keeps it (a delete marker on top).
    async fn retire(&self, stack: &str, expected: Option<String>) -> Result<(), StateError> {
        let key = self.0.url.state_key(stack);
        let request = self.0.s3.delete_object().bucket(&self.0.url.bucket).key(&key).set_if_match(expected);
        match call(request.send(), || format!("retiring {}", self.0.at(&key))).await {
            Ok(_) => Ok(()),
            // The retry of a delete S3 already made fails its precondition too: gone is done.
            Err(e) if lost_the_race(&e) && self.0.current(stack).await?.is_none() => Ok(()),
            Err(e) if lost_the_race(&e) => Err(StateError::Conflict {
                stack: stack.to_string(),
                location: self.0.at(&key),
                detail: "another run wrote it after this one's last save, so it was not retired".into(),
                rescued: String::new(),
            }),
            Err(e) => Err(store_error(&self.0.at(&key), e)),
        }
    }

    async fn lock(&self, stack: &str, operation: &str) -> Result<(Box<dyn HeldLock>, Option<String>), StateError> {
        let info = LockInfo::mine(operation);
        let key = self.0.url.lock_key(stack);
        let body = serde_json::to_vec(&info).unwrap_or_default();
        // Twice: a holder that released between our refused write and our read of its lock is
        // gone, and the stack is free again.
        for _ in 0..2 {
            match self.0.put_if(&key, body.clone(), None).await {
                Ok(_) => {
                    let lock = S3Lock { store: self.0.clone(), stack: stack.to_string(), id: info.id, released: false };
                    return Ok((Box::new(lock), None));
                }
                Err(e) if lost_the_race(&e) => {
                    let Some(holder) = self.0.read_lock(stack).await? else { continue };
                    return Err(StateError::Locked {
                        stack: stack.to_string(),
                        holder: format!("{} (lock {} in {})", holder.describe(), holder.id, self.0.at(&key)),
                        unlock: Some(format!("gitlab-provision unlock {} --stack {stack}", holder.id)),
                    });
                }
                Err(e) => return Err(store_error(&self.0.at(&key), e)),
            }
        }
        Err(StateError::Locked {
            stack: stack.to_string(),
            holder: "runs that take and release it as fast as this one asks".into(),
            unlock: None,
        })
    }

    async fn stacks(&self) -> Result<Vec<String>, StateError> {
        let prefix = if self.0.url.prefix.is_empty() { String::new() } else { format!("{}/", self.0.url.prefix) };
        let mut stacks = Vec::new();
        let mut token = None;
        loop {
            let request = self
                .0
                .s3
                .list_objects_v2()
                .bucket(&self.0.url.bucket)
                .prefix(&prefix)
                .delimiter("/")
                .set_continuation_token(token.clone());
            let out = call(request.send(), || format!("listing {}", self.0.url))
                .await
                .map_err(|e| store_error(&self.0.url.base(), e))?;
            // A lock without a state: a run that died before it recorded anything.
            stacks.extend(out.contents().iter().filter_map(|o| {
                let name = o.key()?.strip_prefix(&prefix)?;
                name.strip_suffix(".json").or_else(|| name.strip_suffix(".lock")).map(str::to_string)
            }));
            token = out.next_continuation_token().map(str::to_string);
            if token.is_none() {
                break;
            }
        }
        stacks.sort();
        stacks.dedup();
        Ok(stacks)
    }
}

fn connect_error(url: &StateUrl, e: impl std::fmt::Display) -> StateError {
    StateError::Store {
        action: format!("connecting to {}", url.base()),
        location: url.base(),
        detail: e.to_string(),
        help: None,
    }
}

/// An S3 client in the bucket's region, or None when the bucket does not exist. The region is
/// the URL's, else S3's answer to HeadBucket (`x-amz-bucket-region`, given with a redirect
/// too), else the run's.
pub async fn locate_bucket(
    url: &StateUrl,
    region: Option<&str>,
    profile: Option<&str>,
) -> Result<Option<Client>, StateError> {
    let clients = crate::aws::credentials::clients(url.region.as_deref().or(region), profile)
        .await
        .map_err(|e| connect_error(url, e))?;
    let answered = match clients.s3.head_bucket().bucket(&url.bucket).send().await {
        Ok(out) => out.bucket_region().map(str::to_string),
        Err(e) => {
            let header = e.raw_response().and_then(|r| r.headers().get("x-amz-bucket-region")).map(str::to_string);
            if header.is_none() {
                let reading = || format!("reading bucket {}", url.bucket);
                match crate::aws::AwsResultExt::or_aws(Err::<(), _>(e), reading) {
                    Err(error) if error.is_not_found() => return Ok(None),
                    Err(error) => return Err(store_error(&url.base(), error)),
                    Ok(()) => {}
                }
            }
            header
        }
    };
    match answered.filter(|r| *r != clients.region && url.region.is_none()) {
        Some(bucket_region) => Ok(Some(
            crate::aws::credentials::clients(Some(&bucket_region), profile)
                .await
                .map_err(|e| connect_error(url, e))?
                .s3,
        )),
        None => Ok(Some(clients.s3)),
    }
}

/// An S3 client for the shared state's bucket, which must exist.
pub async fn client(url: &StateUrl, region: Option<&str>, profile: Option<&str>) -> Result<Client, StateError> {
    locate_bucket(url, region, profile).await?.ok_or_else(|| StateError::Store {
        action: format!("reading {}", url.base()),
        location: url.base(),
        detail: format!("bucket {} does not exist", url.bucket),
        help: Some(format!(
            "create it with `gitlab-provision init --shared-state {}`, or correct `state` (or --state-url)",
            url.bucket
        )),
    })
}

// ---------------------------------------------------------------------------------------------
// The bucket itself: `init --shared-state`

/// The tag that marks a bucket as holding this tool's shared states.
pub const PURPOSE_TAG: (&str, &str) = ("gitlab-provision:purpose", "shared-state");

/// What a bucket must have to hold states: versions kept, no public access, encrypted, TLS
/// only. Each missing setting, named.
pub async fn missing_settings(s3: &Client, bucket: &str) -> Result<Vec<String>, AwsError> {
    let mut missing = Vec::new();
    let versioning =
        call(s3.get_bucket_versioning().bucket(bucket).send(), || format!("reading the versioning of {bucket}"))
            .await?;
    if versioning.status() != Some(&BucketVersioningStatus::Enabled) {
        missing.push("versioning is not enabled (earlier states would be lost; `state history` needs it)".to_string());
    }
    let block = if_there(s3.get_public_access_block().bucket(bucket).send(), || {
        format!("reading the public access block of {bucket}")
    })
    .await?;
    let blocked = block.as_ref().and_then(|b| b.public_access_block_configuration()).is_some_and(|c| {
        c.block_public_acls() == Some(true)
            && c.ignore_public_acls() == Some(true)
            && c.block_public_policy() == Some(true)
            && c.restrict_public_buckets() == Some(true)
    });
    if !blocked {
        missing
            .push("public access is not blocked (all four settings of the bucket's Block Public Access)".to_string());
    }
    // Since January 2023 S3 encrypts every bucket by default (SSE-S3), and GetBucketEncryption
    // answers with that rule; no rule (ServerSideEncryptionConfigurationNotFoundError) is refused.
    let encryption =
        if_there(s3.get_bucket_encryption().bucket(bucket).send(), || format!("reading the encryption of {bucket}"))
            .await?;
    let encrypted = encryption
        .and_then(|o| o.server_side_encryption_configuration().map(|c| !c.rules().is_empty()))
        .unwrap_or(false);
    if !encrypted {
        missing.push("default encryption is not configured".to_string());
    }
    let policy =
        if_there(s3.get_bucket_policy().bucket(bucket).send(), || format!("reading the policy of {bucket}")).await?;
    let tls_only = policy.and_then(|p| p.policy().map(str::to_string)).is_some_and(|text| denies_plain_http(&text));
    if !tls_only {
        missing.push("its policy does not deny requests without TLS (aws:SecureTransport = false)".to_string());
    }
    Ok(missing)
}

/// Whether a bucket policy denies every request made without TLS.
fn denies_plain_http(policy: &str) -> bool {
    let Ok(document) = serde_json::from_str::<serde_json::Value>(policy) else { return false };
    let statements = match &document["Statement"] {
        serde_json::Value::Array(list) => list.clone(),
        one => vec![one.clone()],
    };
    statements.iter().any(|s| {
        s["Effect"] == "Deny"
            && s["Condition"]["Bool"]["aws:SecureTransport"].as_str().is_some_and(|v| v.eq_ignore_ascii_case("false"))
    })
}

fn tls_only_policy(partition: &str, bucket: &str) -> String {
    serde_json::json!({"Version": "2012-10-17", "Statement": [{
        "Sid": "DenyWithoutTls", "Effect": "Deny", "Principal": "*", "Action": "s3:*",
        "Resource": [format!("arn:{partition}:s3:::{bucket}"), format!("arn:{partition}:s3:::{bucket}/*")],
        "Condition": {"Bool": {"aws:SecureTransport": "false"}}}]})
    .to_string()
}

/// What `init --shared-state` did.
#[derive(Debug, PartialEq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum BucketOutcome {
    Created,
    Adopted,
    /// A bucket this tool made (its tag says so) that lacked these settings: set again.
    Repaired(Vec<String>),
}

/// Whether the bucket carries the tag this tool gives a state bucket as it creates it.
async fn is_ours(s3: &Client, bucket: &str) -> Result<bool, AwsError> {
    let tags = crate::steps::s3::bucket_tags(s3, bucket).await?;
    Ok(tags.iter().any(|t| (t.key(), t.value()) == PURPOSE_TAG))
}

/// Creates the bucket with every setting a state bucket needs, or adopts an existing one after
/// checking them (refused, naming each missing setting, when one is missing). A bucket this tool
/// made (tagged first, so one a stopped run began is found too) gets missing settings again:
/// they only ever close it.
pub async fn ensure_bucket(
    url: &StateUrl,
    region: Option<&str>,
    profile: Option<&str>,
) -> Result<(BucketOutcome, String), crate::exit::CliError> {
    let bucket = url.bucket.as_str();
    if let Some(s3) = locate_bucket(url, region, profile).await? {
        let region = s3.config().region().map(|r| r.to_string()).unwrap_or_default();
        let missing = missing_settings(&s3, bucket).await?;
        if missing.is_empty() {
            return Ok((BucketOutcome::Adopted, region));
        }
        if is_ours(&s3, bucket).await? {
            secure(&s3, &region, bucket).await?;
            return Ok((BucketOutcome::Repaired(missing), region));
        }
        return Err(Diagnostic::new(format!(
            "bucket {bucket} exists but cannot hold shared states: {}; nothing was changed",
            missing.join("; ")
        ))
        .with_help(format!(
            "fix those settings of {bucket} (its owner decides them), or name a new bucket: `gitlab-provision init --shared-state NEW-BUCKET` creates it with all of them"
        ))
        .into());
    }
    let clients = crate::aws::credentials::clients(url.region.as_deref().or(region), profile).await?;
    let (s3, region) = (clients.s3, clients.region);
    let mut create = s3.create_bucket().bucket(bucket);
    // us-east-1 takes no location constraint (S3 API reference, CreateBucket).
    if region != "us-east-1" {
        create = create.create_bucket_configuration(
            CreateBucketConfiguration::builder()
                .location_constraint(BucketLocationConstraint::from(region.as_str()))
                .build(),
        );
    }
    call(create.send(), || format!("creating bucket {bucket}")).await?;
    // Tagged first: a run stopped half-way finds its own bucket next time and finishes it.
    let tag = aws_sdk_s3::types::Tag::builder()
        .key(PURPOSE_TAG.0)
        .value(PURPOSE_TAG.1)
        .build()
        .map_err(anyhow::Error::from)?;
    let tagging = Tagging::builder().tag_set(tag).build().map_err(anyhow::Error::from)?;
    call(s3.put_bucket_tagging().bucket(bucket).tagging(tagging).send(), || format!("tagging {bucket}")).await?;
    secure(&s3, &region, bucket).await?;
    Ok((BucketOutcome::Created, region))
}

async fn secure(s3: &Client, region: &str, bucket: &str) -> anyhow::Result<()> {
    let policy = tls_only_policy(crate::aws::partition_of(region), bucket);
    crate::steps::s3::private_encrypted_versioned(s3, bucket, &policy).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_urls_name_a_bucket_a_prefix_and_maybe_a_region() {
        let url = StateUrl::parse("s3://team-states/gitlab/?region=eu-west-1", "state").unwrap();
        assert_eq!(
            url,
            StateUrl { bucket: "team-states".into(), prefix: "gitlab".into(), region: Some("eu-west-1".into()) }
        );
        assert_eq!(
            (url.state_key("prod"), url.lock_key("prod")),
            ("gitlab/prod.json".into(), "gitlab/prod.lock".into())
        );
        assert_eq!(StateUrl::parse("s3://team-states", "state").unwrap().state_key("prod"), "prod.json");
        for wrong in ["team-states", "s3://Team", "s3://ab", "s3://b..c/x", "s3://bucket/../x", "s3://bucket/p?acl=1"] {
            let error = StateUrl::parse(wrong, "state").expect_err(wrong);
            assert!(error.to_string().starts_with("state = "), "{error}");
            assert!(error.help.as_deref().is_some_and(|h| h.contains("s3://BUCKET")), "{error:?}");
        }
    }

    #[test]
    fn only_a_deny_without_tls_counts_as_tls_only() {
        assert!(denies_plain_http(&tls_only_policy("aws", "b")));
        let allow = r#"{"Statement": {"Effect": "Allow", "Condition": {"Bool": {"aws:SecureTransport": "false"}}}}"#;
        assert!(!denies_plain_http(allow));
        assert!(!denies_plain_http("not json"));
    }
}
