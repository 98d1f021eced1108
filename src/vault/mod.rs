//! The vault: every operation on users' keys, each scoped by a user id.
//!
//! - `mod.rs`: [`Vault`] itself and what it is made of;
//! - `builder.rs`: [`VaultBuilder`], opening a vault and proving the keyring;
//! - `read.rs`: what the layer serves (through the cache), direct reads, listings, audit;
//! - `write.rs`: storing, replacing, expiring and deleting keys;
//! - `keyring.rs`: proving a keyring against the database, the keyring in use, its
//!   source, and refreshing it;
//! - `open.rs`: the one place a stored row is decrypted;
//! - `rotation.rs`: master-key rotation: usage, rewrap, verify, retire.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::cache::KeyCache;
use crate::check::KeyCheck;
use crate::crypto::VaultSecret;
use crate::error::{Error, ErrorKind, Result};
use crate::feed::{Feed, FeedConfig, FeedStatus};
use crate::keyring::{Keyring, KeyringSource};
use crate::store::{DynAudit, DynExpiry, DynKeyStore, DynOwner, DynRotation, KeyStore};
pub(crate) use crate::time::{from_unix_ms, unix_ms};

mod builder;
mod keyring;
mod open;
mod owners;
mod read;
mod rotation;
mod write;

pub use self::builder::VaultBuilder;
pub use self::keyring::KeyringStatus;
pub use self::owners::{Owner, TeamPolicy};
pub use self::rotation::{MasterKeyUsage, Progress, RewrapReport, RowFailure, VerifyReport};

/// Rows per page for the operations that walk the whole table.
const PAGE: u32 = 500;

/// How many providers' keys one user may store unless
/// [`VaultBuilder::max_providers_per_user`] says otherwise: far above what one user of
/// an application plausibly holds, low enough that one account cannot grow without bound.
pub const DEFAULT_MAX_PROVIDERS_PER_USER: u32 = 64;

/// The actor recorded in the audit trail when none is set with [`Vault::with_actor`].
pub const DEFAULT_ACTOR: &str = "app";

/// Users' provider keys: sealed in a database, opened on demand, cached per user.
///
/// Cheap to clone: clones share the store, the keyring and the cache, so a write through
/// any clone invalidates the cache the layer reads from.
///
/// ```
/// use tower_byok::{Keyring, MasterKey, SqliteStore, Vault};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tower_byok::Error> {
/// let keyring = Keyring::new(MasterKey::generate("k1")?); // production: Keyring::from_env
/// let vault = Vault::open(SqliteStore::in_memory().await?, keyring).await?;
///
/// vault.put("alice", "OpenAI", "sk-proj-alice-0123456789abcdefgh").await?;
/// let key = vault.get("alice", "openai").await?.expect("alice has an openai key");
/// assert_eq!(key.expose_secret(), "sk-proj-alice-0123456789abcdefgh");
///
/// // Listing shows masked forms only; other users see nothing of alice's.
/// assert_eq!(vault.list("alice").await?[0].masked, "sk-p…efgh");
/// assert!(vault.get_all("bob").await?.is_empty());
///
/// vault.delete("alice", "openai").await?;
/// assert!(vault.get("alice", "openai").await?.is_none());
/// # Ok(()) }
/// ```
///
/// # Rotating the master key
///
/// Without downtime and without a migration:
///
/// 1. Generate a key (`MasterKey::generate("k2")`) and put it **first** in the keyring,
///    keeping the old one after it: `BYOK_MASTER_KEYS="k2:...,k1:..."`. Deploy. New
///    writes are sealed under `k2`; rows under `k1` still open.
/// 2. Run [`Vault::rewrap`] (or `tower-byok rewrap`): it re-seals every row still under
///    another key, in batches, while the application serves traffic. Killed half-way, it
///    continues where it stopped when run again: each row is re-sealed in its own
///    transaction, and only if nobody changed it meanwhile.
/// 3. Run [`Vault::verify`]: it opens every row as serving would and reports any it
///    cannot.
/// 4. Retire `k1` with [`Vault::retire_master_key`], which refuses while any row still
///    needs it, then remove `k1` from the keyring and deploy.
///
/// A vault refuses to open with a keyring that lacks a key some rows are sealed under
/// ([`ErrorKind::WrongMasterKey`]), so skipping step 2 is caught at start-up.
#[derive(Clone)]
pub struct Vault {
    inner: Arc<Inner>,
    actor: Arc<str>,
}

pub(crate) struct Inner {
    pub(crate) checks: HashMap<String, Box<dyn KeyCheck>>,
    pub(crate) store: Box<dyn DynKeyStore>,
    pub(crate) keyring: keyring::KeyringCell,
    pub(crate) secret: VaultSecret,
    pub(crate) cache: Arc<KeyCache>,
    /// The cap on one user's providers, passed to each [`KeyStore::upsert`].
    pub(crate) max_providers: u32,
    /// Whether [`Vault::keys_for_member`] falls back to the platform's keys.
    pub(crate) platform_fallback: bool,
    /// Follows writes made elsewhere; stops when the vault is dropped.
    pub(crate) feed: Feed,
}

impl Inner {
    /// The store's [`RotationStore`](crate::store::RotationStore) capability, or
    /// [`ErrorKind::Unsupported`].
    pub(crate) fn rotation(&self) -> Result<&dyn DynRotation> {
        self.store
            .rotation()
            .ok_or_else(|| unsupported("RotationStore"))
    }

