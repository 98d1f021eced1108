use std::fmt;
use std::str::FromStr as _;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{Connection as _, Postgres, Transaction};

use super::{migrate, Session};
use crate::error::{Error, ErrorKind, Result};

#[allow(
    clippy::duplicate_mod,
    reason = "deliberate: one text for both backends, each compiled against its own types"
)]
#[path = "owner_queries.rs"]
mod owner_queries;
/// The store traits' SQL, shared with SQLite, compiled here against [`Db`] and [`Store`]:
/// see `queries.rs`.
#[allow(
    clippy::duplicate_mod,
    reason = "deliberate: one text for both backends, each compiled against its own types"
)]
#[path = "queries.rs"]
mod queries;

type Db = Postgres;
type Store = PostgresStore;

/// What stands between the application and PostgreSQL: set with
/// [`PostgresStore::pool_mode`].
///
/// | where the URL points | mode | `LISTEN` for the change feed |
/// |---|---|---|
/// | PostgreSQL itself | [`Session`](Self::Session) (the default) | on the same server |
/// | a pooler in session mode (PgBouncer `pool_mode = session`, Supabase's port 5432 pooler) | [`Session`](Self::Session) | through the pooler |
/// | a pooler in transaction mode (PgBouncer `pool_mode = transaction`, Supabase's port 6543, Neon's `-pooler` hosts, RDS Proxy) | [`Transaction`](Self::Transaction) | only over a [direct URL](PostgresStore::direct_url); without one the feed polls |
///
/// A pooler in statement mode cannot serve the store: every write is a transaction of
/// several statements.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum PoolMode {
    /// Each client connection keeps its server connection: a direct connection, or a
    /// pooler in session mode. Statements are prepared once per connection and reused
    /// (sqlx's named statements), the fastest way.
    #[default]
    Session,
    /// Each transaction may run on another server connection, and the pooler keeps no
    /// prepared statement (PgBouncer before 1.21, or without `max_prepared_statements`).
    /// Every statement is unnamed and runs inside an explicit transaction, so its
    /// parse, bind and execute reach the same server: a read costs three more round
    /// trips (`BEGIN`, the parse, `COMMIT`); BENCHMARKS.md §10 has the figures.
    Transaction,
}

/// The production backend: PostgreSQL, shared by every instance of the application.
///
/// ```no_run
/// use tower_byok::{Keyring, PostgresStore, Vault};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tower_byok::Error> {
/// let store = PostgresStore::connect("postgres://app@db.internal/app").await?;
/// let vault = Vault::open(store, Keyring::from_env("BYOK_MASTER_KEYS")?).await?;
/// # Ok(()) }
/// ```
///
/// Behind a pooler in transaction mode (PgBouncer, Supabase, Neon, RDS Proxy), say so,
/// and give the direct URL the provider documents for the change feed's `LISTEN` and
/// the migrations (README "Poolers and managed PostgreSQL"):
///
/// ```no_run
/// use tower_byok::{Keyring, PoolMode, PostgresStore, Vault};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tower_byok::Error> {
/// let store = PostgresStore::connect("postgres://app@pooler.internal:6543/app")
///     .await?
///     .pool_mode(PoolMode::Transaction)
///     .direct_url("postgres://app@db.internal:5432/app")?;
/// let vault = Vault::open(store, Keyring::from_env("BYOK_MASTER_KEYS")?).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct PostgresStore {
    pool: PgPool,
    mode: PoolMode,
    /// Where `LISTEN` and the migrations go, when not through the pool.
    direct: Option<PgConnectOptions>,
}

/// Shows the pool and the mode; of the direct URL, only whether there is one (it may
/// hold a password).
impl fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresStore")
            .field("pool", &self.pool)
            .field("mode", &self.mode)
            .field("direct_url", &self.direct.as_ref().map(|_| "<set>"))
            .finish()
    }
}

impl PostgresStore {
    /// An arbitrary but fixed key for `pg_advisory_xact_lock`, so that instances starting
    /// together run the migrations one at a time ("byok" in ASCII).
    const MIGRATION_LOCK: i64 = 0x6279_6f6b;

