//! One payment network's chain: reads (balance, nonce state) for verification
//! and `transferWithAuthorization` submission for settlement.

pub mod escrow;
mod multicall;
mod submit;

use std::time::Duration;

use alloy_network::{EthereumWallet, TransactionBuilder};
use alloy_primitives::{Address, B256, U256};
use alloy_provider::{DynProvider, Provider, ProviderBuilder};
use alloy_rpc_types_eth::TransactionRequest;
use alloy_signer_local::PrivateKeySigner;
use alloy_sol_types::{SolCall, sol};

use crate::BillingError;
use crate::x402::networks::Network;

pub use submit::{Outcome, SettleAuthorization};

sol! {
    /// The EIP-3009 token surface billing uses.
    interface Eip3009Token {
        function balanceOf(address account) external view returns (uint256);
        function authorizationState(address authorizer, bytes32 nonce) external view returns (bool);
        function transferWithAuthorization(
            address from, address to, uint256 value, uint256 validAfter, uint256 validBefore,
            bytes32 nonce, uint8 v, bytes32 r, bytes32 s) external;
        event AuthorizationUsed(address indexed authorizer, bytes32 indexed nonce);
    }
}

/// An error and its causes ("error sending request: … : connection refused"):
/// transport errors say little at the top.
pub fn with_sources(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Why a chain read failed: the RPC, not the payment.
#[derive(Debug, thiserror::Error)]
#[error("chain read failed: {0}")]
pub struct ReadError(String);

pub struct Chain {
    pub network: Network,
    /// The asset's EIP-712 domain separator, for verifying payments.
    pub domain_separator: alloy_primitives::B256,
    /// The batch-settlement escrow's EIP-712 digests on this chain.
    pub escrow: crate::x402::batch::eip712::Escrow,
    provider: DynProvider,
    settler: Address,
    /// The settler's next transaction nonce; `None` means ask the chain.
    /// Held across a send so concurrent settlements never reuse a nonce.
    next_nonce: tokio::sync::Mutex<Option<u64>>,
    receipt_timeout: Duration,
}

impl std::fmt::Debug for Chain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chain")
            .field("network", &self.network.network)
            .finish()
    }
}

impl Chain {
    pub fn connect(
        network: Network,
        signer: PrivateKeySigner,
        receipt_timeout: Duration,
    ) -> Result<Self, BillingError> {
        let url = network
            .rpc_url
            .parse()
            .map_err(|e| BillingError::Config(format!("rpc_url `{}`: {e}", network.rpc_url)))?;
        // https RPCs: rustls needs a process-wide crypto provider (ring);
        // installing it again (another chain, another test) is a no-op.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let settler = signer.address();
        // Gas limit and EIP-1559 fees are estimated per transaction (the
        // estimate doubles as a simulation); nonces are ours (`next_nonce`).
        let provider = ProviderBuilder::new()
            .disable_recommended_fillers()
            .with_gas_estimation()
            .with_chain_id(network.chain_id)
            .wallet(EthereumWallet::from(signer))
            .connect_http(url)
            .erased();
        let domain_separator = crate::x402::exact_evm::domain_separator(
            &network.eip712_name,
            &network.eip712_version,
            network.chain_id,
            network.asset,
        );
        Ok(Self {
            domain_separator,
            escrow: crate::x402::batch::eip712::Escrow::new(network.chain_id),
            network,
            provider,
            settler,
            next_nonce: tokio::sync::Mutex::new(None),
            receipt_timeout,
        })
    }

    pub fn settler(&self) -> Address {
        self.settler
    }

    async fn view(
        &self,
        token: Address,
        data: Vec<u8>,
    ) -> Result<alloy_primitives::Bytes, ReadError> {
        let tx = TransactionRequest::default()
            .with_to(token)
            .with_input(data);
        self.provider
            .call(tx)
            .await
            .map_err(|e| ReadError(with_sources(&e)))
    }

    pub async fn balance(&self, account: Address) -> Result<U256, ReadError> {
        self.balance_of(account, self.network.asset).await
    }

    pub async fn nonce_used(&self, authorizer: Address, nonce: B256) -> Result<bool, ReadError> {
        self.nonce_used_on(authorizer, nonce, self.network.asset)
            .await
    }

    /// Balance in another EIP-3009 token on this chain (facilitator use).
    pub async fn balance_of(&self, account: Address, token: Address) -> Result<U256, ReadError> {
        let out = self
            .view(token, Eip3009Token::balanceOfCall { account }.abi_encode())
            .await?;
        Eip3009Token::balanceOfCall::abi_decode_returns(&out).map_err(|e| ReadError(e.to_string()))
    }

    pub async fn nonce_used_on(
        &self,
        authorizer: Address,
        nonce: B256,
        token: Address,
    ) -> Result<bool, ReadError> {
        let out = self
            .view(
                token,
                Eip3009Token::authorizationStateCall { authorizer, nonce }.abi_encode(),
            )
            .await?;
        Eip3009Token::authorizationStateCall::abi_decode_returns(&out)
            .map_err(|e| ReadError(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::x402::networks::NetworksFile;

    #[tokio::test]
    async fn https_rpc_urls_are_spoken_over_tls() {
        // A local port that speaks no TLS: the failure must come from the
        // TLS handshake or the connection, not from an unsupported scheme.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!(
            "https://127.0.0.1:{}",
            listener.local_addr().expect("addr").port()
        );
        let networks = NetworksFile::from_toml(&format!(
            r#"[[networks]]
network = "eip155:8453"
v1_name = "base"
chain_id = 8453
rpc_url = "{url}"
asset = "0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913"
eip712_name = "USD Coin"
eip712_version = "2"
pay_to = "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC""#
        ))
        .expect("networks");
        let chain = Chain::connect(
            networks.networks[0].clone(),
            PrivateKeySigner::random(),
            Duration::from_secs(1),
        )
        .expect("chain");
        drop(listener);
        let error = chain
            .balance(Address::ZERO)
            .await
            .expect_err("nothing there");
        let error = error.to_string().to_lowercase();
        assert!(!error.contains("scheme"), "{error}");
    }
}
