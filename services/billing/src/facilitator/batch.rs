//! The facilitator API's batch-settlement side, for any seller whose
//! channels name our receiverAuthorizer (advertised in `/supported`): a
//! payer's deposit checked and submitted, its vouchers checked against the
//! chain, and the seller's claims, sweeps and refunds signed by our
//! authorizer (unless the seller signs them) and submitted. Requests and
//! wire reasons follow the official x402 facilitator's.

use std::sync::Arc;

use alloy_primitives::{Address, B256, Bytes, U256};
use serde_json::{Value, json};

use crate::chain::Chain;
use crate::chain::escrow::{ClaimRow, Mined, OnChain};
use crate::channels::Channels;
use crate::payments::Payments;
use crate::x402::batch::eip712::ChannelConfig;
use crate::x402::batch::payload::{
    self, BatchPayload, SellerAction, SellerClaim, SellerRefund, SignedVoucher,
};
use crate::x402::batch::verify::{self, Terms};
use crate::x402::batch::{BatchReason, MAX_WITHDRAW_DELAY, MIN_WITHDRAW_DELAY, SCHEME};
use crate::x402::exact_evm::{self, EXPIRY_MARGIN_SECS};
use rungate_common::clock::now;

/// A seller's request, on the chain it names.
struct Request<'a> {
    chain: &'a Arc<Chain>,
    network: &'a str,
    requirements: &'a Value,
    /// The payment's own `payload` (a payer's, or the seller's action).
    payload: &'a Value,
}

/// Why a request failed, and the payer when it is known.
type Failure = (BatchReason, Option<Address>);

pub async fn verify(payments: &Payments, _channels: &Arc<Channels>, body: &Value) -> Value {
    let checked = match request(payments, body) {
        Ok(request) => check(&request).await,
        Err(reason) => Err((reason, None)),
    };
    match checked {
        Ok(Checked {
            payer, id, onchain, ..
        }) => json!({
            "isValid": true,
            "payer": payer.to_checksum(None),
            "extra": channel_state(id, &onchain),
        }),
        Err((reason, payer)) => json!({
            "isValid": false,
            "invalidReason": reason.as_str(),
            "payer": payer.map(|p| p.to_checksum(None)),
        }),
    }
}

pub async fn settle(payments: &Payments, channels: &Arc<Channels>, body: &Value) -> Value {
    let network = body
        .pointer("/paymentRequirements/network")
        .cloned()
        .unwrap_or(Value::Null);
    let request = match request(payments, body) {
        Ok(request) => request,
        Err(reason) => return failed(reason, None, &network),
    };
    let done = match payload::seller_action(request.payload) {
        Some(Ok(action)) => act(&request, channels, action).await,
        Some(Err(reason)) => Err((reason, None)),
        // A payer's payload: of those, only a deposit is settled on chain.
        None => deposit(&request).await,
    };
    match done {
        Ok(mut settled) => {
            settled["success"] = json!(true);
            settled["network"] = json!(request.network);
            settled
        }
        Err((reason, payer)) => failed(reason, payer, &network),
    }
}

fn failed(reason: BatchReason, payer: Option<Address>, network: &Value) -> Value {
    json!({
        "success": false,
        "errorReason": reason.as_str(),
        "payer": payer.map(|p| p.to_checksum(None)),
        "transaction": "",
        "network": network,
    })
}

fn request<'a>(payments: &'a Payments, body: &'a Value) -> Result<Request<'a>, BatchReason> {
    let payment = body.get("paymentPayload").ok_or(BatchReason::PayloadType)?;
    let requirements = body.get("paymentRequirements").ok_or(BatchReason::Scheme)?;
    let scheme = |v: &Value| v.get("scheme").and_then(Value::as_str) == Some(SCHEME);
    let accepted = payment.get("accepted");
    if !scheme(requirements) || accepted.is_some_and(|a| !scheme(a)) {
        return Err(BatchReason::Scheme);
    }
    let network = requirements
        .get("network")
        .and_then(Value::as_str)
        .ok_or(BatchReason::NetworkMismatch)?;
    if accepted.is_some_and(|a| a.get("network").and_then(Value::as_str) != Some(network)) {
        return Err(BatchReason::NetworkMismatch);
    }
    let chain = payments
        .chains
        .iter()
        .find(|c| c.network.network == network)
        .ok_or(BatchReason::NetworkMismatch)?;
    Ok(Request {
        chain,
        network,
        requirements,
        payload: payment.get("payload").ok_or(BatchReason::PayloadType)?,
    })
}

fn address(value: Option<&Value>) -> Option<Address> {
    value?.as_str()?.parse().ok()
}