    /// The store's [`ExpiryStore`](crate::store::ExpiryStore) capability, or
    /// [`ErrorKind::Unsupported`].
    pub(crate) fn expiry(&self) -> Result<&dyn DynExpiry> {
        self.store
            .expiry()
            .ok_or_else(|| unsupported("ExpiryStore"))
    }

    /// The store's [`AuditStore`](crate::store::AuditStore) capability, or
    /// [`ErrorKind::Unsupported`].
    pub(crate) fn audit(&self) -> Result<&dyn DynAudit> {
        self.store.audit().ok_or_else(|| unsupported("AuditStore"))
    }

    /// The store's [`OwnerStore`](crate::store::OwnerStore) capability, or
    /// [`ErrorKind::Unsupported`].
    pub(crate) fn owners(&self) -> Result<&dyn DynOwner> {
        self.store.owners().ok_or_else(|| unsupported("OwnerStore"))
    }
}

fn unsupported(capability: &'static str) -> Error {
    Error::new(ErrorKind::Unsupported).with_detail(format!(
        "the store does not implement store::{capability}, which this operation needs"
    ))
}

impl Vault {
    /// Opens a vault with the default settings: see [`VaultBuilder::open`].
    ///
    /// # Errors
    ///
    /// As [`VaultBuilder::open`].
    pub async fn open<S: KeyStore>(store: S, keyring: Keyring) -> Result<Self> {
        Self::builder(store, keyring).open().await
    }

    /// Settings for opening a vault.
    ///
    /// ```
    /// # use tower_byok::{Keyring, MasterKey, SqliteStore, Vault};
    /// # use std::time::Duration;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), tower_byok::Error> {
    /// # let keyring = Keyring::new(MasterKey::generate("k1")?);
    /// let vault = Vault::builder(SqliteStore::in_memory().await?, keyring)
    ///     .cache_ttl(Duration::from_secs(10))
    ///     .load_timeout(Duration::from_secs(1))
    ///     .open()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn builder<S: KeyStore>(store: S, keyring: Keyring) -> VaultBuilder<S> {
        Self::builder_from(store, keyring)
    }

    /// Settings for opening a vault whose keyring comes from a [`KeyringSource`]: loaded
    /// when the vault opens, and again at each [refresh](Vault::refresh_keyring), never
    /// per request.
    ///
    /// ```
    /// # use tower_byok::{EnvKeyring, Keyring, MasterKey, SqliteStore, Vault};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), tower_byok::Error> {
    /// # std::env::set_var("DOC_BYOK_MASTER_KEYS", Keyring::new(MasterKey::generate("k1")?).expose_text().as_str());
    /// let vault = Vault::builder_from(SqliteStore::in_memory().await?, EnvKeyring::new("DOC_BYOK_MASTER_KEYS"))
    ///     .open()
    ///     .await?;
    /// assert_eq!(vault.keyring_status().source, "environment variable DOC_BYOK_MASTER_KEYS");
    /// # Ok(()) }
    /// ```
    pub fn builder_from<S: KeyStore>(store: S, source: impl KeyringSource) -> VaultBuilder<S> {
        VaultBuilder {
            checks: HashMap::new(),
            store,
            source: Arc::new(source),
            refresh_every: None,
            cache_ttl: Duration::from_secs(30),
            cache_capacity: 100_000,
            load_timeout: Duration::from_secs(3),
            max_providers: DEFAULT_MAX_PROVIDERS_PER_USER,
            feed: FeedConfig::default(),
            stale_if_error: None,
            platform_fallback: false,
        }
    }

    /// A handle that records `actor` as who made each change in the audit trail, e.g.
    /// `"self-service"` or `"admin:support"`. The default is [`DEFAULT_ACTOR`].
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidActor`] unless `actor` is 1 to 64 characters of
    /// `[A-Za-z0-9_.:@-]`.
    pub fn with_actor(&self, actor: &str) -> Result<Self> {
        let ok = !actor.is_empty()
            && actor.len() <= 64
            && actor.bytes().all(|b| {
                b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'@' | b'-')
            });
        if !ok {
            return Err(Error::new(ErrorKind::InvalidActor)
                .with_detail("an actor must be 1 to 64 characters of [A-Za-z0-9_.:@-]"));
        }
        Ok(Self {
            inner: self.inner.clone(),
            actor: actor.into(),
        })
    }

    /// The keyring this vault seals and opens with now: the one loaded at open, or at
    /// the last successful [refresh](Self::refresh_keyring). Cheap: the keys are shared,
    /// not copied.
    pub fn keyring(&self) -> Keyring {
        self.inner.keyring.current()
    }

    /// The keyed hash that stands for `user_id` in the audit trail and in this crate's
    /// log lines: use it to find a user's records without writing the id anywhere.
    pub fn user_ref(&self, user_id: &str) -> String {
        self.inner.secret.user_ref(user_id)
    }

    /// How this vault follows writes made elsewhere, and how current it is: for a
    /// health check. See [`VaultBuilder::watch_changes`].
    pub fn change_feed(&self) -> FeedStatus {
        self.inner.feed.status()
    }

    /// The fingerprint this vault gives `secret`, to compare with [`KeyInfo::fingerprint`](crate::KeyInfo::fingerprint).
    pub fn fingerprint(&self, secret: &str) -> String {
        self.inner.secret.fingerprint(secret)
    }
}

impl fmt::Debug for Vault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Vault")
            .field("keyring", &self.inner.keyring.current())
            .field("actor", &self.actor)
            .finish_non_exhaustive()
    }
}
