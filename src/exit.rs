//! How a run ends: an exit status, and for a failure the error with what to do next. Each
//! error's class is decided where it is made (by its type), not guessed afterwards.

use crate::aws::credentials::ConnectError;
use crate::config::ConfigError;
use crate::state::StateError;

/// The process's exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// Done; `plan --detailed-exitcode`: nothing would change.
    Success,
    /// Something went wrong while working.
    Failure,
    /// A usage or configuration mistake, found before anything was changed. Also `plan
    /// --detailed-exitcode`'s "something would change" (as Terraform's).
    Usage,
    /// `status --check`: something is missing, changed, unknown or unhealthy.
    Degraded,
    /// Stopped by Ctrl-C or SIGTERM, with the state consistent.
    Interrupted,
}

impl ExitStatus {
    pub fn code(self) -> u8 {
        match self {
            ExitStatus::Success => 0,
            ExitStatus::Failure => 1,
            ExitStatus::Usage => 2,
            ExitStatus::Degraded => 3,
            ExitStatus::Interrupted => 130,
        }
    }
}

pub use ground::{Diagnostic, Help};

/// The help an error carries: its own (a [`Diagnostic`] or a typed error that knows what to do),
/// or that of the first error in its chain that has one. The one place that knows which error
/// types carry help.
pub fn help_in(error: &anyhow::Error) -> Option<String> {
    error.chain().find_map(|e| {
        let as_help: Option<&dyn Help> = if let Some(d) = e.downcast_ref::<Diagnostic>() {
            Some(d)
        } else if let Some(e) = e.downcast_ref::<StateError>() {
            Some(e)
        } else if let Some(e) = e.downcast_ref::<ConfigError>() {
            Some(e)
        } else if let Some(e) = e.downcast_ref::<ConnectError>() {
            Some(e)
        } else if let Some(e) = e.downcast_ref::<crate::gitlab_version::VersionError>() {
            Some(e)
        } else if let Some(e) = e.downcast_ref::<crate::engine::NotOurs>() {
            Some(e)
        } else if let Some(e) = e.downcast_ref::<crate::steps::service::NotHealthy>() {
            Some(e)
        } else {
            None
        };
        as_help.and_then(Help::help)
    })
}

/// A failed run: the error, its class, and lines that say where things stand.
#[derive(Debug)]
pub struct CliError {
    pub status: ExitStatus,
    pub error: anyhow::Error,
    /// Said after the error, before its help: what was recorded, what did not run.
    pub context: Vec<String>,
    /// The one next step, when the error's own text does not already say it.
    pub help: Option<String>,
}

impl CliError {
    pub fn new(status: ExitStatus, error: impl Into<anyhow::Error>) -> Self {
        CliError { status, error: error.into(), context: Vec::new(), help: None }
    }

    pub fn usage(error: impl Into<anyhow::Error>) -> Self {
        CliError::new(ExitStatus::Usage, error)
    }

    pub fn failure(error: impl Into<anyhow::Error>) -> Self {
        CliError::new(ExitStatus::Failure, error)
    }

    pub fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    pub fn with_context(mut self, line: impl Into<String>) -> Self {
        self.context.push(line.into());
        self
    }
}

impl From<anyhow::Error> for CliError {
    fn from(error: anyhow::Error) -> Self {
        CliError::failure(error)
    }
}

impl From<ConfigError> for CliError {
    fn from(error: ConfigError) -> Self {
        CliError::usage(error)
    }
}

/// A diagnostic returned as such is a refusal or a mistake of the user's, found before anything
/// changed (a diagnostic inside a failed step's error is that step's failure).
impl From<Diagnostic> for CliError {
    fn from(error: Diagnostic) -> Self {
        CliError::usage(error)
    }
}

impl From<StateError> for CliError {
    /// A state that is not usable as it is (damaged, another version's, a link or special file),
    /// or a stack another run holds, is a refusal: nothing was done, exit 2. An I/O error is not.
    fn from(error: StateError) -> Self {
        match error {
            // A run stopped by a conflicting write did work: a failure, not a refusal.
            StateError::Io { .. } | StateError::Store { .. } | StateError::Conflict { .. } => CliError::failure(error),
            _ => CliError::usage(error),
        }
    }
}

impl From<ConnectError> for CliError {
    fn from(error: ConnectError) -> Self {
        if error.is_users() { CliError::usage(error) } else { CliError::failure(error) }
    }
}

impl From<crate::aws::AwsError> for CliError {
    fn from(error: crate::aws::AwsError) -> Self {
        CliError::failure(error)
    }
}

impl From<std::io::Error> for CliError {
    fn from(error: std::io::Error) -> Self {
        CliError::failure(error)
    }
}

impl From<serde_json::Error> for CliError {
    fn from(error: serde_json::Error) -> Self {
        CliError::failure(error)
    }
}

pub type CliResult = Result<ExitStatus, CliError>;
