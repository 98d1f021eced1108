//! The team chain under load, over real HTTP (axum server on loopback, hyper client), on
//! each backend: 100,000 requests mixing teamless users, members of teams and the
//! platform fallback, while three writers change keys at all three levels: users'
//! (teamless and members), teams' and the platform's.
//!
//! Every secret names its owner and version (`sk-<owner>-v<version>-<provider>-…`:
//! owner `u7` a teamless user, `m7` a member, `t1` a team, `p` the platform), and each
//! owner's writes are made by one writer, in order, each recorded from the moment it
//! starts to the moment it returns. A response, sent at `t0` and read whole at `t1`, is
//! checked provider by provider against that history:
//!
//! - **wrong owner**: a key of anyone outside the caller's chain (another user, another
//!   team, a team's key for a teamless user), or one labelled with another source;
//! - **not valid then**: a version whose write had not started by `t1`, or that a
//!   write had replaced or deleted before `t0`;
//! - **shadowed**: a lower level's key served while a higher level held a key for the
//!   provider throughout `[t0, t1]` (no write to it started in the window);
//! - **missing**: nothing served while some level of the chain held a key throughout.
//!
//! All four are asserted 0: the response carries exactly a key the chain names within
//! its window. `503`s are counted apart as unavailability, never asserted; any other
//! status fails the run. Nothing is timed here; the figures are in RELIABILITY.md.
//!
//! Size: `BYOK_TEAM_SOAK_REQUESTS` (default 100,000 per backend).
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
use common::{keyring, Backend, Rng, TestDb};
use http::StatusCode;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower_byok::resolve::FromHeader;
use tower_byok::{ByokLayer, Owner, UserKeys, Vault};

per_backend!(team_chain_soak);

const PROVIDERS: [&str; 3] = ["openai", "gemini", "exa"];
const TEAMLESS: u32 = 150;
const MEMBERS: u32 = 150;
const TEAMS: u32 = 5;
const IN_FLIGHT: u64 = 24;

/// The owner of a key, as its secret names it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Who {
    Teamless(u32),
    Member(u32),
    Team(u32),
    Platform,
}

impl Who {
    fn id(self) -> String {
        match self {
            Self::Teamless(i) => format!("u{i}"),
            Self::Member(i) => format!("m{i}"),
            Self::Team(i) => format!("t{i}"),
            Self::Platform => "p".to_owned(),
        }
    }

    fn parse(id: &str) -> Option<Self> {
        let (kind, n) = id.split_at(1);
        match kind {
            "p" if n.is_empty() => Some(Self::Platform),
            "u" => n.parse().ok().map(Self::Teamless),
            "m" => n.parse().ok().map(Self::Member),
            "t" => n.parse().ok().map(Self::Team),
            _ => None,
        }
    }

    /// The source a key of this owner is served as.
    fn source(self) -> &'static str {
        match self {
            Self::Teamless(_) | Self::Member(_) => "database",
            Self::Team(_) => "team",
            Self::Platform => "platform",
        }
    }

    fn owner(self, id: &str) -> Owner<'_> {
        match self {
            Self::Teamless(_) | Self::Member(_) => Owner::user(id),
            Self::Team(_) => Owner::team(id),
            Self::Platform => Owner::platform(),
        }
    }
}

fn team_of(member: u32) -> u32 {
    member % TEAMS
}

fn secret(who: Who, version: u32, provider: &str) -> String {
    format!("sk-{}-v{version}-{provider}-0123456789", who.id())
}

/// `(owner, version)` of a secret made by [`secret`].
fn parse(secret: &str) -> Option<(Who, u32)> {
    let mut parts = secret.strip_prefix("sk-")?.split('-');
    let who = Who::parse(parts.next()?)?;
    let version = parts.next()?.strip_prefix('v')?.parse().ok()?;
    Some((who, version))
}

/// One write of one owner's key for one provider: when it started, when it returned
/// (`None` while under way), and the version it left (`None`: deleted).
struct Write {
    started: Instant,
    returned: Option<Instant>,
    version: Option<u32>,
}

