//! Errors of the pipeline, classified: user errors (bad flags, bad input files, rules that do not
//! match the state dir) versus runtime failures (IO, storage).

use tagstream_state::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ConsumerError {
    /// Something the user asked for cannot be done as asked (exit code 1).
    #[error("{0}")]
    User(String),
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
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        ConsumerError::Io {
            context: context.into(),
            source,
        }
    }

    pub fn is_user_error(&self) -> bool {
        matches!(self, ConsumerError::User(_))
    }
}

pub type Result<T, E = ConsumerError> = std::result::Result<T, E>;
