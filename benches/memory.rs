//! Resident memory per cached user: 100,000 users with three keys each, loaded into the
//! vault's cache through `Vault::keys_for`, measured as the growth of the process's
//! resident set (`VmRSS` in `/proc/self/status`), at 10 %, 50 % and 100 % of the users.
//!
//! Keys are stored with `Vault::put` (sealed by the crate) into a SQLite file in a
//! temporary directory. To keep 300,000 single-key commits to about a minute, the bench
//! hands the vault its own pool (`SqliteStore::from_pool`) with `synchronous = OFF` (no
//! fsync per commit); the rows and the read path are those of any SQLite vault.
//!
//! Before the baseline, every user's keys are read once straight from the database
//! (`Vault::get_all`, which bypasses the cache), so SQLite's page caches and the
//! allocator's arenas are at their steady size and what grows afterwards is the cache.
//! After the last checkpoint the database pool is closed and every user is asked for
//! again: each must be a hit, which proves no entry was evicted or expired.
//!
//! RSS counts what the allocator holds, not only what it hands out: per-allocation
//! headers, size-class rounding and free chunks inside the heap are included, as they are
//! for a real server using the same allocator (here the system allocator, glibc malloc).
//!
//! Run: `cargo bench --bench memory`. Knobs (environment): `BYOK_MEM_USERS` (100,000),
//! `BYOK_MEM_CONCURRENCY` (8 concurrent loads). Without `--bench` (as under
//! `cargo test --benches`) it runs with 2,000 users as a smoke test.

// Printing the results is the point of this program.
#![allow(clippy::print_stdout)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use tower_byok::{Keyring, MasterKey, SqliteStore, Vault};

mod support;
use support::{keys_of, knob};

const TARGET_BYTES_PER_USER: f64 = 1.4 * 1024.0;

/// User ids as an application might have them: 16 characters.
fn user_id(n: usize) -> String {
    format!("user-{n:011}")
}

/// The resident set size of this process, in bytes.
fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .expect("VmRSS line");
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .expect("VmRSS value");
    kib * 1024
}

/// Runs `f` for every user in `range`, `concurrency` at a time.
async fn for_users<F, Fut>(range: std::ops::Range<usize>, concurrency: usize, f: F)
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let f = Arc::new(f);
    let mut workers = tokio::task::JoinSet::new();
    for w in 0..concurrency {
        let f = f.clone();
        let range = range.clone();
        workers.spawn(async move {
            for n in range.skip(w).step_by(concurrency) {
                f(n).await;
            }
        });
    }
    while let Some(done) = workers.join_next().await {
        done.expect("worker");
    }
}

