"""What an operator watches: every service's Prometheus metrics (`GET
/metrics` on its port; the edge's public one). Billing's show the settlement
backlog growing while the chain does not mine, how old its oldest call is,
and the backlog draining once it does, with every call counted as settled;
the edge's the requests and GenAI metrics and the overhead RunGate adds;
inference's its engines' queues; the ledger's its group commits."""
import time
import urllib.request

from dev_chain import fund, rpc
from x402_helpers import MODEL, pay, receipt, v2_payment

BACKLOG = "rungate_settlement_backlog"
OLDEST_AGE = "rungate_settlement_backlog_oldest_age_seconds"
SETTLED = 'rungate_settlements_total{outcome="settled"}'


def scrape(billing_url):
    """The metrics as {series: value}, and the response's content type."""
    with urllib.request.urlopen(billing_url + "/metrics", timeout=10) as r:
        content_type, text = r.headers["Content-Type"], r.read().decode()
    series = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            series[name] = float(value)
    return content_type, text, series


def wait_for(url, check, timeout):
    deadline = time.time() + timeout
    while True:
        _, _, series = scrape(url)
        if check(series):
            return series
        assert time.time() < deadline, series
        time.sleep(0.2)


def test_the_settlement_backlog_and_its_age_show_while_the_chain_stalls_and_drain_after(cluster, client):
    # Start from an empty backlog, so the counts below are this test's.
    wait_for(cluster.billing_url, lambda s: s.get(BACKLOG, 0) == 0, timeout=60)
    content_type, text, before = scrape(cluster.billing_url)
    assert content_type.startswith("text/plain")
    assert f"# HELP {BACKLOG} " in text and f"# HELP {OLDEST_AGE} " in text
    settled_before = before.get(SETTLED, 0)

    rpc(cluster.chain_url, "evm_setAutomine", [False])
    try:
        for _ in range(3):
            reply = client.chat.completions.create(
                model=MODEL, max_tokens=4, messages=[{"role": "user", "content": "Count to three."}])
            assert reply.choices[0].message.content is not None
        stalled = wait_for(cluster.billing_url,
                           lambda s: s.get(BACKLOG, 0) >= 3 and s.get(OLDEST_AGE, 0) >= 2, timeout=20)
        assert stalled.get(SETTLED, 0) == settled_before, "nothing settles while nothing is mined"
    finally:
        rpc(cluster.chain_url, "evm_setAutomine", [True])
        rpc(cluster.chain_url, "evm_mine", [])

    drained = wait_for(cluster.billing_url,
                       lambda s: s.get(BACKLOG, 1) == 0 and s.get(SETTLED, 0) >= settled_before + 3,
                       timeout=90)
    assert drained[OLDEST_AGE] == 0


def labelled(series, name, **labels):
    """The values of `name`'s series that carry (at least) `labels`."""
    found = []
    for key, value in series.items():
        key_name, _, rest = key.partition("{")
        pairs = dict(pair.split("=", 1) for pair in rest.rstrip("}").split(",") if pair)
        if key_name == name and all(pairs.get(k) == f'"{v}"' for k, v in labels.items()):
            found.append(value)
    return found


