//! Who is the user: how the layer finds the user id of a request.
//!
//! The layer does not authenticate. An authentication layer in front of it does, and
//! leaves its verdict in the request; a [`ResolveUser`] reads the user id from there,
//! and the team the request acts for, if any.
//!
//! # Teams
//!
//! A resolver may also name the team the request acts for ([`ResolveUser::resolve_team`]):
//! [`FromExtension::with_team`], [`FromHeader::with_team_header`] and
//! [`FromFn::with_team`]. The layer then serves the team's chain
//! ([`Vault::keys_for_member`](crate::Vault::keys_for_member)). **Membership is the
//! application's decision**: the layer trusts the resolver, so take the team from what
//! your authentication verified (a session, a token's claims), never from the request
//! body or a header a client can set.

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

use http::header::HeaderName;
use http::Request;

/// Finds the user id of a request, or `None` when the request has no user.
///
/// Borrowing from the request keeps the cache-hit path free of allocations.
/// Ready-made: [`FromExtension`] (the usual way), [`FromHeader`] (trusted hops only) and
/// [`FromFn`].
pub trait ResolveUser<B>: Clone + Send + Sync + 'static {
    /// The user id of `request`, if it has one.
    fn resolve<'r>(&self, request: &'r Request<B>) -> Option<Cow<'r, str>>;

    /// The team `request` acts for, if any. None by default: the request is served the
    /// user's own keys (and the platform's, if the vault falls back to them).
    #[inline]
    fn resolve_team<'r>(&self, request: &'r Request<B>) -> Option<Cow<'r, str>> {
        let _ = request;
        None
    }

    /// Whether [`resolve_team`](Self::resolve_team) can ever name a team: `false` lets
    /// the layer skip the team's lookup on every request. True by default, so that a
    /// resolver overriding `resolve_team` alone is never served without its team;
    /// override it with `false` in a resolver that names no team, to take the
    /// single-user path directly.
    #[inline]
    fn names_team(&self) -> bool {
        true
    }
}

/// A resolver's team part when it names no team: the default of [`FromExtension`] and
/// [`FromFn`].
#[derive(Clone, Copy, Debug, Default)]
pub struct NoTeam;

/// Picks the team id out of an authentication layer's extension: implemented by
/// [`NoTeam`] and by closures `Fn(&T) -> Option<&str>`.
pub trait PickTeam<T>: Clone + Send + Sync + 'static {
    /// Whether this picker can name a team at all: `false` for [`NoTeam`], so that a
    /// resolver without teams reads nothing more per request.
    const NAMES_TEAM: bool = true;

    /// The team id in `claims`, if any.
    fn pick<'a>(&self, claims: &'a T) -> Option<&'a str>;
}

impl<T> PickTeam<T> for NoTeam {
    const NAMES_TEAM: bool = false;

    #[inline]
    fn pick<'a>(&self, _: &'a T) -> Option<&'a str> {
        None
    }
}

impl<T, G> PickTeam<T> for G
where
    G: Fn(&T) -> Option<&str> + Clone + Send + Sync + 'static,
{
    fn pick<'a>(&self, claims: &'a T) -> Option<&'a str> {
        self(claims)
    }
}

/// Finds the team id of a request with a closure: implemented by [`NoTeam`] and by
/// closures `Fn(&Request<B>) -> Option<String>`.
pub trait TeamOfRequest<B>: Clone + Send + Sync + 'static {
    /// Whether this can name a team at all: `false` for [`NoTeam`].
    const NAMES_TEAM: bool = true;

    /// The team `request` acts for, if any.
    fn team(&self, request: &Request<B>) -> Option<String>;
}

impl<B> TeamOfRequest<B> for NoTeam {
    const NAMES_TEAM: bool = false;

    #[inline]
    fn team(&self, _: &Request<B>) -> Option<String> {
        None
    }
}

impl<B, G> TeamOfRequest<B> for G
where
    G: Fn(&Request<B>) -> Option<String> + Clone + Send + Sync + 'static,
{
    fn team(&self, request: &Request<B>) -> Option<String> {
        self(request)
    }
}

/// The user id from a request extension set by an authentication layer in front, such as
/// its claims type, through a function that picks the id out of it.
///
/// ```
/// use tower_byok::resolve::FromExtension;
///
/// #[derive(Clone)]
/// struct Claims { sub: String, email: String }
///
/// let resolver = FromExtension::new(|claims: &Claims| claims.sub.as_str());
/// # let _ = resolver;
/// ```
pub struct FromExtension<T, F, G = NoTeam> {
    pick: F,
    team: G,
    _claims: PhantomData<fn(&T)>,
}

impl<T, F> FromExtension<T, F>
where
    T: Send + Sync + 'static,
    F: Fn(&T) -> &str + Clone + Send + Sync + 'static,
{
    /// Reads the extension of type `T` and takes the user id from it with `pick`.
    pub fn new(pick: F) -> Self {
        Self {
            pick,
            team: NoTeam,
            _claims: PhantomData,
        }
    }
}

