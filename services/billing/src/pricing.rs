//! Prices in atomic units with sub-atomic precision (nine decimals), summed
//! exactly in integers and rounded up once, when quoting.

use std::collections::HashMap;

use serde::Deserialize;

use crate::BillingError;

/// Nano-atomic units per atomic unit.
const SCALE: u128 = 1_000_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Price {
    per_call: u128,
    per_prompt_token: u128,
    /// A prompt token the engine took from its cache instead of evaluating.
    per_cached_prompt_token: u128,
    per_completion_token: u128,
}

impl Price {
    /// Per call only: the tokens don't change the quote.
    pub fn is_flat(&self) -> bool {
        self.per_prompt_token == 0 && self.per_completion_token == 0
    }

    /// amount = per call + prompt × input price + max tokens × output price, rounded up.
    pub fn quote(&self, prompt_tokens: u32, max_tokens: u32) -> u128 {
        let nano = self.per_call
            + u128::from(prompt_tokens) * self.per_prompt_token
            + u128::from(max_tokens) * self.per_completion_token;
        nano.div_ceil(SCALE)
    }

    /// What a call that used these tokens costs: its cached prompt tokens
    /// at their own rate. Never more than the quote for the same tokens
    /// (a cached token is priced at most as a prompt token).
    pub fn charge(
        &self,
        prompt_tokens: u32,
        cached_prompt_tokens: u32,
        completion_tokens: u32,
    ) -> u128 {
        let cached = cached_prompt_tokens.min(prompt_tokens);
        let nano = self.per_call
            + u128::from(prompt_tokens - cached) * self.per_prompt_token
            + u128::from(cached) * self.per_cached_prompt_token
            + u128::from(completion_tokens) * self.per_completion_token;
        nano.div_ceil(SCALE)
    }
}

