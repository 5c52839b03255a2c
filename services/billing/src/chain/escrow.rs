//! Billing's calls to the batch-settlement escrow (x402BatchSettlement):
//! deposits, claims with our authorizer's signature, sweeps, refunds (with
//! the channel's claim in the same transaction), and reads of a channel's
//! on-chain state. Transactions go through the chain's one sender (its own
//! nonces), and each waits for its receipt: a claim must be mined before the
//! sweep behind it is sent.

use alloy_network::TransactionBuilder;
use alloy_primitives::{Address, B256, Bytes, U256};
use alloy_provider::Provider;
use alloy_rpc_types_eth::{Filter, Log, TransactionReceipt, TransactionRequest};
use alloy_sol_types::{SolCall, SolEvent, SolValue, sol};

use super::{Chain, Outcome, ReadError, with_sources};
use crate::x402::batch::eip712::{ChannelConfig, ClaimEntry};
use crate::x402::batch::payload::{DepositAuthorization, SignedVoucher};
use crate::x402::batch::{BATCH_SETTLEMENT, ERC3009_COLLECTOR};

sol! {
    /// The escrow's published ABI (the parts billing uses).
    interface X402BatchSettlement {
        struct Config {
            address payer;
            address payerAuthorizer;
            address receiver;
            address receiverAuthorizer;
            address token;
            uint40 withdrawDelay;
            bytes32 salt;
        }
        struct Voucher {
            Config channel;
            uint128 maxClaimableAmount;
        }
        struct VoucherClaim {
            Voucher voucher;
            bytes signature;
            uint128 totalClaimed;
        }
        function deposit(Config config, uint128 amount, address collector, bytes collectorData);
        function claimWithSignature(VoucherClaim[] voucherClaims, bytes authorizerSignature);
        function settle(address receiver, address token);
        function refundWithSignature(Config config, uint128 amount, uint256 nonce, bytes receiverAuthorizerSignature);
        function multicall(bytes[] data) returns (bytes[] results);
        function channels(bytes32 channelId) view returns (uint128 balance, uint128 totalClaimed);
        function pendingWithdrawals(bytes32 channelId) view returns (uint128 amount, uint40 initiatedAt);
        function refundNonce(bytes32 channelId) view returns (uint256);
        event Claimed(bytes32 indexed channelId, address indexed sender, uint128 claimAmount, uint128 newTotalClaimed);
        event Settled(address indexed receiver, address indexed token, address indexed sender, uint128 amount);
        event Refunded(bytes32 indexed channelId, address indexed sender, uint128 amount);
        event WithdrawInitiated(bytes32 indexed channelId, uint128 amount, uint40 finalizeAfter);
        event WithdrawFinalized(bytes32 indexed channelId, address indexed sender, uint128 amount);
    }
}

impl From<&ChannelConfig> for X402BatchSettlement::Config {
    fn from(c: &ChannelConfig) -> Self {
        Self {
            payer: c.payer,
            payerAuthorizer: c.payerAuthorizer,
            receiver: c.receiver,
            receiverAuthorizer: c.receiverAuthorizer,
            token: c.token,
            withdrawDelay: c.withdrawDelay,
            salt: c.salt,
        }
    }
}

/// A channel as the escrow holds it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OnChain {
    pub balance: u128,
    pub total_claimed: u128,
    /// A pending timed withdrawal: its amount and when it was started (0: none).
    pub withdrawal: u128,
    pub withdraw_requested_at: u64,
    pub refund_nonce: u64,
}

/// A mined transaction of ours.
#[derive(Debug, Clone)]
pub struct Mined {
    pub tx_hash: B256,
    pub block: u64,
    /// What it cost, in wei.
    pub gas_wei: u128,
    pub logs: Vec<Log>,
}

/// One row of a claim: the latest voucher and the total to claim with it.
#[derive(Debug, Clone)]
pub struct ClaimRow {
    pub config: ChannelConfig,
    pub voucher: SignedVoucher,
    pub total_claimed: u128,
}

impl ClaimRow {
    /// The row as the receiverAuthorizer's ClaimBatch signature covers it.
    pub fn entry(&self) -> ClaimEntry {
        ClaimEntry {
            channelId: self.voucher.channel_id,
            maxClaimableAmount: self.voucher.max_claimable,
            totalClaimed: self.total_claimed,
        }
    }

