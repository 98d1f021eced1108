//! End to end over loopback: the same axum app without (A) and with (B) the layer,
//! driven by a load generator in a second process, in alternating rounds A B A B ...
//!
//! - A: `GET /` answered `"3"` by a handler that reads nothing;
//! - B: the same route behind `ByokLayer` (`FromHeader::new("x-user")`), its handler
//!   extracting `UserKeys` and answering their count (`"3"`).
//!
//! 100 users with three keys each live in a SQLite file vault; every user's keys are
//! loaded into the cache before the first round and the database pool is then closed, so
//! the rounds measure the cache-hit path (a miss would fail with 503 and be counted as an
//! error). Every request carries `x-user: user-N`, cycling over the users, for A and B
//! alike.
//!
//! The bench re-executes itself (`BYOK_E2E_ROLE=load`) as the load generator, so the
//! server process's CPU accounting holds only server work. Per round the generator (one
//! thread) opens its keep-alive HTTP/1.1 connections (one request each), says `ready`,
//! waits for `go`, sends for the round's duration (as fast as responses come back, or at
//! a fixed rate), says `done` as soon as its last response has arrived (connections still
//! open), then reports its count, latency percentiles and its own CPU time. The server
//! reads its own CPU time between `go` and `done`: per thread from
//! `/proc/self/task/*/schedstat` (nanoseconds), cross-checked against the process's
//! `utime + stime` from `/proc/self/stat` (10 ms ticks). It also reads the machine's busy
//! time from `/proc/stat`, to show how much other processes ran during each round; before
//! each round it waits (briefly) for them to quiet down, and it reports the medians over
//! the undisturbed round pairs beside those over all pairs.
//!
//! The server runs one tokio worker thread by default, so that on a two-CPU machine the
//! server and the generator each have a CPU: with two server threads they contend, and
//! the per-request CPU moves with how the work happens to batch (set
//! `BYOK_E2E_SERVER_THREADS=2` to see it).
//!
//! Run: `cargo bench --bench e2e`. Knobs (environment): `BYOK_E2E_ROUNDS` (9 per app),
//! `BYOK_E2E_SECONDS` (3 per round), `BYOK_E2E_WARMUP_SECONDS` (1 per app, not counted),
//! `BYOK_E2E_CONCURRENCY` (32 connections), `BYOK_E2E_RATE` (offered requests per second;
//! 0, the default, for a closed loop), `BYOK_E2E_MAX_REQUESTS` (10,000,000 per round),
//! `BYOK_E2E_SERVER_THREADS` (1), `BYOK_E2E_QUIET_SHARE` (0.10 of the machine) and
//! `BYOK_E2E_QUIET_MAX_WAIT` (3 s per round). Without `--bench` (as under
//! `cargo test --benches`) it runs one short round per app as a smoke test.

// Printing the results is the point of this program.
#![allow(clippy::print_stdout)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use axum::routing::get;
use axum::serve::ListenerExt;
use axum::Router;
use bytes::Bytes;
use http::{header, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tower_byok::resolve::FromHeader;
use tower_byok::{ByokLayer, Keyring, MasterKey, SqliteStore, UserKeys, Vault};

mod support;
use support::{keys_of, knob};

const ROLE: &str = "BYOK_E2E_ROLE";
const TARGET: &str = "BYOK_E2E_TARGET";
const USERS: usize = 100;
const TARGET_ADDED_CPU_NS: f64 = 300.0;

fn main() {
    if std::env::var(ROLE).as_deref() == Ok("load") {
        load_generator();
    } else {
        server();
    }
}

fn user_id(n: usize) -> String {
    format!("user-{n}")
}

// ---------------------------------------------------------------------------------------
// Server process
// ---------------------------------------------------------------------------------------

struct Settings {
    rounds: usize,
    seconds: f64,
    warmup_seconds: f64,
    concurrency: usize,
    max_requests: u64,
    server_threads: usize,
    /// Total requests per second the generator offers; 0 for as fast as it can.
    rate: f64,
    /// Busy share of the machine by other processes above which a round is "disturbed".
    quiet_threshold: f64,
    /// How long to wait before a round for the machine to be quiet.
    quiet_max_wait: Duration,
}

async fn bare() -> &'static str {
    "3"
}

