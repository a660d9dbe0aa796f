//! Errors of the pipeline, classified by what to do about them:
//!
//! - [`ConsumerError::User`]: something the user asked for cannot be done as asked (bad flags,
//!   bad input files, rules that do not match the state dir, topics that do not fit): fix the
//!   input (exit code 1).
//! - [`ConsumerError::Transient`]: broker or network trouble that may pass (a cluster that
//!   cannot be asked yet): retried where the caller can wait.
//! - [`ConsumerError::Internal`]: a bug, or a pipeline thread that stopped: the pipeline stops
//!   without committing anything further.
//! - [`ConsumerError::Store`], [`ConsumerError::Io`] (real I/O errors only) and
//!   [`ConsumerError::Corrupt`]: runtime failures of the storage and the files.
//!
//! Every class but `User` exits with code 2; the state stays consistent (a restart resumes from
//! the last commit).

use tagstream_state::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ConsumerError {
    /// Something the user asked for cannot be done as asked (exit code 1).
    #[error("{0}")]
    User(String),
    /// Broker or network trouble that may pass: what was being done, and what went wrong.
    #[error("{context}: {message}")]
    Transient { context: String, message: String },
    /// A bug, or a pipeline thread that stopped.
    #[error("{0}")]
    Internal(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    /// Stored data could not be read back.
    #[error("corrupt state: {0}")]
    Corrupt(String),
}

impl ConsumerError {
    /// A real I/O error, with what was being done.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        ConsumerError::Io {
            context: context.into(),
            source,
        }
    }

    /// Broker or network trouble that may pass.
    pub fn transient(context: impl Into<String>, message: impl Into<String>) -> Self {
        ConsumerError::Transient {
            context: context.into(),
            message: message.into(),
        }
    }

    pub fn is_user_error(&self) -> bool {
        matches!(self, ConsumerError::User(_))
    }

    /// Whether waiting and trying again may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, ConsumerError::Transient { .. })
    }
}

pub type Result<T, E = ConsumerError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_and_texts() {
        let user = ConsumerError::User("bad flag --x".into());
        assert!(user.is_user_error() && !user.is_transient());
        assert_eq!(user.to_string(), "bad flag --x");

        let transient = ConsumerError::transient("kafka metadata", "all brokers down");
        assert!(transient.is_transient() && !transient.is_user_error());
        assert_eq!(transient.to_string(), "kafka metadata: all brokers down");

        let internal = ConsumerError::Internal("the source thread panicked".into());
        assert!(!internal.is_transient() && !internal.is_user_error());
        assert_eq!(internal.to_string(), "the source thread panicked");

        let io = ConsumerError::io("writing out.ndjson", std::io::Error::other("disk full"));
        assert!(!io.is_transient() && !io.is_user_error());
        assert_eq!(io.to_string(), "writing out.ndjson: disk full");
    }
}
