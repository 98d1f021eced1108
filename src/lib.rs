//! Tower middleware that gives each request **its own user's** "bring your own key"
//! provider keys (OpenAI, Gemini, Exa, ...), kept encrypted in SQLite or PostgreSQL.
//!
//! Handlers stop reading `std::env::var("GEMINI_API_KEY")`, which serves one set of
//! keys to every user. Instead, per request, [`ByokLayer`]:
//!
//! 1. resolves the authenticated user ([`resolve`]: an auth layer's extension, a trusted
//!    header, or a closure);
//! 2. loads that user's keys from the [`Vault`] through a short-TTL per-user cache
//!    (concurrent misses share one load; writes through the vault invalidate at once);
//! 3. decrypts them (envelope encryption: a master [`Keyring`], HKDF-SHA256 per-user
//!    keys, XChaCha20-Poly1305 bound to user and provider; see [`docs/FORMAT.md`]);
//! 4. puts them into the request extensions as [`UserKeys`].
//!
//! # With axum
//!
//! ```
//! use axum::{routing::post, Router};
//! use tower_byok::{resolve::FromExtension, ByokLayer, Keyring, MasterKey, SqliteStore, UserKeys, Vault};
//!
//! /// What your authentication layer puts into each request.
//! #[derive(Clone)]
//! struct Claims { sub: String }
//!
//! async fn chat(keys: UserKeys) -> String {
//!     match keys.get("openai") {
//!         // Call the provider with `key.expose_secret()`; never log it.
//!         Some(key) => format!("calling OpenAI with {}", key.masked()),
//!         None => "add an OpenAI key first".to_owned(),
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // Production: Keyring::from_env("BYOK_MASTER_KEYS")? and PostgresStore::connect(url).
//! let keyring = Keyring::new(MasterKey::generate("k1")?);
//! let vault = Vault::open(SqliteStore::open("keys.db").await?, keyring).await?;
//! # let vault = Vault::open(SqliteStore::in_memory().await?, Keyring::new(MasterKey::generate("k1")?)).await?;
//! vault.put("alice", "openai", "sk-proj-alice-0123456789abcdefgh").await?;
//!
//! let app: Router = Router::new()
//!     .route("/chat", post(chat))
//!     .layer(ByokLayer::new(vault.clone(), FromExtension::new(|c: &Claims| c.sub.as_str())));
//!     // .layer(your_auth_layer) -- outermost, so it runs first and sets `Claims`.
//! # use tower::ServiceExt;
//! # let mut req = http::Request::post("/chat").body(axum::body::Body::empty())?;
//! # req.extensions_mut().insert(Claims { sub: "alice".into() });
//! # let res = app.oneshot(req).await?;
//! # let body = axum::body::to_bytes(res.into_body(), 1024).await?;
//! # assert_eq!(&body[..], "calling OpenAI with sk-p…efgh".as_bytes());
//! # std::fs::remove_file("keys.db").ok();
//! # std::fs::remove_file("keys.db-wal").ok();
//! # std::fs::remove_file("keys.db-shm").ok();
//! # Ok(()) }
//! ```
//!
//! # With hyper, or any Tower stack
//!
//! ```
//! use std::convert::Infallible;
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use http_body_util::Full;
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//! use tower_byok::{resolve::FromHeader, ByokLayer, Keyring, MasterKey, SqliteStore, UserKeys, Vault};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let vault = Vault::open(SqliteStore::in_memory().await?, Keyring::new(MasterKey::generate("k1")?)).await?;
//! vault.put("bob", "gemini", "AIza-bob-0123456789").await?;
//!
//! let service = ServiceBuilder::new()
//!     // Only behind a gateway that authenticates and sets this header itself.
//!     .layer(ByokLayer::new(vault, FromHeader::new("x-authenticated-user")))
//!     .service(service_fn(|req: Request<String>| async move {
//!         let keys = req.extensions().get::<UserKeys>().cloned().unwrap_or_default();
//!         let providers: Vec<&str> = keys.providers().collect();
//!         Ok::<_, Infallible>(Response::new(Full::<Bytes>::from(providers.join(","))))
//!     }));
//!
//! let req = Request::get("/").header("x-authenticated-user", "bob").body(String::new())?;
//! let res = service.oneshot(req).await?;
//! # use http_body_util::BodyExt;
//! # assert_eq!(&res.into_body().collect().await?.to_bytes()[..], b"gemini");
//! # Ok(()) }
//! ```
//!
//! The layer answers in the inner service's body type, making its own responses (401,
//! 428, 500, 503) with `From<Bytes>`: `Full<Bytes>` and axum's `Body` have it. Wrap
//! other body types (`String`, boxed bodies) in [`ByokBody`].
//!
//! Serve it with `hyper_util::service::TowerToHyperService`; [`examples/hyper.rs`] is a
//! complete server.
//!
//! # What a request gets
//!
//! | situation | what happens |
//! |---|---|
//! | user resolved, keys cached | keys inserted, inner service called (no database, no boxed future) |
//! | user resolved, cache miss | one database load per user however many requests wait on it, then as above |
//! | no user resolved | passes without keys; the [`UserKeys`] extractor rejects with `401` (`Option<UserKeys>` gives `None`) |
//! | no user, [`with_require_user(true)`](ByokLayer::with_require_user) | `401`, `{"error":"unauthenticated"}` |
//! | required providers missing ([`with_required_providers`](ByokLayer::with_required_providers)) | `428 Precondition Required`, `{"error":"missing_provider_keys","missing":["openai"]}` |
//! | database error or load timeout | `503` with `Retry-After: 1`, `{"error":"keys_unavailable"}`; logged without secrets or user ids |
//! | a key fails to decrypt, or names an unknown master key | `500`, `{"error":"keys_unavailable"}`; logged likewise; never another user's key, never a fallback |
//! | a key past its expiry | not served, even from the cache |
//! | extractor on a route without the layer | `500` saying the layer is not installed |
//!
//! Every response the layer makes itself carries its [`Rejection`] in the response
//! extensions (and the [`ErrorKind`] of a load failure), for outer layers;
//! [`with_rejection_response`](ByokLayer::with_rejection_response) swaps the JSON
//! bodies for the application's own. Errors are never cached; the next request tries
//! again.
//!
//! # Security model
//!
//! - Each secret is sealed with XChaCha20-Poly1305 under a key derived (HKDF-SHA256)
//!   from the active master key and the user id, with associated data binding the format
//!   version, master key id, user id and provider: a row moved to another user or
//!   provider, tampered with or truncated fails to open ([`ErrorKind::Decrypt`]).
//! - Master keys live outside the database ([`Keyring::from_env`]); the database alone
//!   reveals no secret. A keyring that cannot read the database is refused when the
//!   vault opens ([`ErrorKind::WrongMasterKey`]).
//! - Secrets are zeroized on drop, reachable only through
//!   [`ProviderKey::expose_secret`], and `[REDACTED]` in `Debug`. No error message,
//!   `Debug` output or log line of this crate contains a secret or a raw user id: logs
//!   and the audit trail name users by a keyed hash ([`Vault::user_ref`]).
//! - Not protected: someone who can write to the database can delete rows, or put back
//!   an older blob of the same user and provider. A key replaced or deleted by another
//!   instance, the CLI or raw SQL is served here until the change feed delivers the
//!   write (within the poll interval, 1 s by default, or milliseconds with PostgreSQL
//!   `LISTEN`: see [`VaultBuilder::watch_changes`] and the README's "Several
//!   instances"), or up to the cache TTL (30 s by default) with the feed off.
//!
//! # Where things are
//!
//! A request's keys come from, in order of the call:
//!
//! | file | what it does |
//! |---|---|
//! | `src/middleware/` | [`ByokLayer`] (`layer.rs`) → [`Byok`] (`service.rs`) → [`ResponseFuture`] (`future.rs`); `config.rs` and `rejection.rs` are what both use |
//! | `src/resolve.rs` | who the user is: [`resolve::ResolveUser`] and its ready-made resolvers |
//! | `src/vault/read.rs` | the user's keys through the cache, or a direct read |
//! | `src/cache/` | the per-user moka cache: single-flight loads, invalidation, TTL, stale-if-error |
//! | `src/feed/` | hearing of writes made elsewhere: the change feed each vault follows, by polling and (PostgreSQL) `LISTEN`, to invalidate the cache |
//! | `src/store/key_store.rs` | the core [`store::KeyStore`] trait: `fetch_user_sealed` (`fetch_user` narrowed to what serving needs) is the one query a cache miss makes |
//! | `src/store/queries.rs` | that query and every other, in plain SQL, once for both backends; `src/store/sqlite.rs` and `src/store/postgres.rs` connect and open the transactions |
//! | `src/vault/open.rs`, `src/crypto.rs` | decrypting a row: the per-user key, XChaCha20-Poly1305 |
//! | `src/keys.rs` | what handlers get: [`UserKeys`], [`ProviderKey`] |
//! | `src/extract.rs` | the axum extractor |
//!
//! Beside the request path: `src/vault/write.rs` (storing and deleting keys),
//! `src/vault/rotation.rs` (master-key rotation), `src/store/capability.rs` (what a store
//! may add to the core: rotation, expiry, audit reading), `src/store/migrate.rs` (the
//! embedded migrations), `src/keyring/` (master keys, keyring sources, wrapped
//! keyrings, AWS KMS),
//! `src/check.rs` (checks before save), `src/env_file/` (keys from a `.env` text, e.g. an
//! upload), `src/import/` (legacy files, feature `import`), `src/test_util/` (helpers for
//! apps' tests, feature `test-util`) and
//! `src/bin/tower-byok/` (the admin CLI). `tests/architecture.rs` keeps the modules free
//! of import cycles, every source file under 700 lines and SQL out of macros.
//!
//! # Features
//!
//! - `sqlite` (default): [`SqliteStore`], a file in WAL mode or in memory.
//! - `postgres`: [`PostgresStore`].
//! - `axum` (default): the [`UserKeys`] extractor and [`KeysRejection`].
//! - `import`: the `import` module, to move keys out of the `.env` and JSON files
//!   apps kept them in before.
//! - `metrics`: counters and a histogram of the cache and the layer (hits, misses, loads
//!   and their latency, load errors, invalidations, rejections) through the `metrics`
//!   facade; the README's "Metrics" section lists them. Off, it costs nothing.
//! - `aws-kms`: [`AwsKms`], AWS KMS (the official `aws-sdk-kms`) as the [`Kms`] that
//!   unwraps a [`WrappedKeyring`]; needs Rust 1.94.1, and adds nothing to the build
//!   when off.
//! - `test-util`: the [`test_util`] module, for an app's own tests (a dev-dependency):
//!   [`UserKeys`] for handler tests, in-memory and reopenable test vaults, and an
//!   isolation check that drives the whole app as users A, B and C.
//!
//! [`docs/FORMAT.md`]: https://github.com/tower-byok/tower-byok/blob/main/docs/FORMAT.md
//! [`examples/hyper.rs`]: https://github.com/tower-byok/tower-byok/blob/main/examples/hyper.rs
// Items behind a feature that is off link to docs.rs, which documents every feature,
// so that `cargo doc` has no broken link whatever the features.
#![cfg_attr(
    not(feature = "sqlite"),
    doc = "[`SqliteStore`]: https://docs.rs/tower-byok/latest/tower_byok/struct.SqliteStore.html"
)]
#![cfg_attr(
    not(feature = "postgres"),
    doc = "[`PostgresStore`]: https://docs.rs/tower-byok/latest/tower_byok/struct.PostgresStore.html"
)]
#![cfg_attr(
    not(feature = "test-util"),
    doc = "[`test_util`]: https://docs.rs/tower-byok/latest/tower_byok/test_util/index.html"
)]
#![cfg_attr(
    not(feature = "aws-kms"),
    doc = "[`AwsKms`]: https://docs.rs/tower-byok/latest/tower_byok/struct.AwsKms.html"
)]
#![cfg_attr(
    not(feature = "axum"),
    doc = "[`KeysRejection`]: https://docs.rs/tower-byok/latest/tower_byok/enum.KeysRejection.html"
)]
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

