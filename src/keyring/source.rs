//! Where a vault's master keyring comes from: the [`KeyringSource`] seam, and the sources
//! that read plain keyrings (an environment variable, a file, a keyring given at start).

use std::borrow::Cow;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;

use super::Keyring;
use crate::error::Result;

/// A boxed, sendable future: what [`KeyringSource`] and [`Kms`](crate::Kms) return, so
/// that a vault can hold any source behind one pointer.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Where a vault's master keyring comes from.
///
/// A vault opened with [`Vault::builder_from`](crate::Vault::builder_from) loads its
/// keyring from the source once at open, and again on each
/// [refresh](crate::Vault::refresh_keyring) (for a master-key rotation without a
/// restart). Never per request: serving a request uses the keyring already loaded.
///
/// The crate ships a source for each place a keyring is kept:
///
/// | source | reads |
/// |---|---|
/// | [`Keyring`] | itself: a keyring built or parsed before the vault opens |
/// | [`EnvKeyring`] | an environment variable in the [text format](Keyring#text-format) |
/// | [`FileKeyring`] | a file in the text format |
/// | [`CommandKeyring`](crate::CommandKeyring) | the standard output of a program (`sops -d`, `gcloud kms decrypt`, `vault kv get`), with a timeout |
/// | [`WrappedKeyringSource`](crate::WrappedKeyringSource) | a [wrapped keyring](crate::WrappedKeyring) in a file or a variable, unwrapped by a [`Kms`](crate::Kms) such as `AwsKms` |
///
/// Write one for anything else: `load` returns the keyring, or an [`Error`](crate::Error)
/// made with [`Error::keyring_source`](crate::Error::keyring_source) that says what failed.
/// A failed load at open keeps the vault closed; a failed refresh keeps the keys already
/// loaded and is reported by [`Vault::keyring_status`](crate::Vault::keyring_status).
pub trait KeyringSource: Send + Sync + 'static {
    /// Loads the whole keyring, the active key first.
    fn load(&self) -> BoxFuture<'_, Result<Keyring>>;

    /// Names the source for messages and [`KeyringStatus`](crate::KeyringStatus): a
    /// variable, a file, a program or a KMS key. Never key material or a credential.
    fn describe(&self) -> Cow<'_, str>;
}

impl KeyringSource for Keyring {
    fn load(&self) -> BoxFuture<'_, Result<Keyring>> {
        let keyring = self.clone();
        Box::pin(async move { Ok(keyring) })
    }

    fn describe(&self) -> Cow<'_, str> {
        Cow::Borrowed("a keyring given at start")
    }
}

/// A keyring in an environment variable, read again at each load: see
/// [`Keyring::from_env`].
#[derive(Debug, Clone)]
pub struct EnvKeyring {
    var: String,
}

impl EnvKeyring {
    /// The keyring in the variable `var`, e.g. `BYOK_MASTER_KEYS`.
    pub fn new(var: impl Into<String>) -> Self {
        Self { var: var.into() }
    }
}

impl KeyringSource for EnvKeyring {
    fn load(&self) -> BoxFuture<'_, Result<Keyring>> {
        Box::pin(async move { Keyring::from_env(&self.var) })
    }

    fn describe(&self) -> Cow<'_, str> {
        Cow::Owned(format!("environment variable {}", self.var))
    }
}

/// A keyring in a file, read again at each load, so that a refresh picks up a rotated
/// file: see [`Keyring::from_file`].
#[derive(Debug, Clone)]
pub struct FileKeyring {
    path: PathBuf,
}

impl FileKeyring {
    /// The keyring in the file at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }
}

impl KeyringSource for FileKeyring {
    fn load(&self) -> BoxFuture<'_, Result<Keyring>> {
        let path = self.path.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || Keyring::from_file(path))
                .await
                .unwrap_or_else(|join| {
                    Err(crate::Error::keyring_source(
                        crate::ErrorKind::KeyringSource,
                        "the keyring file reader stopped",
                        join,
                    ))
                })
        })
    }

    fn describe(&self) -> Cow<'_, str> {
        Cow::Owned(format!("file {}", self.path.display()))
    }
}
