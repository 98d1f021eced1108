use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::{Postgres, Transaction};

use super::migrate;
use crate::error::{Error, Result};

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
#[derive(Clone, Debug)]
pub struct PostgresStore {
    pool: PgPool,
}

impl PostgresStore {
    /// An arbitrary but fixed key for `pg_advisory_xact_lock`, so that instances starting
    /// together run the migrations one at a time ("byok" in ASCII).
    const MIGRATION_LOCK: i64 = 0x6279_6f6b;

    /// The first half of the two-key advisory lock each user's upserts take (the second
    /// is `hashtext(user_id)`): two-key locks never collide with [`Self::MIGRATION_LOCK`]'s
    /// one-key space. A hash collision only makes two users' puts wait for each other.
    const USER_LOCK_CLASS: i32 = 0x6279_6f6b;

    /// Connects with a `postgres://` URL and a pool of default size.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Store`](crate::ErrorKind::Store) when the URL is malformed or the server cannot be reached.
    pub async fn connect(url: &str) -> Result<Self> {
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .connect(url)
            .await
            .map_err(Error::store)?;
        Ok(Self { pool })
    }

    /// Wraps a pool the application already has.
    pub fn from_pool(pool: PgPool) -> Self {
        Self { pool }
    }

    /// The underlying pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// A write transaction (READ COMMITTED, the server's default).
    async fn begin_write(&self) -> Result<Transaction<'static, Postgres>> {
        self.pool.begin().await.map_err(Error::store)
    }

    /// A write transaction holding an advisory lock on `user_id` until it ends, so that a
    /// user's upserts run one at a time (READ COMMITTED locks rows, not absent rows).
    async fn begin_user_write(&self, user_id: &str) -> Result<Transaction<'static, Postgres>> {
        let mut tx = self.begin_write().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext($2))")
            .bind(Self::USER_LOCK_CLASS)
            .bind(user_id)
            .execute(&mut *tx)
            .await
            .map_err(Error::store)?;
        Ok(tx)
    }

    /// A transaction holding the lock that migrations and check-record creation take.
    async fn begin_locked(&self) -> Result<Transaction<'static, Postgres>> {
        let mut tx = self.pool.begin().await.map_err(Error::store)?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(Self::MIGRATION_LOCK)
            .execute(&mut *tx)
            .await
            .map_err(Error::store)?;
        Ok(tx)
    }

    /// Applies the embedded migrations not yet recorded, under the advisory lock.
    async fn run_migrations(&self) -> Result<()> {
        let tx = self.begin_locked().await.map_err(migrate::failed)?;
        migrate::run(tx, migrate::POSTGRES).await
    }
}
