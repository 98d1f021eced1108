//! Changing keys: store, replace, expire, delete, purge. Each change runs to its end in
//! a task of its own, with its audit record in the same transaction, then invalidates
//! the user's cached keys.

use std::sync::Arc;
use std::time::SystemTime;

use super::{unix_ms, Inner, Owner, Vault, PAGE};
use crate::audit::{AuditAction, AuditRecord};
use crate::crypto::UserCipher;
use crate::error::{Error, ErrorKind, Result};
use crate::metrics::{self, Scope, Source};
use crate::owner::OwnerKind;
use crate::store::StoredKey;
use crate::validate;

impl Vault {
    /// Stores a user's key for a provider, replacing any earlier one.
    ///
    /// The provider name is lowercased; the secret is sealed under the active master key
    /// and written with its audit record in one transaction. Returns
    /// [`AuditAction::Put`] or [`AuditAction::Replace`].
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidUserId`], [`ErrorKind::InvalidProvider`] or
    /// [`ErrorKind::InvalidSecret`] before anything is written;
    /// [`ErrorKind::TooManyProviders`] when the provider is new to the user and he
    /// already has [`max_providers_per_user`](crate::VaultBuilder::max_providers_per_user)
    /// keys, and [`ErrorKind::Store`] when the database fails, in both cases with
    /// nothing written.
    pub async fn put(&self, user_id: &str, provider: &str, secret: &str) -> Result<AuditAction> {
        self.write(Owner::user(user_id), provider, secret, None)
            .await
    }

    /// Stores a key that stops being served at `expires_at`, e.g. a key pasted for one
    /// session or a trial key. Otherwise as [`put`](Self::put).
    ///
    /// # Errors
    ///
    /// As [`put`](Self::put).
    pub async fn put_expiring(
        &self,
        user_id: &str,
        provider: &str,
        secret: &str,
        expires_at: SystemTime,
    ) -> Result<AuditAction> {
        self.write(Owner::user(user_id), provider, secret, Some(expires_at))
            .await
    }

    /// Stores the keys of a `.env` text for one user, each replacing the user's earlier
    /// key for its provider, all expiring at `expires_at` when given (e.g. the end of the
    /// session the text was uploaded in). Returns how many keys were stored. See
    /// [`env_file`](crate::env_file) for an example.
    ///
    /// Every key is checked first, the vault's [format and live checks](crate::check)
    /// included, and so is the cap on providers per user: a key that fails stops the call
    /// before anything is written. Then the keys are written one by one (each with its
    /// audit record, in a task of its own that runs to its end even if the caller goes
    /// away, as [`put`](Self::put)).
    ///
    /// The store writes one key per transaction, so a database failure midway leaves
    /// the earlier keys written, and maybe the failing one too (a connection lost during
    /// its commit). The vault then takes them all back, newest first: each is restored to
    /// the user's key before the call (or deleted, if there was none), unless another
    /// write replaced it meanwhile, and audited as such. The error says how many keys were
    /// restored, how many were left because another write replaced them, and how many
    /// could not be restored (the database is gone); calling again with the same keys
    /// completes the upload.
    ///
    /// The take-back checks each key and then restores it in two steps, one right after
    /// the other, because the store has no compare-and-swap: a concurrent write to the
    /// same user and provider that lands in the instant between the check and the
    /// restore is overwritten by the restore.
    ///
    /// # Errors
    ///
    /// Before anything is written: [`ErrorKind::InvalidUserId`];
    /// [`ErrorKind::InvalidSecret`] or [`ErrorKind::KeyRejected`] when a key fails a
    /// check (the message names its line and variable); [`ErrorKind::TooManyProviders`]
    /// when the keys would take the user past the cap. [`ErrorKind::Store`] (or
    /// `TooManyProviders`, when a concurrent write took the room) when writing fails, as
    /// above.
    pub async fn put_env_keys(
        &self,
        user_id: &str,
        keys: &crate::env_file::EnvKeys,
        expires_at: Option<SystemTime>,
    ) -> Result<usize> {
        let user_id = validate::user_id(user_id)?;
        for found in keys.found() {
            let (provider, secret) = (found.key.provider(), found.key.expose_secret());
            validate::secret(secret)?;
            if let Some(check) = self.inner.checks.get(provider) {
                check.check_format(secret).map_err(|reason| {
                    Error::new(ErrorKind::InvalidSecret)
                        .with_detail(format!("{}: {provider}: {reason}", found.origin))
                })?;
            }
        }
        for found in keys.found() {
            let (provider, secret) = (found.key.provider(), found.key.expose_secret());
            if let Some(check) = self.inner.checks.get(provider) {
                check.check_live(secret).await.map_err(|reason| {
                    Error::new(ErrorKind::KeyRejected)
                        .with_detail(format!("{}: {provider}: {reason}", found.origin))
                })?;
            }
        }
        if keys.is_empty() {
            return Ok(0);
        }
        let keyring = self.inner.keyring.current();
        let cipher = UserCipher::new(keyring.active(), user_id);
        let now = unix_ms(SystemTime::now());
        let rows: Vec<StoredKey> = keys
            .iter()
            .map(|key| {
                let (provider, secret) = (key.provider(), key.expose_secret());
                StoredKey {
                    user_id: user_id.to_owned(),
                    provider: provider.to_owned(),
                    key_id: cipher.key_id().to_owned(),
                    sealed: cipher.seal(user_id, provider, secret.as_bytes()),
                    hint: validate::mask(secret),
                    fingerprint: self.inner.secret.fingerprint(secret),
                    created_at: now,
                    updated_at: now,
                    expires_at: expires_at.map(unix_ms),
                }
            })
            .collect();
        let audit = self.audit(user_id, now);
        let user_ref = audit.user_ref.clone();
        let user = user_id.to_owned();
        let stored = self
            .detached_write(Some(Owner::user(user_id)), move |inner| async move {
                let max = inner.max_providers;
                let before = inner.store.fetch_user(&user).await?;
                let new = rows
                    .iter()
                    .filter(|r| !before.iter().any(|b| b.provider == r.provider))
                    .count();
                if new > 0 && before.len() + new > max as usize {
                    return Err(Error::new(ErrorKind::TooManyProviders)
                        .with_detail(format!("at most {max} providers per user")));
                }
                for (written, row) in rows.iter().enumerate() {
                    if let Err(e) = inner.store.upsert(row, &audit, max).await {
                        // The failing write may have landed (a reply lost after its
                        // commit): take it back too; if it did not, its row is as before
                        // and `take_back` leaves it.
                        let undone = take_back(&inner, &before, &rows[..=written], &audit).await;
                        let again = if undone.failed > 0 {
                            "; store the keys again to complete the upload"
                        } else {
                            ""
                        };
                        return Err(Error::new(e.kind())
                            .with_detail(format!(
                                "writing key {} of {} failed ({e}); taking back the keys \
                                 written: {} restored, {} left because another write \
                                 replaced them, {} could not be restored{again}",
                                written + 1,
                                rows.len(),
                                undone.restored,
                                undone.replaced,
                                undone.failed,
                            ))
                            .with_source(e));
                    }
                }
                Ok(rows.len())
            })
            .await?;
        tracing::debug!(user_ref = %user_ref, stored, "stored the keys of a .env text");
        Ok(stored)
    }

    /// Stores a key of any owner: [`put`](Self::put) for a user,
    /// [`put_for`](Self::put_for) for a team or the platform.
    pub(super) async fn write(
        &self,
        owner: Owner<'_>,
        provider: &str,
        secret: &str,
        expires_at: Option<SystemTime>,
    ) -> Result<AuditAction> {
        let (kind, user_id) = owner.validated()?;
        if kind != OwnerKind::User {
            self.inner.owners()?;
        }
        let provider = validate::provider(provider)?;
        validate::secret(secret)?;
        if let Some(check) = self.inner.checks.get(provider.as_ref()) {
            check.check_format(secret).map_err(|reason| {
                Error::new(ErrorKind::InvalidSecret).with_detail(format!("{provider}: {reason}"))
            })?;
            check.check_live(secret).await.map_err(|reason| {
                Error::new(ErrorKind::KeyRejected).with_detail(format!("{provider}: {reason}"))
            })?;
        }
        let keyring = self.inner.keyring.current();
        let cipher = UserCipher::for_owner(keyring.active(), kind, user_id);
        let now = unix_ms(SystemTime::now());
        let row = StoredKey {
            user_id: user_id.to_owned(),
            provider: provider.clone().into_owned(),
            key_id: cipher.key_id().to_owned(),
            sealed: cipher.seal(user_id, &provider, secret.as_bytes()),
            hint: validate::mask(secret),
            fingerprint: self.inner.secret.fingerprint(secret),
            created_at: now,
            updated_at: now,
            expires_at: expires_at.map(unix_ms),
        };
        let audit = self.owner_audit(kind, user_id, now);
        let user_ref = audit.user_ref.clone();
        let action = self
            .detached_write(Some(Owner { kind, id: user_id }), move |inner| async move {
                let max = inner.max_providers;
                match kind {
                    OwnerKind::User => inner.store.upsert(&row, &audit, max).await,
                    kind => inner.owners()?.upsert_owner(kind, &row, &audit, max).await,
                }
            })
            .await
            .map_err(|e| match e.kind() {
                ErrorKind::TooManyProviders => Error::new(ErrorKind::TooManyProviders).with_detail(
                    format!("at most {} providers per user", self.inner.max_providers),
                ),
                _ => e,
            })?;
        tracing::debug!(owner = kind.as_str(), user_ref = %user_ref, provider = %provider, action = action.as_str(), "stored a provider key");
        Ok(action)
    }

    /// Runs a write to its end in a task of its own, then forgets `owner`'s cached
    /// keys, whatever the outcome.
    ///
    /// A request whose client disconnects is dropped at its next `.await`; a write
    /// dropped inside its transaction can leave a pooled connection in that transaction
    /// (for SQLite, holding the write lock), and a cache invalidated before a commit that
    /// still lands could be refilled with the old keys. In its own task, the write
    /// commits or rolls back, and the invalidation comes after it, even if no one waits.
    pub(crate) async fn detached_write<T, F, Fut>(
        &self,
        owner: Option<Owner<'_>>,
        write: F,
    ) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(Arc<Inner>) -> Fut,
        Fut: std::future::Future<Output = Result<T>> + Send + 'static,
    {
        let inner = self.inner.clone();
        let owner = owner.map(|o| (o.kind, o.id.to_owned()));
        let write = write(self.inner.clone());
        tokio::spawn(async move {
            let result = write.await;
            if let Some((kind, id)) = owner {
                inner.forget(kind, &id);
                metrics::invalidated(Source::Local, Scope::User);
            }
            result
        })
        .await
        .map_err(|e| {
            Error::new(ErrorKind::Store)
                .with_detail("a write task failed")
                .with_source(e)
        })?
    }

    pub(crate) fn audit(&self, user_id: &str, at: i64) -> AuditRecord {
        self.owner_audit(OwnerKind::User, user_id, at)
    }

    /// An audit record naming an owner of any kind by its keyed reference.
    pub(crate) fn owner_audit(&self, kind: OwnerKind, owner_id: &str, at: i64) -> AuditRecord {
        AuditRecord {
            at,
            user_ref: self.inner.secret.owner_ref(kind, owner_id),
            provider: String::new(),
            action: AuditAction::Put,
            actor: self.actor.to_string(),
        }
    }

    /// Deletes one key of a user; returns whether there was one.
    ///
    /// # Errors
    ///
    /// Input and store errors as [`put`](Self::put).
    pub async fn delete(&self, user_id: &str, provider: &str) -> Result<bool> {
        let user_id = validate::user_id(user_id)?;
        let provider = validate::provider(provider)?;
        Ok(!self.remove(user_id, Some(&provider)).await?.is_empty())
    }

    /// Deletes all keys of a user; returns how many there were.
    ///
    /// # Errors
    ///
    /// Input and store errors as [`put`](Self::put).
    pub async fn delete_all(&self, user_id: &str) -> Result<usize> {
        let user_id = validate::user_id(user_id)?;
        Ok(self.remove(user_id, None).await?.len())
    }

    async fn remove(&self, user_id: &str, provider: Option<&str>) -> Result<Vec<String>> {
        let audit = self.audit(user_id, unix_ms(SystemTime::now()));
        let user_ref = audit.user_ref.clone();
        let (user, provider) = (user_id.to_owned(), provider.map(str::to_owned));
        let deleted = self
            .detached_write(Some(Owner::user(user_id)), move |inner| async move {
                inner.store.delete(&user, provider.as_deref(), &audit).await
            })
            .await?;
        tracing::debug!(user_ref = %user_ref, deleted = deleted.len(), "deleted provider keys");
        Ok(deleted)
    }

    /// Sets when a key stops being served, or clears it back to never (`None`). Takes
    /// effect at once in this process, its cache included; other instances see it when
    /// their cached entry for the user expires (the cache TTL). Returns whether the key
    /// exists.
    ///
    /// # Errors
    ///
    /// Input and store errors as [`put`](Self::put).
    ///
    /// [`ErrorKind::Unsupported`] when the store is not an [`ExpiryStore`](crate::store::ExpiryStore).
    pub async fn set_expiry(
        &self,
        user_id: &str,
        provider: &str,
        expires_at: Option<SystemTime>,
    ) -> Result<bool> {
        let user_id = validate::user_id(user_id)?;
        let provider = validate::provider(provider)?;
        self.inner.expiry()?;
        let audit = self.audit(user_id, unix_ms(SystemTime::now()));
        let (user, provider) = (user_id.to_owned(), provider.into_owned());
        self.detached_write(Some(Owner::user(user_id)), move |inner| async move {
            inner
                .expiry()?
                .set_expiry(&user, &provider, expires_at.map(unix_ms), &audit)
                .await
        })
        .await
    }

    /// Deletes every key whose expiry has passed, users', teams' and the platform's
    /// alike, auditing each as [`AuditAction::Purge`](crate::AuditAction::Purge) under
    /// its owner's reference; returns how many. Expired keys are never served anyway:
    /// this reclaims the rows. Run it on a schedule.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Store`] when the database fails; keys purged until then stay purged.
    ///
    /// [`ErrorKind::Unsupported`] when the store is not an [`ExpiryStore`](crate::store::ExpiryStore).
    /// A store that is an `ExpiryStore` but no [`OwnerStore`](crate::store::OwnerStore)
    /// has only users' keys, and those are purged.
    pub async fn purge_expired(&self) -> Result<usize> {
        self.inner.expiry()?;
        let mut purged = self.purge_expired_of(OwnerKind::User).await?;
        if self.inner.owners().is_ok() {
            purged += self.purge_expired_of(OwnerKind::Team).await?;
            purged += self.purge_expired_of(OwnerKind::Platform).await?;
        }
        tracing::info!(purged, "purged expired keys");
        Ok(purged)
    }

    /// [`purge_expired`](Self::purge_expired) for the owners of one kind.
    async fn purge_expired_of(&self, kind: OwnerKind) -> Result<usize> {
        let mut purged = 0;
        loop {
            let now = unix_ms(SystemTime::now());
            let expired = match kind {
                OwnerKind::User => self.inner.expiry()?.expired_keys(now, PAGE).await?,
                kind => {
                    let owners = self.inner.owners()?;
                    owners.expired_owner_keys(kind, now, PAGE).await?
                }
            };
            if expired.is_empty() {
                break;
            }
            let mut progressed = false;
            for (owner_id, provider) in &expired {
                let audit = self.owner_audit(kind, owner_id, now);
                let (owner, provider) = (owner_id.clone(), provider.clone());
                let deleted = self
                    .detached_write(
                        Some(Owner { kind, id: owner_id }),
                        move |inner| async move {
                            match kind {
                                OwnerKind::User => {
                                    let expiry = inner.expiry()?;
                                    expiry.delete_expired(&owner, &provider, now, &audit).await
                                }
                                kind => {
                                    let owners = inner.owners()?;
                                    owners
                                        .delete_owner_expired(kind, &owner, &provider, now, &audit)
                                        .await
                                }
                            }
                        },
                    )
                    .await?;
                if deleted {
                    purged += 1;
                    progressed = true;
                }
            }
            if !progressed {
                // Every key of the page was changed meanwhile (extended or replaced).
                break;
            }
        }
        Ok(purged)
    }
}

