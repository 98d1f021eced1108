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
///
/// # A KMS of your own: HashiCorp Vault Transit
///
/// The crate ships `AwsKms` (feature `aws-kms`). Another service is a
/// type of yours; this one wraps master keys with Vault's Transit engine through the
/// app's own HTTP client (compiled here, not run against a Vault server):
///
/// ```
/// use base64::{engine::general_purpose::STANDARD as B64, Engine as _};
/// use serde_json::{json, Value};
/// use tower_byok::{BoxFuture, Error, ErrorKind, Kms, Result, WrappedKeyringSource};
/// use zeroize::{Zeroize, Zeroizing};
///
/// /// What Transit needs of the app's HTTP client: POST `body` to `/v1/{path}` of the
/// /// Vault server with the app's token; the answer's JSON, or its HTTP status (0 when
/// /// there was no answer).
/// pub trait VaultHttp: Send + Sync + 'static {
///     fn post(&self, path: String, body: Value) -> BoxFuture<'_, Result<Value, u16>>;
/// }
///
/// /// A Transit key made with `derived=true`: the master key id is the derivation
/// /// context, so a wrapped key moved to another id does not decrypt.
/// pub struct VaultTransit<H>(pub H);
///
/// fn failed(operation: &'static str, status: u16) -> Error {
///     let kind = match status {
///         401 | 403 => ErrorKind::KmsAccessDenied,
///         400 => ErrorKind::WrappedKeyCorrupt,
///         _ => ErrorKind::KmsUnreachable,
///     };
///     Error::keyring_source(kind, operation, format!("Vault answered HTTP {status}"))
/// }
///
/// impl<H: VaultHttp> Kms for VaultTransit<H> {
///     fn scheme(&self) -> &str {
///         "vault-transit"
///     }
///
///     fn wrap<'a>(
///         &'a self,
///         kms_key: &'a str,
///         key_id: &'a str,
///         plaintext: &'a [u8],
///     ) -> BoxFuture<'a, Result<Vec<u8>>> {
///         Box::pin(async move {
///             let mut body = json!({ "plaintext": B64.encode(plaintext), "context": B64.encode(key_id) });
///             let answer = self.0.post(format!("transit/encrypt/{kms_key}"), body.take()).await;
///             let answer = answer.map_err(|status| failed("transit encrypt", status))?;
///             match answer["data"]["ciphertext"].as_str() {
///                 Some(ciphertext) => Ok(ciphertext.as_bytes().to_vec()), // "vault:v1:..."
///                 None => Err(failed("transit encrypt", 0)),
///             }
///         })
///     }
///
///     fn unwrap<'a>(
///         &'a self,
///         kms_key: &'a str,
///         key_id: &'a str,
///         ciphertext: &'a [u8],
///     ) -> BoxFuture<'a, Result<Zeroizing<Vec<u8>>>> {
///         Box::pin(async move {
///             let ciphertext = std::str::from_utf8(ciphertext).map_err(|_| failed("transit decrypt", 400))?;
///             let body = json!({ "ciphertext": ciphertext, "context": B64.encode(key_id) });
///             let mut answer = self.0.post(format!("transit/decrypt/{kms_key}"), body).await
///                 .map_err(|status| failed("transit decrypt", status))?;
///             let Some(Value::String(encoded)) = answer["data"].get_mut("plaintext") else {
///                 return Err(failed("transit decrypt", 0));
///             };
///             let plaintext = B64.decode(&*encoded).map(Zeroizing::new);
///             encoded.zeroize(); // the key, base64-encoded, in the client's answer
///             plaintext.map_err(|_| failed("transit decrypt", 400))
///         })
///     }
/// }
///
/// // Wrapping a plain keyring once (the CLI's `keyring wrap` knows `aws-kms` only),
/// // then opening vaults from the wrapped file, as with AWS.
/// async fn wrap<H: VaultHttp>(plain: &tower_byok::Keyring, http: H) -> Result<String> {
///     let wrapped = tower_byok::WrappedKeyring::wrap(plain, &VaultTransit(http), "byok").await?;
///     Ok(wrapped.to_text())
/// }
/// fn source<H: VaultHttp>(http: H) -> WrappedKeyringSource {
///     WrappedKeyringSource::file("/etc/byok/keyring.wrapped", VaultTransit(http))
/// }
/// # let _ = (source::<NoHttp>, wrap::<NoHttp>);
/// # struct NoHttp;
/// # impl VaultHttp for NoHttp {
/// #     fn post(&self, _: String, _: Value) -> BoxFuture<'_, Result<Value, u16>> {
/// #         Box::pin(async { Err(0) })
/// #     }
/// # }
/// ```
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