    /// The first half of the two-key advisory lock each user's upserts take (the second
    /// is `hashtext(user_id)`): two-key locks never collide with [`Self::MIGRATION_LOCK`]'s
    /// one-key space. A hash collision only makes two users' puts wait for each other.
    const USER_LOCK_CLASS: i32 = 0x6279_6f6b;

    /// Connects with a `postgres://` URL and a pool of default size (16), in
    /// [`PoolMode::Session`]; behind a pooler in transaction mode, follow with
    /// [`pool_mode`](Self::pool_mode).
    ///
    /// The connections do not send the `extra_float_digits` start-up parameter (the
    /// store reads no floating-point value), which PgBouncer refuses unless told to
    /// ignore it.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Store`](crate::ErrorKind::Store) when the URL is malformed or the server cannot be reached.
    pub async fn connect(url: &str) -> Result<Self> {
        let options = parse_url(url)?;
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .connect_with(options)
            .await
            .map_err(store_error)?;
        Ok(Self::from_pool(pool))
    }

    /// Wraps a pool the application already has, in [`PoolMode::Session`]. Behind
    /// PgBouncer, build its options with `.extra_float_digits(None)` (or add
    /// `extra_float_digits` to PgBouncer's `ignore_startup_parameters`).
    pub fn from_pool(pool: PgPool) -> Self {
        Self {
            pool,
            mode: PoolMode::Session,
            direct: None,
        }
    }

    /// Says what stands between the pool and PostgreSQL (see [`PoolMode`]).
    /// [`PoolMode::Transaction`] makes every statement safe behind a pooler that shares
    /// server connections between transactions and keeps no prepared statement.
    #[must_use]
    pub fn pool_mode(mut self, mode: PoolMode) -> Self {
        self.mode = mode;
        self
    }

    /// A direct connection to the server (not through the pooler), as Supabase and Neon
    /// document it beside their pooled URLs. The change feed's `LISTEN` connection and
    /// the migrations use it; every other query goes through the pool. Behind a pooler
    /// in transaction mode this keeps a revocation made by another instance to a few
    /// milliseconds instead of the poll interval.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Store`](crate::ErrorKind::Store) when the URL is malformed (the
    /// message does not repeat it). No connection is made here.
    pub fn direct_url(self, url: &str) -> Result<Self> {
        Ok(self.direct_options(parse_url(url)?))
    }

    /// [`direct_url`](Self::direct_url) from options already built.
    #[must_use]
    pub fn direct_options(mut self, options: PgConnectOptions) -> Self {
        self.direct = Some(options);
        self
    }

    /// The underlying pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The mode set with [`pool_mode`](Self::pool_mode).
    pub fn mode(&self) -> PoolMode {
        self.mode
    }

    /// Whether statements are prepared once per connection and reused (named): not
    /// behind a pooler in transaction mode.
    pub(crate) fn prepared(&self) -> bool {
        self.mode == PoolMode::Session
    }

    /// The options of the connection that may `LISTEN`: the direct URL, else the pool's
    /// own, unless those lead to a pooler in transaction mode (it would hear nothing).
    pub(crate) fn listen_options(&self) -> Option<PgConnectOptions> {
        match (&self.direct, self.mode) {
            (Some(direct), _) => Some(direct.clone()),
            (None, PoolMode::Session) => Some((*self.pool.connect_options()).clone()),
            (None, PoolMode::Transaction) => None,
        }
    }

    /// Where a statement outside a write transaction runs: a connection of the pool, or,
    /// behind a pooler in transaction mode, a transaction, so that an unnamed
    /// statement's parse and its execution (two exchanges, each ending in `Sync`, after
    /// which the pooler may switch servers) reach the same server.
    pub(crate) async fn session(&self) -> Result<Session<Postgres>> {
        if self.prepared() {
            Ok(Session::Pooled(
                self.pool.acquire().await.map_err(store_error)?,
            ))
        } else {
            Ok(Session::Transaction(
                self.pool.begin().await.map_err(store_error)?,
            ))
        }
    }