mod audit;
mod cache;
pub mod check;
mod crypto;
pub mod env_file;
mod error;
#[cfg(feature = "axum")]
mod extract;
// The change feed follows the triggers of the built-in stores: without one it never starts.
#[cfg_attr(not(any(feature = "sqlite", feature = "postgres")), allow(dead_code))]
mod feed;
#[cfg(feature = "import")]
#[cfg_attr(docsrs, doc(cfg(feature = "import")))]
pub mod import;
mod keyring;
mod keys;
mod metrics;

mod middleware;
mod owner;
pub mod resolve;
pub mod store;
#[cfg(feature = "test-util")]
#[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
pub mod test_util;
mod time;
mod validate;
mod vault;

pub use crate::audit::{AuditAction, AuditRecord};
pub use crate::error::{Error, ErrorKind, Result};
#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
pub use crate::extract::KeysRejection;
pub use crate::feed::{FeedMode, FeedStatus, CHANGE_RETENTION};
#[cfg(feature = "aws-kms")]
#[cfg_attr(docsrs, doc(cfg(feature = "aws-kms")))]
pub use crate::keyring::AwsKms;
pub use crate::keyring::{
    BoxFuture, CommandKeyring, EnvKeyring, FileKeyring, Keyring, KeyringSource, Kms, MasterKey,
    WrappedKeyring, WrappedKeyringSource, MASTER_KEY_LEN, WRAPPED_KEYRING_HEADER,
};
pub use crate::keys::{KeyInfo, KeySource, ProviderKey, UserKeys};
pub use crate::owner::OwnerKind;

