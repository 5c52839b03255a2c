//! The rows of `cargo xtask bench` next to llama.cpp's own server:
//! llama-cpp-python's OpenAI-compatible server (PyPI `llama-cpp-python`,
//! built here with AVX2/FMA/F16C in the benchmark's own virtual environment,
//! `.venv-bench`) and RunGate's edge over the embedded engine, the same GGUF
//! on the same threads, both driven by `tasks/bench/peer.py` with the
//! official openai client.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

const PEER: &str = "llama-cpp-python[server]==0.3.36";
/// llama.cpp's build flags for this machine's CPUs (its native detection
/// may build slow code here).
const CMAKE_ARGS: &str = "-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON";

/// The peer's interpreter, installed once (a stamp names what was installed).
fn peer_python(root: &Path) -> anyhow::Result<PathBuf> {
    let venv = root.join(".venv-bench");
    let python = venv.join("bin/python");
    let stamp = venv.join("rungate-peer.txt");
    let wanted = format!("{PEER} openai\n{CMAKE_ARGS}\n");
    if std::fs::read_to_string(&stamp).is_ok_and(|s| s == wanted) {
        return Ok(python);
    }
    if !python.exists() {
        let status = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()?;
        if !status.success() {
            bail!("python3 -m venv {} failed", venv.display());
        }
    }
    println!("building {PEER} for the peer benchmark (once; compiles llama.cpp, ~5 min) ...");
    let status = Command::new(&python)
        .args(["-m", "pip", "install", "--quiet", PEER, "openai"])
        .env("CMAKE_ARGS", CMAKE_ARGS)
        .status()?;
    if !status.success() {
        bail!("installing {PEER} failed");
    }
    std::fs::write(&stamp, wanted)?;
    Ok(python)
}

/// The peer server, stopped when dropped.
struct Peer(Child);

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_peer(python: &Path, model: &Path, threads: u32, port: u16) -> anyhow::Result<Peer> {
    let threads = threads.to_string();
    let child = Command::new(python)
        .args(["-m", "llama_cpp.server", "--model"])
        .arg(model)
        .args(["--model_alias", "bench", "--n_ctx", "2048"])
        // By default a new request interrupts the one streaming; queue them.
        .args(["--interrupt_requests", "False"])
        .args(["--n_threads", &threads, "--n_threads_batch", &threads])
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting llama_cpp.server")?;
    Ok(Peer(child))
}

async fn wait_ready(url: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    let client = reqwest::Client::new();
    while Instant::now() < deadline {
        if let Ok(response) = client.get(format!("{url}/v1/models")).send().await
            && response.status().is_success()
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bail!("{url} did not come up")
}

/// Runs the side-by-side rows; RunGate's side is `ours` (an edge URL
/// serving the embedded model as `bench`).
pub async fn run(
    root: &Path,
    model: &Path,
    threads: u32,
    runs: usize,
    ours: &str,
) -> anyhow::Result<()> {
    let python = tokio::task::spawn_blocking({
        let root = root.to_owned();
        move || peer_python(&root)
    })
    .await??;
    let port = crate::dev::free_port()?;
    let _peer = start_peer(&python, model, threads, port)?;
    let peer = format!("http://127.0.0.1:{port}");
    wait_ready(&peer).await?;
    println!(
        "\n## Next to llama.cpp's server ({PEER}, {threads} threads, the openai client, streamed, greedy)\n"
    );
    let status = tokio::process::Command::new(&python)
        .arg(root.join("tasks/bench/peer.py"))
        .args(["--ours", ours, "--peer", &peer, "--model", "bench"])
        .args(["--runs", &runs.to_string()])
        .status()
        .await?;
    if !status.success() {
        bail!("tasks/bench/peer.py failed");
    }
    Ok(())
}
