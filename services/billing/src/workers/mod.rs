//! The workers that collect money, each safe to run on several billing
//! replicas at once (their work is leased in the ledger): `settlement`
//! settles served `exact` calls; `claims` claims what batch-settlement
//! channels earned and sweeps it to the receiver.

pub mod claims;
pub mod settlement;
