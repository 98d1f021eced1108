use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::{Postgres, Transaction};

use super::{sql_key_store, Migration};
use crate::error::{Error, Result};

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
    const MIGRATIONS: &'static [Migration] = &[
        Migration {
            version: 1,
            description: "init",
            sql: include_str!("../../migrations/postgres/0001_init.sql"),
        },
        Migration {
            version: 2,
            description: "change feed",
            sql: include_str!("../../migrations/postgres/0002_changes.sql"),
        },
    ];

    /// An arbitrary but fixed key for `pg_advisory_xact_lock`, so that instances starting
    /// together run the migrations one at a time ("byok" in ASCII).
    const MIGRATION_LOCK: i64 = 0x6279_6f6b;

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

    async fn begin_write(&self) -> Result<Transaction<'static, Postgres>> {
        self.pool.begin().await.map_err(Error::store)
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
}

sql_key_store!(PostgresStore, Postgres);
