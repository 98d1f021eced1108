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
use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use criterion::{criterion_group, criterion_main, Criterion};
use http::{HeaderName, HeaderValue, Request, Response};
use tower::{service_fn, Service, ServiceBuilder};
use tower_byok::resolve::FromHeader;
use tower_byok::{ByokLayer, Keyring, MasterKey, SqliteStore, Vault};

/// Polls a future that must be ready at once.
fn ready_now<F: Future>(future: F) -> F::Output {
    match pin!(future).poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("the benchmarked path is not ready at once"),
    }
}

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
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let vault = rt.block_on(async {
        let keyring = Keyring::new(MasterKey::generate("k1").expect("key"));
        // A TTL longer than the whole run: every `byok_hit` request must be a hit.
        let vault = Vault::builder(SqliteStore::in_memory().await.expect("store"), keyring)
            .cache_ttl(std::time::Duration::from_secs(3600))
            .open()
            .await
            .expect("vault");
        for (provider, secret) in [
            ("openai", "sk-proj-bench-0001"),
            ("gemini", "AIza-bench-0002"),
            ("exa", "exa-bench-0003"),
        ] {
            vault
                .put("bench-user", provider, secret)
                .await
                .expect("put");
        }
        vault.keys_for("bench-user").await.expect("warm the cache");
        vault
    });
    let inner = service_fn(|_req: Request<()>| async { Ok::<_, Infallible>(Response::new(())) });

    let mut group = c.benchmark_group("hit_path");
    let mut bare = inner;
    group.bench_function("bare_no_user", |b| {
        b.iter(|| ready_now(bare.call(black_box(request(false)))))
    });
    group.bench_function("bare", |b| {
        b.iter(|| ready_now(bare.call(black_box(request(true)))))
    });

    let prebuilt = Arc::new(vec![("openai", "sk"), ("gemini", "AIza"), ("exa", "exa")]);
    let mut floor = ServiceBuilder::new()
        .map_request(move |mut req: Request<()>| {
            req.extensions_mut().insert(prebuilt.clone());
            req
        })
        .service(inner);
    group.bench_function("prebuilt_arc_floor", |b| {
        b.iter(|| ready_now(floor.call(black_box(request(true)))))
    });

    let moka: moka::sync::Cache<String, Arc<Vec<(&str, &str)>>> = moka::sync::Cache::builder()
        .time_to_live(std::time::Duration::from_secs(30))
        .max_capacity(100_000)
        .build();
    moka.insert(
        "bench-user".to_owned(),
        Arc::new(vec![("openai", "sk"), ("gemini", "AIza"), ("exa", "exa")]),
    );
    let mut naive = ServiceBuilder::new()
        .map_request(move |mut req: Request<()>| {
            let user = req
                .headers()
                .get("x-user")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            if let Some(keys) = user.and_then(|u| moka.get(&u)) {
                req.extensions_mut().insert(keys);
            }
            req
        })
        .service(inner);
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
