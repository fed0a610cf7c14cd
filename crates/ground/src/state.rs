//! The state of a stack: versioned JSON, saved after every change, under an exclusive per-stack
//! lock, in a [`StateStore`]. The default store is a directory: `<state-dir>/<stack>.json`,
//! saved atomically with the previous version kept as `<stack>.json.backup`, the directory the
//! user's alone (0700, files 0600), nothing opened through a symbolic link or as anything but a
//! regular file. The layer above adds a store in S3 for a team (compare-and-swap writes, a lock
//! object); this file knows only the contract.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

/// Version 2 added the account and partition the stack lives in, and in-flight operations.
/// Version 3 keeps what the layers above record beside the resources (a day-two operation's
/// journal, the GitLab versions the stack ran) as named notes, and lists as lists.
/// Older files load as they are and are upgraded by the next write.
pub const STATE_VERSION: u32 = 3;
const READABLE_VERSIONS: [u64; 3] = [1, 2, 3];
/// Where a version 2 file's in-flight operation goes: the day-two layer reads it from there.
pub const JOURNAL_NOTE: &str = "journal";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct State {
    pub version: u32,
    /// Random id given when the stack's first state is written; idempotency tokens derive from
    /// it so a new stack with the same name never collides with an old one's tokens.
    pub lineage: String,
    /// Incremented on every save.
    pub serial: u64,
    pub stack: String,
    pub region: String,
    /// The AWS account and partition the stack lives in: a run with another account's
    /// credentials is refused before it calls anything else.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition: Option<String>,
    /// Settings that cannot change on an existing stack without replacing it.
    #[serde(default)]
    pub fixed: BTreeMap<String, String>,
    #[serde(default)]
    pub resources: BTreeMap<String, ResourceRecord>,
    /// The settings (file and flags) `up` last applied, without the image tag (the running
    /// version is the task definition's): what day-two commands converge the stack with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settings: Option<serde_json::Value>,
    /// What the layers above keep beside the records, by name, each typed where it is used
    /// (the engine knows none of them): a day-two operation's journal, the versions GitLab ran.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub notes: BTreeMap<String, serde_json::Value>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum RecordStatus {
    /// The create call is about to be made or was made without its answer being recorded:
    /// the resource may exist and is found by its tag, name or idempotency token.
    Pending,
    Created,
    /// Owned by the user (e.g. an existing VPC): read, never modified or deleted.
    Imported,
    /// Kept by `down --keep-data` (the file system, the root secret): the next `up` attaches it
    /// again, a plain `down` deletes it.
    Retained,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ResourceRecord {
    pub kind: String,
    pub step: String,
    pub status: RecordStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Keys of the records this one was created from; teardown deletes this one first.
    #[serde(default)]
    pub depends_on: Vec<String>,
    /// What is needed to read, converge and delete it: its settings and what AWS answered, each
    /// a JSON value of its own type.
    #[serde(default)]
    pub attrs: BTreeMap<String, serde_json::Value>,
    /// Bumped each time the resource is re-created, so idempotency tokens differ.
    #[serde(default)]
    pub generation: u32,
    pub updated_at: String,
}

/// A value as people read it: text as it is, a list as its items, anything else as JSON.
pub fn shown(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(text) => text.clone(),
        serde_json::Value::Array(items) => items.iter().map(shown).collect::<Vec<_>>().join(", "),
        serde_json::Value::Null => "unset".to_string(),
        other => other.to_string(),
    }
}

/// The members of a list value (a set's members); nothing for anything else.
pub fn members(value: Option<&serde_json::Value>) -> Vec<String> {
    match value {
        Some(serde_json::Value::Array(items)) => items.iter().map(shown).collect(),
        _ => Vec::new(),
    }
}

impl ResourceRecord {
    /// A text attribute.
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs.get(name).and_then(serde_json::Value::as_str)
    }

    /// A list attribute's items (none when it is not a list).
    pub fn list(&self, name: &str) -> Vec<String> {
        members(self.attrs.get(name))
    }

    /// Whether the record was written less than `window` ago (false when its time is unreadable).
    pub fn written_within(&self, window: std::time::Duration) -> bool {
        humantime::parse_rfc3339_weak(&self.updated_at)
            .ok()
            .and_then(|at| std::time::SystemTime::now().duration_since(at).ok())
            .is_some_and(|age| age < window)
    }

    /// The id, for operations on a resource that must have one.
    pub fn id(&self) -> anyhow::Result<&str> {
        self.id.as_deref().ok_or_else(|| anyhow::anyhow!("the {} record has no id", self.kind))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("stack {stack:?} is locked by {holder}")]
    Locked { stack: String, holder: String, unlock: Option<String> },
    /// A compare-and-swap write found the stored state changed since this run read it.
    #[error(
        "the state of stack {stack:?} at {location} was changed by someone else while this run held it ({detail}); this run stopped{rescued}"
    )]
    Conflict { stack: String, location: String, detail: String, rescued: String },
    /// The store could not be reached or refused a call (a remote store's service error).
    /// `action` names what was read or written ("reading s3://bucket/key").
    #[error("{action}: {detail}")]
    Store { action: String, location: String, detail: String, help: Option<String> },
    #[error("state file {path} is not valid JSON for this tool ({reason}); it was left untouched")]
    Corrupt { path: PathBuf, reason: String },
    #[error("state file {path} has version {found}, this build knows version {STATE_VERSION}; it was left untouched")]
    UnknownVersion { path: PathBuf, found: u64 },
    #[error("state file {path} belongs to stack {found:?}, not {expected:?}; it was left untouched")]
    WrongStack { path: PathBuf, found: String, expected: String },
    #[error("{path} is {what}, not a regular file; it was left untouched")]
    NotRegular { path: PathBuf, what: &'static str },
    #[error("{action} {path}: {source}")]
    Io { action: &'static str, path: PathBuf, source: std::io::Error },
}

impl crate::Help for StateError {
    fn help(&self) -> Option<String> {
        Some(match self {
            StateError::Locked { unlock: Some(unlock), .. } => format!(
                "wait for that run to finish; if it died (killed, machine gone), ask its holder, then `{unlock}`"
            ),
            StateError::Locked { .. } => {
                "wait for that run to finish; another up/down on the same stack would race it".into()
            }
            StateError::Conflict { .. } => "compare with `gitlab-provision state pull`, settle who changes the stack, then run the command again: it resumes from the stored state".into(),
            StateError::Store { help, .. } => return help.clone(),
            StateError::Corrupt { path, .. } => {
                format!("restore {}.backup or fix the file by hand; nothing was changed in AWS", path.display())
            }
            StateError::UnknownVersion { .. } => "use the gitlab-provision release that wrote it".into(),
            StateError::NotRegular { .. } => "state files and locks are never followed through links or opened as special files; move it away if you did not put it there".into(),
            StateError::WrongStack { .. } | StateError::Io { .. } => return None,
        })
    }
}

fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> StateError + use<'a> {
    move |source| StateError::Io { action, path: path.to_path_buf(), source }
}

