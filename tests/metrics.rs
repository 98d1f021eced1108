//! The metrics the crate emits (feature `metrics`) are the ones the README's "Metrics"
//! table documents: names, types, units, label keys and label values. A debugging
//! recorder captures what a real layer on a real SQLite database emits while it serves
//! a hit, misses, a load error of each kind a database makes, a stale answer,
//! invalidations from both sources and every rejection; the test then compares that
//! with the table parsed from the README, so neither can change without the other.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future as _;
use std::task::Poll;
use std::time::{Duration, Instant};

use axum::routing::get;
use axum::Router;
use common::http::Server;
use common::{keyring, Backend, Opts, TestDb};
use http::StatusCode;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use metrics_util::MetricKind;
use tower_byok::resolve::FromHeader;
use tower_byok::{ByokLayer, DevEnvFallback, FileKeyring, Owner, SqliteStore, Vault};

/// One documented metric: its type, unit, and each label key with its allowed values.
#[derive(Debug)]
struct Documented {
    kind: String,
    unit: String,
    labels: BTreeMap<String, BTreeSet<String>>,
}

/// The README's "Metrics" table, by metric name.
fn documented() -> BTreeMap<String, Documented> {
    let readme = include_str!("../README.md");
    let section = readme
        .split("\n## Metrics\n")
        .nth(1)
        .expect("README has a Metrics section");
    let section = &section[..section.find("\n## ").unwrap_or(section.len())];
    let mut table = BTreeMap::new();
    for row in section.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = row.trim_matches('|').split('|').map(str::trim).collect();
        let [name, kind, unit, labels, _what] = cells[..] else {
            panic!("a Metrics row has five cells: {row}");
        };
        let mut parsed = BTreeMap::new();
        for label in labels.split(';').filter(|l| !l.trim().is_empty()) {
            let mut ticked = backticked(label).into_iter();
            let key = ticked.next().unwrap();
            parsed.insert(key, ticked.collect());
        }
        let name = backticked(name).pop().unwrap();
        let documented = Documented {
            kind: kind.to_owned(),
            unit: unit.to_owned(),
            labels: parsed,
        };
        assert!(table.insert(name, documented).is_none(), "{row}: twice");
    }
    assert!(!table.is_empty(), "the Metrics table has rows");
    table
}