impl<T, F, G> FromExtension<T, F, G> {
    /// Also takes the team the request acts for from the same extension, with `team`;
    /// `None` (or an empty id) acts for no team.
    ///
    /// ```
    /// use tower_byok::resolve::FromExtension;
    ///
    /// #[derive(Clone)]
    /// struct Claims { sub: String, workspace: Option<String> }
    ///
    /// let resolver = FromExtension::new(|c: &Claims| c.sub.as_str())
    ///     .with_team(|c: &Claims| c.workspace.as_deref());
    /// # let _ = resolver;
    /// ```
    pub fn with_team<G2>(self, team: G2) -> FromExtension<T, F, G2>
    where
        G2: Fn(&T) -> Option<&str> + Clone + Send + Sync + 'static,
    {
        FromExtension {
            pick: self.pick,
            team,
            _claims: PhantomData,
        }
    }
}

impl<T, F: Clone, G: Clone> Clone for FromExtension<T, F, G> {
    fn clone(&self) -> Self {
        Self {
            pick: self.pick.clone(),
            team: self.team.clone(),
            _claims: PhantomData,
        }
    }
}

impl<T, F, G> fmt::Debug for FromExtension<T, F, G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FromExtension")
            .field("type", &std::any::type_name::<T>())
            .finish_non_exhaustive()
    }
}

impl<B, T, F, G> ResolveUser<B> for FromExtension<T, F, G>
where
    T: Send + Sync + 'static,
    F: Fn(&T) -> &str + Clone + Send + Sync + 'static,
    G: PickTeam<T>,
{
    fn resolve<'r>(&self, request: &'r Request<B>) -> Option<Cow<'r, str>> {
        let claims = request.extensions().get::<T>()?;
        let id = (self.pick)(claims);
        (!id.is_empty()).then_some(Cow::Borrowed(id))
    }

    #[inline]
    fn names_team(&self) -> bool {
        G::NAMES_TEAM
    }

    #[inline]
    fn resolve_team<'r>(&self, request: &'r Request<B>) -> Option<Cow<'r, str>> {
        // Known when compiled: without a team picker, no second extension lookup.
        if !G::NAMES_TEAM {
            return None;
        }
        let claims = request.extensions().get::<T>()?;
        let team = self.team.pick(claims)?;
        (!team.is_empty()).then_some(Cow::Borrowed(team))
    }
}

/// The user id from a request header.
///
/// **Only behind a trusted hop**: use this when a gateway in front of the application
/// authenticates the user, strips any such header the client sent, and sets its own.
/// Exposed directly to clients, it lets anyone claim to be anyone. The value is trimmed;
/// a value that is not visible ASCII/UTF-8, or a header sent more than once, names no
/// user.
///
/// ```
/// use tower_byok::resolve::FromHeader;
///
/// let resolver = FromHeader::new("x-authenticated-user");
/// # let _ = resolver;
/// ```
#[derive(Clone, Debug)]
pub struct FromHeader {
    name: HeaderName,
    team: Option<HeaderName>,
}

impl FromHeader {
    /// Reads the user id from the header `name`.
    ///
    /// # Panics
    ///
    /// When `name` is not a valid header name; pass a literal.
    pub fn new(name: &'static str) -> Self {
        Self::from_name(HeaderName::from_static(name))
    }

    /// Reads the user id from the header `name`.
    pub fn from_name(name: HeaderName) -> Self {
        Self { name, team: None }
    }

    /// Also reads the team the request acts for from the header `name`, set by the same
    /// trusted gateway (which must strip any copy a client sent), by the same rules as
    /// the user's header.
    ///
    /// ```
    /// use tower_byok::resolve::FromHeader;
    ///
    /// let resolver = FromHeader::new("x-authenticated-user")
    ///     .with_team_header("x-authenticated-team");
    /// # let _ = resolver;
    /// ```
    ///
    /// # Panics
    ///
    /// When `name` is not a valid header name; pass a literal.
    #[must_use]
    pub fn with_team_header(mut self, name: &'static str) -> Self {
        self.team = Some(HeaderName::from_static(name));
        self
    }
}

impl<B> ResolveUser<B> for FromHeader {
    fn resolve<'r>(&self, request: &'r Request<B>) -> Option<Cow<'r, str>> {
        single_header(request, &self.name)
    }

    fn resolve_team<'r>(&self, request: &'r Request<B>) -> Option<Cow<'r, str>> {
        single_header(request, self.team.as_ref()?)
    }

    #[inline]
    fn names_team(&self) -> bool {
        self.team.is_some()
    }
}

