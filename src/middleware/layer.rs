use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use http::Response;
use tower_layer::Layer;

use super::config::{Config, DevEnvFallback};
use super::rejection::Rejection;
use super::service::Byok;
use crate::validate;
use crate::vault::Vault;

/// Puts each request's user's decrypted provider keys into its extensions.
///
/// See the [crate docs](crate) for the whole picture, the behaviour table and examples.
///
/// ```
/// use tower_byok::{resolve::FromHeader, ByokLayer, Keyring, MasterKey, SqliteStore, Vault};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tower_byok::Error> {
/// # let vault = Vault::open(SqliteStore::in_memory().await?, Keyring::new(MasterKey::generate("k1")?)).await?;
/// let layer = ByokLayer::new(vault, FromHeader::new("x-authenticated-user"))
///     .with_require_user(true)
///     .with_required_providers(["openai"]);
/// # let _ = layer;
/// # Ok(()) }
/// ```
#[derive(Clone)]
#[must_use]
pub struct ByokLayer<R> {
    vault: Vault,
    resolver: R,
    config: Arc<Config>,
}

impl<R> ByokLayer<R> {
    /// A layer serving keys from `vault` to the user `resolver` finds in each request.
    pub fn new(vault: Vault, resolver: R) -> Self {
        Self {
            vault,
            resolver,
            config: Arc::default(),
        }
    }

    /// When `true`, a request with no user is answered `401 Unauthorized` by the layer.
    /// When `false` (the default) it goes on without keys, and the
    /// [`UserKeys`](crate::UserKeys) extractor rejects it with 401 where a handler asks for keys.
    ///
    /// ```
    /// # use tower_byok::{resolve::FromHeader, ByokLayer, Vault};
    /// # fn f(vault: Vault) {
    /// let layer = ByokLayer::new(vault, FromHeader::new("x-user")).with_require_user(true);
    /// # let _ = layer; }
    /// ```
    pub fn with_require_user(mut self, require: bool) -> Self {
        Arc::make_mut(&mut self.config).require_user = require;
        self
    }

    /// Providers a user must have keys for: without them the layer answers
    /// `428 Precondition Required` with a JSON body naming the missing ones, e.g.
    /// `{"error":"missing_provider_keys","missing":["openai"]}`, so a front end can send
    /// the user to the onboarding step where keys are entered.
    ///
    /// # Panics
    ///
    /// When a name is not a valid provider name: a programming error, found at start-up.
    ///
    /// ```
    /// # use tower_byok::{resolve::FromHeader, ByokLayer, Vault};
    /// # fn f(vault: Vault) {
    /// let layer = ByokLayer::new(vault, FromHeader::new("x-user"))
    ///     .with_required_providers(["openai", "exa"]);
    /// # let _ = layer; }
    /// ```
    pub fn with_required_providers<I, P>(mut self, providers: I) -> Self
    where
        I: IntoIterator<Item = P>,
        P: AsRef<str>,
    {
        let required = providers
            .into_iter()
            .map(|p| match validate::provider(p.as_ref()) {
                Ok(p) => Box::from(p.as_ref()),
                Err(e) => panic!("with_required_providers: {e}"),
            })
            .collect();
        Arc::make_mut(&mut self.config).required_providers = required;
        self
    }

    /// Turns on the **single-developer** fallback: providers the user has no database
    /// key for are served from environment variables, read once, now.
    ///
    /// For one developer running the app locally, the only place a shared environment
    /// variable is acceptable. Off unless called; logs a warning when on. Database keys
    /// still win, and each key says where it came from ([`ProviderKey::source`](crate::ProviderKey::source)).
    /// Never turn it on in a deployment that serves more than one person.
    ///
    /// ```
    /// # use tower_byok::{resolve::FromHeader, ByokLayer, DevEnvFallback, Vault};
    /// # fn f(vault: Vault) {
    /// let mut layer = ByokLayer::new(vault, FromHeader::new("x-user"));
    /// if cfg!(debug_assertions) && std::env::var("APP_ENV").as_deref() == Ok("local") {
    ///     layer = layer.with_dev_env_fallback(
    ///         DevEnvFallback::new().provider("openai", "OPENAI_API_KEY").provider("gemini", "GEMINI_API_KEY"),
    ///     );
    /// }
    /// # let _ = layer; }
    /// ```
    pub fn with_dev_env_fallback(mut self, fallback: DevEnvFallback) -> Self {
        let keys = fallback.read();
        tracing::warn!(
            providers = ?keys.providers().collect::<Vec<_>>(),
            "tower-byok single-developer mode is ON: providers without a database key are served \
             from environment variables to every user. Never use this where more than one person uses the app."
        );
        Arc::make_mut(&mut self.config).dev_env = Some(keys);
        self
    }

    /// Answers rejected requests with `respond`'s response instead of the layer's default
    /// JSON, e.g. to give them the application's own error shape.
    ///
    /// `respond` gets the [`Rejection`] (401, 428, 503 or 500); its
    /// [`default_response`](Rejection::default_response) is a starting point. Whatever
    /// it returns, the layer adds the `Rejection` (and the [`ErrorKind`](crate::ErrorKind)
    /// of a load failure) to the response extensions. Keep `Retry-After` on 503s.
    ///
    /// ```
    /// use bytes::Bytes;
    /// use http::{header, HeaderValue, Response};
    /// use tower_byok::{resolve::FromHeader, ByokLayer, Rejection, Vault};
    ///
    /// fn problem_json(rejection: &Rejection) -> Response<Bytes> {
    ///     let body = format!(r#"{{"type":"about:blank","status":{},"title":"{}"}}"#,
    ///         rejection.status().as_u16(), rejection);
    ///     let mut response = rejection.default_response(); // keeps status and Retry-After
    ///     let problem = HeaderValue::from_static("application/problem+json");
    ///     response.headers_mut().insert(header::CONTENT_TYPE, problem);
    ///     *response.body_mut() = body.into();
    ///     response
    /// }
    /// # fn f(vault: Vault) {
    /// let layer = ByokLayer::new(vault, FromHeader::new("x-user")).with_rejection_response(problem_json);
    /// # let _ = layer; }
    /// ```
    pub fn with_rejection_response<F>(mut self, respond: F) -> Self
    where
        F: Fn(&Rejection) -> Response<Bytes> + Send + Sync + 'static,
    {
        Arc::make_mut(&mut self.config).responder = Some(Arc::new(respond));
        self
    }
}

impl<R: fmt::Debug> fmt::Debug for ByokLayer<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ByokLayer")
            .field("resolver", &self.resolver)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl<S, R: Clone> Layer<S> for ByokLayer<R> {
    type Service = Byok<S, R>;

    fn layer(&self, inner: S) -> Self::Service {
        Byok::new(
            inner,
            self.vault.clone(),
            self.resolver.clone(),
            self.config.clone(),
        )
    }
}
