//! Who signed an EIP-712 digest: the one recovery every x402 check uses
//! (EIP-3009 authorizations, vouchers, deposits). libsecp256k1 recovers a
//! key several times faster than the pure-Rust k256 (a few tens of
//! microseconds here, where k256 took ~300), and recovery is the bulk of a
//! voucher's check on the paid hot path.

use std::sync::OnceLock;

use alloy_primitives::{Address, B256, Signature, keccak256};
use secp256k1::ecdsa::{RecoverableSignature, RecoveryId};
use secp256k1::{Message, Secp256k1, VerifyOnly};

fn context() -> &'static Secp256k1<VerifyOnly> {
    static CONTEXT: OnceLock<Secp256k1<VerifyOnly>> = OnceLock::new();
    CONTEXT.get_or_init(Secp256k1::verification_only)
}

/// The address that signed `digest` with a 65-byte r ‖ s ‖ v signature
/// (v as 27/28 or 0/1); None for a malformed signature, or a malleated one
/// (s in the upper half of the curve order), which the contracts refuse too.
pub fn recover(digest: &B256, signature: &[u8]) -> Option<Address> {
    let parsed = Signature::try_from(signature).ok()?;
    if parsed.normalize_s().is_some() {
        return None;
    }
    recover_parsed(digest, &parsed)
}

/// The same for a signature already parsed (and checked for high s).
pub fn recover_parsed(digest: &B256, signature: &Signature) -> Option<Address> {
    let id = RecoveryId::try_from(i32::from(signature.v())).ok()?;
    let mut compact = [0u8; 64];
    compact[..32].copy_from_slice(&signature.r().to_be_bytes::<32>());
    compact[32..].copy_from_slice(&signature.s().to_be_bytes::<32>());
    let recoverable = RecoverableSignature::from_compact(&compact, id).ok()?;
    let key = context()
        .recover_ecdsa(Message::from_digest(digest.0), &recoverable)
        .ok()?;
    let hash = keccak256(&key.serialize_uncompressed()[1..]);
    Some(Address::from_slice(&hash[12..]))
}

#[cfg(test)]
mod tests {
    use alloy_signer::SignerSync;
    use alloy_signer_local::PrivateKeySigner;

    use super::*;

    #[test]
    fn recovers_what_k256_recovers_and_refuses_malleated_signatures() {
        let signer = PrivateKeySigner::random();
        for i in 0..20u8 {
            let digest = keccak256([i]);
            let signature = signer.sign_hash_sync(&digest).expect("sign");
            let bytes = signature.as_bytes();
            assert_eq!(recover(&digest, &bytes), Some(signer.address()));
            assert_eq!(
                signature.recover_address_from_prehash(&digest).ok(),
                Some(signer.address())
            );
            // The malleated twin (n - s, flipped parity) is refused.
            let twin = Signature::new(
                signature.r(),
                secp256k1::constants::CURVE_ORDER
                    .iter()
                    .fold(alloy_primitives::U256::ZERO, |acc, b| {
                        (acc << 8) | alloy_primitives::U256::from(*b)
                    })
                    - signature.s(),
                !signature.v(),
            );
            assert_eq!(recover(&digest, &twin.as_bytes()), None);
        }
        assert_eq!(recover(&B256::ZERO, &[0u8; 64]), None, "too short");
        assert_eq!(recover(&B256::ZERO, &[0u8; 65]), None, "r = 0");
    }
}
