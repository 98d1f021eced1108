//! The one place a stored row is opened: for requests, direct reads, verify and rewrap.

use std::time::SystemTime;

use zeroize::Zeroizing;

use super::{from_unix_ms, Inner};
use crate::crypto::UserCipher;
use crate::error::{Error, ErrorKind, Result};
use crate::keyring::Keyring;
use crate::keys::{KeySource, ProviderKey};
use crate::owner::OwnerKind;
use crate::store::{SealedKey, StoredKey};

/// What opening a row reads of it: a whole [`StoredKey`], or the narrower [`SealedKey`]
/// a cache miss selects.
pub(super) trait SealedRow {
    fn provider(&self) -> &str;
    fn key_id(&self) -> &str;
    fn sealed(&self) -> &[u8];
    fn expires_at(&self) -> Option<i64>;
}

impl SealedRow for StoredKey {
    fn provider(&self) -> &str {
        &self.provider
    }
    fn key_id(&self) -> &str {
        &self.key_id
    }
    fn sealed(&self) -> &[u8] {
        &self.sealed
    }
    fn expires_at(&self) -> Option<i64> {
        self.expires_at
    }
}

impl SealedRow for SealedKey {
    fn provider(&self) -> &str {
        &self.provider
    }
    fn key_id(&self) -> &str {
        &self.key_id
    }
    fn sealed(&self) -> &[u8] {
        &self.sealed
    }
    fn expires_at(&self) -> Option<i64> {
        self.expires_at
    }
}

/// Opens rows of one owner, deriving the owner's cipher once per master key.
pub(super) struct Opener<'a> {
    inner: &'a Inner,
    /// The keyring in use when the opener was made: one refresh swapping it meanwhile
    /// changes nothing for rows already being opened.
    keyring: &'a Keyring,
    kind: OwnerKind,
    user_id: &'a str,
    /// Per master key id, in the order first needed: nearly always one, so a scan beats
    /// hashing the id (SipHash) for every row.
    ciphers: Vec<UserCipher<'a>>,
}

impl<'a> Opener<'a> {
    /// Opens a user's rows.
    pub(super) fn new(inner: &'a Inner, keyring: &'a Keyring, user_id: &'a str) -> Self {
        Self::for_owner(inner, keyring, OwnerKind::User, user_id)
    }

    /// Opens the rows of an owner of any kind: its keys say where they came from.
    pub(super) fn for_owner(
        inner: &'a Inner,
        keyring: &'a Keyring,
        kind: OwnerKind,
        owner_id: &'a str,
    ) -> Self {
        Self {
            inner,
            keyring,
            kind,
            user_id: owner_id,
            ciphers: Vec::new(),
        }
    }

    /// The key as a request is served it, or `None` when it has expired.
    pub(super) fn open(
        &mut self,
        row: &impl SealedRow,
        now: SystemTime,
    ) -> Result<Option<ProviderKey>> {
        let expires_at = row.expires_at().map(from_unix_ms);
        if expires_at.is_some_and(|at| at <= now) {
            return Ok(None);
        }
        let secret = self.open_secret(row)?;
        Ok(Some(ProviderKey::new(
            row.provider(),
            secret,
            match self.kind {
                OwnerKind::User => KeySource::Database,
                OwnerKind::Team => KeySource::Team,
                OwnerKind::Platform => KeySource::Platform,
            },
            expires_at,
        )))
    }

    /// The secret of a row, expired or not: [`ErrorKind::UnknownMasterKey`] when the
    /// keyring lacks its master key, [`ErrorKind::Decrypt`] when it does not open or does
    /// not hold UTF-8 (FORMAT.md §7), exactly as serving it would fail.
    pub(super) fn open_secret(&mut self, row: &impl SealedRow) -> Result<Zeroizing<String>> {
        let Some(master) = self.keyring.get(row.key_id()) else {
            tracing::error!(key_id = %row.key_id(), provider = %row.provider(), "a stored key names a master key the keyring does not hold");
            return Err(Error::new(ErrorKind::UnknownMasterKey));
        };
        let (kind, user_id) = (self.kind, self.user_id);
        let at = match self.ciphers.iter().position(|c| c.key_id() == master.id()) {
            Some(at) => at,
            None => {
                self.ciphers
                    .push(UserCipher::for_owner(master, kind, user_id));
                self.ciphers.len() - 1
            }
        };
        let cipher = &self.ciphers[at];
        cipher.open_text(user_id, row.provider(), row.sealed()).inspect_err(|_| {
            tracing::error!(
                owner = kind.as_str(),
                user_ref = %self.inner.secret.owner_ref(kind, user_id),
                provider = %row.provider(),
                key_id = %row.key_id(),
                "a stored key failed to decrypt: tampered with, moved, or sealed under another key"
            );
        })
    }
}