    fn abi(&self) -> X402BatchSettlement::VoucherClaim {
        X402BatchSettlement::VoucherClaim {
            voucher: X402BatchSettlement::Voucher {
                channel: (&self.config).into(),
                maxClaimableAmount: self.voucher.max_claimable,
            },
            signature: self.voucher.signature.clone(),
            totalClaimed: self.total_claimed,
        }
    }
}

impl Chain {
    async fn read(&self, data: Vec<u8>) -> Result<alloy_primitives::Bytes, ReadError> {
        let tx = TransactionRequest::default()
            .with_to(BATCH_SETTLEMENT)
            .with_input(data);
        self.provider
            .call(tx)
            .await
            .map_err(|e| ReadError(with_sources(&e)))
    }

    /// The channel's balance, claims, pending withdrawal and refund nonce (three reads at once).
    pub async fn channel(&self, channel_id: B256) -> Result<OnChain, ReadError> {
        use X402BatchSettlement::{channelsCall, pendingWithdrawalsCall, refundNonceCall};
        let (state, withdrawal, nonce) = tokio::try_join!(
            self.read(
                channelsCall {
                    channelId: channel_id
                }
                .abi_encode()
            ),
            self.read(
                pendingWithdrawalsCall {
                    channelId: channel_id
                }
                .abi_encode()
            ),
            self.read(
                refundNonceCall {
                    channelId: channel_id
                }
                .abi_encode()
            ),
        )?;
        let bad = |e: alloy_sol_types::Error| ReadError(e.to_string());
        let state = channelsCall::abi_decode_returns(&state).map_err(bad)?;
        let withdrawal = pendingWithdrawalsCall::abi_decode_returns(&withdrawal).map_err(bad)?;
        let nonce = refundNonceCall::abi_decode_returns(&nonce).map_err(bad)?;
        Ok(OnChain {
            balance: state.balance,
            total_claimed: state.totalClaimed,
            withdrawal: withdrawal.amount,
            withdraw_requested_at: withdrawal.initiatedAt.to::<u64>(),
            refund_nonce: u64::try_from(nonce).unwrap_or(u64::MAX),
        })
    }

    /// Sends a call to the escrow and waits for it to be mined.
    async fn transact(&self, input: Vec<u8>) -> Result<Mined, Outcome> {
        let tx_hash = self.send(BATCH_SETTLEMENT, input).await?;
        let receipt = match self.wait_receipt(tx_hash).await {
            Ok(Some(receipt)) => receipt,
            Ok(None) => {
                return Err(Outcome::Unknown {
                    error: format!("no receipt for {tx_hash} within {:?}", self.receipt_timeout),
                });
            }
            Err(error) => return Err(Outcome::Unknown { error }),
        };
        if !receipt.status() {
            return Err(Outcome::Failed {
                reason: format!("transaction {tx_hash} reverted"),
            });
        }
        Ok(mined(tx_hash, &receipt))
    }

    /// A transaction someone else (an external facilitator) submitted, once
    /// mined: its logs, and no gas of ours.
    pub async fn mined_elsewhere(&self, tx_hash: B256) -> Result<Mined, Outcome> {
        match self.poll_receipt(tx_hash).await {
            Ok(Some(receipt)) if receipt.status() => Ok(Mined {
                gas_wei: 0,
                ..mined(tx_hash, &receipt)
            }),
            Ok(Some(_)) => Err(Outcome::Failed {
                reason: format!("transaction {tx_hash} reverted"),
            }),
            Ok(None) => Err(Outcome::Unknown {
                error: format!("no receipt for {tx_hash} within {:?}", self.receipt_timeout),
            }),
            Err(error) => Err(Outcome::Unknown { error }),
        }
    }

    /// Pulls the payer's deposit into the channel through the EIP-3009 collector.
    pub async fn deposit(
        &self,
        config: &ChannelConfig,
        deposit: &DepositAuthorization,
    ) -> Result<Mined, Outcome> {
        let collector_data = (
            deposit.valid_after,
            deposit.valid_before,
            deposit.salt,
            deposit.signature.clone(),
        )
            .abi_encode_params();
        let call = X402BatchSettlement::depositCall {
            config: config.into(),
            amount: deposit.amount,
            collector: ERC3009_COLLECTOR,
            collectorData: collector_data.into(),
        };
        self.transact(call.abi_encode()).await
    }

