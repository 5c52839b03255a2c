//! Billing's view of the ledger: nonce reservation (the replay guard),
//! usage of served paid calls, settlement claims and outcomes. Every write
//! has a deterministic idempotency key, so retrying one is always safe.

use rungate_common::propagation::TracePropagator;
use rungate_proto::ledger::v1::ledger_service_client::LedgerServiceClient;
use rungate_proto::ledger::v1::{
    Authorization, ClaimSettlementsRequest, ClaimedSettlement, LedgerWrite, SettlementStatus,
    SettlementUpdate, Usage, WriteOutcome, ledger_write::Record,
};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::BillingError;

type Client = LedgerServiceClient<InterceptedService<Channel, TracePropagator>>;

#[derive(Clone)]
pub struct Ledger {
    client: Client,
}

/// Whether a nonce reservation took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reservation {
    Reserved,
    /// The (network, asset, payer, nonce) is already recorded: a replay.
    AlreadyUsed,
}

impl Ledger {
    pub fn connect(url: &str) -> Result<Self, BillingError> {
        let channel = rungate_common::grpc::lazy_channel(url)
            .map_err(|e| BillingError::Config(e.to_string()))?;
        Ok(Self {
            client: LedgerServiceClient::with_interceptor(channel, TracePropagator),
        })
    }

    async fn write(
        &self,
        key: String,
        record: Record,
    ) -> Result<(WriteOutcome, String), BillingError> {
        let ack = self
            .client
            .clone()
            .write_one(LedgerWrite {
                idempotency_key: key,
                record: Some(record),
            })
            .await?
            .into_inner();
        Ok((ack.outcome(), ack.message))
    }

    /// Records the authorization; the ledger's unique (network, asset, payer,
    /// nonce) makes this the atomic replay check.
    pub async fn reserve(&self, authorization: Authorization) -> Result<Reservation, BillingError> {
        let key = format!("auth:{}", authorization.request_id);
        match self
            .write(key, Record::Authorization(authorization))
            .await?
        {
            // Duplicate: this same request's reservation, retried.
            (WriteOutcome::Applied | WriteOutcome::Duplicate, _) => Ok(Reservation::Reserved),
            (WriteOutcome::Conflict, _) => Ok(Reservation::AlreadyUsed),
            (_, message) => Err(BillingError::Ledger(message)),
        }
    }

    /// The served call's usage: from here on its authorization is due.
    pub async fn record_usage(&self, usage: Usage) -> Result<(), BillingError> {
        let key = format!("usage:{}", usage.request_id);
        match self.write(key, Record::Usage(usage)).await? {
            (WriteOutcome::Applied | WriteOutcome::Duplicate, _) => Ok(()),
            (_, message) => Err(BillingError::Ledger(message)),
        }
    }

    /// A final settlement state (settled, failed, voided). One per request:
    /// a second, different final state is refused by the ledger.
    pub async fn finish(&self, update: SettlementUpdate) -> Result<(), BillingError> {
        let key = format!("final:{}", update.request_id);
        let status = update.status();
        match self.write(key, Record::Settlement(update)).await? {
            (WriteOutcome::Applied | WriteOutcome::Duplicate, _) => Ok(()),
            (_, message) => Err(BillingError::Ledger(format!(
                "recording settlement {status:?}: {message}"
            ))),
        }
    }

    pub async fn void(&self, request_id: &str, why: &str) -> Result<(), BillingError> {
        self.finish(SettlementUpdate {
            request_id: request_id.to_owned(),
            status: SettlementStatus::Voided as i32,
            error: why.to_owned(),
            ..Default::default()
        })
        .await
    }

    pub async fn claim(
        &self,
        request: ClaimSettlementsRequest,
    ) -> Result<Vec<ClaimedSettlement>, BillingError> {
        Ok(self
            .client
            .clone()
            .claim_settlements(request)
            .await?
            .into_inner()
            .claimed)
    }
}