/// What [`take_back`] did with the keys it was given. A key found as it was before the
/// call (its write never landed) counts in none of these.
#[derive(Default)]
struct TakenBack {
    /// Restored to the user's earlier key, or deleted if he had none.
    restored: usize,
    /// Left alone: another write replaced or deleted it since.
    replaced: usize,
    /// Still written: checking or restoring it failed.
    failed: usize,
}

/// What [`take_back`] found, or did, for one key.
enum Undo {
    /// The row is as before the call: the write never landed.
    AsBefore,
    /// Another write replaced or deleted the row since: left alone.
    Replaced,
    /// Put back to the earlier row, or deleted.
    Restored,
}

/// Takes back the keys [`Vault::put_env_keys`] wrote (or may have written) before a
/// failure, newest first: each goes back to its row in `before`, or is deleted if it had
/// none. A key whose row is no longer the one written (its sealed bytes differ: every
/// seal has a fresh nonce) is left alone: either its write never landed (the row is as
/// in `before`, or absent as there), or another write replaced it since.
///
/// Each key is checked right before it is restored, so the window a concurrent write
/// can fall into is one round trip; closing it needs a compare-and-swap in the store.
async fn take_back(
    inner: &Inner,
    before: &[StoredKey],
    written: &[StoredKey],
    audit: &AuditRecord,
) -> TakenBack {
    let mut taken = TakenBack::default();
    for row in written.iter().rev() {
        let old = before.iter().find(|b| b.provider == row.provider);
        let undone = async {
            let current = inner.store.fetch_key(&row.user_id, &row.provider).await?;
            match current {
                Some(c) if c.sealed == row.sealed => {}
                // Never landed: as it was before the call.
                None if old.is_none() => return Ok(Undo::AsBefore),
                Some(c) if old.is_some_and(|o| o.sealed == c.sealed) => return Ok(Undo::AsBefore),
                _ => return Ok(Undo::Replaced),
            }
            match old {
                Some(old) => inner
                    .store
                    .upsert(old, audit, inner.max_providers)
                    .await
                    .map(drop)?,
                None => inner
                    .store
                    .delete(&row.user_id, Some(&row.provider), audit)
                    .await
                    .map(drop)?,
            }
            Ok::<_, Error>(Undo::Restored)
        };
        match undone.await {
            Ok(Undo::AsBefore) => {}
            Ok(Undo::Restored) => taken.restored += 1,
            Ok(Undo::Replaced) => taken.replaced += 1,
            Err(_) => taken.failed += 1,
        }
    }
    taken
}