/// Every owner's writes, per provider, in order.
#[derive(Default)]
struct History(Mutex<HashMap<(Who, usize), Vec<Write>>>);

impl History {
    fn start(&self, who: Who, p: usize, version: Option<u32>) -> Instant {
        let started = Instant::now();
        let write = Write {
            started,
            returned: None,
            version,
        };
        self.0
            .lock()
            .unwrap()
            .entry((who, p))
            .or_default()
            .push(write);
        started
    }

    fn returned(&self, who: Who, p: usize) {
        let mut history = self.0.lock().unwrap();
        history
            .get_mut(&(who, p))
            .unwrap()
            .last_mut()
            .unwrap()
            .returned = Some(Instant::now());
    }

    /// Whether `version` could be served to a request in `[t0, t1]`: its write started
    /// by `t1`, and no later write had returned before `t0`.
    fn valid(&self, who: Who, p: usize, version: u32, t0: Instant, t1: Instant) -> bool {
        let history = self.0.lock().unwrap();
        let Some(writes) = history.get(&(who, p)) else {
            return false;
        };
        let Some(i) = writes.iter().position(|w| w.version == Some(version)) else {
            return false;
        };
        writes[i].started <= t1
            && writes
                .get(i + 1)
                .and_then(|next| next.returned)
                .is_none_or(|ended| ended >= t0)
    }

    /// Whether the owner held a key for the provider throughout `[t0, t1]`: the last
    /// write returned before `t0` left one, and no write started since, before `t1`.
    fn held_throughout(&self, who: Who, p: usize, t0: Instant, t1: Instant) -> bool {
        let history = self.0.lock().unwrap();
        let Some(writes) = history.get(&(who, p)) else {
            return false;
        };
        let Some(last) = writes
            .iter()
            .rposition(|w| w.returned.is_some_and(|r| r < t0))
        else {
            return false;
        };
        writes[last].version.is_some() && writes[last + 1..].iter().all(|w| w.started > t1)
    }
}

#[derive(Default)]
struct Counts {
    requests: AtomicU64,
    checked: AtomicU64,
    keys_checked: AtomicU64,
    by_source: [AtomicU64; 3],
    wrong_owner: AtomicU64,
    not_valid: AtomicU64,
    shadowed: AtomicU64,
    missing: AtomicU64,
    unavailable: AtomicU64,
    other_status: AtomicU64,
    transport_errors: AtomicU64,
    writes: [AtomicU64; 3],
}

/// The caller's keys, one `provider=source=secret` line each.
async fn handler(keys: UserKeys) -> String {
    keys.iter()
        .map(|k| format!("{}={}={}\n", k.provider(), k.source(), k.expose_secret()))
        .collect()
}

/// One writer: changes the keys of `owners`, one write at a time, each a replace (new
/// version), a delete, or a put back at a new version; pausing `pause` between writes.
#[allow(clippy::too_many_arguments)]
async fn writer(
    vault: Vault,
    owners: Vec<Who>,
    history: Arc<History>,
    done: Arc<AtomicBool>,
    count: usize,
    counts: Arc<Counts>,
    pause: Duration,
    seed: u64,
) {
    let mut rng = Rng(seed);
    let mut live: HashMap<(Who, usize), Option<u32>> = HashMap::new();
    let mut next = 1u32;
    while !done.load(Ordering::Relaxed) {
        let who = owners[rng.below(owners.len() as u64) as usize];
        let p = rng.below(PROVIDERS.len() as u64) as usize;
        let (provider, id) = (PROVIDERS[p], who.id());
        let current = live.get(&(who, p)).copied().flatten().or(initial(who, p));
        next += 1;
        let version = match current {
            Some(_) if rng.below(10) < 3 => None,
            _ => Some(1_000 + next),
        };
        history.start(who, p, version);
        match version {
            Some(v) => {
                vault
                    .put_for(who.owner(&id), provider, &secret(who, v, provider))
                    .await
                    .unwrap();
            }
            None => {
                vault.delete_for(who.owner(&id), provider).await.unwrap();
            }
        }
        history.returned(who, p);
        live.insert((who, p), version);
        counts.writes[count].fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(pause).await;
    }
}

