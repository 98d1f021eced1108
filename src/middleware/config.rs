//! What the layer was configured with, and the one step every request with keys runs.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use zeroize::Zeroizing;

use super::rejection::Rejection;
use crate::keys::{KeySource, ProviderKey, UserKeys};
use crate::metrics::ServedCounters;
use crate::validate;

/// Makes the response for a [`Rejection`], in place of the layer's default JSON.
pub(crate) type RejectionResponder = Arc<dyn Fn(&Rejection) -> Response<Bytes> + Send + Sync>;

/// Everything the layer was told, shared by every service it makes.
#[derive(Clone, Default)]
pub(crate) struct Config {
    pub(crate) require_user: bool,
    pub(crate) required_providers: Vec<Box<str>>,
    /// The single-developer keys read from the environment at start-up, if turned on.
    pub(crate) dev_env: Option<UserKeys>,
    /// The application's own rejection responses, if it has any.
    pub(crate) responder: Option<RejectionResponder>,
    /// Counts the keys served, by source (feature `metrics`; else empty).
    pub(crate) served: ServedCounters,
}

impl Config {
    /// The response for `rejection`: the application's, or the layer's default, with the
    /// rejection in its extensions either way.
    pub(crate) fn respond(&self, rejection: Rejection) -> Response<Bytes> {
        rejection.log();
        let response = match &self.responder {
            Some(respond) => respond(&rejection),
            None => rejection.default_response(),
        };
        let mut response = response;
        let extensions = response.extensions_mut();
        if let Some(kind) = rejection.error_kind() {
            // For outer layers (metrics, logging) that want to know why.
            extensions.insert(kind);
        }
        extensions.insert(rejection);
        response
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("require_user", &self.require_user)
            .field("required_providers", &self.required_providers)
            .field("dev_env_fallback", &self.dev_env.is_some())
            .field("custom_rejections", &self.responder.is_some())
            .finish()
    }
}

/// Adds the single-developer keys if on, checks the required providers, and puts the
/// keys into the request.
// Always inlined: on a hit it is most of `Byok::call`, and a call more costs the hit path
// measurably (BENCHMARKS.md §1).
#[inline(always)]
pub(crate) fn prepare<B>(
    request: &mut Request<B>,
    keys: UserKeys,
    config: &Config,
) -> Result<(), Rejection> {
    let keys = match &config.dev_env {
        Some(env) => keys.or_else_from(env),
        None => keys,
    };
    if config.required_providers.iter().any(|p| !keys.contains(p)) {
        let missing = config
            .required_providers
            .iter()
            .filter(|p| !keys.contains(p))
            .cloned()
            .collect();
        return Err(Rejection::MissingProviders { missing });
    }
    config.served.served(&keys);
    request.extensions_mut().insert(keys);
    Ok(())
}

/// Which environment variable holds which provider's key, for
/// [`ByokLayer::with_dev_env_fallback`](crate::ByokLayer::with_dev_env_fallback).
#[derive(Clone, Debug, Default)]
#[must_use]
pub struct DevEnvFallback {
    vars: Vec<(String, String)>,
}

impl DevEnvFallback {
    /// An empty mapping.
    pub fn new() -> Self {
        Self::default()
    }

    /// Serves `provider`'s key from the variable `var`, e.g. `("gemini", "GEMINI_API_KEY")`.
    ///
    /// # Panics
    ///
    /// When `provider` is not a valid provider name: a programming error.
    pub fn provider(mut self, provider: &str, var: &str) -> Self {
        let provider = match validate::provider(provider) {
            Ok(p) => p.into_owned(),
            Err(e) => panic!("DevEnvFallback::provider: {e}"),
        };
        self.vars.push((provider, var.to_owned()));
        self
    }

    /// Reads the variables now, into the key set served to every user.
    pub(crate) fn read(&self) -> UserKeys {
        // Collecting keeps the last key of a provider: walked backwards, that is the
        // first mapping given.
        self.vars
            .iter()
            .rev()
            .filter_map(|(provider, var)| {
                let value = Zeroizing::new(std::env::var(var).ok()?);
                (validate::secret(&value).is_ok()).then(|| {
                    ProviderKey::new(provider.as_str(), value, KeySource::Environment, None)
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn the_first_mapping_of_a_provider_that_is_set_wins() {
        let (first, second, unset) = (
            format!("TOWER_BYOK_UNIT_FIRST_{}", std::process::id()),
            format!("TOWER_BYOK_UNIT_SECOND_{}", std::process::id()),
            format!("TOWER_BYOK_UNIT_UNSET_{}", std::process::id()),
        );
        std::env::set_var(&first, "sk-first");
        std::env::set_var(&second, "sk-second");
        let keys = DevEnvFallback::new()
            .provider("openai", &unset)
            .provider("OpenAI", &first)
            .provider("openai", &second)
            .provider("exa", &second)
            .read();
        std::env::remove_var(&first);
        std::env::remove_var(&second);
        assert_eq!(keys.providers().collect::<Vec<_>>(), ["exa", "openai"]);
        let openai = keys.get("openai").unwrap();
        assert_eq!(openai.expose_secret(), "sk-first");
        assert_eq!(openai.source(), KeySource::Environment);
    }
}
