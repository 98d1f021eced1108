//! The change feed behind a real PgBouncer (`.ci/test` starts one in transaction mode and
//! one in session mode): two vaults, each with its own pool and cache, one revoking and
//! the other stopping serving the key, polling alone or listening over a direct URL; a
//! listener that goes through a transaction-mode pooler by mistake is reported; and a
//! store left in the session pool mode behind a transaction-mode pooler fails at open;
//! and an app serving over HTTP through a PgBouncer that is killed and started again.
//!
//! Caches have a TTL of an hour, so only the change feed can pass these tests; where a
//! test says the listener must do it, the poll interval is an hour too. The bounds
//! asserted are generous (5 s); the measured figures are in BENCHMARKS.md §10. The
//! vault, layer, CLI and soak suites run through both poolers too (`behind_poolers!`).
#![cfg(all(feature = "postgres", feature = "sqlite", feature = "axum"))]
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{keyring, served, within_bound, Backend, TestDb};
use tower_byok::{ErrorKind, FeedMode, PoolMode, PostgresStore, Vault};

const HOUR: Duration = Duration::from_secs(3600);

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

/// The mistake the warning is for: the "direct" URL given is the pooler's.
// A current-thread runtime: the subscriber set below is this thread's, and the feed's
// task runs on it.
#[tokio::test]
async fn a_listener_through_a_transaction_pooler_is_reported_once() {
    let (capture, _guard) = common::logs::capture();
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
        // The migrations' statements fail as a migration, the others as the store.
        assert!(
            matches!(e.kind(), ErrorKind::Store | ErrorKind::Migration),
            "{e:?}"
        );
    }
}

