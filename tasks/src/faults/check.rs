//! After the load: wait for the workers to drain, collect the channels,
//! then check every payment against the ledger and the chain.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rungate_tests::chain;
use serde_json::json;
use sqlx::Row;

use super::cluster::Cluster;
use super::load::{FUNDS, Served};
use super::{LOSS_WINDOW, READ_SLACK, VOUCHER_FLUSH};

/// Waits for the workers, collects the channels, checks every invariant and
/// prints them as a table; whether all hold. `events` are the faults (name,
/// when), for the loss a billing kill is allowed.
pub(crate) async fn verify(
    cluster: &Cluster,
    served: &Served,
    events: &[(&'static str, Instant)],
) -> anyhow::Result<bool> {
    let ledger = sqlx::PgPool::connect(&cluster.postgres.url).await?;
    drain(&ledger).await?;
    collect(&cluster.billing_url).await?;
    let report = check(&ledger, cluster, served, events).await?;
    println!("\n| invariant | result |");
    println!("|---|---|");
    let mut holds = true;
    for (invariant, outcome) in &report {
        holds &= outcome.is_ok();
        let text = match outcome {
            Ok(note) => format!("holds{note}"),
            Err(problem) => format!("BROKEN: {problem}"),
        };
        println!("| {invariant} | {text} |");
    }
    Ok(holds)
}

/// Waits until nothing served is left to settle (and nothing is settling).
async fn drain(ledger: &sqlx::PgPool) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let left: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM settlements s
             WHERE s.status = 'settling'
                OR (s.status = 'authorized'
                    AND EXISTS (SELECT 1 FROM usage_records u WHERE u.request_id = s.request_id))",
        )
        .fetch_one(ledger)
        .await?;
        if left == 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{left} settlements still pending after 120 s");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Claims every channel now (the claim interval is an hour here: 60m).
async fn collect(billing_url: &str) -> anyhow::Result<()> {
    use rungate_proto::billing::v1::CollectRequest;
    use rungate_proto::billing::v1::billing_service_client::BillingServiceClient;
    tokio::time::sleep(VOUCHER_FLUSH * 5).await; // the last coalesced vouchers
    let mut billing = BillingServiceClient::connect(billing_url.to_owned()).await?;
    billing.collect(CollectRequest {}).await?;
    Ok(())
}

/// Each invariant, and whether it holds (with a note) or what broke it.
type Report = Vec<(&'static str, Result<String, String>)>;

fn verdict(problems: &[String]) -> Result<String, String> {
    match problems.first() {
        None => Ok(String::new()),
        Some(first) => Err(format!("{} cases, e.g. {first}", problems.len())),
    }
}

fn number(row: &sqlx::postgres::PgRow, column: &str) -> anyhow::Result<u128> {
    Ok(row.try_get::<String, _>(column)?.parse()?)
}

async fn check(
    ledger: &sqlx::PgPool,
    cluster: &Cluster,
    served: &Served,
    events: &[(&'static str, Instant)],
) -> anyhow::Result<Report> {
    let chain_url = &cluster.chain.rpc_url;
    let mut report: Report = Vec::new();

    // exact: every 200 authorized, recorded, settled.
    let rows = sqlx::query(
        "SELECT a.request_id, lower(a.payer) AS payer, lower(a.nonce) AS nonce,
                a.amount::text AS amount, s.status::text AS status,
                EXISTS (SELECT 1 FROM usage_records u WHERE u.request_id = a.request_id) AS used
         FROM authorizations a JOIN settlements s ON s.request_id = a.request_id",
    )
    .fetch_all(ledger)
    .await?;
    let mut by_id = HashMap::new();
    let mut by_nonce = HashMap::new();
    let mut settled_by_payer: HashMap<String, u128> = HashMap::new();
    for row in &rows {
        let (id, payer, nonce): (String, String, String) =
            (row.get("request_id"), row.get("payer"), row.get("nonce"));
        let (status, used): (String, bool) = (row.get("status"), row.get("used"));
        if status == "settled" {
            *settled_by_payer.entry(payer.clone()).or_default() += number(row, "amount")?;
        }
        by_nonce.insert((payer, nonce), (status.clone(), used));
        by_id.insert(id, (status, used));
    }
    let mut problems = Vec::new();
    for id in &served.exact {
        match by_id.get(id) {
            None => problems.push(format!("{id}: answered 200 without an authorization")),
            Some((_, false)) => problems.push(format!("{id}: answered 200, no usage record")),
            Some((status, _)) if status != "settled" => {
                problems.push(format!("{id}: answered 200, {status}"));
            }
            _ => {}
        }
    }
    report.push((
        "every exact 200 has an authorization and a usage record and is settled",
        verdict(&problems).map(|_| format!(" ({} calls)", served.exact.len())),
    ));

    // On chain: each transfer a served call's, and each payer charged
    // exactly what the ledger says was settled (no double transfer).
    let mut problems = Vec::new();
    for (payer, nonce) in authorizations_used(chain_url).await? {
        match by_nonce.get(&(payer.clone(), nonce.clone())) {
            Some((_, true)) => {}
            Some((status, false)) => problems.push(format!(
                "{payer} {nonce}: transferred without a served call ({status})"
            )),
            // A deposit (receiveWithAuthorization) is not an exact payment.
            None => {}
        }
    }
    report.push(("no transfer without a served call", verdict(&problems)));
    let mut problems = Vec::new();
    for payer in &served.exact_payers {
        let spent = FUNDS - chain::balance(chain_url, payer).await?;
        let settled = settled_by_payer
            .get(&payer.to_ascii_lowercase())
            .copied()
            .unwrap_or(0);
        if spent != settled {
            problems.push(format!(
                "{payer}: {spent} left the wallet, {settled} settled"
            ));
        }
    }
    report.push((
        "each exact payer paid exactly what was settled (no double transfer)",
        verdict(&problems),
    ));

    let stuck: i64 =
        sqlx::query_scalar("SELECT count(*) FROM settlements WHERE status = 'settling'")
            .fetch_one(ledger)
            .await?;
    report.push((
        "nothing stuck settling",
        if stuck == 0 {
            Ok(String::new())
        } else {
            Err(format!("{stuck} rows"))
        },
    ));
    let expired: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM settlements s WHERE s.status = 'expired'
           AND EXISTS (SELECT 1 FROM usage_records u WHERE u.request_id = s.request_id)",
    )
    .fetch_one(ledger)
    .await?;
    report.push((
        "no served call expired unpaid",
        if expired == 0 {
            Ok(String::new())
        } else {
            Err(format!("{expired} calls"))
        },
    ));

    let (debits, credits): (String, String) = sqlx::query_as(
        "SELECT coalesce(sum(debits_posted + debits_pending), 0)::text,
                coalesce(sum(credits_posted + credits_pending), 0)::text FROM account_balances",
    )
    .fetch_one(ledger)
    .await?;
    report.push((
        "debits = credits",
        if debits == credits {
            Ok(format!(" ({debits})"))
        } else {
            Err(format!("{debits} != {credits}"))
        },
    ));

    report.push(batch_records(ledger, served, events).await?);
    report.push(batch_channels(ledger, chain_url, served).await?);
    Ok(report)
}

/// Every batch-settlement 200 has its usage record, except those answered
/// just before a billing kill (the coalesced vouchers a crash may lose).
async fn batch_records(
    ledger: &sqlx::PgPool,
    served: &Served,
    events: &[(&'static str, Instant)],
) -> anyhow::Result<(&'static str, Result<String, String>)> {
    let billing_kills: Vec<Instant> = events
        .iter()
        .filter(|(name, _)| *name == "rungate-billing")
        .map(|(_, at)| *at)
        .collect();
    let ids: Vec<String> = served.batch.iter().map(|(id, _)| id.clone()).collect();
    let recorded: HashSet<String> =
        sqlx::query_scalar("SELECT request_id FROM usage_records WHERE request_id = ANY($1)")
            .bind(&ids)
            .fetch_all(ledger)
            .await?
            .into_iter()
            .collect();
    let mut lost_in_window = 0;
    let mut problems = Vec::new();
    for (id, at) in &served.batch {
        if recorded.contains(id) {
            continue;
        }
        let in_window = billing_kills.iter().any(|kill| {
            at.saturating_duration_since(*kill) <= READ_SLACK
                && kill.saturating_duration_since(*at) <= LOSS_WINDOW
        });
        if in_window {
            lost_in_window += 1;
        } else {
            let (fault, since) = events
                .iter()
                .rev()
                .find(|(_, start)| start <= at)
                .map_or(("no fault", Duration::ZERO), |(name, start)| {
                    (*name, at.duration_since(*start))
                });
            let next = events.iter().find(|(_, start)| start > at).map_or(
                String::new(),
                |(name, start)| {
                    format!(
                        ", {} ms before the {name} fault",
                        (*start - *at).as_millis()
                    )
                },
            );
            problems.push(format!(
                "{id}: answered 200 {} ms after the {fault} fault began{next}, no usage record",
                since.as_millis()
            ));
        }
    }
    Ok((
        "every batch-settlement 200 has a usage record (but the last flush before a billing kill)",
        verdict(&problems).map(|_| {
            format!(
                " ({} calls; {lost_in_window} answered < {} ms before the kill went uncollected)",
                served.batch.len(),
                LOSS_WINDOW.as_millis()
            )
        }),
    ))
}

/// Each channel: its usage records add up to its charged total, which was
/// claimed on chain exactly (the escrow agrees with the ledger), and the
/// payer's wallet lost exactly the deposit the ledger recorded.
async fn batch_channels(
    ledger: &sqlx::PgPool,
    chain_url: &str,
    served: &Served,
) -> anyhow::Result<(&'static str, Result<String, String>)> {
    let mut problems = Vec::new();
    let mut claimed_total = 0;
    for (payer, id) in &served.channels {
        let row = sqlx::query(
            "SELECT s.charged::text AS charged, s.claimed::text AS claimed,
                    s.deposited::text AS deposited,
                    (SELECT coalesce(sum(u.charged), 0) FROM usage_records u
                      WHERE u.channel_id = s.channel_id)::text AS used
             FROM channel_states s WHERE s.channel_id = $1",
        )
        .bind(id)
        .fetch_optional(ledger)
        .await?;
        let Some(row) = row else {
            problems.push(format!("{id}: no channel in the ledger"));
            continue;
        };
        let [charged, claimed, deposited, used] =
            ["charged", "claimed", "deposited", "used"].map(|c| number(&row, c));
        let (charged, claimed, deposited, used) = (charged?, claimed?, deposited?, used?);
        let onchain = escrow_claimed(chain_url, id).await?;
        let spent = FUNDS - chain::balance(chain_url, payer).await?;
        claimed_total += onchain;
        if used != charged {
            problems.push(format!(
                "{id}: usage records add up to {used}, charged {charged}"
            ));
        }
        if onchain != claimed || claimed != charged {
            problems.push(format!(
                "{id}: claimed on chain {onchain}, in the ledger {claimed}, charged {charged}"
            ));
        }
        if spent != deposited {
            problems.push(format!(
                "{id}: {spent} left the wallet, {deposited} deposited"
            ));
        }
    }
    Ok((
        "each channel: usage = charged = claimed on chain; wallet spent = deposit",
        verdict(&problems).map(|_| {
            format!(
                " ({} channels, {claimed_total} claimed)",
                served.channels.len()
            )
        }),
    ))
}

/// (payer, nonce) of every EIP-3009 authorization used on the token, lower-case.
async fn authorizations_used(chain_url: &str) -> anyhow::Result<Vec<(String, String)>> {
    let topic = alloy_primitives::keccak256("AuthorizationUsed(address,bytes32)").to_string();
    let logs = chain::rpc(
        &reqwest::Client::new(),
        chain_url,
        "eth_getLogs",
        json!([{"address": chain::TOKEN, "fromBlock": "0x0", "toBlock": "latest", "topics": [topic]}]),
    )
    .await?;
    Ok(logs
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|log| {
            let topics = log["topics"].as_array()?;
            let payer = format!("0x{}", topics.get(1)?.as_str()?.get(26..)?);
            Some((
                payer.to_ascii_lowercase(),
                topics.get(2)?.as_str()?.to_ascii_lowercase(),
            ))
        })
        .collect())
}

/// The escrow's totalClaimed for a channel: `channels(bytes32)` returns
/// (balance, totalClaimed, ...).
async fn escrow_claimed(chain_url: &str, channel: &str) -> anyhow::Result<u128> {
    let selector = &alloy_primitives::keccak256("channels(bytes32)")[..4];
    let data = format!(
        "0x{}{}",
        alloy_primitives::hex::encode(selector),
        channel.trim_start_matches("0x")
    );
    let out = chain::rpc(
        &reqwest::Client::new(),
        chain_url,
        "eth_call",
        json!([{"to": chain::BATCH_SETTLEMENT, "data": data}, "latest"]),
    )
    .await?;
    let hex = out.as_str().context("eth_call")?.trim_start_matches("0x");
    Ok(u128::from_str_radix(
        hex.get(64..128).context("short answer")?,
        16,
    )?)
}
