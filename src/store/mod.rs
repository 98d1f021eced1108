//! Where sealed keys live: the [`KeyStore`] trait and its SQL backends.
//!
//! A store keeps bytes it cannot read. Sealing, opening and every check happen in the
//! [`Vault`](crate::Vault) before a row reaches the store and after it leaves, so a store
//! needs no key material and a new backend is a few queries.
//!
//! The two built-in backends share their queries: only the schema (in
//! `migrations/<backend>/`), the connection set-up and how a migration takes its lock
//! differ.

use std::fmt;
use std::future::Future;
use std::pin::Pin;

use crate::audit::{AuditAction, AuditRecord};
use crate::error::Result;
use crate::time::now_ms;

#[cfg(feature = "postgres")]
pub(crate) mod postgres;
#[cfg(feature = "sqlite")]
pub(crate) mod sqlite;

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
    /// `version || nonce || ciphertext || tag`, see `docs/FORMAT.md`.
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

/// The storage a [`Vault`](crate::Vault) runs on.
///
/// Implemented by [`SqliteStore`](crate::SqliteStore) and [`PostgresStore`](crate::PostgresStore). Every write method writes its
/// audit records in the same transaction as the change, so a change without its record
/// cannot happen.
pub trait KeyStore: Send + Sync + 'static {
    /// Creates or upgrades the schema. Idempotent; safe to run from several processes.
    fn migrate(&self) -> impl Future<Output = Result<()>> + Send;

    /// All rows of one user, expired ones included, ordered by provider.
    fn fetch_user(&self, user_id: &str) -> impl Future<Output = Result<Vec<StoredKey>>> + Send;

    /// One row.
    fn fetch_key(
        &self,
        user_id: &str,
        provider: &str,
    ) -> impl Future<Output = Result<Option<StoredKey>>> + Send;

    /// Inserts the row, or replaces the row for the same user and provider (keeping its
    /// `created_at`), and writes `audit` with the action set to [`AuditAction::Put`] or
    /// [`AuditAction::Replace`]. Returns the action taken.
    fn upsert(
        &self,
        row: &StoredKey,
        audit: &AuditRecord,
    ) -> impl Future<Output = Result<AuditAction>> + Send;

    /// Deletes one provider's row of a user, or all the user's rows when `provider` is
    /// `None`, writing one `audit` record per deleted row (its provider filled in).
    /// Returns the deleted providers.
    fn delete(
        &self,
        user_id: &str,
        provider: Option<&str>,
        audit: &AuditRecord,
    ) -> impl Future<Output = Result<Vec<String>>> + Send;

    /// The check records: `(master key id, sealed vault secret)`.
    fn check_records(&self) -> impl Future<Output = Result<Vec<(String, Vec<u8>)>>> + Send;

    /// Adds check records `(master key id, sealed vault secret)`, each unless one exists
    /// for its key id; when `only_if_none`, adds none unless the table is empty. Returns
    /// how many it added. Atomic against another instance doing the same.
    fn add_check_records(
        &self,
        records: &[(&str, Vec<u8>)],
        at: i64,
        only_if_none: bool,
    ) -> impl Future<Output = Result<usize>> + Send;

    /// Removes the check record of a master key, only if no row is sealed under it;
    /// returns whether it removed one.
    fn remove_check_record(&self, key_id: &str) -> impl Future<Output = Result<bool>> + Send;

    /// Audit records matching `query`, oldest first.
    fn audit_trail(
        &self,
        query: &AuditQuery,
    ) -> impl Future<Output = Result<Vec<AuditRecord>>> + Send;

    /// Up to `limit` rows in `(user_id, provider)` order, after `after` when given, and
    /// only rows not sealed under `exclude_key_id` when given: the pages of a rewrap or
    /// a verification.
    fn keys_page(
        &self,
        after: Option<(&str, &str)>,
        limit: u32,
        exclude_key_id: Option<&str>,
    ) -> impl Future<Output = Result<Vec<StoredKey>>> + Send;

    /// Replaces the seal of `old` with `sealed` under `key_id`, only if the row still
    /// holds exactly `old`'s key id and blob (so a concurrent write wins), writing `audit`
    /// as a [`AuditAction::Rewrap`] in the same transaction. Returns whether it did.
    fn reseal(
        &self,
        old: &StoredKey,
        key_id: &str,
        sealed: &[u8],
        audit: &AuditRecord,
    ) -> impl Future<Output = Result<bool>> + Send;

    /// How many rows each master key id seals, by key id.
    fn key_usage(&self) -> impl Future<Output = Result<Vec<(String, i64)>>> + Send;

    /// Sets or clears (`None`) a key's expiry, writing `audit` as a
    /// [`AuditAction::ExpiryChange`]. Returns whether the key exists.
    fn set_expiry(
        &self,
        user_id: &str,
        provider: &str,
        expires_at: Option<i64>,
        audit: &AuditRecord,
    ) -> impl Future<Output = Result<bool>> + Send;

    /// Up to `limit` `(user_id, provider)` of keys expired at `now`, oldest expiry first.
    fn expired_keys(
        &self,
        now: i64,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<(String, String)>>> + Send;

    /// Deletes a key if it has expired at `now`, writing `audit` as a
    /// [`AuditAction::Purge`]. Returns whether it did.
    fn delete_expired(
        &self,
        user_id: &str,
        provider: &str,
        now: i64,
        audit: &AuditRecord,
    ) -> impl Future<Output = Result<bool>> + Send;
}

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// [`KeyStore`] made object safe, so that [`Vault`](crate::Vault) is one type whatever
/// its backend. The box costs nanoseconds on a path that waits on a database.
pub(crate) trait DynStore: Send + Sync + 'static {
    fn fetch_user<'a>(&'a self, user_id: &'a str) -> BoxFuture<'a, Result<Vec<StoredKey>>>;
    fn fetch_key<'a>(
        &'a self,
        user_id: &'a str,
        provider: &'a str,
    ) -> BoxFuture<'a, Result<Option<StoredKey>>>;
    fn upsert<'a>(
        &'a self,
        row: &'a StoredKey,
        audit: &'a AuditRecord,
    ) -> BoxFuture<'a, Result<AuditAction>>;
    fn delete<'a>(
        &'a self,
        user_id: &'a str,
        provider: Option<&'a str>,
        audit: &'a AuditRecord,
    ) -> BoxFuture<'a, Result<Vec<String>>>;
    fn remove_check_record<'a>(&'a self, key_id: &'a str) -> BoxFuture<'a, Result<bool>>;
    fn audit_trail<'a>(&'a self, query: &'a AuditQuery) -> BoxFuture<'a, Result<Vec<AuditRecord>>>;
    fn keys_page<'a>(
        &'a self,
        after: Option<(&'a str, &'a str)>,
        limit: u32,
        exclude_key_id: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Vec<StoredKey>>>;
    fn reseal<'a>(
        &'a self,
        old: &'a StoredKey,
        key_id: &'a str,
        sealed: &'a [u8],
        audit: &'a AuditRecord,
    ) -> BoxFuture<'a, Result<bool>>;
    fn key_usage<'a>(&'a self) -> BoxFuture<'a, Result<Vec<(String, i64)>>>;
    fn set_expiry<'a>(
        &'a self,
        user_id: &'a str,
        provider: &'a str,
        expires_at: Option<i64>,
        audit: &'a AuditRecord,
    ) -> BoxFuture<'a, Result<bool>>;
    fn expired_keys<'a>(
        &'a self,
        now: i64,
        limit: u32,
    ) -> BoxFuture<'a, Result<Vec<(String, String)>>>;
    fn delete_expired<'a>(
        &'a self,
        user_id: &'a str,
        provider: &'a str,
        now: i64,
        audit: &'a AuditRecord,
    ) -> BoxFuture<'a, Result<bool>>;
}

