//! Test fixtures shared by the integration tests: a fresh real database per test on
//! each backend, and raw SQL access to it for tampering.
//!
//! PostgreSQL tests run when the crate is built with `--features postgres`; they need
//! `BYOK_TEST_POSTGRES_URL` (set by `.ci/test`, which starts a throwaway server) and
//! fail, rather than skip, without it.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tower_byok::store::{AuditStore, ExpiryStore, KeyStore, RotationStore, StoredKey};
use tower_byok::{AuditAction, AuditRecord, Keyring, MasterKey, Result, SqliteStore, Vault};

#[cfg(feature = "axum")]
pub mod http;
pub mod logs;
#[cfg(feature = "postgres")]
pub mod pgbouncer;
#[cfg(feature = "postgres")]
pub mod proxy;

/// Instantiates each listed `async fn name(backend: Backend)` once per backend.
#[macro_export]
macro_rules! per_backend {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::common::Backend::Sqlite).await;
                }
            )*
        }
        #[cfg(feature = "postgres")]
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::common::Backend::Postgres).await;
                }
            )*
        }
    };
}

/// Instantiates each listed `async fn name(backend: Backend)` once per PgBouncer mode
/// (`.ci/test` starts both): the test runs on PostgreSQL, and every vault its
/// [`TestDb`] opens goes through the pooler, while the test's raw SQL goes straight to
/// the server, as an operator's would.
#[macro_export]
macro_rules! behind_poolers {
    ($($name:ident),* $(,)?) => {
        #[cfg(feature = "postgres")]
        mod pgbouncer_transaction {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    $crate::common::behind(
                        tower_byok::PoolMode::Transaction,
                        super::$name($crate::common::Backend::Postgres),
                    )
                    .await;
                }
            )*
        }
        #[cfg(feature = "postgres")]
        mod pgbouncer_session {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    $crate::common::behind(
                        tower_byok::PoolMode::Session,
                        super::$name($crate::common::Backend::Postgres),
                    )
                    .await;
                }
            )*
        }
    };
}

#[cfg(feature = "postgres")]
tokio::task_local! {
    /// The PgBouncer mode the running test's databases are reached through.
    static POOLER: tower_byok::PoolMode;
}

/// Runs `test` with every [`TestDb`] it makes reached through the PgBouncer of `mode`.
#[cfg(feature = "postgres")]
pub async fn behind(mode: tower_byok::PoolMode, test: impl std::future::Future<Output = ()>) {
    POOLER.scope(mode, test).await;
}

/// The URL of the PgBouncer in `mode` that `.ci/test` started. Fails loudly when unset,
/// as [`pg_server_url`] does.
#[cfg(feature = "postgres")]
pub fn pgbouncer_url(mode: tower_byok::PoolMode) -> String {
    let var = match mode {
        tower_byok::PoolMode::Transaction => "BYOK_TEST_PGBOUNCER_TRANSACTION_URL",
        _ => "BYOK_TEST_PGBOUNCER_SESSION_URL",
    };
    std::env::var(var).unwrap_or_else(|_| {
        panic!(
            "{var} is not set. Run the suite with `bash .ci/test`, which starts PgBouncer in \
             front of a throwaway PostgreSQL server (Debian's `pgbouncer` package)."
        )
    })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    #[cfg(feature = "postgres")]
    Postgres,
}

/// Vault settings a test may change.
#[derive(Clone, Copy, Debug)]
pub struct Opts {
    pub cache_ttl: Duration,
    pub load_timeout: Duration,
    pub max_providers: u32,
}

impl Default for Opts {
    fn default() -> Self {
        Self {
            cache_ttl: Duration::from_secs(30),
            load_timeout: Duration::from_secs(3),
            max_providers: tower_byok::DEFAULT_MAX_PROVIDERS_PER_USER,
        }
    }
}

/// A fresh database of one backend, with raw access for the tests that tamper.
pub struct TestDb {
    pub backend: Backend,
    _dir: Option<tempfile::TempDir>,
    sqlite_path: PathBuf,
    #[cfg(feature = "postgres")]
    pg: Option<sqlx::postgres::PgConnectOptions>,
    /// The pooler the vaults go through, when the test runs behind one.
    #[cfg(feature = "postgres")]
    pub pooler: Option<tower_byok::PoolMode>,
}

