//! Payment networks from config, and the x402 payment requirements (v1 and
//! v2 forms) billing offers for a quote on each of them.

use alloy_primitives::Address;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::BillingError;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworksFile {
    #[serde(default)]
    pub networks: Vec<Network>,
}

/// One chain and asset RunGate accepts payment on.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Network {
    /// CAIP-2 id, used by x402 v2 (e.g. `eip155:8453`).
    pub network: String,
    /// x402 v1 name (e.g. `base`).
    pub v1_name: String,
    pub chain_id: u64,
    /// JSON-RPC endpoint for balance reads and settlement.
    pub rpc_url: String,
    /// The EIP-3009 token (USDC on Base: 0x8335…2913).
    pub asset: Address,
    /// EIP-712 domain of the asset (USDC on Base: "USD Coin", "2").
    pub eip712_name: String,
    pub eip712_version: String,
    #[serde(default = "default_decimals")]
    pub decimals: u8,
    /// Where payments go.
    pub pay_to: Address,
    #[serde(default = "default_timeout")]
    pub max_timeout_seconds: u64,
}

fn default_decimals() -> u8 {
    6
}
fn default_timeout() -> u64 {
    60
}

impl NetworksFile {
    pub fn from_toml(text: &str) -> Result<Self, BillingError> {
        let file: Self =
            toml::from_str(text).map_err(|e| BillingError::Config(format!("networks: {e}")))?;
        for n in &file.networks {
            if !n.network.starts_with("eip155:") || n.network != format!("eip155:{}", n.chain_id) {
                return Err(BillingError::Config(format!(
                    "network `{}` must be eip155:<chain_id> ({})",
                    n.network, n.chain_id
                )));
            }
        }
        Ok(file)
    }
}

/// What a quote's requirements describe.
pub struct Offer<'a> {
    pub amount: u128,
    pub resource: &'a str,
    pub description: &'a str,
}

impl Network {
    /// The network as a payment of `version` names it: v1 name or CAIP-2 id.
    pub fn name_for(&self, version: u32) -> &str {
        if version == 1 {
            &self.v1_name
        } else {
            &self.network
        }
    }

    /// Our requirement for `offer` in `version`'s form.
    pub fn requirement(&self, version: u32, offer: &Offer<'_>) -> Value {
        if version == 1 {
            self.requirement_v1(offer)
        } else {
            self.requirement_v2(offer)
        }
    }

    fn extra(&self) -> Value {
        json!({ "name": self.eip712_name, "version": self.eip712_version })
    }

    /// x402 v1 `accepts[]` entry.
    pub fn requirement_v1(&self, offer: &Offer<'_>) -> Value {
        json!({
            "scheme": super::exact_evm::SCHEME,
            "network": self.v1_name,
            "maxAmountRequired": offer.amount.to_string(),
            "resource": offer.resource,
            "description": offer.description,
            "mimeType": "application/json",
            "payTo": self.pay_to.to_checksum(None),
            "maxTimeoutSeconds": self.max_timeout_seconds,
            "asset": self.asset.to_checksum(None),
            "extra": self.extra(),
        })
    }

    /// x402 v2 `accepts[]` entry (the resource goes in the envelope).
    pub fn requirement_v2(&self, offer: &Offer<'_>) -> Value {
        json!({
            "scheme": super::exact_evm::SCHEME,
            "network": self.network,
            "amount": offer.amount.to_string(),
            "asset": self.asset.to_checksum(None),
            "payTo": self.pay_to.to_checksum(None),
            "maxTimeoutSeconds": self.max_timeout_seconds,
            "extra": self.extra(),
        })
    }
}

/// A Base network entry for unit tests.
#[cfg(test)]
pub(crate) const TEST_BASE: &str = r#"
        [[networks]]
        network = "eip155:8453"
        v1_name = "base"
        chain_id = 8453
        rpc_url = "http://127.0.0.1:8545"
        asset = "0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913"
        eip712_name = "USD Coin"
        eip712_version = "2"
        pay_to = "0x3c44cdddb6a900fa2b585dd299e03d12fa4293bc"
    "#;

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = TEST_BASE;

    #[test]
    fn requirements_have_the_fields_official_clients_read() {
        let file = NetworksFile::from_toml(BASE).expect("networks");
        let offer = Offer {
            amount: 7,
            resource: "http://localhost:8080/v1/chat/completions",
            description: "chat completion",
        };
        let v1 = file.networks[0].requirement_v1(&offer);
        assert_eq!(v1["network"], "base");
        assert_eq!(v1["maxAmountRequired"], "7");
        assert_eq!(
            v1["payTo"], "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC",
            "checksummed"
        );
        assert_eq!(v1["extra"]["name"], "USD Coin");
        let v2 = file.networks[0].requirement_v2(&offer);
        assert_eq!(v2["network"], "eip155:8453");
        assert_eq!(v2["amount"], "7");
        assert!(v2.get("resource").is_none());
    }

    #[test]
    fn a_network_id_must_match_its_chain() {
        let wrong = BASE.replace("chain_id = 8453", "chain_id = 1");
        assert!(NetworksFile::from_toml(&wrong).is_err());
    }
}
