use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use http::{Request, Response};
use pin_project_lite::pin_project;
use tower_service::Service;

use bytes::Bytes;

use super::config::{prepare, Config};
use super::rejection::Rejection;
use crate::error::ErrorKind;
use crate::keys::UserKeys;

type Load = Pin<Box<dyn Future<Output = Result<UserKeys, ErrorKind>> + Send>>;

pin_project! {
    /// The response future of [`Byok`](super::Byok).
    ///
    /// On a cache hit it is the inner service's future, unboxed. Only a cache miss boxes
    /// one future: the database load.
    pub struct ResponseFuture<S, B>
    where
        S: Service<Request<B>>,
    {
        #[pin]
        state: State<S, B>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, B>
    where
        S: Service<Request<B>>,
    {
        Inner {
            #[pin]
            future: S::Future,
        },
        // The cold states are boxed so that the future a hit returns is the inner
        // service's future and a tag, moved without copying a request or a response.
        Load {
            load: Load,
            pending: Option<Box<(S, Request<B>, Arc<Config>)>>,
        },
        Reject {
            response: Option<Box<Response<Bytes>>>,
        },
    }
}

impl<S, B> ResponseFuture<S, B>
where
    S: Service<Request<B>>,
{
    pub(crate) fn inner(future: S::Future) -> Self {
        Self {
            state: State::Inner { future },
        }
    }

    pub(crate) fn reject(rejection: Rejection, config: &Config) -> Self {
        Self {
            state: State::Reject {
                response: Some(Box::new(config.respond(rejection))),
            },
        }
    }

    pub(crate) fn load(load: Load, service: S, request: Request<B>, config: Arc<Config>) -> Self {
        Self {
            state: State::Load {
                load,
                pending: Some(Box::new((service, request, config))),
            },
        }
    }
}

impl<S, B, ResBody> Future for ResponseFuture<S, B>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    ResBody: From<Bytes>,
{
    type Output = Result<Response<ResBody>, S::Error>;

    #[inline]
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let mut this = self.as_mut().project();
            let next = match this.state.as_mut().project() {
                StateProj::Inner { future } => return future.poll(cx),
                StateProj::Reject { response } => {
                    let response = response
                        .take()
                        .expect("ResponseFuture polled after completion");
                    return Poll::Ready(Ok((*response).map(ResBody::from)));
                }
                StateProj::Load { load, pending } => {
                    let loaded = ready!(load.as_mut().poll(cx));
                    let (mut service, mut request, config) = *pending
                        .take()
                        .expect("ResponseFuture polled after completion");
                    match loaded
                        .map_err(Rejection::KeysUnavailable)
                        .and_then(|keys| prepare(&mut request, keys, &config))
                    {
                        // `service` is the instance `poll_ready` made ready before `call`.
                        Ok(()) => State::Inner {
                            future: service.call(request),
                        },
                        Err(rejection) => State::Reject {
                            response: Some(Box::new(config.respond(rejection))),
                        },
                    }
                }
            };
            this.state.set(next);
        }
    }
}
