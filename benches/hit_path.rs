//! The request path on a cache hit, beside its floors, in one run:
//!
//! - `bare`: the inner service alone;
//! - `prebuilt_arc_floor`: a minimal layer that inserts a prebuilt `Arc` into the
//!   request extensions, the least any per-user layer can cost;
//! - `byok_hit`: tower-byok with the user's three keys cached;
//! - `naive_moka_layer`: a hand-written layer doing what a first attempt would: a moka
//!   lookup of the user's `Arc` per request, then the insert;
//! - `byok_no_user`: tower-byok on a request with no user (the same request with its
//!   user header renamed), beside `bare_no_user`: the bare service on that request.
//!
//! Run: `cargo bench --bench hit_path`. On a hit every future is ready at once, so each
//! request is polled once with a no-op waker: no runtime in the timed loop.

// `criterion_group!` expands to an undocumented `pub fn`.
#![allow(missing_docs)]

use std::convert::Infallible;
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use http::{HeaderName, HeaderValue, Request, Response};
use tower::{service_fn, Service, ServiceBuilder};
use tower_byok::resolve::FromHeader;
use tower_byok::ByokLayer;

#[path = "support/hit.rs"]
mod hit;
use hit::{cached_vault, naive_moka_layer, prebuilt_arc_floor, ready_now};

/// A request with one pre-parsed header: the user's, or another one, so both variants
/// cost the same to build.
fn request(user: bool) -> Request<()> {
    const USER: HeaderName = HeaderName::from_static("x-user");
    const OTHER: HeaderName = HeaderName::from_static("x-other");
    let mut req = Request::new(());
    let name = if user { USER } else { OTHER };
    req.headers_mut()
        .insert(name, HeaderValue::from_static("bench-user"));
    req
}

fn hit_path(c: &mut Criterion) {
    // The runtime lives as long as the vault, as it did when it opened it.
    let (_rt, vault) = cached_vault();
    let inner = service_fn(|_req: Request<()>| async {
        Ok::<_, Infallible>(Response::new(bytes::Bytes::new()))
    });

    let mut group = c.benchmark_group("hit_path");
    let mut bare = inner;
    group.bench_function("bare_no_user", |b| {
        b.iter(|| ready_now(bare.call(black_box(request(false)))))
    });
    group.bench_function("bare", |b| {
        b.iter(|| ready_now(bare.call(black_box(request(true)))))
    });

    let mut floor = prebuilt_arc_floor(inner);
    group.bench_function("prebuilt_arc_floor", |b| {
        b.iter(|| ready_now(floor.call(black_box(request(true)))))
    });

    let mut naive = naive_moka_layer(inner);
    group.bench_function("naive_moka_layer", |b| {
        b.iter(|| ready_now(naive.call(black_box(request(true)))))
    });

    let mut byok = ServiceBuilder::new()
        .layer(ByokLayer::new(vault, FromHeader::new("x-user")))
        .service(inner);
    group.bench_function("byok_hit", |b| {
        b.iter(|| ready_now(byok.call(black_box(request(true)))))
    });
    group.bench_function("byok_no_user", |b| {
        b.iter(|| ready_now(byok.call(black_box(request(false)))))
    });
    group.finish();
}

criterion_group!(benches, hit_path);
criterion_main!(benches);
