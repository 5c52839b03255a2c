//! x402, all of it: the HTTP side (headers, the 402, payment responses), the
//! payment envelope, and one module per scheme: `exact_evm` (EIP-3009
//! transferWithAuthorization per call) and `batch` (batch-settlement: an
//! escrow channel per payer, a voucher per call).

pub mod batch;
pub mod exact_evm;
pub mod http;
pub mod networks;
pub mod payment;
pub mod signature;

/// Why a payment was refused, in its scheme's wire strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    Exact(InvalidReason),
    Batch(batch::BatchReason),
}

impl Refused {
    pub fn as_str(&self) -> &'static str {
        match self {
            Refused::Exact(reason) => reason.as_str(),
            Refused::Batch(reason) => reason.as_str(),
        }
    }

    /// The scheme whose strings the reason is in (the envelope's own
    /// reasons, such as an unsupported version, are `exact`'s set).
    pub fn scheme(&self) -> &'static str {
        match self {
            Refused::Exact(_) => exact_evm::SCHEME,
            Refused::Batch(_) => batch::SCHEME,
        }
    }
}

impl From<InvalidReason> for Refused {
    fn from(reason: InvalidReason) -> Self {
        Refused::Exact(reason)
    }
}

impl From<batch::BatchReason> for Refused {
    fn from(reason: batch::BatchReason) -> Self {
        Refused::Batch(reason)
    }
}

/// Why a payment was refused: the spec's `invalidReason` strings (and the
/// reference implementation's where the spec names none).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InvalidReason {
    #[error("invalid_x402_version")]
    Version,
    #[error("unsupported_scheme")]
    Scheme,
    #[error("invalid_network")]
    Network,
    /// v2 `accepted` is not one of the offers made for this request.
    #[error("invalid_payment_requirements")]
    Requirements,
    #[error("invalid_payload")]
    Payload,
    #[error("invalid_exact_evm_payload_signature")]
    Signature,
    #[error("invalid_exact_evm_payload_recipient_mismatch")]
    Recipient,
    #[error("invalid_exact_evm_payload_authorization_valid_after")]
    ValidAfter,
    #[error("invalid_exact_evm_payload_authorization_valid_before")]
    ValidBefore,
    #[error("invalid_exact_evm_payload_authorization_value")]
    Value,
    /// Seen by this server before, or already used on chain.
    #[error("invalid_exact_evm_nonce_already_used")]
    NonceUsed,
    #[error("insufficient_funds")]
    InsufficientFunds,
    /// The chain could not be read to check the nonce or balance.
    #[error("unexpected_verify_error")]
    Unexpected,
}

impl InvalidReason {
    const ALL: [InvalidReason; 13] = [
        InvalidReason::Version,
        InvalidReason::Scheme,
        InvalidReason::Network,
        InvalidReason::Requirements,
        InvalidReason::Payload,
        InvalidReason::Signature,
        InvalidReason::Recipient,
        InvalidReason::ValidAfter,
        InvalidReason::ValidBefore,
        InvalidReason::Value,
        InvalidReason::NonceUsed,
        InvalidReason::InsufficientFunds,
        InvalidReason::Unexpected,
    ];

    /// A reason from another implementation (an external facilitator).
    pub fn parse(reason: &str) -> Self {
        Self::ALL
            .into_iter()
            .find(|r| r.as_str() == reason)
            .unwrap_or(InvalidReason::Unexpected)
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            InvalidReason::Version => "invalid_x402_version",
            InvalidReason::Scheme => "unsupported_scheme",
            InvalidReason::Network => "invalid_network",
            InvalidReason::Requirements => "invalid_payment_requirements",
            InvalidReason::Payload => "invalid_payload",
            InvalidReason::Signature => "invalid_exact_evm_payload_signature",
            InvalidReason::Recipient => "invalid_exact_evm_payload_recipient_mismatch",
            InvalidReason::ValidAfter => "invalid_exact_evm_payload_authorization_valid_after",
            InvalidReason::ValidBefore => "invalid_exact_evm_payload_authorization_valid_before",
            InvalidReason::Value => "invalid_exact_evm_payload_authorization_value",
            InvalidReason::NonceUsed => "invalid_exact_evm_nonce_already_used",
            InvalidReason::InsufficientFunds => "insufficient_funds",
            InvalidReason::Unexpected => "unexpected_verify_error",
        }
    }
}

#[cfg(test)]
mod fuzz;
