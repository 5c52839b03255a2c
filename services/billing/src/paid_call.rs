//! One paid call as one bidirectional stream. The edge opens it with the
//! payment; billing answers `authorized`, and `settled` when the x402
//! SettleResponse for the response header is known. For `exact`: right away
//! in deferred mode; after `Completed` in sync mode; as soon as the chain
//! says so for a sync streamed call (settling while the prompt is processed).
//! For batch-settlement: after `Completed`, with the charge the call's usage
//! comes to; a streamed call's headers go out first, so it is charged its
//! quote. A call that ends without `Completed` was not served: its
//! authorization is voided, its channel released (a sync streamed `exact`
//! call that already settled keeps its charge).

use std::sync::Arc;

use futures::Stream;
use rungate_proto::billing::v1::{
    AuthorizeRequest, Completed, CompletedTaken, PaidCallEvent, PaidCallUpdate, SettleResponse,
    paid_call_event::Event, paid_call_update::Update,
};
use rungate_proto::ledger::v1::Usage;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming};
use tracing::Instrument;
use tracing::field::Empty;

use alloy_primitives::Address;

use crate::calls::{Admission, BatchCall, Billing};
use crate::chain::Chain;
use crate::config::SettlementMode;
use crate::payments::{Authorized, Payments};
use crate::x402::batch::SCHEME as BATCH;
use crate::x402::exact_evm::SCHEME as EXACT;
use crate::x402::http::attach_reply;

pub fn run(
    api: Arc<Billing>,
    events: Streaming<PaidCallEvent>,
) -> impl Stream<Item = Result<PaidCallUpdate, Status>> {
    let (updates, out) = mpsc::channel(4);
    // The call's span (in the edge's trace) follows it into the task, so
    // the ledger writes it makes carry the same trace.
    let span = tracing::info_span!(
        "x402 paid call",
        x402.scheme = Empty,
        x402.network = Empty,
        x402.payer = Empty,
        x402.amount = Empty,
    );
    tokio::spawn(
        async move {
            if let Err(status) = drive(&api, events, &updates).await {
                let _ = updates.send(Err(status)).await;
            }
        }
        .instrument(span),
    );
    ReceiverStream::new(out)
}

/// The payment on the call's span: who pays, on which network, how.
fn trace_payment(scheme: &'static str, chain: &Chain, payer: &Address) {
    let span = tracing::Span::current();
    span.record("x402.scheme", scheme);
    span.record("x402.network", chain.network.network.as_str());
    span.record("x402.payer", tracing::field::display(payer));
}

/// What the served call was charged, in atomic units.
fn trace_charge(atomic: u128) {
    tracing::Span::current().record("x402.amount", tracing::field::display(atomic));
}

type Updates = mpsc::Sender<Result<PaidCallUpdate, Status>>;

async fn send(updates: &Updates, update: Update) {
    // The edge may be gone; what happens next does not depend on it.
    let _ = updates
        .send(Ok(PaidCallUpdate {
            update: Some(update),
        }))
        .await;
}

/// How the call ended, from the edge's side.
enum End {
    Completed(Completed),
    NotServed(String),
}

/// Whether a call counts as served only once the edge can hear billing
/// take its completion. A batch-settlement charge lives only in billing,
/// and an edge that never hears it taken refuses the answer (503), so
/// billing must not charge it either. An `exact` call's edge keeps its own
/// usage record and answers anyway, so its completion counts regardless.
#[derive(Clone, Copy, PartialEq)]
enum Taken {
    MustReachEdge,
    Regardless,
}

/// Waits for the call's end; a `Completed` is acknowledged at once (the
/// edge holds the answer's last bytes until then).
async fn next_end(events: &mut Streaming<PaidCallEvent>, updates: &Updates, taken: Taken) -> End {
    let answer_gone = || End::NotServed("the call's answer stream ended".into());
    loop {
        let message = tokio::select! {
            message = events.message() => message,
            // Cut at billing's drain deadline: the edge will hear nothing more.
            () = updates.closed(), if taken == Taken::MustReachEdge => return answer_gone(),
        };
        match message {
            Ok(Some(PaidCallEvent {
                event: Some(Event::Completed(completed)),
            })) => {
                let ack = PaidCallUpdate {
                    update: Some(Update::CompletedTaken(CompletedTaken {})),
                };
                if updates.send(Ok(ack)).await.is_err() && taken == Taken::MustReachEdge {
                    return answer_gone();
                }
                return End::Completed(completed);
            }
            Ok(Some(PaidCallEvent {
                event: Some(Event::Aborted(aborted)),
            })) => return End::NotServed(aborted.reason),
            Ok(Some(_)) => {}
            Ok(None) => return End::NotServed("the edge ended the call".into()),
            Err(status) => return End::NotServed(format!("the edge went away: {status}")),
        }
    }
}