async fn with_keys(keys: UserKeys) -> &'static str {
    if keys.len() == 3 {
        "3"
    } else {
        "?"
    }
}

/// Builds the vault, warms its cache, closes its database, and serves A and B.
async fn start_servers(dir: &std::path::Path) -> (SocketAddr, SocketAddr) {
    let keyring = Keyring::new(MasterKey::generate("k1").expect("master key"));
    let store = SqliteStore::open(dir.join("keys.db"))
        .await
        .expect("sqlite store");
    let pool = store.pool().clone();
    let vault = Vault::builder(store, keyring)
        // Longer than the run: the rounds measure hits, not periodic reloads.
        .cache_ttl(Duration::from_secs(3600))
        .open()
        .await
        .expect("vault");
    for n in 0..USERS {
        for (provider, secret) in keys_of(n) {
            vault
                .put(&user_id(n), provider, &secret)
                .await
                .expect("put");
        }
    }
    for n in 0..USERS {
        let keys = vault.keys_for(&user_id(n)).await.expect("warm the cache");
        assert_eq!(keys.len(), 3);
    }
    // From here on a cache miss cannot be served (503): the generator would count it.
    pool.close().await;

    let app_a = Router::new().route("/", get(bare));
    let app_b = Router::new()
        .route("/", get(with_keys))
        .layer(ByokLayer::new(vault, FromHeader::new("x-user")));

    let loopback = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0);
    let mut addrs = Vec::new();
    for app in [app_a, app_b] {
        let listener = tokio::net::TcpListener::bind(loopback).await.expect("bind");
        addrs.push(listener.local_addr().expect("local addr"));
        let listener = listener.tap_io(|tcp| {
            tcp.set_nodelay(true).ok();
        });
        tokio::spawn(async move { axum::serve(listener, app).await.expect("serve") });
    }
    (addrs[0], addrs[1])
}

/// The server process's CPU time so far.
struct CpuSnapshot {
    /// On-CPU nanoseconds per live thread, from `schedstat`; empty when unavailable.
    threads: HashMap<String, u64>,
    /// `utime + stime` of the whole process (live and exited threads), in ticks.
    ticks: u64,
}

/// Linux's `USER_HZ`, the unit of `/proc/<pid>/stat` times.
const TICKS_PER_SECOND: u64 = 100;

impl CpuSnapshot {
    fn now() -> Self {
        let mut threads = HashMap::new();
        if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
            for task in tasks.flatten() {
                let Ok(text) = std::fs::read_to_string(task.path().join("schedstat")) else {
                    continue;
                };
                if let Some(ns) = text.split_whitespace().next().and_then(|f| f.parse().ok()) {
                    threads.insert(task.file_name().to_string_lossy().into_owned(), ns);
                }
            }
        }
        let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
        // Fields after the command name: state is field 3, utime 14, stime 15.
        let rest = &stat[stat.rfind(')').expect("stat format") + 1..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let field = |n: usize| -> u64 { fields[n - 3].parse().expect("stat field") };
        Self {
            threads,
            ticks: field(14) + field(15),
        }
    }

    /// Nanoseconds of CPU from `self` to `later`: (per-thread schedstat if available,
    /// process ticks), and how many threads seen in `self` were gone in `later`.
    fn until(&self, later: &Self) -> (Option<u64>, u64, usize) {
        let ticks_ns = (later.ticks - self.ticks) * (1_000_000_000 / TICKS_PER_SECOND);
        if later.threads.is_empty() {
            return (None, ticks_ns, 0);
        }
        let sched = later
            .threads
            .iter()
            .map(|(tid, ns)| ns.saturating_sub(self.threads.get(tid).copied().unwrap_or(0)))
            .sum();
        let gone = self
            .threads
            .keys()
            .filter(|tid| !later.threads.contains_key(*tid))
            .count();
        (Some(sched), ticks_ns, gone)
    }
}

/// The whole machine's CPU time so far, from the first line of `/proc/stat`, in ticks.
#[derive(Clone, Copy)]
struct SystemCpu {
    busy: u64,
    total: u64,
}

