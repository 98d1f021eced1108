//! Provider keys from the text of a `.env` file, e.g. one a user uploads for a session.
//!
//! [`parse`] reads the text (not a path: the application decides where it comes from and
//! how large it may be) with an [`EnvMapping`] from variables to providers, and returns
//! the [`EnvKeys`] found; [`Vault::put_env_keys`](crate::Vault::put_env_keys) stores them
//! for one user, with an expiry when given. The importer of the `import` feature reads
//! `.env` files with the same grammar and mapping.
//!
//! ```
//! use std::time::{Duration, SystemTime};
//! use tower_byok::env_file::{self, EnvMapping};
//! use tower_byok::{Keyring, MasterKey, SqliteStore, Vault};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let vault = Vault::open(SqliteStore::in_memory().await?, Keyring::new(MasterKey::generate("k1")?)).await?;
//! let upload = "DEBUG=true\nexport OPENAI_API_KEY=\"sk-proj-dev-0123456789\"\nEXA_API_KEY='exa-dev-0123456789' # mine\n";
//!
//! let keys = env_file::parse(upload, &EnvMapping::new())?;
//! assert_eq!(keys.iter().map(|k| k.provider()).collect::<Vec<_>>(), ["openai", "exa"]);
//! assert_eq!(keys.skipped().collect::<Vec<_>>(), ["DEBUG"]);
//! assert!(!format!("{keys:?}").contains("dev-0123456789"), "Debug shows masked keys only");
//!
//! // Kept for this session only: not served after the expiry.
//! let stored = vault.put_env_keys("alice", &keys, Some(SystemTime::now() + Duration::from_secs(8 * 3600))).await?;
//! assert_eq!(stored, 2);
//! assert_eq!(vault.get("alice", "exa").await?.expect("stored").expose_secret(), "exa-dev-0123456789");
//!
//! // A malformed line is refused by number, never quoted.
//! let err = env_file::parse("OPENAI_API_KEY=\"sk-unterminated", &EnvMapping::new()).unwrap_err();
//! assert_eq!(err.to_string(), "malformed .env text: line 1: unterminated quoted value");
//! # Ok(()) }
//! ```
//!
//! # Grammar
//!
//! The `.env` format as python-dotenv, dotenvy and docker compose share it, without
//! their variable expansion, read strictly: a line it cannot read with certainty is an
//! error naming the line, never a guess. `tests/env_file.rs` checks each rule below.
//!
//! - **Lines** end at `\n`; a `\r` before it and a byte order mark at the start of the
//!   text are ignored.
//! - **Comments**: a blank line, or one whose first non-blank character is `#`, is
//!   skipped.
//! - **Assignments** are `NAME=value`, with optional blanks around `=`, optionally after
//!   `export` and a blank (`export NAME=value`). A name starts with an ASCII letter or
//!   `_`, and goes on with ASCII letters, digits, `_` and `.`. Any other line is an
//!   error.
//! - **Unquoted values** run to the end of the line, blanks at either end trimmed; a
//!   `#` after a blank starts a comment (`a #b` is `a`), elsewhere it is part of the
//!   value (`a#b`). The blank may be the one after `=`: `NAME= #b` is an empty value
//!   with a comment (so `OPENAI_API_KEY= # paste yours` is skipped), while `NAME=#b` is
//!   `#b`, as python-dotenv reads both. A backslash is an ordinary character.
//! - **Single-quoted values** (`'...'`) are taken as written, backslashes included, up
//!   to the next `'`.
//! - **Double-quoted values** (`"..."`) resolve the escapes `\n`, `\r`, `\t`, `\"`,
//!   `\\` and `\'`; a backslash before any other character is kept (`\z` is `\z`).
//! - After a closing quote, only blanks or a comment may follow.
//! - **Multi-line values** are not read: a quote must close on its own line, or the line
//!   is an error (`unterminated quoted value`). Write a newline inside a value as `\n`
//!   in double quotes.
//! - **No expansion**: `$VAR` and `${VAR}` are kept as written, in every kind of value.
//!   A secret may contain `$`; expanding it would silently change the key.
//!
//! # Mapping and checks
//!
//! Each variable's provider comes from the [`EnvMapping`]; variables it does not map, and
//! those whose value is empty once trimmed, are [skipped](EnvKeys::skipped). Values are
//! trimmed. When two variables of one provider (`GEMINI_API_KEY` and `GOOGLE_API_KEY`,
//! or one variable twice) hold the same key, the later is skipped; when they hold
//! different keys, the text is refused as ambiguous, naming both lines.
//!
//! Errors name lines and variables, never a value: [`ErrorKind::InvalidEnvFile`] for a
//! malformed or ambiguous text, [`ErrorKind::InvalidSecret`] for a value that cannot be
//! a key (longer than [`MAX_SECRET_LEN`], or a Fernet token the
//! old app encrypted keys with).

use std::fmt;

use zeroize::Zeroizing;

