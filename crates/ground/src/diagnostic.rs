//! Errors for people: what happened, and separately what to do about it. The printer places
//! the help line; nothing ever parses it back out of the message.

/// An error with its own help, as a value: a refusal, a check that failed, a resource that is
/// not the stack's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Diagnostic {
    pub message: String,
    pub help: Option<String>,
}

impl Diagnostic {
    pub fn new(message: impl Into<String>) -> Self {
        Diagnostic { message: message.into(), help: None }
    }

    pub fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }
}

/// An error type that knows what the user can do about it (variants of an enum differ).
pub trait Help {
    fn help(&self) -> Option<String>;
}

impl Help for Diagnostic {
    fn help(&self) -> Option<String> {
        self.help.clone()
    }
}
