"""The official x402 JavaScript clients pay RunGate: npm @x402/fetch (v2),
x402-fetch (v1), and the openai npm SDK over the v2 paying fetch, streamed
and not. After each: the response header decodes to success, the receipt
shows the settlement, the payer lost exactly the quote and payTo got it."""
import json
import os
import subprocess

import pytest

from dev_chain import TOKEN, fund, balance, transfers
from x402_helpers import assert_pays_to, settled_receipt

JS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "js")


@pytest.mark.parametrize("stream", ["once", "stream"])
@pytest.mark.parametrize("client", ["v2", "v1", "openai"])
def test_a_js_client_pays_for_a_completion(chain_url, edge_url, client, stream):
    payer = fund(chain_url, 100)
    key = "0x" + bytes(payer.key).hex()
    run = subprocess.run(["node", "pay.mjs", client, edge_url, key, TOKEN, stream],
                         cwd=JS, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["status"] == 200, result
    assert "Paris" in result["text"], result
    payment = result["payment"]
    assert payment["success"] is True and payment["payer"] == payer.address, payment
    assert payment["network"] == ("base" if client == "v1" else "eip155:8453")
    found = settled_receipt(edge_url, result["receipt"])
    assert found["settlement"]["status"] == "settled", found
    assert_pays_to(transfers(chain_url, found["settlement"]["transaction"]), payer.address, 1)
    assert balance(chain_url, payer.address) == 99