/// The fixed master key most tests use.
pub fn keyring() -> Keyring {
    Keyring::new(master("k1", 7))
}

pub fn master(id: &str, byte: u8) -> MasterKey {
    MasterKey::from_bytes(id, [byte; 32]).unwrap()
}

impl TestDb {
    pub async fn new(backend: Backend) -> Self {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().unwrap();
                let sqlite_path = dir.path().join("keys.db");
                Self {
                    backend,
                    _dir: Some(dir),
                    sqlite_path,
                    #[cfg(feature = "postgres")]
                    pg: None,
                    #[cfg(feature = "postgres")]
                    pooler: None,
                }
            }
            #[cfg(feature = "postgres")]
            Backend::Postgres => Self {
                backend,
                _dir: None,
                sqlite_path: PathBuf::new(),
                pg: Some(fresh_pg_database().await),
                pooler: POOLER.try_with(|mode| *mode).ok(),
            },
        }
    }

    pub async fn open(&self, keyring: Keyring) -> tower_byok::Result<Vault> {
        self.open_with(keyring, Opts::default()).await
    }

    pub async fn open_with(&self, keyring: Keyring, opts: Opts) -> tower_byok::Result<Vault> {
        match self.backend {
            Backend::Sqlite => {
                let store = SqliteStore::open(&self.sqlite_path).await?;
                Vault::builder(store, keyring)
                    .cache_ttl(opts.cache_ttl)
                    .load_timeout(opts.load_timeout)
                    .max_providers_per_user(opts.max_providers)
                    .open()
                    .await
            }
            #[cfg(feature = "postgres")]
            Backend::Postgres => {
                let store = self
                    .pg_store(8)
                    .await
                    .map_err(|_| tower_byok::ErrorKind::Store)?;
                Vault::builder(store, keyring)
                    .cache_ttl(opts.cache_ttl)
                    .load_timeout(opts.load_timeout)
                    .max_providers_per_user(opts.max_providers)
                    .open()
                    .await
            }
        }
    }

    /// Opens a vault whose keyring comes from `source`, refreshed every `refresh` if
    /// given (`Vault::builder_from`).
    pub async fn open_from(
        &self,
        source: impl tower_byok::KeyringSource,
        refresh: Option<Duration>,
    ) -> tower_byok::Result<Vault> {
        let builder = match self.backend {
            Backend::Sqlite => {
                Vault::builder_from(SqliteStore::open(&self.sqlite_path).await?, source)
            }
            #[cfg(feature = "postgres")]
            Backend::Postgres => {
                let store = self
                    .pg_store(8)
                    .await
                    .map_err(|_| tower_byok::ErrorKind::Store)?;
                return match refresh {
                    Some(every) => Vault::builder_from(store, source).refresh_keyring_every(every),
                    None => Vault::builder_from(store, source),
                }
                .open()
                .await;
            }
        };
        match refresh {
            Some(every) => builder.refresh_keyring_every(every),
            None => builder,
        }
        .open()
        .await
    }

    /// Opens a vault that follows the change feed every `poll` and serves the platform's
    /// keys when `platform` says so, with a cache TTL of an hour.
    pub async fn open_teams(&self, keyring: Keyring, platform: bool, poll: Duration) -> Vault {
        match self.backend {
            Backend::Sqlite => {
                let store = SqliteStore::open(&self.sqlite_path).await.unwrap();
                Vault::builder(store, keyring)
                    .cache_ttl(Duration::from_secs(3600))
                    .poll_interval(poll)
                    .platform_fallback(platform)
                    .open()
                    .await
                    .unwrap()
            }
            #[cfg(feature = "postgres")]
            Backend::Postgres => {
                let store = self.pg_store(8).await.unwrap();
                Vault::builder(store, keyring)
                    .cache_ttl(Duration::from_secs(3600))
                    .poll_interval(poll)
                    .platform_fallback(platform)
                    .open()
                    .await
                    .unwrap()
            }
        }
    }

    /// Opens a vault whose builder `configure` may add checks to.
    pub async fn open_checked(
        &self,
        keyring: Keyring,
        configure: impl FnOnce(Checks) -> Checks,
    ) -> Vault {
        let checks = configure(Checks(Vec::new()));
        match self.backend {
            Backend::Sqlite => {
                let store = SqliteStore::open(&self.sqlite_path).await.unwrap();
                checks
                    .apply(Vault::builder(store, keyring))
                    .open()
                    .await
                    .unwrap()
            }
            #[cfg(feature = "postgres")]
            Backend::Postgres => {
                let store = self.pg_store(4).await.unwrap();
                checks
                    .apply(Vault::builder(store, keyring))
                    .open()
                    .await
                    .unwrap()
            }
        }
    }

    /// Runs SQL with no parameters; returns rows affected.
    pub async fn exec(&self, sql: &str) -> u64 {
        // Test-written SQL, never user input.
        let sql = sqlx::AssertSqlSafe(sql.to_owned());
        match self.backend {
            Backend::Sqlite => {
                let pool = self.sqlite_pool().await;
                let done = sqlx::query(sql).execute(&pool).await.unwrap();
                pool.close().await;
                done.rows_affected()
            }
            #[cfg(feature = "postgres")]
            Backend::Postgres => {
                let pool = self.pg_pool().await;
                let done = sqlx::query(sql).execute(&pool).await.unwrap();
                pool.close().await;
                done.rows_affected()
            }
        }
    }

    /// The sealed blob of one row.
    pub async fn blob(&self, user: &str, provider: &str) -> Vec<u8> {
        const SQL: &str = "SELECT sealed FROM byok_keys WHERE user_id = $1 AND provider = $2";
        match self.backend {
            Backend::Sqlite => {
                let pool = self.sqlite_pool().await;
                let blob = sqlx::query_scalar(SQL)
                    .bind(user)
                    .bind(provider)
                    .fetch_one(&pool)
                    .await;
                pool.close().await;
                blob.unwrap()
            }
            #[cfg(feature = "postgres")]
            Backend::Postgres => {
                let pool = self.pg_pool().await;
                let blob = sqlx::query_scalar(SQL)
                    .bind(user)
                    .bind(provider)
                    .fetch_one(&pool)
                    .await;
                pool.close().await;
                blob.unwrap()
            }
        }
    }

    /// Overwrites the sealed blob of one row.
    pub async fn set_blob(&self, user: &str, provider: &str, blob: &[u8]) {
        const SQL: &str = "UPDATE byok_keys SET sealed = $3 WHERE user_id = $1 AND provider = $2";
        let affected = match self.backend {
            Backend::Sqlite => {
                let pool = self.sqlite_pool().await;
                let done = sqlx::query(SQL)
                    .bind(user)
                    .bind(provider)
                    .bind(blob)
                    .execute(&pool)
                    .await;
                pool.close().await;
                done.unwrap().rows_affected()
            }
            #[cfg(feature = "postgres")]
            Backend::Postgres => {
                let pool = self.pg_pool().await;
                let done = sqlx::query(SQL)
                    .bind(user)
                    .bind(provider)
                    .bind(blob)
                    .execute(&pool)
                    .await;
                pool.close().await;
                done.unwrap().rows_affected()
            }
        };
        assert_eq!(affected, 1, "set_blob matched no row");
    }

    /// Runs a host application's own sqlx migrations (`tests/host_migrations/<backend>`)
    /// with sqlx's migrator, on its default `_sqlx_migrations` table.
    pub async fn run_host_migrations(&self) -> Result<(), sqlx::migrate::MigrateError> {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/host_migrations");
        match self.backend {
            Backend::Sqlite => {
                let migrator = sqlx::migrate::Migrator::new(dir.join("sqlite")).await?;
                let pool = self.sqlite_pool().await;
                let result = migrator.run(&pool).await;
                pool.close().await;
                result
            }
            #[cfg(feature = "postgres")]
            Backend::Postgres => {
                let migrator = sqlx::migrate::Migrator::new(dir.join("postgres")).await?;
                let pool = self.pg_pool().await;
                let result = migrator.run(&pool).await;
                pool.close().await;
                result
            }
        }
    }

    async fn sqlite_pool(&self) -> sqlx::SqlitePool {
        let options = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(&self.sqlite_path)
            .create_if_missing(true)
            .busy_timeout(Duration::from_secs(10));
        sqlx::sqlite::SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await
            .unwrap()
    }

    #[cfg(feature = "postgres")]
    async fn pg_pool(&self) -> sqlx::PgPool {
        self.pg_pool_of(1).await.unwrap()
    }

    /// A pool of up to `max` connections to this test's database.
    #[cfg(feature = "postgres")]
    async fn pg_pool_of(&self, max: u32) -> Result<sqlx::PgPool, sqlx::Error> {
        sqlx::postgres::PgPoolOptions::new()
            .max_connections(max)
            .acquire_timeout(Duration::from_secs(2))
            .connect_with(self.pg.clone().unwrap())
            .await
    }

    /// The PostgreSQL URL of this test's database.
    #[cfg(feature = "postgres")]
    pub fn pg_options(&self) -> sqlx::postgres::PgConnectOptions {
        self.pg.clone().unwrap()
    }

    /// A store of up to `max` connections on this test's database, as the test's vaults
    /// reach it: straight, or through its pooler (with the pool mode that pooler needs).
    #[cfg(feature = "postgres")]
    pub async fn pg_store(&self, max: u32) -> Result<tower_byok::PostgresStore, sqlx::Error> {
        let Some(mode) = self.pooler else {
            return Ok(tower_byok::PostgresStore::from_pool(
                self.pg_pool_of(max).await?,
            ));
        };
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(max)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(self.pooled_options())
            .await?;
        Ok(tower_byok::PostgresStore::from_pool(pool).pool_mode(mode))
    }

    /// Options reaching this test's database through its pooler (the server itself
    /// when it has none).
    #[cfg(feature = "postgres")]
    pub fn pooled_options(&self) -> sqlx::postgres::PgConnectOptions {
        use std::str::FromStr as _;
        let Some(mode) = self.pooler else {
            return self.pg_options();
        };
        let name = self.pg_options().get_database().unwrap().to_owned();
        sqlx::postgres::PgConnectOptions::from_str(&pgbouncer_url(mode))
            .unwrap()
            .database(&name)
            // PgBouncer refuses start-up parameters it does not track.
            .extra_float_digits(None)
    }

    /// This test's database as a URL through its pooler (the server's when it has none).
    #[cfg(feature = "postgres")]
    pub fn pooled_url(&self) -> String {
        let Some(mode) = self.pooler else {
            return self.pg_url();
        };
        let name = self.pg_options().get_database().unwrap().to_owned();
        let server = pgbouncer_url(mode);
        let (host, _) = server.rsplit_once('/').unwrap();
        format!("{host}/{name}")
    }

    /// This test's database as a `postgres://` URL, for another process.
    #[cfg(feature = "postgres")]
    pub fn pg_url(&self) -> String {
        let name = self.pg_options().get_database().unwrap().to_owned();
        let server = pg_server_url();
        let (base, _) = server.split_once('?').unwrap_or((&server, ""));
        let (host, _) = base.rsplit_once('/').unwrap();
        assert!(host.contains("://"), "unexpected server URL shape");
        format!("{host}/{name}")
    }

    /// The SQLite file of this test's database.
    pub fn sqlite_path(&self) -> &std::path::Path {
        &self.sqlite_path
    }
}

