//! Authentication: signed bearer tokens (HMAC-SHA256), and the middleware that checks
//! them and leaves the caller's [`Claims`] in the request for the vault's layer.
//!
//! A token is `<payload>.<signature>`, both base64url: the payload is
//! `{"sub":"alice","exp":<unix seconds>}`, the signature HMAC-SHA256 over the payload
//! text under the app's secret. Browsers get the same token in an `HttpOnly`,
//! `SameSite=Strict` cookie, so the HTML pages work without JavaScript.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Form, Json};
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use super::app::{wants_html, ApiError, AppState};
use super::db::unix_now;

/// Who the caller is, as the token says: what [`ByokLayer`](tower_byok::ByokLayer) reads.
#[derive(Clone, Debug)]
pub(crate) struct Claims {
    pub(crate) sub: String,
}

const COOKIE: &str = "onboarding_token";

/// Mints and verifies tokens with one secret.
#[derive(Clone)]
pub(crate) struct Tokens {
    key: Arc<[u8]>,
    ttl: Duration,
}

impl fmt::Debug for Tokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tokens")
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

#[derive(Serialize, Deserialize)]
struct Payload {
    sub: String,
    exp: i64,
}

impl Tokens {
    /// Tokens signed with `secret`, valid for eight hours.
    pub(crate) fn new(secret: &[u8]) -> Self {
        Self {
            key: secret.into(),
            ttl: Duration::from_secs(8 * 3600),
        }
    }

    fn mac(&self) -> Hmac<Sha256> {
        <Hmac<Sha256> as KeyInit>::new_from_slice(&self.key).expect("HMAC takes any key length")
    }

    pub(crate) fn mint(&self, sub: &str) -> String {
        let exp = unix_now().saturating_add(i64::try_from(self.ttl.as_secs()).unwrap_or(0));
        let payload = serde_json::to_vec(&Payload {
            sub: sub.to_owned(),
            exp,
        })
        .expect("a payload always serializes");
        let payload = B64.encode(payload);
        let mut mac = self.mac();
        mac.update(payload.as_bytes());
        format!("{payload}.{}", B64.encode(mac.finalize().into_bytes()))
    }

    /// The claims of a well-signed, unexpired token.
    pub(crate) fn verify(&self, token: &str) -> Option<Claims> {
        let (payload, signature) = token.split_once('.')?;
        let mut mac = self.mac();
        mac.update(payload.as_bytes());
        mac.verify_slice(&B64.decode(signature).ok()?).ok()?; // constant-time comparison
        let payload: Payload = serde_json::from_slice(&B64.decode(payload).ok()?).ok()?;
        (payload.exp > unix_now()).then_some(Claims { sub: payload.sub })
    }
}

/// The middleware: a valid token puts [`Claims`] into the request; an invalid bearer
/// token is answered 401; no token at all goes on without claims (the routes that need
/// a user answer 401 themselves).
///
/// An invalid cookie counts as no token, and the response clears it: after a restart
/// with a new random secret, or once it expires, the browser must still reach `/` and
/// `/login` to get a new one, not meet 401 everywhere until the cookie's `Max-Age`.
pub(crate) async fn authenticate(
    State(state): State<AppState>,
    mut req: Request,
    next: Next,
) -> Response {
    if let Some(token) = bearer(req.headers()) {
        let Some(claims) = state.tokens.verify(token) else {
            return ApiError(StatusCode::UNAUTHORIZED, "invalid or expired token".into())
                .into_response();
        };
        req.extensions_mut().insert(claims);
        return next.run(req).await;
    }
    let Some(token) = cookie(req.headers()) else {
        return next.run(req).await;
    };
    if let Some(claims) = state.tokens.verify(token) {
        req.extensions_mut().insert(claims);
        return next.run(req).await;
    }
    let mut response = next.run(req).await;
    // Unless the response sets a new one (`POST /login`), the stale cookie is cleared.
    if !response.headers().contains_key(header::SET_COOKIE) {
        (response.headers_mut()).insert(header::SET_COOKIE, clear_cookie());
    }
    response
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
}

fn cookie(headers: &HeaderMap) -> Option<&str> {
    let cookies = headers.get(header::COOKIE)?.to_str().ok()?;
    cookies
        .split(';')
        .find_map(|c| c.trim().strip_prefix(COOKIE)?.strip_prefix('='))
}

#[derive(Deserialize)]
pub(crate) struct Login {
    user: String,
}

#[derive(Serialize)]
struct TokenReply {
    token: String,
    token_type: &'static str,
    expires_in: u64,
}

/// `POST /logout`: clears the cookie; a browser goes back to the sign-in page. (A bearer
/// token stays valid until it expires: the demo keeps no list of revoked tokens.)
pub(crate) async fn logout(headers: HeaderMap) -> Response {
    let clear = [(header::SET_COOKIE, clear_cookie())];
    if wants_html(&headers) {
        return (clear, Redirect::to("/")).into_response();
    }
    (clear, StatusCode::NO_CONTENT).into_response()
}

fn clear_cookie() -> HeaderValue {
    let clear = format!("{COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0");
    HeaderValue::try_from(clear).expect("the cookie name is a valid header")
}

/// `POST /login` (`user=alice`): a token for that user.
///
/// DEMO ONLY: it believes whoever you say you are. A real app checks a password here, or
/// takes its users' tokens from an identity provider and keeps only [`authenticate`].
pub(crate) async fn login(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(login): Form<Login>,
) -> Result<Response, ApiError> {
    let valid = (1..=64).contains(&login.user.len())
        && login
            .user
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.@-".contains(&b));
    if !valid {
        let msg = "a user name is 1 to 64 letters, digits, `_`, `.`, `@` or `-`";
        return Err(ApiError(StatusCode::BAD_REQUEST, msg.into()));
    }
    let token = state.tokens.mint(&login.user);
    // Served over HTTPS (as any real deployment is), add `Secure` so that the browser
    // never sends the token over plain HTTP. The demo leaves it out only because it
    // listens on plain `http://127.0.0.1`, where browsers would drop a `Secure` cookie.
    let cookie = format!(
        "{COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}",
        state.tokens.ttl.as_secs()
    );
    let set_cookie = [(header::SET_COOKIE, cookie)];
    if wants_html(&headers) {
        return Ok((set_cookie, Redirect::to("/onboarding")).into_response());
    }
    let reply = TokenReply {
        token,
        token_type: "Bearer",
        expires_in: state.tokens.ttl.as_secs(),
    };
    Ok((set_cookie, Json(reply)).into_response())
}
