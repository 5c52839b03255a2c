//! Billing errors, mapped to gRPC codes in one place.

use tonic::{Code, Status};

#[derive(Debug, thiserror::Error)]
pub enum BillingError {
    #[error("configuration: {0}")]
    Config(String),
    #[error("invalid request: {0}")]
    InvalidArgument(String),
    #[error("{0} is not offered by this deployment: payments are disabled (free mode)")]
    PaymentsDisabled(&'static str),
    #[error("ledger refused the write: {0}")]
    Ledger(String),
    #[error("ledger unreachable: {0}")]
    LedgerUnavailable(#[from] Status),
}

impl From<BillingError> for Status {
    fn from(error: BillingError) -> Self {
        let code = match &error {
            BillingError::Config(_) => Code::FailedPrecondition,
            BillingError::InvalidArgument(_) => Code::InvalidArgument,
            BillingError::PaymentsDisabled(_) => Code::Unimplemented,
            BillingError::Ledger(_) => Code::Internal,
            BillingError::LedgerUnavailable(_) => Code::Unavailable,
        };
        Status::new(code, error.to_string())
    }
}