/// Checks to add to a vault builder of any backend.
pub struct Checks(Vec<(String, BoxedCheck)>);

type BoxedCheck = Box<dyn tower_byok::check::KeyCheck>;

/// Forwards to a boxed check, so checks can be collected before the store type is known.
struct Forward(BoxedCheck);

impl tower_byok::check::KeyCheck for Forward {
    fn check_format(&self, key: &str) -> Result<(), &'static str> {
        self.0.check_format(key)
    }
    fn check_live<'a>(&'a self, key: &'a str) -> tower_byok::check::LiveCheck<'a> {
        self.0.check_live(key)
    }
}

impl Checks {
    pub fn check(mut self, provider: &str, check: impl tower_byok::check::KeyCheck) -> Self {
        self.0.push((provider.to_owned(), Box::new(check)));
        self
    }

    fn apply<S: KeyStore>(
        self,
        mut builder: tower_byok::VaultBuilder<S>,
    ) -> tower_byok::VaultBuilder<S> {
        for (provider, check) in self.0 {
            builder = builder.check(&provider, Forward(check));
        }
        builder
    }
}

/// The server URL the PostgreSQL tests use. Fails loudly when unset: a PostgreSQL test
/// that silently skipped would pass without testing anything.
#[cfg(feature = "postgres")]
pub fn pg_server_url() -> String {
    std::env::var("BYOK_TEST_POSTGRES_URL").unwrap_or_else(|_| {
        panic!(
            "BYOK_TEST_POSTGRES_URL is not set. Run the suite with `bash .ci/test`, which starts \
             a throwaway PostgreSQL server, or point the variable at a server you own; or run \
             `cargo test` without `--features postgres` for the SQLite tests only."
        )
    })
}

