//! The journal of a day-two operation in progress (a backup, a restore, an upgrade): its phase and
//! the ids of what it started, typed, saved in the state before each step so a run that dies is
//! resumed (or rolled back) by the next one, and what the stack has been (the GitLab versions it
//! ran, the backups it took), which a restore needs to bring the right version back.

use serde::{Deserialize, Serialize};

use crate::exit::{CliError, Diagnostic};
use crate::state::{JOURNAL_NOTE, State, StateHandle, now_rfc3339};

/// A backup in progress.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackupJournal {
    pub started_at: String,
    pub phase: BackupPhase,
    /// GitLab is stopped for the copy (a consistent backup of a running GitLab).
    pub consistent: bool,
    /// The tasks the service ran before; what a restart (or a rollback) brings back.
    pub desired_before: i32,
    /// This operation scaled GitLab down: whatever happens, it must be started again.
    pub stopped_gitlab: bool,
    /// The idempotency token of this attempt's job: a resumed run gets the same job back, a new
    /// attempt gets a new one.
    pub token: String,
    pub job: Option<String>,
    /// The GitLab version the data is at, recorded with the backup.
    pub version: Option<String>,
    /// Started by an upgrade: GitLab stays stopped after the copy, the next version starts it.
    #[serde(default)]
    pub for_upgrade: bool,
    /// With the database on RDS: the snapshot of it taken with the file system's copy (named
    /// before it is asked for, so a resumed run finds it).
    #[serde(default)]
    pub database_snapshot: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BackupPhase {
    /// Scaling GitLab to 0 and waiting for its task to stop.
    StoppingGitLab,
    /// Asking AWS Backup for the job (the token makes asking again safe).
    StartingJob,
    /// The job runs; GitLab waits for it (stopped, for a consistent copy).
    Copying,
    /// The copy is made: GitLab starts again.
    StartingGitLab,
}

/// A restore in progress.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RestoreJournal {
    pub started_at: String,
    pub phase: RestorePhase,
    pub point: String,
    /// The token of this attempt (the restore job's idempotency token and the new file
    /// system's creation token): unique per attempt, so a second restore of one point is a new
    /// job with a new file system.
    pub token: String,
    pub job: Option<String>,
    pub new_file_system: Option<String>,
    /// The GitLab version deployed with the data (the version that wrote it).
    pub version: Option<String>,
    /// The tasks the service ran before (started again whatever converging changes).
    pub desired_before: i32,
    /// With the database on RDS: the snapshot restored with the file system, and the new
    /// instance it is restored into (named before it is asked for).
    #[serde(default)]
    pub database_snapshot: Option<String>,
    #[serde(default)]
    pub new_database: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestorePhase {
    /// The restore job into a new file system (GitLab keeps running).
    Restoring,
    /// GitLab stopped; the stack is switched to the new file system and converged onto it.
    Switching,
    /// GitLab starts on the restored data.
    StartingGitLab,
}

/// An upgrade in progress: the hops, and the one it is at.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpgradeJournal {
    pub started_at: String,
    pub hops: Vec<String>,
    /// Hops already deployed and healthy.
    pub done: usize,
    /// The backup taken first, once it is made.
    pub backup: Option<String>,
}

/// The operation the state records as in progress.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "operation", rename_all = "kebab-case")]
pub enum Journal {
    Backup(BackupJournal),
    Restore(RestoreJournal),
    Upgrade(UpgradeJournal),
}

