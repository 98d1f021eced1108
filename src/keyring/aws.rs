//! [`AwsKms`]: the [`Kms`] seam on AWS KMS, through the official `aws-sdk-kms`.

use std::fmt;
use std::time::Duration;

use aws_sdk_kms::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_kms::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_kms::primitives::Blob;
use zeroize::Zeroizing;

use super::kms::Kms;
use super::source::BoxFuture;
use crate::error::{Error, ErrorKind, Result};

/// The encryption context key that binds a wrapped key to its master key id.
pub(crate) const CONTEXT_KEY_ID: &str = "tower-byok:key-id";
/// The encryption context key that binds a wrapped key to its purpose.
pub(crate) const CONTEXT_PURPOSE: &str = "tower-byok:purpose";
/// The one purpose value: a master key of a wrapped keyring.
pub(crate) const PURPOSE: &str = "master-key";

/// AWS KMS as the [`Kms`] of a [`WrappedKeyring`](crate::WrappedKeyring): scheme
/// `aws-kms`, one `Encrypt` per master key to wrap it and one `Decrypt` to unwrap it.
///
/// Each call carries the encryption context `{"tower-byok:purpose": "master-key",
/// "tower-byok:key-id": <master key id>}`, so a ciphertext moved to another id, or
/// another use of the same KMS key, does not decrypt; the context is also what
/// CloudTrail logs for each unwrap. Errors say which failure it was:
///
/// | AWS says | [`ErrorKind`] |
/// |---|---|
/// | no connection, a timeout, `KMSInternalException`, `DependencyTimeoutException`, `KeyUnavailableException` | [`KmsUnreachable`](ErrorKind::KmsUnreachable) |
/// | `AccessDeniedException`, `AccessDenied`, `UnrecognizedClientException`, `InvalidClientTokenId`, `InvalidSignatureException`, `SignatureDoesNotMatch`, `ExpiredTokenException` | [`KmsAccessDenied`](ErrorKind::KmsAccessDenied) |
/// | `DisabledException`, `KMSInvalidStateException` | [`KmsKeyDisabled`](ErrorKind::KmsKeyDisabled) |
/// | `InvalidCiphertextException`, `IncorrectKeyException` | [`WrappedKeyCorrupt`](ErrorKind::WrappedKeyCorrupt) |
/// | anything else (e.g. `NotFoundException`) | [`KeyringSource`](ErrorKind::KeyringSource) |
///
/// An error names the operation and the master key id, and AWS's error code; never a
/// ciphertext, the KMS key or AWS's message (which can quote an ARN or a principal).
/// `Debug` shows nothing of the client's configuration.
///
/// Build it with [`from_env`](Self::from_env), or from any `aws_sdk_kms::Client` with
/// [`new`](Self::new) (e.g. one from `aws-config`, for instance roles and SSO).
#[derive(Clone)]
pub struct AwsKms {
    client: aws_sdk_kms::Client,
}

impl AwsKms {
    /// Uses `client` as it is configured (region, credentials, endpoint, timeouts).
    pub fn new(client: aws_sdk_kms::Client) -> Self {
        Self { client }
    }

    /// A client configured from the standard AWS environment variables, without
    /// `aws-config`: `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and optionally
    /// `AWS_SESSION_TOKEN`; `AWS_REGION` (or `AWS_DEFAULT_REGION`); and optionally
    /// `AWS_ENDPOINT_URL_KMS` (or `AWS_ENDPOINT_URL`) for another endpoint, such as a
    /// VPC endpoint or a local test server. It connects within 5 s and gives up on a
    /// call after 30 s (retries included).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::KeyringSource`] naming the variable that is missing (never a value).
    pub fn from_env() -> Result<Self> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let missing = |name: &str| {
            Error::new(ErrorKind::KeyringSource).with_detail(format!(
                "aws-kms: the environment variable {name} is not set"
            ))
        };
        let access = var("AWS_ACCESS_KEY_ID").ok_or_else(|| missing("AWS_ACCESS_KEY_ID"))?;
        let secret = Zeroizing::new(
            var("AWS_SECRET_ACCESS_KEY").ok_or_else(|| missing("AWS_SECRET_ACCESS_KEY"))?,
        );
        let region = var("AWS_REGION")
            .or_else(|| var("AWS_DEFAULT_REGION"))
            .ok_or_else(|| missing("AWS_REGION"))?;
        let credentials = Credentials::new(
            access,
            secret.as_str(),
            var("AWS_SESSION_TOKEN"),
            None,
            "environment",
        );
        let mut config = aws_sdk_kms::config::Builder::new()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(region))
            .credentials_provider(credentials)
            .timeout_config(
                aws_sdk_kms::config::timeout::TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(5))
                    .operation_timeout(Duration::from_secs(30))
                    .build(),
            );
        if let Some(endpoint) = var("AWS_ENDPOINT_URL_KMS").or_else(|| var("AWS_ENDPOINT_URL")) {
            config = config.endpoint_url(endpoint);
        }
        Ok(Self::new(aws_sdk_kms::Client::from_conf(config.build())))
    }
}

impl fmt::Debug for AwsKms {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AwsKms").finish_non_exhaustive()
    }
}

impl Kms for AwsKms {
    fn scheme(&self) -> &str {
        "aws-kms"
    }