def test_the_edge_exports_request_and_gen_ai_metrics_per_route_status_and_model(cluster, client):
    streamed = client.chat.completions.create(
        model=MODEL, max_tokens=8, temperature=0, stream=True, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": "Say hello."}])
    usage = [chunk.usage for chunk in streamed if chunk.usage][0]
    content_type, text, series = scrape(cluster.edge_url)
    assert content_type.startswith("text/plain")
    # Per route and status: the 402 that asked for payment and the paid 200.
    for status in ("402", "200"):
        count = labelled(series, "http_server_request_duration_count", http_route="/v1/chat/completions",
                         http_request_method="POST", http_response_status_code=status)
        assert count and count[0] >= 1, text
    # The GenAI metrics of the call, per model (histograms, so they sum across replicas).
    def value(name, **more):
        [found] = labelled(series, name, gen_ai_operation_name="chat", gen_ai_request_model=MODEL, **more)
        return found
    assert value("gen_ai_server_request_duration_count") >= 1
    assert value("gen_ai_server_time_to_first_token_count") >= 1
    assert value("gen_ai_server_time_per_output_token_count") >= 1
    assert 0 < value("gen_ai_server_time_to_first_token_sum") <= value("gen_ai_server_request_duration_sum")
    assert value("gen_ai_client_token_usage_sum", gen_ai_token_type="input") >= usage.prompt_tokens
    assert value("gen_ai_client_token_usage_sum", gen_ai_token_type="output") >= usage.completion_tokens
    assert value("gen_ai_server_request_duration_bucket", le="+Inf") >= 1


def test_billing_counts_payments_by_scheme_and_what_they_earned(cluster, client):
    _, _, before = scrape(cluster.billing_url)
    authorized = 'rungate_payments_authorized_total{scheme="exact"}'
    earned = 'rungate_earned_total{scheme="exact"}'
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL, max_tokens=4, messages=[{"role": "user", "content": "Hi"}])
    raw.parse()
    # The charge is counted once the call's usage is recorded (just after the answer).
    deadline = time.time() + 30
    while (charged := int(receipt(cluster.edge_url, raw.headers["x-rungate-receipt"])["amount"])) == 0:
        assert time.time() < deadline
        time.sleep(0.1)
    after = wait_for(cluster.billing_url, lambda s: s.get(earned, 0) >= before.get(earned, 0) + charged, timeout=30)
    assert after[authorized] >= before.get(authorized, 0) + 1


def test_every_service_serves_its_own_metrics_after_a_paid_call(cluster, client):
    _, _, edge_before = scrape(cluster.edge_url)
    overhead = "rungate_overhead_seconds_count"
    served = labelled(edge_before, overhead, gen_ai_request_model=MODEL) or [0]
    client.chat.completions.create(model=MODEL, max_tokens=4, temperature=0,
                                   messages=[{"role": "user", "content": "Hi"}])

    # The edge: what RunGate added to the call (its whole time less the engine's).
    edge = wait_for(cluster.edge_url,
                    lambda s: (labelled(s, overhead, gen_ai_request_model=MODEL) or [0])[0] >= served[0] + 1, 10)
    [added] = labelled(edge, "rungate_overhead_seconds_sum", gen_ai_request_model=MODEL)
    [total] = labelled(edge, "gen_ai_server_request_duration_sum", gen_ai_request_model=MODEL)
    assert 0 < added < total

    # Inference: the local engine's queue and slots, empty again after the call.
    inference = wait_for(cluster.inference_url,
                         lambda s: labelled(s, "rungate_engine_running", gen_ai_request_model=MODEL) == [0], 10)
    assert labelled(inference, "rungate_engine_queue_depth", gen_ai_request_model=MODEL) == [0]

    # The ledger: its group commits, how many records each held and how long it took.
    _, _, ledger = scrape(cluster.ledger_url)
    [commits] = labelled(ledger, "rungate_ledger_commit_records_count", outcome="committed")
    [records] = labelled(ledger, "rungate_ledger_commit_records_sum", outcome="committed")
    [timed] = labelled(ledger, "rungate_ledger_commit_duration_seconds_count", outcome="committed")
    assert records >= commits == timed >= 1

    # Billing: the gas its settlement transactions cost, once the call settles.
    wait_for(cluster.billing_url,
             lambda s: labelled(s, "rungate_gas_spent_gwei_total", network="eip155:8453") > [0], 90)


def test_billing_counts_refused_payments_by_reason_and_scheme(cluster):
    reason = "invalid_exact_evm_payload_signature"
    count = lambda s: sum(labelled(s, "rungate_payments_refused_total", reason=reason, scheme="exact"))
    _, _, before = scrape(cluster.billing_url)
    # Signed over another token name: the signature recovers someone else.
    payer = fund(cluster.chain_url, 10)
    status, _, body = pay(cluster.edge_url, v2_payment(payer, cluster.edge_url, name="USDC"))
    assert (status, body["error"]) == (402, reason)
    wait_for(cluster.billing_url, lambda s: count(s) == count(before) + 1, timeout=10)