/// The trimmed value of the header `name`, if the request has it exactly once and it is
/// visible ASCII and not blank.
#[inline]
fn single_header<'r, B>(request: &'r Request<B>, name: &HeaderName) -> Option<Cow<'r, str>> {
    // A header sent twice names no user: which copy the gateway meant is unknown, and
    // an appended copy must never pick the user. One lookup either way: when no
    // name in the map has a second value (as many values as names), `get` is the
    // only value; otherwise the values of this name are counted.
    let headers = request.headers();
    let value = if headers.len() == headers.keys_len() {
        headers.get(name)?
    } else {
        let mut values = headers.get_all(name).iter();
        let value = values.next()?;
        if values.next().is_some() {
            return None;
        }
        value
    };
    // `to_str` admits visible ASCII, spaces and tabs only, so trimming ASCII
    // whitespace is the whole of `str::trim` here, without decoding chars.
    let value = value.to_str().ok()?.trim_ascii();
    (!value.is_empty()).then_some(Cow::Borrowed(value))
}

/// The user id from a closure over the request.
///
/// ```
/// use http::Request;
/// use tower_byok::resolve::FromFn;
///
/// // E.g. a session looked up by an earlier layer, or a fixed user in a local tool.
/// let resolver = FromFn::new(|req: &Request<String>| {
///     req.headers().get("x-session").map(|_| "dev-user".to_owned())
/// });
/// # let _ = resolver;
/// ```
#[derive(Clone)]
pub struct FromFn<F, G = NoTeam> {
    f: F,
    team: G,
}

impl<F> FromFn<F> {
    /// Resolves with `f`.
    pub fn new(f: F) -> Self {
        Self { f, team: NoTeam }
    }
}

impl<F, G> FromFn<F, G> {
    /// Also finds the team the request acts for with `team`; `None` (or an empty id)
    /// acts for no team.
    ///
    /// ```
    /// use http::Request;
    /// use tower_byok::resolve::FromFn;
    ///
    /// let resolver = FromFn::new(|_: &Request<String>| Some("dev-user".to_owned()))
    ///     .with_team(|_: &Request<String>| Some("dev-team".to_owned()));
    /// # let _ = resolver;
    /// ```
    pub fn with_team<G2>(self, team: G2) -> FromFn<F, G2> {
        FromFn { f: self.f, team }
    }
}

impl<F, G> fmt::Debug for FromFn<F, G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FromFn").finish_non_exhaustive()
    }
}

impl<B, F, G> ResolveUser<B> for FromFn<F, G>
where
    F: Fn(&Request<B>) -> Option<String> + Clone + Send + Sync + 'static,
    G: TeamOfRequest<B>,
{
    fn resolve<'r>(&self, request: &'r Request<B>) -> Option<Cow<'r, str>> {
        (self.f)(request)
            .filter(|id| !id.is_empty())
            .map(Cow::Owned)
    }

    #[inline]
    fn names_team(&self) -> bool {
        G::NAMES_TEAM
    }

    #[inline]
    fn resolve_team<'r>(&self, request: &'r Request<B>) -> Option<Cow<'r, str>> {
        if !G::NAMES_TEAM {
            return None;
        }
        self.team
            .team(request)
            .filter(|id| !id.is_empty())
            .map(Cow::Owned)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// What `FromHeader` finds in a request with these headers.
    fn from_header(headers: &[(&'static str, &[u8])]) -> Option<String> {
        let mut request = Request::new(());
        for (name, value) in headers {
            let value = http::HeaderValue::from_bytes(value).unwrap();
            request.headers_mut().append(*name, value);
        }
        FromHeader::new("x-user")
            .resolve(&request)
            .map(Cow::into_owned)
    }

    #[test]
    fn from_header_trims_and_rejects_a_repeated_or_unreadable_header() {
        assert_eq!(
            from_header(&[("x-user", b"alice")]).as_deref(),
            Some("alice")
        );
        assert_eq!(
            from_header(&[("x-user", b" \talice \t")]).as_deref(),
            Some("alice"),
            "trimmed as str::trim would"
        );
        assert_eq!(from_header(&[]), None);
        assert_eq!(from_header(&[("x-user", b" \t ")]), None, "blank");
        assert_eq!(
            from_header(&[("x-user", b"al\xc3\xafce")]),
            None,
            "not visible ASCII"
        );
        // Repeated, alone and beside other headers, repeated or not: with no other
        // header repeated, and with one.
        assert_eq!(
            from_header(&[("x-user", b"alice"), ("x-user", b"bob")]),
            None
        );
        assert_eq!(
            from_header(&[
                ("accept", b"*/*"),
                ("x-user", b"alice"),
                ("x-user", b"alice")
            ]),
            None
        );
        assert_eq!(
            from_header(&[("cookie", b"a=1"), ("cookie", b"b=2"), ("x-user", b"alice")]).as_deref(),
            Some("alice"),
            "another header's repeats are not this one's"
        );
        assert_eq!(
            from_header(&[("x-user", b"alice"), ("cookie", b"a=1"), ("x-user", b"bob")]),
            None
        );
    }
}
