//! The vault's keyring: proving it can read the database (at open and at each refresh),
//! where it came from, and refreshing it: a master-key rotation without a restart, and a
//! failed refresh that keeps the keys already loaded.

use std::sync::{Arc, Mutex, PoisonError, RwLock, Weak};
use std::time::{Duration, SystemTime};

use zeroize::Zeroizing;

use super::{unix_ms, Inner, Vault};
use crate::crypto::{UserCipher, VaultSecret, CHECK_RECORD_SCOPE};
use crate::error::{Error, ErrorKind, Result};
use crate::keyring::{Keyring, KeyringSource};
use crate::store::DynKeyStore;

/// Where a vault's keyring stands, for a health check: see [`Vault::keyring_status`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct KeyringStatus {
    /// The [`KeyringSource`] the keyring comes from, as it
    /// [describes](KeyringSource::describe) itself.
    pub source: String,
    /// The id of the active master key, which seals new secrets.
    pub active: String,
    /// The ids of every master key, the active one first.
    pub ids: Vec<String>,
    /// When the keyring in use was loaded.
    pub loaded_at: SystemTime,
    /// When the last refresh ended, whether it succeeded or not.
    pub last_refresh_at: Option<SystemTime>,
    /// What the last refresh failed with, while refreshes fail; `None` after a success.
    /// The keyring in use is then still the one loaded at [`loaded_at`](Self::loaded_at).
    pub last_error: Option<ErrorKind>,
    /// How many refreshes in a row have failed.
    pub consecutive_failures: u32,
}

impl KeyringStatus {
    /// Whether the last refresh, if any, succeeded.
    pub fn is_healthy(&self) -> bool {
        self.last_error.is_none()
    }
}

/// The keyring in use, swapped whole by a refresh, and its source.
pub(crate) struct KeyringCell {
    current: RwLock<Keyring>,
    source: Arc<dyn KeyringSource>,
    status: Mutex<KeyringStatus>,
    /// One refresh at a time, so two cannot race to swap.
    refreshing: tokio::sync::Mutex<()>,
}

impl KeyringCell {
    pub(crate) fn new(keyring: Keyring, source: Arc<dyn KeyringSource>) -> Self {
        let status = KeyringStatus {
            source: source.describe().into_owned(),
            active: keyring.active().id().to_owned(),
            ids: keyring.ids().map(str::to_owned).collect(),
            loaded_at: SystemTime::now(),
            last_refresh_at: None,
            last_error: None,
            consecutive_failures: 0,
        };
        Self {
            current: RwLock::new(keyring),
            source,
            status: Mutex::new(status),
            refreshing: tokio::sync::Mutex::new(()),
        }
    }

    /// The keyring in use: a reference count, not a copy of the keys.
    pub(crate) fn current(&self) -> Keyring {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn status(&self) -> KeyringStatus {
        self.status
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn succeeded(&self, keyring: Keyring) {
        let mut status = self.status.lock().unwrap_or_else(PoisonError::into_inner);
        let now = SystemTime::now();
        status.active = keyring.active().id().to_owned();
        status.ids = keyring.ids().map(str::to_owned).collect();
        status.loaded_at = now;
        status.last_refresh_at = Some(now);
        status.last_error = None;
        status.consecutive_failures = 0;
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = keyring;
    }

    fn failed(&self, kind: ErrorKind) -> u32 {
        let mut status = self.status.lock().unwrap_or_else(PoisonError::into_inner);
        status.last_refresh_at = Some(SystemTime::now());
        status.last_error = Some(kind);
        status.consecutive_failures = status.consecutive_failures.saturating_add(1);
        status.consecutive_failures
    }
}

impl Inner {
    /// Loads the keyring again from its source and, once it is proven against the
    /// database as at open, puts it in use. On failure the keyring in use stays.
    pub(crate) async fn refresh_keyring(&self) -> Result<()> {
        let cell = &self.keyring;
        let _one = cell.refreshing.lock().await;
        match self.load_proven_keyring().await {
            Ok(keyring) => {
                let active = keyring.active().id().to_owned();
                cell.succeeded(keyring);
                crate::metrics::keyring_refreshed(None);
                tracing::debug!(target: "tower_byok", active = %active, "keyring refreshed");
                Ok(())
            }
            Err(err) => {
                let failures = cell.failed(err.kind());
                crate::metrics::keyring_refreshed(Some(err.kind()));
                tracing::warn!(
                    target: "tower_byok",
                    source = %cell.source.describe(),
                    error = %err,
                    consecutive_failures = failures,
                    "keyring refresh failed; the keyring already loaded stays in use"
                );
                Err(err)
            }
        }
    }

    async fn load_proven_keyring(&self) -> Result<Keyring> {
        let keyring = self.keyring.source.load().await?;
        let secret = unlock(&*self.store, &keyring).await?;
        if !secret.same_as(&self.secret) {
            return Err(Error::new(ErrorKind::WrongMasterKey)
                .with_detail("the refreshed keyring opens another vault than this one"));
        }
        refuse_unreadable_rows(&*self.store, &keyring).await?;
        Ok(keyring)
    }
}

/// Refreshes the keyring every `every` while the vault lives (any clone of it); the task
/// holds the vault only while a refresh runs, so dropping the vault stops it.
pub(crate) fn spawn_refresh(inner: Weak<Inner>, every: Duration) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await; // the first tick is immediate: the keyring was just loaded
        loop {
            tick.tick().await;
            let Some(inner) = inner.upgrade() else { break };
            // A failure is recorded in the status, the metric and the log.
            let _ = inner.refresh_keyring().await;
        }
    });
}

