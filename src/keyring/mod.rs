//! Master keys, the keyring that holds them, and where a keyring comes from.
//!
//! - `mod.rs`: [`MasterKey`], [`Keyring`] and the keyring text format;
//! - `source.rs`: the [`KeyringSource`] seam and the plain sources (env, file);
//! - `command.rs`: [`CommandKeyring`], a keyring printed by a program;
//! - `kms.rs`: the [`Kms`] seam, for wrapped keyrings;
//! - `wrapped.rs`: [`WrappedKeyring`] (the format) and [`WrappedKeyringSource`];
//! - `aws.rs`: [`AwsKms`], the `Kms` on AWS KMS (feature `aws-kms`).

#[cfg(feature = "aws-kms")]
mod aws;
mod command;
mod kms;
mod source;
mod wrapped;

#[cfg(feature = "aws-kms")]
pub use self::aws::AwsKms;
pub use self::command::CommandKeyring;
pub use self::kms::Kms;
pub use self::source::{BoxFuture, EnvKeyring, FileKeyring, KeyringSource};
pub use self::wrapped::{WrappedKeyring, WrappedKeyringSource, WRAPPED_KEYRING_HEADER};

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use base64::Engine as _;
use chacha20poly1305::aead::Generate;
use zeroize::Zeroizing;

use crate::error::{Error, ErrorKind, Result};

/// The length of a master key in bytes.
pub const MASTER_KEY_LEN: usize = 32;

const MAX_KEY_ID_LEN: usize = 64;

/// One 32-byte master key and its id.
///
/// The key bytes are zeroized on drop and never printed: `Debug` shows only the id.
#[derive(Clone)]
pub struct MasterKey {
    id: Arc<str>,
    bytes: Zeroizing<[u8; MASTER_KEY_LEN]>,
}

impl MasterKey {
    /// Generates a fresh random key from the operating system's random number generator.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidKeyring`] when `id` is not 1 to 64 characters of
    /// `[A-Za-z0-9_.-]`.
    ///
    /// ```
    /// use tower_byok::MasterKey;
    ///
    /// let key = MasterKey::generate("k1")?;
    /// assert_eq!(key.id(), "k1");
    /// // Store the line in a secret manager or a file only the app can read.
    /// let line = key.expose_keyring_line();
    /// assert!(line.starts_with("k1:"));
    /// # Ok::<(), tower_byok::Error>(())
    /// ```
    pub fn generate(id: &str) -> Result<Self> {
        // From the OS CSPRNG (`getrandom`).
        let bytes = Zeroizing::new(<[u8; MASTER_KEY_LEN]>::generate());
        Self::from_bytes(id, *bytes)
    }

    /// Builds a key from raw bytes.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidKeyring`] for a bad id or an all-zero key (the mark of an
    /// unset buffer, never of a real key).
    pub fn from_bytes(id: &str, bytes: [u8; MASTER_KEY_LEN]) -> Result<Self> {
        let bytes = Zeroizing::new(bytes);
        check_key_id(id).map_err(|e| Error::new(ErrorKind::InvalidKeyring).with_detail(e))?;
        if bytes.iter().all(|b| *b == 0) {
            return Err(Error::new(ErrorKind::InvalidKeyring).with_detail("the key is all zeros"));
        }
        Ok(Self {
            id: id.into(),
            bytes,
        })
    }

    /// Builds a key from its base64 text (32 bytes, standard alphabet, padding optional).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidKeyring`] for a bad id, bad base64, a length other than 32
    /// bytes or an all-zero key. The message never repeats the text.
    pub fn from_base64(id: &str, text: &str) -> Result<Self> {
        let bytes = decode_key(text.trim())
            .map_err(|e| Error::new(ErrorKind::InvalidKeyring).with_detail(e))?;
        Self::from_bytes(id, *bytes)
    }

    /// The key's id, stored beside every secret sealed under it.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The key as one keyring entry, `<id>:<base64>`, ready to be saved.
    ///
    /// The name says it: the returned text *is* the key. It is zeroized on drop.
    pub fn expose_keyring_line(&self) -> Zeroizing<String> {
        let mut line = Zeroizing::new(String::with_capacity(self.id.len() + 45));
        line.push_str(&self.id);
        line.push(':');
        STANDARD.encode_string(self.bytes.as_slice(), &mut line);
        line
    }

    pub(crate) fn bytes(&self) -> &[u8; MASTER_KEY_LEN] {
        &self.bytes
    }
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MasterKey")
            .field("id", &self.id)
            .field("bytes", &"[REDACTED]")
            .finish()
    }
}

