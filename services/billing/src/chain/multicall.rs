//! Many `exact` settlements in one transaction: each authorization's
//! `transferWithAuthorization` is one call of a Multicall3 `aggregate3`
//! (the standard contract at its canonical address on Base and most chains),
//! allowed to fail on its own. The token's `AuthorizationUsed` logs in the
//! receipt say which landed; for the others the token is asked whether the
//! authorization was used (by someone else first) or not (failed).

use alloy_primitives::{Address, B256, address};
use alloy_sol_types::{SolCall, sol};

use super::submit::{Outcome, SettleAuthorization, transfer_call};
use super::{Chain, Eip3009Token};

/// Multicall3's address (CREATE2, the same on every chain that has it).
pub const MULTICALL3: Address = address!("0xcA11bde05977b3631167028862bE2a173976CA11");

sol! {
    interface Multicall3 {
        struct Call3 {
            address target;
            bool allowFailure;
            bytes callData;
        }
        struct Result {
            bool success;
            bytes returnData;
        }
        function aggregate3(Call3[] calls) payable returns (Result[] returnData);
    }
}

impl Chain {
    /// Settles every authorization, in one transaction when there are
    /// several; an outcome per authorization, in order.
    pub async fn settle_many(&self, auths: &[SettleAuthorization]) -> Vec<Outcome> {
        if auths.len() <= 1 {
            let mut outcomes = Vec::with_capacity(1);
            for auth in auths {
                outcomes.push(self.settle(auth).await);
            }
            return outcomes;
        }
        let calls = auths
            .iter()
            .map(|auth| Multicall3::Call3 {
                target: auth.asset,
                allowFailure: true,
                callData: transfer_call(auth).into(),
            })
            .collect();
        let input = Multicall3::aggregate3Call { calls }.abi_encode();
        let tx_hash = match self.send(MULTICALL3, input).await {
            Ok(hash) => hash,
            // Nothing was sent (or the node cannot say): each one is retried
            // on its own when its lease lapses, asking the chain first.
            Err(outcome) => {
                let error = format!("batch not sent: {outcome:?}");
                return auths
                    .iter()
                    .map(|_| Outcome::Unknown {
                        error: error.clone(),
                    })
                    .collect();
            }
        };
        let receipt = match self.wait_receipt(tx_hash).await {
            Ok(Some(receipt)) if receipt.status() => receipt,
            other => {
                let error = format!("batch {tx_hash}: no successful receipt ({other:?})");
                return auths
                    .iter()
                    .map(|_| Outcome::Unknown {
                        error: error.clone(),
                    })
                    .collect();
            }
        };
        let block = receipt.block_number.unwrap_or_default();
        let used: Vec<(Address, B256)> = receipt
            .inner
            .logs()
            .iter()
            .filter_map(|log| log.log_decode::<Eip3009Token::AuthorizationUsed>().ok())
            .map(|log| (log.inner.authorizer, log.inner.nonce))
            .collect();
        let mut outcomes = Vec::with_capacity(auths.len());
        for auth in auths {
            if used.contains(&(auth.from, auth.nonce)) {
                outcomes.push(Outcome::Settled { tx_hash, block });
                continue;
            }
            // Its call failed inside the batch: used elsewhere first, or refused.
            outcomes.push(
                match self.nonce_used_on(auth.from, auth.nonce, auth.asset).await {
                    Ok(true) => self.find_used(auth).await,
                    Ok(false) => Outcome::Failed {
                        reason: format!("transferWithAuthorization failed in batch {tx_hash}"),
                    },
                    Err(error) => Outcome::Unknown {
                        error: error.to_string(),
                    },
                },
            );
        }
        outcomes
    }
}