impl SystemCpu {
    fn now() -> Self {
        let stat = std::fs::read_to_string("/proc/stat").expect("/proc/stat");
        let line = stat.lines().next().expect("cpu line");
        // user nice system idle iowait irq softirq steal (guest time is inside user).
        let v: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .take(8)
            .map(|f| f.parse().expect("/proc/stat field"))
            .collect();
        let idle = v[3] + v[4];
        let total: u64 = v.iter().sum();
        Self {
            busy: total - idle,
            total,
        }
    }

    /// Busy nanoseconds of the machine (all CPUs) from `self` to `later`, counting time
    /// stolen by the hypervisor as busy.
    fn busy_ns_until(&self, later: &Self) -> u64 {
        (later.busy - self.busy) * (1_000_000_000 / TICKS_PER_SECOND)
    }

    /// The busy share of the machine from `self` to `later`.
    fn busy_share_until(&self, later: &Self) -> f64 {
        let total = later.total - self.total;
        if total == 0 {
            0.0
        } else {
            (later.busy - self.busy) as f64 / total as f64
        }
    }
}

/// Waits, up to `max_wait`, until other processes keep the machine less than `threshold`
/// busy over a quarter of a second (the server is idle between rounds). Returns how long
/// it waited.
fn wait_for_quiet(threshold: f64, max_wait: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let before = SystemCpu::now();
        std::thread::sleep(Duration::from_millis(250));
        let share = before.busy_share_until(&SystemCpu::now());
        if share < threshold || started.elapsed() >= max_wait {
            return started.elapsed();
        }
    }
}

struct Round {
    requests: u64,
    errors: u64,
    elapsed: Duration,
    p50_ns: u64,
    p99_ns: u64,
    cpu_ns: u64,
    cpu_ticks_ns: u64,
    server_wall: Duration,
    /// CPU the load generator used.
    generator_cpu_ns: u64,
    /// The share of the machine other processes used during the round.
    others_share: f64,
    /// How long the round waited for the machine to be quiet.
    waited: Duration,
}

impl Round {
    fn rps(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }
    fn cpu_per_request(&self) -> f64 {
        self.cpu_ns as f64 / self.requests as f64
    }
    fn ticks_per_request(&self) -> f64 {
        self.cpu_ticks_ns as f64 / self.requests as f64
    }
    fn cpu_share(&self) -> f64 {
        self.cpu_ns as f64 / self.server_wall.as_nanos() as f64
    }
    fn generator_share(&self) -> f64 {
        self.generator_cpu_ns as f64 / self.server_wall.as_nanos() as f64
    }
}

