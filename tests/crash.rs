//! Crash consistency on SQLite: a process storing keys and a process rewrapping them
//! after a master-key rotation, both SIGKILLed at random moments, round after round, on
//! one database file. After every round the file passes `PRAGMA integrity_check`, every
//! write a writer acknowledged (printed only after `put` returned) is present and opens
//! to its secret, and every row opens.
//!
//! The children are this test binary started again in a child mode (the `#[ignore]`d
//! `child` entry). A kill of a process leaves the kernel's page cache intact, so this
//! tests SQLite's transactions, WAL recovery and our write path, not power loss.
//!
//! `BYOK_CRASH_ROUNDS` (default 50, two kills each) and `BYOK_CRASH_SEED` (default: the
//! clock; printed) change the run.
#![cfg(feature = "sqlite")]
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use common::master;
use tower_byok::{Keyring, SqliteStore, Vault};

/// Set in a child: `write <db> <round> <active key id>` or `rewrap <db> <round> <active>`.
const CHILD_VAR: &str = "BYOK_CRASH_CHILD";

/// Both master keys, `active` first: the rounds alternate, so each round's rewrap has
/// every row of the previous rounds to re-seal.
fn keyring(active: &str) -> Keyring {
    let (k1, k2) = (master("k1", 7), master("k2", 9));
    if active == "k1" {
        Keyring::new(k1).with_key(k2).unwrap()
    } else {
        Keyring::new(k2).with_key(k1).unwrap()
    }
}

async fn open(db: &Path, active: &str) -> Vault {
    let store = SqliteStore::open(db).await.unwrap();
    Vault::builder(store, keyring(active))
        .watch_changes(false)
        .open()
        .await
        .unwrap()
}

/// The secret of an acknowledged write: it names its user and provider.
fn secret(user: &str, provider: &str) -> String {
    format!("sk-{user}-{provider}-0123456789")
}

/// Not a test: a child the crash test starts and kills. Prints `READY` once its vault is
/// open, then works until it is killed: the writer stores keys of new users and prints
/// `ACK <user> <provider>` after each `put` returned; the rewrapper rewraps in a loop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "started and killed by sigkilled_writers_and_rewraps_lose_nothing"]
#[allow(clippy::print_stdout)]
async fn child() {
    let args = std::env::var(CHILD_VAR).expect("started by the crash test");
    let args: Vec<&str> = args.split('\t').collect();
    let [mode, db, round, active] = args[..] else {
        panic!("bad child arguments: {args:?}")
    };
    let vault = open(Path::new(db), active).await;
    let mut out = std::io::stdout().lock();
    writeln!(out, "READY").unwrap();
    out.flush().unwrap();
    match mode {
        "write" => {
            for i in 0.. {
                let user = format!("r{round}-u{i}");
                let provider = ["openai", "anthropic", "exa"][i % 3];
                vault
                    .put(&user, provider, &secret(&user, provider))
                    .await
                    .unwrap();
                writeln!(out, "ACK {user} {provider}").unwrap();
                out.flush().unwrap();
            }
        }
        "rewrap" => loop {
            let report = vault.rewrap(16, |_| {}).await.unwrap();
            assert!(report.failed.is_empty(), "{report:?}");
            writeln!(out, "PASS {}", report.resealed).unwrap();
            out.flush().unwrap();
        },
        other => panic!("unknown child mode {other}"),
    }
}

/// A started child, its `READY` line read.
struct Started {
    child: Child,
    stdout: BufReader<ChildStdout>,
}

fn start(mode: &str, db: &Path, round: usize, active: &str) -> Started {
    let args = format!("{mode}\t{}\t{round}\t{active}", db.display());
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", "child", "--nocapture", "--quiet"])
        .env(CHILD_VAR, args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    loop {
        line.clear();
        assert!(
            stdout.read_line(&mut line).unwrap() > 0,
            "{mode} child exited before READY"
        );
        if line.trim() == "READY" {
            break;
        }
    }
    Started { child, stdout }
}

impl Started {
    /// SIGKILLs the child (std's `Child::kill` on Unix), reaps it, and returns the whole
    /// lines it printed. A line cut by the kill has no newline and is not counted.
    fn kill(mut self) -> Vec<String> {
        self.child.kill().unwrap();
        let status = self.child.wait().unwrap();
        assert!(!status.success(), "the child ran to its end: {status}");
        let mut rest = String::new();
        self.stdout.read_to_string(&mut rest).unwrap();
        let complete = rest.rfind('\n').map_or("", |end| &rest[..end]);
        complete.lines().map(str::to_owned).collect()
    }
}

/// xorshift64*: enough randomness for kill times, reproducible from the printed seed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

fn integrity_check(db: &Path) -> String {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let url = format!("sqlite://{}", db.display());
        let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
        let result: String = sqlx::query_scalar("PRAGMA integrity_check")
            .fetch_one(&pool)
            .await
            .unwrap();
        pool.close().await;
        result
    })
}

