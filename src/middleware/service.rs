use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use tower_service::Service;

use super::config::{prepare, Config};
use super::future::ResponseFuture;
use super::rejection::Rejection;
use crate::keys::{NoUser, UserKeys};
use crate::resolve::ResolveUser;
use crate::vault::Vault;

/// The middleware made by [`ByokLayer`](super::ByokLayer).
///
/// It answers with the inner service's response body type, and makes its own responses
/// in that type with `From<Bytes>`: axum's `Body` and `http_body_util::Full<Bytes>` pass
/// through unchanged. For body types without `From<Bytes>` (`String`, boxed bodies,
/// tower-http's wrappers), wrap the inner service's bodies in [`ByokBody`](super::ByokBody).
pub struct Byok<S, R> {
    inner: S,
    /// Everything but the inner service, behind one `Arc`: axum clones the service for
    /// every request, and one reference count is cheaper than four.
    shared: Arc<Shared<R>>,
}

struct Shared<R> {
    vault: Vault,
    resolver: R,
    config: Arc<Config>,
    /// The vault falls back to the platform's keys: every request takes the chain.
    chain: bool,
}

impl<S, R> Byok<S, R> {
    pub(crate) fn new(inner: S, vault: Vault, resolver: R, config: Arc<Config>) -> Self {
        Self {
            inner,
            shared: Arc::new(Shared {
                chain: vault.platform_fallback(),
                vault,
                resolver,
                config,
            }),
        }
    }
}

impl<S: Clone, R> Clone for Byok<S, R> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<S: fmt::Debug, R: fmt::Debug> fmt::Debug for Byok<S, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Byok")
            .field("inner", &self.inner)
            .field("resolver", &self.shared.resolver)
            .finish_non_exhaustive()
    }
}

impl<S, R, ReqBody, ResBody> Service<Request<ReqBody>> for Byok<S, R>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone,
    R: ResolveUser<ReqBody>,
    // The layer's own responses are made in the inner service's body type, so that it
    // passes through unchanged (axum would box any other type again).
    ResBody: From<Bytes>,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S, ReqBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    #[inline]
    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        // Take the service that `poll_ready` made ready, leave a clone in its place:
        // https://docs.rs/tower/latest/tower/trait.Service.html#be-careful-when-cloning-inner-services
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);

        let shared = &*self.shared;
        // A resolver that can name a team, or any request when the platform's keys are
        // a fallback, goes the member's way, which finds the team once. A resolver
        // that names no team answers `false` inline, so the single-user path below
        // costs one flag test more.
        if shared.chain || shared.resolver.names_team() {
            // The hit is looked up by reference, out of line; the request moves only
            // into the inner service, as on a single user's hit.
            return match member_hit(&request, shared) {
                Some(keys) => match prepare(&mut request, keys, &shared.config) {
                    Ok(()) => ResponseFuture::inner(inner.call(request)),
                    Err(rejection) => ResponseFuture::reject(rejection, &shared.config),
                },
                None => member(inner, request, shared),
            };
        }
        let Some(user) = shared.resolver.resolve(&request) else {
            return no_user(inner, request, &shared.config);
        };

        // The fast lane: a synchronous cache lookup and an extension insert, no boxed
        // future and no database. Not validated first: only validated ids are ever
        // loaded into the cache, so an invalid one can only miss (src/cache/mod.rs).
        if let Some(keys) = shared.vault.cache_hit(&user) {
            drop(user);
            return match prepare(&mut request, keys, &shared.config) {
                Ok(()) => ResponseFuture::inner(inner.call(request)),
                Err(rejection) => ResponseFuture::reject(rejection, &shared.config),
            };
        }

        // Before any load: an id that is not valid names no user.
        if crate::validate::user_id(&user).is_err() {
            drop(user);
            return no_user(inner, request, &shared.config);
        }
        let user = user.into_owned();
        load(inner, request, user, shared)
    }
}

/// A miss: the keys are loaded in a boxed future, the request waits in the response
/// future. Out of line, so that the hit path's code stays small enough to be inlined.
#[inline(never)]
fn load<S, R, B>(
    inner: S,
    request: Request<B>,
    user: String,
    shared: &Shared<R>,
) -> ResponseFuture<S, B>
where
    S: Service<Request<B>>,
{
    let vault = shared.vault.clone();
    let load = Box::pin(async move { vault.cached(&user).await });
    ResponseFuture::load(load, inner, request, shared.config.clone())
}

/// A member's request (see [`member`]) served from the caches: `None` when a key set
/// is not cached, or the request has no user.
#[inline(never)]
fn member_hit<R, B>(request: &Request<B>, shared: &Shared<R>) -> Option<UserKeys>
where
    R: ResolveUser<B>,
{
    let user = shared.resolver.resolve(request)?;
    let team = shared.resolver.resolve_team(request);
    match team {
        None if !shared.chain => shared.vault.cache_hit(&user),
        team => shared.vault.member_cache_hit(&user, team.as_deref()),
    }
}

/// A request through a resolver that can name a team, or with the platform fallback on,
/// that [`member_hit`] could not serve from the caches: without a (valid) user, or to be
/// loaded in a boxed future, as a user's miss is: the chain, the user's own keys, the
/// team's, the platform's ([`Vault::keys_for_member`](crate::Vault::keys_for_member)),
/// or a single user's keys when acting for no team without the fallback.
#[inline(never)]
fn member<S, R, B>(inner: S, request: Request<B>, shared: &Shared<R>) -> ResponseFuture<S, B>
where
    S: Service<Request<B>>,
    R: ResolveUser<B>,
{
    // `member_hit` found nothing cached: no lookup again, the loads look first.
    let Some(user) = shared.resolver.resolve(&request) else {
        return no_user(inner, request, &shared.config);
    };
    if crate::validate::user_id(&user).is_err() {
        drop(user);
        return no_user(inner, request, &shared.config);
    }
    let team = shared.resolver.resolve_team(&request);
    if team.is_none() && !shared.chain {
        // Acting for no team, without the platform's keys: a single user's miss.
        let user = user.into_owned();
        return load(inner, request, user, shared);
    }
    let (user, team) = (user.into_owned(), team.map(Cow::into_owned));
    let vault = shared.vault.clone();
    // An invalid team id (the application's resolver named one) fails the load with
    // `InvalidTeamId`: answered as keys unavailable, never served another owner's keys.
    let load = Box::pin(async move {
        vault
            .keys_for_member(&user, team.as_deref())
            .await
            .map_err(|e| e.kind())
    });
    ResponseFuture::load(load, inner, request, shared.config.clone())
}

/// A request without a (valid) user: answered 401 if a user is required, else passed on
/// marked [`NoUser`].
#[inline(never)]
fn no_user<S, B>(mut inner: S, mut request: Request<B>, config: &Config) -> ResponseFuture<S, B>
where
    S: Service<Request<B>>,
{
    if config.require_user {
        return ResponseFuture::reject(Rejection::Unauthenticated, config);
    }
    request.extensions_mut().insert(NoUser);
    ResponseFuture::inner(inner.call(request))
}
