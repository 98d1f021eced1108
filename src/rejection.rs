//! The responses the layer answers with itself.

use http::header::{HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use http::{Response, StatusCode};

use crate::body::ByokBody;
use crate::error::ErrorKind;

/// Left in a request's extensions when the layer found no user, so the extractor can
/// tell "no user" (401) from "layer not installed" (500).
#[derive(Clone, Copy, Debug)]
pub(crate) struct NoUser;

#[derive(Debug)]
pub(crate) enum Rejection {
    NoUser,
    MissingProviders(Vec<Box<str>>),
    Load(ErrorKind),
}

impl Rejection {
    pub(crate) fn into_response<B>(self) -> Response<ByokBody<B>> {
        let (status, body, kind) = match self {
            Self::NoUser => (
                StatusCode::UNAUTHORIZED,
                r#"{"error":"unauthenticated"}"#.to_owned(),
                None,
            ),
            Self::MissingProviders(missing) => {
                let body =
                    serde_json::json!({ "error": "missing_provider_keys", "missing": missing });
                (StatusCode::PRECONDITION_REQUIRED, body.to_string(), None)
            }
            Self::Load(kind @ (ErrorKind::Store | ErrorKind::Timeout | ErrorKind::Migration)) => (
                StatusCode::SERVICE_UNAVAILABLE,
                r#"{"error":"keys_unavailable"}"#.to_owned(),
                Some(kind),
            ),
            Self::Load(kind) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                r#"{"error":"keys_unavailable"}"#.to_owned(),
                Some(kind),
            ),
        };
        tracing::debug!(
            status = status.as_u16(),
            "tower-byok answered the request itself"
        );
        let mut response = Response::new(ByokBody::own(body));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if status == StatusCode::SERVICE_UNAVAILABLE {
            headers.insert(RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if let Some(kind) = kind {
            // For outer layers (metrics, logging) that want to know why.
            response.extensions_mut().insert(kind);
        }
        response
    }
}
