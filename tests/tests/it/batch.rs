//! x402 batch-settlement end to end on a real chain (anvil, our escrow at
//! the canonical address) and a real ledger: one deposit, a voucher per
//! call, one claim and one sweep collecting exactly what was served; every
//! refusal with the scheme's reason and nothing moved; refunds; receipts
//! and the book agreeing with the chain. (The official clients pay the same
//! way in tests/python.)

use std::time::Duration;

use alloy_signer_local::PrivateKeySigner;
use rungate_common::clock::now;
use rungate_proto::billing::v1::CollectRequest;
use rungate_proto::billing::v1::billing_service_client::BillingServiceClient;
use rungate_tests::batch::{BatchPayer, batch_offer, payment_response};
use rungate_tests::chain::{self, PAY_TO};
use rungate_tests::paid::{PaidOptions, PaidStack};
use serde_json::{Value, json};

const BODY: &str =
    r#"{"model":"fake-echo","messages":[{"role":"user","content":"pay me"}],"max_tokens":2}"#;
const DEPOSIT: u128 = 1_000;

async fn stack() -> PaidStack {
    let cluster = rungate_tests::cluster();
    PaidStack::start(
        &cluster.inference_url,
        &cluster.database_url,
        PaidOptions::default(),
    )
    .await
    .expect("paid stack")
}

async fn chat(stack: &PaidStack, payment: Option<&str>, body: &str) -> reqwest::Response {
    let mut request = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", stack.edge_url))
        .header("content-type", "application/json")
        .body(body.to_owned());
    if let Some(payment) = payment {
        request = request.header("PAYMENT-SIGNATURE", payment);
    }
    request.send().await.expect("edge")
}

/// The v2 PaymentRequired of an unpaid call.
async fn required(stack: &PaidStack) -> Value {
    let unpaid = chat(stack, None, BODY).await;
    assert_eq!(unpaid.status(), 402);
    rungate_tests::x402::payment_required(unpaid.headers()).expect("v2 402")
}

async fn funded(stack: &PaidStack, amount: u128) -> PrivateKeySigner {
    let payer = PrivateKeySigner::random();
    chain::mint(&stack.chain_url, &payer.address().to_checksum(None), amount)
        .await
        .expect("mint");
    payer
}

async fn balance(stack: &PaidStack, who: &str) -> u128 {
    chain::balance(&stack.chain_url, who)
        .await
        .expect("balance")
}

async fn refusal(response: reqwest::Response) -> (String, Value) {
    assert_eq!(response.status(), 402);
    let required = rungate_tests::x402::payment_required(response.headers()).expect("402");
    (
        required["error"].as_str().unwrap_or_default().to_owned(),
        required,
    )
}

async fn receipt(stack: &PaidStack, id: &str) -> Value {
    reqwest::get(format!("{}/v1/receipts/{id}", stack.edge_url))
        .await
        .expect("edge")
        .json()
        .await
        .expect("JSON")
}

async fn collect(stack: &PaidStack) -> rungate_proto::billing::v1::CollectResponse {
    let mut billing = BillingServiceClient::connect(stack.billing_url.clone())
        .await
        .expect("billing");
    billing
        .collect(CollectRequest {})
        .await
        .expect("collect")
        .into_inner()
}

alloy_sol_types::sol! {
    function channels(bytes32 channelId) view returns (uint128 balance, uint128 totalClaimed);
}

/// The channel's (balance, totalClaimed) on the escrow.
async fn escrow(stack: &PaidStack, channel: &str) -> (u128, u128) {
    use alloy_sol_types::SolCall;
    let call = channelsCall {
        channelId: channel.parse().expect("channel id"),
    };
    let data = format!("0x{}", alloy_primitives::hex::encode(call.abi_encode()));
    let out = chain::rpc(
        &reqwest::Client::new(),
        &stack.chain_url,
        "eth_call",
        json!([{"to": chain::BATCH_SETTLEMENT, "data": data}, "latest"]),
    )
    .await
    .expect("eth_call");
    let bytes = alloy_primitives::hex::decode(out.as_str().expect("hex")).expect("hex");
    let state = channelsCall::abi_decode_returns(&bytes).expect("decode");
    (state.balance, state.totalClaimed)
}

