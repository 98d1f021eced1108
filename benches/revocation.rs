//! How fast a revocation reaches another process, and what following the change feed
//! costs when nothing changes.
//!
//! For each way of following the feed (PostgreSQL with `LISTEN`, PostgreSQL polling
//! only, the same two behind the transaction-mode PgBouncer of `.ci/test`, `LISTEN`
//! over a direct URL, and SQLite polling), this program (the writer) starts itself again as a reader
//! process on the same database, with a cache TTL of an hour. The reader caches every
//! user's key; then the writer deletes them one by one, at random gaps of 1 to 9 ms, and
//! after each delete returns it tells the reader the user and the time. The reader checks
//! its pending users every 100 µs through `Vault::keys_for` (a cache hit until the
//! invalidation arrives) and records, per user, the time from the writer's commit to the
//! first answer without the key. Both processes read the same system clock.
//!
//! Then, with nothing changing, the reader measures its own CPU time over an idle
//! window (per thread, from `/proc/self/task/*/schedstat`) and the writer counts the
//! database's transactions over it (`pg_stat_database.xact_commit`, PostgreSQL only,
//! read after the statistics of the window have been flushed, the reader stopped);
//! finally the reader times cache hits with its feed running. A reader with the feed
//! turned off gives the floor for both.
//!
//! Run: `bash .ci/test --run cargo bench --all-features --bench revocation` (PostgreSQL
//! modes need `BYOK_TEST_POSTGRES_URL`, which `.ci/test` sets; without it they are
//! skipped). Knobs: `BYOK_REVOCATIONS` (1000 per mode), `BYOK_IDLE_SECONDS` (10),
//! `BYOK_POLL_MS` (1000), `BYOK_HITS` (2,000,000), `BYOK_MODES` (only the modes whose
//! name contains it). Without `--bench` (as under
//! `cargo test --benches`) it runs 20 revocations and 1 idle second per mode as a smoke
//! test.

// Printing the results is the point of this program.
#![allow(clippy::print_stdout, clippy::unwrap_used, missing_docs)]

#[path = "support/mod.rs"]
#[allow(dead_code)]
mod support;

#[path = "e2e/cpu.rs"]
#[allow(dead_code)]
mod cpu;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use support::knob;
use tower_byok::{Keyring, MasterKey, SqliteStore, Vault};

const ROLE: &str = "BYOK_REVOCATION_ROLE";
const DB: &str = "BYOK_REVOCATION_DB";
const WATCH: &str = "BYOK_REVOCATION_WATCH";
const LISTEN: &str = "BYOK_REVOCATION_LISTEN";
/// Set when `DB` is a transaction-mode pooler's URL: the server's own URL, for `LISTEN`
/// (empty: none, the feed polls).
const DIRECT: &str = "BYOK_REVOCATION_DIRECT";

fn keyring() -> Keyring {
    Keyring::new(MasterKey::from_bytes("k1", [7; 32]).unwrap())
}

fn micros_now() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros()
}

/// `pooled`: behind a transaction-mode pooler, with the direct URL if any.
async fn open(url: &str, pooled: Option<&str>, watch: bool, listen: bool, poll: Duration) -> Vault {
    macro_rules! build {
        ($store:expr) => {
            Vault::builder($store, keyring())
                .cache_ttl(Duration::from_secs(3600))
                .watch_changes(watch)
                .listen_for_changes(listen)
                .poll_interval(poll)
                .open()
                .await
                .unwrap()
        };
    }
    if url.starts_with("sqlite:") {
        build!(SqliteStore::connect(url).await.unwrap())
    } else {
        let mut store = tower_byok::PostgresStore::connect(url).await.unwrap();
        if let Some(direct) = pooled {
            store = store.pool_mode(tower_byok::PoolMode::Transaction);
            if !direct.is_empty() {
                store = store.direct_url(direct).unwrap();
            }
        }
        build!(store)
    }
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    if std::env::var(ROLE).as_deref() == Ok("reader") {
        runtime.block_on(reader());
    } else {
        runtime.block_on(writer());
    }
}

