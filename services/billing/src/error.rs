//! Billing errors, mapped to gRPC codes in one place.

use tonic::metadata::MetadataValue;
use tonic::{Code, Status};

#[derive(Debug, thiserror::Error)]
pub enum BillingError {
    #[error("configuration: {0}")]
    Config(String),
    #[error("invalid request: {0}")]
    InvalidArgument(String),
    /// The payment header is not what x402 sends: the client's mistake (400).
    #[error(
        "The {header} header is malformed: {why}. It must be the base64 encoding of the x402 payment payload JSON."
    )]
    MalformedPayment { header: String, why: &'static str },
    #[error("{0} is not offered by this deployment: payments are disabled (free mode)")]
    PaymentsDisabled(&'static str),
    #[error("ledger refused the write: {0}")]
    Ledger(String),
    #[error("ledger unreachable: {0}")]
    LedgerUnavailable(#[from] Status),
    #[error("{0}")]
    Chain(#[from] crate::chain::ReadError),
    #[error("chain outcome unknown: {0}")]
    ChainUnavailable(String),
}

impl From<BillingError> for Status {
    fn from(error: BillingError) -> Self {
        let code = match &error {
            BillingError::Config(_) => Code::FailedPrecondition,
            BillingError::InvalidArgument(_) | BillingError::MalformedPayment { .. } => {
                Code::InvalidArgument
            }
            BillingError::PaymentsDisabled(_) => Code::Unimplemented,
            BillingError::Ledger(_) => Code::Internal,
            BillingError::LedgerUnavailable(_)
            | BillingError::Chain(_)
            | BillingError::ChainUnavailable(_) => Code::Unavailable,
        };
        let mut status = Status::new(code, error.to_string());
        if matches!(error, BillingError::MalformedPayment { .. }) {
            status.metadata_mut().insert(
                "x-rungate-code",
                MetadataValue::from_static("invalid_payment_header"),
            );
        }
        status
    }
}
