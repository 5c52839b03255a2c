// Streams one tool call through RunGate with the official openai npm SDK
// (its stream helper assembles the call), paying with @x402/fetch, and
// prints the final completion. Usage: node tools.mjs <edge url> <payer key> <token> <model>
import { wrapFetchWithPaymentFromConfig } from "@x402/fetch";
import { ExactEvmScheme } from "@x402/evm";
import OpenAI from "openai";
import { privateKeyToAccount } from "viem/accounts";

const [edge, key, token, model] = process.argv.slice(2);
const pay = wrapFetchWithPaymentFromConfig(fetch, {
  schemes: [{ network: "eip155:8453", client: new ExactEvmScheme(privateKeyToAccount(key)) }],
  spendControls: { allowedAssets: [{ network: "eip155:8453", asset: token }] },
});
const client = new OpenAI({ baseURL: `${edge}/v1`, apiKey: "unused", fetch: pay, maxRetries: 0 });
const stream = client.chat.completions.stream({
  model,
  messages: [{ role: "user", content: "What is the weather in Paris?" }],
  tools: [{
    type: "function",
    function: {
      name: "get_weather",
      parameters: { type: "object", properties: { city: { type: "string" } }, required: ["city"] },
    },
  }],
});
console.log(JSON.stringify(await stream.finalChatCompletion()));
