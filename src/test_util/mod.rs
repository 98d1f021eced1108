//! Helpers for testing an app that uses this crate (feature `test-util`; enable it in
//! your `[dev-dependencies]` only).
//!
//! ```toml
//! [dev-dependencies]
//! tower-byok = { version = "0.1", features = ["test-util"] }
//! ```
//!
//! | helper | for |
//! |---|---|
//! | [`user_keys`] | a handler's own tests: the [`UserKeys`] it would get, no vault |
//! | [`memory_vault`] | a vault in memory with a generated keyring, for route tests |
//! | [`TestVault`] | a vault on a temporary file that can be [reopened](TestVault::reopen), as after a redeploy |
//! | [`IsolationCheck`] | the whole app, as users A, B and C: each is served only their own keys, C none, and they survive a reopening; failures listed with keys masked |
//!
//! The old way of keeping users' keys, one shared `.env` or JSON file, served the last
//! user's keys to everyone and lost them all at each redeploy. [`IsolationCheck`] is
//! that checklist as one test, for any axum `Router` or Tower `Service`:
//!
//! ```
//! use axum::{body::Body, extract::Request, middleware::{self, Next}, response::Response};
//! use axum::{http::StatusCode, routing::post, Router};
//! use tower_byok::{resolve::FromExtension, test_util::IsolationCheck, ByokLayer, UserKeys, Vault};
//!
//! #[derive(Clone)]
//! struct Claims { sub: String }
//!
//! // Toy auth: `Bearer token-<user>`. Yours verifies a signed token.
//! async fn auth(mut req: Request, next: Next) -> Result<Response, StatusCode> {
//!     let header = req.headers().get("authorization").and_then(|v| v.to_str().ok());
//!     let user = header.and_then(|v| v.strip_prefix("Bearer token-")).ok_or(StatusCode::UNAUTHORIZED)?;
//!     let claims = Claims { sub: user.to_owned() };
//!     req.extensions_mut().insert(claims);
//!     Ok(next.run(req).await)
//! }
//!
//! // The route the check reads: it shows which keys the handler got, masked.
//! async fn chat(keys: UserKeys) -> String {
//!     match keys.get("openai") {
//!         Some(key) => format!("calling OpenAI with {}", key.masked()),
//!         None => "add an OpenAI key first".to_owned(),
//!     }
//! }
//!
//! fn app(vault: Vault) -> Router {
//!     Router::new()
//!         .route("/chat", post(chat))
//!         .layer(ByokLayer::new(vault, FromExtension::new(|c: &Claims| c.sub.as_str())))
//!         .layer(middleware::from_fn(auth))
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! // In a #[tokio::test]:
//! let report = IsolationCheck::new(app, |user| {
//!     Request::post("/chat")
//!         .header("authorization", format!("Bearer token-{user}"))
//!         .body(Body::empty())
//!         .unwrap()
//! })
//! .run()
//! .await;
//! report.assert_ok(); // or: for failure in report.failures() { ... }
//! # }
//! ```
//!
//! An app that caches the first user's keys for everyone gets this report:
//!
//! ```text
//! isolation check failed (10 failures, 19 requests):
//!   - one by one: user B was not served their own openai key sk-3…ImDC (status 200 OK)
//!   - one by one: user B was served user A's openai key sk-F…pJkg
//!   - one by one: user C was served user A's openai key sk-F…pJkg
//!   - concurrently: user A was not served their own openai key sk-F…FteL (status 200 OK)
//!   ...
//! ```
//!
//! The helpers panic on invalid input or when SQLite cannot start, as test helpers do,
//! with messages that hold no secret; the check itself reports the app's failures in
//! its [`IsolationReport`] instead.

use crate::error::ErrorKind;
use crate::keys::{ProviderKey, UserKeys};

mod exchange;
mod isolation;
mod report;
mod vault;

pub use self::isolation::IsolationCheck;
pub use self::report::{IsolationFailure, IsolationReport, Phase, TestUser};
pub use self::vault::{memory_vault, TestVault};

/// The keys a handler would get for a user with these `(provider, secret)` pairs: for
/// testing a handler on its own, without a vault or the layer. A later pair for the
/// same provider replaces an earlier one; provider names are lowercased.
///
/// ```
/// use tower_byok::test_util::user_keys;
///
/// let keys = user_keys([("OpenAI", "sk-test-0001"), ("gemini", "AIza-test-0001")]);
/// assert_eq!(keys.get("openai").map(|k| k.expose_secret()), Some("sk-test-0001"));
/// assert_eq!(keys.providers().collect::<Vec<_>>(), ["gemini", "openai"]);
///
/// let nobody = user_keys::<&str, &str>([]); // or UserKeys::default()
/// assert!(nobody.is_empty());
/// ```
///
/// [`ProviderKey::from_secret`] collected into [`UserKeys`] does the same without
/// panicking, and takes [`with_source`](ProviderKey::with_source) and
/// [`with_expiry`](ProviderKey::with_expiry).
///
/// # Panics
///
/// If a provider name or a secret is invalid (as [`ProviderKey::from_secret`] would
/// refuse it). The message gives the pair's position and, for a bad secret, its
/// provider; never a secret.
#[track_caller]
pub fn user_keys<P, S>(keys: impl IntoIterator<Item = (P, S)>) -> UserKeys
where
    P: AsRef<str>,
    S: Into<String>,
{
    let mut all = Vec::new();
    for (i, (provider, secret)) in keys.into_iter().enumerate() {
        match ProviderKey::from_secret(provider.as_ref(), secret) {
            Ok(key) => all.push(key),
            // A provider name that fails may be a secret given in its place: not shown.
            Err(e) if e.kind() == ErrorKind::InvalidProvider => {
                panic!("test_util::user_keys: pair {i}: {e}")
            }
            Err(e) => panic!(
                "test_util::user_keys: pair {i}, the {} key: {e}",
                provider.as_ref()
            ),
        }
    }
    all.into_iter().collect()
}