/// One round: a load generator process against `target` for `seconds`.
fn run_round(settings: &Settings, target: SocketAddr, seconds: f64, cpus: usize) -> Round {
    let waited = wait_for_quiet(settings.quiet_threshold, settings.quiet_max_wait);
    let exe = std::env::current_exe().expect("current exe");
    let mut child = Command::new(exe)
        .env(ROLE, "load")
        .env(TARGET, target.to_string())
        .env("BYOK_E2E_SECONDS", seconds.to_string())
        .env("BYOK_E2E_CONCURRENCY", settings.concurrency.to_string())
        .env("BYOK_E2E_MAX_REQUESTS", settings.max_requests.to_string())
        .env("BYOK_E2E_RATE", settings.rate.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn the load generator");
    let mut to_child = child.stdin.take().expect("child stdin");
    let mut from_child = BufReader::new(child.stdout.take().expect("child stdout"));
    let mut line = String::new();
    let mut next_line = |line: &mut String| {
        line.clear();
        from_child.read_line(line).expect("read from the generator");
        line.trim().to_owned()
    };

    assert_eq!(
        next_line(&mut line),
        "ready",
        "load generator failed to start"
    );
    let system_before = SystemCpu::now();
    let before = CpuSnapshot::now();
    let wall = Instant::now();
    writeln!(to_child, "go").expect("write to the generator");
    to_child.flush().expect("flush");
    assert_eq!(next_line(&mut line), "done", "load generator failed");
    let after = CpuSnapshot::now();
    let server_wall = wall.elapsed();
    let system_after = SystemCpu::now();
    let result = next_line(&mut line);
    drop(to_child);
    let status = child.wait().expect("wait for the generator");
    assert!(status.success(), "load generator exited with {status}");

    let fields: HashMap<&str, u64> = result
        .strip_prefix("result ")
        .expect("result line")
        .split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k, v.parse().expect("number")))
        .collect();
    let (sched_ns, ticks_ns, gone) = before.until(&after);
    if gone > 0 {
        println!("  note: {gone} server thread(s) exited during the round; using process ticks");
    }
    let cpu_ns = match sched_ns {
        Some(ns) if gone == 0 => ns,
        _ => ticks_ns,
    };
    let generator_cpu_ns = fields["cpu_ns"];
    let others_ns = system_before
        .busy_ns_until(&system_after)
        .saturating_sub(cpu_ns + generator_cpu_ns);
    Round {
        requests: fields["requests"],
        errors: fields["errors"],
        elapsed: Duration::from_nanos(fields["elapsed_ns"]),
        p50_ns: fields["p50_ns"],
        p99_ns: fields["p99_ns"],
        cpu_ns,
        cpu_ticks_ns: ticks_ns,
        server_wall,
        generator_cpu_ns,
        others_share: others_ns as f64 / (server_wall.as_nanos() as f64 * cpus as f64),
        waited,
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".to_owned())
}

