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

import openai
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


@pytest.fixture(scope="session")
def edge_url():
    if os.environ.get("RUNGATE_EDGE_URL"):
        yield os.environ["RUNGATE_EDGE_URL"]
        return
    port, chain_port = free_port(), free_port()
    os.environ["RUNGATE_TEST_CHAIN_URL"] = f"http://127.0.0.1:{chain_port}"
    process = subprocess.Popen(
        ["cargo", "xtask", "dev", "--port", str(port), "--chain-port", str(chain_port)],
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
        yield url
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
def chain_url(edge_url):
    """JSON-RPC URL of the cluster's dev chain (anvil, chain id 8453)."""
    return os.environ.get("RUNGATE_CHAIN_URL") or os.environ["RUNGATE_TEST_CHAIN_URL"]


@pytest.fixture(scope="session")
def client(edge_url):
    return openai.OpenAI(base_url=edge_url + "/v1", api_key="unused", max_retries=0, timeout=120)