pub fn state_path(dir: &Path, stack: &str) -> PathBuf {
    dir.join(format!("{stack}.json"))
}

pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

/// Opens `path` without following a symbolic link and without blocking on a FIFO, and refuses
/// anything but a regular file.
fn open_regular(path: &Path, options: &mut OpenOptions) -> Result<Option<File>, StateError> {
    let file = match options.custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC).open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(StateError::NotRegular { path: path.to_path_buf(), what: "a symbolic link" });
        }
        Err(e) => return Err(io("opening", path)(e)),
    };
    let kind = file.metadata().map_err(io("inspecting", path))?.file_type();
    let what = if kind.is_file() {
        return Ok(Some(file));
    } else if kind.is_dir() {
        "a directory"
    } else if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_socket() {
        "a socket"
    } else {
        "a device or other special file"
    };
    Err(StateError::NotRegular { path: path.to_path_buf(), what })
}

fn read_regular(path: &Path) -> Result<Option<Vec<u8>>, StateError> {
    let Some(mut file) = open_regular(path, OpenOptions::new().read(true))? else { return Ok(None) };
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).map_err(io("reading", path))?;
    Ok(Some(bytes))
}

/// The state directory, created for the user alone.
fn ensure_dir(dir: &Path) -> Result<(), StateError> {
    fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(io("creating", dir))
}

/// A stored state, checked and migrated to the current version: refused untouched when it is
/// not this tool's, is of a future version, or belongs to another stack. `path` names where it
/// came from in messages (a file, or a store's URL).
pub fn parse(bytes: &[u8], path: &Path, stack: &str) -> Result<State, StateError> {
    let path = path.to_path_buf();
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| StateError::Corrupt { path: path.clone(), reason: e.to_string() })?;
    match value.get("version").and_then(serde_json::Value::as_u64) {
        Some(v) if READABLE_VERSIONS.contains(&v) => {}
        Some(found) => return Err(StateError::UnknownVersion { path, found }),
        None => {
            return Err(StateError::Corrupt { path, reason: "no \"version\" field".into() });
        }
    }
    let mut value = value;
    // Migration 2 -> 3: an in-flight operation becomes the journal note, in its old shape (the
    // day-two layer reads both shapes).
    if let Some(fields) = value.as_object_mut()
        && let Some(operation) = fields.remove("operation").filter(|o| !o.is_null())
    {
        let notes = fields.entry("notes").or_insert_with(|| serde_json::json!({}));
        if let Some(notes) = notes.as_object_mut() {
            notes.insert(JOURNAL_NOTE.to_string(), operation);
        }
    }
    if value.get("version").and_then(serde_json::Value::as_u64).is_some_and(|v| v < 3)
        && let Some(resources) = value.get_mut("resources").and_then(serde_json::Value::as_object_mut)
    {
        for record in resources.values_mut() {
            lists_from_v2(record);
        }
    }
    let mut state: State =
        serde_json::from_value(value).map_err(|e| StateError::Corrupt { path: path.clone(), reason: e.to_string() })?;
    if state.stack != stack {
        return Err(StateError::WrongStack { path, found: state.stack, expected: stack.to_string() });
    }
    // Migration 1 -> 2: the new fields default to unknown; the next save writes the current version.
    state.version = STATE_VERSION;
    Ok(state)
}

