//! Where sealed keys live: the store traits and their SQL backends.
//!
//! A store keeps bytes it cannot read. Sealing, opening and every check happen in the
//! [`Vault`](crate::Vault) before a row reaches the store and after it leaves, so a store
//! needs no key material and a new backend is a few queries.
//!
//! # The seam
//!
//! - [`KeyStore`], the core: what the request path and a vault's basic operations need
//!   (open, read, store, replace, delete). Every store implements it.
//! - Capabilities, each a small trait a store may add and announce through a
//!   [`KeyStore`] method that returns it, `None` by default:
//!   [`RotationStore`] ([`KeyStore::rotation`]: rewrap, verify, retiring a master key),
//!   [`ExpiryStore`] ([`KeyStore::expiry`]: changing an expiry, purging expired keys) and
//!   [`AuditStore`] ([`KeyStore::audit`]: reading the audit trail) and [`OwnerStore`]
//!   ([`KeyStore::owners`]: keys of teams and of the platform, teams' policies). A vault on a store
//!   without one answers the operations that need it with
//!   [`ErrorKind::Unsupported`](crate::ErrorKind::Unsupported); nothing else changes.
//!
//! The built-in [`SqliteStore`] and [`PostgresStore`] implement all of them.
//!
//! # Writing a store
//!
//! Implement [`KeyStore`] with `async fn`s, and report failures with
//! [`Error::store`](crate::Error::store) (the layer answers `503`) or
//! [`Error::migration`](crate::Error::migration). Each method's documentation says what
//! it must guarantee; in short:
//!
//! - every write is atomic, and writes its audit record(s) in the same transaction as
//!   the change: a change without its record, or a record without its change, must not
//!   be observable;
//! - a write returns only once its change is durable or has failed as a whole;
//! - names match exactly, byte for byte; listings come in the order their method names,
//!   which may follow the store's own collation;
//! - methods may be called concurrently, from several instances sharing the data.
//!
//! `tests/outside_store.rs` in the repository is a complete in-memory store written
//! outside the crate, run through a vault and a layer.
//!
//! # Inside the built-in backends
//!
//! - `sqlite.rs` and `postgres.rs`: connecting, and the transactions writes run in
//!   (SQLite takes the write lock at `BEGIN IMMEDIATE`; migrations and check records take
//!   the write lock on SQLite and an advisory lock on PostgreSQL);
//! - `queries.rs`: the traits implemented in plain SQL, once, compiled into each backend
//!   against its own types (both databases take `$n` parameters, and the schemas differ
//!   only in column types);
//! - `migrate.rs`: the migrations embedded per backend (`migrations/<backend>/`) and
//!   their runner, on the crate's own `byok_migrations` table.
//!
//! A new query of a capability costs its method in the capability's trait and the
//! trait's erasure beside it (`capability.rs`), and its function in `queries.rs`. A new
//! query of the core is the same in `key_store.rs`, plus a forwarding line in any store
//! that wraps another. A new capability (such as a change feed) is one trait with its
//! erasure, a defaulted accessor on [`KeyStore`] with its erasure, and its functions in
//! `queries.rs`.
//!
// A backend whose feature is off links to docs.rs, which documents every feature.
#![cfg_attr(feature = "sqlite", doc = "[`SqliteStore`]: crate::SqliteStore")]
#![cfg_attr(
    not(feature = "sqlite"),
    doc = "[`SqliteStore`]: https://docs.rs/tower-byok/latest/tower_byok/struct.SqliteStore.html"
)]
#![cfg_attr(feature = "postgres", doc = "[`PostgresStore`]: crate::PostgresStore")]
#![cfg_attr(
    not(feature = "postgres"),
    doc = "[`PostgresStore`]: https://docs.rs/tower-byok/latest/tower_byok/struct.PostgresStore.html"
)]

use std::fmt;
use std::future::Future;
use std::pin::Pin;

mod capability;
mod key_store;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
mod migrate;
#[cfg(feature = "postgres")]
pub(crate) mod postgres;
#[cfg(feature = "sqlite")]
pub(crate) mod sqlite;

