//! Our x402BatchSettlement escrow and its EIP-3009 deposit collector on
//! anvil, called directly: every function, every revert billing or a payer
//! can meet, a withdrawal racing a claim, a voucher above the deposit, a
//! replayed refund signature; and the escrow's EIP-712 digests equal
//! billing's (what makes vouchers, claims and refunds verifiable off chain).

use alloy_primitives::{Address, B256, Bytes, U256, aliases::U40, keccak256};
use alloy_signer::SignerSync;
use alloy_signer_local::PrivateKeySigner;
use alloy_sol_types::{SolCall, SolValue, sol};
use rungate_billing::x402::batch::eip712::{
    self, ChannelConfig, ClaimEntry, Escrow, ReceiveWithAuthorization,
};
use rungate_billing::x402::batch::{BATCH_SETTLEMENT, ERC3009_COLLECTOR};
use rungate_tests::chain::{self, DevChain};
use serde_json::{Value, json};

sol! {
    interface Batch {
        struct Config { address payer; address payerAuthorizer; address receiver; address receiverAuthorizer; address token; uint40 withdrawDelay; bytes32 salt; }
        struct Voucher { Config channel; uint128 maxClaimableAmount; }
        struct VoucherClaim { Voucher voucher; bytes signature; uint128 totalClaimed; }
        function deposit(Config config, uint128 amount, address collector, bytes collectorData);
        function claim(VoucherClaim[] voucherClaims);
        function claimWithSignature(VoucherClaim[] voucherClaims, bytes authorizerSignature);
        function settle(address receiver, address token);
        function initiateWithdraw(Config config, uint128 amount);
        function finalizeWithdraw(Config config);
        function refund(Config config, uint128 amount);
        function refundWithSignature(Config config, uint128 amount, uint256 nonce, bytes receiverAuthorizerSignature);
        function multicall(bytes[] data) returns (bytes[] results);
        function getChannelId(Config config) view returns (bytes32);
        function getVoucherDigest(bytes32 channelId, uint128 maxClaimableAmount) view returns (bytes32);
        function getRefundDigest(bytes32 channelId, uint256 nonce, uint128 amount) view returns (bytes32);
        function getClaimBatchDigest(VoucherClaim[] voucherClaims) view returns (bytes32);
        function channels(bytes32 channelId) view returns (uint128 balance, uint128 totalClaimed);
        function pendingWithdrawals(bytes32 channelId) view returns (uint128 amount, uint40 initiatedAt);
        function receivers(address receiver, address token) view returns (uint128 totalClaimed, uint128 totalSettled);
        function refundNonce(bytes32 channelId) view returns (uint256);
    }
    interface Collector {
        function collect(address payer, address token, uint256 amount, bytes32 channelId, bytes collectorData);
    }
}

/// anvil's accounts (unlocked): the receiver, a relayer that pays gas.
const RECEIVER: &str = chain::PAY_TO;
const RELAYER: &str = "0x15d34AAf54267DB7D7c367839AAf71A00a2C6A65";

struct Fixture {
    chain: DevChain,
    http: reqwest::Client,
    escrow: Escrow,
    authorizer: PrivateKeySigner,
}

struct Channel {
    payer: PrivateKeySigner,
    config: ChannelConfig,
    id: B256,
}

impl Fixture {
    async fn start() -> Self {
        let port = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("port")
            .local_addr()
            .expect("addr")
            .port();
        let chain = chain::start(&chain::repo_root(), port)
            .await
            .expect("dev chain");
        Self {
            chain,
            http: reqwest::Client::new(),
            escrow: Escrow::new(chain::CHAIN_ID),
            authorizer: chain::RECEIVER_AUTHORIZER_KEY.parse().expect("key"),
        }
    }

    async fn rpc(&self, method: &str, params: Value) -> anyhow::Result<Value> {
        chain::rpc(&self.http, &self.chain.rpc_url, method, params).await
    }

    /// A transaction from `from` (unlocked) to `to`; Err(revert data) if it would revert.
    async fn send(&self, from: &str, to: Address, data: Vec<u8>) -> Result<Value, String> {
        let tx = json!({"from": from, "to": to, "data": hex(&data)});
        // Simulate first: a revert's data names the error.
        if let Err(error) = self.rpc("eth_call", json!([tx.clone(), "latest"])).await {
            return Err(error.to_string());
        }
        chain::transact(&self.http, &self.chain.rpc_url, tx)
            .await
            .map_err(|e| e.to_string())
    }