/// Migration 2 -> 3 of one record: the lists version 2 kept joined in a string become lists, and
/// the values it kept by position get names of their own. Only these attributes were lists.
fn lists_from_v2(record: &mut serde_json::Value) {
    const JOINED: [(&str, &str, char); 8] = [
        ("ec2:security-group", "ingress", ';'),
        ("elbv2:load-balancer", "subnets", ','),
        ("ecs:service", "subnets", ','),
        ("ec2:route-table", "subnets", ','),
        ("iam:role", "managed", ','),
        ("ecs:task-definition", "ports", ','),
        ("local:marker", "created", ','),
        ("local:marker", "existing", ','),
    ];
    let kind = record.get("kind").and_then(serde_json::Value::as_str).unwrap_or_default().to_string();
    let Some(attrs) = record.get_mut("attrs").and_then(serde_json::Value::as_object_mut) else { return };
    for (of, name, separator) in JOINED {
        if of != kind {
            continue;
        }
        if let Some(serde_json::Value::String(joined)) = attrs.get(name).cloned() {
            let items: Vec<serde_json::Value> = joined
                .split(separator)
                .filter(|item| !item.is_empty())
                .map(|item| match item.parse::<u64>() {
                    Ok(number) => serde_json::Value::from(number),
                    Err(_) => serde_json::Value::from(item),
                })
                .collect();
            attrs.insert(name.to_string(), serde_json::Value::Array(items));
        }
    }
    // Two roles by position, and the SSH target group second: named.
    if kind == "ecs:task-definition"
        && let Some(serde_json::Value::String(roles)) = attrs.remove("roles")
        && let Some((execution, task)) = roles.split_once(' ')
    {
        attrs.insert("execution_role".into(), execution.into());
        attrs.insert("task_role".into(), task.into());
    }
    if kind == "ecs:service"
        && let Some(serde_json::Value::String(groups)) = attrs.get("target_group").cloned()
        && let Some((web, ssh)) = groups.split_once(',')
    {
        attrs.insert("target_group".into(), web.into());
        attrs.insert("ssh_target_group".into(), ssh.into());
    }
}

/// The stacks whose state files are in `dir`, by name.
pub fn stacks_in(dir: &Path) -> Result<Vec<String>, StateError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io("listing", dir)(e)),
    };
    let mut stacks: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.strip_suffix(".json")).map(str::to_string))
        .collect();
    stacks.sort();
    Ok(stacks)
}

/// An exclusive, process-lifetime lock on one stack. The OS drops it when the process dies,
/// so a lock left by a killed run is never stale; its info line tells who held it.
pub struct StackLock {
    file: File,
    path: PathBuf,
}

#[derive(Serialize, Deserialize)]
struct LockInfo {
    pid: u32,
    operation: String,
    since: String,
}

impl StackLock {
    /// Takes the lock; also returns what the previous holder's info said when that run ended
    /// without releasing it (it is no longer running: the OS released its lock).
    pub fn acquire(dir: &Path, stack: &str, operation: &str) -> Result<(StackLock, Option<String>), StateError> {
        ensure_dir(dir)?;
        let path = dir.join(format!("{stack}.lock"));
        let mut file =
            open_regular(&path, OpenOptions::new().read(true).write(true).create(true).truncate(false).mode(0o600))?
                .ok_or_else(|| io("creating", &path)(std::io::ErrorKind::NotFound.into()))?;
        let mut previous = String::new();
        match file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                let _ = file.read_to_string(&mut previous);
                let holder = match serde_json::from_str::<LockInfo>(&previous) {
                    Ok(info) => format!("process {} ({} since {})", info.pid, info.operation, info.since),
                    Err(_) => "another process".to_string(),
                };
                return Err(StateError::Locked { stack: stack.to_string(), holder, unlock: None });
            }
            Err(fs::TryLockError::Error(e)) => return Err(io("locking", &path)(e)),
        }
        let _ = file.read_to_string(&mut previous);
        let taken_over = serde_json::from_str::<LockInfo>(&previous).ok().map(|info| {
            format!(
                "the previous run on stack {stack} (process {}, {} since {}) ended without finishing; continuing from what it recorded",
                info.pid, info.operation, info.since
            )
        });
        let info = LockInfo { pid: std::process::id(), operation: operation.to_string(), since: now_rfc3339() };
        let text = serde_json::to_string(&info).unwrap_or_default();
        file.set_len(0)
            .and_then(|_| file.seek(SeekFrom::Start(0)))
            .and_then(|_| file.write_all(text.as_bytes()))
            .map_err(io("writing", &path))?;
        Ok((StackLock { file, path }, taken_over))
    }
}

impl Drop for StackLock {
    fn drop(&mut self) {
        if let Err(e) = self.file.set_len(0) {
            tracing::debug!("clearing lock info {}: {e}", self.path.display());
        }
        let _ = self.file.unlock();
    }
}

/// A held lock on one stack. Released by [`HeldLock::release`] when the run ends; a store whose
/// lock outlives the process (an object in S3) also releases it when dropped, as well as it can.
#[async_trait::async_trait]
pub trait HeldLock: Send + Sync {
    async fn release(self: Box<Self>);
}

/// Where states live and how a stack is locked: a directory ([`LocalStore`], the default) or a
/// bucket (the layer above). Writes are compare-and-swap: `expected` is the revision this run
/// read (None: there was nothing), and a store that can be written by others refuses the write
/// with [`StateError::Conflict`] when the stored state is no longer that revision.
#[async_trait::async_trait]
pub trait StateStore: Send + Sync {
    /// Where a stack's state is, for messages: a path or a URL.
    fn location(&self, stack: &str) -> String;
    /// The stored state's bytes and revision, or None when the stack has no state.
    async fn load(&self, stack: &str) -> Result<Option<(Vec<u8>, Option<String>)>, StateError>;
    /// Writes the state when the stored revision is still `expected`; returns the new revision.
    async fn save(&self, stack: &str, bytes: Vec<u8>, expected: Option<String>) -> Result<Option<String>, StateError>;
    /// After a complete teardown: the next `up` starts a new lineage. What was there is kept
    /// (a backup file, an object version).
    async fn retire(&self, stack: &str, expected: Option<String>) -> Result<(), StateError>;
    /// Locks the stack, or says who holds it. Also returns what is known of a previous holder
    /// that ended without releasing it.
    async fn lock(&self, stack: &str, operation: &str) -> Result<(Box<dyn HeldLock>, Option<String>), StateError>;
    /// The stacks with a state (or, in a shared store, a lock) here, by name.
    async fn stacks(&self) -> Result<Vec<String>, StateError>;
}

