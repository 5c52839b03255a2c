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
    /// Settlement is behind: a new `exact` payment would not be settled before it expires.
    #[error("settlement is behind; retry in {retry_after} s")]
    Overloaded { retry_after: u32 },
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
            | BillingError::ChainUnavailable(_)
            | BillingError::Overloaded { .. } => Code::Unavailable,
        };
        let mut status = Status::new(code, error.to_string());
        if let BillingError::Overloaded { retry_after } = &error
            && let Ok(value) = MetadataValue::try_from(retry_after.to_string())
        {
            status.metadata_mut().insert("retry-after", value);
        }
        if matches!(error, BillingError::MalformedPayment { .. }) {
            status.metadata_mut().insert(
                "x-rungate-code",
                MetadataValue::from_static("invalid_payment_header"),
            );
        }
        status
    }
}
