// Pays for one chat completion with an official x402 JavaScript client and
// prints what the caller checks: status, decoded payment response, receipt id,
// the answer. Usage: node pay.mjs <v2|v1|openai> <edge url> <payer key> <token> <stream|once>
import { decodePaymentResponseHeader, wrapFetchWithPaymentFromConfig } from "@x402/fetch";
import { ExactEvmScheme } from "@x402/evm";
import OpenAI from "openai";
import { createWalletClient, http } from "viem";
import { privateKeyToAccount } from "viem/accounts";
import { base } from "viem/chains";
import { decodeXPaymentResponse, wrapFetchWithPayment } from "x402-fetch";

const [kind, edge, key, token, mode] = process.argv.slice(2);
const account = privateKeyToAccount(key);
const stream = mode === "stream";
const messages = [
  { role: "system", content: "You are a helpful assistant." },
  { role: "user", content: "What is the capital of France?" },
];

// v2 (@x402/fetch): the dev chain's token is not a default asset, so it is allowed explicitly.
const v2 = () =>
  wrapFetchWithPaymentFromConfig(fetch, {
    schemes: [{ network: "eip155:8453", client: new ExactEvmScheme(account) }],
    spendControls: { allowedAssets: [{ network: "eip155:8453", asset: token }] },
  });
// v1 (x402-fetch): signs locally; the wallet's transport is never used.
const v1 = () =>
  wrapFetchWithPayment(fetch, createWalletClient({ account, chain: base, transport: http(edge) }));

async function viaFetch(pay, decode) {
  const response = await pay(`${edge}/v1/chat/completions`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ model: "smollm2-135m-instruct", messages, max_tokens: 16, temperature: 0, stream }),
  });
  const body = await response.text();
  const header = response.headers.get("payment-response") ?? response.headers.get("x-payment-response");
  let text = body;
  if (response.ok && !stream) text = JSON.parse(body).choices[0].message.content;
  if (response.ok && stream) {
    text = body
      .split("\n")
      .filter((l) => l.startsWith("data: {"))
      .map((l) => JSON.parse(l.slice(6)).choices[0]?.delta?.content ?? "")
      .join("");
  }
  return {
    status: response.status,
    receipt: response.headers.get("x-rungate-receipt"),
    payment: header ? decode(header) : null,
    text,
  };
}

// The official OpenAI SDK with the v2 paying fetch as its transport.
async function viaOpenAI() {
  const client = new OpenAI({ baseURL: `${edge}/v1`, apiKey: "unused", fetch: v2(), maxRetries: 0 });
  const { data, response } = await client.chat.completions
    .create({ model: "smollm2-135m-instruct", messages, max_tokens: 16, temperature: 0, stream })
    .withResponse();
  let text = "";
  if (stream) for await (const chunk of data) text += chunk.choices[0]?.delta?.content ?? "";
  else text = data.choices[0].message.content;
  return {
    status: response.status,
    receipt: response.headers.get("x-rungate-receipt"),
    payment: decodePaymentResponseHeader(response.headers.get("payment-response")),
    text,
  };
}

const result =
  kind === "v2" ? await viaFetch(v2(), decodePaymentResponseHeader)
  : kind === "v1" ? await viaFetch(v1(), decodeXPaymentResponse)
  : await viaOpenAI();
console.log(JSON.stringify(result));