impl Vault {
    /// Loads the keyring again from its [`KeyringSource`] and puts it in use, for a
    /// master-key rotation without a restart: add the new key to the source (first, to
    /// make it active), then refresh every instance (or let
    /// [`VaultBuilder::refresh_keyring_every`](crate::VaultBuilder::refresh_keyring_every)
    /// do it).
    ///
    /// The new keyring must pass what [`VaultBuilder::open`](crate::VaultBuilder::open)
    /// checks: it opens this vault's check record, and it holds every master key some
    /// row is sealed under. A vault opened with a plain [`Keyring`] reloads that same
    /// keyring.
    ///
    /// # Errors
    ///
    /// What the source's load failed with (e.g. [`ErrorKind::KmsUnreachable`]), or what
    /// the checks failed with ([`ErrorKind::WrongMasterKey`], [`ErrorKind::Store`]). The
    /// keyring in use then stays, and [`keyring_status`](Self::keyring_status) reports
    /// the failure until a refresh succeeds.
    ///
    /// ```
    /// # use tower_byok::{FileKeyring, Keyring, MasterKey, SqliteStore, Vault};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), tower_byok::Error> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// let path = dir.path().join("keyring.txt");
    /// let k1 = MasterKey::generate("k1")?;
    /// std::fs::write(&path, Keyring::new(k1.clone()).expose_text().as_bytes()).unwrap();
    /// let vault = Vault::builder_from(SqliteStore::in_memory().await?, FileKeyring::new(&path))
    ///     .open()
    ///     .await?;
    ///
    /// // Rotation: a new key first in the file, the old one after it; then refresh.
    /// let k2 = MasterKey::generate("k2")?;
    /// std::fs::write(&path, Keyring::new(k2).with_key(k1)?.expose_text().as_bytes()).unwrap();
    /// vault.refresh_keyring().await?;
    /// assert_eq!(vault.keyring_status().active, "k2");
    /// # Ok(()) }
    /// ```
    pub async fn refresh_keyring(&self) -> Result<()> {
        self.inner.refresh_keyring().await
    }

    /// Where the keyring stands: its source, its keys' ids, when it was loaded, and
    /// whether refreshes fail. For a health check: a vault whose refreshes fail still
    /// serves with the keyring it has.
    pub fn keyring_status(&self) -> KeyringStatus {
        self.inner.keyring.status()
    }
}

/// Reads (or on first use writes) the check records, and returns the vault secret.
pub(super) async fn unlock(store: &dyn DynKeyStore, keyring: &Keyring) -> Result<VaultSecret> {
    let (user, provider) = CHECK_RECORD_SCOPE;
    let mut records = store.check_records().await?;
    if records.is_empty() {
        // First use: one fresh vault secret, sealed under every key of the keyring, so an
        // instance started at the same moment with any of these keys reads the same one.
        let fresh = VaultSecret::generate();
        let sealed: Vec<(&str, Vec<u8>)> = keyring
            .keys()
            .map(|key| {
                (
                    key.id(),
                    UserCipher::new(key, user).seal(user, provider, fresh.as_slice()),
                )
            })
            .collect();
        store
            .add_check_records(&sealed, unix_ms(SystemTime::now()), true)
            .await?;
        // Another instance may have won the race to write the first records: read back.
        records = store.check_records().await?;
    }
    let mut secret: Option<Zeroizing<Vec<u8>>> = None;
    for (key_id, sealed) in &records {
        let Some(master) = keyring.get(key_id) else {
            continue;
        };
        let opened = UserCipher::new(master, user)
            .open(user, provider, sealed)
            .map_err(|_| {
                Error::new(ErrorKind::WrongMasterKey).with_detail(format!(
                    "master key `{key_id}` of the keyring is not the key this database was sealed with"
                ))
            })?;
        match &secret {
            Some(first) if **first != *opened => {
                return Err(Error::new(ErrorKind::WrongMasterKey)
                    .with_detail("the database's check records disagree"))
            }
            Some(_) => {}
            None => secret = Some(opened),
        }
    }
    let Some(secret) = secret else {
        let stored: Vec<&str> = records.iter().map(|(id, _)| id.as_str()).collect();
        return Err(Error::new(ErrorKind::WrongMasterKey).with_detail(format!(
            "the keyring holds none of the master keys this database was sealed with ({})",
            stored.join(", ")
        )));
    };
    let active = keyring.active();
    if !records.iter().any(|(id, _)| id == active.id()) {
        let sealed = UserCipher::new(active, user).seal(user, provider, &secret);
        store
            .add_check_records(&[(active.id(), sealed)], unix_ms(SystemTime::now()), false)
            .await?;
    }
    VaultSecret::from_bytes(&secret)
}

/// Refuses a keyring that lacks a master key some stored rows are sealed under: those
/// users' requests would all fail, so it is a configuration error, found at start-up.
pub(super) async fn refuse_unreadable_rows(
    store: &dyn DynKeyStore,
    keyring: &Keyring,
) -> Result<()> {
    let missing: Vec<String> = store
        .key_usage()
        .await?
        .into_iter()
        .filter(|(id, count)| *count > 0 && keyring.get(id).is_none())
        .map(|(id, count)| format!("{count} under `{id}`"))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(Error::new(ErrorKind::WrongMasterKey).with_detail(format!(
        "stored keys are sealed under master keys the keyring does not hold ({}): \
         put those keys back into the keyring, after the active one",
        missing.join(", ")
    )))
}
