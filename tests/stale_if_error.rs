//! Stale-if-error: while the database is unreachable, a vault may serve a user's
//! already-cached keys past the TTL, up to a configured bound, marked stale; never keys
//! it was told to forget, never past the bound, and never to a user it had not cached.
#![cfg(all(feature = "sqlite", feature = "postgres"))]
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::{keyring, Backend, TestDb};
use tower_byok::{ErrorKind, Vault};

/// While the database is unreachable, a cached user is served past the TTL up to
/// the stale bound, marked stale; an uncached user gets an error; a user invalidated
/// before the outage is never served; everything recovers when the database returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_if_error_serves_cached_keys_within_its_bound_only() {
    use tower_byok::PostgresStore;
    let db = TestDb::new(Backend::Postgres).await;
    let writer = Vault::open(
        tower_byok::PostgresStore::connect(&db.pg_url())
            .await
            .unwrap(),
        keyring(),
    )
    .await
    .unwrap();
    for user in ["alice", "bob", "carol"] {
        writer
            .put(user, "openai", &format!("sk-{user}"))
            .await
            .unwrap();
    }
    let target = db.pg_options();
    let proxy =
        common::proxy::Proxy::start(format!("{}:{}", target.get_host(), target.get_port())).await;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(Duration::from_millis(500))
        .connect_with(target.host("127.0.0.1").port(proxy.port()))
        .await
        .unwrap();
    let ttl = Duration::from_millis(300);
    let stale_for = Duration::from_secs(2);
    let vault = Vault::builder(PostgresStore::from_pool(pool), keyring())
        .cache_ttl(ttl)
        .load_timeout(Duration::from_millis(400))
        .stale_if_error(stale_for)
        .open()
        .await
        .unwrap();
    for user in ["alice", "carol"] {
        assert!(!vault.keys_for(user).await.unwrap().is_stale());
    }
    vault.forget_cached("carol"); // as a write elsewhere would
    proxy.cut();
    let cut_at = Instant::now();
    tokio::time::sleep(ttl + Duration::from_millis(50)).await;

    let alice = vault.keys_for("alice").await.unwrap();
    assert!(alice.is_stale(), "served past the TTL only as stale");
    assert_eq!(alice.get("openai").unwrap().expose_secret(), "sk-alice");
    for user in ["bob", "carol"] {
        let kind = vault.keys_for(user).await.unwrap_err().kind();
        assert!(
            matches!(kind, ErrorKind::Store | ErrorKind::Timeout),
            "{user}: {kind:?}"
        );
    }
    // Past the TTL and the bound: nothing.
    let past = (ttl + stale_for + Duration::from_millis(100)).saturating_sub(cut_at.elapsed());
    tokio::time::sleep(past).await;
    assert!(
        vault.keys_for("alice").await.is_err(),
        "stale past the bound"
    );

    proxy.restore();
    let deadline = Instant::now() + Duration::from_secs(20);
    for user in ["alice", "bob", "carol"] {
        loop {
            match vault.keys_for(user).await {
                Ok(keys) if !keys.is_stale() && !keys.is_empty() => break,
                _ => assert!(Instant::now() < deadline, "{user} never recovered"),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
