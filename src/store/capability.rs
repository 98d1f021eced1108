//! The optional capabilities of a store, each a small trait with its erasure beside it.
//!
//! A store announces a capability through the matching [`KeyStore`](super::KeyStore)
//! accessor. The contract of [`KeyStore`](super::KeyStore) holds here too: writes are
//! atomic with their audit record, names match byte for byte.

use std::future::Future;

use super::{AuditQuery, BoxFuture, StoredKey};
use crate::audit::{AuditAction, AuditRecord};
use crate::error::Result;
use crate::owner::OwnerKind;

/// Walking every row and re-sealing rows one at a time: what
/// [`Vault::rewrap`](crate::Vault::rewrap), [`Vault::verify`](crate::Vault::verify) and
/// [`Vault::retire_master_key`](crate::Vault::retire_master_key) need. Announced by
/// [`KeyStore::rotation`](super::KeyStore::rotation).
pub trait RotationStore: Send + Sync {
    /// Up to `limit` rows in `(user_id, provider)` order, strictly after `after` when
    /// given, and only rows not sealed under `exclude_key_id` when given: the pages of a
    /// rewrap or a verification. Any total order will do (the store's collation too), as
    /// long as it is the same from page to page, so that paging sees every row.
    fn keys_page(
        &self,
        after: Option<(&str, &str)>,
        limit: u32,
        exclude_key_id: Option<&str>,
    ) -> impl Future<Output = Result<Vec<StoredKey>>> + Send;

    /// Replaces the seal of `old` with `sealed` under `key_id`, only if the row still
    /// holds exactly `old`'s key id and blob (so a concurrent write wins), writing `audit`
    /// (its provider set to the row's, action
    /// [`AuditAction::Rewrap`](crate::AuditAction::Rewrap)) in the same transaction.
    /// Leaves every other field as it was. Returns whether it replaced the seal.
    fn reseal(
        &self,
        old: &StoredKey,
        key_id: &str,
        sealed: &[u8],
        audit: &AuditRecord,
    ) -> impl Future<Output = Result<bool>> + Send;

    /// Removes the check record of a master key, only if no row is sealed under it,
    /// atomically (no row can come to need the key between the check and the removal).
    /// Returns whether it removed one.
    fn remove_check_record(&self, key_id: &str) -> impl Future<Output = Result<bool>> + Send;
}

/// Changing a key's expiry and purging expired keys:
/// [`Vault::set_expiry`](crate::Vault::set_expiry) and
/// [`Vault::purge_expired`](crate::Vault::purge_expired). Announced by
/// [`KeyStore::expiry`](super::KeyStore::expiry). A store without it still keeps the
/// expiry [`KeyStore::upsert`](super::KeyStore::upsert) writes, and expired keys are
/// still never served.
pub trait ExpiryStore: Send + Sync {
    /// Sets or clears (`None`) a key's expiry, writing `audit` (its provider set, action
    /// [`AuditAction::ExpiryChange`](crate::AuditAction::ExpiryChange)) in the same
    /// transaction. Returns whether the key exists.
    fn set_expiry(
        &self,
        user_id: &str,
        provider: &str,
        expires_at: Option<i64>,
        audit: &AuditRecord,
    ) -> impl Future<Output = Result<bool>> + Send;

