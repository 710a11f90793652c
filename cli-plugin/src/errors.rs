//! How a command fails, and how cf shows it.

/// A command's failure, shown the way the cf CLI shows it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// `Incorrect Usage: ...` on stderr, then the help; no `FAILED`.
    #[error("Incorrect Usage: {0}")]
    FlagUsage(String),
    /// `Incorrect Usage: ...` on stderr, `FAILED`, a blank line, then the help.
    #[error("Incorrect Usage: {0}")]
    Usage(String),
    /// The message on stderr, then `FAILED`.
    #[error("{0}")]
    Message(String),
    /// A 401 from Cloud Controller or the policy API: worth one retry with a fresh token.
    #[error("{0}")]
    Unauthorized(String),
}
