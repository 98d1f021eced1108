//! Helpers for testing an app that uses this crate (feature `test-util`; enable it in
//! your `[dev-dependencies]` only).
//!
//! ```toml
//! [dev-dependencies]
//! tower-byok = { version = "0.1", features = ["test-util"] }
//! ```
//!
//! | helper | for |
//! |---|---|
//! | [`user_keys`] | a handler's own tests: the [`UserKeys`] it would get, no vault |
//! | [`memory_vault`] | a vault in memory with a generated keyring, for route tests |
//! | [`TestVault`] | a vault on a temporary file that can be [reopened](TestVault::reopen), as after a redeploy |
//!
//! The helpers panic on invalid input or when SQLite cannot start, as test helpers do,
//! with messages that hold no secret.

use crate::error::ErrorKind;
use crate::keys::{ProviderKey, UserKeys};

mod vault;

pub use self::vault::{memory_vault, TestVault};

/// The keys a handler would get for a user with these `(provider, secret)` pairs: for
/// testing a handler on its own, without a vault or the layer. A later pair for the
/// same provider replaces an earlier one; provider names are lowercased.
///
/// ```
/// use tower_byok::test_util::user_keys;
///
/// let keys = user_keys([("OpenAI", "sk-test-0001"), ("gemini", "AIza-test-0001")]);
/// assert_eq!(keys.get("openai").map(|k| k.expose_secret()), Some("sk-test-0001"));
/// assert_eq!(keys.providers().collect::<Vec<_>>(), ["gemini", "openai"]);
///
/// let nobody = user_keys::<&str, &str>([]); // or UserKeys::default()
/// assert!(nobody.is_empty());
/// ```
///
/// [`ProviderKey::from_secret`] collected into [`UserKeys`] does the same without
/// panicking, and takes [`with_source`](ProviderKey::with_source) and
/// [`with_expiry`](ProviderKey::with_expiry).
///
/// # Panics
///
/// If a provider name or a secret is invalid (as [`ProviderKey::from_secret`] would
/// refuse it). The message gives the pair's position and, for a bad secret, its
/// provider; never a secret.
#[track_caller]
pub fn user_keys<P, S>(keys: impl IntoIterator<Item = (P, S)>) -> UserKeys
where
    P: AsRef<str>,
    S: Into<String>,
{
    let mut all = Vec::new();
    for (i, (provider, secret)) in keys.into_iter().enumerate() {
        match ProviderKey::from_secret(provider.as_ref(), secret) {
            Ok(key) => all.push(key),
            // A provider name that fails may be a secret given in its place: not shown.
            Err(e) if e.kind() == ErrorKind::InvalidProvider => {
                panic!("test_util::user_keys: pair {i}: {e}")
            }
            Err(e) => panic!(
                "test_util::user_keys: pair {i}, the {} key: {e}",
                provider.as_ref()
            ),
        }
    }
    all.into_iter().collect()
}
