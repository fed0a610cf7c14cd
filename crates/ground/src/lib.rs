//! The ground floor of gitlab-provision: the generic step engine (knows nothing of AWS or
//! GitLab), the state file, and the stack's vocabulary of keys and kinds. No AWS SDK is a
//! dependency of this crate, so the compiler keeps the layering: nothing here can reach up.

pub mod diagnostic;
pub mod engine;
pub mod keys;
pub mod state;

pub use diagnostic::{Diagnostic, Help};