    /// Up to `limit` `(user_id, provider)` of keys expired at `now` (`expires_at <= now`),
    /// oldest expiry first.
    fn expired_keys(
        &self,
        now: i64,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<(String, String)>>> + Send;

    /// Deletes a key only if it has expired at `now` (so a key extended meanwhile stays),
    /// writing `audit` (its provider set, action
    /// [`AuditAction::Purge`](crate::AuditAction::Purge)) in the same transaction.
    /// Returns whether it deleted it.
    fn delete_expired(
        &self,
        user_id: &str,
        provider: &str,
        now: i64,
        audit: &AuditRecord,
    ) -> impl Future<Output = Result<bool>> + Send;
}

/// Reading the audit trail the writes of [`KeyStore`](super::KeyStore) leave:
/// [`Vault::audit_trail`](crate::Vault::audit_trail) and
/// [`Vault::audit_log`](crate::Vault::audit_log). Announced by
/// [`KeyStore::audit`](super::KeyStore::audit).
pub trait AuditStore: Send + Sync {
    /// Audit records matching `query`, in the order they were written.
    fn audit_trail(
        &self,
        query: &AuditQuery,
    ) -> impl Future<Output = Result<Vec<AuditRecord>>> + Send;
}

/// Keys of teams and of the platform, and each team's policy: what
/// [`Vault::put_for`](crate::Vault::put_for) and
/// [`Vault::keys_for_member`](crate::Vault::keys_for_member) need. Announced by
/// [`KeyStore::owners`](super::KeyStore::owners).
///
/// Each method is its [`KeyStore`](super::KeyStore) counterpart for an owner of any
/// kind: `owner_id` (and a row's `user_id`) is the owner's id within `kind`, and owners of
/// different kinds never share a row, even with equal ids. A change to a team's keys or
/// policy must reach the change feed as a change of that team.
pub trait OwnerStore: Send + Sync {
    /// All rows of one owner, expired ones included, ordered by provider.
    fn fetch_owner(
        &self,
        kind: OwnerKind,
        owner_id: &str,
    ) -> impl Future<Output = Result<Vec<StoredKey>>> + Send;

    /// [`KeyStore::upsert`](super::KeyStore::upsert) for an owner of `kind`.
    fn upsert_owner(
        &self,
        kind: OwnerKind,
        row: &StoredKey,
        audit: &AuditRecord,
        max_providers: u32,
    ) -> impl Future<Output = Result<AuditAction>> + Send;

    /// [`KeyStore::delete`](super::KeyStore::delete) for an owner of `kind`.
    fn delete_owner(
        &self,
        kind: OwnerKind,
        owner_id: &str,
        provider: Option<&str>,
        audit: &AuditRecord,
    ) -> impl Future<Output = Result<Vec<String>>> + Send;

    /// [`ExpiryStore::set_expiry`] for an owner of `kind`.
    fn set_owner_expiry(
        &self,
        kind: OwnerKind,
        owner_id: &str,
        provider: &str,
        expires_at: Option<i64>,
        audit: &AuditRecord,
    ) -> impl Future<Output = Result<bool>> + Send;