    async fn call(&self, to: Address, data: Vec<u8>) -> Vec<u8> {
        let out = self
            .rpc(
                "eth_call",
                json!([{"to": to, "data": hex(&data)}, "latest"]),
            )
            .await
            .expect("eth_call");
        alloy_primitives::hex::decode(out.as_str().expect("hex")).expect("hex")
    }

    async fn token_balance(&self, who: Address) -> u128 {
        chain::balance(&self.chain.rpc_url, &who.to_checksum(None))
            .await
            .expect("balance")
    }

    async fn state(&self, id: B256) -> (u128, u128) {
        let out = self
            .call(
                BATCH_SETTLEMENT,
                Batch::channelsCall { channelId: id }.abi_encode(),
            )
            .await;
        let state = Batch::channelsCall::abi_decode_returns(&out).expect("decode");
        (state.balance, state.totalClaimed)
    }

    /// A funded payer's channel to our receiver.
    async fn channel(&self, funds: u128) -> Channel {
        let payer = PrivateKeySigner::random();
        chain::mint(
            &self.chain.rpc_url,
            &payer.address().to_checksum(None),
            funds,
        )
        .await
        .expect("mint");
        let config = ChannelConfig {
            payer: payer.address(),
            payerAuthorizer: payer.address(),
            receiver: RECEIVER.parse().expect("address"),
            receiverAuthorizer: self.authorizer.address(),
            token: chain::TOKEN.parse().expect("address"),
            withdrawDelay: U40::from(900u64),
            salt: B256::from(rand::random::<[u8; 32]>()),
        };
        let id = self.escrow.channel_id(&config);
        Channel { payer, config, id }
    }

    /// deposit() calldata, with the payer's EIP-3009 authorization to the collector.
    fn deposit(&self, channel: &Channel, amount: u128) -> Vec<u8> {
        let salt = U256::from_be_bytes(rand::random::<[u8; 32]>());
        let token_domain = rungate_billing::x402::exact_evm::domain_separator(
            "USD Coin",
            "2",
            chain::CHAIN_ID,
            chain::TOKEN.parse().expect("token"),
        );
        let message = ReceiveWithAuthorization {
            from: channel.payer.address(),
            to: ERC3009_COLLECTOR,
            value: U256::from(amount),
            validAfter: U256::ZERO,
            validBefore: U256::from(u64::MAX),
            nonce: eip712::deposit_nonce(channel.id, salt),
        };
        let signature = channel
            .payer
            .sign_hash_sync(&eip712::receive_digest(token_domain, &message))
            .expect("sign");
        let collector_data = (
            U256::ZERO,
            U256::from(u64::MAX),
            salt,
            Bytes::from(signature.as_bytes().to_vec()),
        )
            .abi_encode_params();
        Batch::depositCall {
            config: abi(&channel.config),
            amount,
            collector: ERC3009_COLLECTOR,
            collectorData: collector_data.into(),
        }
        .abi_encode()
    }

    fn voucher(&self, channel: &Channel, max: u128, total: u128) -> Batch::VoucherClaim {
        let signature = channel
            .payer
            .sign_hash_sync(&self.escrow.voucher_digest(channel.id, max))
            .expect("sign");
        Batch::VoucherClaim {
            voucher: Batch::Voucher {
                channel: abi(&channel.config),
                maxClaimableAmount: max,
            },
            signature: Bytes::from(signature.as_bytes().to_vec()),
            totalClaimed: total,
        }
    }

    fn authorize_claims(&self, claims: &[Batch::VoucherClaim]) -> Bytes {
        let entries = claims
            .iter()
            .map(|c| ClaimEntry {
                channelId: self.escrow.channel_id(&config(&c.voucher.channel)),
                maxClaimableAmount: c.voucher.maxClaimableAmount,
                totalClaimed: c.totalClaimed,
            })
            .collect();
        let signature = self
            .authorizer
            .sign_hash_sync(&self.escrow.claim_batch_digest(entries))
            .expect("sign");
        Bytes::from(signature.as_bytes().to_vec())
    }

