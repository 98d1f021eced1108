//! The core store trait, and its erasure for the one [`Vault`](crate::Vault) type.

use std::future::Future;

use super::capability::{
    AuditStore, DynAudit, DynExpiry, DynOwner, DynRotation, ExpiryStore, Never, OwnerStore,
    RotationStore,
};
use super::{BoxFuture, SealedKey, StoredKey};
use crate::audit::{AuditAction, AuditRecord};
use crate::error::Result;

/// The storage a [`Vault`](crate::Vault) runs on: what serving requests and the vault's
/// basic operations need. Optional capabilities are announced by [`rotation`](Self::rotation),
/// [`expiry`](Self::expiry) and [`audit`](Self::audit); see [the module docs](crate::store).
///
/// Implemented by [`SqliteStore`] and [`PostgresStore`]. Methods may run concurrently,
/// from several instances sharing the data. Every write method is atomic and writes its audit records
/// in the same transaction as the change, so a change without its record cannot happen;
/// it returns once the change is durable, or with an error after which nothing of it
/// is visible. User ids, provider names and key ids match exactly, byte for byte;
/// orders may follow the store's own collation (the vault sorts what it relies on).
///
#[cfg_attr(feature = "sqlite", doc = "[`SqliteStore`]: crate::SqliteStore")]
#[cfg_attr(
    not(feature = "sqlite"),
    doc = "[`SqliteStore`]: https://docs.rs/tower-byok/latest/tower_byok/struct.SqliteStore.html"
)]
#[cfg_attr(feature = "postgres", doc = "[`PostgresStore`]: crate::PostgresStore")]
#[cfg_attr(
    not(feature = "postgres"),
    doc = "[`PostgresStore`]: https://docs.rs/tower-byok/latest/tower_byok/struct.PostgresStore.html"
)]
pub trait KeyStore: Send + Sync + 'static {
    /// Creates or upgrades the schema, run once when a vault opens. Idempotent; safe to
    /// run from several processes at once. A store without a schema returns `Ok(())`.
    fn migrate(&self) -> impl Future<Output = Result<()>> + Send;

    /// All rows of one user, expired ones included, ordered by provider. The request
    /// path's one query (on a cache miss).
    ///
    /// The order may be the store's collation: the vault re-sorts by bytes.
    fn fetch_user(&self, user_id: &str) -> impl Future<Output = Result<Vec<StoredKey>>> + Send;

    /// [`fetch_user`](Self::fetch_user) narrowed to what serving needs: the same rows,
    /// in the same order, with only the columns of [`SealedKey`]. What a cache miss
    /// reads; the vault's listings and writes read [`fetch_user`](Self::fetch_user).
    ///
    /// The default calls [`fetch_user`](Self::fetch_user) and drops the other fields; a
    /// store that can select fewer columns overrides it (the built-in stores do).
    fn fetch_user_sealed(
        &self,
        user_id: &str,
    ) -> impl Future<Output = Result<Vec<SealedKey>>> + Send {
        let rows = self.fetch_user(user_id);
        async move { Ok(rows.await?.into_iter().map(SealedKey::from).collect()) }
    }

    /// One row, expired or not.
    fn fetch_key(
        &self,
        user_id: &str,
        provider: &str,
    ) -> impl Future<Output = Result<Option<StoredKey>>> + Send;

    /// Inserts the row, or replaces every field of the row for the same user and provider
    /// except its `created_at`, and writes `audit` (its provider set to the row's, its
    /// action to [`AuditAction::Put`] or [`AuditAction::Replace`]) in the same
    /// transaction. Returns the action taken. Two concurrent first writes of one key
    /// must end as one put and one replace, never two puts or a failure.
    ///
    /// `max_providers` caps how many rows one user may have: when the row is new (no row
    /// for its user and provider) and the user already has `max_providers` rows or more,
    /// write nothing and fail with [`ErrorKind::TooManyProviders`](crate::ErrorKind::TooManyProviders)
    /// (`Err(ErrorKind::TooManyProviders.into())`; the vault adds the cap to the
    /// message). A replace is always allowed. The count and the insert must be atomic
    /// against concurrent writes of the same user: two concurrent puts of new providers
    /// by a user one below the cap must not both succeed (the built-in stores serialize
    /// a user's writes: SQLite's write lock, a per-user advisory lock on PostgreSQL).
    fn upsert(
        &self,
        row: &StoredKey,
        audit: &AuditRecord,
        max_providers: u32,
    ) -> impl Future<Output = Result<AuditAction>> + Send;

    /// Deletes one provider's row of a user, or all the user's rows when `provider` is
    /// `None`, writing one `audit` record per deleted row (its provider filled in, action
    /// [`AuditAction::Delete`]) in the same transaction. Returns the deleted providers.
    fn delete(
        &self,
        user_id: &str,
        provider: Option<&str>,
        audit: &AuditRecord,
    ) -> impl Future<Output = Result<Vec<String>>> + Send;

    /// The check records `(master key id, sealed vault secret)`, oldest first.
    fn check_records(&self) -> impl Future<Output = Result<Vec<(String, Vec<u8>)>>> + Send;

    /// Adds check records `(master key id, sealed vault secret)`, each unless one exists
    /// for its key id; when `only_if_none`, adds none unless there are none yet. Returns
    /// how many it added. Atomic against another instance doing the same at the same
    /// time: two vaults opening a new database at once must not both add first records.
    fn add_check_records(
        &self,
        records: &[(&str, Vec<u8>)],
        at: i64,
        only_if_none: bool,
    ) -> impl Future<Output = Result<usize>> + Send;

    /// How many rows each master key id seals, ordered by key id. A vault refuses to open
    /// while rows are sealed under a key its keyring lacks.
    fn key_usage(&self) -> impl Future<Output = Result<Vec<(String, i64)>>> + Send;

    /// This store as a [`RotationStore`], if it is one. `None` by default; a store that
    /// implements the trait returns `Some(self)`.
    fn rotation(&self) -> Option<&impl RotationStore> {
        None::<&Never>
    }

    /// This store as an [`ExpiryStore`], if it is one. `None` by default.
    fn expiry(&self) -> Option<&impl ExpiryStore> {
        None::<&Never>
    }

    /// This store as an [`AuditStore`], if it is one. `None` by default.
    fn audit(&self) -> Option<&impl AuditStore> {
        None::<&Never>
    }

    /// This store as an [`OwnerStore`], if it is one. `None` by default.
    fn owners(&self) -> Option<&impl OwnerStore> {
        None::<&Never>
    }
}