async fn drive(
    api: &Billing,
    mut events: Streaming<PaidCallEvent>,
    updates: &Updates,
) -> Result<(), Status> {
    let open = match events.message().await? {
        Some(PaidCallEvent {
            event: Some(Event::Open(open)),
        }) => open,
        _ => {
            return Err(Status::invalid_argument(
                "a paid call opens with its payment",
            ));
        }
    };
    let decision = api.authorize_call(&open).await?;
    send(updates, Update::Authorized(decision.response)).await;
    let authorized = match decision.admission {
        None => return Ok(()),
        Some(Admission::Batch(call)) => {
            crate::metrics::authorized(BATCH);
            trace_payment(BATCH, &call.chain, &call.reserved.payer);
            return batch(api, &open, call, events, updates).await;
        }
        Some(Admission::Exact(authorized)) => {
            crate::metrics::authorized(EXACT);
            trace_payment(EXACT, &authorized.chain, &authorized.payer);
            authorized
        }
    };
    let Some(payments) = api.payments_handle() else {
        return Ok(());
    };
    let version = authorized.version;
    let call = Call {
        payments,
        open: &open,
        authorized: &authorized,
    };
    match (call.payments.mode, open.stream) {
        (SettlementMode::Deferred, _) => {
            let settled = attach_reply(authorized.settle_response(true, "", None), version, None);
            send(updates, Update::Settled(settled)).await;
            match next_end(&mut events, updates, Taken::Regardless).await {
                End::Completed(completed) => call.record_usage(&completed).await?,
                End::NotServed(why) => call.void(&why).await?,
            }
        }
        (SettlementMode::Sync, false) => {
            match next_end(&mut events, updates, Taken::Regardless).await {
                End::Completed(completed) => {
                    // Usage first: were the settlement's outcome lost, the
                    // worker would find the call served and finish it.
                    call.record_usage(&completed).await?;
                    let settled = call.payments.settle_by_id(&authorized.request_id).await?;
                    send(
                        updates,
                        Update::Settled(attach_reply(settled, version, None)),
                    )
                    .await;
                }
                End::NotServed(why) => call.void(&why).await?,
            }
        }
        (SettlementMode::Sync, true) => {
            let settle = call.payments.settle_by_id(&authorized.request_id);
            // One future for the end, polled across turns: dropped midway
            // it could lose a `Completed` it had already read.
            let ending = next_end(&mut events, updates, Taken::Regardless);
            tokio::pin!(settle, ending);
            let mut settled: Option<SettleResponse> = None;
            let mut end = None;
            while settled.is_none() || end.is_none() {
                tokio::select! {
                    result = &mut settle, if settled.is_none() => {
                        let response = attach_reply(result?, version, None);
                        send(updates, Update::Settled(response.clone())).await;
                        settled = Some(response);
                    }
                    ended = &mut ending, if end.is_none() => end = Some(ended),
                }
            }
            if settled.is_some_and(|s| s.success) {
                // Settled before the first byte: the charge stands.
                let completed = match end {
                    Some(End::Completed(completed)) => completed,
                    _ => Completed {
                        finish_reason: "aborted".into(),
                        ..Default::default()
                    },
                };
                call.record_usage(&completed).await?;
            }
        }
    }
    Ok(())
}

struct Call<'a> {
    payments: Arc<Payments>,
    open: &'a AuthorizeRequest,
    authorized: &'a Authorized,
}