/// Every book account of the stack's ledger: (code, posted debits, posted credits).
async fn balances(stack: &PaidStack) -> Vec<(String, u128, u128)> {
    use rungate_proto::ledger::v1::ListBalancesRequest;
    use rungate_proto::ledger::v1::ledger_service_client::LedgerServiceClient;
    let mut ledger = LedgerServiceClient::connect(stack.ledger_url.clone())
        .await
        .expect("ledger");
    ledger
        .list_balances(ListBalancesRequest::default())
        .await
        .expect("balances")
        .into_inner()
        .balances
        .into_iter()
        .map(|b| {
            let n = |a: Option<rungate_proto::types::v1::Amount>| a.unwrap_or_default().atomic();
            (b.account, n(b.debits_posted), n(b.credits_posted))
        })
        .collect()
}

/// Opens a channel with a deposit paying the first call; the payer and its receipt id.
async fn open_channel(stack: &PaidStack) -> (BatchPayer, Value) {
    let required = required(stack).await;
    let offer = batch_offer(&required).expect("offer");
    let payer = BatchPayer::new(funded(stack, 10_000).await, &offer).expect("payer");
    let price: u128 = offer["amount"]
        .as_str()
        .expect("amount")
        .parse()
        .expect("u128");
    let deposit = payer
        .deposit(&required, DEPOSIT, price, now(), 300)
        .expect("deposit");
    let paid = chat(stack, Some(&deposit), BODY).await;
    assert_eq!(paid.status(), 200, "{:?}", paid.text().await);
    let response = payment_response(paid.headers()).expect("payment response");
    (payer, response)
}