/// Reads a stack's state from a store without locking (for `status`, `plan`, `list`).
pub async fn load(store: &dyn StateStore, stack: &str) -> Result<Option<State>, StateError> {
    let Some((bytes, _)) = store.load(stack).await? else { return Ok(None) };
    parse(&bytes, Path::new(&store.location(stack)), stack).map(Some)
}

/// The state directory: one file per stack, locks the OS drops with the process.
pub struct LocalStore {
    pub dir: PathBuf,
}

impl LocalStore {
    pub fn at(dir: &Path) -> Arc<dyn StateStore> {
        Arc::new(LocalStore { dir: dir.to_path_buf() })
    }
}

#[async_trait::async_trait]
impl HeldLock for StackLock {
    async fn release(self: Box<Self>) {}
}

#[async_trait::async_trait]
impl StateStore for LocalStore {
    fn location(&self, stack: &str) -> String {
        state_path(&self.dir, stack).display().to_string()
    }

    /// Without the lock (for `status` and `plan` too): atomic renames mean a reader always sees
    /// a whole file.
    async fn load(&self, stack: &str) -> Result<Option<(Vec<u8>, Option<String>)>, StateError> {
        Ok(read_regular(&state_path(&self.dir, stack))?.map(|bytes| (bytes, None)))
    }

    /// Temp file in the same directory, fsync, previous version to `.backup`, rename over the
    /// old file, fsync the directory. The OS lock makes the writer alone: no revision to compare.
    async fn save(&self, stack: &str, bytes: Vec<u8>, _expected: Option<String>) -> Result<Option<String>, StateError> {
        let path = state_path(&self.dir, stack);
        if let Some(previous) = read_regular(&path)? {
            write_atomic(&self.dir, &path.with_extension("json.backup"), &previous)?;
        }
        write_atomic(&self.dir, &path, &bytes)?;
        Ok(None)
    }

    /// The file becomes the backup, a record of what was there.
    async fn retire(&self, stack: &str, _expected: Option<String>) -> Result<(), StateError> {
        let path = state_path(&self.dir, stack);
        if path.exists() {
            fs::rename(&path, path.with_extension("json.backup")).map_err(io("renaming", &path))?;
            sync_dir(&self.dir)?;
        }
        Ok(())
    }

    async fn lock(&self, stack: &str, operation: &str) -> Result<(Box<dyn HeldLock>, Option<String>), StateError> {
        let (lock, taken_over) = StackLock::acquire(&self.dir, stack, operation)?;
        Ok((Box::new(lock), taken_over))
    }

    async fn stacks(&self) -> Result<Vec<String>, StateError> {
        stacks_in(&self.dir)
    }
}

/// The state of one stack, locked for writing.
pub struct LockedState {
    store: Arc<dyn StateStore>,
    state: State,
    /// The stored revision this run last read or wrote (what the next write expects).
    revision: Option<String>,
    /// Set once a write was refused as a conflict: every later write is refused too, and what
    /// this run knows is kept in the rescue file instead.
    conflicted: Option<(String, String)>,
    /// Said when the lock was taken over from a run that died.
    pub taken_over: Option<String>,
    lock: Option<Box<dyn HeldLock>>,
    /// Where a conflict's rescue file goes: the working directory, where the user ran the command.
    rescue_dir: PathBuf,
}

impl LockedState {
    /// Locks the stack and reads its state; a stack without a state starts empty (nothing is
    /// written until the first change).
    pub async fn open(
        store: Arc<dyn StateStore>,
        stack: &str,
        region: &str,
        operation: &str,
    ) -> Result<LockedState, StateError> {
        let (lock, taken_over) = store.lock(stack, operation).await?;
        let loaded = match store.load(stack).await {
            Ok(loaded) => loaded,
            Err(e) => {
                lock.release().await;
                return Err(e);
            }
        };
        let (state, revision) = match loaded {
            Some((bytes, revision)) => match parse(&bytes, Path::new(&store.location(stack)), stack) {
                Ok(state) => (state, revision),
                Err(e) => {
                    lock.release().await;
                    return Err(e);
                }
            },
            None => (State::new(stack, region), None),
        };
        Ok(LockedState {
            store,
            state,
            revision,
            conflicted: None,
            taken_over,
            lock: Some(lock),
            rescue_dir: PathBuf::from("."),
        })
    }

    /// Puts a conflict's rescue file in `dir` instead of the working directory.
    pub fn rescuing_into(self, dir: &Path) -> LockedState {
        LockedState { rescue_dir: dir.to_path_buf(), ..self }
    }

    pub fn state(&self) -> &State {
        &self.state
    }

    pub fn state_mut(&mut self) -> &mut State {
        &mut self.state
    }

