// Compiles UsdCoin.sol with the npm solc package into build/UsdCoin.json
// (abi + bytecode). `npm run build` here; the output is committed so the dev
// chain needs no compiler, and this script rebuilds it.
import { readFileSync, writeFileSync, mkdirSync } from "node:fs";
import solc from "solc";

const input = {
  language: "Solidity",
  sources: { "UsdCoin.sol": { content: readFileSync(new URL("./UsdCoin.sol", import.meta.url), "utf8") } },
  settings: {
    optimizer: { enabled: true, runs: 200 },
    evmVersion: "cancun",
    outputSelection: { "*": { "*": ["abi", "evm.bytecode.object"] } },
  },
};
const output = JSON.parse(solc.compile(JSON.stringify(input)));
const errors = (output.errors ?? []).filter((e) => e.severity === "error");
if (errors.length) {
  console.error(errors.map((e) => e.formattedMessage).join("\n"));
  process.exit(1);
}
const contract = output.contracts["UsdCoin.sol"].UsdCoin;
mkdirSync(new URL("./build/", import.meta.url), { recursive: true });
writeFileSync(
  new URL("./build/UsdCoin.json", import.meta.url),
  JSON.stringify({ compiler: solc.version(), abi: contract.abi, bytecode: "0x" + contract.evm.bytecode.object }, null, 1) + "\n",
);
console.log(`UsdCoin compiled with solc ${solc.version()}`);