/// Creates an empty database on the test server and returns options to reach it.
#[cfg(feature = "postgres")]
async fn fresh_pg_database() -> sqlx::postgres::PgConnectOptions {
    use std::str::FromStr as _;
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let server = sqlx::postgres::PgConnectOptions::from_str(&pg_server_url()).unwrap();
    let name = format!(
        "byok_t_{}_{}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos()
    );
    let admin = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect_with(server.clone())
        .await
        .expect("connect to the PostgreSQL test server");
    // A linguistic collation, as production databases usually have: it orders text
    // differently from bytes ("a-z" after "ab"), which the crate must not depend on.
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE DATABASE {name} TEMPLATE template0 ENCODING 'UTF8' LOCALE 'C' \
         LOCALE_PROVIDER icu ICU_LOCALE 'en-US'"
    )))
    .execute(&admin)
    .await
    .expect("create a test database with an ICU en-US collation");
    admin.close().await;
    server.database(&name)
}

/// How long [`within_bound`] waits: generous, since it bounds correctness (a change is
/// seen at all), not speed; the measured figures are in BENCHMARKS.md.
pub const BOUND: Duration = Duration::from_secs(5);

/// Waits until `check` holds, for at most [`BOUND`]; fails the test with `what`.
pub async fn within_bound<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + BOUND;
    while !check().await {
        assert!(
            std::time::Instant::now() < deadline,
            "not within {BOUND:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The openai secret `vault` serves `user` now (through its cache), or `None`.
pub async fn served(vault: &Vault, user: &str) -> Option<String> {
    let keys = vault.keys_for(user).await.unwrap();
    keys.get("openai").map(|k| k.expose_secret().to_owned())
}

/// A unique suffix for names within one test binary.
pub fn unique() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// What a [`Probed`] store reports, and the hold it can put on one load.
#[derive(Clone, Default)]
pub struct Probe {
    loads: Arc<std::sync::atomic::AtomicUsize>,
    loads_read: Arc<std::sync::atomic::AtomicUsize>,
    hold: Arc<std::sync::Mutex<Option<tokio::sync::oneshot::Receiver<()>>>>,
    owner_loads: Arc<std::sync::atomic::AtomicUsize>,
    hold_owner: Arc<std::sync::Mutex<Option<tokio::sync::oneshot::Receiver<()>>>>,
}

impl Probe {
    /// How many user loads (`fetch_user`) reached the database.
    pub fn loads(&self) -> usize {
        self.loads.load(Ordering::SeqCst)
    }

    /// How many user loads have read their rows (a held one counts once it has read).
    pub fn loads_read(&self) -> usize {
        self.loads_read.load(Ordering::SeqCst)
    }

    /// How many team or platform loads (`fetch_owner`) reached the database.
    pub fn owner_loads(&self) -> usize {
        self.owner_loads.load(Ordering::SeqCst)
    }

    /// Makes the next team or platform load wait, after reading its rows, until the
    /// sender is used.
    pub fn hold_next_owner_load(&self) -> tokio::sync::oneshot::Sender<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        *self.hold_owner.lock().unwrap() = Some(rx);
        tx
    }

    /// Makes the next load wait, after reading its rows, until the sender is used.
    pub fn hold_next_load(&self) -> tokio::sync::oneshot::Sender<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        *self.hold.lock().unwrap() = Some(rx);
        tx
    }
}