/// PgBouncer killed (`kill -TERM`, its immediate shutdown) and started again while an
/// app serves 64 users over HTTP through it, with a cache TTL short enough that loads go
/// on all along: every answer is the caller's own key or a 503, and the same vault
/// serves everyone again once PgBouncer is back, without being reopened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pgbouncer_restart_mid_load_fails_closed_and_recovers() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    use axum::routing::get;
    use tower_byok::resolve::FromHeader;
    use tower_byok::{ByokLayer, UserKeys};

    const USERS: u32 = 64;
    let db = TestDb::new(Backend::Postgres).await;
    let name = db.pg_options().get_database().unwrap().to_owned();
    let mut bouncer =
        tokio::task::spawn_blocking(|| common::pgbouncer::PgBouncer::start("transaction", 4))
            .await
            .unwrap();
    let url = bouncer.url(&name);
    let store = PostgresStore::connect(&url)
        .await
        .unwrap()
        .pool_mode(PoolMode::Transaction);
    let vault = Vault::builder(store, keyring())
        .cache_ttl(Duration::from_millis(50))
        // Shorter than the outage below, so that loads during it answer 503 rather
        // than wait for PgBouncer to come back.
        .load_timeout(Duration::from_millis(300))
        .poll_interval(Duration::from_millis(200))
        .open()
        .await
        .unwrap();
    for u in 0..USERS {
        vault
            .put(&format!("u{u}"), "openai", &format!("sk-u{u}-own"))
            .await
            .unwrap();
    }
    let router = axum::Router::new()
        .route(
            "/key",
            get(|keys: UserKeys| async move {
                keys.get("openai")
                    .map_or_else(String::new, |k| k.expose_secret().to_owned())
            }),
        )
        .layer(ByokLayer::new(vault.clone(), FromHeader::new("x-user")));
    let server = Arc::new(common::http::Server::start(router).await);

    #[derive(Default)]
    struct Counts {
        own: AtomicU64,
        unavailable: AtomicU64,
        wrong_user: AtomicU64,
        other: AtomicU64,
    }
    let counts = Arc::new(Counts::default());
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..8u32)
        .map(|w| {
            let (server, counts, stop) = (server.clone(), counts.clone(), stop.clone());
            tokio::spawn(async move {
                let mut n = w;
                // Bounded: at most 20,000 requests a worker, and stopped below.
                for _ in 0..20_000 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let user = format!("u{}", n % USERS);
                    n = n.wrapping_mul(31).wrapping_add(7);
                    let (status, _, body) = server.get("/key", Some(&user)).await;
                    let counter = match status.as_u16() {
                        200 if body == format!("sk-{user}-own") => &counts.own,
                        200 => &counts.wrong_user,
                        503 => &counts.unavailable,
                        _ => &counts.other,
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();

    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = counts.own.load(Ordering::Relaxed);
    bouncer = tokio::task::spawn_blocking(move || {
        bouncer.terminate();
        std::thread::sleep(Duration::from_secs(1));
        bouncer.start_again();
        bouncer
    })
    .await
    .unwrap();
    // Back: every user is served their own key again by the same vault.
    within_bound("every user is served again after the restart", || async {
        let mut all = true;
        for u in 0..USERS {
            let user = format!("u{u}");
            let (status, _, body) = server.get("/key", Some(&user)).await;
            all &= status == 200 && body == format!("sk-{user}-own");
        }
        all
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.await.unwrap();
    }
    let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let (own, unavailable) = (load(&counts.own), load(&counts.unavailable));
    assert_eq!(load(&counts.wrong_user), 0, "another user's key was served");
    assert_eq!(
        load(&counts.other),
        0,
        "an answer was neither a key nor a 503"
    );
    assert!(
        before > 0 && own > before,
        "served before and after: {before}, {own}"
    );
    assert!(
        unavailable > 0,
        "the restart was never seen: no 503 in {own} answers"
    );
    drop(bouncer);
}

/// A direct URL may hold a password: the store's `Debug` says only that it has one, and
/// a malformed one is refused without being repeated.
#[tokio::test]
async fn the_direct_url_stays_out_of_debug_and_errors() {
    let lazy = || {
        sqlx::postgres::PgPoolOptions::new()
            .connect_lazy("postgres://app:pool-hunter2@127.0.0.1:1/app")
            .unwrap()
    };
    let store = PostgresStore::from_pool(lazy())
        .pool_mode(PoolMode::Transaction)
        .direct_url("postgres://app:direct-hunter2@db.internal:5432/app")
        .unwrap();
    let debug = format!("{store:?}");
    assert!(!debug.contains("hunter2"), "{debug}");
    assert!(
        debug.contains("Transaction") && debug.contains("<set>"),
        "{debug}"
    );

    let err = PostgresStore::from_pool(lazy())
        .direct_url("postgres://app:direct-hunter2@db.internal:port/app")
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Store);
    let shown = format!("{err} {err:?} {:?}", std::error::Error::source(&err));
    assert!(!shown.contains("hunter2"), "{shown}");
}

/// README "Poolers and managed PostgreSQL": behind a session-mode pooler with fewer server
/// connections than the app's connections, a load that needs a new connection waits for
/// a server connection and fails after the load timeout with `ErrorKind::Timeout`, and
/// PgBouncer's `SHOW POOLS` shows a client waiting meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undersized_session_pooler_times_loads_out_visibly() {
    let db = TestDb::new(Backend::Postgres).await;
    let name = db.pg_options().get_database().unwrap().to_owned();
    // One server connection.
    let bouncer = tokio::task::spawn_blocking(|| common::pgbouncer::PgBouncer::start("session", 1))
        .await
        .unwrap();
    let options = bouncer
        .url(&name)
        .parse::<sqlx::postgres::PgConnectOptions>()
        .unwrap()
        .extra_float_digits(None);
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await
        .unwrap();
    let store = PostgresStore::from_pool(pool);
    let vault = Vault::builder(store.clone(), keyring())
        .watch_changes(false)
        .load_timeout(Duration::from_millis(500))
        .open()
        .await
        .unwrap();
    vault.put("alice", "openai", "sk-alice-1").await.unwrap();
    vault.forget_cached("alice");
    // Another client keeps a connection, and with it the only server connection: the
    // pool's connection, taken out of the pool and kept open.
    let other = store.pool().acquire().await.unwrap().detach();
    let load = tokio::spawn({
        let vault = vault.clone();
        async move { vault.keys_for("alice").await }
    });
    within_bound("SHOW POOLS shows the load waiting", || async {
        bouncer.clients_waiting().await > 0
    })
    .await;
    let err = load.await.unwrap().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err:?}");
    // With the server connection free again, the same vault loads.
    drop(other);
    within_bound(
        "the load succeeds once a server connection is free",
        || async {
            vault
                .keys_for("alice")
                .await
                .is_ok_and(|keys| keys.len() == 1)
        },
    )
    .await;
}
