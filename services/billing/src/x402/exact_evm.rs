//! Local verification of an `exact` EVM payment: the EIP-712
//! TransferWithAuthorization signature, recipient, amount and validity
//! window, in the spec's order and with its `invalidReason` strings. Pure and
//! in-process (microseconds): nothing here touches the chain or the ledger.

use alloy_primitives::{Address, B256, Signature, U256};

pub const SCHEME: &str = "exact";
use alloy_sol_types::{Eip712Domain, SolStruct, sol};
use serde::Deserialize;

sol! {
    /// EIP-3009's signed message.
    #[derive(Debug, PartialEq, Eq)]
    struct TransferWithAuthorization {
        address from;
        address to;
        uint256 value;
        uint256 validAfter;
        uint256 validBefore;
        bytes32 nonce;
    }
}

/// How close to `validBefore` an authorization may still be accepted: the
/// settlement transaction needs time to be mined before it expires.
pub const EXPIRY_MARGIN_SECS: u64 = 6;

/// The `payload` of an exact-EVM payment, as clients send it.
#[derive(Debug, Clone, Deserialize)]
pub struct ExactEvmPayload {
    pub signature: String,
    pub authorization: AuthorizationFields,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthorizationFields {
    pub from: String,
    pub to: String,
    pub value: String,
    pub valid_after: String,
    pub valid_before: String,
    pub nonce: String,
}

/// What we asked to be paid, on one network.
#[derive(Debug, Clone)]
pub struct Expected {
    pub pay_to: Address,
    pub amount: U256,
    /// The asset's EIP-712 domain separator (see `domain_separator`),
    /// computed once per network rather than per payment.
    pub domain_separator: B256,
}

/// The EIP-712 domain separator of an EIP-3009 token: its `name` and
/// `version` (USDC on Base: "USD Coin", "2"), chain id and address.
pub fn domain_separator(name: &str, version: &str, chain_id: u64, asset: Address) -> B256 {
    Eip712Domain::new(
        Some(name.to_owned().into()),
        Some(version.to_owned().into()),
        Some(U256::from(chain_id)),
        Some(asset),
        None,
    )
    .separator()
}

pub use super::InvalidReason;

/// A decoded authorization whose signature, recipient, value and time window
/// check out. The nonce's freshness (ledger) and the payer's balance (chain)
/// are checked by the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub payer: Address,
    pub message: TransferWithAuthorization,
    pub signature: Signature,
}

fn address(text: &str) -> Result<Address, InvalidReason> {
    text.parse().map_err(|_| InvalidReason::Payload)
}

fn uint(text: &str) -> Result<U256, InvalidReason> {
    // Decimal strings per the spec; 0x-hex tolerated.
    U256::from_str_radix(text, 10)
        .or_else(|_| text.parse())
        .map_err(|_| InvalidReason::Payload)
}

/// Decodes the authorization and signature without checking them (for an
/// external facilitator to check); `payer` is the claimed `from`.
pub fn decode(payload: &ExactEvmPayload) -> Result<Verified, InvalidReason> {
    let fields = &payload.authorization;
    let message = TransferWithAuthorization {
        from: address(&fields.from)?,
        to: address(&fields.to)?,
        value: uint(&fields.value)?,
        validAfter: uint(&fields.valid_after)?,
        validBefore: uint(&fields.valid_before)?,
        nonce: fields
            .nonce
            .parse::<B256>()
            .map_err(|_| InvalidReason::Payload)?,
    };
    let bytes =
        alloy_primitives::hex::decode(&payload.signature).map_err(|_| InvalidReason::Payload)?;
    let signature = Signature::try_from(bytes.as_slice()).map_err(|_| InvalidReason::Signature)?;
    Ok(Verified {
        payer: message.from,
        message,
        signature,
    })
}