    fn authorize_refund(&self, channel: &Channel, nonce: u64, amount: u128) -> Bytes {
        let digest = self
            .escrow
            .refund_digest(channel.id, U256::from(nonce), amount);
        Bytes::from(
            self.authorizer
                .sign_hash_sync(&digest)
                .expect("sign")
                .as_bytes()
                .to_vec(),
        )
    }

    /// Lets `who` send transactions (the payer's own calls).
    async fn impersonate(&self, who: Address) {
        self.rpc("anvil_impersonateAccount", json!([who]))
            .await
            .expect("impersonate");
        self.rpc("anvil_setBalance", json!([who, "0xde0b6b3a7640000"]))
            .await
            .expect("fund");
    }

    async fn advance(&self, seconds: u64) {
        self.rpc("evm_increaseTime", json!([seconds]))
            .await
            .expect("time");
        self.rpc("evm_mine", json!([])).await.expect("mine");
    }
}

fn hex(bytes: &[u8]) -> String {
    format!("0x{}", alloy_primitives::hex::encode(bytes))
}

fn abi(c: &ChannelConfig) -> Batch::Config {
    Batch::Config {
        payer: c.payer,
        payerAuthorizer: c.payerAuthorizer,
        receiver: c.receiver,
        receiverAuthorizer: c.receiverAuthorizer,
        token: c.token,
        withdrawDelay: c.withdrawDelay,
        salt: c.salt,
    }
}

fn config(c: &Batch::Config) -> ChannelConfig {
    ChannelConfig {
        payer: c.payer,
        payerAuthorizer: c.payerAuthorizer,
        receiver: c.receiver,
        receiverAuthorizer: c.receiverAuthorizer,
        token: c.token,
        withdrawDelay: c.withdrawDelay,
        salt: c.salt,
    }
}

/// The revert names this custom error (its 4-byte selector is in the data).
fn reverted_with(result: Result<Value, String>, error: &str) {
    let selector = hex(&keccak256(error.as_bytes())[..4]);
    match result {
        Ok(receipt) => panic!("{error} expected, the transaction went through: {receipt}"),
        Err(message) => assert!(
            message.contains(&selector[2..]),
            "{error} ({selector}) expected: {message}"
        ),
    }
}

#[tokio::test]
async fn the_escrows_digests_are_billings() {
    let f = Fixture::start().await;
    let channel = f.channel(0).await;
    let id = B256::abi_decode(
        &f.call(
            BATCH_SETTLEMENT,
            Batch::getChannelIdCall {
                config: abi(&channel.config),
            }
            .abi_encode(),
        )
        .await,
    )
    .expect("id");
    assert_eq!(id, channel.id);
    let voucher = B256::abi_decode(
        &f.call(
            BATCH_SETTLEMENT,
            Batch::getVoucherDigestCall {
                channelId: id,
                maxClaimableAmount: 77,
            }
            .abi_encode(),
        )
        .await,
    )
    .expect("digest");
    assert_eq!(voucher, f.escrow.voucher_digest(id, 77));
    let refund = B256::abi_decode(
        &f.call(
            BATCH_SETTLEMENT,
            Batch::getRefundDigestCall {
                channelId: id,
                nonce: U256::from(3),
                amount: 9,
            }
            .abi_encode(),
        )
        .await,
    )
    .expect("digest");
    assert_eq!(refund, f.escrow.refund_digest(id, U256::from(3), 9));
    let claims = vec![f.voucher(&channel, 5, 4), f.voucher(&channel, 8, 8)];
    let batch = B256::abi_decode(
        &f.call(
            BATCH_SETTLEMENT,
            Batch::getClaimBatchDigestCall {
                voucherClaims: claims.clone(),
            }
            .abi_encode(),
        )
        .await,
    )
    .expect("digest");
    let entries = claims
        .iter()
        .map(|c| ClaimEntry {
            channelId: id,
            maxClaimableAmount: c.voucher.maxClaimableAmount,
            totalClaimed: c.totalClaimed,
        })
        .collect();
    assert_eq!(batch, f.escrow.claim_batch_digest(entries));
}

