//! Cross-instance invalidation between separate OS processes serving HTTP on loopback:
//! two copies of a small server (this test binary, started again in server mode) on one
//! database; keys are replaced and deleted through one, and the other stops serving the
//! old key. Caches have a TTL of an hour, so only the change feed can do it.
#![cfg(all(feature = "sqlite", feature = "axum"))]
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where a server process finds its database.
const DB_VAR: &str = "BYOK_FEED_SERVER_DB";
/// `transaction` when the database URL is a transaction-mode pooler's.
#[cfg(feature = "postgres")]
const POOL_MODE_VAR: &str = "BYOK_FEED_SERVER_POOL_MODE";
/// A direct URL for the listener, behind a pooler.
#[cfg(feature = "postgres")]
const DIRECT_VAR: &str = "BYOK_FEED_SERVER_DIRECT_URL";

/// Not a test: the server the tests start, each in a process of its own. Serves until
/// its standard input closes.
#[tokio::test]
#[ignore = "started by the other tests as a separate process"]
async fn serve() {
    use axum::extract::{Path, State};
    use axum::routing::{get, post};
    use tower_byok::resolve::FromHeader;
    use tower_byok::{ByokLayer, UserKeys, Vault};

    let url = std::env::var(DB_VAR).expect("started by a test");
    let keyring = common::keyring();
    let builder = |vault: tower_byok::Result<Vault>| vault.unwrap();
    let vault = if url.starts_with("sqlite:") {
        let store = tower_byok::SqliteStore::connect(&url).await.unwrap();
        builder(
            Vault::builder(store, keyring)
                .cache_ttl(Duration::from_secs(3600))
                .open()
                .await,
        )
    } else {
        #[cfg(feature = "postgres")]
        {
            let mut store = tower_byok::PostgresStore::connect(&url).await.unwrap();
            if std::env::var(POOL_MODE_VAR).is_ok_and(|m| m == "transaction") {
                store = store.pool_mode(tower_byok::PoolMode::Transaction);
            }
            if let Ok(direct) = std::env::var(DIRECT_VAR) {
                store = store.direct_url(&direct).unwrap();
            }
            builder(
                Vault::builder(store, keyring)
                    .cache_ttl(Duration::from_secs(3600))
                    .open()
                    .await,
            )
        }
        #[cfg(not(feature = "postgres"))]
        unreachable!("a PostgreSQL URL without the postgres feature")
    };
    let served = axum::Router::new()
        .route(
            "/key",
            get(|keys: UserKeys| async move {
                keys.get("openai")
                    .map_or_else(|| "none".to_owned(), |k| k.expose_secret().to_owned())
            }),
        )
        .layer(ByokLayer::new(vault.clone(), FromHeader::new("x-user")));
    let admin = axum::Router::new()
        .route(
            "/put/{user}/{secret}",
            post(
                |State(vault): State<Vault>, Path((user, secret)): Path<(String, String)>| async move {
                    vault.put(&user, "openai", &secret).await.unwrap();
                    "ok"
                },
            ),
        )
        .route(
            "/delete/{user}",
            post(
                |State(vault): State<Vault>, Path(user): Path<String>| async move {
                    vault.delete_all(&user).await.unwrap();
                    "ok"
                },
            ),
        )
        .with_state(vault);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    // The parent reads the port from the first line.
    #[allow(clippy::print_stdout)]
    {
        println!("PORT={}", listener.local_addr().unwrap().port());
    }
    tokio::spawn(async move {
        axum::serve(listener, served.merge(admin)).await.unwrap();
    });
    // Until the test that started this process closes its end.
    tokio::task::spawn_blocking(|| {
        let mut sink = Vec::new();
        let _ = std::io::stdin().read_to_end(&mut sink);
    })
    .await
    .unwrap();
}

/// A server process, killed when dropped.
struct Server {
    child: Child,
    port: u16,
}

impl Server {
    fn start(db_url: &str) -> Self {
        Self::start_with(db_url, &[])
    }

    fn start_with(db_url: &str, env: &[(&str, &str)]) -> Self {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--ignored", "--exact", "serve", "--nocapture"])
            .env(DB_VAR, db_url)
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let port = stdout
            .lines()
            .map(Result::unwrap)
            .find_map(|line| line.strip_prefix("PORT=").map(|p| p.parse().unwrap()))
            .expect("the server printed its port");
        Self { child, port }
    }

    /// One HTTP/1.1 request; returns the response body.
    fn request(&self, method: &str, path: &str, user: Option<&str>) -> String {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        let user = user.map_or(String::new(), |u| format!("x-user: {u}\r\n"));
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nhost: localhost\r\n{user}content-length: 0\r\nconnection: close\r\n\r\n"
        )
        .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        let (head, body) = response.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 200"), "{response}");
        body.to_owned()
    }

    fn served(&self, user: &str) -> String {
        self.request("GET", "/key", Some(user))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn within_bound(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !check() {
        assert!(Instant::now() < deadline, "not within 5 s: {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn replace_and_delete_across_processes(db_url: &str) {
    replace_and_delete_between(Server::start(db_url), Server::start(db_url));
}

fn replace_and_delete_between(one: Server, two: Server) {
    one.request("POST", "/put/alice/sk-alice-1", None);
    assert_eq!(two.served("alice"), "sk-alice-1"); // now cached in process two
    one.request("POST", "/put/alice/sk-alice-2", None);
    within_bound("process two serves the replaced key", || {
        two.served("alice") == "sk-alice-2"
    });
    one.request("POST", "/delete/alice", None);
    within_bound("process two stops serving the deleted key", || {
        two.served("alice") == "none"
    });
}

#[test]
fn sqlite_processes_see_each_others_writes() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("keys.db").display());
    replace_and_delete_across_processes(&url);
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_processes_see_each_others_writes() {
    let db = common::TestDb::new(common::Backend::Postgres).await;
    let url = db.pg_url();
    tokio::task::spawn_blocking(move || replace_and_delete_across_processes(&url))
        .await
        .unwrap();
}

/// Both processes behind the transaction-mode PgBouncer `.ci/test` started: polling
/// alone (every second, the default), then listening over a direct URL.
#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_processes_behind_a_transaction_pooler_see_each_others_writes() {
    let mut db = common::TestDb::new(common::Backend::Postgres).await;
    db.pooler = Some(tower_byok::PoolMode::Transaction);
    let (pooled, direct) = (db.pooled_url(), db.pg_url());
    tokio::task::spawn_blocking(move || {
        let polling = [(POOL_MODE_VAR, "transaction")];
        replace_and_delete_between(
            Server::start_with(&pooled, &polling),
            Server::start_with(&pooled, &polling),
        );
        let listening = [
            (POOL_MODE_VAR, "transaction"),
            (DIRECT_VAR, direct.as_str()),
        ];
        replace_and_delete_between(
            Server::start_with(&pooled, &listening),
            Server::start_with(&pooled, &listening),
        );
    })
    .await
    .unwrap();
}
