//! A presented payment (the decoded `X-PAYMENT` or `PAYMENT-SIGNATURE` JSON):
//! version, scheme and network checks, and for v2 the match of `accepted`
//! against the offers made for this request. The first checks of the spec,
//! before any signature work; then the scheme's own payload.

use serde::Deserialize;
use serde_json::Value;

use super::batch::offer::BatchTerms;
use super::batch::payload::BatchPayload;
use super::exact_evm::ExactEvmPayload;
use super::networks::{Network, Offer};
use super::{InvalidReason, Refused};

/// The scheme's payload.
#[derive(Debug)]
pub enum Payload {
    Exact(ExactEvmPayload),
    Batch(Box<BatchPayload>),
}

/// A payment that names a supported version, scheme and network.
#[derive(Debug)]
pub struct Presented<'n> {
    pub version: u32,
    /// Where `network` stands in the list it was found in.
    pub index: usize,
    pub network: &'n Network,
    pub payload: Payload,
    /// The whole payment as parsed (what an external facilitator is sent).
    pub json: Value,
}

/// `batch`: our channel terms, when batch-settlement is offered.
pub fn parse<'n>(
    value: Value,
    networks: &'n [Network],
    offer: &Offer<'_>,
    batch: Option<&BatchTerms>,
) -> Result<Presented<'n>, Refused> {
    let version = value.get("x402Version").and_then(Value::as_u64);
    let (version, chosen) = match version {
        Some(1) => (1, &value),
        Some(2) => (2, value.get("accepted").ok_or(InvalidReason::Payload)?),
        _ => return Err(InvalidReason::Version.into()),
    };
    let scheme = chosen.get("scheme").and_then(Value::as_str);
    // batch-settlement is a v2 scheme.
    let batch = match (scheme, batch) {
        (Some("exact"), _) => None,
        (Some(super::batch::SCHEME), Some(terms)) if version == 2 => Some(terms),
        _ => return Err(InvalidReason::Scheme.into()),
    };
    let named = chosen.get("network").and_then(Value::as_str);
    let (index, network) = networks
        .iter()
        .enumerate()
        .find(|(_, n)| named == Some(n.name_for(version)))
        .ok_or(InvalidReason::Network)?;
    let payload = value.get("payload").ok_or(InvalidReason::Payload)?;
    let payload = match batch {
        None => {
            if version == 2 && !matches_offer(&network.requirement_v2(offer), chosen) {
                return Err(InvalidReason::Requirements.into());
            }
            Payload::Exact(
                ExactEvmPayload::deserialize(payload).map_err(|_| InvalidReason::Payload)?,
            )
        }
        Some(terms) => {
            let parsed = super::batch::payload::parse(payload)?;
            let mut ours = super::batch::offer::requirement(network, offer, terms);
            // A refund pays for nothing: its `accepted` may carry any price.
            if matches!(parsed, BatchPayload::Refund { .. }) {
                ours.as_object_mut().map(|o| o.remove("amount"));
                if let Some(extra) = ours.get_mut("extra").and_then(Value::as_object_mut) {
                    extra.remove("minDeposit");
                }
            }
            if !matches_offer(&ours, chosen) {
                return Err(InvalidReason::Requirements.into());
            }
            Payload::Batch(Box::new(parsed))
        }
    };
    Ok(Presented {
        version,
        index,
        network,
        payload,
        json: value,
    })
}

/// Every field we offered is in `accepted` with the same value (`extra` may
/// carry more keys: the reference clients add none, but the spec allows it).
/// Addresses compare case-insensitively: clients may lower-case them.
pub fn matches_offer(offer: &Value, accepted: &Value) -> bool {
    let (Some(offer), Some(accepted)) = (offer.as_object(), accepted.as_object()) else {
        return false;
    };
    offer
        .iter()
        .all(|(key, ours)| match (key.as_str(), accepted.get(key)) {
            (_, None) => false,
            ("extra", Some(theirs)) => ours
                .as_object()
                .is_some_and(|o| o.iter().all(|(k, v)| theirs.get(k) == Some(v))),
            ("asset" | "payTo", Some(theirs)) => ours
                .as_str()
                .zip(theirs.as_str())
                .is_some_and(|(a, b)| a.eq_ignore_ascii_case(b)),
            (_, Some(theirs)) => ours == theirs,
        })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::x402::networks::NetworksFile;

    fn networks() -> Vec<Network> {
        NetworksFile::from_toml(crate::x402::networks::TEST_BASE)
            .expect("networks")
            .networks
    }

    const OFFER: Offer<'static> = Offer {
        amount: 5,
        resource: "http://x/v1/chat/completions",
        description: "d",
    };

    fn payload() -> Value {
        json!({"signature": "0x00", "authorization": {"from": "0x0", "to": "0x0",
            "value": "5", "validAfter": "0", "validBefore": "1", "nonce": "0x0"}})
    }

    fn v2(accepted: Value) -> Value {
        json!({"x402Version": 2, "accepted": accepted, "payload": payload()})
    }

    #[test]
    fn each_envelope_check_gives_its_reason() {
        let networks = networks();
        let offer = networks[0].requirement_v2(&OFFER);
        let reason = |json: Value| {
            parse(json, &networks, &OFFER, None).err().map(|r| match r {
                Refused::Exact(r) => r,
                Refused::Batch(r) => panic!("batch reason {r}"),
            })
        };
        assert_eq!(reason(v2(offer.clone())), None);
        assert_eq!(
            reason(json!({"x402Version": 3})),
            Some(InvalidReason::Version)
        );
        let mut upto = offer.clone();
        upto["scheme"] = json!("upto");
        assert_eq!(reason(v2(upto)), Some(InvalidReason::Scheme));
        let mut sepolia = offer.clone();
        sepolia["network"] = json!("eip155:84532");
        assert_eq!(reason(v2(sepolia)), Some(InvalidReason::Network));
        let mut cheaper = offer.clone();
        cheaper["amount"] = json!("4");
        assert_eq!(reason(v2(cheaper)), Some(InvalidReason::Requirements));
        let mut lower = offer.clone();
        lower["payTo"] = json!("0x3c44cdddb6a900fa2b585dd299e03d12fa4293bc");
        assert_eq!(reason(v2(lower)), None, "addresses are case-insensitive");
        let v1 =
            json!({"x402Version": 1, "scheme": "exact", "network": "base", "payload": payload()});
        let parsed = parse(v1, &networks, &OFFER, None).expect("v1");
        assert_eq!(parsed.network.name_for(parsed.version), "base");
        let v1_caip = json!({"x402Version": 1, "scheme": "exact", "network": "eip155:8453", "payload": payload()});
        assert_eq!(reason(v1_caip), Some(InvalidReason::Network));
        let no_payload = json!({"x402Version": 1, "scheme": "exact", "network": "base"});
        assert_eq!(reason(no_payload), Some(InvalidReason::Payload));
    }
}