#[derive(Debug, Clone)]
pub struct PriceTable {
    default: Price,
    models: HashMap<String, Price>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PriceFile {
    default: Option<PriceEntry>,
    #[serde(default)]
    models: HashMap<String, PriceEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PriceEntry {
    #[serde(default)]
    per_call: Option<String>,
    #[serde(default)]
    per_prompt_token: Option<String>,
    /// Defaults to the entry's prompt-token price.
    #[serde(default)]
    per_cached_prompt_token: Option<String>,
    #[serde(default)]
    per_completion_token: Option<String>,
}

/// RunGate's list price: 1 atomic unit (0.000001 USDC) per call.
const LIST_PRICE: Price = Price {
    per_call: SCALE,
    per_prompt_token: 0,
    per_cached_prompt_token: 0,
    per_completion_token: 0,
};

impl PriceTable {
    pub fn from_toml(text: &str) -> Result<Self, BillingError> {
        let file: PriceFile =
            toml::from_str(text).map_err(|e| BillingError::Config(format!("price table: {e}")))?;
        let default = match &file.default {
            Some(entry) => entry.price(LIST_PRICE)?,
            None => LIST_PRICE,
        };
        let models = file
            .models
            .iter()
            .map(|(id, entry)| Ok((id.clone(), entry.price(default)?)))
            .collect::<Result<_, BillingError>>()?;
        Ok(Self { default, models })
    }

    pub fn price(&self, model: &str) -> Price {
        self.models.get(model).copied().unwrap_or(self.default)
    }
}

impl PriceEntry {
    fn price(&self, base: Price) -> Result<Price, BillingError> {
        let field = |value: &Option<String>, fallback: u128| {
            value.as_deref().map_or(Ok(fallback), parse_nano)
        };
        let per_prompt_token = field(&self.per_prompt_token, base.per_prompt_token)?;
        // Unset: as the prompt tokens of this entry (not the base's cached rate,
        // which was set against another prompt price).
        let per_cached_prompt_token = match (&self.per_cached_prompt_token, &self.per_prompt_token)
        {
            (Some(cached), _) => parse_nano(cached)?,
            (None, Some(_)) => per_prompt_token,
            (None, None) => base.per_cached_prompt_token,
        };
        if per_cached_prompt_token > per_prompt_token {
            return Err(BillingError::Config(
                "per_cached_prompt_token may not exceed per_prompt_token".into(),
            ));
        }
        Ok(Price {
            per_call: field(&self.per_call, base.per_call)?,
            per_prompt_token,
            per_cached_prompt_token,
            per_completion_token: field(&self.per_completion_token, base.per_completion_token)?,
        })
    }
}

/// "0.0005" atomic units → 500_000 nano-atomic units. Never goes through a float.
pub fn parse_nano(text: &str) -> Result<u128, BillingError> {
    let invalid = || {
        BillingError::Config(format!(
            "price `{text}` must be a non-negative decimal with at most 9 decimals"
        ))
    };
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    if whole.is_empty() && fraction.is_empty()
        || fraction.len() > 9
        || !whole
            .bytes()
            .chain(fraction.bytes())
            .all(|b| b.is_ascii_digit())
    {
        return Err(invalid());
    }
    let whole: u128 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| invalid())?
    };
    let fraction: u128 = if fraction.is_empty() {
        0
    } else {
        format!("{fraction:0<9}").parse().map_err(|_| invalid())?
    };
    whole
        .checked_mul(SCALE)
        .and_then(|w| w.checked_add(fraction))
        .ok_or_else(invalid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sub_atomic_prices_exactly() {
        assert_eq!(parse_nano("1").ok(), Some(SCALE));
        assert_eq!(parse_nano("0.0005").ok(), Some(500_000));
        assert_eq!(parse_nano(".5").ok(), Some(SCALE / 2));
        assert_eq!(parse_nano("0.000000001").ok(), Some(1));
        assert!(parse_nano("0.0000000001").is_err());
        assert!(parse_nano("-1").is_err());
        assert!(parse_nano("1e3").is_err());
        assert!(parse_nano("").is_err());
    }

    #[test]
    fn default_is_the_list_price() {
        let table = PriceTable::from_toml("").expect("empty table");
        assert_eq!(table.price("anything").quote(1_000, 1_000), 1);
    }

    #[test]
    fn rounds_up_once_not_per_term() {
        let table = PriceTable::from_toml(
            r#"
            [models."m"]
            per_call = "0"
            per_prompt_token = "0.4"
            per_completion_token = "0.4"
            "#,
        )
        .expect("table");
        // 1 × 0.4 + 1 × 0.4 = 0.8 → 1 (rounding each term first would give 2).
        assert_eq!(table.price("m").quote(1, 1), 1);
        assert_eq!(table.price("m").quote(3, 2), 2);
        assert_eq!(table.price("m").quote(0, 0), 0);
    }

    #[test]
    fn cached_prompt_tokens_have_their_own_rate() {
        let table = PriceTable::from_toml(
            r#"
            [default]
            per_call = "0"
            per_prompt_token = "1"
            per_cached_prompt_token = "0.1"
            per_completion_token = "2"
            [models."plain"]
            per_prompt_token = "3"
            "#,
        )
        .expect("table");
        let price = table.price("any");
        // 100 prompt tokens, 90 of them cached, 10 out: 10 + 9 + 20.
        assert_eq!(price.charge(100, 90, 10), 39);
        assert_eq!(price.charge(100, 0, 10), price.quote(100, 10));
        // More cached than prompt tokens is counted as all cached, never below zero.
        assert_eq!(price.charge(10, 50, 0), 1);
        // An entry that sets only a prompt price charges cached tokens the same.
        assert_eq!(table.price("plain").charge(10, 10, 0), 30);
        assert!(
            PriceTable::from_toml(
                "[default]\nper_prompt_token = \"1\"\nper_cached_prompt_token = \"2\"\n"
            )
            .is_err()
        );
    }
}
