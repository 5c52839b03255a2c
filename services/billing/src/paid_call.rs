//! One paid call as one bidirectional stream. The edge opens it with the
//! payment; billing answers `authorized`, and `settled` when the x402
//! SettleResponse for the response header is known: right away in deferred
//! mode; after `Completed` in sync mode; as soon as the chain says so for a
//! sync streamed call (settling while the prompt is processed). A call that
//! ends without `Completed` was not served: its authorization is voided (a
//! sync streamed call that already settled keeps its charge).

use std::sync::Arc;

use futures::Stream;
use rungate_proto::billing::v1::{
    AuthorizeRequest, Completed, PaidCallEvent, PaidCallUpdate, SettleResponse,
    paid_call_event::Event, paid_call_update::Update,
};
use rungate_proto::ledger::v1::Usage;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming};
use tracing::Instrument;

use crate::config::SettlementMode;
use crate::payments::{Authorized, Payments};
use crate::service::Billing;

pub fn run(
    api: Arc<Billing>,
    events: Streaming<PaidCallEvent>,
) -> impl Stream<Item = Result<PaidCallUpdate, Status>> {
    let (updates, out) = mpsc::channel(4);
    // The call's span (and its trace, from the edge) follows it into the task,
    // so the ledger writes it makes carry the same trace.
    let span = tracing::Span::current();
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

async fn next_end(events: &mut Streaming<PaidCallEvent>) -> End {
    loop {
        match events.message().await {
            Ok(Some(PaidCallEvent {
                event: Some(Event::Completed(completed)),
            })) => return End::Completed(completed),
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
    let (verdict, authorized) = api.authorize_call(&open).await?;
    send(updates, Update::Authorized(verdict)).await;
    let (Some(authorized), Some(payments)) = (authorized, api.payments_handle()) else {
        return Ok(());
    };
    let call = Call {
        payments,
        open: &open,
        authorized: &authorized,
    };
    match (call.payments.mode, open.stream) {
        (SettlementMode::Deferred, _) => {
            send(
                updates,
                Update::Settled(authorized.settle_response(true, "", None)),
            )
            .await;
            match next_end(&mut events).await {
                End::Completed(completed) => call.record_usage(&completed).await?,
                End::NotServed(why) => call.void(&why).await?,
            }
        }
        (SettlementMode::Sync, false) => match next_end(&mut events).await {
            End::Completed(completed) => {
                // Usage first: were the settlement's outcome lost, the
                // worker would find the call served and finish it.
                call.record_usage(&completed).await?;
                let settled = call.payments.settle_by_id(&authorized.request_id).await?;
                send(updates, Update::Settled(settled)).await;
            }
            End::NotServed(why) => call.void(&why).await?,
        },
        (SettlementMode::Sync, true) => {
            let settle = call.payments.settle_by_id(&authorized.request_id);
            tokio::pin!(settle);
            let mut settled: Option<SettleResponse> = None;
            let mut end = None;
            while settled.is_none() || end.is_none() {
                tokio::select! {
                    result = &mut settle, if settled.is_none() => {
                        let response = result?;
                        send(updates, Update::Settled(response.clone())).await;
                        settled = Some(response);
                    }
                    ended = next_end(&mut events), if end.is_none() => end = Some(ended),
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
            })
            .await?;
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
