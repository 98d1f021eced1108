//! The store traits on SQL, written once for both built-in backends.
//!
//! `sqlite.rs` and `postgres.rs` each compile this file as their own `queries` module
//! (`#[path = "queries.rs"]`), against their own `Db` (the sqlx database) and `Store`
//! (the store type), and their own `begin_write` and `begin_locked` transactions: the
//! functions here are plain, monomorphic and formatted by rustfmt, with no macro and no
//! generic sqlx bounds. Both databases take `$n` parameters and the two schemas
//! (`migrations/<backend>/`) differ only in column types, so the SQL is the same.
//!
//! Every write runs in one transaction with its audit record; every other statement runs
//! on the backend's `session()`, and every statement is `persistent(self.prepared())`:
//! behind a pooler in transaction mode (PostgreSQL's `PoolMode::Transaction`) no
//! statement is named, and each runs inside a transaction. At the end, the statements
//! the migration runner (`migrate.rs`) needs from a backend's transaction.

use sqlx::query::Query;
use sqlx::{Database, Transaction};

use super::{store_error, Db, Store};
use crate::audit::{AuditAction, AuditRecord};
use crate::error::{Error, ErrorKind, Result};
use crate::owner::OwnerKind;
use crate::store::migrate::SchemaTx;
use crate::store::{
    AuditQuery, AuditStore, ExpiryStore, KeyStore, OwnerStore, RotationStore, SealedKey, StoredKey,
};

// `OwnerStore` is implemented in `owner_queries.rs`, beside this file, on the same types.

/// A row of `byok_keys` as the queries below select it, in [`StoredKey`]'s field order.
pub(super) type KeyRow = (
    String,
    String,
    String,
    Vec<u8>,
    String,
    String,
    i64,
    i64,
    Option<i64>,
);

impl KeyStore for Store {
    async fn migrate(&self) -> Result<()> {
        self.run_migrations().await
    }

    async fn fetch_user(&self, user_id: &str) -> Result<Vec<StoredKey>> {
        self.owner_rows(OwnerKind::User, user_id).await
    }

    async fn fetch_user_sealed(&self, user_id: &str) -> Result<Vec<SealedKey>> {
        let mut session = self.session().await?;
        let rows: Vec<(String, String, Vec<u8>, Option<i64>)> = sqlx::query_as(concat!(
            "SELECT provider, key_id, sealed, expires_at ",
            "FROM byok_keys WHERE user_id = $1 AND owner_kind = 'user' ORDER BY provider"
        ))
        .persistent(self.prepared())
        .bind(user_id)
        .fetch_all(session.conn())
        .await
        .map_err(store_error)?;
        session.finish().await.map_err(store_error)?;
        Ok(rows
            .into_iter()
            .map(|(provider, key_id, sealed, expires_at)| SealedKey {
                provider,
                key_id,
                sealed,
                expires_at,
            })
            .collect())
    }

    async fn fetch_key(&self, user_id: &str, provider: &str) -> Result<Option<StoredKey>> {
        let mut session = self.session().await?;
        let row: Option<KeyRow> = sqlx::query_as(concat!(
            "SELECT user_id, provider, key_id, sealed, hint, fingerprint, created_at, updated_at, expires_at ",
            "FROM byok_keys WHERE user_id = $1 AND owner_kind = 'user' AND provider = $2"
        ))
        .persistent(self.prepared())
        .bind(user_id)
        .bind(provider)
        .fetch_optional(session.conn())
        .await
        .map_err(store_error)?;
        session.finish().await.map_err(store_error)?;
        Ok(row.map(stored_key))
    }

    async fn upsert(
        &self,
        row: &StoredKey,
        audit: &AuditRecord,
        max_providers: u32,
    ) -> Result<AuditAction> {
        self.upsert_as(OwnerKind::User, row, audit, max_providers)
            .await
    }

    async fn delete(
        &self,
        user_id: &str,
        provider: Option<&str>,
        audit: &AuditRecord,
    ) -> Result<Vec<String>> {
        self.delete_as(OwnerKind::User, user_id, provider, audit)
            .await
    }
    async fn check_records(&self) -> Result<Vec<(String, Vec<u8>)>> {
        let mut session = self.session().await?;
        let records = sqlx::query_as("SELECT key_id, sealed FROM byok_check ORDER BY created_at")
            .persistent(self.prepared())
            .fetch_all(session.conn())
            .await
            .map_err(store_error)?;
        session.finish().await.map_err(store_error)?;
        Ok(records)
    }