pub use self::capability::{AuditStore, ExpiryStore, OwnerStore, RotationStore};
pub(crate) use self::capability::{DynAudit, DynExpiry, DynOwner, DynRotation};
pub(crate) use self::key_store::DynKeyStore;
pub use self::key_store::KeyStore;

/// A boxed future: what the private erasure of the store traits returns.
type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Where a built-in backend runs a read: a connection of the pool, or a transaction
/// (PostgreSQL behind a pooler in transaction mode, see `postgres.rs`).
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) enum Session<DB: sqlx::Database> {
    Pooled(sqlx::pool::PoolConnection<DB>),
    #[cfg_attr(
        not(feature = "postgres"),
        expect(dead_code, reason = "only PostgreSQL reads in a transaction")
    )]
    Transaction(sqlx::Transaction<'static, DB>),
}

#[cfg(any(feature = "sqlite", feature = "postgres"))]
impl<DB: sqlx::Database> Session<DB> {
    /// The connection to run the read's statements on.
    pub(crate) fn conn(&mut self) -> &mut DB::Connection {
        match self {
            Self::Pooled(conn) => conn,
            Self::Transaction(tx) => tx,
        }
    }

    /// Ends the read: commits the transaction (it wrote nothing), or returns the
    /// connection to the pool.
    pub(crate) async fn finish(self) -> sqlx::Result<()> {
        match self {
            Self::Pooled(_) => Ok(()),
            Self::Transaction(tx) => tx.commit().await,
        }
    }
}

/// One sealed key, as a store keeps it. Times are Unix milliseconds.
///
/// `Debug` leaves out the user id and the sealed bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct StoredKey {
    /// The user the key belongs to.
    pub user_id: String,
    /// The normalized provider name.
    pub provider: String,
    /// The id of the master key the blob is sealed under.
    pub key_id: String,
    /// `version || nonce || ciphertext || tag`, see
    /// [`docs/FORMAT.md`](https://github.com/tower-byok/tower-byok/blob/main/docs/FORMAT.md).
    pub sealed: Vec<u8>,
    /// The masked display form, computed when the key was written.
    pub hint: String,
    /// A short keyed fingerprint of the secret, computed when the key was written.
    pub fingerprint: String,
    /// When the key was first stored.
    pub created_at: i64,
    /// When the key was last replaced (a re-seal by a rewrap leaves it as it was).
    pub updated_at: i64,
    /// When the key stops being served, if ever.
    pub expires_at: Option<i64>,
}

impl fmt::Debug for StoredKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredKey")
            .field("provider", &self.provider)
            .field("key_id", &self.key_id)
            .field("hint", &self.hint)
            .field("fingerprint", &self.fingerprint)
            .field("created_at", &self.created_at)
            .field("updated_at", &self.updated_at)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// What serving a key needs of a stored row: the narrower read of a cache miss
/// ([`KeyStore::fetch_user_sealed`]). Times are Unix milliseconds.
///
/// `Debug` leaves out the sealed bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct SealedKey {
    /// The normalized provider name.
    pub provider: String,
    /// The id of the master key the blob is sealed under.
    pub key_id: String,
    /// `version || nonce || ciphertext || tag`, as in [`StoredKey::sealed`].
    pub sealed: Vec<u8>,
    /// When the key stops being served, if ever.
    pub expires_at: Option<i64>,
}

impl From<StoredKey> for SealedKey {
    fn from(row: StoredKey) -> Self {
        Self {
            provider: row.provider,
            key_id: row.key_id,
            sealed: row.sealed,
            expires_at: row.expires_at,
        }
    }
}

impl fmt::Debug for SealedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SealedKey")
            .field("provider", &self.provider)
            .field("key_id", &self.key_id)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// Which audit records to read: all conditions given must hold. Times are Unix
/// milliseconds, `since` inclusive, `until` exclusive.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditQuery {
    /// Only this user's records (a [`Vault::user_ref`](crate::Vault::user_ref)).
    pub user_ref: Option<String>,
    /// Only records at or after this time.
    pub since: Option<i64>,
    /// Only records before this time.
    pub until: Option<i64>,
    /// At most this many records, oldest first.
    pub limit: Option<u32>,
}
