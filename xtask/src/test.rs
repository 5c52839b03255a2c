//! `cargo xtask test`: unit and integration tests, then the local cluster
//! started as separate processes exactly as `cargo xtask dev` does, checked and
//! stopped with Ctrl-C's signal.

use anyhow::bail;

#[derive(clap::Args)]
pub struct TestArgs {
    /// Skip the separate-process cluster check.
    #[arg(long)]
    no_cluster: bool,
}

pub fn run(args: TestArgs) -> anyhow::Result<()> {
    let status = crate::cargo()
        .args(["test", "--workspace", "--all-targets"])
        .status()?;
    if !status.success() {
        bail!("cargo test failed");
    }
    if !args.no_cluster {
        crate::dev::run(crate::dev::DevArgs::smoke())?;
    }
    Ok(())
}