    /// Writes the state to the store, expecting the revision this run last saw. A conflict
    /// stops the run's writes; what it would have written goes to a rescue file so nothing it
    /// created is lost.
    pub async fn save(&mut self) -> Result<(), StateError> {
        self.state.serial += 1;
        let location = self.store.location(&self.state.stack);
        let json = serde_json::to_vec_pretty(&self.state)
            .map_err(|e| StateError::Corrupt { path: PathBuf::from(&location), reason: e.to_string() })?;
        // After a conflict the store is not asked again: the stored state is someone else's.
        let saved = match &self.conflicted {
            Some((location, detail)) => Err(StateError::Conflict {
                stack: self.state.stack.clone(),
                location: location.clone(),
                detail: detail.clone(),
                rescued: String::new(),
            }),
            None => self.store.save(&self.state.stack, json.clone(), self.revision.clone()).await,
        };
        match saved {
            Ok(revision) => {
                self.revision = revision;
                Ok(())
            }
            Err(StateError::Conflict { stack, location, detail, .. }) => {
                self.conflicted = Some((location.clone(), detail.clone()));
                let rescued = rescue(&self.rescue_dir, &stack, &json);
                Err(StateError::Conflict { stack, location, detail, rescued })
            }
            // The store could not be written (after the SDK's retries): what the run knows is
            // kept beside it too, and the next save tries the store again.
            Err(StateError::Store { action, location, detail, help }) => {
                let rescued = rescue(&self.rescue_dir, &self.state.stack, &json);
                Err(StateError::Store { action, location, detail: format!("{detail}{rescued}"), help })
            }
            Err(e) => Err(e),
        }
    }

    /// After a complete teardown: the next `up` starts a new lineage (and new idempotency
    /// tokens). What was there stays as a record (a backup file, an object version).
    pub async fn retire(&mut self) -> Result<(), StateError> {
        self.store.retire(&self.state.stack, self.revision.clone()).await
    }

    /// Releases the lock (a run that ends without calling this leaves it to the store's drop).
    pub async fn release(&mut self) {
        if let Some(lock) = self.lock.take() {
            lock.release().await;
        }
    }
}

/// Keeps what a run could not save after a conflict in `<dir>/<stack>.unsaved.json` (the user's
/// alone), and says where, or why it could not.
fn rescue(dir: &Path, stack: &str, json: &[u8]) -> String {
    let path = dir.join(format!("{stack}.unsaved.json"));
    let written = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
        .and_then(|mut f| f.write_all(json).and_then(|_| f.sync_all()));
    match written {
        Ok(()) => format!("; what it recorded is kept in {}", path.display()),
        Err(e) => format!("; what it recorded could not be kept in {}: {e}", path.display()),
    }
}

impl State {
    /// The state of a stack nothing is recorded for yet: a new lineage.
    pub fn new(stack: &str, region: &str) -> State {
        State {
            version: STATE_VERSION,
            lineage: format!("{:016x}", fastrand::u64(..)),
            serial: 0,
            stack: stack.to_string(),
            region: region.to_string(),
            account: None,
            partition: None,
            fixed: BTreeMap::new(),
            resources: BTreeMap::new(),
            settings: None,
            notes: BTreeMap::new(),
        }
    }
}

fn write_atomic(dir: &Path, path: &Path, bytes: &[u8]) -> Result<(), StateError> {
    ensure_dir(dir)?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".state-")
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(io("creating a temp file in", dir))?;
    tmp.write_all(bytes).map_err(io("writing", tmp.path()))?;
    tmp.as_file().sync_all().map_err(io("syncing", path))?;
    tmp.persist(path).map_err(|e| StateError::Io { action: "replacing", path: path.to_path_buf(), source: e.error })?;
    sync_dir(dir)
}

/// Writes a state file into a directory (its backup kept), unlocked: for copying a state
/// between stores (`state pull`), never for a stack a run holds.
pub fn write_file(path: &Path, bytes: &[u8]) -> Result<(), StateError> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    write_atomic(dir, path, bytes)
}

fn sync_dir(dir: &Path) -> Result<(), StateError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io("syncing", dir))
}

/// Shared, mutation-ordered access to a locked state for concurrently running steps.
/// Every change is saved before the call returns. Reads never wait for a save: the state in
/// memory is behind a short lock, and saves queue behind another that each writes the latest
/// state, so the stored serial only grows.
#[derive(Clone)]
pub struct StateHandle {
    memory: Arc<Mutex<State>>,
    writer: Arc<tokio::sync::Mutex<LockedState>>,
}

