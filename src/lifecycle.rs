//! The long life of a key store: master-key rotation, expiring keys, the audit log.
//!
//! # Rotating the master key, without downtime
//!
//! 1. Generate a key (`MasterKey::generate("k2")`) and put it **first** in the keyring,
//!    keeping the old one after it: `BYOK_MASTER_KEYS="k2:...,k1:..."`. Deploy. New
//!    writes are sealed under `k2`; rows under `k1` still open. No migration.
//! 2. Run [`Vault::rewrap`] (or `tower-byok rewrap`): it re-seals every row still under
//!    another key, in batches, while the application serves traffic. Killed half-way, it
//!    continues where it stopped when run again: each row is re-sealed in its own
//!    transaction, and only if nobody changed it meanwhile.
//! 3. Run [`Vault::verify`]: it opens every row and reports any it cannot.
//! 4. Retire `k1` with [`Vault::retire_key`], which refuses while any row still needs
//!    it, then remove `k1` from the keyring and deploy.
//!
//! A vault refuses to open with a keyring that lacks a key some rows are sealed under
//! ([`ErrorKind::WrongMasterKey`]), so skipping step 2 is caught at start-up.

use std::fmt;
use std::time::SystemTime;

use crate::crypto::UserCipher;
use crate::error::{Error, ErrorKind, Result};
use crate::store::{AuditQuery, AuditRecord, StoredKey};
use crate::validate;
use crate::vault::{unix_ms, Vault};

/// How far a long operation has got: rows handled so far, of about how many.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Progress {
    /// Rows handled so far.
    pub done: u64,
    /// Rows to handle, as counted when the operation began.
    pub total: u64,
}

/// A stored key that could not be opened, named without its user id.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RowFailure {
    /// The user, as a keyed hash ([`Vault::user_ref`]).
    pub user_ref: String,
    /// The provider.
    pub provider: String,
    /// The master key id the row names.
    pub key_id: String,
    /// Why it failed: [`ErrorKind::Decrypt`] or [`ErrorKind::UnknownMasterKey`].
    pub kind: ErrorKind,
}

/// What [`Vault::rewrap`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RewrapReport {
    /// Rows re-sealed under the active key.
    pub resealed: u64,
    /// Rows replaced or deleted by someone else while the rewrap ran: left as they are
    /// (a write seals under the active key anyway).
    pub changed_meanwhile: u64,
    /// Rows that could not be opened, and were left untouched.
    pub failed: Vec<RowFailure>,
}

/// How many stored keys one master key seals.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct KeyUsage {
    /// The master key id.
    pub key_id: String,
    /// How many rows are sealed under it.
    pub rows: u64,
}

/// What [`Vault::verify`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct VerifyReport {
    /// Rows that opened.
    pub opened: u64,
    /// Rows that did not.
    pub failed: Vec<RowFailure>,
    /// Rows per master key id.
    pub usage: Vec<KeyUsage>,
}

impl VerifyReport {
    /// Whether every row opened.
    pub fn is_ok(&self) -> bool {
        self.failed.is_empty()
    }
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} keys open, {} failed", self.opened, self.failed.len())?;
        for usage in &self.usage {
            write!(f, "; {} under `{}`", usage.rows, usage.key_id)?;
        }
        Ok(())
    }
}

const PAGE: u32 = 500;

impl Vault {
    /// How many stored keys each master key seals.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Store`] when the database fails.
    pub async fn key_usage(&self) -> Result<Vec<KeyUsage>> {
        Ok(self
            .inner
            .store
            .key_usage()
            .await?
            .into_iter()
            .map(|(key_id, rows)| KeyUsage {
                key_id,
                rows: u64::try_from(rows).unwrap_or(0),
            })
            .collect())
    }

