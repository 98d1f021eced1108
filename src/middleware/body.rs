//! [`ByokBody`]: for inner services whose body type cannot hold the layer's own responses.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

pin_project! {
    /// A response body that is an inner service's body or a body of bytes, for inner
    /// services whose body type the layer cannot answer in.
    ///
    /// [`Byok`](super::Byok) answers with its inner service's own response body type, and
    /// makes its own responses (401, 428, 500, 503, or those of
    /// [`with_rejection_response`](super::ByokLayer::with_rejection_response)) in it with
    /// `From<Bytes>`. axum's `Body` and `http_body_util::Full<Bytes>` have that, so under
    /// axum the layer's responses stay `axum::body::Body` and axum does not box them
    /// again (BENCHMARKS.md, "Response body").
    ///
    /// Body types without `From<Bytes>` (`String`, `http_body_util::Empty`, the boxed
    /// bodies, or tower-http's wrappers such as `CompressionBody` when such a layer sits
    /// inside this one) are wrapped in a `ByokBody` first, without boxing:
    ///
    /// ```
    /// use std::convert::Infallible;
    /// use http::{Request, Response};
    /// use tower::{service_fn, ServiceBuilder};
    /// use tower_byok::{resolve::FromHeader, ByokBody, ByokLayer, Vault};
    ///
    /// # fn f(vault: Vault) {
    /// let service = ServiceBuilder::new()
    ///     .layer(ByokLayer::new(vault, FromHeader::new("x-user")))
    ///     .map_response(|res: Response<String>| res.map(ByokBody::new))
    ///     .service(service_fn(|_req: Request<String>| async {
    ///         Ok::<_, Infallible>(Response::new(String::from("hello")))
    ///     }));
    /// # let _ = service; }
    /// ```
    #[derive(Debug)]
    pub struct ByokBody<B> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    #[derive(Debug)]
    enum Kind<B> {
        Inner { #[pin] body: B },
        Own { data: Option<Bytes> },
    }
}

impl<B> ByokBody<B> {
    /// Wraps an inner service's body.
    pub fn new(body: B) -> Self {
        Self {
            kind: Kind::Inner { body },
        }
    }
}

impl<B> From<Bytes> for ByokBody<B> {
    /// A body of `data`: how the layer makes its own responses in it.
    fn from(data: Bytes) -> Self {
        Self {
            kind: Kind::Own { data: Some(data) },
        }
    }
}

impl<B> Body for ByokBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        match self.project().kind.project() {
            KindProj::Inner { body } => body.poll_frame(cx),
            KindProj::Own { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Inner { body } => body.is_end_stream(),
            Kind::Own { data } => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Inner { body } => body.size_hint(),
            Kind::Own { data } => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
        }
    }
}
