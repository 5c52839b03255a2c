//! The gRPC face of billing.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use rungate_proto::billing::v1::billing_service_server::BillingService;
use rungate_proto::billing::v1::{
    AuthorizeRequest, AuthorizeResponse, PaidCallEvent, PaidCallUpdate, QuoteRequest,
    QuoteResponse, SettleRequest, SettleResponse,
};
use tonic::{Request, Response, Status, Streaming};

use crate::BillingError;
use crate::payments::{Authorized, Payments};
use crate::pricing::PriceTable;
use crate::x402::networks::Offer;

pub struct Billing {
    prices: PriceTable,
    /// None in free mode (no payment networks configured).
    payments: Option<Arc<Payments>>,
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Billing {
    pub fn new(prices: PriceTable, payments: Option<Arc<Payments>>) -> Self {
        Self { prices, payments }
    }

    pub fn payments_handle(&self) -> Option<Arc<Payments>> {
        self.payments.clone()
    }

    fn payments(&self, what: &'static str) -> Result<&Arc<Payments>, BillingError> {
        self.payments
            .as_ref()
            .ok_or(BillingError::PaymentsDisabled(what))
    }

    /// The quote's amount and the description its offers carry.
    fn price(&self, request: &QuoteRequest) -> Result<(u128, String), BillingError> {
        if request.model.is_empty() {
            return Err(BillingError::InvalidArgument("model is required".into()));
        }
        let amount = self
            .prices
            .price(&request.model)
            .quote(request.prompt_tokens, request.max_tokens);
        Ok((
            amount,
            format!("RunGate chat completion with {}", request.model),
        ))
    }

    fn quote_for(&self, request: &QuoteRequest) -> Result<QuoteResponse, BillingError> {
        let (amount, description) = self.price(request)?;
        let offer = Offer {
            amount,
            resource: &request.resource,
            description: &description,
        };
        let networks = self.payments.as_ref().map_or(&[][..], |p| &p.networks[..]);
        // One offer per configured network; none in free mode.
        Ok(QuoteResponse {
            amount: Some(amount.into()),
            requirements_v1_json: networks
                .iter()
                .map(|n| n.requirement_v1(&offer).to_string())
                .collect(),
            requirements_v2_json: networks
                .iter()
                .map(|n| n.requirement_v2(&offer).to_string())
                .collect(),
            flat: self.prices.price(&request.model).is_flat(),
        })
    }

    /// Verifies the payment and reserves its nonce. A refused payment is an
    /// answer (`is_valid: false` with the reason and the requirements to
    /// answer the 402 with), not an error.
    pub async fn authorize_call(
        &self,
        request: &AuthorizeRequest,
    ) -> Result<(AuthorizeResponse, Option<Authorized>), BillingError> {
        let payments = self.payments("Authorize")?;
        if request.request_id.is_empty() {
            return Err(BillingError::InvalidArgument(
                "request_id is required".into(),
            ));
        }
        let quote = request.quote.clone().unwrap_or_default();
        let (amount, description) = self.price(&quote)?;
        let offer = Offer {
            amount,
            resource: &quote.resource,
            description: &description,
        };
        match payments
            .authorize(
                &request.request_id,
                &request.payment_payload_json,
                &offer,
                now(),
            )
            .await?
        {
            Ok(authorized) => Ok((
                AuthorizeResponse {
                    is_valid: true,
                    invalid_reason: String::new(),
                    payer: authorized.payer.to_checksum(None),
                    authorization_id: authorized.request_id.clone(),
                    amount: Some(amount.into()),
                    x402_version: authorized.version,
                    ..Default::default()
                },
                Some(authorized),
            )),
            Err(reason) => {
                tracing::info!(request_id = %request.request_id, %reason, "payment refused");
                let quote = self.quote_for(&quote)?;
                Ok((
                    AuthorizeResponse {
                        is_valid: false,
                        invalid_reason: reason.as_str().to_owned(),
                        amount: quote.amount,
                        requirements_v1_json: quote.requirements_v1_json,
                        requirements_v2_json: quote.requirements_v2_json,
                        ..Default::default()
                    },
                    None,
                ))
            }
        }
    }
}

/// The gRPC service over the shared billing state (the facilitator's HTTP
/// routes share it too).
#[derive(Clone)]
pub struct BillingGrpc(pub Arc<Billing>);

impl std::ops::Deref for BillingGrpc {
    type Target = Billing;
    fn deref(&self) -> &Billing {
        &self.0
    }
}

#[tonic::async_trait]
impl BillingService for BillingGrpc {
    type PaidCallStream =
        std::pin::Pin<Box<dyn futures::Stream<Item = Result<PaidCallUpdate, Status>> + Send>>;

    async fn quote(
        &self,
        request: Request<QuoteRequest>,
    ) -> Result<Response<QuoteResponse>, Status> {
        Ok(Response::new(self.quote_for(request.get_ref())?))
    }

    async fn authorize(
        &self,
        request: Request<AuthorizeRequest>,
    ) -> Result<Response<AuthorizeResponse>, Status> {
        let (response, _) = self.authorize_call(request.get_ref()).await?;
        Ok(Response::new(response))
    }

    async fn settle(
        &self,
        request: Request<SettleRequest>,
    ) -> Result<Response<SettleResponse>, Status> {
        let payments = self.payments("Settle")?;
        let id = &request.get_ref().authorization_id;
        let response = payments.settle_by_id(id).await?;
        Ok(Response::new(response))
    }

    async fn paid_call(
        &self,
        request: Request<Streaming<PaidCallEvent>>,
    ) -> Result<Response<Self::PaidCallStream>, Status> {
        self.payments("PaidCall")?;
        let updates = crate::paid_call::run(self.0.clone(), request.into_inner());
        Ok(Response::new(Box::pin(updates)))
    }
}