/// The seller's channel terms, from its requirements.
fn terms(request: &Request<'_>, config: &ChannelConfig) -> Result<Terms, BatchReason> {
    let r = request.requirements;
    let extra = r.get("extra");
    let withdraw_delay = match extra.and_then(|e| e.get("withdrawDelay")) {
        Some(delay) => payload::amount(delay)
            .and_then(|d| u64::try_from(d).ok())
            .ok_or(BatchReason::WithdrawDelay)?,
        None => config.withdrawDelay.to::<u64>(),
    };
    Ok(Terms {
        receiver: address(r.get("payTo")).ok_or(BatchReason::Receiver)?,
        receiver_authorizer: address(extra.and_then(|e| e.get("receiverAuthorizer")))
            .filter(|a| !a.is_zero())
            .ok_or(BatchReason::ReceiverAuthorizer)?,
        token: address(r.get("asset")).ok_or(BatchReason::Token)?,
        withdraw_delay,
    })
}

/// The token's EIP-712 domain for the deposit's authorization: from the
/// requirements' `extra` (name, version), else ours for our own asset.
fn token_separator(request: &Request<'_>, token: Address) -> Result<B256, BatchReason> {
    let extra = request.requirements.get("extra");
    let text = |key: &str| extra.and_then(|e| e.get(key)).and_then(Value::as_str);
    match (text("name"), text("version")) {
        (Some(name), Some(version)) => Ok(exact_evm::domain_separator(
            name,
            version,
            request.chain.network.chain_id,
            token,
        )),
        _ if token == request.chain.network.asset => Ok(request.chain.domain_separator),
        _ => Err(BatchReason::DepositPayload),
    }
}

struct Checked {
    payment: BatchPayload,
    payer: Address,
    id: B256,
    onchain: OnChain,
}

/// A payer's deposit, voucher or refund checked as the seller would have
/// it checked: its channel matches the seller's terms, its signatures, and
/// the chain (the deposit is fundable; the voucher within the channel).
async fn check(request: &Request<'_>) -> Result<Checked, Failure> {
    let payment = payload::parse(request.payload).map_err(|reason| (reason, None))?;
    let config = payment.config();
    let payer = config.payer;
    let fail = |reason| (reason, Some(payer));
    verify::check_config(config, &terms(request, config).map_err(fail)?).map_err(fail)?;
    let delay = config.withdrawDelay.to::<u64>();
    if !(MIN_WITHDRAW_DELAY..=MAX_WITHDRAW_DELAY).contains(&delay) {
        return Err(fail(BatchReason::WithdrawDelayRange));
    }
    let escrow = &request.chain.escrow;
    let voucher = payment.voucher();
    let id = verify::bind(escrow, config, voucher).map_err(fail)?;
    verify::voucher_signature(escrow, config, voucher).map_err(fail)?;
    let onchain = request
        .chain
        .channel(id)
        .await
        .map_err(|_| fail(BatchReason::RpcReadFailed))?;
    match &payment {
        BatchPayload::Deposit { deposit, .. } => {
            let separator = token_separator(request, config.token).map_err(fail)?;
            verify::deposit_authorization(
                separator,
                config,
                id,
                deposit,
                now(),
                EXPIRY_MARGIN_SECS,
            )
            .map_err(fail)?;
            let funds = request
                .chain
                .balance_of(payer, config.token)
                .await
                .map_err(|_| fail(BatchReason::RpcReadFailed))?;
            if funds < U256::from(deposit.amount) {
                return Err(fail(BatchReason::InsufficientBalance));
            }
            if voucher.max_claimable > onchain.balance.saturating_add(deposit.amount) {
                return Err(fail(BatchReason::CumulativeExceedsBalance));
            }
        }
        BatchPayload::Voucher { .. } | BatchPayload::Refund { .. } => {
            if onchain.balance == 0 {
                return Err(fail(BatchReason::ChannelNotFound));
            }
            if voucher.max_claimable > onchain.balance {
                return Err(fail(BatchReason::CumulativeExceedsBalance));
            }
            // A refund's voucher may repeat what was claimed; a payment's must add to it.
            let refund = matches!(payment, BatchPayload::Refund { .. });
            if voucher.max_claimable < onchain.total_claimed
                || (!refund && voucher.max_claimable == onchain.total_claimed)
            {
                return Err(fail(BatchReason::CumulativeBelowClaimed));
            }
        }
    }
    Ok(Checked {
        payment,
        payer,
        id,
        onchain,
    })
}

/// Checks the deposit again, submits it, and reports the channel after it.
async fn deposit(request: &Request<'_>) -> Result<Value, Failure> {
    let Checked {
        payment, payer, id, ..
    } = check(request).await?;
    let BatchPayload::Deposit {
        config, deposit, ..
    } = payment
    else {
        // Vouchers and refund requests are the seller's to act on.
        return Err((BatchReason::PayloadType, Some(payer)));
    };
    let mined = request
        .chain
        .deposit(&config, &deposit)
        .await
        .map_err(|_| (BatchReason::DepositFailed, Some(payer)))?;
    tracing::info!(channel = %id, tx = %mined.tx_hash, "facilitator: deposit submitted");
    let mut settled = mined_json(&mined, Some(payer));
    settled["amount"] = json!(deposit.amount.to_string());
    if let Ok(onchain) = request.chain.channel(id).await {
        settled["extra"] = json!({"channelState": channel_state(id, &onchain)});
    }
    Ok(settled)
}