#[tokio::test]
async fn one_deposit_pays_many_calls_and_one_claim_and_one_sweep_collect_exactly_them() {
    let stack = stack().await;
    let required = required(&stack).await;
    let offer = batch_offer(&required).expect("a batch-settlement offer next to exact");
    assert_eq!(required["accepts"][0]["scheme"], "exact");
    assert_eq!(
        offer["extra"]["receiverAuthorizer"],
        chain::RECEIVER_AUTHORIZER
    );
    assert_eq!(offer["extra"]["minDeposit"], "1000000");
    assert_eq!(offer["extra"]["withdrawDelay"], 900);
    let price: u128 = offer["amount"]
        .as_str()
        .expect("amount")
        .parse()
        .expect("u128");
    assert_eq!(price, 1, "the list price");

    let (payer, first) = open_channel(&stack).await;
    let channel = payer.channel_id.to_string();
    assert_eq!(first["success"], true);
    assert!(
        first["transaction"].as_str().is_some_and(|t| t.len() == 66),
        "the deposit's transaction: {first}"
    );
    assert_eq!(first["extra"]["chargedAmount"], "1");
    assert_eq!(
        first["extra"]["channelState"]["chargedCumulativeAmount"],
        "1"
    );
    assert_eq!(escrow(&stack, &channel).await, (DEPOSIT, 0));

    let payer_address = payer.signer.address().to_checksum(None);
    let before = balance(&stack, &payer_address).await;
    let mut ids = Vec::new();
    for cumulative in 2..=10u128 {
        let body = if cumulative % 2 == 0 {
            BODY.replace("\"max_tokens\":2", "\"max_tokens\":2,\"stream\":true")
        } else {
            BODY.to_owned()
        };
        let paid = chat(
            &stack,
            Some(&payer.pay(&required, cumulative).expect("pay")),
            &body,
        )
        .await;
        assert_eq!(paid.status(), 200);
        let response = payment_response(paid.headers()).expect("payment response");
        assert_eq!(response["transaction"], "", "a voucher is collected later");
        assert_eq!(
            response["extra"]["channelState"]["chargedCumulativeAmount"],
            cumulative.to_string()
        );
        ids.push(
            paid.headers()["x-rungate-receipt"]
                .to_str()
                .expect("id")
                .to_owned(),
        );
        paid.text().await.expect("body");
    }
    // Nothing moved on chain for the vouchers.
    assert_eq!(balance(&stack, &payer_address).await, before);
    assert_eq!(escrow(&stack, &channel).await, (DEPOSIT, 0));

    tokio::time::sleep(Duration::from_millis(200)).await; // the coalesced voucher write
    let pay_to_before = balance(&stack, PAY_TO).await;
    let collected = collect(&stack).await;
    assert_eq!(collected.channels_claimed, 1);
    assert_eq!(collected.claim_transactions.len(), 1);
    assert_eq!(collected.sweep_transactions.len(), 1);
    assert_eq!(
        balance(&stack, PAY_TO).await - pay_to_before,
        10,
        "exactly 10 calls x 1"
    );
    assert_eq!(escrow(&stack, &channel).await, (DEPOSIT, 10));
    // Nothing left to collect: a second pass sends nothing.
    let again = collect(&stack).await;
    assert_eq!(
        again.claim_transactions.len() + again.sweep_transactions.len(),
        0
    );

    // The book: the deposit sits in the channel's escrow account (the
    // payer's), the 10 served calls moved to earned and, claimed, to revenue.
    let book = balances(&stack).await;
    let posted = |prefix: &str| -> (u128, u128) {
        book.iter()
            .filter(|(code, ..)| code.starts_with(prefix))
            .fold((0, 0), |(d, c), (_, debits, credits)| {
                (d + debits, c + credits)
            })
    };
    assert_eq!(
        posted("escrow:"),
        (10, DEPOSIT),
        "deposit in, 10 earned out"
    );
    assert_eq!(posted("earned:"), (10, 10), "earned, then claimed");
    assert_eq!(posted("revenue:"), (0, 10));
    let all = posted("");
    assert_eq!(all.0, all.1, "debits = credits");
    assert!(
        book.iter()
            .any(|(code, ..)| code.starts_with("expense:gas:")),
        "gas is booked"
    );

    let last = receipt(&stack, ids.last().expect("calls")).await;
    assert_eq!(last["amount"], "1");
    assert_eq!(last["settlement"]["scheme"], "batch-settlement");
    assert_eq!(last["settlement"]["status"], "settled");
    assert_eq!(last["settlement"]["channel"], channel.as_str());
    assert_eq!(last["settlement"]["cumulative"], "10");
    assert_eq!(
        last["settlement"]["claim_transaction"],
        collected.claim_transactions[0].as_str()
    );
    assert_eq!(
        last["settlement"]["transaction"],
        collected.sweep_transactions[0].as_str()
    );
    assert_eq!(
        last["payer"].as_str().map(str::to_ascii_lowercase),
        Some(payer_address.to_ascii_lowercase())
    );
}

