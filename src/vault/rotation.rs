//! Master-key rotation: which keys seal how many rows, rewrap, verify, retire.

use std::fmt;
use std::time::SystemTime;

use zeroize::Zeroizing;

use super::open::Opener;
use super::{unix_ms, Vault, PAGE};
use crate::crypto::UserCipher;
use crate::error::{Error, ErrorKind, Result};
use crate::owner::OwnerKind;
use crate::store::StoredKey;

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
    /// The id of the master key the row names.
    pub master_key_id: String,
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
pub struct MasterKeyUsage {
    /// The master key id.
    pub master_key_id: String,
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
    pub usage: Vec<MasterKeyUsage>,
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
            write!(f, "; {} under `{}`", usage.rows, usage.master_key_id)?;
        }
        Ok(())
    }
}

/// Walks the whole keys table in primary-key order, a page at a time, optionally
/// skipping rows already under one master key. Rows written behind the cursor meanwhile
/// are not seen: they were sealed under the active key anyway.
struct Pager<'v> {
    vault: &'v Vault,
    after: Option<(String, String)>,
    page: u32,
    not_under: Option<&'v str>,
    /// The kinds of owner still to walk, the current one first: users, then (on a
    /// store that has them) teams and the platform.
    kinds: Vec<OwnerKind>,
}

impl<'v> Pager<'v> {
    fn new(vault: &'v Vault, page: u32, not_under: Option<&'v str>) -> Self {
        let mut kinds = vec![OwnerKind::User];
        if vault.inner.store.owners().is_some() {
            kinds.extend([OwnerKind::Team, OwnerKind::Platform]);
        }
        Self {
            vault,
            after: None,
            page: page.max(1),
            not_under,
            kinds,
        }
    }

    /// The kind of owner the rows of the last page belong to.
    fn kind(&self) -> OwnerKind {
        self.kinds.first().copied().unwrap_or(OwnerKind::User)
    }

    /// The next page, all of one kind of owner ([`kind`](Self::kind)); empty at the end.
    async fn next(&mut self) -> Result<Vec<StoredKey>> {
        loop {
            let page = self.next_of_kind().await?;
            if !page.is_empty() || self.kinds.len() <= 1 {
                return Ok(page);
            }
            self.kinds.remove(0);
            self.after = None;
        }
    }

    async fn next_of_kind(&mut self) -> Result<Vec<StoredKey>> {
        let cursor = self.after.as_ref().map(|(u, p)| (u.as_str(), p.as_str()));
        let inner = &self.vault.inner;
        let page = match self.kind() {
            OwnerKind::User => {
                inner
                    .rotation()?
                    .keys_page(cursor, self.page, self.not_under)
                    .await?
            }
            kind => {
                inner
                    .owners()?
                    .owner_keys_page(kind, cursor, self.page, self.not_under)
                    .await?
            }
        };
        if let Some(last) = page.last() {
            self.after = Some((last.user_id.clone(), last.provider.clone()));
        }
        Ok(page)
    }
}

impl Vault {
    /// How many stored keys each master key seals.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Store`] when the database fails.
    pub async fn master_key_usage(&self) -> Result<Vec<MasterKeyUsage>> {
        Ok(self
            .inner
            .store
            .key_usage()
            .await?
            .into_iter()
            .map(|(master_key_id, rows)| MasterKeyUsage {
                master_key_id,
                rows: u64::try_from(rows).unwrap_or(0),
            })
            .collect())
    }