/// One or more master keys: the first is active for new encryptions, all of them open.
///
/// Cheap to clone.
///
/// ```
/// use tower_byok::{Keyring, MasterKey};
///
/// let old = MasterKey::generate("k1")?;
/// let new = MasterKey::generate("k2")?;
/// // k2 seals new secrets; secrets sealed under k1 still open.
/// let keyring = Keyring::new(new).with_key(old)?;
/// assert_eq!(keyring.active().id(), "k2");
/// assert_eq!(keyring.ids().collect::<Vec<_>>(), ["k2", "k1"]);
/// # Ok::<(), tower_byok::Error>(())
/// ```
///
/// # Text format
///
/// A keyring is written as entries separated by newlines or commas. Each entry is
/// `<id>:<key>`, where `<id>` is 1 to 64 characters of `[A-Za-z0-9_.-]` and `<key>` is
/// 32 bytes in standard base64 (with or without padding). Blank entries and lines
/// starting with `#` are ignored. **The first entry is the active key**: new secrets are
/// sealed with it. Every entry can open secrets sealed under it, so rotating is a
/// matter of putting a new key first and keeping the old ones after it.
///
/// ```text
/// # generated 2026-11-22; the first key is active
/// k2:6y7mQ1o0m7cQ0l1Yq1b9kV4mP2x3r5t7u9w1y3z5A7E=
/// k1:Qm9vdHN0cmFwIGtleSBmb3IgZG9jcyBvbmx5ISEhISE=
/// ```
///
/// The same text fits in one environment variable with commas:
/// `BYOK_MASTER_KEYS="k2:...,k1:..."`.
#[derive(Clone)]
pub struct Keyring {
    keys: Arc<[MasterKey]>,
}

impl Keyring {
    /// A keyring with one key, which is active.
    pub fn new(active: MasterKey) -> Self {
        Self {
            keys: Arc::from(vec![active]),
        }
    }

    /// Adds a key that opens secrets sealed under it but does not seal new ones.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidKeyring`] when the keyring already holds a key with that id.
    pub fn with_key(self, key: MasterKey) -> Result<Self> {
        if self.get(key.id()).is_some() {
            return Err(Error::new(ErrorKind::InvalidKeyring).with_detail("duplicate key id"));
        }
        let mut keys = self.keys.to_vec();
        keys.push(key);
        Ok(Self { keys: keys.into() })
    }

    /// Parses the [text format](Keyring#text-format).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidKeyring`], naming the entry that is wrong but never its text.
    pub fn parse(text: &str) -> Result<Self> {
        Self::parse_from(text, "keyring text")
    }

    /// Reads the keyring from an environment variable, e.g. `BYOK_MASTER_KEYS`.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidKeyring`] when the variable is unset, not UTF-8 or not a
    /// valid keyring. The message names the variable and never contains its value.
    pub fn from_env(var: &str) -> Result<Self> {
        let origin = format!("environment variable {var}");
        let value = Zeroizing::new(std::env::var(var).map_err(|e| {
            let why = match e {
                std::env::VarError::NotPresent => "is not set",
                std::env::VarError::NotUnicode(_) => "is not valid UTF-8",
            };
            Error::new(ErrorKind::InvalidKeyring).with_detail(format!("{origin} {why}"))
        })?);
        Self::parse_from(&value, &origin)
    }

    /// Reads the keyring from a file in the [text format](Keyring#text-format).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidKeyring`] when the file cannot be read or is not a valid
    /// keyring; the message names the file and the line, never its contents.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let origin = format!("file {}", path.display());
        let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
            Error::new(ErrorKind::InvalidKeyring)
                .with_detail(format!("{origin} could not be read"))
                .with_source(e)
        })?);
        Self::parse_from(&text, &origin)
    }

    pub(crate) fn parse_from(text: &str, origin: &str) -> Result<Self> {
        let bad = |n: usize, why: &str| {
            Error::new(ErrorKind::InvalidKeyring).with_detail(format!("{origin}, entry {n}: {why}"))
        };
        let mut keys: Vec<MasterKey> = Vec::new();
        // Comment lines go first, so that a comma inside a comment splits nothing.
        let entries = text
            .lines()
            .filter(|line| !line.trim_start().starts_with('#'))
            .flat_map(|line| line.split(','))
            .map(str::trim)
            .filter(|e| !e.is_empty());
        for (i, entry) in entries.enumerate() {
            let n = i + 1;
            let (id, b64) = entry
                .split_once(':')
                .ok_or_else(|| bad(n, "expected `<id>:<base64 key>`"))?;
            let id = id.trim();
            check_key_id(id).map_err(|why| bad(n, why))?;
            let bytes = decode_key(b64.trim()).map_err(|why| bad(n, why))?;
            let key =
                MasterKey::from_bytes(id, *bytes).map_err(|_| bad(n, "the key is all zeros"))?;
            if keys.iter().any(|k| k.id() == id) {
                return Err(bad(n, "duplicate key id"));
            }
            keys.push(key);
        }
        if keys.is_empty() {
            return Err(
                Error::new(ErrorKind::InvalidKeyring).with_detail(format!("{origin} holds no key"))
            );
        }
        Ok(Self { keys: keys.into() })
    }

    /// The key that seals new secrets.
    pub fn active(&self) -> &MasterKey {
        &self.keys[0]
    }

    /// The key with this id, if the keyring holds it.
    pub fn get(&self, id: &str) -> Option<&MasterKey> {
        self.keys.iter().find(|k| k.id() == id)
    }

    /// All keys, the active one first.
    pub(crate) fn keys(&self) -> impl Iterator<Item = &MasterKey> {
        self.keys.iter()
    }

    /// The ids of all keys, the active one first.
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().map(MasterKey::id)
    }

    /// The whole keyring in its [text format](Keyring#text-format), active key first.
    ///
    /// The returned text *is* key material; it is zeroized on drop.
    pub fn expose_text(&self) -> Zeroizing<String> {
        let mut text = Zeroizing::new(String::new());
        for key in self.keys.iter() {
            text.push_str(&key.expose_keyring_line());
            text.push('\n');
        }
        text
    }
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyring")
            .field("active", &self.active().id())
            .field("ids", &self.ids().collect::<Vec<_>>())
            .finish()
    }
}

