//! Ledger records with test defaults, for the tests and benchmarks that write
//! to the ledger. Override fields with struct update syntax.

use rungate_proto::ledger::v1::{Authorization, LedgerWrite, Usage, ledger_write::Record};

/// A payment authorization on a test ledger (`network`, asset `0xasset`),
/// valid from 1970 until 2096, scheme `exact`, x402 v2.
pub fn authorization(
    network: &str,
    request_id: &str,
    payer: &str,
    nonce: &str,
    amount: u128,
) -> Authorization {
    Authorization {
        request_id: request_id.into(),
        network: network.into(),
        asset: "0xasset".into(),
        payer: payer.into(),
        pay_to: "0xpayto".into(),
        amount: Some(amount.into()),
        valid_after: 0,
        valid_before: 4_000_000_000,
        nonce: nonce.into(),
        signature: "0xsig".into(),
        scheme: "exact".into(),
        x402_version: 2,
    }
}

/// A write of `record` under idempotency key `key`.
pub fn write(key: impl Into<String>, record: Record) -> LedgerWrite {
    LedgerWrite {
        idempotency_key: key.into(),
        record: Some(record),
    }
}

/// The usage record of a served call that charged `amount` (what makes its
/// authorization due for settlement).
pub fn usage(request_id: &str, amount: u128) -> Usage {
    Usage {
        request_id: request_id.into(),
        model: "test-model".into(),
        tokens: Some(rungate_proto::types::v1::TokenUsage {
            prompt_tokens: 3,
            completion_tokens: 2,
        }),
        quoted: Some(amount.into()),
        charged: Some(amount.into()),
        engine: "test".into(),
        finish_reason: "stop".into(),
        ..Default::default()
    }
}
