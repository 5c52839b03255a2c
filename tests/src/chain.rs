//! The dev chain for `cargo xtask dev`, the paid tests and the payment
//! benchmark: anvil (npm @foundry-rs/anvil-linux-amd64)
//! as Base (chain id 8453), the EIP-3009 test token (contracts/UsdCoin.sol,
//! prebuilt in contracts/build) deployed from anvil's first account, and a
//! demo payer (anvil's second account) funded with 1,000 USDC.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

/// anvil's well-known dev accounts (from its default mnemonic): never use on a real chain.
pub const DEPLOYER: &str = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266";
pub const PAYER: &str = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8";
pub const PAYER_KEY: &str = "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d";
pub const CHAIN_ID: u64 = 8453;
/// Where payments go (anvil's third account).
pub const PAY_TO: &str = "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC";
/// Billing's settlement signer, which pays the gas (anvil's fourth account).
pub const SETTLER_KEY: &str = "0x7c852118294e51e653712a81e05800f419141751be58f605c371e15141b007a6";
/// Billing's batch-settlement receiverAuthorizer, which signs claims and
/// refunds and needs no gas (anvil's sixth account).
pub const RECEIVER_AUTHORIZER_KEY: &str =
    "0x8b3a350cf5c34c9194ca85829a2df0ec3153be0318b5e2d3348e872092edffba";
pub const RECEIVER_AUTHORIZER: &str = "0x9965507D1a55bcC2695C58ba16FB37d819B0A4dc";
/// The token's address: the deployer's first contract on a fresh chain.
pub const TOKEN: &str = "0x5FbDB2315678afecb367f032d93F642f64180aa3";
/// x402 batch-settlement's escrow and its EIP-3009 deposit collector, at the
/// canonical addresses the official clients hard-code (ours stand in for the
/// contracts deployed there on Base), and Multicall3 at its own.
pub const BATCH_SETTLEMENT: &str = "0x4020074e9dF2ce1deE5A9C1b5c3f541D02a10003";
pub const ERC3009_COLLECTOR: &str = "0x4020806089470a89826cB9fB1f4059150b550004";
pub const MULTICALL3: &str = "0xcA11bde05977b3631167028862bE2a173976CA11";
/// 1,000 USDC in atomic units (6 decimals).
const FUNDING: u128 = 1_000_000_000;

pub struct DevChain {
    pub rpc_url: String,
    pub token: String,
    pub anvil: Child,
}

impl Drop for DevChain {
    fn drop(&mut self) {
        let _ = self.anvil.kill();
        let _ = self.anvil.wait();
    }
}

/// The repository root (where contracts/ lives).
pub fn repo_root() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// `who`'s balance of the dev token, in atomic units.
pub async fn balance(url: &str, who: &str) -> anyhow::Result<u128> {
    let data = format!(
        "0x70a08231{:0>64}",
        who.trim_start_matches("0x").to_ascii_lowercase()
    );
    let out = rpc(
        &reqwest::Client::new(),
        url,
        "eth_call",
        json!([{"to": TOKEN, "data": data}, "latest"]),
    )
    .await?;
    let hex = out.as_str().context("balanceOf result")?;
    Ok(u128::from_str_radix(hex.trim_start_matches("0x"), 16)?)
}

/// Mints `amount` of the dev token to `to` (the deployer owns the token).
pub async fn mint(url: &str, to: &str, amount: u128) -> anyhow::Result<()> {
    let data = format!(
        "0x40c10f19{:0>64}{:064x}",
        to.trim_start_matches("0x").to_ascii_lowercase(),
        amount
    );
    transact(
        &reqwest::Client::new(),
        url,
        json!({"from": DEPLOYER, "to": TOKEN, "data": data}),
    )
    .await?;
    Ok(())
}

fn anvil_binary(root: &Path) -> anyhow::Result<std::path::PathBuf> {
    let bin = root.join("contracts/node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil");
    if !bin.is_file() {
        // `cargo xtask` installs it (npm ci in contracts/) before any task.
        bail!(
            "{} is missing: run the tests with `cargo xtask test`",
            bin.display()
        );
    }
    Ok(bin)
}

pub async fn rpc(
    client: &reqwest::Client,
    url: &str,
    method: &str,
    params: Value,
) -> anyhow::Result<Value> {
    let reply: Value = client
        .post(url)
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}))
        .send()
        .await?
        .json()
        .await?;
    if let Some(error) = reply.get("error") {
        bail!("{method}: {error}");
    }
    Ok(reply["result"].clone())
}

