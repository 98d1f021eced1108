//! The wrapped keyring: master keys each encrypted under a KMS key, in a text format
//! (docs/FORMAT.md §15), and the [`KeyringSource`] that unwraps it through a [`Kms`].

use std::borrow::Cow;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use zeroize::Zeroizing;

use super::kms::Kms;
use super::source::{BoxFuture, KeyringSource};
use super::{check_key_id, Keyring, MasterKey, MASTER_KEY_LEN};
use crate::error::{Error, ErrorKind, Result};

/// The first line of every wrapped keyring, version 1.
pub const WRAPPED_KEYRING_HEADER: &str = "tower-byok wrapped-keyring v1";

const HEADER_PREFIX: &str = "tower-byok wrapped-keyring ";
const MAX_KMS_KEY_LEN: usize = 2048;
const MAX_CIPHERTEXT_LEN: usize = 6144;

/// A keyring whose master keys are each wrapped (encrypted) under one key of a key
/// management service: harmless alone, opened only through the service.
///
/// Its text (docs/FORMAT.md "The wrapped keyring") is a header line, the scheme that
/// names the service, the service's key, and one line per master key with its id and
/// its ciphertext in base64, the active key first:
///
/// ```text
/// tower-byok wrapped-keyring v1
/// scheme aws-kms
/// kms-key arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab
/// k2 AQICAHh...
/// k1 AQICAHh...
/// ```
///
/// [`wrap`](Self::wrap) makes one from a plain [`Keyring`], [`rotate`](Self::rotate)
/// adds a new active key, and a [`WrappedKeyringSource`] unwraps it when a vault opens or
/// refreshes its keyring. `Debug` shows the scheme and the ids, never a ciphertext or
/// the KMS key.
#[derive(Clone, PartialEq, Eq)]
pub struct WrappedKeyring {
    scheme: String,
    kms_key: String,
    keys: Vec<(String, Vec<u8>)>,
}

impl WrappedKeyring {
    /// Parses the text format.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidKeyring`] for an unknown header or version, a scheme or KMS
    /// key line missing or malformed, a bad id, bad base64, a duplicate id, or no key.
    /// The message names the line, never a ciphertext.
    ///
    /// ```
    /// use tower_byok::WrappedKeyring;
    ///
    /// let text = "tower-byok wrapped-keyring v1\nscheme aws-kms\nkms-key alias/byok\n\
    ///             k2 AQID\nk1 BAUG\n";
    /// let wrapped = WrappedKeyring::parse(text)?;
    /// assert_eq!(wrapped.scheme(), "aws-kms");
    /// assert_eq!(wrapped.kms_key(), "alias/byok");
    /// assert_eq!(wrapped.ids().collect::<Vec<_>>(), ["k2", "k1"]);
    /// assert_eq!(wrapped.to_text(), text);
    /// # Ok::<(), tower_byok::Error>(())
    /// ```
    pub fn parse(text: &str) -> Result<Self> {
        Self::parse_from(text, "wrapped keyring")
    }

