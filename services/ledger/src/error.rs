//! Ledger errors, mapped to gRPC codes in one place.

use tonic::{Code, Status};

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    #[error("invalid request: {0}")]
    InvalidArgument(String),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("batch not recorded, retry with the same idempotency keys: {0}")]
    BatchFailed(String),
    #[error("the ledger is shutting down")]
    ShuttingDown,
}

impl From<LedgerError> for Status {
    fn from(error: LedgerError) -> Self {
        let code = match &error {
            LedgerError::Database(sqlx::Error::PoolTimedOut | sqlx::Error::Io(_)) => {
                Code::Unavailable
            }
            LedgerError::Database(_) | LedgerError::Migration(_) => Code::Internal,
            LedgerError::InvalidArgument(_) => Code::InvalidArgument,
            LedgerError::NotFound(_) => Code::NotFound,
            LedgerError::BatchFailed(_) | LedgerError::ShuttingDown => Code::Unavailable,
        };
        if code == Code::Internal {
            tracing::error!(%error, "ledger failure");
        }
        Status::new(code, error.to_string())
    }
}
