//! A throwaway Postgres cluster: `initdb` into a temp dir, `postgres` as our
//! child process on a free loopback port, stopped and deleted on drop. The
//! server also dies with the process that started it (PR_SET_PDEATHSIG), so a
//! crashed or killed test run leaves no Postgres behind.
//!
//! `DATABASE_URL`, when set, is used instead, as it is: tests write unique ids,
//! so sharing a database with other runs is safe.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

pub struct Postgres {
    pub url: String,
    server: Option<Child>,
    dir: Option<PathBuf>,
    /// How the server was started, to start it again after a crash.
    launch: Option<Launch>,
}

struct Launch {
    bin: PathBuf,
    port: u16,
    identity: Option<(u32, u32)>,
    durable: bool,
}

/// Where the Postgres binaries are: on PATH, or the newest /usr/lib/postgresql/*/bin.
pub fn bin_dir() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            // PATH may hold symlinks (e.g. /usr/local/bin/initdb): the real
            // directory also has postgres and pg_isready.
            if let Ok(initdb) = dir.join("initdb").canonicalize()
                && let Some(bin) = initdb.parent().filter(|b| b.join("pg_isready").is_file())
            {
                return Ok(bin.to_path_buf());
            }
        }
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin).context(
        "no Postgres binaries: put initdb on PATH, install postgresql, or set DATABASE_URL",
    )
}

/// initdb refuses to run as root: then the server runs as the `postgres` user.
fn server_identity() -> anyhow::Result<Option<(u32, u32)>> {
    let uid = String::from_utf8(Command::new("id").arg("-u").output()?.stdout)?;
    if uid.trim() != "0" {
        return Ok(None);
    }
    let id = |flag: &str| -> anyhow::Result<u32> {
        let out = Command::new("id").args([flag, "postgres"]).output()?;
        if !out.status.success() {
            bail!("running as root needs a `postgres` user to run the server as");
        }
        Ok(String::from_utf8(out.stdout)?.trim().parse()?)
    };
    Ok(Some((id("-u")?, id("-g")?)))
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl Postgres {
    /// Starts a server (tuned for tests when `durable` is false: no fsync).
    pub fn start(durable: bool) -> anyhow::Result<Self> {
        if let Ok(url) = std::env::var("DATABASE_URL") {
            return Ok(Self {
                url,
                server: None,
                dir: None,
                launch: None,
            });
        }
        let bin = bin_dir()?;
        let identity = server_identity()?;
        sweep_abandoned();
        let dir =
            std::env::temp_dir().join(format!("rungate-pg-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir(&dir)?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
        let data = dir.join("data");
        std::fs::create_dir(&data)?;
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700))?;
        if let Some((uid, gid)) = identity {
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid))?;
            std::os::unix::fs::chown(&data, Some(uid), Some(gid))?;
        }
        let mut pg = Self {
            url: String::new(),
            server: None,
            dir: Some(dir.clone()),
            launch: None,
        };
        let mut initdb = Command::new(bin.join("initdb"));
        initdb
            .args(["-D"])
            .arg(&data)
            .args([
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
                "-E",
                "UTF8",
                "--no-instructions",
            ])
            .stdout(Stdio::null());
        as_identity(&mut initdb, identity);
        let out = initdb
            .output()
            .with_context(|| format!("running {}", bin.join("initdb").display()))?;
        if !out.status.success() {
            bail!("initdb failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let port = free_port()?;
        pg.url = format!("postgres://postgres@127.0.0.1:{port}/postgres");
        pg.launch = Some(Launch {
            bin,
            port,
            identity,
            durable,
        });
        pg.run_server()?;
        Ok(pg)
    }

    /// Starts the server on the cluster's files and waits until it accepts connections.
    fn run_server(&mut self) -> anyhow::Result<()> {
        let (Some(launch), Some(dir)) = (self.launch.as_ref(), self.dir.as_ref()) else {
            bail!("this Postgres was not started here (DATABASE_URL)");
        };
        let mut server = Command::new(launch.bin.join("postgres"));
        server
            .arg("-D")
            .arg(dir.join("data"))
            .args([
                "-p",
                &launch.port.to_string(),
                "-c",
                "listen_addresses=127.0.0.1",
            ])
            .arg("-k")
            .arg(dir)
            .args([
                "-c",
                "max_connections=200",
                "-c",
                "log_min_messages=warning",
            ]);
        if !launch.durable {
            server.args([
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
            ]);
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("server.log"))?;
        server.stdout(Stdio::null()).stderr(Stdio::from(log));
        as_identity(&mut server, launch.identity);
        die_with_parent(&mut server);
        let (bin, port) = (launch.bin.clone(), launch.port);
        self.server = Some(server.spawn().context("starting postgres")?);
        self.wait_ready(&bin, port)
    }

    /// Stops the server the way a crash would (SIGQUIT: immediate shutdown,
    /// no checkpoint; the next start runs crash recovery). Keeps its files.
    pub fn stop_immediately(&mut self) {
        if let Some(mut server) = self.server.take() {
            let _ = Command::new("kill")
                .args(["-QUIT", &server.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = server.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = server.kill();
            let _ = server.wait();
        }
    }

    /// Starts the server again on the same files and port.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop_immediately();
        self.run_server()
    }

    fn wait_ready(&mut self, bin: &Path, port: u16) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = Command::new(bin.join("pg_isready"))
                .args([
                    "-q",
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &port.to_string(),
                    "-U",
                    "postgres",
                ])
                .status()?
                .success();
            if ready {
                return Ok(());
            }
            if let Some(status) = self
                .server
                .as_mut()
                .and_then(|s| s.try_wait().ok().flatten())
            {
                let log = self
                    .dir
                    .as_ref()
                    .and_then(|d| std::fs::read_to_string(d.join("server.log")).ok())
                    .unwrap_or_default();
                bail!("postgres exited ({status}): {log}");
            }
            if Instant::now() > deadline {
                bail!("postgres did not become ready in 30s");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops the server (fast shutdown) and deletes its files.
    pub fn stop(&mut self) {
        if let Some(mut server) = self.server.take() {
            let _ = Command::new("kill")
                .args(["-INT", &server.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = server.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = server.kill();
            let _ = server.wait();
        }
        if let Some(dir) = self.dir.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Deletes the files of earlier throwaway servers whose process is gone (a
/// run killed with SIGKILL cannot clean up after itself).
fn sweep_abandoned() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let dir = entry.path();
        let ours = entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.starts_with("rungate-pg-"));
        if !ours {
            continue;
        }
        let pid = std::fs::read_to_string(dir.join("data/postmaster.pid"))
            .ok()
            .and_then(|text| text.lines().next().map(str::to_owned));
        let alive = pid.is_some_and(|pid| Path::new("/proc").join(pid.trim()).exists());
        // A dir without a pid file may be one another run is initialising right now.
        let young = entry
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|t| t.elapsed().unwrap_or_default() < Duration::from_secs(120));
        if !alive && !young {
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
}

fn as_identity(command: &mut Command, identity: Option<(u32, u32)>) {
    use std::os::unix::process::CommandExt;
    if let Some((uid, gid)) = identity {
        command.uid(uid).gid(gid);
    }
}

/// The child gets SIGKILL if the thread that spawned it dies (e.g. the test
/// process exits without running destructors), so no server outlives its run.
#[allow(unsafe_code)]
pub fn die_with_parent(command: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}