    fn parse_from(text: &str, origin: &str) -> Result<Self> {
        let bad = |line: usize, why: &str| {
            Error::new(ErrorKind::InvalidKeyring)
                .with_detail(format!("{origin}, line {line}: {why}"))
        };
        let mut lines = text
            .split('\n')
            .map(|l| l.trim_end_matches('\r'))
            .enumerate()
            .map(|(i, l)| (i + 1, l));
        let header = lines.next().map(|(_, l)| l).unwrap_or_default();
        if header != WRAPPED_KEYRING_HEADER {
            let why = if header.starts_with(HEADER_PREFIX) {
                "unknown wrapped keyring version (this crate reads v1)"
            } else {
                "not a wrapped keyring (the first line must be `tower-byok wrapped-keyring v1`)"
            };
            return Err(bad(1, why));
        }
        let mut body = lines.filter(|(_, l)| !l.is_empty() && !l.starts_with('#'));
        let mut field = |name: &str| -> Result<(usize, String)> {
            let (n, line) = body.next().ok_or_else(|| {
                Error::new(ErrorKind::InvalidKeyring)
                    .with_detail(format!("{origin}: missing the `{name}` line"))
            })?;
            let value = line
                .strip_prefix(name)
                .and_then(|rest| rest.strip_prefix(' '))
                .ok_or_else(|| bad(n, &format!("expected `{name} <value>`")))?;
            Ok((n, value.to_owned()))
        };
        let (n, scheme) = field("scheme")?;
        if !valid_scheme(&scheme) {
            return Err(bad(
                n,
                "a scheme is 1 to 32 lowercase letters, digits and `-`",
            ));
        }
        let (n, kms_key) = field("kms-key")?;
        if !valid_kms_key(&kms_key) {
            return Err(bad(
                n,
                "a KMS key is 1 to 2048 printable characters without spaces",
            ));
        }
        let mut keys: Vec<(String, Vec<u8>)> = Vec::new();
        for (n, line) in body {
            let (id, b64) = line
                .split_once(' ')
                .ok_or_else(|| bad(n, "expected `<key id> <base64 ciphertext>`"))?;
            check_key_id(id).map_err(|why| bad(n, why))?;
            if keys.iter().any(|(seen, _)| seen == id) {
                return Err(bad(n, "duplicate key id"));
            }
            let ciphertext = STANDARD
                .decode(b64)
                .map_err(|_| bad(n, "the ciphertext is not valid base64"))?;
            if ciphertext.is_empty() || ciphertext.len() > MAX_CIPHERTEXT_LEN {
                return Err(bad(n, "the ciphertext is empty or too long"));
            }
            keys.push((id.to_owned(), ciphertext));
        }
        if keys.is_empty() {
            return Err(
                Error::new(ErrorKind::InvalidKeyring).with_detail(format!("{origin} holds no key"))
            );
        }
        Ok(Self {
            scheme,
            kms_key,
            keys,
        })
    }

    /// The text format, ready to be saved: harmless alone.
    pub fn to_text(&self) -> String {
        let mut text = format!(
            "{WRAPPED_KEYRING_HEADER}\nscheme {}\nkms-key {}\n",
            self.scheme, self.kms_key
        );
        for (id, ciphertext) in &self.keys {
            text.push_str(id);
            text.push(' ');
            STANDARD.encode_string(ciphertext, &mut text);
            text.push('\n');
        }
        text
    }

    /// The scheme that names the key management service, e.g. `aws-kms`.
    pub fn scheme(&self) -> &str {
        &self.scheme
    }

    /// The service's key that wraps every master key, e.g. an AWS KMS key ARN or alias.
    pub fn kms_key(&self) -> &str {
        &self.kms_key
    }

