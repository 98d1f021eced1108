//! The layer end to end: a real axum server on loopback, a real HTTP client, real
//! databases. Every test runs on SQLite and on PostgreSQL.
#![cfg(all(feature = "sqlite", feature = "axum"))]
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::Request;
use axum::middleware::{self, Next};
use axum::routing::get;
use axum::{Json, Router};
use bytes::Bytes;
use common::http::Server;
use common::{keyring, Backend, Opts, TestDb};
use http::StatusCode;
use http_body_util::{BodyExt, Full};
use tower_byok::resolve::{FromExtension, FromHeader};
use tower_byok::{ByokLayer, DevEnvFallback, ErrorKind, KeySource, Rejection, UserKeys, Vault};

per_backend!(
    each_user_sees_only_their_own_keys,
    two_thousand_concurrent_requests_never_mix_users,
    a_thousand_concurrent_requests_for_a_cold_user_make_one_load,
    cached_keys_expire_after_the_ttl,
    writes_and_deletes_invalidate_at_once,
    a_load_that_raced_a_write_cannot_restore_old_keys,
    no_user_and_required_user,
    required_providers_answer_428_with_the_missing_ones,
    dev_env_fallback_is_off_unless_turned_on,
    undecryptable_keys_answer_500_and_never_fall_back,
    user_from_an_upstream_auth_extension,
    every_rejection_carries_its_kind_and_takes_a_custom_body,
    an_invalid_user_id_never_reaches_the_store_or_the_cache,
);

// The same tests through PgBouncer, in transaction and in session mode.
crate::behind_poolers!(
    each_user_sees_only_their_own_keys,
    two_thousand_concurrent_requests_never_mix_users,
    a_thousand_concurrent_requests_for_a_cold_user_make_one_load,
    writes_and_deletes_invalidate_at_once,
    required_providers_answer_428_with_the_missing_ones,
    undecryptable_keys_answer_500_and_never_fall_back,
);

/// What the test handler reports: the caller's keys by provider, with their source.
type Seen = BTreeMap<String, (String, String)>;

async fn keys_handler(keys: Option<UserKeys>) -> Result<Json<Seen>, StatusCode> {
    let keys = keys.ok_or(StatusCode::UNAUTHORIZED)?;
    Ok(Json(
        keys.iter()
            .map(|k| {
                (
                    k.provider().to_owned(),
                    (k.expose_secret().to_owned(), format!("{:?}", k.source())),
                )
            })
            .collect(),
    ))
}

async fn strict_handler(_keys: UserKeys) -> &'static str {
    "ok"
}

fn app(layer: ByokLayer<FromHeader>) -> Router {
    Router::new()
        .route("/keys", get(keys_handler))
        .route("/strict", get(strict_handler))
        .layer(layer)
        .route("/unlayered", get(strict_handler))
}

/// What the layer tests ask of the common server.
impl Server {
    /// The secrets the handler saw for `user`, by provider.
    async fn keys(&self, user: &str) -> BTreeMap<String, String> {
        let (status, _, body) = self.get("/keys", Some(user)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let seen: Seen = serde_json::from_str(&body).unwrap();
        seen.into_iter().map(|(p, (s, _))| (p, s)).collect()
    }
}

fn layer(vault: &Vault) -> ByokLayer<FromHeader> {
    ByokLayer::new(vault.clone(), FromHeader::new("x-user"))
}

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(p, s)| ((*p).to_owned(), (*s).to_owned()))
        .collect()
}

async fn each_user_sees_only_their_own_keys(backend: Backend) {
    let db = TestDb::new(backend).await;
    let vault = db.open(keyring()).await.unwrap();
    vault.put("user-a", "openai", "sk-a").await.unwrap();
    vault.put("user-a", "exa", "exa-a").await.unwrap();
    vault.put("user-b", "openai", "sk-b").await.unwrap();
    let server = Server::start(app(layer(&vault))).await;
    for _ in 0..2 {
        // Once from the database, once from the cache.
        assert_eq!(
            server.keys("user-a").await,
            map(&[("exa", "exa-a"), ("openai", "sk-a")])
        );
        assert_eq!(server.keys("user-b").await, map(&[("openai", "sk-b")]));
        assert_eq!(server.keys("user-c").await, map(&[]));
    }
}

