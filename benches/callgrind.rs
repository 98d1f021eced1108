//! A driver for counting instructions per request with callgrind, which is exact and
//! repeatable where wall-clock times on a shared machine are not.
//!
//! `callgrind <variant> <requests>` sends `<requests>` requests (one pre-parsed user
//! header each, polled once with a no-op waker, as in `hit_path`) through one of:
//!
//! - `bare`: the inner service alone;
//! - `bare_team`: the same with a member's request (two headers), the floor of the team
//!   variants;
//! - `prebuilt_arc_floor`: a layer inserting a prebuilt `Arc` into the extensions;
//! - `naive_moka_layer`: a moka `get` of the user's `Arc` per request, then the insert;
//! - `byok_hit`: tower-byok with the user's three keys cached;
//! - `byok_team_hit`: tower-byok for a member of a team (`x-team`), acting for it, with
//!   no key of their own: the team's three keys served, the member's (empty) and the
//!   team's entries both cached;
//! - `byok_team_mixed_hit`: the same member holding one key of their own, the team the
//!   other two: the chain merges the two sets.
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
//!
//! `callgrind axum_<bare|byok> <n>` serves `n` requests through an axum server on
//! loopback, as `benches/e2e` does (`bare`: a handler that reads nothing; `byok`: the
//! same route behind `ByokLayer`, its handler extracting `UserKeys`, every request a
//! hit; `floor`: that handler behind a `MapRequestLayer` inserting prebuilt keys), sent by
//! a client in a child process (`callgrind client <n>`), which valgrind does not follow:
//! only the server's instructions are counted. `bash benches/callgrind.sh server`
//! counts `n` and `2n` requests of each and prints the difference per request, which
//! leaves out start-up, the connection and shut-down.

#![allow(missing_docs)]

use std::convert::Infallible;
use std::hint::black_box;

use http::{HeaderName, HeaderValue, Request, Response};
use tower::{service_fn, Service, ServiceBuilder};
use tower_byok::resolve::FromHeader;
use tower_byok::{ByokLayer, Owner, Vault};

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

/// A member's request: `request()` acting for `bench-team`, both headers pre-parsed.
fn team_request() -> Request<()> {
    const USER: HeaderName = HeaderName::from_static("x-user");
    const TEAM: HeaderName = HeaderName::from_static("x-team");
    let mut req = Request::new(());
    let headers = req.headers_mut();
    headers.insert(USER, HeaderValue::from_static("bench-member"));
    headers.insert(TEAM, HeaderValue::from_static("bench-team"));
    req
}