    /// [`ExpiryStore::expired_keys`] over the rows of `kind` only: what
    /// [`Vault::purge_expired`](crate::Vault::purge_expired) sweeps for teams and the
    /// platform.
    fn expired_owner_keys(
        &self,
        kind: OwnerKind,
        now: i64,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<(String, String)>>> + Send;

    /// [`ExpiryStore::delete_expired`] for an owner of `kind`.
    fn delete_owner_expired(
        &self,
        kind: OwnerKind,
        owner_id: &str,
        provider: &str,
        now: i64,
        audit: &AuditRecord,
    ) -> impl Future<Output = Result<bool>> + Send;

    /// Whether a team lets its members' own keys win (`Some(true)`), serves only its own
    /// keys (`Some(false)`), or has no policy stored (`None`).
    fn team_policy(&self, team_id: &str) -> impl Future<Output = Result<Option<bool>>> + Send;

    /// Stores a team's policy, writing `audit` (action
    /// [`AuditAction::PolicyChange`](crate::AuditAction::PolicyChange), provider empty)
    /// in the same transaction.
    fn set_team_policy(
        &self,
        team_id: &str,
        members_keys: bool,
        audit: &AuditRecord,
    ) -> impl Future<Output = Result<()>> + Send;

    /// [`RotationStore::keys_page`] over the rows of `kind` only (`(owner id, provider)`
    /// order): the pages of a rewrap or a verification of teams' and the platform's keys.
    fn owner_keys_page(
        &self,
        kind: OwnerKind,
        after: Option<(&str, &str)>,
        limit: u32,
        exclude_key_id: Option<&str>,
    ) -> impl Future<Output = Result<Vec<StoredKey>>> + Send;

    /// [`RotationStore::reseal`] for a row of `kind`.
    fn reseal_owner(
        &self,
        kind: OwnerKind,
        old: &StoredKey,
        key_id: &str,
        sealed: &[u8],
        audit: &AuditRecord,
    ) -> impl Future<Output = Result<bool>> + Send;
}

/// The capability a store does not have: no value exists, so no method runs.
pub(super) enum Never {}

impl RotationStore for Never {
    async fn keys_page(
        &self,
        _: Option<(&str, &str)>,
        _: u32,
        _: Option<&str>,
    ) -> Result<Vec<StoredKey>> {
        match *self {}
    }
    async fn reseal(&self, _: &StoredKey, _: &str, _: &[u8], _: &AuditRecord) -> Result<bool> {
        match *self {}
    }
    async fn remove_check_record(&self, _: &str) -> Result<bool> {
        match *self {}
    }
}

impl ExpiryStore for Never {
    async fn set_expiry(&self, _: &str, _: &str, _: Option<i64>, _: &AuditRecord) -> Result<bool> {
        match *self {}
    }
    async fn expired_keys(&self, _: i64, _: u32) -> Result<Vec<(String, String)>> {
        match *self {}
    }
    async fn delete_expired(&self, _: &str, _: &str, _: i64, _: &AuditRecord) -> Result<bool> {
        match *self {}
    }
}

impl OwnerStore for Never {
    async fn fetch_owner(&self, _: OwnerKind, _: &str) -> Result<Vec<StoredKey>> {
        match *self {}
    }
    async fn upsert_owner(
        &self,
        _: OwnerKind,
        _: &StoredKey,
        _: &AuditRecord,
        _: u32,
    ) -> Result<AuditAction> {
        match *self {}
    }
    async fn delete_owner(
        &self,
        _: OwnerKind,
        _: &str,
        _: Option<&str>,
        _: &AuditRecord,
    ) -> Result<Vec<String>> {
        match *self {}
    }
    async fn set_owner_expiry(
        &self,
        _: OwnerKind,
        _: &str,
        _: &str,
        _: Option<i64>,
        _: &AuditRecord,
    ) -> Result<bool> {
        match *self {}
    }
    async fn expired_owner_keys(
        &self,
        _: OwnerKind,
        _: i64,
        _: u32,
    ) -> Result<Vec<(String, String)>> {
        match *self {}
    }
    async fn delete_owner_expired(
        &self,
        _: OwnerKind,
        _: &str,
        _: &str,
        _: i64,
        _: &AuditRecord,
    ) -> Result<bool> {
        match *self {}
    }
    async fn team_policy(&self, _: &str) -> Result<Option<bool>> {
        match *self {}
    }
    async fn set_team_policy(&self, _: &str, _: bool, _: &AuditRecord) -> Result<()> {
        match *self {}
    }
    async fn owner_keys_page(
        &self,
        _: OwnerKind,
        _: Option<(&str, &str)>,
        _: u32,
        _: Option<&str>,
    ) -> Result<Vec<StoredKey>> {
        match *self {}
    }
    async fn reseal_owner(
        &self,
        _: OwnerKind,
        _: &StoredKey,
        _: &str,
        _: &[u8],
        _: &AuditRecord,
    ) -> Result<bool> {
        match *self {}
    }
}

impl AuditStore for Never {
    async fn audit_trail(&self, _: &AuditQuery) -> Result<Vec<AuditRecord>> {
        match *self {}
    }
}

/// [`RotationStore`] made object safe (see `DynKeyStore`).
pub(crate) trait DynRotation: Send + Sync {
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
    fn remove_check_record<'a>(&'a self, key_id: &'a str) -> BoxFuture<'a, Result<bool>>;
}

impl<S: RotationStore> DynRotation for S {
    fn keys_page<'a>(
        &'a self,
        after: Option<(&'a str, &'a str)>,
        limit: u32,
        exclude_key_id: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Vec<StoredKey>>> {
        Box::pin(RotationStore::keys_page(self, after, limit, exclude_key_id))
    }
    fn reseal<'a>(
        &'a self,
        old: &'a StoredKey,
        key_id: &'a str,
        sealed: &'a [u8],
        audit: &'a AuditRecord,
    ) -> BoxFuture<'a, Result<bool>> {
        Box::pin(RotationStore::reseal(self, old, key_id, sealed, audit))
    }
    fn remove_check_record<'a>(&'a self, key_id: &'a str) -> BoxFuture<'a, Result<bool>> {
        Box::pin(RotationStore::remove_check_record(self, key_id))
    }
}

