//! Checks a key must pass before it is stored: a quick format check, and optionally an
//! asynchronous one, e.g. a call to the provider that tests the key.
//!
//! Checks are opt-in, per provider, on the [`VaultBuilder`](crate::VaultBuilder). A
//! failed format check is [`ErrorKind::InvalidSecret`](crate::ErrorKind::InvalidSecret),
//! a failed live check [`ErrorKind::KeyRejected`](crate::ErrorKind::KeyRejected); the
//! message carries the check's fixed reason, never the key. Imports go through the same
//! checks.
//!
//! ```
//! use tower_byok::check::{self, KeyCheck};
//! use tower_byok::{ErrorKind, Keyring, MasterKey, SqliteStore, Vault};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower_byok::Error> {
//! let vault = Vault::builder(SqliteStore::in_memory().await?, Keyring::new(MasterKey::generate("k1")?))
//!     .check("openai", check::openai())
//!     .check("exa", check::format(|key| {
//!         if key.len() == 36 { Ok(()) } else { Err("an Exa key is 36 characters") }
//!     }))
//!     .check("acme", check::live(|key: String| async move {
//!         // e.g. GET https://api.acme.example/v1/me with the key; Ok if it answers 200
//!         if key.starts_with("acme_") { Ok(()) } else { Err("the provider refused the key") }
//!     }))
//!     .open()
//!     .await?;
//!
//! let err = vault.put("alice", "openai", "not-an-openai-key").await.unwrap_err();
//! assert_eq!(err.kind(), ErrorKind::InvalidSecret);
//! assert!(!err.to_string().contains("not-an-openai-key"));
//! assert_eq!(vault.put("alice", "acme", "nope").await.unwrap_err().kind(), ErrorKind::KeyRejected);
//! vault.put("alice", "acme", "acme_0123456789").await?;
//! # Ok(()) }
//! ```

use std::future::{ready, Future};
use std::pin::Pin;

/// The future of a live check: `Err` holds a fixed reason, never the key.
pub type LiveCheck<'a> = Pin<Box<dyn Future<Output = Result<(), &'static str>> + Send + 'a>>;

/// A check a provider's keys must pass before they are stored.
pub trait KeyCheck: Send + Sync + 'static {
    /// A quick, synchronous check of the key's shape. `Err` holds a fixed reason, which
    /// must not contain the key.
    fn check_format(&self, key: &str) -> Result<(), &'static str> {
        let _ = key;
        Ok(())
    }

    /// An optional asynchronous check, after the format check passed: e.g. a request to
    /// the provider with the key. Bound its time yourself.
    fn check_live<'a>(&'a self, key: &'a str) -> LiveCheck<'a> {
        let _ = key;
        Box::pin(ready(Ok(())))
    }
}

/// A format check from a closure. Made by [`format()`].
#[derive(Clone, Debug)]
pub struct FormatFn<F>(F);

impl<F> KeyCheck for FormatFn<F>
where
    F: Fn(&str) -> Result<(), &'static str> + Send + Sync + 'static,
{
    fn check_format(&self, key: &str) -> Result<(), &'static str> {
        (self.0)(key)
    }
}

/// A format check from a closure returning a fixed reason on failure.
pub fn format<F>(f: F) -> FormatFn<F>
where
    F: Fn(&str) -> Result<(), &'static str> + Send + Sync + 'static,
{
    FormatFn(f)
}

/// A live check from an async closure. Made by [`live()`].
#[derive(Clone, Debug)]
pub struct LiveFn<F>(F);

impl<F, Fut> KeyCheck for LiveFn<F>
where
    F: Fn(String) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), &'static str>> + Send + 'static,
{
    fn check_live<'a>(&'a self, key: &'a str) -> LiveCheck<'a> {
        Box::pin((self.0)(key.to_owned()))
    }
}

/// A live check from an async closure taking the key (an owned copy, so the future can
/// be `'static`; drop it when done).
pub fn live<F, Fut>(f: F) -> LiveFn<F>
where
    F: Fn(String) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), &'static str>> + Send + 'static,
{
    LiveFn(f)
}

/// One of the built-in format checks: a prefix, a length range and an alphabet.
#[derive(Clone, Copy, Debug)]
pub struct Builtin {
    prefix: &'static str,
    len: (usize, usize),
    reason: &'static str,
}

impl KeyCheck for Builtin {
    fn check_format(&self, key: &str) -> Result<(), &'static str> {
        let ok = key.starts_with(self.prefix)
            && (self.len.0..=self.len.1).contains(&key.len())
            && key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'));
        if ok {
            Ok(())
        } else {
            Err(self.reason)
        }
    }
}

/// OpenAI: `sk-…`, 20 to 400 characters of letters, digits, `-` and `_`.
pub fn openai() -> Builtin {
    Builtin {
        prefix: "sk-",
        len: (20, 400),
        reason: "an OpenAI key starts with `sk-` and has 20 to 400 letters, digits, `-` or `_`",
    }
}

/// Anthropic: `sk-ant-…`, 40 to 400 characters.
pub fn anthropic() -> Builtin {
    Builtin {
        prefix: "sk-ant-",
        len: (40, 400),
        reason:
            "an Anthropic key starts with `sk-ant-` and has 40 to 400 letters, digits, `-` or `_`",
    }
}

/// Google AI (Gemini): `AIza…`, exactly 39 characters.
pub fn gemini() -> Builtin {
    Builtin {
        prefix: "AIza",
        len: (39, 39),
        reason: "a Google AI key starts with `AIza` and has 39 letters, digits, `-` or `_`",
    }
}

/// Groq: `gsk_…`, 40 to 100 characters.
pub fn groq() -> Builtin {
    Builtin {
        prefix: "gsk_",
        len: (40, 100),
        reason: "a Groq key starts with `gsk_` and has 40 to 100 letters, digits, `-` or `_`",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtins_accept_real_shapes_and_reject_others() {
        let cases = [
            (openai(), "sk-proj-abcDEF0123456789_xyz-01", true),
            (openai(), "sk-short", false),
            (openai(), "sk-has space 0123456789abcdef", false),
            (openai(), "pk-0123456789abcdefghijklmnop", false),
            (
                anthropic(),
                &format!("sk-ant-api03-{}", "a".repeat(40)),
                true,
            ),
            (
                anthropic(),
                "sk-0123456789abcdefghijklmnopqrstuvwxyz0123",
                false,
            ),
            (gemini(), "AIzaSyA-0123456789abcdefghijklmnopqrstu", true),
            (gemini(), "AIzaSyA-0123456789", false),
            (groq(), &format!("gsk_{}", "A1".repeat(26)), true),
            (groq(), "gsk_short", false),
        ];
        for (check, key, ok) in cases {
            assert_eq!(check.check_format(key).is_ok(), ok, "{key}");
        }
        let reason = openai().check_format("sk-short").err().unwrap_or_default();
        assert!(!reason.contains("sk-short"));
    }
}