    /// Re-seals every row not under the active master key, `batch` rows at a time,
    /// calling `progress` after each batch. Resumable and safe while serving: see the
    /// [module docs](crate::lifecycle). Each re-seal is audited as
    /// [`AuditAction::Rewrap`](crate::AuditAction::Rewrap).
    ///
    /// ```
    /// # use tower_byok::{Keyring, MasterKey, SqliteStore, Vault};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), tower_byok::Error> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let path = dir.path().join("keys.db");
    /// let k1 = MasterKey::generate("k1")?;
    /// let vault = Vault::open(SqliteStore::open(&path).await?, Keyring::new(k1.clone())).await?;
    /// vault.put("alice", "openai", "sk-alice-0123456789").await?;
    /// drop(vault);
    ///
    /// // Deploy with k2 active and k1 kept, then rewrap and verify.
    /// let keyring = Keyring::new(MasterKey::generate("k2")?).with_key(k1)?;
    /// let vault = Vault::open(SqliteStore::open(&path).await?, keyring).await?;
    /// let report = vault.rewrap(100, |p| eprintln!("{}/{}", p.done, p.total)).await?;
    /// assert_eq!(report.resealed, 1);
    /// assert!(vault.verify(|_| {}).await?.is_ok());
    /// vault.retire_key("k1").await?; // then drop k1 from the keyring
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Store`] when the database fails; rows handled until then stay done.
    pub async fn rewrap(
        &self,
        batch: u32,
        mut progress: impl FnMut(Progress),
    ) -> Result<RewrapReport> {
        let active = self.inner.keyring.active();
        let total = self
            .key_usage()
            .await?
            .iter()
            .filter(|u| u.key_id != active.id())
            .map(|u| u.rows)
            .sum();
        let mut report = RewrapReport::default();
        let mut done = 0;
        let mut after: Option<(String, String)> = None;
        loop {
            let cursor = after.as_ref().map(|(u, p)| (u.as_str(), p.as_str()));
            let page = self
                .inner
                .store
                .keys_page(cursor, batch.max(1), Some(active.id()))
                .await?;
            let Some(last) = page.last() else { break };
            after = Some((last.user_id.clone(), last.provider.clone()));
            for row in &page {
                match self.open_row(row) {
                    Ok(secret) => {
                        let sealed = UserCipher::new(active, &row.user_id).seal(
                            &row.user_id,
                            &row.provider,
                            &secret,
                        );
                        let audit = self.audit(&row.user_id, unix_ms(SystemTime::now()));
                        let (row, key_id) = (row.clone(), active.id().to_owned());
                        // The plaintext is unchanged, so no cache entry needs forgetting.
                        let resealed = self
                            .detached_write(None, move |inner| async move {
                                inner.store.reseal(&row, &key_id, &sealed, &audit).await
                            })
                            .await?;
                        if resealed {
                            report.resealed += 1;
                        } else {
                            report.changed_meanwhile += 1;
                        }
                    }
                    Err(failure) => report.failed.push(failure),
                }
                done += 1;
            }
            progress(Progress { done, total });
        }
        tracing::info!(
            resealed = report.resealed,
            changed_meanwhile = report.changed_meanwhile,
            failed = report.failed.len(),
            active = active.id(),
            "rewrap finished"
        );
        Ok(report)
    }

    /// Opens every stored key (expired ones too) and reports those that fail, with the
    /// number of rows per master key. Changes nothing.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Store`] when the database fails.
    pub async fn verify(&self, mut progress: impl FnMut(Progress)) -> Result<VerifyReport> {
        let usage = self.key_usage().await?;
        let total = usage.iter().map(|u| u.rows).sum();
        let mut report = VerifyReport {
            usage,
            ..VerifyReport::default()
        };
        let mut after: Option<(String, String)> = None;
        let mut done = 0;
        loop {
            let cursor = after.as_ref().map(|(u, p)| (u.as_str(), p.as_str()));
            let page = self.inner.store.keys_page(cursor, PAGE, None).await?;
            let Some(last) = page.last() else { break };
            after = Some((last.user_id.clone(), last.provider.clone()));
            for row in &page {
                // Served keys must also be UTF-8 (FORMAT.md §7): a row that opens to
                // other bytes fails every request, so it is a failure here too.
                let served =
                    self.open_row(row)
                        .and_then(|plain| match std::str::from_utf8(&plain) {
                            Ok(_) => Ok(()),
                            Err(_) => Err(self.row_failure(row, ErrorKind::Decrypt)),
                        });
                match served {
                    Ok(()) => report.opened += 1,
                    Err(failure) => report.failed.push(failure),
                }
                done += 1;
            }
            progress(Progress { done, total });
        }
        Ok(report)
    }

    fn open_row(
        &self,
        row: &StoredKey,
    ) -> std::result::Result<zeroize::Zeroizing<Vec<u8>>, RowFailure> {
        let failure = |kind| self.row_failure(row, kind);
        let master = self
            .inner
            .keyring
            .get(&row.key_id)
            .ok_or_else(|| failure(ErrorKind::UnknownMasterKey))?;
        UserCipher::new(master, &row.user_id)
            .open(&row.user_id, &row.provider, &row.sealed)
            .map_err(|e| failure(e.kind()))
    }

    fn row_failure(&self, row: &StoredKey, kind: ErrorKind) -> RowFailure {
        RowFailure {
            user_ref: self.user_ref(&row.user_id),
            provider: row.provider.clone(),
            key_id: row.key_id.clone(),
            kind,
        }
    }

    /// Forgets a master key the database no longer needs: removes its check record, so
    /// the key can leave the keyring.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::KeyInUse`] while any row is sealed under it (run
    /// [`rewrap`](Self::rewrap) first) or when it is this keyring's active key;
    /// [`ErrorKind::InvalidKeyring`] when the database knows no such key;
    /// [`ErrorKind::Store`] when the database fails. No instance may still run with the
    /// key active: retire it only after every instance has the new keyring.
    pub async fn retire_key(&self, key_id: &str) -> Result<()> {
        if self.inner.keyring.active().id() == key_id {
            return Err(
                Error::new(ErrorKind::KeyInUse).with_detail("the active key cannot be retired")
            );
        }
        let rows = self
            .key_usage()
            .await?
            .into_iter()
            .find(|u| u.key_id == key_id)
            .map_or(0, |u| u.rows);
        if rows > 0 {
            return Err(Error::new(ErrorKind::KeyInUse).with_detail(format!(
                "{rows} stored keys are still sealed under `{key_id}`: run a rewrap first"
            )));
        }
        if !self.inner.store.remove_check_record(key_id).await? {
            let still_used = self
                .key_usage()
                .await?
                .iter()
                .any(|u| u.key_id == key_id && u.rows > 0);
            return Err(if still_used {
                Error::new(ErrorKind::KeyInUse).with_detail(format!(
                    "stored keys were written under `{key_id}` meanwhile: run a rewrap first"
                ))
            } else {
                Error::new(ErrorKind::InvalidKeyring).with_detail(format!(
                    "no master key `{key_id}` is registered in this database"
                ))
            });
        }
        tracing::info!(key_id, "master key retired");
        Ok(())
    }

    /// Sets when a key stops being served, or clears it back to never (`None`). Takes
    /// effect at once in this process, its cache included; other instances see it when
    /// their cached entry for the user expires (the cache TTL). Returns whether the key
    /// exists.
    ///
    /// # Errors
    ///
    /// Input and store errors as [`put`](Self::put).
    pub async fn set_expiry(
        &self,
        user_id: &str,
        provider: &str,
        expires_at: Option<SystemTime>,
    ) -> Result<bool> {
        let user_id = validate::user_id(user_id)?;
        let provider = validate::provider(provider)?;
        let audit = self.audit(user_id, unix_ms(SystemTime::now()));
        let (user, provider) = (user_id.to_owned(), provider.into_owned());
        self.detached_write(Some(user_id), move |inner| async move {
            inner
                .store
                .set_expiry(&user, &provider, expires_at.map(unix_ms), &audit)
                .await
        })
        .await
    }

    /// Deletes every key whose expiry has passed, auditing each as
    /// [`AuditAction::Purge`](crate::AuditAction::Purge); returns how many. Expired keys
    /// are never served anyway: this reclaims the rows. Run it on a schedule.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Store`] when the database fails; keys purged until then stay purged.
    pub async fn purge_expired(&self) -> Result<usize> {
        let mut purged = 0;
        loop {
            let now = unix_ms(SystemTime::now());
            let expired = self.inner.store.expired_keys(now, PAGE).await?;
            if expired.is_empty() {
                break;
            }
            let mut progressed = false;
            for (user_id, provider) in &expired {
                let audit = self.audit(user_id, now);
                let (user, provider) = (user_id.clone(), provider.clone());
                let deleted = self
                    .detached_write(Some(user_id), move |inner| async move {
                        inner
                            .store
                            .delete_expired(&user, &provider, now, &audit)
                            .await
                    })
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
        tracing::info!(purged, "purged expired keys");
        Ok(purged)
    }

    /// The whole audit log, or the part in `[since, until)`, oldest first.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Store`] when the database fails.
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
        self.inner.store.audit_trail(&query).await
    }
}