pub use crate::middleware::{Byok, ByokBody, ByokLayer, DevEnvFallback, Rejection, ResponseFuture};
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub use crate::store::postgres::{PoolMode, PostgresStore};
#[cfg(feature = "sqlite")]
#[cfg_attr(docsrs, doc(cfg(feature = "sqlite")))]
pub use crate::store::sqlite::SqliteStore;
pub use crate::validate::{MAX_PROVIDER_LEN, MAX_SECRET_LEN, MAX_USER_ID_LEN};
pub use crate::vault::{
    KeyringStatus, MasterKeyUsage, Owner, Progress, RewrapReport, RowFailure, TeamPolicy, Vault,
    VaultBuilder, VerifyReport, DEFAULT_ACTOR, DEFAULT_MAX_PROVIDERS_PER_USER,
};

/// Internals exposed for the crate's own benchmarks only: not a public API, no semver.
#[doc(hidden)]
pub mod __bench {
    use crate::crypto::UserCipher;
    use crate::MasterKey;

    /// A user's cipher, derived once, for timing seal and open without the derivation.
    pub struct Cipher<'k>(UserCipher<'k>);

    impl<'k> Cipher<'k> {
        /// Derives the per-user key.
        pub fn derive(master: &'k MasterKey, user_id: &str) -> Self {
            Self(UserCipher::new(master, user_id))
        }

        /// Seals one secret.
        pub fn seal(&self, user_id: &str, provider: &str, secret: &[u8]) -> Vec<u8> {
            self.0.seal(user_id, provider, secret)
        }

        /// Opens one blob.
        pub fn open(&self, user_id: &str, provider: &str, blob: &[u8]) -> bool {
            self.0.open(user_id, provider, blob).is_ok()
        }
    }
}