#[tokio::test]
async fn every_refusal_has_its_reason_and_moves_nothing() {
    let stack = stack().await;
    let required = required(&stack).await;
    let (payer, _) = open_channel(&stack).await;
    let channel = payer.channel_id.to_string();
    let refused = |payment: String| {
        let stack = &stack;
        async move { refusal(chat(stack, Some(&payment), BODY).await).await }
    };

    // Signed by someone else.
    let forged = payer
        .voucher_signed_by(&PrivateKeySigner::random(), 2)
        .expect("voucher");
    let (reason, _) = refused(payer.pay_with(&required, forged).expect("pay")).await;
    assert_eq!(reason, "invalid_batch_settlement_evm_voucher_signature");

    // Behind (a replayed old voucher) and ahead: the corrective 402 carries
    // our state and latest voucher, for the client to resync from.
    for stale in [1u128, 5] {
        let (reason, corrective) = refused(payer.pay(&required, stale).expect("pay")).await;
        assert_eq!(
            reason,
            "invalid_batch_settlement_evm_cumulative_amount_mismatch"
        );
        let offer = batch_offer(&corrective).expect("offer");
        assert_eq!(
            offer["extra"]["channelState"]["chargedCumulativeAmount"],
            "1"
        );
        assert_eq!(
            offer["extra"]["channelState"]["channelId"],
            channel.as_str()
        );
        assert_eq!(offer["extra"]["voucherState"]["signedMaxClaimable"], "1");
    }

    // A channel nobody deposited into.
    let stranger = BatchPayer::new(
        PrivateKeySigner::random(),
        &batch_offer(&required).expect("offer"),
    )
    .expect("payer");
    let (reason, _) = refused(stranger.pay(&required, 1).expect("pay")).await;
    assert_eq!(reason, "invalid_batch_settlement_evm_channel_not_found");

    // Another receiver, token or withdrawal delay is not our channel.
    for (key, value) in [
        ("payTo", json!("0x0000000000000000000000000000000000000001")),
        ("asset", json!("0x0000000000000000000000000000000000000002")),
    ] {
        let mut theirs = required.clone();
        theirs["accepts"][1][key] = value.clone();
        let other = BatchPayer::new(payer.signer.clone(), &batch_offer(&theirs).expect("offer"))
            .expect("payer");
        // Their accepted matches theirs, not our offer.
        let (reason, _) = refused(other.pay(&theirs, 2).expect("pay")).await;
        assert_eq!(reason, "invalid_payment_requirements", "{key}");
        // Our accepted with their channel: the channel is not ours.
        let header = other.pay(&required, 2).expect("pay");
        let (reason, _) = refused(header).await;
        let expected = match key {
            "payTo" => "invalid_batch_settlement_evm_receiver_mismatch",
            _ => "invalid_batch_settlement_evm_token_mismatch",
        };
        assert_eq!(reason, expected);
    }

    // Still in step after all that: the next voucher is 2.
    let paid = chat(&stack, Some(&payer.pay(&required, 2).expect("pay")), BODY).await;
    assert_eq!(paid.status(), 200);
    assert_eq!(
        escrow(&stack, &channel).await,
        (DEPOSIT, 0),
        "nothing claimed or moved"
    );
}

#[tokio::test]
async fn two_calls_at_once_on_one_channel_one_is_served_one_is_busy() {
    let stack = stack().await;
    let required = required(&stack).await;
    let (payer, _) = open_channel(&stack).await;
    // A slow call holds the channel (the trickling upstream answers word by word).
    // ~2 s of words, one every 100 ms.
    let slow = BODY
        .replace("fake-echo", "fake-trickle")
        .replace("pay me", &"word ".repeat(20))
        .replace("\"max_tokens\":2", "\"max_tokens\":30");
    let holding = payer.pay(&required, 2).expect("pay");
    let first = chat(&stack, Some(&holding), &slow);
    let second = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        chat(&stack, Some(&payer.pay(&required, 2).expect("pay")), BODY).await
    };
    let (first, second) = tokio::join!(first, second);
    assert_eq!(first.status(), 200);
    let (reason, _) = refusal(second).await;
    assert_eq!(reason, "invalid_batch_settlement_evm_channel_busy");
}

#[tokio::test]
async fn a_voucher_above_the_deposit_is_refused() {
    let stack = stack().await;
    let required = required(&stack).await;
    let offer = batch_offer(&required).expect("offer");
    let payer = BatchPayer::new(funded(&stack, 10_000).await, &offer).expect("payer");
    // A deposit of 1 pays the first call exactly; the second voucher (2) is past it.
    let deposit = payer.deposit(&required, 1, 1, now(), 300).expect("deposit");
    assert_eq!(chat(&stack, Some(&deposit), BODY).await.status(), 200);
    let (reason, _) =
        refusal(chat(&stack, Some(&payer.pay(&required, 2).expect("pay")), BODY).await).await;
    assert_eq!(
        reason,
        "invalid_batch_settlement_evm_cumulative_exceeds_balance"
    );
    // And a deposit whose first voucher exceeds it.
    let greedy = BatchPayer::new(funded(&stack, 10_000).await, &offer).expect("payer");
    let deposit = greedy
        .deposit(&required, 1, 2, now(), 300)
        .expect("deposit");
    let (reason, _) = refusal(chat(&stack, Some(&deposit), BODY).await).await;
    assert_eq!(
        reason,
        "invalid_batch_settlement_evm_cumulative_amount_mismatch"
    );
}