    /// The master keys' ids, the active one first.
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().map(|(id, _)| id.as_str())
    }

    /// The ciphertext of the master key `id`, as the KMS returned it.
    pub fn ciphertext(&self, id: &str) -> Option<&[u8]> {
        self.keys
            .iter()
            .find(|(seen, _)| seen == id)
            .map(|(_, c)| c.as_slice())
    }

    /// Wraps every key of `keyring` under `kms_key` of `kms`, in the same order.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidKeyring`] for a scheme or KMS key the format cannot hold;
    /// whatever `kms` fails with (e.g. [`ErrorKind::KmsAccessDenied`]).
    pub async fn wrap(keyring: &Keyring, kms: &dyn Kms, kms_key: &str) -> Result<Self> {
        let mut wrapped = Self::empty(kms, kms_key)?;
        for key in keyring.keys() {
            let ciphertext = kms.wrap(kms_key, key.id(), key.bytes()).await?;
            wrapped.keys.push((key.id().to_owned(), ciphertext));
        }
        Ok(wrapped)
    }

    /// Adds a fresh random master key with id `new_id`, wrapped under the same KMS key,
    /// and makes it the active key (first); the others stay after it.
    ///
    /// Nothing is unwrapped: rotating needs the right to encrypt, not to decrypt.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidKeyring`] for a bad or duplicate id, or a `kms` of another
    /// scheme; whatever `kms` fails with.
    pub async fn rotate(&self, kms: &dyn Kms, new_id: &str) -> Result<Self> {
        self.check_scheme(kms)?;
        if self.keys.iter().any(|(id, _)| id == new_id) {
            return Err(Error::new(ErrorKind::InvalidKeyring).with_detail("duplicate key id"));
        }
        let key = MasterKey::generate(new_id)?;
        let ciphertext = kms.wrap(&self.kms_key, key.id(), key.bytes()).await?;
        let mut rotated = self.clone();
        rotated.keys.insert(0, (new_id.to_owned(), ciphertext));
        Ok(rotated)
    }

    /// The same wrapped keyring without the master key `id` (after
    /// [`Vault::retire_master_key`](crate::Vault::retire_master_key)).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidKeyring`] when it holds no key `id`, or only that one.
    pub fn without(&self, id: &str) -> Result<Self> {
        if self.ciphertext(id).is_none() {
            return Err(Error::new(ErrorKind::InvalidKeyring)
                .with_detail(format!("the wrapped keyring holds no key `{id}`")));
        }
        if self.keys.len() == 1 {
            return Err(Error::new(ErrorKind::InvalidKeyring)
                .with_detail("the wrapped keyring would hold no key"));
        }
        let mut rest = self.clone();
        rest.keys.retain(|(seen, _)| seen != id);
        Ok(rest)
    }

    /// Unwraps every master key through `kms`: one call per key.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidKeyring`] when `kms` is of another scheme than the one named;
    /// [`ErrorKind::WrappedKeyCorrupt`] when a key does not unwrap to 32 bytes; whatever
    /// `kms` fails with:
    /// [`ErrorKind::KmsUnreachable`], [`ErrorKind::KmsAccessDenied`],
    /// [`ErrorKind::KmsKeyDisabled`] or [`ErrorKind::WrappedKeyCorrupt`]. Nothing falls
    /// back: one key that fails fails the whole keyring.
    pub async fn unwrap(&self, kms: &dyn Kms) -> Result<Keyring> {
        self.check_scheme(kms)?;
        let mut keyring: Option<Keyring> = None;
        for (id, ciphertext) in &self.keys {
            let plain = kms.unwrap(&self.kms_key, id, ciphertext).await?;
            if plain.len() != MASTER_KEY_LEN {
                return Err(
                    Error::new(ErrorKind::WrappedKeyCorrupt).with_detail(format!(
                        "master key `{id}` does not unwrap to {MASTER_KEY_LEN} bytes"
                    )),
                );
            }
            let mut bytes = Zeroizing::new([0u8; MASTER_KEY_LEN]);
            bytes.copy_from_slice(&plain);
            let key = MasterKey::from_bytes(id, *bytes)?;
            keyring = Some(match keyring {
                None => Keyring::new(key),
                Some(ring) => ring.with_key(key)?,
            });
        }
        keyring.ok_or_else(|| Error::new(ErrorKind::InvalidKeyring).with_detail("no key"))
    }

    fn empty(kms: &dyn Kms, kms_key: &str) -> Result<Self> {
        let scheme = kms.scheme().to_owned();
        if !valid_scheme(&scheme) {
            return Err(Error::new(ErrorKind::InvalidKeyring)
                .with_detail("the KMS's scheme is not 1 to 32 lowercase letters, digits and `-`"));
        }
        if !valid_kms_key(kms_key) {
            return Err(Error::new(ErrorKind::InvalidKeyring)
                .with_detail("a KMS key is 1 to 2048 printable characters without spaces"));
        }
        Ok(Self {
            scheme,
            kms_key: kms_key.to_owned(),
            keys: Vec::new(),
        })
    }

    fn check_scheme(&self, kms: &dyn Kms) -> Result<()> {
        if kms.scheme() == self.scheme {
            return Ok(());
        }
        Err(Error::new(ErrorKind::InvalidKeyring).with_detail(format!(
            "the wrapped keyring's scheme `{}` is unknown to this KMS (`{}`)",
            self.scheme,
            kms.scheme()
        )))
    }
}

