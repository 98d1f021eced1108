//! A driver for counting instructions per request with callgrind, which is exact and
//! repeatable where wall-clock times on a shared machine are not.
//!
//! `callgrind <variant> <requests>` sends `<requests>` requests (one pre-parsed user
//! header each, polled once with a no-op waker, as in `hit_path`) through one of:
//!
//! - `bare`: the inner service alone;
//! - `prebuilt_arc_floor`: a layer inserting a prebuilt `Arc` into the extensions;
//! - `naive_moka_layer`: a moka `get` of the user's `Arc` per request, then the insert;
//! - `byok_hit`: tower-byok with the user's three keys cached.
//!
//! Only `drive_requests` is counted (`--toggle-collect`), so set-up is left out. Run
//! `bash benches/callgrind.sh`, which prints each variant's instructions per request
//! minus the bare service's. Under `cargo bench` (no variant given) it does nothing.
//!
//! `callgrind byok_miss <n>` instead counts `n` cache misses, as `miss_path` times them:
//! `forget_cached` then `keys_for` of a user with three keys in an in-memory SQLite
//! store (the count includes SQLite's and the decryption's work, the same before and
//! after a cache change; `bash benches/callgrind.sh miss` prints it per miss).

#![allow(missing_docs)]

use std::convert::Infallible;
use std::hint::black_box;

use http::{HeaderName, HeaderValue, Request, Response};
use tower::{service_fn, Service, ServiceBuilder};
use tower_byok::resolve::FromHeader;
use tower_byok::{ByokLayer, Vault};

#[path = "support/hit.rs"]
mod hit;
use hit::{cached_vault, naive_moka_layer, prebuilt_arc_floor, ready_now};

fn request() -> Request<()> {
    const USER: HeaderName = HeaderName::from_static("x-user");
    let mut req = Request::new(());
    req.headers_mut()
        .insert(USER, HeaderValue::from_static("bench-user"));
    req
}

/// The counted loop: `n` requests through `service`.
#[inline(never)]
fn drive_requests<S, B>(service: &mut S, n: u64)
where
    S: Service<Request<()>, Response = Response<B>, Error = Infallible>,
{
    for _ in 0..n {
        black_box(ready_now(service.call(black_box(request()))).ok());
    }
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let Some(variant) = args.first() else {
        return; // `cargo bench` runs every bench target; this one needs a variant
    };
    let n: u64 = args
        .get(1)
        .map_or(100_000, |n| n.parse().expect("a number of requests"));
    let inner = service_fn(|_req: Request<()>| async {
        Ok::<_, Infallible>(Response::new(bytes::Bytes::new()))
    });
    match variant.as_str() {
        "bare" => {
            let mut s = inner;
            run(&mut s, n);
        }
        "prebuilt_arc_floor" => run(&mut prebuilt_arc_floor(inner), n),
        "naive_moka_layer" => run(&mut naive_moka_layer(inner), n),
        "byok_miss" => {
            let (rt, vault) = cached_vault();
            for _ in 0..100 {
                rt.block_on(miss(&vault));
            }
            drive_requests_misses(&rt, &vault, n);
        }
        "byok_hit" => {
            let (rt, vault) = cached_vault();
            let mut s = ServiceBuilder::new()
                .layer(ByokLayer::new(vault, FromHeader::new("x-user")))
                .service(inner);
            // Inside the runtime, as a server would be.
            let _guard = rt.enter();
            run(&mut s, n);
        }
        other => panic!("unknown variant {other:?}"),
    }
}

/// One cache miss: the user forgotten, then loaded.
async fn miss(vault: &Vault) {
    vault.forget_cached("bench-user");
    assert_eq!(vault.keys_for("bench-user").await.expect("load").len(), 3);
}

/// The counted loop of `byok_miss` (its name matches `--toggle-collect`).
#[inline(never)]
fn drive_requests_misses(rt: &tokio::runtime::Runtime, vault: &Vault, n: u64) {
    for _ in 0..n {
        rt.block_on(miss(vault));
    }
}

/// Warms `service` with uncounted requests, then drives `n` counted ones.
fn run<S, B>(service: &mut S, n: u64)
where
    S: Service<Request<()>, Response = Response<B>, Error = Infallible>,
{
    for _ in 0..1_000 {
        black_box(ready_now(service.call(request())).ok());
    }
    drive_requests(service, n);
}
