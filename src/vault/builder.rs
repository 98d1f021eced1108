//! Opening a vault: its settings, the migrations, and the proof that the keyring can
//! read the database.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use super::keyring::{refuse_unreadable_rows, spawn_refresh, unlock, KeyringCell};
use super::{Inner, Vault, DEFAULT_ACTOR};
use crate::cache::KeyCache;
use crate::check::KeyCheck;
#[cfg(doc)]
use crate::error::ErrorKind;
use crate::error::Result;
use crate::feed::{Feed, FeedConfig};
use crate::keyring::KeyringSource;
use crate::store::KeyStore;
use crate::validate;

/// Settings for opening a [`Vault`]; made by [`Vault::builder`].
#[must_use]
pub struct VaultBuilder<S> {
    pub(super) checks: HashMap<String, Box<dyn KeyCheck>>,
    pub(super) store: S,
    pub(super) source: Arc<dyn KeyringSource>,
    pub(super) refresh_every: Option<Duration>,
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

    /// Refreshes the keyring from its source every `every`, as
    /// [`Vault::refresh_keyring`] does, for as long as the vault lives: a rotated
    /// keyring (a new active key, a retired old one) is then in use within `every`,
    /// without a restart. Off by default. A refresh that fails keeps the keyring in use
    /// and is reported by [`Vault::keyring_status`], a warning and the metric
    /// `tower_byok_keyring_refreshes_total`. Minimum 1 second.
    pub fn refresh_keyring_every(mut self, every: Duration) -> Self {
        self.refresh_every = Some(every.max(Duration::from_secs(1)));
        self
    }

    /// Loads the keyring from its source, runs the migrations, then proves the keyring
    /// can read the database.
    ///
    /// On first use it writes a check record: the vault's own random secret sealed under
    /// the active master key. Later opens must open it with some key of the keyring, and
    /// every key of the keyring that has a check record must open its own.
    ///
    /// # Errors
    ///
    /// What the [`KeyringSource`] failed with (e.g. [`ErrorKind::KmsUnreachable`]): the
    /// vault does not open, and nothing falls back to another keyring;
    /// [`ErrorKind::WrongMasterKey`] when the keyring cannot read the database;
    /// [`ErrorKind::Migration`] or [`ErrorKind::Store`] when the database fails.
    pub async fn open(self) -> Result<Vault> {
        let keyring = self.source.load().await?;
        self.store.migrate().await?;
        let secret = unlock(&self.store, &keyring).await?;
        refuse_unreadable_rows(&self.store, &keyring).await?;
        let cache = Arc::new(KeyCache::new(
            self.cache_ttl,
            self.cache_capacity,
            self.load_timeout,
            self.stale_if_error,
        ));
        let feed = start_feed(&self.store, &cache, self.feed).await?;
        let inner = Arc::new(Inner {
            checks: self.checks,
            store: Box::new(self.store),
            keyring: KeyringCell::new(keyring, self.source),
            secret,
            cache,
            max_providers: self.max_providers,
            platform_fallback: self.platform_fallback,
            feed,
        });
        if let Some(every) = self.refresh_every {
            spawn_refresh(Arc::downgrade(&inner), every);
        }
        Ok(Vault {
            inner,
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
