//! The payment gate in front of a chat completion, and the paid call's
//! session with billing (one PaidCall stream per call).

use axum::response::Response;
use http::HeaderMap;
use rungate_common::client::{drain, request, within};
use rungate_proto::billing::v1::{
    AuthorizeRequest, AuthorizeResponse, Completed, PaidCallEvent, PaidCallUpdate, QuoteRequest,
    SettleResponse, paid_call_event::Event, paid_call_update::Update,
};
use rungate_proto::inference::v1::{CountTokensRequest, CountTokensResponse};
use rungate_proto::types::v1::TokenUsage;
use tokio::sync::mpsc;
use tonic::Streaming;

use crate::ApiError;
use crate::openai::ChatRequest;
use crate::payment;
use crate::state::{AppState, BillingClient};

pub enum Gate {
    /// Free mode: no payment asked.
    Free,
    Paid(Box<PaidSession>),
    /// 402: no payment, or one billing refused.
    Refused(Response),
    /// The payment asked for something billing did itself (a
    /// batch-settlement refund): its answer, the call is not run.
    Handled(Response),
}

/// The call to be paid for, as its quote needs it. None: a payment that
/// pays for no call (a refund, or its probe on GET).
pub type Call<'a> = Option<&'a ChatRequest>;

/// Asks for payment, or checks the one presented. Runs after the request
/// itself was validated, so a bad request is a 400/404, never a 402.
pub async fn gate(
    state: &AppState,
    headers: &HeaderMap,
    path: &str,
    call: Call<'_>,
    request_id: &str,
) -> Result<Gate, ApiError> {
    let Some(billing) = &state.billing else {
        return Ok(Gate::Free);
    };
    let presented = payment::presented(headers);
    let deadline = state.deadlines.rpc;
    let resource = payment::resource_url(state.public_url.as_deref(), headers, path);
    let quote = match call {
        Some(chat) => {
            // The quote depends on the prompt's tokens as the model counts
            // them, unless billing told us the model is priced per call only.
            // Counting also has the engine refuse what it cannot honour
            // (tools on the local engine, say) before payment is asked.
            let engine_checks =
                !chat.extra.is_empty() || chat.messages.iter().any(|m| m.tool_calls_json.is_some());
            let counted = if state.is_flat_priced(&chat.model) && !engine_checks {
                CountTokensResponse::default()
            } else {
                let count = CountTokensRequest {
                    model: chat.model.clone(),
                    messages: chat.messages.clone(),
                    extra_json: chat.extra_json(),
                    max_tokens: chat.sampling.max_tokens,
                };
                within(
                    deadline,
                    state
                        .inference
                        .clone()
                        .count_tokens(request(count, deadline)),
                )
                .await?
                .into_inner()
            };
            QuoteRequest {
                model: chat.model.clone(),
                prompt_tokens: counted.prompt_tokens,
                max_tokens: chat
                    .sampling
                    .max_tokens
                    .unwrap_or(counted.default_max_tokens),
                resource,
            }
        }
        None => QuoteRequest {
            resource,
            ..Default::default()
        },
    };
    let Some((header_name, header)) = presented else {
        let model = quote.model.clone();
        let quote = within(
            deadline,
            billing.any.clone().quote(request(quote, deadline)),
        )
        .await?
        .into_inner();
        if quote.flat && !model.is_empty() {
            state.learn_flat_priced(&model);
        }
        let required = quote.payment_required.unwrap_or_default();
        return Ok(Gate::Refused(payment::response(&required)));
    };
    let open = AuthorizeRequest {
        request_id: request_id.to_owned(),
        quote: Some(quote),
        stream: call.is_some_and(|chat| chat.stream),
        payment_header: header,
        payment_header_name: header_name.to_owned(),
        ..Default::default()
    };
    // Kept for a second try only where billing has replicas to send it to.
    let mut spare = (!billing.replicas.is_empty()).then(|| open.clone());
    let (mut events, mut updates, mut verdict) = open_call(&billing.any, open, deadline).await?;
    // A batch-settlement channel is served by one billing replica: follow
    // billing to it, once.
    if let Some(owner) = verdict.owner_replica {
        let (Some(replica), Some(open)) = (billing.replica(owner), spare.take()) else {
            return Err(tonic::Status::unavailable(format!(
                "billing sent the payment to replica {owner}, which this edge is not configured with"
            ))
            .into());
        };
        drop(events);
        drain(&mut updates, state.deadlines.trailers).await;
        (events, updates, verdict) = open_call(replica, open, deadline).await?;
        if verdict.owner_replica.is_some() {
            return Err(tonic::Status::unavailable(
                "billing replicas disagree on who serves this channel",
            )
            .into());
        }
    }
    if verdict.is_valid && !verdict.handled {
        // An exact call's usage record is the same whoever writes it: the
        // edge writes it too, so it survives billing dying before its write.
        let served = (verdict.scheme == "exact").then(|| Served {
            recorder: state.usage.clone(),
            request_id: request_id.to_owned(),
            model: call.map(|chat| chat.model.clone()).unwrap_or_default(),
            amount: verdict.amount.unwrap_or_default(),
        });
        return Ok(Gate::Paid(Box::new(PaidSession {
            events,
            updates,
            settled: None,
            deadlines: state.deadlines,
            served,
        })));
    }
    // Billing ends the call after a refusal or a handled payment: read that end.
    drop(events);
    drain(&mut updates, state.deadlines.trailers).await;
    let reply = payment::response(&verdict.reply.unwrap_or_default());
    Ok(if verdict.handled {
        Gate::Handled(reply)
    } else {
        Gate::Refused(reply)
    })
}