/// A real store with a probe: counts loads, and can hold one load back after it has
/// read its rows, to stage the race between a slow load and a write.
pub struct Probed<S> {
    inner: S,
    probe: Probe,
}

/// Forwards to the real store, counting (and maybe holding) `fetch_user`; capabilities
/// are the inner store's own, passed through whole.
impl<S: KeyStore> KeyStore for Probed<S> {
    async fn migrate(&self) -> Result<()> {
        self.inner.migrate().await
    }
    async fn fetch_user(&self, user_id: &str) -> Result<Vec<StoredKey>> {
        self.probe.loads.fetch_add(1, Ordering::SeqCst);
        let rows = self.inner.fetch_user(user_id).await;
        self.probe.loads_read.fetch_add(1, Ordering::SeqCst);
        let hold = self.probe.hold.lock().unwrap().take();
        if let Some(hold) = hold {
            let _ = hold.await;
        }
        rows
    }
    async fn fetch_key(&self, user_id: &str, provider: &str) -> Result<Option<StoredKey>> {
        self.inner.fetch_key(user_id, provider).await
    }
    async fn upsert(
        &self,
        row: &StoredKey,
        audit: &AuditRecord,
        max_providers: u32,
    ) -> Result<AuditAction> {
        self.inner.upsert(row, audit, max_providers).await
    }
    async fn delete(
        &self,
        user_id: &str,
        provider: Option<&str>,
        audit: &AuditRecord,
    ) -> Result<Vec<String>> {
        self.inner.delete(user_id, provider, audit).await
    }
    async fn check_records(&self) -> Result<Vec<(String, Vec<u8>)>> {
        self.inner.check_records().await
    }
    async fn add_check_records(
        &self,
        records: &[(&str, Vec<u8>)],
        at: i64,
        only_if_none: bool,
    ) -> Result<usize> {
        self.inner
            .add_check_records(records, at, only_if_none)
            .await
    }
    async fn key_usage(&self) -> Result<Vec<(String, i64)>> {
        self.inner.key_usage().await
    }
    fn rotation(&self) -> Option<&impl RotationStore> {
        self.inner.rotation()
    }
    fn expiry(&self) -> Option<&impl ExpiryStore> {
        self.inner.expiry()
    }
    fn audit(&self) -> Option<&impl AuditStore> {
        self.inner.audit()
    }
    fn owners(&self) -> Option<&impl tower_byok::store::OwnerStore> {
        self.inner.owners().map(|_| self)
    }
}

