// Pays `calls` chat completions with the official x402 batch-settlement JS
// client (@x402/evm's BatchSettlementEvmScheme through @x402/fetch): one
// deposit, then a voucher per call, alternating streamed and not, and the
// openai npm SDK streaming one more over the same paying fetch. Prints what
// the caller checks: statuses, receipt ids, decoded payment responses.
// Usage: node batch.mjs <edge url> <payer key> <token> <chain rpc url> <calls>
import { decodePaymentResponseHeader, wrapFetchWithPaymentFromConfig } from "@x402/fetch";
import { toClientEvmSigner } from "@x402/evm";
import { BatchSettlementEvmScheme } from "@x402/evm/batch-settlement/client";
import OpenAI from "openai";
import { createPublicClient, http } from "viem";
import { privateKeyToAccount } from "viem/accounts";
import { base } from "viem/chains";

const [edge, key, token, rpc, calls] = process.argv.slice(2);
const account = privateKeyToAccount(key);
const reader = createPublicClient({ chain: base, transport: http(rpc) });
const signer = toClientEvmSigner(account, reader);
const pay = wrapFetchWithPaymentFromConfig(fetch, {
  schemes: [{ network: "eip155:8453", client: new BatchSettlementEvmScheme(signer) }],
  spendControls: { allowedAssets: [{ network: "eip155:8453", asset: token }] },
});
const messages = [{ role: "user", content: "Say hi." }];

const results = [];
for (let n = 0; n < Number(calls); n++) {
  const stream = n % 2 === 0;
  const response = await pay(`${edge}/v1/chat/completions`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ model: "smollm2-135m-instruct", messages, max_tokens: 1, temperature: 0, stream }),
  });
  await response.text();
  const header = response.headers.get("payment-response");
  results.push({
    status: response.status,
    receipt: response.headers.get("x-rungate-receipt"),
    payment: header ? decodePaymentResponseHeader(header) : null,
  });
}
// The openai SDK over the same paying fetch, streamed.
const client = new OpenAI({ baseURL: `${edge}/v1`, apiKey: "unused", fetch: pay, maxRetries: 0 });
const { data, response } = await client.chat.completions
  .create({ model: "smollm2-135m-instruct", messages, max_tokens: 1, temperature: 0, stream: true })
  .withResponse();
for await (const _ of data) {
}
results.push({
  status: response.status,
  receipt: response.headers.get("x-rungate-receipt"),
  payment: decodePaymentResponseHeader(response.headers.get("payment-response")),
});
console.log(JSON.stringify(results));