// ---------------------------------------------------------------- the reader process

async fn reader() {
    let url = std::env::var(DB).unwrap();
    let watch = std::env::var(WATCH).as_deref() == Ok("1");
    let listen = std::env::var(LISTEN).as_deref() == Ok("1");
    let poll = Duration::from_millis(knob("BYOK_POLL_MS", 1000));
    let pooled = std::env::var(DIRECT).ok();
    let vault = open(&url, pooled.as_deref(), watch, listen, poll).await;
    let pending: Arc<Mutex<HashMap<String, u128>>> = Arc::default();
    let latencies: Arc<Mutex<Vec<u128>>> = Arc::default();
    let checker = {
        let (vault, pending, latencies) = (vault.clone(), pending.clone(), latencies.clone());
        tokio::spawn(async move {
            loop {
                let users: Vec<(String, u128)> = pending
                    .lock()
                    .unwrap()
                    .iter()
                    .map(|(u, t)| (u.clone(), *t))
                    .collect();
                for (user, t0) in users {
                    if vault.keys_for(&user).await.unwrap().is_empty() {
                        let seen = micros_now();
                        pending.lock().unwrap().remove(&user);
                        latencies.lock().unwrap().push(seen.saturating_sub(t0));
                    }
                }
                tokio::time::sleep(Duration::from_micros(100)).await;
            }
        })
    };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            if tx.send(line.unwrap()).is_err() {
                return;
            }
        }
    });
    while let Some(line) = rx.recv().await {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["load", user] => {
                assert!(!vault.keys_for(user).await.unwrap().is_empty());
                println!("ok");
            }
            ["watch", user, t0] => {
                pending
                    .lock()
                    .unwrap()
                    .insert((*user).to_owned(), t0.parse().unwrap());
            }
            ["finish"] => {
                let deadline = Instant::now() + Duration::from_secs(30);
                while !pending.lock().unwrap().is_empty() && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                let missed = pending.lock().unwrap().len();
                let lat = latencies.lock().unwrap();
                let lat: Vec<String> = lat.iter().map(u128::to_string).collect();
                println!("missed {missed} lat {}", lat.join(","));
            }
            ["idle", seconds] => {
                checker.abort();
                let before = cpu::CpuSnapshot::now();
                tokio::time::sleep(Duration::from_secs(seconds.parse().unwrap())).await;
                let (sched, ticks, _) = before.until(&cpu::CpuSnapshot::now());
                println!("idle {}", sched.unwrap_or(ticks));
            }
            ["hits", n] => {
                let n: u32 = n.parse().unwrap();
                vault
                    .put("hit-user", "openai", "sk-hit-0123456789")
                    .await
                    .unwrap();
                vault.keys_for("hit-user").await.unwrap();
                let started = Instant::now();
                for _ in 0..n {
                    std::hint::black_box(vault.keys_for("hit-user").await.unwrap());
                }
                println!("hits {}", started.elapsed().as_nanos() / u128::from(n));
            }
            other => panic!("unknown command {other:?}"),
        }
        std::io::stdout().flush().unwrap();
    }
}

// ---------------------------------------------------------------- the writer process

struct Reader {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Reader {
    fn start(url: &str, pooled: Option<&str>, watch: bool, listen: bool) -> Self {
        let mut command = Command::new(std::env::current_exe().unwrap());
        if let Some(direct) = pooled {
            command.env(DIRECT, direct);
        }
        let mut child = command
            .args(std::env::args().skip(1))
            .env(ROLE, "reader")
            .env(DB, url)
            .env(WATCH, if watch { "1" } else { "0" })
            .env(LISTEN, if listen { "1" } else { "0" })
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        Self {
            child,
            stdin,
            stdout,
        }
    }

    fn send(&mut self, line: &str) {
        writeln!(self.stdin, "{line}").unwrap();
        self.stdin.flush().unwrap();
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{name}");
    }

