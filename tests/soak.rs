//! Isolation soak: many users' requests through the real layer, over real HTTP on
//! loopback (axum server, hyper client), on each backend, while keys are replaced and
//! revoked concurrently, with a cache TTL of 250 ms, and about
//! a fifth of the requests dropped mid-flight (the client drops the response future,
//! which closes the connection, and the server drops the request's future).
//!
//! The TTL is short beside how often one user is requested (every 0.6 s in the CI
//! variant, every 3 s in the full one), so most requests load from the database; it is
//! long enough that a write that failed to invalidate the cache would serve stale keys to
//! requests started after it (checked: with the invalidation removed from the vault's
//! writes, 20 users, 4,000 requests: 457 stale after replace, 112 after revoke).
//!
//! Every secret encodes its user and version (`sk-u<user>-v<version>-…`). Counted
//! separately:
//! - wrong-user deliveries: a response carrying any key not the caller's (asserted 0);
//! - stale deliveries: a version replaced or deleted before the request *started*
//!   (the write had returned), served anyway (asserted 0, replace and revoke apart);
//! - unavailability (`503`) and transport errors: reported, never asserted, like every
//!   timing: they depend on the machine, not on isolation.
//!
//! Size: `BYOK_SOAK_REQUESTS` (default 4,000 per backend) over `BYOK_SOAK_USERS`
//! (default 400). The recorded full run (RELIABILITY.md) used 1,000,000 over 10,000.
#![cfg(all(feature = "sqlite", feature = "axum"))]
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use common::{keyring, Backend, Opts, Rng, TestDb};
use http::StatusCode;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower_byok::resolve::FromHeader;
use tower_byok::{ByokLayer, UserKeys};

per_backend!(isolation_soak);

// The same tests through PgBouncer, in transaction and in session mode.
crate::behind_poolers!(isolation_soak,);

const PROVIDERS: [&str; 2] = ["openai", "exa"];

fn secret(user: u32, version: u32, provider: &str) -> String {
    format!("sk-u{user}-v{version}-{provider}-0123456789")
}

/// `(user, version)` of a secret made by [`secret`].
fn parse(secret: &str) -> Option<(u32, u32)> {
    let mut parts = secret.strip_prefix("sk-u")?.split('-');
    let user = parts.next()?.parse().ok()?;
    let version = parts.next()?.strip_prefix('v')?.parse().ok()?;
    Some((user, version))
}

/// The caller's keys, one `provider=secret` line each.
async fn handler(keys: Option<UserKeys>) -> String {
    keys.map_or_else(String::new, |keys| {
        keys.iter()
            .map(|k| format!("{}={}\n", k.provider(), k.expose_secret()))
            .collect()
    })
}

