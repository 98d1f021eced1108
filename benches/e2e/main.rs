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

#[path = "../support/mod.rs"]
mod support;

mod cpu;
mod load;
mod server;

const ROLE: &str = "BYOK_E2E_ROLE";
const TARGET: &str = "BYOK_E2E_TARGET";
const USERS: usize = 100;
const TARGET_ADDED_CPU_NS: f64 = 300.0;

fn main() {
    if std::env::var(ROLE).as_deref() == Ok("load") {
        load::load_generator();
    } else {
        server::server();
    }
}

fn user_id(n: usize) -> String {
    format!("user-{n}")
}
