"""What an operator watches: billing's Prometheus metrics (`GET /metrics` on
billing's port) show the settlement backlog growing while the chain does not
mine, how old its oldest call is, and the backlog draining once it does,
with every call counted as settled."""
import time
import urllib.request

from dev_chain import rpc
from x402_helpers import MODEL

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


def wait_for(billing_url, check, timeout):
    deadline = time.time() + timeout
    while True:
        _, _, series = scrape(billing_url)
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