/// Verifies `payload` against what we `expected`, at unix time `now`.
pub fn verify(
    payload: &ExactEvmPayload,
    expected: &Expected,
    now: u64,
) -> Result<Verified, InvalidReason> {
    let Verified {
        message, signature, ..
    } = decode(payload)?;
    // A high-s signature is a malleated copy of a valid one: refuse it, as the token does.
    if signature.normalize_s().is_some() {
        return Err(InvalidReason::Signature);
    }
    // EIP-712: keccak256(0x1901 ‖ domain separator ‖ struct hash), on the stack.
    let mut preimage = [0u8; 66];
    preimage[..2].copy_from_slice(&[0x19, 0x01]);
    preimage[2..34].copy_from_slice(expected.domain_separator.as_slice());
    preimage[34..].copy_from_slice(message.eip712_hash_struct().as_slice());
    let digest = alloy_primitives::keccak256(preimage);
    let signer = crate::x402::signature::recover_parsed(&digest, &signature)
        .ok_or(InvalidReason::Signature)?;
    if signer != message.from {
        return Err(InvalidReason::Signature);
    }
    if message.to != expected.pay_to {
        return Err(InvalidReason::Recipient);
    }
    let now = U256::from(now);
    if message.validAfter > now {
        return Err(InvalidReason::ValidAfter);
    }
    if message.validBefore <= now + U256::from(EXPIRY_MARGIN_SECS) {
        return Err(InvalidReason::ValidBefore);
    }
    if message.value != expected.amount {
        return Err(InvalidReason::Value);
    }
    Ok(Verified {
        payer: signer,
        message,
        signature,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // Signed with anvil's second dev key by the PyPI eth-account package:
    // domain ("USD Coin", "2", 8453, 0x5FbD…0aa3), to 0x3C44…93BC, value 1234,
    // validAfter 0, validBefore 2_000_000_000, nonce 0x11…11.
    const SIGNATURE: &str = "0x6b983d3758f5a78ea154fc89dfef6cea537d40a1d393ba49ec6a3ebeeff06f1472c7fe87e8c7c6978173851f770593893713a2f6bd8e926be4c7a33b32be6e471c";
    const PAYER: &str = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8";
    const NOW: u64 = 1_900_000_000;

    fn payload() -> ExactEvmPayload {
        ExactEvmPayload {
            signature: SIGNATURE.into(),
            authorization: AuthorizationFields {
                from: PAYER.into(),
                to: "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC".into(),
                value: "1234".into(),
                valid_after: "0".into(),
                valid_before: "2000000000".into(),
                nonce: format!("0x{}", "11".repeat(32)),
            },
        }
    }

    fn separator(name: &str, chain_id: u64) -> B256 {
        let asset = address("0x5FbDB2315678afecb367f032d93F642f64180aa3").expect("asset");
        domain_separator(name, "2", chain_id, asset)
    }

    fn expected() -> Expected {
        Expected {
            pay_to: address("0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC").expect("pay to"),
            amount: U256::from(1234),
            domain_separator: separator("USD Coin", 8453),
        }
    }

    #[test]
    fn a_signature_from_eth_account_recovers_to_the_payer() {
        let verified = verify(&payload(), &expected(), NOW).expect("valid");
        assert_eq!(verified.payer, address(PAYER).expect("payer"));
    }

    #[test]
    fn each_check_gives_its_reason() {
        let wrong_domain = Expected {
            domain_separator: separator("USDC", 8453),
            ..expected()
        };
        assert_eq!(
            verify(&payload(), &wrong_domain, NOW),
            Err(InvalidReason::Signature)
        );
        let other_chain = Expected {
            domain_separator: separator("USD Coin", 84532),
            ..expected()
        };
        assert_eq!(
            verify(&payload(), &other_chain, NOW),
            Err(InvalidReason::Signature)
        );

        let mut forged = payload();
        forged.authorization.value = "1235".into();
        assert_eq!(
            verify(&forged, &expected(), NOW),
            Err(InvalidReason::Signature)
        );

        let elsewhere = Expected {
            pay_to: Address::ZERO,
            ..expected()
        };
        assert_eq!(
            verify(&payload(), &elsewhere, NOW),
            Err(InvalidReason::Recipient)
        );
        let more = Expected {
            amount: U256::from(1235),
            ..expected()
        };
        assert_eq!(verify(&payload(), &more, NOW), Err(InvalidReason::Value));
        assert_eq!(
            verify(&payload(), &expected(), 2_000_000_000 - EXPIRY_MARGIN_SECS),
            Err(InvalidReason::ValidBefore)
        );

        let mut garbled = payload();
        garbled.signature = "0xzz".into();
        assert_eq!(
            verify(&garbled, &expected(), NOW),
            Err(InvalidReason::Payload)
        );
        let mut bad_address = payload();
        bad_address.authorization.from = "alice".into();
        assert_eq!(
            verify(&bad_address, &expected(), NOW),
            Err(InvalidReason::Payload)
        );
    }

    #[test]
    fn high_s_copies_of_a_valid_signature_are_refused() {
        let bytes = alloy_primitives::hex::decode(SIGNATURE).expect("hex");
        let valid = Signature::try_from(bytes.as_slice()).expect("signature");
        // (r, n - s, !v) recovers to the same address: the malleated twin.
        let n = U256::from_str_radix(
            "fffffffffffffffffffffffffffffffebaaedce6af48a03bbfd25e8cd0364141",
            16,
        )
        .expect("order");
        let twin = Signature::new(valid.r(), n - valid.s(), !valid.v());
        let mut malleated = payload();
        malleated.signature = format!("0x{}", alloy_primitives::hex::encode(twin.as_bytes()));
        assert_eq!(
            verify(&malleated, &expected(), NOW),
            Err(InvalidReason::Signature)
        );
    }
}