use crate::error::{Error, ErrorKind, Result};
use crate::keys::{KeySource, ProviderKey};
use crate::validate::MAX_SECRET_LEN;

mod line;
mod mapping;

pub(crate) use line::assignments;
#[cfg(feature = "import")]
pub(crate) use mapping::strip_api_key_suffix;
pub use mapping::EnvMapping;

/// Reads provider keys from the text of a `.env` file: see [the module docs](self) for
/// the grammar and an example.
///
/// # Errors
///
/// [`ErrorKind::InvalidEnvFile`] for a malformed line or two different keys for one provider
/// (the message names the lines); [`ErrorKind::InvalidSecret`] for a value longer than
/// 16 KiB or one that looks encrypted by the old app (naming the line). No error holds a
/// value or a line's text.
pub fn parse(text: &str, mapping: &EnvMapping) -> Result<EnvKeys> {
    let mut found = EnvKeys::default();
    for assignment in assignments(text) {
        let assignment = assignment.map_err(|e| {
            Error::new(ErrorKind::InvalidEnvFile)
                .with_detail(format!("line {}: {}", e.line, e.what))
        })?;
        let name = assignment.name;
        let Some(provider) = mapping.provider_for(name) else {
            found.skipped.push(name.to_owned());
            continue;
        };
        let secret = assignment.value.trim();
        let origin = format!("line {} ({name})", assignment.line);
        if secret.is_empty() {
            found.skipped.push(name.to_owned());
            continue;
        }
        if secret.len() > MAX_SECRET_LEN {
            return Err(Error::new(ErrorKind::InvalidSecret)
                .with_detail(format!("{origin}: the key is longer than 16 KiB")));
        }
        if looks_like_fernet(secret) {
            return Err(Error::new(ErrorKind::InvalidSecret).with_detail(format!(
                "{origin}: the value looks encrypted by the old app (a Fernet token); \
                 decrypt it first"
            )));
        }
        if let Some(earlier) = found.keys.iter().find(|k| k.key.provider() == provider) {
            if earlier.key.expose_secret() != secret {
                return Err(Error::new(ErrorKind::InvalidEnvFile).with_detail(format!(
                    "ambiguous input: {} and {origin} hold different keys for provider \
                     `{provider}`; remove one",
                    earlier.origin
                )));
            }
            found.skipped.push(name.to_owned());
            continue;
        }
        let secret = Zeroizing::new(secret.to_owned());
        found.keys.push(Found {
            key: ProviderKey::new(provider, secret, KeySource::Database, None),
            origin,
        });
    }
    Ok(found)
}

/// The provider keys [`parse`] found in a `.env` text, in the order of their lines, one
/// per provider; and the variables it skipped.
///
/// The secrets are zeroized on drop. `Debug` shows each provider and its masked key,
/// never a secret.
#[derive(Default)]
pub struct EnvKeys {
    keys: Vec<Found>,
    skipped: Vec<String>,
}

/// A key and where it was found: `line 3 (OPENAI_API_KEY)`, for error messages.
pub(crate) struct Found {
    pub(crate) key: ProviderKey,
    pub(crate) origin: String,
}

impl EnvKeys {
    /// The keys found, in the order of their lines. Each is a [`ProviderKey`] of source
    /// [`KeySource::Database`] (where it is bound) and without expiry: the expiry is
    /// given when storing them.
    pub fn iter(&self) -> impl Iterator<Item = &ProviderKey> {
        self.keys.iter().map(|f| &f.key)
    }

    /// How many keys were found.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether no key was found.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The names of the variables not taken, in the order of their lines, as written:
    /// those the mapping does not map, those with an empty value, and those holding the
    /// same key as an earlier variable of the same provider.
    pub fn skipped(&self) -> impl Iterator<Item = &str> {
        self.skipped.iter().map(String::as_str)
    }

    pub(crate) fn found(&self) -> &[Found] {
        &self.keys
    }
}

impl fmt::Debug for EnvKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        struct Masked<'a>(&'a [Found]);
        impl fmt::Debug for Masked<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_map()
                    .entries(self.0.iter().map(|k| (k.key.provider(), k.key.masked())))
                    .finish()
            }
        }
        f.debug_struct("EnvKeys")
            .field("keys", &Masked(&self.keys))
            .finish_non_exhaustive()
    }
}

/// A Fernet token (what the old Python app encrypted keys with): URL-safe base64 of a
/// 0x80 version byte and a timestamp, so it starts `gAAAAA`; at least 57 bytes, i.e.
/// 100 characters.
pub(crate) fn looks_like_fernet(s: &str) -> bool {
    s.len() >= 100
        && s.starts_with("gAAAAA")
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'='))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fernet_tokens_are_recognized() {
        let token = format!("gAAAAAB{}", "x".repeat(120));
        assert!(looks_like_fernet(&token));
        assert!(!looks_like_fernet("gAAAAAshort"));
        assert!(!looks_like_fernet(&format!("sk-{}", "x".repeat(120))));
    }
}
