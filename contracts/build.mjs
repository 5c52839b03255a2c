// Compiles the dev chain's contracts with the npm solc package into
// build/<Contract>.json (abi, bytecode, runtime bytecode). `npm run build`
// here; the output is committed so the dev chain needs no compiler, and this
// script rebuilds it.
import { readFileSync, writeFileSync, mkdirSync } from "node:fs";
import solc from "solc";

// Source file -> contracts in it that the dev chain places.
const sources = {
  "UsdCoin.sol": ["UsdCoin"],
  "X402BatchSettlement.sol": ["X402BatchSettlement", "ERC3009DepositCollector"],
  "Multicall3.sol": ["Multicall3"],
};
const input = {
  language: "Solidity",
  sources: Object.fromEntries(
    Object.keys(sources).map((file) => [file, { content: readFileSync(new URL(`./${file}`, import.meta.url), "utf8") }]),
  ),
  settings: {
    optimizer: { enabled: true, runs: 200 },
    viaIR: true,
    evmVersion: "cancun",
    outputSelection: { "*": { "*": ["abi", "evm.bytecode.object", "evm.deployedBytecode.object"] } },
  },
};
const output = JSON.parse(solc.compile(JSON.stringify(input)));
const errors = (output.errors ?? []).filter((e) => e.severity === "error");
if (errors.length) {
  console.error(errors.map((e) => e.formattedMessage).join("\n"));
  process.exit(1);
}
mkdirSync(new URL("./build/", import.meta.url), { recursive: true });
for (const [file, names] of Object.entries(sources)) {
  for (const name of names) {
    const contract = output.contracts[file][name];
    const artifact = {
      compiler: solc.version(),
      abi: contract.abi,
      bytecode: "0x" + contract.evm.bytecode.object,
      deployedBytecode: "0x" + contract.evm.deployedBytecode.object,
    };
    writeFileSync(new URL(`./build/${name}.json`, import.meta.url), JSON.stringify(artifact, null, 1) + "\n");
  }
}
console.log(`compiled with solc ${solc.version()}: ${Object.values(sources).flat().join(", ")}`);
