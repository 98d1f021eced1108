//! The change feed behind a real PgBouncer (`.ci/test` starts one in transaction mode and
//! one in session mode): two vaults, each with its own pool and cache, one revoking and
//! the other stopping serving the key, polling alone or listening over a direct URL; a
//! listener that goes through a transaction-mode pooler by mistake is reported; and a
//! store left in the session pool mode behind a transaction-mode pooler fails at open.
//!
//! Caches have a TTL of an hour, so only the change feed can pass these tests; where a
//! test says the listener must do it, the poll interval is an hour too. The bounds
//! asserted are generous (5 s); the measured figures are in BENCHMARKS.md §10. The
//! vault, layer, CLI and soak suites run through both poolers too (`behind_poolers!`).
#![cfg(feature = "postgres")]
#![allow(clippy::unwrap_used)]

mod common;

use std::future::Future;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{keyring, Backend, TestDb};
use tower_byok::{ErrorKind, FeedMode, PoolMode, PostgresStore, Vault};

const HOUR: Duration = Duration::from_secs(3600);
const BOUND: Duration = Duration::from_secs(5);

/// A database whose vaults go through the pooler of `mode`.
async fn db_behind(mode: PoolMode) -> TestDb {
    let mut db = TestDb::new(Backend::Postgres).await;
    db.pooler = Some(mode);
    db
}

/// A vault through `db`'s pooler, with a pool and a cache of its own, and optionally a
/// direct URL for its listener.
async fn open(db: &TestDb, direct: Option<String>, poll: Duration) -> Vault {
    let mut store = db.pg_store(4).await.unwrap();
    if let Some(url) = direct {
        store = store.direct_url(&url).unwrap();
    }
    Vault::builder(store, keyring())
        .cache_ttl(HOUR)
        .poll_interval(poll)
        .open()
        .await
        .unwrap()
}

async fn served(vault: &Vault, user: &str) -> Option<String> {
    let keys = vault.keys_for(user).await.unwrap();
    keys.get("openai").map(|k| k.expose_secret().to_owned())
}