/// [`ExpiryStore`] made object safe (see `DynKeyStore`).
pub(crate) trait DynExpiry: Send + Sync {
    fn set_expiry<'a>(
        &'a self,
        user_id: &'a str,
        provider: &'a str,
        expires_at: Option<i64>,
        audit: &'a AuditRecord,
    ) -> BoxFuture<'a, Result<bool>>;
    fn expired_keys(&self, now: i64, limit: u32) -> BoxFuture<'_, Result<Vec<(String, String)>>>;
    fn delete_expired<'a>(
        &'a self,
        user_id: &'a str,
        provider: &'a str,
        now: i64,
        audit: &'a AuditRecord,
    ) -> BoxFuture<'a, Result<bool>>;
}

impl<S: ExpiryStore> DynExpiry for S {
    fn set_expiry<'a>(
        &'a self,
        user_id: &'a str,
        provider: &'a str,
        expires_at: Option<i64>,
        audit: &'a AuditRecord,
    ) -> BoxFuture<'a, Result<bool>> {
        Box::pin(ExpiryStore::set_expiry(
            self, user_id, provider, expires_at, audit,
        ))
    }
    fn expired_keys(&self, now: i64, limit: u32) -> BoxFuture<'_, Result<Vec<(String, String)>>> {
        Box::pin(ExpiryStore::expired_keys(self, now, limit))
    }
    fn delete_expired<'a>(
        &'a self,
        user_id: &'a str,
        provider: &'a str,
        now: i64,
        audit: &'a AuditRecord,
    ) -> BoxFuture<'a, Result<bool>> {
        Box::pin(ExpiryStore::delete_expired(
            self, user_id, provider, now, audit,
        ))
    }
}

/// [`AuditStore`] made object safe (see `DynKeyStore`).
pub(crate) trait DynAudit: Send + Sync {
    fn audit_trail<'a>(&'a self, query: &'a AuditQuery) -> BoxFuture<'a, Result<Vec<AuditRecord>>>;
}

impl<S: AuditStore> DynAudit for S {
    fn audit_trail<'a>(&'a self, query: &'a AuditQuery) -> BoxFuture<'a, Result<Vec<AuditRecord>>> {
        Box::pin(AuditStore::audit_trail(self, query))
    }
}

/// [`OwnerStore`] made object safe (see `DynKeyStore`).
pub(crate) trait DynOwner: Send + Sync {
    fn fetch_owner<'a>(
        &'a self,
        kind: OwnerKind,
        owner_id: &'a str,
    ) -> BoxFuture<'a, Result<Vec<StoredKey>>>;
    fn upsert_owner<'a>(
        &'a self,
        kind: OwnerKind,
        row: &'a StoredKey,
        audit: &'a AuditRecord,
        max_providers: u32,
    ) -> BoxFuture<'a, Result<AuditAction>>;
    fn delete_owner<'a>(
        &'a self,
        kind: OwnerKind,
        owner_id: &'a str,
        provider: Option<&'a str>,
        audit: &'a AuditRecord,
    ) -> BoxFuture<'a, Result<Vec<String>>>;
    fn set_owner_expiry<'a>(
        &'a self,
        kind: OwnerKind,
        owner_id: &'a str,
        provider: &'a str,
        expires_at: Option<i64>,
        audit: &'a AuditRecord,
    ) -> BoxFuture<'a, Result<bool>>;
    fn expired_owner_keys(
        &self,
        kind: OwnerKind,
        now: i64,
        limit: u32,
    ) -> BoxFuture<'_, Result<Vec<(String, String)>>>;
    fn delete_owner_expired<'a>(
        &'a self,
        kind: OwnerKind,
        owner_id: &'a str,
        provider: &'a str,
        now: i64,
        audit: &'a AuditRecord,
    ) -> BoxFuture<'a, Result<bool>>;
    fn team_policy<'a>(&'a self, team_id: &'a str) -> BoxFuture<'a, Result<Option<bool>>>;
    fn set_team_policy<'a>(
        &'a self,
        team_id: &'a str,
        members_keys: bool,
        audit: &'a AuditRecord,
    ) -> BoxFuture<'a, Result<()>>;
    fn owner_keys_page<'a>(
        &'a self,
        kind: OwnerKind,
        after: Option<(&'a str, &'a str)>,
        limit: u32,
        exclude_key_id: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Vec<StoredKey>>>;
    fn reseal_owner<'a>(
        &'a self,
        kind: OwnerKind,
        old: &'a StoredKey,
        key_id: &'a str,
        sealed: &'a [u8],
        audit: &'a AuditRecord,
    ) -> BoxFuture<'a, Result<bool>>;
}