fn check_key_id(id: &str) -> std::result::Result<(), &'static str> {
    if id.is_empty() || id.len() > MAX_KEY_ID_LEN {
        return Err("a key id must be 1 to 64 characters");
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
    {
        return Err("a key id may hold only letters, digits, `_`, `.` and `-`");
    }
    Ok(())
}

fn decode_key(text: &str) -> std::result::Result<Zeroizing<[u8; MASTER_KEY_LEN]>, &'static str> {
    let engine = if text.ends_with('=') {
        &STANDARD
    } else {
        &STANDARD_NO_PAD
    };
    let decoded = Zeroizing::new(
        engine
            .decode(text)
            .map_err(|_| "the key is not valid base64")?,
    );
    if decoded.len() != MASTER_KEY_LEN {
        return Err("the key is not 32 bytes");
    }
    let mut bytes = Zeroizing::new([0u8; MASTER_KEY_LEN]);
    bytes.copy_from_slice(&decoded);
    Ok(bytes)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const SECRET_B64: &str = "c2VjcmV0LWtleS1ieXRlcy0wMTIzNDU2Nzg5YWJjZGU=";

    #[test]
    fn parses_entries_in_order_with_comments_and_commas() {
        let k2 = MasterKey::generate("k2").unwrap();
        let text = format!(
            "# a comment, with a comma\n{}\n\n k1 : {SECRET_B64} ",
            &*k2.expose_keyring_line()
        );
        let ring = Keyring::parse(&text).unwrap();
        assert_eq!(ring.ids().collect::<Vec<_>>(), ["k2", "k1"]);
        assert_eq!(ring.get("k2").unwrap().bytes(), k2.bytes());
        let commas = Keyring::parse(&format!(
            "a:{SECRET_B64},b:{}",
            SECRET_B64.trim_end_matches('=')
        ))
        .unwrap();
        assert_eq!(commas.active().id(), "a");
        let round = Keyring::parse(&ring.expose_text()).unwrap();
        assert_eq!(round.ids().collect::<Vec<_>>(), ["k2", "k1"]);
    }

    #[test]
    fn rejects_bad_input_without_echoing_it() {
        let zero = STANDARD.encode([0u8; 32]);
        let short = STANDARD.encode(b"c2VjcmV0LWtleS1ieXRlcy0w");
        let cases = [
            (
                format!("k1:{SECRET_B64}\nk1:{SECRET_B64}"),
                "entry 2: duplicate key id",
            ),
            (format!("k1:{zero}"), "entry 1: the key is all zeros"),
            (format!("k1:{short}"), "entry 1: the key is not 32 bytes"),
            (
                "k1:c2VjcmV0!!!".to_owned(),
                "entry 1: the key is not valid base64",
            ),
            (SECRET_B64.to_owned(), "entry 1: expected"),
            (format!("bad id:{SECRET_B64}"), "entry 1: a key id may hold"),
            ("# only a comment".to_owned(), "holds no key"),
        ];
        for (text, expected) in cases {
            let err = Keyring::parse(&text).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidKeyring);
            let shown = format!("{err} {err:?}");
            assert!(shown.contains(expected), "{shown}");
            for secret in [SECRET_B64, &zero, &short, "c2VjcmV0"] {
                assert!(!shown.contains(secret), "{shown} echoes input");
            }
        }
    }

    #[test]
    fn env_errors_name_the_variable_but_not_the_value() {
        let var = "TOWER_BYOK_TEST_KEYRING_UNIT";
        std::env::set_var(var, "k1:c2VjcmV0LXZhbHVlLXRoYXQtbXVzdC1ub3QtbGVhaw");
        let err = Keyring::from_env(var).unwrap_err();
        let shown = format!("{err} {err:?}");
        assert!(shown.contains(var), "{shown}");
        assert!(!shown.contains("c2VjcmV0LXZhbHVl"), "{shown}");
        std::env::remove_var(var);
        let err = Keyring::from_env(var).unwrap_err();
        assert!(err.to_string().contains("is not set"));
    }

    #[test]
    fn debug_never_shows_key_bytes() {
        let key = MasterKey::from_base64("k1", SECRET_B64).unwrap();
        let shown = format!("{key:?} {:?}", Keyring::new(key.clone()));
        assert!(
            shown.contains("k1") && shown.contains("REDACTED"),
            "{shown}"
        );
        assert!(
            !shown.contains(SECRET_B64) && !shown.contains("115, 101"),
            "{shown}"
        );
    }
}
