//! Billing's view of the ledger: nonce reservation (the replay guard),
//! usage of served paid calls, settlement claims and outcomes. Every write
//! has a deterministic idempotency key, so retrying one is always safe.

use rungate_common::client::{request, within};
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

/// Attempts per ledger write (backoff 0.1, 0.2, 0.4, 0.8, 1.6 s between).
const ATTEMPTS: u32 = 6;

/// Deadline of one ledger call: a group commit takes milliseconds; a
/// ledger that takes this long is treated as down (and retried).
const CALL_DEADLINE: std::time::Duration = std::time::Duration::from_secs(5);

/// Whether the write may not have reached the ledger, or may go through now.
fn transient(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::Unavailable
            | tonic::Code::Unknown
            | tonic::Code::Cancelled
            | tonic::Code::DeadlineExceeded
    )
}

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
        use rungate_common::client::{CONNECTIONS_PER_ENDPOINT, channel};
        let channel = channel(url, CONNECTIONS_PER_ENDPOINT)
            .map_err(|e| BillingError::Config(e.to_string()))?;
        Ok(Self {
            client: LedgerServiceClient::with_interceptor(channel, TracePropagator),
        })
    }

    /// One idempotent write. A ledger that is briefly unreachable is retried
    /// with backoff (about 3 s in all): the key makes a retry of a write that
    /// did land a no-op, so no record is lost to a blip and none is doubled.
    async fn write(
        &self,
        key: String,
        record: Record,
    ) -> Result<(WriteOutcome, String), BillingError> {
        let write = LedgerWrite {
            idempotency_key: key,
            record: Some(record),
        };
        let mut pause = std::time::Duration::from_millis(100);
        let mut attempt = 1;
        loop {
            let mut client = self.client.clone();
            let call = client.write_one(request(write.clone(), CALL_DEADLINE));
            match within(CALL_DEADLINE, call).await {
                Ok(ack) => {
                    let ack = ack.into_inner();
                    return Ok((ack.outcome(), ack.message));
                }
                Err(status) if attempt < ATTEMPTS && transient(&status) => {
                    tracing::warn!(%status, attempt, "ledger write failed; retrying");
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                    attempt += 1;
                }
                Err(status) => return Err(status.into()),
            }
        }
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
        claim: ClaimSettlementsRequest,
    ) -> Result<Vec<ClaimedSettlement>, BillingError> {
        let mut client = self.client.clone();
        let call = client.claim_settlements(request(claim, CALL_DEADLINE));
        Ok(within(CALL_DEADLINE, call).await?.into_inner().claimed)
    }
}
