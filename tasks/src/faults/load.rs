//! Paid load as agents pay: half the clients `exact` (a fresh EIP-3009
//! authorization per call, as the official exact clients sign), half
//! batch-settlement (one channel each, a voucher per call, back in step from
//! the corrective 402 as the official batch clients do). Each answer counts
//! only once read to its end.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use alloy_signer_local::PrivateKeySigner;
use rungate_tests::batch::{BatchPayer, batch_offer};
use rungate_tests::chain;
use serde_json::Value;
use tokio::sync::Mutex;

use super::cluster::Cluster;

const BODY: &str =
    r#"{"model":"fake-echo","messages":[{"role":"user","content":"fault"}],"max_tokens":2}"#;
/// What each payer is minted, in atomic units.
pub(crate) const FUNDS: u128 = 1 << 40;
/// What each batch-settlement payer deposits.
const DEPOSIT: u128 = 1 << 30;

/// What the clients were told.
#[derive(Default)]
pub(crate) struct Served {
    /// Receipt ids of `exact` calls answered 200.
    pub(crate) exact: Vec<String>,
    pub(crate) exact_payers: Vec<String>,
    /// Receipt ids of batch-settlement calls answered 200, and when.
    pub(crate) batch: Vec<(String, Instant)>,
    /// Each batch payer and its channel id.
    pub(crate) channels: Vec<(String, String)>,
}

pub(crate) struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    served: Arc<Mutex<Served>>,
    workers: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    pub(crate) async fn start(cluster: &Cluster, clients: usize) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(20))
            .build()?;
        let url = format!("{}/v1/chat/completions", cluster.edge_url);
        let unpaid = http
            .post(&url)
            .header("content-type", "application/json")
            .body(BODY)
            .send()
            .await?;
        let required = rungate_tests::x402::payment_required(unpaid.headers())?;
        let (stop, ok, failed) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicU64::new(0)),
        );
        let served = Arc::new(Mutex::new(Served::default()));
        let mut workers = Vec::new();
        for n in 0..clients {
            let payer = PrivateKeySigner::random();
            let address = payer.address().to_checksum(None);
            chain::mint(&cluster.chain.rpc_url, &address, FUNDS).await?;
            let client = Client {
                http: http.clone(),
                url: url.clone(),
                required: required.clone(),
                stop: stop.clone(),
                ok: ok.clone(),
                failed: failed.clone(),
                served: served.clone(),
            };
            workers.push(if n % 2 == 0 {
                served.lock().await.exact_payers.push(address);
                tokio::spawn(client.exact(payer))
            } else {
                let channel = BatchPayer::new(payer, &batch_offer(&required)?)?;
                let id = channel.channel_id.to_string();
                served.lock().await.channels.push((address, id));
                tokio::spawn(client.batch(channel))
            });
        }
        Ok(Self {
            stop,
            ok,
            failed,
            served,
            workers,
        })
    }

    /// (answered 200, failed) so far.
    pub(crate) fn counts(&self) -> (u64, u64) {
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }

    pub(crate) async fn stop(self) -> Served {
        self.stop.store(true, Ordering::Relaxed);
        for worker in self.workers {
            let _ = worker.await;
        }
        std::mem::take(&mut *self.served.lock().await)
    }
}

#[derive(Clone)]
struct Client {
    http: reqwest::Client,
    url: String,
    required: Value,
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    served: Arc<Mutex<Served>>,
}

/// An answer read to its end: status, receipt id, PAYMENT-REQUIRED.
struct Answer {
    status: u16,
    receipt: Option<String>,
    required: Option<Value>,
}

impl Client {
    async fn post(&self, payment: &str) -> Option<Answer> {
        let sent = self
            .http
            .post(&self.url)
            .header("content-type", "application/json")
            .header("PAYMENT-SIGNATURE", payment)
            .body(BODY)
            .send()
            .await;
        let answer = match sent {
            Ok(response) => {
                let status = response.status().as_u16();
                let receipt = response
                    .headers()
                    .get("x-rungate-receipt")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                let required = rungate_tests::x402::payment_required(response.headers()).ok();
                // An answer cut off before its end is not an answer.
                response.bytes().await.ok().map(|_| Answer {
                    status,
                    receipt,
                    required,
                })
            }
            Err(_) => None,
        };
        if answer.is_none() {
            self.backoff().await;
        }
        answer
    }

    async fn backoff(&self) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    /// A fresh authorization per call, as the official exact clients pay.
    async fn exact(self, payer: PrivateKeySigner) {
        while !self.stop.load(Ordering::Relaxed) {
            let Ok(payment) =
                rungate_tests::x402::pay(&payer, &self.required, rungate_common::clock::now(), 300)
            else {
                return;
            };
            let Some(answer) = self.post(&payment).await else {
                continue;
            };
            match (answer.status, answer.receipt) {
                (200, Some(id)) => {
                    self.ok.fetch_add(1, Ordering::Relaxed);
                    self.served.lock().await.exact.push(id);
                }
                _ => self.backoff().await,
            }
        }
    }

    /// One channel, a voucher per call; resyncs from the corrective 402.
    async fn batch(self, channel: BatchPayer) {
        let mut charged: u128 = 0;
        let mut deposited = false;
        while !self.stop.load(Ordering::Relaxed) {
            let payment = if deposited {
                channel.pay(&self.required, charged + 1)
            } else {
                let now = rungate_common::clock::now();
                channel.deposit(&self.required, DEPOSIT, charged + 1, now, 300)
            };
            let Ok(payment) = payment else { return };
            let Some(answer) = self.post(&payment).await else {
                continue;
            };
            match (answer.status, answer.receipt) {
                (200, Some(id)) => {
                    deposited = true;
                    charged += 1;
                    self.ok.fetch_add(1, Ordering::Relaxed);
                    self.served.lock().await.batch.push((id, Instant::now()));
                }
                (402, _) => {
                    // Out of step (a billing restart lost our last vouchers,
                    // or a call whose answer we lost was charged): resync.
                    let server = answer
                        .required
                        .as_ref()
                        .and_then(|r| batch_offer(r).ok())
                        .and_then(|o| {
                            o["extra"]["channelState"]["chargedCumulativeAmount"]
                                .as_str()
                                .and_then(|c| c.parse().ok())
                        });
                    match server {
                        Some(server) => {
                            charged = server;
                            deposited = true;
                        }
                        None => self.backoff().await,
                    }
                }
                _ => self.backoff().await,
            }
        }
    }
}