impl<S: KeyStore> DynStore for S {
    fn fetch_user<'a>(&'a self, user_id: &'a str) -> BoxFuture<'a, Result<Vec<StoredKey>>> {
        Box::pin(KeyStore::fetch_user(self, user_id))
    }
    fn fetch_key<'a>(
        &'a self,
        user_id: &'a str,
        provider: &'a str,
    ) -> BoxFuture<'a, Result<Option<StoredKey>>> {
        Box::pin(KeyStore::fetch_key(self, user_id, provider))
    }
    fn upsert<'a>(
        &'a self,
        row: &'a StoredKey,
        audit: &'a AuditRecord,
    ) -> BoxFuture<'a, Result<AuditAction>> {
        Box::pin(KeyStore::upsert(self, row, audit))
    }
    fn delete<'a>(
        &'a self,
        user_id: &'a str,
        provider: Option<&'a str>,
        audit: &'a AuditRecord,
    ) -> BoxFuture<'a, Result<Vec<String>>> {
        Box::pin(KeyStore::delete(self, user_id, provider, audit))
    }
    fn remove_check_record<'a>(&'a self, key_id: &'a str) -> BoxFuture<'a, Result<bool>> {
        Box::pin(KeyStore::remove_check_record(self, key_id))
    }
    fn audit_trail<'a>(&'a self, query: &'a AuditQuery) -> BoxFuture<'a, Result<Vec<AuditRecord>>> {
        Box::pin(KeyStore::audit_trail(self, query))
    }
    fn keys_page<'a>(
        &'a self,
        after: Option<(&'a str, &'a str)>,
        limit: u32,
        exclude_key_id: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Vec<StoredKey>>> {
        Box::pin(KeyStore::keys_page(self, after, limit, exclude_key_id))
    }
    fn reseal<'a>(
        &'a self,
        old: &'a StoredKey,
        key_id: &'a str,
        sealed: &'a [u8],
        audit: &'a AuditRecord,
    ) -> BoxFuture<'a, Result<bool>> {
        Box::pin(KeyStore::reseal(self, old, key_id, sealed, audit))
    }
    fn key_usage<'a>(&'a self) -> BoxFuture<'a, Result<Vec<(String, i64)>>> {
        Box::pin(KeyStore::key_usage(self))
    }
    fn set_expiry<'a>(
        &'a self,
        user_id: &'a str,
        provider: &'a str,
        expires_at: Option<i64>,
        audit: &'a AuditRecord,
    ) -> BoxFuture<'a, Result<bool>> {
        Box::pin(KeyStore::set_expiry(
            self, user_id, provider, expires_at, audit,
        ))
    }
    fn expired_keys<'a>(
        &'a self,
        now: i64,
        limit: u32,
    ) -> BoxFuture<'a, Result<Vec<(String, String)>>> {
        Box::pin(KeyStore::expired_keys(self, now, limit))
    }
    fn delete_expired<'a>(
        &'a self,
        user_id: &'a str,
        provider: &'a str,
        now: i64,
        audit: &'a AuditRecord,
    ) -> BoxFuture<'a, Result<bool>> {
        Box::pin(KeyStore::delete_expired(
            self, user_id, provider, now, audit,
        ))
    }
}

