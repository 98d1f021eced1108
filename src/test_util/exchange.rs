//! The HTTP side of an isolation check: calling the app, and reading what it answers as
//! text, with several calls in flight at once.

use std::fmt;
use std::future::{poll_fn, Future};
use std::pin::{pin, Pin};
use std::task::Poll;

use bytes::Buf;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body::Body;
use tower_service::Service;

/// The most of a response body the check reads: past it, the request counts as failed.
const MAX_BODY: usize = 16 * 1024 * 1024;

/// What came back: the status, and headers and body as text.
pub(super) struct Answer {
    pub(super) status: StatusCode,
    pub(super) text: String,
}

/// Waits until the app is ready for a request.
pub(super) async fn ready<S, B>(app: &mut S) -> Result<(), String>
where
    S: Service<Request<B>>,
    S::Error: fmt::Display,
{
    poll_fn(|cx| app.poll_ready(cx))
        .await
        .map_err(|e| e.to_string())
}

/// The whole answer to a call: a future that does not borrow the app, so that several
/// can be in flight at once.
pub(super) async fn answer<F, E, ResBody>(call: Result<F, String>) -> Result<Answer, String>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
    E: fmt::Display,
    ResBody: Body,
    ResBody::Error: fmt::Display,
{
    let response = call?.await.map_err(|e| e.to_string())?;
    let (parts, body) = response.into_parts();
    let mut text = String::new();
    push_headers(&mut text, &parts.headers);
    read_body(body, &mut text).await?;
    Ok(Answer {
        status: parts.status,
        text,
    })
}

fn push_headers(text: &mut String, headers: &HeaderMap) {
    for (name, value) in headers {
        text.push_str(name.as_str());
        text.push_str(": ");
        text.push_str(&String::from_utf8_lossy(value.as_bytes()));
        text.push('\n');
    }
}

/// Appends the body, and any trailers, as (lossy) UTF-8 text.
async fn read_body<ResBody>(body: ResBody, text: &mut String) -> Result<(), String>
where
    ResBody: Body,
    ResBody::Error: fmt::Display,
{
    let mut body = pin!(body);
    let mut bytes = Vec::new();
    while let Some(frame) = poll_fn(|cx| body.as_mut().poll_frame(cx)).await {
        let frame = frame.map_err(|e| e.to_string())?;
        match frame.into_data() {
            Ok(mut data) => {
                while data.has_remaining() {
                    let chunk = data.chunk();
                    bytes.extend_from_slice(chunk);
                    let n = chunk.len();
                    data.advance(n);
                }
                if bytes.len() > MAX_BODY {
                    return Err("the response body is over 16 MiB".to_owned());
                }
            }
            Err(frame) => {
                if let Ok(trailers) = frame.into_trailers() {
                    push_headers(text, &trailers);
                }
            }
        }
    }
    text.push_str(&String::from_utf8_lossy(&bytes));
    Ok(())
}

/// Polls every future until all are done, in one task: their `.await` points
/// interleave as concurrent requests to one server would.
pub(super) async fn join_all<F: Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut futures: Vec<Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    poll_fn(|cx| {
        let mut pending = false;
        for (future, output) in futures.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                match future.as_mut().poll(cx) {
                    Poll::Ready(value) => *output = Some(value),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    outputs.into_iter().flatten().collect()
}