/// Forwards to the real store's owners, counting (and maybe holding) `fetch_owner` as
/// `fetch_user` is.
impl<S: KeyStore> tower_byok::store::OwnerStore for Probed<S> {
    async fn fetch_owner(
        &self,
        kind: tower_byok::OwnerKind,
        owner_id: &str,
    ) -> Result<Vec<StoredKey>> {
        self.probe.owner_loads.fetch_add(1, Ordering::SeqCst);
        let rows = self
            .inner
            .owners()
            .unwrap()
            .fetch_owner(kind, owner_id)
            .await;
        let hold = self.probe.hold_owner.lock().unwrap().take();
        if let Some(hold) = hold {
            let _ = hold.await;
        }
        rows
    }
    async fn upsert_owner(
        &self,
        kind: tower_byok::OwnerKind,
        row: &StoredKey,
        audit: &AuditRecord,
        max_providers: u32,
    ) -> Result<AuditAction> {
        let owners = self.inner.owners().unwrap();
        owners.upsert_owner(kind, row, audit, max_providers).await
    }
    async fn delete_owner(
        &self,
        kind: tower_byok::OwnerKind,
        owner_id: &str,
        provider: Option<&str>,
        audit: &AuditRecord,
    ) -> Result<Vec<String>> {
        let owners = self.inner.owners().unwrap();
        owners.delete_owner(kind, owner_id, provider, audit).await
    }
    async fn set_owner_expiry(
        &self,
        kind: tower_byok::OwnerKind,
        owner_id: &str,
        provider: &str,
        expires_at: Option<i64>,
        audit: &AuditRecord,
    ) -> Result<bool> {
        let owners = self.inner.owners().unwrap();
        owners
            .set_owner_expiry(kind, owner_id, provider, expires_at, audit)
            .await
    }
    async fn expired_owner_keys(
        &self,
        kind: tower_byok::OwnerKind,
        now: i64,
        limit: u32,
    ) -> Result<Vec<(String, String)>> {
        let owners = self.inner.owners().unwrap();
        owners.expired_owner_keys(kind, now, limit).await
    }
    async fn delete_owner_expired(
        &self,
        kind: tower_byok::OwnerKind,
        owner_id: &str,
        provider: &str,
        now: i64,
        audit: &AuditRecord,
    ) -> Result<bool> {
        let owners = self.inner.owners().unwrap();
        owners
            .delete_owner_expired(kind, owner_id, provider, now, audit)
            .await
    }
    async fn team_policy(&self, team_id: &str) -> Result<Option<bool>> {
        self.inner.owners().unwrap().team_policy(team_id).await
    }
    async fn set_team_policy(
        &self,
        team_id: &str,
        members_keys: bool,
        audit: &AuditRecord,
    ) -> Result<()> {
        let owners = self.inner.owners().unwrap();
        owners.set_team_policy(team_id, members_keys, audit).await
    }
    async fn owner_keys_page(
        &self,
        kind: tower_byok::OwnerKind,
        after: Option<(&str, &str)>,
        limit: u32,
        exclude_key_id: Option<&str>,
    ) -> Result<Vec<StoredKey>> {
        let owners = self.inner.owners().unwrap();
        owners
            .owner_keys_page(kind, after, limit, exclude_key_id)
            .await
    }
    async fn reseal_owner(
        &self,
        kind: tower_byok::OwnerKind,
        old: &StoredKey,
        key_id: &str,
        sealed: &[u8],
        audit: &AuditRecord,
    ) -> Result<bool> {
        let owners = self.inner.owners().unwrap();
        owners.reseal_owner(kind, old, key_id, sealed, audit).await
    }
}

