//! Who is the user: how the layer finds the user id of a request.
//!
//! The layer does not authenticate. An authentication layer in front of it does, and
//! leaves its verdict in the request; a [`ResolveUser`] reads the user id from there.

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
pub struct FromExtension<T, F> {
    pick: F,
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
            _claims: PhantomData,
        }
    }
}

impl<T, F: Clone> Clone for FromExtension<T, F> {
    fn clone(&self) -> Self {
        Self {
            pick: self.pick.clone(),
            _claims: PhantomData,
        }
    }
}

impl<T, F> fmt::Debug for FromExtension<T, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FromExtension")
            .field("type", &std::any::type_name::<T>())
            .finish_non_exhaustive()
    }
}

impl<B, T, F> ResolveUser<B> for FromExtension<T, F>
where
    T: Send + Sync + 'static,
    F: Fn(&T) -> &str + Clone + Send + Sync + 'static,
{
    fn resolve<'r>(&self, request: &'r Request<B>) -> Option<Cow<'r, str>> {
        let claims = request.extensions().get::<T>()?;
        let id = (self.pick)(claims);
        (!id.is_empty()).then_some(Cow::Borrowed(id))
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
}

impl FromHeader {
    /// Reads the user id from the header `name`.
    ///
    /// # Panics
    ///
    /// When `name` is not a valid header name; pass a literal.
    pub fn new(name: &'static str) -> Self {
        Self {
            name: HeaderName::from_static(name),
        }
    }

    /// Reads the user id from the header `name`.
    pub fn from_name(name: HeaderName) -> Self {
        Self { name }
    }
}

impl<B> ResolveUser<B> for FromHeader {
    fn resolve<'r>(&self, request: &'r Request<B>) -> Option<Cow<'r, str>> {
        // A header sent twice names no user: which copy the gateway meant is unknown, and
        // an appended copy must never pick the user. One lookup either way: when no
        // name in the map has a second value (as many values as names), `get` is the
        // only value; otherwise the values of this name are counted.
        let headers = request.headers();
        let value = if headers.len() == headers.keys_len() {
            headers.get(&self.name)?
        } else {
            let mut values = headers.get_all(&self.name).iter();
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
pub struct FromFn<F> {
    f: F,
}

impl<F> FromFn<F> {
    /// Resolves with `f`.
    pub fn new(f: F) -> Self {
        Self { f }
    }
}

impl<F> fmt::Debug for FromFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FromFn").finish_non_exhaustive()
    }
}

impl<B, F> ResolveUser<B> for FromFn<F>
where
    F: Fn(&Request<B>) -> Option<String> + Clone + Send + Sync + 'static,
{
    fn resolve<'r>(&self, request: &'r Request<B>) -> Option<Cow<'r, str>> {
        (self.f)(request)
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