impl<S: OwnerStore> DynOwner for S {
    fn fetch_owner<'a>(
        &'a self,
        kind: OwnerKind,
        owner_id: &'a str,
    ) -> BoxFuture<'a, Result<Vec<StoredKey>>> {
        Box::pin(OwnerStore::fetch_owner(self, kind, owner_id))
    }
    fn upsert_owner<'a>(
        &'a self,
        kind: OwnerKind,
        row: &'a StoredKey,
        audit: &'a AuditRecord,
        max_providers: u32,
    ) -> BoxFuture<'a, Result<AuditAction>> {
        Box::pin(OwnerStore::upsert_owner(
            self,
            kind,
            row,
            audit,
            max_providers,
        ))
    }
    fn delete_owner<'a>(
        &'a self,
        kind: OwnerKind,
        owner_id: &'a str,
        provider: Option<&'a str>,
        audit: &'a AuditRecord,
    ) -> BoxFuture<'a, Result<Vec<String>>> {
        Box::pin(OwnerStore::delete_owner(
            self, kind, owner_id, provider, audit,
        ))
    }
    fn set_owner_expiry<'a>(
        &'a self,
        kind: OwnerKind,
        owner_id: &'a str,
        provider: &'a str,
        expires_at: Option<i64>,
        audit: &'a AuditRecord,
    ) -> BoxFuture<'a, Result<bool>> {
        Box::pin(OwnerStore::set_owner_expiry(
            self, kind, owner_id, provider, expires_at, audit,
        ))
    }
    fn expired_owner_keys(
        &self,
        kind: OwnerKind,
        now: i64,
        limit: u32,
    ) -> BoxFuture<'_, Result<Vec<(String, String)>>> {
        Box::pin(OwnerStore::expired_owner_keys(self, kind, now, limit))
    }
    fn delete_owner_expired<'a>(
        &'a self,
        kind: OwnerKind,
        owner_id: &'a str,
        provider: &'a str,
        now: i64,
        audit: &'a AuditRecord,
    ) -> BoxFuture<'a, Result<bool>> {
        Box::pin(OwnerStore::delete_owner_expired(
            self, kind, owner_id, provider, now, audit,
        ))
    }
    fn team_policy<'a>(&'a self, team_id: &'a str) -> BoxFuture<'a, Result<Option<bool>>> {
        Box::pin(OwnerStore::team_policy(self, team_id))
    }
    fn set_team_policy<'a>(
        &'a self,
        team_id: &'a str,
        members_keys: bool,
        audit: &'a AuditRecord,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(OwnerStore::set_team_policy(
            self,
            team_id,
            members_keys,
            audit,
        ))
    }
    fn owner_keys_page<'a>(
        &'a self,
        kind: OwnerKind,
        after: Option<(&'a str, &'a str)>,
        limit: u32,
        exclude_key_id: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Vec<StoredKey>>> {
        Box::pin(OwnerStore::owner_keys_page(
            self,
            kind,
            after,
            limit,
            exclude_key_id,
        ))
    }
    fn reseal_owner<'a>(
        &'a self,
        kind: OwnerKind,
        old: &'a StoredKey,
        key_id: &'a str,
        sealed: &'a [u8],
        audit: &'a AuditRecord,
    ) -> BoxFuture<'a, Result<bool>> {
        Box::pin(OwnerStore::reseal_owner(
            self, kind, old, key_id, sealed, audit,
        ))
    }
}