impl Journal {
    /// The command that resumes it.
    pub fn command(&self) -> &'static str {
        match self {
            Journal::Backup(_) => "backup",
            Journal::Restore(_) => "restore",
            Journal::Upgrade(_) => "upgrade",
        }
    }

    pub fn started_at(&self) -> &str {
        match self {
            Journal::Backup(j) => &j.started_at,
            Journal::Restore(j) => &j.started_at,
            Journal::Upgrade(j) => &j.started_at,
        }
    }

    /// The journal the state records, typed; a version 2 state's operation (kind, phase, attrs)
    /// is read in its old shape.
    pub fn read(state: &State) -> Result<Option<Journal>, CliError> {
        let Some(value) = state.notes.get(JOURNAL_NOTE) else { return Ok(None) };
        if let Ok(journal) = serde_json::from_value::<Journal>(value.clone()) {
            return Ok(Some(journal));
        }
        legacy(value).map(Some).ok_or_else(|| {
            Diagnostic::new(format!("the state's operation journal is not one this build knows: {value}"))
                .with_help("use the gitlab-provision release that wrote it to finish the operation")
                .into()
        })
    }

    /// Saves it (`None`: the operation is over).
    pub async fn write(state: &StateHandle, journal: Option<&Journal>) -> Result<(), CliError> {
        let value = journal.map(serde_json::to_value).transpose()?;
        state.set_note(JOURNAL_NOTE, value).await?;
        Ok(())
    }

    /// The journal as the state has it now.
    pub fn current(state: &StateHandle) -> Result<Option<Journal>, CliError> {
        Journal::read(&state.snapshot())
    }
}

/// A version 2 state's `{"kind", "phase", "started_at", "attrs"}`.
fn legacy(value: &serde_json::Value) -> Option<Journal> {
    let kind = value.get("kind")?.as_str()?;
    let phase = value.get("phase").and_then(|p| p.as_str()).unwrap_or_default();
    let started_at = value.get("started_at").and_then(|s| s.as_str()).map_or_else(now_rfc3339, str::to_string);
    let attr = |name: &str| value.get("attrs")?.get(name)?.as_str().map(str::to_string);
    match kind {
        "backup" => Some(Journal::Backup(BackupJournal {
            started_at,
            phase: match phase {
                "stop-gitlab" => BackupPhase::StoppingGitLab,
                "start-backup" => BackupPhase::StartingJob,
                "start-gitlab" => BackupPhase::StartingGitLab,
                _ => BackupPhase::Copying,
            },
            consistent: true,
            desired_before: 1,
            // The old backup stopped GitLab before its job and started it last.
            stopped_gitlab: true,
            token: attr("token").unwrap_or_else(|| format!("legacy-{}", fastrand::u64(..))),
            job: attr("job"),
            version: None,
            for_upgrade: false,
            database_snapshot: None,
        })),
        "restore" => Some(Journal::Restore(RestoreJournal {
            started_at,
            phase: if attr("new_file_system").is_some() { RestorePhase::Switching } else { RestorePhase::Restoring },
            point: attr("point")?,
            token: attr("token").unwrap_or_else(|| format!("legacy-{}", fastrand::u64(..))),
            job: attr("job"),
            new_file_system: attr("new_file_system"),
            version: None,
            desired_before: 1,
            database_snapshot: None,
            new_database: None,
        })),
        _ => None,
    }
}

/// A token unique to one attempt of one operation, at most 64 characters (EFS's creation token
/// and AWS Backup's idempotency token both take it).
pub fn attempt_token(lineage: &str, what: &str) -> String {
    let mut token = format!("gp-{}-{what}-{:016x}", &lineage[..lineage.len().min(16)], fastrand::u64(..));
    token.truncate(64);
    token
}

// ---------------------------------------------------------------------------------------------
// What the stack has been

/// The note of the GitLab versions the stack ran, oldest first.
const VERSIONS_NOTE: &str = "gitlab-versions";
/// The note of the backups the tool took, with the version each was taken at.
const BACKUPS_NOTE: &str = "backups";

/// GitLab `version` ran from `since` (RFC 3339) until the next entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VersionSince {
    pub version: String,
    pub since: String,
}

/// A backup the tool took: its recovery point and the GitLab version of its data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackupTaken {
    pub recovery_point: String,
    pub version: Option<String>,
    pub taken_at: String,
    pub consistent: bool,
    /// The RDS snapshot of the database that goes with the file system's point.
    #[serde(default)]
    pub database_snapshot: Option<String>,
}