    /// A write transaction (READ COMMITTED, the server's default).
    async fn begin_write(&self) -> Result<Transaction<'static, Postgres>> {
        self.pool.begin().await.map_err(store_error)
    }

    /// A write transaction holding an advisory lock on `user_id` until it ends, so that a
    /// user's upserts run one at a time (READ COMMITTED locks rows, not absent rows).
    async fn begin_user_write(&self, user_id: &str) -> Result<Transaction<'static, Postgres>> {
        let mut tx = self.begin_write().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext($2))")
            .persistent(self.prepared())
            .bind(Self::USER_LOCK_CLASS)
            .bind(user_id)
            .execute(&mut *tx)
            .await
            .map_err(store_error)?;
        Ok(tx)
    }

    /// A transaction holding the lock that migrations and check-record creation take.
    async fn begin_locked(&self) -> Result<Transaction<'static, Postgres>> {
        let mut tx = self.pool.begin().await.map_err(store_error)?;
        lock_migrations(&mut tx, self.prepared()).await?;
        Ok(tx)
    }

    /// Applies the embedded migrations not yet recorded, under the advisory lock: over
    /// the direct connection when there is one, else through the pool.
    async fn run_migrations(&self) -> Result<()> {
        let Some(direct) = &self.direct else {
            let tx = self.begin_locked().await.map_err(migrate::failed)?;
            return migrate::run(tx, migrate::POSTGRES).await;
        };
        let mut conn = sqlx::PgConnection::connect_with(direct)
            .await
            .map_err(migrate::failed)?;
        let result = async {
            let mut tx = conn.begin().await.map_err(migrate::failed)?;
            lock_migrations(&mut tx, false)
                .await
                .map_err(migrate::failed)?;
            migrate::run(tx, migrate::POSTGRES).await
        }
        .await;
        let _ = conn.close().await;
        result
    }
}

async fn lock_migrations(tx: &mut Transaction<'_, Postgres>, prepared: bool) -> Result<()> {
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .persistent(prepared)
        .bind(PostgresStore::MIGRATION_LOCK)
        .execute(&mut **tx)
        .await
        .map_err(store_error)?;
    Ok(())
}

/// A failed statement as the store reports it ([`Error::store`]), after
/// [`notice_stray_notification`].
pub(crate) fn store_error(error: sqlx::Error) -> Error {
    notice_stray_notification(&error);
    Error::store(error)
}

/// Warns, once per process, when a query failed on a notification it never asked for:
/// a connection that `LISTEN`s went through a pooler in transaction mode (a "direct"
/// URL that is the pooler's, or another application's listener), and the pooler handed
/// its server connection, still listening, to this client. Every query that then
/// shares that server connection may fail so, including writes that did commit.
fn notice_stray_notification(error: &sqlx::Error) {
    use std::sync::atomic::{AtomicBool, Ordering};
    static WARNED: AtomicBool = AtomicBool::new(false);
    let stray = matches!(
        error,
        sqlx::Error::Protocol(message) if message.contains("NotificationResponse")
    );
    if stray && !WARNED.swap(true, Ordering::Relaxed) {
        tracing::warn!(
            "a query got a notification it never asked for: a connection that LISTENs \
             goes through a pooler in transaction mode, which hands its server connection \
             to other clients; point LISTEN at the server itself \
             (PostgresStore::direct_url with the direct URL, not the pooler's)"
        );
    }
}

/// Parses a `postgres://` URL into options without `extra_float_digits`; the error
/// names what is wrong, never the URL (it may hold a password).
fn parse_url(url: &str) -> Result<PgConnectOptions> {
    let options = PgConnectOptions::from_str(url).map_err(|e| {
        Error::new(ErrorKind::Store)
            .with_detail("malformed PostgreSQL URL")
            .with_source(e)
    })?;
    Ok(options.extra_float_digits(None))
}