#[tokio::test]
async fn deposit_claim_settle_and_refund_move_exactly_what_they_say() {
    let f = Fixture::start().await;
    let channel = f.channel(1_000).await;
    f.send(RELAYER, BATCH_SETTLEMENT, f.deposit(&channel, 600))
        .await
        .expect("deposit");
    assert_eq!(f.state(channel.id).await, (600, 0));
    assert_eq!(f.token_balance(channel.payer.address()).await, 400);
    // A top-up adds to the same channel.
    f.send(RELAYER, BATCH_SETTLEMENT, f.deposit(&channel, 100))
        .await
        .expect("top up");
    assert_eq!(f.state(channel.id).await, (700, 0));

    // The receiver claims with a voucher; a claim is cumulative, so the
    // same claim again is a no-op.
    let claim = Batch::claimCall {
        voucherClaims: vec![f.voucher(&channel, 50, 40)],
    }
    .abi_encode();
    f.send(RECEIVER, BATCH_SETTLEMENT, claim.clone())
        .await
        .expect("claim");
    f.send(RECEIVER, BATCH_SETTLEMENT, claim)
        .await
        .expect("replayed claim");
    assert_eq!(f.state(channel.id).await, (700, 40));
    // Anyone may relay a claim the receiverAuthorizer signed.
    let rows = vec![f.voucher(&channel, 60, 60)];
    let signature = f.authorize_claims(&rows);
    f.send(
        RELAYER,
        BATCH_SETTLEMENT,
        Batch::claimWithSignatureCall {
            voucherClaims: rows,
            authorizerSignature: signature,
        }
        .abi_encode(),
    )
    .await
    .expect("claim with signature");
    assert_eq!(f.state(channel.id).await, (700, 60));

    let receiver: Address = RECEIVER.parse().expect("address");
    let before = f.token_balance(receiver).await;
    let sweep = Batch::settleCall {
        receiver,
        token: chain::TOKEN.parse().expect("token"),
    }
    .abi_encode();
    f.send(RELAYER, BATCH_SETTLEMENT, sweep.clone())
        .await
        .expect("settle");
    assert_eq!(f.token_balance(receiver).await - before, 60);
    f.send(RELAYER, BATCH_SETTLEMENT, sweep)
        .await
        .expect("nothing more to settle");
    assert_eq!(f.token_balance(receiver).await - before, 60);

    // A refund returns at most the unclaimed part, and bumps the nonce.
    let payer_before = f.token_balance(channel.payer.address()).await;
    let signature = f.authorize_refund(&channel, 0, 10_000);
    let refund = Batch::refundWithSignatureCall {
        config: abi(&channel.config),
        amount: 10_000,
        nonce: U256::ZERO,
        receiverAuthorizerSignature: signature,
    }
    .abi_encode();
    f.send(RELAYER, BATCH_SETTLEMENT, refund.clone())
        .await
        .expect("refund");
    assert_eq!(
        f.token_balance(channel.payer.address()).await - payer_before,
        640
    );
    assert_eq!(f.state(channel.id).await, (60, 60));
    // The same signature again: its nonce is spent.
    reverted_with(
        f.send(RELAYER, BATCH_SETTLEMENT, refund).await,
        "InvalidRefundNonce()",
    );
}

