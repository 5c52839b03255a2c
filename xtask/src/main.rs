//! `cargo xtask TASK`: installs what the task needs on this machine, then runs
//! it (the tasks live in rungate-tasks, which needs llama.cpp to build).

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    let root = xtask::repo_root();
    let needs = xtask::setup::Needs::of(args.first().and_then(|task| task.to_str()));
    let python = match xtask::setup::ensure(&root, needs) {
        Ok(python) => python,
        Err(error) => {
            eprintln!("cargo xtask: {error:#}");
            return ExitCode::FAILURE;
        }
    };
    xtask::setup::announce_first_build();
    let mut tasks = xtask::cargo();
    tasks
        .args(["run", "--quiet", "--package", "rungate-tasks", "--"])
        .args(&args);
    // Every Python the tasks start (pytest, fixture generators, the model
    // fetch) is the project's environment.
    if let Some(python) = python {
        tasks.env("PYTHON", python);
    }
    // Become the task (cargo run execs it in turn), so that signals sent to
    // `cargo xtask`, Ctrl-C among them, reach the task itself.
    let error = std::os::unix::process::CommandExt::exec(&mut tasks);
    eprintln!("cargo xtask: running cargo: {error}");
    ExitCode::FAILURE
}
