//! What every project task shares: the repository root, a clean cargo
//! command, and the machine set-up that `cargo xtask` runs first.

pub mod setup;

use std::path::{Path, PathBuf};

/// The checkout `cargo run` started us from (it sets CARGO_MANIFEST_DIR at
/// run time too): a build cache shared by several checkouts may hand us a
/// binary built in another one.
pub fn repo_root() -> PathBuf {
    let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from);
    manifest_dir
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// A cargo command without the variables `cargo run` set for this process:
/// build scripts (ring's among them) watch some of them, and would otherwise
/// rebuild half the tree each time a task calls cargo.
pub fn cargo() -> std::process::Command {
    let mut command =
        std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    for (key, _) in std::env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        let set_by_cargo_run = [
            "CARGO_PKG_",
            "CARGO_MANIFEST_",
            "CARGO_BIN_",
            "CARGO_CRATE_",
        ]
        .iter()
        .any(|prefix| key.starts_with(prefix))
            || matches!(key, "CARGO_PRIMARY_PACKAGE" | "CARGO_RUSTC_CURRENT_DIR");
        if set_by_cargo_run {
            command.env_remove(key);
        }
    }
    command
}

/// Where cargo puts what it builds for this workspace.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| repo_root().join("target"), PathBuf::from)
}