#[tokio::test]
async fn what_the_escrow_refuses() {
    let f = Fixture::start().await;
    let channel = f.channel(1_000).await;
    let deposit = |amount| f.deposit(&channel, amount);
    reverted_with(
        f.send(RELAYER, BATCH_SETTLEMENT, deposit(0)).await,
        "ZeroDeposit()",
    );
    f.send(RELAYER, BATCH_SETTLEMENT, deposit(100))
        .await
        .expect("deposit");

    // Claims: only the receiver side; never above the voucher or the deposit.
    let claim = |max, total| {
        Batch::claimCall {
            voucherClaims: vec![f.voucher(&channel, max, total)],
        }
        .abi_encode()
    };
    reverted_with(
        f.send(RELAYER, BATCH_SETTLEMENT, claim(10, 10)).await,
        "NotAuthorizedToClaim()",
    );
    reverted_with(
        f.send(RECEIVER, BATCH_SETTLEMENT, claim(10, 11)).await,
        "ClaimExceedsCeiling()",
    );
    reverted_with(
        f.send(RECEIVER, BATCH_SETTLEMENT, claim(500, 500)).await,
        "ClaimExceedsBalance()",
    );
    reverted_with(
        f.send(
            RECEIVER,
            BATCH_SETTLEMENT,
            Batch::claimCall {
                voucherClaims: vec![],
            }
            .abi_encode(),
        )
        .await,
        "EmptyBatch()",
    );
    // A voucher the payer did not sign.
    let mut forged = f.voucher(&channel, 10, 10);
    let stranger = PrivateKeySigner::random();
    forged.signature = Bytes::from(
        stranger
            .sign_hash_sync(&f.escrow.voucher_digest(channel.id, 10))
            .expect("sign")
            .as_bytes()
            .to_vec(),
    );
    reverted_with(
        f.send(
            RECEIVER,
            BATCH_SETTLEMENT,
            Batch::claimCall {
                voucherClaims: vec![forged.clone()],
            }
            .abi_encode(),
        )
        .await,
        "InvalidSignature()",
    );
    // A claim batch not signed by the receiverAuthorizer.
    let rows = vec![f.voucher(&channel, 10, 10)];
    let wrong = Bytes::from(
        stranger
            .sign_hash_sync(&B256::ZERO)
            .expect("sign")
            .as_bytes()
            .to_vec(),
    );
    reverted_with(
        f.send(
            RELAYER,
            BATCH_SETTLEMENT,
            Batch::claimWithSignatureCall {
                voucherClaims: rows,
                authorizerSignature: wrong,
            }
            .abi_encode(),
        )
        .await,
        "InvalidSignature()",
    );

    // Refunds: only the receiver side (or its signature); never zero.
    let refund = |amount| {
        Batch::refundCall {
            config: abi(&channel.config),
            amount,
        }
        .abi_encode()
    };
    reverted_with(
        f.send(RELAYER, BATCH_SETTLEMENT, refund(5)).await,
        "NotAuthorizedToRefund()",
    );
    reverted_with(
        f.send(RECEIVER, BATCH_SETTLEMENT, refund(0)).await,
        "ZeroRefund()",
    );
    let signed_by_stranger = Bytes::from(
        stranger
            .sign_hash_sync(&f.escrow.refund_digest(channel.id, U256::ZERO, 5))
            .expect("sign")
            .as_bytes()
            .to_vec(),
    );
    reverted_with(
        f.send(
            RELAYER,
            BATCH_SETTLEMENT,
            Batch::refundWithSignatureCall {
                config: abi(&channel.config),
                amount: 5,
                nonce: U256::ZERO,
                receiverAuthorizerSignature: signed_by_stranger,
            }
            .abi_encode(),
        )
        .await,
        "InvalidSignature()",
    );

    // Deposits: the delay within bounds, a real collector; the collector
    // only takes orders from the escrow.
    let mut hasty = f.channel(100).await;
    hasty.config.withdrawDelay = U40::from(60u64);
    hasty.id = f.escrow.channel_id(&hasty.config);
    reverted_with(
        f.send(RELAYER, BATCH_SETTLEMENT, f.deposit(&hasty, 10))
            .await,
        "WithdrawDelayOutOfRange()",
    );
    let mut no_collector =
        Batch::depositCall::abi_decode(&f.deposit(&channel, 10)).expect("decode");
    no_collector.collector = Address::ZERO;
    reverted_with(
        f.send(RELAYER, BATCH_SETTLEMENT, no_collector.abi_encode())
            .await,
        "InvalidCollector()",
    );
    let direct = Collector::collectCall {
        payer: channel.payer.address(),
        token: chain::TOKEN.parse().expect("token"),
        amount: U256::from(10),
        channelId: channel.id,
        collectorData: Bytes::new(),
    };
    reverted_with(
        f.send(RELAYER, ERC3009_COLLECTOR, direct.abi_encode())
            .await,
        "OnlyX402BatchSettlement()",
    );
    // A deposit authorization used once cannot pull again.
    let once = f.deposit(&channel, 10);
    f.send(RELAYER, BATCH_SETTLEMENT, once.clone())
        .await
        .expect("deposit");
    assert!(
        f.send(RELAYER, BATCH_SETTLEMENT, once).await.is_err(),
        "the same authorization twice"
    );
    assert_eq!(
        f.state(channel.id).await,
        (110, 0),
        "nothing moved by the refused calls"
    );
}

