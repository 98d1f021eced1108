//! The [`Kms`] seam: a key management service that wraps and unwraps single master keys,
//! for a [`WrappedKeyring`](crate::WrappedKeyring).

use zeroize::Zeroizing;

use super::source::BoxFuture;
use crate::error::Result;

/// A key management service that wraps (encrypts) and unwraps (decrypts) one master key
/// at a time under a key it holds and never lets out.
///
/// A [`WrappedKeyring`](crate::WrappedKeyring) keeps each master key as the ciphertext
/// `wrap` returned, and calls `unwrap` once per master key when the vault opens or
/// refreshes its keyring, never per request.
///
/// `key_id` is the master key's id in the keyring. An implementation binds it to the
/// ciphertext (AWS KMS: in the encryption context; Vault Transit: in the context or
/// associated data), so that a wrapped key moved to another id does not unwrap. Errors
/// are made with [`Error::keyring_source`](crate::Error::keyring_source), with the kind
/// that says what failed: unreachable, access denied, key disabled, corrupt ciphertext.
pub trait Kms: Send + Sync + 'static {
    /// The scheme a wrapped keyring names this service by, e.g. `aws-kms`: lowercase
    /// letters, digits and `-`.
    fn scheme(&self) -> &str;

    /// Wraps `plaintext` (a 32-byte master key) under the service's key `kms_key`.
    fn wrap<'a>(
        &'a self,
        kms_key: &'a str,
        key_id: &'a str,
        plaintext: &'a [u8],
    ) -> BoxFuture<'a, Result<Vec<u8>>>;

    /// Unwraps what [`wrap`](Self::wrap) returned for the same `kms_key` and `key_id`.
    fn unwrap<'a>(
        &'a self,
        kms_key: &'a str,
        key_id: &'a str,
        ciphertext: &'a [u8],
    ) -> BoxFuture<'a, Result<Zeroizing<Vec<u8>>>>;
}