#[tokio::test]
async fn a_refund_returns_exactly_the_unspent_deposit_and_claims_the_rest() {
    let stack = stack().await;
    let required = required(&stack).await;
    let (payer, _) = open_channel(&stack).await;
    for cumulative in 2..=3u128 {
        let paid = chat(
            &stack,
            Some(&payer.pay(&required, cumulative).expect("pay")),
            BODY,
        )
        .await;
        assert_eq!(paid.status(), 200);
    }
    let address = payer.signer.address().to_checksum(None);
    let before = balance(&stack, &address).await;
    // A refund's voucher must be the charged total (3), not more.
    let (reason, _) = refusal(
        reqwest::Client::new()
            .get(format!("{}/v1/chat/completions", stack.edge_url))
            .header(
                "PAYMENT-SIGNATURE",
                payer.refund(&required, 4, None).expect("refund"),
            )
            .send()
            .await
            .expect("edge"),
    )
    .await;
    assert_eq!(
        reason,
        "invalid_batch_settlement_evm_cumulative_amount_mismatch"
    );

    // The refund probe (GET, no payment) is a 402 with the batch offer.
    let probe = reqwest::get(format!("{}/v1/chat/completions", stack.edge_url))
        .await
        .expect("edge");
    let (_, probe) = refusal(probe).await;
    batch_offer(&probe).expect("offer");

    let refunded = reqwest::Client::new()
        .get(format!("{}/v1/chat/completions", stack.edge_url))
        .header(
            "PAYMENT-SIGNATURE",
            payer.refund(&probe, 3, None).expect("refund"),
        )
        .send()
        .await
        .expect("edge");
    assert_eq!(refunded.status(), 200);
    let response = payment_response(refunded.headers()).expect("payment response");
    assert_eq!(response["success"], true);
    assert_eq!(response["amount"], (DEPOSIT - 3).to_string());
    let body: Value = refunded.json().await.expect("JSON");
    assert_eq!(body["message"], "Refund acknowledged");
    assert_eq!(balance(&stack, &address).await - before, DEPOSIT - 3);
    // What was earned was claimed in the same transaction, none refunded.
    let (channel_balance, claimed) = escrow(&stack, &payer.channel_id.to_string()).await;
    assert_eq!((channel_balance, claimed), (3, 3));
    // Nothing left: a second refund has nothing to return.
    let (reason, _) = refusal(
        reqwest::Client::new()
            .get(format!("{}/v1/chat/completions", stack.edge_url))
            .header(
                "PAYMENT-SIGNATURE",
                payer.refund(&probe, 3, None).expect("refund"),
            )
            .send()
            .await
            .expect("edge"),
    )
    .await;
    assert_eq!(reason, "invalid_batch_settlement_evm_refund_no_balance");
}

