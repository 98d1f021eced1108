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
//! No tracing subscriber is installed, so `TraceLayer`'s spans and events are disabled:
//! its cost here is the wrapping, not the logging.
//!
//! Run: `cargo bench --bench body`.

// `criterion_group!` expands to an undocumented `pub fn`.
#![allow(missing_docs)]

use std::time::Duration;

use axum::body::Body;
use axum::routing::get;
use axum::Router;
use criterion::{criterion_group, criterion_main, Criterion};
use http::Request;
use http_body_util::BodyExt;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_byok::{resolve::FromHeader, ByokLayer, Keyring, MasterKey, SqliteStore, Vault};
use tower_http::compression::CompressionLayer;
use tower_http::trace::TraceLayer;

const BODY: &str = include_str!("../LICENSE");

fn cached_vault(rt: &tokio::runtime::Runtime) -> Vault {
    rt.block_on(async {
        let keyring = Keyring::new(MasterKey::generate("k1").expect("key"));
        let vault = Vault::builder(SqliteStore::in_memory().await.expect("store"), keyring)
            .cache_ttl(Duration::from_secs(3600))
            .open()
            .await
            .expect("vault");
        for (provider, secret) in [
            ("openai", "sk-proj-bench-0001"),
            ("gemini", "AIza-bench-0002"),
            ("exa", "exa-bench-0003"),
        ] {
            vault.put("bench-user", provider, secret).await.expect("put");
        }
        vault.keys_for("bench-user").await.expect("warm the cache");
        vault
    })
}

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

fn body(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let vault = cached_vault(&rt);
    let byok = || ByokLayer::new(vault.clone(), FromHeader::new("x-user"));

    let mut group = c.benchmark_group("body");
    group
        .sample_size(30)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));

    let floor = router();
    group.bench_function("bare/floor", |b| b.to_async(&rt).iter(|| once(&floor)));
    let with_byok = router().layer(byok());
    group.bench_function("bare/byok", |b| b.to_async(&rt).iter(|| once(&with_byok)));

    let floor = router().layer(TraceLayer::new_for_http());
    group.bench_function("trace/floor", |b| b.to_async(&rt).iter(|| once(&floor)));
    let with_byok = router().layer(byok()).layer(TraceLayer::new_for_http());
    group.bench_function("trace/byok", |b| b.to_async(&rt).iter(|| once(&with_byok)));

    let floor = router()
        .layer(CompressionLayer::new())
        .layer(TraceLayer::new_for_http());
    group.bench_function("trace+gzip/floor", |b| {
        b.to_async(&rt).iter(|| once(&floor))
    });
    let with_byok = router()
        .layer(byok())
        .layer(CompressionLayer::new())
        .layer(TraceLayer::new_for_http());
    group.bench_function("trace+gzip/byok", |b| {
        b.to_async(&rt).iter(|| once(&with_byok))
    });

    let outside = |router: Router| {
        ServiceBuilder::new()
            .layer(TraceLayer::new_for_http())
            .layer(CompressionLayer::new())
            .service(router)
    };
    let floor = outside(router());
    group.bench_function("trace+gzip/outside/floor", |b| {
        b.to_async(&rt).iter(|| once(&floor))
    });
    let with_byok = outside(router().layer(byok()));
    group.bench_function("trace+gzip/outside/byok", |b| {
        b.to_async(&rt).iter(|| once(&with_byok))
    });
    group.finish();
}

criterion_group!(benches, body);
criterion_main!(benches);
