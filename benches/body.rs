//! What the layer's response body type costs under axum, alone and composed with
//! tower-http's `TraceLayer` and `CompressionLayer`.
//!
//! Every request goes in process through an axum `Router` with `oneshot` (no socket: the
//! differences measured here are a box or two per response, which loopback noise would
//! bury) and its response body is collected, so a compressed body is really compressed.
//! The handler answers a 1 KiB text body (compressible, above `CompressionLayer`'s 32-byte
//! minimum) and reads nothing; the request carries `x-user: bench-user`, a user whose keys
//! are cached, and `accept-encoding: gzip`.
//!
//! - `bare`: the router alone (the floor), and with `ByokLayer` (`Router::layer`);
//! - `trace`: the same plus `TraceLayer` (`Router::layer`);
//! - `trace+gzip`: the same plus `TraceLayer` and `CompressionLayer` added with
//!   `Router::layer`, so axum turns each layer's response into its own `Body` (boxing
//!   any body type that is not already `Body`);
//! - `trace+gzip/outside`: `TraceLayer` and `CompressionLayer` wrapped around the router
//!   with `ServiceBuilder`, where nothing re-boxes their bodies.
//!
//! Each `byok` variant has a `byok+wrap` twin whose layer's responses are wrapped in
//! `ByokBody` (what the layer answered with before it left the body type alone), so one
//! run compares the two.
//!
//! No tracing subscriber is installed, so `TraceLayer`'s spans and events are disabled:
//! its cost here is the wrapping, not the logging.
//!
//! Run: `cargo bench --bench body`. Instructions per request of one variant, exact on a
//! noisy machine: `BYOK_BODY_COUNT=bare/byok BYOK_BODY_REQUESTS=2000 valgrind
//! --tool=callgrind --collect-atstart=no --toggle-collect='*counted_requests*' <bench
//! executable>` (after 200 uncounted requests), then divide the `summary:` line of the
//! output file by the requests.

use std::time::Duration;

use axum::body::Body;
use axum::routing::get;
use axum::Router;
use criterion::measurement::WallTime;
use criterion::{black_box, BenchmarkGroup, Criterion};
use http::{Request, Response};
use http_body_util::BodyExt;
use tokio::runtime::Runtime;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_byok::{resolve::FromHeader, ByokBody, ByokLayer};
use tower_http::compression::CompressionLayer;
use tower_http::trace::TraceLayer;

// The hit-path benches' cached vault; this bench uses nothing else of theirs.
#[allow(dead_code)]
#[path = "support/hit.rs"]
mod hit;

const BODY: &str = include_str!("../LICENSE");

fn request() -> Request<Body> {
    Request::get("/")
        .header("x-user", "bench-user")
        .header("accept-encoding", "gzip")
        .body(Body::empty())
        .expect("request")
}

/// One request through `service`, its body collected; returns the body's length so the
/// work cannot be optimised away.
async fn once<S, B>(service: &S) -> usize
where
    S: Service<Request<Body>, Response = http::Response<B>> + Clone,
    S::Error: std::fmt::Debug,
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    let response = service.clone().oneshot(request()).await.expect("response");
    assert!(response.status().is_success(), "{}", response.status());
    let body = response.into_body().collect().await.expect("body");
    body.to_bytes().len()
}

fn router() -> Router {
    Router::new().route("/", get(|| async { &BODY[..1024] }))
}

/// Where each variant goes: into criterion's group, or, for one variant, a counted run
/// under callgrind.
enum Mode<'a> {
    Bench(BenchmarkGroup<'a, WallTime>),
    Count { variant: String, requests: usize },
}

fn each<S, B>(mode: &mut Mode<'_>, rt: &Runtime, name: &str, service: S)
where
    S: Service<Request<Body>, Response = http::Response<B>> + Clone,
    S::Error: std::fmt::Debug,
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    match mode {
        Mode::Bench(group) => {
            group.bench_function(name, |b| b.to_async(rt).iter(|| once(&service)));
        }
        Mode::Count { variant, requests } if variant == name => {
            warm_up(rt, &service, 200);
            counted_requests(rt, &service, *requests);
        }
        Mode::Count { .. } => {}
    }
}

#[inline(never)]
fn warm_up<S, B>(rt: &Runtime, service: &S, n: usize)
where
    S: Service<Request<Body>, Response = http::Response<B>> + Clone,
    S::Error: std::fmt::Debug,
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    rt.block_on(async {
        for _ in 0..n {
            black_box(once(service).await);
        }
    });
}

/// The loop callgrind counts (`--toggle-collect='*counted_requests*'`).
#[inline(never)]
fn counted_requests<S, B>(rt: &Runtime, service: &S, n: usize)
where
    S: Service<Request<Body>, Response = http::Response<B>> + Clone,
    S::Error: std::fmt::Debug,
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    rt.block_on(async {
        for _ in 0..n {
            black_box(once(service).await);
        }
    });
}

fn variants(mode: &mut Mode<'_>) {
    let (rt, vault) = hit::cached_vault();
    let byok = || ByokLayer::new(vault.clone(), FromHeader::new("x-user"));
    // The response body before the layer left it alone: the same two-variant enum,
    // which axum then boxes into its own `Body`.
    let byok_wrapped = || {
        ServiceBuilder::new()
            .map_response(|res: Response<Body>| res.map(ByokBody::new))
            .layer(byok())
    };

    each(mode, &rt, "bare/floor", router());
    each(mode, &rt, "bare/byok", router().layer(byok()));
    each(mode, &rt, "bare/byok+wrap", router().layer(byok_wrapped()));

    let trace = TraceLayer::new_for_http;
    each(mode, &rt, "trace/floor", router().layer(trace()));
    each(
        mode,
        &rt,
        "trace/byok",
        router().layer(byok()).layer(trace()),
    );
    each(
        mode,
        &rt,
        "trace/byok+wrap",
        router().layer(byok_wrapped()).layer(trace()),
    );

    let gzip = CompressionLayer::new;
    each(
        mode,
        &rt,
        "trace+gzip/floor",
        router().layer(gzip()).layer(trace()),
    );
    let with_byok = router().layer(byok()).layer(gzip()).layer(trace());
    each(mode, &rt, "trace+gzip/byok", with_byok);
    let with_byok = router().layer(byok_wrapped()).layer(gzip()).layer(trace());
    each(mode, &rt, "trace+gzip/byok+wrap", with_byok);

    let outside = |router: Router| {
        ServiceBuilder::new()
            .layer(trace())
            .layer(gzip())
            .service(router)
    };
    each(mode, &rt, "trace+gzip/outside/floor", outside(router()));
    each(
        mode,
        &rt,
        "trace+gzip/outside/byok",
        outside(router().layer(byok())),
    );
    let with_byok = outside(router().layer(byok_wrapped()));
    each(mode, &rt, "trace+gzip/outside/byok+wrap", with_byok);
}

fn main() {
    if let Ok(variant) = std::env::var("BYOK_BODY_COUNT") {
        let requests = std::env::var("BYOK_BODY_REQUESTS")
            .map_or(2_000, |n| n.parse().expect("BYOK_BODY_REQUESTS"));
        variants(&mut Mode::Count { variant, requests });
        return;
    }
    let mut c = Criterion::default().configure_from_args();
    let mut group = c.benchmark_group("body");
    group
        .sample_size(30)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    variants(&mut Mode::Bench(group));
    c.final_summary();
}
