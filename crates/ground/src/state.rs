//! The state file: `<state-dir>/<stack>.json`, versioned, saved atomically after every change,
//! with the previous version kept as `<stack>.json.backup` and an exclusive per-stack lock.
//! The directory is the user's alone (0700, files 0600), and nothing in it is opened through a
//! symbolic link or as anything but a regular file.

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

impl ResourceRecord {
    /// A text attribute.
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs.get(name).and_then(serde_json::Value::as_str)
    }

    /// A list attribute's items (none when it is not a list).
    pub fn list(&self, name: &str) -> Vec<String> {
        crate::engine::members(self.attrs.get(name))
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
    Locked { stack: String, holder: String },
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
            StateError::Locked { .. } => {
                "wait for that run to finish; another up/down on the same stack would race it".into()
            }
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

/// Reads the state without locking (for `status` and `plan`): atomic renames mean a reader
/// always sees a whole file.
pub fn read(dir: &Path, stack: &str) -> Result<Option<State>, StateError> {
    let path = state_path(dir, stack);
    let Some(bytes) = read_regular(&path)? else { return Ok(None) };
    let value: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|e| StateError::Corrupt { path: path.clone(), reason: e.to_string() })?;
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
    Ok(Some(state))
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
                return Err(StateError::Locked { stack: stack.to_string(), holder });
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

/// The state of one stack, locked for writing.
pub struct LockedState {
    dir: PathBuf,
    path: PathBuf,
    state: State,
    /// Said when the lock was taken over from a run that died.
    pub taken_over: Option<String>,
    _lock: StackLock,
}

impl LockedState {
    /// Locks the stack and reads its state; a stack without a file starts empty (nothing is
    /// written until the first change).
    pub fn open(dir: &Path, stack: &str, region: &str, operation: &str) -> Result<LockedState, StateError> {
        let (lock, taken_over) = StackLock::acquire(dir, stack, operation)?;
        let state = read(dir, stack)?.unwrap_or_else(|| State {
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
        });
        Ok(LockedState { dir: dir.to_path_buf(), path: state_path(dir, stack), state, taken_over, _lock: lock })
    }

    pub fn state(&self) -> &State {
        &self.state
    }

    pub fn state_mut(&mut self) -> &mut State {
        &mut self.state
    }

    /// Writes the state: temp file in the same directory, fsync, previous version to
    /// `.backup`, rename over the old file, fsync the directory.
    pub fn save(&mut self) -> Result<(), StateError> {
        self.state.serial += 1;
        let json = serde_json::to_vec_pretty(&self.state)
            .map_err(|e| StateError::Corrupt { path: self.path.clone(), reason: e.to_string() })?;
        if let Some(previous) = read_regular(&self.path)? {
            write_atomic(&self.dir, &self.path.with_extension("json.backup"), &previous)?;
        }
        write_atomic(&self.dir, &self.path, &json)
    }

    /// After a complete teardown: removes the state file so the next `up` starts a new lineage
    /// (and new idempotency tokens). The backup stays as a record of what was there.
    pub fn remove_file(&mut self) -> Result<(), StateError> {
        if self.path.exists() {
            let backup = self.path.with_extension("json.backup");
            fs::rename(&self.path, &backup).map_err(io("renaming", &self.path))?;
            sync_dir(&self.dir)?;
        }
        Ok(())
    }
}

fn write_atomic(dir: &Path, path: &Path, bytes: &[u8]) -> Result<(), StateError> {
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

fn sync_dir(dir: &Path) -> Result<(), StateError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io("syncing", dir))
}

/// Shared, mutation-ordered access to a locked state for concurrently running steps.
/// Every change is saved before the call returns.
#[derive(Clone)]
pub struct StateHandle(Arc<Mutex<LockedState>>);

impl StateHandle {
    pub fn new(locked: LockedState) -> Self {
        StateHandle(Arc::new(Mutex::new(locked)))
    }

    fn with<T>(&self, f: impl FnOnce(&mut LockedState) -> T) -> T {
        // A panic while holding the lock cannot leave a half-written file (saves are atomic).
        let mut guard = self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        f(&mut guard)
    }

    pub fn snapshot(&self) -> State {
        self.with(|s| s.state().clone())
    }

    pub fn get(&self, key: &str) -> Option<ResourceRecord> {
        self.with(|s| s.state().resources.get(key).cloned())
    }

    pub fn lineage(&self) -> String {
        self.with(|s| s.state().lineage.clone())
    }

    pub fn put(&self, key: &str, mut record: ResourceRecord) -> Result<(), StateError> {
        record.updated_at = now_rfc3339();
        self.with(|s| {
            s.state_mut().resources.insert(key.to_string(), record);
            s.save()
        })
    }