/// [`KeyStore`] made object safe, so that [`Vault`](crate::Vault) is one type whatever its
/// backend: only what a vault calls once it is open. The box costs nanoseconds on a path
/// that waits on a database.
/// A check record: a master key id and the vault secret sealed under it.
type CheckRecord = (String, Vec<u8>);

pub(crate) trait DynKeyStore: Send + Sync + 'static {
    fn fetch_user<'a>(&'a self, user_id: &'a str) -> BoxFuture<'a, Result<Vec<StoredKey>>>;
    fn fetch_user_sealed<'a>(&'a self, user_id: &'a str) -> BoxFuture<'a, Result<Vec<SealedKey>>>;
    fn fetch_key<'a>(
        &'a self,
        user: &'a str,
        provider: &'a str,
    ) -> BoxFuture<'a, Result<Option<StoredKey>>>;
    fn upsert<'a>(
        &'a self,
        row: &'a StoredKey,
        audit: &'a AuditRecord,
        max_providers: u32,
    ) -> BoxFuture<'a, Result<AuditAction>>;
    fn delete<'a>(
        &'a self,
        user_id: &'a str,
        provider: Option<&'a str>,
        audit: &'a AuditRecord,
    ) -> BoxFuture<'a, Result<Vec<String>>>;
    fn key_usage(&self) -> BoxFuture<'_, Result<Vec<(String, i64)>>>;
    fn check_records(&self) -> BoxFuture<'_, Result<Vec<CheckRecord>>>;
    fn add_check_records<'a>(
        &'a self,
        records: &'a [(&'a str, Vec<u8>)],
        at: i64,
        only_if_none: bool,
    ) -> BoxFuture<'a, Result<usize>>;
    fn rotation(&self) -> Option<&dyn DynRotation>;
    fn expiry(&self) -> Option<&dyn DynExpiry>;
    fn audit(&self) -> Option<&dyn DynAudit>;
    fn owners(&self) -> Option<&dyn DynOwner>;
}

impl<S: KeyStore> DynKeyStore for S {
    fn fetch_user<'a>(&'a self, user_id: &'a str) -> BoxFuture<'a, Result<Vec<StoredKey>>> {
        Box::pin(KeyStore::fetch_user(self, user_id))
    }
    fn fetch_user_sealed<'a>(&'a self, user_id: &'a str) -> BoxFuture<'a, Result<Vec<SealedKey>>> {
        Box::pin(KeyStore::fetch_user_sealed(self, user_id))
    }
    fn fetch_key<'a>(
        &'a self,
        user: &'a str,
        provider: &'a str,
    ) -> BoxFuture<'a, Result<Option<StoredKey>>> {
        Box::pin(KeyStore::fetch_key(self, user, provider))
    }
    fn upsert<'a>(
        &'a self,
        row: &'a StoredKey,
        audit: &'a AuditRecord,
        max_providers: u32,
    ) -> BoxFuture<'a, Result<AuditAction>> {
        Box::pin(KeyStore::upsert(self, row, audit, max_providers))
    }
    fn delete<'a>(
        &'a self,
        user_id: &'a str,
        provider: Option<&'a str>,
        audit: &'a AuditRecord,
    ) -> BoxFuture<'a, Result<Vec<String>>> {
        Box::pin(KeyStore::delete(self, user_id, provider, audit))
    }
    fn key_usage(&self) -> BoxFuture<'_, Result<Vec<(String, i64)>>> {
        Box::pin(KeyStore::key_usage(self))
    }
    fn check_records(&self) -> BoxFuture<'_, Result<Vec<CheckRecord>>> {
        Box::pin(KeyStore::check_records(self))
    }
    fn add_check_records<'a>(
        &'a self,
        records: &'a [(&'a str, Vec<u8>)],
        at: i64,
        only_if_none: bool,
    ) -> BoxFuture<'a, Result<usize>> {
        Box::pin(KeyStore::add_check_records(self, records, at, only_if_none))
    }
    fn rotation(&self) -> Option<&dyn DynRotation> {
        KeyStore::rotation(self).map(|s| s as &dyn DynRotation)
    }
    fn expiry(&self) -> Option<&dyn DynExpiry> {
        KeyStore::expiry(self).map(|s| s as &dyn DynExpiry)
    }
    fn audit(&self) -> Option<&dyn DynAudit> {
        KeyStore::audit(self).map(|s| s as &dyn DynAudit)
    }
    fn owners(&self) -> Option<&dyn DynOwner> {
        KeyStore::owners(self).map(|s| s as &dyn DynOwner)
    }
}
