//! Between wire types and SQL values: amounts travel as NUMERIC text, statuses
//! as the `settlement_status` enum's labels.

use rungate_proto::ledger::v1::SettlementStatus;
use rungate_proto::types::v1::Amount;

use crate::LedgerError;

pub fn amount_text(amount: Option<Amount>) -> String {
    amount.unwrap_or_default().atomic().to_string()
}

pub fn parse_amount(text: &str) -> Result<Amount, LedgerError> {
    text.parse::<u128>()
        .map(Amount::from)
        .map_err(|_| LedgerError::InvalidArgument(format!("stored amount `{text}` is not a u128")))
}

pub fn status_label(status: SettlementStatus) -> Option<&'static str> {
    Some(match status {
        SettlementStatus::Unspecified => return None,
        SettlementStatus::Authorized => "authorized",
        SettlementStatus::Settling => "settling",
        SettlementStatus::Settled => "settled",
        SettlementStatus::Failed => "failed",
        SettlementStatus::Expired => "expired",
        SettlementStatus::Voided => "voided",
    })
}

pub fn parse_status(label: &str) -> SettlementStatus {
    match label {
        "authorized" => SettlementStatus::Authorized,
        "settling" => SettlementStatus::Settling,
        "settled" => SettlementStatus::Settled,
        "failed" => SettlementStatus::Failed,
        "expired" => SettlementStatus::Expired,
        "voided" => SettlementStatus::Voided,
        _ => SettlementStatus::Unspecified,
    }
}
