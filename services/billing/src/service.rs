//! The gRPC face of billing: each RPC hands its request to `calls::Billing`.

use std::sync::Arc;

use rungate_proto::billing::v1::billing_service_server::BillingService;
use rungate_proto::billing::v1::{
    AuthorizeRequest, AuthorizeResponse, CollectRequest, CollectResponse, PaidCallEvent,
    PaidCallUpdate, QuoteRequest, QuoteResponse, SettleRequest, SettleResponse,
};
use tonic::{Request, Response, Status, Streaming};

use crate::calls::Billing;
use crate::workers::claims::ClaimWorker;

/// The gRPC service over the shared billing state.
#[derive(Clone)]
pub struct BillingGrpc {
    pub billing: Arc<Billing>,
    /// batch-settlement's claim worker, for Collect.
    pub claims: Option<Arc<ClaimWorker>>,
}

#[tonic::async_trait]
impl BillingService for BillingGrpc {
    type PaidCallStream =
        std::pin::Pin<Box<dyn futures::Stream<Item = Result<PaidCallUpdate, Status>> + Send>>;

    async fn quote(
        &self,
        request: Request<QuoteRequest>,
    ) -> Result<Response<QuoteResponse>, Status> {
        Ok(Response::new(self.billing.quote_for(request.get_ref())))
    }

    /// The unary form: verifies and reserves (or refuses); the call's
    /// outcome is reported with Settle. A batch-settlement payment is
    /// released at once (this form has no end of call to wait for).
    async fn authorize(
        &self,
        request: Request<AuthorizeRequest>,
    ) -> Result<Response<AuthorizeResponse>, Status> {
        // A batch-settlement admission is released when `decision` drops.
        let decision = self.billing.authorize_call(request.get_ref()).await?;
        Ok(Response::new(decision.response))
    }

    async fn settle(
        &self,
        request: Request<SettleRequest>,
    ) -> Result<Response<SettleResponse>, Status> {
        let payments = self.billing.payments("Settle")?;
        let id = &request.get_ref().authorization_id;
        let response = payments.settle_by_id(id).await?;
        Ok(Response::new(response))
    }

    async fn paid_call(
        &self,
        request: Request<Streaming<PaidCallEvent>>,
    ) -> Result<Response<Self::PaidCallStream>, Status> {
        self.billing.payments("PaidCall")?;
        let updates = crate::paid_call::run(self.billing.clone(), request.into_inner());
        Ok(Response::new(Box::pin(updates)))
    }

    async fn collect(
        &self,
        _request: Request<CollectRequest>,
    ) -> Result<Response<CollectResponse>, Status> {
        let claims = self.claims.as_ref().ok_or_else(|| {
            Status::from(crate::BillingError::PaymentsDisabled("batch-settlement"))
        })?;
        let done = claims.collect_all().await;
        Ok(Response::new(CollectResponse {
            channels_claimed: done.channels,
            claim_transactions: done.claims.iter().map(ToString::to_string).collect(),
            sweep_transactions: done.sweeps.iter().map(ToString::to_string).collect(),
        }))
    }
}
