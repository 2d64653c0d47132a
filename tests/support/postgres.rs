//! Throwaway PostgreSQL clusters for tests and benchmarks: the
//! distribution's server binaries, `initdb` into a temp dir, started on a
//! free port of the address asked for, stopped when the [`Cluster`] is
//! dropped or, for the shared [`cluster()`], when the test process ends
//! (the server runs under a shell that stops it when our end of its stdin
//! pipe closes, so even a killed test leaves no server behind).
//!
//! Server binaries: `$SCAN_LOGIN_PG_BINDIR`, else the newest
//! `/usr/lib/postgresql/*/bin`, else `PATH`. As root, the server runs as
//! the `postgres` user (it refuses root). `scripts/test.sh` installs the
//! packages when they are missing.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long a cluster may take to accept connections.
const START_LIMIT: Duration = Duration::from_secs(60);

/// One running PostgreSQL server with trust authentication for the
/// superuser `postgres`.
pub struct Cluster {
    pub host: String,
    pub port: u16,
    dir: PathBuf,
    server: Mutex<Option<Server>>,
    durable: bool,
    /// The network namespace the server runs in, if any.
    netns: Option<String>,
}

struct Server {
    child: Child,
    /// Closing it stops the server.
    stdin: ChildStdin,
}

/// The cluster shared by every test in this process (fast settings: no
/// fsync), started on first use on 127.0.0.1.
pub fn cluster() -> &'static Cluster {
    static SHARED: OnceLock<Cluster> = OnceLock::new();
    SHARED.get_or_init(|| Cluster::start("127.0.0.1", false))
}

/// The directory holding `initdb`, `postgres` and `pg_isready`.
pub fn bin_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("SCAN_LOGIN_PG_BINDIR") {
        return PathBuf::from(d);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return bin;
    }
    for dir in std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()) {
        if dir.join("initdb").exists() && dir.join("postgres").exists() {
            return dir;
        }
    }
    panic!(
        "PostgreSQL server binaries not found (no /usr/lib/postgresql/*/bin, no initdb on PATH, \
         SCAN_LOGIN_PG_BINDIR unset): install them with `apt-get install postgresql` \
         (scripts/test.sh does)"
    );
}

/// Whether this process runs as root (asked once).
fn is_root() -> bool {
    static ROOT: OnceLock<bool> = OnceLock::new();
    *ROOT.get_or_init(|| {
        Command::new("id")
            .arg("-u")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
            .unwrap_or(false)
    })
}

