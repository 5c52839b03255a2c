//! x402 `batch-settlement` on EVM: the payer deposits into an escrow channel
//! once, pays each call with a signed cumulative voucher (checked here in
//! microseconds, no chain or ledger on the way), and the receiver claims many
//! channels' latest vouchers per transaction. This module is the protocol:
//! messages, payloads, offers, checks and wire reasons. The channel book that
//! serves calls lives in `crate::channels`; the claim worker in
//! `crate::workers`.

pub mod eip712;
pub mod offer;
pub mod payload;
pub mod verify;

use alloy_primitives::{Address, address};

pub const SCHEME: &str = "batch-settlement";

/// The escrow and its EIP-3009 deposit collector, at the same address on
/// every chain (CREATE2); the official clients hard-code them.
pub const BATCH_SETTLEMENT: Address = address!("0x4020074e9dF2ce1deE5A9C1b5c3f541D02a10003");
pub const ERC3009_COLLECTOR: Address = address!("0x4020806089470a89826cB9fB1f4059150b550004");

/// The escrow's bounds on a channel's withdrawal delay, in seconds.
pub const MIN_WITHDRAW_DELAY: u64 = 900;
pub const MAX_WITHDRAW_DELAY: u64 = 2_592_000;

/// Why a batch-settlement payment was refused: the scheme's wire strings
/// (x402's `errors.py`), which clients match on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchReason {
    PayloadType,
    VoucherPayload,
    DepositPayload,
    RefundPayload,
    ChannelIdInvalid,
    ChannelIdMismatch,
    ChannelNotFound,
    ChannelBusy,
    Receiver,
    ReceiverAuthorizer,
    Token,
    WithdrawDelay,
    VoucherSignature,
    CumulativeMismatch,
    CumulativeExceedsBalance,
    CumulativeBelowClaimed,
    ReceiveSignature,
    ValidAfter,
    ValidBefore,
    BelowMinDeposit,
    DepositFailed,
    RefundNoBalance,
    RefundAmountInvalid,
    RefundFailed,
    RpcReadFailed,
    StateUnavailable,
    // What the facilitator API answers other sellers with, too.
    Scheme,
    NetworkMismatch,
    WithdrawDelayRange,
    InsufficientBalance,
    ClaimPayload,
    ClaimFailed,
    SettlePayload,
    SettleFailed,
    AuthorizerMismatch,
    UnknownSettleAction,
}

impl BatchReason {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::PayloadType => "invalid_batch_settlement_evm_payload_type",
            Self::VoucherPayload => "invalid_batch_settlement_evm_voucher_payload",
            Self::DepositPayload => "invalid_batch_settlement_evm_deposit_payload",
            Self::RefundPayload => "invalid_batch_settlement_evm_refund_payload",
            Self::ChannelIdInvalid => "invalid_batch_settlement_evm_channel_id_invalid",
            Self::ChannelIdMismatch => "invalid_batch_settlement_evm_channel_id_mismatch",
            Self::ChannelNotFound => "invalid_batch_settlement_evm_channel_not_found",
            Self::ChannelBusy => "invalid_batch_settlement_evm_channel_busy",
            Self::Receiver => "invalid_batch_settlement_evm_receiver_mismatch",
            Self::ReceiverAuthorizer => "invalid_batch_settlement_evm_receiver_authorizer_mismatch",
            Self::Token => "invalid_batch_settlement_evm_token_mismatch",
            Self::WithdrawDelay => "invalid_batch_settlement_evm_withdraw_delay_mismatch",
            Self::VoucherSignature => "invalid_batch_settlement_evm_voucher_signature",
            Self::CumulativeMismatch => "invalid_batch_settlement_evm_cumulative_amount_mismatch",
            Self::CumulativeExceedsBalance => {
                "invalid_batch_settlement_evm_cumulative_exceeds_balance"
            }
            Self::CumulativeBelowClaimed => "invalid_batch_settlement_evm_cumulative_below_claimed",
            Self::ReceiveSignature => {
                "invalid_batch_settlement_evm_receive_authorization_signature"
            }
            Self::ValidAfter => "invalid_batch_settlement_evm_payload_authorization_valid_after",
            Self::ValidBefore => "invalid_batch_settlement_evm_payload_authorization_valid_before",
            Self::BelowMinDeposit => "invalid_batch_settlement_evm_deposit_below_min_deposit",
            Self::DepositFailed => "invalid_batch_settlement_evm_deposit_transaction_failed",
            Self::RefundNoBalance => "invalid_batch_settlement_evm_refund_no_balance",
            Self::RefundAmountInvalid => "invalid_batch_settlement_evm_refund_amount_invalid",
            Self::RefundFailed => "invalid_batch_settlement_evm_refund_transaction_failed",
            Self::RpcReadFailed => "invalid_batch_settlement_evm_rpc_read_failed",
            Self::StateUnavailable => "invalid_batch_settlement_evm_verification_state_unavailable",
            Self::Scheme => "invalid_batch_settlement_evm_scheme",
            Self::NetworkMismatch => "invalid_batch_settlement_evm_network_mismatch",
            Self::WithdrawDelayRange => "invalid_batch_settlement_evm_withdraw_delay_out_of_range",
            Self::InsufficientBalance => "invalid_batch_settlement_evm_insufficient_balance",
            Self::ClaimPayload => "invalid_batch_settlement_evm_claim_payload",
            Self::ClaimFailed => "invalid_batch_settlement_evm_claim_transaction_failed",
            Self::SettlePayload => "invalid_batch_settlement_evm_settle_payload",
            Self::SettleFailed => "invalid_batch_settlement_evm_settle_transaction_failed",
            Self::AuthorizerMismatch => "invalid_batch_settlement_evm_authorizer_address_mismatch",
            Self::UnknownSettleAction => "invalid_batch_settlement_evm_unknown_settle_action",
        }
    }
}

impl std::fmt::Display for BatchReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::error::Error for BatchReason {}
