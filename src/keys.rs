//! What a handler gets: one user's decrypted provider keys.

use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use zeroize::Zeroizing;

/// Where a key came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum KeySource {
    /// The user's own key, from the vault's database.
    Database,
    /// An environment variable, through the single-developer fallback
    /// ([`ByokLayer::with_dev_env_fallback`](crate::ByokLayer::with_dev_env_fallback)).
    Environment,
    /// The key of the team the request acts for, set by the team's admin
    /// ([`Vault::keys_for_member`](crate::Vault::keys_for_member)).
    Team,
    /// The platform's (the application's own) key, served when neither the user nor the
    /// team has one and the platform fallback is on: meter it.
    Platform,
}

impl KeySource {
    /// `"database"`, `"environment"`, `"team"` or `"platform"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Database => "database",
            Self::Environment => "environment",
            Self::Team => "team",
            Self::Platform => "platform",
        }
    }
}

impl fmt::Display for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One provider's secret for one user.
///
/// The plaintext is reachable only through [`expose_secret`](Self::expose_secret); it is
/// zeroized when the last clone of the key set holding it is dropped, and `Debug` prints
/// `[REDACTED]` in its place.
pub struct ProviderKey {
    provider: Box<str>,
    secret: Zeroizing<String>,
    source: KeySource,
    expires_at: Option<SystemTime>,
}

impl ProviderKey {
    /// A key made by the application itself, for [`UserKeys`] in handler tests: the
    /// provider name is normalized (lowercased) and checked, and so is the secret
    /// (1 byte to 16 KiB). Its source is [`KeySource::Database`], as a vault key's would be.
    ///
    /// ```
    /// use tower_byok::{ProviderKey, UserKeys};
    ///
    /// let keys: UserKeys = [ProviderKey::from_secret("OpenAI", "sk-test-0001")?].into_iter().collect();
    /// assert_eq!(keys.get("openai").map(ProviderKey::expose_secret), Some("sk-test-0001"));
    /// # Ok::<(), tower_byok::Error>(())
    /// ```
    pub fn from_secret(provider: &str, secret: impl Into<String>) -> crate::Result<Self> {
        let provider = crate::validate::provider(provider)?;
        let secret = Zeroizing::new(secret.into());
        crate::validate::secret(&secret)?;
        Ok(Self::new(
            provider.as_ref(),
            secret,
            KeySource::Database,
            None,
        ))
    }

    /// This key with `source` in place of its source, e.g. to test a handler's
    /// single-developer branch.
    #[must_use]
    pub fn with_source(mut self, source: KeySource) -> Self {
        self.source = source;
        self
    }

    /// This key, expiring at `at`.
    #[must_use]
    pub fn with_expiry(mut self, at: SystemTime) -> Self {
        self.expires_at = Some(at);
        self
    }

    pub(crate) fn new(
        provider: impl Into<Box<str>>,
        secret: Zeroizing<String>,
        source: KeySource,
        expires_at: Option<SystemTime>,
    ) -> Self {
        Self {
            provider: provider.into(),
            secret,
            source,
            expires_at,
        }
    }

    fn duplicate(&self) -> Self {
        Self::new(
            self.provider.clone(),
            self.secret.clone(),
            self.source,
            self.expires_at,
        )
    }

    /// The normalized provider name, e.g. `"openai"`.
    pub fn provider(&self) -> &str {
        &self.provider
    }

    /// The secret in plain text, to hand to the provider's client. Do not log it.
    pub fn expose_secret(&self) -> &str {
        &self.secret
    }

    /// Where the key came from.
    pub fn source(&self) -> KeySource {
        self.source
    }

    /// When the key stops being served, if ever.
    pub fn expires_at(&self) -> Option<SystemTime> {
        self.expires_at
    }

    /// The masked display form: at most the first and last four characters.
    pub fn masked(&self) -> String {
        crate::validate::mask(&self.secret)
    }
}

