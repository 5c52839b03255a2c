"""Starts the local cluster exactly as README says (`cargo xtask dev`) for the
SDK tests, and stops it with the signal Ctrl-C sends, checking it exits cleanly.
Set RUNGATE_EDGE_URL to test a cluster that is already running instead."""
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import httpx
import openai
import pytest
from eth_account import Account
from x402 import x402Client, x402ClientSync
from x402.http import x402HTTPClientSync
from x402.mechanisms.evm.exact import register_exact_evm_client
from x402.mechanisms.evm.signers import EthAccountSigner

import dev_chain

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def free_ports(count):
    """`count` distinct free ports (every socket is held until all are chosen)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def wait_ready(url, process, timeout=600):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"cargo xtask dev exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url + "/v1/models", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError("the cluster did not come up")


def wait_for_line(log, prefix, timeout=30):
    """The first line of `log` (filled by a reader thread) starting with `prefix`."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        for line in list(log):
            if line.strip().startswith(prefix):
                return line.strip()
        time.sleep(0.1)
    raise RuntimeError(f"the cluster never printed {prefix!r}")


class Cluster:
    """A running `cargo xtask dev`: its edge, dev chain and services' URLs."""

    def __init__(self, edge_url, chain_url, billing_url, log=(), inference_url="", ledger_url=""):
        self.edge_url, self.chain_url, self.billing_url = edge_url, chain_url, billing_url
        self.inference_url, self.ledger_url = inference_url, ledger_url
        self.log = log  # what `cargo xtask dev` printed (filled as it runs)


def run_cluster(*extra):
    """Starts `cargo xtask dev` on free ports; yields a Cluster; stops it
    with SIGINT (what Ctrl-C sends) and checks it exits cleanly."""
    port, chain_port = free_ports(2)
    process = subprocess.Popen(
        ["cargo", "xtask", "dev", "--port", str(port), "--chain-port", str(chain_port), *extra],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        text=True,
    )
    log = []
    threading.Thread(target=lambda: log.extend(process.stdout), daemon=True).start()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, process)
        billing, inference, ledger = (wait_for_line(log, f"{name} (gRPC)").split()[-1]
                                      for name in ("billing", "inference", "ledger"))
        yield Cluster(url, f"http://127.0.0.1:{chain_port}", f"http://{billing}", log,
                      f"http://{inference}", f"http://{ledger}")
    except BaseException:
        sys.stderr.write("".join(log[-200:]))
        raise
    finally:
        process.send_signal(signal.SIGINT)
        try:
            code = process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            raise
    assert code == 0, "".join(log[-50:])


@pytest.fixture(scope="session")
def cluster():
    """The cluster as README starts it: payments on, deferred settlement
    (batch-settlement collected when a test asks, not on a timer)."""
    if os.environ.get("RUNGATE_EDGE_URL"):
        yield Cluster(
            os.environ["RUNGATE_EDGE_URL"],
            os.environ.get("RUNGATE_CHAIN_URL", "http://127.0.0.1:8545"),
            os.environ.get("RUNGATE_BILLING_URL", ""),
            inference_url=os.environ.get("RUNGATE_INFERENCE_URL", ""),
            ledger_url=os.environ.get("RUNGATE_LEDGER_URL", ""),
        )
        return
    yield from run_cluster("--claim-interval", "30m")


@pytest.fixture(scope="session")
def sync_cluster():
    """A second cluster that settles every call before answering."""
    yield from run_cluster("--settlement", "sync")


@pytest.fixture(scope="session")
def time_travel_cluster():
    """A cluster of its own for tests that move the dev chain's clock
    forward (payments signed against the wall clock would look expired on
    the shared one)."""
    yield from run_cluster()


@pytest.fixture(scope="session")
def facilitated_cluster():
    """A cluster whose billing verifies and settles through an external
    facilitator (billing's own HTTP facilitator API, sync settlement)."""
    yield from run_cluster("--settlement", "sync", "--facilitator-url", "self")


@pytest.fixture(scope="session")
def edge_url(cluster):
    return cluster.edge_url


@pytest.fixture(scope="session")
def chain_url(cluster):
    """JSON-RPC URL of the cluster's dev chain (anvil, chain id 8453)."""
    return cluster.chain_url


class PayingTransport(httpx.BaseTransport):
    """httpx transport that answers a 402 by paying with the official x402
    sync client (x402HTTPClientSync) and retrying once."""

    def __init__(self, x402_client):
        self.inner = httpx.HTTPTransport()
        self.x402 = x402HTTPClientSync(x402_client)

    def handle_request(self, request):
        request.read()
        response = self.inner.handle_request(request)
        if response.status_code != 402:
            return response
        response.read()
        headers, _ = self.x402.handle_402_response(dict(response.headers), response.content, str(request.url))
        retry = httpx.Request(request.method, request.url, headers={**request.headers, **headers}, content=request.content)
        return self.inner.handle_request(retry)


def paying_client(key, sync=True):
    """An x402 client that pays with `key` and accepts the dev chain's token
    (spend controls only trust the real USDC by default)."""
    x402 = (x402ClientSync() if sync else x402Client()).set_spend_controls(
        {"allowed_assets": [{"network": "eip155:8453", "asset": dev_chain.TOKEN}]}
    )
    return register_exact_evm_client(x402, EthAccountSigner(Account.from_key(key)))


@pytest.fixture(scope="session")
def client(edge_url):
    """The official OpenAI SDK, paying each call from the demo payer."""
    http = httpx.Client(transport=PayingTransport(paying_client(dev_chain.DEMO_PAYER_KEY)), timeout=120)
    return openai.OpenAI(base_url=edge_url + "/v1", api_key="unused", max_retries=0, http_client=http)