impl TestDb {
    /// Opens a vault on this database through a [`Probed`] store.
    pub async fn open_probed(&self, keyring: Keyring, opts: Opts) -> (Vault, Probe) {
        let probe = Probe::default();
        let vault = match self.backend {
            Backend::Sqlite => {
                let inner = SqliteStore::open(&self.sqlite_path).await.unwrap();
                let store = Probed {
                    inner,
                    probe: probe.clone(),
                };
                Vault::builder(store, keyring)
                    .cache_ttl(opts.cache_ttl)
                    .load_timeout(opts.load_timeout)
                    .max_providers_per_user(opts.max_providers)
                    .open()
                    .await
                    .unwrap()
            }
            #[cfg(feature = "postgres")]
            Backend::Postgres => {
                let store = Probed {
                    inner: self.pg_store(8).await.unwrap(),
                    probe: probe.clone(),
                };
                Vault::builder(store, keyring)
                    .cache_ttl(opts.cache_ttl)
                    .load_timeout(opts.load_timeout)
                    .max_providers_per_user(opts.max_providers)
                    .open()
                    .await
                    .unwrap()
            }
        };
        (vault, probe)
    }
}

/// How many rows each master key seals, sorted by master key id.
pub async fn usage(vault: &Vault) -> Vec<(String, u64)> {
    let mut usage: Vec<_> = vault
        .master_key_usage()
        .await
        .unwrap()
        .into_iter()
        .map(|u| (u.master_key_id, u.rows))
        .collect();
    usage.sort();
    usage
}

/// A small xorshift generator for the soak tests' random choices: seeded per task, so a
/// run's choices do not depend on a shared generator's lock.
pub struct Rng(pub u64);

impl Rng {
    /// A number in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}