/// One embedded migration.
struct Migration {
    version: i64,
    description: &'static str,
    sql: &'static str,
}

/// The crate's own migrations table: apart from sqlx's `_sqlx_migrations`, so a host
/// application's `sqlx::migrate!` on the same database neither sees nor trips on ours.
const MIGRATIONS_TABLE_DDL: &str = "CREATE TABLE IF NOT EXISTS byok_migrations (\
    version BIGINT PRIMARY KEY, \
    description TEXT NOT NULL, \
    checksum TEXT NOT NULL, \
    applied_at BIGINT NOT NULL)";

fn checksum(sql: &str) -> String {
    use sha2::{Digest, Sha256};
    // Line endings normalized: a CRLF checkout must not look like an edited migration.
    Sha256::digest(sql.replace("\r\n", "\n").as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The queries both SQL backends share, written once. `$pool` is an expression for the
/// `sqlx::Pool`, `$begin` one for a future of a write transaction.
macro_rules! sql_key_store {
    ($store:ty, $db:ty) => {
        impl $crate::store::KeyStore for $store {
            async fn migrate(&self) -> $crate::Result<()> {
                self.run_migrations().await
            }

            async fn fetch_user(&self, user_id: &str) -> $crate::Result<Vec<$crate::store::StoredKey>> {
                let rows = sqlx::query(concat!(
                    "SELECT user_id, provider, key_id, sealed, hint, fingerprint, created_at, updated_at, expires_at ",
                    "FROM byok_keys WHERE user_id = $1 ORDER BY provider"
                ))
                .bind(user_id)
                .fetch_all(&self.pool)
                .await
                .map_err($crate::Error::store)?;
                rows.iter().map(Self::stored_key).collect()
            }

            async fn fetch_key(
                &self,
                user_id: &str,
                provider: &str,
            ) -> $crate::Result<Option<$crate::store::StoredKey>> {
                let row = sqlx::query(concat!(
                    "SELECT user_id, provider, key_id, sealed, hint, fingerprint, created_at, updated_at, expires_at ",
                    "FROM byok_keys WHERE user_id = $1 AND provider = $2"
                ))
                .bind(user_id)
                .bind(provider)
                .fetch_optional(&self.pool)
                .await
                .map_err($crate::Error::store)?;
                row.as_ref().map(Self::stored_key).transpose()
            }

            async fn upsert(
                &self,
                row: &$crate::store::StoredKey,
                audit: &$crate::AuditRecord,
            ) -> $crate::Result<$crate::AuditAction> {
                let mut tx = self.begin_write().await?;
                // Insert-or-nothing, then update: under PostgreSQL's READ COMMITTED a second
                // concurrent first write waits on the first's unique-index entry and then
                // takes the update branch, so exactly one of them is audited as a put.
                let action = loop {
                    let inserted = Self::bind_row(
                        sqlx::query(concat!(
                            "INSERT INTO byok_keys (user_id, provider, key_id, sealed, hint, fingerprint, ",
                            "created_at, updated_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $7, $8) ",
                            "ON CONFLICT (user_id, provider) DO NOTHING"
                        )),
                        row,
                    )
                    .execute(&mut *tx)
                    .await
                    .map_err($crate::Error::store)?;
                    if inserted.rows_affected() == 1 {
                        break $crate::AuditAction::Put;
                    }
                    // The same parameters in the same places as the insert.
                    let updated = Self::bind_row(
                        sqlx::query(concat!(
                            "UPDATE byok_keys SET key_id = $3, sealed = $4, hint = $5, fingerprint = $6, ",
                            "updated_at = $7, expires_at = $8 WHERE user_id = $1 AND provider = $2"
                        )),
                        row,
                    )
                    .execute(&mut *tx)
                    .await
                    .map_err($crate::Error::store)?;
                    if updated.rows_affected() == 1 {
                        break $crate::AuditAction::Replace;
                    }
                    // Deleted between the two statements by another transaction: insert again.
                };
                Self::insert_audit(&mut tx, audit, &row.provider, action).await?;
                tx.commit().await.map_err($crate::Error::store)?;
                Ok(action)
            }

            async fn delete(
                &self,
                user_id: &str,
                provider: Option<&str>,
                audit: &$crate::AuditRecord,
            ) -> $crate::Result<Vec<String>> {
                let mut tx = self.begin_write().await?;
                let deleted: Vec<String> = sqlx::query_scalar(
                    "DELETE FROM byok_keys WHERE user_id = $1 AND ($2 IS NULL OR provider = $2) RETURNING provider",
                )
                .bind(user_id)
                .bind(provider)
                .fetch_all(&mut *tx)
                .await
                .map_err($crate::Error::store)?;
                for provider in &deleted {
                    Self::insert_audit(&mut tx, audit, provider, $crate::AuditAction::Delete).await?;
                }
                tx.commit().await.map_err($crate::Error::store)?;
                Ok(deleted)
            }

            async fn check_records(&self) -> $crate::Result<Vec<(String, Vec<u8>)>> {
                sqlx::query_as("SELECT key_id, sealed FROM byok_check ORDER BY created_at")
                    .fetch_all(&self.pool)
                    .await
                    .map_err($crate::Error::store)
            }

            async fn add_check_records(
                &self,
                records: &[(&str, Vec<u8>)],
                at: i64,
                only_if_none: bool,
            ) -> $crate::Result<usize> {
                // Under the migration lock, so two instances opening a new database at once
                // cannot both create first records, each with its own vault secret.
                let mut tx = self.begin_locked().await?;
                if only_if_none {
                    let any: Option<i32> = sqlx::query_scalar("SELECT 1 FROM byok_check LIMIT 1")
                        .fetch_optional(&mut *tx)
                        .await
                        .map_err($crate::Error::store)?;
                    if any.is_some() {
                        return Ok(0);
                    }
                }
                let mut added = 0;
                for (key_id, sealed) in records {
                    let done = sqlx::query(
                        "INSERT INTO byok_check (key_id, sealed, created_at) VALUES ($1, $2, $3) ON CONFLICT (key_id) DO NOTHING",
                    )
                    .bind(key_id)
                    .bind(sealed)
                    .bind(at)
                    .execute(&mut *tx)
                    .await
                    .map_err($crate::Error::store)?;
                    added += usize::try_from(done.rows_affected()).unwrap_or(0);
                }
                tx.commit().await.map_err($crate::Error::store)?;
                Ok(added)
            }

            async fn remove_check_record(&self, key_id: &str) -> $crate::Result<bool> {
                // One statement: no row can come to need the key between check and delete.
                let done = sqlx::query(concat!(
                    "DELETE FROM byok_check WHERE key_id = $1 ",
                    "AND NOT EXISTS (SELECT 1 FROM byok_keys WHERE key_id = $1)"
                ))
                .bind(key_id)
                    .execute(&self.pool)
                    .await
                    .map_err($crate::Error::store)?;
                Ok(done.rows_affected() > 0)
            }

            async fn audit_trail(
                &self,
                query: &$crate::store::AuditQuery,
            ) -> $crate::Result<Vec<$crate::AuditRecord>> {
                // Only the conditions given, so each query can use its index.
                let mut sql = String::from("SELECT at, user_ref, provider, action, actor FROM byok_audit");
                let mut conditions = Vec::new();
                let mut n = 0;
                let mut placeholder = || {
                    n += 1;
                    format!("${n}")
                };
                if query.user_ref.is_some() {
                    conditions.push(format!("user_ref = {}", placeholder()));
                }
                if query.since.is_some() {
                    conditions.push(format!("at >= {}", placeholder()));
                }
                if query.until.is_some() {
                    conditions.push(format!("at < {}", placeholder()));
                }
                if !conditions.is_empty() {
                    sql.push_str(" WHERE ");
                    sql.push_str(&conditions.join(" AND "));
                }
                sql.push_str(" ORDER BY id");
                if query.limit.is_some() {
                    sql.push_str(&format!(" LIMIT {}", placeholder()));
                }
                let mut q = sqlx::query_as::<_, (i64, String, String, String, String)>(&sql);
                if let Some(user_ref) = &query.user_ref {
                    q = q.bind(user_ref);
                }
                if let Some(since) = query.since {
                    q = q.bind(since);
                }
                if let Some(until) = query.until {
                    q = q.bind(until);
                }
                if let Some(limit) = query.limit {
                    q = q.bind(i64::from(limit));
                }
                let rows = q.fetch_all(&self.pool).await.map_err($crate::Error::store)?;
                rows.into_iter()
                    .map(|(at, user_ref, provider, action, actor)| {
                        let action = $crate::AuditAction::parse(&action).ok_or_else(|| {
                            $crate::Error::new($crate::ErrorKind::Store).with_detail("unknown audit action")
                        })?;
                        Ok($crate::AuditRecord { at, user_ref, provider, action, actor })
                    })
                    .collect()
            }

            async fn keys_page(
                &self,
                after: Option<(&str, &str)>,
                limit: u32,
                exclude_key_id: Option<&str>,
            ) -> $crate::Result<Vec<$crate::store::StoredKey>> {
                // The first page starts after ("", ""), below every row (user ids are never
                // empty), so the condition is always a plain range the key's index serves.
                let (after_user, after_provider) = after.unwrap_or(("", ""));
                let rows = sqlx::query(concat!(
                    "SELECT user_id, provider, key_id, sealed, hint, fingerprint, created_at, updated_at, expires_at ",
                    "FROM byok_keys WHERE ($1 IS NULL OR key_id <> $1) ",
                    "AND (user_id, provider) > ($2, $3) ",
                    "ORDER BY user_id, provider LIMIT $4"
                ))
                .bind(exclude_key_id)
                .bind(after_user)
                .bind(after_provider)
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await
                .map_err($crate::Error::store)?;
                rows.iter().map(Self::stored_key).collect()
            }

            async fn reseal(
                &self,
                old: &$crate::store::StoredKey,
                key_id: &str,
                sealed: &[u8],
                audit: &$crate::AuditRecord,
            ) -> $crate::Result<bool> {
                let mut tx = self.begin_write().await?;
                let done = sqlx::query(concat!(
                    "UPDATE byok_keys SET key_id = $3, sealed = $4 ",
                    "WHERE user_id = $1 AND provider = $2 AND key_id = $5 AND sealed = $6"
                ))
                .bind(&old.user_id)
                .bind(&old.provider)
                .bind(key_id)
                .bind(sealed)
                .bind(&old.key_id)
                .bind(&old.sealed)
                .execute(&mut *tx)
                .await
                .map_err($crate::Error::store)?;
                if done.rows_affected() == 0 {
                    return Ok(false);
                }
                Self::insert_audit(&mut tx, audit, &old.provider, $crate::AuditAction::Rewrap).await?;
                tx.commit().await.map_err($crate::Error::store)?;
                Ok(true)
            }

            async fn key_usage(&self) -> $crate::Result<Vec<(String, i64)>> {
                sqlx::query_as("SELECT key_id, COUNT(*) FROM byok_keys GROUP BY key_id ORDER BY key_id")
                    .fetch_all(&self.pool)
                    .await
                    .map_err($crate::Error::store)
            }

            async fn set_expiry(
                &self,
                user_id: &str,
                provider: &str,
                expires_at: Option<i64>,
                audit: &$crate::AuditRecord,
            ) -> $crate::Result<bool> {
                let mut tx = self.begin_write().await?;
                let done = sqlx::query("UPDATE byok_keys SET expires_at = $3 WHERE user_id = $1 AND provider = $2")
                    .bind(user_id)
                    .bind(provider)
                    .bind(expires_at)
                    .execute(&mut *tx)
                    .await
                    .map_err($crate::Error::store)?;
                if done.rows_affected() == 0 {
                    return Ok(false);
                }
                Self::insert_audit(&mut tx, audit, provider, $crate::AuditAction::ExpiryChange).await?;
                tx.commit().await.map_err($crate::Error::store)?;
                Ok(true)
            }

            async fn expired_keys(&self, now: i64, limit: u32) -> $crate::Result<Vec<(String, String)>> {
                sqlx::query_as(concat!(
                    "SELECT user_id, provider FROM byok_keys WHERE expires_at IS NOT NULL AND expires_at <= $1 ",
                    "ORDER BY expires_at LIMIT $2"
                ))
                .bind(now)
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await
                .map_err($crate::Error::store)
            }

            async fn delete_expired(
                &self,
                user_id: &str,
                provider: &str,
                now: i64,
                audit: &$crate::AuditRecord,
            ) -> $crate::Result<bool> {
                let mut tx = self.begin_write().await?;
                let done = sqlx::query(concat!(
                    "DELETE FROM byok_keys WHERE user_id = $1 AND provider = $2 ",
                    "AND expires_at IS NOT NULL AND expires_at <= $3"
                ))
                .bind(user_id)
                .bind(provider)
                .bind(now)
                .execute(&mut *tx)
                .await
                .map_err($crate::Error::store)?;
                if done.rows_affected() == 0 {
                    return Ok(false);
                }
                Self::insert_audit(&mut tx, audit, provider, $crate::AuditAction::Purge).await?;
                tx.commit().await.map_err($crate::Error::store)?;
                Ok(true)
            }
        }

        impl $store {
            fn stored_key(row: &<$db as sqlx::Database>::Row) -> $crate::Result<$crate::store::StoredKey> {
                use sqlx::Row as _;
                let get = |e| $crate::Error::store(e);
                Ok($crate::store::StoredKey {
                    user_id: row.try_get("user_id").map_err(get)?,
                    provider: row.try_get("provider").map_err(get)?,
                    key_id: row.try_get("key_id").map_err(get)?,
                    sealed: row.try_get("sealed").map_err(get)?,
                    hint: row.try_get("hint").map_err(get)?,
                    fingerprint: row.try_get("fingerprint").map_err(get)?,
                    created_at: row.try_get("created_at").map_err(get)?,
                    updated_at: row.try_get("updated_at").map_err(get)?,
                    expires_at: row.try_get("expires_at").map_err(get)?,
                })
            }

            /// Binds a row's values as `$1`..`$8`: user, provider, key id, sealed blob,
            /// hint, fingerprint, time written, expiry.
            fn bind_row<'q>(
                query: sqlx::query::Query<'q, $db, <$db as sqlx::Database>::Arguments<'q>>,
                row: &'q $crate::store::StoredKey,
            ) -> sqlx::query::Query<'q, $db, <$db as sqlx::Database>::Arguments<'q>> {
                query
                    .bind(&row.user_id)
                    .bind(&row.provider)
                    .bind(&row.key_id)
                    .bind(&row.sealed)
                    .bind(&row.hint)
                    .bind(&row.fingerprint)
                    .bind(row.updated_at)
                    .bind(row.expires_at)
            }

            async fn insert_audit(
                tx: &mut sqlx::Transaction<'static, $db>,
                audit: &$crate::AuditRecord,
                provider: &str,
                action: $crate::AuditAction,
            ) -> $crate::Result<()> {
                sqlx::query(
                    "INSERT INTO byok_audit (at, user_ref, provider, action, actor) VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(audit.at)
                .bind(&audit.user_ref)
                .bind(provider)
                .bind(action.as_str())
                .bind(&audit.actor)
                .execute(&mut **tx)
                .await
                .map_err($crate::Error::store)?;
                Ok(())
            }

            /// Applies the embedded migrations not yet recorded, in one transaction, under
            /// the backend's migration lock.
            async fn run_migrations(&self) -> $crate::Result<()> {
                use $crate::error::{Error, ErrorKind};
                let fail = |e| Error::new(ErrorKind::Migration).with_source(e);
                let mut tx = self.begin_locked().await.map_err(|e| Error::new(ErrorKind::Migration).with_source(e))?;
                sqlx::Executor::execute(&mut *tx, $crate::store::MIGRATIONS_TABLE_DDL)
                    .await
                    .map_err(fail)?;
                let applied: Vec<(i64, String)> =
                    sqlx::query_as("SELECT version, checksum FROM byok_migrations ORDER BY version")
                        .fetch_all(&mut *tx)
                        .await
                        .map_err(fail)?;
                let known = Self::MIGRATIONS;
                if let Some((version, _)) = applied.iter().find(|(v, _)| !known.iter().any(|m| m.version == *v)) {
                    return Err(Error::new(ErrorKind::Migration).with_detail(format!(
                        "the database has tower-byok migration {version}, which this version of the crate does not know; upgrade the crate"
                    )));
                }
                for m in known {
                    let sum = $crate::store::checksum(m.sql);
                    match applied.iter().find(|(v, _)| *v == m.version) {
                        Some((_, stored)) if *stored == sum => continue,
                        Some(_) => {
                            return Err(Error::new(ErrorKind::Migration)
                                .with_detail(format!("migration {} was changed after it was applied", m.version)))
                        }
                        None => {}
                    }
                    sqlx::Executor::execute(&mut *tx, m.sql).await.map_err(fail)?;
                    sqlx::query(
                        "INSERT INTO byok_migrations (version, description, checksum, applied_at) VALUES ($1, $2, $3, $4)",
                    )
                    .bind(m.version)
                    .bind(m.description)
                    .bind(sum)
                    .bind($crate::store::now_ms())
                    .execute(&mut *tx)
                    .await
                    .map_err(fail)?;
                }
                tx.commit().await.map_err(fail)
            }
        }
    };
}
use sql_key_store;
