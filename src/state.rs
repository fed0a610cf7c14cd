//! The state file: `<state-dir>/<stack>.json`, versioned, saved atomically after every change,
//! with the previous version kept as `<stack>.json.backup` and an exclusive per-stack lock.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

pub const STATE_VERSION: u32 = 1;

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
    /// Settings that cannot change on an existing stack without replacing it.
    #[serde(default)]
    pub fixed: BTreeMap<String, String>,
    #[serde(default)]
    pub resources: BTreeMap<String, ResourceRecord>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
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
    /// What is needed to read, converge and delete it.
    #[serde(default)]
    pub attrs: BTreeMap<String, String>,
    /// Bumped each time the resource is re-created, so idempotency tokens differ.
    #[serde(default)]
    pub generation: u32,
    pub updated_at: String,
}

impl ResourceRecord {
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs.get(name).map(String::as_str)
    }

    /// The id, for operations on a resource that must have one.
    pub fn id(&self) -> anyhow::Result<&str> {
        self.id.as_deref().ok_or_else(|| anyhow::anyhow!("the {} record has no id", self.kind))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(
        "stack {stack:?} is locked by {holder}\n    help: wait for that run to finish; another up/down on the same stack would race it"
    )]
    Locked { stack: String, holder: String },
    #[error(
        "state file {path} is not valid JSON for this tool ({reason}); it was left untouched\n    help: restore {path}.backup or fix the file by hand; nothing was changed in AWS"
    )]
    Corrupt { path: PathBuf, reason: String },
    #[error(
        "state file {path} has version {found}, this build knows version {STATE_VERSION}; it was left untouched\n    help: use the gitlab-provision release that wrote it"
    )]
    UnknownVersion { path: PathBuf, found: u64 },
    #[error("state file {path} belongs to stack {found:?}, not {expected:?}; it was left untouched")]
    WrongStack { path: PathBuf, found: String, expected: String },
    #[error("{action} {path}: {source}")]
    Io { action: &'static str, path: PathBuf, source: std::io::Error },
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

/// Reads the state without locking (for `status` and `plan`): atomic renames mean a reader
/// always sees a whole file.
pub fn read(dir: &Path, stack: &str) -> Result<Option<State>, StateError> {
    let path = state_path(dir, stack);
    let bytes = match fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io("reading", &path)(e)),
    };
    let value: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|e| StateError::Corrupt { path: path.clone(), reason: e.to_string() })?;
    let version = value.get("version").and_then(serde_json::Value::as_u64);
    match version {
        Some(v) if v == u64::from(STATE_VERSION) => {}
        Some(found) => return Err(StateError::UnknownVersion { path, found }),
        None => {
            return Err(StateError::Corrupt { path, reason: "no \"version\" field".into() });
        }
    }
    let state: State =
        serde_json::from_value(value).map_err(|e| StateError::Corrupt { path: path.clone(), reason: e.to_string() })?;
    if state.stack != stack {
        return Err(StateError::WrongStack { path, found: state.stack, expected: stack.to_string() });
    }
    Ok(Some(state))
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
    pub fn acquire(dir: &Path, stack: &str, operation: &str) -> Result<StackLock, StateError> {
        fs::create_dir_all(dir).map_err(io("creating", dir))?;
        let path = dir.join(format!("{stack}.lock"));
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io("opening", &path))?;
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
        if let Ok(info) = serde_json::from_str::<LockInfo>(&previous) {
            tracing::warn!(
                "the previous run on stack {stack} (process {}, {} since {}) ended without releasing its lock; it is no longer running, taking over",
                info.pid,
                info.operation,
                info.since
            );
        }
        let info = LockInfo { pid: std::process::id(), operation: operation.to_string(), since: now_rfc3339() };
        let text = serde_json::to_string(&info).unwrap_or_default();
        file.set_len(0)
            .and_then(|_| file.seek(SeekFrom::Start(0)))
            .and_then(|_| file.write_all(text.as_bytes()))
            .map_err(io("writing", &path))?;
        Ok(StackLock { file, path })
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
    _lock: StackLock,
}

impl LockedState {
    /// Locks the stack and reads its state; a stack without a file starts empty (nothing is
    /// written until the first change).
    pub fn open(dir: &Path, stack: &str, region: &str, operation: &str) -> Result<LockedState, StateError> {
        let lock = StackLock::acquire(dir, stack, operation)?;
        let state = read(dir, stack)?.unwrap_or_else(|| State {
            version: STATE_VERSION,
            lineage: format!("{:016x}", fastrand::u64(..)),
            serial: 0,
            stack: stack.to_string(),
            region: region.to_string(),
            fixed: BTreeMap::new(),
            resources: BTreeMap::new(),
        });
        Ok(LockedState { dir: dir.to_path_buf(), path: state_path(dir, stack), state, _lock: lock })
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
        if self.path.exists() {
            let backup = self.path.with_extension("json.backup");
            write_atomic(&self.dir, &backup, &fs::read(&self.path).map_err(io("reading", &self.path))?)?;
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

    pub fn id_of(&self, key: &str) -> Option<String> {
        self.get(key).filter(|r| r.status != RecordStatus::Pending).and_then(|r| r.id)
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
        let _held = StackLock::acquire(dir.path(), "s1", "up").unwrap();
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
        assert!(StackLock::acquire(dir.path(), "s1", "up").is_ok());
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
