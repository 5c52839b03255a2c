//! The gRPC face of the ledger.

use futures::StreamExt;
use rungate_proto::ledger::v1::ledger_service_server::LedgerService;
use rungate_proto::ledger::v1::{
    ChannelState, ClaimChannelsRequest, ClaimChannelsResponse, ClaimSettlementsRequest,
    ClaimSettlementsResponse, ExpireAuthorizationsRequest, ExpireAuthorizationsResponse,
    GetChannelRequest, GetReceiptRequest, LedgerWrite, ListBalancesRequest, ListBalancesResponse,
    ListSettlementsRequest, ListSettlementsResponse, Receipt, SettlementBacklogRequest,
    SettlementBacklogResponse, SettlementChange, WatchSettlementsRequest, WriteAck, WriteAcks,
    WriteBatch,
};
use sqlx::PgPool;
use tokio::sync::broadcast;
use tonic::{Request, Response, Status, Streaming};

use crate::committer::Committer;
use crate::{channels, queue, reads};

pub struct LedgerApi {
    pool: PgPool,
    committer: Committer,
    changes: broadcast::Sender<SettlementChange>,
}

impl LedgerApi {
    pub fn new(
        pool: PgPool,
        committer: Committer,
        changes: broadcast::Sender<SettlementChange>,
    ) -> Self {
        Self {
            pool,
            committer,
            changes,
        }
    }
}

#[tonic::async_trait]
impl LedgerService for LedgerApi {
    type WatchSettlementsStream =
        std::pin::Pin<Box<dyn futures::Stream<Item = Result<SettlementChange, Status>> + Send>>;

    type WriteStream =
        std::pin::Pin<Box<dyn futures::Stream<Item = Result<WriteAcks, Status>> + Send>>;

    /// Batches are applied and acked in the order they arrive; several batches
    /// of one stream may await their commit at once, so a client can pipeline.
    async fn write(
        &self,
        request: Request<Streaming<WriteBatch>>,
    ) -> Result<Response<Self::WriteStream>, Status> {
        let committer = self.committer.clone();
        let acks = request
            .into_inner()
            // Enqueued one batch after another (order within a stream holds,
            // e.g. an authorization before its settlement)...
            .then(move |batch| {
                let committer = committer.clone();
                async move { Ok::<_, Status>(committer.enqueue(batch?.writes).await?) }
            })
            // ...while up to 64 of them wait for their commit together.
            .map(|pending| async move {
                let acks = pending?.acks().await?;
                Ok(WriteAcks { acks })
            })
            .buffered(64)
            .scan(false, |failed, item: Result<WriteAcks, Status>| {
                // After the first error the stream ends: the client resends what was not acked.
                let emit = (!*failed).then_some(item);
                if let Some(Err(_)) = &emit {
                    *failed = true;
                }
                futures::future::ready(emit)
            });
        Ok(Response::new(Box::pin(acks)))
    }

    async fn write_one(&self, request: Request<LedgerWrite>) -> Result<Response<WriteAck>, Status> {
        let mut acks = self.committer.submit(vec![request.into_inner()]).await?;
        let ack = acks
            .pop()
            .ok_or_else(|| Status::internal("the committer lost a write"))?;
        Ok(Response::new(ack))
    }

    async fn get_receipt(
        &self,
        request: Request<GetReceiptRequest>,
    ) -> Result<Response<Receipt>, Status> {
        Ok(Response::new(
            reads::receipt(&self.pool, request.get_ref()).await?,
        ))
    }

    async fn list_settlements(
        &self,
        request: Request<ListSettlementsRequest>,
    ) -> Result<Response<ListSettlementsResponse>, Status> {
        Ok(Response::new(
            reads::settlements(&self.pool, request.get_ref()).await?,
        ))
    }

    async fn list_balances(
        &self,
        request: Request<ListBalancesRequest>,
    ) -> Result<Response<ListBalancesResponse>, Status> {
        Ok(Response::new(
            reads::balances(&self.pool, request.get_ref()).await?,
        ))
    }

    async fn claim_settlements(
        &self,
        request: Request<ClaimSettlementsRequest>,
    ) -> Result<Response<ClaimSettlementsResponse>, Status> {
        Ok(Response::new(
            queue::claim(&self.pool, request.get_ref()).await?,
        ))
    }

    async fn settlement_backlog(
        &self,
        request: Request<SettlementBacklogRequest>,
    ) -> Result<Response<SettlementBacklogResponse>, Status> {
        Ok(Response::new(
            queue::backlog(&self.pool, request.get_ref()).await?,
        ))
    }

    async fn get_channel(
        &self,
        request: Request<GetChannelRequest>,
    ) -> Result<Response<ChannelState>, Status> {
        Ok(Response::new(
            channels::get(&self.pool, request.get_ref()).await?,
        ))
    }

    async fn claim_channels(
        &self,
        request: Request<ClaimChannelsRequest>,
    ) -> Result<Response<ClaimChannelsResponse>, Status> {
        Ok(Response::new(
            channels::claim(&self.pool, request.get_ref()).await?,
        ))
    }

    async fn expire_authorizations(
        &self,
        _request: Request<ExpireAuthorizationsRequest>,
    ) -> Result<Response<ExpireAuthorizationsResponse>, Status> {
        Ok(Response::new(ExpireAuthorizationsResponse {
            expired: queue::expire(&self.pool).await?,
        }))
    }

    async fn watch_settlements(
        &self,
        request: Request<WatchSettlementsRequest>,
    ) -> Result<Response<Self::WatchSettlementsStream>, Status> {
        let only = request.into_inner().request_id;
        let changes = tokio_stream::wrappers::BroadcastStream::new(self.changes.subscribe())
            .filter_map(move |change| {
                let item = match change {
                    Ok(change) if only.is_empty() || change.request_id == only => Some(Ok(change)),
                    Ok(_) => None,
                    Err(_) => Some(Err(Status::resource_exhausted(
                        "this watcher fell behind and missed changes; re-read and watch again",
                    ))),
                };
                futures::future::ready(item)
            });
        Ok(Response::new(Box::pin(changes)))
    }
}
