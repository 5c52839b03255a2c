//! Model files the tests run on, made or fetched once per machine.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use anyhow::{Context, bail};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default()
}

fn python() -> String {
    std::env::var("PYTHON").unwrap_or_else(|_| "python3".into())
}

/// The tiny random-weight llama GGUF, written by `tests/fixtures/make_tiny_gguf.py`
/// (needs the PyPI `gguf` package).
pub fn tiny_gguf() -> anyhow::Result<PathBuf> {
    static PATH: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    PATH.get_or_init(|| {
        let dir = std::env::temp_dir().join("rungate-fixtures");
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let script = repo().join("tests/fixtures/make_tiny_gguf.py");
        // Named after the generator's content: a changed script makes a new file.
        let source = std::fs::read(&script).map_err(|e| format!("{}: {e}", script.display()))?;
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        std::hash::Hash::hash(&source, &mut hasher);
        let path = dir.join(format!(
            "tiny-llama-{:016x}.gguf",
            std::hash::Hasher::finish(&hasher)
        ));
        if path.exists() {
            return Ok(path);
        }
        let partial = dir.join(format!("tiny-llama-{}.partial", std::process::id()));
        let out = Command::new(python())
            .arg(&script)
            .arg(&partial)
            .output()
            .map_err(|e| format!("running {}: {e}", script.display()))?;
        if !out.status.success() {
            return Err(format!(
                "{} failed (is the PyPI `gguf` package installed?): {}",
                script.display(),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        std::fs::rename(&partial, &path).map_err(|e| e.to_string())?;
        Ok(path)
    })
    .clone()
    .map_err(anyhow::Error::msg)
}

/// The embedded default model (SmolLM2-135M-Instruct), fetched by
/// `scripts/fetch_default_model.py` into the model directory.
pub fn default_model() -> anyhow::Result<PathBuf> {
    let dir = rungate_inference::local::model_dir();
    let script = repo().join("scripts/fetch_default_model.py");
    let out = Command::new(python())
        .arg(&script)
        .arg(&dir)
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    if !out.status.success() {
        bail!(
            "fetching the default model failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(PathBuf::from(String::from_utf8(out.stdout)?.trim()))
}
