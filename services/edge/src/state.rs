//! What every handler shares: gRPC clients to the internal services and
//! the deadlines of calls to them.

use std::time::Duration;

use rungate_common::propagation::TracePropagator;
use rungate_proto::billing::v1::billing_service_client::BillingServiceClient;
use rungate_proto::inference::v1::inference_service_client::InferenceServiceClient;
use rungate_proto::ledger::v1::ledger_service_client::LedgerServiceClient;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::Config;
use crate::recorder::UsageRecorder;

pub type InferenceClient = InferenceServiceClient<InterceptedService<Channel, TracePropagator>>;
pub type BillingClient = BillingServiceClient<InterceptedService<Channel, TracePropagator>>;
pub type LedgerClient = LedgerServiceClient<InterceptedService<Channel, TracePropagator>>;

#[derive(Clone)]
pub struct AppState {
    pub inference: InferenceClient,
    pub ledger: LedgerClient,
    pub usage: UsageRecorder,
    /// None in free mode.
    pub billing: Option<Billing>,
    pub public_url: Option<std::sync::Arc<str>>,
    pub deadlines: Deadlines,
    /// Models billing said are priced per call only (their quotes need no
    /// token count), learned from its quotes.
    flat_priced: std::sync::Arc<std::sync::RwLock<std::collections::HashSet<String>>>,
}

impl AppState {
    pub fn is_flat_priced(&self, model: &str) -> bool {
        self.flat_priced
            .read()
            .is_ok_and(|flat| flat.contains(model))
    }

    pub fn learn_flat_priced(&self, model: &str) {
        if let Ok(mut flat) = self.flat_priced.write() {
            flat.insert(model.to_owned());
        }
    }
}

/// Billing's replicas: one balanced channel over all of them, and one to
/// each (in the `--billing-url` list's order), for a payment whose
/// batch-settlement channel billing says another replica serves.
#[derive(Clone)]
pub struct Billing {
    pub any: BillingClient,
    pub replicas: Vec<BillingClient>,
}

impl Billing {
    fn connect(urls: &str) -> anyhow::Result<Self> {
        use rungate_common::client::{CONNECTIONS_PER_ENDPOINT, channel};
        let client = |urls: &str| -> anyhow::Result<BillingClient> {
            Ok(BillingServiceClient::with_interceptor(
                channel(urls, CONNECTIONS_PER_ENDPOINT)?,
                TracePropagator,
            ))
        };
        let each: Vec<&str> = urls
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .collect();
        Ok(Self {
            any: client(urls)?,
            replicas: if each.len() > 1 {
                each.into_iter().map(client).collect::<Result<_, _>>()?
            } else {
                Vec::new()
            },
        })
    }

    /// The replica at `index`, if the edge knows one there.
    pub fn replica(&self, index: u32) -> Option<&BillingClient> {
        self.replicas.get(usize::try_from(index).ok()?)
    }
}

/// How long the edge waits for each kind of internal answer.
#[derive(Debug, Clone, Copy)]
pub struct Deadlines {
    /// Quick calls: quotes, token counts, the payment verdict, receipts.
    pub rpc: Duration,
    /// Until the engine has accepted and started a call.
    pub generate: Duration,
    /// Billing's settlement answer.
    pub settle: Duration,
    /// A response stream's trailers after its last message.
    pub trailers: Duration,
}

impl AppState {
    pub fn connect(config: &Config) -> anyhow::Result<Self> {
        use rungate_common::client::{CONNECTIONS_PER_ENDPOINT, channel};
        let inference = channel(&config.inference_url, CONNECTIONS_PER_ENDPOINT)?;
        let ledger = LedgerServiceClient::with_interceptor(
            channel(&config.ledger_url, CONNECTIONS_PER_ENDPOINT)?,
            TracePropagator,
        );
        Ok(Self {
            inference: InferenceServiceClient::with_interceptor(inference, TracePropagator),
            usage: UsageRecorder::spawn(ledger.clone()),
            billing: if config.free_mode {
                None
            } else {
                Some(Billing::connect(&config.billing_url)?)
            },
            public_url: config.public_url.as_deref().map(std::sync::Arc::from),
            deadlines: Deadlines {
                rpc: config.rpc_timeout,
                generate: config.generate_timeout,
                settle: config.settle_timeout,
                trailers: Duration::from_secs(1),
            },
            flat_priced: Default::default(),
            ledger,
        })
    }
}