async fn act(
    request: &Request<'_>,
    channels: &Channels,
    action: SellerAction,
) -> Result<Value, Failure> {
    match action {
        SellerAction::Claim { claims, signature } => claim(request, channels, &claims, signature)
            .await
            .map(|mined| mined_json(&mined, None))
            .map_err(|reason| (reason, None)),
        SellerAction::Sweep { receiver, token } => request
            .chain
            .sweep(receiver, token)
            .await
            .map(|mined| mined_json(&mined, None))
            .map_err(|_| (BatchReason::SettleFailed, None)),
        SellerAction::Refund(refund) => {
            let SellerRefund {
                config,
                voucher,
                amount,
                nonce,
                claims,
                refund_signature,
                claim_signature,
            } = *refund;
            let payer = Some(config.payer);
            let fail = |reason| (reason, payer);
            let id = verify::bind(&request.chain.escrow, &config, &voucher).map_err(fail)?;
            // What was earned is claimed before the rest goes back.
            if !claims.is_empty() {
                claim(request, channels, &claims, claim_signature)
                    .await
                    .map_err(fail)?;
            }
            let nonce = u64::try_from(nonce).map_err(|_| fail(BatchReason::RefundPayload))?;
            let signature = match refund_signature {
                Some(signature) => signature,
                None => {
                    let digest = request
                        .chain
                        .escrow
                        .refund_digest(id, U256::from(nonce), amount);
                    sign(request, channels, &[&config], &digest).map_err(fail)?
                }
            };
            let mined = request
                .chain
                .refund(&config, amount, nonce, signature, None)
                .await
                .map_err(|_| fail(BatchReason::RefundFailed))?;
            let mut settled = mined_json(&mined, payer);
            settled["amount"] = json!(mined.refunded().to_string());
            Ok(settled)
        }
    }
}

/// One `claimWithSignature` over the seller's claims.
async fn claim(
    request: &Request<'_>,
    channels: &Channels,
    claims: &[SellerClaim],
    signature: Option<Bytes>,
) -> Result<Mined, BatchReason> {
    let escrow = &request.chain.escrow;
    let rows: Vec<ClaimRow> = claims
        .iter()
        .map(|claim| ClaimRow {
            config: claim.config.clone(),
            voucher: SignedVoucher {
                channel_id: escrow.channel_id(&claim.config),
                max_claimable: claim.max_claimable,
                signature: claim.signature.clone(),
            },
            total_claimed: claim.total_claimed,
        })
        .collect();
    let signature = match signature {
        Some(signature) => signature,
        None => {
            let entries = rows.iter().map(ClaimRow::entry).collect();
            let configs: Vec<&ChannelConfig> = rows.iter().map(|row| &row.config).collect();
            sign(
                request,
                channels,
                &configs,
                &escrow.claim_batch_digest(entries),
            )?
        }
    };
    request
        .chain
        .claim(&rows, signature)
        .await
        .map_err(|_| BatchReason::ClaimFailed)
}

/// Our receiverAuthorizer's signature, only for channels that name it and
/// are not RunGate's own: those billing collects itself, claiming before any
/// refund, so that a payer could not have its unclaimed spending refunded.
fn sign(
    request: &Request<'_>,
    channels: &Channels,
    configs: &[&ChannelConfig],
    digest: &B256,
) -> Result<Bytes, BatchReason> {
    if configs
        .iter()
        .any(|config| config.receiver == request.chain.network.pay_to)
    {
        return Err(BatchReason::Receiver);
    }
    if configs
        .iter()
        .any(|config| config.receiverAuthorizer != channels.authorizer())
    {
        return Err(BatchReason::AuthorizerMismatch);
    }
    channels
        .sign(digest)
        .map_err(|_| BatchReason::AuthorizerMismatch)
}

fn mined_json(mined: &Mined, payer: Option<Address>) -> Value {
    json!({
        "transaction": mined.tx_hash.to_string(),
        "payer": payer.map(|p| p.to_checksum(None)),
    })
}

/// The channel as the official facilitator reports it.
fn channel_state(id: B256, onchain: &OnChain) -> Value {
    json!({
        "channelId": id.to_string(),
        "balance": onchain.balance.to_string(),
        "totalClaimed": onchain.total_claimed.to_string(),
        "withdrawRequestedAt": onchain.withdraw_requested_at,
        "refundNonce": onchain.refund_nonce.to_string(),
    })
}