/// `cmd` run as the server's user.
fn as_server_user(program: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

impl Cluster {
    /// Creates and starts a cluster listening on `listen` (an IPv4
    /// address) at a free port. `durable` keeps PostgreSQL's default
    /// fsync settings (for benchmarks); otherwise they are off (tests).
    pub fn start(listen: &str, durable: bool) -> Cluster {
        Cluster::start_in(None, listen, durable)
    }

    /// [`Cluster::start`] with the server inside network namespace
    /// `netns` (multi-host tests).
    pub fn start_in(netns: Option<&str>, listen: &str, durable: bool) -> Cluster {
        let bin = bin_dir();
        let dir = crate::process::temp_dir("pg");
        if is_root() {
            let ok = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&dir)
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            assert!(ok, "cannot chown {} to postgres", dir.display());
        }
        let data = dir.join("data");
        let out = as_server_user(&bin.join("initdb"))
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-instructions",
            ])
            .output()
            .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // Trust from anywhere: the cluster listens on a test address only.
        let hba = data.join("pg_hba.conf");
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&hba)
            .expect("open pg_hba.conf");
        writeln!(f, "host all all 0.0.0.0/0 trust").expect("write pg_hba.conf");
        let cluster = Cluster {
            host: listen.to_string(),
            port: crate::free_port(),
            dir,
            server: Mutex::new(None),
            durable,
            netns: netns.map(String::from),
        };
        cluster.run();
        cluster
    }

    /// Starts the server (again, after [`Cluster::stop`]) on the same port
    /// and waits until it accepts connections.
    pub fn run(&self) {
        let bin = bin_dir();
        let data = self.dir.join("data");
        let mut settings = vec![
            format!("listen_addresses={}", self.host),
            "max_connections=300".to_string(),
            "shared_buffers=64MB".to_string(),
        ];
        if !self.durable {
            settings.extend(
                [
                    "fsync=off",
                    "synchronous_commit=off",
                    "full_page_writes=off",
                ]
                .map(String::from),
            );
        }
        let mut script = String::from("\"$0\" -D \"$1\" -p \"$2\" -k \"$1\"");
        for s in &settings {
            script.push_str(&format!(" -c '{s}'"));
        }
        script.push_str(
            " >\"$1/server.log\" 2>&1 & pid=$!; cat >/dev/null; kill -INT $pid; wait $pid",
        );
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]);
                if is_root() {
                    c.args(["runuser", "-u", "postgres", "--"]);
                }
                c.args(["sh", "-c"]);
                c
            }
            None if is_root() => {
                let mut c = Command::new("runuser");
                c.args(["-u", "postgres", "--", "sh", "-c"]);
                c
            }
            None => {
                let mut c = Command::new("sh");
                c.arg("-c");
                c
            }
        };
        let mut child = cmd
            .arg(&script)
            .arg(bin.join("postgres"))
            .arg(&data)
            .arg(self.port.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start postgres");
        let stdin = child.stdin.take().expect("postgres stdin");
        *self.server.lock().unwrap() = Some(Server { child, stdin });
        let started = Instant::now();
        loop {
            let ready = Command::new(bin.join("pg_isready"))
                .args(["-q", "-h", &self.host, "-p", &self.port.to_string()])
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if ready {
                return;
            }
            assert!(
                started.elapsed() < START_LIMIT,
                "postgres did not start on {}:{} within {START_LIMIT:?}; log:\n{}",
                self.host,
                self.port,
                std::fs::read_to_string(data.join("server.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops the server (fast shutdown) and waits for it to exit.
    pub fn stop(&self) {
        if let Some(Server { mut child, stdin }) = self.server.lock().unwrap().take() {
            drop(stdin);
            let _ = child.wait();
        }
    }

    /// Puts `line` first in pg_hba.conf (it wins over the trust lines),
    /// e.g. `host cbdb cb all scram-sha-256` to make a role use its
    /// password. Takes effect at the next start ([`Cluster::run`]).
    pub fn hba_first(&self, line: &str) {
        let hba = self.dir.join("data").join("pg_hba.conf");
        let old = std::fs::read_to_string(&hba).expect("read pg_hba.conf");
        std::fs::write(&hba, format!("{line}\n{old}")).expect("write pg_hba.conf");
    }

    /// A URL for `db` as the superuser.
    pub fn url(&self, db: &str) -> String {
        format!(
            "postgres://postgres@{}:{}/{db}?sslmode=disable",
            self.host, self.port
        )
    }

    /// Runs SQL with psql as the superuser in `db`; returns its output.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        self.psql_with(db, &["-c", sql])
    }

    /// Runs psql as the superuser in `db` with more arguments (`-f FILE`,
    /// `-v NAME=VALUE`); returns its output.
    pub fn psql_with(&self, db: &str, args: &[&str]) -> String {
        let sql = args.join(" ");
        let port = self.port.to_string();
        let out = Command::new(bin_dir().join("psql"))
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
            .args(["-h", &self.host, "-p", &port, "-U", "postgres", "-d", db])
            .args(args)
            .output()
            .expect("run psql");
        assert!(
            out.status.success(),
            "psql {sql:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// The database name in one of [`Cluster::url`]'s URLs.
    pub fn database_of(url: &str) -> String {
        url.rsplit_once('/')
            .and_then(|(_, rest)| rest.split('?').next())
            .unwrap_or_default()
            .to_string()
    }

    /// Creates an empty database with a fresh name; returns its URL.
    pub fn fresh_database(&self, tag: &str) -> String {
        let name = format!("t_{tag}_{:08x}", rand::random::<u32>());
        self.psql("postgres", &format!("CREATE DATABASE {name}"));
        self.url(&name)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
    }
}