/// The version 1 keys the run starts with: each user holds some providers, each team
/// two, the platform all three, so that every level of the chain serves.
fn initial(who: Who, p: usize) -> Option<u32> {
    let holds = match who {
        Who::Teamless(i) | Who::Member(i) => (i as usize + p).is_multiple_of(3),
        Who::Team(i) => !(i as usize + p).is_multiple_of(3),
        Who::Platform => true,
    };
    holds.then_some(1)
}

async fn team_chain_soak(backend: Backend) {
    let total: u64 =
        std::env::var("BYOK_TEAM_SOAK_REQUESTS").map_or(100_000, |v| v.parse().unwrap());
    let db = TestDb::new(backend).await;
    let vault = db
        .open_teams(keyring(), true, Duration::from_millis(100))
        .await;
    let history = Arc::new(History::default());

    let users: Vec<Who> = (0..TEAMLESS)
        .map(Who::Teamless)
        .chain((0..MEMBERS).map(Who::Member))
        .collect();
    let teams: Vec<Who> = (0..TEAMS).map(Who::Team).collect();
    let seeded = Instant::now();
    for &who in users.iter().chain(&teams).chain([&Who::Platform]) {
        let id = who.id();
        for (p, provider) in PROVIDERS.into_iter().enumerate() {
            if initial(who, p).is_some() {
                vault
                    .put_for(who.owner(&id), provider, &secret(who, 1, provider))
                    .await
                    .unwrap();
            }
            let mut writes = history.0.lock().unwrap();
            writes.entry((who, p)).or_default().push(Write {
                started: seeded,
                returned: Some(seeded),
                version: initial(who, p),
            });
        }
    }

    let app = Router::new()
        .route("/keys", get(handler))
        .layer(ByokLayer::new(
            vault.clone(),
            FromHeader::new("x-user").with_team_header("x-team"),
        ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();

    let counts = Arc::new(Counts::default());
    let done = Arc::new(AtomicBool::new(false));
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    let seed = now.unwrap().as_nanos() as u64 | 1;
    let started = Instant::now();

    // Users' keys change all the time, teams' every few milliseconds, the platform's
    // (which every request may fall back to, so each write reloads it) less often.
    let writers = [
        (users.clone(), Duration::ZERO),
        (teams.clone(), Duration::from_millis(5)),
        (vec![Who::Platform], Duration::from_millis(20)),
    ]
    .into_iter()
    .enumerate()
    .map(|(i, (owners, pause))| {
        tokio::spawn(writer(
            vault.clone(),
            owners,
            history.clone(),
            done.clone(),
            i,
            counts.clone(),
            pause,
            seed ^ (i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15),
        ))
    })
    .collect::<Vec<_>>();

    let requesters: Vec<_> = (0..IN_FLIGHT)
        .map(|r| {
            let (client, counts, history) = (client.clone(), counts.clone(), history.clone());
            tokio::spawn(async move {
                let mut rng = Rng(seed ^ (r + 101).wrapping_mul(0x2545_f491_4f6c_dd1d));
                while counts.requests.fetch_add(1, Ordering::Relaxed) < total {
                    let caller = if rng.below(2) == 0 {
                        Who::Teamless(rng.below(u64::from(TEAMLESS)) as u32)
                    } else {
                        Who::Member(rng.below(u64::from(MEMBERS)) as u32)
                    };
                    let team = match caller {
                        Who::Member(i) => Some(Who::Team(team_of(i))),
                        _ => None,
                    };
                    let mut request = http::Request::get(format!("http://{addr}/keys"))
                        .header("x-user", caller.id());
                    if let Some(team) = team {
                        request = request.header("x-team", team.id());
                    }
                    let request = request.body(Full::default()).unwrap();
                    let t0 = Instant::now();
                    let exchange = common::http::exchange(&client, request);
                    let (status, body) = match exchange.await {
                        Ok(done) => done,
                        Err(_) => {
                            counts.transport_errors.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                    };
                    let t1 = Instant::now();
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
                    let chain: Vec<Who> = [Some(caller), team, Some(Who::Platform)]
                        .into_iter()
                        .flatten()
                        .collect();
                    let body = String::from_utf8_lossy(&body);
                    let mut served = [None; PROVIDERS.len()];
                    for line in body.lines() {
                        let mut fields = line.splitn(3, '=');
                        let (provider, source, secret) =
                            (fields.next(), fields.next(), fields.next());
                        let p = PROVIDERS.iter().position(|p| Some(*p) == provider);
                        let who = secret.and_then(parse);
                        let (Some(p), Some((who, version))) = (p, who) else {
                            counts.wrong_owner.fetch_add(1, Ordering::Relaxed);
                            continue;
                        };
                        if !chain.contains(&who) || source != Some(who.source()) {
                            counts.wrong_owner.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                        counts.keys_checked.fetch_add(1, Ordering::Relaxed);
                        let level = chain.iter().position(|c| *c == who).unwrap();
                        let source = match who {
                            Who::Team(_) => 1,
                            Who::Platform => 2,
                            _ => 0,
                        };
                        counts.by_source[source].fetch_add(1, Ordering::Relaxed);
                        if !history.valid(who, p, version, t0, t1) {
                            counts.not_valid.fetch_add(1, Ordering::Relaxed);
                        }
                        if chain[..level]
                            .iter()
                            .any(|&above| history.held_throughout(above, p, t0, t1))
                        {
                            counts.shadowed.fetch_add(1, Ordering::Relaxed);
                        }
                        served[p] = Some(who);
                    }
                    for (p, served) in served.iter().enumerate() {
                        if served.is_none()
                            && chain
                                .iter()
                                .any(|&level| history.held_throughout(level, p, t0, t1))
                        {
                            counts.missing.fetch_add(1, Ordering::Relaxed);
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
        "team chain soak ({backend:?}): {total} requests, {IN_FLIGHT} in flight, in {:.1} s: \
         {} responses checked, {} keys (user {}, team {}, platform {}); wrong owner {}, \
         not valid then {}, shadowed {}, missing {}; 503 {}, other status {}, transport \
         errors {}; writes meanwhile: users {}, teams {}, platform {}",
        elapsed.as_secs_f64(),
        c(&counts.checked),
        c(&counts.keys_checked),
        c(&counts.by_source[0]),
        c(&counts.by_source[1]),
        c(&counts.by_source[2]),
        c(&counts.wrong_owner),
        c(&counts.not_valid),
        c(&counts.shadowed),
        c(&counts.missing),
        c(&counts.unavailable),
        c(&counts.other_status),
        c(&counts.transport_errors),
        c(&counts.writes[0]),
        c(&counts.writes[1]),
        c(&counts.writes[2]),
    );
    assert_eq!(
        c(&counts.wrong_owner),
        0,
        "keys of an owner outside the chain"
    );
    assert_eq!(
        c(&counts.not_valid),
        0,
        "versions not current in the window"
    );
    assert_eq!(
        c(&counts.shadowed),
        0,
        "a lower level served over a held key"
    );
    assert_eq!(c(&counts.missing), 0, "nothing served over a held key");
    assert_eq!(
        c(&counts.other_status),
        0,
        "statuses other than 200 and 503"
    );
    assert_eq!(c(&counts.transport_errors), 0, "transport errors");
    // Not an availability claim: only that the counts above counted something.
    assert!(
        c(&counts.checked) > total / 2,
        "most responses were checked"
    );
    for (source, n) in ["user", "team", "platform"].iter().zip(&counts.by_source) {
        assert!(c(n) > 0, "no {source} key was served");
    }
    for (level, n) in ["users", "teams", "platform"].iter().zip(&counts.writes) {
        assert!(c(n) > 0, "no write of the {level}'s keys");
    }
}