/// A model priced per token: the voucher's increment is the quote (prompt
/// estimate + max_tokens), the charge is what the call used; the next
/// voucher follows the charged total, and the claim collects exactly the
/// sum of the charges.
#[tokio::test]
async fn per_token_prices_charge_what_the_call_used() {
    let cluster = rungate_tests::cluster();
    let stack = PaidStack::start(
        &cluster.inference_url,
        &cluster.database_url,
        PaidOptions {
            prices_toml: Some(
                "[default]\nper_call = \"0\"\nper_prompt_token = \"1\"\nper_completion_token = \"2\"\n"
                    .into(),
            ),
            ..PaidOptions::default()
        },
    )
    .await
    .expect("paid stack");
    let required = required(&stack).await;
    let quote: u128 = batch_offer(&required).expect("offer")["amount"]
        .as_str()
        .expect("amount")
        .parse()
        .expect("u128");
    let (payer, first) = open_channel(&stack).await;
    // What each call costs at these prices, from the usage it reports.
    let cost = |body: &Value| -> u128 {
        let usage = &body["usage"];
        usage["prompt_tokens"].as_u64().expect("usage") as u128
            + 2 * usage["completion_tokens"].as_u64().expect("usage") as u128
    };
    let charged_first: u128 = first["extra"]["chargedAmount"]
        .as_str()
        .expect("charged")
        .parse()
        .expect("u128");
    assert!(
        charged_first < quote,
        "charged {charged_first} of a {quote} quote"
    );
    let mut cumulative = charged_first;
    assert_eq!(
        first["extra"]["channelState"]["chargedCumulativeAmount"],
        cumulative.to_string()
    );

    let paid = chat(
        &stack,
        Some(&payer.pay(&required, cumulative + quote).expect("pay")),
        BODY,
    )
    .await;
    assert_eq!(paid.status(), 200);
    let response = payment_response(paid.headers()).expect("payment response");
    let id = paid.headers()["x-rungate-receipt"]
        .to_str()
        .expect("id")
        .to_owned();
    let body: Value = paid.json().await.expect("JSON");
    assert_eq!(response["extra"]["chargedAmount"], cost(&body).to_string());
    cumulative += cost(&body);
    assert_eq!(
        response["extra"]["channelState"]["chargedCumulativeAmount"],
        cumulative.to_string()
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        receipt(&stack, &id).await["amount"],
        cost(&body).to_string()
    );

    // A streamed call's headers go before its usage: charged its quote.
    let stream = BODY.replace("\"max_tokens\":2", "\"max_tokens\":2,\"stream\":true");
    let paid = chat(
        &stack,
        Some(&payer.pay(&required, cumulative + quote).expect("pay")),
        &stream,
    )
    .await;
    assert_eq!(paid.status(), 200);
    let response = payment_response(paid.headers()).expect("payment response");
    assert_eq!(response["extra"]["chargedAmount"], quote.to_string());
    paid.text().await.expect("body");
    cumulative += quote;

    tokio::time::sleep(Duration::from_millis(200)).await;
    let pay_to_before = balance(&stack, PAY_TO).await;
    let collected = collect(&stack).await;
    assert_eq!(collected.claim_transactions.len(), 1);
    assert_eq!(
        balance(&stack, PAY_TO).await - pay_to_before,
        cumulative,
        "the sum of the charges"
    );
    assert_eq!(
        escrow(&stack, &payer.channel_id.to_string()).await,
        (DEPOSIT, cumulative)
    );
}

