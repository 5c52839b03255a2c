//! One payment network's chain: reads (balance, nonce state) for verification
//! and `transferWithAuthorization` submission for settlement.

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

/// Why a chain read failed: the RPC, not the payment.
#[derive(Debug, thiserror::Error)]
#[error("chain read failed: {0}")]
pub struct ReadError(String);

pub struct Chain {
    pub network: Network,
    provider: DynProvider,
    settler: Address,
    /// The settler's next transaction nonce; `None` means ask the chain.
    /// Held across a send so concurrent settlements never reuse a nonce.
    next_nonce: tokio::sync::Mutex<Option<u64>>,
    receipt_timeout: Duration,
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
        Ok(Self {
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
            .map_err(|e| ReadError(e.to_string()))
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