    /// Re-seals every row not under the active master key, `batch` rows at a time,
    /// calling `progress` after each batch. Resumable and safe while serving: see
    /// [Rotating the master key](Vault#rotating-the-master-key). Each re-seal is audited
    /// as [`AuditAction::Rewrap`](crate::AuditAction::Rewrap). Rows that do not open
    /// are left untouched and reported.
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
    /// vault.retire_master_key("k1").await?; // then drop k1 from the keyring
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Store`] when the database fails; rows handled until then stay done.
    ///
    /// [`ErrorKind::Unsupported`] when the store is not a [`RotationStore`](crate::store::RotationStore).
    pub async fn rewrap(
        &self,
        batch: u32,
        mut progress: impl FnMut(Progress),
    ) -> Result<RewrapReport> {
        self.inner.rotation()?;
        let keyring = self.inner.keyring.current();
        let active = keyring.active();
        let total = self
            .master_key_usage()
            .await?
            .iter()
            .filter(|u| u.master_key_id != active.id())
            .map(|u| u.rows)
            .sum();
        let mut report = RewrapReport::default();
        let mut done = 0;
        let mut pages = Pager::new(self, batch, Some(active.id()));
        loop {
            let page = pages.next().await?;
            if page.is_empty() {
                break;
            }
            let kind = pages.kind();
            for row in &page {
                done += 1;
                let secret = match self.open_row(kind, row) {
                    Ok(secret) => secret,
                    Err(failure) => {
                        report.failed.push(failure);
                        continue;
                    }
                };
                let sealed = UserCipher::for_owner(active, kind, &row.user_id).seal(
                    &row.user_id,
                    &row.provider,
                    secret.as_bytes(),
                );
                let audit = self.owner_audit(kind, &row.user_id, unix_ms(SystemTime::now()));
                let (row, key_id) = (row.clone(), active.id().to_owned());
                // The plaintext is unchanged, so no cache entry needs forgetting.
                let resealed = self
                    .detached_write(None, move |inner| async move {
                        match kind {
                            OwnerKind::User => {
                                inner
                                    .rotation()?
                                    .reseal(&row, &key_id, &sealed, &audit)
                                    .await
                            }
                            kind => {
                                inner
                                    .owners()?
                                    .reseal_owner(kind, &row, &key_id, &sealed, &audit)
                                    .await
                            }
                        }
                    })
                    .await?;
                if resealed {
                    report.resealed += 1;
                } else {
                    report.changed_meanwhile += 1;
                }
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

    /// Opens every stored key (expired ones too), exactly as serving would, and reports
    /// those that fail, with the number of rows per master key. Changes nothing.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Store`] when the database fails.
    ///
    /// [`ErrorKind::Unsupported`] when the store is not a [`RotationStore`](crate::store::RotationStore).
    pub async fn verify(&self, mut progress: impl FnMut(Progress)) -> Result<VerifyReport> {
        self.inner.rotation()?;
        let usage = self.master_key_usage().await?;
        let total = usage.iter().map(|u| u.rows).sum();
        let mut report = VerifyReport {
            usage,
            ..VerifyReport::default()
        };
        let mut done = 0;
        let mut pages = Pager::new(self, PAGE, None);
        loop {
            let page = pages.next().await?;
            if page.is_empty() {
                break;
            }
            let kind = pages.kind();
            for row in &page {
                match self.open_row(kind, row) {
                    Ok(_) => report.opened += 1,
                    Err(failure) => report.failed.push(failure),
                }
                done += 1;
            }
            progress(Progress { done, total });
        }
        Ok(report)
    }

    /// Opens one row of any owner, with the opener requests use.
    fn open_row(
        &self,
        kind: OwnerKind,
        row: &StoredKey,
    ) -> std::result::Result<Zeroizing<String>, RowFailure> {
        Opener::for_owner(
            &self.inner,
            &self.inner.keyring.current(),
            kind,
            &row.user_id,
        )
        .open_secret(row)
        .map_err(|e| RowFailure {
            user_ref: self.inner.secret.owner_ref(kind, &row.user_id),
            provider: row.provider.clone(),
            master_key_id: row.key_id.clone(),
            kind: e.kind(),
        })
    }

    /// Forgets a master key the database no longer needs: removes its check record, so
    /// the key can leave the keyring.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::MasterKeyInUse`] while any row is sealed under it (run
    /// [`rewrap`](Self::rewrap) first) or when it is this keyring's active key;
    /// [`ErrorKind::InvalidKeyring`] when the database knows no such key;
    /// [`ErrorKind::Store`] when the database fails. No instance may still run with the
    /// key active: retire it only after every instance has the new keyring.
    ///
    /// [`ErrorKind::Unsupported`] when the store is not a [`RotationStore`](crate::store::RotationStore).
    pub async fn retire_master_key(&self, key_id: &str) -> Result<()> {
        self.inner.rotation()?;
        let in_use = |detail: String| Error::new(ErrorKind::MasterKeyInUse).with_detail(detail);
        if self.inner.keyring.current().active().id() == key_id {
            return Err(in_use("the active key cannot be retired".to_owned()));
        }
        let rows_under = |usage: Vec<MasterKeyUsage>| {
            usage
                .into_iter()
                .find(|u| u.master_key_id == key_id)
                .map_or(0, |u| u.rows)
        };
        let rows = rows_under(self.master_key_usage().await?);
        if rows > 0 {
            return Err(in_use(format!(
                "{rows} stored keys are still sealed under `{key_id}`: run a rewrap first"
            )));
        }
        if !self.inner.rotation()?.remove_check_record(key_id).await? {
            return Err(if rows_under(self.master_key_usage().await?) > 0 {
                in_use(format!(
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
}
