//! The same layer on plain hyper 1 and `tower::ServiceBuilder`, without axum.
//!
//! ```text
//! cargo run --example hyper
//! curl localhost:3001 -H 'x-authenticated-user: alice'   # alice's providers, masked
//! curl localhost:3001 -H 'x-authenticated-user: bob'     # bob has none
//! curl localhost:3001                                     # 401: no user
//! ```
//!
//! The user comes from the `x-authenticated-user` header, which is only acceptable behind
//! a trusted hop (see below). The vault is an in-memory SQLite database with a freshly
//! generated master key, so every run starts over with one demo key stored for `alice`.
#![allow(clippy::print_stdout)]

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use serde_json::json;
use tower::{service_fn, ServiceBuilder};
use tower_byok::resolve::FromHeader;
use tower_byok::{ByokLayer, Keyring, MasterKey, SqliteStore, UserKeys, Vault};

/// The application: reads the keys the layer put into the request's extensions.
async fn handle(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let (status, body) = match req.extensions().get::<UserKeys>() {
        Some(keys) => {
            let providers: Vec<_> = keys
                .iter()
                .map(|key| json!({ "provider": key.provider(), "masked": key.masked() }))
                .collect();
            (StatusCode::OK, json!({ "providers": providers }))
        }
        // With `with_require_user(true)` the layer answers 401 itself, so no keys here
        // means the layer is not in front of this service: a set-up bug.
        None => (
            StatusCode::INTERNAL_SERVER_ERROR,
            json!({ "error": "ByokLayer is not installed" }),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(response)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt().init();

    // Demo only: a throwaway key and database. Production: Keyring::from_env and a file or
    // PostgreSQL (see examples/quickstart.rs).
    let keyring = Keyring::new(MasterKey::generate("demo")?);
    let vault = Vault::open(SqliteStore::in_memory().await?, keyring).await?;
    vault.put("alice", "openai", "sk-alice-demo-0001").await?;

    // `FromHeader` trusts the header blindly: use it ONLY behind a gateway that
    // authenticates the user, strips any such header the client sent, and sets its own.
    // Anything reachable by clients directly should use `FromExtension` behind real auth.
    // `with_require_user(true)`: a request without the header gets 401 from the layer.
    let layer =
        ByokLayer::new(vault, FromHeader::new("x-authenticated-user")).with_require_user(true);
    let service = ServiceBuilder::new()
        .layer(layer)
        .service(service_fn(handle));

    let port = std::env::var("PORT").unwrap_or_else(|_| "3001".to_owned());
    let addr = format!("127.0.0.1:{port}");
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("tower-byok on plain hyper, listening on http://{addr}\n");
    println!("  curl localhost:{port} -H 'x-authenticated-user: alice'");
    println!("  curl localhost:{port} -H 'x-authenticated-user: bob'");
    println!("  curl localhost:{port}");

    loop {
        let (stream, _) = listener.accept().await?;
        // The layer answers in the handler's body type, `Full<Bytes>`, its own
        // responses included.
        let service = TowerToHyperService::new(service.clone());
        tokio::spawn(async move {
            let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                tracing::warn!(error = %e, "connection error");
            }
        });
    }
}
