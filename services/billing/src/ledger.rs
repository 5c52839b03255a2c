//! Billing's view of the ledger: nonce reservation (the replay guard),
//! usage of served paid calls, settlement claims and outcomes. Every write
//! has a deterministic idempotency key, so retrying one is always safe.

use rungate_common::client::{drain, request, within};
use rungate_common::propagation::TracePropagator;
use rungate_proto::ledger::v1::ledger_service_client::LedgerServiceClient;
use rungate_proto::ledger::v1::{
    Authorization, ChannelClaim, ChannelDeposit, ChannelRefund, ChannelState, ClaimChannelsRequest,
    ClaimSettlementsRequest, ClaimedSettlement, GetChannelRequest, LedgerWrite,
    SettlementBacklogRequest, SettlementBacklogResponse, SettlementStatus, SettlementUpdate, Sweep,
    Usage, WriteBatch, WriteOutcome, ledger_write::Record,
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

    /// A batch-settlement channel's stored state; None if the ledger has none.
    pub async fn channel(&self, channel_id: &str) -> Result<Option<ChannelState>, BillingError> {
        let mut client = self.client.clone();
        let get = GetChannelRequest {
            channel_id: channel_id.to_owned(),
        };
        match within(
            CALL_DEADLINE,
            client.get_channel(request(get, CALL_DEADLINE)),
        )
        .await
        {
            Ok(state) => Ok(Some(state.into_inner())),
            Err(status) if status.code() == tonic::Code::NotFound => Ok(None),
            Err(status) => Err(status.into()),
        }
    }

    async fn record(&self, key: String, record: Record) -> Result<(), BillingError> {
        match self.write(key, record).await? {
            (WriteOutcome::Applied | WriteOutcome::Duplicate, _) => Ok(()),
            (_, message) => Err(BillingError::Ledger(message)),
        }
    }

    /// A deposit that landed, before the call it pays for is served.
    pub async fn record_deposit(&self, deposit: ChannelDeposit) -> Result<(), BillingError> {
        let key = format!("deposit:{}", deposit.request_id);
        self.record(key, Record::Deposit(deposit)).await
    }

    pub async fn record_claim(&self, claim: ChannelClaim) -> Result<(), BillingError> {
        let key = format!(
            "claim:{}:{}:{}",
            claim.channel_id,
            claim.tx_hash,
            amount(claim.total_claimed)
        );
        self.record(key, Record::Claim(claim)).await
    }

    pub async fn record_refund(&self, refund: ChannelRefund) -> Result<(), BillingError> {
        let key = format!("refund:{}:{}", refund.channel_id, refund.refund_nonce);
        self.record(key, Record::Refund(refund)).await
    }

    pub async fn record_sweep(&self, sweep: Sweep) -> Result<(), BillingError> {
        let key = format!("sweep:{}", sweep.tx_hash);
        self.record(key, Record::Sweep(sweep)).await
    }

    /// Several writes in one ledger batch (group-committed together). Only
    /// errors if the ledger took none of them durably; refused writes are
    /// logged (they are replays or bugs, never worth retrying).
    pub async fn write_batch(&self, writes: Vec<LedgerWrite>) -> Result<(), BillingError> {
        let mut client = self.client.clone();
        let call = async {
            let stream = futures::stream::iter([WriteBatch { writes }]);
            let mut acks = client.write(stream).await?.into_inner();
            let acked = acks.message().await?.ok_or_else(|| {
                tonic::Status::unavailable("the ledger closed the stream without acks")
            })?;
            drain(&mut acks, std::time::Duration::from_secs(1)).await;
            Ok(acked)
        };
        let acked = within(CALL_DEADLINE, call).await?;
        for ack in acked.acks {
            if !matches!(
                ack.outcome(),
                WriteOutcome::Applied | WriteOutcome::Duplicate
            ) {
                tracing::error!(key = %ack.idempotency_key, message = %ack.message, "ledger refused a write");
            }
        }
        Ok(())
    }

    /// Served `exact` calls waiting for settlement.
    pub async fn backlog(&self) -> Result<SettlementBacklogResponse, BillingError> {
        let mut client = self.client.clone();
        let call =
            client.settlement_backlog(request(SettlementBacklogRequest::default(), CALL_DEADLINE));
        Ok(within(CALL_DEADLINE, call).await?.into_inner())
    }

    /// Channels due for claiming, leased to `worker`.
    pub async fn claim_channels(
        &self,
        claim: ClaimChannelsRequest,
    ) -> Result<Vec<ChannelState>, BillingError> {
        let mut client = self.client.clone();
        let call = client.claim_channels(request(claim, CALL_DEADLINE));
        Ok(within(CALL_DEADLINE, call).await?.into_inner().channels)
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

fn amount(a: Option<rungate_proto::types::v1::Amount>) -> u128 {
    a.unwrap_or_default().atomic()
}
