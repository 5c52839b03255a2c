//! `cargo xtask test`: unit and integration tests, then the local cluster
//! started as separate processes exactly as `cargo xtask dev` does, checked and
//! stopped with the signal Ctrl-C sends. Ends with one summary line.

use std::io::{BufRead, BufReader, Write};
use std::process::Stdio;

use anyhow::{Context, bail};

#[derive(clap::Args)]
pub struct TestArgs {
    /// Skip the separate-process cluster check.
    #[arg(long)]
    no_cluster: bool,
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
    if !args.no_cluster {
        match crate::dev::run(crate::dev::DevArgs::smoke()) {
            Ok(()) => passed += 1,
            Err(error) => {
                println!("summary: {passed} passed, {} failed", failed + 1);
                return Err(error.context("the local cluster check failed"));
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