    /// Claims every row in one transaction, authorized by `signature` (our
    /// receiverAuthorizer's, over the batch).
    pub async fn claim(&self, rows: &[ClaimRow], signature: Bytes) -> Result<Mined, Outcome> {
        self.transact(claim_call(rows, signature)).await
    }

    /// Sends what was claimed for (receiver, token) to the receiver.
    pub async fn sweep(&self, receiver: Address, token: Address) -> Result<Mined, Outcome> {
        let call = X402BatchSettlement::settleCall { receiver, token };
        self.transact(call.abi_encode()).await
    }

    /// Refunds `amount` to the payer; `claim` (the channel's latest voucher,
    /// if not yet claimed) goes first in the same transaction, so what was
    /// earned is never refunded.
    pub async fn refund(
        &self,
        config: &ChannelConfig,
        amount: u128,
        nonce: u64,
        refund_signature: Bytes,
        claim: Option<(&ClaimRow, Bytes)>,
    ) -> Result<Mined, Outcome> {
        let refund = X402BatchSettlement::refundWithSignatureCall {
            config: config.into(),
            amount,
            nonce: U256::from(nonce),
            receiverAuthorizerSignature: refund_signature,
        }
        .abi_encode();
        let input = match claim {
            None => refund,
            Some((row, signature)) => X402BatchSettlement::multicallCall {
                data: vec![
                    claim_call(std::slice::from_ref(row), signature).into(),
                    refund.into(),
                ],
            }
            .abi_encode(),
        };
        self.transact(input).await
    }

    /// Channels whose payer started a timed withdrawal in blocks `from..=to`.
    pub async fn withdrawals_started(&self, from: u64, to: u64) -> Result<Vec<B256>, ReadError> {
        let filter = Filter::new()
            .address(BATCH_SETTLEMENT)
            .event_signature(X402BatchSettlement::WithdrawInitiated::SIGNATURE_HASH)
            .from_block(from)
            .to_block(to);
        let logs = self
            .provider
            .get_logs(&filter)
            .await
            .map_err(|e| ReadError(with_sources(&e)))?;
        Ok(logs
            .iter()
            .filter_map(|log| log.topics().get(1).copied())
            .collect())
    }

    pub async fn block_number(&self) -> Result<u64, ReadError> {
        self.provider
            .get_block_number()
            .await
            .map_err(|e| ReadError(with_sources(&e)))
    }
}

fn claim_call(rows: &[ClaimRow], signature: Bytes) -> Vec<u8> {
    X402BatchSettlement::claimWithSignatureCall {
        voucherClaims: rows.iter().map(ClaimRow::abi).collect(),
        authorizerSignature: signature,
    }
    .abi_encode()
}

fn mined(tx_hash: B256, receipt: &TransactionReceipt) -> Mined {
    Mined {
        tx_hash,
        block: receipt.block_number.unwrap_or_default(),
        gas_wei: u128::from(receipt.gas_used).saturating_mul(receipt.effective_gas_price),
        logs: receipt.inner.logs().to_vec(),
    }
}

impl Mined {
    /// (channel, its new totalClaimed) for each channel this claim moved.
    pub fn claimed(&self) -> Vec<(B256, u128)> {
        self.logs
            .iter()
            .filter_map(|log| log.log_decode::<X402BatchSettlement::Claimed>().ok())
            .map(|log| (log.inner.channelId, log.inner.newTotalClaimed))
            .collect()
    }

    /// What a sweep sent.
    pub fn swept(&self) -> u128 {
        self.logs
            .iter()
            .filter_map(|log| log.log_decode::<X402BatchSettlement::Settled>().ok())
            .map(|log| log.inner.amount)
            .sum()
    }

    /// What a refund returned.
    pub fn refunded(&self) -> u128 {
        self.logs
            .iter()
            .filter_map(|log| log.log_decode::<X402BatchSettlement::Refunded>().ok())
            .map(|log| log.inner.amount)
            .sum()
    }
}