/// Sends a transaction from an unlocked anvil account and waits for its receipt.
pub async fn transact(client: &reqwest::Client, url: &str, tx: Value) -> anyhow::Result<Value> {
    let hash = rpc(client, url, "eth_sendTransaction", json!([tx])).await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let receipt = rpc(client, url, "eth_getTransactionReceipt", json!([hash])).await?;
        if !receipt.is_null() {
            if receipt["status"] != "0x1" {
                bail!("transaction {hash} reverted");
            }
            return Ok(receipt);
        }
        if Instant::now() > deadline {
            bail!("no receipt for {hash}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn start(root: &Path, port: u16) -> anyhow::Result<DevChain> {
    let mut command = Command::new(anvil_binary(root)?);
    command
        .args([
            "--chain-id",
            &CHAIN_ID.to_string(),
            "--port",
            &port.to_string(),
        ])
        .args(["--host", "127.0.0.1", "--silent"])
        .stdout(Stdio::null());
    crate::postgres::die_with_parent(&mut command);
    {
        use std::os::unix::process::CommandExt;
        command.process_group(0);
    }
    let anvil = command.spawn().context("starting anvil")?;
    // From here on, dropping `chain` (an error below included) stops anvil.
    let mut chain = DevChain {
        rpc_url: format!("http://127.0.0.1:{port}"),
        token: String::new(),
        anvil,
    };
    let rpc_url = chain.rpc_url.clone();
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while rpc(&client, &rpc_url, "eth_chainId", json!([]))
        .await
        .is_err()
    {
        if Instant::now() > deadline {
            bail!("anvil did not answer on {rpc_url}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let artifact = |name: &str| -> anyhow::Result<Value> {
        let path = root.join(format!("contracts/build/{name}.json"));
        Ok(serde_json::from_str(&std::fs::read_to_string(path)?)?)
    };
    let code = |artifact: &Value, key: &str| -> anyhow::Result<String> {
        Ok(artifact[key].as_str().context("bytecode")?.to_owned())
    };
    let bytecode = code(&artifact("UsdCoin")?, "bytecode")?;
    let deployed = transact(
        &client,
        &rpc_url,
        json!({"from": DEPLOYER, "data": bytecode}),
    )
    .await?;
    let token = deployed["contractAddress"]
        .as_str()
        .context("contract address")?
        .to_owned();
    if !token.eq_ignore_ascii_case(TOKEN) {
        bail!("the token deployed at {token}, not {TOKEN}: is the chain fresh?");
    }
    // mint(address,uint256)
    let mint = format!(
        "0x40c10f19{:0>64}{:064x}",
        PAYER.trim_start_matches("0x").to_ascii_lowercase(),
        FUNDING
    );
    transact(
        &client,
        &rpc_url,
        json!({"from": DEPLOYER, "to": token, "data": mint}),
    )
    .await?;
    chain.token = token;
    // The escrow and Multicall3 keep no immutables: their runtime code goes
    // straight to the canonical addresses.
    for (name, address) in [
        ("X402BatchSettlement", BATCH_SETTLEMENT),
        ("Multicall3", MULTICALL3),
    ] {
        let runtime = code(&artifact(name)?, "deployedBytecode")?;
        rpc(
            &client,
            &rpc_url,
            "anvil_setCode",
            json!([address, runtime]),
        )
        .await?;
    }
    // The collector's escrow address is an immutable: deploy it for real,
    // then copy what its constructor produced.
    let constructor = format!(
        "{}{:0>64}",
        code(&artifact("ERC3009DepositCollector")?, "bytecode")?,
        BATCH_SETTLEMENT
            .trim_start_matches("0x")
            .to_ascii_lowercase()
    );
    let collector = transact(
        &client,
        &rpc_url,
        json!({"from": DEPLOYER, "data": constructor}),
    )
    .await?;
    let deployed = collector["contractAddress"]
        .as_str()
        .context("collector address")?;
    let runtime = rpc(
        &client,
        &rpc_url,
        "eth_getCode",
        json!([deployed, "latest"]),
    )
    .await?;
    rpc(
        &client,
        &rpc_url,
        "anvil_setCode",
        json!([ERC3009_COLLECTOR, runtime]),
    )
    .await?;
    Ok(chain)
}

/// Billing's payment network for the dev chain (TOML for RUNGATE_NETWORKS).
pub fn networks_toml(rpc_url: &str) -> String {
    networks_toml_with(rpc_url, 300)
}

/// The same, with payments valid for `max_timeout_seconds`.
pub fn networks_toml_with(rpc_url: &str, max_timeout_seconds: u64) -> String {
    format!(
        r#"[[networks]]
network = "eip155:{CHAIN_ID}"
v1_name = "base"
chain_id = {CHAIN_ID}
rpc_url = "{rpc_url}"
asset = "{TOKEN}"
eip712_name = "USD Coin"
eip712_version = "2"
pay_to = "{PAY_TO}"
max_timeout_seconds = {max_timeout_seconds}
"#
    )
}