    async fn add_check_records(
        &self,
        records: &[(&str, Vec<u8>)],
        at: i64,
        only_if_none: bool,
    ) -> Result<usize> {
        // Under the migration lock, so two instances opening a new database at once
        // cannot both create first records, each with its own vault secret.
        let mut tx = self.begin_locked().await?;
        if only_if_none {
            let any: Option<i32> = sqlx::query_scalar("SELECT 1 FROM byok_check LIMIT 1")
                .persistent(self.prepared())
                .fetch_optional(&mut *tx)
                .await
                .map_err(store_error)?;
            if any.is_some() {
                return Ok(0);
            }
        }
        let mut added = 0;
        for (key_id, sealed) in records {
            let done = sqlx::query(
                "INSERT INTO byok_check (key_id, sealed, created_at) VALUES ($1, $2, $3) ON CONFLICT (key_id) DO NOTHING",
            )
            .persistent(self.prepared())
            .bind(key_id)
            .bind(sealed)
            .bind(at)
            .execute(&mut *tx)
            .await
            .map_err(store_error)?;
            added += usize::try_from(done.rows_affected()).unwrap_or(0);
        }
        tx.commit().await.map_err(store_error)?;
        Ok(added)
    }

    async fn key_usage(&self) -> Result<Vec<(String, i64)>> {
        let mut session = self.session().await?;
        let usage = sqlx::query_as(
            "SELECT key_id, COUNT(*) FROM byok_keys GROUP BY key_id ORDER BY key_id",
        )
        .persistent(self.prepared())
        .fetch_all(session.conn())
        .await
        .map_err(store_error)?;
        session.finish().await.map_err(store_error)?;
        Ok(usage)
    }

    fn rotation(&self) -> Option<&impl RotationStore> {
        Some(self)
    }

    fn expiry(&self) -> Option<&impl ExpiryStore> {
        Some(self)
    }

    fn audit(&self) -> Option<&impl AuditStore> {
        Some(self)
    }

    fn owners(&self) -> Option<&impl OwnerStore> {
        Some(self)
    }
}

impl Store {
    /// The rows of one owner, expired ones included, ordered by provider.
    pub(super) async fn owner_rows(
        &self,
        kind: OwnerKind,
        owner_id: &str,
    ) -> Result<Vec<StoredKey>> {
        let mut session = self.session().await?;
        let rows: Vec<KeyRow> = sqlx::query_as(concat!(
            "SELECT user_id, provider, key_id, sealed, hint, fingerprint, created_at, updated_at, expires_at ",
            "FROM byok_keys WHERE user_id = $1 AND owner_kind = $2 ORDER BY provider"
        ))
        .persistent(self.prepared())
        .bind(owner_id)
        .bind(kind.as_str())
        .fetch_all(session.conn())
        .await
        .map_err(store_error)?;
        session.finish().await.map_err(store_error)?;
        Ok(rows.into_iter().map(stored_key).collect())
    }