impl fmt::Debug for ProviderKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProviderKey")
            .field("provider", &self.provider)
            .field("secret", &"[REDACTED]")
            .field("source", &self.source)
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// One user's provider keys, as the layer puts them into each request's extensions.
///
/// Cloning is one reference-count increment. Lookups take the provider name in any case.
///
/// Handlers get it from the layer; a handler's own tests build one by collecting
/// [`ProviderKey::from_secret`]s (a later key for the same provider replaces an earlier
/// one), and `UserKeys::default()` is a user with no keys.
///
/// ```
/// # fn use_keys(keys: &tower_byok::UserKeys) {
/// if let Some(key) = keys.get("openai") {
///     let bearer = format!("Bearer {}", key.expose_secret());
///     // ... call the provider with `bearer`
/// # let _ = bearer;
/// }
/// let missing: Vec<&str> = ["openai", "exa"].into_iter().filter(|p| !keys.contains(p)).collect();
/// # let _ = missing;
/// # }
/// ```
#[derive(Clone, Default)]
pub struct UserKeys {
    keys: Arc<[ProviderKey]>,
    /// Served from the cache past its TTL because loading failed (stale-if-error).
    pub(crate) stale: bool,
    /// A team's key set only: its policy says only its keys serve its members.
    pub(crate) team_keys_only: bool,
}

impl UserKeys {
    /// Builds a key set; `keys` must be sorted by provider with no duplicates.
    pub(crate) fn from_sorted(keys: Vec<ProviderKey>) -> Self {
        debug_assert!(keys.windows(2).all(|w| w[0].provider < w[1].provider));
        Self {
            keys: keys.into(),
            stale: false,
            team_keys_only: false,
        }
    }

    /// The key for `provider`, if the user has one.
    pub fn get(&self, provider: &str) -> Option<&ProviderKey> {
        let found = |p: &str| {
            self.keys
                .binary_search_by(|k| k.provider().cmp(p))
                .ok()
                .map(|i| &self.keys[i])
        };
        if provider.bytes().any(|b| b.is_ascii_uppercase()) {
            found(&provider.to_ascii_lowercase())
        } else {
            found(provider)
        }
    }

    /// Whether the user has a key for `provider`.
    pub fn contains(&self, provider: &str) -> bool {
        self.get(provider).is_some()
    }

    /// The providers the user has keys for, in alphabetical order.
    pub fn providers(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().map(ProviderKey::provider)
    }

    /// All keys, ordered by provider.
    pub fn iter(&self) -> impl Iterator<Item = &ProviderKey> {
        self.keys.iter()
    }

    /// How many keys the user has.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether the user has no keys.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Whether these keys were served from the cache past its freshness because loading
    /// them failed (a store error or a timeout), under a stale-if-error bound.
    ///
    /// Stale keys were valid when last loaded and have not expired since, but a change
    /// made since then (a rotated or deleted key) may not be reflected. Keys handed out
    /// otherwise are never stale.
    ///
    /// ```
    /// let keys = tower_byok::UserKeys::default();
    /// assert!(!keys.is_stale());
    /// ```
    pub fn is_stale(&self) -> bool {
        self.stale
    }

    /// The same keys, marked stale.
    pub(crate) fn into_stale(self) -> Self {
        Self {
            stale: true,
            ..self
        }
    }

    /// This set, plus the keys of `fallback` for providers this set lacks.
    pub(crate) fn or_else_from(self, fallback: &UserKeys) -> Self {
        if self.keys.is_empty() {
            // A member without keys of their own, the usual case: the fallback's set
            // itself, shared, not copied key by key (BENCHMARKS.md §1, issue 19).
            return Self {
                keys: fallback.keys.clone(),
                stale: self.stale,
                team_keys_only: false,
            };
        }
        if fallback.keys.iter().all(|k| self.contains(k.provider())) {
            return self;
        }
        let mut keys: Vec<ProviderKey> = self
            .keys
            .iter()
            .chain(
                fallback
                    .keys
                    .iter()
                    .filter(|k| !self.contains(k.provider())),
            )
            .map(ProviderKey::duplicate)
            .collect();
        keys.sort_by(|a, b| a.provider.cmp(&b.provider));
        Self {
            stale: self.stale,
            ..Self::from_sorted(keys)
        }
    }

