//! Settlement on chain, safe to retry: before sending, the token's
//! `authorizationState` says whether the authorization was already used (by
//! an earlier attempt of ours that crashed or timed out, or by anyone else),
//! and then the `AuthorizationUsed` log names the transaction. The token
//! itself refuses a used nonce, so no retry can ever move the money twice.

use std::time::{Duration, Instant};

use alloy_network::TransactionBuilder;
use alloy_primitives::{Address, B256, Signature, U256};
use alloy_provider::Provider;
use alloy_rpc_types_eth::{Filter, TransactionReceipt, TransactionRequest};
use alloy_sol_types::{SolCall, SolEvent};
use alloy_transport::{RpcError, TransportErrorKind};

use super::{Chain, Eip3009Token};

/// What to settle: a verified EIP-3009 authorization.
#[derive(Debug, Clone)]
pub struct SettleAuthorization {
    /// The EIP-3009 token.
    pub asset: Address,
    pub from: Address,
    pub to: Address,
    pub value: U256,
    pub valid_after: U256,
    pub valid_before: U256,
    pub nonce: B256,
    pub signature: Signature,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The money moved, in this transaction.
    Settled { tx_hash: B256, block: u64 },
    /// It did not and never will (reverted, expired, canceled).
    Failed { reason: String },
    /// Not sent: too close to `validBefore` to be mined in time.
    Expired,
    /// Not known yet (RPC down, no receipt before the timeout): retry later;
    /// the retry finds out what happened first.
    Unknown { error: String },
}

/// How far back to look for the log of an authorization used earlier.
const LOG_LOOKBACK_BLOCKS: u64 = 50_000;

impl Chain {
    pub async fn settle(&self, auth: &SettleAuthorization) -> Outcome {
        match self.nonce_used_on(auth.from, auth.nonce, auth.asset).await {
            Ok(true) => return self.find_used(auth).await,
            Ok(false) => {}
            Err(error) => {
                return Outcome::Unknown {
                    error: error.to_string(),
                };
            }
        }
        let tx_hash = match self.send(auth.asset, transfer_call(auth)).await {
            Ok(hash) => hash,
            Err(outcome) => return outcome,
        };
        match self.wait_receipt(tx_hash).await {
            Ok(Some(receipt)) if receipt.status() => Outcome::Settled {
                tx_hash,
                block: receipt.block_number.unwrap_or_default(),
            },
            // Reverted: maybe someone else's transaction used it first.
            Ok(Some(_)) => match self.nonce_used_on(auth.from, auth.nonce, auth.asset).await {
                Ok(true) => self.find_used(auth).await,
                _ => Outcome::Failed {
                    reason: format!("transaction {tx_hash} reverted"),
                },
            },
            Ok(None) => Outcome::Unknown {
                error: format!("no receipt for {tx_hash} within {:?}", self.receipt_timeout),
            },
            Err(error) => Outcome::Unknown { error },
        }
    }