/// After a billing restart the channel is rebuilt from the ledger and the
/// client goes on with its next voucher; nothing is charged twice.
#[tokio::test]
async fn a_billing_restart_keeps_the_channel() {
    let mut stack = stack().await;
    let required = required(&stack).await;
    let before = balance(&stack, PAY_TO).await;
    let (payer, _) = open_channel(&stack).await;
    for cumulative in 2..=3u128 {
        let paid = chat(
            &stack,
            Some(&payer.pay(&required, cumulative).expect("pay")),
            BODY,
        )
        .await;
        assert_eq!(paid.status(), 200);
    }
    tokio::time::sleep(Duration::from_millis(200)).await; // the coalesced voucher write
    stack.restart_billing().await.expect("restart");
    let paid = chat(&stack, Some(&payer.pay(&required, 4).expect("pay")), BODY).await;
    assert_eq!(paid.status(), 200, "{:?}", paid.text().await);
    // A voucher the restarted billing has already seen charged is refused, with its state.
    let (reason, corrective) =
        refusal(chat(&stack, Some(&payer.pay(&required, 4).expect("pay")), BODY).await).await;
    assert_eq!(
        reason,
        "invalid_batch_settlement_evm_cumulative_amount_mismatch"
    );
    assert_eq!(
        batch_offer(&corrective).expect("offer")["extra"]["channelState"]["chargedCumulativeAmount"],
        "4"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    // (The restarted billing's claim worker collects what was due when it
    // started; this collects the rest.)
    collect(&stack).await;
    assert_eq!(
        balance(&stack, PAY_TO).await - before,
        4,
        "4 calls, each once"
    );
    assert_eq!(
        escrow(&stack, &payer.channel_id.to_string()).await,
        (DEPOSIT, 4)
    );
}

/// The edge sends a voucher-paid answer's last bytes only once billing has
/// taken the call's completion. Billing going away mid-call, after its
/// early settlement answer (a call priced per call is charged its quote),
/// turns the answer into a 503, or a streamed one's end into an error event
/// without `[DONE]`; the voucher was never charged and pays the next call.
#[tokio::test]
async fn a_call_billing_never_took_is_not_answered_and_not_charged() {
    let mut stack = stack().await;
    let required = required(&stack).await;
    let (payer, _) = open_channel(&stack).await;
    // ~2 s of words, longer than the restart's 1 s drain.
    let slow = |stream: bool| {
        BODY.replace("fake-echo", "fake-trickle")
            .replace("pay me", &"word ".repeat(20))
            .replace(
                "\"max_tokens\":2",
                &format!("\"max_tokens\":30,\"stream\":{stream}"),
            )
    };
    for (stream, cumulative) in [(false, 2u128), (true, 3)] {
        let voucher = payer.pay(&required, cumulative).expect("pay");
        let request = reqwest::Client::new()
            .post(format!("{}/v1/chat/completions", stack.edge_url))
            .header("content-type", "application/json")
            .header("PAYMENT-SIGNATURE", &voucher)
            .body(slow(stream));
        let call = async {
            let response = request.send().await.expect("edge");
            (response.status(), response.text().await.unwrap_or_default())
        };
        let restart = async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            stack.restart_billing().await.expect("restart");
        };
        let ((status, body), ()) = tokio::join!(call, restart);
        if stream {
            assert_eq!(status, 200, "headers go out with the first byte");
            assert!(body.contains("\"error\""), "{body}");
            assert!(!body.contains("[DONE]"), "{body}");
        } else {
            assert_eq!(status, 503, "{body}");
            let error: Value = serde_json::from_str(&body).expect("an OpenAI error");
            assert!(error["error"]["message"].is_string(), "{body}");
        }
        let paid = chat(&stack, Some(&voucher), BODY).await;
        assert_eq!(
            paid.status(),
            200,
            "the voucher was not charged ({stream}): {:?}",
            paid.headers().get("payment-required")
        );
    }
}

/// An inference service of its own: the tiny local model in one slot, so
/// no other test's calls take its prompt cache.
async fn tiny_inference() -> String {
    let path = rungate_tests::fixtures::tiny_gguf().expect("tiny model");
    let registry = super::local_engine::registry_of(format!(
        "[[models]]\nid = \"tiny-local\"\nengine = {{ kind = \"local\", path = \"{}\", threads = 1, max_concurrent = 1 }}\n",
        path.display()
    ))
    .await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(rungate_inference::serve_registry(
        listener,
        registry,
        std::future::pending(),
        Duration::from_secs(1),
    ));
    rungate_tests::cluster::wait_serving(&url)
        .await
        .expect("inference up");
    url
}

