//! Opening a vault: its settings, the migrations, and the proof that the keyring can
//! read the database.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use zeroize::Zeroizing;

use super::{unix_ms, Inner, Vault, DEFAULT_ACTOR};
use crate::cache::KeyCache;
use crate::check::KeyCheck;
use crate::crypto::{UserCipher, VaultSecret, CHECK_RECORD_SCOPE};
use crate::error::{Error, ErrorKind, Result};
use crate::feed::{Feed, FeedConfig};
use crate::keyring::Keyring;
use crate::store::KeyStore;
use crate::validate;

/// Settings for opening a [`Vault`]; made by [`Vault::builder`].
#[must_use]
pub struct VaultBuilder<S> {
    pub(super) checks: HashMap<String, Box<dyn KeyCheck>>,
    pub(super) store: S,
    pub(super) keyring: Keyring,
    pub(super) cache_ttl: Duration,
    pub(super) cache_capacity: u64,
    pub(super) load_timeout: Duration,
    pub(super) max_providers: u32,
    pub(super) feed: FeedConfig,
    pub(super) stale_if_error: Option<Duration>,
    pub(super) platform_fallback: bool,
}

impl<S: KeyStore> VaultBuilder<S> {
    /// How long a user's keys stay cached after a load. Default 30 seconds.
    ///
    /// Writes through this process invalidate at once; this bounds how long another
    /// instance sharing the database may serve a key that was replaced or deleted.
    pub fn cache_ttl(mut self, ttl: Duration) -> Self {
        self.cache_ttl = ttl;
        self
    }

    /// Adds a check that `provider`'s keys must pass before they are stored: see
    /// [`check`](crate::check). One check per provider; a later call replaces it.
    ///
    /// # Panics
    ///
    /// When `provider` is not a valid provider name: a programming error.
    pub fn check(mut self, provider: &str, check: impl KeyCheck) -> Self {
        let provider = match validate::provider(provider) {
            Ok(p) => p.into_owned(),
            Err(e) => panic!("VaultBuilder::check: {e}"),
        };
        self.checks.insert(provider, Box::new(check));
        self
    }

    /// How many users' key sets the cache holds at most. Default 100,000.
    pub fn cache_capacity(mut self, users: u64) -> Self {
        self.cache_capacity = users;
        self
    }

    /// How long a cache miss may wait on the database before failing with
    /// [`ErrorKind::Timeout`]. Default 3 seconds.
    pub fn load_timeout(mut self, timeout: Duration) -> Self {
        self.load_timeout = timeout;
        self
    }

    /// How many providers' keys one user may store at most. Default
    /// [`DEFAULT_MAX_PROVIDERS_PER_USER`](crate::DEFAULT_MAX_PROVIDERS_PER_USER) (64).
    ///
    /// A [`put`](Vault::put) that would add a provider beyond the cap fails with
    /// [`ErrorKind::TooManyProviders`] and stores nothing; replacing a key the user
    /// already has is always allowed, so is deleting. The count and the insert are one
    /// atomic step in the store, so concurrent puts cannot overshoot it. Lowering the cap
    /// removes nothing: a user above it keeps his keys and can add none until he is
    /// below it. `0` refuses every new key.
    ///
    /// ```
    /// # use tower_byok::{ErrorKind, Keyring, MasterKey, SqliteStore, Vault};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), tower_byok::Error> {
    /// # let keyring = Keyring::new(MasterKey::generate("k1")?);
    /// let vault = Vault::builder(SqliteStore::in_memory().await?, keyring)
    ///     .max_providers_per_user(2)
    ///     .open()
    ///     .await?;
    /// vault.put("alice", "openai", "sk-alice-openai-0123456789").await?;
    /// vault.put("alice", "exa", "exa-alice-0123456789").await?;
    /// let err = vault.put("alice", "groq", "gsk-alice-0123456789").await.unwrap_err();
    /// assert_eq!(err.kind(), ErrorKind::TooManyProviders);
    /// vault.put("alice", "openai", "sk-alice-openai-rotated").await?; // a replace
    /// # Ok(()) }
    /// ```
    pub fn max_providers_per_user(mut self, max: u32) -> Self {
        self.max_providers = max;
        self
    }

    /// Whether to follow the database's change feed, so that a key replaced or deleted
    /// elsewhere (another instance, the admin CLI, an operator's SQL) stops being served
    /// here within about a [`poll_interval`](Self::poll_interval), or at once on
    /// PostgreSQL with [`listen_for_changes`](Self::listen_for_changes). Default `true`.
    ///
    /// The feed is followed by one task on the Tokio runtime that opens the vault, for as
    /// long as the vault (any clone of it) lives: open it on the runtime that serves.
    ///
    /// With `false`, only the [`cache_ttl`](Self::cache_ttl) bounds how long such a
    /// write goes unseen. Writes through this vault invalidate at once either way. See
    /// the README's multi-instance section for the guarantees and their figures.
    pub fn watch_changes(mut self, watch: bool) -> Self {
        self.feed.enabled = watch;
        self
    }