    /// The earliest expiry among the keys, if any expires.
    pub(crate) fn earliest_expiry(&self) -> Option<SystemTime> {
        self.keys.iter().filter_map(|k| k.expires_at).min()
    }
}

impl FromIterator<ProviderKey> for UserKeys {
    fn from_iter<I: IntoIterator<Item = ProviderKey>>(iter: I) -> Self {
        let mut keys: Vec<ProviderKey> = iter.into_iter().collect();
        // Reversed, then stably sorted: of equal providers, the last given comes first
        // and survives the dedup.
        keys.reverse();
        keys.sort_by(|a, b| a.provider.cmp(&b.provider));
        keys.dedup_by(|a, b| a.provider == b.provider);
        Self::from_sorted(keys)
    }
}

/// Left in a request's extensions when the layer found no user, so the extractor can
/// tell "no user" (401) from "layer not installed" (500).
#[derive(Clone, Copy, Debug)]
pub(crate) struct NoUser;

impl fmt::Debug for UserKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserKeys")
            .field("providers", &self.providers().collect::<Vec<_>>())
            .finish()
    }
}

/// One stored key as [`Vault::list`](crate::Vault::list) shows it: never the secret.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct KeyInfo {
    /// The normalized provider name.
    pub provider: String,
    /// At most the first and last four characters, e.g. `sk-p…x9Qa`.
    pub masked: String,
    /// A short keyed fingerprint: equal keys of one vault have equal fingerprints.
    pub fingerprint: String,
    /// The id of the master key the secret is sealed under.
    pub master_key_id: String,
    /// When the key was first stored.
    pub created_at: SystemTime,
    /// When the key was last replaced.
    pub updated_at: SystemTime,
    /// When the key stops being served, if ever.
    pub expires_at: Option<SystemTime>,
}

impl KeyInfo {
    /// Whether the key's expiry has passed (it is no longer served).
    pub fn is_expired(&self) -> bool {
        self.expires_at.is_some_and(|at| at <= SystemTime::now())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::ErrorKind;

    #[test]
    fn collected_keys_are_normalized_sorted_and_the_last_of_a_provider_wins() {
        let keys: UserKeys = [
            ProviderKey::from_secret("OpenAI", "sk-first").unwrap(),
            ProviderKey::from_secret("exa", "exa-1").unwrap(),
            ProviderKey::from_secret("openai", "sk-second").unwrap(),
        ]
        .into_iter()
        .collect();
        assert_eq!(keys.providers().collect::<Vec<_>>(), ["exa", "openai"]);
        assert_eq!(keys.get("OPENAI").unwrap().expose_secret(), "sk-second");
        assert_eq!(keys.get("openai").unwrap().source(), KeySource::Database);
    }

    #[test]
    fn handmade_keys_are_checked_like_stored_ones_and_errors_hide_the_secret() {
        let err = ProviderKey::from_secret("not a provider!", "sk-secret-1").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidProvider);
        let err = ProviderKey::from_secret("openai", "").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidSecret);
        let long = "s".repeat(crate::MAX_SECRET_LEN + 1);
        let err = ProviderKey::from_secret("openai", long.clone()).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidSecret);
        assert!(!format!("{err} {err:?}").contains(&long[..32]));

        let at = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(60);
        let key = ProviderKey::from_secret("openai", "sk-1")
            .unwrap()
            .with_source(KeySource::Environment)
            .with_expiry(at);
        assert_eq!(key.source(), KeySource::Environment);
        assert_eq!(key.expires_at(), Some(at));
        assert!(!format!("{key:?}").contains("sk-1"));
    }
}