fn main() {
    let smoke = !std::env::args().any(|a| a == "--bench");
    let users: usize = if smoke {
        2_000
    } else {
        knob("BYOK_MEM_USERS", 100_000)
    };
    let concurrency: usize = knob("BYOK_MEM_CONCURRENCY", 8).max(1);
    let checkpoints = [users / 10, users / 2, users];

    // One thread runs the vault (sealing, opening, caching); SQLite works on sqlx's
    // connection threads.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let dir = tempfile::tempdir().expect("temp dir");
        let options = SqliteConnectOptions::new()
            .filename(dir.path().join("keys.db"))
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // Bench data: no fsync per commit.
            .synchronous(SqliteSynchronous::Off)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await
            .expect("sqlite pool");
        let keyring = Keyring::new(MasterKey::generate("k1").expect("master key"));
        let vault = Vault::builder(SqliteStore::from_pool(pool.clone()), keyring)
            .cache_capacity(users.max(100_000) as u64)
            // Longer than the run: nothing expires while it is measured.
            .cache_ttl(Duration::from_secs(3600))
            .open()
            .await
            .expect("vault");

        println!(
            "memory: {} users x 3 keys (51, 39, 36 chars), cache capacity {}, {} concurrent loads",
            users,
            users.max(100_000),
            concurrency
        );
        let started = Instant::now();
        // One writer at a time: SQLite has one write lock, and waiting on it sleeps.
        for n in 0..users {
            let user = user_id(n);
            for (provider, secret) in keys_of(n) {
                vault.put(&user, provider, &secret).await.expect("put");
            }
        }
        println!(
            "stored {} keys in {:.1} s",
            users * 3,
            started.elapsed().as_secs_f64()
        );

        let started = Instant::now();
        let v = vault.clone();
        for_users(0..users, concurrency, move |n| {
            let v = v.clone();
            async move {
                let keys = v.get_all(&user_id(n)).await.expect("get_all");
                assert_eq!(keys.len(), 3);
            }
        })
        .await;
        println!(
            "pre-pass (database reads, not cached) in {:.1} s",
            started.elapsed().as_secs_f64()
        );

        let baseline = rss_bytes();
        println!("\nbaseline RSS {:.1} MiB\n", baseline as f64 / 1048576.0);
        println!(
            "{:>9} {:>12} {:>14} {:>15} {:>20} {:>9}",
            "users", "RSS MiB", "growth MiB", "bytes/user", "bytes/user (step)", "load s"
        );
        let mut loaded = 0;
        let mut previous = baseline;
        let mut rows = Vec::new();
        for &checkpoint in &checkpoints {
            let started = Instant::now();
            let v = vault.clone();
            for_users(loaded..checkpoint, concurrency, move |n| {
                let v = v.clone();
                async move {
                    let keys = v.keys_for(&user_id(n)).await.expect("keys_for");
                    assert_eq!(keys.len(), 3);
                }
            })
            .await;
            let seconds = started.elapsed().as_secs_f64();
            let rss = rss_bytes();
            let per_user = (rss as f64 - baseline as f64) / checkpoint as f64;
            let step = (rss as f64 - previous as f64) / (checkpoint - loaded) as f64;
            println!(
                "{:>9} {:>12.1} {:>14.1} {:>15.0} {:>20.0} {:>9.1}",
                checkpoint,
                rss as f64 / 1048576.0,
                (rss as f64 - baseline as f64) / 1048576.0,
                per_user,
                step,
                seconds
            );
            rows.push(serde_json::json!({
                "users": checkpoint,
                "rss_bytes": rss,
                "bytes_per_user": per_user,
                "bytes_per_user_step": step,
            }));
            loaded = checkpoint;
            previous = rss;
        }

        // Every user must now be a hit: with the database closed, a miss fails.
        pool.close().await;
        let started = Instant::now();
        let mut misses = 0usize;
        for n in 0..users {
            match vault.keys_for(&user_id(n)).await {
                Ok(keys) if keys.len() == 3 => {}
                _ => misses += 1,
            }
        }
        let hit_ns = started.elapsed().as_nanos() as f64 / users as f64;
        println!(
            "\nall {users} users asked again with the database closed: {misses} misses, {hit_ns:.0} ns per lookup"
        );

        let per_user = (previous as f64 - baseline as f64) / users as f64;
        let pass = per_user <= TARGET_BYTES_PER_USER && misses == 0;
        println!(
            "target: resident bytes per cached user (3 keys) at {} users <= {:.0} B (1.4 KiB) -> {:.0} B ({:.2} KiB): {}",
            users,
            TARGET_BYTES_PER_USER,
            per_user,
            per_user / 1024.0,
            if pass { "PASS" } else { "FAIL" }
        );
        if smoke {
            println!("(smoke run: pass --bench, as `cargo bench` does, for the real measurement)");
        }
        println!(
            "BYOK_MEMORY_SUMMARY {}",
            serde_json::json!({
                "users": users,
                "baseline_rss_bytes": baseline,
                "checkpoints": rows,
                "bytes_per_user": per_user,
                "misses_after": misses,
                "target_bytes": TARGET_BYTES_PER_USER,
                "pass": pass,
            })
        );
    });
}