impl fmt::Debug for WrappedKeyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Not the KMS key either: an ARN names an account and a key, which a log of
        // Debug output has no need to carry.
        f.debug_struct("WrappedKeyring")
            .field("scheme", &self.scheme)
            .field("ids", &self.ids().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

fn valid_kms_key(kms_key: &str) -> bool {
    !kms_key.is_empty()
        && kms_key.len() <= MAX_KMS_KEY_LEN
        && kms_key.bytes().all(|b| b.is_ascii_graphic())
}

fn valid_scheme(scheme: &str) -> bool {
    !scheme.is_empty()
        && scheme.len() <= 32
        && scheme
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

enum Place {
    File(PathBuf),
    Env(String),
    Given(WrappedKeyring),
}

/// A [`KeyringSource`] that reads a [`WrappedKeyring`] (from a file or an environment
/// variable, again at each load) and unwraps it through a [`Kms`]: when a vault opens
/// and at each refresh, never per request.
///
/// ```no_run
/// # #[cfg(all(feature = "sqlite", feature = "aws-kms"))]
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tower_byok::Error> {
/// use tower_byok::{AwsKms, SqliteStore, Vault, WrappedKeyringSource};
///
/// let source = WrappedKeyringSource::file("keyring.wrapped", AwsKms::from_env()?);
/// let vault = Vault::builder_from(SqliteStore::open("keys.db").await?, source)
///     .open()
///     .await?;
/// # let _ = vault; Ok(()) }
/// # #[cfg(not(all(feature = "sqlite", feature = "aws-kms")))]
/// # fn main() {}
/// ```
pub struct WrappedKeyringSource {
    place: Place,
    kms: Arc<dyn Kms>,
}

impl WrappedKeyringSource {
    /// The wrapped keyring in the file at `path`, read again at each load.
    pub fn file(path: impl Into<PathBuf>, kms: impl Kms) -> Self {
        Self {
            place: Place::File(path.into()),
            kms: Arc::new(kms),
        }
    }

    /// The wrapped keyring in the environment variable `var`, read again at each load.
    pub fn env(var: impl Into<String>, kms: impl Kms) -> Self {
        Self {
            place: Place::Env(var.into()),
            kms: Arc::new(kms),
        }
    }

    /// A wrapped keyring already read.
    pub fn new(wrapped: WrappedKeyring, kms: impl Kms) -> Self {
        Self {
            place: Place::Given(wrapped),
            kms: Arc::new(kms),
        }
    }

    async fn read(&self) -> Result<WrappedKeyring> {
        match &self.place {
            Place::Given(wrapped) => Ok(wrapped.clone()),
            Place::Env(var) => {
                let origin = format!("environment variable {var}");
                let text = std::env::var(var).map_err(|_| {
                    Error::new(ErrorKind::InvalidKeyring)
                        .with_detail(format!("{origin} is not set or not UTF-8"))
                })?;
                WrappedKeyring::parse_from(&text, &origin)
            }
            Place::File(path) => {
                let origin = format!("file {}", path.display());
                let read = tokio::task::spawn_blocking({
                    let path = path.clone();
                    move || std::fs::read_to_string(path)
                });
                let text = match read.await {
                    Ok(read) => read.map_err(|e| {
                        Error::new(ErrorKind::InvalidKeyring)
                            .with_detail(format!("{origin} could not be read"))
                            .with_source(e)
                    })?,
                    Err(join) => {
                        return Err(Error::keyring_source(
                            ErrorKind::KeyringSource,
                            "the wrapped keyring file reader stopped",
                            join,
                        ))
                    }
                };
                WrappedKeyring::parse_from(&text, &origin)
            }
        }
    }
}

impl KeyringSource for WrappedKeyringSource {
    fn load(&self) -> BoxFuture<'_, Result<Keyring>> {
        Box::pin(async move { self.read().await?.unwrap(&*self.kms).await })
    }

    fn describe(&self) -> Cow<'_, str> {
        let place = match &self.place {
            Place::File(path) => format!("file {}", path.display()),
            Place::Env(var) => format!("environment variable {var}"),
            Place::Given(_) => "given at start".to_owned(),
        };
        Cow::Owned(format!(
            "wrapped keyring ({place}), unwrapped by {}",
            self.kms.scheme()
        ))
    }
}

impl fmt::Debug for WrappedKeyringSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WrappedKeyringSource")
            .field("source", &self.describe())
            .finish()
    }
}
