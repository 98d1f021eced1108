//! The crate's error type.

use std::borrow::Cow;
use std::error::Error as StdError;
use std::fmt;

/// A boxed error from a lower layer (the database driver, the file system).
type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// What went wrong, for matching on an [`Error`].
///
/// New kinds may be added in minor releases, so matches need a wildcard arm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A user id was empty, longer than 255 bytes, or otherwise unusable.
    InvalidUserId,
    /// A provider name does not match `[a-z0-9][a-z0-9_.-]{0,63}` after lowercasing.
    InvalidProvider,
    /// A secret was empty, longer than 16 KiB, or rejected by a validator.
    InvalidSecret,
    /// A user already stores as many providers' keys as the vault allows
    /// ([`VaultBuilder::max_providers_per_user`](crate::VaultBuilder::max_providers_per_user)),
    /// and the write would have added another. Replacing a key the user already has is
    /// always allowed. Nothing was written; the message holds the cap, never the user id
    /// or the secret.
    TooManyProviders,
    /// A key failed a provider's live check ([`crate::check::KeyCheck::check_live`]).
    KeyRejected,
    /// An audit actor name is not 1 to 64 characters of `[A-Za-z0-9_.:@-]`.
    InvalidActor,
    /// A master keyring (its text, a key's length or encoding, its ids) is unusable.
    InvalidKeyring,
    /// A stored secret could not be opened: tampered with, truncated, moved to another
    /// user or provider, or sealed under a different key with the same id.
    ///
    /// Deliberately says nothing more: the reason a decryption fails is not the caller's
    /// business, and telling it apart helps an attacker.
    Decrypt,
    /// A stored row names a master key id the keyring does not hold.
    UnknownMasterKey,
    /// The keyring cannot read this database: none of its keys opens the vault's check
    /// record. Raised when the vault is opened, never at a user's first request.
    WrongMasterKey,
    /// A master key cannot be retired: rows are still sealed under it, or it is active.
    MasterKeyInUse,
    /// The database failed or could not be reached.
    Store,
    /// The database schema is unknown to this version of the crate, or a migration failed.
    Migration,
    /// An operation did not finish within its deadline.
    Timeout,
    /// The vault's store does not implement the optional capability an operation needs
    /// (one of the capability traits of [`store`](crate::store), e.g.
    /// [`RotationStore`](crate::store::RotationStore) for a rewrap); the message names
    /// it. Nothing was read or written.
    Unsupported,
    /// A legacy file could not be imported (module `import`, feature `import`): it is
    /// malformed or ambiguous, a key did not read back as imported, or removing the source
    /// was refused.
    Import,
    /// A `.env` text given to [`env_file::parse`](crate::env_file::parse) (an upload, say)
    /// is malformed, or sets two different keys for one provider; the message names the
    /// line or lines, never a value.
    InvalidEnvFile,
    /// A team id is empty, longer than 255 bytes, holds a control character or starts
    /// or ends with whitespace (the rules of a user id).
    InvalidTeamId,
    /// The key management service that unwraps the master keyring could not be reached:
    /// a refused connection, a DNS or TLS failure, or no answer in time. Nothing fell
    /// back to another keyring.
    KmsUnreachable,
    /// The key management service refused to unwrap (or wrap) with the named key: the
    /// caller's credentials or the key's policy do not allow it.
    KmsAccessDenied,
    /// The key management service's key is disabled, pending deletion or gone.
    KmsKeyDisabled,
    /// A wrapped master key does not unwrap: its ciphertext was changed, truncated, moved
    /// to another key id, or wrapped under another KMS key than the one named.
    WrappedKeyCorrupt,
    /// A keyring source failed otherwise: a command exited with an error or printed no
    /// keyring, or a service answered with an error of another kind. The message names
    /// the source, never its output.
    KeyringSource,
}

impl ErrorKind {
    fn describe(self) -> &'static str {
        match self {
            Self::InvalidUserId => "invalid user id",
            Self::InvalidProvider => "invalid provider name",
            Self::InvalidSecret => "invalid secret",
            Self::InvalidActor => "invalid audit actor",
            Self::TooManyProviders => "the user already stores the most providers allowed",
            Self::KeyRejected => "the key was rejected by its provider check",
            Self::InvalidKeyring => "invalid master keyring",
            Self::Decrypt => "a stored key could not be decrypted",
            Self::UnknownMasterKey => "a stored key names a master key the keyring does not hold",
            Self::WrongMasterKey => "the master keyring cannot read this database",
            Self::MasterKeyInUse => "the master key is still in use",
            Self::Store => "key store error",
            Self::Migration => "key store migration error",
            Self::Timeout => "operation timed out",
            Self::Unsupported => "the key store does not support this operation",
            Self::Import => "legacy import error",
            Self::InvalidEnvFile => "malformed .env text",
            Self::InvalidTeamId => "invalid team id",
            Self::KmsUnreachable => "the key management service could not be reached",
            Self::KmsAccessDenied => "the key management service denied access",
            Self::KmsKeyDisabled => "the key management service's key is disabled",
            Self::WrappedKeyCorrupt => "a wrapped master key does not unwrap",
            Self::KeyringSource => "the keyring source failed",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.describe())
    }
}

