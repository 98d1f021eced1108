//! A cache miss: one cold user's three keys read and decrypted, beside the floor of a raw
//! sqlx select of the same rows plus the raw decryption (HKDF-SHA256 and three
//! XChaCha20-Poly1305 opens, written from `docs/FORMAT.md`), in the same run:
//!
//! - `sqlite/byok` and `sqlite/raw`: a SQLite file in WAL mode;
//! - `postgres/byok` and `postgres/raw`: PostgreSQL over loopback, when
//!   `BYOK_BENCH_POSTGRES_URL` (or `BYOK_TEST_POSTGRES_URL`) names a server;
//! - `pgbouncer-transaction/byok` (`PoolMode::Transaction`) and
//!   `pgbouncer-transaction/raw` (the same select by hand as that mode must make it:
//!   unnamed, inside `BEGIN`/`COMMIT`), through the transaction-mode PgBouncer that
//!   `.ci/test` starts (`BYOK_TEST_PGBOUNCER_TRANSACTION_URL`), on the same database;
//! - `pgbouncer-session/byok` and `pgbouncer-session/raw`: through the session-mode
//!   PgBouncer (`BYOK_TEST_PGBOUNCER_SESSION_URL`), prepared statements as directly.
//!
//! Run: `cargo bench --bench miss_path` (or `bash .ci/test` style: start a server and set
//! the variable; see BENCHMARKS.md).

// `criterion_group!` expands to an undocumented `pub fn`.
#![allow(missing_docs)]

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use tower_byok::Vault;

#[path = "support/miss.rs"]
mod miss;
use miss::{keyring, raw_open, seed, SELECT, USER};

fn miss_path(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut group = c.benchmark_group("miss_path");

    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bench.db");
    let (vault, raw) = rt.block_on(async {
        let vault = Vault::open(
            tower_byok::SqliteStore::open(&path).await.expect("store"),
            keyring(),
        )
        .await
        .expect("vault");
        seed(&vault).await;
        let options = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(&path)
            .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal);
        let raw = sqlx::sqlite::SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(options)
            .await
            .expect("raw pool");
        (vault, raw)
    });
    group.bench_function("sqlite/byok", |b| {
        b.to_async(&rt).iter_batched(
            || vault.forget_cached(USER),
            |()| async { assert_eq!(vault.keys_for(USER).await.expect("load").len(), 3) },
            BatchSize::PerIteration,
        )
    });
    group.bench_function("sqlite/raw", |b| {
        b.to_async(&rt).iter(|| async {
            let rows: Vec<(String, String, Vec<u8>)> = sqlx::query_as(SELECT)
                .bind(USER)
                .fetch_all(&raw)
                .await
                .expect("select");
            assert_eq!(raw_open(&rows), 3);
        })
    });

    #[cfg(feature = "postgres")]
    postgres(&rt, &mut group);
    #[cfg(not(feature = "postgres"))]
    eprintln!("miss_path: built without the postgres feature, PostgreSQL skipped");
    group.finish();
}

#[cfg(feature = "postgres")]
fn postgres(
    rt: &tokio::runtime::Runtime,
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
) {
    let url = std::env::var("BYOK_BENCH_POSTGRES_URL")
        .or_else(|_| std::env::var("BYOK_TEST_POSTGRES_URL"));
    match url {
        Ok(url) => {
            let (vault, raw) = rt.block_on(async {
                let vault = Vault::open(
                    tower_byok::PostgresStore::connect(&url)
                        .await
                        .expect("store"),
                    keyring(),
                )
                .await
                .expect("vault (a database whose vault uses another master key cannot be reused)");
                seed(&vault).await;
                let raw = sqlx::postgres::PgPoolOptions::new()
                    .max_connections(16)
                    .connect(&url)
                    .await
                    .expect("raw pool");
                (vault, raw)
            });
            let database = rt.block_on(async {
                sqlx::query_scalar::<_, String>("SELECT current_database()")
                    .fetch_one(&raw)
                    .await
                    .expect("database name")
            });
            for (name, var, mode) in [
                (
                    "pgbouncer-transaction",
                    "BYOK_TEST_PGBOUNCER_TRANSACTION_URL",
                    tower_byok::PoolMode::Transaction,
                ),
                (
                    "pgbouncer-session",
                    "BYOK_TEST_PGBOUNCER_SESSION_URL",
                    tower_byok::PoolMode::Session,
                ),
            ] {
                match std::env::var(var) {
                    Ok(pooler) => {
                        let (host, _) = pooler.rsplit_once('/').expect("a URL");
                        pooled(rt, group, name, &format!("{host}/{database}"), mode);
                    }
                    Err(_) => eprintln!("miss_path: {var} is not set, {name} skipped"),
                }
            }
            group.bench_function("postgres/byok", |b| {
                b.to_async(rt).iter_batched(
                    || vault.forget_cached(USER),
                    |()| async { assert_eq!(vault.keys_for(USER).await.expect("load").len(), 3) },
                    BatchSize::PerIteration,
                )
            });
            group.bench_function("postgres/raw", |b| {
                b.to_async(rt).iter(|| async {
                    let rows: Vec<(String, String, Vec<u8>)> = sqlx::query_as(SELECT)
                        .bind(USER)
                        .fetch_all(&raw)
                        .await
                        .expect("select");
                    assert_eq!(raw_open(&rows), 3);
                })
            });
        }
        Err(_) => eprintln!("miss_path: BYOK_BENCH_POSTGRES_URL is not set, PostgreSQL skipped"),
    }
}

/// The vault and the raw floor through a PgBouncer in front of the same database.
#[cfg(feature = "postgres")]
fn pooled(
    rt: &tokio::runtime::Runtime,
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    url: &str,
    mode: tower_byok::PoolMode,
) {
    let transaction = mode == tower_byok::PoolMode::Transaction;
    let (vault, raw) = rt.block_on(async {
        let store = tower_byok::PostgresStore::connect(url)
            .await
            .expect("store")
            .pool_mode(mode);
        let vault = Vault::builder(store, keyring())
            .watch_changes(false)
            .open()
            .await
            .expect("vault");
        let options = url
            .parse::<sqlx::postgres::PgConnectOptions>()
            .expect("url")
            .extra_float_digits(None);
        let raw = sqlx::postgres::PgPoolOptions::new()
            .max_connections(16)
            .connect_with(options)
            .await
            .expect("raw pool");
        (vault, raw)
    });
    group.bench_function(format!("{name}/byok"), |b| {
        b.to_async(rt).iter_batched(
            || vault.forget_cached(USER),
            |()| async { assert_eq!(vault.keys_for(USER).await.expect("load").len(), 3) },
            BatchSize::PerIteration,
        )
    });
    group.bench_function(format!("{name}/raw"), |b| {
        b.to_async(rt).iter(|| async {
            let rows: Vec<(String, String, Vec<u8>)> = if transaction {
                let mut tx = raw.begin().await.expect("begin");
                let rows = sqlx::query_as(SELECT)
                    .persistent(false)
                    .bind(USER)
                    .fetch_all(&mut *tx)
                    .await
                    .expect("select");
                tx.commit().await.expect("commit");
                rows
            } else {
                sqlx::query_as(SELECT)
                    .bind(USER)
                    .fetch_all(&raw)
                    .await
                    .expect("select")
            };
            assert_eq!(raw_open(&rows), 3);
        })
    });
}

criterion_group!(benches, miss_path);
criterion_main!(benches);
