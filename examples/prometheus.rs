//! tower-byok's metrics on a Prometheus `/metrics` route of an axum app.
//!
//! ```text
//! cargo run --example prometheus --features metrics
//! curl localhost:3002/chat -H 'x-authenticated-user: alice'   # 200, then served from the cache
//! curl localhost:3002/chat -H 'x-authenticated-user: bob'     # 428: bob has no openai key
//! curl localhost:3002/chat                                     # 401: no user
//! curl localhost:3002/metrics
//! ```
//!
//! With the crate's `metrics` feature, the cache and the layer report through the
//! [`metrics`](https://docs.rs/metrics) facade to whatever recorder is installed; here
//! that is `metrics-exporter-prometheus`, without its own HTTP listener, rendered by an
//! axum route. The README's "Metrics" section lists every series. The vault is an
//! in-memory SQLite database with a throwaway master key and one demo key for `alice`.
#![allow(clippy::print_stdout)]

use std::time::Duration;

use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tower_byok::resolve::FromHeader;
use tower_byok::{ByokLayer, Keyring, MasterKey, SqliteStore, UserKeys, Vault};

/// Load durations in seconds: a cached SQLite load takes well under a millisecond, a
/// remote PostgreSQL a few; the top buckets catch loads near the default 3 s timeout.
const LOAD_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// Installs the Prometheus recorder as the global `metrics` recorder. Call it first,
/// before building the vault, so the vault's metric descriptions reach it.
///
/// # Panics
///
/// When another recorder is installed already.
pub(crate) fn install_recorder() -> PrometheusHandle {
    let handle = PrometheusBuilder::new()
        // Buckets make the load duration a Prometheus histogram (aggregatable across
        // instances) instead of a per-instance summary.
        .set_buckets_for_metric(
            Matcher::Full("tower_byok_load_duration_seconds".to_owned()),
            LOAD_BUCKETS,
        )
        .expect("the bucket list is not empty")
        .install_recorder()
        .expect("no other metrics recorder is installed");
    // Without the exporter's own listener, its upkeep (draining histogram samples
    // between scrapes) is the application's to run.
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(5));
        loop {
            every.tick().await;
            upkeep.run_upkeep();
        }
    });
    handle
}

/// The demo vault: in memory, one key for `alice`.
///
/// # Errors
///
/// When SQLite cannot be opened or the key cannot be stored.
pub(crate) async fn demo_vault() -> tower_byok::Result<Vault> {
    // Demo only: a throwaway key and database. Production: Keyring::from_env and a file
    // or PostgreSQL (see examples/quickstart.rs).
    let keyring = Keyring::new(MasterKey::generate("demo")?);
    let vault = Vault::open(SqliteStore::in_memory().await?, keyring).await?;
    vault.put("alice", "openai", "sk-alice-demo-0001").await?;
    Ok(vault)
}

/// The app: `/chat` behind the layer, `/metrics` beside it (a scrape has no user).
pub(crate) fn app(vault: Vault, metrics: PrometheusHandle) -> Router {
    // `FromHeader` trusts the header blindly: use it ONLY behind a gateway that
    // authenticates the user, strips any such header the client sent, and sets its own.
    let byok = ByokLayer::new(vault, FromHeader::new("x-authenticated-user"))
        .with_require_user(true)
        .with_required_providers(["openai"]);
    Router::new()
        .route("/chat", get(chat))
        .layer(byok)
        // Added after `.layer`, so outside it. Expose it to the Prometheus server
        // only: the figures say how busy the service is.
        .route(
            "/metrics",
            get(move || std::future::ready(metrics.render())),
        )
}

/// A handler that would call the provider with the caller's own key.
async fn chat(keys: UserKeys) -> String {
    // `with_required_providers` answers 428 before a user without one gets here.
    keys.get("openai").map_or_else(String::new, |key| {
        format!("would call openai with {}\n", key.masked())
    })
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt().init();
    let metrics = install_recorder();
    let vault = demo_vault().await?;

    let port = std::env::var("PORT").unwrap_or_else(|_| "3002".to_owned());
    let addr = format!("127.0.0.1:{port}");
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("tower-byok with Prometheus metrics, listening on http://{addr}\n");
    println!("  curl localhost:{port}/chat -H 'x-authenticated-user: alice'");
    println!("  curl localhost:{port}/chat -H 'x-authenticated-user: bob'");
    println!("  curl localhost:{port}/metrics");
    axum::serve(listener, app(vault, metrics)).await?;
    Ok(())
}