fn read_list<T: serde::de::DeserializeOwned>(state: &State, name: &str) -> Vec<T> {
    state.notes.get(name).and_then(|v| serde_json::from_value(v.clone()).ok()).unwrap_or_default()
}

pub fn versions(state: &State) -> Vec<VersionSince> {
    read_list(state, VERSIONS_NOTE)
}

pub fn backups_taken(state: &State) -> Vec<BackupTaken> {
    read_list(state, BACKUPS_NOTE)
}

/// Notes that GitLab `version` runs from now on (nothing when it already did).
pub async fn note_version(state: &StateHandle, version: &str) -> Result<(), CliError> {
    let mut list = versions(&state.snapshot());
    if list.last().is_some_and(|v| v.version == version) {
        return Ok(());
    }
    list.push(VersionSince { version: version.to_string(), since: now_rfc3339() });
    state.set_note(VERSIONS_NOTE, Some(serde_json::to_value(list)?)).await?;
    Ok(())
}

pub async fn note_backup(state: &StateHandle, backup: BackupTaken) -> Result<(), CliError> {
    let mut list = backups_taken(&state.snapshot());
    list.retain(|b| b.recovery_point != backup.recovery_point);
    list.push(backup);
    state.set_note(BACKUPS_NOTE, Some(serde_json::to_value(list)?)).await?;
    Ok(())
}

/// The version GitLab ran at `at` (RFC 3339), from the versions noted; `None` before the first
/// note (a stack made before versions were noted, or a backup from before).
pub fn version_at(versions: &[VersionSince], at: &str) -> Option<String> {
    let at = humantime::parse_rfc3339_weak(at).ok()?;
    versions
        .iter()
        .rfind(|v| humantime::parse_rfc3339_weak(&v.since).is_ok_and(|since| since <= at))
        .map(|v| v.version.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_version_2_operation_reads_as_its_typed_journal() {
        let mut state: State = serde_json::from_value(serde_json::json!({
            "version": 3, "lineage": "abc", "serial": 1, "stack": "s", "region": "r",
            "notes": {"journal": {"kind": "restore", "phase": "restore-job", "started_at": "2026-11-28T20:00:00Z",
                "attrs": {"point": "arn:p", "job": "J1", "new_file_system": "fs-1"}}}
        }))
        .unwrap();
        let Some(Journal::Restore(restore)) = Journal::read(&state).unwrap() else { panic!("a restore") };
        assert_eq!((restore.point.as_str(), restore.job.as_deref()), ("arn:p", Some("J1")));
        assert_eq!((restore.phase, restore.new_file_system.as_deref()), (RestorePhase::Switching, Some("fs-1")));
        state.notes.insert(JOURNAL_NOTE.into(), serde_json::json!({"kind": "defrag"}));
        assert!(Journal::read(&state).is_err(), "an unknown journal is refused, not dropped");
    }

    #[test]
    fn the_version_at_a_time_is_the_last_one_deployed_before_it() {
        let versions = vec![
            VersionSince { version: "19.4.1-ce.0".into(), since: "2026-11-01T10:00:00Z".into() },
            VersionSince { version: "19.5.3-ce.0".into(), since: "2026-11-20T10:00:00Z".into() },
        ];
        assert_eq!(version_at(&versions, "2026-11-10T00:00:00Z").as_deref(), Some("19.4.1-ce.0"));
        assert_eq!(version_at(&versions, "2026-11-21T00:00:00Z").as_deref(), Some("19.5.3-ce.0"));
        assert_eq!(version_at(&versions, "2026-10-01T00:00:00Z"), None, "before anything was noted");
    }

    #[test]
    fn attempt_tokens_differ_and_fit_efs() {
        let (a, b) = (attempt_token("0123456789abcdef", "restore"), attempt_token("0123456789abcdef", "restore"));
        assert_ne!(a, b);
        assert!(a.len() <= 64, "{a}");
    }
}