impl Call<'_> {
    async fn record_usage(&self, completed: &Completed) -> Result<(), Status> {
        let amount = Some(self.authorized.amount.into());
        self.payments
            .ledger
            .record_usage(Usage {
                request_id: self.authorized.request_id.clone(),
                model: self
                    .open
                    .quote
                    .as_ref()
                    .map(|q| q.model.clone())
                    .unwrap_or_default(),
                tokens: completed.usage,
                quoted: amount,
                charged: amount,
                engine: completed.engine.clone(),
                finish_reason: completed.finish_reason.clone(),
                ..Default::default()
            })
            .await?;
        crate::metrics::earned(EXACT, self.authorized.amount);
        trace_charge(self.authorized.amount);
        Ok(())
    }

    async fn void(&self, why: &str) -> Result<(), Status> {
        tracing::info!(request_id = %self.authorized.request_id, %why, "paid call not served; authorization voided");
        self.payments.funds.release(
            &self.authorized.chain.network.network,
            self.authorized.payer,
            alloy_primitives::U256::from(self.authorized.amount),
        );
        self.payments
            .ledger
            .void(&self.authorized.request_id, why)
            .await?;
        Ok(())
    }
}

/// A call paid from a batch-settlement channel.
async fn batch(
    api: &Billing,
    open: &AuthorizeRequest,
    call: BatchCall,
    mut events: Streaming<PaidCallEvent>,
    updates: &Updates,
) -> Result<(), Status> {
    let Some(channels) = api.channels() else {
        return Ok(());
    };
    let BatchCall {
        reserved,
        chain,
        version,
    } = call;
    let model = open
        .quote
        .as_ref()
        .map(|q| q.model.clone())
        .unwrap_or_default();
    let payer = reserved.payer.to_checksum(None);
    // A deposit's transaction; a voucher has none (it is collected later).
    let transaction = reserved
        .deposit
        .as_ref()
        .map(|m| m.tx_hash.to_string())
        .unwrap_or_default();
    let increment = reserved.increment;
    let settled = |charge: u128, snapshot: &crate::x402::batch::offer::Snapshot| {
        let response = SettleResponse {
            success: true,
            payer: payer.clone(),
            transaction: transaction.clone(),
            network: chain.network.network.clone(),
            amount: Some(charge.into()),
            ..Default::default()
        };
        let extra = serde_json::json!({
            "chargedAmount": charge.to_string(),
            "channelState": snapshot.channel_state(),
        });
        attach_reply(response, version, Some(&extra))
    };
    let usage = |completed: &Completed, charge: u128| Usage {
        request_id: open.request_id.clone(),
        model: model.clone(),
        tokens: completed.usage,
        quoted: Some(increment.into()),
        charged: Some(charge.into()),
        engine: completed.engine.clone(),
        finish_reason: completed.finish_reason.clone(),
        ..Default::default()
    };
    // A streamed call's headers go out before its usage is known, so it is
    // charged its quote; so is a call priced per call only (usage cannot
    // change it). Either way the answer need not wait for billing again.
    if open.stream || api.prices().price(&model).is_flat() {
        let charge = reserved.increment;
        let preview = channels.preview(&reserved, charge);
        send(updates, Update::Settled(settled(charge, &preview))).await;
        match next_end(&mut events, updates, Taken::MustReachEdge).await {
            End::Completed(completed) => {
                let usage = usage(&completed, charge);
                channels.complete(reserved, charge, usage);
                crate::metrics::earned(BATCH, charge);
                trace_charge(charge);
            }
            End::NotServed(why) => {
                tracing::info!(request_id = %open.request_id, %why, "voucher-paid call not served; channel released");
                channels.release(reserved);
            }
        }
        return Ok(());
    }
    match next_end(&mut events, updates, Taken::MustReachEdge).await {
        End::Completed(completed) => {
            // What the call used, at the model's prices, within its quote.
            let tokens = completed.usage.unwrap_or_default();
            let charge = api
                .prices()
                .price(&model)
                .charge(
                    tokens.prompt_tokens,
                    completed.cached_prompt_tokens,
                    tokens.completion_tokens,
                )
                .min(reserved.increment);
            let usage = usage(&completed, charge);
            let snapshot = channels.complete(reserved, charge, usage);
            crate::metrics::earned(BATCH, charge);
            trace_charge(charge);
            send(updates, Update::Settled(settled(charge, &snapshot))).await;
        }
        End::NotServed(why) => {
            tracing::info!(request_id = %open.request_id, %why, "voucher-paid call not served; channel released");
            channels.release(reserved);
        }
    }
    Ok(())
}
