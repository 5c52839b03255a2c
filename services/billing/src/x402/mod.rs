//! x402 payments, scheme `exact` on EVM (EIP-3009 transferWithAuthorization).

pub mod exact_evm;
pub mod networks;