fn backticked(text: &str) -> Vec<String> {
    text.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

/// A metric's name and its labels.
type Series = (String, BTreeMap<String, String>);

/// Everything emitted so far, summed with what was taken before: the debugging
/// recorder resets counters and histograms on each snapshot.
#[derive(Default)]
struct Emitted {
    /// (name, labels) → (kind, unit, counter total or histogram sample count)
    series: BTreeMap<Series, (MetricKind, Option<String>, u64)>,
}

impl Emitted {
    fn take(&mut self, snapshotter: &Snapshotter) -> Self {
        let mut this = Self::default();
        for (key, unit, _description, value) in snapshotter.snapshot().into_vec() {
            let name = key.key().name().to_owned();
            let labels = key
                .key()
                .labels()
                .map(|l| (l.key().to_owned(), l.value().to_owned()))
                .collect();
            let count = match value {
                DebugValue::Counter(n) => n,
                DebugValue::Histogram(samples) => samples.len() as u64,
                DebugValue::Gauge(_) => panic!("{name}: no gauge is documented"),
            };
            let unit = unit.map(|u| u.as_str().to_owned());
            this.series
                .insert((name, labels), (key.kind(), unit, count));
        }
        for (series, value) in &this.series {
            let total = self
                .series
                .entry(series.clone())
                .or_insert((value.0, value.1.clone(), 0));
            total.2 += value.2;
        }
        this
    }

    fn count(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        let labels = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        self.series
            .get(&(name.to_owned(), labels))
            .map_or(0, |s| s.2)
    }
}

async fn get_as(server: &Server, user: Option<&str>) -> StatusCode {
    server.get("/", user).await.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emitted_metrics_match_the_readme_table() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder.install().unwrap();
    let mut all = Emitted::default();

    let db = TestDb::new(Backend::Sqlite).await;
    let open = |watch: bool, ttl: Duration| {
        let path = db.sqlite_path().to_owned();
        async move {
            let mut builder = Vault::builder(SqliteStore::open(&path).await.unwrap(), keyring())
                .cache_ttl(ttl)
                .watch_changes(watch)
                .poll_interval(Duration::from_millis(20));
            if !watch {
                builder = builder.stale_if_error(Duration::from_secs(600));
            }
            builder.open().await.unwrap()
        }
    };
    let vault = open(true, Duration::from_secs(600)).await;
    let elsewhere = open(false, Duration::from_secs(600)).await;
    let stale = open(false, Duration::from_millis(50)).await;

    vault.put("alice", "openai", "sk-alice-0001").await.unwrap();
    vault.put("carol", "openai", "sk-carol-0001").await.unwrap();
    let mut blob = db.blob("carol", "openai").await;
    *blob.last_mut().unwrap() ^= 1;
    db.set_blob("carol", "openai", &blob).await;

    // Another instance's write, heard on the change feed; every change before it (the
    // writes and the tampering above) has been applied once it is.
    assert!(vault.keys_for("erin").await.unwrap().is_empty());
    elsewhere
        .put("erin", "openai", "sk-erin-0001")
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while vault.keys_for("erin").await.unwrap().is_empty() {
        assert!(
            Instant::now() < deadline,
            "the feed never delivered the write"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    vault.forget_cached("alice");
    assert!(!stale.keys_for("alice").await.unwrap().is_stale());

    // A load whose only caller goes away before it ends: held by the probe after its
    // read, polled once, then dropped.
    let (held, probe) = db.open_probed(keyring(), Opts::default()).await;
    let _release = probe.hold_next_load();
    {
        let mut load = std::pin::pin!(held.keys_for("frank"));
        let first = std::future::poll_fn(|cx| Poll::Ready(load.as_mut().poll(cx))).await;
        assert!(first.is_pending(), "the held load ended");
    }
    all.take(&snapshotter);
    let cancelled = [("outcome", "cancelled")];
    assert_eq!(all.count("tower_byok_load_duration_seconds", &cancelled), 1);

    // From here on, every figure is exact.
    let layer = ByokLayer::new(vault.clone(), FromHeader::new("x-user"))
        .with_require_user(true)
        .with_required_providers(["openai"]);
    let server = Server::start(
        Router::new()
            .route("/", get(|| async { "ok" }))
            .layer(layer),
    )
    .await;
    assert_eq!(get_as(&server, Some("alice")).await, StatusCode::OK); // miss
    assert_eq!(get_as(&server, Some("alice")).await, StatusCode::OK); // hit
    assert_eq!(get_as(&server, None).await, StatusCode::UNAUTHORIZED);
    assert_eq!(
        get_as(&server, Some("bob")).await,
        StatusCode::PRECONDITION_REQUIRED
    );
    assert_eq!(
        get_as(&server, Some("carol")).await,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    tokio::time::sleep(Duration::from_millis(100)).await; // past `stale`'s TTL
    db.exec("ALTER TABLE byok_keys RENAME TO byok_keys_gone")
        .await;
    assert_eq!(
        get_as(&server, Some("dave")).await,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert!(stale.keys_for("alice").await.unwrap().is_stale());
    let exact = all.take(&snapshotter);

    assert_eq!(exact.count("tower_byok_cache_hits_total", &[]), 1);
    assert_eq!(exact.count("tower_byok_cache_misses_total", &[]), 5);
    assert_eq!(exact.count("tower_byok_loads_total", &[]), 5);
    let duration = "tower_byok_load_duration_seconds";
    assert_eq!(exact.count(duration, &[("outcome", "ok")]), 2);
    assert_eq!(exact.count(duration, &[("outcome", "error")]), 3);
    let errors = "tower_byok_load_errors_total";
    assert_eq!(exact.count(errors, &[("kind", "decrypt")]), 1);
    assert_eq!(exact.count(errors, &[("kind", "store")]), 2);
    assert_eq!(exact.count("tower_byok_stale_served_total", &[]), 1);
    for status in ["401", "428", "500", "503"] {
        let n = exact.count("tower_byok_rejections_total", &[("status", status)]);
        assert_eq!(n, 1, "status {status}");
    }
    // Alice's key, on her miss and on her hit; no other request was served keys.
    let served = "tower_byok_keys_served_total";
    assert_eq!(exact.count(served, &[("source", "user")]), 2);
    for source in ["team", "platform", "environment"] {
        assert_eq!(exact.count(served, &[("source", source)]), 0, "{source}");
    }
    let invalidations = "tower_byok_invalidations_total";
    // Local: two writes and a `forget_cached` here, the write in the other vault's own
    // cache; that write is a change the feed brings here too.
    let local = [("source", "local"), ("scope", "user")];
    assert_eq!(all.count(invalidations, &local), 4);
    assert!(all.count(invalidations, &[("source", "feed"), ("scope", "user")]) >= 1);

    // Keyring refreshes (a vault of its own, on a database of its own): one that
    // succeeds, one that fails.
    let other = TestDb::new(Backend::Sqlite).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keyring.txt");
    std::fs::write(&path, keyring().expose_text().as_bytes()).unwrap();
    let store = SqliteStore::open(other.sqlite_path()).await.unwrap();
    let refreshed = Vault::builder_from(store, FileKeyring::new(&path))
        .watch_changes(false)
        .open()
        .await
        .unwrap();
    refreshed.refresh_keyring().await.unwrap();
    std::fs::write(&path, "not a keyring").unwrap();
    refreshed.refresh_keyring().await.unwrap_err();
    let refreshes = all.take(&snapshotter);
    let name = "tower_byok_keyring_refreshes_total";
    assert_eq!(refreshes.count(name, &[("result", "ok")]), 1);
    assert_eq!(refreshes.count(name, &[("result", "invalid_keyring")]), 1);

    // Keys served by each source: a member of a team with the platform fallback on and
    // the single-developer fallback, on a database of its own. Alice holds openai, her
    // team gemini, the platform mistral, the environment exa: one key of each source.
    let teams = TestDb::new(Backend::Sqlite).await;
    let chain = teams
        .open_teams(keyring(), true, Duration::from_millis(20))
        .await;
    chain.put("alice", "openai", "sk-alice-0001").await.unwrap();
    chain
        .put_for(Owner::team("acme"), "gemini", "AIza-acme-0001")
        .await
        .unwrap();
    chain
        .put_for(Owner::platform(), "mistral", "mistral-platform-0001")
        .await
        .unwrap();
    let var = format!("TOWER_BYOK_METRICS_EXA_{}", std::process::id());
    std::env::set_var(&var, "exa-env-0001");
    let layer = ByokLayer::new(chain, FromHeader::new("x-user").with_team_header("x-team"))
        .with_dev_env_fallback(DevEnvFallback::new().provider("exa", &var));
    std::env::remove_var(&var);
    let server = Server::start(
        Router::new()
            .route("/", get(|| async { "ok" }))
            .layer(layer),
    )
    .await;
    for _ in 0..3 {
        let request = http::Request::get(format!("http://{}/", server.addr))
            .header("x-user", "alice")
            .header("x-team", "acme")
            .body(Default::default())
            .unwrap();
        let response = server.client.request(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
    let sources = all.take(&snapshotter);
    for source in ["user", "team", "platform", "environment"] {
        assert_eq!(sources.count(served, &[("source", source)]), 3, "{source}");
    }

    // The table and the emitted series agree both ways.
    let table = documented();
    let mut seen = BTreeSet::new();
    for ((name, labels), (kind, unit, _)) in &all.series {
        let doc = table
            .get(name)
            .unwrap_or_else(|| panic!("{name} is emitted but not in the README table"));
        let kind = match kind {
            MetricKind::Counter => "counter",
            MetricKind::Gauge => "gauge",
            MetricKind::Histogram => "histogram",
        };
        assert_eq!(doc.kind, kind, "{name}: type");
        assert_eq!(Some(&doc.unit), unit.as_ref(), "{name}: unit");
        let keys: BTreeSet<_> = labels.keys().collect();
        assert_eq!(keys, doc.labels.keys().collect(), "{name}: label keys");
        for (key, value) in labels {
            assert!(
                doc.labels[key].contains(value),
                "{name}: {key}={value} is not a documented value"
            );
        }
        seen.insert(name.clone());
    }
    let documented: BTreeSet<_> = table.keys().cloned().collect();
    assert_eq!(seen, documented, "every documented metric is emitted");
}