    pub fn remove(&self, key: &str) -> Result<(), StateError> {
        self.with(|s| if s.state_mut().resources.remove(key).is_some() { s.save() } else { Ok(()) })
    }

    /// Saved with the first resource: a run that creates nothing writes no state file.
    pub fn set_fixed(&self, fixed: BTreeMap<String, String>) -> Result<(), StateError> {
        self.with(|s| {
            if s.state().fixed == fixed {
                return Ok(());
            }
            s.state_mut().fixed = fixed;
            if s.state().resources.is_empty() { Ok(()) } else { s.save() }
        })
    }

    pub fn is_empty(&self) -> bool {
        self.with(|s| s.state().resources.is_empty())
    }

    /// A note kept beside the records (see [`State::notes`]).
    pub fn note(&self, name: &str) -> Option<serde_json::Value> {
        self.with(|s| s.state().notes.get(name).cloned())
    }

    /// Sets (or with `None` removes) a note and saves, even before the first resource.
    pub fn set_note(&self, name: &str, value: Option<serde_json::Value>) -> Result<(), StateError> {
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
    }

    /// Changes the stack-wide fields (account, operation) and saves, when there is a file to
    /// save to or `force`.
    pub fn update(&self, change: impl FnOnce(&mut State), force: bool) -> Result<(), StateError> {
        self.with(|s| {
            let before = s.state().clone();
            change(s.state_mut());
            if *s.state() == before || (!force && s.state().resources.is_empty()) { Ok(()) } else { s.save() }
        })
    }

    pub fn remove_file(&self) -> Result<(), StateError> {
        self.with(|s| s.remove_file())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn save_is_readable_and_keeps_a_backup() {
        let dir = tempfile::tempdir().unwrap();
        let handle = StateHandle::new(LockedState::open(dir.path(), "s1", "us-east-1", "up").unwrap());
        handle.put("vpc", record("ec2:vpc")).unwrap();
        handle.put("igw", record("ec2:internet-gateway")).unwrap();
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

    #[test]
    fn a_symlinked_lock_or_state_is_refused_and_its_target_untouched() {
        use std::os::unix::fs::symlink;
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("precious");
        fs::write(&target, "keep me").unwrap();
        let state_dir = dir.path().join("state");
        fs::create_dir(&state_dir).unwrap();
        symlink(&target, state_dir.join("s1.lock")).unwrap();
        let err = LockedState::open(&state_dir, "s1", "us-east-1", "up").err().expect("refused");
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

    #[test]
    fn the_directory_and_files_are_the_users_alone() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let state_dir = dir.path().join("state");
        let handle = StateHandle::new(LockedState::open(&state_dir, "s1", "us-east-1", "up").unwrap());
        handle.put("vpc", record("ec2:vpc")).unwrap();
        handle.put("igw", record("ec2:internet-gateway")).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&state_dir), 0o700);
        for name in ["s1.json", "s1.json.backup", "s1.lock"] {
            assert_eq!(mode(&state_dir.join(name)), 0o600, "{name}");
        }
    }

    #[test]
    fn a_version_1_file_loads_and_is_saved_as_the_current_version() {
        let dir = tempfile::tempdir().unwrap();
        let v1 = r#"{"version": 1, "lineage": "abc", "serial": 3, "stack": "s1", "region": "us-east-1",
            "fixed": {"region": "us-east-1"}, "resources": {"vpc": {"kind": "ec2:vpc", "step": "vpc",
            "status": "created", "id": "vpc-1", "depends_on": [], "attrs": {}, "generation": 0, "updated_at": ""}}}"#;
        fs::write(state_path(dir.path(), "s1"), v1).unwrap();
        let state = read(dir.path(), "s1").unwrap().unwrap();
        assert_eq!((state.account.clone(), state.resources.len()), (None, 1));
        let handle = StateHandle::new(LockedState::open(dir.path(), "s1", "us-east-1", "up").unwrap());
        handle.update(|s| s.account = Some("123456789012".into()), false).unwrap();
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

    #[test]
    fn corrupt_or_future_files_are_refused_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let path = state_path(dir.path(), "s1");
        for (bytes, expect_version) in [(&b"{not json"[..], false), (&br#"{"version": 99, "stack": "s1"}"#[..], true)] {
            fs::write(&path, bytes).unwrap();
            let err = LockedState::open(dir.path(), "s1", "us-east-1", "up").err().expect("refused");
            assert_eq!(matches!(err, StateError::UnknownVersion { .. }), expect_version, "{err}");
            assert_eq!(fs::read(&path).unwrap(), bytes);
        }
    }
}