fn server() {
    let smoke = !std::env::args().any(|a| a == "--bench");
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let settings = if smoke {
        Settings {
            rounds: 1,
            seconds: 0.2,
            warmup_seconds: 0.0,
            concurrency: 4,
            max_requests: 100_000,
            server_threads: 1,
            rate: 0.0,
            quiet_threshold: 1.0,
            quiet_max_wait: Duration::ZERO,
        }
    } else {
        Settings {
            rounds: knob("BYOK_E2E_ROUNDS", 9),
            seconds: knob("BYOK_E2E_SECONDS", 3.0),
            warmup_seconds: knob("BYOK_E2E_WARMUP_SECONDS", 1.0),
            concurrency: knob("BYOK_E2E_CONCURRENCY", 32),
            max_requests: knob("BYOK_E2E_MAX_REQUESTS", 10_000_000),
            server_threads: knob("BYOK_E2E_SERVER_THREADS", 1),
            rate: knob("BYOK_E2E_RATE", 0.0),
            quiet_threshold: knob("BYOK_E2E_QUIET_SHARE", 0.10),
            quiet_max_wait: Duration::from_secs_f64(knob("BYOK_E2E_QUIET_MAX_WAIT", 3.0)),
        }
    };
    assert!(settings.rounds > 0 && settings.concurrency > 0 && settings.seconds > 0.0);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(settings.server_threads)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    let (addr_a, addr_b) = runtime.block_on(start_servers(dir.path()));

    let offered = if settings.rate > 0.0 {
        format!("{:.0} req/s offered", settings.rate)
    } else {
        "closed loop, as fast as it goes".to_owned()
    };
    println!(
        "e2e: {} CPUs ({}), server runtime {} worker threads; generator 1 thread, {} \
         keep-alive connections, {}; {} rounds x {} s per app, alternating A B; \
         {} users x 3 keys, cache warm",
        cpus,
        cpu_model(),
        settings.server_threads,
        settings.concurrency,
        offered,
        settings.rounds,
        settings.seconds,
        USERS
    );
    if settings.warmup_seconds > 0.0 {
        for addr in [addr_a, addr_b] {
            run_round(&settings, addr, settings.warmup_seconds, cpus);
        }
    }

    println!(
        "\n{:>5} {:>3} {:>8} {:>7} {:>7} {:>8} {:>10} {:>8} {:>6} {:>6} {:>6} {:>5}",
        "round",
        "app",
        "req/s",
        "p50 µs",
        "p99 µs",
        "requests",
        "cpu ns/req",
        "(ticks)",
        "server",
        "gen",
        "others",
        "wait"
    );
    let mut rounds_a = Vec::new();
    let mut rounds_b = Vec::new();
    for r in 1..=settings.rounds {
        for (name, addr) in [("A", addr_a), ("B", addr_b)] {
            let round = run_round(&settings, addr, settings.seconds, cpus);
            println!(
                "{:>5} {:>3} {:>8.0} {:>7.1} {:>7.1} {:>8} {:>10.0} {:>8.0} {:>5.0}% {:>5.0}% {:>5.0}% {:>4.1}s",
                r,
                name,
                round.rps(),
                round.p50_ns as f64 / 1e3,
                round.p99_ns as f64 / 1e3,
                round.requests,
                round.cpu_per_request(),
                round.ticks_per_request(),
                round.cpu_share() * 100.0,
                round.generator_share() * 100.0,
                round.others_share * 100.0,
                round.waited.as_secs_f64()
            );
            if round.errors > 0 {
                println!("      {} errors in this round", round.errors);
            }
            if name == "A" {
                rounds_a.push(round);
            } else {
                rounds_b.push(round);
            }
        }
    }
    println!(
        "(server, gen: CPU of the server and generator processes as % of one CPU; others: \
         CPU of all other processes as % of the machine; wait: waiting for others to go \
         below {:.0}% before the round)",
        settings.quiet_threshold * 100.0
    );

    let errors: u64 = rounds_a.iter().chain(&rounds_b).map(|r| r.errors).sum();
    let all: Vec<usize> = (0..settings.rounds).collect();
    let quiet: Vec<usize> = all
        .iter()
        .copied()
        .filter(|&i| {
            rounds_a[i].others_share < settings.quiet_threshold
                && rounds_b[i].others_share < settings.quiet_threshold
        })
        .collect();
    let mut summary = serde_json::Map::new();
    let added = report(
        &format!("all {} round pairs", all.len()),
        &rounds_a,
        &rounds_b,
        &all,
        &mut summary,
    );
    if !quiet.is_empty() && quiet.len() < all.len() {
        let mut quiet_summary = serde_json::Map::new();
        report(
            &format!(
                "the {} round pairs with others below {:.0}%",
                quiet.len(),
                settings.quiet_threshold * 100.0
            ),
            &rounds_a,
            &rounds_b,
            &quiet,
            &mut quiet_summary,
        );
        summary.insert("quiet_pairs".into(), quiet_summary.into());
    }

    let pass = added <= TARGET_ADDED_CPU_NS && errors == 0;
    println!(
        "\ntarget: server CPU added <= {TARGET_ADDED_CPU_NS:.0} ns/request -> {added:+.0} ns \
         (difference of the medians over all pairs): {}",
        if pass { "PASS" } else { "FAIL" }
    );
    if errors > 0 {
        println!("{errors} requests failed: the figures are not valid");
    }
    if smoke {
        println!("(smoke run: pass --bench, as `cargo bench` does, for the real measurement)");
    }

    let per_round = |rounds: &[Round]| -> Vec<serde_json::Value> {
        rounds
            .iter()
            .map(|r| {
                serde_json::json!({
                    "rps": r.rps(),
                    "p50_us": r.p50_ns as f64 / 1e3,
                    "p99_us": r.p99_ns as f64 / 1e3,
                    "requests": r.requests,
                    "errors": r.errors,
                    "cpu_ns_per_req": r.cpu_per_request(),
                    "others_share": r.others_share,
                })
            })
            .collect()
    };
    summary.insert("rounds_a".into(), per_round(&rounds_a).into());
    summary.insert("rounds_b".into(), per_round(&rounds_b).into());
    summary.insert("cpus".into(), cpus.into());
    summary.insert("cpu_model".into(), cpu_model().into());
    summary.insert("server_threads".into(), settings.server_threads.into());
    summary.insert("rounds".into(), settings.rounds.into());
    summary.insert("seconds".into(), settings.seconds.into());
    summary.insert("concurrency".into(), settings.concurrency.into());
    summary.insert("rate".into(), settings.rate.into());
    summary.insert("errors".into(), errors.into());
    summary.insert("target_ns".into(), TARGET_ADDED_CPU_NS.into());
    summary.insert("pass".into(), pass.into());
    println!("BYOK_E2E_SUMMARY {}", serde_json::Value::Object(summary));
    runtime.shutdown_timeout(Duration::from_secs(1));
}