    /// [`KeyStore::upsert`] for any owner: `row.user_id` is the owner's id.
    pub(super) async fn upsert_as(
        &self,
        kind: OwnerKind,
        row: &StoredKey,
        audit: &AuditRecord,
        max_providers: u32,
    ) -> Result<AuditAction> {
        // The owner's writes are serialized from here to the commit (SQLite: the write
        // lock of BEGIN IMMEDIATE; PostgreSQL: an advisory lock on the user), so the
        // count below cannot be outdated by a concurrent put of another new provider.
        let mut tx = self.begin_user_write(&row.user_id).await?;
        let action = loop {
            // The same parameters in the same places as the insert.
            let updated = bind_row(
                sqlx::query(concat!(
                    "UPDATE byok_keys SET key_id = $3, sealed = $4, hint = $5, fingerprint = $6, ",
                    "updated_at = $7, expires_at = $8 WHERE user_id = $1 AND provider = $2 AND owner_kind = $9"
                ))
                .persistent(self.prepared()),
                row,
            )
            .bind(kind.as_str())
            .execute(&mut *tx)
            .await
            .map_err(store_error)?;
            if updated.rows_affected() == 1 {
                break AuditAction::Replace;
            }
            let count: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM byok_keys WHERE user_id = $1 AND owner_kind = $2",
            )
            .persistent(self.prepared())
            .bind(&row.user_id)
            .bind(kind.as_str())
            .fetch_one(&mut *tx)
            .await
            .map_err(store_error)?;
            if count >= i64::from(max_providers) {
                // Dropping the transaction rolls it back: nothing was written.
                return Err(ErrorKind::TooManyProviders.into());
            }
            // Insert-or-nothing: a writer that does not take the user's lock (an
            // operator's SQL) may have inserted the row meanwhile; then update it.
            let inserted = bind_row(
                sqlx::query(concat!(
                    "INSERT INTO byok_keys (user_id, provider, key_id, sealed, hint, fingerprint, ",
                    "created_at, updated_at, expires_at, owner_kind) VALUES ($1, $2, $3, $4, $5, $6, $7, $7, $8, $9) ",
                    "ON CONFLICT (user_id, owner_kind, provider) DO NOTHING"
                ))
                .persistent(self.prepared()),
                row,
            )
            .bind(kind.as_str())
            .execute(&mut *tx)
            .await
            .map_err(store_error)?;
            if inserted.rows_affected() == 1 {
                break AuditAction::Put;
            }
        };
        insert_audit(&mut tx, self.prepared(), audit, &row.provider, action).await?;
        tx.commit().await.map_err(store_error)?;
        Ok(action)
    }

    /// [`KeyStore::delete`] for any owner.
    pub(super) async fn delete_as(
        &self,
        kind: OwnerKind,
        user_id: &str,
        provider: Option<&str>,
        audit: &AuditRecord,
    ) -> Result<Vec<String>> {
        let mut tx = self.begin_write().await?;
        let deleted: Vec<String> = sqlx::query_scalar(
            "DELETE FROM byok_keys WHERE user_id = $1 AND owner_kind = $3 AND ($2 IS NULL OR provider = $2) RETURNING provider",
        )
        .persistent(self.prepared())
        .bind(user_id)
        .bind(provider)
        .bind(kind.as_str())
        .fetch_all(&mut *tx)
        .await
        .map_err(store_error)?;
        for provider in &deleted {
            insert_audit(
                &mut tx,
                self.prepared(),
                audit,
                provider,
                AuditAction::Delete,
            )
            .await?;
        }
        tx.commit().await.map_err(store_error)?;
        Ok(deleted)
    }

    /// [`ExpiryStore::set_expiry`] for any owner.
    pub(super) async fn set_expiry_as(
        &self,
        kind: OwnerKind,
        user_id: &str,
        provider: &str,
        expires_at: Option<i64>,
        audit: &AuditRecord,
    ) -> Result<bool> {
        let mut tx = self.begin_write().await?;
        let done = sqlx::query(
            "UPDATE byok_keys SET expires_at = $3 WHERE user_id = $1 AND owner_kind = $4 AND provider = $2",
        )
        .persistent(self.prepared())
        .bind(user_id)
        .bind(provider)
        .bind(expires_at)
        .bind(kind.as_str())
        .execute(&mut *tx)
        .await
        .map_err(store_error)?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        insert_audit(
            &mut tx,
            self.prepared(),
            audit,
            provider,
            AuditAction::ExpiryChange,
        )
        .await?;
        tx.commit().await.map_err(store_error)?;
        Ok(true)
    }
}

impl RotationStore for Store {
    async fn keys_page(
        &self,
        after: Option<(&str, &str)>,
        limit: u32,
        exclude_key_id: Option<&str>,
    ) -> Result<Vec<StoredKey>> {
        // The first page starts after ("", ""), below every row (user ids are never
        // empty), so the condition is always a plain range the key's index serves.
        OwnerStore::owner_keys_page(self, OwnerKind::User, after, limit, exclude_key_id).await
    }

    async fn reseal(
        &self,
        old: &StoredKey,
        key_id: &str,
        sealed: &[u8],
        audit: &AuditRecord,
    ) -> Result<bool> {
        OwnerStore::reseal_owner(self, OwnerKind::User, old, key_id, sealed, audit).await
    }

    async fn remove_check_record(&self, key_id: &str) -> Result<bool> {
        // One statement: no row can come to need the key between check and delete.
        let mut session = self.session().await?;
        let done = sqlx::query(concat!(
            "DELETE FROM byok_check WHERE key_id = $1 ",
            "AND NOT EXISTS (SELECT 1 FROM byok_keys WHERE key_id = $1)"
        ))
        .persistent(self.prepared())
        .bind(key_id)
        .execute(session.conn())
        .await
        .map_err(store_error)?;
        session.finish().await.map_err(store_error)?;
        Ok(done.rows_affected() > 0)
    }
}

impl ExpiryStore for Store {
    async fn set_expiry(
        &self,
        user_id: &str,
        provider: &str,
        expires_at: Option<i64>,
        audit: &AuditRecord,
    ) -> Result<bool> {
        self.set_expiry_as(OwnerKind::User, user_id, provider, expires_at, audit)
            .await
    }

    async fn expired_keys(&self, now: i64, limit: u32) -> Result<Vec<(String, String)>> {
        self.expired_as(OwnerKind::User, now, limit).await
    }

    async fn delete_expired(
        &self,
        user_id: &str,
        provider: &str,
        now: i64,
        audit: &AuditRecord,
    ) -> Result<bool> {
        self.delete_expired_as(OwnerKind::User, user_id, provider, now, audit)
            .await
    }
}