/// A call whose prompt the engine found in its cache is charged those
/// tokens at `per_cached_prompt_token`: the second of two calls with the
/// same long prompt costs less, by exactly what its usage says was cached.
#[tokio::test]
async fn cached_prompt_tokens_are_charged_at_their_own_rate() {
    let inference = tiny_inference().await;
    let stack = PaidStack::start(
        &inference,
        &rungate_tests::cluster().database_url,
        PaidOptions {
            prices_toml: Some(
                "[default]\nper_call = \"0\"\nper_prompt_token = \"1\"\nper_cached_prompt_token = \"0.25\"\nper_completion_token = \"2\"\n"
                    .into(),
            ),
            ..PaidOptions::default()
        },
    )
    .await
    .expect("paid stack");
    let body = json!({
        "model": "tiny-local",
        "messages": [
            {"role": "system", "content": "You are a careful agent with tools. ".repeat(4)},
            {"role": "user", "content": "hello"},
        ],
        "max_tokens": 4,
        "temperature": 0,
    })
    .to_string();
    let unpaid = chat(&stack, None, &body).await;
    let required = rungate_tests::x402::payment_required(unpaid.headers()).expect("402");
    let offer = batch_offer(&required).expect("offer");
    let quote: u128 = offer["amount"]
        .as_str()
        .expect("amount")
        .parse()
        .expect("u128");
    let payer = BatchPayer::new(funded(&stack, 100_000).await, &offer).expect("payer");
    let charged = |response: &reqwest::Response| -> u128 {
        payment_response(response.headers()).expect("payment response")["extra"]["chargedAmount"]
            .as_str()
            .expect("charged")
            .parse()
            .expect("u128")
    };
    let tokens = |body: &Value, field: &str| -> u128 {
        body["usage"]
            .pointer(field)
            .and_then(Value::as_u64)
            .unwrap_or_default() as u128
    };

    let deposit = payer
        .deposit(&required, 10_000, quote, now(), 300)
        .expect("deposit");
    let first = chat(&stack, Some(&deposit), &body).await;
    assert_eq!(first.status(), 200, "{:?}", first.text().await);
    let first_charge = charged(&first);
    let first: Value = first.json().await.expect("JSON");
    assert_eq!(tokens(&first, "/prompt_tokens_details/cached_tokens"), 0);
    let prompt = tokens(&first, "/prompt_tokens");
    let completion = tokens(&first, "/completion_tokens");
    assert_eq!(first_charge, prompt + 2 * completion);

    let voucher = payer.pay(&required, first_charge + quote).expect("pay");
    let second = chat(&stack, Some(&voucher), &body).await;
    assert_eq!(second.status(), 200);
    let second_charge = charged(&second);
    let second: Value = second.json().await.expect("JSON");
    let cached = tokens(&second, "/prompt_tokens_details/cached_tokens");
    assert!(
        cached >= 64,
        "the system prompt came from the cache ({cached})"
    );
    assert_eq!(tokens(&second, "/completion_tokens"), completion);
    // (prompt − cached) × 1 + cached × 0.25 + completion × 2, rounded up once.
    assert_eq!(
        second_charge,
        (prompt - cached) + cached.div_ceil(4) + 2 * completion
    );
    assert!(second_charge < first_charge);
}

/// What cannot fit a local model's context is a 400 naming the field, not
/// a 402: no payment is asked for a call that would be refused.
#[tokio::test]
async fn a_call_too_big_for_the_context_is_refused_before_payment() {
    let inference = tiny_inference().await;
    let stack = PaidStack::start(
        &inference,
        &rungate_tests::cluster().database_url,
        PaidOptions::default(),
    )
    .await
    .expect("paid stack");
    let ask = |content: String, max_tokens: u32| {
        json!({
            "model": "tiny-local",
            "messages": [{"role": "user", "content": content}],
            "max_tokens": max_tokens,
        })
        .to_string()
    };
    for (body, param) in [
        (ask("word ".repeat(2_000), 4), "messages"),
        (ask("hello".into(), 100_000), "max_tokens"),
    ] {
        let response = chat(&stack, None, &body).await;
        assert_eq!(response.status(), 400);
        let error: Value = response.json().await.expect("OpenAI error");
        assert_eq!(error["error"]["param"], param, "{error}");
    }
}
