//! The layer composed with tower-http's `TraceLayer` and `CompressionLayer` under axum,
//! over a real loopback connection, and the response body types it passes through.
#![cfg(all(feature = "sqlite", feature = "axum"))]
#![allow(clippy::unwrap_used)]

mod common;

use std::convert::Infallible;
use std::io::Read;

use axum::body::Body;
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use common::http::Server;
use common::{keyring, Backend, TestDb};
use http::{header, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tower::{service_fn, Layer, Service, ServiceBuilder, ServiceExt};
use tower_byok::resolve::FromHeader;
use tower_byok::{ByokBody, ByokLayer, Rejection, UserKeys, Vault};
use tower_http::compression::CompressionLayer;
use tower_http::trace::TraceLayer;

/// Long enough for `CompressionLayer`'s default 32-byte minimum.
const PADDING: &str = "................................................................";

async fn vault() -> (TestDb, Vault) {
    let db = TestDb::new(Backend::Sqlite).await;
    let vault = db.open(keyring()).await.unwrap();
    vault
        .put("alice", "openai", "sk-alice-0123456789")
        .await
        .unwrap();
    vault
        .put("bob", "openai", "sk-bob-0123456789")
        .await
        .unwrap();
    vault
        .put("carol", "exa", "exa-carol-0123456789")
        .await
        .unwrap();
    (db, vault)
}

/// `GET /` as `user`, asking for gzip: status, `Content-Encoding`, and the decoded body.
async fn get_gzip(server: &Server, user: &str) -> (StatusCode, Option<String>, String) {
    let req = Request::get(format!("http://{}/", server.addr))
        .header("x-user", user)
        .header(header::ACCEPT_ENCODING, "gzip")
        .body(Full::default())
        .unwrap();
    let res = server.client.request(req).await.unwrap();
    let (parts, body) = res.into_parts();
    let raw = body.collect().await.unwrap().to_bytes();
    let encoding = parts
        .headers
        .get(header::CONTENT_ENCODING)
        .map(|v| v.to_str().unwrap().to_owned());
    let mut text = String::new();
    match encoding.as_deref() {
        Some("gzip") => {
            flate2::read::GzDecoder::new(&raw[..])
                .read_to_string(&mut text)
                .unwrap();
        }
        _ => text = String::from_utf8(raw.to_vec()).unwrap(),
    }
    (parts.status, encoding, text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_and_compression_around_the_layer_under_axum() {
    let (_db, vault) = vault().await;
    let router = Router::new()
        .route(
            "/",
            get(|keys: UserKeys| async move {
                let key = keys.get("openai").unwrap().expose_secret().to_owned();
                format!("{key}{PADDING}")
            }),
        )
        .layer(ByokLayer::new(vault, FromHeader::new("x-user")).with_required_providers(["openai"]))
        .layer(CompressionLayer::new())
        .layer(TraceLayer::new_for_http());
    let server = Server::start(router).await;

    for (user, secret) in [
        ("alice", "sk-alice-0123456789"),
        ("bob", "sk-bob-0123456789"),
    ] {
        let (status, encoding, body) = get_gzip(&server, user).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(encoding.as_deref(), Some("gzip"), "{user}'s response");
        assert_eq!(body, format!("{secret}{PADDING}"));
    }

    // The layer's own response goes through the same layers, its JSON intact.
    let (status, encoding, body) = get_gzip(&server, "carol").await;
    assert_eq!(status, StatusCode::PRECONDITION_REQUIRED);
    assert_eq!(encoding.as_deref(), Some("gzip"));
    assert_eq!(
        body,
        r#"{"error":"missing_provider_keys","missing":["openai"]}"#
    );
}

/// `CompressionLayer` inside the layer, in one `ServiceBuilder`: its `CompressionBody`
/// cannot hold the layer's own responses, so the application wraps it in `ByokBody`
/// (no box), and a custom rejection body goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_layer_outside_tower_http_layers_in_one_service_builder() {
    let (_db, vault) = vault().await;
    let custom = |rejection: &Rejection| {
        let mut response = rejection.default_response();
        *response.body_mut() = format!("custom {}{PADDING}", rejection.status().as_u16()).into();
        response
    };
    let router = Router::new()
        .route(
            "/",
            get(|keys: UserKeys| async move {
                let key = keys.get("openai").unwrap().expose_secret().to_owned();
                format!("{key}{PADDING}")
            }),
        )
        .layer(
            ServiceBuilder::new()
                .layer(TraceLayer::new_for_http())
                .layer(
                    ByokLayer::new(vault, FromHeader::new("x-user"))
                        .with_required_providers(["openai"])
                        .with_rejection_response(custom),
                )
                .map_response(|res: Response<_>| res.map(ByokBody::new))
                .layer(CompressionLayer::new()),
        );
    let server = Server::start(router).await;

    let (status, encoding, body) = get_gzip(&server, "alice").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(encoding.as_deref(), Some("gzip"));
    assert_eq!(body, format!("sk-alice-0123456789{PADDING}"));

    // The layer's own response is made outside `CompressionLayer`: not compressed.
    let (status, encoding, body) = get_gzip(&server, "carol").await;
    assert_eq!(status, StatusCode::PRECONDITION_REQUIRED);
    assert_eq!(encoding, None);
    assert_eq!(body, format!("custom 428{PADDING}"));
}

/// Holds only when `S` answers with exactly the body type `B`.
fn answers_with<S, B>(_: &S)
where
    S: Service<Request<Body>, Response = Response<B>>,
{
}

/// The layer leaves a body type that can hold its own responses alone: axum's `Body`
/// stays `Body` (so axum does not box it again) and `Full<Bytes>` stays `Full<Bytes>`.
#[tokio::test]
async fn the_response_body_type_passes_through_unchanged() {
    let (_db, vault) = vault().await;
    let layer = ByokLayer::new(vault, FromHeader::new("x-user")).with_require_user(true);

    let router: Router = Router::new().route("/", get(|| async { "hello" }));
    let axum_service = layer.layer(router);
    answers_with::<_, Body>(&axum_service);

    let full_service = layer.layer(service_fn(|_req: Request<Body>| async {
        Ok::<_, Infallible>(Response::new(Full::<Bytes>::from("hello")))
    }));
    answers_with::<_, Full<Bytes>>(&full_service);

    // Both still answer the layer's own responses with its JSON.
    let request = || Request::get("/").body(Body::empty()).unwrap();
    let res = axum_service.oneshot(request()).await.unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], br#"{"error":"unauthenticated"}"#);
    let res = full_service.oneshot(request()).await.unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], br#"{"error":"unauthenticated"}"#);
}

/// A body type that cannot hold the layer's responses (here `String`, which has no
/// `From<Bytes>`) is wrapped in `ByokBody` by the application.
#[tokio::test]
async fn other_body_types_go_through_byok_body() {
    let (_db, vault) = vault().await;
    let service = ServiceBuilder::new()
        .layer(ByokLayer::new(vault, FromHeader::new("x-user")).with_require_user(true))
        .map_response(|res: Response<String>| res.map(ByokBody::new))
        .service(service_fn(|req: Request<Body>| async move {
            let keys = req.extensions().get::<UserKeys>().unwrap();
            let secret = keys.get("openai").unwrap().expose_secret().to_owned();
            Ok::<_, Infallible>(Response::new(secret))
        }));
    answers_with::<_, ByokBody<String>>(&service);

    let req = Request::get("/")
        .header("x-user", "bob")
        .body(Body::empty())
        .unwrap();
    let res = service.clone().oneshot(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"sk-bob-0123456789");

    let req = Request::get("/").body(Body::empty()).unwrap();
    let res = service.oneshot(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], br#"{"error":"unauthenticated"}"#);
}
