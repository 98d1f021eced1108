//! A PgBouncer of a test's own, in front of the suite's PostgreSQL server, for the tests
//! that stop and start it: `.ci/test` exports the binary (`BYOK_TEST_PGBOUNCER`) and,
//! when it runs as root, the user to run it as (`BYOK_TEST_PGBOUNCER_USER`: PgBouncer
//! will not run as root).

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::str::FromStr as _;
use std::time::{Duration, Instant};

/// A running PgBouncer; killed when dropped.
pub struct PgBouncer {
    child: Option<Child>,
    ini: PathBuf,
    port: u16,
    _dir: tempfile::TempDir,
}

impl PgBouncer {
    /// Starts one in `pool_mode` (`transaction` or `session`) with `pool_size` server
    /// connections per database, in front of every database of the test server.
    pub fn start(pool_mode: &str, pool_size: u32) -> Self {
        let server = sqlx::postgres::PgConnectOptions::from_str(&super::pg_server_url()).unwrap();
        // Under /tmp, readable and writable by the user PgBouncer runs as.
        let dir = tempfile::Builder::new()
            .prefix("byok-pgbouncer")
            .tempdir_in("/tmp")
            .unwrap();
        set_mode(dir.path(), 0o777);
        let port = free_port();
        let users = dir.path().join("users.txt");
        std::fs::write(&users, "\"postgres\" \"\"\n").unwrap();
        let ini = dir.path().join("pgbouncer.ini");
        std::fs::write(
            &ini,
            format!(
                "[databases]\n* = host={host} port={server_port}\n\
                 [pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\n\
                 unix_socket_dir =\nauth_type = trust\nauth_file = {users}\n\
                 pool_mode = {pool_mode}\ndefault_pool_size = {pool_size}\n\
                 max_client_conn = 1000\nserver_idle_timeout = 2\n\
                 admin_users = postgres\n\
                 logfile = {log}\npidfile = {pid}\n",
                host = server.get_host(),
                server_port = server.get_port(),
                users = users.display(),
                log = dir.path().join("pgbouncer.log").display(),
                pid = dir.path().join("pgbouncer.pid").display(),
            ),
        )
        .unwrap();
        for file in [&users, &ini] {
            set_mode(file, 0o644);
        }
        let mut bouncer = Self {
            child: None,
            ini,
            port,
            _dir: dir,
        };
        bouncer.start_again();
        bouncer
    }

    /// How many clients wait for a server connection now, over all pools: `cl_waiting`
    /// of PgBouncer's `SHOW POOLS`, read on its admin console.
    pub async fn clients_waiting(&self) -> i64 {
        use sqlx::{Connection as _, Row as _};
        let options = sqlx::postgres::PgConnectOptions::from_str(&self.url("pgbouncer"))
            .unwrap()
            .extra_float_digits(None);
        let mut console = sqlx::PgConnection::connect_with(&options).await.unwrap();
        // The console speaks only the simple query protocol.
        let rows = sqlx::raw_sql("SHOW POOLS")
            .fetch_all(&mut console)
            .await
            .unwrap();
        let waiting = rows
            .iter()
            .map(|row| i64::from(row.try_get::<i32, _>("cl_waiting").unwrap()))
            .sum();
        let _ = console.close().await;
        waiting
    }

    /// This database through this PgBouncer, as a URL.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// Stops it as an operator's `kill -TERM` does (PgBouncer's immediate shutdown: every
    /// client and server connection is cut), and waits until it has exited.
    pub fn terminate(&mut self) {
        let mut child = self.child.take().expect("running");
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -TERM failed");
        child.wait().unwrap();
    }

    /// Starts it (again) on the same port, and waits until it accepts connections.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "already running");
        let binary = std::env::var("BYOK_TEST_PGBOUNCER").unwrap_or_else(|_| {
            panic!(
                "BYOK_TEST_PGBOUNCER is not set. Run the suite with `bash .ci/test`, which \
                 installs PgBouncer (Debian's `pgbouncer` package)."
            )
        });
        let mut command = Command::new(binary);
        if let Ok(user) = std::env::var("BYOK_TEST_PGBOUNCER_USER") {
            command.args(["-u", &user]);
        }
        let child = command
            .arg(&self.ini)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start PgBouncer");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "PgBouncer did not listen within 10 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

#[cfg(unix)]
fn set_mode(path: &std::path::Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[cfg(not(unix))]
fn set_mode(_: &std::path::Path, _: u32) {}
