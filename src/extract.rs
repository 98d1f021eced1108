//! The axum extractor for [`UserKeys`] (feature `axum`).

use axum_core::extract::{FromRequestParts, OptionalFromRequestParts};
use axum_core::response::{IntoResponse, Response};
use http::header::CONTENT_TYPE;
use http::request::Parts;
use http::StatusCode;

use crate::keys::{NoUser, UserKeys};

/// Why the [`UserKeys`] extractor rejected a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeysRejection {
    /// The layer found no user in the request: `401 Unauthorized`.
    NoUser,
    /// The layer is not installed on this route: `500 Internal Server Error`, a bug in
    /// the application's set-up.
    LayerMissing,
}

impl IntoResponse for KeysRejection {
    fn into_response(self) -> Response {
        match self {
            Self::NoUser => (
                StatusCode::UNAUTHORIZED,
                [(CONTENT_TYPE, "application/json")],
                r#"{"error":"unauthenticated"}"#,
            )
                .into_response(),
            Self::LayerMissing => {
                tracing::error!("UserKeys extractor used on a route without tower_byok::ByokLayer");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    [(CONTENT_TYPE, "application/json")],
                    r#"{"error":"tower_byok::ByokLayer is not installed on this route"}"#,
                )
                    .into_response()
            }
        }
    }
}

/// Extracts the keys the [`ByokLayer`](crate::ByokLayer) put into the request.
///
/// `Option<UserKeys>` extracts `None` for a request without a user instead of
/// rejecting it; both forms reject with 500 when the layer is not installed.
///
/// ```
/// use tower_byok::UserKeys;
///
/// async fn summarize(keys: UserKeys) -> String {
///     match keys.get("openai") {
///         Some(key) => format!("would call OpenAI with {}", key.masked()),
///         None => "add an OpenAI key in settings first".to_owned(),
///     }
/// }
/// # let _ = axum::Router::<()>::new().route("/", axum::routing::get(summarize));
/// ```
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
impl<S: Send + Sync> FromRequestParts<S> for UserKeys {
    type Rejection = KeysRejection;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        match parts.extensions.get::<UserKeys>() {
            Some(keys) => Ok(keys.clone()),
            None if parts.extensions.get::<NoUser>().is_some() => Err(KeysRejection::NoUser),
            None => Err(KeysRejection::LayerMissing),
        }
    }
}

#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
impl<S: Send + Sync> OptionalFromRequestParts<S> for UserKeys {
    type Rejection = KeysRejection;

    async fn from_request_parts(
        parts: &mut Parts,
        _state: &S,
    ) -> Result<Option<Self>, Self::Rejection> {
        match parts.extensions.get::<UserKeys>() {
            Some(keys) => Ok(Some(keys.clone())),
            None if parts.extensions.get::<NoUser>().is_some() => Ok(None),
            None => Err(KeysRejection::LayerMissing),
        }
    }
}