async fn two_thousand_concurrent_requests_never_mix_users(backend: Backend) {
    let db = TestDb::new(backend).await;
    let vault = db.open(keyring()).await.unwrap();
    for i in 0..100 {
        vault
            .put(&format!("user-{i}"), "openai", &format!("sk-user-{i}"))
            .await
            .unwrap();
    }
    let server = Arc::new(Server::start(app(layer(&vault))).await);
    // The subject is isolation, not availability: on a busy machine some loads miss
    // their deadline and answer 503, which is counted apart and is no failure.
    let requests: Vec<_> = (0..2000)
        .map(|n| {
            let server = server.clone();
            tokio::spawn(async move {
                let i = n % 100;
                let (status, _, body) = server.get("/keys", Some(&format!("user-{i}"))).await;
                (i, status, body)
            })
        })
        .collect();
    let (mut served, mut wrong, mut unavailable) = (0, 0, 0);
    for request in requests {
        let (i, status, body) = request.await.unwrap();
        match status {
            StatusCode::OK => {
                let seen: Seen = serde_json::from_str(&body).unwrap();
                let own = seen.len() == 1
                    && seen.get("openai").map(|(s, _)| s.as_str())
                        == Some(&*format!("sk-user-{i}"));
                if own {
                    served += 1;
                } else {
                    wrong += 1;
                }
            }
            StatusCode::SERVICE_UNAVAILABLE => {
                assert_eq!(body, r#"{"error":"keys_unavailable"}"#);
                unavailable += 1;
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    eprintln!("2000 concurrent requests from 100 users: {served} served, {wrong} wrong, {unavailable} unavailable (503)");
    assert_eq!(
        wrong, 0,
        "a request was served keys that are not its user's"
    );
    assert_eq!(served + unavailable, 2000);
    // Whatever the burst made unavailable, each user is served its own key afterwards.
    for i in 0..100 {
        assert_eq!(
            server.keys(&format!("user-{i}")).await,
            map(&[("openai", &format!("sk-user-{i}"))])
        );
    }
}

async fn a_thousand_concurrent_requests_for_a_cold_user_make_one_load(backend: Backend) {
    let db = TestDb::new(backend).await;
    // The held load must outlast the arrival of all 1000 requests however slow the
    // machine is (the arrival wait below gives up after 60 s): this test is about single
    // flight, not about the load deadline, which the default 3 s would make it race.
    let opts = Opts {
        load_timeout: Duration::from_secs(120),
        ..Opts::default()
    };
    let (vault, probe) = db.open_probed(keyring(), opts).await;
    vault.put("cold", "openai", "sk-cold").await.unwrap();
    // Count requests as they reach the layer, and hold the first load until all have.
    let arrived = Arc::new(AtomicUsize::new(0));
    let counter = arrived.clone();
    let router = app(layer(&vault)).layer(middleware::from_fn(move |req: Request, next: Next| {
        counter.fetch_add(1, Ordering::SeqCst);
        next.run(req)
    }));
    let server = Arc::new(Server::start(router).await);
    let release = probe.hold_next_load();
    let requests: Vec<_> = (0..1000)
        .map(|_| {
            let server = server.clone();
            tokio::spawn(async move { server.keys("cold").await == map(&[("openai", "sk-cold")]) })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    while arrived.load(Ordering::SeqCst) < 1000 {
        assert!(
            Instant::now() < deadline,
            "only {} requests arrived",
            arrived.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    release.send(()).unwrap();
    let mut right = 0;
    for request in requests {
        right += usize::from(request.await.unwrap());
    }
    assert_eq!(right, 1000);
    assert_eq!(
        probe.loads(),
        1,
        "database loads for 1000 concurrent cold requests"
    );
}

async fn cached_keys_expire_after_the_ttl(backend: Backend) {
    let db = TestDb::new(backend).await;
    let opts = Opts {
        cache_ttl: Duration::from_millis(400),
        ..Opts::default()
    };
    let (vault, probe) = db.open_probed(keyring(), opts).await;
    vault.put("u", "openai", "sk-1").await.unwrap();
    let server = Server::start(app(layer(&vault))).await;
    server.keys("u").await;
    server.keys("u").await;
    assert_eq!(probe.loads(), 1, "the second request is a hit");
    // Another instance changes the key behind this one's back: seen after the TTL.
    let other = db.open(keyring()).await.unwrap();
    other.put("u", "openai", "sk-2").await.unwrap();
    assert_eq!(server.keys("u").await, map(&[("openai", "sk-1")]));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(server.keys("u").await, map(&[("openai", "sk-2")]));
    assert_eq!(probe.loads(), 2);
}

async fn writes_and_deletes_invalidate_at_once(backend: Backend) {
    let db = TestDb::new(backend).await;
    let (vault, probe) = db.open_probed(keyring(), Opts::default()).await;
    vault.put("u", "openai", "sk-1").await.unwrap();
    let server = Server::start(app(layer(&vault))).await;
    assert_eq!(server.keys("u").await, map(&[("openai", "sk-1")]));
    vault.put("u", "openai", "sk-2").await.unwrap();
    assert_eq!(server.keys("u").await, map(&[("openai", "sk-2")]));
    vault.put("u", "exa", "exa-1").await.unwrap();
    assert_eq!(
        server.keys("u").await,
        map(&[("exa", "exa-1"), ("openai", "sk-2")])
    );
    vault.delete("u", "openai").await.unwrap();
    assert_eq!(server.keys("u").await, map(&[("exa", "exa-1")]));
    vault.delete_all("u").await.unwrap();
    assert_eq!(server.keys("u").await, map(&[]));
    assert_eq!(probe.loads(), 5, "each write invalidated the cached entry");
}

async fn a_load_that_raced_a_write_cannot_restore_old_keys(backend: Backend) {
    let db = TestDb::new(backend).await;
    let (vault, probe) = db.open_probed(keyring(), Opts::default()).await;
    vault.put("u", "openai", "sk-old").await.unwrap();
    let server = Arc::new(Server::start(app(layer(&vault))).await);

    // A request misses, and its load reads the old key, then stalls.
    let release = probe.hold_next_load();
    let slow = {
        let server = server.clone();
        tokio::spawn(async move { server.keys("u").await })
    };
    while probe.loads_read() < 1 {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    // The key is replaced meanwhile; a request after the write sees the new key at once.
    vault.put("u", "openai", "sk-new").await.unwrap();
    assert_eq!(server.keys("u").await, map(&[("openai", "sk-new")]));
    // The stale load finishes last. Its request began before the write; whatever it got,
    // it must not put the old key back into the cache.
    release.send(()).unwrap();
    let old = slow.await.unwrap();
    assert_eq!(old, map(&[("openai", "sk-old")]));
    for _ in 0..3 {
        assert_eq!(server.keys("u").await, map(&[("openai", "sk-new")]));
    }
    assert_eq!(probe.loads(), 2);
}

async fn no_user_and_required_user(backend: Backend) {
    let db = TestDb::new(backend).await;
    let vault = db.open(keyring()).await.unwrap();
    vault.put("u", "openai", "sk-1").await.unwrap();

    let server = Server::start(app(layer(&vault))).await;
    // No user: the request passes without keys; the strict extractor rejects with 401.
    let (status, _, _) = server.get("/keys", None).await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "Option<UserKeys> was None"
    );
    let (status, _, _) = server.get("/strict", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _, _) = server.get("/strict", Some("u")).await;
    assert_eq!(status, StatusCode::OK);
    // An over-long id is no user.
    let (status, _, _) = server.get("/strict", Some(&"x".repeat(256))).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // The extractor on a route without the layer: 500 that says so.
    let (status, _, body) = server.get("/unlayered", Some("u")).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(body.contains("not installed"), "{body}");

    let server = Server::start(app(layer(&vault).with_require_user(true))).await;
    let (status, headers, body) = server.get("/keys", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(body, r#"{"error":"unauthenticated"}"#);
    assert_eq!(server.keys("u").await, map(&[("openai", "sk-1")]));
}

async fn required_providers_answer_428_with_the_missing_ones(backend: Backend) {
    let db = TestDb::new(backend).await;
    let vault = db.open(keyring()).await.unwrap();
    vault.put("half", "openai", "sk-1").await.unwrap();
    vault.put("full", "openai", "sk-2").await.unwrap();
    vault.put("full", "exa", "exa-2").await.unwrap();
    let server = Server::start(app(layer(&vault).with_required_providers(["OpenAI", "exa"]))).await;
    for (user, missing) in [("half", vec!["exa"]), ("none", vec!["openai", "exa"])] {
        let (status, _, body) = server.get("/keys", Some(user)).await;
        assert_eq!(status, StatusCode::PRECONDITION_REQUIRED);
        let body: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"error": "missing_provider_keys", "missing": missing})
        );
    }
    assert_eq!(server.keys("full").await.len(), 2);
    // Onboarding completes: the next request passes.
    vault.put("half", "exa", "exa-1").await.unwrap();
    assert_eq!(server.keys("half").await.len(), 2);
}

async fn dev_env_fallback_is_off_unless_turned_on(backend: Backend) {
    let db = TestDb::new(backend).await;
    let vault = db.open(keyring()).await.unwrap();
    vault.put("dev", "openai", "sk-from-db").await.unwrap();
    let var = format!("TOWER_BYOK_TEST_GEMINI_{}", std::process::id());
    let db_var = format!("TOWER_BYOK_TEST_OPENAI_{}", std::process::id());
    std::env::set_var(&var, "gemini-from-env");
    std::env::set_var(&db_var, "sk-from-env");

    // Off by default: the environment is never read.
    let server = Server::start(app(layer(&vault))).await;
    assert_eq!(server.keys("dev").await, map(&[("openai", "sk-from-db")]));

    let fallback = DevEnvFallback::new()
        .provider("gemini", &var)
        .provider("openai", &db_var);
    let server = Server::start(app(layer(&vault).with_dev_env_fallback(fallback))).await;
    let (status, _, body) = server.get("/keys", Some("dev")).await;
    assert_eq!(status, StatusCode::OK);
    let seen: Seen = serde_json::from_str(&body).unwrap();
    // The database key wins; the environment fills in what the database lacks.
    assert_eq!(
        seen["openai"],
        (
            "sk-from-db".to_owned(),
            format!("{:?}", KeySource::Database)
        )
    );
    assert_eq!(
        seen["gemini"],
        (
            "gemini-from-env".to_owned(),
            format!("{:?}", KeySource::Environment)
        )
    );
    std::env::remove_var(&var);
    std::env::remove_var(&db_var);
}

/// Users a and b with an OpenAI key each, b's row then holding a's blob.
async fn a_and_b_holding_a_blob(db: &TestDb) -> Vault {
    let vault = db.open(keyring()).await.unwrap();
    vault.put("a", "openai", "sk-a").await.unwrap();
    vault.put("b", "openai", "sk-b").await.unwrap();
    let a_blob = db.blob("a", "openai").await;
    db.set_blob("b", "openai", &a_blob).await;
    vault
}

async fn undecryptable_keys_answer_500_and_never_fall_back(backend: Backend) {
    let db = TestDb::new(backend).await;
    // b's row holds a's blob: it must fail, never serve a's key, never fall back.
    let vault = a_and_b_holding_a_blob(&db).await;
    let var = format!("TOWER_BYOK_TEST_FALLBACK_{}", std::process::id());
    std::env::set_var(&var, "sk-from-env");
    let fallback = DevEnvFallback::new().provider("openai", &var);
    let server = Server::start(app(layer(&vault).with_dev_env_fallback(fallback))).await;
    let (status, _, body) = server.get("/keys", Some("b")).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(body, r#"{"error":"keys_unavailable"}"#);
    assert!(!body.contains("sk-"));
    assert_eq!(server.keys("a").await, map(&[("openai", "sk-a")]));
    std::env::remove_var(&var);
}

async fn every_rejection_carries_its_kind_and_takes_a_custom_body(backend: Backend) {
    use tower::ServiceExt;
    let db = TestDb::new(backend).await;
    let vault = a_and_b_holding_a_blob(&db).await;
    let base = || {
        layer(&vault)
            .with_require_user(true)
            .with_required_providers(["openai"])
    };
    let cases = [
        (None, StatusCode::UNAUTHORIZED, Rejection::Unauthenticated),
        (
            Some("nobody"),
            StatusCode::PRECONDITION_REQUIRED,
            Rejection::MissingProviders {
                missing: vec!["openai".into()],
            },
        ),
        (
            Some("b"),
            StatusCode::INTERNAL_SERVER_ERROR,
            Rejection::KeysUnavailable(ErrorKind::Decrypt),
        ),
    ];
    let request = |user: Option<&str>| {
        let mut req = http::Request::get("/keys");
        if let Some(user) = user {
            req = req.header("x-user", user);
        }
        req.body(axum::body::Body::empty()).unwrap()
    };
    for (user, status, rejection) in &cases {
        // The default response: the layer's JSON, the rejection in the extensions.
        let res = app(base()).oneshot(request(*user)).await.unwrap();
        assert_eq!(res.status(), *status, "{rejection}");
        assert_eq!(res.extensions().get::<Rejection>(), Some(rejection));
        assert_eq!(
            res.extensions().get::<ErrorKind>().copied(),
            rejection.error_kind()
        );
        let body = res.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, rejection.default_response().into_body());

        // The application's own body, and still the rejection in the extensions.
        let custom = base().with_rejection_response(|r: &Rejection| {
            let mut res = http::Response::new(Bytes::from(format!("app-error: {r}")));
            *res.status_mut() = StatusCode::IM_A_TEAPOT;
            res
        });
        let res = app(custom).oneshot(request(*user)).await.unwrap();
        assert_eq!(res.status(), StatusCode::IM_A_TEAPOT);
        assert_eq!(res.extensions().get::<Rejection>(), Some(rejection));
        let body = res.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, format!("app-error: {rejection}"));
        assert!(!String::from_utf8_lossy(&body).contains("sk-"));
    }
    // The request that passes is untouched by the responder.
    let custom = base().with_rejection_response(|_: &Rejection| unreachable!());
    let res = app(custom).oneshot(request(Some("a"))).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(res.extensions().get::<Rejection>().is_none());
}

#[derive(Clone)]
struct Claims {
    sub: String,
}

async fn user_from_an_upstream_auth_extension(backend: Backend) {
    let db = TestDb::new(backend).await;
    let vault = db.open(keyring()).await.unwrap();
    vault.put("alice", "openai", "sk-alice").await.unwrap();
    let byok = ByokLayer::new(
        vault.clone(),
        FromExtension::new(|c: &Claims| c.sub.as_str()),
    );
    // A toy authentication layer in front: a bearer token becomes claims.
    let auth = middleware::from_fn(|mut req: Request, next: Next| async move {
        let token = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        if token == Some("Bearer alice-token") {
            req.extensions_mut().insert(Claims {
                sub: "alice".to_owned(),
            });
        }
        next.run(req).await
    });
    let router = Router::new()
        .route("/keys", get(keys_handler))
        .layer(byok)
        .layer(auth);
    let server = Server::start(router).await;
    let request = |token: &str| {
        http::Request::get(format!("http://{}/keys", server.addr))
            .header("authorization", token)
            .body(Full::default())
            .unwrap()
    };
    let res = server
        .client
        .request(request("Bearer alice-token"))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert!(String::from_utf8_lossy(&body).contains("sk-alice"));
    let res = server
        .client
        .request(request("Bearer mallory"))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
}

/// A hit is served without validating the id again (only validated ids are ever loaded
/// into the cache), so the check before a load is all that keeps an invalid id out of
/// the store and the cache: each one is no user, and none is ever loaded, not even one
/// that differs from a cached user's id only by the whitespace it must not have.
async fn an_invalid_user_id_never_reaches_the_store_or_the_cache(backend: Backend) {
    use tower::ServiceExt;
    let db = TestDb::new(backend).await;
    let (vault, probe) = db.open_probed(keyring(), Opts::default()).await;
    vault.put("alice", "openai", "sk-alice").await.unwrap();
    let router = Router::new().route("/keys", get(keys_handler)).layer(
        ByokLayer::new(vault, FromExtension::new(|c: &Claims| c.sub.as_str()))
            .with_require_user(true),
    );
    let ask = |sub: String| {
        let router = router.clone();
        async move {
            let mut req = http::Request::get("/keys")
                .body(axum::body::Body::empty())
                .unwrap();
            req.extensions_mut().insert(Claims { sub });
            router.oneshot(req).await.unwrap().status()
        }
    };
    assert_eq!(ask("alice".to_owned()).await, StatusCode::OK);
    assert_eq!(
        probe.loads(),
        1,
        "alice's keys are loaded once, then cached"
    );
    let invalid = [
        " alice".to_owned(),
        "alice ".to_owned(),
        "alice\t".to_owned(),
        "al\u{7}ice".to_owned(),
        "al\u{85}ice".to_owned(),
        "alice\0".to_owned(),
        "a".repeat(256),
    ];
    for _ in 0..2 {
        for sub in &invalid {
            let status = ask(sub.clone()).await;
            assert_eq!(probe.loads(), 1, "{sub:?} reached the store");
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{sub:?}");
        }
    }
    assert_eq!(ask("alice".to_owned()).await, StatusCode::OK);
    assert_eq!(
        probe.loads(),
        1,
        "no invalid id was loaded, so none was cached"
    );
}

/// A resolver that answers with an empty id has found no user.
#[tokio::test]
async fn an_empty_user_id_is_no_user() {
    use tower::ServiceExt;
    let db = TestDb::new(Backend::Sqlite).await;
    let vault = db.open(keyring()).await.unwrap();
    let resolver = tower_byok::resolve::FromFn::new(|_req: &Request| Some(String::new()));
    let router = Router::new()
        .route("/strict", get(strict_handler))
        .layer(ByokLayer::new(vault, resolver));
    let req = http::Request::get("/strict")
        .body(axum::body::Body::empty())
        .unwrap();
    let res = router.oneshot(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
}

/// Back-pressure: while the inner service is not ready, neither is the layer.
#[tokio::test]
async fn readiness_of_the_inner_service_propagates() {
    use tower::{Service, ServiceBuilder, ServiceExt};
    let db = TestDb::new(Backend::Sqlite).await;
    let vault = db.open(keyring()).await.unwrap();
    let (gate_tx, gate_rx) = tokio::sync::watch::channel(false);
    let inner = tower::service_fn(move |_req: http::Request<String>| {
        let mut gate = gate_rx.clone();
        async move {
            gate.wait_for(|open| *open).await.unwrap();
            Ok::<_, std::convert::Infallible>(http::Response::new(Full::<Bytes>::default()))
        }
    });
    let mut service = ServiceBuilder::new()
        .layer(ByokLayer::new(vault, FromHeader::new("x-user")))
        .concurrency_limit(1)
        .service(inner);
    let first = service
        .ready()
        .await
        .unwrap()
        .call(http::Request::new(String::new()));
    let first = tokio::spawn(first);
    let pending = tokio::time::timeout(Duration::from_millis(200), service.ready()).await;
    assert!(
        pending.is_err(),
        "the layer reported ready while its inner service was not"
    );
    gate_tx.send(true).unwrap();
    first.await.unwrap().unwrap();
    tokio::time::timeout(Duration::from_secs(5), service.ready())
        .await
        .expect("ready once the inner service is")
        .unwrap();
}

/// The database goes away mid-run (its connections cut at a proxy in front of the real
/// server): requests get 503 with `Retry-After` within the load deadline, never keys,
/// and succeed again once it is back, without restarting the app.
#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outage_answers_503_then_recovers() {
    use tower_byok::PostgresStore;
    let db = TestDb::new(Backend::Postgres).await;
    let target = db.pg_options();
    let proxy =
        common::proxy::Proxy::start(format!("{}:{}", target.get_host(), target.get_port())).await;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(target.host("127.0.0.1").port(proxy.port()))
        .await
        .unwrap();
    let vault = Vault::builder(PostgresStore::from_pool(pool), keyring())
        .load_timeout(Duration::from_millis(800))
        .cache_ttl(Duration::from_millis(1))
        .open()
        .await
        .unwrap();
    vault.put("u", "openai", "sk-1").await.unwrap();
    let server = Server::start(app(layer(&vault))).await;
    assert_eq!(server.keys("u").await, map(&[("openai", "sk-1")]));

    proxy.cut();
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(5)).await;
        let started = Instant::now();
        let (status, headers, body) = server.get("/keys", Some("u")).await;
        let took = started.elapsed();
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert_eq!(headers["retry-after"], "1");
        assert_eq!(body, r#"{"error":"keys_unavailable"}"#);
        assert!(
            took < Duration::from_millis(800 + 700),
            "took {took:?}, over the load deadline"
        );
    }

    proxy.restore();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, _, body) = server.get("/keys", Some("u")).await;
        if status == StatusCode::OK {
            assert!(body.contains("sk-1"));
            break;
        }
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(Instant::now() < deadline, "never recovered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