/// Opens a paid call on `billing` with its payment; its verdict comes
/// within `deadline` (the rest of the call has its own deadlines).
async fn open_call(
    billing: &BillingClient,
    open: AuthorizeRequest,
    deadline: std::time::Duration,
) -> Result<
    (
        mpsc::Sender<PaidCallEvent>,
        Streaming<PaidCallUpdate>,
        AuthorizeResponse,
    ),
    ApiError,
> {
    let (events, outbound) = mpsc::channel(4);
    let _ = events
        .send(PaidCallEvent {
            event: Some(Event::Open(open)),
        })
        .await;
    let outbound = tokio_stream::wrappers::ReceiverStream::new(outbound);
    let (updates, verdict) = within(deadline, async {
        let mut updates = billing.clone().paid_call(outbound).await?.into_inner();
        let verdict = updates.message().await?;
        Ok((updates, verdict))
    })
    .await?;
    match verdict {
        Some(PaidCallUpdate {
            update: Some(Update::Authorized(verdict)),
        }) => Ok((events, updates, verdict)),
        _ => {
            Err(tonic::Status::unavailable("billing ended the paid call without a verdict").into())
        }
    }
}

/// An authorized call in progress. Dropped without `completed`, the call
/// counts as not served and billing voids its authorization.
pub struct PaidSession {
    events: mpsc::Sender<PaidCallEvent>,
    updates: Streaming<PaidCallUpdate>,
    settled: Option<SettleResponse>,
    deadlines: crate::state::Deadlines,
    served: Option<Served>,
}

/// Where the edge records an `exact` call's usage itself.
struct Served {
    recorder: crate::recorder::UsageRecorder,
    request_id: String,
    model: String,
    amount: rungate_proto::types::v1::Amount,
}

impl Served {
    fn record(&self, completion: &CallEnd<'_>) {
        self.recorder.record(crate::recorder::ServedCall {
            request_id: &self.request_id,
            model: &self.model,
            engine: completion.engine,
            usage: completion.usage,
            finish_reason: completion.finish_reason,
            charged: self.amount,
        });
    }
}

impl PaidSession {
    /// The x402 SettleResponse for the response header (waits for it in
    /// sync settlement).
    pub async fn settled(&mut self) -> Result<SettleResponse, ApiError> {
        if self.settled.is_none() {
            self.read_until(|update| matches!(update, Update::Settled(_)))
                .await?;
        }
        self.settled.clone().ok_or_else(|| {
            tonic::Status::unavailable("billing ended the paid call before settling").into()
        })
    }

    /// Reads billing's updates (keeping the settlement when it passes) up
    /// to the first that `wanted` picks, within the settle deadline.
    async fn read_until(&mut self, wanted: impl Fn(&Update) -> bool) -> Result<(), ApiError> {
        let Self {
            updates,
            settled,
            deadlines,
            ..
        } = self;
        within(deadlines.settle, async {
            while let Some(update) = updates.message().await? {
                let Some(update) = update.update else {
                    continue;
                };
                let found = wanted(&update);
                if let Update::Settled(response) = update {
                    settled.get_or_insert(response);
                }
                if found {
                    return Ok(());
                }
            }
            Err(tonic::Status::unavailable(
                "billing ended the paid call before answering",
            ))
        })
        .await?;
        Ok(())
    }

    /// The call was served: tells billing and waits until billing has taken
    /// it, so the answer's last bytes never go out for a call billing could
    /// not charge. If billing is gone, an `exact` call is still charged
    /// from the edge's own usage record and is answered; a batch-settlement
    /// call's charge lived only in billing, so it is refused (503).
    pub async fn completed(&mut self, completion: CallEnd<'_>) -> Result<(), ApiError> {
        let _ = self.events.send(completed(&completion)).await;
        if let Some(served) = &self.served {
            served.record(&completion);
        }
        let taken = self
            .read_until(|update| matches!(update, Update::CompletedTaken(_)))
            .await;
        match taken {
            Err(error) if self.served.is_some() => {
                tracing::warn!(%error, "billing did not take an exact call's completion; the edge's usage record stands");
                Ok(())
            }
            taken => taken,
        }
    }

    /// Tells billing the call was served, from a context that cannot wait
    /// (a dropped stream: there is no answer left to hold back).
    pub fn completed_now(&self, completion: CallEnd<'_>) {
        let _ = self.events.try_send(completed(&completion));
        if let Some(served) = &self.served {
            served.record(&completion);
        }
    }

    /// Ends the call and waits (within the settle deadline) until billing
    /// has finished with it, reading its stream to the end.
    pub async fn finish(self) {
        let Self {
            events,
            mut updates,
            deadlines,
            ..
        } = self;
        drop(events);
        drain(&mut updates, deadlines.settle).await;
    }
}

/// What the edge tells billing of a served call.
pub struct CallEnd<'a> {
    pub usage: TokenUsage,
    pub cached_prompt_tokens: u32,
    pub finish_reason: &'a str,
    pub engine: &'a str,
}

fn completed(served: &CallEnd<'_>) -> PaidCallEvent {
    PaidCallEvent {
        event: Some(Event::Completed(Completed {
            usage: Some(served.usage),
            finish_reason: served.finish_reason.to_owned(),
            engine: served.engine.to_owned(),
            cached_prompt_tokens: served.cached_prompt_tokens,
        })),
    }
}

/// 402 for a payment whose settlement failed: nothing was delivered.
pub fn settlement_failed(settled: &SettleResponse) -> Response {
    payment::response(&settled.reply.clone().unwrap_or_default())
}

/// The payment response header on a served call's answer.
pub fn add_payment_response(response: &mut Response, settled: &SettleResponse) {
    if let Some(reply) = &settled.reply {
        payment::add_headers(response, reply);
    }
}