    fn wrap<'a>(
        &'a self,
        kms_key: &'a str,
        key_id: &'a str,
        plaintext: &'a [u8],
    ) -> BoxFuture<'a, Result<Vec<u8>>> {
        Box::pin(async move {
            // The SDK copies the key into request buffers it does not zeroize: wrapping
            // is an admin step (`keyring wrap`, `rotate`), never done while serving.
            let out = self
                .client
                .encrypt()
                .key_id(kms_key)
                .plaintext(Blob::new(plaintext))
                .encryption_context(CONTEXT_PURPOSE, PURPOSE)
                .encryption_context(CONTEXT_KEY_ID, key_id)
                .send()
                .await
                .map_err(|e| sdk_error("Encrypt", key_id, e))?;
            out.ciphertext_blob
                .map(Blob::into_inner)
                .ok_or_else(|| no_output("Encrypt", key_id))
        })
    }

    fn unwrap<'a>(
        &'a self,
        kms_key: &'a str,
        key_id: &'a str,
        ciphertext: &'a [u8],
    ) -> BoxFuture<'a, Result<Zeroizing<Vec<u8>>>> {
        Box::pin(async move {
            let out = self
                .client
                .decrypt()
                .key_id(kms_key)
                .ciphertext_blob(Blob::new(ciphertext))
                .encryption_context(CONTEXT_PURPOSE, PURPOSE)
                .encryption_context(CONTEXT_KEY_ID, key_id)
                .send()
                .await
                .map_err(|e| sdk_error("Decrypt", key_id, e))?;
            // The SDK's own buffers are not zeroized; from here on the key is.
            out.plaintext
                .map(|blob| Zeroizing::new(blob.into_inner()))
                .ok_or_else(|| no_output("Decrypt", key_id))
        })
    }
}

/// What an AWS failure may show: its error code, not its message.
#[derive(Debug)]
struct AwsFailure(String);

impl fmt::Display for AwsFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for AwsFailure {}

fn no_output(operation: &str, key_id: &str) -> Error {
    Error::keyring_source(
        ErrorKind::KeyringSource,
        format!("aws-kms {operation} of master key `{key_id}` returned no data"),
        AwsFailure("empty response".to_owned()),
    )
}

fn sdk_error<E: ProvideErrorMetadata>(
    operation: &str,
    key_id: &str,
    err: SdkError<E, aws_sdk_kms::config::http::HttpResponse>,
) -> Error {
    let (kind, why) = match &err {
        SdkError::DispatchFailure(_) => (ErrorKind::KmsUnreachable, "no connection".to_owned()),
        SdkError::TimeoutError(_) => (ErrorKind::KmsUnreachable, "timed out".to_owned()),
        SdkError::ResponseError(_) => (
            ErrorKind::KmsUnreachable,
            "an unreadable response".to_owned(),
        ),
        SdkError::ConstructionFailure(_) => (
            ErrorKind::KeyringSource,
            "the request could not be built".to_owned(),
        ),
        SdkError::ServiceError(service) => match err.code() {
            Some(code) => (kind_of_code(code), code.to_owned()),
            // No code AWS would send: the HTTP status still tells a refusal (e.g. from
            // an endpoint policy or a proxy) from a failure.
            None => {
                let status = service.raw().status().as_u16();
                let kind = match status {
                    401 | 403 => ErrorKind::KmsAccessDenied,
                    500..=599 => ErrorKind::KmsUnreachable,
                    _ => ErrorKind::KeyringSource,
                };
                (kind, format!("HTTP status {status} without an error code"))
            }
        },
        _ => (ErrorKind::KeyringSource, "an unknown error".to_owned()),
    };
    Error::keyring_source(
        kind,
        format!("aws-kms {operation} of master key `{key_id}`: {why}"),
        AwsFailure(why),
    )
}

fn kind_of_code(code: &str) -> ErrorKind {
    match code {
        "AccessDeniedException"
        | "AccessDenied"
        | "UnrecognizedClientException"
        | "InvalidClientTokenId"
        | "InvalidSignatureException"
        | "SignatureDoesNotMatch"
        | "ExpiredTokenException" => ErrorKind::KmsAccessDenied,
        "DisabledException" | "KMSInvalidStateException" => ErrorKind::KmsKeyDisabled,
        "InvalidCiphertextException" | "IncorrectKeyException" => ErrorKind::WrappedKeyCorrupt,
        "KMSInternalException" | "DependencyTimeoutException" | "KeyUnavailableException" => {
            ErrorKind::KmsUnreachable
        }
        _ => ErrorKind::KeyringSource,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_map_to_the_kind_that_says_what_failed() {
        assert_eq!(
            kind_of_code("AccessDeniedException"),
            ErrorKind::KmsAccessDenied
        );
        assert_eq!(kind_of_code("DisabledException"), ErrorKind::KmsKeyDisabled);
        assert_eq!(
            kind_of_code("KMSInvalidStateException"),
            ErrorKind::KmsKeyDisabled
        );
        assert_eq!(
            kind_of_code("InvalidCiphertextException"),
            ErrorKind::WrappedKeyCorrupt
        );
        assert_eq!(kind_of_code("NotFoundException"), ErrorKind::KeyringSource);
    }
}