/// When a version of a user's key stopped being current: the moment the write that
/// replaced (`false`) or deleted (`true`) it returned.
type Ended = Mutex<HashMap<(u32, &'static str, u32), (Instant, bool)>>;

#[derive(Default)]
struct Counts {
    requests: AtomicU64,
    cancelled: AtomicU64,
    checked: AtomicU64,
    wrong_user: AtomicU64,
    stale_after_replace: AtomicU64,
    stale_after_revoke: AtomicU64,
    unavailable: AtomicU64,
    other_status: AtomicU64,
    transport_errors: AtomicU64,
    writes: AtomicU64,
}

fn env(var: &str, default: u64) -> u64 {
    std::env::var(var).map_or(default, |v| v.parse().unwrap())
}

async fn isolation_soak(backend: Backend) {
    let total = env("BYOK_SOAK_REQUESTS", 4_000);
    let users = env("BYOK_SOAK_USERS", 400) as u32;
    let db = TestDb::new(backend).await;
    let opts = Opts {
        cache_ttl: Duration::from_millis(250),
        ..Opts::default()
    };
    let vault = db.open_with(keyring(), opts).await.unwrap();

    // Every user starts with both providers at version 1.
    let seeders: Vec<_> = (0..8u32)
        .map(|w| {
            let vault = vault.clone();
            tokio::spawn(async move {
                for user in (w..users).step_by(8) {
                    for provider in PROVIDERS {
                        let id = format!("u{user}");
                        vault
                            .put(&id, provider, &secret(user, 1, provider))
                            .await
                            .unwrap();
                    }
                }
            })
        })
        .collect();
    for seeder in seeders {
        seeder.await.unwrap();
    }

    let app = Router::new()
        .route("/keys", get(handler))
        .layer(ByokLayer::new(vault.clone(), FromHeader::new("x-user")));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();

    let counts = Arc::new(Counts::default());
    let ended: Arc<Ended> = Arc::default();
    let done = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    let seed = now.unwrap().as_nanos() as u64 | 1;

    // Writers, each owning a share of the users so that a user's writes are sequential
    // and "the write that ended a version" is well defined: replace a provider's key
    // (new version), or delete it (later put back at a new version).
    const WRITERS: u32 = 4;
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let (vault, ended, done, counts) =
                (vault.clone(), ended.clone(), done.clone(), counts.clone());
            tokio::spawn(async move {
                let mut rng = Rng(seed ^ (u64::from(w) + 1).wrapping_mul(0x1234_5678_9abc_def1));
                // (user, provider index) -> live version, if any; next version per user.
                let mut live: HashMap<(u32, usize), u32> = HashMap::new();
                let mut next: HashMap<u32, u32> = HashMap::new();
                while !done.load(Ordering::Relaxed) {
                    let user = (rng.below(u64::from(users / WRITERS).max(1)) as u32) * WRITERS + w;
                    if user >= users {
                        continue;
                    }
                    let p = rng.below(2) as usize;
                    let provider = PROVIDERS[p];
                    let id = format!("u{user}");
                    let current = *live.entry((user, p)).or_insert(1);
                    let revoke = current != 0 && rng.below(10) < 3;
                    if revoke {
                        vault.delete(&id, provider).await.unwrap();
                        live.insert((user, p), 0);
                        ended
                            .lock()
                            .unwrap()
                            .insert((user, provider, current), (Instant::now(), true));
                    } else {
                        let version = next.entry(user).or_insert(1);
                        *version += 1;
                        let version = *version;
                        vault
                            .put(&id, provider, &secret(user, version, provider))
                            .await
                            .unwrap();
                        live.insert((user, p), version);
                        if current != 0 {
                            ended
                                .lock()
                                .unwrap()
                                .insert((user, provider, current), (Instant::now(), false));
                        }
                    }
                    counts.writes.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();

    // Requesters: a fixed number in flight, each request for a random user; about one
    // in five is dropped after a random 0 to 2 ms, most of them mid-flight.
    const IN_FLIGHT: u64 = 48;
    let requesters: Vec<_> = (0..IN_FLIGHT)
        .map(|r| {
            let (client, counts, ended) = (client.clone(), counts.clone(), ended.clone());
            tokio::spawn(async move {
                let mut rng = Rng(seed ^ (r + 101).wrapping_mul(0x2545_f491_4f6c_dd1d));
                while counts.requests.fetch_add(1, Ordering::Relaxed) < total {
                    let user = rng.below(u64::from(users)) as u32;
                    let cancel_after =
                        (rng.below(5) == 0).then(|| Duration::from_micros(rng.below(2_000)));
                    let request = http::Request::get(format!("http://{addr}/keys"))
                        .header("x-user", format!("u{user}"))
                        .body(Full::default())
                        .unwrap();
                    let t0 = Instant::now();
                    let exchange = common::http::exchange(&client, request);
                    let outcome = match cancel_after {
                        Some(after) => match tokio::time::timeout(after, exchange).await {
                            Ok(outcome) => outcome,
                            Err(_) => {
                                counts.cancelled.fetch_add(1, Ordering::Relaxed);
                                continue;
                            }
                        },
                        None => exchange.await,
                    };
                    let (status, body) = match outcome {
                        Ok(done) => done,
                        Err(_) => {
                            counts.transport_errors.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                    };
                    match status {
                        StatusCode::OK => {}
                        StatusCode::SERVICE_UNAVAILABLE => {
                            counts.unavailable.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                        _ => {
                            counts.other_status.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                    }
                    counts.checked.fetch_add(1, Ordering::Relaxed);
                    let body = String::from_utf8_lossy(&body);
                    for line in body.lines() {
                        let (provider, served) = line.split_once('=').unwrap_or((line, ""));
                        let served = parse(served).filter(|(owner, _)| *owner == user);
                        let provider = PROVIDERS.into_iter().find(|p| *p == provider);
                        let (Some((owner, version)), Some(provider)) = (served, provider) else {
                            counts.wrong_user.fetch_add(1, Ordering::Relaxed);
                            continue;
                        };
                        let end = ended
                            .lock()
                            .unwrap()
                            .get(&(owner, provider, version))
                            .copied();
                        if let Some((at, revoked)) = end {
                            if at < t0 {
                                let stale = if revoked {
                                    &counts.stale_after_revoke
                                } else {
                                    &counts.stale_after_replace
                                };
                                stale.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                }
            })
        })
        .collect();
    for requester in requesters {
        requester.await.unwrap();
    }
    done.store(true, Ordering::Relaxed);
    for writer in writers {
        writer.await.unwrap();
    }
    let elapsed = started.elapsed();

    let c = |n: &AtomicU64| n.load(Ordering::Relaxed);
    eprintln!(
        "isolation soak ({backend:?}): {total} requests over {users} users in {:.1} s: \
         {} cancelled mid-flight, {} responses checked, wrong-user {}, stale after replace {}, \
         stale after revoke {}, 503 {}, other status {}, transport errors {}; {} writes \
         (replaces and revokes) meanwhile",
        elapsed.as_secs_f64(),
        c(&counts.cancelled),
        c(&counts.checked),
        c(&counts.wrong_user),
        c(&counts.stale_after_replace),
        c(&counts.stale_after_revoke),
        c(&counts.unavailable),
        c(&counts.other_status),
        c(&counts.transport_errors),
        c(&counts.writes),
    );
    assert_eq!(c(&counts.wrong_user), 0, "deliveries of another user's key");
    assert_eq!(
        c(&counts.stale_after_replace),
        0,
        "replaced keys served to later requests"
    );
    assert_eq!(
        c(&counts.stale_after_revoke),
        0,
        "revoked keys served to later requests"
    );
    // Not an availability claim: only that the counts above counted something.
    assert!(c(&counts.checked) > 0, "no response was checked");
}