    fn ask(&mut self, line: &str) -> String {
        self.send(line);
        let mut answer = String::new();
        self.stdout.read_line(&mut answer).unwrap();
        answer.trim().to_owned()
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Mode {
    name: &'static str,
    url: String,
    /// Behind the transaction-mode PgBouncer: the direct URL, empty for none.
    pooled: Option<String>,
    /// Where the database's statistics are read, when not `url`: the server itself.
    stats_url: Option<String>,
    watch: bool,
    listen: bool,
}

fn percentile(sorted: &[u128], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

async fn xact_commits(url: &str) -> Option<i64> {
    if url.starts_with("sqlite:") {
        return None;
    }
    let pool = sqlx::PgPool::connect(url).await.unwrap();
    let n = sqlx::query_scalar(
        "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    pool.close().await;
    Some(n)
}

async fn fresh_postgres(server: &str, name: &str) -> String {
    let admin = sqlx::PgPool::connect(server).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {name}"
    )))
    .execute(&admin)
    .await
    .unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&admin)
        .await
        .unwrap();
    admin.close().await;
    let (base, _) = server.split_once('?').unwrap_or((server, ""));
    let (host, _) = base.rsplit_once('/').unwrap();
    format!("{host}/{name}")
}

async fn writer() {
    let full = std::env::args().any(|a| a == "--bench");
    let revocations: usize = knob("BYOK_REVOCATIONS", if full { 1000 } else { 20 });
    let idle_seconds: u64 = knob("BYOK_IDLE_SECONDS", if full { 10 } else { 1 });
    let hits: u32 = knob("BYOK_HITS", if full { 2_000_000 } else { 1000 });
    let poll_ms: u64 = knob("BYOK_POLL_MS", 1000);
    let dir = tempfile::tempdir().unwrap();
    let sqlite = |name: &str| format!("sqlite://{}?mode=rwc", dir.path().join(name).display());
    let mut modes = Vec::new();
    match std::env::var("BYOK_TEST_POSTGRES_URL") {
        Ok(server) => {
            modes.push(Mode {
                name: "PostgreSQL, LISTEN/NOTIFY",
                url: fresh_postgres(&server, "byok_revocation_notify").await,
                pooled: None,
                stats_url: None,
                watch: true,
                listen: true,
            });
            modes.push(Mode {
                name: "PostgreSQL, polling only",
                url: fresh_postgres(&server, "byok_revocation_poll").await,
                pooled: None,
                stats_url: None,
                watch: true,
                listen: false,
            });
            modes.push(Mode {
                name: "PostgreSQL, feed off (floor)",
                url: fresh_postgres(&server, "byok_revocation_off").await,
                pooled: None,
                stats_url: None,
                watch: false,
                listen: false,
            });
        }
        Err(_) => println!("BYOK_TEST_POSTGRES_URL is not set: PostgreSQL modes skipped"),
    }
    match (
        std::env::var("BYOK_TEST_POSTGRES_URL"),
        std::env::var("BYOK_TEST_PGBOUNCER_TRANSACTION_URL"),
    ) {
        (Ok(server), Ok(pooler)) => {
            for (name, db, listen) in [
                (
                    "PgBouncer (transaction), LISTEN over a direct URL",
                    "byok_revocation_pgb_listen",
                    true,
                ),
                (
                    "PgBouncer (transaction), polling only",
                    "byok_revocation_pgb_poll",
                    false,
                ),
            ] {
                let direct = fresh_postgres(&server, db).await;
                let (host, _) = pooler.rsplit_once('/').unwrap();
                modes.push(Mode {
                    name,
                    url: format!("{host}/{db}"),
                    pooled: Some(if listen {
                        direct.clone()
                    } else {
                        String::new()
                    }),
                    stats_url: Some(direct),
                    watch: true,
                    listen,
                });
            }
        }
        _ => println!("BYOK_TEST_PGBOUNCER_TRANSACTION_URL is not set: PgBouncer modes skipped"),
    }
    modes.push(Mode {
        name: "SQLite, polling",
        url: sqlite("poll.db"),
        pooled: None,
        stats_url: None,
        watch: true,
        listen: false,
    });
    modes.push(Mode {
        name: "SQLite, feed off (floor)",
        url: sqlite("off.db"),
        pooled: None,
        stats_url: None,
        watch: false,
        listen: false,
    });

    println!(
        "{revocations} revocations per mode, poll interval {poll_ms} ms, idle window {idle_seconds} s\n"
    );
    println!("| mode | revocations | missed | p50 ms | p99 ms | max ms | idle CPU µs/s | DB transactions/s | hit ns |");
    println!("|---|---|---|---|---|---|---|---|---|");
    // `BYOK_MODES=PgBouncer` runs only the modes whose name contains it.
    let only = std::env::var("BYOK_MODES").unwrap_or_default();
    for mode in modes.iter().filter(|m| m.name.contains(only.as_str())) {
        let stats_url = mode.stats_url.as_deref().unwrap_or(&mode.url);
        let pooled = mode.pooled.as_deref();
        let writer = open(&mode.url, pooled, false, false, Duration::from_secs(1)).await;
        let users: Vec<String> = (0..revocations).map(|i| format!("user-{i}")).collect();
        for user in &users {
            writer
                .put(user, "openai", "sk-revocable-0123456789")
                .await
                .unwrap();
        }
        let mut reader = Reader::start(&mode.url, pooled, mode.watch, mode.listen);
        for user in &users {
            assert_eq!(reader.ask(&format!("load {user}")), "ok");
        }
        let (mut missed, mut p50, mut p99, mut max) = (String::new(), f64::NAN, f64::NAN, f64::NAN);
        if mode.watch {
            let mut gap = 0x2545_f491_u64;
            for user in &users {
                writer.delete_all(user).await.unwrap();
                reader.send(&format!("watch {user} {}", micros_now()));
                // xorshift: gaps of 1 to 9 ms, so deletes do not line up with polls.
                gap ^= gap << 13;
                gap ^= gap >> 7;
                gap ^= gap << 17;
                tokio::time::sleep(Duration::from_millis(1 + gap % 9)).await;
            }
            let answer = reader.ask("finish");
            let (head, lat) = answer.split_once(" lat ").unwrap();
            missed = head.trim_start_matches("missed ").to_owned();
            let mut lat: Vec<u128> = lat
                .split(',')
                .filter(|s| !s.is_empty())
                .map(|s| s.parse().unwrap())
                .collect();
            lat.sort_unstable();
            if !lat.is_empty() {
                p50 = percentile(&lat, 0.50);
                p99 = percentile(&lat, 0.99);
                max = percentile(&lat, 1.0);
            }
        }
        // PostgreSQL counts a backend's transactions in pg_stat_database when it flushes
        // its statistics: at most once a second, and within 10 s of going idle. So wait
        // for everything before the window to be counted, and after it, stop the reader
        // (SIGSTOP) and wait again, so that exactly its window is counted.
        tokio::time::sleep(Duration::from_secs(if full { 11 } else { 1 })).await;
        let before = xact_commits(stats_url).await;
        let idle = reader.ask(&format!("idle {idle_seconds}"));
        reader.signal("STOP");
        tokio::time::sleep(Duration::from_secs(if full { 11 } else { 1 })).await;
        let after = xact_commits(stats_url).await;
        reader.signal("CONT");
        let idle_ns: f64 = idle.trim_start_matches("idle ").parse().unwrap();
        let per_second = |n: f64| n / idle_seconds as f64;
        let xacts = match (before, after) {
            // Minus the one transaction of the `after` count itself.
            (Some(b), Some(a)) => format!("{:.1}", per_second((a - b - 1).max(0) as f64)),
            _ => "n/a".to_owned(),
        };
        let hit = reader.ask(&format!("hits {hits}"));
        println!(
            "| {} | {} | {} | {p50:.1} | {p99:.1} | {max:.1} | {:.0} | {xacts} | {} |",
            mode.name,
            if mode.watch { revocations } else { 0 },
            if mode.watch { missed.as_str() } else { "n/a" },
            per_second(idle_ns) / 1000.0,
            hit.trim_start_matches("hits "),
        );
    }
}