async fn within_bound<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + BOUND;
    while !check().await {
        assert!(Instant::now() < deadline, "not within {BOUND:?}: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `writer` replaces then revokes alice's key; `reader`, which had it cached, stops
/// serving each old version.
async fn revocation_is_seen(writer: &Vault, reader: &Vault) {
    writer.put("alice", "openai", "sk-alice-1").await.unwrap();
    writer.put("bob", "openai", "sk-bob-1").await.unwrap();
    assert_eq!(served(reader, "alice").await.as_deref(), Some("sk-alice-1"));
    assert_eq!(served(reader, "bob").await.as_deref(), Some("sk-bob-1"));
    writer.put("alice", "openai", "sk-alice-2").await.unwrap();
    within_bound("the replaced key is seen", || async {
        served(reader, "alice").await.as_deref() == Some("sk-alice-2")
    })
    .await;
    writer.delete_all("alice").await.unwrap();
    within_bound("the revoked key is no longer served", || async {
        served(reader, "alice").await.is_none()
    })
    .await;
    assert_eq!(served(reader, "bob").await.as_deref(), Some("sk-bob-1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_transaction_pooler_without_a_direct_url_the_feed_polls() {
    let db = db_behind(PoolMode::Transaction).await;
    let poll = Duration::from_millis(200);
    let (writer, reader) = (open(&db, None, poll).await, open(&db, None, poll).await);
    let status = reader.change_feed();
    assert_eq!(status.mode, FeedMode::Polling, "{status:?}");
    assert!(!status.listener_connected, "{status:?}");
    revocation_is_seen(&writer, &reader).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_transaction_pooler_a_direct_url_listens() {
    let db = db_behind(PoolMode::Transaction).await;
    // A poll of an hour: only the listener can pass.
    let direct = Some(db.pg_url());
    let (writer, reader) = (
        open(&db, direct.clone(), HOUR).await,
        open(&db, direct, HOUR).await,
    );
    within_bound("the listener connects", || async {
        reader.change_feed().listener_connected
    })
    .await;
    assert_eq!(reader.change_feed().mode, FeedMode::Listening);
    revocation_is_seen(&writer, &reader).await;
    assert!(!reader.change_feed().listener_deaf);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_session_pooler_listen_works_through_it() {
    let db = db_behind(PoolMode::Session).await;
    let (writer, reader) = (open(&db, None, HOUR).await, open(&db, None, HOUR).await);
    within_bound("the listener connects through the pooler", || async {
        reader.change_feed().listener_connected
    })
    .await;
    revocation_is_seen(&writer, &reader).await;
}

/// Everything a tracing subscriber writes.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Makes a change every 50 ms, to another user than any the reader serves, until `done`
/// holds or `count` changes were made; returns how many it made.
async fn keep_changing(writer: &Vault, count: usize, mut done: impl FnMut() -> bool) -> usize {
    for n in 0..count {
        if done() {
            return n;
        }
        writer
            .put(&format!("churn-{n}"), "openai", "sk-churn")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    count
}

/// Sets a subscriber that writes into the returned capture, for this thread.
fn capture_logs() -> (Capture, tracing::subscriber::DefaultGuard) {
    use tracing_subscriber::util::SubscriberInitExt as _;
    let capture = Capture::default();
    let handle = capture.clone();
    let guard = tracing_subscriber::fmt()
        .with_writer(move || handle.clone())
        .with_ansi(false)
        .finish()
        .set_default();
    (capture, guard)
}

impl Capture {
    /// The lines at WARN that contain `text`.
    fn warnings(&self, text: &str) -> Vec<String> {
        let log = String::from_utf8(self.0.lock().unwrap().clone()).unwrap();
        log.lines()
            .filter(|l| l.contains("WARN") && l.contains(text))
            .map(str::to_owned)
            .collect()
    }
}

/// The mistake the warning is for: the "direct" URL given is the pooler's.
// A current-thread runtime: the subscriber set below is this thread's, and the feed's
// task runs on it.
#[tokio::test]
async fn a_listener_through_a_transaction_pooler_is_reported_once() {
    let (capture, _guard) = capture_logs();
    let db = db_behind(PoolMode::Transaction).await;
    let poll = Duration::from_millis(100);
    // The writer goes straight to the server: a transaction of its own on the pooler's
    // server connection that the mistaken listener left listening would fail on its
    // own notification (the next test).
    let direct = PostgresStore::from_pool(
        sqlx::postgres::PgPoolOptions::new()
            .max_connections(2)
            .connect_with(db.pg_options())
            .await
            .unwrap(),
    );
    let writer = Vault::builder(direct, keyring())
        .watch_changes(false)
        .open()
        .await
        .unwrap();
    let deaf = open(&db, Some(db.pooled_url()), poll).await;
    let heard = open(&db, Some(db.pg_url()), poll).await;
    within_bound("both listeners connect", || async {
        deaf.change_feed().listener_connected && heard.change_feed().listener_connected
    })
    .await;

    let made = keep_changing(&writer, 100, || deaf.change_feed().listener_deaf).await;
    assert!(
        deaf.change_feed().listener_deaf,
        "{made} changes and the listener through the pooler is not reported: {:?}",
        deaf.change_feed()
    );
    // The listener with a real direct URL heard the same changes.
    assert!(
        !heard.change_feed().listener_deaf,
        "{:?}",
        heard.change_feed()
    );
    // More changes: still one warning.
    keep_changing(&writer, 10, || false).await;
    assert!(deaf.change_feed().listener_deaf);
    let warnings = capture.warnings("hears no notification");
    assert_eq!(warnings.len(), 1, "one warning: {warnings:?}");
    assert!(
        warnings[0].contains("PostgresStore::direct_url"),
        "{warnings:?}"
    );
}

/// What a `LISTEN` through a transaction-mode pooler really does: the pooler hands its
/// server connection, still listening, to other clients, and their queries fail on the
/// notifications. The store's error says so in the log, once, with the fix.
#[tokio::test]
async fn a_stray_notification_is_explained_once() {
    use sqlx::Connection as _;
    let (capture, _guard) = capture_logs();
    let db = db_behind(PoolMode::Transaction).await;
    let vault = Vault::builder(db.pg_store(1).await.unwrap(), keyring())
        .watch_changes(false)
        .open()
        .await
        .unwrap();
    // Another client LISTENs through the pooler, then leaves: the server connection it
    // used goes back to the pool, listening.
    let mut listener = sqlx::PgConnection::connect_with(&db.pooled_options())
        .await
        .unwrap();
    sqlx::Executor::execute(&mut listener, "LISTEN byok_changes")
        .await
        .unwrap();
    // Each put notifies at commit; one whose transaction runs on that server connection
    // hears its own notification.
    let mut stray = 0;
    for n in 0..50 {
        if let Err(e) = vault.put(&format!("u{n}"), "openai", "sk-stray").await {
            assert_eq!(e.kind(), ErrorKind::Store, "{e:?}");
            stray += 1;
        }
    }
    assert!(stray > 0, "no put ran on the listening server connection");
    let warnings = capture.warnings("a notification it never asked for");
    assert_eq!(warnings.len(), 1, "one warning: {warnings:?}");
    assert!(warnings[0].contains("direct_url"), "{warnings:?}");
    drop(listener);
}

/// Why the mode exists: left in the session mode behind a transaction-mode pooler,
/// opening fails on the named statements (PgBouncer 1.18 keeps none), with a store error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_mode_behind_a_transaction_pooler_fails_clearly() {
    let db = db_behind(PoolMode::Transaction).await;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(8)
        .connect_with(db.pooled_options())
        .await
        .unwrap();
    let store = PostgresStore::from_pool(pool);
    // Four instances opening at once: a few dozen statements on 8 client connections
    // over 4 server connections.
    let opens: Vec<_> = (0..4)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { Vault::open(store, keyring()).await.err() })
        })
        .collect();
    let mut failures = Vec::new();
    for open in opens {
        failures.extend(open.await.unwrap());
    }
    assert!(
        !failures.is_empty(),
        "named statements went through a transaction-mode pooler"
    );
    for e in failures {
        assert_eq!(e.kind(), ErrorKind::Store, "{e:?}");
    }
}
