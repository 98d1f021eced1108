//! The [`OwnerStore`] capability on SQL, for both built-in backends: compiled like
//! `queries.rs` (`#[path]`, once per backend against its own `Db` and `Store`), and using
//! its owner-generic helpers. Teams' and the platform's rows are `byok_keys` rows with
//! another `owner_kind`; their rotation pages walk one kind at a time.

use super::queries::{insert_audit, stored_key, KeyRow};
use super::{store_error, Store};
use crate::audit::{AuditAction, AuditRecord};
use crate::error::Result;
use crate::owner::OwnerKind;
use crate::store::{OwnerStore, StoredKey};

impl OwnerStore for Store {
    async fn fetch_owner(&self, kind: OwnerKind, owner_id: &str) -> Result<Vec<StoredKey>> {
        self.owner_rows(kind, owner_id).await
    }

    async fn upsert_owner(
        &self,
        kind: OwnerKind,
        row: &StoredKey,
        audit: &AuditRecord,
        max_providers: u32,
    ) -> Result<AuditAction> {
        self.upsert_as(kind, row, audit, max_providers).await
    }

    async fn delete_owner(
        &self,
        kind: OwnerKind,
        owner_id: &str,
        provider: Option<&str>,
        audit: &AuditRecord,
    ) -> Result<Vec<String>> {
        self.delete_as(kind, owner_id, provider, audit).await
    }

    async fn set_owner_expiry(
        &self,
        kind: OwnerKind,
        owner_id: &str,
        provider: &str,
        expires_at: Option<i64>,
        audit: &AuditRecord,
    ) -> Result<bool> {
        self.set_expiry_as(kind, owner_id, provider, expires_at, audit)
            .await
    }

    async fn expired_owner_keys(
        &self,
        kind: OwnerKind,
        now: i64,
        limit: u32,
    ) -> Result<Vec<(String, String)>> {
        self.expired_as(kind, now, limit).await
    }

    async fn delete_owner_expired(
        &self,
        kind: OwnerKind,
        owner_id: &str,
        provider: &str,
        now: i64,
        audit: &AuditRecord,
    ) -> Result<bool> {
        self.delete_expired_as(kind, owner_id, provider, now, audit)
            .await
    }

    async fn team_policy(&self, team_id: &str) -> Result<Option<bool>> {
        let mut session = self.session().await?;
        let members_keys =
            sqlx::query_scalar("SELECT members_keys FROM byok_team_policies WHERE team_id = $1")
                .persistent(self.prepared())
                .bind(team_id)
                .fetch_optional(session.conn())
                .await
                .map_err(store_error)?;
        session.finish().await.map_err(store_error)?;
        Ok(members_keys)
    }

    async fn set_team_policy(
        &self,
        team_id: &str,
        members_keys: bool,
        audit: &AuditRecord,
    ) -> Result<()> {
        let mut tx = self.begin_write().await?;
        sqlx::query(concat!(
            "INSERT INTO byok_team_policies (team_id, members_keys, updated_at) VALUES ($1, $2, $3) ",
            "ON CONFLICT (team_id) DO UPDATE SET members_keys = $2, updated_at = $3"
        ))
        .persistent(self.prepared())
        .bind(team_id)
        .bind(members_keys)
        .bind(audit.at)
        .execute(&mut *tx)
        .await
        .map_err(store_error)?;
        insert_audit(
            &mut tx,
            self.prepared(),
            audit,
            "",
            AuditAction::PolicyChange,
        )
        .await?;
        tx.commit().await.map_err(store_error)
    }

    async fn owner_keys_page(
        &self,
        kind: OwnerKind,
        after: Option<(&str, &str)>,
        limit: u32,
        exclude_key_id: Option<&str>,
    ) -> Result<Vec<StoredKey>> {
        let (after_owner, after_provider) = after.unwrap_or(("", ""));
        let mut session = self.session().await?;
        let rows: Vec<KeyRow> = sqlx::query_as(concat!(
            "SELECT user_id, provider, key_id, sealed, hint, fingerprint, created_at, updated_at, expires_at ",
            "FROM byok_keys WHERE owner_kind = $5 AND ($1 IS NULL OR key_id <> $1) ",
            "AND (user_id, provider) > ($2, $3) ",
            "ORDER BY user_id, provider LIMIT $4"
        ))
        .persistent(self.prepared())
        .bind(exclude_key_id)
        .bind(after_owner)
        .bind(after_provider)
        .bind(i64::from(limit))
        .bind(kind.as_str())
        .fetch_all(session.conn())
        .await
        .map_err(store_error)?;
        session.finish().await.map_err(store_error)?;
        Ok(rows.into_iter().map(stored_key).collect())
    }

    async fn reseal_owner(
        &self,
        kind: OwnerKind,
        old: &StoredKey,
        key_id: &str,
        sealed: &[u8],
        audit: &AuditRecord,
    ) -> Result<bool> {
        let mut tx = self.begin_write().await?;
        let done = sqlx::query(concat!(
            "UPDATE byok_keys SET key_id = $3, sealed = $4 WHERE user_id = $1 AND owner_kind = $7 ",
            "AND provider = $2 AND key_id = $5 AND sealed = $6"
        ))
        .persistent(self.prepared())
        .bind(&old.user_id)
        .bind(&old.provider)
        .bind(key_id)
        .bind(sealed)
        .bind(&old.key_id)
        .bind(&old.sealed)
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
            &old.provider,
            AuditAction::Rewrap,
        )
        .await?;
        tx.commit().await.map_err(store_error)?;
        Ok(true)
    }
}
