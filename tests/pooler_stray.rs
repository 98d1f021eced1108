//! A `LISTEN` through a transaction-mode PgBouncer (started by `.ci/test`), as another
//! client may make it: the store's failing query explains itself in the log, once per
//! process. In a test binary of its own, so that no other test takes that once.
#![cfg(all(feature = "postgres", feature = "sqlite"))]
#![allow(clippy::unwrap_used)]

mod common;

use common::{keyring, Backend, TestDb};
use tower_byok::{ErrorKind, PoolMode, Vault};

/// What a `LISTEN` through a transaction-mode pooler really does: the pooler hands its
/// server connection, still listening, to other clients, and their queries fail on the
/// notifications. The store's error says so in the log, once, with the fix.
#[tokio::test]
async fn a_stray_notification_is_explained_once() {
    use sqlx::Connection as _;
    let (capture, _guard) = common::logs::capture();
    let mut db = TestDb::new(Backend::Postgres).await;
    db.pooler = Some(PoolMode::Transaction);
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