    /// How often the change feed is read. Default 1 second.
    ///
    /// On SQLite this is how long another process's write may go unseen (plus the read
    /// itself); an idle poll costs one `PRAGMA data_version`, which reads no table. On
    /// PostgreSQL with [`listen_for_changes`](Self::listen_for_changes) it is the backstop
    /// for notifications lost while the listening connection was down; without it, the
    /// bound, at one indexed query per interval per instance.
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.feed.poll_interval = interval.max(Duration::from_millis(1));
        self
    }

    /// PostgreSQL only: whether to `LISTEN` for the change feed's notifications, on one
    /// connection of the vault's own (not one of the pool's), so that changes are seen
    /// within milliseconds. Default `true`.
    ///
    /// The listener connects over the store's direct URL when it has one
    /// (`PostgresStore::direct_url`). A store in `PoolMode::Transaction` without one does
    /// not listen at all, whatever this says: through a pooler in transaction mode a
    /// `LISTEN` hears nothing and leaves a listening server connection to other clients.
    /// Turned off, the vault relies on the [`poll_interval`](Self::poll_interval) alone.
    pub fn listen_for_changes(mut self, listen: bool) -> Self {
        self.feed.listen = listen;
        self
    }

    /// Opt-in: serve the platform's keys ([`Owner::platform`](crate::Owner::platform))
    /// to [`Vault::keys_for_member`] and the layer for providers that neither the user nor
    /// the team has a key for. Off by default: then a missing key stays missing (and the
    /// layer's required providers answer `428`). Served platform keys say
    /// [`KeySource::Platform`](crate::KeySource::Platform), so the application can meter
    /// them.
    pub fn platform_fallback(mut self, on: bool) -> Self {
        self.platform_fallback = on;
        self
    }

    /// Opt-in: while the database fails or times out, serve a user's already-cached keys
    /// past the [`cache_ttl`](Self::cache_ttl), for at most `bound` more. Off by default:
    /// a failed load answers `503`.
    ///
    /// Stale keys are served only when a load fails with [`ErrorKind::Store`] or
    /// [`ErrorKind::Timeout`] (never after a decryption failure), never past a key's own
    /// expiry, and never for a user invalidated meanwhile (a write through this vault,
    /// or one heard from the change feed before the outage). They carry
    /// [`UserKeys::is_stale`](crate::UserKeys::is_stale), and each is logged as a
    /// warning (without the user id). While the database is down the change feed hears
    /// nothing, so a key revoked elsewhere during the outage may be served up to the
    /// bound: choose it with that in mind.
    pub fn stale_if_error(mut self, bound: Duration) -> Self {
        self.stale_if_error = Some(bound);
        self
    }

    /// Runs the migrations, then proves the keyring can read the database.
    ///
    /// On first use it writes a check record: the vault's own random secret sealed under
    /// the active master key. Later opens must open it with some key of the keyring, and
    /// every key of the keyring that has a check record must open its own.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::WrongMasterKey`] when the keyring cannot read the database;
    /// [`ErrorKind::Migration`] or [`ErrorKind::Store`] when the database fails.
    pub async fn open(self) -> Result<Vault> {
        self.store.migrate().await?;
        let secret = unlock(&self.store, &self.keyring).await?;
        refuse_unreadable_rows(&self.store, &self.keyring).await?;
        let cache = Arc::new(KeyCache::new(
            self.cache_ttl,
            self.cache_capacity,
            self.load_timeout,
            self.stale_if_error,
        ));
        let feed = start_feed(&self.store, &cache, self.feed).await?;
        Ok(Vault {
            inner: Arc::new(Inner {
                checks: self.checks,
                store: Box::new(self.store),
                keyring: self.keyring,
                secret,
                cache,
                max_providers: self.max_providers,
                platform_fallback: self.platform_fallback,
                feed,
            }),
            actor: DEFAULT_ACTOR.into(),
        })
    }
}

/// Starts following the change feed of a built-in store.
///
/// The feed is made by the triggers of the built-in stores' own migrations; a store
/// written outside the crate has a schema of its own, so it has none and its vault
/// relies on the TTL (its [`FeedStatus`](crate::FeedStatus) says `Off`).
async fn start_feed<S: KeyStore>(
    store: &S,
    cache: &Arc<KeyCache>,
    #[cfg_attr(
        not(any(feature = "sqlite", feature = "postgres")),
        expect(unused_variables, reason = "only a built-in store has a feed")
    )]
    config: FeedConfig,
) -> Result<Feed> {
    let store: &dyn std::any::Any = store;
    let cache = Arc::downgrade(cache);
    #[cfg(feature = "sqlite")]
    if let Some(store) = store.downcast_ref::<crate::SqliteStore>() {
        return match crate::feed::sqlite::SqliteChanges::new(store.pool()).await? {
            Some(source) => Feed::start(source, cache, config).await,
            None => Ok(Feed::off()),
        };
    }
    #[cfg(feature = "postgres")]
    if let Some(store) = store.downcast_ref::<crate::PostgresStore>() {
        let source =
            crate::feed::postgres::PostgresChanges::new(store, config.enabled && config.listen);
        return Feed::start(source, cache, config).await;
    }
    let _ = (store, cache);
    Ok(Feed::off())
}

/// Reads (or on first use writes) the check records, and returns the vault secret.
async fn unlock<S: KeyStore>(store: &S, keyring: &Keyring) -> Result<VaultSecret> {
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
async fn refuse_unreadable_rows<S: KeyStore>(store: &S, keyring: &Keyring) -> Result<()> {
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