/// The error type of every fallible operation in this crate.
///
/// Match on [`Error::kind`]. The message says what failed and, where it helps, which
/// limit or input position; it never contains a secret, key material or a user id, and
/// neither does its `Debug` form.
pub struct Error {
    kind: ErrorKind,
    detail: Option<Cow<'static, str>>,
    source: Option<BoxError>,
}

impl Error {
    pub(crate) fn new(kind: ErrorKind) -> Self {
        Self {
            kind,
            detail: None,
            source: None,
        }
    }

    /// Adds a detail to the message. Callers pass only text they built themselves from
    /// limits, positions and names of variables or files, never input values.
    pub(crate) fn with_detail(mut self, detail: impl Into<Cow<'static, str>>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    pub(crate) fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// A database failure, for [`KeyStore`](crate::store::KeyStore) implementations (and its
    /// capabilities) outside this crate: kind [`ErrorKind::Store`], with `source` as [`source`](StdError::source).
    ///
    /// The layer answers such a failure with `503` and retries at the next request. The
    /// source is never shown in [`Display`](fmt::Display); it must not hold a secret.
    ///
    /// ```
    /// use tower_byok::{Error, ErrorKind};
    ///
    /// let io = std::io::Error::new(std::io::ErrorKind::TimedOut, "replica unreachable");
    /// let err = Error::store(io);
    /// assert_eq!(err.kind(), ErrorKind::Store);
    /// assert!(std::error::Error::source(&err).is_some());
    /// assert!(!err.to_string().contains("replica"), "the source stays out of the message");
    /// ```
    pub fn store(source: impl Into<BoxError>) -> Self {
        Self::new(ErrorKind::Store).with_source(source)
    }

    /// A schema failure of a [`KeyStore`](crate::store::KeyStore) implementation (an unknown or
    /// failed migration): kind [`ErrorKind::Migration`], with `source`.
    pub fn migration(source: impl Into<BoxError>) -> Self {
        Self::new(ErrorKind::Migration).with_source(source)
    }

    /// A failure of a [`KeyringSource`](crate::KeyringSource) or [`Kms`](crate::Kms)
    /// written outside this crate, e.g. a GCP or Vault Transit client.
    ///
    /// `kind` says which failure it was: [`ErrorKind::KmsUnreachable`],
    /// [`ErrorKind::KmsAccessDenied`], [`ErrorKind::KmsKeyDisabled`],
    /// [`ErrorKind::WrappedKeyCorrupt`], [`ErrorKind::InvalidKeyring`],
    /// [`ErrorKind::Timeout`] or [`ErrorKind::KeyringSource`]; any other kind is taken as
    /// [`ErrorKind::KeyringSource`]. `detail` is shown in the message, so it must name
    /// the source (a key's name, a program) and never hold key material or a credential;
    /// `source` is kept for [`source`](StdError::source) and never shown.
    ///
    /// ```
    /// use tower_byok::{Error, ErrorKind};
    ///
    /// let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
    /// let err = Error::keyring_source(ErrorKind::KmsUnreachable, "transit key `byok`", io);
    /// assert_eq!(err.kind(), ErrorKind::KmsUnreachable);
    /// assert!(err.to_string().contains("transit key `byok`"));
    /// ```
    pub fn keyring_source(
        kind: ErrorKind,
        detail: impl Into<Cow<'static, str>>,
        source: impl Into<BoxError>,
    ) -> Self {
        let kind = match kind {
            ErrorKind::KmsUnreachable
            | ErrorKind::KmsAccessDenied
            | ErrorKind::KmsKeyDisabled
            | ErrorKind::WrappedKeyCorrupt
            | ErrorKind::InvalidKeyring
            | ErrorKind::Timeout
            | ErrorKind::KeyringSource => kind,
            _ => ErrorKind::KeyringSource,
        };
        Self::new(kind).with_detail(detail).with_source(source)
    }

    /// What went wrong.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.kind.describe())?;
        if let Some(detail) = &self.detail {
            write!(f, ": {detail}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Error {
    // Hand-written: a derived Debug would print the driver error's Debug form, which for
    // PostgreSQL includes the server's `DETAIL` line, and that can quote row values.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Error");
        d.field("kind", &self.kind);
        if let Some(detail) = &self.detail {
            d.field("detail", detail);
        }
        if let Some(source) = &self.source {
            d.field("source", &format_args!("{source}"));
        }
        d.finish()
    }
}

impl StdError for Error {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn StdError + 'static))
    }
}

impl From<ErrorKind> for Error {
    fn from(kind: ErrorKind) -> Self {
        Self::new(kind)
    }
}

/// A `Result` whose error is this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