impl StateHandle {
    pub fn new(locked: LockedState) -> Self {
        StateHandle {
            memory: Arc::new(Mutex::new(locked.state().clone())),
            writer: Arc::new(tokio::sync::Mutex::new(locked)),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        // A panic while holding the lock leaves the state in memory as it was; saves are whole.
        let mut guard = self.memory.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        f(&mut guard)
    }

    /// Saves what is in memory, unless the last save already holds it. A failed save leaves the
    /// writer with what was last saved, so a change that rode on it is not taken as saved.
    async fn persist(&self) -> Result<(), StateError> {
        let mut writer = self.writer.lock().await;
        let current = self.with(|s| s.clone());
        if current == *writer.state() {
            return Ok(());
        }
        let last_saved = std::mem::replace(writer.state_mut(), current);
        match writer.save().await {
            Ok(()) => {
                let serial = writer.state().serial;
                self.with(|s| s.serial = serial);
                Ok(())
            }
            Err(e) => {
                *writer.state_mut() = last_saved;
                Err(e)
            }
        }
    }

    pub fn snapshot(&self) -> State {
        self.with(|s| s.clone())
    }

    pub fn get(&self, key: &str) -> Option<ResourceRecord> {
        self.with(|s| s.resources.get(key).cloned())
    }

    pub fn lineage(&self) -> String {
        self.with(|s| s.lineage.clone())
    }

    pub async fn put(&self, key: &str, mut record: ResourceRecord) -> Result<(), StateError> {
        record.updated_at = now_rfc3339();
        self.with(|s| s.resources.insert(key.to_string(), record));
        self.persist().await
    }

    pub async fn remove(&self, key: &str) -> Result<(), StateError> {
        if self.with(|s| s.resources.remove(key)).is_some() { self.persist().await } else { Ok(()) }
    }

    /// Saved with the first resource: a run that creates nothing writes no state.
    pub async fn set_fixed(&self, fixed: BTreeMap<String, String>) -> Result<(), StateError> {
        let save = self.with(|s| {
            let changed = s.fixed != fixed;
            s.fixed = fixed;
            changed && !s.resources.is_empty()
        });
        if save { self.persist().await } else { Ok(()) }
    }

    pub fn is_empty(&self) -> bool {
        self.with(|s| s.resources.is_empty())
    }

    /// A note kept beside the records (see [`State::notes`]).
    pub fn note(&self, name: &str) -> Option<serde_json::Value> {
        self.with(|s| s.notes.get(name).cloned())
    }

    /// Sets (or with `None` removes) a note and saves, even before the first resource.
    pub async fn set_note(&self, name: &str, value: Option<serde_json::Value>) -> Result<(), StateError> {
        self.update(
            |s| match value {
                Some(value) => {
                    s.notes.insert(name.to_string(), value);
                }
                None => {
                    s.notes.remove(name);
                }
            },
            true,
        )
        .await
    }

    /// Changes the stack-wide fields (account, operation) and saves, when there is a state to
    /// save to or `force`.
    pub async fn update(&self, change: impl FnOnce(&mut State), force: bool) -> Result<(), StateError> {
        let save = self.with(|s| {
            let before = s.clone();
            change(s);
            *s != before && (force || !s.resources.is_empty())
        });
        if save { self.persist().await } else { Ok(()) }
    }

    /// After a complete teardown (see [`LockedState::retire`]).
    pub async fn retire(&self) -> Result<(), StateError> {
        self.writer.lock().await.retire().await
    }

    /// Releases the stack's lock: the end of the run.
    pub async fn release(&self) {
        self.writer.lock().await.release().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The state file as a run would read it (the directory store's load, synchronously).
    fn read(dir: &Path, stack: &str) -> Result<Option<State>, StateError> {
        let path = state_path(dir, stack);
        let Some(bytes) = read_regular(&path)? else { return Ok(None) };
        parse(&bytes, &path, stack).map(Some)
    }

    fn record(kind: &str) -> ResourceRecord {
        ResourceRecord {
            kind: kind.into(),
            step: "s".into(),
            status: RecordStatus::Created,
            id: Some("id-1".into()),
            depends_on: vec![],
            attrs: BTreeMap::new(),
            generation: 0,
            updated_at: String::new(),
        }
    }

    #[tokio::test]
    async fn save_is_readable_and_keeps_a_backup() {
        let dir = tempfile::tempdir().unwrap();
        let handle =
            StateHandle::new(LockedState::open(LocalStore::at(dir.path()), "s1", "us-east-1", "up").await.unwrap());
        handle.put("vpc", record("ec2:vpc")).await.unwrap();
        handle.put("igw", record("ec2:internet-gateway")).await.unwrap();
        let state = read(dir.path(), "s1").unwrap().unwrap();
        assert_eq!(state.resources.len(), 2);
        assert_eq!(state.serial, 2);
        let backup: State = serde_json::from_slice(&fs::read(dir.path().join("s1.json.backup")).unwrap()).unwrap();
        assert_eq!(backup.resources.len(), 1);
        assert!(fs::read_dir(dir.path()).unwrap().all(|e| !e.unwrap().file_name().to_string_lossy().ends_with(".tmp")));
    }

    #[test]
    fn second_lock_is_refused_and_names_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let (_held, _) = StackLock::acquire(dir.path(), "s1", "up").unwrap();
        match StackLock::acquire(dir.path(), "s1", "down") {
            Err(StateError::Locked { holder, .. }) => {
                assert!(holder.contains(&std::process::id().to_string()) && holder.contains("up"), "{holder}")
            }
            other => panic!("expected Locked, got {:?}", other.err()),
        }
        assert!(StackLock::acquire(dir.path(), "other", "up").is_ok());
    }

    #[test]
    fn lock_is_released_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        drop(StackLock::acquire(dir.path(), "s1", "up").unwrap());
        let (_lock, taken_over) = StackLock::acquire(dir.path(), "s1", "up").unwrap();
        assert!(taken_over.is_none(), "a lock released on drop is not a dead run's");
    }

    #[tokio::test]
    async fn a_symlinked_lock_or_state_is_refused_and_its_target_untouched() {
        use std::os::unix::fs::symlink;
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("precious");
        fs::write(&target, "keep me").unwrap();
        let state_dir = dir.path().join("state");
        fs::create_dir(&state_dir).unwrap();
        symlink(&target, state_dir.join("s1.lock")).unwrap();
        let err = LockedState::open(LocalStore::at(&state_dir), "s1", "us-east-1", "up").await.err().expect("refused");
        assert!(matches!(err, StateError::NotRegular { what: "a symbolic link", .. }), "{err}");
        symlink(&target, state_dir.join("s2.json")).unwrap();
        let err = read(&state_dir, "s2").expect_err("refused");
        assert!(matches!(err, StateError::NotRegular { .. }), "{err}");
        assert_eq!(fs::read_to_string(&target).unwrap(), "keep me");
    }

    #[test]
    fn a_fifo_in_place_of_the_state_is_refused_without_hanging() {
        let dir = tempfile::tempdir().unwrap();
        let path = state_path(dir.path(), "s1");
        let c_path = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
        let err = read(dir.path(), "s1").expect_err("refused");
        assert!(matches!(err, StateError::NotRegular { what: "a FIFO", .. }), "{err}");
    }

    #[tokio::test]
    async fn the_directory_and_files_are_the_users_alone() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let state_dir = dir.path().join("state");
        let handle =
            StateHandle::new(LockedState::open(LocalStore::at(&state_dir), "s1", "us-east-1", "up").await.unwrap());
        handle.put("vpc", record("ec2:vpc")).await.unwrap();
        handle.put("igw", record("ec2:internet-gateway")).await.unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&state_dir), 0o700);
        for name in ["s1.json", "s1.json.backup", "s1.lock"] {
            assert_eq!(mode(&state_dir.join(name)), 0o600, "{name}");
        }
    }

    #[tokio::test]
    async fn a_version_1_file_loads_and_is_saved_as_the_current_version() {
        let dir = tempfile::tempdir().unwrap();
        let v1 = r#"{"version": 1, "lineage": "abc", "serial": 3, "stack": "s1", "region": "us-east-1",
            "fixed": {"region": "us-east-1"}, "resources": {"vpc": {"kind": "ec2:vpc", "step": "vpc",
            "status": "created", "id": "vpc-1", "depends_on": [], "attrs": {}, "generation": 0, "updated_at": ""}}}"#;
        fs::write(state_path(dir.path(), "s1"), v1).unwrap();
        let state = read(dir.path(), "s1").unwrap().unwrap();
        assert_eq!((state.account.clone(), state.resources.len()), (None, 1));
        let handle =
            StateHandle::new(LockedState::open(LocalStore::at(dir.path()), "s1", "us-east-1", "up").await.unwrap());
        handle.update(|s| s.account = Some("123456789012".into()), false).await.unwrap();
        let saved: serde_json::Value =
            serde_json::from_slice(&fs::read(state_path(dir.path(), "s1")).unwrap()).unwrap();
        assert_eq!(
            (saved["version"].as_u64(), saved["account"].as_str()),
            (Some(u64::from(STATE_VERSION)), Some("123456789012"))
        );
    }

    #[test]
    fn version_2_lists_become_lists_and_positions_names() {
        let dir = tempfile::tempdir().unwrap();
        let v2 = r#"{"version": 2, "lineage": "abc", "serial": 3, "stack": "s1", "region": "us-east-1", "resources": {
            "sg": {"kind": "ec2:security-group", "step": "sg", "status": "created", "id": "sg-1", "updated_at": "",
                   "attrs": {"ingress": "tcp:80:cidr:1.2.3.0/24;tcp:443:cidr:1.2.3.0/24"}},
            "td": {"kind": "ecs:task-definition", "step": "td", "status": "created", "id": "td:1", "updated_at": "",
                   "attrs": {"roles": "arn:exec arn:task", "ports": "80,22", "cpu": "2048"}},
            "svc": {"kind": "ecs:service", "step": "svc", "status": "created", "id": "svc", "updated_at": "",
                    "attrs": {"subnets": "subnet-a,subnet-b", "target_group": "arn:web,arn:ssh"}},
            "role": {"kind": "iam:role", "step": "role", "status": "created", "id": "r", "updated_at": "",
                     "attrs": {"managed": ""}}}}"#;
        fs::write(state_path(dir.path(), "s1"), v2).unwrap();
        let state = read(dir.path(), "s1").unwrap().unwrap();
        let attrs = |key: &str| serde_json::to_value(&state.resources[key].attrs).unwrap();
        assert_eq!(attrs("sg")["ingress"], serde_json::json!(["tcp:80:cidr:1.2.3.0/24", "tcp:443:cidr:1.2.3.0/24"]));
        assert_eq!(attrs("td")["ports"], serde_json::json!([80, 22]));
        assert_eq!(
            (attrs("td")["execution_role"].clone(), attrs("td")["task_role"].clone()),
            ("arn:exec".into(), "arn:task".into())
        );
        assert_eq!(attrs("td")["cpu"], "2048", "scalars stay as they were");
        assert_eq!(attrs("svc")["subnets"], serde_json::json!(["subnet-a", "subnet-b"]));
        assert_eq!(
            (attrs("svc")["target_group"].clone(), attrs("svc")["ssh_target_group"].clone()),
            ("arn:web".into(), "arn:ssh".into())
        );
        assert_eq!(attrs("role")["managed"], serde_json::json!([]));
    }

    #[test]
    fn a_version_2_operation_becomes_the_journal_note() {
        let dir = tempfile::tempdir().unwrap();
        let v2 = r#"{"version": 2, "lineage": "abc", "serial": 3, "stack": "s1", "region": "us-east-1",
            "resources": {}, "operation": {"kind": "backup", "phase": "backup-job", "started_at": "x",
            "attrs": {"job": "J1"}}}"#;
        fs::write(state_path(dir.path(), "s1"), v2).unwrap();
        let state = read(dir.path(), "s1").unwrap().unwrap();
        assert_eq!(state.notes[JOURNAL_NOTE]["attrs"]["job"], "J1", "{:?}", state.notes);
    }

    #[tokio::test]
    async fn corrupt_or_future_files_are_refused_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let path = state_path(dir.path(), "s1");
        for (bytes, expect_version) in [(&b"{not json"[..], false), (&br#"{"version": 99, "stack": "s1"}"#[..], true)] {
            fs::write(&path, bytes).unwrap();
            let err =
                LockedState::open(LocalStore::at(dir.path()), "s1", "us-east-1", "up").await.err().expect("refused");
            assert_eq!(matches!(err, StateError::UnknownVersion { .. }), expect_version, "{err}");
            assert_eq!(fs::read(&path).unwrap(), bytes);
        }
    }

    /// A store others write too: revisions are counters, a write with a stale one is refused.
    #[derive(Default)]
    struct SharedMemory {
        object: Mutex<Option<(Vec<u8>, u64)>>,
        writes: std::sync::atomic::AtomicUsize,
    }

    #[async_trait::async_trait]
    impl StateStore for SharedMemory {
        fn location(&self, stack: &str) -> String {
            format!("memory://{stack}")
        }
        async fn load(&self, _: &str) -> Result<Option<(Vec<u8>, Option<String>)>, StateError> {
            Ok(self.object.lock().unwrap().clone().map(|(b, r)| (b, Some(r.to_string()))))
        }
        async fn save(
            &self,
            stack: &str,
            bytes: Vec<u8>,
            expected: Option<String>,
        ) -> Result<Option<String>, StateError> {
            // A slow store: concurrent saves overlap here.
            tokio::task::yield_now().await;
            let mut object = self.object.lock().unwrap();
            let current = object.as_ref().map(|(_, r)| r.to_string());
            if current != expected {
                return Err(StateError::Conflict {
                    stack: stack.into(),
                    location: self.location(stack),
                    detail: "changed".into(),
                    rescued: String::new(),
                });
            }
            let revision = object.as_ref().map_or(1, |(_, r)| r + 1);
            *object = Some((bytes, revision));
            self.writes.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok(Some(revision.to_string()))
        }
        async fn retire(&self, _: &str, _: Option<String>) -> Result<(), StateError> {
            *self.object.lock().unwrap() = None;
            Ok(())
        }
        async fn lock(&self, _: &str, _: &str) -> Result<(Box<dyn HeldLock>, Option<String>), StateError> {
            struct Nothing;
            #[async_trait::async_trait]
            impl HeldLock for Nothing {
                async fn release(self: Box<Self>) {}
            }
            Ok((Box::new(Nothing), None))
        }
        async fn stacks(&self) -> Result<Vec<String>, StateError> {
            Ok(vec![])
        }
    }

    fn stored(store: &SharedMemory) -> State {
        serde_json::from_slice(&store.object.lock().unwrap().clone().unwrap().0).unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_changes_are_all_saved_and_the_serial_only_grows() {
        let store = Arc::new(SharedMemory::default());
        let locked = LockedState::open(store.clone(), "s1", "us-east-1", "up").await.unwrap();
        let handle = StateHandle::new(locked);
        let tasks: Vec<_> = (0..20)
            .map(|i| {
                let handle = handle.clone();
                tokio::spawn(async move { handle.put(&format!("r{i}"), record("ec2:vpc")).await })
            })
            .collect();
        for task in tasks {
            task.await.unwrap().unwrap();
        }
        let saved = stored(&store);
        assert_eq!(saved.resources.len(), 20, "the last save holds every change");
        assert_eq!(saved.serial, store.writes.load(std::sync::atomic::Ordering::SeqCst) as u64);
        assert_eq!(handle.snapshot().serial, saved.serial);
    }

    #[tokio::test]
    async fn a_conflict_stops_every_later_save_and_keeps_what_the_run_knew() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SharedMemory::default());
        let locked = LockedState::open(store.clone(), "s1", "us-east-1", "up").await.unwrap().rescuing_into(dir.path());
        let handle = StateHandle::new(locked);
        handle.put("vpc", record("ec2:vpc")).await.unwrap();
        // Someone else writes: the stored revision moves on.
        let mut theirs = stored(&store);
        theirs.serial = 100;
        store.save("s1", serde_json::to_vec(&theirs).unwrap(), Some("1".into())).await.unwrap();
        let err = handle.put("igw", record("ec2:internet-gateway")).await.expect_err("refused");
        assert!(matches!(&err, StateError::Conflict { rescued, .. } if rescued.contains("s1.unsaved.json")), "{err}");
        let err = handle.put("subnet", record("ec2:subnet")).await.expect_err("still refused");
        assert!(matches!(err, StateError::Conflict { .. }), "{err}");
        assert_eq!(stored(&store).serial, 100, "theirs stays");
        let rescued: State = serde_json::from_slice(&fs::read(dir.path().join("s1.unsaved.json")).unwrap()).unwrap();
        assert_eq!(rescued.resources.keys().collect::<Vec<_>>(), ["igw", "subnet", "vpc"]);
    }
}
