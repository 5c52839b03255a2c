//! The local checks of a batch-settlement payment: the channel is ours (our
//! receiver, authorizer, token and withdrawal delay), its id is the hash of
//! its config, and the voucher (and a deposit's EIP-3009 authorization) is
//! signed by who must sign it. Pure: microseconds, no chain, no ledger.

use alloy_primitives::{Address, B256, Bytes, U256, aliases::U40};

use super::eip712::{self, ChannelConfig, Escrow, ReceiveWithAuthorization};
use super::payload::{DepositAuthorization, SignedVoucher};
use super::{BatchReason, ERC3009_COLLECTOR};

/// The channel terms we offer on a network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Terms {
    pub receiver: Address,
    pub receiver_authorizer: Address,
    pub token: Address,
    pub withdraw_delay: u64,
}

pub fn check_config(config: &ChannelConfig, terms: &Terms) -> Result<(), BatchReason> {
    if config.receiver != terms.receiver {
        return Err(BatchReason::Receiver);
    }
    if config.receiverAuthorizer != terms.receiver_authorizer {
        return Err(BatchReason::ReceiverAuthorizer);
    }
    if config.token != terms.token {
        return Err(BatchReason::Token);
    }
    if config.withdrawDelay != U40::from(terms.withdraw_delay) {
        return Err(BatchReason::WithdrawDelay);
    }
    Ok(())
}

/// The voucher's channel id must be the hash of the config it came with.
pub fn bind(
    escrow: &Escrow,
    config: &ChannelConfig,
    voucher: &SignedVoucher,
) -> Result<B256, BatchReason> {
    let id = escrow.channel_id(config);
    if id != voucher.channel_id {
        return Err(BatchReason::ChannelIdMismatch);
    }
    Ok(id)
}

/// Who signed `digest`; None for a malformed or malleated (high-s) signature.
pub fn signer(digest: &B256, signature: &Bytes) -> Option<Address> {
    crate::x402::signature::recover(digest, signature)
}

/// Signed by the payer's authorizer (or the payer, when it has none). A
/// contract-wallet payer (EIP-1271) cannot be checked locally: refused.
pub fn voucher_signature(
    escrow: &Escrow,
    config: &ChannelConfig,
    voucher: &SignedVoucher,
) -> Result<(), BatchReason> {
    let digest = escrow.voucher_digest(voucher.channel_id, voucher.max_claimable);
    match signer(&digest, &voucher.signature) {
        Some(who) if who == eip712::voucher_signer(config) => Ok(()),
        _ => Err(BatchReason::VoucherSignature),
    }
}

/// The payer's EIP-3009 ReceiveWithAuthorization for the deposit: to the
/// collector, for the deposit's amount, with the nonce the collector derives
/// from the channel and salt, valid now and long enough to be mined.
pub fn deposit_authorization(
    token_separator: B256,
    config: &ChannelConfig,
    channel_id: B256,
    deposit: &DepositAuthorization,
    now: u64,
    margin_secs: u64,
) -> Result<(), BatchReason> {
    if deposit.valid_after > U256::from(now) {
        return Err(BatchReason::ValidAfter);
    }
    if deposit.valid_before <= U256::from(now + margin_secs) {
        return Err(BatchReason::ValidBefore);
    }
    let message = ReceiveWithAuthorization {
        from: config.payer,
        to: ERC3009_COLLECTOR,
        value: U256::from(deposit.amount),
        validAfter: deposit.valid_after,
        validBefore: deposit.valid_before,
        nonce: eip712::deposit_nonce(channel_id, deposit.salt),
    };
    let digest = eip712::receive_digest(token_separator, &message);
    match signer(&digest, &deposit.signature) {
        Some(who) if who == config.payer => Ok(()),
        _ => Err(BatchReason::ReceiveSignature),
    }
}

#[cfg(test)]
mod tests {
    use alloy_primitives::address;
    use alloy_signer::SignerSync;
    use alloy_signer_local::PrivateKeySigner;

    use super::*;

    fn terms() -> Terms {
        Terms {
            receiver: address!("0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC"),
            receiver_authorizer: address!("0x90F79bf6EB2c4f870365E785982E1f101E93b906"),
            token: address!("0x5FbDB2315678afecb367f032d93F642f64180aa3"),
            withdraw_delay: 900,
        }
    }

    fn config(payer: &PrivateKeySigner) -> ChannelConfig {
        let terms = terms();
        ChannelConfig {
            payer: payer.address(),
            payerAuthorizer: payer.address(),
            receiver: terms.receiver,
            receiverAuthorizer: terms.receiver_authorizer,
            token: terms.token,
            withdrawDelay: U40::from(900u64),
            salt: B256::ZERO,
        }
    }

    fn signed(payer: &PrivateKeySigner, escrow: &Escrow, id: B256, max: u128) -> SignedVoucher {
        let digest = escrow.voucher_digest(id, max);
        let signature = payer.sign_hash_sync(&digest).expect("sign");
        SignedVoucher {
            channel_id: id,
            max_claimable: max,
            signature: Bytes::from(signature.as_bytes().to_vec()),
        }
    }

    #[test]
    fn a_voucher_signed_by_the_payer_for_its_channel_passes_and_nothing_else_does() {
        let payer = PrivateKeySigner::random();
        let escrow = Escrow::new(8453);
        let config = config(&payer);
        let id = escrow.channel_id(&config);
        let good = signed(&payer, &escrow, id, 5);
        assert_eq!(bind(&escrow, &config, &good), Ok(id));
        assert_eq!(voucher_signature(&escrow, &config, &good), Ok(()));
        assert_eq!(check_config(&config, &terms()), Ok(()));

        let stranger = signed(&PrivateKeySigner::random(), &escrow, id, 5);
        assert_eq!(
            voucher_signature(&escrow, &config, &stranger),
            Err(BatchReason::VoucherSignature)
        );
        // A signature for another amount does not cover this one.
        let mut raised = good.clone();
        raised.max_claimable = 6;
        assert_eq!(
            voucher_signature(&escrow, &config, &raised),
            Err(BatchReason::VoucherSignature)
        );
        // Another chain is another domain, hence another channel.
        assert_eq!(
            bind(&Escrow::new(1), &config, &good),
            Err(BatchReason::ChannelIdMismatch)
        );
        let mut theirs = config.clone();
        theirs.receiver = Address::ZERO;
        assert_eq!(check_config(&theirs, &terms()), Err(BatchReason::Receiver));
        let mut slow = config.clone();
        slow.withdrawDelay = U40::from(901u64);
        assert_eq!(
            check_config(&slow, &terms()),
            Err(BatchReason::WithdrawDelay)
        );
    }
}