    /// Sends a transaction calling `to` with `input`, with the next nonce. A
    /// send that fails leaves the nonce to be re-read from the chain; one
    /// refused for its nonce (another sender used it) is resent with a fresh
    /// one. A send whose gas estimate (a simulation) reverts is `Failed`.
    pub(crate) async fn send(&self, to: Address, input: Vec<u8>) -> Result<B256, Outcome> {
        let mut next = self.next_nonce.lock().await;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let nonce = match *next {
                Some(nonce) => nonce,
                None => self
                    .provider
                    .get_transaction_count(self.settler)
                    .pending()
                    .await
                    .map_err(|e| unknown(&e))?,
            };
            let tx = TransactionRequest::default()
                .with_from(self.settler)
                .with_to(to)
                .with_input(input.clone())
                .with_nonce(nonce);
            match self.provider.send_transaction(tx).await {
                Ok(pending) => {
                    *next = Some(nonce + 1);
                    return Ok(*pending.tx_hash());
                }
                Err(error) => {
                    *next = None;
                    match error {
                        // The estimate (a simulation) reverted: the token
                        // refuses this authorization, and always will.
                        RpcError::ErrorResp(payload) if payload.message.contains("revert") => {
                            return Err(Outcome::Failed {
                                reason: payload.message.to_string(),
                            });
                        }
                        RpcError::ErrorResp(payload)
                            if attempt < 3 && is_nonce_error(&payload.message) => {}
                        // Anything else (our gas wallet, the node) may pass.
                        other => return Err(unknown(&other)),
                    }
                }
            }
        }
    }

    /// The receipt of a transaction of ours (its gas is counted as spent).
    pub(crate) async fn wait_receipt(
        &self,
        hash: B256,
    ) -> Result<Option<TransactionReceipt>, String> {
        let receipt = self.poll_receipt(hash).await?;
        if let Some(receipt) = &receipt {
            let wei = u128::from(receipt.gas_used).saturating_mul(receipt.effective_gas_price);
            crate::metrics::gas_spent(&self.network.network, wei);
        }
        Ok(receipt)
    }

    /// Polls for the receipt: quickly at first (dev chains mine at once),
    /// then backing off to the block time. None: not within the timeout.
    pub(crate) async fn poll_receipt(
        &self,
        hash: B256,
    ) -> Result<Option<TransactionReceipt>, String> {
        let deadline = Instant::now() + self.receipt_timeout;
        let mut pause = Duration::from_millis(10);
        loop {
            match self.provider.get_transaction_receipt(hash).await {
                Ok(Some(receipt)) => {
                    let wei =
                        u128::from(receipt.gas_used).saturating_mul(receipt.effective_gas_price);
                    crate::metrics::gas_spent(&self.network.network, wei);
                    return Ok(Some(receipt));
                }
                Ok(None) => {}
                Err(error) => tracing::debug!(%error, %hash, "receipt poll failed"),
            }
            if Instant::now() + pause > deadline {
                return Ok(None);
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(500));
        }
    }

    /// The transaction that used this authorization, from its log.
    pub(super) async fn find_used(&self, auth: &SettleAuthorization) -> Outcome {
        let latest = match self.provider.get_block_number().await {
            Ok(n) => n,
            Err(e) => return unknown(&e),
        };
        let filter = Filter::new()
            .address(auth.asset)
            .event_signature(Eip3009Token::AuthorizationUsed::SIGNATURE_HASH)
            .topic1(auth.from.into_word())
            .topic2(auth.nonce)
            .from_block(latest.saturating_sub(LOG_LOOKBACK_BLOCKS))
            .to_block(latest);
        match self.provider.get_logs(&filter).await {
            Ok(logs) => match logs.first() {
                Some(log) => Outcome::Settled {
                    tx_hash: log.transaction_hash.unwrap_or_default(),
                    block: log.block_number.unwrap_or_default(),
                },
                // Used without a transfer (canceled), or too long ago to see.
                None => Outcome::Failed {
                    reason: "the authorization's nonce was used or canceled elsewhere".into(),
                },
            },
            Err(e) => unknown(&e),
        }
    }
}

/// transferWithAuthorization(from, to, value, validAfter, validBefore, nonce, v, r, s).
pub(super) fn transfer_call(auth: &SettleAuthorization) -> Vec<u8> {
    Eip3009Token::transferWithAuthorizationCall {
        from: auth.from,
        to: auth.to,
        value: auth.value,
        validAfter: auth.valid_after,
        validBefore: auth.valid_before,
        nonce: auth.nonce,
        v: 27 + u8::from(auth.signature.v()),
        r: auth.signature.r().into(),
        s: auth.signature.s().into(),
    }
    .abi_encode()
}

fn is_nonce_error(message: &str) -> bool {
    let message = message.to_ascii_lowercase();
    ["nonce", "already known", "underpriced"]
        .iter()
        .any(|m| message.contains(m))
}

pub(crate) fn unknown(error: &RpcError<TransportErrorKind>) -> Outcome {
    Outcome::Unknown {
        error: super::with_sources(error),
    }
}