/// A row of the summary: its label, its key in the JSON summary, and how to read it.
type Metric = (&'static str, &'static str, fn(&Round) -> f64);

/// Prints the medians of the round pairs `pairs` and their ratios; fills `summary`;
/// returns the server CPU added per request (difference of the medians).
fn report(
    title: &str,
    rounds_a: &[Round],
    rounds_b: &[Round],
    pairs: &[usize],
    summary: &mut serde_json::Map<String, serde_json::Value>,
) -> f64 {
    let med = |rounds: &[Round], f: fn(&Round) -> f64| {
        median(pairs.iter().map(|&i| f(&rounds[i])).collect())
    };
    let metrics: [Metric; 5] = [
        ("req/s", "rps", Round::rps),
        ("p50 µs", "p50_us", |r| r.p50_ns as f64 / 1e3),
        ("p99 µs", "p99_us", |r| r.p99_ns as f64 / 1e3),
        (
            "server CPU ns/req",
            "cpu_ns_per_req",
            Round::cpu_per_request,
        ),
        (
            "  (from 10 ms ticks)",
            "cpu_ns_per_req_ticks",
            Round::ticks_per_request,
        ),
    ];
    println!(
        "\nmedians over {title}:\n{:<22} {:>10} {:>10} {:>8} {:>9}",
        "", "A bare", "B byok", "B/A", "B-A"
    );
    for (label, key, f) in metrics {
        let (a, b) = (med(rounds_a, f), med(rounds_b, f));
        println!(
            "{:<22} {:>10.1} {:>10.1} {:>8.3} {:>+9.1}",
            label,
            a,
            b,
            b / a,
            b - a
        );
        summary.insert(
            key.to_owned(),
            serde_json::json!({ "a": a, "b": b, "ratio": b / a, "diff": b - a }),
        );
    }
    let paired: Vec<f64> = pairs
        .iter()
        .map(|&i| rounds_b[i].cpu_per_request() - rounds_a[i].cpu_per_request())
        .collect();
    let added = med(rounds_b, Round::cpu_per_request) - med(rounds_a, Round::cpu_per_request);
    let paired_median = median(paired.clone());
    let lo = paired.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = paired.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    println!(
        "server CPU added per request (B-A): {added:+.0} ns (difference of medians); \
         per pair {}; median of pairs {paired_median:+.0} ns, range {lo:+.0} .. {hi:+.0}",
        paired
            .iter()
            .map(|d| format!("{d:+.0}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    summary.insert("pairs".into(), pairs.len().into());
    summary.insert("cpu_added_ns_per_request".into(), added.into());
    summary.insert("cpu_added_paired_median_ns".into(), paired_median.into());
    summary.insert("cpu_added_paired_ns".into(), paired.into());
    added
}

// ---------------------------------------------------------------------------------------
// Load generator process
// ---------------------------------------------------------------------------------------

type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

/// The request for user `n`: the same for A and B.
fn request(users: &[http::HeaderValue], n: usize) -> Request<Empty<Bytes>> {
    Request::get("/")
        .header(header::HOST, "127.0.0.1")
        .header("x-user", users[n % users.len()].clone())
        .body(Empty::new())
        .expect("request")
}

/// Sends one request; whether it got `200` with body `3`.
async fn exchange(sender: &mut Sender, req: Request<Empty<Bytes>>) -> bool {
    if sender.ready().await.is_err() {
        return false;
    }
    let Ok(res) = sender.send_request(req).await else {
        return false;
    };
    let ok = res.status() == StatusCode::OK;
    match res.into_body().collect().await {
        Ok(body) => ok && body.to_bytes() == "3",
        Err(_) => false,
    }
}

fn load_generator() {
    let target: SocketAddr = std::env::var(TARGET)
        .expect("BYOK_E2E_TARGET")
        .parse()
        .expect("target address");
    assert_eq!(
        target.ip(),
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        "the load generator only targets 127.0.0.1"
    );
    let seconds: f64 = knob("BYOK_E2E_SECONDS", 3.0);
    let duration = Duration::from_secs_f64(seconds.clamp(0.01, 600.0));
    let concurrency: usize = knob("BYOK_E2E_CONCURRENCY", 32);
    let max_requests: u64 = knob("BYOK_E2E_MAX_REQUESTS", 10_000_000);
    let per_connection = (max_requests / concurrency as u64).max(1);
    let rate: f64 = knob("BYOK_E2E_RATE", 0.0);
    // With a rate, each connection sends on its own schedule, spread over the interval.
    let interval = (rate > 0.0).then(|| Duration::from_secs_f64(concurrency as f64 / rate));
    let users: Vec<http::HeaderValue> = (0..USERS)
        .map(|n| http::HeaderValue::from_str(&user_id(n)).expect("header value"))
        .collect();

    // One thread: the generator takes at most one CPU from the server.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let mut senders = Vec::with_capacity(concurrency);
        for c in 0..concurrency {
            let stream = tokio::net::TcpStream::connect(target)
                .await
                .expect("connect");
            stream.set_nodelay(true).ok();
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream))
                    .await
                    .expect("handshake");
            tokio::spawn(async move {
                connection.await.ok();
            });
            // One request per connection, so the server has accepted them all.
            assert!(
                exchange(&mut sender, request(&users, c)).await,
                "first request failed"
            );
            senders.push(sender);
        }
        println!("ready");
        std::io::stdout().flush().expect("flush");
        let mut go = String::new();
        std::io::stdin().read_line(&mut go).expect("read go");
        if go.trim() != "go" {
            return;
        }

        let cpu_before = CpuSnapshot::now();
        let start = Instant::now();
        let deadline = start + duration;
        let expected = ((duration.as_secs_f64() * 150_000.0 / concurrency as f64) as u64)
            .min(per_connection) as usize;
        let tasks: Vec<_> = senders
            .into_iter()
            .enumerate()
            .map(|(c, mut sender)| {
                let users = users.clone();
                tokio::spawn(async move {
                    let mut latencies: Vec<u64> = Vec::with_capacity(expected);
                    let mut errors = 0u64;
                    let mut n = c * 37;
                    let mut next =
                        interval.map(|i| start + i.mul_f64(c as f64 / concurrency as f64));
                    while (latencies.len() as u64 + errors) < per_connection
                        && Instant::now() < deadline
                    {
                        if let (Some(at), Some(interval)) = (next.as_mut(), interval) {
                            tokio::time::sleep_until((*at).into()).await;
                            *at += interval;
                        }
                        let req = request(&users, n);
                        n += 1;
                        let sent = Instant::now();
                        if exchange(&mut sender, req).await {
                            latencies.push(sent.elapsed().as_nanos() as u64);
                        } else {
                            errors += 1;
                            if sender.is_closed() {
                                break;
                            }
                        }
                    }
                    (sender, latencies, errors)
                })
            })
            .collect();
        let mut open = Vec::with_capacity(concurrency);
        let mut latencies = Vec::new();
        let mut errors = 0;
        for task in tasks {
            let (sender, lat, err) = task.await.expect("connection task");
            open.push(sender);
            latencies.extend(lat);
            errors += err;
        }
        let elapsed = start.elapsed();
        // The server reads its CPU time now, before any connection closes.
        println!("done");
        std::io::stdout().flush().expect("flush");
        let (sched_ns, ticks_ns, _) = cpu_before.until(&CpuSnapshot::now());

        latencies.sort_unstable();
        let pct = |p: f64| -> u64 {
            if latencies.is_empty() {
                0
            } else {
                latencies[((latencies.len() - 1) as f64 * p).round() as usize]
            }
        };
        println!(
            "result requests={} errors={} elapsed_ns={} p50_ns={} p99_ns={} cpu_ns={}",
            latencies.len(),
            errors,
            elapsed.as_nanos(),
            pct(0.50),
            pct(0.99),
            sched_ns.unwrap_or(ticks_ns)
        );
        std::io::stdout().flush().expect("flush");
        drop(open);
    });
}
