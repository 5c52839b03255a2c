//! The gRPC face of billing.

use rungate_proto::billing::v1::billing_service_server::BillingService;
use rungate_proto::billing::v1::{
    AuthorizeRequest, AuthorizeResponse, PaidCallEvent, PaidCallUpdate, QuoteRequest,
    QuoteResponse, SettleRequest, SettleResponse,
};
use tonic::{Request, Response, Status, Streaming};

use crate::BillingError;
use crate::pricing::PriceTable;
use crate::x402::networks::{Network, Offer};

pub struct BillingApi {
    prices: PriceTable,
    networks: Vec<Network>,
}

impl BillingApi {
    pub fn new(prices: PriceTable, networks: Vec<Network>) -> Self {
        Self { prices, networks }
    }
}

#[tonic::async_trait]
impl BillingService for BillingApi {
    type PaidCallStream =
        std::pin::Pin<Box<dyn futures::Stream<Item = Result<PaidCallUpdate, Status>> + Send>>;

    async fn quote(
        &self,
        request: Request<QuoteRequest>,
    ) -> Result<Response<QuoteResponse>, Status> {
        let request = request.into_inner();
        if request.model.is_empty() {
            return Err(BillingError::InvalidArgument("model is required".into()).into());
        }
        let amount = self
            .prices
            .price(&request.model)
            .quote(request.prompt_tokens, request.max_tokens);
        let description = format!("RunGate chat completion with {}", request.model);
        let offer = Offer {
            amount,
            resource: &request.resource,
            description: &description,
        };
        // One offer per configured network; none in free mode.
        Ok(Response::new(QuoteResponse {
            amount: Some(amount.into()),
            requirements_v1_json: self
                .networks
                .iter()
                .map(|n| n.requirement_v1(&offer).to_string())
                .collect(),
            requirements_v2_json: self
                .networks
                .iter()
                .map(|n| n.requirement_v2(&offer).to_string())
                .collect(),
        }))
    }

    async fn authorize(
        &self,
        _request: Request<AuthorizeRequest>,
    ) -> Result<Response<AuthorizeResponse>, Status> {
        Err(BillingError::PaymentsDisabled("Authorize").into())
    }

    async fn settle(
        &self,
        _request: Request<SettleRequest>,
    ) -> Result<Response<SettleResponse>, Status> {
        Err(BillingError::PaymentsDisabled("Settle").into())
    }

    async fn paid_call(
        &self,
        _request: Request<Streaming<PaidCallEvent>>,
    ) -> Result<Response<Self::PaidCallStream>, Status> {
        Err(BillingError::PaymentsDisabled("PaidCall").into())
    }
}