#[tokio::test]
async fn a_withdrawal_waits_its_delay_and_a_claim_before_it_wins() {
    let f = Fixture::start().await;
    let channel = f.channel(1_000).await;
    f.send(RELAYER, BATCH_SETTLEMENT, f.deposit(&channel, 500))
        .await
        .expect("deposit");
    let payer = channel.payer.address();
    let from = payer.to_checksum(None);
    f.impersonate(payer).await;
    let initiate = |amount| {
        Batch::initiateWithdrawCall {
            config: abi(&channel.config),
            amount,
        }
        .abi_encode()
    };
    let finalize = Batch::finalizeWithdrawCall {
        config: abi(&channel.config),
    }
    .abi_encode();
    reverted_with(
        f.send(RELAYER, BATCH_SETTLEMENT, initiate(100)).await,
        "InvalidChannel()",
    );
    reverted_with(
        f.send(&from, BATCH_SETTLEMENT, initiate(0)).await,
        "NothingToWithdraw()",
    );
    reverted_with(
        f.send(&from, BATCH_SETTLEMENT, initiate(501)).await,
        "WithdrawAmountExceedsAvailable()",
    );
    reverted_with(
        f.send(&from, BATCH_SETTLEMENT, finalize.clone()).await,
        "WithdrawalNotPending()",
    );
    // The payer wants everything back.
    f.send(&from, BATCH_SETTLEMENT, initiate(500))
        .await
        .expect("initiate");
    reverted_with(
        f.send(&from, BATCH_SETTLEMENT, initiate(1)).await,
        "WithdrawalAlreadyPending()",
    );
    reverted_with(
        f.send(&from, BATCH_SETTLEMENT, finalize.clone()).await,
        "WithdrawDelayNotElapsed()",
    );
    // Within the delay the receiver claims what it earned.
    let claim = Batch::claimCall {
        voucherClaims: vec![f.voucher(&channel, 120, 120)],
    }
    .abi_encode();
    f.send(RECEIVER, BATCH_SETTLEMENT, claim)
        .await
        .expect("claim during the delay");
    f.advance(901).await;
    reverted_with(
        f.send(RELAYER, BATCH_SETTLEMENT, finalize.clone()).await,
        "NotAuthorizedToFinalizeWithdraw()",
    );
    let before = f.token_balance(payer).await;
    f.send(&from, BATCH_SETTLEMENT, finalize)
        .await
        .expect("finalize");
    // Capped to what was not claimed: the claim won.
    assert_eq!(f.token_balance(payer).await - before, 380);
    assert_eq!(f.state(channel.id).await, (120, 120));
    // And a claim after the payer took the rest has nothing left to take.
    let late = Batch::claimCall {
        voucherClaims: vec![f.voucher(&channel, 200, 200)],
    }
    .abi_encode();
    reverted_with(
        f.send(RECEIVER, BATCH_SETTLEMENT, late).await,
        "ClaimExceedsBalance()",
    );
}

#[tokio::test]
async fn a_refund_and_the_claim_before_it_go_in_one_multicall() {
    let f = Fixture::start().await;
    let channel = f.channel(1_000).await;
    f.send(RELAYER, BATCH_SETTLEMENT, f.deposit(&channel, 300))
        .await
        .expect("deposit");
    let rows = vec![f.voucher(&channel, 30, 30)];
    let claim = Batch::claimWithSignatureCall {
        voucherClaims: rows.clone(),
        authorizerSignature: f.authorize_claims(&rows),
    }
    .abi_encode();
    let refund = Batch::refundWithSignatureCall {
        config: abi(&channel.config),
        amount: 270,
        nonce: U256::ZERO,
        receiverAuthorizerSignature: f.authorize_refund(&channel, 0, 270),
    }
    .abi_encode();
    let both = Batch::multicallCall {
        data: vec![claim.into(), refund.into()],
    }
    .abi_encode();
    let before = f.token_balance(channel.payer.address()).await;
    f.send(RELAYER, BATCH_SETTLEMENT, both)
        .await
        .expect("multicall");
    assert_eq!(f.token_balance(channel.payer.address()).await - before, 270);
    assert_eq!(f.state(channel.id).await, (30, 30));
    let nonce = U256::abi_decode(
        &f.call(
            BATCH_SETTLEMENT,
            Batch::refundNonceCall {
                channelId: channel.id,
            }
            .abi_encode(),
        )
        .await,
    )
    .expect("nonce");
    assert_eq!(nonce, U256::from(1));
}