/// Every acknowledged write of `acks` opens to its secret, and every row opens. Returns
/// the rows, and whether rows are sealed under both master keys (a rewrap cut short).
fn check_writes(db: &Path, acks: &[(String, String)]) -> (u64, bool) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let vault = open(db, "k1").await;
        for (user, provider) in acks {
            let key = vault.get(user, provider).await.unwrap();
            let key = key.unwrap_or_else(|| panic!("acknowledged write lost: {user} {provider}"));
            assert_eq!(key.expose_secret(), secret(user, provider));
        }
        let report = vault.verify(|_| {}).await.unwrap();
        assert!(report.failed.is_empty(), "rows that do not open: {report}");
        let mixed = report.usage.iter().filter(|u| u.rows > 0).count() > 1;
        (report.opened, mixed)
    })
}

#[test]
fn sigkilled_writers_and_rewraps_lose_nothing() {
    let rounds: usize = std::env::var("BYOK_CRASH_ROUNDS").map_or(50, |v| v.parse().unwrap());
    let seed: u64 = std::env::var("BYOK_CRASH_SEED").map_or_else(
        |_| {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
            now.unwrap().as_nanos() as u64 | 1
        },
        |v| v.parse().unwrap(),
    );
    eprintln!("crash test: {rounds} rounds, BYOK_CRASH_SEED={seed}");
    let mut rng = Rng(seed);
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("keys.db");

    // Rows for the first rewrap to re-seal.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let vault = open(&db, "k1").await;
        for i in 0..200 {
            let user = format!("seed-u{i}");
            vault
                .put(&user, "openai", &secret(&user, "openai"))
                .await
                .unwrap();
        }
    });
    drop(runtime);
    let mut all_acks: Vec<(String, String)> = (0..200)
        .map(|i| (format!("seed-u{i}"), "openai".to_owned()))
        .collect();

    let started = Instant::now();
    let (mut kills, mut passes, mut rows, mut cut_short) = (0, 0, 0, 0);
    for round in 0..rounds {
        let active = if round % 2 == 0 { "k2" } else { "k1" };
        let writer = start("write", &db, round, active);
        let rewrapper = start("rewrap", &db, round, active);
        // Kill each at its own random moment, 5 to 60 ms after it was ready.
        let (first, second) = (5 + rng.below(56), 5 + rng.below(56));
        let (writer_first, gap) = if first <= second {
            (true, second - first)
        } else {
            (false, first - second)
        };
        std::thread::sleep(Duration::from_millis(first.min(second)));
        let (written, rewrapped) = if writer_first {
            let written = writer.kill();
            std::thread::sleep(Duration::from_millis(gap));
            (written, rewrapper.kill())
        } else {
            let rewrapped = rewrapper.kill();
            std::thread::sleep(Duration::from_millis(gap));
            (writer.kill(), rewrapped)
        };
        kills += 2;
        passes += rewrapped.iter().filter(|l| l.starts_with("PASS")).count();

        let acks: Vec<(String, String)> = written
            .iter()
            .map(|line| {
                let mut parts = line.strip_prefix("ACK ").unwrap().split(' ');
                let user = parts.next().unwrap().to_owned();
                (user, parts.next().unwrap().to_owned())
            })
            .collect();
        assert_eq!(integrity_check(&db), "ok", "round {round}");
        let mixed;
        (rows, mixed) = check_writes(&db, &acks);
        cut_short += usize::from(mixed);
        all_acks.extend(acks);
        // No row is ever deleted: fewer rows than acknowledged writes is a loss, of this
        // round or an earlier one (each is opened one by one again at the end).
        assert!(
            rows >= all_acks.len() as u64,
            "round {round}: rows were lost"
        );
    }
    // Once more at the end, every acknowledged write of every round.
    assert_eq!(integrity_check(&db), "ok");
    let (final_rows, _) = check_writes(&db, &all_acks);
    assert_eq!(final_rows, rows);
    // A put killed after its commit but before its ACK line leaves one row nobody
    // acknowledged: at most one per round.
    let unacknowledged = rows - all_acks.len() as u64;
    assert!(
        unacknowledged <= rounds as u64,
        "{unacknowledged} rows more than acknowledged"
    );
    eprintln!(
        "crash test: {kills} kills in {rounds} rounds, {} acknowledged writes checked \
         ({} by killed writers), {unacknowledged} committed but unacknowledged, {rows} rows \
         open; rewrap passes completed {passes}, rounds ending mid-rewrap {cut_short}; {:.1} s",
        all_acks.len(),
        all_acks.len() - 200,
        started.elapsed().as_secs_f64()
    );
}
