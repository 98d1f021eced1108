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
//!
//! `callgrind miss_<byok|raw>_<sqlite|postgres> <n>` counts `n` misses as `miss_path`
//! times them, beside its floor: `byok` is `forget_cached` then `keys_for`, `raw` the same
//! rows selected through a plain sqlx pool and opened with the raw crates; SQLite is a
//! file in WAL mode, PostgreSQL the server `BYOK_TEST_POSTGRES_URL` names (client-side
//! instructions only: the server is another process). `bash benches/callgrind.sh miss`
//! prints their ratios.

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
#[path = "support/miss.rs"]
mod miss;

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
        "miss_byok_sqlite" | "miss_raw_sqlite" | "miss_byok_postgres" | "miss_raw_postgres" => {
            misses(variant, n);
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

/// The counted loop of the `miss_*` variants: `n` runs of `one` (its name matches
/// `--toggle-collect`).
#[inline(never)]
fn drive_requests_loads<F, Fut>(rt: &tokio::runtime::Runtime, n: u64, mut one: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    for _ in 0..n {
        rt.block_on(one());
    }
}

/// One of the `miss_*` variants: the vault's miss or the raw floor, on one backend.
fn misses(variant: &str, n: u64) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let (vault, raw) = rt.block_on(async {
        if variant.ends_with("sqlite") {
            let path = dir.path().join("bench.db");
            let store = tower_byok::SqliteStore::open(&path).await.expect("store");
            let vault = Vault::open(store, miss::keyring()).await.expect("vault");
            let options = sqlx::sqlite::SqliteConnectOptions::new()
                .filename(&path)
                .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal);
            let raw = sqlx::sqlite::SqlitePoolOptions::new()
                .connect_with(options)
                .await
                .expect("raw pool");
            (vault, Raw::Sqlite(raw))
        } else {
            postgres().await
        }
    });
    rt.block_on(miss::seed(&vault));
    let byok = || async {
        vault.forget_cached(miss::USER);
        assert_eq!(vault.keys_for(miss::USER).await.expect("load").len(), 3);
    };
    let floor = || async { assert_eq!(miss::raw_open(&raw.select().await), 3) };
    if variant.starts_with("miss_byok") {
        for _ in 0..100 {
            rt.block_on(byok());
        }
        drive_requests_loads(&rt, n, byok);
    } else {
        for _ in 0..100 {
            rt.block_on(floor());
        }
        drive_requests_loads(&rt, n, floor);
    }
}

/// The floor's plain sqlx pool.
enum Raw {
    Sqlite(sqlx::SqlitePool),
    #[cfg(feature = "postgres")]
    Postgres(sqlx::PgPool),
}

impl Raw {
    async fn select(&self) -> Vec<(String, String, Vec<u8>)> {
        let query = sqlx::query_as(miss::SELECT).bind(miss::USER);
        match self {
            Self::Sqlite(pool) => query.fetch_all(pool).await,
            #[cfg(feature = "postgres")]
            Self::Postgres(pool) => {
                sqlx::query_as(miss::SELECT)
                    .bind(miss::USER)
                    .fetch_all(pool)
                    .await
            }
        }
        .expect("select")
    }
}

#[cfg(feature = "postgres")]
async fn postgres() -> (Vault, Raw) {
    let url = std::env::var("BYOK_TEST_POSTGRES_URL").expect("BYOK_TEST_POSTGRES_URL");
    let store = tower_byok::PostgresStore::connect(&url)
        .await
        .expect("store");
    let vault = Vault::open(store, miss::keyring())
        .await
        .expect("vault (a database whose vault uses another master key cannot be reused)");
    let raw = sqlx::postgres::PgPoolOptions::new()
        .connect(&url)
        .await
        .expect("raw pool");
    (vault, Raw::Postgres(raw))
}

#[cfg(not(feature = "postgres"))]
async fn postgres() -> (Vault, Raw) {
    panic!("the PostgreSQL variants need the driver built with --features postgres")
}