/// The counted loop: `n` requests made by `make` through `service`.
#[inline(never)]
fn drive_requests<S, B, M>(service: &mut S, n: u64, make: M)
where
    S: Service<Request<()>, Response = Response<B>, Error = Infallible>,
    M: Fn() -> Request<()>,
{
    for _ in 0..n {
        black_box(ready_now(service.call(black_box(make()))).ok());
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
        "bare_team" => {
            let mut s = inner;
            run_with(&mut s, n, team_request);
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
        "byok_team_hit" | "byok_team_mixed_hit" => {
            let (rt, vault) = cached_vault();
            rt.block_on(async {
                let team = Owner::team("bench-team");
                if variant == "byok_team_mixed_hit" {
                    let own = "sk-proj-member-0001";
                    vault.put("bench-member", "openai", own).await.expect("put");
                }
                for (provider, secret) in [
                    ("openai", "sk-proj-team-0001"),
                    ("gemini", "AIza-team-0002"),
                    ("exa", "exa-team-0003"),
                ] {
                    vault.put_for(team, provider, secret).await.expect("put");
                }
                let keys = vault.keys_for_member("bench-member", Some("bench-team"));
                assert_eq!(keys.await.expect("warm the caches").len(), 3);
            });
            let resolver = FromHeader::new("x-user").with_team_header("x-team");
            let mut s = ServiceBuilder::new()
                .layer(ByokLayer::new(vault, resolver))
                .service(inner);
            let _guard = rt.enter();
            run_with(&mut s, n, team_request);
        }
        #[cfg(feature = "axum")]
        "axum_bare" | "axum_floor" | "axum_byok" => axum_server(variant, n),
        #[cfg(feature = "axum")]
        "client" => axum_client(n),
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
    run_with(service, n, request);
}

/// [`run`] with the requests `make` makes.
fn run_with<S, B, M>(service: &mut S, n: u64, make: M)
where
    S: Service<Request<()>, Response = Response<B>, Error = Infallible>,
    M: Fn() -> Request<()>,
{
    for _ in 0..1_000 {
        black_box(ready_now(service.call(make())).ok());
    }
    drive_requests(service, n, make);
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

/// The server of the `axum_*` variants: the app with or without the layer, serving the
/// client process until it exits.
#[cfg(feature = "axum")]
fn axum_server(variant: &str, n: u64) {
    use axum::routing::get;
    use axum::Router;
    use tower_byok::{ProviderKey, UserKeys};

    let (rt, vault) = cached_vault();
    let with_keys = |keys: UserKeys| async move {
        if keys.len() == 3 {
            "3"
        } else {
            "?"
        }
    };
    let app = match variant {
        "axum_byok" => Router::new()
            .route("/", get(with_keys))
            .layer(ByokLayer::new(vault, FromHeader::new("x-user"))),
        "axum_floor" => {
            let prebuilt: UserKeys = [("openai", "sk"), ("gemini", "AIza"), ("exa", "exa")]
                .into_iter()
                .map(|(p, s)| ProviderKey::from_secret(p, s).expect("key"))
                .collect();
            Router::new()
                .route("/", get(with_keys))
                .layer(tower::util::MapRequestLayer::new(
                    move |mut req: axum::extract::Request| {
                        req.extensions_mut().insert(prebuilt.clone());
                        req
                    },
                ))
        }
        _ => Router::new().route("/", get(|| async { "3" })),
    };
    let _guard = rt.enter();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let client = tokio::process::Command::new(std::env::current_exe().expect("exe"))
        .args(["client", &n.to_string()])
        .env(SERVER, addr.to_string())
        .spawn()
        .expect("client");
    drive_requests_server(&rt, listener, app, client);
}

#[cfg(feature = "axum")]
const SERVER: &str = "BYOK_CALLGRIND_SERVER";

/// The counted part of the `axum_*` variants (its name matches `--toggle-collect`).
#[cfg(feature = "axum")]
#[inline(never)]
fn drive_requests_server(
    rt: &tokio::runtime::Runtime,
    listener: tokio::net::TcpListener,
    app: axum::Router,
    mut client: tokio::process::Child,
) {
    rt.block_on(async move {
        let done = async move {
            let status = client.wait().await.expect("client");
            assert!(status.success(), "the client failed: {status}");
        };
        axum::serve(listener, app)
            .with_graceful_shutdown(done)
            .await
            .expect("serve");
    });
}

/// The client process: `n` requests for `bench-user` on one keep-alive connection, each
/// answered `200` with body `3`.
#[cfg(feature = "axum")]
fn axum_client(n: u64) {
    use http_body_util::{BodyExt, Empty};

    let addr = std::env::var(SERVER).expect("BYOK_CALLGRIND_SERVER");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let stream = tokio::net::TcpStream::connect(&addr)
            .await
            .expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .expect("handshake");
        tokio::spawn(connection);
        for _ in 0..n {
            sender.ready().await.expect("ready");
            let req = Request::get("/")
                .header(http::header::HOST, "127.0.0.1")
                .header("x-user", "bench-user")
                .body(Empty::<bytes::Bytes>::new())
                .expect("request");
            let res = sender.send_request(req).await.expect("response");
            assert_eq!(res.status(), http::StatusCode::OK);
            let body = res.into_body().collect().await.expect("body").to_bytes();
            assert_eq!(body, "3");
        }
    });
}