impl Store {
    /// [`ExpiryStore::expired_keys`] for any owner kind.
    pub(super) async fn expired_as(
        &self,
        kind: OwnerKind,
        now: i64,
        limit: u32,
    ) -> Result<Vec<(String, String)>> {
        let mut session = self.session().await?;
        let expired = sqlx::query_as(concat!(
            "SELECT user_id, provider FROM byok_keys WHERE owner_kind = $3 AND expires_at IS NOT NULL AND expires_at <= $1 ",
            "ORDER BY expires_at LIMIT $2"
        ))
        .persistent(self.prepared())
        .bind(now)
        .bind(i64::from(limit))
        .bind(kind.as_str())
        .fetch_all(session.conn())
        .await
        .map_err(store_error)?;
        session.finish().await.map_err(store_error)?;
        Ok(expired)
    }

    /// [`ExpiryStore::delete_expired`] for any owner.
    pub(super) async fn delete_expired_as(
        &self,
        kind: OwnerKind,
        user_id: &str,
        provider: &str,
        now: i64,
        audit: &AuditRecord,
    ) -> Result<bool> {
        let mut tx = self.begin_write().await?;
        let done = sqlx::query(concat!(
            "DELETE FROM byok_keys WHERE user_id = $1 AND owner_kind = $4 AND provider = $2 ",
            "AND expires_at IS NOT NULL AND expires_at <= $3"
        ))
        .persistent(self.prepared())
        .bind(user_id)
        .bind(provider)
        .bind(now)
        .bind(kind.as_str())
        .execute(&mut *tx)
        .await
        .map_err(store_error)?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        insert_audit(
            &mut tx,
            self.prepared(),
            audit,
            provider,
            AuditAction::Purge,
        )
        .await?;
        tx.commit().await.map_err(store_error)?;
        Ok(true)
    }
}

impl AuditStore for Store {
    async fn audit_trail(&self, query: &AuditQuery) -> Result<Vec<AuditRecord>> {
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
        // Built above from fixed fragments and `$n` placeholders only; every value is bound.
        let mut q =
            sqlx::query_as::<_, (i64, String, String, String, String)>(sqlx::AssertSqlSafe(sql))
                .persistent(self.prepared());
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
        let mut session = self.session().await?;
        let rows = q.fetch_all(session.conn()).await.map_err(store_error)?;
        session.finish().await.map_err(store_error)?;
        rows.into_iter()
            .map(|(at, user_ref, provider, action, actor)| {
                let action = AuditAction::parse(&action).ok_or_else(|| {
                    Error::new(ErrorKind::Store).with_detail("unknown audit action")
                })?;
                Ok(AuditRecord {
                    at,
                    user_ref,
                    provider,
                    action,
                    actor,
                })
            })
            .collect()
    }
}

/// Unnamed statements: they run once per open, and so need no pool mode to be safe
/// behind a pooler in transaction mode (the migration is one transaction).
impl SchemaTx for Transaction<'_, Db> {
    async fn execute(&mut self, sql: &'static str) -> sqlx::Result<()> {
        sqlx::Executor::execute(&mut **self, sql).await?;
        Ok(())
    }

    async fn applied(&mut self, sql: &'static str) -> sqlx::Result<Vec<(i64, String)>> {
        sqlx::query_as(sql)
            .persistent(false)
            .fetch_all(&mut **self)
            .await
    }

    async fn record(
        &mut self,
        sql: &'static str,
        version: i64,
        description: &'static str,
        checksum: String,
        at: i64,
    ) -> sqlx::Result<()> {
        sqlx::query(sql)
            .persistent(false)
            .bind(version)
            .bind(description)
            .bind(checksum)
            .bind(at)
            .execute(&mut **self)
            .await?;
        Ok(())
    }

    async fn commit(self) -> sqlx::Result<()> {
        Transaction::commit(self).await
    }
}

pub(super) fn stored_key(row: KeyRow) -> StoredKey {
    let (user_id, provider, key_id, sealed, hint, fingerprint, created, updated, expires) = row;
    StoredKey {
        user_id,
        provider,
        key_id,
        sealed,
        hint,
        fingerprint,
        created_at: created,
        updated_at: updated,
        expires_at: expires,
    }
}

/// Binds a row's values as `$1`..`$8`: user, provider, key id, sealed blob, hint,
/// fingerprint, time written, expiry.
fn bind_row<'q>(
    query: Query<'q, Db, <Db as Database>::Arguments>,
    row: &'q StoredKey,
) -> Query<'q, Db, <Db as Database>::Arguments> {
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

pub(super) async fn insert_audit(
    tx: &mut Transaction<'static, Db>,
    prepared: bool,
    audit: &AuditRecord,
    provider: &str,
    action: AuditAction,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO byok_audit (at, user_ref, provider, action, actor) VALUES ($1, $2, $3, $4, $5)",
    )
    .persistent(prepared)
    .bind(audit.at)
    .bind(&audit.user_ref)
    .bind(provider)
    .bind(action.as_str())
    .bind(&audit.actor)
    .execute(&mut **tx)
    .await
    .map_err(store_error)?;
    Ok(())
}
