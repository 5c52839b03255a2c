//! `cargo xtask test`: unit and integration tests, the Python SDK tests, then
//! the local cluster started as separate processes exactly as `cargo xtask
//! dev` does, checked and stopped with the signal Ctrl-C sends, and the short
//! fault suite. Ends with one summary line.

use std::io::{BufRead, BufReader, Write};
use std::process::Stdio;

use anyhow::{Context, bail};

#[derive(clap::Args)]
pub struct TestArgs {
    /// Skip the separate-process cluster check.
    #[arg(long)]
    no_cluster: bool,
    /// Skip the Python SDK tests (tests/python, which start the local cluster).
    #[arg(long)]
    no_python: bool,
    /// Skip the short fault suite (`cargo xtask faults --quick`).
    #[arg(long)]
    no_faults: bool,
}

/// Runs tests/python with pytest; returns (passed, failed, success).
fn pytest() -> anyhow::Result<(u64, u64, bool)> {
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let mut child = std::process::Command::new(python)
        .args([
            "-m",
            "pytest",
            "tests/python",
            "-q",
            "-p",
            "no:cacheprovider",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .context("running pytest (pip install -r tests/python/requirements.txt)")?;
    let stdout = child.stdout.take().context("pytest output")?;
    let mut last = String::new();
    let mut out = std::io::stdout().lock();
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        writeln!(out, "{line}")?;
        if !line.trim().is_empty() {
            last = line;
        }
    }
    drop(out);
    let ok = child.wait()?.success();
    // pytest's last line: "8 passed, 1 failed in 12.00s"
    let number_before = |label: &str| -> u64 {
        last.split(',')
            .find_map(|part| {
                let mut words = part.split_whitespace();
                let n = words.next()?.parse().ok()?;
                words.next()?.starts_with(label).then_some(n)
            })
            .unwrap_or(0)
    };
    Ok((
        number_before("passed"),
        number_before("failed") + number_before("error"),
        ok,
    ))
}

pub fn run(args: TestArgs) -> anyhow::Result<()> {
    let mut child = crate::cargo()
        .args(["test", "--workspace", "--all-targets"])
        .stdout(Stdio::piped())
        .spawn()?;
    let stdout = child.stdout.take().context("cargo test output")?;
    let (mut passed, mut failed) = (0u64, 0u64);
    let mut out = std::io::stdout().lock();
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        writeln!(out, "{line}")?;
        if let Some(summary) = line.strip_prefix("test result: ") {
            passed += count(summary, " passed");
            failed += count(summary, " failed");
        }
    }
    drop(out);
    let status = child.wait()?;
    if !status.success() {
        println!("summary: {passed} passed, {} failed", failed.max(1));
        bail!("cargo test failed");
    }
    if !args.no_python {
        let (p, f, ok) = pytest()?;
        passed += p;
        failed += f;
        if !ok {
            println!("summary: {passed} passed, {} failed", failed.max(1));
            bail!("the Python SDK tests failed");
        }
    }
    if !args.no_cluster {
        match crate::dev::run(crate::dev::DevArgs::smoke()) {
            Ok(()) => passed += 1,
            Err(error) => {
                println!("summary: {passed} passed, {} failed", failed + 1);
                return Err(error.context("the local cluster check failed"));
            }
        }
    }
    if !args.no_faults {
        match crate::faults::run(crate::faults::FaultArgs::quick()) {
            Ok(()) => passed += 1,
            Err(error) => {
                println!("summary: {passed} passed, {} failed", failed + 1);
                return Err(error.context("the fault suite failed"));
            }
        }
    }
    println!("summary: {passed} passed, {failed} failed");
    Ok(())
}

/// The number before `label` in a libtest summary ("ok. 3 passed; 0 failed; …").
fn count(summary: &str, label: &str) -> u64 {
    summary
        .split(';')
        .find_map(|part| part.trim().strip_suffix(label.trim_start()).map(str::trim))
        .and_then(|n| n.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_libtest_summaries() {
        let line =
            "ok. 25 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out; finished in 2.55s";
        assert_eq!(super::count(line, " passed"), 25);
        assert_eq!(super::count(line, " failed"), 2);
    }
}
