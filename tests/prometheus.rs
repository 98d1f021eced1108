//! `examples/prometheus.rs` end to end: its app served on loopback, requests from two
//! users and one without, then a real scrape of `/metrics` over HTTP, which must hold
//! the crate's series with the counts those requests made, and no user id.
#![allow(clippy::unwrap_used)]

mod common;

#[path = "../examples/prometheus.rs"]
#[allow(dead_code)]
mod example;

use common::http::Server;
use http::StatusCode;

async fn get(server: &Server, path: &str, user: Option<&str>) -> (StatusCode, String) {
    let (status, _, body) = server.get_as(path, "x-authenticated-user", user).await;
    (status, body)
}

/// The value of one series in a Prometheus text scrape, by its exact name and labels.
fn value(scrape: &str, series: &str) -> Option<f64> {
    scrape.lines().find_map(|line| {
        let rest = line.strip_prefix(series)?.strip_prefix(' ')?;
        rest.trim().parse().ok()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scrape_shows_the_cache_and_the_layer() {
    let metrics = example::install_recorder();
    let vault = example::demo_vault().await.unwrap();
    let server = Server::start(example::app(vault, metrics)).await;

    let (status, body) = get(&server, "/chat", Some("alice")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.starts_with("would call openai with"), "{body}");
    assert_eq!(get(&server, "/chat", Some("alice")).await.0, StatusCode::OK);
    let bob = get(&server, "/chat", Some("bob")).await.0;
    assert_eq!(bob, StatusCode::PRECONDITION_REQUIRED);
    assert_eq!(
        get(&server, "/chat", None).await.0,
        StatusCode::UNAUTHORIZED
    );

    let (status, scrape) = get(&server, "/metrics", None).await;
    assert_eq!(status, StatusCode::OK);
    let expect = [
        // alice twice (a miss, then a hit), bob once (a miss).
        ("tower_byok_cache_hits_total", 1.0),
        ("tower_byok_cache_misses_total", 2.0),
        ("tower_byok_loads_total", 2.0),
        (
            r#"tower_byok_load_duration_seconds_count{outcome="ok"}"#,
            2.0,
        ),
        (
            r#"tower_byok_load_duration_seconds_bucket{outcome="ok",le="+Inf"}"#,
            2.0,
        ),
        // The demo vault's `put` for alice.
        (
            r#"tower_byok_invalidations_total{source="local",scope="user"}"#,
            1.0,
        ),
        (r#"tower_byok_rejections_total{status="428"}"#, 1.0),
        (r#"tower_byok_rejections_total{status="401"}"#, 1.0),
    ];
    for (series, expected) in expect {
        assert_eq!(
            value(&scrape, series),
            Some(expected),
            "{series} in:\n{scrape}"
        );
    }
    for line in [
        "# TYPE tower_byok_load_duration_seconds histogram",
        "# HELP tower_byok_cache_hits_total Key lookups served from the cache.",
    ] {
        assert!(scrape.lines().any(|l| l == line), "{line} in:\n{scrape}");
    }
    assert!(!scrape.contains("load_errors"), "no load failed:\n{scrape}");
    for user in ["alice", "bob"] {
        assert!(!scrape.contains(user), "{user} in:\n{scrape}");
    }
}
