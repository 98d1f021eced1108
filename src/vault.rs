//! The vault: every operation on users' keys, each scoped by a user id.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use zeroize::Zeroizing;

use crate::cache::KeyCache;
use crate::check::KeyCheck;
use crate::crypto::{UserCipher, VaultSecret, CHECK_RECORD_SCOPE};
use crate::error::{Error, ErrorKind, Result};
use crate::keyring::Keyring;
use crate::keys::{KeyInfo, KeySource, ProviderKey, UserKeys};
use crate::store::{AuditAction, AuditQuery, AuditRecord, DynStore, KeyStore, StoredKey};
use crate::validate;

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
#[derive(Clone)]
pub struct Vault {
    pub(crate) inner: Arc<Inner>,
    actor: Arc<str>,
}

pub(crate) struct Inner {
    pub(crate) checks: HashMap<String, Box<dyn KeyCheck>>,
    pub(crate) store: Box<dyn DynStore>,
    pub(crate) keyring: Keyring,
    pub(crate) secret: VaultSecret,
    pub(crate) cache: KeyCache,
}

/// Settings for opening a [`Vault`]; made by [`Vault::builder`].
#[must_use]
pub struct VaultBuilder<S> {
    checks: HashMap<String, Box<dyn KeyCheck>>,
    store: S,
    keyring: Keyring,
    cache_ttl: Duration,
    cache_capacity: u64,
    load_timeout: Duration,
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
        Ok(Vault {
            inner: Arc::new(Inner {
                checks: self.checks,
                store: Box::new(self.store),
                keyring: self.keyring,
                secret,
                cache: KeyCache::new(self.cache_ttl, self.cache_capacity, self.load_timeout),
            }),
            actor: DEFAULT_ACTOR.into(),
        })
    }
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
        VaultBuilder {
            checks: HashMap::new(),
            store,
            keyring,
            cache_ttl: Duration::from_secs(30),
            cache_capacity: 100_000,
            load_timeout: Duration::from_secs(3),
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

    /// The keyring this vault seals and opens with.
    pub fn keyring(&self) -> &Keyring {
        &self.inner.keyring
    }

    /// The keyed hash that stands for `user_id` in the audit trail and in this crate's
    /// log lines: use it to find a user's records without writing the id anywhere.
    pub fn user_ref(&self, user_id: &str) -> String {
        self.inner.secret.user_ref(user_id)
    }

    /// Stores a user's key for a provider, replacing any earlier one.
    ///
    /// The provider name is lowercased; the secret is sealed under the active master key
    /// and written with its audit record in one transaction. Returns
    /// [`AuditAction::Put`] or [`AuditAction::Replace`].
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidUserId`], [`ErrorKind::InvalidProvider`] or
    /// [`ErrorKind::InvalidSecret`] before anything is written; [`ErrorKind::Store`]
    /// when the database fails, in which case nothing is written.
    pub async fn put(&self, user_id: &str, provider: &str, secret: &str) -> Result<AuditAction> {
        self.write(user_id, provider, secret, None).await
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
        self.write(user_id, provider, secret, Some(expires_at))
            .await
    }

    async fn write(
        &self,
        user_id: &str,
        provider: &str,
        secret: &str,
        expires_at: Option<SystemTime>,
    ) -> Result<AuditAction> {
        let user_id = validate::user_id(user_id)?;
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
        let cipher = UserCipher::new(self.inner.keyring.active(), user_id);
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
        let audit = self.audit(user_id, now);
        let user_ref = audit.user_ref.clone();
        let action = self
            .detached_write(Some(user_id), move |inner| async move {
                inner.store.upsert(&row, &audit).await
            })
            .await?;
        tracing::debug!(user_ref = %user_ref, provider = %provider, action = action.as_str(), "stored a provider key");
        Ok(action)
    }

    /// Runs a write to its end in a task of its own, then forgets `user_id`'s cached
    /// keys, whatever the outcome.
    ///
    /// A request whose client disconnects is dropped at its next `.await`; a write
    /// dropped inside its transaction can leave a pooled connection in that transaction
    /// (for SQLite, holding the write lock), and a cache invalidated before a commit that
    /// still lands could be refilled with the old keys. In its own task, the write
    /// commits or rolls back, and the invalidation comes after it, even if no one waits.
    pub(crate) async fn detached_write<T, F, Fut>(
        &self,
        user_id: Option<&str>,
        write: F,
    ) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(Arc<Inner>) -> Fut,
        Fut: std::future::Future<Output = Result<T>> + Send + 'static,
    {
        let inner = self.inner.clone();
        let user = user_id.map(str::to_owned);
        let write = write(self.inner.clone());
        tokio::spawn(async move {
            let result = write.await;
            if let Some(user) = user {
                inner.cache.invalidate(&user);
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
        AuditRecord {
            at,
            user_ref: self.inner.secret.user_ref(user_id),
            provider: String::new(),
            action: AuditAction::Put,
            actor: self.actor.to_string(),
        }
    }

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
        let mut opener = Opener::new(&self.inner, user_id);
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
        let rows = self.inner.store.fetch_user(user_id).await?;
        let now = SystemTime::now();
        let mut opener = Opener::new(&self.inner, user_id);
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
    /// the database: for changes made outside this vault (another tool, raw SQL).
    pub fn forget_cached(&self, user_id: &str) {
        self.inner.cache.invalidate(user_id);
    }

    /// The cached keys of an already validated user id, if present: no waiting.
    pub(crate) fn cache_hit(&self, user_id: &str) -> Option<UserKeys> {
        self.inner.cache.get(user_id)
    }

    pub(crate) async fn cached(&self, user_id: &str) -> Result<UserKeys, ErrorKind> {
        self.inner
            .cache
            .get_or_load(user_id, || async move {
                self.load(user_id).await.inspect_err(|e| {
                    tracing::warn!(user_ref = %self.user_ref(user_id), error = %e, "loading a user's keys failed");
                })
            })
            .await
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
            .detached_write(Some(user_id), move |inner| async move {
                inner.store.delete(&user, provider.as_deref(), &audit).await
            })
            .await?;
        tracing::debug!(user_ref = %user_ref, deleted = deleted.len(), "deleted provider keys");
        Ok(deleted)
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
                key_id: row.key_id,
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
    pub async fn audit_trail(&self, user_id: &str) -> Result<Vec<AuditRecord>> {
        let user_id = validate::user_id(user_id)?;
        let query = AuditQuery {
            user_ref: Some(self.user_ref(user_id)),
            ..AuditQuery::default()
        };
        self.inner.store.audit_trail(&query).await
    }

    /// The fingerprint this vault gives `secret`, to compare with [`KeyInfo::fingerprint`].
    pub fn fingerprint(&self, secret: &str) -> String {
        self.inner.secret.fingerprint(secret)
    }
}

impl fmt::Debug for Vault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Vault")
            .field("keyring", &self.inner.keyring)
            .field("actor", &self.actor)
            .finish_non_exhaustive()
    }
}

/// Opens rows of one user, deriving the user's cipher once per master key.
pub(crate) struct Opener<'a> {
    inner: &'a Inner,
    user_id: &'a str,
    ciphers: HashMap<&'a str, UserCipher<'a>>,
}

impl<'a> Opener<'a> {
    pub(crate) fn new(inner: &'a Inner, user_id: &'a str) -> Self {
        Self {
            inner,
            user_id,
            ciphers: HashMap::new(),
        }
    }

    /// The opened key, or `None` when it has expired.
    pub(crate) fn open(&mut self, row: &StoredKey, now: SystemTime) -> Result<Option<ProviderKey>> {
        let expires_at = row.expires_at.map(from_unix_ms);
        if expires_at.is_some_and(|at| at <= now) {
            return Ok(None);
        }
        let Some(master) = self.inner.keyring.get(&row.key_id) else {
            tracing::error!(key_id = %row.key_id, provider = %row.provider, "a stored key names a master key the keyring does not hold");
            return Err(Error::new(ErrorKind::UnknownMasterKey));
        };
        let user_id = self.user_id;
        let cipher = self
            .ciphers
            .entry(master.id())
            .or_insert_with(|| UserCipher::new(master, user_id));
        let secret = cipher.open_text(user_id, &row.provider, &row.sealed).inspect_err(|_| {
            tracing::error!(
                user_ref = %self.inner.secret.user_ref(user_id),
                provider = %row.provider,
                key_id = %row.key_id,
                "a stored key failed to decrypt: tampered with, moved, or sealed under another key"
            );
        })?;
        Ok(Some(ProviderKey::new(
            row.provider.as_str(),
            secret,
            KeySource::Database,
            expires_at,
        )))
    }
}

pub(crate) fn unix_ms(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_millis()).unwrap_or(i64::MAX),
    }
}

pub(crate) fn from_unix_ms(ms: i64) -> SystemTime {
    // Checked: a stored value out of the platform's range clamps instead of panicking.
    let d = Duration::from_millis(ms.unsigned_abs());
    let t = if ms >= 0 {
        UNIX_EPOCH.checked_add(d)
    } else {
        UNIX_EPOCH.checked_sub(d)
    };
    t.unwrap_or(if ms >= 0 {
        UNIX_EPOCH + Duration::from_secs(u64::from(u32::MAX))
    } else {
        UNIX_EPOCH
    })
}
