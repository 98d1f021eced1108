//! Reading keys: what the layer serves (through the cache), direct reads, listings and
//! the audit trail.

use std::time::SystemTime;

use tracing::Instrument;

use super::open::Opener;
use super::{from_unix_ms, unix_ms, Vault};
use crate::audit::AuditRecord;
use crate::error::{Error, ErrorKind, Result};
use crate::keys::{KeyInfo, ProviderKey, UserKeys};
use crate::metrics::{self, Scope, Source};
use crate::store::AuditQuery;
use crate::validate;

impl Vault {
    /// One key of a user, straight from the database (not the cache); `None` when the
    /// user has none for that provider or it has expired.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Decrypt`] or [`ErrorKind::UnknownMasterKey`] when the stored key
    /// cannot be opened (never another value in its place); input and store errors as
    /// [`put`](Self::put).
    pub async fn get(&self, user_id: &str, provider: &str) -> Result<Option<ProviderKey>> {
        let user_id = validate::user_id(user_id)?;
        let provider = validate::provider(provider)?;
        let Some(row) = self.inner.store.fetch_key(user_id, &provider).await? else {
            return Ok(None);
        };
        let now = SystemTime::now();
        let keyring = self.inner.keyring.current();
        let mut opener = Opener::new(&self.inner, &keyring, user_id);
        opener.open(&row, now)
    }

    /// All of a user's unexpired keys, decrypted, straight from the database.
    ///
    /// # Errors
    ///
    /// As [`get`](Self::get); one key that cannot be opened fails the whole call.
    pub async fn get_all(&self, user_id: &str) -> Result<UserKeys> {
        let user_id = validate::user_id(user_id)?;
        self.load(user_id).await
    }

    async fn load(&self, user_id: &str) -> Result<UserKeys> {
        // Only the columns serving needs (issue 18: the other five were decoded and
        // freed on every miss).
        let rows = self.inner.store.fetch_user_sealed(user_id).await?;
        let now = SystemTime::now();
        let keyring = self.inner.keyring.current();
        let mut opener = Opener::new(&self.inner, &keyring, user_id);
        let mut keys = Vec::with_capacity(rows.len());
        for row in &rows {
            keys.extend(opener.open(row, now)?);
        }
        // Byte order, which lookups rely on: a PostgreSQL collation may order differently.
        keys.sort_unstable_by(|a, b| a.provider().cmp(b.provider()));
        Ok(UserKeys::from_sorted(keys))
    }

    /// A user's keys through the per-user cache: what the layer serves to requests.
    ///
    /// Concurrent misses for one user share one database load, bounded by the load
    /// timeout. Keys written or deleted through this vault are invalidated at once.
    ///
    /// # Errors
    ///
    /// As [`get_all`](Self::get_all), plus [`ErrorKind::Timeout`]. The error carries its
    /// kind only; the cause is logged (without secrets or user ids) where it happened.
    pub async fn keys_for(&self, user_id: &str) -> Result<UserKeys> {
        let user_id = validate::user_id(user_id)?;
        self.cached(user_id).await.map_err(Error::new)
    }

    /// Drops this process's cached keys of a user, so the next request loads them from
    /// the database. Changes made elsewhere (another instance, the CLI, raw SQL) reach
    /// the cache through the change feed on their own; this is for when the feed is off
    /// ([`VaultBuilder::watch_changes`](crate::VaultBuilder::watch_changes)) or the store
    /// has none.
    pub fn forget_cached(&self, user_id: &str) {
        self.inner.cache.invalidate(user_id);
        metrics::invalidated(Source::Local, Scope::User);
    }

    /// The cached keys of a user id, if present: no waiting. The id need not have been
    /// validated: only validated ids are ever cached, so any other one misses.
    #[inline]
    pub(crate) fn cache_hit(&self, user_id: &str) -> Option<UserKeys> {
        self.inner.cache.get(user_id)
    }

    pub(crate) async fn cached(&self, user_id: &str) -> Result<UserKeys, ErrorKind> {
        self.inner
            .cache
            .get_or_load(user_id, || {
                // One span per load (not per waiter), naming the user by the keyed hash
                // only, computed only when a subscriber wants the span.
                let span = tracing::info_span!("tower_byok.load", user_ref = tracing::field::Empty);
                if !span.is_disabled() {
                    span.record("user_ref", tracing::field::display(self.user_ref(user_id)));
                }
                async move {
                    self.load(user_id).await.inspect_err(|e| {
                        tracing::warn!(user_ref = %self.user_ref(user_id), error = %e, "loading a user's keys failed");
                    })
                }
                .instrument(span)
            })
            .await
    }

    /// A user's keys as masked listings, without decrypting anything; expired keys are
    /// included and say so ([`KeyInfo::is_expired`]).
    ///
    /// # Errors
    ///
    /// Input and store errors as [`put`](Self::put).
    pub async fn list(&self, user_id: &str) -> Result<Vec<KeyInfo>> {
        let user_id = validate::user_id(user_id)?;
        let rows = self.inner.store.fetch_user(user_id).await?;
        Ok(rows
            .into_iter()
            .map(|row| KeyInfo {
                provider: row.provider,
                masked: row.hint,
                fingerprint: row.fingerprint,
                master_key_id: row.key_id,
                created_at: from_unix_ms(row.created_at),
                updated_at: from_unix_ms(row.updated_at),
                expires_at: row.expires_at.map(from_unix_ms),
            })
            .collect())
    }

    /// The audit trail of one user, oldest first.
    ///
    /// # Errors
    ///
    /// Input and store errors as [`put`](Self::put).
    ///
    /// [`ErrorKind::Unsupported`] when the store is not an [`AuditStore`](crate::store::AuditStore).
    pub async fn audit_trail(&self, user_id: &str) -> Result<Vec<AuditRecord>> {
        let user_id = validate::user_id(user_id)?;
        let query = AuditQuery {
            user_ref: Some(self.user_ref(user_id)),
            ..AuditQuery::default()
        };
        self.inner.audit()?.audit_trail(&query).await
    }

    /// The whole audit log, or the part in `[since, until)`, oldest first.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Store`] when the database fails.
    ///
    /// [`ErrorKind::Unsupported`] when the store is not an [`AuditStore`](crate::store::AuditStore).
    pub async fn audit_log(
        &self,
        since: Option<SystemTime>,
        until: Option<SystemTime>,
    ) -> Result<Vec<AuditRecord>> {
        let query = AuditQuery {
            since: since.map(unix_ms),
            until: until.map(unix_ms),
            ..AuditQuery::default()
        };
        self.inner.audit()?.audit_trail(&query).await
    }
}
