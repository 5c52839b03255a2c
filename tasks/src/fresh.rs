//! `cargo xtask fresh`: README's two commands on a throwaway clone of this
//! repository's HEAD, with no Python environment and no node_modules (system
//! packages and the build cache may be there): `cargo xtask dev --smoke`,
//! then `cargo xtask test`; both must set up what they need themselves.

use std::path::Path;

use anyhow::{Context, bail};

#[derive(clap::Args)]
pub struct FreshArgs {
    /// Pass `--no-faults` to the test run (a shorter check).
    #[arg(long)]
    no_faults: bool,
}

/// The clone, removed however the check ends.
struct Copy(std::path::PathBuf);

impl Drop for Copy {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn run(args: FreshArgs) -> anyhow::Result<()> {
    let copy = Copy(std::env::temp_dir().join(format!("rungate-fresh-{}", std::process::id())));
    let cloned = std::process::Command::new("git")
        .args(["clone", "--quiet"])
        .arg(crate::dev::root())
        .arg(&copy.0)
        .status()
        .context("running git clone")?;
    if !cloned.success() {
        bail!("git clone failed");
    }
    xtask_in(&copy.0, &["dev", "--smoke"])?;
    for made in [
        ".venv/bin/python",
        "contracts/node_modules/.rungate-package-lock.json",
    ] {
        if !copy.0.join(made).is_file() {
            bail!("`cargo xtask dev` did not set up {made}");
        }
    }
    let mut test = vec!["test"];
    if args.no_faults {
        test.push("--no-faults");
    }
    xtask_in(&copy.0, &test)?;
    for made in [
        ".venv/rungate-requirements.txt",
        "tests/js/node_modules/.rungate-package-lock.json",
    ] {
        if !copy.0.join(made).is_file() {
            bail!("`cargo xtask test` did not set up {made}");
        }
    }
    println!("fresh: `cargo xtask dev` and `cargo xtask test` set up a fresh copy and passed");
    Ok(())
}

fn xtask_in(folder: &Path, args: &[&str]) -> anyhow::Result<()> {
    println!("fresh: cargo xtask {}", args.join(" "));
    let status = crate::cargo()
        .arg("xtask")
        .args(args)
        .current_dir(folder)
        // The copy must find (and make) its own Python environment.
        .env_remove("PYTHON")
        .status()
        .context("running cargo xtask")?;
    if !status.success() {
        bail!("`cargo xtask {}` failed in a fresh copy", args.join(" "));
    }
    Ok(())
}
