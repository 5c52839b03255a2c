//! The scheme's EIP-712 messages, all under the escrow's domain ("x402 Batch
//! Settlement", "1", the chain, the escrow's address): a channel's id is the
//! hash of its config; payers sign cumulative vouchers; our
//! receiverAuthorizer signs claim batches and refunds. EIP-3009's
//! ReceiveWithAuthorization (the deposit) is signed under the token's domain.

use alloy_primitives::{Address, B256, U256, keccak256};
use alloy_sol_types::{Eip712Domain, SolStruct, SolValue, sol};

use super::BATCH_SETTLEMENT;

sol! {
    /// A channel's immutable identity; its EIP-712 hash is the channel id.
    #[derive(Debug, PartialEq, Eq, Hash)]
    struct ChannelConfig {
        address payer;
        address payerAuthorizer;
        address receiver;
        address receiverAuthorizer;
        address token;
        uint40 withdrawDelay;
        bytes32 salt;
    }

    /// What a payer signs per call: the cumulative ceiling of the channel.
    struct Voucher {
        bytes32 channelId;
        uint128 maxClaimableAmount;
    }

    /// A cooperative refund, signed by the receiverAuthorizer.
    struct Refund {
        bytes32 channelId;
        uint256 nonce;
        uint128 amount;
    }

    /// One row of a claim batch.
    struct ClaimEntry {
        bytes32 channelId;
        uint128 maxClaimableAmount;
        uint128 totalClaimed;
    }

    /// A claim batch, signed by the receiverAuthorizer for claimWithSignature.
    struct ClaimBatch {
        ClaimEntry[] claims;
    }

    /// EIP-3009's deposit authorization (to = the deposit collector).
    struct ReceiveWithAuthorization {
        address from;
        address to;
        uint256 value;
        uint256 validAfter;
        uint256 validBefore;
        bytes32 nonce;
    }
}

/// The escrow's EIP-712 domain on `chain_id`.
pub fn domain(chain_id: u64) -> Eip712Domain {
    Eip712Domain::new(
        Some("x402 Batch Settlement".into()),
        Some("1".into()),
        Some(U256::from(chain_id)),
        Some(BATCH_SETTLEMENT),
        None,
    )
}

/// The digests of one chain's escrow domain, with its separator hashed once.
#[derive(Debug, Clone, Copy)]
pub struct Escrow {
    separator: B256,
}

impl Escrow {
    pub fn new(chain_id: u64) -> Self {
        Self {
            separator: domain(chain_id).separator(),
        }
    }

    /// keccak256(0x1901 ‖ separator ‖ struct hash), on the stack.
    fn typed(&self, struct_hash: B256) -> B256 {
        typed(self.separator, struct_hash)
    }

    pub fn channel_id(&self, config: &ChannelConfig) -> B256 {
        self.typed(config.eip712_hash_struct())
    }

    pub fn voucher_digest(&self, channel_id: B256, max_claimable: u128) -> B256 {
        let voucher = Voucher {
            channelId: channel_id,
            maxClaimableAmount: max_claimable,
        };
        self.typed(voucher.eip712_hash_struct())
    }

    pub fn refund_digest(&self, channel_id: B256, nonce: U256, amount: u128) -> B256 {
        let refund = Refund {
            channelId: channel_id,
            nonce,
            amount,
        };
        self.typed(refund.eip712_hash_struct())
    }

    pub fn claim_batch_digest(&self, claims: Vec<ClaimEntry>) -> B256 {
        self.typed(ClaimBatch { claims }.eip712_hash_struct())
    }
}

pub fn typed(separator: B256, struct_hash: B256) -> B256 {
    let mut preimage = [0u8; 66];
    preimage[..2].copy_from_slice(&[0x19, 0x01]);
    preimage[2..34].copy_from_slice(separator.as_slice());
    preimage[34..].copy_from_slice(struct_hash.as_slice());
    keccak256(preimage)
}

/// The EIP-3009 nonce the deposit collector expects: keccak256(abi.encode(channelId, salt)).
pub fn deposit_nonce(channel_id: B256, salt: U256) -> B256 {
    keccak256((channel_id, salt).abi_encode())
}

/// A deposit authorization's digest under the token's domain separator.
pub fn receive_digest(token_separator: B256, message: &ReceiveWithAuthorization) -> B256 {
    typed(token_separator, message.eip712_hash_struct())
}

/// The zero address means "no payer authorizer": the payer signs vouchers.
pub fn voucher_signer(config: &ChannelConfig) -> Address {
    if config.payerAuthorizer.is_zero() {
        config.payer
    } else {
        config.payerAuthorizer
    }
}
