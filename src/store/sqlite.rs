use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Sqlite, Transaction};

use super::{migrate, Session};
use crate::error::{Error, Result};

/// A failed statement as the store reports it: [`Error::store`] (PostgreSQL's also
/// explains one failure of its own; this one has none to explain).
fn store_error(error: sqlx::Error) -> Error {
    Error::store(error)
}

#[allow(
    clippy::duplicate_mod,
    reason = "deliberate: one text for both backends, each compiled against its own types"
)]
#[path = "owner_queries.rs"]
mod owner_queries;
/// The store traits' SQL, shared with PostgreSQL, compiled here against [`Db`] and
/// [`Store`]: see `queries.rs`.
#[allow(
    clippy::duplicate_mod,
    reason = "deliberate: one text for both backends, each compiled against its own types"
)]
#[path = "queries.rs"]
mod queries;

type Db = Sqlite;
type Store = SqliteStore;

/// The embedded default backend: a SQLite file (WAL mode) or an in-memory database.
///
/// ```
/// use tower_byok::{Keyring, MasterKey, SqliteStore, Vault};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tower_byok::Error> {
/// # let dir = tempfile::tempdir().unwrap();
/// # let path = dir.path().join("keys.db");
/// let store = SqliteStore::open(&path).await?; // creates the file if needed
/// let vault = Vault::open(store, Keyring::new(MasterKey::generate("k1")?)).await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating if needed) a database file in WAL mode, with a busy timeout and
    /// full fsync on commit, so a stored key survives a crash right after `put` returns.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Store`](crate::ErrorKind::Store) when the file cannot be opened or created.
    pub async fn open(path: impl AsRef<Path>) -> Result<Self> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true);
        Self::connect_with(options, 8).await
    }

    /// Connects with a `sqlite:` URL, e.g. `sqlite://keys.db?mode=rwc` or `sqlite::memory:`.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Store`](crate::ErrorKind::Store) when the URL is malformed or the database cannot be opened.
    pub async fn connect(url: &str) -> Result<Self> {
        let options = SqliteConnectOptions::from_str(url).map_err(store_error)?;
        let in_memory = url.contains(":memory:") || url.contains("mode=memory");
        Self::connect_with(options, if in_memory { 1 } else { 8 }).await
    }

    /// A private in-memory database, gone when the store is dropped: for tests.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Store`](crate::ErrorKind::Store) when SQLite cannot be started.
    pub async fn in_memory() -> Result<Self> {
        Self::connect_with(SqliteConnectOptions::new().in_memory(true), 1).await
    }

    /// Wraps a pool the application already has. Its settings are the application's;
    /// WAL mode and a busy timeout are strongly advised.
    pub fn from_pool(pool: SqlitePool) -> Self {
        Self { pool }
    }

    /// The underlying pool.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// Statements are always prepared once per connection and reused (see `queries.rs`).
    #[expect(
        clippy::unused_self,
        reason = "the same call as PostgreSQL's, in `queries.rs`"
    )]
    fn prepared(&self) -> bool {
        true
    }

    /// A connection of the pool, for a statement outside a write transaction.
    async fn session(&self) -> Result<Session<Sqlite>> {
        Ok(Session::Pooled(
            self.pool.acquire().await.map_err(store_error)?,
        ))
    }

    async fn connect_with(options: SqliteConnectOptions, max_connections: u32) -> Result<Self> {
        let options = options
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        let mut pool = SqlitePoolOptions::new().max_connections(max_connections);
        if max_connections == 1 {
            // An in-memory database lives as long as its one connection: keep it open.
            pool = pool
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None);
        }
        // Switching a new file to WAL takes an exclusive lock without SQLite's busy
        // handler, so two processes opening a brand-new database at once can see
        // SQLITE_BUSY here: wait briefly and try again.
        let mut attempts = 0;
        let pool = loop {
            match pool.clone().connect_with(options.clone()).await {
                Ok(pool) => break pool,
                Err(e) if attempts < 50 && is_busy(&e) => {
                    attempts += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => {
                    return Err(Error::store(e).with_detail("could not open the SQLite database"))
                }
            }
        };
        Ok(Self { pool })
    }

    /// A transaction that takes SQLite's write lock at `BEGIN`, so that two writers wait
    /// for each other (busy timeout) instead of failing on a lock upgrade.
    async fn begin_write(&self) -> Result<Transaction<'static, Sqlite>> {
        self.pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(store_error)
    }

    /// A write transaction during which no other write of `user_id` (or of anyone: SQLite
    /// has one write lock) can commit.
    async fn begin_user_write(&self, _user_id: &str) -> Result<Transaction<'static, Sqlite>> {
        self.begin_write().await
    }

    /// A transaction holding the lock that migrations and check-record creation take.
    async fn begin_locked(&self) -> Result<Transaction<'static, Sqlite>> {
        self.begin_write().await
    }

    /// Applies the embedded migrations not yet recorded, under the write lock.
    async fn run_migrations(&self) -> Result<()> {
        let tx = self.begin_locked().await.map_err(migrate::failed)?;
        migrate::run(tx, migrate::SQLITE).await
    }
}

/// SQLITE_BUSY (5) or SQLITE_LOCKED (6).
fn is_busy(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if matches!(db.code().as_deref(), Some("5" | "6")))
}
