//! The server process: the two apps, the rounds against them, and the report.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use axum::routing::get;
use axum::serve::ListenerExt;
use axum::Router;
use tower_byok::resolve::FromHeader;
use tower_byok::{ByokLayer, Keyring, MasterKey, SqliteStore, UserKeys, Vault};

use crate::cpu::{wait_for_quiet, CpuSnapshot, SystemCpu};
use crate::support::{keys_of, knob};
use crate::{user_id, ROLE, TARGET, TARGET_ADDED_CPU_NS, USERS};

pub(crate) struct Settings {
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

pub(crate) async fn bare() -> &'static str {
    "3"
}

pub(crate) async fn with_keys(keys: UserKeys) -> &'static str {
    if keys.len() == 3 {
        "3"
    } else {
        "?"
    }
}

/// Builds the vault, warms its cache, closes its database, and serves A and B.
pub(crate) async fn start_servers(dir: &std::path::Path) -> (SocketAddr, SocketAddr) {
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

pub(crate) struct Round {
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
pub(crate) fn run_round(
    settings: &Settings,
    target: SocketAddr,
    seconds: f64,
    cpus: usize,
) -> Round {
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

pub(crate) fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

pub(crate) fn cpu_model() -> String {
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

pub(crate) fn server() {
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
pub(crate) type Metric = (&'static str, &'static str, fn(&Round) -> f64);

/// Prints the medians of the round pairs `pairs` and their ratios; fills `summary`;
/// returns the server CPU added per request (difference of the medians).
pub(crate) fn report(
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
