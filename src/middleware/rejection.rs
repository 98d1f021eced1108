//! The responses the layer answers with itself.

use std::fmt;

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use http::{Response, StatusCode};

use crate::error::ErrorKind;

/// Why [`ByokLayer`](crate::ByokLayer) answered a request itself instead of calling the
/// inner service.
///
/// Every response the layer makes carries its `Rejection` in the response extensions
/// (and, for load failures, the [`ErrorKind`] too), so outer layers can count and log
/// them. [`ByokLayer::with_rejection_response`](crate::ByokLayer::with_rejection_response)
/// replaces the default bodies, e.g. with an application's own error JSON.
///
/// Not to be confused with [`KeysRejection`], the axum
/// extractor's rejection on routes where the layer let a request through without keys.
///
#[cfg_attr(feature = "axum", doc = "[`KeysRejection`]: crate::KeysRejection")]
#[cfg_attr(
    not(feature = "axum"),
    doc = "[`KeysRejection`]: https://docs.rs/tower-byok/latest/tower_byok/enum.KeysRejection.html"
)]
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Rejection {
    /// No user was resolved and the layer requires one: `401 Unauthorized`.
    Unauthenticated,
    /// The user lacks keys for required providers: `428 Precondition Required`.
    MissingProviders {
        /// The required providers the user has no key for, in the configured order.
        missing: Vec<Box<str>>,
    },
    /// The user's keys could not be loaded. `503 Service Unavailable` with
    /// `Retry-After: 1` when the database failed or was too slow ([`ErrorKind::Store`],
    /// [`ErrorKind::Timeout`], [`ErrorKind::Migration`]); `500 Internal Server Error`
    /// when a key could not be opened ([`ErrorKind::Decrypt`],
    /// [`ErrorKind::UnknownMasterKey`], ...).
    KeysUnavailable(ErrorKind),
}

impl Rejection {
    /// The status of the default response.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Unauthenticated => StatusCode::UNAUTHORIZED,
            Self::MissingProviders { .. } => StatusCode::PRECONDITION_REQUIRED,
            Self::KeysUnavailable(kind) if is_transient(*kind) => StatusCode::SERVICE_UNAVAILABLE,
            Self::KeysUnavailable(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The error kind of a load failure, `None` for the other rejections.
    pub fn error_kind(&self) -> Option<ErrorKind> {
        match self {
            Self::KeysUnavailable(kind) => Some(*kind),
            _ => None,
        }
    }

    /// The layer's own response: [`status`](Self::status), a JSON body
    /// (`{"error":"unauthenticated"}`, `{"error":"missing_provider_keys","missing":[..]}`
    /// or `{"error":"keys_unavailable"}`), and `Retry-After: 1` on 503.
    ///
    /// A custom responder can start from it and change what it needs:
    ///
    /// ```
    /// use tower_byok::{resolve::FromHeader, ByokLayer, Rejection, Vault};
    /// # fn f(vault: Vault) {
    /// let layer = ByokLayer::new(vault, FromHeader::new("x-user")).with_rejection_response(
    ///     |rejection: &Rejection| {
    ///         let mut response = rejection.default_response();
    ///         if let Rejection::MissingProviders { missing } = rejection {
    ///             let body = format!(r#"{{"code":"NEEDS_KEYS","providers":{missing:?}}}"#);
    ///             *response.body_mut() = body.into();
    ///         }
    ///         response
    ///     },
    /// );
    /// # let _ = layer; }
    /// ```
    pub fn default_response(&self) -> Response<Bytes> {
        let body: Bytes = match self {
            Self::Unauthenticated => Bytes::from_static(br#"{"error":"unauthenticated"}"#),
            Self::MissingProviders { missing } => {
                serde_json::json!({ "error": "missing_provider_keys", "missing": missing })
                    .to_string()
                    .into()
            }
            Self::KeysUnavailable(_) => Bytes::from_static(br#"{"error":"keys_unavailable"}"#),
        };
        let status = self.status();
        let mut response = Response::new(body);
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if status == StatusCode::SERVICE_UNAVAILABLE {
            headers.insert(RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }

    pub(crate) fn log(&self) {
        crate::metrics::rejected(self.status());
        tracing::debug!(
            status = self.status().as_u16(),
            rejection = %self,
            "tower-byok answered the request itself"
        );
    }
}

/// Whether a load failure may pass by itself, so the client should retry.
fn is_transient(kind: ErrorKind) -> bool {
    matches!(
        kind,
        ErrorKind::Store | ErrorKind::Timeout | ErrorKind::Migration
    )
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unauthenticated => f.write_str("no authenticated user"),
            Self::MissingProviders { missing } => {
                write!(
                    f,
                    "missing keys for required providers: {}",
                    missing.join(", ")
                )
            }
            Self::KeysUnavailable(kind) => write!(f, "keys unavailable: {kind}"),
        }
    }
}
